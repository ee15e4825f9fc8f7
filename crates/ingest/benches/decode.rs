use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_ingest::{influx, remote_write, DecodeContext};
use strata_model::{Limits, Tenant, WriteBatch};

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

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(buf, ((field << 3) | 2) as u64);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn bodies(t: i64) -> (Vec<u8>, Vec<u8>) {
    let mut rw = Vec::new();
    let mut lp = String::new();
    for i in 0..SERIES {
        let l = labels(i);
        let mut ts = Vec::new();
        for (k, v) in &l {
            let mut lab = Vec::new();
            len_field(&mut lab, 1, k.as_bytes());
            len_field(&mut lab, 2, v.as_bytes());
            len_field(&mut ts, 1, &lab);
        }
        let mut s = vec![0x09];
        s.extend_from_slice(&(20.0 + i as f64 / 10.0).to_le_bytes());
        s.push(0x10);
        varint(&mut s, t as u64);
        len_field(&mut ts, 2, &s);
        len_field(&mut rw, 1, &ts);
        let tags: String = l[1..].iter().map(|(k, v)| format!(",{k}={v}")).collect();
        lp.push_str(&format!(
            "{}{} value={} {}\n",
            l[0].1,
            tags,
            20.0 + i as f64 / 10.0,
            t * 1_000_000
        ));
    }
    (
        snap::raw::Encoder::new().compress_vec(&rw).unwrap(),
        lp.into_bytes(),
    )
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
