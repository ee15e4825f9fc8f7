//! Blocks: immutable files of compressed chunks for one tenant and one time window.
//!
//! Layout: header (magic, version, sequence, min/max time, CRC), then every series' chunk, then
//! the index section (format 4, read in place: see [`crate::block_index`]), then a footer
//! (index position, length and CRC, closing magic). A block is written to a temporary file by
//! a [`BlockWriter`], series by series, fsynced and renamed, so a torn block is never visible
//! and a writer holds no chunk after writing it. The sequence number orders blocks: where two
//! hold the same timestamp, the higher one was written later and wins.
//!
//! Opening a block verifies its header, footer and index checksum (read through the file, not
//! the mapping, so opening touches no page a reader keeps) and keeps only the mapping and the
//! index's directory. Blocks of formats 1 to 3 (an index to be parsed whole) are rewritten in
//! format 4 when opened (see [`crate::legacy`]).

use crate::block_index::{BuildError, Damaged, Directory, IndexBuilder, IndexView};
use crate::codec;
use crate::reader::{BlockInfo, BlockReader};
use crate::TsdbError;
use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use strata_model::{Fields, Matcher, Sample, SeriesKeyRef};

pub(crate) const MAGIC: &[u8; 8] = b"STRBLK\0\x01";
pub(crate) const END: &[u8; 4] = b"SBLK";
/// Version 4 reads its index in place. Versions 1 to 3 (parsed index; 2 adds each chunk's
/// last value, 3 compresses the index) are rewritten as 4 when opened.
pub(crate) const VERSION: u32 = 4;
pub(crate) const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;
pub(crate) const FOOTER_LEN: usize = 8 + 8 + 4 + 4;

/// Where a series' chunk lies in a block, and what is known of it without decoding: its time
/// bounds, its sample count and (where recorded) its last value. The offset, length and CRC
/// locate and check the chunk where its [`BlockReader`] keeps it; their meaning is the reader's.
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
    /// The value of the last sample (at `max_t`), when the block records it (from version 2):
    /// the latest sample is then known without decoding.
    pub last: Option<f64>,
}

impl ChunkMeta {
    /// A chunk at `offset` of `len` bytes with CRC `crc`, holding `count` samples from `min_t`
    /// to `max_t`, the last one's value `last` when known.
    pub fn new(
        offset: u64,
        len: u32,
        crc: u32,
        min_t: i64,
        max_t: i64,
        count: u32,
        last: Option<f64>,
    ) -> ChunkMeta {
        ChunkMeta {
            offset,
            len,
            crc,
            min_t,
            max_t,
            count,
            last,
        }
    }

    /// Where the chunk starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length in bytes.
    pub fn encoded_len(&self) -> u32 {
        self.len
    }

    /// The CRC32 of its bytes.
    pub fn crc(&self) -> u32 {
        self.crc
    }
}

/// An open block: its file mapped, its index read in place.
pub struct Block {
    /// Its file.
    pub path: PathBuf,
    /// Its sequence number, time bounds and size on disk.
    pub info: BlockInfo,
    /// Where the index section lies in the file (its checksum verified at open).
    index_at: usize,
    index_end: usize,
    dir: Directory,
    map: Mmap,
}

/// The file name of a block.
pub fn file_name(seq: u64, min_t: i64, max_t: i64) -> String {
    format!("{seq:016}_{min_t}_{max_t}.blk")
}

