//! The merge step of group rollups: once every shard has closed a window, computes each
//! configured group from the raw samples of all shards and writes the outputs through the
//! engine like any write (durable in the log); recomputes a group window when one of its member
//! windows is corrected. Progress (the first window not yet computed) is checkpointed, so a
//! restart neither skips nor repeats windows (a repeat would only rewrite the same values).
//! A group window keyed `start` holds its members' samples in `(start, start + window]`, as
//! their windows do (see [`strata_stream::window::window_of`]), and is written at its end: a
//! sample exactly on an edge belongs to the earlier window, as `x[window]` at the end sees it.
//!
//! Groups get 1-hour windows too (`<metric>:1h_by_<labels>_<output>`, when the windows divide
//! an hour and are shorter): an hour is computed once every shard has closed its last window,
//! from the raw samples of the hour (so counts of series and distinct values count each once
//! over the hour), and again when a member window in it is corrected; its progress has a
//! checkpoint of its own (`<checkpoint>-1h`).

use crate::engine::Engine;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_model::{
    Limits, Matcher, Sample, SelectHints, SeriesKey, SeriesSamples, Storage, Tenant, WriteBatch,
    METRIC_NAME,
};
use strata_stream::group::GroupSpec;
use strata_stream::hour::{hour_start, HOUR_MS};

const MAGIC: &[u8; 8] = b"STRGROUP";

/// Group rollups' place among the consumers of corrected windows (0: the first, whose queue
/// older checkpoints hold).
pub const CORRECTIONS: strata_stream::stage::Subscriber = strata_stream::stage::Subscriber::new(0);

/// The merge step's settings.
pub struct Merger {
    /// Reads and writes.
    pub engine: Arc<Engine>,
    /// Configured groups.
    pub groups: Vec<GroupSpec>,
    /// Window length.
    pub window_ms: i64,
    /// Where progress is kept.
    pub checkpoint: PathBuf,
}

