//! The read side of the rollup tiers: windows of figures, and what each tier holds.
//!
//! A rollup tier keeps, per series and clock-aligned window `(start, end]` (PromQL's side of the
//! edge: a sample exactly on a minute belongs to the minute that ends there), the figures every
//! mergeable aggregate needs. The query router reads them through [`WindowStorage`] and answers
//! `*_over_time`, `rate` and selectors from them when raw samples are gone or the step is coarse.

use crate::{Labels, Matcher, Sample, StorageError, Tenant};
use std::any::Any;
use std::sync::Arc;

/// Where a query's data comes from, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    /// Raw samples (the hot tier).
    Raw,
    /// 1-minute windows (the warm tier).
    Minute,
    /// 1-hour windows (the hour tier, and the cold tier behind it).
    Hour,
    /// 1-day windows (the day tier, merged from the hours).
    Day,
}

impl Resolution {
    /// Every resolution, finest first.
    pub const ALL: [Resolution; 4] = [
        Resolution::Raw,
        Resolution::Minute,
        Resolution::Hour,
        Resolution::Day,
    ];

    /// The rollup tiers (every resolution but raw), finest first.
    pub const ROLLUPS: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    /// Window length in milliseconds (0 for raw samples).
    pub fn window_ms(self) -> i64 {
        match self {
            Resolution::Raw => 0,
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
            Resolution::Day => 86_400_000,
        }
    }

