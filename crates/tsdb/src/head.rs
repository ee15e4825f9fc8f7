//! The head: recent samples of one shard in memory, per tenant, with its own label index.
//!
//! Each series appends to an open buffer (encoded as samples come, see [`crate::open`]); every
//! [`SEAL_AT`] samples the buffer is sorted, deduplicated and sealed into a compact (varint,
//! uncompressed) chunk. Samples may arrive in
//! any order: chunks may then overlap in time, and reads resolve them by write order, so the
//! last write for a timestamp wins.
//!
//! A series lives in the head while it receives samples: one that received none since the last
//! flush and whose newest sample is older than the lookback leaves it at the next flush (its
//! samples are all in blocks by then), and is created again, under the same id, if it returns.
//! So the head, and the cardinality limits counting its series, follow the live series.

use crate::codec;
use crate::index::Index;
use crate::open::OpenBuffer;
use hashbrown::HashTable;
use std::sync::Arc;
use strata_model::{sort_last_wins, Sample, SeriesId, SeriesKey, SeriesKeyRef, Tenant};

/// Samples in an open buffer before it is sealed.
pub const SEAL_AT: usize = 240;

/// A sealed head chunk.
struct Sealed {
    min_t: i64,
    max_t: i64,
    data: Box<[u8]>,
}

/// A series' head samples taken by a flush (see [`MemSeries::freeze`]): still read and
/// checked against as head samples, written before any the series received since.
pub struct Frozen {
    chunks: Vec<Sealed>,
    min_t: i64,
    max_t: i64,
    samples: u32,
}

impl Frozen {
    /// Its samples in `[start, end]`, sorted, one per timestamp (the last written wins).
    pub fn read(&self, start: i64, end: i64, out: &mut Vec<Sample>) {
        read_chunks(&self.chunks, None, start, end, out);
    }

    /// Time range.
    pub fn range(&self) -> (i64, i64) {
        (self.min_t, self.max_t)
    }
}

/// Appends the samples of `chunks` then `open` (in write order) in `[start, end]` to `out`,
/// sorted, one per timestamp, the last written winning.
fn read_chunks(
    chunks: &[Sealed],
    open: Option<&OpenBuffer>,
    start: i64,
    end: i64,
    out: &mut Vec<Sample>,
) {
    let from = out.len();
    for c in chunks.iter().filter(|c| c.max_t >= start && c.min_t <= end) {
        // Sealed chunks were verified when written; in memory they cannot be damaged.
        let _ = codec::decode(&c.data, out);
    }
    if let Some(open) = open {
        open.decode(out);
    }
    let mut part = out.split_off(from);
    part.retain(|s| s.timestamp >= start && s.timestamp <= end);
    sort_last_wins(&mut part);
    out.extend(part);
}

/// One series in the head.
#[derive(Default)]
pub struct MemSeries {
    open: OpenBuffer,
    sealed: Vec<Sealed>,
    /// Samples a flush in progress is writing to blocks.
    frozen: Option<Arc<Frozen>>,
    /// Time range of the samples in `open` and `sealed` (`min > max` when none).
    min_t: i64,
    max_t: i64,
    /// Newest timestamp already written to blocks.
    pub persisted_max_t: i64,
    /// Samples in `open` and `sealed` (overwrites included).
    samples: u32,
    /// Samples in the open buffer.
    open_len: u32,
    /// What the observer of appends keeps for this series (see [`Tsdb::append_observed`]).
    ///
    /// [`Tsdb::append_observed`]: crate::Tsdb::append_observed
    pub observer: ObserverSlot,
    /// The open buffer is ascending with unique timestamps.
    open_sorted: bool,
}

/// A value an observer of appends keeps per series, typically its own index for the series,
/// so following each append needs no lookup of its own. [`ObserverSlot::EMPTY`] until set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserverSlot(pub u32);

impl ObserverSlot {
    /// Nothing kept yet.
    pub const EMPTY: ObserverSlot = ObserverSlot(u32::MAX);
}

impl Default for ObserverSlot {
    fn default() -> Self {
        ObserverSlot::EMPTY
    }
}

/// What became of one appended sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored.
    New,
    /// An exact repeat of a stored sample: dropped.
    Duplicate,
    /// Replaced a different value at the same timestamp.
    Overwrote,
}

