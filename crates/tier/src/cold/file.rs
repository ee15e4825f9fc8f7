//! One Parquet data file: encoding sorted series into files of a target size, and reading a file
//! back with row-group pruning (metric name and time statistics) and label matching.

use super::rows::ColdRow;
use super::schema::{
    dictionary_column, projected_columns, series_matches, BatchBuilder, BatchView, StoredSeries,
    METRIC,
};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::{ColumnPath, SchemaDescriptor};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use strata_model::{Labels, MatchOp, Matcher, METRIC_NAME};

/// How files are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cut {
    /// A file is closed once its encoded size reaches this.
    pub target_bytes: u64,
    /// Rows per row group.
    pub row_group_rows: usize,
}

/// An encoded file, ready for one PUT.
pub(crate) struct EncodedFile {
    pub bytes: Bytes,
    pub rows: u64,
    pub min_time: i64,
    pub max_time: i64,
}

fn writer_properties(schema: &SchemaRef, cut: Cut) -> WriterProperties {
    let mut p = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(cut.row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(true)
        .set_created_by(format!("strata-tier {}", env!("CARGO_PKG_VERSION")));
    for f in schema.fields() {
        if !dictionary_column(f.name()) {
            p = p.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false);
        }
    }
    p.build()
}

/// One file being filled.
struct Open {
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
    min_time: i64,
    max_time: i64,
}

impl Open {
    fn new(schema: &SchemaRef, props: &WriterProperties) -> Result<Open, ParquetError> {
        Ok(Open {
            writer: ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?,
            rows: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
        })
    }

    fn close(self) -> Result<EncodedFile, ParquetError> {
        Ok(EncodedFile {
            bytes: Bytes::from(self.writer.into_inner()?),
            rows: self.rows,
            min_time: self.min_time,
            max_time: self.max_time,
        })
    }
}

/// Writes series (sorted by metric then labels, rows in time order) into files of about
/// `cut.target_bytes` each, keeping each series' rows contiguous; holds at most one file.
pub(crate) struct FileWriter {
    schema: SchemaRef,
    props: WriterProperties,
    cut: Cut,
    open: Open,
    batch: BatchBuilder,
}

impl FileWriter {
    pub fn new(
        schema: &SchemaRef,
        promoted: &[String],
        cut: Cut,
    ) -> Result<FileWriter, ParquetError> {
        let props = writer_properties(schema, cut);
        Ok(FileWriter {
            open: Open::new(schema, &props)?,
            batch: BatchBuilder::new(schema.clone(), promoted),
            schema: schema.clone(),
            props,
            cut,
        })
    }

    /// Appends a series; files completed on the way go to `done`.
    pub fn push<T: ColdRow>(
        &mut self,
        s: &StoredSeries<T>,
        done: &mut Vec<EncodedFile>,
    ) -> Result<(), ParquetError> {
        for row in &s.rows {
            self.batch.push(&s.metric, &s.rest, row);
            let (lo, hi) = row.span();
            let open = &mut self.open;
            open.rows += 1;
            open.min_time = open.min_time.min(lo);
            open.max_time = open.max_time.max(hi);
            if self.batch.len() >= self.cut.row_group_rows {
                self.open.writer.write(&self.batch.finish())?;
                if self.open.writer.bytes_written() as u64 >= self.cut.target_bytes {
                    let next = Open::new(&self.schema, &self.props)?;
                    done.push(std::mem::replace(&mut self.open, next).close()?);
                }
            }
        }
        Ok(())
    }

    /// Closes the last file.
    pub fn finish(mut self, done: &mut Vec<EncodedFile>) -> Result<(), ParquetError> {
        if self.batch.len() > 0 {
            self.open.writer.write(&self.batch.finish())?;
        }
        if self.open.rows > 0 {
            done.push(self.open.close()?);
        }
        Ok(())
    }
}

/// What a read selects.
pub(crate) struct Selection<'a> {
    pub matchers: &'a [Matcher],
    pub start: i64,
    pub end: i64,
}

impl Selection<'_> {
    /// Metric names the matchers pin exactly (`__name__="x"`).
    fn metric(&self) -> Option<&str> {
        self.matchers.iter().find_map(|m| {
            (m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal)).then_some(m.value.as_str())
        })
    }

    /// False when the row group's statistics prove it holds no selected row.
    pub fn may_match(&self, rg: &RowGroupMetaData, leaves: &Leaves) -> bool {
        let col = |i: Option<usize>| i.and_then(|i| rg.column(i).statistics());
        if let (Some(metric), Some(Statistics::ByteArray(s))) = (self.metric(), col(leaves.metric))
        {
            if let (Some(lo), Some(hi)) = (s.min_bytes_opt(), s.max_bytes_opt()) {
                if metric.as_bytes() < lo || metric.as_bytes() > hi {
                    return false;
                }
            }
        }
        if let Some(Statistics::Int64(s)) = col(leaves.time_lo) {
            if s.min_opt().is_some_and(|lo| *lo > self.end) {
                return false;
            }
        }
        if let Some(Statistics::Int64(s)) = col(leaves.time_hi) {
            if s.max_opt().is_some_and(|hi| *hi < self.start) {
                return false;
            }
        }
        true
    }
}

/// Leaf column indices used for pruning.
pub(crate) struct Leaves {
    metric: Option<usize>,
    time_lo: Option<usize>,
    time_hi: Option<usize>,
}

