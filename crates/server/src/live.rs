//! Live push, the server's side: what the shards publish to the stream hub (each reading once
//! it is durable, each 1-minute window as it changes state), the update type the WebSocket
//! endpoint (`http::stream`) renders, and the stream's self-metrics.
//!
//! A shard asks the hub once per batch whether its tenant has any subscription at all (one
//! map read when none: the usual case costs ingest nothing more), then once per series and
//! subscription generation whether any subscription selects it (cached per shard), and
//! builds updates only for series somebody selects. Publishing happens after the shard's
//! locks are released and after the writers are acknowledged; it never waits for a client.

use crate::config::LiveConfig;
use ahash::AHashMap;
use parking_lot::{Mutex, MutexGuard};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use strata_alert::state::{Alert, AlertObserver, AlertState};
use strata_live::hub::{Conflation, Entry, JournalBounds};
use strata_live::protocol::Kind;
use strata_model::{Sample, SeriesId, SeriesKey, SeriesKeyRef, Tenant};
use strata_stream::rollup::Figures;
use strata_stream::shadow::DEVICE_LABEL;
use strata_stream::stage::{FinalTap, WindowView};
use strata_stream::window::{window_of, ClosedWindow, WindowState, Windows};
use strata_tsdb::ObserverSlot;

/// The stream hub of this server.
pub type Hub = strata_live::hub::Hub<Update>;

/// Series remembered per tenant by a shard's feed before it starts over.
const MAX_CACHED_SERIES: usize = 1 << 20;

/// The stream: its hub, its settings and what it did.
pub struct Live {
    /// Every tenant's stream.
    pub hub: Hub,
    /// `[live]`.
    pub cfg: LiveConfig,
    /// For `/metrics`.
    pub counters: LiveCounters,
}

impl Live {
    /// A stream of a new epoch (the time it starts, in ms: later than any earlier run's).
    pub fn new(cfg: LiveConfig) -> Arc<Live> {
        let epoch = strata_model::time::now_ms().max(1) as u64;
        Arc::new(Live {
            hub: Hub::new(
                epoch,
                JournalBounds {
                    messages: cfg.journal_messages,
                    bytes: cfg.journal_bytes,
                },
                std::time::Duration::from_millis(cfg.resume_window.0 as u64),
            ),
            cfg,
            counters: LiveCounters::default(),
        })
    }
}

/// What the stream did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// WebSocket connections open.
    pub connections: AtomicU64,
    /// Connections refused at the limit.
    pub refused: AtomicU64,
    /// Messages sent.
    pub messages: AtomicU64,
    /// Updates merged into a pending one of the same series and window.
    pub conflated: AtomicU64,
    /// Updates never sent because their connection was closed as too slow.
    pub dropped: AtomicU64,
    /// Connections closed as too slow.
    pub slow_closes: AtomicU64,
    /// Client messages refused (each answered with an error).
    pub bad_requests: AtomicU64,
    /// Snapshots sent to clients that could not resume exactly.
    pub snapshots: AtomicU64,
}

impl crate::metrics::Stage for Live {
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.gauge(
            "strata_live_connections",
            "WebSocket connections open at /api/v1/stream.",
            get(&c.connections) as i64,
        );
        let (live, lingering) = self.hub.subscriptions();
        out.gauges(
            "strata_live_subscriptions",
            "Stream subscriptions: of open connections, or lingering for a resume.",
            [
                ([("state", "open")], live as i64),
                ([("state", "lingering")], lingering as i64),
            ],
        );
        for (name, help, v) in [
            (
                "strata_live_refused_connections_total",
                "WebSocket connections refused at live.max_connections.",
                &c.refused,
            ),
            (
                "strata_live_messages_total",
                "Stream messages sent.",
                &c.messages,
            ),
            (
                "strata_live_conflated_total",
                "Updates merged into a pending update of the same series and window.",
                &c.conflated,
            ),
            (
                "strata_live_dropped_total",
                "Updates never sent: their connection was closed as too slow.",
                &c.dropped,
            ),
            (
                "strata_live_slow_closes_total",
                "Connections closed because their queue stayed full (close code 4008).",
                &c.slow_closes,
            ),
            (
                "strata_live_bad_requests_total",
                "Client messages answered with an error.",
                &c.bad_requests,
            ),
            (
                "strata_live_snapshots_total",
                "Snapshots sent to clients that could not resume exactly.",
                &c.snapshots,
            ),
        ] {
            out.counter(name, help, get(v));
        }
    }
}

