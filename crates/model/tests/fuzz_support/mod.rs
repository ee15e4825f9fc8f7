//! What every fuzz test of the workspace shares: the case budget, byte mutations of valid
//! inputs, and an allocator that reports the largest single allocation a decoder asked for.
//!
//! Test files of other crates include this file with `#[path]`, so the mutations and the
//! allocation bound are one implementation. See `docs/fuzzing.md`.

#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A property's configuration: `default` cases in CI (all fuzz tests together stay well under
/// a minute in a debug build), or `PROPTEST_CASES` when set, for longer runs.
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Shrinking a decoder input of a few hundred bytes needs no more than this.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// One change to a valid input, as a fuzzer makes them. Positions are [`Index`]es, so a
/// mutation applies to an input of any length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Cut the input at a position.
    Truncate(Index),
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to `n` bytes.
    Remove(Index, usize),
    /// Copy up to `n` bytes from one position to another (a splice of the input with itself).
    Splice(Index, usize, Index),
    /// Replace the LEB128 varint at a position (or the byte there) with one of `v`: lengths and
    /// counts become 2^62, 2^32 or u64::MAX.
    Varint(Index, u64),
    /// Overwrite 4 or 8 bytes at a position with an extreme little-endian value.
    Fixed(Index, bool, u64),
}

/// Values a length or count field should never be trusted with.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 62),
        Just(1u64 << 32),
        Just((1u64 << 31) - 1),
        Just(1u64 << 31),
        Just(i64::MAX as u64),
        Just(i64::MIN as u64),
        Just(0),
        0u64..300,
        any::<u64>(),
    ]
}

/// One [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(a, n, b)| Mutation::Splice(a, n, b)),
        (any::<Index>(), extreme()).prop_map(|(i, v)| Mutation::Varint(i, v)),
        (any::<Index>(), any::<bool>(), extreme()).prop_map(|(i, w, v)| Mutation::Fixed(i, w, v)),
    ]
}

/// One to four [`Mutation`]s.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..5)
}

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Applies `ms` to `b` in order.
pub fn mutate(b: &mut Vec<u8>, ms: &[Mutation]) {
    // A position in `b`, or 0 when it is empty; `end`: the end is a position too.
    let at = |b: &Vec<u8>, i: &Index, end: bool| {
        let n = b.len() + usize::from(end);
        if n == 0 {
            0
        } else {
            i.index(n)
        }
    };
    for m in ms {
        match m {
            Mutation::Truncate(i) => {
                let p = at(b, i, false);
                b.truncate(p);
            }
            Mutation::Flip(i, mask) => {
                if !b.is_empty() {
                    let p = at(b, i, false);
                    b[p] ^= mask;
                }
            }
            Mutation::Insert(i, bytes) => {
                let p = at(b, i, true);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let p = at(b, i, false);
                let e = (p + n).min(b.len());
                b.drain(p..e);
            }
            Mutation::Splice(from, n, to) => {
                let p = at(b, from, false);
                let e = (p + n).min(b.len());
                let part = b[p..e].to_vec();
                let q = at(b, to, true);
                b.splice(q..q, part);
            }
            Mutation::Varint(i, v) => {
                let p = at(b, i, true);
                // The old varint's bytes: continuation bytes and the one ending it.
                let old = b[p..].iter().take_while(|x| **x >= 0x80).count();
                let e = (p + old + 1).min(b.len());
                let mut new = Vec::new();
                put_varint(&mut new, *v);
                b.splice(p..e, new);
            }
            Mutation::Fixed(i, wide, v) => {
                let p = at(b, i, false);
                let bytes = v.to_le_bytes();
                let w = if *wide { 8 } else { 4 };
                for (k, x) in bytes[..w].iter().enumerate() {
                    if let Some(d) = b.get_mut(p + k) {
                        *d = *x;
                    }
                }
            }
        }
    }
}

/// Bytes that are valid with probability zero but shaped like nothing in particular.
pub fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Floats whose bits matter: NaN payloads (Prometheus' staleness marker among them), both
/// zeros, infinities, subnormals, extremes, and any bit pattern at all.
pub fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::from_bits(0x7ff0_0000_0000_0002)),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(-0.0),
        Just(0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
        Just(f64::MAX),
        Just(f64::MIN),
        (-1_000_000i64..1_000_000).prop_map(|x| x as f64 / 10.0),
        any::<u64>().prop_map(f64::from_bits),
    ]
}

/// Timestamps near both ends of i64 as well as ordinary ones.
pub fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::MIN + 1),
        Just(i64::MAX - 1),
        Just(0),
        -1_000_000i64..1_000_000,
        1_700_000_000_000i64..1_700_100_000_000,
        any::<i64>(),
    ]
}

/// Allocations larger than this are refused (the process aborts saying so) rather than tried:
/// a decoder that asks for them trusts a length it read. Smaller ones are reported by
/// [`largest_allocation`] and bounded by the tests.
const REFUSE_BYTES: usize = 2 << 30;

thread_local! {
    /// The largest single allocation on this thread since [`largest_allocation`] began.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, noting the largest request of each thread.
pub struct Tracking;

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not of interest.
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
}

// Safety: every call is passed to `System` unchanged (or refused with a null pointer, which
// callers handle as an allocation failure).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > REFUSE_BYTES {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > REFUSE_BYTES {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        if new_size > REFUSE_BYTES {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result and the largest single allocation it made on this thread.
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

/// The largest single allocation a decoder may make for `input_len` bytes of input: a fixed
/// allowance for buffers and tables plus a generous multiple of the input (a sample costs a
/// few bytes on the wire and up to 64 bytes decoded).
pub fn allocation_bound(input_len: usize, fixed: usize) -> usize {
    fixed + 128 * input_len
}
