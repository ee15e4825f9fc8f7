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
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_alert::device::Change;
use strata_alert::state::{Alert, AlertState};
use strata_anomaly::{Detector, Options, Profile};
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

/// New series whose history is read one by one; more are read with every other series'.
const ABSENT_ONE_BY_ONE: usize = 16;

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

    /// Every figure, in declaration order: the order [`FedWindow::values`] holds them.
    const ALL: [Figure; 7] = [
        Figure::Mean,
        Figure::Min,
        Figure::Max,
        Figure::Sum,
        Figure::Count,
        Figure::Last,
        Figure::Increase,
    ];

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

    /// Its place in [`Figure::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

// `Figure::index` is the declaration order: `ALL` must list the figures in it.
const _: () = {
    let mut i = 0;
    while i < Figure::ALL.len() {
        assert!(Figure::ALL[i] as usize == i);
        i += 1;
    }
};

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
    /// The daily or weekly profile, when fitted.
    pub profile: Option<ProfileSpec>,
}

/// How a detector's daily or weekly [`Profile`] is fitted: from the 1-hour tier's hours in
/// `[t - history_ms, t)` at every refit time `t` (a multiple of `refit_ms` since the epoch),
/// and used for the windows from `t` to the next refit. Live scoring and a rebuild fit the
/// same profile from the same stored hours, so they score alike (unless a correction changed
/// those hours in between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileSpec {
    /// Between refits, ms.
    pub refit_ms: i64,
    /// The span fitted from, ms.
    pub history_ms: i64,
}

impl DetectorSpec {
    fn takes(&self, key: strata_model::SeriesKeyRef<'_>) -> bool {
        let name = key.get(METRIC_NAME.as_bytes()).unwrap_or_default();
        !strata_model::is_anomaly_output(name)
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
    /// Windows handed over by the shards as they closed.
    pub fed: AtomicU64,
    /// Windows read back from the warm tier (closed before the scorer started, while it had
    /// fallen behind, or history for a rebuild).
    pub read_back: AtomicU64,
    /// Daily or weekly profiles fitted (a series' each refit that found a shape).
    pub profiles: AtomicU64,
    /// Series scored now.
    pub series: AtomicU64,
    /// The first window not yet scored (ms; 0 before any).
    pub next_window: AtomicU64,
}

impl crate::metrics::Stage for AnomalyStats {
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
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
            ("strata_anomaly_windows_fed_total", "Windows handed to anomaly detectors by the shards as they closed.", &self.fed),
            ("strata_anomaly_profiles_fitted_total", "Daily or weekly profiles fitted from the 1-hour tier (one per series and refit that found a shape).", &self.profiles),
            ("strata_anomaly_windows_read_back_total", "Windows anomaly detectors read back from the warm tier (closed before they started or while they were behind, or history to rebuild a detector from).", &self.read_back),
        ] {
            out.counter(name, help, l(v));
        }
        out.gauge(
            "strata_anomaly_series",
            "Series with a detector.",
            l(&self.series),
        );
        out.gauge(
            "strata_anomaly_next_window_timestamp_seconds",
            "Start of the first window not yet scored (Unix seconds).",
            l(&self.next_window) as f64 / 1000.0,
        );
    }
}

/// One series' detector and what it has seen.
struct Tracked {
    /// The series' labels (its outputs' and events' own).
    labels: Labels,
    det: Detector,
    /// The start of the last window observed.
    last: i64,
    /// The open event: its alert, and whether its firing was sent.
    event: Option<(Alert, bool)>,
    /// The refit time whose profile the detector uses (`i64::MIN`: none set yet).
    profile_at: i64,
    /// Profiles fitted, by refit time (the last few).
    profiles: BTreeMap<i64, Option<Arc<Profile>>>,
}

/// Profiles a series keeps (a rebuild replays a few days: a few refits).
const PROFILES_KEPT: usize = 8;

/// Profiles fitted in one scoring run of a detector and tenant: for many series, the hours of
/// every series are read at once for each refit time; for a few, one series at a time.
struct Profiles<'a> {
    spec: &'a DetectorSpec,
    tenant: &'a Tenant,
    bulk: bool,
    fitted: HashMap<i64, HashMap<SeriesKey, Arc<Profile>>>,
}

