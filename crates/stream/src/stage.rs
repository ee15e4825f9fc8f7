//! One shard's rollup stage: its [`Windows`], its warm [`RollupStore`], its 1-hour tier
//! ([`HourStage`]), and the steps that connect them to the raw tier (closing windows, applying
//! corrections, checkpoints, retention, reads).
//!
//! The shard's thread is the only writer (observe, settle, checkpoint); HTTP readers share it
//! and take the windows' read lock briefly.

use crate::bytes::{put, read_checked, write_checked, Reader};
use crate::hour::{hour_start, HourCheckpoint, HourOptions, HourStage, HOUR_MS};
use crate::rollup::{Figures, Rollup};
use crate::store::{RollupStore, StoredWindow, WarmId, WindowWrite};
use crate::window::{
    window_of, ClosedWindow, Correction, SeriesCorrections, WindowOptions, WindowState, Windows,
};
use crate::StreamError;
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{Labels, Matcher, SeriesKeyRef, StorageError, Tenant};
use strata_tsdb::{MaintainStats, Tsdb, TsdbError, HEAD_LOOKBACK_MS};

/// Settings of a shard's rollup stage.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Windows and watermarks.
    pub windows: WindowOptions,
    /// Quantiles reported for metrics that keep a sketch.
    pub quantiles: Vec<f64>,
    /// How long final windows are kept.
    pub retention_ms: i64,
    /// Who is queued each corrected window (see [`RollupStage::pending_corrected`]): group
    /// rollups recompute theirs from them, anomaly detectors re-score them.
    pub correction_subscribers: Subscribers,
    /// Span of a warm-tier block.
    pub block_duration_ms: i64,
    /// The 1-hour tier, when wanted (windows must divide an hour).
    pub hours: Option<HourOptions>,
}

/// A consumer of corrected windows, one of up to eight (its bit in [`Subscribers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber(u8);

impl Subscriber {
    /// Subscriber number `n` (0 to 7). Numbers are part of the checkpoint: keep them stable.
    pub const fn new(n: u8) -> Subscriber {
        assert!(n < 8, "at most eight subscribers");
        Subscriber(n)
    }

    fn bit(self) -> u8 {
        1 << self.0
    }
}

/// A set of [`Subscriber`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscribers(u8);

impl Subscribers {
    /// Nobody: corrected windows are not queued.
    pub const NONE: Subscribers = Subscribers(0);

    /// The set with `s` added.
    pub const fn with(self, s: Subscriber) -> Subscribers {
        Subscribers(self.0 | (1 << s.0))
    }

    /// True when nobody subscribes.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A window as a reader sees it: it holds the samples in `(start, end]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowView {
    /// Window start (exclusive), ms.
    pub start: i64,
    /// Window end (inclusive), ms.
    pub end: i64,
    /// Its figures.
    pub figures: Figures,
    /// Where it is in its life.
    pub state: WindowState,
    /// 0 until corrected; each correction adds one.
    pub revision: u32,
}

impl WindowView {
    /// The window as the query router reads it (no sketch: a provisional window's is not kept).
    pub fn to_window_figures(&self) -> strata_model::WindowFigures {
        let f = &self.figures;
        strata_model::WindowFigures {
            end: self.end,
            count: f.count,
            sum: f.sum,
            sum_squares: f.sum_squares,
            min: f.min,
            max: f.max,
            first: f.first,
            last: f.last,
            increase: f.increase,
            sketch: None,
        }
    }

    /// A window still open.
    pub(crate) fn provisional(start: i64, end: i64, figures: Figures) -> WindowView {
        WindowView {
            start,
            end,
            figures,
            state: WindowState::Provisional,
            revision: 0,
        }
    }
}

/// Each series' windows, in start order.
pub(crate) fn by_start(
    views: std::collections::BTreeMap<Labels, Vec<WindowView>>,
) -> Vec<(Labels, Vec<WindowView>)> {
    views
        .into_iter()
        .map(|(l, mut ws)| {
            ws.sort_by_key(|w| w.start);
            (l, ws)
        })
        .collect()
}

/// Which tier of a stage a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The stage's windows (1 minute by default): the warm tier.
    Window,
    /// The 1-hour tier.
    Hour,
    /// The 1-day tier.
    Day,
}

impl Tier {
    /// Parses the API's names: `1m` (the windows, whatever their length), `1h` or `1d`.
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "1m" => Some(Tier::Window),
            "1h" => Some(Tier::Hour),
            "1d" => Some(Tier::Day),
            _ => None,
        }
    }

    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Window => "1m",
            Tier::Hour => "1h",
            Tier::Day => "1d",
        }
    }
}

/// Reads of ranges longer than this come from the hours when no tier is named: a day is 1,440
/// windows of a minute per series, 24 hours.
pub const WINDOWS_UP_TO_MS: i64 = 86_400_000;

/// Counters of window transitions not kept by [`Windows`].
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Windows recomputed because of late samples (changed figures only).
    pub corrected_windows: AtomicU64,
}

/// A checkpoint begun by [`RollupStage::begin_checkpoint`], to be written on any thread.
pub struct RollupCheckpoint {
    store: Arc<RollupStore>,
    hours: Option<HourCheckpoint>,
    path: PathBuf,
    snapshot: Vec<u8>,
    offset: Option<u64>,
}

/// A written [`RollupCheckpoint`], for [`RollupStage::end_checkpoint`].
#[derive(Debug, Clone)]
pub struct RollupCheckpointDone {
    /// The log offset it covers.
    pub offset: Option<u64>,
    hours: Option<crate::hour::HourCheckpointDone>,
}

