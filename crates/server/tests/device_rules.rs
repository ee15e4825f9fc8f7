//! Device rules end to end: created through `/api/v1/alert-rules` (stored in SQLite, kept across
//! restarts, checked with errors naming the field, tenants apart, configuration rules
//! read-only) and judged by event time: readings delivered twice, out of order and in bursts
//! give one firing and one resolved notification, across a SIGKILL between the two; an offline
//! rule fires `DeviceOffline` for a silent device and resolves when it reports.

mod common;

use common::{now_ms, wait_for as wait, Receiver, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn start(dir: &Path, hook: &str) -> Server {
    Server::start(
        dir,
        &format!(
            r#"partitions = 2
[rollups]
out_of_orderness = "1s"
idle_timeout = "2s"
[[alerting.notifiers]]
name = "ops"
kind = "webhook"
url = "{hook}/hook"
group_by = ["alertname", "device"]
[[alerting.device_rules]]
rule_id = "quiet"
kind = "offline"
device_id = "d9"
interval = "1s"
missed_intervals = 3
"#
        ),
    )
}

fn send(s: &Server, events: &[Value]) {
    let body: String = events.iter().map(|e| e.to_string() + "\n").collect();
    let r = s.post("/api/v1/events", body);
    assert!(r.status().is_success(), "{}", r.text().unwrap());
}

fn event(id: &str, device: &str, t: i64, v: f64) -> Value {
    json!({"event_id": id, "device_id": device, "timestamp": t, "readings": {"temp": v},
           "labels": {"site": "s1"}})
}

fn changes(hook: &Receiver, alertname: &str) -> Vec<String> {
    hook.received()
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            (v["groupLabels"]["alertname"] == alertname)
                .then(|| v["status"].as_str().unwrap().to_string())
        })
        .collect()
}

