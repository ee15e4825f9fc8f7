//! Binary operators: arithmetic, comparison and set operators, with vector matching.

use crate::eval::{Collector, Env, Grid, Row, Stepper, Val};
use crate::labels::{prom_string, Signer};
use crate::Error;
use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use std::collections::HashSet;
use strata_model::{Labels, METRIC_NAME};

/// A binary operator on floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn from_token(id: u16) -> Option<Op> {
        Some(match id {
            T_ADD => Op::Add,
            T_SUB => Op::Sub,
            T_MUL => Op::Mul,
            T_DIV => Op::Div,
            T_MOD => Op::Mod,
            T_POW => Op::Pow,
            T_ATAN2 => Op::Atan2,
            T_EQLC => Op::Eq,
            T_NEQ => Op::Ne,
            T_GTR => Op::Gt,
            T_LSS => Op::Lt,
            T_GTE => Op::Ge,
            T_LTE => Op::Le,
            T_LAND => Op::And,
            T_LOR => Op::Or,
            T_LUNLESS => Op::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }

    /// Arithmetic changes what a value means, so the metric name goes.
    fn changes_schema(self) -> bool {
        matches!(
            self,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::Mod | Op::Atan2
        )
    }

    /// `(value, keep)`: comparisons keep the left value when true.
    #[inline]
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            Op::Add => (l + r, true),
            Op::Sub => (l - r, true),
            Op::Mul => (l * r, true),
            Op::Div => (l / r, true),
            // Rust's `%` is Go's `math.Mod`: the result takes the sign of `l`.
            Op::Mod => (l % r, true),
            Op::Pow => (l.powf(r), true),
            Op::Atan2 => (l.atan2(r), true),
            Op::Eq => (l, l == r),
            Op::Ne => (l, l != r),
            Op::Gt => (l, l > r),
            Op::Lt => (l, l < r),
            Op::Ge => (l, l >= r),
            Op::Le => (l, l <= r),
            Op::And | Op::Or | Op::Unless => (l, true),
        }
    }

    fn scalar(self, l: f64, r: f64) -> f64 {
        let (v, keep) = self.apply(l, r);
        if self.is_comparison() {
            if keep {
                1.0
            } else {
                0.0
            }
        } else {
            v
        }
    }
}

pub(crate) fn eval(env: &Env, b: &BinaryExpr, grid: Grid) -> Result<Val, Error> {
    let op = Op::from_token(b.op.id())
        .ok_or_else(|| Error::BadData(format!("unsupported binary operator in {b}")))?;
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = env.eval(&b.lhs, grid)?;
    let rhs = env.eval(&b.rhs, grid)?;
    match (lhs, rhs) {
        (Val::Scalar(mut l), Val::Scalar(r)) => {
            l.iter_mut()
                .zip(&r)
                .for_each(|(a, b)| *a = op.scalar(*a, *b));
            Ok(Val::Scalar(l))
        }
        (Val::Vector(rows), Val::Scalar(s)) => Ok(Val::Vector(vector_scalar(
            op,
            rows,
            &s,
            false,
            return_bool,
            grid,
        ))),
        (Val::Scalar(s), Val::Vector(rows)) => Ok(Val::Vector(vector_scalar(
            op,
            rows,
            &s,
            true,
            return_bool,
            grid,
        ))),
        (Val::Vector(l), Val::Vector(r)) => {
            let matching = Matching::new(b, op);
            if op.is_set() {
                set_op(env, op, &l, &r, &matching, grid).map(Val::Vector)
            } else {
                vector_binop(env, op, &l, &r, &matching, return_bool, grid).map(Val::Vector)
            }
        }
        _ => Err(Error::BadData(format!(
            "binary expression must contain only scalar and instant vector types: {b}"
        ))),
    }
}

fn vector_scalar(
    op: Op,
    mut rows: Vec<Row>,
    s: &[f64],
    swap: bool,
    return_bool: bool,
    grid: Grid,
) -> Vec<Row> {
    let drop = op.changes_schema() || return_bool;
    for r in &mut rows {
        r.points.retain_mut(|p| {
            let sv = s[grid.index(p.0)];
            let (l, rr) = if swap { (sv, p.1) } else { (p.1, sv) };
            let (mut v, mut keep) = op.apply(l, rr);
            if op.is_comparison() && swap {
                v = rr;
            }
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            p.1 = v;
            keep
        });
        if drop {
            r.drop_name = true;
        }
    }
    rows.retain(|r| !r.points.is_empty());
    rows
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
    ManyToMany,
}

struct Matching {
    card: Card,
    on: bool,
    names: Vec<String>,
    include: Vec<String>,
    fill_lhs: Option<f64>,
    fill_rhs: Option<f64>,
}

