//! What rule evaluation reads through: an instant query and, for rules that evaluate final
//! windows only, how far event-time windows are final. Strata's PromQL engine implements it;
//! the trait keeps the rules manager free of the server.

use strata_model::{Labels, Tenant};
use strata_promql::{QueryContext, Value};

/// Instant queries for rule evaluation.
pub trait Querier: Send + Sync {
    /// The result series and values of `expr` at `t_ms` for `tenant`, or why it failed. A
    /// scalar is one series without labels; a string result is an error, as in Prometheus.
    fn instant(&self, tenant: &Tenant, expr: &str, t_ms: i64)
        -> Result<Vec<(Labels, f64)>, String>;

    /// Every event-time window of `tenant` starting before this is final (no late event will
    /// change it); `None` where windows are not kept.
    fn final_before(&self, tenant: &Tenant) -> Option<i64> {
        let _ = tenant;
        None
    }
}

impl Querier for strata_promql::Engine {
    fn instant(
        &self,
        tenant: &Tenant,
        expr: &str,
        t_ms: i64,
    ) -> Result<Vec<(Labels, f64)>, String> {
        let ctx = QueryContext::new(tenant.clone());
        match strata_promql::Engine::instant(self, &ctx, expr, t_ms)
            .map_err(|e| e.to_string())?
            .value
        {
            Value::Vector(v) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect()),
            Value::Scalar { v, .. } => Ok(vec![(Labels::default(), v)]),
            other => Err(format!(
                "rule expressions must return a vector or a scalar, not {}",
                other.type_name()
            )),
        }
    }
}
