//! Fuzzing the ingest log's segment framing (`u32 length, u32 crc32, payload` behind a
//! checksummed header) through [`LocalLog`]: segments written by the log are damaged
//! (truncated, flipped, spliced, lengths set to extremes) and reopened. Opening either reports
//! corruption or succeeds with every record before the damage intact, never panics, never
//! allocates out of proportion to the files, and a log that opened keeps working.

#[path = "../../model/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{allocation_bound, config, largest_allocation, mutate, mutations, Mutation};
use proptest::prelude::*;
use proptest::sample::Index;
use std::path::{Path, PathBuf};
use strata_log::{LocalLog, Log, LogError, LogOptions};

const HEADER: usize = 24;
const FRAME: usize = 8;
/// Small segments, so a few records span several of them.
const SEGMENT_BYTES: u64 = 600;

fn open(dir: &Path) -> Result<LocalLog, LogError> {
    LocalLog::open(
        dir,
        1,
        LogOptions {
            segment_bytes: SEGMENT_BYTES,
        },
    )
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("p0000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Every record, or the first error.
fn read_all(log: &LocalLog) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    log.read(0, 0)?
        .map(|r| r.map(|r| (r.offset, r.payload)))
        .collect()
}

/// How many records of a segment's `original` bytes lie wholly before byte `at`.
fn records_before(original: &[u8], at: usize) -> usize {
    let (mut pos, mut n) = (HEADER, 0);
    while pos + FRAME <= original.len() {
        let len = u32::from_le_bytes(original[pos..pos + 4].try_into().unwrap()) as usize;
        pos += FRAME + len;
        if pos > at {
            break;
        }
        n += 1;
    }
    n
}

/// Payloads: small, around a segment's size, of any bytes (frames inside them too). Never
/// empty: the log refuses empty records (`LogError::EmptyRecord`).
fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(
        prop_oneof![
            fuzz_support::random_bytes(40).prop_map(|mut p| {
                if p.is_empty() {
                    p.push(0);
                }
                p
            }),
            (1usize..700, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            // A payload that looks like a frame of the log.
            fuzz_support::random_bytes(20).prop_map(|p| {
                let mut f = (p.len() as u32).to_le_bytes().to_vec();
                f.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
                f.extend_from_slice(&p);
                f
            }),
        ],
        1..12,
    )
}

/// How a segment is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes mutated as they lie.
    Bytes(Vec<Mutation>),
    /// The length field of a record set to a value (the frame's CRC covers the payload only).
    Length(Index, u32),
    /// The header's base offset set to a value, with its CRC right.
    Base(u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => mutations().prop_map(Damage::Bytes),
        1 => (any::<Index>(), prop_oneof![Just(u32::MAX), Just(256 << 20), Just((256 << 20) + 1), Just(1 << 31), 0u32..1000]).prop_map(|(i, v)| Damage::Length(i, v)),
        1 => prop_oneof![Just(1u64 << 63), 0u64..20, 0u64..(1 << 62), (u64::MAX - 20)..=u64::MAX].prop_map(Damage::Base),
    ]
}

