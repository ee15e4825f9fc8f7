//! The 1-hour tier of one shard: every final window of the rollup stage (1 minute by default)
//! merged into its clock-aligned hour, exactly, and kept in a [`RollupStore`] of its own.
//!
//! - **Membership.** Hours are left-open like their windows (see [`crate::window::window_of`]):
//!   the hour keyed `h` merges the windows keyed `h` to `h + HOUR_MS - w`, so it holds the
//!   samples in `(h, h + HOUR_MS]`, the range `x[1h]` evaluated at `h + HOUR_MS` sees.
//! - **Merging.** A closing window's [`Rollup`] joins its series' open hour by
//!   [`Rollup::merge_in_time`]: counts, exact sums and sketches add, min and max combine, first
//!   and last are the hour's earliest and latest samples. The counter increase is the minutes'
//!   increases plus one step across each boundary between consecutive windows holding samples:
//!   from the earlier window's last value to the later one's first, a drop counting as a reset
//!   (the later first value is the increase since the restart), else the difference. Raw
//!   increase is the sum of those steps over consecutive samples, and the only consecutive
//!   pairs not inside one window are exactly those boundary pairs, so the hour's increase equals
//!   the one computed over its raw samples, resets inside and between windows included.
//!   Windows of a series close in time order, so each merge appends at the hour's end.
//! - **Life.** An hour is *provisional* while any of its windows is not final (it holds its
//!   final windows so far; a reader also sees the windows still open merged in), and *final* once the stage has closed every window
//!   starting before its end; it is then written to the store at revision 0. A corrected window
//!   recomputes its hour from the windows the warm store holds (their figures and stored state,
//!   see [`crate::state`]); a final hour whose figures change is written again at revision + 1.
//! - **Durability.** The store is derived data, flushed at the stage's checkpoints. Open hours
//!   are saved then too, each with the windows merged into it, so a replay of the log after a
//!   crash skips windows an hour already holds and merges the rest.
//! - **The next stage.** With [`HourOptions::publish_final`], each hour written (final or
//!   corrected) is queued (after it is written), checkpointed, until a consumer (the cold tier)
//!   takes it; a consumer taking it by its mark leaves an hour corrected meanwhile queued:
//!   [`HourStage::pending_final_marked`], [`HourStage::final_windows`],
//!   [`HourStage::done_final_marked`] (or, unconditionally, [`HourStage::done_final`]).

use crate::rollup::Rollup;
use crate::stage::{encode_corrections, load_corrections, revision_for, revision_over, WindowView};
use crate::state::{self, StateError};
use crate::store::{RollupStore, StoredWindow, WarmId, WindowWrite};
use crate::window::{window_of, Correction, WindowState};
use crate::StreamError;
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{Labels, Matcher, SeriesKey, SeriesKeyRef, StorageError, Tenant};
use strata_tsdb::{MaintainStats, TsdbError};

/// Length of a window of this tier.
pub const HOUR_MS: i64 = 3_600_000;

/// A final or corrected hour queued for the next stage: its series and start.
pub type HourKey = Correction;

/// Settings of the 1-hour tier.
#[derive(Debug, Clone)]
pub struct HourOptions {
    /// How long final hours are kept.
    pub retention_ms: i64,
    /// Span of a block of the hour store.
    pub block_duration_ms: i64,
    /// Queue every hour written for a next stage (see [`HourStage::pending_final`]).
    pub publish_final: bool,
    /// The 1-day tier above this one (the same stage over hours), when kept.
    pub days: Option<Box<HourOptions>>,
}

/// Length of a window of the 1-day tier.
pub const DAY_MS: i64 = 86_400_000;

impl HourOptions {
    /// The 1-day tier's settings: days kept `retention_ms`, in blocks of 360 days.
    pub fn day_tier(retention_ms: i64) -> HourOptions {
        HourOptions {
            retention_ms,
            block_duration_ms: 360 * DAY_MS,
            publish_final: false,
            days: None,
        }
    }
}

impl Default for HourOptions {
    fn default() -> Self {
        HourOptions {
            retention_ms: 3 * 365 * 86_400_000,
            block_duration_ms: 30 * 86_400_000,
            publish_final: false,
            days: Some(Box::new(HourOptions::day_tier(3 * 365 * DAY_MS))),
        }
    }
}

/// Words of the bitmap of windows merged into an open hour, inline.
type Merged = SmallVec<[u64; 1]>;

/// One series' hour still taking windows.
#[derive(Debug, Clone)]
struct OpenHour {
    start: i64,
    /// Boxed: a series' slot holds two open windows inline, most of them empty.
    rollup: Option<Box<Rollup>>,
    /// Bit `i`: the window starting at `start + i * window` is merged.
    merged: Merged,
}

/// One series' open hours (two at most around an hour's end, while its last windows close).
struct HourSeries {
    tenant: Tenant,
    key: SeriesKey,
    open: SmallVec<[OpenHour; 2]>,
}

/// The state behind the stage's lock.
struct Hours {
    /// By [`WarmId`] of the hour store; `None` for series with no open hour.
    series: Vec<Option<HourSeries>>,
    /// Every hour starting before this is final (`i64::MIN`: none yet).
    final_before: i64,
    /// What `final_before` was at the latest checkpoint: those hours are in the store's blocks.
    flushed_final_before: i64,
    /// Hours written since the consumer last took them, each with the mark of its latest
    /// queuing (see [`HourStage::pending_final_marked`]).
    queue: BTreeMap<HourKey, u64>,
    /// The last mark given.
    marks: u64,
    /// Hours queued with a mark up to this one may have been taken by a consumer of an earlier
    /// process already (queued again by the log's replay, or taken but not yet checkpointed as
    /// done): until the first checkpoint after opening, every one.
    predating: u64,
}

impl Hours {
    /// Queues `keys` for the next stage, after their windows were written to the store: a
    /// consumer that read an hour before this write holds an older mark, so taking it does not
    /// drop the newer revision.
    fn enqueue(&mut self, keys: Vec<HourKey>) {
        for k in keys {
            self.marks += 1;
            self.queue.insert(k, self.marks);
        }
    }
}

