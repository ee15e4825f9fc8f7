//! The device registry at ingest: a cache of every registered device (reloaded when the
//! registry's version changes, checked every second, so a change on any node is seen within
//! one), the policy for readings of unknown or inactive devices, and enrichment: the registry
//! fields named in `[registry] enrich` added as labels to every series of the device.
//!
//! A series keeps a label it brought: enrichment only adds labels it lacks (so a device that
//! sends its own `site` keeps it). A registry change applies to samples written from then on;
//! stored samples keep the labels they were written with.
//!
//! Enrichment is paid once per series and registry version, not once per sample: each worker
//! thread remembers the enriched key of every series it enriched (the ingest decoders'
//! [`SeriesCache`], keyed by the series as it came), so a series seen before takes its
//! remembered key, not a rebuilt one; under `accept` it does so in place, with no second batch.
//! Any reload of the registry starts the memories over.

use crate::metrics::Counter;
use crate::roster::Roster;
use ahash::AHashMap;
use parking_lot::RwLock;
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_ingest::cache::SeriesCache;
use strata_meta::registry::Device;
use strata_meta::MetaStore;
use strata_model::{Limits, Tenant, WriteBatch};

/// What happens to readings of devices the registry does not know, or knows as inactive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Stored as any other (the default).
    #[default]
    Accept,
    /// Refused: the write's answer names the device (4xx).
    Reject,
    /// Stored apart, in tenant `<tenant>.quarantine`, and counted.
    Quarantine,
}

/// One cached device: its record, and the labels enrichment adds, sorted by name.
pub struct Known {
    /// The registry's record.
    pub device: Device,
    /// Its expected reporting interval (ms), parsed.
    pub interval_ms: Option<i64>,
    labels: Vec<(String, String)>,
}

impl Known {
    /// A cached device whose enrichment adds `labels` (name, value).
    pub fn new(device: Device, mut labels: Vec<(String, String)>) -> Known {
        labels.sort();
        Known {
            interval_ms: device.interval_ms(),
            device,
            labels,
        }
    }
}

/// Registered devices of one tenant, by id.
pub type Devices = AHashMap<String, Arc<Known>>;

#[derive(Default)]
struct Cache {
    version: i64,
    /// Unique in the process for each load (of any registry), so a thread's memory of
    /// enriched series knows when it is stale.
    generation: u64,
    tenants: AHashMap<String, Devices>,
    /// The same devices in id order, for fleet scans.
    rosters: AHashMap<String, Arc<Roster>>,
}

/// The last cache generation handed out.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's enriched series (see the module doc) and the cache generation they were
    /// enriched under.
    static ENRICHED: RefCell<(u64, SeriesCache)> = RefCell::new((0, SeriesCache::default()));
}

/// The registry's cache and admission (see the module doc).
pub struct Registry {
    meta: MetaStore,
    enrich: Vec<String>,
    policy: Policy,
    cache: RwLock<Cache>,
    /// Samples stored apart as quarantined.
    pub quarantined: Counter,
    /// Samples refused as of unknown or inactive devices.
    pub refused: Counter,
    /// Series written with registry labels added.
    pub enriched: Counter,
}

/// What admission made of a batch.
pub struct Admitted {
    /// What goes on to be written.
    pub batch: WriteBatch,
    /// What is stored apart (quarantine), in its own tenant.
    pub quarantine: Option<WriteBatch>,
    /// Devices refused (the first few), and the samples they carried.
    pub refused: Vec<String>,
    /// Samples refused.
    pub refused_samples: usize,
}

