//! The tier router through the server: PromQL answered from the 1-minute and 1-hour tiers
//! equals the raw answer (`max_source_resolution=raw`) on aligned windows, with readings
//! exactly on the minute and hour edges; `Strata-Tiers` says which tiers answered, and
//! `/metrics` counts queries per tier.

mod common;
use common::*;
use serde_json::Value;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DEVICES: usize = 4;
const EVERY_MS: i64 = 30_000;
const HOURS: i64 = 12;

const CONFIG: &str = r#"
partitions = 2
[rollups]
window = "1m"
out_of_orderness = "10s"
allowed_lateness = "2m"
idle_timeout = "1h"
quantile_metrics = ["temperature"]
"#;

fn event(id: &str, d: usize, ts: i64, temp: f64, energy: f64) -> String {
    format!(
        r#"{{"event_id":"{id}","device_id":"d{d}","timestamp":{ts},"readings":{{"temperature":{temp},"energy_total":{energy}}},"labels":{{"site":"s{}"}}}}"#,
        d % 2
    ) + "\n"
}

/// Readings every 30 s from `base` (on the hour) for twelve hours: every other one exactly on a
/// minute, one exactly on each hour; the counter resets once.
fn readings(base: i64) -> String {
    let mut body = String::new();
    for i in 0..=HOURS * HOUR / EVERY_MS {
        for d in 0..DEVICES {
            let temp = 20.0 + ((i * 7 + d as i64 * 3) % 41) as f64 * 0.25;
            let energy = if i < 400 { i * 3 } else { i - 400 } as f64 + d as f64;
            body.push_str(&event(
                &format!("e{d}-{i}"),
                d,
                base + i * EVERY_MS,
                temp,
                energy,
            ));
        }
    }
    body
}

/// One answered series: its labels (as JSON text) and points.
type Series = (String, Vec<(f64, f64)>);

/// A range query's series (by device) and the `Strata-Tiers` header.
fn range(s: &Server, q: &str, grid: (i64, i64, i64), cap: Option<&str>) -> (String, Vec<Series>) {
    let (tiers, _, series) = range_cached(s, q, grid, cap, false);
    (tiers, series)
}

/// As [`range`], through the result cache when `cached`; also the `Strata-Cache` header.
fn range_cached(
    s: &Server,
    q: &str,
    (start, end, step): (i64, i64, i64),
    cap: Option<&str>,
    cached: bool,
) -> (String, String, Vec<Series>) {
    let mut params = vec![
        ("query", q.to_string()),
        ("start", (start / 1000).to_string()),
        ("end", (end / 1000).to_string()),
        ("step", format!("{}s", step / 1000)),
    ];
    if !cached {
        params.push(("nocache", "1".into()));
    }
    if let Some(c) = cap {
        params.push(("max_source_resolution", c.into()));
    }
    let r = s
        .client
        .get(s.url("/api/v1/query_range"))
        .query(&params)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{q}: {}", r.status());
    let tiers = r.headers()["strata-tiers"].to_str().unwrap().to_string();
    let cache = r.headers()["strata-cache"]
        .to_str()
        .unwrap_or("")
        .to_string();
    let body: Value = r.json().unwrap();
    let series = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["metric"].to_string();
            let pts = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap(),
                        p[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            (name, pts)
        })
        .collect();
    (tiers, cache, series)
}