impl MemSeries {
    fn new() -> MemSeries {
        MemSeries {
            open_sorted: true,
            min_t: i64::MAX,
            max_t: i64::MIN,
            persisted_max_t: i64::MIN,
            ..Default::default()
        }
    }

    /// True when the head holds samples of this series.
    pub fn has_samples(&self) -> bool {
        self.samples > 0 || self.frozen.is_some()
    }

    /// Head time range, if any samples.
    pub fn range(&self) -> Option<(i64, i64)> {
        let own = (self.samples > 0).then_some((self.min_t, self.max_t));
        match (own, &self.frozen) {
            (Some((lo, hi)), Some(f)) => Some((lo.min(f.min_t), hi.max(f.max_t))),
            (None, Some(f)) => Some((f.min_t, f.max_t)),
            (own, None) => own,
        }
    }

    /// Takes the head samples for a flush to write (None when there are none). They stay
    /// readable through the series until [`MemSeries::persisted`] (written) or
    /// [`MemSeries::thaw`] (not written); samples appended meanwhile are kept apart.
    pub fn freeze(&mut self) -> Option<Arc<Frozen>> {
        debug_assert!(self.frozen.is_none(), "one flush at a time");
        if self.samples == 0 {
            return None;
        }
        self.seal();
        let f = Arc::new(Frozen {
            chunks: std::mem::take(&mut self.sealed),
            min_t: self.min_t,
            max_t: self.max_t,
            samples: self.samples,
        });
        self.frozen = Some(Arc::clone(&f));
        self.min_t = i64::MAX;
        self.max_t = i64::MIN;
        self.samples = 0;
        Some(f)
    }

    /// The frozen samples are in blocks: the head lets them go.
    pub fn persisted(&mut self) {
        if let Some(f) = self.frozen.take() {
            self.persisted_max_t = self.persisted_max_t.max(f.max_t);
        }
    }

    /// The flush failed: the frozen samples are head samples again, written before the rest.
    pub fn thaw(&mut self) {
        let Some(f) = self.frozen.take() else { return };
        let mut chunks: Vec<Sealed> = f
            .chunks
            .iter()
            .map(|c| Sealed {
                min_t: c.min_t,
                max_t: c.max_t,
                data: c.data.clone(),
            })
            .collect();
        chunks.append(&mut self.sealed);
        self.sealed = chunks;
        self.min_t = self.min_t.min(f.min_t);
        self.max_t = self.max_t.max(f.max_t);
        self.samples += f.samples;
    }

    /// Appends one sample. `in_blocks` answers what blocks hold at a timestamp, for samples
    /// older than the newest persisted one.
    pub fn append(&mut self, s: Sample, in_blocks: impl FnOnce(i64) -> Option<f64>) -> Appended {
        let frozen_max = self.frozen.as_ref().map_or(i64::MIN, |f| f.max_t);
        let newest = self.max_t.max(self.persisted_max_t).max(frozen_max);
        if s.timestamp > newest {
            // The common case, decided without touching the open buffer's last sample (which
            // `max_t` bounds): with thousands of series that load is a cache miss per sample.
            self.push(s);
            return Appended::New;
        }
        let outcome = match self.find(s.timestamp).or_else(|| in_blocks(s.timestamp)) {
            Some(v) if v.to_bits() == s.value.to_bits() => return Appended::Duplicate,
            Some(_) => Appended::Overwrote,
            None => Appended::New,
        };
        // An overwrite is appended too: the buffer's later sample wins when it is read.
        if self.open.last_t().is_some_and(|l| l >= s.timestamp) {
            self.open_sorted = false;
        }
        self.push(s);
        outcome
    }

    /// Adds a sample to the open buffer (the caller settled its order), sealing a full buffer.
    fn push(&mut self, s: Sample) {
        self.open.push(s);
        self.samples += 1;
        self.open_len += 1;
        self.min_t = self.min_t.min(s.timestamp);
        self.max_t = self.max_t.max(s.timestamp);
        if self.open_len as usize >= SEAL_AT {
            self.seal();
        }
    }

