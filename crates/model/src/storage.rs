use crate::{Labels, Matcher, Sample, StorageError, Tenant};

/// What a reader wants from [`Storage::select`], beyond its matchers.
#[derive(Debug, Clone, Copy)]
pub struct SelectHints {
    /// First millisecond wanted (inclusive).
    pub start: i64,
    /// Last millisecond wanted (inclusive).
    pub end: i64,
    /// Fail with [`StorageError::TooManySamples`] past this many samples in total.
    pub max_samples: Option<usize>,
    /// What the reader needs of each sample.
    pub fields: Fields,
}

/// What a metadata read ([`Storage::series`], [`Storage::label_names`],
/// [`Storage::label_values`]) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataHints {
    /// First millisecond wanted (inclusive).
    pub start: i64,
    /// Last millisecond wanted (inclusive).
    pub end: i64,
    /// Answer at most this many entries: the first ones in sorted order.
    pub limit: Option<usize>,
}

impl MetadataHints {
    /// Every entry with data in `[start, end]`.
    pub fn range(start: i64, end: i64) -> MetadataHints {
        MetadataHints {
            start,
            end,
            limit: None,
        }
    }
}

/// The distinct smallest entries offered, at most `limit` of them: what a metadata read keeps
/// while it walks matching series, so its memory follows the limit, not the series.
#[derive(Debug)]
pub struct FirstSorted<T: Ord> {
    kept: std::collections::BTreeSet<T>,
    limit: usize,
}

impl<T: Ord> FirstSorted<T> {
    /// Keeps at most `limit` entries (all when `None`).
    pub fn new(limit: Option<usize>) -> FirstSorted<T> {
        FirstSorted {
            kept: std::collections::BTreeSet::new(),
            limit: limit.unwrap_or(usize::MAX),
        }
    }

    /// Whether `item` would be kept: it is not there yet and sorts before the largest kept
    /// when full. Lets a caller skip building an owned entry that would be dropped.
    pub fn wants<Q>(&self, item: &Q) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if self.limit == 0 || self.kept.contains(item) {
            return false;
        }
        self.kept.len() < self.limit
            || self
                .kept
                .last()
                .is_some_and(|last| item < std::borrow::Borrow::<Q>::borrow(last))
    }

    /// Offers `item`, built by `own` only when it is kept; the largest entry goes when there
    /// are more than the limit.
    pub fn offer_with<Q>(&mut self, item: &Q, own: impl FnOnce(&Q) -> T)
    where
        T: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if self.wants(item) {
            self.keep(own(item));
        }
    }

    /// Offers an owned `item` (see [`FirstSorted::offer_with`]).
    pub fn offer(&mut self, item: T) {
        if self.wants(&item) {
            self.keep(item);
        }
    }

    fn keep(&mut self, item: T) {
        self.kept.insert(item);
        if self.kept.len() > self.limit {
            self.kept.pop_last();
        }
    }

    /// The kept entries, ascending.
    pub fn into_sorted(self) -> Vec<T> {
        self.kept.into_iter().collect()
    }
}

/// What a reader needs of each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fields {
    /// Timestamps and values.
    #[default]
    All,
    /// Timestamps, and which samples are staleness markers: other values may read as 0, so a
    /// store can skip decoding them (`count_over_time` and the like).
    Timestamps,
    /// Only the latest sample in the range (which may be a staleness marker): instant
    /// selectors at one time. A store may return that sample alone, from chunk metadata.
    Latest,
}

/// One selected series with its samples in the requested range: sorted by timestamp, one sample
/// per timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    /// The series' labels, `__name__` included.
    pub labels: Labels,
    /// Samples in time order.
    pub samples: Vec<Sample>,
}

/// Reads one selected series' samples when asked (see [`Storage::select_lazy`]).
pub trait SampleSource: Send + Sync {
    /// About how much work [`SampleSource::read`] is, in samples decoded (at least the samples it
    /// appends): to share work between threads.
    fn weight(&self) -> usize;

    /// Appends the series' samples in the selected range to `out`: sorted by timestamp, one
    /// sample per timestamp. Appends nothing when it has none there.
    fn read(&self, out: &mut Vec<Sample>) -> Result<(), StorageError>;
}

/// Samples already in memory, as a [`SampleSource`].
impl SampleSource for Vec<Sample> {
    fn weight(&self) -> usize {
        self.len()
    }

    fn read(&self, out: &mut Vec<Sample>) -> Result<(), StorageError> {
        out.extend_from_slice(self);
        Ok(())
    }
}