impl RollupCheckpoint {
    /// Flushes the warm store (its windows into blocks), then the hour tier (its store, then
    /// its open hours), then writes the open windows: in this order a crash between steps
    /// replays windows the stores already hold.
    pub fn write(self) -> Result<RollupCheckpointDone, StreamError> {
        self.store
            .tsdb()
            .flush()
            .map_err(|e| StreamError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let hours = match self.hours {
            Some(h) => Some(h.write()?),
            None => None,
        };
        Windows::write_snapshot(&self.path, self.snapshot)?;
        Ok(RollupCheckpointDone {
            offset: self.offset,
            hours,
        })
    }
}

/// The rollup stage of one shard.
pub struct RollupStage {
    opts: StageOptions,
    windows: RwLock<Windows>,
    store: Arc<RollupStore>,
    checkpoint: PathBuf,
    /// Log offset the window checkpoint covers (`u64::MAX`: none).
    covered: AtomicU64,
    /// Until the first checkpoint after opening, a closing window may already be stored (from
    /// before a crash): compare instead of blindly writing revision 0.
    verify_existing: AtomicBool,
    counters: StageCounters,
    /// Corrected windows not yet handled by group rollups, kept in `corrections_path`.
    corrected: parking_lot::Mutex<BTreeMap<Correction, u8>>,
    corrections_path: PathBuf,
    settling: parking_lot::Mutex<Settling>,
    /// The 1-hour tier.
    hours: Option<HourStage>,
    /// Who sees windows as they become final (see [`RollupStage::add_final_tap`]).
    taps: RwLock<Vec<Arc<dyn FinalTap>>>,
}

/// Sees every window as the watermark makes it final, so a consumer of final windows (anomaly
/// scoring) need not read them back from the warm tier. Corrections are not seen here: they
/// are queued for the [`StageOptions::correction_subscribers`]. Called on the shard's thread
/// with its windows locked: keep it short, and never block.
pub trait FinalTap: Send + Sync {
    /// A window became final with `figures`.
    fn closed(&self, window: &ClosedWindow<'_>, figures: &Figures);

    /// A settle is over: every window starting before `closed_before` has been closed (and
    /// seen by [`FinalTap::closed`]), and every later one will be.
    fn settled(&self, closed_before: i64);

    /// The stage forgot series `series` (idle; see [`Windows::forget_idle`]): its index in
    /// [`ClosedWindow::series`] may next stand for another series.
    fn forgotten(&self, series: u32);

    /// A final window was recomputed with late data into `figures` at `revision` (1 or
    /// more). Called on the shard's thread, with no lock held.
    fn corrected(
        &self,
        _tenant: &Tenant,
        _key: SeriesKeyRef<'_>,
        _start: i64,
        _figures: &Figures,
        _revision: u32,
    ) {
    }
}

/// What settling keeps between calls.
#[derive(Default)]
struct Settling {
    /// The warm place of each series, by its index in the windows.
    warm_ids: Vec<Option<WarmId>>,
    /// Its place in the hour store, likewise, valid for one [`HourStage::generation`].
    hour_ids: Vec<Option<WarmId>>,
    hour_generation: u64,
    /// The windows closing (a buffer reused between calls).
    closing: Vec<WindowWrite>,
}

/// True when a stored window's state (what its figures round) differs from `fresh`, the
/// window recomputed with equal figures: an exact sum changed below the rounding, or the sketch.
/// An unreadable state counts as changed, so it is written again.
fn state_changed(stored: &StoredWindow, fresh: &Rollup) -> bool {
    match crate::state::of_stored(&stored.figures, stored.revision, stored.state.as_deref()) {
        Ok(r) => {
            r.sum != fresh.sum
                || r.sum_squares != fresh.sum_squares
                || r.increase != fresh.increase
                || (r.quantiles.is_some() && r.quantiles != fresh.quantiles)
        }
        Err(_) => true,
    }
}

/// Corrected windows of one series at most this many windows apart are recomputed from one
/// read: reading the gap costs less than another read.
const CORRECTION_RUN_GAP: i64 = 16;

/// The revision to store `figures` at over what the store holds: `None` when it holds these
/// figures already, its revision + 1 when it holds others, `absent` when it holds none.
pub(crate) fn revision_over(
    stored: Option<&StoredWindow>,
    figures: &Figures,
    absent: u32,
) -> Option<u32> {
    match stored {
        Some(s) if &s.figures == figures => None,
        Some(s) => Some(s.revision + 1),
        None => Some(absent),
    }
}

/// As [`revision_over`] for `fresh` (whose figures are `figures`), also comparing, when
/// `states` (the store keeps them), the state below the figures' rounding: equal figures over a
/// changed state are written again at revision + 1.
pub(crate) fn revision_for(
    stored: Option<&StoredWindow>,
    fresh: &Rollup,
    figures: &Figures,
    absent: u32,
    states: bool,
) -> Option<u32> {
    match (revision_over(stored, figures, absent), stored) {
        (Some(r), _) => Some(r),
        (None, Some(w)) if states && state_changed(w, fresh) => Some(w.revision + 1),
        (None, _) => None,
    }
}

impl RollupStage {
    /// Opens the stage kept in `dir`: the warm store, the hour tier (in `dir/1h`) and the
    /// window checkpoint.
    pub fn open(dir: &Path, opts: StageOptions) -> Result<RollupStage, StreamError> {
        let tsdb_err = |e: TsdbError| StreamError::Corrupt {
            path: dir.join("warm"),
            reason: e.to_string(),
        };
        let store = RollupStore::open(&dir.join("warm"), opts.retention_ms, opts.block_duration_ms)
            .map_err(tsdb_err)?;
        let store_had_windows = store.tsdb().stats().series > 0;
        let checkpoint = dir.join("windows.ckpt");
        let (windows, covered) = Windows::load(&checkpoint, opts.windows.clone())?;
        let corrections_path = dir.join("corrected.ckpt");
        let corrected = load_corrections(&corrections_path)?;
        let width = opts.windows.window_ms;
        let hours = match &opts.hours {
            Some(h) if HOUR_MS % width == 0 => {
                Some(HourStage::open(&dir.join("1h"), width, h.clone())?)
            }
            Some(_) => {
                tracing::warn!(
                    window_ms = width,
                    "rollup windows do not divide an hour: no 1-hour tier"
                );
                None
            }
            None => None,
        };
        Ok(RollupStage {
            hours,
            opts,
            windows: RwLock::new(windows),
            store: Arc::new(store),
            checkpoint,
            covered: AtomicU64::new(covered.unwrap_or(u64::MAX)),
            // A fresh store cannot hold windows from before a crash.
            verify_existing: AtomicBool::new(store_had_windows),
            counters: StageCounters::default(),
            corrected: parking_lot::Mutex::new(corrected.into_iter().collect()),
            corrections_path,
            settling: parking_lot::Mutex::new(Settling::default()),
            taps: RwLock::new(Vec::new()),
        })
    }

