//! A shard: the single owner of one ingest-log partition and of everything derived from it.
//!
//! Its thread drains queued writes, drops redelivered events, appends the survivors to the log,
//! makes them durable with one fsync for the whole group (group commit), applies them to the
//! shard's storage and only then acknowledges them. Nothing on this path is shared with other
//! shards. On start it replays the log from the storage checkpoint.

use crate::device_stage::{DeviceJudge, DeviceStage};
use crate::metrics::Counters;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_log::{Log, PartitionWriter};
use strata_model::time::now_ms;
use strata_model::{SeriesDict, WriteBatch};
use strata_stream::dedup::EventDedup;
use strata_stream::stage::{RollupCheckpoint, RollupCheckpointDone, RollupStage};
use strata_stream::StreamError;
use strata_tsdb::{AppendStats, Tsdb, TsdbError};
use tokio::sync::{mpsc, oneshot};

/// Most queued writes taken into one group commit.
const MAX_GROUP: usize = 512;

/// Work run on a shard's thread with its rollup stage and last applied log offset (see
/// [`Job::Exclusive`]).
pub type ShardWork = Box<dyn FnOnce(Option<&RollupStage>, u64) + Send>;

/// Work sent to a shard.
pub enum Job {
    /// Make a batch durable and queryable, then answer.
    Write {
        batch: WriteBatch,
        ack: oneshot::Sender<Result<WriteAck, String>>,
    },
    /// Persist everything acknowledged so far into blocks and truncate the log.
    Flush {
        ack: oneshot::Sender<Result<(), String>>,
    },
    /// Run `work` on the shard's thread once the writes queued before it are applied and no
    /// flush is running, with the rollup stage and the last log offset applied: work that
    /// writes the stage's stores outside the log (a backfill) never races settling or a
    /// checkpoint.
    Exclusive { work: ShardWork },
}

/// What happened to one acknowledged write.
#[derive(Debug, Default, Clone)]
pub struct WriteAck {
    /// Storage outcome of the samples that were written.
    pub stats: AppendStats,
    /// Events dropped as redeliveries (by `event_id`).
    pub duplicate_events: usize,
    /// Samples those redelivered events carried.
    pub duplicate_event_samples: usize,
}

impl WriteAck {
    /// Adds another shard's outcome.
    pub fn merge(&mut self, o: &WriteAck) {
        let (a, b) = (&mut self.stats, &o.stats);
        a.appended += b.appended;
        a.duplicates += b.duplicates;
        a.overwritten += b.overwritten;
        a.new_series += b.new_series;
        a.rejected_series_limit += b.rejected_series_limit;
        a.refused.merge(&b.refused);
        a.too_old += b.too_old;
        self.duplicate_events += o.duplicate_events;
        self.duplicate_event_samples += o.duplicate_event_samples;
    }
}

/// Settings a shard needs.
pub struct ShardConfig {
    /// Where the shard keeps its event-dedup checkpoint.
    pub dir: PathBuf,
    /// Event-id memory.
    pub dedup_horizon_ms: i64,
    /// Longest time between flushes.
    pub flush_interval: Duration,
    /// Flush once this many bytes were logged since the last flush (0: by time only), so the
    /// log a restart replays stays short however fast writes come.
    pub checkpoint_log_bytes: u64,
    /// The device rules, when any may be defined (and with them the device shadows).
    pub devices: Option<Arc<crate::device_rules::DeviceRulesHub>>,
    /// The shard's device shadows, kept by its device stage.
    pub shadows: Arc<parking_lot::Mutex<strata_stream::shadow::Shadows>>,
    /// The live stream the shard publishes to.
    pub live: Arc<crate::live::Live>,
}

/// The event-time watermark device rules judge by: the rollups' (which follows the clock when
/// the shard is idle), else the clock less ten seconds.
fn device_watermark(rollups: Option<&RollupStage>) -> i64 {
    match rollups {
        Some(r) => r.windows().watermark(),
        None => now_ms() - 10_000,
    }
}