/// Asserts two answers are equal to `rel`.
fn same(q: &str, want: &[Series], got: &[Series], rel: f64) {
    assert_eq!(want.len(), got.len(), "{q}");
    assert!(!want.is_empty(), "{q}");
    for ((wn, wp), (gn, gp)) in want.iter().zip(got) {
        assert_eq!(wn, gn, "{q}");
        assert_eq!(wp.len(), gp.len(), "{q} {wn}");
        for (a, b) in wp.iter().zip(gp) {
            assert_eq!(a.0, b.0, "{q}");
            assert!(
                close(a.1, b.1, rel),
                "{q} {wn} at {}: want {} got {}",
                a.0,
                a.1,
                b.1
            );
        }
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

#[test]
fn tiers_answer_as_raw_samples_do_on_aligned_windows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let base = (now_ms() - 15 * HOUR).div_euclid(HOUR) * HOUR;
    assert!(s
        .post("/api/v1/events", readings(base))
        .status()
        .is_success());
    let done = base + HOURS * HOUR;
    assert!(s
        .post("/api/v1/events", ticks(done + 5 * MIN))
        .status()
        .is_success());
    s.flush();
    // Every hour final before comparing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let w = s.get_json(&format!(
            "/api/v1/rollups?match[]=temperature&tier=1h&start={}&end={}",
            (done - HOUR) / 1000,
            (done - HOUR) / 1000
        ));
        let states: Vec<&str> = w["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["windows"][0]["state"].as_str())
            .collect();
        if states.len() == DEVICES && states.iter().all(|s| *s == "final") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hours not final: {w}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        s.flush();
    }

    let exact = [
        "min_over_time(temperature[{r}])",
        "max_over_time(temperature[{r}])",
        "count_over_time(temperature[{r}])",
        "sum_over_time(temperature[{r}])",
        "avg_over_time(temperature[{r}])",
        "last_over_time(temperature[{r}])",
        "increase(energy_total[{r}])",
        "rate(energy_total[{r}])",
        "max by (site) (max_over_time(temperature[{r}]))",
        "sum(rate(energy_total[{r}]))",
        "sum by (site) (temperature)",
    ];
    // Raw samples hold it all: a tier answers at 5 of its windows a step (Thanos' rule).
    for (r, step, tier) in [
        ("2h", 6 * HOUR, "1h"),
        ("1h", 5 * HOUR, "1h"),
        ("2h", 2 * HOUR, "1m"),
        ("10m", 10 * MIN, "1m"),
        ("30m", 5 * MIN, "1m"),
    ] {
        let grid = (base + 2 * HOUR, done, step);
        for q in exact {
            let q = q.replace("{r}", r);
            let (want_tiers, want) = range(&s, &q, grid, Some("raw"));
            let (got_tiers, got) = range(&s, &q, grid, None);
            assert_eq!(want_tiers, "raw", "{q}");
            // A plain selector reads a tier only at 5 of its windows a step (Thanos' rule).
            let tier = if !q.contains('[') && step < 5 * HOUR {
                "1m"
            } else {
                tier
            };
            assert_eq!(got_tiers, tier, "{q}");
            assert_eq!(want.len(), got.len(), "{q}");
            assert!(!want.is_empty(), "{q}");
            for ((wn, wp), (gn, gp)) in want.iter().zip(&got) {
                assert_eq!(wn, gn, "{q}");
                assert_eq!(wp.len(), gp.len(), "{q} {wn}");
                for (a, b) in wp.iter().zip(gp) {
                    assert_eq!(a.0, b.0, "{q}");
                    assert!(
                        close(a.1, b.1, 1e-9),
                        "{q} {wn} at {}: raw {} tier {}",
                        a.0,
                        a.1,
                        b.1
                    );
                }
            }
        }
    }
    // Quantiles from the hours' merged sketches, within their accuracy of the raw answer.
    let q = "quantile_over_time(0.9, temperature[2h])";
    let grid = (base + 2 * HOUR, done, 6 * HOUR);
    let (_, want) = range(&s, q, grid, Some("raw"));
    let (tiers, got) = range(&s, q, grid, None);
    assert_eq!(tiers, "1h");
    for ((_, wp), (_, gp)) in want.iter().zip(&got) {
        for (a, b) in wp.iter().zip(gp) {
            assert!(close(a.1, b.1, 0.03), "{q}: raw {} tier {}", a.1, b.1);
        }
    }
    // A bad cap is refused, naming the parameter.
    let r = s
        .client
        .get(s.url("/api/v1/query"))
        .query(&[("query", "temperature"), ("max_source_resolution", "1w")])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("max_source_resolution"));
    let m = s.metrics();
    assert!(metric(&m, "strata_query_tier_total{tier=\"1h\"}") > 0.0);
    assert!(metric(&m, "strata_query_tier_total{tier=\"1m\"}") > 0.0);
    assert!(metric(&m, "strata_query_tier_total{tier=\"raw\"}") > 0.0);

    // A late reading corrects the minute and the hour it falls in, and the cached range that
    // covers it: the next answer is the raw one again, not the cached one.
    let q = "sum_over_time(temperature[2h])";
    let grid = (base + 2 * HOUR, done, 6 * HOUR);
    let (_, first, before) = range_cached(&s, q, grid, None, true);
    let (tiers, again, cached) = range_cached(&s, q, grid, None, true);
    assert_eq!(
        (first.as_str(), again.as_str(), tiers.as_str()),
        ("miss", "hit", "1h")
    );
    same(q, &before, &cached, 0.0);
    let late = base + 7 * HOUR + 15_000;
    assert!(s
        .post("/api/v1/events", event("late-1", 0, late, 1000.0, 0.0))
        .status()
        .is_success());
    s.flush();
    let hour = s.get_json(&format!(
        "/api/v1/rollups?match[]=temperature{{device=\"d0\"}}&tier=1h&start={}&end={}",
        (late - 1) / 1000,
        (late + 1) / 1000
    ));
    assert_eq!(hour["data"][0]["windows"][0]["revision"], 1, "{hour}");
    let minute = s.get_json(&format!(
        "/api/v1/rollups?match[]=temperature{{device=\"d0\"}}&tier=1m&start={}&end={}",
        late / 1000,
        late / 1000
    ));
    assert_eq!(minute["data"][0]["windows"][0]["revision"], 1, "{minute}");
    let (_, after_cache, after) = range_cached(&s, q, grid, None, true);
    assert_ne!(after_cache, "hit");
    let (_, raw) = range(&s, q, grid, Some("raw"));
    same(q, &raw, &after, 1e-9);
    assert_ne!(before, after, "the late reading changed the sum");

    // The cold tier answers alone: a new node on the first one's cold files (no raw samples,
    // no local hours) gives the raw answers from the archived hours.
    let checks = [
        "avg_over_time(temperature[2h])",
        "increase(energy_total[2h])",
        "max by (site) (max_over_time(temperature[2h]))",
    ];
    let grid = (base + 2 * HOUR, done, 6 * HOUR);
    let want: Vec<_> = checks
        .iter()
        .map(|q| range(&s, q, grid, Some("raw")).1)
        .collect();
    s.stop();
    let other = tempfile::tempdir().unwrap();
    let cold = dir.path().join("data").join("cold");
    let config = format!("{CONFIG}\n[cold]\nurl = {:?}\n", cold.to_str().unwrap());
    let b = Server::start(other.path(), &config);
    for (q, want) in checks.iter().zip(&want) {
        let (tiers, got) = range(&b, q, grid, None);
        assert_eq!(tiers, "1h", "{q}");
        same(q, want, &got, 1e-9);
    }
    b.stop();
}
