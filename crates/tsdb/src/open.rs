//! A head series' open buffer: its newest samples in write order, encoded as they are appended
//! (about 2 to 10 bytes a sample instead of 16), until the head seals them into a chunk.
//!
//! Each sample is its timestamp's delta of delta from the previous one (a zigzag varint: one
//! byte for a regular scrape) and its value XORed with the previous value, stored as a
//! control byte (0: unchanged; else 1 + 8 × leading zero bytes + trailing zero bytes) and the
//! bytes between. Any order may be appended: samples decode in write order, for the reader to
//! sort with the last write winning.

use crate::codec::{put, unzig, zig};
use strata_model::Sample;

/// Samples in write order, encoded.
#[derive(Default)]
pub struct OpenBuffer {
    buf: Vec<u8>,
    /// The lowest and highest timestamps buffered (meaningless when empty): a late sample
    /// outside them is known absent without a scan.
    min_t: i64,
    max_t: i64,
    last_t: i64,
    last_delta: i64,
    last_bits: u64,
}

impl OpenBuffer {
    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The timestamp appended last, if any.
    pub fn last_t(&self) -> Option<i64> {
        (!self.buf.is_empty()).then_some(self.last_t)
    }

    /// Appends one sample.
    pub fn push(&mut self, s: Sample) {
        if self.buf.is_empty() {
            put(&mut self.buf, zig(s.timestamp));
            (self.min_t, self.max_t) = (s.timestamp, s.timestamp);
        } else {
            self.min_t = self.min_t.min(s.timestamp);
            self.max_t = self.max_t.max(s.timestamp);
            let delta = s.timestamp.wrapping_sub(self.last_t);
            put(&mut self.buf, zig(delta.wrapping_sub(self.last_delta)));
            self.last_delta = delta;
        }
        let bits = s.value.to_bits();
        let x = bits ^ self.last_bits;
        if x == 0 {
            self.buf.push(0);
        } else {
            let lead = x.leading_zeros() / 8;
            let trail = x.trailing_zeros() / 8;
            self.buf.push((1 + lead * 8 + trail) as u8);
            let mid = (x >> (trail * 8)).to_le_bytes();
            self.buf
                .extend_from_slice(&mid[..(8 - lead - trail) as usize]);
        }
        self.last_t = s.timestamp;
        self.last_bits = bits;
    }

    /// Appends every buffered sample to `out`, in write order.
    pub fn decode(&self, out: &mut Vec<Sample>) {
        self.walk(|s| out.push(s));
    }

    /// The value last written at `t`, if any: one pass, no allocation (a late sample's check
    /// for a duplicate, on the ingest path).
    pub fn find(&self, t: i64) -> Option<f64> {
        if self.buf.is_empty() || t < self.min_t || t > self.max_t {
            return None;
        }
        // Timestamps first, skipping the values' bytes: a late sample is usually new.
        if !self.has(t) {
            return None;
        }
        let mut found = None;
        self.walk(|s| {
            if s.timestamp == t {
                found = Some(s.value);
            }
        });
        found
    }

    /// Whether a sample at `t` is buffered (the timestamps alone are decoded).
    fn has(&self, t: i64) -> bool {
        let b = &self.buf;
        let (mut p, mut at, mut delta) = (0usize, 0i64, 0i64);
        let mut first = true;
        while p < b.len() {
            at = next_timestamp(b, &mut p, &mut delta, &mut first, at);
            if at == t {
                return true;
            }
            let (_, n) = control(b[p]);
            p += 1 + n;
        }
        false
    }

    /// Calls `f` with every buffered sample, in write order.
    fn walk(&self, mut f: impl FnMut(Sample)) {
        let b = &self.buf;
        let (mut p, mut t, mut delta, mut bits) = (0usize, 0i64, 0i64, 0u64);
        let mut first = true;
        while p < b.len() {
            t = next_timestamp(b, &mut p, &mut delta, &mut first, t);
            let c = b[p];
            p += 1;
            if c != 0 {
                let (trail, n) = control(c);
                let mut mid = [0u8; 8];
                mid[..n].copy_from_slice(&b[p..p + n]);
                p += n;
                bits ^= u64::from_le_bytes(mid) << (trail * 8);
            }
            f(Sample::new(t, f64::from_bits(bits)));
        }
    }

    /// Forgets every sample and gives back the memory.
    pub fn clear(&mut self) {
        *self = OpenBuffer::default();
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.capacity()
    }
}

/// A value's control byte read: the XOR's trailing zero bytes and the bytes stored (0 for an
/// unchanged value).
#[inline]
fn control(c: u8) -> (u32, usize) {
    if c == 0 {
        return (0, 0);
    }
    let (lead, trail) = ((c as u32 - 1) / 8, (c as u32 - 1) % 8);
    (trail, (8 - lead - trail) as usize)
}

/// Decodes the timestamp at `p` (after `prev`, with the running delta), moving `p` past it.
#[inline]
fn next_timestamp(b: &[u8], p: &mut usize, delta: &mut i64, first: &mut bool, prev: i64) -> i64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*p];
        *p += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        shift += 7;
        if byte < 0x80 {
            break;
        }
    }
    if std::mem::take(first) {
        unzig(v)
    } else {
        *delta = delta.wrapping_add(unzig(v));
        prev.wrapping_add(*delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> impl Strategy<Value = Sample> {
        let t = prop_oneof![any::<i64>(), 1_700_000_000_000i64..1_700_000_100_000];
        let v = prop_oneof![
            any::<f64>(),
            (0i64..1000).prop_map(|x| x as f64 / 10.0),
            Just(f64::NAN),
            Just(-0.0),
            Just(f64::from_bits(0x7ff0_0000_0000_0001)),
        ];
        (t, v).prop_map(|(t, v)| Sample::new(t, v))
    }

    proptest! {
        /// Whatever is appended, in any order, decodes bit for bit in write order.
        #[test]
        fn round_trips_in_write_order(samples in prop::collection::vec(sample(), 0..300)) {
            let mut b = OpenBuffer::default();
            for s in &samples {
                b.push(*s);
            }
            let mut out = Vec::new();
            b.decode(&mut out);
            prop_assert_eq!(out.len(), samples.len());
            // `find` gives the last write at each timestamp, and nothing elsewhere.
            for s in &samples {
                let last = samples.iter().rev().find(|x| x.timestamp == s.timestamp).unwrap();
                prop_assert_eq!(b.find(s.timestamp).map(f64::to_bits), Some(last.value.to_bits()));
                let absent = s.timestamp.wrapping_add(1);
                if samples.iter().all(|x| x.timestamp != absent) {
                    prop_assert_eq!(b.find(absent), None);
                }
            }
            for (a, w) in out.iter().zip(&samples) {
                prop_assert_eq!(a.timestamp, w.timestamp);
                prop_assert_eq!(a.value.to_bits(), w.value.to_bits());
            }
        }
    }

    #[test]
    fn a_regular_scrape_is_small() {
        let mut b = OpenBuffer::default();
        for i in 0..240 {
            b.push(Sample::new(
                1_700_000_000_000 + i * 15_000,
                (1000 + i) as f64,
            ));
        }
        // About two bytes for the timestamp and value's control, two for the value.
        assert!(b.buf.len() < 240 * 4, "{} bytes", b.buf.len());
    }
}
