//! Fuzzing every decoder: Prometheus remote write, Influx line protocol, JSON events.
//!
//! Each decoder gets generated valid bodies, which must decode to exactly the series and
//! sample bits they were built from, and the same bodies mutated (truncated, flipped, spliced,
//! with huge varints and lengths) as well as random bytes, which must decode to an error or a
//! batch without panicking and without any single allocation out of proportion to the body.

#[path = "../../model/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{allocation_bound, config, float, largest_allocation, mutate, mutations};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use strata_ingest::{events, influx, remote_write, DecodeContext, Decoded, IngestError};
use strata_model::{Limits, Sample, SeriesKey, SeriesKeyRef, Tenant, WriteBatch};

const NOW: i64 = 1_700_000_000_000;
/// The decompressed-size limit in these tests: small, so a body that declares more is refused.
const MAX_DECOMPRESSED: usize = 256 << 10;

fn ctx(limits: &Limits) -> DecodeContext<'_> {
    DecodeContext {
        limits,
        now_ms: NOW,
        max_decompressed_bytes: MAX_DECOMPRESSED,
    }
}

/// Series as (key bytes, samples as (t, value bits)), in batch order.
type Dump = Vec<(Vec<u8>, Vec<(i64, u64)>)>;

fn dump(b: &WriteBatch) -> Dump {
    b.iter()
        .map(|s| {
            let samples = s
                .samples
                .iter()
                .map(|x| (x.timestamp, x.value.to_bits()))
                .collect();
            (s.key.as_bytes().to_vec(), samples)
        })
        .collect()
}

/// The canonical key of `pairs` (any order, unique names): empty values dropped, sorted.
fn key(pairs: &[(String, String)]) -> Vec<u8> {
    let mut p: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    p.sort();
    SeriesKey::from_sorted_pairs(p).as_bytes().to_vec()
}

/// What holds for any body a decoder accepted, valid or not: the counts agree with the batch,
/// and every series has a well-formed key with a metric name.
fn check_outcome(r: &Result<Decoded, IngestError>, out: &WriteBatch) -> Result<(), TestCaseError> {
    match r {
        Ok(d) => {
            prop_assert_eq!(d.accepted_samples, out.samples_len());
            prop_assert!(d.rejected.len() <= strata_ingest::MAX_LISTED_REJECTIONS);
            prop_assert!(d.rejected.len() <= d.rejected_total);
            for s in out.iter() {
                prop_assert!(SeriesKeyRef::parse(s.key.as_bytes()).is_some());
                prop_assert!(s.key.get(b"__name__").is_some_and(|n| !n.is_empty()));
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// Default limits, each call's different from the last: the decoders' per-thread series
/// caches start over when the limits change, so what a decode allocates depends on its own
/// body, not on the bodies decoded before it on the thread.
fn fresh_limits() -> Limits {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    Limits {
        max_series_per_metric: 100_000 + CALLS.fetch_add(1, Ordering::Relaxed),
        ..Limits::default()
    }
}

/// A decoder under test.
type DecodeFn<'a> =
    &'a dyn Fn(&[u8], &DecodeContext<'_>, &mut WriteBatch) -> Result<Decoded, IngestError>;

/// Runs `decode` into a fresh batch with fresh limits (see [`run_with`]).
fn run(
    body: &[u8],
    fixed: usize,
    decode: DecodeFn<'_>,
) -> Result<(Result<Decoded, IngestError>, WriteBatch), TestCaseError> {
    run_with(&fresh_limits(), body, fixed, decode)
}

/// Runs `decode` into a fresh batch, checking the largest allocation against the body's size
/// plus `fixed`, and checking the outcome.
fn run_with(
    limits: &Limits,
    body: &[u8],
    fixed: usize,
    decode: DecodeFn<'_>,
) -> Result<(Result<Decoded, IngestError>, WriteBatch), TestCaseError> {
    let mut out = WriteBatch::new(Tenant::default());
    let (r, largest) = largest_allocation(|| decode(body, &ctx(limits), &mut out));
    prop_assert!(
        largest <= allocation_bound(body.len(), fixed),
        "{} bytes allocated at once for a body of {}",
        largest,
        body.len()
    );
    check_outcome(&r, &out)?;
    Ok((r, out))
}

/// Label names other than `__name__`.
fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,6}".prop_filter("not the metric name", |n| n != "__name__")
}

/// Label values: empty (dropped), ASCII, escapes' characters, any Unicode.
fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]{1,6}",
        "[ ,=\\\\\"a]{1,4}",
        "\\PC{1,5}",
    ]
}