fn damaged(original: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = original.to_vec();
    match d {
        Damage::Bytes(ms) => mutate(&mut b, ms),
        Damage::Length(i, v) => {
            let mut frames = Vec::new();
            let mut pos = HEADER;
            while pos + FRAME <= b.len() {
                frames.push(pos);
                pos += FRAME + u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
            }
            if !frames.is_empty() {
                let at = frames[i.index(frames.len())];
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        Damage::Base(v) => {
            b[12..20].copy_from_slice(&v.to_le_bytes());
            let crc = crc32fast::hash(&b[..20]);
            b[20..24].copy_from_slice(&crc.to_le_bytes());
        }
    }
    b
}

proptest! {
    #![proptest_config(config(64))]

    /// One segment damaged, the newest or an older one. The log opens with the records before
    /// the damage intact (in the newest segment a torn tail is cut off), or reports it as
    /// corrupt; once open it appends and reopens like any log.
    #[test]
    fn damaged_segments_are_errors_or_cut(ps in payloads(), which in any::<Index>(), d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path()).unwrap();
            let mut w = log.writer(0).unwrap();
            for p in &ps {
                w.append(p).unwrap();
            }
            w.sync().unwrap();
        }
        let segs = segments(dir.path());
        let k = which.index(segs.len());
        let newest = k + 1 == segs.len();
        let original = std::fs::read(&segs[k]).unwrap();
        let bad = damaged(&original, &d);
        std::fs::write(&segs[k], &bad).unwrap();
        let total: usize = segs.iter().map(|s| std::fs::metadata(s).unwrap().len() as usize).sum();

        // Records before the damaged segment, and in it before the first changed byte.
        let before: usize = segs[..k].iter().map(|s| records_before(&std::fs::read(s).unwrap(), usize::MAX)).sum();
        let first_diff = original.iter().zip(&bad).position(|(a, b)| a != b).unwrap_or(original.len().min(bad.len()));
        let intact = before + records_before(&original, first_diff);

        let (log, largest) = largest_allocation(|| open(dir.path()));
        prop_assert!(largest <= allocation_bound(total, 1 << 20), "{} bytes allocated at once for {} bytes of log", largest, total);
        let log = match log {
            Ok(log) => log,
            Err(LogError::Corrupt { .. }) => {
                // Only a damaged header or an older segment is reported; a torn tail is cut.
                prop_assert!(!newest || first_diff < HEADER, "newest segment damaged at {} refused", first_diff);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("not a corruption error: {e}"))),
        };
        let got = read_all(&log).unwrap();
        prop_assert!(got.len() >= intact.min(ps.len()) || first_diff < HEADER, "{} records read, {} intact", got.len(), intact);
        for (i, (off, p)) in got.iter().enumerate().take(intact) {
            prop_assert_eq!(*off, i as u64);
            prop_assert_eq!(p, &ps[i]);
        }
        // The log keeps working: the next record follows what was read, across a reopen.
        let next = log.end_offset(0);
        let mut w = log.writer(0).unwrap();
        if next == u64::MAX {
            // A base moved to the very end leaves no offset for another record.
            prop_assert!(matches!(w.append(b"after"), Err(LogError::OffsetsExhausted(0))));
            return Ok(());
        }
        prop_assert_eq!(w.append(b"after").unwrap().offset, next);
        w.sync().unwrap();
        drop(w);
        drop(log);
        let got = read_all(&open(dir.path()).unwrap()).unwrap();
        prop_assert_eq!(got.last().unwrap(), &(next, b"after".to_vec()));
        prop_assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    }

    /// A segment file of random bytes, behind a valid header or not, never panics the log.
    #[test]
    fn random_segments_are_errors_or_cut(bytes in fuzz_support::random_bytes(300), header in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let seg = segments(dir.path()).pop().unwrap();
        let mut file = if header { std::fs::read(&seg).unwrap() } else { Vec::new() };
        file.extend_from_slice(&bytes);
        std::fs::write(&seg, &file).unwrap();
        match open(dir.path()) {
            Ok(log) => {
                read_all(&log).unwrap();
            }
            Err(LogError::Corrupt { .. }) => prop_assert!(!header),
            Err(e) => return Err(TestCaseError::fail(format!("not a corruption error: {e}"))),
        }
    }
}

/// A segment whose checksummed header says it starts so close to u64::MAX that its records'
/// offsets overflow (a damaged or hand-made file; the log never writes one) panicked the open
/// with "attempt to add with overflow" in `open_partition` (`base + records`, local.rs) in
/// debug builds, and wrapped the end offset in release builds: it is reported as corrupt.
#[test]
fn a_base_offset_near_the_end_of_u64_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path()).unwrap();
        let mut w = log.writer(0).unwrap();
        w.append(b"one").unwrap();
        w.append(b"two").unwrap();
        w.sync().unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let file = std::fs::read(&seg).unwrap();
    for base in [u64::MAX, u64::MAX - 1] {
        std::fs::write(&seg, damaged(&file, &Damage::Base(base))).unwrap();
        match open(dir.path()) {
            Err(LogError::Corrupt { .. }) => {}
            Err(e) => panic!("base {base}: not a corruption error: {e}"),
            Ok(_) => panic!("base {base}: opened"),
        }
    }
}

/// A segment starting two offsets before u64::MAX takes one record, and the next append is
/// refused rather than wrapping to offset 0; the record reads back after a reopen.
#[test]
fn the_last_offset_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    let seg = segments(dir.path()).pop().unwrap();
    let file = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, damaged(&file, &Damage::Base(u64::MAX - 1))).unwrap();
    {
        let log = open(dir.path()).unwrap();
        let mut w = log.writer(0).unwrap();
        assert_eq!(w.append(b"last").unwrap().offset, u64::MAX - 1);
        match w.append(b"one too many") {
            Err(LogError::OffsetsExhausted(0)) => {}
            other => panic!("appended past u64::MAX: {other:?}"),
        }
        w.sync().unwrap();
        assert_eq!(log.end_offset(0), u64::MAX);
    }
    let log = open(dir.path()).unwrap();
    assert_eq!(log.end_offset(0), u64::MAX);
    let got: Vec<_> = log
        .read(0, u64::MAX - 1)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.offset, r.payload))
        .collect();
    assert_eq!(got, vec![(u64::MAX - 1, b"last".to_vec())]);
}
