//! The storage engine against real files: ordering rules, flush and reopen, tenants, retention,
//! compaction, damage, limits, and the compression figure.

use std::path::Path;
use std::sync::Arc;
use strata_model::{
    Labels, Limits, Matcher, MetadataHints, Sample, SelectHints, Storage, StorageError, Tenant,
    WriteBatch,
};
use strata_tsdb::layout::tenant_dir;
use strata_tsdb::{SeriesLimiter, Tsdb, TsdbError, TsdbOptions};

const H: i64 = 3_600_000;

fn now() -> i64 {
    strata_model::time::now_ms()
}

fn open(dir: &Path) -> Tsdb {
    open_with(dir, TsdbOptions::default())
}

fn open_with(dir: &Path, opts: TsdbOptions) -> Tsdb {
    let lim = SeriesLimiter::new(opts.max_series_per_metric);
    Tsdb::open(dir, opts, lim).unwrap()
}

/// A series' labels, a timestamp and a value.
type Row<'a> = (&'a [(&'a str, &'a str)], i64, f64);

fn batch(tenant: &str, rows: &[Row<'_>]) -> WriteBatch {
    let mut b = WriteBatch::new(Tenant::new(tenant).unwrap());
    for (labels, t, v) in rows {
        let mut l: Vec<(&[u8], &[u8])> = labels
            .iter()
            .map(|(a, b)| (a.as_bytes(), b.as_bytes()))
            .collect();
        b.push_series(&mut l, &[Sample::new(*t, *v)], None, &Limits::default())
            .unwrap();
    }
    b
}

fn all(db: &Tsdb, tenant: &str, name: &str) -> Vec<(String, Vec<(i64, f64)>)> {
    let hints = SelectHints {
        start: i64::MIN / 2,
        end: i64::MAX / 2,
        max_samples: None,
        fields: strata_model::Fields::All,
    };
    db.select(
        &Tenant::new(tenant).unwrap(),
        &[Matcher::equal("__name__", name)],
        &hints,
    )
    .unwrap()
    .into_iter()
    .map(|s| {
        (
            s.labels.to_string(),
            s.samples.iter().map(|x| (x.timestamp, x.value)).collect(),
        )
    })
    .collect()
}

const UP_A: &[(&str, &str)] = &[("__name__", "up"), ("job", "a")];

#[test]
fn order_duplicates_and_conflicts_across_head_blocks_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - 10 * H;
    let db = open(dir.path());
    let st = db.append(
        &batch(
            "default",
            &[(UP_A, t + 2000, 2.0), (UP_A, t, 0.0), (UP_A, t + 1000, 1.0)],
        ),
        0,
    );
    assert_eq!((st.appended, st.new_series), (3, 1));
    let st = db.append(&batch("default", &[(UP_A, t + 1000, 1.0)]), 1);
    assert_eq!(st.duplicates, 1);
    let st = db.append(&batch("default", &[(UP_A, t + 1000, 1.5)]), 2);
    assert_eq!(st.overwritten, 1);
    assert_eq!(
        all(&db, "default", "up"),
        vec![(
            "up{job=\"a\"}".into(),
            vec![(t, 0.0), (t + 1000, 1.5), (t + 2000, 2.0)]
        )]
    );
    assert_eq!(db.flush().unwrap(), Some(2));
    // Now in a block: a repeat is still a duplicate, a new value still wins.
    let st = db.append(
        &batch(
            "default",
            &[(UP_A, t, 0.0), (UP_A, t + 2000, 9.0), (UP_A, t + 500, 0.5)],
        ),
        3,
    );
    assert_eq!((st.duplicates, st.overwritten, st.appended), (1, 1, 1));
    let want = vec![(
        "up{job=\"a\"}".to_string(),
        vec![(t, 0.0), (t + 500, 0.5), (t + 1000, 1.5), (t + 2000, 9.0)],
    )];
    assert_eq!(all(&db, "default", "up"), want);
    db.flush().unwrap();
    drop(db);
    let db = open(dir.path());
    assert_eq!(db.checkpoint_offset(), Some(3));
    assert_eq!(all(&db, "default", "up"), want);
    // Compaction merges the two blocks and changes no answer.
    let before = db.stats().blocks;
    let m = db.maintain(now()).unwrap();
    assert!(before >= 2 && m.compacted_blocks >= 2, "{before} {m:?}");
    assert!(db.stats().blocks < before);
    assert_eq!(all(&db, "default", "up"), want);
    drop(db);
    assert_eq!(all(&open(dir.path()), "default", "up"), want);
}