/// The 1-hour tier of one shard (see the module doc). The shard's rollup stage drives it.
pub struct HourStage {
    opts: HourOptions,
    /// Length of the windows merged (divides `width`).
    window_ms: i64,
    /// Length of this tier's windows: an hour, or a day for the tier above the hours.
    width: i64,
    /// The 1-day tier, fed this tier's final hours.
    next: Option<Box<HourStage>>,
    /// Windows of this tier starting before this may be gone (its retention, as of the latest
    /// [`HourStage::maintain`]): the next tier is not rebuilt from what remains of them.
    expired_before: std::sync::atomic::AtomicI64,
    store: Arc<RollupStore>,
    hours: Mutex<Hours>,
    checkpoint: PathBuf,
    queue_path: PathBuf,
    /// Until the first checkpoint after opening, an hour becoming final may be stored already
    /// (from before a crash): compare instead of writing revision 0 blindly.
    verify_existing: AtomicBool,
    /// See [`HourStage::generation`].
    generation: AtomicU64,
}

fn tsdb_error(path: &Path) -> impl Fn(TsdbError) -> StreamError + '_ {
    move |e| StreamError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    }
}

/// A stored window's state that does not decode, as a read error naming the window.
fn state_error(key: SeriesKeyRef<'_>, start: i64) -> impl Fn(StateError) -> StorageError + '_ {
    move |e| {
        StorageError::Io(format!(
            "warm tier: the window of {:?} at {start}: {e}",
            key.labels()
        ))
    }
}

/// The hour holding the window (of a width dividing an hour) keyed `window_start`: the hour
/// keyed `h` holds the windows keyed `h, h + w, ..., h + HOUR_MS - w`, so its samples are those
/// in `(h, h + HOUR_MS]`, as the windows' are. A key, not a timestamp: the hour of a sample at
/// `ts` is [`window_of`]`(ts, HOUR_MS)` (a sample on the hour belongs to the hour ending there).
pub fn hour_start(window_start: i64) -> i64 {
    window_start.div_euclid(HOUR_MS) * HOUR_MS
}

impl HourStage {
    /// Opens the tier kept in `dir` (its store in `dir/store`) for windows of `window_ms`,
    /// which must divide an hour, and the 1-day tier above it in `dir/1d` when
    /// [`HourOptions::days`] asks for one.
    pub fn open(dir: &Path, window_ms: i64, opts: HourOptions) -> Result<HourStage, StreamError> {
        HourStage::open_tier(dir, window_ms, HOUR_MS, opts)
    }

    /// Opens a tier of windows `width` long merging windows of `window_ms`, which divides it.
    fn open_tier(
        dir: &Path,
        window_ms: i64,
        width: i64,
        mut opts: HourOptions,
    ) -> Result<HourStage, StreamError> {
        assert!(
            window_ms > 0 && width % window_ms == 0,
            "a tier merges windows that divide its own"
        );
        let next = match opts.days.take() {
            Some(d) => Some(Box::new(HourStage::open_tier(
                &dir.join("1d"),
                width,
                DAY_MS,
                *d,
            )?)),
            None => None,
        };
        let store_dir = dir.join("store");
        let store = RollupStore::open(&store_dir, opts.retention_ms, opts.block_duration_ms)
            .map_err(tsdb_error(&store_dir))?;
        let had_hours = store.tsdb().stats().series > 0;
        let checkpoint = dir.join("hours.ckpt");
        let queue_path = dir.join("final-hours.ckpt");
        let mut hours = load_hours(&checkpoint, &store)?;
        if opts.publish_final {
            let queued = load_corrections(&queue_path)?;
            hours.enqueue(queued.into_iter().map(|(c, _)| c).collect());
        }
        Ok(HourStage {
            opts,
            window_ms,
            width,
            next,
            expired_before: std::sync::atomic::AtomicI64::new(i64::MIN),
            store: Arc::new(store),
            hours: Mutex::new(hours),
            checkpoint,
            queue_path,
            verify_existing: AtomicBool::new(had_hours),
            generation: AtomicU64::new(0),
        })
    }

    /// How long the tier keeps an hour, ms.
    pub fn retention_ms(&self) -> i64 {
        self.opts.retention_ms
    }

    /// The store of final hours (sizes, direct reads).
    pub fn store(&self) -> &RollupStore {
        &self.store
    }

    /// The 1-day tier above this one, when kept.
    pub fn days(&self) -> Option<&HourStage> {
        self.next.as_deref()
    }

    /// Length of this tier's windows (an hour; a day for [`HourStage::days`]).
    pub fn width(&self) -> i64 {
        self.width
    }

    /// The start of this tier's window holding the finer window keyed `start`.
    fn key_of(&self, start: i64) -> i64 {
        start.div_euclid(self.width) * self.width
    }

    /// Every hour starting before this is final and written (`i64::MIN` before the first).
    pub fn final_before(&self) -> i64 {
        self.hours.lock().final_before
    }

    /// Every hour starting before this is final and in the store's blocks (as of the latest
    /// checkpoint): the finer tier may delete what lies before it.
    pub fn flushed_final_before(&self) -> i64 {
        self.hours.lock().flushed_final_before
    }

    /// The hour store's place of a series (made when new), for [`HourStage::merge`].
    pub fn series(&self, tenant: &Tenant, key: SeriesKeyRef<'_>) -> WarmId {
        self.store.series(tenant, key)
    }

    /// Merges a final window (of `tenant`'s series `key`, placed at `id`) into its hour. A
    /// window already merged (replayed after a crash) or of an hour already final is skipped.
    pub fn merge(
        &self,
        id: WarmId,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        start: i64,
        rollup: &Rollup,
    ) {
        let h = self.key_of(start);
        let bit = ((start - h) / self.window_ms) as usize;
        let mut hours = self.hours.lock();
        if h < hours.final_before {
            return;
        }
        let open = open_hour(&mut hours, id, tenant, key, h, self.words());
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if open.merged[word] & mask != 0 {
            return;
        }
        open.merged[word] |= mask;
        match &mut open.rollup {
            Some(acc) => acc.merge_in_time(rollup),
            None => open.rollup = Some(Box::new(rollup.clone())),
        }
    }

    /// Words of an hour's bitmap of windows.
    fn words(&self) -> usize {
        ((self.width / self.window_ms) as usize).div_ceil(64)
    }

    /// Makes final every hour ending at or before `closed_before`, a window key (every window
    /// keyed before it is final, so is every hour whose windows all are: `h + HOUR_MS <=
    /// closed_before`), writing them at log offset `offset`.
    pub fn advance(
        &self,
        closed_before: i64,
        quantiles: &[f64],
        offset: u64,
    ) -> Result<(), StorageError> {
        self.advance_over(None, closed_before, quantiles, offset)
    }

    /// [`HourStage::advance`]; with `source` (the finer tier's store, for the day tier), a
    /// window becoming final without every finer window merged is rebuilt from those the
    /// source holds: a day whose first hours were backfilled (written to the store, not
    /// merged) and whose later ones came live holds both.
    fn advance_over(
        &self,
        source: Option<&RollupStore>,
        closed_before: i64,
        quantiles: &[f64],
        offset: u64,
    ) -> Result<(), StorageError> {
        if closed_before == i64::MIN {
            return Ok(());
        }
        let boundary = self.key_of(closed_before);
        let verify = self.verify_existing.load(Ordering::Relaxed);
        let mut writes = Vec::new();
        let mut hours = self.hours.lock();
        if boundary <= hours.final_before {
            return Ok(());
        }
        hours.final_before = boundary;
        let mut queued = Vec::new();
        let Hours { series, .. } = &mut *hours;
        for (i, slot) in series.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let done = s.open.iter().filter(|o| o.start < boundary).count();
            if done == 0 {
                continue;
            }
            s.open.sort_by_key(|o| o.start);
            for o in s.open.drain(..done) {
                let rollup = match source.filter(|_| !self.full(&o.merged)) {
                    Some(src) => {
                        self.merge_stored(src, &s.tenant, s.key.as_ref(), o.start)?
                            .1
                    }
                    None => o.rollup.map(|r| *r),
                };
                let Some(rollup) = rollup else { continue };
                if let Some(next) = &self.next {
                    // Before the comparison below: an hour stored already (replayed after a
                    // crash) may be missing from its day, which skips hours it holds.
                    let id = next.series(&s.tenant, s.key.as_ref());
                    next.merge(id, &s.tenant, s.key.as_ref(), o.start, &rollup);
                }
                let figures = rollup.figures(quantiles);
                let revision = if verify {
                    let stored = self
                        .store
                        .get(&s.tenant, s.key.as_ref(), o.start, quantiles)?;
                    match revision_over(stored.as_ref(), &figures, 0) {
                        Some(r) => r,
                        None => continue,
                    }
                } else {
                    0
                };
                if self.opts.publish_final {
                    queued.push(HourKey {
                        tenant: s.tenant.clone(),
                        key: s.key.clone(),
                        start: o.start,
                    });
                }
                writes.push(WindowWrite {
                    series: WarmId::from_index(i),
                    start: o.start,
                    state: self.state_of(&rollup, revision),
                    figures,
                    revision,
                });
            }
            if s.open.is_empty() {
                *slot = None;
            }
        }
        drop(hours);
        self.store.write(writes, offset);
        if !queued.is_empty() {
            self.hours.lock().enqueue(queued);
        }
        match &self.next {
            Some(next) => next.advance_over(Some(&self.store), boundary, quantiles, offset),
            None => Ok(()),
        }
    }

    /// Whether every finer window of a window is merged in `merged`.
    fn full(&self, merged: &Merged) -> bool {
        let n = (self.width / self.window_ms) as u32;
        merged.iter().map(|w| w.count_ones()).sum::<u32>() == n
    }

    /// The window keyed `h` of `tenant`'s series `key` merged from the finer windows `source`
    /// holds (their figures and stored states), with the bitmap of those found.
    fn merge_stored(
        &self,
        source: &RollupStore,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        h: i64,
    ) -> Result<(Merged, Option<Rollup>), StorageError> {
        let windows = source.range(
            tenant,
            key,
            h,
            h + self.width - 1,
            &[],
            Some(self.window_ms),
        )?;
        self.merge_windows(&windows, key, h)
    }

    /// The window keyed `h` merged from the finer `windows` (sorted, all inside it).
    fn merge_windows(
        &self,
        windows: &[StoredWindow],
        key: SeriesKeyRef<'_>,
        h: i64,
    ) -> Result<(Merged, Option<Rollup>), StorageError> {
        let mut merged: Merged = SmallVec::from_elem(0, self.words());
        let mut acc: Option<Rollup> = None;
        for w in windows {
            let r = state::of_stored(&w.figures, w.revision, w.state.as_deref())
                .map_err(state_error(key, w.start))?;
            let bit = ((w.start - h) / self.window_ms) as usize;
            merged[bit / 64] |= 1 << (bit % 64);
            match &mut acc {
                Some(a) => a.merge_in_time(&r),
                None => acc = Some(r),
            }
        }
        Ok((merged, acc))
    }

    /// The state to store beside an hour's figures: only for a sketch. The exact sums below
    /// the figures' rounding cost most hours of decimal readings 20 bytes and serve only a day
    /// recomputed after a correction (built live, a day merges its hours' exact state; rebuilt,
    /// its hours' figures, each sum rounded once), so they are not kept.
    fn state_of(&self, rollup: &Rollup, revision: u32) -> Option<Vec<u8>> {
        rollup.quantiles.as_ref()?;
        state::for_store(rollup, revision, self.width)
    }

    /// Recomputes the days holding the hours starting at `hours` (written again: corrected or,
    /// with `backfilled`, backfilled) from the hours this tier's store holds, unless they may
    /// have expired.
    fn recompute_next(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        hours: impl IntoIterator<Item = i64>,
        quantiles: &[f64],
        offset: u64,
        backfilled: bool,
    ) -> Result<(), StorageError> {
        let Some(next) = &self.next else {
            return Ok(());
        };
        let days: BTreeSet<i64> = hours.into_iter().map(|h| next.key_of(h)).collect();
        if days.is_empty() {
            return Ok(());
        }
        let hours = (&*self.store, self.expired_before.load(Ordering::Relaxed));
        next.rebuild(hours, tenant, key, &days, quantiles, offset, backfilled)
    }

    /// Recomputes the hours starting at `starts` of `tenant`'s series `key` from the windows
    /// `minutes` holds, after some of those windows were corrected: an open hour takes them as
    /// its windows so far; a final one whose figures change is written at revision + 1 (at 1
    /// when it held nothing). Hours starting before `expired_before` are left alone: the warm
    /// store may have deleted some of their windows, and an hour is never rebuilt from a part.
    #[allow(clippy::too_many_arguments)]
    pub fn recompute(
        &self,
        minutes: &RollupStore,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        starts: &BTreeSet<i64>,
        expired_before: i64,
        quantiles: &[f64],
        offset: u64,
    ) -> Result<(), StorageError> {
        let windows = (minutes, expired_before);
        self.rebuild(windows, tenant, key, starts, quantiles, offset, false)
    }

    /// [`HourStage::recompute`]; `backfilled`: the finer windows were backfilled, so each
    /// rebuilt window is written as [`HourStage::replace`] writes it (at revision 0 when the
    /// store held none; an open one of the live path dropped), final or not.
    #[allow(clippy::too_many_arguments)]
    fn rebuild(
        &self,
        (minutes, expired_before): (&RollupStore, i64),
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        starts: &BTreeSet<i64>,
        quantiles: &[f64],
        offset: u64,
        backfilled: bool,
    ) -> Result<(), StorageError> {
        let id = self.store.series(tenant, key);
        let mut writes = Vec::new();
        let mut queued = Vec::new();
        let live: Vec<i64> = starts.range(expired_before..).copied().collect();
        // Neighbouring windows are read together (a backfill rebuilds every day it touched):
        // the finer store and this one once per run.
        for run in live.chunk_by(|a, b| b - a <= 2 * self.width) {
            let (first, last) = (run[0], run[run.len() - 1]);
            let finer = minutes.range(
                tenant,
                key,
                first,
                last + self.width - 1,
                &[],
                Some(self.window_ms),
            )?;
            let stored_run = self
                .store
                .range(tenant, key, first, last, quantiles, None)?;
            for &h in run {
                let inside = finer.partition_point(|w| w.start < h)
                    ..finer.partition_point(|w| w.start < h + self.width);
                let (merged, acc) = self.merge_windows(&finer[inside], key, h)?;
                let stored = stored_run
                    .binary_search_by_key(&h, |w| w.start)
                    .ok()
                    .map(|i| &stored_run[i]);
                if let Some(w) = self.rebuilt(
                    (id, tenant, key, h),
                    (merged, acc),
                    stored,
                    quantiles,
                    backfilled,
                )? {
                    if self.opts.publish_final {
                        queued.push(HourKey {
                            tenant: tenant.clone(),
                            key: key.to_owned(),
                            start: h,
                        });
                    }
                    writes.push(w);
                }
            }
        }
        let written: Vec<i64> = writes.iter().map(|w| w.start).collect();
        self.store.write(writes, offset);
        if !queued.is_empty() {
            self.hours.lock().enqueue(queued);
        }
        self.recompute_next(tenant, key, written, quantiles, offset, backfilled)
    }

    /// What [`HourStage::rebuild`] does with one window rebuilt as `(merged, acc)` over what
    /// the store holds of it (`stored`): an open one takes it as its windows so far (nothing
    /// to write); a final one is written when its figures changed.
    fn rebuilt(
        &self,
        (id, tenant, key, h): (WarmId, &Tenant, SeriesKeyRef<'_>, i64),
        (merged, acc): (Merged, Option<Rollup>),
        stored: Option<&StoredWindow>,
        quantiles: &[f64],
        backfilled: bool,
    ) -> Result<Option<WindowWrite>, StorageError> {
        {
            let mut hours = self.hours.lock();
            if backfilled {
                if let Some(Some(s)) = hours.series.get_mut(id.index()) {
                    s.open.retain(|o| o.start != h);
                }
            } else if h >= hours.final_before {
                let open = open_hour(&mut hours, id, tenant, key, h, self.words());
                open.rollup = acc.map(Box::new);
                open.merged = merged;
                return Ok(None);
            }
        }
        let Some(rollup) = acc else { return Ok(None) };
        let figures = rollup.figures(quantiles);
        let absent = if backfilled { 0 } else { 1 };
        let Some(revision) = revision_over(stored, &figures, absent) else {
            return Ok(None);
        };
        Ok(Some(WindowWrite {
            series: id,
            start: h,
            state: self.state_of(&rollup, revision),
            figures,
            revision,
        }))
    }

    /// Writes backfilled hours of `tenant`'s series `key` (`(start, rollup)`, ascending, see
    /// [`crate::backfill`]) over what the store holds: each at revision + 1 when it held other
    /// figures, not at all when it held these; an open hour of the live path at the same start
    /// is dropped (it would overwrite the store when final). Written hours are queued for the
    /// next stage. Returns how many were written.
    pub fn replace(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        hours: &[(i64, &Rollup)],
        quantiles: &[f64],
        offset: u64,
    ) -> Result<usize, StorageError> {
        let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
            return Ok(0);
        };
        let stored = self
            .store
            .range(tenant, key, first.0, last.0, quantiles, Some(self.width))?;
        let id = self.store.series(tenant, key);
        let mut writes = Vec::new();
        for &(start, rollup) in hours {
            let figures = rollup.figures(quantiles);
            let was = stored
                .binary_search_by_key(&start, |w| w.start)
                .ok()
                .map(|i| &stored[i]);
            // An hour keeps a state only for its sketch (see `state_of`).
            let states = rollup.quantiles.is_some();
            let Some(revision) = revision_for(was, rollup, &figures, 0, states) else {
                continue;
            };
            writes.push(WindowWrite {
                series: id,
                start,
                state: self.state_of(rollup, revision),
                figures,
                revision,
            });
        }
        let queued: Vec<HourKey> = writes
            .iter()
            .filter(|_| self.opts.publish_final)
            .map(|w| HourKey {
                tenant: tenant.clone(),
                key: key.to_owned(),
                start: w.start,
            })
            .collect();
        let written: Vec<i64> = writes.iter().map(|w| w.start).collect();
        {
            let mut open = self.hours.lock();
            if let Some(Some(s)) = open.series.get_mut(id.index()) {
                s.open
                    .retain(|o| hours.binary_search_by_key(&o.start, |h| h.0).is_err());
            }
        }
        self.store.write(writes, offset);
        if !queued.is_empty() {
            self.hours.lock().enqueue(queued);
        }
        let n = written.len();
        self.recompute_next(tenant, key, written, quantiles, offset, true)?;
        Ok(n)
    }

    /// Makes hours written outside a checkpoint ([`HourStage::replace`]) durable: the store
    /// flushed into blocks, then the queue of hours for the next stage saved. Open hours and the
    /// checkpoint's other state are left to the next checkpoint.
    pub fn persist_written(&self) -> Result<(), StreamError> {
        self.store.flush().map_err(tsdb_error(&self.checkpoint))?;
        if self.opts.publish_final {
            // The queue's one consumer is the cold tier: each entry is the first subscriber's.
            let queue: Vec<(HourKey, u8)> = self
                .hours
                .lock()
                .queue
                .keys()
                .map(|k| (k.clone(), 1))
                .collect();
            crate::bytes::write_checked(&self.queue_path, encode_corrections(&queue))?;
        }
        match &self.next {
            Some(next) => next.persist_written(),
            None => Ok(()),
        }
    }

    /// Persists the store, then the open hours and the queue of hours for the next stage. The
    /// caller saves its window checkpoint after this (see [`crate::stage::RollupStage::checkpoint`]).
    ///
    /// When hours became final since the previous checkpoint, the places of series without an
    /// open hour are given back (their hours are all in the store's blocks now), so memory holds
    /// only the series of open hours however many series were ever seen; a series that goes on
    /// gets a place again with its next window (see [`HourStage::generation`]).
    pub fn checkpoint(&self) -> Result<(), StreamError> {
        let done = self.begin_checkpoint().write()?;
        self.end_checkpoint(&done);
        Ok(())
    }

    /// The part of [`HourStage::checkpoint`] that must see the hours as they are, on the
    /// thread applying writes: hours written so far staged in the store's head, the open hours
    /// and the queue encoded. [`HourCheckpoint::write`] persists them on any thread, then
    /// [`HourStage::end_checkpoint`] completes it.
    pub fn begin_checkpoint(&self) -> HourCheckpoint {
        self.store.stage_all();
        let hours = self.hours.lock();
        let queue = self.opts.publish_final.then(|| {
            let queue: Vec<(HourKey, u8)> = hours.queue.keys().map(|k| (k.clone(), 1)).collect();
            (self.queue_path.clone(), encode_corrections(&queue))
        });
        let c = HourCheckpoint {
            store: Arc::clone(&self.store),
            path: self.checkpoint.clone(),
            hours: encode_hours(&hours),
            queue,
            final_before: hours.final_before,
            next: None,
        };
        drop(hours);
        // The day tier as it is now: every hour it holds is in this checkpoint's store, or is
        // merged again when the log replays (a final hour always joins its day, see `advance`).
        HourCheckpoint {
            next: self.next.as_ref().map(|n| Box::new(n.begin_checkpoint())),
            ..c
        }
    }

    /// Completes a checkpoint whose [`HourCheckpoint::write`] gave `done`: the hours final when
    /// it was begun are in the store's blocks now.
    pub fn end_checkpoint(&self, done: &HourCheckpointDone) {
        if let (Some(next), Some(d)) = (&self.next, &done.next) {
            next.end_checkpoint(d);
        }
        let final_before = done.final_before;
        let mut hours = self.hours.lock();
        if hours.predating == u64::MAX {
            hours.predating = hours.marks;
        }
        if hours.flushed_final_before < final_before {
            hours.flushed_final_before = final_before;
            let series = &hours.series;
            self.store
                .forget_where(|id| series.get(id.index()).is_none_or(Option::is_none));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.verify_existing.store(false, Ordering::Relaxed);
    }

    /// Retention of the hour store. An hour still queued for the next tier (the cold tier) is
    /// not deleted: retention waits until it is taken.
    pub fn maintain(&self, now_ms: i64) -> Result<MaintainStats, TsdbError> {
        let oldest_queued = self.hours.lock().queue.keys().map(|k| k.start).min();
        let mut now = oldest_queued.map_or(now_ms, |start| {
            now_ms.min(start.saturating_add(self.opts.retention_ms))
        });
        // Nor before the day tier holds their days final, in its blocks (a day tier that never
        // took a final hour holds backfilled days only, written with their hours).
        if let Some(next) = self.next.as_ref().filter(|n| n.final_before() != i64::MIN) {
            now = now.min(
                next.flushed_final_before()
                    .saturating_add(self.opts.retention_ms),
            );
        }
        let horizon = now.saturating_sub(self.opts.retention_ms);
        self.expired_before.fetch_max(horizon, Ordering::Relaxed);
        let done = self.store.tsdb().maintain(now);
        match &self.next {
            Some(next) => {
                let next = next.maintain(now_ms);
                Ok(done? + next?)
            }
            None => done,
        }
    }

    /// Hours written (final or corrected) and not yet marked done, when
    /// [`HourOptions::publish_final`] is set: the hook of the next stage (the cold tier). Each
    /// stays queued, across checkpoints and restarts, until [`HourStage::done_final`].
    pub fn pending_final(&self) -> Vec<HourKey> {
        self.hours.lock().queue.keys().cloned().collect()
    }

    /// How many hours [`HourStage::pending_final`] would give.
    pub fn pending_final_count(&self) -> usize {
        self.hours.lock().queue.len()
    }

    /// As [`HourStage::pending_final`], each hour with the mark of its latest queuing, for
    /// [`HourStage::done_final_marked`]. An hour is queued after its window is written, so a
    /// window read after this call is at least as new as its mark.
    pub fn pending_final_marked(&self) -> Vec<(HourKey, u64)> {
        let hours = self.hours.lock();
        hours.queue.iter().map(|(k, m)| (k.clone(), *m)).collect()
    }

    /// True when the hour queued with `mark` may have been taken by a consumer before this
    /// process opened the tier (a crash lost the record of it): the consumer compares with what
    /// it holds instead of taking it twice. Hours queued after the first checkpoint are new.
    pub fn may_predate_open(&self, mark: u64) -> bool {
        mark <= self.hours.lock().predating
    }

    /// Marks queued hours as taken, each only if it was not queued again since its mark was
    /// read (a correction written meanwhile stays queued, for its newer revision).
    pub fn done_final_marked(&self, done: &[(HourKey, u64)]) {
        let mut hours = self.hours.lock();
        for (k, m) in done {
            if hours.queue.get(k) == Some(m) {
                hours.queue.remove(k);
            }
        }
    }

    /// The stored hours of `keys` (those still stored), with their series' labels, for a
    /// consumer of [`HourStage::pending_final`].
    pub fn final_windows(
        &self,
        keys: &[HourKey],
        quantiles: &[f64],
    ) -> Result<Vec<(HourKey, Labels, StoredWindow)>, StorageError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(w) = self
                .store
                .get(&k.tenant, k.key.as_ref(), k.start, quantiles)?
            {
                out.push((k.clone(), k.key.labels(), w));
            }
        }
        Ok(out)
    }

    /// Marks queued hours as taken by the next stage: they leave the queue (and its next
    /// checkpoint).
    pub fn done_final(&self, done: &[HourKey]) {
        let mut hours = self.hours.lock();
        for k in done {
            hours.queue.remove(k);
        }
    }

    /// Changes each time places of the hour store are given back: a caller keeping
    /// [`WarmId`]s from [`HourStage::series`] drops them when it changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The hours of `tenant`'s series matching `matchers` that overlap `[start, end]` (the hour
    /// keyed `h` holds `(h, h + HOUR_MS]`; a day likewise): final and corrected ones from the
    /// store, provisional ones from memory (see [`HourStage::provisional`]).
    pub fn read(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        (start, end): (i64, i64),
        quantiles: &[f64],
        open_windows: Vec<(SeriesKey, i64, Rollup)>,
    ) -> Result<Vec<(Labels, Vec<WindowView>)>, StorageError> {
        let width = self.width;
        let mut out: BTreeMap<Labels, Vec<WindowView>> = BTreeMap::new();
        for (labels, ws) in self.store.select(
            tenant,
            matchers,
            start.saturating_sub(width),
            end.saturating_sub(1),
        )? {
            out.entry(labels)
                .or_default()
                .extend(ws.into_iter().map(|w| WindowView {
                    start: w.start,
                    end: w.start + width,
                    state: WindowState::of_revision(w.revision),
                    revision: w.revision,
                    figures: w.figures,
                }));
        }
        let open = self.provisional(tenant, matchers, (start, end), open_windows);
        for (key, h, r) in open {
            out.entry(key.labels())
                .or_default()
                .push(WindowView::provisional(h, h + width, r.figures(quantiles)));
        }
        Ok(crate::stage::by_start(out))
    }

    /// The provisional windows of this tier overlapping `[start, end]` of `tenant`'s series
    /// matching `matchers`, as `(series, start, rollup)` sorted by series and start: their
    /// final finer windows so far merged with `open_windows` (the finer windows still open, of
    /// those series, from the caller's tier), in time order.
    pub fn provisional(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        (start, end): (i64, i64),
        mut open_windows: Vec<(SeriesKey, i64, Rollup)>,
    ) -> Vec<(SeriesKey, i64, Rollup)> {
        // Keys of the windows overlapping the range.
        let keys = window_of(start, self.width)..end;
        let mut provisional: BTreeMap<(SeriesKey, i64), Rollup> = BTreeMap::new();
        let hours = self.hours.lock();
        for s in hours.series.iter().flatten() {
            if &s.tenant != tenant || !Matcher::all_match(matchers, s.key.as_ref()) {
                continue;
            }
            for o in s.open.iter().filter(|o| keys.contains(&o.start)) {
                if let Some(r) = &o.rollup {
                    provisional.insert((s.key.clone(), o.start), Rollup::clone(r));
                }
            }
        }
        drop(hours);
        // Open windows are later than every final one: merged in time order, each appends.
        open_windows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        for (key, ws, r) in open_windows {
            let h = self.key_of(ws);
            if !keys.contains(&h) {
                continue;
            }
            match provisional.entry((key, h)) {
                Entry::Occupied(mut e) => e.get_mut().merge_in_time(&r),
                Entry::Vacant(e) => {
                    e.insert(r);
                }
            }
        }
        provisional
            .into_iter()
            .map(|((key, h), r)| (key, h, r))
            .collect()
    }
}

