//! Backfill of history older than the raw tier keeps: a series' samples cut into whole hours,
//! each hour's 1-minute windows and the hour itself computed from them, and written over what
//! the warm and hour tiers held for that series and hour.
//!
//! The live path cannot take such history: the raw tier refuses samples older than its
//! retention, and windows recompute corrections from raw samples. A backfill request instead
//! carries every sample of each series-hour it touches, so each hour (and each of its windows)
//! is computed from the request alone, by [`Rollup::of_sorted`] as the live path computes
//! windows, and replaces the stored one: at revision + 1 when the tier held other figures, not
//! at all when it held these (a replayed request changes nothing: at-least-once delivery,
//! exactly-once effect).
//!
//! - [`plan_series`] is pure: samples in, the hours and windows to write out.
//! - [`apply`] writes one request's plans into a shard's [`RollupStage`]; it must run where the
//!   shard's writes are applied (the shard's thread), so it never races settling.
//! - [`persist`] makes what [`apply`] wrote durable (both stores flushed, the hours queued for
//!   the cold tier saved), before the request is acknowledged.

use crate::hour::HOUR_MS;
use crate::rollup::Rollup;
use crate::stage::{revision_for, RollupStage};
use crate::store::WindowWrite;
use crate::window::{is_derived, window_of};
use crate::StreamError;
use strata_model::{Sample, SeriesKey, StorageError, Tenant};

/// One series-hour of a backfill: the hour's rollup and those of its windows to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct HourPlan {
    /// The hour's start ([`window_of`] of its samples' timestamps and an hour).
    pub start: i64,
    /// The hour, from every sample of the request in it.
    pub hour: Rollup,
    /// `(window start, rollup)` of the hour's windows starting at or after the `windows_from`
    /// of [`plan_series`], ascending: older windows are past the warm tier's retention.
    pub windows: Vec<(i64, Rollup)>,
}

/// Cuts one series' samples (sorted by timestamp, one per timestamp, as
/// [`strata_model::sort_last_wins`] leaves them) into whole hours, each with its windows of
/// `window_ms` (a divisor of an hour) that start at or after `windows_from`. `sketch`: the
/// series keeps a quantile sketch. Hours with no readable sample (NaNs only) are left out.
pub fn plan_series(
    samples: &[Sample],
    window_ms: i64,
    windows_from: i64,
    sketch: bool,
) -> Vec<HourPlan> {
    debug_assert!(samples.windows(2).all(|p| p[0].timestamp < p[1].timestamp));
    let mut out = Vec::new();
    for hour in
        samples.chunk_by(|a, b| window_of(a.timestamp, HOUR_MS) == window_of(b.timestamp, HOUR_MS))
    {
        let Some(rollup) = Rollup::of_sorted(hour, sketch) else {
            continue;
        };
        let windows = hour
            .chunk_by(|a, b| window_of(a.timestamp, window_ms) == window_of(b.timestamp, window_ms))
            .filter_map(|w| {
                let start = window_of(w[0].timestamp, window_ms);
                if start < windows_from {
                    return None;
                }
                Some((start, Rollup::of_sorted(w, sketch)?))
            })
            .collect();
        out.push(HourPlan {
            start: window_of(hour[0].timestamp, HOUR_MS),
            hour: rollup,
            windows,
        });
    }
    out
}

/// What [`apply`] did with one request's samples for one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Samples rolled up into windows kept by the warm tier.
    pub window_samples: u64,
    /// Samples rolled up into hours.
    pub hour_samples: u64,
    /// Samples of derived series (a `:` in the name), which are not rolled up again.
    pub derived_samples: u64,
    /// Windows written (new or replaced).
    pub windows_written: u64,
    /// Windows the warm tier held already as computed.
    pub windows_unchanged: u64,
    /// Hours written (new or replaced).
    pub hours_written: u64,
    /// Hours the hour tier held already as computed.
    pub hours_unchanged: u64,
}

impl Applied {
    /// Adds another shard's outcome.
    pub fn merge(&mut self, o: &Applied) {
        self.window_samples += o.window_samples;
        self.hour_samples += o.hour_samples;
        self.derived_samples += o.derived_samples;
        self.windows_written += o.windows_written;
        self.windows_unchanged += o.windows_unchanged;
        self.hours_written += o.hours_written;
        self.hours_unchanged += o.hours_unchanged;
    }
}

