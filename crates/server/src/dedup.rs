//! Exact recognition of redelivered events by `event_id`, over a bounded horizon.
//!
//! Each shard owns one [`EventDedup`]. The tenant-seeded hash is only the map key: a hit is
//! confirmed by comparing tenant and id bytes, so a hash collision never drops an event. Memory
//! is bounded by the horizon: entries older than it (by arrival) are forgotten.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
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
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(16 + self.order.len() * 48);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(self.order.len() as u64).to_le_bytes());
        for (hash, bucket) in &self.seen {
            for e in bucket {
                buf.extend_from_slice(&hash.to_le_bytes());
                buf.extend_from_slice(&e.seen_ms.to_le_bytes());
                let t = e.tenant.as_str().as_bytes();
                buf.extend_from_slice(&(t.len() as u32).to_le_bytes());
                buf.extend_from_slice(t);
                buf.extend_from_slice(&(e.id.len() as u32).to_le_bytes());
                buf.extend_from_slice(&e.id);
            }
        }
        let crc = crc32(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Loads ids saved by [`EventDedup::save`]; a missing file is an empty set.
    pub fn load(path: &Path, horizon_ms: i64) -> Result<EventDedup, String> {
        let mut d = EventDedup::new(horizon_ms);
        let mut buf = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => f
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(d),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let bad = |why: &str| format!("{}: corrupt event-dedup checkpoint: {why}", path.display());
        if buf.len() < 24 || &buf[..8] != MAGIC {
            return Err(bad("bad header"));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32(body) != u32::from_le_bytes(crc.try_into().map_err(|_| bad("short"))?) {
            return Err(bad("checksum mismatch"));
        }
        if u32::from_le_bytes(body[8..12].try_into().map_err(|_| bad("short"))?) != VERSION {
            return Err(bad("unknown version"));
        }
        let mut cur = Cursor { b: body, pos: 20 };
        let mut entries = Vec::new();
        while cur.pos < body.len() {
            let entry = (|| {
                let hash = u64::from_le_bytes(cur.take(8)?.try_into().ok()?);
                let seen = i64::from_le_bytes(cur.take(8)?.try_into().ok()?);
                let tl = u32::from_le_bytes(cur.take(4)?.try_into().ok()?) as usize;
                let tenant = Tenant::new(std::str::from_utf8(cur.take(tl)?).ok()?).ok()?;
                let il = u32::from_le_bytes(cur.take(4)?.try_into().ok()?) as usize;
                let id: Box<[u8]> = cur.take(il)?.into();
                Some((
                    seen,
                    hash,
                    Entry {
                        tenant,
                        id,
                        seen_ms: seen,
                    },
                ))
            })();
            entries.push(entry.ok_or_else(|| bad("damaged entry"))?);
        }
        entries.sort_by_key(|e| e.0);
        for (seen, hash, e) in entries {
            d.order.push_back((seen, hash));
            d.seen.entry(hash).or_default().push(e);
        }
        Ok(d)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
}

fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
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
            .contains("checksum"));
        assert_eq!(
            EventDedup::load(&dir.path().join("none"), 1).unwrap().len(),
            0
        );
    }
}
