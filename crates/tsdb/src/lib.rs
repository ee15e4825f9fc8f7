//! The raw tier of one shard: an in-memory head, immutable compressed blocks on disk
//! partitioned by time and tenant, a label index, compaction and retention.
//!
//! - **Layout.** `dir/@tenants/<tenant>/<seq>_<min>_<max>.blk`: tenants never share a file, so a
//!   read for one tenant cannot see another's data, and per-tenant retention needs no format
//!   change. Tenant directories have a namespace of their own, named so that no tenant id can
//!   collide with another or with the engine's files (see [`layout`]); a failure in one
//!   tenant's directory is that tenant's alone. `dir/checkpoint` records the ingest-log offset
//!   whose data is all in blocks.
//! - **Any order.** Samples of any age inside the retention are accepted in any order.
//! - **Duplicates and conflicts.** An exact repeat of (series, timestamp, value) is dropped and
//!   counted. A different value for the same (series, timestamp) replaces the stored one: the
//!   **last write wins** (writes are applied in log order, so replay reproduces the outcome).
//!   Across blocks the higher sequence number wins; the head beats every block.
//! - **Identity.** Series are found by their tenant-seeded id and confirmed by their key bytes:
//!   a hash collision makes two series, never one.
//! - **Live series.** The head holds the series written lately: one that received nothing
//!   since the last flush and whose newest sample is older than [`HEAD_LOOKBACK_MS`] leaves it
//!   at the next flush, and the [`SeriesLimiter`] (per metric, per tenant, in all) counts only
//!   series in heads. Block indexes are read in place from their files (nothing is parsed or
//!   kept per series), so memory follows the live series, not every series ever written.
//!
//! This crate does no networking and knows nothing of the ingest log beyond offsets it is told.

mod block;
mod block_index;
pub mod codec;
mod head;
mod index;
pub mod layout;
mod legacy;
mod open;
mod read;
mod reader;

use ahash::AHashMap;
use block::{Block, BlockWriter};
pub use head::ObserverSlot;
use head::{Appended, TenantHead};
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use read::ByLabels;
pub use read::{lazy, read_all, SeriesRead};
pub use reader::{BlockInfo, BlockReader, ChunkMeta};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{
    sort_last_wins, BatchSeries, FirstSorted, Labels, LazySeries, Matcher, MetadataHints, Sample,
    SelectHints, SeriesKey, SeriesKeyRef, SeriesSamples, Storage, StorageError, Tenant, WriteBatch,
    METRIC_NAME,
};

/// Errors of the storage engine. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// An I/O operation failed.
    #[error("storage I/O error on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file is damaged.
    #[error("storage file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Work on one tenant's data failed (the other tenants' went ahead).
    #[error("{what} of tenant \"{tenant}\" failed: {source}")]
    Tenant {
        /// The tenant.
        tenant: Tenant,
        /// What was being done: flush, compaction or retention.
        what: &'static str,
        /// The failure.
        source: Box<TsdbError>,
    },
    /// The [`ExpiryArchive`] refused part of an expiring block: the block is kept.
    #[error("archiving expiring block {path} failed (the block is kept): {reason}")]
    Archive {
        /// The block.
        path: PathBuf,
        /// The archive's error.
        reason: String,
    },
}

impl TsdbError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TsdbError {
        let path = path.to_path_buf();
        move |source| TsdbError::Io { path, source }
    }
}

/// Where the samples of blocks leaving by retention go first (the cold tier's raw archive): a
/// block is deleted only once every sample it holds was archived. Set with
/// [`Tsdb::set_expiry_archive`].
pub trait ExpiryArchive: Send + Sync {
    /// Archives `series` (each with every sample it has in the expiring block) of `tenant`.
    /// A block is handed over in batches of about [`ARCHIVE_BATCH_SAMPLES`] samples; an error
    /// keeps the block, and the next maintenance hands all of it over again.
    fn archive(&self, tenant: &Tenant, series: &[SeriesSamples]) -> Result<(), String>;
}

/// About how many samples one [`ExpiryArchive::archive`] call receives (bounds its memory).
pub const ARCHIVE_BATCH_SAMPLES: usize = 1 << 20;

/// Tuning.
#[derive(Debug, Clone)]
pub struct TsdbOptions {
    /// Time window of a freshly written block.
    pub block_duration_ms: i64,
    /// Blocks entirely older than this (before now) are deleted.
    pub retention_ms: i64,
    /// Most series per metric name and tenant (enforced through the [`SeriesLimiter`]).
    pub max_series_per_metric: usize,
}

impl Default for TsdbOptions {
    fn default() -> Self {
        TsdbOptions {
            block_duration_ms: 2 * 3_600_000,
            retention_ms: 30 * 86_400_000,
            max_series_per_metric: 100_000,
        }
    }
}

/// How far behind the clock a series' newest sample may be for it to stay in the head while it
/// receives nothing (Prometheus' default lookback): a series idle for a whole flush interval but
/// still current in an instant query keeps its place, and is not re-created at its next sample.
pub const HEAD_LOOKBACK_MS: i64 = 5 * 60_000;

/// Blocks are compacted up to this many block durations per window.
const COMPACT_FACTOR: i64 = 12;

/// Blocks a compaction window still being written (the latest flush added to it) needs before
/// they are merged. Flushes come as often as the log grows (see the server's
/// `checkpoint_log_bytes`); merging at every one would rewrite the window's data each time.
const COMPACT_OPEN_BLOCKS: usize = 8;

/// What one append did.
#[derive(Debug, Default, Clone)]
pub struct AppendStats {
    /// Samples stored.
    pub appended: usize,
    /// Exact repeats dropped.
    pub duplicates: usize,
    /// Samples that replaced a different value at the same timestamp.
    pub overwritten: usize,
    /// Series created.
    pub new_series: usize,
    /// Samples refused because a series cap was reached (any of them; see `refused`).
    pub rejected_series_limit: usize,
    /// Series and samples refused, by the cap they ran into.
    pub refused: SeriesRefusals,
    /// Samples older than the retention.
    pub too_old: usize,
}

impl AppendStats {
    /// Appends one sample of the series with `key` (older than `oldest`: refused), counting the
    /// outcome. True when storage changed (a new value or an overwrite).
    fn put(
        &mut self,
        series: &mut head::MemSeries,
        x: Sample,
        oldest: i64,
        blocks: &[Arc<dyn BlockReader>],
        key: SeriesKeyRef<'_>,
    ) -> bool {
        if x.timestamp < oldest {
            self.too_old += 1;
            return false;
        }
        match series.append(x, |t| lookup_blocks(blocks, key, t)) {
            Appended::New => self.appended += 1,
            Appended::Duplicate => {
                self.duplicates += 1;
                return false;
            }
            Appended::Overwrote => self.overwritten += 1,
        }
        true
    }
}

/// What maintenance did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintainStats {
    /// Blocks merged away.
    pub compacted_blocks: usize,
    /// Blocks deleted by retention.
    pub deleted_blocks: usize,
}

impl MaintainStats {
    /// True when maintenance merged or deleted any block.
    pub fn changed(&self) -> bool {
        self.compacted_blocks + self.deleted_blocks > 0
    }
}

impl std::ops::Add for MaintainStats {
    type Output = MaintainStats;
    fn add(self, o: MaintainStats) -> MaintainStats {
        MaintainStats {
            compacted_blocks: self.compacted_blocks + o.compacted_blocks,
            deleted_blocks: self.deleted_blocks + o.deleted_blocks,
        }
    }
}

