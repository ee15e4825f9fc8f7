//! The tier router against raw answers: every mapped function answered from 1-minute and
//! 1-hour windows (alone, and split with raw samples at a tier boundary) equals the answer
//! computed from all raw samples, for instant and range queries, with samples on the edges.
//!
//! The windows here are computed from the same samples the raw store holds, as a rollup tier
//! holds them: `(start, end]` per series, the figures of [`WindowFigures`].

use std::sync::Arc;
use strata_model::{
    Coverage, FigureNeeds, Labels, LazyWindows, Matcher, Resolution, Resolutions, Sample,
    SelectHints, SeriesWindows, Storage, StorageError, Tenant, WindowFigures, WindowStorage,
};
use strata_promql::{Engine, EngineOptions, Error, MemStorage, QueryContext, Value};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// Start of the data: a whole day, so day-long windows align with hours.
const T0: i64 = 1_700_006_400_000;
const DAYS: i64 = 3;

/// Rollup windows computed from a full copy of the raw data.
struct Windows {
    all: MemStorage,
    coverage: Coverage,
}

impl WindowStorage for Windows {
    fn coverage(&self, _: &Tenant) -> Coverage {
        self.coverage
    }

    fn windows(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        resolution: Resolution,
        start: i64,
        end: i64,
        _needs: FigureNeeds,
    ) -> Result<Vec<LazyWindows>, StorageError> {
        let w = resolution.window_ms();
        let hints = SelectHints {
            start: start - w,
            end,
            max_samples: None,
            fields: Default::default(),
        };
        let mut out = Vec::new();
        for s in self.all.select(tenant, matchers, &hints)? {
            let mut windows: Vec<WindowFigures> = Vec::new();
            let mut i = 0;
            while i < s.samples.len() {
                let wend = (s.samples[i].timestamp - 1).div_euclid(w) * w + w;
                let mut j = i;
                while j < s.samples.len() && s.samples[j].timestamp <= wend {
                    j += 1;
                }
                let part = &s.samples[i..j];
                i = j;
                if wend < start || wend > end {
                    continue;
                }
                let mut increase = 0.0;
                for p in part.windows(2) {
                    increase += if p[1].value < p[0].value {
                        p[1].value
                    } else {
                        p[1].value - p[0].value
                    };
                }
                windows.push(WindowFigures {
                    end: wend,
                    count: part.len() as u64,
                    sum: part.iter().map(|s| s.value).sum(),
                    sum_squares: part.iter().map(|s| s.value * s.value).sum(),
                    min: part.iter().map(|s| s.value).fold(f64::INFINITY, f64::min),
                    max: part
                        .iter()
                        .map(|s| s.value)
                        .fold(f64::NEG_INFINITY, f64::max),
                    first: part[0],
                    last: part[part.len() - 1],
                    increase,
                    sketch: None,
                });
            }
            if !windows.is_empty() {
                out.push(LazyWindows::from(SeriesWindows {
                    labels: s.labels,
                    windows,
                }));
            }
        }
        Ok(out)
    }
}

fn labels(name: &str, site: &str) -> Labels {
    Labels::from_pairs([("__name__", name), ("site", site)]).unwrap()
}

/// A gauge every 5 minutes exactly on the edges (:00, :05, ...), a counter every 15 s with
/// resets, and a sparse gauge every 7 minutes: into `all`, and into `recent` from `raw_from`.
fn fill(all: &MemStorage, recent: &MemStorage, raw_from: i64) {
    let t = Tenant::default_tenant();
    let put = |l: Labels, samples: Vec<Sample>| {
        all.append(&t, l.clone(), &samples);
        let kept: Vec<Sample> = samples
            .into_iter()
            .filter(|s| s.timestamp >= raw_from)
            .collect();
        recent.append(&t, l, &kept);
    };
    for (k, site) in ["a", "b"].iter().enumerate() {
        let gauge = (0..=DAYS * 288)
            .map(|i| {
                let v = 20.0 + ((i * 37 + k as i64 * 11) % 101) as f64 / 7.0;
                Sample::new(T0 + i * 5 * MIN, v)
            })
            .collect();
        put(labels("temp", site), gauge);
        let mut c = 0.0;
        let counter = (0..=DAYS * 5760)
            .map(|i| {
                c = if i % 2000 == 1999 {
                    3.0
                } else {
                    c + ((i + k as i64) % 5) as f64
                };
                Sample::new(T0 + i * 15_000, c)
            })
            .collect();
        put(labels("energy_total", site), counter);
        let sparse = (0..DAYS * 24 * 60 / 7)
            .map(|i| Sample::new(T0 + 1 + i * 7 * MIN, (i % 13) as f64))
            .collect();
        put(labels("sparse", site), sparse);
    }
}

