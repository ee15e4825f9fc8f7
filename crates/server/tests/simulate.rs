//! The simulated fleet against the real server: its events arrive, and its redeliveries are
//! recognised.

mod common;
use common::*;
use std::process::Command;

#[test]
fn simulated_fleet_data_flows_and_redeliveries_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let status = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "simulate",
            "--url",
            &s.base,
            "--sites",
            "2",
            "--devices-per-site",
            "10",
            "--interval",
            "1s",
            "--duration",
            "3s",
        ])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let temps = s.export("temperature_celsius");
    assert_eq!(temps.len(), 20, "one series per device");
    assert!(temps
        .iter()
        .all(|(m, _)| m["site"].as_str().unwrap().starts_with("site-")));
    let metrics = s.metrics();
    let dup_events = metric(&metrics, "strata_ingest_duplicate_events_total");
    assert!(
        dup_events > 0.0,
        "the fleet redelivers events and they must be recognised"
    );
    let values = s.get_json("/api/v1/label/__name__/values");
    for m in [
        "battery_percent",
        "energy_wh_total",
        "error_code",
        "humidity_percent",
        "power_watts",
        "temperature_celsius",
    ] {
        assert!(
            values["data"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(m)),
            "{m}"
        );
    }
}
