//! Seasonal profiles fitted from a long history: the daily or weekly shape of a series, which
//! a [`crate::Detector`] subtracts before it scores.
//!
//! A detector keeps at most a few thousand recent windows, too few for a week (10,080
//! one-minute windows) and costly for a day; so the long seasons are fitted apart, from the
//! series' hourly values over weeks (the 1-hour tier holds them for years), and refitted
//! periodically by the caller. The fit:
//! - the hourly values, detrended by a least-squares line (a slow drift is no season);
//! - for a week (168 hours) and a day (24): the median at each hour of the period over the
//!   even cycles, tested on the odd ones, and the reverse. The share of the variance the shape
//!   explains out of sample is its skill, so a weekly shape, with seven times the parameters,
//!   is chosen only when it predicts days a daily one does not;
//! - the chosen shape, from every cycle, centred on 0 (the detector's own baseline follows the
//!   level), read between hour centres by linear interpolation, except across a step (a shift
//!   starting, a weekend): where consecutive hours differ [`STEP_RATIO`] times more than
//!   their neighbours do, the offset jumps at the hour's end instead of ramping through it
//!   (which would leave half the step in every reading of that hour), each side following
//!   its own neighbours' slope up to the jump.

/// Hours of the periods searched, longest first.
const PERIODS: [usize; 2] = [168, 24];
/// Cycles of a period the history must span.
const MIN_CYCLES: usize = 3;
/// The share of the variance a shape must explain out of sample to be used.
const MIN_SKILL: f64 = 0.3;
/// What a weekly shape must explain beyond the daily one to be chosen over it.
const WEEKLY_MARGIN: f64 = 0.05;

/// A change between consecutive hours this many times their neighbours' is a step.
const STEP_RATIO: f64 = 3.0;

/// A daily or weekly shape (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The offset from the level at the centre of each hour of the period (mean 0), starting
    /// at hours whose index (start over one hour, since the epoch) is a multiple of the period.
    offsets: Vec<f64>,
    /// Whether the offset jumps (rather than ramps) from each hour to the next.
    steps: Vec<bool>,
    /// Out-of-sample share of the variance explained.
    skill: f64,
}

impl Profile {
    /// Fits a profile to hourly values `(hour index, value)` in increasing hour order (gaps
    /// allowed; the hour index is the hour's start over one hour): `None` when they span fewer
    /// than four days or no shape explains enough of them.
    pub fn fit(hours: &[(i64, f64)]) -> Option<Profile> {
        let hours: Vec<(i64, f64)> = hours.iter().copied().filter(|h| h.1.is_finite()).collect();
        let (first, last) = (hours.first()?.0, hours.last()?.0);
        let span = (last - first + 1) as usize;
        // The longest period with enough cycles sets the detrending (and the comparison).
        let longest = PERIODS.into_iter().find(|p| span >= p * (MIN_CYCLES + 1))?;
        let x = detrend(&hours, longest);
        let total: f64 = x.iter().map(|(_, v)| v * v).sum();
        if total <= 0.0 {
            return None;
        }
        // The week first: the day replaces it when nearly as skilful (fewer parameters).
        let mut best: Option<(usize, f64)> = None;
        for p in PERIODS.into_iter().filter(|&p| p <= longest) {
            let s = skill(&x, p, total);
            if s < MIN_SKILL {
                continue;
            }
            best = match best {
                Some((_, longer)) if s + WEEKLY_MARGIN < longer => best,
                _ => Some((p, s)),
            };
        }
        let (p, skill) = best?;
        let mut offsets = shape(&x, p, |_| true);
        fill_gaps(&mut offsets);
        let mean = offsets.iter().sum::<f64>() / p as f64;
        offsets.iter_mut().for_each(|o| *o -= mean);
        let d = |k: usize| (offsets[(k + 1) % p] - offsets[k % p]).abs();
        let steps = (0..p)
            .map(|k| d(k) > STEP_RATIO * d(k + p - 1).max(d(k + 1)))
            .collect();
        Some(Profile {
            offsets,
            steps,
            skill,
        })
    }

    /// The period in hours (24 or 168).
    pub fn period_hours(&self) -> usize {
        self.offsets.len()
    }

