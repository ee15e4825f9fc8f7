//! The tier router: which tier answers each part of a selector's time, and how functions are
//! computed from rollup figures.
//!
//! Each selector is planned on its own ([`plan`]): by default the raw tier answers, as in
//! Prometheus; a coarser tier answers when the step is at least five times its window (as
//! Thanos' auto-downsampling does) and the function maps onto figures, unless the query caps
//! the resolution (`max_source_resolution`). Where the chosen tier no longer holds the data,
//! the next coarser one answers the older part: time is split on the coarser tier's window
//! edges, so every piece is whole windows, and a range function's window that crosses a split
//! merges the pieces' figures in time order.
//!
//! Windows hold `(start, end]`, PromQL's side of the edge, so on windows aligned to a tier's
//! buckets its count, sum, min, max, avg, last and increase equal the raw answer. `rate`,
//! `increase` and `delta` extrapolate from the first and last samples and the count, exactly
//! as on raw samples. Approximate, and said so in an info annotation: windows whose edges do
//! not fall on the tier's buckets (rounded to whole windows), `stddev`/`stdvar` (from the sum
//! of squares), `quantile_over_time` (the merged sketches' accuracy). A function no figure can
//! answer (`irate`, `resets`, ...) over time only a rollup tier still holds fails with an error
//! naming the function, never a silently partial answer.

use crate::eval::{matcher_sets, par_map_with, weigh, Env, Grid, Row};
use crate::functions::{Change, RangeFn};
use crate::stats::{kahan_inc, quantile};
use crate::Error;
use promql_parser::parser::VectorSelector;
use std::collections::BTreeMap;
use strata_model::{
    Fields, FigureNeeds, Labels, LazySeries, LazyWindows, QuantileSketch, Resolution, Sample,
    WindowFigures,
};

/// A steps' data must be this many times coarser than a tier's window before the tier answers
/// in place of a finer one that holds the data (Thanos' rule).
const STEP_FACTOR: i64 = 5;

/// Where each part of time is answered from: `(switch, tier)` by time, a tier answering times
/// in `(its switch, the next switch]`; the first switch is `i64::MIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    parts: Vec<(i64, Resolution)>,
}

impl Plan {
    fn raw_only(&self) -> bool {
        self.parts.iter().all(|p| p.1 == Resolution::Raw)
    }

    /// The tier answering time `t`.
    fn at(&self, t: i64) -> Resolution {
        let k = self.parts.partition_point(|p| p.0 < t);
        self.parts[k.max(1) - 1].1
    }

    /// The pieces of `(lo, hi]`, in time order, each with its tier.
    fn pieces(&self, lo: i64, hi: i64, mut f: impl FnMut(Resolution, i64, i64)) {
        for (k, &(switch, r)) in self.parts.iter().enumerate() {
            let next = self.parts.get(k + 1).map_or(i64::MAX, |p| p.0);
            let (a, b) = (lo.max(switch), hi.min(next));
            if a < b {
                f(r, a, b);
            }
        }
    }

    /// The time tier `r` answers, `(from, to]`, if it answers any.
    fn span(&self, r: Resolution) -> Option<(i64, i64)> {
        let k = self.parts.iter().position(|p| p.1 == r)?;
        let next = self.parts.get(k + 1).map_or(i64::MAX, |p| p.0);
        Some((self.parts[k].0, next))
    }
}

/// The smallest multiple of `w` at or above `t`.
fn ceil_to(t: i64, w: i64) -> i64 {
    let r = t.rem_euclid(w);
    if r == 0 {
        t
    } else {
        t.saturating_add(w - r)
    }
}