/// Counters and sizes.
#[derive(Debug, Default, Clone)]
pub struct TsdbStats {
    /// Series known.
    pub series: u64,
    /// Samples in the head.
    pub head_samples: u64,
    /// Approximate bytes of the head.
    pub head_bytes: u64,
    /// Blocks on disk.
    pub blocks: u64,
    /// Bytes of blocks on disk.
    pub block_bytes: u64,
    /// Compactions run.
    pub compactions_total: u64,
    /// Blocks deleted by retention.
    pub retention_deleted_blocks_total: u64,
    /// Flushes, compactions or deletions of one tenant's data that failed (the other tenants'
    /// went ahead).
    pub tenant_errors_total: u64,
}

impl TsdbStats {
    /// Adds another shard's figures.
    pub fn merge(&mut self, o: &TsdbStats) {
        self.series += o.series;
        self.head_samples += o.head_samples;
        self.head_bytes += o.head_bytes;
        self.blocks += o.blocks;
        self.block_bytes += o.block_bytes;
        self.compactions_total += o.compactions_total;
        self.retention_deleted_blocks_total += o.retention_deleted_blocks_total;
        self.tenant_errors_total += o.tenant_errors_total;
    }
}

/// The live-series caps one [`SeriesLimiter`] enforces (`usize::MAX`: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesCaps {
    /// Most live series per metric name and tenant.
    pub per_metric: usize,
    /// Most live series per tenant.
    pub per_tenant: usize,
    /// Most live series in all.
    pub total: usize,
}

/// The cap a new series ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesLimit {
    /// [`SeriesCaps::per_metric`].
    PerMetric,
    /// [`SeriesCaps::per_tenant`].
    PerTenant,
    /// [`SeriesCaps::total`].
    Total,
}

/// Series refused by one cap, and their samples.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Series refused.
    pub series: usize,
    /// Their samples.
    pub samples: usize,
}

/// What each series cap refused in one append.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRefusals {
    /// By [`SeriesCaps::per_metric`].
    pub per_metric: Refused,
    /// By [`SeriesCaps::per_tenant`].
    pub per_tenant: Refused,
    /// By [`SeriesCaps::total`].
    pub total: Refused,
}

impl SeriesRefusals {
    /// The figures of `limit`.
    pub fn of(&mut self, limit: SeriesLimit) -> &mut Refused {
        match limit {
            SeriesLimit::PerMetric => &mut self.per_metric,
            SeriesLimit::PerTenant => &mut self.per_tenant,
            SeriesLimit::Total => &mut self.total,
        }
    }

    /// Adds another append's refusals.
    pub fn merge(&mut self, o: &SeriesRefusals) {
        for (a, b) in [
            (&mut self.per_metric, o.per_metric),
            (&mut self.per_tenant, o.per_tenant),
            (&mut self.total, o.total),
        ] {
            a.series += b.series;
            a.samples += b.samples;
        }
    }
}

/// Live series counted by the [`SeriesLimiter`].
#[derive(Default)]
struct LiveCounts {
    tenants: AHashMap<Tenant, TenantCounts>,
    total: usize,
}

/// One tenant's live series, in all and per metric name.
#[derive(Default)]
struct TenantCounts {
    total: usize,
    metrics: AHashMap<Box<[u8]>, usize>,
}

/// The cardinality limits, shared by all shards: counts the series living in the heads (a
/// series leaving its head is released), per metric and tenant, per tenant and in all. Locked
/// only when a series enters or leaves a head.
pub struct SeriesLimiter {
    caps: SeriesCaps,
    live: Mutex<LiveCounts>,
}

impl SeriesLimiter {
    /// A limiter allowing `max_series_per_metric` live series per (tenant, metric), with no
    /// per-tenant or total cap.
    pub fn new(max_series_per_metric: usize) -> Arc<SeriesLimiter> {
        SeriesLimiter::with_caps(SeriesCaps {
            per_metric: max_series_per_metric,
            per_tenant: usize::MAX,
            total: usize::MAX,
        })
    }

    /// A limiter enforcing `caps`.
    pub fn with_caps(caps: SeriesCaps) -> Arc<SeriesLimiter> {
        Arc::new(SeriesLimiter {
            caps,
            live: Mutex::default(),
        })
    }

    /// The caps enforced.
    pub fn caps(&self) -> SeriesCaps {
        self.caps
    }

    /// Live series in all.
    pub fn live_total(&self) -> usize {
        self.live.lock().total
    }

    /// Live series of `tenant`.
    pub fn live_in_tenant(&self, tenant: &Tenant) -> usize {
        self.live.lock().tenants.get(tenant).map_or(0, |t| t.total)
    }

    /// Live series of `tenant`'s metric `name`.
    pub fn live_in_metric(&self, tenant: &Tenant, name: &str) -> usize {
        let live = self.live.lock();
        let counts = live.tenants.get(tenant);
        counts
            .and_then(|t| t.metrics.get(name.as_bytes()).copied())
            .unwrap_or(0)
    }

    /// Counts a new live series with `key`; when `enforce`, refuses it (counting nothing) if a
    /// cap is reached, naming the cap.
    fn admit(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        enforce: bool,
    ) -> Result<(), SeriesLimit> {
        let metric = key.get(METRIC_NAME.as_bytes()).unwrap_or_default();
        let mut guard = self.live.lock();
        let live = &mut *guard;
        let counts = live.tenants.get(tenant);
        if enforce {
            // The most specific cap is named first.
            let in_metric = counts.and_then(|t| t.metrics.get(metric).copied());
            if in_metric.unwrap_or(0) >= self.caps.per_metric {
                return Err(SeriesLimit::PerMetric);
            }
            if counts.map_or(0, |t| t.total) >= self.caps.per_tenant {
                return Err(SeriesLimit::PerTenant);
            }
            if live.total >= self.caps.total {
                return Err(SeriesLimit::Total);
            }
        }
        // Allocating only for a tenant or metric seen for the first time.
        let counts = match live.tenants.get_mut(tenant) {
            Some(t) => t,
            None => live.tenants.entry(tenant.clone()).or_default(),
        };
        match counts.metrics.get_mut(metric) {
            Some(n) => *n += 1,
            None => {
                counts.metrics.insert(metric.into(), 1);
            }
        }
        counts.total += 1;
        live.total += 1;
        Ok(())
    }

    /// Releases series of `tenant` that left the head, by key, under one lock.
    fn release<'a>(&self, tenant: &Tenant, keys: impl IntoIterator<Item = SeriesKeyRef<'a>>) {
        let mut guard = self.live.lock();
        let live = &mut *guard;
        let Some(counts) = live.tenants.get_mut(tenant) else {
            return;
        };
        for key in keys {
            let metric = key.get(METRIC_NAME.as_bytes()).unwrap_or_default();
            if let Some(n) = counts.metrics.get_mut(metric) {
                *n -= 1;
                if *n == 0 {
                    counts.metrics.remove(metric);
                }
            }
            // Every series in a head was admitted: these cannot go below zero.
            counts.total = counts.total.saturating_sub(1);
            live.total = live.total.saturating_sub(1);
        }
        if counts.total == 0 {
            live.tenants.remove(tenant);
        }
    }
}

