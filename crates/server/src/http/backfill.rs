//! `POST /api/v1/admin/backfill`: loads history, however old, into the tiers that keep it
//! (see README, "Backfilling history").
//!
//! The body is a Prometheus remote write (`Content-Type: application/x-protobuf`, snappy) or
//! Influx line protocol (`text/plain`, `precision` as for `/write`), decoded by the same
//! decoders as the write endpoints, within the same body limit. Then, sample by sample, by the
//! hour holding it:
//! - hours after the one holding the raw tier's oldest kept time go through [`Engine::write`]
//!   (the ingest log, the raw tier, windows and hours as any write);
//! - older hours, back to the 1-hour tier's retention, are backfilled on their shard's thread
//!   ([`strata_stream::backfill`]): windows (within the warm tier's retention) and hours
//!   computed from the request's samples replace what those tiers held for each series-hour;
//!   their raw samples go to the cold tier's raw archive (`cold.archive_raw`);
//! - older still: refused, counted, and named in the answer.
//!
//! A body with any item the decoder refuses (syntax, labels, timestamps in the future) is
//! refused whole (400), nothing stored: a backfill replaces whole series-hours, so storing the
//! valid rest could replace an hour with a part of it. The answer (JSON) comes once everything
//! is durable, and says how many samples went where.

use super::write::{check_headers, precision_of, read_and_decode};
use super::{json_response, tenant_of, ApiError, AppState};
use crate::engine::{partition_of, WriteError};
use crate::metrics::Protocol;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_model::time::now_ms;
use strata_model::{sort_last_wins, Limits, Sample, SeriesKey, SeriesSamples, Tenant, WriteBatch};
use strata_stream::backfill::{self, Applied};
use strata_stream::hour::HOUR_MS;
use strata_stream::window::window_of;

/// Rejections quoted in an error message.
const QUOTED: usize = 10;

/// How long each tier keeps what it holds, for cutting a backfill.
#[derive(Debug, Clone, Copy)]
pub struct Retentions {
    /// The raw tier (`retention`).
    pub raw_ms: i64,
    /// The warm tier of windows (`rollups.retention`).
    pub windows_ms: i64,
    /// The 1-hour tier (`rollups.hour_retention`).
    pub hours_ms: i64,
}

/// Where a request's samples go, from the hour holding each (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// Samples of hours starting after this go through the ordinary write path.
    raw_hour: i64,
    /// Hours starting before this are refused (past the 1-hour tier's retention).
    hours_from: i64,
    /// Windows starting before this are not kept (past the warm tier's retention).
    windows_from: i64,
}

impl Cut {
    fn at(now: i64, r: &Retentions) -> Cut {
        Cut {
            raw_hour: window_of(now.saturating_sub(r.raw_ms), HOUR_MS),
            hours_from: now.saturating_sub(r.hours_ms),
            windows_from: now.saturating_sub(r.windows_ms),
        }
    }
}

/// One shard's share of a backfill: each series once, its samples sorted.
type ShardSeries = Vec<(SeriesKey, Vec<Sample>)>;

/// A request's samples, cut.
#[derive(Default)]
struct Split {
    /// For the ordinary write path.
    live: Option<WriteBatch>,
    /// To backfill, by partition.
    old: BTreeMap<u32, BTreeMap<SeriesKey, Vec<Sample>>>,
    /// Past the 1-hour tier's retention.
    too_old: usize,
    /// The span of the backfilled samples.
    span: Option<(i64, i64)>,
}

fn split(batch: &WriteBatch, cut: Cut, partitions: u32) -> Split {
    let mut out = Split::default();
    let mut live = WriteBatch::new(batch.tenant().clone());
    let (mut scratch_live, mut scratch_old) = (Vec::new(), Vec::new());
    for s in batch.iter() {
        scratch_live.clear();
        scratch_old.clear();
        for x in s.samples {
            let hour = window_of(x.timestamp, HOUR_MS);
            if hour > cut.raw_hour {
                scratch_live.push(*x);
            } else if hour < cut.hours_from {
                out.too_old += 1;
            } else {
                scratch_old.push(*x);
            }
        }
        if !scratch_live.is_empty() {
            live.push_identified(s.key, s.id, s.entity, &scratch_live, None);
        }
        if let (Some(first), Some(last)) = (scratch_old.first(), scratch_old.last()) {
            let (lo, hi) = out.span.unwrap_or((i64::MAX, i64::MIN));
            let (a, b) = (
                first.timestamp.min(last.timestamp),
                first.timestamp.max(last.timestamp),
            );
            out.span = Some((lo.min(a), hi.max(b)));
            out.old
                .entry(partition_of(s.entity, partitions))
                .or_default()
                .entry(s.key.to_owned())
                .or_default()
                .extend_from_slice(&scratch_old);
        }
    }
    out.live = (!live.is_empty()).then_some(live);
    out
}

