//! PromQL functions.

use crate::eval::{
    merge_same_labelsets, unwrap_parens, Collector, Env, Grid, Meter, RangeVal, Row, Stepper, Val,
};
use crate::labels::{go_quote, valid_label_name};
use crate::stats::{bucket_fraction, bucket_quantile, kahan_inc, quantile, Bucket};
use crate::Error;
use chrono::{DateTime, Datelike, Timelike};
use promql_parser::parser::{Call, Expr};
use std::collections::HashMap;
use strata_model::{Fields, Labels, MatchOp, METRIC_NAME};

pub(crate) fn call(env: &Env, call: &Call, grid: Grid) -> Result<Val, Error> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|a| unwrap_parens(a)).collect();
    match name {
        "time" => Ok(Val::Scalar(env.per_step(grid, |t| t as f64 / 1000.0)?)),
        "pi" => Ok(Val::Scalar(env.per_step(grid, |_| std::f64::consts::PI)?)),
        "start" => Ok(Val::Scalar(
            env.per_step(grid, |_| env.query_start as f64 / 1000.0)?,
        )),
        "end" => Ok(Val::Scalar(
            env.per_step(grid, |_| env.query_end as f64 / 1000.0)?,
        )),
        "range" => {
            let range = env.query_end.saturating_sub(env.query_start) as f64 / 1000.0;
            Ok(Val::Scalar(env.per_step(grid, |_| range)?))
        }
        "step" => Ok(Val::Scalar(
            env.per_step(grid, |_| env.query_step as f64 / 1000.0)?,
        )),
        "min_of" | "max_of" => {
            let mut a = env.eval_scalar(args[0], grid)?;
            let b = env.eval_scalar(args[1], grid)?;
            let f = if name == "min_of" { go_min } else { go_max };
            a.iter_mut().zip(&b).for_each(|(x, y)| *x = f(*x, *y));
            Ok(Val::Scalar(a))
        }
        "vector" => {
            let s = env.eval_scalar(args[0], grid)?;
            env.reserve(s.len(), "expression evaluation")?;
            Ok(Val::Vector(vec![Row {
                labels: Labels::default(),
                drop_name: false,
                points: grid.iter().zip(s).collect(),
            }]))
        }
        "scalar" => {
            let rows = env.eval_vector(args[0], grid)?;
            env.reserve(grid.len(), "expression evaluation")?;
            let mut st = Stepper::new(&rows);
            let mut meter = env.meter();
            let mut out = Vec::with_capacity(grid.len());
            for ts in grid.iter() {
                meter.work(rows.len())?;
                let mut found = None;
                for i in 0..rows.len() {
                    if let Some(v) = st.at(&rows, i, ts) {
                        // Two series: NaN (every row still advances past `ts`).
                        found = Some(if found.is_some() { f64::NAN } else { v });
                    }
                }
                out.push(found.unwrap_or(f64::NAN));
            }
            Ok(Val::Scalar(out))
        }
        "absent" => {
            let rows = env.eval_vector(args[0], grid)?;
            env.reserve(grid.len(), "expression evaluation")?;
            let mut present = vec![false; grid.len()];
            for r in &rows {
                for p in &r.points {
                    present[grid.index(p.0)] = true;
                }
            }
            Ok(Val::Vector(absent_row(args[0], grid, &present)))
        }
        "absent_over_time" => {
            let rv = range_arg(env, args[0], grid, Fields::Timestamps)?;
            env.reserve(grid.len(), "expression evaluation")?;
            let mut present = vec![false; grid.len()];
            let per_row = rv.map_rows(env, grid.len(), |_, pts| {
                let mut steps = Vec::new();
                let mut meter = env.meter();
                for_each_window(&rv, pts, grid, &mut meter, |si, _, _| steps.push(si))?;
                Ok(steps)
            })?;
            for si in per_row.into_iter().flatten() {
                present[si] = true;
            }
            Ok(Val::Vector(absent_row(args[0], grid, &present)))
        }
        "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc" => {
            let mut rows = env.eval_vector(args[0], grid)?;
            if grid.is_instant() {
                sort_rows(name, &args, &mut rows)?;
            } else {
                env.warn(|| {
                    format!(
                        "PromQL warning: sort is ineffective for range queries since results are always ordered by labels {}",
                        env.pos_of(&call.to_string())
                    )
                });
            }
            Ok(Val::Vector(rows))
        }
        "label_replace" => label_replace(env, &args, grid),
        "label_join" => label_join(env, &args, grid),
        "histogram_quantile" => histogram_fn(env, &args, grid, HistFn::Quantile),
        "histogram_fraction" => histogram_fn(env, &args, grid, HistFn::Fraction),
        "histogram_quantiles" => histogram_fn(env, &args, grid, HistFn::Quantiles),
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            // Only native histograms have these; float samples give nothing.
            env.eval_vector(args[0], grid)?;
            Ok(Val::Vector(Vec::new()))
        }
        "timestamp" => timestamp(env, args[0], grid),
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "month" | "year" => {
            let f = date_fn(name);
            if args.is_empty() {
                env.reserve(grid.len(), "expression evaluation")?;
                return Ok(Val::Vector(vec![Row {
                    labels: Labels::default(),
                    drop_name: false,
                    points: grid.iter().map(|t| (t, f(t.div_euclid(1000)))).collect(),
                }]));
            }
            let rows = env.eval_vector(args[0], grid)?;
            Ok(Val::Vector(map_rows(rows, |_, v| {
                Some(date_of_value(v, f))
            })))
        }
        "round" => {
            let rows = env.eval_vector(args[0], grid)?;
            let to = match args.get(1) {
                Some(a) => env.eval_scalar(a, grid)?,
                None => env.per_step(grid, |_| 1.0)?,
            };
            Ok(Val::Vector(map_rows(rows, |t, v| {
                let inv = 1.0 / to[grid.index(t)];
                Some((v * inv + 0.5).floor() / inv)
            })))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let rows = env.eval_vector(args[0], grid)?;
            let (lo, hi) = match name {
                "clamp" => (
                    env.eval_scalar(args[1], grid)?,
                    env.eval_scalar(args[2], grid)?,
                ),
                "clamp_min" => (
                    env.eval_scalar(args[1], grid)?,
                    env.per_step(grid, |_| f64::INFINITY)?,
                ),
                _ => (
                    env.per_step(grid, |_| f64::NEG_INFINITY)?,
                    env.eval_scalar(args[1], grid)?,
                ),
            };
            Ok(Val::Vector(map_rows(rows, |t, v| {
                let i = grid.index(t);
                let (lo, hi) = (lo[i], hi[i]);
                if hi < lo {
                    None
                } else {
                    Some(go_max(lo, go_min(hi, v)))
                }
            })))
        }
        _ => {
            if let Some(f) = simple_fn(name) {
                let rows = env.eval_vector(args[0], grid)?;
                return Ok(Val::Vector(map_rows(rows, |_, v| Some(f(v)))));
            }
            range_fn(env, call, name, &args, grid)
        }
    }
}

