//! A per-thread memory of series already decoded, keyed by their raw bytes on the wire.
//!
//! Clients send the same label bytes for a series in every request. Remembering the canonical
//! key, id and entity of those bytes skips parsing, sorting, validating and hashing the labels
//! again: a hit costs one hash of the raw bytes and one comparison. Each protocol keeps its own
//! cache, so raw bytes of different formats never meet.

use ahash::AHashMap;
use strata_model::{BatchSeries, Limits, Sample, SeriesId, SeriesKey, WriteBatch};

/// Most series remembered per thread and protocol; past it the cache starts over.
const CACHE_MAX: usize = 1 << 18;

/// Series by the hash of their raw bytes (seeded by the tenant).
#[derive(Default)]
pub struct SeriesCache {
    /// The limits the cached series were validated against; other limits empty the cache.
    limits: Option<Limits>,
    map: AHashMap<u64, Cached>,
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

    /// On a hit, appends the known series with `samples` to `out` and returns true.
    pub fn push_cached(
        &mut self,
        limits: &Limits,
        hash: u64,
        raw: &[u8],
        out: &mut WriteBatch,
        samples: &[Sample],
    ) -> bool {
        if self.limits.as_ref() != Some(limits) {
            self.map.clear();
            self.limits = Some(limits.clone());
        }
        match self.map.get(&hash) {
            Some(c) if c.raw.as_ref() == raw => {
                out.push_known(c.key.as_ref(), c.id, c.entity, samples);
                true
            }
            _ => false,
        }
    }

    /// Remembers a series that `raw` decoded to (and that passed validation).
    pub fn insert(&mut self, hash: u64, raw: &[u8], s: &BatchSeries<'_>) {
        if self.map.len() >= CACHE_MAX {
            self.map.clear();
        }
        self.map.insert(
            hash,
            Cached {
                raw: raw.into(),
                key: s.key.to_owned(),
                id: s.id,
                entity: s.entity,
            },
        );
    }
}
