//! Anomaly detection in the server: every `[[anomaly.detectors]]` scores each final 1-minute
//! window of the series it matches, in event-time order, with a [`strata_anomaly::Detector`]
//! per series, and writes `anomaly_score`, `yhat`, `yhat_lower` and `yhat_upper` through the
//! engine like any write (logged, replayed, rolled up). Outputs carry the input's labels, its
//! metric name as `for` (as vmanomaly names it), `detector` when the detector is named, and are
//! stamped at the window's end: the window keyed `start` holds `(start, start + 1m]`, so for
//! readings on minute boundaries the score stands at the reading's own minute, as group
//! rollups stamp theirs.
//!
//! It runs beside the shards, as group rollups do: once every shard has closed a window, the
//! window is scored; progress is checkpointed (a repeat after a crash rewrites the same
//! values). Detectors are not persisted: a series' detector is rebuilt from the warm tier's
//! last [`strata_anomaly::Detector::lookback`] windows when it is first needed (after a start,
//! a restart, or a correction), and the model guarantees that a rebuilt detector scores as the
//! live one would, so a backfill scores as live delivery does. A corrected window is re-scored
//! with every window after it, from a detector rebuilt up to it.
//!
//! Consecutive anomalies within the suppression window are one event: an `AnomalyDetected`
//! alert, firing at its first window and resolved at the first quiet window after the
//! suppression, sent to the notifiers like device rules' alerts. Events of windows older than
//! [`NOTIFY_WITHIN_MS`] when scored (a backfill of last month) are counted, not sent. An open
//! event whose windows a correction re-scores to no anomaly is retracted (resolved as of its
//! start, annotated); one with an anomaly left in them stands.

use crate::device_rules::DeviceRulesHub;
use crate::engine::Engine;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_alert::device::Change;
use strata_alert::state::{Alert, AlertState};
use strata_anomaly::{Detector, Options};
use strata_model::{Labels, Limits, Matcher, Sample, SeriesKey, Tenant, WriteBatch, METRIC_NAME};
use strata_stream::rollup::Figures;
use strata_stream::stage::{Subscriber, Tier};
use strata_stream::window::WindowState;

/// The metrics a detector writes, in [`Output`] order (derived: not rolled up).
pub use strata_model::ANOMALY_OUTPUTS as OUTPUTS;

/// Events of windows older than this when scored are counted, not sent.
pub const NOTIFY_WITHIN_MS: i64 = 3_600_000;

/// Windows scored per read (a catch-up reads this many at once).
const CHUNK: i64 = 1440;

/// Anomaly detection's place among the consumers of corrected windows.
pub const CORRECTIONS: Subscriber = Subscriber::new(1);

/// The window figure a detector scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// The mean of the window's samples.
    Mean,
    /// The smallest sample.
    Min,
    /// The largest sample.
    Max,
    /// The sum.
    Sum,
    /// How many samples.
    Count,
    /// The latest sample.
    Last,
    /// Counter increase, resets handled.
    Increase,
}

impl Figure {
    /// Parses a figure's name.
    pub fn parse(s: &str) -> Option<Figure> {
        Some(match s {
            "mean" => Figure::Mean,
            "min" => Figure::Min,
            "max" => Figure::Max,
            "sum" => Figure::Sum,
            "count" => Figure::Count,
            "last" => Figure::Last,
            "increase" => Figure::Increase,
            _ => return None,
        })
    }

    fn of(self, f: &Figures) -> f64 {
        match self {
            Figure::Mean => f.mean(),
            Figure::Min => f.min,
            Figure::Max => f.max,
            Figure::Sum => f.sum,
            Figure::Count => f.count as f64,
            Figure::Last => f.last.value,
            Figure::Increase => f.increase,
        }
    }
}

/// One configured detector, checked.
#[derive(Debug, Clone)]
pub struct DetectorSpec {
    /// Its name (the `detector` label), if any.
    pub name: Option<String>,
    /// Alternative matcher sets (a selector with `or`); a series matching any is scored.
    pub sets: Vec<Vec<Matcher>>,
    /// The window figure scored.
    pub figure: Figure,
    /// The model's settings.
    pub opts: Options,
    /// The `severity` of its events.
    pub severity: String,
    /// Where its events go.
    pub channels: Vec<String>,
    /// Series scored at most, per tenant.
    pub max_series: usize,
}

