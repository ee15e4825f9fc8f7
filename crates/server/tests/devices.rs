//! Device shadows and fleet status through the real server, with rollups off (shadows live
//! apart from them): reported from telemetry, desired with versions (a stale version gets 409),
//! delta, hostile bodies answered with a 400 naming the problem; fleet lists with filters,
//! statuses by expected interval and cursors; shadows and desired state through a SIGKILL.

mod common;

use common::{now_ms, Server};
use serde_json::{json, Value};

fn patch(s: &Server, id: &str, body: &str) -> (u16, Value) {
    let r = s
        .client
        .patch(s.url(&format!("/api/v1/devices/{id}/shadow")))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = s.client.get(s.url(path)).send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn shadows_and_fleet_status_without_rollups_through_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        "[rollups]\nenabled = false\n[devices]\nexpected_interval = \"1m\"\noffline_after = 3\n";
    let s = Server::start(dir.path(), cfg);
    let now = now_ms();
    // d3 reports hourly (registry): 30 minutes of silence is still online.
    let r = s.post(
        "/api/v1/registry/devices",
        json!({"id": "d3", "site": "s1", "type": "meter", "expected_interval": "1h"}).to_string(),
    );
    assert_eq!(r.status(), 201);
    // d0 is registered and has never reported: offline, never seen.
    let r = s.post(
        "/api/v1/registry/devices",
        json!({"id": "d0", "site": "s2", "type": "pump"}).to_string(),
    );
    assert_eq!(r.status(), 201);
    let events = [
        json!({"device_id": "d1", "timestamp": now - 5_000, "readings": {"temperature": 20.5, "valve_open": true}, "labels": {"site": "s1"}}),
        json!({"device_id": "d1", "timestamp": now - 60_000, "readings": {"temperature": 99.0}, "labels": {"site": "s1"}}),
        json!({"device_id": "d2", "timestamp": now - 600_000, "readings": {"temperature": 18.0}, "labels": {"site": "s2"}}),
        json!({"device_id": "d3", "timestamp": now - 1_800_000, "readings": {"kwh": 1234.0}}),
    ];
    let body: String = events.iter().map(|e| e.to_string() + "\n").collect();
    assert_eq!(s.post("/api/v1/events", body).status(), 200);

    // Latest works with rollups off, from the shadow (a late, older reading does not win).
    let (st, v) = get(&s, "/api/v1/devices/d1/latest");
    assert_eq!(st, 200, "{v}");
    let temp = v["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"]["__name__"] == "temperature")
        .unwrap()
        .clone();
    assert_eq!(temp["value"], 20.5);

    // The shadow: reported, then desired with versions, and the delta between them.
    let (st, v) = get(&s, "/api/v1/devices/d1/shadow");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["state"]["reported"]["temperature"], 20.5);
    assert_eq!(
        v["data"]["metadata"]["reported"]["temperature"]["timestamp"],
        now - 5_000
    );
    assert_eq!(v["data"]["version"], 0);
    let (st, v) = patch(
        &s,
        "d1",
        r#"{"state":{"desired":{"temperature":22,"valve_open":true,"mode":"eco"}},"version":0}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["version"], 1);
    assert_eq!(
        v["data"]["state"]["delta"],
        json!({"temperature": 22, "mode": "eco"})
    );
    let (st, v) = patch(
        &s,
        "d1",
        r#"{"state":{"desired":{"temperature":23}},"version":0}"#,
    );
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("current version 1"),
        "{v}"
    );
    let (st, v) = patch(
        &s,
        "d1",
        r#"{"state":{"desired":{"temperature":20.5,"mode":null}},"version":1}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["state"]["delta"], json!({}));
    assert_eq!(
        v["data"]["state"]["desired"],
        json!({"temperature": 20.5, "valve_open": true})
    );
    assert_eq!(get(&s, "/api/v1/devices/nobody/shadow").0, 404);
    for (body, want) in [
        ("{", "not JSON"),
        ("[]", "must be"),
        (r#"{"state":{"desired":{"a":1}},"colour":1}"#, "colour"),
        (r#"{"state":{"reported":{"a":1}}}"#, "reported"),
        (r#"{"state":{"desired":{"a":1}},"version":-1}"#, "version"),
        (
            r#"{"state":{"desired":{"a":1}},"version":"one"}"#,
            "version",
        ),
        (r#"{"state":{"desired":{}}}"#, "no fields"),
        (r#"{"state":{"desired":5}}"#, "state.desired"),
        (r#"{"state":{"wanted":{"a":1}}}"#, "state.wanted"),
    ] {
        let (st, v) = patch(&s, "d1", body);
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{want}: {v}");
    }
    let big = format!(
        r#"{{"state":{{"desired":{{"blob":"{}"}}}}}}"#,
        "x".repeat(20_000)
    );
    let (st, v) = patch(&s, "d1", &big);
    assert_eq!(st, 400, "{v}");

    // Fleet status: d2 offline (10 min of silence, 1 min interval), d0 offline (never seen),
    // d1 and d3 online.
    let (st, v) = get(&s, "/api/v1/devices");
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), ["d0", "d1", "d2", "d3"]);
    let c = &v["data"]["counts"];
    assert_eq!(
        (
            c["online"].as_u64(),
            c["offline"].as_u64(),
            c["total"].as_u64()
        ),
        (Some(2), Some(2), Some(4))
    );
    assert_eq!(c["by_site"]["s1"], json!({"online": 2, "offline": 0}));
    assert_eq!(c["by_site"]["s2"], json!({"online": 0, "offline": 2}));
    let d0 = &v["data"]["devices"][0];
    assert_eq!(
        (d0["status"].as_str(), d0["type"].as_str()),
        (Some("offline"), Some("pump"))
    );
    assert_eq!(
        (&d0["last_seen"], &d0["readings"]),
        (&json!(null), &json!({}))
    );
    let d1 = &v["data"]["devices"][1];
    assert_eq!(
        (d1["status"].as_str(), d1["site"].as_str()),
        (Some("online"), Some("s1"))
    );
    assert_eq!(d1["readings"]["temperature"], 20.5);
    assert_eq!(d1["last_seen"], now - 5_000);
    assert_eq!(v["data"]["devices"][3]["type"], "meter");
    assert_eq!(
        ids(&get(&s, "/api/v1/devices?status=offline").1),
        ["d0", "d2"]
    );
    assert_eq!(ids(&get(&s, "/api/v1/devices?site=s2&type=pump").1), ["d0"]);
    assert_eq!(
        ids(&get(&s, "/api/v1/devices?site=s1&status=online").1),
        ["d1", "d3"]
    );
    assert_eq!(ids(&get(&s, "/api/v1/devices?type=meter").1), ["d3"]);
    let mut seen = Vec::new();
    let mut path = "/api/v1/devices?limit=1".to_string();
    loop {
        let (_, v) = get(&s, &path);
        seen.extend(ids(&v));
        match v["data"]["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/devices?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["d0", "d1", "d2", "d3"]);
    for bad in ["status=asleep", "limit=0", "limit=100000", "limit=x"] {
        let (st, v) = get(&s, &format!("/api/v1/devices?{bad}"));
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let r = s
        .client
        .get(s.url("/api/v1/devices"))
        .header("X-Scope-OrgID", "acme")
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert!(ids(&v).is_empty(), "tenants apart: {v}");

    // SIGKILL: the shadows come back from the log, the desired state from the database.
    s.kill9();
    let s = Server::start(dir.path(), cfg);
    let (st, v) = get(&s, "/api/v1/devices/d1/shadow");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["state"]["reported"]["temperature"], 20.5);
    assert_eq!(v["data"]["version"], 2);
    assert_eq!(ids(&get(&s, "/api/v1/devices").1), ["d0", "d1", "d2", "d3"]);
    s.stop();
}
