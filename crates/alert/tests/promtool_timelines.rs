//! Alert timelines against Prometheus': `promtool test rules` (Debian's Prometheus 2.42) as the
//! oracle. For generated rule files and data (random walks with gaps; `for`, `keep_firing_for`,
//! an alert on a recording rule's output, range functions, templated labels and annotations),
//! Strata evaluates every minute and writes what it found firing, minute by minute, as the
//! expectations of a promtool test file; promtool must then pass the file, i.e. Prometheus
//! computes the same firing alerts, labels and annotations at every evaluation. A hand-written
//! test file must pass under both. Skips, saying so, where promtool is not installed.
//!
//! Range selectors here never end on a sample (`[4m30s]` over samples a minute apart): Debian's
//! Prometheus 2.42 includes a sample exactly at a range's start, Prometheus 3 (which Strata's
//! PromQL follows) does not, and the oracle must compare rules, not that change.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use strata_alert::unittest::{run_file, AlertOutcome};

fn promtool_here() -> bool {
    let ok = Command::new("promtool").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
    }
    ok
}

fn promtool_test(path: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// xorshift: the same scenarios every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

const MINUTES: i64 = 40;

/// A rule file and input series of scenario `seed`.
fn scenario(seed: u64) -> (Value, Vec<Value>) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let fors = ["0s", "1m", "2m", "3m"];
    let keeps = ["0s", "0s", "2m"];
    let t1 = 70 + r.below(20);
    let rules = json!({"groups": [{
        "name": "g",
        "rules": [
            {"record": "site:temperature:max", "expr": "max by (site) (temperature)"},
            {
                "alert": "Hot",
                "expr": format!("temperature > {t1}"),
                "for": r.pick(&fors),
                "keep_firing_for": r.pick(&keeps),
                "labels": {"severity": "{{ if gt $value 90.0 }}page{{ else }}ticket{{ end }}"},
                "annotations": {
                    "summary": "{{ $labels.device }} at {{ $value }}",
                    "human": "{{ $value | humanize }} on {{ $labels.site }}",
                },
            },
            {
                "alert": "SiteHot",
                "expr": format!("site:temperature:max > {}", t1 + 5),
                "for": r.pick(&fors),
                "annotations": {"summary": "{{ $labels.site }} {{ printf \"%.1f\" $value }}"},
            },
            {
                "alert": "WarmAverage",
                "expr": format!("avg_over_time(temperature[2m30s]) > {}", t1 - 5),
                "for": "1m",
                "labels": {"device": "{{ $labels.device }}-avg"},
            },
            {
                "alert": "Rising",
                "expr": "delta(temperature[4m30s]) > 6",
                "keep_firing_for": r.pick(&keeps),
            },
        ],
    }]});
    let mut series = Vec::new();
    for (d, site) in [("d1", "s1"), ("d2", "s1"), ("d3", "s2")] {
        let mut v = 60.0 + r.below(30) as f64;
        let mut vals = Vec::new();
        for _ in 0..MINUTES {
            if r.below(12) == 0 {
                vals.push("_".to_string());
                continue;
            }
            v = (v + r.below(9) as f64 - 4.0 + if r.below(2) == 0 { 0.5 } else { 0.0 })
                .clamp(50.0, 100.0);
            vals.push(format!("{v}"));
        }
        series.push(json!({
            "series": format!("temperature{{device=\"{d}\", site=\"{site}\"}}"),
            "values": vals.join(" "),
        }));
    }
    (rules, series)
}

fn test_file(series: &[Value], alerts: &[Value]) -> Value {
    json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": alerts,
        }],
    })
}

