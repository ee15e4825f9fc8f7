//! The state one window keeps about its samples, and how two such states combine.
//!
//! Every figure merges exactly: sums are [`ExactSum`]s (rounded once, when read), the counter
//! increase is built from exactly represented steps, quantiles come from a mergeable
//! [`Quantiles`] sketch. So the rollup of a window equals the merge of rollups of any split of
//! its samples, whatever order they arrived in, and coarser tiers combine finer ones exactly.

use crate::exact::ExactSum;
use crate::sketch::Quantiles;
use strata_model::Sample;

/// Aggregate state of the samples of one series (or one group of series) in one window.
///
/// NaN values (Prometheus staleness markers included) carry no reading and are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    /// Samples aggregated.
    pub count: u64,
    /// Exact sum of the values.
    pub sum: ExactSum,
    /// Exact sum of the squared values (for the variance).
    pub sum_squares: ExactSum,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Earliest sample.
    pub first: Sample,
    /// Latest sample.
    pub last: Sample,
    /// Counter increase between the first and the last sample, where a drop is a reset (the
    /// counter restarted from zero), as PromQL's `increase` without extrapolation.
    pub increase: ExactSum,
    /// Quantile sketch, for metrics configured to keep one.
    pub quantiles: Option<Quantiles>,
}

/// Population variance from a count, a sum and a sum of squares (never negative).
fn variance(count: u64, sum: f64, sum_squares: f64) -> f64 {
    let n = count as f64;
    let mean = sum / n;
    (sum_squares / n - mean * mean).max(0.0)
}

/// Adds `b - a` to `acc` exactly (Knuth's two-sum: the difference and its rounding error).
fn add_difference(acc: &mut ExactSum, b: f64, a: f64) {
    let d = b - a;
    let bb = d + a;
    let err = (b - bb) + (-a - (d - bb));
    acc.add(d);
    if err != 0.0 && err.is_finite() {
        acc.add(err);
    }
}

/// The counter step from `a` to the next sample `b`: a drop is a reset to zero.
fn add_counter_step(acc: &mut ExactSum, a: f64, b: f64) {
    if b < a {
        acc.add(b);
    } else {
        add_difference(acc, b, a);
    }
}

impl Rollup {
    /// The rollup of one sample (`None` for a NaN).
    pub fn of_sample(s: Sample, with_quantiles: bool) -> Option<Rollup> {
        if s.value.is_nan() {
            return None;
        }
        let mut sum = ExactSum::new();
        sum.add(s.value);
        let mut sum_squares = ExactSum::new();
        sum_squares.add_square(s.value);
        let quantiles = with_quantiles.then(|| {
            let mut q = Quantiles::new();
            q.add(s.value);
            q
        });
        Some(Rollup {
            count: 1,
            sum,
            sum_squares,
            min: s.value,
            max: s.value,
            first: s,
            last: s,
            increase: ExactSum::new(),
            quantiles,
        })
    }

    /// The rollup of one series' samples sorted by timestamp, one per timestamp; `None` when
    /// there is no non-NaN sample.
    pub fn of_sorted(samples: &[Sample], with_quantiles: bool) -> Option<Rollup> {
        let mut it = samples.iter().filter(|s| !s.value.is_nan());
        let first = *it.next()?;
        let mut r = Rollup::of_sample(first, with_quantiles)?;
        for &s in it {
            debug_assert!(s.timestamp > r.last.timestamp);
            r.count += 1;
            r.sum.add(s.value);
            r.sum_squares.add_square(s.value);
            r.min = r.min.min(s.value);
            r.max = r.max.max(s.value);
            if s.value < r.last.value {
                // A reset: the steps up to here end at the value it dropped from.
                r.increase.add(r.last.value);
            }
            r.last = s;
            if let Some(q) = &mut r.quantiles {
                q.add(s.value);
            }
        }
        // The steps between resets telescope: the increase is last - first plus every value a
        // reset dropped from (the same exact value as adding each step).
        if r.count > 1 {
            r.increase.add(r.last.value);
            r.increase.add(-first.value);
        }
        Some(r)
    }

