//! The durable outbox: every notification Strata accepts is written here before it is sent, and
//! stays until its notifier's receiver took it (or refused it for good), so a restart or a
//! SIGKILL delivers what was pending. It also remembers which state changes were already
//! queued (their event ids), so the same firing or resolution is never queued twice, across
//! restarts too.
//!
//! One append-only file: a magic, then records `[len u32][crc32 u32][kind u8][body]`: an entry
//! queued (JSON), an entry done (its sequence), or the event ids still remembered (written when
//! the file is compacted). Appends are fsynced before they count; a torn last record (a crash
//! mid-append) is cut off on open; a damaged record elsewhere ends the replay there, reported.
//! Once done records outnumber pending entries by enough, the file is rewritten with only what
//! is pending and remembered (a temporary file, fsynced and renamed).
//!
//! Hand-written rather than SQLite: a queue with one writer and a sequential replay needs no
//! more than this, and the log's crash rules are the ones the ingest log already follows.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"STROUTB\x01";
const QUEUED: u8 = 1;
const DONE: u8 = 2;
const SEEN: u8 = 3;
/// Largest record accepted on replay (a length beyond it is damage).
const MAX_RECORD: usize = 64 << 20;
/// Compaction runs once this many records are dead (done entries and their queue records).
const COMPACT_AFTER: usize = 4096;

/// A notification waiting for delivery: one request to one notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Order of queueing (assigned by the outbox).
    pub seq: u64,
    /// The notifier's name.
    pub notifier: String,
    /// The request body (JSON).
    pub body: String,
    /// The state changes it carries (their event ids).
    pub events: Vec<u64>,
    /// When it was queued (ms).
    pub queued_at: i64,
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The file system failed.
    #[error("notification outbox {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The outbox (see the module doc).
