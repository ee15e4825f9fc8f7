//! The states of one alerting rule's alerts, evaluation by evaluation, as Prometheus keeps
//! them (`rules/alerting.go`): an alert is identified by its labels (the result series' labels
//! without `__name__`, the rule's labels set on them, and `alertname`); it is *pending* from
//! the first evaluation that returns it, *firing* once it has been active for the rule's
//! `for` (at once when `for` is 0), and *inactive* (resolved) at the first evaluation that no
//! longer returns it, unless it was firing and `keep_firing_for` keeps it firing that long
//! after its condition stopped. A resolved alert is kept for [`RESOLVED_RETENTION_MS`] so
//! notifiers can repeat its resolution, then forgotten; a pending one that stops returning is
//! forgotten at once. More active alerts than the group's `limit` is an error that drops them
//! all.
//!
//! The caller evaluates the expression and sets the rule's (expanded) labels; this module
//! keeps only the states, so it is exercised directly against Prometheus' semantics.

use std::collections::BTreeMap;
use strata_model::{Labels, METRIC_NAME};

/// How long a resolved alert is kept (Prometheus' `resolvedRetention`).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60_000;

/// The state of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// Resolved: its condition stopped.
    Inactive,
    /// Active for less than the rule's `for`.
    Pending,
    /// Active for at least the rule's `for` (or kept firing).
    Firing,
}

impl AlertState {
    /// As `alertstate` and the HTTP API name it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its identity: the series' labels with the rule's, `alertname` included.
    pub labels: Labels,
    /// What it is now.
    pub state: AlertState,
    /// The value of the latest evaluation that returned it.
    pub value: f64,
    /// When it became active (ms): the start of its pending time.
    pub active_at: i64,
    /// When it started firing (ms), if it did.
    pub fired_at: Option<i64>,
    /// When it resolved (ms), if it did.
    pub resolved_at: Option<i64>,
    /// Since when (ms) its condition has been gone while `keep_firing_for` keeps it firing.
    pub keep_firing_since: Option<i64>,
    /// The latest evaluation that returned it or kept it firing (ms).
    pub last_eval: i64,
    /// Its annotations, expanded at the latest evaluation that returned it.
    pub annotations: BTreeMap<String, String>,
}

impl Alert {
    /// Whether the evaluation at `ts` changed its state: it became pending or firing then, or
    /// resolved then.
    pub fn changed_at(&self, ts: i64) -> bool {
        match self.state {
            AlertState::Pending => self.active_at == ts,
            AlertState::Firing => self.fired_at == Some(ts),
            AlertState::Inactive => self.resolved_at == Some(ts),
        }
    }
}

/// Told of alerts' state changes as they happen (the live stream), beside the notifiers.
pub trait AlertObserver: Send + Sync {
    /// `alerts` of `tenant` changed state (each as it is after its change).
    fn changed(&self, tenant: &strata_model::Tenant, alerts: &[&Alert]);
}

/// What went wrong in one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// Two result series gave the same alert labels.
    #[error("vector contains metrics with the same labelset after applying alert labels: {0:?}")]
    DuplicateLabels(Labels),
    /// More active alerts than the group's limit.
    #[error("exceeded limit of {limit} with {active} alerts")]
    Limit {
        /// The group's `limit`.
        limit: u64,
        /// How many there were.
        active: usize,
    },
}

/// The alerts of one alerting rule.
#[derive(Debug, Clone)]
pub struct RuleState {
    name: String,
    for_ms: i64,
    keep_firing_for_ms: i64,
    /// By labels.
    active: BTreeMap<Labels, Alert>,
}

impl RuleState {
    /// The state of rule `name` with its `for` and `keep_firing_for` (ms), no alerts yet.
    pub fn new(name: &str, for_ms: i64, keep_firing_for_ms: i64) -> RuleState {
        RuleState {
            name: name.to_string(),
            for_ms,
            keep_firing_for_ms,
            active: BTreeMap::new(),
        }
    }

    /// The alert labels of a result series: its labels without `__name__`, `extra` (the rule's
    /// labels, expanded) set over them, and `alertname`.
    pub fn alert_labels(&self, series: &Labels, extra: &Labels) -> Labels {
        let mut l = series.clone();
        l.set(METRIC_NAME, "");
        for x in extra.iter() {
            l.set(&x.name, &x.value);
        }
        l.set("alertname", &self.name);
        l
    }

