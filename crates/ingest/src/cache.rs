//! A per-thread memory of series already decoded, keyed by their raw bytes on the wire.
//!
//! Clients send the same label bytes for a series in every request. Remembering the canonical
//! key, id and entity of those bytes skips parsing, sorting, validating and hashing the labels
//! again: a hit costs one hash of the raw bytes and one comparison. Each protocol keeps its own
//! cache, so raw bytes of different formats never meet.

use ahash::AHashMap;
use strata_model::{BatchSeries, Limits, Sample, SeriesId, SeriesKey, SeriesKeyRef, WriteBatch};

/// Most bytes remembered per thread and protocol (raw bytes, key and bookkeeping); past it the
/// cache starts over. Every worker thread keeps one per protocol, so this times the workers
/// is resident for as long as the process runs: 16 MiB holds about 50,000 series of typical
/// size, while a client sending more distinct series than that between two of its requests
/// for the same series (the only pattern a larger cache would serve) is rare.
const CACHE_MAX_BYTES: usize = 16 << 20;

/// Memory of one entry besides its raw bytes and key: the map slot and two allocations.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<(u64, Cached)>() + 40;

/// Series by the hash of their raw bytes (seeded by the tenant).
#[derive(Default)]
pub struct SeriesCache {
    /// The limits the cached series were validated against; other limits empty the cache.
    limits: Option<Limits>,
    map: AHashMap<u64, Cached>,
    /// Memory the entries hold, counted as [`ENTRY_OVERHEAD`] plus their bytes.
    bytes: usize,
}

struct Cached {
    raw: Box<[u8]>,
    key: SeriesKey,
    id: SeriesId,
    entity: u64,
}

impl SeriesCache {
    /// The hash under which `raw` is cached for `out`'s tenant.
    pub fn hash(raw: &[u8], out: &WriteBatch) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(raw, out.hash_seed())
    }

    /// On a hit, appends the known series with `samples` (of event `event_id`, if any) to
    /// `out` and returns true.
    pub fn push_cached(
        &mut self,
        limits: &Limits,
        hash: u64,
        raw: &[u8],
        out: &mut WriteBatch,
        samples: &[Sample],
        event_id: Option<&[u8]>,
    ) -> bool {
        match self.get(limits, hash, raw) {
            Some((key, id, entity)) => {
                out.push_identified(key, id, entity, samples, event_id);
                true
            }
            None => false,
        }
    }

    /// The series `raw` (hashed to `hash`) decoded to, if remembered: its key, id and entity.
    pub fn get(
        &mut self,
        limits: &Limits,
        hash: u64,
        raw: &[u8],
    ) -> Option<(SeriesKeyRef<'_>, SeriesId, u64)> {
        if self.limits.as_ref() != Some(limits) {
            self.clear();
            self.limits = Some(limits.clone());
        }
        match self.map.get(&hash) {
            Some(c) if c.raw.as_ref() == raw => Some((c.key.as_ref(), c.id, c.entity)),
            _ => None,
        }
    }

    /// Remembers a series that `raw` decoded to (and that passed validation).
    pub fn insert(&mut self, hash: u64, raw: &[u8], s: &BatchSeries<'_>) {
        let cost = ENTRY_OVERHEAD + raw.len() + s.key.as_bytes().len();
        if self.bytes + cost > CACHE_MAX_BYTES {
            self.clear();
        }
        self.bytes += cost;
        let replaced = self.map.insert(
            hash,
            Cached {
                raw: raw.into(),
                key: s.key.to_owned(),
                id: s.id,
                entity: s.entity,
            },
        );
        if let Some(c) = replaced {
            self.bytes -= ENTRY_OVERHEAD + c.raw.len() + c.key.as_bytes().len();
        }
    }

    /// Forgets every series (for callers whose mapping from raw bytes to series changed).
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::{SeriesCache, CACHE_MAX_BYTES};
    use strata_model::{Limits, Sample, SeriesKey, Tenant, WriteBatch};

    /// However many distinct series pass through it, the cache holds at most its byte bound,
    /// and a series remembered since it last started over is still a hit.
    #[test]
    fn memory_stays_within_its_bound_and_recent_series_hit() {
        let limits = Limits::default();
        let mut cache = SeriesCache::default();
        let mut batch = WriteBatch::new(Tenant::default_tenant());
        let samples = [Sample::new(0, 1.0)];
        let mut emptied = 0;
        for i in 0..200_000u32 {
            let raw = format!("raw labels of series {i:08} with some padding to look real");
            let hash = SeriesCache::hash(raw.as_bytes(), &batch);
            assert!(!cache.push_cached(&limits, hash, raw.as_bytes(), &mut batch, &samples, None));
            let name = format!("series_{i:08}_with_a_name_of_typical_length");
            let key = SeriesKey::from_sorted_pairs([(&b"__name__"[..], name.as_bytes())]);
            batch.push_key(key.as_ref(), &samples, None);
            let before = cache.map.len();
            let s = batch.iter().last().unwrap();
            cache.insert(hash, raw.as_bytes(), &s);
            emptied += usize::from(cache.map.len() <= before);
            assert!(cache.bytes <= CACHE_MAX_BYTES, "{} bytes", cache.bytes);
            assert!(cache.push_cached(&limits, hash, raw.as_bytes(), &mut batch, &samples, None));
            if batch.series_len() > 1000 {
                batch = WriteBatch::new(Tenant::default_tenant());
            }
        }
        assert!(emptied > 0, "200,000 series never filled 16 MiB");
    }
}
