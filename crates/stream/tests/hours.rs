//! The 1-hour tier through the rollup stage: an hour is provisional (its final windows and
//! those still open) until its last window is final, then final with the figures of its raw samples; a late event corrects the window and
//! the hour (revision + 1); a restart (with a crash at any step of the checkpoint) keeps every
//! hour equal to the one computed from its raw samples; final hours reach the next stage's queue.
//! The 1-day tier above the hours likewise.

use std::path::Path;
use strata_model::{Labels, Limits, Matcher, Sample, Tenant, WriteBatch};
use strata_stream::hour::{hour_start, HourOptions, HOUR_MS};
use strata_stream::rollup::Rollup;
use strata_stream::stage::{RollupStage, StageOptions, Tier, WindowView};
use strata_stream::window::{WindowOptions, WindowState};
use strata_tsdb::{SeriesLimiter, Tsdb, TsdbOptions};

const MIN: i64 = 60_000;
const QUANTILES: &[f64] = &[0.5, 0.99];

fn options() -> StageOptions {
    StageOptions {
        windows: WindowOptions {
            quantile_metrics: vec!["t".into()],
            ..WindowOptions::default()
        },
        quantiles: QUANTILES.to_vec(),
        retention_ms: i64::MAX / 4,
        correction_subscribers: strata_stream::stage::Subscribers::NONE,
        block_duration_ms: 7_200_000,
        hours: Some(HourOptions {
            publish_final: true,
            ..HourOptions::default()
        }),
    }
}

fn open_raw(dir: &Path) -> Tsdb {
    let opts = TsdbOptions {
        retention_ms: i64::MAX / 4,
        ..TsdbOptions::default()
    };
    Tsdb::open(&dir.join("raw"), opts, SeriesLimiter::new(usize::MAX)).unwrap()
}

/// One log record: samples of `t{device="<device>"}`.
struct Record {
    device: &'static str,
    samples: Vec<Sample>,
}

fn batch(r: &Record) -> WriteBatch {
    let mut b = WriteBatch::new(Tenant::default_tenant());
    let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"t"), (b"device", r.device.as_bytes())];
    b.push_series(&mut l, &r.samples, None, &Limits::default())
        .unwrap();
    b
}

/// Applies a record as the shard does: to the raw tier, the windows observing, then settles
/// (by event time alone, as replay does).
fn apply(stage: &RollupStage, raw: &Tsdb, offset: u64, r: &Record) {
    let b = batch(r);
    let mut w = stage.observer();
    raw.append_observed(&b, offset, |s, stored, slot| {
        w.observe_at(slot, b.tenant(), s.id, s.key, stored)
    });
    drop(w);
    stage.settle(raw, None, offset).unwrap();
}

/// Replays a record the raw tier holds already (past the windows' checkpoint only), as the
/// shard's replay does.
fn replay(stage: &RollupStage, raw: &Tsdb, offset: u64, r: &Record) {
    let b = batch(r);
    let mut w = stage.observer();
    for s in b.iter() {
        w.observe(b.tenant(), s.id, s.key, s.samples);
    }
    drop(w);
    stage.settle(raw, None, offset).unwrap();
}

/// A base hour some hours back, inside every retention.
fn base() -> i64 {
    hour_start(strata_model::time::now_ms()) - 5 * HOUR_MS
}

/// An hour of `d1` at 15 s, one record per minute: decimal readings that climb and reset (to
/// exercise exact sums and the counter increase inside and between minutes). Windows are
/// left-open, so the hour keyed `h` holds `(h, h + 1h]`: its minute `m` holds the readings at
/// `:15`, `:30`, `:45` and the one on the next minute's edge, its last one at `h + 1h`.
fn hour_of_d1(h: i64) -> Vec<Record> {
    (0..60)
        .map(|m| Record {
            device: "d1",
            samples: (0..4)
                .map(|k| {
                    let i = m * 4 + k;
                    // Resets at minute 20's third sample and at minute 41's first.
                    let v = if i >= 164 {
                        (i - 164) as f64 * 0.3
                    } else if i >= 82 {
                        (i - 82) as f64 * 0.7 + 0.1
                    } else {
                        i as f64 * 1.1 + 5.0
                    };
                    Sample::new(h + (i + 1) * 15_000, v)
                })
                .collect(),
        })
        .collect()
}

