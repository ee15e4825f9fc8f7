use proptest::prelude::*;
use std::path::Path;
use strata_log::{LocalLog, Log, LogError, LogOptions, Offset};

fn open(dir: &Path, parts: u32, seg: u64) -> LocalLog {
    LocalLog::open(dir, parts, LogOptions { segment_bytes: seg }).unwrap()
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-")
        .repeat((i % 7 + 1) as usize)
        .into_bytes()
}

fn read_all(log: &LocalLog, p: u32, from: Offset) -> Vec<(Offset, Vec<u8>)> {
    log.read(p, from)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.offset, r.payload))
        .collect()
}

fn segments(dir: &Path, p: u32) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(format!("p{p:04}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_across_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 2, 300);
    let mut w = log.writer(1).unwrap();
    let mut rolls = 0;
    for i in 0..100 {
        let a = w.append(&payload(i)).unwrap();
        assert_eq!(a.offset, i);
        rolls += a.new_segment as u32;
        if i % 10 == 9 {
            w.sync().unwrap();
        }
    }
    assert!(rolls > 5, "small segments must roll");
    assert_eq!(log.end_offset(1), 100);
    assert_eq!(log.end_offset(0), 0);
    drop(w);
    drop(log);
    let log = open(dir.path(), 2, 300);
    let all = read_all(&log, 1, 0);
    assert_eq!(all.len(), 100);
    for (i, (off, p)) in all.iter().enumerate() {
        assert_eq!((*off, p), (i as u64, &payload(i as u64)));
    }
    // Reading from the middle starts at the start of the segment that holds the offset.
    let from_50 = read_all(&log, 1, 50);
    assert!(from_50[0].0 <= 50 && from_50.last().unwrap().0 == 99);
    assert!(from_50.iter().any(|r| r.0 == 50));
    let mut w = log.writer(1).unwrap();
    assert_eq!(w.append(b"more").unwrap().offset, 100);
    w.sync().unwrap();
    assert_eq!(
        read_all(&log, 1, 100).last().unwrap(),
        &(100, b"more".to_vec())
    );
}

#[test]
fn unsynced_records_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 1, 1 << 20);
    let mut w = log.writer(0).unwrap();
    w.append(b"a").unwrap();
    w.sync().unwrap();
    w.append(b"b").unwrap();
    assert_eq!(read_all(&log, 0, 0).len(), 1);
    w.sync().unwrap();
    assert_eq!(read_all(&log, 0, 0).len(), 2);
}

#[test]
fn torn_tail_at_every_byte_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 1, 1 << 20);
        let mut w = log.writer(0).unwrap();
        for i in 0..5 {
            w.append(&payload(i)).unwrap();
        }
        w.sync().unwrap();
    }
    let seg = segments(dir.path(), 0).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    let last_len = 8 + payload(4).len();
    for cut in (full.len() - last_len)..full.len() {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let log = open(dir.path(), 1, 1 << 20);
        let got = read_all(&log, 0, 0);
        assert_eq!(got.len(), 4, "cut at {cut}");
        assert!(log.stats().truncated_tail_bytes > 0 || cut == full.len() - last_len);
        let mut w = log.writer(0).unwrap();
        assert_eq!(w.append(b"next").unwrap().offset, 4);
        w.sync().unwrap();
        drop(w);
        drop(log);
        let log = open(dir.path(), 1, 1 << 20);
        assert_eq!(read_all(&log, 0, 0).last().unwrap(), &(4, b"next".to_vec()));
        drop(log);
    }
    // A flipped byte in the last record is a torn tail too.
    let mut bad = full.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    std::fs::write(&seg, &bad).unwrap();
    assert_eq!(read_all(&open(dir.path(), 1, 1 << 20), 0, 0).len(), 4);
}

