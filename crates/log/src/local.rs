//! [`LocalLog`]: partitions as directories of segment files on local disk.

use crate::file::{Io, SegmentFile};
use crate::segment::{self, SegmentInfo, SegmentReader, Tail};
use crate::{
    io_err, Appended, Log, LogError, LogOptions, LogStats, Offset, PartitionWriter, Record,
    MAX_RECORD_BYTES, SYNC_BUCKETS,
};
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const META: &str = "LOG_META";
const META_MAGIC: &[u8; 8] = b"STRLOGMT";
/// Buffered appends are written to the file past this many bytes, even before a sync.
const WRITE_CHUNK: usize = 1 << 20;
/// A poisoned writer whose recovery failed tries again at most this often (each try creates and
/// fsyncs a file: a failing disk is not hammered once per refused write).
const RECOVERY_RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Stats {
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    syncs: AtomicU64,
    sync_nanos_total: AtomicU64,
    sync_nanos_max: AtomicU64,
    /// Non-cumulative counts per bucket of `SYNC_BUCKETS`.
    sync_buckets: [AtomicU64; SYNC_BUCKETS.len()],
    truncated_tail_bytes: AtomicU64,
    io_errors: AtomicU64,
    recoveries: AtomicU64,
}

struct Partition {
    id: u32,
    dir: PathBuf,
    io: Io,
    /// Segments in offset order, the last one active. Counts cover bytes written to the file.
    segments: Mutex<Vec<SegmentInfo>>,
    /// The offset after the last durable record.
    durable_end: AtomicU64,
    writer_taken: AtomicBool,
    /// The writer is poisoned and has not recovered yet.
    failed: AtomicBool,
}

/// The embedded ingest log: `dir/p{partition:04}/{base_offset:020}.seg`.
pub struct LocalLog {
    partitions: Vec<Arc<Partition>>,
    opts: LogOptions,
    stats: Arc<Stats>,
    /// Held (an exclusive advisory lock on `LOCK`) while the log is open, so a second process
    /// on the same directory fails to open it instead of writing into the same segments.
    _lock: File,
}

impl LocalLog {
    /// Opens (or creates) the log with `partitions` partitions, verifying every segment and
    /// truncating a torn tail of each partition's newest segment.
    pub fn open(dir: &Path, partitions: u32, opts: LogOptions) -> Result<LocalLog, LogError> {
        Self::open_io(dir, partitions, opts, Io::default())
    }

    /// [`LocalLog::open`] with file operations that fail as `faults` says (for tests).
    #[cfg(feature = "fault-injection")]
    pub fn open_with_faults(
        dir: &Path,
        partitions: u32,
        opts: LogOptions,
        faults: Arc<crate::faults::Faults>,
    ) -> Result<LocalLog, LogError> {
        Self::open_io(dir, partitions, opts, Io::with_faults(faults))
    }

