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
//! Results that carry warnings or infos are not kept (they are not known per step). A result
//! evaluated while a late write of its tenant landed is not kept either (it may predate it):
//! the write path bumps a per-tenant generation after the shards applied the write.
//! Kept series hold the answer's JSON text, so a hit copies text rather than formatting numbers.

use super::json::write_point;
use crate::engine::LateWrites;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use parking_lot::Mutex;
use promql_parser::parser::{AtModifier, Expr};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{Labels, Tenant};
use strata_promql::{Engine, Error, QueryContext, QueryOutput, Value};

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
    /// The coarsest tier the query may read (`max_source_resolution`), so an answer capped
    /// at one tier is never served for another cap.
    tier: strata_model::Resolution,
}

/// One kept range: the matrix of steps `from..=to` (both on the key's step grid), each series'
/// points kept as the answer's JSON text, so a hit copies text instead of formatting numbers.
struct Kept {
    from: i64,
    to: i64,
    /// The query's [`Plan::reach`].
    reach: Option<(i64, i64)>,
    series: Vec<KeptSeries>,
    /// The tiers that answered it.
    tiers: strata_model::Resolutions,
}

/// One series of a kept range: its points' timestamps, and their JSON text (`[t,"v"]`, comma
/// separated) with the end of each point in it.
struct KeptSeries {
    labels: Labels,
    ts: Vec<i64>,
    text: String,
    ends: Vec<u32>,
}

impl KeptSeries {
    fn new(labels: Labels) -> KeptSeries {
        KeptSeries {
            labels,
            ts: Vec::new(),
            text: String::new(),
            ends: Vec::new(),
        }
    }

    /// Appends points (later than those held), written as the answer writes them.
    fn push_points(&mut self, points: &[(i64, f64)]) {
        for &(t, v) in points {
            if !self.text.is_empty() {
                self.text.push(',');
            }
            write_point(&mut self.text, t, v);
            self.ts.push(t);
            self.ends.push(self.text.len() as u32);
        }
    }

    /// Appends the points `r` (indexes) of `other` (later than those held).
    fn push_from(&mut self, other: &KeptSeries, r: std::ops::Range<usize>) {
        if r.is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push(',');
        }
        let (from, to) = other.bytes(r.clone());
        let base = self.text.len() as i64 - from as i64;
        self.text.push_str(&other.text[from..to]);
        self.ts.extend_from_slice(&other.ts[r.clone()]);
        self.ends
            .extend(other.ends[r].iter().map(|&e| (e as i64 + base) as u32));
    }

    /// The indexes of the points in `from..=to`.
    fn points_in(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        self.ts.partition_point(|&t| t < from)..self.ts.partition_point(|&t| t <= to)
    }

    /// The text of the points `r` (not empty).
    fn bytes(&self, r: std::ops::Range<usize>) -> (usize, usize) {
        let from = if r.start == 0 {
            0
        } else {
            self.ends[r.start - 1] as usize + 1
        };
        (from, self.ends[r.end - 1] as usize)
    }
}

impl Kept {
    /// Estimated bytes held.
    fn weight(&self) -> u32 {
        let mut b = 64usize;
        for s in &self.series {
            b += 96 + s.text.len() + 12 * s.ts.len();
            b += s
                .labels
                .iter()
                .map(|l| 48 + l.name.len() + l.value.len())
                .sum::<usize>();
        }
        u32::try_from(b).unwrap_or(u32::MAX)
    }

    /// The steps of `from..=to` only (series left with no step dropped).
    fn slice(&self, from: i64, to: i64) -> Kept {
        let series = self
            .series
            .iter()
            .filter_map(|s| {
                let r = s.points_in(from, to);
                (!r.is_empty()).then(|| {
                    let mut k = KeptSeries::new(s.labels.clone());
                    k.push_from(s, r);
                    k
                })
            })
            .collect();
        Kept {
            from,
            to,
            reach: self.reach,
            series,
            tiers: self.tiers,
        }
    }
}