/// Reads a progress checkpoint (the first window not yet computed) written by
/// [`save_progress`] with the same magic; `None` when there is none.
pub(crate) fn load_progress(path: &Path, magic: &[u8; 8]) -> anyhow::Result<Option<i64>> {
    match std::fs::read(path) {
        Ok(b) => {
            anyhow::ensure!(
                b.len() == 20
                    && &b[..8] == magic
                    && crc32fast::hash(&b[..16]).to_le_bytes() == b[16..20],
                "progress checkpoint {} is corrupt",
                path.display()
            );
            Ok(Some(i64::from_le_bytes(b[8..16].try_into()?)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Saves progress atomically: magic, the window, a CRC.
pub(crate) fn save_progress(
    path: &Path,
    magic: &[u8; 8],
    next: i64,
) -> Result<(), strata_stream::StreamError> {
    let mut b = magic.to_vec();
    b.extend_from_slice(&next.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    strata_stream::write_atomically(path, &b)
}

impl Merger {
    /// Where the 1-hour groups' progress is kept.
    fn hour_checkpoint(&self) -> PathBuf {
        let mut p = self.checkpoint.clone().into_os_string();
        p.push("-1h");
        p.into()
    }

    /// True when groups get 1-hour windows besides theirs.
    fn with_hours(&self) -> bool {
        self.window_ms < HOUR_MS && HOUR_MS % self.window_ms == 0
    }

    /// Runs until `stop` is set, checking twice a second.
    pub fn run(self, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) {
        let loaded = load_progress(&self.checkpoint, MAGIC)
            .and_then(|n| Ok((n, load_progress(&self.hour_checkpoint(), MAGIC)?)));
        let (mut next, mut next_hour) = match loaded {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("group rollups stopped: {e}");
                return;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.step(&mut next, &mut next_hour, &rt) {
                tracing::error!("group rollups: {e}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Computes every window of `window_ms` from `next` (or from `first`) whose member windows
    /// are all final (`closed` is a window key: every window keyed before it is final in every
    /// shard, so a group window keyed `start` is complete when `start + window_ms <= closed`),
    /// and saves the progress at `path`; returns where it stands.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &self,
        next: &mut Option<i64>,
        first: i64,
        closed: i64,
        window_ms: i64,
        path: &Path,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<i64> {
        let mut start = next.unwrap_or(first);
        let before = start;
        let tenants = if start + window_ms <= closed {
            self.engine.tenants()
        } else {
            Vec::new()
        };
        while start + window_ms <= closed {
            for tenant in &tenants {
                self.compute_tenant(tenant, start, window_ms, rt)?;
            }
            start += window_ms;
        }
        if start != before || next.is_none() {
            save_progress(path, MAGIC, start)?;
            *next = Some(start);
        }
        Ok(start)
    }

    /// Computes every window all shards have closed (and every hour), then the corrected ones.
    fn step(
        &self,
        next: &mut Option<i64>,
        next_hour: &mut Option<i64>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let Some((closed, first)) = self.engine.group_progress() else {
            return Ok(());
        };
        let start = self.advance(next, first, closed, self.window_ms, &self.checkpoint, rt)?;
        let hours_from = if self.with_hours() {
            let path = self.hour_checkpoint();
            self.advance(next_hour, hour_start(first), closed, HOUR_MS, &path, rt)?
        } else {
            i64::MIN
        };
        // Windows computed already whose members were corrected since. Each correction stays
        // queued (and checkpointed with its shard) until its group window is written again.
        let pending = self.engine.pending_corrected(CORRECTIONS);
        let redo: BTreeSet<(Tenant, i64)> = pending
            .iter()
            .filter(|c| c.start < start)
            .filter(|c| {
                let name = c.key.as_ref().get(METRIC_NAME.as_bytes());
                self.groups
                    .iter()
                    .any(|g| name == Some(g.metric.as_bytes()))
            })
            .map(|c| (c.tenant.clone(), c.start))
            .collect();
        for (tenant, ws) in &redo {
            self.compute_tenant(tenant, *ws, self.window_ms, rt)?;
        }
        let redo_hours: BTreeSet<(&Tenant, i64)> = redo
            .iter()
            .map(|(t, ws)| (t, hour_start(*ws)))
            .filter(|&(_, h)| h < hours_from)
            .collect();
        for (tenant, h) in redo_hours {
            self.compute_tenant(tenant, h, HOUR_MS, rt)?;
        }
        // Windows not computed yet will be, with the correction in them.
        self.engine.done_corrected(CORRECTIONS, &pending);
        Ok(())
    }

    /// Computes and writes every group of one tenant for the window of `window_ms` keyed
    /// `start`: from the raw samples in `(start, start + window_ms]`, written at its end.
    fn compute_tenant(
        &self,
        tenant: &Tenant,
        start: i64,
        window_ms: i64,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let hints = SelectHints {
            start: start + 1,
            end: start + window_ms,
            max_samples: None,
            fields: strata_model::Fields::All,
        };
        let limits = Limits {
            max_labels_per_series: usize::MAX,
            ..Limits::default()
        };
        let mut batch = WriteBatch::new(tenant.clone());
        // Each metric's members are read once, however many groups roll it up.
        let mut read: BTreeMap<&str, (Vec<SeriesSamples>, Vec<SeriesKey>)> = BTreeMap::new();
        for g in &self.groups {
            if !read.contains_key(g.metric.as_str()) {
                let members = self.engine.select(
                    tenant,
                    &[Matcher::equal(METRIC_NAME, &g.metric)],
                    &hints,
                )?;
                let keys = members.iter().map(|m| m.labels.key()).collect();
                read.insert(&g.metric, (members, keys));
            }
            let (members, keys) = &read[g.metric.as_str()];
            let outputs = g.compute(
                keys.iter()
                    .zip(members)
                    .map(|(k, m)| (k.as_ref(), m.samples.as_slice())),
                window_ms,
            );
            for (labels, v) in outputs {
                let mut pairs: Vec<(&[u8], &[u8])> = labels
                    .iter()
                    .map(|l| (l.name.as_bytes(), l.value.as_bytes()))
                    .collect();
                batch
                    .push_series(
                        &mut pairs,
                        &[Sample::new(start + window_ms, v)],
                        None,
                        &limits,
                    )
                    .map_err(|e| anyhow::anyhow!("group output {labels:?}: {e}"))?;
            }
        }
        if !batch.is_empty() {
            rt.block_on(self.engine.write(batch))?;
        }
        Ok(())
    }
}
