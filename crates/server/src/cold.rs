//! The cold tier's server side: the Parquet store `[cold]` names, the archiver thread that
//! drains final 1-hour windows into it, the raw tier's archive of expiring blocks, and their
//! metrics.
//!
//! - **Hours.** Every `cold.interval` (and on [`ColdTier::sync`], for `POST
//!   /api/v1/admin/flush`) the archiver takes the hours each shard queued (final or corrected),
//!   reads them from the hour stores, writes them with [`ColdStore::write_windows`] and only
//!   then marks them done, by the mark they were read with: a correction landing meanwhile stays
//!   queued and is written at its higher revision next time. A failure is logged, counted and
//!   retried at the next pass. After a restart, hours already in the cold store (written before
//!   a crash, not yet marked done) are not written again, so no window appears twice.
//! - **Compaction** of cold files runs after timed passes that wrote something.
//! - **Raw samples** leaving the hot tier by retention are written with
//!   [`ColdStore::write_raw`] before their block is deleted ([`strata_tsdb::ExpiryArchive`]).
//!
//! The store is synchronous (it runs its own small runtime): it is called from the archiver
//! thread and from the raw tier's maintenance threads, never from async tasks.

use crate::config::Config;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use strata_model::{Labels, SeriesSamples, Tenant};
use strata_stream::hour::{HourKey, HourStage, HOUR_MS};
use strata_stream::stage::RollupStage;
use strata_stream::store::StoredWindow;
use strata_tier::cold::{ColdOptions, ColdStore, SeriesWindows, Tier, Window};

/// Most hours read and written in one cold write (bounds the archiver's memory).
const BATCH_HOURS: usize = 50_000;

/// A cold partition's span: a UTC day.
const DAY_MS: i64 = 86_400_000;

/// The archiver's counters.
#[derive(Debug, Default)]
struct Counters {
    hours_archived: AtomicU64,
    archive_failures: AtomicU64,
    raw_samples_archived: AtomicU64,
    raw_archive_failures: AtomicU64,
    compaction_failures: AtomicU64,
}

/// An answer to [`ColdTier::sync`].
type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The cold tier: its store and the archiver thread.
pub struct ColdTier {
    store: Arc<ColdStore>,
    counters: Arc<Counters>,
    archive_raw: bool,
    interval: Duration,
    stages: parking_lot::Mutex<Vec<Arc<RollupStage>>>,
    tx: parking_lot::Mutex<Option<mpsc::Sender<Reply>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ColdTier {
    /// Opens the store `[cold]` names (a bad URL or an unreachable store is an error naming
    /// it); `None` when the cold tier is disabled. The archiver starts with [`ColdTier::start`].
    pub fn open(cfg: &Config) -> anyhow::Result<Option<ColdTier>> {
        if !cfg.cold.enabled {
            return Ok(None);
        }
        let url = cfg.cold_url();
        let opts = ColdOptions {
            target_file_bytes: cfg.cold.target_file_bytes,
            ..ColdOptions::default()
        };
        let store = ColdStore::open(&url, opts).map_err(|e| anyhow::anyhow!("cold tier: {e}"))?;
        Ok(Some(ColdTier {
            store: Arc::new(store),
            counters: Arc::default(),
            archive_raw: cfg.cold.archive_raw,
            interval: Duration::from_millis(cfg.cold.interval.0 as u64),
            stages: parking_lot::Mutex::new(Vec::new()),
            tx: parking_lot::Mutex::new(None),
            thread: parking_lot::Mutex::new(None),
        }))
    }

    /// The raw tier's archive of expiring blocks, when `cold.archive_raw` is on.
    pub fn raw_archive(&self) -> Option<Arc<dyn strata_tsdb::ExpiryArchive>> {
        self.archive_raw.then(|| {
            Arc::new(RawArchive {
                store: Arc::clone(&self.store),
                counters: Arc::clone(&self.counters),
            }) as Arc<dyn strata_tsdb::ExpiryArchive>
        })
    }

    /// Starts the archiver over the shards' rollup stages (their hour tiers queue final hours).
    pub fn start(&self, stages: Vec<Arc<RollupStage>>) -> anyhow::Result<()> {
        *self.stages.lock() = stages.clone();
        let (tx, rx) = mpsc::channel::<Reply>();
        let mut a = Archiver {
            store: Arc::clone(&self.store),
            counters: Arc::clone(&self.counters),
            stages,
            wrote: false,
        };
        let interval = self.interval;
        let thread = std::thread::Builder::new()
            .name("cold-archiver".into())
            .spawn(move || a.run(rx, interval))?;
        *self.tx.lock() = Some(tx);
        *self.thread.lock() = Some(thread);
        Ok(())
    }

    /// Returns once every hour queued before the call is in the cold store (one pass of the
    /// archiver, run now); the pass's error otherwise.
    pub async fn sync(&self) -> Result<(), String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.lock().as_ref().map(|tx| tx.send(reply).is_ok());
        if sent != Some(true) {
            return Err("the cold-tier archiver is not running".into());
        }
        rx.await
            .map_err(|_| "the cold-tier archiver stopped".to_string())?
    }

