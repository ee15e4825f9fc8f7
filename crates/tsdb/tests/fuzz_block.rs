//! Fuzzing block files through the storage engine: whatever is appended reads back bit for
//! bit after flush, reopen and compaction; and a damaged block (bytes mutated as they lie, or
//! taken apart and mutated with every checksum made right again, so the damage reaches the
//! parsers behind the checksums) makes opening or reading fail with an error, never a panic
//! or an allocation out of proportion to the file.
//!
//! The structure-aware mutations know the block layout described in `src/block.rs` (header,
//! chunks, index, footer) and the index section's in `src/block_index.rs` (format 4), and how
//! blocks of formats 1 to 3 held their index (which opening rewrites in format 4); [`Block`],
//! [`Index4`], [`Record`] and [`LegacyEntry`] are the only places that do.

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

/// A block taken apart along its layout (format 4): header (40 bytes: magic, version,
/// sequence, min and max time, CRC), chunks, the index section (read in place; its layout is
/// the module doc of `src/block_index.rs`), footer (index position and length, CRC, `SBLK`).
/// Written back, every checksum is made right and every offset the layout derives (records'
/// `at[]`, the directory's section offsets and counts) follows the parts, unless a damage sets
/// one of them.
#[derive(Clone)]
struct Block {
    header: Vec<u8>,
    chunks: Vec<u8>,
    index: Index4,
    /// Footer fields set by a damage (see [`Damage::Footer`]).
    footer: Option<(u8, u64)>,
}

/// The index section, part by part; integers as stored.
#[derive(Clone)]
struct Index4 {
    /// Symbols: their count as stored, where each ends, their bytes.
    symbol_count: u32,
    symbol_ends: Vec<u32>,
    symbol_bytes: Vec<u8>,
    /// Series: their count as stored, their records.
    series_count: u32,
    records: Vec<Record>,
    /// `at[i]` set by a damage.
    at_set: Option<(usize, u32)>,
    /// The delta-varint postings, as they lie.
    postings: Vec<u8>,
    /// `(value symbol, postings offset, series count)`, name after name.
    values: Vec<[u32; 3]>,
    /// `(name symbol, first value, end value)`.
    names: Vec<[u32; 3]>,
    /// A directory field (0-5: the u32s, 6: base time) set by a damage.
    dir_set: Option<(u8, u64)>,
    base_t: u64,
}

/// One series' record, fields as stored (varints as their values, times as deltas).
#[derive(Clone)]
struct Record {
    /// The number of pairs as stored (the pairs below are what follows it).
    npairs: u64,
    /// `name, value` symbol numbers, pair after pair.
    symbols: Vec<u64>,
    offset: u64,
    len: u64,
    crc: u32,
    /// zigzag(min_t - base time).
    min_d: u64,
    /// max_t - min_t.
    max_d: u64,
    count: u64,
    last: [u8; 8],
}

