//! `/api/v1/registry/devices`: the device registry's REST API (create, read, replace, delete,
//! list with filters and cursors, bulk import as NDJSON or CSV). A device belongs to the tenant
//! of the request (`X-Scope-OrgID`); other tenants neither see nor change it. Every change is
//! visible to ingest (enrichment, the unknown-device policy) when the answer comes.

use super::read::success;
use super::{tenant_of, ApiError, ApiRequest, AppState};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use strata_meta::registry::{Device, Filter, PutMode};
use strata_meta::MetaError;
use strata_model::time::now_ms;

fn error(e: MetaError) -> Response {
    match e {
        MetaError::DeviceExists(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()).into_response()
        }
        MetaError::NoDevice(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()).into_response()
        }
        MetaError::Invalid(m) => ApiError::bad_data(format!("invalid device: {m}")).into_response(),
        e => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The body's device: `id` from the path fills in or must equal the body's.
fn parse(body: &[u8], id: Option<&str>) -> Result<Device, ApiError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_data(format!("the body is not JSON: {e}")))?;
    let Some(o) = v.as_object_mut() else {
        return Err(ApiError::bad_data(
            "the body must be a JSON object (a device)",
        ));
    };
    if let Some(id) = id {
        match o.get("id") {
            Some(Value::String(b)) if b != id => {
                return Err(ApiError::bad_data(format!(
                    "id {b:?} in the body differs from {id:?} in the path"
                )))
            }
            _ => {
                o.insert("id".into(), id.into());
            }
        }
    }
    device_from(v).map_err(|e| ApiError::bad_data(format!("invalid device: {e}")))
}

/// A device from JSON; an error names the field it is about.
fn device_from(v: Value) -> Result<Device, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

async fn changed(st: &AppState) {
    if let Err(e) = st.registry.reload().await {
        tracing::warn!("device registry cache not reloaded: {e}");
    }
}

/// `POST /api/v1/registry/devices`: registers a device (409 when its id exists).
pub async fn create(State(st): State<AppState>, req: ApiRequest) -> Response {
    put(st, req, None, PutMode::Create).await
}

/// `PUT /api/v1/registry/devices/{id}`: creates or replaces device `id`.
pub async fn replace(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    put(st, req, Some(id), PutMode::Upsert).await
}

async fn put(st: AppState, req: ApiRequest, id: Option<String>, mode: PutMode) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let device = match parse(&req.body, id.as_deref()) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match st
        .registry
        .meta()
        .put_device(tenant.as_str(), &device, mode, now_ms())
        .await
    {
        Ok(created) => {
            changed(&st).await;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({"status": "success", "data": device});
            (status, axum::Json(body)).into_response()
        }
        Err(e) => error(e),
    }
}

/// `GET /api/v1/registry/devices/{id}`.
pub async fn get(State(st): State<AppState>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match st.registry.meta().device(tenant.as_str(), &id).await {
        Ok(Some(d)) => success(json!(d)),
        Ok(None) => error(MetaError::NoDevice(id)),
        Err(e) => error(e),
    }
}

/// `DELETE /api/v1/registry/devices/{id}`.
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match st.registry.meta().delete_device(tenant.as_str(), &id).await {
        Ok(true) => {
            changed(&st).await;
            success(json!({"deleted": id}))
        }
        Ok(false) => error(MetaError::NoDevice(id)),
        Err(e) => error(e),
    }
}

/// `GET /api/v1/registry/devices?site=&type=&region=&model=&active=&limit=&cursor=`: a page
/// of the tenant's devices by id; `next_cursor` fetches the next.
pub async fn list(State(st): State<AppState>, req: ApiRequest) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let p = req.params();
    let active = match p.get("active") {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return ApiError::bad_data(format!("active={v:?}: expected true or false"))
                .into_response()
        }
    };
    let limit = match p.page_limit() {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let filter = Filter {
        site: p.text("site"),
        device_type: p.text("type"),
        region: p.text("region"),
        model: p.text("model"),
        active,
    };
    let cursor = p.text("cursor");
    match st
        .registry
        .meta()
        .list_devices(tenant.as_str(), &filter, limit, cursor.as_deref())
        .await
    {
        Ok(page) => success(json!({"devices": page.devices, "next_cursor": page.next})),
        Err(e) => error(e),
    }
}

