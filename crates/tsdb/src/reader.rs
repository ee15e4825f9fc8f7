//! The reader trait over immutable blocks: what queries, compaction, retention and the archive
//! need of a block, apart from where its bytes live.
//!
//! The engine holds its blocks as `Arc<dyn BlockReader>` and reads them only through this
//! trait. Its own blocks are files mapped from the data directory ([`crate::block`]); a block
//! kept elsewhere (an object store, a peer node) implements the same trait and is read, merged
//! and expired the same way. Methods take `&mut dyn FnMut` so the trait stays object-safe.

use crate::TsdbError;
use std::path::Path;
use strata_model::{Fields, Matcher, Sample, SeriesKeyRef};

pub use crate::block::ChunkMeta;

/// What identifies a block and bounds its data: enough to choose blocks without opening them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Write order among blocks: where two hold the same timestamp, the higher one wins.
    pub seq: u64,
    /// Earliest timestamp held.
    pub min_t: i64,
    /// Latest timestamp held.
    pub max_t: i64,
    /// Bytes the block occupies where it is kept.
    pub bytes: u64,
}

impl BlockInfo {
    /// Whether the block may hold samples in `[start, end]`.
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.max_t >= start && self.min_t <= end
    }
}

/// An immutable block of series: an index numbering its series `0..len()` in label order (as
/// [`strata_model::SeriesKeyRef::cmp_as_labels`] orders keys: compaction walks blocks' series
/// together in that order), and one chunk of samples per series.
pub trait BlockReader: Send + Sync {
    /// Its sequence number and time bounds.
    fn info(&self) -> BlockInfo;

    /// Where it is kept (a file; for other stores, their name for it), for error messages and
    /// to tell two blocks apart.
    fn location(&self) -> &Path;

    /// Number of series.
    fn len(&self) -> usize;

    /// Whether it holds no series.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Series matching every matcher, ascending (label order).
    fn select(&self, matchers: &[Matcher]) -> Result<Vec<u32>, TsdbError>;

    /// Where series `id`'s chunk lies.
    fn meta(&self, id: u32) -> Result<ChunkMeta, TsdbError>;

    /// Series `id`'s chunk, its key written into `key`.
    fn entry(&self, id: u32, key: &mut Vec<u8>) -> Result<ChunkMeta, TsdbError>;

    /// The chunk of the series with `key`, if the block holds it.
    fn find(&self, key: SeriesKeyRef<'_>) -> Result<Option<ChunkMeta>, TsdbError>;

    /// Calls `f` with every label name of its series.
    fn label_names(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), TsdbError>;

    /// Calls `f` with every value of label `name` among its series.
    fn label_values(&self, name: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<(), TsdbError>;

    /// How many samples of chunk `m` lie in `[start, end]`, as far as known without decoding
    /// (a lower bound). By default: all of them when the range covers the chunk, else 0.
    fn known_in_range(&self, m: &ChunkMeta, start: i64, end: i64) -> usize {
        if start <= m.min_t && m.max_t <= end {
            m.count as usize
        } else {
            0
        }
    }

    /// Decodes at least the samples in `[start, end]` of chunk `m` (of series `key`),
    /// appending them to `out`, sorted; fails on a chunk that is damaged or holds another
    /// count of samples than `m` says.
    fn read_range(
        &self,
        m: &ChunkMeta,
        key: SeriesKeyRef<'_>,
        start: i64,
        end: i64,
        fields: Fields,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError>;

    /// Decodes all of chunk `m` (of series `key`), appending its samples to `out`.
    fn read(
        &self,
        m: &ChunkMeta,
        key: SeriesKeyRef<'_>,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError> {
        self.read_range(m, key, i64::MIN, i64::MAX, Fields::All, out)
    }

    /// Gives back the memory the reads so far keep resident (a merge reading whole blocks
    /// calls it as it goes). By default nothing is kept.
    fn release_pages(&self) {}

    /// Deletes the block where it is kept (retention, or merged into another); readers
    /// holding it keep what they had.
    fn remove(&self) -> std::io::Result<()>;
}