/// Plans a selector whose windows reach back to `(earliest, ...]`: `range` is its range (0 for
/// an instant selector), `step` the grid's (0 at one instant) and `first` its first window's
/// end, `mapped` whether the function consuming it has figures to answer from.
///
/// Over a range raw samples no longer hold all of, a range function whose every window is
/// whole windows of a tier (range, first end and step on its edges, the step at least a window)
/// reads the coarsest such tier: the answer is the same as from raw samples, from fewer values.
/// Otherwise a tier answers when the step is at least [`STEP_FACTOR`] windows (the edges then
/// rounded, and said so).
pub(crate) fn plan(
    env: &Env,
    what: &str,
    mapped: bool,
    (range, step, first): (i64, i64, i64),
    earliest: i64,
) -> Result<Plan, Error> {
    let cov = env.coverage;
    let max = env.ctx.max_resolution;
    let kept =
        |r: Resolution| r == Resolution::Raw || (env.tiers.is_some() && r <= max && cov.keeps(r));
    let aligned = |r: Resolution| {
        let w = r.window_ms();
        range == 0 || (range >= w && range % w == 0)
    };
    if !mapped {
        // Only raw samples answer; they must hold the time asked for when a tier holds more.
        let older_in_tiers = Resolution::ROLLUPS
            .into_iter()
            .any(|r| kept(r) && cov.from(r) < cov.raw);
        if older_in_tiers && earliest.saturating_add(1) < cov.raw {
            return Err(Error::Execution(format!(
                "{what} cannot be computed from rollup windows, and raw samples before {} are \
                 no longer kept (the raw tier's retention): query a more recent range, or use a \
                 function the rollup tiers answer (rate, increase, delta, *_over_time, plain \
                 selectors)",
                crate::labels::format_float(cov.raw as f64 / 1000.0)
            )));
        }
        return Ok(Plan {
            parts: vec![(i64::MIN, Resolution::Raw)],
        });
    }
    // Whole windows of a tier give the raw answer from fewer values: worth it where raw
    // samples no longer hold all of the range (a range raw samples hold they answer, as a
    // Prometheus would).
    let raw_holds_all = earliest.saturating_add(1) >= cov.raw;
    let on_edges = |r: Resolution| {
        !raw_holds_all && range > 0 && step >= r.window_ms() && whole_windows(r, range, step, first)
    };
    let mut preferred = Resolution::Raw;
    if step > 0 {
        for r in Resolution::ROLLUPS.into_iter().rev() {
            if kept(r) && aligned(r) && (on_edges(r) || step >= STEP_FACTOR * r.window_ms()) {
                preferred = r;
                break;
            }
        }
    }
    // Back in time from the preferred tier: where a tier's data ends, the finest tier holding
    // older data takes over, on the coarser one's window edge.
    let candidates: Vec<Resolution> = Resolution::ALL.into_iter().filter(|&r| kept(r)).collect();
    let mut parts = Vec::new();
    let mut tier = preferred;
    loop {
        let from = cov.from(tier);
        let older = candidates
            .iter()
            .copied()
            .filter(|&r| cov.from(r) < from)
            .min();
        match older {
            Some(o) if earliest.saturating_add(1) < from => {
                let w = tier.window_ms().max(o.window_ms());
                parts.push((ceil_to(from.saturating_sub(1), w), tier));
                tier = o;
            }
            _ => {
                parts.push((i64::MIN, tier));
                break;
            }
        }
    }
    parts.reverse();
    // A finer tier whose older end rounds past the newer switch answers nothing: drop it.
    let mut k = 1;
    while k + 1 < parts.len() {
        if parts[k].0 >= parts[k + 1].0 {
            parts.remove(k);
            let w = parts[k - 1].1.window_ms().max(parts[k].1.window_ms());
            parts[k].0 = parts[k]
                .0
                .max(ceil_to(cov.from(parts[k].1).saturating_sub(1), w));
        } else {
            k += 1;
        }
    }
    Ok(Plan { parts })
}

