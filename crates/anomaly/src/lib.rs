//! Online anomaly scoring of one series of 1-minute windows.
//!
//! A [`Detector`] takes a series' values in event-time order, one per window, and gives each
//! a score computed from what came before it only (so a backfill scores as live delivery
//! does): `score` in vmanomaly's convention (0 to 1 normal, above 1 anomalous), and the
//! expected value with its band (`yhat`, `yhat_lower`, `yhat_upper`).
//!
//! The model, and why it is ours: the scoring must be online and per window, which the batch
//! models of the `augurs` family (MSTL, ETS) are not, and it must be cheap enough to run for
//! every series on the ingest path. So:
//! - **Baseline**: the median of the last `window` values, or, when the series has a period,
//!   of the values at the same phase of earlier periods (seasonal median). The period is given,
//!   or searched for (autocorrelation over the last `window` values: its strongest peak, used
//!   when at least `min_autocorrelation`) each time the window index crosses a multiple of
//!   `refit` (so a rebuilt detector refits at the same windows as a live one).
//! - **Residual**: the distance from the baseline in units of the values' spread around it
//!   (median absolute deviation; the mean absolute deviation when more than half the values
//!   equal the median, as in sparse count series), signed by `direction`, zero below
//!   `min_deviation`.
//! - **Score**: the tail probability of the mean of the last two residuals among the last
//!   `history` residuals (the "anomaly likelihood" post-processing of Numenta's HTM detector),
//!   or of the mean of the last `sustained` residuals (a sustained shift, its spread widened
//!   for residuals that are not independent), whichever is less likely. Once `history`
//!   residuals are kept, the short test's probability is also read off an exponential tail
//!   fitted to the top `tail_fraction` of them (peaks over threshold, as extreme-value
//!   detectors such as SPOT do), and the likelier of the two counts: in a bursty series a
//!   routine burst is not rare, however many normal deviations it spans. A z-score of
//!   `sensitivity` scores 1.0 and each further decade of improbability adds alike. After a
//!   score above 1, scores are held at 0 for `suppress` windows (one anomaly, one event).
//!
//! - **Long seasons** (a day, a week) are more than a detector keeps: a caller fits a
//!   [`Profile`] from the series' long history (the server refits one daily from the 1-hour
//!   tier) and sets it with [`Detector::set_profile`]; values are scored less the profile's
//!   offset, and the values kept are re-expressed when it changes.
//!
//! Every piece of state is a function of the last [`Detector::lookback`] values (and of the
//! profiles set at the same windows), so a detector rebuilt from stored windows gives the live
//! one's scores. Its NAB score with the
//! defaults is in docs/benchmarks.md (measured offline by `examples/nab.rs`, end to end by
//! `../shared/anomaly/nab_eval.py`).

mod profile;

pub use profile::Profile;
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

/// Which deviations count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Above and below the baseline.
    #[default]
    Both,
    /// Only above it (a spike in errors, a temperature rising).
    Above,
    /// Only below it (throughput dropping).
    Below,
}

impl Direction {
    /// Parses `both`, `above` or `below`.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "both" => Some(Direction::Both),
            "above" => Some(Direction::Above),
            "below" => Some(Direction::Below),
            _ => None,
        }
    }
}

/// The seasonality a detector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    /// Searched for at every refit.
    #[default]
    Auto,
    /// None: the baseline is the median of the last values.
    None,
    /// This many windows.
    Windows(usize),
}

