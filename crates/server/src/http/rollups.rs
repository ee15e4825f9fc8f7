//! Rollup and device endpoints: `/api/v1/rollups`, `/api/v1/devices/<id>/latest` and
//! `/api/v1/devices/<id>/summary`, answered from the rollup windows, not from raw samples.

use super::read::{labels_json, matcher_sets, read_request, storage_error, success, ReadRequest};
use super::{tenant_of, ApiError, ApiRequest, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use strata_model::time::now_ms;
use strata_model::{Labels, Matcher, METRIC_NAME};
use strata_stream::exact::ExactSum;
use strata_stream::stage::{Tier, WindowView};

/// Most windows one request may return.
const MAX_WINDOWS: usize = 5_000_000;

/// Default span of a rollup read without `start`.
const DEFAULT_SPAN_MS: i64 = 3_600_000;

pub(crate) fn number(v: f64) -> Value {
    // JSON has no NaN or infinities: they are written as Prometheus writes them, as strings.
    if v.is_finite() {
        json!(v)
    } else {
        json!(strata_promql::format_value(v))
    }
}

pub(crate) fn window_json(w: &WindowView) -> Value {
    let f = &w.figures;
    let mut o = Map::new();
    o.insert("start".into(), json!(w.start));
    o.insert("end".into(), json!(w.end));
    o.insert("count".into(), json!(f.count));
    o.insert("sum".into(), number(f.sum));
    o.insert("min".into(), number(f.min));
    o.insert("max".into(), number(f.max));
    o.insert("mean".into(), number(f.mean()));
    o.insert("stddev".into(), number(f.stddev()));
    o.insert("first".into(), number(f.first.value));
    o.insert("first_timestamp".into(), json!(f.first.timestamp));
    o.insert("last".into(), number(f.last.value));
    o.insert("last_timestamp".into(), json!(f.last.timestamp));
    o.insert("increase".into(), number(f.increase));
    for (q, v) in &f.quantiles {
        o.insert(format!("p{}", q * 100.0), number(*v));
    }
    o.insert("state".into(), json!(w.state.as_str()));
    o.insert("revision".into(), json!(w.revision));
    Value::Object(o)
}

fn rollups_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unavailable",
        "rollups are disabled ([rollups] enabled = false)",
    )
}

/// A read of rollups: tenant, parameters and range (default: the hour up to now).
fn rollup_request(st: &AppState, req: &ApiRequest) -> Result<ReadRequest, ApiError> {
    if !st.engine.rollups_enabled() {
        return Err(rollups_disabled());
    }
    let mut r = read_request(req)?;
    if r.params.get("end").is_none() {
        r.end = now_ms();
    }
    if r.params.get("start").is_none() {
        r.start = r.end - DEFAULT_SPAN_MS;
    }
    if r.end < r.start {
        return Err(ApiError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    Ok(r)
}

/// The tier a request names with `tier=1m|1h|1d`; by default the windows for ranges up to a day
/// within their retention, else the hours (see `RollupStage::tier_for`).
fn tier_of(st: &AppState, r: &ReadRequest) -> Result<Tier, ApiError> {
    match r.params.get("tier") {
        None => Ok(st.engine.rollup_tier_for(r.start, r.end)),
        Some(t) => Tier::parse(t).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid parameter \"tier\": expected 1m, 1h or 1d, got {t:?}"
            ))
        }),
    }
}

