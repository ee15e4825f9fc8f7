//! Strata's shared vocabulary.
//!
//! Every other crate speaks in these types: a [`Tenant`] owns [`Labels`]; a series is identified
//! by its canonical [`SeriesKey`] bytes and their stable hash, the [`SeriesId`]; protocols decode
//! into a [`WriteBatch`]; queries select with [`Matcher`]s through the [`Storage`] read trait; what Strata derives
//! itself is written back through the [`Appender`] write trait.
//!
//! This crate must stay small and dependency-light: it holds types and their invariants, never
//! I/O, threads or protocol knowledge.

mod append;
mod batch;
mod error;
mod key;
mod labels;
mod matcher;
mod record;
mod sample;
mod storage;
mod tenant;
pub mod time;
mod windows;

pub use append::{AppendError, AppendFuture, Appender};
pub use batch::{BatchSeries, EventKey, Limits, SampleError, WriteBatch};
pub use error::{LabelError, StorageError};
pub use key::{tenant_seed, BuildIdHasher, IdHasher, SeriesId, SeriesKey, SeriesKeyRef};
pub use labels::{is_anomaly_output, Label, Labels, ANOMALY_OUTPUTS, METRIC_NAME};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use record::{RecordError, SeriesDict};
pub use sample::{sort_last_wins, Sample, STALE_NAN};
pub use storage::{
    Fields, FirstSorted, LazySeries, MetadataHints, SampleSource, SelectHints, SeriesSamples,
    Storage,
};
pub use tenant::{Tenant, TenantError};
pub use windows::{
    Coverage, FigureNeeds, LazyWindows, QuantileSketch, Resolution, Resolutions, SeriesWindows,
    WindowFigures, WindowSource, WindowStorage,
};
