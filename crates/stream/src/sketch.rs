//! Mergeable sketches for rollups: quantiles ([`Quantiles`], a DDSketch) and distinct counts
//! ([`Distinct`], a HyperLogLog).
//!
//! Rollups merge across windows, shards and tiers (1h from 1m), so a sketch is only useful here
//! if merging is exact: the merge of the sketches of two inputs equals the sketch of their union,
//! in any order and grouping. Both sketches are therefore pure functions of what was added
//! (bucket counts, register maxima): no bucket collapsing, no order-dependent floating-point
//! state. That rules out the `sketches-ddsketch` crate (its stores collapse their lowest buckets
//! once past a bin limit, which depends on arrival order) and `cardinality-estimator` (it keeps
//! the HyperLogLog harmonic sum as an incrementally updated `f32`), so both are small own code.

use std::collections::BTreeMap;
use std::f64::consts::LN_2;
use std::fmt;
use xxhash_rust::xxh3::xxh3_64;

/// Finest accepted relative accuracy: finer ones would need bucket keys beyond `i32`.
const MIN_ACCURACY: f64 = 1e-6;

/// A DDSketch: quantiles of `f64` values with a relative accuracy guarantee, merged exactly.
///
/// Each magnitude `v` lands in bucket `ceil(log_γ v)` with γ = (1 + α) / (1 - α); a bucket
/// answers with a representative within α (relative) of everything it holds. Negative values
/// have a store of their own (keyed by magnitude), zeros a count. Buckets are sparse maps with no
/// size limit, so the sketch is a function of the multiset of values; it grows with the log of
/// the value range (at most about 115 buckets per decade of magnitude at α = 1%).
///
/// NaN values are ignored. Infinities are counted and answered as infinities. The guarantee holds
/// for magnitudes in the normal `f64` range; quantiles are also clamped to the exact min and max.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantiles {
    alpha: f64,
    /// ln γ: bucket k holds magnitudes in (γ^(k-1), γ^k].
    ln_gamma: f64,
    /// Bucket counts of negative values, keyed by the bucket of their magnitude.
    negative: BTreeMap<i32, u64>,
    positive: BTreeMap<i32, u64>,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

impl Default for Quantiles {
    fn default() -> Quantiles {
        Quantiles::new()
    }
}

impl Quantiles {
    /// The relative accuracy of [`Quantiles::new`]: 1%.
    pub const DEFAULT_ACCURACY: f64 = 0.01;

    /// An empty sketch with 1% relative accuracy.
    pub fn new() -> Quantiles {
        Quantiles::build(Quantiles::DEFAULT_ACCURACY)
    }

    /// An empty sketch with relative accuracy `alpha`; `None` unless `1e-6 <= alpha < 1`.
    pub fn with_accuracy(alpha: f64) -> Option<Quantiles> {
        (MIN_ACCURACY..1.0)
            .contains(&alpha)
            .then(|| Quantiles::build(alpha))
    }

