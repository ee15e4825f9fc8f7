//! The query engine: options, per-query context, instant and range entry points.

use crate::error::Warning;
use crate::eval::{apply_drop_name, dup_labelset, merge_same_labelsets, Env, Grid, Row, Val};
use crate::{Error, InstantSample, QueryOutput, Series, Value};
use promql_parser::parser::{value::ValueType, Expr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_model::{Resolution, Resolutions, Storage, Tenant, WindowStorage};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (Prometheus: 5 minutes).
    pub lookback_delta_ms: i64,
    /// Most samples one query may load or hold at once.
    pub max_samples: usize,
    /// Longest a query may run.
    pub timeout: Option<Duration>,
    /// Step of subqueries that give none (`x[1h:]`); Prometheus uses its global evaluation
    /// interval, 1 minute by default.
    pub default_subquery_step_ms: i64,
    /// Longest query text accepted, in bytes.
    pub max_query_length: usize,
    /// Deepest nesting accepted, as [`crate::shape::scan`] estimates it before parsing.
    pub max_depth: usize,
    /// Longest label value a query may build (`label_replace`, `label_join`), in bytes.
    pub max_label_value_len: usize,
    /// Most steps a range query may have (Prometheus: 11,000 points per series).
    pub max_points_per_series: i64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Some(Duration::from_secs(120)),
            default_subquery_step_ms: 60_000,
            max_query_length: 256 << 10,
            max_depth: 128,
            max_label_value_len: 2048,
            max_points_per_series: 11_000,
        }
    }
}

/// Queries estimated to nest deeper than this are parsed, evaluated and printed on a thread of
/// their own with [`DEEP_STACK_BYTES`] of stack: every level recurses, and the threads queries
/// usually run on have 2 MiB.
const DEEP_QUERY: usize = 16;

/// Stack of the thread a deep query runs on: every kind of node nested 128 deep fits in 8 MiB
/// in a debug build (tests/limits.rs), so this leaves room for a `max_depth` several times
/// the default. Only what is touched is mapped.
const DEEP_STACK_BYTES: usize = 64 << 20;

/// Runs `f` here, or for a deep query on a thread with a stack large enough for it.
fn with_stack<R: Send>(depth: usize, f: impl FnOnce() -> R + Send) -> R {
    if depth <= DEEP_QUERY {
        return f();
    }
    std::thread::scope(|s| {
        match std::thread::Builder::new()
            .name("strata-deep-query".into())
            .stack_size(DEEP_STACK_BYTES)
            .spawn_scoped(s, f)
        {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(e) => panic!("cannot start a thread for a deep query: {e}"),
        }
    })
}

/// Who runs a query, and how it may be stopped early.
#[derive(Debug, Clone)]
pub struct QueryContext {
    /// The tenant whose data the query reads.
    pub tenant: Tenant,
    cancel: Option<Arc<AtomicBool>>,
    timeout: Option<Duration>,
    pub(crate) max_resolution: Resolution,
}

impl QueryContext {
    /// A context for `tenant` that only the engine's timeout can stop.
    pub fn new(tenant: Tenant) -> QueryContext {
        QueryContext {
            tenant,
            cancel: None,
            timeout: None,
            max_resolution: Resolution::Day,
        }
    }

    /// Reads no tier coarser than `r` (the API's `max_source_resolution`): with `raw`, a
    /// query sees only raw samples, as a Prometheus would.
    pub fn with_max_source_resolution(mut self, r: Resolution) -> QueryContext {
        self.max_resolution = r;
        self
    }

    /// Shortens the timeout for this query (the engine's own timeout still applies).
    pub fn with_timeout(mut self, timeout: Duration) -> QueryContext {
        self.timeout = Some(timeout);
        self
    }

    /// Stops the query (with [`Error::Canceled`]) once `flag` becomes true, e.g. when the HTTP
    /// client disconnects.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> QueryContext {
        self.cancel = Some(flag);
        self
    }

    /// The coarsest tier the query may read (see [`QueryContext::with_max_source_resolution`]).
    pub fn max_source_resolution(&self) -> Resolution {
        self.max_resolution
    }

    pub(crate) fn is_canceled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// Evaluates PromQL over a [`Storage`].
#[derive(Clone)]
pub struct Engine {
    pub(crate) storage: Arc<dyn Storage>,
    /// The rollup tiers the router may answer from (none: raw samples only).
    pub(crate) tiers: Option<Arc<dyn WindowStorage>>,
    pub(crate) opts: EngineOptions,
    /// Set by [`Engine::shut_down`]; shared by every clone.
    shutdown: Arc<AtomicBool>,
}

