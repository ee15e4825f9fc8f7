//! Quick restart: the log a restart replays is bounded by `storage.checkpoint_log_bytes`, not by
//! the flush interval. Under load the shard flushes each time its log grows past the threshold
//! (the log on disk stays small); after SIGKILL the server answers quickly, having replayed only
//! the tail, and every acknowledged sample is back.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const THRESHOLD: f64 = 1024.0 * 1024.0;
const SERIES: usize = 50;
const PER_SERIES: i64 = 4;

#[test]
fn the_log_is_checkpointed_by_size_and_a_restart_replays_only_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    // Time alone would not flush during this test; segments small enough to be dropped.
    let cfg = format!(
        "partitions = 1\n[storage]\nflush_interval = \"1d\"\nlog_segment_bytes = 262144\n\
         checkpoint_log_bytes = {}\n",
        THRESHOLD as u64
    );
    let base_t = now_ms() - 3_600_000;
    let s = Server::start(dir.path(), &cfg);
    // acked[w] = the request numbers of writer w that were acknowledged.
    let acked: Arc<Mutex<BTreeMap<usize, Vec<i64>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (url, acked, stop) = (s.url("/write?precision=ms"), acked.clone(), stop.clone());
            let client = s.client.clone();
            std::thread::spawn(move || {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let mut body = String::new();
                    for k in 0..PER_SERIES {
                        let t = base_t + i * PER_SERIES + k;
                        for s in 0..SERIES {
                            body.push_str(&format!("restart,w=w{w},s=s{s} value={t} {t}\n"));
                        }
                    }
                    match client.post(&url).body(body).send() {
                        Ok(r) if r.status().as_u16() == 204 => {
                            acked.lock().unwrap().entry(w).or_default().push(i)
                        }
                        _ => break, // the server is gone: unacknowledged
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Until the log has taken six thresholds' worth, then SIGKILL mid-load.
    let started = Instant::now();
    let (appended, records, on_disk, flushes) = loop {
        std::thread::sleep(Duration::from_millis(100));
        let m = s.metrics();
        let appended = metric(&m, "strata_log_appended_bytes_total");
        if appended >= 6.0 * THRESHOLD {
            break (
                appended,
                metric(&m, "strata_log_appended_records_total"),
                metric(&m, "strata_log_disk_bytes"),
                metric(&m, "strata_flushes_total"),
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "load too slow: {appended} bytes"
        );
    };
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Flushed by size alone (no admin flush, a day's interval), and the log was cut each time.
    assert!(flushes >= 3.0, "{flushes} flushes for {appended} log bytes");
    assert!(
        on_disk <= 3.0 * THRESHOLD,
        "{on_disk} bytes of log on disk after {appended} appended"
    );

    let t = Instant::now();
    let s = Server::start(dir.path(), &cfg);
    let restart = t.elapsed();
    eprintln!("restart after SIGKILL: {restart:?} to /health");
    assert!(restart < Duration::from_secs(20), "{restart:?}");
    let replayed = metric(&s.metrics(), "strata_log_replayed_records_total");
    assert!(
        replayed < records / 2.0,
        "replayed {replayed} of {records} records: the log was not cut"
    );
    let acked = acked.lock().unwrap();
    assert!(acked.values().map(|v| v.len()).sum::<usize>() > 100);
    for (w, reqs) in acked.iter() {
        let got = s.export(&format!("restart{{w=\"w{w}\"}}"));
        assert_eq!(got.len(), SERIES, "writer {w}");
        for (labels, samples) in got {
            let got: BTreeMap<i64, f64> = samples.into_iter().collect();
            for i in reqs {
                for k in 0..PER_SERIES {
                    let t = base_t + i * PER_SERIES + k;
                    assert_eq!(
                        got.get(&t),
                        Some(&(t as f64)),
                        "{labels}: acknowledged sample at {t} lost"
                    );
                }
            }
        }
    }
}
