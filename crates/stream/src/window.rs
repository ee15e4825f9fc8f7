//! Event-time windows of one shard: which window a sample belongs to, the shard's watermark,
//! and each window's life from *provisional* to *final* to *corrected*.
//!
//! Windows are tumbling, aligned to the clock (a 1-minute window starts on a whole minute),
//! and left-open as PromQL's ranges are: the window keyed `s` holds the samples in
//! `(s, s + w]` (see [`window_of`]), so a window's figures answer `x[w]` evaluated at its end
//! exactly, samples on the edge included.
//! The watermark is the highest event time seen minus the allowed out-of-orderness; it never
//! moves back. A window `(s, s + w]` stays *provisional*, buffering its samples, until the
//! watermark minus the allowed lateness has passed its inclusive end `s + w` (a sample at
//! exactly `s + w` may still come until then); then it becomes *final* and its [`Rollup`] is
//! handed out once. A sample for a final window inside the correction horizon queues a
//! *correction*: the owner recomputes the window from the raw tier. Older samples are counted
//! as too late. A shard that stops receiving events must not hold windows open forever: after
//! `idle_timeout` without progress its watermark follows the wall clock.
//!
//! Everything here is driven by the samples in log order and, for idleness, by the time the
//! caller passes in, so a replay of the log reproduces the same windows.

use crate::bytes::{put, read_checked, write_checked, Reader};
use crate::rollup::Rollup;
use crate::shadow::{self, DeviceIndex};
use crate::StreamError;
use ahash::AHashMap;
use smallvec::SmallVec;
use std::collections::BTreeSet;
use std::path::Path;
use strata_model::{
    sort_last_wins, Sample, SeriesId, SeriesKey, SeriesKeyRef, Tenant, METRIC_NAME,
};
use strata_tsdb::ObserverSlot;

/// Samples a window keeps without a heap allocation.
const INLINE_SAMPLES: usize = 8;

/// The samples of one open window, in arrival order.
type WindowSamples = SmallVec<[Sample; INLINE_SAMPLES]>;

/// How windows are cut and when they close.
#[derive(Debug, Clone)]
pub struct WindowOptions {
    /// Window length (1 minute by default).
    pub window_ms: i64,
    /// How far behind the highest event time the watermark trails.
    pub out_of_orderness_ms: i64,
    /// How long after the watermark passes its end a window still takes samples.
    pub allowed_lateness_ms: i64,
    /// How far behind the watermark a sample still corrects a final window.
    pub correction_horizon_ms: i64,
    /// Without progress for this long, the watermark follows the wall clock this far behind.
    pub idle_timeout_ms: i64,
    /// Metrics whose windows keep a quantile sketch.
    pub quantile_metrics: Vec<String>,
}

impl WindowOptions {
    /// True when windows of this series keep a quantile sketch.
    pub fn wants_quantiles(&self, key: SeriesKeyRef<'_>) -> bool {
        !self.quantile_metrics.is_empty()
            && key
                .get(METRIC_NAME.as_bytes())
                .is_some_and(|n| self.quantile_metrics.iter().any(|m| m.as_bytes() == n))
    }
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions {
            window_ms: 60_000,
            out_of_orderness_ms: 10_000,
            allowed_lateness_ms: 120_000,
            correction_horizon_ms: 30 * 86_400_000,
            idle_timeout_ms: 300_000,
            quantile_metrics: Vec::new(),
        }
    }
}

/// Where a window is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Still taking samples; figures may change.
    Provisional,
    /// Closed by the watermark; figures are settled.
    Final,
    /// Recomputed after a late sample arrived for a final window.
    Corrected,
}

impl WindowState {
    /// The name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Provisional => "provisional",
            WindowState::Final => "final",
            WindowState::Corrected => "corrected",
        }
    }

    /// The state of a stored window with this revision (0 is the first final version).
    pub fn of_revision(revision: u32) -> WindowState {
        if revision == 0 {
            WindowState::Final
        } else {
            WindowState::Corrected
        }
    }
}

/// How a sample arrived, relative to the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// At or ahead of the watermark.
    OnTime,
    /// Behind the watermark, but its window is still provisional.
    Late,
    /// Its window is final: the window will be recomputed.
    Correction,
    /// Behind the watermark by more than the correction horizon: stored raw, not rolled up.
    TooLate,
}

/// Counts of arrivals and window transitions since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Samples at or ahead of the watermark.
    pub on_time: u64,
    /// Samples behind the watermark into provisional windows.
    pub late: u64,
    /// Samples that arrived for final windows (each queues a correction).
    pub correction_samples: u64,
    /// Samples beyond the correction horizon.
    pub too_late: u64,
    /// Windows that became final.
    pub finalized: u64,
}

/// A window of one series that has become final.
#[derive(Debug, Clone)]
pub struct ClosedWindow<'a> {
    /// The series' index, stable for the life of the [`Windows`] (not across a reload), so a
    /// consumer can keep what it needs per series in a vector.
    pub series: u32,
    /// The series' tenant.
    pub tenant: &'a Tenant,
    /// The series.
    pub key: SeriesKeyRef<'a>,
    /// Window start (exclusive: the window holds `(start, start + width]`), ms.
    pub start: i64,
    /// Its figures.
    pub rollup: Rollup,
}

