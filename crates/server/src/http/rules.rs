//! `GET /api/v1/rules`, `GET /api/v1/alerts` and `POST /-/reload`, answered as Prometheus
//! answers them (Grafana lists Strata's rules and alerts as it lists a Prometheus's). Rules run
//! for one tenant (`alerting.tenant`): a request for another tenant sees none.

use super::read::success;
use super::{tenant_of, ApiError, ApiRequest, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use strata_alert::manager::{GroupView, RuleManager, RuleView};
use strata_alert::notify::payload::labels_json;
use strata_alert::state::{Alert, AlertState};
use strata_alert::Rule;
use strata_model::time::format_rfc3339_ms;

/// What Prometheus shows for a rule never evaluated.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// `GET /api/v1/rules` with Prometheus' filters: `type` (`alert` or `record`), `rule_name[]`,
/// `rule_group[]`, `file[]`, `exclude_alerts`.
pub async fn rules(State(st): State<AppState>, req: ApiRequest) -> Response {
    let p = req.params();
    let kind = match p.get("type") {
        None | Some("") => None,
        Some(k @ ("alert" | "record")) => Some(k == "alert"),
        Some(other) => {
            return ApiError::bad_data(format!(
                "invalid type {other:?}: expected \"alert\" or \"record\""
            ))
            .into_response()
        }
    };
    let exclude_alerts = match p.get("exclude_alerts") {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(other) => {
            return ApiError::bad_data(format!(
                "invalid exclude_alerts {other:?}: expected true or false"
            ))
            .into_response()
        }
    };
    let (names, groups, files) = (p.all("rule_name[]"), p.all("rule_group[]"), p.all("file[]"));
    let wanted = |v: &[&str], x: &str| v.is_empty() || v.contains(&x);
    let mut out = Vec::new();
    for g in views(&st, &req) {
        if !wanted(&groups, &g.name) || !wanted(&files, &g.file) {
            continue;
        }
        let rules: Vec<Value> = g
            .rules
            .iter()
            .filter(|r| kind.is_none_or(|alert| matches!(r.rule, Rule::Alerting(_)) == alert))
            .filter(|r| wanted(&names, r.rule.name()))
            .map(|r| rule_json(r, exclude_alerts))
            .collect();
        // Prometheus leaves out groups a filter emptied.
        if rules.is_empty() && (kind.is_some() || !names.is_empty()) {
            continue;
        }

        out.push(json!({
            "name": g.name,
            "file": g.file,
            "interval": g.interval_ms as f64 / 1000.0,
            "limit": g.limit,
            "rules": rules,
            "evaluationTime": g.duration.as_secs_f64(),
            "lastEvaluation": eval_time(g.last_eval),
        }));
    }
    success(json!({ "groups": out }))
}

/// `GET /api/v1/alerts`: every pending and firing alert, device rules' included.
pub async fn alerts(State(st): State<AppState>, req: ApiRequest) -> Response {
    let alerts: Vec<Value> = match tenant_of(&req.headers) {
        Ok(t) => active_alerts(&st, &t).iter().map(alert_json).collect(),
        Err(_) => Vec::new(),
    };
    success(json!({ "alerts": alerts }))
}

/// The pending and firing alerts of `tenant`: its rule files' (when the rules run for it),
/// its device rules' and anomaly events.
pub(super) fn active_alerts(st: &AppState, tenant: &strata_model::Tenant) -> Vec<Alert> {
    let mut out: Vec<Alert> = match &st.rules {
        Some(m) if tenant == RuleManager::tenant(m) => m
            .groups()
            .iter()
            .flat_map(|g| &g.rules)
            .flat_map(|r| active(&r.alerts))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    out.extend(st.devices.firing(tenant));
    out
}

/// `POST /-/reload`: reads the rule files again; a file that fails keeps the running rules
/// and answers 400 naming the problem.
pub async fn reload(State(st): State<AppState>) -> Response {
    let Some(m) = st.rules.clone() else {
        return (StatusCode::OK, "no rule files configured\n").into_response();
    };
    match tokio::task::spawn_blocking(move || m.reload()).await {
        Ok(Ok(n)) => (StatusCode::OK, format!("reloaded {n} rule groups\n")).into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!("reload failed, the previous rules keep running: {e}\n"),
        )
            .into_response(),
        Err(_) => ApiError::internal("the reload panicked").into_response(),
    }
}

/// The groups the request's tenant may see.
fn views(st: &AppState, req: &ApiRequest) -> Vec<GroupView> {
    match (&st.rules, tenant_of(&req.headers)) {
        (Some(m), Ok(t)) if &t == RuleManager::tenant(m) => m.groups(),
        _ => Vec::new(),
    }
}

fn active(alerts: &[Alert]) -> impl Iterator<Item = &Alert> {
    alerts.iter().filter(|a| a.state != AlertState::Inactive)
}

fn rule_json(r: &RuleView, exclude_alerts: bool) -> Value {
    let h = &r.health;
    let mut v = Map::new();
    v.insert("name".into(), r.rule.name().into());
    let health = match (&h.last_eval, &h.error) {
        (None, _) => "unknown",
        (Some(_), None) => "ok",
        (Some(_), Some(_)) => "err",
    };
    v.insert("health".into(), health.into());
    v.insert(
        "lastError".into(),
        h.error.clone().unwrap_or_default().into(),
    );
    v.insert("evaluationTime".into(), h.duration.as_secs_f64().into());
    v.insert("lastEvaluation".into(), eval_time(h.last_eval).into());
    match &r.rule {
        Rule::Recording(rec) => {
            v.insert("query".into(), rec.expr.clone().into());
            v.insert("labels".into(), json!(rec.labels));
            v.insert("type".into(), "recording".into());
        }
        Rule::Alerting(a) => {
            v.insert("query".into(), a.expr.clone().into());
            v.insert("duration".into(), (a.for_ms as f64 / 1000.0).into());
            v.insert(
                "keepFiringFor".into(),
                (a.keep_firing_for_ms as f64 / 1000.0).into(),
            );
            v.insert("labels".into(), json!(a.labels));
            v.insert("annotations".into(), json!(a.annotations));
            let state = r.state.unwrap_or(AlertState::Inactive);
            v.insert("state".into(), state.as_str().into());
            if !exclude_alerts {
                let alerts: Vec<Value> = active(&r.alerts).map(alert_json).collect();
                v.insert("alerts".into(), alerts.into());
            }
            v.insert("type".into(), "alerting".into());
        }
    }
    Value::Object(v)
}

fn alert_json(a: &Alert) -> Value {
    let mut v = json!({
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": format_rfc3339_ms(a.active_at),
        "value": go_exponent(a.value),
    });
    if let Some(t) = a.keep_firing_since {
        v["keepFiringSince"] = format_rfc3339_ms(t).into();
    }
    v
}

fn eval_time(t: Option<i64>) -> String {
    t.map_or_else(|| NEVER.to_string(), format_rfc3339_ms)
}

/// A value as Go's `strconv.FormatFloat(v, 'e', -1, 64)` writes it (`9.6e+01`), as the
/// alerts API shows values.
fn go_exponent(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{v:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

#[cfg(test)]
mod tests {
    use super::go_exponent;

    #[test]
    fn values_are_written_as_go_writes_them() {
        for (v, want) in [
            (1.0, "1e+00"),
            (96.0, "9.6e+01"),
            (0.00123, "1.23e-03"),
            (-2.5e120, "-2.5e+120"),
            (0.0, "0e+00"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(go_exponent(v), want, "{v}");
        }
    }
}