fn req(s: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = s.client.request(method, s.url(path));
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn device_rules_fire_and_resolve_once_through_duplicates_reordering_and_a_sigkill() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let s = start(dir.path(), &hook.url);

    // The API: create, refuse a duplicate and a bad rule, replace, list, tenants apart.
    let rule = json!({"rule_id": "boiler-hot", "device_group": "{site=\"s1\"}", "metric": "temp",
        "operator": ">", "threshold": 80, "sustained_periods": 3, "clear_threshold": 75,
        "severity": "warning", "notification_channels": ["ops"]});
    let (st, body) = req(&s, Method::POST, "/api/v1/alert-rules", Some(rule.clone()));
    assert_eq!(st, 201, "{body}");
    assert_eq!(
        req(&s, Method::POST, "/api/v1/alert-rules", Some(rule.clone())).0,
        409
    );
    let mut bad = rule.clone();
    bad["rule_id"] = "bad".into();
    bad["operator"] = "=>".into();
    let (st, body) = req(&s, Method::POST, "/api/v1/alert-rules", Some(bad));
    assert_eq!(st, 400);
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    assert_eq!(
        req(&s, Method::POST, "/api/v1/alert-rules", Some(json!("x"))).0,
        400
    );
    let mut critical = rule.clone();
    critical["severity"] = "critical".into();
    let (st, _) = req(
        &s,
        Method::PUT,
        "/api/v1/alert-rules/boiler-hot",
        Some(critical),
    );
    assert_eq!(st, 200);
    let (_, list) = req(&s, Method::GET, "/api/v1/alert-rules", None);
    let rules = list["data"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{list}");
    let hot = rules.iter().find(|r| r["rule_id"] == "boiler-hot").unwrap();
    assert_eq!(hot["severity"], "critical");
    assert_eq!(hot["source"], "api");
    let quiet = rules.iter().find(|r| r["rule_id"] == "quiet").unwrap();
    assert_eq!(quiet["source"], "config");
    assert_eq!(
        req(&s, Method::DELETE, "/api/v1/alert-rules/quiet", None).0,
        409
    );
    assert_eq!(
        req(&s, Method::DELETE, "/api/v1/alert-rules/nothing", None).0,
        404
    );
    let other: Value = s
        .client
        .get(s.url("/api/v1/alert-rules"))
        .header("X-Scope-OrgID", "other")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(other["data"]["rules"], json!([]));

    // Readings a second apart: 70, then above 80 from the second on (the third above fires).
    let t0 = now_ms() - 60_000;
    let values = [
        70.0, 85.0, 86.0, 79.0, 81.0, 82.0, 83.0, 84.0, 78.0, 76.0, 74.0, 73.0,
    ];
    let events: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| event(&format!("e{i}"), "b1", t0 + i as i64 * 1000, *v))
        .collect();
    // The firing part, delivered twice, backwards, in one burst; d9 reports once.
    let mut first: Vec<Value> = events[..8].iter().chain(&events[..8]).cloned().collect();
    first.reverse();
    first.push(event("d9-1", "d9", t0, 1.0));
    send(&s, &first);
    wait("the firing notification", || {
        changes(&hook, "boiler-hot") == ["firing"]
    });
    let alerts = s.get_json("/api/v1/alerts")["data"]["alerts"].clone();
    let hot = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "boiler-hot")
        .cloned()
        .unwrap_or_else(|| panic!("{alerts}"));
    assert_eq!(hot["labels"]["device"], "b1");
    assert_eq!(hot["labels"]["site"], "s1");
    assert_eq!(hot["labels"]["severity"], "critical");
    // d9 has been silent for more than three of its intervals (by event time).
    wait("DeviceOffline to fire", || {
        changes(&hook, "DeviceOffline") == ["firing"]
    });

    // SIGKILL while firing, once the deliveries are recorded (a kill between a receiver's 2xx
    // and that record sends it again: delivery is at least once); the restart replays and
    // restores, and nothing is sent again.
    wait("the deliveries to be recorded", || {
        s.metrics()
            .contains("strata_notifications_queued{notifier=\"ops\",kind=\"webhook\"} 0")
    });
    s.kill9();
    let s = start(dir.path(), &hook.url);
    let (_, list) = req(&s, Method::GET, "/api/v1/alert-rules/boiler-hot", None);
    assert_eq!(
        list["data"]["severity"], "critical",
        "the stored rule is back"
    );
    let alerts = s.get_json("/api/v1/alerts")["data"]["alerts"].clone();
    assert!(
        alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "boiler-hot"),
        "{alerts}"
    );
    // The rest, shuffled in pairs and delivered twice (the first part again too); d9 returns.
    let mut rest: Vec<Value> = events.to_vec();
    for pair in rest.chunks_mut(2) {
        pair.reverse();
    }
    rest.extend(events.iter().cloned());
    rest.push(event("d9-2", "d9", t0 + 11_000, 1.0));
    send(&s, &rest);
    // Later readings of another device move the watermark past them all.
    send(&s, &[event("x-1", "x1", t0 + 30_000, 1.0)]);
    wait("the resolved notification", || {
        changes(&hook, "boiler-hot").len() >= 2
    });
    wait("DeviceOffline to resolve", || {
        changes(&hook, "DeviceOffline").len() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(changes(&hook, "boiler-hot"), ["firing", "resolved"]);
    // d9 fell silent again after its return (by event time, or by the clock its idle shard
    // follows): each episode fires once and resolves once.
    let offline = changes(&hook, "DeviceOffline");
    assert_eq!(offline[..2], ["firing", "resolved"]);
    assert!(offline.windows(2).all(|w| w[0] != w[1]), "{offline:?}");
    let m = s.metrics();
    assert!(m.contains("strata_device_rules 2"), "{m}");
    // Deleting the rule: it is gone from the API and the alerts.
    assert_eq!(
        req(&s, Method::DELETE, "/api/v1/alert-rules/boiler-hot", None).0,
        204
    );
    assert_eq!(
        req(&s, Method::GET, "/api/v1/alert-rules/boiler-hot", None).0,
        404
    );
}
