//! Notifiers: alerts leave Strata for Alertmanager (API v2), generic webhooks (Alertmanager's
//! webhook payload, version 4), Slack incoming webhooks and PagerDuty (Events API v2).
//!
//! After each evaluation the rules manager offers its alerts to [`Notifications::offer`]. Each
//! notifier takes the alerts its matchers select and turns their **state changes** into
//! notifications: an alert that started firing, one that resolved (with `send_resolved`), and a
//! still-firing alert again every `repeat_interval` (for Alertmanager, every resend delay, with
//! `endsAt` set as Prometheus sets it so Alertmanager keeps it firing between resends). A state
//! change has an id (notifier, alert fingerprint, the change and its time); the [`outbox`]
//! remembers ids it queued, so a change is queued once even when a restart restores the alert
//! and evaluates it again. Webhook and Slack notifications group the changes of one evaluation
//! by `group_by` labels; PagerDuty gets one event per alert, `dedup_key` its fingerprint.
//!
//! Each notifier has a sender task delivering its queue in order: a 2xx removes the entry; a
//! 408, 429, 5xx or transport error retries with exponential backoff (1 s doubling to 5 min),
//! or after `Retry-After` when the receiver says; any other status drops the entry as refused
//! (counted, logged with the receiver's answer). Entries older than [`MAX_AGE_MS`] are dropped
//! as expired. Delivery is at least once: a crash after the receiver answered and before the
//! entry was marked done sends it once more on restart (Alertmanager and PagerDuty deduplicate
//! by labels and `dedup_key`).

pub mod outbox;
pub mod payload;

use crate::state::{Alert, AlertState};
use outbox::{Entry, Outbox};
use parking_lot::Mutex;
use payload::Notice;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_model::{Labels, Matcher};

/// Queued notifications older than this are dropped (their alerts' news is stale).
pub const MAX_AGE_MS: i64 = 24 * 3_600_000;

/// Event ids not offered for this long are forgotten (their alerts are gone).
const SEEN_FOR_MS: i64 = 24 * 3_600_000;

/// Longest wait between delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a notifier speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Alertmanager, `POST <url>/api/v2/alerts`.
    Alertmanager,
    /// A generic webhook: Alertmanager's webhook payload (version 4).
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// PagerDuty Events API v2.
    PagerDuty,
}

impl Kind {
    /// Its name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alertmanager => "alertmanager",
            Kind::Webhook => "webhook",
            Kind::Slack => "slack",
            Kind::PagerDuty => "pagerduty",
        }
    }
}

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// One notifier.
#[derive(Debug, Clone)]
pub struct NotifierSpec {
    /// What rules and routes call it.
    pub name: String,
    /// What it speaks.
    pub kind: Kind,
    /// Alertmanager's base URL, the webhook's or Slack's URL, PagerDuty's endpoint.
    pub url: String,
    /// PagerDuty's integration key.
    pub routing_key: Option<String>,
    /// Slack's channel, overriding the webhook's own.
    pub channel: Option<String>,
    /// Which alerts it takes (all when empty).
    pub matchers: Vec<Matcher>,
    /// Webhook and Slack: the labels a notification groups alerts by.
    pub group_by: Vec<String>,
    /// How often a still-firing alert is sent again, ms.
    pub repeat_interval_ms: i64,
    /// Whether resolutions are sent.
    pub send_resolved: bool,
    /// How long one request may take, ms.
    pub timeout_ms: i64,
}

impl NotifierSpec {
    fn takes(&self, labels: &Labels) -> bool {
        self.matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
    }

    fn endpoint(&self) -> String {
        match self.kind {
            Kind::Alertmanager => format!("{}/api/v2/alerts", self.url.trim_end_matches('/')),
            _ => self.url.clone(),
        }
    }
}

/// What one notifier did, for `/metrics`.
#[derive(Debug, Default)]
pub struct NotifierStats {
    /// Requests the receiver accepted.
    pub sent: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retried: AtomicU64,
    /// Entries dropped: refused by the receiver, or expired.
    pub failed: AtomicU64,
}

struct Channel {
    spec: NotifierSpec,
    stats: NotifierStats,
    wake: tokio::sync::Notify,
}

/// The notifiers and their outbox (see the module doc).
pub struct Notifications {
    channels: Vec<Arc<Channel>>,
    outbox: Mutex<Outbox>,
    external_url: String,
    client: reqwest::Client,
}

