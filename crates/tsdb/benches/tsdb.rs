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

fn head_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(
        dir.path(),
        TsdbOptions::default(),
        SeriesLimiter::new(1_000_000),
    )
    .unwrap();
    let limits = Limits::default();
    let now = strata_model::time::now_ms();
    let keys: Vec<(String, String)> = (0..5000)
        .map(|i| (format!("m{}", i % 8), format!("dev-{:05}", i / 8)))
        .collect();
    let mut t = now - 86_400_000;
    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("append_5000_series_x1", |b| {
        b.iter(|| {
            t += 15_000;
            let mut batch = WriteBatch::new(Tenant::default());
            for (m, d) in &keys {
                let mut l: Vec<(&[u8], &[u8])> =
                    vec![(b"__name__", m.as_bytes()), (b"device", d.as_bytes())];
                batch
                    .push_series(&mut l, &[Sample::new(t, 21.5)], None, &limits)
                    .unwrap();
            }
            db.append(&batch, 0)
        })
    });
    g.finish();
}

criterion_group!(benches, codec_bench, head_append);
criterion_main!(benches);
