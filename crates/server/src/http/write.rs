//! Write endpoints: Prometheus remote write, Influx line protocol, JSON device events.
//!
//! Influx and JSON bodies may come compressed (gzip, deflate, zstd; see [`super::encoding`]).
//! Each decodes into one `WriteBatch`, hands it to the engine, and answers only once the stored
//! part is durable. Refused items are listed (the first few) and counted in the response; the
//! valid rest is stored.

use super::encoding::{decompress, DecompressError, Encoding};
use super::{json_response, tenant_of, ApiError, AppState, Params};
use crate::engine::WriteError;
use crate::metrics::{Protocol, Refusal};
use crate::shard::WriteAck;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_ingest::{influx, DecodeContext, Decoded, IngestError};

/// Bodies up to this size are decoded on the async worker that read them, in a few
/// milliseconds at most (handing each to the blocking pool cost remote write about 10% of its
/// throughput in `peers.sh`); larger ones on the blocking pool.
const INLINE_DECODE_BYTES: usize = 1 << 20;
use strata_model::time::now_ms;
use strata_model::WriteBatch;

/// Rejections quoted in an error message; the rest are only counted.
const QUOTED: usize = 10;

/// `POST /api/v1/write`: Prometheus remote write 1.0 (snappy-compressed protobuf).
pub async fn remote_write(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    ingest(st, headers, body, Protocol::RemoteWrite, None).await
}

/// `POST /write`, `POST /api/v2/write`: Influx line protocol, `precision` = ns (default), us, ms, s.
pub async fn influx(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match precision_of(q.as_deref()) {
        Ok(precision) => ingest(st, headers, body, Protocol::Influx, Some(precision)).await,
        Err(e) => e.into_response(),
    }
}

/// The `precision` parameter of an Influx write (ns when absent).
pub(super) fn precision_of(query: Option<&str>) -> Result<influx::Precision, ApiError> {
    let params = Params::parse(query, None);
    match params.get("precision") {
        None | Some("") => Ok(influx::Precision::Ns),
        Some(p) => influx::Precision::parse(p).ok_or_else(|| {
            ApiError::bad_data(format!("invalid precision {p:?}: expected ns, us, ms or s"))
        }),
    }
}

/// `POST /api/v1/events`: JSON device events (object, array or NDJSON).
pub async fn events(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    ingest(st, headers, body, Protocol::Events, None).await
}

/// Refuses content types and encodings the protocol does not speak; returns the body's
/// encoding (remote write's snappy is the decoder's business, so it counts as identity here).
pub(super) fn check_headers(headers: &HeaderMap, p: Protocol) -> Result<Encoding, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ctype = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let unsupported = |m: String| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_data", m);
    match p {
        Protocol::RemoteWrite => {
            if !ctype.is_empty() && ctype != "application/x-protobuf" {
                return Err(unsupported(format!(
                    "remote write needs Content-Type application/x-protobuf, got {ctype:?}"
                )));
            }
            if let Some(e) = encoding.filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("snappy"))
            {
                return Err(unsupported(format!(
                    "remote write needs Content-Encoding snappy, got {e:?}"
                )));
            }
            Ok(Encoding::Identity)
        }
        Protocol::Influx | Protocol::Events => {
            let Some(enc) = Encoding::from_header(encoding) else {
                return Err(unsupported(format!(
                    "unsupported Content-Encoding {:?}: send the body as {}",
                    encoding.unwrap_or(""),
                    super::encoding::SUPPORTED
                )));
            };
            let ok = match p {
                Protocol::Events => [
                    "",
                    "application/json",
                    "application/x-ndjson",
                    "application/jsonl",
                    "text/plain",
                ]
                .contains(&ctype.as_str()),
                _ => {
                    !ctype.starts_with("application/json")
                        && !ctype.starts_with("application/x-protobuf")
                }
            };
            if !ok {
                return Err(unsupported(format!(
                    "unsupported Content-Type {ctype:?} for this endpoint"
                )));
            }
            Ok(enc)
        }
    }
}

async fn ingest(
    st: AppState,
    headers: HeaderMap,
    body: Body,
    p: Protocol,
    precision: Option<influx::Precision>,
) -> Response {
    let counters = st.engine.counters.clone();
    counters.request(p);
    match ingest_inner(&st, &headers, body, p, precision).await {
        Ok(r) => r,
        Err(e) => {
            counters.rejected(p, e.kind_label(), 1);
            e.into_response()
        }
    }
}

impl ApiError {
    fn kind_label(&self) -> &'static str {
        match self.status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
            StatusCode::BAD_REQUEST => "malformed_body",
            StatusCode::REQUEST_TIMEOUT => "body_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        }
    }
}