struct Setup {
    raw: Engine,
    tiered: Engine,
}

/// Raw data from the last day only; 1-minute windows for the last two days; days from the
/// second day on; hours for all.
fn setup() -> Setup {
    let all = Arc::new(MemStorage::new());
    let recent = Arc::new(MemStorage::new());
    let raw_from = T0 + (DAYS - 1) * 24 * HOUR + 17 * MIN;
    fill(&all, &recent, raw_from);
    let copy = MemStorage::new();
    fill(&copy, &MemStorage::new(), i64::MAX);
    let tiers = Windows {
        all: copy,
        coverage: Coverage {
            raw: raw_from,
            minute: T0 + (DAYS - 2) * 24 * HOUR + 23 * MIN,
            hour: i64::MIN,
            day: T0 + 24 * HOUR + 1,
        },
    };
    Setup {
        raw: Engine::new(all, EngineOptions::default()),
        tiered: Engine::new(recent, EngineOptions::default()).with_tiers(Arc::new(tiers)),
    }
}

fn ctx() -> QueryContext {
    QueryContext::new(Tenant::default_tenant())
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) || (a.is_nan() && b.is_nan())
}

fn same(q: &str, want: &Value, got: &Value) {
    match (want, got) {
        (Value::Matrix(w), Value::Matrix(g)) => {
            assert_eq!(
                w.iter().map(|s| &s.labels).collect::<Vec<_>>(),
                g.iter().map(|s| &s.labels).collect::<Vec<_>>(),
                "{q}: series differ"
            );
            for (ws, gs) in w.iter().zip(g) {
                assert_eq!(
                    ws.points.len(),
                    gs.points.len(),
                    "{q} {}: points",
                    ws.labels
                );
                for (a, b) in ws.points.iter().zip(&gs.points) {
                    assert_eq!(a.0, b.0, "{q}: timestamps");
                    assert!(
                        close(a.1, b.1),
                        "{q} {} at {}: raw {} tier {}",
                        ws.labels,
                        a.0,
                        a.1,
                        b.1
                    );
                }
            }
        }
        (Value::Vector(w), Value::Vector(g)) => {
            assert_eq!(w.len(), g.len(), "{q}: series");
            for (a, b) in w.iter().zip(g) {
                assert_eq!(a.labels, b.labels, "{q}");
                assert!(
                    close(a.v, b.v),
                    "{q} {}: raw {} tier {}",
                    a.labels,
                    a.v,
                    b.v
                );
            }
        }
        _ => panic!("{q}: {want:?} vs {got:?}"),
    }
}

const EXACT: [&str; 9] = [
    "min_over_time(temp[{r}])",
    "max_over_time(temp[{r}])",
    "count_over_time(temp[{r}])",
    "sum_over_time(temp[{r}])",
    "avg_over_time(temp[{r}])",
    "last_over_time(temp[{r}])",
    "increase(energy_total[{r}])",
    "rate(energy_total[{r}])",
    "delta(temp[{r}])",
];

fn tiers_of(out: &strata_promql::QueryOutput) -> Resolutions {
    out.tiers
}