/// A record of the clock series, moving the watermark to `t`.
fn clock(t: i64) -> Record {
    Record {
        device: "clock",
        samples: vec![Sample::new(t, 0.0)],
    }
}

/// A clock time that makes every window starting before `closed` final (out-of-orderness
/// 10 s, lateness 2 m: the horizon passes the end of the window keyed just before `closed`)
/// and no later one.
fn closing(closed: i64) -> i64 {
    closed + 130_001
}

/// d1's hours overlapping `[from, to]`.
fn hours_of_d1(stage: &RollupStage, from: i64, to: i64) -> Vec<WindowView> {
    let mut got = stage
        .read_hours(
            Tier::Hour,
            &Tenant::default_tenant(),
            &[Matcher::equal("device", "d1")],
            from,
            to,
        )
        .unwrap();
    assert!(got.len() <= 1);
    got.pop().map(|(_, ws)| ws).unwrap_or_default()
}

/// d1's hour keyed `h` (holding `(h, h + 1h]`), as a read of that span finds it.
fn hour_of(stage: &RollupStage, h: i64) -> Vec<WindowView> {
    let got = hours_of_d1(stage, h + 1, h + HOUR_MS);
    assert!(got.iter().all(|w| w.start == h), "only the hour {h}");
    got
}

/// The figures of d1's hour at `h` computed from its raw samples in `(h, h + 1h]`.
fn raw_hour(raw: &Tsdb, h: i64) -> strata_stream::rollup::Figures {
    let key = Labels::from_pairs([("__name__", "t"), ("device", "d1")])
        .unwrap()
        .key();
    let samples = raw
        .read_series(&Tenant::default_tenant(), key.as_ref(), h + 1, h + HOUR_MS)
        .unwrap();
    Rollup::of_sorted(&samples, true)
        .unwrap()
        .figures(QUANTILES)
}

#[test]
fn an_hour_is_final_after_its_last_minute_with_the_figures_of_its_raw_samples() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let stage = RollupStage::open(&dir.path().join("stage"), options()).unwrap();
    let h = base();
    let mut off = 0;
    for r in hour_of_d1(h) {
        off += 1;
        apply(&stage, &raw, off, &r);
    }
    // Every window but the hour's last is final.
    off += 1;
    apply(&stage, &raw, off, &clock(closing(h + HOUR_MS) - 1));
    let open = hour_of(&stage, h);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, WindowState::Provisional);
    // 59 final minutes and the open one: already the figures of all the hour's samples.
    assert_eq!(open[0].figures, raw_hour(&raw, h));
    assert!(stage.hours().unwrap().pending_final().is_empty());
    // The last one too: the hour is final, equal to the rollup of its raw samples.
    off += 1;
    apply(&stage, &raw, off, &clock(closing(h + HOUR_MS)));
    let fin = hour_of(&stage, h);
    assert_eq!(fin.len(), 1);
    assert_eq!((fin[0].start, fin[0].end), (h, h + HOUR_MS));
    assert_eq!((fin[0].state, fin[0].revision), (WindowState::Final, 0));
    let want = raw_hour(&raw, h);
    assert_eq!(fin[0].figures, want);
    assert_eq!(want.count, 240);
    // Two resets: the increase is what PromQL's increase over the raw samples sees.
    assert!(want.increase > 0.0 && want.increase < want.max * 3.0);
    assert_eq!(
        want.quantiles.len(),
        2,
        "the hour's quantiles, from merged sketches"
    );
    // The next stage's hook: the hour is queued, readable, and leaves once taken.
    let hours = stage.hours().unwrap();
    assert_eq!(hours.final_before(), h + HOUR_MS);
    let queued = hours.pending_final();
    let d1: Vec<_> = queued
        .iter()
        .filter(|k| k.key.as_ref().get(b"device") == Some(&b"d1"[..]))
        .collect();
    assert_eq!(d1.len(), 1);
    let windows = hours.final_windows(&queued, QUANTILES).unwrap();
    let w = windows.iter().find(|(k, _, _)| k == d1[0]).unwrap();
    assert_eq!(w.2.figures, want);
    assert_eq!(w.1.get("device"), Some("d1"));
    let through_stage = stage.pending_final_hours().unwrap();
    assert_eq!(through_stage.len(), windows.len());
    assert!(through_stage
        .iter()
        .any(|(k, _, w)| k == d1[0] && w.figures == want));
    hours.done_final(&queued);
    assert!(hours.pending_final().is_empty());
    assert!(stage.pending_final_hours().unwrap().is_empty());
}