impl Leaves {
    /// The pruning columns in a file's schema, with `bounds` the time columns.
    pub fn of(descr: &SchemaDescriptor, bounds: (&str, &str)) -> Leaves {
        let leaf = |name: &str| {
            descr
                .columns()
                .iter()
                .position(|c| c.path().string() == name)
        };
        Leaves {
            metric: leaf(METRIC),
            time_lo: leaf(bounds.0),
            time_hi: leaf(bounds.1),
        }
    }
}

/// Reads one file's selected series one at a time, in file order (metric, labels, time):
/// memory holds one batch and one series, whatever the file's size.
pub(crate) struct SeriesReader<T> {
    stream: ParquetRecordBatchStream<ObjectReader>,
    batch: Option<RecordBatch>,
    /// Next row of `batch` to look at.
    pos: usize,
    /// The series of the previous row, and whether the matchers selected it.
    cur: Option<(String, Labels, bool)>,
    /// The selected series being gathered (it may span batches).
    pending: Option<StoredSeries<T>>,
}

impl<T: ColdRow> SeriesReader<T> {
    /// Opens the file, keeping only row groups whose statistics may hold selected rows.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        path: &Path,
        size: u64,
        sel: &Selection<'_>,
        footers: &FooterCache,
    ) -> Result<SeriesReader<T>, ReadError> {
        let mut reader = ObjectReader {
            store,
            path: path.clone(),
            size,
        };
        let cached = footers.0.lock().get(path.as_ref()).cloned();
        let footer = match cached {
            Some(f) => f,
            None => {
                let f = ArrowReaderMetadata::load_async(&mut reader, Default::default()).await?;
                footers.insert(path, f.clone());
                f
            }
        };
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer);
        let meta = builder.metadata().clone();
        let descr = meta.file_metadata().schema_descr();
        let leaves = Leaves::of(descr, T::TIME_BOUNDS);
        let groups: Vec<usize> = (0..meta.num_row_groups())
            .filter(|&i| sel.may_match(meta.row_group(i), &leaves))
            .collect();
        let mask = ProjectionMask::columns(descr, projected_columns::<T>());
        let stream = builder
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(8192)
            .build()?;
        Ok(SeriesReader {
            stream,
            batch: None,
            pos: 0,
            cur: None,
            pending: None,
        })
    }

    /// The next selected series with its rows in `sel`'s time range; `None` at the end.
    pub async fn next(
        &mut self,
        sel: &Selection<'_>,
    ) -> Result<Option<StoredSeries<T>>, ReadError> {
        loop {
            if self.batch.as_ref().is_none_or(|b| self.pos >= b.num_rows()) {
                match self.stream.try_next().await? {
                    Some(b) => {
                        self.batch = Some(b);
                        self.pos = 0;
                        continue;
                    }
                    None => return Ok(self.pending.take().filter(|s| !s.rows.is_empty())),
                }
            }
            let batch = self.batch.as_ref().expect("checked above");
            let view = BatchView::new(batch).map_err(ReadError::Schema)?;
            while self.pos < view.len() {
                let i = self.pos;
                let same = self
                    .cur
                    .as_ref()
                    .is_some_and(|(m, r, _)| view.same_series(i, m, r));
                if !same {
                    let (metric, rest) = view.series(i);
                    let matched = series_matches(sel.matchers, &metric, &rest);
                    let finished = self.pending.take();
                    if matched {
                        self.pending = Some(StoredSeries {
                            metric: metric.clone(),
                            rest: rest.clone(),
                            rows: Vec::new(),
                        });
                    }
                    self.cur = Some((metric, rest, matched));
                    if let Some(f) = finished.filter(|s| !s.rows.is_empty()) {
                        // Row `i` is looked at again on the next call, as part of `cur`.
                        return Ok(Some(f));
                    }
                }
                self.pos += 1;
                if let Some(p) = &mut self.pending {
                    let row = T::decode(&view, i).map_err(ReadError::Schema)?;
                    let (lo, hi) = row.span();
                    if lo <= sel.end && hi >= sel.start {
                        p.rows.push(row);
                    }
                }
            }
        }
    }
}

/// Reads the selected series of one file, in file order (metric, labels, time).
pub(crate) async fn read<T: ColdRow>(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    size: u64,
    sel: &Selection<'_>,
    footers: &FooterCache,
) -> Result<Vec<StoredSeries<T>>, ReadError> {
    let mut r = SeriesReader::<T>::open(store, path, size, sel, footers).await?;
    let mut out = Vec::new();
    while let Some(s) = r.next(sel).await? {
        out.push(s);
    }
    Ok(out)
}

/// Decoded footers of files read before: files never change, so a scan over two years of day
/// partitions does not fetch hundreds of footers again.
#[derive(Default)]
pub(crate) struct FooterCache(Mutex<HashMap<String, ArrowReaderMetadata>>);

/// Footers kept at most (a few KiB each); past it the cache starts over.
const FOOTERS_KEPT: usize = 8192;

impl FooterCache {
    fn insert(&self, path: &Path, footer: ArrowReaderMetadata) {
        let mut m = self.0.lock();
        if m.len() >= FOOTERS_KEPT {
            m.clear();
        }
        m.insert(path.to_string(), footer);
    }

    /// Forgets the footer of a file that is gone.
    pub fn remove(&self, path: &Path) {
        self.0.lock().remove(path.as_ref());
    }
}

/// Ranged reads of one object whose size the manifest knows (so the footer takes one request).
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn store_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(store_error)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(store_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let m = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(m))
        }
        .boxed()
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    #[error("{0}")]
    Schema(String),
}
