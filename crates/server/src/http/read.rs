//! Read endpoints: export, series, label names and values, build info, flush, self-metrics.

use super::{json_response, tenant_of, ApiError, ApiRequest, AppState, Params};
use crate::selector::parse_selector;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeSet;
use std::fmt::Write;
use strata_model::time::now_ms;
use strata_model::{Labels, Matcher, SelectHints, Storage, Tenant};

/// Most samples one export may return before it fails with a clear error.
const EXPORT_MAX_SAMPLES: usize = 200_000_000;

/// The parts every read shares: tenant, parameters, time range.
pub(super) struct ReadRequest {
    pub(super) tenant: Tenant,
    pub(super) params: Params,
    pub(super) start: i64,
    pub(super) end: i64,
}

pub(super) fn read_request(req: &ApiRequest) -> Result<ReadRequest, ApiError> {
    let tenant = tenant_of(&req.headers)?;
    let params = req.params();
    let start = params.time("start", i64::MIN / 2)?;
    let end = params.time("end", now_ms() + 365 * 86_400_000)?;
    if end < start {
        return Err(ApiError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    Ok(ReadRequest {
        tenant,
        params,
        start,
        end,
    })
}

pub(super) fn matcher_sets(params: &Params, required: bool) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let raw = params.all("match[]");
    if raw.is_empty() && required {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let mut sets = Vec::new();
    for m in raw {
        sets.extend(parse_selector(m).map_err(ApiError::bad_data)?);
    }
    Ok(sets)
}

pub(super) fn storage_error(e: strata_model::StorageError) -> ApiError {
    match e {
        strata_model::StorageError::TooManySamples { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "execution", e.to_string())
        }
        strata_model::StorageError::EmptyMatch => ApiError::bad_data(e.to_string()),
        strata_model::StorageError::Io(_) => ApiError::internal(e.to_string()),
    }
}

pub(super) fn success(data: serde_json::Value) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "success", "data": data}),
    )
}

pub(super) fn labels_json(l: &Labels) -> serde_json::Value {
    serde_json::Value::Object(
        l.iter()
            .map(|l| (l.name.clone(), l.value.clone().into()))
            .collect(),
    )
}

/// `GET|POST /api/v1/export`: VictoriaMetrics' JSON-lines export, one line per series.
pub async fn export(State(st): State<AppState>, req: ApiRequest) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = read_request(&req)?;
        let sets = matcher_sets(&r.params, true)?;
        let hints = SelectHints {
            start: r.start,
            end: r.end,
            max_samples: Some(EXPORT_MAX_SAMPLES),
            fields: strata_model::Fields::All,
        };
        let mut seen = BTreeSet::new();
        let mut out = String::new();
        for set in sets {
            for s in st
                .engine
                .select(&r.tenant, &set, &hints)
                .map_err(storage_error)?
            {
                if !seen.insert(s.labels.clone()) {
                    continue;
                }
                let samples: Vec<_> = s.samples.iter().filter(|x| !x.is_stale()).collect();
                let _ = write!(out, "{{\"metric\":{},\"values\":[", labels_json(&s.labels));
                for (i, x) in samples.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { "," });
                    write_number(&mut out, x.value);
                }
                out.push_str("],\"timestamps\":[");
                for (i, x) in samples.iter().enumerate() {
                    let _ = write!(out, "{}{}", if i == 0 { "" } else { "," }, x.timestamp);
                }
                out.push_str("]}\n");
            }
        }
        let mut resp = Response::new(Body::from(out));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/stream+json"),
        );
        Ok(resp)
    };
    run().unwrap_or_else(|e| e.into_response())
}

/// JSON has no NaN or infinities: NaN is written as `null`, infinities as `"+Inf"` / `"-Inf"`,
/// finite values in their shortest round-trip form.
fn write_number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("null");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "\"+Inf\"" } else { "\"-Inf\"" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `GET|POST /api/v1/series`.
pub async fn series(State(st): State<AppState>, req: ApiRequest) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = read_request(&req)?;
        let mut all = BTreeSet::new();
        for set in matcher_sets(&r.params, true)? {
            all.extend(
                st.engine
                    .series(&r.tenant, &set, r.start, r.end)
                    .map_err(storage_error)?,
            );
        }
        Ok(success(all.iter().map(labels_json).collect()))
    };
    run().unwrap_or_else(|e| e.into_response())
}

/// Runs a names-or-values read once per `match[]` set (once unfiltered without any) and
/// answers the sorted union.
fn union_over_sets(
    sets: Vec<Vec<Matcher>>,
    read: impl Fn(&[Matcher]) -> Result<Vec<String>, strata_model::StorageError>,
) -> Result<Response, ApiError> {
    let mut all = BTreeSet::new();
    if sets.is_empty() {
        all.extend(read(&[]).map_err(storage_error)?);
    }
    for set in sets {
        all.extend(read(&set).map_err(storage_error)?);
    }
    Ok(success(all.into_iter().collect()))
}

/// `GET|POST /api/v1/labels`.
pub async fn labels(State(st): State<AppState>, req: ApiRequest) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = read_request(&req)?;
        let sets = matcher_sets(&r.params, false)?;
        union_over_sets(sets, |m| {
            st.engine.label_names(&r.tenant, m, r.start, r.end)
        })
    };
    run().unwrap_or_else(|e| e.into_response())
}

/// `GET /api/v1/label/<name>/values`.
pub async fn label_values(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: ApiRequest,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = read_request(&req)?;
        let sets = matcher_sets(&r.params, false)?;
        union_over_sets(sets, |m| {
            st.engine.label_values(&r.tenant, &name, m, r.start, r.end)
        })
    };
    run().unwrap_or_else(|e| e.into_response())
}

/// `GET /api/v1/status/buildinfo`, shaped as Prometheus'.
pub async fn buildinfo() -> Response {
    success(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": option_env!("STRATA_GIT_REVISION").unwrap_or("unknown"),
        "branch": "main",
        "buildUser": "strata",
        "buildDate": "unknown",
        "goVersion": "n/a (Rust)",
        "application": "strata",
    }))
}

/// `POST /api/v1/admin/flush`: returns once every acknowledged write is in blocks on disk.
pub async fn flush(State(st): State<AppState>) -> Response {
    match st.engine.flush().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::internal(format!("flush failed: {e}")).into_response(),
    }
}

/// `GET /metrics`: self-metrics in the Prometheus text format.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut out = String::with_capacity(8192);
    st.engine.render_metrics(&mut out);
    st.queries.render_metrics(&mut out);
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