/// One selected series whose samples are decoded where they are used: a query decodes each
/// series into a buffer its thread reuses and evaluates it there, while the data is in cache,
/// instead of holding every selected series decoded at once.
pub struct LazySeries {
    /// The series' labels, `__name__` included.
    pub labels: Labels,
    source: Box<dyn SampleSource>,
}

impl LazySeries {
    /// A series reading its samples from `source`.
    pub fn new(labels: Labels, source: impl SampleSource + 'static) -> LazySeries {
        LazySeries {
            labels,
            source: Box::new(source),
        }
    }

    /// About how much work [`LazySeries::read`] is (see [`SampleSource::weight`]).
    pub fn weight(&self) -> usize {
        self.source.weight()
    }

    /// Appends the series' samples in the selected range to `out` (see [`SampleSource::read`]).
    pub fn read(&self, out: &mut Vec<Sample>) -> Result<(), StorageError> {
        self.source.read(out)
    }
}

impl From<SeriesSamples> for LazySeries {
    fn from(s: SeriesSamples) -> LazySeries {
        LazySeries::new(s.labels, s.samples)
    }
}

impl std::fmt::Debug for LazySeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySeries")
            .field("labels", &self.labels)
            .field("weight", &self.weight())
            .finish()
    }
}

/// The read side of every storage tier: the raw head and blocks now; rollup tiers later.
///
/// Implementations must return only `tenant`'s data, sorted by labels, and must decode only what
/// overlaps the hinted time range.
pub trait Storage: Send + Sync {
    /// The series matching all `matchers` (an AND), with their samples in the range.
    fn select(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSamples>, StorageError>;

    /// As [`Storage::select`], but each series' samples are read only when its
    /// [`LazySeries::read`] is called; series may turn out to have no samples in the range, and
    /// `hints.max_samples` is left to the reader to enforce. The default selects eagerly.
    fn select_lazy(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        hints: &SelectHints,
    ) -> Result<Vec<LazySeries>, StorageError> {
        Ok(self
            .select(tenant, matchers, hints)?
            .into_iter()
            .map(LazySeries::from)
            .collect())
    }

    /// Label sets of the series matching all `matchers` that have samples in `[start, end]`,
    /// sorted; with a `limit`, only the first `limit` of them in that order (a caller that asks
    /// for one more than it answers learns whether its answer was cut short), so memory follows
    /// the limit rather than the number of matching series.
    fn series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<Labels>, StorageError>;

    /// Sorted label names of series matching `matchers` (all series when empty) in the range;
    /// with a limit, only the first ones (see [`Storage::series`]). The default reads them off
    /// every matching series; an index can answer faster.
    fn label_names(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<String>, StorageError> {
        let all = MetadataHints {
            limit: None,
            ..*range
        };
        let mut names = FirstSorted::new(range.limit);
        for l in self.series(tenant, matchers, &all)? {
            for l in l.iter() {
                names.offer_with(&l.name, |n| n.to_owned());
            }
        }
        Ok(names.into_sorted())
    }

    /// Sorted values of label `name` over series matching `matchers` in the range; with a
    /// limit, only the first ones (see [`Storage::series`]). The default reads them off every
    /// matching series; an index can answer faster.
    fn label_values(
        &self,
        tenant: &Tenant,
        name: &str,
        matchers: &[Matcher],
        range: &MetadataHints,
    ) -> Result<Vec<String>, StorageError> {
        let all = MetadataHints {
            limit: None,
            ..*range
        };
        let mut values = FirstSorted::new(range.limit);
        for l in self.series(tenant, matchers, &all)? {
            if let Some(v) = l.get(name) {
                values.offer_with(v, |v| v.to_owned());
            }
        }
        Ok(values.into_sorted())
    }
}

#[cfg(test)]
mod tests {
    use super::FirstSorted;

    #[test]
    fn first_sorted_keeps_the_smallest_distinct() {
        let mut f = FirstSorted::new(Some(3));
        for v in ["d", "b", "b", "e", "a", "c", "a"] {
            f.offer_with(v, str::to_owned);
        }
        assert_eq!(f.into_sorted(), vec!["a", "b", "c"]);
        let mut all = FirstSorted::new(None);
        for v in [3, 1, 2, 1] {
            all.offer_with(&v, |v| *v);
        }
        assert_eq!(all.into_sorted(), vec![1, 2, 3]);
        let mut none = FirstSorted::new(Some(0));
        none.offer_with(&1, |v| *v);
        assert!(none.into_sorted().is_empty());
    }
}