    /// The out-of-sample share of the variance the shape explained when fitted.
    pub fn skill(&self) -> f64 {
        self.skill
    }

    /// The offset at the middle of window `index` of windows `per_hour` to the hour.
    pub fn at(&self, index: i64, per_hour: i64) -> f64 {
        let p = self.offsets.len() as f64;
        // Hours since the epoch, from the first hour's centre.
        let h = (index as f64 + 0.5) / per_hour.max(1) as f64 - 0.5;
        let phase = h.rem_euclid(p);
        let lo = phase.floor();
        let frac = phase - lo;
        let lo = lo as usize % self.offsets.len();
        let hi = (lo + 1) % self.offsets.len();
        if self.steps[lo] {
            // Hour `lo` ends half way between the centres: each side goes on as its own
            // neighbours slope.
            let n = self.offsets.len();
            return if frac < 0.5 {
                let slope = self.offsets[lo] - self.offsets[(lo + n - 1) % n];
                self.offsets[lo] + slope * frac
            } else {
                let slope = self.offsets[(hi + 1) % n] - self.offsets[hi];
                self.offsets[hi] - slope * (1.0 - frac)
            };
        }
        self.offsets[lo] * (1.0 - frac) + self.offsets[hi] * frac
    }
}

/// The values less their centred moving average over `p` hours (the classical
/// decomposition's trend: a whole cycle averages the season out, so what it leaves is season
/// and noise, whatever the level does), where at least 80% of those hours have a value.
fn detrend(hours: &[(i64, f64)], p: usize) -> Vec<(i64, f64)> {
    let t0 = hours[0].0;
    let n = (hours[hours.len() - 1].0 - t0 + 1) as usize;
    // Prefix sums of values and counts over the dense hours.
    let (mut sum, mut count) = (vec![0.0; n + 1], vec![0u32; n + 1]);
    let mut dense = vec![f64::NAN; n];
    for &(t, v) in hours {
        dense[(t - t0) as usize] = v;
    }
    for i in 0..n {
        let known = !dense[i].is_nan();
        sum[i + 1] = sum[i] + if known { dense[i] } else { 0.0 };
        count[i + 1] = count[i] + known as u32;
    }
    let half = p / 2;
    let need = (p as f64 * 0.8) as u32;
    // An even period is centred by averaging the two windows either side of the hour.
    let mean = |a: usize, b: usize| {
        let c = count[b] - count[a];
        (c >= need).then(|| (sum[b] - sum[a]) / c as f64)
    };
    (half..n.saturating_sub(half))
        .filter(|&i| !dense[i].is_nan())
        .filter_map(|i| {
            let trend = (mean(i - half, i - half + p)?
                + mean(i + 1 - half, (i + 1 - half + p).min(n))?)
                / 2.0;
            Some((t0 + i as i64, dense[i] - trend))
        })
        .collect()
}

/// The median of the values at each hour of a period `p` long, over the cycles `take` keeps
/// (NaN where none).
fn shape(x: &[(i64, f64)], p: usize, take: impl Fn(i64) -> bool) -> Vec<f64> {
    let mut at: Vec<Vec<f64>> = vec![Vec::new(); p];
    for &(t, v) in x {
        if take(t.div_euclid(p as i64)) {
            at[t.rem_euclid(p as i64) as usize].push(v);
        }
    }
    at.into_iter()
        .map(|mut vs| {
            if vs.is_empty() {
                return f64::NAN;
            }
            vs.sort_unstable_by(f64::total_cmp);
            let m = vs.len() / 2;
            if vs.len() % 2 == 1 {
                vs[m]
            } else {
                (vs[m - 1] + vs[m]) / 2.0
            }
        })
        .collect()
}

