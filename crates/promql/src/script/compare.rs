//! Result comparison as promqltest does it.

use super::{AnnotationExpectation, EvalCase, ExpectedSeries, SeqValue, TextMatch};
use crate::{InstantSample, Series, Value};
use strata_model::{Labels, STALE_NAN};

/// Relative error allowed between an expected and an actual sample value (promqltest's
/// `defaultEpsilon`).
pub const EPSILON: f64 = 1e-6;

const MIN_NORMAL: f64 = f64::MIN_POSITIVE;

fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN.to_bits()
}

/// Prometheus's `almost.Equal(a, b, 1e-6)`: a staleness marker equals only a staleness
/// marker, any other NaN equals any other NaN, equal values are equal, values next to zero or
/// subnormal must differ by less than `EPSILON * MIN_NORMAL`, others by less than `EPSILON`
/// relative to `|a| + |b|`.
pub fn almost_equal(a: f64, b: f64) -> bool {
    if is_stale(a) || is_stale(b) {
        return is_stale(a) && is_stale(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

/// A float as Go's `%v` prints it where it matters for reading messages.
pub(crate) fn fmt_f64(v: f64) -> String {
    if is_stale(v) {
        "StaleNaN".into()
    } else if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn fmt_seq(values: &[SeqValue]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            SeqValue::Omitted => "_".into(),
            SeqValue::Float(f) => fmt_f64(*f),
            SeqValue::Histogram(h) => h.clone(),
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

fn fmt_points(points: &[(i64, f64)]) -> String {
    const MAX: usize = 12;
    let mut parts: Vec<String> = points
        .iter()
        .take(MAX)
        .map(|(t, v)| format!("{} @[{t}]", fmt_f64(*v)))
        .collect();
    if points.len() > MAX {
        parts.push(format!("... {} more", points.len() - MAX));
    }
    format!(
        "{} float point{} [{}]",
        points.len(),
        if points.len() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

fn fmt_value(v: &Value) -> String {
    match v {
        Value::Scalar { t, v } => format!("scalar: {} @[{t}]", fmt_f64(*v)),
        Value::String { t, s } => format!("string: {s} @[{t}]"),
        Value::Vector(samples) => {
            let parts: Vec<String> = samples
                .iter()
                .take(12)
                .map(|s| format!("{} => {} @[{}]", s.labels, fmt_f64(s.v), s.t))
                .collect();
            let more = samples.len().saturating_sub(12);
            if more > 0 {
                format!("{{{}, ... {more} more}}", parts.join(", "))
            } else {
                format!("{{{}}}", parts.join(", "))
            }
        }
        Value::Matrix(series) => format!("{} series", series.len()),
    }
}

/// The time grid an expected series' values are laid on: value `i` sits at
/// `start + i * step`, and no value may lie after `end` (`None`: an instant query without
/// `expect range vector`, whose matrix results can hold no expected point).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub start: i64,
    pub end: Option<i64>,
    pub step: i64,
}

fn find<'a>(case: &'a EvalCase, labels: &Labels) -> Option<&'a ExpectedSeries> {
    case.expected.series.iter().find(|s| &s.labels == labels)
}

/// promqltest's `compareResult`.
pub(crate) fn compare_result(case: &EvalCase, grid: Grid, value: &Value) -> Result<(), String> {
    let expect_scalar = case.expected.scalar.is_some();
    match value {
        Value::Matrix(series) => {
            if case.ordered {
                return Err("expected ordered result, but query returned a matrix".into());
            }
            if expect_scalar {
                return Err(format!(
                    "expected scalar result, but got matrix {}",
                    fmt_value(value)
                ));
            }
            assert_sorted(series)?;
            compare_matrix(case, grid, series)
        }
        Value::Vector(samples) => compare_vector(case, samples),
        Value::Scalar { v, .. } => {
            let Some(exp) = case.expected.scalar else {
                return Err(format!(
                    "expected vector or matrix result, but got {}",
                    fmt_value(value)
                ));
            };
            if !almost_equal(exp, *v) {
                return Err(format!(
                    "expected scalar {} but got {}",
                    fmt_f64(exp),
                    fmt_f64(*v)
                ));
            }
            Ok(())
        }
        Value::String { s, .. } => {
            let exp = case.expected.string.as_deref().unwrap_or("");
            if exp != s {
                return Err(format!("expected string \"{exp}\" but got \"{s}\""));
            }
            Ok(())
        }
    }
}

fn compare_matrix(case: &EvalCase, grid: Grid, series: &[Series]) -> Result<(), String> {
    let mut seen = vec![false; case.expected.series.len()];
    for s in series {
        let Some(idx) = case
            .expected
            .series
            .iter()
            .position(|e| e.labels == s.labels)
        else {
            return Err(format!(
                "unexpected metric {} in result, has {}",
                s.labels,
                fmt_points(&s.points)
            ));
        };
        seen[idx] = true;
        let exp = &case.expected.series[idx];
        let mut floats = Vec::new();
        let mut histograms = 0usize;
        for (i, v) in exp.values.iter().enumerate() {
            let ts = grid.start + i as i64 * grid.step;
            let within = matches!(grid.end, Some(end) if ts <= end);
            if !within {
                return Err(format!(
                    "expected {} points for {}, but query time range cannot return this many \
                     points",
                    exp.values.len(),
                    exp.labels
                ));
            }
            match v {
                SeqValue::Histogram(_) => histograms += 1,
                SeqValue::Float(f) => floats.push((ts, *f)),
                SeqValue::Omitted => {}
            }
        }
        if floats.len() != s.points.len() || histograms != 0 {
            return Err(format!(
                "expected {} float points and {} histogram points for {}, but got {}",
                floats.len(),
                histograms,
                exp.labels,
                fmt_points(&s.points)
            ));
        }
        for (i, ((et, ev), (at, av))) in floats.iter().zip(s.points.iter()).enumerate() {
            if et != at {
                return Err(format!(
                    "expected float value at index {i} for {} to have timestamp {et}, but it had \
                     timestamp {at} (result has {})",
                    exp.labels,
                    fmt_points(&s.points)
                ));
            }
            if !almost_equal(*av, *ev) {
                return Err(format!(
                    "expected float value at index {i} (t={at}) for {} to be {}, but got {} \
                     (result has {})",
                    exp.labels,
                    fmt_f64(*ev),
                    fmt_f64(*av),
                    fmt_points(&s.points)
                ));
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format!(
            "expected metric {} not found",
            case.expected.series[i].labels
        ));
    }
    Ok(())
}

fn compare_vector(case: &EvalCase, samples: &[InstantSample]) -> Result<(), String> {
    if case.expected.scalar.is_some() {
        return Err(format!(
            "expected scalar result, but got vector {}",
            fmt_value(&Value::Vector(samples.to_vec()))
        ));
    }
    let mut seen = vec![false; case.expected.series.len()];
    for (pos, s) in samples.iter().enumerate() {
        let Some(exp) = find(case, &s.labels) else {
            return Err(format!(
                "unexpected metric {} in result, has value {}",
                s.labels,
                fmt_f64(s.v)
            ));
        };
        if case.ordered && exp.pos != pos + 1 {
            return Err(format!(
                "expected metric {} with {} at position {} but was at {}",
                s.labels,
                fmt_seq(&exp.values),
                exp.pos,
                pos + 1
            ));
        }
        let exp0 = match exp.values.first() {
            Some(SeqValue::Float(f)) => *f,
            // promqltest compares an omitted value as 0.
            Some(SeqValue::Omitted) => 0.0,
            Some(SeqValue::Histogram(h)) => {
                return Err(format!(
                    "expected histogram {h} for {} but got float value {}",
                    s.labels,
                    fmt_f64(s.v)
                ))
            }
            None => return Err(format!("no expected value given for {}", exp.labels)),
        };
        if !almost_equal(exp0, s.v) {
            return Err(format!(
                "expected {} for {} but got {}",
                fmt_f64(exp0),
                s.labels,
                fmt_f64(s.v)
            ));
        }
        if let Some(i) = case
            .expected
            .series
            .iter()
            .position(|e| e.labels == s.labels)
        {
            seen[i] = true;
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        let e = &case.expected.series[i];
        return Err(format!(
            "expected metric {} with {} not found",
            e.labels,
            fmt_seq(&e.values)
        ));
    }
    Ok(())
}

/// Matrix rows must be sorted by labels (Prometheus's `labels.Compare`, which is the derived
/// order of [`Labels`]).
pub(crate) fn assert_sorted(series: &[Series]) -> Result<(), String> {
    for (i, w) in series.windows(2).enumerate() {
        if w[0].labels > w[1].labels {
            return Err(format!(
                "matrix results should always be sorted by labels, but matrix is not sorted: \
                 series at index {} with labels {} sorts before series at index {i} with labels \
                 {}",
                i + 1,
                w[1].labels,
                w[0].labels
            ));
        }
    }
    Ok(())
}

fn validate_annotations(
    kind: &str,
    expected: &[TextMatch],
    actual: &[String],
    all: &str,
) -> Result<(), String> {
    if expected.is_empty() {
        return Ok(());
    }
    if actual.is_empty() {
        return Err(format!("expected {kind} annotations but none were found"));
    }
    for e in expected {
        if !actual.iter().any(|a| e.matches(a)) {
            return Err(format!(
                "expected {kind} annotation matching {} but no matching annotation was found, \
                 found: {all}",
                e.describe()
            ));
        }
    }
    for a in actual {
        if !expected.iter().any(|e| e.matches(a)) {
            return Err(format!("unexpected {kind} annotation {a:?} found"));
        }
    }
    Ok(())
}

fn fmt_annotations(warnings: &[String], infos: &[String]) -> String {
    let all: Vec<String> = warnings
        .iter()
        .map(|w| format!("warning: {w}"))
        .chain(infos.iter().map(|i| format!("info: {i}")))
        .collect();
    format!("[{}]", all.join("; "))
}

/// promqltest's `checkAnnotations`. Without any `expect warn|no_warn|info|no_info` line (or
/// `eval_warn`/`eval_info`) annotations are not checked at all.
pub(crate) fn check_annotations(
    warn: &AnnotationExpectation,
    info: &AnnotationExpectation,
    warnings: &[String],
    infos: &[String],
) -> Result<(), String> {
    if warn.at_least_one && warnings.is_empty() {
        return Err("expected warnings but got none".into());
    }
    if info.at_least_one && infos.is_empty() {
        return Err("expected info annotations but got none".into());
    }
    let all = fmt_annotations(warnings, infos);
    validate_annotations("warn", &warn.expected, warnings, &all)?;
    validate_annotations("info", &info.expected, infos, &all)?;
    if warn.forbidden && !warnings.is_empty() {
        return Err(format!("unexpected warning annotations: {all}"));
    }
    if info.forbidden && !infos.is_empty() {
        return Err(format!("unexpected info annotations: {all}"));
    }
    Ok(())
}

/// promqltest's `checkExpectedFailure`: every given message/pattern must match the error.
pub(crate) fn check_expected_failure(case: &EvalCase, message: &str) -> Result<(), String> {
    for check in &case.fail_checks {
        if !check.matches(message) {
            return Err(format!(
                "expected error matching {}, but got: {message}",
                check.describe()
            ));
        }
    }
    Ok(())
}
