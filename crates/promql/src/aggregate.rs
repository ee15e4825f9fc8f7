//! Aggregation operators. Groups are computed once per series; values are accumulated step by
//! step.

use crate::eval::{par_map, Collector, Env, Grid, Row, Stepper, Val};
use crate::labels::{format_float, prom_hash, valid_label_name, Signer};
use crate::stats::{kahan_inc, quantile};
use crate::Error;
use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_LIMITK, T_LIMIT_RATIO, T_MAX, T_MIN,
    T_QUANTILE, T_STDDEV, T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};
use std::collections::HashMap;
use strata_model::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    Quantile,
    TopK,
    BottomK,
    LimitK,
    LimitRatio,
    CountValues,
}

impl AggOp {
    fn from_token(id: u16) -> Option<AggOp> {
        Some(match id {
            T_SUM => AggOp::Sum,
            T_AVG => AggOp::Avg,
            T_COUNT => AggOp::Count,
            T_MIN => AggOp::Min,
            T_MAX => AggOp::Max,
            T_GROUP => AggOp::Group,
            T_STDDEV => AggOp::Stddev,
            T_STDVAR => AggOp::Stdvar,
            T_QUANTILE => AggOp::Quantile,
            T_TOPK => AggOp::TopK,
            T_BOTTOMK => AggOp::BottomK,
            T_LIMITK => AggOp::LimitK,
            T_LIMIT_RATIO => AggOp::LimitRatio,
            T_COUNT_VALUES => AggOp::CountValues,
            _ => return None,
        })
    }
}

/// Running state of one group at one step.
#[derive(Debug, Clone, Default)]
struct Acc {
    seen: bool,
    value: f64,
    mean: f64,
    kahan_c: f64,
    count: f64,
    incremental_mean: bool,
    drop_name: bool,
    values: Vec<f64>,
}

pub(crate) fn eval(env: &Env, agg: &AggregateExpr, grid: Grid) -> Result<Val, Error> {
    let op = AggOp::from_token(agg.op.id())
        .ok_or_else(|| Error::BadData(format!("unsupported aggregation in {agg}")))?;
    let (without, grouping): (bool, Vec<String>) = match &agg.modifier {
        Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
        None => (false, vec![]),
    };
    if op == AggOp::CountValues {
        return count_values(env, agg, without, grouping, grid);
    }
    let param = match &agg.param {
        Some(p) => Some(env.eval_scalar(crate::eval::unwrap_parens(p), grid)?),
        None => None,
    };
    let rows = env.eval_vector(&agg.expr, grid)?;
    let signer = Signer::new(!without, &grouping);
    // Group index of every input row.
    let mut groups: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut group_of = Vec::with_capacity(rows.len());
    let mut group_labels: Vec<Labels> = Vec::new();
    let keyed = !grouping.is_empty() || without;
    for r in &rows {
        let key = if keyed {
            signer.sign(&r.labels)
        } else {
            Vec::new()
        };
        let n = groups.len();
        let g = *groups.entry(key).or_insert(n);
        if g == n {
            group_labels.push(if keyed {
                signer.group_labels(&r.labels)
            } else {
                Labels::default()
            });
        }
        group_of.push(g);
    }
    match op {
        AggOp::TopK | AggOp::BottomK | AggOp::LimitK | AggOp::LimitRatio => {
            let param = param.expect("k parameter");
            aggregate_k(env, agg, op, &rows, &group_of, groups.len(), &param, grid)
        }
        _ => {
            if op == AggOp::Quantile {
                let q = param.as_deref().unwrap_or(&[]);
                let at = agg.param.as_deref().expect("quantile parameter");
                // As Prometheus: one warning each for NaN, the largest and the smallest.
                if q.iter().any(|q| q.is_nan()) {
                    env.warn_quantile(f64::NAN, at);
                }
                if let Some(m) = q.iter().copied().filter(|q| *q > 1.0).reduce(f64::max) {
                    env.warn_quantile(m, at);
                }
                if let Some(m) = q.iter().copied().filter(|q| *q < 0.0).reduce(f64::min) {
                    env.warn_quantile(m, at);
                }
            }
            aggregate(
                env,
                op,
                &rows,
                &group_of,
                group_labels,
                param.as_deref(),
                grid,
            )
        }
    }
}

