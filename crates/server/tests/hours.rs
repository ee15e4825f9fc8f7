//! The 1-hour tier through the server: `/api/v1/rollups?tier=1h` answers each series' hour,
//! final once every shard closed its last minute, with the figures of its raw samples; group
//! rollups get hours too; a late event corrects the hour (revision + 1) and its group hour; a
//! SIGKILL and a restart keep the hours.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DEVICES: usize = 8;
const EVERY_MS: i64 = 30_000;

const CONFIG: &str = r#"
partitions = 2
[rollups]
window = "1m"
out_of_orderness = "10s"
allowed_lateness = "2m"
idle_timeout = "1h"
quantile_metrics = ["temperature"]
[[rollups.groups]]
metric = "temperature"
by = ["site"]
outputs = ["count_samples", "max", "count_series"]
"#;

/// Device `d`'s reading at step `i`: multiples of 1/8 (exact sums in the reference), a drop
/// halfway (a counter reset for the increase).
fn reading(d: usize, i: i64) -> f64 {
    let v = (i % 60) as f64 * 0.125 + d as f64;
    if i >= 60 {
        v + 0.5
    } else {
        v + 20.0
    }
}

fn event(id: &str, d: usize, ts: i64, v: f64) -> String {
    format!(
        r#"{{"event_id":"{id}","device_id":"d{d}","timestamp":{ts},"readings":{{"temperature":{v}}},"labels":{{"site":"s{}"}}}}"#,
        d % 2
    ) + "\n"
}

/// Every device's hour keyed `base`: 120 readings in `(base, base + 1h]` (windows are
/// left-open), on every minute's edge and the last on the hour's end.
fn hour_events(base: i64) -> (String, BTreeMap<String, Vec<(i64, f64)>>) {
    let mut body = String::new();
    let mut truth: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for i in 0..HOUR / EVERY_MS {
        for d in 0..DEVICES {
            let (ts, v) = (base + (i + 1) * EVERY_MS, reading(d, i));
            body.push_str(&event(&format!("e{d}-{i}"), d, ts, v));
            truth.entry(format!("d{d}")).or_default().push((ts, v));
        }
    }
    (body, truth)
}