const HEADER: usize = 40;
const FOOTER: usize = 24;
const DIRECTORY: usize = 6 * 4 + 8;
/// Fields of a record a [`Damage::Record`] names: offset, length, CRC, min_t delta, max_t
/// delta, count, number of pairs, last value; then each of its symbol numbers.
const RECORD_FIELDS: u8 = 8;

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

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl Record {
    fn parse(b: &[u8], p: &mut usize) -> Record {
        let npairs = varint(b, p);
        let symbols = (0..2 * npairs).map(|_| varint(b, p)).collect();
        let (offset, len) = (varint(b, p), varint(b, p));
        let crc = le32(b, *p);
        *p += 4;
        let (min_d, max_d, count) = (varint(b, p), varint(b, p), varint(b, p));
        let last = b[*p..*p + 8].try_into().unwrap();
        *p += 8;
        Record {
            npairs,
            symbols,
            offset,
            len,
            crc,
            min_d,
            max_d,
            count,
            last,
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        let v = fuzz_support::put_varint;
        v(out, self.npairs);
        for &s in &self.symbols {
            v(out, s);
        }
        v(out, self.offset);
        v(out, self.len);
        out.extend_from_slice(&self.crc.to_le_bytes());
        for x in [self.min_d, self.max_d, self.count] {
            v(out, x);
        }
        out.extend_from_slice(&self.last);
    }
}

impl Index4 {
    fn parse(ix: &[u8]) -> Index4 {
        let d = ix.len() - DIRECTORY;
        let dir: Vec<usize> = (0..6).map(|i| le32(ix, d + 4 * i) as usize).collect();
        let symbol_count = le32(ix, 0);
        let symbol_ends: Vec<u32> = (0..symbol_count as usize)
            .map(|i| le32(ix, 4 + 4 * i))
            .collect();
        let symbol_bytes = ix[4 + 4 * symbol_ends.len()..dir[0]].to_vec();
        let series_count = le32(ix, dir[0]);
        let records_at = dir[0] + 4 + 4 * series_count as usize;
        let mut p = records_at;
        let records = (0..series_count as usize)
            .map(|i| {
                assert_eq!(p - records_at, le32(ix, dir[0] + 4 + 4 * i) as usize);
                Record::parse(ix, &mut p)
            })
            .collect();
        assert_eq!(p, dir[1]);
        let table = |at: usize, n: usize| -> Vec<[u32; 3]> {
            (0..n)
                .map(|i| std::array::from_fn(|k| le32(ix, at + 12 * i + 4 * k)))
                .collect()
        };
        Index4 {
            symbol_count,
            symbol_ends,
            symbol_bytes,
            series_count,
            records,
            at_set: None,
            postings: ix[dir[1]..dir[2]].to_vec(),
            values: table(dir[2], dir[4]),
            names: table(dir[3], dir[5]),
            dir_set: None,
            base_t: le64(ix, d + 24),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put32(&mut out, self.symbol_count);
        for &e in &self.symbol_ends {
            put32(&mut out, e);
        }
        out.extend_from_slice(&self.symbol_bytes);
        let series_at = out.len();
        put32(&mut out, self.series_count);
        let mut records = Vec::new();
        let mut at = Vec::new();
        for r in &self.records {
            at.push(records.len() as u32);
            r.put(&mut records);
        }
        if let Some((i, v)) = self.at_set {
            at[i] = v;
        }
        for a in at {
            put32(&mut out, a);
        }
        out.extend_from_slice(&records);
        let postings_at = out.len();
        out.extend_from_slice(&self.postings);
        let values_at = out.len();
        for e in &self.values {
            e.iter().for_each(|&x| put32(&mut out, x));
        }
        let names_at = out.len();
        for e in &self.names {
            e.iter().for_each(|&x| put32(&mut out, x));
        }
        let mut dir = [
            series_at as u64,
            postings_at as u64,
            values_at as u64,
            names_at as u64,
            self.values.len() as u64,
            self.names.len() as u64,
            self.base_t,
        ];
        if let Some((f, v)) = self.dir_set {
            dir[f as usize] = v;
        }
        for &x in &dir[..6] {
            put32(&mut out, x as u32);
        }
        out.extend_from_slice(&dir[6].to_le_bytes());
        out
    }
}

impl Block {
    fn parse(b: &[u8]) -> Block {
        let version = le32(b, 8);
        assert_eq!(version, 4, "the test knows block format 4");
        let f_at = b.len() - FOOTER;
        let index_at = le64(b, f_at) as usize;
        let block = Block {
            header: b[..HEADER].to_vec(),
            chunks: b[HEADER..index_at].to_vec(),
            index: Index4::parse(&b[index_at..f_at]),
            footer: None,
        };
        assert!(
            block.write() == b,
            "the test's idea of the block layout is out of date"
        );
        block
    }

    /// The file, with every CRC right.
    fn write(&self) -> Vec<u8> {
        self.write_index(&self.index.bytes())
    }

    /// The file with `index` as its index section, every CRC right.
    fn write_index(&self, index: &[u8]) -> Vec<u8> {
        let mut out = self.header.clone();
        let crc = crc32fast::hash(&out[..HEADER - 4]);
        out[HEADER - 4..].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.chunks);
        let mut index_at = out.len() as u64;
        out.extend_from_slice(index);
        let f_at = out.len() as u64;
        let mut len = f_at - index_at;
        match self.footer {
            Some((0, v)) => index_at = v,
            Some((1, v)) => len = v,
            Some((_, v)) => {
                // Moved, its length following and its checksum right: the section is read
                // from the wrong place.
                let shift = (v as i64 % 97).clamp(-(index_at as i64), len as i64);
                index_at = index_at.wrapping_add_signed(shift);
                len = f_at - index_at;
            }
            None => {}
        }
        let crc = out
            .get(index_at as usize..)
            .and_then(|s| s.get(..len as usize))
            .map_or(0, crc32fast::hash);
        out.extend_from_slice(&index_at.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(b"SBLK");
        out
    }
}

/// One entry of a format 1 to 3 index (a list of entries parsed whole), fields as stored
/// (times zigzag encoded; the last value from version 2).
#[derive(Clone)]
struct LegacyEntry {
    key: Vec<u8>,
    offset: u64,
    len: u64,
    crc: u32,
    min_t: u64,
    max_t: u64,
    count: u64,
    last: [u8; 8],
}

fn zig(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzig(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

impl Block {
    /// The block's series as entries of a format 1 to 3 index.
    fn legacy_entries(&self) -> Vec<LegacyEntry> {
        let ix = &self.index;
        let symbol = |s: u64| {
            let start = if s == 0 {
                0
            } else {
                ix.symbol_ends[s as usize - 1]
            };
            &ix.symbol_bytes[start as usize..ix.symbol_ends[s as usize] as usize]
        };
        ix.records
            .iter()
            .map(|r| {
                let min_t = (ix.base_t as i64) + unzig(r.min_d);
                LegacyEntry {
                    key: r
                        .symbols
                        .iter()
                        .flat_map(|&s| symbol(s).iter().copied().chain([0xFF]))
                        .collect(),
                    offset: r.offset,
                    len: r.len,
                    crc: r.crc,
                    min_t: zig(min_t),
                    max_t: zig(min_t + r.max_d as i64),
                    count: r.count,
                    last: r.last,
                }
            })
            .collect()
    }

    /// The file in format `version` (1 to 3) with `raw` as its raw index (declared as
    /// `raw_len` bytes from version 3, which compresses it), every CRC right.
    fn write_legacy(&self, version: u32, raw: &[u8], raw_len: u64) -> Vec<u8> {
        let mut b = self.clone();
        b.header[8..12].copy_from_slice(&version.to_le_bytes());
        let index = if version >= 3 {
            let mut packed = raw_len.to_le_bytes().to_vec();
            packed.extend_from_slice(&zstd::bulk::compress(raw, 3).unwrap());
            packed
        } else {
            raw.to_vec()
        };
        b.write_index(&index)
    }
}

/// The raw index of format `version` holding `entries`.
fn legacy_raw(version: u32, entries: &[LegacyEntry]) -> Vec<u8> {
    let v = fuzz_support::put_varint;
    let mut raw = Vec::new();
    v(&mut raw, entries.len() as u64);
    for e in entries {
        v(&mut raw, e.key.len() as u64);
        raw.extend_from_slice(&e.key);
        v(&mut raw, e.offset);
        v(&mut raw, e.len);
        raw.extend_from_slice(&e.crc.to_le_bytes());
        for x in [e.min_t, e.max_t, e.count] {
            v(&mut raw, x);
        }
        if version >= 2 {
            raw.extend_from_slice(&e.last);
        }
    }
    raw
}

/// How a block rewritten in an older format is damaged.
#[derive(Debug, Clone)]
enum LegacyDamage {
    /// None: the block as it was, in the older format.
    None,
    /// The raw index mutated, with its checksum right.
    Index(Vec<Mutation>),
    /// An entry's field (0: offset, 1: length, 2: min time, 3: max time, 4: count, 5: key
    /// length, the key cut to it, 6: CRC) of entry `entry % entries` set to a value.
    Field(u8, u8, u64),
    /// The index declares a raw length other than its own (version 3).
    RawLength(u64),
}

fn legacy_damage() -> impl Strategy<Value = LegacyDamage> {
    let v = prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 62),
        Just(1u64 << 32),
        Just(u32::MAX as u64),
        Just(0u64),
        0u64..4000,
        any::<u64>()
    ];
    prop_oneof![
        1 => Just(LegacyDamage::None),
        4 => mutations().prop_map(LegacyDamage::Index),
        3 => (any::<u8>(), 0u8..7, v.clone()).prop_map(|(e, f, v)| LegacyDamage::Field(e, f, v)),
        1 => v.prop_map(LegacyDamage::RawLength),
    ]
}

fn damaged_legacy(b: &Block, version: u32, d: &LegacyDamage) -> Vec<u8> {
    let mut entries = b.legacy_entries();
    let mut raw_len = None;
    let mut mutations: &[Mutation] = &[];
    match d {
        LegacyDamage::None => {}
        LegacyDamage::Index(ms) => mutations = ms,
        LegacyDamage::Field(e, f, v) => {
            let n = entries.len();
            let e = &mut entries[*e as usize % n];
            match f {
                0 => e.offset = *v,
                1 => e.len = *v,
                2 => e.min_t = *v,
                3 => e.max_t = *v,
                4 => e.count = *v,
                5 => e.key.truncate(*v as usize % (e.key.len() + 1)),
                _ => e.crc = *v as u32,
            }
        }
        LegacyDamage::RawLength(v) => raw_len = Some(*v),
    }
    let mut raw = legacy_raw(version, &entries);
    mutate(&mut raw, mutations);
    let len = raw_len.unwrap_or(raw.len() as u64);
    b.write_legacy(version, &raw, len)
}

/// How a block is damaged. Fields are named by number; which of several (a record, a
/// symbol, a table entry) by a number taken modulo how many there are.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes mutated as they lie (checksums then fail, or the framing does).
    Bytes(Vec<Mutation>),
    /// The index section's bytes mutated, with its checksum right.
    Index(Vec<Mutation>),
    /// One series' chunk mutated, with its record's CRC right.
    Chunk(Index, Vec<Mutation>),
    /// The bytes of a section mutated in place (0: the symbols' bytes, their ends kept; 1: the
    /// postings, the values table's offsets kept), the later sections' offsets following.
    Section(u8, Vec<Mutation>),
    /// Header fields past the magic and version (sequence, times) mutated, CRC right.
    Header(Vec<Mutation>),
    /// A header field (0: sequence, 1: min time, 2: max time) set to a value, CRC right.
    HeaderField(u8, u64),
    /// A directory field (0: series section, 1: postings, 2: values, 3: names, 4: value
    /// count, 5: name count, as u32; 6: base time) set to a value.
    Directory(u8, u64),
    /// A section's stored count (0: symbols, 1: series) or a record's `at[]` entry (2) set.
    Count(u8, u8, u64),
    /// A record's field (see [`RECORD_FIELDS`]) set; the records re-encoded, their `at[]`
    /// and the later sections' offsets following.
    Record(u8, u8, u64),
    /// A symbol's end offset set.
    SymbolEnd(u8, u64),
    /// A value entry's field (0: value symbol, 1: postings offset, 2: series count) set.
    Value(u8, u8, u64),
    /// A name entry's field (0: name symbol, 1: first value, 2: end value) set.
    Name(u8, u8, u64),
    /// The footer inconsistent with the file, its CRC that of what it points at: the index
    /// position (0) or length (1) set, or (2) the position moved by up to 96 bytes with the
    /// length following.
    Footer(u8, u64),
    /// A field damage's field set to its own value plus a small difference (off by one).
    Near(Box<Damage>, i64),
    /// The block written in format 1, 2 or 3 (which opening rewrites in the current one),
    /// damaged there with every checksum right.
    Legacy(u8, LegacyDamage),
    /// Several fields set at once (damage that one field alone does not make).
    Many(Vec<Damage>),
}

/// Damages setting one field (value symbol, offset, count...) to a value of `v`.
fn field(v: BoxedStrategy<u64>) -> impl Strategy<Value = Damage> {
    let which = any::<u8>();
    prop_oneof![
        1 => (0u8..3, v.clone()).prop_map(|(f, v)| Damage::HeaderField(f, v)),
        1 => (0u8..7, v.clone()).prop_map(|(f, v)| Damage::Directory(f, v)),
        1 => (0u8..3, which, v.clone()).prop_map(|(f, w, v)| Damage::Count(f, w, v)),
        2 => (which, 0u8..RECORD_FIELDS + 6, v.clone())
            .prop_map(|(w, f, v)| Damage::Record(w, f, v)),
        1 => (which, v.clone()).prop_map(|(w, v)| Damage::SymbolEnd(w, v)),
        1 => (which, 0u8..3, v.clone()).prop_map(|(w, f, v)| Damage::Value(w, f, v)),
        1 => (which, 0u8..3, v.clone()).prop_map(|(w, f, v)| Damage::Name(w, f, v)),
        1 => (0u8..3, v).prop_map(|(f, v)| Damage::Footer(f, v)),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    let extreme = prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 62),
        Just(u64::MAX - 10),
        Just(1u64 << 32),
        Just(u32::MAX as u64),
        Just(u32::MAX as u64 - 1),
        Just(1u64 << 31),
        Just(0u64),
        0u64..100,
        0u64..4000,
        any::<u64>()
    ];
    prop_oneof![
        1 => mutations().prop_map(Damage::Bytes),
        3 => mutations().prop_map(Damage::Index),
        1 => (any::<Index>(), mutations()).prop_map(|(i, m)| Damage::Chunk(i, m)),
        2 => (0u8..2, mutations()).prop_map(|(s, m)| Damage::Section(s, m)),
        1 => mutations().prop_map(Damage::Header),
        6 => field(extreme.clone().boxed()),
        3 => (1u8..4, legacy_damage()).prop_map(|(v, d)| Damage::Legacy(v, d)),
        2 => proptest::collection::vec(field(extreme.boxed()), 2..5).prop_map(Damage::Many),
        3 => (field(Just(0).boxed()), -3i64..=3)
            .prop_map(|(f, d)| Damage::Near(Box::new(f), d)),
    ]
}

