//! Fuzzing the ingest-log record codec ([`WriteBatch::encode_record`] and
//! [`WriteBatch::decode_record`]): arbitrary batches round-trip bit for bit over a segment's
//! series dictionary, and mutated or random records are errors, never panics or allocations
//! out of proportion to the record.

mod fuzz_support;

use fuzz_support::{
    allocation_bound, config, float, largest_allocation, mutate, mutations, random_bytes, timestamp,
};
use proptest::prelude::*;
use strata_model::{Limits, Sample, SeriesDict, Tenant, WriteBatch};

/// One series of a generated batch: extra labels, event id, samples.
type GenSeries = (Vec<(String, String)>, Option<String>, Vec<Sample>);

/// A batch's tenant and series.
type GenBatch = (String, Vec<GenSeries>);

fn sample() -> impl Strategy<Value = Sample> {
    (timestamp(), float()).prop_map(|(t, v)| Sample::new(t, v))
}

fn series() -> impl Strategy<Value = GenSeries> {
    (
        proptest::collection::vec(("[a-c_][a-c0-9_]{0,3}", "[a-c0-9é\\- ]{0,4}"), 0..4),
        proptest::option::of("[a-z0-9\\-]{0,8}"),
        // Duplicate timestamps are allowed in a record: timestamps come from a small set too.
        proptest::collection::vec(
            prop_oneof![
                sample(),
                (0i64..4, float()).prop_map(|(t, v)| Sample::new(t, v))
            ],
            0..8,
        ),
    )
}

fn gen_batch() -> impl Strategy<Value = GenBatch> {
    (
        prop_oneof![
            Just("default".to_string()),
            "[a-z]{1,3}",
            "[A-Za-z0-9!_.*'()-]{1,8}"
        ],
        proptest::collection::vec(series(), 0..6),
    )
}

/// Builds the batch; series whose labels the batch refuses (duplicates, bad names) are left out.
fn build((tenant, series): &GenBatch) -> Option<WriteBatch> {
    let tenant = Tenant::new(tenant).ok()?;
    let mut b = WriteBatch::new(tenant);
    for (i, (labels, event, samples)) in series.iter().enumerate() {
        // Series of one record often share a metric name and device (one entity).
        let name = format!("m{}", i % 3);
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", name.as_bytes())];
        l.extend(labels.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let event = event.as_ref().map(|e| b.event_key(e.as_bytes()));
        let _ = b.push_series(&mut l, samples, event, &Limits::default());
    }
    Some(b)
}

/// A batch as comparable values: every field a reader relies on, floats by their bits.
fn dump(b: &WriteBatch) -> (String, Vec<String>) {
    let series = b
        .iter()
        .map(|s| {
            let samples: Vec<(i64, u64)> = s
                .samples
                .iter()
                .map(|x| (x.timestamp, x.value.to_bits()))
                .collect();
            format!(
                "{:?} id={:?} entity={} event={:?}/{:?} {:?}",
                s.key,
                s.id,
                s.entity,
                s.event_id(),
                s.event.map(|e| e.hash),
                samples
            )
        })
        .collect();
    (b.tenant().as_str().to_string(), series)
}

proptest! {
    #![proptest_config(config(256))]

    /// Records of one segment (sharing the writer's and the reader's dictionaries, tenants
    /// mixed) decode to exactly the batches encoded, NaN payloads and extreme times included.
    #[test]
    fn records_round_trip_over_a_segment(batches in proptest::collection::vec(gen_batch(), 1..5)) {
        let (mut wdict, mut rdict) = (SeriesDict::default(), SeriesDict::default());
        for g in &batches {
            let Some(b) = build(g) else { continue };
            let mut buf = Vec::new();
            b.encode_record(&mut wdict, &mut buf);
            let d = WriteBatch::decode_record(&buf, &mut rdict);
            prop_assert!(d.is_ok(), "{:?}", d.err());
            prop_assert_eq!(dump(&d.unwrap()), dump(&b));
        }
        prop_assert_eq!(wdict.len(), rdict.len());
    }

    /// Mutated records (truncated, flipped, spliced, with huge varints and lengths) decode to
    /// an error or a batch, with no allocation out of proportion to the record; what such a
    /// record decodes to is itself a batch that round-trips.
    #[test]
    fn mutated_records_are_errors_not_panics(
        batches in proptest::collection::vec(gen_batch(), 1..3),
        ms in mutations(),
        which in any::<proptest::sample::Index>(),
    ) {
        let mut wdict = SeriesDict::default();
        let mut records = Vec::new();
        for g in &batches {
            if let Some(b) = build(g) {
                let mut buf = Vec::new();
                b.encode_record(&mut wdict, &mut buf);
                records.push((b, buf));
            }
        }
        prop_assume!(!records.is_empty());
        let damaged = which.index(records.len());
        let mut rdict = SeriesDict::default();
        for (i, (b, buf)) in records.iter().enumerate() {
            if i != damaged {
                // Records after a damaged one may reference series it defined: only the
                // records before it are certain to decode.
                if i < damaged {
                    let d = WriteBatch::decode_record(buf, &mut rdict).unwrap();
                    prop_assert_eq!(dump(&d), dump(b));
                }
                continue;
            }
            let mut bad = buf.clone();
            mutate(&mut bad, &ms);
            let (r, largest) = largest_allocation(|| WriteBatch::decode_record(&bad, &mut rdict));
            prop_assert!(
                largest <= allocation_bound(bad.len(), 64 << 10),
                "{} bytes allocated at once for a record of {}", largest, bad.len()
            );
            if let Ok(d) = r {
                // A batch decoded from damaged bytes is still one that encodes and decodes.
                prop_assert!(d.samples_len() <= bad.len());
                let mut again = Vec::new();
                d.encode_record(&mut SeriesDict::default(), &mut again);
                let back = WriteBatch::decode_record(&again, &mut SeriesDict::default()).unwrap();
                prop_assert_eq!(dump(&back), dump(&d));
            }
        }
    }

    /// Bytes of no shape at all, and records that start right but continue randomly.
    #[test]
    fn random_records_are_errors_not_panics(bytes in random_bytes(300), head in any::<bool>()) {
        let mut input = if head { vec![2u8, 7, b'd', b'e', b'f', b'a', b'u', b'l', b't'] } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let (r, largest) = largest_allocation(|| WriteBatch::decode_record(&input, &mut SeriesDict::default()));
        prop_assert!(largest <= allocation_bound(input.len(), 64 << 10), "{}", largest);
        if let Ok(d) = r {
            prop_assert!(d.samples_len() <= input.len());
        }
    }
}

/// Declared counts and lengths far beyond the record are refused before anything is
/// allocated for them.
#[test]
fn huge_declared_counts_are_refused() {
    let b = build(&(
        "t".to_string(),
        vec![(vec![], None, vec![Sample::new(1, 1.0)])],
    ))
    .unwrap();
    let mut buf = Vec::new();
    b.encode_record(&mut SeriesDict::default(), &mut buf);
    // version, tenant "t", then the series count.
    assert_eq!(&buf[..3], &[2, 1, b't']);
    for huge in [1u64 << 62, u64::MAX, 1 << 32] {
        let mut bad = buf[..3].to_vec();
        fuzz_support::put_varint(&mut bad, huge);
        bad.extend_from_slice(&buf[4..]);
        let (r, largest) =
            largest_allocation(|| WriteBatch::decode_record(&bad, &mut SeriesDict::default()));
        assert!(r.is_err(), "series count {huge}");
        assert!(largest < 1 << 16, "{largest} bytes for series count {huge}");
    }
}