/// What a range function needs of the figures, `None` when none answers it.
fn needs(kind: RangeFn) -> Option<FigureNeeds> {
    let none = FigureNeeds::default();
    Some(match kind {
        RangeFn::Rate | RangeFn::Increase => FigureNeeds {
            first: true,
            last: true,
            increase: true,
            ..none
        },
        RangeFn::Delta => FigureNeeds {
            first: true,
            last: true,
            ..none
        },
        RangeFn::AvgOverTime | RangeFn::SumOverTime => FigureNeeds { sum: true, ..none },
        RangeFn::CountOverTime | RangeFn::PresentOverTime => none,
        RangeFn::MinOverTime => FigureNeeds { min: true, ..none },
        RangeFn::MaxOverTime => FigureNeeds { max: true, ..none },
        RangeFn::LastOverTime | RangeFn::TsOfLastOverTime => FigureNeeds { last: true, ..none },
        RangeFn::FirstOverTime | RangeFn::TsOfFirstOverTime => FigureNeeds {
            first: true,
            ..none
        },
        RangeFn::StddevOverTime | RangeFn::StdvarOverTime => FigureNeeds {
            sum: true,
            sum_squares: true,
            ..none
        },
        RangeFn::QuantileOverTime => FigureNeeds {
            sketch: true,
            ..none
        },
        _ => return None,
    })
}

/// A selected series with what each tier holds of it, read where it is evaluated.
struct Source {
    labels: Labels,
    raw: Option<LazySeries>,
    /// By rollup tier ([`Resolution::ROLLUPS`], see [`rollup_index`]).
    windows: [Option<LazyWindows>; 3],
}

/// Where a rollup tier's windows are kept in [`Source`] and [`Buffers`].
fn rollup_index(r: Resolution) -> usize {
    (r as usize).saturating_sub(1)
}

impl Source {
    fn weight(&self) -> usize {
        self.raw.as_ref().map_or(0, |r| r.weight())
            + self
                .windows
                .iter()
                .flatten()
                .map(|w| w.weight())
                .sum::<usize>()
    }
}

/// A thread's buffers for one series at a time: raw samples, then windows by rollup tier.
#[derive(Default)]
struct Buffers {
    raw: Vec<Sample>,
    windows: [Vec<WindowFigures>; 3],
}

impl Buffers {
    /// Reads series number `i` into the buffers, counting what it holds against the limit.
    fn read(&mut self, env: &Env, i: usize, src: &Source) -> Result<(), Error> {
        self.raw.clear();
        if let Some(raw) = &src.raw {
            env.read_series(i, raw, &mut self.raw)?;
        }
        for (lazy, buf) in src.windows.iter().zip(&mut self.windows) {
            buf.clear();
            if let Some(w) = lazy {
                w.read(buf).map_err(|e| env.storage_error(e))?;
                env.reserve(buf.len(), "query preparation")?;
            }
        }
        Ok(())
    }

    fn windows(&self, r: Resolution) -> &[WindowFigures] {
        match r {
            Resolution::Raw => &[],
            _ => &self.windows[rollup_index(r)],
        }
    }
}

/// Reads what `plan` needs of `vs` for windows ending in `(earliest, latest]`: raw samples
/// (from `raw_back` before the raw tier's part, for an instant selector's lookback) and
/// windows, merged by series.
fn read_sources(
    env: &Env,
    vs: &VectorSelector,
    plan: &Plan,
    earliest: i64,
    latest: i64,
    raw_back: i64,
    needs: FigureNeeds,
) -> Result<Vec<Source>, Error> {
    let mut by_labels: BTreeMap<Labels, Source> = BTreeMap::new();
    fn entry(m: &mut BTreeMap<Labels, Source>, labels: Labels) -> &mut Source {
        m.entry(labels.clone()).or_insert_with(|| Source {
            labels,
            raw: None,
            windows: Default::default(),
        })
    }
    if let Some((from, to)) = plan.span(Resolution::Raw) {
        let lo = earliest.max(from).saturating_sub(raw_back);
        let hi = latest.min(to);
        if lo < hi {
            for s in env.select(vs, lo.saturating_add(1), hi, Fields::All)? {
                let labels = s.labels.clone();
                entry(&mut by_labels, labels).raw = Some(s);
            }
        }
    }
    let tiers = env.tiers.expect("a plan with rollup tiers has them");
    let sets = matcher_sets(vs).map_err(Error::BadData)?;
    for r in Resolution::ROLLUPS {
        let Some((from, to)) = plan.span(r) else {
            continue;
        };
        let lo = earliest.max(from);
        let hi = latest.min(to);
        if lo >= hi {
            continue;
        }
        env.check("query preparation")?;
        for set in &sets {
            let got = tiers
                .windows(&env.ctx.tenant, set, r, lo.saturating_add(1), hi, needs)
                .map_err(|e| env.storage_error(e))?;
            for s in got {
                env.mark_used(r);
                let src = entry(&mut by_labels, s.labels.clone());
                let slot = &mut src.windows[rollup_index(r)];
                // Another matcher set may select the series too: it is the same series.
                slot.get_or_insert(s);
            }
        }
    }
    Ok(by_labels.into_values().collect())
}