    /// The name APIs use: `raw`, `1m`, `1h`, `1d`.
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
            Resolution::Day => "1d",
        }
    }

    /// Parses [`Resolution::name`] (also `0s`/`5m`-style spellings Thanos accepts: `0s`, `1m`,
    /// `1h`, `1d`; `5m` reads as 1m, the finest tier no coarser than it).
    pub fn parse(s: &str) -> Option<Resolution> {
        Some(match s {
            "raw" | "0" | "0s" => Resolution::Raw,
            "1m" | "5m" | "60s" => Resolution::Minute,
            "1h" | "60m" | "3600s" => Resolution::Hour,
            "1d" | "24h" | "86400s" => Resolution::Day,
            _ => return None,
        })
    }

    /// The bit of this resolution in a [`Resolutions`] set.
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Resolution`]s (which tiers answered a query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolutions(u8);

impl Resolutions {
    /// Adds `r`.
    pub fn insert(&mut self, r: Resolution) {
        self.0 |= r.bit();
    }

    /// Whether `r` is in the set.
    pub fn contains(self, r: Resolution) -> bool {
        self.0 & r.bit() != 0
    }

    /// The union of two sets.
    pub fn union(self, other: Resolutions) -> Resolutions {
        Resolutions(self.0 | other.0)
    }

    /// The resolutions in the set, finest first.
    pub fn iter(self) -> impl Iterator<Item = Resolution> {
        Resolution::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// As the `Strata-Tiers` header says it: names finest first, comma-separated.
    pub fn header_value(self) -> String {
        self.iter()
            .map(Resolution::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The set as a number (for atomics).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// A set from [`Resolutions::bits`].
    pub fn from_bits(bits: u8) -> Resolutions {
        Resolutions(bits & 0b1111)
    }
}

/// A mergeable quantile sketch kept with a window (the tier's own type behind a trait, so this
/// crate needs no sketch code).
pub trait QuantileSketch: Send + Sync + std::fmt::Debug {
    /// The sketch as `Any`, so an implementation can merge others of its own type.
    fn as_any(&self) -> &dyn Any;

    /// The `q` quantile of the merge of `self`, `others` (all of the same type; others are
    /// skipped) and the single values `extra`, `None` when they hold no value.
    fn merged_quantile(&self, others: &[&dyn QuantileSketch], extra: &[f64], q: f64)
        -> Option<f64>;
}

/// Which figures a reader needs beyond the count, which is always read (a window exists when
/// it has one); a store may skip the others, which then read as NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FigureNeeds {
    /// `sum`.
    pub sum: bool,
    /// `sum_squares` (stddev, stdvar).
    pub sum_squares: bool,
    /// `min`.
    pub min: bool,
    /// `max`.
    pub max: bool,
    /// `first` and its timestamp.
    pub first: bool,
    /// `last` and its timestamp.
    pub last: bool,
    /// `increase`.
    pub increase: bool,
    /// The quantile sketch.
    pub sketch: bool,
}

impl FigureNeeds {
    /// Every figure but the sketch.
    pub const ALL: FigureNeeds = FigureNeeds {
        sum: true,
        sum_squares: true,
        min: true,
        max: true,
        first: true,
        last: true,
        increase: true,
        sketch: false,
    };
}

/// The figures of one series in one window `(end - width, end]`.
#[derive(Debug, Clone)]
pub struct WindowFigures {
    /// The window's end (inclusive), ms.
    pub end: i64,
    /// Samples in the window (at least 1).
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
    /// Counter increase from the first to the last sample, a drop counting as a reset.
    pub increase: f64,
    /// The window's quantile sketch, where one is kept and was asked for.
    pub sketch: Option<Arc<dyn QuantileSketch>>,
}

/// One series' windows, in time order.
#[derive(Debug, Clone)]
pub struct SeriesWindows {
    /// The series' labels, `__name__` included.
    pub labels: Labels,
    /// Its windows, by end.
    pub windows: Vec<WindowFigures>,
}

/// Reads one selected series' windows when asked (see [`WindowStorage::windows`]).
pub trait WindowSource: Send + Sync {
    /// About how much work [`WindowSource::read`] is, in windows.
    fn weight(&self) -> usize;

    /// Appends the series' windows in the selected range to `out`, by end, one per end.
    fn read(&self, out: &mut Vec<WindowFigures>) -> Result<(), StorageError>;
}

/// Windows already in memory, as a [`WindowSource`].
impl WindowSource for Vec<WindowFigures> {
    fn weight(&self) -> usize {
        self.len()
    }

    fn read(&self, out: &mut Vec<WindowFigures>) -> Result<(), StorageError> {
        out.extend_from_slice(self);
        Ok(())
    }
}

/// One selected series whose windows are read where they are used: a query reads each series
/// into a buffer its thread reuses, instead of holding every selected window at once.
pub struct LazyWindows {
    /// The series' labels, `__name__` included.
    pub labels: Labels,
    sources: Vec<Box<dyn WindowSource>>,
}

impl LazyWindows {
    /// A series reading its windows from `source`.
    pub fn new(labels: Labels, source: impl WindowSource + 'static) -> LazyWindows {
        LazyWindows {
            labels,
            sources: vec![Box::new(source)],
        }
    }

    /// Reads `later` after this series's windows (an older store, then a newer one): `later`
    /// holds only windows ending after this one's.
    pub fn append(&mut self, later: LazyWindows) {
        self.sources.extend(later.sources);
    }

    /// About how much work [`LazyWindows::read`] is.
    pub fn weight(&self) -> usize {
        self.sources.iter().map(|s| s.weight()).sum()
    }

    /// Appends the series' windows to `out`, by end.
    pub fn read(&self, out: &mut Vec<WindowFigures>) -> Result<(), StorageError> {
        for s in &self.sources {
            s.read(out)?;
        }
        Ok(())
    }
}

impl From<SeriesWindows> for LazyWindows {
    fn from(s: SeriesWindows) -> LazyWindows {
        LazyWindows::new(s.labels, s.windows)
    }
}

impl std::fmt::Debug for LazyWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyWindows")
            .field("labels", &self.labels)
            .field("weight", &self.weight())
            .finish()
    }
}

/// From when each tier holds a tenant's data completely: a tier answers for times at or after
/// its mark. `i64::MAX` for a tier that is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Oldest time the raw tier still holds.
    pub raw: i64,
    /// Oldest time the 1-minute tier still holds.
    pub minute: i64,
    /// Oldest time the 1-hour tier (with the cold tier behind it) still holds.
    pub hour: i64,
    /// Oldest time the 1-day tier still holds.
    pub day: i64,
}

impl Coverage {
    /// Only raw data, all of it.
    pub const RAW_ONLY: Coverage = Coverage {
        raw: i64::MIN,
        minute: i64::MAX,
        hour: i64::MAX,
        day: i64::MAX,
    };

    /// The mark of `r`.
    pub fn from(&self, r: Resolution) -> i64 {
        match r {
            Resolution::Raw => self.raw,
            Resolution::Minute => self.minute,
            Resolution::Hour => self.hour,
            Resolution::Day => self.day,
        }
    }

    /// Whether `r` is kept at all.
    pub fn keeps(&self, r: Resolution) -> bool {
        self.from(r) != i64::MAX
    }
}

/// The rollup tiers, as the query router reads them.
pub trait WindowStorage: Send + Sync {
    /// From when each tier holds `tenant`'s data.
    fn coverage(&self, tenant: &Tenant) -> Coverage;

    /// The windows of `resolution` (not [`Resolution::Raw`]) of `tenant`'s series matching all
    /// `matchers` whose end lies in `[start, end]`, with the figures `needs` names; series
    /// sorted by labels, each once, read when asked. Final and provisional windows alike.
    fn windows(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
        resolution: Resolution,
        start: i64,
        end: i64,
        needs: FigureNeeds,
    ) -> Result<Vec<LazyWindows>, StorageError>;
}
