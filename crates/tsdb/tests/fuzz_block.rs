//! Fuzzing block files through the storage engine: whatever is appended reads back bit for
//! bit after flush, reopen and compaction; and a damaged block (bytes mutated as they lie, or
//! taken apart and mutated with every checksum made right again, so the damage reaches the
//! parsers behind the checksums) makes opening or reading fail with an error, never a panic
//! or an allocation out of proportion to the file.
//!
//! The structure-aware mutations know the block layout described in `src/block.rs` (header,
//! chunks, index, footer); [`Block`] is the only place that does.

#[path = "../../model/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{
    allocation_bound, config, float, largest_allocation, mutate, mutations, Mutation,
};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use strata_model::{Fields, Limits, Matcher, Sample, SelectHints, Storage, Tenant, WriteBatch};
use strata_tsdb::{SeriesLimiter, Tsdb, TsdbOptions};

const H: i64 = 3_600_000;

fn open(dir: &Path) -> Result<Tsdb, strata_tsdb::TsdbError> {
    let opts = TsdbOptions::default();
    Tsdb::open(
        dir,
        opts.clone(),
        SeriesLimiter::new(opts.max_series_per_metric),
    )
}

/// One write: tenant (0 or 1), series (0..4), samples `(ms before now, value)`.
type Write = (u8, u8, Vec<(i64, f64)>);

fn writes() -> impl Strategy<Value = Vec<Write>> {
    let sample = (
        prop_oneof![0i64..(30 * H), (0i64..4).prop_map(|i| i * H)],
        float(),
    );
    proptest::collection::vec(
        (0u8..2, 0u8..4, proptest::collection::vec(sample, 1..12)),
        1..6,
    )
}

const TENANTS: [&str; 2] = ["default", "t-2"];

fn labels(series: u8) -> Vec<(String, String)> {
    vec![
        ("__name__".into(), format!("m{}", series % 2)),
        ("s".into(), format!("v{series}")),
    ]
}

/// Expected contents: per (tenant, series), timestamp -> value bits (the last write wins).
type Expected = BTreeMap<(u8, u8), BTreeMap<i64, u64>>;

/// Appends `ws` (each write a batch of its own, in order) and records what must be stored.
fn apply(db: &Tsdb, ws: &[Write], now: i64, offset: &mut u64, want: &mut Expected) {
    for (tenant, series, samples) in ws {
        let mut b = WriteBatch::new(Tenant::new(TENANTS[*tenant as usize]).unwrap());
        let l = labels(*series);
        let mut pairs: Vec<(&[u8], &[u8])> = l
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let s: Vec<Sample> = samples
            .iter()
            .map(|(ago, v)| Sample::new(now - ago, *v))
            .collect();
        b.push_series(&mut pairs, &s, None, &Limits::default())
            .unwrap();
        db.append(&b, *offset);
        *offset += 1;
        let w = want.entry((*tenant, *series)).or_default();
        for x in &s {
            w.insert(x.timestamp, x.value.to_bits());
        }
    }
}

/// Every series of every tenant, whole.
fn select_all(
    db: &Tsdb,
) -> Result<Vec<(u8, strata_model::SeriesSamples)>, strata_model::StorageError> {
    let hints = SelectHints {
        start: i64::MIN,
        end: i64::MAX,
        max_samples: None,
        fields: Fields::All,
    };
    let mut out = Vec::new();
    for (t, tenant) in TENANTS.iter().enumerate() {
        let all = db.select(
            &Tenant::new(tenant).unwrap(),
            &[Matcher::regex("__name__", ".+", false).unwrap()],
            &hints,
        )?;
        out.extend(all.into_iter().map(|s| (t as u8, s)));
    }
    Ok(out)
}

/// Everything stored, in the shape of [`Expected`]; no series holds two samples at one time.
fn contents(db: &Tsdb) -> Expected {
    let mut got = Expected::new();
    for (t, s) in select_all(db).unwrap() {
        let series: u8 = s.labels.get("s").unwrap()[1..].parse().unwrap();
        let m = got.entry((t, series)).or_default();
        for x in s.samples {
            assert!(
                m.insert(x.timestamp, x.value.to_bits()).is_none(),
                "two samples at one timestamp"
            );
        }
    }
    got
}