#[test]
fn range_queries_on_each_tier_equal_raw_answers() {
    let s = setup();
    let end = T0 + DAYS * 24 * HOUR;
    // step, range: days at a day's step (two-day windows reach back before the day tier:
    // their first day from hours), 1h windows at a 6-hour step; minute windows at a 10-minute
    // step.
    for (step, range, tier) in [
        (24 * HOUR, "1d", Resolution::Day),
        (24 * HOUR, "2d", Resolution::Day),
        (6 * HOUR, "1d", Resolution::Hour),
        (6 * HOUR, "1h", Resolution::Hour),
        (10 * MIN, "10m", Resolution::Minute),
        (5 * MIN, "1m", Resolution::Minute),
    ] {
        for f in EXACT {
            let q = f.replace("{r}", range);
            // Minute windows from when the 1-minute tier holds them (plus its first hour,
            // which the hours answer) on; hours over two days.
            let span = if tier >= Resolution::Hour {
                48 * HOUR
            } else {
                36 * HOUR
            };
            let start = end - span / step * step + step;
            let want = s.raw.range(&ctx(), &q, start, end, step).unwrap();
            let got = s.tiered.range(&ctx(), &q, start, end, step).unwrap();
            same(&q, &want.value, &got.value);
            assert!(tiers_of(&got).contains(tier), "{q}: {:?}", got.tiers);
        }
    }
}

#[test]
fn ranges_crossing_the_raw_boundary_merge_raw_and_tiers() {
    let s = setup();
    let raw_from = T0 + (DAYS - 1) * 24 * HOUR + 17 * MIN;
    // Instant queries whose window covers hours, minutes and raw samples.
    for f in EXACT {
        for (range, at) in [
            ("2d", T0 + DAYS * 24 * HOUR),
            ("3h", raw_from + 2 * HOUR - 17 * MIN),
            ("30m", raw_from + 13 * MIN),
        ] {
            let q = f.replace("{r}", range);
            let want = s.raw.instant(&ctx(), &q, at).unwrap();
            let got = s.tiered.instant(&ctx(), &q, at).unwrap();
            same(&q, &want.value, &got.value);
            assert!(got.tiers.contains(Resolution::Raw), "{q}: {:?}", got.tiers);
            assert!(!tiers_of(&got).header_value().is_empty());
        }
    }
    // A range query at a minute step over the raw boundary: every window is whole minutes, so
    // the minutes answer all of it, as the raw samples would.
    for f in EXACT {
        let q = f.replace("{r}", "1h");
        let (start, end) = (raw_from - 3 * HOUR, raw_from + 2 * HOUR);
        let want = s
            .raw
            .range(&ctx(), &q, start - start % MIN, end, MIN)
            .unwrap();
        let got = s
            .tiered
            .range(&ctx(), &q, start - start % MIN, end, MIN)
            .unwrap();
        same(&q, &want.value, &got.value);
        assert_eq!(got.tiers.header_value(), "1m", "{q}");
    }
}

#[test]
fn selectors_read_the_last_sample_of_a_window() {
    let s = setup();
    let end = T0 + DAYS * 24 * HOUR;
    // On the 5-minute gauge, the last sample of the hour ending at t is the one at t (the
    // edge belongs to the window ending there), as raw lookback finds it.
    for q in [
        "temp",
        "sum(temp)",
        "max by (site) (temp)",
        "timestamp(temp)",
    ] {
        let want = s
            .raw
            .range(&ctx(), q, T0 + 24 * HOUR, end, 24 * HOUR)
            .unwrap();
        let got = s
            .tiered
            .range(&ctx(), q, T0 + 24 * HOUR, end, 24 * HOUR)
            .unwrap();
        same(q, &want.value, &got.value);
        assert!(got.tiers.contains(Resolution::Hour), "{q}");
    }
    // The sparse gauge has gaps wider than the lookback: an hour's last sample answers where
    // raw lookback finds none (the lookback widened to the tier's window).
    let t = T0 + 24 * HOUR + MIN;
    let raw = s.raw.instant(&ctx(), "sparse", t).unwrap();
    assert!(matches!(&raw.value, Value::Vector(v) if v.is_empty()));
    let got = s.tiered.instant(&ctx(), "sparse", t).unwrap();
    let Value::Vector(v) = got.value else {
        panic!()
    };
    assert_eq!(v.len(), 2);
    // The hour ending at T0 + 24h; its last sample is number (24h - 1) / 7m.
    assert_eq!(v[0].v, (((24 * HOUR - 1) / (7 * MIN)) % 13) as f64);
}

