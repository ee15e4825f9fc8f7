//! One evaluation of a rule group, as Prometheus' rules manager runs it (`rules/group.go`):
//! its rules in order, each an instant query at the evaluation time minus the group's
//! `query_offset`, so a recording rule's output is visible to the rules after it in the same
//! evaluation. A recording rule's result series are renamed to `record`, the group's labels
//! and then the rule's set on them; an alerting rule's series become alerts (their labels
//! without `__name__`, the group's labels and the rule's expanded labels set over them,
//! `alertname`), tracked by [`RuleState`], with expanded annotations, and `ALERTS` and
//! `ALERTS_FOR_STATE` series. What an evaluation writes is returned as samples at the query
//! time; a rule that fails (its query, duplicate output labels, the group's `limit`) writes
//! nothing and its error is returned beside the others' output.
//!
//! The query runs through a function the caller gives (the PromQL engine over Strata's
//! storage, seeing what earlier rules wrote), so this module needs no storage of its own.

use crate::rules::{Group, Rule};
use crate::state::RuleState;
use crate::template::{self, Data};
use std::collections::BTreeMap;
use strata_model::{Labels, Sample, METRIC_NAME};

/// What an evaluation writes: series and their samples (at the query time).
pub type Written = Vec<(Labels, Sample)>;

/// An instant query: the result series and values of `expr` at `t` (ms), or why it failed.
/// A scalar result is one series without labels.
pub type Query<'a> = dyn FnMut(&str, i64) -> Result<Vec<(Labels, f64)>, String> + 'a;

/// What the server's templates see besides each alert's own labels and value.
#[derive(Debug, Clone, Default)]
pub struct External {
    /// `$externalLabels`.
    pub labels: Labels,
    /// `$externalURL`.
    pub url: String,
}

/// A rule group and the states of its alerting rules.
#[derive(Debug, Clone)]
pub struct GroupState {
    group: Group,
    /// Per rule, in order: the state of an alerting rule.
    states: Vec<Option<RuleState>>,
    /// Per rule, in order: how its latest evaluation went.
    health: Vec<RuleHealth>,
}

/// How a rule's latest evaluation went (the rules API's `health`, `lastError`,
/// `lastEvaluation`, `evaluationTime`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleHealth {
    /// When it was last evaluated (the evaluation time, ms), `None` before the first.
    pub last_eval: Option<i64>,
    /// How long that took.
    pub duration: std::time::Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Every sample to write: recording rules' outputs, `ALERTS`, `ALERTS_FOR_STATE`.
    pub written: Written,
    /// `(rule name, error)` of the rules that failed.
    pub errors: Vec<(String, String)>,
}

impl GroupState {
    /// A group with no alerts yet.
    pub fn new(group: Group) -> GroupState {
        let states = group
            .rules
            .iter()
            .map(|r| match r {
                Rule::Alerting(a) => Some(RuleState::new(&a.alert, a.for_ms, a.keep_firing_for_ms)),
                Rule::Recording(_) => None,
            })
            .collect();
        let health = vec![RuleHealth::default(); group.rules.len()];
        GroupState {
            group,
            states,
            health,
        }
    }

    /// Takes over the alert states and health of `old`'s rules that this group has too (the
    /// same name, expression and labels), as a reload keeps them.
    pub fn adopt(&mut self, old: &GroupState) {
        for (i, rule) in self.group.rules.iter().enumerate() {
            if let Some(j) = old.group.rules.iter().position(|r| r == rule) {
                if let (Some(new), Some(prev)) = (&mut self.states[i], &old.states[j]) {
                    *new = prev.clone();
                }
                self.health[i] = old.health[j].clone();
            }
        }
    }

    /// The health of rule `index`'s latest evaluation.
    pub fn rule_health(&self, index: usize) -> Option<&RuleHealth> {
        self.health.get(index)
    }

    /// The state of the alerting rule at `index`, to restore saved alerts into.
    pub fn rule_state_mut(&mut self, index: usize) -> Option<&mut RuleState> {
        self.states.get_mut(index)?.as_mut()
    }

    /// The group.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// The state of the alerting rule at `index`, if it is one.
    pub fn rule_state(&self, index: usize) -> Option<&RuleState> {
        self.states.get(index)?.as_ref()
    }