struct Inner {
    heads: AHashMap<Tenant, TenantHead>,
    /// Per tenant, blocks in ascending sequence.
    blocks: AHashMap<Tenant, Vec<Arc<dyn BlockReader>>>,
    next_seq: u64,
    /// Blocks from this sequence on were written by the latest flush: their compaction
    /// windows are still being written.
    fresh_from: u64,
    applied: Option<u64>,
    checkpoint: Option<u64>,
}

/// The samples a flush took from one tenant's head: series number, key, samples.
type TakenTenant = (Tenant, Vec<TakenSeries>);

/// One series a flush took: its number in the head, its key, its samples.
type TakenSeries = (u32, SeriesKey, Arc<head::Frozen>);

/// A series of one tenant's head, for [`Tsdb::append_handles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesHandle(u32);

/// How [`Tsdb::release_handles`] renumbered a tenant's handles.
#[derive(Debug, Clone)]
pub struct Renumbering(Option<Vec<u32>>);

impl Renumbering {
    /// The new handle of the series `old` named, `None` when it left the head.
    pub fn get(&self, old: SeriesHandle) -> Option<SeriesHandle> {
        match &self.0 {
            None => Some(old),
            Some(m) => m
                .get(old.0 as usize)
                .copied()
                .filter(|&r| r != u32::MAX)
                .map(SeriesHandle),
        }
    }
}

/// One shard's storage. Appends come from the shard's thread; reads from any thread.
pub struct Tsdb {
    dir: PathBuf,
    opts: TsdbOptions,
    limiter: Arc<SeriesLimiter>,
    inner: RwLock<Inner>,
    /// Held by a flush: its series numbers must not move until it is done.
    flushing: Mutex<()>,
    /// Held by a maintenance: two would merge the same blocks.
    maintaining: Mutex<()>,
    compactions: AtomicU64,
    deleted: AtomicU64,
    tenant_errors: AtomicU64,
    /// Takes expiring blocks' samples before they are deleted, when set.
    archive: std::sync::OnceLock<Arc<dyn ExpiryArchive>>,
}

const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_MAGIC: &[u8; 8] = b"STRCKPT\x01";

