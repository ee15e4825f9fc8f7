//! Rule unit tests in `promtool test rules` format, run by `strata rules test`: a test file
//! names rule files and gives input series in expanding notation (`1+2x10`, `_`, `stale`),
//! alert tests (the firing alerts of a rule at a time, with their labels and annotations) and
//! PromQL tests (an instant query's samples at a time, recording rules' output included).
//!
//! It runs as promtool runs it (`cmd/promtool/unittest.go`): input series loaded from time 0 at
//! the test's `interval`; every group evaluated at 0, `evaluation_interval`, ... up to the
//! latest time a test names, in `group_eval_order` and then file order, each rule's output
//! written before the next rule runs; an alert test at `eval_time` compares with the
//! evaluation at the latest multiple of the interval not after it; alert tests list firing
//! alerts only, `alertname` added to their expected labels. Queries go through Strata's PromQL
//! engine over an in-memory store, so a test passing here and under promtool shows the two
//! evaluate the rules alike.

use crate::group::{External, GroupState, Written};
use crate::query::Querier;
use crate::rules::parse_rule_file;
use crate::state::AlertState;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use strata_model::{Labels, Sample, Tenant, STALE_NAN};
use strata_promql::{Engine, EngineOptions, MemStorage};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Rule files (globs), relative to the test file's directory.
    pub rule_files: Vec<String>,
    /// How often groups are evaluated (default 1m).
    pub evaluation_interval: Option<String>,
    /// Groups evaluated first, in this order.
    #[serde(default)]
    pub group_eval_order: Vec<String>,
    /// The tests.
    #[serde(default)]
    pub tests: Vec<TestGroup>,
}

/// A set of input series and the tests over them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestGroup {
    /// Step of the input series (default: the evaluation interval).
    pub interval: Option<String>,
    /// The input series.
    #[serde(default)]
    pub input_series: Vec<InputSeries>,
    /// Its name, in reports.
    pub name: Option<String>,
    /// Alert tests.
    #[serde(default)]
    pub alert_rule_test: Vec<AlertTest>,
    /// PromQL tests.
    #[serde(default)]
    pub promql_expr_test: Vec<PromqlTest>,
    /// `$externalLabels`.
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// `$externalURL`.
    pub external_url: Option<String>,
}

/// One input series.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSeries {
    /// `metric{label="value"}`.
    pub series: String,
    /// Expanding notation.
    pub values: String,
}

/// The firing alerts of one rule at one time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTest {
    /// When (a duration from 0).
    pub eval_time: String,
    /// The rule.
    pub alertname: String,
    /// Its firing alerts.
    #[serde(default)]
    pub exp_alerts: Vec<ExpAlert>,
}

/// An expected alert.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpAlert {
    /// Its labels (without `alertname`).
    #[serde(default)]
    pub exp_labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub exp_annotations: BTreeMap<String, String>,
}

/// An instant query's expected samples.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromqlTest {
    /// The query.
    pub expr: String,
    /// When (a duration from 0).
    pub eval_time: String,
    /// The samples.
    #[serde(default)]
    pub exp_samples: Vec<ExpSample>,
}

/// An expected sample.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpSample {
    /// `metric{label="value"}` or `{label="value"}`.
    #[serde(default)]
    pub labels: String,
    /// Its value.
    pub value: f64,
}

/// An alert as a test sees it: labels and annotations.
pub type SeenAlert = (BTreeMap<String, String>, BTreeMap<String, String>);

/// What one alert test found.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertOutcome {
    /// The test group's position.
    pub group: usize,
    /// The test's `eval_time`, ms.
    pub eval_time: i64,
    /// The rule.
    pub alertname: String,
    /// The firing alerts found, sorted (labels with `alertname`).
    pub got: Vec<SeenAlert>,
    /// The alerts the test expects, sorted (labels with `alertname`).
    pub expected: Vec<SeenAlert>,
}

/// What running a test file found.
#[derive(Debug, Default)]
pub struct Report {
    /// Every alert test's outcome.
    pub alerts: Vec<AlertOutcome>,
    /// Failures, each described.
    pub failures: Vec<String>,
}

