//! Exact, order-independent summation of `f64` values.
//!
//! Rollup sums are merged across windows, shards and tiers, and samples arrive in whatever order
//! delivery, retries and replays produce. A plain `f64` sum depends on that order, so a 1h rollup
//! computed from 1m rollups, or a window recomputed after a late sample, could differ in its last
//! bits from the same rollup computed from raw data. [`ExactSum`] keeps the sum as an exact big
//! integer in units of 2^-1074 (the smallest subnormal), so adding and merging are exact,
//! associative and commutative, and [`ExactSum::value`] rounds once, at the end.

/// Bits per limb.
use smallvec::SmallVec;

const LIMB_BITS: u32 = 32;
const LIMB_MASK: i64 = (1 << LIMB_BITS) - 1;
/// Normalize before the weight (see [`ExactSum`]) reaches this: limbs then stay below
/// 2^32 * (2^30 + 2) < 2^63.
const WEIGHT_LIMIT: u64 = 1 << 30;
/// Most limbs a decoded sum may span: 2098 bits of f64 range, 64 bits of carries from up to
/// 2^64 adds, and a sign limb.
const MAX_LIMBS: usize = 70;
/// Limbs kept without a heap allocation: a value spans three, the exact square of one (the
/// product and its rounding error) about four, so typical sums of telemetry fit.
const INLINE_LIMBS: usize = 8;

/// Signed limbs, lowest first.
type Limbs = SmallVec<[i64; INLINE_LIMBS]>;

const NAN: u8 = 1;
const POS_INF: u8 = 2;
const NEG_INF: u8 = 4;
/// Encoding flag: the finite part is negative (its top limb is the sign limb -1).
const NEGATIVE: u8 = 8;

/// An exact sum of `f64` values, independent of the order they were added or merged in.
///
/// The finite part is a big integer of signed base-2^32 limbs, stored only over the limb range
/// values have touched (a few limbs for typical telemetry). Carries are propagated lazily:
/// `weight` bounds |limb| by 2^32 * (weight + 1), and the limbs are normalized before that
/// bound could overflow an `i64`. NaN and infinities are tracked as flags beside it.
#[derive(Clone, Debug, Default)]
pub struct ExactSum {
    /// Limb index of `limbs[0]`; limb `i` has weight 2^(32 i - 1074).
    base: usize,
    /// Signed limbs, lowest first; normalized only every so often.
    limbs: Limbs,
    /// Adds (and merged weights) since the last normalization.
    weight: u64,
    /// `NAN | POS_INF | NEG_INF` seen so far.
    special: u8,
}

impl ExactSum {
    /// An empty sum (value 0).
    pub fn new() -> ExactSum {
        ExactSum::default()
    }

