//! The evaluator core: the step grid, intermediate values, selectors and subqueries.
//!
//! Every node is evaluated once for the whole step grid of a query. An instant vector over the
//! grid is a list of [`Row`]s (one per output series, with a point at each step where it has a
//! value); a range vector is a [`RangeVal`] whose series are windowed per step by the functions
//! that consume it. Selectors decode each series where it is evaluated, into buffers each
//! thread reuses, so a query never holds all its selected samples at once.

use crate::error::Warning;
use crate::{EngineOptions, Error, QueryContext};
use parking_lot::Mutex;
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};
use strata_model::{
    Fields, Labels, LazySeries, Matcher, Sample, SelectHints, Storage, StorageError, METRIC_NAME,
};

/// The evaluation timestamps of a node: `start`, `start + step`, ... up to `end` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Grid {
    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            ((self.end - self.start) / self.step) as usize + 1
        }
    }

    pub fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    pub fn index(&self, ts: i64) -> usize {
        ((ts - self.start) / self.step) as usize
    }

    pub fn is_instant(&self) -> bool {
        self.start == self.end
    }

    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len()).map(|i| self.ts(i))
    }
}

/// One series of an intermediate result.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub labels: Labels,
    /// Prometheus 3 drops `__name__` lazily: set by functions and operators that change the
    /// meaning of a value, applied when the query finishes.
    pub drop_name: bool,
    /// `(timestamp, value)` in time order; for instant vectors, timestamps are grid steps.
    pub points: Vec<(i64, f64)>,
}

/// A range vector: raw samples (staleness markers removed), windowed per step as
/// `(ref - range, ref]` with `ref = (at or step) - offset`.
#[derive(Debug)]
pub(crate) struct RangeVal {
    pub rows: RangeRows,
    pub range: i64,
    pub offset: i64,
    pub at: Option<i64>,
}

/// The series of a range vector.
#[derive(Debug)]
pub(crate) enum RangeRows {
    /// A subquery's rows, evaluated.
    Points(Vec<Row>),
    /// A selector's series, decoded by [`RangeVal::map_rows`] where they are used.
    Lazy(Vec<LazySeries>),
}

impl RangeVal {
    /// The window `(lo, hi]` for evaluation time `ts`.
    pub fn window(&self, ts: i64) -> (i64, i64) {
        let r = self.at.unwrap_or(ts) - self.offset;
        (r - self.range, r)
    }

    /// Removes `__name__` from rows marked to drop it (a selector's series never are).
    pub fn apply_drop_name(&mut self) {
        if let RangeRows::Points(rows) = &mut self.rows {
            apply_drop_name(rows);
        }
    }

    /// The number of series.
    pub fn len(&self) -> usize {
        match &self.rows {
            RangeRows::Points(rows) => rows.len(),
            RangeRows::Lazy(series) => series.len(),
        }
    }

    /// Labels and `drop_name` of every series, in order.
    pub fn into_labels(self) -> impl Iterator<Item = (Labels, bool)> {
        let (points, lazy) = match self.rows {
            RangeRows::Points(rows) => (rows, Vec::new()),
            RangeRows::Lazy(series) => (Vec::new(), series),
        };
        points
            .into_iter()
            .map(|r| (r.labels, r.drop_name))
            .chain(lazy.into_iter().map(|s| (s.labels, false)))
    }

