//! Live-series caps against the real binary: a tenant's and the server's caps refuse new
//! series with an answer naming the cap, and series that went idle (flushed, outside the
//! lookback) leave the head and free their room.

mod common;
use common::{metric, now_ms, Server};

fn write(s: &Server, tenant: &str, body: String) -> (u16, serde_json::Value) {
    let r = s
        .client
        .post(s.url("/write?precision=ms"))
        .header("X-Scope-OrgID", tenant)
        .body(body)
        .send()
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(serde_json::Value::Null))
}

fn lines(metric: &str, ids: std::ops::Range<usize>, t: i64) -> String {
    ids.map(|i| format!("{metric},dev=d{i} value=1 {t}\n"))
        .collect()
}

#[test]
fn caps_name_the_limit_and_idle_series_free_their_room() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[limits]\nmax_series_per_tenant = 5\nmax_series_total = 8\n",
    );
    // An hour old: outside the lookback once flushed.
    let t = now_ms() - 3_600_000;
    let (code, v) = write(&s, "a", lines("m", 0..7, t));
    assert_eq!(code, 400, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("limits.max_series_per_tenant = 5"), "{v}");
    assert!(err.contains("2 new series refused"), "{v}");
    assert_eq!(v["accepted"], 5, "{v}");
    let (code, v) = write(&s, "b", lines("m", 0..4, t));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_series_total = 8"),
        "{v}"
    );
    assert_eq!(s.export_as("m", Some("b")).len(), 3);
    assert_eq!(metric(&s.metrics(), "strata_tsdb_series"), 8.0);

    // Flushed twice with nothing new in between: the series are in blocks only, and room is
    // free again; their data still answers.
    s.flush();
    s.flush();
    assert_eq!(metric(&s.metrics(), "strata_tsdb_series"), 0.0);
    let (code, v) = write(&s, "a", lines("n", 0..5, t));
    assert_eq!(code, 204, "{v}");
    assert_eq!(s.export_as("m", Some("a")).len(), 5);
    assert_eq!(s.export_as("n", Some("a")).len(), 5);
    // Reading the blocks parsed their indexes into the cache.
    assert!(metric(&s.metrics(), "strata_tsdb_index_cache_bytes") > 0.0);
    s.stop();
}

/// Periodic flushes run beside the writes (the raw tier's on a thread of their own) and lose
/// nothing: every acknowledged sample is there, once, after a SIGKILL and a restart.
#[test]
fn background_flushes_beside_writes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "partitions = 2\n[storage]\nflush_interval = \"1s\"\n";
    let s = Server::start(dir.path(), cfg);
    let base = now_ms() - 3_600_000;
    let started = std::time::Instant::now();
    let mut acked = Vec::new();
    let mut i = 0i64;
    while started.elapsed() < std::time::Duration::from_secs(4) {
        let ts: Vec<i64> = (0..200).map(|k| base + i * 200 + k).collect();
        let body: String = ts
            .iter()
            .map(|t| format!("bg,dev=d{} value={t} {t}\n", t % 50))
            .collect();
        let (code, v) = write(&s, "default", body);
        assert_eq!(code, 204, "{v}");
        acked.extend(ts);
        i += 1;
    }
    assert!(metric(&s.metrics(), "strata_flushes_total") >= 2.0);
    s.kill9();
    let s = Server::start(dir.path(), cfg);
    let mut got: Vec<i64> = s
        .export("bg")
        .into_iter()
        .flat_map(|(_, samples)| samples.into_iter().map(|(t, _)| t))
        .collect();
    got.sort_unstable();
    assert_eq!(got, acked, "every acknowledged sample, once");
    s.stop();
}
