//! Event-time rollups under messy delivery: duplicates, reordering, events later than the
//! allowed lateness, bursts after a disconnect, and a SIGKILL in the middle. After the
//! correction delay every window equals a batch recomputation from the deduplicated ground truth.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const MIN: i64 = 60_000;
const DEVICES: usize = 24;
const MINUTES: i64 = 30;
const EVERY_MS: i64 = 5_000;
const LATENESS: i64 = 2 * MIN;

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
outputs = ["avg", "count_samples", "min", "max", "count_series", "distinct(device)", "quantiles(0.5)"]
"#;

/// The key (start) of the window holding a sample at `ts`: windows are left-open like PromQL's
/// ranges, `(start, start + 1m]`, so a sample on the minute is in the window ending there.
fn window_key(ts: i64) -> i64 {
    (ts - 1).div_euclid(MIN) * MIN
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone)]
struct Event {
    id: String,
    device: usize,
    ts: i64,
    temperature: f64,
    energy: f64,
}

impl Event {
    fn json(&self) -> String {
        format!(
            r#"{{"event_id":"{}","device_id":"d{:02}","timestamp":{},"readings":{{"temperature":{},"energy":{}}},"labels":{{"site":"s{}"}}}}"#,
            self.id,
            self.device,
            self.ts,
            self.temperature,
            self.energy,
            self.device % 4
        )
    }
}

/// Ground truth: every device reports every 5 s. Values are multiples of 1/8, so every sum and
/// difference below is exact in f64 and the reference needs no special arithmetic.
fn ground_truth(base: i64, rng: &mut Rng) -> Vec<Event> {
    let mut out = Vec::new();
    for d in 0..DEVICES {
        let mut temp = 160.0 + d as f64; // eighths of a degree
        let mut energy = 0.0;
        let offset = (d as i64 * 397) % EVERY_MS;
        let mut t = base + offset;
        let mut seq = 0;
        while t < base + MINUTES * MIN {
            temp += rng.below(9) as f64 - 4.0;
            energy = if rng.chance(1) {
                0.5 // the meter restarted
            } else {
                energy + (rng.below(8) as f64) * 0.5
            };
            out.push(Event {
                id: format!("d{d:02}-{seq}"),
                device: d,
                ts: t,
                temperature: temp / 8.0,
                energy,
            });
            seq += 1;
            t += EVERY_MS;
        }
    }
    out
}

/// When each event is delivered (ms of the simulated delivery clock): mostly on time, some
/// reordered within the lateness, some later than it, devices that disconnect and burst on
/// reconnect, and duplicates.
fn schedule(events: &[Event], rng: &mut Rng) -> Vec<(i64, Event)> {
    let mut out = Vec::new();
    // Devices 3 and 11 lose their connection for 6 minutes, then deliver everything at once.
    let outage = |e: &Event| {
        let start = events[0].ts + 10 * MIN;
        (e.device == 3 || e.device == 11) && e.ts >= start && e.ts < start + 6 * MIN
    };
    for e in events {
        let delay = if outage(e) {
            events[0].ts + 16 * MIN - e.ts
        } else if rng.chance(3) {
            LATENESS + MIN + rng.below(4 * MIN as u64) as i64 // later than the lateness
        } else if rng.chance(10) {
            rng.below(LATENESS as u64 / 2) as i64 // out of order, inside the lateness
        } else {
            rng.below(2_000) as i64
        };
        out.push((e.ts + delay, e.clone()));
        if rng.chance(10) {
            out.push((e.ts + delay + rng.below(3 * MIN as u64) as i64, e.clone()));
        }
    }
    out.sort_by_key(|(at, e)| (*at, e.id.clone()));
    out
}

#[derive(Debug, PartialEq)]
struct Expected {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    last: f64,
    increase: f64,
}

fn recompute(samples: &[(i64, f64)]) -> Expected {
    let v: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let increase = v
        .windows(2)
        .map(|w| if w[1] < w[0] { w[1] } else { w[1] - w[0] })
        .sum();
    Expected {
        count: v.len() as u64,
        sum: v.iter().sum(),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        first: v[0],
        last: v[v.len() - 1],
        increase,
    }
}

