//! PromQL evaluation for Strata.
//!
//! Queries are parsed by the `promql-parser` crate; evaluation is ours and runs over the
//! [`Storage`](strata_model::Storage) read trait, so every storage tier can answer PromQL.
//!
//! A range query is evaluated in one pass: each selector reads its series once for the whole
//! range, and every operator works on whole step grids rather than re-running at every step.
//!
//! [`script`] runs Prometheus's own PromQL test scripts against the engine.

mod aggregate;
mod binary;
mod engine;
mod error;
mod eval;
mod functions;
mod gosort;
mod labels;
mod mem;
pub mod script;
mod shape;
mod stats;
mod tiers;
mod value;

pub use engine::{parse, Engine, EngineOptions, QueryContext};
pub use error::{Error, Warning};
pub use eval::matcher_sets;
pub use labels::{format_float as format_value, write_float as write_value};
pub use mem::MemStorage;
pub use value::{InstantSample, QueryOutput, Series, Value};