/// Milliseconds as the API's seconds, to the millisecond.
fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Each device's temperature windows of `tier` overlapping `[from, to]`.
fn windows(s: &Server, tier: &str, from: i64, to: i64) -> BTreeMap<String, Vec<Value>> {
    let resp = s
        .client
        .get(s.url("/api/v1/rollups"))
        .query(&[
            ("match[]", "temperature"),
            ("tier", tier),
            ("start", &secs(from)),
            ("end", &secs(to)),
        ])
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    let body: Value = resp.json().unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["device"].as_str().unwrap().to_string(),
                s["windows"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

fn f(w: &Value, k: &str) -> f64 {
    w[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {w}"))
}

/// Checks an hour window against the raw samples it covers.
fn check_hour(w: &Value, base: i64, samples: &[(i64, f64)]) {
    let v: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let increase: f64 = v
        .windows(2)
        .map(|w| if w[1] < w[0] { w[1] } else { w[1] - w[0] })
        .sum();
    assert_eq!(w["start"].as_i64().unwrap(), base);
    assert_eq!(w["end"].as_i64().unwrap(), base + HOUR);
    assert_eq!(w["count"].as_u64().unwrap(), v.len() as u64, "{w}");
    assert_eq!(f(w, "sum"), v.iter().sum::<f64>());
    assert_eq!(f(w, "min"), v.iter().copied().fold(f64::INFINITY, f64::min));
    assert_eq!(
        f(w, "max"),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    assert_eq!(f(w, "first"), v[0]);
    assert_eq!(w["first_timestamp"].as_i64().unwrap(), samples[0].0);
    assert_eq!(f(w, "last"), v[v.len() - 1]);
    assert_eq!(f(w, "increase"), increase);
    let mut sorted = v.clone();
    sorted.sort_by(f64::total_cmp);
    let rank = 0.99 * (sorted.len() - 1) as f64;
    let (lo, hi) = (sorted[rank.floor() as usize], sorted[rank.ceil() as usize]);
    let p99 = f(w, "p99");
    assert!(
        p99 >= lo * 0.99 && p99 <= hi * 1.01,
        "p99 {p99} of {lo}..{hi}"
    );
}

/// A group output's values by (site, timestamp).
fn group_values(s: &Server, name: &str) -> BTreeMap<(String, i64), f64> {
    s.export(name)
        .into_iter()
        .flat_map(|(m, pts)| {
            let site = m["site"].as_str().unwrap().to_string();
            pts.into_iter().map(move |(t, v)| ((site.clone(), t), v))
        })
        .collect()
}

/// Polls until `read` gives `want` (the merge step runs on its own clock).
fn eventually<T: PartialEq + std::fmt::Debug>(what: &str, want: T, read: impl Fn() -> T) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = read();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {got:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn hours_are_final_exact_corrected_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), CONFIG);
    let base = (now_ms() - 4 * HOUR).div_euclid(HOUR) * HOUR;
    let (body, mut truth) = hour_events(base);
    assert!(s.post("/api/v1/events", body).status().is_success());

    // Every minute but the last final: the hour is provisional, with every minute seen.
    assert!(s
        .post("/api/v1/events", ticks(base + HOUR + 2 * MIN))
        .status()
        .is_success());
    // Windows settle just after the acknowledgement: wait for the 59th minute to close.
    let states = |s: &Server| -> Vec<(String, u64)> {
        windows(s, "1h", base + 1, base + HOUR)
            .values()
            .map(|ws| {
                (
                    ws[0]["state"].as_str().unwrap().to_string(),
                    ws[0]["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    eventually(
        "provisional hours",
        vec![("provisional".to_string(), 120); DEVICES],
        || states(&s),
    );
    let open = windows(&s, "1h", base + 1, base + HOUR);
    assert_eq!(open.len(), DEVICES);
    for ws in open.values() {
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0]["state"], "provisional");
        assert_eq!(ws[0]["count"], 120, "59 final minutes and the open one");
    }
    // And the last: final, equal to the raw hour.
    assert!(s
        .post("/api/v1/events", ticks(base + HOUR + 3 * MIN))
        .status()
        .is_success());
    eventually(
        "final hours",
        vec![("final".to_string(), 120); DEVICES],
        || states(&s),
    );
    let fin = windows(&s, "1h", base + 1, base + HOUR);
    for (dev, ws) in &fin {
        assert_eq!(
            (ws[0]["state"].as_str(), ws[0]["revision"].as_u64()),
            (Some("final"), Some(0))
        );
        check_hour(&ws[0], base, &truth[dev]);
    }
    // A window holds its end, not its start: a range on `base` reaches the hour before (no
    // data), one on `base + 1h` this hour; the minutes likewise.
    assert!(windows(&s, "1h", base, base).values().all(Vec::is_empty));
    let at_end = windows(&s, "1h", base + HOUR, base + HOUR);
    assert_eq!(at_end.len(), DEVICES);
    assert!(at_end
        .values()
        .all(|ws| ws.len() == 1 && ws[0]["start"] == base));
    let on_edge = windows(&s, "1m", base + MIN, base + MIN);
    for ws in on_edge.values() {
        assert_eq!(ws.len(), 1);
        assert_eq!(
            (ws[0]["start"].as_i64(), ws[0]["end"].as_i64()),
            (Some(base), Some(base + MIN))
        );
        assert_eq!(
            ws[0]["count"], 2,
            "the readings at :30 and on the minute's end"
        );
        assert_eq!(ws[0]["last_timestamp"], base + MIN);
    }
    // The minutes are still there, and agree.
    let minutes = windows(&s, "1m", base + 1, base + HOUR);
    for (dev, ws) in &minutes {
        assert_eq!(ws.len(), 60, "{dev}");
        let n: u64 = ws.iter().map(|w| w["count"].as_u64().unwrap()).sum();
        assert_eq!(n, fin[dev][0]["count"].as_u64().unwrap());
    }
    // The day holding the hour: provisional (its hours so far), with their count.
    let day = base.div_euclid(24 * HOUR) * 24 * HOUR;
    let days = windows(&s, "1d", base + 1, base + HOUR);
    for (dev, ws) in &days {
        assert_eq!(ws.len(), 1, "{dev}");
        assert_eq!(ws[0]["start"].as_i64(), Some(day), "{dev}");
        let n = ws[0]["count"].as_u64().unwrap();
        assert!(n >= fin[dev][0]["count"].as_u64().unwrap(), "{dev}: {n}");
    }
    let r = s
        .client
        .get(s.url("/api/v1/rollups"))
        .query(&[("match[]", "temperature"), ("tier", "1w")])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("tier"));
    // Without `tier`: the minutes for ranges up to a day, the hours beyond; the header says.
    let default_tier = |from: i64, to: i64| {
        let r = s
            .client
            .get(s.url("/api/v1/rollups"))
            .query(&[
                ("match[]", "temperature{device=\"d3\"}"),
                ("start", &secs(from)),
                ("end", &secs(to)),
            ])
            .send()
            .unwrap();
        let tier = r.headers()["strata-tiers"].to_str().unwrap().to_string();
        let body: Value = r.json().unwrap();
        (tier, body["data"][0]["windows"].as_array().unwrap().len())
    };
    assert_eq!(default_tier(base + 1, base + HOUR), ("1m".to_string(), 60));
    assert_eq!(
        default_tier(base - 47 * HOUR, base + 1),
        ("1h".to_string(), 1)
    );
    let long = s.get_json(&format!(
        "/api/v1/devices/d3/summary?metric=temperature&start={}&end={}",
        secs(base - 47 * HOUR),
        secs(base + 1)
    ));
    assert_eq!(long["data"]["tier"], "1h", "{long}");
    assert_eq!(long["data"]["metrics"][0]["windows"], 1, "{long}");

    // The device summary over the hour, from the hour tier.
    let summary = s.get_json(&format!(
        "/api/v1/devices/d3/summary?metric=temperature&tier=1h&start={}&end={}",
        secs(base + HOUR),
        secs(base + HOUR)
    ));
    let sm = &summary["data"]["metrics"][0];
    assert_eq!(sm["windows"], 1, "{summary}");
    assert_eq!(sm["count"], 120);
    let v: Vec<f64> = truth["d3"].iter().map(|s| s.1).collect();
    assert_eq!(
        f(sm, "max"),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    assert_eq!(f(sm, "average"), v.iter().sum::<f64>() / v.len() as f64);

    // Group hours, at the hour's end: across both shards.
    let counts = |truth: &BTreeMap<String, Vec<(i64, f64)>>| {
        let mut out: BTreeMap<(String, i64), f64> = BTreeMap::new();
        for (dev, samples) in truth {
            let site = format!("s{}", dev[1..].parse::<usize>().unwrap() % 2);
            *out.entry((site, base + HOUR)).or_default() += samples.len() as f64;
        }
        out
    };
    eventually("group hour counts", counts(&truth), || {
        group_values(&s, "temperature:1h_by_site_count_samples")
    });
    let mut max: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for (dev, samples) in &truth {
        let site = format!("s{}", dev[1..].parse::<usize>().unwrap() % 2);
        let m = max.entry((site, base + HOUR)).or_insert(f64::NEG_INFINITY);
        *m = samples.iter().map(|s| s.1).fold(*m, f64::max);
    }
    assert_eq!(group_values(&s, "temperature:1h_by_site_max"), max);
    let series: BTreeMap<(String, i64), f64> = counts(&truth)
        .into_keys()
        .map(|k| (k, (DEVICES / 2) as f64))
        .collect();
    assert_eq!(
        group_values(&s, "temperature:1h_by_site_count_series"),
        series
    );

    // A late event: the minute and the hour are corrected, and the group hour.
    let late_ts = base + 20 * MIN + 7_000;
    let late = event("late-1", 0, late_ts, 99.5);
    assert!(s.post("/api/v1/events", late).status().is_success());
    let d0 = truth.get_mut("d0").unwrap();
    d0.push((late_ts, 99.5));
    d0.sort_by_key(|s| s.0);
    eventually("corrected hour", Some(1), || {
        windows(&s, "1h", base + 1, base + HOUR)["d0"][0]["revision"].as_u64()
    });
    let hour = windows(&s, "1h", base + 1, base + HOUR);
    assert_eq!(hour["d0"][0]["state"], "corrected");
    assert_eq!(hour["d0"][0]["revision"], 1);
    check_hour(&hour["d0"][0], base, &truth["d0"]);
    eventually("group hour corrected", counts(&truth), || {
        group_values(&s, "temperature:1h_by_site_count_samples")
    });

    // SIGKILL, restart, replay: the same hours.
    s.kill9();
    s = Server::start(dir.path(), CONFIG);
    let again = windows(&s, "1h", base + 1, base + HOUR);
    assert_eq!(again, hour);
    // And after a flush and a clean restart.
    s.flush();
    s.stop();
    let s = Server::start(dir.path(), CONFIG);
    assert_eq!(windows(&s, "1h", base + 1, base + HOUR), hour);
}
