//! PromQL endpoints shaped like Prometheus's: `/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/format_query`, `/api/v1/metadata`.
//!
//! Queries are admitted by a [`QueryGate`] (`query.max_concurrency` at once, `query.max_queue`
//! waiting, beyond that 503) and evaluated on the blocking pool, never on the async workers,
//! so `/health`, `/metrics` and writes answer while they run.

use super::cache::{Answer, Merged, Outcome};
use super::json::{write_labels, write_point, write_seconds, write_str};
use super::{json_response, tenant_of, ApiError, ApiRequest, AppState, Params};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_model::time::{now_ms, parse_duration_ms};
use strata_model::{Resolution, Resolutions, Tenant};
use strata_promql::{Error, QueryContext, QueryOutput, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission of queries: at most `max_concurrency` evaluated at once and `max_queue` waiting
/// for a turn; a query beyond both is refused at once with 503 `unavailable`, and one that
/// waits past its timeout fails with 503 `timeout`.
pub struct QueryGate {
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    max_queue: usize,
    queued: AtomicUsize,
    running: Arc<AtomicUsize>,
    refused: AtomicU64,
    /// Queries answered in part by each tier (raw, 1m, 1h, 1d).
    by_tier: [AtomicU64; Resolution::ALL.len()],
}

impl QueryGate {
    /// A gate for `max_concurrency` queries at once (at least one) and `max_queue` waiting.
    pub fn new(max_concurrency: usize, max_queue: usize) -> QueryGate {
        let max_concurrency = max_concurrency.max(1);
        QueryGate {
            permits: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            max_queue,
            queued: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            refused: AtomicU64::new(0),
            by_tier: Default::default(),
        }
    }

    /// A turn to evaluate, waiting at most `wait` in the queue.
    async fn admit(&self, wait: Duration) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "too many queries: {} running (query.max_concurrency) and {} waiting (query.max_queue); retry later",
                    self.max_concurrency, self.max_queue
                ),
            ));
        }
        /// Leaves the queue however the wait ends (the client may go away while waiting).
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _leave = Leave(&self.queued);
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ApiError::internal("the query gate is closed")),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "query timed out in queue: {} queries were running (query.max_concurrency)",
                    self.max_concurrency
                ),
            )),
        }
    }

    /// A turn for work as heavy as a query that is not one (an export), waiting at most `wait`;
    /// held, and counted as running, until the returned value is dropped.
    pub(super) async fn turn(&self, wait: Duration) -> Result<Turn, ApiError> {
        let permit = self.admit(wait).await?;
        Ok(Turn(permit, Running::enter(&self.running)))
    }

    /// Counts a query answered by `tiers`.
    fn answered(&self, tiers: Resolutions) {
        for r in tiers.iter() {
            self.by_tier[r as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl crate::metrics::Stage for QueryGate {
    // Running and waiting queries, those refused, and queries per tier.
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
        out.counters(
            "strata_query_tier_total",
            "Queries answered (in part) by each storage tier.",
            Resolution::ALL.map(|r| {
                (
                    [("tier", r.name())],
                    self.by_tier[r as usize].load(Ordering::Relaxed),
                )
            }),
        );
        out.gauge(
            "strata_query_running",
            "Queries being evaluated.",
            self.running.load(Ordering::Relaxed),
        );
        out.gauge(
            "strata_query_queued",
            "Queries waiting for a turn.",
            self.queued.load(Ordering::Relaxed),
        );
        out.counter(
            "strata_query_refused_total",
            "Queries refused because the queue was full.",
            self.refused.load(Ordering::Relaxed),
        );
    }
}

/// A turn given by [`QueryGate::turn`].
pub(super) struct Turn(
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] Running,
);

/// Counts a query as running while it is evaluated (until the evaluation itself returns, not
/// when its client goes away).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(n: &Arc<AtomicUsize>) -> Running {
        n.fetch_add(1, Ordering::Relaxed);
        Running(n.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A duration parameter: a Prometheus duration (`15s`) or a number of seconds (`15`, `0.5`).
fn duration_param(p: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(s) = p.get(name).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(secs) = s.parse::<f64>() {
        let ms = secs * 1000.0;
        if !ms.is_finite() || ms.abs() > 9.2e18 {
            return Err(ApiError::bad_data(format!(
                "invalid parameter {name:?}: cannot parse {s:?} to a valid duration. It overflows int64"
            )));
        }
        return Ok(Some(ms.round() as i64));
    }
    parse_duration_ms(s).map(Some).ok_or_else(|| {
        ApiError::bad_data(format!(
            "invalid parameter {name:?}: cannot parse {s:?} to a valid duration"
        ))
    })
}

fn query_param(p: &Params) -> Result<String, ApiError> {
    match p.get("query") {
        Some(q) if !q.trim().is_empty() => Ok(q.to_string()),
        _ => Err(ApiError::bad_data(
            "invalid parameter \"query\": query is empty",
        )),
    }
}

fn engine_error(e: Error) -> ApiError {
    let status = match e.error_type() {
        "bad_data" => StatusCode::BAD_REQUEST,
        "execution" => StatusCode::UNPROCESSABLE_ENTITY,
        "timeout" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        // Prometheus answers a query whose client went away with 499.
        "canceled" => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.error_type(), e.to_string())
}

/// Sets the flag when dropped: the handler future is dropped when the client goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs a query on the blocking pool once the gate admits it, cancelling it if the client
/// disconnects. Its time in the queue counts against its timeout (`timeout`).
async fn run<R: Send + 'static>(
    st: &AppState,
    (ctx, timeout): (QueryContext, Duration),
    f: impl FnOnce(&QueryContext) -> Result<R, Error> + Send + 'static,
) -> Result<R, ApiError> {
    let queued = Instant::now();
    let permit = st.queries.admit(timeout).await?;
    let flag = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(flag.clone());
    let ctx = ctx
        .with_timeout(timeout.saturating_sub(queued.elapsed()))
        .with_cancel(flag);
    let running = st.queries.running.clone();
    let res = tokio::task::spawn_blocking(move || {
        // The turn is held until the evaluation returns, even if the client has gone.
        let _turn = (permit, Running::enter(&running));
        f(&ctx)
    })
    .await
    .map_err(|e| ApiError::internal(format!("query task failed: {e}")))?;
    // Finished normally: disarm.
    std::mem::forget(guard);
    res.map_err(engine_error)
}

/// The query's context (its tenant), and its timeout.
fn context(
    st: &AppState,
    headers: &HeaderMap,
    p: &Params,
) -> Result<(QueryContext, Duration), ApiError> {
    let mut ctx = QueryContext::new(tenant_of(headers)?);
    if let Some(r) = p.get("max_source_resolution").filter(|v| !v.is_empty()) {
        let r = Resolution::parse(r).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid parameter \"max_source_resolution\": {r:?} is not one of raw, 1m, 1h, 1d"
            ))
        })?;
        ctx = ctx.with_max_source_resolution(r);
    }
    Ok((ctx, timeout_of(st, p)?))
}

