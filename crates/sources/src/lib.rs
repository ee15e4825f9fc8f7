//! Strata's sources: what listens or polls for data (the MQTT client so far; StatsD, scraping
//! and OTLP's gRPC to come), in the manner of Vector's sources. A source is configured, started
//! on the server's runtime with a [`Sink`] (the write path every HTTP write takes too), stopped,
//! says whether it acknowledges end to end, and counts what it did in protocol-neutral
//! [`SourceStats`].
//!
//! This crate decodes with `strata-ingest` and writes through the [`Sink`] only: it knows
//! nothing of shards, the log or HTTP.

pub mod mqtt;
pub mod topic;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{Tenant, WriteBatch};

/// What a sink made of one batch it acknowledged (durably stored, or refused for good).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Samples stored (or already stored: duplicates of stored ones).
    pub stored: usize,
    /// Samples refused for good (series limits, retention): retrying would not help.
    pub refused: usize,
}

/// Why a sink did not acknowledge a batch: nothing of it is durable.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retrying later can succeed (the log failed, shards are behind).
    #[error("{0}")]
    Retry(String),
    /// The server is stopping: the batch will not be taken.
    #[error("server is shutting down")]
    Stopped,
}

/// A future a [`Sink`] returns.
pub type SinkFuture = Pin<Box<dyn Future<Output = Result<Written, SinkError>> + Send>>;

/// Where sources write: resolves once the batch is durable (or refused for good).
pub trait Sink: Send + Sync + 'static {
    /// Writes `batch`.
    fn write(&self, batch: WriteBatch) -> SinkFuture;
}

/// Errors of a source's configuration or start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A setting is wrong; the message names it.
    #[error("{0}")]
    Config(String),
}

/// A configured source, ready to start.
pub trait Source: Send {
    /// Its name, in logs and in the `source` label of its metrics.
    fn name(&self) -> &str;
    /// Whether a message is acknowledged to its sender only once it is durable.
    fn acknowledges(&self) -> bool;
    /// Starts it on `rt`, writing to `sink`.
    fn start(
        self: Box<Self>,
        sink: Arc<dyn Sink>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Running, SourceError>;
}

/// Sends messages back to devices through a source that can (MQTT).
pub trait DevicePublisher: Send + Sync {
    /// The tenant whose devices it reaches.
    fn tenant(&self) -> &Tenant;
    /// Publishes a device's shadow delta (JSON) where the device listens for it; false when it
    /// could not be queued (counted, not retried: the shadow keeps the delta).
    fn publish_delta(&self, device: &str, payload: Vec<u8>) -> bool;
}

/// A started source: its stats, and stops when [`Running::stop`] is called or it is dropped.
pub struct Running {
    /// Its name.
    pub name: String,
    /// Whether it acknowledges end to end.
    pub acknowledges: bool,
    /// What it did.
    pub stats: Arc<SourceStats>,
    /// Its way back to devices, if it has one.
    pub publisher: Option<Arc<dyn DevicePublisher>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// A source running as `tasks`.
    pub fn new(
        name: String,
        acknowledges: bool,
        stats: Arc<SourceStats>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Running {
        Running {
            name,
            acknowledges,
            stats,
            publisher: None,
            tasks,
        }
    }

    /// Stops it: what was not acknowledged is left to the sender to deliver again.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A source's counters, the same for every kind (exposed as `strata_source_*` at `/metrics`).
#[derive(Default)]
pub struct SourceStats {
    /// Messages received.
    pub messages: AtomicU64,
    /// Payload bytes received.
    pub bytes: AtomicU64,
    /// Samples written (stored or duplicates of stored ones).
    pub samples: AtomicU64,
    /// Messages acknowledged to their sender.
    pub acked: AtomicU64,
    /// Messages received and not yet acknowledged (or, without acknowledgements, not yet
    /// written).
    pub in_flight: AtomicI64,
    /// When the oldest message in flight was received (ms since the epoch; 0: none).
    pub oldest_in_flight_ms: AtomicI64,
    /// Writes retried after the sink refused them for now.
    pub retries: AtomicU64,
    /// Shadow deltas published to devices.
    pub deltas_published: AtomicU64,
    /// Shadow deltas that could not be queued for publishing.
    pub deltas_failed: AtomicU64,
    /// Connections lost (or refused) and tried again.
    pub reconnects: AtomicU64,
    /// Whether it is connected (1) or not (0).
    pub connected: AtomicI64,
    /// Dead-lettered messages.
    pub dead_lettered: AtomicU64,
    /// Refused messages or parts of them, by reason.
    bad: Mutex<BTreeMap<&'static str, u64>>,
}

impl SourceStats {
    /// Counts `n` refused items for `reason` (a short snake_case word).
    pub fn bad(&self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.bad.lock().entry(reason).or_default() += n;
        }
    }

    /// The refused items, by reason.
    pub fn bad_by_reason(&self) -> Vec<(&'static str, u64)> {
        self.bad.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Seconds the oldest message in flight has waited at `now_ms` (0 when none is).
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        match self.oldest_in_flight_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            t => (now_ms - t).max(0) as f64 / 1000.0,
        }
    }
}