#[test]
fn tenants_are_isolated_on_disk_and_in_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - H;
    let db = open(dir.path());
    db.append(&batch("acme", &[(UP_A, t, 1.0)]), 0);
    db.append(&batch("other", &[(UP_A, t, 2.0)]), 1);
    assert_eq!(all(&db, "acme", "up")[0].1, vec![(t, 1.0)]);
    db.flush().unwrap();
    for t in ["acme", "other"] {
        assert!(tenant_dir(dir.path(), &Tenant::new(t).unwrap()).is_dir());
    }
    assert_eq!(all(&db, "acme", "up")[0].1, vec![(t, 1.0)]);
    assert_eq!(all(&db, "other", "up")[0].1, vec![(t, 2.0)]);
    assert!(all(&db, "nobody", "up").is_empty());
    let names = db
        .label_names(
            &Tenant::new("acme").unwrap(),
            &[],
            &MetadataHints::range(i64::MIN, i64::MAX),
        )
        .unwrap();
    assert_eq!(names, vec!["__name__", "job"]);
}

#[test]
fn select_ranges_limits_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - 5 * H;
    let db = open(dir.path());
    let rows: Vec<Row<'_>> = (0..100).map(|i| (UP_A, t + i * 1000, i as f64)).collect();
    db.append(&batch("default", &rows), 0);
    db.append(
        &batch(
            "default",
            &[(&[("__name__", "up"), ("job", "b")], t + 50_000, 1.0)],
        ),
        1,
    );
    let tenant = Tenant::default();
    let m = [Matcher::equal("__name__", "up")];
    let r = db
        .select(
            &tenant,
            &m,
            &SelectHints {
                start: t + 10_000,
                end: t + 19_000,
                max_samples: None,
                fields: strata_model::Fields::All,
            },
        )
        .unwrap();
    assert_eq!(r.len(), 1, "job=b has nothing in the range");
    assert_eq!(r[0].samples.len(), 10);
    let e = db
        .select(
            &tenant,
            &m,
            &SelectHints {
                start: t,
                end: t + 100_000,
                max_samples: Some(50),
                fields: strata_model::Fields::All,
            },
        )
        .unwrap_err();
    assert!(matches!(e, StorageError::TooManySamples { limit: 50 }));
    assert!(matches!(
        db.select(
            &tenant,
            &[Matcher::equal("job", "")],
            &SelectHints {
                start: 0,
                end: 1,
                max_samples: None,
                fields: strata_model::Fields::All,
            }
        ),
        Err(StorageError::EmptyMatch)
    ));
    db.flush().unwrap();
    let series = db
        .series(&tenant, &m, &MetadataHints::range(t + 40_000, t + 60_000))
        .unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(
        series[1],
        Labels::from_pairs([("__name__", "up"), ("job", "b")]).unwrap()
    );
    assert_eq!(
        db.label_values(
            &tenant,
            "job",
            &m,
            &MetadataHints::range(t + 70_000, t + 80_000)
        )
        .unwrap(),
        vec!["a"]
    );
}

#[test]
fn retention_deletes_whole_old_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TsdbOptions {
        retention_ms: 48 * H,
        ..TsdbOptions::default()
    };
    let db = open_with(dir.path(), opts);
    let n = now();
    db.append(
        &batch("default", &[(UP_A, n - 40 * H, 1.0), (UP_A, n - H, 2.0)]),
        0,
    );
    let st = db.append(&batch("default", &[(UP_A, n - 50 * H, 1.0)]), 1);
    assert_eq!(st.too_old, 1);
    db.flush().unwrap();
    assert_eq!(db.stats().blocks, 2);
    // Ten hours later the older block is past the retention; the newer one stays.
    let m = db.maintain(n + 10 * H).unwrap();
    assert_eq!(m.deleted_blocks, 1);
    assert_eq!(all(&db, "default", "up")[0].1, vec![(n - H, 2.0)]);
    assert_eq!(db.stats().blocks, 1);
}

/// An archive that records what it is given and refuses while `fail` is set.
#[derive(Default)]
struct Archive {
    fail: std::sync::atomic::AtomicBool,
    got: parking_lot::Mutex<Vec<(Tenant, strata_model::SeriesSamples)>>,
}

impl strata_tsdb::ExpiryArchive for Archive {
    fn archive(
        &self,
        tenant: &Tenant,
        series: &[strata_model::SeriesSamples],
    ) -> Result<(), String> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("store unreachable".into());
        }
        let mut got = self.got.lock();
        got.extend(series.iter().map(|s| (tenant.clone(), s.clone())));
        Ok(())
    }
}