    /// Appends a run of samples, sorted by timestamp with one per timestamp, as one chunk:
    /// no per-sample checks, and later writes still win over earlier ones at read and flush.
    /// For writers of whole runs, which would otherwise touch the open buffer per sample.
    pub fn append_run(&mut self, run: &[Sample]) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return;
        };
        debug_assert!(run.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
        // Samples already in the open buffer were written before the run.
        self.seal();
        self.sealed.push(Sealed {
            min_t: first.timestamp,
            max_t: last.timestamp,
            data: codec::encode(run, false).into_boxed_slice(),
        });
        self.samples += run.len() as u32;
        self.min_t = self.min_t.min(first.timestamp);
        self.max_t = self.max_t.max(last.timestamp);
    }

    /// The newest head value at `t`, if any.
    fn find(&self, t: i64) -> Option<f64> {
        if let Some(v) = self.open.find(t) {
            return Some(v);
        }
        let mut buf = Vec::new();
        // Newest first: the frozen chunks were written before the sealed ones.
        let frozen = self.frozen.as_ref().map_or(&[][..], |f| &f.chunks[..]);
        for c in self
            .sealed
            .iter()
            .rev()
            .chain(frozen.iter().rev())
            .filter(|c| c.min_t <= t && t <= c.max_t)
        {
            buf.clear();
            if codec::decode(&c.data, &mut buf).is_ok() {
                if let Ok(i) = buf.binary_search_by_key(&t, |x| x.timestamp) {
                    return Some(buf[i].value);
                }
            }
        }
        None
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let mut open = Vec::with_capacity(self.open_len as usize);
        self.open.decode(&mut open);
        if !self.open_sorted {
            sort_last_wins(&mut open);
        }
        self.sealed.push(Sealed {
            min_t: open[0].timestamp,
            max_t: open[open.len() - 1].timestamp,
            data: codec::encode(&open, false).into_boxed_slice(),
        });
        self.open.clear();
        self.open_len = 0;
        self.open_sorted = true;
    }

    /// All head samples in `[start, end]`, sorted, one per timestamp (the last written wins).
    pub fn read(&self, start: i64, end: i64, out: &mut Vec<Sample>) {
        match &self.frozen {
            None => read_chunks(&self.sealed, Some(&self.open), start, end, out),
            Some(f) => {
                // Rare (a flush is running): frozen chunks, written first, lose ties.
                let from = out.len();
                read_chunks(&f.chunks, None, start, end, out);
                read_chunks(&self.sealed, Some(&self.open), start, end, out);
                let mut part = out.split_off(from);
                sort_last_wins(&mut part);
                out.extend(part);
            }
        }
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        let frozen = self.frozen.as_ref().map_or(&[][..], |f| &f.chunks[..]);
        self.open.bytes()
            + self
                .sealed
                .iter()
                .chain(frozen)
                .map(|c| c.data.len() + 24)
                .sum::<usize>()
    }

    /// Samples held.
    pub fn samples(&self) -> usize {
        self.samples as usize + self.frozen.as_ref().map_or(0, |f| f.samples as usize)
    }
}

/// One tenant's head: series by id and their index.
pub struct TenantHead {
    tenant: Tenant,
    /// Handles were handed out (see [`crate::Tsdb::series_handle`]): they are series numbers,
    /// so a flush lets none of these series go; their holder does, by
    /// [`crate::Tsdb::release_handles`], and renumbers what it still holds.
    pub handles: bool,
    /// Series numbers hashed by their id (4 bytes a series; ids that collide are told apart
    /// by their keys). Ids are computed again from the keys when the table grows.
    ids: HashTable<u32>,
    /// Series in index order.
    pub series: Vec<MemSeries>,
    /// Label index over the series.
    pub index: Index,
}

impl TenantHead {
    /// An empty head of `tenant`.
    pub fn new(tenant: &Tenant) -> TenantHead {
        TenantHead {
            tenant: tenant.clone(),
            handles: false,
            ids: HashTable::new(),
            series: Vec::new(),
            index: Index::default(),
        }
    }

    /// The series with `key`, if known.
    pub fn get(&self, id: SeriesId, key: SeriesKeyRef<'_>) -> Option<u32> {
        self.ids.find(id.0, |&r| self.index.key(r) == key).copied()
    }

    /// Adds a series (the caller checked it is new and allowed); `id` is
    /// `SeriesId::of(tenant, key)`.
    pub fn create(&mut self, id: SeriesId, key: SeriesKey) -> u32 {
        let r = self.index.add(key);
        self.series.push(MemSeries::new());
        let TenantHead {
            tenant, ids, index, ..
        } = self;
        ids.insert_unique(id.0, r, |&r| SeriesId::of(tenant, index.key(r)).0);
        r
    }

