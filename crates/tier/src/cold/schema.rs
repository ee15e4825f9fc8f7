//! The public Parquet schema of cold files: building record batches from rows and decoding rows
//! back. One schema serves every tier (window columns are null in raw rows and `timestamp`/`value`
//! are null in window rows) so that a reader globbing `**/*.parquet` over all tiers, as DuckDB's
//! `read_parquet` does, sees one schema in every file.

use super::rows::{ColdRow, Window};
use arrow_array::builder::{
    BinaryBuilder, Float64Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Float64Array, Int64Array, MapArray, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::sync::Arc;
use strata_model::{Label, Labels, Matcher, Sample, METRIC_NAME};

/// Column names, in file order (promoted label columns follow `labels`).
pub(crate) const METRIC: &str = "metric";
pub(crate) const LABELS: &str = "labels";
pub(crate) const START: &str = "start";
pub(crate) const END: &str = "end";
const COUNT: &str = "count";
const SUM: &str = "sum";
const MIN: &str = "min";
const MAX: &str = "max";
const MEAN: &str = "mean";
const FIRST: &str = "first";
const FIRST_TS: &str = "first_ts";
const LAST: &str = "last";
const LAST_TS: &str = "last_ts";
const INCREASE: &str = "increase";
const SUM_SQUARES: &str = "sum_squares";
const REVISION: &str = "revision";
const SKETCH: &str = "sketch";
pub(crate) const TIMESTAMP: &str = "timestamp";
const VALUE: &str = "value";

/// Columns after the label columns, with their types.
const FIGURE_COLUMNS: [(&str, DataType); 17] = [
    (START, DataType::Int64),
    (END, DataType::Int64),
    (COUNT, DataType::Int64),
    (SUM, DataType::Float64),
    (MIN, DataType::Float64),
    (MAX, DataType::Float64),
    (MEAN, DataType::Float64),
    (FIRST, DataType::Float64),
    (FIRST_TS, DataType::Int64),
    (LAST, DataType::Float64),
    (LAST_TS, DataType::Int64),
    (INCREASE, DataType::Float64),
    (SUM_SQUARES, DataType::Float64),
    (REVISION, DataType::Int64),
    (SKETCH, DataType::Binary),
    (TIMESTAMP, DataType::Int64),
    (VALUE, DataType::Float64),
];

/// Columns whose values repeat (names, labels, bounds, counts): dictionary-encoded in Parquet.
/// The float figures are left plain: a dictionary of nearly unique doubles only costs.
pub(crate) fn dictionary_column(name: &str) -> bool {
    !matches!(
        name,
        SUM | MIN | MAX | MEAN | FIRST | LAST | INCREASE | SUM_SQUARES | VALUE | SKETCH
    )
}

/// Names a promoted label may not take: the schema's own columns and the Hive partition keys.
pub(crate) fn reserved_column(name: &str) -> bool {
    name == METRIC
        || name == LABELS
        || FIGURE_COLUMNS.iter().any(|(n, _)| *n == name)
        || super::layout::PARTITION_KEYS.contains(&name)
}

fn map_names() -> MapFieldNames {
    MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    }
}

fn labels_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(
        Some(map_names()),
        StringBuilder::new(),
        StringBuilder::new(),
    )
}

/// The Arrow schema of cold files with these promoted label columns.
pub(crate) fn arrow_schema(promoted: &[String]) -> SchemaRef {
    let labels_type = labels_builder().finish().data_type().clone();
    let mut fields = vec![
        Field::new(METRIC, DataType::Utf8, false),
        Field::new(LABELS, labels_type, false),
    ];
    fields.extend(promoted.iter().map(|p| Field::new(p, DataType::Utf8, true)));
    fields.extend(
        FIGURE_COLUMNS
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true)),
    );
    Arc::new(Schema::new(fields))
}

/// One series as stored: metric name, the other labels, rows in time order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredSeries<T> {
    pub metric: String,
    /// The labels without `__name__`.
    pub rest: Labels,
    pub rows: Vec<T>,
}

