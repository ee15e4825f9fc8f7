//! The ingest log: Strata's write-ahead log.
//!
//! A write is acknowledged only once it is in this log and fsynced. The log is split into
//! partitions (one per shard); each partition is a sequence of segment files holding
//! length-prefixed, checksummed records, addressed by a per-partition [`Offset`] that counts
//! records from 0; once durable, an offset names the same record for good. Writers buffer appends
//! and make a whole group durable with one `fdatasync` ([`PartitionWriter::sync`]): that is group
//! commit. Segments roll only between groups, so a group is durable whole or not at all.
//!
//! On open every segment is verified and the newest one is fsynced before its records count as
//! durable. A torn tail of the newest segment (a crash mid-write, or a zero-filled range) is
//! truncated; damage anywhere else is reported as [`LogError::Corrupt`], never a panic.
//!
//! # I/O faults
//!
//! A failed write or sync is never retried on the same file, because a later sync that succeeds
//! proves nothing: after a writeback error Linux drops the dirty pages and reports the error
//! once (PostgreSQL's "fsyncgate"). Instead the partition's writer is *poisoned*:
//!
//! - every record appended since the last successful sync is refused: the sync of that group
//!   commit (and every append until it) returns an error, so nothing after the failure is
//!   acknowledged;
//! - the refused records are dropped from memory, not rewritten: their writers were told they
//!   failed and will retry. Their offsets are handed out again; no reader, replay or
//!   acknowledgement ever saw them, so offsets stay contiguous and no offset is ever seen with
//!   two different payloads;
//! - the writer *recovers* at once by moving to a fresh segment that starts at the durable end
//!   (created under a temporary name, fsynced, renamed, directory fsynced); the old segment's
//!   undurable tail is first cut back to its last synced byte, and where even that fails, replay
//!   ignores it: a segment is read no further than the base of the segment after it;
//! - if recovery fails too (a full disk, a dead device), appends keep failing fast with
//!   [`LogError::Poisoned`] (the server answers 503) and recovery is retried at most once a
//!   second, so the partition heals without a restart once the disk does. Stopping the process
//!   instead would turn one full disk into an outage of every partition plus a replay, and would
//!   decide nothing a retry cannot.
//!
//! One case is left to replay: when the old tail can be neither cut nor superseded and the
//! process then dies, whole refused records still in that tail are replayed like records a crash
//! kept (nothing tells them apart). A refused write may then reappear, which the client's retry
//! turns into a duplicate, never a loss.
//!
//! Readers only ever see records up to the durable end. With the `fault-injection` feature,
//! `LocalLog::open_with_faults` and the `faults` module make file operations fail on demand, for
//! tests.
//!
//! The log knows nothing of what its payloads mean; a Kafka-backed [`Log`] can stand in for
//! [`LocalLog`] without changing its users.

#[cfg(feature = "fault-injection")]
pub mod faults;
mod file;
mod local;
mod segment;

pub use local::LocalLog;

use std::path::PathBuf;
use thiserror::Error;

/// Position of a record in one partition: 0 for the first record ever appended, then 1, 2, ...
pub type Offset = u64;