#[test]
fn a_late_event_corrects_its_minute_and_its_hour() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let stage = RollupStage::open(&dir.path().join("stage"), options()).unwrap();
    let h = base();
    let mut off = 0;
    for r in hour_of_d1(h) {
        off += 1;
        apply(&stage, &raw, off, &r);
    }
    off += 1;
    apply(&stage, &raw, off, &clock(closing(h + HOUR_MS) + 5 * MIN));
    let before = hour_of(&stage, h);
    assert_eq!(before[0].revision, 0);
    // A consumer reads the final hour (its mark), and a correction lands before it is done.
    let taken = stage.hours().unwrap().pending_final_marked();
    assert_eq!(taken.len(), 1);
    // A late sample in minute 10 (a new timestamp, a high value): minute and hour corrected.
    let late = Record {
        device: "d1",
        samples: vec![Sample::new(h + 10 * MIN + 7_000, 1e4)],
    };
    off += 1;
    apply(&stage, &raw, off, &late);
    let minute = stage
        .read(
            &Tenant::default_tenant(),
            &[Matcher::equal("device", "d1")],
            h + 10 * MIN + 1,
            h + 11 * MIN,
        )
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let minute = minute.iter().find(|w| w.start == h + 10 * MIN).unwrap();
    assert_eq!((minute.revision, minute.figures.count), (1, 5));
    let after = hour_of(&stage, h);
    assert_eq!(
        (after[0].state, after[0].revision),
        (WindowState::Corrected, 1)
    );
    let want = raw_hour(&raw, h);
    assert_eq!(after[0].figures, want);
    assert_eq!((want.count, want.max), (241, 1e4));
    assert_eq!(
        stage.hours().unwrap().pending_final().len(),
        1,
        "the corrected hour goes to the next stage again"
    );
    // Taking what was read before the correction leaves the corrected hour queued.
    let hours = stage.hours().unwrap();
    hours.done_final_marked(&taken);
    let again = hours.pending_final_marked();
    assert_eq!(again.len(), 1, "revision 1 is still to be taken");
    assert!(again[0].1 > taken[0].1);
    let read = hours
        .final_windows(&[again[0].0.clone()], QUANTILES)
        .unwrap();
    assert_eq!(read[0].2.revision, 1);
    hours.done_final_marked(&again);
    assert!(hours.pending_final().is_empty());
    // The same sample again changes nothing.
    off += 1;
    apply(&stage, &raw, off, &late);
    assert_eq!(hour_of(&stage, h), after);
    // A correction still open: a late sample for a final minute of the next, open hour.
    let next = h + HOUR_MS;
    let in_next = Record {
        device: "d1",
        samples: vec![Sample::new(next + 30_000, 2.5)],
    };
    off += 1;
    apply(&stage, &raw, off, &in_next);
    let open = hour_of(&stage, next);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, WindowState::Provisional);
    assert_eq!(open[0].figures.count, 1);
    off += 1;
    apply(&stage, &raw, off, &clock(closing(next + HOUR_MS)));
    let fin = hour_of(&stage, next);
    assert_eq!(
        (fin[0].state, fin[0].figures.clone()),
        (WindowState::Final, raw_hour(&raw, next))
    );
}