/// What an update says, beside its series.
#[derive(Debug)]
pub enum Body {
    /// A stored sample.
    Reading(Sample),
    /// A window's state.
    Window(WindowView),
    /// The kind's fields as JSON (an object): shadows, alerts, anomalies.
    Fields(Value),
}

/// One update, rendered to JSON once, for every subscription that receives it.
#[derive(Debug)]
pub struct Update {
    body: Body,
    json: OnceLock<Box<str>>,
}

impl Update {
    /// An update saying `body`.
    pub fn new(body: Body) -> Update {
        Update {
            body,
            json: OnceLock::new(),
        }
    }

    /// What it says.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Its fields as a JSON object's text, `labels` (of `key`) first.
    pub fn json(&self, key: &SeriesKey) -> &str {
        self.json.get_or_init(|| {
            let mut out = String::with_capacity(key.as_bytes().len() + 96);
            out.push_str("{\"labels\":{");
            for (i, (n, v)) in key.as_ref().pairs().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(&mut out, n);
                out.push(':');
                push_json_str(&mut out, v);
            }
            out.push('}');
            let fields = match &self.body {
                // Readings are most of the stream: written directly, no map built.
                Body::Reading(s) => {
                    out.push_str(",\"timestamp\":");
                    out.push_str(itoa::Buffer::new().format(s.timestamp));
                    out.push_str(",\"value\":");
                    out.push_str(&crate::http::json_number(s.value).to_string());
                    None
                }
                Body::Window(w) => Some(crate::http::window_json(w)),
                Body::Fields(f) => Some(f.clone()),
            };
            if let Some(Value::Object(f)) = fields {
                for (k, v) in f {
                    out.push(',');
                    out.push_str(&Value::String(k).to_string());
                    out.push(':');
                    out.push_str(&v.to_string());
                }
            }
            out.push('}');
            out.into_boxed_str()
        })
    }
}

/// Appends `s` (UTF-8, as series keys hold) as a JSON string.
fn push_json_str(out: &mut String, s: &[u8]) {
    let s = String::from_utf8_lossy(s);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The conflation of a window's updates: one key per series and window, ranked by revision,
/// a final state above the provisional ones of its revision.
pub fn window_conflation(key: &SeriesKey, w: &WindowView) -> Conflation {
    let k = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), w.start as u64);
    let settled = u64::from(w.state != WindowState::Provisional);
    Conflation {
        key: k,
        rank: (u64::from(w.revision) << 1) | settled,
    }
}

/// What subscriptions select of one series.
#[derive(Debug)]
struct Interest {
    tenant: Tenant,
    key: Arc<SeriesKey>,
    readings: bool,
    windows: bool,
    groups: bool,
}

/// A tenant's series as far as its subscriptions select them, valid for one generation.
#[derive(Default)]
struct TenantInterest {
    generation: u64,
    /// By series id; `None`: nothing selects it. (Ids alone identify the negative answers:
    /// a 64-bit collision would at worst hide one series from the stream.)
    series: AHashMap<u64, Option<Arc<Interest>>>,
}

#[derive(Default)]
struct FeedState {
    tenants: AHashMap<Tenant, TenantInterest>,
    by_slot: Vec<SlotInterest>,
    readings: Vec<(Arc<Interest>, Sample)>,
    /// Group outputs stored by the commit.
    groups: Vec<(Arc<Interest>, Sample)>,
    /// Open windows changed by the commit: `(series slot, window start)`.
    touched: Vec<(ObserverSlot, i64, Arc<Interest>)>,
    windows: Vec<(Arc<Interest>, WindowView)>,
}