/// The open hour `h` of series `id`, made (with the series' entry) when new.
fn open_hour<'a>(
    hours: &'a mut Hours,
    id: WarmId,
    tenant: &Tenant,
    key: SeriesKeyRef<'_>,
    h: i64,
    words: usize,
) -> &'a mut OpenHour {
    let i = id.index();
    if hours.series.len() <= i {
        hours.series.resize_with(i + 1, || None);
    }
    let s = hours.series[i].get_or_insert_with(|| HourSeries {
        tenant: tenant.clone(),
        key: key.to_owned(),
        open: SmallVec::new(),
    });
    let at = match s.open.iter().position(|o| o.start == h) {
        Some(at) => at,
        None => {
            s.open.push(OpenHour {
                start: h,
                rollup: None,
                merged: SmallVec::from_elem(0, words),
            });
            s.open.len() - 1
        }
    };
    &mut s.open[at]
}

const HOURS_MAGIC: &[u8; 8] = b"STRHOURS";
const HOURS_VERSION: u32 = 1;

/// Writes the open hours: magic, version, `final_before`, the count of open hours, then each
/// one's tenant, key, start, bitmap (word count and words) and full state
/// ([`state::encode`]), and a CRC of all of it.
fn encode_hours(hours: &Hours) -> Vec<u8> {
    use crate::bytes::put;
    let mut b = HOURS_MAGIC.to_vec();
    b.extend_from_slice(&HOURS_VERSION.to_le_bytes());
    b.extend_from_slice(&hours.final_before.to_le_bytes());
    let open: Vec<(&HourSeries, &OpenHour, &Rollup)> = hours
        .series
        .iter()
        .flatten()
        .flat_map(|s| {
            s.open
                .iter()
                .filter_map(move |o| Some((s, o, o.rollup.as_deref()?)))
        })
        .collect();
    b.extend_from_slice(&(open.len() as u32).to_le_bytes());
    for (s, o, r) in open {
        put(&mut b, s.tenant.as_str().as_bytes());
        put(&mut b, s.key.as_bytes());
        b.extend_from_slice(&o.start.to_le_bytes());
        b.extend_from_slice(&(o.merged.len() as u32).to_le_bytes());
        for w in &o.merged {
            b.extend_from_slice(&w.to_le_bytes());
        }
        put(&mut b, &state::encode(r, 0, true));
    }
    b
}

