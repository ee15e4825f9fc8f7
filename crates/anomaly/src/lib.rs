//! Online anomaly scoring of one series of 1-minute windows (work in progress, issue 16).
//!
//! A [`Detector`] takes a series' values in event-time order, one per window, and gives each
//! a score computed from what came before it only (so a backfill scores as live delivery
//! does): `score` in vmanomaly's convention (0 to 1 normal, above 1 anomalous), and the
//! expected value with its band (`yhat`, `yhat_lower`, `yhat_upper`).
//!
//! This first detector: the expectation is the median of the last `window` values at the same
//! phase of the series' period when one is known (given, or found once by autocorrelation
//! over the first `find_period_after` windows: the strongest peak, if at least
//! `min_autocorrelation`), else of the last `window` values; the
//! residual is measured in units of the recent residuals' spread (median absolute deviation),
//! and the score is the tail probability of the latest residuals' mean among the residuals of
//! the last `history` windows (the "anomaly likelihood" post-processing of Numenta's HTM
//! detector), scaled so that a likelihood of `1 - 1e-4` scores 1.0; after a score above 1,
//! scores are held at 0 for `suppress` windows (one anomaly, one event). Its NAB score with
//! the defaults, measured by `examples/nab.rs`: 59.6 (standard profile, the 34 files of
//! `../shared/anomaly/`); the target is 70. Not yet wired into the server.

use std::collections::VecDeque;

/// Settings of a detector.
#[derive(Debug, Clone)]
pub struct Options {
    /// Values the expectation is the median of.
    pub window: usize,
    /// Residuals the likelihood is measured against.
    pub history: usize,
    /// Residuals averaged into the latest one.
    pub short: usize,
    /// Windows before any score (scores are 0 until then).
    pub warm_up: usize,
    /// The period in windows, when known (0: none).
    pub period: usize,
    /// Without a period: look for one over the first this many windows (0: never).
    pub find_period_after: usize,
    /// The autocorrelation a period must reach to be used.
    pub min_autocorrelation: f64,
    /// Highest score.
    pub cap: f64,
    /// Windows after a score above 1 during which scores are held at 0 (one anomaly, one
    /// event).
    pub suppress: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window: 1200,
            history: 2000,
            short: 1,
            warm_up: 150,
            period: 0,
            find_period_after: 1200,
            min_autocorrelation: 0.7,
            cap: 100.0,
            suppress: 120,
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
    /// The band's bottom.
    pub yhat_lower: f64,
    /// The band's top.
    pub yhat_upper: f64,
}

/// An online detector for one series (see the crate doc).
pub struct Detector {
    opts: Options,
    values: VecDeque<f64>,
    residuals: VecDeque<f64>,
    /// The sum and the sum of squares of `residuals`, kept as they come and go.
    residual_sums: (f64, f64),
    short: VecDeque<f64>,
    seen: usize,
    scratch: Vec<f64>,
    quiet_until: usize,
    /// The period in use (given, or found).
    period: usize,
}

impl Detector {
    /// A detector with no history.
    pub fn new(opts: Options) -> Detector {
        Detector {
            values: VecDeque::with_capacity(opts.window.max(opts.period * 4) + 1),
            residuals: VecDeque::with_capacity(opts.history + 1),
            residual_sums: (0.0, 0.0),
            short: VecDeque::with_capacity(opts.short + 1),
            seen: 0,
            scratch: Vec::new(),
            quiet_until: 0,
            period: opts.period,
            opts,
        }
    }

    /// Scores `v`, the next window's value, then learns it.
    pub fn observe(&mut self, v: f64) -> Scored {
        if self.period == 0
            && self.opts.find_period_after > 0
            && self.seen == self.opts.find_period_after
        {
            self.period = self.find_period();
        }
        let keep = self.opts.window.max(self.period * 8).max(2);
        let (yhat, spread) = self.expectation();
        let residual = if spread > 0.0 {
            ((v - yhat).abs() / spread).min(100.0)
        } else if v == yhat {
            0.0
        } else {
            100.0
        };
        let mut score = if self.seen >= self.opts.warm_up {
            self.likelihood_score(residual)
        } else {
            0.0
        };
        if self.seen < self.quiet_until {
            score = 0.0;
        } else if score > 1.0 && self.opts.suppress > 0 {
            self.quiet_until = self.seen + self.opts.suppress;
        }
        // Residuals of an expectation from a handful of values say nothing of the series.
        if self.values.len() >= self.opts.window.min(10) {
            self.short.push_back(residual);
            if self.short.len() > self.opts.short.max(1) {
                self.short.pop_front();
            }
            self.residuals.push_back(residual);
            self.residual_sums.0 += residual;
            self.residual_sums.1 += residual * residual;
            if self.residuals.len() > self.opts.history.max(2) {
                if let Some(old) = self.residuals.pop_front() {
                    self.residual_sums.0 -= old;
                    self.residual_sums.1 -= old * old;
                }
            }
        }
        self.values.push_back(v);
        if self.values.len() > keep {
            self.values.pop_front();
        }
        self.seen += 1;
        Scored {
            score,
            yhat,
            yhat_lower: yhat - 3.0 * spread,
            yhat_upper: yhat + 3.0 * spread,
        }
    }

