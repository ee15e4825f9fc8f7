//! The engine: the ingest log, one shard per partition, and a read view over all shards.

use crate::config::{Config, Partitions};
use crate::metrics::Counters;
use crate::shard::{Job, Shard, ShardConfig, WriteAck};
use std::sync::Arc;
use std::time::Duration;
use strata_log::{LocalLog, Log, LogOptions};
use strata_model::{
    Labels, LazySeries, Matcher, MetadataHints, SelectHints, SeriesSamples, Storage, StorageError,
    Tenant, WriteBatch,
};
use strata_stream::stage::{HeldFrom, RollupStage, StageOptions, Tier, WindowView};
use strata_tsdb::{SeriesCaps, SeriesLimiter, Tsdb, TsdbOptions};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Queued writes per shard before senders wait (backpressure by count; the byte budget,
/// [`PendingBudget`], bounds their size).
const QUEUE: usize = 1024;

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The shard could not make the write durable.
    #[error("{0}")]
    Durability(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The byte budget for writes in flight stayed full for the whole wait.
    #[error("too much pending ingest: writes of {limit} bytes are already queued for the shards (limits.max_pending_ingest_bytes); retry later")]
    Overloaded {
        /// The budget, in bytes.
        limit: usize,
    },
}

/// The memory budget of decoded writes between the HTTP handlers and the shards: a write
/// holds its batch's size from before it is queued until it is acknowledged, and waits (at
/// most `wait`) while the budget is spent. Permits are KiB, so a budget of up to 2^40 bytes
/// fits the semaphore's `u32` acquisitions.
struct PendingBudget {
    kib: Arc<Semaphore>,
    limit_bytes: usize,
    wait: Duration,
}

/// About how much memory one series entry of a batch takes beside its label bytes.
const BATCH_ENTRY_BYTES: usize = 48;

impl PendingBudget {
    fn new(limit_bytes: usize, wait: Duration) -> PendingBudget {
        PendingBudget {
            kib: Arc::new(Semaphore::new(limit_bytes.div_ceil(1024))),
            limit_bytes,
            wait,
        }
    }

    /// Waits for room for `batch`; a batch larger than the whole budget waits for all of it.
    async fn reserve(&self, batch: &WriteBatch) -> Result<OwnedSemaphorePermit, WriteError> {
        let bytes = batch.payload_bytes()
            + batch.series_len() * BATCH_ENTRY_BYTES
            + batch.samples_len() * std::mem::size_of::<strata_model::Sample>();
        self.reserve_bytes(bytes).await
    }

    /// Waits for room for `bytes`, as [`PendingBudget::reserve`].
    async fn reserve_bytes(&self, bytes: usize) -> Result<OwnedSemaphorePermit, WriteError> {
        let total = self.limit_bytes.div_ceil(1024);
        let kib = bytes.div_ceil(1024).clamp(1, total) as u32;
        match tokio::time::timeout(self.wait, self.kib.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(WriteError::ShuttingDown),
            Err(_) => Err(WriteError::Overloaded {
                limit: self.limit_bytes,
            }),
        }
    }
}

/// Told, after each write, of the span of its samples older than a cutoff it names: how the
/// query result cache learns which cached ranges late data touched.
pub trait LateWrites: Send + Sync {
    /// Samples at or after this time (ms) are fresh and not reported.
    fn cutoff(&self) -> i64;
    /// A write of `tenant` (applied, or failed part-way) held samples older than the cutoff,
    /// the oldest at `oldest` and the newest at `newest` (ms).
    fn written(&self, tenant: &Tenant, oldest: i64, newest: i64);
}

/// The oldest and newest timestamps of `batch` before `cutoff`, if any: one pass, no allocation.
fn late_span(batch: &WriteBatch, cutoff: i64) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for s in batch.iter() {
        for x in s.samples.iter().filter(|x| x.timestamp < cutoff) {
            lo = lo.min(x.timestamp);
            hi = hi.max(x.timestamp);
        }
    }
    (lo <= hi).then_some((lo, hi))
}

/// Everything behind the HTTP API.
pub struct Engine {
    log: Arc<LocalLog>,
    shards: Vec<ShardHandle>,
    pending: PendingBudget,
    /// Self-metrics counters.
    pub counters: Arc<Counters>,
    /// The live-series caps, shared by every shard's storage.
    pub limiter: Arc<SeriesLimiter>,
    /// Who is told of late writes (the query result cache), once set.
    late: std::sync::OnceLock<Arc<dyn LateWrites>>,
    /// The Parquet cold tier and its archiver, when enabled.
    cold: Option<crate::cold::ColdTier>,
    /// How long the raw tier keeps samples (its part of the query router's coverage).
    raw_retention_ms: i64,
    /// The rollup tiers' coverage per tenant, with when it was read: it walks the tiers'
    /// stores, so queries share it for [`COVERAGE_TTL`].
    coverage: parking_lot::Mutex<std::collections::HashMap<Tenant, TierMarks>>,
    /// The live stream the shards publish to.
    live: Arc<crate::live::Live>,
}