/// A final window that must be recomputed from the raw tier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Correction {
    /// The series' tenant.
    pub tenant: Tenant,
    /// The series.
    pub key: SeriesKey,
    /// Window start, ms.
    pub start: i64,
}

/// Final windows of one series to recompute from the raw tier, as [`Windows::take_corrections`]
/// hands them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesCorrections {
    /// The series' tenant.
    pub tenant: Tenant,
    /// The series.
    pub key: SeriesKey,
    /// Window starts, ascending, each once.
    pub starts: Vec<i64>,
}

/// One series as the windows know it: found by id and confirmed by tenant and key, kept across
/// windows so a sample costs one lookup and no allocation once the series is known.
#[derive(Debug)]
struct SeriesState {
    tenant: Tenant,
    key: SeriesKey,
    /// The series' entries in open windows, `(window start, entry index in that window)`: the
    /// current window and those still within the lateness, so a handful at most.
    open: SmallVec<[(i64, u32); 4]>,
    /// The device shadow: the newest reading, for series of a device.
    last: Option<Sample>,
    /// Of a device (kept in the shadow).
    device: bool,
    /// Derived (a `:` in the name): not rolled up again.
    derived: bool,
    /// Highest event time seen.
    newest: i64,
    /// Samples arrived since the last [`Windows::forget_idle`].
    touched: bool,
    /// Samples arrived since [`Windows::forget_idle`] last reported the series idle.
    warm: bool,
}

/// Every series seen lately, by id (collisions chained).
#[derive(Debug, Default)]
struct SeriesTable {
    by_id: AHashMap<u64, Vec<u32>>,
    /// By index; `None` for a series forgotten (its index in `free`).
    series: Vec<Option<SeriesState>>,
    /// Indexes to reuse, so the table is as large as the most series it held at once.
    free: Vec<u32>,
}

impl SeriesTable {
    /// The index of a series, made (and indexed by device) when new.
    fn index(
        &mut self,
        devices: &mut DeviceIndex,
        tenant: &Tenant,
        id: SeriesId,
        key: SeriesKeyRef<'_>,
    ) -> usize {
        let slots = self.by_id.entry(id.0).or_default();
        let series = &mut self.series;
        if let Some(i) = slots
            .iter()
            .copied()
            .find(|&i| SeriesTable::holds(series, i, tenant, key))
        {
            return i as usize;
        }
        let i = self.free.pop().unwrap_or_else(|| {
            series.push(None);
            series.len() as u32 - 1
        });
        slots.push(i);
        series[i as usize] = Some(SeriesState {
            tenant: tenant.clone(),
            key: key.to_owned(),
            open: SmallVec::new(),
            last: None,
            device: devices.add(tenant, key, i),
            derived: is_derived(key),
            newest: i64::MIN,
            touched: false,
            warm: false,
        });
        i as usize
    }

    /// True when index `i` holds `tenant`'s series `key`.
    fn holds(
        series: &[Option<SeriesState>],
        i: u32,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
    ) -> bool {
        series
            .get(i as usize)
            .and_then(Option::as_ref)
            .is_some_and(|o| o.key.as_ref() == key && &o.tenant == tenant)
    }

    /// The series at an index in use.
    fn get(&self, i: u32) -> &SeriesState {
        self.series[i as usize]
            .as_ref()
            .expect("an index outlived its series")
    }

    fn get_mut(&mut self, i: u32) -> &mut SeriesState {
        self.series[i as usize]
            .as_mut()
            .expect("an index outlived its series")
    }

    /// Series held.
    fn len(&self) -> usize {
        self.series.len() - self.free.len()
    }

    /// Forgets series `i` (in use); its index is reused.
    fn remove(&mut self, i: u32) {
        let Some(st) = self.series[i as usize].take() else {
            return;
        };
        let id = SeriesId::of(&st.tenant, st.key.as_ref()).0;
        if let Some(slots) = self.by_id.get_mut(&id) {
            slots.retain(|&x| x != i);
            if slots.is_empty() {
                self.by_id.remove(&id);
            }
        }
        self.free.push(i);
    }

    /// Gives back the memory of series forgotten, as far as indexes still in use allow.
    fn shrink(&mut self) {
        let before = self.series.len();
        while self.series.last().is_some_and(Option::is_none) {
            self.series.pop();
        }
        if self.series.len() < before {
            let len = self.series.len() as u32;
            self.free.retain(|&i| i < len);
        }
        if self.series.capacity() > 2 * self.series.len() + 16 {
            self.series.shrink_to_fit();
        }
        if self.by_id.capacity() > 4 * self.by_id.len() + 64 {
            self.by_id.shrink_to_fit();
        }
    }
}

