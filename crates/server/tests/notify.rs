//! Notifications end to end: a real Alertmanager (Debian's `prometheus-alertmanager`, started
//! here on loopback) delivers one firing and one resolved notification across a SIGKILL of
//! Strata mid-alert; webhook, Slack and PagerDuty receivers (local HTTP servers that record what
//! they are sent) get each state change once, in their own formats, through retries
//! (`Retry-After` honoured), a refusal, and a SIGKILL while a notification was still queued.

mod common;

use common::{now_ms, Receiver, Server};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RULES: &str = r#"
groups:
  - name: fleet
    interval: 1s
    rules:
      - alert: Hot
        expr: temperature_celsius > 80
        labels:
          severity: page
        annotations:
          summary: '{{ $labels.device }} is hot'
"#;

fn write(s: &Server, v: f64) {
    s.remote_write(&[(
        vec![("__name__", "temperature_celsius"), ("device", "d1")],
        vec![(now_ms(), v)],
    )]);
}

/// Feeds `v` until `f` holds.
fn feed_until(s: &Server, v: f64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        write(s, v);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start(dir: &Path, notifiers: &str) -> Server {
    let rules = dir.join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    Server::start(
        dir,
        &format!(
            "partitions = 1\n[alerting]\nrule_files = [{:?}]\n{notifiers}",
            rules.display().to_string()
        ),
    )
}

fn json(r: &common::Received) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

struct Alertmanager(Child);

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_alertmanager(dir: &Path, hook: &str) -> Option<(Alertmanager, String)> {
    let bin = ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())?;
    let port = common::free_port();
    let cfg = dir.join("am.yml");
    std::fs::write(
        &cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}/am\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let am = Alertmanager(child);
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client
            .get(format!("{url}/-/ready"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return Some((am, url));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("alertmanager did not become ready");
}

fn statuses(got: &[common::Received]) -> Vec<String> {
    got.iter()
        .map(|r| json(r)["status"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn alertmanager_notifies_firing_and_resolved_once_each_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let Some((_am, am_url)) = start_alertmanager(dir.path(), &hook.url) else {
        eprintln!("skipping: prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)");
        return;
    };
    let notifiers = format!(
        "[[alerting.notifiers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = {am_url:?}\n"
    );
    let s = start(dir.path(), &notifiers);
    feed_until(&s, 90.0, "Alertmanager's firing notification", || {
        !hook.received().is_empty()
    });
    let first = json(&hook.received()[0]);
    assert_eq!(first["status"], "firing");
    assert_eq!(first["alerts"][0]["labels"]["device"], "d1");
    assert_eq!(first["alerts"][0]["annotations"]["summary"], "d1 is hot");
    assert!(first["alerts"][0]["generatorURL"]
        .as_str()
        .unwrap()
        .contains("/graph?g0.expr="));
    // SIGKILL mid-alert; the restarted server restores the alert and goes on evaluating it.
    s.kill9();
    let s = start(dir.path(), &notifiers);
    let until = Instant::now() + Duration::from_secs(5);
    feed_until(&s, 90.0, "five seconds of evaluations", || {
        Instant::now() > until
    });
    feed_until(&s, 50.0, "Alertmanager's resolved notification", || {
        hook.received().len() >= 2
    });
    // Alertmanager's group interval passes a few times: nothing more arrives.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(statuses(&hook.received()), ["firing", "resolved"]);
    let m = s.metrics();
    assert!(
        m.contains("strata_notifications_sent_total{notifier=\"am\",kind=\"alertmanager\"}"),
        "{m}"
    );
}

#[test]
fn webhook_slack_and_pagerduty_get_each_change_once_through_retries_and_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, slack, pd, picky) = (
        Receiver::start(),
        Receiver::start(),
        Receiver::start(),
        Receiver::start(),
    );
    hook.answer(&[503, 503]);
    slack.answer(&[429]);
    pd.answer(&[500]);
    picky.answer(&[400]);
    let notifiers = format!(
        r#"
[[alerting.notifiers]]
name = "hook"
kind = "webhook"
url = "{}/hook"
[[alerting.notifiers]]
name = "chat"
kind = "slack"
url = "{}/slack"
channel = "ops-alerts"
[[alerting.notifiers]]
name = "pager"
kind = "pagerduty"
url = "{}/v2/enqueue"
routing_key = "key-1"
match = '{{severity="page"}}'
[[alerting.notifiers]]
name = "picky"
kind = "webhook"
url = "{}/picky"
[[alerting.notifiers]]
name = "nobody"
kind = "webhook"
url = "{}/nobody"
match = '{{severity="ticket"}}'
"#,
        hook.url, slack.url, pd.url, picky.url, hook.url
    );
    let s = start(dir.path(), &notifiers);
    feed_until(&s, 90.0, "every firing notification", || {
        !hook.received().is_empty() && !slack.received().is_empty() && !pd.received().is_empty()
    });
    let w = json(&hook.received()[0]);
    assert_eq!(hook.received()[0].path, "/hook");
    assert_eq!(w["version"], "4");
    assert_eq!(w["status"], "firing");
    assert_eq!(w["receiver"], "hook");
    assert_eq!(w["groupLabels"], serde_json::json!({"alertname": "Hot"}));
    assert_eq!(w["alerts"][0]["labels"]["device"], "d1");
    let sl = json(&slack.received()[0]);
    assert!(
        sl["text"].as_str().unwrap().starts_with("[FIRING:1] Hot"),
        "{sl}"
    );
    assert_eq!(sl["channel"], "ops-alerts");
    let p = json(&pd.received()[0]);
    assert_eq!(p["event_action"], "trigger");
    assert_eq!(p["routing_key"], "key-1");
    assert_eq!(p["payload"]["severity"], "critical");
    let dedup = p["dedup_key"].clone();
    let m = s.metrics();
    assert!(
        m.contains("strata_notifications_retried_total{notifier=\"hook\",kind=\"webhook\"} 2"),
        "{m}"
    );
    let refused = |m: &str| {
        m.contains("strata_notifications_failed_total{notifier=\"picky\",kind=\"webhook\"} 1")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(&s.metrics()) {
        assert!(Instant::now() < deadline, "the refusal was not counted");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The webhook goes down; the resolution waits in the outbox; Strata is killed.
    hook.answer(&[503; 1000]);
    // Killed once the others took their resolution and recorded it (a kill between a 2xx
    // and that record sends the notification again: delivery is at least once).
    let queued = |m: &str, n: &str, k: &str, q: u32| {
        m.contains(&format!(
            "strata_notifications_queued{{notifier=\"{n}\",kind=\"{k}\"}} {q}"
        ))
    };
    feed_until(
        &s,
        50.0,
        "the resolution queued for the webhook alone",
        || {
            let m = s.metrics();
            queued(&m, "hook", "webhook", 1)
                && queued(&m, "chat", "slack", 0)
                && queued(&m, "pager", "pagerduty", 0)
                && queued(&m, "picky", "webhook", 0)
                && slack.received().len() == 2
                && pd.received().len() == 2
        },
    );
    s.kill9();
    hook.script.lock().unwrap().clear();
    let s = start(dir.path(), &notifiers);
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.received().len() < 2 || slack.received().len() < 2 || pd.received().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "resolutions not delivered after the restart"
        );
        write(&s, 50.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    // More evaluations pass: nothing is sent again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(statuses(&hook.received()), ["firing", "resolved"]);
    let texts: Vec<String> = slack
        .received()
        .iter()
        .map(|r| json(r)["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].starts_with("[RESOLVED] Hot"), "{texts:?}");
    let pds: Vec<Value> = pd.received().iter().map(json).collect();
    assert_eq!(pds.len(), 2);
    assert_eq!(pds[1]["event_action"], "resolve");
    assert_eq!(pds[1]["dedup_key"], dedup);
    // The picky receiver refused the firing one and took the resolution.
    assert_eq!(statuses(&picky.received()), ["resolved"]);
    // Nothing matched the "nobody" notifier (its URL is the webhook's, at another path).
    assert!(hook.received().iter().all(|r| r.path == "/hook"));
}