/// Go's `math.Max`: NaN wins, +0 beats -0.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn simple_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "sgn" => |v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

/// Applies `f(ts, value)` to every point (dropping points where it returns `None`); the result
/// drops the metric name.
fn map_rows(mut rows: Vec<Row>, f: impl Fn(i64, f64) -> Option<f64>) -> Vec<Row> {
    for r in &mut rows {
        r.drop_name = true;
        r.points.retain_mut(|p| match f(p.0, p.1) {
            Some(v) => {
                p.1 = v;
                true
            }
            None => false,
        });
    }
    rows.retain(|r| !r.points.is_empty());
    rows
}

fn date_fn(name: &str) -> fn(i64) -> f64 {
    fn dt(secs: i64) -> DateTime<chrono::Utc> {
        DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }
    match name {
        "days_in_month" => |s| {
            let d = dt(s);
            let (y, m) = (d.year(), d.month());
            let next = if m == 12 {
                chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
            } else {
                chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)
            };
            let first = chrono::NaiveDate::from_ymd_opt(y, m, 1);
            match (first, next) {
                (Some(a), Some(b)) => (b - a).num_days() as f64,
                _ => f64::NAN,
            }
        },
        "day_of_month" => |s| dt(s).day() as f64,
        "day_of_week" => |s| dt(s).weekday().num_days_from_sunday() as f64,
        "day_of_year" => |s| dt(s).ordinal() as f64,
        "hour" => |s| dt(s).hour() as f64,
        "minute" => |s| dt(s).minute() as f64,
        "month" => |s| dt(s).month() as f64,
        _ => |s| dt(s).year() as f64,
    }
}

fn date_of_value(v: f64, f: fn(i64) -> f64) -> f64 {
    if v.is_nan() || v.is_infinite() || v.abs() > 9.2e15 {
        // Go converts these to the minimum int64 time; Prometheus returns odd but finite
        // values. NaN is the honest answer.
        return f64::NAN;
    }
    f(v as i64)
}

fn absent_row(arg: &Expr, grid: Grid, present: &[bool]) -> Vec<Row> {
    let points: Vec<(i64, f64)> = grid
        .iter()
        .enumerate()
        .filter(|(i, _)| !present[*i])
        .map(|(_, t)| (t, 1.0))
        .collect();
    if points.is_empty() {
        return Vec::new();
    }
    vec![Row {
        labels: absent_labels(arg),
        drop_name: false,
        points,
    }]
}

/// The labels `absent` reports: those fixed by exactly one equality matcher.
fn absent_labels(arg: &Expr) -> Labels {
    let vs = match arg {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let Ok(sets) = crate::eval::matcher_sets(vs) else {
        return Labels::default();
    };
    let Some(ms) = sets.first() else {
        return Labels::default();
    };
    let mut out = Labels::default();
    let mut has: HashMap<&str, bool> = HashMap::new();
    for m in ms {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && !has.contains_key(m.name.as_str()) {
            out.set(&m.name, &m.value);
            has.insert(&m.name, true);
        } else {
            out.set(&m.name, "");
        }
    }
    out
}

fn string_arg(e: &Expr) -> Result<String, Error> {
    match unwrap_parens(e) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        other => Err(Error::BadData(format!(
            "expected a string literal, got {other}"
        ))),
    }
}