/// Figures accumulated over the pieces of one window, in time order.
#[derive(Default)]
struct Acc<'a> {
    count: u64,
    sum: (f64, f64),
    sum_squares: (f64, f64),
    min: f64,
    max: f64,
    first: Option<(i64, f64)>,
    last: (i64, f64),
    increase: (f64, f64),
    sketches: Vec<&'a dyn QuantileSketch>,
    /// Raw values, for a quantile over a window that mixes raw samples and sketches.
    values: Vec<f64>,
    /// A rollup window without the sketch a quantile needs.
    missing_sketch: bool,
}

/// Adds `v` to a Kahan-compensated `(sum, compensation)`.
fn add(acc: &mut (f64, f64), v: f64) {
    *acc = kahan_inc(v, acc.0, acc.1);
}

/// The value of a Kahan-compensated sum.
fn total(acc: (f64, f64)) -> f64 {
    if acc.0.is_infinite() {
        acc.0
    } else {
        acc.0 + acc.1
    }
}

impl<'a> Acc<'a> {
    /// The counter step from the last value so far to `next` (a drop is a reset).
    fn step_to(&mut self, next: f64) {
        if self.count > 0 {
            let prev = self.last.1;
            add(
                &mut self.increase,
                if next < prev { next } else { next - prev },
            );
        }
    }

    fn extremes(&mut self, min: f64, max: f64) {
        // As Prometheus' min/max_over_time: NaN gives way to any number.
        if self.count == 0 || self.min.is_nan() || min < self.min {
            self.min = min;
        }
        if self.count == 0 || self.max.is_nan() || max > self.max {
            self.max = max;
        }
    }

    fn add_sample(&mut self, t: i64, v: f64, keep_values: bool) {
        self.step_to(v);
        self.extremes(v, v);
        if self.count == 0 {
            self.first = Some((t, v));
        }
        self.count += 1;
        add(&mut self.sum, v);
        add(&mut self.sum_squares, v * v);
        self.last = (t, v);
        if keep_values {
            self.values.push(v);
        }
    }

    /// Adds a window's figures, those `needs` names (the others were not read).
    #[inline]
    fn add_window(&mut self, w: &'a WindowFigures, needs: &FigureNeeds) {
        if needs.increase {
            self.step_to(w.first.value);
            add(&mut self.increase, w.increase);
        }
        if needs.min || needs.max {
            self.extremes(w.min, w.max);
        }
        if self.count == 0 {
            self.first = Some((w.first.timestamp, w.first.value));
        }
        self.count += w.count;
        if needs.sum {
            add(&mut self.sum, w.sum);
        }
        if needs.sum_squares {
            add(&mut self.sum_squares, w.sum_squares);
        }
        self.last = (w.last.timestamp, w.last.value);
        if needs.sketch {
            match &w.sketch {
                Some(s) => self.sketches.push(s.as_ref()),
                None => self.missing_sketch = true,
            }
        }
    }