/// `POST /api/v1/admin/backfill` (see the module doc).
pub async fn backfill(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let counters = &st.engine.counters.backfill;
    match run(&st, q.as_deref(), &headers, body).await {
        Ok(r) => {
            counters.completed.add(1);
            r
        }
        Err(e) => {
            counters.failed.add(1);
            e.into_response()
        }
    }
}

/// The protocol a backfill body is in, by its content type.
fn protocol_of(headers: &HeaderMap) -> Result<Protocol, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ctype = ctype.split(';').next().unwrap_or("").trim();
    if ctype.eq_ignore_ascii_case("application/x-protobuf") {
        Ok(Protocol::RemoteWrite)
    } else if ctype.eq_ignore_ascii_case("text/plain") {
        Ok(Protocol::Influx)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_data",
            format!(
                "backfill takes Content-Type application/x-protobuf (Prometheus remote write) or text/plain (Influx line protocol), got {ctype:?}"
            ),
        ))
    }
}

async fn run(
    st: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !st.engine.rollups_enabled() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unavailable",
            "backfill writes the rollup tiers, and rollups are disabled ([rollups] enabled = false)",
        ));
    }
    let tenant = tenant_of(headers)?;
    let p = protocol_of(headers)?;
    check_headers(headers, p)?;
    let precision = match p {
        Protocol::Influx => Some(precision_of(query)?),
        _ => None,
    };
    // Any age decodes: how old a sample is decides where it goes, below.
    let limits = Arc::new(Limits {
        max_age_ms: i64::MAX / 4,
        ..(*st.limits).clone()
    });
    let (decoded, batch) =
        read_and_decode(st, headers, body, p, precision, tenant.clone(), limits).await?;
    if decoded.rejected_total > 0 {
        let quoted: Vec<String> = decoded
            .rejected
            .iter()
            .take(QUOTED)
            .map(ToString::to_string)
            .collect();
        return Err(ApiError::bad_data(format!(
            "backfill refused, nothing stored: {} items are invalid (a backfill replaces whole series-hours, so it is taken whole or not at all): {}{}",
            decoded.rejected_total,
            quoted.join("; "),
            if decoded.rejected_total > quoted.len() { "; ..." } else { "" }
        ))
        .with_counts(0, decoded.rejected_total));
    }
    let samples = batch.samples_len();
    let cut = Cut::at(now_ms(), &st.retentions);
    let Split {
        live,
        old,
        too_old,
        span,
    } = split(&batch, cut, st.engine.partitions());
    drop(batch);
    let live_ack = match live {
        Some(b) => Some(st.engine.write(b).await.map_err(unavailable)?),
        None => None,
    };
    let (applied, cold_raw, failed) = write_old(st, &tenant, old, cut).await?;
    if let Some((oldest, newest)) = span {
        st.engine.late_written(&tenant, oldest, newest);
    }
    let mut warnings = Vec::new();
    if failed.is_none() && applied.hours_written > 0 {
        // The hours written are queued for the cold tier (durably): one archiver pass takes
        // them now, so a backfill of years never piles them up in the queue. A failure leaves
        // them queued for the archiver's next passes.
        if let Err(e) = st.engine.sync_cold().await {
            warnings.push(format!(
                "the backfilled hours are stored and queued for the cold tier, whose archiver failed (it retries): {e}"
            ));
        }
    }
    if let Some(e) = failed {
        // Retrying is safe: what was written is written again unchanged.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "backfill not completed (retry it; what was written is not written twice): {e}"
            ),
        ));
    }
    let (raw, raw_too_old, series_limit) = live_ack.map_or((0, 0, 0), |a| {
        let s = &a.stats;
        (
            s.appended + s.overwritten + s.duplicates,
            s.too_old,
            s.rejected_series_limit,
        )
    });
    let too_old = too_old + raw_too_old;
    let c = &st.engine.counters.backfill;
    c.raw.add(raw as u64);
    c.windows.add(applied.window_samples);
    c.hours.add(applied.hour_samples);
    c.cold_raw.add(cold_raw as u64);
    c.too_old.add(too_old as u64);
    let mut warnings = Vec::new();
    if too_old > 0 {
        warnings.push(format!(
            "{too_old} samples refused: older than the 1-hour tier's retention (rollups.hour_retention = {} ms)",
            st.retentions.hours_ms
        ));
    }
    if series_limit > 0 {
        warnings.push(format!(
            "{series_limit} samples of recent hours refused: their series are past the live-series limits"
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "success",
            "samples": samples,
            "raw": raw,
            "windows": applied.window_samples,
            "hours": applied.hour_samples,
            "cold_raw": cold_raw,
            "derived_not_rolled_up": applied.derived_samples,
            "windows_written": applied.windows_written,
            "windows_unchanged": applied.windows_unchanged,
            "hours_written": applied.hours_written,
            "hours_unchanged": applied.hours_unchanged,
            "refused": { "too_old": too_old, "series_limit": series_limit },
            "warnings": warnings,
        }),
    ))
}

