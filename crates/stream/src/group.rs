//! Group rollups: one metric's windows aggregated across series by some labels (for example
//! `temperature_celsius` by `site`), written back as ordinary series named as VictoriaMetrics'
//! stream aggregation names them: `<metric>:<window>_by_<labels>_<output>`, e.g.
//! `temperature_celsius:1m_by_site_avg`, so PromQL and Grafana read them like any other.
//!
//! A group window is computed from the raw samples of every member series in it (`(start, end]`,
//! as the members' windows: see [`crate::window::window_of`]), written at its end, once every
//! shard has closed the window (so all shards' data is in), and computed again when a member window is
//! corrected. Per-series [`Rollup`]s merge exactly across series, so the result does not depend
//! on how the members are spread over shards.

use crate::rollup::Rollup;
use crate::sketch::{Distinct, Quantiles};
use std::collections::BTreeMap;
use strata_model::{Label, Labels, Sample, SeriesKeyRef, METRIC_NAME};

/// One figure a group rollup writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Samples aggregated (`count_samples`).
    CountSamples,
    /// Sum of the samples (`sum_samples`).
    SumSamples,
    /// Smallest sample.
    Min,
    /// Largest sample.
    Max,
    /// Mean of the samples.
    Avg,
    /// Population standard deviation of the samples.
    Stddev,
    /// Population variance of the samples.
    Stdvar,
    /// Sum of the member series' counter increases.
    Increase,
    /// Series that had samples in the window (`count_series`).
    CountSeries,
    /// Quantiles of the samples (DDSketch), one series per quantile with a `quantile` label.
    Quantiles(Vec<f64>),
    /// Distinct values of a label among the members (HyperLogLog), `distinct_<label>`.
    Distinct(String),
}

impl Output {
    /// Parses `avg`, `count_samples`, `quantiles(0.5, 0.95)`, `distinct(device)`, ...
    pub fn parse(s: &str) -> Result<Output, String> {
        let s = s.trim();
        let inner = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
        };
        if let Some(args) = inner("quantiles") {
            let qs: Result<Vec<f64>, String> = args
                .split(',')
                .map(|q| match q.trim().parse::<f64>() {
                    Ok(q) if (0.0..=1.0).contains(&q) => Ok(q),
                    _ => Err(format!(
                        "quantile {q:?} in {s:?} must be a number in [0, 1]"
                    )),
                })
                .collect();
            return Ok(Output::Quantiles(qs?));
        }
        if let Some(label) = inner("distinct") {
            if label.is_empty() {
                return Err(format!("{s:?}: distinct() needs a label name"));
            }
            return Ok(Output::Distinct(label.to_string()));
        }
        Ok(match s {
            "count_samples" => Output::CountSamples,
            "sum_samples" => Output::SumSamples,
            "min" => Output::Min,
            "max" => Output::Max,
            "avg" => Output::Avg,
            "stddev" => Output::Stddev,
            "stdvar" => Output::Stdvar,
            "increase" => Output::Increase,
            "count_series" => Output::CountSeries,
            _ => {
                return Err(format!(
                    "unknown group rollup output {s:?}: expected count_samples, sum_samples, min, max, avg, stddev, stdvar, increase, count_series, quantiles(q, ...) or distinct(label)"
                ))
            }
        })
    }

    fn suffix(&self) -> String {
        match self {
            Output::CountSamples => "count_samples".into(),
            Output::SumSamples => "sum_samples".into(),
            Output::Min => "min".into(),
            Output::Max => "max".into(),
            Output::Avg => "avg".into(),
            Output::Stddev => "stddev".into(),
            Output::Stdvar => "stdvar".into(),
            Output::Increase => "increase".into(),
            Output::CountSeries => "count_series".into(),
            Output::Quantiles(_) => "quantiles".into(),
            Output::Distinct(l) => format!("distinct_{l}"),
        }
    }
}

/// A configured group rollup.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// The input metric.
    pub metric: String,
    /// Labels to group by (a member without one groups under the empty value).
    pub by: Vec<String>,
    /// What to write.
    pub outputs: Vec<Output>,
}

