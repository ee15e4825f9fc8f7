use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_log::{LocalLog, Log, LogOptions};

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalLog::open(dir.path(), 1, LogOptions::default()).unwrap();
    let mut w = log.writer(0).unwrap();
    let rec = vec![7u8; 4096];
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Bytes(64 * 4096));
    g.bench_function("append_64x4KiB_then_fsync", |b| {
        b.iter(|| {
            for _ in 0..64 {
                w.append(&rec).unwrap();
            }
            w.sync().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
