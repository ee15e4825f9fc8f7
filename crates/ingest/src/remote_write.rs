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
    SEEN.with(|cache| {
        let mut d = Decoder {
            ctx,
            cache: &mut cache.borrow_mut(),
            samples: Vec::new(),
            decoded: Decoded::default(),
        };
        let mut r = Reader { buf: proto, pos: 0 };
        let mut index = 0;
        while !r.done() {
            let (field, wire) = r.key()?;
            if field == 1 && wire == WIRE_LEN {
                let start = r.pos;
                let ts = r.len_delimited()?;
                d.series(ts, index, out).map_err(|e| e.shift(start))?;
                index += 1;
            } else {
                r.skip(wire)?;
            }
        }
        Ok(d.decoded)
    })
}

/// The state of one request's decoding.
struct Decoder<'c, 'l> {
    ctx: &'c DecodeContext<'l>,
    cache: &'c mut SeriesCache,
    /// The current series' samples (reused).
    samples: Vec<Sample>,
    decoded: Decoded,
}

impl Decoder<'_, '_> {
    /// Decodes the `TimeSeries` message `msg` (error offsets relative to it).
    fn series(&mut self, msg: &[u8], index: usize, out: &mut WriteBatch) -> Result<(), Malformed> {
        self.samples.clear();
        // Labels normally come first and together; when they do, their raw bytes identify the
        // series in the cache and are parsed only on a miss.
        let mut r = Reader { buf: msg, pos: 0 };
        while r.peek() == Some(LABEL_KEY) {
            r.pos += 1;
            r.len_delimited()?;
        }
        let leading = r.pos;
        let mut scattered = false;
        let mut histograms = 0;
        let mut bad_ts = None;
        let mut rejected_samples = 0;
        while !r.done() {
            let (field, wire) = r.key()?;
            match (field, wire) {
                (1, WIRE_LEN) => {
                    r.len_delimited()?;
                    scattered = true;
                }
                (2, WIRE_LEN) => {
                    let s = r.len_delimited()?;
                    let sample = sample(s).map_err(|e| e.shift(r.pos - s.len()))?;
                    match self
                        .ctx
                        .limits
                        .check_timestamp(sample.timestamp, self.ctx.now_ms)
                    {
                        Ok(()) => self.samples.push(sample),
                        Err(e) => {
                            rejected_samples += 1;
                            bad_ts.get_or_insert(e);
                        }
                    }
                }
                (4, WIRE_LEN) => {
                    r.len_delimited()?;
                    histograms += 1;
                }
                (_, w) => r.skip(w)?,
            }
        }
        let d = &mut self.decoded;
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
        if self.samples.is_empty() {
            return Ok(());
        }
        let raw = (!scattered && leading > 0).then(|| &msg[..leading]);
        let hash = raw.map(|raw| SeriesCache::hash(raw, out));
        if let (Some(raw), Some(hash)) = (raw, hash) {
            if self
                .cache
                .push_cached(self.ctx.limits, hash, raw, out, &self.samples, None)
            {
                d.accepted_samples += self.samples.len();
                return Ok(());
            }
        }
        let mut labels: SmallVec<[(&[u8], &[u8]); 16]> = SmallVec::new();
        let mut r = Reader { buf: msg, pos: 0 };
        while !r.done() {
            match r.key()? {
                (1, WIRE_LEN) => {
                    let l = r.len_delimited()?;
                    labels.push(label(l).map_err(|e| e.shift(r.pos - l.len()))?);
                }
                (_, w) => r.skip(w)?,
            }
        }
        match out.push_series(&mut labels, &self.samples, None, self.ctx.limits) {
            Ok(()) => {
                d.accepted_samples += self.samples.len();
                if let (Some(raw), Some(hash), Some(s)) = (raw, hash, out.get(out.series_len() - 1))
                {
                    self.cache.insert(hash, raw, &s);
                }
            }
            Err(e) => d.reject(
                Location::Index(index),
                RejectReason::Label(e),
                self.samples.len(),
            ),
        }
        Ok(())
    }
}

