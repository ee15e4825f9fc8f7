//! Device rules, evaluated in the stream by event time (the fleet case): a **threshold** rule
//! fires when a device's readings of a metric meet `operator threshold` for
//! `sustained_periods` consecutive readings, and resolves at the first reading that no longer
//! meets the clear condition (`clear_threshold` when given: hysteresis); an **offline** rule
//! fires `DeviceOffline` when a device has sent nothing for `missed_intervals` of its
//! `interval`, and resolves when it reports again.
//!
//! Each shard keeps the state of its devices' rules ([`DeviceRules`]). Readings are not judged
//! as they arrive but once the shard's watermark has passed them, in event-time order, one per
//! timestamp: duplicates and redeliveries change nothing, and readings arriving out of order are
//! judged in their place, so the outcome is the same in whatever order (and however often) the
//! readings came. A reading that arrives behind what was already judged is counted as late and
//! left out. The state is checkpointed with the shard's log offset and rebuilt by replay, and
//! each state change carries its event time, so after a crash the same changes come out again
//! and the notification outbox recognises them.

use crate::state::{Alert, AlertState};
use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use strata_model::{
    BuildIdHasher, Labels, Matcher, SeriesId, SeriesKeyRef, Tenant, WriteBatch, METRIC_NAME,
};

/// A device rule as users write it (JSON, the API's and the configuration's form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRuleSpec {
    /// Its id: the `alertname` of its alerts (offline rules: a `rule_id` label).
    pub rule_id: String,
    /// Whose devices it judges (default `default`; the API sets it from `X-Scope-OrgID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `threshold` (the default) or `offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// One device (its `device` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Devices whose series match this selector (`{site="s1", type="boiler"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_group: Option<String>,
    /// The metric judged (threshold rules; offline rules: only its readings count, when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The value compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Consecutive readings meeting the condition before it fires (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sustained_periods: Option<u32>,
    /// While firing, it stays firing as long as readings meet `operator clear_threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_threshold: Option<f64>,
    /// Its alerts' `severity` label (default `warning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Notifier names its alerts go to (default: every notifier whose match takes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notification_channels: Vec<String>,
    /// Offline rules: how often the device reports (`1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Offline rules: how many intervals without a reading make it offline (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_intervals: Option<u32>,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    fn holds(self, v: f64, t: f64) -> bool {
        match self {
            Op::Gt => v > t,
            Op::Ge => v >= t,
            Op::Lt => v < t,
            Op::Le => v <= t,
            Op::Eq => v == t,
            Op::Ne => v != t,
        }
    }
}

/// Which devices a rule covers.
#[derive(Debug, Clone)]
pub enum Scope {
    /// One device.
    Device(String),
    /// Devices whose series match these matchers.
    Group(Vec<Matcher>),
}

/// What a rule checks.
#[derive(Debug, Clone)]
pub enum Check {
    /// Readings against a threshold.
    Threshold {
        /// The metric.
        metric: String,
        /// The comparison.
        op: Op,
        /// Fires at.
        threshold: f64,
        /// Stays firing while readings meet `op clear`.
        clear: f64,
        /// Consecutive readings needed.
        sustained: u32,
    },
    /// Silence.
    Offline {
        /// Only this metric's readings count, when set.
        metric: Option<String>,
        /// The expected reporting interval, ms.
        interval_ms: i64,
        /// Intervals missed before it fires.
        missed: u32,
    },
}

/// A checked device rule.
#[derive(Debug, Clone)]
pub struct DeviceRule {
    /// As written.
    pub spec: DeviceRuleSpec,
    /// Whose devices.
    pub tenant: Tenant,
    /// Which devices.
    pub scope: Scope,
    /// What it checks.
    pub check: Check,
}

