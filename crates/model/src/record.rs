//! The ingest-log record of a [`WriteBatch`]: the durable form of a write.
//!
//! Label keys dominate a write's size, so a log segment names each series in full once and
//! then by id: the writer and the reader each keep a [`SeriesDict`] that starts empty at every
//! segment (the log is read from segment starts, and truncated by whole segments, so the
//! definitions a record needs are always readable before it).
//!
//! Layout (version 2): `version u8`, tenant (`varint len`, bytes), `varint series`, then per
//! series a tag byte: `0` inline key (`varint len`, bytes), `1` definition (`u64 id`, `varint
//! len`, key bytes), `2` reference (`u64 id`); then `varint event_len+1` (0 = no event) and the
//! event id bytes, `varint samples`, and per sample a zigzag varint timestamp delta (from the
//! previous sample in the record, the first from 0) and the value's 8 bytes little-endian. The
//! log frames and checksums records; this codec still validates everything it reads.

use crate::key::tenant_seed;
use crate::{Sample, SeriesId, SeriesKeyRef, Tenant, WriteBatch};
use std::collections::HashMap;
use thiserror::Error;

const VERSION: u8 = 2;
const INLINE: u8 = 0;
const DEFINE: u8 = 1;
const REFERENCE: u8 = 2;

/// A log record that is not a valid write batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid write-batch record at byte {position}: {reason}")]
pub struct RecordError {
    /// Byte position in the record.
    pub position: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// The series defined so far in the current log segment, by id. Reset it whenever a new
/// segment starts, on the writing and the reading side alike.
#[derive(Default)]
pub struct SeriesDict {
    // id -> (tenant seed, key, entity): a hit must match seed and key, so a hash collision is
    // written inline instead of being merged with another series. The entity spares a reader
    // finding it again in the key.
    keys: HashMap<u64, (u64, Box<[u8]>, u64), crate::BuildIdHasher>,
}

impl SeriesDict {
    /// Forgets every definition (a new segment begins).
    pub fn clear(&mut self) {
        self.keys.clear();
    }

    /// Number of series defined.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is defined.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How a record names one series, as read.
enum Named<'a> {
    Inline(SeriesKeyRef<'a>),
    Define(u64, SeriesKeyRef<'a>),
    Reference(u64),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: &'static str) -> RecordError {
        RecordError {
            position: self.pos,
            reason,
        }
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| self.err("length past end of record"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.varint()?;
        self.bytes(usize::try_from(n).map_err(|_| self.err("length too large"))?)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| self.err("short u64"))?,
        ))
    }

    fn key(&self, bytes: &'a [u8]) -> Result<SeriesKeyRef<'a>, RecordError> {
        SeriesKeyRef::parse(bytes).ok_or_else(|| self.err("malformed series key"))
    }
}

impl WriteBatch {
    /// Appends the record form of this batch to `out`, naming series already in `dict` by id
    /// and adding the others to it.
    pub fn encode_record(&self, dict: &mut SeriesDict, out: &mut Vec<u8>) {
        out.reserve(16 + self.series_len() * 12 + self.samples_len() * 10);
        out.push(VERSION);
        let t = self.tenant().as_str().as_bytes();
        put_varint(out, t.len() as u64);
        out.extend_from_slice(t);
        put_varint(out, self.series_len() as u64);
        let seed = self.seed();
        let mut prev = 0i64;
        for s in self.iter() {
            let k = s.key.as_bytes();
            match dict.keys.get(&s.id.0) {
                Some((sd, dk, _)) if *sd == seed && dk.as_ref() == k => {
                    out.push(REFERENCE);
                    out.extend_from_slice(&s.id.0.to_le_bytes());
                }
                Some(_) => {
                    out.push(INLINE);
                    put_varint(out, k.len() as u64);
                    out.extend_from_slice(k);
                }
                None => {
                    dict.keys.insert(s.id.0, (seed, k.into(), s.entity));
                    out.push(DEFINE);
                    out.extend_from_slice(&s.id.0.to_le_bytes());
                    put_varint(out, k.len() as u64);
                    out.extend_from_slice(k);
                }
            }
            match s.event_id() {
                Some(e) => {
                    put_varint(out, e.len() as u64 + 1);
                    out.extend_from_slice(e);
                }
                None => out.push(0),
            }
            put_varint(out, s.samples.len() as u64);
            for x in s.samples {
                let d = x.timestamp.wrapping_sub(prev);
                prev = x.timestamp;
                put_varint(out, ((d << 1) ^ (d >> 63)) as u64);
                out.extend_from_slice(&x.value.to_bits().to_le_bytes());
            }
        }
    }

