//! A block's index in format 4: laid out to be read in place from the block's mapping, so
//! opening or querying a block parses and copies nothing, memory does not grow with series
//! times blocks, and a query touches only the pages it needs (the Prometheus TSDB reads its
//! index the same way). Our own layout rather than Prometheus's because series are addressed
//! by our canonical key bytes (`strata_model::SeriesKey`) and chunks by offset in our file.
//!
//! The section (integers little-endian; offsets from the section's start, so it is at most
//! 4 GiB, about 80 million series):
//!
//! ```text
//! symbols   u32 n, u32 end[n] (where each symbol ends in the bytes), the bytes
//! series    u32 n, u32 at[n] (where each record starts, ascending), the records
//! postings  for each label value, its series numbers as delta varints
//! values    n x (u32 value symbol, u32 postings offset, u32 series count), name after name
//! names     n x (u32 name symbol, u32 first value, u32 end value), by name
//! directory u32 offsets of the six sections above' ends and counts, i64 base time (below)
//! ```
//!
//! Symbols are every label name and value once, sorted bytewise (as strings sort). So comparing
//! two series' symbol numbers pair by pair compares their label sets the way Prometheus orders
//! series ([`SeriesKeyRef::cmp_as_labels`]): series are numbered in *label order*, which is the
//! order every read answers in (no sort after a block read), and a name's values are in order
//! too. A record is `varint pairs`, then `pairs` times
//! `varint name, varint value` (symbols), then its chunk: `varint offset, varint length,
//! u32 crc, varint zigzag(min_t - base), varint (max_t - min_t), varint count, f64 last`.

use crate::block::ChunkMeta;
use crate::codec::{put as varint, unzig, zig};
use ahash::AHashMap;
use std::cmp::Ordering;
use std::io::Write;
use strata_model::{MatchOp, Matcher, SeriesKeyRef};

/// Bytes of the directory that ends the section.
const DIRECTORY_LEN: usize = 6 * 4 + 8;

/// Longest key read from a block: far above any the ingestion limits let in (by default 30
/// labels, names of at most 1 KiB and values of 2 KiB), and a bound on the key a damaged
/// record naming one long symbol many times would build (its pairs times the section).
const MAX_KEY: usize = 1 << 24;

/// The order of series in a block: as their label sets sort.
pub(crate) fn label_order(a: &[u8], b: &[u8]) -> Ordering {
    SeriesKeyRef::new_unchecked(a).cmp_as_labels(&SeriesKeyRef::new_unchecked(b))
}

/// Where the parts of an index section lie: read and checked once at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Directory {
    symbols: u32,
    symbol_ends: usize,
    symbol_bytes: usize,
    series: u32,
    series_at: usize,
    records: usize,
    postings: usize,
    values: usize,
    value_count: u32,
    names: usize,
    name_count: u32,
    base_t: i64,
}

/// Damage found in an index section, with what was wrong.
#[derive(Debug)]
pub(crate) struct Damaged(pub String);

