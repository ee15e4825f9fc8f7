//! Device rules in the server: the rules (from `[[alerting.device_rules]]` and from the
//! metadata database, which `/api/v1/alert-rules` edits), handed to every shard, which judges its
//! devices' readings by event time ([`strata_alert::device`]); the shards' state changes go to
//! the notifiers, and the firing alerts are kept here for `/api/v1/alerts`.
//!
//! The shards' state is the truth (checkpointed with their log offset and rebuilt by replay);
//! this hub only mirrors what is firing, registered again by each shard when it opens.

use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use strata_alert::device::{Change, DeviceRule, RuleSet};
use strata_alert::notify::{Notifications, Offered};
use strata_alert::state::{Alert, AlertObserver, AlertState};
use strata_meta::MetaStore;
use strata_model::{Labels, Tenant};

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[alerting.device_rules]]`: read-only through the API.
    Config,
    /// The metadata database (`/api/v1/alert-rules`).
    Api,
}

/// The device rules and their firing alerts (see the module doc).
pub struct DeviceRulesHub {
    config: Vec<DeviceRule>,
    meta: MetaStore,
    current: RwLock<Arc<RuleSet>>,
    epoch: AtomicU64,
    /// Firing alerts: device rules' (checked against the rules still defined) and other
    /// sources' events (`false`: kept as they are).
    firing: Mutex<BTreeMap<(Tenant, Labels), (Alert, bool)>>,
    notify: OnceLock<Arc<Notifications>>,
    observer: OnceLock<Arc<dyn AlertObserver>>,
    /// State changes published by the shards.
    pub changes: AtomicU64,
    /// Readings that came behind what their rule had judged (left out).
    pub late: AtomicU64,
}

impl DeviceRulesHub {
    /// The hub over the config's rules and the database's.
    pub async fn open(
        config: Vec<DeviceRule>,
        meta: MetaStore,
    ) -> anyhow::Result<Arc<DeviceRulesHub>> {
        let hub = Arc::new(DeviceRulesHub {
            config,
            meta,
            current: RwLock::new(Arc::new(RuleSet::default())),
            epoch: AtomicU64::new(0),
            firing: Mutex::new(BTreeMap::new()),
            notify: OnceLock::new(),
            observer: OnceLock::new(),
            changes: AtomicU64::new(0),
            late: AtomicU64::new(0),
        });
        hub.reload().await?;
        Ok(hub)
    }

    /// The metadata database.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// Sends state changes through `n` from now on (set once).
    pub fn notify_through(&self, n: Arc<Notifications>) {
        let _ = self.notify.set(n);
    }

    /// Tells `o` of state changes from now on (set once).
    pub fn observe_through(&self, o: Arc<dyn AlertObserver>) {
        let _ = self.observer.set(o);
    }

    /// Rebuilds the rule set from the config and the database; shards pick it up at their
    /// next commit. A stored rule that no longer checks is skipped, logged.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let mut rules = self.config.clone();
        for spec in self.meta.rules().await? {
            if rules.iter().any(|r| r.spec.rule_id == spec.rule_id) {
                continue;
            }
            let id = spec.rule_id.clone();
            match DeviceRule::new(spec) {
                Ok(r) => rules.push(r),
                Err(e) => tracing::error!(rule_id = id, error = e, "stored device rule skipped"),
            }
        }
        *self.current.write() = Arc::new(RuleSet::new(rules));
        self.epoch.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The current rules and their epoch (it grows at every change).
    pub fn rules(&self) -> (u64, Arc<RuleSet>) {
        let set = self.current.read().clone();
        (self.epoch.load(Ordering::Acquire), set)
    }

    /// The epoch of the current rules.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Where a rule of id `id` comes from.
    fn source_of(&self, id: &str) -> Source {
        if self.config.iter().any(|r| r.spec.rule_id == id) {
            Source::Config
        } else {
            Source::Api
        }
    }

    /// Rule `id` (of any tenant) and where it comes from.
    pub fn rule(&self, id: &str) -> Option<(DeviceRule, Source)> {
        let (_, set) = self.rules();
        let r = set.rules().iter().find(|r| r.spec.rule_id == id)?;
        Some((r.clone(), self.source_of(id)))
    }

    /// The rules of `tenant` and where each comes from.
    pub fn rules_of(&self, tenant: &Tenant) -> Vec<(DeviceRule, Source)> {
        let (_, set) = self.rules();
        set.rules()
            .iter()
            .filter(|r| &r.tenant == tenant)
            .map(|r| (r.clone(), self.source_of(&r.spec.rule_id)))
            .collect()
    }

    /// Firing alerts a shard holds (at open: what its checkpoint and replay restored).
    pub fn register_firing(&self, alerts: Vec<(Tenant, Alert)>) {
        let mut f = self.firing.lock();
        for (t, a) in alerts {
            f.insert((t, a.labels.clone()), (a, true));
        }
    }

    /// A shard's state changes: mirrored, and queued for the notifiers.
    pub fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        self.mirror_and_offer(changes, true);
    }

    /// Another source's alert changes (anomaly events): mirrored as firing alerts beside device
    /// rules' (not checked against rules), and queued for the notifiers.
    pub fn publish_events(&self, changes: Vec<Change>) {
        self.mirror_and_offer(changes, false);
    }

    fn mirror_and_offer(&self, changes: Vec<Change>, of_rules: bool) {
        {
            let mut f = self.firing.lock();
            for c in &changes {
                let key = (c.tenant.clone(), c.alert.labels.clone());
                match c.alert.state {
                    AlertState::Firing => {
                        f.insert(key, (c.alert.clone(), of_rules));
                    }
                    _ => {
                        f.remove(&key);
                    }
                }
            }
        }
        if let Some(o) = self.observer.get() {
            // Changes come a tenant at a time (a shard's batch): one call per run of a tenant.
            for run in changes.chunk_by(|a, b| a.tenant == b.tenant) {
                let alerts: Vec<&Alert> = run.iter().map(|c| &c.alert).collect();
                o.changed(&run[0].tenant, &alerts);
            }
        }
        if let Some(n) = self.notify.get() {
            let offered: Vec<Offered<'_>> = changes
                .iter()
                .map(|c| Offered {
                    alert: &c.alert,
                    generator_url: String::new(),
                    channels: &c.channels,
                })
                .collect();
            if let Err(e) = n.offer(&offered, strata_model::time::now_ms(), 60_000) {
                tracing::error!(error = e, "alert notifications not queued");
            }
        }
    }

    /// The firing device alerts of `tenant` (and other sources' events), of rules that still
    /// exist (a shard may publish
    /// a change of a rule just deleted before it picks up the new rules).
    pub fn firing(&self, tenant: &Tenant) -> Vec<Alert> {
        let (_, set) = self.rules();
        let exists = |id: &str| set.rules().iter().any(|r| r.spec.rule_id == id);
        self.firing
            .lock()
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .filter(|(_, (a, of_rules))| {
                let id = a
                    .labels
                    .get("rule_id")
                    .or_else(|| a.labels.get("alertname"));
                !of_rules || exists(id.unwrap_or(""))
            })
            .map(|(_, (a, _))| a.clone())
            .collect()
    }
}
