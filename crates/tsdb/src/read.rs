//! Reading selected series in two steps: [`crate::Tsdb::plan`] finds, under the storage's read
//! lock, which block chunks and head samples each series needs; [`read_all`] decodes them
//! without the lock, spread over the machine's cores, so one query over many series (and many
//! shards) uses every core.

use crate::block::Block;
use std::sync::{Arc, OnceLock};
use strata_model::{sort_last_wins, Sample, SelectHints, SeriesKey, SeriesSamples, StorageError};

/// Below this many samples per thread, spawning a thread costs more than it saves.
const MIN_SAMPLES_PER_THREAD: usize = 50_000;

/// One selected series, not decoded yet.
pub struct SeriesRead {
    /// The series.
    pub key: SeriesKey,
    /// Its chunks in blocks overlapping the range, in ascending block sequence: on equal
    /// timestamps the later block wins.
    pub(crate) blocks: Vec<(Arc<Block>, u32)>,
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

    /// At most how many samples decoding yields (to share work between threads).
    fn weight(&self) -> usize {
        self.head.len()
            + self
                .blocks
                .iter()
                .map(|(b, id)| b.meta(*id).count as usize)
                .sum::<usize>()
    }

    /// Decodes the samples in `[start, end]` into `buf` (cleared first): sorted, one per
    /// timestamp, the last write winning. Returns the range of `buf` that is in `[start, end]`
    /// (block chunks decode by whole pages, so `buf` may hold more).
    fn decode_into(
        &self,
        start: i64,
        end: i64,
        buf: &mut Vec<Sample>,
    ) -> Result<std::ops::Range<usize>, StorageError> {
        buf.clear();
        for (b, id) in &self.blocks {
            b.read_range(*id, start, end, buf)
                .map_err(|e| StorageError::Io(e.to_string()))?;
        }
        buf.extend_from_slice(&self.head);
        // Parts are each sorted; usually they follow each other in time and need no merge.
        if !buf.windows(2).all(|w| w[0].timestamp < w[1].timestamp) {
            sort_last_wins(buf);
        }
        let lo = buf.partition_point(|s| s.timestamp < start);
        let hi = buf.partition_point(|s| s.timestamp <= end);
        Ok(lo..hi.max(lo))
    }
}

/// Decodes `reads` (each series once) over `hints`' range, on several threads when
/// there is enough work. Series without samples in the range are left out; the result is
/// sorted by labels. Fails past `hints.max_samples` samples in total.
pub fn read_all(
    reads: Vec<SeriesRead>,
    hints: &SelectHints,
) -> Result<Vec<SeriesSamples>, StorageError> {
    let weights: Vec<usize> = reads.iter().map(SeriesRead::weight).collect();
    let total: usize = weights.iter().sum();
    let threads = cores().min(total / MIN_SAMPLES_PER_THREAD).max(1);
    let parts = split_by_weight(&weights, threads);
    let decode = |part: &[SeriesRead]| -> Result<Vec<SeriesSamples>, StorageError> {
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(part.len());
        for r in part {
            let range = r.decode_into(hints.start, hints.end, &mut buf)?;
            if !range.is_empty() {
                out.push(SeriesSamples {
                    labels: r.key.labels(),
                    samples: buf[range].to_vec(),
                });
            }
        }
        Ok(out)
    };
    let pieces: Vec<Result<Vec<SeriesSamples>, StorageError>> = if parts.len() <= 1 {
        vec![decode(&reads)]
    } else {
        std::thread::scope(|s| {
            let (last, rest) = parts.split_last().expect("two parts or more");
            let handles: Vec<_> = rest
                .iter()
                .map(|p| {
                    let part = &reads[p.clone()];
                    s.spawn(move || decode(part))
                })
                .collect();
            let mine = decode(&reads[last.clone()]);
            let mut all: Vec<_> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(StorageError::Io("decoding panicked".into())))
                })
                .collect();
            all.push(mine);
            all
        })
    };
    let mut out = Vec::with_capacity(reads.len());
    for p in pieces {
        out.extend(p?);
    }
    let samples: usize = out.iter().map(|s| s.samples.len()).sum();
    if let Some(limit) = hints.max_samples.filter(|l| samples > *l) {
        return Err(StorageError::TooManySamples { limit });
    }
    // Key order is nearly always label order already.
    if !out.windows(2).all(|w| w[0].labels <= w[1].labels) {
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
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

/// The number of cores to decode on.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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