/// Upper bounds, in seconds, of the fsync-latency histogram in [`LogStats`].
pub const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Largest record payload accepted.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Tuning of a [`LocalLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed once it holds this many bytes: the first append after a sync that
    /// would take it past the limit starts a new one (so a segment can exceed the limit by one
    /// group commit, and a group is never split between two segments).
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// What went wrong in the log. Messages name the file and, for damage, the byte position.
#[derive(Debug, Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("ingest log I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Stored bytes are damaged somewhere a crash cannot explain.
    #[error("ingest log corrupt: {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log on disk does not fit how it is being opened.
    #[error("ingest log: {0}")]
    Mismatch(String),
    /// Another process has the log open: two writers would interleave records and corrupt it.
    #[error("ingest log {path} is in use by another process (is another strata running on this data directory?)")]
    InUse {
        /// The log's lock file.
        path: PathBuf,
    },
    /// A second writer was requested for a partition.
    #[error("ingest log partition {0} already has a writer")]
    WriterBusy(u32),
    /// No such partition.
    #[error("ingest log has no partition {0}")]
    NoPartition(u32),
    /// A payload over [`MAX_RECORD_BYTES`].
    #[error("record of {len} bytes is larger than the limit of {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Payload length.
        len: usize,
    },
    /// An empty payload: refused, because an all-zero frame is what a zero-filled tail looks
    /// like, and replay must be able to tell the two apart.
    #[error("empty records cannot be appended to the ingest log")]
    EmptyRecord,
    /// The partition's writer failed to write or sync and refuses records until it has moved to
    /// a fresh segment (see the crate docs).
    #[error("ingest log partition {partition} refuses writes after an I/O error: {cause}")]
    Poisoned {
        /// The partition.
        partition: u32,
        /// The failure, and the last failed recovery when there is one.
        cause: String,
    },
    /// The partition's next record would need an offset past `u64::MAX` (only a segment made
    /// or damaged by hand can start that close to the end).
    #[error(
        "ingest log partition {0} has no offsets left: the next record would be past u64::MAX"
    )]
    OffsetsExhausted(u32),
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: Offset,
    /// The bytes appended.
    pub payload: Vec<u8>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the record.
    pub offset: Offset,
    /// The record is the first of a new segment.
    pub new_segment: bool,
}

/// Counters of a log, cheap to read from any thread.
#[derive(Debug, Clone, Default)]
pub struct LogStats {
    /// Records appended since open.
    pub appended_records: u64,
    /// Payload bytes appended since open.
    pub appended_bytes: u64,
    /// fdatasync calls (one per group commit).
    pub syncs: u64,
    /// Seconds spent syncing, in total.
    pub sync_seconds_total: f64,
    /// Longest single sync, in seconds.
    pub sync_seconds_max: f64,
    /// Syncs that took at most [`SYNC_BUCKETS`]`[i]` seconds, cumulative as in a Prometheus
    /// histogram (the count of all syncs is `syncs`).
    pub sync_buckets: [u64; SYNC_BUCKETS.len()],
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
    /// Bytes of torn tails truncated at open.
    pub truncated_tail_bytes: u64,
    /// Writes and syncs that failed (each poisons its partition's writer).
    pub io_errors: u64,
    /// Times a poisoned writer moved to a fresh segment and took writes again.
    pub recoveries: u64,
    /// Partitions whose writer refuses writes right now (poisoned, not yet recovered).
    pub failed_partitions: u64,
}

/// A partitioned, durable, ordered log of opaque records.
pub trait Log: Send + Sync + 'static {
    /// Number of partitions (fixed when the log is created).
    fn partitions(&self) -> u32;

    /// The single writer of a partition; a second one while the first lives is an error.
    fn writer(&self, partition: u32) -> Result<Box<dyn PartitionWriter>, LogError>;

    /// Durable records with offset `>= from`, in order. Iteration begins at the first record of
    /// the segment that holds `from`, so callers can rebuild per-segment state; each record
    /// carries its offset for skipping.
    fn read(
        &self,
        partition: u32,
        from: Offset,
    ) -> Result<Box<dyn Iterator<Item = Result<Record, LogError>> + Send>, LogError>;

    /// Deletes whole segments all of whose records are below `offset` (never the newest one).
    fn truncate_before(&self, partition: u32, offset: Offset) -> Result<(), LogError>;

    /// The offset the next append to `partition` will get.
    fn end_offset(&self, partition: u32) -> Offset;

    /// Counters.
    fn stats(&self) -> LogStats;
}

/// Appends to one partition. Appends are buffered; [`PartitionWriter::sync`] makes them durable.
///
/// After any error other than [`LogError::TooLarge`] and [`LogError::EmptyRecord`], records
/// appended since the last successful sync are lost, their offsets are handed out again, and the
/// next record starts a new segment: callers treat the records as refused and reset per-segment
/// state as after a roll.
pub trait PartitionWriter: Send {
    /// Buffers a record and returns its offset (final once a sync covering it succeeds).
    fn append(&mut self, payload: &[u8]) -> Result<Appended, LogError>;

    /// Writes and fsyncs everything appended so far: the group-commit point. An error refuses
    /// every record appended since the previous call.
    fn sync(&mut self) -> Result<(), LogError>;

    /// The offset the next append will get.
    fn next_offset(&self) -> Offset;

    /// True when a record of `payload_len` bytes would start a new segment, so the caller can
    /// reset per-segment state before encoding it.
    fn will_roll(&self, payload_len: usize) -> bool;

    /// Syncs and starts a new segment now (when the current one holds records), so that
    /// everything written so far can be truncated once it is persisted elsewhere. Callers reset
    /// per-segment state afterwards. It is a group commit, answered as a sync is: when only
    /// the new segment cannot be created, everything appended is durable, the result is `Ok`,
    /// and the writer, poisoned, starts the segment when it recovers.
    fn roll(&mut self) -> Result<(), LogError>;
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.into();
    move |source| LogError::Io { path, source }
}