/// `POST /api/v1/registry/devices/import`: many devices at once, all or nothing, as NDJSON
/// (one device object per line; `Content-Type: application/x-ndjson`, the default) or CSV
/// (`text/csv`: a header row naming fields, `labels.<name>` for free labels).
pub async fn import(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let tenant = match tenant_of(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let body = match super::body::read_limited(
        body,
        st.max_body_bytes,
        "limits.max_body_bytes",
        st.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let devices = match ctype.as_str() {
        "text/csv" => from_csv(&body),
        "" | "application/x-ndjson" | "application/jsonl" | "application/json" => {
            from_ndjson(&body)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_data",
            format!("unsupported Content-Type {other:?}: send application/x-ndjson or text/csv"),
        )),
    };
    let devices = match devices {
        Ok(d) if d.is_empty() => {
            return ApiError::bad_data("the body holds no devices").into_response()
        }
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let mut ids = std::collections::HashSet::new();
    if let Some(d) = devices.iter().find(|d| !ids.insert(d.id.as_str())) {
        return ApiError::bad_data(format!("device {:?} appears twice", d.id)).into_response();
    }
    match st
        .registry
        .meta()
        .import_devices(tenant.as_str(), &devices, now_ms())
        .await
    {
        Ok(created) => {
            changed(&st).await;
            success(
                json!({"imported": devices.len(), "created": created, "replaced": devices.len() - created}),
            )
        }
        Err(e) => error(e),
    }
}

fn from_ndjson(body: &[u8]) -> Result<Vec<Device>, ApiError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let d = serde_json::from_slice(line)
            .map_err(|e| e.to_string())
            .and_then(device_from)
            .map_err(|e| ApiError::bad_data(format!("line {}: {e}", i + 1)))?;
        out.push(d);
    }
    Ok(out)
}

fn from_csv(body: &[u8]) -> Result<Vec<Device>, ApiError> {
    let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(body);
    let headers = r
        .headers()
        .map_err(|e| ApiError::bad_data(format!("CSV header: {e}")))?
        .clone();
    let known = [
        "id",
        "name",
        "type",
        "model",
        "firmware",
        "site",
        "region",
        "location",
        "owner",
        "provisioned",
        "active",
        "expected_interval",
    ];
    if let Some(h) = headers
        .iter()
        .find(|h| !known.contains(h) && !h.starts_with("labels."))
    {
        return Err(ApiError::bad_data(format!(
            "CSV column {h:?} is not a device field ({}) or labels.<name>",
            known.join(", ")
        )));
    }
    if !headers.iter().any(|h| h == "id") {
        return Err(ApiError::bad_data("CSV has no id column"));
    }
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| ApiError::bad_data(format!("CSV line {line}: {e}")))?;
        let mut o = serde_json::Map::new();
        let mut labels = serde_json::Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            if v.is_empty() {
                continue;
            }
            if let Some(l) = h.strip_prefix("labels.") {
                labels.insert(l.into(), v.into());
            } else if h == "active" {
                let a = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(ApiError::bad_data(format!(
                            "CSV line {line}: active {v:?} is not true or false"
                        )))
                    }
                };
                o.insert("active".into(), a.into());
            } else {
                o.insert(h.into(), v.into());
            }
        }
        if !labels.is_empty() {
            o.insert("labels".into(), Value::Object(labels));
        }
        let d = device_from(Value::Object(o))
            .map_err(|e| ApiError::bad_data(format!("CSV line {line}: {e}")))?;
        out.push(d);
    }
    Ok(out)
}