    /// Adds `x` exactly. NaN and infinities are recorded as flags; see [`ExactSum::value`].
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            self.add_special(x);
            return;
        }
        let (mant, pos) = parts(x);
        if mant == 0 {
            return;
        }
        let limb = (pos / 32) as usize;
        let wide = u128::from(mant) << (pos % 32);
        let pieces = [
            wide as i64 & LIMB_MASK,
            (wide >> 32) as i64 & LIMB_MASK,
            (wide >> 64) as i64,
        ];
        self.add_limbs(limb, pieces, x < 0.0);
    }

    /// Adds `x * x` exactly. Where the square's bits lie inside the grid of 2^-1074 (and far
    /// from overflow) the integer square of the significand is added in one step; elsewhere
    /// the rounded product and its rounding error (by fused multiply-add) are added, as exact
    /// as `f64` arithmetic allows there.
    pub fn add_square(&mut self, x: f64) {
        let (mant, pos) = parts(x);
        // |x| in [2^-422, 2^479): the square and the rounding error of the product are both
        // normal there, so both ways are exact and agree.
        if (600..1500).contains(&pos) {
            // x^2 = mant^2 * 2^(2 (pos - 1074)): bit 0 of mant^2 sits at 2 pos - 1074.
            let at = 2 * pos - 1074;
            let (limb, shift) = ((at / 32) as usize, at % 32);
            let sq = u128::from(mant) * u128::from(mant);
            // sq < 2^106, shifted by up to 31: 137 bits in five limbs.
            let low = sq << shift;
            let high = if shift == 0 { 0 } else { sq >> (128 - shift) };
            let pieces = [
                low as i64 & LIMB_MASK,
                (low >> 32) as i64 & LIMB_MASK,
                (low >> 64) as i64 & LIMB_MASK,
                (low >> 96) as i64 & LIMB_MASK,
                high as i64,
            ];
            self.add_limbs(limb, pieces, false);
            return;
        }
        let p = x * x;
        let err = x.mul_add(x, -p);
        self.add(p);
        if err != 0.0 && err.is_finite() {
            self.add(err);
        }
    }

    fn add_special(&mut self, x: f64) {
        self.special |= if x.is_nan() {
            NAN
        } else if x > 0.0 {
            POS_INF
        } else {
            NEG_INF
        };
    }

    /// Adds (or subtracts) limb-sized parts, lowest at limb index `limb`.
    fn add_limbs<const N: usize>(&mut self, limb: usize, pieces: [i64; N], negative: bool) {
        self.ensure(limb, limb + N - 1);
        let at = &mut self.limbs[limb - self.base..][..N];
        if negative {
            at.iter_mut().zip(pieces).for_each(|(l, p)| *l -= p);
        } else {
            at.iter_mut().zip(pieces).for_each(|(l, p)| *l += p);
        }
        self.weight += 1;
        if self.weight >= WEIGHT_LIMIT {
            self.normalize();
        }
    }

    /// Adds everything `other` holds, exactly: the result equals a sum of both inputs' values.
    pub fn merge(&mut self, other: &ExactSum) {
        self.special |= other.special;
        if other.limbs.is_empty() {
            return;
        }
        // other's limbs are bounded by 2^32 * (other.weight + 1); make room for them.
        if self.weight + other.weight + 1 >= WEIGHT_LIMIT {
            self.normalize();
        }
        self.ensure(other.base, other.base + other.limbs.len() - 1);
        let at = &mut self.limbs[other.base - self.base..];
        at.iter_mut().zip(&other.limbs).for_each(|(l, o)| *l += o);
        self.weight += other.weight + 1;
        if self.weight >= WEIGHT_LIMIT {
            self.normalize();
        }
    }

    /// The exact sum rounded to the nearest `f64`, ties to even; ±inf when it is beyond the
    /// `f64` range, and +0.0 when it is exactly zero.
    ///
    /// Any NaN added, or both +inf and -inf, gives NaN; otherwise an added infinity wins.
    pub fn value(&self) -> f64 {
        match self.special {
            0 => {}
            POS_INF => return f64::INFINITY,
            NEG_INF => return f64::NEG_INFINITY,
            _ => return f64::NAN,
        }
        let (mut base, mut limbs) = self.canonical();
        let Some(&top) = limbs.last() else {
            return 0.0;
        };
        let negative = top < 0;
        if negative {
            limbs.iter_mut().for_each(|l| *l = -*l);
            normalize(&mut base, &mut limbs);
        }
        let magnitude = round_to_f64(base, &limbs);
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// Whether the sum is exactly zero and no NaN or infinity was added.
    pub fn is_zero(&self) -> bool {
        self.special == 0 && self.canonical().1.is_empty()
    }

    /// Appends a compact little-endian encoding: a flags byte, the lowest limb index and the
    /// limb count (one byte each), then the limbs as `u32`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (base, mut limbs) = self.canonical();
        let mut flags = self.special;
        if limbs.last().is_some_and(|&l| l < 0) {
            limbs.pop();
            flags |= NEGATIVE;
        }
        // Canonical limbs span at most MAX_LIMBS, so both fit a byte.
        out.extend_from_slice(&[flags, base as u8, limbs.len() as u8]);
        for l in limbs {
            out.extend_from_slice(&(l as u32).to_le_bytes());
        }
    }

    /// Decodes what [`ExactSum::encode`] wrote and advances `buf` past it; `None` (with `buf`
    /// unchanged) on truncated or invalid input.
    pub fn decode(buf: &mut &[u8]) -> Option<ExactSum> {
        let (&[flags, base, len], rest) = buf.split_first_chunk::<3>()?;
        let (base, len) = (usize::from(base), usize::from(len));
        let negative = flags & NEGATIVE != 0;
        if flags > 0xf || base + len + usize::from(negative) > MAX_LIMBS {
            return None;
        }
        let (digits, rest) = rest.split_at_checked(4 * len)?;
        let mut limbs: Limbs = digits
            .chunks_exact(4)
            .map(|d| i64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])))
            .collect();
        if negative {
            limbs.push(-1);
        }
        let mut sum = ExactSum {
            base,
            limbs,
            weight: 0,
            special: flags & !NEGATIVE,
        };
        // Non-canonical input still decodes to the value it spells.
        sum.normalize();
        *buf = rest;
        Some(sum)
    }

    /// Grows `limbs` to cover limb indexes `lo..=hi`.
    fn ensure(&mut self, lo: usize, hi: usize) {
        if self.limbs.is_empty() {
            self.base = lo;
            self.limbs.resize(hi - lo + 1, 0);
            return;
        }
        if lo < self.base {
            self.limbs
                .insert_many(0, std::iter::repeat_n(0, self.base - lo));
            self.base = lo;
        }
        if hi - self.base >= self.limbs.len() {
            self.limbs.resize(hi - self.base + 1, 0);
        }
    }

    fn normalize(&mut self) {
        normalize(&mut self.base, &mut self.limbs);
        self.weight = 0;
    }

    /// The finite part in canonical form (see [`normalize`]): equal values give equal results.
    fn canonical(&self) -> (usize, Limbs) {
        let (mut base, mut limbs) = (self.base, self.limbs.clone());
        normalize(&mut base, &mut limbs);
        (base, limbs)
    }
}