/// Go's natural sort order (`facette/natsort`): digit runs compare numerically.
fn natural_less(a: &str, b: &str) -> bool {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let digit = bytes[i].is_ascii_digit();
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() == digit {
                i += 1;
            }
            out.push((digit, &s[start..i]));
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        if x.1 == y.1 {
            continue;
        }
        if x.0 && y.0 {
            let xt = x.1.trim_start_matches('0');
            let yt = y.1.trim_start_matches('0');
            if xt.len() != yt.len() {
                return xt.len() < yt.len();
            }
            if xt != yt {
                return xt < yt;
            }
            return x.1.len() < y.1.len();
        }
        return x.1 < y.1;
    }
    ca.len() < cb.len()
}

fn sort_rows(name: &str, args: &[&Expr], rows: &mut [Row]) -> Result<(), Error> {
    let val = |r: &Row| r.points.first().map(|p| p.1).unwrap_or(f64::NAN);
    match name {
        "sort" => rows.sort_by(|a, b| {
            let (x, y) = (val(a), val(b));
            match (x.is_nan(), y.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
            }
        }),
        "sort_desc" => rows.sort_by(|a, b| {
            let (x, y) = (val(a), val(b));
            match (x.is_nan(), y.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
            }
        }),
        _ => {
            let names: Vec<String> = args[1..]
                .iter()
                .map(|a| string_arg(a))
                .collect::<Result<_, _>>()?;
            let desc = name == "sort_by_label_desc";
            rows.sort_by(|a, b| {
                for n in &names {
                    let (x, y) = (a.labels.get(n).unwrap_or(""), b.labels.get(n).unwrap_or(""));
                    if x == y {
                        continue;
                    }
                    let less = natural_less(x, y);
                    let ord = if less {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    };
                    return if desc { ord.reverse() } else { ord };
                }
                let ord = a.labels.cmp(&b.labels);
                if desc {
                    ord.reverse()
                } else {
                    ord
                }
            });
        }
    }
    Ok(())
}

