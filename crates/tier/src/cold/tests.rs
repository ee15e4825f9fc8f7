//! Files written by the cold store, read back with the parquet crate's own (synchronous) reader:
//! the schema, encodings, compression, sort order and cutting are what the crate docs promise.

use super::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding};
use parquet::file::reader::{FileReader, SerializedFileReader};

fn window(start: i64, v: f64) -> Window {
    Window {
        start,
        end: start + 3_600_000,
        count: 4,
        sum: 4.0 * v,
        sum_squares: 4.0 * v * v,
        min: v - 1.0,
        max: v + 1.0,
        // A window holds `(start, end]`.
        first: Sample::new(start + 15_000, v - 1.0),
        last: Sample::new(start + 3_600_000, v + 1.0),
        increase: 2.0,
        revision: 0,
        sketch: Some(vec![1, 2, 3]),
    }
}

/// Three series, given out of order, `hours` windows each from 2026-01-01.
fn series(hours: i64) -> Vec<SeriesWindows> {
    let t0 = 1_767_225_600_000;
    ["d3", "d1", "d2"]
        .iter()
        .enumerate()
        .map(|(i, d)| SeriesWindows {
            labels: Labels::from_pairs([
                ("__name__", "temperature_celsius"),
                ("site", if i == 0 { "s2" } else { "s1" }),
                ("device", d),
                ("zone", "north"),
            ])
            .unwrap(),
            windows: (0..hours)
                .rev()
                .map(|h| window(t0 + h * 3_600_000, i as f64 * 10.0 + h as f64))
                .collect(),
        })
        .collect()
}

fn data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p)
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn open(dir: &std::path::Path, o: ColdOptions) -> ColdStore {
    ColdStore::open(dir.to_str().unwrap(), o).unwrap()
}

#[test]
fn file_schema_encoding_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        ColdOptions {
            row_group_rows: 10,
            ..ColdOptions::default()
        },
    );
    let tenant = Tenant::new("acme").unwrap();
    let s = store
        .write_windows(&tenant, Tier::Hour, &series(24))
        .unwrap();
    assert_eq!((s.files, s.rows), (1, 72));
    let files = data_files(dir.path());
    assert_eq!(files.len(), 1);
    let rel = files[0].strip_prefix(dir.path()).unwrap().to_str().unwrap();
    assert!(
        rel.starts_with("tenant=acme/tier=1h/day=2026-01-01/part-"),
        "{rel}"
    );

    let reader = SerializedFileReader::new(std::fs::File::open(&files[0]).unwrap()).unwrap();
    let meta = reader.metadata();
    assert_eq!(meta.num_row_groups(), 8, "72 rows in groups of 10");
    let names: Vec<String> = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    assert_eq!(
        names,
        [
            "metric",
            "labels.key_value.key",
            "labels.key_value.value",
            "site",
            "device",
            "job",
            "instance",
            "start",
            "end",
            "count",
            "sum",
            "min",
            "max",
            "mean",
            "first",
            "first_ts",
            "last",
            "last_ts",
            "increase",
            "sum_squares",
            "revision",
            "sketch",
            "timestamp",
            "value"
        ]
    );
    let rg = meta.row_group(0);
    for c in rg.columns() {
        assert!(matches!(c.compression(), Compression::ZSTD(_)), "{c:?}");
    }
    let dict = |name: &str| {
        let c = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap();
        c.encodings().any(|e| e == Encoding::RLE_DICTIONARY)
    };
    for name in [
        "metric",
        "labels.key_value.key",
        "labels.key_value.value",
        "site",
    ] {
        assert!(dict(name), "{name} is dictionary-encoded");
    }
    assert!(!dict("sum"), "float figures are stored plain");

    // Rows: series sorted by metric then labels, each contiguous, windows in time order.
    let batches: Vec<_> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&files[0]).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let v = schema::BatchView::new(b).unwrap();
        let site = b
            .column_by_name("site")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        for i in 0..v.len() {
            let (m, rest) = v.series(i);
            assert_eq!(Some(site.value(i)), rest.get("site"), "promoted copy");
            rows.push((
                m,
                rest.get("device").unwrap().to_string(),
                v.window(i).unwrap(),
            ));
        }
    }
    assert_eq!(rows.len(), 72);
    let devices: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let mut sorted = devices.clone();
    sorted.sort();
    assert_eq!(devices, sorted, "series contiguous, in label order");
    assert!(rows
        .windows(2)
        .filter(|w| w[0].1 == w[1].1)
        .all(|w| w[0].2.start < w[1].2.start));
    let first = &rows[0].2;
    assert_eq!(first, &window(1_767_225_600_000, 10.0));
}