/// A shard's publisher (see the module doc); also the tap through which its rollup stage
/// hands over windows as they become final or are corrected.
pub struct Feed {
    live: Arc<Live>,
    window_ms: i64,
    quantiles: Vec<f64>,
    state: Mutex<FeedState>,
}

impl Feed {
    /// The feed of a shard whose windows are `window_ms` wide and report `quantiles`.
    pub fn new(live: Arc<Live>, window_ms: i64, quantiles: Vec<f64>) -> Arc<Feed> {
        Arc::new(Feed {
            live,
            window_ms,
            quantiles,
            state: Mutex::new(FeedState::default()),
        })
    }

    /// Starts following a commit.
    pub fn begin(&self) -> Commit<'_> {
        Commit {
            feed: self,
            state: self.state.lock(),
        }
    }

    /// Publishes what the commit and the settling after it gathered. Drained in place (the
    /// buffers keep their room for the next commit); only this shard's thread takes the
    /// feed's lock, and the hub never takes it, so holding it while publishing costs nothing.
    pub fn publish(&self) {
        let mut s = self.state.lock();
        let FeedState {
            readings,
            windows,
            groups,
            ..
        } = &mut *s;
        if readings.is_empty() && windows.is_empty() && groups.is_empty() {
            return;
        }
        let readings = readings.drain(..).map(|(i, sample)| {
            let size = i.key.as_bytes().len() + 64;
            let entry = Entry {
                kind: Kind::Readings,
                key: i.key.clone(),
                conflation: None,
                update: Update::new(Body::Reading(sample)),
            };
            (i.tenant.clone(), entry, size)
        });
        let windows = windows.drain(..).map(|(i, w)| {
            let size = i.key.as_bytes().len() + 256;
            let entry = Entry {
                kind: Kind::Windows,
                key: i.key.clone(),
                conflation: Some(window_conflation(&i.key, &w)),
                update: Update::new(Body::Window(w)),
            };
            (i.tenant.clone(), entry, size)
        });
        let groups = groups.drain(..).map(|(i, sample)| {
            let size = i.key.as_bytes().len() + 64;
            let entry = Entry {
                kind: Kind::Groups,
                key: i.key.clone(),
                // A recomputed group window rewrites its timestamp: the latest write wins.
                conflation: Some(Conflation {
                    key: xxhash_rust::xxh3::xxh3_64_with_seed(
                        i.key.as_bytes(),
                        sample.timestamp as u64,
                    ),
                    rank: 0,
                }),
                update: Update::new(Body::Reading(sample)),
            };
            (i.tenant.clone(), entry, size)
        });
        self.live
            .hub
            .publish_all(readings.chain(windows).chain(groups));
    }

    fn window(
        &self,
        start: i64,
        figures: Figures,
        state: WindowState,
        revision: u32,
    ) -> WindowView {
        WindowView {
            start,
            end: start + self.window_ms,
            figures,
            state,
            revision,
        }
    }

    /// A window from the stage's tap, of the series the windows know by `slot` if given.
    fn tap(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        slot: Option<u32>,
        w: impl FnOnce() -> WindowView,
    ) {
        let Some(g) = self.live.hub.generation(tenant.as_str()) else {
            return;
        };
        let mut s = self.state.lock();
        let s = &mut *s;
        let i = match slot {
            Some(slot) => interest_at(&self.live, &mut s.by_slot, tenant, g, slot, key),
            None => interest(
                &self.live,
                &mut s.tenants,
                tenant,
                g,
                SeriesId::of(tenant, key),
                key,
            ),
        };
        if let Some(i) = i {
            if i.windows {
                s.windows.push((i, w()));
            }
        }
    }
}