    /// Attaches a [`FinalTap`], made by `make` from the time before which every window was
    /// already final: the tap sees every window starting at or after it, and none before.
    pub fn add_final_tap(&self, make: impl FnOnce(i64) -> Arc<dyn FinalTap>) {
        // Under the windows' lock no window closes between reading the time and attaching.
        let windows = self.windows.write();
        self.taps.write().push(make(windows.closed_before()));
    }

    /// The stage's settings.
    pub fn options(&self) -> &StageOptions {
        &self.opts
    }

    /// The log offset the stage's checkpoint covers (replay starts after it).
    pub fn checkpoint_offset(&self) -> Option<u64> {
        Some(self.covered.load(Ordering::Acquire)).filter(|&o| o != u64::MAX)
    }

    /// The windows, for reading state and counters.
    pub fn windows(&self) -> parking_lot::RwLockReadGuard<'_, Windows> {
        self.windows.read()
    }

    /// Transition counters.
    pub fn counters(&self) -> &StageCounters {
        &self.counters
    }

    /// The last readings of `device` (see [`crate::shadow`]).
    pub fn device(&self, tenant: &Tenant, device: &str) -> Vec<(Labels, strata_model::Sample)> {
        self.windows
            .read()
            .device(tenant, device)
            .into_iter()
            .map(|(k, s)| (k.labels(), s))
            .collect()
    }

    /// Locks the windows for a group of [`Windows::observe`] calls.
    pub fn observer(&self) -> parking_lot::RwLockWriteGuard<'_, Windows> {
        self.windows.write()
    }

    /// Closes the windows the watermark has passed and applies queued corrections, reading raw
    /// samples from `raw`. `now_ms` is `None` while replaying; `offset` is the last log offset
    /// applied.
    pub fn settle(&self, raw: &Tsdb, now_ms: Option<i64>, offset: u64) -> Result<(), StorageError> {
        let q = &self.opts.quantiles;
        let verify = self.verify_existing.load(Ordering::Relaxed);
        let width = self.opts.windows.window_ms;
        let mut settling = self.settling.lock();
        let Settling {
            warm_ids,
            hour_ids,
            hour_generation,
            closing,
        } = &mut *settling;
        if let Some(h) = &self.hours {
            if h.generation() != *hour_generation {
                hour_ids.clear();
                *hour_generation = h.generation();
            }
        }
        let mut failed = None;
        let (corrections, closed_before, watermark) = {
            let mut w = self.windows.write();
            // Read under the windows' lock, which attaching takes: a tap attached before this
            // settle sees every window it closes.
            let taps = self.taps.read();
            w.advance(now_ms, |c| {
                let i = c.series as usize;
                if warm_ids.len() <= i {
                    warm_ids.resize(i + 1, None);
                }
                let series = *warm_ids[i].get_or_insert_with(|| self.store.series(c.tenant, c.key));
                if let Some(h) = &self.hours {
                    if hour_ids.len() <= i {
                        hour_ids.resize(i + 1, None);
                    }
                    let id = *hour_ids[i].get_or_insert_with(|| h.series(c.tenant, c.key));
                    h.merge(id, c.tenant, c.key, c.start, &c.rollup);
                }
                let figures = c.rollup.figures(q);
                for t in taps.iter() {
                    t.closed(&c, &figures);
                }
                let revision = if verify {
                    match self.next_revision(c.tenant, c.key, c.start, &figures, 0) {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(e) => {
                            failed.get_or_insert(e);
                            return;
                        }
                    }
                } else {
                    0
                };
                closing.push(WindowWrite {
                    series,
                    start: c.start,
                    state: crate::state::for_store(&c.rollup, revision, width),
                    figures,
                    revision,
                });
            });
            for t in taps.iter() {
                t.settled(w.closed_before());
            }
            drop(taps);
            (w.take_corrections(), w.closed_before(), w.watermark())
        };
        self.store.write(closing.drain(..), offset);
        drop(settling);
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(h) = &self.hours {
            h.advance(closed_before, q, offset)?;
        }
        // Minutes older than this may have left the warm tier (by its retention): their hours
        // are not rebuilt from what remains.
        let expired_before = now_ms
            .unwrap_or(watermark)
            .saturating_sub(self.opts.retention_ms);
        for c in corrections {
            self.correct(raw, c, offset, expired_before)?;
        }
        Ok(())
    }