/// Entry `w` of `n` (any when there are none: the caller then changes nothing).
fn pick(w: u8, n: usize) -> Option<usize> {
    (n > 0).then(|| w as usize % n)
}

fn damaged(file: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = Block::parse(file);
    if let Damage::Near(f, by) = d {
        let own = current(&b, f).unwrap_or(0);
        return damaged(file, &f.with(own.wrapping_add_signed(*by)));
    }
    let ix = &mut b.index;
    match d {
        Damage::Near(..) => unreachable!("applied above"),
        Damage::Legacy(v, d) => return damaged_legacy(&b, u32::from(*v), d),
        Damage::Bytes(ms) => {
            let mut out = file.to_vec();
            mutate(&mut out, ms);
            return out;
        }
        Damage::Index(ms) => {
            let mut bytes = ix.bytes();
            mutate(&mut bytes, ms);
            return b.write_index(&bytes);
        }
        Damage::Chunk(i, ms) => {
            let n = ix.records.len();
            let r = &mut ix.records[i.index(n)];
            let at = r.offset as usize - HEADER;
            let mut chunk = b.chunks[at..at + r.len as usize].to_vec();
            mutate(&mut chunk, ms);
            // The damaged chunk goes after the others, where its record now points.
            r.offset = (HEADER + b.chunks.len()) as u64;
            r.len = chunk.len() as u64;
            r.crc = crc32fast::hash(&chunk);
            b.chunks.extend_from_slice(&chunk);
        }
        Damage::Section(0, ms) => mutate(&mut ix.symbol_bytes, ms),
        Damage::Section(_, ms) => mutate(&mut ix.postings, ms),
        Damage::Header(ms) => {
            let mut fields = b.header[12..HEADER - 4].to_vec();
            mutate(&mut fields, ms);
            fields.resize(HEADER - 16, 0);
            b.header[12..HEADER - 4].copy_from_slice(&fields);
        }
        Damage::Many(ds) => ds.iter().for_each(|d| set(&mut b, d)),
        d => set(&mut b, d),
    }
    b.write()
}