/// A meter reporting exactly on :00 and :05 puts a sample on every fifth minute's edge and on
/// every hour's: each hour keyed `h` merged from its minutes holds the samples in
/// `(h, h + 1h]` (:05 to the next :00), equal to the hour computed from those raw samples, and
/// the sample on `h` is in the hour before.
#[test]
fn an_hour_of_samples_on_the_edges_equals_its_raw_samples() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let stage = RollupStage::open(&dir.path().join("stage"), options()).unwrap();
    let h = base();
    let mut off = 0;
    for k in 0..=36 {
        off += 1;
        let v = (k * 7 % 11) as f64 * 0.1 + k as f64;
        let r = Record {
            device: "d1",
            samples: vec![Sample::new(h + k * 5 * MIN, v)],
        };
        apply(&stage, &raw, off, &r);
    }
    off += 1;
    apply(&stage, &raw, off, &clock(closing(h + 3 * HOUR_MS)));
    let hours = hours_of_d1(&stage, h - HOUR_MS + 1, h + 3 * HOUR_MS);
    let starts: Vec<i64> = hours.iter().map(|w| w.start).collect();
    assert_eq!(starts, [-1, 0, 1, 2].map(|i| h + i * HOUR_MS));
    assert!(hours.iter().all(|w| w.state == WindowState::Final));
    // The sample on `h` closes the hour before it.
    assert_eq!(hours[0].figures.count, 1);
    assert_eq!(hours[0].figures.last.timestamp, h);
    for w in &hours[1..] {
        assert_eq!(w.figures, raw_hour(&raw, w.start));
        assert_eq!(w.figures.count, 12);
        assert_eq!(w.figures.first.timestamp, w.start + 5 * MIN);
        assert_eq!(w.figures.last.timestamp, w.end);
    }
    // The minute ending on :05 holds the :05 sample.
    let minutes = stage
        .read(
            &Tenant::default_tenant(),
            &[Matcher::equal("device", "d1")],
            h + 5 * MIN,
            h + 5 * MIN,
        )
        .unwrap()
        .pop()
        .unwrap()
        .1;
    assert_eq!(minutes.len(), 1);
    assert_eq!(
        (minutes[0].start, minutes[0].end),
        (h + 4 * MIN, h + 5 * MIN)
    );
    assert_eq!(minutes[0].figures.count, 1);
}

/// How a run is interrupted before the restart.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// Nothing saved since the checkpoint.
    AfterCheckpoint,
    /// The warm store and the hour tier saved (store and open hours), the window checkpoint
    /// not.
    BetweenHoursAndWindows,
}

#[test]
fn a_restart_keeps_every_hour_equal_to_its_raw_samples() {
    for crash in [Crash::AfterCheckpoint, Crash::BetweenHoursAndWindows] {
        let dir = tempfile::tempdir().unwrap();
        let raw = open_raw(dir.path());
        let stage_dir = dir.path().join("stage");
        let h = base();
        let mut records = hour_of_d1(h);
        // Past the hour's end while its last minutes are open, then on to close it, with a
        // correction of minute 3 among them.
        records.extend(hour_of_d1(h + HOUR_MS).into_iter().take(5));
        records.insert(
            62,
            Record {
                device: "d1",
                samples: vec![Sample::new(h + 3 * MIN + 1, 77.7)],
            },
        );
        records.push(clock(closing(h + HOUR_MS + 30 * MIN)));
        let stage = RollupStage::open(&stage_dir, options()).unwrap();
        let checkpoint_at = 30;
        let crash_at = 64;
        for (i, r) in records.iter().enumerate().take(crash_at) {
            let off = i as u64 + 1;
            apply(&stage, &raw, off, r);
            if i + 1 == checkpoint_at {
                stage.checkpoint(Some(off)).unwrap();
            }
        }
        if let Crash::BetweenHoursAndWindows = crash {
            // The checkpoint's order up to the window checkpoint.
            stage.store().flush().unwrap();
            stage.hours().unwrap().checkpoint().unwrap();
        }
        drop(stage);
        let stage = RollupStage::open(&stage_dir, options()).unwrap();
        assert_eq!(stage.checkpoint_offset(), Some(checkpoint_at as u64));
        for (i, r) in records.iter().enumerate() {
            let off = i as u64 + 1;
            if i < checkpoint_at {
                continue;
            }
            if i < crash_at {
                replay(&stage, &raw, off, r);
            } else {
                apply(&stage, &raw, off, r);
            }
        }
        let fin = hour_of(&stage, h);
        assert_eq!(fin.len(), 1, "{crash:?}");
        assert_eq!(fin[0].figures, raw_hour(&raw, h), "{crash:?}");
        assert_eq!(fin[0].state, WindowState::Final, "{crash:?}");
        // And once more from the saved state alone.
        stage.checkpoint(Some(records.len() as u64)).unwrap();
        drop(stage);
        let stage = RollupStage::open(&stage_dir, options()).unwrap();
        // Both hours overlap `[h + 1, h + 1h + 1]`; the one ending at `h` does not.
        let again = hours_of_d1(&stage, h + 1, h + HOUR_MS + 1);
        assert_eq!(again.len(), 2, "{crash:?}");
        assert_eq!(again[0], fin[0], "{crash:?}");
        assert_eq!(again[1].state, WindowState::Provisional, "{crash:?}");
        // The hour waits for the next tier, once, across the restarts.
        let queued: Vec<_> = stage
            .hours()
            .unwrap()
            .pending_final()
            .into_iter()
            .filter(|k| k.key.as_ref().get(b"device") == Some(&b"d1"[..]))
            .map(|k| k.start)
            .collect();
        assert_eq!(queued, vec![h], "{crash:?}");
        assert_eq!(
            again[1].figures.count,
            5 * 4,
            "{crash:?}: the next hour's minutes"
        );
    }
}

