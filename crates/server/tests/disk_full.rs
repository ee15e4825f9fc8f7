//! The ingest log on a filesystem that runs out of space (a real fault: `ENOSPC` from a small
//! tmpfs): writes are refused with a 503 naming the failure, nothing refused is acknowledged or
//! stored, the server stays up and takes writes again once space is freed, and after SIGKILL and
//! a restart every acknowledged sample is there and no refused one.
//!
//! Mounting needs root; without it the test says so and passes vacuously.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` until it refuses another byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [64 << 10, 4 << 10, 512, 64, 1] {
        let buf = vec![0xa5u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
}

fn body(ts: &[i64]) -> String {
    ts.iter()
        .map(|t| format!("enospc,host=a value={t} {t}\n"))
        .collect()
}

fn stored(s: &Server) -> BTreeSet<i64> {
    s.export("enospc")
        .into_iter()
        .flat_map(|(_, samples)| samples.into_iter().map(|(t, _)| t))
        .collect()
}

#[test]
fn a_full_disk_refuses_writes_with_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), "16m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let base = now_ms() - 600_000;
    let cfg = "partitions = 1\n";
    let s = Server::start(&fs.0, cfg);
    let url = s.url("/write?precision=ms");
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    let mut next = 0i64;
    let mut send = |s: &Server, acked: &mut BTreeSet<i64>, refused: &mut BTreeSet<i64>| {
        let ts: Vec<i64> = (0..100).map(|k| base + next + k).collect();
        next += 100;
        let r = s.client.post(&url).body(body(&ts)).send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        match status {
            204 => acked.extend(ts),
            503 => {
                assert!(text.contains("No space left on device"), "{text}");
                refused.extend(ts);
            }
            _ => panic!("write answered {status}: {text}"),
        }
        status
    };
    for _ in 0..20 {
        assert_eq!(send(&s, &mut acked, &mut refused), 204);
    }
    fill(&fs.0.join("filler"));
    // The segment's last page may still take a few writes; then the disk is full.
    let mut refusals = 0;
    for _ in 0..400 {
        if send(&s, &mut acked, &mut refused) == 503 {
            refusals += 1;
            if refusals == 20 {
                break;
            }
        }
    }
    assert_eq!(refusals, 20, "a full disk must refuse writes");
    let m = s.metrics();
    assert!(metric(&m, "strata_log_io_errors_total") >= 1.0, "{m}");
    let t = Instant::now();
    let r = s.client.get(s.url("/health")).send().unwrap();
    assert!(r.status().is_success() && t.elapsed() < Duration::from_secs(10));
    // Refused samples were never stored; acknowledged ones are queryable.
    assert_eq!(stored(&s), acked);
    // Space again: the log recovers (within its retry interval) without a restart.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let t = Instant::now();
    while send(&s, &mut acked, &mut refused) != 204 {
        assert!(t.elapsed() < Duration::from_secs(10), "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        assert_eq!(send(&s, &mut acked, &mut refused), 204);
    }
    let m = s.metrics();
    assert_eq!(metric(&m, "strata_log_failed_partitions"), 0.0, "{m}");
    assert!(metric(&m, "strata_log_recoveries_total") >= 1.0, "{m}");
    s.kill9();
    // Replay decides: exactly the acknowledged samples, none of the refused.
    let s = Server::start(&fs.0, cfg);
    let got = stored(&s);
    assert_eq!(got.len(), acked.len(), "acknowledged samples after restart");
    assert!(got == acked, "replay differs from what was acknowledged");
    assert!(got.is_disjoint(&refused));
    s.kill9();
    drop(fs);
}