    fn open_io(
        dir: &Path,
        partitions: u32,
        opts: LogOptions,
        io: Io,
    ) -> Result<LocalLog, LogError> {
        if partitions == 0 {
            return Err(LogError::Mismatch(
                "a log needs at least one partition".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        check_meta(dir, partitions)?;
        let stats = Arc::new(Stats::default());
        let parts = (0..partitions)
            .map(|p| open_partition(p, &dir.join(format!("p{p:04}")), &io, &stats).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LocalLog {
            partitions: parts,
            opts,
            stats,
            _lock: lock,
        })
    }

    /// The partition count of the log in `dir`, as it was created; `None` when there is no log
    /// there yet.
    pub fn existing_partitions(dir: &Path) -> Result<Option<u32>, LogError> {
        read_meta(dir)
    }

    fn partition(&self, p: u32) -> Result<&Arc<Partition>, LogError> {
        self.partitions
            .get(p as usize)
            .ok_or(LogError::NoPartition(p))
    }
}

/// Reads `LOG_META`: the partition count the log was created with, `None` when there is none.
fn read_meta(dir: &Path) -> Result<Option<u32>, LogError> {
    let path = dir.join(META);
    match std::fs::read(&path) {
        Ok(got) => {
            if got.len() != 20
                || &got[..8] != META_MAGIC
                || crc32fast::hash(&got[..16]).to_le_bytes() != got[16..20]
            {
                return Err(LogError::Corrupt {
                    path,
                    position: 0,
                    reason: "log metadata damaged".into(),
                });
            }
            Ok(Some(u32::from_le_bytes([
                got[12], got[13], got[14], got[15],
            ])))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::Io { path, source: e }),
    }
}

/// Writes or checks `LOG_META`: the partition count may never change under existing data.
fn check_meta(dir: &Path, partitions: u32) -> Result<(), LogError> {
    if let Some(have) = read_meta(dir)? {
        if have != partitions {
            return Err(LogError::Mismatch(format!(
                "{} was created with {have} partitions but is opened with {partitions}; data would be partitioned wrongly",
                dir.display()
            )));
        }
        return Ok(());
    }
    let path = dir.join(META);
    let has_data = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .any(|e| e.is_ok_and(|e| e.file_name() != LOCK_FILE));
    if has_data {
        return Err(LogError::Corrupt {
            path,
            position: 0,
            reason: "log metadata missing beside existing data".into(),
        });
    }
    let mut want = Vec::with_capacity(20);
    want.extend_from_slice(META_MAGIC);
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&partitions.to_le_bytes());
    let crc = crc32fast::hash(&want);
    want.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("LOG_META.tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&want)
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Io::default().sync_dir(dir).map_err(io_err(dir))
}

/// The lock file's name, in the log's directory.
const LOCK_FILE: &str = "LOCK";

/// Takes the exclusive lock on `dir/LOCK` (released by the OS when the process dies, however).
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::InUse { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(LogError::Io { path, source: e }),
    }
}

fn open_partition(id: u32, dir: &Path, io: &Io, stats: &Stats) -> Result<Partition, LogError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = e.map_err(io_err(dir))?.path();
        if path.to_string_lossy().ends_with(segment::TMP_EXTENSION) {
            // A segment whose creation was cut short: never renamed, so never used.
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        } else if path.extension().is_some_and(|x| x == "seg") {
            paths.push(path);
        }
    }
    paths.sort();
    // A segment may hold records past the base of the one after it only when the writer moved
    // to a fresh segment after an I/O error and could not cut the old tail: those records were
    // never durable, so each segment is read no further than its successor's base.
    let bases = paths
        .iter()
        .map(|p| segment::read_base(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut segments: Vec<SegmentInfo> = Vec::with_capacity(paths.len());
    let n = paths.len();
    // Whether the newest segment's bytes were fsynced here (a cut tail is).
    let mut newest_synced = false;
    for (i, path) in paths.into_iter().enumerate() {
        let last = i + 1 == n;
        let limit = match (bases[i], bases.get(i + 1).copied().flatten()) {
            (Some(base), Some(next)) => next.checked_sub(base),
            _ => None,
        };
        let (base, records, valid_len, tail) = segment::scan(&path, limit)?;
        let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        let cut = match tail {
            Tail::Clean => false,
            Tail::Bad { at, reason } if !last => {
                return Err(LogError::Corrupt {
                    path,
                    position: at,
                    reason,
                });
            }
            Tail::Bad { .. } if base.is_none() => {
                // A segment whose header never made it to disk: the crash hit a roll.
                tracing::warn!(path = %path.display(), "removing ingest-log segment with a torn header");
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                stats.truncated_tail_bytes.fetch_add(len, Ordering::Relaxed);
                continue;
            }
            Tail::Bad { at, reason } => {
                tracing::warn!(path = %path.display(), at, bytes = len - at, %reason, "truncating torn tail of the ingest log");
                true
            }
            Tail::Superseded { at } => {
                tracing::warn!(path = %path.display(), at, bytes = len - at, "cutting the undurable tail the ingest log left after an I/O error");
                true
            }
        };
        if cut || last {
            let f = File::options()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if cut {
                f.set_len(valid_len).map_err(io_err(&path))?;
                stats
                    .truncated_tail_bytes
                    .fetch_add(len - valid_len, Ordering::Relaxed);
            }
            // The newest segment may hold bytes a crashed process wrote but never synced: they
            // are durable only once this succeeds.
            f.sync_all().map_err(io_err(&path))?;
            newest_synced = last;
        }
        let base = base.unwrap_or(0);
        if base.checked_add(records).is_none() {
            // A checksummed header the log never wrote: no offset is left for these records.
            return Err(LogError::Corrupt {
                path,
                position: 0,
                reason: format!(
                    "segment starts at offset {base}: its {records} records would end past u64::MAX"
                ),
            });
        }
        if let Some(prev) = segments.last() {
            if prev.end() != base {
                return Err(LogError::Corrupt {
                    path,
                    position: 0,
                    reason: format!("segment starts at offset {base}, expected {}", prev.end()),
                });
            }
        }
        segments.push(SegmentInfo {
            base,
            records,
            bytes: valid_len,
            path,
        });
    }
    if segments.is_empty() {
        // Keep the end offset across restarts even when everything was truncated: a fresh
        // partition starts at 0.
        let (_, path) = segment::create(io, dir, 0)?;
        segments.push(SegmentInfo {
            base: 0,
            records: 0,
            bytes: segment::HEADER_LEN as u64,
            path,
        });
    } else if !newest_synced {
        // The newest segment had a torn header and is gone: sync the one now newest.
        let path = &segments[segments.len() - 1].path;
        File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(path))?;
    }
    let end = segments.last().map_or(0, SegmentInfo::end);
    Ok(Partition {
        id,
        dir: dir.to_path_buf(),
        io: io.clone(),
        segments: Mutex::new(segments),
        durable_end: AtomicU64::new(end),
        writer_taken: AtomicBool::new(false),
        failed: AtomicBool::new(false),
    })
}

impl Log for LocalLog {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn writer(&self, partition: u32) -> Result<Box<dyn PartitionWriter>, LogError> {
        let part = self.partition(partition)?.clone();
        if part.writer_taken.swap(true, Ordering::AcqRel) {
            return Err(LogError::WriterBusy(partition));
        }
        let (path, bytes, next) = {
            let segs = part.segments.lock();
            let last = segs.last().expect("a partition always has a segment");
            (last.path.clone(), last.bytes, last.end())
        };
        let file = match part.io.open_at(&path, bytes) {
            Ok(f) => f,
            Err(e) => {
                part.writer_taken.store(false, Ordering::Release);
                return Err(LogError::Io { path, source: e });
            }
        };
        // A previous writer of this partition was poisoned and never recovered: its file may
        // hold an undurable tail, which this writer must not append after.
        let broken = part.failed.load(Ordering::Acquire).then(|| Broken {
            cause: "an earlier writer of this partition failed".into(),
            recovery: None,
            retry_at: Instant::now(),
            tail_cut: false,
        });
        Ok(Box::new(LocalWriter {
            part,
            stats: self.stats.clone(),
            segment_bytes: self.opts.segment_bytes,
            file,
            path,
            file_bytes: bytes,
            synced_bytes: bytes,
            buf: Vec::with_capacity(WRITE_CHUNK + (64 << 10)),
            buffered_records: 0,
            next,
            dirty: false,
            lost: None,
            broken,
        }))
    }