    /// The function's value over `(lo, hi]`, `None` where it has none.
    fn value(&mut self, kind: RangeFn, lo: i64, hi: i64, range: i64, q: f64) -> Option<f64> {
        let first = self.first?;
        let n = self.count as f64;
        let change = |result: f64| Change {
            first,
            last: self.last,
            count: self.count as usize,
            result,
        };
        Some(match kind {
            RangeFn::Rate | RangeFn::Increase if self.count >= 2 => {
                change(total(self.increase)).extrapolate(lo, hi, range, true, kind == RangeFn::Rate)
            }
            RangeFn::Delta if self.count >= 2 => {
                change(self.last.1 - first.1).extrapolate(lo, hi, range, false, false)
            }
            RangeFn::Rate | RangeFn::Increase | RangeFn::Delta => return None,
            RangeFn::AvgOverTime => total(self.sum) / n,
            RangeFn::SumOverTime => total(self.sum),
            RangeFn::CountOverTime => n,
            RangeFn::PresentOverTime => 1.0,
            RangeFn::MinOverTime => self.min,
            RangeFn::MaxOverTime => self.max,
            RangeFn::LastOverTime => self.last.1,
            RangeFn::FirstOverTime => first.1,
            RangeFn::TsOfLastOverTime => self.last.0 as f64 / 1000.0,
            RangeFn::TsOfFirstOverTime => first.0 as f64 / 1000.0,
            RangeFn::StdvarOverTime | RangeFn::StddevOverTime => {
                let mean = total(self.sum) / n;
                let var = (total(self.sum_squares) / n - mean * mean).max(0.0);
                if kind == RangeFn::StddevOverTime {
                    var.sqrt()
                } else {
                    var
                }
            }
            RangeFn::QuantileOverTime => match self.sketches.split_first() {
                // Raw values of a window that mixes tiers join the merge as points.
                Some((head, rest)) => head.merged_quantile(rest, &self.values, q)?,
                None => quantile(q, &mut self.values),
            },
            _ => return None,
        })
    }
}

/// Whether every step's window `(t - range, t]` is whole windows of `r`: the range, the first
/// step's `t` (`first`) and the step (0: one time) all on its edges.
fn whole_windows(r: Resolution, range: i64, step: i64, first: i64) -> bool {
    let w = r.window_ms();
    range % w == 0 && first.rem_euclid(w) == 0 && (step == 0 || step % w == 0)
}

/// Whether `(a, b]` falls on `r`'s window edges.
fn on_edges(r: Resolution, a: i64, b: i64) -> bool {
    let w = r.window_ms();
    a.rem_euclid(w) == 0 && b.rem_euclid(w) == 0
}

/// Where the last step's part of a sorted list began and ended: the next step's part, whose
/// bounds are no earlier, is found by walking on from there (a binary search when far).
#[derive(Default, Clone, Copy)]
struct Cursor {
    lo: usize,
    hi: usize,
}

impl Cursor {
    /// The items of `items` (sorted by `at`) with `a < at <= b`.
    fn within<T>(
        &mut self,
        items: &[T],
        a: i64,
        b: i64,
        at: impl Fn(&T) -> i64,
    ) -> std::ops::Range<usize> {
        let advance = |from: usize, bound: i64| {
            let mut i = from.min(items.len());
            // A window's worth of steps on (in memory order), or a binary search over the rest.
            for _ in 0..64 {
                if i < items.len() && at(&items[i]) <= bound {
                    i += 1;
                } else {
                    return i;
                }
            }
            i + items[i..].partition_point(|x| at(x) <= bound)
        };
        // Bounds that went back (an `@` or a new piece) start over.
        let past = |i: usize, bound: i64| i > 0 && i <= items.len() && at(&items[i - 1]) > bound;
        if past(self.lo, a) || past(self.hi, b) {
            *self = Cursor::default();
        }
        self.lo = advance(self.lo, a);
        self.hi = advance(self.hi.max(self.lo), b);
        self.lo..self.hi
    }
}