fn label_replace(env: &Env, args: &[&Expr], grid: Grid) -> Result<Val, Error> {
    let dst = string_arg(args[1])?;
    let repl = string_arg(args[2])?;
    let src = string_arg(args[3])?;
    let regex_src = string_arg(args[4])?;
    let re = regex::Regex::new(&format!("^(?s:{regex_src})$")).map_err(|_| {
        Error::Execution(format!(
            "invalid regular expression in label_replace(): {regex_src}"
        ))
    })?;
    if !valid_label_name(&dst) || !escapes_valid_utf8(env, &dst) {
        return Err(Error::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let mut rows = env.eval_vector(args[0], grid)?;
    let mut res = String::new();
    for r in &mut rows {
        let sv = r.labels.get(&src).unwrap_or("").to_string();
        if let Some(caps) = re.captures(&sv) {
            res.clear();
            // At most every `$` brings in the whole source value. When that could pass the
            // limit, the template is expanded a reference at a time, checking as it goes, so
            // a long template of `$1`s fails before it builds megabytes.
            let bound = repl
                .len()
                .saturating_add(repl.matches('$').count().saturating_mul(sv.len()));
            if bound <= env.opts.max_label_value_len {
                caps.expand(&repl, &mut res);
            } else {
                for piece in template_pieces(&repl) {
                    caps.expand(piece, &mut res);
                    check_label_len(env, "label_replace", &dst, res.len())?;
                }
            }
            check_label_len(env, "label_replace", &dst, res.len())?;
            r.labels.set(&dst, &res);
            if dst == METRIC_NAME {
                r.drop_name = false;
            }
        }
    }
    Ok(Val::Vector(merge_same_labelsets(rows)?))
}

/// promql-parser decodes `\xNN` escapes to the character U+00NN, where Prometheus keeps the raw
/// byte; a name spelled with byte escapes must still be valid UTF-8.
fn escapes_valid_utf8(env: &Env, s: &str) -> bool {
    if !env.query.contains("\\x") || !s.chars().any(|c| ('\u{80}'..='\u{ff}').contains(&c)) {
        return true;
    }
    if s.chars().any(|c| c as u32 > 0xff) {
        return true;
    }
    let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
    std::str::from_utf8(&bytes).is_ok()
}

fn label_join(env: &Env, args: &[&Expr], grid: Grid) -> Result<Val, Error> {
    let dst = string_arg(args[1])?;
    let sep = string_arg(args[2])?;
    let srcs: Vec<String> = args[3..]
        .iter()
        .map(|a| string_arg(a))
        .collect::<Result<_, _>>()?;
    for s in &srcs {
        if !valid_label_name(s) {
            return Err(Error::Execution(format!(
                "invalid source label name in label_join(): {s}"
            )));
        }
    }
    if !valid_label_name(&dst) {
        return Err(Error::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let mut rows = env.eval_vector(args[0], grid)?;
    for r in &mut rows {
        // Checked before joining: the value is not built when it would be too long.
        let len = srcs
            .iter()
            .map(|s| r.labels.get(s).map_or(0, str::len))
            .sum::<usize>()
            .saturating_add(sep.len().saturating_mul(srcs.len().saturating_sub(1)));
        check_label_len(env, "label_join", &dst, len)?;
        let joined = srcs
            .iter()
            .map(|s| r.labels.get(s).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&sep);
        r.labels.set(&dst, &joined);
        if dst == METRIC_NAME {
            r.drop_name = false;
        }
    }
    Ok(Val::Vector(merge_same_labelsets(rows)?))
}

/// `template` cut before every `$` that starts a reference (`$$`, an escaped `$`, stays whole),
/// so each piece holds at most one reference and expanding the pieces one after the other
/// builds what expanding the whole would.
fn template_pieces(template: &str) -> impl Iterator<Item = &str> {
    let b = template.as_bytes();
    let mut cuts = vec![0];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            if b.get(i + 1) == Some(&b'$') {
                i += 2;
                continue;
            }
            if i > 0 {
                cuts.push(i);
            }
        }
        i += 1;
    }
    cuts.push(b.len());
    (0..cuts.len() - 1).map(move |k| &template[cuts[k]..cuts[k + 1]])
}

/// Refuses a label value a query builds (`len` bytes) longer than a stored one may be, so a
/// query cannot build gigabytes of labels out of a short replacement template.
fn check_label_len(env: &Env, func: &str, dst: &str, len: usize) -> Result<(), Error> {
    let max = env.opts.max_label_value_len;
    if len > max {
        return Err(Error::Execution(format!(
            "{func}: the value of label {} would be {len} bytes, more than the limit of {max} bytes (limits.max_label_value_len)",
            go_quote(dst)
        )));
    }
    Ok(())
}

fn timestamp(env: &Env, arg: &Expr, grid: Grid) -> Result<Val, Error> {
    if let Expr::VectorSelector(vs) = arg {
        // The timestamp of the selected sample, not of the evaluation step.
        let mut rows = env.instant_selector(vs, grid, Fields::Timestamps, |s| {
            s.timestamp as f64 / 1000.0
        })?;
        rows.iter_mut().for_each(|r| r.drop_name = true);
        return Ok(Val::Vector(rows));
    }
    let rows = env.eval_vector(arg, grid)?;
    Ok(Val::Vector(map_rows(rows, |t, _| Some(t as f64 / 1000.0))))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HistFn {
    Quantile,
    Quantiles,
    Fraction,
}

fn histogram_fn(env: &Env, args: &[&Expr], grid: Grid, which: HistFn) -> Result<Val, Error> {
    let (params, vec_arg) = match which {
        HistFn::Quantile => (vec![env.eval_scalar(args[0], grid)?], args[1]),
        HistFn::Quantiles => (
            args[2..]
                .iter()
                .map(|a| env.eval_scalar(a, grid))
                .collect::<Result<Vec<_>, _>>()?,
            args[0],
        ),
        HistFn::Fraction => (
            vec![
                env.eval_scalar(args[0], grid)?,
                env.eval_scalar(args[1], grid)?,
            ],
            args[2],
        ),
    };
    if which != HistFn::Fraction {
        for qs in &params {
            env.check_quantiles(qs, args[0]);
        }
    }
    let quantile_label = match which {
        HistFn::Quantiles => Some(string_arg(args[1])?),
        _ => None,
    };
    let rows = env.eval_vector(vec_arg, grid)?;
    // Group buckets by their labels without `le`.
    let mut groups: HashMap<Labels, usize> = HashMap::new();
    let mut group_of: Vec<Option<(usize, f64)>> = Vec::with_capacity(rows.len());
    let mut group_labels: Vec<Labels> = Vec::new();
    for r in &rows {
        let le = r.labels.get("le").unwrap_or("");
        let Some(upper) = parse_le(le) else {
            env.warn(|| {
                format!(
                    "PromQL warning: bucket label \"le\" is missing or has a malformed value of {} for metric name {} {}",
                    go_quote(le),
                    go_quote(r.labels.metric_name().unwrap_or("")),
                    env.pos(vec_arg)
                )
            });
            group_of.push(None);
            continue;
        };
        let mut key = r.labels.clone();
        key.set("le", "");
        let n = groups.len();
        let g = *groups.entry(key.clone()).or_insert(n);
        if g == n {
            group_labels.push(key);
        }
        group_of.push(Some((g, upper)));
    }
    let mut out = Collector::new(env, grid);
    let mut st = Stepper::new(&rows);
    let mut buckets: Vec<Vec<Bucket>> = vec![Vec::new(); group_labels.len()];
    let mut info_done = false;
    for (si, ts) in grid.iter().enumerate() {
        out.meter.work(rows.len())?;
        buckets.iter_mut().for_each(|b| b.clear());
        for (i, g) in group_of.iter().enumerate() {
            let Some((g, upper)) = g else { continue };
            if let Some(v) = st.at(&rows, i, ts) {
                buckets[*g].push(Bucket {
                    upper: *upper,
                    count: v,
                });
            }
        }
        for (g, b) in buckets.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            match which {
                HistFn::Quantile | HistFn::Quantiles => {
                    for qs in &params {
                        let mut bs = b.clone();
                        let (v, fix) = bucket_quantile(qs[si], &mut bs);
                        if fix.forced_monotonic && !info_done {
                            info_done = true;
                            env.info(|| format!(
                                "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {} {}",
                                go_quote(group_labels[g].metric_name().unwrap_or("")),
                                env.pos(vec_arg)
                            ));
                        }
                        match &quantile_label {
                            Some(l) => {
                                let mut labels = group_labels[g].clone();
                                labels.set(l, &open_metrics_float(qs[si]));
                                out.push(ts, &labels, true, v)?;
                            }
                            None => out.push(ts, &group_labels[g], true, v)?,
                        }
                    }
                }
                HistFn::Fraction => {
                    let v = bucket_fraction(params[0][si], params[1][si], b);
                    out.push(ts, &group_labels[g], true, v)?;
                }
            }
        }
    }
    Ok(Val::Vector(out.finish()))
}

/// Prometheus's `FormatOpenMetricsFloat`: integers keep a `.0`.
fn open_metrics_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let s = format!("{f}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok(),
    }
}

/// Evaluates an argument that must be a range vector (selector or subquery); `fields`: what
/// the caller needs of a selector's samples.
fn range_arg(env: &Env, e: &Expr, grid: Grid, fields: Fields) -> Result<RangeVal, Error> {
    if let (Expr::MatrixSelector(ms), Fields::Timestamps) = (unwrap_parens(e), fields) {
        return env.matrix_selector(&ms.vs, crate::eval::duration_ms(ms.range), grid, fields);
    }
    match env.eval(e, grid)? {
        Val::Range(mut rv) => {
            if matches!(unwrap_parens(e), Expr::Subquery(_)) {
                // Series from a subquery carry their evaluated names.
                rv.apply_drop_name();
            }
            Ok(rv)
        }
        _ => Err(Error::BadData(format!(
            "expected type range vector in call to function, got {e}"
        ))),
    }
}

/// Calls `f(step index, ts, window)` for every step of the grid whose window holds samples of
/// `pts`. Steps whose windows are empty are skipped by arithmetic rather than visited, so a
/// sparse series over a fine grid costs its samples and results, not its steps; `meter` counts
/// the work and the points (one per step with samples) as it goes.
fn for_each_window(
    rv: &RangeVal,
    pts: &[(i64, f64)],
    grid: Grid,
    meter: &mut Meter,
    mut f: impl FnMut(usize, i64, &[(i64, f64)]),
) -> Result<(), Error> {
    if pts.is_empty() {
        return Ok(());
    }
    if rv.at.is_some() {
        // With `@` every step sees the same window: find it once.
        let (wlo, whi) = rv.window(grid.start);
        let hi = pts.partition_point(|p| p.0 <= whi);
        let lo = pts[..hi].partition_point(|p| p.0 <= wlo);
        if lo == hi {
            return Ok(());
        }
        for (si, ts) in grid.iter().enumerate() {
            meter.point()?;
            meter.work(hi - lo)?;
            f(si, ts, &pts[lo..hi]);
        }
        return Ok(());
    }
    let (mut lo, mut hi) = (0usize, 0usize);
    let (mut si, steps) = (0usize, grid.len());
    while si < steps {
        let ts = grid.ts(si);
        let (wlo, whi) = rv.window(ts);
        while hi < pts.len() && pts[hi].0 <= whi {
            hi += 1;
        }
        while lo < hi && pts[lo].0 <= wlo {
            lo += 1;
        }
        if lo == hi {
            if hi == pts.len() {
                break;
            }
            // The next window with a sample is the first whose end, `ts - offset`, reaches it.
            let next = grid
                .steps_within(pts[hi].0 as i128 + rv.offset as i128, i128::MAX)
                .start;
            si = next.max(si + 1);
            meter.work(1)?;
            continue;
        }
        meter.point()?;
        meter.work(hi - lo)?;
        f(si, ts, &pts[lo..hi]);
        si += 1;
    }
    Ok(())
}

fn range_fn(env: &Env, call: &Call, name: &str, args: &[&Expr], grid: Grid) -> Result<Val, Error> {
    // Position of the range argument, and any scalar arguments.
    let (range_idx, scalars): (usize, Vec<Vec<f64>>) = match name {
        "quantile_over_time" => (1, vec![env.eval_scalar(args[0], grid)?]),
        "predict_linear" => (0, vec![env.eval_scalar(args[1], grid)?]),
        "double_exponential_smoothing" | "holt_winters" => (
            0,
            vec![
                env.eval_scalar(args[1], grid)?,
                env.eval_scalar(args[2], grid)?,
            ],
        ),
        _ => (0, vec![]),
    };
    let Some(range_expr) = args.get(range_idx) else {
        return Err(Error::BadData(format!("function {name} needs an argument")));
    };
    let kind = RangeFn::from_name(name)
        .ok_or_else(|| Error::BadData(format!("function {:?} is not supported", call.func.name)))?;
    if kind == RangeFn::QuantileOverTime {
        env.check_quantiles(&scalars[0], range_expr);
    }
    if let Expr::MatrixSelector(ms) = unwrap_parens(range_expr) {
        let range = crate::eval::duration_ms(ms.range);
        if let Some(rows) =
            crate::tiers::range_fn(env, kind, name, (&ms.vs, range_expr), range, grid, &scalars)?
        {
            return Ok(Val::Vector(rows));
        }
    }
    let rv = range_arg(env, range_expr, grid, kind.fields())?;
    if kind == RangeFn::DoubleExponentialSmoothing {
        for (si, _) in grid.iter().enumerate() {
            let (sf, tf) = (scalars[0][si], scalars[1][si]);
            if !(sf > 0.0 && sf < 1.0) {
                return Err(Error::Execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                )));
            }
            if !(tf > 0.0 && tf < 1.0) {
                return Err(Error::Execution(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                )));
            }
        }
    }
    let keep_name = matches!(kind, RangeFn::LastOverTime | RangeFn::FirstOverTime);
    let counter = matches!(kind, RangeFn::Rate | RangeFn::Increase);
    let row_points = |_, pts: &[(i64, f64)]| -> Result<Vec<(i64, f64)>, Error> {
        // Only a series that ever goes down needs its windows scanned for counter resets.
        let resets = counter && pts.windows(2).any(|p| p[1].1 < p[0].1);
        let mut scratch: Vec<f64> = Vec::new();
        let mut points = Vec::with_capacity(grid.len().min(pts.len()));
        let mut meter = env.meter();
        for_each_window(&rv, pts, grid, &mut meter, |si, ts, w| {
            let (wlo, whi) = rv.window(ts);
            let v = match kind {
                RangeFn::Rate => extrapolated_rate(w, wlo, whi, rv.range, true, resets, true),
                RangeFn::Increase => extrapolated_rate(w, wlo, whi, rv.range, true, resets, false),
                RangeFn::Delta => extrapolated_rate(w, wlo, whi, rv.range, false, false, false),
                RangeFn::Irate => instant_value(w, true),
                RangeFn::Idelta => instant_value(w, false),
                RangeFn::Deriv => (w.len() >= 2).then(|| linear_regression(w, w[0].0).0),
                RangeFn::PredictLinear => (w.len() >= 2).then(|| {
                    let (slope, intercept) = linear_regression(w, ts);
                    slope * scalars[0][si] + intercept
                }),
                RangeFn::Resets => Some(w.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64),
                RangeFn::Changes => Some(
                    w.windows(2)
                        .filter(|p| p[1].1 != p[0].1 && !(p[1].1.is_nan() && p[0].1.is_nan()))
                        .count() as f64,
                ),
                RangeFn::AvgOverTime => Some(avg_over_time(w)),
                RangeFn::SumOverTime => {
                    let (mut s, mut c) = (0.0, 0.0);
                    for p in w {
                        (s, c) = kahan_inc(p.1, s, c);
                    }
                    Some(if s.is_infinite() { s } else { s + c })
                }
                RangeFn::CountOverTime => Some(w.len() as f64),
                RangeFn::MinOverTime => Some(extreme(w, |a, b| a < b)),
                RangeFn::MaxOverTime => Some(extreme(w, |a, b| a > b)),
                RangeFn::TsOfMinOverTime => {
                    Some(fold_cmp(w, |cur, m| cur <= m || m.is_nan()).0 as f64 / 1000.0)
                }
                RangeFn::TsOfMaxOverTime => {
                    Some(fold_cmp(w, |cur, m| cur >= m || m.is_nan()).0 as f64 / 1000.0)
                }
                RangeFn::TsOfFirstOverTime => Some(w[0].0 as f64 / 1000.0),
                RangeFn::TsOfLastOverTime => Some(w[w.len() - 1].0 as f64 / 1000.0),
                RangeFn::LastOverTime => Some(w[w.len() - 1].1),
                RangeFn::FirstOverTime => Some(w[0].1),
                RangeFn::PresentOverTime => Some(1.0),
                RangeFn::StddevOverTime => Some(variance(w).sqrt()),
                RangeFn::StdvarOverTime => Some(variance(w)),
                RangeFn::QuantileOverTime => {
                    scratch.clear();
                    scratch.extend(w.iter().map(|p| p.1));
                    Some(quantile(scalars[0][si], &mut scratch))
                }
                RangeFn::MadOverTime if w.iter().any(|p| p.1.is_nan()) => Some(f64::NAN),
                RangeFn::MadOverTime => {
                    scratch.clear();
                    scratch.extend(w.iter().map(|p| p.1));
                    let median = quantile(0.5, &mut scratch);
                    scratch.clear();
                    scratch.extend(w.iter().map(|p| (p.1 - median).abs()));
                    Some(quantile(0.5, &mut scratch))
                }
                RangeFn::DoubleExponentialSmoothing => {
                    double_exponential_smoothing(w, scalars[0][si], scalars[1][si])
                }
            };
            if let Some(v) = v {
                points.push((ts, v));
            }
        })?;
        Ok(points)
    };
    let computed = rv.map_rows(env, grid.len(), row_points)?;
    let mut out = Vec::with_capacity(rv.len());
    let mut warned_counter = false;
    for ((labels, drop_name), points) in rv.into_labels().zip(computed) {
        if points.is_empty() {
            continue;
        }
        if counter && !warned_counter {
            warned_counter = not_a_counter_info(env, &labels, range_expr);
        }
        out.push(Row {
            labels,
            drop_name: drop_name || !keep_name,
            points,
        });
    }
    Ok(Val::Vector(out))
}

