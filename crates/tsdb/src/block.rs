//! Blocks: immutable files of compressed chunks for one tenant and one time window.
//!
//! Layout: header (magic, version, sequence, min/max time, CRC), then every series' chunk, then
//! the index section (for each series in key order: key, chunk position, length, chunk CRC,
//! time range, count and, from version 2, the last sample's value; from version 3 zstd
//! compressed behind its raw length), then a footer (index position, length and CRC, closing
//! magic). A block is written to a temporary file, fsynced and renamed, so a torn block is
//! never visible. The sequence number orders blocks: where two hold the same timestamp, the
//! higher one was written later and wins.
//!
//! Opening a block verifies its header, footer and index checksum but keeps only the mapping:
//! the index is parsed when first needed and kept in a process-wide cache bounded in bytes
//! ([`set_index_cache_bytes`]), so memory does not grow with series times blocks. Readers
//! keep the chunk positions they planned with, not the index.

use crate::codec::{self, put as varint, unzig, zig};
use crate::index::FrozenIndex;
use crate::TsdbError;
use memmap2::Mmap;
use parking_lot::Mutex;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use strata_model::{Fields, Sample, SeriesKey, SeriesKeyRef};

const MAGIC: &[u8; 8] = b"STRBLK\0\x01";
const END: &[u8; 4] = b"SBLK";
/// Version 2 adds each chunk's last value to the index; version 3 stores the index compressed
/// (its raw length, then zstd of it: sorted label keys repeat most of their bytes, and the
/// index of a short block can outweigh its chunks). Versions 1 and 2 are still read.
const VERSION: u32 = 3;
/// zstd level of the index: it is compressed once per block and read once per open.
const INDEX_ZSTD_LEVEL: i32 = 9;
/// Largest raw index accepted from a block (far above any real one: about 150 bytes a series).
const MAX_RAW_INDEX: u64 = 1 << 32;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;
const FOOTER_LEN: usize = 8 + 8 + 4 + 4;

/// Where a series' chunk lies in a block.
#[derive(Debug, Clone, Copy)]
pub struct ChunkMeta {
    offset: u64,
    len: u32,
    crc: u32,
    /// First timestamp.
    pub min_t: i64,
    /// Last timestamp.
    pub max_t: i64,
    /// Samples in the chunk.
    pub count: u32,
    /// The value of the last sample (at `max_t`), when the block records it (version 2):
    /// the latest sample is then known without decoding.
    pub last: Option<f64>,
}

/// A series' samples ready to be written: its key and its encoded chunk.
pub struct EncodedSeries {
    /// The series.
    pub key: SeriesKey,
    /// `codec::encode` output.
    pub chunk: Vec<u8>,
    /// First timestamp.
    pub min_t: i64,
    /// Last timestamp.
    pub max_t: i64,
    /// Samples.
    pub count: u32,
    /// The last sample's value.
    pub last: f64,
}

impl EncodedSeries {
    /// Encodes sorted, deduplicated samples (at least one).
    pub fn new(key: SeriesKey, samples: &[Sample]) -> EncodedSeries {
        EncodedSeries {
            key,
            chunk: codec::encode(samples, true),
            min_t: samples.first().map_or(0, |s| s.timestamp),
            max_t: samples.last().map_or(0, |s| s.timestamp),
            count: samples.len() as u32,
            last: samples.last().map_or(0.0, |s| s.value),
        }
    }
}

/// An open block: its file mapped, its index parsed on demand (see [`Block::index`]).
pub struct Block {
    /// Its file.
    pub path: PathBuf,
    /// Write order among blocks.
    pub seq: u64,
    /// Earliest timestamp held.
    pub min_t: i64,
    /// Latest timestamp held.
    pub max_t: i64,
    /// Bytes on disk.
    pub bytes: u64,
    version: u32,
    /// Where the index section lies in the file (its checksum verified at open).
    index_at: usize,
    index_end: usize,
    /// This block's entry in the index cache.
    uid: u64,
    /// The parsed index while anyone (the cache or a reader) holds it.
    loaded: Mutex<Weak<BlockIndex>>,
    map: Mmap,
}