/// `kind` over the range selector `vs[range]` on `grid`, when the router sends part of it to a
/// rollup tier; `None` when raw samples answer all of it (the caller evaluates it as usual).
pub(crate) fn range_fn(
    env: &Env,
    kind: RangeFn,
    name: &str,
    (vs, at_expr): (&VectorSelector, &promql_parser::parser::Expr),
    range: i64,
    grid: Grid,
    scalars: &[Vec<f64>],
) -> Result<Option<Vec<Row>>, Error> {
    if env.tiers.is_none() {
        return Ok(None);
    }
    let times = env.selector_times(vs, grid);
    let (min_ref, max_ref) = (times.min_ref, times.max_ref);
    let earliest = min_ref.saturating_sub(range);
    let step = times.step(grid);
    let need = needs(kind);
    let plan = plan(env, name, need.is_some(), (range, step, min_ref), earliest)?;
    let (Some(need), false) = (need, plan.raw_only()) else {
        return Ok(None);
    };
    let sources = read_sources(env, vs, &plan, earliest, max_ref, 0, need)?;
    let quantile_q = |si: usize| scalars.first().map_or(0.0, |qs| qs[si]);
    let window = |ts: i64| {
        let r = times.reference(ts);
        (r.saturating_sub(range), r)
    };
    let rounded = std::sync::atomic::AtomicBool::new(false);
    let missing_sketch = std::sync::atomic::AtomicBool::new(false);
    // Every window on a tier's edges (then each piece is, switches being on edges too), or
    // pieces are checked one by one.
    let aligned =
        Resolution::ALL.map(|r| r == Resolution::Raw || whole_windows(r, range, step, min_ref));
    let work = weigh(sources.iter().map(Source::weight), grid.len());
    let computed = par_map_with(
        &sources,
        work,
        |bufs: &mut Buffers, i, src: &Source| -> Result<Vec<(i64, f64)>, Error> {
            bufs.read(env, i, src)?;
            bufs.raw.retain(|s| !s.is_stale());
            let bufs = &*bufs;
            let buf = &bufs.raw;
            let mut meter = env.meter();
            let mut points = Vec::new();
            // Windows' bounds only move forward from step to step: cursors per tier.
            let mut cursors = [Cursor::default(); Resolution::ALL.len()];
            for (si, ts) in grid.iter().enumerate() {
                let (lo, hi) = window(ts);
                let mut acc = Acc::default();
                let keep_values = kind == RangeFn::QuantileOverTime;
                plan.pieces(lo, hi, |r, a, b| {
                    let cursor = &mut cursors[r as usize];
                    if r == Resolution::Raw {
                        let part = cursor.within(buf, a, b, |s| s.timestamp);
                        for s in &buf[part] {
                            acc.add_sample(s.timestamp, s.value, keep_values);
                        }
                    } else {
                        if !aligned[r as usize] && !on_edges(r, a, b) {
                            rounded.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        let ws = bufs.windows(r);
                        for w in &ws[cursor.within(ws, a, b, |w| w.end)] {
                            acc.add_window(w, &need);
                        }
                    }
                });
                meter.work(1)?;
                if acc.count == 0 {
                    continue;
                }
                // Provisional windows keep no sketch; a metric none of whose windows has one
                // is not sketched at all.
                if kind == RangeFn::QuantileOverTime
                    && acc.missing_sketch
                    && acc.sketches.is_empty()
                {
                    missing_sketch.store(true, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                if let Some(v) = acc.value(kind, lo, hi, range, quantile_q(si)) {
                    meter.point()?;
                    points.push((ts, v));
                }
            }
            Ok(points)
        },
    );
    if missing_sketch.into_inner() {
        return Err(Error::Execution(format!(
            "quantile_over_time over {vs}: the rollup tiers answering this range keep no \
             quantile sketch for it (configure rollups.quantiles for the metric), and raw \
             samples no longer cover it"
        )));
    }
    note_rounding(env, rounded.into_inner(), vs);
    let keep_name = matches!(kind, RangeFn::LastOverTime | RangeFn::FirstOverTime);
    let rows = rows_of(sources, computed, !keep_name)?;
    if matches!(kind, RangeFn::Rate | RangeFn::Increase) {
        for r in &rows {
            if crate::functions::not_a_counter_info(env, &r.labels, at_expr) {
                break;
            }
        }
    }
    Ok(Some(rows))
}

/// The rows of the series that have points, in the sources' order.
fn rows_of(
    sources: Vec<Source>,
    computed: Vec<Result<Vec<(i64, f64)>, Error>>,
    drop_name: bool,
) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::with_capacity(sources.len());
    for (src, points) in sources.into_iter().zip(computed) {
        let points = points?;
        if !points.is_empty() {
            rows.push(Row {
                labels: src.labels,
                drop_name,
                points,
            });
        }
    }
    Ok(rows)
}

fn note_rounding(env: &Env, rounded: bool, vs: &VectorSelector) {
    if rounded {
        env.info(|| {
            format!(
                "PromQL info: {vs} was partly answered from rollup windows whose edges do not \
                 fall on the query's window edges; those windows were rounded to whole rollup \
                 windows"
            )
        });
    }
}

/// The instant selector `vs` on `grid` (each step's value mapped by `pick`), when the router
/// sends part of it to a rollup tier: a window's `last` sample answers, the lookback widened
/// to the tier's window. `None` when raw samples answer all of it.
pub(crate) fn instant_selector(
    env: &Env,
    vs: &VectorSelector,
    grid: Grid,
    pick: &(dyn Fn(&Sample) -> f64 + Sync),
) -> Result<Option<Vec<Row>>, Error> {
    if env.tiers.is_none() {
        return Ok(None);
    }
    let times = env.selector_times(vs, grid);
    let (min_ref, max_ref) = (times.min_ref, times.max_ref);
    let lookback = env.opts.lookback_delta_ms;
    let step = times.step(grid);
    let earliest = min_ref.saturating_sub(lookback);
    let plan = plan(env, "a selector", true, (0, step, min_ref), earliest)?;
    if plan.raw_only() {
        return Ok(None);
    }
    let need = FigureNeeds {
        last: true,
        ..FigureNeeds::default()
    };
    // A tier's window may hold the latest sample anywhere in it: read one window further back.
    let widest = plan
        .parts
        .iter()
        .map(|p| p.1.window_ms())
        .max()
        .unwrap_or(0);
    let sources = read_sources(
        env,
        vs,
        &plan,
        earliest.saturating_sub(widest),
        max_ref,
        lookback,
        need,
    )?;
    let work = weigh(sources.iter().map(Source::weight), grid.len());
    let computed = par_map_with(
        &sources,
        work,
        |bufs: &mut Buffers, i, src: &Source| -> Result<Vec<(i64, f64)>, Error> {
            bufs.read(env, i, src)?;
            let buf = &bufs.raw;
            let mut meter = env.meter();
            let mut points = Vec::new();
            for ts in grid.iter() {
                let r = times.reference(ts);
                meter.work(1)?;
                let tier = plan.at(r);
                let found = if tier == Resolution::Raw {
                    let j = buf.partition_point(|s| s.timestamp <= r);
                    j.checked_sub(1)
                        .map(|j| buf[j])
                        .filter(|s| s.timestamp > r.saturating_sub(lookback) && !s.is_stale())
                } else {
                    let back = lookback.max(tier.window_ms());
                    let ws = bufs.windows(tier);
                    let j = ws.partition_point(|w| w.end <= r);
                    j.checked_sub(1)
                        .map(|j| &ws[j])
                        .filter(|w| w.end > r.saturating_sub(back))
                        .map(|w| w.last)
                };
                if let Some(s) = found {
                    meter.point()?;
                    points.push((ts, pick(&s)));
                }
            }
            Ok(points)
        },
    );
    Ok(Some(rows_of(sources, computed, false)?))
}