/// Prometheus' info on `rate`/`increase` of a series whose name does not say it is a counter;
/// true when it gave it.
pub(crate) fn not_a_counter_info(env: &Env, labels: &Labels, at: &Expr) -> bool {
    let Some(n) = labels.metric_name() else {
        return false;
    };
    if ["_total", "_sum", "_count", "_bucket"]
        .iter()
        .any(|s| n.ends_with(s))
    {
        return false;
    }
    env.info(|| {
        format!(
            "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {} {}",
            go_quote(n),
            env.pos(at)
        )
    });
    true
}

/// The functions of a range vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeFn {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    PredictLinear,
    Resets,
    Changes,
    AvgOverTime,
    SumOverTime,
    CountOverTime,
    MinOverTime,
    MaxOverTime,
    TsOfMinOverTime,
    TsOfMaxOverTime,
    TsOfFirstOverTime,
    TsOfLastOverTime,
    LastOverTime,
    FirstOverTime,
    PresentOverTime,
    StddevOverTime,
    StdvarOverTime,
    QuantileOverTime,
    MadOverTime,
    DoubleExponentialSmoothing,
}

impl RangeFn {
    /// What the function needs of its samples.
    fn fields(self) -> Fields {
        match self {
            RangeFn::CountOverTime
            | RangeFn::PresentOverTime
            | RangeFn::TsOfFirstOverTime
            | RangeFn::TsOfLastOverTime => Fields::Timestamps,
            _ => Fields::All,
        }
    }