#[test]
fn expiring_blocks_are_archived_before_deletion_and_kept_when_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TsdbOptions {
        retention_ms: 48 * H,
        ..TsdbOptions::default()
    };
    let db = open_with(dir.path(), opts);
    let archive = Arc::new(Archive::default());
    db.set_expiry_archive(archive.clone());
    let n = now();
    db.append(
        &batch(
            "default",
            &[
                (UP_A, n - 40 * H, 1.0),
                (UP_A, n - 40 * H + 15_000, 1.5),
                (&[("__name__", "up"), ("job", "b")], n - 40 * H, 3.0),
            ],
        ),
        0,
    );
    db.append(&batch("default", &[(UP_A, n - H, 2.0)]), 1);
    db.flush().unwrap();
    assert_eq!(db.stats().blocks, 2);
    // The archive fails: the expired block stays, readable, and the error names it.
    archive
        .fail
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let e = db.maintain(n + 10 * H).unwrap_err();
    assert!(e.to_string().contains("store unreachable"), "{e}");
    assert_eq!(db.stats().blocks, 2);
    assert_eq!(all(&db, "default", "up")[0].1.len(), 3);
    // It recovers: the block's samples are archived, then the block goes.
    archive
        .fail
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let m = db.maintain(n + 10 * H).unwrap();
    assert_eq!(m.deleted_blocks, 1);
    assert_eq!(db.stats().blocks, 1);
    let got: Vec<(String, Vec<(i64, f64)>)> = archive
        .got
        .lock()
        .iter()
        .map(|(t, s)| {
            assert_eq!(t, &Tenant::default());
            (
                s.labels.to_string(),
                s.samples.iter().map(|x| (x.timestamp, x.value)).collect(),
            )
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].1,
        vec![(n - 40 * H, 1.0), (n - 40 * H + 15_000, 1.5)]
    );
    assert_eq!(got[1].1, vec![(n - 40 * H, 3.0)]);
}

#[test]
fn damaged_blocks_are_reported_and_torn_writes_removed() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - H;
    {
        let db = open(dir.path());
        db.append(&batch("default", &[(UP_A, t, 1.0)]), 0);
        db.flush().unwrap();
    }
    let tdir = tenant_dir(dir.path(), &Tenant::default());
    std::fs::write(tdir.join("0000000000000099_0_1.tmp"), b"half a block").unwrap();
    let db = open(dir.path());
    assert!(!tdir.join("0000000000000099_0_1.tmp").exists());
    drop(db);
    let blk = std::fs::read_dir(&tdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().unwrap() == "blk")
        .unwrap();
    let good = std::fs::read(&blk).unwrap();
    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("flipped index", {
            let mut b = good.clone();
            let n = b.len();
            b[n - 30] ^= 0xff;
            b
        }),
    ] {
        std::fs::write(&blk, &bytes).unwrap();
        match Tsdb::open(dir.path(), TsdbOptions::default(), SeriesLimiter::new(10)) {
            Err(TsdbError::Corrupt { path, .. }) => assert_eq!(path, blk, "{what}"),
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: not detected"),
        }
    }
    // A damaged chunk is found when read, as an error naming the file.
    let mut b = good.clone();
    b[40] ^= 0xff;
    std::fs::write(&blk, &b).unwrap();
    let db = open(dir.path());
    let e = db
        .select(
            &Tenant::default(),
            &[Matcher::equal("__name__", "up")],
            &SelectHints {
                start: 0,
                end: i64::MAX,
                max_samples: None,
                fields: strata_model::Fields::All,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains(".blk"), "{e}");
}

#[test]
fn series_limit_is_shared_and_counted() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lim = SeriesLimiter::new(3);
    let opts = TsdbOptions::default();
    let a = Tsdb::open(dirs.0.path(), opts.clone(), Arc::clone(&lim)).unwrap();
    let b = Tsdb::open(dirs.1.path(), opts, lim).unwrap();
    let t = now() - H;
    let l: Vec<Vec<(&str, String)>> = (0..5)
        .map(|i| vec![("__name__", "m".to_string()), ("d", format!("{i}"))])
        .collect();
    let rows = |r: std::ops::Range<usize>| -> WriteBatch {
        let mut w = WriteBatch::new(Tenant::default());
        for i in r {
            let mut x: Vec<(&[u8], &[u8])> = l[i]
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
            w.push_series(&mut x, &[Sample::new(t, 1.0)], None, &Limits::default())
                .unwrap();
        }
        w
    };
    assert_eq!(a.append(&rows(0..2), 0).rejected_series_limit, 0);
    let st = b.append(&rows(2..5), 0);
    assert_eq!(
        (st.new_series, st.rejected_series_limit),
        (1, 2),
        "the limit spans shards"
    );
    // Existing series keep being written.
    assert_eq!(a.append(&rows(0..2), 1).duplicates, 2);
    let other = batch("other", &[(&[("__name__", "m"), ("d", "9")], t, 1.0)]);
    assert_eq!(a.append(&other, 2).new_series, 1, "limits are per tenant");
}

