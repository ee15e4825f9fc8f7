//! The warm tier of one shard: the figures of final windows, kept in a storage engine of their
//! own so they get its compression, blocks, index and retention.
//!
//! Each figure of a series' windows is a series of its own: the raw series' labels plus
//! `__rollup__="<figure>"` (`count`, `sum`, `min`, ..., `revision` (absent while 0), `q<quantile>` for
//! sketches), with one sample per window at the window's start. A window is written in one
//! append, so its figures are never seen half-written; a correction writes the window again at
//! the same timestamps and, the storage rule being "last write wins", replaces it.
//!
//! A window whose figures do not give back its mergeable state (a quantile sketch, sums not
//! exactly their rounded figures; see [`crate::state`]) also keeps that state, as bytes, in the
//! figure series `state`: at the window's start the byte length, then six bytes per sample at
//! the following milliseconds, each as an integer below 2^48 (exactly an `f64`, so any lossless
//! codec keeps it). A state must fit the window (a sample per millisecond); the state carries
//! its revision, so one left over from a longer earlier revision is recognized and ignored.
//!
//! The store is derived data: it is rebuilt from the ingest log on replay, so it needs no log of
//! its own (see the shard's checkpoint order).

use crate::rollup::Figures;
use ahash::AHashMap;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::Path;
use strata_model::{
    FigureNeeds, Labels, LazySeries, Matcher, Sample, SelectHints, SeriesId, SeriesKey,
    SeriesKeyRef, Storage, StorageError, Tenant, WindowFigures,
};
use strata_tsdb::{Renumbering, SeriesHandle, SeriesLimiter, Tsdb, TsdbError, TsdbOptions};

/// The label naming which figure a warm series holds.
pub const FIGURE_LABEL: &str = "__rollup__";

const COUNT: &str = "count";
const SUM: &str = "sum";
const SUM_SQUARES: &str = "sum_squares";
const MIN: &str = "min";
const MAX: &str = "max";
const FIRST: &str = "first";
const FIRST_TS: &str = "first_ts";
const LAST: &str = "last";
const LAST_TS: &str = "last_ts";
const INCREASE: &str = "increase";
const REVISION: &str = "revision";
/// The figure series holding windows' mergeable state (see the module doc).
pub const STATE_FIGURE: &str = "state";
/// State bytes per sample of the `state` series.
const STATE_BYTES_PER_SAMPLE: usize = 6;

/// Samples (timestamps from the window start) a state of `len` bytes takes in the store.
pub fn state_samples(len: usize) -> i64 {
    1 + len.div_ceil(STATE_BYTES_PER_SAMPLE) as i64
}

/// The `state` series' samples for `bytes` of a window starting at `start`.
fn state_to_samples(start: i64, bytes: &[u8], out: &mut Vec<Sample>) {
    out.push(Sample::new(start, bytes.len() as f64));
    for (i, six) in bytes.chunks(STATE_BYTES_PER_SAMPLE).enumerate() {
        let mut w = [0u8; 8];
        w[..six.len()].copy_from_slice(six);
        out.push(Sample::new(
            start + 1 + i as i64,
            u64::from_le_bytes(w) as f64,
        ));
    }
}

/// The state bytes of the window starting at `start` from the `state` series' samples (sorted),
/// `None` when it has none; an error when its samples are incomplete.
fn state_from_samples(start: i64, samples: &[Sample]) -> Result<Option<Vec<u8>>, StorageError> {
    let at = samples.partition_point(|s| s.timestamp < start);
    let Some(head) = samples.get(at).filter(|s| s.timestamp == start) else {
        return Ok(None);
    };
    let len = head.value as usize;
    let n = state_samples(len) as usize - 1;
    let body = samples.get(at + 1..at + 1 + n).unwrap_or(&[]);
    let whole = body.len() == n
        && body
            .iter()
            .enumerate()
            .all(|(i, s)| s.timestamp == start + 1 + i as i64 && s.value < (1u64 << 48) as f64);
    if !whole || head.value != len as f64 {
        return Err(StorageError::Io(format!(
            "warm tier: the state of the window at {start} is incomplete"
        )));
    }
    let mut out = Vec::with_capacity(n * STATE_BYTES_PER_SAMPLE);
    for s in body {
        out.extend_from_slice(&(s.value as u64).to_le_bytes()[..STATE_BYTES_PER_SAMPLE]);
    }
    out.truncate(len);
    Ok(Some(out))
}

/// A final window as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    /// Window start, ms.
    pub start: i64,
    /// Its figures.
    pub figures: Figures,
    /// 0 when first final; each correction adds one.
    pub revision: u32,
    /// Its mergeable state (see [`crate::state`]) when one was stored and asked for; it may be
    /// one left from another revision (the state says which).
    pub state: Option<Vec<u8>>,
}

