//! The MQTT source: a client of the user's broker (rumqttc, MQTT 3.1.1) subscribed to device
//! topics, taking Strata's JSON device events as payloads.
//!
//! **QoS 1 is acknowledged only once durable.** Acks are manual: a message's PUBACK is sent
//! after the sink (the ingest log's group commit) acknowledged the batch that carried it, in the
//! order the messages came (as MQTT asks). The session is persistent (clean session off), so a
//! broker keeps what was not acknowledged, and what arrives while Strata is down, and delivers
//! it after a restart; event ids make the redelivered copies harmless (at least once in,
//! exactly once in effect). A bad payload is counted by reason, logged with its topic,
//! acknowledged (it would be redelivered forever otherwise) and, if configured, republished to a
//! dead-letter topic.
//!
//! Three tasks: the event loop (rumqttc's, polled without pause so pings and acks go out), a
//! batcher that decodes what has arrived into one batch and starts its write (at most
//! [`WRITES`] at once), and an acker that waits for each write in order and acknowledges its
//! messages. The event loop must keep polling for the acks to go out, so at QoS 1 it never
//! waits for the batcher: the broker holds what Strata has not acknowledged (at most its
//! in-flight window, under 65,536 messages, which the hand-over queue holds whole). At QoS 0 a
//! full queue stops the reading until the batcher takes a message (the batcher never waits for
//! the event loop, so this wait is short): the socket and then the broker hold the rest, as
//! its own limits for slow consumers say.

use crate::topic::TopicPattern;
use crate::{Running, Sink, SinkError, Source, SourceError, SourceStats, Written};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_ingest::DecodeContext;
use strata_model::time::now_ms;
use strata_model::{Limits, Tenant, WriteBatch};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Writes in flight at once.
pub const WRITES: usize = 4;
/// Most messages in one batch.
const MAX_BATCH: usize = 1000;
/// Most payload bytes in one batch (a larger single message makes a batch alone).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Messages the event loop hands over without waiting for the batcher: more than a broker can
/// have in flight unacknowledged at QoS 1 (packet ids are 16 bits), so the event loop never
/// waits at QoS 1 (it must go on polling to send the acks). At QoS 0 a full queue waits.
const QUEUE: usize = 1 << 16;
/// Requests (acks, dead letters, deltas) the client queues for the event loop: the acks of
/// every message a broker can have in flight fit, twice.
const REQUESTS: usize = 2 * QUEUE + 64;
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// `[[sources.mqtt]]`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Its name in logs and metrics (default `mqtt-<n>`, n counting from 0 in the file).
    pub name: Option<String>,
    /// `mqtt://host:port` (default port 1883) or `mqtts://host:port` (TLS, default 8883);
    /// user and password may be given in it.
    pub url: String,
    /// Topic filters subscribed to: MQTT wildcards, `$share/<group>/...` to share the load
    /// between several nodes.
    pub topics: Vec<String>,
    /// Where a topic names the device: `devices/{device_id}/telemetry`. An event with no
    /// `device_id` takes the topic's.
    pub device_from_topic: Option<String>,
    /// 1 (default: acknowledged once durable) or 0 (at most once).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Client id (default: stable per data directory); the broker keeps its session by it.
    pub client_id: Option<String>,
    /// User name (also read from the URL).
    pub username: Option<String>,
    /// Password (also read from the URL).
    pub password: Option<String>,
    /// The tenant written to (default: the default tenant).
    pub tenant: Option<String>,
    /// Bad payloads are republished here (QoS 1), when set.
    pub dead_letter_topic: Option<String>,
    /// Where a device's shadow delta is published (QoS 1), `{device_id}` replaced; empty for
    /// none.
    #[serde(default = "default_delta_topic")]
    pub shadow_delta_topic: String,
    /// Seconds between keep-alive pings.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// A PEM file of the CA certificates a `mqtts://` broker is checked against (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive() -> u64 {
    30
}

fn default_delta_topic() -> String {
    "devices/{device_id}/shadow/delta".into()
}