/// A checkpoint begun by [`HourStage::begin_checkpoint`], to be written on any thread.
pub struct HourCheckpoint {
    store: Arc<RollupStore>,
    path: PathBuf,
    hours: Vec<u8>,
    queue: Option<(PathBuf, Vec<u8>)>,
    /// Every hour before this was final when it was begun.
    final_before: i64,
    /// The day tier's.
    next: Option<Box<HourCheckpoint>>,
}

/// A written [`HourCheckpoint`], for [`HourStage::end_checkpoint`].
#[derive(Debug, Clone)]
pub struct HourCheckpointDone {
    final_before: i64,
    next: Option<Box<HourCheckpointDone>>,
}

impl HourCheckpoint {
    /// Writes the day tier's checkpoint, then flushes the store and writes the open hours and
    /// the queue of hours for the next stage. The days first: an hour final in this
    /// checkpoint is never replayed, so its day must be saved holding it; a day saved holding
    /// hours the log replays skips them.
    pub fn write(self) -> Result<HourCheckpointDone, StreamError> {
        let next = match self.next {
            Some(n) => Some(Box::new(n.write()?)),
            None => None,
        };
        self.store.tsdb().flush().map_err(tsdb_error(&self.path))?;
        crate::bytes::write_checked(&self.path, self.hours)?;
        if let Some((path, queue)) = self.queue {
            crate::bytes::write_checked(&path, queue)?;
        }
        Ok(HourCheckpointDone {
            final_before: self.final_before,
            next,
        })
    }
}

