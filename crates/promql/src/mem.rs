//! An in-memory [`Storage`], for tests and the script runner.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use strata_model::{
    Labels, Matcher, MetadataHints, Sample, SelectHints, SeriesSamples, Storage, StorageError,
    Tenant,
};

/// Series kept in memory, sorted by tenant and labels. Appends merge by timestamp (a later
/// append at an existing timestamp replaces the value).
#[derive(Default)]
pub struct MemStorage {
    series: RwLock<BTreeMap<(Tenant, Labels), Vec<Sample>>>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Adds samples to a series.
    pub fn append(&self, tenant: &Tenant, labels: Labels, samples: &[Sample]) {
        let mut map = self.series.write();
        let v = map.entry((tenant.clone(), labels)).or_default();
        for s in samples {
            match v.binary_search_by_key(&s.timestamp, |x| x.timestamp) {
                Ok(i) => v[i] = *s,
                Err(i) => v.insert(i, *s),
            }
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.series.write().clear();
    }

    fn matching<'a>(
        map: &'a BTreeMap<(Tenant, Labels), Vec<Sample>>,
        tenant: &'a Tenant,
        matchers: &'a [Matcher],
    ) -> impl Iterator<Item = (&'a Labels, &'a Vec<Sample>)> + 'a {
        map.range((tenant.clone(), Labels::default())..)
            .take_while(move |((t, _), _)| t == tenant)
            .filter(move |((_, l), _)| {
                matchers
                    .iter()
                    .all(|m| m.matches(l.get(&m.name).unwrap_or("")))
            })
            .map(|((_, l), s)| (l, s))
    }
}

impl Storage for MemStorage {
    fn select(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSamples>, StorageError> {
        let map = self.series.read();
        let mut total = 0usize;
        let mut out = Vec::new();
        for (labels, samples) in Self::matching(&map, tenant, matchers) {
            let lo = samples.partition_point(|s| s.timestamp < hints.start);
            let hi = samples.partition_point(|s| s.timestamp <= hints.end);
            if lo >= hi {
                continue;
            }
            total += hi - lo;
            if let Some(limit) = hints.max_samples {
                if total > limit {
                    return Err(StorageError::TooManySamples { limit });
                }
            }
            out.push(SeriesSamples {
                labels: labels.clone(),
                samples: samples[lo..hi].to_vec(),
            });
        }
        Ok(out)
    }

    fn series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<Labels>, StorageError> {
        let map = self.series.read();
        // The map is sorted by labels within a tenant: the first matches are the answer.
        Ok(Self::matching(&map, tenant, matchers)
            .filter(|(_, s)| {
                s.iter()
                    .any(|x| x.timestamp >= range.start && x.timestamp <= range.end)
            })
            .map(|(l, _)| l.clone())
            .take(range.limit.unwrap_or(usize::MAX))
            .collect())
    }
}