    /// The expected value and the spread of values around it.
    fn expectation(&mut self) -> (f64, f64) {
        self.scratch.clear();
        let p = self.period;
        if p > 0 && self.values.len() >= p {
            // The same phase in earlier periods.
            let n = self.values.len();
            let mut i = n as isize - p as isize;
            while i >= 0 {
                self.scratch.push(self.values[i as usize]);
                i -= p as isize;
            }
        } else {
            let n = self.values.len();
            let from = n.saturating_sub(self.opts.window);
            self.scratch.extend(self.values.range(from..));
        }
        if self.scratch.is_empty() {
            return (0.0, 0.0);
        }
        let med = median(&mut self.scratch);
        for x in self.scratch.iter_mut() {
            *x = (*x - med).abs();
        }
        let mad = median(&mut self.scratch) * 1.4826;
        let floor = 1e-3 * med.abs().max(1e-9);
        (med, mad.max(floor))
    }

    /// The period in use, in windows (0: none found or given).
    pub fn period(&self) -> usize {
        self.period
    }

    /// The lag of the strongest autocorrelation among the values kept, if strong enough.
    fn find_period(&self) -> usize {
        let x: Vec<f64> = self.values.iter().copied().collect();
        let n = x.len();
        if n < 30 {
            return 0;
        }
        let m = x.iter().sum::<f64>() / n as f64;
        let var: f64 = x.iter().map(|v| (v - m).powi(2)).sum();
        if var <= 0.0 {
            return 0;
        }
        let acf = |lag: usize| {
            (0..n - lag)
                .map(|i| (x[i] - m) * (x[i + lag] - m))
                .sum::<f64>()
                / var
        };
        let (mut best, mut best_r) = (0, self.opts.min_autocorrelation);
        let mut prev = acf(3);
        let mut cur = acf(4);
        for lag in 4..n / 3 {
            let next = acf(lag + 1);
            if cur > prev && cur >= next && cur > best_r {
                best = lag;
                best_r = cur;
            }
            prev = cur;
            cur = next;
        }
        best
    }

    /// The score of the latest residuals' mean among the history's.
    fn likelihood_score(&self, residual: f64) -> f64 {
        let n = self.residuals.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let (sum, sum_sq) = self.residual_sums;
        let mean = sum / n;
        // Clamped: the running sums can leave a rounding error below zero.
        let var = (sum_sq / n - mean * mean).max(0.0);
        let sd = var.sqrt().max(1e-6);
        let recent = (self.short.iter().sum::<f64>() + residual) / (self.short.len() as f64 + 1.0);
        let z = (recent - mean) / sd;
        let tail = 0.5 * erfc(z / std::f64::consts::SQRT_2);
        // 1e-4 of tail scores 1.0, each decade beyond a quarter more, up to `cap`: past it
        // every series' anomalies look alike, whatever the tails of its residuals.
        (-tail.max(1e-300).log10() / 4.0).clamp(0.0, self.opts.cap)
    }
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
            let s = d.observe(10.0 + noise);
            if i > 200 {
                max_normal = max_normal.max(s.score);
            }
        }
        let spike = d.observe(30.0);
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
        for i in 0..2400 {
            let s = d.observe(shape(i) + (i % 7) as f64 * 0.1);
            if i > 1300 {
                max_normal = max_normal.max(s.score);
            }
        }
        assert_eq!(d.period(), 48);
        assert!(max_normal < 1.0, "{max_normal}");
        // The series goes flat at its mean where it should be at a peak or a trough.
        let broke = (2400..2424)
            .map(|_| d.observe(50.0).score)
            .fold(0.0, f64::max);
        assert!(broke > 1.0, "{broke}");
    }
}
