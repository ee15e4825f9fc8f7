//! The rollup stage per core: samples through [`Windows::observe_at`] and the windows they fill
//! closed by [`Windows::advance`], as a shard does it (one sample per series per event, each
//! series found through the slot the raw tier keeps for it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_model::{Labels, Sample, SeriesId, SeriesKey, Tenant};
use strata_stream::rollup::Rollup;
use strata_stream::window::{WindowOptions, Windows};
use strata_tsdb::ObserverSlot;

const SERIES: usize = 2_000;
const MINUTES: i64 = 10;
const EVERY_MS: i64 = 5_000;

fn series() -> Vec<(SeriesId, SeriesKey)> {
    let t = Tenant::default_tenant();
    (0..SERIES)
        .map(|i| {
            let k = Labels::from_pairs([
                ("__name__", "temperature_celsius".to_string()),
                ("device", format!("dev-{i:05}")),
                ("site", format!("site-{:02}", i % 20)),
            ])
            .unwrap()
            .key();
            (SeriesId::of(&t, k.as_ref()), k)
        })
        .collect()
}

fn stage(c: &mut Criterion) {
    let t = Tenant::default_tenant();
    let keys = series();
    let steps = MINUTES * 60_000 / EVERY_MS;
    let mut g = c.benchmark_group("rollup_stage");
    g.throughput(Throughput::Elements(SERIES as u64 * steps as u64));
    g.sample_size(10);
    for sketch in [false, true] {
        let name = if sketch {
            "observe_and_close_with_quantiles"
        } else {
            "observe_and_close"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let opts = WindowOptions {
                    quantile_metrics: if sketch {
                        vec!["temperature_celsius".into()]
                    } else {
                        Vec::new()
                    },
                    ..WindowOptions::default()
                };
                let mut w = Windows::new(opts);
                let mut slots = vec![ObserverSlot::EMPTY; keys.len()];
                let mut closed = 0usize;
                for step in 0..steps {
                    let ts = 1_700_000_000_000 + step * EVERY_MS;
                    for (i, (id, k)) in keys.iter().enumerate() {
                        let s = [Sample::new(ts + i as i64, 20.0 + (step % 7) as f64 * 0.1)];
                        w.observe_at(&mut slots[i], &t, *id, k.as_ref(), &s);
                    }
                    w.advance(None, |_| closed += 1);
                }
                closed
            })
        });
    }
    g.finish();
    let samples: Vec<Sample> = (0..12)
        .map(|i| Sample::new(i * EVERY_MS, 20.0 + i as f64 * 0.1))
        .collect();
    c.bench_function("rollup_of_12_samples", |b| {
        b.iter(|| Rollup::of_sorted(&samples, false))
    });
}

criterion_group!(benches, stage);
criterion_main!(benches);
