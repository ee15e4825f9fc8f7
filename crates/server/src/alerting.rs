//! Rules inside the server: the engine is the rules' [`Appender`] (what they write goes through
//! the ingest log like any client's write), Strata's PromQL engine with the engine's window
//! finality is their [`Querier`], and `[alerting]` configures the
//! [`RuleManager`](strata_alert::manager::RuleManager).

use crate::config::Config;
use crate::engine::{Engine, WriteError};
use crate::metrics::{Out, Stage};
use std::sync::Arc;
use strata_alert::group::External;
use strata_alert::manager::{ManagerOptions, RuleManager};
use strata_alert::notify::Notifications;
use strata_alert::query::Querier;
use strata_model::{AppendError, AppendFuture, Appender, Labels, Tenant, WriteBatch};

impl Appender for Engine {
    fn append(&self, batch: WriteBatch) -> AppendFuture<'_> {
        Box::pin(async move {
            match self.write(batch).await {
                Ok(_) => Ok(()),
                Err(e @ (WriteError::ShuttingDown | WriteError::Overloaded { .. })) => {
                    Err(AppendError::Unavailable(e.to_string()))
                }
                Err(e) => Err(AppendError::Failed(e.to_string())),
            }
        })
    }
}

/// PromQL over the engine, and the engine's finality of windows.
struct RuleQuerier {
    promql: strata_promql::Engine,
    engine: Arc<Engine>,
}

impl Querier for RuleQuerier {
    fn instant(
        &self,
        tenant: &Tenant,
        expr: &str,
        t_ms: i64,
    ) -> Result<Vec<(Labels, f64)>, String> {
        Querier::instant(&self.promql, tenant, expr, t_ms)
    }

    fn final_before(&self, _tenant: &Tenant) -> Option<i64> {
        self.engine.final_before()
    }
}

/// The `[[alerting.notifiers]]` with their outbox and senders started; `None` without
/// notifiers.
pub fn notifications(
    cfg: &Config,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Option<Arc<Notifications>>> {
    let specs = cfg.notifier_specs()?;
    if specs.is_empty() {
        return Ok(None);
    }
    let n = Notifications::start(specs, &cfg.data_dir.join("notify"), &external_url(cfg), rt)
        .map_err(|e| anyhow::anyhow!("alerting.notifiers: {e}"))?;
    Ok(Some(n))
}

fn external_url(cfg: &Config) -> String {
    cfg.alerting
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.listen))
}

/// The rules manager `[alerting]` asks for, its files loaded and its groups started, sending
/// through `notify`; `None` without rule files.
pub fn start(
    cfg: &Config,
    engine: Arc<Engine>,
    promql: strata_promql::Engine,
    rt: tokio::runtime::Handle,
    notify: Option<Arc<Notifications>>,
) -> anyhow::Result<Option<Arc<RuleManager>>> {
    let a = &cfg.alerting;
    if a.rule_files.is_empty() {
        return Ok(None);
    }
    let external = External {
        labels: Labels::from_pairs(a.external_labels.clone())
            .map_err(|e| anyhow::anyhow!("alerting.external_labels: {e}"))?,
        url: external_url(cfg),
    };
    let opts = ManagerOptions {
        rule_files: a.rule_files.clone(),
        evaluation_interval_ms: a.evaluation_interval.0,
        query_offset_ms: a.query_offset.map_or(0, |d| d.0),
        tenant: Tenant::new(&a.tenant).map_err(|e| anyhow::anyhow!("alerting.tenant: {e}"))?,
        external,
        state_dir: cfg.data_dir.join("alerts"),
        final_windows: a.final_windows,
    };
    let querier = Arc::new(RuleQuerier {
        promql,
        engine: engine.clone(),
    });
    let manager = RuleManager::new(opts, querier, engine, rt);
    if let Some(n) = notify {
        manager.notify_through(n);
    }
    manager
        .reload()
        .map_err(|e| anyhow::anyhow!("alerting: {e}"))?;
    Ok(Some(manager))
}

