//! The explicit skip rules. Native histograms are out of scope for Strata, so a case is
//! skipped, with its reason, when
//!
//! 1. its expected output holds a native histogram (`{{...}}`);
//! 2. it calls a function listed in [`SKIPPED_FUNCTIONS`];
//! 3. one of its selectors may read a histogram series: a series loaded with `{{...}}` values,
//!    or the native histogram with custom buckets that `load_with_nhcb` derives from classic
//!    `_bucket`/`_count`/`_sum` series. "May read" means the selector's name and matchers (all
//!    of them, `or` groups included) match the histogram series' labels.
//!
//! Everything else runs: float-only cases of histogram functions included.

use super::parse::has_histogram;
use super::rewrite::{functions, selector_matches, selectors};
use super::{EvalCase, Load, SeqValue};
use promql_parser::parser::Expr;
use strata_model::{Labels, METRIC_NAME};

/// Functions whose cases are skipped wherever they appear, with the reason. Empty on purpose:
/// the native-histogram functions (`histogram_count`, `histogram_sum`, `histogram_avg`,
/// `histogram_fraction`, `histogram_stddev`, `histogram_stdvar`, ...) are skipped only when
/// their selectors may read histogram data (rule 3), because on float data they have defined
/// results that the engine must produce.
pub const SKIPPED_FUNCTIONS: &[(&str, &str)] = &[];

/// How a histogram series came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistogramOrigin {
    /// Loaded with `{{...}}` values.
    Native,
    /// Derived by `load_with_nhcb` from classic histogram series.
    Nhcb,
}

/// A series holding native histogram samples in the script's (notional) storage.
#[derive(Debug, Clone)]
pub(crate) struct HistogramSeries {
    /// Its labels.
    pub labels: Labels,
    /// The script line that defined it (or the classic series it was derived from).
    pub line: usize,
    /// Where it came from.
    pub origin: HistogramOrigin,
}

/// The histogram series a `load` command creates.
pub(crate) fn histogram_series(load: &Load) -> Vec<HistogramSeries> {
    let mut out: Vec<HistogramSeries> = Vec::new();
    for s in &load.series {
        if s.values.iter().any(|v| matches!(v, SeqValue::Histogram(_))) {
            out.push(HistogramSeries {
                labels: s.labels.clone(),
                line: s.line,
                origin: HistogramOrigin::Native,
            });
        }
    }
    if load.with_nhcb {
        for s in &load.series {
            let Some(base) = nhcb_base(&s.labels) else {
                continue;
            };
            if !out.iter().any(|h| h.labels == base) {
                out.push(HistogramSeries {
                    labels: base,
                    line: s.line,
                    origin: HistogramOrigin::Nhcb,
                });
            }
        }
    }
    out
}

/// The NHCB series a classic histogram series contributes to under `load_with_nhcb`: the name
/// without its `_bucket`/`_sum`/`_count` suffix and without `le`. A `_bucket` series whose `le`
/// is not a number (or is NaN) contributes nothing.
fn nhcb_base(labels: &Labels) -> Option<Labels> {
    let name = labels.metric_name()?;
    let base = if let Some(b) = name.strip_suffix("_bucket") {
        let le: f64 = labels.get("le")?.parse().ok()?;
        if le.is_nan() {
            return None;
        }
        b
    } else if let Some(b) = name.strip_suffix("_sum") {
        b
    } else {
        name.strip_suffix("_count")?
    };
    let mut l = labels.clone();
    l.set(METRIC_NAME, base);
    l.set("le", "");
    Some(l)
}

/// Why `case` is skipped, if it is. `expr` is the parsed query (`None` if promql-parser
/// cannot parse it); `histograms` the histogram series currently loaded.
pub(crate) fn skip_reason(
    case: &EvalCase,
    expr: Option<&Expr>,
    histograms: &[HistogramSeries],
) -> Option<String> {
    if let Some(s) = case
        .expected
        .series
        .iter()
        .find(|s| has_histogram(&s.values))
    {
        return Some(format!(
            "expected output holds a native histogram (line {})",
            s.line
        ));
    }
    if let Some(expr) = expr {
        for f in functions(expr) {
            if let Some((_, why)) = SKIPPED_FUNCTIONS.iter().find(|(n, _)| *n == f) {
                return Some(format!("calls {f}(): {why}"));
            }
        }
        for vs in selectors(expr) {
            if let Some(h) = histograms.iter().find(|h| selector_matches(vs, &h.labels)) {
                return Some(describe(h, "query may read"));
            }
        }
    } else if let Some(h) = histograms.iter().find(|h| {
        h.labels
            .metric_name()
            .is_some_and(|n| case.query.contains(n))
    }) {
        return Some(describe(
            h,
            "query does not parse with promql-parser and names",
        ));
    }
    None
}

fn describe(h: &HistogramSeries, what: &str) -> String {
    match h.origin {
        HistogramOrigin::Native => format!(
            "{what} native histogram series {} (loaded at line {})",
            h.labels, h.line
        ),
        HistogramOrigin::Nhcb => format!(
            "{what} native histogram series {} (derived by load_with_nhcb from line {})",
            h.labels, h.line
        ),
    }
}