/// Reads and runs the test file at `path`.
pub fn run_file(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: TestFile = serde_saphyr::from_str(&text)
        .map_err(|e| format!("{}: not a test file: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    run(&file, base)
}

/// Runs `file`, its rule files relative to `base`.
pub fn run(file: &TestFile, base: &Path) -> Result<Report, String> {
    let interval = dur(
        file.evaluation_interval.as_deref(),
        60_000,
        "evaluation_interval",
    )?;
    let mut groups = Vec::new();
    for pattern in &file.rule_files {
        let full = base.join(pattern);
        let pattern = full.to_string_lossy();
        let mut paths: Vec<_> = glob::glob(&pattern)
            .map_err(|e| format!("rule_files {pattern:?}: {e}"))?
            .filter_map(Result::ok)
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(format!("rule_files {pattern:?}: no such file"));
        }
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let parsed = parse_rule_file(&text).map_err(|errs| {
                let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                format!("{}: {}", p.display(), msgs.join("; "))
            })?;
            groups.extend(parsed);
        }
    }
    // `group_eval_order` first, the rest in file order.
    let rank = |name: &str| {
        file.group_eval_order
            .iter()
            .position(|g| g == name)
            .unwrap_or(usize::MAX)
    };
    groups.sort_by_key(|g| rank(&g.name));
    let mut report = Report::default();
    for (gi, tg) in file.tests.iter().enumerate() {
        run_group(gi, tg, &groups, interval, &mut report)?;
    }
    Ok(report)
}

fn run_group(
    gi: usize,
    tg: &TestGroup,
    groups: &[crate::Group],
    interval: i64,
    report: &mut Report,
) -> Result<(), String> {
    let name = tg
        .name
        .clone()
        .unwrap_or_else(|| format!("test group {}", gi + 1));
    let step = dur(tg.interval.as_deref(), interval, "interval")?;
    let store = Arc::new(MemStorage::new());
    let tenant = Tenant::default_tenant();
    for s in &tg.input_series {
        let labels = series_labels(&s.series)?;
        let values =
            expand(&s.values).map_err(|e| format!("{name}: series {:?}: {e}", s.series))?;
        let samples: Vec<Sample> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some(Sample::new(i as i64 * step, (*v)?)))
            .collect();
        store.append(&tenant, labels, &samples);
    }
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let external = External {
        labels: Labels::from_pairs(tg.external_labels.clone()).map_err(|e| e.to_string())?,
        url: tg.external_url.clone().unwrap_or_default(),
    };
    let mut states: Vec<GroupState> = groups.iter().cloned().map(GroupState::new).collect();
    let mut alert_tests: Vec<(i64, &AlertTest)> = Vec::new();
    for t in &tg.alert_rule_test {
        alert_tests.push((dur(Some(&t.eval_time), 0, "eval_time")?, t));
    }
    alert_tests.sort_by_key(|(t, _)| *t);
    let mut promql_tests = Vec::new();
    for t in &tg.promql_expr_test {
        promql_tests.push((dur(Some(&t.eval_time), 0, "eval_time")?, t));
    }
    let max_t = alert_tests
        .iter()
        .map(|(t, _)| *t)
        .chain(promql_tests.iter().map(|(t, _)| *t))
        .max()
        .unwrap_or(0);
    let mut next_test = 0;
    let mut ts = 0;
    while ts <= max_t {
        for g in &mut states {
            let mut query = |expr: &str, t: i64| Querier::instant(&engine, &tenant, expr, t);
            let mut write = |w: &Written| -> Result<(), String> {
                for (l, s) in w {
                    store.append(&tenant, l.clone(), &[*s]);
                }
                Ok(())
            };
            let ev = g.eval(ts, 0, &external, &mut query, &mut write);
            for (rule, e) in ev.errors {
                report
                    .failures
                    .push(format!("{name}: rule {rule:?} at {}: {e}", secs(ts)));
            }
        }
        while next_test < alert_tests.len() && alert_tests[next_test].0 < ts + interval {
            let (at, t) = alert_tests[next_test];
            next_test += 1;
            let got = firing(&states, &t.alertname);
            let mut expected: Vec<SeenAlert> = t
                .exp_alerts
                .iter()
                .map(|e| {
                    let mut l = e.exp_labels.clone();
                    l.insert("alertname".into(), t.alertname.clone());
                    (l, e.exp_annotations.clone())
                })
                .collect();
            expected.sort();
            if got != expected {
                report.failures.push(format!(
                    "{name}: alertname: {}, time: {}\n    exp: {expected:?}\n    got: {got:?}",
                    t.alertname,
                    secs(at)
                ));
            }
            report.alerts.push(AlertOutcome {
                group: gi,
                eval_time: at,
                alertname: t.alertname.clone(),
                got,
                expected,
            });
        }
        ts += interval;
    }
    for (at, t) in promql_tests {
        let got = Querier::instant(&engine, &tenant, &t.expr, at)
            .map_err(|e| format!("{name}: expr {:?} at {}: {e}", t.expr, secs(at)))?;
        let mut got: Vec<(Labels, f64)> = got;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = Vec::new();
        for s in &t.exp_samples {
            let l = if s.labels.trim().is_empty() {
                Labels::default()
            } else {
                series_labels(&s.labels)?
            };
            want.push((l, s.value));
        }
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let same = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| {
                g.0 == w.0 && (g.1 == w.1 || (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0))
            });
        if !same {
            report.failures.push(format!(
                "{name}: expr: {:?}, time: {}\n    exp: {want:?}\n    got: {got:?}",
                t.expr,
                secs(at)
            ));
        }
    }
    Ok(())
}