/// Formats a window length as a Prometheus duration (`1m`, `90s`, `1h`).
pub fn format_window(ms: i64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % len == 0 {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// One group's state while a window is computed.
#[derive(Default)]
struct GroupState {
    rollup: Option<Rollup>,
    series: u64,
    distinct: Vec<Distinct>,
}

impl GroupSpec {
    /// The name of an output's series for windows of `window_ms`.
    pub fn series_name(&self, output: &Output, window_ms: i64) -> String {
        let mut n = format!("{}:{}", self.metric, format_window(window_ms));
        if !self.by.is_empty() {
            n.push_str("_by_");
            n.push_str(&self.by.join("_"));
        }
        n.push('_');
        n.push_str(&output.suffix());
        n
    }

    fn wants_quantiles(&self) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o, Output::Quantiles(_)))
    }

    /// Computes one window from its member series' raw samples (each sorted, one per
    /// timestamp, within the window). Returns each output series with its value.
    pub fn compute<'a>(
        &self,
        members: impl IntoIterator<Item = (SeriesKeyRef<'a>, &'a [Sample])>,
        window_ms: i64,
    ) -> Vec<(Labels, f64)> {
        let distinct_labels: Vec<&str> = self
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Distinct(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        let mut groups: BTreeMap<Vec<String>, GroupState> = BTreeMap::new();
        for (key, samples) in members {
            let Some(r) = Rollup::of_sorted(samples, self.wants_quantiles()) else {
                continue;
            };
            let value = |name: &str| {
                key.get(name.as_bytes())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let g = groups
                .entry(self.by.iter().map(|b| value(b)).collect())
                .or_default();
            match &mut g.rollup {
                Some(acc) => acc.merge_across(&r),
                None => g.rollup = Some(r),
            }
            g.series += 1;
            g.distinct.resize_with(distinct_labels.len(), Distinct::new);
            for (d, l) in g.distinct.iter_mut().zip(&distinct_labels) {
                if let Some(v) = key.get(l.as_bytes()) {
                    d.add(v);
                }
            }
        }
        let mut out = Vec::new();
        for (values, g) in groups {
            let Some(r) = g.rollup else { continue };
            let mut distinct = g.distinct.iter();
            for o in &self.outputs {
                let labels = |extra: Option<(&str, String)>| {
                    let mut l: Vec<Label> = vec![Label {
                        name: METRIC_NAME.into(),
                        value: self.series_name(o, window_ms),
                    }];
                    for (n, v) in self.by.iter().zip(&values) {
                        if !v.is_empty() {
                            l.push(Label {
                                name: n.clone(),
                                value: v.clone(),
                            });
                        }
                    }
                    if let Some((n, v)) = extra {
                        l.push(Label {
                            name: n.into(),
                            value: v,
                        });
                    }
                    l.sort();
                    Labels::from_sorted(l)
                };
                let n = r.count as f64;
                let v = match o {
                    Output::CountSamples => n,
                    Output::SumSamples => r.sum.value(),
                    Output::Min => r.min,
                    Output::Max => r.max,
                    Output::Avg => r.mean(),
                    Output::Stddev => r.stddev(),
                    Output::Stdvar => r.variance(),
                    Output::Increase => r.increase.value(),
                    Output::CountSeries => g.series as f64,
                    Output::Distinct(_) => distinct.next().map_or(0.0, |d| d.estimate() as f64),
                    Output::Quantiles(qs) => {
                        let sketch: Option<&Quantiles> = r.quantiles.as_ref();
                        for &q in qs {
                            if let Some(v) = sketch.and_then(|s| s.quantile(q)) {
                                out.push((labels(Some(("quantile", q.to_string()))), v));
                            }
                        }
                        continue;
                    }
                };
                out.push((labels(None), v));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outputs_and_names_like_victoriametrics() {
        assert_eq!(Output::parse("avg").unwrap(), Output::Avg);
        assert_eq!(
            Output::parse("quantiles(0.5, 0.95)").unwrap(),
            Output::Quantiles(vec![0.5, 0.95])
        );
        assert_eq!(
            Output::parse("distinct(device)").unwrap(),
            Output::Distinct("device".into())
        );
        assert!(Output::parse("quantiles(2)")
            .unwrap_err()
            .contains("[0, 1]"));
        assert!(Output::parse("median").unwrap_err().contains("unknown"));
        let g = GroupSpec {
            metric: "temperature_celsius".into(),
            by: vec!["site".into()],
            outputs: vec![Output::Avg],
        };
        assert_eq!(
            g.series_name(&Output::Avg, 60_000),
            "temperature_celsius:1m_by_site_avg"
        );
        assert_eq!(format_window(90_000), "90s");
    }

    #[test]
    fn computes_each_group() {
        let g = GroupSpec {
            metric: "t".into(),
            by: vec!["site".into()],
            outputs: vec![
                Output::Avg,
                Output::CountSamples,
                Output::Max,
                Output::CountSeries,
                Output::Distinct("device".into()),
                Output::Quantiles(vec![0.5]),
            ],
        };
        let key = |d: &str, s: &str| {
            Labels::from_pairs([("__name__", "t"), ("device", d), ("site", s)])
                .unwrap()
                .key()
        };
        let (a, b, c) = (key("d1", "x"), key("d2", "x"), key("d3", "y"));
        let sa = [Sample::new(1, 1.0), Sample::new(2, 3.0)];
        let sb = [Sample::new(1, 5.0)];
        let sc = [Sample::new(1, 10.0)];
        let out = g.compute(
            [
                (a.as_ref(), &sa[..]),
                (b.as_ref(), &sb[..]),
                (c.as_ref(), &sc[..]),
            ],
            60_000,
        );
        let get = |name: &str, site: &str| {
            out.iter()
                .find(|(l, _)| l.metric_name() == Some(name) && l.get("site") == Some(site))
                .map(|(_, v)| *v)
        };
        assert_eq!(get("t:1m_by_site_avg", "x"), Some(3.0));
        assert_eq!(get("t:1m_by_site_count_samples", "x"), Some(3.0));
        assert_eq!(get("t:1m_by_site_max", "y"), Some(10.0));
        assert_eq!(get("t:1m_by_site_count_series", "x"), Some(2.0));
        assert_eq!(get("t:1m_by_site_distinct_device", "x"), Some(2.0));
        let q = out
            .iter()
            .find(|(l, _)| {
                l.metric_name() == Some("t:1m_by_site_quantiles") && l.get("site") == Some("y")
            })
            .unwrap();
        assert_eq!(q.0.get("quantile"), Some("0.5"));
        assert!((q.1 - 10.0).abs() <= 0.1);
    }
}
