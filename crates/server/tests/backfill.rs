//! `POST /api/v1/admin/backfill` through the real server: ten days of history with a raw
//! retention of two days and a warm retention of five, loaded in one request; the 1-hour and
//! 1-minute tiers then answer what the samples give, a replay changes nothing, and the cold tier
//! holds the raw rows and the hours. Bad input is refused whole with a 4xx naming it.

mod common;

use common::{now_ms, remote_write_body, Server};
use serde_json::Value;
use std::collections::BTreeMap;
use strata_model::{Matcher, Sample, Tenant};
use strata_stream::window::window_of;
use strata_tier::cold::{ColdOptions, ColdStore, Tier};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

const CONFIG: &str = "partitions = 2\nretention = \"2d\"\n\
[rollups]\nretention = \"5d\"\nquantile_metrics = [\"latency_ms\"]\n\
[cold]\ninterval = \"1h\"\n";

/// A series: `(device, metric)`.
type Key = (String, String);

/// Every series' samples.
type History = Vec<(Key, Vec<(i64, f64)>)>;

/// Figures the test computes itself: count, sum, min, max, first, last (with times) and the
/// counter increase across resets.
#[derive(Debug, Clone, PartialEq)]
struct Fig {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: (i64, f64),
    last: (i64, f64),
    increase: f64,
}

fn figures(s: &[(i64, f64)]) -> Fig {
    let mut increase = 0.0;
    for w in s.windows(2) {
        let (a, b) = (w[0].1, w[1].1);
        increase += if b < a { b } else { b - a };
    }
    Fig {
        count: s.len() as u64,
        sum: s.iter().map(|x| x.1).sum(),
        min: s.iter().map(|x| x.1).fold(f64::INFINITY, f64::min),
        max: s.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max),
        first: s[0],
        last: s[s.len() - 1],
        increase,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn same(a: &Fig, b: &Fig) -> bool {
    a.count == b.count
        && close(a.sum, b.sum)
        && a.min == b.min
        && a.max == b.max
        && a.first == b.first
        && a.last == b.last
        && close(a.increase, b.increase)
}

fn fig_of(w: &Value) -> Fig {
    let n = |k: &str| w[k].as_f64().unwrap_or_else(|| panic!("{k} in {w}"));
    let t = |k: &str| w[k].as_i64().unwrap();
    Fig {
        count: w["count"].as_u64().unwrap(),
        sum: n("sum"),
        min: n("min"),
        max: n("max"),
        first: (t("first_timestamp"), n("first")),
        last: (t("last_timestamp"), n("last")),
        increase: n("increase"),
    }
}

/// The history: per series (device and metric), samples every 5 minutes on the clock's
/// 5-minute edges for ten days up to now. Temperatures with decimals, a counter that resets
/// every 31 hours, latencies (the sketched metric).
fn history(end: i64) -> History {
    let step = 5 * MIN;
    let from = (end - 10 * DAY) / step * step;
    let mut out = Vec::new();
    for d in 0..3 {
        let device = format!("d{d}");
        let ts: Vec<i64> = (0..)
            .map(|i| from + i * step)
            .take_while(|&t| t <= end)
            .collect();
        let temp = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, 20.0 + ((i * 7 + d * 3) % 50) as f64 / 10.0))
            .collect();
        let mut c = 0.0;
        let energy = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                c = if i % 372 == 0 {
                    1.5
                } else {
                    c + 0.25 * ((i % 5) as f64)
                };
                (t, c)
            })
            .collect();
        let lat = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, 1.0 + ((i * 13 + d) % 97) as f64))
            .collect();
        out.push(((device.clone(), "temperature_celsius".into()), temp));
        out.push(((device.clone(), "energy_wh_total".into()), energy));
        out.push(((device, "latency_ms".into()), lat));
    }
    out
}

fn body_of(h: &[(Key, Vec<(i64, f64)>)]) -> Vec<u8> {
    let rows: Vec<common::SeriesRows<'_>> = h
        .iter()
        .map(|((d, m), s)| {
            (
                vec![
                    ("__name__", m.as_str()),
                    ("device", d.as_str()),
                    ("site", "s1"),
                ],
                s.clone(),
            )
        })
        .collect();
    remote_write_body(&rows)
}

fn backfill(s: &Server, body: Vec<u8>) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/api/v1/admin/backfill"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