impl Acc {
    /// Adds value `f` of a row (`drop_name`: the row asks to drop `__name__`).
    #[inline(always)]
    fn add(&mut self, op: AggOp, f: f64, drop_name: bool) {
        if !self.seen {
            self.seen = true;
            self.value = f;
            self.mean = f;
            self.kahan_c = 0.0;
            self.count = 1.0;
            self.incremental_mean = false;
            self.drop_name = drop_name;
            self.values.clear();
            match op {
                AggOp::Stddev | AggOp::Stdvar => {
                    self.value = if f.is_nan() || f.is_infinite() {
                        f64::NAN
                    } else {
                        0.0
                    };
                }
                AggOp::Quantile => self.values.push(f),
                AggOp::Group => self.value = 1.0,
                _ => {}
            }
            return;
        }
        if drop_name {
            self.drop_name = true;
        }
        match op {
            AggOp::Sum => {
                (self.value, self.kahan_c) = kahan_inc(f, self.value, self.kahan_c);
            }
            AggOp::Avg => {
                self.count += 1.0;
                if !self.incremental_mean {
                    let (nv, nc) = kahan_inc(f, self.value, self.kahan_c);
                    if !nv.is_infinite() {
                        self.value = nv;
                        self.kahan_c = nc;
                        return;
                    }
                    self.incremental_mean = true;
                    self.mean = self.value / (self.count - 1.0);
                    self.kahan_c /= self.count - 1.0;
                }
                let q = (self.count - 1.0) / self.count;
                (self.mean, self.kahan_c) =
                    kahan_inc(f / self.count, q * self.mean, q * self.kahan_c);
            }
            AggOp::Group => {}
            AggOp::Max => {
                if self.value < f || self.value.is_nan() {
                    self.value = f;
                }
            }
            AggOp::Min => {
                if self.value > f || self.value.is_nan() {
                    self.value = f;
                }
            }
            AggOp::Count => self.count += 1.0,
            AggOp::Stddev | AggOp::Stdvar => {
                self.count += 1.0;
                let delta = f - self.mean;
                self.mean += delta / self.count;
                self.value += delta * (f - self.mean);
            }
            AggOp::Quantile => self.values.push(f),
            _ => unreachable!("handled elsewhere"),
        }
    }

    /// The aggregate of the values added (`q`: the quantile asked for).
    fn result(&mut self, op: AggOp, q: f64) -> f64 {
        match op {
            AggOp::Avg => {
                if self.incremental_mean {
                    self.mean + self.kahan_c
                } else {
                    self.value / self.count + self.kahan_c / self.count
                }
            }
            AggOp::Count => self.count,
            AggOp::Stdvar => self.value / self.count,
            AggOp::Stddev => (self.value / self.count).sqrt(),
            AggOp::Quantile => quantile(q, &mut self.values),
            AggOp::Sum => self.value + self.kahan_c,
            _ => self.value,
        }
    }
}

/// Most accumulators held at once: steps are aggregated in blocks of this many divided by the
/// number of groups.
const MAX_ACCS: usize = 1 << 16;

fn aggregate(
    env: &Env,
    op: AggOp,
    rows: &[Row],
    group_of: &[usize],
    group_labels: Vec<Labels>,
    param: Option<&[f64]>,
    grid: Grid,
) -> Result<Val, Error> {
    let groups = group_labels.len();
    // The steps are shared out between threads. Each thread still adds every row in row
    // order, so the result does not depend on how the steps were split.
    let work = rows
        .iter()
        .map(|r| r.points.len())
        .sum::<usize>()
        .saturating_add(groups.saturating_mul(grid.len()));
    let parts = crate::eval::split_steps(grid.len());
    let computed = par_map(&parts, work, |_, steps| {
        aggregate_steps(env, op, rows, group_of, groups, param, grid, steps.clone())
    });
    let mut out: Vec<Row> = group_labels
        .into_iter()
        .map(|labels| Row {
            labels,
            drop_name: false,
            points: Vec::new(),
        })
        .collect();
    for part in computed {
        for (row, (points, drop_name)) in out.iter_mut().zip(part?) {
            if !points.is_empty() {
                row.points.extend(points);
                row.drop_name = drop_name;
            }
        }
    }
    out.retain(|r| !r.points.is_empty());
    Ok(Val::Vector(out))
}

