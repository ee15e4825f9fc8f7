//! `/api/v1/alert-rules`: device rules created, listed, read, replaced and deleted, stored in
//! the metadata database (rules from `[[alerting.device_rules]]` are listed too, read-only).
//! A rule belongs to the tenant of the request that created it (`X-Scope-OrgID`); other
//! tenants neither see nor change it.

use super::read::success;
use super::{tenant_of, ApiError, ApiRequest, AppState};
use crate::device_rules::Source;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use strata_alert::device::{DeviceRule, DeviceRuleSpec};
use strata_meta::{MetaError, Put};
use strata_model::Tenant;

fn not_found(id: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no alert rule {id:?}"),
    )
    .into_response()
}

fn conflict(msg: String) -> Response {
    ApiError::new(StatusCode::CONFLICT, "conflict", msg).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    ApiError::internal(e.to_string()).into_response()
}

fn rule_json(spec: &DeviceRuleSpec, source: Source) -> Value {
    let mut v = serde_json::to_value(spec).expect("a rule serializes");
    v["source"] = match source {
        Source::Config => "config",
        Source::Api => "api",
    }
    .into();
    if let Some(o) = v.as_object_mut() {
        o.remove("tenant");
    }
    v
}

/// The request's rule, checked: `id` (from the path) wins over or fills in `rule_id`; the
/// tenant comes from the request.
fn parse_rule(req: &ApiRequest, id: Option<&str>, tenant: &Tenant) -> Result<DeviceRule, ApiError> {
    let mut v: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_data(format!("the body is not JSON: {e}")))?;
    let Some(o) = v.as_object_mut() else {
        return Err(ApiError::bad_data(
            "the body must be a JSON object (a rule)",
        ));
    };
    if let Some(id) = id {
        match o.get("rule_id") {
            Some(Value::String(b)) if b != id => {
                return Err(ApiError::bad_data(format!(
                    "rule_id {b:?} in the body differs from {id:?} in the path"
                )))
            }
            _ => {
                o.insert("rule_id".into(), id.into());
            }
        }
    }
    if o.contains_key("tenant") || o.contains_key("source") {
        return Err(ApiError::bad_data(
            "tenant and source are not set in the body (the tenant is X-Scope-OrgID's)",
        ));
    }
    o.insert("tenant".into(), tenant.as_str().into());
    let spec: DeviceRuleSpec =
        serde_json::from_value(v).map_err(|e| ApiError::bad_data(format!("invalid rule: {e}")))?;
    DeviceRule::new(spec).map_err(|e| ApiError::bad_data(format!("invalid rule: {e}")))
}

/// `GET /api/v1/alert-rules`: the tenant's rules.
pub async fn list(State(st): State<AppState>, req: ApiRequest) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let rules: Vec<Value> = st
        .devices
        .rules_of(&tenant)
        .iter()
        .map(|(r, src)| rule_json(&r.spec, *src))
        .collect();
    success(json!({ "rules": rules }))
}

/// `GET /api/v1/alert-rules/{id}`.
pub async fn get(State(st): State<AppState>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match st.devices.rule(&id) {
        Some((r, src)) if r.tenant == tenant => success(rule_json(&r.spec, src)),
        _ => not_found(&id),
    }
}

/// `POST /api/v1/alert-rules`: creates a rule (409 when its id exists).
pub async fn create(State(st): State<AppState>, req: ApiRequest) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let rule = match parse_rule(&req, None, &tenant) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    store(&st, rule, true).await
}

/// `PUT /api/v1/alert-rules/{id}`: creates or replaces rule `id`.
pub async fn replace(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let rule = match parse_rule(&req, Some(&id), &tenant) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    store(&st, rule, false).await
}

async fn store(st: &AppState, rule: DeviceRule, create_only: bool) -> Response {
    let id = rule.spec.rule_id.clone();
    if let Some((existing, source)) = st.devices.rule(&id) {
        if source == Source::Config {
            return conflict(format!(
                "rule {id:?} is defined in the configuration file; change it there"
            ));
        }
        if existing.tenant != rule.tenant {
            // Ids are one namespace; another tenant's rule is not shown.
            return conflict(format!("rule_id {id:?} is taken"));
        }
    }
    let put = match st
        .devices
        .meta()
        .put(&rule, create_only, strata_model::time::now_ms())
        .await
    {
        Ok(p) => p,
        Err(MetaError::Exists(_)) => {
            return conflict(format!("a rule with rule_id {id:?} exists already"))
        }
        Err(e) => return internal(e),
    };
    if let Err(e) = st.devices.reload().await {
        return internal(e);
    }
    let status = match put {
        Put::Created => StatusCode::CREATED,
        Put::Replaced => StatusCode::OK,
    };
    let body = json!({"status": "success", "data": rule_json(&rule.spec, Source::Api)});
    super::json_response(status, &body)
}

/// `DELETE /api/v1/alert-rules/{id}`: its alerts go with it (without a resolution).
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    let tenant = match tenant_of(&req.headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match st.devices.rule(&id) {
        Some((r, _)) if r.tenant != tenant => return not_found(&id),
        Some((_, Source::Config)) => {
            return conflict(format!(
                "rule {id:?} is defined in the configuration file; remove it there"
            ))
        }
        Some(_) => {}
        None => return not_found(&id),
    }
    match st.devices.meta().delete(&id).await {
        Ok(true) => {}
        Ok(false) => return not_found(&id),
        Err(e) => return internal(e),
    }
    if let Err(e) = st.devices.reload().await {
        return internal(e);
    }
    StatusCode::NO_CONTENT.into_response()
}