/// Writes a request's older part: each shard's series on its thread (windows and hours,
/// persisted), and the raw rows to the cold tier, at once. Returns what the shards did, the raw
/// rows archived, and the first failure (after waiting for every part).
async fn write_old(
    st: &AppState,
    tenant: &Tenant,
    old: BTreeMap<u32, BTreeMap<SeriesKey, Vec<Sample>>>,
    cut: Cut,
) -> Result<(Applied, usize, Option<String>), ApiError> {
    // Held in the pending-ingest budget, as writes are, until the shards are done with it.
    let held: usize = old
        .values()
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.as_bytes().len() + 48 + v.len() * std::mem::size_of::<Sample>())
        .sum();
    // Each shard's task holds it: a client going away does not free it before they finish.
    let room = match held {
        0 => None,
        n => Some(Arc::new(
            st.engine.reserve_pending(n).await.map_err(unavailable)?,
        )),
    };
    // The shards' parts and the raw archive run at once; each is durable when it answers.
    let mut cold_rows: Vec<SeriesSamples> = Vec::new();
    let mut shards = Vec::new();
    let archive = st.engine.cold_raw_archive();
    for (p, series) in old {
        let series: ShardSeries = series
            .into_iter()
            .map(|(k, mut v)| {
                sort_last_wins(&mut v);
                (k, v)
            })
            .collect();
        if archive.is_some() {
            cold_rows.extend(series.iter().map(|(k, v)| SeriesSamples {
                labels: k.labels(),
                samples: v.clone(),
            }));
        }
        let (engine, tenant, room) = (st.engine.clone(), tenant.clone(), room.clone());
        shards.push(tokio::spawn(async move {
            let _room = room;
            engine
                .on_shard(p, move |stage, offset| {
                    let stage = stage.ok_or("rollups are disabled")?;
                    let done = backfill::apply(stage, &tenant, &series, cut.windows_from, offset)
                        .map_err(|e| e.to_string())?;
                    backfill::persist(stage).map_err(|e| e.to_string())?;
                    Ok::<Applied, String>(done)
                })
                .await
        }));
    }
    let cold_raw = cold_rows.iter().map(|s| s.samples.len()).sum::<usize>();
    let archived = match archive.filter(|_| !cold_rows.is_empty()) {
        Some(a) => {
            let t = tenant.clone();
            Some(tokio::task::spawn_blocking(move || {
                a.archive(&t, &cold_rows)
            }))
        }
        None => None,
    };
    let mut applied = Applied::default();
    let mut failed: Option<String> = None;
    for s in shards {
        match s.await {
            Ok(Ok(Ok(a))) => applied.merge(&a),
            Ok(Ok(Err(e))) => {
                failed.get_or_insert(e);
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e.to_string());
            }
            Err(e) => {
                failed.get_or_insert(format!("backfill task failed: {e}"));
            }
        }
    }
    if let Some(a) = archived {
        match a.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(format!("cold archive task failed: {e}"));
            }
        }
    }
    Ok((applied, cold_raw, failed))
}

fn unavailable(e: WriteError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_cut_by_their_hour() {
        let now = 1_000 * HOUR_MS + 1_234;
        let r = Retentions {
            raw_ms: 2 * HOUR_MS,
            windows_ms: 5 * HOUR_MS,
            hours_ms: 10 * HOUR_MS,
        };
        let cut = Cut::at(now, &r);
        assert_eq!(cut.raw_hour, 998 * HOUR_MS);
        let mut b = WriteBatch::new(Tenant::default_tenant());
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"t"), (b"device", b"d1")];
        let ts = [
            989 * HOUR_MS,     // before the hour tier's retention
            990 * HOUR_MS + 5, // its hour starts before it too
            991 * HOUR_MS + 5, // kept as an hour
            998 * HOUR_MS + 1, // the hour holding the raw tier's oldest time: backfilled
            999 * HOUR_MS + 1, // the next hour: the ordinary path
            1_000 * HOUR_MS + 1,
        ];
        let samples: Vec<Sample> = ts.iter().map(|&t| Sample::new(t, 1.0)).collect();
        b.push_series(&mut l, &samples, None, &Limits::default())
            .unwrap();
        let s = split(&b, cut, 4);
        assert_eq!(s.too_old, 2);
        assert_eq!(s.live.as_ref().unwrap().samples_len(), 2);
        let old: Vec<i64> = s
            .old
            .values()
            .flat_map(|m| m.values().flatten().map(|x| x.timestamp))
            .collect();
        assert_eq!(old, vec![991 * HOUR_MS + 5, 998 * HOUR_MS + 1]);
        assert_eq!(s.span, Some((991 * HOUR_MS + 5, 998 * HOUR_MS + 1)));
    }
}