impl DeviceRule {
    /// Checks a rule as written; the error names the field.
    pub fn new(spec: DeviceRuleSpec) -> Result<DeviceRule, String> {
        if spec.rule_id.is_empty() || spec.rule_id.len() > 200 {
            return Err("rule_id: must be 1 to 200 characters".into());
        }
        let tenant = match &spec.tenant {
            None => Tenant::default_tenant(),
            Some(t) => Tenant::new(t).map_err(|e| format!("tenant: {e}"))?,
        };
        let scope = match (&spec.device_id, &spec.device_group) {
            (Some(d), None) if !d.is_empty() => Scope::Device(d.clone()),
            (None, Some(g)) => Scope::Group(group_matchers(g)?),
            (Some(_), Some(_)) => {
                return Err("give one of device_id and device_group, not both".into())
            }
            _ => return Err("device_id or device_group is required".into()),
        };
        let check = match spec.kind.as_deref().unwrap_or("threshold") {
            "threshold" => {
                let metric = spec.metric.clone().ok_or("metric: required")?;
                if !valid_metric(&metric) {
                    return Err(format!("metric: {metric:?} is not a metric name"));
                }
                let op = spec.operator.as_deref().ok_or("operator: required")?;
                let op = Op::parse(op).ok_or_else(|| {
                    format!("operator: {op:?} is not one of >, >=, <, <=, ==, !=")
                })?;
                let threshold = spec.threshold.ok_or("threshold: required")?;
                if !threshold.is_finite() {
                    return Err("threshold: must be a finite number".into());
                }
                let clear = spec.clear_threshold.unwrap_or(threshold);
                if !clear.is_finite() {
                    return Err("clear_threshold: must be a finite number".into());
                }
                let sustained = spec.sustained_periods.unwrap_or(1);
                if !(1..=10_000).contains(&sustained) {
                    return Err("sustained_periods: must be 1 to 10000".into());
                }
                if spec.interval.is_some() || spec.missed_intervals.is_some() {
                    return Err("interval and missed_intervals belong to offline rules".into());
                }
                Check::Threshold {
                    metric,
                    op,
                    threshold,
                    clear,
                    sustained,
                }
            }
            "offline" => {
                let interval = spec.interval.as_deref().ok_or("interval: required for an offline rule (the device's reporting interval, e.g. 1m)")?;
                let interval_ms = strata_model::time::parse_duration_ms(interval)
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| format!("interval: {interval:?} is not a duration"))?;
                let missed = spec.missed_intervals.unwrap_or(3);
                if !(1..=100_000).contains(&missed) {
                    return Err("missed_intervals: must be 1 to 100000".into());
                }
                if spec.operator.is_some() || spec.threshold.is_some() {
                    return Err("operator and threshold belong to threshold rules".into());
                }
                Check::Offline {
                    metric: spec.metric.clone(),
                    interval_ms,
                    missed,
                }
            }
            other => return Err(format!("kind: {other:?} is not threshold or offline")),
        };
        Ok(DeviceRule {
            spec,
            tenant,
            scope,
            check,
        })
    }

    /// Whether the series with `key` (of device `device`) is one this rule judges.
    fn covers(&self, key: SeriesKeyRef<'_>, device: &[u8], metric: &[u8]) -> bool {
        let wanted = match &self.check {
            Check::Threshold { metric, .. } => Some(metric.as_bytes()),
            Check::Offline { metric, .. } => metric.as_deref().map(str::as_bytes),
        };
        if wanted.is_some_and(|m| m != metric) {
            return false;
        }
        match &self.scope {
            Scope::Device(d) => d.as_bytes() == device,
            Scope::Group(m) => Matcher::all_match(m, key),
        }
    }

    fn severity(&self) -> &str {
        self.spec.severity.as_deref().unwrap_or("warning")
    }
}

fn valid_metric(m: &str) -> bool {
    let mut b = m.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn group_matchers(sel: &str) -> Result<Vec<Matcher>, String> {
    let bad = |e: String| format!("device_group: {e}");
    let expr = strata_promql::parse(sel).map_err(|e| bad(e.to_string()))?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(bad(format!("{sel:?} is not a series selector")));
    };
    let mut sets = strata_promql::matcher_sets(&vs).map_err(|e| bad(e.to_string()))?;
    if sets.len() != 1 {
        return Err(bad("`or` is not supported here".into()));
    }
    Ok(sets.remove(0))
}

/// The rules every shard evaluates, by metric for the ingest path.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<DeviceRule>,
    by_metric: HashMap<String, Vec<usize>>,
    /// Offline rules counting any metric.
    any_metric: Vec<usize>,
}

impl RuleSet {
    /// The set of `rules`.
    pub fn new(rules: Vec<DeviceRule>) -> RuleSet {
        let mut by_metric: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_metric = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let metric = match &r.check {
                Check::Threshold { metric, .. } => Some(metric),
                Check::Offline { metric, .. } => metric.as_ref(),
            };
            match metric {
                Some(m) => by_metric.entry(m.clone()).or_default().push(i),
                None => any_metric.push(i),
            }
        }
        RuleSet {
            rules,
            by_metric,
            any_metric,
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[DeviceRule] {
        &self.rules
    }
}

/// A state change of a device rule's alert, for notifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Whose alert it is.
    pub tenant: Tenant,
    /// The alert as it is after the change (firing, or resolved).
    pub alert: Alert,
    /// Where it goes (empty: every notifier that takes it).
    pub channels: Vec<String>,
}