/// Writes the windows and hours of `tenant`'s `series` (each series once, its samples sorted,
/// one per timestamp) into `stage`, replacing what its tiers held for each series-hour the
/// samples touch; windows starting before `windows_from` are not written (the warm tier's
/// retention). Run it on the shard's thread; [`persist`] before acknowledging.
///
/// A window the tier holds in a touched hour but the request has no sample for stays: the warm
/// tier deletes nothing but by retention (documented: a request must carry every sample of
/// each series-hour it touches).
pub fn apply(
    stage: &RollupStage,
    tenant: &Tenant,
    series: &[(SeriesKey, Vec<Sample>)],
    windows_from: i64,
    offset: u64,
) -> Result<Applied, StorageError> {
    let opts = stage.options();
    let (width, q) = (opts.windows.window_ms, &opts.quantiles);
    let store = stage.store();
    let mut done = Applied::default();
    for (key, samples) in series {
        if is_derived(key.as_ref()) {
            done.derived_samples += samples.len() as u64;
            continue;
        }
        let sketch = opts.windows.wants_quantiles(key.as_ref());
        let plans = plan_series(samples, width, windows_from, sketch);
        let windows = plans.iter().flat_map(|p| &p.windows);
        let (first, last) = windows
            .clone()
            .fold((i64::MAX, i64::MIN), |(a, b), (s, _)| {
                (a.min(*s), b.max(*s))
            });
        if first <= last {
            let stored = store.range(tenant, key.as_ref(), first, last, q, Some(width))?;
            let place = store.series(tenant, key.as_ref());
            let mut writes = Vec::new();
            for (start, rollup) in windows {
                done.window_samples += rollup.count;
                let figures = rollup.figures(q);
                let was = stored
                    .binary_search_by_key(start, |w| w.start)
                    .ok()
                    .map(|i| &stored[i]);
                let Some(revision) = revision_for(was, rollup, &figures, 0, true) else {
                    done.windows_unchanged += 1;
                    continue;
                };
                writes.push(WindowWrite {
                    series: place,
                    start: *start,
                    state: crate::state::for_store(rollup, revision, width),
                    figures,
                    revision,
                });
            }
            done.windows_written += writes.len() as u64;
            store.write(writes, offset);
        }
        if let Some(h) = stage.hours() {
            done.hour_samples += plans.iter().map(|p| p.hour.count).sum::<u64>();
            let hours: Vec<(i64, &Rollup)> = plans.iter().map(|p| (p.start, &p.hour)).collect();
            let written = h.replace(tenant, key.as_ref(), &hours, q, offset)?;
            done.hours_written += written as u64;
            done.hours_unchanged += (hours.len() - written) as u64;
        }
    }
    Ok(done)
}

