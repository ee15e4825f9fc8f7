//! Rollup state follows live series: a series gone idle leaves the windows' table, the warm
//! store's table and the warm tier's head at a checkpoint, and whatever comes for it later (a
//! late sample for a final window, new windows, a reopening) still gives every window the
//! figures recomputed from the deduplicated raw data.

use std::path::Path;
use strata_model::{Limits, Matcher, Sample, Tenant, WriteBatch};
use strata_stream::rollup::Rollup;
use strata_stream::stage::{RollupStage, StageOptions, Subscriber, Subscribers};

const GROUPS: Subscriber = Subscriber::new(0);
use strata_stream::window::{WindowOptions, WindowState};
use strata_tsdb::{SeriesLimiter, Tsdb, TsdbOptions};

const MIN: i64 = 60_000;
const QUANTILES: &[f64] = &[0.5, 0.9];

fn options() -> StageOptions {
    StageOptions {
        windows: WindowOptions {
            // Sketches too: their figure series are handles like the others.
            quantile_metrics: vec!["t".into()],
            ..WindowOptions::default()
        },
        quantiles: QUANTILES.to_vec(),
        retention_ms: i64::MAX / 4,
        correction_subscribers: Subscribers::NONE.with(GROUPS),
        block_duration_ms: 7_200_000,
        // The hour tier too: its places follow live series like the warm store's.
        hours: Some(strata_stream::hour::HourOptions::default()),
    }
}

fn open_raw(dir: &Path) -> Tsdb {
    let opts = TsdbOptions {
        retention_ms: i64::MAX / 4,
        ..TsdbOptions::default()
    };
    Tsdb::open(&dir.join("raw"), opts, SeriesLimiter::new(usize::MAX)).unwrap()
}

/// Writes samples of series `t{<label>="<value>"}` to the raw tier, the windows observing, then
/// settles (as replay does: by event time alone).
fn feed(stage: &RollupStage, raw: &Tsdb, offset: u64, label: &str, value: &str, s: &[Sample]) {
    let mut b = WriteBatch::new(Tenant::default_tenant());
    let mut l: Vec<(&[u8], &[u8])> =
        vec![(b"__name__", b"t"), (label.as_bytes(), value.as_bytes())];
    b.push_series(&mut l, s, None, &Limits::default()).unwrap();
    let mut w = stage.observer();
    raw.append_observed(&b, offset, |s, stored, slot| {
        w.observe_at(slot, b.tenant(), s.id, s.key, stored)
    });
    drop(w);
    stage.settle(raw, None, offset).unwrap();
}

/// Each series' final windows by its label value: `(start, count, revision)`.
type Finals = Vec<(String, Vec<(i64, u64, u32)>)>;

/// Every final or corrected window of every series equals the rollup of the raw samples in
/// it; returns the windows by series label value.
fn check(stage: &RollupStage, raw: &Tsdb, from: i64, to: i64) -> Finals {
    let t = Tenant::default_tenant();
    let got = stage
        .read(&t, &[Matcher::equal("__name__", "t")], from, to)
        .unwrap();
    got.into_iter()
        .map(|(labels, windows)| {
            let key = labels.key();
            let name = labels
                .iter()
                .find(|l| l.name != "__name__")
                .map(|l| l.value.to_string())
                .unwrap();
            let mut out = Vec::new();
            for w in windows
                .iter()
                .filter(|w| w.state != WindowState::Provisional)
            {
                // A window holds `(start, end]`.
                let samples = raw
                    .read_series(&t, key.as_ref(), w.start + 1, w.end)
                    .unwrap();
                let want = Rollup::of_sorted(&samples, true)
                    .unwrap()
                    .figures(QUANTILES);
                assert_eq!(w.figures, want, "{name} window {}", w.start);
                out.push((w.start, w.figures.count, w.revision));
            }
            (name, out)
        })
        .collect()
}