// ---- remote write ----

/// One series to encode: metric name, other labels, samples (some outside the accepted window).
type RwSeries = (String, BTreeMap<String, String>, Vec<Sample>);

fn rw_series() -> impl Strategy<Value = RwSeries> {
    let t = prop_oneof![
        // Inside the default window (30 days back, 10 minutes ahead).
        4 => (NOW - 29 * 86_400_000)..(NOW + 500_000),
        1 => fuzz_support::timestamp(),
    ];
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,8}",
        proptest::collection::btree_map(label_name(), label_value(), 0..5),
        proptest::collection::vec((t, float()).prop_map(|(t, v)| Sample::new(t, v)), 0..6),
    )
}

/// The series and samples a receiver must store for `series`, and the samples it must refuse.
fn rw_expected(series: &[RwSeries], limits: &Limits) -> (Dump, usize) {
    let mut want = Vec::new();
    let mut refused = 0;
    for (name, labels, samples) in series {
        let mut pairs: Vec<(String, String)> = labels.clone().into_iter().collect();
        pairs.push(("__name__".into(), name.clone()));
        let kept: Vec<(i64, u64)> = samples
            .iter()
            .filter(|s| limits.check_timestamp(s.timestamp, NOW).is_ok())
            .map(|s| (s.timestamp, s.value.to_bits()))
            .collect();
        refused += samples.len() - kept.len();
        if !kept.is_empty() {
            want.push((key(&pairs), kept));
        }
    }
    (want, refused)
}

fn rw_encode(series: &[RwSeries]) -> Vec<u8> {
    let pairs: Vec<Vec<(&str, &str)>> = series
        .iter()
        .map(|(name, labels, _)| {
            // Labels in any order: the metric name last, as some clients send it.
            let mut l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            l.push(("__name__", name));
            l
        })
        .collect();
    let input: Vec<remote_write::SeriesToEncode<'_>> = pairs
        .iter()
        .zip(series)
        .map(|(l, (_, _, s))| (l.as_slice(), s.as_slice()))
        .collect();
    remote_write::encode(&input)
}

fn rw_decode(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    remote_write::decode(body, ctx, out)
}

fn rw_decode_raw(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    remote_write::decode_uncompressed(body, ctx, out)
}

/// The allowance of a snappy body: it may decompress to [`MAX_DECOMPRESSED`] bytes of
/// protobuf from a few bytes, which decode to several times as many bytes of batch (and the
/// reused decompression buffer grows by doubling).
const RW_FIXED: usize = 16 * MAX_DECOMPRESSED;

proptest! {
    #![proptest_config(config(256))]

    /// Requests built as Prometheus builds them decode to exactly their series and sample bits
    /// (NaN payloads included); samples outside the window are refused and counted. Decoding
    /// twice (the second time from the per-thread series cache) gives the same batch.
    #[test]
    fn remote_write_round_trips(series in proptest::collection::vec(rw_series(), 0..6)) {
        let body = rw_encode(&series);
        let (want, refused) = rw_expected(&series, &Limits::default());
        let limits = fresh_limits();
        for _ in 0..2 {
            let (r, out) = run_with(&limits, &body, RW_FIXED, &rw_decode)?;
            let d = r.unwrap();
            prop_assert_eq!(d.rejected_total, refused);
            prop_assert_eq!(&dump(&out), &want);
        }
    }

    /// Mutated requests, compressed again (so the protobuf reader sees them) and as they are
    /// (so snappy does), are errors or batches, never panics or huge allocations.
    #[test]
    fn remote_write_mutated(series in proptest::collection::vec(rw_series(), 1..4), ms in mutations(), compressed in any::<bool>()) {
        let body = rw_encode(&series);
        let mut proto = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        if compressed {
            let mut bad = body.clone();
            mutate(&mut bad, &ms);
            let _ = run(&bad, RW_FIXED, &rw_decode)?;
        } else {
            mutate(&mut proto, &ms);
            let _ = run(&proto, 64 << 10, &rw_decode_raw)?;
            let again = snap::raw::Encoder::new().compress_vec(&proto).unwrap();
            let _ = run(&again, RW_FIXED, &rw_decode)?;
        }
    }

    /// Random bytes, as a snappy body and as a protobuf.
    #[test]
    fn remote_write_random(bytes in fuzz_support::random_bytes(400)) {
        let _ = run(&bytes, RW_FIXED, &rw_decode)?;
        let _ = run(&bytes, 64 << 10, &rw_decode_raw)?;
    }
}

