//! Exact recognition of redelivered events by `event_id`, over a bounded horizon.
//!
//! Each shard owns one [`EventDedup`]. The tenant-seeded hash is only the map key: a hit is
//! confirmed by comparing tenant and id bytes, so a hash collision never drops an event. Memory
//! is bounded by the horizon: entries older than it (by arrival) are forgotten.

use crate::bytes::{put, read_checked, write_checked, Reader};
use crate::StreamError;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use strata_model::{EventKey, Tenant, WriteBatch};

const MAGIC: &[u8; 8] = b"STRDEDUP";
const VERSION: u32 = 1;

struct Entry {
    tenant: Tenant,
    id: Box<[u8]>,
    seen_ms: i64,
}

/// Event ids seen within the horizon.
pub struct EventDedup {
    horizon_ms: i64,
    seen: HashMap<u64, Vec<Entry>, ahash::RandomState>,
    order: VecDeque<(i64, u64)>,
}

impl EventDedup {
    /// Remembers ids for `horizon_ms` after they were first seen.
    pub fn new(horizon_ms: i64) -> EventDedup {
        EventDedup {
            horizon_ms,
            seen: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Records the event and says whether it is new (false: a redelivery to drop).
    pub fn first_sighting(
        &mut self,
        tenant: &Tenant,
        key: EventKey,
        id: &[u8],
        now_ms: i64,
    ) -> bool {
        let bucket = self.seen.entry(key.hash).or_default();
        if bucket
            .iter()
            .any(|e| e.id.as_ref() == id && &e.tenant == tenant)
        {
            return false;
        }
        bucket.push(Entry {
            tenant: tenant.clone(),
            id: id.into(),
            seen_ms: now_ms,
        });
        self.order.push_back((now_ms, key.hash));
        true
    }

    /// Forgets the events of a batch that was not stored after all, so a retry is accepted.
    pub fn forget_batch(&mut self, batch: &WriteBatch) {
        for s in batch.iter() {
            if let (Some(k), Some(id)) = (s.event, s.event_id()) {
                if let Some(b) = self.seen.get_mut(&k.hash) {
                    b.retain(|e| !(e.id.as_ref() == id && &e.tenant == batch.tenant()));
                    if b.is_empty() {
                        self.seen.remove(&k.hash);
                    }
                }
            }
        }
    }

    /// Forgets ids first seen more than the horizon before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms - self.horizon_ms;
        while let Some(&(t, h)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            if let Some(b) = self.seen.get_mut(&h) {
                if let Some(i) = b.iter().position(|e| e.seen_ms == t) {
                    b.swap_remove(i);
                }
                if b.is_empty() {
                    self.seen.remove(&h);
                }
            }
        }
    }

    /// Writes the remembered ids atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), StreamError> {
        let mut buf = Vec::with_capacity(16 + self.order.len() * 48);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(self.order.len() as u64).to_le_bytes());
        for (hash, bucket) in &self.seen {
            for e in bucket {
                buf.extend_from_slice(&hash.to_le_bytes());
                buf.extend_from_slice(&e.seen_ms.to_le_bytes());
                put(&mut buf, e.tenant.as_str().as_bytes());
                put(&mut buf, &e.id);
            }
        }
        write_checked(path, buf)
    }

    /// Loads ids saved by [`EventDedup::save`]; a missing file is an empty set.
    pub fn load(path: &Path, horizon_ms: i64) -> Result<EventDedup, StreamError> {
        let mut d = EventDedup::new(horizon_ms);
        let Some(body) = read_checked(path, MAGIC, 24, "an event-dedup checkpoint")? else {
            return Ok(d);
        };
        let bad = |why: &str| StreamError::Corrupt {
            path: path.into(),
            reason: format!("event-dedup checkpoint: {why}"),
        };
        let mut r = Reader::new(&body);
        r.take(8);
        if r.u32() != Some(VERSION) {
            return Err(bad("unknown version"));
        }
        r.u64();
        let mut entries = Vec::new();
        while !r.is_done() {
            let entry = (|| {
                let hash = r.u64()?;
                let seen_ms = r.i64()?;
                let tenant = Tenant::new(std::str::from_utf8(r.field()?).ok()?).ok()?;
                let id: Box<[u8]> = r.field()?.into();
                Some((
                    hash,
                    Entry {
                        tenant,
                        id,
                        seen_ms,
                    },
                ))
            })();
            entries.push(entry.ok_or_else(|| bad("damaged entry"))?);
        }
        entries.sort_by_key(|e| e.1.seen_ms);
        for (hash, e) in entries {
            d.order.push_back((e.seen_ms, hash));
            d.seen.entry(hash).or_default().push(e);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &Tenant, id: &str) -> EventKey {
        WriteBatch::new(t.clone()).event_key(id.as_bytes())
    }

    #[test]
    fn recognises_redelivery_per_tenant_and_expires() {
        let (a, b) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        let mut d = EventDedup::new(1000);
        assert!(d.first_sighting(&a, key(&a, "e1"), b"e1", 0));
        assert!(!d.first_sighting(&a, key(&a, "e1"), b"e1", 10));
        assert!(d.first_sighting(&b, key(&b, "e1"), b"e1", 16));
        // A forced hash collision with a different id is still a new event.
        assert!(d.first_sighting(&a, key(&a, "e1"), b"other", 20));
        // A batch that failed to be stored is forgotten, so its retry is accepted.
        let mut failed = WriteBatch::new(a.clone());
        let ev = failed.event_key(b"e9");
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"m")];
        failed
            .push_series(
                &mut l,
                &[strata_model::Sample::new(1, 1.0)],
                Some(ev),
                &strata_model::Limits::default(),
            )
            .unwrap();
        assert!(d.first_sighting(&a, ev, b"e9", 20));
        d.forget_batch(&failed);
        assert!(d.first_sighting(&a, ev, b"e9", 21));
        d.expire(1015);
        assert!(d.first_sighting(&a, key(&a, "e1"), b"e1", 1015));
        assert!(!d.first_sighting(&b, key(&b, "e1"), b"e1", 1016));
    }

    #[test]
    fn save_load_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.ckpt");
        let a = Tenant::new("a").unwrap();
        let mut d = EventDedup::new(1000);
        d.first_sighting(&a, key(&a, "e1"), b"e1", 5);
        d.first_sighting(&a, key(&a, "e2"), b"e2", 6);
        d.save(&p).unwrap();
        let mut l = EventDedup::load(&p, 1000).unwrap();
        assert_eq!(l.len(), 2);
        assert!(!l.first_sighting(&a, key(&a, "e2"), b"e2", 7));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert!(EventDedup::load(&p, 1000)
            .err()
            .unwrap()
            .to_string()
            .contains("checksum"));
        assert_eq!(
            EventDedup::load(&dir.path().join("none"), 1).unwrap().len(),
            0
        );
    }
}