/// One series' threshold state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Judged {
    /// Readings not judged yet, as they came (sorted when judged: a vector keeps its room
    /// between settles, so taking a reading allocates nothing).
    waiting: Vec<(i64, f64)>,
    /// Readings up to this time are judged.
    judged_to: i64,
    /// Consecutive readings meeting the condition, and when the run began.
    streak: u32,
    streak_from: i64,
    /// The alert, while firing (and once resolved, until the next fire).
    #[serde(with = "crate::saved::opt_alert")]
    alert: Option<Alert>,
}

/// One device's offline state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    /// The latest reading's event time.
    last: i64,
    /// A series of the device, whose labels its alert carries.
    key: Vec<u8>,
    #[serde(with = "crate::saved::opt_alert")]
    alert: Option<Alert>,
}

/// The states of one rule, in slots the match cache points at (a slot never moves while the
/// rules stay the same).
#[derive(Debug, Default)]
struct RuleStates {
    /// Threshold rules: per series (its key).
    series: Vec<(Box<[u8]>, Judged)>,
    /// Offline rules: per device (its id).
    devices: Vec<(Box<[u8]>, Seen)>,
    /// The slot of a series key (threshold rules) or device (offline rules).
    index: AHashMap<Box<[u8]>, u32>,
    /// Threshold rules: the slots with readings waiting (each once), so a settle visits only
    /// them, not every series the rule ever saw. Offline rules: firing devices that reported
    /// since the last settle (resolved at the next one, not at the next scan of all devices).
    pending: Vec<u32>,
    /// Offline rules: at most the earliest time a device not firing goes silent, so settles
    /// before it check no device (a reading only moves a device's time later; 0 when loaded:
    /// the first settle checks them all).
    next_silent: i64,
}

impl RuleStates {
    /// The slot of the series with `key`, made when new.
    fn series_slot(&mut self, key: &[u8]) -> u32 {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.series.len() as u32;
        let judged = Judged {
            judged_to: i64::MIN,
            ..Judged::default()
        };
        self.series.push((key.into(), judged));
        self.index.insert(key.into(), i);
        i
    }

    /// The slot of `device`, made when new (its alert labels from the series with `key`).
    fn device_slot(&mut self, device: &[u8], key: &[u8]) -> u32 {
        if let Some(&i) = self.index.get(device) {
            return i;
        }
        let i = self.devices.len() as u32;
        let seen = Seen {
            last: i64::MIN,
            key: key.to_vec(),
            alert: None,
        };
        self.devices.push((device.into(), seen));
        self.index.insert(device.into(), i);
        i
    }
}

/// The rules covering one series, and its slot in each (found once per series).
struct Cover {
    /// The series' key: ids that collide are told apart by it.
    key: Box<[u8]>,
    rules: Box<[(u32, u32)]>,
}

/// Per series id, the rules covering it: a lookup costs the id (already a hash) and one key
/// comparison, not a hash of the key.
type Covering = HashMap<SeriesId, Cover, BuildIdHasher>;

/// Most series the match cache remembers per shard before it starts over (the states stay; a
/// series is matched again at its next reading): it remembers series no rule covers too, so
/// under series churn it would otherwise grow with every series ever seen.
const COVER_CACHE_MAX: usize = 1 << 20;

/// The device rules' state of one shard (see the module doc).
pub struct DeviceRules {
    rules: Arc<RuleSet>,
    /// Per rule, in the rule set's order.
    states: Vec<RuleStates>,
    /// Per tenant and series, the rules covering the series: matched once per series, not at
    /// every reading (cleared when the rules change, or past [`COVER_CACHE_MAX`]).
    covering: AHashMap<Tenant, Covering>,
    /// Readings that came behind what was judged.
    pub late: u64,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    series: Vec<(String, Vec<u8>, Judged)>,
    devices: Vec<(String, Vec<u8>, Seen)>,
    offset: Option<u64>,
}

const MAGIC: &[u8; 8] = b"STRDEVR\x02";

impl DeviceRules {
    /// No state yet, judging by `rules`.
    pub fn new(rules: Arc<RuleSet>) -> DeviceRules {
        let states = rules.rules.iter().map(|_| RuleStates::default()).collect();
        DeviceRules {
            rules,
            states,
            covering: AHashMap::new(),
            late: 0,
        }
    }

