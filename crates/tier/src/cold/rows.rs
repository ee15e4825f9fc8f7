//! The rows the cold tier stores: rollup windows and raw samples, and what the writer, reader and
//! compactor need to know of each kind.

use super::schema::{BatchBuilder, BatchView, END, RAW_COLUMNS, START, TIMESTAMP, WINDOW_COLUMNS};
use strata_model::{Labels, Sample};

/// One rollup window of one series: the figures of its samples in `(start, end]` (left-open,
/// as PromQL's ranges: a sample exactly on a clock edge belongs to the window ending there).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Start of the window (exclusive: its first millisecond is `start + 1`), milliseconds
    /// since the epoch; the window's key.
    pub start: i64,
    /// End of the window (inclusive), milliseconds since the epoch.
    pub end: i64,
    /// Samples aggregated (at least 1).
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of the squared values.
    pub sum_squares: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Earliest sample.
    pub first: Sample,
    /// Latest sample.
    pub last: Sample,
    /// Counter increase, resets handled.
    pub increase: f64,
    /// Revision of the window: a corrected window is written again with a higher revision.
    pub revision: u64,
    /// Serialized sketch state (DDSketch, HyperLogLog), opaque to the cold tier.
    pub sketch: Option<Vec<u8>>,
}

impl Window {
    /// Arithmetic mean (the `mean` column).
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// One series' windows, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesWindows {
    /// The series' labels, `__name__` included.
    pub labels: Labels,
    /// Windows in `start` order, one per `start`.
    pub windows: Vec<Window>,
}

/// What the writer, reader and compactor need of a row kind.
pub(crate) trait ColdRow: Clone + Send + Sync + 'static {
    /// Value columns a reader projects (beside `metric` and `labels`).
    const COLUMNS: &'static [&'static str];
    /// The columns whose minimum and maximum bound a file's or row group's time range.
    const TIME_BOUNDS: (&'static str, &'static str);
    /// Position in its series (also picks the day partition): one row per key survives a merge.
    fn key(&self) -> i64;
    /// Of rows with the same key, the higher rank wins (then the newer file).
    fn rank(&self) -> u64;
    /// The first and last millisecond the row covers.
    fn span(&self) -> (i64, i64);
    fn encode(&self, b: &mut BatchBuilder);
    fn decode(v: &BatchView<'_>, i: usize) -> Result<Self, String>;
}

impl ColdRow for Window {
    const COLUMNS: &'static [&'static str] = WINDOW_COLUMNS;
    const TIME_BOUNDS: (&'static str, &'static str) = (START, END);
    fn key(&self) -> i64 {
        self.start
    }
    fn rank(&self) -> u64 {
        self.revision
    }
    fn span(&self) -> (i64, i64) {
        // `(start, end]`: `start` is exclusive.
        (self.start.saturating_add(1), self.end.max(self.start + 1))
    }
    fn encode(&self, b: &mut BatchBuilder) {
        b.encode_window(self)
    }
    fn decode(v: &BatchView<'_>, i: usize) -> Result<Self, String> {
        v.window(i)
    }
}

impl ColdRow for Sample {
    const COLUMNS: &'static [&'static str] = RAW_COLUMNS;
    const TIME_BOUNDS: (&'static str, &'static str) = (TIMESTAMP, TIMESTAMP);
    fn key(&self) -> i64 {
        self.timestamp
    }
    fn rank(&self) -> u64 {
        0
    }
    fn span(&self) -> (i64, i64) {
        (self.timestamp, self.timestamp)
    }
    fn encode(&self, b: &mut BatchBuilder) {
        b.encode_sample(self)
    }
    fn decode(v: &BatchView<'_>, i: usize) -> Result<Self, String> {
        v.sample(i)
    }
}
