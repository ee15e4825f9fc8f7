//! A rule group evaluated through Strata's PromQL engine over stored samples: a recording
//! rule's output is seen by the alerting rule after it in the same evaluation; the alert is
//! pending, then firing after its `for`, with expanded labels and annotations, `ALERTS` and
//! `ALERTS_FOR_STATE` written, then resolved; a failing rule does not stop the others.

use std::sync::Arc;
use strata_alert::group::{External, GroupState, Written};
use strata_alert::parse_rule_file;
use strata_alert::query::Querier;
use strata_alert::state::AlertState;
use strata_model::{Labels, Sample, Tenant};
use strata_promql::{Engine, EngineOptions, MemStorage, QueryContext, Value};

const MIN: i64 = 60_000;
const T0: i64 = 1_700_000_000_000;

const RULES: &str = r#"
groups:
  - name: fleet
    labels:
      team: ops
    rules:
      - record: site:temperature_celsius:max
        expr: max by (site) (temperature_celsius)
      - alert: SiteHot
        expr: site:temperature_celsius:max > 80
        for: 2m
        labels:
          severity: '{{ if eq $labels.site "s1" }}page{{ else }}ticket{{ end }}'
        annotations:
          summary: '{{ $labels.site }} at {{ $value }} C'
      - record: broken
        expr: label_replace(temperature_celsius, "device", "x", "", "")
"#;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

#[test]
fn a_group_records_then_alerts_from_what_it_recorded() {
    let store = Arc::new(MemStorage::new());
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let tenant = Tenant::default_tenant();
    let ctx = QueryContext::new(tenant.clone());
    // Two devices of site s1, one of s2, a reading a minute: s1 goes hot at minute 2.
    for (device, site, values) in [
        ("d1", "s1", [70.0, 75.0, 85.0, 95.0, 96.0, 60.0]),
        ("d2", "s1", [71.0, 72.0, 73.0, 74.0, 75.0, 61.0]),
        ("d3", "s2", [50.0, 50.0, 50.0, 50.0, 50.0, 50.0]),
    ] {
        let samples: Vec<Sample> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample::new(T0 + i as i64 * MIN, v))
            .collect();
        store.append(
            &tenant,
            labels(&[
                ("__name__", "temperature_celsius"),
                ("device", device),
                ("site", site),
            ]),
            &samples,
        );
    }
    let groups = parse_rule_file(RULES).unwrap();
    let mut g = GroupState::new(groups[0].clone());
    let external = External {
        labels: labels(&[("cluster", "c1")]),
        url: "http://strata:9464".into(),
    };
    let mut states = Vec::new();
    for i in 0..6 {
        let ts = T0 + i * MIN;
        let mut query = |expr: &str, t: i64| Querier::instant(&engine, &tenant, expr, t);
        let mut write = |w: &Written| -> Result<(), String> {
            for (l, s) in w {
                store.append(&tenant, l.clone(), &[*s]);
            }
            Ok(())
        };
        let ev = g.eval(ts, 0, &external, &mut query, &mut write);
        // The rule whose output repeats a label set fails every time, alone.
        assert_eq!(ev.errors.len(), 1, "{:?}", ev.errors);
        assert_eq!(ev.errors[0].0, "broken");
        let recorded: Vec<_> = ev
            .written
            .iter()
            .filter(|(l, _)| l.metric_name() == Some("site:temperature_celsius:max"))
            .collect();
        assert_eq!(recorded.len(), 2, "one series a site");
        assert!(recorded
            .iter()
            .all(|(l, s)| l.get("team") == Some("ops") && s.timestamp == ts));
        let alerts: Vec<_> = ev
            .written
            .iter()
            .filter(|(l, _)| l.metric_name() == Some("ALERTS"))
            .map(|(l, _)| l.get("alertstate").unwrap().to_string())
            .collect();
        let st = g.rule_state(1).unwrap();
        states.push((st.alerts().map(|a| a.state).collect::<Vec<_>>(), alerts));
    }
    use AlertState::*;
    let want: Vec<(Vec<AlertState>, Vec<&str>)> = vec![
        (vec![], vec![]),
        (vec![], vec![]),
        (vec![Pending], vec!["pending"]),
        (vec![Pending], vec!["pending"]),
        (vec![Firing], vec!["firing"]),
        (vec![Inactive], vec![]),
    ];
    let got: Vec<(Vec<AlertState>, Vec<&str>)> = states
        .iter()
        .map(|(s, a)| (s.clone(), a.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(got, want);
    // The alert as it fired: its labels (a templated severity),
    // its annotations, and when it was active and fired.
    let a = g.rule_state(1).unwrap().alerts().next().unwrap();
    assert_eq!(
        a.labels,
        labels(&[
            ("alertname", "SiteHot"),
            ("severity", "page"),
            ("site", "s1"),
            ("team", "ops")
        ])
    );
    assert_eq!(a.annotations["summary"], "s1 at 96 C");
    assert_eq!(
        (a.active_at, a.fired_at, a.resolved_at),
        (T0 + 2 * MIN, Some(T0 + 4 * MIN), Some(T0 + 5 * MIN))
    );
    // What the engine holds now: ALERTS written beside the recording rule's series.
    let out = engine
        .instant(
            &ctx,
            "ALERTS{alertname=\"SiteHot\",alertstate=\"firing\"}",
            T0 + 4 * MIN,
        )
        .unwrap();
    let Value::Vector(v) = out.value else {
        panic!("a vector")
    };
    assert_eq!(v.len(), 1);
    let out = engine
        .instant(&ctx, "ALERTS_FOR_STATE", T0 + 4 * MIN)
        .unwrap();
    let Value::Vector(v) = out.value else {
        panic!("a vector")
    };
    assert_eq!(v[0].v, (T0 + 2 * MIN) as f64 / 1000.0);
}