    /// Judges by `rules` from now on: a rule kept (by id) keeps its state; state of rules no
    /// longer there is dropped (their alerts with it, without a resolution).
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        let mut old: HashMap<String, RuleStates> = self
            .rules
            .rules
            .iter()
            .map(|r| r.spec.rule_id.clone())
            .zip(std::mem::take(&mut self.states))
            .collect();
        self.states = rules
            .rules
            .iter()
            .map(|r| old.remove(&r.spec.rule_id).unwrap_or_default())
            .collect();
        self.rules = rules;
        self.covering.clear();
    }

    /// Whether there is any rule (the ingest path skips everything otherwise).
    pub fn is_empty(&self) -> bool {
        self.rules.rules.is_empty()
    }

    /// Takes a batch's readings (those of a device's series: with a `device` label).
    pub fn observe(&mut self, batch: &WriteBatch) {
        if self.covering.values().map(HashMap::len).sum::<usize>() > COVER_CACHE_MAX {
            self.covering.clear();
        }
        let tenant = batch.tenant();
        // Taken out for the batch (the tenant looked up once), put back after.
        let mut by_id = self
            .covering
            .get_mut(tenant)
            .map(std::mem::take)
            .unwrap_or_default();
        for s in batch.iter() {
            let key = s.key.as_bytes();
            if let Some(c) = by_id.get(&s.id).filter(|c| *c.key == *key) {
                self.take(&c.rules, s.samples);
                continue;
            }
            let rules = self.cover(tenant, s.key);
            self.take(&rules, s.samples);
            // Another series with this id (a collision) is matched at each of its readings.
            if let std::collections::hash_map::Entry::Vacant(e) = by_id.entry(s.id) {
                e.insert(Cover {
                    key: key.into(),
                    rules,
                });
            }
        }
        match self.covering.get_mut(tenant) {
            Some(m) => *m = by_id,
            None => {
                self.covering.insert(tenant.clone(), by_id);
            }
        }
    }

    /// The rules of `tenant` covering the series with `key`, and its slot in each (made when
    /// new).
    fn cover(&mut self, tenant: &Tenant, key: SeriesKeyRef<'_>) -> Box<[(u32, u32)]> {
        let Some(device) = key.get(b"device") else {
            return Box::new([]);
        };
        // A detector's outputs carry the device's labels but are not its readings.
        let name = key.get(strata_model::METRIC_NAME.as_bytes());
        if name.is_some_and(strata_model::is_anomaly_output) {
            return Box::new([]);
        }
        self.rules
            .covering(tenant, key, device)
            .iter()
            .map(|&i| {
                let st = &mut self.states[i as usize];
                let slot = match self.rules.rules[i as usize].check {
                    Check::Threshold { .. } => st.series_slot(key.as_bytes()),
                    Check::Offline { .. } => st.device_slot(device, key.as_bytes()),
                };
                (i, slot)
            })
            .collect()
    }

    /// Takes one series' readings into the states of the rules covering it.
    fn take(&mut self, rules: &[(u32, u32)], samples: &[strata_model::Sample]) {
        for &(i, slot) in rules {
            let states = &mut self.states[i as usize];
            match self.rules.rules[i as usize].check {
                Check::Threshold { .. } => {
                    let st = &mut states.series[slot as usize].1;
                    let was_idle = st.waiting.is_empty();
                    for s in samples {
                        if s.timestamp <= st.judged_to {
                            self.late += 1;
                        } else if !s.value.is_nan() {
                            st.waiting.push((s.timestamp, s.value));
                        }
                    }
                    if was_idle && !st.waiting.is_empty() {
                        states.pending.push(slot);
                    }
                }
                Check::Offline {
                    interval_ms,
                    missed,
                    ..
                } => {
                    let st = &mut states.devices[slot as usize].1;
                    if let Some(newest) = samples.iter().map(|s| s.timestamp).max() {
                        if newest > st.last && is_firing(&st.alert) {
                            states.pending.push(slot);
                        }
                        st.last = st.last.max(newest);
                        // A new device's silence may come before any other's.
                        let silent = silent_after(interval_ms, missed);
                        states.next_silent = states.next_silent.min(st.last.saturating_add(silent));
                    }
                }
            }
        }
    }

    /// Judges every reading at or before `watermark` in event-time order, and checks devices'
    /// silence against it; returns the state changes.
    pub fn settle(&mut self, watermark: i64) -> Vec<Change> {
        let mut out = Vec::new();
        for (rule, states) in self.rules.rules.iter().zip(&mut self.states) {
            // In slot order, as a scan of every state would judge them.
            states.pending.sort_unstable();
            match rule.check {
                Check::Threshold {
                    op,
                    threshold,
                    clear,
                    sustained,
                    ..
                } => {
                    let RuleStates {
                        series, pending, ..
                    } = states;
                    pending.retain(|&slot| {
                        let (key, st) = &mut series[slot as usize];
                        judge_waiting(st, watermark, |st, t, v| {
                            judge(
                                rule, st, key, t, v, op, threshold, clear, sustained, &mut out,
                            )
                        });
                        !st.waiting.is_empty()
                    });
                }
                Check::Offline {
                    interval_ms,
                    missed,
                    ..
                } => {
                    let silent_after = silent_after(interval_ms, missed);
                    let mut check = |st: &mut Seen, next: &mut i64| {
                        silence(rule, st, watermark, silent_after, missed, &mut out);
                        if !is_firing(&st.alert) {
                            *next = (*next).min(st.last.saturating_add(silent_after));
                        }
                    };
                    let mut next = states.next_silent;
                    if watermark >= states.next_silent {
                        next = i64::MAX;
                        for (_, st) in states.devices.iter_mut() {
                            check(st, &mut next);
                        }
                    } else {
                        for &slot in &states.pending {
                            check(&mut states.devices[slot as usize].1, &mut next);
                        }
                    }
                    states.next_silent = next;
                    states.pending.clear();
                }
            }
        }
        out
    }

    /// Firing alerts, with their tenants.
    pub fn firing(&self) -> Vec<(Tenant, Alert)> {
        let mut out = Vec::new();
        for (rule, states) in self.rules.rules.iter().zip(&self.states) {
            let alerts = states
                .series
                .iter()
                .map(|(_, s)| &s.alert)
                .chain(states.devices.iter().map(|(_, s)| &s.alert));
            for a in alerts.flatten() {
                if a.state == AlertState::Firing {
                    out.push((rule.tenant.clone(), a.clone()));
                }
            }
        }
        out
    }

    /// The state as a checkpoint covering the log up to `offset`.
    pub fn encode(&self, offset: Option<u64>) -> Vec<u8> {
        let mut cp = Checkpoint {
            series: Vec::new(),
            devices: Vec::new(),
            offset,
        };
        for (rule, states) in self.rules.rules.iter().zip(&self.states) {
            let id = &rule.spec.rule_id;
            cp.series.extend(
                states
                    .series
                    .iter()
                    .map(|(k, s)| (id.clone(), k.to_vec(), s.clone())),
            );
            cp.devices.extend(
                states
                    .devices
                    .iter()
                    .map(|(d, s)| (id.clone(), d.to_vec(), s.clone())),
            );
        }
        serde_json::to_vec(&cp).expect("device rule state serializes")
    }

    /// Writes a checkpoint made by [`DeviceRules::encode`] to `path`.
    pub fn save(path: &std::path::Path, encoded: &[u8]) -> Result<(), crate::framed::FramedError> {
        crate::framed::write(path, MAGIC, encoded)
    }

    /// Loads the checkpoint at `path` (none: empty state), judging by `rules`; returns it and
    /// the log offset it covers.
    pub fn load(
        path: &std::path::Path,
        rules: Arc<RuleSet>,
    ) -> Result<(DeviceRules, Option<u64>), crate::framed::FramedError> {
        let mut d = DeviceRules::new(rules);
        let Some(body) = crate::framed::read(path, MAGIC)? else {
            return Ok((d, None));
        };
        let cp: Checkpoint =
            serde_json::from_slice(&body).map_err(|e| crate::framed::FramedError::Damaged {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let index: HashMap<&str, usize> = d
            .rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.spec.rule_id.as_str(), i))
            .collect();
        for (id, k, s) in cp.series {
            if let Some(&i) = index.get(id.as_str()) {
                let st = &mut d.states[i];
                let slot = st.series_slot(&k);
                if !s.waiting.is_empty() {
                    st.pending.push(slot);
                }
                st.series[slot as usize].1 = s;
            }
        }
        for (id, dev, s) in cp.devices {
            if let Some(&i) = index.get(id.as_str()) {
                let st = &mut d.states[i];
                let slot = st.device_slot(&dev, &s.key);
                st.devices[slot as usize].1 = s;
            }
        }
        Ok((d, cp.offset))
    }
}

