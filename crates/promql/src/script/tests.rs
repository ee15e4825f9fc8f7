//! Parser and runner tests.

use super::*;
use strata_model::STALE_NAN;

fn values(s: &str) -> Vec<SeqValue> {
    series::parse_values(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn floats(s: &str) -> Vec<f64> {
    values(s)
        .into_iter()
        .map(|v| match v {
            SeqValue::Float(f) => f,
            other => panic!("{s}: unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn value_expansion() {
    assert_eq!(floats("1+2x3"), [1.0, 3.0, 5.0, 7.0]);
    assert_eq!(floats("1-2x3"), [1.0, -1.0, -3.0, -5.0]);
    assert_eq!(floats("-1+1x2"), [-1.0, 0.0, 1.0]);
    assert_eq!(floats("5x2"), [5.0, 5.0, 5.0]);
    assert_eq!(floats("0x59").len(), 60, "no hexadecimal in series values");
    assert!(floats("0x59").iter().all(|v| *v == 0.0));
    assert_eq!(floats("1  2\t3 "), [1.0, 2.0, 3.0]);
    assert_eq!(
        floats("1e3 .5 2. 1_000 -0.25"),
        [1000.0, 0.5, 2.0, 1000.0, -0.25]
    );
    assert_eq!(floats("010"), [8.0], "a leading 0 is octal, as in Go");
    assert_eq!(
        floats("Inf -Inf +inf"),
        [f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY]
    );
    assert!(floats("NaN nan")[..].iter().all(|v| v.is_nan()));
    assert_eq!(
        values("1 _ 2 _x3 3"),
        [
            SeqValue::Float(1.0),
            SeqValue::Omitted,
            SeqValue::Float(2.0),
            SeqValue::Omitted,
            SeqValue::Omitted,
            SeqValue::Omitted,
            SeqValue::Float(3.0),
        ]
    );
    let stale = values("stale");
    assert!(matches!(stale[..], [SeqValue::Float(v)] if v.to_bits() == STALE_NAN.to_bits()));
    assert_eq!(floats("1.5+0.5x2"), [1.5, 2.0, 2.5]);
}

#[test]
fn histogram_values_are_counted() {
    let v = values("1 {{schema:0 sum:5 count:4 buckets:[1 2 1]}}x2 _ {{count:1}}+{{count:2}}x1 2");
    let kinds: Vec<&str> = v
        .iter()
        .map(|v| match v {
            SeqValue::Omitted => "_",
            SeqValue::Float(_) => "f",
            SeqValue::Histogram(_) => "h",
        })
        .collect();
    assert_eq!(kinds, ["f", "h", "h", "h", "_", "h", "h", "f"]);
}

#[test]
fn bad_values() {
    for bad in [
        "1+2",
        "foo",
        "1m",
        "1x",
        "1x2.5",
        "_x",
        "1+2x3x4",
        "++1",
        "1+-2x3",
        "{{count:1",
    ] {
        assert!(series::parse_values(bad).is_err(), "{bad} should not parse");
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

#[test]
fn series_descriptions() {
    let (l, v) = series::parse_series_desc(r#"foo{a="b", c='d', e=`f\n`,} 1 2"#).unwrap();
    assert_eq!(
        l,
        labels(&[("__name__", "foo"), ("a", "b"), ("c", "d"), ("e", "f\\n")])
    );
    assert_eq!(v.len(), 2);
    let (l, _) = series::parse_series_desc(r#"{__name__="x", q="say \"hi\""} 1"#).unwrap();
    assert_eq!(l, labels(&[("__name__", "x"), ("q", "say \"hi\"")]));
    let (l, _) = series::parse_series_desc(r#"{"foo.bar", "a b"="1"} 1"#).unwrap();
    assert_eq!(l, labels(&[("__name__", "foo.bar"), ("a b", "1")]));
    let (l, v) = series::parse_series_desc("{}").unwrap();
    assert!(l.is_empty() && v.is_empty());
    let (l, _) = series::parse_series_desc(r#"m{a=""} 1"#).unwrap();
    assert_eq!(l, labels(&[("__name__", "m")]), "empty values are dropped");
    for bad in [
        r#"foo{a="b" 1"#,
        r#"foo{a=~"b"} 1"#,
        r#"foo{a} 1"#,
        r#"foo{a="b} 1"#,
        r#"foo{a="1", a="2"} 1"#,
        "1 2",
    ] {
        assert!(
            series::parse_series_desc(bad).is_err(),
            "{bad} should not parse"
        );
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0"), Ok(0));
    assert_eq!(parse_duration("1ms"), Ok(1));
    assert_eq!(parse_duration("10s53ms"), Ok(10_053));
    assert_eq!(parse_duration("1h"), Ok(3_600_000));
    assert_eq!(parse_duration("1m30s"), Ok(90_000));
    assert_eq!(parse_duration("1d1h"), Ok(25 * 3_600_000));
    assert_eq!(parse_duration("2w"), Ok(14 * 86_400_000));
    assert_eq!(parse_duration("1y"), Ok(365 * 86_400_000));
    for bad in ["", "5", "1s1m", "1m1m", "1x", "-1m", "1.5s", "s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn go_numbers() {
    assert_eq!(parse_go_number("12340000"), Ok(12_340_000.0));
    assert_eq!(parse_go_number("0.00001234"), Ok(0.00001234));
    assert_eq!(parse_go_number("-0.0000002"), Ok(-0.0000002));
    assert_eq!(parse_go_number("+Inf"), Ok(f64::INFINITY));
    assert_eq!(parse_go_number("-inf"), Ok(f64::NEG_INFINITY));
    assert!(parse_go_number("NaN").unwrap().is_nan());
    assert_eq!(parse_go_number("0x10"), Ok(16.0));
    assert_eq!(parse_go_number("010"), Ok(8.0));
    assert_eq!(parse_go_number("09"), Ok(9.0));
    assert_eq!(parse_go_number("1e3"), Ok(1000.0));
    for bad in ["", "{} 1", "foo", "1 2", "+NaN", "e5", "1e"] {
        assert!(parse_go_number(bad).is_err(), "{bad:?} should not parse");
    }
}

fn only_case(text: &str) -> EvalCase {
    let script = parse_script(text).unwrap_or_else(|e| panic!("{e}"));
    let cases: Vec<EvalCase> = script
        .commands
        .into_iter()
        .filter_map(|c| match c {
            Command::Eval(c) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(cases.len(), 1);
    cases.into_iter().next().unwrap()
}

#[test]
fn commands() {
    let script = parse_script(
        "# comment\nload 5m\n  a 1 2\n  b{x=\"y\"} 1+1x3\n\nload_with_nhcb 1m\n  h_bucket{le=\"1\"} 1\n\nclear\n\
         eval instant at 10m a\n  a 2\n\neval range from 0 to 10m step 5m b\n  b{x=\"y\"} 1 2 3\n",
    )
    .unwrap();
    let kinds: Vec<String> = script
        .commands
        .iter()
        .map(|c| match c {
            Command::Load(l) => format!(
                "load {} {} {} @{}",
                l.interval_ms,
                l.with_nhcb,
                l.series.len(),
                l.line
            ),
            Command::Clear { line } => format!("clear @{line}"),
            Command::Eval(c) => format!("eval {:?} @{}", c.kind, c.line),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "load 300000 false 2 @2",
            "load 60000 true 1 @6",
            "clear @9",
            "eval Instant { at_ms: 600000 } @10",
            "eval Range { start_ms: 0, end_ms: 600000, step_ms: 300000 } @13",
        ]
    );
}

#[test]
fn eval_expectations() {
    let c = only_case(
        "eval instant at 1m foo\n  expect ordered\n  expect warn msg: w1\n  expect warn regex: w\\d\n  \
         expect no_info\n  foo{a=\"1\"} 1\n  foo{a=\"2\"} _\n",
    );
    assert!(c.ordered && !c.expect_fail);
    assert_eq!(c.warn.expected.len(), 2);
    assert!(c.warn.expected[0].matches("w1") && !c.warn.expected[0].matches("w12"));
    assert!(c.warn.expected[1].matches("a w7 b"));
    assert!(c.info.forbidden && !c.warn.forbidden);
    let pos: Vec<usize> = c.expected.series.iter().map(|s| s.pos).collect();
    assert_eq!(pos, [1, 2]);

    let c = only_case("eval instant at 0 foo\n  expect fail msg: boom here \n");
    assert!(c.expect_fail);
    assert!(c.fail_checks[0].matches("boom here") && !c.fail_checks[0].matches("boom"));

    let c = only_case("eval instant at 0 foo\n  expect fail regex: bo+m\n");
    assert!(c.fail_checks[0].matches("xbooom"));

    let c = only_case("eval_fail instant at 0 foo\n  expected_fail_message some error\n");
    assert!(c.expect_fail && c.fail_checks[0].matches("some error"));

    let c = only_case("eval_warn instant at 0 foo\n");
    assert!(c.warn.at_least_one && c.warn.expected.is_empty());

    let c = only_case("eval_ordered instant at 0 foo\n");
    assert!(c.ordered);

    let c = only_case("eval instant at 0 1 + 1\n  2\n");
    assert_eq!(c.expected.scalar, Some(2.0));

    let c = only_case("eval instant at 0 \"x\"\n  expect string \"a\\\"b\"\n");
    assert_eq!(c.expected.string.as_deref(), Some("a\"b"));
    assert!(c.exclude_from_range_check);

    let c = only_case("eval instant at 0 \"\"\n  expect string ``\n");
    assert_eq!(c.expected.string.as_deref(), Some(""));

    let c = only_case(
        "eval instant at 1m foo[1m]\n  expect range vector from 0 to 1m step 30s\n  foo 1 2 3\n",
    );
    assert_eq!(
        c.range_vector,
        Some(RangeWindow {
            start_ms: 0,
            end_ms: 60_000,
            step_ms: 30_000
        })
    );
    assert_eq!(c.expected.series[0].values.len(), 3);

    let c = only_case("eval instant at 0 foo\n");
    assert!(c.expected.series.is_empty() && c.expected.scalar.is_none());
    assert!(c.warn.expected.is_empty() && !c.warn.forbidden && !c.warn.at_least_one);
}

#[test]
fn malformed_scripts() {
    let cases = [
        ("frobnicate\n", 1, "invalid command"),
        ("\n\nload 5x\n  a 1\n", 3, "invalid step definition"),
        ("load 1m\n  a 1 +\n", 2, "series values"),
        ("eval instant at 5 foo\n", 1, "invalid timestamp definition"),
        (
            "eval range from 10m to 5m step 1m foo\n",
            1,
            "before start timestamp",
        ),
        ("eval instant foo\n", 1, "invalid"),
        (
            "eval instant at 1m foo\n  foo 1 2\n",
            2,
            "multiple values in instant evaluation",
        ),
        (
            "eval instant at 1m foo\n  expect warn\n  expect no_warn\n",
            3,
            "warn and no_warn",
        ),
        (
            "eval instant at 1m foo\n  expect info\n  expect no_info\n",
            3,
            "info and no_info",
        ),
        (
            "eval instant at 1m foo\n  expect fail\n  expect fail\n",
            3,
            "multiple expect fail",
        ),
        (
            "eval instant at 1m foo\n  expect bogus\n",
            2,
            "invalid expect statement",
        ),
        (
            "eval instant at 1m foo\n  expect warn msg:\n",
            2,
            "invalid expect statement",
        ),
        (
            "eval instant at 1m foo\n  expect fail regex: (\n",
            2,
            "invalid regex",
        ),
        (
            "eval instant at 1m foo\n  expect string foo\n",
            2,
            "correctly quoted",
        ),
        (
            "eval instant at 1m foo\n  1\n  expect no_warn\n",
            3,
            "invalid command",
        ),
    ];
    for (text, line, what) in cases {
        match parse_script(text) {
            Ok(_) => panic!("{text:?} should not parse"),
            Err(e) => {
                assert_eq!(e.line, line, "{text:?}: {e}");
                assert!(e.message.contains(what), "{text:?}: {e}");
            }
        }
    }
}

#[test]
fn almost_equal_is_relative_and_nan_aware() {
    assert!(almost_equal(1.0, 1.0 + 1e-7));
    assert!(!almost_equal(1.0, 1.0 + 1e-5));
    assert!(almost_equal(1e12, 1e12 + 1.0));
    assert!(!almost_equal(0.0, 1e-300));
    assert!(almost_equal(f64::NAN, -f64::NAN));
    assert!(almost_equal(STALE_NAN, STALE_NAN));
    assert!(!almost_equal(STALE_NAN, f64::NAN));
    assert!(almost_equal(f64::INFINITY, f64::INFINITY));
    assert!(!almost_equal(f64::INFINITY, f64::NEG_INFINITY));
}

fn report(text: &str) -> FileReport {
    run_script("t.test", text)
}

#[test]
fn runner_passes_and_fails() {
    let r = report(
        "load 1m\n  foo{a=\"1\"} 1 2 3\n  foo{a=\"2\"} 10 20 30\n\n\
         eval instant at 2m foo\n  foo{a=\"1\"} 3\n  foo{a=\"2\"} 30\n\n\
         eval instant at 2m foo\n  foo{a=\"1\"} 4\n  foo{a=\"2\"} 30\n\n\
         eval instant at 2m foo{a=\"1\"}\n\n\
         eval range from 0 to 2m step 1m foo{a=\"2\"}\n  foo{a=\"2\"} 10 20 30\n\n\
         eval range from 0 to 2m step 1m foo{a=\"2\"}\n  foo{a=\"2\"} 10 _ 30\n\n\
         eval instant at 0 1 + 1\n  2\n\n\
         eval instant at 0 foo\n  expect fail\n\n\
         eval instant at 0 1 +\n  expect fail\n",
    );
    let failed: Vec<usize> = r.failed.iter().map(|c| c.line).collect();
    assert_eq!(failed, [9, 13, 18, 24], "{r}");
    assert_eq!(r.passed, 4, "{r}");
    assert!(r.failed[0].reason.contains("expected 4"), "{r}");
    assert!(r.failed[1].reason.contains("unexpected metric"), "{r}");
    assert!(r.failed[3].reason.contains("expected error"), "{r}");
}

#[test]
fn runner_skips_histograms() {
    let r = report(
        "load 1m\n  h{a=\"1\"} {{count:1}} 2\n  f{a=\"1\"} 1 2\n\n\
         load_with_nhcb 1m\n  c_bucket{le=\"1\"} 1\n  c_bucket{le=\"+Inf\"} 2\n  c_count 2\n\n\
         eval instant at 1m f\n  f{a=\"1\"} 2\n\n\
         eval instant at 1m h\n  h{a=\"1\"} 2\n\n\
         eval instant at 1m {a=\"1\"}\n  f{a=\"1\"} 2\n\n\
         eval instant at 1m f\n  f{a=\"1\"} {{count:1}}\n\n\
         eval instant at 0m c_bucket{le=\"1\"}\n  c_bucket{le=\"1\"} 1\n\n\
         eval instant at 0m histogram_count(c)\n\n\
         clear\n\n\
         eval instant at 1m h\n",
    );
    let skipped: Vec<usize> = r.skipped.iter().map(|c| c.line).collect();
    assert_eq!(skipped, [13, 16, 19, 25], "{r}");
    assert!(
        r.skipped[0].reason.contains("native histogram series h"),
        "{r}"
    );
    assert!(r.skipped[2].reason.contains("expected output holds"), "{r}");
    assert!(r.skipped[3].reason.contains("load_with_nhcb"), "{r}");
    assert_eq!(r.passed, 3, "{r}");
}

#[test]
fn report_display() {
    let r = FileReport {
        file: "x.test".into(),
        passed: 2,
        failed: vec![CaseResult {
            line: 3,
            query: "foo".into(),
            reason: "boom".into(),
        }],
        skipped: vec![CaseResult {
            line: 7,
            query: "bar".into(),
            reason: "histograms".into(),
        }],
    };
    assert_eq!(
        r.to_string(),
        "x.test: 2 passed, 1 failed, 1 skipped\n failed:\n  line 3: foo: boom\n skipped:\n  line \
         7: bar: histograms\n"
    );
    let bad = run_script("y.test", "nonsense\n");
    assert_eq!(bad.failed.len(), 1);
    assert_eq!(bad.failed[0].line, 1);
}

#[test]
fn annotations_are_checked_only_when_asked() {
    use compare::check_annotations;
    let none = AnnotationExpectation::default();
    let w = vec![
        "PromQL warning: a".to_string(),
        "PromQL warning: b".to_string(),
    ];
    // No expectation: anything goes.
    assert!(check_annotations(&none, &none, &w, &w).is_ok());
    // `expect no_warn`.
    let forbid = AnnotationExpectation {
        forbidden: true,
        ..Default::default()
    };
    assert!(check_annotations(&forbid, &none, &w, &[]).is_err());
    assert!(check_annotations(&forbid, &none, &[], &w).is_ok());
    // `expect warn` matches all, but needs at least one.
    let any = AnnotationExpectation {
        expected: vec![TextMatch::Any],
        ..Default::default()
    };
    assert!(check_annotations(&any, &none, &w, &[]).is_ok());
    assert!(check_annotations(&any, &none, &[], &[]).is_err());
    // `expect warn msg:` must match one, and every warning must match some line.
    let one = AnnotationExpectation {
        expected: vec![TextMatch::Exact("PromQL warning: a".into())],
        ..Default::default()
    };
    assert!(check_annotations(&one, &none, &w[..1], &[]).is_ok());
    assert!(check_annotations(&one, &none, &w, &[]).is_err());
    // `eval_info`.
    let legacy = AnnotationExpectation {
        at_least_one: true,
        ..Default::default()
    };
    assert!(check_annotations(&none, &legacy, &[], &[]).is_err());
    assert!(check_annotations(&none, &legacy, &[], &w).is_ok());
}

#[test]
fn result_comparison() {
    use crate::{InstantSample, Series, Value};
    use compare::{compare_result, Grid};
    let grid = Grid {
        start: 0,
        end: Some(120_000),
        step: 60_000,
    };
    let l = |v: &str| labels(&[("__name__", "m"), ("a", v)]);
    let sample = |a: &str, v: f64| InstantSample {
        labels: l(a),
        t: 0,
        v,
    };
    let c = only_case("eval instant at 0 m\n  m{a=\"1\"} 1\n  m{a=\"2\"} NaN\n");
    let ok = Value::Vector(vec![sample("2", f64::NAN), sample("1", 1.0000001)]);
    assert!(compare_result(&c, grid, &ok).is_ok());
    let missing = Value::Vector(vec![sample("1", 1.0)]);
    assert!(compare_result(&c, grid, &missing)
        .unwrap_err()
        .contains("not found"));
    let scalar = Value::Scalar { t: 0, v: 1.0 };
    assert!(compare_result(&c, grid, &scalar)
        .unwrap_err()
        .contains("expected vector or matrix"));

    let ordered =
        only_case("eval instant at 0 m\n  expect ordered\n  m{a=\"1\"} 1\n  m{a=\"2\"} 2\n");
    let rev = Value::Vector(vec![sample("2", 2.0), sample("1", 1.0)]);
    assert!(compare_result(&ordered, grid, &rev)
        .unwrap_err()
        .contains("position"));
    assert!(compare_result(
        &c,
        grid,
        &Value::Vector(vec![sample("2", f64::NAN), sample("1", 1.0)])
    )
    .is_ok());

    let s = only_case("eval instant at 0 1\n  1\n");
    assert!(compare_result(&s, grid, &Value::Scalar { t: 0, v: 1.0 }).is_ok());
    assert!(compare_result(&s, grid, &Value::Vector(vec![]))
        .unwrap_err()
        .contains("expected scalar"));

    let empty = only_case("eval instant at 0 m\n");
    assert!(compare_result(&empty, grid, &Value::Vector(vec![])).is_ok());
    assert!(compare_result(&empty, grid, &Value::Matrix(vec![])).is_ok());
    assert!(compare_result(
        &empty,
        grid,
        &Value::String {
            t: 0,
            s: String::new()
        }
    )
    .is_ok());
    assert!(compare_result(&empty, grid, &ok).is_err());

    let r = only_case("eval range from 0 to 2m step 1m m\n  m{a=\"1\"} 1 _ 3\n");
    let row = |points: Vec<(i64, f64)>| {
        Value::Matrix(vec![Series {
            labels: l("1"),
            points,
        }])
    };
    assert!(compare_result(&r, grid, &row(vec![(0, 1.0), (120_000, 3.0)])).is_ok());
    assert!(
        compare_result(&r, grid, &row(vec![(0, 1.0), (60_000, 3.0)]))
            .unwrap_err()
            .contains("timestamp")
    );
    assert!(compare_result(&r, grid, &row(vec![(0, 1.0)]))
        .unwrap_err()
        .contains("float points"));
    let unsorted = Value::Matrix(vec![
        Series {
            labels: l("2"),
            points: vec![],
        },
        Series {
            labels: l("1"),
            points: vec![],
        },
    ]);
    assert!(compare_result(&r, grid, &unsorted)
        .unwrap_err()
        .contains("sorted"));
    let too_many = only_case("eval range from 0 to 1m step 1m m\n  m{a=\"1\"} 1 2 3\n");
    let short = Grid {
        end: Some(60_000),
        ..grid
    };
    assert!(compare_result(&too_many, short, &row(vec![(0, 1.0)]))
        .unwrap_err()
        .contains("cannot return this many points"));
}

#[test]
fn instant_cases_are_also_checked_in_range_mode() {
    // The instant query of a range selector returns an (empty) matrix, which matches an empty
    // expectation; as a range query it is an error, so the case fails, as in promqltest.
    let r = report("eval instant at 0 nothing_here[1m]\n");
    assert_eq!(r.failed.len(), 1, "{r}");
    assert!(r.failed[0].reason.contains("range mode"), "{r}");
    // `expect range vector` turns the range-mode check off.
    let r = report(
        "load 30s\n  m 1 2 3\n\neval instant at 1m m[1m]\n  expect range vector from 30s to 1m step 30s\n  m 2 3\n",
    );
    assert_eq!((r.passed, r.failed.len()), (1, 0), "{r}");
}