impl PartialEq for ExactSum {
    /// Equal when both hold the same exact finite sum and saw the same NaN/infinity kinds.
    fn eq(&self, other: &ExactSum) -> bool {
        self.special == other.special && self.canonical() == other.canonical()
    }
}

impl Eq for ExactSum {}

/// `|x| = mant * 2^(pos - 1074)` for a finite `x`; subnormals have no implicit bit and the
/// lowest position.
fn parts(x: f64) -> (u64, u64) {
    let bits = x.to_bits();
    let biased = (bits >> 52) & 0x7ff;
    let frac = bits & ((1 << 52) - 1);
    if biased == 0 {
        (frac, 0)
    } else {
        (frac | (1 << 52), biased - 1)
    }
}

/// Propagates carries so every limb is in `[0, 2^32)` except a top limb of -1 that marks a
/// negative value (two's complement), then trims zero limbs at both ends. The result is unique
/// for each value; zero is an empty vector with base 0.
fn normalize(base: &mut usize, limbs: &mut Limbs) {
    let mut carry = 0i64;
    for l in limbs.iter_mut() {
        let v = *l + carry;
        *l = v & LIMB_MASK;
        carry = v >> LIMB_BITS;
    }
    while carry != 0 && carry != -1 {
        limbs.push(carry & LIMB_MASK);
        carry >>= LIMB_BITS;
    }
    if carry == -1 {
        limbs.push(-1);
    }
    while let Some(&top) = limbs.last() {
        let n = limbs.len();
        if top == 0 {
            limbs.pop();
        } else if top == -1 && n >= 2 && limbs[n - 2] == LIMB_MASK {
            // -1 * B + (B - 1) == -1: the same value one limb shorter.
            limbs.pop();
            limbs[n - 2] = -1;
        } else {
            break;
        }
    }
    let zeros = limbs.iter().take_while(|&&l| l == 0).count();
    limbs.drain(..zeros);
    *base = if limbs.is_empty() { 0 } else { *base + zeros };
}