impl RuleSet {
    /// The rules of `tenant` covering the series with `key` (of `device`).
    fn covering(&self, tenant: &Tenant, key: SeriesKeyRef<'_>, device: &[u8]) -> Box<[u32]> {
        let Some(metric) = key.get(METRIC_NAME.as_bytes()) else {
            return Box::new([]);
        };
        let by_metric = std::str::from_utf8(metric)
            .ok()
            .and_then(|m| self.by_metric.get(m));
        by_metric
            .into_iter()
            .flatten()
            .chain(&self.any_metric)
            .copied()
            .filter(|&i| {
                let r = &self.rules[i];
                &r.tenant == tenant && r.covers(key, device, metric)
            })
            .map(|i| i as u32)
            .collect()
    }
}

/// Judges `st`'s waiting readings at or before `watermark` with `judge`, in event-time order,
/// one per timestamp (the last taken wins); the rest keep waiting.
fn judge_waiting(st: &mut Judged, watermark: i64, mut judge: impl FnMut(&mut Judged, i64, f64)) {
    if !st.waiting.iter().any(|(t, _)| *t <= watermark) {
        return;
    }
    let mut w = std::mem::take(&mut st.waiting);
    w.sort_by_key(|(t, _)| *t);
    let mut i = 0;
    while i < w.len() && w[i].0 <= watermark {
        let (t, mut v) = w[i];
        while i + 1 < w.len() && w[i + 1].0 == t {
            i += 1;
            v = w[i].1;
        }
        i += 1;
        judge(st, t, v);
    }
    w.drain(..i);
    st.waiting = w;
}