    fn read(
        &self,
        partition: u32,
        from: Offset,
    ) -> Result<Box<dyn Iterator<Item = Result<Record, LogError>> + Send>, LogError> {
        let part = self.partition(partition)?;
        let durable = part.durable_end.load(Ordering::Acquire);
        let mut segs: Vec<SegmentInfo> = part.segments.lock().clone();
        // Only what is durable: the active segment may hold bytes not yet synced.
        for s in &mut segs {
            s.records = s.records.min(durable.saturating_sub(s.base));
        }
        let start = segs.iter().rposition(|s| s.base <= from).unwrap_or(0);
        segs.drain(..start);
        Ok(Box::new(LogIter {
            segs: segs.into_iter(),
            cur: None,
        }))
    }

    fn truncate_before(&self, partition: u32, offset: Offset) -> Result<(), LogError> {
        let part = self.partition(partition)?;
        let mut segs = part.segments.lock();
        let mut removed = false;
        while segs.len() > 1 && segs[0].end() <= offset {
            let s = segs.remove(0);
            std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
            removed = true;
        }
        drop(segs);
        if removed {
            part.io.sync_dir(&part.dir).map_err(io_err(&part.dir))?;
        }
        Ok(())
    }

    fn end_offset(&self, partition: u32) -> Offset {
        self.partitions
            .get(partition as usize)
            .map_or(0, |p| p.durable_end.load(Ordering::Acquire))
    }

