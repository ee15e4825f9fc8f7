//! The warm tier of one shard: the figures of final windows, kept in a storage engine of their
//! own so they get its compression, blocks, index and retention.
//!
//! Each figure of a series' windows is a series of its own: the raw series' labels plus
//! `__rollup__="<figure>"` (`count`, `sum`, `min`, ..., `revision` (absent while 0), `q<quantile>` for
//! sketches), with one sample per window at the window's start. A window is written in one
//! append, so its figures are never seen half-written; a correction writes the window again at
//! the same timestamps and, the storage rule being "last write wins", replaces it.
//!
//! The store is derived data: it is rebuilt from the ingest log on replay, so it needs no log of
//! its own (see the shard's checkpoint order).

use crate::rollup::Figures;
use ahash::AHashMap;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::Path;
use strata_model::{
    Labels, Matcher, Sample, SelectHints, SeriesId, SeriesKey, SeriesKeyRef, Storage, StorageError,
    Tenant,
};
use strata_tsdb::{SeriesHandle, SeriesLimiter, Tsdb, TsdbError, TsdbOptions};

/// The label naming which figure a warm series holds.
pub const FIGURE_LABEL: &str = "__rollup__";

const COUNT: &str = "count";
const SUM: &str = "sum";
const SUM_SQUARES: &str = "sum_squares";
const MIN: &str = "min";
const MAX: &str = "max";
const FIRST: &str = "first";
const FIRST_TS: &str = "first_ts";
const LAST: &str = "last";
const LAST_TS: &str = "last_ts";
const INCREASE: &str = "increase";
const REVISION: &str = "revision";

/// A final window as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    /// Window start, ms.
    pub start: i64,
    /// Its figures.
    pub figures: Figures,
    /// 0 when first final; each correction adds one.
    pub revision: u32,
}

/// One window to store.
#[derive(Debug, Clone)]
pub struct WindowWrite<'a> {
    /// The series' tenant.
    pub tenant: &'a Tenant,
    /// The raw series.
    pub key: SeriesKeyRef<'a>,
    /// Window start, ms.
    pub start: i64,
    /// What to store.
    pub figures: &'a Figures,
    /// Its revision.
    pub revision: u32,
}

/// Final windows of one shard.
pub struct RollupStore {
    tsdb: Tsdb,
    /// Handles of each raw series' figure series, so writing a window costs no key lookups.
    handles: Mutex<AHashMap<(Tenant, u64), Vec<FigureHandles>>>,
}

/// The figure series of one raw series.
struct FigureHandles {
    key: SeriesKey,
    /// In the order of [`BASE_FIGURES`].
    base: Vec<SeriesHandle>,
    quantiles: Vec<(f64, SeriesHandle)>,
}

/// Every window's figures, in the order [`RollupStore::write`] fills them.
const BASE_FIGURES: [&str; 11] = [
    COUNT,
    SUM,
    SUM_SQUARES,
    MIN,
    MAX,
    FIRST,
    FIRST_TS,
    LAST,
    LAST_TS,
    INCREASE,
    REVISION,
];

/// The key of one figure's series: the raw key with `__rollup__="figure"` in name order.
fn figure_key(key: SeriesKeyRef<'_>, figure: &str) -> SeriesKey {
    let label = FIGURE_LABEL.as_bytes();
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::with_capacity(16);
    let mut placed = false;
    for (n, v) in key.pairs() {
        if !placed && n > label {
            pairs.push((label, figure.as_bytes()));
            placed = true;
        }
        pairs.push((n, v));
    }
    if !placed {
        pairs.push((label, figure.as_bytes()));
    }
    SeriesKey::from_sorted_pairs(pairs)
}

/// The figure name of a quantile.
fn quantile_figure(q: f64) -> String {
    format!("q{q}")
}