    /// One evaluation at `ts` (ms) that returned `results`: each alert's labels (see
    /// [`RuleState::alert_labels`]) and value. `limit` is the group's (0: none).
    pub fn eval(
        &mut self,
        ts: i64,
        results: Vec<(Labels, f64)>,
        limit: u64,
    ) -> Result<(), EvalError> {
        let mut seen = std::collections::BTreeSet::new();
        for (labels, value) in results {
            if !seen.insert(labels.clone()) {
                return Err(EvalError::DuplicateLabels(labels));
            }
            match self.active.get_mut(&labels) {
                Some(a) if a.state != AlertState::Inactive => {
                    a.value = value;
                    a.last_eval = ts;
                }
                _ => {
                    self.active.insert(
                        labels.clone(),
                        Alert {
                            labels,
                            state: AlertState::Pending,
                            value,
                            active_at: ts,
                            fired_at: None,
                            resolved_at: None,
                            keep_firing_since: None,
                            last_eval: ts,
                            annotations: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        let (for_ms, keep_ms) = (self.for_ms, self.keep_firing_for_ms);
        let mut active = 0;
        self.active.retain(|labels, a| {
            if !seen.contains(labels) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && keep_ms > 0 {
                    let since = *a.keep_firing_since.get_or_insert(ts);
                    keep_firing = ts - since < keep_ms;
                }
                if a.state == AlertState::Pending
                    || a.resolved_at
                        .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
                {
                    return false;
                }
                if !keep_firing {
                    if a.state != AlertState::Inactive {
                        a.state = AlertState::Inactive;
                        a.resolved_at = Some(ts);
                    }
                    return true;
                }
                a.last_eval = ts;
            } else {
                a.keep_firing_since = None;
            }
            active += 1;
            if a.state == AlertState::Pending && ts - a.active_at >= for_ms {
                a.state = AlertState::Firing;
                a.fired_at = Some(ts);
            }
            true
        });
        if limit > 0 && active > limit as usize {
            self.active.clear();
            return Err(EvalError::Limit { limit, active });
        }
        Ok(())
    }

    /// Puts back alerts saved from an earlier run (see [`crate::saved`]), as they were:
    /// firing alerts fire on, pending ones keep their active time.
    pub fn restore(&mut self, alerts: impl IntoIterator<Item = Alert>) {
        for a in alerts {
            self.active.insert(a.labels.clone(), a);
        }
    }

    /// The rule's state as the rules API reports it: firing when an alert fires, else pending
    /// when one is pending, else inactive.
    pub fn state(&self) -> AlertState {
        let mut st = AlertState::Inactive;
        for a in self.active.values() {
            match a.state {
                AlertState::Firing => return AlertState::Firing,
                AlertState::Pending => st = AlertState::Pending,
                AlertState::Inactive => {}
            }
        }
        st
    }

    /// Sets the annotations of the alert with `labels` (after [`RuleState::eval`] returned it).
    pub fn set_annotations(&mut self, labels: &Labels, annotations: BTreeMap<String, String>) {
        if let Some(a) = self.active.get_mut(labels) {
            a.annotations = annotations;
        }
    }

    /// The alerts kept (active and recently resolved), by labels.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    /// The `ALERTS` samples of this evaluation: `ALERTS{<alert labels>, alertstate}` = 1 for
    /// every pending or firing alert.
    pub fn alerts_series(&self) -> Vec<Labels> {
        self.active
            .values()
            .filter(|a| a.state != AlertState::Inactive)
            .map(|a| {
                let mut l = a.labels.clone();
                l.set(METRIC_NAME, "ALERTS");
                l.set("alertstate", a.state.as_str());
                l
            })
            .collect()
    }

    /// The `ALERTS_FOR_STATE` samples: `ALERTS_FOR_STATE{<alert labels>}` = the alert's active
    /// time in seconds, for every pending or firing alert (what a restart restores from).
    pub fn for_state_series(&self) -> Vec<(Labels, f64)> {
        self.active
            .values()
            .filter(|a| a.state != AlertState::Inactive)
            .map(|a| {
                let mut l = a.labels.clone();
                l.set(METRIC_NAME, "ALERTS_FOR_STATE");
                (l, a.active_at as f64 / 1000.0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    /// The state of the one alert of `r`, if any.
    fn state(r: &RuleState) -> Option<AlertState> {
        let all: Vec<_> = r.alerts().collect();
        assert!(all.len() <= 1);
        all.first().map(|a| a.state)
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_and_forgotten() {
        let mut r = RuleState::new("Hot", 5 * MIN, 0);
        let series = labels(&[("__name__", "temp"), ("device", "d1")]);
        let a = r.alert_labels(&series, &labels(&[("severity", "page")]));
        assert_eq!(
            a,
            labels(&[("alertname", "Hot"), ("device", "d1"), ("severity", "page")])
        );
        r.eval(0, vec![(a.clone(), 81.0)], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Pending));
        assert_eq!(r.alerts_series()[0].get("alertstate"), Some("pending"));
        r.eval(4 * MIN, vec![(a.clone(), 82.0)], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Pending));
        r.eval(5 * MIN, vec![(a.clone(), 83.0)], 0).unwrap();
        let fired = r.alerts().next().unwrap().clone();
        assert_eq!(
            (fired.state, fired.fired_at, fired.active_at),
            (AlertState::Firing, Some(5 * MIN), 0)
        );
        assert_eq!(fired.value, 83.0);
        assert_eq!(r.for_state_series()[0].1, 0.0);
        // Gone: resolved (kept, not in ALERTS), then forgotten after the retention.
        r.eval(6 * MIN, vec![], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Inactive));
        assert_eq!(r.alerts().next().unwrap().resolved_at, Some(6 * MIN));
        assert!(r.alerts_series().is_empty());
        r.eval(6 * MIN + RESOLVED_RETENTION_MS, vec![], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Inactive));
        r.eval(7 * MIN + RESOLVED_RETENTION_MS, vec![], 0).unwrap();
        assert_eq!(state(&r), None);
    }

    #[test]
    fn an_alert_changed_at_the_evaluations_that_moved_it_only() {
        let mut r = RuleState::new("Hot", 2 * MIN, 0);
        let a = labels(&[("alertname", "Hot")]);
        let changed = |r: &RuleState, ts| r.alerts().next().unwrap().changed_at(ts);
        r.eval(0, vec![(a.clone(), 1.0)], 0).unwrap();
        assert!(changed(&r, 0), "became pending");
        r.eval(MIN, vec![(a.clone(), 2.0)], 0).unwrap();
        assert!(!changed(&r, MIN), "still pending");
        r.eval(2 * MIN, vec![(a.clone(), 3.0)], 0).unwrap();
        assert!(changed(&r, 2 * MIN), "fired");
        r.eval(3 * MIN, vec![(a.clone(), 4.0)], 0).unwrap();
        assert!(!changed(&r, 3 * MIN), "still firing");
        r.eval(4 * MIN, vec![], 0).unwrap();
        assert!(changed(&r, 4 * MIN), "resolved");
        r.eval(5 * MIN, vec![], 0).unwrap();
        assert!(!changed(&r, 5 * MIN), "still resolved");
    }

    #[test]
    fn a_pending_alert_that_stops_is_forgotten_and_starts_again() {
        let mut r = RuleState::new("Hot", 5 * MIN, 0);
        let a = labels(&[("alertname", "Hot")]);
        r.eval(0, vec![(a.clone(), 1.0)], 0).unwrap();
        r.eval(MIN, vec![], 0).unwrap();
        assert_eq!(state(&r), None);
        r.eval(2 * MIN, vec![(a.clone(), 1.0)], 0).unwrap();
        assert_eq!(r.alerts().next().unwrap().active_at, 2 * MIN);
        // A resolved alert that comes back is pending again, from then.
        let mut r = RuleState::new("Now", 0, 0);
        r.eval(0, vec![(a.clone(), 1.0)], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Firing), "for 0 fires at once");
        r.eval(MIN, vec![], 0).unwrap();
        r.eval(2 * MIN, vec![(a.clone(), 1.0)], 0).unwrap();
        let back = r.alerts().next().unwrap();
        assert_eq!(
            (back.state, back.active_at, back.resolved_at),
            (AlertState::Firing, 2 * MIN, None)
        );
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert_after_its_condition() {
        let mut r = RuleState::new("Flap", 0, 3 * MIN);
        let a = labels(&[("alertname", "Flap")]);
        r.eval(0, vec![(a.clone(), 1.0)], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Firing));
        r.eval(MIN, vec![], 0).unwrap();
        r.eval(3 * MIN, vec![], 0).unwrap();
        assert_eq!(
            state(&r),
            Some(AlertState::Firing),
            "within keep_firing_for"
        );
        // Back: the hold starts over when it goes again.
        r.eval(4 * MIN - 1, vec![(a.clone(), 1.0)], 0).unwrap();
        r.eval(5 * MIN, vec![], 0).unwrap();
        r.eval(7 * MIN, vec![], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Firing));
        r.eval(8 * MIN, vec![], 0).unwrap();
        assert_eq!(state(&r), Some(AlertState::Inactive));
        assert_eq!(r.alerts().next().unwrap().resolved_at, Some(8 * MIN));
    }

    #[test]
    fn duplicates_and_limits_are_errors() {
        let mut r = RuleState::new("X", 0, 0);
        let a = labels(&[("alertname", "X"), ("d", "1")]);
        let b = labels(&[("alertname", "X"), ("d", "2")]);
        assert!(matches!(
            r.eval(0, vec![(a.clone(), 1.0), (a.clone(), 2.0)], 0),
            Err(EvalError::DuplicateLabels(_))
        ));
        assert_eq!(
            r.eval(0, vec![(a.clone(), 1.0), (b.clone(), 1.0)], 1),
            Err(EvalError::Limit {
                limit: 1,
                active: 2
            })
        );
        assert_eq!(
            r.alerts().count(),
            0,
            "over the limit, every alert is dropped"
        );
        r.eval(MIN, vec![(a, 1.0), (b, 1.0)], 2).unwrap();
        assert_eq!(r.alerts_series().len(), 2);
    }
}
