//! The cold tier: rollup windows and archived raw samples as Parquet files on an object store
//! (a local directory by default, any S3-compatible store by URL), with a manifest of visible
//! files. See the crate documentation for the schema and the layout.
//!
//! [`ColdStore`] is synchronous: it drives object_store on a small runtime of its own, so call
//! it from plain threads or `spawn_blocking`, not from inside an async task.

mod file;
mod layout;
mod manifest;
mod merge;
mod metrics;
mod rows;
mod schema;
mod target;
#[cfg(test)]
mod tests;

pub use layout::Tier;
pub use metrics::ColdMetrics;
pub use rows::{SeriesWindows, Window};

use file::{Cut, EncodedFile, ReadError, Selection};
use futures::{StreamExt, TryStreamExt};
use layout::{day_of, is_data_file, join, relative, MANIFEST};
use manifest::{FileEntry, Manifest};
use merge::merge;
use metrics::{add, Counters};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::RwLock;
use rows::ColdRow;
use schema::{arrow_schema, reserved_column, StoredSeries};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_model::{Labels, Matcher, Sample, SeriesSamples, Tenant, METRIC_NAME};
use thiserror::Error;
use tokio::sync::Mutex;

/// Files read at once by a scan or a compaction (object store latency, not CPU, bounds them).
const READ_CONCURRENCY: usize = 8;

/// How a cold store is opened.
#[derive(Debug, Clone)]
pub struct ColdOptions {
    /// Compaction merges a partition's files into files of about this size; a file below half
    /// of it counts as small. Default 128 MiB.
    pub target_file_bytes: u64,
    /// Rows per Parquet row group. Default 131,072.
    pub row_group_rows: usize,
    /// Labels that also get a column of their own (beside the `labels` map) so SQL can say
    /// `site` instead of `labels['site']`. Fixed when a root is first created (kept in its
    /// manifest); later opens with another list keep the stored one. Default: `site`, `device`,
    /// `job`, `instance`.
    pub promoted_labels: Vec<String>,
    /// Extra object_store settings for S3 (keys as `AmazonS3ConfigKey` parses them, e.g.
    /// `aws_endpoint`, `aws_region`), applied over the `AWS_*` environment.
    pub store_options: Vec<(String, String)>,
}

impl Default for ColdOptions {
    fn default() -> Self {
        ColdOptions {
            target_file_bytes: 128 << 20,
            row_group_rows: 128 * 1024,
            promoted_labels: ["site", "device", "job", "instance"]
                .map(String::from)
                .to_vec(),
            store_options: Vec::new(),
        }
    }
}