/// A block's parsed index: its series, numbered in key order, and where their chunks lie.
pub struct BlockIndex {
    /// Series, numbered in key order.
    pub index: FrozenIndex,
    chunks: Vec<ChunkMeta>,
    /// About how much memory it holds.
    bytes: usize,
}

impl BlockIndex {
    /// The chunk metadata of series `id`.
    pub fn meta(&self, id: u32) -> ChunkMeta {
        self.chunks[id as usize]
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// The series with `key`, if present (keys are sorted).
    pub fn find(&self, key: SeriesKeyRef<'_>) -> Option<u32> {
        let (mut lo, mut hi) = (0usize, self.chunks.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.index.key(mid as u32).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid as u32),
            }
        }
        None
    }
}

/// Default bound of the index cache, bytes.
pub const DEFAULT_INDEX_CACHE_BYTES: usize = 256 << 20;

/// Parsed block indexes, the least recently used dropped first past the byte budget. Shared
/// by every storage in the process, so the bound holds however many shards there are.
struct IndexCache {
    budget: usize,
    used: usize,
    tick: u64,
    /// Few (one per block read lately): a list is quicker than a map to keep in order.
    entries: Vec<CacheEntry>,
}

struct CacheEntry {
    uid: u64,
    tick: u64,
    bytes: usize,
    index: Arc<BlockIndex>,
}

static INDEX_CACHE: Mutex<IndexCache> = Mutex::new(IndexCache {
    budget: DEFAULT_INDEX_CACHE_BYTES,
    used: 0,
    tick: 0,
    entries: Vec::new(),
});

static NEXT_UID: AtomicU64 = AtomicU64::new(0);

/// Bounds the memory held by parsed block indexes (of all storages in the process together).
/// An index a reader is using stays until the reader is done, even past the bound.
pub fn set_index_cache_bytes(bytes: usize) {
    let mut c = INDEX_CACHE.lock();
    c.budget = bytes;
    c.evict();
}

/// Bytes held by the index cache now (about).
pub fn index_cache_bytes() -> usize {
    INDEX_CACHE.lock().used
}

impl IndexCache {
    /// Marks `uid`'s entry used now, adding it (holding `index`) when missing.
    fn touch(&mut self, uid: u64, index: &Arc<BlockIndex>, bytes: usize) {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.iter_mut().find(|e| e.uid == uid) {
            Some(e) => e.tick = tick,
            None => {
                self.entries.push(CacheEntry {
                    uid,
                    tick,
                    bytes,
                    index: Arc::clone(index),
                });
                self.used += bytes;
                self.evict();
            }
        }
    }

    /// Drops the least recently used entries until within the budget; the newest stays.
    fn evict(&mut self) {
        while self.used > self.budget && self.entries.len() > 1 {
            let Some((i, _)) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.tick) else {
                break;
            };
            let e = self.entries.swap_remove(i);
            self.used -= e.bytes;
            drop(e.index);
        }
    }

    fn remove(&mut self, uid: u64) {
        if let Some(i) = self.entries.iter().position(|e| e.uid == uid) {
            let e = self.entries.swap_remove(i);
            self.used -= e.bytes;
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        INDEX_CACHE.lock().remove(self.uid);
    }
}

/// The file name of a block.
pub fn file_name(seq: u64, min_t: i64, max_t: i64) -> String {
    format!("{seq:016}_{min_t}_{max_t}.blk")
}

impl Block {
    /// Writes a block of `series` (sorted by key, unique) into `dir` atomically and opens it.
    pub fn write(dir: &Path, seq: u64, series: Vec<EncodedSeries>) -> Result<Block, TsdbError> {
        Block::write_version(dir, seq, series, VERSION)
    }