impl Tsdb {
    /// Opens the storage in `dir`: moves tenant directories of the old layout into place, loads
    /// and verifies every block, removes leftovers of interrupted writes, reads the checkpoint.
    pub fn open(
        dir: &Path,
        opts: TsdbOptions,
        limiter: Arc<SeriesLimiter>,
    ) -> Result<Tsdb, TsdbError> {
        std::fs::create_dir_all(dir).map_err(TsdbError::io(dir))?;
        // Before the checkpoint is read: in the old layout a tenant could own `checkpoint`.
        layout::migrate(dir)?;
        let checkpoint = read_checkpoint(&dir.join(CHECKPOINT))?;
        let mut inner = Inner {
            heads: AHashMap::new(),
            blocks: AHashMap::new(),
            next_seq: 1,
            fresh_from: u64::MAX,
            applied: checkpoint,
            checkpoint,
        };
        let root = dir.join(layout::TENANTS_DIR);
        for entry in std::fs::read_dir(&root).map_err(TsdbError::io(&root))? {
            let entry = entry.map_err(TsdbError::io(&root))?;
            let tdir = entry.path();
            let tenant = entry.file_name().to_str().and_then(layout::tenant_of);
            let is_dir = entry.file_type().map_err(TsdbError::io(&tdir))?.is_dir();
            let Some(tenant) = tenant.filter(|_| is_dir) else {
                tracing::warn!(path = %tdir.display(), "ignoring what is not a tenant directory");
                continue;
            };
            let mut blocks = Vec::new();
            // Listed first: opening an old block rewrites it in this directory.
            let files = std::fs::read_dir(&tdir)
                .and_then(|d| {
                    d.map(|f| f.map(|f| f.path()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(TsdbError::io(&tdir))?;
            for p in files {
                match p.extension().and_then(|e| e.to_str()) {
                    Some("tmp") => {
                        tracing::warn!(path = %p.display(), "removing a block left half-written by a crash");
                        std::fs::remove_file(&p).map_err(TsdbError::io(&p))?;
                    }
                    Some("blk") => {
                        let b: Arc<dyn BlockReader> = Arc::new(Block::open(&p)?);
                        blocks.push(b);
                    }
                    _ => {}
                }
            }
            blocks.sort_by_key(|b| b.info().seq);
            // Series only in blocks stay out of the head (and the limiter) until written again.
            for b in &blocks {
                inner.next_seq = inner.next_seq.max(b.info().seq + 1);
            }
            inner.blocks.insert(tenant, blocks);
        }
        Ok(Tsdb {
            dir: dir.to_path_buf(),
            opts,
            limiter,
            inner: RwLock::new(inner),
            flushing: Mutex::new(()),
            maintaining: Mutex::new(()),
            compactions: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            tenant_errors: AtomicU64::new(0),
            archive: std::sync::OnceLock::new(),
        })
    }

    /// Makes retention hand each expiring block to `archive` before deleting it (see
    /// [`ExpiryArchive`]). Set once, before the first maintenance; a second call is ignored.
    pub fn set_expiry_archive(&self, archive: Arc<dyn ExpiryArchive>) {
        let _ = self.archive.set(archive);
    }

    /// Adds a block kept elsewhere (any [`BlockReader`]) to `tenant`'s blocks: reads see it
    /// beside the engine's own, ordered by its sequence (so on equal timestamps the higher
    /// sequence wins, and the head beats it); retention removes it and compaction merges it into
    /// a block of the data directory like any other. Blocks written later are numbered after
    /// it. Attached blocks are not remembered across a reopen: whoever keeps them attaches
    /// them again.
    pub fn attach_block(&self, tenant: &Tenant, block: Arc<dyn BlockReader>) {
        let mut inner = self.inner.write();
        inner.next_seq = inner.next_seq.max(block.info().seq.saturating_add(1));
        let v = inner.blocks.entry(tenant.clone()).or_default();
        let at = v.partition_point(|b| b.info().seq <= block.info().seq);
        v.insert(at, block);
    }

    /// Appends every series of `batch`; `log_offset` is the ingest-log record it came from.
    pub fn append(&self, batch: &WriteBatch, log_offset: u64) -> AppendStats {
        self.append_observed(batch, log_offset, |_, _, _| {})
    }

    /// Takes the write lock for an append of log record `log_offset` (recorded as applied);
    /// also returns the oldest timestamp the retention still accepts.
    fn begin_write(&self, log_offset: u64) -> (RwLockWriteGuard<'_, Inner>, i64) {
        let oldest = strata_model::time::now_ms().saturating_sub(self.opts.retention_ms);
        let mut inner = self.inner.write();
        inner.applied = Some(inner.applied.map_or(log_offset, |a| a.max(log_offset)));
        (inner, oldest)
    }

    /// As [`Tsdb::append`], handing `changed(series, samples, slot)` the samples of each series
    /// that changed what storage holds: new values and overwrites, in batch order (exact repeats
    /// and refused samples left out), and the series' [`ObserverSlot`], which the head keeps for
    /// the observer. One observer per `Tsdb`: the slot is not shared.
    pub fn append_observed(
        &self,
        batch: &WriteBatch,
        log_offset: u64,
        mut changed: impl FnMut(&BatchSeries<'_>, &[Sample], &mut ObserverSlot),
    ) -> AppendStats {
        let mut st = AppendStats::default();
        let (mut inner, oldest) = self.begin_write(log_offset);
        let Inner { heads, blocks, .. } = &mut *inner;
        let tenant = batch.tenant();
        let head = match heads.get_mut(tenant) {
            Some(h) => h,
            None => heads
                .entry(tenant.clone())
                .or_insert_with(|| TenantHead::new(tenant)),
        };
        let tblocks = blocks.get(tenant).map(|v| v.as_slice()).unwrap_or(&[]);
        let mut stored = Vec::new();
        for s in batch.iter() {
            let r = match head.get(s.id, s.key) {
                Some(r) => r,
                None => {
                    // Nothing to keep: no series to make (it would hold a place until flush).
                    if s.samples.iter().all(|x| x.timestamp < oldest) {
                        st.too_old += s.samples.len();
                        continue;
                    }
                    if let Err(limit) = self.limiter.admit(tenant, s.key, true) {
                        st.rejected_series_limit += s.samples.len();
                        let r = st.refused.of(limit);
                        r.series += 1;
                        r.samples += s.samples.len();
                        continue;
                    }
                    st.new_series += 1;
                    let since = s.samples.iter().map(|x| x.timestamp).min();
                    create(head, tblocks, s.id, s.key, since.unwrap_or(i64::MAX))
                }
            };
            let series = &mut head.series[r as usize];
            stored.clear();
            for x in s.samples {
                if st.put(series, *x, oldest, tblocks, s.key) {
                    stored.push(*x);
                }
            }
            if !stored.is_empty() {
                changed(&s, &stored, &mut series.observer);
            }
        }
        st
    }

    /// The handle of `tenant`'s series with `key`, creating the series when new (without the
    /// series limit: for derived series, whose raw series were admitted already), so a writer
    /// of many series can skip key lookups. Handles are series numbers: a flush lets none of a
    /// tenant's series go once it handed out handles, and they stay valid until their holder
    /// gives some back by [`Tsdb::release_handles`], which renumbers the rest.
    pub fn series_handle(&self, tenant: &Tenant, key: SeriesKeyRef<'_>) -> SeriesHandle {
        let id = strata_model::SeriesId::of(tenant, key);
        let mut inner = self.inner.write();
        let head = inner
            .heads
            .entry(tenant.clone())
            .or_insert_with(|| TenantHead::new(tenant));
        head.handles = true;
        let r = match head.get(id, key) {
            Some(r) => r,
            None => {
                // Unenforced: it cannot fail.
                let _ = self.limiter.admit(tenant, key, false);
                let r = head.create(id, key.to_owned());
                // What blocks hold is not looked up here (a writer of runs, the usual user of
                // handles, needs none of it, and searching every block per series would slow
                // its start): unknown, so each single sample appended asks the blocks.
                head.series[r as usize].persisted_max_t = i64::MAX;
                r
            }
        };
        SeriesHandle(r)
    }

    /// Lets the series of `tenant` behind `gone` leave the head and the limiter's counts (their
    /// samples are in blocks: call it after a flush; a series still holding head samples
    /// stays). Every handle of the tenant changes: the answer maps each old handle to its new
    /// one, `None` for a series that left.
    pub fn release_handles(&self, tenant: &Tenant, gone: &[SeriesHandle]) -> Renumbering {
        // A flush's series numbers must not move under it.
        let _no_flush = self.flushing.lock();
        let mut inner = self.inner.write();
        let Some(head) = inner.heads.get_mut(tenant) else {
            return Renumbering(None);
        };
        let mut keep = vec![true; head.series.len()];
        for &SeriesHandle(r) in gone {
            if let Some(k) = keep.get_mut(r as usize) {
                *k = head.series[r as usize].has_samples();
            }
        }
        if !keep.contains(&false) {
            return Renumbering(None);
        }
        let left = keep.iter().enumerate().filter(|(_, k)| !**k);
        self.limiter
            .release(tenant, left.map(|(r, _)| head.index.key(r as u32)));
        let remap = head.retain(&keep);
        if head.series.is_empty() {
            inner.heads.remove(tenant);
        }
        Renumbering(Some(remap))
    }

    /// Appends samples to series by handle (see [`Tsdb::series_handle`]), as one write: readers
    /// see all or none of them. Exact repeats are dropped, other values at a stored timestamp
    /// replace it, samples older than the retention are refused, as in [`Tsdb::append`].
    pub fn append_handles(
        &self,
        tenant: &Tenant,
        samples: &[(SeriesHandle, Sample)],
        log_offset: u64,
    ) -> AppendStats {
        let mut st = AppendStats::default();
        let (mut inner, oldest) = self.begin_write(log_offset);
        let Inner { heads, blocks, .. } = &mut *inner;
        let Some(head) = heads.get_mut(tenant) else {
            return st;
        };
        let tblocks = blocks.get(tenant).map(|v| v.as_slice()).unwrap_or(&[]);
        for &(SeriesHandle(r), x) in samples {
            st.put(
                &mut head.series[r as usize],
                x,
                oldest,
                tblocks,
                head.index.key(r),
            );
        }
        st
    }

    /// Appends runs of samples to series by handle, as one write: each run sorted by timestamp,
    /// one sample per timestamp, kept as one head chunk (see [`Tsdb::append_handles`] for
    /// single samples). Later writes win over earlier ones; samples older than the retention
    /// are refused. Returns the samples stored.
    pub fn append_runs(
        &self,
        tenant: &Tenant,
        runs: &[(SeriesHandle, &[Sample])],
        log_offset: u64,
    ) -> usize {
        let (mut inner, oldest) = self.begin_write(log_offset);
        let Some(head) = inner.heads.get_mut(tenant) else {
            return 0;
        };
        let mut stored = 0;
        for &(SeriesHandle(r), run) in runs {
            let keep = run.partition_point(|s| s.timestamp < oldest);
            head.series[r as usize].append_run(&run[keep..]);
            stored += run.len() - keep;
        }
        stored
    }

    /// Persists the whole head into blocks (one per tenant and block window), records the
    /// checkpoint and empties the head. Series that received no samples since the previous
    /// flush and whose newest sample is older than [`HEAD_LOOKBACK_MS`] leave the head and the
    /// limiter's counts. Returns the log offset now covered by blocks.
    ///
    /// The head's samples are taken under the write lock, then encoded and written with no
    /// lock held, so appends and reads go on meanwhile (they see the samples being written as
    /// head samples); the blocks replace them under the write lock again.
    ///
    /// A tenant whose blocks cannot be written keeps its head (logged and counted) while the
    /// others are flushed; the checkpoint then stays where it was, since the log still holds
    /// the only durable copy of that tenant's samples, and the first such failure is returned.
    pub fn flush(&self) -> Result<Option<u64>, TsdbError> {
        let _one_at_a_time = self.flushing.lock();
        let now = strata_model::time::now_ms();
        // 1. Take the samples, and the log offset they cover.
        let (taken, covered, first_seq) = {
            let mut inner = self.inner.write();
            let Inner { heads, applied, .. } = &mut *inner;
            let mut taken: Vec<TakenTenant> = Vec::new();
            for (tenant, head) in heads.iter_mut() {
                let mut series = Vec::new();
                for (r, s) in head.series.iter_mut().enumerate() {
                    if let Some(f) = s.freeze() {
                        series.push((r as u32, head.index.key(r as u32).to_owned(), f));
                    }
                }
                taken.push((tenant.clone(), series));
            }
            (taken, *applied, inner.next_seq)
        };
        // 2. Write them, unlocked, each tenant on its own.
        let mut written: Vec<(Tenant, Block)> = Vec::new();
        let mut seq = first_seq;
        let mut failed: Vec<Tenant> = Vec::new();
        let mut first_error = None;
        for (tenant, series) in &taken {
            if let Err(e) = self.write_taken(tenant, series, &mut seq, &mut written) {
                let e = self.tenant_failed(tenant, "flush", e);
                first_error.get_or_insert(e);
                failed.push(tenant.clone());
            }
        }
        // 3. Put the blocks in their place.
        let mut inner = self.inner.write();
        let Inner {
            heads,
            blocks,
            next_seq,
            fresh_from,
            checkpoint,
            ..
        } = &mut *inner;
        *next_seq = (*next_seq).max(seq);
        *fresh_from = first_seq;
        // Blocks written before a failure hold their samples too (whole, fsynced): keep them.
        // The next flush writes the same samples again, with a higher sequence, which changes
        // no answer.
        for (tenant, b) in written {
            blocks.entry(tenant).or_default().push(Arc::new(b));
        }
        let cutoff = now.saturating_sub(HEAD_LOOKBACK_MS);
        for (tenant, series) in &taken {
            let Some(head) = heads.get_mut(tenant) else {
                continue;
            };
            let ok = !failed.contains(tenant);
            let mut flushed = vec![false; head.series.len()];
            for (r, _, _) in series {
                let s = &mut head.series[*r as usize];
                if ok {
                    s.persisted();
                } else {
                    s.thaw();
                }
                flushed[*r as usize] = true;
            }
            if !ok {
                continue;
            }
            // Series without samples since the last flush are all in blocks: those also
            // outside the lookback leave the head.
            let keep: Vec<bool> = head
                .series
                .iter()
                .zip(&flushed)
                .map(|(s, &f)| head.handles || f || s.has_samples() || s.persisted_max_t >= cutoff)
                .collect();
            if keep.contains(&false) {
                let gone = keep.iter().enumerate().filter(|(_, k)| !**k);
                self.limiter
                    .release(tenant, gone.map(|(r, _)| head.index.key(r as u32)));
                head.retain(&keep);
            }
        }
        heads.retain(|_, h| h.handles || !h.series.is_empty());
        if let Some(e) = first_error {
            return Err(e);
        }
        if covered != *checkpoint {
            if let Some(off) = covered {
                write_checkpoint(&self.dir, off)?;
            }
            *checkpoint = covered;
        }
        Ok(*checkpoint)
    }

    /// Writes the samples a flush took from one tenant into blocks, one per block window,
    /// numbered from `seq` on (advanced past the last one written); the blocks written go to
    /// `written`.
    fn write_taken(
        &self,
        tenant: &Tenant,
        series: &[TakenSeries],
        seq: &mut u64,
        written: &mut Vec<(Tenant, Block)>,
    ) -> Result<(), TsdbError> {
        let width = self.opts.block_duration_ms.max(1);
        let mut buf = Vec::new();
        // Which series have samples in which block window; then one window at a time, so a
        // flush holds one block's encoded series, not the whole head's.
        let mut windows: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, (_, _, f)) in series.iter().enumerate() {
            let (min_t, max_t) = f.range();
            // Within one window (the usual case), the range says so without decoding.
            if min_t.div_euclid(width) == max_t.div_euclid(width) {
                windows.entry(min_t.div_euclid(width)).or_default().push(i);
                continue;
            }
            buf.clear();
            f.read(i64::MIN, i64::MAX, &mut buf);
            for part in
                buf.chunk_by(|a, b| a.timestamp.div_euclid(width) == b.timestamp.div_euclid(width))
            {
                let w = part[0].timestamp.div_euclid(width);
                windows.entry(w).or_default().push(i);
            }
        }
        if windows.is_empty() {
            return Ok(());
        }
        let tdir = layout::tenant_dir(&self.dir, tenant);
        layout::ensure_dir(&tdir)?;
        for (w, mut members) in windows {
            let (start, end) = (
                w.saturating_mul(width),
                w.saturating_mul(width).saturating_add(width - 1),
            );
            // In label order, so the block's chunks lie as its index numbers them (a query
            // reads neighbouring chunks) and the index needs no sort.
            members.sort_unstable_by(|&a, &b| {
                series[a].1.as_ref().cmp_as_labels(&series[b].1.as_ref())
            });
            let mut block = BlockWriter::create(&tdir, *seq)?;
            for i in members {
                let (_, key, f) = &series[i];
                buf.clear();
                f.read(start, end, &mut buf);
                block.push(key.as_ref(), &buf)?;
            }
            written.push((tenant.clone(), block.finish()?));
            *seq += 1;
        }
        Ok(())
    }

    /// Logs and counts a failure scoped to one tenant's data.
    fn tenant_failed(&self, tenant: &Tenant, what: &'static str, e: TsdbError) -> TsdbError {
        self.tenant_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(tenant = %tenant, dir = %self.dir.display(), "{what} failed: {e}");
        TsdbError::Tenant {
            tenant: tenant.clone(),
            what,
            source: Box::new(e),
        }
    }

    /// The log offset whose data is all in blocks (read from disk at open).
    pub fn checkpoint_offset(&self) -> Option<u64> {
        self.inner.read().checkpoint
    }

    /// Deletes blocks older than the retention and merges blocks sharing a compaction window:
    /// as soon as it holds two blocks when the latest flush wrote none of them (or none was
    /// written since opening), from [`COMPACT_OPEN_BLOCKS`] on while the latest flush added to
    /// it, so that frequent flushes do not rewrite a window being written each time.
    ///
    /// Each tenant's work stands alone: a failure is logged and counted, the other tenants'
    /// blocks are still merged and deleted, and the first failure is returned at the end.
    ///
    /// Appends, reads and flushes go on meanwhile (it locks only to plan and to swap blocks);
    /// while another maintenance runs it returns at once, doing nothing.
    pub fn maintain(&self, now_ms: i64) -> Result<MaintainStats, TsdbError> {
        match self.maintaining.try_lock() {
            Some(_one_at_a_time) => self.maintain_locked(now_ms),
            None => Ok(MaintainStats::default()),
        }
    }

    /// As [`Tsdb::maintain`], but waits for a maintenance already running to finish first,
    /// then runs: for an explicit flush, which returns with the blocks compacted.
    pub fn maintain_now(&self, now_ms: i64) -> Result<MaintainStats, TsdbError> {
        let _one_at_a_time = self.maintaining.lock();
        self.maintain_locked(now_ms)
    }

    /// The work of [`Tsdb::maintain`], with the maintenance lock held.
    fn maintain_locked(&self, now_ms: i64) -> Result<MaintainStats, TsdbError> {
        let mut st = MaintainStats::default();
        let cutoff = now_ms.saturating_sub(self.opts.retention_ms);
        let window = self.opts.block_duration_ms.max(1) * COMPACT_FACTOR;
        // Plan under the read lock; merging reads blocks without blocking queries.
        let (expired, groups) = {
            let inner = self.inner.read();
            let fresh_from = inner.fresh_from;
            let mut expired = Vec::new();
            let mut groups = Vec::new();
            for (tenant, bs) in &inner.blocks {
                let mut by_window: BTreeMap<i64, Vec<Arc<dyn BlockReader>>> = BTreeMap::new();
                for b in bs {
                    let i = b.info();
                    if i.max_t < cutoff {
                        expired.push((tenant.clone(), b.clone()));
                    } else if i.min_t.div_euclid(window) == i.max_t.div_euclid(window) {
                        by_window
                            .entry(i.min_t.div_euclid(window))
                            .or_default()
                            .push(b.clone());
                    }
                }
                groups.extend(
                    by_window
                        .into_values()
                        .filter(|g| {
                            let open = g.iter().any(|b| b.info().seq >= fresh_from);
                            g.len() >= if open { COMPACT_OPEN_BLOCKS } else { 2 }
                        })
                        .map(|g| (tenant.clone(), g)),
                );
            }
            (expired, groups)
        };
        let mut failed = None;
        // Archived before the write lock: readers and writers go on meanwhile.
        let expired: Vec<_> = match self.archive.get() {
            None => expired,
            Some(a) => expired
                .into_iter()
                .filter(|(tenant, b)| match archive_block(&**a, tenant, &**b) {
                    Ok(()) => true,
                    Err(e) => {
                        failed.get_or_insert(self.tenant_failed(tenant, "archive", e));
                        false
                    }
                })
                .collect(),
        };
        let mut merged = Vec::new();
        for (tenant, group) in groups {
            // Same sequence as the newest input: nothing outside the window overlaps it.
            let seq = group.iter().map(|b| b.info().seq).max().unwrap_or(0);
            let tdir = layout::tenant_dir(&self.dir, &tenant);
            match merge_blocks(&tdir, seq, &group) {
                Ok(b) => merged.push((tenant, group, Arc::new(b) as Arc<dyn BlockReader>)),
                Err(e) => {
                    failed.get_or_insert(self.tenant_failed(&tenant, "compaction", e));
                }
            }
        }
        let mut inner = self.inner.write();
        for (tenant, b) in expired {
            match b.remove() {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    // Kept, so the next maintenance tries again.
                    let e = TsdbError::io(b.location())(e);
                    failed.get_or_insert(self.tenant_failed(&tenant, "retention", e));
                    continue;
                }
                _ => {}
            }
            if let Some(v) = inner.blocks.get_mut(&tenant) {
                v.retain(|x| !Arc::ptr_eq(x, &b));
            }
            st.deleted_blocks += 1;
        }
        for (tenant, group, new) in merged {
            for g in &group {
                // The new block has the newest input's name only if min/max match; remove the
                // rest. One left behind holds only what the new block holds, at a sequence
                // below or equal to it, so it changes no answer when it is loaded again.
                if g.location() != new.location() {
                    if let Err(e) = g.remove() {
                        let e = TsdbError::io(g.location())(e);
                        failed.get_or_insert(self.tenant_failed(&tenant, "compaction", e));
                    }
                }
            }
            let v = inner.blocks.entry(tenant).or_default();
            v.retain(|x| !group.iter().any(|g| Arc::ptr_eq(g, x)));
            v.push(new);
            v.sort_by_key(|b| b.info().seq);
            st.compacted_blocks += group.len();
        }
        drop(inner);
        self.compactions
            .fetch_add(st.compacted_blocks as u64, Ordering::Relaxed);
        self.deleted
            .fetch_add(st.deleted_blocks as u64, Ordering::Relaxed);
        match failed {
            Some(e) => Err(e),
            None => Ok(st),
        }
    }

    /// The samples of one series in `[start, end]`, sorted, one per timestamp.
    pub fn read_series(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        start: i64,
        end: i64,
    ) -> Result<Vec<Sample>, StorageError> {
        let inner = self.inner.read();
        let mut out = Vec::new();
        if let Some(bs) = inner.blocks.get(tenant) {
            for b in bs.iter().filter(|b| b.info().overlaps(start, end)) {
                if let Some(m) = b.find(key).map_err(storage_error)? {
                    if m.max_t >= start && m.min_t <= end {
                        b.read(&m, key, &mut out).map_err(storage_error)?;
                    }
                }
            }
        }
        if let Some(h) = inner.heads.get(tenant) {
            if let Some(r) = h.get(strata_model::SeriesId::of(tenant, key), key) {
                h.series[r as usize].read(start, end, &mut out);
            }
        }
        drop(inner);
        sort_last_wins(&mut out);
        out.retain(|s| s.timestamp >= start && s.timestamp <= end);
        Ok(out)
    }

    /// Tenants with data (in the head or in blocks).
    pub fn tenants(&self) -> Vec<Tenant> {
        let inner = self.inner.read();
        let mut t: Vec<Tenant> = inner
            .heads
            .keys()
            .chain(inner.blocks.keys())
            .cloned()
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// How long samples are kept, ms.
    pub fn retention_ms(&self) -> i64 {
        self.opts.retention_ms
    }

    /// The earliest timestamp `tenant` has data at, in blocks or the head (walks the head's
    /// series: for stores of modest size, such as the rollup tiers').
    pub fn min_time(&self, tenant: &Tenant) -> Option<i64> {
        let inner = self.inner.read();
        let blocks = inner
            .blocks
            .get(tenant)
            .into_iter()
            .flatten()
            .map(|b| b.info().min_t);
        let head = inner
            .heads
            .get(tenant)
            .into_iter()
            .flat_map(|h| h.series.iter().filter_map(|s| s.range().map(|r| r.0)));
        blocks.chain(head).min()
    }

    /// Sizes and counters.
    pub fn stats(&self) -> TsdbStats {
        let inner = self.inner.read();
        let mut st = TsdbStats {
            compactions_total: self.compactions.load(Ordering::Relaxed),
            retention_deleted_blocks_total: self.deleted.load(Ordering::Relaxed),
            tenant_errors_total: self.tenant_errors.load(Ordering::Relaxed),
            ..TsdbStats::default()
        };
        for h in inner.heads.values() {
            st.series += h.series.len() as u64;
            for s in &h.series {
                st.head_samples += s.samples() as u64;
                st.head_bytes += s.bytes() as u64;
            }
        }
        for bs in inner.blocks.values() {
            st.blocks += bs.len() as u64;
            st.block_bytes += bs.iter().map(|b| b.info().bytes).sum::<u64>();
        }
        st
    }

    /// The series of `tenant` matching `matchers` (not all matching the empty string) with
    /// data in `[start, end]`, sorted by key, ready for [`read_all`] to decode.
    pub fn plan(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesRead>, StorageError> {
        if matchers.iter().all(|m| m.matches_empty()) {
            return Err(StorageError::EmptyMatch);
        }
        self.find(tenant, matchers, start, end)
    }

    /// Every series of `tenant` matching `matchers` with data overlapping the range, sorted by
    /// key, with its head samples in the range.
    fn find(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesRead>, StorageError> {
        let inner = self.inner.read();
        let scope = ReadScope::new(&inner, tenant, start, end);
        // Each block's matches come in label order (its series are numbered so), the head's are
        // sorted: merged, they give each series once, its blocks in ascending sequence.
        let mut runs: Vec<BlockMatches<'_>> = Vec::with_capacity(scope.blocks.len());
        let mut key = Vec::new();
        for b in &scope.blocks {
            let mut run = BlockMatches {
                block: b,
                keys: Vec::new(),
                ends: Vec::new(),
                metas: Vec::new(),
            };
            scope.each_block_match(&***b, matchers, &mut key, &mut |k, m| {
                run.keys.extend_from_slice(k.as_bytes());
                run.ends.push(run.keys.len());
                run.metas.push(m);
            })?;
            runs.push(run);
        }
        let mut head = Vec::new();
        scope.each_head_match(matchers, |key, s| head.push((key, s)));
        head.sort_unstable_by(|(a, _), (b, _)| a.cmp_as_labels(b));
        // In label order (the blocks' order, and every read's); ties pop in source order:
        // blocks by sequence, the head last.
        let mut next: std::collections::BinaryHeap<
            std::cmp::Reverse<(LabelOrder<'_>, usize, usize)>,
        > = std::collections::BinaryHeap::new();
        let key_of = |src: usize, i: usize| -> Option<&[u8]> {
            match runs.get(src) {
                Some(r) => r.key(i),
                None => head.get(i).map(|(k, _)| k.as_bytes()),
            }
        };
        for src in 0..=runs.len() {
            if let Some(k) = key_of(src, 0) {
                next.push(std::cmp::Reverse((LabelOrder(k), src, 0)));
            }
        }
        let mut found: Vec<SeriesRead> = Vec::new();
        while let Some(std::cmp::Reverse((LabelOrder(k), src, i))) = next.pop() {
            if found.last().is_none_or(|r| r.key.as_bytes() != k) {
                found.push(SeriesRead::new(SeriesKeyRef::new_unchecked(k).to_owned()));
            }
            let r = found.last_mut().expect("pushed above");
            match runs.get(src) {
                Some(run) => r.blocks.push((Arc::clone(run.block), run.metas[i])),
                None => head[i].1.read(start, end, &mut r.head),
            }
            if let Some(k) = key_of(src, i + 1) {
                next.push(std::cmp::Reverse((LabelOrder(k), src, i + 1)));
            }
        }
        Ok(found)
    }
}

/// Key bytes ordered as their label sets are (see [`SeriesKeyRef::cmp_as_labels`]).
#[derive(PartialEq, Eq)]
struct LabelOrder<'a>(&'a [u8]);

impl Ord for LabelOrder<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        block_index::label_order(self.0, other.0)
    }
}

impl PartialOrd for LabelOrder<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One block's series matching a read, in label order: their keys in one buffer.
struct BlockMatches<'a> {
    block: &'a Arc<dyn BlockReader>,
    keys: Vec<u8>,
    ends: Vec<usize>,
    metas: Vec<block::ChunkMeta>,
}

impl BlockMatches<'_> {
    fn key(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.keys[start..end])
    }
}

/// What one tenant's read sees under the storage's read lock: the head and the blocks
/// overlapping the range.
struct ReadScope<'a> {
    blocks: Vec<&'a Arc<dyn BlockReader>>,
    head: Option<&'a TenantHead>,
    start: i64,
    end: i64,
}

