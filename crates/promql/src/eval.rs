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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};
use strata_model::{
    Coverage, Fields, Labels, LazySeries, Matcher, Resolution, Resolutions, Sample, SelectHints,
    Storage, StorageError, WindowStorage, METRIC_NAME,
};

/// The evaluation timestamps of a node: `start`, `start + step`, ... up to `end` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Grid {
    /// The number of steps; computed in 128 bits, so client times near the ends of `i64` cannot
    /// overflow (a grid too long to count saturates, and fails the sample limit before use).
    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            let n = (self.end as i128 - self.start as i128) / self.step.max(1) as i128 + 1;
            usize::try_from(n).unwrap_or(usize::MAX)
        }
    }

    /// The indices of the steps with `lo <= ts < hi`.
    pub fn steps_within(&self, lo: i128, hi: i128) -> std::ops::Range<usize> {
        let (start, step, n) = (
            self.start as i128,
            self.step.max(1) as i128,
            self.len() as i128,
        );
        // The first index whose timestamp is at least `t`.
        let first_at = |t: i128| {
            if t <= start {
                0
            } else if t > self.end as i128 {
                n
            } else {
                ((t - start + step - 1) / step).min(n)
            }
        };
        let (a, b) = (first_at(lo), first_at(hi));
        a as usize..b.max(a) as usize
    }

    /// The timestamp of step `i` (below [`Grid::len`]). It lies within the grid, so the
    /// wrapping arithmetic is exact even where `i * step` alone would not fit.
    pub fn ts(&self, i: usize) -> i64 {
        self.start.wrapping_add((i as i64).wrapping_mul(self.step))
    }

    /// The step at `ts` (a grid timestamp): the distance fits in a `u64`.
    pub fn index(&self, ts: i64) -> usize {
        (ts.wrapping_sub(self.start) as u64 / self.step.max(1) as u64) as usize
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
        let r = self.at.unwrap_or(ts).saturating_sub(self.offset);
        (r.saturating_sub(self.range), r)
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
                let work = weigh(rows.iter().map(|r| r.points.len()), steps);
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
                let work = weigh(series.iter().map(|s| s.weight()), steps);
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

impl Val {
    /// The samples and points the value holds (a selector's series are decoded where they are
    /// used, and counted there).
    pub fn samples(&self) -> usize {
        match self {
            Val::Vector(rows) => rows.iter().map(|r| r.points.len()).sum(),
            Val::Scalar(v) => v.len(),
            Val::Range(rv) => match &rv.rows {
                RangeRows::Points(rows) => rows.iter().map(|r| r.points.len()).sum(),
                RangeRows::Lazy(_) => 0,
            },
            Val::String(_) => 0,
        }
    }
}

/// Shared state of one query evaluation.
pub(crate) struct Env<'a> {
    pub storage: &'a dyn Storage,
    /// The rollup tiers, when the engine has them.
    pub tiers: Option<&'a dyn WindowStorage>,
    /// From when each tier holds the tenant's data, read once per query.
    pub coverage: Coverage,
    /// The tiers read so far (bits of [`Resolutions`]).
    pub used: std::sync::atomic::AtomicU8,
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
    /// Samples and points the query holds now (see [`Env::eval`]), against `max_samples`.
    pub held: AtomicUsize,
    /// Set when the engine shuts down: every running query stops.
    pub shutdown: &'a AtomicBool,
    /// Annotations raised so far, kept or not (see [`Env::annotate`]).
    pub annotation_attempts: AtomicUsize,
}

/// Most annotations one query raises (kept, or dropped as repeats): building each costs a
/// search of the query text for its position, and a client cannot make the answer grow with
/// them.
const MAX_ANNOTATIONS: usize = 64;