/// The samples one series has in one open window, in arrival order; up to [`INLINE_SAMPLES`]
/// (a minute at 10 s or 15 s) without a heap allocation.
#[derive(Debug)]
struct Entry {
    series: u32,
    samples: WindowSamples,
}

/// One open window of the shard: each series' samples in it, in the order the series first
/// arrived. Telemetry arrives time-major (every series once per step), so consecutive samples
/// fill neighbouring entries and closing walks the entries in order: memory is touched as a
/// stream rather than at a random place per sample.
#[derive(Debug)]
struct OpenWindow {
    start: i64,
    entries: Vec<Entry>,
}

/// Open windows' entry buffers kept for reuse, so a new window allocates nothing.
const SPARE_WINDOWS: usize = 4;

/// The key of the window of `width` holding a sample at `ts`: the window's start, its exclusive
/// lower bound. Windows are left-open like PromQL's ranges: the window keyed `s` holds
/// `s < ts <= s + width`, so a sample exactly on a clock edge (`12:01:00.000`) belongs to the
/// window ending there (keyed `12:00`), as `x[1m]` evaluated at `12:01:00` sees it. Keys are
/// multiples of `width` (`width > 0`); near `i64::MIN`, where the key would not fit, it
/// saturates to `i64::MIN` rather than overflowing.
pub fn window_of(ts: i64, width: i64) -> i64 {
    debug_assert!(width > 0, "window width must be positive");
    ts.saturating_sub(1).div_euclid(width).saturating_mul(width)
}

/// True for series derived by rollups or recording rules (a `:` in the metric name, the
/// Prometheus convention) and anomaly detectors' outputs: they are not rolled up again.
pub fn is_derived(key: SeriesKeyRef<'_>) -> bool {
    key.get(METRIC_NAME.as_bytes())
        .is_some_and(|n| n.contains(&b':') || strata_model::is_anomaly_output(n))
}

/// The windows of one shard.
#[derive(Debug)]
pub struct Windows {
    opts: WindowOptions,
    /// Highest event time seen.
    max_event: i64,
    watermark: i64,
    /// The watermark by event time alone (progress, as opposed to idleness).
    event_watermark: i64,
    /// Every window starting before this is final.
    closed_before: i64,
    /// Start of the earliest window ever opened (`i64::MAX` before the first).
    first_window: i64,
    /// Wall-clock time of the last watermark progress, for idleness.
    last_progress_ms: Option<i64>,
    table: SeriesTable,
    /// Open windows, by start.
    open: Vec<OpenWindow>,
    /// Entry buffers of closed windows, for reuse.
    spare: Vec<Vec<Entry>>,
    /// Queued corrections, `(series index, window start)`: a bulk backfill of old data may queue
    /// one per window of every series, so no keys are copied until they are taken.
    corrections: BTreeSet<(u32, i64)>,
    stats: WindowStats,
    /// Each device's series, whose newest readings the table keeps (the device shadows).
    devices: DeviceIndex,
}

impl Windows {
    /// No windows yet; the watermark starts at the beginning of time.
    pub fn new(opts: WindowOptions) -> Windows {
        assert!(opts.window_ms > 0, "window length must be positive");
        Windows {
            opts,
            max_event: i64::MIN,
            watermark: i64::MIN,
            event_watermark: i64::MIN,
            closed_before: i64::MIN,
            first_window: i64::MAX,
            last_progress_ms: None,
            table: SeriesTable::default(),
            open: Vec::new(),
            spare: Vec::new(),
            corrections: BTreeSet::new(),
            stats: WindowStats::default(),
            devices: DeviceIndex::default(),
        }
    }

    /// The shard's watermark (`i64::MIN` before the first sample).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The highest event time seen (`i64::MIN` before the first sample).
    pub fn max_event_time(&self) -> i64 {
        self.max_event
    }

    /// Every window starting before this is final.
    pub fn closed_before(&self) -> i64 {
        self.closed_before
    }

    /// The last reading of each series of `device` (its shadow), in no particular order.
    pub fn device(&self, tenant: &Tenant, device: &str) -> Vec<(SeriesKey, Sample)> {
        self.devices
            .series(tenant, device)
            .iter()
            .map(|&i| self.table.get(i))
            .filter_map(|st| Some((st.key.clone(), st.last?)))
            .collect()
    }

    /// Start of the earliest window ever opened (`i64::MAX` before the first).
    pub fn first_window(&self) -> i64 {
        self.first_window
    }

    /// Arrival counts.
    pub fn stats(&self) -> &WindowStats {
        &self.stats
    }

    /// Windows currently open (series × window).
    pub fn open_windows(&self) -> usize {
        self.open.iter().map(|w| w.entries.len()).sum()
    }

    /// Start (exclusive) of the window holding `ts`: [`window_of`] for this width.
    pub fn window_start(&self, ts: i64) -> i64 {
        window_of(ts, self.opts.window_ms)
    }