    /// Where the cold tier's hours of `tenant` begin (see [`ColdStore::earliest`]): a window
    /// keyed `start` holds what follows it.
    pub fn hours_from(&self, tenant: &Tenant) -> Option<i64> {
        self.store
            .earliest(tenant, Tier::Hour)
            .map(|t| t.saturating_add(1))
    }

    /// The cold tier's hours of `tenant`'s series matching `matchers` ending in `[start, end]`,
    /// as the query router reads windows (sketches decoded when `sketches`).
    pub fn hours(
        &self,
        tenant: &Tenant,
        matchers: &[strata_model::Matcher],
        (start, end): (i64, i64),
        sketches: bool,
    ) -> Result<Vec<strata_model::SeriesWindows>, strata_model::StorageError> {
        let got = self
            .store
            .scan_windows(tenant, Tier::Hour, matchers, start - HOUR_MS, end)
            .map_err(|e| strata_model::StorageError::Io(format!("cold tier: {e}")))?;
        Ok(got
            .into_iter()
            .map(|s| strata_model::SeriesWindows {
                labels: s.labels,
                windows: s
                    .windows
                    .into_iter()
                    .filter(|w| w.end >= start && w.end <= end)
                    .map(|w| {
                        let sketch = w
                            .sketch
                            .as_deref()
                            .filter(|_| sketches)
                            .and_then(|b| strata_stream::state::sketch_of(b).ok()?.1)
                            .map(|q| Arc::new(q) as Arc<dyn strata_model::QuantileSketch>);
                        strata_model::WindowFigures {
                            end: w.end,
                            count: w.count,
                            sum: w.sum,
                            sum_squares: w.sum_squares,
                            min: w.min,
                            max: w.max,
                            first: w.first,
                            last: w.last,
                            increase: w.increase,
                            sketch,
                        }
                    })
                    .collect(),
            })
            .filter(|s| !s.windows.is_empty())
            .collect())
    }