    pub(crate) fn from_name(n: &str) -> Option<RangeFn> {
        Some(match n {
            "rate" => RangeFn::Rate,
            "increase" => RangeFn::Increase,
            "delta" => RangeFn::Delta,
            "irate" => RangeFn::Irate,
            "idelta" => RangeFn::Idelta,
            "deriv" => RangeFn::Deriv,
            "predict_linear" => RangeFn::PredictLinear,
            "resets" => RangeFn::Resets,
            "changes" => RangeFn::Changes,
            "avg_over_time" => RangeFn::AvgOverTime,
            "sum_over_time" => RangeFn::SumOverTime,
            "count_over_time" => RangeFn::CountOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            "ts_of_min_over_time" => RangeFn::TsOfMinOverTime,
            "ts_of_max_over_time" => RangeFn::TsOfMaxOverTime,
            "ts_of_first_over_time" => RangeFn::TsOfFirstOverTime,
            "ts_of_last_over_time" => RangeFn::TsOfLastOverTime,
            "last_over_time" => RangeFn::LastOverTime,
            "first_over_time" => RangeFn::FirstOverTime,
            "present_over_time" => RangeFn::PresentOverTime,
            "stddev_over_time" => RangeFn::StddevOverTime,
            "stdvar_over_time" => RangeFn::StdvarOverTime,
            "quantile_over_time" => RangeFn::QuantileOverTime,
            "mad_over_time" => RangeFn::MadOverTime,
            "double_exponential_smoothing" | "holt_winters" => RangeFn::DoubleExponentialSmoothing,
            _ => return None,
        })
    }
}