    /// Takes the samples the raw tier just stored for one series (new values and
    /// overwrites, not exact repeats), in log order, counting how each arrived.
    pub fn observe(
        &mut self,
        tenant: &Tenant,
        id: SeriesId,
        key: SeriesKeyRef<'_>,
        samples: &[Sample],
    ) {
        let mut slot = ObserverSlot::EMPTY;
        self.observe_at(&mut slot, tenant, id, key, samples)
    }

    /// As [`Windows::observe`], with the slot the raw tier keeps for the series (see
    /// [`strata_tsdb::Tsdb::append_observed`]): the series is looked up only while the slot is
    /// empty, then found through it.
    pub fn observe_at(
        &mut self,
        slot: &mut ObserverSlot,
        tenant: &Tenant,
        id: SeriesId,
        key: SeriesKeyRef<'_>,
        samples: &[Sample],
    ) {
        let Some(newest) = shadow::newest(samples) else {
            return; // nothing but NaNs: no reading, nothing to roll up
        };
        // A slot may name an index given to another series since this one was forgotten.
        let i = match *slot {
            ObserverSlot(i) if SeriesTable::holds(&self.table.series, i, tenant, key) => i as usize,
            _ => {
                let i = self.table.index(&mut self.devices, tenant, id, key);
                *slot = ObserverSlot(i as u32);
                i
            }
        };
        let st = self.table.get_mut(i as u32);
        st.newest = st.newest.max(newest.timestamp);
        st.touched = true;
        st.warm = true;
        if st.device {
            shadow::update(&mut st.last, newest);
        }
        if st.derived {
            return;
        }
        for &s in samples {
            let start = self.window_start(s.timestamp);
            match self.classify(s.timestamp, start) {
                Arrival::TooLate => {
                    self.stats.too_late += 1;
                    continue;
                }
                Arrival::Correction => {
                    self.stats.correction_samples += 1;
                    self.corrections.insert((i as u32, start));
                    continue;
                }
                Arrival::Late => self.stats.late += 1,
                Arrival::OnTime => self.stats.on_time += 1,
            }
            self.max_event = self.max_event.max(s.timestamp);
            self.first_window = self.first_window.min(start);
            self.push(i, start, s);
        }
    }

    /// Adds a sample to a series' window, opening the window (or the series' entry in it) when
    /// new.
    fn push(&mut self, i: usize, start: i64, s: Sample) {
        let st = self.table.get_mut(i as u32);
        // The newest window is the usual target; older open ones follow it.
        let w = match self.open.iter().rposition(|w| w.start <= start) {
            Some(w) if self.open[w].start == start => w,
            p => {
                let w = p.map_or(0, |p| p + 1);
                let mut entries = self.spare.pop().unwrap_or_default();
                entries.clear();
                self.open.insert(w, OpenWindow { start, entries });
                w
            }
        };
        let entries = &mut self.open[w].entries;
        let e = match st.open.iter().rev().find(|(ws, _)| *ws == start) {
            Some(&(_, e)) => e as usize,
            None => {
                st.open.push((start, entries.len() as u32));
                entries.push(Entry {
                    series: i as u32,
                    samples: WindowSamples::new(),
                });
                entries.len() - 1
            }
        };
        entries[e].samples.push(s);
    }

    /// How a sample at `ts` in the window starting at `start` arrives now.
    pub fn classify(&self, ts: i64, start: i64) -> Arrival {
        if start < self.closed_before {
            if ts
                >= self
                    .watermark
                    .saturating_sub(self.opts.correction_horizon_ms)
            {
                Arrival::Correction
            } else {
                Arrival::TooLate
            }
        } else if ts < self.watermark {
            Arrival::Late
        } else {
            Arrival::OnTime
        }
    }