    /// Stops the archiver (after the pass it is in); queued hours stay queued.
    pub fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Describes the cold store's and the archiver's metrics (part of the engine's).
    pub fn collect(&self, out: &mut crate::metrics::Out<'_>) {
        let m = self.store.metrics();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pending: usize = self
            .stages
            .lock()
            .iter()
            .filter_map(|s| s.hours())
            .map(HourStage::pending_final_count)
            .sum();
        out.gauge(
            "strata_cold_files",
            "Parquet files the cold tier's manifest lists.",
            m.visible_files,
        );
        out.gauge(
            "strata_cold_bytes",
            "Bytes of those files: the cold tier's size.",
            m.visible_bytes,
        );
        out.gauge("strata_cold_rows", "Rows in those files.", m.visible_rows);
        for (name, help, v) in [
            (
                "strata_cold_files_written_total",
                "Cold files made visible (writes and compaction output).",
                m.files_written,
            ),
            (
                "strata_cold_bytes_written_total",
                "Bytes of cold files made visible.",
                m.bytes_written,
            ),
            (
                "strata_cold_rows_written_total",
                "Rows in cold files made visible.",
                m.rows_written,
            ),
            (
                "strata_cold_compactions_total",
                "Cold partitions compacted.",
                m.compactions,
            ),
            (
                "strata_cold_files_compacted_total",
                "Cold files merged away by compaction.",
                m.files_compacted,
            ),
            (
                "strata_cold_leftovers_removed_total",
                "Objects of interrupted writes removed when the cold store opened.",
                m.leftovers_removed,
            ),
            (
                "strata_cold_errors_total",
                "Failed cold store operations (writes, reads, deletes, manifest updates).",
                m.errors,
            ),
            (
                "strata_cold_hours_archived_total",
                "1-hour windows written to the cold tier (corrections again).",
                c(&self.counters.hours_archived),
            ),
            (
                "strata_cold_archive_failures_total",
                "Archiver passes that failed (retried at the next pass).",
                c(&self.counters.archive_failures),
            ),
            (
                "strata_cold_raw_samples_archived_total",
                "Raw samples of expiring blocks written to the cold tier.",
                c(&self.counters.raw_samples_archived),
            ),
            (
                "strata_cold_raw_archive_failures_total",
                "Expiring-block archives that failed (the block is kept and retried).",
                c(&self.counters.raw_archive_failures),
            ),
            (
                "strata_cold_compaction_failures_total",
                "Cold compactions that failed.",
                c(&self.counters.compaction_failures),
            ),
        ] {
            out.counter(name, help, v);
        }
        out.gauge(
            "strata_cold_pending_hours",
            "Final or corrected 1-hour windows queued for the cold tier.",
            pending,
        );
    }
}

impl Drop for ColdTier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The archiver thread's state.
struct Archiver {
    store: Arc<ColdStore>,
    counters: Arc<Counters>,
    stages: Vec<Arc<RollupStage>>,
    /// Something was written since the last compaction.
    wrote: bool,
}

impl Archiver {
    fn run(&mut self, rx: mpsc::Receiver<Reply>, interval: Duration) {
        // Timed passes keep their pace however many flushes ask for passes in between.
        let mut next = std::time::Instant::now() + interval;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(std::time::Instant::now())) {
                Ok(reply) => {
                    let r = self.pass();
                    let _ = reply.send(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    next = std::time::Instant::now() + interval;
                    if self.pass().is_ok() && self.wrote {
                        self.compact();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Archives every hour queued now; errors are logged and counted.
    fn pass(&mut self) -> Result<(), String> {
        let mut result = Ok(());
        for stage in self.stages.clone() {
            let Some(hours) = stage.hours() else { continue };
            if let Err(e) = self.archive(hours) {
                self.counters
                    .archive_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("archiving final hours to the cold tier failed (retried): {e}");
                result = Err(e);
            }
        }
        result
    }

    /// Archives the hours one shard's hour tier queued, in batches.
    fn archive(&mut self, hours: &HourStage) -> Result<(), String> {
        let mut queued = hours.pending_final_marked();
        // Day-major, as the cold tier partitions: a batch then spans few days and writes few
        // files. A backfill queues years of each series at once; series-major, every batch of
        // it would write a file into each day of those years.
        queued.sort_by(|(a, _), (b, _)| {
            let day = |k: &HourKey| k.start.div_euclid(DAY_MS);
            (&a.tenant, day(a), &a.key, a.start).cmp(&(&b.tenant, day(b), &b.key, b.start))
        });
        let mut written = false;
        for batch in queued.chunks(BATCH_HOURS) {
            let mut by_tenant: BTreeMap<Tenant, Vec<(Labels, StoredWindow, bool)>> =
                BTreeMap::new();
            for (tenant, series) in read_hours(hours, batch)? {
                let windows = by_tenant.entry(tenant).or_default();
                for (labels, w, mark) in series {
                    windows.push((labels, w, hours.may_predate_open(mark)));
                }
            }
            for (tenant, windows) in by_tenant {
                let series = self.unwritten(&tenant, windows)?;
                if series.is_empty() {
                    continue;
                }
                let n: usize = series.iter().map(|s| s.windows.len()).sum();
                self.store
                    .write_windows(&tenant, Tier::Hour, &series)
                    .map_err(|e| e.to_string())?;
                self.wrote = true;
                written = true;
                self.counters
                    .hours_archived
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            // Hours no longer stored (expired) have nothing to archive: they leave too.
            hours.done_final_marked(batch);
        }
        if written {
            // Encoding buffers, as a flush's: the allocator would keep them otherwise.
            crate::memory::release_free_memory();
        }
        Ok(())
    }

    /// `windows` as cold series, leaving out those the cold store holds already at the same or
    /// a higher revision, when they may predate this process (the third field, see
    /// [`HourStage::may_predate_open`]): only then is the store read.
    fn unwritten(
        &self,
        tenant: &Tenant,
        windows: Vec<(Labels, StoredWindow, bool)>,
    ) -> Result<Vec<SeriesWindows>, String> {
        let old = windows.iter().filter(|w| w.2).map(|w| w.1.start);
        let (from, to) = old.fold((i64::MAX, i64::MIN), |(a, b), s| (a.min(s), b.max(s)));
        let stored: HashMap<(Labels, i64), u64> = if from <= to {
            self.store
                .scan_windows(tenant, Tier::Hour, &[], from, to)
                .map_err(|e| e.to_string())?
                .into_iter()
                .flat_map(|s| {
                    let labels = s.labels;
                    s.windows
                        .into_iter()
                        .map(move |w| ((labels.clone(), w.start), w.revision))
                })
                .collect()
        } else {
            HashMap::new()
        };
        let mut by_series: BTreeMap<Labels, Vec<Window>> = BTreeMap::new();
        for (labels, w, _) in windows {
            let revision = u64::from(w.revision);
            if stored
                .get(&(labels.clone(), w.start))
                .is_some_and(|&r| r >= revision)
            {
                continue;
            }
            by_series.entry(labels).or_default().push(cold_window(&w));
        }
        Ok(by_series
            .into_iter()
            .map(|(labels, mut windows)| {
                windows.sort_by_key(|w| w.start);
                SeriesWindows { labels, windows }
            })
            .collect())
    }

    fn compact(&mut self) {
        match self.store.compact() {
            Ok(_) => self.wrote = false,
            Err(e) => {
                self.counters
                    .compaction_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("cold-tier compaction failed (retried): {e}");
            }
        }
    }
}

/// The stored windows of the queued hours `batch` (with their marks), by tenant: one read of
/// each series' pending span, not one per hour (a backfill queues years of a series at once).
/// Quantiles are not cold columns: none are read, but the hours' states are (the sketch column).
/// Hours no longer stored are left out.
#[allow(clippy::type_complexity)]
fn read_hours(
    hours: &HourStage,
    batch: &[(HourKey, u64)],
) -> Result<Vec<(Tenant, Vec<(Labels, StoredWindow, u64)>)>, String> {
    let err = |e: strata_model::StorageError| e.to_string();
    // Tenant -> series -> start -> mark (keys sort by tenant, series, start).
    let mut wanted: BTreeMap<&Tenant, BTreeMap<&strata_model::SeriesKey, BTreeMap<i64, u64>>> =
        BTreeMap::new();
    for (k, mark) in batch {
        wanted
            .entry(&k.tenant)
            .or_default()
            .entry(&k.key)
            .or_default()
            .insert(k.start, *mark);
    }
    let store = hours.store();
    let mut out = Vec::new();
    for (tenant, series) in wanted {
        let mut got = Vec::new();
        for (key, starts) in series {
            let (first, last) = (starts.keys().next(), starts.keys().next_back());
            let (Some(&first), Some(&last)) = (first, last) else {
                continue;
            };
            let labels = key.labels();
            for w in store
                .range(tenant, key.as_ref(), first, last, &[], Some(HOUR_MS))
                .map_err(err)?
            {
                if let Some(&mark) = starts.get(&w.start) {
                    got.push((labels.clone(), w, mark));
                }
            }
        }
        out.push((tenant.clone(), got));
    }
    Ok(out)
}

/// A stored hour as a cold row: every figure, the revision, and as `sketch` the hour's mergeable
/// state ([`strata_stream::state`]: sketches, exact sums) when its figures do not give it back
/// and it is the state of this revision.
fn cold_window(w: &StoredWindow) -> Window {
    let f = &w.figures;
    Window {
        start: w.start,
        end: w.start + HOUR_MS,
        count: f.count,
        sum: f.sum,
        sum_squares: f.sum_squares,
        min: f.min,
        max: f.max,
        first: f.first,
        last: f.last,
        increase: f.increase,
        revision: u64::from(w.revision),
        sketch: w
            .state
            .clone()
            .filter(|s| strata_stream::state::revision(s) == Ok(w.revision)),
    }
}

/// Writes expiring raw blocks' samples to the cold store before the raw tier deletes them.
struct RawArchive {
    store: Arc<ColdStore>,
    counters: Arc<Counters>,
}

impl strata_tsdb::ExpiryArchive for RawArchive {
    fn archive(&self, tenant: &Tenant, series: &[SeriesSamples]) -> Result<(), String> {
        match self.store.write_raw(tenant, series) {
            Ok(s) => {
                self.counters
                    .raw_samples_archived
                    .fetch_add(s.rows, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.counters
                    .raw_archive_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(format!("cold tier: {e}"))
            }
        }
    }
}
