//! Test data and file helpers shared by the cold tier's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use strata_model::{Labels, Sample, SeriesSamples};
use strata_tier::cold::{SeriesWindows, Window};

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;
pub const HOUR: i64 = 3_600_000;

/// A 1-hour window whose figures all derive from `v`: a sample a minute in `(start, end]`.
pub fn window(start: i64, v: f64, revision: u64) -> Window {
    Window {
        start,
        end: start + HOUR,
        count: 60,
        sum: 60.0 * v,
        sum_squares: 60.0 * v * v + 1.0,
        min: v - 2.0,
        max: v + 2.0,
        first: Sample::new(start + 60_000, v - 1.0),
        last: Sample::new(start + HOUR, v + 1.0),
        increase: v.abs(),
        revision,
        sketch: revision.is_multiple_of(2).then(|| v.to_le_bytes().to_vec()),
    }
}

/// The labels of device `d` at site `s`.
pub fn labels(metric: &str, site: usize, device: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", metric.to_string()),
        ("site", format!("site-{site}")),
        ("device", format!("dev-{device:03}")),
        ("fw", "1.2".to_string()),
    ])
    .unwrap()
}

/// `devices` temperature series spread over 3 sites, `hours` windows each from `T0`.
pub fn fleet(devices: usize, hours: i64, revision: u64) -> Vec<SeriesWindows> {
    (0..devices)
        .map(|d| SeriesWindows {
            labels: labels("temperature_celsius", d % 3, d),
            windows: (0..hours)
                .map(|h| window(T0 + h * HOUR, 20.0 + d as f64 + h as f64 * 0.25, revision))
                .collect(),
        })
        .collect()
}

/// Raw samples every 15 minutes for `hours` from `T0`.
pub fn raw(devices: usize, hours: i64) -> Vec<SeriesSamples> {
    (0..devices)
        .map(|d| SeriesSamples {
            labels: labels("temperature_celsius", d % 3, d),
            samples: (0..hours * 4)
                .map(|i| Sample::new(T0 + i * 900_000, d as f64 + i as f64))
                .collect(),
        })
        .collect()
}

/// Every `*.parquet` file under `dir`: what a reader globbing `**/*.parquet` sees.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir`, relative.
pub fn all_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    out.sort();
    out
}

/// `(metric, labels map, start-or-timestamp, revision)` of one row.
pub type ForeignRow = (String, Vec<(String, String)>, i64, Option<i64>);

/// Every row in the files, read with the parquet crate's reader: what a foreign reader sees.
pub fn foreign_rows(files: &[PathBuf]) -> Vec<ForeignRow> {
    use arrow_array::{Array, Int64Array, MapArray, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut out = Vec::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let metric = col("metric");
            let metric = metric.as_any().downcast_ref::<StringArray>().unwrap();
            let labels = col("labels");
            let labels = labels.as_any().downcast_ref::<MapArray>().unwrap();
            let (start, ts, rev) = (col("start"), col("timestamp"), col("revision"));
            let start = start.as_any().downcast_ref::<Int64Array>().unwrap();
            let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
            let rev = rev.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                let m = labels.value(i);
                let k = m.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let v = m.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                let l = (0..k.len())
                    .map(|j| (k.value(j).to_string(), v.value(j).to_string()))
                    .collect();
                let time = if start.is_valid(i) {
                    start.value(i)
                } else {
                    ts.value(i)
                };
                out.push((
                    metric.value(i).to_string(),
                    l,
                    time,
                    rev.is_valid(i).then(|| rev.value(i)),
                ));
            }
        }
    }
    out
}
