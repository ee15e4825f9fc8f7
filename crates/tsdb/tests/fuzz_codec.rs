//! Fuzzing the chunk codec ([`strata_tsdb::codec`]): samples of any shape round-trip bit for
//! bit through every encoding (raw, zstd, pco, evenly spaced, paged), ranges decode as a cut
//! of the whole, and damaged or random chunks are errors, never panics or allocations out of
//! proportion to the chunk.

#[path = "../../model/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{allocation_bound, config, float, largest_allocation, mutate, mutations};
use proptest::prelude::*;
use strata_model::{Fields, Sample};
use strata_tsdb::codec;

fn bits(s: &[Sample]) -> Vec<(i64, u64)> {
    s.iter().map(|x| (x.timestamp, x.value.to_bits())).collect()
}

/// Values as stored series have them: any bits, decimals (scaled to integers by the codec),
/// integers, a constant, or a counter.
fn values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        proptest::collection::vec(float(), n),
        proptest::collection::vec((-100_000i64..100_000, 0u32..4), n).prop_map(|v| v
            .into_iter()
            .map(|(x, k)| x as f64 / 10f64.powi(k as i32))
            .collect()),
        proptest::collection::vec(any::<i64>(), n)
            .prop_map(|v| v.into_iter().map(|x| x as f64).collect()),
        float().prop_map(move |v| vec![v; n]),
        proptest::collection::vec(0u32..50, n).prop_map(|v| {
            let mut c = 0.0;
            v.into_iter()
                .map(|d| {
                    c += d as f64;
                    c
                })
                .collect()
        }),
    ]
}

/// Sorted timestamps of one chunk: evenly spaced (the pco first-and-step form), near-regular
/// scrapes with jitter, or arbitrary (both ends of i64 included), and, where `dups`, with
/// repeated timestamps.
fn timestamps(n: usize, dups: bool) -> impl Strategy<Value = Vec<i64>> {
    let start = prop_oneof![
        fuzz_support::timestamp(),
        1_700_000_000_000i64..1_800_000_000_000
    ];
    prop_oneof![
        (start.clone(), 1i64..100_000).prop_map(move |(s, step)| {
            (0..n as i64)
                .map(|i| s.saturating_add(i * step))
                .collect::<Vec<_>>()
        }),
        (start, proptest::collection::vec(-50i64..50, n)).prop_map(|(s, jitter)| {
            jitter
                .iter()
                .enumerate()
                .map(|(i, j)| s.saturating_add(i as i64 * 15_000 + j))
                .collect()
        }),
        proptest::collection::vec(fuzz_support::timestamp(), n),
    ]
    .prop_map(move |mut t: Vec<i64>| {
        t.sort_unstable();
        if !dups {
            t.dedup();
        }
        t
    })
}

/// Sorted samples, one per timestamp unless `dups`; up to `max` of them.
fn samples(max: usize, dups: bool) -> impl Strategy<Value = Vec<Sample>> {
    (0..max)
        .prop_flat_map(move |n| (timestamps(n, dups), values(n)))
        .prop_map(|(t, v)| {
            t.into_iter()
                .zip(v)
                .map(|(t, v)| Sample::new(t, v))
                .collect()
        })
}

/// Decodes `chunk` whole and over `[start, end]`, checking the range against the whole.
fn check_decodes(chunk: &[u8], want: &[Sample], start: i64, end: i64) -> Result<(), TestCaseError> {
    let mut all = Vec::new();
    codec::decode(chunk, &mut all).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(bits(&all), bits(want));
    let in_range: Vec<Sample> = want
        .iter()
        .filter(|s| s.timestamp >= start && s.timestamp <= end)
        .copied()
        .collect();
    for fields in [Fields::All, Fields::Timestamps] {
        let mut part = Vec::new();
        codec::decode_range(chunk, start, end, fields, &mut part)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Whole pages may come back: what is inside the range must be exact.
        part.retain(|s| s.timestamp >= start && s.timestamp <= end);
        let times = |s: &[Sample]| s.iter().map(|x| x.timestamp).collect::<Vec<_>>();
        prop_assert_eq!(times(&part), times(&in_range));
        if fields == Fields::All {
            prop_assert_eq!(bits(&part), bits(&in_range));
        }
    }
    Ok(())
}

/// A range inside or around the samples' span.
fn range_of(s: &[Sample], a: u8, b: u8) -> (i64, i64) {
    let (lo, hi) = match (s.first(), s.last()) {
        (Some(f), Some(l)) => (f.timestamp, l.timestamp),
        _ => (0, 0),
    };
    let at = |x: u8| lo.saturating_add(((hi as i128 - lo as i128) * x as i128 / 255) as i64);
    let (a, b) = (at(a.min(b)), at(a.max(b)));
    (a.saturating_sub(1), b)
}