impl Matching {
    fn new(b: &BinaryExpr, op: Op) -> Matching {
        let m = b.modifier.as_ref();
        let (card, include) = match m.map(|m| &m.card) {
            Some(VectorMatchCardinality::ManyToOne(l)) => (Card::ManyToOne, l.labels.clone()),
            Some(VectorMatchCardinality::OneToMany(l)) => (Card::OneToMany, l.labels.clone()),
            Some(VectorMatchCardinality::ManyToMany) => (Card::ManyToMany, vec![]),
            _ if op.is_set() => (Card::ManyToMany, vec![]),
            _ => (Card::OneToOne, vec![]),
        };
        let (on, mut names) = match m.and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, vec![]),
        };
        names.sort();
        names.dedup();
        Matching {
            card,
            on,
            names,
            include,
            fill_lhs: m.and_then(|m| m.fill_values.lhs),
            fill_rhs: m.and_then(|m| m.fill_values.rhs),
        }
    }

    fn signer(&self) -> Signer {
        Signer::new(self.on, &self.names)
    }

    /// The labels a match group is identified by (`MatchLabels` in Prometheus).
    fn match_labels(&self, l: &Labels) -> Labels {
        let mut out = l.clone();
        for lab in l.iter() {
            let in_names = self.names.iter().any(|n| n == &lab.name);
            let keep = if self.on {
                in_names
            } else {
                !in_names && lab.name != METRIC_NAME
            };
            if !keep {
                out.set(&lab.name, "");
            }
        }
        out
    }

    /// The labels of a result (`resultMetric` in Prometheus).
    fn result_labels(&self, op: Op, many: &Labels, one: &Labels) -> Labels {
        let mut out = many.clone();
        if op.changes_schema() {
            out.set(METRIC_NAME, "");
            out.set("__type__", "");
            out.set("__unit__", "");
        }
        if self.card == Card::OneToOne {
            if self.on {
                for lab in many.iter() {
                    if !self.names.iter().any(|n| n == &lab.name) {
                        out.set(&lab.name, "");
                    }
                }
            } else {
                for n in &self.names {
                    out.set(n, "");
                }
            }
        }
        for n in &self.include {
            out.set(n, one.get(n).unwrap_or(""));
        }
        out
    }
}

/// Signature ordinals of every row of both sides.
fn ordinals(m: &Matching, l: &[Row], r: &[Row]) -> (Vec<usize>, Vec<usize>, usize) {
    let signer = m.signer();
    let mut map: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    let mut ord = |rows: &[Row]| -> Vec<usize> {
        rows.iter()
            .map(|row| {
                let sig = signer.sign(&row.labels);
                let n = map.len();
                *map.entry(sig).or_insert(n)
            })
            .collect()
    };
    let lo = ord(l);
    let ro = ord(r);
    let n = map.len();
    (lo, ro, n)
}

fn set_op(
    env: &Env,
    op: Op,
    l: &[Row],
    r: &[Row],
    m: &Matching,
    grid: Grid,
) -> Result<Vec<Row>, Error> {
    let (lo, ro, nsig) = ordinals(m, l, r);
    let mut ls = Stepper::new(l);
    let mut rs = Stepper::new(r);
    let mut out = Collector::new(env, grid);
    let mut present = vec![false; nsig];
    let mut lvals: Vec<(usize, f64)> = Vec::new();
    let mut rvals: Vec<(usize, f64)> = Vec::new();
    for ts in grid.iter() {
        out.meter.work(l.len() + r.len())?;
        ls.all_at(l, ts, &mut lvals);
        rs.all_at(r, ts, &mut rvals);
        present.iter_mut().for_each(|p| *p = false);
        match op {
            Op::And => {
                if lvals.is_empty() || rvals.is_empty() {
                    continue;
                }
                for &(i, _) in &rvals {
                    present[ro[i]] = true;
                }
                for &(i, v) in &lvals {
                    if present[lo[i]] {
                        out.push(ts, &l[i].labels, l[i].drop_name, v)?;
                    }
                }
            }
            Op::Or => {
                for &(i, v) in &lvals {
                    present[lo[i]] = true;
                    out.push(ts, &l[i].labels, l[i].drop_name, v)?;
                }
                for &(i, v) in &rvals {
                    if !present[ro[i]] {
                        out.push(ts, &r[i].labels, r[i].drop_name, v)?;
                    }
                }
            }
            _ => {
                for &(i, _) in &rvals {
                    present[ro[i]] = true;
                }
                for &(i, v) in &lvals {
                    if !present[lo[i]] {
                        out.push(ts, &l[i].labels, l[i].drop_name, v)?;
                    }
                }
            }
        }
    }
    Ok(out.finish())
}