/// A raw series' place in the warm tier (see [`RollupStore::series`]): writing a window by it
/// costs no key building, hashing or lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmId(u32);

impl WarmId {
    /// The place as an index (dense: a consumer may keep per-series state in a vector).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The place at `index`, as [`WarmId::index`] gave it.
    pub(crate) fn from_index(index: usize) -> WarmId {
        WarmId(index as u32)
    }
}

/// One window to store.
#[derive(Debug, Clone)]
pub struct WindowWrite {
    /// The raw series.
    pub series: WarmId,
    /// Window start, ms.
    pub start: i64,
    /// What to store.
    pub figures: Figures,
    /// Its revision.
    pub revision: u32,
    /// Its mergeable state when its figures do not give it back (see [`crate::state`]); at most
    /// as many bytes as [`state_samples`] fits into the window.
    pub state: Option<Vec<u8>>,
}

/// Final windows of one shard.
pub struct RollupStore {
    tsdb: Tsdb,
    warm: Mutex<WarmSeriesTable>,
}

/// Windows a series stages before they go to the storage engine together. Each figure is a
/// series of its own there, so a window written alone touches eleven series' buffers (a cache
/// miss each); written in runs, each buffer is touched once per run.
const STAGED_WINDOWS: usize = 16;

/// The figure series of one raw series, and its windows not yet in the storage engine.
struct WarmSeries {
    tenant: Tenant,
    key: SeriesKey,
    /// In the order of [`BASE_FIGURES`]; made with the first window written (a tier may hold
    /// a place for a series all day before it writes, as the day tier does).
    base: Option<[SeriesHandle; BASE_FIGURES.len()]>,
    quantiles: Vec<(f64, SeriesHandle)>,
    /// The `state` series, made with the first state.
    state: Option<SeriesHandle>,
    /// At most one per window start, at most [`STAGED_WINDOWS`].
    staged: Vec<StagedWindow>,
    /// Listed in [`WarmSeriesTable::pending`].
    pending: bool,
}

/// A window waiting in [`WarmSeries::staged`].
struct StagedWindow {
    start: i64,
    /// In the order of [`BASE_FIGURES`].
    values: [f64; BASE_FIGURES.len()],
    quantiles: Vec<(f64, f64)>,
    state: Option<Vec<u8>>,
}

impl StagedWindow {
    fn of(w: WindowWrite) -> StagedWindow {
        let f = w.figures;
        StagedWindow {
            start: w.start,
            values: [
                f.count as f64,
                f.sum,
                f.sum_squares,
                f.min,
                f.max,
                f.first.value,
                f.first.timestamp as f64,
                f.last.value,
                f.last.timestamp as f64,
                f.increase,
                w.revision as f64,
            ],
            quantiles: f.quantiles,
            state: w.state,
        }
    }

    fn stored(&self) -> StoredWindow {
        let mut a = Assembly::default();
        for (name, &v) in BASE_FIGURES.iter().zip(&self.values) {
            a.set(name, v);
        }
        a.quantiles = self.quantiles.clone();
        let mut w = a.finish(self.start).expect("a staged window has a count");
        w.state = self.state.clone();
        w
    }
}

/// The warm series by raw series, and where staged windows wait.
#[derive(Default)]
struct WarmSeriesTable {
    /// By [`WarmId`]; `None` for a place given back by [`RollupStore::forget`] (in `free`).
    series: Vec<Option<WarmSeries>>,
    /// Places to reuse, so the table is as large as the most series it held at once.
    free: Vec<u32>,
    /// [`SeriesId`] to indexes in `series` (a list, since ids may collide).
    by_id: AHashMap<u64, Vec<u32>>,
    /// Series with staged windows.
    pending: Vec<u32>,
    /// Highest log offset of a staged window.
    offset: u64,
    /// Reused for the runs handed to the storage engine.
    run: Vec<Sample>,
}

impl WarmSeriesTable {
    fn find(&self, tenant: &Tenant, key: SeriesKeyRef<'_>) -> Option<u32> {
        let id = SeriesId::of(tenant, key);
        self.by_id.get(&id.0)?.iter().copied().find(|&i| {
            let s = self.get(i);
            s.key.as_ref() == key && &s.tenant == tenant
        })
    }

    /// The series at a place handed out and not given back.
    fn get(&self, i: u32) -> &WarmSeries {
        self.series[i as usize]
            .as_ref()
            .expect("a warm id outlived its series")
    }