    fn build(alpha: f64) -> Quantiles {
        Quantiles {
            alpha,
            // ln((1 + α) / (1 - α)), accurate for small α.
            ln_gamma: (2.0 * alpha / (1.0 - alpha)).ln_1p(),
            negative: BTreeMap::new(),
            positive: BTreeMap::new(),
            zero: 0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds a value; NaN is ignored.
    pub fn add(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        if v > 0.0 {
            bump(self.positive.entry(self.key(v)).or_default(), 1);
        } else if v < 0.0 {
            bump(self.negative.entry(self.key(-v)).or_default(), 1);
        } else {
            self.zero = self.zero.saturating_add(1);
        }
        // -0.0 is recorded as 0.0 so min and max do not depend on arrival order.
        let v = if v == 0.0 { 0.0 } else { v };
        self.count = self.count.saturating_add(1);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds everything `other` holds.
    ///
    /// With equal relative accuracy (the precondition for rollups) this is exact: the result
    /// equals the sketch of the union of both inputs. Otherwise `other`'s buckets are re-bucketed
    /// by their representatives, which is approximate: those values then carry the error of both
    /// sketches (about α + α').
    pub fn merge(&mut self, other: &Quantiles) {
        let same = self.alpha == other.alpha;
        for (mine, theirs) in [
            (&mut self.negative, &other.negative),
            (&mut self.positive, &other.positive),
        ] {
            for (&k, &c) in theirs {
                let k = if same {
                    k
                } else {
                    key(self.ln_gamma, other.representative(k))
                };
                bump(mine.entry(k).or_default(), c);
            }
        }
        self.zero = self.zero.saturating_add(other.zero);
        self.count = self.count.saturating_add(other.count);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0 = min, 1 = max, else the value of rank `floor(q * (n - 1))`
    /// among the `n` values in ascending order), within the relative accuracy; `None` when the
    /// sketch is empty or `q` is outside `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let whole = Totals {
            count: self.count,
            zero: self.zero,
            min: self.min,
            max: self.max,
        };
        let negative = self.negative.iter().rev().map(|(&k, &c)| (k, c));
        let positive = self.positive.iter().map(|(&k, &c)| (k, c));
        whole.quantile(q, negative, positive, |k| self.representative(k))
    }

    /// Values added (NaN excluded).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The relative accuracy α: a quantile is within `α * |exact|` of the exact value.
    pub fn relative_accuracy(&self) -> f64 {
        self.alpha
    }

    /// Appends the sketch: accuracy (`f64`), zero count, the negative then the positive store
    /// (bucket count, then per bucket a key delta and a count, as varints), and min and max
    /// (`f64`) when not empty; little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.alpha.to_le_bytes());
        put_varint(out, self.zero);
        for store in [&self.negative, &self.positive] {
            put_varint(out, store.len() as u64);
            let mut prev = None;
            for (&k, &c) in store {
                // The first key zigzag-encoded, then increasing deltas.
                let d = match prev {
                    None => ((i64::from(k) << 1) ^ (i64::from(k) >> 63)) as u64,
                    Some(p) => (i64::from(k) - i64::from(p)) as u64,
                };
                put_varint(out, d);
                put_varint(out, c);
                prev = Some(k);
            }
        }
        if self.count > 0 {
            out.extend_from_slice(&self.min.to_le_bytes());
            out.extend_from_slice(&self.max.to_le_bytes());
        }
    }

    /// Decodes what [`Quantiles::encode`] wrote and advances `buf` past it; `None` (with `buf`
    /// unchanged) on truncated or invalid input.
    pub fn decode(buf: &mut &[u8]) -> Option<Quantiles> {
        let (mut negative, mut positive) = (BTreeMap::new(), BTreeMap::new());
        let h = decode_buckets(buf, |positive_store, k, c| {
            let store = if positive_store {
                &mut positive
            } else {
                &mut negative
            };
            store.insert(k, c);
        })?;
        let mut s = Quantiles::build(h.alpha);
        (s.negative, s.positive) = (negative, positive);
        (s.zero, s.count, s.min, s.max) = (h.zero, h.count, h.min, h.max);
        Some(s)
    }

    fn key(&self, magnitude: f64) -> i32 {
        key(self.ln_gamma, magnitude)
    }

    /// γ^k (1 - α): within α of both bucket ends γ^(k-1) and γ^k.
    fn representative(&self, k: i32) -> f64 {
        representative(self.ln_gamma, self.alpha, k)
    }
}

/// What an encoded sketch holds besides its buckets.
struct Header {
    alpha: f64,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

/// Decodes what [`Quantiles::encode`] wrote, giving each bucket to `bucket(positive, key,
/// count)` in ascending key order, the negative store's first, and advances `buf` past it;
/// `None` (with `buf` unchanged) on truncated or invalid input.
fn decode_buckets(buf: &mut &[u8], mut bucket: impl FnMut(bool, i32, u64)) -> Option<Header> {
    let mut cur = *buf;
    let alpha = get_f64(&mut cur)?;
    if !(MIN_ACCURACY..1.0).contains(&alpha) {
        return None;
    }
    let zero = get_varint(&mut cur)?;
    let mut count = zero;
    for positive in [false, true] {
        let mut key: Option<i64> = None;
        for _ in 0..get_varint(&mut cur)? {
            let d = get_varint(&mut cur)?;
            let k = match key {
                None => ((d >> 1) as i64) ^ -((d & 1) as i64),
                Some(p) if d > 0 => p.checked_add(i64::try_from(d).ok()?)?,
                Some(_) => return None,
            };
            let c = get_varint(&mut cur)?;
            if c == 0 {
                return None;
            }
            count = count.checked_add(c)?;
            bucket(positive, i32::try_from(k).ok()?, c);
            key = Some(k);
        }
    }
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    if count > 0 {
        (min, max) = (get_f64(&mut cur)?, get_f64(&mut cur)?);
        // Rejects NaN too; + 0.0 turns -0.0 into 0.0 as add does.
        if min.is_nan() || max.is_nan() || min > max {
            return None;
        }
        (min, max) = (min + 0.0, max + 0.0);
    }
    *buf = cur;
    Some(Header {
        alpha,
        zero,
        count,
        min,
        max,
    })
}

/// What a sketch (or a merge of sketches) holds besides its buckets, for [`Totals::quantile`].
struct Totals {
    count: u64,
    zero: u64,
    min: f64,
    max: f64,
}

impl Totals {
    /// The value at quantile `q` (see [`Quantiles::quantile`]) of buckets given in ascending
    /// value order: `negative` from the largest magnitude down, then the zeros, then
    /// `positive`; `representative` is the value standing for a bucket's magnitude.
    fn quantile(
        &self,
        q: f64,
        negative: impl Iterator<Item = (i32, u64)>,
        positive: impl Iterator<Item = (i32, u64)>,
        representative: impl Fn(i32) -> f64,
    ) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.count - 1) as f64) as u64;
        let buckets = negative.map(|(k, c)| (-1.0, k, c));
        let buckets = buckets.chain(std::iter::once((0.0, 0, self.zero)));
        let mut seen = 0u64;
        for (sign, k, c) in buckets.chain(positive.map(|(k, c)| (1.0, k, c))) {
            seen = seen.saturating_add(c);
            if rank < seen {
                let v = if sign == 0.0 {
                    0.0
                } else {
                    sign * representative(k)
                };
                // max/min rather than clamp: never panics, even on odd decoded state.
                return Some(v.max(self.min).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// A quantile sketch as queries read it: the buckets of a [`Quantiles`] in sorted vectors,
/// decoded from a stored state without building its maps (a two-year query reads tens of
/// thousands of sketches, each asked one quantile).
#[derive(Debug, Clone, PartialEq)]
pub struct SortedQuantiles {
    alpha: f64,
    ln_gamma: f64,
    /// `(key, count)` by ascending key, as in [`Quantiles`].
    negative: Vec<(i32, u64)>,
    positive: Vec<(i32, u64)>,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

impl From<&Quantiles> for SortedQuantiles {
    fn from(q: &Quantiles) -> SortedQuantiles {
        let sorted = |m: &BTreeMap<i32, u64>| m.iter().map(|(&k, &c)| (k, c)).collect();
        SortedQuantiles {
            alpha: q.alpha,
            ln_gamma: q.ln_gamma,
            negative: sorted(&q.negative),
            positive: sorted(&q.positive),
            zero: q.zero,
            count: q.count,
            min: q.min,
            max: q.max,
        }
    }
}

impl SortedQuantiles {
    /// Decodes what [`Quantiles::encode`] wrote, as [`Quantiles::decode`] does.
    pub fn decode(buf: &mut &[u8]) -> Option<SortedQuantiles> {
        let (mut negative, mut positive) = (Vec::new(), Vec::new());
        let h = decode_buckets(buf, |p, k, c| {
            if p { &mut positive } else { &mut negative }.push((k, c))
        })?;
        Some(SortedQuantiles {
            alpha: h.alpha,
            ln_gamma: Quantiles::build(h.alpha).ln_gamma,
            negative,
            positive,
            zero: h.zero,
            count: h.count,
            min: h.min,
            max: h.max,
        })
    }

    /// The sketch as a [`Quantiles`] again.
    fn to_quantiles(&self) -> Quantiles {
        let mut q = Quantiles::build(self.alpha);
        q.negative = self.negative.iter().copied().collect();
        q.positive = self.positive.iter().copied().collect();
        (q.zero, q.count, q.min, q.max) = (self.zero, self.count, self.min, self.max);
        q
    }

    /// [`Quantiles::quantile`] of the merge of `parts`, without building it: their buckets are
    /// walked in value order (the same answer as merging and asking; a query over a range of
    /// windows asks this once per step, most often of one sketch).
    pub fn quantile_of_merge(parts: &[&SortedQuantiles], q: f64) -> Option<f64> {
        let first = *parts.first()?;
        if parts.iter().any(|p| p.alpha != first.alpha) {
            let mut all = first.to_quantiles();
            parts[1..].iter().for_each(|p| all.merge(&p.to_quantiles()));
            return all.quantile(q);
        }
        let whole = Totals {
            count: parts.iter().fold(0u64, |a, p| a.saturating_add(p.count)),
            zero: parts.iter().fold(0u64, |a, p| a.saturating_add(p.zero)),
            min: parts.iter().map(|p| p.min).fold(f64::INFINITY, f64::min),
            max: parts
                .iter()
                .map(|p| p.max)
                .fold(f64::NEG_INFINITY, f64::max),
        };
        // One part's buckets are in order already; several parts' are gathered and sorted.
        let store =
            |of: fn(&SortedQuantiles) -> &[(i32, u64)]| -> std::borrow::Cow<'_, [(i32, u64)]> {
                match parts {
                    [one] => of(one).into(),
                    _ => {
                        let mut all: Vec<(i32, u64)> =
                            parts.iter().flat_map(|p| of(p).iter().copied()).collect();
                        all.sort_unstable_by_key(|b| b.0);
                        all.into()
                    }
                }
            };
        let (negative, positive) = (store(|p| &p.negative), store(|p| &p.positive));
        whole.quantile(
            q,
            negative.iter().rev().copied(),
            positive.iter().copied(),
            |k| first.representative(k),
        )
    }

    /// γ^k (1 - α), as [`Quantiles`]' representative.
    fn representative(&self, k: i32) -> f64 {
        representative(self.ln_gamma, self.alpha, k)
    }
}

/// The bucket of a positive magnitude; `as` saturates, so infinity gets `i32::MAX`.
fn key(ln_gamma: f64, magnitude: f64) -> i32 {
    (magnitude.ln() / ln_gamma).ceil() as i32
}

/// γ^k (1 - α) for γ = e^`ln_gamma`.
fn representative(ln_gamma: f64, alpha: f64, k: i32) -> f64 {
    (f64::from(k) * ln_gamma + (-alpha).ln_1p()).exp()
}

fn bump(count: &mut u64, by: u64) {
    *count = count.saturating_add(by);
}

/// HyperLogLog precision: 2^14 registers.
const PRECISION: u32 = 14;
const REGISTERS: usize = 1 << PRECISION;
/// Hash bits left after the register index; registers hold ranks `1..=RANK_BITS + 1`.
const RANK_BITS: u32 = 64 - PRECISION;
/// Up to this many distinct hashes are kept as such, and counted exactly.
const EXACT_LIMIT: usize = 1024;
/// Bytes of packed 6-bit registers in the encoding.
const PACKED_LEN: usize = REGISTERS * 6 / 8;

/// A distinct-count sketch of byte strings: exact up to 1024 distinct values, then a
/// HyperLogLog with 2^14 registers (relative standard error 1.04 / 128 ≈ 0.81%).
///
/// Values are hashed with xxh3 (64 bits). Small sets keep their sorted hashes, so their count
/// is exact (up to hash collisions); past 1024 hashes the sketch switches to registers. Which
/// form a sketch has depends only on the set of hashes, and registers only on their maxima, so
/// merging is exact. The estimate uses Ertl's improved raw estimator ("New
/// cardinality estimation algorithms for HyperLogLog sketches", 2017), which is unbiased over
/// the whole range without empirical bias tables.
#[derive(Clone, PartialEq, Eq)]
pub struct Distinct {
    repr: Repr,
}

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    /// Sorted distinct hashes, at most [`EXACT_LIMIT`].
    Exact(Vec<u64>),
    /// One rank per register.
    Registers(Box<[u8]>),
}

impl Default for Distinct {
    fn default() -> Distinct {
        Distinct::new()
    }
}

impl fmt::Debug for Distinct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distinct")
            .field("exact", &matches!(self.repr, Repr::Exact(_)))
            .field("estimate", &self.estimate())
            .finish()
    }
}

impl Distinct {
    /// An empty sketch (precision 14: standard error about 0.81% once past exact counting).
    pub fn new() -> Distinct {
        Distinct {
            repr: Repr::Exact(Vec::new()),
        }
    }

