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

    /// Label sets of the series matching all `matchers` that have samples in `[start, end]`.
    fn series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, StorageError>;

    /// Sorted label names of series matching `matchers` (all series when empty) in the range.
    /// The default reads them off [`Storage::series`]; an index can answer faster.
    fn label_names(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = self
            .series(tenant, matchers, start, end)?
            .iter()
            .flat_map(|l| l.iter().map(|l| l.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Sorted values of label `name` over series matching `matchers` in the range. The default
    /// reads them off [`Storage::series`]; an index can answer faster.
    fn label_values(
        &self,
        tenant: &Tenant,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut values: Vec<String> = self
            .series(tenant, matchers, start, end)?
            .iter()
            .filter_map(|l| l.get(name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}
