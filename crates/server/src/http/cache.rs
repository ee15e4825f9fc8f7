//! The result cache of `/api/v1/query_range`: the final part of a range query's matrix, kept
//! per (tenant, normalized query, step, step alignment, tier) so a repeated dashboard query
//! evaluates only the steps it has not seen (its new tail, and any head before the cached part).
//!
//! Exactness rests on a range query evaluating every step independently: the steps of
//! `[start, end]` are the same numbers whether evaluated in one call or in pieces on the same
//! step grid (subquery steps are aligned to absolute time, not to the query's start). What
//! breaks this is refused (see [`Plan::of`]): `@` modifiers (`@ start()` / `@ end()` move with
//! the range; absolute ones are refused too, for simplicity), and `start()`, `end()`, `range()`.
//!
//! Only steps older than the freshness window (`query.cache_freshness`) are kept, shifted by any
//! negative offset, so a kept step reads only data that is final by then. Data that arrives
//! later than that (a backfill, a device that was offline) is reported by the write path
//! ([`LateWrites`]): per tenant, the span of the write's late samples. A sample at `t` changes
//! only steps in `[t + lo, t + hi]`, where `lo..=hi` is the query's reach (its offsets, and its
//! look-back: the lookback delta or its largest range selector or subquery window); every kept
//! range of that tenant overlapping those steps is trimmed to what is unaffected, or dropped.
//! Results that carry warnings or infos are not kept (they are not known per step).

use crate::engine::LateWrites;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use parking_lot::Mutex;
use promql_parser::parser::{AtModifier, Expr};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{Labels, Tenant};
use strata_promql::{Engine, Error, QueryContext, QueryOutput, Series, Value};

/// The storage tier a cached result was computed from (part of the key, so a tier-routed
/// answer is never served for another tier's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Raw samples.
    Raw,
}

/// What the cache did for one query (the `Strata-Cache` response header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step came from the cache.
    Hit,
    /// Some steps came from the cache, the rest were evaluated.
    Partial,
    /// Nothing was cached for it; evaluated whole (and kept, if final).
    Miss,
    /// The cache was not used: `nocache=1`, the cache is off, or the query is one it refuses.
    Bypass,
}

impl Outcome {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Partial => "partial",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

/// Settings of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// Most bytes the kept results may take (estimated); 0 turns the cache off.
    pub max_bytes: u64,
    /// Steps newer than this (ms before now) are never kept: data for them may still arrive.
    pub freshness_ms: i64,
    /// The engine's lookback delta (ms): how far back a plain selector reads.
    pub lookback_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: Tenant,
    query: Arc<str>,
    step: i64,
    align: i64,
    tier: Tier,
}

/// One kept range: the matrix of steps `from..=to` (both on the key's step grid).
struct Kept {
    from: i64,
    to: i64,
    /// The query's [`Plan::reach`].
    reach: Option<(i64, i64)>,
    series: Vec<Series>,
}

impl Kept {
    /// Estimated bytes held.
    fn weight(&self) -> u32 {
        let mut b = 64usize;
        for s in &self.series {
            b += 64 + 16 * s.points.len();
            b += s
                .labels
                .iter()
                .map(|l| 48 + l.name.len() + l.value.len())
                .sum::<usize>();
        }
        u32::try_from(b).unwrap_or(u32::MAX)
    }

    /// The steps of `from..=to` only (series left with no step dropped).
    fn slice(&self, from: i64, to: i64) -> Vec<Series> {
        self.series
            .iter()
            .filter_map(|s| {
                let a = s.points.partition_point(|p| p.0 < from);
                let b = s.points.partition_point(|p| p.0 <= to);
                (a < b).then(|| Series {
                    labels: s.labels.clone(),
                    points: s.points[a..b].to_vec(),
                })
            })
            .collect()
    }
}

/// Late spans reported since the last time they were applied, and per-tenant generations
/// (bumped by every late write) so a result evaluated across a late write is not kept.
#[derive(Default)]
struct Late {
    spans: HashMap<Tenant, Vec<(i64, i64)>>,
    generation: HashMap<Tenant, u64>,
}