impl<'a> Profiles<'a> {
    /// None fitted yet; `bulk` for a run over many series.
    fn new(spec: &'a DetectorSpec, tenant: &'a Tenant, bulk: bool) -> Profiles<'a> {
        Profiles {
            spec,
            tenant,
            bulk,
            fitted: HashMap::new(),
        }
    }

    /// The profile of series `key` for refit time `at`.
    fn get(
        &mut self,
        s: &Scorer,
        key: &SeriesKey,
        at: i64,
    ) -> anyhow::Result<Option<Arc<Profile>>> {
        let Some(p) = self.spec.profile else {
            return Ok(None);
        };
        let range = (at - p.history_ms, at);
        if !self.bulk {
            let only = key.as_ref().labels();
            let hours = s.read_hours(self.spec, self.tenant, range, Some(&only))?;
            return Ok(hours.get(key).and_then(|h| Profile::fit(h)).map(Arc::new));
        }
        if !self.fitted.contains_key(&at) {
            let fitted = s
                .read_hours(self.spec, self.tenant, range, None)?
                .into_iter()
                .filter_map(|(k, h)| Some((k, Arc::new(Profile::fit(&h)?))))
                .collect();
            self.fitted.insert(at, fitted);
        }
        Ok(self.fitted[&at].get(key).cloned())
    }
}

/// The scoring loop's settings and state.
pub struct Scorer {
    /// Reads and writes.
    pub engine: Arc<Engine>,
    /// Configured detectors.
    pub specs: Arc<[DetectorSpec]>,
    /// Window length.
    pub window_ms: i64,
    /// Where progress is kept.
    pub checkpoint: PathBuf,
    /// Where events go.
    pub events: Option<Arc<DeviceRulesHub>>,
    /// Counters.
    pub stats: Arc<AnomalyStats>,
    /// Each shard's final windows as they close (see [`Feed`]); empty: every window is read
    /// back from the warm tier.
    pub feeds: Vec<Arc<Feed>>,
}

/// A series' final windows in a range: `(start, value)` in order.
type Windows = Vec<(i64, f64)>;

/// Series to score: their windows, by key.
type Read = BTreeMap<SeriesKey, Windows>;

/// Windows a feed holds at most before it gives up (until the next settle) and the scorer
/// reads them back instead: a scorer that is stopped or far behind costs the shard no memory.
const FEED_MAX: usize = 1 << 18;

/// One shard's final windows of the series some detector takes, handed over as they close
/// (a [`strata_stream::stage::FinalTap`]), so the scorer reads back from the warm tier only what
/// closed before it attached, or while it had fallen behind by [`FEED_MAX`] windows.
pub struct Feed {
    specs: Arc<[DetectorSpec]>,
    /// [`FEED_MAX`], but in tests.
    max: usize,
    state: parking_lot::Mutex<FeedState>,
}

struct FeedState {
    /// Every window starting at or after this that closed is in `windows` or was taken.
    complete_from: i64,
    /// Over [`FEED_MAX`]: nothing is kept until the next settle.
    overflowed: bool,
    windows: Vec<FedWindow>,
    /// Per series index of the shard's windows: its series, or `None` when no detector takes
    /// it (the outer `None`: not looked at yet).
    series: Vec<Option<Option<Arc<FedSeries>>>>,
}

/// A series some detector takes.
struct FedSeries {
    tenant: Tenant,
    key: SeriesKey,
    /// Bit `i`: detector `i` takes it.
    specs: u64,
}

/// A final window of a [`FedSeries`].
struct FedWindow {
    series: Arc<FedSeries>,
    start: i64,
    /// The figures detectors score, in [`Figure::ALL`] order.
    values: [f64; 7],
}

impl Feed {
    /// A feed for `specs` (at most 64), complete for windows starting at or after `from`.
    pub fn new(specs: Arc<[DetectorSpec]>, from: i64) -> Feed {
        Feed {
            specs,
            max: FEED_MAX,
            state: parking_lot::Mutex::new(FeedState {
                complete_from: from,
                overflowed: false,
                windows: Vec::new(),
                series: Vec::new(),
            }),
        }
    }

