//! The device registry through the real server: CRUD, lists with filters and cursors, bulk
//! import (NDJSON, CSV) all or nothing, tenants apart, hostile bodies answered with a 4xx naming
//! the problem, enrichment of ingested series with registry labels (and a registry change
//! applied to the next samples), and the policies for unknown or inactive devices (quarantine,
//! reject); the registry survives a restart.

mod common;

use common::{metric, now_ms, Server};
use serde_json::{json, Value};

fn send(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    tenant: Option<&str>,
    ctype: &str,
    body: String,
) -> (u16, Value) {
    let mut r = s
        .client
        .request(method, s.url(path))
        .header("Content-Type", ctype);
    if let Some(t) = tenant {
        r = r.header("X-Scope-OrgID", t);
    }
    let resp = r.body(body).send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn json_req(s: &Server, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    send(s, method, path, None, "application/json", body.to_string())
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

/// The labels of the series of `metric` for `device`, in tenant `tenant`.
fn labels_of(s: &Server, tenant: Option<&str>, selector: &str) -> Vec<Value> {
    s.export_as(selector, tenant)
        .into_iter()
        .map(|(l, _)| l)
        .collect()
}

fn event(device: &str, t: i64, v: f64) -> String {
    format!(r#"{{"device_id":"{device}","timestamp":{t},"readings":{{"temperature":{v}}}}}"#)
}

#[test]
fn the_registry_answers_enriches_and_keeps_unknown_devices_apart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[registry]
enrich = ["site", "type", "building"]
unknown_devices = "quarantine"
"#;
    let s = Server::start(dir.path(), cfg);
    use reqwest::Method;
    let d1 = json!({"id": "d1", "site": "s1", "type": "boiler", "expected_interval": "10s",
                    "labels": {"building": "b7"}});
    assert_eq!(
        json_req(&s, Method::POST, "/api/v1/registry/devices", d1.clone()).0,
        201
    );
    let (st, v) = json_req(&s, Method::POST, "/api/v1/registry/devices", d1.clone());
    assert_eq!(st, 409, "{v}");
    assert!(error_of(&v).contains("d1"));
    let got = s.get_json("/api/v1/registry/devices/d1");
    assert_eq!(got["data"]["site"], "s1");
    assert_eq!(got["data"]["active"], true);
    // Another tenant sees none of it.
    let (st, _) = send(
        &s,
        Method::GET,
        "/api/v1/registry/devices/d1",
        Some("acme"),
        "",
        String::new(),
    );
    assert_eq!(st, 404);

    // Hostile and malformed bodies: a 4xx naming the problem.
    for (body, want) in [
        ("{".to_string(), "not JSON"),
        ("[1,2]".to_string(), "JSON object"),
        (json!({"id": "x", "colour": "red"}).to_string(), "colour"),
        (
            json!({"id": "x", "expected_interval": "often"}).to_string(),
            "expected_interval",
        ),
        (
            json!({"id": "x", "labels": {"__name__": "m"}}).to_string(),
            "label name",
        ),
        (
            json!({"id": "x", "site": "s".repeat(5000)}).to_string(),
            "site is",
        ),
        (json!({"site": "s1"}).to_string(), "id"),
        (json!({"id": "x", "active": "yes"}).to_string(), "active"),
    ] {
        let (st, v) = send(
            &s,
            Method::POST,
            "/api/v1/registry/devices",
            None,
            "application/json",
            body.clone(),
        );
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).contains(want), "{want}: {v}");
    }
    let (st, v) = json_req(
        &s,
        Method::PUT,
        "/api/v1/registry/devices/d1",
        json!({"id": "d2"}),
    );
    assert_eq!(st, 400);
    assert!(error_of(&v).contains("differs"), "{v}");
    let big = "x".repeat((2 << 20) + 50_000);
    let (st, _) = send(
        &s,
        Method::POST,
        "/api/v1/registry/devices",
        None,
        "application/json",
        big,
    );
    assert_eq!(st, 413);

    // Bulk import: NDJSON and CSV, all or nothing.
    let ndjson: String = (0..30)
        .map(|i| {
            json!({"id": format!("n{i:02}"), "site": if i % 3 == 0 { "s1" } else { "s2" },
                   "type": "pump"})
            .to_string()
                + "\n"
        })
        .collect();
    let (st, v) = send(
        &s,
        Method::POST,
        "/api/v1/registry/devices/import",
        None,
        "application/x-ndjson",
        ndjson,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["created"], 30);
    let csv = "id,site,type,active,labels.building\nc1,s3,meter,true,b1\nc2,s3,meter,false,\n";
    let (st, v) = send(
        &s,
        Method::POST,
        "/api/v1/registry/devices/import",
        None,
        "text/csv",
        csv.into(),
    );
    assert_eq!(st, 200, "{v}");
    for (body, ctype, want) in [
        ("id,colour\nz1,red\n", "text/csv", "colour"),
        ("site\ns1\n", "text/csv", "no id column"),
        ("id,active\nz1,maybe\n", "text/csv", "active"),
        ("id,site\nz1\n", "text/csv", "CSV line 2"),
        (
            "{\"id\":\"z1\"}\n{\"id\":\n",
            "application/x-ndjson",
            "line 2",
        ),
        (
            "{\"id\":\"z1\"}\n{\"id\":\"z1\"}\n",
            "application/x-ndjson",
            "twice",
        ),
        (
            "{\"id\":\"z1\",\"provisioned\":\"soon\"}\n",
            "application/x-ndjson",
            "provisioned",
        ),
        ("", "application/x-ndjson", "no devices"),
    ] {
        let (st, v) = send(
            &s,
            Method::POST,
            "/api/v1/registry/devices/import",
            None,
            ctype,
            body.into(),
        );
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).contains(want), "{want}: {v}");
    }
    let (st, _) = send(
        &s,
        Method::POST,
        "/api/v1/registry/devices/import",
        None,
        "application/xml",
        "<a/>".into(),
    );
    assert_eq!(st, 415);
    let (st, _) = send(
        &s,
        Method::GET,
        "/api/v1/registry/devices/z1",
        None,
        "",
        String::new(),
    );
    assert_eq!(st, 404, "z1 stored by a refused import");

    // Lists: filters and cursors.
    let mut seen = Vec::new();
    let mut path = "/api/v1/registry/devices?site=s2&type=pump&limit=7".to_string();
    loop {
        let v = s.get_json(&path);
        seen.extend(
            v["data"]["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string()),
        );
        match v["data"]["next_cursor"].as_str() {
            Some(c) => {
                path = format!("/api/v1/registry/devices?site=s2&type=pump&limit=7&cursor={c}")
            }
            None => break,
        }
    }
    let want: Vec<String> = (0..30)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("n{i:02}"))
        .collect();
    assert_eq!(seen, want);
    let v = s.get_json("/api/v1/registry/devices?active=false");
    assert_eq!(v["data"]["devices"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=x", "active=maybe"] {
        let (st, v) = send(
            &s,
            Method::GET,
            &format!("/api/v1/registry/devices?{bad}"),
            None,
            "",
            String::new(),
        );
        assert_eq!(st, 400, "{bad}: {v}");
    }

    // Enrichment: the registry's labels on the device's series, its own labels kept.
    let t = now_ms() - 60_000;
    let body = [
        event("d1", t, 1.0),
        r#"{"device_id":"n00","timestamp":TS,"readings":{"temperature":2},"labels":{"site":"own"}}"#.replace("TS", &t.to_string()),
        event("ghost", t, 3.0),
        event("c2", t, 4.0),
    ]
    .join("\n");
    let r = s.post("/api/v1/events", body);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let l = labels_of(&s, None, r#"temperature{device="d1"}"#);
    assert_eq!(l.len(), 1);
    assert_eq!(
        (
            l[0]["site"].as_str(),
            l[0]["type"].as_str(),
            l[0]["building"].as_str()
        ),
        (Some("s1"), Some("boiler"), Some("b7"))
    );
    let l = labels_of(&s, None, r#"temperature{device="n00"}"#);
    assert_eq!(
        (l[0]["site"].as_str(), l[0]["type"].as_str()),
        (Some("own"), Some("pump"))
    );
    // Unknown and inactive devices: kept apart, in the quarantine tenant.
    assert!(labels_of(&s, None, r#"temperature{device=~"ghost|c2"}"#).is_empty());
    assert_eq!(
        labels_of(
            &s,
            Some("default.quarantine"),
            r#"temperature{device=~"ghost|c2"}"#
        )
        .len(),
        2
    );
    assert_eq!(
        metric(&s.metrics(), "strata_registry_quarantined_samples_total"),
        2.0
    );
    // A change applies to the next samples.
    assert_eq!(
        json_req(
            &s,
            Method::PUT,
            "/api/v1/registry/devices/d1",
            json!({"site": "s9", "type": "boiler"})
        )
        .0,
        200
    );
    let r = s.post("/api/v1/events", event("d1", t + 1000, 5.0));
    assert_eq!(r.status(), 200);
    let mut sites: Vec<String> = labels_of(&s, None, r#"temperature{device="d1"}"#)
        .iter()
        .map(|l| l["site"].as_str().unwrap().to_string())
        .collect();
    sites.sort();
    assert_eq!(sites, ["s1", "s9"]);
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            "/api/v1/registry/devices/n29",
            None,
            "",
            String::new()
        )
        .0,
        200
    );
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            "/api/v1/registry/devices/n29",
            None,
            "",
            String::new()
        )
        .0,
        404
    );
    s.stop();

    // Restarted with the reject policy: the registry is still there, unknown devices refused by
    // name, the known rest stored.
    let s = Server::start(dir.path(), "[registry]\nunknown_devices = \"reject\"\n");
    assert_eq!(
        s.get_json("/api/v1/registry/devices/d1")["data"]["site"],
        "s9"
    );
    let r = s.post(
        "/api/v1/events",
        [event("n01", t, 6.0), event("ghost2", t, 7.0)].join("\n"),
    );
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(
        error_of(&v).contains("ghost2") && error_of(&v).contains("unknown_devices"),
        "{v}"
    );
    assert_eq!(v["accepted"], 1);
    assert_eq!(labels_of(&s, None, r#"temperature{device="n01"}"#).len(), 1);
    assert!(labels_of(&s, None, r#"temperature{device="ghost2"}"#).is_empty());
    s.stop();
}