/// Most separate late spans kept per tenant between applications; beyond, they are merged
/// into one (wider, so still safe).
const MAX_SPANS: usize = 64;

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    partial: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    invalidations: AtomicU64,
    evictions: Arc<AtomicU64>,
}

/// The range query result cache (see the module doc).
pub struct ResultCache {
    opts: CacheOptions,
    kept: Option<Cache<Key, Arc<Kept>>>,
    late: Mutex<Late>,
    counters: Counters,
}

/// How a query may be cached: its normalized text and its reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The query as the parser prints it.
    pub normalized: String,
    /// A sample at `t` can change only steps in `[t + reach.0, t + reach.1]`; `None` when the
    /// query reads no data.
    pub reach: Option<(i64, i64)>,
}

impl Plan {
    /// The plan of `expr`, or why it is not cached.
    pub fn of(expr: &Expr, lookback_ms: i64) -> Result<Plan, &'static str> {
        Ok(Plan {
            normalized: expr.to_string(),
            reach: reach(expr, lookback_ms)?,
        })
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset(o: &Option<promql_parser::parser::Offset>) -> i64 {
    match o {
        None => 0,
        Some(promql_parser::parser::Offset::Pos(d)) => ms(*d),
        Some(promql_parser::parser::Offset::Neg(d)) => -ms(*d),
    }
}

fn union(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, b) => a.or(b),
    }
}

fn no_at(at: &Option<AtModifier>) -> Result<(), &'static str> {
    match at {
        None => Ok(()),
        Some(_) => Err("the query has an @ modifier"),
    }
}

/// Which steps a sample can change, relative to its timestamp: a selector with offset `o` read
/// at step `s` sees `(s - o - window, s - o]`, so a sample at `t` reaches steps
/// `[t + o, t + o + window)`; a subquery adds its offset and window to its inner query's reach.
fn reach(e: &Expr, lookback: i64) -> Result<Option<(i64, i64)>, &'static str> {
    Ok(match e {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => None,
        Expr::VectorSelector(vs) => {
            no_at(&vs.at)?;
            let o = offset(&vs.offset);
            Some((o, o.saturating_add(lookback)))
        }
        Expr::MatrixSelector(m) => {
            no_at(&m.vs.at)?;
            let o = offset(&m.vs.offset);
            Some((o, o.saturating_add(ms(m.range))))
        }
        Expr::Subquery(sq) => {
            no_at(&sq.at)?;
            let o = offset(&sq.offset);
            reach(&sq.expr, lookback)?
                .map(|(lo, hi)| (lo.saturating_add(o), hi.saturating_add(o + ms(sq.range))))
        }
        Expr::Aggregate(a) => {
            let p = match &a.param {
                Some(p) => reach(p, lookback)?,
                None => None,
            };
            union(reach(&a.expr, lookback)?, p)
        }
        Expr::Unary(u) => reach(&u.expr, lookback)?,
        Expr::Paren(p) => reach(&p.expr, lookback)?,
        Expr::Binary(b) => union(reach(&b.lhs, lookback)?, reach(&b.rhs, lookback)?),
        Expr::Call(c) => {
            if matches!(c.func.name, "start" | "end" | "range") {
                return Err("the query calls start(), end() or range()");
            }
            let mut r = None;
            for a in &c.args.args {
                r = union(r, reach(a, lookback)?);
            }
            r
        }
        Expr::Extension(_) => return Err("the query has an extension node"),
    })
}

/// The last step of the grid `start + k * step` at or before `t`, if any.
fn last_step_at_or_before(start: i64, step: i64, t: i64) -> Option<i64> {
    (t >= start).then(|| start + (t - start) / step * step)
}

/// The first step of the grid `start + k * step` at or after `t`.
fn first_step_at_or_after(start: i64, step: i64, t: i64) -> i64 {
    if t <= start {
        start
    } else {
        start + (t - start + step - 1) / step * step
    }
}