proptest! {
    #![proptest_config(config(256))]

    /// Any sorted samples round-trip bit for bit (NaN payloads, -0.0, i64 extremes), with and
    /// without compression, and every range decodes as that cut of the whole.
    #[test]
    fn chunks_round_trip(s in samples(120, false), a in any::<u8>(), b in any::<u8>()) {
        let (start, end) = range_of(&s, a, b);
        for compress in [false, true] {
            let chunk = codec::encode(&s, compress);
            check_decodes(&chunk, &s, start, end)?;
        }
    }

    /// Repeated timestamps are not what the head hands the codec, but they round-trip too.
    #[test]
    fn repeated_timestamps_round_trip(s in samples(60, true)) {
        for compress in [false, true] {
            let chunk = codec::encode(&s, compress);
            let mut all = Vec::new();
            codec::decode(&chunk, &mut all).unwrap();
            prop_assert_eq!(bits(&all), bits(&s));
        }
    }

    /// Damaged chunks of every encoding are errors or samples, never panics, and allocate in
    /// proportion to the chunk.
    #[test]
    fn damaged_chunks_are_errors(s in samples(80, false), compress in any::<bool>(), ms in mutations(), a in any::<u8>(), b in any::<u8>()) {
        let mut chunk = codec::encode(&s, compress);
        mutate(&mut chunk, &ms);
        let (start, end) = range_of(&s, a, b);
        decode_damaged(&chunk, start, end)?;
    }

    /// Bytes of no shape, behind each encoding's flag byte.
    #[test]
    fn random_chunks_are_errors(flag in 0u8..6, bytes in fuzz_support::random_bytes(200)) {
        let mut chunk = vec![flag];
        chunk.extend_from_slice(&bytes);
        decode_damaged(&chunk, i64::MIN, i64::MAX)?;
        decode_damaged(&bytes, -5, 5)?;
    }
}

/// What one pco chunk may legitimately decode to from a few bytes: pco holds up to 2^24
/// numbers per chunk and constant ones cost it no bits, so a valid column of a hundred bytes
/// can be 128 MiB of numbers (and a sample is two of them). Claims beyond what the data can
/// hold (a declared size or count of 2^30 or 2^62) are far above this.
const PCO_CHUNK_BYTES: usize = (1 << 24) * 16;

/// Decodes a chunk that may be damaged, whole and over a range, bounding its allocations.
fn decode_damaged(chunk: &[u8], start: i64, end: i64) -> Result<(), TestCaseError> {
    for fields in [Fields::All, Fields::Timestamps] {
        let mut out = Vec::new();
        let (_, largest) =
            largest_allocation(|| codec::decode_range(chunk, start, end, fields, &mut out));
        prop_assert!(
            largest <= allocation_bound(chunk.len(), PCO_CHUNK_BYTES),
            "{} bytes allocated at once for a chunk of {}",
            largest,
            chunk.len()
        );
    }
    Ok(())
}

/// Regular scrapes longer than a page: the paged form, whose pages decode on their own.
fn paged() -> impl Strategy<Value = Vec<Sample>> {
    (
        codec::PAGE_SAMPLES + 1..3 * codec::PAGE_SAMPLES,
        prop_oneof![
            1_700_000_000_000i64..1_800_000_000_000,
            fuzz_support::timestamp()
        ],
        1i64..100_000,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(n, start, step, seed, floats)| {
            let mut x = seed | 1;
            let mut v = 0i64;
            (0..n as i64)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    v += (x % 21) as i64 - 10;
                    let value = if floats {
                        (v as f64).abs().sqrt() + i as f64 * 1e-9
                    } else {
                        v as f64 / 10.0
                    };
                    Sample::new(start.saturating_add(i * step), value)
                })
                .collect::<Vec<_>>()
        })
        .prop_filter("evenly spaced", |s| {
            let step = s[1].timestamp.checked_sub(s[0].timestamp);
            step.is_some_and(|d| d > 0)
                && s.windows(2)
                    .all(|w| w[1].timestamp.checked_sub(w[0].timestamp) == step)
        })
}

/// The flag byte of a paged chunk.
const PAGED: u8 = 4;

proptest! {
    // Each case compresses thousands of samples several ways in a debug build.
    #![proptest_config(config(32))]

    /// Paged chunks round-trip and decode any range exactly; damaged ones (their page table
    /// included) are errors with bounded allocation.
    #[test]
    fn paged_chunks_round_trip_and_damage_is_an_error(s in paged(), a in any::<u8>(), b in any::<u8>(), ms in mutations()) {
        let chunk = codec::encode(&s, true);
        let (start, end) = range_of(&s, a, b);
        check_decodes(&chunk, &s, start, end)?;
        let mut bad = chunk.clone();
        mutate(&mut bad, &ms);
        decode_damaged(&bad, start, end)?;
        // The sample count, page count and metadata length lead the chunk: huge values there.
        for field in (0..3).filter(|_| chunk[0] == PAGED) {
            for huge in [1u64 << 62, u64::MAX, 1 << 32] {
                decode_damaged(&with_varint(&chunk, field, huge), start, end)?;
            }
        }
    }
}