#[test]
fn strata_and_prometheus_fire_the_same_alerts_at_every_evaluation() {
    if !promtool_here() {
        return;
    }
    let names = ["Hot", "SiteHot", "WarmAverage", "Rising"];
    let mut fired = 0;
    for seed in 1..=12 {
        let dir = tempfile::tempdir().unwrap();
        let (rules, series) = scenario(seed);
        std::fs::write(dir.path().join("rules.json"), rules.to_string()).unwrap();
        // Every alert at every minute, expecting nothing: Strata reports what it got.
        let probes: Vec<Value> = (0..MINUTES)
            .flat_map(|m| names.map(|n| json!({"eval_time": format!("{m}m"), "alertname": n})))
            .collect();
        let path = dir.path().join("test.json");
        std::fs::write(&path, test_file(&series, &probes).to_string()).unwrap();
        let report = run_file(&path).unwrap();
        let errors: Vec<&String> = report
            .failures
            .iter()
            .filter(|f| !f.contains("alertname:"))
            .collect();
        assert!(errors.is_empty(), "seed {seed}: {errors:?}");
        // Its findings become the expectations promtool checks.
        let expect: Vec<Value> = report.alerts.iter().map(expectation).collect();
        fired += report.alerts.iter().map(|a| a.got.len()).sum::<usize>();
        std::fs::write(&path, test_file(&series, &expect).to_string()).unwrap();
        let (ok, out) = promtool_test(&path);
        assert!(
            ok,
            "seed {seed}: Prometheus disagrees with Strata:\n{out}\nrules: {rules}\nseries: {series:?}"
        );
        let again = run_file(&path).unwrap();
        assert!(
            again.failures.is_empty(),
            "seed {seed}: {:?}",
            again.failures
        );
    }
    assert!(fired > 100, "the scenarios fire alerts ({fired})");
}

fn expectation(a: &AlertOutcome) -> Value {
    let exp: Vec<Value> = a
        .got
        .iter()
        .map(|(labels, annotations)| {
            let mut l = labels.clone();
            l.remove("alertname");
            json!({"exp_labels": l, "exp_annotations": annotations})
        })
        .collect();
    json!({
        "eval_time": format!("{}m", a.eval_time / 60_000),
        "alertname": a.alertname,
        "exp_alerts": exp,
    })
}

/// A test file written by hand, in promtool's documented form, passes under both.
#[test]
fn a_handwritten_test_file_passes_under_strata_and_promtool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        r#"
groups:
  - name: example
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: InstanceDown
        expr: up == 0
        for: 5m
        labels:
          severity: page
        annotations:
          summary: "Instance {{ $labels.instance }} down"
          description: "{{ $labels.instance }} of job {{ $labels.job }} has been down for more than 5 minutes."
"#,
    )
    .unwrap();
    let test = dir.path().join("test.yml");
    std::fs::write(
        &test,
        r#"
rule_files:
  - rules.yml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="prometheus", instance="localhost:9090"}'
        values: '0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'up{job="node_exporter", instance="localhost:9100"}'
        values: '1+0x6 0 0 0 0 0 0 0 0'
      - series: 'go_goroutines{job="prometheus", instance="localhost:9090"}'
        values: '10+10x2 30+20x5'
    alert_rule_test:
      - eval_time: 4m
        alertname: InstanceDown
      - eval_time: 10m
        alertname: InstanceDown
        exp_alerts:
          - exp_labels:
              severity: page
              instance: localhost:9090
              job: prometheus
            exp_annotations:
              summary: "Instance localhost:9090 down"
              description: "localhost:9090 of job prometheus has been down for more than 5 minutes."
    promql_expr_test:
      - expr: go_goroutines > 5
        eval_time: 4m
        exp_samples:
          - labels: 'go_goroutines{job="prometheus",instance="localhost:9090"}'
            value: 50
      - expr: job:up:sum
        eval_time: 8m
        exp_samples:
          - labels: 'job:up:sum{job="prometheus"}'
            value: 0
          - labels: 'job:up:sum{job="node_exporter"}'
            value: 0
"#,
    )
    .unwrap();
    let report = run_file(&test).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    if promtool_here() {
        let (ok, out) = promtool_test(&test);
        assert!(ok, "{out}");
    }
    // A wrong expectation fails under Strata, naming the alert and time.
    let text = std::fs::read_to_string(&test)
        .unwrap()
        .replace("eval_time: 10m", "eval_time: 3m");
    std::fs::write(&test, text).unwrap();
    let report = run_file(&test).unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(report.failures[0].contains("alertname: InstanceDown, time: 3m"));
}