impl<T> StoredSeries<T> {
    /// Splits a label set into metric and the rest; `None` without a metric name.
    pub fn split(labels: &Labels) -> Option<(String, Labels)> {
        let metric = labels.metric_name()?.to_string();
        let rest = labels
            .iter()
            .filter(|l| l.name != METRIC_NAME)
            .cloned()
            .collect();
        Some((metric, Labels::from_sorted(rest)))
    }

    /// The full label set, `__name__` included.
    pub fn labels(&self) -> Labels {
        let mut l = self.rest.clone();
        l.set(METRIC_NAME, &self.metric);
        l
    }
}

/// Builds record batches in the cold schema.
pub(crate) struct BatchBuilder {
    schema: SchemaRef,
    promoted: Vec<String>,
    metric: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
    promoted_cols: Vec<StringBuilder>,
    ints: [Int64Builder; 7],
    floats: [Float64Builder; 9],
    sketch: BinaryBuilder,
    len: usize,
}

// Index of each column in `ints` / `floats`.
const I_START: usize = 0;
const I_END: usize = 1;
const I_COUNT: usize = 2;
const I_FIRST_TS: usize = 3;
const I_LAST_TS: usize = 4;
const I_REVISION: usize = 5;
const I_TIMESTAMP: usize = 6;
const F_SUM: usize = 0;
const F_MIN: usize = 1;
const F_MAX: usize = 2;
// 3 is `mean`, derived from sum and count, never read back.
const F_FIRST: usize = 4;
const F_LAST: usize = 5;
const F_INCREASE: usize = 6;
const F_SUM_SQUARES: usize = 7;
const F_VALUE: usize = 8;

impl BatchBuilder {
    pub fn new(schema: SchemaRef, promoted: &[String]) -> BatchBuilder {
        BatchBuilder {
            schema,
            promoted: promoted.to_vec(),
            metric: StringBuilder::new(),
            labels: labels_builder(),
            promoted_cols: promoted.iter().map(|_| StringBuilder::new()).collect(),
            ints: std::array::from_fn(|_| Int64Builder::new()),
            floats: std::array::from_fn(|_| Float64Builder::new()),
            sketch: BinaryBuilder::new(),
            len: 0,
        }
    }

    /// Rows appended since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.len
    }

    fn push_series(&mut self, metric: &str, rest: &Labels) {
        self.metric.append_value(metric);
        for l in rest {
            self.labels.keys().append_value(&l.name);
            self.labels.values().append_value(&l.value);
        }
        self.labels
            .append(true)
            .expect("keys and values appended in pairs");
        for (name, col) in self.promoted.iter().zip(&mut self.promoted_cols) {
            col.append_option(rest.get(name));
        }
        self.len += 1;
    }

    /// Appends one row of `T` for the series.
    pub fn push<T: ColdRow>(&mut self, metric: &str, rest: &Labels, row: &T) {
        self.push_series(metric, rest);
        row.encode(self);
    }

    pub(crate) fn encode_window(&mut self, w: &Window) {
        let ints = [
            Some(w.start),
            Some(w.end),
            Some(w.count as i64),
            Some(w.first.timestamp),
            Some(w.last.timestamp),
            Some(w.revision as i64),
            None,
        ];
        let mean = w.sum / w.count as f64;
        let floats = [
            Some(w.sum),
            Some(w.min),
            Some(w.max),
            Some(mean),
            Some(w.first.value),
            Some(w.last.value),
            Some(w.increase),
            Some(w.sum_squares),
            None,
        ];
        self.append_figures(&ints, &floats);
        self.sketch.append_option(w.sketch.as_deref());
    }

    pub(crate) fn encode_sample(&mut self, s: &Sample) {
        let mut ints = [None; 7];
        ints[I_TIMESTAMP] = Some(s.timestamp);
        let mut floats = [None; 9];
        floats[F_VALUE] = Some(s.value);
        self.append_figures(&ints, &floats);
        self.sketch.append_null();
    }

    fn append_figures(&mut self, ints: &[Option<i64>; 7], floats: &[Option<f64>; 9]) {
        for (b, v) in self.ints.iter_mut().zip(ints) {
            b.append_option(*v);
        }
        for (b, v) in self.floats.iter_mut().zip(floats) {
            b.append_option(*v);
        }
    }

    /// The rows appended so far as one batch; the builder is empty again.
    pub fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.metric.finish()),
            Arc::new(self.labels.finish()),
        ];
        cols.extend(
            self.promoted_cols
                .iter_mut()
                .map(|c| Arc::new(c.finish()) as ArrayRef),
        );
        let [start, end, count, first_ts, last_ts, revision, timestamp] = &mut self.ints;
        let [sum, min, max, mean, first, last, increase, sum_squares, value] = &mut self.floats;
        let i = |b: &mut Int64Builder| Arc::new(b.finish()) as ArrayRef;
        let f = |b: &mut Float64Builder| Arc::new(b.finish()) as ArrayRef;
        cols.extend([
            i(start),
            i(end),
            i(count),
            f(sum),
            f(min),
            f(max),
            f(mean),
            f(first),
            i(first_ts),
            f(last),
            i(last_ts),
            f(increase),
            f(sum_squares),
            i(revision),
            Arc::new(self.sketch.finish()) as ArrayRef,
            i(timestamp),
            f(value),
        ]);
        self.len = 0;
        RecordBatch::try_new(self.schema.clone(), cols).expect("columns follow the schema")
    }
}

