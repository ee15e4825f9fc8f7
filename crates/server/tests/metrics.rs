//! `/metrics`: every stage's self-metrics through the one registry, in the Prometheus text
//! format (checked by `promtool check metrics` where Debian's prometheus is installed) and in
//! OpenMetrics when the scraper asks for it, both holding the same series.

mod common;

use common::{metric, now_ms, Receiver, Server};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

fn scrape(s: &Server, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::blocking::Client::new().get(s.url("/metrics"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let r = req.send().unwrap();
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    (ctype, r.text().unwrap())
}

/// The series (name and labels) of an exposition.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let key = l.rsplit_once(' ').unwrap().0;
            // The formats spell bucket bounds differently (`1` and `1.0`).
            match key.split_once("le=\"") {
                Some((a, rest)) => {
                    let (le, b) = rest.split_once('"').unwrap();
                    format!("{a}le=\"{}\"{b}", le.parse::<f64>().unwrap())
                }
                None => key.to_string(),
            }
        })
        .collect()
}

#[test]
fn every_stage_is_exposed_through_one_registry() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: g\n  interval: 1s\n  rules:\n  - record: job:up:sum\n    expr: sum(up)\n",
    )
    .unwrap();
    let s = Server::start(
        dir.path(),
        &format!(
            r#"partitions = 2
[alerting]
rule_files = [{rules:?}]
[[alerting.notifiers]]
name = "ops"
kind = "webhook"
url = "{}/hook"
[[anomaly.detectors]]
name = "load"
match = 'load{{host="h1"}}'
"#,
            hook.url
        ),
    );
    let t = now_ms();
    let r = s.post(
        "/write",
        format!("up,job=a value=1 {}\nbad line\n", t * 1_000_000),
    );
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(
        s.post(
            "/api/v1/events",
            format!(r#"{{"device_id":"d1","timestamp":{t},"readings":{{"temp":20.5}}}}"#)
        )
        .status(),
        200
    );

    let (ctype, text) = scrape(&s, None);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    // One family of each stage.
    for name in [
        r#"strata_ingest_requests_total{protocol="influx"}"#,
        "strata_log_appended_records_total",
        "strata_tsdb_series",
        "strata_rollup_open_windows",
        r#"strata_http_requests_refused_total{code="413",reason="body_too_large"}"#,
        r#"strata_query_tier_total{tier="raw"}"#,
        "strata_query_cache_entries",
        "strata_registry_enriched_series_total",
        "strata_rule_groups",
        r#"strata_notifications_queued{notifier="ops",kind="webhook"}"#,
        "strata_device_rules",
        "strata_anomaly_series",
        "strata_live_connections",
        r#"strata_live_subscriptions{state="lingering"}"#,
        "strata_live_slow_closes_total",
        "process_resident_memory_bytes",
    ] {
        metric(&text, name);
    }
    assert_eq!(metric(&text, "strata_rule_groups"), 1.0);
    assert!(
        text.contains(r#"strata_ingest_rejected_total{protocol="influx",reason=""#),
        "{text}"
    );
    assert!(metric(&text, r#"strata_ingest_samples_total{protocol="events"}"#) >= 1.0);
    // The fsync histogram: cumulative buckets ending in the count.
    let buckets: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("strata_log_fsync_seconds_bucket{le=\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.len() > 2, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        buckets.last().copied(),
        Some(metric(&text, "strata_log_fsync_seconds_count"))
    );
    assert!(metric(&text, "strata_log_fsync_seconds_count") >= 1.0);

    // promtool parses it (its lints are advice, not format errors).
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(_) => {
            eprintln!("SKIP promtool check: promtool not installed (apt-get install prometheus)")
        }
        Ok(mut p) => {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            eprintln!("promtool check metrics: {said}");
            assert!(!said.contains("error while linting"), "{said}");
            assert!(!said.contains("text format parsing error"), "{said}");
        }
    }

    let (ctype, open) = scrape(
        &s,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE strata_ingest_requests counter\n"),
        "{open}"
    );
    assert_eq!(series(&open), series(&text));
    s.stop();
}