/// What admission does with one series.
enum Fate<'a> {
    /// Written as it came.
    Keep,
    /// Written with the registry labels it lacks.
    Enrich(&'a [(String, String)]),
    /// Refused: its device (unknown or inactive) is named in the answer.
    Refuse(&'a [u8]),
    /// Stored apart.
    Quarantine,
}

/// Refused devices named in an answer; the rest are only counted.
const NAMED: usize = 10;

impl Registry {
    /// The registry over `meta`, its cache loaded.
    pub async fn open(
        meta: MetaStore,
        enrich: Vec<String>,
        policy: Policy,
    ) -> Result<Arc<Registry>, strata_meta::MetaError> {
        let r = Arc::new(Registry {
            meta,
            enrich,
            policy,
            cache: RwLock::new(Cache::default()),
            quarantined: Counter::default(),
            refused: Counter::default(),
            enriched: Counter::default(),
        });
        r.reload().await?;
        Ok(r)
    }

    /// The metadata database.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// Reloads the cache if the registry changed since it was loaded.
    pub async fn refresh(&self) -> Result<(), strata_meta::MetaError> {
        let v = self.meta.registry_version().await?;
        if v != self.cache.read().version {
            self.reload().await?;
        }
        Ok(())
    }

    /// Loads every device (at open, and after this node changed the registry).
    pub async fn reload(&self) -> Result<(), strata_meta::MetaError> {
        let version = self.meta.registry_version().await?;
        let all = self.meta.all_devices().await?;
        let mut tenants: AHashMap<String, Devices> = AHashMap::new();
        for (t, d) in all {
            let k = self.known(d);
            tenants
                .entry(t)
                .or_default()
                .insert(k.device.id.clone(), Arc::new(k));
        }
        let rosters = tenants
            .iter()
            .map(|(t, d)| (t.clone(), Arc::new(Roster::new(d.values().map(|k| &**k)))))
            .collect();
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
        *self.cache.write() = Cache {
            version,
            generation,
            tenants,
            rosters,
        };
        Ok(())
    }

    fn known(&self, device: Device) -> Known {
        let labels = self
            .enrich
            .iter()
            .filter_map(|n| device.value(n).map(|v| (n.clone(), v.to_string())))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Known::new(device, labels)
    }

    /// The registered devices of `tenant` in id order (empty when none).
    pub fn roster(&self, tenant: &str) -> Arc<Roster> {
        self.cache
            .read()
            .rosters
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// The cached device `id` of `tenant`.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Known>> {
        self.cache.read().tenants.get(tenant)?.get(id).cloned()
    }

    /// Reloads every second, for changes made on other nodes (this node's own changes
    /// reload at once).
    pub fn spawn_refresh(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(r) = weak.upgrade() else { return };
                if let Err(e) = r.refresh().await {
                    tracing::warn!("device registry not refreshed: {e}");
                }
            }
        });
    }

    /// Applies the policy and enrichment to `batch`.
    pub fn admit(&self, batch: WriteBatch, limits: &Limits) -> Admitted {
        let mut out = Admitted {
            batch,
            quarantine: None,
            refused: Vec::new(),
            refused_samples: 0,
        };
        if self.enrich.is_empty() && self.policy == Policy::Accept {
            return out;
        }
        let cache = self.cache.read();
        let devices = cache.tenants.get(out.batch.tenant().as_str());
        let policy = self.policy;
        let generation = cache.generation;
        let with_memory = |f: &mut dyn FnMut(&mut SeriesCache)| {
            ENRICHED.with_borrow_mut(|(g, memory)| {
                if *g != generation {
                    memory.clear();
                    *g = generation;
                }
                f(memory)
            })
        };
        if policy == Policy::Accept {
            // Nothing is dropped or set apart: series are relabelled where they are.
            with_memory(&mut |memory| self.relabel(&mut out.batch, devices, memory, limits));
            return out;
        }
        // Most batches need no change: look before copying.
        if out
            .batch
            .iter()
            .all(|s| matches!(fate_of(&s, devices, policy), Fate::Keep))
        {
            return out;
        }
        with_memory(&mut |memory| self.rewrite(&mut out, devices, memory, limits));
        drop(cache);
        out
    }

    /// Enriches, in place, the series of `batch` that admission enriches (under `accept`, the
    /// only change it makes).
    fn relabel(
        &self,
        batch: &mut WriteBatch,
        devices: Option<&Devices>,
        memory: &mut SeriesCache,
        limits: &Limits,
    ) {
        let mut scratch: Option<WriteBatch> = None;
        let mut enriched = 0;
        for i in 0..batch.series_len() {
            let s = batch.get(i).expect("in range");
            // Only enriched series are remembered (see `rewrite`).
            if let Some((key, id, entity)) = memory.get(limits, s.id.0, s.key.as_bytes()) {
                batch.rekey(i, key, id, entity);
                enriched += 1;
                continue;
            }
            let Fate::Enrich(extra) = fate_of(&s, devices, self.policy) else {
                continue;
            };
            let mut pairs = Vec::new();
            enriched_labels(&mut pairs, &s, extra);
            let scratch = scratch.get_or_insert_with(|| WriteBatch::new(batch.tenant().clone()));
            scratch.clear();
            // Over a label limit with the registry's labels: written as it came.
            if scratch.push_series(&mut pairs, &[], None, limits).is_err() {
                continue;
            }
            let new = scratch.get(0).expect("just pushed");
            memory.insert(s.id.0, s.key.as_bytes(), &new);
            batch.rekey(i, new.key, new.id, new.entity);
            enriched += 1;
        }
        self.enriched.add(enriched);
    }

    /// Rebuilds `out.batch` as admission decided, series by series.
    fn rewrite(
        &self,
        out: &mut Admitted,
        devices: Option<&Devices>,
        memory: &mut SeriesCache,
        limits: &Limits,
    ) {
        let policy = self.policy;
        let tenant = out.batch.tenant().clone();
        let mut kept = out.batch.empty_share(1);
        let mut quarantine = WriteBatch::new(quarantine_tenant(&tenant));
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        let mut enriched = 0;
        for s in out.batch.iter() {
            // Only enriched series are remembered, and only until the registry changes: a
            // series remembered is to be enriched, as it was (the series' id is the hash of
            // its key under the tenant's seed, and the memory's key).
            let (hash, raw) = (s.id.0, s.key.as_bytes());
            if memory.push_cached(limits, hash, raw, &mut kept, s.samples, s.event_id()) {
                enriched += 1;
                continue;
            }
            match fate_of(&s, devices, policy) {
                Fate::Keep => kept.push_from(&s),
                Fate::Refuse(id) => {
                    out.refused_samples += s.samples.len();
                    let id = String::from_utf8_lossy(id).into_owned();
                    if out.refused.len() < NAMED && !out.refused.contains(&id) {
                        out.refused.push(id);
                    }
                }
                Fate::Quarantine => {
                    let ev = s.event_id().map(|e| quarantine.event_key(e));
                    pairs.clear();
                    pairs.extend(s.key.pairs());
                    if quarantine
                        .push_series(&mut pairs, s.samples, ev, limits)
                        .is_ok()
                    {
                        self.quarantined.add(s.samples.len() as u64);
                    }
                }
                Fate::Enrich(extra) => {
                    enriched_labels(&mut pairs, &s, extra);
                    let ev = s.event_id().map(|e| kept.event_key(e));
                    match kept.push_series(&mut pairs, s.samples, ev, limits) {
                        Ok(()) => {
                            enriched += 1;
                            let last = kept.get(kept.series_len() - 1).expect("just pushed");
                            memory.insert(hash, raw, &last);
                        }
                        // Over a label limit with the registry's labels: written as it came.
                        Err(_) => kept.push_from(&s),
                    }
                }
            }
        }
        self.enriched.add(enriched);
        self.refused.add(out.refused_samples as u64);
        out.batch = kept;
        out.quarantine = (!quarantine.is_empty()).then_some(quarantine);
    }
}