fn damaged<T>(what: impl Into<String>) -> Result<T, Damaged> {
    Err(Damaged(what.into()))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, Damaged> {
    match at.checked_add(4).and_then(|e| b.get(at..e)) {
        Some(x) => Ok(u32::from_le_bytes(x.try_into().expect("4 bytes"))),
        None => damaged(format!("index read at {at} past its end")),
    }
}

impl Directory {
    /// Reads and checks the directory at the end of `b`, an index section.
    pub fn read(b: &[u8]) -> Result<Directory, Damaged> {
        let Some(d) = b.len().checked_sub(DIRECTORY_LEN) else {
            return damaged("index shorter than its directory");
        };
        let off = |i: usize| u32_at(b, d + 4 * i).map(|v| v as usize);
        let (series_at_sec, postings, values, names) = (off(0)?, off(1)?, off(2)?, off(3)?);
        let (value_count, name_count) = (off(4)? as u32, off(5)? as u32);
        let base_t = i64::from_le_bytes(b[d + 24..d + 32].try_into().expect("8 bytes"));
        let symbols = u32_at(b, 0)?;
        let symbol_ends = 4;
        let symbol_bytes = symbol_ends + 4 * symbols as usize;
        let series = u32_at(b, series_at_sec)?;
        let series_at = series_at_sec + 4;
        let records = series_at + 4 * series as usize;
        let ordered = symbol_bytes <= series_at_sec
            && records <= postings
            && postings <= values
            && values + 12 * value_count as usize == names
            && names + 12 * name_count as usize == d;
        if !ordered {
            return damaged("index sections out of order or overlapping");
        }
        let dir = Directory {
            symbols,
            symbol_ends,
            symbol_bytes,
            series,
            series_at,
            records,
            postings,
            values,
            value_count,
            names,
            name_count,
            base_t,
        };
        // The symbols' bytes must fit before the series section.
        if symbols > 0 && symbol_bytes + u32_at(b, symbol_bytes - 4)? as usize > series_at_sec {
            return damaged("symbols overrun their section");
        }
        Ok(dir)
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series as usize
    }
}

/// An index section and its directory: every read checks its bounds, so damage behind a
/// correct checksum is an error, never a panic.
#[derive(Clone, Copy)]
pub(crate) struct IndexView<'a> {
    pub b: &'a [u8],
    pub d: &'a Directory,
}

/// One series' record, decoded.
struct Record<'a> {
    /// `(name, value)` symbols, still encoded.
    pairs: &'a [u8],
    npairs: usize,
    meta: ChunkMeta,
}

