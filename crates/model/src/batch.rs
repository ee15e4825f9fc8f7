use crate::key::{encode_pair, tenant_seed};
use crate::labels::{valid_label_name, valid_metric_name};
use crate::{LabelError, Sample, SeriesId, SeriesKeyRef, Tenant, METRIC_NAME};
use std::ops::Range;
use thiserror::Error;

/// Limits enforced at the edge, before anything is written. All are configurable; every error
/// that a limit causes names the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most labels one series may have, `__name__` included.
    pub max_labels_per_series: usize,
    /// Longest label name, in bytes.
    pub max_label_name_len: usize,
    /// Longest label value, in bytes.
    pub max_label_value_len: usize,
    /// Most series one metric name may have per tenant (new series beyond it are refused).
    pub max_series_per_metric: usize,
    /// How far beyond the server's clock a timestamp may lie, in milliseconds.
    pub max_future_skew_ms: i64,
    /// How far behind the server's clock a timestamp may lie (the retention), in milliseconds.
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_labels_per_series: 30,
            max_label_name_len: 1024,
            max_label_value_len: 2048,
            max_series_per_metric: 100_000,
            max_future_skew_ms: 10 * 60 * 1000,
            max_age_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// Why one sample was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SampleError {
    /// Older than the retention.
    #[error("timestamp {ts} is older than the retention ({max_age_ms} ms before now)")]
    TooOld { ts: i64, max_age_ms: i64 },
    /// Too far in the future.
    #[error("timestamp {ts} is more than {max_future_skew_ms} ms in the future")]
    TooFarInFuture { ts: i64, max_future_skew_ms: i64 },
}

impl Limits {
    /// Checks a sample timestamp against the retention and the allowed clock skew at `now_ms`.
    pub fn check_timestamp(&self, ts: i64, now_ms: i64) -> Result<(), SampleError> {
        if ts < now_ms.saturating_sub(self.max_age_ms) {
            return Err(SampleError::TooOld {
                ts,
                max_age_ms: self.max_age_ms,
            });
        }
        if ts > now_ms.saturating_add(self.max_future_skew_ms) {
            return Err(SampleError::TooFarInFuture {
                ts,
                max_future_skew_ms: self.max_future_skew_ms,
            });
        }
        Ok(())
    }
}

/// An event's identity inside a [`WriteBatch`]: its `event_id` bytes and their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventKey {
    /// xxh3 of the event id, seeded by the tenant: a fast path for lookups, never trusted alone.
    pub hash: u64,
    range: (u32, u32),
}

/// One decoded write: a tenant's series, each with its samples, in one flat layout so decoding
/// allocates per batch, not per series or sample.
///
/// Every protocol decodes into this type; the log stores it; shards apply it.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    tenant: Tenant,
    seed: u64,
    bytes: Vec<u8>,
    series: Vec<Entry>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: SeriesId,
    entity: u64,
    key: (u32, u32),
    samples: (u32, u32),
    event: Option<EventKey>,
}

/// A view of one series of a [`WriteBatch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchSeries<'a> {
    /// The series' stable id (tenant-seeded hash of the key).
    pub id: SeriesId,
    /// The canonical label bytes.
    pub key: SeriesKeyRef<'a>,
    /// Hash of the entity the series belongs to (see [`WriteBatch::entity_hash`]): equal for
    /// every series of one device, so they land in one partition.
    pub entity: u64,
    /// Samples in the order received.
    pub samples: &'a [Sample],
    /// The event this series' samples came from, when the client named one.
    pub event: Option<EventKey>,
    event_id: Option<&'a [u8]>,
}

impl<'a> BatchSeries<'a> {
    /// The client's `event_id` bytes, if any.
    pub fn event_id(&self) -> Option<&'a [u8]> {
        self.event_id
    }
}

fn range(r: Range<usize>) -> (u32, u32) {
    (r.start as u32, r.end as u32)
}