/// Applies field damage `d` to `b`.
fn set(b: &mut Block, d: &Damage) {
    let ix = &mut b.index;
    match d {
        Damage::HeaderField(f, v) => {
            let at = 12 + 8 * *f as usize;
            b.header[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        Damage::Directory(f, v) => ix.dir_set = Some((*f, *v)),
        Damage::Count(0, _, v) => ix.symbol_count = *v as u32,
        Damage::Count(1, _, v) => ix.series_count = *v as u32,
        Damage::Count(_, w, v) => ix.at_set = pick(*w, ix.records.len()).map(|i| (i, *v as u32)),
        Damage::Record(w, f, v) => {
            if let Some(i) = pick(*w, ix.records.len()) {
                let r = &mut ix.records[i];
                match f {
                    0 => r.offset = *v,
                    1 => r.len = *v,
                    2 => r.crc = *v as u32,
                    3 => r.min_d = *v,
                    4 => r.max_d = *v,
                    5 => r.count = *v,
                    6 => r.npairs = *v,
                    7 => r.last = v.to_le_bytes(),
                    s => {
                        let n = r.symbols.len();
                        if let Some(k) = pick(s - RECORD_FIELDS, n) {
                            r.symbols[k] = *v;
                        }
                    }
                }
            }
        }
        Damage::SymbolEnd(w, v) => {
            if let Some(i) = pick(*w, ix.symbol_ends.len()) {
                ix.symbol_ends[i] = *v as u32;
            }
        }
        Damage::Value(w, f, v) => {
            if let Some(i) = pick(*w, ix.values.len()) {
                ix.values[i][*f as usize % 3] = *v as u32;
            }
        }
        Damage::Name(w, f, v) => {
            if let Some(i) = pick(*w, ix.names.len()) {
                ix.names[i][*f as usize % 3] = *v as u32;
            }
        }
        Damage::Footer(f, v) => b.footer = Some((*f, *v)),
        _ => unreachable!("{d:?} is not a field damage"),
    }
}

/// Reads the storage every way a query does; errors are fine, panics are not.
fn read_every_way(db: &Tsdb, now: i64) {
    let _ = select_all(db);
    let hints = SelectHints {
        start: i64::MIN,
        end: i64::MAX,
        max_samples: None,
        fields: Fields::All,
    };
    let meta = strata_model::MetadataHints::range(i64::MIN, i64::MAX);
    let re = |n: &str, p: &str, not| Matcher::regex(n, p, not).unwrap();
    let selections = [
        vec![Matcher::equal("__name__", "m1")],
        vec![
            Matcher::equal("s", "v2"),
            Matcher::not_equal("__name__", "m1"),
        ],
        vec![re("s", "v1|v3", false)],
        vec![re("__name__", "m.*", false), re("s", "v[01]", true)],
        vec![re("__name__", ".+", false), Matcher::equal("nope", "")],
    ];
    for tenant in TENANTS {
        let tenant = Tenant::new(tenant).unwrap();
        for s in 0..4u8 {
            let l = strata_model::Labels::from_pairs(labels(s)).unwrap().key();
            for (start, end) in [(i64::MIN, i64::MAX), (now - 5 * H, now - 3 * H), (now, now)] {
                let _ = db.read_series(&tenant, l.as_ref(), start, end);
            }
        }
        for ms in &selections {
            let _ = db.select(&tenant, ms, &hints);
            let _ = db.series(&tenant, ms, &meta);
            let _ = db.label_names(&tenant, ms, &meta);
            let _ = db.label_values(&tenant, "s", ms, &meta);
        }
    }
}

impl Damage {
    /// This damage setting its field to `v` instead.
    fn with(&self, v: u64) -> Damage {
        match *self {
            Damage::HeaderField(f, _) => Damage::HeaderField(f, v),
            Damage::Directory(f, _) => Damage::Directory(f, v),
            Damage::Count(f, w, _) => Damage::Count(f, w, v),
            Damage::Record(w, f, _) => Damage::Record(w, f, v),
            Damage::SymbolEnd(w, _) => Damage::SymbolEnd(w, v),
            Damage::Value(w, f, _) => Damage::Value(w, f, v),
            Damage::Name(w, f, _) => Damage::Name(w, f, v),
            Damage::Footer(f, _) => Damage::Footer(f, v),
            ref d => d.clone(),
        }
    }
}

/// The value in `b` of the field damage `d` sets (entries named as [`damaged`] picks them),
/// where it has one.
fn current(b: &Block, d: &Damage) -> Option<u64> {
    let ix = &b.index;
    let bytes = ix.bytes();
    let dir = bytes.len() - DIRECTORY;
    let series_at = le32(&bytes, dir) as usize;
    let at = |w: usize| le32(&bytes, series_at + 4 + 4 * w) as u64;
    Some(match *d {
        Damage::HeaderField(f, _) => le64(&b.header, 12 + 8 * f as usize),
        Damage::Directory(6, _) => ix.base_t,
        Damage::Directory(f, _) => le32(&bytes, dir + 4 * f as usize) as u64,
        Damage::Count(0, _, _) => ix.symbol_count as u64,
        Damage::Count(1, _, _) => ix.series_count as u64,
        Damage::Count(_, w, _) => at(pick(w, ix.records.len())?),
        Damage::Record(w, f, _) => {
            let r = &ix.records[pick(w, ix.records.len())?];
            match f {
                0 => r.offset,
                1 => r.len,
                2 => r.crc as u64,
                3 => r.min_d,
                4 => r.max_d,
                5 => r.count,
                6 => r.npairs,
                7 => u64::from_le_bytes(r.last),
                s => r.symbols[pick(s - RECORD_FIELDS, r.symbols.len())?],
            }
        }
        Damage::SymbolEnd(w, _) => ix.symbol_ends[pick(w, ix.symbol_ends.len())?] as u64,
        Damage::Value(w, f, _) => ix.values[pick(w, ix.values.len())?][f as usize % 3] as u64,
        Damage::Name(w, f, _) => ix.names[pick(w, ix.names.len())?][f as usize % 3] as u64,
        Damage::Footer(0, _) => (HEADER + b.chunks.len()) as u64,
        Damage::Footer(1, _) => bytes.len() as u64,
        _ => return None,
    })
}

/// The most a read may allocate at once whatever a block's index says: a series' samples are
/// reserved up front, up to 2^22 of 16 bytes (`MAX_RESERVE` in `src/read.rs`), and grow from
/// there only with what its chunks decode to.
const READ_ALLOWANCE: usize = 16 << 22;

/// Opens the storage and reads everything, every way, before and after maintenance (which
/// merges blocks); errors are fine, panics are not.
fn open_and_read(dir: &Path, now: i64) {
    let Ok(db) = open(dir) else { return };
    read_every_way(&db, now);
    let _ = db.maintain(now);
    read_every_way(&db, now);
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
        let (_, largest) = largest_allocation(|| open_and_read(dir.path(), now));
        prop_assert!(
            largest <= allocation_bound(bad.len(), READ_ALLOWANCE),
            "{} bytes allocated at once reading a block of {}", largest, bad.len()
        );
    }
}

/// Files and their bytes.
type Snapshot = Vec<(PathBuf, Vec<u8>)>;

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> Snapshot {
    fn walk(d: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Puts `dir` back as [`snapshot`] found it (what a merge wrote or removed undone).
fn restore(dir: &Path, snap: &Snapshot) {
    for (p, _) in snapshot(dir) {
        std::fs::remove_file(p).unwrap();
    }
    for (p, b) in snap {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
}

/// A storage under `dir` holding one block of four series of 50 samples each: its path, its
/// bytes, and a [`snapshot`] of the directory.
fn one_block(dir: &Path, now: i64) -> (PathBuf, Vec<u8>, Snapshot) {
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
        let db = open(dir).unwrap();
        apply(&db, &ws, now, &mut 0, &mut Expected::new());
        db.flush().unwrap();
    }
    let path = block_files(dir).remove(0);
    let file = std::fs::read(&path).unwrap();
    (path, file, snapshot(dir))
}

/// Every header, directory, section-count, record, symbol-end, table-entry and footer field
/// of a real block at every extreme value and one either side of its own, and every index
/// entry field of the block written in formats 1 and 3 at every extreme, each with its
/// checksums right (and the rest of the layout consistent): open and read fail or succeed,
/// never panic, and never allocate what a damaged count or length asks for.
#[test]
fn every_field_at_every_extreme() {
    let extremes = [
        0,
        1,
        (1 << 31) - 1,
        1 << 31,
        u32::MAX as u64 - 1,
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
    let (path, file, snap) = one_block(dir.path(), now);
    let block = Block::parse(&file);
    let ix = &block.index;
    let pairs = ix.records.iter().map(|r| r.symbols.len()).max().unwrap();
    let all = |n: usize| 0..n as u8;
    let mut fields = Vec::new();
    fields.extend((0..3).map(|f| Damage::HeaderField(f, 0)));
    fields.extend((0..7).map(|f| Damage::Directory(f, 0)));
    fields.extend((0..2).map(|f| Damage::Count(f, 0, 0)));
    fields.extend(all(ix.records.len()).map(|w| Damage::Count(2, w, 0)));
    for w in all(ix.records.len()) {
        fields.extend((0..RECORD_FIELDS + pairs as u8).map(|f| Damage::Record(w, f, 0)));
    }
    fields.extend(all(ix.symbol_ends.len()).map(|w| Damage::SymbolEnd(w, 0)));
    for w in all(ix.values.len()) {
        fields.extend((0..3).map(|f| Damage::Value(w, f, 0)));
    }
    for w in all(ix.names.len()) {
        fields.extend((0..3).map(|f| Damage::Name(w, f, 0)));
    }
    fields.extend((0..3).map(|f| Damage::Footer(f, 0)));
    // Every extreme, and one either side of the field's own value (off by one).
    let mut damages = Vec::new();
    for f in &fields {
        let own = current(&block, f);
        let near = own
            .into_iter()
            .flat_map(|c| [c.wrapping_sub(1), c.wrapping_add(1)]);
        damages.extend(extremes.into_iter().chain(near).map(|v| f.with(v)));
    }
    // Blocks of formats 1 and 3 (rewritten when opened): the first and last entries' fields.
    let last = ix.records.len() as u8 - 1;
    for version in [1, 3] {
        damages.push(Damage::Legacy(version, LegacyDamage::None));
        for v in extremes {
            for e in [0, last] {
                damages
                    .extend((0..7).map(|f| Damage::Legacy(version, LegacyDamage::Field(e, f, v))));
            }
            if version == 3 {
                damages.push(Damage::Legacy(version, LegacyDamage::RawLength(v)));
            }
        }
    }
    for d in &damages {
        restore(dir.path(), &snap);
        std::fs::write(&path, damaged(&file, d)).unwrap();
        let (_, largest) = largest_allocation(|| open(dir.path()).map(drop));
        assert!(largest <= 1 << 20, "{largest} bytes for {d:?}");
        let (_, largest) = largest_allocation(|| open_and_read(dir.path(), now));
        assert!(
            largest <= READ_ALLOWANCE,
            "{largest} bytes reading for {d:?}"
        );
    }
}

/// Regression: a postings delta that carries a series number past `u64::MAX` is damage (it
/// overflowed, a panic in debug builds), as is one past the last series.
#[test]
fn postings_deltas_past_the_end_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    let (path, file, _) = one_block(dir.path(), now);
    for second in [u64::MAX, u64::MAX - 1, 1 << 63, 4] {
        let mut b = Block::parse(&file);
        // Every label value's series: 1, then 1 + `second`.
        b.index.postings.clear();
        fuzz_support::put_varint(&mut b.index.postings, 1);
        fuzz_support::put_varint(&mut b.index.postings, second);
        for e in &mut b.index.values {
            e[1] = 0;
            e[2] = 2;
        }
        std::fs::write(&path, b.write()).unwrap();
        let db = open(dir.path()).unwrap();
        let e = db
            .select(
                &Tenant::new("default").unwrap(),
                &[Matcher::equal("__name__", "m0")],
                &SelectHints {
                    start: i64::MIN,
                    end: i64::MAX,
                    max_samples: None,
                    fields: Fields::All,
                },
            )
            .err()
            .unwrap_or_else(|| panic!("a delta of {second} was read"));
        assert!(e.to_string().contains("postings"), "{e}");
    }
}

/// Regression: a record whose label names repeat (or come out of order) is damage, not a key
/// handed on (`Labels` asserts its names ascend in debug builds).
#[test]
fn records_with_names_out_of_order_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    let (path, file, _) = one_block(dir.path(), now);
    for (a, b) in [(0, 2), (2, 0)] {
        let mut blk = Block::parse(&file);
        for r in &mut blk.index.records {
            r.symbols[b] = r.symbols[a];
        }
        std::fs::write(&path, blk.write()).unwrap();
        let db = open(dir.path()).unwrap();
        let e = select_all(&db).expect_err("the keys are damaged");
        assert!(e.to_string().contains("not well formed"), "{e}");
    }
}

/// Regression: a record naming one long symbol many times is damage once its key passes a
/// limit far above real keys, not a key of its pairs times the section (a block of 100 KiB
/// made a read allocate 200 MiB at once).
#[test]
fn keys_of_a_long_symbol_many_times_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    let (path, file, _) = one_block(dir.path(), now);
    let mut b = Block::parse(&file);
    // A symbol running on over 100 KB of postings (the one after it then out of range).
    let n = b.index.symbol_ends.len();
    b.index.symbol_ends[n - 2] = 100_000;
    b.index.postings.resize(b.index.postings.len() + 100_000, 0);
    let r = &mut b.index.records[0];
    r.npairs = 2000;
    r.symbols = (0..2000).flat_map(|_| [0, n as u64 - 2]).collect();
    let bad = b.write();
    std::fs::write(&path, &bad).unwrap();
    let db = open(dir.path()).unwrap();
    let (r, largest) = largest_allocation(|| select_all(&db).map(drop));
    let e = r.expect_err("the key is damaged").to_string();
    assert!(e.contains("key is over"), "{e}");
    assert!(
        largest <= READ_ALLOWANCE,
        "{largest} bytes for a block of {}",
        bad.len()
    );
}

/// Regression: a label name's values whose postings hold the same series many times are
/// damage, not a list of values times series (a block of 84 KB made a read allocate 16 MB at
/// once, and answered).
#[test]
fn postings_holding_a_series_twice_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    let (path, file, _) = one_block(dir.path(), now);
    let mut b = Block::parse(&file);
    // 2000 series, and 2000 values of the first name each holding all of them.
    let n = 2000u32;
    b.index.records = vec![b.index.records[0].clone(); n as usize];
    b.index.series_count = n;
    b.index.postings.clear();
    for k in 0..n {
        fuzz_support::put_varint(&mut b.index.postings, u64::from(k > 0));
    }
    b.index.values = vec![[1, 0, n]; n as usize];
    b.index.names = vec![[0, 0, n]];
    let bad = b.write();
    std::fs::write(&path, &bad).unwrap();
    let db = open(dir.path()).unwrap();
    let (r, largest) = largest_allocation(|| select_all(&db).map(drop));
    let e = r.expect_err("the postings are damaged").to_string();
    assert!(e.contains("hold more than"), "{e}");
    assert!(
        largest <= allocation_bound(bad.len(), 1 << 20),
        "{largest} bytes for a block of {}",
        bad.len()
    );
}

/// The test's own writer of formats 1 to 3 is right: undamaged, its blocks open (rewritten in
/// the current format) and read as the block they were made from.
#[test]
fn older_formats_the_damage_starts_from_read_alike() {
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    let (path, file, snap) = one_block(dir.path(), now);
    let want = contents(&open(dir.path()).unwrap());
    assert_eq!(want.len(), 4);
    for version in 1..4 {
        restore(dir.path(), &snap);
        let d = Damage::Legacy(version, LegacyDamage::None);
        std::fs::write(&path, damaged(&file, &d)).unwrap();
        assert_eq!(
            contents(&open(dir.path()).unwrap()),
            want,
            "version {version}"
        );
        assert_eq!(std::fs::read(&path).unwrap()[8], 4, "rewritten");
    }
}