#[test]
fn compression_on_the_benchmark_workload() {
    // The shape of ../shared/bench's workload: 8 metric kinds, 15 s interval, one day.
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let (series, points) = (64usize, 5760usize);
    let end = now() - H;
    let start = end - (points as i64 - 1) * 15_000;
    let mut state: Vec<f64> = (0..series)
        .map(|i| [20.0, 50.0, 100.0, 500.0, 1e5, 1e3, 20.0, 230.0][i % 8])
        .collect();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut unit = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let names: Vec<(String, String)> = (0..series)
        .map(|i| (format!("metric_{}", i % 8), format!("dev-{:05}", i / 8)))
        .collect();
    for p in 0..points {
        let t = start + p as i64 * 15_000;
        let mut b = WriteBatch::new(Tenant::default());
        for i in 0..series {
            let r = unit();
            let v = &mut state[i];
            *v = match i % 8 {
                0 => ((*v + (r - 0.5) * 0.4) * 10.0).round() / 10.0,
                1 => ((*v + (r - 0.5)) * 10.0).round() / 10.0,
                2 => {
                    if r < 0.3 {
                        ((*v - 0.1) * 10.0).round() / 10.0
                    } else {
                        *v
                    }
                }
                3 => (*v + (r - 0.5) * 40.0).round(),
                4 => *v + (r * 2000.0).round(),
                5 => *v + if r < 0.02 { 1.0 } else { 0.0 },
                6 => (((*v + (r - 0.5) * 6.0).clamp(0.0, 100.0)) * 100.0).round() / 100.0,
                _ => ((230.0 + (r - 0.5) * 4.0) * 10.0).round() / 10.0,
            };
            let (m, d) = &names[i];
            let mut l: Vec<(&[u8], &[u8])> = vec![
                (b"__name__", m.as_bytes()),
                (b"device", d.as_bytes()),
                (b"region", b"r1"),
                (b"site", b"site-001"),
            ];
            b.push_series(&mut l, &[Sample::new(t, *v)], None, &Limits::default())
                .unwrap();
        }
        db.append(&b, p as u64);
    }
    db.flush().unwrap();
    db.maintain(now()).unwrap();
    let bytes = db.stats().block_bytes as f64;
    let bps = bytes / (series * points) as f64;
    println!(
        "bytes per sample on disk: {bps:.3} ({} blocks)",
        db.stats().blocks
    );
    assert!(bps < 2.0, "{bps}");
    let got = all(&db, "default", "metric_0");
    assert_eq!(got.len(), series / 8);
    assert!(got.iter().all(|s| s.1.len() == points));
}

/// Runs appended by handle overwrite earlier runs and single samples at the same timestamps,
/// in the head, after a flush to blocks, and after reopening.
#[test]
fn runs_by_handle_overwrite_in_write_order() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tenant::default_tenant();
    let key = Labels::from_pairs([("__name__", "w"), ("device", "d")])
        .unwrap()
        .key();
    let base = now() / 60_000 * 60_000 - 3_600_000;
    let s = |i: i64, v: f64| Sample::new(base + i * 60_000, v);
    let want = vec![
        (base, 10.0),
        (base + 60_000, 11.0),
        (base + 120_000, 2.0),
        (base + 180_000, 13.0),
    ];
    {
        let db = open(dir.path());
        let h = db.series_handle(&t, key.as_ref());
        db.append_handles(&t, &[(h, s(0, 0.0)), (h, s(2, 2.0))], 1);
        assert_eq!(db.append_runs(&t, &[(h, &[s(0, 10.0), s(1, 1.0)])], 2), 2);
        db.flush().unwrap();
        // A later run rewrites a window already in a block and adds one.
        db.append_runs(&t, &[(h, &[s(1, 11.0), s(3, 13.0)])], 3);
        assert_eq!(all(&db, "default", "w")[0].1, want, "head over blocks");
        db.flush().unwrap();
        assert_eq!(all(&db, "default", "w")[0].1, want, "blocks");
    }
    let db = open(dir.path());
    assert_eq!(all(&db, "default", "w")[0].1, want, "reopened");
}