impl RollupStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, retention_ms: i64, block_duration_ms: i64) -> Result<Self, TsdbError> {
        let opts = TsdbOptions {
            block_duration_ms,
            retention_ms,
            // Raw series were admitted by the raw tier's limiter already.
            max_series_per_metric: usize::MAX,
        };
        let tsdb = Tsdb::open(dir, opts, SeriesLimiter::new(usize::MAX))?;
        Ok(RollupStore {
            tsdb,
            handles: Mutex::new(AHashMap::new()),
        })
    }

    /// The underlying storage (flush, maintenance, sizes).
    pub fn tsdb(&self) -> &Tsdb {
        &self.tsdb
    }

    /// Stores windows (one append, so readers see all or none of a window's figures).
    pub fn write(&self, windows: &[WindowWrite<'_>], log_offset: u64) {
        if windows.is_empty() {
            return;
        }
        let mut cache = self.handles.lock();
        let mut by_tenant: BTreeMap<&Tenant, Vec<(SeriesHandle, Sample)>> = BTreeMap::new();
        for w in windows {
            let id = SeriesId::of(w.tenant, w.key);
            let slot = cache.entry((w.tenant.clone(), id.0)).or_default();
            let i = match slot.iter().position(|h| h.key.as_ref() == w.key) {
                Some(i) => i,
                None => {
                    let base = BASE_FIGURES
                        .iter()
                        .map(|f| {
                            self.tsdb
                                .series_handle(w.tenant, figure_key(w.key, f).as_ref())
                        })
                        .collect();
                    slot.push(FigureHandles {
                        key: w.key.to_owned(),
                        base,
                        quantiles: Vec::new(),
                    });
                    slot.len() - 1
                }
            };
            let h = &mut slot[i];
            let f = w.figures;
            let values = [
                f.count as f64,
                f.sum,
                f.sum_squares,
                f.min,
                f.max,
                f.first.value,
                f.first.timestamp as f64,
                f.last.value,
                f.last.timestamp as f64,
                f.increase,
                w.revision as f64,
            ];
            let out = by_tenant.entry(w.tenant).or_default();
            // Most windows are never corrected: revision 0 is implied by its absence.
            let n = if w.revision == 0 {
                values.len() - 1
            } else {
                values.len()
            };
            out.extend(
                h.base
                    .iter()
                    .zip(values)
                    .take(n)
                    .map(|(&handle, v)| (handle, Sample::new(w.start, v))),
            );
            for &(q, v) in &f.quantiles {
                let handle = match h.quantiles.iter().find(|(hq, _)| *hq == q) {
                    Some(&(_, handle)) => handle,
                    None => {
                        let k = figure_key(w.key, &quantile_figure(q));
                        let handle = self.tsdb.series_handle(w.tenant, k.as_ref());
                        h.quantiles.push((q, handle));
                        handle
                    }
                };
                out.push((handle, Sample::new(w.start, v)));
            }
        }
        drop(cache);
        for (tenant, samples) in by_tenant {
            self.tsdb.append_handles(tenant, &samples, log_offset);
        }
    }

    /// The stored window of one series starting at `start`, if any.
    pub fn get(
        &self,
        tenant: &Tenant,
        key: SeriesKeyRef<'_>,
        start: i64,
        quantiles: &[f64],
    ) -> Result<Option<StoredWindow>, StorageError> {
        let read = |name: &str| -> Result<Option<f64>, StorageError> {
            let k = figure_key(key, name);
            Ok(self
                .tsdb
                .read_series(tenant, k.as_ref(), start, start)?
                .first()
                .map(|s| s.value))
        };
        let Some(count) = read(COUNT)? else {
            return Ok(None);
        };
        let mut w = Assembly::default();
        w.set(COUNT, count);
        for &name in &BASE_FIGURES[1..] {
            if let Some(v) = read(name)? {
                w.set(name, v);
            }
        }
        for &q in quantiles {
            if let Some(v) = read(&quantile_figure(q))? {
                w.quantiles.push((q, v));
            }
        }
        Ok(w.finish(start))
    }

    /// The stored windows of the series matching `matchers` that start in `[start, end]`, by
    /// series labels, windows in time order.
    pub fn select(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<StoredWindow>)>, StorageError> {
        let hints = SelectHints {
            start,
            end,
            max_samples: None,
        };
        let mut series: BTreeMap<Labels, BTreeMap<i64, Assembly>> = BTreeMap::new();
        for s in self.tsdb.select(tenant, matchers, &hints)? {
            let Some(figure) = s.labels.get(FIGURE_LABEL).map(str::to_owned) else {
                continue;
            };
            let labels = Labels::from_sorted(
                s.labels
                    .into_vec()
                    .into_iter()
                    .filter(|l| l.name != FIGURE_LABEL)
                    .collect(),
            );
            let windows = series.entry(labels).or_default();
            for x in s.samples {
                windows
                    .entry(x.timestamp)
                    .or_default()
                    .set(&figure, x.value);
            }
        }
        Ok(series
            .into_iter()
            .map(|(labels, ws)| {
                let ws = ws
                    .into_iter()
                    .filter_map(|(start, a)| a.finish(start))
                    .collect();
                (labels, ws)
            })
            .filter(|(_, ws): &(Labels, Vec<StoredWindow>)| !ws.is_empty())
            .collect())
    }
}