/// Publishes shadow deltas through the source's client.
struct DeltaPublisher {
    client: AsyncClient,
    tenant: Tenant,
    topic: String,
    stats: Arc<SourceStats>,
}

impl crate::DevicePublisher for DeltaPublisher {
    fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    fn publish_delta(&self, device: &str, payload: Vec<u8>) -> bool {
        let topic = self.topic.replace("{device_id}", device);
        let ok = rumqttc::valid_topic(&topic)
            && self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .is_ok();
        let c = if ok {
            &self.stats.deltas_published
        } else {
            &self.stats.deltas_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        ok
    }
}

/// An MQTT source, checked and ready to start.
pub struct MqttSource {
    name: String,
    options: MqttOptions,
    filters: Vec<SubscribeFilter>,
    qos: QoS,
    pattern: Option<TopicPattern>,
    tenant: Tenant,
    dead_letter: Option<String>,
    delta_topic: Option<String>,
    limits: Arc<Limits>,
    max_payload: usize,
}

impl MqttSource {
    /// Checks `cfg` (the `index`th `[[sources.mqtt]]`); `client_id` is used when it sets none,
    /// `limits` bound what a payload may hold, and payloads over `max_payload` bytes are
    /// refused.
    pub fn new(
        cfg: &MqttConfig,
        index: usize,
        client_id: &str,
        limits: Arc<Limits>,
        max_payload: usize,
    ) -> Result<MqttSource, SourceError> {
        let name = cfg.name.clone().unwrap_or_else(|| format!("mqtt-{index}"));
        let err = |m: String| SourceError::Config(format!("sources.mqtt {name:?}: {m}"));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(err(
                "name must be letters, digits, '_', '.' or '-' (it is a label value)".into(),
            ));
        }
        let url = url::Url::parse(&cfg.url).map_err(|e| {
            err(format!(
                "url {:?}: {e} (expected mqtt://host:port)",
                cfg.url
            ))
        })?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            s => {
                return Err(err(format!(
                    "url {:?}: scheme {s:?} is not mqtt:// or mqtts://",
                    cfg.url
                )))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err(format!("url {:?} names no host", cfg.url)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let qos = match cfg.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            q => {
                return Err(err(format!(
                    "qos = {q}: 0 or 1 (QoS 2 adds nothing here: deduplication makes QoS 1 exactly once in effect)"
                )))
            }
        };
        if cfg.topics.is_empty() {
            return Err(err("topics is empty: subscribe to at least one".into()));
        }
        let mut filters = Vec::new();
        for t in &cfg.topics {
            if !rumqttc::valid_filter(t) {
                return Err(err(format!(
                    "topic filter {t:?} is not a valid MQTT filter"
                )));
            }
            filters.push(SubscribeFilter::new(t.clone(), qos));
        }
        let pattern = cfg
            .device_from_topic
            .as_deref()
            .map(TopicPattern::parse)
            .transpose()
            .map_err(|e| err(e.to_string()))?;
        let tenant = match &cfg.tenant {
            None => Tenant::default_tenant(),
            Some(t) => Tenant::new(t).map_err(|e| err(format!("tenant: {e}")))?,
        };
        if let Some(t) = &cfg.dead_letter_topic {
            if !rumqttc::valid_topic(t) {
                return Err(err(format!(
                    "dead_letter_topic {t:?} is not a valid topic name"
                )));
            }
        }
        let delta_topic =
            (!cfg.shadow_delta_topic.is_empty()).then(|| cfg.shadow_delta_topic.clone());
        if let Some(t) = &delta_topic {
            if !rumqttc::valid_topic(&t.replace("{device_id}", "x")) {
                return Err(err(format!(
                    "shadow_delta_topic {t:?} is not a valid topic name"
                )));
            }
        }
        let id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| client_id.to_string());
        if id.is_empty() {
            return Err(err("client_id is empty".into()));
        }
        let mut o = MqttOptions::new(id, host, port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)))
            // The broker bounds message size; the payload limit is applied after receipt, so
            // an oversized message is refused and acknowledged, not redelivered forever.
            .set_max_packet_size(268_435_455, 1 << 20)
            .set_request_channel_capacity(REQUESTS);
        let user = cfg
            .username
            .clone()
            .or_else(|| (!url.username().is_empty()).then(|| url.username().to_string()));
        let password = cfg
            .password
            .clone()
            .or_else(|| url.password().map(str::to_string));
        if let Some(u) = user {
            o.set_credentials(u, password.unwrap_or_default());
        }
        if tls {
            let transport = match &cfg.ca_file {
                None => Transport::tls_with_default_config(),
                Some(path) => {
                    let ca = std::fs::read(path)
                        .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
                    Transport::Tls(TlsConfiguration::Simple {
                        ca,
                        alpn: None,
                        client_auth: None,
                    })
                }
            };
            o.set_transport(transport);
        }
        Ok(MqttSource {
            name,
            options: o,
            filters,
            qos,
            pattern,
            tenant,
            dead_letter: cfg.dead_letter_topic.clone(),
            delta_topic,
            limits,
            max_payload,
        })
    }
}