/// The status of a write the engine did not acknowledge: 503 when retrying later can succeed.
/// Nothing of the batch is acknowledged (the log refused it, the pending-ingest budget is full,
/// or the server is stopping): 503, which senders retry.
fn write_error(e: WriteError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

async fn ingest_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    p: Protocol,
    precision: Option<influx::Precision>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(headers)?;
    let (decoded, batch) =
        read_and_decode(st, headers, body, p, precision, tenant, st.limits.clone()).await?;
    let counters = &st.engine.counters;
    for r in &decoded.rejected {
        counters.rejected(p, r.reason.kind(), 1);
    }
    counters.rejected(
        p,
        "other",
        decoded
            .rejected_total
            .saturating_sub(decoded.rejected.len()) as u64,
    );
    let (ack, unknown, unknown_samples) = if batch.is_empty() {
        (WriteAck::default(), Vec::new(), 0)
    } else {
        let o = crate::registry::write(&st.engine, &st.registry, batch, &st.limits)
            .await
            .map_err(|e| {
                if matches!(e, WriteError::Overloaded { .. }) {
                    st.http.refused(Refusal::PendingIngest);
                }
                write_error(e)
            })?;
        (o.ack, o.refused, o.refused_samples)
    };
    counters.rejected(p, "unknown_device", unknown_samples as u64);
    let s = &ack.stats;
    counters.samples(p, s.appended as u64 + s.overwritten as u64);
    counters.rejected(p, "series_limit", s.rejected_series_limit as u64);
    counters.rejected(p, "too_old", s.too_old as u64);
    let stored = s.appended + s.overwritten + s.duplicates + ack.duplicate_event_samples;
    let refused = decoded.rejected_total + s.rejected_series_limit + s.too_old + unknown_samples;
    if refused > 0 {
        let mut msgs: Vec<String> = decoded
            .rejected
            .iter()
            .take(QUOTED)
            .map(|r| r.to_string())
            .collect();
        let caps = st.engine.limiter.caps();
        for (r, what, option, cap) in [
            (
                s.refused.per_metric,
                "their metric",
                "max_series_per_metric",
                caps.per_metric,
            ),
            (
                s.refused.per_tenant,
                "the tenant",
                "max_series_per_tenant",
                caps.per_tenant,
            ),
            (
                s.refused.total,
                "the server",
                "max_series_total",
                caps.total,
            ),
        ] {
            if r.series > 0 {
                msgs.push(format!(
                    "{} samples of {} new series refused: {what} already has the most live series allowed (limits.{option} = {cap})",
                    r.samples, r.series
                ));
            }
        }
        if unknown_samples > 0 {
            msgs.push(format!(
                "{unknown_samples} samples refused: unknown or inactive device(s) {} (registry.unknown_devices = \"reject\")",
                unknown
                    .iter()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if s.too_old > 0 {
            msgs.push(format!(
                "{} samples refused: older than the retention",
                s.too_old
            ));
        }
        let more = decoded
            .rejected_total
            .saturating_sub(QUOTED.min(decoded.rejected.len()));
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        let msg = format!(
            "accepted {stored} samples, rejected {refused}: {}{tail}",
            msgs.join("; ")
        );
        return Err(ApiError::bad_data(msg).with_counts(stored, refused));
    }
    Ok(match p {
        Protocol::Events => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "status": "success",
                "accepted": stored,
                "rejected": 0,
                "duplicate_events": ack.duplicate_events,
            }),
        ),
        _ => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Reads a write's body (within `limits.max_body_bytes`, decompressed as its headers say)
/// and decodes it into a batch of `tenant` under `limits`: the valid part, and what was
/// refused. The body as a whole unreadable: 400, 413 past the size limit, 415 for a content
/// type or encoding the protocol does not speak.
pub(super) async fn read_and_decode(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    p: Protocol,
    precision: Option<influx::Precision>,
    tenant: strata_model::Tenant,
    limits: std::sync::Arc<strata_model::Limits>,
) -> Result<(Decoded, WriteBatch), ApiError> {
    let encoding = check_headers(headers, p)?;
    let body = super::body::read_limited(
        body,
        st.max_body_bytes,
        "limits.max_body_bytes",
        st.body_read_timeout,
    )
    .await?;
    let body = match encoding {
        Encoding::Identity => body,
        // Inflating up to the body limit is CPU work of its own: off the async workers.
        enc => {
            let limit = st.max_body_bytes;
            tokio::task::spawn_blocking(move || decompress(&body, enc, limit))
                .await
                .map_err(|e| ApiError::internal(format!("decompression task failed: {e}")))?
                .map(Bytes::from)
                .map_err(|e| match e {
                    DecompressError::TooLarge { .. } => super::body::too_large(e.to_string()),
                    DecompressError::Invalid { .. } => ApiError::bad_data(e.to_string()),
                })?
        }
    };
    let (max, body_len) = (st.max_body_bytes, body.len());
    let decode = move || {
        let mut batch = WriteBatch::new(tenant);
        let ctx = DecodeContext {
            limits: &limits,
            now_ms: now_ms(),
            max_decompressed_bytes: max,
        };
        let decoded = match (p, precision) {
            (Protocol::RemoteWrite, _) => {
                strata_ingest::remote_write::decode(&body, &ctx, &mut batch)
            }
            (Protocol::Influx, pr) => {
                influx::decode(&body, pr.unwrap_or(influx::Precision::Ns), &ctx, &mut batch)
            }
            (Protocol::Events, _) => strata_ingest::events::decode(&body, &ctx, &mut batch),
        };
        decoded.map(|d| (d, batch))
    };
    // A large body takes milliseconds to decode: off the async workers, so `/health` and
    // other requests answer meanwhile; a small one is quicker decoded than handed over.
    let decoded: Result<(Decoded, WriteBatch), IngestError> = if body_len > INLINE_DECODE_BYTES {
        tokio::task::spawn_blocking(decode)
            .await
            .map_err(|e| ApiError::internal(format!("decoding task failed: {e}")))?
    } else {
        decode()
    };
    decoded.map_err(|e| match e {
        IngestError::TooLarge { .. } => super::body::too_large(e.to_string()),
        e => ApiError::bad_data(e.to_string()),
    })
}
