//! Rule files as Prometheus' documentation writes them are read whole; broken ones report
//! every problem, each naming its group, rule and field, as `promtool check rules` does.

use strata_alert::{parse_rule_file, Rule};

const GOOD: &str = r#"
groups:
  - name: example
    interval: 30s
    query_offset: 1m
    limit: 10
    labels:
      team: fleet
    rules:
      - record: code:prometheus_http_requests_total:sum
        expr: sum by (code) (prometheus_http_requests_total)
        labels:
          source: rules
      - alert: HighRequestLatency
        expr: job:request_latency_seconds:mean5m{job="myjob"} > 0.5
        for: 10m
        keep_firing_for: 5m
        labels:
          severity: page
        annotations:
          summary: "High request latency on {{ $labels.instance }}"
          description: "{{ $value | humanize }}s over 10 minutes"
  - name: devices
    rules:
      - alert: DeviceHot
        expr: max_over_time(temperature_celsius[5m]) > 80
"#;

#[test]
fn a_prometheus_rule_file_reads_whole() {
    let groups = parse_rule_file(GOOD).unwrap();
    assert_eq!(groups.len(), 2);
    let g = &groups[0];
    assert_eq!(g.name, "example");
    assert_eq!(
        (g.interval_ms, g.query_offset_ms, g.limit),
        (Some(30_000), Some(60_000), 10)
    );
    assert_eq!(g.labels["team"], "fleet");
    assert_eq!(g.rules.len(), 2);
    let Rule::Recording(r) = &g.rules[0] else {
        panic!("a recording rule first")
    };
    assert_eq!(r.record, "code:prometheus_http_requests_total:sum");
    assert_eq!(r.labels["source"], "rules");
    let Rule::Alerting(a) = &g.rules[1] else {
        panic!("then an alerting rule")
    };
    assert_eq!((a.for_ms, a.keep_firing_for_ms), (600_000, 300_000));
    assert_eq!(a.labels["severity"], "page");
    assert!(a.annotations["summary"].contains("$labels.instance"));
    let d = &groups[1];
    assert_eq!((d.interval_ms, d.query_offset_ms, d.limit), (None, None, 0));
    assert_eq!(d.rules[0].name(), "DeviceHot");
    let Rule::Alerting(hot) = &d.rules[0] else {
        panic!("an alerting rule")
    };
    assert_eq!(hot.for_ms, 0);
    // An empty file and a file of no groups hold no rules.
    assert_eq!(parse_rule_file("groups: []\n").unwrap(), vec![]);
}

#[test]
fn every_problem_of_a_file_is_named() {
    let bad = r#"
groups:
  - name: g
    interval: soon
    rules:
      - record: "not a name"
        expr: sum(x
        for: 5m
      - alert: A
        record: b
        expr: up
      - expr: up
      - alert: Templated
        expr: up == 0
        labels:
          __name__: x
        annotations:
          summary: "{{ $labels.instance "
          "bad-name": x
      - alert: NoExpr
  - name: g
    rules: []
  - rules: []
"#;
    let errors = parse_rule_file(bad).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| {
        assert!(
            text.iter().any(|t| t.contains(needle)),
            "{needle:?} not among {text:#?}"
        )
    };
    has("group \"g\": invalid duration in 'interval': \"soon\"");
    has("group \"g\", rule 1, \"not a name\": could not parse expression");
    has("rule 1, \"not a name\": invalid recording rule name: not a name");
    has("rule 1, \"not a name\": invalid field 'for' in recording rule");
    has("rule 2, \"b\": only one of 'record' and 'alert' must be set");
    has("rule 3, \"\": one of 'record' or 'alert' must be set");
    has("rule 4, \"Templated\": invalid label name: __name__");
    has("rule 4, \"Templated\": annotation \"summary\": template: unclosed action");
    has("rule 4, \"Templated\": invalid annotation name: \"bad-name\"");
    has("rule 5, \"NoExpr\": field 'expr' must be set in rule");
    has("group \"g\": the group name is repeated in the same file");
    has("group \"\": a group needs a name");
    assert_eq!(errors.len(), 12, "{text:#?}");
}

#[test]
fn unknown_fields_and_non_yaml_are_refused() {
    for (text, why) in [
        ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        fro: 5m\n", "fro"),
        ("groups:\n  - name: g\n    evaluation: 1m\n    rules: []\n", "evaluation"),
        ("global: {}\n", "global"),
        ("groups: [\n", "not a rule file"),
        ("\u{0}\u{1}", "not a rule file"),
    ] {
        let e = parse_rule_file(text).unwrap_err();
        let t = e[0].to_string();
        assert!(t.contains(why), "{text:?}: {t}");
    }
}