    /// Recomputes one series' corrected windows from the raw tier. Neighbouring windows are
    /// read together (a backfill of old data corrects every window of a series at once), so
    /// the raw tier and the store are each read once per run of windows, not once per window.
    /// The hours holding changed windows are recomputed from the warm tier (see
    /// [`HourStage::recompute`]).
    fn correct(
        &self,
        raw: &Tsdb,
        c: SeriesCorrections,
        offset: u64,
        expired_before: i64,
    ) -> Result<(), StorageError> {
        let width = self.opts.windows.window_ms;
        let q = &self.opts.quantiles;
        let sketch = self.opts.windows.wants_quantiles(c.key.as_ref());
        let subscribers = self.opts.correction_subscribers.0;
        if subscribers != 0 {
            // Published whether or not the figures change: after a crash, the store may hold a
            // correction whose group recomputation never ran (see `checkpoint`).
            let mut queue = self.corrected.lock();
            for &start in &c.starts {
                let c = Correction {
                    tenant: c.tenant.clone(),
                    key: c.key.clone(),
                    start,
                };
                *queue.entry(c).or_default() |= subscribers;
            }
        }
        let series = self.store.series(&c.tenant, c.key.as_ref());
        let mut writes = Vec::new();
        let taps = self.taps.read();
        for run in c
            .starts
            .chunk_by(|a, b| b - a <= CORRECTION_RUN_GAP * width)
        {
            let (first, last) = (run[0], run[run.len() - 1]);
            // The windows hold `(start, start + width]`.
            let samples = raw.read_series(&c.tenant, c.key.as_ref(), first + 1, last + width)?;
            // With an hour tier, states too: it merges what lies below the figures' rounding.
            let state_width = self.hours.as_ref().map(|_| width);
            let stored =
                self.store
                    .range(&c.tenant, c.key.as_ref(), first, last, q, state_width)?;
            for &start in run {
                let from = samples.partition_point(|s| s.timestamp <= start);
                let to = samples.partition_point(|s| s.timestamp <= start + width);
                let Some(rollup) = Rollup::of_sorted(&samples[from..to], sketch) else {
                    continue;
                };
                let figures = rollup.figures(q);
                let was = stored
                    .binary_search_by_key(&start, |w| w.start)
                    .ok()
                    .map(|i| &stored[i]);
                let Some(revision) = revision_for(was, &rollup, &figures, 1, state_width.is_some())
                else {
                    continue;
                };
                for t in taps.iter() {
                    t.corrected(&c.tenant, c.key.as_ref(), start, &figures, revision);
                }
                writes.push(WindowWrite {
                    series,
                    start,
                    state: crate::state::for_store(&rollup, revision, width),
                    figures,
                    revision,
                });
            }
        }
        self.counters
            .corrected_windows
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        let hours: BTreeSet<i64> = writes.iter().map(|w| hour_start(w.start)).collect();
        self.store.write(writes, offset);
        if let Some(h) = &self.hours {
            h.recompute(
                &self.store,
                &c.tenant,
                c.key.as_ref(),
                &hours,
                expired_before,
                q,
                offset,
            )?;
        }
        Ok(())
    }

    /// The revision to store `figures` at for a window: `None` when the store holds these
    /// figures already, the stored revision + 1 when it holds others, `absent` when none.
    fn next_revision(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        start: i64,
        figures: &Figures,
        absent: u32,
    ) -> Result<Option<u32>, StorageError> {
        let stored = self.store.get(tenant, key, start, &self.opts.quantiles)?;
        Ok(revision_over(stored.as_ref(), figures, absent))
    }

