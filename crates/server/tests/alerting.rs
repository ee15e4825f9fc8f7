//! Rules inside the real server: groups evaluated on their interval, recording rules and
//! `ALERTS` written back as series, `GET /api/v1/rules` and `/api/v1/alerts` as Prometheus
//! answers them, alert state restored after a SIGKILL (firing stays firing, with its active
//! time), reload by `POST /-/reload` and SIGHUP (a broken file keeps the running rules), and the
//! rules' self-metrics.

mod common;

use common::{metric, now_ms, Server};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RULES: &str = r#"
groups:
  - name: fleet
    interval: 1s
    rules:
      - record: site:temperature_celsius:max
        expr: max by (site) (temperature_celsius)
      - alert: Hot
        expr: temperature_celsius > 80
        for: 2s
        labels:
          severity: page
        annotations:
          summary: '{{ $labels.device }} at {{ $value }} C'
"#;

const MORE: &str = r#"
groups:
  - name: extra
    interval: 1s
    rules:
      - record: device_count
        expr: count(temperature_celsius)
"#;

fn write(s: &Server, device: &str, v: f64) {
    s.remote_write(&[(
        vec![
            ("__name__", "temperature_celsius"),
            ("device", device),
            ("site", "s1"),
        ],
        vec![(now_ms(), v)],
    )]);
}