/// Every block file under `dir`, sorted.
fn block_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "blk") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

proptest! {
    #![proptest_config(config(24))]

    /// Samples of any bits (NaN payloads, -0.0, overwrites, repeats) spread over many block
    /// windows read back exactly as written after flush, after reopen, and after compaction.
    #[test]
    fn blocks_round_trip(first in writes(), second in writes()) {
        let dir = tempfile::tempdir().unwrap();
        let now = strata_model::time::now_ms();
        let (mut offset, mut want) = (0, Expected::new());
        {
            let db = open(dir.path()).unwrap();
            apply(&db, &first, now, &mut offset, &mut want);
            db.flush().unwrap();
            prop_assert_eq!(&contents(&db), &want);
            // Overwrites of flushed samples, new ones beside them: the head beats the blocks.
            apply(&db, &second, now, &mut offset, &mut want);
            prop_assert_eq!(&contents(&db), &want);
            db.flush().unwrap();
        }
        prop_assert!(!block_files(dir.path()).is_empty());
        let db = open(dir.path()).unwrap();
        prop_assert_eq!(&contents(&db), &want);
        db.maintain(now).unwrap();
        prop_assert_eq!(&contents(&db), &want);
        drop(db);
        prop_assert_eq!(&contents(&open(dir.path()).unwrap()), &want);
    }
}

// ---- damage ----

/// A block taken apart along its layout: header (40 bytes: magic, version, sequence, min and
/// max time, CRC), chunks, index (from version 3 its raw length and zstd of it), footer (index
/// position and length, CRC, `SBLK`).
struct Block {
    header: Vec<u8>,
    chunks: Vec<u8>,
    version: u32,
    entries: Vec<Entry>,
}

/// One index entry, fields as stored (times zigzag encoded).
#[derive(Clone)]
struct Entry {
    key: Vec<u8>,
    offset: u64,
    len: u64,
    crc: u32,
    min_t: u64,
    max_t: u64,
    count: u64,
    last: Option<[u8; 8]>,
}

const HEADER: usize = 40;
const FOOTER: usize = 24;

fn varint(b: &[u8], p: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = b[*p];
        *p += 1;
        v |= ((x & 0x7f) as u64) << shift;
        if x < 0x80 {
            break;
        }
    }
    v
}

impl Block {
    fn parse(b: &[u8]) -> Block {
        let le64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let f_at = b.len() - FOOTER;
        let index_at = le64(f_at) as usize;
        let index = &b[index_at..f_at];
        let raw = if version >= 3 {
            zstd::decode_all(&index[8..]).unwrap()
        } else {
            index.to_vec()
        };
        let mut p = 0;
        let n = varint(&raw, &mut p);
        let entries = (0..n)
            .map(|_| {
                let klen = varint(&raw, &mut p) as usize;
                let key = raw[p..p + klen].to_vec();
                p += klen;
                let offset = varint(&raw, &mut p);
                let len = varint(&raw, &mut p);
                let crc = u32::from_le_bytes(raw[p..p + 4].try_into().unwrap());
                p += 4;
                let (min_t, max_t, count) = (
                    varint(&raw, &mut p),
                    varint(&raw, &mut p),
                    varint(&raw, &mut p),
                );
                let last = (version >= 2).then(|| {
                    p += 8;
                    raw[p - 8..p].try_into().unwrap()
                });
                Entry {
                    key,
                    offset,
                    len,
                    crc,
                    min_t,
                    max_t,
                    count,
                    last,
                }
            })
            .collect();
        assert_eq!(
            p,
            raw.len(),
            "the test's idea of the index layout is out of date"
        );
        Block {
            header: b[..HEADER].to_vec(),
            chunks: b[HEADER..index_at].to_vec(),
            version,
            entries,
        }
    }

    fn raw_index(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        fuzz_support::put_varint(&mut raw, self.entries.len() as u64);
        for e in &self.entries {
            fuzz_support::put_varint(&mut raw, e.key.len() as u64);
            raw.extend_from_slice(&e.key);
            fuzz_support::put_varint(&mut raw, e.offset);
            fuzz_support::put_varint(&mut raw, e.len);
            raw.extend_from_slice(&e.crc.to_le_bytes());
            for v in [e.min_t, e.max_t, e.count] {
                fuzz_support::put_varint(&mut raw, v);
            }
            if let Some(l) = e.last {
                raw.extend_from_slice(&l);
            }
        }
        raw
    }

