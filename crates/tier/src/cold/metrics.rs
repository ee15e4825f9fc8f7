//! The cold store's own counters, for the server to export.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the cold store's counters (all totals since open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdMetrics {
    /// Data files made visible (writes and compaction output).
    pub files_written: u64,
    /// Bytes of those files.
    pub bytes_written: u64,
    /// Rows in those files.
    pub rows_written: u64,
    /// Data files read by scans and compaction.
    pub files_read: u64,
    /// Rows returned by scans.
    pub rows_read: u64,
    /// Partitions compacted.
    pub compactions: u64,
    /// Files merged away by compaction.
    pub files_compacted: u64,
    /// Objects deleted on open that no manifest referenced (crash leftovers).
    pub leftovers_removed: u64,
    /// Failed operations (writes, reads, deletes, manifest updates).
    pub errors: u64,
    /// Files the manifest lists now.
    pub visible_files: u64,
    /// Their bytes: the cold tier's size.
    pub visible_bytes: u64,
    /// Their rows.
    pub visible_rows: u64,
}

/// The live counters behind [`ColdMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub files_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub rows_written: AtomicU64,
    pub files_read: AtomicU64,
    pub rows_read: AtomicU64,
    pub compactions: AtomicU64,
    pub files_compacted: AtomicU64,
    pub leftovers_removed: AtomicU64,
    pub errors: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> ColdMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ColdMetrics {
            files_written: g(&self.files_written),
            bytes_written: g(&self.bytes_written),
            rows_written: g(&self.rows_written),
            files_read: g(&self.files_read),
            rows_read: g(&self.rows_read),
            compactions: g(&self.compactions),
            files_compacted: g(&self.files_compacted),
            leftovers_removed: g(&self.leftovers_removed),
            errors: g(&self.errors),
            ..ColdMetrics::default()
        }
    }
}