/// `GET|POST /api/v1/rollups?match[]=&start=&end=&tier=`: every window of the matching series
/// that overlaps the range (default: the last hour), with its state and revision, from the
/// windows (`tier=1m`, the default), the 1-hour tier (`tier=1h`) or the 1-day tier (`tier=1d`).
pub async fn rollups(State(st): State<AppState>, req: ApiRequest) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = rollup_request(&st, &req)?;
        let tier = tier_of(&st, &r)?;
        let sets = matcher_sets(&r.params, true)?;
        let mut seen = std::collections::BTreeMap::new();
        let mut windows = 0usize;
        for set in sets {
            for (labels, ws) in st
                .engine
                .rollups(tier, &r.tenant, &set, r.start, r.end)
                .map_err(storage_error)?
            {
                if seen.contains_key(&labels) {
                    continue;
                }
                windows += ws.len();
                if windows > MAX_WINDOWS {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "execution",
                        format!("the request would return more than {MAX_WINDOWS} windows; narrow match[] or the time range"),
                    ));
                }
                seen.insert(labels, ws);
            }
        }
        let data: Vec<Value> = seen
            .iter()
            .map(|(l, ws)| {
                json!({
                    "metric": labels_json(l),
                    "windows": ws.iter().map(window_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(with_tier(success(Value::Array(data)), tier))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// Says which tier answered, in the `Strata-Tiers` header (as query answers do).
fn with_tier(mut resp: Response, tier: Tier) -> Response {
    resp.headers_mut().insert(
        "strata-tiers",
        axum::http::HeaderValue::from_static(tier.as_str()),
    );
    resp
}

fn device_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || id.len() > 2048 {
        return Err(ApiError::bad_data("device id must be 1 to 2048 bytes long"));
    }
    Ok(id)
}

/// `GET /api/v1/devices/<id>/latest`: the device's last value and timestamp of every metric.
pub async fn latest(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    st.engine.synced_shadows().await;
    let run = || -> Result<Response, ApiError> {
        let tenant = tenant_of(&headers)?;
        let id = device_id(&id)?;
        let readings = st.engine.device_latest(&tenant, id);
        if readings.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no readings of device {id:?}"),
            ));
        }
        let data: Vec<Value> = readings
            .iter()
            .map(|(l, s)| {
                json!({
                    "metric": labels_json(l),
                    "value": number(s.value),
                    "timestamp": s.timestamp,
                })
            })
            .collect();
        Ok(success(json!({"device": id, "metrics": data})))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// What a summary accumulates over a device metric's windows.
#[derive(Default)]
struct Summary {
    count: u64,
    sum: ExactSum,
    min: f64,
    max: f64,
    current: Option<(i64, f64)>,
    windows: usize,
    provisional: usize,
}

impl Summary {
    fn add(&mut self, w: &WindowView) {
        let f = &w.figures;
        if self.windows == 0 {
            (self.min, self.max) = (f.min, f.max);
        }
        self.windows += 1;
        self.count += f.count;
        self.sum.add(f.sum);
        self.min = self.min.min(f.min);
        self.max = self.max.max(f.max);
        if self.current.is_none_or(|(t, _)| f.last.timestamp >= t) {
            self.current = Some((f.last.timestamp, f.last.value));
        }
        if w.state == strata_stream::window::WindowState::Provisional {
            self.provisional += 1;
        }
    }
}

/// `GET /api/v1/devices/<id>/summary?metric=&start=&end=&tier=`: current, average, min, max and
/// count of each metric of the device (or of `metric`) over the range (default: the last hour),
/// answered from rollup windows of the tier (`1m` by default, `1h`, `1d`) overlapping the range.
pub async fn summary(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: ApiRequest,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = rollup_request(&st, &req)?;
        let tier = tier_of(&st, &r)?;
        let id = device_id(&id)?;
        let mut matchers = vec![Matcher::equal("device", id)];
        if let Some(m) = r.params.get("metric").filter(|m| !m.is_empty()) {
            matchers.push(Matcher::equal(METRIC_NAME, m));
        }
        let series = st
            .engine
            .rollups(tier, &r.tenant, &matchers, r.start, r.end)
            .map_err(storage_error)?;
        let data: Vec<Value> = series
            .iter()
            .filter(|(_, ws)| !ws.is_empty())
            .map(|(l, ws): &(Labels, Vec<WindowView>)| {
                let mut s = Summary::default();
                ws.iter().for_each(|w| s.add(w));
                let (t, v) = s.current.unwrap_or_default();
                json!({
                    "metric": labels_json(l),
                    "current": {"value": number(v), "timestamp": t},
                    "average": number(s.sum.value() / s.count as f64),
                    "min": number(s.min),
                    "max": number(s.max),
                    "count": s.count,
                    "windows": s.windows,
                    "provisional_windows": s.provisional,
                })
            })
            .collect();
        Ok(with_tier(
            success(json!({
                "device": id, "start": r.start, "end": r.end, "tier": tier.as_str(), "metrics": data
            })),
            tier,
        ))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}
