//! Prometheus remote write 1.0: a snappy block-compressed protobuf `WriteRequest`.
//!
//! A hand-rolled reader walks the message in place: labels stay borrowed slices of the
//! decompressed body, and scratch buffers are reused, so nothing is allocated per series or per
//! sample. Metadata and exemplars are skipped; native histograms are refused per series (not yet
//! supported) and counted. NaN values are allowed: Prometheus sends staleness markers as NaN.

use crate::cache::SeriesCache;
use crate::{DecodeContext, Decoded, IngestError, Location, RejectReason};
use smallvec::SmallVec;
use std::cell::RefCell;
use strata_model::{Sample, WriteBatch};

thread_local! {
    /// Decompression buffer, reused across requests on the same thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Series seen before on this thread, by the hash of their raw label bytes.
    static SEEN: RefCell<SeriesCache> = RefCell::new(SeriesCache::default());
}

/// One series to encode: its label pairs and its samples.
pub type SeriesToEncode<'a> = (&'a [(&'a str, &'a str)], &'a [Sample]);

/// Encodes series as a snappy-compressed `WriteRequest`, field for field as Prometheus does:
/// for feeding Strata (or any remote-write receiver) from tools, benches and tests.
pub fn encode(series: &[SeriesToEncode<'_>]) -> Vec<u8> {
    fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }
    fn field(buf: &mut Vec<u8>, number: u32, bytes: &[u8]) {
        varint(buf, ((number << 3) | WIRE_LEN as u32) as u64);
        varint(buf, bytes.len() as u64);
        buf.extend_from_slice(bytes);
    }
    let (mut req, mut ts, mut msg) = (Vec::new(), Vec::new(), Vec::new());
    for (labels, samples) in series {
        ts.clear();
        for (name, value) in labels.iter() {
            msg.clear();
            field(&mut msg, 1, name.as_bytes());
            field(&mut msg, 2, value.as_bytes());
            field(&mut ts, 1, &msg);
        }
        for s in samples.iter() {
            msg.clear();
            msg.push(0x09);
            msg.extend_from_slice(&s.value.to_le_bytes());
            msg.push(0x10);
            varint(&mut msg, s.timestamp as u64);
            field(&mut ts, 2, &msg);
        }
        field(&mut req, 1, &ts);
    }
    snap::raw::Encoder::new()
        .compress_vec(&req)
        .unwrap_or_default()
}

/// Decodes a snappy-compressed `WriteRequest` into `out`.
pub fn decode(
    body: &[u8],
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    let len = snap::raw::decompress_len(body).map_err(|e| IngestError::Snappy(e.to_string()))?;
    if len > ctx.max_decompressed_bytes {
        return Err(IngestError::TooLarge {
            size: len,
            limit: ctx.max_decompressed_bytes,
        });
    }
    SCRATCH.with(|s| {
        let mut buf = s.borrow_mut();
        // Decompression overwrites the buffer: it is zeroed only where it grows.
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let n = snap::raw::Decoder::new()
            .decompress(body, &mut buf[..len])
            .map_err(|e| IngestError::Snappy(e.to_string()))?;
        let r = decode_uncompressed(&buf[..n], ctx, out);
        // Do not keep a huge buffer alive after a huge request.
        if buf.capacity() > 16 << 20 {
            *buf = Vec::new();
        }
        r
    })
}

/// Decodes an uncompressed `WriteRequest` into `out`.
pub fn decode_uncompressed(
    proto: &[u8],
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    let mut d = Decoded::default();
    let mut labels: SmallVec<[(&[u8], &[u8]); 16]> = SmallVec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut r = Reader { buf: proto, pos: 0 };
    let mut index = 0;
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == WIRE_LEN {
            let start = r.pos;
            let ts = r.len_delimited()?;
            series(
                ts,
                start,
                index,
                ctx,
                &mut labels,
                &mut samples,
                out,
                &mut d,
            )?;
            index += 1;
        } else {
            r.skip(wire)?;
        }
    }
    Ok(d)
}

