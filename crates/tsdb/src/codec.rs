//! The chunk codec: one series' samples, sorted by time, in a few bytes each.
//!
//! Timestamps are delta-of-delta encoded (regular scrapes cost nearly nothing). Values that are
//! decimals with few digits (as sensors report them) are scaled to integers and delta encoded,
//! as VictoriaMetrics does; other values are XORed with their predecessor. All numbers are
//! zigzag varints. Sealed chunks in blocks are then compressed with zstd, which squeezes the
//! varint bytes close to their entropy.

use strata_model::Sample;

const RAW: u8 = 0;
const ZSTD: u8 = 1;
const VALUES_DECIMAL: u8 = 0;
const VALUES_XOR: u8 = 1;
/// Largest decimal exponent tried (values with up to this many fraction digits).
const MAX_DECIMALS: i32 = 6;
const ZSTD_LEVEL: i32 = 9;

/// A chunk that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk damaged: {0}")]
pub struct ChunkError(pub &'static str);

/// Appends `v` as a LEB128 varint.
pub(crate) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Zigzag: small magnitudes of either sign become small unsigned numbers.
pub(crate) fn zig(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zig`].
pub(crate) fn unzig(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.p).ok_or(ChunkError("truncated"))?;
            self.p += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(ChunkError("varint too long"))
    }
    fn byte(&mut self) -> Result<u8, ChunkError> {
        let b = *self.b.get(self.p).ok_or(ChunkError("truncated"))?;
        self.p += 1;
        Ok(b)
    }
}

/// The smallest number of decimals `k` such that every value is exactly `int / 10^k`.
fn decimals(samples: &[Sample]) -> Option<(i32, f64)> {
    'k: for k in 0..=MAX_DECIMALS {
        let scale = 10f64.powi(k);
        for s in samples {
            let x = (s.value * scale).round();
            if x.is_nan() || x.abs() >= 9.0e15 || (x / scale).to_bits() != s.value.to_bits() {
                continue 'k;
            }
        }
        return Some((k, scale));
    }
    None
}

/// Encodes sorted samples (one per timestamp). `compress`: also zstd the result when smaller.
pub fn encode(samples: &[Sample], compress: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(samples.len() * 3 + 16);
    put(&mut body, samples.len() as u64);
    let (mut prev_t, mut prev_d) = (0i64, 0i64);
    for (i, s) in samples.iter().enumerate() {
        let d = s.timestamp.wrapping_sub(prev_t);
        put(
            &mut body,
            zig(if i == 0 {
                s.timestamp
            } else {
                d.wrapping_sub(prev_d)
            }),
        );
        prev_d = if i == 0 { 0 } else { d };
        prev_t = s.timestamp;
    }
    match decimals(samples) {
        Some((k, scale)) => {
            body.push(VALUES_DECIMAL);
            body.push(k as u8);
            let mut prev = 0i64;
            for s in samples {
                let x = (s.value * scale).round() as i64;
                put(&mut body, zig(x.wrapping_sub(prev)));
                prev = x;
            }
        }
        None => {
            body.push(VALUES_XOR);
            let mut prev = 0u64;
            for s in samples {
                let bits = s.value.to_bits();
                put(&mut body, (bits ^ prev).swap_bytes());
                prev = bits;
            }
        }
    }
    if compress {
        if let Ok(z) = zstd::bulk::compress(&body, ZSTD_LEVEL) {
            if z.len() + 5 < body.len() {
                let mut out = Vec::with_capacity(z.len() + 6);
                out.push(ZSTD);
                put(&mut out, body.len() as u64);
                out.extend_from_slice(&z);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(RAW);
    out.extend_from_slice(&body);
    out
}

/// Decodes a chunk, appending its samples to `out`.
pub fn decode(chunk: &[u8], out: &mut Vec<Sample>) -> Result<(), ChunkError> {
    let (&flag, rest) = chunk.split_first().ok_or(ChunkError("empty"))?;
    let owned;
    let body: &[u8] = match flag {
        RAW => rest,
        ZSTD => {
            let mut r = Reader { b: rest, p: 0 };
            let len = r.varint()? as usize;
            if len > 1 << 30 {
                return Err(ChunkError("declared size too large"));
            }
            owned = zstd::bulk::decompress(&rest[r.p..], len)
                .map_err(|_| ChunkError("zstd data damaged"))?;
            &owned
        }
        _ => return Err(ChunkError("unknown chunk encoding")),
    };
    let mut r = Reader { b: body, p: 0 };
    let n = r.varint()? as usize;
    if n > body.len() {
        return Err(ChunkError("sample count larger than the chunk"));
    }
    let start = out.len();
    out.reserve(n);
    let (mut t, mut d) = (0i64, 0i64);
    for i in 0..n {
        let z = unzig(r.varint()?);
        if i == 0 {
            t = z;
        } else {
            d = d.wrapping_add(z);
            t = t.wrapping_add(d);
        }
        out.push(Sample::new(t, 0.0));
    }
    match r.byte()? {
        VALUES_DECIMAL => {
            let k = r.byte()? as i32;
            if k > MAX_DECIMALS {
                return Err(ChunkError("bad decimal exponent"));
            }
            let scale = 10f64.powi(k);
            let mut x = 0i64;
            for s in &mut out[start..] {
                x = x.wrapping_add(unzig(r.varint()?));
                s.value = x as f64 / scale;
            }
        }
        VALUES_XOR => {
            let mut prev = 0u64;
            for s in &mut out[start..] {
                prev ^= r.varint()?.swap_bytes();
                s.value = f64::from_bits(prev);
            }
        }
        _ => return Err(ChunkError("unknown value encoding")),
    }
    if r.p != body.len() {
        return Err(ChunkError("trailing bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(samples: &[Sample], compress: bool) {
        let enc = encode(samples, compress);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        let bits = |s: &[Sample]| {
            s.iter()
                .map(|x| (x.timestamp, x.value.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&out), bits(samples));
    }

    #[test]
    fn special_values_and_decimals() {
        let stale = f64::from_bits(0x7ff0000000000002);
        let vals = [
            0.1,
            0.2,
            21.5,
            -0.0,
            f64::NAN,
            stale,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            5e-324,
        ];
        let s: Vec<Sample> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| Sample::new(i as i64 * 15_000, *v))
            .collect();
        round_trip(&s, true);
        round_trip(&s, false);
        let dec: Vec<Sample> = (0..500)
            .map(|i| Sample::new(1_700_000_000_000 + i * 15_000, (i % 37) as f64 / 10.0))
            .collect();
        round_trip(&dec, true);
        assert!(
            encode(&dec, true).len() < 200,
            "regular decimals must be tiny: {}",
            encode(&dec, true).len()
        );
        round_trip(&[], true);
    }

    #[test]
    fn damaged_chunks_are_errors() {
        let s: Vec<Sample> = (0..100).map(|i| Sample::new(i, i as f64 * 1.5)).collect();
        let enc = encode(&s, false);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut], &mut Vec::new()).is_err());
        }
        let enc = encode(&s, true);
        let mut bad = enc.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        let _ = decode(&bad, &mut Vec::new());
        assert!(decode(&[9], &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn any_values_round_trip(ts in proptest::collection::btree_set(any::<i64>(), 0..200), vals in proptest::collection::vec(any::<u64>(), 200)) {
            let s: Vec<Sample> = ts.iter().zip(&vals).map(|(t, v)| Sample::new(*t, f64::from_bits(*v))).collect();
            round_trip(&s, true);
            round_trip(&s, false);
        }

        #[test]
        fn decimal_values_round_trip(start in -1_000_000_000_000i64..2_000_000_000_000, steps in proptest::collection::vec((1i64..100_000, -100_000i64..100_000, 0u32..4), 0..300)) {
            let mut t = start;
            let s: Vec<Sample> = steps.iter().map(|(dt, v, k)| { t += dt; Sample::new(t, *v as f64 / 10f64.powi(*k as i32)) }).collect();
            round_trip(&s, true);
        }
    }
}