/// The key byte of a `TimeSeries.labels` field (field 1, length-delimited).
const LABEL_KEY: u8 = 0x0a;

fn label(msg: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
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

fn sample(msg: &[u8]) -> Result<Sample, Malformed> {
    // As every client encodes it: the value (field 1, fixed64), then the timestamp (field 2,
    // varint) ending the message.
    if let (Some(0x09), Some(v), Some(0x10)) = (
        msg.first(),
        msg.get(1..9).and_then(|v| <[u8; 8]>::try_from(v).ok()),
        msg.get(9),
    ) {
        let mut r = Reader { buf: msg, pos: 10 };
        if let Ok(t) = r.varint() {
            if r.done() {
                return Ok(Sample::new(t as i64, f64::from_le_bytes(v)));
            }
        }
    }
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

/// A protobuf defect at a byte offset: small and `Copy`, so the reader's results stay in
/// registers; it becomes an [`IngestError`] once, when decoding stops.
#[derive(Debug, Clone, Copy)]
struct Malformed {
    offset: usize,
    flaw: Flaw,
}

#[derive(Debug, Clone, Copy)]
enum Flaw {
    TruncatedVarint,
    VarintOverflow,
    VarintTooLong,
    FieldZero,
    PastEnd(u64),
    TruncatedFixed64,
    TruncatedFixed32,
    WireType(u8),
}

impl Malformed {
    /// Moves a nested message's offset into the enclosing message's frame.
    fn shift(self, by: usize) -> Malformed {
        Malformed {
            offset: self.offset + by,
            ..self
        }
    }
}

impl From<Malformed> for IngestError {
    fn from(m: Malformed) -> IngestError {
        let reason = match m.flaw {
            Flaw::TruncatedVarint => "truncated varint".to_string(),
            Flaw::VarintOverflow => "varint overflows 64 bits".to_string(),
            Flaw::VarintTooLong => "varint longer than 10 bytes".to_string(),
            Flaw::FieldZero => "field number 0".to_string(),
            Flaw::PastEnd(n) => format!("length {n} runs past the end of the message"),
            Flaw::TruncatedFixed64 => "truncated fixed64".to_string(),
            Flaw::TruncatedFixed32 => "truncated fixed32".to_string(),
            Flaw::WireType(w) => format!("unsupported wire type {w}"),
        };
        IngestError::Protobuf {
            offset: m.offset,
            reason,
        }
    }
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[cold]
    #[inline(never)]
    fn err(&self, flaw: Flaw) -> Malformed {
        Malformed {
            offset: self.pos,
            flaw,
        }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, Malformed> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as u64);
            }
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(Flaw::TruncatedVarint));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err(Flaw::VarintOverflow));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err(Flaw::VarintTooLong))
    }

    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8), Malformed> {
        let k = self.varint()?;
        let field = (k >> 3) as u32;
        if field == 0 {
            return Err(self.err(Flaw::FieldZero));
        }
        Ok((field, (k & 7) as u8))
    }

    #[inline(always)]
    fn len_delimited(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.varint()?;
        let rest = (self.buf.len() - self.pos.min(self.buf.len())) as u64;
        if n > rest {
            return Err(self.err(Flaw::PastEnd(n)));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn fixed64(&mut self) -> Result<u64, Malformed> {
        match self.buf.get(self.pos..self.pos + 8) {
            Some(b) => {
                let mut v = [0u8; 8];
                v.copy_from_slice(b);
                self.pos += 8;
                Ok(u64::from_le_bytes(v))
            }
            None => Err(self.err(Flaw::TruncatedFixed64)),
        }
    }

    fn skip(&mut self, wire: u8) -> Result<(), Malformed> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.fixed64().map(|_| ()),
            WIRE_LEN => self.len_delimited().map(|_| ()),
            WIRE_FIXED32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(self.err(Flaw::TruncatedFixed32));
                }
                self.pos += 4;
                Ok(())
            }
            w => Err(self.err(Flaw::WireType(w))),
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