/// Why a cold store operation failed.
#[derive(Debug, Error)]
pub enum ColdError {
    /// The store URL or its settings are unusable.
    #[error("cold store {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// An object store request failed.
    #[error("cold store {op} {path}: {source}")]
    Store {
        /// The request (`get`, `put`, `list`, `delete`).
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A data file could not be written or read.
    #[error("cold file {path}: {reason}")]
    File {
        /// The object.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The manifest is unreadable.
    #[error("cold manifest {path}: {reason}")]
    Manifest {
        /// The manifest object.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Data files exist but the manifest does not: they are not treated as leftovers.
    #[error("cold store root {root:?} holds data files but no manifest ({MANIFEST}); restore the manifest or move the files away")]
    ManifestMissing {
        /// The root.
        root: String,
    },
    /// [`ColdOptions`] are invalid.
    #[error("invalid cold store options: {0}")]
    Options(String),
    /// A written series has no `__name__`.
    #[error("series {labels} written to the cold tier has no metric name")]
    NoMetricName {
        /// The series' labels.
        labels: String,
    },
    /// Windows were written to the raw tier.
    #[error("tier {0:?} does not hold windows (use 1m or 1h)")]
    NotAWindowTier(Tier),
    /// A local directory could not be prepared or cleaned.
    #[error("cold directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store's runtime could not start.
    #[error("cold store runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What a write made visible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Files written.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl WriteSummary {
    fn of(entries: &[FileEntry]) -> WriteSummary {
        WriteSummary {
            files: entries.len() as u64,
            rows: entries.iter().map(|e| e.rows).sum(),
            bytes: entries.iter().map(|e| e.bytes).sum(),
        }
    }
}

/// One partition being written.
struct Partition<'a> {
    tenant: &'a str,
    tier: Tier,
    day: &'a str,
    /// Its directory, relative to the root.
    dir: String,
}

impl<'a> Partition<'a> {
    fn new(tenant: &'a str, tier: Tier, day: &'a str) -> Partition<'a> {
        Partition {
            tenant,
            tier,
            day,
            dir: layout::partition(tenant, tier, day),
        }
    }

    fn write_error(&self, e: parquet::errors::ParquetError) -> ColdError {
        ColdError::File {
            path: format!("{}/(new file)", self.dir),
            reason: e.to_string(),
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionSummary {
    /// Partitions compacted.
    pub partitions: u64,
    /// Files merged away.
    pub files_in: u64,
    /// Files written instead.
    pub files_out: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written (fewer when duplicates and superseded revisions were dropped).
    pub rows_out: u64,
}

/// The Parquet cold tier on one object store root. One writer per root: two processes writing
/// the same root would overwrite each other's manifest.
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    cut: Cut,
    promoted: Vec<String>,
    schema: arrow_schema::SchemaRef,
    /// The committed manifest; replaced whole after each successful rewrite.
    manifest: RwLock<Arc<Manifest>>,
    /// Serializes manifest rewrites.
    commit: Mutex<()>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    /// The next file sequence number.
    seq: AtomicU64,
    /// Distinguishes this process' file names from a crashed one's with the same `seq`.
    nonce: u32,
    counters: Counters,
    footers: file::FooterCache,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ColdStore {
    /// Opens (creating if needed) the cold tier at `url`: a directory path or `file://` URL, or
    /// `s3://bucket/prefix`. Removes crash leftovers: data files the manifest does not list and
    /// half-written uploads.
    pub fn open(url: &str, options: ColdOptions) -> Result<ColdStore, ColdError> {
        validate(&options)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-cold")
            .enable_all()
            .build()
            .map_err(ColdError::Runtime)?;
        let t = target::open(url, &options.store_options)?;
        let counters = Counters::default();
        let manifest = runtime.block_on(load_or_create(&t, &options, url))?;
        if manifest.promoted_labels != options.promoted_labels {
            tracing::warn!(
                stored = ?manifest.promoted_labels,
                configured = ?options.promoted_labels,
                "cold store keeps the promoted label columns it was created with"
            );
        }
        let removed = runtime.block_on(clean_leftovers(&t, &manifest))?;
        add(&counters.leftovers_removed, removed);
        let promoted = manifest.promoted_labels.clone();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        Ok(ColdStore {
            store: t.store,
            root: t.root,
            cut: Cut {
                target_bytes: options.target_file_bytes,
                row_group_rows: options.row_group_rows,
            },
            schema: arrow_schema(&promoted),
            promoted,
            seq: AtomicU64::new(manifest.next_seq),
            manifest: RwLock::new(Arc::new(manifest)),
            commit: Mutex::new(()),
            compacting: Mutex::new(()),
            nonce: nanos ^ std::process::id().rotate_left(16),
            counters,
            footers: file::FooterCache::default(),
            runtime: Some(runtime),
        })
    }

    /// Writes `tenant`'s windows of `tier` (1m or 1h). Rows are partitioned by the UTC day of
    /// their `start`; a window written again with a higher revision supersedes the stored one.
    pub fn write_windows(
        &self,
        tenant: &Tenant,
        tier: Tier,
        series: &[SeriesWindows],
    ) -> Result<WriteSummary, ColdError> {
        if tier == Tier::Raw {
            return Err(ColdError::NotAWindowTier(tier));
        }
        let input = series.iter().map(|s| (&s.labels, s.windows.as_slice()));
        self.run(self.write_rows(tenant, tier, input))
    }

    /// Archives `tenant`'s raw samples, partitioned by the UTC day of their timestamp. A sample
    /// written twice (same series and timestamp) is kept once: the newest write wins.
    pub fn write_raw(
        &self,
        tenant: &Tenant,
        series: &[SeriesSamples],
    ) -> Result<WriteSummary, ColdError> {
        let input = series.iter().map(|s| (&s.labels, s.samples.as_slice()));
        self.run(self.write_rows(tenant, Tier::Raw, input))
    }

    /// The earliest millisecond `tenant`'s files of `tier` cover, from the manifest (no
    /// request to the store); `None` when it has none.
    pub fn earliest(&self, tenant: &Tenant, tier: Tier) -> Option<i64> {
        let m = self.manifest.read().clone();
        m.files
            .iter()
            .filter(|f| f.tenant == tenant.as_str() && f.tier == tier)
            .map(|f| f.min_time)
            .min()
    }

    /// `tenant`'s windows of `tier` that overlap `[start, end]` (inclusive milliseconds; a
    /// window covers `(w.start, w.end]`) of the series the matchers select: each series once,
    /// sorted by metric name then labels, its windows in time order with the highest revision
    /// of each.
    pub fn scan_windows(
        &self,
        tenant: &Tenant,
        tier: Tier,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesWindows>, ColdError> {
        let sel = Selection {
            matchers,
            start,
            end,
        };
        let got = self.run(self.scan_rows::<Window>(tenant.as_str(), tier, &sel))?;
        Ok(got
            .into_iter()
            .map(|s| SeriesWindows {
                labels: s.labels(),
                windows: s.rows,
            })
            .collect())
    }

    /// `tenant`'s archived raw samples in `[start, end]` (inclusive milliseconds) of the series
    /// the matchers select, sorted as [`ColdStore::scan_windows`] sorts.
    pub fn scan_raw(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, ColdError> {
        let sel = Selection {
            matchers,
            start,
            end,
        };
        let got = self.run(self.scan_rows::<Sample>(tenant.as_str(), Tier::Raw, &sel))?;
        Ok(got
            .into_iter()
            .map(|s| SeriesSamples {
                labels: s.labels(),
                samples: s.rows,
            })
            .collect())
    }

    /// Merges small files into files of about the target size, per partition (tenant, tier,
    /// day): a window partition with two or more files, one of them small, is rewritten whole
    /// with only the winning revision of each window; in a raw partition, runs of small files
    /// are merged (duplicates dropped). The manifest swaps the files atomically, then the old
    /// files are deleted. Streams: memory holds about one output file.
    pub fn compact(&self) -> Result<CompactionSummary, ColdError> {
        self.run(self.compact_all())
    }

    /// The store's counters, and the size of what the manifest lists.
    pub fn metrics(&self) -> ColdMetrics {
        let mut m = self.counters.snapshot();
        for f in &self.manifest.read().files {
            m.visible_files += 1;
            m.visible_bytes += f.bytes;
            m.visible_rows += f.rows;
        }
        m
    }

    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(f)
    }

    fn count_error<T>(&self, r: Result<T, ColdError>) -> Result<T, ColdError> {
        if r.is_err() {
            add(&self.counters.errors, 1);
        }
        r
    }

    async fn write_rows<'a, T: ColdRow>(
        &self,
        tenant: &Tenant,
        tier: Tier,
        input: impl Iterator<Item = (&'a Labels, &'a [T])>,
    ) -> Result<WriteSummary, ColdError> {
        let mut by_day: BTreeMap<String, Vec<StoredSeries<T>>> = BTreeMap::new();
        for (labels, rows) in input {
            let (metric, rest) =
                StoredSeries::<T>::split(labels).ok_or_else(|| ColdError::NoMetricName {
                    labels: labels.to_string(),
                })?;
            let mut days: BTreeMap<String, Vec<T>> = BTreeMap::new();
            for r in rows {
                days.entry(day_of(r.key())).or_default().push(r.clone());
            }
            for (day, rows) in days {
                by_day.entry(day).or_default().push(StoredSeries {
                    metric: metric.clone(),
                    rest: rest.clone(),
                    rows,
                });
            }
        }
        // One rank for the whole write: its files never hold the same key twice.
        let rank = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut entries = Vec::new();
        for (day, series) in by_day {
            let part = Partition::new(tenant.as_str(), tier, &day);
            // Sorts series and rows and folds repeats within this write (the later one wins).
            let series = merge(vec![(0, series)]);
            if let Err(e) = self.write_files(&part, rank, &series, &mut entries).await {
                self.forget(&entries).await;
                return self.count_error(Err(e));
            }
        }
        let summary = WriteSummary::of(&entries);
        if entries.is_empty() {
            return Ok(summary);
        }
        // On a failed commit the files stay: the manifest PUT may have landed all the same, and
        // if it did not they are orphans, removed on the next open.
        self.count_error(self.commit(entries, &[]).await)?;
        self.count_written(&summary);
        Ok(summary)
    }

    /// Writes sorted series into files of one partition, PUT as they fill.
    async fn write_files<T: ColdRow>(
        &self,
        part: &Partition<'_>,
        rank: u64,
        series: &[StoredSeries<T>],
        entries: &mut Vec<FileEntry>,
    ) -> Result<(), ColdError> {
        let mut writer = self.file_writer(part)?;
        let mut done = Vec::new();
        for s in series {
            writer.push(s, &mut done).map_err(|e| part.write_error(e))?;
            self.put_done(part, rank, &mut done, entries).await?;
        }
        writer.finish(&mut done).map_err(|e| part.write_error(e))?;
        self.put_done(part, rank, &mut done, entries).await
    }

    fn file_writer(&self, part: &Partition<'_>) -> Result<file::FileWriter, ColdError> {
        file::FileWriter::new(&self.schema, &self.promoted, self.cut)
            .map_err(|e| part.write_error(e))
    }

    fn count_written(&self, s: &WriteSummary) {
        add(&self.counters.files_written, s.files);
        add(&self.counters.rows_written, s.rows);
        add(&self.counters.bytes_written, s.bytes);
    }

    /// PUTs one encoded file (a single PUT: visible whole or not at all) and describes it;
    /// `rank` is the age of its data (see [`FileEntry::seq`]).
    async fn put_file(
        &self,
        part: &Partition<'_>,
        rank: u64,
        f: EncodedFile,
    ) -> Result<FileEntry, ColdError> {
        let name_seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let rel = layout::file_name(&part.dir, name_seq, self.nonce);
        let path = join(&self.root, &rel);
        let bytes = f.bytes.len() as u64;
        self.store
            .put(&path, PutPayload::from_bytes(f.bytes))
            .await
            .map_err(|source| ColdError::Store {
                op: "put",
                path: path.to_string(),
                source,
            })?;
        Ok(FileEntry {
            path: rel,
            tenant: part.tenant.to_string(),
            tier: part.tier,
            day: part.day.to_string(),
            seq: rank,
            rows: f.rows,
            bytes,
            min_time: f.min_time,
            max_time: f.max_time,
        })
    }

    /// PUTs the files in `done` (emptying it), describing them in `entries`.
    async fn put_done(
        &self,
        part: &Partition<'_>,
        rank: u64,
        done: &mut Vec<EncodedFile>,
        entries: &mut Vec<FileEntry>,
    ) -> Result<(), ColdError> {
        for f in done.drain(..) {
            entries.push(self.put_file(part, rank, f).await?);
        }
        Ok(())
    }

    /// Deletes files whose commit was never tried (best effort: what stays is removed on open).
    async fn forget(&self, entries: &[FileEntry]) {
        let paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        self.delete(&paths).await;
    }

    async fn delete(&self, rel: &[String]) {
        for r in rel {
            let path = join(&self.root, r);
            self.footers.remove(&path);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    add(&self.counters.errors, 1);
                    tracing::warn!(%path, error = %e, "cold file not deleted; it is removed on the next open");
                }
            }
        }
    }

    /// Rewrites the manifest with `add` added and `remove` removed. Only after the PUT succeeds
    /// do readers see the change.
    async fn commit(&self, add: Vec<FileEntry>, remove: &[String]) -> Result<(), ColdError> {
        let _one = self.commit.lock().await;
        let mut m = Manifest::clone(&self.manifest.read());
        let gone: HashSet<&str> = remove.iter().map(String::as_str).collect();
        m.files.retain(|f| !gone.contains(f.path.as_str()));
        m.files.extend(add);
        m.version += 1;
        m.next_seq = m.next_seq.max(self.seq.load(Ordering::Relaxed));
        put_manifest(&*self.store, &self.root, &m).await?;
        *self.manifest.write() = Arc::new(m);
        Ok(())
    }

    async fn scan_rows<T: ColdRow>(
        &self,
        tenant: &str,
        tier: Tier,
        sel: &Selection<'_>,
    ) -> Result<Vec<StoredSeries<T>>, ColdError> {
        // A compaction may delete a file between our manifest snapshot and its read: then the
        // manifest has moved on, and the scan runs again on the new one.
        loop {
            let snap = self.manifest.read().clone();
            let files: Vec<&FileEntry> = snap
                .files
                .iter()
                .filter(|f| f.covers(tenant, tier, sel.start, sel.end))
                .collect();
            match self.read_files::<T>(&files, sel).await {
                Ok(got) => {
                    let merged = merge(got);
                    let rows: usize = merged.iter().map(|s| s.rows.len()).sum();
                    add(&self.counters.rows_read, rows as u64);
                    return Ok(merged);
                }
                Err(_) if self.manifest.read().version != snap.version => continue,
                Err(e) => return self.count_error(Err(e)),
            }
        }
    }

    async fn read_files<T: ColdRow>(
        &self,
        files: &[&FileEntry],
        sel: &Selection<'_>,
    ) -> Result<Vec<(u64, Vec<StoredSeries<T>>)>, ColdError> {
        futures::stream::iter(files)
            .map(|f| async move {
                let path = join(&self.root, &f.path);
                add(&self.counters.files_read, 1);
                file::read::<T>(self.store.clone(), &path, f.bytes, sel, &self.footers)
                    .await
                    .map(|s| (f.seq, s))
                    .map_err(|e| read_error(&path, e))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn compact_all(&self) -> Result<CompactionSummary, ColdError> {
        let _one = self.compacting.lock().await;
        let snap = self.manifest.read().clone();
        let mut parts: BTreeMap<(&str, Tier, &str), Vec<&FileEntry>> = BTreeMap::new();
        for f in &snap.files {
            parts
                .entry((f.tenant.as_str(), f.tier, f.day.as_str()))
                .or_default()
                .push(f);
        }
        let mut summary = CompactionSummary::default();
        for ((tenant, tier, day), mut files) in parts {
            files.sort_by_key(|f| f.seq);
            let groups = self.compaction_groups(tier, &files);
            if !groups.is_empty() {
                summary.partitions += 1;
                add(&self.counters.compactions, 1);
            }
            for group in groups {
                let part = Partition::new(tenant, tier, day);
                let r = match tier {
                    Tier::Raw => self.compact_group::<Sample>(&part, group).await,
                    _ => self.compact_group::<Window>(&part, group).await,
                };
                let out = self.count_error(r)?;
                summary.files_in += group.len() as u64;
                summary.files_out += out.files;
                summary.rows_in += group.iter().map(|f| f.rows).sum::<u64>();
                summary.rows_out += out.rows;
                add(&self.counters.files_compacted, group.len() as u64);
            }
        }
        Ok(summary)
    }

    /// Which files of a partition (sorted by `seq`) are merged together. A window partition
    /// (a tenant-day of windows, a bounded size) is merged whole once it has two files, one of
    /// them small, so a correction replaces its row in place and an outside reader sees each
    /// window once. A raw partition can be far larger than a target file: only runs of small
    /// files adjacent in `seq` are merged, so no other file's data is newer than part of a run
    /// and older than the rest (which would change which duplicate wins).
    fn compaction_groups<'f>(
        &self,
        tier: Tier,
        files: &'f [&'f FileEntry],
    ) -> Vec<&'f [&'f FileEntry]> {
        let small = |f: &FileEntry| f.bytes < self.cut.target_bytes / 2;
        if tier != Tier::Raw {
            let merge = files.len() >= 2 && files.iter().any(|f| small(f));
            return if merge { vec![files] } else { vec![] };
        }
        files
            .chunk_by(|a, b| small(a) == small(b))
            .filter(|run| run.len() >= 2 && small(run[0]))
            .collect()
    }

    /// Merges a group of one partition's files, streaming: each input is read one series at a
    /// time and output files are written as they fill, so memory holds a file, not a partition.
    async fn compact_group<T: ColdRow>(
        &self,
        part: &Partition<'_>,
        files: &[&FileEntry],
    ) -> Result<WriteSummary, ColdError> {
        let mut entries = Vec::new();
        if let Err(e) = self.merge_into_files::<T>(part, files, &mut entries).await {
            self.forget(&entries).await;
            return Err(e);
        }
        let out = WriteSummary::of(&entries);
        let old: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        // As in a write, a failed commit leaves every file where it is.
        self.commit(entries, &old).await?;
        self.count_written(&out);
        self.delete(&old).await;
        Ok(out)
    }

    /// The k-way merge of `files` (each sorted by series) into new files, PUT as they fill and
    /// described in `entries`.
    async fn merge_into_files<T: ColdRow>(
        &self,
        part: &Partition<'_>,
        files: &[&FileEntry],
        entries: &mut Vec<FileEntry>,
    ) -> Result<(), ColdError> {
        let all = Selection {
            matchers: &[],
            start: i64::MIN,
            end: i64::MAX,
        };
        struct Input<T> {
            seq: u64,
            path: Path,
            reader: file::SeriesReader<T>,
            head: Option<StoredSeries<T>>,
        }
        let mut inputs = Vec::with_capacity(files.len());
        for f in files {
            let path = join(&self.root, &f.path);
            add(&self.counters.files_read, 1);
            let mut reader = file::SeriesReader::<T>::open(
                self.store.clone(),
                &path,
                f.bytes,
                &all,
                &self.footers,
            )
            .await
            .map_err(|e| read_error(&path, e))?;
            let head = reader.next(&all).await.map_err(|e| read_error(&path, e))?;
            inputs.push(Input {
                seq: f.seq,
                path,
                reader,
                head,
            });
        }
        // The output is as new as its newest input, so a write made meanwhile still wins.
        let rank = files.iter().map(|f| f.seq).max().unwrap_or(0);
        let mut writer = self.file_writer(part)?;
        let mut done = Vec::new();
        while let Some((metric, rest)) = inputs
            .iter()
            .filter_map(|i| i.head.as_ref())
            .map(|s| (&s.metric, &s.rest))
            .min()
            .map(|(m, r)| (m.clone(), r.clone()))
        {
            let mut parts = Vec::new();
            for i in &mut inputs {
                if i.head
                    .as_ref()
                    .is_some_and(|s| s.metric == metric && s.rest == rest)
                {
                    parts.push((i.seq, vec![i.head.take().expect("checked")]));
                    i.head = i
                        .reader
                        .next(&all)
                        .await
                        .map_err(|e| read_error(&i.path, e))?;
                }
            }
            for s in merge(parts) {
                writer
                    .push(&s, &mut done)
                    .map_err(|e| part.write_error(e))?;
            }
            self.put_done(part, rank, &mut done, entries).await?;
        }
        writer.finish(&mut done).map_err(|e| part.write_error(e))?;
        self.put_done(part, rank, &mut done, entries).await
    }
}

impl Drop for ColdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; inside an async context that panics, so let it wind down
        // in the background instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn read_error(path: &Path, e: ReadError) -> ColdError {
    ColdError::File {
        path: path.to_string(),
        reason: match e {
            ReadError::Parquet(e) => e.to_string(),
            ReadError::Schema(s) => s,
        },
    }
}

fn validate(o: &ColdOptions) -> Result<(), ColdError> {
    if o.target_file_bytes == 0 || o.row_group_rows == 0 {
        return Err(ColdError::Options(
            "target_file_bytes and row_group_rows must be positive".into(),
        ));
    }
    let mut seen = HashSet::new();
    for p in &o.promoted_labels {
        let valid = p
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid || p == METRIC_NAME || reserved_column(p) || !seen.insert(p) {
            return Err(ColdError::Options(format!(
                "promoted label {p:?} is not a valid, unique label name apart from the schema's \
                 columns and partition keys"
            )));
        }
    }
    Ok(())
}

async fn put_manifest(store: &dyn ObjectStore, root: &Path, m: &Manifest) -> Result<(), ColdError> {
    let path = join(root, MANIFEST);
    store
        .put(&path, PutPayload::from(m.encode()))
        .await
        .map(|_| ())
        .map_err(|source| ColdError::Store {
            op: "put",
            path: path.to_string(),
            source,
        })
}

/// The root's manifest, or a new one when the root has none and no data files.
async fn load_or_create(
    t: &target::Target,
    o: &ColdOptions,
    url: &str,
) -> Result<Manifest, ColdError> {
    let path = join(&t.root, MANIFEST);
    match t.store.get(&path).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|source| ColdError::Store {
                op: "get",
                path: path.to_string(),
                source,
            })?;
            Manifest::decode(&bytes).map_err(|reason| ColdError::Manifest {
                path: path.to_string(),
                reason,
            })
        }
        Err(object_store::Error::NotFound { .. }) => {
            if !data_files(t).await?.is_empty() {
                return Err(ColdError::ManifestMissing {
                    root: url.to_string(),
                });
            }
            let m = Manifest::new(o.promoted_labels.clone());
            put_manifest(&*t.store, &t.root, &m).await?;
            Ok(m)
        }
        Err(source) => Err(ColdError::Store {
            op: "get",
            path: path.to_string(),
            source,
        }),
    }
}

