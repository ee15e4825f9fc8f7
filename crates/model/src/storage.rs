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