/// A flush lets no series of a head that handed out handles go; released handles let their
/// series leave once flushed (one with head samples stays), the others are renumbered and
/// still write to their own series, and what left still answers from blocks.
#[test]
fn released_handles_leave_and_the_rest_are_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tenant::default_tenant();
    let db = open(dir.path());
    let key = |i: usize| {
        Labels::from_pairs([("__name__", "h"), ("device", &format!("d{i}"))])
            .unwrap()
            .key()
    };
    let base = now() / 60_000 * 60_000 - 3_600_000;
    let hs: Vec<_> = (0..4)
        .map(|i| db.series_handle(&t, key(i).as_ref()))
        .collect();
    for (i, &h) in hs.iter().enumerate() {
        db.append_runs(&t, &[(h, &[Sample::new(base, i as f64)])], 1);
    }
    db.flush().unwrap();
    db.flush().unwrap();
    assert_eq!(db.stats().series, 4, "a flush keeps series behind handles");
    // d3 gets a sample the flush has not persisted: released, it stays.
    db.append_runs(&t, &[(hs[3], &[Sample::new(base + 1, 3.5)])], 2);
    let r = db.release_handles(&t, &[hs[0], hs[2], hs[3]]);
    assert_eq!(db.stats().series, 2);
    assert!(r.get(hs[0]).is_none() && r.get(hs[2]).is_none());
    let (d1, d3) = (r.get(hs[1]).unwrap(), r.get(hs[3]).unwrap());
    db.append_runs(&t, &[(d1, &[Sample::new(base + 2, 11.0)])], 3);
    db.append_runs(&t, &[(d3, &[Sample::new(base + 2, 13.0)])], 3);
    // A released series comes back as a new one.
    let d0 = db.series_handle(&t, key(0).as_ref());
    db.append_runs(&t, &[(d0, &[Sample::new(base + 2, 10.0)])], 3);
    let want = vec![
        (
            "h{device=\"d0\"}".to_owned(),
            vec![(base, 0.0), (base + 2, 10.0)],
        ),
        (
            "h{device=\"d1\"}".to_owned(),
            vec![(base, 1.0), (base + 2, 11.0)],
        ),
        ("h{device=\"d2\"}".to_owned(), vec![(base, 2.0)]),
        (
            "h{device=\"d3\"}".to_owned(),
            vec![(base, 3.0), (base + 1, 3.5), (base + 2, 13.0)],
        ),
    ];
    assert_eq!(all(&db, "default", "h"), want);
    db.flush().unwrap();
    assert_eq!(all(&db, "default", "h"), want);
}

#[test]
fn partial_reads_equal_full_reads_across_pages_blocks_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let start = (now() - 30 * H) / 15_000 * 15_000;
    let series: &[(&str, &str)] = &[("__name__", "m"), ("d", "1")];
    // Ten hours at 15 s of a noisy percentage (pco's kind of data): several 2 h blocks,
    // compacted into paged chunks.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut v = 50.0f64;
    let rows: Vec<Row<'_>> = (0..2400)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x >> 11) as f64 / (1u64 << 53) as f64;
            v = ((v + (r - 0.5) * 6.0).clamp(0.0, 100.0) * 100.0).round() / 100.0;
            (series, start + i * 15_000, v)
        })
        .collect();
    for (k, part) in rows.chunks(500).enumerate() {
        db.append(&batch("default", part), k as u64);
    }
    db.flush().unwrap();
    db.maintain(now()).unwrap();
    // A later block overwriting some of them, then overwrites and new samples left in the head.
    let over: Vec<Row<'_>> = (0..2400)
        .step_by(97)
        .map(|i| (series, start + i * 15_000, -(i as f64)))
        .collect();
    db.append(&batch("default", &over), 10);
    db.flush().unwrap();
    let head: Vec<Row<'_>> = (1000..2600)
        .step_by(13)
        .map(|i| (series, start + i * 15_000 + 5, i as f64 * 2.0))
        .chain(
            (0..2400)
                .step_by(331)
                .map(|i| (series, start + i * 15_000, 0.5)),
        )
        .collect();
    db.append(&batch("default", &head), 11);
    let full = all(&db, "default", "m");
    assert_eq!(full.len(), 1);
    let full = &full[0].1;
    assert!(full.len() > 2400);
    let end = start + 2600 * 15_000;
    let cuts: Vec<i64> = (0..40)
        .map(|k| start - 1 + k * (end - start) / 37)
        .collect();
    for &a in &cuts {
        for &b in cuts.iter().filter(|b| **b >= a) {
            let hints = SelectHints {
                start: a,
                end: b,
                max_samples: None,
                fields: strata_model::Fields::All,
            };
            let got: Vec<(i64, f64)> = db
                .select(
                    &Tenant::default(),
                    &[Matcher::equal("__name__", "m")],
                    &hints,
                )
                .unwrap()
                .into_iter()
                .flat_map(|s| s.samples)
                .map(|x| (x.timestamp, x.value))
                .collect();
            let want: Vec<(i64, f64)> = full
                .iter()
                .filter(|x| x.0 >= a && x.0 <= b)
                .copied()
                .collect();
            assert_eq!(got, want, "range [{a}, {b}]");
        }
    }
}