/// The smallest (`better` is `<`) or largest (`>`) value of `w`, as Prometheus's
/// `min_over_time` / `max_over_time` find it: NaNs count only when every value is NaN.
fn extreme(w: &[(i64, f64)], better: impl Fn(f64, f64) -> bool + Copy) -> f64 {
    // Four running extremes at once (no chain of dependent compares); a NaN never wins a
    // compare, so NaNs are skipped. Which of 0 and -0 wins depends on order, and a start
    // value of infinity cannot tell "all NaN" from "all infinite": both take the exact path.
    let start = if better(0.0, 1.0) {
        f64::INFINITY
    } else {
        f64::NEG_INFINITY
    };
    let mut lanes = [start; 4];
    let chunks = w.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, p) in lanes.iter_mut().zip(c) {
            *l = if better(p.1, *l) { p.1 } else { *l };
        }
    }
    let m = rest
        .iter()
        .map(|p| p.1)
        .chain(lanes)
        .fold(start, |m, v| if better(v, m) { v } else { m });
    if m == 0.0 || m.is_infinite() {
        fold_cmp(w, |cur, m| better(cur, m) || m.is_nan()).1
    } else {
        m
    }
}

fn fold_cmp(w: &[(i64, f64)], better: impl Fn(f64, f64) -> bool) -> (i64, f64) {
    let (mut t, mut m) = w[0];
    for &(pt, v) in w {
        if better(v, m) {
            m = v;
            t = pt;
        }
    }
    (t, m)
}