impl WriteBatch {
    /// An empty batch for `tenant`.
    pub fn new(tenant: Tenant) -> WriteBatch {
        WriteBatch {
            seed: tenant_seed(&tenant),
            tenant,
            bytes: Vec::new(),
            series: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// Makes room for about `series` more series with `key_bytes` of keys and `samples` more
    /// samples, so a decoder that can estimate its output grows the batch once.
    pub fn reserve(&mut self, series: usize, key_bytes: usize, samples: usize) {
        self.series.reserve(series);
        self.bytes.reserve(key_bytes);
        self.samples.reserve(samples);
    }

    /// An empty batch of the same tenant with room for a `1/parts` share of this one (and a
    /// little more, for uneven shares).
    pub fn empty_share(&self, parts: usize) -> WriteBatch {
        let share = |n: usize| n / parts + n / (4 * parts) + 4;
        let mut b = WriteBatch::new(self.tenant.clone());
        b.reserve(
            share(self.series.len()),
            share(self.bytes.len()),
            share(self.samples.len()),
        );
        b
    }

    /// The tenant's hash seed (see [`SeriesId`]).
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// The tenant the batch belongs to.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// Number of series entries (a series may appear more than once).
    pub fn series_len(&self) -> usize {
        self.series.len()
    }

    /// Number of samples.
    pub fn samples_len(&self) -> usize {
        self.samples.len()
    }

    /// True when the batch holds no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Bytes of label and event-id data held (for accounting).
    pub fn payload_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Empties the batch, keeping its buffers for reuse.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.series.clear();
        self.samples.clear();
    }

    /// Stores an event id once, to be shared by every series decoded from that event.
    pub fn event_key(&mut self, event_id: &[u8]) -> EventKey {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(event_id);
        EventKey {
            hash: xxhash_rust::xxh3::xxh3_64_with_seed(event_id, self.seed),
            range: range(start..self.bytes.len()),
        }
    }

    /// Validates labels given in any order, canonicalises them and appends the series with
    /// `samples`. Empty values are dropped, as in Prometheus. On error the batch is unchanged.
    ///
    /// `labels` is sorted in place: callers pass a reusable scratch slice.
    pub fn push_series(
        &mut self,
        labels: &mut [(&[u8], &[u8])],
        samples: &[Sample],
        event: Option<EventKey>,
        limits: &Limits,
    ) -> Result<(), LabelError> {
        labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut count = 0;
        let mut has_name = false;
        let mut prev: Option<&[u8]> = None;
        for &(n, v) in labels.iter() {
            if v.is_empty() {
                continue;
            }
            count += 1;
            if prev == Some(n) {
                return Err(LabelError::DuplicateName(lossy(n)));
            }
            prev = Some(n);
            if n.len() > limits.max_label_name_len {
                return Err(LabelError::NameTooLong {
                    name: lossy(&n[..64.min(n.len())]),
                    len: n.len(),
                    limit: limits.max_label_name_len,
                });
            }
            if v.len() > limits.max_label_value_len {
                return Err(LabelError::ValueTooLong {
                    name: lossy(n),
                    len: v.len(),
                    limit: limits.max_label_value_len,
                });
            }
            if n == METRIC_NAME.as_bytes() {
                has_name = true;
                if !valid_metric_name(v) {
                    return Err(LabelError::InvalidMetricName(lossy(v)));
                }
            } else if !valid_label_name(n) {
                return Err(LabelError::InvalidName(lossy(n)));
            }
            if std::str::from_utf8(v).is_err() {
                return Err(LabelError::InvalidUtf8(lossy(n)));
            }
        }
        if !has_name {
            return Err(LabelError::MissingMetricName);
        }
        if count > limits.max_labels_per_series {
            return Err(LabelError::TooManyLabels {
                count,
                limit: limits.max_labels_per_series,
            });
        }
        let entity = ENTITY_LABELS
            .iter()
            .find_map(|want| labels.iter().find(|(n, v)| n == want && !v.is_empty()))
            .map(|(_, v)| xxhash_rust::xxh3::xxh3_64_with_seed(v, self.seed));
        let start = self.bytes.len();
        for &(n, v) in labels.iter().filter(|(_, v)| !v.is_empty()) {
            encode_pair(&mut self.bytes, n, v);
        }
        self.push_entry(start, samples, event, entity);
        Ok(())
    }

    /// Appends a series whose key is already canonical (from the log or another batch).
    pub fn push_key(&mut self, key: SeriesKeyRef<'_>, samples: &[Sample], event_id: Option<&[u8]>) {
        let event = event_id.map(|e| self.event_key(e));
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key.as_bytes());
        self.push_entry(start, samples, event, None);
    }

    /// Appends a series already validated and identified, e.g. by a decoder's cache of series
    /// it has seen before. `key`, `id` and `entity` must be what [`WriteBatch::push_series`]
    /// computed for the same labels and tenant.
    pub fn push_known(
        &mut self,
        key: SeriesKeyRef<'_>,
        id: SeriesId,
        entity: u64,
        samples: &[Sample],
    ) {
        self.push_identified(key, id, entity, samples, None);
    }