/// The hub's answer for one series.
fn ask(live: &Live, tenant: &Tenant, key: SeriesKeyRef<'_>) -> Option<Arc<Interest>> {
    let hub = &live.hub;
    let readings = hub.selects(tenant.as_str(), Kind::Readings, key);
    let windows = hub.selects(tenant.as_str(), Kind::Windows, key);
    let groups = is_group_output(key) && hub.selects(tenant.as_str(), Kind::Groups, key);
    (readings || windows || groups).then(|| {
        Arc::new(Interest {
            tenant: tenant.clone(),
            key: Arc::new(key.to_owned()),
            readings,
            windows,
            groups,
        })
    })
}

/// Whether `key` is a group rollup's output (`<metric>:<window>_by_<labels>_<output>`, as the
/// merge step names them), which kind `groups` streams.
pub fn is_group_output(key: SeriesKeyRef<'_>) -> bool {
    key.get(strata_model::METRIC_NAME.as_bytes())
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.split_once(':'))
        .is_some_and(|(_, rest)| rest.contains("_by_"))
}

/// The answer for one series, from the cache by id or the hub.
fn interest(
    live: &Live,
    tenants: &mut AHashMap<Tenant, TenantInterest>,
    tenant: &Tenant,
    generation: u64,
    id: SeriesId,
    key: SeriesKeyRef<'_>,
) -> Option<Arc<Interest>> {
    let t = match tenants.get_mut(tenant) {
        Some(t) => t,
        None => tenants.entry(tenant.clone()).or_default(),
    };
    if t.generation != generation || t.series.len() >= MAX_CACHED_SERIES {
        t.series.clear();
        t.generation = generation;
    }
    if let Some(i) = t.series.get(&id.0) {
        match i {
            Some(i) if i.key.as_bytes() == key.as_bytes() => return Some(i.clone()),
            Some(_) => {} // another series of the same id: asked afresh, not cached
            None => return None,
        }
    }
    let i = ask(live, tenant, key);
    t.series.entry(id.0).or_insert_with(|| i.clone());
    i
}

/// The answer for the series the windows know by index `slot`, from the cache by index (no
/// hashing: the common path) or the hub. An index's entry is cleared when the windows forget
/// its series, so a negative answer never outlives it.
fn interest_at(
    live: &Live,
    by_slot: &mut Vec<SlotInterest>,
    tenant: &Tenant,
    generation: u64,
    slot: u32,
    key: SeriesKeyRef<'_>,
) -> Option<Arc<Interest>> {
    let i = slot as usize;
    if by_slot.len() <= i {
        by_slot.resize(i + 1, SlotInterest::UNSET);
    }
    let e = &mut by_slot[i];
    let valid = e.generation == generation
        && e.interest
            .as_ref()
            .is_none_or(|x| x.key.as_bytes() == key.as_bytes() && &x.tenant == tenant);
    if !valid {
        *e = SlotInterest {
            generation,
            interest: ask(live, tenant, key),
        };
    }
    e.interest.clone()
}

/// A cached answer by window index.
#[derive(Clone)]
struct SlotInterest {
    generation: u64,
    interest: Option<Arc<Interest>>,
}

impl SlotInterest {
    const UNSET: SlotInterest = SlotInterest {
        generation: u64::MAX,
        interest: None,
    };
}

/// A commit being followed (see [`Feed::begin`]).
pub struct Commit<'a> {
    feed: &'a Feed,
    state: MutexGuard<'a, FeedState>,
}

impl Commit<'_> {
    /// Follows a batch of `tenant`: `None` when no subscription of the tenant can select
    /// anything (nothing to follow).
    pub fn tenant<'b>(&'b mut self, tenant: &'b Tenant) -> Option<TenantCommit<'b>> {
        let generation = self.feed.live.hub.generation(tenant.as_str())?;
        Some(TenantCommit {
            feed: self.feed,
            state: &mut self.state,
            tenant,
            generation,
        })
    }

    /// Reads the open windows the commit changed, for their provisional state (call with the
    /// windows the commit observed into, still locked).
    pub fn provisional(&mut self, windows: &Windows) {
        let FeedState {
            touched,
            windows: out,
            ..
        } = &mut *self.state;
        // A window touched by several batches of the commit is read once.
        touched.sort_by_key(|(slot, start, _)| (slot.0, *start));
        touched.dedup_by_key(|(slot, start, _)| (slot.0, *start));
        for (slot, start, i) in touched.drain(..) {
            if let Some((key, rollup)) = windows.open_rollup(slot, start) {
                if key.as_bytes() != i.key.as_bytes() {
                    continue;
                }
                let figures = rollup.figures(&self.feed.quantiles);
                let w = self
                    .feed
                    .window(start, figures, WindowState::Provisional, 0);
                out.push((i, w));
            }
        }
    }
}