    fn stats(&self) -> LogStats {
        let s = &self.stats;
        let (mut segments, mut disk_bytes) = (0, 0);
        for p in &self.partitions {
            let segs = p.segments.lock();
            segments += segs.len() as u64;
            disk_bytes += segs.iter().map(|s| s.bytes).sum::<u64>();
        }
        LogStats {
            appended_records: s.appended_records.load(Ordering::Relaxed),
            appended_bytes: s.appended_bytes.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            sync_seconds_total: s.sync_nanos_total.load(Ordering::Relaxed) as f64 / 1e9,
            sync_seconds_max: s.sync_nanos_max.load(Ordering::Relaxed) as f64 / 1e9,
            sync_buckets: {
                let mut acc = 0;
                std::array::from_fn(|i| {
                    acc += s.sync_buckets[i].load(Ordering::Relaxed);
                    acc
                })
            },
            segments,
            disk_bytes,
            truncated_tail_bytes: s.truncated_tail_bytes.load(Ordering::Relaxed),
            io_errors: s.io_errors.load(Ordering::Relaxed),
            recoveries: s.recoveries.load(Ordering::Relaxed),
            failed_partitions: self
                .partitions
                .iter()
                .filter(|p| p.failed.load(Ordering::Relaxed))
                .count() as u64,
        }
    }
}

struct LogIter {
    segs: std::vec::IntoIter<SegmentInfo>,
    cur: Option<SegmentReader>,
}

impl Iterator for LogIter {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = &mut self.cur {
                match r.next_record() {
                    Some(Ok((offset, payload))) => return Some(Ok(Record { offset, payload })),
                    Some(Err(e)) => {
                        self.segs = Vec::new().into_iter();
                        self.cur = None;
                        return Some(Err(e));
                    }
                    None => self.cur = None,
                }
            }
            let info = self.segs.next()?;
            match SegmentReader::open(&info) {
                Ok(r) => self.cur = Some(r),
                Err(e) => {
                    self.segs = Vec::new().into_iter();
                    return Some(Err(e));
                }
            }
        }
    }
}

struct LocalWriter {
    part: Arc<Partition>,
    stats: Arc<Stats>,
    segment_bytes: u64,
    file: SegmentFile,
    path: PathBuf,
    /// Bytes in the active segment file, written or buffered.
    file_bytes: u64,
    /// Bytes of the active segment file known durable (its length at the last good sync).
    synced_bytes: u64,
    buf: Vec<u8>,
    buffered_records: u64,
    next: Offset,
    /// Bytes written to the file since the last fdatasync.
    dirty: bool,
    /// Records appended since the last sync were lost to this failure: the next sync reports it,
    /// and appends are refused until then, so nothing in the failed group is acknowledged.
    lost: Option<String>,
    /// The active file is not trusted since a failure: no append until the writer has moved to
    /// a fresh segment.
    broken: Option<Broken>,
}

/// Why and since when a writer refuses appends.
struct Broken {
    /// The write or sync that failed.
    cause: String,
    /// The last recovery attempt's failure.
    recovery: Option<String>,
    /// The next recovery attempt is not made before this.
    retry_at: Instant,
    /// The old segment's undurable tail has been cut off.
    tail_cut: bool,
}

impl LocalWriter {
    fn poisoned(&self, cause: &str) -> LogError {
        LogError::Poisoned {
            partition: self.part.id,
            cause: cause.to_owned(),
        }
    }

    /// The error for an append to a broken writer: what failed, and why recovery did.
    fn refusal(&self) -> LogError {
        match &self.broken {
            Some(Broken {
                cause,
                recovery: Some(r),
                ..
            }) => self.poisoned(&format!("{cause}; recovery failed: {r}")),
            Some(b) => self.poisoned(&b.cause),
            None => self.poisoned("the writer failed"),
        }
    }

    /// Writes buffered records to the file (not yet durable) and publishes their counts.
    fn write_out(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.dirty = true;
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.buf.clear();
        let mut segs = self.part.segments.lock();
        if let Some(last) = segs.last_mut() {
            // Within the offsets `append` handed out, so it cannot overflow.
            last.records = last.records.saturating_add(self.buffered_records);
            last.bytes = self.file_bytes;
        }
        self.buffered_records = 0;
        Ok(())
    }