impl<'a> Env<'a> {
    /// Fails when the query timed out or its client went away.
    pub fn check(&self, what: &'static str) -> Result<(), Error> {
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown(what));
        }
        if self.ctx.is_canceled() {
            return Err(Error::Canceled(what));
        }
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Error::Timeout(what));
        }
        Ok(())
    }

    /// Adds a warning; `msg` is only built while the query may still collect annotations.
    pub fn warn(&self, msg: impl FnOnce() -> String) {
        self.annotate(|| Warning::Warn(msg()));
    }

    /// Adds an annotation. Building one costs a search of the query text (for its position),
    /// so a query makes at most [`MAX_ANNOTATIONS`] attempts.
    fn annotate(&self, a: impl FnOnce() -> Warning) {
        if self.annotation_attempts.fetch_add(1, Ordering::Relaxed) >= MAX_ANNOTATIONS {
            return;
        }
        let a = a();
        let mut list = self.annotations.lock();
        if !list.contains(&a) {
            list.push(a);
        }
    }

    /// Prometheus's warning for a quantile outside [0, 1] (or NaN).
    pub fn warn_quantile(&self, q: f64, at: &Expr) {
        self.warn(|| {
            format!(
                "PromQL warning: quantile value should be between 0 and 1, got {} {}",
                crate::labels::format_float(q),
                self.pos(at)
            )
        });
    }

    /// Warns about the first invalid quantile of `qs`, if any.
    pub fn check_quantiles(&self, qs: &[f64], at: &Expr) {
        if let Some(q) = qs.iter().find(|q| q.is_nan() || !(0.0..=1.0).contains(*q)) {
            self.warn_quantile(*q, at);
        }
    }

    /// Adds an info; `msg` is only built while the query may still collect annotations.
    pub fn info(&self, msg: impl FnOnce() -> String) {
        self.annotate(|| Warning::Info(msg()));
    }

    /// Counts `n` more samples or points held by the query, failing past the limit (before the
    /// caller allocates them).
    pub fn reserve(&self, n: usize, what: &'static str) -> Result<(), Error> {
        let max = self.opts.max_samples;
        // Capped, so a saturated grid length cannot wrap the counter.
        let n = n.min(max.saturating_add(1));
        let total = self.held.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if total > max {
            return Err(Error::TooManySamples(what, max));
        }
        Ok(())
    }

    /// One value per step of `grid`, counted against the limit before it is allocated.
    pub fn per_step(&self, grid: Grid, f: impl Fn(i64) -> f64) -> Result<Vec<f64>, Error> {
        self.reserve(grid.len(), "expression evaluation")?;
        Ok(grid.iter().map(f).collect())
    }

    /// A meter for one thread's share of a node's work.
    pub fn meter(&self) -> Meter<'_, 'a> {
        Meter {
            env: self,
            work: 0,
            points: 0,
        }
    }

    /// The `(line:col)` position of `expr` in the query, as Prometheus appends to annotations.
    pub fn pos(&self, expr: &Expr) -> String {
        self.pos_of(&expr.to_string())
    }

    /// The `(line:col)` position of `text` (an expression's text) in the query.
    pub fn pos_of(&self, text: &str) -> String {
        let col = self.query.find(text).map(|i| i + 1).unwrap_or(1);
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
        // One series alone may not pass the limit (`read_series` counts the rest): the storage
        // then refuses it from its chunk headers, before decoding it.
        let hints = SelectHints {
            start: min_t,
            end: max_t,
            max_samples: Some(self.opts.max_samples),
            fields,
        };
        self.mark_used(Resolution::Raw);
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
        self.reserve(buf.len(), "query preparation")
    }

    /// Records that tier `r` answered part of the query.
    pub fn mark_used(&self, r: Resolution) {
        let mut one = Resolutions::default();
        one.insert(r);
        self.used.fetch_or(one.bits(), Ordering::Relaxed);
    }

    pub(crate) fn storage_error(&self, e: StorageError) -> Error {
        match e {
            StorageError::TooManySamples { .. } => {
                Error::TooManySamples("query preparation", self.opts.max_samples)
            }
            other => Error::Storage(other.to_string()),
        }
    }
}

/// Counts the work (steps and samples visited) and the points one thread produces for a node,
/// and every [`Meter::EVERY`] units checks the timeout and cancellation and counts the points
/// against the sample limit, so long loops stop promptly and fail before they allocate more
/// than the limit.
pub(crate) struct Meter<'e, 'a> {
    env: &'e Env<'a>,
    work: usize,
    points: usize,
}

impl Meter<'_, '_> {
    /// How much work passes between checks (a few hundred microseconds at most).
    const EVERY: usize = 1 << 14;