impl Source for MqttSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn acknowledges(&self) -> bool {
        self.qos != QoS::AtMostOnce
    }

    fn start(
        self: Box<Self>,
        sink: Arc<dyn Sink>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Running, SourceError> {
        let stats = Arc::new(SourceStats::default());
        let acknowledges = self.acknowledges();
        let (client, eventloop) = AsyncClient::new(self.options.clone(), REQUESTS);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ack_tx, ack_rx) = mpsc::channel(WRITES);
        let name = self.name.clone();
        tracing::info!(
            source = %name,
            broker = %format!("{}:{}", self.options.broker_address().0, self.options.broker_address().1),
            client_id = %self.options.client_id(),
            "mqtt source starting"
        );
        let poll = rt.spawn(poll(
            eventloop,
            client.clone(),
            self.filters.clone(),
            tx,
            stats.clone(),
            name.clone(),
        ));
        let acker = rt.spawn(acker(ack_rx, client.clone(), stats.clone()));
        let publisher = self.delta_topic.clone().map(|topic| {
            Arc::new(DeltaPublisher {
                client: client.clone(),
                tenant: self.tenant.clone(),
                topic,
                stats: stats.clone(),
            }) as Arc<dyn crate::DevicePublisher>
        });
        let batcher = rt.spawn(batcher(*self, rx, ack_tx, client, sink, stats.clone()));
        let mut running = Running::new(name, acknowledges, stats, vec![poll, batcher, acker]);
        running.publisher = publisher;
        Ok(running)
    }
}