    /// The fed windows starting before `end`, when the feed holds every window starting in
    /// `[start, end)`; those windows are dropped either way.
    fn take(&self, start: i64, end: i64, out: &mut Vec<FedWindow>) -> bool {
        let mut st = self.state.lock();
        let complete = st.complete_from <= start && !st.overflowed;
        // In place: the buffer keeps its room for the next windows.
        let taken = st.windows.extract_if(.., |w| w.start < end);
        if complete {
            out.extend(taken);
        } else {
            taken.for_each(drop);
        }
        complete
    }
}

impl strata_stream::stage::FinalTap for Feed {
    fn closed(&self, w: &strata_stream::window::ClosedWindow<'_>, figures: &Figures) {
        if figures.count == 0 {
            return;
        }
        let mut st = self.state.lock();
        if st.overflowed {
            return;
        }
        let i = w.series as usize;
        if st.series.len() <= i {
            st.series.resize(i + 1, None);
        }
        let series = st.series[i].get_or_insert_with(|| {
            let specs = self
                .specs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.takes(w.key))
                .fold(0u64, |m, (i, _)| m | 1 << i);
            (specs != 0).then(|| {
                Arc::new(FedSeries {
                    tenant: w.tenant.clone(),
                    key: w.key.to_owned(),
                    specs,
                })
            })
        });
        let Some(series) = series.clone() else {
            return;
        };
        if st.windows.len() >= self.max {
            st.windows = Vec::new();
            st.overflowed = true;
            return;
        }
        st.windows.push(FedWindow {
            series,
            start: w.start,
            values: Figure::ALL.map(|f| f.of(figures)),
        });
    }

    fn settled(&self, closed_before: i64) {
        let mut st = self.state.lock();
        if st.overflowed {
            st.overflowed = false;
            st.complete_from = closed_before;
        }
    }

    fn forgotten(&self, series: u32) {
        if let Some(s) = self.state.lock().series.get_mut(series as usize) {
            *s = None;
        }
    }
}