pub struct Outbox {
    path: PathBuf,
    file: File,
    next_seq: u64,
    pending: BTreeMap<u64, Entry>,
    /// Event id → when it was last offered (ms).
    seen: HashMap<u64, i64>,
    dead: usize,
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`, replaying what it holds. Returns it and a
    /// description of damage found, if any (the records before it are kept).
    pub fn open(path: &Path) -> Result<(Outbox, Option<String>), OutboxError> {
        let io = |source| OutboxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut ob = Outbox {
            path: path.to_path_buf(),
            file: File::open("/dev/null").map_err(io)?,
            next_seq: 0,
            pending: BTreeMap::new(),
            seen: HashMap::new(),
            dead: 0,
        };
        let mut damage = None;
        if bytes.len() >= MAGIC.len() && &bytes[..MAGIC.len()] == MAGIC {
            let mut at = MAGIC.len();
            while at < bytes.len() {
                match record_at(&bytes, at) {
                    Some((kind, body, next)) => {
                        if let Err(reason) = ob.apply(kind, body) {
                            damage = Some(format!("record at byte {at}: {reason}"));
                            break;
                        }
                        at = next;
                    }
                    None => {
                        // A torn tail is the normal result of a crash mid-append.
                        if at + 8 < bytes.len() && tail_is_whole(&bytes, at) {
                            damage = Some(format!("record at byte {at} fails its checksum"));
                        }
                        break;
                    }
                }
            }
        } else if !bytes.is_empty() {
            damage = Some("not an outbox file (bad magic); starting a new one".into());
        }
        // Rewritten at once: drops a torn tail and starts the file clean.
        ob.rewrite()?;
        Ok((ob, damage))
    }

    fn apply(&mut self, kind: u8, body: &[u8]) -> Result<(), String> {
        match kind {
            QUEUED => {
                let e: Entry = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                self.next_seq = self.next_seq.max(e.seq + 1);
                for id in &e.events {
                    self.seen.insert(*id, e.queued_at);
                }
                self.pending.insert(e.seq, e);
            }
            DONE => {
                let seq = u64::from_le_bytes(body.try_into().map_err(|_| "bad done record")?);
                self.pending.remove(&seq);
                self.next_seq = self.next_seq.max(seq + 1);
                self.dead += 2;
            }
            SEEN => {
                let seen: Vec<(u64, i64)> =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                self.seen.extend(seen);
            }
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(())
    }

    /// Whether event `id` was queued before; marks it offered at `now` either way.
    pub fn seen(&mut self, id: u64, now: i64) -> bool {
        self.seen.insert(id, now).is_some()
    }

    /// Forgets event ids not offered since `before` (their alerts are gone).
    pub fn forget_seen_before(&mut self, before: i64) {
        self.seen.retain(|_, t| *t >= before);
    }

    /// Queues entries (their `seq` assigned here) durably: on return they survive a crash.
    pub fn push(&mut self, entries: Vec<Entry>) -> Result<Vec<Entry>, OutboxError> {
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            e.seq = self.next_seq;
            self.next_seq += 1;
            let body = serde_json::to_vec(&e).expect("an entry serializes");
            encode(&mut buf, QUEUED, &body);
            out.push(e);
        }
        self.append(&buf)?;
        for e in &out {
            self.pending.insert(e.seq, e.clone());
        }
        Ok(out)
    }

    /// Marks entry `seq` done (delivered, or refused for good), durably.
    pub fn done(&mut self, seq: u64) -> Result<(), OutboxError> {
        if self.pending.remove(&seq).is_none() {
            return Ok(());
        }
        let mut buf = Vec::new();
        encode(&mut buf, DONE, &seq.to_le_bytes());
        self.append(&buf)?;
        self.dead += 2;
        if self.dead >= COMPACT_AFTER && self.dead > 4 * self.pending.len() {
            self.rewrite()?;
        }
        Ok(())
    }

    /// The oldest pending entry of `notifier` (at or after `from_seq`).
    pub fn next_for(&self, notifier: &str, from_seq: u64) -> Option<Entry> {
        self.pending
            .range(from_seq..)
            .map(|(_, e)| e)
            .find(|e| e.notifier == notifier)
            .cloned()
    }

    /// Pending entries per notifier.
    pub fn pending_by_notifier(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for e in self.pending.values() {
            *m.entry(e.notifier.clone()).or_insert(0) += 1;
        }
        m
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), OutboxError> {
        let io = |source| OutboxError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(buf).map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    /// Writes the file anew with what is pending and remembered.
    fn rewrite(&mut self) -> Result<(), OutboxError> {
        let io = |source| OutboxError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = MAGIC.to_vec();
        let seen: Vec<(u64, i64)> = self.seen.iter().map(|(k, v)| (*k, *v)).collect();
        encode(
            &mut buf,
            SEEN,
            &serde_json::to_vec(&seen).expect("ids serialize"),
        );
        for e in self.pending.values() {
            encode(
                &mut buf,
                QUEUED,
                &serde_json::to_vec(e).expect("an entry serializes"),
            );
        }
        crate::framed::replace(&self.path, &buf).map_err(io)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.dead = 0;
        Ok(())
    }
}

fn encode(buf: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(body);
    buf.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
}

/// The record at `at`: its kind, body and the next record's position; `None` when it is torn
/// or fails its checksum.
fn record_at(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let head = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let rec = bytes.get(at + 8..at + 8 + len)?;
    (crc32fast::hash(rec) == crc).then(|| (rec[0], &rec[1..], at + 8 + len))
}

/// Whether the record at `at` is complete (so a bad checksum is damage, not a torn append).
fn tail_is_whole(bytes: &[u8], at: usize) -> bool {
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    len > 0 && len <= MAX_RECORD && at + 8 + len < bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(notifier: &str, events: &[u64]) -> Entry {
        Entry {
            seq: 0,
            notifier: notifier.into(),
            body: format!("{{\"n\":{}}}", events[0]),
            events: events.to_vec(),
            queued_at: 1000,
        }
    }

    #[test]
    fn pending_entries_and_seen_events_survive_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let (mut ob, damage) = Outbox::open(&path).unwrap();
        assert!(damage.is_none());
        assert!(!ob.seen(7, 1000));
        let e = ob.push(vec![entry("a", &[7]), entry("b", &[8])]).unwrap();
        assert_eq!((e[0].seq, e[1].seq), (0, 1));
        ob.done(0).unwrap();
        drop(ob);
        // A crash mid-append leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (mut ob, damage) = Outbox::open(&path).unwrap();
        assert!(damage.is_none(), "{damage:?}");
        assert_eq!(ob.next_for("a", 0), None);
        assert_eq!(ob.next_for("b", 0).unwrap().events, [8]);
        assert!(
            ob.seen(7, 2000) && ob.seen(8, 2000),
            "queued events are remembered"
        );
        // New entries are numbered after everything seen.
        assert_eq!(ob.push(vec![entry("a", &[9])]).unwrap()[0].seq, 2);
        ob.forget_seen_before(1500);
        assert!(!ob.seen(1234, 2000));
    }

    #[test]
    fn compaction_keeps_only_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let (mut ob, _) = Outbox::open(&path).unwrap();
        for i in 0..3000u64 {
            let e = ob.push(vec![entry("a", &[i])]).unwrap();
            if i != 5 {
                ob.done(e[0].seq).unwrap();
            }
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 200_000, "compacted: {len} bytes");
        drop(ob);
        let (mut ob, _) = Outbox::open(&path).unwrap();
        assert_eq!(ob.next_for("a", 0).unwrap().events, [5]);
        assert_eq!(ob.pending_by_notifier()["a"], 1);
        assert!(ob.seen(2999, 0));
    }

    #[test]
    fn damage_is_reported_and_what_came_before_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let (mut ob, _) = Outbox::open(&path).unwrap();
        ob.push(vec![entry("a", &[1])]).unwrap();
        ob.push(vec![entry("a", &[2])]).unwrap();
        ob.push(vec![entry("a", &[3])]).unwrap();
        drop(ob);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte inside the second queued record's body.
        let first_len = {
            let mut at = MAGIC.len();
            for _ in 0..2 {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                at += 8 + len;
            }
            at
        };
        bytes[first_len + 12] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let (ob, damage) = Outbox::open(&path).unwrap();
        assert!(damage.unwrap().contains("checksum"));
        assert_eq!(ob.next_for("a", 0).unwrap().events, [1]);
        assert_eq!(ob.pending_by_notifier()["a"], 1);
    }
}
