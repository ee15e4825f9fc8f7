//! Writing sample values as the query API does (`write_float`), beside `Display`, the
//! reference it matches: readings (short decimals), averages (16 and 17 digits), counters.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::fmt::Write;
use strata_promql::write_value as write_float;

fn values() -> Vec<(&'static str, Vec<f64>)> {
    let n = 10_000;
    let readings = (0..n).map(|i| 20.0 + (i % 400) as f64 / 10.0).collect();
    let averages = (0..n)
        .map(|i| (2000.0 + (i * 37 % 9000) as f64 / 10.0) / ((i % 287) + 1) as f64)
        .collect();
    let counters = (0..n).map(|i| (i as f64) * 1234.5 + 1e9).collect();
    vec![
        ("readings", readings),
        ("averages", averages),
        ("counters", counters),
    ]
}

fn format(c: &mut Criterion) {
    let mut g = c.benchmark_group("format");
    for (name, vs) in values() {
        g.throughput(Throughput::Elements(vs.len() as u64));
        let mut out = String::with_capacity(vs.len() * 24);
        g.bench_function(format!("write_float/{name}"), |b| {
            b.iter(|| {
                out.clear();
                for &v in &vs {
                    write_float(&mut out, black_box(v));
                }
            })
        });
        g.bench_function(format!("display/{name}"), |b| {
            b.iter(|| {
                out.clear();
                for &v in &vs {
                    let _ = write!(out, "{}", black_box(v));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, format);
criterion_main!(benches);