/// The header of a block (with its CRC).
pub(crate) fn header(version: u32, seq: u64, min_t: i64, max_t: i64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&min_t.to_le_bytes());
    h.extend_from_slice(&max_t.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// The footer of a block whose index is `index_at..index_at + index_len`.
pub(crate) fn footer(index_at: u64, index_len: u64, index_crc: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(FOOTER_LEN);
    f.extend_from_slice(&index_at.to_le_bytes());
    f.extend_from_slice(&index_len.to_le_bytes());
    f.extend_from_slice(&index_crc.to_le_bytes());
    f.extend_from_slice(END);
    f
}

/// Writes a block series by series: each chunk goes to the file as it comes (in any order of
/// keys, each key once), the index when the block is finished. Dropped unfinished, it removes
/// its temporary file.
pub struct BlockWriter {
    dir: PathBuf,
    seq: u64,
    tmp: PathBuf,
    out: Option<Checksummed>,
    index: IndexBuilder,
    min_t: i64,
    max_t: i64,
}

impl BlockWriter {
    /// Starts block `seq` in `dir` (created if missing).
    pub fn create(dir: &Path, seq: u64) -> Result<BlockWriter, TsdbError> {
        std::fs::create_dir_all(dir).map_err(TsdbError::io(dir))?;
        let tmp = dir.join(format!("{seq:016}.tmp"));
        let f = File::create(&tmp).map_err(TsdbError::io(&tmp))?;
        let mut out = Checksummed {
            out: BufWriter::with_capacity(1 << 20, f),
            crc: crc32fast::Hasher::new(),
            at: 0,
        };
        // The real header, with the block's times, is written over this one at the end.
        out.write_all(&header(VERSION, seq, 0, 0))
            .map_err(TsdbError::io(&tmp))?;
        Ok(BlockWriter {
            dir: dir.to_path_buf(),
            seq,
            tmp,
            out: Some(out),
            index: IndexBuilder::new(),
            min_t: i64::MAX,
            max_t: i64::MIN,
        })
    }

    /// Writes a series' sorted, deduplicated samples (at least one).
    pub fn push(&mut self, key: SeriesKeyRef<'_>, samples: &[Sample]) -> Result<(), TsdbError> {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return Ok(());
        };
        let chunk = codec::encode(samples, true);
        let count = u32::try_from(samples.len()).map_err(|_| TsdbError::Corrupt {
            path: self.tmp.clone(),
            reason: format!("series {key:?} has more samples than a chunk holds"),
        })?;
        let crc = crc32fast::hash(&chunk);
        self.push_chunk(
            key,
            &chunk,
            crc,
            first.timestamp,
            last.timestamp,
            count,
            last.value,
        )
    }

    /// Writes an encoded chunk as it is, with the CRC it had (a block being rewritten: a chunk
    /// damaged before keeps failing its check).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_chunk(
        &mut self,
        key: SeriesKeyRef<'_>,
        chunk: &[u8],
        crc: u32,
        min_t: i64,
        max_t: i64,
        count: u32,
        last: f64,
    ) -> Result<(), TsdbError> {
        let out = self.out.as_mut().expect("a writer is used until finished");
        let offset = out.at;
        let len = u32::try_from(chunk.len()).map_err(|_| TsdbError::Corrupt {
            path: self.tmp.clone(),
            reason: format!("chunk of series {key:?} over 4 GiB"),
        })?;
        out.write_all(chunk).map_err(TsdbError::io(&self.tmp))?;
        let m = ChunkMeta::new(offset, len, crc, min_t, max_t, count, None);
        self.index.push(key, &m, last);
        self.min_t = self.min_t.min(min_t);
        self.max_t = self.max_t.max(max_t);
        Ok(())
    }

    /// Writes the index, makes the block durable and visible, and opens it. On failure the
    /// temporary file is removed.
    pub fn finish(mut self) -> Result<Block, TsdbError> {
        let done = self.write_rest();
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }

    fn write_rest(&mut self) -> Result<Block, TsdbError> {
        let mut w = self.out.take().expect("finished once");
        let tmp = self.tmp.clone();
        let io = |source: std::io::Error| TsdbError::Io {
            path: tmp.clone(),
            source,
        };
        let (min_t, max_t) = if self.index.len() == 0 {
            (0, 0)
        } else {
            (self.min_t, self.max_t)
        };
        let index_at = w.at;
        w.crc = crc32fast::Hasher::new();
        let index = std::mem::take(&mut self.index);
        index.write(min_t, &mut w).map_err(|e| match e {
            BuildError::Io(e) => io(e),
            BuildError::Duplicate(key) => TsdbError::Corrupt {
                path: tmp.clone(),
                reason: format!(
                    "series {:?} written twice",
                    SeriesKeyRef::new_unchecked(&key)
                ),
            },
            BuildError::TooLarge => TsdbError::Corrupt {
                path: tmp.clone(),
                reason: "block index over 4 GiB".into(),
            },
        })?;
        let index_crc = w.crc.clone().finalize();
        let index_len = w.at - index_at;
        w.write_all(&footer(index_at, index_len, index_crc))
            .map_err(&io)?;
        let f = w.out.into_inner().map_err(|e| io(e.into_error()))?;
        f.write_all_at(&header(VERSION, self.seq, min_t, max_t), 0)
            .map_err(&io)?;
        f.sync_all().map_err(&io)?;
        drop(f);
        let path = self.dir.join(file_name(self.seq, min_t, max_t));
        std::fs::rename(&tmp, &path).map_err(TsdbError::io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(TsdbError::io(&self.dir))?;
        Block::open(&path)
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Block {
    /// Writes a block of `series` (sorted samples, at least one each; keys unique) into `dir`
    /// and opens it.
    #[cfg(test)]
    pub fn write<'a>(
        dir: &Path,
        seq: u64,
        series: impl IntoIterator<Item = (SeriesKeyRef<'a>, &'a [Sample])>,
    ) -> Result<Block, TsdbError> {
        let mut w = BlockWriter::create(dir, seq)?;
        for (key, samples) in series {
            w.push(key, samples)?;
        }
        w.finish()
    }

    /// Opens and verifies a block's header, footer and index; a block of an older format is
    /// rewritten in the current one first.
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
        if index_at
            .checked_add(index_len)
            .is_none_or(|e| e != f_at || index_at < HEADER_LEN)
        {
            return Err(bad("index position out of range".into()));
        }
        if crc_of(&f, index_at, index_len).map_err(TsdbError::io(path))? != index_crc {
            return Err(bad("index checksum mismatch".into()));
        }
        if version < VERSION {
            let upgraded = crate::legacy::rewrite(path, version, b, index_at, f_at, seq)?;
            drop(map);
            if upgraded.path != path {
                std::fs::remove_file(path).map_err(TsdbError::io(path))?;
            }
            tracing::info!(path = %upgraded.path.display(), from = version, "rewrote a block in the current format");
            return Ok(upgraded);
        }
        let dir = Directory::read(&b[index_at..f_at]).map_err(|Damaged(r)| bad(r))?;
        Ok(Block {
            path: path.to_path_buf(),
            info: BlockInfo {
                seq,
                min_t,
                max_t,
                bytes: b.len() as u64,
            },
            index_at,
            index_end: f_at,
            dir,
            map,
        })
    }

    fn view(&self) -> IndexView<'_> {
        IndexView {
            b: &self.map[self.index_at..self.index_end],
            d: &self.dir,
        }
    }

    fn damaged(&self, Damaged(reason): Damaged) -> TsdbError {
        TsdbError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Checks that a chunk lies among the chunks.
    fn checked(&self, id: u32, m: ChunkMeta) -> Result<ChunkMeta, TsdbError> {
        let end = m.offset.checked_add(u64::from(m.len));
        if m.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > self.index_at as u64) {
            return Err(self.damaged(Damaged(format!(
                "series {id}'s chunk lies outside the chunks"
            ))));
        }
        Ok(m)
    }

    /// The encoded bytes of chunk `m` (checked by [`BlockReader::meta`]).
    pub(crate) fn chunk_bytes(&self, m: &ChunkMeta) -> &[u8] {
        &self.map[m.offset as usize..m.offset as usize + m.len as usize]
    }
}

