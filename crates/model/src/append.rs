//! The write side shared by everything that produces series inside Strata (recording rules,
//! `ALERTS`, anomaly scores): an [`Appender`] takes a [`WriteBatch`] through the same durable
//! path as any client's write, so derived series are logged, replayed after a crash and stored
//! like the rest. As Prometheus' rules manager takes an appendable, a producer takes an
//! `Appender` and needs nothing of the server.

use crate::WriteBatch;
use std::future::Future;
use std::pin::Pin;

/// What [`Appender::append`] returns: resolves once the batch is durable, or failed.
pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AppendError>> + Send + 'a>>;

/// Takes writes and makes them durable.
pub trait Appender: Send + Sync {
    /// Writes `batch`; the future resolves once it is acknowledged (in the ingest log, so it
    /// survives a crash), with an error when it was refused or could not be made durable.
    fn append(&self, batch: WriteBatch) -> AppendFuture<'_>;
}

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Refused for now (overload, shutting down): the same batch may be retried.
    #[error("write refused for now: {0}")]
    Unavailable(String),
    /// Could not be made durable.
    #[error("write failed: {0}")]
    Failed(String),
}