/// When a tenant's tier coverage was read, and from when its 1-minute and 1-hour tiers hold
/// data.
type TierMarks = (std::time::Instant, HeldFrom);

/// How long a tenant's tier coverage is reused (a tier's data begins or ends on a block, so it
/// moves at most by a block a flush: a second behind is nothing).
const COVERAGE_TTL: Duration = Duration::from_secs(1);

struct ShardHandle {
    tx: mpsc::Sender<Job>,
    tsdb: Arc<Tsdb>,
    rollups: Option<Arc<RollupStage>>,
    shadows: Arc<parking_lot::Mutex<strata_stream::shadow::Shadows>>,
    device_sync: Option<crate::device_stage::DeviceSync>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The partition of a series: by its entity (`device`, else `instance` label, else the series),
/// so everything about one device lives in one partition.
pub fn partition_of(entity: u64, partitions: u32) -> u32 {
    (entity % partitions as u64) as u32
}

impl Engine {
    /// Opens the log and every shard's storage, replays, and starts the shard threads.
    pub fn open(
        cfg: &Config,
        rt: tokio::runtime::Handle,
        devices: Option<Arc<crate::device_rules::DeviceRulesHub>>,
    ) -> anyhow::Result<Arc<Engine>> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", cfg.data_dir.display())
        })?;
        let log_dir = cfg.data_dir.join("log");
        let partitions = match cfg.partitions {
            Partitions::Fixed(n) => n,
            Partitions::Auto => LocalLog::existing_partitions(&log_dir)?
                .unwrap_or_else(Partitions::for_this_machine),
        };
        anyhow::ensure!(
            (1..=Partitions::MAX).contains(&partitions),
            "partitions must be 1..={}, got {partitions}",
            Partitions::MAX
        );
        let log = Arc::new(LocalLog::open(
            &log_dir,
            partitions,
            LogOptions {
                segment_bytes: cfg.storage.log_segment_bytes,
            },
        )?);
        let counters = Arc::new(Counters::default());
        let live = crate::live::Live::new(cfg.live.clone());
        let limiter = SeriesLimiter::with_caps(SeriesCaps {
            per_metric: cfg.limits.max_series_per_metric,
            per_tenant: cfg.limits.max_series_per_tenant,
            total: cfg.limits.max_series_total,
        });
        let opts = TsdbOptions {
            block_duration_ms: cfg.storage.block_duration.0,
            retention_ms: cfg.retention.0,
            max_series_per_metric: cfg.limits.max_series_per_metric,
        };
        let cold = crate::cold::ColdTier::open(cfg)?;
        let raw_archive = cold.as_ref().and_then(|c| c.raw_archive());
        // Open and replay shards in parallel: replay time is the restart time.
        let stage_opts = StageOptions {
            windows: cfg.window_options(),
            quantiles: cfg.rollups.quantiles.clone(),
            retention_ms: cfg.rollups.retention.0,
            block_duration_ms: cfg.rollups.block_duration.0,
            correction_subscribers: {
                use strata_stream::stage::Subscribers;
                let mut s = Subscribers::NONE;
                if !cfg.rollups.groups.is_empty() {
                    s = s.with(crate::groups::CORRECTIONS);
                }
                if !cfg.anomaly.detectors.is_empty() {
                    s = s.with(crate::anomaly::CORRECTIONS);
                }
                s
            },
            hours: Some(strata_stream::hour::HourOptions {
                retention_ms: cfg.rollups.hour_retention.0,
                // The cold tier takes every final hour.
                publish_final: cold.is_some(),
                days: cfg.rollups.days.then(|| {
                    Box::new(strata_stream::hour::HourOptions::day_tier(
                        cfg.rollups.day_retention.0,
                    ))
                }),
                ..Default::default()
            }),
        };
        type Shadows = Arc<parking_lot::Mutex<strata_stream::shadow::Shadows>>;
        type Opened = (Shard, Arc<Tsdb>, Option<Arc<RollupStage>>, Shadows);
        let opened: Vec<anyhow::Result<Opened>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..partitions)
                .map(|p| {
                    let (log, counters, limiter, opts, stage_opts, raw_archive) = (
                        log.clone(),
                        counters.clone(),
                        limiter.clone(),
                        opts.clone(),
                        stage_opts.clone(),
                        raw_archive.clone(),
                    );
                    let devices = devices.clone();
                    let live = live.clone();
                    let shadows: Shadows = Arc::default();
                    s.spawn(move || {
                        let dir = cfg.data_dir.join("shards").join(format!("{p:04}"));
                        let tsdb = Arc::new(Tsdb::open(&dir.join("tsdb"), opts, limiter)?);
                        if let Some(a) = raw_archive {
                            tsdb.set_expiry_archive(a);
                        }
                        let shard_cfg = ShardConfig {
                            dir: dir.clone(),
                            dedup_horizon_ms: cfg.limits.event_dedup_horizon.0,
                            flush_interval: Duration::from_millis(
                                cfg.storage.flush_interval.0 as u64,
                            ),
                            checkpoint_log_bytes: cfg.storage.checkpoint_log_bytes,
                            devices,
                            shadows: shadows.clone(),
                            live: live.clone(),
                        };
                        let rollups = if cfg.rollups.enabled {
                            let stage = RollupStage::open(&dir.join("rollups"), stage_opts)?;
                            Some(Arc::new(stage))
                        } else {
                            None
                        };
                        let log: Arc<dyn Log> = log;
                        let shard = Shard::open(
                            p,
                            tsdb.clone(),
                            rollups.clone(),
                            log,
                            shard_cfg,
                            counters,
                        )?;
                        Ok((shard, tsdb, rollups, shadows))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("shard open panicked")))
                })
                .collect()
        });
        let mut shards = Vec::new();
        for (p, o) in opened.into_iter().enumerate() {
            let (shard, tsdb, rollups, shadows) = o?;
            let (tx, rx) = mpsc::channel(QUEUE);
            let device_sync = shard.device_sync();
            let rt = rt.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{p}"))
                .spawn(move || shard.run(rx, rt))?;
            shards.push(ShardHandle {
                tx,
                tsdb,
                rollups,
                shadows,
                device_sync,
                thread: Some(thread),
            });
        }
        if let Some(c) = &cold {
            c.start(shards.iter().filter_map(|s| s.rollups.clone()).collect())?;
        }
        Ok(Arc::new(Engine {
            log,
            shards,
            pending: PendingBudget::new(
                cfg.limits.max_pending_ingest_bytes,
                Duration::from_millis(cfg.limits.pending_ingest_timeout.0 as u64),
            ),
            counters,
            limiter,
            late: std::sync::OnceLock::new(),
            raw_retention_ms: cfg.retention.0,
            coverage: Default::default(),
            cold,
            live,
        }))
    }

    /// Number of shards.
    pub fn partitions(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Sets who is told of late writes (at most once; a second call is ignored).
    pub fn observe_late_writes(&self, observer: Arc<dyn LateWrites>) {
        let _ = self.late.set(observer);
    }

    /// Splits a batch by partition, hands each part to its shard and waits until every part is
    /// durable and applied. Waits first for room in the pending-bytes budget. Then tells the
    /// [`LateWrites`] observer, whatever the outcome (a failed write may have applied parts),
    /// even if the caller went away.
    pub async fn write(&self, batch: WriteBatch) -> Result<WriteAck, WriteError> {
        let room = self.pending.reserve(&batch).await?;
        let late = self
            .late
            .get()
            .and_then(|o| Some((o, late_span(&batch, o.cutoff())?)))
            .map(|(o, span)| (o.clone(), batch.tenant().clone(), span));
        let n = self.partitions();
        let mut parts: Vec<Option<WriteBatch>> = (0..n).map(|_| None).collect();
        if n == 1 {
            parts[0] = Some(batch);
        } else {
            for s in batch.iter() {
                let p = partition_of(s.entity, n) as usize;
                parts[p]
                    .get_or_insert_with(|| batch.empty_share(n as usize))
                    .push_from(&s);
            }
        }
        let sends: Vec<(mpsc::Sender<Job>, WriteBatch)> = parts
            .into_iter()
            .enumerate()
            .filter_map(|(p, part)| {
                Some((self.shards[p].tx.clone(), part.filter(|b| !b.is_empty())?))
            })
            .collect();
        // Queued and acknowledged by a task of its own, which holds the room until the shards
        // are done with the parts: a client that disconnects drops this future, not the
        // accounting of what it queued.
        let queued = tokio::spawn(async move {
            let _room = room;
            let res = async {
                let mut waits = Vec::with_capacity(sends.len());
                for (tx, part) in sends {
                    let (ack, rx) = oneshot::channel();
                    tx.send(Job::Write { batch: part, ack })
                        .await
                        .map_err(|_| WriteError::ShuttingDown)?;
                    waits.push(rx);
                }
                // Every part's answer is awaited, so none is still being applied afterwards.
                let mut total = WriteAck::default();
                let mut failed = None;
                for w in waits {
                    let e = match w.await {
                        Ok(Ok(ack)) => {
                            total.merge(&ack);
                            continue;
                        }
                        Ok(Err(e)) => WriteError::Durability(e),
                        Err(_) => WriteError::ShuttingDown,
                    };
                    failed.get_or_insert(e);
                }
                failed.map_or(Ok(total), Err)
            }
            .await;
            // After the shards applied their parts, so a query that reads the cache after this
            // also reads the late samples from storage.
            if let Some((o, tenant, (oldest, newest))) = late {
                o.written(&tenant, oldest, newest);
            }
            res
        });
        let total = queued.await.map_err(|_| WriteError::ShuttingDown)??;
        let c = &self.counters;
        c.duplicate_samples.add(total.stats.duplicates as u64);
        c.overwritten_samples.add(total.stats.overwritten as u64);
        c.duplicate_events.add(total.duplicate_events as u64);
        Ok(total)
    }

    /// Returns once everything acknowledged before the call is in blocks on disk, and every
    /// final hour in the cold tier.
    pub async fn flush(&self) -> Result<(), WriteError> {
        // Hours final now are archived first, while the hour stores hold them in memory, so
        // the checkpoints below record them as taken; a second pass takes what the flush made
        // final.
        self.sync_cold().await?;
        let mut waits = Vec::new();
        for s in &self.shards {
            let (ack, rx) = oneshot::channel();
            s.tx.send(Job::Flush { ack })
                .await
                .map_err(|_| WriteError::ShuttingDown)?;
            waits.push(rx);
        }
        for w in waits {
            w.await
                .map_err(|_| WriteError::ShuttingDown)?
                .map_err(WriteError::Durability)?;
        }
        self.sync_cold().await
    }

    /// Waits for room for `bytes` of samples held for the shards outside [`Engine::write`] (a
    /// backfill's older part) in the pending-ingest budget; the room is freed when the permit
    /// is dropped. Do not hold it across an [`Engine::write`] of the same request.
    pub async fn reserve_pending(&self, bytes: usize) -> Result<OwnedSemaphorePermit, WriteError> {
        self.pending.reserve_bytes(bytes).await
    }

    /// Runs `work` on shard `partition`'s thread (see [`Job::Exclusive`]) and returns its answer.
    pub async fn on_shard<T: Send + 'static>(
        &self,
        partition: u32,
        work: impl FnOnce(Option<&RollupStage>, u64) -> T + Send + 'static,
    ) -> Result<T, WriteError> {
        let (tx, rx) = oneshot::channel();
        let work = Box::new(move |stage: Option<&RollupStage>, offset| {
            let _ = tx.send(work(stage, offset));
        });
        self.shards[partition as usize]
            .tx
            .send(Job::Exclusive { work })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)
    }

    /// The cold tier's archive of raw samples, when `cold.archive_raw` is on.
    pub fn cold_raw_archive(&self) -> Option<Arc<dyn strata_tsdb::ExpiryArchive>> {
        self.cold.as_ref()?.raw_archive()
    }

    /// Tells the [`LateWrites`] observer of `tenant`'s samples from `oldest` to `newest` (ms)
    /// stored other than by [`Engine::write`] (a backfill).
    pub fn late_written(&self, tenant: &Tenant, oldest: i64, newest: i64) {
        if let Some(o) = self.late.get() {
            o.written(tenant, oldest, newest);
        }
    }

    /// One pass of the cold tier's archiver, now (nothing without a cold tier).
    pub async fn sync_cold(&self) -> Result<(), WriteError> {
        match &self.cold {
            Some(c) => c.sync().await.map_err(WriteError::Durability),
            None => Ok(()),
        }
    }

    /// Stops the shards after they drain their queues and flush.
    pub fn shutdown(&mut self) {
        if let Some(c) = &self.cold {
            c.stop();
        }
        for s in &mut self.shards {
            let (tx, _) = mpsc::channel(1);
            drop(std::mem::replace(&mut s.tx, tx));
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl crate::metrics::Stage for Engine {
    /// Describes engine, log and storage metrics.
    fn collect(&self, out: &mut crate::metrics::Out<'_>) {
        self.counters.collect(out);
        let l = self.log.stats();
        out.counter(
            "strata_log_appended_bytes_total",
            "Bytes appended to the ingest log.",
            l.appended_bytes,
        );
        out.counter(
            "strata_log_appended_records_total",
            "Records appended to the ingest log.",
            l.appended_records,
        );
        // The log counts cumulatively; the encoder wants each bucket alone.
        let mut below = 0;
        let buckets = strata_log::SYNC_BUCKETS
            .iter()
            .zip(l.sync_buckets)
            .map(|(le, n)| (*le, n - std::mem::replace(&mut below, n)))
            .collect();
        out.histograms(
            "strata_log_fsync_seconds",
            "Latency of ingest-log fsyncs (group commits).",
            [(
                crate::metrics::NONE,
                crate::metrics::Histogram {
                    buckets,
                    sum: l.sync_seconds_total,
                    count: l.syncs,
                },
            )],
        );
        out.gauge(
            "strata_log_fsync_seconds_max",
            "Longest ingest-log fsync.",
            l.sync_seconds_max,
        );
        out.counter(
            "strata_log_io_errors_total",
            "Ingest-log writes and syncs that failed (each refuses its group commit).",
            l.io_errors,
        );
        out.counter(
            "strata_log_recoveries_total",
            "Times a failed ingest-log partition moved to a fresh segment and took writes again.",
            l.recoveries,
        );
        out.gauge(
            "strata_log_failed_partitions",
            "Ingest-log partitions refusing writes after an I/O error (not yet recovered).",
            l.failed_partitions,
        );
        out.gauge(
            "strata_log_disk_bytes",
            "Ingest-log bytes on disk.",
            l.disk_bytes,
        );
        out.gauge(
            "strata_log_segments",
            "Ingest-log segment files.",
            l.segments,
        );
        let mut t = strata_tsdb::TsdbStats::default();
        for s in &self.shards {
            t.merge(&s.tsdb.stats());
        }
        out.gauge(
            "strata_tsdb_series",
            "Live series: those in the in-memory head.",
            t.series,
        );
        out.gauge(
            "strata_tsdb_head_samples",
            "Samples in the in-memory head.",
            t.head_samples,
        );
        out.gauge(
            "strata_tsdb_head_bytes",
            "Approximate bytes held by the head.",
            t.head_bytes,
        );
        out.gauge("strata_tsdb_blocks", "Blocks on disk.", t.blocks);
        out.gauge(
            "strata_tsdb_block_bytes",
            "Bytes of blocks on disk.",
            t.block_bytes,
        );
        out.counter(
            "strata_tsdb_compactions_total",
            "Block compactions.",
            t.compactions_total,
        );
        out.counter(
            "strata_tsdb_retention_deleted_blocks_total",
            "Blocks deleted by retention.",
            t.retention_deleted_blocks_total,
        );
        out.counter("strata_tsdb_tenant_errors_total",
            "Flushes, compactions or deletions of one tenant's data that failed (the other tenants' went ahead).",
            t.tenant_errors_total,
        );
        self.collect_rollups(out);
        if let Some(c) = &self.cold {
            c.collect(out);
        }
    }
}

impl Engine {
    fn collect_rollups(&self, out: &mut crate::metrics::Out<'_>) {
        let stages: Vec<(usize, &Arc<RollupStage>)> = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.rollups.as_ref().map(|r| (i, r)))
            .collect();
        if stages.is_empty() {
            return;
        }
        let now = strata_model::time::now_ms();
        let per_shard: Vec<_> = stages
            .iter()
            .map(|(i, r)| {
                let w = r.windows();
                (
                    *i,
                    w.watermark(),
                    w.max_event_time(),
                    w.open_windows(),
                    w.stats().clone(),
                    r.counters()
                        .corrected_windows
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect();
        // A gauge per shard, in seconds; `None` (nothing seen yet) writes no line.
        let per_shard_gauge = |out: &mut crate::metrics::Out<'_>,
                               name: &str,
                               help: &str,
                               v: &dyn Fn(i64, i64) -> Option<i64>| {
            out.gauges(
                name,
                help,
                per_shard.iter().filter_map(|(i, wm, max, ..)| {
                    let ms = v(*wm, *max)?;
                    Some(([("shard", i.to_string())], ms as f64 / 1000.0))
                }),
            );
        };
        let known = |t: i64| (t != i64::MIN).then_some(t);
        per_shard_gauge(
            out,
            "strata_rollup_watermark_seconds",
            "Event-time watermark of each shard (Unix seconds).",
            &|wm, _| known(wm),
        );
        per_shard_gauge(
            out,
            "strata_rollup_event_time_lag_seconds",
            "Wall clock minus the highest event time seen, per shard.",
            &|_, max| known(max).map(|max| now - max),
        );
        let sum = |f: &dyn Fn(&strata_stream::window::WindowStats) -> u64| {
            per_shard.iter().map(|p| f(&p.4)).sum::<u64>()
        };
        let (series, warm) = stages.iter().fold((0, 0), |(s, w), (_, r)| {
            let (rs, rw) = r.live_series();
            (s + rs as u64, w + rw)
        });
        out.gauge(
            "strata_rollup_series",
            "Series the rollup windows hold: those seen lately, and devices' (for their shadows).",
            series,
        );
        out.gauge(
            "strata_rollup_warm_series",
            "Live figure series of the warm tier: those in its in-memory head.",
            warm,
        );
        out.gauge(
            "strata_rollup_open_windows",
            "Provisional windows held in memory (series x window).",
            per_shard.iter().map(|p| p.3).sum::<usize>(),
        );
        for (name, help, v) in [
            (
                "strata_rollup_on_time_samples_total",
                "Samples at or ahead of their shard's watermark.",
                sum(&|s| s.on_time),
            ),
            (
                "strata_rollup_late_samples_total",
                "Samples behind the watermark that still reached a provisional window.",
                sum(&|s| s.late),
            ),
            (
                "strata_rollup_correction_samples_total",
                "Samples that arrived for final windows (their windows are recomputed).",
                sum(&|s| s.correction_samples),
            ),
            (
                "strata_rollup_too_late_samples_total",
                "Samples beyond the correction horizon: stored raw, not rolled up.",
                sum(&|s| s.too_late),
            ),
            (
                "strata_rollup_finalized_windows_total",
                "Windows that became final.",
                sum(&|s| s.finalized),
            ),
        ] {
            out.counter(name, help, v);
        }
        out.counter(
            "strata_rollup_corrected_windows_total",
            "Final windows recomputed with changed figures (revision + 1).",
            per_shard.iter().map(|p| p.5).sum(),
        );
    }
}

impl Engine {
    /// True when rollups are enabled.
    pub fn rollups_enabled(&self) -> bool {
        self.shards.iter().any(|s| s.rollups.is_some())
    }

    /// Every event-time window starting before this is final on every shard (`None` without
    /// rollups): no late event changes what lies before it.
    pub fn final_before(&self) -> Option<i64> {
        self.shards
            .iter()
            .filter_map(|s| s.rollups.as_ref())
            .map(|r| r.windows().closed_before())
            .min()
    }

    /// The rollup tier a read of `[start, end]` names none of is answered from (see
    /// [`RollupStage::tier_for`]; shards share their settings).
    pub fn rollup_tier_for(&self, start: i64, end: i64) -> Tier {
        self.shards
            .iter()
            .find_map(|s| s.rollups.as_ref())
            .map_or(Tier::Window, |r| {
                r.tier_for(start, end, strata_model::time::now_ms())
            })
    }

    /// The rollup windows of one tier of series matching `matchers` that overlap
    /// `[start, end]`, sorted by labels (series never span shards).
    pub fn rollups(
        &self,
        tier: Tier,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<WindowView>)>, StorageError> {
        let mut out = Vec::new();
        for r in self.shards.iter().filter_map(|s| s.rollups.as_ref()) {
            out.extend(r.read_tier(tier, tenant, matchers, start, end)?);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Tenants with data.
    pub fn tenants(&self) -> Vec<Tenant> {
        let mut t: Vec<Tenant> = self.shards.iter().flat_map(|s| s.tsdb.tenants()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// For group rollups: every window starting before the first value is final in every shard
    /// that has seen data (shards that have not are not waited for; an idle one follows the
    /// clock); the second is the earliest window any shard opened. `None` before any data.
    pub fn group_progress(&self) -> Option<(i64, i64)> {
        let mut closed = i64::MAX;
        let mut first = i64::MAX;
        for r in self.shards.iter().filter_map(|s| s.rollups.as_ref()) {
            let w = r.windows();
            if w.max_event_time() == i64::MIN {
                continue;
            }
            closed = closed.min(w.closed_before());
            first = first.min(w.first_window());
        }
        (closed != i64::MAX).then_some((closed, first))
    }

    /// The live stream the shards publish to.
    pub fn live(&self) -> &Arc<crate::live::Live> {
        &self.live
    }

    /// Attaches a [`strata_stream::stage::FinalTap`] made by `make` (from the time before
    /// which the shard's windows were already final) to each shard with rollups, and returns
    /// them; none where one is attached already.
    pub fn tap_final<T: strata_stream::stage::FinalTap + 'static>(
        &self,
        make: impl Fn(i64) -> T,
    ) -> Vec<Arc<T>> {
        let mut out = Vec::new();
        for r in self.shards.iter().filter_map(|s| s.rollups.as_ref()) {
            r.add_final_tap(|from| {
                let t = Arc::new(make(from));
                out.push(t.clone());
                t
            });
        }
        out
    }

    /// Corrected windows `who` has not marked done, over all shards.
    pub fn pending_corrected(
        &self,
        who: strata_stream::stage::Subscriber,
    ) -> Vec<strata_stream::window::Correction> {
        self.shards
            .iter()
            .filter_map(|s| s.rollups.as_ref())
            .flat_map(|r| r.pending_corrected(who))
            .collect()
    }

    /// Marks corrected windows as handled by `who` (each shard drops those it holds).
    pub fn done_corrected(
        &self,
        who: strata_stream::stage::Subscriber,
        done: &[strata_stream::window::Correction],
    ) {
        for r in self.shards.iter().filter_map(|s| s.rollups.as_ref()) {
            r.done_corrected(who, done);
        }
    }

    /// Final and corrected 1-hour windows queued for the next tier, over all shards, read from
    /// the hour stores: the cold tier's hook. Queued only with
    /// [`strata_stream::hour::HourOptions::publish_final`] (off until a consumer runs).
    pub fn pending_final_hours(
        &self,
    ) -> Result<
        Vec<(
            strata_stream::hour::HourKey,
            Labels,
            strata_stream::store::StoredWindow,
        )>,
        StorageError,
    > {
        let mut out = Vec::new();
        for r in self.shards.iter().filter_map(|s| s.rollups.as_ref()) {
            out.extend(r.pending_final_hours()?);
        }
        Ok(out)
    }

    /// Marks queued hours as taken by the next tier (each shard drops those it holds).
    pub fn done_final_hours(&self, done: &[strata_stream::hour::HourKey]) {
        for h in self
            .shards
            .iter()
            .filter_map(|s| s.rollups.as_ref()?.hours())
        {
            h.done_final(done);
        }
    }

    /// The last reading of every series of `device`, from its shadow (the shard of its entity
    /// holds them all), by labels; what the device stages have taken (see
    /// [`Engine::sync_shadows`]).
    pub fn device_latest(
        &self,
        tenant: &Tenant,
        device: &str,
    ) -> Vec<(Labels, strata_model::Sample)> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.shadows
                    .lock()
                    .device(tenant, device)
                    .map(|d| {
                        d.readings
                            .iter()
                            .map(|(k, s)| (k.as_ref().labels(), *s))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Runs `f` over each shard's shadows in turn (the shard's lock held for the call).
    /// Reads what the device stages have taken so far: [`Engine::sync_shadows`] first to see
    /// every acknowledged write.
    pub fn with_shadows(&self, mut f: impl FnMut(&strata_stream::shadow::Shadows)) {
        for s in &self.shards {
            f(&s.shadows.lock());
        }
    }

    /// Runs `f` over every shard's shadows at once, one thread per shard (each shard's lock
    /// held for its call), for scans of the whole fleet; blocking: call it off the async
    /// workers. The answers are in shard order.
    pub fn map_shadows<T: Send>(
        &self,
        f: impl Fn(&strata_stream::shadow::Shadows) -> T + Sync,
    ) -> Vec<T> {
        let f = &f;
        std::thread::scope(|scope| {
            let running: Vec<_> = self
                .shards
                .iter()
                .map(|s| scope.spawn(move || f(&s.shadows.lock())))
                .collect();
            running
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// Waits until every write acknowledged so far is in the shadows (blocking: call it off
    /// the async workers).
    pub fn sync_shadows(&self) {
        for s in self.shards.iter().filter_map(|s| s.device_sync.as_ref()) {
            s.sync();
        }
    }

    /// [`Engine::sync_shadows`] on the blocking pool.
    pub async fn synced_shadows(self: &Arc<Self>) {
        let e = self.clone();
        let _ = tokio::task::spawn_blocking(move || e.sync_shadows()).await;
    }

    /// The sorted union of one metadata read over every shard, the first `limit` entries when
    /// there is a limit: each shard answers its own first `limit` in sorted order, and the first
    /// `limit` of the union are among them, so memory is shards times the limit.
    fn union<T: Ord>(
        &self,
        limit: Option<usize>,
        read: impl Fn(&Tsdb) -> Result<Vec<T>, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(read(&s.tsdb)?);
        }
        all.sort();
        all.dedup();
        if let Some(limit) = limit {
            all.truncate(limit);
        }
        Ok(all)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads see every shard: series never span shards, so every shard's matching series are
/// found first and then decoded together, spread over the cores.
impl Engine {
    /// What every shard's raw tier holds of the series matching `matchers`, not decoded yet.
    fn plan(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<strata_tsdb::SeriesRead>, StorageError> {
        let mut reads = Vec::new();
        for s in &self.shards {
            reads.extend(s.tsdb.plan(tenant, matchers, hints.start, hints.end)?);
        }
        Ok(reads)
    }
}

impl Storage for Engine {
    fn select(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSamples>, StorageError> {
        strata_tsdb::read_all(self.plan(tenant, matchers, hints)?, hints)
    }

    fn select_lazy(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<LazySeries>, StorageError> {
        let reads = self.plan(tenant, matchers, hints)?;
        Ok(strata_tsdb::lazy(reads, hints))
    }

    fn series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<Labels>, StorageError> {
        self.union(range.limit, |t| t.series(tenant, matchers, range))
    }

    fn label_names(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<String>, StorageError> {
        self.union(range.limit, |t| t.label_names(tenant, matchers, range))
    }

    fn label_values(
        &self,
        tenant: &Tenant,
        name: &str,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<String>, StorageError> {
        self.union(range.limit, |t| {
            t.label_values(tenant, name, matchers, range)
        })
    }
}

impl Engine {
    /// From when the shards' 1-minute, 1-hour and 1-day tiers hold `tenant`'s data (see
    /// [`RollupStage::held_from`]), reused for [`COVERAGE_TTL`].
    fn tier_marks(&self, tenant: &Tenant) -> HeldFrom {
        let cached = self
            .coverage
            .lock()
            .get(tenant)
            .filter(|(at, _)| at.elapsed() < COVERAGE_TTL)
            .map(|c| c.1);
        cached.unwrap_or_else(|| {
            // A shard's tier holds its data from its earliest window (retention deletes whole
            // blocks), and a shard whose data begins later never had older data to lose; so a
            // tier holds every shard's data from the earliest of them, except what retention
            // may have deleted (before `now - retention`).
            let mut marks = HeldFrom {
                windows: i64::MAX,
                hours: i64::MAX,
                days: i64::MAX,
            };
            let mut stages = self
                .shards
                .iter()
                .filter_map(|s| s.rollups.as_ref())
                .peekable();
            // Shards share their settings: the first one's retentions are every one's.
            let retention = stages.peek().map(|r| {
                let o = r.options();
                let hours = o.hours.as_ref();
                let days = hours.and_then(|h| h.days.as_ref());
                (
                    o.retention_ms,
                    hours.map_or(i64::MAX, |h| h.retention_ms),
                    days.map_or(i64::MAX, |d| d.retention_ms),
                )
            });
            for r in stages {
                let h = r.held_from(tenant);
                if h.windows != i64::MAX {
                    marks.windows = marks.windows.min(h.windows);
                    marks.hours = marks.hours.min(h.hours);
                    marks.days = marks.days.min(h.days);
                }
            }
            if let Some((windows, hours, days)) = retention {
                let now = strata_model::time::now_ms();
                let clamp = |mark: i64, kept: i64| {
                    if mark == i64::MAX {
                        mark
                    } else {
                        mark.max(now.saturating_sub(kept))
                    }
                };
                marks.windows = clamp(marks.windows, windows);
                marks.hours = clamp(marks.hours, hours);
                marks.days = clamp(marks.days, days);
            }
            let mut map = self.coverage.lock();
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(tenant.clone(), (std::time::Instant::now(), marks));
            marks
        })
    }
}

/// The rollup tiers as the query router reads them: each shard's windows and hours, final and
/// provisional, with their sketches when a quantile needs them.
impl strata_model::WindowStorage for Engine {
    fn coverage(&self, tenant: &Tenant) -> strata_model::Coverage {
        let now = strata_model::time::now_ms();
        let marks = self.tier_marks(tenant);
        let cold = self.cold.as_ref().and_then(|c| c.hours_from(tenant));
        // The hour holding the raw tier's oldest time may have been backfilled whole into the
        // rollup tiers (see the backfill path): raw samples answer from the next hour on.
        let oldest = now.saturating_sub(self.raw_retention_ms);
        let raw_from = strata_stream::window::window_of(oldest, strata_stream::hour::HOUR_MS)
            .saturating_add(strata_stream::hour::HOUR_MS + 1);
        strata_model::Coverage {
            raw: raw_from,
            minute: marks.windows,
            hour: cold.map_or(marks.hours, |c| c.min(marks.hours)),
            day: marks.days,
        }
    }

    fn windows(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        resolution: strata_model::Resolution,
        start: i64,
        end: i64,
        needs: strata_model::FigureNeeds,
    ) -> Result<Vec<strata_model::LazyWindows>, StorageError> {
        let tier = match resolution {
            strata_model::Resolution::Minute => Tier::Window,
            strata_model::Resolution::Hour => Tier::Hour,
            strata_model::Resolution::Day => Tier::Day,
            strata_model::Resolution::Raw => return Ok(Vec::new()),
        };
        let mut out: Vec<strata_model::LazyWindows> = Vec::new();
        // Hours older than the hour tier holds come from the cold tier.
        let mut start = start;
        if let (Some(cold), Tier::Hour) = (&self.cold, tier) {
            let local_from = self.tier_marks(tenant).hours;
            if start < local_from {
                let upto = end.min(local_from.saturating_sub(1));
                let got = cold.hours(tenant, matchers, (start, upto), needs.sketch)?;
                out.extend(got.into_iter().map(strata_model::LazyWindows::from));
                start = upto.saturating_add(1);
            }
        }
        if start <= end {
            for r in self.shards.iter().filter_map(|s| s.rollups.as_ref()) {
                out.extend(r.read_lazy(tier, tenant, matchers, (start, end), needs)?);
            }
        }
        // One entry per series (series never span shards): the cold part first.
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut merged: Vec<strata_model::LazyWindows> = Vec::with_capacity(out.len());
        for s in out {
            match merged.last_mut() {
                Some(prev) if prev.labels == s.labels => prev.append(s),
                _ => merged.push(s),
            }
        }
        Ok(merged)
    }
}