/// The warm tier deletes a window only once its hour is final and flushed into the hour store:
/// with a clock far past the warm retention, the windows of an open hour (or of a final one not
/// yet checkpointed) stay; after the checkpoint they go, and the hour answers for them.
#[test]
fn windows_leave_the_warm_tier_only_once_their_hour_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let day = 86_400_000;
    let opts = StageOptions {
        retention_ms: day,
        block_duration_ms: HOUR_MS,
        ..options()
    };
    let stage = RollupStage::open(&dir.path().join("stage"), opts).unwrap();
    let h = base();
    let mut off = 0;
    for r in hour_of_d1(h) {
        off += 1;
        apply(&stage, &raw, off, &r);
    }
    off += 1;
    apply(&stage, &raw, off, &clock(closing(h + HOUR_MS) - 1));
    let minutes = |stage: &RollupStage| {
        stage
            .read(
                &Tenant::default_tenant(),
                &[Matcher::equal("device", "d1")],
                h + 1,
                h + HOUR_MS,
            )
            .unwrap()
            .pop()
            .map_or(0, |(_, ws)| {
                ws.iter()
                    .filter(|w| w.state != WindowState::Provisional)
                    .count()
            })
    };
    let far = h + 3 * day;
    stage.checkpoint(Some(off)).unwrap();
    stage.maintain(far).unwrap();
    assert_eq!(minutes(&stage), 59, "the hour is open: its windows stay");
    off += 1;
    apply(&stage, &raw, off, &clock(closing(h + HOUR_MS)));
    stage.maintain(far).unwrap();
    assert_eq!(minutes(&stage), 60, "final, but not flushed: they stay");
    stage.checkpoint(Some(off)).unwrap();
    stage.maintain(far).unwrap();
    assert_eq!(minutes(&stage), 0, "the hour is stored: they go");
    let hours = stage.hours().unwrap();
    assert_eq!(
        hours.store().series_count(),
        0,
        "no open hour: the hour store's memory gave d1's place back"
    );
    let hour = hour_of(&stage, h);
    assert_eq!(hour.len(), 1);
    assert_eq!(hour[0].figures, raw_hour(&raw, h));
    assert_eq!(hour[0].state, WindowState::Final);
}

/// A correction that leaves a window's rounded figures as they were but changes its exact sum
/// still reaches its hour: the hour's sum is the exact one of its raw samples, which the
/// windows' rounded sums could not give (1e16 + 1.5 and 1e16 + 1.75 both round to 1e16 + 2).
#[test]
fn a_correction_below_the_rounding_of_a_window_reaches_its_hour() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let opts = StageOptions {
        windows: WindowOptions::default(),
        ..options()
    };
    let stage = RollupStage::open(&dir.path().join("stage"), opts).unwrap();
    let h = base();
    let d1 = |samples: &[(i64, f64)]| Record {
        device: "d1",
        samples: samples
            .iter()
            .map(|&(t, v)| Sample::new(h + t, v))
            .collect(),
    };
    let records = [
        d1(&[(1_000, 0.5), (2_000, 1.0), (3_000, 1e16)]),
        d1(&[(61_000, -1e16)]),
        clock(closing(h + HOUR_MS)),
    ];
    for (i, r) in records.iter().enumerate() {
        apply(&stage, &raw, i as u64 + 1, r);
    }
    let hour = |stage: &RollupStage| hour_of(stage, h).pop().unwrap();
    assert_eq!((hour(&stage).figures.sum, hour(&stage).revision), (1.5, 0));
    let minute = |stage: &RollupStage| {
        stage
            .read(
                &Tenant::default_tenant(),
                &[Matcher::equal("device", "d1")],
                h + 1,
                h + 1,
            )
            .unwrap()
            .pop()
            .unwrap()
            .1
            .remove(0)
    };
    let before = minute(&stage);
    assert_eq!(before.figures.sum, 1e16 + 2.0);
    // The middle sample replaced (last write wins): the same rounded figures.
    apply(&stage, &raw, 4, &d1(&[(2_000, 1.25)]));
    let after = minute(&stage);
    assert_eq!(after.figures, before.figures);
    assert_eq!(after.revision, 1, "its exact state changed");
    let fixed = hour(&stage);
    assert_eq!((fixed.figures.sum, fixed.revision), (1.75, 1));
    let mut want = raw_hour(&raw, h);
    want.quantiles.clear(); // no sketch for this series
    assert_eq!(fixed.figures, want);
}

