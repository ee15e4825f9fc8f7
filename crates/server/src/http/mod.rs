//! The HTTP API: routes, shared state, parameters and the Prometheus-style error body.

mod alert_rules;
pub mod backfill;
mod body;
pub mod cache;
mod dashboard;
mod devices;
mod encoding;
mod json;
mod query;
mod read;
mod registry;
mod rollups;
mod rules;
pub mod serve;
mod stream;
mod write;

pub use query::QueryGate;
pub(crate) use rollups::{number as json_number, window_json};

use crate::engine::Engine;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use strata_model::{Limits, Tenant};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Storage and shards.
    pub engine: Arc<Engine>,
    /// Edge limits.
    pub limits: Arc<Limits>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most entries a series, label-names or label-values answer may hold.
    pub max_metadata_results: usize,
    /// Longest a request body may send nothing before it is abandoned.
    pub body_read_timeout: std::time::Duration,
    /// The PromQL engine, over `engine`.
    pub promql: strata_promql::Engine,
    /// The rules manager, when `[alerting]` names rule files.
    pub rules: Option<Arc<strata_alert::manager::RuleManager>>,
    /// The device rules.
    pub devices: Arc<crate::device_rules::DeviceRulesHub>,
    /// Admission of queries (`[query]` max_concurrency, max_queue).
    pub queries: Arc<QueryGate>,
    /// The range query result cache (`[query]` cache_bytes, cache_freshness).
    pub cache: Arc<cache::ResultCache>,
    /// What the HTTP layer's limits did, for `/metrics`.
    pub http: Arc<crate::metrics::HttpCounters>,
    /// Each tier's retention, for cutting backfills.
    pub retentions: backfill::Retentions,
    /// Self-metrics: every stage's, registered at start (see [`crate::metrics`]).
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The device registry (cache, policy, enrichment).
    pub registry: Arc<crate::registry::Registry>,
    /// When fleet status calls a device offline.
    pub fleet: FleetStatus,
    /// Where shadow deltas go (the MQTT sources).
    pub publishers: Arc<[Arc<dyn strata_sources::DevicePublisher>]>,
}

/// When fleet status calls a device offline (`[devices]`).
#[derive(Debug, Clone, Copy)]
pub struct FleetStatus {
    /// The expected interval of devices the registry gives none.
    pub expected_interval_ms: i64,
    /// Intervals without a reading after which a device is offline.
    pub offline_after: i64,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/write", post(write::remote_write))
        .route("/write", post(write::influx))
        .route("/api/v2/write", post(write::influx))
        .route("/api/v1/events", post(write::events))
        .route("/api/v1/export", get(read::export).post(read::export))
        .route("/api/v1/series", get(read::series).post(read::series))
        .route("/api/v1/labels", get(read::labels).post(read::labels))
        .route("/api/v1/label/{name}/values", get(read::label_values))
        .route("/api/v1/query", get(query::instant).post(query::instant))
        .route("/api/v1/query_range", get(query::range).post(query::range))
        .route(
            "/api/v1/format_query",
            get(query::format).post(query::format),
        )
        .route("/api/v1/metadata", get(query::metadata))
        .route(
            "/api/v1/rollups",
            get(rollups::rollups).post(rollups::rollups),
        )
        .route("/api/v1/devices/{id}/latest", get(rollups::latest))
        .route("/api/v1/devices", get(devices::fleet))
        .route(
            "/api/v1/devices/{id}/shadow",
            get(devices::get_shadow).patch(devices::patch_shadow),
        )
        .route(
            "/api/v1/devices/{id}/summary",
            get(rollups::summary).post(rollups::summary),
        )
        .route("/api/v1/status/buildinfo", get(read::buildinfo))
        .route("/api/v1/admin/flush", post(read::flush))
        .route("/api/v1/admin/backfill", post(backfill::backfill))
        .route("/api/v1/rules", get(rules::rules))
        .route("/api/v1/alerts", get(rules::alerts))
        .route(
            "/api/v1/registry/devices",
            get(registry::list).post(registry::create),
        )
        .route("/api/v1/registry/devices/import", post(registry::import))
        .route(
            "/api/v1/registry/devices/{id}",
            get(registry::get)
                .put(registry::replace)
                .delete(registry::delete),
        )
        .route(
            "/api/v1/alert-rules",
            get(alert_rules::list).post(alert_rules::create),
        )
        .route(
            "/api/v1/alert-rules/{id}",
            get(alert_rules::get)
                .put(alert_rules::replace)
                .delete(alert_rules::delete),
        )
        .route("/-/reload", post(rules::reload).put(rules::reload))
        .route("/api/v1/stream", get(stream::stream))
        .route("/", get(dashboard::index))
        .route("/ui/{*file}", get(dashboard::asset))
        .route("/health", get(|| async { "OK\n" }))
        .route("/metrics", get(read::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// An error answered as Prometheus does: `{"status":"error","errorType":..,"error":..}`, plus
/// `accepted` / `rejected` counts on writes that were partly stored.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    counts: Option<(usize, usize)>,
}

impl ApiError {
    /// An error with an explicit status and Prometheus `errorType`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            counts: None,
        }
    }