/// One group's points over some steps, and whether its last point drops `__name__`.
type GroupPoints = (Vec<(i64, f64)>, bool);

/// The aggregate of every group at the grid's steps `steps`.
#[allow(clippy::too_many_arguments)]
fn aggregate_steps(
    env: &Env,
    op: AggOp,
    rows: &[Row],
    group_of: &[usize],
    groups: usize,
    param: Option<&[f64]>,
    grid: Grid,
    steps: std::ops::Range<usize>,
) -> Result<Vec<GroupPoints>, Error> {
    let mut out = vec![(Vec::new(), false); groups];
    if steps.is_empty() {
        return Ok(out);
    }
    // Row by row over a block of steps (each row's points are read in order, once), with one
    // accumulator per group and step; every accumulator still sees its rows in row order.
    let block = (MAX_ACCS / groups.max(1)).clamp(1, steps.len());
    let mut accs: Vec<Acc> = vec![Acc::default(); groups * block];
    let first_ts = grid.ts(steps.start);
    let mut pos: Vec<usize> = rows
        .iter()
        .map(|r| r.points.partition_point(|p| p.0 < first_ts))
        .collect();
    for first in steps.clone().step_by(block) {
        env.check("expression evaluation")?;
        let n = block.min(steps.end - first);
        let last_ts = grid.ts(first + n - 1);
        accs.iter_mut().for_each(|a| a.seen = false);
        let span = StepSpan {
            groups,
            step: grid.step,
            first_ts: grid.ts(first),
            last_ts,
        };
        // One copy of the loop per common operator, so `Acc::add` is inlined without a
        // match on the operator per point.
        match op {
            AggOp::Sum => span.add_rows(rows, group_of, &mut pos, &mut accs, AggOp::Sum),
            AggOp::Avg => span.add_rows(rows, group_of, &mut pos, &mut accs, AggOp::Avg),
            AggOp::Count => span.add_rows(rows, group_of, &mut pos, &mut accs, AggOp::Count),
            AggOp::Min => span.add_rows(rows, group_of, &mut pos, &mut accs, AggOp::Min),
            AggOp::Max => span.add_rows(rows, group_of, &mut pos, &mut accs, AggOp::Max),
            other => span.add_rows(rows, group_of, &mut pos, &mut accs, other),
        }
        for si in 0..n {
            let ts = grid.ts(first + si);
            let q = param.map(|p| p[first + si]).unwrap_or(0.0);
            for (g, a) in accs[si * groups..(si + 1) * groups].iter_mut().enumerate() {
                if a.seen {
                    out[g].0.push((ts, a.result(op, q)));
                    out[g].1 = a.drop_name;
                }
            }
        }
    }
    Ok(out)
}

/// A block of consecutive steps of a grid, and the number of groups aggregated over it.
struct StepSpan {
    groups: usize,
    step: i64,
    first_ts: i64,
    last_ts: i64,
}