    /// `f(row index, points)` for every series, spread over cores (`steps`: the steps each
    /// series is evaluated at, to weigh the work). A selector's series are decoded here, one at
    /// a time per thread into buffers the thread reuses, so each is evaluated while in cache.
    pub fn map_rows<R: Send>(
        &self,
        env: &Env,
        steps: usize,
        f: impl Fn(usize, &[(i64, f64)]) -> Result<R, Error> + Sync,
    ) -> Result<Vec<R>, Error> {
        match &self.rows {
            RangeRows::Points(rows) => {
                let work = rows.iter().map(|r| r.points.len() + steps).sum();
                par_map(rows, work, |i, r| {
                    if i.is_multiple_of(256) {
                        env.check("expression evaluation")?;
                    }
                    f(i, &r.points)
                })
                .into_iter()
                .collect()
            }
            RangeRows::Lazy(series) => {
                let work = series.iter().map(|s| s.weight() + steps).sum();
                par_map_with(
                    series,
                    work,
                    |(samples, points): &mut (Vec<Sample>, Vec<(i64, f64)>), i, s| {
                        env.read_series(i, s, samples)?;
                        points_of(samples, points);
                        f(i, points)
                    },
                )
                .into_iter()
                .collect()
            }
        }
    }
}

/// An evaluated node.
#[derive(Debug)]
pub(crate) enum Val {
    Vector(Vec<Row>),
    Scalar(Vec<f64>),
    Range(RangeVal),
    String(String),
}

/// Shared state of one query evaluation.
pub(crate) struct Env<'a> {
    pub storage: &'a dyn Storage,
    pub ctx: &'a QueryContext,
    pub opts: &'a EngineOptions,
    pub query: &'a str,
    pub deadline: Option<Instant>,
    /// The query's own start and end, for `@ start()` / `@ end()`.
    pub query_start: i64,
    pub query_end: i64,
    /// The query's step (0 for instant queries), for `step()`.
    pub query_step: i64,
    pub annotations: Mutex<Vec<Warning>>,
    pub loaded: AtomicUsize,
}

impl Env<'_> {
    /// Fails when the query timed out or its client went away.
    pub fn check(&self, what: &'static str) -> Result<(), Error> {
        if self.ctx.is_canceled() {
            return Err(Error::Canceled(what));
        }
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Error::Timeout(what));
        }
        Ok(())
    }

    pub fn warn(&self, msg: String) {
        self.annotations.lock().push(Warning::Warn(msg));
    }

    /// Prometheus's warning for a quantile outside [0, 1] (or NaN).
    pub fn warn_quantile(&self, q: f64, pos: &str) {
        self.warn(format!(
            "PromQL warning: quantile value should be between 0 and 1, got {} {pos}",
            crate::labels::format_float(q)
        ));
    }

    /// Warns about the first invalid quantile of `qs`, if any.
    pub fn check_quantiles(&self, qs: &[f64], pos: &str) {
        if let Some(q) = qs.iter().find(|q| q.is_nan() || !(0.0..=1.0).contains(*q)) {
            self.warn_quantile(*q, pos);
        }
    }

    pub fn info(&self, msg: String) {
        self.annotations.lock().push(Warning::Info(msg));
    }

    /// Counts `n` samples held by the query against the limit.
    pub fn account(&self, n: usize) -> Result<(), Error> {
        self.account_in(n, "query execution")
    }

    /// As [`Env::account`], naming the stage (`what`) that went over the limit.
    fn account_in(&self, n: usize, what: &'static str) -> Result<(), Error> {
        let total = self.loaded.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.opts.max_samples {
            return Err(Error::TooManySamples(what, self.opts.max_samples));
        }
        Ok(())
    }

    /// The `(line:col)` position of `expr` in the query, as Prometheus appends to annotations.
    pub fn pos(&self, expr: &Expr) -> String {
        let text = expr.to_string();
        let col = self.query.find(&text).map(|i| i + 1).unwrap_or(1);
        format!("(1:{col})")
    }

    /// Resolves an `@` modifier to milliseconds.
    pub fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|a| match a {
            AtModifier::Start => self.query_start,
            AtModifier::End => self.query_end,
            AtModifier::At(t) => system_time_ms(*t),
        })
    }

    /// The series of a selector that may have samples in `[min_t, max_t]`, sorted by labels,
    /// to be read with [`Env::read_series`].
    pub fn select(
        &self,
        vs: &VectorSelector,
        min_t: i64,
        max_t: i64,
        fields: Fields,
    ) -> Result<Vec<LazySeries>, Error> {
        self.check("query preparation")?;
        let sets = matcher_sets(vs).map_err(Error::BadData)?;
        let hints = SelectHints {
            start: min_t,
            end: max_t,
            max_samples: None,
            fields,
        };
        let mut out: Vec<LazySeries> = Vec::new();
        for set in &sets {
            let got = self
                .storage
                .select_lazy(&self.ctx.tenant, set, &hints)
                .map_err(|e| self.storage_error(e))?;
            out.extend(got);
        }
        if sets.len() > 1 {
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            out.dedup_by(|a, b| a.labels == b.labels);
        }
        Ok(out)
    }

    /// Reads series number `i` of a selection into `buf` (cleared first), counting its samples
    /// against the limit.
    pub fn read_series(
        &self,
        i: usize,
        s: &LazySeries,
        buf: &mut Vec<Sample>,
    ) -> Result<(), Error> {
        if i.is_multiple_of(256) {
            self.check("query preparation")?;
        }
        buf.clear();
        s.read(buf).map_err(|e| self.storage_error(e))?;
        self.account_in(buf.len(), "query preparation")
    }

    fn storage_error(&self, e: StorageError) -> Error {
        match e {
            StorageError::TooManySamples { .. } => {
                Error::TooManySamples("query preparation", self.opts.max_samples)
            }
            other => Error::Storage(other.to_string()),
        }
    }
}

