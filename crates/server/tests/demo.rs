//! `strata serve --demo`, the README's first command: its simulated fleet is registered, so
//! queries group by registry labels the devices never send, fleet status lists them all, and its
//! device rule fires for the warmest.

mod common;

use common::{wait_for, Server};

#[test]
fn the_demo_fleet_is_registered_and_enriched() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), "", &[], &["--demo"]);
    let v = s.get_json("/api/v1/registry/devices?limit=1000");
    assert_eq!(v["data"]["devices"].as_array().unwrap().len(), 100);
    wait_for("every demo device reporting", || {
        s.get_json("/api/v1/devices?limit=1000")["data"]["counts"]["total"] == 100
    });
    wait_for("readings grouped by the registry's model", || {
        let v = s.get_json("/api/v1/query?query=count%20by%20(model)%20(temperature_celsius)");
        let r = v["data"]["result"].as_array().unwrap().clone();
        let mut models: Vec<String> = r
            .iter()
            .filter_map(|x| x["metric"]["model"].as_str().map(str::to_string))
            .collect();
        models.sort();
        models == ["GATEWAY-300", "METER-200", "SENSOR-100"]
    });
    // Its device rule makes the warmest devices alert, so the dashboard's alerts move.
    let rules = s.get_json("/api/v1/alert-rules");
    assert_eq!(rules["data"]["rules"][0]["rule_id"], "demo-warm", "{rules}");
    wait_for("a demo-warm alert firing", || {
        s.get_json("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "demo-warm" && a["state"] == "firing")
    });
    s.stop();
}
