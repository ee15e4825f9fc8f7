//! Reading a request body whole, within a size limit and an inactivity timeout.
//!
//! The limit holds whether or not the client declared a length (chunked bodies are counted as
//! they arrive); a body that stalls is abandoned rather than holding its connection for ever.
//! Just past the limit the rest is read and discarded (a bounded amount), so that a client
//! still sending gets the 413 instead of a reset connection.

use super::ApiError;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use std::time::Duration;

/// How much of an oversized body is read and discarded before answering, so a client that
/// overshot the limit a little sees the 413 (as Go's server does; more is not worth reading).
const DRAIN_BYTES: usize = 256 << 10;

/// A 413: the body, as sent or decompressed, is over `limits.max_body_bytes`.
pub fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bad_data", message)
}

/// Reads `body` whole: 413 past `limit` bytes (the message names the limit as `limit_name`),
/// 408 when nothing arrives for `idle`.
pub async fn read_limited(
    body: Body,
    limit: usize,
    limit_name: &str,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        too_large(format!(
            "request body is larger than the limit of {limit} bytes ({limit_name})"
        ))
    };
    // A declared length past what would be drained is refused before reading anything.
    let declared = http_body::Body::size_hint(&body).exact();
    if declared.is_some_and(|n| n > (limit + DRAIN_BYTES) as u64) {
        return Err(too_large());
    }
    let mut body = body;
    // A body that arrives in one frame is passed on without a copy.
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let (mut len, mut over) = (0usize, 0usize);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "bad_data",
                    format!(
                        "request body: nothing received for {} ms (server.body_read_timeout)",
                        idle.as_millis()
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_data(format!("cannot read request body: {e}")))
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > limit {
            over = len - limit;
            if over > DRAIN_BYTES {
                break;
            }
            continue;
        }
        if first.is_none() && rest.is_empty() {
            first = Some(data);
        } else {
            if let Some(f) = first.take() {
                rest.extend_from_slice(&f);
            }
            rest.extend_from_slice(&data);
        }
    }
    if over > 0 {
        return Err(too_large());
    }
    Ok(match first {
        Some(f) => f,
        None => Bytes::from(rest),
    })
}
