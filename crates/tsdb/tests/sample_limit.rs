//! `max_samples` is enforced from chunk headers, before decoding: a series larger than the
//! limit is refused by the eager and the lazy reads without its samples being decoded. One
//! test in its own binary, because the decoded-sample counter is process-wide.

use strata_model::{
    Fields, Limits, Matcher, Sample, SelectHints, Storage, StorageError, Tenant, WriteBatch,
};
use strata_tsdb::codec::decoded_samples_total;
use strata_tsdb::{SeriesLimiter, Tsdb, TsdbOptions};

#[test]
fn a_series_past_max_samples_is_refused_from_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TsdbOptions::default();
    let db = Tsdb::open(
        dir.path(),
        opts.clone(),
        SeriesLimiter::new(opts.max_series_per_metric),
    )
    .unwrap();
    let tenant = Tenant::default();
    // 200,000 samples a second apart (about 2.3 days, over several blocks), written in batches.
    let t0 = strata_model::time::now_ms() - 3 * 86_400_000;
    let n = 200_000i64;
    for (offset, from) in (0..n).step_by(20_000).enumerate() {
        let mut b = WriteBatch::new(tenant.clone());
        let samples: Vec<Sample> = (from..from + 20_000)
            .map(|i| Sample::new(t0 + i * 1000, i as f64))
            .collect();
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"big")];
        b.push_series(&mut l, &samples, None, &Limits::default())
            .unwrap();
        db.append(&b, offset as u64);
    }
    db.flush().unwrap();
    let m = [Matcher::equal("__name__", "big")];
    let hints = |max_samples, start, end| SelectHints {
        start,
        end,
        max_samples,
        fields: Fields::All,
    };
    let (start, end) = (t0, t0 + n * 1000);

    let before = decoded_samples_total();
    let e = db
        .select(&tenant, &m, &hints(Some(1000), start, end))
        .unwrap_err();
    assert!(
        matches!(e, StorageError::TooManySamples { limit: 1000 }),
        "{e}"
    );
    let lazy = db
        .select_lazy(&tenant, &m, &hints(Some(1000), start, end))
        .unwrap();
    assert_eq!(lazy.len(), 1);
    let mut out = Vec::new();
    let e = lazy[0].read(&mut out).unwrap_err();
    assert!(
        matches!(e, StorageError::TooManySamples { limit: 1000 }),
        "{e}"
    );
    assert!(out.is_empty());
    assert_eq!(
        decoded_samples_total(),
        before,
        "refused from chunk headers, nothing decoded"
    );

    // A range cutting through chunks of evenly spaced samples: their headers give the exact
    // count in the range, so this too is refused without decoding.
    let before = decoded_samples_total();
    let e = db
        .select(&tenant, &m, &hints(Some(1000), start + 500, end - 500))
        .unwrap_err();
    assert!(
        matches!(e, StorageError::TooManySamples { limit: 1000 }),
        "{e}"
    );
    assert_eq!(decoded_samples_total(), before, "counted from headers");
    // Irregular samples, a range inside one chunk: the chunk is decoded to be counted, and
    // decoding stops there, well short of the whole series.
    let mut b = WriteBatch::new(tenant.clone());
    let jagged: Vec<Sample> = (0..n)
        .map(|i| Sample::new(t0 + i * 1000 + (i * i) % 7, i as f64))
        .collect();
    let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"jagged")];
    b.push_series(&mut l, &jagged, None, &Limits::default())
        .unwrap();
    db.append(&b, 100);
    db.flush().unwrap();
    let before = decoded_samples_total();
    let e = db
        .select(
            &tenant,
            &[Matcher::equal("__name__", "jagged")],
            &hints(Some(1000), t0 + 500, t0 + 3_000_000),
        )
        .unwrap_err();
    assert!(
        matches!(e, StorageError::TooManySamples { limit: 1000 }),
        "{e}"
    );
    let decoded = decoded_samples_total() - before;
    assert!(
        decoded > 0,
        "a chunk cut by the range must be decoded to be counted"
    );
    assert!(decoded < n as u64 / 2, "decoded {decoded} of {n}");

    // Within the limit the series reads whole, and the limit counts samples in the range
    // (not whole chunks): a narrow range of a big series passes a small limit.
    let before = decoded_samples_total();
    let all = db
        .select(&tenant, &m, &hints(Some(n as usize), start, end))
        .unwrap();
    assert_eq!(all[0].samples.len(), n as usize);
    assert_eq!(
        decoded_samples_total() - before,
        n as u64,
        "the series is in blocks, so the counter sees its reads"
    );
    let narrow = db
        .select(&tenant, &m, &hints(Some(10), t0 + 5000, t0 + 9000))
        .unwrap();
    assert_eq!(narrow[0].samples.len(), 5);
    let lazy = db
        .select_lazy(&tenant, &m, &hints(Some(10), t0 + 5000, t0 + 9000))
        .unwrap();
    out.clear();
    lazy[0].read(&mut out).unwrap();
    assert_eq!(out.len(), 5);
}
