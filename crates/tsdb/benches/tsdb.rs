use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_model::{Limits, Sample, Tenant, WriteBatch};
use strata_tsdb::{codec, SeriesLimiter, Tsdb, TsdbOptions};

fn walk(n: usize) -> Vec<Sample> {
    let mut v = 20.0f64;
    (0..n)
        .map(|i| {
            v = ((v + ((i * 7919 % 5) as f64 - 2.0) * 0.1) * 10.0).round() / 10.0;
            Sample::new(1_700_000_000_000 + i as i64 * 15_000, v)
        })
        .collect()
}

/// A noisy sensor: a random walk in tenths, which pco keeps (in pages).
fn noisy(n: usize) -> Vec<Sample> {
    let (mut v, mut x) = (20.0f64, 0x2545_F491_4F6C_DD1Du64);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v = ((v + ((x % 41) as f64 - 20.0) * 0.1) * 10.0).round() / 10.0;
            Sample::new(1_700_000_000_000 + i as i64 * 15_000, v)
        })
        .collect()
}

fn codec_bench(c: &mut Criterion) {
    let s = walk(5760);
    let enc = codec::encode(&s, true);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(s.len() as u64));
    g.bench_function("encode_zstd_5760", |b| b.iter(|| codec::encode(&s, true)));
    g.bench_function("encode_raw_5760", |b| b.iter(|| codec::encode(&s, false)));
    g.bench_function("decode_zstd_5760", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(5760);
            codec::decode(&enc, &mut out).unwrap();
            out
        })
    });
    let pco = codec::encode(&noisy(5760), true);
    g.bench_function("decode_pco_paged_5760", |b| {
        let mut out = Vec::with_capacity(5760);
        b.iter(|| {
            out.clear();
            codec::decode(&pco, &mut out).unwrap();
            out.len()
        })
    });
    g.finish();
}

/// An empty storage in a temporary directory, and a fleet of 5,000 series keys
/// (metric, device).
fn fleet() -> (tempfile::TempDir, Tsdb, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(
        dir.path(),
        TsdbOptions::default(),
        SeriesLimiter::new(1_000_000),
    )
    .unwrap();
    let keys = (0..5000)
        .map(|i| (format!("m{}", i % 8), format!("dev-{:05}", i / 8)))
        .collect();
    (dir, db, keys)
}

/// One sample, `(t, value)`, for every series of `keys`.
fn fleet_batch(keys: &[(String, String)], t: i64, value: f64) -> WriteBatch {
    let limits = Limits::default();
    let mut batch = WriteBatch::new(Tenant::default());
    for (m, d) in keys {
        let mut l: Vec<(&[u8], &[u8])> =
            vec![(b"__name__", m.as_bytes()), (b"device", d.as_bytes())];
        batch
            .push_series(&mut l, &[Sample::new(t, value)], None, &limits)
            .unwrap();
    }
    batch
}

fn head_append(c: &mut Criterion) {
    let (_dir, db, keys) = fleet();
    let mut t = strata_model::time::now_ms() - 86_400_000;
    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("append_5000_series_x1", |b| {
        b.iter(|| {
            t += 15_000;
            db.append(&fleet_batch(&keys, t, 21.5), 0)
        })
    });
    g.finish();
}

/// Late samples into open buffers of 200 samples written out of order (as deliveries over
/// concurrent connections arrive): each is a repeat of a buffered sample, at a different place
/// in the buffer each time, so the cost is the duplicate check's lookup.
fn head_append_late(c: &mut Criterion) {
    let (_dir, db, keys) = fleet();
    let base = strata_model::time::now_ms() - 86_400_000;
    let batch_at = |k: i64| fleet_batch(&keys, base + k * 15_000, k as f64 * 0.5);
    // Pairs of steps, the later one first.
    for k in (0..200).step_by(2) {
        db.append(&batch_at(k + 1), 0);
        db.append(&batch_at(k), 0);
    }
    let batches: Vec<WriteBatch> = (0..200).map(|k| batch_at((k * 37) % 200)).collect();
    let mut i = 0;
    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("append_late_5000_series_x1", |b| {
        b.iter(|| {
            i = (i + 1) % batches.len();
            db.append(&batches[i], 0)
        })
    });
    g.finish();
}

/// Reads from flushed blocks: every read goes through the block reader (index lookups, chunk
/// metadata, decoding), the head being empty.
fn block_read(c: &mut Criterion) {
    use strata_model::{Fields, Matcher, MetadataHints, SelectHints, Storage};
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(
        dir.path(),
        TsdbOptions::default(),
        SeriesLimiter::new(1_000_000),
    )
    .unwrap();
    let limits = Limits::default();
    let start = (strata_model::time::now_ms() - 6 * 3_600_000) / 3_600_000 * 3_600_000;
    for step in 0..240 {
        let mut batch = WriteBatch::new(Tenant::default());
        for i in 0..2000 {
            let (m, d) = (format!("m{}", i % 8), format!("dev-{:05}", i / 8));
            let mut l: Vec<(&[u8], &[u8])> =
                vec![(b"__name__", m.as_bytes()), (b"device", d.as_bytes())];
            let v = (i + step) as f64 * 0.5;
            batch
                .push_series(
                    &mut l,
                    &[Sample::new(start + step * 15_000, v)],
                    None,
                    &limits,
                )
                .unwrap();
        }
        db.append(&batch, step as u64);
    }
    db.flush().unwrap();
    let tenant = Tenant::default();
    let one_metric = [Matcher::equal("__name__", "m1")];
    let hints = SelectHints {
        start,
        end: start + 3_600_000,
        max_samples: None,
        fields: Fields::All,
    };
    let mut g = c.benchmark_group("blocks");
    g.throughput(Throughput::Elements(250 * 240));
    g.bench_function("select_250_series_x240", |b| {
        b.iter(|| db.select(&tenant, &one_metric, &hints).unwrap())
    });
    let range = MetadataHints {
        start: start + 60_000,
        end: start + 120_000,
        limit: None,
    };
    g.throughput(Throughput::Elements(2000));
    g.bench_function("label_values_2000_series", |b| {
        b.iter(|| db.label_values(&tenant, "device", &[], &range).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    codec_bench,
    head_append,
    head_append_late,
    block_read
);
criterion_main!(benches);