    /// Hands series `i`'s staged windows to `tsdb`: one run per figure series.
    fn drain(&mut self, tsdb: &Tsdb, i: u32) {
        let Some(s) = self.series[i as usize].as_mut() else {
            return;
        };
        if s.staged.is_empty() {
            return;
        }
        // Corrections may have staged an older window after newer ones.
        s.staged.sort_unstable_by_key(|w| w.start);
        let run = &mut self.run;
        run.clear();
        let mut handles = Vec::with_capacity(BASE_FIGURES.len());
        let (tenant, key) = (&s.tenant, s.key.as_ref());
        let base = s.base.get_or_insert_with(|| {
            BASE_FIGURES.map(|f| tsdb.series_handle(tenant, figure_key(key, f).as_ref()))
        });
        for (f, &handle) in base.iter().enumerate() {
            // Revision 0 is implied by its absence: most windows are never corrected.
            let revision = f == BASE_FIGURES.len() - 1;
            let from = run.len();
            run.extend(
                s.staged
                    .iter()
                    .filter(|w| !revision || w.values[f] != 0.0)
                    .map(|w| Sample::new(w.start, w.values[f])),
            );
            handles.push((handle, from..run.len()));
        }
        let mut qs: Vec<f64> = s
            .staged
            .iter()
            .flat_map(|w| w.quantiles.iter().map(|&(q, _)| q))
            .collect();
        qs.sort_by(f64::total_cmp);
        qs.dedup();
        for q in qs {
            let handle = match s.quantiles.iter().find(|(hq, _)| *hq == q) {
                Some(&(_, handle)) => handle,
                None => {
                    let k = figure_key(s.key.as_ref(), &quantile_figure(q));
                    let handle = tsdb.series_handle(&s.tenant, k.as_ref());
                    s.quantiles.push((q, handle));
                    handle
                }
            };
            let from = run.len();
            run.extend(s.staged.iter().filter_map(|w| {
                let &(_, v) = w.quantiles.iter().find(|(wq, _)| *wq == q)?;
                Some(Sample::new(w.start, v))
            }));
            handles.push((handle, from..run.len()));
        }
        if s.staged.iter().any(|w| w.state.is_some()) {
            let handle = *s.state.get_or_insert_with(|| {
                tsdb.series_handle(&s.tenant, figure_key(s.key.as_ref(), STATE_FIGURE).as_ref())
            });
            let from = run.len();
            for w in &s.staged {
                if let Some(b) = &w.state {
                    state_to_samples(w.start, b, run);
                }
            }
            handles.push((handle, from..run.len()));
        }
        s.staged.clear();
        let runs: Vec<(SeriesHandle, &[Sample])> =
            handles.into_iter().map(|(h, r)| (h, &run[r])).collect();
        tsdb.append_runs(&s.tenant, &runs, self.offset);
    }

    /// Follows the storage engine's renumbering of `tenant`'s handles; a series whose figure
    /// series left although it holds a place (impossible while staged windows are drained
    /// first, but cheap to survive) gets its handles again.
    fn renumber(&mut self, tsdb: &Tsdb, tenant: &Tenant, moved: &Renumbering) {
        for s in self.series.iter_mut().flatten() {
            if &s.tenant != tenant {
                continue;
            }
            for (f, h) in s.base.iter_mut().flatten().enumerate() {
                *h = moved.get(*h).unwrap_or_else(|| {
                    tsdb.series_handle(tenant, figure_key(s.key.as_ref(), BASE_FIGURES[f]).as_ref())
                });
            }
            for (q, h) in &mut s.quantiles {
                *h = moved.get(*h).unwrap_or_else(|| {
                    tsdb.series_handle(
                        tenant,
                        figure_key(s.key.as_ref(), &quantile_figure(*q)).as_ref(),
                    )
                });
            }
            if let Some(h) = &mut s.state {
                *h = moved.get(*h).unwrap_or_else(|| {
                    tsdb.series_handle(tenant, figure_key(s.key.as_ref(), STATE_FIGURE).as_ref())
                });
            }
        }
    }

    fn drain_all(&mut self, tsdb: &Tsdb) {
        for i in std::mem::take(&mut self.pending) {
            if let Some(s) = self.series[i as usize].as_mut() {
                s.pending = false;
            }
            self.drain(tsdb, i);
        }
    }
}

/// Every window's figures, in the order [`StagedWindow::values`] holds them.
const BASE_FIGURES: [&str; 11] = [
    COUNT,
    SUM,
    SUM_SQUARES,
    MIN,
    MAX,
    FIRST,
    FIRST_TS,
    LAST,
    LAST_TS,
    INCREASE,
    REVISION,
];

/// Gives back a map's spare room once it holds less than a quarter of it.
fn shrink_map<K: std::hash::Hash + Eq, V>(m: &mut AHashMap<K, V>) {
    if m.capacity() > 4 * m.len() + 64 {
        m.shrink_to_fit();
    }
}

/// The key of one figure's series: the raw key with `__rollup__="figure"` in name order.
fn figure_key(key: SeriesKeyRef<'_>, figure: &str) -> SeriesKey {
    let label = FIGURE_LABEL.as_bytes();
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::with_capacity(16);
    let mut placed = false;
    for (n, v) in key.pairs() {
        if !placed && n > label {
            pairs.push((label, figure.as_bytes()));
            placed = true;
        }
        pairs.push((n, v));
    }
    if !placed {
        pairs.push((label, figure.as_bytes()));
    }
    SeriesKey::from_sorted_pairs(pairs)
}