#[test]
fn files_are_cut_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        ColdOptions {
            row_group_rows: 8,
            target_file_bytes: 1,
            ..ColdOptions::default()
        },
    );
    let tenant = Tenant::new("acme").unwrap();
    let s = store
        .write_windows(&tenant, Tier::Hour, &series(16))
        .unwrap();
    // One row group per file: 48 rows in files of 8.
    assert_eq!((s.files, s.rows), (6, 48));
    assert_eq!(data_files(dir.path()).len(), 6);
    let back = store
        .scan_windows(&tenant, Tier::Hour, &[], i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(back.iter().map(|s| s.windows.len()).sum::<usize>(), 48);
    // The rows of a series spread over several files still come back as one series.
    assert_eq!(back.len(), 3);
}

#[test]
fn row_groups_are_pruned_by_metric_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        ColdOptions {
            row_group_rows: 24,
            ..ColdOptions::default()
        },
    );
    let tenant = Tenant::new("acme").unwrap();
    let mut all = series(24);
    all[0].labels.set("__name__", "humidity");
    store.write_windows(&tenant, Tier::Hour, &all).unwrap();
    let entry = store.manifest.read().files[0].clone();
    let path = join(&store.root, &entry.path);
    let matchers = [Matcher::equal("__name__", "humidity")];
    let sel = Selection {
        matchers: &matchers,
        start: i64::MIN,
        end: i64::MAX,
    };
    let got = store
        .run(file::read::<Window>(
            store.store.clone(),
            &path,
            entry.bytes,
            &sel,
            &store.footers,
        ))
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rows.len(), 24);
    // Row groups hold one series each here; the statistics alone must skip the other two.
    let reader =
        SerializedFileReader::new(std::fs::File::open(data_files(dir.path())[0].clone()).unwrap())
            .unwrap();
    let leaves = file::Leaves::of(
        reader.metadata().file_metadata().schema_descr(),
        <Window as ColdRow>::TIME_BOUNDS,
    );
    let kept = (0..reader.metadata().num_row_groups())
        .filter(|&i| sel.may_match(reader.metadata().row_group(i), &leaves))
        .count();
    assert_eq!(kept, 1);
    let late = Selection {
        matchers: &[],
        start: 1_767_225_600_000 + 30 * 3_600_000,
        end: i64::MAX,
    };
    let kept = (0..reader.metadata().num_row_groups())
        .filter(|&i| late.may_match(reader.metadata().row_group(i), &leaves))
        .count();
    assert_eq!(kept, 0, "no row group reaches past the day");
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ColdOptions::default());
    let tenant = Tenant::new("acme").unwrap();
    let mut s = series(1);
    s[0].labels = Labels::from_pairs([("site", "x")]).unwrap();
    assert!(matches!(
        store.write_windows(&tenant, Tier::Hour, &s),
        Err(ColdError::NoMetricName { .. })
    ));
    assert!(matches!(
        store.write_windows(&tenant, Tier::Raw, &series(1)),
        Err(ColdError::NotAWindowTier(Tier::Raw))
    ));
    for bad in ["tier", "start", "__name__", "9x", ""] {
        let o = ColdOptions {
            promoted_labels: vec![bad.into()],
            ..ColdOptions::default()
        };
        assert!(
            matches!(
                ColdStore::open(dir.path().to_str().unwrap(), o),
                Err(ColdError::Options(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn series_spanning_batches_and_row_groups_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        ColdOptions {
            row_group_rows: 1000,
            ..ColdOptions::default()
        },
    );
    let tenant = Tenant::new("acme").unwrap();
    // 3 x 5000 rows: the reader's batches of 8192 rows end inside the second series.
    let raw: Vec<SeriesSamples> = (0..3)
        .map(|d| SeriesSamples {
            labels: Labels::from_pairs([("__name__", "m"), ("device", &format!("d{d}"))]).unwrap(),
            samples: (0..5000)
                .map(|i| Sample::new(1_767_225_600_000 + i * 1000, (d * 5000 + i) as f64))
                .collect(),
        })
        .collect();
    store.write_raw(&tenant, &raw).unwrap();
    assert_eq!(
        store.scan_raw(&tenant, &[], i64::MIN, i64::MAX).unwrap(),
        raw
    );
    let m = [Matcher::equal("device", "d1")];
    assert_eq!(
        store.scan_raw(&tenant, &m, i64::MIN, i64::MAX).unwrap(),
        raw[1..2]
    );
}