fn avg_over_time(w: &[(i64, f64)]) -> f64 {
    let (mut sum, mut count) = (w[0].1, 1.0);
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for (i, p) in w[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(p.1, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(p.1 / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn variance(w: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in w {
        count += 1.0;
        let delta = p.1 - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (p.1 - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated towards its edges.
/// `resets`: the window's series goes down somewhere, so a counter's resets need correcting.
fn extrapolated_rate(
    w: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    range: i64,
    is_counter: bool,
    resets: bool,
    is_rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let n1 = w.len() - 1;
    let mut result = w[n1].1 - w[0].1;
    if is_counter && resets {
        for p in w.windows(2) {
            if p[1].1 < p[0].1 {
                result += p[0].1;
            }
        }
    }
    let change = Change {
        first: w[0],
        last: w[n1],
        count: w.len(),
        result,
    };
    Some(change.extrapolate(range_start, range_end, range, is_counter, is_rate))
}

/// What `rate`, `increase` and `delta` need of a window's samples: its first and last samples,
/// how many there are, and the change between them (for a counter, with its resets added
/// back). Raw samples and rollup figures both give it, so both extrapolate the same way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Change {
    pub first: (i64, f64),
    pub last: (i64, f64),
    /// Samples in the window, at least 2.
    pub count: usize,
    pub result: f64,
}

impl Change {
    /// The change extrapolated towards the window's edges, as Prometheus does: to an edge
    /// when the samples reach within 1.1 average intervals of it, else half an interval; a
    /// counter not below zero.
    pub fn extrapolate(
        &self,
        range_start: i64,
        range_end: i64,
        range: i64,
        is_counter: bool,
        is_rate: bool,
    ) -> f64 {
        let (first_t, last_t) = (self.first.0, self.last.0);
        let result = self.result;
        let mut to_start = (first_t - range_start) as f64 / 1000.0;
        let mut to_end = (range_end - last_t) as f64 / 1000.0;
        let sampled = (last_t - first_t) as f64 / 1000.0;
        let avg = sampled / (self.count - 1) as f64;
        let threshold = avg * 1.1;
        if to_start >= threshold {
            to_start = avg / 2.0;
        }
        if is_counter {
            let mut to_zero = to_start;
            if result > 0.0 && self.first.1 >= 0.0 {
                to_zero = sampled * (self.first.1 / result);
            }
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
        if to_end >= threshold {
            to_end = avg / 2.0;
        }
        let mut factor = (sampled + to_start + to_end) / sampled;
        if is_rate {
            factor /= range as f64 / 1000.0;
        }
        result * factor
    }
}

/// `irate` and `idelta`: from the last two samples.
fn instant_value(w: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (a, b) = (w[w.len() - 2], w[w.len() - 1]);
    let dt = b.0 - a.0;
    if dt == 0 {
        return None;
    }
    let mut v = b.1;
    if !is_rate || b.1 >= a.1 || b.1.is_nan() || a.1.is_nan() {
        v = b.1 - a.1;
    }
    if is_rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

/// Least-squares fit: `(slope, intercept at intercept_t)`.
fn linear_regression(w: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].1;
    let mut const_y = true;
    for (i, p) in w.iter().enumerate() {
        if const_y && i > 0 && p.1 != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.0 - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.1, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.1, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn double_exponential_smoothing(w: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, w[0].1);
    let mut b = w[1].1 - w[0].1;
    for (i, p) in w.iter().enumerate().skip(1) {
        let x = sf * p.1;
        if i - 1 > 0 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

#[cfg(test)]
mod tests {
    use super::{extreme, fold_cmp, template_pieces};

    /// Expanding the pieces of a template one after the other builds what expanding the whole
    /// template builds.
    #[test]
    fn template_pieces_expand_as_the_whole() {
        let re = regex::Regex::new("^(?s:(?P<a>x+)-(y*))$").unwrap();
        let caps = re.captures("xx-yyy").unwrap();
        for t in [
            "", "$1", "$1$2", "a$1b$2c", "$$1", "$$$1", "${a}_$2$", "$a$1x", "$", "$$", "x$1$$$2",
            "${2}${1}", "$1a$", "$10",
        ] {
            let (mut whole, mut pieces) = (String::new(), String::new());
            caps.expand(t, &mut whole);
            for p in template_pieces(t) {
                caps.expand(p, &mut pieces);
            }
            assert_eq!(pieces, whole, "{t:?}");
            assert_eq!(template_pieces(t).collect::<String>(), t);
        }
    }

    /// The fast extremes equal the plain scan Prometheus does, bit for bit, including NaNs,
    /// infinities and the order of 0 and -0.
    #[test]
    fn extremes_match_the_plain_scan() {
        let pool = [
            0.0,
            -0.0,
            1.5,
            -2.25,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            7.0,
            -7.0,
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 13) as usize;
            let w: Vec<(i64, f64)> = (0..len)
                .map(|i| {
                    (
                        i as i64,
                        pool[((x >> (4 * i)) % pool.len() as u64) as usize],
                    )
                })
                .collect();
            let min = fold_cmp(&w, |cur, m| cur < m || m.is_nan()).1;
            let max = fold_cmp(&w, |cur, m| cur > m || m.is_nan()).1;
            assert_eq!(extreme(&w, |a, b| a < b).to_bits(), min.to_bits(), "{w:?}");
            assert_eq!(extreme(&w, |a, b| a > b).to_bits(), max.to_bits(), "{w:?}");
        }
    }
}