    /// Adds a value.
    pub fn add(&mut self, value: &[u8]) {
        self.insert(xxh3_64(value));
    }

    fn insert(&mut self, h: u64) {
        match &mut self.repr {
            Repr::Registers(r) => observe(r, h),
            Repr::Exact(hs) => match hs.binary_search(&h) {
                Ok(_) => {}
                Err(i) if hs.len() < EXACT_LIMIT => hs.insert(i, h),
                Err(_) => {
                    let mut r = vec![0; REGISTERS].into_boxed_slice();
                    hs.iter().chain([&h]).for_each(|&x| observe(&mut r, x));
                    self.repr = Repr::Registers(r);
                }
            },
        }
    }

    /// Adds everything `other` holds; the result equals the sketch of the union of both inputs.
    pub fn merge(&mut self, other: &Distinct) {
        let theirs = match &other.repr {
            Repr::Exact(hs) => {
                hs.iter().for_each(|&h| self.insert(h));
                return;
            }
            Repr::Registers(r) => r,
        };
        match &mut self.repr {
            Repr::Registers(mine) => {
                for (a, &b) in mine.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(b);
                }
            }
            Repr::Exact(hs) => {
                let mut r = theirs.clone();
                hs.iter().for_each(|&h| observe(&mut r, h));
                self.repr = Repr::Registers(r);
            }
        }
    }