#[allow(clippy::too_many_arguments)]
fn series<'a>(
    msg: &'a [u8],
    base: usize,
    index: usize,
    ctx: &DecodeContext<'_>,
    labels: &mut SmallVec<[(&'a [u8], &'a [u8]); 16]>,
    samples: &mut Vec<Sample>,
    out: &mut WriteBatch,
    d: &mut Decoded,
) -> Result<(), IngestError> {
    labels.clear();
    samples.clear();
    let mut r = Reader { buf: msg, pos: 0 };
    let mut histograms = 0;
    let mut bad_ts = None;
    let mut rejected_samples = 0;
    // Labels normally come first and together: `raw_end` marks the end of that run.
    let mut raw_end = 0;
    let mut raw_labels: SmallVec<[(usize, &'a [u8]); 16]> = SmallVec::new();
    let mut scattered = false;
    while !r.done() {
        let (field, wire) = r.key().map_err(|e| e.shift(base))?;
        match (field, wire) {
            (1, WIRE_LEN) => {
                // Only located here: parsed below when the series is not in the cache.
                let l = r.len_delimited().map_err(|e| e.shift(base))?;
                raw_labels.push((base + r.pos - l.len(), l));
                let field_start = r.pos - l.len() - 1 - varint_len(l.len() as u64);
                if raw_labels.len() == 1 || raw_end == field_start {
                    raw_end = r.pos;
                } else {
                    scattered = true;
                }
            }
            (2, WIRE_LEN) => {
                let s = r.len_delimited().map_err(|e| e.shift(base))?;
                let sample = sample(s).map_err(|e| e.shift(base + r.pos - s.len()))?;
                match ctx.limits.check_timestamp(sample.timestamp, ctx.now_ms) {
                    Ok(()) => samples.push(sample),
                    Err(e) => {
                        rejected_samples += 1;
                        bad_ts.get_or_insert(e);
                    }
                }
            }
            (4, WIRE_LEN) => {
                r.len_delimited().map_err(|e| e.shift(base))?;
                histograms += 1;
            }
            (_, w) => r.skip(w).map_err(|e| e.shift(base))?,
        }
    }
    if let Some(e) = bad_ts {
        d.reject(
            Location::Index(index),
            RejectReason::Timestamp(e),
            rejected_samples,
        );
    }
    if histograms > 0 {
        d.reject(
            Location::Index(index),
            RejectReason::Invalid("native histograms are not supported yet".into()),
            histograms,
        );
    }
    if samples.is_empty() {
        return Ok(());
    }
    let raw = (!scattered && !raw_labels.is_empty()).then(|| &msg[..raw_end]);
    let hash = raw.map(|raw| SeriesCache::hash(raw, out));
    if let (Some(raw), Some(hash)) = (raw, hash) {
        if SEEN.with(|c| {
            c.borrow_mut()
                .push_cached(ctx.limits, hash, raw, out, samples)
        }) {
            d.accepted_samples += samples.len();
            return Ok(());
        }
    }
    for (at, l) in &raw_labels {
        labels.push(label(l).map_err(|e| e.shift(*at))?);
    }
    match out.push_series(labels, samples, None, ctx.limits) {
        Ok(()) => {
            d.accepted_samples += samples.len();
            if let (Some(raw), Some(hash), Some(s)) = (raw, hash, out.get(out.series_len() - 1)) {
                SEEN.with(|c| c.borrow_mut().insert(hash, raw, &s));
            }
        }
        Err(e) => d.reject(
            Location::Index(index),
            RejectReason::Label(e),
            samples.len(),
        ),
    }
    Ok(())
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn label(msg: &[u8]) -> Result<(&[u8], &[u8]), IngestError> {
    let mut r = Reader { buf: msg, pos: 0 };
    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
    while !r.done() {
        match r.key()? {
            (1, WIRE_LEN) => name = r.len_delimited()?,
            (2, WIRE_LEN) => value = r.len_delimited()?,
            (_, w) => r.skip(w)?,
        }
    }
    Ok((name, value))
}

fn sample(msg: &[u8]) -> Result<Sample, IngestError> {
    let mut r = Reader { buf: msg, pos: 0 };
    let (mut value, mut ts) = (0.0, 0i64);
    while !r.done() {
        match r.key()? {
            (1, WIRE_FIXED64) => value = f64::from_bits(r.fixed64()?),
            (2, WIRE_VARINT) => ts = r.varint()? as i64,
            (_, w) => r.skip(w)?,
        }
    }
    Ok(Sample::new(ts, value))
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl IngestError {
    /// Moves a nested message's offset into the enclosing message's frame.
    fn shift(self, by: usize) -> IngestError {
        match self {
            IngestError::Protobuf { offset, reason } => IngestError::Protobuf {
                offset: offset + by,
                reason,
            },
            e => e,
        }
    }
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn err(&self, reason: &str) -> IngestError {
        IngestError::Protobuf {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, IngestError> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as u64);
            }
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64, IngestError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    #[inline]
    fn key(&mut self) -> Result<(u32, u8), IngestError> {
        let k = self.varint()?;
        let field = (k >> 3) as u32;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok((field, (k & 7) as u8))
    }

    #[inline]
    fn len_delimited(&mut self) -> Result<&'a [u8], IngestError> {
        let n = self.varint()?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err(&format!("length {n} runs past the end of the message")));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed64(&mut self) -> Result<u64, IngestError> {
        let b = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| self.err("truncated fixed64"))?;
        self.pos += 8;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| self.err("truncated fixed64"))?,
        ))
    }

    fn skip(&mut self, wire: u8) -> Result<(), IngestError> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.fixed64().map(|_| ()),
            WIRE_LEN => self.len_delimited().map(|_| ()),
            WIRE_FIXED32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(self.err("truncated fixed32"));
                }
                self.pos += 4;
                Ok(())
            }
            w => Err(self.err(&format!("unsupported wire type {w}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::{Limits, Tenant};

    #[test]
    fn varint_edges() {
        let mut r = Reader {
            buf: &[0xff; 11],
            pos: 0,
        };
        assert!(r.varint().is_err());
        let mut r = Reader {
            buf: &[0x80, 0x01],
            pos: 0,
        };
        assert_eq!(r.varint().unwrap(), 128);
        let limits = Limits::default();
        let ctx = DecodeContext {
            limits: &limits,
            now_ms: 0,
            max_decompressed_bytes: 1 << 20,
        };
        let mut out = WriteBatch::new(Tenant::default());
        // Group wire types are not used by remote write.
        assert!(decode_uncompressed(&[0x0b], &ctx, &mut out).is_err());
    }
}