/// Reads what [`encode_hours`] encoded (nothing when there is no file), placing each series in
/// `store`.
fn load_hours(path: &Path, store: &RollupStore) -> Result<Hours, StreamError> {
    use crate::bytes::{read_checked, Reader};
    let mut hours = Hours {
        series: Vec::new(),
        final_before: i64::MIN,
        flushed_final_before: i64::MIN,
        queue: BTreeMap::new(),
        marks: 0,
        predating: u64::MAX,
    };
    let Some(body) = read_checked(path, HOURS_MAGIC, 28, "an hour checkpoint")? else {
        return Ok(hours);
    };
    let mut r = Reader::new(&body[8..]);
    let parsed = (|| {
        if r.u32()? != HOURS_VERSION {
            return None;
        }
        hours.final_before = r.i64()?;
        hours.flushed_final_before = hours.final_before;
        for _ in 0..r.u32()? {
            let tenant = Tenant::new(std::str::from_utf8(r.field()?).ok()?).ok()?;
            let key = SeriesKey::from_bytes(r.field()?)?;
            let start = r.i64()?;
            let words = r.u32()? as usize;
            let merged: Merged = (0..words).map(|_| r.u64()).collect::<Option<_>>()?;
            let (rollup, _) = state::decode(r.field()?, None).ok()?;
            let id = store.series(&tenant, key.as_ref());
            let open = open_hour(&mut hours, id, &tenant, key.as_ref(), start, words);
            open.rollup = Some(Box::new(rollup));
            open.merged = merged;
        }
        r.is_done().then_some(())
    })();
    parsed.map(|()| hours).ok_or_else(|| StreamError::Corrupt {
        path: path.into(),
        reason: "unreadable open hour or unknown version".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::Distinct;
    use proptest::prelude::*;
    use strata_model::Sample;

    const MIN: i64 = 60_000;

    /// Readings of the hour keyed 0, `(0, HOUR_MS]` (windows are left-open: a reading on a
    /// minute's edge, often drawn, belongs to the minute ending there, the last one to the
    /// hour): any values (decimals, so sums are inexact; drops, so counters reset), or a
    /// counter that climbs and restarts now and then.
    fn hour_samples() -> impl Strategy<Value = Vec<Sample>> {
        let value = prop_oneof![
            (0u32..100_000).prop_map(|x| f64::from(x) / 10.0),
            -1e6f64..1e6,
            (0u32..50).prop_map(f64::from),
        ];
        let at = || prop_oneof![1i64..=HOUR_MS, (1i64..=60).prop_map(|m| m * MIN)];
        let readings = prop::collection::btree_map(at(), value, 1..400)
            .prop_map(|m| m.into_iter().map(|(t, v)| Sample::new(t, v)).collect());
        let counter =
            prop::collection::btree_map(at(), (0u32..1_000, prop::bool::weighted(0.05)), 1..400)
                .prop_map(|m| {
                    let mut c = 0.0;
                    m.into_iter()
                        .map(|(t, (step, reset))| {
                            c = if reset {
                                f64::from(step) / 4.0
                            } else {
                                c + f64::from(step) / 4.0
                            };
                            Sample::new(t, c)
                        })
                        .collect()
                });
        prop_oneof![readings, counter]
    }

    /// The hour merged from its minutes, each taken through the warm tier's stored form
    /// (figures and state) as a recomputation reads it.
    fn merged_from_minutes(samples: &[Sample]) -> Rollup {
        let mut acc: Option<Rollup> = None;
        let minute_of = |s: &Sample| window_of(s.timestamp, MIN);
        for minute in samples.chunk_by(|a, b| minute_of(a) == minute_of(b)) {
            assert_eq!(
                hour_start(minute_of(&minute[0])),
                0,
                "a minute of the hour keyed 0"
            );
            let r = Rollup::of_sorted(minute, true).unwrap();
            let figures = r.figures(&[]);
            let st = state::for_store(&r, 2, MIN);
            let stored = state::of_stored(&figures, 2, st.as_deref()).unwrap();
            assert_eq!(stored, r, "a minute's stored form gives its state back");
            match &mut acc {
                Some(a) => a.merge_in_time(&stored),
                None => acc = Some(stored),
            }
        }
        acc.unwrap()
    }

    proptest! {
        /// Every figure of an hour merged from its minutes equals the one computed from its raw
        /// samples: count, exact sums, min, max, first, last, increase across resets inside
        /// and between minutes, mean, and the quantile sketch (so every quantile).
        #[test]
        fn hour_from_minutes_equals_hour_from_raw(samples in hour_samples()) {
            let whole = Rollup::of_sorted(&samples, true).unwrap();
            let merged = merged_from_minutes(&samples);
            prop_assert_eq!(merged.count, whole.count);
            prop_assert_eq!(&merged.sum, &whole.sum);
            prop_assert_eq!(&merged.sum_squares, &whole.sum_squares);
            prop_assert_eq!(merged.min.to_bits(), whole.min.to_bits());
            prop_assert_eq!(merged.max.to_bits(), whole.max.to_bits());
            prop_assert_eq!(merged.first, whole.first);
            prop_assert_eq!(merged.last, whole.last);
            prop_assert_eq!(&merged.increase, &whole.increase);
            prop_assert_eq!(merged.mean().to_bits(), whole.mean().to_bits());
            prop_assert_eq!(&merged.quantiles, &whole.quantiles);
            let q = [0.0, 0.5, 0.9, 0.99, 1.0];
            prop_assert_eq!(merged.figures(&q), whole.figures(&q));
            prop_assert_eq!(merged, whole);
        }

        /// Distinct-count sketches of an hour's minutes merge into the sketch of the hour.
        #[test]
        fn distinct_of_minutes_merges_into_the_hour(
            values in prop::collection::vec((0i64..60, 0u32..3_000), 0..3_000),
        ) {
            let mut minutes: BTreeMap<i64, Distinct> = BTreeMap::new();
            let mut hour = Distinct::new();
            for (m, v) in &values {
                minutes.entry(*m).or_default().add(&v.to_le_bytes());
                hour.add(&v.to_le_bytes());
            }
            let mut merged = Distinct::new();
            for d in minutes.values() {
                merged.merge(d);
            }
            prop_assert_eq!(merged.estimate(), hour.estimate());
            prop_assert_eq!(merged, hour);
        }
    }

    #[test]
    fn replayed_windows_are_merged_once_and_final_hours_take_none() {
        let dir = tempfile::tempdir().unwrap();
        let stage = HourStage::open(dir.path(), MIN, HourOptions::default()).unwrap();
        let t = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "t"), ("device", "d1")])
            .unwrap()
            .key();
        let id = stage.series(&t, key.as_ref());
        let h = hour_start(strata_model::time::now_ms()) - 10 * HOUR_MS;
        // Minute `m` (keyed `h + m`) with one sample on its end, where it belongs.
        let minute =
            |m: i64| Rollup::of_sorted(&[Sample::new(h + (m + 1) * MIN, m as f64)], false).unwrap();
        // Minute 1 twice and minute 0 again (replayed after a crash): merged once each.
        for m in [0, 1, 1, 0] {
            stage.merge(id, &t, key.as_ref(), h + m * MIN, &minute(m));
        }
        let read = |stage: &HourStage, open: Vec<(SeriesKey, i64, Rollup)>| {
            stage
                .read(
                    &t,
                    &[Matcher::equal("device", "d1")],
                    (h, h + 2 * HOUR_MS),
                    &[],
                    open,
                )
                .unwrap()
                .pop()
                .unwrap()
                .1
        };
        let open = read(&stage, Vec::new());
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].state, open[0].figures.count),
            (WindowState::Provisional, 2)
        );
        // A window still open joins the provisional hour as a reader sees it.
        let with_open = read(&stage, vec![(key.clone(), h + 59 * MIN, minute(59))]);
        assert_eq!(with_open[0].figures.count, 3);
        assert_eq!(with_open[0].figures.last, Sample::new(h + HOUR_MS, 59.0));
        assert_eq!(read(&stage, Vec::new()), open, "and leaves it as it was");
        stage.merge(id, &t, key.as_ref(), h + 59 * MIN, &minute(59));
        stage.advance(h + HOUR_MS - MIN, &[], 1).unwrap();
        assert_eq!(
            read(&stage, Vec::new())[0].state,
            WindowState::Provisional,
            "minute 59 is not final"
        );
        stage.advance(h + HOUR_MS, &[], 1).unwrap();
        assert_eq!(stage.final_before(), h + HOUR_MS);
        let fin = read(&stage, Vec::new());
        assert_eq!(
            (fin[0].state, fin[0].figures.count),
            (WindowState::Final, 3)
        );
        assert_eq!(fin[0].figures.sum, 60.0);
        // A window of a final hour (a replay after a crash) is not merged again.
        stage.merge(id, &t, key.as_ref(), h + 5 * MIN, &minute(5));
        assert_eq!(read(&stage, Vec::new()), fin);
    }
}