    /// The estimated number of distinct values: exact up to 1024, then within
    /// [`Distinct::stated_error`] (one standard error, relative) of the true count.
    pub fn estimate(&self) -> u64 {
        let r = match &self.repr {
            Repr::Exact(hs) => return hs.len() as u64,
            Repr::Registers(r) => r,
        };
        // Ertl's estimator needs only the histogram of register values.
        let q = RANK_BITS as usize;
        let mut hist = [0u32; RANK_BITS as usize + 2];
        r.iter().for_each(|&x| hist[usize::from(x)] += 1);
        let m = REGISTERS as f64;
        let mut z = m * tau(1.0 - f64::from(hist[q + 1]) / m);
        for &c in hist[1..=q].iter().rev() {
            z = 0.5 * (z + f64::from(c));
        }
        z += m * sigma(f64::from(hist[0]) / m);
        (m * m / (2.0 * LN_2 * z)).round() as u64
    }

    /// The relative standard error of [`Distinct::estimate`] past exact counting:
    /// 1.04 / sqrt(2^14) ≈ 0.0081.
    pub fn stated_error(&self) -> f64 {
        1.04 / (REGISTERS as f64).sqrt()
    }

    /// Appends the sketch: a tag byte, then either (tag 0) a varint count and the sorted hashes
    /// as `u64` little-endian, or (tag 1) the registers packed 6 bits each.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.repr {
            Repr::Exact(hs) => {
                out.push(0);
                put_varint(out, hs.len() as u64);
                hs.iter()
                    .for_each(|h| out.extend_from_slice(&h.to_le_bytes()));
            }
            Repr::Registers(r) => {
                out.push(1);
                for four in r.chunks_exact(4) {
                    let w = four
                        .iter()
                        .enumerate()
                        .fold(0u32, |w, (i, &x)| w | (u32::from(x) << (6 * i)));
                    out.extend_from_slice(&w.to_le_bytes()[..3]);
                }
            }
        }
    }

    /// Decodes what [`Distinct::encode`] wrote and advances `buf` past it; `None` (with `buf`
    /// unchanged) on truncated or invalid input.
    pub fn decode(buf: &mut &[u8]) -> Option<Distinct> {
        let (&tag, mut cur) = buf.split_first()?;
        let repr = match tag {
            0 => {
                let n = usize::try_from(get_varint(&mut cur)?).ok()?;
                if n > EXACT_LIMIT {
                    return None;
                }
                let (bytes, rest) = cur.split_at_checked(8 * n)?;
                cur = rest;
                let hs: Vec<u64> = bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                    .collect();
                if hs.windows(2).any(|w| w[0] >= w[1]) {
                    return None;
                }
                Repr::Exact(hs)
            }
            1 => {
                let (bytes, rest) = cur.split_at_checked(PACKED_LEN)?;
                cur = rest;
                let mut r = Vec::with_capacity(REGISTERS);
                for three in bytes.chunks_exact(3) {
                    let w = u32::from_le_bytes([three[0], three[1], three[2], 0]);
                    r.extend((0..4).map(|i| ((w >> (6 * i)) & 0x3f) as u8));
                }
                if r.iter().any(|&x| u32::from(x) > RANK_BITS + 1) {
                    return None;
                }
                Repr::Registers(r.into_boxed_slice())
            }
            _ => return None,
        };
        *buf = cur;
        Some(Distinct { repr })
    }
}

