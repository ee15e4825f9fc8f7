//! Anomaly detection end to end: a detector scores every final 1-minute window of the series it
//! matches and writes `anomaly_score`, `yhat`, `yhat_lower` and `yhat_upper` at the window's
//! end; a spike scores above 1 and is one event, fired and resolved once through a notifier.
//! The same data delivered newest hour first (every older hour a late correction) ends with
//! the same scores as live, in-order delivery, and so does a server killed with SIGKILL in the
//! middle and restarted (its detectors rebuilt from the warm tier).

mod common;

use common::{now_ms, wait_for, Receiver, Server};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const MIN: i64 = 60_000;
const N: i64 = 600;

fn config(hook: &str) -> String {
    format!(
        r#"partitions = 2
[rollups]
out_of_orderness = "1s"
idle_timeout = "2s"
[[alerting.notifiers]]
name = "ops"
kind = "webhook"
url = "{hook}/hook"
group_by = ["alertname"]
[[anomaly.detectors]]
name = "load"
match = 'load{{host=~"h.*"}}'
window = 120
history = 200
warm_up = 30
sustained = 10
refit = "30m"
suppress = "10m"
severity = "page"
channels = ["ops"]
"#
    )
}

/// The series: noise around a daily-free level, one spike 30 minutes before the end. Minute
/// `i` of `N` is stamped `end - (N - 1 - i)` minutes.
fn rows(end: i64) -> Vec<(i64, f64)> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..N)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = 50.0 + (x % 1000) as f64 / 100.0 + if i == N - 30 { 60.0 } else { 0.0 };
            (end - (N - 1 - i) * MIN, v)
        })
        .collect()
}

fn send(s: &Server, rows: &[(i64, f64)]) {
    let body: String = rows
        .iter()
        .map(|(t, v)| format!("load,host=h1 value={v} {}\n", t / 1000))
        .collect();
    let r = s.post("/write?precision=s", body);
    assert!(r.status().is_success(), "{}", r.text().unwrap());
}

/// Moves every shard's watermark past `end`.
fn tick(s: &Server, at: i64) {
    let r = s.post("/api/v1/events", common::ticks(at));
    assert!(r.status().is_success());
}

fn outputs(s: &Server, name: &str) -> BTreeMap<i64, f64> {
    let got = s.export(&format!("{name}{{for=\"load\"}}"));
    assert!(got.len() <= 1, "one series: {got:?}");
    got.into_iter().flat_map(|(_, pts)| pts).collect()
}

fn scored(s: &Server, want: usize) -> BTreeMap<i64, f64> {
    wait_for("every window scored", || {
        outputs(s, "anomaly_score").len() >= want
    });
    outputs(s, "anomaly_score")
}

fn start(dir: &Path, hook: &Receiver) -> Server {
    Server::start(dir, &config(&hook.url))
}

