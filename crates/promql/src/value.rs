//! Query results.

use strata_model::Labels;

/// One series of a range result (a matrix row): its points in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Series labels.
    pub labels: Labels,
    /// `(timestamp ms, value)` in time order.
    pub points: Vec<(i64, f64)>,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    /// Series labels.
    pub labels: Labels,
    /// Evaluation timestamp, ms.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// The value of a query, as the Prometheus HTTP API types it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `resultType: scalar`.
    Scalar {
        /// Evaluation timestamp, ms.
        t: i64,
        /// Value.
        v: f64,
    },
    /// `resultType: string`.
    String {
        /// Evaluation timestamp, ms.
        t: i64,
        /// Value.
        s: String,
    },
    /// `resultType: vector` (instant queries).
    Vector(Vec<InstantSample>),
    /// `resultType: matrix` (range queries, and instant queries of a range selector).
    Matrix(Vec<Series>),
}

impl Value {
    /// The API's name for this result type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String { .. } => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A query's answer with the warnings and infos Prometheus would attach.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutput {
    /// The result.
    pub value: Value,
    /// Warnings (`warnings` in the API response): the result may be wrong.
    pub warnings: Vec<String>,
    /// Informational notes (`infos` in the API response).
    pub infos: Vec<String>,
    /// The tiers that answered (the `Strata-Tiers` header).
    pub tiers: strata_model::Resolutions,
}
