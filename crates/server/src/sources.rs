//! The configured sources (`[[sources.mqtt]]`), started on the server's runtime with the engine
//! as their sink, and their `strata_source_*` metrics.

use crate::config::Config;
use crate::engine::{Engine, WriteError};
use crate::metrics::{Out, Stage};
use crate::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use strata_sources::{Running, Sink, SinkError, SinkFuture, Source, SourceStats, Written};

/// The write path (registry, then engine) as a source's sink.
struct EngineSink {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    limits: Arc<strata_model::Limits>,
}

impl Sink for EngineSink {
    fn write(&self, batch: strata_model::WriteBatch) -> SinkFuture {
        let (engine, registry, limits) = (
            self.engine.clone(),
            self.registry.clone(),
            self.limits.clone(),
        );
        Box::pin(async move {
            match crate::registry::write(&engine, &registry, batch, &limits).await {
                Ok(o) => {
                    let s = &o.ack.stats;
                    Ok(Written {
                        stored: s.appended
                            + s.overwritten
                            + s.duplicates
                            + o.ack.duplicate_event_samples,
                        refused: s.rejected_series_limit + s.too_old + o.refused_samples,
                    })
                }
                Err(WriteError::ShuttingDown) => Err(SinkError::Stopped),
                Err(e) => Err(SinkError::Retry(e.to_string())),
            }
        })
    }
}

/// The running sources (stopped when dropped).
#[derive(Default)]
pub struct Sources {
    running: Vec<Running>,
}

/// What `/metrics` shows of each source.
#[derive(Default, Clone)]
pub struct SourceMetrics(Vec<(String, Arc<SourceStats>)>);

impl Sources {
    /// Starts every configured source, writing through `engine`.
    pub fn start(
        cfg: &Config,
        engine: &Arc<Engine>,
        registry: &Arc<Registry>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Sources> {
        let limits = Arc::new(cfg.model_limits());
        let node = if cfg.sources.mqtt.is_empty() {
            String::new()
        } else {
            node_id(&cfg.data_dir)?
        };
        let sink: Arc<dyn Sink> = Arc::new(EngineSink {
            engine: engine.clone(),
            registry: registry.clone(),
            limits: limits.clone(),
        });
        let mut running = Vec::new();
        for (i, m) in cfg.sources.mqtt.iter().enumerate() {
            let id = format!("strata-{node}-{i}");
            let src = strata_sources::mqtt::MqttSource::new(
                m,
                i,
                &id,
                limits.clone(),
                cfg.limits.max_body_bytes,
            )?;
            running.push(Box::new(src).start(sink.clone(), rt)?);
        }
        Ok(Sources { running })
    }

    /// Their metrics' handles.
    pub fn metrics(&self) -> SourceMetrics {
        SourceMetrics(
            self.running
                .iter()
                .map(|r| (r.name.clone(), r.stats.clone()))
                .collect(),
        )
    }

    /// The ways back to devices (shadow deltas) of the sources that have one.
    pub fn publishers(&self) -> Vec<Arc<dyn strata_sources::DevicePublisher>> {
        self.running
            .iter()
            .filter_map(|r| r.publisher.clone())
            .collect()
    }

    /// Stops them all: what they had not acknowledged is left to the senders.
    pub fn stop(&mut self) {
        for r in &mut self.running {
            r.stop();
        }
    }
}

/// This data directory's node id (made at first use): stable client ids across restarts, so a
/// broker keeps the session, and different ones for different data directories.
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
    let seed = format!(
        "{:?} {} {:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        data_dir.canonicalize().unwrap_or_default()
    );
    let id = format!("{:012x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) >> 16);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &id)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

impl Stage for SourceMetrics {
    fn collect(&self, out: &mut Out<'_>) {
        if self.0.is_empty() {
            return;
        }
        let now = strata_model::time::now_ms();
        type Get = fn(&SourceStats) -> u64;
        enum Kind {
            Counter,
            Gauge,
        }
        let series: [(&str, Kind, &str, Get); 11] = [
            (
                "strata_source_shadow_deltas_published_total",
                Kind::Counter,
                "Device shadow deltas published to devices.",
                |s| s.deltas_published.load(Ordering::Relaxed),
            ),
            (
                "strata_source_shadow_deltas_failed_total",
                Kind::Counter,
                "Device shadow deltas that could not be queued for publishing.",
                |s| s.deltas_failed.load(Ordering::Relaxed),
            ),
            (
                "strata_source_messages_total",
                Kind::Counter,
                "Messages received.",
                |s| s.messages.load(Ordering::Relaxed),
            ),
            (
                "strata_source_bytes_total",
                Kind::Counter,
                "Payload bytes received.",
                |s| s.bytes.load(Ordering::Relaxed),
            ),
            (
                "strata_source_samples_total",
                Kind::Counter,
                "Samples written (stored, or duplicates of stored ones).",
                |s| s.samples.load(Ordering::Relaxed),
            ),
            (
                "strata_source_acked_total",
                Kind::Counter,
                "Messages acknowledged to the sender once durable.",
                |s| s.acked.load(Ordering::Relaxed),
            ),
            (
                "strata_source_in_flight",
                Kind::Gauge,
                "Messages received and not yet acknowledged.",
                |s| s.in_flight.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "strata_source_retries_total",
                Kind::Counter,
                "Writes retried after the write path refused them for now.",
                |s| s.retries.load(Ordering::Relaxed),
            ),
            (
                "strata_source_reconnects_total",
                Kind::Counter,
                "Connections lost or refused, and tried again.",
                |s| s.reconnects.load(Ordering::Relaxed),
            ),
            (
                "strata_source_connected",
                Kind::Gauge,
                "Whether the source is connected (1) or not (0).",
                |s| s.connected.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "strata_source_dead_lettered_total",
                Kind::Counter,
                "Bad messages republished to the dead-letter topic.",
                |s| s.dead_lettered.load(Ordering::Relaxed),
            ),
        ];
        let by_source = |get: Get| {
            self.0
                .iter()
                .map(move |(src, s)| ([("source", src)], get(s)))
        };
        for (name, kind, help, get) in series {
            match kind {
                Kind::Counter => out.counters(name, help, by_source(get)),
                Kind::Gauge => out.gauges(name, help, by_source(get)),
            }
        }
        out.gauges(
            "strata_source_lag_seconds",
            "How long the oldest message in flight has waited for its acknowledgement.",
            self.0
                .iter()
                .map(|(src, s)| ([("source", src)], s.lag_seconds(now))),
        );
        out.counters(
            "strata_source_bad_total",
            "Refused messages or parts of them (acknowledged and dropped), by reason.",
            self.0.iter().flat_map(|(src, s)| {
                s.bad_by_reason()
                    .into_iter()
                    .map(move |(reason, n)| ([("source", src.as_str()), ("reason", reason)], n))
            }),
        );
    }
}