/// A batch of one tenant being followed.
pub struct TenantCommit<'a> {
    feed: &'a Feed,
    state: &'a mut FeedState,
    tenant: &'a Tenant,
    generation: u64,
}

impl TenantCommit<'_> {
    /// The raw tier stored `stored` of series `id`, `key`; with `windows`, the rollup windows
    /// observed them too and know the series by `slot`.
    pub fn stored(
        &mut self,
        id: SeriesId,
        key: SeriesKeyRef<'_>,
        stored: &[Sample],
        slot: ObserverSlot,
        windows: bool,
    ) {
        let s = &mut *self.state;
        let i = if windows && slot != ObserverSlot::EMPTY {
            interest_at(
                &self.feed.live,
                &mut s.by_slot,
                self.tenant,
                self.generation,
                slot.0,
                key,
            )
        } else {
            interest(
                &self.feed.live,
                &mut s.tenants,
                self.tenant,
                self.generation,
                id,
                key,
            )
        };
        let Some(i) = i else {
            return;
        };
        if i.readings {
            self.state
                .readings
                .extend(stored.iter().map(|s| (i.clone(), *s)));
        }
        if i.groups {
            self.state
                .groups
                .extend(stored.iter().map(|s| (i.clone(), *s)));
        }
        if i.windows && windows {
            let mut last = None;
            for s in stored {
                let start = window_of(s.timestamp, self.feed.window_ms);
                if last != Some(start) {
                    last = Some(start);
                    self.state.touched.push((slot, start, i.clone()));
                }
            }
        }
    }
}

impl FinalTap for Feed {
    fn closed(&self, window: &ClosedWindow<'_>, figures: &Figures) {
        self.tap(window.tenant, window.key, Some(window.series), || {
            self.window(window.start, figures.clone(), WindowState::Final, 0)
        });
    }

    fn settled(&self, _closed_before: i64) {}

    fn forgotten(&self, series: u32) {
        if let Some(e) = self.state.lock().by_slot.get_mut(series as usize) {
            *e = SlotInterest::UNSET;
        }
    }

    fn corrected(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        start: i64,
        figures: &Figures,
        revision: u32,
    ) {
        self.tap(tenant, key, None, || {
            self.window(start, figures.clone(), WindowState::Corrected, revision)
        });
    }
}

/// The `alertname` of anomaly events, which stream under kind `anomalies`.
const ANOMALY_ALERTNAME: &str = "AnomalyDetected";

/// An alert's state change as a stream entry: anomaly events under kind `anomalies`, every
/// other alert under `alerts`; conflated per alert, the latest evaluation winning.
pub fn alert_entry(a: &Alert) -> Entry<Update> {
    let kind = if a.labels.get("alertname") == Some(ANOMALY_ALERTNAME) {
        Kind::Anomalies
    } else {
        Kind::Alerts
    };
    let key = Arc::new(a.labels.key());
    let state = match a.state {
        AlertState::Inactive => "resolved",
        s => s.as_str(),
    };
    let fields = serde_json::json!({
        "state": state,
        "value": crate::http::json_number(a.value),
        "active_at": a.active_at,
        "fired_at": a.fired_at,
        "resolved_at": a.resolved_at,
        "annotations": a.annotations,
    });
    Entry {
        kind,
        conflation: Some(Conflation {
            key: xxhash_rust::xxh3::xxh3_64(key.as_bytes()),
            rank: a.last_eval.max(0) as u64,
        }),
        key,
        update: Update::new(Body::Fields(fields)),
    }
}