/// Per detector and tenant, by series.
type States = HashMap<(usize, Tenant), HashMap<SeriesKey, Tracked>>;

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
        let mut fed = Vec::new();
        while start + w <= closed {
            let end = (start + CHUNK * w).min(closed.div_euclid(w) * w);
            fed.clear();
            // Every feed drops what it holds before `end`, complete or not.
            let complete = !self.feeds.is_empty()
                && self
                    .feeds
                    .iter()
                    .fold(true, |all, f| f.take(start, end, &mut fed) & all);
            if complete {
                self.stats
                    .fed
                    .fetch_add(fed.len() as u64, Ordering::Relaxed);
                for ((tenant, i), series) in self.group_fed(&mut fed) {
                    self.score_series(i, &tenant, start, series, states, rt)?;
                }
            } else {
                for tenant in self.engine.tenants() {
                    for i in 0..self.specs.len() {
                        let series = self.read(&self.specs[i], &tenant, start, end, None)?;
                        self.score_series(i, &tenant, start, series, states, rt)?;
                    }
                }
            }
            crate::groups::save_progress(&self.checkpoint, MAGIC, end)?;
            start = end;
            *next = Some(end);
            self.stats
                .next_window
                .store(end.max(0) as u64, Ordering::Relaxed);
        }
        // Corrections of windows not scored yet wait: a fed window holds the figures it
        // closed with, so its correction is applied once it is scored.
        let mut pending = self.engine.pending_corrected(CORRECTIONS);
        pending.retain(|c| next.is_some_and(|n| c.start < n));
        if pending.is_empty() {
            return Ok(());
        }
        // Each corrected series once, from its earliest corrected window.
        let mut redo: BTreeMap<(Tenant, SeriesKey), i64> = BTreeMap::new();
        for c in &pending {
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

    /// Fed windows by detector and tenant, each series' in order.
    fn group_fed(&self, fed: &mut Vec<FedWindow>) -> BTreeMap<(Tenant, usize), Read> {
        let mut out: BTreeMap<(Tenant, usize), Read> = BTreeMap::new();
        for f in fed.drain(..) {
            for (i, spec) in self.specs.iter().enumerate() {
                let v = f.values[spec.figure.index()];
                if f.series.specs & (1 << i) == 0 || !v.is_finite() {
                    continue;
                }
                let read = out.entry((f.series.tenant.clone(), i)).or_default();
                match read.get_mut(&f.series.key) {
                    Some(ws) => ws.push((f.start, v)),
                    None => {
                        read.insert(f.series.key.clone(), vec![(f.start, v)]);
                    }
                }
            }
        }
        for read in out.values_mut() {
            for ws in read.values_mut() {
                ws.sort_unstable_by_key(|(s, _)| *s);
            }
        }
        out
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
        for set in self.sets(spec, only).iter() {
            for (labels, ws) in self
                .engine
                .rollups(Tier::Window, tenant, set, from + 1, to)?
            {
                let key = labels.key();
                if !spec.takes(key.as_ref()) || out.contains_key(&key) {
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
                    self.stats
                        .read_back
                        .fetch_add(values.len() as u64, Ordering::Relaxed);
                    out.insert(key, values);
                }
            }
        }
        Ok(out)
    }

    /// A detector for a series, rebuilt from its windows before `before`, with the profiles
    /// `kept` (from the detector it replaces).
    fn rebuild(
        &self,
        spec: &DetectorSpec,
        key: &SeriesKey,
        history: &Windows,
        before: i64,
        profiles: &mut Profiles<'_>,
        kept: BTreeMap<i64, Option<Arc<Profile>>>,
    ) -> anyhow::Result<Tracked> {
        let mut t = Tracked {
            labels: key.as_ref().labels(),
            det: Detector::new(spec.opts.clone()),
            last: i64::MIN,
            event: None,
            profile_at: i64::MIN,
            profiles: kept,
        };
        for &(s, v) in history.iter().filter(|(s, _)| *s < before) {
            self.season(spec, &mut t, key, s, profiles)?;
            t.det.observe(s.div_euclid(self.window_ms), v);
            t.last = s;
        }
        self.stats.rebuilt.fetch_add(1, Ordering::Relaxed);
        Ok(t)
    }

    /// Sets the profile of the refit period holding window `start` on a series' detector.
    fn season(
        &self,
        spec: &DetectorSpec,
        t: &mut Tracked,
        key: &SeriesKey,
        start: i64,
        profiles: &mut Profiles<'_>,
    ) -> anyhow::Result<()> {
        let Some(p) = spec.profile else {
            return Ok(());
        };
        let at = start.div_euclid(p.refit_ms) * p.refit_ms;
        if t.profile_at == at {
            return Ok(());
        }
        let fitted = match t.profiles.get(&at) {
            Some(f) => f.clone(),
            None => {
                let f = profiles.get(self, key, at)?;
                if f.is_some() {
                    self.stats.profiles.fetch_add(1, Ordering::Relaxed);
                }
                t.profiles.insert(at, f.clone());
                while t.profiles.len() > PROFILES_KEPT {
                    t.profiles.pop_first();
                }
                f
            }
        };
        t.det
            .set_profile(fitted, strata_stream::hour::HOUR_MS / self.window_ms);
        t.profile_at = at;
        Ok(())
    }

    /// The hourly values (`(hour index, value)`, in order) of the series the detector takes
    /// (only `only` when given) in hours starting in `[from, to)`, read from the 1-hour tier as
    /// the detector's figure would be per window.
    fn read_hours(
        &self,
        spec: &DetectorSpec,
        tenant: &Tenant,
        (from, to): (i64, i64),
        only: Option<&Labels>,
    ) -> anyhow::Result<HashMap<SeriesKey, Vec<(i64, f64)>>> {
        use strata_model::WindowStorage;
        const HOUR: i64 = strata_stream::hour::HOUR_MS;
        let per_hour = (HOUR / self.window_ms) as f64;
        let needs = strata_model::FigureNeeds {
            sum: true,
            increase: spec.figure == Figure::Increase,
            ..Default::default()
        };
        let mut out = HashMap::new();
        let mut buf = Vec::new();
        for set in self.sets(spec, only).iter() {
            // Hours are stamped at their end.
            let got = self.engine.windows(
                tenant,
                set,
                strata_model::Resolution::Hour,
                from + HOUR,
                to,
                needs,
            )?;
            for series in got {
                let key = series.labels.key();
                if !spec.takes(key.as_ref()) || out.contains_key(&key) {
                    continue;
                }
                buf.clear();
                series.read(&mut buf)?;
                let hours: Vec<(i64, f64)> = buf
                    .iter()
                    .filter(|w| w.count > 0)
                    .map(|w| {
                        let v = match spec.figure {
                            Figure::Sum => w.sum / per_hour,
                            Figure::Count => w.count as f64 / per_hour,
                            Figure::Increase => w.increase / per_hour,
                            // The shape of the minutes' means, minima, maxima and last values
                            // is the hours' means'.
                            _ => w.sum / w.count as f64,
                        };
                        ((w.end - 1).div_euclid(HOUR), v)
                    })
                    .filter(|(h, v)| v.is_finite() && (from..to).contains(&(h * HOUR)))
                    .collect();
                out.insert(key, hours);
            }
        }
        Ok(out)
    }

    /// The detector's matcher sets, or one matching `only` exactly.
    fn sets<'s>(
        &self,
        spec: &'s DetectorSpec,
        only: Option<&Labels>,
    ) -> std::borrow::Cow<'s, [Vec<Matcher>]> {
        match only {
            Some(l) => std::borrow::Cow::Owned(vec![l
                .iter()
                .map(|l| Matcher::equal(&l.name, &l.value))
                .collect()]),
            None => std::borrow::Cow::Borrowed(&spec.sets),
        }
    }

    /// The windows of history a rebuilt detector replays.
    fn lookback_ms(&self, spec: &DetectorSpec) -> i64 {
        Detector::lookback(&spec.opts) as i64 * self.window_ms
    }

    /// Scores detector `i`'s windows of one tenant's `series`, which start at or after `from`.
    fn score_series(
        &self,
        i: usize,
        tenant: &Tenant,
        from: i64,
        series: Read,
        states: &mut States,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let spec = &self.specs[i];
        let tracked = states.entry((i, tenant.clone())).or_default();
        let absent: Vec<&SeriesKey> = series
            .keys()
            .filter(|k| !tracked.contains_key(*k))
            .collect();
        // The history of series without a detector: all at once when there are many (a
        // start), else each on its own (a new device).
        let mut history = if absent.len() > ABSENT_ONE_BY_ONE {
            self.read(spec, tenant, from - self.lookback_ms(spec), from, None)?
        } else {
            let mut h = Read::new();
            for key in &absent {
                let only = key.as_ref().labels();
                let got = self.read(
                    spec,
                    tenant,
                    from - self.lookback_ms(spec),
                    from,
                    Some(&only),
                )?;
                h.extend(got);
            }
            h
        };
        let mut out = Output::new(tenant, spec);
        let mut profiles = Profiles::new(spec, tenant, series.len() > ABSENT_ONE_BY_ONE);
        for (key, windows) in &series {
            if !tracked.contains_key(key) {
                if tracked.len() >= spec.max_series {
                    self.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let h = history.remove(key).unwrap_or_default();
                let t = self.rebuild(spec, key, &h, from, &mut profiles, BTreeMap::new())?;
                tracked.insert(key.clone(), t);
            }
            let t = tracked.get_mut(key).expect("inserted");
            self.observe(spec, key, t, windows, &mut out, &mut profiles)?;
        }
        self.count_series(states);
        out.write(&self.engine, self.events.as_deref(), rt)
    }

    fn count_series(&self, states: &States) {
        let n: usize = states.values().map(HashMap::len).sum();
        self.stats.series.store(n as u64, Ordering::Relaxed);
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
            .remove(key)
            .unwrap_or_default();
        let tracked = states.entry((i, tenant.clone())).or_default();
        let live = tracked.remove(key);
        let mut profiles = Profiles::new(spec, tenant, false);
        let kept = live
            .as_ref()
            .map(|l| l.profiles.clone())
            .unwrap_or_default();
        let mut t = self.rebuild(spec, key, &windows, from, &mut profiles, kept)?;
        // The open event (if any) of the live detector stays the series' event.
        if let Some(live) = live {
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
        let anomalous = self.observe(spec, key, &mut t, &windows, &mut out, &mut profiles)?;
        if let Some((old, sent)) = doubted.filter(|_| anomalous == 0) {
            retract(&mut t, &mut out.changes, old, sent);
            self.stats.retracted.fetch_add(1, Ordering::Relaxed);
        }
        tracked.insert(key.clone(), t);
        self.count_series(states);
        out.write(&self.engine, self.events.as_deref(), rt)
    }

    /// Feeds windows to a series' detector, collecting outputs and events; returns how many
    /// scored above 1.
    fn observe(
        &self,
        spec: &DetectorSpec,
        key: &SeriesKey,
        t: &mut Tracked,
        windows: &Windows,
        out: &mut Output<'_>,
        profiles: &mut Profiles<'_>,
    ) -> anyhow::Result<usize> {
        let mut anomalous = 0;
        let w = self.window_ms;
        let now = strata_model::time::now_ms();
        let mut rows = Vec::with_capacity(windows.len());
        for &(start, v) in windows {
            if start <= t.last {
                continue;
            }
            self.season(spec, t, key, start, profiles)?;
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
                    let a = event_alert(spec, &t.labels, at, s.score);
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
        out.push(&t.labels, &rows);
        Ok(anomalous)
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

#[cfg(test)]
mod tests {
    use super::*;
    use strata_stream::rollup::Rollup;
    use strata_stream::stage::FinalTap;
    use strata_stream::window::ClosedWindow;

    fn feed(from: i64, max: usize) -> Feed {
        let spec = DetectorSpec {
            name: None,
            sets: vec![vec![Matcher::equal(METRIC_NAME, "load")]],
            figure: Figure::Max,
            opts: Options::default(),
            severity: "page".into(),
            channels: Vec::new(),
            max_series: 10,
            profile: None,
        };
        let mut f = Feed::new(vec![spec].into(), from);
        f.max = max;
        f
    }

    /// Closes window `start` of series number `series` (`load` or `other`) with value `v`.
    fn close(f: &Feed, series: u32, name: &str, start: i64, v: f64) {
        let key = Labels::from_pairs([(METRIC_NAME, name), ("host", "h1")])
            .unwrap()
            .key();
        let r = Rollup::of_sorted(&[Sample::new(start + 1, v)], false).unwrap();
        let w = ClosedWindow {
            series,
            tenant: &Tenant::default(),
            key: key.as_ref(),
            start,
            rollup: r.clone(),
        };
        f.closed(&w, &r.figures(&[]));
    }

    #[test]
    fn a_feed_hands_over_what_detectors_take_and_says_when_it_is_incomplete() {
        let f = feed(60_000, 3);
        close(&f, 0, "load", 60_000, 5.0);
        close(&f, 1, "other", 60_000, 7.0);
        close(&f, 0, "load", 120_000, 6.0);
        let mut got = Vec::new();
        // Before the feed started: not complete, and what it held before the end is dropped.
        assert!(!f.take(0, 120_000, &mut got));
        assert!(got.is_empty());
        assert!(f.take(120_000, 180_000, &mut got));
        let values: Vec<(i64, f64)> = got.iter().map(|w| (w.start, w.values[1])).collect();
        assert_eq!(values, [(120_000, 6.0)], "only `load`; its max");
        // Over its limit the feed gives up until the next settle, then starts again.
        for (i, s) in [180_000, 240_000, 300_000, 360_000].into_iter().enumerate() {
            close(&f, 0, "load", s, i as f64);
        }
        got.clear();
        assert!(!f.take(180_000, 420_000, &mut got));
        f.settled(420_000);
        close(&f, 0, "load", 420_000, 9.0);
        assert!(!f.take(360_000, 420_000, &mut got), "not before the settle");
        assert!(f.take(420_000, 480_000, &mut got));
        assert_eq!(got.len(), 1);
        // A forgotten series' index may stand for another.
        f.forgotten(1);
        close(&f, 1, "load", 480_000, 1.0);
        got.clear();
        assert!(f.take(480_000, 540_000, &mut got));
        assert_eq!(got.len(), 1, "index 1 is now a `load` series");
    }
}
