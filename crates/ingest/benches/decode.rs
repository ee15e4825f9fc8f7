use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_ingest::{influx, remote_write, DecodeContext};
use strata_model::{Limits, Sample, Tenant, WriteBatch};

const SERIES: usize = 5000;
const METRICS: [&str; 4] = [
    "temperature_celsius",
    "humidity_percent",
    "power_watts",
    "packets_total",
];

fn labels(i: usize) -> Vec<(&'static str, String)> {
    let dev = i / 4;
    vec![
        ("__name__", METRICS[i % 4].to_string()),
        ("device", format!("dev-{dev:05}")),
        ("region", format!("r{}", dev / 100 % 4)),
        ("site", format!("site-{:03}", dev / 100)),
        ("type", "sensor".to_string()),
    ]
}

fn bodies(t: i64) -> (Vec<u8>, Vec<u8>) {
    let mut lp = String::new();
    let all: Vec<Vec<(&str, String)>> = (0..SERIES).map(labels).collect();
    let pairs: Vec<Vec<(&str, &str)>> = all
        .iter()
        .map(|l| l.iter().map(|(k, v)| (*k, v.as_str())).collect())
        .collect();
    let samples: Vec<[Sample; 1]> = (0..SERIES)
        .map(|i| [Sample::new(t, 20.0 + i as f64 / 10.0)])
        .collect();
    let rows: Vec<remote_write::SeriesToEncode<'_>> = pairs
        .iter()
        .zip(&samples)
        .map(|(l, s)| (l.as_slice(), s.as_slice()))
        .collect();
    for (i, l) in all.iter().enumerate() {
        let tags: String = l[1..].iter().map(|(k, v)| format!(",{k}={v}")).collect();
        lp.push_str(&format!(
            "{}{} value={} {}\n",
            l[0].1,
            tags,
            20.0 + i as f64 / 10.0,
            t * 1_000_000
        ));
    }
    (remote_write::encode(&rows), lp.into_bytes())
}

fn decode(c: &mut Criterion) {
    let now = strata_model::time::now_ms();
    let (rw, lp) = bodies(now);
    let limits = Limits::default();
    let ctx = DecodeContext {
        limits: &limits,
        now_ms: now,
        max_decompressed_bytes: 64 << 20,
    };
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(SERIES as u64));
    let mut batch = WriteBatch::new(Tenant::default());
    g.bench_function("remote_write_5000_series", |b| {
        b.iter(|| {
            batch.clear();
            remote_write::decode(&rw, &ctx, &mut batch).unwrap()
        })
    });
    g.bench_function("influx_5000_lines", |b| {
        b.iter(|| {
            batch.clear();
            influx::decode(&lp, influx::Precision::Ns, &ctx, &mut batch).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