/// A device's reported state changed: series `key` (of a device) took reading `s`. Conflated
/// per series, the newest reading winning.
pub fn reported_entry(key: SeriesKeyRef<'_>, s: Sample) -> Entry<Update> {
    let label = |name: &str| String::from_utf8_lossy(key.get(name.as_bytes()).unwrap_or_default());
    let device = label(DEVICE_LABEL);
    let name = label(strata_model::METRIC_NAME);
    let mut reported = serde_json::Map::new();
    reported.insert(name.into_owned(), crate::http::json_number(s.value));
    let fields = serde_json::json!({
        "device": device,
        "reported": reported,
        "timestamp": s.timestamp,
    });
    let key = Arc::new(key.to_owned());
    Entry {
        kind: Kind::Shadows,
        conflation: Some(Conflation {
            key: xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 1),
            rank: s.timestamp.max(0) as u64,
        }),
        key,
        update: Update::new(Body::Fields(fields)),
    }
}

/// A device's desired state changed: `desired`, `delta` and `version` as the shadow document
/// of `GET /api/v1/devices/{id}/shadow` holds them after the change. Its labels are the
/// device's alone; conflated per device, the highest version winning.
pub fn desired_entry(device: &str, desired: &Value, delta: &Value, version: u64) -> Entry<Update> {
    let key = device_key(device);
    let fields = serde_json::json!({
        "device": device,
        "desired": desired,
        "delta": delta,
        "version": version,
        "timestamp": strata_model::time::now_ms(),
    });
    Entry {
        kind: Kind::Shadows,
        conflation: Some(Conflation {
            key: xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 2),
            rank: version,
        }),
        key: Arc::new(key),
        update: Update::new(Body::Fields(fields)),
    }
}

/// The labels of a device's own updates (its desired state): `{device="<id>"}`.
pub fn device_key(device: &str) -> SeriesKey {
    SeriesKey::from_sorted_pairs([(DEVICE_LABEL.as_bytes(), device.as_bytes())])
}

impl Live {
    /// Publishes entries of `tenant`, each with its size, when the tenant has subscriptions.
    pub fn publish(&self, tenant: &Tenant, entries: impl IntoIterator<Item = Entry<Update>>) {
        if self.hub.generation(tenant.as_str()).is_none() {
            return;
        }
        self.hub.publish_all(entries.into_iter().map(|e| {
            let size = e.key.as_bytes().len() + 256;
            (tenant, e, size)
        }));
    }
}

/// Alerts' and anomaly events' state changes go to the hub as they happen.
impl AlertObserver for Live {
    fn changed(&self, tenant: &Tenant, alerts: &[&Alert]) {
        self.publish(tenant, alerts.iter().map(|a| alert_entry(a)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn updates_render_as_json_objects_with_labels_first() {
        let key = SeriesKey::from_sorted_pairs([
            (b"__name__".as_slice(), b"t".as_slice()),
            (b"note".as_slice(), "a\"b\\c\n\u{1}\u{e9}".as_bytes()),
        ]);
        let r = Update::new(Body::Reading(Sample {
            timestamp: 1_700_000_000_123,
            value: 20.0,
        }));
        let v: Value = serde_json::from_str(r.json(&key)).unwrap();
        assert_eq!(
            v,
            json!({"labels": {"__name__": "t", "note": "a\"b\\c\n\u{1}\u{e9}"},
                "timestamp": 1_700_000_000_123i64, "value": 20.0})
        );
        let nan = Update::new(Body::Reading(Sample {
            timestamp: 1,
            value: f64::NAN,
        }));
        let v: Value = serde_json::from_str(nan.json(&key)).unwrap();
        assert_eq!(v["value"], "NaN");
        let f = Update::new(Body::Fields(json!({"state": "firing", "n": [1, 2]})));
        let v: Value = serde_json::from_str(f.json(&key)).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["n"][1].as_u64()),
            (Some("firing"), Some(2))
        );
        assert_eq!(v["labels"]["__name__"], "t");
    }
}
