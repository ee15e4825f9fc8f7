//! Read endpoints: export, series, label names and values, build info, flush, self-metrics.

use super::json::{write_labels, write_str};
use super::{json_response, tenant_of, ApiError, ApiRequest, AppState, Params, MIN_API_TIME_MS};
use crate::selector::parse_selector;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeSet;
use std::fmt::Write;
use strata_model::time::now_ms;
use strata_model::{
    Labels, LazySeries, Matcher, MetadataHints, Sample, SelectHints, Storage, Tenant,
};
use tokio::sync::{mpsc, oneshot};

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
    let start = params.time("start", MIN_API_TIME_MS)?;
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

/// `GET|POST /api/v1/export`: VictoriaMetrics' JSON-lines export, one line per series,
/// streamed: a blocking task decodes one series at a time and hands the text on in chunks of
/// about [`EXPORT_CHUNK_BYTES`], so memory is bounded by a series and a few chunks whatever
/// the export's size; a series is bounded by `query.max_samples` (past it the export ends
/// with an error naming the limit). A client that goes away stops the task at its next chunk.
/// An export takes a turn of the query gate (`query.max_concurrency`, `query.max_queue`), held
/// until its last line is sent.
pub async fn export(State(st): State<AppState>, req: ApiRequest) -> Response {
    let (r, sets) = match read_request(&req).and_then(|r| {
        let sets = matcher_sets(&r.params, true)?;
        Ok((r, sets))
    }) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let wait = st
        .promql
        .options()
        .timeout
        .unwrap_or(std::time::Duration::MAX);
    let turn = match st.queries.turn(wait).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let (started_tx, started_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(EXPORT_CHUNKS_QUEUED);
    // One series is decoded whole into memory before its line is written: it may hold at most
    // what a query may, refused from its chunk headers before decoding when they show it.
    let per_series = st.promql.options().max_samples;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let hints = SelectHints {
            start: r.start,
            end: r.end,
            max_samples: Some(per_series),
            fields: strata_model::Fields::All,
        };
        // Selecting plans every series (labels and where their samples are) but decodes
        // nothing; errors here still get a status code.
        let selected: Result<Vec<Vec<LazySeries>>, _> = sets
            .iter()
            .map(|set| st.engine.select_lazy(&r.tenant, set, &hints))
            .collect();
        let selected = match selected {
            Ok(s) => s,
            Err(e) => {
                let _ = started_tx.send(Err(storage_error(e)));
                return;
            }
        };
        if started_tx.send(Ok(())).is_err() {
            return;
        }
        let mut out = ExportWriter {
            tx,
            rt: tokio::runtime::Handle::current(),
            buf: String::with_capacity(EXPORT_CHUNK_BYTES * 2),
        };
        // Series met in more than one `match[]` set are written once.
        let mut seen = BTreeSet::new();
        let dedup = selected.len() > 1;
        let mut samples = Vec::new();
        for s in selected.into_iter().flatten() {
            if dedup && !seen.insert(s.labels.clone()) {
                continue;
            }
            samples.clear();
            if let Err(e) = s.read(&mut samples) {
                out.fail(match e {
                    strata_model::StorageError::TooManySamples { limit } => format!(
                        "series {} holds more than {limit} samples in the range, the most one \
                         export line may hold (query.max_samples): narrow the time range",
                        s.labels
                    ),
                    e => e.to_string(),
                });
                return;
            }
            samples.retain(|x| !x.is_stale());
            if samples.is_empty() {
                continue;
            }
            if out.series(&s.labels, &samples).is_err() {
                return;
            }
        }
        let _ = out.flush();
    });
    match started_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::internal("export task failed").into_response(),
    }
    let mut resp = Response::new(Body::new(ChunkBody(rx)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/stream+json"),
    );
    resp
}

/// About how many bytes of export text are handed to the connection at a time.
const EXPORT_CHUNK_BYTES: usize = 64 << 10;

/// Chunks an export may have ready before its task waits for the client to read.
const EXPORT_CHUNKS_QUEUED: usize = 4;

/// A client that reads nothing of its export for this long is given up on, so it cannot hold
/// a blocking thread for ever.
const EXPORT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The client went away (or stopped reading): the export stops.
struct Disconnected;

