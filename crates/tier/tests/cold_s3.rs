//! The cold tier against a real S3-compatible server: moto's (`pip install "moto[server]"`),
//! started on a free loopback port by the test. Endpoint and credentials reach the store through
//! the usual `AWS_*` environment variables, as they would in production. Skips, saying so, when
//! `moto_server` is not installed.
//!
//! One test in this binary: it sets process environment variables.

mod common;

use common::*;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use strata_model::{Matcher, Tenant};
use strata_tier::cold::{ColdOptions, ColdStore, Tier};

/// Kills the server this test started when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto on a free port and waits until it accepts connections; `None` when the program
/// is missing.
fn start_moto() -> Option<(Server, u16)> {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("moto_server did not start: {e}"),
    };
    let mut server = Server(child);
    // Readiness, not timing: poll for the listener, bounded, failing if the server died.
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("moto_server exited with {status} before listening");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("moto_server did not listen on port {port} within 30 s");
}

/// Creates a bucket with a plain S3 `PUT /bucket` (moto does not check signatures);
/// object_store has no bucket API.
fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Data objects under the cold prefix, as S3 lists them.
fn data_objects(rt: &tokio::runtime::Runtime, store: &dyn ObjectStore) -> Vec<String> {
    let listed: Vec<_> = rt
        .block_on(
            store
                .list(Some(&Path::from("cold")))
                .try_collect::<Vec<_>>(),
        )
        .unwrap();
    let mut v: Vec<String> = listed
        .into_iter()
        .map(|o| o.location.to_string())
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    v.sort();
    v
}

#[test]
fn cold_tier_on_s3() {
    let Some((_server, port)) = start_moto() else {
        println!("SKIPPED cold_tier_on_s3: moto_server not found (pip install \"moto[server]\")");
        return;
    };
    create_bucket(port, "strata");
    let endpoint = format!("http://127.0.0.1:{port}");
    // The one test of this binary: no other thread reads the environment meanwhile.
    for (k, v) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_SESSION_TOKEN");

    let url = "s3://strata/cold";
    let acme = Tenant::new("acme").unwrap();
    let store = ColdStore::open(url, ColdOptions::default()).unwrap();
    let written = fleet(6, 30, 0);
    let s = store.write_windows(&acme, Tier::Hour, &written).unwrap();
    assert_eq!((s.files, s.rows), (2, 180));
    for chunk in written.chunks(2) {
        // Revision 1 of the first hour of every series, two series a write: small files.
        let mut fix = chunk.to_vec();
        for s in &mut fix {
            s.windows = vec![window(T0, -5.0, 1)];
        }
        store.write_windows(&acme, Tier::Hour, &fix).unwrap();
    }
    store.write_raw(&acme, &raw(2, 2)).unwrap();

    let m = [Matcher::equal("site", "site-1")];
    let got = store
        .scan_windows(&acme, Tier::Hour, &m, i64::MIN, i64::MAX)
        .unwrap();
    let mut expected: Vec<_> = written
        .iter()
        .filter(|s| s.labels.get("site") == Some("site-1"))
        .cloned()
        .collect();
    for s in &mut expected {
        s.windows[0] = window(T0, -5.0, 1);
    }
    expected.sort_by(|a, b| a.labels.cmp(&b.labels));
    assert_eq!(got, expected);
    let raw_back = store.scan_raw(&acme, &[], T0, T0 + 2 * HOUR).unwrap();
    assert_eq!(raw_back, raw(2, 2));

    // The same bucket through object_store directly, as another reader would see it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name("strata")
        .with_allow_http(true)
        .build()
        .unwrap();
    assert_eq!(data_objects(&rt, &s3).len(), 2 + 3 + 1);

    let c = store.compact().unwrap();
    assert_eq!((c.partitions, c.files_in, c.files_out), (1, 4, 1));
    assert_eq!(c.rows_out, 24 * 6);
    let after = data_objects(&rt, &s3);
    assert_eq!(after.len(), 3, "{after:?}");
    let got = store
        .scan_windows(&acme, Tier::Hour, &m, i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(got, expected);

    // A crash after an upload and before the manifest: an object no manifest lists.
    drop(store);
    let copy = rt
        .block_on(async { s3.get(&Path::from(after[0].as_str())).await?.bytes().await })
        .unwrap();
    let orphan =
        Path::from("cold/tenant=acme/tier=1h/day=2026-01-01/part-0000009999-00000000.parquet");
    rt.block_on(s3.put(&orphan, PutPayload::from_bytes(copy)))
        .unwrap();
    assert_eq!(data_objects(&rt, &s3).len(), 4);
    let store = ColdStore::open(url, ColdOptions::default()).unwrap();
    assert_eq!(store.metrics().leftovers_removed, 1);
    assert_eq!(data_objects(&rt, &s3), after);
    let got = store
        .scan_windows(&acme, Tier::Hour, &m, i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(got, expected);
    assert_eq!(store.metrics().errors, 0);

    // An endpoint nothing listens on: opening fails (retries bounded), naming the object.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let opts = ColdOptions {
        store_options: vec![("aws_endpoint".into(), closed)],
        ..ColdOptions::default()
    };
    let Err(err) = ColdStore::open("s3://strata/unreachable", opts) else {
        panic!("opened a store nothing serves");
    };
    assert!(
        err.to_string()
            .contains("unreachable/_strata/manifest.json"),
        "{err}"
    );
}
