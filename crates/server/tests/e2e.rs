//! End to end: the real binary on a loopback port, every write protocol, every read endpoint,
//! tenants, duplicates, out-of-order data, and restart with replay.

mod common;
use common::*;
use serde_json::json;

#[test]
fn protocols_reads_tenants_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let t0 = now_ms() - 60_000;

    // Remote write, exactly as Prometheus encodes it; samples deliberately out of order.
    let body = remote_write_body(&[
        (
            vec![("__name__", "up"), ("job", "node"), ("instance", "a:9100")],
            vec![(t0 + 2000, 1.0), (t0, 0.0), (t0 + 1000, 1.0)],
        ),
        (
            vec![("__name__", "up"), ("job", "node"), ("instance", "b:9100")],
            vec![(t0, 1.0)],
        ),
    ]);
    let r = s
        .client
        .post(s.url("/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().unwrap());

    // Influx line protocol, ms precision: field `value` -> metric name, other fields -> m_f.
    let lines =
        format!("weather,site=s1 value=21.5 {t0}\nweather,site=s1 humidity=40i,ok=true {t0}\n");
    let r = s.post("/write?precision=ms", lines);
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().unwrap());

    // JSON events, with an event id that is then redelivered.
    let ev = json!({"event_id": "e-1", "device_id": "d1", "timestamp": t0, "readings": {"temperature": 23.4}, "labels": {"site": "s1"}});
    let r = s.post("/api/v1/events", ev.to_string());
    assert_eq!(r.status().as_u16(), 200);
    let again = json!({"event_id": "e-1", "device_id": "d1", "timestamp": t0 + 5, "readings": {"temperature": 99.0}, "labels": {"site": "s1"}});
    let r: serde_json::Value = s.post("/api/v1/events", again.to_string()).json().unwrap();
    assert_eq!(r["duplicate_events"], 1, "{r}");

    let up = s.export(r#"up{instance="a:9100"}"#);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, vec![(t0, 0.0), (t0 + 1000, 1.0), (t0 + 2000, 1.0)]);
    assert_eq!(
        up[0].0,
        json!({"__name__": "up", "instance": "a:9100", "job": "node"})
    );
    assert_eq!(s.export("weather")[0].1, vec![(t0, 21.5)]);
    assert_eq!(s.export("weather_humidity")[0].1, vec![(t0, 40.0)]);
    assert_eq!(s.export("weather_ok")[0].1, vec![(t0, 1.0)]);
    let temp = s.export("temperature");
    assert_eq!(
        temp[0].1,
        vec![(t0, 23.4)],
        "redelivered event must not be stored"
    );
    assert_eq!(
        temp[0].0,
        json!({"__name__": "temperature", "device": "d1", "site": "s1"})
    );

    // Exact repeat: dropped and counted; conflicting value: last write wins.
    let same = remote_write_body(&[(
        vec![("__name__", "up"), ("job", "node"), ("instance", "b:9100")],
        vec![(t0, 1.0)],
    )]);
    assert_eq!(s.post("/api/v1/write", same).status().as_u16(), 204);
    let newer = remote_write_body(&[(
        vec![("__name__", "up"), ("job", "node"), ("instance", "b:9100")],
        vec![(t0, 0.5)],
    )]);
    assert_eq!(s.post("/api/v1/write", newer).status().as_u16(), 204);
    assert_eq!(s.export(r#"up{instance="b:9100"}"#)[0].1, vec![(t0, 0.5)]);
    let metrics = s.metrics();
    assert!(
        metrics.contains("strata_ingest_duplicate_samples_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("strata_ingest_duplicate_events_total 1"));
    let fsyncs = metric(&metrics, "strata_log_fsync_seconds_count") as u64;
    assert!(
        fsyncs >= 5,
        "every acknowledged write was fsynced: {fsyncs}"
    );
    assert!(metrics.contains(&format!(
        "strata_log_fsync_seconds_bucket{{le=\"+Inf\"}} {fsyncs}"
    )));
    assert!(
        metrics.contains("strata_ingest_samples_total{protocol=\"remote_write\"} 5"),
        "{metrics}"
    );

    // Series, labels, label values, with matchers of every kind.
    let series = s.get_json("/api/v1/series?match[]=up{instance=~\"a.*\"}");
    assert_eq!(
        series["data"],
        json!([{"__name__": "up", "instance": "a:9100", "job": "node"}])
    );
    let series = s.get_json("/api/v1/series?match[]=up{instance!=\"a:9100\"}&match[]=weather");
    assert_eq!(series["data"].as_array().unwrap().len(), 2);
    let names = s.get_json("/api/v1/labels");
    for n in ["__name__", "device", "instance", "job", "site"] {
        assert!(
            names["data"].as_array().unwrap().contains(&json!(n)),
            "{names}"
        );
    }
    let values = s.get_json("/api/v1/label/__name__/values");
    assert_eq!(
        values["data"],
        json!([
            "temperature",
            "up",
            "weather",
            "weather_humidity",
            "weather_ok"
        ])
    );
    let values = s.get_json("/api/v1/label/instance/values?match[]=up{instance!~\"b.*\"}");
    assert_eq!(values["data"], json!(["a:9100"]));
    let info = s.get_json("/api/v1/status/buildinfo");
    assert_eq!(info["status"], "success");
    assert!(info["data"]["version"].is_string());

    // Tenants never see each other's data.
    let r = s
        .client
        .post(s.url("/write?precision=ms"))
        .header("X-Scope-OrgID", "acme")
        .body(format!("weather,site=s9 value=1 {t0}\n"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(s.export_as("weather", Some("acme")).len(), 1);
    assert_eq!(s.export_as("weather", Some("acme"))[0].0["site"], "s9");
    assert_eq!(s.export("weather").len(), 1);
    assert_eq!(s.export("weather")[0].0["site"], "s1");
    assert!(s.export_as("up", Some("acme")).is_empty());

    // Half the data flushed into blocks, half only in the log; then a clean restart.
    s.flush();
    let late = format!("weather,site=s1 value=22 {}\n", t0 + 10_000);
    assert_eq!(s.post("/write?precision=ms", late).status().as_u16(), 204);
    s.stop();
    let s = Server::start(dir.path(), "");
    assert_eq!(
        s.export("weather")[0].1,
        vec![(t0, 21.5), (t0 + 10_000, 22.0)]
    );
    assert_eq!(s.export(r#"up{instance="a:9100"}"#)[0].1.len(), 3);
    assert_eq!(s.export_as("weather", Some("acme")).len(), 1);
    // Redelivery is still recognised after the restart.
    let r: serde_json::Value = s.post("/api/v1/events", again.to_string()).json().unwrap();
    assert_eq!(r["duplicate_events"], 1, "{r}");
    s.kill9();
    // And after SIGKILL, replay from the log brings everything back.
    let s = Server::start(dir.path(), "");
    assert_eq!(
        s.export("weather")[0].1,
        vec![(t0, 21.5), (t0 + 10_000, 22.0)]
    );
    assert_eq!(s.export("temperature")[0].1, vec![(t0, 23.4)]);
}

#[test]
fn retention_refuses_old_samples() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "retention = \"1h\"\n");
    let now = now_ms();
    let body = format!("m value=1 {}\nm value=2 {}\n", now - 2 * 3_600_000, now);
    let r = s.post("/write?precision=ms", body);
    assert_eq!(r.status().as_u16(), 400);
    let e: serde_json::Value = r.json().unwrap();
    assert_eq!(e["accepted"], 1);
    assert_eq!(e["rejected"], 1);
    assert!(e["error"].as_str().unwrap().contains("line 1"), "{e}");
    assert!(e["error"].as_str().unwrap().contains("retention"), "{e}");
    assert_eq!(s.export("m")[0].1, vec![(now, 2.0)]);
}
