use thiserror::Error;

/// Why a series' labels were refused. Messages name the offending label and the limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelError {
    /// No `__name__` label, or an empty one.
    #[error("series has no metric name (__name__ label)")]
    MissingMetricName,
    /// A label name that is empty or not `[a-zA-Z_][a-zA-Z0-9_]*` (`:` also allowed in `__name__`).
    #[error("invalid label name {0:?}")]
    InvalidName(String),
    /// A metric name outside `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}")]
    InvalidMetricName(String),
    /// Name or value is not valid UTF-8.
    #[error("label {0:?} is not valid UTF-8")]
    InvalidUtf8(String),
    /// The same label name twice in one series.
    #[error("duplicate label name {0:?}")]
    DuplicateName(String),
    /// More labels than [`Limits::max_labels_per_series`](crate::Limits).
    #[error("series has {count} labels, more than the limit of {limit}")]
    TooManyLabels { count: usize, limit: usize },
    /// A label name longer than the limit.
    #[error("label name {name:?}... is {len} bytes, longer than the limit of {limit}")]
    NameTooLong {
        name: String,
        len: usize,
        limit: usize,
    },
    /// A label value longer than the limit.
    #[error("value of label {name:?} is {len} bytes, longer than the limit of {limit}")]
    ValueTooLong {
        name: String,
        len: usize,
        limit: usize,
    },
}

/// Errors of a [`Storage`](crate::Storage) read.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The selection would load more samples than the caller allowed.
    #[error("query would load more than {limit} samples; narrow the selector or the time range")]
    TooManySamples { limit: usize },
    /// A matcher set that would select every series (Prometheus refuses these too).
    #[error("match[] must contain at least one matcher that does not match the empty string")]
    EmptyMatch,
    /// On-disk data could not be read.
    #[error("storage read failed: {0}")]
    Io(String),
}