/// The figure name of a quantile.
fn quantile_figure(q: f64) -> String {
    format!("q{q}")
}

impl RollupStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, retention_ms: i64, block_duration_ms: i64) -> Result<Self, TsdbError> {
        let opts = TsdbOptions {
            block_duration_ms,
            retention_ms,
            // Raw series were admitted by the raw tier's limiter already.
            max_series_per_metric: usize::MAX,
        };
        let tsdb = Tsdb::open(dir, opts, SeriesLimiter::new(usize::MAX))?;
        Ok(RollupStore {
            tsdb,
            warm: Mutex::new(WarmSeriesTable::default()),
        })
    }

    /// The underlying storage (sizes, maintenance). Windows still staged are not in it until
    /// [`RollupStore::flush`].
    pub fn tsdb(&self) -> &Tsdb {
        &self.tsdb
    }

    /// Persists every window written so far into blocks; returns the log offset covered.
    pub fn flush(&self) -> Result<Option<u64>, TsdbError> {
        self.stage_all();
        self.tsdb.flush()
    }

    /// Moves every window written so far into the storage's head, where its next flush
    /// ([`RollupStore::tsdb`], then `flush`, on any thread) persists it.
    pub fn stage_all(&self) {
        self.warm.lock().drain_all(&self.tsdb);
    }

    /// The warm place of `tenant`'s raw series `key`, made when new.
    pub fn series(&self, tenant: &Tenant, key: SeriesKeyRef<'_>) -> WarmId {
        let mut warm = self.warm.lock();
        if let Some(i) = warm.find(tenant, key) {
            return WarmId(i);
        }
        let series = WarmSeries {
            tenant: tenant.clone(),
            key: key.to_owned(),
            base: None,
            quantiles: Vec::new(),
            state: None,
            staged: Vec::new(),
            pending: false,
        };
        let i = match warm.free.pop() {
            Some(i) => {
                warm.series[i as usize] = Some(series);
                i
            }
            None => {
                warm.series.push(Some(series));
                warm.series.len() as u32 - 1
            }
        };
        warm.by_id
            .entry(SeriesId::of(tenant, key).0)
            .or_default()
            .push(i);
        WarmId(i)
    }

    /// Gives back the warm places of raw series gone idle: their figure series may leave the
    /// storage engine's head (all their windows are in its blocks: call it after
    /// [`RollupStore::flush`]) and their [`WarmId`]s are void, to be reused. A series with
    /// windows staged since (pending) stays. Their windows still answer, and a series written again
    /// gets a new place.
    pub fn forget<'a>(&self, series: impl IntoIterator<Item = (&'a Tenant, SeriesKeyRef<'a>)>) {
        let mut warm = self.warm.lock();
        let places: Vec<u32> = series
            .into_iter()
            .filter_map(|(tenant, key)| warm.find(tenant, key))
            .collect();
        self.release(&mut warm, places);
    }

    /// As [`RollupStore::forget`], for every place `idle` picks (the caller keeps per-place
    /// state and knows which places it no longer needs).
    pub fn forget_where(&self, mut idle: impl FnMut(WarmId) -> bool) {
        let mut warm = self.warm.lock();
        let places: Vec<u32> = (0..warm.series.len() as u32)
            .filter(|&i| warm.series[i as usize].is_some() && idle(WarmId(i)))
            .collect();
        self.release(&mut warm, places);
    }

    /// Gives back `places` (those without staged windows).
    fn release(&self, warm: &mut WarmSeriesTable, places: Vec<u32>) {
        let mut gone: AHashMap<Tenant, Vec<SeriesHandle>> = AHashMap::new();
        for i in places {
            let Some(s) = warm.series[i as usize].take_if(|s| !s.pending) else {
                continue;
            };
            let id = SeriesId::of(&s.tenant, s.key.as_ref()).0;
            if let Some(slots) = warm.by_id.get_mut(&id) {
                slots.retain(|&x| x != i);
                if slots.is_empty() {
                    warm.by_id.remove(&id);
                }
            }
            warm.free.push(i);
            let handles = gone.entry(s.tenant).or_default();
            handles.extend(s.base.into_iter().flatten());
            handles.extend(s.quantiles.iter().map(|&(_, h)| h));
            handles.extend(s.state);
        }
        for (tenant, handles) in gone {
            let moved = self.tsdb.release_handles(&tenant, &handles);
            warm.renumber(&self.tsdb, &tenant, &moved);
        }
        if warm.free.len() == warm.series.len() {
            // Everything left: give the memory back too.
            *warm = WarmSeriesTable {
                offset: warm.offset,
                ..WarmSeriesTable::default()
            };
        }
        shrink_map(&mut warm.by_id);
    }

    /// Series places in use (raw series with figures in the warm tier's memory).
    pub fn series_count(&self) -> usize {
        let warm = self.warm.lock();
        warm.series.len() - warm.free.len()
    }

    /// Stores windows. Readers see each window whole: its figures all, or none of them.
    pub fn write(&self, windows: impl IntoIterator<Item = WindowWrite>, log_offset: u64) {
        let mut warm = self.warm.lock();
        let warm = &mut *warm;
        warm.offset = warm.offset.max(log_offset);
        for w in windows {
            let i = w.series.0;
            let s = warm.series[i as usize]
                .as_mut()
                .expect("a warm id outlived its series");
            let row = StagedWindow::of(w);
            // A correction of a window still staged replaces it there.
            match s.staged.iter_mut().find(|x| x.start == row.start) {
                Some(x) => *x = row,
                None => {
                    if !s.pending {
                        s.pending = true;
                        warm.pending.push(i);
                    }
                    s.staged.push(row);
                }
            }
            if s.staged.len() >= STAGED_WINDOWS {
                warm.drain(&self.tsdb, i);
            }
        }
    }

    /// The stored window of one series starting at `start`, if any.
    pub fn get(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        start: i64,
        quantiles: &[f64],
    ) -> Result<Option<StoredWindow>, StorageError> {
        Ok(self
            .range(tenant, key, start, start, quantiles, None)?
            .pop())
    }

    /// The stored windows of one series starting in `[from, to]`, in time order: one read per
    /// figure for the whole range, so recomputing many windows of a series costs a handful of
    /// reads, not a handful per window. With `state_width` (the windows' length) their stored
    /// states are read too.
    pub fn range(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        from: i64,
        to: i64,
        quantiles: &[f64],
        state_width: Option<i64>,
    ) -> Result<Vec<StoredWindow>, StorageError> {
        // Taken first: a reader may drain the staging meanwhile, which then only moves these
        // same windows into the storage engine.
        let staged: Vec<StoredWindow> = {
            let warm = self.warm.lock();
            warm.find(tenant, key).map_or_else(Vec::new, |i| {
                warm.get(i)
                    .staged
                    .iter()
                    .filter(|w| (from..=to).contains(&w.start))
                    .map(|w| {
                        let mut w = w.stored();
                        w.figures.quantiles.retain(|(q, _)| quantiles.contains(q));
                        if state_width.is_none() {
                            w.state = None;
                        }
                        w
                    })
                    .collect()
            })
        };
        let read = |name: &str| -> Result<Vec<Sample>, StorageError> {
            self.tsdb
                .read_series(tenant, figure_key(key, name).as_ref(), from, to)
        };
        // A window is stored when its count is; the other figures are read only then.
        let mut windows: BTreeMap<i64, Assembly> = BTreeMap::new();
        for s in read(COUNT)? {
            windows.entry(s.timestamp).or_default().set(COUNT, s.value);
        }
        if !windows.is_empty() {
            let names = BASE_FIGURES[1..].iter().map(|&f| f.to_owned());
            for name in names.chain(quantiles.iter().map(|&q| quantile_figure(q))) {
                for s in read(&name)? {
                    if let Some(w) = windows.get_mut(&s.timestamp) {
                        w.set(&name, s.value);
                    }
                }
            }
        }
        let mut found: BTreeMap<i64, StoredWindow> = windows
            .into_iter()
            .filter_map(|(t, w)| Some((t, w.finish(t)?)))
            .collect();
        if let (Some(width), false) = (state_width, found.is_empty()) {
            let states = self.tsdb.read_series(
                tenant,
                figure_key(key, STATE_FIGURE).as_ref(),
                from,
                to.saturating_add(width - 1),
            )?;
            for (&start, w) in &mut found {
                w.state = state_from_samples(start, &states)?;
            }
        }
        // Staged windows are newer than anything the storage engine holds for their start.
        found.extend(staged.into_iter().map(|w| (w.start, w)));
        Ok(found.into_values().collect())
    }

    /// The stored windows of the series matching `matchers` that start in `[start, end]`, by
    /// series labels, windows in time order.
    pub fn select(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<StoredWindow>)>, StorageError> {
        self.warm.lock().drain_all(&self.tsdb);
        // States are read per series, by `range`.
        let mut matchers = matchers.to_vec();
        matchers.push(Matcher::not_equal(FIGURE_LABEL, STATE_FIGURE));
        let matchers = &matchers[..];
        let hints = SelectHints {
            start,
            end,
            max_samples: None,
            fields: strata_model::Fields::All,
        };
        let mut series: BTreeMap<Labels, BTreeMap<i64, Assembly>> = BTreeMap::new();
        for s in self.tsdb.select(tenant, matchers, &hints)? {
            let Some(figure) = s.labels.get(FIGURE_LABEL).map(str::to_owned) else {
                continue;
            };
            let windows = series.entry(series_labels(s.labels)).or_default();
            for x in s.samples {
                windows
                    .entry(x.timestamp)
                    .or_default()
                    .set(&figure, x.value);
            }
        }
        Ok(series
            .into_iter()
            .map(|(labels, ws)| {
                let ws = ws
                    .into_iter()
                    .filter_map(|(start, a)| a.finish(start))
                    .collect();
                (labels, ws)
            })
            .filter(|(_, ws): &(Labels, Vec<StoredWindow>)| !ws.is_empty())
            .collect())
    }
}