/// Series read lazily (as queries read them) hold exactly what an eager select returns, over
/// blocks, the head and rewrites of flushed timestamps, and ranges cutting through all three.
#[test]
fn lazy_reads_equal_eager_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - 5 * H;
    let db = open(dir.path());
    let b: &[(&str, &str)] = &[("__name__", "up"), ("job", "b")];
    let rows: Vec<Row<'_>> = (0..2000)
        .flat_map(|i| {
            [
                (UP_A, t + i * 1000, i as f64),
                (b, t + i * 2000, -(i as f64)),
            ]
        })
        .collect();
    db.append(&batch("default", &rows), 0);
    db.flush().unwrap();
    // Rewrites of flushed samples (the head wins) and new ones, out of order.
    let later: Vec<Row<'_>> = (0..300)
        .rev()
        .map(|i| (UP_A, t + i * 7000, 0.5 + i as f64))
        .collect();
    db.append(&batch("default", &later), 1);
    let tenant = Tenant::default();
    let m = [Matcher::equal("__name__", "up")];
    for (start, end) in [
        (t - H, t + 10 * H),
        (t + 500, t + 1_000_500),
        (t + 1_999_000, t + 1_999_000),
        (t + 5 * H, t + 6 * H),
    ] {
        let hints = SelectHints {
            start,
            end,
            max_samples: None,
            fields: strata_model::Fields::All,
        };
        // Each series read lazily with `fields`, appended after a sample already in the buffer;
        // series that turn out empty left out.
        let read_lazy = |fields| -> Vec<(Labels, Vec<Sample>)> {
            let hints = SelectHints { fields, ..hints };
            let mut got = Vec::new();
            for s in db.select_lazy(&tenant, &m, &hints).unwrap() {
                let mut buf = vec![Sample::new(0, 0.0)];
                s.read(&mut buf).unwrap();
                assert!(
                    s.weight() + 1 >= buf.len() - 1,
                    "weight covers what is read"
                );
                buf.remove(0);
                if !buf.is_empty() {
                    got.push((s.labels, buf));
                }
            }
            got
        };
        let eager: Vec<(Labels, Vec<Sample>)> = db
            .select(&tenant, &m, &hints)
            .unwrap()
            .into_iter()
            .map(|s| (s.labels, s.samples))
            .collect();
        assert_eq!(
            read_lazy(strata_model::Fields::All),
            eager,
            "range {start}..={end}"
        );
        // Timestamps only: the same timestamps (values may read as 0).
        let times = |v: &[(Labels, Vec<Sample>)]| -> Vec<(Labels, Vec<i64>)> {
            v.iter()
                .map(|(l, s)| (l.clone(), s.iter().map(|x| x.timestamp).collect()))
                .collect()
        };
        assert_eq!(
            times(&read_lazy(strata_model::Fields::Timestamps)),
            times(&eager),
            "timestamps of range {start}..={end}"
        );
        // Latest only: the last sample, from chunk metadata where the range ends past a chunk.
        let want: Vec<_> = eager
            .iter()
            .map(|(l, s)| (l.clone(), vec![*s.last().unwrap()]))
            .collect();
        assert_eq!(
            read_lazy(strata_model::Fields::Latest),
            want,
            "latest of range {start}..={end}"
        );
    }
}