/// Below this much work (samples and steps to visit) per thread, handing work to the pool
/// costs more than it saves (a pool thread starts on a job in microseconds, where spawning one
/// took up to milliseconds).
const MIN_WORK_PER_THREAD: usize = 20_000;

/// `f(index, item)` for every item, in order; spread over the cores when `work` (about how many
/// samples and steps all calls visit) is large enough to pay for the threads.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    work: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    par_map_with(items, work, |_: &mut (), i, x| f(i, x))
}

/// The steps `0..steps` in one contiguous range per pool thread, for [`par_map`] to share out.
pub(crate) fn split_steps(steps: usize) -> Vec<std::ops::Range<usize>> {
    let per = steps.div_ceil(rayon::current_num_threads()).max(1);
    (0..steps)
        .step_by(per)
        .map(|s| s..(s + per).min(steps))
        .collect()
}

/// As [`par_map`], with scratch state `S` that each thread creates once and passes to every `f`
/// it runs (buffers reused from item to item).
pub(crate) fn par_map_with<S: Default, T: Sync, R: Send>(
    items: &[T],
    work: usize,
    f: impl Fn(&mut S, usize, &T) -> R + Sync,
) -> Vec<R> {
    let threads = rayon::current_num_threads()
        .min(work / MIN_WORK_PER_THREAD)
        .min(items.len())
        .max(1);
    if threads == 1 {
        let mut scratch = S::default();
        return items
            .iter()
            .enumerate()
            .map(|(i, x)| f(&mut scratch, i, x))
            .collect();
    }
    use rayon::prelude::*;
    items
        .par_iter()
        .enumerate()
        .with_min_len(items.len().div_ceil(threads))
        .map_init(S::default, |scratch, (i, x)| f(scratch, i, x))
        .collect()
}

pub(crate) fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

/// A range selector's points into `out` (cleared first): the samples without staleness
/// markers.
fn points_of(samples: &[Sample], out: &mut Vec<(i64, f64)>) {
    out.clear();
    // Branch-free within chunks, so the common check (no markers) runs at memory speed.
    let stale = samples
        .chunks(64)
        .any(|c| c.iter().fold(false, |acc, s| acc | s.is_stale()));
    if stale {
        out.extend(
            samples
                .iter()
                .filter(|s| !s.is_stale())
                .map(|s| (s.timestamp, s.value)),
        );
    } else {
        out.extend(samples.iter().map(|s| (s.timestamp, s.value)));
    }
}

