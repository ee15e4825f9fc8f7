//! A head series' open buffer: its newest samples in write order, encoded as they are appended
//! (about 2 to 10 bytes a sample instead of 16), until the head seals them into a chunk.
//!
//! Each sample is its timestamp's delta of delta from the previous one (a zigzag varint: one
//! byte for a regular scrape) and its value XORed with the previous value, stored as a
//! control byte (0: unchanged; else 1 + 8 × leading zero bytes + trailing zero bytes) and the
//! bytes between. Any order may be appended: samples decode in write order, for the reader to
//! sort with the last write winning.
//!
//! A late sample's duplicate check looks for its timestamp in the buffer. Decoding from the
//! start would cost the whole buffer per late sample (which deliveries over concurrent
//! connections make common), so past [`SEGMENT`] samples the buffer also keeps a skip index:
//! each finished segment's time range, and the decoder's state where the next one starts. A
//! lookup decodes only the segments whose range holds the timestamp, and the open last one.
//! A segment's range is found when it ends (one pass over its timestamps, as cheap as
//! tracking it per sample, which would load the index at every append).

use crate::codec::{put, unzig, zig};
use strata_model::Sample;

/// Samples per segment of the skip index (see the module doc).
pub const SEGMENT: u32 = 64;

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
    /// Samples buffered.
    len: u32,
    /// The skip index: one mark per finished segment (none before [`SEGMENT`] samples).
    /// Boxed: 8 bytes in every head series, most of which never finish a segment.
    #[allow(clippy::box_collection)]
    marks: Option<Box<Vec<Mark>>>,
}

/// The end of one segment: its time range, and the decoder's state after its last sample.
struct Mark {
    min_t: i64,
    max_t: i64,
    at: State,
}

/// A decoder's position: the byte offset and what the next sample is encoded against.
#[derive(Clone, Copy)]
struct State {
    pos: usize,
    t: i64,
    delta: i64,
    bits: u64,
    first: bool,
}

impl State {
    const START: State = State {
        pos: 0,
        t: 0,
        delta: 0,
        bits: 0,
        first: true,
    };
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
        if self.len > 0 && self.len.is_multiple_of(SEGMENT) {
            self.cut();
        }
        self.len += 1;
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

    /// Ends a segment before the next sample.
    fn cut(&mut self) {
        let at = State {
            pos: self.buf.len(),
            t: self.last_t,
            delta: self.last_delta,
            bits: self.last_bits,
            first: false,
        };
        let (mut min_t, mut max_t) = (i64::MAX, i64::MIN);
        let from = self.last_mark();
        self.timestamps(from, at.pos, |t| {
            min_t = min_t.min(t);
            max_t = max_t.max(t);
            false
        });
        let marks = self.marks.get_or_insert_with(Box::default);
        marks.push(Mark { min_t, max_t, at });
    }

    /// Where the open (last) segment starts.
    fn last_mark(&self) -> State {
        self.marks
            .as_ref()
            .and_then(|m| m.last())
            .map_or(State::START, |m| m.at)
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
        let mut found = None;
        // Segment by segment, in write order (a later write wins): the finished ones whose
        // range holds t, then the open one.
        let mut from = State::START;
        for m in self.marks.iter().flat_map(|m| m.iter()) {
            if m.min_t <= t && t <= m.max_t {
                self.find_in(from, m.at.pos, t, &mut found);
            }
            from = m.at;
        }
        self.find_in(from, self.buf.len(), t, &mut found);
        found
    }

    /// Sets `found` to the value of the last sample at `t` in bytes `[from.pos, end)`.
    fn find_in(&self, from: State, end: usize, t: i64, found: &mut Option<f64>) {
        // Timestamps first, skipping the values' bytes: a late sample is usually new.
        if !self.has(from, end, t) {
            return;
        }
        self.walk_from(from, end, |s| {
            if s.timestamp == t {
                *found = Some(s.value);
            }
        });
    }

    /// Whether a sample at `t` is in bytes `[from.pos, end)` (the timestamps alone decoded).
    fn has(&self, from: State, end: usize, t: i64) -> bool {
        self.timestamps(from, end, |at| at == t)
    }

    /// Calls `f` with the timestamps in bytes `[from.pos, end)` until it returns true;
    /// returns whether it did.
    fn timestamps(&self, from: State, end: usize, mut f: impl FnMut(i64) -> bool) -> bool {
        let b = &self.buf[..end];
        let State {
            pos: mut p,
            t: mut at,
            mut delta,
            mut first,
            ..
        } = from;
        while p < b.len() {
            at = next_timestamp(b, &mut p, &mut delta, &mut first, at);
            if f(at) {
                return true;
            }
            let (_, n) = control(b[p]);
            p += 1 + n;
        }
        false
    }

    /// Calls `f` with every buffered sample, in write order.
    fn walk(&self, f: impl FnMut(Sample)) {
        self.walk_from(State::START, self.buf.len(), f);
    }

    /// Calls `f` with the samples in bytes `[from.pos, end)`, in write order.
    fn walk_from(&self, from: State, end: usize, mut f: impl FnMut(Sample)) {
        let b = &self.buf[..end];
        let State {
            pos: mut p,
            mut t,
            mut delta,
            mut bits,
            mut first,
        } = from;
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
        let marks = self.marks.as_ref().map_or(0, |m| {
            std::mem::size_of::<Vec<Mark>>() + m.capacity() * std::mem::size_of::<Mark>()
        });
        self.buf.capacity() + marks
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

    proptest! {
        /// A regular series delivered a little out of order, with repeats (the skip index
        /// skips whole segments here): `find` gives the last write at every timestamp, and
        /// nothing between them.
        #[test]
        fn finds_across_segments_of_a_nearly_sorted_buffer(
            swaps in prop::collection::vec((0usize..300, 0usize..4), 0..60),
            repeats in prop::collection::vec(0usize..300, 0..40),
            n in 0usize..300,
        ) {
            let mut order: Vec<usize> = (0..n).collect();
            for (i, d) in swaps {
                if i + d < n {
                    order.swap(i, i + d);
                }
            }
            order.extend(repeats.into_iter().filter(|&r| r < n));
            let at = |i: usize| 1_700_000_000_000 + i as i64 * 10_000;
            let mut b = OpenBuffer::default();
            let mut last = std::collections::HashMap::new();
            for (k, &i) in order.iter().enumerate() {
                let v = (i * 1000 + k) as f64;
                b.push(Sample::new(at(i), v));
                last.insert(at(i), v);
            }
            for i in 0..n {
                prop_assert_eq!(b.find(at(i)), Some(last[&at(i)]));
                prop_assert_eq!(b.find(at(i) + 5_000), None);
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