    /// The windows corrected and not yet marked done by `who`.
    pub fn pending_corrected(&self, who: Subscriber) -> Vec<Correction> {
        let q = self.corrected.lock();
        q.iter()
            .filter(|(_, &m)| m & who.bit() != 0)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Marks corrected windows as handled by `who`: a window leaves the queue (and its next
    /// checkpoint) once every subscriber has.
    pub fn done_corrected(&self, who: Subscriber, done: &[Correction]) {
        let mut q = self.corrected.lock();
        for c in done {
            if let Some(m) = q.get_mut(c) {
                *m &= !who.bit();
                if *m == 0 {
                    q.remove(c);
                }
            }
        }
    }

    /// Persists the queue of corrected windows, the warm store, the hour tier (its store, then
    /// its open hours), then the open windows with the log offset they cover. In this order a
    /// crash between steps replays windows the stores already hold, which closing tolerates
    /// (it compares before writing; an open hour skips windows it merged already, a final one
    /// takes none), and corrections whose windows are in the store are still queued, or
    /// published again by replay (recomputing an hour is idempotent).
    pub fn checkpoint(&self, offset: Option<u64>) -> Result<(), StreamError> {
        let done = self.begin_checkpoint(offset)?.write()?;
        self.end_checkpoint(&done);
        Ok(())
    }

    /// The part of [`RollupStage::checkpoint`] that must see the stage as it is at `offset`,
    /// on the thread applying writes: the corrections queue saved, staged windows moved into
    /// the warm store's head, the open windows encoded. [`RollupCheckpoint::write`] does the
    /// slow part (the warm store's flush) on any thread while writes go on, then
    /// [`RollupStage::end_checkpoint`] completes it. Windows closed in between may be flushed
    /// too: replay finds them in the store and leaves them (it compares before writing).
    pub fn begin_checkpoint(&self, offset: Option<u64>) -> Result<RollupCheckpoint, StreamError> {
        if !self.opts.correction_subscribers.is_empty() {
            let queue: Vec<(Correction, u8)> = self
                .corrected
                .lock()
                .iter()
                .map(|(c, &m)| (c.clone(), m))
                .collect();
            save_corrections(&self.corrections_path, &queue)?;
        }
        self.store.stage_all();
        let hours = self.hours.as_ref().map(HourStage::begin_checkpoint);
        let snapshot = self.windows.read().encode(offset);
        Ok(RollupCheckpoint {
            store: Arc::clone(&self.store),
            hours,
            path: self.checkpoint.clone(),
            snapshot,
            offset,
        })
    }

    /// Completes a checkpoint whose [`RollupCheckpoint::write`] succeeded: the log is covered
    /// up to its offset, the hours final when it was begun are in their store's blocks, and
    /// series gone idle leave memory.
    pub fn end_checkpoint(&self, done: &RollupCheckpointDone) {
        if let (Some(h), Some(d)) = (&self.hours, &done.hours) {
            h.end_checkpoint(d);
        }
        let offset = done.offset;
        self.covered
            .store(offset.unwrap_or(u64::MAX), Ordering::Release);
        self.verify_existing.store(false, Ordering::Relaxed);
        self.forget_idle();
    }

    /// Drops what memory holds for series gone idle (see [`Windows::forget_idle`]): once the
    /// store is flushed their final windows are all in the warm tier's blocks, where a
    /// correction finds them (it recomputes from the raw tier and compares with what the
    /// store holds, needing no state of its own). Idle means no sample since the previous
    /// checkpoint and none within the raw head's lookback or the lateness behind the
    /// watermark, so a series leaves about when its raw series leaves the raw head.
    fn forget_idle(&self) {
        let w = &self.opts.windows;
        let idle_ms = HEAD_LOOKBACK_MS.max(w.allowed_lateness_ms.saturating_add(w.window_ms));
        let mut settling = self.settling.lock();
        let mut windows = self.windows.write();
        let watermark = windows.watermark();
        if watermark == i64::MIN {
            return;
        }
        let mut gone = Vec::new();
        windows.forget_idle(watermark.saturating_sub(idle_ms), |i, tenant, key| {
            if let Some(id) = settling.warm_ids.get_mut(i as usize) {
                *id = None;
            }
            if let Some(id) = settling.hour_ids.get_mut(i as usize) {
                *id = None;
            }
            for t in self.taps.read().iter() {
                t.forgotten(i);
            }
            gone.push((tenant.clone(), key.to_owned()));
        });
        drop(windows);
        let Settling {
            warm_ids, hour_ids, ..
        } = &mut *settling;
        for ids in [warm_ids, hour_ids] {
            while ids.last().is_some_and(Option::is_none) {
                ids.pop();
            }
            if ids.capacity() > 2 * ids.len() + 16 {
                ids.shrink_to_fit();
            }
        }
        drop(settling);
        self.store.forget(gone.iter().map(|(t, k)| (t, k.as_ref())));
    }

    /// Series whose rollup state memory holds: in the windows, and figure series in the warm
    /// tier's head.
    pub fn live_series(&self) -> (usize, u64) {
        let windows = self.windows.read().series_count();
        (windows, self.store.tsdb().stats().series)
    }

    /// Retention of the warm tier and the hour tier. A window leaves the warm tier only once
    /// its hour is final and in the hour store's blocks: the warm tier's clock is held at the
    /// first hour not yet flushed final plus its retention, so no gap opens at the boundary.
    pub fn maintain(&self, now_ms: i64) -> Result<MaintainStats, TsdbError> {
        let warm_now = match &self.hours {
            Some(h) => now_ms.min(
                h.flushed_final_before()
                    .saturating_add(self.opts.retention_ms),
            ),
            None => now_ms,
        };
        // Each tier's maintenance runs whether or not the other's failed.
        let warm = self.store.tsdb().maintain(warm_now);
        let hours = self
            .hours
            .as_ref()
            .map_or(Ok(MaintainStats::default()), |h| h.maintain(now_ms));
        Ok(warm? + hours?)
    }

    /// The warm store of final windows (sizes, direct reads; windows still staged are flushed
    /// by [`RollupStage::checkpoint`]).
    pub fn store(&self) -> &RollupStore {
        &self.store
    }

    /// The 1-hour tier, when configured.
    pub fn hours(&self) -> Option<&HourStage> {
        self.hours.as_ref()
    }

    /// The tier to read `[start, end]` from when none is named: the windows while the range
    /// is at most [`WINDOWS_UP_TO_MS`] long and within their retention at `now`, else the hours
    /// (a year's summary reads hours), when kept.
    pub fn tier_for(&self, start: i64, end: i64, now: i64) -> Tier {
        let windows_from = now.saturating_sub(self.opts.retention_ms);
        let long = end.saturating_sub(start) > WINDOWS_UP_TO_MS;
        // The first window the range needs is the one holding `start` (keyed before it).
        let first = window_of(start, self.opts.windows.window_ms);
        if self.hours.is_some() && (long || first < windows_from) {
            Tier::Hour
        } else {
            Tier::Window
        }
    }

    /// The hours queued for the next tier ([`HourStage::pending_final`]) with their labels and
    /// stored figures (quantiles as configured); nothing without an hour tier.
    pub fn pending_final_hours(
        &self,
    ) -> Result<Vec<(crate::hour::HourKey, Labels, StoredWindow)>, StorageError> {
        match &self.hours {
            Some(h) => h.final_windows(&h.pending_final(), &self.opts.quantiles),
            None => Ok(Vec::new()),
        }
    }

    /// [`RollupStage::read`] or [`RollupStage::read_hours`], by tier.
    pub fn read_tier(
        &self,
        tier: Tier,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<WindowView>)>, StorageError> {
        match tier {
            Tier::Window => self.read(tenant, matchers, start, end),
            Tier::Hour | Tier::Day => self.read_hours(tier, tenant, matchers, start, end),
        }
    }

    /// As [`RollupStage::read`], for the 1-hour or the 1-day tier (nothing when it is off): a
    /// provisional hour holds its final windows and those still open; a provisional day its
    /// final hours and the provisional ones.
    pub fn read_hours(
        &self,
        tier: Tier,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<WindowView>)>, StorageError> {
        let Some(h) = &self.hours else {
            return Ok(Vec::new());
        };
        let (stage, finer) = match (tier, h.days()) {
            (Tier::Day, Some(d)) => (d, Some(h)),
            (Tier::Day, None) => return Ok(Vec::new()),
            _ => (h, None),
        };
        // The windows still open in the hours (or days) asked for join their provisional ones:
        // those overlapping their span, from just after the first one's start to the last
        // one's end (whose windows are keyed below it).
        let w = stage.width();
        let span = (
            window_of(start, w).saturating_add(1),
            window_of(end, w).saturating_add(w),
        );
        let mut open = Vec::new();
        self.windows.read().provisional(
            tenant,
            span.0,
            span.1,
            |key| Matcher::all_match(matchers, key),
            |key, ws, r| open.push((key.clone(), ws, r)),
        );
        if let Some(hours) = finer {
            open = hours.provisional(tenant, matchers, span, open);
        }
        stage.read(tenant, matchers, (start, end), &self.opts.quantiles, open)
    }

    /// The windows of the series of `tenant` matching `matchers` that overlap `[start, end]`
    /// (a window `(s, s + width]` does when `s < end` and `s + width >= start`): final and
    /// corrected ones from the store, provisional ones from memory.
    pub fn read(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<WindowView>)>, StorageError> {
        let width = self.opts.windows.window_ms;
        let view = |w: StoredWindow| WindowView {
            start: w.start,
            end: w.start + width,
            state: WindowState::of_revision(w.revision),
            revision: w.revision,
            figures: w.figures,
        };
        let mut out: std::collections::BTreeMap<Labels, Vec<WindowView>> = self
            .store
            .select(
                tenant,
                matchers,
                start.saturating_sub(width),
                end.saturating_sub(1),
            )?
            .into_iter()
            .map(|(l, ws)| (l, ws.into_iter().map(view).collect()))
            .collect();
        let q = &self.opts.quantiles;
        self.windows.read().provisional(
            tenant,
            start,
            end,
            |key| Matcher::all_match(matchers, key),
            |key, ws, r| {
                out.entry(key.labels())
                    .or_default()
                    .push(WindowView::provisional(ws, ws + width, r.figures(q)))
            },
        );
        Ok(by_start(out))
    }
}

const CORRECTIONS_MAGIC: &[u8; 8] = b"STRCORRQ";
const CORRECTIONS_VERSION: u32 = 2;

/// Writes the queue of corrected windows: magic, version, count, then tenant, key, start and
/// the subscribers still to handle it, of each, and a CRC of all of it.
pub(crate) fn save_corrections(path: &Path, queue: &[(Correction, u8)]) -> Result<(), StreamError> {
    write_checked(path, encode_corrections(queue))
}

/// What [`save_corrections`] writes (before its checksum).
pub(crate) fn encode_corrections(queue: &[(Correction, u8)]) -> Vec<u8> {
    let mut b = CORRECTIONS_MAGIC.to_vec();
    b.extend_from_slice(&CORRECTIONS_VERSION.to_le_bytes());
    b.extend_from_slice(&(queue.len() as u32).to_le_bytes());
    for (c, m) in queue {
        put(&mut b, c.tenant.as_str().as_bytes());
        put(&mut b, c.key.as_bytes());
        b.extend_from_slice(&c.start.to_le_bytes());
        b.push(*m);
    }
    b
}

/// Reads what [`save_corrections`] wrote; nothing when there is no file. Version 1 had no
/// subscribers: group rollups (subscriber 0) were the only one.
pub(crate) fn load_corrections(path: &Path) -> Result<Vec<(Correction, u8)>, StreamError> {
    let Some(body) = read_checked(path, CORRECTIONS_MAGIC, 20, "a correction queue")? else {
        return Ok(Vec::new());
    };
    let corrupt = |reason: &str| StreamError::Corrupt {
        path: path.into(),
        reason: reason.into(),
    };
    let mut r = Reader::new(&body[8..]);
    let parse = |r: &mut Reader<'_>| -> Option<Vec<(Correction, u8)>> {
        let version = r.u32()?;
        if version != 1 && version != CORRECTIONS_VERSION {
            return None;
        }
        let n = r.u32()?;
        let mut out = Vec::new();
        for _ in 0..n {
            let tenant = Tenant::new(std::str::from_utf8(r.field()?).ok()?).ok()?;
            let key = strata_model::SeriesKey::from_bytes(r.field()?)?;
            let start = r.i64()?;
            let mask = if version == 1 { 1 } else { r.u8()? };
            out.push((Correction { tenant, key, start }, mask));
        }
        r.is_done().then_some(out)
    };
    parse(&mut r).ok_or_else(|| corrupt("unreadable entry or unknown version"))
}

/// From when a shard's tiers hold a tenant's data (see [`RollupStage::held_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldFrom {
    /// The 1-minute windows.
    pub windows: i64,
    /// The 1-hour tier.
    pub hours: i64,
    /// The 1-day tier.
    pub days: i64,
}