    /// Keeps the series whose `keep` entry is true (one per series), renumbering them in
    /// order; the others leave the head. Returns each old number's new one (`u32::MAX`: gone).
    pub fn retain(&mut self, keep: &[bool]) -> Vec<u32> {
        debug_assert_eq!(keep.len(), self.series.len());
        let remap = self.index.retain(keep);
        let mut i = 0;
        self.series.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        shrink(&mut self.series);
        self.ids.retain(|r| {
            *r = remap[*r as usize];
            *r != u32::MAX
        });
        if self.ids.capacity() > 2 * self.ids.len() + 64 {
            let TenantHead {
                tenant, ids, index, ..
            } = self;
            ids.shrink_to_fit(|&r| SeriesId::of(tenant, index.key(r)).0);
        }
        remap
    }
}

/// Gives back a vector's spare room once it holds less than half of it, so a head that
/// shrank does not keep the memory of its peak.
pub fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > 2 * v.len() + 16 {
        v.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    #[test]
    fn colliding_ids_make_two_series() {
        let mut h = TenantHead::new(&strata_model::Tenant::default());
        let a = Labels::from_pairs([("__name__", "a")]).unwrap().key();
        let b = Labels::from_pairs([("__name__", "b")]).unwrap().key();
        // A forced id stands for a collision of real ids (which the table recomputes when it
        // grows; two series do not make it grow).
        let forced = SeriesId(42);
        let ra = h.create(forced, a.clone());
        assert_eq!(
            h.get(forced, b.as_ref()),
            None,
            "same id, other key: not the same series"
        );
        let rb = h.create(forced, b.clone());
        assert_ne!(ra, rb);
        assert_eq!(h.get(forced, a.as_ref()), Some(ra));
        assert_eq!(h.get(forced, b.as_ref()), Some(rb));
    }

    #[test]
    fn out_of_order_duplicates_and_overwrites() {
        let mut s = MemSeries::new();
        let none = |_| None;
        for t in (0..1000).rev() {
            assert_eq!(s.append(Sample::new(t, t as f64), none), Appended::New);
        }
        assert_eq!(s.append(Sample::new(500, 500.0), none), Appended::Duplicate);
        assert_eq!(s.append(Sample::new(10, -1.0), none), Appended::Overwrote);
        assert_eq!(s.append(Sample::new(999, -2.0), none), Appended::Overwrote);
        let mut out = Vec::new();
        s.read(i64::MIN, i64::MAX, &mut out);
        assert_eq!(out.len(), 1000);
        assert!(out.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
        assert_eq!(out[10].value, -1.0);
        assert_eq!(out[999].value, -2.0);
        assert_eq!(out[500].value, 500.0);
        let mut part = Vec::new();
        s.read(100, 199, &mut part);
        assert_eq!(part.len(), 100);
        let frozen = s.freeze().unwrap();
        assert_eq!(frozen.range(), (0, 999));
        // Written while frozen: read together, the later write winning.
        assert_eq!(s.append(Sample::new(10, -3.0), none), Appended::Overwrote);
        let mut both = Vec::new();
        s.read(i64::MIN, i64::MAX, &mut both);
        assert_eq!(
            (both.len(), both[10].value, both[11].value),
            (1000, -3.0, 11.0)
        );
        s.thaw();
        let mut thawed = Vec::new();
        s.read(i64::MIN, i64::MAX, &mut thawed);
        assert_eq!(thawed, both, "thawed, the order of writes holds");
        assert_eq!(s.samples(), 1003, "writes, overwrites included");
        s.freeze().unwrap();
        s.persisted();
        assert!(!s.has_samples());
        // Older than what blocks hold: the blocks are asked.
        assert_eq!(
            s.append(Sample::new(5, 5.0), |t| (t == 5).then_some(5.0)),
            Appended::Duplicate
        );
        assert_eq!(
            s.append(Sample::new(6, 0.0), |t| (t == 6).then_some(6.0)),
            Appended::Overwrote
        );
        assert_eq!(
            s.append(Sample::new(2000, 1.0), |_| panic!("newer than blocks")),
            Appended::New
        );
    }
}