/// Settings of a detector.
#[derive(Debug, Clone)]
pub struct Options {
    /// Values the baseline is the median of (without a period), and the values a period is
    /// searched among.
    pub window: usize,
    /// Residuals the likelihood is measured against.
    pub history: usize,
    /// Windows before any score (scores are 0 until then).
    pub warm_up: usize,
    /// The seasonality.
    pub period: Period,
    /// The autocorrelation a found period must reach to be used.
    pub min_autocorrelation: f64,
    /// Windows between period searches, aligned to window indices (0: search once, at the
    /// first multiple after `window` values).
    pub refit: usize,
    /// The z-score of a residual (against recent residuals) that scores 1.0.
    pub sensitivity: f64,
    /// Which deviations count.
    pub direction: Direction,
    /// Deviations from the baseline smaller than this (in the series' unit) count as none.
    pub min_deviation: f64,
    /// Residuals averaged for the sustained-shift test (0: no such test).
    pub sustained: usize,
    /// Windows after a score above 1 during which scores are held at 0.
    pub suppress: usize,
    /// Peaks over threshold: once `history` residuals are kept, a short deviation is also
    /// measured against an exponential tail fitted to this top fraction of them, and the
    /// likelier of the two measures counts, so a series whose bursts are routine (heavy-tailed
    /// counts) does not score each one as rare (0: the normal tail only).
    pub tail_fraction: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window: 1200,
            history: 2000,
            warm_up: 150,
            period: Period::Auto,
            min_autocorrelation: 0.7,
            refit: 60,
            // The z of a 1e-4 one-sided tail.
            sensitivity: 3.719,
            direction: Direction::Both,
            min_deviation: 0.0,
            sustained: 30,
            suppress: 120,
            tail_fraction: 0.02,
        }
    }
}

/// What a detector says of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Anomaly score: up to 1 normal, above 1 anomalous.
    pub score: f64,
    /// The expected value.
    pub yhat: f64,
    /// The band's bottom: below it a value's residual reaches `sensitivity`.
    pub yhat_lower: f64,
    /// The band's top.
    pub yhat_upper: f64,
    /// The score was held at 0: the window lies in the suppression after an anomaly.
    pub held: bool,
}

/// Highest score: past it every series' anomalies look alike, whatever its residuals' tails.
const CAP: f64 = 100.0;
/// Highest residual, in units of spread.
const MAX_RESIDUAL: f64 = 100.0;
/// The sustained test's spread is widened this much: neighbouring residuals are correlated.
const SUSTAINED_WIDEN: f64 = 2.0;
/// Values a period must repeat over at least, of those searched.
const PERIOD_REPEATS: usize = 3;
/// Periods of a seasonal median: values kept are up to this many periods.
const SEASONS: usize = 8;
/// The long median and the residuals' moments change slowly: they are recomputed once per
/// this many windows (aligned to window indices, so rebuilt detectors recompute at the same
/// windows), which makes a window's cost a small fraction of a 1,200-value median.
const RECOMPUTE_EVERY: i64 = 10;
/// Values and residuals below which a detector recomputes at every window.
const YOUNG: usize = 200;

thread_local! {
    /// Scratch space for medians, shared by the detectors of a thread.
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
    /// FFT plans and a buffer for period searches.
    static FFT: RefCell<(FftPlanner<f64>, Vec<Complex<f64>>)> =
        RefCell::new((FftPlanner::new(), Vec::new()));
}

/// An online detector for one series (see the crate doc).
#[derive(Debug, Clone)]
pub struct Detector {
    opts: Options,
    values: VecDeque<f64>,
    residuals: VecDeque<f64>,
    seen: usize,
    quiet_until: usize,
    /// The window index of the last value (`i64::MIN` before any).
    last_index: i64,
    /// The period in use, in windows (0: none).
    period: usize,
    /// The long median baseline and the residual moments, as computed at the first window of
    /// the current block of [`RECOMPUTE_EVERY`] windows: `(block, baseline, moments)`.
    cached: Option<Cached>,
    /// log10 of the tail probability that scores 1.0 (of a z of `sensitivity`).
    unit: f64,
    /// The long season subtracted before scoring, and windows to the hour.
    profile: Option<(Arc<Profile>, i64)>,
}