/// What the query router asks of a shard's tiers.
impl RollupStage {
    /// From when this shard's tiers hold `tenant`'s data: from the earliest window stored or
    /// open (retention deletes whole blocks, so what is left is complete from there);
    /// `i64::MAX` for a tier not kept or still empty, and for windows other than 1 minute long.
    pub fn held_from(&self, tenant: &Tenant) -> HeldFrom {
        let open = self.windows.read().first_window();
        let earliest = |store: &RollupStore, open: i64| {
            let stored = store.tsdb().min_time(tenant).unwrap_or(i64::MAX);
            // A window keyed `start` holds what follows it.
            stored.min(open).saturating_add(1)
        };
        // The router reads the warm tier as 1-minute windows: another width is not offered.
        let windows = if self.opts.windows.window_ms == 60_000 {
            earliest(&self.store, open)
        } else {
            i64::MAX
        };
        let coarse = |h: &HourStage| {
            let w = h.width();
            earliest(
                h.store(),
                if open == i64::MAX {
                    open
                } else {
                    open.div_euclid(w) * w
                },
            )
        };
        let hours = self.hours.as_ref();
        HeldFrom {
            windows,
            hours: hours.map_or(i64::MAX, coarse),
            days: hours.and_then(HourStage::days).map_or(i64::MAX, coarse),
        }
    }