impl DetectorSpec {
    fn takes(&self, key: strata_model::SeriesKeyRef<'_>) -> bool {
        let name = key.get(METRIC_NAME.as_bytes()).unwrap_or_default();
        !OUTPUTS.iter().any(|o| o.as_bytes() == name)
            && self.sets.iter().any(|m| Matcher::all_match(m, key))
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AnomalyStats {
    /// Windows scored (re-scored ones included).
    pub scored: AtomicU64,
    /// Windows re-scored after a correction.
    pub rescored: AtomicU64,
    /// Detectors rebuilt from the warm tier.
    pub rebuilt: AtomicU64,
    /// Windows scored above 1.
    pub anomalous: AtomicU64,
    /// Anomaly events (sent or not).
    pub events: AtomicU64,
    /// Events not sent: their window was older than [`NOTIFY_WITHIN_MS`] when scored.
    pub events_unsent: AtomicU64,
    /// Open events withdrawn: a correction's re-scoring found no anomaly in their windows.
    pub retracted: AtomicU64,
    /// Series left unscored by `max_series`.
    pub over_limit: AtomicU64,
    /// Series scored now.
    pub series: AtomicU64,
    /// The first window not yet scored (ms; 0 before any).
    pub next_window: AtomicU64,
}

impl AnomalyStats {
    /// Appends the counters in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        use crate::metrics::{counter, gauge};
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, v) in [
            ("strata_anomaly_windows_scored_total", "Windows scored by anomaly detectors (re-scored ones included).", &self.scored),
            ("strata_anomaly_windows_rescored_total", "Windows scored again after a correction.", &self.rescored),
            ("strata_anomaly_detectors_rebuilt_total", "Series detectors rebuilt from the warm tier.", &self.rebuilt),
            ("strata_anomaly_windows_anomalous_total", "Windows scored above 1.", &self.anomalous),
            ("strata_anomaly_events_total", "Anomaly events (anomalies within one suppression window are one).", &self.events),
            ("strata_anomaly_events_unsent_total", "Anomaly events of windows already old when scored (a backfill): counted, not sent.", &self.events_unsent),
            ("strata_anomaly_events_retracted_total", "Open anomaly events withdrawn: a correction's re-scoring found no anomaly in their windows.", &self.retracted),
            ("strata_anomaly_series_over_limit_total", "Series left unscored by a detector's max_series.", &self.over_limit),
        ] {
            counter(out, name, help, l(v));
        }
        gauge(
            out,
            "strata_anomaly_series",
            "Series with a detector.",
            l(&self.series) as f64,
        );
        gauge(
            out,
            "strata_anomaly_next_window_ms",
            "The first window not yet scored (ms since the epoch).",
            l(&self.next_window) as f64,
        );
    }
}

/// One series' detector and what it has seen.
struct Tracked {
    det: Detector,
    /// The start of the last window observed.
    last: i64,
    /// The open event: its alert, and whether its firing was sent.
    event: Option<(Alert, bool)>,
}

/// The scoring loop's settings and state.
pub struct Scorer {
    /// Reads and writes.
    pub engine: Arc<Engine>,
    /// Configured detectors.
    pub specs: Vec<DetectorSpec>,
    /// Window length.
    pub window_ms: i64,
    /// Where progress is kept.
    pub checkpoint: PathBuf,
    /// Where events go.
    pub events: Option<Arc<DeviceRulesHub>>,
    /// Counters.
    pub stats: Arc<AnomalyStats>,
}

/// A series' final windows in a range: `(start, value)` in order.
type Windows = Vec<(i64, f64)>;

/// Series read from the warm tier: their key and windows, by labels.
type Read = BTreeMap<Labels, (SeriesKey, Windows)>;

/// Per detector, tenant and series.
type States = HashMap<(usize, Tenant, SeriesKey), Tracked>;