impl<'a> ReadScope<'a> {
    fn new(inner: &'a Inner, tenant: &Tenant, start: i64, end: i64) -> ReadScope<'a> {
        let blocks = match inner.blocks.get(tenant) {
            Some(bs) => bs
                .iter()
                .filter(|b| b.info().overlaps(start, end))
                .collect(),
            None => Vec::new(),
        };
        ReadScope {
            blocks,
            head: inner.heads.get(tenant),
            start,
            end,
        }
    }

    /// Calls `f` with the key of every series matching `matchers` with data in the range: once
    /// for each block and for the head holding it, so a series may come more than once. Holds
    /// nothing per series, so a metadata read keeps only what its limit lets it answer.
    fn each_match(
        &self,
        matchers: &[Matcher],
        mut f: impl FnMut(SeriesKeyRef<'_>),
    ) -> Result<(), StorageError> {
        let mut key = Vec::new();
        for b in &self.blocks {
            self.each_block_match(&***b, matchers, &mut key, &mut |k, _| f(k))?;
        }
        self.each_head_match(matchers, |key, _| f(key));
        Ok(())
    }

    /// Calls `f` with the key and chunk of every series of block `b` matching `matchers` with
    /// data in the range, in label order (`key` is the buffer keys are decoded into).
    fn each_block_match(
        &self,
        b: &dyn BlockReader,
        matchers: &[Matcher],
        key: &mut Vec<u8>,
        f: &mut dyn FnMut(SeriesKeyRef<'_>, block::ChunkMeta),
    ) -> Result<(), StorageError> {
        for id in b.select(matchers).map_err(storage_error)? {
            let m = b.entry(id, key).map_err(storage_error)?;
            if m.max_t >= self.start && m.min_t <= self.end {
                f(SeriesKeyRef::new_unchecked(key), m);
            }
        }
        Ok(())
    }

    /// Calls `f` with the label names or values (`of_key` picks them from a key, `of_block`
    /// from a block's tables) of every series matching `matchers` with data in the range. With
    /// no matchers, a block lying wholly inside the range answers from its tables, without
    /// visiting its series (as Grafana's variable queries ask, over every series).
    fn each_label(
        &self,
        matchers: &[Matcher],
        of_block: impl Fn(&dyn BlockReader, &mut dyn FnMut(&[u8])) -> Result<(), TsdbError>,
        of_key: impl Fn(SeriesKeyRef<'_>, &mut dyn FnMut(&[u8])),
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), StorageError> {
        let mut key = Vec::new();
        for b in &self.blocks {
            if matchers.is_empty() && self.start <= b.info().min_t && b.info().max_t <= self.end {
                of_block(&***b, &mut f).map_err(storage_error)?;
            } else {
                self.each_block_match(&***b, matchers, &mut key, &mut |k, _| of_key(k, &mut f))?;
            }
        }
        self.each_head_match(matchers, |key, _| of_key(key, &mut f));
        Ok(())
    }

    /// Calls `f` with every head series matching `matchers` with samples in the range.
    fn each_head_match<'s>(
        &'s self,
        matchers: &[Matcher],
        mut f: impl FnMut(SeriesKeyRef<'s>, &'s head::MemSeries),
    ) {
        let Some(h) = self.head else { return };
        for id in h.index.select(matchers) {
            let s = &h.series[id as usize];
            if let Some((lo, hi)) = s.range() {
                if hi >= self.start && lo <= self.end {
                    f(h.index.key(id), s);
                }
            }
        }
    }
}

/// Adds `key` to `head` (the caller checked it is new and admitted it). The series may return
/// after leaving the head: it learns the newest timestamp `blocks` hold of it, looking only in
/// blocks reaching `since` or later, where `since` is the oldest sample about to be appended.
/// Older blocks need not be searched: once the head holds a sample at `since`, every sample
/// at or before it is checked against the blocks anyway (see [`head::MemSeries::append`]).
fn create(
    head: &mut TenantHead,
    blocks: &[Arc<dyn BlockReader>],
    id: strata_model::SeriesId,
    key: SeriesKeyRef<'_>,
    since: i64,
) -> u32 {
    let r = head.create(id, key.to_owned());
    let mut persisted = i64::MIN;
    for b in blocks.iter().filter(|b| b.info().max_t >= since) {
        if b.info().max_t > persisted {
            match b.find(key) {
                Ok(Some(m)) => persisted = persisted.max(m.max_t),
                Ok(None) => {}
                // Unreadable: as if it had the series up to its end, so every sample it
                // might hold is checked against it (and finds nothing).
                Err(_) => persisted = b.info().max_t,
            }
        }
    }
    head.series[r as usize].persisted_max_t = persisted;
    r
}

fn storage_error(e: TsdbError) -> StorageError {
    StorageError::Io(e.to_string())
}

/// The value blocks hold for `key` at `t`, newest block first.
fn lookup_blocks(blocks: &[Arc<dyn BlockReader>], key: SeriesKeyRef<'_>, t: i64) -> Option<f64> {
    let mut buf = Vec::new();
    for b in blocks.iter().rev().filter(|b| b.info().overlaps(t, t)) {
        // A block that cannot be read answers nothing: reads report its damage.
        let Ok(Some(m)) = b.find(key) else { continue };
        if t < m.min_t || t > m.max_t {
            continue;
        }
        buf.clear();
        if b.read(&m, key, &mut buf).is_ok() {
            if let Ok(i) = buf.binary_search_by_key(&t, |s| s.timestamp) {
                return Some(buf[i].value);
            }
        }
    }
    None
}

/// Merges blocks' series into block `seq` in `dir`; where they overlap, the higher sequence
/// wins. Streams: walks the blocks' series in label order together (each block numbers its
/// series in label order), so memory holds one series' samples and the index being built, and
/// gives back the input pages read as it goes.
/// Hands every sample of block `b` (of `tenant`) to `archive`, in batches of about
/// [`ARCHIVE_BATCH_SAMPLES`].
fn archive_block(
    archive: &dyn ExpiryArchive,
    tenant: &Tenant,
    b: &dyn BlockReader,
) -> Result<(), TsdbError> {
    let send = |batch: &mut Vec<SeriesSamples>| {
        let r = archive.archive(tenant, batch);
        batch.clear();
        r.map_err(|reason| TsdbError::Archive {
            path: b.location().to_path_buf(),
            reason,
        })
    };
    let (mut key, mut batch, mut held) = (Vec::new(), Vec::new(), 0);
    for id in 0..b.len() as u32 {
        let m = b.entry(id, &mut key)?;
        let k = SeriesKeyRef::new_unchecked(&key);
        let mut samples = Vec::with_capacity(m.count as usize);
        b.read(&m, k, &mut samples)?;
        held += samples.len();
        batch.push(SeriesSamples {
            labels: k.labels(),
            samples,
        });
        if held >= ARCHIVE_BATCH_SAMPLES {
            send(&mut batch)?;
            held = 0;
        }
    }
    if !batch.is_empty() {
        send(&mut batch)?;
    }
    b.release_pages();
    Ok(())
}

fn merge_blocks(dir: &Path, seq: u64, group: &[Arc<dyn BlockReader>]) -> Result<Block, TsdbError> {
    /// Input bytes read between giving their pages back.
    const RELEASE_EVERY: u64 = 64 << 20;
    let mut ordered: Vec<&Arc<dyn BlockReader>> = group.iter().collect();
    ordered.sort_by_key(|b| b.info().seq);
    // Each block's next series and its key.
    let mut next: Vec<(u32, Vec<u8>, Option<block::ChunkMeta>)> =
        ordered.iter().map(|_| (0, Vec::new(), None)).collect();
    let advance = |b: &dyn BlockReader, c: &mut (u32, Vec<u8>, Option<block::ChunkMeta>)| {
        c.2 = None;
        if (c.0 as usize) < b.len() {
            c.2 = Some(b.entry(c.0, &mut c.1)?);
            c.0 += 1;
        }
        Ok::<(), TsdbError>(())
    };
    for (b, c) in ordered.iter().zip(&mut next) {
        advance(&***b, c)?;
    }
    let mut out = BlockWriter::create(dir, seq)?;
    let (mut buf, mut key, mut read) = (Vec::new(), Vec::new(), 0u64);
    while let Some(min) = next
        .iter()
        .filter(|c| c.2.is_some())
        .map(|c| LabelOrder(c.1.as_slice()))
        .min()
        .map(|k| k.0)
    {
        key.clear();
        key.extend_from_slice(min);
        buf.clear();
        // Ascending sequence: on equal timestamps the later block's sample comes last and wins.
        for (b, c) in ordered.iter().zip(&mut next) {
            if let Some(m) = c.2.filter(|_| c.1 == key) {
                b.read(&m, SeriesKeyRef::new_unchecked(&key), &mut buf)?;
                read += u64::from(m.encoded_len());
                advance(&***b, c)?;
            }
        }
        sort_last_wins(&mut buf);
        out.push(SeriesKeyRef::new_unchecked(&key), &buf)?;
        if read >= RELEASE_EVERY {
            ordered.iter().for_each(|b| b.release_pages());
            read = 0;
        }
    }
    ordered.iter().for_each(|b| b.release_pages());
    out.finish()
}

fn read_checkpoint(path: &Path) -> Result<Option<u64>, TsdbError> {
    match std::fs::read(path) {
        Ok(b) => {
            let ok = b.len() == 20
                && &b[..8] == CHECKPOINT_MAGIC
                && crc32fast::hash(&b[..16]).to_le_bytes() == b[16..20];
            if !ok {
                return Err(TsdbError::Corrupt {
                    path: path.into(),
                    reason: "checkpoint damaged".into(),
                });
            }
            Ok(Some(u64::from_le_bytes(
                b[8..16].try_into().expect("8 bytes"),
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TsdbError::Io {
            path: path.into(),
            source: e,
        }),
    }
}

fn write_checkpoint(dir: &Path, offset: u64) -> Result<(), TsdbError> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(CHECKPOINT_MAGIC);
    b.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = dir.join(CHECKPOINT);
    let tmp = dir.join("checkpoint.tmp");
    std::fs::write(&tmp, &b).map_err(TsdbError::io(&tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(TsdbError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(TsdbError::io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TsdbError::io(dir))
}

impl Storage for Tsdb {
    fn select(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSamples>, StorageError> {
        read_all(self.plan(tenant, matchers, hints.start, hints.end)?, hints)
    }

    fn select_lazy(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<LazySeries>, StorageError> {
        let reads = self.plan(tenant, matchers, hints.start, hints.end)?;
        Ok(lazy(reads, hints))
    }

    fn series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<Labels>, StorageError> {
        let inner = self.inner.read();
        let scope = ReadScope::new(&inner, tenant, range.start, range.end);
        let mut first = FirstSorted::new(range.limit);
        scope.each_match(matchers, |key| first.offer(ByLabels(key.to_owned())))?;
        Ok(first.into_sorted().iter().map(|k| k.0.labels()).collect())
    }

    fn label_names(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<String>, StorageError> {
        let inner = self.inner.read();
        let scope = ReadScope::new(&inner, tenant, range.start, range.end);
        let mut names = FirstSorted::<Vec<u8>>::new(range.limit);
        scope.each_label(
            matchers,
            |b, f| b.label_names(f),
            |key, f| key.pairs().for_each(|(n, _)| f(n)),
            |n| names.offer_with(n, <[u8]>::to_vec),
        )?;
        Ok(lossy_strings(names))
    }

    fn label_values(
        &self,
        tenant: &Tenant,
        name: &str,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<String>, StorageError> {
        let inner = self.inner.read();
        let scope = ReadScope::new(&inner, tenant, range.start, range.end);
        let mut values = FirstSorted::<Vec<u8>>::new(range.limit);
        let name = name.as_bytes();
        scope.each_label(
            matchers,
            |b, f| b.label_values(name, f),
            |key, f| key.get(name).into_iter().for_each(f),
            |v| values.offer_with(v, <[u8]>::to_vec),
        )?;
        Ok(lossy_strings(values))
    }
}

/// Label names or values as text, in the order kept (UTF-8 bytes sort as their text does).
fn lossy_strings(kept: FirstSorted<Vec<u8>>) -> Vec<String> {
    kept.into_sorted()
        .into_iter()
        .map(|b| {
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        })
        .collect()
}
