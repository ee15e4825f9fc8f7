//! Memory follows live series: series that stop receiving samples leave the head (and the
//! limiter's counts) once flushed and outside the lookback, come back with their data whole,
//! and the live-series caps refuse naming the cap. The churn test writes millions of distinct
//! series over time and checks the head and the process' memory stay bounded.

use std::path::Path;
use std::sync::Arc;
use strata_model::{Fields, Limits, Matcher, Sample, SelectHints, Storage, Tenant, WriteBatch};
use strata_tsdb::{SeriesCaps, SeriesLimit, SeriesLimiter, Tsdb, TsdbOptions, HEAD_LOOKBACK_MS};

const H: i64 = 3_600_000;

fn now() -> i64 {
    strata_model::time::now_ms()
}

fn open(dir: &Path, lim: &Arc<SeriesLimiter>) -> Tsdb {
    Tsdb::open(dir, TsdbOptions::default(), Arc::clone(lim)).unwrap()
}

/// One sample for each series `metric{d="<i>"}`, `i` in `ids`, at `t` with value `v`.
fn batch(tenant: &str, metric: &str, ids: std::ops::Range<usize>, t: i64, v: f64) -> WriteBatch {
    let mut b = WriteBatch::new(Tenant::new(tenant).unwrap());
    for i in ids {
        let d = i.to_string();
        let mut l: Vec<(&[u8], &[u8])> =
            vec![(b"__name__", metric.as_bytes()), (b"d", d.as_bytes())];
        b.push_series(&mut l, &[Sample::new(t, v)], None, &Limits::default())
            .unwrap();
    }
    b
}

fn samples(db: &Tsdb, tenant: &str, metric: &str, d: &str) -> Vec<(i64, f64)> {
    let hints = SelectHints {
        start: 0,
        end: i64::MAX / 2,
        max_samples: None,
        fields: Fields::All,
    };
    let ms = [Matcher::equal("__name__", metric), Matcher::equal("d", d)];
    let got = db
        .select(&Tenant::new(tenant).unwrap(), &ms, &hints)
        .unwrap();
    got.into_iter()
        .flat_map(|s| s.samples)
        .map(|s| (s.timestamp, s.value))
        .collect()
}

#[test]
fn idle_series_leave_the_head_after_flush_and_lookback() {
    let dir = tempfile::tempdir().unwrap();
    let lim = SeriesLimiter::new(1000);
    let db = open(dir.path(), &lim);
    let t = Tenant::default();
    let old = now() - H;
    db.append(&batch("default", "old", 0..10, old, 1.0), 0);
    db.append(&batch("default", "fresh", 0..5, now(), 1.0), 1);
    assert_eq!(db.stats().series, 15);
    assert_eq!(lim.live_in_metric(&t, "old"), 10);
    // Flushed, but written since the previous flush: still live.
    db.flush().unwrap();
    assert_eq!(db.stats().series, 15);
    assert_eq!(lim.live_total(), 15);
    // Nothing new since: the old ones leave; those inside the lookback stay.
    db.flush().unwrap();
    assert_eq!(db.stats().series, 5);
    assert_eq!(lim.live_in_metric(&t, "old"), 0);
    assert_eq!(lim.live_in_metric(&t, "fresh"), 5);
    assert_eq!((lim.live_in_tenant(&t), lim.live_total()), (5, 5));
    // Their samples are all in blocks.
    assert_eq!(samples(&db, "default", "old", "3"), vec![(old, 1.0)]);
    // A new series with nothing but samples older than the retention takes no place.
    let st = db.append(&batch("default", "ancient", 0..3, 1000, 1.0), 2);
    assert_eq!((st.too_old, st.new_series, lim.live_total()), (3, 0, 5));
    // Reopening puts nothing in the head: series only in blocks are not live.
    drop(db);
    let lim = SeriesLimiter::new(1000);
    let db = open(dir.path(), &lim);
    assert_eq!((db.stats().series, lim.live_total()), (0, 0));
    assert_eq!(samples(&db, "default", "fresh", "4").len(), 1);
}