/// How long after its last reading a device of an offline rule is silent.
fn silent_after(interval_ms: i64, missed: u32) -> i64 {
    interval_ms.saturating_mul(i64::from(missed))
}

fn is_firing(alert: &Option<Alert>) -> bool {
    alert
        .as_ref()
        .is_some_and(|a| a.state == AlertState::Firing)
}

/// Judges one reading of a threshold rule's series.
#[allow(clippy::too_many_arguments)]
fn judge(
    rule: &DeviceRule,
    st: &mut Judged,
    key: &[u8],
    t: i64,
    v: f64,
    op: Op,
    threshold: f64,
    clear: f64,
    sustained: u32,
    out: &mut Vec<Change>,
) {
    st.judged_to = t;
    if is_firing(&st.alert) {
        if !op.holds(v, clear) {
            let mut a = st.alert.take().expect("firing");
            a.state = AlertState::Inactive;
            a.resolved_at = Some(t);
            a.value = v;
            a.last_eval = t;
            st.alert = Some(a.clone());
            st.streak = 0;
            out.push(change(rule, a));
        }
        return;
    }
    if !op.holds(v, threshold) {
        st.streak = 0;
        return;
    }
    if st.streak == 0 {
        st.streak_from = t;
    }
    st.streak += 1;
    if st.streak >= sustained {
        let id = &rule.spec.rule_id;
        let labels = alert_labels(SeriesKeyRef::new_unchecked(key), id, id, rule.severity());
        let a = Alert {
            labels: Labels::from_pairs(labels).unwrap_or_default(),
            state: AlertState::Firing,
            value: v,
            active_at: st.streak_from,
            fired_at: Some(t),
            resolved_at: None,
            keep_firing_since: None,
            last_eval: t,
            annotations: annotations(rule, v),
        };
        st.alert = Some(a.clone());
        out.push(change(rule, a));
    }
}

/// Checks one device of an offline rule against the watermark.
fn silence(
    rule: &DeviceRule,
    st: &mut Seen,
    watermark: i64,
    silent_after: i64,
    missed: u32,
    out: &mut Vec<Change>,
) {
    let silent_from = st.last.saturating_add(silent_after);
    match (is_firing(&st.alert), watermark >= silent_from) {
        (false, true) => {
            let id = &rule.spec.rule_id;
            let labels = alert_labels(
                SeriesKeyRef::new_unchecked(&st.key),
                "DeviceOffline",
                id,
                rule.severity(),
            );
            let a = Alert {
                labels: Labels::from_pairs(labels).unwrap_or_default(),
                state: AlertState::Firing,
                value: ((watermark - st.last) / 1000) as f64,
                active_at: silent_from,
                fired_at: Some(silent_from),
                resolved_at: None,
                keep_firing_since: None,
                last_eval: watermark,
                annotations: BTreeMap::from([(
                    "summary".to_string(),
                    format!(
                        "no reading for {} intervals of {}",
                        missed,
                        rule.spec.interval.as_deref().unwrap_or("")
                    ),
                )]),
            };
            st.alert = Some(a.clone());
            out.push(change(rule, a));
        }
        (true, false) => {
            let mut a = st.alert.take().expect("firing");
            a.state = AlertState::Inactive;
            a.resolved_at = Some(st.last);
            a.last_eval = watermark;
            st.alert = Some(a.clone());
            out.push(change(rule, a));
        }
        _ => {}
    }
}

fn change(rule: &DeviceRule, alert: Alert) -> Change {
    Change {
        tenant: rule.tenant.clone(),
        alert,
        channels: rule.spec.notification_channels.clone(),
    }
}

/// An alert's labels: the series' labels without the metric name, `alertname`, `severity`,
/// and (for offline rules) `rule_id`.
fn alert_labels(
    key: SeriesKeyRef<'_>,
    alertname: &str,
    rule_id: &str,
    severity: &str,
) -> Vec<(String, String)> {
    let mut l: BTreeMap<String, String> = key
        .pairs()
        .filter(|(n, _)| *n != METRIC_NAME.as_bytes())
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    l.insert("alertname".into(), alertname.into());
    l.insert("severity".into(), severity.into());
    if alertname != rule_id {
        l.insert("rule_id".into(), rule_id.into());
    }
    l.into_iter().collect()
}

