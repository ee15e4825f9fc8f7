//! [`LocalLog`]: partitions as directories of segment files on local disk.

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
use std::time::Instant;

const META: &str = "LOG_META";
const META_MAGIC: &[u8; 8] = b"STRLOGMT";
/// Buffered appends are written to the file past this many bytes, even before a sync.
const WRITE_CHUNK: usize = 1 << 20;

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
}

struct Partition {
    dir: PathBuf,
    /// Segments in offset order, the last one active. Counts cover bytes written to the file.
    segments: Mutex<Vec<SegmentInfo>>,
    /// The offset after the last durable record.
    durable_end: AtomicU64,
    writer_taken: AtomicBool,
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
            .map(|p| open_partition(&dir.join(format!("p{p:04}")), &stats).map(Arc::new))
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
    segment::sync_dir(dir)
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

fn open_partition(dir: &Path, stats: &Stats) -> Result<Partition, LogError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    paths.sort();
    let mut segments: Vec<SegmentInfo> = Vec::with_capacity(paths.len());
    let n = paths.len();
    for (i, path) in paths.into_iter().enumerate() {
        let last = i + 1 == n;
        let (base, records, valid_len, tail) = segment::scan(&path)?;
        if let Tail::Bad { at, reason } = tail {
            if !last {
                return Err(LogError::Corrupt {
                    path,
                    position: at,
                    reason,
                });
            }
            let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            let Some(_) = base else {
                // A segment whose header never made it to disk: the crash hit a roll.
                tracing::warn!(path = %path.display(), "removing ingest-log segment with a torn header");
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                stats.truncated_tail_bytes.fetch_add(len, Ordering::Relaxed);
                continue;
            };
            tracing::warn!(path = %path.display(), at, bytes = len - at, %reason, "truncating torn tail of the ingest log");
            let f = File::options()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(valid_len)
                .and_then(|_| f.sync_all())
                .map_err(io_err(&path))?;
            stats
                .truncated_tail_bytes
                .fetch_add(len - at, Ordering::Relaxed);
        }
        let base = base.unwrap_or(0);
        if let Some(prev) = segments.last() {
            if prev.base + prev.records != base {
                return Err(LogError::Corrupt {
                    path,
                    position: 0,
                    reason: format!(
                        "segment starts at offset {base}, expected {}",
                        prev.base + prev.records
                    ),
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
        let (_, path) = segment::create(dir, 0)?;
        segments.push(SegmentInfo {
            base: 0,
            records: 0,
            bytes: segment::HEADER_LEN as u64,
            path,
        });
    }
    let end = segments.last().map_or(0, |s| s.base + s.records);
    Ok(Partition {
        dir: dir.to_path_buf(),
        segments: Mutex::new(segments),
        durable_end: AtomicU64::new(end),
        writer_taken: AtomicBool::new(false),
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
            (last.path.clone(), last.bytes, last.base + last.records)
        };
        let file = File::options()
            .append(true)
            .open(&path)
            .map_err(io_err(&path));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                part.writer_taken.store(false, Ordering::Release);
                return Err(e);
            }
        };
        Ok(Box::new(LocalWriter {
            part,
            stats: self.stats.clone(),
            segment_bytes: self.opts.segment_bytes,
            file,
            path,
            file_bytes: bytes,
            buf: Vec::with_capacity(WRITE_CHUNK + (64 << 10)),
            buffered_records: 0,
            next,
            dirty: false,
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
        while segs.len() > 1 && segs[0].base + segs[0].records <= offset {
            let s = segs.remove(0);
            std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
            removed = true;
        }
        drop(segs);
        if removed {
            segment::sync_dir(&part.dir)?;
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
    file: File,
    path: PathBuf,
    /// Bytes in the active segment file, written or buffered.
    file_bytes: u64,
    buf: Vec<u8>,
    buffered_records: u64,
    next: Offset,
    /// Bytes written to the file since the last fdatasync.
    dirty: bool,
}

impl LocalWriter {
    /// Writes buffered records to the file (not yet durable) and publishes their counts.
    fn write_out(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.buf.clear();
        self.dirty = true;
        let mut segs = self.part.segments.lock();
        if let Some(last) = segs.last_mut() {
            last.records += self.buffered_records;
            last.bytes = self.file_bytes;
        }
        self.buffered_records = 0;
        Ok(())
    }

    fn start_segment(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let (file, path) = segment::create(&self.part.dir, self.next)?;
        self.file = file;
        self.path = path.clone();
        self.file_bytes = segment::HEADER_LEN as u64;
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
        let new_segment = self.will_roll(payload.len());
        if new_segment {
            self.start_segment()?;
        }
        segment::frame(&mut self.buf, payload);
        self.buffered_records += 1;
        self.file_bytes += (segment::FRAME_LEN + payload.len()) as u64;
        self.stats.appended_records.fetch_add(1, Ordering::Relaxed);
        self.stats
            .appended_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let offset = self.next;
        self.next += 1;
        if self.buf.len() >= WRITE_CHUNK {
            self.write_out()?;
        }
        Ok(Appended {
            offset,
            new_segment,
        })
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.write_out()?;
        if self.dirty {
            let t = Instant::now();
            self.file.sync_data().map_err(io_err(&self.path))?;
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
        }
        self.part.durable_end.store(self.next, Ordering::Release);
        Ok(())
    }

    fn next_offset(&self) -> Offset {
        self.next
    }

    fn roll(&mut self) -> Result<(), LogError> {
        if self.file_bytes > segment::HEADER_LEN as u64 {
            self.start_segment()?;
        }
        Ok(())
    }

    fn will_roll(&self, payload_len: usize) -> bool {
        let has_records = self.file_bytes > segment::HEADER_LEN as u64;
        has_records
            && self.file_bytes + (segment::FRAME_LEN + payload_len) as u64 > self.segment_bytes
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Unacknowledged appends: keep them if we can, but nobody waits for them.
        let _ = self.write_out();
        self.part.writer_taken.store(false, Ordering::Release);
    }
}