/// Puts in `pairs` the labels of series `s` with those of `extra` it lacks (a series keeps a
/// label it brought).
fn enriched_labels<'a>(
    pairs: &mut Vec<(&'a [u8], &'a [u8])>,
    s: &strata_model::BatchSeries<'a>,
    extra: &'a [(String, String)],
) {
    pairs.clear();
    pairs.extend(s.key.pairs());
    for (n, v) in extra {
        if s.key.get(n.as_bytes()).is_none() {
            pairs.push((n.as_bytes(), v.as_bytes()));
        }
    }
}

/// What admission does with series `s` of a batch whose tenant has `devices`.
fn fate_of<'a>(
    s: &strata_model::BatchSeries<'a>,
    devices: Option<&'a Devices>,
    policy: Policy,
) -> Fate<'a> {
    let Some(id) = s.key.get(b"device") else {
        return Fate::Keep;
    };
    let known = std::str::from_utf8(id).ok().and_then(|id| devices?.get(id));
    match (known, policy) {
        (Some(k), _) if k.device.active => {
            if k.labels
                .iter()
                .all(|(n, _)| s.key.get(n.as_bytes()).is_some())
            {
                Fate::Keep
            } else {
                Fate::Enrich(&k.labels)
            }
        }
        (_, Policy::Accept) => Fate::Keep,
        (_, Policy::Reject) => Fate::Refuse(id),
        (_, Policy::Quarantine) => Fate::Quarantine,
    }
}

/// Where quarantined readings of `tenant` go.
pub fn quarantine_tenant(tenant: &Tenant) -> Tenant {
    Tenant::new(&format!("{}.quarantine", tenant.as_str()))
        .unwrap_or_else(|_| Tenant::new("quarantine").expect("a valid tenant id"))
}

/// What a write through the registry did.
pub struct Outcome {
    /// The stored part's acknowledgement (quarantined samples included in its counts).
    pub ack: crate::shard::WriteAck,
    /// Devices refused (the first few).
    pub refused: Vec<String>,
    /// Samples refused as of unknown or inactive devices.
    pub refused_samples: usize,
}

/// Admits `batch` (see [`Registry::admit`]) and writes what was admitted: acknowledged once
/// durable, quarantine included.
pub async fn write(
    engine: &crate::engine::Engine,
    registry: &Registry,
    batch: WriteBatch,
    limits: &Limits,
) -> Result<Outcome, crate::engine::WriteError> {
    let a = registry.admit(batch, limits);
    let mut ack = crate::shard::WriteAck::default();
    if let Some(q) = a.quarantine {
        ack.merge(&engine.write(q).await?);
    }
    if !a.batch.is_empty() {
        ack.merge(&engine.write(a.batch).await?);
    }
    Ok(Outcome {
        ack,
        refused: a.refused,
        refused_samples: a.refused_samples,
    })
}

impl crate::metrics::Stage for Registry {
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
        out.gauges(
            "strata_registry_devices",
            "Devices in the registry (cached), by tenant.",
            self.cache
                .read()
                .tenants
                .iter()
                .map(|(t, m)| ([("tenant", t.as_str())], m.len())),
        );
        out.counter("strata_registry_quarantined_samples_total",
            "Samples of unknown or inactive devices stored apart (registry.unknown_devices = quarantine).",
            self.quarantined.get(),
        );
        out.counter(
            "strata_registry_refused_samples_total",
            "Samples of unknown or inactive devices refused (registry.unknown_devices = reject).",
            self.refused.get(),
        );
        out.counter(
            "strata_registry_enriched_series_total",
            "Series written with registry labels added (registry.enrich).",
            self.enriched.get(),
        );
    }
}