    /// Evaluates every rule at `ts` (ms), querying at `ts` minus the group's query offset
    /// (`default_offset_ms` when the group sets none). `written` output of each rule is
    /// handed to `write` before the next rule runs, so later rules see it; a write that fails
    /// is the rule's error.
    pub fn eval(
        &mut self,
        ts: i64,
        default_offset_ms: i64,
        external: &External,
        query: &mut Query<'_>,
        write: &mut dyn FnMut(&Written) -> Result<(), String>,
    ) -> Evaluation {
        let t = ts - self.group.query_offset_ms.unwrap_or(default_offset_ms);
        let mut out = Evaluation::default();
        let limit = self.group.limit;
        for ((rule, state), health) in self
            .group
            .rules
            .iter()
            .zip(&mut self.states)
            .zip(&mut self.health)
        {
            let started = std::time::Instant::now();
            let result = query(rule.expr(), t).and_then(|series| match (rule, state) {
                (Rule::Recording(r), _) => {
                    record(&r.record, series, &self.group.labels, &r.labels, limit, t)
                }
                (Rule::Alerting(a), Some(st)) => {
                    let mut labels = self.group.labels.clone();
                    labels.extend(a.labels.clone());
                    alerting(st, series, &labels, &a.annotations, external, limit, t)
                }
                (Rule::Alerting(_), None) => unreachable!("an alerting rule has a state"),
            });
            let error = match result {
                Ok(w) => {
                    let error = write(&w).err();
                    out.written.extend(w);
                    error
                }
                Err(e) => Some(e),
            };
            *health = RuleHealth {
                last_eval: Some(t),
                duration: started.elapsed(),
                error: error.clone(),
            };
            if let Some(e) = error {
                out.errors.push((rule.name().to_string(), e));
            }
        }
        out
    }
}

/// A recording rule's output at `t`.
fn record(
    name: &str,
    series: Vec<(Labels, f64)>,
    group_labels: &BTreeMap<String, String>,
    rule_labels: &BTreeMap<String, String>,
    limit: u64,
    t: i64,
) -> Result<Written, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(series.len());
    for (mut l, v) in series {
        l.set(METRIC_NAME, name);
        for (k, val) in group_labels.iter().chain(rule_labels) {
            l.set(k, val);
        }
        if !seen.insert(l.clone()) {
            return Err(format!(
                "vector contains metrics with the same labelset after applying rule labels: {l:?}"
            ));
        }
        out.push((l, Sample::new(t, v)));
    }
    if limit > 0 && out.len() as u64 > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            out.len()
        ));
    }
    Ok(out)
}

/// An alerting rule's evaluation at `t`: states updated, `ALERTS` and `ALERTS_FOR_STATE`.
fn alerting(
    st: &mut RuleState,
    series: Vec<(Labels, f64)>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    external: &External,
    limit: u64,
    t: i64,
) -> Result<Written, String> {
    let expand = |text: &str, data: &Data<'_>| {
        template::expand(text, data).unwrap_or_else(|e| format!("<error expanding template: {e}>"))
    };
    let mut active = Vec::with_capacity(series.len());
    let mut notes = Vec::with_capacity(series.len());
    for (l, v) in series {
        let data = Data {
            labels: &l,
            external_labels: &external.labels,
            external_url: &external.url,
            value: v,
        };
        let extra = Labels::from_pairs(
            labels
                .iter()
                .map(|(k, text)| (k.clone(), expand(text, &data))),
        )
        .map_err(|e| e.to_string())?;
        let alert = st.alert_labels(&l, &extra);
        // Annotations see the series' labels too, as Prometheus expands them.
        let expanded: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, text)| (k.clone(), expand(text, &data)))
            .collect();
        notes.push((alert.clone(), expanded));
        active.push((alert, v));
    }
    st.eval(t, active, limit).map_err(|e| e.to_string())?;
    for (l, a) in notes {
        st.set_annotations(&l, a);
    }
    let mut out: Written = st
        .alerts_series()
        .into_iter()
        .map(|l| (l, Sample::new(t, 1.0)))
        .collect();
    out.extend(
        st.for_state_series()
            .into_iter()
            .map(|(l, v)| (l, Sample::new(t, v))),
    );
    Ok(out)
}
