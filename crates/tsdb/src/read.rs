//! Reading selected series in two steps: [`crate::Tsdb::plan`] finds, under the storage's read
//! lock, which block chunks and head samples each series needs; then, without the lock,
//! [`read_all`] decodes them all, spread over the machine's cores, or [`lazy`] hands them out to
//! be decoded one at a time where a query evaluates them.

use crate::reader::{BlockReader, ChunkMeta};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use strata_model::{
    sort_last_wins, Fields, Labels, LazySeries, Sample, SampleSource, SelectHints, SeriesKey,
    SeriesSamples, StorageError,
};

/// Below this many samples per thread, handing work to the pool costs more than it saves.
const MIN_SAMPLES_PER_THREAD: usize = 20_000;

/// Most samples reserved up front for one series: the counts come from block indexes, which a
/// damaged file can make anything (2^32 samples asked for 64 GiB); longer series grow.
const MAX_RESERVE: usize = 1 << 22;

/// One selected series, not decoded yet.
pub struct SeriesRead {
    /// The series.
    pub key: SeriesKey,
    /// Its chunks in blocks overlapping the range, in ascending block sequence: on equal
    /// timestamps the later block wins.
    pub(crate) blocks: Vec<(Arc<dyn BlockReader>, ChunkMeta)>,
    /// Its head samples in the range, sorted and unique: they win over every block.
    pub(crate) head: Vec<Sample>,
}

impl SeriesRead {
    pub(crate) fn new(key: SeriesKey) -> SeriesRead {
        SeriesRead {
            key,
            blocks: Vec::new(),
            head: Vec::new(),
        }
    }

    /// About how many samples decoding `[start, end]` yields: each chunk's count in proportion
    /// to how much of its time span the range covers.
    fn weight(&self, start: i64, end: i64) -> usize {
        self.estimate(start, end, |n, _| n)
    }

    /// About how many samples decoding `[start, end]` decodes (to share work between threads):
    /// as [`SeriesRead::weight`], but at least a page of each chunk read.
    fn work(&self, start: i64, end: i64) -> usize {
        self.estimate(start, end, |n, count| {
            n.max(count.min(crate::codec::PAGE_SAMPLES))
        })
    }

    /// Sums `f(samples of the chunk in the range, samples of the chunk)` over block chunks,
    /// plus the head's samples.
    fn estimate(&self, start: i64, end: i64, f: impl Fn(usize, usize) -> usize) -> usize {
        let part = |min_t: i64, max_t: i64, count: u32| {
            let span = (max_t as i128 - min_t as i128 + 1).max(1);
            let covered = (end.min(max_t) as i128 - start.max(min_t) as i128 + 1).clamp(0, span);
            f((count as i128 * covered / span) as usize, count as usize)
        };
        self.head.len()
            + self
                .blocks
                .iter()
                .map(|(_, m)| part(m.min_t, m.max_t, m.count))
                .sum::<usize>()
    }

    /// Whether its parts (block chunks and head samples) cover disjoint time spans, as they
    /// nearly always do: no timestamp is then in two parts, so the parts' counts add up to the
    /// series' count.
    fn parts_disjoint(&self) -> bool {
        let mut spans: smallvec::SmallVec<[(i64, i64); 8]> = self
            .blocks
            .iter()
            .map(|(_, m)| (m.min_t, m.max_t))
            .collect();
        if let (Some(f), Some(l)) = (self.head.first(), self.head.last()) {
            spans.push((f.timestamp, l.timestamp));
        }
        spans.sort_unstable();
        spans.windows(2).all(|w| w[0].1 < w[1].0)
    }

    /// How many samples in `[start, end]` it surely has, known without decoding anything: its
    /// head samples and what chunk headers show (see [`BlockReader::known_in_range`]). When parts
    /// overlap in time, only the largest part is sure.
    fn sure_samples(&self, start: i64, end: i64) -> usize {
        let known = self
            .blocks
            .iter()
            .map(|(b, m)| b.known_in_range(m, start, end));
        if self.parts_disjoint() {
            self.head.len() + known.sum::<usize>()
        } else {
            known.max().unwrap_or(0).max(self.head.len())
        }
    }

    /// Its samples in `[start, end]`: sorted, one per timestamp, the last write winning.
    /// Fails past `limit` samples, before decoding a chunk that would pass it when that is
    /// known from its header.
    fn decode(
        &self,
        start: i64,
        end: i64,
        fields: Fields,
        limit: Option<usize>,
    ) -> Result<Vec<Sample>, StorageError> {
        // Room for every part up front (the estimate is exact for evenly spaced samples, give
        // or take one per part): growing would copy the whole series once per part.
        let reserve = (self.weight(start, end) + self.blocks.len())
            .min(limit.unwrap_or(usize::MAX).saturating_add(1))
            .min(MAX_RESERVE);
        let mut out = Vec::with_capacity(reserve);
        self.decode_into(start, end, fields, limit, &mut out)?;
        Ok(out)
    }