/// See [`Detector::cached`].
#[derive(Debug, Clone, Copy)]
struct Cached {
    block: i64,
    /// Baseline and spread.
    baseline: (f64, f64),
    /// Mean and standard deviation of the residuals.
    moments: (f64, f64),
    /// The tail of the residuals' pair means: threshold and mean excess above it.
    tail: (f64, f64),
}

impl Detector {
    /// A detector with no history.
    pub fn new(opts: Options) -> Detector {
        let period = match opts.period {
            Period::Windows(p) => p,
            _ => 0,
        };
        Detector {
            values: VecDeque::new(),
            residuals: VecDeque::new(),
            seen: 0,
            quiet_until: 0,
            last_index: i64::MIN,
            period,
            cached: None,
            unit: log10_tail(opts.sensitivity),
            opts,
            profile: None,
        }
    }

    /// Sets the long season (a [`Profile`], for windows `per_hour` to the hour) subtracted
    /// from the values that follow before they are scored and learnt, and added back to the
    /// expected value and its band; `None` for none. A caller that refits profiles sets each
    /// at the same window whether live or rebuilding, so both score alike.
    pub fn set_profile(&mut self, profile: Option<Arc<Profile>>, per_hour: i64) {
        let same = match (&self.profile, &profile) {
            (Some((a, _)), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let offset = |p: &Option<(Arc<Profile>, i64)>, index: i64| {
            p.as_ref()
                .map_or(0.0, |(p, per_hour)| p.at(index, *per_hour))
        };
        let old = std::mem::replace(&mut self.profile, profile.map(|p| (p, per_hour)));
        // The values kept are re-expressed against the new profile, so the baseline does not
        // jump where the profiles differ (the first weekly profile after daily ones, at a
        // weekend). They are taken as consecutive windows back from the last: exact for a
        // series without gaps, and the same for a live detector and a rebuilt one either way.
        if self.last_index != i64::MIN {
            for (k, v) in self.values.iter_mut().rev().enumerate() {
                let index = self.last_index - k as i64;
                *v += offset(&old, index) - offset(&self.profile, index);
            }
        }
        self.cached = None;
    }

    /// Windows of history a detector's state depends on: one rebuilt from this many windows
    /// before a window scores it as one that saw the whole series.
    pub fn lookback(opts: &Options) -> usize {
        let keep = Self::keep_for(opts, opts.window / PERIOD_REPEATS);
        keep + opts.history + opts.refit.max(1) + opts.window + 2 * opts.suppress + opts.warm_up
    }

    /// Values kept for a period of `period` windows.
    fn keep_for(opts: &Options, period: usize) -> usize {
        opts.window.max(period * SEASONS).max(2)
    }

    /// The period in use, in windows (0: none).
    pub fn period(&self) -> usize {
        self.period
    }

    /// Windows observed.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Scores `v`, the value of window number `index` (the window's start over its width;
    /// indices increase, gaps allowed: the detector sees values, not time), then learns it.
    pub fn observe(&mut self, index: i64, v: f64) -> Scored {
        let season = self
            .profile
            .as_ref()
            .map_or(0.0, |(p, per_hour)| p.at(index, *per_hour));
        let mut s = self.observe_deseasoned(index, v - season);
        s.yhat += season;
        s.yhat_lower += season;
        s.yhat_upper += season;
        s
    }

    fn observe_deseasoned(&mut self, index: i64, v: f64) -> Scored {
        self.refit(index);
        let block = index.div_euclid(RECOMPUTE_EVERY);
        let seasonal = self.period > 0 && self.values.len() >= self.period;
        // Young detectors (fewer than [`YOUNG`] values or residuals) recompute every time:
        // their state moves quickly. Past that a block's figures move little however full
        // the window is (a median of a few hundred values), and a rebuilt detector replays
        // its lookback from before any window it must score alike.
        let young = self.values.len() < YOUNG.min(self.opts.window)
            || self.residuals.len() < YOUNG.min(self.opts.history);
        let ((yhat, spread), (mean, sd), tail) = match self.cached {
            Some(c) if c.block == block && !young => (
                if seasonal {
                    self.baseline()
                } else {
                    c.baseline
                },
                c.moments,
                c.tail,
            ),
            _ => {
                let c = Cached {
                    block,
                    baseline: self.baseline(),
                    moments: self.residual_moments(),
                    tail: self.residual_tail(),
                };
                self.cached = Some(c);
                (c.baseline, c.moments, c.tail)
            }
        };
        let deviation = match self.opts.direction {
            Direction::Both => (v - yhat).abs(),
            Direction::Above => (v - yhat).max(0.0),
            Direction::Below => (yhat - v).max(0.0),
        };
        let residual = if deviation < self.opts.min_deviation || deviation == 0.0 {
            0.0
        } else if spread > 0.0 {
            (deviation / spread).min(MAX_RESIDUAL)
        } else {
            MAX_RESIDUAL
        };
        let mut score = if self.seen >= self.opts.warm_up {
            self.likelihood_score(residual, mean, sd, tail)
        } else {
            0.0
        };
        let held = self.seen < self.quiet_until;
        if held {
            score = 0.0;
        } else if score > 1.0 && self.opts.suppress > 0 {
            self.quiet_until = self.seen + self.opts.suppress;
        }
        // Residuals of a baseline from a handful of values say nothing of the series.
        if self.values.len() >= self.opts.window.min(10) {
            self.residuals.push_back(residual);
            if self.residuals.len() > self.opts.history.max(2) {
                self.residuals.pop_front();
            }
        }
        self.values.push_back(v);
        while self.values.len() > Self::keep_for(&self.opts, self.period) {
            self.values.pop_front();
        }
        self.seen += 1;
        let band = if sd > 0.0 {
            (mean + self.opts.sensitivity * sd) * spread
        } else {
            3.0 * spread
        };
        Scored {
            score,
            yhat,
            yhat_lower: yhat - band,
            yhat_upper: yhat + band,
            held,
        }
    }

    /// Searches for the period when `index` crosses a multiple of `refit`.
    fn refit(&mut self, index: i64) {
        let last = std::mem::replace(&mut self.last_index, index);
        if self.opts.period != Period::Auto || self.values.len() < self.opts.window {
            return;
        }
        let every = self.opts.refit.max(1) as i64;
        let crossed = last == i64::MIN || index.div_euclid(every) != last.div_euclid(every);
        if crossed && (self.opts.refit > 0 || self.period == 0) {
            let p = self.find_period();
            if p != self.period {
                self.period = p;
                self.cached = None;
            }
        }
    }

    /// The baseline and the spread of values around it.
    fn baseline(&self) -> (f64, f64) {
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.clear();
            let p = self.period;
            let n = self.values.len();
            if p > 0 && n >= p {
                // The same phase in earlier periods.
                scratch.extend(self.values.iter().rev().skip(p - 1).step_by(p).copied());
            } else {
                scratch.extend(self.values.range(n.saturating_sub(self.opts.window)..));
            }
            if scratch.is_empty() {
                return (0.0, 0.0);
            }
            let med = median(scratch);
            for x in scratch.iter_mut() {
                *x = (*x - med).abs();
            }
            let mut spread = median(scratch) * 1.4826;
            if spread == 0.0 {
                // More than half the values equal the median (sparse counts): the mean
                // deviation still sees the others.
                spread = scratch.iter().sum::<f64>() / scratch.len() as f64 * 1.2533;
            }
            let floor = 1e-3 * med.abs().max(1e-9);
            (med, spread.max(floor))
        })
    }