fn statuses(hook: &Receiver) -> Vec<String> {
    hook.received()
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["groupLabels"]["alertname"], "AnomalyDetected");
            v["status"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn scores_written_spike_is_one_event_and_every_delivery_order_scores_alike() {
    let end = now_ms() / MIN * MIN - 2 * MIN;
    let data = rows(end);

    // Live: an hour at a time, in order.
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let s = start(dir.path(), &hook);
    for hour in data.chunks(60) {
        send(&s, hour);
    }
    tick(&s, now_ms());
    let live = scored(&s, N as usize);
    assert_eq!(live.len(), N as usize, "one score per window");
    let (first, last) = (*live.keys().next().unwrap(), *live.keys().last().unwrap());
    assert_eq!(
        (first, last),
        (data[0].0, end),
        "stamped at each window's end"
    );
    let spike = end - 29 * MIN;
    assert!(live[&spike] > 1.0, "the spike scores {}", live[&spike]);
    let high: Vec<_> = live.iter().filter(|(_, &v)| v > 1.0).collect();
    assert_eq!(high.len(), 1, "only the spike is anomalous: {high:?}");
    let yhat = outputs(&s, "yhat");
    let (lo, hi) = (outputs(&s, "yhat_lower"), outputs(&s, "yhat_upper"));
    assert!(
        (yhat[&spike] - 55.0).abs() < 2.0,
        "baseline {}",
        yhat[&spike]
    );
    assert!(lo[&spike] < yhat[&spike] && yhat[&spike] < hi[&spike]);
    assert!(hi[&spike] < 110.0, "the spike is outside the band");
    // One event: fired, then resolved once the suppression window passed quietly.
    wait_for("fired and resolved", || statuses(&hook).len() >= 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(statuses(&hook), ["firing", "resolved"]);
    let body: Value = serde_json::from_str(&hook.received()[0].body).unwrap();
    let labels = &body["alerts"][0]["labels"];
    assert_eq!(labels["for"], "load");
    assert_eq!(labels["host"], "h1");
    assert_eq!(labels["severity"], "page");
    assert_eq!(labels["detector"], "load");
    let m = s.metrics();
    assert_eq!(common::metric(&m, "strata_anomaly_events_total"), 1.0);
    assert!(common::metric(&m, "strata_anomaly_windows_scored_total") >= N as f64);
    // Live, every window came from the shards as it closed: none was read back.
    assert!(common::metric(&m, "strata_anomaly_windows_fed_total") >= N as f64);
    assert_eq!(
        common::metric(&m, "strata_anomaly_windows_read_back_total"),
        0.0
    );
    s.stop();

    // Newest hour first: each older hour corrects windows already scored after it.
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let s = start(dir.path(), &hook);
    for hour in data.chunks(60).rev() {
        send(&s, hour);
        tick(&s, now_ms());
        // Each hour is scored before the next (older) one arrives.
        let newest = hour.last().unwrap().0;
        wait_for("the hour scored", || {
            outputs(&s, "anomaly_score").contains_key(&newest)
        });
    }
    wait_for("re-scored as live", || outputs(&s, "anomaly_score") == live);
    assert!(common::metric(&s.metrics(), "strata_anomaly_windows_rescored_total") > 0.0);
    s.stop();

    // Killed halfway, restarted: detectors rebuilt from the warm tier score on as live.
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let s = start(dir.path(), &hook);
    let half = (N / 2) as usize;
    send(&s, &data[..half]);
    wait_for("the first half scored", || {
        outputs(&s, "anomaly_score").len() >= half - 1
    });
    s.flush();
    s.kill9();
    let s = start(dir.path(), &hook);
    send(&s, &data[half..]);
    tick(&s, now_ms());
    wait_for("scored as live after a restart", || {
        outputs(&s, "anomaly_score") == live
    });
    let m = s.metrics();
    assert!(common::metric(&m, "strata_anomaly_detectors_rebuilt_total") >= 1.0);
    assert!(common::metric(&m, "strata_anomaly_windows_read_back_total") > 0.0);
    s.stop();
}

/// An open event whose window a late correction makes normal is retracted: re-scored, the
/// window is no anomaly, and the event is resolved as of its start, saying why, once.
#[test]
fn a_correction_that_removes_the_anomaly_retracts_its_event() {
    let end = now_ms() / MIN * MIN - 2 * MIN;
    let data = rows(end);
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let s = start(dir.path(), &hook);
    // Up to three minutes past the spike: the event is open (its suppression not over).
    let upto = (N - 27) as usize;
    for hour in data[..upto].chunks(60) {
        send(&s, hour);
    }
    tick(&s, now_ms());
    let spike = end - 29 * MIN;
    assert!(scored(&s, upto)[&spike] > 1.0);
    wait_for("fired", || !statuses(&hook).is_empty());
    assert_eq!(statuses(&hook), ["firing"]);

    // The spike's reading, sent again with its true value: the window is corrected.
    send(&s, &[(spike, 55.0)]);
    tick(&s, now_ms());
    wait_for("retracted", || statuses(&hook).len() >= 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(statuses(&hook), ["firing", "resolved"], "retracted once");
    let body: Value = serde_json::from_str(&hook.received()[1].body).unwrap();
    let alert = &body["alerts"][0];
    assert!(
        alert["annotations"]["retracted"]
            .as_str()
            .is_some_and(|r| r.contains("no anomaly")),
        "{alert}"
    );
    assert_eq!(alert["labels"]["for"], "load");
    let scores = outputs(&s, "anomaly_score");
    assert!(scores[&spike] <= 1.0, "re-scored: {}", scores[&spike]);
    let m = s.metrics();
    assert_eq!(
        common::metric(&m, "strata_anomaly_events_retracted_total"),
        1.0
    );
    assert_eq!(common::metric(&m, "strata_anomaly_events_total"), 1.0);
    s.stop();
}

#[test]
fn bad_detectors_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, want) in [
        (
            "[[anomaly.detectors]]\nmatch = 'x{'\n",
            "anomaly.detectors[0]",
        ),
        (
            "[[anomaly.detectors]]\nmatch = 'x'\nfigure = \"median\"\n",
            "figure",
        ),
        (
            "[[anomaly.detectors]]\nmatch = 'x'\ndirection = \"up\"\n",
            "direction",
        ),
        (
            "[[anomaly.detectors]]\nmatch = 'x'\nsensitivity = -1.0\n",
            "sensitivity",
        ),
        ("[[anomaly.detectors]]\nmatch = 'x'\nwindow = 3\n", "window"),
        (
            "[[anomaly.detectors]]\nmatch = 'x'\nperiod = \"often\"\n",
            "period",
        ),
        ("[[anomaly.detectors]]\nmatch = 'x'\nbogus = 1\n", "bogus"),
        (
            "[[anomaly.detectors]]\nmatch = 'x'\nprofile_refit = \"sometimes\"\n",
            "profile_refit",
        ),
        (
            "[[anomaly.detectors]]\nmatch = 'x'\nprofile_history = \"2d\"\n",
            "profile_history",
        ),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{toml} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{toml}: {err}");
    }
}

/// A weekly series (a daily wave, 20 lower on two days of each week): after four weeks the
/// detector's profile, fitted from the 1-hour tier, keeps the fifth week's weekends normal,
/// where the same detector without a profile flags them, and a weekend day at weekday level
/// scores above 1.
#[test]
fn a_weekly_profile_from_the_hour_tier_keeps_weekends_normal() {
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        r#"partitions = 2
retention = "60d"
[rollups]
out_of_orderness = "1s"
idle_timeout = "2s"
[[anomaly.detectors]]
name = "profiled"
match = 'machine_load'
[[anomaly.detectors]]
name = "plain"
match = 'machine_load'
profile_refit = "off"
"#,
    );
    let first = now_ms() / DAY * DAY - 35 * DAY;
    let last = now_ms() / MIN * MIN - 3 * MIN;
    // A reading reports the minute ending at its stamp, as windows and hours hold it: the
    // weekend's first is the one a minute after it starts. The odd day out: the weekend day
    // of the fifth week, from 08:00 to 14:00.
    let hour_of_week = |t: i64| ((t - 1) / HOUR) % 168;
    let odd = |t: i64| {
        let week5 = t >= first + 28 * DAY;
        let hour_of_week = hour_of_week(t);
        week5 && (120..144).contains(&hour_of_week) && (8..14).contains(&(hour_of_week % 24))
    };
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut t = first;
    while t <= last {
        let mut body = String::new();
        for _ in 0..1440 {
            if t > last {
                break;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let weekend = hour_of_week(t) >= 120 && !odd(t);
            let wave = 10.0 * (t as f64 * std::f64::consts::TAU / DAY as f64).sin();
            let v = 50.0 + wave - if weekend { 20.0 } else { 0.0 } + (x % 1000) as f64 / 1000.0;
            body.push_str(&format!("machine_load,host=m1 value={v} {}\n", t / 1000));
            t += MIN;
        }
        let r = s.post("/write?precision=s", body);
        assert!(r.status().is_success(), "{}", r.text().unwrap());
    }
    tick(&s, now_ms());
    let scores = |detector: &str| -> BTreeMap<i64, f64> {
        let got = s.export(&format!("anomaly_score{{detector=\"{detector}\"}}"));
        got.into_iter().flat_map(|(_, pts)| pts).collect()
    };
    let windows = ((last - first) / MIN) as usize;
    wait_for("every window scored", || {
        scores("profiled").len() >= windows && scores("plain").len() >= windows
    });
    let m = s.metrics();
    assert!(common::metric(&m, "strata_anomaly_profiles_fitted_total") > 0.0);
    // The fifth week, apart from the odd day's hours (and an hour after, for the score's
    // smoothing).
    let fifth = |scores: BTreeMap<i64, f64>| -> (f64, f64) {
        let (mut normal, mut odd_max): (f64, f64) = (0.0, 0.0);
        for (at, v) in scores.range(first + 28 * DAY..) {
            if odd(*at) || odd(at - HOUR) {
                odd_max = odd_max.max(*v);
            } else {
                normal = normal.max(*v);
            }
        }
        (normal, odd_max)
    };
    let (normal, odd_max) = fifth(scores("profiled"));
    assert!(
        normal <= 1.0,
        "with a profile the fifth week is normal: {normal}"
    );
    assert!(odd_max > 1.0, "a weekend day at weekday level: {odd_max}");
    let (plain, _) = fifth(scores("plain"));
    assert!(
        plain > 1.0,
        "without one its weekends are anomalies: {plain}"
    );
    s.stop();
}