/// One shard, ready to run on its own thread.
pub struct Shard {
    partition: u32,
    tsdb: Arc<Tsdb>,
    rollups: Option<Arc<RollupStage>>,
    log: Arc<dyn Log>,
    writer: Box<dyn PartitionWriter>,
    dedup: EventDedup,
    cfg: ShardConfig,
    counters: Arc<Counters>,
    record: Vec<u8>,
    /// Series named in full in the current log segment (later records name them by id).
    dict: SeriesDict,
    last_flush: Instant,
    /// Record bytes in the log since the last flush (those replayed at open included).
    logged_bytes: u64,
    /// What `logged_bytes` was when the latest flush started, for its log line.
    flush_log_bytes: u64,
    /// The raw tier's flush running on a thread of its own (see [`Shard::flush_in_background`]).
    flushing: Option<std::thread::JoinHandle<FlushOutcome>>,
    /// Explicit flushes waiting for the running one: answered once its blocks are merged too.
    flush_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    last_maintain: Instant,
    /// When windows were last settled (a commit settles them; idle shards do it by the clock).
    last_settle: Instant,
    /// The device rules' judge, on its own thread.
    devices: Option<DeviceJudge>,
    /// What the shard publishes to the live stream.
    feed: Arc<crate::live::Feed>,
}

struct Pending {
    offset: Option<u64>,
    batch: WriteBatch,
    ack: oneshot::Sender<Result<WriteAck, String>>,
    result: WriteAck,
}

/// The slow part of a flush, run on the shard's thread or on one of its own: the rollups'
/// checkpoint taken by [`Shard::prepare_flush`] is written (the warm tier flushed), then the
/// raw tier is flushed.
struct FlushJob {
    /// The rollups' checkpoint, or why it could not be begun.
    windows: Option<Result<RollupCheckpoint, StreamError>>,
}

/// What a [`FlushJob`] did.
struct FlushOutcome {
    /// The rollups' checkpoint, once written.
    windows: Option<Result<RollupCheckpointDone, StreamError>>,
    /// The raw tier's flush.
    raw: Result<Option<u64>, TsdbError>,
}

impl FlushJob {
    fn run(self, tsdb: &Tsdb) -> FlushOutcome {
        // Rollups first: a crash before the raw flush then replays records the windows have
        // seen, which they ignore (replay applies each part past its own checkpoint).
        let windows = self
            .windows
            .map(|job| job.and_then(RollupCheckpoint::write));
        FlushOutcome {
            windows,
            raw: tsdb.flush(),
        }
    }
}

/// How a flush runs the storage's maintenance (compaction, retention) after it.
#[derive(Debug, Clone, Copy)]
enum Maintenance {
    /// On a thread of its own: periodic flushes must not hold the shard's writes.
    Background,
    /// Before the flush returns (the final flush at shutdown).
    Now,
    /// Not at all: the caller starts it (for explicit flushes, answered once their blocks are
    /// merged too, from the maintenance thread).
    Caller,
}

