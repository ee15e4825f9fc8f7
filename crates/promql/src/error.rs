//! Query errors and annotations.

use thiserror::Error;

/// Why a query failed. The HTTP API maps each kind to Prometheus's `errorType`.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// The query or its parameters are malformed (`bad_data`, HTTP 400).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed (`execution`, HTTP 422).
    #[error("{0}")]
    Execution(String),
    /// The query would load or hold more samples than allowed (`execution`, HTTP 422).
    #[error("query processing would load too many samples into memory in {0}; the limit is {1} samples (query.max_samples): narrow the selector or the time range")]
    TooManySamples(&'static str, usize),
    /// The query ran past its timeout (`timeout`, HTTP 503).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The client went away (`canceled`, HTTP 499 in Prometheus).
    #[error("query was canceled in {0}")]
    Canceled(&'static str),
    /// The server is shutting down (`unavailable`, HTTP 503).
    #[error("query was canceled in {0}: the server is shutting down")]
    ShuttingDown(&'static str),
    /// Storage could not be read (`internal`, HTTP 500).
    #[error("{0}")]
    Storage(String),
}

impl Error {
    /// Prometheus's `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::BadData(_) => "bad_data",
            Error::Execution(_) | Error::TooManySamples(..) => "execution",
            Error::Timeout(_) => "timeout",
            Error::Canceled(_) => "canceled",
            Error::ShuttingDown(_) => "unavailable",
            Error::Storage(_) => "internal",
        }
    }
}

/// A note attached to a successful result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Warning {
    /// The result may be wrong (Prometheus `warnings`).
    Warn(String),
    /// Something worth knowing (Prometheus `infos`).
    Info(String),
}