/// The rules manager's self-metrics (named after Prometheus' `prometheus_rule_*`).
impl Stage for RuleManager {
    fn collect(&self, out: &mut Out<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.stats();
        let rows: [(&str, &str, &std::sync::atomic::AtomicU64); 6] = [
            (
                "strata_rule_evaluations_total",
                "Rule group evaluations completed.",
                &s.evaluations,
            ),
            (
                "strata_rule_evaluation_failures_total",
                "Rule evaluations that failed (query, limit or write).",
                &s.rule_failures,
            ),
            (
                "strata_rule_group_iterations_missed_total",
                "Rule group evaluations skipped because an evaluation overran its interval.",
                &s.missed,
            ),
            (
                "strata_rule_evaluations_waiting_final_total",
                "Evaluations deferred until event-time windows became final (alerting.final_windows).",
                &s.waiting_final,
            ),
            (
                "strata_rule_samples_written_total",
                "Samples written by rules (recording rules, ALERTS, ALERTS_FOR_STATE).",
                &s.samples_written,
            ),
            (
                "strata_rule_state_save_failures_total",
                "Failures to save alert state to disk.",
                &s.state_save_failures,
            ),
        ];
        for (name, help, v) in rows {
            out.counter(name, help, v.load(Relaxed));
        }
        out.counter(
            "strata_rule_reloads_total",
            "Rule file reloads that succeeded.",
            s.reloads.load(Relaxed),
        );
        out.counter(
            "strata_rule_reload_failures_total",
            "Rule file reloads that failed (the previous rules kept running).",
            s.reload_failures.load(Relaxed),
        );
        out.gauge(
            "strata_rule_config_last_reload_successful",
            "Whether the latest rule file reload succeeded.",
            u32::from(s.last_reload_ok.load(Relaxed)),
        );
        out.gauge(
            "strata_rule_config_last_reload_success_timestamp_seconds",
            "When rule files were last loaded successfully.",
            s.last_reload_success_ms.load(Relaxed) as f64 / 1000.0,
        );
        out.gauge(
            "strata_rule_groups",
            "Rule groups loaded.",
            self.group_count(),
        );
        let by_state = self.alert_counts();
        out.gauges(
            "strata_alerts",
            "Alerts kept, by state (inactive: resolved lately).",
            ["inactive", "pending", "firing"]
                .iter()
                .zip(by_state)
                .map(|(st, n)| ([("state", *st)], n)),
        );
    }
}

/// The notifiers' self-metrics.
impl Stage for Notifications {
    fn collect(&self, out: &mut Out<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.stats();
        type Read = fn(&strata_alert::notify::NotifierStats) -> u64;
        let rows: [(&str, &str, Read); 3] = [
            (
                "strata_notifications_sent_total",
                "Notifications the receiver accepted, by notifier.",
                |s| s.sent.load(Relaxed),
            ),
            (
                "strata_notifications_retried_total",
                "Delivery attempts that failed and will be retried, by notifier.",
                |s| s.retried.load(Relaxed),
            ),
            (
                "strata_notifications_failed_total",
                "Notifications dropped: refused by the receiver or expired, by notifier.",
                |s| s.failed.load(Relaxed),
            ),
        ];
        let labels = |notifier, kind| [("notifier", notifier), ("kind", kind)];
        for (name, help, get) in rows {
            out.counters(
                name,
                help,
                stats
                    .iter()
                    .map(|(notifier, kind, st, _)| (labels(*notifier, *kind), get(st))),
            );
        }
        out.gauges(
            "strata_notifications_queued",
            "Notifications in the outbox waiting for delivery, by notifier.",
            stats
                .iter()
                .map(|(notifier, kind, _, queued)| (labels(*notifier, *kind), *queued)),
        );
    }
}

/// The device rules' self-metrics.
impl Stage for crate::device_rules::DeviceRulesHub {
    fn collect(&self, out: &mut Out<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        out.gauge(
            "strata_device_rules",
            "Device rules defined (configuration and API).",
            self.rules().1.rules().len(),
        );
        out.counter(
            "strata_device_rule_changes_total",
            "State changes of device rules' alerts (fired, resolved).",
            self.changes.load(Relaxed),
        );
        out.counter(
            "strata_device_rule_late_readings_total",
            "Readings that arrived behind what their device rule had judged (left out).",
            self.late.load(Relaxed),
        );
    }
}