/// Writes export lines into a buffer and sends it on whenever it passes a chunk's size.
struct ExportWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    rt: tokio::runtime::Handle,
    buf: String,
}

impl ExportWriter {
    /// Writes one series' line.
    fn series(&mut self, labels: &Labels, samples: &[Sample]) -> Result<(), Disconnected> {
        self.buf.push_str("{\"metric\":");
        write_labels(&mut self.buf, labels);
        self.buf.push_str(",\"values\":[");
        for (i, x) in samples.iter().enumerate() {
            self.buf.push_str(if i == 0 { "" } else { "," });
            write_number(&mut self.buf, x.value);
            self.maybe_flush()?;
        }
        self.buf.push_str("],\"timestamps\":[");
        for (i, x) in samples.iter().enumerate() {
            self.buf.push_str(if i == 0 { "" } else { "," });
            self.buf.push_str(itoa::Buffer::new().format(x.timestamp));
            self.maybe_flush()?;
        }
        self.buf.push_str("]}\n");
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), Disconnected> {
        if self.buf.len() >= EXPORT_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is buffered.
    fn flush(&mut self) -> Result<(), Disconnected> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(EXPORT_CHUNK_BYTES * 2));
        self.rt
            .block_on(
                self.tx
                    .send_timeout(Ok(Bytes::from(chunk)), EXPORT_STALL_TIMEOUT),
            )
            .map_err(|_| Disconnected)
    }

    /// Ends the response with an error: the client sees a broken chunked body, not a short
    /// export that looks complete.
    fn fail(&mut self, message: String) {
        tracing::warn!("export failed while streaming: {message}");
        let _ = self.flush();
        let failure = Err(std::io::Error::other(message));
        let _ = self
            .rt
            .block_on(self.tx.send_timeout(failure, EXPORT_STALL_TIMEOUT));
    }
}

