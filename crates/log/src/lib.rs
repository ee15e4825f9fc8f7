//! The ingest log (placeholder; see crate docs when written).