/// `(device, metric) -> start -> (figures, revision, p99)` of one tier over `[from, to]`.
type TierFigures = BTreeMap<Key, BTreeMap<i64, (Fig, u64, Option<f64>)>>;

fn tier(s: &Server, tier: &str, from: i64, to: i64) -> TierFigures {
    let v = s.get_json(&format!(
        "/api/v1/rollups?match[]={{site=\"s1\"}}&tier={tier}&start={}&end={}",
        from as f64 / 1000.0,
        to as f64 / 1000.0
    ));
    let mut out = TierFigures::new();
    for series in v["data"].as_array().unwrap() {
        let m = &series["metric"];
        let key = (
            m["device"].as_str().unwrap().to_owned(),
            m["__name__"].as_str().unwrap().to_owned(),
        );
        let ws = out.entry(key).or_default();
        for w in series["windows"].as_array().unwrap() {
            ws.insert(
                w["start"].as_i64().unwrap(),
                (
                    fig_of(w),
                    w["revision"].as_u64().unwrap(),
                    w["p99"].as_f64(),
                ),
            );
        }
    }
    out
}

/// The expected buckets of `width` of every series, from the samples.
fn expected(
    h: &[(Key, Vec<(i64, f64)>)],
    width: i64,
) -> BTreeMap<Key, BTreeMap<i64, Vec<(i64, f64)>>> {
    let mut out: BTreeMap<_, BTreeMap<i64, Vec<(i64, f64)>>> = BTreeMap::new();
    for (k, s) in h {
        let b = out.entry(k.clone()).or_default();
        for &(t, v) in s {
            b.entry(window_of(t, width)).or_default().push((t, v));
        }
    }
    out
}