/// One tenant whose directory cannot be written fails its own flush, not the others': they are
/// flushed, the checkpoint waits (the log holds the failing tenant's only copy), and once the
/// obstacle is gone the next flush catches up with nothing lost.
#[test]
fn a_failing_tenant_fails_only_its_own_flush() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - H;
    let db = open(dir.path());
    db.append(&batch("good", &[(UP_A, t, 1.0)]), 0);
    db.append(&batch("bad", &[(UP_A, t, 2.0)]), 1);
    // A file where the tenant's directory belongs.
    let bad = tenant_dir(dir.path(), &Tenant::new("bad").unwrap());
    std::fs::write(&bad, b"in the way").unwrap();
    match db.flush() {
        Err(TsdbError::Tenant { tenant, what, .. }) => {
            assert_eq!((tenant.as_str(), what), ("bad", "flush"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(db.stats().tenant_errors_total, 1);
    assert_eq!(db.checkpoint_offset(), None, "held back");
    assert_eq!(db.stats().blocks, 1, "the good tenant was flushed");
    assert_eq!(db.stats().head_samples, 1, "the bad tenant kept its head");
    assert_eq!(all(&db, "bad", "up")[0].1, vec![(t, 2.0)]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(db.flush().unwrap(), Some(1));
    drop(db);
    let db = open(dir.path());
    assert_eq!(all(&db, "good", "up")[0].1, vec![(t, 1.0)]);
    assert_eq!(all(&db, "bad", "up")[0].1, vec![(t, 2.0)]);
}

/// A tenant with a damaged block fails its own compaction; the other tenant's blocks are still
/// merged and its expired blocks still deleted.
#[test]
fn a_failing_tenant_fails_only_its_own_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TsdbOptions {
        retention_ms: 100 * H,
        ..TsdbOptions::default()
    };
    let db = open_with(dir.path(), opts.clone());
    let t = now() - 50 * H;
    for (i, v) in [1.0, 2.0].into_iter().enumerate() {
        let off = 3 * i as u64;
        db.append(&batch("good", &[(UP_A, t + i as i64, v)]), off);
        db.append(&batch("bad", &[(UP_A, t + i as i64, v)]), off + 1);
        db.append(&batch("good", &[(UP_A, now() - 99 * H, v)]), off + 2);
        db.flush().unwrap();
    }
    drop(db);
    // Damage every chunk of the bad tenant: the index still opens, the merge cannot read.
    let bad = tenant_dir(dir.path(), &Tenant::new("bad").unwrap());
    for f in std::fs::read_dir(&bad).unwrap() {
        let p = f.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        b[40] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let db = open_with(dir.path(), opts);
    assert_eq!(db.stats().blocks, 6);
    // Two hours on, the good tenant's oldest blocks are past the retention.
    match db.maintain(now() + 2 * H) {
        Err(TsdbError::Tenant { tenant, what, .. }) => {
            assert_eq!((tenant.as_str(), what), ("bad", "compaction"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(db.stats().tenant_errors_total, 1);
    // good: two expired deleted, two merged into one; bad: its two blocks left as they were.
    assert_eq!(db.stats().blocks, 3);
    assert_eq!(all(&db, "good", "up")[0].1, vec![(t, 1.0), (t + 1, 2.0)]);
}

/// A compaction window the latest flush wrote to is merged only once it holds eight blocks, so
/// frequent flushes do not rewrite it each time; once flushes leave it alone it is merged from
/// two blocks on.
#[test]
fn a_window_being_written_is_merged_only_from_eight_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = now() - H;
    let flush_one = |i: i64| {
        db.append(&batch("default", &[(UP_A, t + i, i as f64)]), i as u64);
        db.flush().unwrap();
    };
    for i in 0..2 {
        flush_one(i);
    }
    assert_eq!(db.maintain(now()).unwrap().compacted_blocks, 0);
    for i in 2..8 {
        flush_one(i);
        let merged = db.maintain(now()).unwrap().compacted_blocks;
        assert_eq!(
            merged,
            if i == 7 { 8 } else { 0 },
            "after {} flushes",
            i + 1
        );
    }
    assert_eq!(db.stats().blocks, 1);
    flush_one(8);
    assert_eq!(db.maintain(now()).unwrap().compacted_blocks, 0);
    // A flush that writes nothing there: the window is quiet, its two blocks are merged.
    db.flush().unwrap();
    assert_eq!(db.maintain(now()).unwrap().compacted_blocks, 2);
    let want: Vec<(i64, f64)> = (0..9).map(|i| (t + i, i as f64)).collect();
    assert_eq!(all(&db, "default", "up")[0].1, want);
}

/// A flush encodes and writes with no lock held: appends and reads go on while it runs, reads
/// see every sample throughout (those being written included), and what was appended during
/// the flush is kept for the next one.
#[test]
fn appends_and_reads_go_on_during_a_flush() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open(dir.path()));
    let t0 = now() - H;
    // Enough series that the flush takes a while.
    let n = 100_000;
    let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let fill = |range: std::ops::Range<usize>, t: i64| {
        let mut w = WriteBatch::new(Tenant::default());
        for d in &names[range] {
            let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"big"), (b"d", d.as_bytes())];
            w.push_series(&mut l, &[Sample::new(t, 1.0)], None, &Limits::default())
                .unwrap();
        }
        w
    };
    db.append(&fill(0..n, t0), 0);
    let flushing = Arc::new(AtomicBool::new(true));
    let flusher = {
        let (db, flushing) = (Arc::clone(&db), Arc::clone(&flushing));
        std::thread::spawn(move || {
            let r = db.flush();
            flushing.store(false, Ordering::SeqCst);
            r.unwrap()
        })
    };
    let count = |name: &str| all(&db, "default", name).len();
    let key = |l: &[(&str, &str)]| Labels::from_pairs(l.to_vec()).unwrap().key();
    // The last append that finished before the flush put its block in place.
    let (mut last_during, mut offset) = (0, 1);
    while flushing.load(Ordering::SeqCst) {
        db.append(&fill(0..10, t0 + offset as i64), offset);
        if db.stats().blocks == 0 {
            last_during = offset;
        }
        offset += 1;
        // A series the flush is writing is still there to read.
        let d = &names[(offset as usize * 7919) % n];
        let got = db
            .read_series(
                &Tenant::default(),
                key(&[("__name__", "big"), ("d", d)]).as_ref(),
                0,
                i64::MAX,
            )
            .unwrap();
        assert!(!got.is_empty(), "{d} not found during the flush");
    }
    let appended = offset - 1;
    // The flush covers the log records it took, not those appended after.
    let covered = flusher.join().unwrap().unwrap();
    assert!(covered < appended, "covered {covered} of {appended}");
    // Appends after the flush took the head finished before its block was in place: the
    // flush did not hold them while it wrote.
    assert!(
        last_during >= covered + 10,
        "the flush took the head at {covered}; appends finished before its block up to {last_during}"
    );
    assert_eq!(count("big"), n);
    let samples_of = |db: &Tsdb| -> usize {
        all(db, "default", "big")
            .iter()
            .filter(|s| s.0.contains("d0\""))
            .map(|s| s.1.len())
            .sum()
    };
    assert_eq!(samples_of(&db), 1 + appended as usize);
    assert_eq!(db.flush().unwrap(), Some(appended));
    assert_eq!(samples_of(&db), 1 + appended as usize);
    drop(db);
    let db = open(dir.path());
    assert_eq!(samples_of(&db), 1 + appended as usize);
}

/// Metadata reads with a limit answer exactly the first entries of the unlimited answer, in
/// label order (not key byte order: names `a` and `ab` sort differently there), over series in
/// blocks, in the head and in both, and within the time range.
#[test]
fn metadata_limits_answer_the_first_entries_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - 5 * H;
    let db = open(dir.path());
    let tenant = Tenant::default();
    let owned: Vec<(String, String, String)> = (0..600)
        .map(|i: u32| {
            // Scrambled so no write order or hash order happens to be sorted.
            let v = format!("v{:04}", (i * 7919) % 600);
            let name = if i.is_multiple_of(3) { "a" } else { "ab" };
            (name.to_owned(), v, format!("z{}", i % 37))
        })
        .collect();
    let rows_of = |range: std::ops::Range<usize>, at: i64| -> Vec<(Vec<(&str, &str)>, i64)> {
        owned[range]
            .iter()
            .map(|(n, v, z)| {
                (
                    vec![
                        ("__name__", "m"),
                        (n.as_str(), v.as_str()),
                        ("zone", z.as_str()),
                    ],
                    at,
                )
            })
            .collect()
    };
    let write = |rows: Vec<(Vec<(&str, &str)>, i64)>, offset: u64| {
        let rows: Vec<Row<'_>> = rows
            .iter()
            .map(|(l, at)| (l.as_slice(), *at, 1.0))
            .collect();
        db.append(&batch("default", &rows), offset);
    };
    // 0..400 flushed to a block; 300..600 in the head (300..400 in both).
    write(rows_of(0..400, t), 0);
    db.flush().unwrap();
    write(rows_of(300..600, t + 1000), 1);
    // A series outside the range must never be answered.
    write(
        vec![(vec![("__name__", "m"), ("a", "0000early")], t - 2 * H)],
        2,
    );
    let m = [Matcher::equal("__name__", "m")];
    let range = |limit| MetadataHints {
        start: t - H,
        end: t + H,
        limit,
    };
    let all = db.series(&tenant, &m, &range(None)).unwrap();
    assert_eq!(all.len(), 600);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    assert!(all.iter().all(|l| l.get("a") != Some("0000early")));
    for limit in [1, 2, 99, 400, 599, 600, 601, 10_000] {
        let first = db.series(&tenant, &m, &range(Some(limit))).unwrap();
        assert_eq!(first, all[..limit.min(all.len())], "series, limit {limit}");
    }
    let zones = db.label_values(&tenant, "zone", &m, &range(None)).unwrap();
    assert_eq!(zones.len(), 37);
    assert!(zones.windows(2).all(|w| w[0] < w[1]));
    for limit in [1, 5, 36, 37, 38] {
        let first = db
            .label_values(&tenant, "zone", &m, &range(Some(limit)))
            .unwrap();
        assert_eq!(first, zones[..limit.min(37)], "values, limit {limit}");
    }
    let names = db.label_names(&tenant, &m, &range(None)).unwrap();
    assert_eq!(names, vec!["__name__", "a", "ab", "zone"]);
    assert_eq!(
        db.label_names(&tenant, &m, &range(Some(2))).unwrap(),
        vec!["__name__", "a"]
    );
    assert!(db.series(&tenant, &m, &range(Some(0))).unwrap().is_empty());
    // Without matchers, blocks wholly inside the range answer from their tables: the same
    // names and values as walking every series, with limits; a block only partly inside is
    // walked, so the early series stays out of a range that does not reach it.
    db.flush().unwrap();
    let wide = |limit| MetadataHints {
        start: t - 3 * H,
        end: t + H,
        limit,
    };
    let every = [Matcher::regex("__name__", ".+", false).unwrap()];
    for limit in [None, Some(1), Some(3), Some(37), Some(100)] {
        assert_eq!(
            db.label_values(&tenant, "zone", &[], &wide(limit)).unwrap(),
            db.label_values(&tenant, "zone", &every, &wide(limit))
                .unwrap(),
        );
        assert_eq!(
            db.label_names(&tenant, &[], &wide(limit)).unwrap(),
            db.label_names(&tenant, &every, &wide(limit)).unwrap(),
        );
    }
    let a = db.label_values(&tenant, "a", &[], &wide(None)).unwrap();
    assert!(a.contains(&"0000early".to_string()));
    let a = db.label_values(&tenant, "a", &[], &range(None)).unwrap();
    assert!(!a.contains(&"0000early".to_string()), "outside the range");
}