/// A response body fed by a channel of chunks.
struct ChunkBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|r| r.map(http_body::Frame::data)))
    }
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
    let prepared = read_request(&req).and_then(|r| {
        let sets = matcher_sets(&r.params, true)?;
        let limit = AnswerLimit::parse(&r.params, st.max_metadata_results)?;
        Ok((r, sets, limit))
    });
    let (r, sets, limit) = match prepared {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    off_the_workers(move || {
        let lists = sets
            .iter()
            .map(|set| st.engine.series(&r.tenant, set, &limit.hints(&r)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_error)?;
        let (all, warnings) = limit.apply(lists, "series")?;
        Ok(metadata_answer(&all, &warnings, write_labels))
    })
    .await
}

/// `GET|POST /api/v1/labels`.
pub async fn labels(State(st): State<AppState>, req: ApiRequest) -> Response {
    names_or_values(st, req, None).await
}

/// `GET /api/v1/label/<name>/values`.
pub async fn label_values(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: ApiRequest,
) -> Response {
    names_or_values(st, req, Some(name)).await
}

/// Label names (`label` = `None`) or one label's values: read once per `match[]` set (once
/// unfiltered without any), answered as their sorted union within the answer limit.
async fn names_or_values(st: AppState, req: ApiRequest, label: Option<String>) -> Response {
    let prepared = read_request(&req).and_then(|r| {
        let sets = matcher_sets(&r.params, false)?;
        let limit = AnswerLimit::parse(&r.params, st.max_metadata_results)?;
        Ok((r, sets, limit))
    });
    let (r, mut sets, limit) = match prepared {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if sets.is_empty() {
        sets.push(Vec::new());
    }
    off_the_workers(move || {
        let hints = limit.hints(&r);
        let read = |m: &[Matcher]| match &label {
            None => st.engine.label_names(&r.tenant, m, &hints),
            Some(name) => st.engine.label_values(&r.tenant, name, m, &hints),
        };
        let lists = sets
            .iter()
            .map(|set| read(set))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_error)?;
        let what = if label.is_some() {
            "label values"
        } else {
            "label names"
        };
        let (all, warnings) = limit.apply(lists, what)?;
        Ok(metadata_answer(&all, &warnings, |out, s: &String| {
            write_str(out, s)
        }))
    })
    .await
}

/// The warning Prometheus sends with an answer its `limit` parameter cut short (Grafana looks
/// for exactly this text).
pub const TRUNCATED_WARNING: &str = "results truncated due to limit";

/// How many entries a metadata answer (series, label names, label values) may hold: what the
/// client's `limit` asks for (0 or none: no limit, as in Prometheus), within
/// `limits.max_metadata_results`.
struct AnswerLimit {
    /// The client's `limit`, if it set one.
    requested: Option<usize>,
    /// `limits.max_metadata_results`.
    cap: usize,
}

impl AnswerLimit {
    fn parse(params: &Params, cap: usize) -> Result<AnswerLimit, ApiError> {
        let requested = match params.get("limit") {
            None | Some("") => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Err(_) => {
                    return Err(ApiError::bad_data(format!(
                        "invalid parameter \"limit\": {v:?} is not a non-negative integer"
                    )))
                }
            },
        };
        Ok(AnswerLimit { requested, cap })
    }

    /// Most entries answered.
    fn keep(&self) -> usize {
        self.requested.unwrap_or(usize::MAX).min(self.cap)
    }

    /// What to ask the storage for: one entry more than is answered, so a cut answer is told
    /// from a whole one while no read holds more than the limit.
    fn hints(&self, r: &ReadRequest) -> MetadataHints {
        MetadataHints {
            start: r.start,
            end: r.end,
            limit: Some(self.keep().saturating_add(1)),
        }
    }

    /// The sorted, deduplicated union of `lists` (each sorted and read with [`Self::hints`]'s
    /// limit), with the warnings to answer
    /// beside it. Past the client's `limit` the answer is cut to it, with Prometheus' warning;
    /// past the cap, a client that set a `limit` (and so takes partial answers) gets the
    /// first `cap` entries and both warnings, one that did not a 422 naming the cap, rather
    /// than an answer it would take for complete.
    fn apply<T: Ord>(
        &self,
        lists: Vec<Vec<T>>,
        what: &str,
    ) -> Result<(Vec<T>, Vec<String>), ApiError> {
        let mut all = if lists.len() == 1 {
            lists.into_iter().next().unwrap_or_default()
        } else {
            let mut all: Vec<T> = lists.into_iter().flatten().collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let mut warnings = Vec::new();
        let keep = self.keep();
        if all.len() > keep {
            if self.requested.is_none() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "execution",
                    format!(
                        "the answer would hold more than {} {what}, the limit \
                         (limits.max_metadata_results): narrow match[] or the time range, or \
                         pass limit= to receive the first ones",
                        self.cap
                    ),
                ));
            }
            all.truncate(keep);
            warnings.push(TRUNCATED_WARNING.to_owned());
            if keep == self.cap {
                warnings.push(format!(
                    "at most {} {what} are answered (limits.max_metadata_results)",
                    self.cap
                ));
            }
        }
        Ok((all, warnings))
    }
}

/// Runs a read and builds its answer on a blocking thread: index reads and answers over many
/// series are CPU work that would otherwise hold an async worker, and `/health` and writes
/// behind it.
async fn off_the_workers(
    f: impl FnOnce() -> Result<Response, ApiError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.unwrap_or_else(IntoResponse::into_response),
        Err(e) => ApiError::internal(format!("read task failed: {e}")).into_response(),
    }
}

/// A metadata answer, `{"status":"success","data":[...]}` with `warnings` when there are
/// some, written straight to text (no JSON tree of every entry).
fn metadata_answer<T>(
    items: &[T],
    warnings: &[String],
    write: impl Fn(&mut String, &T),
) -> Response {
    let mut out = String::with_capacity(64 + items.len() * 32);
    out.push_str("{\"status\":\"success\",\"data\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(&mut out, item);
    }
    out.push(']');
    if !warnings.is_empty() {
        out.push_str(",\"warnings\":[");
        for (i, w) in warnings.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(&mut out, w);
        }
        out.push(']');
    }
    out.push('}');
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON string, escaped.
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

/// `GET /metrics`: self-metrics in the Prometheus text format, or OpenMetrics when `Accept`
/// asks for it.
pub async fn metrics(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (body, content_type) = crate::metrics::expose(&st.metrics, accept);
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