/// The labels of the raw series a figure series belongs to: its own without the figure label.
fn series_labels(figure: Labels) -> Labels {
    Labels::from_sorted(
        figure
            .into_vec()
            .into_iter()
            .filter(|l| l.name != FIGURE_LABEL)
            .collect(),
    )
}

/// The figure series a query needs (the count always: a window exists where it has one).
fn figure_names(needs: FigureNeeds) -> Vec<&'static str> {
    let mut f = vec![COUNT];
    let pairs = [
        (needs.sum, &[SUM][..]),
        (needs.sum_squares, &[SUM_SQUARES]),
        (needs.min, &[MIN]),
        (needs.max, &[MAX]),
        (needs.first, &[FIRST, FIRST_TS]),
        (needs.last, &[LAST, LAST_TS]),
        (needs.increase, &[INCREASE]),
    ];
    for (wanted, names) in pairs {
        if wanted {
            f.extend_from_slice(names);
        }
    }
    if needs.sketch {
        // A state counts only for the revision it was written at.
        f.extend_from_slice(&[REVISION, STATE_FIGURE]);
    }
    f
}

impl RollupStore {
    /// The figure series `needs` names of the series matching `matchers` with windows
    /// starting in `[start, end]`, grouped by series (sorted by labels), each a
    /// [`StoredFigures`] of windows `width` long, read only when asked.
    pub fn select_figures(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        (start, end): (i64, i64),
        width: i64,
        needs: FigureNeeds,
    ) -> Result<Vec<(Labels, StoredFigures)>, StorageError> {
        self.warm.lock().drain_all(&self.tsdb);
        let names = figure_names(needs);
        let mut matchers = matchers.to_vec();
        let alternatives = names.join("|");
        matchers.push(
            Matcher::regex(FIGURE_LABEL, &alternatives, false)
                .map_err(|e| StorageError::Io(e.to_string()))?,
        );
        // A window's state runs on past its start (see the module doc).
        let hints = SelectHints {
            start,
            end: end.saturating_add(width - 1),
            max_samples: None,
            fields: strata_model::Fields::All,
        };
        let mut series: AHashMap<Labels, StoredFigures> = AHashMap::new();
        for s in self.tsdb.select_lazy(tenant, &matchers, &hints)? {
            let Some(figure) = s
                .labels
                .get(FIGURE_LABEL)
                .and_then(|f| names.iter().find(|n| **n == f).copied())
            else {
                continue;
            };
            series
                .entry(series_labels(s.labels.clone()))
                .or_insert_with(|| StoredFigures {
                    width,
                    to: end,
                    figures: Vec::new(),
                })
                .figures
                .push((figure, s));
        }
        let mut out: Vec<(Labels, StoredFigures)> = series
            .into_iter()
            .filter(|(_, f)| f.figures.iter().any(|(n, _)| *n == COUNT))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// One series' stored windows as figure series, assembled into windows when read (see
/// [`RollupStore::select_figures`]).
pub struct StoredFigures {
    width: i64,
    /// The last window start wanted.
    to: i64,
    figures: Vec<(&'static str, LazySeries)>,
}

impl strata_model::WindowSource for StoredFigures {
    fn weight(&self) -> usize {
        self.figures.iter().map(|(_, s)| s.weight()).sum()
    }

    fn read(&self, out: &mut Vec<WindowFigures>) -> Result<(), StorageError> {
        let Some((_, count)) = self.figures.iter().find(|(n, _)| *n == COUNT) else {
            return Ok(());
        };
        let mut samples = Vec::new();
        count.read(&mut samples)?;
        let at = out.len();
        let nan = Sample::new(0, f64::NAN);
        samples.truncate(samples.partition_point(|s| s.timestamp <= self.to));
        out.extend(samples.iter().map(|s| WindowFigures {
            end: s.timestamp + self.width,
            count: s.value as u64,
            sum: f64::NAN,
            sum_squares: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            first: nan,
            last: nan,
            increase: f64::NAN,
            sketch: None,
        }));
        let windows = &mut out[at..];
        let mut revisions: Vec<u32> = Vec::new();
        let mut states: Vec<Sample> = Vec::new();
        for (name, series) in &self.figures {
            if *name == COUNT {
                continue;
            }
            if *name == STATE_FIGURE {
                series.read(&mut states)?;
                continue;
            }
            if *name == REVISION {
                revisions = vec![0; windows.len()];
            }
            samples.clear();
            series.read(&mut samples)?;
            // Both in time order, at the same window starts: one walk.
            let mut j = 0;
            for s in &samples {
                let start = s.timestamp;
                while j < windows.len() && windows[j].end - self.width < start {
                    j += 1;
                }
                let Some(w) = windows.get_mut(j).filter(|w| w.end - self.width == start) else {
                    continue;
                };
                let v = s.value;
                match *name {
                    SUM => w.sum = v,
                    SUM_SQUARES => w.sum_squares = v,
                    MIN => w.min = v,
                    MAX => w.max = v,
                    FIRST => w.first.value = v,
                    FIRST_TS => w.first.timestamp = v as i64,
                    LAST => w.last.value = v,
                    LAST_TS => w.last.timestamp = v as i64,
                    INCREASE => w.increase = v,
                    REVISION => revisions[j] = v as u32,
                    _ => {}
                }
            }
        }
        if !states.is_empty() {
            for (j, w) in windows.iter_mut().enumerate() {
                let start = w.end - self.width;
                let Some(bytes) = state_from_samples(start, &states)? else {
                    continue;
                };
                // No revision series: every window at revision 0.
                let revision = revisions.get(j).copied().unwrap_or(0);
                // A state counts only for the revision it was written at.
                if let Ok((at, Some(q))) = crate::state::sketch_of(&bytes) {
                    if at == revision {
                        w.sketch = Some(std::sync::Arc::new(q));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Figures of one window gathered from their series.
#[derive(Default)]
struct Assembly {
    count: Option<f64>,
    sum: f64,
    sum_squares: f64,
    min: f64,
    max: f64,
    first: f64,
    first_ts: f64,
    last: f64,
    last_ts: f64,
    increase: f64,
    revision: Option<f64>,
    quantiles: Vec<(f64, f64)>,
}

impl Assembly {
    fn set(&mut self, figure: &str, v: f64) {
        match figure {
            COUNT => self.count = Some(v),
            SUM => self.sum = v,
            SUM_SQUARES => self.sum_squares = v,
            MIN => self.min = v,
            MAX => self.max = v,
            FIRST => self.first = v,
            FIRST_TS => self.first_ts = v,
            LAST => self.last = v,
            LAST_TS => self.last_ts = v,
            INCREASE => self.increase = v,
            REVISION => self.revision = Some(v),
            q => {
                if let Some(q) = q.strip_prefix('q').and_then(|q| q.parse::<f64>().ok()) {
                    self.quantiles.push((q, v));
                }
            }
        }
    }

    /// The window, when its count was found (a missing revision is 0).
    fn finish(mut self, start: i64) -> Option<StoredWindow> {
        self.quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(StoredWindow {
            start,
            state: None,
            revision: self.revision.unwrap_or(0.0) as u32,
            figures: Figures {
                count: self.count? as u64,
                sum: self.sum,
                sum_squares: self.sum_squares,
                min: self.min,
                max: self.max,
                first: Sample::new(self.first_ts as i64, self.first),
                last: Sample::new(self.last_ts as i64, self.last),
                increase: self.increase,
                quantiles: self.quantiles,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_key_keeps_names_sorted() {
        let k = Labels::from_pairs([("__name__", "t"), ("A", "x"), ("site", "s")])
            .unwrap()
            .key();
        let f = figure_key(k.as_ref(), "sum");
        let names: Vec<&[u8]> = f.as_ref().pairs().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(f.as_ref().get(b"__rollup__"), Some(&b"sum"[..]));
    }

    #[test]
    fn write_get_select_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = RollupStore::open(dir.path(), i64::MAX / 4, 7_200_000).unwrap();
        let t = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "temp"), ("device", "d1")])
            .unwrap()
            .key();
        let now = strata_model::time::now_ms() / 60_000 * 60_000;
        let fig = Figures {
            count: 3,
            sum: 6.5,
            sum_squares: 15.25,
            min: 1.5,
            max: 3.0,
            first: Sample::new(now + 1, 2.0),
            last: Sample::new(now + 50, 3.0),
            increase: 1.0,
            quantiles: vec![(0.5, 2.0), (0.99, 3.0)],
        };
        let id = store.series(&t, key.as_ref());
        assert_eq!(store.series(&t, key.as_ref()), id, "one place per series");
        let w = |start: i64, figures: &Figures, revision: u32| {
            store.write(
                [WindowWrite {
                    series: id,
                    start,
                    figures: figures.clone(),
                    revision,
                    state: None,
                }],
                1,
            )
        };
        w(now, &fig, 0);
        let got = store
            .get(&t, key.as_ref(), now, &[0.5, 0.99])
            .unwrap()
            .unwrap();
        assert_eq!(got.figures, fig);
        assert_eq!(got.revision, 0);
        let mut fixed = fig.clone();
        fixed.count = 4;
        fixed.max = 9.0;
        w(now, &fixed, 1);
        let sel = store
            .select(&t, &[Matcher::equal("device", "d1")], now - 1, now + 1)
            .unwrap();
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].0, key.labels());
        assert_eq!(sel[0].1.len(), 1);
        assert_eq!(sel[0].1[0].figures, fixed);
        assert_eq!(sel[0].1[0].revision, 1);
        assert!(store
            .get(&t, key.as_ref(), now + 60_000, &[])
            .unwrap()
            .is_none());
        let other = Tenant::new("other").unwrap();
        assert!(store.get(&other, key.as_ref(), now, &[]).unwrap().is_none());
    }

    #[test]
    fn staged_and_stored_windows_read_alike_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "temp"), ("device", "d1")])
            .unwrap()
            .key();
        let base = strata_model::time::now_ms() / 60_000 * 60_000 - 100 * 60_000;
        let fig = |n: u64| Figures {
            count: n,
            sum: n as f64 * 1.5,
            sum_squares: n as f64 * 2.25,
            min: 1.5,
            max: 1.5,
            first: Sample::new(base + 1, 1.5),
            last: Sample::new(base + 2, 1.5),
            increase: 0.0,
            quantiles: vec![(0.5, 1.5)],
        };
        let windows = 2 * STAGED_WINDOWS as i64 + 3;
        // Every third window keeps a state of a length that is not a multiple of six.
        let state = |n: i64| (n % 3 == 0).then(|| (0..n as u8 * 5 + 1).collect::<Vec<u8>>());
        let states = |store: &RollupStore| -> Vec<Option<Vec<u8>>> {
            let to = base + windows * 60_000;
            let got = store
                .range(&t, key.as_ref(), base, to, &[], Some(60_000))
                .unwrap();
            assert_eq!(got.len(), windows as usize);
            got.into_iter().map(|w| w.state).collect()
        };
        let expected_states: Vec<Option<Vec<u8>>> = (0..windows)
            .map(|n| match n {
                1 => Some(vec![0xab; 100]),
                n if n == windows - 1 => None,
                n => state(n),
            })
            .collect();
        let expected = |store: &RollupStore| {
            let got = store
                .select(
                    &t,
                    &[Matcher::equal("device", "d1")],
                    base,
                    base + windows * 60_000,
                )
                .unwrap();
            assert_eq!(got.len(), 1);
            got.into_iter().next().unwrap().1
        };
        {
            let store = RollupStore::open(dir.path(), i64::MAX / 4, 7_200_000).unwrap();
            let id = store.series(&t, key.as_ref());
            for n in 0..windows {
                let w = WindowWrite {
                    series: id,
                    start: base + n * 60_000,
                    figures: fig(n as u64 + 1),
                    revision: 0,
                    state: state(n),
                };
                store.write([w], n as u64);
            }
            // Window 1 went to the engine in the first run; the last one is still staged.
            for (n, revision) in [(1, 1), (windows - 1, 2)] {
                let f = fig(100 + n as u64);
                let start = base + n * 60_000;
                let w = WindowWrite {
                    series: id,
                    start,
                    figures: f.clone(),
                    revision,
                    // Window 1 gets a longer state, the last one none (its old one stays
                    // behind in the engine, unread).
                    state: (n == 1).then(|| vec![0xab; 100]),
                };
                store.write([w], 1000);
                let got = store.get(&t, key.as_ref(), start, &[0.5]).unwrap().unwrap();
                assert_eq!((got.figures, got.revision), (f, revision));
            }
            let all = expected(&store);
            assert_eq!(all.len(), windows as usize);
            assert_eq!(all[0].figures, fig(1));
            assert_eq!(all[1].figures.count, 101);
            assert_eq!(all[1].revision, 1);
            assert_eq!(all[windows as usize - 1].revision, 2);
            assert_eq!(states(&store), expected_states, "staged and in the engine");
            assert_eq!(store.flush().unwrap(), Some(1000));
            assert_eq!(states(&store), expected_states, "flushed");
        }
        let store = RollupStore::open(dir.path(), i64::MAX / 4, 7_200_000).unwrap();
        let all = expected(&store);
        assert_eq!(states(&store), expected_states, "reopened");
        assert!(
            all.iter().all(|w| w.state.is_none()),
            "select reads no states"
        );
        assert_eq!(all.len(), windows as usize);
        assert_eq!(all[1].figures.count, 101);
        assert_eq!(
            all[windows as usize - 1].figures.count,
            100 + windows as u64 - 1
        );
    }
}