    /// Decodes a record written by [`WriteBatch::encode_record`], resolving references with
    /// (and adding definitions to) `dict`. Validates every part.
    pub fn decode_record(buf: &[u8], dict: &mut SeriesDict) -> Result<WriteBatch, RecordError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.bytes(1)?[0];
        if version != VERSION {
            return Err(r.err("unknown record version"));
        }
        let tenant =
            std::str::from_utf8(r.len_prefixed()?).map_err(|_| r.err("tenant not UTF-8"))?;
        let tenant = Tenant::new(tenant).map_err(|_| r.err("invalid tenant id"))?;
        let seed = tenant_seed(&tenant);
        let mut batch = WriteBatch::new(tenant);
        let n = r.varint()?;
        let mut samples = Vec::new();
        let mut prev = 0i64;
        for _ in 0..n {
            let at = r.pos;
            let tag = r.bytes(1)?[0];
            let named = match tag {
                INLINE => {
                    let k = r.len_prefixed()?;
                    Named::Inline(r.key(k)?)
                }
                DEFINE => {
                    let id = r.u64()?;
                    let k = r.len_prefixed()?;
                    Named::Define(id, r.key(k)?)
                }
                REFERENCE => Named::Reference(r.u64()?),
                _ => return Err(r.err("unknown series tag")),
            };
            let event = match r.varint()? {
                0 => None,
                n => Some(r.bytes(usize::try_from(n - 1).map_err(|_| r.err("length too large"))?)?),
            };
            let count = r.varint()?;
            if count > (buf.len() - r.pos) as u64 {
                return Err(r.err("sample count past end of record"));
            }
            samples.clear();
            for _ in 0..count {
                let z = r.varint()?;
                let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
                prev = prev.wrapping_add(d);
                let bits = r.u64()?;
                samples.push(Sample::new(prev, f64::from_bits(bits)));
            }
            let at_series = |reason| RecordError {
                position: at,
                reason,
            };
            match named {
                Named::Inline(key) => batch.push_key(key, &samples, event),
                Named::Define(id, key) => {
                    batch.push_key(key, &samples, event);
                    let pushed = batch.get(batch.series_len() - 1);
                    match pushed.map(|s| (s.id.0, s.entity)) {
                        Some((got, entity)) if got == id => {
                            dict.keys.insert(id, (seed, key.as_bytes().into(), entity));
                        }
                        _ => return Err(at_series("series definition does not match its id")),
                    }
                }
                // Known by the dictionary: neither the id nor the entity is hashed again.
                Named::Reference(id) => match dict.keys.get(&id) {
                    Some((sd, k, entity)) if *sd == seed => batch.push_identified(
                        SeriesKeyRef::new_unchecked(k),
                        SeriesId(id),
                        *entity,
                        &samples,
                        event,
                    ),
                    _ => {
                        return Err(at_series(
                            "reference to a series not defined in this segment",
                        ))
                    }
                },
            }
        }
        if r.pos != buf.len() {
            return Err(r.err("trailing bytes after last series"));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use proptest::prelude::*;

    /// Metric name, label value, event id, (timestamp, value bits) pairs.
    type Row = (String, String, Option<String>, Vec<(i64, u64)>);

    fn batch(series: &[Row]) -> WriteBatch {
        let mut b = WriteBatch::new(Tenant::new("t1").unwrap());
        for (name, v, ev, samples) in series {
            let ev = ev.as_ref().map(|e| b.event_key(e.as_bytes()));
            let s: Vec<Sample> = samples
                .iter()
                .map(|(t, v)| Sample::new(*t, f64::from_bits(*v)))
                .collect();
            // Series of one device share an entity; a reader must find the same one.
            let mut l: Vec<(&[u8], &[u8])> =
                vec![(b"__name__", name.as_bytes()), (b"device", v.as_bytes())];
            b.push_series(&mut l, &s, ev, &Limits::default()).unwrap();
        }
        b
    }

    fn assert_same(d: &WriteBatch, b: &WriteBatch) {
        assert_eq!(d.tenant(), b.tenant());
        assert_eq!(d.series_len(), b.series_len());
        for (x, y) in d.iter().zip(b.iter()) {
            assert_eq!(x.id, y.id);
            assert_eq!(x.entity, y.entity);
            assert_eq!(x.key, y.key);
            assert_eq!(x.event_id(), y.event_id());
            assert_eq!(x.event.map(|e| e.hash), y.event.map(|e| e.hash));
            let bits = |s: &[Sample]| {
                s.iter()
                    .map(|s| (s.timestamp, s.value.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(x.samples), bits(y.samples));
        }
    }

    fn series_strategy() -> impl Strategy<Value = Vec<Row>> {
        proptest::collection::vec(
            (
                "[a-c]{1,2}",
                "[a-c0-9]{1,2}",
                proptest::option::of("[a-z0-9-]{1,10}"),
                proptest::collection::vec((any::<i64>(), any::<u64>()), 0..5),
            ),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn round_trip_over_a_segment(records in proptest::collection::vec(series_strategy(), 1..5)) {
            let (mut wdict, mut rdict) = (SeriesDict::default(), SeriesDict::default());
            let mut bufs = Vec::new();
            for r in &records {
                let b = batch(r);
                let mut buf = Vec::new();
                b.encode_record(&mut wdict, &mut buf);
                bufs.push((b, buf));
            }
            for (b, buf) in &bufs {
                // Every truncation is an error, never a panic.
                for cut in 0..buf.len() {
                    let mut scratch = SeriesDict { keys: rdict.keys.clone() };
                    prop_assert!(WriteBatch::decode_record(&buf[..cut], &mut scratch).is_err());
                }
                let d = WriteBatch::decode_record(buf, &mut rdict).unwrap();
                assert_same(&d, b);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WriteBatch::decode_record(&bytes, &mut SeriesDict::default());
        }
    }

    #[test]
    fn references_shrink_records_and_need_their_segment() {
        let rows = vec![("temp".to_string(), "a".to_string(), None, vec![(1, 1)])];
        let mut dict = SeriesDict::default();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        batch(&rows).encode_record(&mut dict, &mut first);
        batch(&rows).encode_record(&mut dict, &mut second);
        assert!(second.len() < first.len());
        let err = WriteBatch::decode_record(&second, &mut SeriesDict::default()).unwrap_err();
        assert!(err.reason.contains("not defined"));
        let mut rdict = SeriesDict::default();
        WriteBatch::decode_record(&first, &mut rdict).unwrap();
        assert_same(
            &WriteBatch::decode_record(&second, &mut rdict).unwrap(),
            &batch(&rows),
        );
    }

    #[test]
    fn colliding_id_is_written_inline() {
        let rows = vec![("temp".to_string(), "a".to_string(), None, vec![(1, 1)])];
        let b = batch(&rows);
        let mut dict = SeriesDict::default();
        // Pretend another series already owns this id.
        dict.keys.insert(
            b.get(0).unwrap().id.0,
            (
                tenant_seed(b.tenant()),
                b"__name__\xffother\xff".to_vec().into(),
                0,
            ),
        );
        let mut buf = Vec::new();
        b.encode_record(&mut dict, &mut buf);
        let mut rdict = SeriesDict::default();
        assert_same(&WriteBatch::decode_record(&buf, &mut rdict).unwrap(), &b);
    }
}