    /// As [`Block::write`], in format `version` (older versions only for tests).
    ///
    /// Streams to the file: each chunk is freed once written and each key once indexed, and
    /// the index is compressed as it is produced, so a flush holds neither a copy of the block
    /// nor its raw index.
    fn write_version(
        dir: &Path,
        seq: u64,
        mut series: Vec<EncodedSeries>,
        version: u32,
    ) -> Result<Block, TsdbError> {
        series.sort_by(|a, b| a.key.cmp(&b.key));
        let min_t = series.iter().map(|s| s.min_t).min().unwrap_or(0);
        let max_t = series.iter().map(|s| s.max_t).max().unwrap_or(0);
        std::fs::create_dir_all(dir).map_err(TsdbError::io(dir))?;
        let path = dir.join(file_name(seq, min_t, max_t));
        let tmp = path.with_extension("tmp");
        let f = File::create(&tmp).map_err(TsdbError::io(&tmp))?;
        let mut w = Checksummed {
            out: BufWriter::with_capacity(1 << 20, f),
            crc: crc32fast::Hasher::new(),
            at: 0,
        };
        let io = |source: std::io::Error| TsdbError::Io {
            path: tmp.clone(),
            source,
        };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&seq.to_le_bytes());
        header.extend_from_slice(&min_t.to_le_bytes());
        header.extend_from_slice(&max_t.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        w.write_all(&header).map_err(&io)?;
        let mut metas = Vec::with_capacity(series.len());
        for s in &mut series {
            let chunk = std::mem::take(&mut s.chunk);
            metas.push((w.at, chunk.len() as u64, crc32fast::hash(&chunk)));
            w.write_all(&chunk).map_err(&io)?;
        }
        let index_at = w.at;
        w.crc = crc32fast::Hasher::new();
        let mut index = if version >= 3 {
            IndexSink::Zstd(
                zstd::stream::Encoder::new(Vec::new(), INDEX_ZSTD_LEVEL).map_err(&io)?,
                0,
            )
        } else {
            IndexSink::Plain(&mut w)
        };
        let mut entry = Vec::with_capacity(256);
        varint(&mut entry, series.len() as u64);
        for (s, (off, len, crc)) in series.into_iter().zip(metas) {
            let k = s.key.as_bytes();
            varint(&mut entry, k.len() as u64);
            entry.extend_from_slice(k);
            varint(&mut entry, off);
            varint(&mut entry, len);
            entry.extend_from_slice(&crc.to_le_bytes());
            varint(&mut entry, zig(s.min_t));
            varint(&mut entry, zig(s.max_t));
            varint(&mut entry, s.count as u64);
            if version >= 2 {
                entry.extend_from_slice(&s.last.to_bits().to_le_bytes());
            }
            index.write_all(&entry).map_err(&io)?;
            entry.clear();
        }
        if let IndexSink::Zstd(z, raw_len) = index {
            let z = z.finish().map_err(&io)?;
            w.write_all(&raw_len.to_le_bytes()).map_err(&io)?;
            w.write_all(&z).map_err(&io)?;
        }
        let index_crc = w.crc.clone().finalize();
        let index_len = w.at - index_at;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&index_at.to_le_bytes());
        footer.extend_from_slice(&index_len.to_le_bytes());
        footer.extend_from_slice(&index_crc.to_le_bytes());
        footer.extend_from_slice(END);
        w.write_all(&footer).map_err(&io)?;
        let f = w.out.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(&io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(TsdbError::io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(TsdbError::io(dir))?;
        Block::open(&path)
    }

    /// Opens and verifies a block's header, footer and index.
    pub fn open(path: &Path) -> Result<Block, TsdbError> {
        let f = File::open(path).map_err(TsdbError::io(path))?;
        // Safety: blocks are immutable once renamed into place; nothing writes them again.
        let map = unsafe { Mmap::map(&f) }.map_err(TsdbError::io(path))?;
        let bad = |reason: String| TsdbError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let b: &[u8] = &map;
        if b.len() < HEADER_LEN + FOOTER_LEN || &b[..8] != MAGIC || &b[b.len() - 4..] != END {
            return Err(bad("not a block file (bad magic or too short)".into()));
        }
        let rd64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let rd32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..HEADER_LEN - 4]) != rd32(HEADER_LEN - 4) {
            return Err(bad("header checksum mismatch".into()));
        }
        let version = rd32(8);
        if !(1..=VERSION).contains(&version) {
            return Err(bad(format!("unsupported block version {version}")));
        }
        let (seq, min_t, max_t) = (rd64(12), rd64(20) as i64, rd64(28) as i64);
        // The storage numbers the next block after the highest sequence it finds.
        if seq == u64::MAX {
            return Err(bad("sequence number out of range".into()));
        }
        let f_at = b.len() - FOOTER_LEN;
        let (index_at, index_len, index_crc) = (
            rd64(f_at) as usize,
            rd64(f_at + 8) as usize,
            rd32(f_at + 16),
        );
        let index = index_at
            .checked_add(index_len)
            .filter(|e| *e == f_at && index_at >= HEADER_LEN)
            .map(|_| &b[index_at..f_at])
            .ok_or_else(|| bad("index position out of range".into()))?;
        if crc32fast::hash(index) != index_crc {
            return Err(bad("index checksum mismatch".into()));
        }
        Ok(Block {
            path: path.to_path_buf(),
            seq,
            min_t,
            max_t,
            bytes: b.len() as u64,
            version,
            index_at,
            index_end: f_at,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            loaded: Mutex::new(Weak::new()),
            map,
        })
    }

    /// The block's index: from the cache, else parsed from the file (and cached).
    pub fn index(&self) -> Result<Arc<BlockIndex>, TsdbError> {
        let mut loaded = self.loaded.lock();
        if let Some(ix) = loaded.upgrade() {
            let bytes = ix.bytes;
            INDEX_CACHE.lock().touch(self.uid, &ix, bytes);
            return Ok(ix);
        }
        let ix = Arc::new(self.parse_index()?);
        INDEX_CACHE.lock().touch(self.uid, &ix, ix.bytes);
        *loaded = Arc::downgrade(&ix);
        Ok(ix)
    }

    /// Parses the index section (its checksum was verified at open).
    fn parse_index(&self) -> Result<BlockIndex, TsdbError> {
        let (path, version, index_at) = (&self.path, self.version, self.index_at);
        let bad = |reason: String| TsdbError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let index = &self.map[index_at..self.index_end];
        let unpacked;
        let index = if version >= 3 {
            let (len, z) = index
                .split_first_chunk::<8>()
                .ok_or_else(|| bad("index truncated".into()))?;
            let len = u64::from_le_bytes(*len);
            if len > MAX_RAW_INDEX {
                return Err(bad(format!("index of {len} bytes is over the limit")));
            }
            unpacked =
                codec::zstd_exact(z, len).ok_or_else(|| bad("index does not decompress".into()))?;
            &unpacked[..]
        } else {
            index
        };
        let mut r = Reader { b: index, p: 0 };
        let n = r.varint().ok_or_else(|| bad("index truncated".into()))?;
        // Keys and metadata take at least 20 bytes a series: a count beyond that is damage.
        let room = index.len() / 20;
        // Keys are part of the index: its length bounds theirs, so the buffer never grows by
        // copying (the unused end is given back below).
        let mut keys = Vec::with_capacity(index.len());
        let mut ends: Vec<u32> = Vec::with_capacity((n as usize).min(room));
        let mut chunks = Vec::with_capacity((n as usize).min(room));
        for i in 0..n {
            let entry = (|| {
                let klen = r.varint()? as usize;
                let key = SeriesKeyRef::parse(r.bytes(klen)?)?;
                let offset = r.varint()?;
                let len = u32::try_from(r.varint()?).ok()?;
                let crc = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?);
                let min_t = unzig(r.varint()?);
                let max_t = unzig(r.varint()?);
                let count = u32::try_from(r.varint()?).ok()?;
                let last = if version >= 2 {
                    Some(f64::from_bits(u64::from_le_bytes(
                        r.bytes(8)?.try_into().ok()?,
                    )))
                } else {
                    None
                };
                Some((
                    key,
                    ChunkMeta {
                        offset,
                        len,
                        crc,
                        min_t,
                        max_t,
                        count,
                        last,
                    },
                ))
            })();
            let (key, meta) = entry.ok_or_else(|| bad(format!("index entry {i} damaged")))?;
            let end = meta.offset.checked_add(meta.len as u64);
            if meta.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > index_at as u64) {
                return Err(bad(format!("index entry {i} points outside the chunks")));
            }
            // The previous key runs from the end of the one before it to the buffer's end.
            let prev_at = ends.len().checked_sub(2).map_or(0, |j| ends[j] as usize);
            if i > 0 && SeriesKeyRef::new_unchecked(&keys[prev_at..]) >= key {
                return Err(bad(format!("index entry {i} out of order")));
            }
            keys.extend_from_slice(key.as_bytes());
            let end = u32::try_from(keys.len()).map_err(|_| bad("index keys over 4 GiB".into()))?;
            ends.push(end);
            chunks.push(meta);
        }
        if r.p != index.len() {
            return Err(bad("trailing bytes in index".into()));
        }
        keys.shrink_to_fit();
        chunks.shrink_to_fit();
        let index =
            FrozenIndex::build(keys, ends).ok_or_else(|| bad("index keys over 4 GiB".into()))?;
        Ok(BlockIndex {
            bytes: std::mem::size_of::<BlockIndex>()
                + index.heap_bytes()
                + chunks.capacity() * std::mem::size_of::<ChunkMeta>(),
            index,
            chunks,
        })
    }

    /// How many samples of chunk `m` lie in `[start, end]`, as far as known without decoding:
    /// all of them when the range covers the chunk, an exact count from the header of a chunk
    /// of evenly spaced samples (when it agrees with the index), else 0.
    pub fn known_in_range(&self, m: &ChunkMeta, start: i64, end: i64) -> usize {
        if start <= m.min_t && m.max_t <= end {
            return m.count as usize;
        }
        let Some(data) = self
            .map
            .get(m.offset as usize..(m.offset as usize).saturating_add(m.len as usize))
        else {
            return 0;
        };
        match codec::regular_in_range(data, start, end) {
            Some((k, n, first)) if n == u64::from(m.count) && first == m.min_t => {
                k.min(m.count as usize)
            }
            _ => 0,
        }
    }

    /// Decodes all of the chunk `m` (of series `key`), appending its samples to `out`; checks
    /// the chunk's CRC.
    pub fn read(
        &self,
        m: &ChunkMeta,
        key: SeriesKeyRef<'_>,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError> {
        self.read_range(m, key, i64::MIN, i64::MAX, Fields::All, out)
    }

    /// Decodes at least the samples in `[start, end]` of chunk `m` (of series `key`; whole
    /// pages of the chunk, see [`codec::decode_range`]), appending them to `out`; checks the
    /// chunk's CRC.
    pub fn read_range(
        &self,
        m: &ChunkMeta,
        key: SeriesKeyRef<'_>,
        start: i64,
        end: i64,
        fields: Fields,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError> {
        let data = &self.map[m.offset as usize..m.offset as usize + m.len as usize];
        let bad = |reason: String| TsdbError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if crc32fast::hash(data) != m.crc {
            return Err(bad(format!("chunk of series {key:?} fails its checksum")));
        }
        let before = out.len();
        codec::decode_range(data, start, end, fields, out)
            .map_err(|e| bad(format!("chunk of series {key:?}: {e}")))?;
        let got = out.len() - before;
        let whole = start <= m.min_t && end >= m.max_t;
        if got > m.count as usize || (whole && got != m.count as usize) {
            return Err(bad(format!(
                "chunk of series {key:?} holds a different sample count than its index"
            )));
        }
        Ok(())
    }
}

