//! Hostile and careless queries against the real binary: each is answered with a 4xx or 503
//! naming the limit it ran into, the server stays alive with `/health` answering throughout,
//! its peak memory stays under a stated ceiling, a query whose client went away stops, the
//! concurrency limit answers 503, and SIGTERM stops running queries and exits.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Peak resident memory the server may reach in these tests: `max_samples` is 2 million
/// (32 MB of points), so a query that allocated beyond its limit would show.
const PEAK_RSS_CEILING_KB: u64 = 600 << 10;

const CONFIG: &str = "[query]\nmax_samples = 2000000\ntimeout = \"30s\"\n";

fn write(s: &Server, series: &[SeriesRows<'_>]) {
    let r = s
        .client
        .post(s.url("/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(remote_write_body(series))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().unwrap());
}

/// 50 series `load{instance=...}`, one sample every 15 s over the last hour.
fn load_series(s: &Server) {
    let end = now_ms() - 1000;
    let names: Vec<String> = (0..50)
        .map(|i| format!("host-{i:02}.example.org"))
        .collect();
    let series: Vec<SeriesRows<'_>> = names
        .iter()
        .map(|n| {
            let points = (0..240)
                .map(|i| (end - 3_600_000 + i * 15_000, (i % 7) as f64))
                .collect();
            (vec![("__name__", "load"), ("instance", n.as_str())], points)
        })
        .collect();
    write(s, &series);
}

fn post(s: &Server, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let r = s.client.post(s.url(path)).form(params).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status, v)
}

/// `/health` answers, quickly (a liveness bound).
fn assert_alive(s: &Server) {
    let t = Instant::now();
    let r = s
        .client
        .get(s.url("/health"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(
        r.is_ok_and(|r| r.status().is_success()),
        "/health did not answer"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn peak_rss_kb(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn hostile_queries_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    load_series(&s);
    let secs = format!("{}", now_ms() / 1000);
    let t = secs.as_str();
    let deep_sum = format!("{}load{}", "sum(".repeat(5000), ")".repeat(5000));
    let chain_1702 = vec!["1"; 1702].join("+");
    let chain_3600 = vec!["load"; 3600].join(" + ");
    let megabyte = format!("load{{instance=\"{}\"}}", "x".repeat(1 << 20));
    let labels = format!(
        "label_replace(load, \"big\", \"{}\", \"instance\", \"(.*)\")",
        "$1".repeat(50_000)
    );
    // Query, endpoint, status, errorType, what the message must name.
    let mut cases: Vec<(&str, &str, u16, &str, &str)> = vec![
        (
            "count_over_time(vector(1)[1y:1ms])",
            "/api/v1/query",
            422,
            "execution",
            "query.max_samples",
        ),
        (
            "count_over_time(vector(1)[3d:1ms])",
            "/api/v1/query",
            422,
            "execution",
            "query.max_samples",
        ),
        (
            "max_over_time(load[5y:1ms])",
            "/api/v1/query",
            422,
            "execution",
            "query.max_samples",
        ),
        (
            "max_over_time(rate(load[5m])[12h:10ms])",
            "/api/v1/query",
            422,
            "execution",
            "query.max_samples",
        ),
        (
            &labels,
            "/api/v1/query",
            422,
            "execution",
            "limits.max_label_value_len",
        ),
        (
            &deep_sum,
            "/api/v1/format_query",
            400,
            "bad_data",
            "query.max_depth",
        ),
        (
            &deep_sum,
            "/api/v1/query",
            400,
            "bad_data",
            "query.max_depth",
        ),
        (
            &chain_1702,
            "/api/v1/query",
            400,
            "bad_data",
            "query.max_depth",
        ),
        (
            &chain_3600,
            "/api/v1/format_query",
            400,
            "bad_data",
            "query.max_depth",
        ),
        (
            &megabyte,
            "/api/v1/query",
            400,
            "bad_data",
            "query.max_query_length",
        ),
    ];
    // Durations out of Prometheus's range panicked the parser (a 500 from /api/v1/query, a
    // dropped connection from /api/v1/format_query).
    for q in [
        "load offset NaN",
        "load offset -Inf",
        "load offset 1e20",
        "load[1e20]",
        "max_over_time(load[5m:1e20])",
    ] {
        for path in ["/api/v1/query", "/api/v1/format_query"] {
            cases.push((q, path, 400, "bad_data", "duration out of range"));
        }
    }
    for (q, path, status, kind, names) in cases {
        let started = Instant::now();
        let (st, v) = post(&s, path, &[("query", q), ("time", t)]);
        let short = &q[..q.len().min(60)];
        assert_eq!(st, status, "{short}: {v}");
        assert_eq!(v["errorType"], kind, "{short}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(names), "{short}: {msg}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{short} took {:?}",
            started.elapsed()
        );
        assert_alive(&s);
    }
    // Times near the ends of i64: refused or answered, never a crash.
    for (start, end, step) in [
        ("-9223372036854775", "9223372036854775", "9223372036854775"),
        ("9223372036854775", "9223372036854775", "1"),
    ] {
        let r = s
            .client
            .post(s.url("/api/v1/query_range"))
            .form(&[
                ("query", "max_over_time(load[1m:1m] offset -1y)"),
                ("start", start),
                ("end", end),
                ("step", step),
            ])
            .send()
            .unwrap();
        assert!(r.status().as_u16() < 500, "{}", r.status());
        assert_alive(&s);
    }
    // Within the limits, the same server answers.
    let (st, v) = post(
        &s,
        "/api/v1/query",
        &[("query", "count(load)"), ("time", t)],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "50");
    // Prometheus's annotations reach the answer, as Grafana reads them.
    let now = now_ms() / 1000;
    let (start, end) = (format!("{}", now - 600), format!("{now}"));
    let (st, v) = post(
        &s,
        "/api/v1/query_range",
        &[
            ("query", "sort(load)"),
            ("start", &start),
            ("end", &end),
            ("step", "60"),
        ],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["warnings"][0],
        "PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:1)"
    );
    let (st, v) = post(
        &s,
        "/api/v1/query",
        &[("query", "sum(rate(load[5m]))"), ("time", t)],
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["infos"][0]
            .as_str()
            .unwrap()
            .starts_with("PromQL info: metric might not be a counter"),
        "{v}"
    );
    let peak = peak_rss_kb(&s);
    assert!(peak < PEAK_RSS_CEILING_KB, "peak RSS {peak} kB");
    s.stop();
}

/// One series of 20,000 samples: `quantile_over_time(0.5, heavy[1d])` at 11,000 steps sorts
/// every sample at every step, minutes of work for a few hundred kilobytes of data.
fn heavy_series(s: &Server) -> (i64, i64) {
    let end = now_ms() - 1000;
    let start = end - 200_000;
    let points: Vec<(i64, f64)> = (0..20_000)
        .map(|i| (start + i * 10, (i % 97) as f64))
        .collect();
    write(s, &[(vec![("__name__", "heavy")], points)]);
    (start, end)
}

/// Starts the heavy range query on its own thread with a client that gives up after
/// `client_timeout`; returns the status it got, if any.
fn start_heavy(
    s: &Server,
    (start, end): (i64, i64),
    client_timeout: Duration,
) -> std::thread::JoinHandle<Option<(u16, String)>> {
    let url = s.url("/api/v1/query_range");
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(client_timeout)
            .build()
            .unwrap();
        let r = client
            .post(url)
            .form(&[
                ("query", "quantile_over_time(0.5, heavy[1d])"),
                ("start", &format!("{}", start as f64 / 1000.0)),
                ("end", &format!("{}", end as f64 / 1000.0)),
                ("step", "0.02"),
            ])
            .send()
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().unwrap_or_default()))
    })
}

fn running(s: &Server) -> f64 {
    metric(&s.metrics(), "strata_query_running")
}

/// Waits (a liveness bound) until `strata_query_running` is `n`.
fn wait_running(s: &Server, n: f64, within: Duration) {
    let t = Instant::now();
    while running(s) != n {
        assert!(
            t.elapsed() < within,
            "strata_query_running stayed {} (wanted {n})",
            running(s)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_disconnected_query_stops_and_health_stays_fast() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[query]\ntimeout = \"5m\"\n");
    let span = heavy_series(&s);
    let q = start_heavy(&s, span, Duration::from_secs(3));
    wait_running(&s, 1.0, Duration::from_secs(10));
    // While it runs, /health, /metrics and writes answer.
    for _ in 0..5 {
        assert_alive(&s);
        write(&s, &[(vec![("__name__", "probe")], vec![(now_ms(), 1.0)])]);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The client gives up; the query stops within a few seconds, not minutes.
    assert!(q.join().unwrap().is_none(), "the heavy query finished");
    wait_running(&s, 0.0, Duration::from_secs(10));
    assert_alive(&s);
    s.stop();
}

#[test]
fn beyond_the_concurrency_limit_queries_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[query]\nmax_concurrency = 1\nmax_queue = 0\ntimeout = \"5m\"\n",
    );
    let span = heavy_series(&s);
    let q = start_heavy(&s, span, Duration::from_secs(4));
    wait_running(&s, 1.0, Duration::from_secs(10));
    let (st, v) = post(&s, "/api/v1/query", &[("query", "1")]);
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["errorType"], "unavailable");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("query.max_concurrency"),
        "{v}"
    );
    // Exports take the same turns.
    let (st, v) = post(&s, "/api/v1/export", &[("match[]", "{__name__=~\".+\"}")]);
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("query.max_concurrency"),
        "{v}"
    );
    assert!(metric(&s.metrics(), "strata_query_refused_total") >= 2.0);
    assert!(q.join().unwrap().is_none());
    wait_running(&s, 0.0, Duration::from_secs(10));
    // With the turn free again, queries answer.
    let (st, v) = post(&s, "/api/v1/query", &[("query", "1")]);
    assert_eq!(st, 200, "{v}");
    s.stop();
}

#[test]
fn sigterm_stops_running_queries_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "[query]\ntimeout = \"5m\"\n");
    let span = heavy_series(&s);
    let q = start_heavy(&s, span, Duration::from_secs(60));
    wait_running(&s, 1.0, Duration::from_secs(10));
    let t = Instant::now();
    // `stop` sends SIGTERM and asserts a clean exit.
    s.stop();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "exit took {:?}",
        t.elapsed()
    );
    let (status, body) = q.join().unwrap().expect("the query was answered");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
}