    /// As [`WriteBatch::push_known`], for a series of an event (`event_id`), as a reader of
    /// batches it wrote before knows them.
    pub fn push_identified(
        &mut self,
        key: SeriesKeyRef<'_>,
        id: SeriesId,
        entity: u64,
        samples: &[Sample],
        event_id: Option<&[u8]>,
    ) {
        let event = event_id.map(|e| self.event_key(e));
        self.push_known_in_event(key, id, entity, samples, event);
    }

    /// As [`WriteBatch::push_known`], for a series of an event already in this batch (`event`,
    /// from [`WriteBatch::event_key`]).
    pub fn push_known_in_event(
        &mut self,
        key: SeriesKeyRef<'_>,
        id: SeriesId,
        entity: u64,
        samples: &[Sample],
        event: Option<EventKey>,
    ) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key.as_bytes());
        let first = self.samples.len();
        self.samples.extend_from_slice(samples);
        self.series.push(Entry {
            id,
            entity,
            key: range(start..self.bytes.len()),
            samples: range(first..self.samples.len()),
            event,
        });
    }

    /// Gives series `i` another key, keeping its samples and event: for stages that relabel
    /// series in place (the device registry's enrichment). `key`, `id` and `entity` must be
    /// what [`WriteBatch::push_series`] computed for the new labels and this tenant. The old
    /// key's bytes stay in the batch, unused (counted in [`WriteBatch::payload_bytes`]).
    pub fn rekey(&mut self, i: usize, key: SeriesKeyRef<'_>, id: SeriesId, entity: u64) {
        debug_assert_eq!(
            id.0,
            xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), self.seed)
        );
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key.as_bytes());
        let e = &mut self.series[i];
        e.key = range(start..self.bytes.len());
        e.id = id;
        e.entity = entity;
    }

    /// The tenant's hash seed, for callers that cache ids across batches of one tenant.
    pub fn hash_seed(&self) -> u64 {
        self.seed
    }

    /// Copies one series of another batch of the same tenant (used to split a batch by
    /// partition) without re-validating or re-hashing its key.
    pub fn push_from(&mut self, s: &BatchSeries<'_>) {
        debug_assert_eq!(self.seed, crate::key::tenant_seed(&self.tenant));
        self.push_identified(s.key, s.id, s.entity, s.samples, s.event_id());
    }

    fn push_entry(
        &mut self,
        key_start: usize,
        samples: &[Sample],
        event: Option<EventKey>,
        entity: Option<u64>,
    ) {
        let key = &self.bytes[key_start..];
        let id = SeriesId(xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed));
        let entity =
            entity.unwrap_or_else(|| self.entity_hash(SeriesKeyRef::new_unchecked(key), id));
        let s = self.samples.len();
        self.samples.extend_from_slice(samples);
        self.series.push(Entry {
            id,
            entity,
            key: range(key_start..self.bytes.len()),
            samples: range(s..self.samples.len()),
            event,
        });
    }

    /// Appends one more sample to the series pushed last (decoders that meet samples one by
    /// one use this instead of collecting them first).
    pub fn push_sample_to_last(&mut self, sample: Sample) {
        if let Some(e) = self.series.last_mut() {
            self.samples.push(sample);
            e.samples.1 = self.samples.len() as u32;
        }
    }

    /// The series in the order pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = BatchSeries<'_>> + '_ {
        self.series.iter().map(|e| self.view(e))
    }

    /// The `i`th series.
    pub fn get(&self, i: usize) -> Option<BatchSeries<'_>> {
        self.series.get(i).map(|e| self.view(e))
    }

    /// The entity of a series: its `device` label, else its `instance` label, else the series
    /// itself; hashed with the tenant's seed.
    pub fn entity_hash(&self, key: SeriesKeyRef<'_>, id: SeriesId) -> u64 {
        ENTITY_LABELS
            .iter()
            .find_map(|n| key.get(n))
            .map_or(id.0, |v| xxhash_rust::xxh3::xxh3_64_with_seed(v, self.seed))
    }

    fn view(&self, e: &Entry) -> BatchSeries<'_> {
        BatchSeries {
            id: e.id,
            entity: e.entity,
            key: SeriesKeyRef::new_unchecked(&self.bytes[e.key.0 as usize..e.key.1 as usize]),
            samples: &self.samples[e.samples.0 as usize..e.samples.1 as usize],
            event: e.event,
            event_id: e
                .event
                .map(|k| &self.bytes[k.range.0 as usize..k.range.1 as usize]),
        }
    }
}