/// The firing alerts of rule `name` in every group, sorted.
fn firing(states: &[GroupState], name: &str) -> Vec<SeenAlert> {
    let mut out = Vec::new();
    for g in states {
        for (i, r) in g.group().rules.iter().enumerate() {
            if r.name() != name {
                continue;
            }
            let Some(st) = g.rule_state(i) else { continue };
            for a in st.alerts().filter(|a| a.state == AlertState::Firing) {
                let labels = a
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                out.push((labels, a.annotations.clone()));
            }
        }
    }
    out.sort();
    out
}

fn secs(ms: i64) -> String {
    if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

fn dur(v: Option<&str>, default: i64, field: &str) -> Result<i64, String> {
    match v {
        None => Ok(default),
        Some(s) => strata_model::time::parse_duration_ms(s)
            .ok_or_else(|| format!("invalid duration in {field}: {s:?}")),
    }
}

/// The labels of a series written as a selector of equalities: `metric{a="b"}`.
pub fn series_labels(s: &str) -> Result<Labels, String> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::Expr;
    let bad = |why: &str| format!("series {s:?}: {why}");
    let Expr::VectorSelector(vs) = promql_parser::parser::parse(s).map_err(|e| bad(&e))? else {
        return Err(bad("expected metric{label=\"value\", ...}"));
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(n) = &vs.name {
        pairs.push(("__name__".into(), n.clone()));
    }
    for m in &vs.matchers.matchers {
        if !matches!(m.op, MatchOp::Equal) {
            return Err(bad("only = matchers describe a series"));
        }
        pairs.push((m.name.clone(), m.value.clone()));
    }
    Labels::from_pairs(pairs).map_err(|e| bad(&e.to_string()))
}

/// Expanding notation: numbers, `a+bxn` / `a-bxn` (a, then n more stepping by b), `axn` (a,
/// n+1 times), `_` (a missing sample), `_xn` (n missing), `stale` (a staleness marker).
pub fn expand(values: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in values.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(STALE_NAN));
            continue;
        }
        let Some((head, n)) = tok.rsplit_once('x') else {
            out.push(Some(number(tok)?));
            continue;
        };
        let n: usize = n
            .parse()
            .map_err(|_| format!("bad repetition in {tok:?}"))?;
        if head == "_" {
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        // The step's sign splits start from step; a leading sign belongs to the start.
        let split = head[1..]
            .rfind(['+', '-'])
            .map(|i| i + 1)
            .filter(|&i| !matches!(head.as_bytes()[i - 1], b'e' | b'E'));
        let (start, step) = match split {
            Some(i) => (number(&head[..i])?, number(&head[i..])?),
            None => (number(head)?, 0.0),
        };
        for k in 0..=n {
            out.push(Some(start + step * k as f64));
        }
    }
    Ok(out)
}

fn number(s: &str) -> Result<f64, String> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|_| format!("bad number {s:?} in expanding notation")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expanding_notation_as_promtool_documents_it() {
        let e = |s: &str| expand(s).unwrap();
        assert_eq!(e("-2+4x3"), [Some(-2.0), Some(2.0), Some(6.0), Some(10.0)]);
        assert_eq!(
            e(" 1-2x4"),
            [Some(1.0), Some(-1.0), Some(-3.0), Some(-5.0), Some(-7.0)]
        );
        assert_eq!(e("1x4"), [Some(1.0); 5]);
        let s = e("1 _x3 stale");
        assert_eq!(s.len(), 5);
        assert_eq!(&s[..4], [Some(1.0), None, None, None]);
        assert_eq!(s[4].unwrap().to_bits(), STALE_NAN.to_bits());
        assert_eq!(e("1e3+1e2x1"), [Some(1000.0), Some(1100.0)]);
        assert!(expand("1+x").is_err());
    }
}