/// Sets the `Strata-Tiers` header (the tiers that answered, finest first; `none` when the
/// query read no data) and counts the query per tier.
fn with_tiers(st: &QueryGate, mut r: Response, tiers: Resolutions) -> Response {
    st.answered(tiers);
    let v = if tiers.is_empty() {
        "none".to_owned()
    } else {
        tiers.header_value()
    };
    if let Ok(v) = header::HeaderValue::from_str(&v) {
        r.headers_mut().insert("strata-tiers", v);
    }
    r
}

/// The engine's timeout, or the shorter `timeout` parameter.
fn timeout_of(st: &AppState, p: &Params) -> Result<Duration, ApiError> {
    let mut timeout = st.promql.options().timeout.unwrap_or(Duration::MAX);
    if let Some(ms) = duration_param(p, "timeout")? {
        if ms > 0 {
            timeout = timeout.min(Duration::from_millis(ms as u64));
        }
    }
    Ok(timeout)
}

/// `GET|POST /api/v1/query`.
pub async fn instant(State(st): State<AppState>, req: ApiRequest) -> Response {
    let p = req.params();
    let run_query = async {
        let query = query_param(&p)?;
        let t = p.time("time", now_ms())?;
        let ctx = context(&st, &req.headers, &p)?;
        let engine = st.promql.clone();
        let gate = st.queries.clone();
        // The answer is written on the blocking pool too: a large matrix takes a while.
        run(&st, ctx, move |ctx| {
            engine
                .instant(ctx, &query, t)
                .map(|out| with_tiers(&gate, success(&out), out.tiers))
        })
        .await
    };
    respond(run_query.await)
}