/// Every data file under the root (relative names).
async fn data_files(t: &target::Target) -> Result<Vec<String>, ColdError> {
    let listed: Vec<_> = t
        .store
        .list(Some(&t.root))
        .try_collect()
        .await
        .map_err(|source| ColdError::Store {
            op: "list",
            path: t.root.to_string(),
            source,
        })?;
    Ok(listed
        .into_iter()
        .filter_map(|o| relative(&t.root, &o.location))
        .filter(|r| is_data_file(r))
        .collect())
}

/// Deletes data files the manifest does not list (written before a crash, or left by a
/// compaction that did not get to delete its inputs) and, on a local store, half-written
/// uploads. Returns how many objects went.
async fn clean_leftovers(t: &target::Target, m: &Manifest) -> Result<u64, ColdError> {
    let known: HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    let mut removed = 0;
    for rel in data_files(t).await? {
        if known.contains(rel.as_str()) {
            continue;
        }
        let path = join(&t.root, &rel);
        match t.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
            Err(source) => {
                return Err(ColdError::Store {
                    op: "delete",
                    path: path.to_string(),
                    source,
                })
            }
        }
    }
    if let Some(dir) = &t.local_dir {
        removed += remove_staged_uploads(dir)?;
    }
    Ok(removed)
}

/// Removes object_store's staged uploads (`<name>#<digits>`, renamed into place only when
/// complete) of data files and the manifest under a local root.
fn remove_staged_uploads(dir: &std::path::Path) -> Result<u64, ColdError> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, n: &mut u64) -> Result<(), ColdError> {
        let io = |source| ColdError::Io {
            path: dir.to_path_buf(),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            if entry.file_type().map_err(io)?.is_dir() {
                walk(&path, base, n)?;
                continue;
            }
            let Some(rel) = path.strip_prefix(base).ok().and_then(|r| r.to_str()) else {
                continue;
            };
            let staged = rel.rsplit_once('#').is_some_and(|(name, suffix)| {
                !suffix.is_empty()
                    && suffix.bytes().all(|b| b.is_ascii_digit())
                    && (is_data_file(name) || name == MANIFEST)
            });
            if staged {
                std::fs::remove_file(&path).map_err(|source| ColdError::Io {
                    path: path.clone(),
                    source,
                })?;
                *n += 1;
            }
        }
        Ok(())
    }
    let mut n = 0;
    walk(dir, dir, &mut n)?;
    Ok(n)
}
