//! SIGKILL under load: every acknowledged sample is there after restart, exactly once.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn sigkill_under_load_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let base_t = now_ms() - 3_600_000;
    // Each writer owns one series and sends increasing timestamps; acked[w] = timestamps acked.
    let acked: Arc<Mutex<BTreeMap<usize, Vec<i64>>>> = Arc::default();
    for round in 0..3 {
        // Several partitions whatever the machine: each replays on its own.
        let s = Server::start(
            dir.path(),
            "partitions = 3\n[storage]\nlog_segment_bytes = 65536\n",
        );
        let stop = Instant::now() + Duration::from_millis(700 + 300 * round as u64);
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let (url, acked) = (s.url("/write?precision=ms"), acked.clone());
                let client = s.client.clone();
                std::thread::spawn(move || {
                    let mut i = 0i64;
                    while Instant::now() < stop {
                        let ts: Vec<i64> = (0..50)
                            .map(|k| base_t + round * 1_000_000 + i * 50 + k)
                            .collect();
                        let body: String = ts
                            .iter()
                            .map(|t| format!("crash,writer=w{w} value={t} {t}\n"))
                            .collect();
                        i += 1;
                        match client.post(&url).body(body).send() {
                            Ok(r) if r.status().as_u16() == 204 => {
                                acked.lock().unwrap().entry(w).or_default().extend(ts)
                            }
                            _ => break, // the server is gone: unacknowledged, may or may not be there
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(600 + 250 * round as u64));
        if round == 1 {
            s.flush();
        }
        s.kill9();
        for t in threads {
            t.join().unwrap();
        }
    }
    // `partitions = "auto"` (the default) opens the directory with the count it was created with.
    let s = Server::start(dir.path(), "");
    let acked = acked.lock().unwrap();
    assert!(
        acked.values().map(|v| v.len()).sum::<usize>() > 500,
        "the load did not get going"
    );
    for (w, want) in acked.iter() {
        let got = s.export(&format!("crash{{writer=\"w{w}\"}}"));
        assert_eq!(got.len(), 1);
        let got: BTreeMap<i64, f64> = got[0].1.iter().copied().collect();
        for t in want {
            assert_eq!(
                got.get(t),
                Some(&(*t as f64)),
                "writer {w}: acknowledged sample at {t} lost"
            );
        }
        // Export returns one sample per timestamp; values must be the ones written.
        assert!(got.iter().all(|(t, v)| *v == *t as f64));
    }
}