impl Engine {
    /// An engine reading from `storage`.
    pub fn new(storage: Arc<dyn Storage>, opts: EngineOptions) -> Engine {
        Engine {
            storage,
            tiers: None,
            opts,
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same engine, answering from the rollup `tiers` where raw samples are gone or the
    /// step is coarse (see the `tiers` module of this crate).
    pub fn with_tiers(mut self, tiers: Arc<dyn WindowStorage>) -> Engine {
        self.tiers = Some(tiers);
        self
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Stops every running query of this engine and its clones (they fail with
    /// [`Error::ShuttingDown`] within a fraction of a second), and refuses new ones: for a
    /// server that is shutting down.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// Checks `query` against the engine's length and depth limits, then runs `f` (which
    /// parses it) on a stack deep enough for its nesting.
    fn within_limits<R: Send>(
        &self,
        query: &str,
        f: impl FnOnce() -> Result<R, Error> + Send,
    ) -> Result<R, Error> {
        let depth = crate::shape::check(query, self.opts.max_query_length, self.opts.max_depth)?;
        with_stack(depth, f)
    }

    /// Parses `query` within the engine's length and depth limits.
    pub fn parse(&self, query: &str) -> Result<Expr, Error> {
        self.within_limits(query, || parse_unchecked(query))
    }

    /// `query`, parsed and pretty-printed as Prometheus's `/api/v1/format_query` does.
    pub fn format(&self, query: &str) -> Result<String, Error> {
        self.within_limits(query, || parse_unchecked(query).map(|e| e.prettify()))
    }

    /// Evaluates `query` at one instant (`time_ms`).
    pub fn instant(
        &self,
        ctx: &QueryContext,
        query: &str,
        time_ms: i64,
    ) -> Result<QueryOutput, Error> {
        self.within_limits(query, || self.instant_parsed(ctx, query, time_ms))
    }

    fn instant_parsed(
        &self,
        ctx: &QueryContext,
        query: &str,
        time_ms: i64,
    ) -> Result<QueryOutput, Error> {
        let expr = parse_unchecked(query)?;
        let grid = Grid {
            start: time_ms,
            end: time_ms,
            step: 1,
        };
        let env = self.env(ctx, query, grid);
        let val = env.eval(&expr, grid)?;
        let value = match val {
            Val::Scalar(v) => Value::Scalar {
                t: time_ms,
                v: v[0],
            },
            Val::String(s) => Value::String { t: time_ms, s },
            Val::Vector(mut rows) => {
                apply_drop_name(&mut rows);
                let mut seen = std::collections::HashSet::with_capacity(rows.len());
                if !rows.iter().all(|r| seen.insert(&r.labels)) {
                    return Err(dup_labelset());
                }
                Value::Vector(
                    rows.into_iter()
                        .map(|r| InstantSample {
                            labels: r.labels,
                            t: time_ms,
                            v: r.points[0].1,
                        })
                        .collect(),
                )
            }
            Val::Range(mut rv) => {
                let (lo, hi) = rv.window(time_ms);
                rv.apply_drop_name();
                let points = rv.map_rows(&env, 1, |_, pts| {
                    Ok(pts
                        .iter()
                        .copied()
                        .filter(|p| p.0 > lo && p.0 <= hi)
                        .collect::<Vec<_>>())
                })?;
                let mut out: Vec<Series> = rv
                    .into_labels()
                    .zip(points)
                    .map(|((labels, _), points)| Series { labels, points })
                    .filter(|s| !s.points.is_empty())
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                Value::Matrix(out)
            }
        };
        Ok(env.finish(value))
    }

    /// Refuses a range of more steps than `max_points_per_series`, as Prometheus words it.
    pub fn check_points(&self, start_ms: i64, end_ms: i64, step_ms: i64) -> Result<(), Error> {
        let max = self.opts.max_points_per_series;
        if (end_ms as i128 - start_ms as i128) / (step_ms.max(1) as i128) <= max as i128 {
            return Ok(());
        }
        let digits = max.to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        Err(Error::BadData(format!(
            "exceeded maximum resolution of {grouped} points per timeseries. Try decreasing the query resolution (?step=XX)"
        )))
    }

    /// Evaluates `query` at every `step_ms` from `start_ms` to `end_ms` inclusive; the result is
    /// a matrix sorted by labels.
    pub fn range(
        &self,
        ctx: &QueryContext,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryOutput, Error> {
        if step_ms <= 0 {
            return Err(Error::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(Error::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        self.check_points(start_ms, end_ms, step_ms)?;
        self.within_limits(query, || {
            self.range_parsed(ctx, query, start_ms, end_ms, step_ms)
        })
    }

    fn range_parsed(
        &self,
        ctx: &QueryContext,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryOutput, Error> {
        let expr = parse_unchecked(query)?;
        match expr.value_type() {
            ValueType::Vector | ValueType::Scalar => {}
            other => {
                let name = if other == ValueType::Matrix {
                    "range vector"
                } else {
                    "string"
                };
                return Err(Error::BadData(format!(
                    "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
                )));
            }
        }
        let grid = Grid {
            start: start_ms,
            end: end_ms,
            step: step_ms,
        };
        let env = self.env(ctx, query, grid);
        let val = env.eval(&expr, grid)?;
        let mut rows = match val {
            Val::Scalar(v) => vec![Row {
                labels: Default::default(),
                drop_name: false,
                points: grid.iter().zip(v).collect(),
            }],
            Val::Vector(mut rows) => {
                apply_drop_name(&mut rows);
                merge_same_labelsets(rows)?
            }
            _ => return Err(Error::BadData("unexpected range query result".into())),
        };
        rows.sort_by(|a, b| a.labels.cmp(&b.labels));
        let value = Value::Matrix(
            rows.into_iter()
                .map(|r| Series {
                    labels: r.labels,
                    points: r.points,
                })
                .collect(),
        );
        Ok(env.finish(value))
    }

    fn env<'a>(&'a self, ctx: &'a QueryContext, query: &'a str, grid: Grid) -> Env<'a> {
        let tiers = self.tiers.as_deref();
        Env {
            storage: self.storage.as_ref(),
            tiers,
            coverage: tiers.map_or(strata_model::Coverage::RAW_ONLY, |t| {
                t.coverage(&ctx.tenant)
            }),
            used: Default::default(),
            ctx,
            opts: &self.opts,
            query,
            // A timeout too long to add to the clock is no deadline.
            deadline: match (self.opts.timeout, ctx.timeout) {
                (Some(a), Some(b)) => Instant::now().checked_add(a.min(b)),
                (a, b) => a.or(b).and_then(|t| Instant::now().checked_add(t)),
            },
            query_start: grid.start,
            query_end: grid.end,
            query_step: if grid.is_instant() { 0 } else { grid.step },
            annotations: Default::default(),
            held: Default::default(),
            shutdown: &self.shutdown,
            annotation_attempts: Default::default(),
        }
    }
}

impl Env<'_> {
    fn finish(self, value: Value) -> QueryOutput {
        let mut annotations = self.annotations.into_inner();
        annotations.sort();
        annotations.dedup();
        let mut warnings = Vec::new();
        let mut infos = Vec::new();
        for a in annotations {
            match a {
                Warning::Warn(w) => warnings.push(w),
                Warning::Info(i) => infos.push(i),
            }
        }
        QueryOutput {
            value,
            warnings,
            infos,
            tiers: Resolutions::from_bits(self.used.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

/// Parses a query within the default length and depth limits (see [`Engine::parse`]),
/// mapping syntax errors to `bad_data`.
pub fn parse(query: &str) -> Result<Expr, Error> {
    let opts = EngineOptions::default();
    crate::shape::check(query, opts.max_query_length, opts.max_depth)?;
    parse_unchecked(query)
}

/// Parses a query that passed [`crate::shape::check`]. A panic in the parser (promql-parser
/// has had them on inputs the check does not foresee) is the query's fault, not the server's:
/// it is answered as `bad_data`, not a crashed request.
fn parse_unchecked(query: &str) -> Result<Expr, Error> {
    match std::panic::catch_unwind(|| promql_parser::parser::parse(query)) {
        Ok(parsed) => {
            parsed.map_err(|e| Error::BadData(format!("invalid parameter \"query\": {e}")))
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            Err(Error::BadData(format!(
                "invalid parameter \"query\": the parser failed on this query: {why}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_unchecked;

    /// Past the shape check, a panic of the parser is bad_data: `m offset NaN` (which the
    /// check refuses before it gets here) panics promql-parser 0.11.1.
    #[test]
    fn a_parser_panic_is_bad_data() {
        let e = parse_unchecked("m offset NaN").expect_err("NaN is no offset");
        assert_eq!(e.error_type(), "bad_data", "{e}");
        assert!(
            e.to_string().starts_with("invalid parameter \"query\": "),
            "{e}"
        );
    }
}
