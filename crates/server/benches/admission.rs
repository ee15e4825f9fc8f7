//! What the device registry adds to the events write path: decoding a request of JSON device
//! events alone, and decoding it then admitting it through a registry that enriches every
//! series with five labels (the cost `bench/devices.sh` measures end to end).
//!
//!   cargo bench -p strata-server --bench admission

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_ingest::{events, DecodeContext};
use strata_meta::registry::Device;
use strata_meta::MetaStore;
use strata_model::{Limits, Tenant, WriteBatch};
use strata_server::registry::{Policy, Registry};

const DEVICES: usize = 500;
const EVENTS: usize = 2000;

fn body(t: i64) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..EVENTS {
        let d = i % DEVICES;
        let site = d / 20;
        out.push_str(&format!(
            r#"{{"device_id":"dev-{d:05}","event_id":"e{i}","timestamp":{},"readings":{{"temperature":{},"humidity":41.5,"pressure":1013.2,"battery":88,"rssi":-67,"power":{}}},"labels":{{"site":"site-{site:02}","region":"r{}","type":"sensor"}}}}"#,
            t + (i / DEVICES) as i64 * 10_000,
            20.0 + d as f64 / 10.0,
            100 + d,
            site % 3
        ));
        out.push('\n');
    }
    out.into_bytes()
}

fn registry(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> std::sync::Arc<Registry> {
    rt.block_on(async {
        let meta = MetaStore::open(&dir.join("meta.db")).await.unwrap();
        let fleet: Vec<Device> = (0..DEVICES)
            .map(|i| {
                let site = i / 20;
                serde_json::from_value(serde_json::json!({
                    "id": format!("dev-{i:05}"), "site": format!("site-{site:02}"),
                    "region": format!("r{}", site % 3), "type": "sensor",
                    "model": format!("M-{}", i % 3), "firmware": format!("1.{}", i % 4),
                }))
                .unwrap()
            })
            .collect();
        meta.import_devices("default", &fleet, 0).await.unwrap();
        let enrich = ["site", "region", "type", "model", "firmware"].map(String::from);
        let r = Registry::open(meta, enrich.to_vec(), Policy::Accept)
            .await
            .unwrap();
        r.reload().await.unwrap();
        r
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(&rt, dir.path());
    let limits = Limits::default();
    let now = 1_800_000_000_000;
    let body = body(now - 3_600_000);
    let ctx = DecodeContext {
        limits: &limits,
        now_ms: now,
        max_decompressed_bytes: 64 << 20,
    };
    let decode = || {
        let mut batch = WriteBatch::new(Tenant::default_tenant());
        events::decode(&body, &ctx, &mut batch).unwrap();
        batch
    };
    // Every series gains the registry's model and firmware.
    let admitted = registry.admit(decode(), &limits);
    assert_eq!(admitted.batch.series_len(), EVENTS * 6);
    assert!(admitted
        .batch
        .get(0)
        .unwrap()
        .key
        .get(b"firmware")
        .is_some());

    let mut g = c.benchmark_group("events");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("decode", |b| b.iter(|| decode().series_len()));
    g.bench_function("decode_enrich", |b| {
        b.iter(|| registry.admit(decode(), &limits).batch.series_len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