#[test]
fn a_returning_series_keeps_its_data_and_its_duplicate_checks() {
    let dir = tempfile::tempdir().unwrap();
    let lim = SeriesLimiter::new(1000);
    let db = open(dir.path(), &lim);
    let t0 = now() - 2 * H;
    db.append(&batch("default", "m", 0..3, t0, 1.0), 0);
    db.flush().unwrap();
    db.flush().unwrap();
    assert_eq!(db.stats().series, 0, "gone from the head");
    // Back: one new sample, one exact repeat of what blocks hold, one conflicting value.
    let st = db.append(&batch("default", "m", 0..1, t0 + 1000, 2.0), 1);
    assert_eq!((st.new_series, st.appended), (1, 1));
    let st = db.append(&batch("default", "m", 0..1, t0, 1.0), 2);
    assert_eq!(
        st.duplicates, 1,
        "the repeat is recognised against the blocks"
    );
    let st = db.append(&batch("default", "m", 1..2, t0, 5.0), 3);
    assert_eq!((st.new_series, st.overwritten), (1, 1));
    assert_eq!(
        samples(&db, "default", "m", "0"),
        vec![(t0, 1.0), (t0 + 1000, 2.0)]
    );
    assert_eq!(samples(&db, "default", "m", "1"), vec![(t0, 5.0)]);
    db.flush().unwrap();
    drop(db);
    let db = open(dir.path(), &SeriesLimiter::new(1000));
    assert_eq!(
        samples(&db, "default", "m", "0"),
        vec![(t0, 1.0), (t0 + 1000, 2.0)]
    );
    assert_eq!(samples(&db, "default", "m", "1"), vec![(t0, 5.0)]);
    assert_eq!(samples(&db, "default", "m", "2"), vec![(t0, 1.0)]);
}

#[test]
fn caps_refuse_naming_the_cap_and_free_room_when_series_leave() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lim = SeriesLimiter::with_caps(SeriesCaps {
        per_metric: 4,
        per_tenant: 6,
        total: 8,
    });
    // Two shards share the limiter.
    let (a, b) = (open(dirs.0.path(), &lim), open(dirs.1.path(), &lim));
    let t = now() - H;
    let st = a.append(&batch("default", "x", 0..6, t, 1.0), 0);
    assert_eq!((st.new_series, st.refused.per_metric.series), (4, 2));
    assert_eq!(st.refused.per_metric.samples, 2);
    assert_eq!(st.rejected_series_limit, 2);
    let st = b.append(&batch("default", "y", 0..4, t, 1.0), 0);
    assert_eq!((st.new_series, st.refused.per_tenant.series), (2, 2));
    let st = b.append(&batch("other", "x", 0..4, t, 1.0), 1);
    assert_eq!((st.new_series, st.refused.total.series), (2, 2));
    let mut refused = st.refused;
    refused.of(SeriesLimit::PerMetric).series += 1;
    assert_eq!(refused.per_metric.series, 1);
    assert_eq!(lim.live_total(), 8);
    // Live series keep being written.
    assert_eq!(
        a.append(&batch("default", "x", 0..4, t + 1, 1.0), 2)
            .appended,
        4
    );
    // Shard b's series go idle and leave; their room is free again.
    b.flush().unwrap();
    b.flush().unwrap();
    assert_eq!(lim.live_total(), 4);
    let st = b.append(&batch("other", "x", 0..4, t, 1.0), 2);
    assert_eq!((st.new_series, st.rejected_series_limit), (4, 0));
    // The server is full again (4 + 4): the total cap is named.
    let st = b.append(&batch("default", "z", 0..4, t, 1.0), 3);
    assert_eq!((st.new_series, st.refused.total.series), (0, 4));
}

#[test]
fn series_written_within_the_lookback_stay() {
    let dir = tempfile::tempdir().unwrap();
    let lim = SeriesLimiter::new(1000);
    let db = open(dir.path(), &lim);
    // Just inside the lookback (with a minute's margin for a slow run).
    let t = now() - HEAD_LOOKBACK_MS + 60_000;
    db.append(&batch("default", "m", 0..3, t, 1.0), 0);
    for _ in 0..3 {
        db.flush().unwrap();
    }
    assert_eq!((db.stats().series, lim.live_total()), (3, 3));
}