#[test]
fn idle_series_leave_and_come_back_with_right_windows() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let stage_dir = dir.path().join("stage");
    let stage = RollupStage::open(&stage_dir, options()).unwrap();
    let base = strata_model::time::now_ms() / MIN * MIN - 600 * MIN;
    // 50 series with three windows each (four samples in each, the last on its end), and a
    // device, then a clock series moves the watermark 20 minutes on: all their windows are
    // final.
    let three = |v: f64| -> Vec<Sample> {
        (0..3)
            .flat_map(|m| {
                (0..4).map(move |k| Sample::new(base + m * MIN + (k + 1) * 15_000, v + k as f64))
            })
            .collect()
    };
    let mut off = 0;
    for i in 0..50 {
        off += 1;
        feed(
            &stage,
            &raw,
            off,
            "host",
            &format!("h{i}"),
            &three(i as f64),
        );
    }
    off += 1;
    feed(&stage, &raw, off, "device", "d1", &three(100.0));
    let clock = |stage: &RollupStage, off: &mut u64, t: i64| {
        *off += 1;
        feed(stage, &raw, *off, "host", "clock", &[Sample::new(t, 0.0)]);
    };
    // The clock's own window 4 (its sample on that window's end) is final: its figure series stay live, renumbered when the
    // others leave, and still written right (checked below).
    clock(&stage, &mut off, base + 5 * MIN);
    clock(&stage, &mut off, base + 20 * MIN);
    // Fourteen figure series each (eleven figures, two quantiles, the sketch's state), made
    // when staged windows are drained.
    stage.store().stage_all();
    let (windows, warm) = stage.live_series();
    assert_eq!(windows, 52);
    assert_eq!(warm, 52 * 14, "figures of every series");

    // The first checkpoint sees samples since the last: nothing leaves. The second does.
    stage.checkpoint(Some(off)).unwrap();
    assert_eq!(stage.live_series().0, 52);
    clock(&stage, &mut off, base + 21 * MIN);
    stage.checkpoint(Some(off)).unwrap();
    let (windows, warm) = stage.live_series();
    assert_eq!(windows, 2, "the clock and the device's shadow");
    assert_eq!(
        warm, 14,
        "the clock's figures only (counts, sums, ..., two quantiles, the sketch's state)"
    );
    assert_eq!(
        stage.device(&Tenant::default_tenant(), "d1").len(),
        1,
        "the shadow stays"
    );
    let all = check(&stage, &raw, base, base + 30 * MIN);
    assert_eq!(all.len(), 52);
    assert!(all
        .iter()
        .filter(|(n, _)| n != "clock")
        .all(|(_, w)| w == &[(base, 4, 0), (base + MIN, 4, 0), (base + 2 * MIN, 4, 0)]));

    // A late sample for a forgotten series' final window is corrected from the raw data; one
    // already there (a redelivery) changes nothing; new windows of a series returning join its
    // old ones.
    off += 1;
    feed(
        &stage,
        &raw,
        off,
        "host",
        "h7",
        &[Sample::new(base + MIN + 1, 50.0)],
    );
    off += 1;
    feed(
        &stage,
        &raw,
        off,
        "host",
        "h8",
        &[Sample::new(base + 30_000, 9.0)],
    );
    off += 1;
    feed(
        &stage,
        &raw,
        off,
        "host",
        "h9",
        &three(1000.0)
            .iter()
            .map(|s| Sample::new(s.timestamp + 22 * MIN, s.value))
            .collect::<Vec<_>>(),
    );
    clock(&stage, &mut off, base + 40 * MIN);
    let corrected: Vec<_> = stage
        .pending_corrected(GROUPS)
        .iter()
        .map(|c| c.start)
        .collect();
    assert_eq!(corrected, vec![base + MIN], "published for group rollups");
    let all = check(&stage, &raw, base, base + 30 * MIN);
    let of = |name: &str| all.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        of("h7"),
        [(base, 4, 0), (base + MIN, 5, 1), (base + 2 * MIN, 4, 0)]
    );
    assert_eq!(
        of("h8")[0],
        (base, 4, 0),
        "a redelivered sample corrects nothing"
    );
    assert_eq!(of("h9").len(), 6);
    assert_eq!(of("h9")[3], (base + 22 * MIN, 4, 0));

    // Forgotten again, and everything survives a reopening.
    for _ in 0..2 {
        clock(&stage, &mut off, base + 41 * MIN);
        stage.checkpoint(Some(off)).unwrap();
    }
    assert_eq!(stage.live_series(), (2, 14));
    let before = check(&stage, &raw, base, base + 60 * MIN);
    drop(stage);
    let stage = RollupStage::open(&stage_dir, options()).unwrap();
    assert_eq!(check(&stage, &raw, base, base + 60 * MIN), before);
    // A second correction of h7's window after the reopening: the next revision.
    off += 1;
    feed(
        &stage,
        &raw,
        off,
        "host",
        "h7",
        &[Sample::new(base + MIN + 2, 51.0)],
    );
    let all = check(&stage, &raw, base, base + 30 * MIN);
    let h7 = &all.iter().find(|(n, _)| n == "h7").unwrap().1;
    assert_eq!(h7[1], (base + MIN, 6, 2));
}

/// Many rounds of new series, each going idle: the tables stay at the live series, however
/// many series were seen.
#[test]
fn churn_keeps_the_tables_at_the_live_series() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let stage = RollupStage::open(&dir.path().join("stage"), options()).unwrap();
    let base = strata_model::time::now_ms() / MIN * MIN - 600 * MIN;
    let mut off = 0;
    for round in 0..10i64 {
        let t = base + round * 10 * MIN;
        for i in 0..30 {
            off += 1;
            let s = [Sample::new(t, i as f64), Sample::new(t + MIN, 1.0)];
            feed(&stage, &raw, off, "host", &format!("r{round}-{i}"), &s);
        }
        stage.checkpoint(Some(off)).unwrap();
        assert!(
            stage.live_series().0 <= 90,
            "round {round}: {:?}",
            stage.live_series()
        );
        assert!(
            stage.live_series().1 <= 90 * 13,
            "round {round}: {:?}",
            stage.live_series()
        );
    }
    let all = check(&stage, &raw, base, base + 200 * MIN);
    assert_eq!(all.len(), 300);
}