const DAY: i64 = 86_400_000;

/// A day of d1 at 5 minutes, a record per hour: decimal readings that climb and reset once
/// (hour 10), the last one on the day's end. The day keyed `d` holds `(d, d + 1d]`.
fn day_of_d1(d: i64) -> Vec<Record> {
    (0..24)
        .map(|h| Record {
            device: "d1",
            samples: (0..12)
                .map(|k| {
                    let i = h * 12 + k;
                    let v = if i >= 130 {
                        (i - 130) as f64 * 0.3
                    } else {
                        i as f64 * 1.1 + 5.0
                    };
                    Sample::new(d + (i + 1) * 5 * MIN, v)
                })
                .collect(),
        })
        .collect()
}

/// d1's days overlapping `(d, d + 1d]`: the day keyed `d` only.
fn day_of(stage: &RollupStage, d: i64) -> Vec<WindowView> {
    let mut got = stage
        .read_hours(
            Tier::Day,
            &Tenant::default_tenant(),
            &[Matcher::equal("device", "d1")],
            d + 1,
            d + DAY,
        )
        .unwrap();
    let ws = got.pop().map(|(_, ws)| ws).unwrap_or_default();
    assert!(ws.iter().all(|w| (w.start, w.end) == (d, d + DAY)));
    ws
}

/// The figures of d1's samples in `(from, to]`.
fn raw_figures(raw: &Tsdb, from: i64, to: i64) -> strata_stream::rollup::Figures {
    let key = Labels::from_pairs([("__name__", "t"), ("device", "d1")])
        .unwrap()
        .key();
    let samples = raw
        .read_series(&Tenant::default_tenant(), key.as_ref(), from + 1, to)
        .unwrap();
    Rollup::of_sorted(&samples, true)
        .unwrap()
        .figures(QUANTILES)
}

