//! Blocks of formats 1 to 3, whose index is a list of entries to be parsed whole (from
//! version 2 with each chunk's last value, from version 3 zstd-compressed behind its raw
//! length): rewritten in the current format when opened, chunks copied as they are, so every
//! block is read in place afterwards. The rewrite goes through a [`BlockWriter`], so a crash
//! during it leaves the old block (and a temporary file removed at the next open).

use crate::block::{Block, BlockWriter, ChunkMeta, HEADER_LEN};
use crate::block_index::Reader;
use crate::codec::{self, unzig};
use crate::TsdbError;
use std::path::Path;
use strata_model::{Sample, SeriesKeyRef};

/// Largest raw index accepted from a block (far above any real one: about 150 bytes a series).
const MAX_RAW_INDEX: u64 = 1 << 32;

/// Rewrites the block at `path` (format `version`, its file `file`, its index
/// `file[index_at..index_end]`, checksum verified) as block `seq` in the current format, in
/// the same directory; returns the new block (its name is the old one's when the times agree).
pub(crate) fn rewrite(
    path: &Path,
    version: u32,
    file: &[u8],
    index_at: usize,
    index_end: usize,
    seq: u64,
) -> Result<Block, TsdbError> {
    let bad = |reason: String| TsdbError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let index = &file[index_at..index_end];
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut w = BlockWriter::create(dir, seq)?;
    let mut r = Reader::new(index);
    let n = r.varint().ok_or_else(|| bad("index truncated".into()))?;
    let mut prev: Option<SeriesKeyRef<'_>> = None;
    let mut samples: Vec<Sample> = Vec::new();
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
                ChunkMeta::new(offset, len, crc, min_t, max_t, count, last),
            ))
        })();
        let (key, m) = entry.ok_or_else(|| bad(format!("index entry {i} damaged")))?;
        let end = m.offset().checked_add(u64::from(m.encoded_len()));
        if m.offset() < HEADER_LEN as u64 || end.is_none_or(|e| e > index_at as u64) {
            return Err(bad(format!("index entry {i} points outside the chunks")));
        }
        if prev.is_some_and(|p| p >= key) {
            return Err(bad(format!("index entry {i} out of order")));
        }
        prev = Some(key);
        let chunk = &file[m.offset() as usize..end.expect("checked") as usize];
        // Version 1 did not record the last value: the chunk has it (a damaged chunk gives
        // NaN, and keeps failing its check when read).
        let last = m.last.unwrap_or_else(|| {
            samples.clear();
            let ok = crc32fast::hash(chunk) == m.crc()
                && codec::decode_range(
                    chunk,
                    i64::MIN,
                    i64::MAX,
                    strata_model::Fields::All,
                    &mut samples,
                )
                .is_ok();
            samples.last().filter(|_| ok).map_or(f64::NAN, |s| s.value)
        });
        w.push_chunk(key, chunk, m.crc(), m.min_t, m.max_t, m.count, last)?;
    }
    if r.remaining() != 0 {
        return Err(bad("trailing bytes in index".into()));
    }
    w.finish()
}

/// Writes `series` (sorted by key, unique) as a block of format `version` (1 to 3), for tests
/// of the rewrite.
#[cfg(test)]
pub(crate) fn write(
    dir: &Path,
    seq: u64,
    series: &[(strata_model::SeriesKey, Vec<Sample>)],
    version: u32,
) -> std::path::PathBuf {
    use crate::block::{file_name, footer, header};
    use crate::codec::{put as varint, zig};
    let min_t = series.iter().map(|s| s.1[0].timestamp).min().unwrap_or(0);
    let max_t = series
        .iter()
        .map(|s| s.1.last().unwrap().timestamp)
        .max()
        .unwrap_or(0);
    let mut file = header(version, seq, min_t, max_t);
    let mut index = Vec::new();
    varint(&mut index, series.len() as u64);
    for (key, samples) in series {
        let chunk = codec::encode(samples, true);
        let k = key.as_bytes();
        varint(&mut index, k.len() as u64);
        index.extend_from_slice(k);
        varint(&mut index, file.len() as u64);
        varint(&mut index, chunk.len() as u64);
        index.extend_from_slice(&crc32fast::hash(&chunk).to_le_bytes());
        varint(&mut index, zig(samples[0].timestamp));
        varint(&mut index, zig(samples.last().unwrap().timestamp));
        varint(&mut index, samples.len() as u64);
        if version >= 2 {
            index.extend_from_slice(&samples.last().unwrap().value.to_bits().to_le_bytes());
        }
        file.extend_from_slice(&chunk);
    }
    if version >= 3 {
        let z = zstd::bulk::compress(&index, 9).unwrap();
        let mut packed = (index.len() as u64).to_le_bytes().to_vec();
        packed.extend_from_slice(&z);
        index = packed;
    }
    let index_at = file.len() as u64;
    file.extend_from_slice(&index);
    let f = footer(index_at, index.len() as u64, crc32fast::hash(&index));
    file.extend_from_slice(&f);
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(file_name(seq, min_t, max_t));
    std::fs::write(&path, &file).unwrap();
    path
}

#[cfg(test)]
mod tests {
    use crate::{SeriesLimiter, Tsdb, TsdbOptions};
    use strata_model::{Labels, Sample, Tenant};

    /// A data directory whose blocks are all of older formats opens: they are rewritten, the
    /// samples read back, newer writes merge with them.
    #[test]
    fn a_data_directory_of_old_blocks_opens() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = Tenant::new("acme").unwrap();
        let tdir = crate::layout::tenant_dir(dir.path(), &tenant);
        let key = |i: u32| {
            Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())])
                .unwrap()
                .key()
        };
        for v in 1..crate::block::VERSION {
            let mut series: Vec<_> = (0..50u32)
                .map(|i| (key(i), vec![Sample::new(i64::from(v) * 1000, f64::from(i))]))
                .collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            super::write(&tdir, u64::from(v), &series, v);
        }
        let opts = TsdbOptions {
            retention_ms: i64::MAX / 2,
            ..TsdbOptions::default()
        };
        let db = Tsdb::open(dir.path(), opts.clone(), SeriesLimiter::new(1000)).unwrap();
        for i in [0u32, 17, 49] {
            let got = db
                .read_series(&tenant, key(i).as_ref(), i64::MIN, i64::MAX)
                .unwrap();
            let want: Vec<Sample> = (1..crate::block::VERSION)
                .map(|v| Sample::new(i64::from(v) * 1000, f64::from(i)))
                .collect();
            assert_eq!(got, want);
        }
        drop(db);
        for f in std::fs::read_dir(&tdir).unwrap() {
            let b = std::fs::read(f.unwrap().path()).unwrap();
            assert_eq!(b[8], crate::block::VERSION as u8);
        }
    }
}