/// An alert offered for notification, with where its rule can be seen.
pub struct Offered<'a> {
    /// The alert.
    pub alert: &'a Alert,
    /// A link to the rule's expression.
    pub generator_url: String,
    /// The notifiers it may go to (empty: every one whose match takes it).
    pub channels: &'a [String],
}

impl Notifications {
    /// Opens the outbox in `dir` and starts one sender per notifier on `runtime`.
    pub fn start(
        specs: Vec<NotifierSpec>,
        dir: &Path,
        external_url: &str,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<Notifications>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (outbox, damage) = Outbox::open(&dir.join("outbox")).map_err(|e| e.to_string())?;
        if let Some(d) = damage {
            tracing::error!(
                damage = d,
                "notification outbox damaged; kept what came before"
            );
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("Strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let n = Arc::new(Notifications {
            channels: specs
                .into_iter()
                .map(|spec| {
                    Arc::new(Channel {
                        spec,
                        stats: NotifierStats::default(),
                        wake: tokio::sync::Notify::new(),
                    })
                })
                .collect(),
            outbox: Mutex::new(outbox),
            external_url: external_url.to_string(),
            client,
        });
        for c in &n.channels {
            runtime.spawn(deliver(Arc::downgrade(&n), c.clone()));
        }
        Ok(n)
    }

    /// The notifiers' names and counters, with how many entries each has queued.
    pub fn stats(&self) -> Vec<(&str, &str, &NotifierStats, usize)> {
        let queued = self.outbox.lock().pending_by_notifier();
        self.channels
            .iter()
            .map(|c| {
                let q = queued.get(&c.spec.name).copied().unwrap_or(0);
                (c.spec.name.as_str(), c.spec.kind.as_str(), &c.stats, q)
            })
            .collect()
    }