    /// Counts `n` units of work.
    #[inline]
    pub fn work(&mut self, n: usize) -> Result<(), Error> {
        self.work = self.work.saturating_add(n);
        if self.work >= Self::EVERY {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Counts one point about to be produced.
    #[inline]
    pub fn point(&mut self) -> Result<(), Error> {
        self.points += 1;
        self.work(1)
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.work = 0;
        let points = std::mem::take(&mut self.points);
        self.env.reserve(points, "expression evaluation")?;
        self.env.check("expression evaluation")
    }
}

impl Drop for Meter<'_, '_> {
    /// Counts the points not yet counted, for [`Env::eval`] to check when the node is done.
    fn drop(&mut self) {
        self.env.held.fetch_add(self.points, Ordering::Relaxed);
    }
}

/// The work of visiting `items` (their sizes) at `steps` steps each, saturating.
pub(crate) fn weigh(items: impl Iterator<Item = usize>, steps: usize) -> usize {
    items.fold(0usize, |acc, n| acc.saturating_add(n).saturating_add(steps))
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
        Ok(d) => duration_ms(d),
        Err(e) => -duration_ms(e.duration()),
    }
}

/// A duration in milliseconds, saturating (a query may write `offset 100000000y`).
pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => -duration_ms(*d),
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
///
/// A row that will drop its `__name__` is a different series from one with the same labels that
/// keeps it (`rate(m[5m]) or m` answers `{a="x"}` and `m{a="x"}`, as Prometheus, which drops the
/// name at once, does): rows are keyed by label set and `drop_name`. Rows that end up with one
/// label set once names are dropped are merged by [`merge_same_labelsets`].
pub(crate) struct Collector<'e, 'a> {
    instant: bool,
    /// Row of each label set, for rows keeping their name (`[0]`) and dropping it (`[1]`).
    index: [HashMap<Labels, usize>; 2],
    last_ts: Vec<i64>,
    pub rows: Vec<Row>,
    /// Counts the points pushed, and the work of the loop that pushes them.
    pub meter: Meter<'e, 'a>,
}

impl<'e, 'a> Collector<'e, 'a> {
    pub fn new(env: &'e Env<'a>, grid: Grid) -> Collector<'e, 'a> {
        Collector {
            instant: grid.is_instant(),
            index: Default::default(),
            last_ts: Vec::new(),
            rows: Vec::new(),
            meter: env.meter(),
        }
    }

