//! A shard's device state: its devices' shadows (reported readings) and the device rules'
//! state, checkpointed with the log offset they cover, kept on a thread of its own.
//!
//! The shard hands each applied batch over once it is acknowledged (the batch moves, nothing is
//! copied), so judging readings never holds the shard's writes: the shard's thread bounds the
//! ingest rate. The hand-over is bounded; a judge that falls behind slows the shard instead of
//! buffering without bound. Settling is asked for after each commit and done once per drain of
//! the queue, with the latest watermark asked for: readings handed over before it are judged by
//! it, as they would have been had they come a moment earlier. The log is cut only below what
//! the judge's latest checkpoint covers ([`DeviceJudge::saved`]).

use crate::device_rules::DeviceRulesHub;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use strata_alert::device::DeviceRules;
use strata_live::protocol::Kind;
use strata_model::WriteBatch;
use strata_stream::shadow::Shadows;

/// Batches (and requests) the hand-over holds before the shard waits for the judge.
const QUEUE: usize = 64;

/// Most messages taken per drain (one settle each).
const DRAIN: usize = 256;

/// The device state of one shard, worked on directly (replay, on the shard's thread).
pub(crate) struct DeviceStage {
    hub: Arc<DeviceRulesHub>,
    state: DeviceRules,
    epoch: u64,
    path: PathBuf,
    /// The shadows, read by the API too (locked once per batch here).
    shadows: Arc<Mutex<Shadows>>,
    shadows_path: PathBuf,
    /// Late readings already counted into the hub.
    late_counted: u64,
    /// Where reported changes go (kind `shadows`).
    live: Arc<crate::live::Live>,
}

impl DeviceStage {
    /// Loads the checkpoints in `dir` (the shadows into `shadows`); returns the stage and the
    /// log offset both cover (`None`: replay everything).
    pub(crate) fn open(
        hub: Arc<DeviceRulesHub>,
        dir: &Path,
        shadows: Arc<Mutex<Shadows>>,
        live: Arc<crate::live::Live>,
    ) -> anyhow::Result<(DeviceStage, Option<u64>)> {
        let path = dir.join("devrules.ckpt");
        let (epoch, rules) = hub.rules();
        let (state, offset) = DeviceRules::load(&path, rules)?;
        let shadows_path = dir.join("shadows.ckpt");
        let (loaded, shadow_offset) = Shadows::load(&shadows_path)?;
        *shadows.lock() = loaded;
        // A crash between the two checkpoints' writes leaves them apart: replay from the
        // earlier (both tolerate records they have seen).
        let offset = match (offset, shadow_offset) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        let stage = DeviceStage {
            hub,
            state,
            epoch,
            path,
            shadows,
            shadows_path,
            late_counted: 0,
            live,
        };
        Ok((stage, offset))
    }

    /// Takes a batch's readings into the shadows, and into the rules (the latest ones).
    pub(crate) fn observe(&mut self, batch: &WriteBatch) {
        let tenant = batch.tenant();
        let skip = strata_model::is_anomaly_output;
        if self.live.hub.subscribed(tenant.as_str(), Kind::Shadows) {
            let live = &self.live;
            let mut changed = Vec::new();
            self.shadows.lock().observe_changes(batch, skip, |key, s| {
                if live.hub.selects(tenant.as_str(), Kind::Shadows, key) {
                    changed.push(crate::live::reported_entry(key, s));
                }
            });
            live.publish(tenant, changed);
        } else {
            self.shadows.lock().observe(batch, skip);
        }
        if self.hub.epoch() != self.epoch {
            let (epoch, rules) = self.hub.rules();
            self.state.set_rules(rules);
            self.epoch = epoch;
        }
        if self.state.is_empty() {
            return;
        }
        self.state.observe(batch);
        let late = self.state.late - self.late_counted;
        if late > 0 {
            self.hub.late.fetch_add(late, Ordering::Relaxed);
            self.late_counted = self.state.late;
        }
    }

    /// Judges what the watermark passed and publishes the changes.
    pub(crate) fn settle(&mut self, watermark: i64) {
        let changes = self.state.settle(watermark);
        self.hub.publish(changes);
    }

    /// Registers the firing alerts with the hub (once the shard's replay is done).
    pub(crate) fn register_firing(&self) {
        self.hub.register_firing(self.state.firing());
    }