impl<'a> IndexView<'a> {
    /// Symbol `i`.
    fn symbol(&self, i: u32) -> Result<&'a [u8], Damaged> {
        if i >= self.d.symbols {
            return damaged(format!("symbol {i} of {}", self.d.symbols));
        }
        let at = self.d.symbol_ends;
        let start = if i == 0 {
            0
        } else {
            u32_at(self.b, at + 4 * (i as usize - 1))? as usize
        };
        let end = u32_at(self.b, at + 4 * i as usize)? as usize;
        let base = self.d.symbol_bytes;
        match (start <= end).then(|| self.b.get(base + start..base + end)) {
            Some(Some(s)) => Ok(s),
            _ => damaged(format!("symbol {i} out of range")),
        }
    }

    /// The number of symbol `s`, if it is one.
    fn find_symbol(&self, s: &[u8]) -> Result<Option<u32>, Damaged> {
        let (mut lo, mut hi) = (0u32, self.d.symbols);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.symbol(mid)?.cmp(s) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }

    fn record(&self, id: u32) -> Result<Record<'a>, Damaged> {
        if id >= self.d.series {
            return damaged(format!("series {id} of {}", self.d.series));
        }
        let at = u32_at(self.b, self.d.series_at + 4 * id as usize)? as usize;
        let start = self.d.records + at;
        let Some(rec) = self.b.get(start..self.d.postings) else {
            return damaged(format!("series {id}'s record out of range"));
        };
        let bad = || Damaged(format!("series {id}'s record damaged"));
        let mut r = Reader { b: rec, p: 0 };
        let npairs = r.varint().ok_or_else(bad)? as usize;
        let pairs_at = r.p;
        for _ in 0..npairs.checked_mul(2).ok_or_else(bad)? {
            r.varint().ok_or_else(bad)?;
        }
        let pairs = &rec[pairs_at..r.p];
        let meta = (|| {
            let offset = r.varint()?;
            let len = u32::try_from(r.varint()?).ok()?;
            let crc = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?);
            let min_t = self.d.base_t.checked_add(unzig(r.varint()?))?;
            let max_t = min_t.checked_add(i64::try_from(r.varint()?).ok()?)?;
            let count = u32::try_from(r.varint()?).ok()?;
            let last = f64::from_bits(u64::from_le_bytes(r.bytes(8)?.try_into().ok()?));
            Some(ChunkMeta::new(
                offset,
                len,
                crc,
                min_t,
                max_t,
                count,
                Some(last),
            ))
        })()
        .ok_or_else(bad)?;
        Ok(Record {
            pairs,
            npairs,
            meta,
        })
    }

    /// Where series `id`'s chunk lies.
    pub fn meta(&self, id: u32) -> Result<ChunkMeta, Damaged> {
        Ok(self.record(id)?.meta)
    }

    /// Series `id`'s chunk, and its key written into `key` (cleared first).
    pub fn entry(&self, id: u32, key: &mut Vec<u8>) -> Result<ChunkMeta, Damaged> {
        let rec = self.record(id)?;
        key.clear();
        let mut r = Reader { b: rec.pairs, p: 0 };
        for _ in 0..rec.npairs * 2 {
            let s = r.varint().expect("checked when the record was read");
            let s = self.symbol(sym(s)?)?;
            if key.len() + s.len() >= MAX_KEY {
                return damaged(format!("series {id}'s key is over {MAX_KEY} bytes"));
            }
            key.extend_from_slice(s);
            key.push(0xFF);
        }
        // Well formed, and its names ascending and each once, as `Labels` hold them.
        let ascending = |k: SeriesKeyRef<'_>| {
            let mut names = k.pairs().map(|(n, _)| n);
            let mut prev = names.next();
            names.all(|n| prev.replace(n).is_some_and(|p| p < n))
        };
        if !SeriesKeyRef::parse(key).is_some_and(ascending) {
            return damaged(format!("series {id}'s key is not well formed"));
        }
        Ok(rec.meta)
    }

    /// The value of label `name` (a symbol) of series `id`.
    fn label_value(&self, id: u32, name: u32) -> Result<Option<&'a [u8]>, Damaged> {
        let rec = self.record(id)?;
        let mut r = Reader { b: rec.pairs, p: 0 };
        for _ in 0..rec.npairs {
            let n = r.varint().expect("checked when the record was read");
            let v = r.varint().expect("checked when the record was read");
            if n == u64::from(name) {
                return self.symbol(sym(v)?).map(Some);
            }
        }
        Ok(None)
    }

    /// The series with `key`, if present (series are numbered in label order).
    pub fn find(&self, key: SeriesKeyRef<'_>) -> Result<Option<u32>, Damaged> {
        let (mut lo, mut hi) = (0u32, self.d.series);
        let mut buf = Vec::with_capacity(key.as_bytes().len() + 16);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.entry(mid, &mut buf)?;
            match label_order(&buf, key.as_bytes()) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }

    /// `(value symbol, postings offset, count)` of value entry `i`.
    fn value_entry(&self, i: u32) -> Result<(u32, usize, u32), Damaged> {
        let at = self.d.values + 12 * i as usize;
        Ok((
            u32_at(self.b, at)?,
            u32_at(self.b, at + 4)? as usize,
            u32_at(self.b, at + 8)?,
        ))
    }

    /// The value entries of label name `name`, and its symbol.
    fn values_of(&self, name: &[u8]) -> Result<Option<(u32, std::ops::Range<u32>)>, Damaged> {
        let Some(nsym) = self.find_symbol(name)? else {
            return Ok(None);
        };
        let (mut lo, mut hi) = (0u32, self.d.name_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.d.names + 12 * mid as usize;
            match u32_at(self.b, at)?.cmp(&nsym) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => {
                    let (from, to) = (u32_at(self.b, at + 4)?, u32_at(self.b, at + 8)?);
                    if from > to || to > self.d.value_count {
                        return damaged(format!("label name {mid}'s values out of range"));
                    }
                    return Ok(Some((nsym, from..to)));
                }
            }
        }
        Ok(None)
    }

    /// Appends the series of value entry `i` to `out`.
    fn postings(&self, i: u32, out: &mut Vec<u32>) -> Result<(), Damaged> {
        let (_, at, count) = self.value_entry(i)?;
        let bad = || Damaged(format!("postings of label value {i} damaged"));
        let b = self
            .b
            .get(self.d.postings + at..self.d.values)
            .ok_or_else(bad)?;
        // Each takes at least a byte: a count beyond the section is damage.
        if count as usize > b.len() {
            return Err(bad());
        }
        out.reserve(count as usize);
        let mut r = Reader { b, p: 0 };
        let mut id = 0u64;
        for k in 0..count {
            let d = r.varint().ok_or_else(bad)?;
            id = if k == 0 {
                d
            } else {
                id.saturating_add(d.max(1))
            };
            if id >= u64::from(self.d.series) {
                return Err(bad());
            }
            out.push(id as u32);
        }
        Ok(())
    }

    /// Series whose label `m.name` is present and matches `m`, ascending.
    fn postings_for(&self, m: &Matcher) -> Result<Vec<u32>, Damaged> {
        let Some((_, range)) = self.values_of(m.name.as_bytes())? else {
            return Ok(Vec::new());
        };
        let value = |i: u32| -> Result<&'a [u8], Damaged> { self.symbol(self.value_entry(i)?.0) };
        // A name's values are in symbol order, which is key order.
        let find = |v: &[u8]| -> Result<Option<u32>, Damaged> {
            let (mut lo, mut hi) = (range.start, range.end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match value(mid)?.cmp(v) {
                    Ordering::Less => lo = mid + 1,
                    Ordering::Greater => hi = mid,
                    Ordering::Equal => return Ok(Some(mid)),
                }
            }
            Ok(None)
        };
        let mut entries = Vec::new();
        match (&m.op, m.literal_alternatives()) {
            (MatchOp::Equal, _) => entries.extend(find(m.value.as_bytes())?),
            (_, Some(alts)) => {
                for a in alts {
                    entries.extend(find(a.as_bytes())?);
                }
            }
            _ => {
                for i in range {
                    if m.matches(std::str::from_utf8(value(i)?).unwrap_or("")) {
                        entries.push(i);
                    }
                }
            }
        }
        let mut out = Vec::new();
        for &i in &entries {
            self.postings(i, &mut out)?;
            // A series has one value of a name: the name's values hold it once in all.
            if out.len() > self.len() {
                return damaged(format!(
                    "postings of label name {:?} hold more than its block's series",
                    m.name
                ));
            }
        }
        if entries.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        Ok(out)
    }

    /// Series matching every matcher, ascending; see [`crate::index::select`].
    pub fn select(&self, matchers: &[Matcher]) -> Result<Vec<u32>, Damaged> {
        let failed = std::cell::RefCell::new(None);
        let fail = |e: Damaged| {
            failed.borrow_mut().get_or_insert(e);
        };
        let ids = crate::index::select(
            self.len(),
            matchers,
            |m| {
                self.postings_for(m).unwrap_or_else(|e| {
                    fail(e);
                    Vec::new()
                })
            },
            |ids, rest| {
                // Each name's symbol once; a name no series has matches only the empty value.
                let names: Vec<Option<u32>> = rest
                    .iter()
                    .map(|m| self.find_symbol(m.name.as_bytes()).unwrap_or(None))
                    .collect();
                ids.retain(|&id| {
                    rest.iter().zip(&names).all(|(m, n)| {
                        let v = match n {
                            Some(n) => self.label_value(id, *n).unwrap_or_else(|e| {
                                fail(e);
                                None
                            }),
                            None => None,
                        };
                        m.matches(std::str::from_utf8(v.unwrap_or(b"")).unwrap_or(""))
                    })
                });
            },
        );
        match failed.into_inner() {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.d.len()
    }

    /// Calls `f` with every label name, in order.
    pub fn label_names(&self, mut f: impl FnMut(&'a [u8])) -> Result<(), Damaged> {
        for k in 0..self.d.name_count as usize {
            f(self.symbol(u32_at(self.b, self.d.names + 12 * k)?)?);
        }
        Ok(())
    }

    /// Calls `f` with every value of label `name`, in key order.
    pub fn label_values(&self, name: &[u8], mut f: impl FnMut(&'a [u8])) -> Result<(), Damaged> {
        if let Some((_, range)) = self.values_of(name)? {
            for i in range {
                f(self.symbol(self.value_entry(i)?.0)?);
            }
        }
        Ok(())
    }
}

fn sym(v: u64) -> Result<u32, Damaged> {
    u32::try_from(v).or_else(|_| damaged(format!("symbol {v} out of range")))
}

/// Builds an index section from series given in any order (each key once): keeps each
/// distinct label string once and each series' labels as symbol numbers, about 50 bytes a
/// series, so a block of millions of series is written without holding their keys.
#[derive(Default)]
pub(crate) struct IndexBuilder {
    /// Each distinct string's number in the order first seen.
    numbers: AHashMap<Box<[u8]>, u32>,
    strings: Vec<Box<[u8]>>,
    /// The symbols of every series' labels, name and value, series after series.
    pairs: Vec<u32>,
    series: Vec<Entry>,
    /// The last key pushed, while keys come in key order (then no sort is needed).
    last_key: Option<Vec<u8>>,
    sorted: bool,
}

/// One series pushed: where its symbols end in `pairs`, and its chunk.
struct Entry {
    pairs_end: u32,
    offset: u64,
    len: u32,
    crc: u32,
    min_t: i64,
    max_t: i64,
    count: u32,
    last: f64,
}

/// What went wrong building an index.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// The same key was pushed twice.
    Duplicate(Vec<u8>),
    /// More than the 32-bit offsets reach.
    TooLarge,
    /// Writing failed.
    Io(std::io::Error),
}

impl IndexBuilder {
    /// A builder expecting keys in order (it checks, and sorts at the end if they were not).
    pub fn new() -> IndexBuilder {
        IndexBuilder {
            sorted: true,
            ..IndexBuilder::default()
        }
    }

    /// Series pushed so far.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Adds a series and where its chunk lies.
    pub fn push(&mut self, key: SeriesKeyRef<'_>, m: &ChunkMeta, last: f64) {
        if self.sorted {
            let k = key.as_bytes();
            match &mut self.last_key {
                Some(prev) if label_order(prev, k) != Ordering::Less => self.sorted = false,
                Some(prev) => {
                    prev.clear();
                    prev.extend_from_slice(k);
                }
                None => self.last_key = Some(k.to_vec()),
            }
            if !self.sorted {
                self.last_key = None;
            }
        }
        for (n, v) in key.pairs() {
            for s in [n, v] {
                let next = self.strings.len() as u32;
                let id = *self.numbers.entry(s.into()).or_insert_with(|| next);
                if id == next {
                    self.strings.push(s.into());
                }
                self.pairs.push(id);
            }
        }
        self.series.push(Entry {
            pairs_end: self.pairs.len() as u32,
            offset: m.offset(),
            len: m.encoded_len(),
            crc: m.crc(),
            min_t: m.min_t,
            max_t: m.max_t,
            count: m.count,
            last,
        });
    }

    fn pairs_of(&self, i: usize) -> &[u32] {
        let start = if i == 0 {
            0
        } else {
            self.series[i - 1].pairs_end as usize
        };
        &self.pairs[start..self.series[i].pairs_end as usize]
    }

    /// Writes the section to `w`; `base_t` is the block's earliest time.
    pub fn write(mut self, base_t: i64, w: &mut impl Write) -> Result<(), BuildError> {
        let too_large = |n: usize| u32::try_from(n).map_err(|_| BuildError::TooLarge);
        // Symbols in key order; series' symbols renumbered.
        let mut order: Vec<u32> = (0..self.strings.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.strings[a as usize].cmp(&self.strings[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (r, &s) in order.iter().enumerate() {
            rank[s as usize] = r as u32;
        }
        self.numbers = AHashMap::new();
        for p in &mut self.pairs {
            *p = rank[*p as usize];
        }
        drop(rank);
        // Series in key order: symbol sequences compare as keys do.
        let mut series: Vec<u32> = (0..self.series.len() as u32).collect();
        if !self.sorted {
            series.sort_unstable_by(|&a, &b| {
                self.pairs_of(a as usize).cmp(self.pairs_of(b as usize))
            });
        }
        for w in series.windows(2) {
            if self.pairs_of(w[0] as usize) == self.pairs_of(w[1] as usize) {
                let mut key = Vec::new();
                for &s in self.pairs_of(w[0] as usize) {
                    // Symbols are ranks now; the strings are still in the order first seen.
                    key.extend_from_slice(&self.strings[order[s as usize] as usize]);
                    key.push(0xFF);
                }
                return Err(BuildError::Duplicate(key));
            }
        }
        let mut w = Counting { w, at: 0 };
        // Symbols.
        w.put(&too_large(order.len())?.to_le_bytes())?;
        let mut end = 0usize;
        for &s in &order {
            end += self.strings[s as usize].len();
            w.put(&too_large(end)?.to_le_bytes())?;
        }
        for &s in &order {
            w.put(&self.strings[s as usize])?;
        }
        self.strings = Vec::new();
        // Series: the records' offsets (a first pass for their lengths), then the records.
        let series_at = w.at;
        w.put(&too_large(series.len())?.to_le_bytes())?;
        let mut rec = Vec::with_capacity(128);
        let record = |rec: &mut Vec<u8>, i: u32| {
            rec.clear();
            let p = self.pairs_of(i as usize);
            varint(rec, (p.len() / 2) as u64);
            for &s in p {
                varint(rec, u64::from(s));
            }
            let e = &self.series[i as usize];
            varint(rec, e.offset);
            varint(rec, u64::from(e.len));
            rec.extend_from_slice(&e.crc.to_le_bytes());
            varint(rec, zig(e.min_t.wrapping_sub(base_t)));
            varint(rec, e.max_t.wrapping_sub(e.min_t) as u64);
            varint(rec, u64::from(e.count));
            rec.extend_from_slice(&e.last.to_bits().to_le_bytes());
        };
        let mut off = 0usize;
        for &i in &series {
            record(&mut rec, i);
            w.put(&too_large(off)?.to_le_bytes())?;
            off += rec.len();
        }
        for &i in &series {
            record(&mut rec, i);
            w.put(&rec)?;
        }
        // Postings: each (name, value) pair's series, numbered in key order.
        let mut values: AHashMap<(u32, u32), u32> = AHashMap::new();
        for &i in &series {
            for nv in self.pairs_of(i as usize).chunks_exact(2) {
                *values.entry((nv[0], nv[1])).or_default() += 1;
            }
        }
        let mut entries: Vec<((u32, u32), u32)> = values.into_iter().collect();
        entries.sort_unstable();
        let mut start = Vec::with_capacity(entries.len());
        let mut total = 0usize;
        let mut slot: AHashMap<(u32, u32), u32> = AHashMap::with_capacity(entries.len());
        for (k, (nv, count)) in entries.iter().enumerate() {
            start.push(total);
            total += *count as usize;
            slot.insert(*nv, k as u32);
        }
        let mut fill = start.clone();
        let mut ids = vec![0u32; total];
        for (number, &i) in series.iter().enumerate() {
            for nv in self.pairs_of(i as usize).chunks_exact(2) {
                let k = slot[&(nv[0], nv[1])] as usize;
                ids[fill[k]] = number as u32;
                fill[k] += 1;
            }
        }
        drop((slot, fill));
        self.pairs = Vec::new();
        self.series = Vec::new();
        let postings_at = w.at;
        let mut offsets = Vec::with_capacity(entries.len());
        let mut buf = Vec::with_capacity(1 << 16);
        for (k, (_, count)) in entries.iter().enumerate() {
            offsets.push(too_large(w.at - postings_at)?);
            let list = &ids[start[k]..start[k] + *count as usize];
            let mut prev = 0u32;
            for (j, &id) in list.iter().enumerate() {
                varint(&mut buf, u64::from(if j == 0 { id } else { id - prev }));
                prev = id;
                if buf.len() >= 1 << 16 {
                    w.put(&buf)?;
                    buf.clear();
                }
            }
            w.put(&buf)?;
            buf.clear();
        }
        drop(ids);
        // Values, name after name; then names.
        let values_at = w.at;
        let mut names: Vec<(u32, u32, u32)> = Vec::new();
        for (k, ((n, v), count)) in entries.iter().enumerate() {
            match names.last_mut() {
                Some(last) if last.0 == *n => last.2 = k as u32 + 1,
                _ => names.push((*n, k as u32, k as u32 + 1)),
            }
            let mut e = [0u8; 12];
            e[..4].copy_from_slice(&v.to_le_bytes());
            e[4..8].copy_from_slice(&offsets[k].to_le_bytes());
            e[8..].copy_from_slice(&count.to_le_bytes());
            w.put(&e)?;
        }
        let names_at = w.at;
        for (n, from, to) in &names {
            let mut e = [0u8; 12];
            e[..4].copy_from_slice(&n.to_le_bytes());
            e[4..8].copy_from_slice(&from.to_le_bytes());
            e[8..].copy_from_slice(&to.to_le_bytes());
            w.put(&e)?;
        }
        let mut dir = Vec::with_capacity(DIRECTORY_LEN);
        for v in [
            series_at,
            postings_at,
            values_at,
            names_at,
            entries.len(),
            names.len(),
        ] {
            dir.extend_from_slice(&too_large(v)?.to_le_bytes());
        }
        dir.extend_from_slice(&base_t.to_le_bytes());
        w.put(&dir)?;
        too_large(w.at)?;
        Ok(())
    }
}

/// A writer that counts what it was given: section offsets are positions in the section.
struct Counting<'w, W: Write> {
    w: &'w mut W,
    at: usize,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<(), BuildError> {
        self.w.write_all(b).map_err(BuildError::Io)?;
        self.at += b.len();
        Ok(())
    }
}

/// Reads varints and bytes from a buffer, `None` past its end.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `b`.
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, p: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.p
    }

    /// The next varint.
    pub fn varint(&mut self) -> Option<u64> {
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

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    fn key(pairs: &[(&str, &str)]) -> Vec<u8> {
        Labels::from_pairs(pairs.iter().map(|&(n, v)| (n, v)))
            .unwrap()
            .key()
            .as_bytes()
            .to_vec()
    }

    /// Series sort as their label sets do, where key bytes would not (a value before the
    /// values it starts with).
    #[test]
    fn label_order_is_the_order_of_label_sets() {
        let words = ["a", "ab", "abc", "b", "", "a\u{e9}", "z", "zz"];
        for x in words {
            for y in words {
                let set = |v: &str| Labels::from_pairs([("n", v), ("o", "1")]).unwrap();
                let (kx, ky) = (key(&[("n", x), ("o", "1")]), key(&[("n", y), ("o", "1")]));
                assert_eq!(label_order(&kx, &ky), set(x).cmp(&set(y)), "{x:?} {y:?}");
            }
        }
    }

    fn meta(i: u64) -> ChunkMeta {
        ChunkMeta::new(
            40 + i * 10,
            10,
            i as u32,
            1000 + i as i64,
            2000 + i as i64,
            3,
            None,
        )
    }

    /// Built from series in any order, read in place: keys in order, chunks where pushed, and
    /// every matcher kind answers as the head's index does.
    #[test]
    fn round_trip_and_select() {
        let sets: Vec<Vec<(&str, &str)>> = vec![
            vec![("__name__", "up"), ("job", "a"), ("env", "prod")],
            vec![("__name__", "up"), ("job", "b")],
            vec![("__name__", "up"), ("job", "c"), ("env", "dev")],
            vec![("__name__", "down"), ("job", "a")],
            vec![("__name__", "up"), ("job", "ab")],
        ];
        let keys: Vec<Vec<u8>> = sets.iter().map(|s| key(s)).collect();
        let mut head = crate::index::Index::default();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| label_order(a, b));
        for k in &sorted {
            head.add(strata_model::SeriesKey::from_bytes(k).unwrap());
        }
        for reverse in [false, true] {
            let mut b = IndexBuilder::new();
            let order: Vec<usize> = if reverse {
                (0..keys.len()).rev().collect()
            } else {
                (0..keys.len()).collect()
            };
            for &i in &order {
                b.push(
                    SeriesKeyRef::parse(&keys[i]).unwrap(),
                    &meta(i as u64),
                    i as f64,
                );
            }
            let mut bytes = Vec::new();
            b.write(500, &mut bytes).unwrap();
            let d = Directory::read(&bytes).unwrap();
            let v = IndexView { b: &bytes, d: &d };
            assert_eq!(v.len(), keys.len());
            let mut buf = Vec::new();
            for (id, k) in sorted.iter().enumerate() {
                let m = v.entry(id as u32, &mut buf).unwrap();
                assert_eq!(&buf, k);
                let i = keys.iter().position(|x| x == k).unwrap();
                assert_eq!(
                    (m.offset(), m.min_t, m.max_t),
                    (
                        meta(i as u64).offset(),
                        meta(i as u64).min_t,
                        meta(i as u64).max_t
                    )
                );
                assert_eq!(m.last, Some(i as f64));
                assert_eq!(
                    v.find(SeriesKeyRef::parse(k).unwrap()).unwrap(),
                    Some(id as u32)
                );
            }
            assert_eq!(
                v.find(SeriesKeyRef::parse(&key(&[("a", "b")])).unwrap())
                    .unwrap(),
                None
            );
            let re = |n: &str, p: &str| Matcher::regex(n, p, false).unwrap();
            let nre = |n: &str, p: &str| Matcher::regex(n, p, true).unwrap();
            for ms in [
                vec![Matcher::equal("__name__", "up")],
                vec![
                    Matcher::equal("__name__", "up"),
                    Matcher::not_equal("job", "a"),
                ],
                vec![re("job", "a|c")],
                vec![re("job", "a.*")],
                vec![Matcher::equal("__name__", "up"), nre("env", "pro.*")],
                vec![Matcher::equal("__name__", "up"), Matcher::equal("env", "")],
                vec![Matcher::equal("__name__", "up"), re("env", ".+")],
                vec![Matcher::equal("__name__", "up"), re("env", ".*")],
                vec![Matcher::equal("__name__", "up"), Matcher::equal("nope", "")],
                vec![Matcher::equal("nope", "x")],
                vec![Matcher::not_equal("job", "a")],
            ] {
                assert_eq!(v.select(&ms).unwrap(), head.select(&ms), "{ms:?}");
            }
        }
    }

    /// A key pushed twice is refused, and named as it was pushed (its strings first seen in
    /// an order other than key order: the error once named `a y z b`, names out of order).
    #[test]
    fn duplicates_are_refused() {
        let mut b = IndexBuilder::new();
        let k = key(&[("a", "z"), ("b", "y")]);
        b.push(SeriesKeyRef::parse(&k).unwrap(), &meta(0), 0.0);
        b.push(SeriesKeyRef::parse(&k).unwrap(), &meta(1), 0.0);
        match b.write(0, &mut Vec::new()) {
            Err(BuildError::Duplicate(d)) => assert_eq!(d, k),
            _ => panic!("a duplicate written"),
        }
    }
}