    /// The lag of the strongest autocorrelation among the last `window` values, if strong
    /// enough (0 otherwise). The autocorrelations come from the power spectrum (one FFT each
    /// way, `rustfft`): O(n log n) instead of O(n²) for every lag.
    fn find_period(&self) -> usize {
        let n = self.values.len().min(self.opts.window);
        if n < 30 {
            return 0;
        }
        let x = self.values.range(self.values.len() - n..);
        let m = x.clone().sum::<f64>() / n as f64;
        let len = (2 * n).next_power_of_two();
        let acf = FFT.with(|cell| {
            let (planner, buf) = &mut *cell.borrow_mut();
            buf.clear();
            buf.extend(x.map(|v| Complex::new(v - m, 0.0)));
            buf.resize(len, Complex::new(0.0, 0.0));
            planner.plan_fft_forward(len).process(buf);
            for c in buf.iter_mut() {
                *c = Complex::new(c.norm_sqr(), 0.0);
            }
            planner.plan_fft_inverse(len).process(buf);
            buf.iter().take(n).map(|c| c.re).collect::<Vec<f64>>()
        });
        let var = acf[0];
        if var <= 1e-12 * n as f64 * m.abs().max(1.0).powi(2) {
            return 0;
        }
        let (mut best, mut best_r) = (0, self.opts.min_autocorrelation);
        for lag in 4..n / PERIOD_REPEATS {
            let (prev, cur, next) = (acf[lag - 1] / var, acf[lag] / var, acf[lag + 1] / var);
            if cur > prev && cur >= next && cur > best_r {
                best = lag;
                best_r = cur;
            }
        }
        best
    }