    /// Writes the checkpoints, covering the log up to `offset`.
    fn save(&self, offset: Option<u64>) -> anyhow::Result<()> {
        DeviceRules::save(&self.path, &self.state.encode(offset))?;
        let snapshot = self.shadows.lock().snapshot(offset);
        Shadows::write_snapshot(&self.shadows_path, snapshot)?;
        Ok(())
    }
}

enum Msg {
    Batch(WriteBatch),
    Settle(i64),
    Save(Option<u64>),
    /// Answered once everything handed over before it is in the shadows.
    Barrier(mpsc::SyncSender<()>),
    Stop,
}

/// Waits for a shard's device stage to take what was handed over (see [`DeviceSync::sync`]).
#[derive(Clone)]
pub(crate) struct DeviceSync(mpsc::SyncSender<Msg>);

impl DeviceSync {
    /// Returns once every batch acknowledged before the call is in the shard's shadows (a
    /// batch is handed over before its acknowledgement): reads of shadows see their own
    /// writes. Blocks; quickly unless the stage is behind by a full queue.
    pub(crate) fn sync(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.0.send(Msg::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// A [`DeviceStage`] on its own thread (see the module doc); finished when dropped.
pub(crate) struct DeviceJudge {
    tx: Option<mpsc::SyncSender<Msg>>,
    /// One past the log offset the latest checkpoint covers (0: none).
    saved: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeviceJudge {
    /// Starts judging on a thread of its own; `saved` is the offset the stage's checkpoint
    /// covers.
    pub(crate) fn start(
        mut stage: DeviceStage,
        saved: Option<u64>,
        partition: u32,
    ) -> std::io::Result<DeviceJudge> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let covered = Arc::new(AtomicU64::new(saved.map_or(0, |o| o + 1)));
        let mark = Arc::clone(&covered);
        let thread = std::thread::Builder::new()
            .name(format!("devrules-{partition}"))
            .spawn(move || {
                let mut msgs = Vec::with_capacity(DRAIN);
                let mut stop = false;
                while let Ok(first) = rx.recv() {
                    msgs.push(first);
                    msgs.extend(rx.try_iter().take(DRAIN - 1));
                    let mut settle: Option<i64> = None;
                    for m in msgs.drain(..) {
                        match m {
                            Msg::Batch(b) => stage.observe(&b),
                            Msg::Barrier(done) => {
                                let _ = done.send(());
                            }
                            Msg::Stop => stop = true,
                            Msg::Settle(w) => settle = settle.max(Some(w)),
                            Msg::Save(offset) => {
                                if let Some(w) = settle.take() {
                                    stage.settle(w);
                                }
                                match stage.save(offset) {
                                    Ok(()) => {
                                        mark.store(offset.map_or(0, |o| o + 1), Ordering::Release)
                                    }
                                    // The log keeps what the saved state does not cover.
                                    Err(e) => tracing::error!(
                                        partition,
                                        "device state checkpoint failed: {e}"
                                    ),
                                }
                            }
                        }
                    }
                    if let Some(w) = settle {
                        stage.settle(w);
                    }
                    if stop {
                        return;
                    }
                }
            })?;
        Ok(DeviceJudge {
            tx: Some(tx),
            saved: covered,
            thread: Some(thread),
        })
    }

    fn send(&self, m: Msg) {
        // The thread ends only when this handle drops the sender.
        if let Some(tx) = &self.tx {
            let _ = tx.send(m);
        }
    }

    /// Hands an applied batch over.
    pub(crate) fn observe(&self, batch: WriteBatch) {
        self.send(Msg::Batch(batch));
    }

    /// Asks for a settle by `watermark`.
    pub(crate) fn settle(&self, watermark: i64) {
        self.send(Msg::Settle(watermark));
    }

    /// Asks for a checkpoint covering the log up to `offset` (everything handed over so far).
    pub(crate) fn save(&self, offset: Option<u64>) {
        self.send(Msg::Save(offset));
    }

    /// A handle that waits for the stage to catch up (for readers of the shadows).
    pub(crate) fn sync_handle(&self) -> Option<DeviceSync> {
        self.tx.clone().map(DeviceSync)
    }

    /// The log offset the latest written checkpoint covers.
    pub(crate) fn saved(&self) -> Option<u64> {
        self.saved.load(Ordering::Acquire).checked_sub(1)
    }
}

impl Drop for DeviceJudge {
    /// Judges what was handed over, then ends the thread (readers' [`DeviceSync`] handles
    /// keep the channel open, so it is told to stop).
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