    /// The windows of `tier` of `tenant`'s series matching `matchers` ending in `[start, end]`,
    /// with the figures `needs` names, by series: final windows from the store, each series
    /// read only when asked; windows not final yet (open, provisional) read now.
    pub fn read_lazy(
        &self,
        tier: Tier,
        tenant: &Tenant,
        matchers: &[Matcher],
        (start, end): (i64, i64),
        needs: strata_model::FigureNeeds,
    ) -> Result<Vec<strata_model::LazyWindows>, StorageError> {
        use strata_model::LazyWindows;
        let coarse = match tier {
            Tier::Window => None,
            Tier::Hour => match &self.hours {
                Some(h) => Some(h),
                None => return Ok(Vec::new()),
            },
            Tier::Day => match self.hours.as_ref().and_then(HourStage::days) {
                Some(d) => Some(d),
                None => return Ok(Vec::new()),
            },
        };
        let (store, width, open_from) = match coarse {
            None => (
                self.store.as_ref(),
                self.opts.windows.window_ms,
                self.windows.read().closed_before(),
            ),
            Some(h) => (h.store(), h.width(), h.final_before()),
        };
        // Windows are keyed by start: those ending in [start, end].
        let (first_key, last_key) = (start.saturating_sub(width), end.saturating_sub(width));
        let stored_to = last_key.min(open_from.saturating_sub(1));
        let mut out: std::collections::BTreeMap<Labels, LazyWindows> = Default::default();
        if first_key <= stored_to {
            let range = (first_key, stored_to);
            for (labels, figures) in store.select_figures(tenant, matchers, range, width, needs)? {
                out.insert(labels.clone(), LazyWindows::new(labels, figures));
            }
        }
        if last_key >= open_from {
            let from_key = first_key.max(open_from);
            for (labels, views) in self.read_tier(tier, tenant, matchers, from_key + 1, end)? {
                let windows: Vec<strata_model::WindowFigures> = views
                    .iter()
                    .filter(|w| w.start >= from_key && w.end <= end && w.figures.count > 0)
                    .map(WindowView::to_window_figures)
                    .collect();
                if windows.is_empty() {
                    continue;
                }
                let recent = LazyWindows::new(labels.clone(), windows);
                match out.entry(labels) {
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        e.get_mut().append(recent)
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(recent);
                    }
                }
            }
        }
        Ok(out.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::{Limits, Sample, WriteBatch};
    use strata_tsdb::{SeriesLimiter, TsdbOptions};

    fn feed(stage: &RollupStage, raw: &Tsdb, offset: u64, t: i64, v: f64) {
        feed_series(stage, raw, offset, "d1", &[Sample::new(t, v)]);
    }

    /// Writes `samples` of device `device`'s series in one batch, then settles.
    fn feed_series(stage: &RollupStage, raw: &Tsdb, offset: u64, device: &str, samples: &[Sample]) {
        let mut b = WriteBatch::new(Tenant::default_tenant());
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"t"), (b"device", device.as_bytes())];
        b.push_series(&mut l, samples, None, &Limits::default())
            .unwrap();
        let mut w = stage.observer();
        raw.append_observed(&b, offset, |s, stored, slot| {
            w.observe_at(slot, b.tenant(), s.id, s.key, stored)
        });
        drop(w);
        stage.settle(raw, None, offset).unwrap();
    }

    /// Default windows, no quantiles, windows kept for ever.
    fn options(publish_corrections: bool) -> StageOptions {
        StageOptions {
            windows: WindowOptions::default(),
            quantiles: Vec::new(),
            retention_ms: i64::MAX / 4,
            correction_subscribers: if publish_corrections {
                Subscribers::NONE
                    .with(Subscriber::new(0))
                    .with(Subscriber::new(1))
            } else {
                Subscribers::NONE
            },
            block_duration_ms: 7_200_000,
            hours: None,
        }
    }

    fn open_raw(dir: &Path) -> Tsdb {
        Tsdb::open(
            &dir.join("raw"),
            TsdbOptions {
                retention_ms: i64::MAX / 4,
                ..TsdbOptions::default()
            },
            SeriesLimiter::new(usize::MAX),
        )
        .unwrap()
    }

    /// Old data of a series arriving after the watermark passed it (a backfill in series
    /// order) lands in final windows: every window is recomputed from the raw tier, in runs of
    /// neighbouring windows, and a window already stored gets the next revision.
    #[test]
    fn backfill_into_final_windows_rolls_up_every_window() {
        const MIN: i64 = 60_000;
        let dir = tempfile::tempdir().unwrap();
        let opts = options(false);
        let raw = open_raw(dir.path());
        let base = strata_model::time::now_ms() / MIN * MIN - 600 * MIN;
        let stage = RollupStage::open(&dir.path().join("stage"), opts).unwrap();
        // d1 moves the watermark far ahead; its window 3 is final with one sample.
        feed(&stage, &raw, 1, base + 3 * MIN + 1_000, 1.0);
        feed(&stage, &raw, 2, base + 200 * MIN, 1.0);
        // d2's history arrives at once: minutes 0..40 and 70..80 (two runs), 4 samples each,
        // the first of each on the minute: in the window ending there (`(s, s + 1m]`).
        let history: Vec<Sample> = (0..40)
            .chain(70..80)
            .flat_map(|m| {
                (0..4).map(move |k| Sample::new(base + m * MIN + k * 15_000, (m * 4 + k) as f64))
            })
            .collect();
        feed_series(&stage, &raw, 3, "d2", &history);
        // d1's window 3 again: the same sample changes nothing, a new one corrects it.
        feed(&stage, &raw, 4, base + 3 * MIN + 1_000, 1.0);
        feed(&stage, &raw, 5, base + 3 * MIN + 2_000, 2.0);
        stage.store.flush().unwrap();
        let read = |device: &str| {
            let m = [Matcher::equal("device", device)];
            let mut r = stage
                .read(&Tenant::default_tenant(), &m, base, base + 100 * MIN)
                .unwrap();
            assert_eq!(r.len(), 1);
            r.pop().unwrap().1
        };
        let d2 = read("d2");
        let keys: Vec<i64> = d2.iter().map(|w| (w.start - base) / MIN).collect();
        let want: Vec<i64> = (-1..40).chain(69..80).collect();
        assert_eq!(
            keys, want,
            "every window of the history, edges in the earlier one"
        );
        for w in &d2 {
            let inside: Vec<&Sample> = history
                .iter()
                .filter(|s| s.timestamp > w.start && s.timestamp <= w.end)
                .collect();
            // Final windows that held nothing for the series before: their figures changed.
            assert_eq!(
                (w.figures.count, w.revision, w.state),
                (inside.len() as u64, 1, WindowState::Corrected)
            );
            assert_eq!(w.figures.sum, inside.iter().map(|s| s.value).sum::<f64>());
            assert_eq!(w.figures.first, *inside[0]);
            assert_eq!(w.figures.last, *inside[inside.len() - 1]);
        }
        // Window 0 holds 0:15, 0:30, 0:45 and 1:00 (on its end); 0:00 is in window -1.
        let w0 = &d2[1];
        assert_eq!((w0.figures.count, w0.figures.sum), (4, 10.0));
        assert_eq!(w0.figures.last, Sample::new(base + MIN, 4.0));
        assert_eq!((d2[0].figures.count, d2[0].figures.sum), (1, 0.0));
        assert_eq!(d2[40].figures.count, 3, "minute 39's last window: no 40:00");
        let d1 = read("d1");
        assert_eq!(d1.len(), 1);
        assert_eq!((d1[0].figures.count, d1[0].figures.sum), (2, 3.0));
        assert_eq!((d1[0].revision, d1[0].state), (1, WindowState::Corrected));
    }

    /// A late sample exactly on a final window's end recomputes that window (it holds
    /// `(start, end]`) from the raw samples in it, edge included; the next window stays.
    #[test]
    fn a_correction_on_a_window_end_recomputes_that_window() {
        const MIN: i64 = 60_000;
        let dir = tempfile::tempdir().unwrap();
        let raw = open_raw(dir.path());
        let base = strata_model::time::now_ms() / MIN * MIN - 600 * MIN;
        let stage = RollupStage::open(&dir.path().join("stage"), options(true)).unwrap();
        feed(&stage, &raw, 1, base + 30_000, 1.0);
        feed(&stage, &raw, 2, base + MIN + 30_000, 7.0);
        feed_series(
            &stage,
            &raw,
            3,
            "clock",
            &[Sample::new(base + 10 * MIN, 0.0)],
        );
        // Late, on the end of window `base`, which is final.
        feed(&stage, &raw, 4, base + MIN, 9.0);
        assert_eq!(
            stage
                .pending_corrected(Subscriber::new(0))
                .iter()
                .map(|c| c.start)
                .collect::<Vec<_>>(),
            vec![base]
        );
        let got = stage
            .read(
                &Tenant::default_tenant(),
                &[Matcher::equal("device", "d1")],
                base + 1,
                base + 2 * MIN,
            )
            .unwrap()
            .pop()
            .unwrap()
            .1;
        assert_eq!(got.len(), 2);
        let (w0, w1) = (&got[0], &got[1]);
        assert_eq!((w0.start, w0.end, w0.revision), (base, base + MIN, 1));
        assert_eq!((w0.figures.count, w0.figures.sum), (2, 10.0));
        assert_eq!(w0.figures.last, Sample::new(base + MIN, 9.0));
        assert_eq!(
            (w1.start, w1.revision, w1.figures.count),
            (base + MIN, 0, 1)
        );
        // A read ending on `base + 1m` sees window `base` (its end), not window `base + 1m`.
        let edge = stage
            .read(
                &Tenant::default_tenant(),
                &[Matcher::equal("device", "d1")],
                base + MIN,
                base + MIN,
            )
            .unwrap()
            .pop()
            .unwrap()
            .1;
        assert_eq!(edge.iter().map(|w| w.start).collect::<Vec<_>>(), vec![base]);
    }

    /// A correction stays queued for group rollups across a checkpoint and a reopening until
    /// it is marked done.
    #[test]
    fn corrections_stay_queued_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(true);
        let raw = open_raw(dir.path());
        let base = strata_model::time::now_ms() / 60_000 * 60_000 - 60 * 60_000;
        let stage = RollupStage::open(&dir.path().join("stage"), opts.clone()).unwrap();
        feed(&stage, &raw, 1, base + 1_000, 1.0);
        feed(&stage, &raw, 2, base + 10 * 60_000, 2.0); // closes the first window
        let (groups, other) = (Subscriber::new(0), Subscriber::new(1));
        assert!(stage.pending_corrected(groups).is_empty());
        feed(&stage, &raw, 3, base + 2_000, 5.0); // late: corrects it
        let pending = stage.pending_corrected(groups);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].start, base);
        stage.checkpoint(Some(3)).unwrap();
        drop(stage);
        let stage = RollupStage::open(&dir.path().join("stage"), opts.clone()).unwrap();
        assert_eq!(
            stage.pending_corrected(groups),
            pending,
            "kept across reopening"
        );
        stage.done_corrected(groups, &pending);
        assert!(stage.pending_corrected(groups).is_empty());
        assert_eq!(
            stage.pending_corrected(other),
            pending,
            "each subscriber has its own"
        );
        stage.checkpoint(Some(3)).unwrap();
        drop(stage);
        let stage = RollupStage::open(&dir.path().join("stage"), opts.clone()).unwrap();
        assert!(stage.pending_corrected(groups).is_empty());
        assert_eq!(stage.pending_corrected(other), pending);
        stage.done_corrected(other, &pending);
        stage.checkpoint(Some(3)).unwrap();
        drop(stage);
        let stage = RollupStage::open(&dir.path().join("stage"), opts).unwrap();
        assert!(stage.pending_corrected(other).is_empty());
    }

    #[test]
    fn correction_queue_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrected.ckpt");
        assert!(load_corrections(&path).unwrap().is_empty());
        let key = strata_model::Labels::from_pairs([("__name__", "t"), ("device", "d1")])
            .unwrap()
            .key();
        let q = vec![
            (
                Correction {
                    tenant: Tenant::default_tenant(),
                    key: key.clone(),
                    start: 60_000,
                },
                1,
            ),
            (
                Correction {
                    tenant: Tenant::new("other").unwrap(),
                    key,
                    start: -120_000,
                },
                3,
            ),
        ];
        save_corrections(&path, &q).unwrap();
        assert_eq!(load_corrections(&path).unwrap(), q);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load_corrections(&path)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(load_corrections(&path).is_err());
    }
}
