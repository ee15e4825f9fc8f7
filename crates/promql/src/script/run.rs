//! Executes a parsed script against a fresh in-memory storage and engine.

use super::compare::{
    assert_sorted, check_annotations, check_expected_failure, compare_result, Grid,
};
use super::rewrite::at_modifier_query;
use super::skip::{histogram_series, skip_reason, HistogramSeries};
use super::{CaseResult, Command, EvalCase, EvalKind, FileReport, Load, Script, SeqValue};
use crate::{Engine, EngineOptions, InstantSample, MemStorage, QueryContext, QueryOutput, Value};
use regex::Regex;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use strata_model::{Sample, Tenant};

/// promqltest does not compare an instant query with its range-mode run when the query calls
/// one of the query-context functions, whose values differ between the two modes.
fn query_context_functions() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\b(?:range|step|start|end)\(\s*\)").expect("valid pattern"))
}

/// The outcome of one `eval`.
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Storage, engine and the histogram series the script has loaded so far.
struct Runner {
    storage: Arc<MemStorage>,
    engine: Engine,
    tenant: Tenant,
    ctx: QueryContext,
    histograms: Vec<HistogramSeries>,
}

impl Runner {
    fn new() -> Runner {
        let storage = Arc::new(MemStorage::new());
        let engine = Engine::new(storage.clone(), EngineOptions::default());
        let tenant = Tenant::default_tenant();
        Runner {
            storage,
            engine,
            ctx: QueryContext::new(tenant.clone()),
            tenant,
            histograms: Vec::new(),
        }
    }