    /// The file, with `raw` as its raw index (declaring `raw_len` bytes) and every CRC right.
    fn write(&self, raw: &[u8], raw_len: u64) -> Vec<u8> {
        let mut out = self.header.clone();
        let crc = crc32fast::hash(&out[..HEADER - 4]);
        out[HEADER - 4..].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.chunks);
        let index_at = out.len();
        if self.version >= 3 {
            out.extend_from_slice(&raw_len.to_le_bytes());
            out.extend_from_slice(&zstd::bulk::compress(raw, 3).unwrap());
        } else {
            out.extend_from_slice(raw);
        }
        let crc = crc32fast::hash(&out[index_at..]);
        let len = out.len() - index_at;
        out.extend_from_slice(&(index_at as u64).to_le_bytes());
        out.extend_from_slice(&(len as u64).to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(b"SBLK");
        out
    }
}

/// How a block is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes mutated as they lie (checksums then fail, or the framing does).
    Bytes(Vec<Mutation>),
    /// The raw index mutated, with its checksum right.
    Index(Vec<Mutation>),
    /// One series' chunk mutated, with its CRC in the index right.
    Chunk(Index, Vec<Mutation>),
    /// Header fields past the magic and version (sequence, times) mutated, CRC right.
    Header(Vec<Mutation>),
    /// A header field (0: sequence, 1: min time, 2: max time) set to a value, CRC right.
    HeaderField(u8, u64),
    /// An index entry's field (0: offset, 1: length, 2: min time, 3: max time, 4: count,
    /// 5: key length) of entry `entry % entries` set to a value.
    Field(u8, u8, u64),
    /// The index declares a raw length other than its own.
    IndexLength(u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    let extreme = prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 62),
        Just(u64::MAX - 10),
        Just(1u64 << 32),
        Just(u32::MAX as u64),
        Just(0u64),
        0u64..100,
        any::<u64>()
    ];
    prop_oneof![
        mutations().prop_map(Damage::Bytes),
        mutations().prop_map(Damage::Index),
        (any::<Index>(), mutations()).prop_map(|(i, m)| Damage::Chunk(i, m)),
        mutations().prop_map(Damage::Header),
        (0u8..3, extreme.clone()).prop_map(|(f, v)| Damage::HeaderField(f, v)),
        (any::<u8>(), 0u8..6, extreme.clone()).prop_map(|(e, f, v)| Damage::Field(e, f, v)),
        extreme.prop_map(Damage::IndexLength),
    ]
}

fn damaged(file: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = Block::parse(file);
    let raw = b.raw_index();
    let raw_len = raw.len() as u64;
    match d {
        Damage::Bytes(ms) => {
            let mut out = file.to_vec();
            mutate(&mut out, ms);
            out
        }
        Damage::Index(ms) => {
            let mut raw = raw;
            mutate(&mut raw, ms);
            b.write(&raw, raw.len() as u64)
        }
        Damage::Chunk(i, ms) => {
            let e = i.index(b.entries.len());
            let (at, len) = (
                b.entries[e].offset as usize - HEADER,
                b.entries[e].len as usize,
            );
            let mut chunk = b.chunks[at..at + len].to_vec();
            mutate(&mut chunk, ms);
            // The damaged chunk goes after the others, where the index now points.
            b.entries[e].offset = (HEADER + b.chunks.len()) as u64;
            b.entries[e].len = chunk.len() as u64;
            b.entries[e].crc = crc32fast::hash(&chunk);
            b.chunks.extend_from_slice(&chunk);
            let raw = b.raw_index();
            b.write(&raw, raw.len() as u64)
        }
        Damage::Header(ms) => {
            let mut fields = b.header[12..HEADER - 4].to_vec();
            mutate(&mut fields, ms);
            fields.resize(HEADER - 16, 0);
            b.header[12..HEADER - 4].copy_from_slice(&fields);
            b.write(&raw, raw_len)
        }
        Damage::HeaderField(f, v) => {
            let at = 12 + 8 * *f as usize;
            b.header[at..at + 8].copy_from_slice(&v.to_le_bytes());
            b.write(&raw, raw_len)
        }
        Damage::Field(e, f, v) => {
            let n = b.entries.len();
            let e = &mut b.entries[*e as usize % n];
            match f {
                0 => e.offset = *v,
                1 => e.len = *v,
                2 => e.min_t = *v,
                3 => e.max_t = *v,
                4 => e.count = *v,
                _ => e.key.truncate(*v as usize % (e.key.len() + 1)),
            }
            let raw = b.raw_index();
            b.write(&raw, raw.len() as u64)
        }
        Damage::IndexLength(v) => b.write(&raw, *v),
    }
}