    /// Appends its samples in `[start, end]` to `out`, as [`SeriesRead::decode`] returns them
    /// (and failing as it does past `limit`).
    fn decode_into(
        &self,
        start: i64,
        end: i64,
        fields: Fields,
        limit: Option<usize>,
        out: &mut Vec<Sample>,
    ) -> Result<(), StorageError> {
        if fields == Fields::Latest {
            return self.latest_into(start, end, out);
        }
        let too_many = |limit| Err(StorageError::TooManySamples { limit });
        // Refused from headers alone when they show enough: nothing decoded, nothing
        // allocated for a series larger than the whole query may be.
        if let Some(limit) = limit.filter(|l| self.sure_samples(start, end) > *l) {
            return too_many(limit);
        }
        // With disjoint parts every decoded sample counts, so decoding stops at the chunk that
        // passes the limit; overlapping parts are counted once merged, below.
        let counted = limit.filter(|_| self.parts_disjoint());
        let base = out.len();
        // Each part is sorted and unique: the whole is too when every part starts after the
        // previous one ends, which is usual (parts follow each other in time).
        let mut in_order = true;
        let mut check_seam = |out: &[Sample], from: usize| {
            if from > base && from < out.len() && out[from - 1].timestamp >= out[from].timestamp {
                in_order = false;
            }
        };
        for (b, m) in &self.blocks {
            let from = out.len();
            if let Some(limit) = counted {
                if from - base + b.known_in_range(m, start, end) > limit {
                    return too_many(limit);
                }
            }
            b.read_range(m, self.key.as_ref(), start, end, fields, out)
                .map_err(|e| StorageError::Io(e.to_string()))?;
            if let Some(limit) = counted.filter(|l| out.len() - base > *l) {
                return too_many(limit);
            }
            check_seam(out, from);
        }
        let from = out.len();
        out.extend_from_slice(&self.head);
        check_seam(out, from);
        if !in_order {
            let mut own = out.split_off(base);
            sort_last_wins(&mut own);
            out.append(&mut own);
        }
        if let Some(limit) = limit.filter(|l| out.len() - base > *l) {
            return too_many(limit);
        }
        Ok(())
    }

    /// Appends its latest sample in `[start, end]`, if any: a chunk that ends by `end` and
    /// records its last value answers without decoding; others decode only the pages needed.
    fn latest_into(&self, start: i64, end: i64, out: &mut Vec<Sample>) -> Result<(), StorageError> {
        let mut best: Option<Sample> = None;
        // Parts come in write order: on equal timestamps the later one wins.
        let mut consider = |s: Sample| {
            if best.is_none_or(|b| s.timestamp >= b.timestamp) {
                best = Some(s);
            }
        };
        let mut scratch = Vec::new();
        for (b, m) in &self.blocks {
            if m.max_t < start || m.min_t > end {
                continue;
            }
            match m.last {
                Some(v) if m.max_t <= end => consider(Sample::new(m.max_t, v)),
                _ => {
                    scratch.clear();
                    b.read_range(m, self.key.as_ref(), start, end, Fields::All, &mut scratch)
                        .map_err(|e| StorageError::Io(e.to_string()))?;
                    if let Some(s) = scratch.last() {
                        consider(*s);
                    }
                }
            }
        }
        if let Some(s) = self.head.last() {
            consider(*s);
        }
        out.extend(best);
        Ok(())
    }
}

/// A [`SeriesRead`] over a time range, decoded when read.
struct RangedRead {
    read: SeriesRead,
    start: i64,
    end: i64,
    fields: Fields,
    /// The query's `max_samples`: one series alone may not pass it (the reader counts the
    /// total), so a series larger than that is refused before it is decoded.
    max_samples: Option<usize>,
}

impl SampleSource for RangedRead {
    fn weight(&self) -> usize {
        // The work of decoding, which is what the weight shares out.
        self.read.work(self.start, self.end)
    }

    fn read(&self, out: &mut Vec<Sample>) -> Result<(), StorageError> {
        self.read
            .decode_into(self.start, self.end, self.fields, self.max_samples, out)
    }
}

/// `reads` (each series once) as series decoded when read, over `hints`' range, sorted by
/// labels.
pub fn lazy(reads: Vec<SeriesRead>, hints: &SelectHints) -> Vec<LazySeries> {
    let mut out: Vec<LazySeries> = reads
        .into_iter()
        .map(|read| {
            let r = RangedRead {
                read,
                start: hints.start,
                end: hints.end,
                fields: hints.fields,
                max_samples: hints.max_samples,
            };
            LazySeries::new(r.read.key.labels(), r)
        })
        .collect();
    sort_by_labels(&mut out, |s| &s.labels);
    out
}

/// A series key ordered as its labels are (see [`SeriesKeyRef::cmp_as_labels`]): metadata
/// reads keep the first series in label order without decoding every key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ByLabels(pub(crate) SeriesKey);

