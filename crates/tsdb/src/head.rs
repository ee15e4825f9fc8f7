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
use strata_model::{sort_last_wins, Sample, SeriesId, SeriesKey, SeriesKeyRef, Tenant};

/// Samples in an open buffer before it is sealed.
pub const SEAL_AT: usize = 240;

/// A sealed head chunk.
struct Sealed {
    min_t: i64,
    max_t: i64,
    data: Box<[u8]>,
}

/// One series in the head.
#[derive(Default)]
pub struct MemSeries {
    open: OpenBuffer,
    sealed: Vec<Sealed>,
    /// Time range of samples held in the head (`min > max` when none).
    min_t: i64,
    max_t: i64,
    /// Newest timestamp already written to blocks.
    pub persisted_max_t: i64,
    /// Samples written to the head (overwrites included) since the last flush.
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
        self.samples > 0
    }

    /// Head time range, if any samples.
    pub fn range(&self) -> Option<(i64, i64)> {
        self.has_samples().then_some((self.min_t, self.max_t))
    }

    /// Appends one sample. `in_blocks` answers what blocks hold at a timestamp, for samples
    /// older than the newest persisted one.
    pub fn append(&mut self, s: Sample, in_blocks: impl FnOnce(i64) -> Option<f64>) -> Appended {
        let newest = self.max_t.max(self.persisted_max_t);
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
        let mut buf = Vec::new();
        self.open.decode(&mut buf);
        if let Some(x) = buf.iter().rev().find(|x| x.timestamp == t) {
            return Some(x.value);
        }
        for c in self
            .sealed
            .iter()
            .rev()
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
        let from = out.len();
        for c in self
            .sealed
            .iter()
            .filter(|c| c.max_t >= start && c.min_t <= end)
        {
            // Sealed chunks were verified when written; in memory they cannot be damaged.
            let _ = codec::decode(&c.data, out);
        }
        self.open.decode(out);
        let mut part = out.split_off(from);
        part.retain(|s| s.timestamp >= start && s.timestamp <= end);
        sort_last_wins(&mut part);
        out.extend(part);
    }

    /// Empties the head part after a flush to blocks.
    pub fn clear_persisted(&mut self) {
        self.persisted_max_t = self.persisted_max_t.max(self.max_t);
        self.open.clear();
        self.open_len = 0;
        self.open_sorted = true;
        self.sealed = Vec::new();
        self.min_t = i64::MAX;
        self.max_t = i64::MIN;
        self.samples = 0;
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.open.bytes() + self.sealed.iter().map(|c| c.data.len() + 24).sum::<usize>()
    }

    /// Samples held.
    pub fn samples(&self) -> usize {
        self.samples as usize
    }
}

/// One tenant's head: series by id and their index.
pub struct TenantHead {
    tenant: Tenant,
    /// Handles were handed out (see [`crate::Tsdb::series_handle`]): they are series numbers,
    /// valid for the life of the storage, so no series ever leaves this head.
    pub pinned: bool,
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
            pinned: false,
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
    /// order; the others leave the head.
    pub fn retain(&mut self, keep: &[bool]) {
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
        s.clear_persisted();
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