    /// Moves the watermark (by event time, and by `now_ms` when the shard is idle; pass `None`
    /// while replaying the log) and closes every window it has passed, handing each to `f`.
    pub fn advance(&mut self, now_ms: Option<i64>, mut f: impl FnMut(ClosedWindow<'_>)) {
        let event_wm = self.max_event.saturating_sub(self.opts.out_of_orderness_ms);
        let mut wm = event_wm;
        if let Some(now) = now_ms {
            match self.last_progress_ms {
                Some(t) if event_wm <= self.event_watermark => {
                    if now - t >= self.opts.idle_timeout_ms {
                        wm = wm.max(now - self.opts.idle_timeout_ms);
                    }
                }
                _ => self.last_progress_ms = Some(now),
            }
        }
        self.event_watermark = self.event_watermark.max(event_wm);
        self.watermark = self.watermark.max(wm);
        if self.watermark == i64::MIN {
            return;
        }
        // Windows whose inclusive end `horizon` has passed (end < horizon) are final: the
        // window holding `horizon` itself (end >= horizon) may still take a sample on its end.
        let horizon = self.watermark.saturating_sub(self.opts.allowed_lateness_ms);
        let closed = self.window_start(horizon);
        if closed <= self.closed_before {
            return;
        }
        self.closed_before = closed;
        let done = self.open.partition_point(|w| w.start < closed);
        let Windows {
            open,
            spare,
            table,
            opts,
            stats,
            ..
        } = self;
        for OpenWindow { start, mut entries } in open.drain(..done) {
            for e in entries.drain(..) {
                let st = table.get_mut(e.series);
                if let Some(p) = st.open.iter().position(|&(ws, _)| ws == start) {
                    st.open.remove(p);
                }
                let q = opts.wants_quantiles(st.key.as_ref());
                let samples = e.samples;
                // Usually already in order: one pass instead of a sort.
                let rollup = if samples.windows(2).all(|w| w[0].timestamp < w[1].timestamp) {
                    Rollup::of_sorted(&samples, q)
                } else {
                    let mut sorted = samples.to_vec();
                    sort_last_wins(&mut sorted);
                    Rollup::of_sorted(&sorted, q)
                };
                if let Some(rollup) = rollup {
                    stats.finalized += 1;
                    f(ClosedWindow {
                        series: e.series,
                        tenant: &st.tenant,
                        key: st.key.as_ref(),
                        start,
                        rollup,
                    });
                }
            }
            if spare.len() < SPARE_WINDOWS {
                spare.push(entries);
            }
        }
    }

    /// Series the windows hold: those seen lately, and every device's (for its shadow).
    pub fn series_count(&self) -> usize {
        self.table.len()
    }

    /// Forgets the series gone idle, handing each to `gone` first (so the caller drops what it
    /// keeps for it): no sample since the last call, none with an event time at or after
    /// `before`, no open window and no queued correction. A device's series stays for its
    /// shadow (reported once until it has samples again). A series that comes back is looked
    /// up again; its final windows are wherever the caller persisted them, and a late sample
    /// for one queues a correction as for any series.
    pub fn forget_idle(
        &mut self,
        before: i64,
        mut gone: impl FnMut(u32, &Tenant, SeriesKeyRef<'_>),
    ) {
        for i in 0..self.table.series.len() as u32 {
            let Some(st) = self.table.series[i as usize].as_mut() else {
                continue;
            };
            if std::mem::take(&mut st.touched)
                || !st.warm
                || !st.open.is_empty()
                || st.newest >= before
                || self
                    .corrections
                    .range((i, i64::MIN)..=(i, i64::MAX))
                    .next()
                    .is_some()
            {
                continue;
            }
            gone(i, &st.tenant, st.key.as_ref());
            if st.device {
                st.warm = false;
            } else {
                self.table.remove(i);
            }
        }
        self.table.shrink();
    }

    /// Takes the queued corrections, by series (each window once, however many samples queued
    /// it).
    pub fn take_corrections(&mut self) -> Vec<SeriesCorrections> {
        let queued: Vec<(u32, i64)> = std::mem::take(&mut self.corrections).into_iter().collect();
        queued
            .chunk_by(|a, b| a.0 == b.0)
            .map(|run| {
                let st = self.table.get(run[0].0);
                SeriesCorrections {
                    tenant: st.tenant.clone(),
                    key: st.key.clone(),
                    starts: run.iter().map(|&(_, start)| start).collect(),
                }
            })
            .collect()
    }

    /// The current rollup of the open window starting at `start` of the series the raw
    /// tier's `slot` names (as [`Windows::observe_at`] set it), with its key; `None` when the
    /// window is closed or the series has no samples in it.
    pub fn open_rollup(&self, slot: ObserverSlot, start: i64) -> Option<(&SeriesKey, Rollup)> {
        let st = self.table.series.get(slot.0 as usize)?.as_ref()?;
        let &(_, e) = st.open.iter().rev().find(|(ws, _)| *ws == start)?;
        let w = self.open.iter().rfind(|w| w.start == start)?;
        let mut samples = w.entries.get(e as usize)?.samples.to_vec();
        sort_last_wins(&mut samples);
        let r = Rollup::of_sorted(&samples, self.opts.wants_quantiles(st.key.as_ref()))?;
        Some((&st.key, r))
    }

    /// Visits the provisional windows of `tenant` overlapping `[start, end]` (a window keyed
    /// `s` overlaps it when `s < end` and `s + width >= start`) whose series pass `wanted`,
    /// with their current rollup.
    pub fn provisional(
        &self,
        tenant: &Tenant,
        start: i64,
        end: i64,
        mut wanted: impl FnMut(SeriesKeyRef<'_>) -> bool,
        mut f: impl FnMut(&SeriesKey, i64, Rollup),
    ) {
        let from = self.window_start(start);
        for w in self.open.iter().filter(|w| (from..end).contains(&w.start)) {
            for e in &w.entries {
                let st = self.table.get(e.series);
                if &st.tenant != tenant || !wanted(st.key.as_ref()) {
                    continue;
                }
                let mut samples = e.samples.to_vec();
                sort_last_wins(&mut samples);
                if let Some(r) =
                    Rollup::of_sorted(&samples, self.opts.wants_quantiles(st.key.as_ref()))
                {
                    f(&st.key, w.start, r);
                }
            }
        }
    }
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"STRWINDW";
const CHECKPOINT_VERSION: u32 = 1;

impl Windows {
    /// Writes the open windows and the watermark, with the log offset they cover, atomically
    /// (temporary file, fsync, rename). Queued corrections must have been taken first.
    pub fn save(&self, path: &Path, offset: Option<u64>) -> Result<(), StreamError> {
        write_checked(path, self.encode(offset))
    }

    /// What [`Windows::save`] writes (before its checksum): a snapshot to be written later,
    /// off the thread that applies writes.
    pub fn encode(&self, offset: Option<u64>) -> Vec<u8> {
        debug_assert!(
            self.corrections.is_empty(),
            "corrections pending at checkpoint"
        );
        let mut b = Vec::with_capacity(64 + self.open_windows() * 64);
        b.extend_from_slice(CHECKPOINT_MAGIC);
        b.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        b.extend_from_slice(&offset.map_or(u64::MAX, |o| o).to_le_bytes());
        for v in [
            self.max_event,
            self.watermark,
            self.event_watermark,
            self.closed_before,
            self.first_window,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.open.len() as u32).to_le_bytes());
        for w in &self.open {
            b.extend_from_slice(&w.start.to_le_bytes());
            b.extend_from_slice(&(w.entries.len() as u32).to_le_bytes());
            for e in &w.entries {
                let st = self.table.get(e.series);
                put(&mut b, st.tenant.as_str().as_bytes());
                put(&mut b, st.key.as_bytes());
                b.extend_from_slice(&(e.samples.len() as u32).to_le_bytes());
                for s in &e.samples {
                    b.extend_from_slice(&s.timestamp.to_le_bytes());
                    b.extend_from_slice(&s.value.to_bits().to_le_bytes());
                }
            }
        }
        let shadows = b.len();
        let readings: Vec<_> = self
            .table
            .series
            .iter()
            .flatten()
            .filter(|st| st.device)
            .filter_map(|st| Some((&st.tenant, &st.key, st.last?)))
            .collect();
        shadow::encode(readings.into_iter(), &mut b);
        b.extend_from_slice(&((b.len() - shadows) as u64).to_le_bytes());
        b
    }

    /// Writes a snapshot made by [`Windows::encode`] where [`Windows::load`] finds it.
    pub fn write_snapshot(path: &Path, snapshot: Vec<u8>) -> Result<(), StreamError> {
        write_checked(path, snapshot)
    }

    /// Loads what [`Windows::save`] wrote, with the log offset it covers; a missing file gives
    /// empty windows and no offset.
    pub fn load(path: &Path, opts: WindowOptions) -> Result<(Windows, Option<u64>), StreamError> {
        let mut w = Windows::new(opts);
        let Some(body) = read_checked(path, CHECKPOINT_MAGIC, 60, "a window checkpoint")? else {
            return Ok((w, None));
        };
        let bad = |reason: &str| StreamError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        };
        // The shadows sit at the end, their length in the last 8 bytes before the checksum.
        let (body, shadow_len) = body.split_at(body.len() - 8);
        let shadow_len = u64::from_le_bytes(shadow_len.try_into().expect("8 bytes")) as usize;
        if shadow_len > body.len() - 12 {
            return Err(bad("damaged contents"));
        }
        let (body, shadows) = body.split_at(body.len() - shadow_len);
        for (tenant, key, last) in shadow::decode(shadows, path)? {
            let id = SeriesId::of(&tenant, key.as_ref());
            let i = w.table.index(&mut w.devices, &tenant, id, key.as_ref());
            w.table.get_mut(i as u32).last = Some(last);
        }
        let mut r = Reader::new(body);
        r.take(8);
        let parsed = (|| {
            if r.u32()? != CHECKPOINT_VERSION {
                return None;
            }
            let offset = Some(r.u64()?).filter(|&o| o != u64::MAX);
            w.max_event = r.i64()?;
            w.watermark = r.i64()?;
            w.event_watermark = r.i64()?;
            w.closed_before = r.i64()?;
            w.first_window = r.i64()?;
            for _ in 0..r.u32()? {
                let start = r.i64()?;
                for _ in 0..r.u32()? {
                    let tenant = Tenant::new(std::str::from_utf8(r.field()?).ok()?).ok()?;
                    let key = SeriesKey::from_bytes(r.field()?)?;
                    let id = SeriesId::of(&tenant, key.as_ref());
                    let i = w.table.index(&mut w.devices, &tenant, id, key.as_ref());
                    let n = r.u32()? as usize;
                    for _ in 0..n {
                        let t = r.i64()?;
                        w.push(i, start, Sample::new(t, f64::from_bits(r.u64()?)));
                        let st = w.table.get_mut(i as u32);
                        (st.newest, st.touched, st.warm) = (st.newest.max(t), true, true);
                    }
                }
            }
            r.is_done().then_some(offset)
        })();
        match parsed {
            Some(offset) => Ok((w, offset)),
            None => Err(bad("damaged contents")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    const MIN: i64 = 60_000;

    fn opts() -> WindowOptions {
        WindowOptions {
            window_ms: MIN,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 2 * MIN,
            correction_horizon_ms: 60 * MIN,
            idle_timeout_ms: 5 * MIN,
            quantile_metrics: vec!["temp".into()],
        }
    }

    struct Series {
        tenant: Tenant,
        key: SeriesKey,
        id: SeriesId,
    }

    fn series(device: &str) -> Series {
        let tenant = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "temp"), ("device", device)])
            .unwrap()
            .key();
        let id = SeriesId::of(&tenant, key.as_ref());
        Series { tenant, key, id }
    }

    fn feed(w: &mut Windows, s: &Series, samples: &[(i64, f64)]) {
        let v: Vec<Sample> = samples.iter().map(|&(t, x)| Sample::new(t, x)).collect();
        w.observe(&s.tenant, s.id, s.key.as_ref(), &v);
    }

    /// A [`ClosedWindow`] kept beyond the callback.
    struct Closed {
        key: SeriesKey,
        start: i64,
        rollup: Rollup,
    }

    fn close(w: &mut Windows, now: Option<i64>) -> Vec<Closed> {
        let mut out = Vec::new();
        w.advance(now, |c| {
            out.push(Closed {
                key: c.key.to_owned(),
                start: c.start,
                rollup: c.rollup,
            })
        });
        out
    }

    #[test]
    fn provisional_final_correction_and_too_late() {
        let mut w = Windows::new(opts());
        let d1 = series("d1");
        let base = 100 * MIN;
        feed(&mut w, &d1, &[(base + 1_000, 1.0), (base + 30_000, 3.0)]);
        assert!(close(&mut w, None).is_empty(), "watermark has not passed");
        assert_eq!(w.watermark(), base + 25_000);
        // Same timestamp again with another value: the last write wins.
        feed(&mut w, &d1, &[(base + 30_000, 5.0), (base + 15_000, 2.0)]);
        assert_eq!(
            w.stats().late,
            1,
            "15 s is behind the watermark, its window still open"
        );
        assert_eq!(w.stats().on_time, 3);
        let seen = |from: i64, to: i64| {
            let mut seen = Vec::new();
            w.provisional(
                &d1.tenant,
                from,
                to,
                |_| true,
                |_, s, r| seen.push((s, r.count)),
            );
            seen
        };
        // The window `(base, base + 1m]` overlaps a range that reaches past `base`, up to its
        // inclusive end; not one that ends at `base` or starts after its end.
        assert_eq!(seen(base + 1, base + 1), vec![(base, 3)]);
        assert_eq!(seen(base + MIN, base + 2 * MIN), vec![(base, 3)]);
        assert_eq!(seen(base - MIN, base), vec![]);
        assert_eq!(seen(base + MIN + 1, base + 2 * MIN), vec![]);
        // The horizon (watermark minus lateness) reaches the window's end: not final yet.
        feed(&mut w, &d1, &[(base + 3 * MIN + 5_000, 7.0)]);
        assert!(close(&mut w, None).is_empty(), "the horizon is at the end");
        // It passes the end: final, once.
        feed(&mut w, &d1, &[(base + 3 * MIN + 5_001, 7.0)]);
        let closed = close(&mut w, None);
        assert_eq!(closed.len(), 1);
        let r = &closed[0].rollup;
        assert_eq!((closed[0].start, r.count), (base, 3));
        assert_eq!(r.sum.value(), 8.0);
        assert_eq!((r.first.value, r.last.value), (1.0, 5.0));
        assert!(r.quantiles.is_some(), "temp is configured with a sketch");
        assert_eq!(w.stats().finalized, 1);
        assert!(close(&mut w, None).is_empty());
        // A sample for the final window queues one correction, however many samples come.
        feed(&mut w, &d1, &[(base + 45_000, 4.0), (base + 46_000, 4.5)]);
        assert_eq!(w.stats().correction_samples, 2);
        let c = w.take_corrections();
        assert_eq!(c.len(), 1);
        assert_eq!((&c[0].starts, &c[0].key), (&vec![base], &d1.key));
        assert!(w.take_corrections().is_empty());
        // Beyond the correction horizon: counted, not rolled up.
        feed(&mut w, &d1, &[(base - 60 * MIN, 1.0)]);
        assert_eq!(w.stats().too_late, 1);
        assert!(w.take_corrections().is_empty());
    }

    #[test]
    fn window_of_puts_a_sample_on_an_edge_in_the_window_ending_there() {
        let noon = 12 * 60 * MIN;
        // 12:01:00.000 is in the window keyed 12:00, `(12:00, 12:01]`, as `x[1m]` at 12:01.
        assert_eq!(window_of(noon + MIN, MIN), noon);
        assert_eq!(window_of(noon + MIN + 1, MIN), noon + MIN);
        assert_eq!(window_of(noon + 1, MIN), noon);
        assert_eq!(window_of(noon, MIN), noon - MIN);
        // Its hour likewise: 13:00:00.000 is in the hour keyed 12:00.
        let hour = 60 * MIN;
        assert_eq!(window_of(noon + hour, hour), noon);
        assert_eq!(window_of(noon + hour + 1, hour), noon + hour);
        // Around zero and at the ends of time, no overflow.
        assert_eq!((window_of(0, MIN), window_of(1, MIN)), (-MIN, 0));
        assert_eq!(window_of(-MIN + 1, MIN), -MIN);
        assert_eq!(window_of(i64::MIN, MIN), i64::MIN);
        assert_eq!(window_of(i64::MIN + 1, MIN), i64::MIN);
        let top = window_of(i64::MAX, MIN);
        assert!(top < i64::MAX && i64::MAX - top <= MIN && top % MIN == 0);
        let w = Windows::new(opts());
        assert_eq!(w.window_start(noon + MIN), noon);
    }

    #[test]
    fn a_sample_on_the_end_lands_until_the_horizon_passes_the_end() {
        let mut w = Windows::new(opts());
        let (d1, d2) = (series("d1"), series("d2"));
        let base = 100 * MIN;
        let end = base + MIN;
        feed(&mut w, &d1, &[(base + 30_000, 1.0), (end, 2.0)]);
        // The horizon (watermark - 2 m lateness, watermark = newest - 5 s) reaches `end`.
        feed(&mut w, &d2, &[(end + 2 * MIN + 5_000, 0.0)]);
        assert!(close(&mut w, None).is_empty(), "the horizon is on the end");
        assert_eq!(
            w.closed_before(),
            base,
            "the window keyed `base` is still open"
        );
        // Another sample exactly on the end, just before the horizon passes: it lands.
        feed(&mut w, &d2, &[(end, 5.0)]);
        assert_eq!((w.stats().late, w.stats().correction_samples), (1, 0));
        // One millisecond on: the window is final with both edge samples in it.
        feed(&mut w, &d2, &[(end + 2 * MIN + 5_001, 0.0)]);
        let mut closed = close(&mut w, None);
        closed.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(closed.len(), 2);
        assert!(closed.iter().all(|c| c.start == base));
        let (r1, r2) = (&closed[0].rollup, &closed[1].rollup);
        assert_eq!((r1.count, r1.last), (2, Sample::new(end, 2.0)));
        assert_eq!((r2.count, r2.first), (1, Sample::new(end, 5.0)));
        assert_eq!(w.closed_before(), end);
        // Now a sample on the end corrects that window, not the next one.
        feed(&mut w, &d1, &[(end, 3.0)]);
        assert_eq!(w.stats().correction_samples, 1);
        let c = w.take_corrections();
        assert_eq!((c.len(), &c[0].starts), (1, &vec![base]));
        // The next window's first millisecond is the next window's.
        feed(&mut w, &d1, &[(end + 1, 3.0)]);
        assert_eq!(w.stats().correction_samples, 1, "window `end` is open");
    }

    #[test]
    fn idle_shard_follows_the_wall_clock() {
        let mut w = Windows::new(opts());
        let d1 = series("d1");
        let base = 1000 * MIN;
        feed(&mut w, &d1, &[(base + 1_000, 1.0)]);
        assert!(close(&mut w, Some(base + 2_000)).is_empty());
        assert!(
            close(&mut w, Some(base + 4 * MIN)).is_empty(),
            "not idle long enough"
        );
        let closed = close(&mut w, Some(base + 2_000 + 5 * MIN + 3 * MIN));
        assert_eq!(closed.len(), 1, "idle: the watermark followed the clock");
        assert!(w.watermark() >= base + 3 * MIN);
    }

    #[test]
    fn checkpoint_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("windows.ckpt");
        let mut w = Windows::new(opts());
        let (d1, d2) = (series("d1"), series("d2"));
        let base = 10 * MIN;
        feed(&mut w, &d1, &[(base + 1, 1.0), (base + MIN + 1, 2.0)]);
        feed(&mut w, &d2, &[(base + 2, 10.0)]);
        close(&mut w, None);
        w.save(&path, Some(41)).unwrap();
        let (mut l, off) = Windows::load(&path, opts()).unwrap();
        assert_eq!(off, Some(41));
        assert_eq!(l.watermark(), w.watermark());
        assert_eq!(l.open_windows(), 3);
        // Both close the same windows the same way.
        for x in [&mut w, &mut l] {
            feed(x, &d1, &[(base + 10 * MIN, 0.0)]);
        }
        let (a, b) = (close(&mut w, None), close(&mut l, None));
        assert_eq!(a.len(), 3);
        let fig = |v: &[Closed]| {
            let mut f: Vec<_> = v
                .iter()
                .map(|c| (c.key.clone(), c.start, c.rollup.clone()))
                .collect();
            f.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
            f
        };
        assert_eq!(fig(&a), fig(&b));
        let (_, none) = Windows::load(&dir.path().join("missing"), opts()).unwrap();
        assert_eq!(none, None);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Windows::load(&path, opts())
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(Windows::load(&path, opts()).is_err());
    }
}