fn annotations(rule: &DeviceRule, v: f64) -> BTreeMap<String, String> {
    let s = &rule.spec;
    let summary = format!(
        "{} {} {} (now {v}){}",
        s.metric.as_deref().unwrap_or(""),
        s.operator.as_deref().unwrap_or(""),
        s.threshold.unwrap_or(f64::NAN),
        match s.sustained_periods {
            Some(n) if n > 1 => format!(" for {n} readings"),
            _ => String::new(),
        }
    );
    BTreeMap::from([("summary".to_string(), summary)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::{Sample, SeriesKey};

    fn rules(json: &str) -> Arc<RuleSet> {
        let specs: Vec<DeviceRuleSpec> = serde_json::from_str(json).unwrap();
        Arc::new(RuleSet::new(
            specs
                .into_iter()
                .map(|s| DeviceRule::new(s).unwrap())
                .collect(),
        ))
    }

    /// One series' readings, as a batch of their own.
    fn observe(d: &mut DeviceRules, tenant: &Tenant, key: SeriesKeyRef<'_>, samples: &[Sample]) {
        let mut batch = WriteBatch::new(tenant.clone());
        batch.push_key(key, samples, None);
        d.observe(&batch);
    }

    fn t() -> Tenant {
        Tenant::default_tenant()
    }

    fn key(metric: &str, device: &str) -> SeriesKey {
        let mut pairs = [("__name__", metric), ("device", device), ("site", "s1")];
        pairs.sort();
        SeriesKey::from_sorted_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    const HOT: &str = r#"[{"rule_id": "boiler-hot", "device_group": "{site=\"s1\"}", "metric": "temp",
        "operator": ">", "threshold": 80, "sustained_periods": 3, "clear_threshold": 75,
        "severity": "critical", "notification_channels": ["ops"]}]"#;

    /// Readings of one device: above 80 for four, then around the clear threshold, then below.
    fn readings() -> Vec<Sample> {
        [
            70.0, 85.0, 86.0, 79.0, 81.0, 82.0, 83.0, 84.0, 78.0, 76.0, 74.0, 73.0,
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| Sample::new(1_000_000 + i as i64 * 10_000, *v))
        .collect()
    }

    fn run(order: &[Sample], settle_every: usize) -> Vec<(AlertState, i64)> {
        let mut d = DeviceRules::new(rules(HOT));
        let k = key("temp", "b1");
        let mut out = Vec::new();
        let mut max_t = i64::MIN;
        for (i, s) in order.iter().enumerate() {
            observe(&mut d, &t(), k.as_ref(), std::slice::from_ref(s));
            max_t = max_t.max(s.timestamp);
            if i % settle_every == 0 {
                // The watermark trails the newest reading by a minute.
                out.extend(d.settle(max_t - 60_000));
            }
        }
        out.extend(d.settle(i64::MAX));
        out.iter()
            .map(|c| match c.alert.state {
                AlertState::Firing => (AlertState::Firing, c.alert.fired_at.unwrap()),
                s => (s, c.alert.resolved_at.unwrap()),
            })
            .collect()
    }

    #[test]
    fn one_fire_and_one_resolve_whatever_the_order_duplicates_and_bursts() {
        let want = vec![
            (AlertState::Firing, 1_060_000),
            (AlertState::Inactive, 1_100_000),
        ];
        let r = readings();
        assert_eq!(run(&r, 1), want);
        // Every reading twice, redelivered in reverse, in one burst.
        let mut twice: Vec<Sample> = r.iter().chain(r.iter()).copied().collect();
        twice.reverse();
        assert_eq!(run(&twice, 1000), want);
        // Shuffled within the watermark's minute.
        let mut shuffled = r.clone();
        for pair in shuffled.chunks_mut(2) {
            pair.reverse();
        }
        assert_eq!(run(&shuffled, 1), want);
    }

    #[test]
    fn alerts_carry_the_rule_device_and_labels_and_late_readings_are_counted() {
        let mut d = DeviceRules::new(rules(HOT));
        let k = key("temp", "b1");
        observe(&mut d, &t(), k.as_ref(), &readings()[..8]);
        let ch = d.settle(i64::MAX - 1);
        assert_eq!(ch.len(), 1);
        let a = &ch[0].alert;
        assert_eq!(a.labels.get("alertname"), Some("boiler-hot"));
        assert_eq!(a.labels.get("device"), Some("b1"));
        assert_eq!(a.labels.get("site"), Some("s1"));
        assert_eq!(a.labels.get("severity"), Some("critical"));
        assert_eq!(a.labels.get("__name__"), None);
        assert_eq!(ch[0].channels, ["ops"]);
        assert_eq!(d.firing().len(), 1);
        observe(&mut d, &t(), k.as_ref(), &readings()[..1]);
        assert_eq!(d.late, 1);
        // Another device, another metric: untouched.
        observe(&mut d, &t(), key("pressure", "b1").as_ref(), &readings());
        observe(&mut d, &t(), key("temp", "b2").as_ref(), &readings()[..1]);
        // Another tenant's device of the same labels: the rule is not its.
        let other = Tenant::new("other").unwrap();
        observe(&mut d, &other, key("temp", "b3").as_ref(), &readings());
        assert!(d.settle(i64::MAX - 1).is_empty());
    }

    /// Two series whose ids collide are two series: each has its own state and alert, however
    /// their readings interleave.
    #[test]
    fn series_with_colliding_ids_are_judged_apart() {
        let mut d = DeviceRules::new(rules(HOT));
        let (a, b) = (key("temp", "b1"), key("temp", "b2"));
        for (i, s) in readings().iter().enumerate() {
            let mut batch = WriteBatch::new(t());
            // b2 reads ten degrees lower: it never fires.
            let low = Sample::new(s.timestamp, s.value - 10.0);
            for (k, s) in [(&a, *s), (&b, low)] {
                batch.push_known(k.as_ref(), SeriesId(42), 0, &[s]);
            }
            if i % 2 == 0 {
                d.observe(&batch);
            } else {
                // The other order too.
                let mut rev = WriteBatch::new(t());
                for (k, s) in [(&b, low), (&a, *s)] {
                    rev.push_known(k.as_ref(), SeriesId(42), 0, &[s]);
                }
                d.observe(&rev);
            }
        }
        let out = d.settle(i64::MAX);
        let devices: Vec<_> = out
            .iter()
            .map(|c| (c.alert.labels.get("device").unwrap(), c.alert.state))
            .collect();
        assert_eq!(
            devices,
            [("b1", AlertState::Firing), ("b1", AlertState::Inactive)]
        );
    }

    #[test]
    fn offline_fires_after_missed_intervals_and_resolves_on_a_reading() {
        let r = rules(
            r#"[{"rule_id": "silent", "kind": "offline", "device_id": "b1", "interval": "1m",
                "missed_intervals": 3}]"#,
        );
        let mut d = DeviceRules::new(r);
        let k = key("temp", "b1");
        observe(&mut d, &t(), k.as_ref(), &[Sample::new(0, 1.0)]);
        assert!(d.settle(179_999).is_empty());
        let ch = d.settle(180_000);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].alert.labels.get("alertname"), Some("DeviceOffline"));
        assert_eq!(ch[0].alert.labels.get("rule_id"), Some("silent"));
        assert!(d.settle(500_000).is_empty(), "fires once");
        // Saved and loaded: the state goes on.
        let enc = d.encode(Some(7));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.ckpt");
        DeviceRules::save(&path, &enc).unwrap();
        let (mut d, off) = DeviceRules::load(&path, d.rules.clone()).unwrap();
        assert_eq!(off, Some(7));
        assert_eq!(d.firing().len(), 1);
        observe(&mut d, &t(), k.as_ref(), &[Sample::new(510_000, 1.0)]);
        let ch = d.settle(520_000);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].alert.state, AlertState::Inactive);
        assert_eq!(ch[0].alert.resolved_at, Some(510_000));
    }

    #[test]
    fn specs_are_checked_naming_the_field() {
        let bad = |json: &str| {
            let spec: DeviceRuleSpec = serde_json::from_str(json).unwrap();
            DeviceRule::new(spec).unwrap_err()
        };
        assert!(
            bad(r#"{"rule_id": "r", "metric": "t", "operator": ">", "threshold": 1}"#)
                .contains("device_id")
        );
        assert!(bad(
            r#"{"rule_id": "r", "device_id": "d", "metric": "t", "operator": "=>", "threshold": 1}"#
        )
        .contains("operator"));
        assert!(bad(r#"{"rule_id": "r", "device_group": "{site=", "metric": "t", "operator": ">", "threshold": 1}"#).contains("device_group"));
        assert!(
            bad(r#"{"rule_id": "r", "device_id": "d", "metric": "t", "operator": ">"}"#)
                .contains("threshold")
        );
        assert!(
            bad(r#"{"rule_id": "r", "kind": "offline", "device_id": "d"}"#).contains("interval")
        );
        assert!(bad(r#"{"rule_id": "", "device_id": "d"}"#).contains("rule_id"));
        assert!(
            serde_json::from_str::<DeviceRuleSpec>(r#"{"rule_id": "r", "thresold": 1}"#).is_err()
        );
    }
}