#[test]
fn ten_days_backfilled_answer_from_every_tier_and_a_replay_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let now = now_ms();
    let h = history(now);
    let total: usize = h.iter().map(|x| x.1.len()).sum();
    // Hours up to the one holding the raw tier's oldest time are backfilled; later ones
    // go through the ordinary write path.
    let raw_hour = window_of(now - 2 * DAY, HOUR);
    let old = |t: i64| window_of(t, HOUR) <= raw_hour;
    let backfilled: usize = h.iter().flat_map(|x| &x.1).filter(|x| old(x.0)).count();
    let (status, first) = backfill(&s, body_of(&h));
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["samples"], total);
    assert_eq!(first["hours"], backfilled);
    assert_eq!(first["cold_raw"], backfilled);
    assert_eq!(first["raw"], total - backfilled);
    assert_eq!(first["refused"]["too_old"], 0);
    assert!(first["windows"].as_u64().unwrap() > 0);
    assert!(first["windows"].as_u64().unwrap() < backfilled as u64);
    assert!(first["hours_written"].as_u64().unwrap() > 0);
    // The hours reached the cold tier before the answer.
    assert!(
        common::metric(&s.metrics(), "strata_cold_hours_archived_total")
            >= first["hours_written"].as_f64().unwrap()
    );
    s.flush();

    // Every final hour of the ten days, backfilled or live, as the samples give it: no gap
    // at the boundary.
    let hours = tier(&s, "1h", now - 11 * DAY, now);
    let want_hours = expected(&h, HOUR);
    let final_before = (now - 5 * MIN).div_euclid(HOUR) * HOUR;
    assert_eq!(hours.len(), 9);
    let mut checked = 0;
    for (k, want) in &want_hours {
        let got = &hours[k];
        for (start, samples) in want.iter().filter(|(s, _)| **s < final_before) {
            let (fig, _, p99) = got
                .get(start)
                .unwrap_or_else(|| panic!("{k:?}: no hour at {start}"));
            assert!(
                same(fig, &figures(samples)),
                "{k:?} hour {start}: {fig:?} vs {samples:?}"
            );
            assert_eq!(
                p99.is_some(),
                k.1 == "latency_ms",
                "{k:?}: a sketch where configured"
            );
            if let Some(p) = p99 {
                let raw: Vec<Sample> = samples.iter().map(|&(t, v)| Sample::new(t, v)).collect();
                let r = strata_stream::rollup::Rollup::of_sorted(&raw, true).unwrap();
                assert_eq!(
                    r.figures(&[0.99]).quantiles[0].1,
                    *p,
                    "{k:?} hour {start} p99"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 9 * 230, "{checked} hours checked");

    // The windows the warm tier keeps (its retention: five days), as the samples give them.
    let from = now - 5 * DAY + 10 * MIN;
    let to = now - 10 * MIN;
    let minutes = tier(&s, "1m", from, to);
    let want_minutes = expected(&h, MIN);
    for (k, want) in &want_minutes {
        let got = &minutes[k];
        for (start, samples) in want.range(from..to) {
            let (fig, _, _) = got
                .get(start)
                .unwrap_or_else(|| panic!("{k:?}: no window at {start}"));
            assert!(same(fig, &figures(samples)), "{k:?} window {start}");
        }
        assert_eq!(
            got.range(from..to).count(),
            want.range(from..to).count(),
            "{k:?}"
        );
    }
    let older = tier(&s, "1m", now - 10 * DAY, now - 5 * DAY - 2 * MIN);
    assert!(
        older.is_empty(),
        "windows past the warm tier's retention: {older:?}"
    );

    // The same request again: nothing written, every figure and revision as it was.
    let (status, second) = backfill(&s, body_of(&h));
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["windows_written"], 0);
    assert_eq!(second["hours_written"], 0);
    assert_eq!(second["windows_unchanged"], first["windows_written"]);
    assert_eq!(second["hours_unchanged"], first["hours_written"]);
    s.flush();
    assert_eq!(tier(&s, "1h", now - 11 * DAY, now), hours);
    assert_eq!(tier(&s, "1m", from, to), minutes);

    // PromQL over the ten days: the raw tier for the last two, minutes for the three before,
    // hours before that, merged with no gap and nothing counted twice.
    let temps = &h
        .iter()
        .find(|x| x.0 == ("d0".to_owned(), "temperature_celsius".to_owned()))
        .unwrap()
        .1;
    let t = final_before;
    let inside: Vec<f64> = temps
        .iter()
        .filter(|x| x.0 > t - 9 * DAY && x.0 <= t)
        .map(|x| x.1)
        .collect();
    for (f, want) in [
        ("count_over_time", inside.len() as f64),
        ("sum_over_time", inside.iter().sum::<f64>()),
        (
            "max_over_time",
            inside.iter().copied().fold(f64::MIN, f64::max),
        ),
    ] {
        let q = format!("{f}(temperature_celsius{{device=\"d0\"}}[9d])");
        let r = s
            .client
            .get(s.url("/api/v1/query"))
            .query(&[("query", q.as_str()), ("time", &(t / 1000).to_string())])
            .send()
            .unwrap();
        assert_eq!(r.headers()["strata-tiers"], "raw,1m,1h", "{q}");
        let v: Value = r.json().unwrap();
        let got: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(close(got, want), "{q}: {got} vs {want}");
    }
    // Every hour of the ten days at an hourly step: whole hours, so the hours answer.
    let r = s
        .client
        .get(s.url("/api/v1/query_range"))
        .query(&[
            (
                "query",
                "sum_over_time(temperature_celsius{device=\"d0\"}[1h])",
            ),
            ("start", &((t - 9 * DAY) / 1000).to_string()),
            ("end", &(t / 1000).to_string()),
            ("step", "3600"),
            ("nocache", "1"),
        ])
        .send()
        .unwrap();
    let tiers = r.headers()["strata-tiers"].to_str().unwrap().to_owned();
    assert_eq!(tiers, "1h");
    let v: Value = r.json().unwrap();
    let points = v["data"]["result"][0]["values"].as_array().unwrap();
    let by_hour = &want_hours[&("d0".to_owned(), "temperature_celsius".to_owned())];
    assert_eq!(points.len() as i64, 9 * 24 + 1);
    for p in points {
        let end = (p[0].as_f64().unwrap() * 1000.0) as i64;
        let got: f64 = p[1].as_str().unwrap().parse().unwrap();
        let want: f64 = by_hour[&(end - HOUR)].iter().map(|x| x.1).sum();
        assert!(close(got, want), "hour ending {end}: {got} vs {want}");
    }
    // Every day at a daily step: whole days, so the 1-day tier answers, the day holding the
    // raw tier's oldest time merged from backfilled and live hours.
    let last_day = t.div_euclid(DAY) * DAY;
    let daily = |cap: &str| {
        s.client
            .get(s.url("/api/v1/query_range"))
            .query(&[
                (
                    "query",
                    "sum_over_time(temperature_celsius{device=\"d0\"}[1d])",
                ),
                ("start", &((last_day - 8 * DAY) / 1000).to_string()),
                ("end", &(last_day / 1000).to_string()),
                ("step", "86400"),
                ("nocache", "1"),
                ("max_source_resolution", cap),
            ])
            .send()
            .unwrap()
    };
    let r = daily("");
    assert_eq!(r.headers()["strata-tiers"], "1d");
    let v: Value = r.json().unwrap();
    let points = v["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(points.len(), 9);
    let temps_by_day = &expected(&h, DAY)[&("d0".to_owned(), "temperature_celsius".to_owned())];
    for p in points {
        let end = (p[0].as_f64().unwrap() * 1000.0) as i64;
        let got: f64 = p[1].as_str().unwrap().parse().unwrap();
        let want: f64 = temps_by_day[&(end - DAY)].iter().map(|x| x.1).sum();
        assert!(close(got, want), "day ending {end}: {got} vs {want}");
    }
    // Capped at hours, the same answer from the 1-hour tier.
    let capped = daily("1h");
    assert_eq!(capped.headers()["strata-tiers"], "1h");
    let w: Value = capped.json().unwrap();
    let hourly = w["data"]["result"][0]["values"].as_array().unwrap();
    for (a, b) in points.iter().zip(hourly) {
        let (x, y): (f64, f64) = (
            a[1].as_str().unwrap().parse().unwrap(),
            b[1].as_str().unwrap().parse().unwrap(),
        );
        assert_eq!(a[0], b[0]);
        assert!(close(x, y), "{x} vs {y}");
    }

    // One hour's samples changed: that hour is replaced at revision 1, its neighbours stay.
    let target = raw_hour - 24 * HOUR;
    let mut changed = h.clone();
    for x in changed[0]
        .1
        .iter_mut()
        .filter(|x| window_of(x.0, HOUR) == target)
    {
        x.1 += 100.0;
    }
    let one: Vec<_> = changed[..1]
        .iter()
        .map(|(k, v)| {
            let hour: Vec<(i64, f64)> = v
                .iter()
                .copied()
                .filter(|x| window_of(x.0, HOUR) == target)
                .collect();
            (k.clone(), hour)
        })
        .collect();
    let (status, third) = backfill(&s, body_of(&one));
    assert_eq!(status, 200, "{third}");
    assert_eq!(third["hours_written"], 1);
    s.flush();
    let after = tier(&s, "1h", now - 11 * DAY, now);
    let k = &changed[0].0;
    let (fig, revision, _) = &after[k][&target];
    assert_eq!(*revision, 1);
    assert!(same(
        fig,
        &figures(&expected(&changed[..1], HOUR)[k][&target])
    ));
    assert_eq!(after[k][&(target - HOUR)], hours[k][&(target - HOUR)]);
    let m = s.metrics();
    let line = |l: &str| {
        m.lines()
            .find_map(|x| x.strip_prefix(l).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {l}"))
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        line("strata_backfill_requests_total{outcome=\"completed\"}"),
        3
    );
    let third_hours = third["hours"].as_u64().unwrap();
    assert_eq!(
        line("strata_backfill_samples_total{to=\"hours\"}"),
        2 * backfilled as u64 + third_hours
    );
    s.stop();

    // The cold tier: every backfilled raw sample, and the hours.
    let cold = ColdStore::open(
        dir.path().join("data/cold").to_str().unwrap(),
        ColdOptions::default(),
    )
    .unwrap();
    let t = Tenant::default_tenant();
    let raw = cold
        .scan_raw(&t, &[Matcher::equal("site", "s1")], 0, now)
        .unwrap();
    let mut cold_samples = 0;
    for series in &raw {
        let key = (
            series.labels.get("device").unwrap().to_owned(),
            series.labels.get("__name__").unwrap().to_owned(),
        );
        let src = if key == *k {
            &changed[0].1
        } else {
            &h.iter().find(|x| x.0 == key).unwrap().1
        };
        let want: Vec<(i64, f64)> = src.iter().copied().filter(|x| old(x.0)).collect();
        let got: Vec<(i64, f64)> = series
            .samples
            .iter()
            .map(|x| (x.timestamp, x.value))
            .collect();
        assert_eq!(got, want, "{key:?}: cold raw rows");
        cold_samples += got.len();
    }
    assert_eq!(cold_samples, backfilled);
    let cold_hours = cold
        .scan_windows(&t, Tier::Hour, &[Matcher::equal("site", "s1")], 0, now)
        .unwrap();
    assert_eq!(cold_hours.len(), 9);
    for series in &cold_hours {
        let key = (
            series.labels.get("device").unwrap().to_owned(),
            series.labels.get("__name__").unwrap().to_owned(),
        );
        let served = &after[&key];
        let backfilled_hours = series.windows.iter().filter(|w| w.start <= raw_hour);
        let mut n = 0;
        for w in backfilled_hours {
            let (fig, revision, _) = &served[&w.start];
            assert_eq!(
                (w.count, w.revision),
                (fig.count, *revision),
                "{key:?} {}",
                w.start
            );
            assert!(
                close(w.sum, fig.sum) && w.max == fig.max,
                "{key:?} {}",
                w.start
            );
            n += 1;
        }
        let want = want_hours[&key].keys().filter(|&&s| s <= raw_hour).count();
        assert_eq!(n, want, "{key:?}: every backfilled hour in the cold tier");
    }
}

#[test]
fn bad_backfills_are_refused_whole_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "partitions = 1\nretention = \"2d\"\n[limits]\nmax_body_bytes = 65536\n\
         [rollups]\nhour_retention = \"30d\"\n[cold]\ninterval = \"1h\"\n",
    );
    let post = |ctype: &str, query: &str, body: Vec<u8>| {
        let r = s
            .client
            .post(s.url(&format!("/api/v1/admin/backfill{query}")))
            .header("Content-Type", ctype)
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    };
    let old_s = (now_ms() - 5 * DAY) / 1000;
    // Not protobuf.
    let (st, msg) = post(
        "application/x-protobuf",
        "",
        b"not a write request".to_vec(),
    );
    assert_eq!(st, 400, "{msg}");
    // A syntax error among valid lines: nothing stored.
    let lp = format!("bad_line_metric,device=d1 value=1 {old_s}\nthis is not line protocol\n");
    let (st, msg) = post("text/plain", "?precision=s", lp.into_bytes());
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("nothing stored") && msg.contains("line 2"),
        "{msg}"
    );
    // A sample in the future.
    let future = (now_ms() + DAY) / 1000;
    let lp = format!(
        "future_metric,device=d1 value=1 {old_s}\nfuture_metric,device=d1 value=2 {future}\n"
    );
    let (st, msg) = post("text/plain", "?precision=s", lp.into_bytes());
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("future"), "{msg}");
    // Over the body limit (the writes' limit).
    let big = "x".repeat(70_000).into_bytes();
    let (st, msg) = post("text/plain", "", big);
    assert_eq!(st, 413, "{msg}");
    assert!(msg.contains("limits.max_body_bytes"), "{msg}");
    // Neither protocol; a bad precision.
    let (st, msg) = post("application/json", "", b"{}".to_vec());
    assert_eq!(st, 415, "{msg}");
    let (st, msg) = post("text/plain", "?precision=hours", b"m value=1".to_vec());
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("precision"), "{msg}");
    s.flush();
    let v = s.get_json(&format!(
        "/api/v1/rollups?match[]={{__name__=~\"bad_line_metric|future_metric\"}}&tier=1h&start={}&end={}",
        (now_ms() - 10 * DAY) / 1000,
        now_ms() / 1000
    ));
    assert_eq!(
        v["data"],
        serde_json::json!([]),
        "nothing of a refused body stored"
    );
    // The valid line alone is stored: the query above would have found it.
    let lp = format!("bad_line_metric,device=d1 value=1 {old_s}\n");
    let (st, msg) = post("text/plain", "?precision=s", lp.into_bytes());
    assert_eq!(st, 200, "{msg}");
    s.flush();
    let v = s.get_json(&format!(
        "/api/v1/rollups?match[]={{__name__=~\"bad_line_metric|future_metric\"}}&tier=1h&start={}&end={}",
        (now_ms() - 10 * DAY) / 1000,
        now_ms() / 1000
    ));
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    // Older than the 1-hour tier keeps: refused and named, the rest stored.
    let ancient = (now_ms() - 40 * DAY) / 1000;
    let lp =
        format!("kept_metric,device=d1 value=1 {old_s}\nkept_metric,device=d1 value=2 {ancient}\n");
    let (st, msg) = post("text/plain", "?precision=s", lp.into_bytes());
    assert_eq!(st, 200, "{msg}");
    let v: Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(
        (v["hours"].as_u64(), v["refused"]["too_old"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("rollups.hour_retention"),
        "{v}"
    );
    let m = s.metrics();
    assert!(
        m.contains("strata_backfill_requests_total{outcome=\"failed\"} 6\n"),
        "{m}"
    );
    assert!(
        m.contains("strata_backfill_samples_total{to=\"refused_too_old\"} 1\n"),
        "{m}"
    );
    s.stop();
}

/// `strata backfill` sends a line-protocol file, its lines in any order, as requests of whole
/// series-days: the hours equal those of the samples however the file was cut.
#[test]
fn the_cli_sends_a_file_in_whole_series_hours() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "partitions = 2\nretention = \"2d\"\n[cold]\ninterval = \"1h\"\n",
    );
    let h0 = (now_ms() - 20 * DAY).div_euclid(HOUR) * HOUR;
    let mut want: BTreeMap<(String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    let mut lines = Vec::new();
    // Time-major, as exports often are: every series at each step.
    for i in 0..30 * 12 {
        for d in 0..2 {
            let (t, v) = (h0 + (i + 1) * 5 * MIN, ((i * 3 + d * 7) % 41) as f64 / 4.0);
            lines.push(format!(
                "cli_metric,device=c{d},site=s1 value={v} {}",
                t / 1000
            ));
            want.entry((format!("c{d}"), window_of(t, HOUR)))
                .or_default()
                .push((t, v));
        }
    }
    let file = dir.path().join("history.lp");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "backfill",
            "--url",
            &s.base,
            "--precision",
            "s",
            "--request-bytes",
            "800",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("hours={}", lines.len())),
        "{stdout}"
    );
    let requests: u64 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(requests >= 4, "cut into series-days: {stdout}");
    s.flush();
    let got = tier(&s, "1h", h0, h0 + 30 * HOUR - 1);
    let mut n = 0;
    for ((d, start), samples) in &want {
        let (fig, revision, _) = &got[&(d.clone(), "cli_metric".to_owned())][start];
        assert!(same(fig, &figures(samples)), "{d} {start}");
        assert_eq!(*revision, 0);
        n += 1;
    }
    assert_eq!(n, 60);
}