/// Rounds a positive normalized integer (limbs in `[0, 2^32)`, top nonzero, lowest limb of
/// weight 2^(32 base - 1074)) to the nearest `f64`, ties to even.
fn round_to_f64(base: usize, limbs: &[i64]) -> f64 {
    let top = limbs.len() - 1;
    let bit_len = 32 * top as i64 + i64::from(64 - limbs[top].leading_zeros());
    let lsb = 32 * base as i64 - 1074;
    let msb = lsb + bit_len - 1;
    if msb > 1023 {
        return f64::INFINITY;
    }
    // Exponent of the last bit an f64 can keep here: 53 significant bits, or the subnormal floor.
    let mut ulp = (msb - 52).max(-1074);
    let shift = ulp - lsb;
    let mut mant = if shift <= 0 {
        // Fits: the integer has at most 53 + shift bits.
        window(limbs, 0) << -shift
    } else {
        let shift = shift as usize;
        let kept = window(limbs, shift);
        let half = window(limbs, shift - 1) & 1 == 1;
        let (i, b) = ((shift - 1) / 32, (shift - 1) % 32);
        let sticky = limbs[i] & ((1 << b) - 1) != 0 || limbs[..i].iter().any(|&l| l != 0);
        kept + u64::from(half && (sticky || kept & 1 == 1))
    };
    if mant == 1 << 53 {
        mant >>= 1;
        ulp += 1;
    }
    if mant < 1 << 52 {
        // Subnormal: ulp is -1074 and the biased exponent is 0.
        return f64::from_bits(mant);
    }
    if ulp + 52 > 1023 {
        return f64::INFINITY;
    }
    f64::from_bits((((ulp + 1075) as u64) << 52) | (mant & ((1 << 52) - 1)))
}

