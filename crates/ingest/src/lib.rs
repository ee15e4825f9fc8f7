//! Wire formats into [`WriteBatch`]: Prometheus remote write, Influx line protocol and JSON
//! device events.
//!
//! Each decoder appends the valid part of a request body to a caller's batch and reports every
//! refused item with where it was (line, index, field) and why. A body that cannot be read as a
//! whole is an [`IngestError`] and the caller discards the batch. Decoders never panic on any
//! input and do not allocate per sample.
//!
//! This crate knows nothing of HTTP, storage or the log.

pub mod cache;
pub mod events;
pub mod influx;
pub mod remote_write;

use std::fmt;
use strata_model::{LabelError, Limits, SampleError};
use thiserror::Error;

pub use strata_model::WriteBatch;

/// Rejections kept in [`Decoded::rejected`]; more are only counted.
pub const MAX_LISTED_REJECTIONS: usize = 100;

/// What a decoder needs besides the body.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    /// Label and timestamp limits.
    pub limits: &'a Limits,
    /// The server's clock, for missing timestamps and skew checks.
    pub now_ms: i64,
    /// Largest decompressed body accepted (remote write).
    pub max_decompressed_bytes: usize,
}

/// The outcome of decoding one body whose valid part was appended to the batch.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Samples appended to the batch.
    pub accepted_samples: usize,
    /// The first [`MAX_LISTED_REJECTIONS`] refused items.
    pub rejected: Vec<Rejection>,
    /// Samples (or items that would have been samples) refused, all of them.
    pub rejected_total: usize,
}

impl Decoded {
    fn reject(&mut self, location: Location, reason: RejectReason, samples: usize) {
        self.rejected_total += samples.max(1);
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(Rejection { location, reason });
        }
    }
}

/// One refused item.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Where in the body.
    pub location: Location,
    /// Why.
    pub reason: RejectReason,
}

/// Where a refused item was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A line (1-based) of a line-oriented body.
    Line(usize),
    /// An item (0-based) of an array or a remote-write request's time series.
    Index(usize),
    /// A field of an Influx line.
    Field {
        /// 1-based line.
        line: usize,
        /// Field key.
        field: String,
    },
    /// A reading of an event.
    Reading {
        /// Where the event was (line or index).
        event: Box<Location>,
        /// Reading name.
        reading: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Index(i) => write!(f, "item {i}"),
            Location::Field { line, field } => write!(f, "line {line}, field {field:?}"),
            Location::Reading { event, reading } => write!(f, "{event}, reading {reading:?}"),
        }
    }
}

/// Why an item was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RejectReason {
    /// Its labels break a rule or limit.
    Label(LabelError),
    /// Its timestamp is outside the accepted window.
    Timestamp(SampleError),
    /// It does not parse.
    Syntax(String),
    /// A string value where only numbers and booleans are stored.
    StringField,
    /// NaN or an infinity where the protocol does not allow them.
    NotANumber,
    /// Anything else, explained.
    Invalid(String),
}

impl RejectReason {
    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::Label(_) => "label",
            RejectReason::Timestamp(SampleError::TooOld { .. }) => "too_old",
            RejectReason::Timestamp(SampleError::TooFarInFuture { .. }) => "too_far_in_future",
            RejectReason::Syntax(_) => "syntax",
            RejectReason::StringField => "string_field",
            RejectReason::NotANumber => "nan",
            RejectReason::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Label(e) => e.fmt(f),
            RejectReason::Timestamp(e) => e.fmt(f),
            RejectReason::Syntax(s) | RejectReason::Invalid(s) => f.write_str(s),
            RejectReason::StringField => {
                f.write_str("value is a string; only numbers and booleans are stored")
            }
            RejectReason::NotANumber => {
                f.write_str("value is NaN or infinite, which this protocol does not allow")
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// A body that cannot be read at all; nothing of it is stored.
#[derive(Debug, Error, PartialEq)]
pub enum IngestError {
    /// Not snappy block format, or damaged.
    #[error("body is not valid snappy block-format data: {0}")]
    Snappy(String),
    /// Decompressed size over the limit.
    #[error("decompressed body would be {size} bytes, larger than the limit of {limit} bytes (limits.max_body_bytes)")]
    TooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Malformed protobuf.
    #[error("malformed remote-write protobuf at byte {offset}: {reason}")]
    Protobuf {
        /// Byte offset in the decompressed message.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A JSON body that does not parse as a whole.
    #[error("malformed JSON at line {line}, column {column}: {reason}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's explanation.
        reason: String,
    },
    /// The body holds nothing to store.
    #[error("{0}")]
    Empty(String),
}