    /// The mean and standard deviation of the residuals kept (summed afresh each time, so
    /// they depend on the residuals only, not on the order of past rounding).
    fn residual_moments(&self) -> (f64, f64) {
        let n = self.residuals.len() as f64;
        if n < 2.0 {
            return (0.0, 0.0);
        }
        let mean = self.residuals.iter().sum::<f64>() / n;
        let var = self
            .residuals
            .iter()
            .map(|r| (r - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    /// The threshold exceeded by the top `tail_fraction` of the residuals' consecutive pair
    /// means and their mean excess above it (peaks over threshold, exponential tail); only
    /// with a full history, since a tail fitted to a few dozen exceedances is noise.
    fn residual_tail(&self) -> (f64, f64) {
        let n = self.residuals.len();
        if self.opts.tail_fraction <= 0.0 || n < self.opts.history.max(100) {
            return (0.0, 0.0);
        }
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.clear();
            let r = &self.residuals;
            scratch.extend((1..n).map(|i| (r[i - 1] + r[i]) / 2.0));
            let k = ((scratch.len() as f64 * self.opts.tail_fraction) as usize).max(5);
            let at = scratch.len() - k;
            let (_, u, above) = scratch.select_nth_unstable_by(at, |a, b| a.total_cmp(b));
            let u = *u;
            let excess = above.iter().map(|x| x - u).sum::<f64>() / above.len().max(1) as f64;
            (u, excess)
        })
    }

    /// The score of the latest residuals among the history's.
    fn likelihood_score(&self, residual: f64, mean: f64, sd: f64, tail: (f64, f64)) -> f64 {
        let n = self.residuals.len();
        if n < 2 {
            return 0.0;
        }
        let sd = sd.max(1e-6);
        let last = self.residuals.back().copied().unwrap_or(residual);
        // Improbabilities as log10 of tail probabilities.
        let pair = (last + residual) / 2.0;
        let mut short = log10_tail((pair - mean) / sd);
        if tail.1 > 0.0 {
            let fitted = self.opts.tail_fraction.log10()
                - (pair - tail.0) / tail.1 * std::f64::consts::LOG10_E;
            short = short.max(fitted.min(0.5f64.log10()));
        }
        let mut p = short;
        let k = self.opts.sustained;
        if k > 1 && n >= k {
            let recent = (self.residuals.range(n + 1 - k..).sum::<f64>() + residual) / k as f64;
            p = p.min(log10_tail(
                (recent - mean) / (sd * SUSTAINED_WIDEN / (k as f64).sqrt()),
            ));
        }
        (p / self.unit).clamp(0.0, CAP)
    }
}

/// log10 of the one-sided standard normal tail above `z`.
fn log10_tail(z: f64) -> f64 {
    tail(z).max(1e-300).log10()
}

/// The one-sided tail of the standard normal distribution above `z`.
fn tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// The complementary error function (Numerical Recipes' erfcc, 1.2e-7 relative error).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_in_noise_scores_above_one_and_the_noise_below() {
        let mut d = Detector::new(Options::default());
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut max_normal: f64 = 0.0;
        for i in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x % 1000) as f64 / 1000.0;
            let s = d.observe(i, 10.0 + noise);
            if i > 200 {
                max_normal = max_normal.max(s.score);
            }
        }
        let spike = d.observe(1000, 30.0);
        assert!(spike.score > 1.0, "{spike:?}");
        assert!(max_normal < 1.0, "{max_normal}");
        assert!((spike.yhat - 10.5).abs() < 0.2, "{spike:?}");
        assert_eq!(d.period(), 0, "noise has no period");
    }

    #[test]
    fn a_period_is_found_and_a_break_in_its_shape_scores_above_one() {
        let mut d = Detector::new(Options::default());
        let shape = |i: usize| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 48.0).sin();
        let mut max_normal: f64 = 0.0;
        for i in 0..3000 {
            let s = d.observe(i as i64, shape(i) + (i % 7) as f64 * 0.1);
            if i > 1500 {
                max_normal = max_normal.max(s.score);
            }
        }
        assert_eq!(d.period(), 48);
        assert!(max_normal < 1.0, "{max_normal}");
        // The series goes flat at its mean where it should be at a peak or a trough.
        let broke = (3000..3024)
            .map(|i| d.observe(i, 50.0).score)
            .fold(0.0, f64::max);
        assert!(broke > 1.0, "{broke}");
    }

    /// A noisy daily-ish series with a few spikes and a level shift.
    fn series(n: usize) -> Vec<f64> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let noise = (x % 1000) as f64 / 100.0;
                let base = 100.0 + 30.0 * (i as f64 * std::f64::consts::TAU / 120.0).sin();
                let spike = if i % 2777 == 1000 { 80.0 } else { 0.0 };
                let shift = if i > 9000 { 25.0 } else { 0.0 };
                base + noise + spike + shift
            })
            .collect()
    }

    #[test]
    fn a_detector_rebuilt_from_its_lookback_scores_as_the_live_one() {
        let opts = Options::default();
        let values = series(14_000);
        let mut live = Detector::new(opts.clone());
        let scores: Vec<Scored> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| live.observe(i as i64 + 7, v))
            .collect();
        assert!(live.period() > 0, "a period is found");
        assert!(scores.iter().any(|s| s.score > 1.0), "the spikes score");
        let from = 14_000 - Detector::lookback(&opts) - 500;
        let mut rebuilt = Detector::new(opts.clone());
        for (i, &v) in values.iter().enumerate().skip(from) {
            let s = rebuilt.observe(i as i64 + 7, v);
            if i >= from + Detector::lookback(&opts) {
                assert_eq!(s, scores[i], "window {i}");
            }
        }
    }

    #[test]
    fn a_direction_ignores_the_other_side_and_min_deviation_small_ones() {
        let run = |opts: Options, jump: f64| {
            let mut d = Detector::new(opts);
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            for i in 0..600 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                d.observe(i, 10.0 + (x % 1000) as f64 / 1000.0);
            }
            d.observe(600, 10.5 + jump).score
        };
        let above = Options {
            direction: Direction::Above,
            period: Period::None,
            ..Options::default()
        };
        assert!(run(above.clone(), 20.0) > 1.0);
        assert!(run(above, -20.0) < 0.5, "a drop is not above");
        let below = Options {
            direction: Direction::Below,
            period: Period::None,
            ..Options::default()
        };
        assert!(run(below, -20.0) > 1.0);
        let coarse = Options {
            min_deviation: 25.0,
            period: Period::None,
            ..Options::default()
        };
        assert!(
            run(coarse, 20.0) < 1.0,
            "a 20-unit deviation is below the minimum"
        );
    }

    #[test]
    fn routine_bursts_score_below_one_with_the_fitted_tail_and_a_rare_one_above() {
        // Counts around 3 with a burst of 20 to 40 every 37 windows (tweets, errors).
        let run = |tail_fraction: f64| {
            let opts = Options {
                tail_fraction,
                period: Period::None,
                suppress: 0,
                ..Options::default()
            };
            let mut d = Detector::new(opts);
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            let mut bursts: f64 = 0.0;
            for i in 0..6000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let burst = i % 37 == 0;
                let v = if burst {
                    20.0 + (x % 21) as f64
                } else {
                    (x % 7) as f64
                };
                let s = d.observe(i, v).score;
                if burst && i > 4000 {
                    bursts = bursts.max(s);
                }
            }
            (bursts, d.observe(6000, 400.0).score)
        };
        let (routine, rare) = run(0.02);
        assert!(routine < 1.0, "routine bursts with the tail: {routine}");
        assert!(rare > 1.0, "a burst ten times the others: {rare}");
        let (routine, _) = run(0.0);
        assert!(
            routine > 1.0,
            "the normal tail finds every burst rare: {routine}"
        );
    }

    #[test]
    fn a_weekly_profile_keeps_weekends_normal_and_finds_a_working_saturday() {
        const WEEK: i64 = 10_080;
        // A daily wave, 20 lower on the last two days of each week, in noise.
        let value = |m: i64, seed: &mut u64, working_saturday: bool| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let day = (m / 1440) % 7;
            let saturday_shift = day == 5 && (8 * 60..14 * 60).contains(&(m % 1440));
            let weekend = day >= 5 && !(working_saturday && saturday_shift && m >= 4 * WEEK);
            let wave = 10.0 * (m as f64 * std::f64::consts::TAU / 1440.0).sin();
            50.0 + wave - if weekend { 20.0 } else { 0.0 } + (*seed % 1000) as f64 / 1000.0
        };
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        let hourly: Vec<(i64, f64)> = (0..4 * WEEK / 60)
            .map(|h| {
                let sum: f64 = (0..60).map(|k| value(h * 60 + k, &mut seed, false)).sum();
                (h, sum / 60.0)
            })
            .collect();
        let profile = Arc::new(Profile::fit(&hourly).expect("a weekly shape"));
        assert_eq!(profile.period_hours(), 168);
        // Scores of the fifth week, the two before it learnt first.
        let run = |profile: Option<Arc<Profile>>, working_saturday: bool| {
            let mut d = Detector::new(Options::default());
            d.set_profile(profile, 60);
            let mut seed = 0x2545_F491_4F6C_DD1D;
            let (mut normal, mut shift): (f64, f64) = (0.0, 0.0);
            for m in 2 * WEEK..5 * WEEK {
                let s = d.observe(m, value(m, &mut seed, working_saturday)).score;
                let in_shift = (m / 1440) % 7 == 5 && (8 * 60..15 * 60).contains(&(m % 1440));
                if m >= 4 * WEEK {
                    if in_shift {
                        shift = shift.max(s);
                    } else {
                        normal = normal.max(s);
                    }
                }
            }
            (normal, shift)
        };
        let (without, _) = run(None, false);
        assert!(
            without > 1.0,
            "without the profile a weekend scores {without}"
        );
        let (normal, _) = run(Some(profile.clone()), false);
        assert!(normal < 1.0, "with it the week is normal: {normal}");
        let (_, working) = run(Some(profile), true);
        assert!(working > 1.0, "a Saturday at weekday level: {working}");
    }
}