#[test]
fn damage_in_an_older_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 1, 200);
        let mut w = log.writer(0).unwrap();
        for i in 0..40 {
            w.append(&payload(i)).unwrap();
            w.sync().unwrap();
        }
    }
    let segs = segments(dir.path(), 0);
    assert!(segs.len() > 2);
    let mut b = std::fs::read(&segs[0]).unwrap();
    b[30] ^= 0x55;
    std::fs::write(&segs[0], &b).unwrap();
    match LocalLog::open(dir.path(), 1, LogOptions { segment_bytes: 200 }) {
        Err(LogError::Corrupt { path, position, .. }) => {
            assert_eq!(path, segs[0]);
            assert_eq!(position, 24);
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("corruption not detected"),
    }
    std::fs::write(&segs[0], b"garbage").unwrap();
    let e = LocalLog::open(dir.path(), 1, LogOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("magic") || e.to_string().contains("corrupt"),
        "{e}"
    );
}

#[test]
fn truncate_before_keeps_the_rest_and_the_end_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 1, 200);
    let mut w = log.writer(0).unwrap();
    for i in 0..50 {
        w.append(&payload(i)).unwrap();
        // Segments roll between group commits.
        w.sync().unwrap();
    }
    let before = segments(dir.path(), 0).len();
    log.truncate_before(0, 30).unwrap();
    assert!(segments(dir.path(), 0).len() < before);
    let rest = read_all(&log, 0, 30);
    assert!(rest.iter().any(|r| r.0 == 30));
    assert_eq!(rest.last().unwrap().0, 49);
    log.truncate_before(0, 1000).unwrap();
    assert_eq!(segments(dir.path(), 0).len(), 1, "the newest segment stays");
    // Rolling makes the last records truncatable too.
    w.roll().unwrap();
    log.truncate_before(0, 50).unwrap();
    assert_eq!(segments(dir.path(), 0).len(), 1);
    assert!(read_all(&log, 0, 0).is_empty());
    drop(w);
    drop(log);
    let log = open(dir.path(), 1, 200);
    assert_eq!(log.end_offset(0), 50);
    assert_eq!(log.writer(0).unwrap().append(b"x").unwrap().offset, 50);
}

#[test]
fn one_writer_per_partition_and_fixed_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(LocalLog::existing_partitions(dir.path()).unwrap(), None);
    let log = open(dir.path(), 3, 1 << 20);
    assert_eq!(LocalLog::existing_partitions(dir.path()).unwrap(), Some(3));
    let w = log.writer(2).unwrap();
    assert!(matches!(log.writer(2), Err(LogError::WriterBusy(2))));
    drop(w);
    assert!(log.writer(2).is_ok());
    assert!(matches!(log.writer(3), Err(LogError::NoPartition(3))));
    drop(log);
    let e = LocalLog::open(dir.path(), 4, LogOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("3 partitions") && e.to_string().contains("4"),
        "{e}"
    );
    std::fs::write(dir.path().join("LOG_META"), b"damaged").unwrap();
    assert!(matches!(
        LocalLog::existing_partitions(dir.path()),
        Err(LogError::Corrupt { .. })
    ));
}

/// A second process (here: a second open) on the same directory is refused while the first
/// holds the log, so two writers never interleave records in one segment.
#[test]
fn a_log_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 2, 1 << 20);
    let e = LocalLog::open(dir.path(), 2, LogOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, LogError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(log);
    let mut w = open(dir.path(), 2, 1 << 20).writer(0).unwrap();
    w.append(b"after").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_appends_syncs_and_reopens(ops in proptest::collection::vec((1usize..300, any::<bool>(), any::<bool>()), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1, 512);
        let mut w = log.writer(0).unwrap();
        let mut durable: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        for (i, (len, sync, reopen)) in ops.into_iter().enumerate() {
            let p = vec![i as u8; len];
            w.append(&p).unwrap();
            pending.push(p);
            if sync {
                w.sync().unwrap();
                durable.append(&mut pending);
            }
            if reopen {
                w.sync().unwrap();
                durable.append(&mut pending);
                drop(w);
                drop(log);
                log = open(dir.path(), 1, 512);
                w = log.writer(0).unwrap();
            }
            // Exactly what was synced is readable: a roll only ever happens between groups.
            let got: Vec<Vec<u8>> = read_all(&log, 0, 0).into_iter().map(|r| r.1).collect();
            prop_assert_eq!(&got, &durable);
        }
    }
}