/// Figures of one window gathered from their series.
#[derive(Default)]
struct Assembly {
    count: Option<f64>,
    sum: f64,
    sum_squares: f64,
    min: f64,
    max: f64,
    first: f64,
    first_ts: f64,
    last: f64,
    last_ts: f64,
    increase: f64,
    revision: Option<f64>,
    quantiles: Vec<(f64, f64)>,
}

impl Assembly {
    fn set(&mut self, figure: &str, v: f64) {
        match figure {
            COUNT => self.count = Some(v),
            SUM => self.sum = v,
            SUM_SQUARES => self.sum_squares = v,
            MIN => self.min = v,
            MAX => self.max = v,
            FIRST => self.first = v,
            FIRST_TS => self.first_ts = v,
            LAST => self.last = v,
            LAST_TS => self.last_ts = v,
            INCREASE => self.increase = v,
            REVISION => self.revision = Some(v),
            q => {
                if let Some(q) = q.strip_prefix('q').and_then(|q| q.parse::<f64>().ok()) {
                    self.quantiles.push((q, v));
                }
            }
        }
    }

    /// The window, when its count was found (a missing revision is 0).
    fn finish(mut self, start: i64) -> Option<StoredWindow> {
        self.quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(StoredWindow {
            start,
            revision: self.revision.unwrap_or(0.0) as u32,
            figures: Figures {
                count: self.count? as u64,
                sum: self.sum,
                sum_squares: self.sum_squares,
                min: self.min,
                max: self.max,
                first: Sample::new(self.first_ts as i64, self.first),
                last: Sample::new(self.last_ts as i64, self.last),
                increase: self.increase,
                quantiles: self.quantiles,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_key_keeps_names_sorted() {
        let k = Labels::from_pairs([("__name__", "t"), ("A", "x"), ("site", "s")])
            .unwrap()
            .key();
        let f = figure_key(k.as_ref(), "sum");
        let names: Vec<&[u8]> = f.as_ref().pairs().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(f.as_ref().get(b"__rollup__"), Some(&b"sum"[..]));
    }

    #[test]
    fn write_get_select_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = RollupStore::open(dir.path(), i64::MAX / 4, 7_200_000).unwrap();
        let t = Tenant::default_tenant();
        let key = Labels::from_pairs([("__name__", "temp"), ("device", "d1")])
            .unwrap()
            .key();
        let now = strata_model::time::now_ms() / 60_000 * 60_000;
        let fig = Figures {
            count: 3,
            sum: 6.5,
            sum_squares: 15.25,
            min: 1.5,
            max: 3.0,
            first: Sample::new(now + 1, 2.0),
            last: Sample::new(now + 50, 3.0),
            increase: 1.0,
            quantiles: vec![(0.5, 2.0), (0.99, 3.0)],
        };
        fn w<'a>(
            t: &'a Tenant,
            key: &'a SeriesKey,
            start: i64,
            figures: &'a Figures,
            revision: u32,
        ) -> Vec<WindowWrite<'a>> {
            vec![WindowWrite {
                tenant: t,
                key: key.as_ref(),
                start,
                figures,
                revision,
            }]
        }
        store.write(&w(&t, &key, now, &fig, 0), 1);
        let got = store
            .get(&t, key.as_ref(), now, &[0.5, 0.99])
            .unwrap()
            .unwrap();
        assert_eq!(got.figures, fig);
        assert_eq!(got.revision, 0);
        let mut fixed = fig.clone();
        fixed.count = 4;
        fixed.max = 9.0;
        store.write(&w(&t, &key, now, &fixed, 1), 2);
        let sel = store
            .select(&t, &[Matcher::equal("device", "d1")], now - 1, now + 1)
            .unwrap();
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].0, key.labels());
        assert_eq!(sel[0].1.len(), 1);
        assert_eq!(sel[0].1[0].figures, fixed);
        assert_eq!(sel[0].1[0].revision, 1);
        assert!(store
            .get(&t, key.as_ref(), now + 60_000, &[])
            .unwrap()
            .is_none());
        let other = Tenant::new("other").unwrap();
        assert!(store.get(&other, key.as_ref(), now, &[]).unwrap().is_none());
    }
}