    /// Combines the rollups of two disjoint time spans of one series (in either order): the
    /// counter step across their boundary joins the increase, so the increase of a range is the
    /// merge of its windows'.
    pub fn merge_in_time(&mut self, other: &Rollup) {
        let (earlier_last, later_first) = if other.first.timestamp > self.last.timestamp {
            (self.last.value, other.first.value)
        } else {
            (other.last.value, self.first.value)
        };
        self.merge_counts(other);
        self.increase.merge(&other.increase);
        add_counter_step(&mut self.increase, earlier_last, later_first);
    }

    /// Combines the rollups of two different series over the same window: increases add, first
    /// and last are the earliest and latest samples of either (ties broken by value, so the
    /// result does not depend on merge order).
    pub fn merge_across(&mut self, other: &Rollup) {
        self.merge_counts(other);
        self.increase.merge(&other.increase);
    }

    fn merge_counts(&mut self, other: &Rollup) {
        self.count += other.count;
        self.sum.merge(&other.sum);
        self.sum_squares.merge(&other.sum_squares);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        let key = |s: &Sample| (s.timestamp, s.value);
        let earlier = |a: &Sample, b: &Sample| {
            key(a).0 < key(b).0 || (key(a).0 == key(b).0 && a.value.total_cmp(&b.value).is_lt())
        };
        if earlier(&other.first, &self.first) {
            self.first = other.first;
        }
        if earlier(&self.last, &other.last) {
            self.last = other.last;
        }
        match (&mut self.quantiles, &other.quantiles) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.quantiles = Some(b.clone()),
            _ => {}
        }
    }

    /// Arithmetic mean.
    pub fn mean(&self) -> f64 {
        self.sum.value() / self.count as f64
    }

    /// Population variance (as PromQL's `stdvar_over_time`).
    pub fn variance(&self) -> f64 {
        variance(self.count, self.sum.value(), self.sum_squares.value())
    }

    /// Population standard deviation (as PromQL's `stddev_over_time`).
    pub fn stddev(&self) -> f64 {
        self.variance().sqrt()
    }

    /// The figures a query reads, rounded to `f64`.
    pub fn figures(&self, quantiles: &[f64]) -> Figures {
        Figures {
            count: self.count,
            sum: self.sum.value(),
            sum_squares: self.sum_squares.value(),
            min: self.min,
            max: self.max,
            first: self.first,
            last: self.last,
            increase: self.increase.value(),
            quantiles: match &self.quantiles {
                Some(sk) => quantiles
                    .iter()
                    .filter_map(|&q| sk.quantile(q).map(|v| (q, v)))
                    .collect(),
                None => Vec::new(),
            },
        }
    }
}

/// A window's figures as stored and served: every [`Rollup`] sum rounded once.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Samples aggregated.
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of the squared values.
    pub sum_squares: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Earliest sample.
    pub first: Sample,
    /// Latest sample.
    pub last: Sample,
    /// Counter increase, resets handled.
    pub increase: f64,
    /// `(q, value)` for each configured quantile, when the window keeps a sketch.
    pub quantiles: Vec<(f64, f64)>,
}

