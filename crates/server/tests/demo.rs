//! `strata serve --demo`, the README's first command: its simulated fleet is registered, so
//! queries group by registry labels the devices never send, and fleet status lists them all.

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
    s.stop();
}