/// Converts a selector's matchers (with `or` alternatives) into storage matchers.
pub fn matcher_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, String> {
    let convert = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, String> {
        let mut out: Vec<Matcher> = ms
            .iter()
            .map(|m| match &m.op {
                PMatchOp::Equal => Ok(Matcher::equal(&m.name, &m.value)),
                PMatchOp::NotEqual => Ok(Matcher::not_equal(&m.name, &m.value)),
                PMatchOp::Re(_) => {
                    Matcher::regex(&m.name, &m.value, false).map_err(|e| e.to_string())
                }
                PMatchOp::NotRe(_) => {
                    Matcher::regex(&m.name, &m.value, true).map_err(|e| e.to_string())
                }
            })
            .collect::<Result<_, _>>()?;
        if let Some(name) = &vs.name {
            if !out
                .iter()
                .any(|m| m.name == METRIC_NAME && matches!(m.op, strata_model::MatchOp::Equal))
            {
                out.push(Matcher::equal(METRIC_NAME, name));
            }
        }
        Ok(out)
    };
    if vs.matchers.or_matchers.is_empty() {
        Ok(vec![convert(&vs.matchers.matchers)?])
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|set| convert(set))
            .collect()
    }
}

/// Collects per-step results into rows, as Prometheus's range evaluation does: one row per label
/// set; two samples with one label set at one step is an error (range queries only).
pub(crate) struct Collector {
    instant: bool,
    index: HashMap<Labels, usize>,
    last_ts: Vec<i64>,
    pub rows: Vec<Row>,
}