/// A range query's answer made of evaluated parts and a kept part, merged by labels: what
/// [`Merged::series`] writes is what one evaluation of the whole range answers.
pub struct Merged {
    rows: Vec<MergedRow>,
    kept: Arc<Kept>,
    /// The evaluated parts' warnings, sorted and deduplicated.
    pub warnings: Vec<String>,
    /// The evaluated parts' infos, sorted and deduplicated.
    pub infos: Vec<String>,
    /// The tiers that answered the parts (the `Strata-Tiers` header).
    pub tiers: strata_model::Resolutions,
}

/// One series of a [`Merged`]: points before the kept part, the kept points (series index and
/// point indexes), points after.
struct MergedRow {
    labels: Labels,
    head: Vec<(i64, f64)>,
    kept: Option<(usize, std::ops::Range<usize>)>,
    tail: Vec<(i64, f64)>,
}

impl MergedRow {
    fn new(labels: Labels) -> MergedRow {
        MergedRow {
            labels,
            head: Vec::new(),
            kept: None,
            tail: Vec::new(),
        }
    }
}

impl Merged {
    /// The series, in label order, each with a writer of its points' JSON text (no brackets).
    pub fn series(&self) -> impl Iterator<Item = (&Labels, impl Fn(&mut String) + '_)> + '_ {
        self.rows.iter().map(move |r| {
            let write = move |out: &mut String| {
                let mut first = true;
                let mut sep = |out: &mut String| {
                    if !std::mem::take(&mut first) {
                        out.push(',');
                    }
                };
                for &(t, v) in &r.head {
                    sep(out);
                    write_point(out, t, v);
                }
                if let Some((i, range)) = &r.kept {
                    let k = &self.kept.series[*i];
                    let (a, b) = k.bytes(range.clone());
                    sep(out);
                    out.push_str(&k.text[a..b]);
                }
                for &(t, v) in &r.tail {
                    sep(out);
                    write_point(out, t, v);
                }
            };
            (&r.labels, write)
        })
    }

    /// The steps up to `to` as a range to keep, from `from`.
    fn keep(&self, from: i64, to: i64) -> Kept {
        let series = self
            .rows
            .iter()
            .filter_map(|r| {
                let mut k = KeptSeries::new(r.labels.clone());
                let upto = |p: &[(i64, f64)]| p.partition_point(|x| x.0 <= to);
                k.push_points(&r.head[..upto(&r.head)]);
                if let Some((i, range)) = &r.kept {
                    let s = &self.kept.series[*i];
                    let end = range.start + s.ts[range.clone()].partition_point(|&t| t <= to);
                    k.push_from(s, range.start..end);
                }
                k.push_points(&r.tail[..upto(&r.tail)]);
                (!k.ts.is_empty()).then_some(k)
            })
            .collect();
        Kept {
            from,
            to,
            reach: self.kept.reach,
            series,
            tiers: self.tiers,
        }
    }
}

/// What [`ResultCache::range`] answers.
pub enum Answer {
    /// Evaluated whole.
    Evaluated(QueryOutput),
    /// Partly or wholly from the cache.
    Merged(Merged),
}

/// Late spans reported since the last time they were applied, and per-tenant generations
/// (bumped by every late write) so a result evaluated across a late write is not kept.
#[derive(Default)]
struct Late {
    spans: HashMap<Tenant, Vec<(i64, i64)>>,
    generation: HashMap<Tenant, u64>,
}

/// Most separate late spans kept per tenant between applications; beyond, the closest are
/// merged (wider, so still safe).
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
    ) -> Result<(Answer, Outcome), Error> {
        let eval = |from: i64, to: i64| engine.range(ctx, query, from, to, step);
        let Some(kept) = &self.kept else {
            self.bypassed();
            return Ok((Answer::Evaluated(eval(start, end)?), Outcome::Bypass));
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
            return Ok((Answer::Evaluated(eval(start, end)?), Outcome::Bypass));
        };
        self.apply_late();
        let key = Key {
            tenant: ctx.tenant.clone(),
            query: plan.normalized.into(),
            step,
            align: start.rem_euclid(step),
            tier: ctx.max_source_resolution(),
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
        let (answer, outcome) = match cached {
            None => (Answer::Evaluated(eval(start, end)?), Outcome::Miss),
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
                (Answer::Merged(merge(head, k, (from, to), tail)), outcome)
            }
        };
        match outcome {
            Outcome::Hit => &self.counters.hits,
            Outcome::Partial => &self.counters.partial,
            _ => &self.counters.misses,
        }
        .fetch_add(1, Ordering::Relaxed);
        let Some(final_to) = final_to else {
            return Ok((answer, outcome));
        };
        let keep = match &answer {
            Answer::Merged(m) if m.kept.from == start && m.kept.to == final_to => None,
            Answer::Merged(m) if m.warnings.is_empty() && m.infos.is_empty() => {
                Some(m.keep(start, final_to))
            }
            Answer::Evaluated(out) if out.warnings.is_empty() && out.infos.is_empty() => {
                match &out.value {
                    Value::Matrix(m) => Some(Kept {
                        from: start,
                        to: final_to,
                        reach: plan.reach,
                        tiers: out.tiers,
                        series: m
                            .iter()
                            .filter_map(|s| {
                                let n = s.points.partition_point(|p| p.0 <= final_to);
                                let mut k = KeptSeries::new(s.labels.clone());
                                k.push_points(&s.points[..n]);
                                (n > 0).then_some(k)
                            })
                            .collect(),
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(k) = keep {
            let late = self.late.lock();
            // A late write since this evaluation began may not be in what it read.
            if late.generation.get(&ctx.tenant).copied().unwrap_or(0) == generation {
                kept.insert(key, Arc::new(k));
            }
        }
        Ok((answer, outcome))
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
                Some((from, to)) => kept.insert(key, Arc::new(k.slice(from, to))),
            }
        }
    }
}

impl crate::metrics::Stage for ResultCache {
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
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
            out.counter(name, help, v.load(Ordering::Relaxed));
        }
        out.gauge(
            "strata_query_cache_bytes",
            "Estimated bytes held by the result cache.",
            bytes,
        );
        out.gauge(
            "strata_query_cache_entries",
            "Ranges held by the result cache.",
            entries,
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
        add_span(
            late.spans.entry(tenant.clone()).or_default(),
            (oldest, newest),
        );
    }
}

/// Adds a late span to a tenant's (sorted, disjoint) spans, merging those it overlaps or
/// touches; past [`MAX_SPANS`], the two closest are merged (wider, so still safe).
fn add_span(spans: &mut Vec<(i64, i64)>, (mut lo, mut hi): (i64, i64)) {
    spans.retain(|&(a, b)| {
        let touches = a <= hi.saturating_add(1) && lo <= b.saturating_add(1);
        if touches {
            lo = lo.min(a);
            hi = hi.max(b);
        }
        !touches
    });
    let at = spans.partition_point(|s| s.0 < lo);
    spans.insert(at, (lo, hi));
    if spans.len() > MAX_SPANS {
        let closest = (1..spans.len())
            .min_by_key(|&i| spans[i].0.saturating_sub(spans[i - 1].1))
            .unwrap_or(1);
        spans[closest - 1].1 = spans[closest].1;
        spans.remove(closest);
    }
}

/// The head, the kept steps `from..=to` and the tail (each sorted by labels, in time order one
/// after the other), merged by labels.
fn merge(
    head: Option<QueryOutput>,
    kept: Arc<Kept>,
    (from, to): (i64, i64),
    tail: Option<QueryOutput>,
) -> Merged {
    let mut warnings = Vec::new();
    let mut infos = Vec::new();
    let mut tiers = kept.tiers;
    let mut rows: BTreeMap<Labels, MergedRow> = BTreeMap::new();
    let mut parts =
        |o: Option<QueryOutput>, is_head: bool, rows: &mut BTreeMap<Labels, MergedRow>| {
            let Some(o) = o else { return };
            tiers = tiers.union(o.tiers);
            warnings.extend(o.warnings);
            infos.extend(o.infos);
            let Value::Matrix(m) = o.value else { return };
            for s in m {
                let r = rows
                    .entry(s.labels.clone())
                    .or_insert_with(|| MergedRow::new(s.labels));
                if is_head {
                    r.head = s.points;
                } else {
                    r.tail = s.points;
                }
            }
        };
    parts(head, true, &mut rows);
    parts(tail, false, &mut rows);
    for (i, s) in kept.series.iter().enumerate() {
        let range = s.points_in(from, to);
        if range.is_empty() {
            continue;
        }
        rows.entry(s.labels.clone())
            .or_insert_with(|| MergedRow::new(s.labels.clone()))
            .kept = Some((i, range));
    }
    for list in [&mut warnings, &mut infos] {
        list.sort();
        list.dedup();
    }
    Merged {
        rows: rows.into_values().collect(),
        kept,
        warnings,
        infos,
        tiers,
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
    fn late_spans_merge_when_they_touch_and_stay_bounded() {
        let mut v = Vec::new();
        add_span(&mut v, (10, 20));
        add_span(&mut v, (40, 50));
        add_span(&mut v, (21, 25));
        assert_eq!(v, vec![(10, 25), (40, 50)]);
        add_span(&mut v, (0, 45));
        assert_eq!(v, vec![(0, 50)]);
        let mut v = Vec::new();
        for i in 0..=MAX_SPANS as i64 {
            add_span(&mut v, (i * 100, i * 100 + if i == 7 { 95 } else { 10 }));
        }
        assert_eq!(v.len(), MAX_SPANS);
        assert_eq!(v[7], (700, 810), "the closest two were merged");
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

    fn text(points: &[(i64, f64)]) -> String {
        let mut k = KeptSeries::new(Labels::default());
        k.push_points(points);
        k.text
    }

    fn series_text(m: &Merged) -> Vec<(Labels, String)> {
        m.series()
            .map(|(l, w)| {
                let mut s = String::new();
                w(&mut s);
                (l.clone(), s)
            })
            .collect()
    }

    #[test]
    fn merge_joins_parts_by_labels_in_time_order() {
        use strata_promql::Series;
        let l = |v: &str| Labels::from_pairs([("a", v)]).unwrap();
        let s = |v: &str, pts: &[(i64, f64)]| Series {
            labels: l(v),
            points: pts.to_vec(),
        };
        let out = |m: Vec<Series>| QueryOutput {
            value: Value::Matrix(m),
            warnings: vec![],
            infos: vec!["i".into()],
            tiers: Default::default(),
        };
        let mut x = KeptSeries::new(l("x"));
        x.push_points(&[(1000, 0.5), (2000, 2.0), (3000, 1e-9)]);
        let mut y = KeptSeries::new(l("y"));
        y.push_points(&[(2000, 5.0)]);
        let kept = Arc::new(Kept {
            from: 1000,
            to: 3000,
            reach: None,
            series: vec![x, y],
            tiers: Default::default(),
        });
        let m = merge(
            Some(out(vec![s("x", &[(0, 1.0)])])),
            kept,
            (2000, 3000),
            Some(out(vec![s("w", &[(4000, 0.0)]), s("x", &[(4000, 3.0)])])),
        );
        let x_all = [(0, 1.0), (2000, 2.0), (3000, 1e-9), (4000, 3.0)];
        assert_eq!(
            series_text(&m),
            vec![
                (l("w"), text(&[(4000, 0.0)])),
                (l("x"), text(&x_all)),
                (l("y"), text(&[(2000, 5.0)])),
            ]
        );
        assert_eq!(m.infos, vec!["i".to_string()]);
        // What is kept of it, up to a step, is that prefix; a slice of it, the slice.
        let k = m.keep(0, 3000);
        assert_eq!(k.series.len(), 2, "w has no step up to 3000");
        assert_eq!(k.series[0].text, text(&x_all[..3]));
        assert_eq!(k.series[0].ts, vec![0, 2000, 3000]);
        let sl = k.slice(2000, 2000);
        assert_eq!(sl.series[0].text, text(&[(2000, 2.0)]));
        assert_eq!(sl.series[1].text, text(&[(2000, 5.0)]));
        assert_eq!(sl.series[0].ends, vec![sl.series[0].text.len() as u32]);
    }
}
