//! `GET /api/v1/stream`: the live stream over WebSocket (the message format is in
//! `strata_live::protocol` and the README's "Live push").
//!
//! One task per connection reads the client's requests, answers them, and sends what the
//! hub queues in the connection's outbox when it is woken. A connection whose outbox fills
//! (the client reads too slowly) is closed with code 4008; one that sends an oversized
//! message with 1009; one silent for three heartbeats with 4000. Its subscriptions linger
//! after it closes, so the client resumes from its last position (see `strata_live::hub`).

use super::{tenant_of, ApiError, AppState};
use crate::live::{Body, Live, Update};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_live::hub::{Connection, Resumed, Selector};
use strata_live::protocol::{self, Kind, Request, RequestError, Subscribe};
use strata_model::{Fields, Matcher, SelectHints, Storage, Tenant};
use strata_stream::stage::Tier;
use tokio::sync::Notify;

/// Close code of a client too slow for its updates (private range, as Centrifugo's).
pub const CLOSE_SLOW: u16 = 4008;
/// Close code of a client silent for three heartbeats.
pub const CLOSE_SILENT: u16 = 4000;
/// Close code of an oversized message (RFC 6455's "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Messages sent before the task looks at the client again.
const DRAIN_BATCH: usize = 256;
/// How far back a readings snapshot looks for each series' latest sample.
const SNAPSHOT_READINGS_MS: i64 = 60 * 60_000;
/// How often the task looks whether a window closed, for query subscriptions.
const QUERY_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// How far back a windows snapshot reaches.
const SNAPSHOT_WINDOWS_MS: i64 = 60 * 60_000;

/// `GET /api/v1/stream`: upgrades to a WebSocket of tenant `X-Scope-OrgID`.
pub async fn stream(
    State(st): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let tenant = match tenant_of(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::bad_data(format!(
                "/api/v1/stream is a WebSocket endpoint: send an upgrade request ({e})"
            ))
            .into_response()
        }
    };
    let live = st.engine.live().clone();
    let open = live.counters.connections.fetch_add(1, Ordering::AcqRel);
    if open as usize >= live.cfg.max_connections {
        live.counters.connections.fetch_sub(1, Ordering::AcqRel);
        live.counters.refused.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "too many stream connections (live.max_connections = {})",
                live.cfg.max_connections
            ),
        )
        .into_response();
    }
    // Frames past the limit are refused by the socket; messages between it and four times
    // it by the parser, with an error naming the limit.
    let max = live.cfg.max_message_bytes.saturating_mul(4);
    // Small buffers: the socket's defaults (128 KiB each way) would be most of a connection's
    // memory, and stream messages are small.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(8 << 10)
        .write_buffer_size(8 << 10)
        .on_upgrade(move |socket| async move {
            let counters = live.clone();
            Session::new(st, live, tenant).run(socket).await;
            counters.counters.connections.fetch_sub(1, Ordering::AcqRel);
        })
}

struct Sub {
    id: String,
    kind: Kind,
    /// The expression of a `query` subscription.
    expr: Option<String>,
}

/// One connection's state.
struct Session {
    st: AppState,
    live: Arc<Live>,
    tenant: Tenant,
    conn: Arc<Connection<Update>>,
    wake: Arc<Notify>,
    /// By subscription number.
    subs: HashMap<u32, Sub>,
    by_id: HashMap<String, u32>,
    next: u32,
    /// The window boundary the query subscriptions were last evaluated at.
    evaluated_at: Option<i64>,
}

/// Why the session ends.
enum End {
    /// The client closed or went away.
    Gone,
    /// The server closes with this code and reason.
    Close(u16, String),
}

