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
//!
//! This crate does no networking and knows nothing of the ingest log beyond offsets it is told.

mod block;
pub mod codec;
mod head;
mod index;
pub mod layout;
mod read;

use ahash::AHashMap;
use block::{Block, EncodedSeries};
pub use head::ObserverSlot;
use head::{Appended, TenantHead};
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
pub use read::{lazy, read_all, SeriesRead};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{
    sort_last_wins, BatchSeries, Labels, LazySeries, Matcher, Sample, SelectHints, SeriesKey,
    SeriesKeyRef, SeriesSamples, Storage, StorageError, Tenant, WriteBatch, METRIC_NAME,
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
}

impl TsdbError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TsdbError {
        let path = path.to_path_buf();
        move |source| TsdbError::Io { path, source }
    }
}

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
    /// Samples refused because their metric has too many series.
    pub rejected_series_limit: usize,
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
        blocks: &[Arc<Block>],
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
#[derive(Debug, Default, Clone)]
pub struct MaintainStats {
    /// Blocks merged away.
    pub compacted_blocks: usize,
    /// Blocks deleted by retention.
    pub deleted_blocks: usize,
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

/// A metric name within a tenant.
type MetricOfTenant = (Tenant, Box<[u8]>);

/// The cardinality limit, shared by all shards; locked only when a series is created.
pub struct SeriesLimiter {
    max: usize,
    counts: Mutex<AHashMap<MetricOfTenant, usize>>,
}

impl SeriesLimiter {
    /// A limiter allowing `max_series_per_metric` series per (tenant, metric).
    pub fn new(max_series_per_metric: usize) -> Arc<SeriesLimiter> {
        Arc::new(SeriesLimiter {
            max: max_series_per_metric,
            counts: Mutex::default(),
        })
    }