impl Figures {
    /// Arithmetic mean.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Population standard deviation.
    pub fn stddev(&self) -> f64 {
        variance(self.count, self.sum, self.sum_squares).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples(v: &[(i64, f64)]) -> Vec<Sample> {
        v.iter().map(|&(t, x)| Sample::new(t, x)).collect()
    }

    #[test]
    fn figures_of_a_counter_with_a_reset() {
        let s = samples(&[(0, 10.0), (15, 12.5), (30, 3.0), (45, 4.0), (50, f64::NAN)]);
        let r = Rollup::of_sorted(&s, false).unwrap();
        assert_eq!(r.count, 4);
        assert_eq!(r.sum.value(), 29.5);
        assert_eq!((r.min, r.max), (3.0, 12.5));
        assert_eq!(r.first, Sample::new(0, 10.0));
        assert_eq!(r.last, Sample::new(45, 4.0));
        // 10 -> 12.5 (+2.5), reset to 3 (+3), 3 -> 4 (+1).
        assert_eq!(r.increase.value(), 6.5);
        assert_eq!(r.mean(), 29.5 / 4.0);
        assert!(Rollup::of_sorted(&samples(&[(0, f64::NAN)]), false).is_none());
    }

    #[test]
    fn stddev_is_population_stddev() {
        let s = samples(&[
            (0, 2.0),
            (1, 4.0),
            (2, 4.0),
            (3, 4.0),
            (4, 5.0),
            (5, 5.0),
            (6, 7.0),
            (7, 9.0),
        ]);
        assert_eq!(Rollup::of_sorted(&s, false).unwrap().stddev(), 2.0);
    }

    /// Sums of many series' windows merged across series equal the exactly computable sum.
    #[test]
    fn merged_sums_of_eighths_are_exact() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut rs = Vec::new();
            let mut naive = 0.0;
            let mut all = ExactSum::new();
            for d in 0..6 {
                let mut v = Vec::new();
                for i in 0..12 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let x = ((seed >> 40) % 400) as f64 / 8.0;
                    naive += x;
                    all.add(x);
                    v.push(Sample::new(i * 5000 + d, x));
                }
                rs.push(Rollup::of_sorted(&v, false).unwrap());
            }
            let mut g = rs[0].clone();
            for r in &rs[1..] {
                g.merge_across(r);
            }
            assert_eq!(all.value(), naive);
            assert_eq!(g.sum.value(), naive, "merged");
        }
    }

    fn series() -> impl Strategy<Value = Vec<Sample>> {
        prop::collection::btree_map(0i64..10_000, -1e6f64..1e6, 1..60)
            .prop_map(|m| m.into_iter().map(|(t, v)| Sample::new(t, v)).collect())
    }

    proptest! {
        /// The telescoped increase and one-step squares hold the same exact values as adding
        /// each counter step and each square as product plus rounding error.
        #[test]
        fn of_sorted_matches_step_by_step(s in series(), resets in prop::collection::vec(0usize..60, 0..5)) {
            let mut s = s;
            for i in resets {
                if let Some(x) = s.get_mut(i) {
                    x.value = x.value.abs() / 7.0; // likely below its predecessor: a reset
                }
            }
            let r = Rollup::of_sorted(&s, false).unwrap();
            let mut increase = ExactSum::new();
            let mut squares = ExactSum::new();
            for w in s.windows(2) {
                add_counter_step(&mut increase, w[0].value, w[1].value);
            }
            for x in &s {
                let p = x.value * x.value;
                squares.add(p);
                squares.add(x.value.mul_add(x.value, -p));
            }
            prop_assert_eq!(&r.increase, &increase);
            prop_assert_eq!(&r.sum_squares, &squares);
            prop_assert_eq!(r.increase.value().to_bits(), increase.value().to_bits());
        }

        /// Splitting a series' samples at any point and merging the halves' rollups, in either
        /// order, gives the rollup of the whole.
        #[test]
        fn merge_in_time_equals_whole(s in series(), cut in 0usize..60) {
            let cut = cut.min(s.len() - 1).max(1).min(s.len());
            let whole = Rollup::of_sorted(&s, true).unwrap();
            if cut < s.len() {
                let (a, b) = s.split_at(cut);
                let (ra, rb) = (Rollup::of_sorted(a, true).unwrap(), Rollup::of_sorted(b, true).unwrap());
                let mut ab = ra.clone();
                ab.merge_in_time(&rb);
                let mut ba = rb.clone();
                ba.merge_in_time(&ra);
                prop_assert_eq!(&ab, &whole);
                prop_assert_eq!(&ba, &whole);
            }
        }

        /// Merging rollups of several series is associative and commutative.
        #[test]
        fn merge_across_is_associative_and_commutative(a in series(), b in series(), c in series()) {
            let (ra, rb, rc) = (
                Rollup::of_sorted(&a, true).unwrap(),
                Rollup::of_sorted(&b, true).unwrap(),
                Rollup::of_sorted(&c, true).unwrap(),
            );
            let mut left = ra.clone();
            left.merge_across(&rb);
            left.merge_across(&rc);
            let mut bc = rb.clone();
            bc.merge_across(&rc);
            let mut right = ra.clone();
            right.merge_across(&bc);
            let mut rev = rc.clone();
            rev.merge_across(&rb);
            rev.merge_across(&ra);
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(&left, &rev);
            prop_assert_eq!(left.count as usize, a.len() + b.len() + c.len());
        }
    }
}