impl ResultCache {
    /// A cache with `opts` (off when `opts.max_bytes` is 0).
    pub fn new(opts: CacheOptions) -> ResultCache {
        let counters = Counters::default();
        let kept = (opts.max_bytes > 0).then(|| {
            let evictions = counters.evictions.clone();
            Cache::builder()
                .max_capacity(opts.max_bytes)
                .weigher(|_: &Key, v: &Arc<Kept>| v.weight())
                .eviction_listener(move |_, _, cause| {
                    if cause == RemovalCause::Size {
                        evictions.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
        });
        ResultCache {
            opts,
            kept,
            late: Mutex::new(Late::default()),
            counters,
        }
    }

    /// Counts a query that did not use the cache.
    pub fn bypassed(&self) {
        self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    /// Evaluates the range query `query` over `start..=end` every `step` at wall-clock `now`,
    /// through the cache: the answer is the engine's, step for step.
    pub fn range(
        &self,
        engine: &Engine,
        ctx: &QueryContext,
        query: &str,
        (start, end, step): (i64, i64, i64),
        now: i64,
    ) -> Result<(QueryOutput, Outcome), Error> {
        let eval = |from: i64, to: i64| engine.range(ctx, query, from, to, step);
        let Some(kept) = &self.kept else {
            self.bypassed();
            return Ok((eval(start, end)?, Outcome::Bypass));
        };
        // An unparsable query, or one of the wrong type, fails in the engine as it would uncached.
        let plan = engine.parse(query).ok().and_then(|e| {
            use promql_parser::parser::value::ValueType;
            matches!(e.value_type(), ValueType::Vector | ValueType::Scalar)
                .then(|| Plan::of(&e, self.opts.lookback_ms).ok())
                .flatten()
        });
        let Some(plan) = plan else {
            self.bypassed();
            return Ok((eval(start, end)?, Outcome::Bypass));
        };
        self.apply_late();
        let key = Key {
            tenant: ctx.tenant.clone(),
            query: plan.normalized.into(),
            step,
            align: start.rem_euclid(step),
            tier: Tier::Raw,
        };
        let generation = self.generation(&ctx.tenant);
        // Steps before this read only data older than the freshness window.
        let lo = plan.reach.map_or(0, |r| r.0.min(0));
        let cutoff = now
            .saturating_sub(self.opts.freshness_ms)
            .saturating_add(lo);
        let final_to =
            last_step_at_or_before(start, step, cutoff.saturating_sub(1)).map(|t| t.min(end));

        let cached = kept.get(&key).filter(|k| k.from <= end && k.to >= start);
        let (out, outcome) = match &cached {
            None => (eval(start, end)?, Outcome::Miss),
            Some(k) => {
                let (from, to) = (k.from.max(start), k.to.min(end));
                let head = (start < from)
                    .then(|| eval(start, from - step))
                    .transpose()?;
                let tail = (to < end).then(|| eval(to + step, end)).transpose()?;
                let outcome = if head.is_none() && tail.is_none() {
                    Outcome::Hit
                } else {
                    Outcome::Partial
                };
                (merge(head, k.slice(from, to), tail), outcome)
            }
        };
        match outcome {
            Outcome::Hit => &self.counters.hits,
            Outcome::Partial => &self.counters.partial,
            _ => &self.counters.misses,
        }
        .fetch_add(1, Ordering::Relaxed);
        let Some(final_to) = final_to else {
            return Ok((out, outcome));
        };
        let unchanged = cached
            .as_ref()
            .is_some_and(|k| k.from == start && k.to == final_to);
        if !unchanged && out.warnings.is_empty() && out.infos.is_empty() {
            if let Value::Matrix(m) = &out.value {
                let series = Kept {
                    from: start,
                    to: final_to,
                    reach: plan.reach,
                    series: m.clone(),
                }
                .slice(start, final_to);
                let late = self.late.lock();
                // A late write since this evaluation began may not be in what it read.
                if late.generation.get(&ctx.tenant).copied().unwrap_or(0) == generation {
                    kept.insert(
                        key,
                        Arc::new(Kept {
                            from: start,
                            to: final_to,
                            reach: plan.reach,
                            series,
                        }),
                    );
                }
            }
        }
        Ok((out, outcome))
    }

    fn generation(&self, tenant: &Tenant) -> u64 {
        self.late
            .lock()
            .generation
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// Trims or drops the kept ranges that the late writes reported so far can change.
    fn apply_late(&self) {
        let Some(kept) = &self.kept else { return };
        let mut late = self.late.lock();
        if late.spans.is_empty() {
            return;
        }
        let spans = std::mem::take(&mut late.spans);
        for (key, k) in kept.iter() {
            let (Some(spans), Some((lo, hi))) = (spans.get(&key.tenant), k.reach) else {
                continue;
            };
            let mut range = Some((k.from, k.to));
            for &(oldest, newest) in spans {
                let Some((from, to)) = range else { break };
                let (hit_from, hit_to) = (oldest.saturating_add(lo), newest.saturating_add(hi));
                if hit_to < from || hit_from > to {
                    continue;
                }
                // What is left on either side of the changed steps; keep the longer.
                let step = key.step;
                let start = from;
                let left = last_step_at_or_before(start, step, hit_from.saturating_sub(1))
                    .map(|t| (from, t));
                let right_from = first_step_at_or_after(start, step, hit_to.saturating_add(1));
                let right = (right_from <= to).then_some((right_from, to));
                range = match (left, right) {
                    (Some(l), Some(r)) => Some(if l.1 - l.0 >= r.1 - r.0 { l } else { r }),
                    (l, r) => l.or(r),
                };
            }
            if range == Some((k.from, k.to)) {
                continue;
            }
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
            let key = (*key).clone();
            match range {
                None => kept.invalidate(&key),
                Some((from, to)) => {
                    let series = k.slice(from, to);
                    let reach = k.reach;
                    kept.insert(
                        key,
                        Arc::new(Kept {
                            from,
                            to,
                            reach,
                            series,
                        }),
                    );
                }
            }
        }
    }

    /// Appends the cache's self-metrics.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::{counter, gauge};
        let c = &self.counters;
        let (bytes, entries) = self.kept.as_ref().map_or((0, 0), |k| {
            k.run_pending_tasks();
            (k.weighted_size(), k.entry_count())
        });
        for (name, help, v) in [
            (
                "strata_query_cache_hits_total",
                "Range queries answered wholly from the result cache.",
                &c.hits,
            ),
            (
                "strata_query_cache_partial_hits_total",
                "Range queries answered partly from the result cache (the rest evaluated).",
                &c.partial,
            ),
            (
                "strata_query_cache_misses_total",
                "Range queries the result cache had nothing for.",
                &c.misses,
            ),
            (
                "strata_query_cache_bypassed_total",
                "Range queries that did not use the result cache (nocache=1, off, or refused).",
                &c.bypassed,
            ),
            (
                "strata_query_cache_invalidations_total",
                "Cached ranges trimmed or dropped because late data reached them.",
                &c.invalidations,
            ),
            (
                "strata_query_cache_evictions_total",
                "Cached ranges evicted to stay within query.cache_bytes.",
                &c.evictions,
            ),
        ] {
            counter(out, name, help, v.load(Ordering::Relaxed));
        }
        gauge(
            out,
            "strata_query_cache_bytes",
            "Estimated bytes held by the result cache.",
            bytes as f64,
        );
        gauge(
            out,
            "strata_query_cache_entries",
            "Ranges held by the result cache.",
            entries as f64,
        );
    }
}

impl LateWrites for ResultCache {
    fn cutoff(&self) -> i64 {
        strata_model::time::now_ms().saturating_sub(self.opts.freshness_ms)
    }

    fn written(&self, tenant: &Tenant, oldest: i64, newest: i64) {
        if self.kept.is_none() {
            return;
        }
        let mut late = self.late.lock();
        *late.generation.entry(tenant.clone()).or_default() += 1;
        let spans = late.spans.entry(tenant.clone()).or_default();
        match spans
            .iter_mut()
            .find(|s| s.0 <= newest.saturating_add(1) && oldest <= s.1.saturating_add(1))
        {
            Some(s) => *s = (s.0.min(oldest), s.1.max(newest)),
            None => spans.push((oldest, newest)),
        }
        if spans.len() > MAX_SPANS {
            let lo = spans.iter().map(|s| s.0).min().unwrap_or(oldest);
            let hi = spans.iter().map(|s| s.1).max().unwrap_or(newest);
            *spans = vec![(lo, hi)];
        }
    }
}

/// The matrix of the head, kept and tail parts (each sorted by labels, in time order one after
/// the other), merged by labels: what one evaluation of the whole range gives.
fn merge(head: Option<QueryOutput>, kept: Vec<Series>, tail: Option<QueryOutput>) -> QueryOutput {
    let mut warnings = Vec::new();
    let mut infos = Vec::new();
    let mut by_labels: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut add = |series: Vec<Series>| {
        for s in series {
            by_labels.entry(s.labels).or_default().extend(s.points);
        }
    };
    let mut part = |o: Option<QueryOutput>, add: &mut dyn FnMut(Vec<Series>)| {
        if let Some(o) = o {
            warnings.extend(o.warnings);
            infos.extend(o.infos);
            if let Value::Matrix(m) = o.value {
                add(m);
            }
        }
    };
    part(head, &mut add);
    add(kept);
    part(tail, &mut add);
    for list in [&mut warnings, &mut infos] {
        list.sort();
        list.dedup();
    }
    QueryOutput {
        value: Value::Matrix(
            by_labels
                .into_iter()
                .map(|(labels, points)| Series { labels, points })
                .collect(),
        ),
        warnings,
        infos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(q: &str) -> Result<Plan, &'static str> {
        Plan::of(&strata_promql::parse(q).unwrap(), 300_000)
    }

    #[test]
    fn reach_covers_lookback_ranges_offsets_and_subqueries() {
        assert_eq!(plan("x").unwrap().reach, Some((0, 300_000)));
        assert_eq!(plan("rate(x[10m])").unwrap().reach, Some((0, 600_000)));
        assert_eq!(
            plan("sum by (a) (rate(x[1m] offset 1h)) / y")
                .unwrap()
                .reach,
            Some((0, 3_660_000))
        );
        assert_eq!(
            plan("max_over_time(rate(x[5m])[30m:1m] offset -10m)")
                .unwrap()
                .reach,
            Some((-600_000, 1_500_000))
        );
        assert_eq!(plan("vector(1) + time()").unwrap().reach, None);
        assert_eq!(
            plan("rate(x[5m])").unwrap().normalized,
            plan("rate( x [5m] )").unwrap().normalized
        );
    }

    #[test]
    fn queries_whose_meaning_follows_the_range_are_refused() {
        for q in [
            "x @ start()",
            "rate(x[5m] @ end())",
            "x @ 1000",
            "max_over_time(x[1h:] @ start())",
            "vector(start())",
            "x * range()",
        ] {
            assert!(plan(q).is_err(), "{q}");
        }
    }

    #[test]
    fn merge_joins_parts_by_labels_in_time_order() {
        let l = |v: &str| Labels::from_pairs([("a", v)]).unwrap();
        let s = |v: &str, pts: &[(i64, f64)]| Series {
            labels: l(v),
            points: pts.to_vec(),
        };
        let out = |m: Vec<Series>| QueryOutput {
            value: Value::Matrix(m),
            warnings: vec![],
            infos: vec!["i".into()],
        };
        let m = merge(
            Some(out(vec![s("x", &[(1, 1.0)])])),
            vec![s("x", &[(2, 2.0)]), s("y", &[(2, 5.0)])],
            Some(out(vec![s("w", &[(3, 0.0)]), s("x", &[(3, 3.0)])])),
        );
        assert_eq!(
            m.value,
            Value::Matrix(vec![
                s("w", &[(3, 0.0)]),
                s("x", &[(1, 1.0), (2, 2.0), (3, 3.0)]),
                s("y", &[(2, 5.0)]),
            ])
        );
        assert_eq!(m.infos, vec!["i".to_string()]);
    }
}
