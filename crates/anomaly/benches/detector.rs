//! Cost of scoring one window with a detector in its steady state (full history), without and
//! with a period: `cargo bench -p strata-anomaly --bench detector`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_anomaly::{Detector, Options};

fn values(n: usize, period: Option<f64>) -> Vec<f64> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let season =
                period.map_or(0.0, |p| 20.0 * (i as f64 * std::f64::consts::TAU / p).sin());
            50.0 + season + (x % 1000) as f64 / 100.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("detector");
    const STEPS: usize = 1440;
    g.throughput(Throughput::Elements(STEPS as u64));
    for (name, period) in [("no_period", None), ("period_120", Some(120.0))] {
        let v = values(20_000, period);
        let mut warm = Detector::new(Options::default());
        for (i, &x) in v[..10_000].iter().enumerate() {
            warm.observe(i as i64, x);
        }
        g.bench_function(format!("observe_day_{name}"), |b| {
            b.iter_batched(
                || warm.clone(),
                |mut d| {
                    for (i, &x) in v[10_000..10_000 + STEPS].iter().enumerate() {
                        std::hint::black_box(d.observe(10_000 + i as i64, x));
                    }
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