impl Scorer {
    /// Runs until `stop` is set, checking twice a second.
    pub fn run(self, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) {
        let mut next = match crate::groups::load_progress(&self.checkpoint, MAGIC) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("anomaly detection stopped: {e}");
                return;
            }
        };
        let mut states = States::new();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.step(&mut next, &mut states, &rt) {
                tracing::error!("anomaly detection: {e}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Scores every window all shards have closed, then re-scores corrected ones.
    fn step(
        &self,
        next: &mut Option<i64>,
        states: &mut States,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let Some((closed, first)) = self.engine.group_progress() else {
            return Ok(());
        };
        let w = self.window_ms;
        let mut start = next.unwrap_or(first.div_euclid(w) * w);
        while start + w <= closed {
            let end = (start + CHUNK * w).min(closed.div_euclid(w) * w);
            for tenant in self.engine.tenants() {
                for i in 0..self.specs.len() {
                    self.score_range(i, &tenant, start, end, states, rt)?;
                }
            }
            crate::groups::save_progress(&self.checkpoint, MAGIC, end)?;
            start = end;
            *next = Some(end);
            self.stats
                .next_window
                .store(end.max(0) as u64, Ordering::Relaxed);
        }
        let pending = self.engine.pending_corrected(CORRECTIONS);
        if pending.is_empty() {
            return Ok(());
        }
        // Each corrected series once, from its earliest corrected window already scored.
        let mut redo: BTreeMap<(Tenant, SeriesKey), i64> = BTreeMap::new();
        for c in pending.iter().filter(|c| next.is_some_and(|n| c.start < n)) {
            let e = redo
                .entry((c.tenant.clone(), c.key.clone()))
                .or_insert(c.start);
            *e = (*e).min(c.start);
        }
        for ((tenant, key), from) in redo {
            for i in 0..self.specs.len() {
                if self.specs[i].takes(key.as_ref()) {
                    self.rescore(i, &tenant, &key, from, start, states, rt)?;
                }
            }
        }
        self.engine.done_corrected(CORRECTIONS, &pending);
        Ok(())
    }

    /// The final windows starting in `[from, to)` of series the detector takes; only `only`
    /// when given.
    fn read(
        &self,
        spec: &DetectorSpec,
        tenant: &Tenant,
        from: i64,
        to: i64,
        only: Option<&Labels>,
    ) -> anyhow::Result<Read> {
        let mut out = Read::new();
        if to <= from {
            return Ok(out);
        }
        let exact: Vec<Matcher>;
        let sets: &[Vec<Matcher>] = match only {
            Some(l) => {
                exact = l
                    .iter()
                    .map(|l| Matcher::equal(&l.name, &l.value))
                    .collect();
                std::slice::from_ref(&exact)
            }
            None => &spec.sets,
        };
        for set in sets {
            for (labels, ws) in self
                .engine
                .rollups(Tier::Window, tenant, set, from + 1, to)?
            {
                let key = labels.key();
                if !spec.takes(key.as_ref()) || out.contains_key(&labels) {
                    continue;
                }
                let values: Windows = ws
                    .iter()
                    .filter(|v| v.start >= from && v.start < to)
                    .filter(|v| v.state != WindowState::Provisional && v.figures.count > 0)
                    .map(|v| (v.start, spec.figure.of(&v.figures)))
                    .filter(|(_, x)| x.is_finite())
                    .collect();
                if !values.is_empty() {
                    out.insert(labels, (key, values));
                }
            }
        }
        Ok(out)
    }

    /// A detector for a series, rebuilt from its windows before `before`.
    fn rebuild(&self, spec: &DetectorSpec, history: &Windows, before: i64) -> Tracked {
        let mut t = Tracked {
            det: Detector::new(spec.opts.clone()),
            last: i64::MIN,
            event: None,
        };
        for &(s, v) in history.iter().filter(|(s, _)| *s < before) {
            t.det.observe(s.div_euclid(self.window_ms), v);
            t.last = s;
        }
        self.stats.rebuilt.fetch_add(1, Ordering::Relaxed);
        t
    }

    /// The windows of history a rebuilt detector replays.
    fn lookback_ms(&self, spec: &DetectorSpec) -> i64 {
        Detector::lookback(&spec.opts) as i64 * self.window_ms
    }

    /// Scores detector `i`'s windows in `[from, to)` for one tenant.
    fn score_range(
        &self,
        i: usize,
        tenant: &Tenant,
        from: i64,
        to: i64,
        states: &mut States,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let spec = &self.specs[i];
        let series = self.read(spec, tenant, from, to, None)?;
        let absent: BTreeSet<&Labels> = series
            .iter()
            .filter(|(_, (k, _))| !states.contains_key(&(i, tenant.clone(), k.clone())))
            .map(|(l, _)| l)
            .collect();
        let mut history = if absent.is_empty() {
            BTreeMap::new()
        } else {
            self.read(spec, tenant, from - self.lookback_ms(spec), from, None)?
        };
        let mut out = Output::new(tenant, spec);
        let mut scored_here = if absent.is_empty() {
            0
        } else {
            states.keys().filter(|k| k.0 == i && &k.1 == tenant).count()
        };
        for (labels, (key, windows)) in &series {
            let key = (i, tenant.clone(), key.clone());
            if !states.contains_key(&key) {
                if scored_here >= spec.max_series {
                    self.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let h = history.remove(labels).map(|(_, w)| w).unwrap_or_default();
                states.insert(key.clone(), self.rebuild(spec, &h, from));
                scored_here += 1;
                self.stats
                    .series
                    .store(states.len() as u64, Ordering::Relaxed);
            }
            let t = states.get_mut(&key).expect("inserted");
            self.observe(spec, labels, t, windows, &mut out);
        }
        out.write(&self.engine, self.events.as_deref(), rt)
    }

    /// Re-scores one series from its corrected window `from` up to `to`.
    #[allow(clippy::too_many_arguments)]
    fn rescore(
        &self,
        i: usize,
        tenant: &Tenant,
        key: &SeriesKey,
        from: i64,
        to: i64,
        states: &mut States,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let spec = &self.specs[i];
        let labels = key.as_ref().labels();
        let mut windows = self
            .read(
                spec,
                tenant,
                from - self.lookback_ms(spec),
                to,
                Some(&labels),
            )?
            .remove(&labels)
            .map(|(_, w)| w)
            .unwrap_or_default();
        let mut t = self.rebuild(spec, &windows, from);
        // The open event (if any) of the live detector stays the series' event.
        if let Some(live) = states.remove(&(i, tenant.clone(), key.clone())) {
            t.event = live.event;
        }
        // One that opened in the re-scored windows stands only if they still hold an anomaly.
        let doubted = t
            .event
            .as_ref()
            .filter(|(a, _)| a.active_at > from)
            .cloned();
        windows.retain(|(s, _)| *s >= from);
        self.stats
            .rescored
            .fetch_add(windows.len() as u64, Ordering::Relaxed);
        let mut out = Output::new(tenant, spec);
        let anomalous = self.observe(spec, &labels, &mut t, &windows, &mut out);
        if let Some((old, sent)) = doubted.filter(|_| anomalous == 0) {
            retract(&mut t, &mut out.changes, old, sent);
            self.stats.retracted.fetch_add(1, Ordering::Relaxed);
        }
        states.insert((i, tenant.clone(), key.clone()), t);
        out.write(&self.engine, self.events.as_deref(), rt)
    }

    /// Feeds windows to a series' detector, collecting outputs and events; returns how many
    /// scored above 1.
    fn observe(
        &self,
        spec: &DetectorSpec,
        labels: &Labels,
        t: &mut Tracked,
        windows: &Windows,
        out: &mut Output<'_>,
    ) -> usize {
        let mut anomalous = 0;
        let w = self.window_ms;
        let now = strata_model::time::now_ms();
        let mut rows = Vec::with_capacity(windows.len());
        for &(start, v) in windows {
            if start <= t.last {
                continue;
            }
            let index = start.div_euclid(w);
            let s = t.det.observe(index, v);
            t.last = start;
            let at = start + w;
            rows.push((at, [s.score, s.yhat, s.yhat_lower, s.yhat_upper]));
            self.stats.scored.fetch_add(1, Ordering::Relaxed);
            let recent = at >= now - NOTIFY_WITHIN_MS;
            if s.score > 1.0 {
                // The detector holds scores at 0 through the suppression after one above 1: a
                // score above 1 opens an event unless one is open already.
                self.stats.anomalous.fetch_add(1, Ordering::Relaxed);
                anomalous += 1;
                if t.event.is_none() {
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                    if !recent {
                        self.stats.events_unsent.fetch_add(1, Ordering::Relaxed);
                    }
                    let a = event_alert(spec, labels, at, s.score);
                    if recent {
                        out.changes.push(a.clone());
                    }
                    t.event = Some((a, recent));
                }
            } else if !s.held {
                if let Some((mut a, sent)) = t.event.take() {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(at);
                    a.last_eval = at;
                    if sent {
                        out.changes.push(a);
                    }
                }
            }
        }
        out.push(labels, &rows);
        anomalous
    }
}

/// Retracts the open event `old` (its firing sent when `sent`), which re-scoring its windows
/// found no anomaly in: in place of the resolution re-scoring gave it at the first quiet
/// window, it is resolved at the time it opened, with an annotation saying why, and sent
/// where its firing went.
fn retract(t: &mut Tracked, changes: &mut Vec<Alert>, old: Alert, sent: bool) {
    changes.retain(|c| !(c.state == AlertState::Inactive && c.active_at == old.active_at));
    if t.event
        .as_ref()
        .is_some_and(|(a, _)| a.active_at == old.active_at)
    {
        t.event = None;
    }
    if sent {
        let mut a = old;
        a.state = AlertState::Inactive;
        a.resolved_at = Some(a.active_at);
        a.last_eval = a.active_at;
        a.annotations.insert(
            "retracted".to_string(),
            "a late correction was re-scored: no anomaly".to_string(),
        );
        changes.push(a);
    }
}

/// The alert of an anomaly event opening at `at`.
fn event_alert(spec: &DetectorSpec, labels: &Labels, at: i64, score: f64) -> Alert {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for l in labels.iter() {
        if l.name == METRIC_NAME {
            pairs.push(("for".into(), l.value.clone()));
        } else if !matches!(
            l.name.as_str(),
            "alertname" | "severity" | "detector" | "for"
        ) {
            pairs.push((l.name.clone(), l.value.clone()));
        }
    }
    pairs.push(("alertname".into(), "AnomalyDetected".into()));
    pairs.push(("severity".into(), spec.severity.clone()));
    if let Some(n) = &spec.name {
        pairs.push(("detector".into(), n.clone()));
    }
    let metric = labels.get(METRIC_NAME).unwrap_or_default();
    Alert {
        labels: Labels::from_pairs(pairs).unwrap_or_default(),
        state: AlertState::Firing,
        value: score,
        active_at: at,
        fired_at: Some(at),
        resolved_at: None,
        keep_firing_since: None,
        last_eval: at,
        annotations: BTreeMap::from([(
            "summary".to_string(),
            format!("{metric} is anomalous (score {score:.2})"),
        )]),
    }
}

/// Outputs and events of one run, written together.
struct Output<'a> {
    spec: &'a DetectorSpec,
    tenant: &'a Tenant,
    batches: Vec<WriteBatch>,
    samples: usize,
    changes: Vec<Alert>,
    /// Outputs have the input's labels and three more: no label-count limit applies.
    limits: Limits,
}

/// Samples per write of outputs.
const BATCH_SAMPLES: usize = 20_000;

impl<'a> Output<'a> {
    fn new(tenant: &'a Tenant, spec: &'a DetectorSpec) -> Output<'a> {
        Output {
            spec,
            tenant,
            batches: vec![WriteBatch::new(tenant.clone())],
            samples: 0,
            changes: Vec::new(),
            limits: Limits {
                max_labels_per_series: usize::MAX,
                ..Limits::default()
            },
        }
    }

    /// Queues the four outputs of a series' windows (`(stamp, [score, yhat, lower, upper])`):
    /// one series entry per output, whatever the number of windows.
    fn push(&mut self, labels: &Labels, rows: &[(i64, [f64; 4])]) {
        if rows.is_empty() {
            return;
        }
        if self.samples >= BATCH_SAMPLES {
            self.batches.push(WriteBatch::new(self.tenant.clone()));
            self.samples = 0;
        }
        let batch = self.batches.last_mut().expect("one batch at least");
        // The input's labels, `for` in place of its name, and each output's name in turn.
        let mut base: Vec<(&[u8], &[u8])> = Vec::with_capacity(labels.len() + 2);
        for l in labels.iter() {
            if l.name == METRIC_NAME {
                base.push((b"for", l.value.as_bytes()));
            } else if l.name != "for" && l.name != "detector" {
                base.push((l.name.as_bytes(), l.value.as_bytes()));
            }
        }
        if let Some(n) = &self.spec.name {
            base.push((b"detector", n.as_bytes()));
        }
        let mut samples = Vec::with_capacity(rows.len());
        for (k, name) in OUTPUTS.iter().enumerate() {
            // `push_series` sorts the pairs: the previous output's name is found, not popped.
            base.retain(|(k, _)| *k != METRIC_NAME.as_bytes());
            base.push((METRIC_NAME.as_bytes(), name.as_bytes()));
            samples.clear();
            samples.extend(rows.iter().map(|(at, v)| Sample::new(*at, v[k])));
            if let Err(e) = batch.push_series(&mut base, &samples, None, &self.limits) {
                tracing::warn!(error = %e, "anomaly output not written");
            }
            self.samples += samples.len();
        }
    }

    /// Writes what is queued (in batches) and sends the events.
    fn write(
        self,
        engine: &Engine,
        events: Option<&DeviceRulesHub>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        for batch in self.batches.into_iter().filter(|b| !b.is_empty()) {
            rt.block_on(engine.write(batch))?;
        }
        if let Some(hub) = events {
            // One offer per change: an event that fired and resolved within one run is two
            // notifications, in order, not one of a resolved alert.
            for alert in self.changes {
                hub.publish_events(vec![Change {
                    tenant: self.tenant.clone(),
                    alert,
                    channels: self.spec.channels.clone(),
                }]);
            }
        }
        Ok(())
    }
}

const MAGIC: &[u8; 8] = b"STRANOMP";