impl BlockReader for Block {
    fn info(&self) -> BlockInfo {
        self.info
    }

    fn location(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> usize {
        self.dir.len()
    }

    fn select(&self, matchers: &[Matcher]) -> Result<Vec<u32>, TsdbError> {
        self.view().select(matchers).map_err(|e| self.damaged(e))
    }

    fn meta(&self, id: u32) -> Result<ChunkMeta, TsdbError> {
        let m = self.view().meta(id).map_err(|e| self.damaged(e))?;
        self.checked(id, m)
    }

    fn entry(&self, id: u32, key: &mut Vec<u8>) -> Result<ChunkMeta, TsdbError> {
        let m = self.view().entry(id, key).map_err(|e| self.damaged(e))?;
        self.checked(id, m)
    }

    fn find(&self, key: SeriesKeyRef<'_>) -> Result<Option<ChunkMeta>, TsdbError> {
        match self.view().find(key).map_err(|e| self.damaged(e))? {
            Some(id) => self.meta(id).map(Some),
            None => Ok(None),
        }
    }

    fn label_names(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), TsdbError> {
        self.view().label_names(f).map_err(|e| self.damaged(e))
    }

    fn label_values(&self, name: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<(), TsdbError> {
        self.view()
            .label_values(name, f)
            .map_err(|e| self.damaged(e))
    }

    /// Also counts exactly from the header of a chunk of evenly spaced samples (when it agrees
    /// with the index).
    fn known_in_range(&self, m: &ChunkMeta, start: i64, end: i64) -> usize {
        if start <= m.min_t && m.max_t <= end {
            return m.count as usize;
        }
        let data = self.chunk_bytes(m);
        match codec::regular_in_range(data, start, end) {
            Some((k, n, first)) if n == u64::from(m.count) && first == m.min_t => {
                k.min(m.count as usize)
            }
            _ => 0,
        }
    }

    /// Decodes whole pages of the chunk (see [`codec::decode_range`]); checks the chunk's CRC.
    fn read_range(
        &self,
        m: &ChunkMeta,
        key: SeriesKeyRef<'_>,
        start: i64,
        end: i64,
        fields: Fields,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError> {
        let data = self.chunk_bytes(m);
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

    /// Lets the kernel take back the pages of the block this process has read (they are read
    /// again from the file if needed).
    fn release_pages(&self) {
        // Safety: a read-only mapping of an immutable file; dropped pages are read again.
        let _ = unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) };
    }

    /// Unlinks the file: mappings held by readers stay valid until dropped.
    fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// The CRC of `len` bytes of `f` from `at`, read through the file: verifying a block's index
/// at open leaves no page of it mapped into the process.
fn crc_of(f: &File, at: usize, len: usize) -> std::io::Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (1 << 20).min(len.max(1))];
    let mut done = 0usize;
    while done < len {
        let n = buf.len().min(len - done);
        f.read_exact_at(&mut buf[..n], (at + done) as u64)?;
        crc.update(&buf[..n]);
        done += n;
    }
    Ok(crc.finalize())
}

/// A file being written, with its position and the CRC of what was written since the last
/// reset.
pub(crate) struct Checksummed {
    pub out: BufWriter<File>,
    pub crc: crc32fast::Hasher,
    pub at: u64,
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

#[cfg(test)]
mod tests {
    use super::{Block, BlockWriter, VERSION};
    use crate::reader::BlockReader;
    use strata_model::{Fields, Matcher, Sample, SeriesKey};