/// Polls the event loop for ever: hands publishes over, subscribes at each connection, and
/// reconnects with backoff.
async fn poll(
    mut el: EventLoop,
    client: AsyncClient,
    filters: Vec<SubscribeFilter>,
    tx: mpsc::Sender<Publish>,
    stats: Arc<SourceStats>,
    name: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match el.poll().await {
            // A full queue (only at QoS 0, see QUEUE) stops reading until the batcher takes
            // one: the socket, then the broker, hold the rest.
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                if a.code != ConnectReturnCode::Success {
                    tracing::error!(source = %name, code = ?a.code, "mqtt broker refused the connection");
                    continue;
                }
                stats.connected.store(1, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                tracing::info!(source = %name, session_present = a.session_present, "mqtt connected");
                // Subscribing again when the broker kept the session is harmless.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(source = %name, "mqtt subscribe not sent: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                if s.return_codes.contains(&SubscribeReasonCode::Failure) {
                    tracing::error!(source = %name, codes = ?s.return_codes, "mqtt broker refused a subscription");
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.connected.store(0, Ordering::Relaxed);
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name, "mqtt connection: {e}; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A batch's messages waiting for its write, in arrival order.
struct Pending {
    write: Option<tokio::task::JoinHandle<Option<Written>>>,
    messages: Vec<Publish>,
    received_ms: i64,
    _slot: OwnedSemaphorePermit,
}

/// Takes what has arrived into batches, decodes them and starts their writes.
async fn batcher(
    src: MqttSource,
    mut rx: mpsc::Receiver<Publish>,
    acks: mpsc::Sender<Pending>,
    client: AsyncClient,
    sink: Arc<dyn Sink>,
    stats: Arc<SourceStats>,
) {
    let slots = Arc::new(Semaphore::new(WRITES));
    let mut log = BadLog::default();
    while let Some(first) = rx.recv().await {
        // Waiting for a slot first lets messages gather: batches grow with the load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.payload.len();
        let mut messages = vec![first];
        while messages.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    messages.push(p);
                }
                Err(_) => break,
            }
        }
        let received_ms = now_ms();
        stats
            .messages
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        stats
            .in_flight
            .fetch_add(messages.len() as i64, Ordering::Relaxed);
        let _ = stats.oldest_in_flight_ms.compare_exchange(
            0,
            received_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let mut batch = WriteBatch::new(src.tenant.clone());
        let ctx = DecodeContext {
            limits: &src.limits,
            now_ms: received_ms,
            max_decompressed_bytes: src.max_payload,
        };
        for m in &messages {
            let Some(why) = decode(&src, m, &ctx, &mut batch, &stats) else {
                continue;
            };
            log.bad(&src.name, &m.topic, &why);
            if let Some(t) = &src.dead_letter {
                match client.try_publish(t, QoS::AtLeastOnce, false, m.payload.clone()) {
                    Ok(()) => {
                        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(source = %src.name, "dead letter not sent: {e}"),
                }
            }
        }
        let write = (!batch.is_empty()).then(|| {
            tokio::spawn(write_until_taken(
                sink.clone(),
                batch,
                stats.clone(),
                src.name.clone(),
            ))
        });
        let pending = Pending {
            write,
            messages,
            received_ms,
            _slot: slot,
        };
        if acks.send(pending).await.is_err() {
            return;
        }
    }
}

/// Decodes one message into `batch`; returns what was wrong with it, if anything (counted).
fn decode(
    src: &MqttSource,
    m: &Publish,
    ctx: &DecodeContext<'_>,
    batch: &mut WriteBatch,
    stats: &SourceStats,
) -> Option<String> {
    if m.payload.len() > src.max_payload {
        stats.bad("too_large", 1);
        return Some(format!(
            "payload of {} bytes is over the limit of {} (limits.max_body_bytes)",
            m.payload.len(),
            src.max_payload
        ));
    }
    let device = src.pattern.as_ref().and_then(|p| p.device(&m.topic));
    match strata_ingest::events::decode_for(&m.payload, ctx, device, batch) {
        Ok(d) if d.rejected_total == 0 => None,
        Ok(d) => {
            for r in &d.rejected {
                stats.bad(r.reason.kind(), 1);
            }
            stats.bad(
                "other",
                d.rejected_total.saturating_sub(d.rejected.len()) as u64,
            );
            let first = d
                .rejected
                .first()
                .map(|r| r.to_string())
                .unwrap_or_default();
            Some(format!("{} item(s) refused: {first}", d.rejected_total))
        }
        Err(e) => {
            stats.bad("syntax", 1);
            Some(e.to_string())
        }
    }
}

/// Writes `batch`, retrying with backoff while the sink says retrying can succeed; `None` when
/// the server is stopping (the messages stay unacknowledged).
async fn write_until_taken(
    sink: Arc<dyn Sink>,
    batch: WriteBatch,
    stats: Arc<SourceStats>,
    name: String,
) -> Option<Written> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match sink.write(batch.clone()).await {
            Ok(w) => return Some(w),
            Err(SinkError::Stopped) => return None,
            Err(SinkError::Retry(e)) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name, "write not taken: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Acknowledges each batch's messages, in order, once its write is durable.
async fn acker(mut rx: mpsc::Receiver<Pending>, client: AsyncClient, stats: Arc<SourceStats>) {
    while let Some(p) = rx.recv().await {
        stats
            .oldest_in_flight_ms
            .store(p.received_ms, Ordering::Relaxed);
        let written = match p.write {
            None => Some(Written::default()),
            Some(h) => h.await.ok().flatten(),
        };
        // Stopping: what was not written stays with the broker.
        let Some(w) = written else { return };
        stats.samples.fetch_add(w.stored as u64, Ordering::Relaxed);
        stats.bad("refused", w.refused as u64);
        for m in &p.messages {
            if m.qos != QoS::AtMostOnce && client.ack(m).await.is_err() {
                return;
            }
        }
        let n = p.messages.len() as i64;
        stats.acked.fetch_add(n as u64, Ordering::Relaxed);
        if stats.in_flight.fetch_sub(n, Ordering::Relaxed) == n {
            stats.oldest_in_flight_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// Logs bad payloads with their topic: every one, up to a few a second (the rest counted).
#[derive(Default)]
struct BadLog {
    second: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl BadLog {
    fn bad(&mut self, source: &str, topic: &str, why: &str) {
        let now = Instant::now();
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                tracing::warn!(
                    source,
                    suppressed = self.suppressed,
                    "more bad payloads (not logged one by one)"
                );
            }
            self.second = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < 5 {
            self.logged += 1;
            tracing::warn!(
                source,
                topic,
                "bad payload, acknowledged and dropped: {why}"
            );
        } else {
            self.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_url: &str) -> MqttConfig {
        MqttConfig {
            name: None,
            url: toml_url.to_string(),
            topics: vec!["devices/+/telemetry".into()],
            device_from_topic: Some("devices/{device_id}/telemetry".into()),
            qos: 1,
            client_id: None,
            username: None,
            password: None,
            tenant: None,
            dead_letter_topic: None,
            shadow_delta_topic: default_delta_topic(),
            keep_alive_secs: 30,
            ca_file: None,
        }
    }

    fn check(c: &MqttConfig) -> Result<MqttSource, SourceError> {
        MqttSource::new(c, 0, "strata-x-0", Arc::new(Limits::default()), 1 << 20)
    }

    #[test]
    fn a_good_config_takes_the_url_apart() {
        let s = check(&cfg("mqtt://u:p@broker.local:1884")).unwrap();
        assert_eq!(
            s.options.broker_address(),
            ("broker.local".to_string(), 1884)
        );
        let login = s.options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
        assert!(!s.options.clean_session());
        assert_eq!(s.options.client_id(), "strata-x-0");
        assert!(s.acknowledges());
        let s = check(&cfg("mqtts://broker.local")).unwrap();
        assert_eq!(s.options.broker_address().1, 8883);
    }

    #[test]
    fn bad_settings_are_refused_naming_them() {
        let mut bad = Vec::new();
        bad.push((cfg("http://broker"), "scheme"));
        bad.push((cfg("not a url"), "url"));
        let mut c = cfg("mqtt://b");
        c.qos = 2;
        bad.push((c, "qos = 2"));
        let mut c = cfg("mqtt://b");
        c.topics.clear();
        bad.push((c, "topics is empty"));
        let mut c = cfg("mqtt://b");
        c.topics = vec!["a/#/b".into()];
        bad.push((c, "not a valid MQTT filter"));
        let mut c = cfg("mqtt://b");
        c.device_from_topic = Some("devices/x".into());
        bad.push((c, "device_from_topic"));
        let mut c = cfg("mqtt://b");
        c.dead_letter_topic = Some("dead/+".into());
        bad.push((c, "dead_letter_topic"));
        let mut c = cfg("mqtt://b");
        c.name = Some("a b\"".into());
        bad.push((c, "name must be"));
        let mut c = cfg("mqtt://b");
        c.tenant = Some(String::new());
        bad.push((c, "tenant"));
        for (c, want) in bad {
            let e = check(&c).err().expect(want).to_string();
            assert!(
                e.contains(want) && e.contains("sources.mqtt"),
                "{want}: {e}"
            );
        }
    }
}
