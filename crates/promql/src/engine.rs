//! The query engine: options, per-query context, instant and range entry points.

use crate::{Error, QueryOutput};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_model::{Storage, Tenant};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (Prometheus: 5 minutes).
    pub lookback_delta_ms: i64,
    /// Most samples one query may load or hold at once.
    pub max_samples: usize,
    /// Longest a query may run.
    pub timeout: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// Who runs a query, and how it may be stopped early.
#[derive(Debug, Clone)]
pub struct QueryContext {
    /// The tenant whose data the query reads.
    pub tenant: Tenant,
    cancel: Option<Arc<AtomicBool>>,
}

impl QueryContext {
    /// A context for `tenant` that only the engine's timeout can stop.
    pub fn new(tenant: Tenant) -> QueryContext {
        QueryContext {
            tenant,
            cancel: None,
        }
    }

    /// Stops the query (with [`Error::Canceled`]) once `flag` becomes true, e.g. when the HTTP
    /// client disconnects.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> QueryContext {
        self.cancel = Some(flag);
        self
    }

    pub(crate) fn is_canceled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// Evaluates PromQL over a [`Storage`].
#[derive(Clone)]
pub struct Engine {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) opts: EngineOptions,
}

impl Engine {
    /// An engine reading from `storage`.
    pub fn new(storage: Arc<dyn Storage>, opts: EngineOptions) -> Engine {
        Engine { storage, opts }
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `query` at one instant (`time_ms`).
    pub fn instant(
        &self,
        ctx: &QueryContext,
        query: &str,
        time_ms: i64,
    ) -> Result<QueryOutput, Error> {
        let _ = (ctx, query, time_ms, Instant::now());
        Err(Error::Execution("not yet implemented".into()))
    }

    /// Evaluates `query` at every `step_ms` from `start_ms` to `end_ms` inclusive; the result is
    /// always a matrix (or a scalar/string error as Prometheus gives it).
    pub fn range(
        &self,
        ctx: &QueryContext,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryOutput, Error> {
        let _ = (ctx, query, start_ms, end_ms, step_ms);
        Err(Error::Execution("not yet implemented".into()))
    }
}