    /// Writes and fsyncs everything appended; on failure poisons the writer. A failure earlier
    /// in the group is reported here too (and stays set for the group's own sync).
    fn make_durable(&mut self) -> Result<(), LogError> {
        if let Some(cause) = &self.lost {
            return Err(self.poisoned(cause));
        }
        if self.broken.is_some() {
            // Appends are refused while broken: everything appended is durable already.
            return Ok(());
        }
        if let Err(e) = self.write_out() {
            return Err(self.fail(e));
        }
        if self.dirty {
            let t = Instant::now();
            if let Err(e) = self.file.sync_data() {
                return Err(self.fail(io_err(&self.path)(e)));
            }
            let nanos = t.elapsed().as_nanos() as u64;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .sync_nanos_total
                .fetch_add(nanos, Ordering::Relaxed);
            self.stats
                .sync_nanos_max
                .fetch_max(nanos, Ordering::Relaxed);
            let secs = nanos as f64 / 1e9;
            if let Some(b) = SYNC_BUCKETS.iter().position(|le| secs <= *le) {
                self.stats.sync_buckets[b].fetch_add(1, Ordering::Relaxed);
            }
            self.dirty = false;
            self.synced_bytes = self.file_bytes;
        }
        self.part.durable_end.store(self.next, Ordering::Release);
        Ok(())
    }

    /// Poisons the writer after a failed write, sync or segment creation: drops every record
    /// since the last good sync (nobody may be told they are durable, and the file that failed
    /// cannot be asked again), then tries to recover at once. Returns `e` for the caller.
    fn fail(&mut self, e: LogError) -> LogError {
        self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
        let durable = self.part.durable_end.load(Ordering::Acquire);
        // The durable end never passes the next offset.
        let lost = self.next.saturating_sub(durable);
        tracing::error!(
            partition = self.part.id,
            error = %e,
            lost_records = lost,
            "ingest log write failed: refusing writes until the partition has moved to a fresh segment"
        );
        if lost > 0 {
            self.lost = Some(e.to_string());
        }
        self.buf.clear();
        self.buffered_records = 0;
        self.next = durable;
        self.file_bytes = self.synced_bytes;
        self.dirty = false;
        {
            let mut segs = self.part.segments.lock();
            let last = segs.last_mut().expect("a partition always has a segment");
            last.records = durable.saturating_sub(last.base);
            last.bytes = self.synced_bytes;
        }
        self.part.failed.store(true, Ordering::Release);
        self.broken = Some(Broken {
            cause: e.to_string(),
            recovery: None,
            retry_at: Instant::now(),
            tail_cut: false,
        });
        let _ = self.recover();
        e
    }

