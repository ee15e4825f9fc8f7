//! Write endpoints: Prometheus remote write, Influx line protocol, JSON device events.
//!
//! Each decodes into one `WriteBatch`, hands it to the engine, and answers only once the stored
//! part is durable. Refused items are listed (the first few) and counted in the response; the
//! valid rest is stored.

use super::{json_response, tenant_of, ApiError, AppState, Params};
use crate::metrics::Protocol;
use crate::shard::WriteAck;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_ingest::{influx, DecodeContext, Decoded, IngestError};
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
    let params = Params::parse(q.as_deref(), None);
    let precision = match params.get("precision") {
        None | Some("") => influx::Precision::Ns,
        Some(p) => match influx::Precision::parse(p) {
            Some(p) => p,
            None => {
                return ApiError::bad_data(format!(
                    "invalid precision {p:?}: expected ns, us, ms or s"
                ))
                .into_response()
            }
        },
    };
    ingest(st, headers, body, Protocol::Influx, Some(precision)).await
}

/// `POST /api/v1/events`: JSON device events (object, array or NDJSON).
pub async fn events(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    ingest(st, headers, body, Protocol::Events, None).await
}

/// Refuses content types and encodings the protocol does not speak.
fn check_headers(headers: &HeaderMap, p: Protocol) -> Result<(), ApiError> {
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
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let unsupported = |m: String| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_data", m);
    match p {
        Protocol::RemoteWrite => {
            if !ctype.is_empty() && ctype != "application/x-protobuf" {
                return Err(unsupported(format!(
                    "remote write needs Content-Type application/x-protobuf, got {ctype:?}"
                )));
            }
            if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("snappy") {
                return Err(unsupported(format!(
                    "remote write needs Content-Encoding snappy, got {encoding:?}"
                )));
            }
        }
        Protocol::Influx | Protocol::Events => {
            if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
                return Err(unsupported(format!(
                    "unsupported Content-Encoding {encoding:?}: send the body uncompressed"
                )));
            }
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
        }
    }
    Ok(())
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
            _ => "internal",
        }
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_data",
                format!("request body is larger than the limit of {limit} bytes (limits.max_body_bytes)"),
            )
        } else {
            ApiError::bad_data(format!("cannot read request body: {e}"))
        }
    })
}

async fn ingest_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    p: Protocol,
    precision: Option<influx::Precision>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(headers)?;
    check_headers(headers, p)?;
    let body = read_body(body, st.max_body_bytes).await?;
    let mut batch = WriteBatch::new(tenant);
    let ctx = DecodeContext {
        limits: &st.limits,
        now_ms: now_ms(),
        max_decompressed_bytes: st.max_body_bytes,
    };
    let decoded: Result<Decoded, IngestError> = match (p, precision) {
        (Protocol::RemoteWrite, _) => strata_ingest::remote_write::decode(&body, &ctx, &mut batch),
        (Protocol::Influx, pr) => {
            influx::decode(&body, pr.unwrap_or(influx::Precision::Ns), &ctx, &mut batch)
        }
        (Protocol::Events, _) => strata_ingest::events::decode(&body, &ctx, &mut batch),
    };
    let decoded = decoded.map_err(|e| ApiError::bad_data(e.to_string()))?;
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
    let ack = if batch.is_empty() {
        WriteAck::default()
    } else {
        st.engine
            .write(batch)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let s = &ack.stats;
    counters.samples(p, s.appended as u64 + s.overwritten as u64);
    counters.rejected(p, "series_limit", s.rejected_series_limit as u64);
    counters.rejected(p, "too_old", s.too_old as u64);
    let stored = s.appended + s.overwritten + s.duplicates + ack.duplicate_event_samples;
    let refused = decoded.rejected_total + s.rejected_series_limit + s.too_old;
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