/// A file being written, with its position and the CRC of what was written since the last
/// reset.
struct Checksummed {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    at: u64,
}

impl Write for Checksummed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Where index entries go: straight into the file (versions 1 and 2), or through zstd,
/// counting the raw bytes (version 3 writes their count before the compressed index).
enum IndexSink<'a> {
    Plain(&'a mut Checksummed),
    Zstd(zstd::stream::Encoder<'static, Vec<u8>>, u64),
}

impl Write for IndexSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            IndexSink::Plain(w) => w.write(buf),
            IndexSink::Zstd(z, raw) => {
                let n = z.write(buf)?;
                *raw += n as u64;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            IndexSink::Plain(w) => w.flush(),
            IndexSink::Zstd(z, _) => z.flush(),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.p)?;
            self.p += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::{Block, EncodedSeries, VERSION};
    use strata_model::{Sample, SeriesKey};

    fn series(name: &str, n: i64) -> EncodedSeries {
        let key = SeriesKey::from_sorted_pairs([(&b"__name__"[..], name.as_bytes())]);
        let samples: Vec<Sample> = (0..n)
            .map(|i| Sample::new(i * 1000, i as f64 / 4.0))
            .collect();
        EncodedSeries::new(key, &samples)
    }

    /// Past the cache's budget, the least recently used index is dropped (once no reader holds
    /// it) and parsed again when next needed.
    #[test]
    fn indexes_past_the_budget_are_dropped_and_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<Block> = (1..=3)
            .map(|seq| {
                Block::write(dir.path(), seq, vec![series("a", 10), series("b", 5)]).unwrap()
            })
            .collect();
        assert!(
            blocks.iter().all(|b| b.loaded.lock().upgrade().is_none()),
            "none parsed at open"
        );
        super::set_index_cache_bytes(1);
        for b in &blocks {
            drop(b.index().unwrap());
        }
        // Only the newest stays; a reader's index stays while it is held.
        let held = blocks[2].index().unwrap();
        assert!(blocks[0].loaded.lock().upgrade().is_none());
        assert!(blocks[1].loaded.lock().upgrade().is_none());
        drop(blocks[0].index().unwrap());
        assert!(
            blocks[2].loaded.lock().upgrade().is_some(),
            "held by a reader"
        );
        super::set_index_cache_bytes(super::DEFAULT_INDEX_CACHE_BYTES);
        let ix = blocks[1].index().unwrap();
        let mut out = Vec::new();
        blocks[1]
            .read(&ix.meta(0), ix.index.key(0), &mut out)
            .unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(held.len(), 2);
    }

    /// Version 2 records each chunk's last value, version 3 compresses the index; older blocks
    /// still open and read the same samples.
    #[test]
    fn every_version_opens_and_reads_alike() {
        let dir = tempfile::tempdir().unwrap();
        let all = || vec![series("a", 900), series("b", 10), series("c", 1)];
        let blocks: Vec<Block> = (1..=VERSION)
            .map(|v| Block::write_version(&dir.path().join(format!("v{v}")), 1, all(), v).unwrap())
            .collect();
        assert_eq!(blocks[0].index().unwrap().meta(0).last, None);
        assert_eq!(blocks[1].index().unwrap().meta(0).last, Some(899.0 / 4.0));
        let current = Block::write(&dir.path().join("now"), 1, all()).unwrap();
        assert_eq!(
            std::fs::read(&current.path).unwrap(),
            std::fs::read(&blocks[VERSION as usize - 1].path).unwrap()
        );
        for id in 0..3 {
            let read = |b: &Block| {
                let mut out = Vec::new();
                let b = Block::open(&b.path).unwrap();
                let ix = b.index().unwrap();
                b.read(&ix.meta(id), ix.index.key(id), &mut out).unwrap();
                out
            };
            let want = read(&blocks[0]);
            assert_eq!(want.len(), [900, 10, 1][id as usize]);
            for b in &blocks[1..] {
                assert_eq!(read(b), want);
                let (ix, first) = (b.index().unwrap(), blocks[0].index().unwrap());
                assert_eq!(ix.index.key(id), first.index.key(id));
            }
        }
        // Keys of a fleet share most of their bytes: the compressed index is much smaller.
        let fleet = || {
            (0..400)
                .map(|i| {
                    let dev = format!("dev-{:05}", i / 2);
                    let site = format!("site-{:03}", i / 40);
                    let name = ["temperature_celsius", "humidity_percent"][i % 2];
                    let key = SeriesKey::from_sorted_pairs([
                        (&b"__name__"[..], name.as_bytes()),
                        (b"device", dev.as_bytes()),
                        (b"site", site.as_bytes()),
                    ]);
                    let samples = [Sample::new(0, i as f64), Sample::new(15_000, 1.5)];
                    EncodedSeries::new(key, &samples)
                })
                .collect::<Vec<_>>()
        };
        let size = |v: u32| {
            let b = Block::write_version(&dir.path().join("fleet"), v.into(), fleet(), v).unwrap();
            std::fs::metadata(&b.path).unwrap().len()
        };
        let (v2, v3) = (size(2), size(3));
        assert!(v3 * 2 < v2, "version 2: {v2} bytes, version 3: {v3}");
    }
}