impl Ord for ByLabels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_ref().cmp_as_labels(&other.0.as_ref())
    }
}

impl PartialOrd for ByLabels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Sorts `items` by their labels. Key order is nearly always label order already: checked
/// first, in one pass.
fn sort_by_labels<T>(items: &mut [T], labels: impl Fn(&T) -> &Labels) {
    if !items.windows(2).all(|w| labels(&w[0]) <= labels(&w[1])) {
        items.sort_by(|a, b| labels(a).cmp(labels(b)));
    }
}

/// Decodes `reads` (each series once) over `hints`' range, on several threads when
/// there is enough work. Series without samples in the range are left out; the result is
/// sorted by labels. Fails past `hints.max_samples` samples in total: from chunk headers
/// before decoding when they show it, else at the chunk that passes it.
pub fn read_all(
    reads: Vec<SeriesRead>,
    hints: &SelectHints,
) -> Result<Vec<SeriesSamples>, StorageError> {
    let weights: Vec<usize> = reads
        .iter()
        .map(|r| r.work(hints.start, hints.end))
        .collect();
    let total: usize = weights.iter().sum();
    let threads = rayon::current_num_threads()
        .min(total / MIN_SAMPLES_PER_THREAD)
        .max(1);
    if let Some(limit) = hints.max_samples {
        // What chunk headers already show is refused before anything is decoded.
        let sure: usize = reads
            .iter()
            .map(|r| r.sure_samples(hints.start, hints.end))
            .fold(0, usize::saturating_add);
        if sure > limit {
            return Err(StorageError::TooManySamples { limit });
        }
    }
    // Samples decoded so far over every thread: each series may take only what is left, so
    // memory stays within the limit and a chunk or so per thread.
    let taken = AtomicUsize::new(0);
    let parts = split_by_weight(&weights, threads);
    let decode = |part: &[SeriesRead]| -> Result<Vec<SeriesSamples>, StorageError> {
        let mut out = Vec::with_capacity(part.len());
        for r in part {
            let left = hints
                .max_samples
                .map(|l| l.saturating_sub(taken.load(Ordering::Relaxed)));
            let samples = r
                .decode(hints.start, hints.end, hints.fields, left)
                .map_err(|e| match (e, hints.max_samples) {
                    // Named by the query's limit, not by what was left of it.
                    (StorageError::TooManySamples { .. }, Some(limit)) => {
                        StorageError::TooManySamples { limit }
                    }
                    (e, _) => e,
                })?;
            taken.fetch_add(samples.len(), Ordering::Relaxed);
            if !samples.is_empty() {
                out.push(SeriesSamples {
                    labels: r.key.labels(),
                    samples,
                });
            }
        }
        Ok(out)
    };
    let pieces: Vec<Result<Vec<SeriesSamples>, StorageError>> = if parts.len() <= 1 {
        vec![decode(&reads)]
    } else {
        // On the shared pool: spawning threads per query costs up to milliseconds.
        use rayon::prelude::*;
        parts
            .par_iter()
            .with_max_len(1)
            .map(|p| decode(&reads[p.clone()]))
            .collect()
    };
    let mut out = Vec::with_capacity(reads.len());
    for p in pieces {
        out.extend(p?);
    }
    if let Some(limit) = hints.max_samples.filter(|l| taken.into_inner() > *l) {
        return Err(StorageError::TooManySamples { limit });
    }
    sort_by_labels(&mut out, |s| &s.labels);
    Ok(out)
}

/// Splits `0..weights.len()` into at most `n` contiguous ranges of about equal total weight.
fn split_by_weight(weights: &[usize], n: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = weights.iter().sum();
    let mut parts = Vec::with_capacity(n);
    let (mut from, mut acc) = (0usize, 0usize);
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        // Close part k once the running weight reaches k/n of the total.
        if parts.len() + 1 < n && acc * n >= total * (parts.len() + 1) {
            parts.push(from..i + 1);
            from = i + 1;
        }
    }
    if from < weights.len() || parts.is_empty() {
        parts.push(from..weights.len());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::split_by_weight;

    #[test]
    fn split_covers_everything_in_order() {
        for (weights, n) in [
            (vec![5usize; 10], 2usize),
            (vec![1, 100, 1, 1], 2),
            (vec![], 3),
            (vec![7], 4),
            (vec![0, 0, 0], 2),
            (vec![3, 1, 4, 1, 5, 9, 2, 6], 3),
        ] {
            let parts = split_by_weight(&weights, n);
            assert!(parts.len() <= n.max(1));
            let mut next = 0;
            for p in &parts {
                assert_eq!(p.start, next, "{weights:?} / {n}: {parts:?}");
                next = p.end;
            }
            assert_eq!(next, weights.len());
        }
        assert_eq!(split_by_weight(&[5; 10], 2), vec![0..5, 5..10]);
    }
}