/// `chunk` with the `field`-th varint of its paged header (0: sample count, 1: page count,
/// 2: metadata length; the kind byte, first and step skipped) set to `v`.
fn with_varint(chunk: &[u8], field: usize, v: u64) -> Vec<u8> {
    let varint_end = |p: usize| p + chunk[p..].iter().take_while(|b| **b >= 0x80).count() + 1;
    // flag, n, kind, first, step, pages, meta_len
    let n_at = 1;
    let kind_at = varint_end(n_at);
    let first_at = kind_at + 1;
    let pages_at = varint_end(varint_end(first_at));
    let meta_at = varint_end(pages_at);
    let at = [n_at, pages_at, meta_at][field];
    let mut out = chunk[..at].to_vec();
    fuzz_support::put_varint(&mut out, v);
    out.extend_from_slice(&chunk[varint_end(at)..]);
    out
}

/// Regular samples over several pages, starting at `first`: a random walk in steps of 0.1,
/// which pco compresses best, so the chunk is paged.
fn regular(first: i64, n: i64) -> Vec<Sample> {
    let (mut x, mut v) = (0x9E37_79B9_7F4A_7C15u64, 0i64);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v += (x % 21) as i64 - 10;
            Sample::new(first + i * 1000, v as f64 / 10.0)
        })
        .collect()
}

/// Found by `damaged_chunks_are_errors`: a zstd chunk's declared size (up to 1 GiB) was
/// allocated before the data was looked at.
#[test]
fn a_zstd_chunk_declaring_a_huge_size_allocates_nothing_for_it() {
    for declared in [1u64 << 30, 1 << 29, 300_000] {
        let mut chunk = vec![1u8];
        fuzz_support::put_varint(&mut chunk, declared);
        chunk.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0]);
        let (r, largest) = largest_allocation(|| codec::decode(&chunk, &mut Vec::new()));
        assert!(r.is_err());
        assert!(
            largest < 1 << 20,
            "{largest} bytes for a declared {declared}"
        );
    }
    // A real zstd chunk still decodes: many samples of one value at irregular times.
    let s: Vec<Sample> = (0..5000).map(|i| Sample::new(i * i, 1.0)).collect();
    let chunk = codec::encode(&s, true);
    let mut out = Vec::new();
    codec::decode(&chunk, &mut out).unwrap();
    assert_eq!(bits(&out), bits(&s));
}

/// Found by `paged_chunks_round_trip_and_damage_is_an_error`: a paged chunk's sample count was
/// trusted (a reader reserved room for 2^62 samples: "capacity overflow"), and a range far from
/// the chunk's times overflowed the page arithmetic.
#[test]
fn paged_chunks_check_their_count_and_any_range() {
    let s = regular(1_700_000_000_000, 3000);
    let chunk = codec::encode(&s, true);
    assert_eq!(chunk[0], PAGED);
    for huge in [
        1u64 << 62,
        u64::MAX,
        1 << 32,
        3 * codec::PAGE_SAMPLES as u64 + 1,
    ] {
        for fields in [Fields::All, Fields::Timestamps] {
            let bad = with_varint(&chunk, 0, huge);
            let (r, largest) = largest_allocation(|| {
                codec::decode_range(&bad, i64::MIN, i64::MAX, fields, &mut Vec::new())
            });
            assert!(r.is_err(), "count {huge}");
            assert!(largest < 1 << 20, "{largest} bytes for count {huge}");
        }
    }
    for first in [i64::MIN + 1, i64::MAX - 3000 * 1000] {
        let s = regular(first, 3000);
        let chunk = codec::encode(&s, true);
        assert_eq!(chunk[0], PAGED);
        for (start, end) in [
            (i64::MAX - 5, i64::MAX),
            (i64::MIN, i64::MIN + 5),
            (i64::MIN, i64::MAX),
        ] {
            let mut out = Vec::new();
            codec::decode_range(&chunk, start, end, Fields::All, &mut out).unwrap();
            out.retain(|x| x.timestamp >= start && x.timestamp <= end);
            let want: Vec<Sample> = s
                .iter()
                .filter(|x| x.timestamp >= start && x.timestamp <= end)
                .copied()
                .collect();
            assert_eq!(bits(&out), bits(&want));
        }
    }
}