    pub fn push(&mut self, ts: i64, labels: &Labels, drop_name: bool, v: f64) -> Result<(), Error> {
        self.meter.point()?;
        if self.instant {
            self.rows.push(Row {
                labels: labels.clone(),
                drop_name,
                points: vec![(ts, v)],
            });
            return Ok(());
        }
        let index = &mut self.index[usize::from(drop_name)];
        match index.get(labels) {
            Some(&i) => {
                if self.last_ts[i] == ts {
                    return Err(dup_labelset());
                }
                self.last_ts[i] = ts;
                self.rows[i].points.push((ts, v));
            }
            None => {
                index.insert(labels.clone(), self.rows.len());
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

/// When a selector on a grid looks: its offset, its `@` time, and the first and last reference
/// times (`step - offset`, or the `@` time).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SelectorTimes {
    pub offset: i64,
    pub at: Option<i64>,
    pub min_ref: i64,
    pub max_ref: i64,
}

impl SelectorTimes {
    /// The step between reference times: 0 when they are one time (an instant, or `@`).
    pub fn step(&self, grid: Grid) -> i64 {
        if grid.is_instant() || self.at.is_some() {
            0
        } else {
            grid.step
        }
    }

    /// The reference time of step `ts`.
    pub fn reference(&self, ts: i64) -> i64 {
        self.at.unwrap_or(ts).saturating_sub(self.offset)
    }
}

impl<'a> Env<'a> {
    /// When selector `vs` looks on `grid`.
    pub fn selector_times(&self, vs: &VectorSelector, grid: Grid) -> SelectorTimes {
        let offset = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let (min_ref, max_ref) = match at {
            Some(t) => (t.saturating_sub(offset), t.saturating_sub(offset)),
            None => (
                grid.start.saturating_sub(offset),
                grid.end.saturating_sub(offset),
            ),
        };
        SelectorTimes {
            offset,
            at,
            min_ref,
            max_ref,
        }
    }

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
        if let Some(rows) = crate::tiers::instant_selector(self, vs, grid, &pick)? {
            return Ok(rows);
        }
        let SelectorTimes {
            offset,
            at,
            min_ref,
            max_ref,
        } = self.selector_times(vs, grid);
        let lookback = self.opts.lookback_delta_ms;
        // At one time, only each series' latest sample matters.
        let fields = if at.is_some() || grid.is_instant() {
            Fields::Latest
        } else {
            fields
        };
        let series = self.select(
            vs,
            min_ref.saturating_sub(lookback).saturating_add(1),
            max_ref,
            fields,
        )?;
        let work = weigh(series.iter().map(|s| s.weight()), 1);
        let points = par_map_with(&series, work, |samples: &mut Vec<Sample>, i, s| {
            self.read_series(i, s, samples)?;
            let mut meter = self.meter();
            let mut points = Vec::new();
            if let Some(t) = at {
                let r = t.saturating_sub(offset);
                let j = samples.partition_point(|s| s.timestamp <= r);
                if let Some(s) = j.checked_sub(1).map(|j| &samples[j]) {
                    if s.timestamp > r.saturating_sub(lookback) && !s.is_stale() {
                        let v = pick(s);
                        for ts in grid.iter() {
                            meter.point()?;
                            points.push((ts, v));
                        }
                    }
                }
                return Ok(points);
            }
            // Sample by sample (not step by step, so a sparse series over a fine grid costs its
            // points, not its steps): a sample is picked at every step whose reference time
            // `ts - offset` lies in [its timestamp, the next sample's), within the lookback.
            // `si` is the first step not yet given a value; it only jumps (a division) across
            // a gap, so a dense series over a coarse grid costs one compare per sample.
            let (n, offset) = (grid.len(), offset as i128);
            let mut si = 0usize;
            for (j, s) in samples.iter().enumerate() {
                if si >= n {
                    break;
                }
                meter.work(1)?;
                let t = s.timestamp as i128;
                let mut until = t + lookback as i128;
                if let Some(next) = samples.get(j + 1) {
                    until = until.min(next.timestamp as i128);
                }
                let reference = |si: usize| grid.ts(si) as i128 - offset;
                if reference(si) >= until {
                    continue;
                }
                if reference(si) < t {
                    si = grid.steps_within(t + offset, i128::MAX).start;
                    if si >= n || reference(si) >= until {
                        continue;
                    }
                }
                if s.is_stale() {
                    continue;
                }
                let v = pick(s);
                while si < n && reference(si) < until {
                    meter.point()?;
                    points.push((grid.ts(si), v));
                    si += 1;
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
        let SelectorTimes {
            offset,
            at,
            min_ref,
            max_ref,
        } = self.selector_times(vs, grid);
        let min_t = min_ref.saturating_sub(range).saturating_add(1);
        Ok(RangeVal {
            rows: RangeRows::Lazy(self.select(vs, min_t, max_ref, fields)?),
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
        let range = duration_ms(sq.range);
        let step = match sq.step {
            Some(s) if !s.is_zero() => duration_ms(s),
            _ => self.opts.default_subquery_step_ms,
        }
        .max(1);
        let (first, last) = match at {
            Some(t) => (t, t),
            None => (grid.start, grid.end),
        };
        let lo = first.saturating_sub(offset).saturating_sub(range);
        let mut start = step.saturating_mul(lo.div_euclid(step));
        if start <= lo {
            start = start.saturating_add(step);
        }
        let inner = Grid {
            start,
            end: last.saturating_sub(offset),
            step,
        };
        let rows = match self.eval(&sq.expr, inner)? {
            Val::Vector(rows) => rows,
            Val::Scalar(vals) => {
                self.reserve(vals.len(), "subquery evaluation")?;
                vec![Row {
                    labels: Labels::default(),
                    drop_name: false,
                    points: inner.iter().zip(vals).collect(),
                }]
            }
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

    /// Evaluates `expr` over `grid`. As Prometheus does, the samples a node holds are counted
    /// while it is computed, and once it is done its inputs are released: the query then holds
    /// what it held before plus the node's result.
    pub fn eval(&self, expr: &Expr, grid: Grid) -> Result<Val, Error> {
        self.check("expression evaluation")?;
        if grid.len() == 0 {
            return Ok(Val::Vector(Vec::new()));
        }
        let before = self.held.load(Ordering::Relaxed);
        let val = self.eval_node(expr, grid)?;
        // The node's inputs and result, held together at its end.
        let peak = self.held.load(Ordering::Relaxed);
        let held = before.saturating_add(val.samples());
        self.held.store(held, Ordering::Relaxed);
        if peak.max(held) > self.opts.max_samples {
            return Err(Error::TooManySamples(
                "expression evaluation",
                self.opts.max_samples,
            ));
        }
        Ok(val)
    }

    fn eval_node(&self, expr: &Expr, grid: Grid) -> Result<Val, Error> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(self.per_step(grid, |_| n.val)?)),
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
                duration_ms(ms.range),
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