impl StepSpan {
    /// Adds every row's points in the span to the accumulators (one per step and group, step
    /// major), advancing each row's position `pos`.
    #[inline(always)]
    fn add_rows(
        &self,
        rows: &[Row],
        group_of: &[usize],
        pos: &mut [usize],
        accs: &mut [Acc],
        op: AggOp,
    ) {
        for (i, row) in rows.iter().enumerate() {
            let g = group_of[i];
            let (pts, p) = (&row.points, &mut pos[i]);
            // Points are at grid steps, in order: walk a step cursor beside them rather than
            // divide to find each point's step.
            let (mut si, mut step_ts) = (0usize, self.first_ts);
            while *p < pts.len() && pts[*p].0 <= self.last_ts {
                let (ts, f) = pts[*p];
                *p += 1;
                while step_ts < ts {
                    step_ts += self.step;
                    si += 1;
                }
                if step_ts == ts {
                    accs[si * self.groups + g].add(op, f, row.drop_name);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn aggregate_k(
    env: &Env,
    agg: &AggregateExpr,
    op: AggOp,
    rows: &[Row],
    group_of: &[usize],
    ngroups: usize,
    param: &[f64],
    grid: Grid,
) -> Result<Val, Error> {
    let max = param.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = param.iter().copied().fold(f64::INFINITY, f64::min);
    let any_nan = param.iter().any(|p| p.is_nan());
    match op {
        AggOp::LimitRatio => {
            if max == 0.0 && min == 0.0 {
                return Ok(Val::Vector(Vec::new()));
            }
            if any_nan {
                return Err(Error::Execution("Ratio value is NaN".into()));
            }
            let pos = || agg.param.as_deref().map(|p| env.pos(p)).unwrap_or_default();
            if max > 1.0 {
                env.warn(|| format!("PromQL warning: ratio value should be between -1 and 1, got {}, capping to 1 {}", format_float(max), pos()));
            }
            if min < -1.0 {
                env.warn(|| format!("PromQL warning: ratio value should be between -1 and 1, got {}, capping to -1 {}", format_float(min), pos()));
            }
        }
        _ => {
            if max < 1.0 && !any_nan {
                return Ok(Val::Vector(Vec::new()));
            }
            if any_nan {
                return Err(Error::Execution("Parameter value is NaN".into()));
            }
            if min <= -9223372036854775808.0 {
                return Err(Error::Execution(format!(
                    "Scalar value {} underflows int64",
                    format_float(min)
                )));
            }
            if max >= 9223372036854774784.0 {
                return Err(Error::Execution(format!(
                    "Scalar value {} overflows int64",
                    format_float(max)
                )));
            }
        }
    }
    // Ratio sampling is decided per series by its label hash, as in Prometheus.
    let offsets: Vec<f64> = if op == AggOp::LimitRatio {
        rows.iter()
            .map(|r| prom_hash(&r.labels) as f64 / u64::MAX as f64)
            .collect()
    } else {
        Vec::new()
    };
    let mut out = Collector::new(env, grid);
    let mut stepper = Stepper::new(rows);
    let mut heaps: Vec<Vec<(usize, f64)>> = vec![Vec::new(); ngroups];
    for (si, ts) in grid.iter().enumerate() {
        out.meter.work(rows.len())?;
        heaps.iter_mut().for_each(|h| h.clear());
        let p = param[si];
        let k = if op == AggOp::LimitRatio {
            0
        } else {
            (p as i64).min(rows.len() as i64)
        };
        if op != AggOp::LimitRatio && k < 1 {
            continue;
        }
        if op == AggOp::LimitRatio && p == 0.0 {
            continue;
        }
        let r = p.clamp(-1.0, 1.0);
        for (i, _) in rows.iter().enumerate() {
            let Some(f) = stepper.at(rows, i, ts) else {
                continue;
            };
            let h = &mut heaps[group_of[i]];
            match op {
                AggOp::LimitK => {
                    if (h.len() as i64) < k {
                        h.push((i, f));
                    }
                }
                AggOp::LimitRatio => {
                    let off = offsets[i];
                    if (r >= 0.0 && off < r) || (r < 0.0 && off >= 1.0 + r) {
                        h.push((i, f));
                    }
                }
                AggOp::TopK => KHeap::top(h).offer((i, f), k as usize),
                _ => KHeap::bottom(h).offer((i, f), k as usize),
            }
        }
        for h in heaps.iter_mut() {
            match op {
                AggOp::TopK => KHeap::top(h).into_sorted(),
                AggOp::BottomK => KHeap::bottom(h).into_sorted(),
                _ => {}
            }
            for &(i, f) in h.iter() {
                out.push(ts, &rows[i].labels, rows[i].drop_name, f)?;
            }
        }
    }
    Ok(Val::Vector(out.finish()))
}

/// The bounded heap `topk` / `bottomk` keep per group, exactly as Prometheus keeps it (Go's
/// `container/heap` over `vectorByValueHeap` / `vectorByReverseValueHeap`), so that which of
/// several tied series are kept, and in what order an instant query returns them, match
/// Prometheus: a later series replaces the heap's root only when strictly better, and the root
/// of a heap holding ties is whichever the sifts left there.
struct KHeap<'h> {
    items: &'h mut Vec<(usize, f64)>,
    /// `topk`: the root is the smallest (NaN counts as smallest); `bottomk`: the largest.
    top: bool,
}

impl<'h> KHeap<'h> {
    fn top(items: &'h mut Vec<(usize, f64)>) -> KHeap<'h> {
        KHeap { items, top: true }
    }

    fn bottom(items: &'h mut Vec<(usize, f64)>) -> KHeap<'h> {
        KHeap { items, top: false }
    }

    /// The heap's order (`Less` of Prometheus's heap types): NaN first, then by value.
    fn less(&self, i: usize, j: usize) -> bool {
        heap_less(self.top, self.items[i].1, self.items[j].1)
    }

    /// Offers one series' value, keeping at most `k`.
    fn offer(&mut self, x: (usize, f64), k: usize) {
        if self.items.len() < k {
            self.items.push(x);
            self.up(self.items.len() - 1);
            return;
        }
        let root = self.items[0].1;
        let better = if self.top { root < x.1 } else { root > x.1 };
        if better || (root.is_nan() && !x.1.is_nan()) {
            self.items[0] = x;
            if k > 1 {
                // Go's heap.Fix(h, 0).
                if !self.down(0) {
                    self.up(0);
                }
            }
        }
    }

    fn up(&mut self, mut j: usize) {
        while j > 0 {
            let i = (j - 1) / 2;
            if !self.less(j, i) {
                break;
            }
            self.items.swap(i, j);
            j = i;
        }
    }

    fn down(&mut self, i0: usize) -> bool {
        let n = self.items.len();
        let mut i = i0;
        loop {
            let j1 = 2 * i + 1;
            if j1 >= n {
                break;
            }
            let mut j = j1;
            if j1 + 1 < n && self.less(j1 + 1, j1) {
                j = j1 + 1;
            }
            if !self.less(j, i) {
                break;
            }
            self.items.swap(i, j);
            i = j;
        }
        i > i0
    }

    /// Best first, as Prometheus's `sort.Sort(sort.Reverse(heap))` leaves it, ties included.
    fn into_sorted(self) {
        let top = self.top;
        // Reverse(h).Less(i, j) is h.Less(j, i).
        crate::gosort::sort(self.items, |x, y| heap_less(top, y.1, x.1));
    }
}

/// `Less` of Prometheus's `vectorByValueHeap` (`top`) and `vectorByReverseValueHeap`.
fn heap_less(top: bool, a: f64, b: f64) -> bool {
    if a.is_nan() {
        return true;
    }
    if top {
        a < b
    } else {
        a > b
    }
}

fn count_values(
    env: &Env,
    agg: &AggregateExpr,
    without: bool,
    mut grouping: Vec<String>,
    grid: Grid,
) -> Result<Val, Error> {
    let label = match agg.param.as_deref().map(crate::eval::unwrap_parens) {
        Some(Expr::StringLiteral(s)) => s.val.clone(),
        _ => {
            return Err(Error::BadData(
                "count_values requires a string parameter".into(),
            ))
        }
    };
    if !valid_label_name(&label) {
        return Err(Error::Execution(format!(
            "invalid label name {}",
            crate::labels::go_quote(&label)
        )));
    }
    if !without {
        grouping.push(label.clone());
    }
    let signer = Signer::new(!without, &grouping);
    let rows = env.eval_vector(&agg.expr, grid)?;
    let mut stepper = Stepper::new(rows.as_slice());
    let mut out = Collector::new(env, grid);
    for ts in grid.iter() {
        out.meter.work(rows.len())?;
        let mut counts: Vec<(Labels, f64)> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let Some(f) = stepper.at(&rows, i, ts) else {
                continue;
            };
            let mut l = row.labels.clone();
            l.set(&label, &format_float(f));
            let key = signer.sign(&l);
            match index.get(&key) {
                Some(&g) => counts[g].1 += 1.0,
                None => {
                    index.insert(key, counts.len());
                    counts.push((signer.group_labels(&l), 1.0));
                }
            }
        }
        for (l, c) in counts {
            out.push(ts, &l, false, c)?;
        }
    }
    Ok(Val::Vector(out.finish()))
}