/// Opens the storage and reads everything, every way; errors are fine, panics are not.
fn open_and_read(dir: &Path, now: i64) {
    let Ok(db) = open(dir) else { return };
    let _ = select_all(&db);
    for tenant in TENANTS {
        let tenant = Tenant::new(tenant).unwrap();
        for s in 0..4u8 {
            let l = strata_model::Labels::from_pairs(labels(s)).unwrap().key();
            for (start, end) in [(i64::MIN, i64::MAX), (now - 5 * H, now - 3 * H), (now, now)] {
                let _ = db.read_series(&tenant, l.as_ref(), start, end);
            }
        }
    }
    let _ = db.maintain(now);
    let _ = select_all(&db);
}

proptest! {
    #![proptest_config(config(64))]

    /// A damaged block is an error at open or at read (or, where the damage left a valid
    /// block, data), never a panic, and opening allocates in proportion to the file.
    #[test]
    fn damaged_blocks_are_errors(ws in writes(), which in any::<Index>(), d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let now = strata_model::time::now_ms();
        {
            let db = open(dir.path()).unwrap();
            apply(&db, &ws, now, &mut 0, &mut Expected::new());
            db.flush().unwrap();
        }
        let files = block_files(dir.path());
        let path = &files[which.index(files.len())];
        let file = std::fs::read(path).unwrap();
        let bad = damaged(&file, &d);
        std::fs::write(path, &bad).unwrap();
        let (_, largest) = largest_allocation(|| open(dir.path()).map(drop));
        prop_assert!(
            largest <= allocation_bound(bad.len(), 1 << 20),
            "{} bytes allocated at once opening a block of {}", largest, bad.len()
        );
        open_and_read(dir.path(), now);
    }
}

/// Every header field and every index-entry field of a real block at every extreme value, each
/// with its checksums right: open and read fail or succeed, never panic, and never allocate
/// what a damaged count or length asks for.
#[test]
fn every_field_at_every_extreme() {
    let extremes = [
        0,
        1,
        u32::MAX as u64,
        1 << 32,
        1 << 62,
        i64::MAX as u64,
        i64::MIN as u64,
        u64::MAX - 1,
        u64::MAX,
    ];
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    let ws: Vec<Write> = (0..4u8)
        .map(|s| {
            (
                0,
                s,
                (0..50)
                    .map(|i| (i * 60_000 + s as i64, i as f64 / 4.0))
                    .collect(),
            )
        })
        .collect();
    {
        let db = open(dir.path()).unwrap();
        apply(&db, &ws, now, &mut 0, &mut Expected::new());
        db.flush().unwrap();
    }
    let path = block_files(dir.path()).remove(0);
    let file = std::fs::read(&path).unwrap();
    let mut damages = Vec::new();
    for v in extremes {
        damages.extend((0..3).map(|f| Damage::HeaderField(f, v)));
        damages.extend((0..6).flat_map(|f| [Damage::Field(0, f, v), Damage::Field(3, f, v)]));
        damages.push(Damage::IndexLength(v));
    }
    for d in &damages {
        std::fs::write(&path, damaged(&file, d)).unwrap();
        let (_, largest) = largest_allocation(|| open(dir.path()).map(drop));
        assert!(largest <= 1 << 20, "{largest} bytes for {d:?}");
        open_and_read(dir.path(), now);
    }
}