fn f(w: &Value, k: &str) -> f64 {
    w[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {w}"))
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

#[test]
fn rollups_equal_batch_recomputation_after_chaos_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let base = (now_ms() - 3 * 3_600_000) / MIN * MIN;
    let truth = ground_truth(base, &mut rng);
    let deliveries = schedule(&truth, &mut rng);
    let mut s = Server::start(dir.path(), CONFIG);

    // Deliver in batches of 150 events; flush at a third, SIGKILL at two thirds, restart, and
    // send the batch in flight again (at-least-once).
    let batches: Vec<String> = deliveries
        .chunks(150)
        .map(|c| c.iter().map(|(_, e)| e.json() + "\n").collect())
        .collect();
    let n = batches.len();
    for (i, b) in batches.iter().enumerate() {
        if i == n / 3 {
            s.flush();
        }
        if i == 2 * n / 3 {
            // The batch is sent, acknowledged, and the server killed before it can flush.
            assert!(s.post("/api/v1/events", b.clone()).status().is_success());
            s.kill9();
            s = Server::start(dir.path(), CONFIG);
        }
        let r = s.post("/api/v1/events", b.clone());
        assert!(r.status().is_success(), "batch {i}: {:?}", r.text());
    }
    // Push every shard's watermark past the last window plus the lateness.
    let tick = base + MINUTES * MIN + LATENESS + 2 * MIN;
    let ticks: String = (0..16)
        .map(|k| {
            format!(r#"{{"device_id":"tick{k}","timestamp":{tick},"readings":{{"tick":1}}}}"#)
                + "\n"
        })
        .collect();
    assert!(s.post("/api/v1/events", ticks).status().is_success());

    // Far-future events are refused with a message naming the problem.
    let future = format!(
        r#"{{"device_id":"d00","timestamp":{},"readings":{{"temperature":1}}}}"#,
        now_ms() + 3_600_000
    );
    let r = s.post("/api/v1/events", future);
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("future"));

    // Batch recomputation from the deduplicated ground truth. Device 0 reports on every
    // minute's edge: those samples are in the window ending there.
    assert!(truth.iter().any(|e| e.device == 0 && e.ts == base));
    let mut want: BTreeMap<(String, String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for e in &truth {
        let w = window_key(e.ts);
        let dev = format!("d{:02}", e.device);
        want.entry(("temperature".into(), dev.clone(), w))
            .or_default()
            .push((e.ts, e.temperature));
        want.entry(("energy".into(), dev, w))
            .or_default()
            .push((e.ts, e.energy));
    }
    let resp = s
        .client
        .get(s.url("/api/v1/rollups"))
        .query(&[
            ("match[]", "{__name__=~\"temperature|energy\"}"),
            ("start", &(base / 1000).to_string()),
            ("end", &((base + MINUTES * MIN) / 1000).to_string()),
        ])
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    let body: Value = resp.json().unwrap();
    let mut got: BTreeMap<(String, String, i64), Value> = BTreeMap::new();
    for series in body["data"].as_array().unwrap() {
        let m = &series["metric"];
        let name = m["__name__"].as_str().unwrap().to_string();
        let dev = m["device"].as_str().unwrap().to_string();
        assert_eq!(
            m["site"].as_str().unwrap(),
            format!("s{}", dev[1..].parse::<usize>().unwrap() % 4)
        );
        for w in series["windows"].as_array().unwrap() {
            got.insert(
                (name.clone(), dev.clone(), w["start"].as_i64().unwrap()),
                w.clone(),
            );
        }
    }
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        want.keys().collect::<BTreeSet<_>>(),
        "windows present"
    );
    let mut corrected = 0;
    for (k, samples) in &want {
        let w = &got[k];
        let e = recompute(samples);
        let g = Expected {
            count: w["count"].as_u64().unwrap(),
            sum: f(w, "sum"),
            min: f(w, "min"),
            max: f(w, "max"),
            first: f(w, "first"),
            last: f(w, "last"),
            increase: f(w, "increase"),
        };
        assert_eq!(g, e, "window {k:?}: {w}");
        assert_eq!(w["end"].as_i64().unwrap(), k.2 + MIN);
        assert_eq!(w["first_timestamp"].as_i64().unwrap(), samples[0].0);
        assert_eq!(
            w["last_timestamp"].as_i64().unwrap(),
            samples[samples.len() - 1].0
        );
        assert!((f(w, "mean") - e.sum / e.count as f64).abs() < 1e-12);
        match w["state"].as_str().unwrap() {
            "final" => assert_eq!(w["revision"], 0),
            "corrected" => {
                assert!(w["revision"].as_u64().unwrap() >= 1);
                corrected += 1;
            }
            other => panic!("window {k:?} is still {other}"),
        }
        if k.0 == "temperature" {
            // Quantiles from the sketch: within its 1% relative accuracy of the exact rank.
            let mut v: Vec<f64> = samples.iter().map(|s| s.1).collect();
            v.sort_by(f64::total_cmp);
            for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
                let rank = q * (v.len() - 1) as f64;
                let (lo, hi) = (v[rank.floor() as usize], v[rank.ceil() as usize]);
                let x = f(w, name);
                assert!(
                    x >= lo * 0.99 - 1e-9 && x <= hi * 1.01 + 1e-9,
                    "window {k:?} {name} = {x}, exact between {lo} and {hi}"
                );
            }
        }
    }
    assert!(corrected > 0, "late events corrected some windows");

    // What the shards counted.
    let metrics = s.metrics();
    assert!(metric(&metrics, "strata_ingest_duplicate_events_total") > 0.0);
    assert!(metric(&metrics, "strata_rollup_late_samples_total") > 0.0);
    assert!(metric(&metrics, "strata_rollup_correction_samples_total") > 0.0);
    assert!(metric(&metrics, "strata_rollup_corrected_windows_total") > 0.0);
    assert!(metrics.contains("strata_rollup_watermark_seconds{shard=\"0\"}"));

    // The device endpoints answer from the same state.
    let latest = s.get_json("/api/v1/devices/d05/latest");
    let last = truth
        .iter()
        .filter(|e| e.device == 5)
        .max_by_key(|e| e.ts)
        .unwrap();
    let metrics = latest["data"]["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 2);
    for m in metrics {
        let want = match m["metric"]["__name__"].as_str().unwrap() {
            "temperature" => last.temperature,
            _ => last.energy,
        };
        assert_eq!(m["timestamp"].as_i64().unwrap(), last.ts);
        assert_eq!(m["value"].as_f64().unwrap(), want);
    }
    let summary = s.get_json(&format!(
        "/api/v1/devices/d05/summary?metric=temperature&start={}&end={}",
        base / 1000,
        (base + MINUTES * MIN) / 1000
    ));
    let sm = &summary["data"]["metrics"][0];
    let temps: Vec<&Event> = truth.iter().filter(|e| e.device == 5).collect();
    assert_eq!(sm["count"].as_u64().unwrap(), temps.len() as u64);
    let mean = temps.iter().map(|e| e.temperature).sum::<f64>() / temps.len() as f64;
    assert!((f(sm, "average") - mean).abs() < 1e-9);
    let max = temps.iter().map(|e| e.temperature).fold(f64::MIN, f64::max);
    assert_eq!(f(sm, "max"), max);
    assert_eq!(sm["current"]["value"].as_f64().unwrap(), last.temperature);
    let unknown = s
        .client
        .get(s.url("/api/v1/devices/nope/latest"))
        .send()
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    // Group rollups by site, merged across both shards, corrections included: poll until the
    // merge step has caught up, then compare every window with the ground truth.
    let mut by_site: BTreeMap<(String, i64), Vec<(usize, f64)>> = BTreeMap::new();
    for e in &truth {
        let w = window_key(e.ts);
        by_site
            .entry((format!("s{}", e.device % 4), w + MIN))
            .or_default()
            .push((e.device, e.temperature));
    }
    let read = |name: &str| group_values(&s, name);
    let want_counts: BTreeMap<(String, i64), f64> = by_site
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as f64))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while read("temperature:1m_by_site_count_samples") != want_counts {
        assert!(
            std::time::Instant::now() < deadline,
            "group counts never matched: {:?}",
            read("temperature:1m_by_site_count_samples")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (avg, min, max) = (
        read("temperature:1m_by_site_avg"),
        read("temperature:1m_by_site_min"),
        read("temperature:1m_by_site_max"),
    );
    let (series, distinct) = (
        read("temperature:1m_by_site_count_series"),
        read("temperature:1m_by_site_distinct_device"),
    );
    let median = read("temperature:1m_by_site_quantiles");
    for (k, members) in &by_site {
        let v: Vec<f64> = members.iter().map(|m| m.1).collect();
        let devices: BTreeSet<usize> = members.iter().map(|m| m.0).collect();
        assert_eq!(avg[k], v.iter().sum::<f64>() / v.len() as f64, "avg {k:?}");
        assert_eq!(min[k], v.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(max[k], v.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        assert_eq!(series[k], devices.len() as f64);
        assert_eq!(distinct[k], devices.len() as f64);
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = 0.5 * (sorted.len() - 1) as f64;
        let (lo, hi) = (sorted[rank.floor() as usize], sorted[rank.ceil() as usize]);
        assert!(
            median[k] >= lo * 0.99 && median[k] <= hi * 1.01,
            "median {k:?}"
        );
    }

    // Two more events, long after their window's group was computed: the series windows and
    // the group window are corrected. The second sits exactly on the window's end (a new
    // timestamp for d04): it corrects that group window, not the next one.
    let ws = base + 5 * MIN;
    let late = format!(
        concat!(
            r#"{{"event_id":"late-1","device_id":"d00","timestamp":{},"readings":{{"temperature":100}},"labels":{{"site":"s0"}}}}"#,
            "\n",
            r#"{{"event_id":"late-2","device_id":"d04","timestamp":{},"readings":{{"temperature":50}},"labels":{{"site":"s0"}}}}"#,
        ),
        ws + 1,
        ws + MIN
    );
    assert!(!truth.iter().any(|e| e.device == 4 && e.ts == ws + MIN));
    assert!(s.post("/api/v1/events", late).status().is_success());
    let k = ("s0".to_string(), ws + MIN);
    let next = ("s0".to_string(), ws + 2 * MIN);
    let mut v: Vec<f64> = by_site[&k].iter().map(|m| m.1).collect();
    v.extend([100.0, 50.0]);
    let want = (
        Some(v.len() as f64),
        Some(100.0),
        Some(v.iter().sum::<f64>() / v.len() as f64),
        Some(by_site[&next].len() as f64),
    );
    // The outputs are separate series, possibly on separate shards: poll until all show it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let counts = read("temperature:1m_by_site_count_samples");
        let got = (
            counts.get(&k).copied(),
            read("temperature:1m_by_site_max").get(&k).copied(),
            read("temperature:1m_by_site_avg").get(&k).copied(),
            counts.get(&next).copied(),
        );
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group window {k:?} not corrected: {got:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn rollup_endpoints_refuse_bad_requests_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let get = |path: &str, q: &[(&str, &str)]| {
        let r = s.client.get(s.url(path)).query(q).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    // (path, query, a word the error must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("/api/v1/rollups", vec![], "match[]"),
        ("/api/v1/rollups", vec![("match[]", "temp{")], "selector"),
        ("/api/v1/rollups", vec![("match[]", "{device=\"\"}")], ""),
        (
            "/api/v1/rollups",
            vec![("match[]", "temp"), ("start", "yesterday")],
            "start",
        ),
        (
            "/api/v1/rollups",
            vec![("match[]", "temp"), ("start", "100"), ("end", "50")],
            "end",
        ),
        ("/api/v1/devices/d1/summary", vec![("end", "\u{0}")], "end"),
    ];
    for (path, q, needle) in cases {
        let (status, body) = get(path, &q);
        assert_eq!(status, 400, "{path} {q:?}: {body}");
        assert!(
            body.contains("bad_data") && body.contains(needle),
            "{path} {q:?}: {body}"
        );
    }
    let long = "x".repeat(3000);
    let (status, body) = get(&format!("/api/v1/devices/{long}/latest"), &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("device id"));
    // Nothing stored yet: an unknown device is a 404, an empty selection an empty list.
    assert_eq!(get("/api/v1/devices/d1/latest", &[]).0, 404);
    let (status, body) = get("/api/v1/rollups", &[("match[]", "temp")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"data\":[]"));
    // The server is still healthy after all of it.
    assert_eq!(get("/health", &[]).0, 200);
}