    /// Appends the float samples of every series (sample `i` at `i * interval`); histogram
    /// samples are not stored, their series are remembered for the skip rules.
    fn load(&mut self, load: &Load) {
        for s in &load.series {
            let samples: Vec<Sample> = s
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    SeqValue::Float(f) => Some(Sample::new(i as i64 * load.interval_ms, *f)),
                    SeqValue::Omitted | SeqValue::Histogram(_) => None,
                })
                .collect();
            if !samples.is_empty() {
                self.storage
                    .append(&self.tenant, s.labels.clone(), &samples);
            }
        }
        for h in histogram_series(load) {
            if !self.histograms.iter().any(|x| x.labels == h.labels) {
                self.histograms.push(h);
            }
        }
    }

    fn clear(&mut self) {
        self.storage.clear();
        self.histograms.clear();
    }

    fn eval(&self, case: &EvalCase) -> Outcome {
        let expr = promql_parser::parser::parse(&case.query).ok();
        if let Some(why) = skip_reason(case, expr.as_ref(), &self.histograms) {
            return Outcome::Skip(why);
        }
        let result = match case.kind {
            EvalKind::Range {
                start_ms,
                end_ms,
                step_ms,
            } => self.range_case(case, start_ms, end_ms, step_ms),
            EvalKind::Instant { at_ms } => self.instant_case(case, expr.as_ref(), at_ms),
        };
        match result {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(e),
        }
    }

    /// Checks an error or a successful output against the failure expectation; `Ok(None)`
    /// means the expected failure happened and nothing else is to be checked.
    fn settle(
        case: &EvalCase,
        result: Result<QueryOutput, crate::Error>,
    ) -> Result<Option<QueryOutput>, String> {
        match result {
            Err(e) if case.expect_fail => {
                check_expected_failure(case, &e.to_string()).map(|_| None)
            }
            Err(e) => Err(format!("error evaluating query: {e}")),
            Ok(_) if case.expect_fail => Err("expected error evaluating query but got none".into()),
            Ok(out) => Ok(Some(out)),
        }
    }

    fn range_case(&self, case: &EvalCase, start: i64, end: i64, step: i64) -> Result<(), String> {
        let result = self.engine.range(&self.ctx, &case.query, start, end, step);
        let Some(out) = Self::settle(case, result)? else {
            return Ok(());
        };
        check_annotations(&case.warn, &case.info, &out.warnings, &out.infos)?;
        let grid = Grid {
            start,
            end: Some(end),
            step,
        };
        compare_result(case, grid, &out.value)
    }

    /// The query at its time, then (unless it calls an `@`-unsafe function) the query with its
    /// selectors pinned to that time by `@`, evaluated at other times; each also in range mode.
    fn instant_case(
        &self,
        case: &EvalCase,
        expr: Option<&promql_parser::parser::Expr>,
        at_ms: i64,
    ) -> Result<(), String> {
        let (t, grid) = match case.range_vector {
            Some(w) => (
                w.end_ms,
                Grid {
                    start: w.start_ms,
                    end: Some(w.end_ms),
                    step: w.step_ms,
                },
            ),
            None => (
                at_ms,
                Grid {
                    start: at_ms,
                    end: None,
                    step: 0,
                },
            ),
        };
        self.instant_query(case, &case.query, t, grid)?;
        let Some(pinned) = expr.and_then(|e| at_modifier_query(e, t)) else {
            return Ok(());
        };
        let times: Vec<i64> = if t == 0 {
            vec![-1000, 0, 1000]
        } else {
            vec![-10 * t, 0, t / 5, t, 10 * t]
        };
        for et in times {
            self.instant_query(case, &pinned, et, grid)
                .map_err(|e| format!("with @ modifiers as `{pinned}` evaluated at {et}ms: {e}"))?;
        }
        Ok(())
    }

    fn instant_query(
        &self,
        case: &EvalCase,
        query: &str,
        t: i64,
        grid: Grid,
    ) -> Result<(), String> {
        let result = self.engine.instant(&self.ctx, query, t);
        let Some(out) = Self::settle(case, result)? else {
            return Ok(());
        };
        check_annotations(&case.warn, &case.info, &out.warnings, &out.infos)?;
        compare_result(case, grid, &out.value)?;
        if case.exclude_from_range_check || query_context_functions().is_match(query) {
            return Ok(());
        }
        // The same query as a range query from t-1m to t+1m must give the same answer at t.
        let range = self
            .engine
            .range(&self.ctx, query, t - 60_000, t + 60_000, 60_000)
            .map_err(|e| format!("error evaluating query in range mode: {e}"))?;
        if case.ordered {
            // Range results are sorted by labels, so an expected order cannot be checked.
            return Ok(());
        }
        let Value::Matrix(matrix) = &range.value else {
            return Err(format!(
                "range mode: query returned a {} instead of a matrix",
                range.value.type_name()
            ));
        };
        assert_sorted(matrix).map_err(|e| format!("range mode: {e}"))?;
        let vector: Vec<InstantSample> = matrix
            .iter()
            .filter_map(|s| {
                s.points
                    .iter()
                    .find(|(pt, _)| *pt == t)
                    .map(|&(pt, v)| InstantSample {
                        labels: s.labels.clone(),
                        t: pt,
                        v,
                    })
            })
            .collect();
        let value = if matches!(out.value, Value::Scalar { .. }) {
            match vector.first() {
                Some(s) => Value::Scalar { t, v: s.v },
                None => return Err(format!("range mode: no point at {t}ms for a scalar result")),
            }
        } else {
            Value::Vector(vector)
        };
        compare_result(case, grid, &value).map_err(|e| format!("range mode: {e}"))
    }
}

/// Runs every command of `script` in order.
pub(crate) fn run(name: &str, script: &Script) -> FileReport {
    let mut runner = Runner::new();
    let mut report = FileReport {
        file: name.to_string(),
        passed: 0,
        failed: Vec::new(),
        skipped: Vec::new(),
    };
    for cmd in &script.commands {
        match cmd {
            Command::Load(load) => runner.load(load),
            Command::Clear { .. } => runner.clear(),
            Command::Eval(case) => {
                let result = |reason: String| CaseResult {
                    line: case.line,
                    query: case.query.clone(),
                    reason,
                };
                // A panicking engine fails the case, not the whole file.
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| runner.eval(case)))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("(no message)");
                        Outcome::Fail(format!("engine panicked: {msg}"))
                    });
                match outcome {
                    Outcome::Pass => report.passed += 1,
                    Outcome::Fail(r) => report.failed.push(result(r)),
                    Outcome::Skip(r) => report.skipped.push(result(r)),
                }
            }
        }
    }
    report
}
