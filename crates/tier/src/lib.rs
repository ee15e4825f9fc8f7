//! Strata's long-term tiers.
//!
//! [`cold`]: the Parquet cold tier on object storage.

pub mod cold;
