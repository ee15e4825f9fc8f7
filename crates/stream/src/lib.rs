//! The stream stage of one shard: event-time windows, watermarks, rollups and their sketches,
//! and the warm tier that keeps final windows.
//!
//! - [`dedup`]: exact recognition of redelivered events by `event_id`.
//! - [`window`]: which window a sample belongs to (windows are left-open like PromQL's ranges:
//!   the window keyed `start` holds `(start, start + width]`, [`window::window_of`]), the
//!   shard's watermark, and each window's life from provisional to final to corrected.
//! - [`rollup`]: the figures a window keeps (count, sums, min, max, first, last, increase,
//!   quantiles), all of which merge exactly.
//! - [`exact`] and [`sketch`]: the exact sum and the mergeable sketches those figures use.
//! - [`group`]: rollups of one metric across series, by labels, written back as series.
//! - [`store`]: final windows of one shard, kept in a storage engine of their own.
//! - [`state`]: a window's full mergeable state as checked bytes, stored beside its figures.
//! - [`hour`]: the 1-hour tier: final windows merged into hours, corrected with them.
//! - [`shadow`]: each device's last known reading of every metric.
//! - [`stage`]: the shard's rollup stage tying windows, store and raw tier together.
//! - [`backfill`]: history older than the raw tier written straight into windows and hours.
//!
//! This crate does no networking and knows nothing of protocols; the shard that owns it feeds it
//! samples in log order and reads the raw tier for corrections.

pub mod backfill;
mod bytes;
pub mod dedup;
pub mod exact;
pub mod group;
pub mod hour;
pub mod rollup;
pub mod shadow;
pub mod sketch;
pub mod stage;
pub mod state;
pub mod store;
pub mod window;

pub use bytes::write_atomically;

/// Errors of the stream stage. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// An I/O operation failed.
    #[error("stream state I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A checkpoint is damaged.
    #[error("stream checkpoint {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}