    fn admit(&self, tenant: &Tenant, key: SeriesKeyRef<'_>, enforce: bool) -> bool {
        let metric = key.get(METRIC_NAME.as_bytes()).unwrap_or_default();
        let mut counts = self.counts.lock();
        let n = counts.entry((tenant.clone(), metric.into())).or_default();
        if enforce && *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }
}

struct Inner {
    heads: AHashMap<Tenant, TenantHead>,
    /// Per tenant, blocks in ascending sequence.
    blocks: AHashMap<Tenant, Vec<Arc<Block>>>,
    next_seq: u64,
    /// Blocks from this sequence on were written by the latest flush: their compaction
    /// windows are still being written.
    fresh_from: u64,
    applied: Option<u64>,
    checkpoint: Option<u64>,
}

/// A series of one tenant's head, for [`Tsdb::append_handles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesHandle(u32);

/// One shard's storage. Appends come from the shard's thread; reads from any thread.
pub struct Tsdb {
    dir: PathBuf,
    opts: TsdbOptions,
    limiter: Arc<SeriesLimiter>,
    inner: RwLock<Inner>,
    compactions: AtomicU64,
    deleted: AtomicU64,
    tenant_errors: AtomicU64,
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
            for f in std::fs::read_dir(&tdir).map_err(TsdbError::io(&tdir))? {
                let p = f.map_err(TsdbError::io(&tdir))?.path();
                match p.extension().and_then(|e| e.to_str()) {
                    Some("tmp") => {
                        tracing::warn!(path = %p.display(), "removing a block left half-written by a crash");
                        std::fs::remove_file(&p).map_err(TsdbError::io(&p))?;
                    }
                    Some("blk") => blocks.push(Arc::new(Block::open(&p)?)),
                    _ => {}
                }
            }
            blocks.sort_by_key(|b| b.seq);
            let head = inner.heads.entry(tenant.clone()).or_default();
            for b in &blocks {
                inner.next_seq = inner.next_seq.max(b.seq + 1);
                for id in 0..b.len() as u32 {
                    let key = b.index.key(id);
                    let sid = strata_model::SeriesId::of(&tenant, key);
                    let r = match head.get(sid, key) {
                        Some(r) => r,
                        None => {
                            limiter.admit(&tenant, key, false);
                            head.create(sid, key.to_owned())
                        }
                    };
                    let s = &mut head.series[r as usize];
                    s.persisted_max_t = s.persisted_max_t.max(b.meta(id).max_t);
                }
            }
            inner.blocks.insert(tenant, blocks);
        }
        Ok(Tsdb {
            dir: dir.to_path_buf(),
            opts,
            limiter,
            inner: RwLock::new(inner),
            compactions: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            tenant_errors: AtomicU64::new(0),
        })
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
            None => heads.entry(tenant.clone()).or_default(),
        };
        let tblocks = blocks.get(tenant).map(|v| v.as_slice()).unwrap_or(&[]);
        let mut stored = Vec::new();
        for s in batch.iter() {
            let r = match head.get(s.id, s.key) {
                Some(r) => r,
                None => {
                    if !self.limiter.admit(tenant, s.key, true) {
                        st.rejected_series_limit += s.samples.len();
                        continue;
                    }
                    st.new_series += 1;
                    head.create(s.id, s.key.to_owned())
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
    /// series limit: for derived series, whose raw series were admitted already). Handles stay
    /// valid for the life of the storage, so a writer of many series can skip key lookups.
    pub fn series_handle(&self, tenant: &Tenant, key: SeriesKeyRef<'_>) -> SeriesHandle {
        let id = strata_model::SeriesId::of(tenant, key);
        let mut inner = self.inner.write();
        let head = inner.heads.entry(tenant.clone()).or_default();
        let r = match head.get(id, key) {
            Some(r) => r,
            None => {
                self.limiter.admit(tenant, key, false);
                head.create(id, key.to_owned())
            }
        };
        SeriesHandle(r)
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
    /// checkpoint and empties the head. Returns the log offset now covered by blocks.
    ///
    /// A tenant whose blocks cannot be written keeps its head (logged and counted) while the
    /// others are flushed; the checkpoint then stays where it was, since the log still holds
    /// the only durable copy of that tenant's samples, and the first such failure is returned.
    pub fn flush(&self) -> Result<Option<u64>, TsdbError> {
        let mut inner = self.inner.write();
        let Inner {
            heads,
            blocks,
            next_seq,
            fresh_from,
            applied,
            checkpoint,
        } = &mut *inner;
        *fresh_from = *next_seq;
        let width = self.opts.block_duration_ms.max(1);
        let mut failed = None;
        for (tenant, head) in heads.iter_mut() {
            // Which series have samples in which block window; then one window at a time, so
            // a flush holds one block's encoded series, not the whole head's.
            let mut windows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            let mut buf = Vec::new();
            for (r, s) in head.series.iter().enumerate() {
                let Some((min_t, max_t)) = s.range() else {
                    continue;
                };
                // Within one window (the usual case), the range says so without decoding.
                if min_t.div_euclid(width) == max_t.div_euclid(width) {
                    windows
                        .entry(min_t.div_euclid(width))
                        .or_default()
                        .push(r as u32);
                    continue;
                }
                buf.clear();
                s.read(i64::MIN, i64::MAX, &mut buf);
                for part in buf
                    .chunk_by(|a, b| a.timestamp.div_euclid(width) == b.timestamp.div_euclid(width))
                {
                    let w = part[0].timestamp.div_euclid(width);
                    windows.entry(w).or_default().push(r as u32);
                }
            }
            let tdir = layout::tenant_dir(&self.dir, tenant);
            let mut written = if windows.is_empty() {
                Ok(())
            } else {
                layout::ensure_dir(&tdir)
            };
            for (w, members) in windows {
                if written.is_err() {
                    break;
                }
                let (start, end) = (
                    w.saturating_mul(width),
                    w.saturating_mul(width).saturating_add(width - 1),
                );
                let series = members
                    .into_iter()
                    .map(|r| {
                        buf.clear();
                        head.series[r as usize].read(start, end, &mut buf);
                        EncodedSeries::new(head.index.key(r).to_owned(), &buf)
                    })
                    .collect();
                match Block::write(&tdir, *next_seq, series) {
                    Ok(b) => blocks.entry(tenant.clone()).or_default().push(Arc::new(b)),
                    Err(e) => {
                        written = Err(e);
                        break;
                    }
                }
                *next_seq += 1;
            }
            // Blocks written before a failure stay: the next flush writes the same samples
            // again, with a higher sequence, which changes no answer.
            if let Err(e) = written {
                let e = self.tenant_failed(tenant, "flush", e);
                failed.get_or_insert(e);
                continue;
            }
            for s in &mut head.series {
                s.clear_persisted();
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if *applied != *checkpoint {
            if let Some(off) = *applied {
                write_checkpoint(&self.dir, off)?;
            }
            *checkpoint = *applied;
        }
        Ok(*checkpoint)
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
    pub fn maintain(&self, now_ms: i64) -> Result<MaintainStats, TsdbError> {
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
                let mut by_window: BTreeMap<i64, Vec<Arc<Block>>> = BTreeMap::new();
                for b in bs {
                    if b.max_t < cutoff {
                        expired.push((tenant.clone(), b.clone()));
                    } else if b.min_t.div_euclid(window) == b.max_t.div_euclid(window) {
                        by_window
                            .entry(b.min_t.div_euclid(window))
                            .or_default()
                            .push(b.clone());
                    }
                }
                groups.extend(
                    by_window
                        .into_values()
                        .filter(|g| {
                            let open = g.iter().any(|b| b.seq >= fresh_from);
                            g.len() >= if open { COMPACT_OPEN_BLOCKS } else { 2 }
                        })
                        .map(|g| (tenant.clone(), g)),
                );
            }
            (expired, groups)
        };
        let mut failed = None;
        let mut merged = Vec::new();
        for (tenant, group) in groups {
            // Same sequence as the newest input: nothing outside the window overlaps it.
            let seq = group.iter().map(|b| b.seq).max().unwrap_or(0);
            let tdir = layout::tenant_dir(&self.dir, &tenant);
            match merge_blocks(&group).and_then(|series| Block::write(&tdir, seq, series)) {
                Ok(b) => merged.push((tenant, group, Arc::new(b))),
                Err(e) => {
                    failed.get_or_insert(self.tenant_failed(&tenant, "compaction", e));
                }
            }
        }
        let mut inner = self.inner.write();
        for (tenant, b) in expired {
            match std::fs::remove_file(&b.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    // Kept, so the next maintenance tries again.
                    let e = TsdbError::io(&b.path)(e);
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
                if g.path != new.path {
                    if let Err(e) = std::fs::remove_file(&g.path) {
                        let e = TsdbError::io(&g.path)(e);
                        failed.get_or_insert(self.tenant_failed(&tenant, "compaction", e));
                    }
                }
            }
            let v = inner.blocks.entry(tenant).or_default();
            v.retain(|x| !group.iter().any(|g| Arc::ptr_eq(g, x)));
            v.push(new);
            v.sort_by_key(|b| b.seq);
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
            for b in bs.iter().filter(|b| b.max_t >= start && b.min_t <= end) {
                if let Some(id) = b.find(key) {
                    let m = b.meta(id);
                    if m.max_t >= start && m.min_t <= end {
                        b.read(id, &mut out)
                            .map_err(|e| StorageError::Io(e.to_string()))?;
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
            st.block_bytes += bs.iter().map(|b| b.bytes).sum::<u64>();
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
        Ok(self.find(tenant, matchers, start, end, true))
    }

    /// Every series of `tenant` matching `matchers` with data overlapping the range, sorted by
    /// key; with its head samples in the range when `with_samples`.
    fn find(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        with_samples: bool,
    ) -> Vec<SeriesRead> {
        let inner = self.inner.read();
        let mut found: BTreeMap<SeriesKeyRef<'_>, SeriesRead> = BTreeMap::new();
        if let Some(bs) = inner.blocks.get(tenant) {
            for b in bs.iter().filter(|b| b.max_t >= start && b.min_t <= end) {
                for id in b.index.select(matchers) {
                    let m = b.meta(id);
                    if m.max_t < start || m.min_t > end {
                        continue;
                    }
                    let key = b.index.key(id);
                    found
                        .entry(key)
                        .or_insert_with(|| SeriesRead::new(key.to_owned()))
                        .blocks
                        .push((b.clone(), id));
                }
            }
        }
        if let Some(h) = inner.heads.get(tenant) {
            for id in h.index.select(matchers) {
                let s = &h.series[id as usize];
                match s.range() {
                    Some((lo, hi)) if hi >= start && lo <= end => {}
                    _ => continue,
                }
                let key = h.index.key(id);
                let r = found
                    .entry(key)
                    .or_insert_with(|| SeriesRead::new(key.to_owned()));
                if with_samples {
                    s.read(start, end, &mut r.head);
                }
            }
        }
        found.into_values().collect()
    }
}

/// The value blocks hold for `key` at `t`, newest block first.
fn lookup_blocks(blocks: &[Arc<Block>], key: SeriesKeyRef<'_>, t: i64) -> Option<f64> {
    let mut buf = Vec::new();
    for b in blocks.iter().rev().filter(|b| b.min_t <= t && t <= b.max_t) {
        let Some(id) = b.find(key) else { continue };
        let m = b.meta(id);
        if t < m.min_t || t > m.max_t {
            continue;
        }
        buf.clear();
        if b.read(id, &mut buf).is_ok() {
            if let Ok(i) = buf.binary_search_by_key(&t, |s| s.timestamp) {
                return Some(buf[i].value);
            }
        }
    }
    None
}

/// Merges blocks' series; where they overlap, the higher sequence wins. Works one series at a
/// time, so memory holds one series' samples plus the compressed output.
fn merge_blocks(group: &[Arc<Block>]) -> Result<Vec<EncodedSeries>, TsdbError> {
    let mut ordered: Vec<&Arc<Block>> = group.iter().collect();
    ordered.sort_by_key(|b| b.seq);
    let mut keys: Vec<SeriesKey> = Vec::new();
    for b in &ordered {
        keys.extend((0..b.len() as u32).map(|id| b.index.key(id).to_owned()));
    }
    keys.sort();
    keys.dedup();
    let mut out = Vec::with_capacity(keys.len());
    let mut buf = Vec::new();
    for key in keys {
        buf.clear();
        for b in &ordered {
            if let Some(id) = b.find(key.as_ref()) {
                b.read(id, &mut buf)?;
            }
        }
        sort_last_wins(&mut buf);
        if !buf.is_empty() {
            out.push(EncodedSeries::new(key, &buf));
        }
    }
    Ok(out)
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
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, StorageError> {
        let mut out: Vec<Labels> = self
            .find(tenant, matchers, start, end, false)
            .iter()
            .map(|r| r.key.labels())
            .collect();
        out.sort();
        Ok(out)
    }

    fn label_names(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut names = std::collections::BTreeSet::new();
        for r in self.find(tenant, matchers, start, end, false) {
            for (n, _) in r.key.as_ref().pairs() {
                if !names.contains(n) {
                    names.insert(n.to_vec());
                }
            }
        }
        Ok(names
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }

    fn label_values(
        &self,
        tenant: &Tenant,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut values = std::collections::BTreeSet::new();
        for r in self.find(tenant, matchers, start, end, false) {
            if let Some(v) = r.key.as_ref().get(name.as_bytes()) {
                if !values.contains(v) {
                    values.insert(v.to_vec());
                }
            }
        }
        Ok(values
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }
}