    /// A 400 `bad_data` error.
    pub fn bad_data(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_data", message)
    }

    /// A 500 `internal` error.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Adds how many samples were stored and refused.
    pub fn with_counts(mut self, accepted: usize, rejected: usize) -> ApiError {
        self.counts = Some((accepted, rejected));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "status": "error",
            "errorType": self.kind,
            "error": self.message,
        });
        if let Some((a, r)) = self.counts {
            body["accepted"] = a.into();
            body["rejected"] = r.into();
        }
        json_response(self.status, &body)
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The request's tenant: `X-Scope-OrgID`, else the default tenant. More than one such header
/// is refused: a proxy that appends its own would otherwise let the client's choose the tenant.
pub fn tenant_of(headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let mut values = headers.get_all("x-scope-orgid").iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_data(
            "more than one X-Scope-OrgID header: send exactly one tenant",
        ));
    }
    match first {
        None => Ok(Tenant::default_tenant()),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_data("X-Scope-OrgID header is not valid ASCII"))?;
            Tenant::new(s).map_err(|e| ApiError::bad_data(format!("X-Scope-OrgID header: {e}")))
        }
    }
}

/// Most entries one page of a device list holds (`limit`).
pub const MAX_PAGE: usize = 10_000;

impl Params {
    /// Parameter `name` when set and not empty.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).map(str::to_string)
    }

    /// A list's `limit` (default 100, at most [`MAX_PAGE`]).
    pub fn page_limit(&self) -> Result<usize, ApiError> {
        match self.get("limit").map(str::parse::<usize>) {
            None => Ok(100),
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_data(format!("limit must be 1 to {MAX_PAGE}"))),
        }
    }
}

/// What the read and query handlers take from a request: method, URL query, headers and body
/// (the form body of a POST carries parameters, as Grafana sends them).
pub struct ApiRequest {
    /// The HTTP method.
    pub method: axum::http::Method,
    /// The raw URL query.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body, read whole within the body limit.
    pub body: axum::body::Bytes,
}

impl ApiRequest {
    /// The URL query's parameters, plus the form body's for a POST.
    pub fn params(&self) -> Params {
        Params::from_request(&self.method, self.query.as_deref(), &self.body)
    }
}

/// Largest form body a read or query request may carry (axum's default limit, kept).
const MAX_FORM_BYTES: usize = 2 << 20;

impl axum::extract::FromRequest<AppState> for ApiRequest {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, st: &AppState) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let body = body::read_limited(
            body,
            MAX_FORM_BYTES,
            "the most a read or query request's form may carry",
            st.body_read_timeout,
        )
        .await
        .map_err(IntoResponse::into_response)?;
        let (method, headers) = (parts.method, parts.headers);
        let query = parts.uri.query().map(str::to_owned);
        Ok(ApiRequest {
            method,
            query,
            headers,
            body,
        })
    }
}

/// Latest time a client may name, in milliseconds (about 285,000 years after 1970): 2^53, so
/// every accepted time is exact as an `f64` (PromQL's `time()`), and sums and differences of a
/// few times and durations stay far inside `i64`.
pub const MAX_API_TIME_MS: i64 = 1 << 53;

/// Earliest time a client may name, in milliseconds (see [`MAX_API_TIME_MS`]).
pub const MIN_API_TIME_MS: i64 = -MAX_API_TIME_MS;

/// Query-string and form parameters, in order, with repeats (`match[]`).
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the URL query and, for form posts, the body.
    pub fn parse(query: Option<&str>, form: Option<&[u8]>) -> Params {
        let mut v: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            v.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if let Some(f) = form {
            v.extend(form_urlencoded::parse(f).into_owned());
        }
        Params(v)
    }

    /// The parameters of a request: its URL query, plus the form body of a POST (as Grafana
    /// sends them).
    pub fn from_request(method: &axum::http::Method, query: Option<&str>, body: &[u8]) -> Params {
        let form = (*method == axum::http::Method::POST).then_some(body);
        Params::parse(query, form)
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A time parameter (RFC 3339 or Unix seconds) or `default`; a time outside
    /// [`MIN_API_TIME_MS`, `MAX_API_TIME_MS`] is refused, so later arithmetic cannot overflow.
    pub fn time(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(s) => match strata_model::time::parse_api_time_ms(s) {
                Some(t) if (MIN_API_TIME_MS..=MAX_API_TIME_MS).contains(&t) => Ok(t),
                Some(_) => Err(ApiError::bad_data(format!(
                    "invalid parameter {name:?}: {s:?} is outside the supported time range \
                     (Unix seconds from {} to {})",
                    MIN_API_TIME_MS / 1000,
                    MAX_API_TIME_MS / 1000
                ))),
                None => Err(ApiError::bad_data(format!(
                    "invalid parameter {name:?}: cannot parse {s:?} to a valid timestamp"
                ))),
            },
        }
    }
}