fn vector_binop(
    env: &Env,
    op: Op,
    l: &[Row],
    r: &[Row],
    m: &Matching,
    return_bool: bool,
    grid: Grid,
) -> Result<Vec<Row>, Error> {
    let (lo, ro, nsig) = ordinals(m, l, r);
    // One-to-many matching runs as many-to-one with the sides swapped.
    let swapped = m.card == Card::OneToMany;
    let (many, one, many_ord, one_ord, fill_one, fill_many) = if swapped {
        (r, l, &ro, &lo, m.fill_lhs, m.fill_rhs)
    } else {
        (l, r, &lo, &ro, m.fill_rhs, m.fill_lhs)
    };
    let mut ms = Stepper::new(many);
    let mut os = Stepper::new(one);
    let mut out = Collector::new(env, grid);
    let mut one_by_sig: Vec<Option<usize>> = vec![None; nsig];
    let mut one_val: Vec<f64> = vec![0.0; nsig];
    let mut matched: Vec<bool> = vec![false; nsig];
    let mut inserted: Vec<HashSet<Labels>> = vec![HashSet::new(); nsig];
    let mut result_cache: std::collections::HashMap<(usize, Option<usize>), Labels> =
        std::collections::HashMap::new();
    let mut mvals: Vec<(usize, f64)> = Vec::new();
    let mut ovals: Vec<(usize, f64)> = Vec::new();
    for ts in grid.iter() {
        out.meter.work(many.len() + one.len())?;
        ms.all_at(many, ts, &mut mvals);
        os.all_at(one, ts, &mut ovals);
        if (mvals.is_empty() && ovals.is_empty())
            || ((mvals.is_empty() || ovals.is_empty())
                && m.fill_lhs.is_none()
                && m.fill_rhs.is_none())
        {
            continue;
        }
        one_by_sig.iter_mut().for_each(|x| *x = None);
        matched.iter_mut().for_each(|x| *x = false);
        inserted.iter_mut().for_each(|x| x.clear());
        for &(i, v) in &ovals {
            let s = one_ord[i];
            if let Some(prev) = one_by_sig[s] {
                let side = if swapped { "left" } else { "right" };
                let mut pair = [prom_string(&one[i].labels), prom_string(&one[prev].labels)];
                pair.sort();
                return Err(Error::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    prom_string(&m.match_labels(&one[i].labels)),
                    pair[0],
                    pair[1]
                )));
            }
            one_by_sig[s] = Some(i);
            one_val[s] = v;
        }
        let mut emit = |many_idx: Option<usize>,
                        mv: f64,
                        sig: usize,
                        one_idx: Option<usize>,
                        ov: f64,
                        matched: &mut Vec<bool>,
                        out: &mut Collector|
         -> Result<(), Error> {
            let (lv, rv) = if swapped { (ov, mv) } else { (mv, ov) };
            let (mut v, keep) = op.apply(lv, rv);
            let key = (many_idx.map_or(usize::MAX - sig, |i| i), one_idx);
            let labels = match result_cache.get(&key) {
                Some(l) => l.clone(),
                None => {
                    let many_labels = match many_idx {
                        Some(i) => many[i].labels.clone(),
                        None => m.match_labels(&one[one_idx.expect("one side")].labels),
                    };
                    let one_labels = match one_idx {
                        Some(i) => one[i].labels.clone(),
                        None => m.match_labels(&many_labels),
                    };
                    let l = m.result_labels(op, &many_labels, &one_labels);
                    result_cache.insert(key, l.clone());
                    l
                }
            };
            if m.card == Card::OneToOne {
                if matched[sig] {
                    return Err(Error::Execution("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into()));
                }
                matched[sig] = true;
            } else {
                matched[sig] = true;
                if !inserted[sig].insert(labels.clone()) {
                    return Err(Error::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
            }
            if !keep && !return_bool {
                return Ok(());
            }
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
            }
            out.push(ts, &labels, return_bool, v)
        };
        for &(i, v) in &mvals {
            let s = many_ord[i];
            match one_by_sig[s] {
                Some(oi) => emit(Some(i), v, s, Some(oi), one_val[s], &mut matched, &mut out)?,
                None => {
                    if let Some(f) = fill_one {
                        emit(Some(i), v, s, None, f, &mut matched, &mut out)?;
                    }
                }
            }
        }
        if let Some(f) = fill_many {
            for &(i, v) in &ovals {
                let s = one_ord[i];
                if !matched[s] {
                    emit(None, f, s, Some(i), v, &mut matched, &mut out)?;
                }
            }
        }
    }
    Ok(out.finish())
}