#[test]
fn unmapped_functions_fail_where_raw_is_gone_and_caps_are_kept() {
    let s = setup();
    let at = T0 + 24 * HOUR;
    for q in [
        "irate(energy_total[5m])",
        "resets(energy_total[1h])",
        "changes(temp[1h])",
    ] {
        match s.tiered.instant(&ctx(), q, at) {
            Err(Error::Execution(m)) => assert!(m.contains("raw samples before"), "{q}: {m}"),
            other => panic!("{q}: {other:?}"),
        }
    }
    // Within raw retention they are answered from raw samples, as before.
    let recent = T0 + DAYS * 24 * HOUR;
    let want = s
        .raw
        .instant(&ctx(), "irate(energy_total[5m])", recent)
        .unwrap();
    let got = s
        .tiered
        .instant(&ctx(), "irate(energy_total[5m])", recent)
        .unwrap();
    same("irate", &want.value, &got.value);
    assert_eq!(got.tiers.header_value(), "raw");
    // max_source_resolution=raw: no tier answers, so old data is simply not there.
    let raw_only = ctx().with_max_source_resolution(Resolution::Raw);
    let got = s
        .tiered
        .instant(&raw_only, "avg_over_time(temp[1h])", at)
        .unwrap();
    assert!(matches!(&got.value, Value::Vector(v) if v.is_empty()));
    // 1m cap: a two-day-old hour comes from minutes, not hours.
    let minute = ctx().with_max_source_resolution(Resolution::Minute);
    let q = "avg_over_time(temp[1d])";
    let end = T0 + DAYS * 24 * HOUR;
    let got = s
        .tiered
        .range(&minute, q, end - 24 * HOUR, end, 24 * HOUR)
        .unwrap();
    assert!(!got.tiers.contains(Resolution::Hour));
    let want = s
        .raw
        .range(&ctx(), q, end - 24 * HOUR, end, 24 * HOUR)
        .unwrap();
    same(q, &want.value, &got.value);
}

#[test]
fn off_edge_windows_are_rounded_and_say_so() {
    let s = setup();
    let at = T0 + 24 * HOUR + 30 * MIN;
    let got = s
        .tiered
        .instant(&ctx(), "count_over_time(temp[1h])", at)
        .unwrap();
    assert!(
        got.infos.iter().any(|i| i.contains("rounded")),
        "{:?}",
        got.infos
    );
}

#[test]
fn tiers_that_start_late_leave_older_time_to_raw_samples() {
    // Rollups switched on after two days of raw data: a coarse step prefers hours, whose data
    // starts later; before that the raw samples answer, split on an hour edge.
    let all = Arc::new(MemStorage::new());
    fill(&all, &MemStorage::new(), i64::MAX);
    let copy = MemStorage::new();
    fill(&copy, &MemStorage::new(), i64::MAX);
    let late = T0 + 2 * 24 * HOUR + 10 * MIN;
    let tiers = Windows {
        all: copy,
        coverage: Coverage {
            raw: i64::MIN,
            minute: late,
            hour: late,
            day: late,
        },
    };
    let raw = Engine::new(all.clone(), EngineOptions::default());
    let tiered = Engine::new(all, EngineOptions::default()).with_tiers(Arc::new(tiers));
    let end = T0 + DAYS * 24 * HOUR;
    for f in EXACT {
        let q = f.replace("{r}", "1d");
        let want = raw
            .range(&ctx(), &q, T0 + 24 * HOUR, end, 6 * HOUR)
            .unwrap();
        let got = tiered
            .range(&ctx(), &q, T0 + 24 * HOUR, end, 6 * HOUR)
            .unwrap();
        same(&q, &want.value, &got.value);
        assert_eq!(got.tiers.header_value(), "raw,1h", "{q}");
    }
}