/// A decoded batch's columns, looked up by name (files may carry other promoted columns).
pub(crate) struct BatchView<'a> {
    metric: &'a StringArray,
    labels: &'a MapArray,
    keys: &'a StringArray,
    values: &'a StringArray,
    ints: [Option<&'a Int64Array>; 7],
    floats: [Option<&'a Float64Array>; 9],
    sketch: Option<&'a BinaryArray>,
}

/// The columns a reader of `T` rows projects.
pub(crate) fn projected_columns<T: ColdRow>() -> Vec<&'static str> {
    let mut v = vec![METRIC, LABELS];
    v.extend(T::COLUMNS);
    v
}

pub(crate) const WINDOW_COLUMNS: &[&str] = &[
    START,
    END,
    COUNT,
    SUM,
    MIN,
    MAX,
    FIRST,
    FIRST_TS,
    LAST,
    LAST_TS,
    INCREASE,
    SUM_SQUARES,
    REVISION,
    SKETCH,
];
pub(crate) const RAW_COLUMNS: &[&str] = &[TIMESTAMP, VALUE];

impl<'a> BatchView<'a> {
    /// Views `batch`; `Err` names a missing or mistyped column.
    pub fn new(batch: &'a RecordBatch) -> Result<BatchView<'a>, String> {
        fn col<'b, A: 'static>(b: &'b RecordBatch, name: &str) -> Result<Option<&'b A>, String> {
            match b.column_by_name(name) {
                None => Ok(None),
                Some(c) => c
                    .as_any()
                    .downcast_ref::<A>()
                    .map(Some)
                    .ok_or_else(|| format!("column {name:?} has type {}", c.data_type())),
            }
        }
        fn need<T>(v: Option<T>, name: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("column {name:?} is missing"))
        }
        let labels: &MapArray = need(col(batch, LABELS)?, LABELS)?;
        let strings = |a: &'a ArrayRef| {
            a.as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| "labels map is not string to string".to_string())
        };
        let int_names = [START, END, COUNT, FIRST_TS, LAST_TS, REVISION, TIMESTAMP];
        let float_names = [
            SUM,
            MIN,
            MAX,
            MEAN,
            FIRST,
            LAST,
            INCREASE,
            SUM_SQUARES,
            VALUE,
        ];
        let mut ints = [None; 7];
        for (slot, n) in ints.iter_mut().zip(int_names) {
            *slot = col(batch, n)?;
        }
        let mut floats = [None; 9];
        for (slot, n) in floats.iter_mut().zip(float_names) {
            *slot = col(batch, n)?;
        }
        Ok(BatchView {
            metric: need(col(batch, METRIC)?, METRIC)?,
            keys: strings(labels.keys())?,
            values: strings(labels.values())?,
            labels,
            ints,
            floats,
            sketch: col(batch, SKETCH)?,
        })
    }

    pub fn len(&self) -> usize {
        self.metric.len()
    }

    fn label_range(&self, i: usize) -> std::ops::Range<usize> {
        let o = self.labels.value_offsets();
        o[i] as usize..o[i + 1] as usize
    }

    /// True when row `i` belongs to the series `(metric, rest)`.
    pub fn same_series(&self, i: usize, metric: &str, rest: &Labels) -> bool {
        let r = self.label_range(i);
        self.metric.value(i) == metric
            && r.len() == rest.len()
            && r.zip(rest).all(|(j, l)| {
                self.keys.value(j) == l.name.as_str() && self.values.value(j) == l.value.as_str()
            })
    }

    /// The series of row `i`.
    pub fn series(&self, i: usize) -> (String, Labels) {
        let mut v: Vec<Label> = self
            .label_range(i)
            .map(|j| Label {
                name: self.keys.value(j).to_string(),
                value: self.values.value(j).to_string(),
            })
            .collect();
        // Files written by Strata hold sorted labels; sort anyway so a foreign file cannot break
        // the label-set invariant.
        v.sort();
        v.dedup_by(|a, b| a.name == b.name);
        (self.metric.value(i).to_string(), Labels::from_sorted(v))
    }

    fn int(&self, c: usize, i: usize, name: &str) -> Result<i64, String> {
        match self.ints[c] {
            Some(a) if a.is_valid(i) => Ok(a.value(i)),
            _ => Err(format!("row {i} has no {name}")),
        }
    }

    fn float(&self, c: usize, i: usize, name: &str) -> Result<f64, String> {
        match self.floats[c] {
            Some(a) if a.is_valid(i) => Ok(a.value(i)),
            _ => Err(format!("row {i} has no {name}")),
        }
    }

    /// The window in row `i`.
    pub fn window(&self, i: usize) -> Result<Window, String> {
        Ok(Window {
            start: self.int(I_START, i, START)?,
            end: self.int(I_END, i, END)?,
            count: self.int(I_COUNT, i, COUNT)? as u64,
            sum: self.float(F_SUM, i, SUM)?,
            sum_squares: self.float(F_SUM_SQUARES, i, SUM_SQUARES)?,
            min: self.float(F_MIN, i, MIN)?,
            max: self.float(F_MAX, i, MAX)?,
            first: Sample::new(
                self.int(I_FIRST_TS, i, FIRST_TS)?,
                self.float(F_FIRST, i, FIRST)?,
            ),
            last: Sample::new(
                self.int(I_LAST_TS, i, LAST_TS)?,
                self.float(F_LAST, i, LAST)?,
            ),
            increase: self.float(F_INCREASE, i, INCREASE)?,
            revision: self.int(I_REVISION, i, REVISION)? as u64,
            sketch: self
                .sketch
                .filter(|s| s.is_valid(i))
                .map(|s| s.value(i).to_vec()),
        })
    }

    /// The raw sample in row `i`.
    pub fn sample(&self, i: usize) -> Result<Sample, String> {
        Ok(Sample::new(
            self.int(I_TIMESTAMP, i, TIMESTAMP)?,
            self.float(F_VALUE, i, VALUE)?,
        ))
    }
}

/// True when the series `(metric, rest)` passes every matcher (a missing label is empty).
pub(crate) fn series_matches(matchers: &[Matcher], metric: &str, rest: &Labels) -> bool {
    matchers.iter().all(|m| {
        let v = if m.name == METRIC_NAME {
            metric
        } else {
            rest.get(&m.name).unwrap_or_default()
        };
        m.matches(v)
    })
}