    /// Queues the state changes among `alerts` (evaluated at `now`, by a group of interval
    /// `interval_ms`) that no notification carried yet, durably; wakes their senders.
    pub fn offer(&self, alerts: &[Offered<'_>], now: i64, interval_ms: i64) -> Result<(), String> {
        let mut ob = self.outbox.lock();
        let mut entries = Vec::new();
        for (ci, c) in self.channels.iter().enumerate() {
            let spec = &c.spec;
            let mut changes: Vec<(Notice, u64)> = Vec::new();
            for o in alerts {
                let a = o.alert;
                let named = o.channels.is_empty() || o.channels.contains(&spec.name);
                if !named || !spec.takes(&a.labels) {
                    continue;
                }
                let fp = payload::fingerprint(&a.labels);
                let (firing, at, repeat) = match (a.state, a.fired_at, a.resolved_at) {
                    (AlertState::Firing, Some(f), _) => {
                        (true, f, (now - f).max(0) / spec.repeat_interval_ms.max(1))
                    }
                    (AlertState::Inactive, Some(_), Some(r)) if spec.send_resolved => (false, r, 0),
                    _ => continue,
                };
                let id = event_id(ci, fp, firing, at, repeat);
                if ob.seen(id, now) {
                    continue;
                }
                let notice = Notice {
                    fingerprint: fp,
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    firing,
                    starts_at: a.active_at,
                    resolved_at: a.resolved_at,
                    generator_url: o.generator_url.clone(),
                };
                changes.push((notice, id));
            }
            if changes.is_empty() {
                continue;
            }
            let entry = |body: String, events: Vec<u64>| Entry {
                seq: 0,
                notifier: spec.name.clone(),
                body,
                events,
                queued_at: now,
            };
            match spec.kind {
                Kind::Alertmanager => {
                    // As Prometheus: valid for four resends (or evaluations), refreshed by each.
                    let valid = now + 4 * spec.repeat_interval_ms.max(interval_ms);
                    let (notices, ids): (Vec<Notice>, Vec<u64>) = changes.into_iter().unzip();
                    entries.push(entry(payload::alertmanager(&notices, valid), ids));
                }
                Kind::PagerDuty => {
                    let key = spec.routing_key.as_deref().unwrap_or("");
                    for (n, id) in changes {
                        entries.push(entry(
                            payload::pagerduty(key, &n, &self.external_url),
                            vec![id],
                        ));
                    }
                }
                Kind::Webhook | Kind::Slack => {
                    let mut groups: BTreeMap<Labels, (Vec<Notice>, Vec<u64>)> = BTreeMap::new();
                    for (n, id) in changes {
                        let key = Labels::from_pairs(
                            spec.group_by
                                .iter()
                                .filter_map(|l| Some((l.clone(), n.labels.get(l)?.to_string()))),
                        )
                        .unwrap_or_default();
                        let g = groups.entry(key).or_default();
                        g.0.push(n);
                        g.1.push(id);
                    }
                    for (key, (notices, ids)) in groups {
                        let body = match spec.kind {
                            Kind::Slack => payload::slack(&key, &notices, spec.channel.as_deref()),
                            _ => payload::webhook(&spec.name, &key, &notices, &self.external_url),
                        };
                        entries.push(entry(body, ids));
                    }
                }
            }
        }
        ob.forget_seen_before(now - SEEN_FOR_MS);
        if entries.is_empty() {
            return Ok(());
        }
        let pushed = ob.push(entries).map_err(|e| e.to_string())?;
        drop(ob);
        for e in pushed {
            if let Some(c) = self.channels.iter().find(|c| c.spec.name == e.notifier) {
                c.wake.notify_one();
            }
        }
        Ok(())
    }

    fn mark_done(&self, seq: u64) {
        if let Err(e) = self.outbox.lock().done(seq) {
            tracing::error!(error = %e, "notification outbox: cannot record a delivery");
        }
    }
}

/// The id of a state change: the notifier, the alert, firing or resolved, when, and which
/// repeat.
fn event_id(notifier: usize, fp: u64, firing: bool, at: i64, repeat: i64) -> u64 {
    let mut b = [0u8; 33];
    b[..8].copy_from_slice(&(notifier as u64).to_le_bytes());
    b[8..16].copy_from_slice(&fp.to_le_bytes());
    b[16] = u8::from(firing);
    b[17..25].copy_from_slice(&at.to_le_bytes());
    b[25..33].copy_from_slice(&repeat.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&b)
}

/// How one delivery attempt ended.
enum Outcome {
    Delivered,
    Retry(Option<Duration>, String),
    Refused(String),
}

/// Delivers `c`'s queue in order, for as long as the notifications exist.
async fn deliver(n: std::sync::Weak<Notifications>, c: Arc<Channel>) {
    let mut attempts = 0u32;
    loop {
        let Some(notes) = n.upgrade() else { return };
        let next = notes.outbox.lock().next_for(&c.spec.name, 0);
        let Some(entry) = next else {
            drop(notes);
            // Woken by new entries; the timeout only checks that the notifications still exist.
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wake.notified()).await;
            continue;
        };
        if strata_model::time::now_ms() - entry.queued_at > MAX_AGE_MS {
            c.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                notifier = c.spec.name,
                "notification expired undelivered after 24h"
            );
            finish(&notes, entry.seq).await;
            attempts = 0;
            continue;
        }
        match attempt(&notes.client, &c.spec, &entry).await {
            Outcome::Delivered => {
                c.stats.sent.fetch_add(1, Ordering::Relaxed);
                finish(&notes, entry.seq).await;
                attempts = 0;
            }
            Outcome::Refused(why) => {
                c.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(notifier = c.spec.name, why, "notification refused; dropped");
                finish(&notes, entry.seq).await;
                attempts = 0;
            }
            Outcome::Retry(after, why) => {
                c.stats.retried.fetch_add(1, Ordering::Relaxed);
                let backoff = Duration::from_secs(1 << attempts.min(9)).min(MAX_BACKOFF);
                let wait = after.unwrap_or(backoff).min(MAX_BACKOFF);
                attempts += 1;
                tracing::warn!(notifier = c.spec.name, why, retry_in = ?wait, "notification not delivered");
                drop(notes);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn finish(n: &Arc<Notifications>, seq: u64) {
    let n = n.clone();
    let _ = tokio::task::spawn_blocking(move || n.mark_done(seq)).await;
}

async fn attempt(client: &reqwest::Client, spec: &NotifierSpec, e: &Entry) -> Outcome {
    let sent = client
        .post(spec.endpoint())
        .header("Content-Type", "application/json")
        .timeout(Duration::from_millis(spec.timeout_ms.max(1) as u64))
        .body(e.body.clone())
        .send()
        .await;
    let r = match sent {
        Ok(r) => r,
        Err(err) => return Outcome::Retry(None, err.to_string()),
    };
    let status = r.status();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let retry_after = r
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let text: String = r
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let why = format!("{status}: {text}");
    match status.as_u16() {
        408 | 429 | 500..=599 => Outcome::Retry(retry_after, why),
        _ => Outcome::Refused(why),
    }
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    if let Ok(s) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let t = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let ms = t.timestamp_millis() - strata_model::time::now_ms();
    Some(Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