/// `GET|POST /api/v1/query_range`.
pub async fn range(State(st): State<AppState>, req: ApiRequest) -> Response {
    let p = req.params();
    let run_query = async {
        let query = query_param(&p)?;
        if p.get("start").is_none_or(str::is_empty) {
            return Err(ApiError::bad_data("invalid parameter \"start\": missing"));
        }
        if p.get("end").is_none_or(str::is_empty) {
            return Err(ApiError::bad_data("invalid parameter \"end\": missing"));
        }
        let start = p.time("start", 0)?;
        let end = p.time("end", 0)?;
        if end < start {
            return Err(ApiError::bad_data(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        let step = duration_param(&p, "step")?
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"step\": missing"))?;
        if step <= 0 {
            return Err(ApiError::bad_data(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        // The engine refuses it too; checked here before the cache splits the range.
        st.promql
            .check_points(start, end, step)
            .map_err(|e| ApiError::bad_data(e.to_string()))?;
        let ctx = context(&st, &req.headers, &p)?;
        let engine = st.promql.clone();
        let nocache = matches!(p.get("nocache"), Some("1" | "true"));
        let cache = st.cache.clone();
        let gate = st.queries.clone();
        run(&st, ctx, move |ctx| {
            let (answer, outcome) = if nocache {
                cache.bypassed();
                let out = engine.range(ctx, &query, start, end, step)?;
                (Answer::Evaluated(out), Outcome::Bypass)
            } else {
                cache.range(&engine, ctx, &query, (start, end, step), now_ms())?
            };
            let mut r = match &answer {
                Answer::Evaluated(out) => with_tiers(&gate, success(out), out.tiers),
                Answer::Merged(m) => with_tiers(&gate, success_merged(m), m.tiers),
            };
            r.headers_mut().insert(
                "strata-cache",
                header::HeaderValue::from_static(outcome.as_str()),
            );
            Ok(r)
        })
        .await
    };
    respond(run_query.await)
}

fn respond(res: Result<Response, ApiError>) -> Response {
    res.unwrap_or_else(IntoResponse::into_response)
}

/// `GET|POST /api/v1/format_query`: the query, pretty-printed (through the gate and on the
/// blocking pool, like a query: parsing and printing cost time too).
pub async fn format(State(st): State<AppState>, req: ApiRequest) -> Response {
    let p = req.params();
    let res = async {
        let query = query_param(&p)?;
        // Formatting reads no data: no tenant.
        let ctx = (
            QueryContext::new(Tenant::default_tenant()),
            timeout_of(&st, &p)?,
        );
        let engine = st.promql.clone();
        run(&st, ctx, move |_| engine.format(&query)).await
    };
    match res.await {
        Ok(s) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "success", "data": s}),
        ),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/metadata`: Strata stores no metric metadata (TYPE/HELP) yet, so the answer is
/// an empty object, which Grafana handles.
pub async fn metadata() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "success", "data": {}}),
    )
}

/// `[{"metric":<labels>...}, ...]`, with `body` writing each element after `"metric":`.
fn write_series<T>(
    out: &mut String,
    items: impl IntoIterator<Item = T>,
    body: impl Fn(&mut String, T),
) {
    out.push('[');
    for (i, x) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":");
        body(out, x);
        out.push('}');
    }
    out.push(']');
}

/// A matrix row after `"metric":`: its labels and `"values"`, which `points` writes.
fn write_values(s: &mut String, labels: &strata_model::Labels, points: impl Fn(&mut String)) {
    write_labels(s, labels);
    s.push_str(",\"values\":[");
    points(s);
    s.push(']');
}

/// The success body of a query, written directly: matrices can be large.
fn success(out: &QueryOutput) -> Response {
    success_with(out.value.type_name(), &out.warnings, &out.infos, |s| {
        write_result(s, out)
    })
}

/// Evaluates `expr` for `tenant` at `t` (ms) through the query gate, as `/api/v1/query` does;
/// answers the API's `data` object as JSON text (`{"resultType":..,"result":..}`, with
/// `warnings` and `infos` inside when there are any).
pub(super) async fn evaluate_data(
    st: &AppState,
    tenant: Tenant,
    expr: String,
    t: i64,
) -> Result<String, ApiError> {
    let timeout = st.promql.options().timeout.unwrap_or(Duration::MAX);
    let engine = st.promql.clone();
    let out = run(st, (QueryContext::new(tenant), timeout), move |ctx| {
        engine.instant(ctx, &expr, t)
    })
    .await?;
    let mut s = data_text(out.value.type_name(), |s| write_result(s, &out));
    s.pop();
    write_annotations(&mut s, &out.warnings, &out.infos);
    s.push('}');
    Ok(s)
}

/// The `result` of a query's answer.
fn write_result(s: &mut String, out: &QueryOutput) {
    match &out.value {
        Value::Scalar { t, v } => write_point(s, *t, *v),
        Value::String { t, s: v } => {
            s.push('[');
            write_seconds(s, *t);
            s.push(',');
            write_str(s, v);
            s.push(']');
        }
        Value::Vector(v) => write_series(s, v, |s, x| {
            write_labels(s, &x.labels);
            s.push_str(",\"value\":");
            write_point(s, x.t, x.v);
        }),
        Value::Matrix(m) => write_series(s, m, |s, x| {
            write_values(s, &x.labels, |s| {
                for (j, (t, v)) in x.points.iter().enumerate() {
                    if j > 0 {
                        s.push(',');
                    }
                    write_point(s, *t, *v);
                }
            })
        }),
    }
}

/// The success body of a range query answered (partly) from the cache: the same text as
/// [`success`] writes for the same matrix.
fn success_merged(m: &Merged) -> Response {
    success_with("matrix", &m.warnings, &m.infos, |s| {
        write_series(s, m.series(), |s, (labels, points)| {
            write_values(s, labels, points)
        })
    })
}

/// Appends `,"warnings":[..]` and `,"infos":[..]` where there are any.
fn write_annotations(s: &mut String, warnings: &[String], infos: &[String]) {
    for (key, list) in [("warnings", warnings), ("infos", infos)] {
        if !list.is_empty() {
            let _ = write!(s, ",\"{key}\":{}", serde_json::Value::from(list.to_vec()));
        }
    }
}

/// `{"resultType":..,"result":..}` of a result of type `type_name` that `result` writes.
fn data_text(type_name: &str, result: impl FnOnce(&mut String)) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"resultType\":\"");
    s.push_str(type_name);
    s.push_str("\",\"result\":");
    result(&mut s);
    s.push('}');
    s
}

/// The success body around a result of type `type_name` that `result` writes.
fn success_with(
    type_name: &str,
    warnings: &[String],
    infos: &[String],
    result: impl FnOnce(&mut String),
) -> Response {
    let mut s = String::with_capacity(256);
    s.push_str("{\"status\":\"success\",\"data\":");
    s.push_str(&data_text(type_name, result));
    write_annotations(&mut s, warnings, infos);
    s.push('}');
    let mut r = Response::new(Body::from(s));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
