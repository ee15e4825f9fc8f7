//! The ingest log: Strata's write-ahead log.
//!
//! A write is acknowledged only once it is in this log and fsynced. The log is split into
//! partitions (one per shard); each partition is a sequence of segment files holding
//! length-prefixed, checksummed records, addressed by a per-partition [`Offset`] that counts
//! records from 0 and is never reused. Writers buffer appends and make a whole group durable with
//! one `fdatasync` ([`PartitionWriter::sync`]): that is group commit.
//!
//! On open every segment is verified. A torn tail of the newest segment (a crash mid-write) is
//! truncated; damage anywhere else is reported as [`LogError::Corrupt`], never a panic.
//!
//! The log knows nothing of what its payloads mean; a Kafka-backed [`Log`] can stand in for
//! [`LocalLog`] without changing its users.

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
    /// A segment is closed and a new one started once it holds this many bytes.
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
pub trait PartitionWriter: Send {
    /// Buffers a record and returns its offset.
    fn append(&mut self, payload: &[u8]) -> Result<Appended, LogError>;

    /// Writes and fsyncs everything appended so far: the group-commit point.
    fn sync(&mut self) -> Result<(), LogError>;

    /// The offset the next append will get.
    fn next_offset(&self) -> Offset;

    /// True when a record of `payload_len` bytes would start a new segment, so the caller can
    /// reset per-segment state before encoding it.
    fn will_roll(&self, payload_len: usize) -> bool;

    /// Syncs and starts a new segment now (when the current one holds records), so that
    /// everything written so far can be truncated once it is persisted elsewhere. Callers reset
    /// per-segment state afterwards.
    fn roll(&mut self) -> Result<(), LogError>;
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.into();
    move |source| LogError::Io { path, source }
}