/// Held by tests that measure the process' memory, so tests running beside them do not skew it.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Resident anonymous memory of this process, bytes: resident minus file-backed pages (the
/// page cache behind memory-mapped blocks is the kernel's, given back under pressure).
fn anon_rss() -> u64 {
    assert!(
        MEASURING.try_lock().is_err(),
        "hold MEASURING while measuring"
    );
    // What the server does after every flush (strata_server::memory::release_free_memory):
    // memory freed is handed back, so what remains is what is held, not the allocator's spare.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let f: Vec<u64> = statm
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (f[1] - f[2]) * 4096
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Millions of distinct series over time (rounds of 100,000 with a rotating label, flushing
/// between rounds): the head holds one round's series and resident memory stays near what
/// the first rounds took. By default 20 rounds (2 million series, about 30 s of CPU in a debug
/// build); `STRATA_CHURN_ROUNDS=50` runs the 5 million (about 75 s of CPU), and
/// `STRATA_CHURN_SERIES` changes the round's size.
#[test]
fn churn_keeps_the_head_and_memory_bounded() {
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let rounds = env("STRATA_CHURN_ROUNDS", 20);
    let per_round = env("STRATA_CHURN_SERIES", 100_000);
    let dir = tempfile::tempdir().unwrap();
    // While a round is written, the previous round's series are still live: they leave at
    // the flush after it.
    let lim = SeriesLimiter::with_caps(SeriesCaps {
        per_metric: 2 * per_round,
        per_tenant: 2 * per_round,
        total: 2 * per_round,
    });
    let db = open(dir.path(), &lim);
    let base = now() - 12 * H;
    let mut settled = 0;
    for round in 0..rounds {
        // Each round a new value of `gen`: none of the previous round's series returns.
        let t = base + round as i64 * 1000;
        let g = round.to_string();
        let mut b = WriteBatch::new(Tenant::default());
        for i in 0..per_round {
            let d = i.to_string();
            let mut l: Vec<(&[u8], &[u8])> = vec![
                (b"__name__", b"churn"),
                (b"d", d.as_bytes()),
                (b"gen", g.as_bytes()),
            ];
            b.push_series(&mut l, &[Sample::new(t, 1.0)], None, &Limits::default())
                .unwrap();
        }
        let st = db.append(&b, round as u64);
        assert_eq!(st.new_series, per_round, "round {round}: {st:?}");
        db.flush().unwrap();
        // The previous round's series were idle through this flush.
        assert_eq!(db.stats().series, per_round as u64, "round {round}");
        assert_eq!(lim.live_total(), per_round);
        if round == 4.min(rounds - 1) {
            settled = anon_rss();
        }
        if round % 10 == 9 {
            let st = db.stats();
            eprintln!(
                "round {round}: anon RSS {} MB, head {} series",
                anon_rss() >> 20,
                st.series
            );
        }
    }
    let end = anon_rss();
    eprintln!(
        "{rounds} rounds of {per_round} series: anon RSS {} MB after 5 rounds, {} MB at the end",
        settled >> 20,
        end >> 20
    );
    assert!(
        end < settled + settled / 2,
        "resident memory grew with series over time: {settled} -> {end} bytes"
    );
    // Every round's data is still there.
    let got = samples(&db, "default", "churn", "7");
    assert_eq!(got.len(), rounds);
}

/// What the head holds per series, measured: resident memory after writing `STRATA_HEAD_SERIES`
/// (default 200,000) series of the benchmark's shape (8 metrics of a fleet of devices, 5
/// labels) and `STRATA_HEAD_POINTS` (default 12) samples each, less before. Printed for the record (`--nocapture`), and
/// bounded so a regression shows.
#[test]
fn head_memory_per_series() {
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let n = env("STRATA_HEAD_SERIES", 200_000);
    let points = env("STRATA_HEAD_POINTS", 12) as i64;
    let dir = tempfile::tempdir().unwrap();
    let lim = SeriesLimiter::new(usize::MAX);
    let db = open(dir.path(), &lim);
    const METRICS: [&str; 8] = [
        "cpu", "mem", "disk", "net_in", "net_out", "temp", "load", "up",
    ];
    let start = now() - H;
    let labels = |i: usize| {
        let device = i / METRICS.len();
        let site = device / 100;
        [
            ("__name__", METRICS[i % METRICS.len()].to_string()),
            ("device", format!("dev-{device:05}")),
            ("region", format!("r{}", site % 4)),
            ("site", format!("site-{site:03}")),
            ("type", ["a", "b", "c"][device % 3].to_string()),
        ]
    };
    let before = anon_rss();
    // Points are sent time-major, as scrapes and the benchmark's writer send them.
    for p in 0..points {
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let mut b = WriteBatch::new(Tenant::default());
            for &i in chunk {
                let l = labels(i);
                let mut pairs: Vec<(&[u8], &[u8])> = l
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                    .collect();
                let s = Sample::new(start + p * 15_000, (i as i64 + p) as f64);
                b.push_series(&mut pairs, &[s], None, &Limits::default())
                    .unwrap();
            }
            db.append(&b, p as u64);
        }
    }
    let per_series = anon_rss().saturating_sub(before) / n as u64;
    eprintln!("head: {per_series} bytes per series ({n} series of {points} samples)");
    assert_eq!(db.stats().series, n as u64);
    assert!(
        per_series < 1000 + 16 * points as u64,
        "{per_series} bytes per series"
    );
}