/// The share of `total` (the sum of squares) a period's shape explains out of sample: fitted
/// on the even cycles and tested on the odd ones, and the reverse.
fn skill(x: &[(i64, f64)], p: usize, total: f64) -> f64 {
    let even = shape(x, p, |c| c % 2 == 0);
    let odd = shape(x, p, |c| c % 2 != 0);
    let mut sse = 0.0;
    let mut tested = 0.0;
    for &(t, v) in x {
        let fitted = if t.div_euclid(p as i64) % 2 == 0 {
            &odd
        } else {
            &even
        };
        let f = fitted[t.rem_euclid(p as i64) as usize];
        // An hour with no estimate from the other half predicts the level.
        let f = if f.is_nan() { 0.0 } else { f };
        sse += (v - f) * (v - f);
        tested += v * v;
    }
    if tested <= 0.0 || total <= 0.0 {
        return 0.0;
    }
    1.0 - sse / tested
}

/// Hours with no value take the mean of their nearest neighbours with one (circularly).
fn fill_gaps(offsets: &mut [f64]) {
    let n = offsets.len();
    let known: Vec<usize> = (0..n).filter(|&i| !offsets[i].is_nan()).collect();
    if known.is_empty() {
        offsets.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let copy = offsets.to_vec();
    for (i, o) in offsets.iter_mut().enumerate() {
        if o.is_nan() {
            let dist = |k: usize| (k + n - i) % n;
            let next = *known.iter().min_by_key(|&&k| dist(k)).expect("known");
            let prev = *known
                .iter()
                .min_by_key(|&&k| (i + n - k) % n)
                .expect("known");
            *o = (copy[next] + copy[prev]) / 2.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % 1000) as f64 / 1000.0 - 0.5
    }

    /// `weeks` of hourly values: a daily wave, lower on two days of each week when `weekly`.
    fn hours(weeks: i64, weekly: bool) -> Vec<(i64, f64)> {
        let mut seed = 0x2545_F491_4F6C_DD1D;
        (0..weeks * 168)
            .map(|h| {
                let day = (h / 24) % 7;
                let mut v = 50.0 + 10.0 * (h as f64 * std::f64::consts::TAU / 24.0).sin();
                if weekly && day >= 5 {
                    v -= 20.0;
                }
                (h, v + 2.0 * noise(&mut seed) + h as f64 * 0.01)
            })
            .collect()
    }

    #[test]
    fn a_weekly_shape_is_found_when_days_differ_and_a_daily_one_when_they_do_not() {
        let weekly = Profile::fit(&hours(4, true)).expect("a shape");
        assert_eq!(weekly.period_hours(), 168);
        // Weekend hours sit about 20 below weekday ones at the same hour of day.
        let gap = weekly.at(24 * 60, 60) - weekly.at(6 * 24 * 60, 60);
        assert!((gap - 20.0).abs() < 2.0, "{gap}");
        let daily = Profile::fit(&hours(4, false)).expect("a shape");
        assert_eq!(daily.period_hours(), 24);
        // The wave's peak at hour 6 and trough at hour 18 (hour centres 6.5 and 18.5).
        assert!((daily.at(6 * 60, 60) - 10.0).abs() < 1.5, "{daily:?}");
        assert!((daily.at(18 * 60, 60) + 10.0).abs() < 1.5);
    }

    #[test]
    fn noise_a_trend_or_too_short_a_history_has_no_shape() {
        let mut seed = 7;
        let flat: Vec<(i64, f64)> = (0..672).map(|h| (h, 5.0 + noise(&mut seed))).collect();
        assert_eq!(Profile::fit(&flat), None);
        let trend: Vec<(i64, f64)> = (0..672).map(|h| (h, h as f64 + noise(&mut seed))).collect();
        assert_eq!(Profile::fit(&trend), None);
        assert_eq!(Profile::fit(&hours(4, true)[..48]), None);
        assert_eq!(Profile::fit(&[]), None);
    }

    #[test]
    fn gaps_are_allowed_and_offsets_are_interpolated_between_hour_centres() {
        let mut h = hours(4, false);
        h.retain(|(t, _)| t % 24 != 3);
        let p = Profile::fit(&h).expect("a shape");
        let (a, b) = (p.at(2 * 60 + 30, 60), p.at(4 * 60 + 30, 60));
        let mid = p.at(3 * 60 + 30, 60);
        assert!((mid - (a + b) / 2.0).abs() < 0.1, "{a} {mid} {b}");
        // Within an hour the offset moves smoothly.
        assert!((p.at(60, 60) - p.at(61, 60)).abs() < 0.1);
    }
}