/// The 1-day tier: a day is provisional (its final hours, the open ones and their open
/// minutes) until its last hour is final, then final with the figures of its raw samples
/// (sketches merged from the hours' states); a late event corrects minute, hour and day; a
/// restart with a crash between the hour tier's checkpoint and the windows' keeps the day whole.
#[test]
fn a_day_merges_its_hours_and_equals_its_raw_samples() {
    for crash in [Crash::AfterCheckpoint, Crash::BetweenHoursAndWindows] {
        let dir = tempfile::tempdir().unwrap();
        let raw = open_raw(dir.path());
        let stage_dir = dir.path().join("stage");
        let d = (strata_model::time::now_ms() - 3 * DAY).div_euclid(DAY) * DAY;
        let mut records = day_of_d1(d);
        records.push(clock(closing(d + DAY)));
        let stage = RollupStage::open(&stage_dir, options()).unwrap();
        let (checkpoint_at, crash_at) = (6, 15);
        for (i, r) in records.iter().enumerate().take(crash_at) {
            let off = i as u64 + 1;
            apply(&stage, &raw, off, r);
            if i + 1 == checkpoint_at {
                stage.checkpoint(Some(off)).unwrap();
            }
        }
        // Mid-day: provisional, already the figures of every sample so far.
        let open = day_of(&stage, d);
        assert_eq!(open.len(), 1, "{crash:?}");
        assert_eq!(open[0].state, WindowState::Provisional);
        let so_far = d + crash_at as i64 * HOUR_MS;
        assert_eq!(open[0].figures, raw_figures(&raw, d, so_far), "{crash:?}");
        if let Crash::BetweenHoursAndWindows = crash {
            // The checkpoint's order up to the window checkpoint: hours final since the
            // checkpoint are saved final (never replayed into their day), the day with them.
            stage.store().flush().unwrap();
            stage.hours().unwrap().checkpoint().unwrap();
        }
        drop(stage);
        let stage = RollupStage::open(&stage_dir, options()).unwrap();
        for (i, r) in records.iter().enumerate().skip(checkpoint_at) {
            let off = i as u64 + 1;
            if i < crash_at {
                replay(&stage, &raw, off, r);
            } else {
                apply(&stage, &raw, off, r);
            }
        }
        let fin = day_of(&stage, d);
        assert_eq!(fin.len(), 1, "{crash:?}");
        assert_eq!((fin[0].state, fin[0].revision), (WindowState::Final, 0));
        let want = raw_figures(&raw, d, d + DAY);
        assert_eq!(want.count, 288);
        assert_eq!(fin[0].figures, want, "{crash:?}");
        assert_eq!(want.quantiles.len(), 2);
        // A late sample in hour 5: its minute, hour and day corrected.
        let late = Record {
            device: "d1",
            samples: vec![Sample::new(d + 5 * HOUR_MS + 7_000, 1e4)],
        };
        let off = records.len() as u64 + 1;
        apply(&stage, &raw, off, &late);
        let after = day_of(&stage, d);
        assert_eq!(
            (after[0].state, after[0].revision),
            (WindowState::Corrected, 1)
        );
        let want = raw_figures(&raw, d, d + DAY);
        assert_eq!((want.count, want.max), (289, 1e4));
        assert_eq!(after[0].figures.max, want.max);
        assert_eq!(after[0].figures.count, want.count);
        assert_eq!(after[0].figures.increase, want.increase);
        assert_eq!(after[0].figures.quantiles, want.quantiles);
        assert!((after[0].figures.sum - want.sum).abs() <= 1e-9 * want.sum.abs());
        // And from the saved state alone.
        stage.checkpoint(Some(off)).unwrap();
        drop(stage);
        let stage = RollupStage::open(&stage_dir, options()).unwrap();
        assert_eq!(day_of(&stage, d), after, "{crash:?}");
    }
}

/// A day whose first hours were backfilled and whose later ones came live (the raw tier's
/// retention falls inside it) holds both once final.
#[test]
fn a_day_of_backfilled_and_live_hours_holds_both() {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    let stage = RollupStage::open(&dir.path().join("stage"), options()).unwrap();
    let d = (strata_model::time::now_ms() - 3 * DAY).div_euclid(DAY) * DAY;
    let records = day_of_d1(d);
    let all: Vec<Sample> = records.iter().flat_map(|r| r.samples.clone()).collect();
    let key = Labels::from_pairs([("__name__", "t"), ("device", "d1")])
        .unwrap()
        .key();
    let early: Vec<Sample> = records[..10]
        .iter()
        .flat_map(|r| r.samples.clone())
        .collect();
    let tenant = Tenant::default_tenant();
    strata_stream::backfill::apply(&stage, &tenant, &[(key, early)], i64::MIN, 1).unwrap();
    let partial = day_of(&stage, d);
    assert_eq!(partial.len(), 1);
    assert_eq!(partial[0].figures.count, 120, "the backfilled hours' day");
    for (i, r) in records.iter().enumerate().skip(10) {
        apply(&stage, &raw, i as u64 + 2, r);
    }
    apply(&stage, &raw, 40, &clock(closing(d + DAY)));
    let fin = day_of(&stage, d);
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].state, WindowState::Final);
    let want = Rollup::of_sorted(&all, true).unwrap().figures(QUANTILES);
    let got = &fin[0].figures;
    assert_eq!(
        (got.count, got.min, got.max, got.first, got.last),
        (want.count, want.min, want.max, want.first, want.last)
    );
    assert_eq!(
        (got.increase, &got.quantiles),
        (want.increase, &want.quantiles)
    );
    assert!((got.sum - want.sum).abs() <= 1e-9 * want.sum.abs());
}