/// Bits `start..start + 64` of a normalized nonnegative integer.
fn window(limbs: &[i64], start: usize) -> u64 {
    let (i, s) = (start / 32, start % 32);
    let limb = |k: usize| limbs.get(k).map_or(0, |&l| l as u128);
    let w = limb(i) | (limb(i + 1) << 32) | (limb(i + 2) << 64);
    (w >> s) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::{BigInt, Sign};
    use proptest::prelude::*;

    /// The exact value of a finite `x` in units of 2^-1074.
    fn units(x: f64) -> BigInt {
        let bits = x.to_bits();
        let biased = (bits >> 52) & 0x7ff;
        let frac = bits & ((1 << 52) - 1);
        let (mant, pos) = if biased == 0 {
            (frac, 0)
        } else {
            (frac | (1 << 52), biased - 1)
        };
        let v = BigInt::from(mant) << pos;
        if x < 0.0 {
            -v
        } else {
            v
        }
    }

    /// Rounds an exact value (in units of 2^-1074) to f64 by a method independent of the code
    /// under test: binary search for the largest f64 not above it, then compare distances.
    fn round_ref(s: &BigInt) -> f64 {
        match s.sign() {
            Sign::NoSign => return 0.0,
            Sign::Minus => return -round_ref(&-s),
            Sign::Plus => {}
        }
        let max = f64::MAX.to_bits();
        let (mut lo, mut hi) = (0u64, max);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if units(f64::from_bits(mid)) <= *s {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let below = units(f64::from_bits(lo));
        let above = if lo == max {
            BigInt::from(1) << (1024 + 1074)
        } else {
            units(f64::from_bits(lo + 1))
        };
        let twice: BigInt = s << 1;
        let mid = below + above;
        // Bit pattern lo + 1 of f64::MAX is +inf, which is what IEEE rounding gives past MAX.
        let pick = match twice.cmp(&mid) {
            std::cmp::Ordering::Less => lo,
            std::cmp::Ordering::Greater => lo + 1,
            std::cmp::Ordering::Equal if lo % 2 == 0 => lo,
            std::cmp::Ordering::Equal => lo + 1,
        };
        f64::from_bits(pick)
    }

    fn reference(xs: &[f64]) -> f64 {
        let nan = xs.iter().any(|x| x.is_nan());
        let pinf = xs.contains(&f64::INFINITY);
        let ninf = xs.contains(&f64::NEG_INFINITY);
        match (nan, pinf, ninf) {
            (true, _, _) | (_, true, true) => return f64::NAN,
            (_, true, false) => return f64::INFINITY,
            (_, false, true) => return f64::NEG_INFINITY,
            _ => {}
        }
        round_ref(&xs.iter().map(|&x| units(x)).sum())
    }

    /// The finite part as a big integer in units of 2^-1074, read from the limbs.
    fn as_bigint(s: &ExactSum) -> BigInt {
        let (base, limbs) = s.canonical();
        let n = limbs
            .iter()
            .rev()
            .fold(BigInt::from(0), |acc, &l| (acc << 32) + l);
        n << (32 * base)
    }

    fn sum_of(xs: &[f64]) -> ExactSum {
        let mut s = ExactSum::new();
        xs.iter().for_each(|&x| s.add(x));
        s
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn check(xs: &[f64]) {
        let (got, want) = (sum_of(xs).value(), reference(xs));
        assert!(same(got, want), "{xs:?}: got {got:e}, want {want:e}");
    }

    /// Finite values of every magnitude, plus clustered ones that cancel and carry.
    fn finite() -> impl Strategy<Value = f64> {
        use proptest::num::f64 as f;
        prop_oneof![
            f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO,
            -1e6..1e6f64,
            (any::<i32>(), 0..80i32).prop_map(|(m, e)| m as f64 * f64::from_bits(1) * 2f64.powi(e)),
            (any::<i64>(), -60..60i32).prop_map(|(m, e)| m as f64 * 2f64.powi(e)),
            (-4.0..4.0f64).prop_map(|x| x * (f64::MAX / 4.0)),
        ]
    }

    fn any_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            20 => finite(),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
        ]
    }

    #[test]
    fn cancellation() {
        check(&[1e100, 1.0, -1e100]);
        assert_eq!(sum_of(&[1e100, 1.0, -1e100]).value(), 1.0);
        let tenth = [0.1; 10];
        check(&tenth);
        assert_eq!(sum_of(&tenth).value(), 1.0);
        assert_ne!(tenth.iter().sum::<f64>(), 1.0);
        check(&[1.0, 1e-16, 1e-16]);
        assert_eq!(sum_of(&[3.0, -1.0, -1.0, -1.0]).value(), 0.0);
        check(&[-0.5, 0.25, -1e-300, 1e300, -1e300]);
    }

    #[test]
    fn rounding_ties_to_even() {
        let ulp = f64::EPSILON;
        // 1 + ulp/2 is a tie between 1 and 1 + ulp: even mantissa (1) wins.
        check(&[1.0, ulp / 2.0]);
        assert_eq!(sum_of(&[1.0, ulp / 2.0]).value(), 1.0);
        // 1 + ulp + ulp/2 ties between 1 + ulp (odd) and 1 + 2 ulp (even).
        assert_eq!(sum_of(&[1.0, ulp, ulp / 2.0]).value(), 1.0 + 2.0 * ulp);
        // Just above the tie rounds up: the sticky bit counts.
        assert_eq!(sum_of(&[1.0, ulp / 2.0, 1e-300]).value(), 1.0 + ulp);
        check(&[1.0, ulp / 2.0, 1e-300]);
    }

    #[test]
    fn subnormals() {
        let tiny = f64::from_bits(1);
        assert_eq!(sum_of(&[tiny; 3]).value(), 3.0 * tiny);
        assert_eq!(sum_of(&[tiny, -tiny]).value(), 0.0);
        let below_normal = f64::MIN_POSITIVE - tiny;
        assert_eq!(sum_of(&[below_normal, tiny]).value(), f64::MIN_POSITIVE);
        check(&[f64::MIN_POSITIVE, -tiny, 1e-310, 5e-324]);
        assert_eq!(sum_of(&[1.0, tiny, -1.0]).value(), tiny);
    }

    #[test]
    fn overflow_to_infinity() {
        assert_eq!(sum_of(&[f64::MAX, f64::MAX]).value(), f64::INFINITY);
        assert_eq!(sum_of(&[f64::MIN, f64::MIN]).value(), f64::NEG_INFINITY);
        assert_eq!(sum_of(&[f64::MAX, f64::MAX, f64::MIN]).value(), f64::MAX);
        // Half an ulp above MAX rounds to infinity (ties to even: MAX's mantissa is odd).
        let half_ulp = 2f64.powi(970);
        assert_eq!(sum_of(&[f64::MAX, half_ulp]).value(), f64::INFINITY);
        assert_eq!(sum_of(&[f64::MAX, half_ulp / 2.0]).value(), f64::MAX);
        check(&[f64::MAX, half_ulp]);
    }

    #[test]
    fn specials() {
        assert!(sum_of(&[1.0, f64::NAN]).value().is_nan());
        assert!(sum_of(&[f64::INFINITY, f64::NEG_INFINITY]).value().is_nan());
        assert_eq!(sum_of(&[f64::INFINITY, -5.0]).value(), f64::INFINITY);
        assert_eq!(
            sum_of(&[f64::NEG_INFINITY, f64::MAX]).value(),
            f64::NEG_INFINITY
        );
        assert!(!sum_of(&[f64::INFINITY]).is_zero());
        assert_ne!(sum_of(&[f64::INFINITY]), sum_of(&[f64::INFINITY, f64::NAN]));
        assert_eq!(ExactSum::new().value().to_bits(), 0.0f64.to_bits());
        assert!(sum_of(&[-0.0, 0.0, -0.0]).is_zero());
    }

    #[test]
    fn negation_gives_zero() {
        for x in [1.0, 0.1, -3.5e-310, f64::MAX, f64::MIN_POSITIVE, 12345.678] {
            let s = sum_of(&[x, 2.5, -x, -2.5]);
            assert!(s.is_zero(), "{x}");
            assert_eq!(s, ExactSum::new());
        }
    }

    #[test]
    fn millions_of_large_values_do_not_overflow_limbs() {
        let half = f64::MAX / 2.0;
        let mut up = ExactSum::new();
        (0..1_500_000).for_each(|_| up.add(half));
        assert_eq!(up.value(), f64::INFINITY);
        let mut down = ExactSum::new();
        (0..1_500_000).for_each(|_| down.add(-half));
        let mut s = up.clone();
        s.merge(&down);
        s.add(1.0);
        assert_eq!(s.value(), 1.0);
        // Merging 3e9 adds' worth of weight passes the normalization limit (2^30) a few times.
        let mut acc = ExactSum::new();
        for _ in 0..1000 {
            acc.merge(&up);
            acc.merge(&down);
        }
        acc.add(-0.25);
        assert_eq!(acc.value(), -0.25);
        // 4.5e9 adds of MAX/2 would overflow an i64 limb without normalization.
        for _ in 0..3000 {
            acc.merge(&up);
        }
        assert_eq!(
            as_bigint(&acc),
            units(half) * 4_500_000_000i64 - units(0.25)
        );
        assert_eq!(acc.value(), f64::INFINITY);
    }

    #[test]
    fn add_normalizes_at_the_weight_limit() {
        let mut s = sum_of(&[f64::MAX, -1.0, 3e-320]);
        // Overstating the weight is safe (it is only a bound); it forces the add-path flush.
        s.weight = WEIGHT_LIMIT - 2;
        s.add(f64::MAX);
        s.add(-f64::MAX);
        assert_eq!(s.weight, 0);
        assert_eq!(s, sum_of(&[f64::MAX, -1.0, 3e-320]));
    }

    #[test]
    fn encode_round_trip_and_truncation() {
        let cases: [&[f64]; 6] = [
            &[],
            &[1.0, 0.1, -7e-310],
            &[-1e300, -5.0],
            &[f64::MAX, f64::MAX, f64::NAN],
            &[f64::INFINITY, 2.0],
            &[-f64::from_bits(1)],
        ];
        for xs in cases {
            let s = sum_of(xs);
            let mut out = vec![0xAA];
            s.encode(&mut out);
            out.push(0x55);
            let mut buf = &out[1..];
            let back = ExactSum::decode(&mut buf).expect("decodes");
            assert_eq!(back, s);
            assert!(same(back.value(), s.value()));
            assert_eq!(buf, &[0x55]);
            for cut in 1..out.len() - 1 {
                let mut buf = &out[1..cut];
                assert!(ExactSum::decode(&mut buf).is_none(), "{xs:?} cut {cut}");
                assert_eq!(buf.len(), cut - 1);
            }
        }
        assert!(ExactSum::decode(&mut &[0x10, 0, 0][..]).is_none());
        assert!(ExactSum::decode(&mut &[0, 69, 2, 0, 0, 0, 0, 0, 0, 0, 0][..]).is_none());
    }

    /// Squares the way rollups did before [`ExactSum::add_square`]: the rounded product and
    /// its rounding error.
    fn two_product_squares(xs: &[f64]) -> ExactSum {
        let mut s = ExactSum::new();
        for &x in xs {
            let p = x * x;
            let err = x.mul_add(x, -p);
            s.add(p);
            if err != 0.0 && err.is_finite() {
                s.add(err);
            }
        }
        s
    }

    proptest! {
        /// One-step squares hold the same exact value as product plus rounding error, and, in
        /// the range the one-step way covers, the exact square.
        #[test]
        fn squares_match_two_product_and_exact_reference(
            xs in prop::collection::vec(any_value(), 0..20)
        ) {
            let mut s = ExactSum::new();
            xs.iter().for_each(|&x| s.add_square(x));
            let old = two_product_squares(&xs);
            prop_assert_eq!(&s, &old);
            prop_assert!(same(s.value(), old.value()));
            let inside: Vec<f64> = xs
                .iter()
                .copied()
                .filter(|x| x.is_finite() && x.abs() >= 2f64.powi(-422) && x.abs() < 2f64.powi(479))
                .collect();
            let mut s = ExactSum::new();
            inside.iter().for_each(|&x| s.add_square(x));
            let exact: BigInt = inside
                .iter()
                .map(|&x| {
                    let u = units(x);
                    // x^2 in units of 2^-1074 is units(x)^2 / 2^1074, an integer in this range.
                    (&u * &u) >> 1074
                })
                .sum();
            prop_assert_eq!(as_bigint(&s), exact);
        }

        #[test]
        fn value_matches_exact_reference(xs in prop::collection::vec(any_value(), 0..40)) {
            check(&xs);
        }

        #[test]
        fn order_independent(
            (xs, ys) in prop::collection::vec(any_value(), 0..40)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
        ) {
            let (a, b) = (sum_of(&xs), sum_of(&ys));
            prop_assert_eq!(&a, &b);
            prop_assert!(same(a.value(), b.value()));
        }

        #[test]
        fn merge_is_associative_and_commutative(
            xs in prop::collection::vec(finite(), 0..20),
            ys in prop::collection::vec(any_value(), 0..20),
            zs in prop::collection::vec(finite(), 0..20),
        ) {
            let (a, b, c) = (sum_of(&xs), sum_of(&ys), sum_of(&zs));
            let mut bc = b.clone();
            bc.merge(&c);
            let mut left = a.clone();
            left.merge(&bc);
            let mut ab = a.clone();
            ab.merge(&b);
            let mut right = ab.clone();
            right.merge(&c);
            prop_assert_eq!(&left, &right);
            prop_assert!(same(left.value(), right.value()));
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            prop_assert!(same(ab.value(), ba.value()));
            let all: Vec<f64> = xs.iter().chain(&ys).chain(&zs).copied().collect();
            prop_assert!(same(left.value(), reference(&all)));
            let exact: BigInt = all.iter().filter(|x| x.is_finite()).map(|&x| units(x)).sum();
            prop_assert_eq!(as_bigint(&left), exact);
        }

        #[test]
        fn encode_round_trips(xs in prop::collection::vec(any_value(), 0..30)) {
            let s = sum_of(&xs);
            let mut out = Vec::new();
            s.encode(&mut out);
            let mut buf = &out[..];
            let back = ExactSum::decode(&mut buf).unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(&back, &s);
            prop_assert!(same(back.value(), s.value()));
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = &bytes[..];
            let _ = ExactSum::decode(&mut buf);
        }
    }
}