impl Session {
    fn new(st: AppState, live: Arc<Live>, tenant: Tenant) -> Session {
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let conn = Connection::new(live.cfg.queue, move || w.notify_one());
        Session {
            st,
            live,
            tenant,
            conn,
            wake,
            subs: HashMap::new(),
            by_id: HashMap::new(),
            next: 0,
            evaluated_at: None,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let beat = self.beat();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let mut heard = Instant::now();
        let mut query_tick = tokio::time::interval(QUERY_TICK);
        query_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let queries = self.subs.values().any(|s| s.expr.is_some());
            let step = tokio::select! {
                m = socket.recv() => match m {
                    None => Err(End::Gone),
                    Some(Err(e)) if is_capacity(&e) => {
                        Err(End::Close(CLOSE_TOO_BIG, format!("message too big: {e}")))
                    }
                    Some(Err(_)) => Err(End::Gone),
                    Some(Ok(m)) => {
                        heard = Instant::now();
                        self.on_message(&mut socket, m).await
                    }
                },
                _ = self.wake.notified() => self.drain(&mut socket, beat).await,
                _ = query_tick.tick(), if queries => self.evaluate_queries(&mut socket).await,
                _ = heartbeat.tick() => {
                    if heard.elapsed() > beat * 3 {
                        Err(End::Close(CLOSE_SILENT, "no message or pong for three heartbeats".into()))
                    } else {
                        send(&mut socket, Message::Ping(Default::default()), beat).await
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = send(&mut socket, Message::Close(Some(frame)), beat).await;
        }
        self.live.hub.close(self.tenant.as_str(), &self.conn);
        self.take_conflated();
    }

    /// The heartbeat interval, also how long one send may take before the client counts as
    /// gone.
    fn beat(&self) -> Duration {
        Duration::from_millis(self.live.cfg.heartbeat.0 as u64)
    }

    fn take_conflated(&self) {
        let n = self.conn.conflated.swap(0, Ordering::Relaxed);
        self.live.counters.conflated.fetch_add(n, Ordering::Relaxed);
    }

    /// Sends what the outbox holds, a batch at a time (so requests are read in between), as
    /// one write: messages are queued in the socket's buffer and flushed together.
    async fn drain(&mut self, socket: &mut WebSocket, timeout: Duration) -> Result<(), End> {
        self.take_conflated();
        let mut queued = 0u64;
        let mut more = true;
        for _ in 0..DRAIN_BATCH {
            if self.conn.is_slow() {
                return Err(self.slow());
            }
            let Some(d) = self.conn.next() else {
                more = false;
                break;
            };
            let Some(sub) = self.subs.get(&d.subscription) else {
                continue; // ended since
            };
            let text = protocol::message(
                &sub.id,
                sub.kind,
                d.position,
                d.entry.update.json(&d.entry.key),
            );
            within(timeout, socket.feed(Message::Text(text.into()))).await?;
            queued += 1;
        }
        if queued > 0 {
            within(timeout, socket.flush()).await?;
            self.live
                .counters
                .messages
                .fetch_add(queued, Ordering::Relaxed);
        }
        if more {
            // More left: come back after looking at the client.
            self.wake.notify_one();
        }
        Ok(())
    }

    fn slow(&self) -> End {
        let c = &self.live.counters;
        c.slow_closes.fetch_add(1, Ordering::Relaxed);
        let mut pending = 0;
        while self.conn.next().is_some() {
            pending += 1;
        }
        c.dropped.fetch_add(pending, Ordering::Relaxed);
        End::Close(
            CLOSE_SLOW,
            format!(
                "too slow: more than {} updates pending (live.queue); reconnect with \"since\" to resume",
                self.live.cfg.queue
            ),
        )
    }

    async fn on_message(&mut self, socket: &mut WebSocket, m: Message) -> Result<(), End> {
        let beat = self.beat();
        let text = match m {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let e = RequestError {
                    id: None,
                    message: "binary messages are not accepted: send JSON text".into(),
                    fatal: false,
                };
                return self.refuse(socket, e).await;
            }
            Message::Close(_) => return Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        match protocol::parse_request(text.as_str(), self.live.cfg.max_message_bytes) {
            Err(e) => self.refuse(socket, e).await,
            Ok(Request::Unsubscribe { id }) => match self.by_id.remove(&id) {
                Some(n) => {
                    let sub = self.subs.remove(&n).expect("indexed subscription");
                    self.live
                        .hub
                        .unsubscribe(self.tenant.as_str(), &self.conn, n);
                    let head = self.live.hub.head(self.tenant.as_str());
                    let body = r#"{"labels":{},"event":"unsubscribed"}"#;
                    let text = protocol::message(&id, sub.kind, head, body);
                    send(socket, Message::Text(text.into()), beat).await
                }
                None => {
                    let e = RequestError {
                        message: format!("no subscription {id:?} to end"),
                        id: Some(id),
                        fatal: false,
                    };
                    self.refuse(socket, e).await
                }
            },
            Ok(Request::Subscribe(s)) => match self.subscribe(socket, s).await {
                Ok(r) => r,
                Err(e) => self.refuse(socket, e).await,
            },
        }
    }

    async fn refuse(&mut self, socket: &mut WebSocket, e: RequestError) -> Result<(), End> {
        self.live
            .counters
            .bad_requests
            .fetch_add(1, Ordering::Relaxed);
        let beat = self.beat();
        send(socket, Message::Text(e.to_json().into()), beat).await?;
        if e.fatal {
            return Err(End::Close(CLOSE_TOO_BIG, e.message));
        }
        Ok(())
    }

    /// Starts (or replaces) a subscription; answers it, with a snapshot when the client
    /// cannot resume exactly. `Err` refuses it (the connection stays).
    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        s: Subscribe,
    ) -> Result<Result<(), End>, RequestError> {
        let refuse = |message: String| RequestError {
            id: Some(s.id.clone()),
            message,
            fatal: false,
        };
        if s.kind == Kind::Windows && !self.st.engine.rollups_enabled() {
            return Err(refuse(
                "rollups are disabled ([rollups] enabled = false): no windows to stream".into(),
            ));
        }
        let replaces = self.by_id.get(&s.id).copied();
        if replaces.is_none() && self.subs.len() >= self.live.cfg.max_subscriptions {
            return Err(refuse(format!(
                "at most {} subscriptions per connection (live.max_subscriptions)",
                self.live.cfg.max_subscriptions
            )));
        }
        let text = s.selector.clone().unwrap_or_default();
        let sets = match &s.selector {
            // A query's expression is checked by evaluating it (`start_query`).
            Some(sel) if s.kind != Kind::Query => {
                crate::selector::parse_selector(sel).map_err(refuse)?
            }
            _ => Vec::new(),
        };
        let tenant = self.tenant.as_str();
        if let Some(n) = replaces {
            self.live.hub.unsubscribe(tenant, &self.conn, n);
            self.subs.remove(&n);
        }
        let n = self.next;
        self.next += 1;
        self.by_id.insert(s.id.clone(), n);
        self.subs.insert(
            n,
            Sub {
                id: s.id.clone(),
                kind: s.kind,
                expr: (s.kind == Kind::Query).then(|| text.clone()),
            },
        );
        if s.kind == Kind::Query {
            return self.start_query(socket, n, &s).await;
        }
        let selector = Arc::new(Selector::new(text, sets.clone()));
        let resumed = self
            .live
            .hub
            .subscribe(tenant, &self.conn, n, s.kind, selector, s.since);
        let head = self.live.hub.head(tenant);
        // Asked for, a snapshot follows a live start too: the hub already collects for the
        // subscription, so nothing falls between the state read and the first live update.
        let resumed = match resumed {
            Resumed::Live if s.snapshot => Resumed::NeedsSnapshot,
            r => r,
        };
        let body = match resumed {
            Resumed::Live => r#"{"labels":{},"event":"subscribed","resume":"live"}"#.to_string(),
            Resumed::Replayed(k) => format!(
                r#"{{"labels":{{}},"event":"subscribed","resume":"replayed","replayed":{k}}}"#
            ),
            Resumed::NeedsSnapshot => {
                r#"{"labels":{},"event":"subscribed","resume":"snapshot"}"#.to_string()
            }
        };
        let beat = self.beat();
        let ack = protocol::message(&s.id, s.kind, head, &body);
        if let Err(e) = send(socket, Message::Text(ack.into()), beat).await {
            return Ok(Err(e));
        }
        if resumed != Resumed::NeedsSnapshot {
            return Ok(Ok(()));
        }
        self.live.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        let updates = match self.snapshot(s.kind, sets).await {
            Ok(u) => u,
            Err(message) => return Err(refuse(message)),
        };
        for (key, update) in updates {
            let body = update.json(&key);
            // Marked, so a client tells the current state from a change.
            let body = format!(r#"{{"snapshot":true,{}"#, &body[1..]);
            let text = protocol::message(&s.id, s.kind, head, &body);
            if let Err(e) = send(socket, Message::Text(text.into()), beat).await {
                return Ok(Err(e));
            }
            self.live.counters.messages.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(()))
    }

    /// The current state of what a subscription selects: each series' latest reading of the
    /// last hour, its windows of the last hour, a group output's values of the last hour, or
    /// the pending and firing alerts.
    async fn snapshot(
        &self,
        kind: Kind,
        sets: Vec<Vec<Matcher>>,
    ) -> Result<Vec<(strata_model::SeriesKey, Update)>, String> {
        if kind == Kind::Shadows {
            return Ok(self.shadows_snapshot(Selector::new("", sets)).await);
        }
        if matches!(kind, Kind::Alerts | Kind::Anomalies) {
            let selector = Selector::new("", sets);
            return Ok(super::rules::active_alerts(&self.st, &self.tenant)
                .iter()
                .map(crate::live::alert_entry)
                .filter(|e| e.kind == kind && selector.matches(e.key.as_ref().as_ref()))
                .map(|e| ((*e.key).clone(), e.update))
                .collect());
        }
        let engine = self.st.engine.clone();
        let tenant = self.tenant.clone();
        let max_samples = self.st.promql.options().max_samples;
        let read = move || -> Result<Vec<_>, String> {
            let now = strata_model::time::now_ms();
            let mut out = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for set in &sets {
                match kind {
                    Kind::Readings | Kind::Groups => {
                        let hints = SelectHints {
                            start: now - SNAPSHOT_READINGS_MS,
                            end: now,
                            max_samples: Some(max_samples),
                            fields: Fields::default(),
                        };
                        for s in engine
                            .select(&tenant, set, &hints)
                            .map_err(|e| e.to_string())?
                        {
                            let key = s.labels.key();
                            let groups = kind == Kind::Groups;
                            if groups && !crate::live::is_group_output(key.as_ref())
                                || !seen.insert(key.clone())
                            {
                                continue;
                            }
                            // A group output's values of the last hour; a series' latest.
                            let taken = if groups {
                                &s.samples[..]
                            } else {
                                &s.samples[s.samples.len().saturating_sub(1)..]
                            };
                            out.extend(
                                taken
                                    .iter()
                                    .map(|x| (key.clone(), Update::new(Body::Reading(*x)))),
                            );
                        }
                    }
                    _ => {
                        let from = now - SNAPSHOT_WINDOWS_MS;
                        let read = engine.rollups(Tier::Window, &tenant, set, from, now);
                        for (labels, windows) in read.map_err(|e| e.to_string())? {
                            let key = labels.key();
                            if seen.insert(key.clone()) {
                                out.extend(
                                    windows
                                        .into_iter()
                                        .map(|w| (key.clone(), Update::new(Body::Window(w)))),
                                );
                            }
                        }
                    }
                }
            }
            Ok(out)
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| "snapshot read failed".to_string())?
            .map_err(|e| format!("snapshot read failed: {e}"))
    }
}

impl Session {
    /// Where query subscriptions are evaluated: the time before which every window is final
    /// (the latest window close), or the last minute without rollups.
    fn query_time(&self) -> i64 {
        self.st
            .engine
            .final_before()
            .filter(|t| *t != i64::MIN)
            .unwrap_or_else(|| strata_model::time::now_ms() / 60_000 * 60_000)
    }

    /// Starts query subscription `n`: evaluates it now (an expression that fails is refused),
    /// acknowledges it and sends its result; later results follow each window close.
    async fn start_query(
        &mut self,
        socket: &mut WebSocket,
        n: u32,
        s: &Subscribe,
    ) -> Result<Result<(), End>, RequestError> {
        let t = self.query_time();
        let expr = s.selector.clone().unwrap_or_default();
        let data = match super::query::evaluate_data(&self.st, self.tenant.clone(), expr, t).await {
            Ok(d) => d,
            Err(e) => {
                self.subs.remove(&n);
                self.by_id.remove(&s.id);
                return Err(RequestError {
                    id: Some(s.id.clone()),
                    message: format!("invalid expression: {}", e.message),
                    fatal: false,
                });
            }
        };
        self.evaluated_at.get_or_insert(t);
        let head = self.live.hub.head(self.tenant.as_str());
        let resume = if s.since.is_some() {
            "snapshot"
        } else {
            "live"
        };
        let ack = format!(r#"{{"labels":{{}},"event":"subscribed","resume":"{resume}"}}"#);
        let beat = self.beat();
        let ack = protocol::message(&s.id, Kind::Query, head, &ack);
        if let Err(e) = send(socket, Message::Text(ack.into()), beat).await {
            return Ok(Err(e));
        }
        Ok(self.send_result(socket, &s.id, t, &data).await)
    }

    /// One evaluation's message: `timestamp` and the API's `data`.
    async fn send_result(
        &self,
        socket: &mut WebSocket,
        id: &str,
        t: i64,
        data: &str,
    ) -> Result<(), End> {
        let head = self.live.hub.head(self.tenant.as_str());
        let body = format!(r#"{{"labels":{{}},"timestamp":{t},"data":{data}}}"#);
        let text = protocol::message(id, Kind::Query, head, &body);
        self.live.counters.messages.fetch_add(1, Ordering::Relaxed);
        send(socket, Message::Text(text.into()), self.beat()).await
    }

    /// Evaluates every query subscription when a window has closed since the last time; an
    /// evaluation that fails is reported as an error of its subscription, which stays.
    async fn evaluate_queries(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let t = self.query_time();
        if self.evaluated_at.is_some_and(|at| at >= t) {
            return Ok(());
        }
        self.evaluated_at = Some(t);
        let queries: Vec<(String, String)> = self
            .subs
            .values()
            .filter_map(|s| Some((s.id.clone(), s.expr.clone()?)))
            .collect();
        for (id, expr) in queries {
            match super::query::evaluate_data(&self.st, self.tenant.clone(), expr, t).await {
                Ok(data) => self.send_result(socket, &id, t, &data).await?,
                Err(e) => {
                    let e = RequestError {
                        id: Some(id),
                        message: format!("evaluation at {t} failed: {}", e.message),
                        fatal: false,
                    };
                    send(socket, Message::Text(e.to_json().into()), self.beat()).await?;
                }
            }
        }
        Ok(())
    }

    /// The shadows `selector` selects: each selected series' newest reading, and the desired
    /// state of each device whose `{device="<id>"}` it selects (those that have reported).
    async fn shadows_snapshot(&self, selector: Selector) -> Vec<(strata_model::SeriesKey, Update)> {
        let mut out = Vec::new();
        let mut devices = Vec::new();
        self.st.engine.synced_shadows().await;
        self.st.engine.with_shadows(|sh| {
            for (id, d) in sh.devices_after(&self.tenant, None) {
                for (key, s) in &d.readings {
                    if selector.matches(key.as_ref()) {
                        let e = crate::live::reported_entry(key.as_ref(), *s);
                        out.push(((*e.key).clone(), e.update));
                    }
                }
                if selector.matches(crate::live::device_key(id).as_ref()) {
                    devices.push(id.to_string());
                }
            }
        });
        for id in devices {
            if let Ok(doc) = super::devices::shadow_doc_synced(&self.st, &self.tenant, &id).await {
                if doc["version"].as_u64().is_some_and(|v| v > 0) {
                    let e = super::devices::desired_of(&id, &doc);
                    out.push(((*e.key).clone(), e.update));
                }
            }
        }
        out
    }
}

/// True for the socket's refusal of a message over its size limit. axum hides the WebSocket
/// library's error type, so its text is matched (the stream test checks the 1009 close).
fn is_capacity(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("capacity")
}

/// Sends one message, giving up (the client is gone or stuck) after `timeout`.
async fn send(socket: &mut WebSocket, m: Message, timeout: Duration) -> Result<(), End> {
    within(timeout, socket.send(m)).await
}

/// Runs a socket operation, giving up (the client is gone or stuck) after `timeout`.
async fn within(
    timeout: Duration,
    op: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), End> {
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Gone),
    }
}
