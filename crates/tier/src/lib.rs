//! Strata's long-term tiers.
//!
//! [`cold`] is the cold tier: rollup windows (1-hour, optionally 1-minute) and archived raw
//! samples as Parquet files on an object store, in a public schema that DuckDB, Spark and pandas
//! read with no Strata code.
//!
//! # Layout
//!
//! ```text
//! <root>/_strata/manifest.json                      the list of visible files
//! <root>/tenant=<t>/tier=<1h|1m|raw>/day=YYYY-MM-DD/part-<seq>-<nonce>.parquet
//! ```
//!
//! `<root>` is a directory (`<data_dir>/cold` by default; a path or `file://` URL) or
//! `s3://bucket/prefix` on any S3-compatible store. Partitions are Hive-style, so `tenant`,
//! `tier` and `day` become columns for readers that know the convention. A window belongs to the
//! UTC day of its `start`, a raw sample to the day of its `timestamp`.
//!
//! There is no metric partition: the metric is the first sort key and a dictionary-encoded
//! column, so row-group statistics already skip other metrics, while a partition per metric
//! would multiply the files by the number of metrics (a flood of small files for fleets with
//! many sparse metrics).
//!
//! # Schema
//!
//! One schema for every tier, so a glob over the whole root (`**/*.parquet`) reads as one table:
//! window columns are null in raw rows, `timestamp` and `value` are null in window rows.
//!
//! | column | type | in | meaning |
//! |---|---|---|---|
//! | `metric` | string, dictionary | all | the metric name (`__name__`) |
//! | `labels` | map<string, string>, dictionary | all | every other label of the series |
//! | `site`, `device`, `job`, `instance` | string, nullable | all | promoted labels: copies of map entries (configurable) |
//! | `start` | int64 | windows | window start, ms since the epoch (exclusive: a window holds `(start, end]`) |
//! | `end` | int64 | windows | window end, ms since the epoch (inclusive) |
//! | `count` | int64 | windows | samples in the window |
//! | `sum`, `min`, `max`, `mean` | double | windows | figures of the values (`mean` = `sum / count`) |
//! | `first`, `first_ts` | double, int64 | windows | earliest sample and its time (ms) |
//! | `last`, `last_ts` | double, int64 | windows | latest sample and its time (ms) |
//! | `increase` | double | windows | counter increase across resets |
//! | `sum_squares` | double | windows | sum of squared values (variance, stddev) |
//! | `revision` | int64 | windows | 0, then +1 for each correction of the window |
//! | `sketch` | binary, nullable | windows | sketch state (DDSketch, HLL), opaque, for merges |
//! | `timestamp` | int64 | raw | sample time, ms since the epoch |
//! | `value` | double | raw | sample value |
//!
//! Labels live in one `labels` map rather than one column per label name: label sets differ
//! between metrics and change over time, and files with different columns do not read as one
//! table. The promoted columns (fixed per root, stored in the manifest) give SQL the common
//! labels by name; the map stays complete either way.
//!
//! Files are zstd-compressed; names, labels, bounds and counts are dictionary-encoded (the float
//! figures are not: their values hardly repeat). Rows are sorted by metric, then labels, then
//! time, so each series' rows are contiguous; row groups hold 131,072 rows by default, files
//! grow to about 128 MiB by compaction.
//!
//! # Visibility and crashes
//!
//! A data file is written with a single PUT, atomic on S3; on a local directory object_store
//! writes `<name>#<n>` and renames it into place after an fsync, so no `*.parquet` name ever
//! holds a partial file. Then the manifest (JSON with a version and a CRC-32 checksum, also one
//! atomic PUT) is rewritten to list it: Strata's readers take files from the manifest only and
//! never list the bucket. On open, data files the manifest does not list (uploaded just before
//! a crash, or compacted away but not yet deleted) and staged uploads are deleted. A root with
//! data files but no manifest, or with a damaged manifest, is refused, never cleaned.
//!
//! # Revisions and duplicates
//!
//! A corrected window is written again with a higher `revision`. Strata's reads keep, for each
//! series and `start`, the row with the highest revision (then the one in the newest file);
//! raw samples keep one row per series and timestamp, the newest. Until a partition is
//! compacted its files may hold both revisions, so an outside reader of the raw files sees the
//! older row too; [`cold::ColdStore::compact`] rewrites a window partition whole with only the
//! winners. Raw partitions (which can be far larger than a file) merge only their small files,
//! so a sample archived twice (a retried archive) may stay duplicated in two large files.
//! One process writes a root at a time.

#![warn(missing_docs)]

pub mod cold;