impl Shard {
    /// Opens the shard: loads its dedup checkpoint and replays the log since the storage
    /// checkpoint, so every acknowledged write is back before new ones are taken.
    pub fn open(
        partition: u32,
        tsdb: Arc<Tsdb>,
        rollups: Option<Arc<RollupStage>>,
        log: Arc<dyn Log>,
        cfg: ShardConfig,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Shard> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut dedup = EventDedup::load(&cfg.dir.join("events.ckpt"), cfg.dedup_horizon_ms)?;
        let raw_from = tsdb.checkpoint_offset().map_or(0, |o| o + 1);
        // Windows may have been checkpointed at another offset than the raw tier (or never, when
        // rollups were just enabled): replay from the earlier, apply each part past its own.
        let windows_from = rollups
            .as_ref()
            .map_or(raw_from, |r| r.checkpoint_offset().map_or(0, |o| o + 1));
        let mut devices = match cfg.devices.clone() {
            Some(hub) => {
                let (stage, saved) =
                    DeviceStage::open(hub, &cfg.dir, cfg.shadows.clone(), cfg.live.clone())?;
                Some((stage, saved.map_or(0, |o| o + 1), saved))
            }
            None => None,
        };
        // Without a checkpoint, device rules see what replay brings.
        let devices_from = devices.as_ref().map_or(u64::MAX, |(_, from, _)| *from);
        let from = raw_from.min(windows_from).min(devices_from);
        let started = Instant::now();
        let (mut records, mut samples, mut bytes) = (0u64, 0u64, 0u64);
        let mut last_report = Instant::now();
        let now = now_ms();
        // Reading starts at a segment start, so every reference follows its definition; the
        // dictionary is never cleared here because a later definition replaces an earlier one.
        let mut dict = SeriesDict::default();
        for rec in log.read(partition, from)? {
            let rec = rec?;
            let batch = WriteBatch::decode_record(&rec.payload, &mut dict)
                .map_err(|e| anyhow::anyhow!("partition {partition} offset {}: {e}", rec.offset))?;
            if rec.offset < from {
                continue;
            }
            // Records were deduplicated before they were logged: only remember their events.
            for s in batch.iter() {
                if let (Some(k), Some(id)) = (s.event, s.event_id()) {
                    dedup.first_sighting(batch.tenant(), k, id, now);
                }
            }
            let to_windows = rec.offset >= windows_from;
            if rec.offset >= raw_from {
                let st = match (&rollups, to_windows) {
                    (Some(r), true) => {
                        let mut w = r.observer();
                        tsdb.append_observed(&batch, rec.offset, |s, stored, slot| {
                            w.observe_at(slot, batch.tenant(), s.id, s.key, stored)
                        })
                    }
                    _ => tsdb.append(&batch, rec.offset),
                };
                samples += st.appended as u64;
            } else if let (Some(r), true) = (&rollups, to_windows) {
                // Already in raw blocks: the windows still need the samples.
                let mut w = r.observer();
                for s in batch.iter() {
                    w.observe(batch.tenant(), s.id, s.key, s.samples);
                }
            }
            if let (Some(r), true) = (&rollups, to_windows) {
                r.settle(&tsdb, None, rec.offset)
                    .map_err(|e| anyhow::anyhow!("partition {partition}: rollups: {e}"))?;
            }
            if let Some((d, dfrom, _)) = &mut devices {
                if rec.offset >= *dfrom {
                    d.observe(&batch);
                    d.settle(device_watermark(rollups.as_deref()));
                }
            }
            records += 1;
            bytes += rec.payload.len() as u64;
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                let end = log.end_offset(partition);
                tracing::info!(
                    partition,
                    offset = rec.offset,
                    end,
                    samples,
                    "replaying ingest log"
                );
            }
        }
        if records > 0 {
            tracing::info!(
                partition,
                records,
                samples,
                seconds = started.elapsed().as_secs_f64(),
                "replayed ingest log"
            );
        }
        counters.replayed_records.add(records);
        let devices = match devices {
            Some((d, _, saved)) => {
                d.register_firing();
                Some(DeviceJudge::start(d, saved, partition)?)
            }
            None => None,
        };
        let writer = log.writer(partition)?;
        let feed = match &rollups {
            Some(r) => {
                let o = r.options();
                let feed = crate::live::Feed::new(
                    cfg.live.clone(),
                    o.windows.window_ms,
                    o.quantiles.clone(),
                );
                let tap = feed.clone();
                r.add_final_tap(move |_| tap);
                feed
            }
            None => crate::live::Feed::new(cfg.live.clone(), 60_000, Vec::new()),
        };
        Ok(Shard {
            feed,
            partition,
            tsdb,
            rollups,
            log,
            writer,
            dedup,
            cfg,
            counters,
            record: Vec::new(),
            dict: SeriesDict::default(),
            last_flush: Instant::now(),
            logged_bytes: bytes,
            flush_log_bytes: 0,
            flushing: None,
            flush_waiters: Vec::new(),
            last_maintain: Instant::now(),
            last_settle: Instant::now(),
            devices,
        })
    }

    /// A handle that waits for the shard's device stage to catch up, when it has one.
    pub(crate) fn device_sync(&self) -> Option<crate::device_stage::DeviceSync> {
        self.devices.as_ref().and_then(|d| d.sync_handle())
    }

    /// Serves jobs until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>, rt: tokio::runtime::Handle) {
        let mut jobs = Vec::with_capacity(MAX_GROUP);
        loop {
            // While a flush runs on its thread, look for its end often: explicit flushes wait.
            let idle = if self.flushing.is_some() {
                Duration::from_millis(10)
            } else {
                Duration::from_secs(1)
            };
            match rt.block_on(async { tokio::time::timeout(idle, rx.recv()).await }) {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => break,
                Err(_) => {}
            }
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.process(&mut jobs);
            self.background();
        }
        if let Err(e) = self.flush(Maintenance::Now) {
            tracing::error!(partition = self.partition, "final flush failed: {e}");
        }
    }

    fn process(&mut self, jobs: &mut Vec<Job>) {
        let mut pending: Vec<Pending> = Vec::new();
        let now = now_ms();
        for job in jobs.drain(..) {
            match job {
                Job::Write { batch, ack } => {
                    let (batch, result) = self.drop_redelivered(batch, now);
                    let offset = if batch.is_empty() {
                        None
                    } else {
                        self.encode(&batch);
                        match self.writer.append(&self.record) {
                            Ok(a) => {
                                self.logged_bytes += self.record.len() as u64;
                                Some(a.offset)
                            }
                            Err(e) => {
                                // Definitions in the lost record must be written again, and
                                // its events must be accepted when the client retries.
                                self.dict.clear();
                                self.dedup.forget_batch(&batch);
                                let _ = ack.send(Err(format!("ingest log append failed: {e}")));
                                continue;
                            }
                        }
                    };
                    pending.push(Pending {
                        offset,
                        batch,
                        ack,
                        result,
                    });
                }
                Job::Flush { ack } => {
                    self.commit(&mut pending);
                    // A flush running now may have taken the head before these writes: it
                    // ends first. The new one writes on its own thread, so writes go on, and
                    // is answered once its blocks are merged too (so what is read next comes
                    // from compacted blocks), from the maintenance thread.
                    let started = self
                        .finish_flush(true)
                        .and_then(|()| self.flush_in_background());
                    match started {
                        Ok(()) => self.flush_waiters.push(ack),
                        Err(e) => {
                            let _ = ack.send(Err(e.to_string()));
                        }
                    }
                }
                Job::Exclusive { work } => {
                    self.commit(&mut pending);
                    if let Err(e) = self.finish_flush(true) {
                        tracing::error!(partition = self.partition, "flush failed: {e}");
                    }
                    work(
                        self.rollups.as_deref(),
                        self.writer.next_offset().saturating_sub(1),
                    );
                }
            }
        }
        self.commit(&mut pending);
    }

    /// Encodes a batch into `self.record`, starting a fresh dictionary when the record will
    /// open a new log segment (segments must be readable on their own).
    fn encode(&mut self, batch: &WriteBatch) {
        self.record.clear();
        batch.encode_record(&mut self.dict, &mut self.record);
        if self.writer.will_roll(self.record.len()) {
            self.dict.clear();
            self.record.clear();
            batch.encode_record(&mut self.dict, &mut self.record);
        }
    }

    /// Makes the group durable, applies it, then acknowledges it.
    fn commit(&mut self, pending: &mut Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        if pending.iter().any(|p| p.offset.is_some()) {
            if let Err(e) = self.writer.sync() {
                self.dict.clear();
                tracing::error!(partition = self.partition, "ingest log fsync failed: {e}");
                for p in pending.drain(..) {
                    self.dedup.forget_batch(&p.batch);
                    let _ = p.ack.send(Err(format!("ingest log fsync failed: {e}")));
                }
                return;
            }
        }
        let mut last = None;
        {
            // The windows' lock before the feed's, as settling takes them.
            let mut windows = self.rollups.as_ref().map(|r| r.observer());
            let mut feed = self.feed.begin();
            for p in pending.iter_mut() {
                let Some(off) = p.offset else { continue };
                last = Some(off);
                let tenant = p.batch.tenant();
                let mut follow = feed.tenant(tenant);
                p.result.stats = match (&mut windows, &mut follow) {
                    (None, None) => self.tsdb.append(&p.batch, off),
                    (w, f) => self.tsdb.append_observed(&p.batch, off, |s, stored, slot| {
                        if let Some(w) = w {
                            w.observe_at(slot, tenant, s.id, s.key, stored);
                        }
                        if let Some(f) = f {
                            f.stored(s.id, s.key, stored, *slot, w.is_some());
                        }
                    }),
                };
            }
            if let Some(w) = &windows {
                feed.provisional(w);
            }
        }
        for p in pending.drain(..) {
            // Handed over before the acknowledgement, so a reader that waits for the device
            // stage (`DeviceSync`) after it sees the batch in the shadows.
            if let (Some(d), Some(_)) = (&self.devices, p.offset) {
                d.observe(p.batch);
            }
            let _ = p.ack.send(Ok(p.result));
        }
        self.feed.publish();
        // Settling after the acknowledgement keeps closing windows off the writers' latency:
        // a reader who got an acknowledgement sees the samples it carried already, in the
        // open (provisional) windows, until settling makes them final.
        if let Some(off) = last {
            self.settle(off);
        }
    }

    /// Closes windows the watermark passed and applies corrections.
    fn settle(&mut self, offset: u64) {
        self.last_settle = Instant::now();
        if let Some(r) = &self.rollups {
            if let Err(e) = r.settle(&self.tsdb, Some(now_ms()), offset) {
                tracing::error!(partition = self.partition, "rollups: {e}");
            }
        }
        self.feed.publish();
        if let Some(d) = &self.devices {
            d.settle(device_watermark(self.rollups.as_deref()));
        }
    }

    /// Removes series of events already seen (by exact `event_id`).
    fn drop_redelivered(&mut self, batch: WriteBatch, now: i64) -> (WriteBatch, WriteAck) {
        let mut ack = WriteAck::default();
        if batch.iter().all(|s| s.event.is_none()) {
            return (batch, ack);
        }
        // An event's readings are consecutive series sharing one key; decide once per event.
        let mut keep = Vec::with_capacity(batch.series_len());
        let mut last: Option<(u64, &[u8], bool)> = None;
        for s in batch.iter() {
            let fresh = match (s.event, s.event_id()) {
                (Some(k), Some(id)) => match last {
                    Some((h, lid, fresh)) if h == k.hash && lid == id => fresh,
                    _ => {
                        let fresh = self.dedup.first_sighting(batch.tenant(), k, id, now);
                        if !fresh {
                            ack.duplicate_events += 1;
                        }
                        last = Some((k.hash, id, fresh));
                        fresh
                    }
                },
                _ => true,
            };
            if !fresh {
                ack.duplicate_event_samples += s.samples.len();
            }
            keep.push(fresh);
        }
        if keep.iter().all(|k| *k) {
            return (batch, ack);
        }
        let mut out = WriteBatch::new(batch.tenant().clone());
        for (s, k) in batch.iter().zip(keep) {
            if k {
                out.push_from(&s);
            }
        }
        (out, ack)
    }

    fn background(&mut self) {
        // An idle shard's windows close by the wall clock; a busy one settles as it commits.
        if self.last_settle.elapsed() >= Duration::from_secs(1) {
            let applied = self.writer.next_offset().saturating_sub(1);
            self.settle(applied);
        }
        if self.last_maintain.elapsed() >= Duration::from_secs(10) {
            self.last_maintain = Instant::now();
            let now = now_ms();
            self.dedup.expire(now);
            self.maintain_in_background(now, Vec::new());
            match self.rollups.as_ref().map(|r| r.maintain(now)) {
                Some(Ok(done)) if done.changed() => crate::memory::release_free_memory(),
                Some(Err(e)) => tracing::error!(
                    partition = self.partition,
                    "warm-tier maintenance failed: {e}"
                ),
                _ => {}
            }
            crate::memory::release_surplus();
        }
        if let Err(e) = self.finish_flush(false) {
            tracing::error!(partition = self.partition, "periodic flush failed: {e}");
        }
        let log_full =
            self.cfg.checkpoint_log_bytes > 0 && self.logged_bytes >= self.cfg.checkpoint_log_bytes;
        if log_full || self.last_flush.elapsed() >= self.cfg.flush_interval {
            if let Err(e) = self.flush_in_background() {
                tracing::error!(partition = self.partition, "periodic flush failed: {e}");
            }
        }
    }

    /// Compacts blocks and applies retention on a thread of its own: merging a day's blocks
    /// must not hold the shard's writes (the storage runs one maintenance at a time).
    ///
    /// With callers in `done`, it waits for a maintenance already running, then runs anyway,
    /// and answers them with the outcome.
    fn maintain_in_background(&self, now: i64, done: Vec<oneshot::Sender<Result<(), String>>>) {
        let (tsdb, partition) = (Arc::clone(&self.tsdb), self.partition);
        // Raw samples expire only once the windows they roll up into are final: the next tier
        // holds them first (a shard whose windows lag keeps its raw samples longer).
        let now = self.rollups.as_ref().map_or(now, |r| {
            let closed = r.windows().closed_before();
            now.min(closed.saturating_add(tsdb.retention_ms()))
        });
        let spawned = std::thread::Builder::new()
            .name(format!("maintain-{partition}"))
            .spawn(move || {
                let res = if done.is_empty() {
                    tsdb.maintain(now)
                } else {
                    tsdb.maintain_now(now)
                };
                match &res {
                    // Merging blocks frees what it built them with: hand it back.
                    Ok(done) if done.changed() => crate::memory::release_free_memory(),
                    Err(e) => tracing::error!(partition, "storage maintenance failed: {e}"),
                    _ => {}
                }
                let res = res.map(|_| ()).map_err(|e| e.to_string());
                for d in done {
                    let _ = d.send(res.clone());
                }
            });
        if let Err(e) = spawned {
            tracing::error!(partition, "cannot start storage maintenance: {e}");
        }
    }

    /// Persists the rollups, the dedup state and the head, then drops log segments all of them
    /// cover; returns when done.
    ///
    /// A failure confined to one tenant's data (in either tier) stops neither the other tier's
    /// flush nor maintenance: each tier's checkpoint stays where it was, the log is cut only
    /// below both, and the first failure is returned once everything else is done.
    fn flush(&mut self, maintenance: Maintenance) -> anyhow::Result<()> {
        self.finish_flush(true)?;
        let job = self.prepare_flush()?;
        let outcome = job.run(&self.tsdb);
        self.completed(outcome, maintenance)
    }

    /// As [`Shard::flush`], the raw tier's part on a thread of its own, so the shard's writes
    /// are not held while it encodes and writes blocks (the storage locks only to take the head
    /// and to swap blocks in); [`Shard::finish_flush`] completes it. Does nothing while one
    /// runs.
    fn flush_in_background(&mut self) -> anyhow::Result<()> {
        if self.flushing.is_some() {
            return Ok(());
        }
        let job = self.prepare_flush()?;
        let tsdb = Arc::clone(&self.tsdb);
        self.flushing = Some(
            std::thread::Builder::new()
                .name(format!("flush-{}", self.partition))
                .spawn(move || job.run(&tsdb))?,
        );
        Ok(())
    }

    /// Completes a flush started by [`Shard::flush_in_background`] once its thread is done
    /// (waiting for it when `wait`).
    fn finish_flush(&mut self, wait: bool) -> anyhow::Result<()> {
        match &self.flushing {
            Some(t) if wait || t.is_finished() => {}
            _ => return Ok(()),
        }
        let thread = self.flushing.take().expect("checked above");
        let outcome = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the flush thread panicked"))?;
        let waiters = std::mem::take(&mut self.flush_waiters);
        if waiters.is_empty() {
            return self.completed(outcome, Maintenance::Background);
        }
        let res = self.completed(outcome, Maintenance::Caller);
        match &res {
            Ok(()) => self.maintain_in_background(now_ms(), waiters),
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.to_string()));
                }
            }
        }
        res
    }

    /// Takes what must be persisted before the raw tier is: the rollups' state (begun here,
    /// written by the returned job) and the dedup state (saved here). An error saving the
    /// dedup state stops the flush: the log must keep what the saved state does not remember.
    /// The rollups' error is the caller's to report once the raw tier has flushed too.
    fn prepare_flush(&mut self) -> anyhow::Result<FlushJob> {
        self.last_flush = Instant::now();
        // Counted from the attempt: a tier that keeps failing is retried by time or after as
        // many bytes again, not at every commit.
        self.flush_log_bytes = std::mem::take(&mut self.logged_bytes);
        let logged = self.writer.next_offset().checked_sub(1);
        // What the rollups hold at `logged` is taken here; the job writes it before the raw
        // tier's flush.
        let windows = self.rollups.as_ref().map(|r| r.begin_checkpoint(logged));
        // Dedup state next: a crash before the raw flush replays records whose events are
        // already remembered, which replay tolerates (it never drops on replay).
        self.dedup.save(&self.cfg.dir.join("events.ckpt"))?;
        // Device rules' state too, on their thread: it covers everything handed over,
        // `logged` included.
        if let Some(d) = &self.devices {
            d.save(logged);
        }
        Ok(FlushJob { windows })
    }

    /// After a flush job: completes the rollups' checkpoint, then as [`Shard::flushed`]; the
    /// rollups' failure is returned after the raw tier's work is done (the log is cut only
    /// below both tiers' checkpoints, so the raw flush went ahead).
    fn completed(&mut self, outcome: FlushOutcome, maintenance: Maintenance) -> anyhow::Result<()> {
        let windows_done = match outcome.windows {
            Some(Ok(done)) => {
                if let Some(r) = &self.rollups {
                    r.end_checkpoint(&done);
                }
                Ok(())
            }
            Some(Err(e)) => Err(anyhow::Error::from(e)),
            None => Ok(()),
        };
        let raw_done = self.flushed(outcome.raw, maintenance);
        windows_done?;
        raw_done
    }

    /// After the raw tier's flush (up to log offset `raw` when it succeeded): drops the log
    /// segments every part covers, and runs maintenance either way.
    fn flushed(
        &mut self,
        raw: Result<Option<u64>, TsdbError>,
        maintenance: Maintenance,
    ) -> anyhow::Result<()> {
        let cut = match &raw {
            Ok(raw) => self.cut_log(*raw),
            Err(_) => Ok(()),
        };
        let maintained = match maintenance {
            Maintenance::Background => {
                self.maintain_in_background(now_ms(), Vec::new());
                Ok(())
            }
            Maintenance::Now => self.tsdb.maintain_now(now_ms()).map(|_| ()),
            Maintenance::Caller => Ok(()),
        };
        if raw.is_ok() {
            self.counters.flushes.add(1);
            tracing::info!(
                partition = self.partition,
                log_bytes = self.flush_log_bytes,
                seconds = self.last_flush.elapsed().as_secs_f64(),
                "flushed the head into blocks and cut the log"
            );
        }
        crate::memory::release_free_memory();
        raw?;
        cut?;
        Ok(maintained?)
    }

    /// Drops the log segments below what every part covers (the tiers, the raw one up to `raw`,
    /// and the device rules' checkpoint).
    fn cut_log(&mut self, raw: Option<u64>) -> anyhow::Result<()> {
        let windows = match &self.rollups {
            Some(r) => r.checkpoint_offset(),
            None => raw,
        };
        let devices = match &self.devices {
            Some(d) => d.saved(),
            None => raw,
        };
        if let (Some(raw), Some(windows), Some(devices)) = (raw, windows, devices) {
            let covered = raw.min(windows).min(devices);
            // Everything logged is now in blocks: start a new segment so all of it can go.
            if covered + 1 == self.writer.next_offset() {
                self.writer.roll()?;
                self.dict.clear();
            }
            self.log.truncate_before(self.partition, covered + 1)?;
        }
        Ok(())
    }
}