    fn samples(n: i64, scale: f64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample::new(i * 1000, i as f64 * scale))
            .collect()
    }

    fn fleet(n: usize) -> Vec<(SeriesKey, Vec<Sample>)> {
        let mut v: Vec<(SeriesKey, Vec<Sample>)> = (0..n)
            .map(|i| {
                let dev = format!("dev-{:05}", i / 2);
                let site = format!("site-{:03}", i / 40);
                let name = ["temperature_celsius", "humidity_percent"][i % 2];
                let key = SeriesKey::from_sorted_pairs([
                    (&b"__name__"[..], name.as_bytes()),
                    (b"device", dev.as_bytes()),
                    (b"site", site.as_bytes()),
                ]);
                (key, samples(1 + (i % 7) as i64, i as f64))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn contents(b: &Block) -> Vec<(Vec<u8>, Vec<Sample>, Option<f64>)> {
        let mut key = Vec::new();
        (0..b.len() as u32)
            .map(|id| {
                let m = b.entry(id, &mut key).unwrap();
                let mut out = Vec::new();
                b.read_range(
                    &m,
                    strata_model::SeriesKeyRef::new_unchecked(&key),
                    i64::MIN,
                    i64::MAX,
                    Fields::All,
                    &mut out,
                )
                .unwrap();
                (key.clone(), out, m.last)
            })
            .collect()
    }

    /// Blocks of every older format open, are rewritten in the current one in place, and read
    /// the same keys, samples and last values (computed from the chunk for version 1).
    #[test]
    fn older_formats_are_rewritten_and_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let series = fleet(300);
        let current = Block::write(
            &dir.path().join("now"),
            7,
            series.iter().map(|(k, s)| (k.as_ref(), s.as_slice())),
        )
        .unwrap();
        let want = contents(&current);
        assert_eq!(want.len(), 300);
        assert!(want
            .iter()
            .all(|(_, s, last)| *last == s.last().map(|x| x.value)));
        for v in 1..VERSION {
            let d = dir.path().join(format!("v{v}"));
            let path = crate::legacy::write(&d, 7, &series, v);
            let b = Block::open(&path).unwrap();
            assert_eq!(b.path, path, "same name");
            assert_eq!(std::fs::read(&path).unwrap()[8], VERSION as u8, "rewritten");
            assert_eq!(contents(&b), want, "version {v}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(&current.path).unwrap()
            );
            let files: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
            assert_eq!(files.len(), 1, "no leftovers");
        }
    }

    /// Series may come in any order; the index numbers them in label order, each chunk where
    /// it was written, and selects as the head does.
    #[test]
    fn any_order_in_label_order_out() {
        let dir = tempfile::tempdir().unwrap();
        let series = fleet(200);
        let mut w = BlockWriter::create(dir.path(), 3).unwrap();
        for (k, s) in series.iter().rev() {
            w.push(k.as_ref(), s).unwrap();
        }
        let b = w.finish().unwrap();
        let got = contents(&b);
        for ((k, s), (gk, gs, _)) in series.iter().zip(&got) {
            assert_eq!(k.as_bytes(), gk.as_slice());
            assert_eq!(s, gs);
        }
        let m = [
            Matcher::equal("site", "site-001"),
            Matcher::equal("__name__", "humidity_percent"),
        ];
        let ids = b.select(&m).unwrap();
        assert_eq!(ids.len(), 20);
        assert!(ids.iter().all(|&id| {
            let l = series[id as usize].0.labels();
            l.get("site") == Some("site-001") && l.get("__name__") == Some("humidity_percent")
        }));
        for (k, s) in &series {
            let m = b.find(k.as_ref()).unwrap().unwrap();
            assert_eq!(m.count as usize, s.len());
        }
    }

    /// A writer dropped before it finishes leaves nothing; a key written twice is refused.
    #[test]
    fn unfinished_and_duplicate_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let series = fleet(4);
        let mut w = BlockWriter::create(dir.path(), 1).unwrap();
        w.push(series[0].0.as_ref(), &series[0].1).unwrap();
        drop(w);
        let mut w = BlockWriter::create(dir.path(), 2).unwrap();
        w.push(series[1].0.as_ref(), &series[1].1).unwrap();
        w.push(series[1].0.as_ref(), &series[1].1).unwrap();
        let e = w.finish().err().unwrap().to_string();
        assert!(e.contains("written twice"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The index keeps each label string once: a fleet's series cost a few dozen bytes each.
    #[test]
    fn the_index_is_compact() {
        let dir = tempfile::tempdir().unwrap();
        let series: Vec<_> = fleet(20_000)
            .into_iter()
            .map(|(k, _)| (k, vec![Sample::new(0, 1.0)]))
            .collect();
        let b = Block::write(
            dir.path(),
            1,
            series.iter().map(|(k, s)| (k.as_ref(), s.as_slice())),
        )
        .unwrap();
        let per_series = (b.index_end - b.index_at) / series.len();
        let key_bytes = series[0].0.as_bytes().len();
        assert!(
            per_series < 64,
            "{per_series} bytes a series (keys of {key_bytes} bytes)"
        );
    }
}