/// Records hash `h`: its top bits pick a register, which keeps the highest rank (position of
/// the first 1 bit in the rest of the hash) seen.
fn observe(registers: &mut [u8], h: u64) {
    let i = (h >> RANK_BITS) as usize;
    let rank = (h << PRECISION).leading_zeros().min(RANK_BITS) as u8 + 1;
    registers[i] = registers[i].max(rank);
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1), for the share x of empty registers.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// Ertl's τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))^2 2^-k) / 3, for the share of saturated
/// registers.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

/// Appends `v` as a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint; `None` when truncated or too long.
pub(crate) fn get_varint(cur: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = cur.split_first()?;
        *cur = rest;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Reads a little-endian `f64`.
pub(crate) fn get_f64(cur: &mut &[u8]) -> Option<f64> {
    let (b, rest) = cur.split_first_chunk::<8>()?;
    *cur = rest;
    Some(f64::from_le_bytes(*b))
}

/// The query router merges a range's sketches through this (see `strata_promql`'s tiers).
impl strata_model::QuantileSketch for SortedQuantiles {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn merged_quantile(
        &self,
        others: &[&dyn strata_model::QuantileSketch],
        extra: &[f64],
        q: f64,
    ) -> Option<f64> {
        let mut parts: Vec<&SortedQuantiles> = Vec::with_capacity(others.len() + 2);
        parts.push(self);
        parts.extend(
            others
                .iter()
                .filter_map(|o| o.as_any().downcast_ref::<SortedQuantiles>()),
        );
        let single;
        if !extra.is_empty() {
            let mut s = Quantiles::build(self.alpha);
            extra.iter().for_each(|&v| s.add(v));
            single = SortedQuantiles::from(&s);
            parts.push(&single);
        }
        SortedQuantiles::quantile_of_merge(&parts, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sketch(xs: &[f64]) -> Quantiles {
        let mut s = Quantiles::new();
        xs.iter().for_each(|&x| s.add(x));
        s
    }

    const QS: [f64; 11] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

    /// The exact value the sketch approximates for `q` (same rank rule).
    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64) as usize]
    }

    fn assert_accurate(s: &Quantiles, xs: &[f64], alpha: f64) {
        let mut sorted: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        for q in QS {
            let (got, want) = (s.quantile(q).unwrap(), exact_quantile(&sorted, q));
            let ok = got == want || (got - want).abs() <= (alpha + 1e-12) * want.abs();
            assert!(ok, "q {q}: got {got}, want {want}");
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6..1e6f64,
            (-300.0..300.0f64, any::<bool>()).prop_map(|(e, neg)| if neg {
                -(10f64.powf(e))
            } else {
                10f64.powf(e)
            }),
            (0..20u8).prop_map(f64::from),
            Just(0.0),
            Just(-0.0),
        ]
    }

    fn quantile_bits(s: &Quantiles) -> Vec<Option<u64>> {
        QS.iter()
            .map(|&q| s.quantile(q).map(f64::to_bits))
            .collect()
    }

    #[test]
    fn empty_and_out_of_range() {
        let mut s = Quantiles::new();
        assert_eq!(s.quantile(0.5), None);
        s.add(f64::NAN);
        assert_eq!((s.count(), s.quantile(0.5)), (0, None));
        s.add(3.0);
        assert_eq!(s.quantile(-0.1), None);
        assert_eq!(s.quantile(1.1), None);
        assert_eq!(s.quantile(f64::NAN), None);
        assert_eq!(s.quantile(0.5), Some(3.0));
        assert_eq!(s.relative_accuracy(), 0.01);
        assert!(Quantiles::with_accuracy(0.0).is_none());
        assert!(Quantiles::with_accuracy(1.0).is_none());
        assert!(Quantiles::with_accuracy(f64::NAN).is_none());
        assert_eq!(
            Quantiles::with_accuracy(0.05).unwrap().relative_accuracy(),
            0.05
        );
    }

    #[test]
    fn negatives_zeros_and_infinities() {
        let xs = [-100.0, -1.0, 0.0, -0.0, 0.0, 2.0, 50.0, f64::INFINITY];
        let s = sketch(&xs);
        assert_eq!(s.count(), 8);
        assert_accurate(&s, &xs, 0.01);
        assert_eq!(s.quantile(0.0), Some(-100.0));
        assert_eq!(s.quantile(0.4), Some(0.0));
        assert_eq!(s.quantile(1.0), Some(f64::INFINITY));
        assert_eq!(
            sketch(&[1.0, f64::INFINITY, f64::INFINITY]).quantile(0.5),
            Some(f64::INFINITY)
        );
        let neg = sketch(&[f64::NEG_INFINITY, -1.0]);
        assert_eq!(neg.quantile(0.4), Some(f64::NEG_INFINITY));
        // -0.0 and 0.0 in either order give the same sketch.
        assert_eq!(sketch(&[-0.0, 0.0]), sketch(&[0.0, -0.0]));
        assert_eq!(sketch(&[-0.0]).quantile(0.0).map(f64::to_bits), Some(0));
    }

    #[test]
    fn large_uniform_data() {
        let xs: Vec<f64> = (1..=100_000)
            .map(|i| f64::from(i) * 0.37 - 5000.0)
            .collect();
        let s = sketch(&xs);
        assert_eq!(s.count(), 100_000);
        assert_accurate(&s, &xs, 0.01);
        let fine = {
            let mut s = Quantiles::with_accuracy(0.001).unwrap();
            xs.iter().for_each(|&x| s.add(x));
            s
        };
        assert_accurate(&fine, &xs, 0.001);
    }

    #[test]
    fn merge_with_other_accuracy_is_approximate_but_sane() {
        let xs: Vec<f64> = (1..=1000).map(f64::from).collect();
        let mut a = sketch(&xs[..500]);
        let mut b = Quantiles::with_accuracy(0.02).unwrap();
        xs[500..].iter().for_each(|&x| b.add(x));
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        assert_accurate(&a, &xs, 0.01 + 0.02 + 0.01 * 0.02);
    }

    #[test]
    fn encode_round_trip_and_truncation() {
        for xs in [
            &[][..],
            &[0.0][..],
            &[-3.0, 0.0, 1e-300, 7.5, f64::INFINITY][..],
        ] {
            let s = sketch(xs);
            let mut out = Vec::new();
            s.encode(&mut out);
            out.push(9);
            let mut buf = &out[..];
            assert_eq!(Quantiles::decode(&mut buf).as_ref(), Some(&s));
            assert_eq!(buf, &[9]);
            let mut buf = &out[..];
            let sorted = SortedQuantiles::decode(&mut buf).unwrap();
            assert_eq!(sorted, SortedQuantiles::from(&s));
            assert_eq!(sorted.to_quantiles(), s);
            assert_eq!(buf, &[9]);
            for cut in 0..out.len() - 1 {
                let mut buf = &out[..cut];
                assert!(Quantiles::decode(&mut buf).is_none(), "{xs:?} cut {cut}");
                assert_eq!(buf.len(), cut);
            }
        }
        let mut bad = Vec::new();
        bad.extend_from_slice(&2.0f64.to_le_bytes());
        bad.extend_from_slice(&[0, 0, 0]);
        assert!(Quantiles::decode(&mut &bad[..]).is_none(), "accuracy 2");
    }

    fn distinct(items: impl IntoIterator<Item = u64>) -> Distinct {
        let mut d = Distinct::new();
        items.into_iter().for_each(|i| d.add(&i.to_le_bytes()));
        d
    }

    fn assert_within_3_sigma(n: u64) {
        let d = distinct(0..n);
        let (est, n) = (d.estimate() as f64, n as f64);
        let bound = 3.0 * d.stated_error() * n;
        assert!((est - n).abs() <= bound, "n {n}: estimate {est}");
    }

    #[test]
    fn distinct_estimates() {
        assert_eq!(Distinct::new().estimate(), 0);
        assert_eq!(distinct([7]).estimate(), 1);
        assert_eq!(distinct(0..1000).estimate(), 1000);
        assert!((distinct(0..1000).stated_error() - 0.008125).abs() < 1e-12);
        for n in [1_000, 1_100, 3_000, 10_000, 100_000, 300_000] {
            assert_within_3_sigma(n);
        }
    }

    #[test]
    fn duplicates_do_not_change_the_sketch() {
        for n in [10, 5000] {
            let once = distinct(0..n);
            let thrice = distinct((0..n).chain(0..n).chain((0..n).rev()));
            assert_eq!(once, thrice);
            assert_eq!(once.estimate(), thrice.estimate());
        }
    }

    #[test]
    fn distinct_merge_equals_union() {
        // Both exact; exact crossing the limit; registers with exact (both ways); registers.
        for (a, b) in [
            (0..300, 200..600),
            (0..700, 500..1200),
            (0..50, 0..5000),
            (0..60_000, 40_000..100_000),
        ] {
            let union = distinct(a.start.min(b.start)..a.end.max(b.end));
            let (x, y) = (distinct(a), distinct(b));
            let mut xy = x.clone();
            xy.merge(&y);
            let mut yx = y.clone();
            yx.merge(&x);
            assert_eq!(xy, union);
            assert_eq!(yx, union);
            assert_eq!(xy.estimate(), union.estimate());
        }
    }

    #[test]
    fn distinct_encode_round_trip_and_truncation() {
        for d in [Distinct::new(), distinct(0..100), distinct(0..20_000)] {
            let mut out = Vec::new();
            d.encode(&mut out);
            out.push(9);
            let mut buf = &out[..];
            assert_eq!(Distinct::decode(&mut buf).as_ref(), Some(&d));
            assert_eq!(buf, &[9]);
            for cut in 0..out.len() - 1 {
                assert!(Distinct::decode(&mut &out[..cut]).is_none(), "cut {cut}");
            }
        }
        // Unsorted hashes, a register past the largest rank, an unknown tag.
        assert!(
            Distinct::decode(&mut &[0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..])
                .is_none()
        );
        let mut regs = vec![1];
        regs.resize(1 + PACKED_LEN, 0);
        regs[1] = 63;
        assert!(Distinct::decode(&mut &regs[..]).is_none());
        assert!(Distinct::decode(&mut &[2][..]).is_none());
    }

    proptest! {
        #[test]
        fn quantile_of_merge_equals_the_merged_sketch(
            parts in prop::collection::vec(prop::collection::vec(value(), 0..40), 1..12),
            q in 0.0f64..=1.0,
        ) {
            let sketches: Vec<Quantiles> = parts.iter().map(|p| sketch(p)).collect();
            let sorted: Vec<SortedQuantiles> = sketches.iter().map(SortedQuantiles::from).collect();
            let sorted_refs: Vec<&SortedQuantiles> = sorted.iter().collect();
            let mut merged = Quantiles::new();
            sketches.iter().for_each(|s| merged.merge(s));
            for q in [q, 0.0, 0.5, 0.99, 1.0] {
                prop_assert_eq!(SortedQuantiles::quantile_of_merge(&sorted_refs, q), merged.quantile(q));
                // One sketch alone: its own buckets walked, no merge.
                let one = SortedQuantiles::from(&sketches[0]);
                prop_assert_eq!(SortedQuantiles::quantile_of_merge(&[&one], q), sketches[0].quantile(q));
            }
        }

        #[test]
        fn quantiles_within_relative_accuracy(xs in prop::collection::vec(value(), 1..400)) {
            assert_accurate(&sketch(&xs), &xs, 0.01);
        }

        #[test]
        fn quantiles_merge_equals_union(
            xs in prop::collection::vec(value(), 0..100),
            ys in prop::collection::vec(value(), 0..100),
            zs in prop::collection::vec(value(), 0..100),
        ) {
            let (a, b, c) = (sketch(&xs), sketch(&ys), sketch(&zs));
            let mut ab = a.clone();
            ab.merge(&b);
            let all: Vec<f64> = xs.iter().chain(&ys).copied().collect();
            let union = sketch(&all);
            prop_assert_eq!(&ab, &union);
            prop_assert_eq!(ab.count(), union.count());
            prop_assert_eq!(quantile_bits(&ab), quantile_bits(&union));
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ba, &ab);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut left = a.clone();
            left.merge(&bc);
            let mut right = ab.clone();
            right.merge(&c);
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(quantile_bits(&left), quantile_bits(&right));
        }

        #[test]
        fn quantiles_encode_round_trips(xs in prop::collection::vec(value(), 0..100)) {
            let s = sketch(&xs);
            let mut out = Vec::new();
            s.encode(&mut out);
            let mut buf = &out[..];
            prop_assert_eq!(Quantiles::decode(&mut buf), Some(s));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Quantiles::decode(&mut &bytes[..]);
            let _ = Distinct::decode(&mut &bytes[..]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn distinct_merge_is_exact(
            xs in prop::collection::vec(0..4000u64, 0..1500),
            ys in prop::collection::vec(0..4000u64, 0..1500),
            zs in prop::collection::vec(0..4000u64, 0..1500),
        ) {
            let (a, b, c) = (distinct(xs.clone()), distinct(ys.clone()), distinct(zs.clone()));
            let mut ab = a.clone();
            ab.merge(&b);
            prop_assert_eq!(&ab, &distinct(xs.iter().chain(&ys).copied()));
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ba, &ab);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut left = a.clone();
            left.merge(&bc);
            let mut right = ab.clone();
            right.merge(&c);
            prop_assert_eq!(left.estimate(), right.estimate());
            prop_assert_eq!(left, right);
        }
    }
}
