//! Numeric helpers shared by aggregations and functions: compensated sums, quantiles, classic
//! histogram buckets.

/// One step of Kahan-Neumaier summation: returns the new sum and compensation.
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// The `q` quantile of `values` (reordered in place), interpolating between neighbours.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as in Prometheus.
    let order = |a: &f64, b: &f64| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    };
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    // The two neighbours by selection, not a full sort: the lower one in place, the upper one
    // the smallest of what follows it.
    let (_, low, above) = values.select_nth_unstable_by(lower as usize, order);
    let low = *low;
    let high = if upper > lower {
        above.iter().copied().min_by(order).unwrap_or(low)
    } else {
        low
    };
    low * (1.0 - weight) + high * weight
}

/// One classic histogram bucket: upper bound `le` and cumulative count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub upper: f64,
    pub count: f64,
}

/// What fixing bucket counts did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BucketFix {
    pub forced_monotonic: bool,
}

fn prepare(buckets: &mut Vec<Bucket>) -> Option<BucketFix> {
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if buckets.last().is_none_or(|b| b.upper != f64::INFINITY) {
        return None;
    }
    // Coalesce equal bounds.
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match out.last_mut() {
            Some(last) if last.upper == b.upper => last.count += b.count,
            _ => out.push(*b),
        }
    }
    *buckets = out;
    // Small floating point errors are not monotonicity violations.
    let mut prev = buckets[0].count;
    for b in buckets.iter_mut().skip(1) {
        let delta = (b.count - prev).abs();
        if delta == 0.0 {
            continue;
        }
        if delta / b.count <= 1e-12 {
            b.count = prev;
        } else {
            prev = b.count;
        }
    }
    let mut fix = BucketFix::default();
    let mut max = buckets[0].count;
    for b in buckets.iter_mut().skip(1) {
        if b.count > max {
            max = b.count;
        } else if b.count < max {
            b.count = max;
            fix.forced_monotonic = true;
        }
    }
    Some(fix)
}

/// `histogram_quantile` over classic buckets.
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> (f64, BucketFix) {
    if q.is_nan() {
        return (f64::NAN, BucketFix::default());
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, BucketFix::default());
    }
    if q > 1.0 {
        return (f64::INFINITY, BucketFix::default());
    }
    let Some(fix) = prepare(buckets) else {
        return (f64::NAN, BucketFix::default());
    };
    if buckets.len() < 2 {
        return (f64::NAN, fix);
    }
    let observations = buckets[buckets.len() - 1].count;
    if observations == 0.0 {
        return (f64::NAN, fix);
    }
    let mut rank = q * observations;
    let n = buckets.len() - 1;
    let b = buckets[..n].partition_point(|x| x.count < rank);
    if b == n {
        return (buckets[n - 1].upper, fix);
    }
    if b == 0 && buckets[0].upper <= 0.0 {
        return (buckets[0].upper, fix);
    }
    let mut start = 0.0;
    let end = buckets[b].upper;
    let mut count = buckets[b].count;
    if b > 0 {
        start = buckets[b - 1].upper;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    (start + (end - start) * (rank / count), fix)
}

/// `histogram_fraction` over classic buckets: the share of observations in `(lower, upper]`.
pub(crate) fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if prepare(buckets).is_none() {
        return f64::NAN;
    }
    let total = buckets[buckets.len() - 1].count;
    if total == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    // The cumulative count below `v`; a bound inside an unbounded bucket is not interpolated.
    let rank_at = |v: f64, is_upper: bool| -> f64 {
        let mut prev_count = 0.0;
        for (i, b) in buckets.iter().enumerate() {
            let lo = if i == 0 {
                if b.upper > 0.0 {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            } else {
                buckets[i - 1].upper
            };
            if v <= lo {
                return prev_count;
            }
            if v < b.upper {
                if b.upper.is_infinite() {
                    // Nothing is known about where in (lo, +Inf) observations lie.
                    return prev_count;
                }
                if lo.is_infinite() {
                    return if is_upper { prev_count } else { b.count };
                }
                return prev_count + (b.count - prev_count) * (v - lo) / (b.upper - lo);
            }
            prev_count = b.count;
        }
        total
    };
    let lr = rank_at(lower, false).min(total);
    let ur = rank_at(upper, true).min(total);
    (ur - lr) / total
}