/// Makes what [`apply`] wrote durable: the warm store flushed into blocks, then the hour
/// tier's store and its queue of hours for the cold tier.
pub fn persist(stage: &RollupStage) -> Result<(), StreamError> {
    stage.store().flush().map_err(|e| StreamError::Corrupt {
        path: "warm tier".into(),
        reason: e.to_string(),
    })?;
    match stage.hours() {
        Some(h) => h.persist_written(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hour::{HourOptions, HourStage};
    use crate::stage::{StageOptions, Tier, WindowView};
    use crate::state;
    use crate::window::{WindowOptions, WindowState};
    use proptest::prelude::*;
    use strata_model::{Labels, Matcher};

    const MIN: i64 = 60_000;

    /// Several hours of one series: readings that repeat, drop (counter resets) and run over
    /// hour and minute edges, from somewhere in the past (negative times too).
    fn history() -> impl Strategy<Value = (i64, Vec<Sample>)> {
        let value = prop_oneof![
            (0u32..100_000).prop_map(|x| f64::from(x) / 10.0),
            -1e6f64..1e6,
            (0u32..20).prop_map(f64::from),
        ];
        (
            -1000i64..1000,
            prop::collection::btree_map(0i64..4 * HOUR_MS, value, 1..600),
        )
            .prop_map(|(base_h, m)| {
                let base = base_h * HOUR_MS;
                (
                    base,
                    m.into_iter()
                        .map(|(t, v)| Sample::new(base + t, v))
                        .collect(),
                )
            })
    }

    proptest! {
        /// Every backfilled hour equals the hour computed from its raw samples, and the merge
        /// of its windows taken through the warm tier's stored form (as the live path's hour
        /// tier merges them): every figure, sketches included. Every sample is in exactly one
        /// window and one hour, and windows nest in their hours.
        #[test]
        fn backfilled_hours_equal_hours_from_raw((base, samples) in history()) {
            let plans = plan_series(&samples, MIN, i64::MIN, true);
            let total: u64 = plans.iter().map(|p| p.hour.count).sum();
            prop_assert_eq!(total as usize, samples.len());
            for p in &plans {
                let raw: Vec<Sample> = samples
                    .iter()
                    .copied()
                    .filter(|s| (p.start + 1..=p.start + HOUR_MS).contains(&s.timestamp))
                    .collect();
                prop_assert_eq!(&p.hour, &Rollup::of_sorted(&raw, true).unwrap());
                let mut merged: Option<Rollup> = None;
                for (start, w) in &p.windows {
                    prop_assert!(*start >= p.start && *start < p.start + HOUR_MS);
                    let figures = w.figures(&[]);
                    let stored = state::for_store(w, 1, MIN);
                    let back = state::of_stored(&figures, 1, stored.as_deref()).unwrap();
                    match &mut merged {
                        Some(m) => m.merge_in_time(&back),
                        None => merged = Some(back),
                    }
                }
                prop_assert_eq!(merged.as_ref(), Some(&p.hour));
                let q = [0.5, 0.99];
                prop_assert_eq!(merged.unwrap().figures(&q), p.hour.figures(&q));
            }
            // Windows before the cut are left out, hours are not.
            let cut = base + HOUR_MS + 30 * MIN;
            let later = plan_series(&samples, MIN, cut, false);
            prop_assert_eq!(later.len(), plans.len());
            for (a, b) in later.iter().zip(&plans) {
                prop_assert_eq!(a.start, b.start);
                prop_assert!(a.windows.iter().all(|(s, _)| *s >= cut));
                let kept = b.windows.iter().filter(|(s, _)| *s >= cut).count();
                prop_assert_eq!(a.windows.len(), kept);
            }
        }
    }

    #[test]
    fn nan_only_hours_are_left_out_and_times_before_1970_cut_alike() {
        let s = [
            Sample::new(-HOUR_MS - 1, 1.0),
            Sample::new(-HOUR_MS + 5, 2.0),
            Sample::new(-1, 3.0),
            Sample::new(10, f64::NAN),
        ];
        let plans = plan_series(&s, MIN, i64::MIN, false);
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].start, -2 * HOUR_MS);
        assert_eq!(plans[1].start, -HOUR_MS);
        assert_eq!(plans[1].hour.count, 2);
        let starts: Vec<i64> = plans[1].windows.iter().map(|w| w.0).collect();
        assert_eq!(starts, vec![-HOUR_MS, -MIN]);
    }

    fn stage(dir: &std::path::Path) -> RollupStage {
        RollupStage::open(
            dir,
            StageOptions {
                windows: WindowOptions {
                    quantile_metrics: vec!["lat".into()],
                    ..WindowOptions::default()
                },
                quantiles: vec![0.5, 0.99],
                retention_ms: i64::MAX / 4,
                correction_subscribers: crate::stage::Subscribers::NONE,
                block_duration_ms: 86_400_000,
                hours: Some(HourOptions {
                    publish_final: true,
                    ..HourOptions::default()
                }),
            },
        )
        .unwrap()
    }

    fn read(stage: &RollupStage, tier: Tier, from: i64, to: i64) -> Vec<WindowView> {
        let m = [Matcher::equal("device", "d1")];
        let mut r = stage
            .read_tier(tier, &Tenant::default_tenant(), &m, from, to)
            .unwrap();
        assert!(r.len() <= 1);
        r.pop().map_or_else(Vec::new, |(_, ws)| ws)
    }

    /// Backfilled windows and hours read back as final; the same request again changes
    /// nothing; other samples for an hour replace it at revision 1 and queue it again for the
    /// cold tier; windows before `windows_from` are not kept; all of it survives reopening.
    #[test]
    fn apply_replaces_idempotently_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "lat"), ("device", "d1")])
            .unwrap()
            .key();
        let h0 = window_of(strata_model::time::now_ms(), HOUR_MS) - 400 * 24 * HOUR_MS;
        // Three hours at 5-minute steps, the last of each on its end; windows kept from the
        // second hour on.
        let samples: Vec<Sample> = (0..36)
            .map(|i| Sample::new(h0 + (i + 1) * 5 * MIN, (i % 7) as f64 * 1.5))
            .collect();
        let series = vec![(key.clone(), samples.clone())];
        let from = h0 + HOUR_MS;
        let st = stage(dir.path());
        let a = apply(&st, &t, &series, from, 1).unwrap();
        assert_eq!(
            a,
            Applied {
                window_samples: 24,
                hour_samples: 36,
                derived_samples: 0,
                windows_written: 24,
                windows_unchanged: 0,
                hours_written: 3,
                hours_unchanged: 0,
            }
        );
        persist(&st).unwrap();
        let hours = read_hours(&st, h0);
        assert_eq!(hours.len(), 3);
        for (i, h) in hours.iter().enumerate() {
            let raw = &samples[i * 12..i * 12 + 12];
            let want = Rollup::of_sorted(raw, true).unwrap().figures(&[0.5, 0.99]);
            assert_eq!(
                (h.start, h.revision, h.state),
                (h0 + i as i64 * HOUR_MS, 0, WindowState::Final)
            );
            assert_eq!(h.figures, want);
        }
        let windows = read(&st, Tier::Window, h0, h0 + 3 * HOUR_MS);
        assert_eq!(windows.len(), 24);
        assert!(windows
            .iter()
            .all(|w| w.start >= from && w.figures.count == 1));
        let queued = st.hours().unwrap().pending_final();
        assert_eq!(queued.len(), 3, "every hour queued for the cold tier");
        st.hours().unwrap().done_final(&queued);
        // The same request again: nothing written, nothing queued.
        let b = apply(&st, &t, &series, from, 2).unwrap();
        assert_eq!((b.windows_written, b.hours_written), (0, 0));
        assert_eq!((b.windows_unchanged, b.hours_unchanged), (24, 3));
        assert!(st.hours().unwrap().pending_final().is_empty());
        // The last hour with one value changed: it and its window are replaced at revision 1.
        let mut changed = samples.clone();
        changed[30].value = 100.0;
        let c = apply(&st, &t, &[(key.clone(), changed.clone())], from, 3).unwrap();
        assert_eq!((c.windows_written, c.hours_written), (1, 1));
        persist(&st).unwrap();
        drop(st);
        let st = stage(dir.path());
        let hours = read_hours(&st, h0);
        assert_eq!(hours[2].revision, 1);
        assert_eq!(hours[2].state, WindowState::Corrected);
        assert_eq!(hours[2].figures.max, 100.0);
        assert_eq!(hours[1].revision, 0);
        let queued = st.hours().unwrap().pending_final();
        assert_eq!(queued.len(), 1, "the queue survived reopening");
        assert_eq!(queued[0].start, h0 + 2 * HOUR_MS);
        let w = read(&st, Tier::Window, h0, h0 + 3 * HOUR_MS);
        let w30 = w.iter().find(|w| w.start == h0 + 154 * MIN).unwrap();
        assert_eq!((w30.revision, w30.figures.max), (1, 100.0));
    }

    /// Hour retention waits for the next tier: an hour queued for the cold tier outlives its
    /// retention until it is taken, then goes.
    #[test]
    fn hour_retention_waits_for_hours_queued_for_the_cold_tier() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "t"), ("device", "d1")])
            .unwrap()
            .key();
        let h0 = window_of(strata_model::time::now_ms(), HOUR_MS) - 400 * 24 * HOUR_MS;
        let samples: Vec<Sample> = (1..=24)
            .map(|i| Sample::new(h0 + i * 5 * MIN, 1.0))
            .collect();
        let st = stage(dir.path());
        apply(&st, &t, &[(key, samples)], i64::MAX, 1).unwrap();
        persist(&st).unwrap();
        let hours = st.hours().unwrap();
        let later = h0 + 10 * 365 * 24 * HOUR_MS;
        hours.maintain(later).unwrap();
        assert_eq!(
            read_hours(&st, h0).len(),
            2,
            "queued hours outlive their retention"
        );
        let queued = hours.pending_final();
        assert_eq!(queued.len(), 2);
        hours.done_final(&queued);
        hours.maintain(later).unwrap();
        assert!(read_hours(&st, h0).is_empty(), "taken hours expire");
    }

    fn read_hours(st: &RollupStage, h0: i64) -> Vec<WindowView> {
        read(st, Tier::Hour, h0, h0 + 3 * HOUR_MS - 1)
    }

    #[test]
    fn derived_series_are_not_rolled_up_and_an_open_hour_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let st = stage(dir.path());
        let t = Tenant::default_tenant();
        let derived = Labels::from_pairs([("__name__", "a:b"), ("device", "d1")])
            .unwrap()
            .key();
        let h0 = window_of(strata_model::time::now_ms(), HOUR_MS) - 10 * HOUR_MS;
        let s = vec![Sample::new(h0 + 30 * MIN, 1.0)];
        let a = apply(&st, &t, &[(derived, s.clone())], i64::MIN, 1).unwrap();
        assert_eq!(
            (a.derived_samples, a.hour_samples, a.hours_written),
            (1, 0, 0)
        );
        // A live hour still open for the series: the backfilled one replaces it.
        let key = Labels::from_pairs([("__name__", "t"), ("device", "d1")])
            .unwrap()
            .key();
        let h: &HourStage = st.hours().unwrap();
        let id = h.series(&t, key.as_ref());
        let live = Rollup::of_sorted(&[Sample::new(h0 + 1, 50.0)], false).unwrap();
        h.merge(id, &t, key.as_ref(), h0, &live);
        apply(&st, &t, &[(key, s)], i64::MIN, 2).unwrap();
        let got = read_hours(&st, h0);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].figures.max, got[0].state),
            (1.0, WindowState::Final)
        );
    }
}