/// Polls until `f` holds, keeping `device` reporting `v` meanwhile.
fn until(s: &Server, what: &str, mut f: impl FnMut(&Server) -> bool, feed: Option<f64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = feed {
            write(s, "d1", v);
        }
        if f(s) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alerts(s: &Server) -> Vec<Value> {
    s.get_json("/api/v1/alerts")["data"]["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

fn start(dir: &Path, rules: &Path) -> Server {
    Server::start(
        dir,
        &format!(
            "partitions = 1\n[alerting]\nrule_files = [{:?}]\nevaluation_interval = \"1s\"\nexternal_labels = {{ cluster = \"c1\" }}\n",
            rules.parent().unwrap().join("*.yml").display().to_string()
        ),
    )
}

#[test]
fn rules_run_answer_the_api_survive_sigkill_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    let file = rules_dir.join("fleet.yml");
    std::fs::write(&file, RULES).unwrap();
    let s = start(dir.path(), &file);

    // Pending first, then firing after `for`.
    let mut saw_pending = false;
    until(
        &s,
        "the alert to fire",
        |s| {
            let a = alerts(s);
            saw_pending |= a.iter().any(|a| a["state"] == "pending");
            a.iter().any(|a| a["state"] == "firing")
        },
        Some(90.0),
    );
    assert!(saw_pending, "the alert was pending before it fired");
    let a = alerts(&s);
    assert_eq!(a.len(), 1, "{a:?}");
    let fired = a[0].clone();
    assert_eq!(fired["labels"]["alertname"], "Hot");
    assert_eq!(fired["labels"]["device"], "d1");
    assert_eq!(fired["labels"]["severity"], "page");
    assert!(fired["labels"].get("__name__").is_none());
    assert_eq!(fired["annotations"]["summary"], "d1 at 90 C");
    assert_eq!(fired["value"], "9e+01");

    // The rules API, as Prometheus shapes it.
    let groups = s.get_json("/api/v1/rules")["data"]["groups"].clone();
    let g = &groups[0];
    assert_eq!(g["name"], "fleet");
    assert_eq!(g["file"], file.display().to_string());
    assert_eq!(g["interval"], 1.0);
    let rules = g["rules"].as_array().unwrap();
    assert_eq!(rules[0]["type"], "recording");
    assert_eq!(rules[0]["name"], "site:temperature_celsius:max");
    assert_eq!(rules[0]["health"], "ok");
    assert_eq!(rules[1]["type"], "alerting");
    assert_eq!(rules[1]["state"], "firing");
    assert_eq!(rules[1]["duration"], 2.0);
    assert_eq!(rules[1]["alerts"][0]["labels"], fired["labels"]);
    let only_alerts = s.get_json("/api/v1/rules?type=alert")["data"]["groups"].clone();
    assert_eq!(only_alerts[0]["rules"].as_array().unwrap().len(), 1);
    let r = s
        .client
        .get(s.url("/api/v1/rules?type=bogus"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Another tenant sees no rules.
    let other: Value = s
        .client
        .get(s.url("/api/v1/rules"))
        .header("X-Scope-OrgID", "other")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(other["data"]["groups"], serde_json::json!([]));

    // What the rules wrote is stored like any series.
    let recorded = s.export("site:temperature_celsius:max");
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].1.iter().all(|(_, v)| *v == 90.0));
    let firing = s.export(r#"ALERTS{alertname="Hot",alertstate="firing"}"#);
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].0["severity"], "page");
    assert_eq!(s.export("ALERTS_FOR_STATE").len(), 1);
    let m = s.metrics();
    assert!(metric(&m, "strata_rule_evaluations_total") >= 3.0);
    assert_eq!(metric(&m, "strata_rule_groups"), 1.0);
    assert_eq!(metric(&m, "strata_rule_config_last_reload_successful"), 1.0);
    assert!(m.contains("strata_alerts{state=\"firing\"} 1"), "{m}");

    // SIGKILL mid-alert: it comes back firing, with the same active time, before any
    // evaluation (the API answers at once from the saved state).
    s.kill9();
    let s = start(dir.path(), &file);
    let a = alerts(&s);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["state"], "firing");
    assert_eq!(a[0]["activeAt"], fired["activeAt"]);

    // Reload: a second file is picked up; the firing alert keeps its state.
    std::fs::write(rules_dir.join("more.yml"), MORE).unwrap();
    let r = s.client.post(s.url("/-/reload")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    let names: Vec<Value> = s.get_json("/api/v1/rules")["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].clone())
        .collect();
    assert_eq!(names, ["fleet", "extra"]);
    assert_eq!(alerts(&s)[0]["activeAt"], fired["activeAt"]);
    // A broken file: 400 naming it, the running rules unchanged.
    std::fs::write(
        rules_dir.join("more.yml"),
        "groups:\n  - name: x\n    rules:\n      - record: 'bad name'\n        expr: up\n",
    )
    .unwrap();
    let r = s.client.post(s.url("/-/reload")).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().unwrap();
    assert!(text.contains("more.yml"), "{text}");
    assert_eq!(
        s.get_json("/api/v1/rules")["data"]["groups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        metric(&s.metrics(), "strata_rule_config_last_reload_successful"),
        0.0
    );
    // SIGHUP reloads too: the file removed, its group goes.
    std::fs::remove_file(rules_dir.join("more.yml")).unwrap();
    let pid = s.child.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    until(
        &s,
        "SIGHUP to reload",
        |s| {
            s.get_json("/api/v1/rules")["data"]["groups"]
                .as_array()
                .unwrap()
                .len()
                == 1
        },
        None,
    );

    // The condition stops: the alert resolves and leaves the alerts API.
    until(
        &s,
        "the alert to resolve",
        |s| alerts(s).is_empty(),
        Some(50.0),
    );
    let rules = s.get_json("/api/v1/rules")["data"]["groups"][0]["rules"].clone();
    assert_eq!(rules[1]["state"], "inactive");
    s.stop();
}

/// A device reports once a second but its readings arrive in batches, eight seconds late at
/// worst. Read at the clock, the last seconds always look empty just before a batch lands, so a
/// rule for missing readings fires falsely; with `final_windows`, rules read only settled
/// windows and it never does.
#[test]
fn final_windows_keep_late_batches_from_firing_alerts() {
    const GAP_RULE: &str = r#"
groups:
  - name: gaps
    interval: 1s
    rules:
      - alert: Silent
        expr: count_over_time(heartbeat[10s]) < 5
"#;
    let start = |dir: &Path, final_windows: bool| {
        let rules = dir.join("gaps.yml");
        std::fs::write(&rules, GAP_RULE).unwrap();
        Server::start(
            dir,
            &format!(
                "partitions = 1\n[rollups]\nwindow = \"10s\"\nout_of_orderness = \"1s\"\nallowed_lateness = \"2s\"\n[alerting]\nrule_files = [{:?}]\nfinal_windows = {final_windows}\n",
                rules.display().to_string()
            ),
        )
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let live = start(d1.path(), false);
    let settled = start(d2.path(), true);
    let t0 = now_ms() / 1000 * 1000;
    // A minute of history first, so the series does not begin inside a rule's range.
    let mut sent = t0 - 60_000;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        // Every reading up to now, as one late batch.
        let now = now_ms();
        let mut samples = Vec::new();
        while sent + 1000 <= now {
            sent += 1000;
            samples.push((sent, 1.0));
        }
        let rows = [(vec![("__name__", "heartbeat"), ("device", "d1")], samples)];
        live.remote_write(&rows);
        settled.remote_write(&rows);
        std::thread::sleep(Duration::from_secs(8));
    }
    let fired = |s: &Server| s.export(r#"ALERTS{alertname="Silent"}"#);
    assert!(
        !fired(&live).is_empty(),
        "read at the clock, the late batches look like silence"
    );
    assert!(fired(&settled).is_empty(), "{:?}", fired(&settled));
    let m = settled.metrics();
    // Finality moves a window (10 s) at a time: one evaluation each, the ticks between wait.
    assert!(metric(&m, "strata_rule_evaluations_total") >= 3.0, "{m}");
    assert!(metric(&m, "strata_rule_evaluations_waiting_final_total") >= 1.0);
    let rules = settled.get_json("/api/v1/rules")["data"]["groups"][0]["rules"][0].clone();
    assert_eq!(rules["health"], "ok", "{rules}");
}