/// An answered backfill is durable: after a SIGKILL right after the answer, the restarted
/// server holds its windows and hours, and the hours still reach the cold tier.
#[test]
fn an_answered_backfill_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "partitions = 2\nretention = \"2d\"\n[cold]\ninterval = \"1h\"\n";
    let s = Server::start(dir.path(), cfg);
    let now = now_ms();
    // Only history older than the raw tier keeps: nothing of it is in the ingest log.
    let h: History = history(now)
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().filter(|x| x.0 < now - 3 * DAY).collect()))
        .collect();
    let (status, answer) = backfill(&s, body_of(&h));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["raw"], 0);
    s.kill9();
    let s = Server::start(dir.path(), cfg);
    s.flush();
    let want = expected(&h, HOUR);
    let hours = tier(&s, "1h", now - 11 * DAY, now);
    let minutes = tier(&s, "1m", now - 11 * DAY, now);
    for (k, want) in &want {
        assert_eq!(hours[k].len(), want.len(), "{k:?}: every hour");
        for (start, samples) in want {
            assert!(same(&hours[k][start].0, &figures(samples)), "{k:?} {start}");
        }
        let in_minutes: usize = minutes[k].values().map(|w| w.0.count as usize).sum();
        assert_eq!(in_minutes, h.iter().find(|x| &x.0 == k).unwrap().1.len());
    }
    s.stop();
    let cold = ColdStore::open(
        dir.path().join("data/cold").to_str().unwrap(),
        ColdOptions::default(),
    )
    .unwrap();
    let t = Tenant::default_tenant();
    let cold_hours = cold
        .scan_windows(&t, Tier::Hour, &[Matcher::equal("site", "s1")], 0, now)
        .unwrap();
    let n: usize = cold_hours.iter().map(|s| s.windows.len()).sum();
    assert_eq!(
        n,
        want.values().map(|w| w.len()).sum::<usize>(),
        "every hour archived after the restart"
    );
    let raw: usize = cold
        .scan_raw(&t, &[Matcher::equal("site", "s1")], 0, now)
        .unwrap()
        .iter()
        .map(|s| s.samples.len())
        .sum();
    assert_eq!(raw, h.iter().map(|x| x.1.len()).sum::<usize>());
}