impl Collector {
    pub fn new(grid: Grid) -> Collector {
        Collector {
            instant: grid.is_instant(),
            index: HashMap::new(),
            last_ts: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, ts: i64, labels: &Labels, drop_name: bool, v: f64) -> Result<(), Error> {
        if self.instant {
            self.rows.push(Row {
                labels: labels.clone(),
                drop_name,
                points: vec![(ts, v)],
            });
            return Ok(());
        }
        match self.index.get(labels) {
            Some(&i) => {
                if self.last_ts[i] == ts {
                    return Err(dup_labelset());
                }
                self.last_ts[i] = ts;
                self.rows[i].points.push((ts, v));
            }
            None => {
                self.index.insert(labels.clone(), self.rows.len());
                self.last_ts.push(ts);
                self.rows.push(Row {
                    labels: labels.clone(),
                    drop_name,
                    points: vec![(ts, v)],
                });
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<Row> {
        self.rows
    }
}

pub(crate) fn dup_labelset() -> Error {
    Error::Execution("vector cannot contain metrics with the same labelset".into())
}

/// Walks the rows of an instant vector step by step.
pub(crate) struct Stepper {
    pos: Vec<usize>,
}

impl Stepper {
    pub fn new(rows: &[Row]) -> Stepper {
        Stepper {
            pos: vec![0; rows.len()],
        }
    }

    /// Every row with a value at `ts`, as `(row, value)`, into `out` (cleared first).
    pub fn all_at(&mut self, rows: &[Row], ts: i64, out: &mut Vec<(usize, f64)>) {
        out.clear();
        out.extend((0..rows.len()).filter_map(|i| self.at(rows, i, ts).map(|v| (i, v))));
    }

    /// The value of row `i` at `ts` (steps must be visited in increasing order).
    #[inline]
    pub fn at(&mut self, rows: &[Row], i: usize, ts: i64) -> Option<f64> {
        let p = &mut self.pos[i];
        let pts = &rows[i].points;
        while *p < pts.len() && pts[*p].0 < ts {
            *p += 1;
        }
        if *p < pts.len() && pts[*p].0 == ts {
            Some(pts[*p].1)
        } else {
            None
        }
    }
}

/// Drops `__name__` where a row asks for it, then merges rows that now share a label set
/// (error if they overlap in time), as Prometheus does at the end of a query and in
/// `label_replace` / `label_join`.
pub(crate) fn merge_same_labelsets(mut rows: Vec<Row>) -> Result<Vec<Row>, Error> {
    if rows.len() <= 1 {
        return Ok(rows);
    }
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(rows.len());
    let mut dup = false;
    for (i, r) in rows.iter().enumerate() {
        if index.insert(r.labels.clone(), i).is_some() {
            dup = true;
            break;
        }
    }
    if !dup {
        return Ok(rows);
    }
    index.clear();
    let mut out: Vec<Row> = Vec::with_capacity(rows.len());
    for r in rows.drain(..) {
        match index.get(&r.labels) {
            Some(&i) => {
                let base = &mut out[i];
                base.points.extend(r.points);
                base.points.sort_by_key(|p| p.0);
                if base.points.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(dup_labelset());
                }
            }
            None => {
                index.insert(r.labels.clone(), out.len());
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Removes `__name__` from rows marked to drop it.
pub(crate) fn apply_drop_name(rows: &mut [Row]) {
    for r in rows.iter_mut() {
        if r.drop_name {
            r.labels.set(METRIC_NAME, "");
            r.drop_name = false;
        }
    }
}

impl<'a> Env<'a> {
    /// An instant vector selector over `grid`: at each step, the latest sample in
    /// `(ref - lookback, ref]`, unless it is a staleness marker.
    pub fn vector_selector(&self, vs: &VectorSelector, grid: Grid) -> Result<Vec<Row>, Error> {
        self.instant_selector(vs, grid, Fields::All, |s| s.value)
    }

    /// The sample an instant selector picks at each step, mapped by `pick` (its value, or for
    /// `timestamp()` its timestamp).
    pub fn instant_selector(
        &self,
        vs: &VectorSelector,
        grid: Grid,
        fields: Fields,
        pick: impl Fn(&Sample) -> f64 + Sync,
    ) -> Result<Vec<Row>, Error> {
        let offset = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let lookback = self.opts.lookback_delta_ms;
        let (min_ref, max_ref) = match at {
            Some(t) => (t - offset, t - offset),
            None => (grid.start - offset, grid.end - offset),
        };
        // At one time, only each series' latest sample matters.
        let fields = if at.is_some() || grid.is_instant() {
            Fields::Latest
        } else {
            fields
        };
        let series = self.select(vs, min_ref - lookback + 1, max_ref, fields)?;
        let latest = |samples: &[Sample], j: &mut usize, r: i64| -> Option<f64> {
            while *j < samples.len() && samples[*j].timestamp <= r {
                *j += 1;
            }
            let s = &samples[j.checked_sub(1)?];
            (s.timestamp > r - lookback && !s.is_stale()).then(|| pick(s))
        };
        let work = series.iter().map(|s| s.weight() + grid.len()).sum();
        let points = par_map_with(&series, work, |samples: &mut Vec<Sample>, i, s| {
            self.read_series(i, s, samples)?;
            let mut points = Vec::with_capacity(grid.len().min(samples.len()));
            let mut j = 0usize;
            if let Some(t) = at {
                if let Some(v) = latest(samples, &mut j, t - offset) {
                    points.extend(grid.iter().map(|ts| (ts, v)));
                }
            } else {
                for ts in grid.iter() {
                    if let Some(v) = latest(samples, &mut j, ts - offset) {
                        points.push((ts, v));
                    }
                }
            }
            Ok(points)
        });
        let mut rows = Vec::with_capacity(series.len());
        for (s, points) in series.into_iter().zip(points) {
            let points = points?;
            if !points.is_empty() {
                rows.push(Row {
                    labels: s.labels,
                    drop_name: false,
                    points,
                });
            }
        }
        self.account(rows.iter().map(|r| r.points.len()).sum())?;
        Ok(rows)
    }

    /// A range selector: raw samples covering every window of the grid.
    pub fn matrix_selector(
        &self,
        vs: &VectorSelector,
        range: i64,
        grid: Grid,
        fields: Fields,
    ) -> Result<RangeVal, Error> {
        let offset = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let (min_ref, max_ref) = match at {
            Some(t) => (t - offset, t - offset),
            None => (grid.start - offset, grid.end - offset),
        };
        Ok(RangeVal {
            rows: RangeRows::Lazy(self.select(vs, min_ref - range + 1, max_ref, fields)?),
            range,
            offset,
            at,
        })
    }

    /// A subquery: its inner expression evaluated at steps aligned to absolute multiples of
    /// its step, covering every window of the grid.
    pub fn subquery(&self, sq: &SubqueryExpr, grid: Grid) -> Result<RangeVal, Error> {
        let offset = offset_ms(&sq.offset);
        let at = self.at_ms(&sq.at);
        let range = sq.range.as_millis() as i64;
        let step = match sq.step {
            Some(s) if !s.is_zero() => s.as_millis() as i64,
            _ => self.opts.default_subquery_step_ms,
        };
        let (first, last) = match at {
            Some(t) => (t, t),
            None => (grid.start, grid.end),
        };
        let lo = first - offset - range;
        let mut start = step * lo.div_euclid(step);
        if start <= lo {
            start += step;
        }
        let inner = Grid {
            start,
            end: last - offset,
            step,
        };
        let rows = match self.eval(&sq.expr, inner)? {
            Val::Vector(rows) => rows,
            Val::Scalar(vals) => vec![Row {
                labels: Labels::default(),
                drop_name: false,
                points: inner.iter().zip(vals).collect(),
            }],
            _ => {
                return Err(Error::BadData(
                    "subquery is only allowed on instant vector or scalar expressions".into(),
                ))
            }
        };
        Ok(RangeVal {
            rows: RangeRows::Points(rows),
            range,
            offset,
            at,
        })
    }

    /// Evaluates `expr` over `grid`.
    pub fn eval(&self, expr: &Expr, grid: Grid) -> Result<Val, Error> {
        self.check("expression evaluation")?;
        if grid.len() == 0 {
            return Ok(Val::Vector(Vec::new()));
        }
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; grid.len()])),
            Expr::StringLiteral(s) => Ok(Val::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, grid),
            Expr::Unary(u) => match self.eval(&u.expr, grid)? {
                Val::Scalar(mut v) => {
                    v.iter_mut().for_each(|x| *x = -*x);
                    Ok(Val::Scalar(v))
                }
                Val::Vector(mut rows) => {
                    for r in &mut rows {
                        r.drop_name = true;
                        r.points.iter_mut().for_each(|p| p.1 = -p.1);
                    }
                    Ok(Val::Vector(rows))
                }
                _ => Err(Error::BadData(
                    "unary expression only allowed on expressions of type scalar or instant vector"
                        .into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.vector_selector(vs, grid)?)),
            Expr::MatrixSelector(ms) => Ok(Val::Range(self.matrix_selector(
                &ms.vs,
                ms.range.as_millis() as i64,
                grid,
                Fields::All,
            )?)),
            Expr::Subquery(sq) => Ok(Val::Range(self.subquery(sq, grid)?)),
            Expr::Call(call) => crate::functions::call(self, call, grid),
            Expr::Aggregate(agg) => crate::aggregate::eval(self, agg, grid),
            Expr::Binary(b) => crate::binary::eval(self, b, grid),
            Expr::Extension(_) => Err(Error::BadData("unsupported expression".into())),
        }
    }

    /// Evaluates an expression that must be a scalar.
    pub fn eval_scalar(&self, expr: &Expr, grid: Grid) -> Result<Vec<f64>, Error> {
        match self.eval(expr, grid)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(Error::BadData(format!(
                "expected type scalar in expression {expr}"
            ))),
        }
    }

    /// Evaluates an expression that must be an instant vector.
    pub fn eval_vector(&self, expr: &Expr, grid: Grid) -> Result<Vec<Row>, Error> {
        match self.eval(expr, grid)? {
            Val::Vector(v) => Ok(v),
            _ => Err(Error::BadData(format!(
                "expected type instant vector in expression {expr}"
            ))),
        }
    }
}

/// Removes enclosing parentheses.
pub(crate) fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}