/// A field of a message that remote write does not define (or defines and Strata skips):
/// field number and wire type with a payload.
#[derive(Debug, Clone)]
enum Unknown {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Len(u32, Vec<u8>),
    Fixed32(u32, u32),
}

/// An unknown field numbered by `numbers`.
fn unknown(numbers: BoxedStrategy<u32>) -> impl Strategy<Value = Unknown> {
    prop_oneof![
        (numbers.clone(), any::<u64>()).prop_map(|(n, v)| Unknown::Varint(n, v)),
        (numbers.clone(), any::<u64>()).prop_map(|(n, v)| Unknown::Fixed64(n, v)),
        (numbers.clone(), fuzz_support::random_bytes(12)).prop_map(|(n, v)| Unknown::Len(n, v)),
        (numbers, any::<u32>()).prop_map(|(n, v)| Unknown::Fixed32(n, v)),
    ]
}

fn put_key(out: &mut Vec<u8>, number: u32, wire: u8) {
    fuzz_support::put_varint(out, u64::from(number << 3 | u32::from(wire)));
}

fn put_len(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_key(out, number, 2);
    fuzz_support::put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

impl Unknown {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Unknown::Varint(n, v) => {
                put_key(&mut out, *n, 0);
                fuzz_support::put_varint(&mut out, *v);
            }
            Unknown::Fixed64(n, v) => {
                put_key(&mut out, *n, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Unknown::Len(n, v) => put_len(&mut out, *n, v),
            Unknown::Fixed32(n, v) => {
                put_key(&mut out, *n, 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }
}

/// How one message's fields are laid out: the parts in `order` (a permutation, applied where
/// the message allows), unknown fields inserted at positions.
#[derive(Debug, Clone)]
struct Layout {
    /// Insert each unknown field before the part at this position.
    unknown: Vec<(proptest::sample::Index, Unknown)>,
    /// Where the labels go among the samples (which keep their order).
    labels_at: Vec<proptest::sample::Index>,
    /// Samples with their timestamp first.
    time_first: bool,
    /// Leave out a zero value or timestamp, as proto3 encoders do.
    omit_defaults: bool,
}

/// A layout whose unknown fields are numbered by `numbers`.
fn layout(numbers: BoxedStrategy<u32>) -> impl Strategy<Value = Layout> {
    (
        proptest::collection::vec((any::<proptest::sample::Index>(), unknown(numbers)), 0..3),
        proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(unknown, labels_at, time_first, omit_defaults)| Layout {
            unknown,
            labels_at,
            time_first,
            omit_defaults,
        })
}

/// Inserts `layout`'s unknown fields among `parts` and joins them.
fn with_unknown(mut parts: Vec<Vec<u8>>, layout: &Layout) -> Vec<u8> {
    for (i, u) in &layout.unknown {
        let at = i.index(parts.len() + 1);
        parts.insert(at, u.encode());
    }
    parts.concat()
}

/// A `WriteRequest` for `series` as any conforming encoder may write it: labels anywhere among
/// the samples, sample fields in either order, zero values left out, unknown fields (and the
/// exemplars and metadata Strata skips) between all of them.
fn rw_encode_any_order(series: &[RwSeries], layouts: &[Layout], request: &Layout) -> Vec<u8> {
    let mut req = Vec::new();
    for ((name, labels, samples), l) in series.iter().zip(layouts.iter().cycle()) {
        let mut parts: Vec<Vec<u8>> = samples
            .iter()
            .map(|s| {
                let mut value = Vec::new();
                if !(l.omit_defaults && s.value.to_bits() == 0) {
                    put_key(&mut value, 1, 1);
                    value.extend_from_slice(&s.value.to_le_bytes());
                }
                let mut time = Vec::new();
                if !(l.omit_defaults && s.timestamp == 0) {
                    put_key(&mut time, 2, 0);
                    fuzz_support::put_varint(&mut time, s.timestamp as u64);
                }
                let fields = if l.time_first {
                    vec![time, value]
                } else {
                    vec![value, time]
                };
                let mut out = Vec::new();
                put_len(&mut out, 2, &with_unknown(fields, l));
                out
            })
            .collect();
        let mut pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.push(("__name__", name));
        for (i, (k, v)) in pairs.iter().enumerate() {
            let fields = vec![
                {
                    let mut f = Vec::new();
                    put_len(&mut f, 1, k.as_bytes());
                    f
                },
                {
                    let mut f = Vec::new();
                    put_len(&mut f, 2, v.as_bytes());
                    f
                },
            ];
            let mut label = Vec::new();
            let fields = if l.time_first {
                fields.into_iter().rev().collect()
            } else {
                fields
            };
            put_len(&mut label, 1, &with_unknown(fields, l));
            let at = l.labels_at.get(i).map_or(0, |x| x.index(parts.len() + 1));
            parts.insert(at, label);
        }
        let mut ts = Vec::new();
        put_len(&mut ts, 1, &with_unknown(parts, l));
        req.push(ts);
    }
    with_unknown(req, request)
}

proptest! {
    #![proptest_config(config(256))]

    /// Requests laid out in any order a conforming encoder may use decode to exactly what
    /// Prometheus' own layout decodes to.
    #[test]
    fn remote_write_any_layout_decodes_alike(
        series in proptest::collection::vec(rw_series(), 0..5),
        // Series may hold exemplars (3), never histograms (4): those are refused.
        layouts in proptest::collection::vec(layout(prop_oneof![Just(3u32), 5u32..30].boxed()), 1..4),
        request in layout((2u32..30).boxed()),
    ) {
        let body = rw_encode_any_order(&series, &layouts, &request);
        let (want, refused) = rw_expected(&series, &Limits::default());
        let limits = fresh_limits();
        for _ in 0..2 {
            let (r, out) = run_with(&limits, &body, 64 << 10, &rw_decode_raw)?;
            let d = r.unwrap();
            prop_assert_eq!(d.rejected_total, refused);
            prop_assert_eq!(&dump(&out), &want);
        }
    }
}

/// The positions of every length prefix in a well-formed protobuf message and the messages
/// inside it (remote write nests three deep: request, series, label or sample).
/// Each as (position, width, length, nesting level: 0 for the request's own fields).
fn length_prefixes(msg: &[u8], base: usize, depth: u32, out: &mut Vec<(usize, usize, u64, u32)>) {
    let read = |p: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*p)?;
            *p += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    let mut p = 0;
    while p < msg.len() {
        let Some(key) = read(&mut p) else { return };
        match key & 7 {
            0 => {
                if read(&mut p).is_none() {
                    return;
                }
            }
            1 => p += 8,
            5 => p += 4,
            2 => {
                let at = p;
                let Some(len) = read(&mut p) else { return };
                out.push((base + at, p - at, len, 3 - depth));
                let Some(inner) = msg.get(p..p + len as usize) else {
                    return;
                };
                if depth > 0 {
                    length_prefixes(inner, base + p, depth - 1, out);
                }
                p += len as usize;
            }
            _ => return,
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A length prefix anywhere in a request (of the request's series, a series' labels or
    /// samples, a label's name or value) made longer, shorter or huge: the decoder reports
    /// the protobuf as malformed or decodes what is still well formed, never reads past the
    /// message nor allocates what the length claims.
    #[test]
    fn remote_write_lengths_changed(
        series in proptest::collection::vec(rw_series(), 1..4),
        which in any::<proptest::sample::Index>(),
        change in prop_oneof![(-3i64..=3).prop_map(Some), Just(None)],
        huge in prop_oneof![Just(u64::MAX), Just(1u64 << 62), Just(1u64 << 32), Just(i64::MAX as u64)],
    ) {
        let body = rw_encode(&series);
        let proto = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let mut prefixes = Vec::new();
        length_prefixes(&proto, 0, 3, &mut prefixes);
        prop_assume!(!prefixes.is_empty());
        let (at, width, len, level) = prefixes[which.index(prefixes.len())];
        let last_series = prefixes.iter().filter(|p| p.3 == 0).map(|p| p.0).max() == Some(at);
        let new = match change {
            Some(d) => len.saturating_add_signed(d),
            None => huge,
        };
        let mut bad = proto[..at].to_vec();
        fuzz_support::put_varint(&mut bad, new);
        bad.extend_from_slice(&proto[at + width..]);
        let (r, _) = run(&bad, 64 << 10, &rw_decode_raw)?;
        if new > len && level == 0 && last_series {
            // The last series now runs past the end of the request.
            prop_assert!(r.is_err());
        }
    }
}

/// A snappy body declaring a huge decompressed size is refused before anything is allocated.
#[test]
fn remote_write_huge_declared_size_is_refused() {
    for declared in [
        MAX_DECOMPRESSED as u64 + 1,
        1 << 32,
        (1 << 62) - 1,
        u64::MAX,
    ] {
        let mut body = Vec::new();
        fuzz_support::put_varint(&mut body, declared);
        body.extend_from_slice(&[0x00, 0x01, 0x02]);
        let mut out = WriteBatch::new(Tenant::default());
        let limits = Limits::default();
        let (r, largest) = largest_allocation(|| rw_decode(&body, &ctx(&limits), &mut out));
        assert!(r.is_err(), "declared {declared}");
        assert!(largest < 1 << 16, "{largest} bytes for declared {declared}");
    }
}

// ---- Influx line protocol ----

/// A field value of a line, as written, and the value stored (`None`: refused).
fn influx_value() -> impl Strategy<Value = (String, Option<f64>)> {
    prop_oneof![
        float().prop_map(|v| {
            // Rust prints finite floats so that they parse back to the same bits.
            let text = format!("{v:?}");
            (text, v.is_finite().then_some(v))
        }),
        any::<i64>().prop_map(|v| (format!("{v}i"), Some(v as f64))),
        any::<u64>().prop_map(|v| (format!("{v}u"), Some(v as f64))),
        prop_oneof![Just("t"), Just("TRUE"), Just("true")].prop_map(|t| (t.to_string(), Some(1.0))),
        prop_oneof![Just("f"), Just("False")].prop_map(|t| (t.to_string(), Some(0.0))),
        "[a-z ,=]{0,5}".prop_map(|s| (format!("\"{s}\""), None)),
    ]
}

/// One line: measurement, tags, fields, timestamp (in the precision of the body).
type Line = (
    String,
    BTreeMap<String, String>,
    BTreeMap<String, (String, Option<f64>)>,
    Option<i64>,
);

fn influx_line() -> impl Strategy<Value = Line> {
    (
        // Spaces and commas in a measurement are escaped, and become `_` in the metric name.
        "[a-z][a-z0-9_]{0,5}( |,)?[a-z]{0,2}",
        proptest::collection::btree_map("[a-z][a-z0-9_]{0,4}", "[a-z0-9 ,=é]{1,5}", 0..4),
        proptest::collection::btree_map(
            prop_oneof![Just("value".to_string()), "[a-z][a-z0-9_]{0,4}"],
            influx_value(),
            1..4,
        ),
        proptest::option::of(0i64..(20 * 86_400)),
    )
}

fn precision() -> impl Strategy<Value = influx::Precision> {
    prop_oneof![
        Just(influx::Precision::Ns),
        Just(influx::Precision::Us),
        Just(influx::Precision::Ms),
        Just(influx::Precision::S),
    ]
}

/// `ago` seconds before [`NOW`] in `p`'s unit.
fn influx_time(p: influx::Precision, ago: i64) -> i64 {
    let ms = NOW - ago * 1000;
    match p {
        influx::Precision::Ns => ms * 1_000_000,
        influx::Precision::Us => ms * 1_000,
        influx::Precision::Ms => ms,
        influx::Precision::S => ms / 1000,
    }
}

fn escape(s: &str, chars: &[char]) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if chars.contains(&c) || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The metric-name form of a measurement or field key: bytes outside `[a-zA-Z0-9_:]` become `_`.
fn sanitized(s: &str) -> String {
    let out: String = s
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b':' {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{out}")
    } else {
        out
    }
}

/// A body of `lines` and what it must decode to.
fn influx_body(lines: &[Line], p: influx::Precision) -> (String, Dump, usize) {
    let mut body = String::new();
    let mut want = Vec::new();
    let mut refused = 0;
    for (m, tags, fields, ago) in lines {
        body.push_str(&escape(m, &[' ', ',']));
        for (k, v) in tags {
            body.push_str(&format!(",{k}={}", escape(v, &[' ', ',', '='])));
        }
        let fs: Vec<String> = fields
            .iter()
            .map(|(k, (text, _))| format!("{k}={text}"))
            .collect();
        body.push(' ');
        body.push_str(&fs.join(","));
        let t = match ago {
            Some(ago) => {
                body.push_str(&format!(" {}", influx_time(p, *ago)));
                // Rounded down to milliseconds.
                p.to_ms(influx_time(p, *ago)).unwrap()
            }
            None => NOW,
        };
        body.push('\n');
        for (k, (_, v)) in fields {
            let Some(v) = v else {
                refused += 1;
                continue;
            };
            let name = if k == "value" {
                sanitized(m)
            } else {
                format!("{}_{}", sanitized(m), sanitized(k))
            };
            let mut pairs: Vec<(String, String)> = tags.clone().into_iter().collect();
            pairs.push(("__name__".into(), name));
            want.push((key(&pairs), vec![(t, v.to_bits())]));
        }
    }
    (body, want, refused)
}

proptest! {
    #![proptest_config(config(256))]

    /// Lines with escapes, every field type and every precision decode to exactly the series
    /// and value bits written; string fields are refused and counted, the rest of the line
    /// kept. Decoding twice (the second time from the series cache) gives the same batch.
    #[test]
    fn influx_round_trips(lines in proptest::collection::vec(influx_line(), 0..6), p in precision(), crlf in any::<bool>()) {
        let (mut body, want, refused) = influx_body(&lines, p);
        if crlf {
            body = body.replace('\n', "\r\n");
        }
        let limits = fresh_limits();
        let decode = |b: &[u8], c: &DecodeContext<'_>, out: &mut WriteBatch| influx::decode(b, p, c, out);
        for _ in 0..2 {
            let (r, out) = run_with(&limits, body.as_bytes(), 64 << 10, &decode)?;
            let d = r.unwrap();
            prop_assert_eq!(d.rejected_total, refused, "{}", body);
            prop_assert_eq!(&dump(&out), &want, "{}", body);
        }
    }

    /// Mutated bodies never panic nor allocate out of proportion.
    #[test]
    fn influx_mutated(lines in proptest::collection::vec(influx_line(), 1..5), p in precision(), ms in mutations()) {
        let (body, _, _) = influx_body(&lines, p);
        let mut bad = body.into_bytes();
        mutate(&mut bad, &ms);
        let _ = run(&bad, 64 << 10, &|b, c, out| influx::decode(b, p, c, out))?;
    }

    /// Random bytes, and random text made of the protocol's own punctuation.
    #[test]
    fn influx_random(bytes in fuzz_support::random_bytes(400), text in "[a-z0-9 ,=\\\\\"\n#.\\-+ieutf]{0,200}") {
        for b in [&bytes[..], text.as_bytes()] {
            let _ = run(b, 64 << 10, &|b, c, out| influx::decode(b, influx::Precision::Ns, c, out))?;
        }
    }
}

// ---- JSON events ----

/// A reading's JSON and its stored value (`None`: skipped or refused).
fn reading() -> impl Strategy<Value = (serde_json::Value, Option<f64>, bool)> {
    // (json, stored value, refused)
    prop_oneof![
        4 => float().prop_filter("finite", |v| v.is_finite()).prop_map(|v| (serde_json::json!(v), Some(v), false)),
        1 => any::<bool>().prop_map(|b| (serde_json::json!(b), Some(f64::from(u8::from(b))), false)),
        1 => Just((serde_json::Value::Null, None, false)),
        1 => "[a-z]{0,3}".prop_map(|s| (serde_json::json!(s), None, true)),
        1 => Just((serde_json::json!([1]), None, true)),
    ]
}

/// One device event: event id, device, timestamp (ms before now; as RFC 3339 or a number),
/// labels, readings.
type Event = (
    Option<String>,
    String,
    Option<(i64, bool)>,
    BTreeMap<String, String>,
    BTreeMap<String, (serde_json::Value, Option<f64>, bool)>,
);

fn event() -> impl Strategy<Value = Event> {
    (
        proptest::option::of("\\PC{0,6}"),
        "\\PC{1,6}",
        proptest::option::of((0i64..(20 * 86_400_000), any::<bool>())),
        proptest::collection::btree_map(
            label_name().prop_filter("device_id wins", |n| n != "device"),
            "\\PC{1,5}",
            0..3,
        ),
        proptest::collection::btree_map("[a-zA-Z_:][a-zA-Z0-9_:]{0,6}", reading(), 0..4),
    )
}

/// The body (one object, an array, or NDJSON) and what it must decode to.
fn events_body(evs: &[Event], shape: u8) -> (String, Dump, usize) {
    let mut objs = Vec::new();
    let mut want = Vec::new();
    let mut refused = 0;
    for (id, device, ts, labels, readings) in evs {
        let mut o = serde_json::Map::new();
        if let Some(id) = id {
            o.insert("event_id".into(), serde_json::json!(id));
        }
        o.insert("device_id".into(), serde_json::json!(device));
        let t = match ts {
            Some((ago, rfc)) => {
                let t = NOW - ago;
                let v = if *rfc {
                    serde_json::json!(strata_model::time::format_rfc3339_ms(t))
                } else {
                    serde_json::json!(t)
                };
                o.insert("timestamp".into(), v);
                t
            }
            None => NOW,
        };
        o.insert("labels".into(), serde_json::json!(labels));
        let r: serde_json::Map<String, serde_json::Value> = readings
            .iter()
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect();
        o.insert("readings".into(), serde_json::Value::Object(r));
        objs.push(serde_json::Value::Object(o));
        for (name, (_, v, bad)) in readings {
            refused += usize::from(*bad);
            let Some(v) = v else { continue };
            let mut pairs: Vec<(String, String)> = labels.clone().into_iter().collect();
            pairs.push(("__name__".into(), name.clone()));
            pairs.push(("device".into(), device.clone()));
            want.push((key(&pairs), vec![(t, v.to_bits())]));
        }
    }
    let body = match shape {
        0 if objs.len() == 1 => serde_json::to_string_pretty(&objs[0]).unwrap(),
        1 => serde_json::to_string(&objs).unwrap(),
        _ => objs.iter().map(|o| format!("{o}\n")).collect(),
    };
    (body, want, refused)
}

fn ev_decode(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    events::decode(body, ctx, out)
}

proptest! {
    #![proptest_config(config(256))]

    /// Events in every shape decode to exactly their readings' series and value bits;
    /// strings and arrays are refused and counted, nulls skipped.
    #[test]
    fn events_round_trip(evs in proptest::collection::vec(event(), 1..4), shape in 0u8..3) {
        let (body, want, refused) = events_body(&evs, shape);
        let (r, out) = run(body.as_bytes(), 64 << 10, &ev_decode)?;
        let d = r.unwrap();
        prop_assert_eq!(d.rejected_total, refused, "{}", body);
        prop_assert_eq!(dump(&out), want, "{}", body);
    }

    /// Mutated bodies never panic nor allocate out of proportion.
    #[test]
    fn events_mutated(evs in proptest::collection::vec(event(), 1..4), shape in 0u8..3, ms in mutations()) {
        let (body, _, _) = events_body(&evs, shape);
        let mut bad = body.into_bytes();
        mutate(&mut bad, &ms);
        let _ = run(&bad, 64 << 10, &ev_decode)?;
    }

    /// Random bytes, and random text made of JSON's own punctuation.
    #[test]
    fn events_random(bytes in fuzz_support::random_bytes(400), text in "[\\[\\]{}\":,0-9a-z\\\\ \n.e+\\-]{0,200}") {
        for b in [&bytes[..], text.as_bytes()] {
            let _ = run(b, 64 << 10, &ev_decode)?;
        }
    }
}

/// Number literals JSON allows and does not, at the edges of f64.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "1e400",
                "-1e400",
                "1e-400",
                "0e0",
                "-0",
                "-0.0",
                "1.0000000000000000000000001",
                "123456789012345678901234567890",
                "4.9e-324",
                "2.2250738585072014e-308",
                "1.7976931348623157e308",
                "1.7976931348623159e308",
                "9007199254740993",
                "0x10",
                "NaN",
                "Infinity",
                "01",
                "1.",
                ".5",
                "+1",
                "1e",
                "-",
                "1E+2",
                "1e-0",
                "true",
                "null",
            ][..]
        )
        .prop_map(str::to_string),
        (any::<i64>(), -400i32..400).prop_map(|(m, e)| format!("{m}e{e}")),
        (any::<u64>(), any::<u32>()).prop_map(|(a, b)| format!("{a}.{b}")),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// A reading's number, whatever its literal: stored as exactly what Rust parses it to when
    /// that is finite and JSON allows the literal, refused otherwise; the event's timestamp in
    /// the same way, rounded to milliseconds inside the accepted window.
    #[test]
    fn event_numbers_are_exact_or_refused(value in json_number(), ts_ago in prop_oneof![Just(None), (0i64..1_000_000).prop_map(Some)], frac in 0u32..1000) {
        let ts = ts_ago.map(|ago| format!("{}.{frac:03}", NOW - ago));
        let body = match &ts {
            Some(t) => format!(r#"{{"device_id":"d","timestamp":{t},"readings":{{"r":{value}}}}}"#),
            None => format!(r#"{{"device_id":"d","readings":{{"r":{value}}}}}"#),
        };
        let (r, out) = run(body.as_bytes(), 64 << 10, &ev_decode)?;
        let d = r.unwrap();
        let json_ok = serde_json::from_str::<serde_json::Value>(&value).is_ok();
        let want = match value.as_str() {
            "true" => Some(1.0),
            "null" => None,
            _ => value.parse::<f64>().ok().filter(|v| v.is_finite() && json_ok),
        };
        let t = ts.map_or(NOW, |t| t.parse::<f64>().unwrap().round() as i64);
        match want {
            Some(v) => {
                prop_assert_eq!(d.accepted_samples, 1, "{}", body);
                prop_assert_eq!(dump(&out)[0].1.clone(), vec![(t, v.to_bits())], "{}", body);
            }
            None => prop_assert_eq!(d.accepted_samples, 0, "{}", body),
        }
    }
}

/// Nesting far deeper than any event is refused by the JSON parser's depth limit, not by a
/// stack overflow.
#[test]
fn deeply_nested_events_are_errors() {
    for body in [
        "[".repeat(100_000),
        format!(
            "{{\"device_id\":\"d\",\"readings\":{{\"a\":{}}}}}",
            "[".repeat(100_000)
        ),
        format!("{}1{}", "[".repeat(5000), "]".repeat(5000)),
    ] {
        let mut out = WriteBatch::new(Tenant::default());
        let r = ev_decode(body.as_bytes(), &ctx(&Limits::default()), &mut out);
        assert!(r.is_err() || r.unwrap().accepted_samples == 0);
        assert_eq!(out.samples_len(), 0);
    }
}