/// Labels naming the entity (device, else scrape target) a series is about, in preference order.
const ENTITY_LABELS: [&[u8]; 2] = [b"device", b"instance"];

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Labels, SeriesKey};

    fn push(b: &mut WriteBatch, pairs: &[(&str, &str)]) -> Result<(), LabelError> {
        let mut l: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        b.push_series(&mut l, &[Sample::new(1, 2.0)], None, &Limits::default())
    }

    #[test]
    fn canonical_and_validated() {
        let mut b = WriteBatch::new(Tenant::default());
        push(
            &mut b,
            &[("z", "1"), ("__name__", "up"), ("a", "x"), ("e", "")],
        )
        .unwrap();
        let s = b.get(0).unwrap();
        let want = Labels::from_pairs([("__name__", "up"), ("a", "x"), ("z", "1")]).unwrap();
        assert_eq!(s.key.labels(), want);
        assert_eq!(s.key.to_owned(), want.key());
        assert_eq!(s.id, SeriesId::of(&Tenant::default(), want.key().as_ref()));
        assert_eq!(
            push(&mut b, &[("a", "1")]),
            Err(LabelError::MissingMetricName)
        );
        assert!(matches!(
            push(&mut b, &[("__name__", "1x")]),
            Err(LabelError::InvalidMetricName(_))
        ));
        assert!(matches!(
            push(&mut b, &[("__name__", "u"), ("a-b", "1")]),
            Err(LabelError::InvalidName(_))
        ));
        assert!(matches!(
            push(&mut b, &[("__name__", "u"), ("a", "1"), ("a", "2")]),
            Err(LabelError::DuplicateName(_))
        ));
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("l{i}"), "v".to_string()))
            .collect();
        let mut pairs: Vec<(&str, &str)> =
            many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        pairs.push(("__name__", "m"));
        assert_eq!(
            push(&mut b, &pairs),
            Err(LabelError::TooManyLabels {
                count: 41,
                limit: 30
            })
        );
        assert_eq!(b.series_len(), 1);
        let _ = SeriesKey::from_bytes(b.get(0).unwrap().key.as_bytes()).unwrap();
    }

    #[test]
    fn events_and_timestamps() {
        let mut b = WriteBatch::new(Tenant::default());
        let ev = b.event_key(b"e-1");
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"t")];
        b.push_series(&mut l, &[Sample::new(5, 1.0)], Some(ev), &Limits::default())
            .unwrap();
        b.push_sample_to_last(Sample::new(6, 2.0));
        let s = b.get(0).unwrap();
        assert_eq!(s.event_id(), Some(&b"e-1"[..]));
        assert_eq!(s.samples.len(), 2);
        let lim = Limits::default();
        assert!(lim.check_timestamp(1000, 1000).is_ok());
        assert!(matches!(
            lim.check_timestamp(0, lim.max_age_ms + 1),
            Err(SampleError::TooOld { .. })
        ));
        assert!(matches!(
            lim.check_timestamp(lim.max_future_skew_ms + 1, 0),
            Err(SampleError::TooFarInFuture { .. })
        ));
    }

    #[test]
    fn rekey_relabels_one_series_in_place() {
        let mut b = WriteBatch::new(Tenant::default_tenant());
        let ev = b.event_key(b"e1");
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"t"), (b"device", b"d1")];
        b.push_series(&mut l, &[Sample::new(5, 1.5)], Some(ev), &Limits::default())
            .unwrap();
        push(&mut b, &[("__name__", "u")]).unwrap();
        let mut other = WriteBatch::new(Tenant::default_tenant());
        push(
            &mut other,
            &[("__name__", "t"), ("device", "d1"), ("site", "s1")],
        )
        .unwrap();
        let new = other.get(0).unwrap();
        b.rekey(0, new.key, new.id, new.entity);
        let s = b.get(0).unwrap();
        assert_eq!(
            (s.key.as_bytes(), s.id, s.entity),
            (new.key.as_bytes(), new.id, new.entity)
        );
        assert_eq!(s.samples, &[Sample::new(5, 1.5)]);
        assert_eq!(s.event_id(), Some(&b"e1"[..]));
        assert_eq!(b.get(1).unwrap().key.get(b"__name__"), Some(&b"u"[..]));
    }
}