    /// Moves a broken writer to a fresh segment starting at the durable end, cutting the old
    /// segment's undurable tail first. Nothing of the old file is read or trusted: what it holds
    /// past `synced_bytes` was refused. Failure leaves the writer broken, to be retried after
    /// [`RECOVERY_RETRY`].
    fn recover(&mut self) -> Result<(), LogError> {
        let Some(b) = &mut self.broken else {
            return Ok(());
        };
        if !b.tail_cut {
            // Best effort: should it fail, replay still ignores the tail once the fresh segment
            // exists (it starts where the old one's durable records end).
            match self
                .file
                .set_len(self.synced_bytes)
                .and_then(|_| self.file.sync_all())
            {
                Ok(()) => b.tail_cut = true,
                Err(e) => tracing::warn!(
                    partition = self.part.id,
                    path = %self.path.display(),
                    error = %e,
                    "could not cut the undurable tail of the ingest log segment"
                ),
            }
        }
        let base = self.next;
        let (file, path) = match segment::create(&self.part.io, &self.part.dir, base) {
            Ok(created) => created,
            Err(e) => {
                tracing::error!(partition = self.part.id, error = %e, "ingest log recovery failed; retrying");
                b.recovery = Some(e.to_string());
                b.retry_at = Instant::now() + RECOVERY_RETRY;
                return Err(e);
            }
        };
        let info = SegmentInfo {
            base,
            records: 0,
            bytes: segment::HEADER_LEN as u64,
            path: path.clone(),
        };
        {
            let mut segs = self.part.segments.lock();
            let last = segs.last_mut().expect("a partition always has a segment");
            if last.base == base {
                // The old segment held no durable record: the fresh one replaced its file.
                *last = info;
            } else {
                segs.push(info);
            }
        }
        tracing::info!(partition = self.part.id, offset = base, path = %path.display(), "ingest log recovered: writing to a fresh segment");
        self.file = file;
        self.path = path;
        self.file_bytes = segment::HEADER_LEN as u64;
        self.synced_bytes = self.file_bytes;
        self.broken = None;
        self.part.failed.store(false, Ordering::Release);
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a new segment at the next offset; everything before it must be durable.
    fn open_next_segment(&mut self) -> Result<(), LogError> {
        let (file, path) = match segment::create(&self.part.io, &self.part.dir, self.next) {
            Ok(created) => created,
            Err(e) => return Err(self.fail(e)),
        };
        self.file = file;
        self.path = path.clone();
        self.file_bytes = segment::HEADER_LEN as u64;
        self.synced_bytes = self.file_bytes;
        self.part.segments.lock().push(SegmentInfo {
            base: self.next,
            records: 0,
            bytes: self.file_bytes,
            path,
        });
        Ok(())
    }
}

impl PartitionWriter for LocalWriter {
    fn append(&mut self, payload: &[u8]) -> Result<Appended, LogError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge { len: payload.len() });
        }
        if payload.is_empty() {
            return Err(LogError::EmptyRecord);
        }
        let Some(after) = self.next.checked_add(1) else {
            return Err(LogError::OffsetsExhausted(self.part.id));
        };
        if let Some(cause) = &self.lost {
            return Err(self.poisoned(cause));
        }
        if let Some(b) = &self.broken {
            if Instant::now() < b.retry_at || self.recover().is_err() {
                return Err(self.refusal());
            }
        }
        if self.will_roll(payload.len()) {
            // At a group's start: nothing appended is waiting for a sync.
            self.make_durable()?;
            self.open_next_segment()?;
        }
        let new_segment = self.file_bytes == segment::HEADER_LEN as u64;
        if self.buf.len() >= WRITE_CHUNK {
            // Before framing: a failure then refuses this record with the ones before it.
            if let Err(e) = self.write_out() {
                return Err(self.fail(e));
            }
        }
        segment::frame(&mut self.buf, payload);
        self.buffered_records += 1;
        self.file_bytes += (segment::FRAME_LEN + payload.len()) as u64;
        self.stats.appended_records.fetch_add(1, Ordering::Relaxed);
        self.stats
            .appended_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let offset = self.next;
        self.next = after;
        Ok(Appended {
            offset,
            new_segment,
        })
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let r = self.make_durable();
        // This is the group-commit point: whatever failed is reported to this group now.
        self.lost = None;
        r
    }

    fn next_offset(&self) -> Offset {
        self.next
    }

    fn roll(&mut self) -> Result<(), LogError> {
        if self.broken.is_none() && self.file_bytes == segment::HEADER_LEN as u64 {
            return Ok(());
        }
        self.sync()?;
        // Everything appended is durable now, which is what the caller acts on. A writer that
        // cannot start the new segment is poisoned (logged, counted) and starts it when it
        // recovers; until then the old segment stays the newest and is not truncated.
        if self.broken.is_some() {
            let _ = self.recover();
        } else {
            let _ = self.open_next_segment();
        }
        Ok(())
    }

    fn will_roll(&self, payload_len: usize) -> bool {
        // Only at a group's first record: a group commit never spans two segments, so it is
        // durable as a whole or not at all (a roll syncs what came before it).
        let has_records = self.file_bytes > segment::HEADER_LEN as u64;
        let group_start = self.next == self.part.durable_end.load(Ordering::Acquire);
        has_records
            && group_start
            && self.file_bytes + (segment::FRAME_LEN + payload_len) as u64 > self.segment_bytes
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Unacknowledged appends: keep them if we can, but nobody waits for them. A poisoned
        // writer has nothing to keep, and must not write to a file it does not trust.
        if self.broken.is_none() && self.lost.is_none() {
            let _ = self.write_out();
        }
        self.part.writer_taken.store(false, Ordering::Release);
    }
}
