//! The chunk codec: one series' samples, sorted by time, in a few bytes each.
//!
//! Timestamps are delta-of-delta encoded (regular scrapes cost nearly nothing). Values that are
//! decimals with few digits (as sensors report them) are scaled to integers and delta encoded,
//! as VictoriaMetrics does; other values are XORed with their predecessor. All numbers are
//! zigzag varints. Sealed chunks in blocks are compressed both with zstd (over those varints)
//! and with pco (over the timestamp and value columns, which fits an entropy coder to their
//! distribution), and the smaller is kept: pco usually wins by about 10 %. Evenly spaced
//! timestamps are stored as first and step. Longer such chunks are *paged*: their pco pages share
//! one header and decode on their own, so [`decode_range`] decodes only the pages a query's time
//! range touches (paged chunks are kept even when up to 2 % larger than zstd).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use strata_model::{Fields, Sample};

const RAW: u8 = 0;
const ZSTD: u8 = 1;
const PCO: u8 = 2;
/// Pco values with evenly spaced timestamps, stored as first and step.
const PCO_REGULAR: u8 = 3;
/// As `PCO_REGULAR`, with the values in pages that decode on their own (see [`encode_paged`]).
const PCO_PAGED: u8 = 4;
/// About how many samples a page of a paged chunk holds (6 hours at 15 s): a reader of a short
/// range decodes one or two pages, not the whole chunk, for a few bytes more per page. Each
/// page costs pco a decoder setup: 1440 decodes a day 19 % faster than 720, and is smaller.
pub const PAGE_SAMPLES: usize = 1440;
/// In a pco chunk: values are floats, not scaled decimals.
const PCO_FLOATS: u8 = 0xFF;
const VALUES_DECIMAL: u8 = 0;
const VALUES_XOR: u8 = 1;
/// Largest decimal exponent tried (values with up to this many fraction digits).
const MAX_DECIMALS: i32 = 6;
const ZSTD_LEVEL: i32 = 9;
/// Pco's compression level: 6 decodes about 8 % faster than the default 8, for 0.2 % more bytes.
const PCO_LEVEL: usize = 6;

/// The pco configurations tried on a column; the smallest result is kept. Pco's automatic delta
/// choice misses plain first-order deltas on some shapes (a counter that rarely moves comes out
/// 6x larger), while first-order deltas lose on noise around a level.
fn pco_configs() -> [pco::ChunkConfig; 2] {
    let auto = pco::ChunkConfig::default().with_compression_level(PCO_LEVEL);
    let first_order = auto
        .clone()
        .with_delta_spec(pco::DeltaSpec::TryConsecutive(1));
    [auto, first_order]
}

/// `column` compressed by pco's standalone format, the smaller of [`pco_configs`].
fn pco_standalone<T: pco::data_types::Number>(column: &[T]) -> Option<Vec<u8>> {
    pco_configs()
        .iter()
        .filter_map(|cfg| pco::standalone::simple_compress(column, cfg).ok())
        .min_by_key(Vec::len)
}

/// A chunk that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk damaged: {0}")]
pub struct ChunkError(pub &'static str);

/// Appends `v` as a LEB128 varint.
pub(crate) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Zigzag: small magnitudes of either sign become small unsigned numbers.
pub(crate) fn zig(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zig`].
pub(crate) fn unzig(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    #[inline]
    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.p).ok_or(ChunkError("truncated"))?;
            self.p += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(ChunkError("varint too long"))
    }
    fn byte(&mut self) -> Result<u8, ChunkError> {
        let b = *self.b.get(self.p).ok_or(ChunkError("truncated"))?;
        self.p += 1;
        Ok(b)
    }
}

/// The smallest number of decimals `k` such that every value is exactly `int / 10^k`.
fn decimals(samples: &[Sample]) -> Option<(i32, f64)> {
    'k: for k in 0..=MAX_DECIMALS {
        let scale = 10f64.powi(k);
        for s in samples {
            let x = (s.value * scale).round();
            // Checked as decoding rebuilds it, from an integer: -0.0 would come back as 0.0.
            if x.is_nan()
                || x.abs() >= 9.0e15
                || ((x as i64) as f64 / scale).to_bits() != s.value.to_bits()
            {
                continue 'k;
            }
        }
        return Some((k, scale));
    }
    None
}

/// Encodes sorted samples (one per timestamp). `compress`: also zstd the result when smaller.
pub fn encode(samples: &[Sample], compress: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(samples.len() * 3 + 16);
    put(&mut body, samples.len() as u64);
    let (mut prev_t, mut prev_d) = (0i64, 0i64);
    for (i, s) in samples.iter().enumerate() {
        let d = s.timestamp.wrapping_sub(prev_t);
        put(
            &mut body,
            zig(if i == 0 {
                s.timestamp
            } else {
                d.wrapping_sub(prev_d)
            }),
        );
        prev_d = if i == 0 { 0 } else { d };
        prev_t = s.timestamp;
    }
    let decimals = decimals(samples);
    match decimals {
        Some((k, scale)) => {
            body.push(VALUES_DECIMAL);
            body.push(k as u8);
            let mut prev = 0i64;
            for s in samples {
                let x = (s.value * scale).round() as i64;
                put(&mut body, zig(x.wrapping_sub(prev)));
                prev = x;
            }
        }
        None => {
            body.push(VALUES_XOR);
            let mut prev = 0u64;
            for s in samples {
                let bits = s.value.to_bits();
                put(&mut body, (bits ^ prev).swap_bytes());
                prev = bits;
            }
        }
    }
    let mut best = Vec::with_capacity(body.len() + 1);
    best.push(RAW);
    best.extend_from_slice(&body);
    if compress {
        if let Some(z) = zstd_compress(&body) {
            if z.len() + 5 < best.len() {
                best.clear();
                best.push(ZSTD);
                put(&mut best, body.len() as u64);
                best.extend_from_slice(&z);
            }
        }
        if let Some(p) = encode_pco(samples, decimals) {
            // Paged chunks let a reader decode only the pages it needs: worth a little size.
            let allowance = if p[0] == PCO_PAGED {
                best.len() / 50
            } else {
                0
            };
            if p.len() < best.len() + allowance {
                best = p;
            }
        }
    }
    best
}

/// Compresses with zstd through a context kept per thread: a fresh context per chunk costs
/// more than compressing a small chunk (a flush compresses hundreds of thousands).
fn zstd_compress(body: &[u8]) -> Option<Vec<u8>> {
    thread_local! {
        static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    ZSTD.with(|z| {
        let mut z = z.borrow_mut();
        if z.is_none() {
            *z = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        z.as_mut()?.compress(body).ok()
    })
}

/// Largest output decompressed in one call into a buffer of the declared size (bigger claims
/// grow the buffer with the data instead).
const ZSTD_BULK_MAX: u64 = 1 << 20;

/// Decompresses zstd `data` that must hold exactly `len` bytes, `None` when it does not. The
/// declared length is only a claim: the buffer grows with what the data holds (sized up front
/// for ordinary ratios), so a damaged length allocates nothing.
pub(crate) fn zstd_exact(data: &[u8], len: u64) -> Option<Vec<u8>> {
    // A chunk's worth, through a context kept per thread: a fresh one per chunk cost a query
    // reading thousands of small chunks a sixth of its time.
    if len <= ZSTD_BULK_MAX {
        thread_local! {
            static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        return UNZSTD.with(|z| {
            let mut z = z.borrow_mut();
            if z.is_none() {
                *z = zstd::bulk::Decompressor::new().ok();
            }
            let out = z.as_mut()?.decompress(data, len as usize).ok()?;
            (out.len() as u64 == len).then_some(out)
        });
    }
    let mut out = Vec::with_capacity(
        usize::try_from(len)
            .ok()?
            .min(data.len().saturating_mul(16)),
    );
    zstd::stream::read::Decoder::with_buffer(data)
        .and_then(|d| d.take(len.saturating_add(1)).read_to_end(&mut out))
        .ok()?;
    (out.len() as u64 == len).then_some(out)
}

/// The step of `samples` when they are evenly spaced (at least two, positive step).
fn regular_step(samples: &[Sample]) -> Option<i64> {
    let step = samples
        .get(1)?
        .timestamp
        .checked_sub(samples[0].timestamp)?;
    (step > 0
        && samples
            .windows(2)
            .all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == step))
    .then_some(step)
}

/// A chunk's values as pco compresses them.
enum Column {
    /// Decimals scaled by `10^k` to integers.
    Ints(u8, Vec<i64>),
    /// Any other floats.
    Floats(Vec<f64>),
}

impl Column {
    /// The column of `samples`, whose [`decimals`] are `decimals`.
    fn with(samples: &[Sample], decimals: Option<(i32, f64)>) -> Column {
        match decimals {
            Some((k, scale)) => Column::Ints(
                k as u8,
                samples
                    .iter()
                    .map(|s| (s.value * scale).round() as i64)
                    .collect(),
            ),
            None => Column::Floats(samples.iter().map(|s| s.value).collect()),
        }
    }

    /// The kind byte: decimals `k`, or `PCO_FLOATS`.
    fn kind(&self) -> u8 {
        match self {
            Column::Ints(k, _) => *k,
            Column::Floats(_) => PCO_FLOATS,
        }
    }
}

/// The pco forms: `PCO, varint n, kind (decimals k, or PCO_FLOATS), varint ts_len, ts, values`
/// or, for evenly spaced timestamps, `PCO_REGULAR, varint n, kind, zig first, zig step, values`
/// (regular scrapes then cost no timestamp decoding at all), or for more than a page of them
/// the paged form of [`encode_paged`]. Floats are kept only where pco is bit-exact (NaN
/// payloads such as staleness markers). `decimals`: what [`decimals`] found for `samples`
/// ([`encode`] finds it once for both its forms).
fn encode_pco(samples: &[Sample], decimals: Option<(i32, f64)>) -> Option<Vec<u8>> {
    if samples.len() < 16 {
        return None;
    }
    let column = Column::with(samples, decimals);
    let step = regular_step(samples);
    let out = match step {
        Some(step) if samples.len() > PAGE_SAMPLES => {
            encode_paged(samples[0].timestamp, step, &column)?
        }
        _ => {
            let vb = match &column {
                Column::Ints(_, v) => pco_standalone(v)?,
                Column::Floats(v) => pco_standalone(v)?,
            };
            let mut out = Vec::with_capacity(vb.len() + 32);
            match step {
                Some(step) => {
                    out.push(PCO_REGULAR);
                    put(&mut out, samples.len() as u64);
                    out.push(column.kind());
                    put(&mut out, zig(samples[0].timestamp));
                    put(&mut out, zig(step));
                }
                None => {
                    let ts: Vec<i64> = samples.iter().map(|s| s.timestamp).collect();
                    let tsb = pco_standalone(&ts)?;
                    out.push(PCO);
                    put(&mut out, samples.len() as u64);
                    out.push(column.kind());
                    put(&mut out, tsb.len() as u64);
                    out.extend_from_slice(&tsb);
                }
            }
            out.extend_from_slice(&vb);
            out
        }
    };
    if let Column::Floats(_) = column {
        let mut back = Vec::with_capacity(samples.len());
        decode(&out, &mut back).ok()?;
        if back.len() != samples.len()
            || back
                .iter()
                .zip(samples)
                .any(|(a, b)| a.timestamp != b.timestamp || a.value.to_bits() != b.value.to_bits())
        {
            return None;
        }
    }
    Some(out)
}

/// The sample counts of the pages of an `n`-sample paged chunk with `pages` pages: equal, the
/// first `n % pages` one larger.
fn page_counts(n: usize, pages: usize) -> impl Iterator<Item = usize> {
    (0..pages).map(move |i| n / pages + usize::from(i < n % pages))
}

/// The paged form, for evenly spaced timestamps: `PCO_PAGED, varint n, kind, zig first,
/// zig step, varint pages, varint meta_len, varint page_len * pages, meta, pages`, where `meta`
/// is pco's header and chunk metadata (shared by the pages) and each page decodes on its own.
fn encode_paged(first: i64, step: i64, column: &Column) -> Option<Vec<u8>> {
    fn pages_of<T: pco::data_types::Number>(
        values: &[T],
        counts: Vec<usize>,
    ) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        let encode = |cfg: pco::ChunkConfig| -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
            let cfg = cfg.with_paging_spec(pco::PagingSpec::Exact(counts.clone()));
            let fc = pco::wrapped::FileCompressor::default();
            let mut cc = fc.chunk_compressor(values, &cfg).ok()?;
            let meta = cc.write_meta(fc.write_header(Vec::new()).ok()?).ok()?;
            let pages = (0..cc.n_per_page().len())
                .map(|i| cc.write_page(i, Vec::new()).ok())
                .collect::<Option<Vec<_>>>()?;
            Some((meta, pages))
        };
        pco_configs()
            .into_iter()
            .filter_map(encode)
            .min_by_key(|(meta, pages)| meta.len() + pages.iter().map(Vec::len).sum::<usize>())
    }
    let n = match column {
        Column::Ints(_, v) => v.len(),
        Column::Floats(v) => v.len(),
    };
    let counts: Vec<usize> = page_counts(n, n.div_ceil(PAGE_SAMPLES)).collect();
    let pages_n = counts.len();
    let (meta, pages) = match column {
        Column::Ints(_, v) => pages_of(v, counts)?,
        Column::Floats(v) => pages_of(v, counts)?,
    };
    let mut out = Vec::with_capacity(
        meta.len() + pages.iter().map(Vec::len).sum::<usize>() + 16 + 3 * pages_n,
    );
    out.push(PCO_PAGED);
    put(&mut out, n as u64);
    out.push(column.kind());
    put(&mut out, zig(first));
    put(&mut out, zig(step));
    put(&mut out, pages_n as u64);
    put(&mut out, meta.len() as u64);
    for p in &pages {
        put(&mut out, p.len() as u64);
    }
    out.extend_from_slice(&meta);
    for p in &pages {
        out.extend_from_slice(p);
    }
    Some(out)
}

/// Decodes the pages of a paged chunk (after its flag) that overlap `[start, end]`.
fn decode_paged(
    rest: &[u8],
    start: i64,
    end: i64,
    fields: Fields,
    out: &mut Vec<Sample>,
) -> Result<(), ChunkError> {
    let mut r = Reader { b: rest, p: 0 };
    let n = r.varint()? as usize;
    let kind = r.byte()?;
    let (first, step) = (unzig(r.varint()?), unzig(r.varint()?));
    let pages = r.varint()? as usize;
    let meta_len = r.varint()? as usize;
    if pages == 0 || pages > n || pages > rest.len() || step <= 0 {
        return Err(ChunkError("bad page count or step"));
    }
    // The encoder's pages hold at most PAGE_SAMPLES (never lowered, so older chunks' pages are
    // smaller): this bounds what a damaged count makes a reader allocate, and the timestamps
    // must stay inside i64 for the page arithmetic below.
    if n.div_ceil(pages) > PAGE_SAMPLES
        || first
            .checked_add((n as i64 - 1).saturating_mul(step))
            .is_none()
    {
        return Err(ChunkError("bad sample count"));
    }
    let mut lens = Vec::with_capacity(pages);
    for _ in 0..pages {
        lens.push(r.varint()? as usize);
    }
    let body = &rest[r.p..];
    let meta = body.get(..meta_len).ok_or(ChunkError("truncated"))?;
    let mut wanted = Vec::new();
    let (mut at, mut index) = (meta_len, 0i64);
    for (len, count) in lens.iter().zip(page_counts(n, pages)) {
        let bytes = at
            .checked_add(*len)
            .and_then(|e| body.get(at..e))
            .ok_or(ChunkError("truncated"))?;
        let lo = first.wrapping_add(index.wrapping_mul(step));
        let hi = lo.wrapping_add((count as i64 - 1).wrapping_mul(step));
        if hi >= start && lo <= end {
            // The samples of the page inside the range (step > 0, checked above).
            // In i128: the range's ends may lie anywhere in i64, far from the page.
            let (lo_w, step_w) = (lo as i128, step as i128);
            let skip = if lo < start {
                (start as i128 - lo_w - 1) / step_w + 1
            } else {
                0
            };
            let keep = if hi > end {
                (end as i128 - lo_w) / step_w + 1
            } else {
                count as i128
            };
            wanted.push(Page {
                first: lo,
                count,
                bytes,
                keep: skip as usize..keep as usize,
            });
        }
        at += len;
        index += count as i64;
    }
    if at != body.len() {
        return Err(ChunkError("trailing bytes"));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    if kind != PCO_FLOATS && kind as i32 > MAX_DECIMALS {
        return Err(ChunkError("bad decimal exponent"));
    }
    out.reserve(wanted.iter().map(|p| p.keep.len()).sum());
    match kind {
        PCO_FLOATS => decode_pages::<f64>(meta, &wanted, step, out, |v| v),
        // Decimals cannot hold staleness markers: their values need not be decoded at all.
        _ if fields == Fields::Timestamps => {
            for p in &wanted {
                out.extend(p.times(step).map(|t| Sample::new(t, 0.0)));
            }
            Ok(())
        }
        // Integers need no scaling (and dividing by 1 would cost as much as the rest).
        0 => decode_pages::<i64>(meta, &wanted, step, out, |x| x as f64),
        k => {
            let scale = 10f64.powi(k as i32);
            decode_pages::<i64>(meta, &wanted, step, out, |x| x as f64 / scale)
        }
    }
}

/// A page of a paged chunk to decode.
struct Page<'a> {
    /// Timestamp of its first sample.
    first: i64,
    /// Samples it holds.
    count: usize,
    /// Its pco bytes.
    bytes: &'a [u8],
    /// The samples wanted, by position in the page.
    keep: std::ops::Range<usize>,
}

impl Page<'_> {
    /// The timestamps of the samples wanted (`step` apart). An exact-size iterator, so what
    /// it feeds extends a vector without per-push checks.
    fn times(&self, step: i64) -> impl ExactSizeIterator<Item = i64> {
        let first = self.first;
        self.keep
            .clone()
            .map(move |i| first.wrapping_add((i as i64).wrapping_mul(step)))
    }
}

/// Decodes the wanted samples of `pages` of the pco chunk described by `meta`.
fn decode_pages<T: pco::data_types::Number>(
    meta: &[u8],
    pages: &[Page<'_>],
    step: i64,
    out: &mut Vec<Sample>,
    value: impl Fn(T) -> f64,
) -> Result<(), ChunkError> {
    let damaged = |_| ChunkError("pco data damaged");
    let (fd, rest) = pco::wrapped::FileDecompressor::new(meta).map_err(damaged)?;
    let (mut cd, _) = fd.chunk_decompressor::<T, _>(rest).map_err(damaged)?;
    let mut buf: Vec<T> = Vec::new();
    for p in pages {
        // Pages overwrite the buffer: it is zeroed only when it grows.
        if buf.len() < p.count {
            buf.resize(p.count, T::default());
        }
        let mut pd = cd.page_decompressor(p.bytes, p.count).map_err(damaged)?;
        let progress = pd.read(&mut buf[..p.count]).map_err(damaged)?;
        if progress.n_processed != p.count || !progress.finished {
            return Err(ChunkError("page shorter than its count"));
        }
        out.extend(
            p.times(step)
                .zip(&buf[p.keep.clone()])
                .map(|(t, v)| Sample::new(t, value(*v))),
        );
    }
    Ok(())
}

/// Most samples a pco chunk holds: a damaged count above it is refused before anything is
/// allocated for it (a column of `n` numbers is decoded into `n` places, never into what the
/// damaged pco header claims).
const PCO_MAX_SAMPLES: usize = 1 << 24;

/// A pco column of exactly `n` numbers.
fn pco_column<T: pco::data_types::Number>(bytes: &[u8], n: usize) -> Result<Vec<T>, ChunkError> {
    let damaged = ChunkError("pco data damaged");
    if n > PCO_MAX_SAMPLES {
        return Err(ChunkError("sample count too large"));
    }
    let mut out = vec![T::default(); n];
    let progress = pco::standalone::simple_decompress_into(bytes, &mut out).map_err(|_| damaged)?;
    if progress.n_processed != n || !progress.finished {
        return Err(ChunkError("column lengths disagree"));
    }
    Ok(out)
}

/// Decodes the pco forms (`regular`: `PCO_REGULAR`), appending to `out`.
fn decode_pco(rest: &[u8], regular: bool, out: &mut Vec<Sample>) -> Result<(), ChunkError> {
    let mut r = Reader { b: rest, p: 0 };
    let n = r.varint()? as usize;
    let kind = r.byte()?;
    let (regular_ts, ts) = if regular {
        ((unzig(r.varint()?), unzig(r.varint()?)), Vec::new())
    } else {
        let ts_len = r.varint()? as usize;
        let ts_end =
            r.p.checked_add(ts_len)
                .filter(|e| *e <= rest.len())
                .ok_or(ChunkError("truncated"))?;
        let ts: Vec<i64> = pco_column(&rest[r.p..ts_end], n)?;
        r.p = ts_end;
        ((0, 0), ts)
    };
    let vals = &rest[r.p..];
    let values: Vec<f64> = if kind == PCO_FLOATS {
        pco_column(vals, n)?
    } else {
        if kind as i32 > MAX_DECIMALS {
            return Err(ChunkError("bad decimal exponent"));
        }
        let scale = 10f64.powi(kind as i32);
        let ints: Vec<i64> = pco_column(vals, n)?;
        ints.into_iter().map(|x| x as f64 / scale).collect()
    };
    if values.len() != n || (!regular && ts.len() != n) {
        return Err(ChunkError("column lengths disagree"));
    }
    if regular {
        let (first, step) = regular_ts;
        out.extend(
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| Sample::new(first.wrapping_add((i as i64).wrapping_mul(step)), v)),
        );
    } else {
        out.extend(ts.into_iter().zip(values).map(|(t, v)| Sample::new(t, v)));
    }
    Ok(())
}

/// Decodes a chunk, appending its samples to `out`.
pub fn decode(chunk: &[u8], out: &mut Vec<Sample>) -> Result<(), ChunkError> {
    decode_range(chunk, i64::MIN, i64::MAX, Fields::All, out)
}

/// Decodes the samples of a chunk in `[start, end]`, appending them to `out`. Paged chunks
/// decode only their pages overlapping the range; other chunks decode whole and are cut. With
/// [`Fields::Timestamps`], the values of paged chunks of decimals (which cannot hold staleness
/// How many samples of a chunk of evenly spaced samples lie in `[start, end]`, read off its
/// header (count, first timestamp, step) without decoding; `None` for other chunks. Also its
/// count and first timestamp, for the caller to check against the block index.
pub fn regular_in_range(chunk: &[u8], start: i64, end: i64) -> Option<(usize, u64, i64)> {
    let (&flag, rest) = chunk.split_first()?;
    if flag != PCO_REGULAR && flag != PCO_PAGED {
        return None;
    }
    let mut r = Reader { b: rest, p: 0 };
    let n = r.varint().ok()?;
    r.byte().ok()?;
    let (first, step) = (unzig(r.varint().ok()?), unzig(r.varint().ok()?));
    if n == 0 || step <= 0 || start > end {
        return None;
    }
    // Sample i is at first + i * step: the indexes in the range, in i128 so nothing overflows.
    let (f, st) = (first as i128, step as i128);
    let lo = (-((f - start as i128).div_euclid(st))).max(0);
    let hi = (end as i128 - f).div_euclid(st).min(n as i128 - 1);
    Some(((hi - lo + 1).max(0) as usize, n, first))
}

/// Samples decoded from chunks by this process, all stores together (one relaxed add per chunk
/// read): shows what a read decoded, e.g. that a refused one decoded nothing.
static DECODED: AtomicU64 = AtomicU64::new(0);

/// Samples decoded from block chunks so far by this process, all stores together (see
/// [`decode_range`]; pages of a paged chunk outside the range are not decoded, so not counted).
pub fn decoded_samples_total() -> u64 {
    DECODED.load(Ordering::Relaxed)
}

/// markers) are not decoded and read as 0.
pub fn decode_range(
    chunk: &[u8],
    start: i64,
    end: i64,
    fields: Fields,
    out: &mut Vec<Sample>,
) -> Result<(), ChunkError> {
    if start > end {
        return Ok(());
    }
    let from = out.len();
    if chunk.first() == Some(&PCO_PAGED) {
        let r = decode_paged(&chunk[1..], start, end, fields, out);
        DECODED.fetch_add((out.len() - from) as u64, Ordering::Relaxed);
        return r;
    }
    decode_whole(chunk, out)?;
    DECODED.fetch_add((out.len() - from) as u64, Ordering::Relaxed);
    let part = &out[from..];
    let (lo, hi) = (
        part.partition_point(|s| s.timestamp < start),
        part.partition_point(|s| s.timestamp <= end),
    );
    out.truncate(from + hi.max(lo));
    out.drain(from..from + lo);
    Ok(())
}

/// Decodes a chunk that is not paged, appending all its samples to `out`.
fn decode_whole(chunk: &[u8], out: &mut Vec<Sample>) -> Result<(), ChunkError> {
    let (&flag, rest) = chunk.split_first().ok_or(ChunkError("empty"))?;
    let owned;
    let body: &[u8] = match flag {
        RAW => rest,
        ZSTD => {
            let mut r = Reader { b: rest, p: 0 };
            let len = r.varint()?;
            if len > 1 << 30 {
                return Err(ChunkError("declared size too large"));
            }
            owned = zstd_exact(&rest[r.p..], len).ok_or(ChunkError("zstd data damaged"))?;
            &owned
        }
        PCO => return decode_pco(rest, false, out),
        PCO_REGULAR => return decode_pco(rest, true, out),
        _ => return Err(ChunkError("unknown chunk encoding")),
    };
    let mut r = Reader { b: body, p: 0 };
    let n = r.varint()? as usize;
    if n > body.len() {
        return Err(ChunkError("sample count larger than the chunk"));
    }
    let start = out.len();
    out.reserve(n);
    let (mut t, mut d) = (0i64, 0i64);
    for i in 0..n {
        let z = unzig(r.varint()?);
        if i == 0 {
            t = z;
        } else {
            d = d.wrapping_add(z);
            t = t.wrapping_add(d);
        }
        out.push(Sample::new(t, 0.0));
    }
    match r.byte()? {
        VALUES_DECIMAL => {
            let k = r.byte()? as i32;
            if k > MAX_DECIMALS {
                return Err(ChunkError("bad decimal exponent"));
            }
            let scale = 10f64.powi(k);
            let mut x = 0i64;
            for s in &mut out[start..] {
                x = x.wrapping_add(unzig(r.varint()?));
                // Integers need no scaling (dividing by 1 costs as much as the rest).
                s.value = if k == 0 { x as f64 } else { x as f64 / scale };
            }
        }
        VALUES_XOR => {
            let mut prev = 0u64;
            for s in &mut out[start..] {
                prev ^= r.varint()?.swap_bytes();
                s.value = f64::from_bits(prev);
            }
        }
        _ => return Err(ChunkError("unknown value encoding")),
    }
    if r.p != body.len() {
        return Err(ChunkError("trailing bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn regular_counts_in_range_match_decoding() {
        for (n, flag) in [(1400i64, PCO_REGULAR), (5000, PCO_PAGED)] {
            // A random walk of decimals, as sensors report: pco beats zstd on it.
            let (mut x, mut v) = (0x9E37_79B9_7F4A_7C15u64, 0i64);
            let samples: Vec<Sample> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    v += (x % 21) as i64 - 10;
                    Sample::new(-7_000 + i * 15, v as f64 / 10.0)
                })
                .collect();
            let chunk = encode(&samples, true);
            assert_eq!(
                chunk[0], flag,
                "{n} evenly spaced samples take the pco form"
            );
            for (start, end) in [
                (i64::MIN, i64::MAX),
                (-7_000, -7_000),
                (-6_999, -6_986),
                (-6_999, -6_985),
                (0, 1_000),
                (-100_000, -7_001),
                (n * 15, i64::MAX),
                (10, 9),
            ] {
                let mut out = Vec::new();
                decode_range(&chunk, start, end, Fields::All, &mut out).unwrap();
                let want = out
                    .iter()
                    .filter(|s| s.timestamp >= start && s.timestamp <= end)
                    .count();
                match regular_in_range(&chunk, start, end) {
                    Some((k, count, first)) => {
                        assert_eq!(k, want, "{n}: [{start}, {end}]");
                        assert_eq!((count, first), (n as u64, -7_000));
                    }
                    None => assert!(start > end, "{n}: [{start}, {end}]"),
                }
            }
        }
        let irregular = [
            Sample::new(1, 1.0),
            Sample::new(5, 2.0),
            Sample::new(6, 3.0),
        ];
        assert_eq!(regular_in_range(&encode(&irregular, true), 0, 10), None);
    }

    fn bits(s: &[Sample]) -> Vec<(i64, u64)> {
        s.iter().map(|x| (x.timestamp, x.value.to_bits())).collect()
    }

    fn round_trip(samples: &[Sample], compress: bool) {
        let enc = encode(samples, compress);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        assert_eq!(bits(&out), bits(samples));
    }

    #[test]
    fn special_values_and_decimals() {
        let stale = f64::from_bits(0x7ff0000000000002);
        let vals = [
            0.1,
            0.2,
            21.5,
            -0.0,
            f64::NAN,
            stale,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            5e-324,
        ];
        let s: Vec<Sample> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| Sample::new(i as i64 * 15_000, *v))
            .collect();
        round_trip(&s, true);
        round_trip(&s, false);
        let dec: Vec<Sample> = (0..500)
            .map(|i| Sample::new(1_700_000_000_000 + i * 15_000, (i % 37) as f64 / 10.0))
            .collect();
        round_trip(&dec, true);
        assert!(
            encode(&dec, true).len() < 200,
            "regular decimals must be tiny: {}",
            encode(&dec, true).len()
        );
        round_trip(&[], true);
    }

    #[test]
    fn negative_zero_among_decimals_keeps_its_sign() {
        for n in [4, 3000] {
            let s: Vec<Sample> = (0..n)
                .map(|i| {
                    let v = [1.5, -0.0, 2.0, 0.0][i % 4];
                    Sample::new(1_700_000_000_000 + i as i64 * 15_000, v)
                })
                .collect();
            round_trip(&s, true);
            round_trip(&s, false);
        }
    }

    #[test]
    fn evenly_spaced_timestamps_are_stored_as_first_and_step() {
        let regular = walk(300, 0x9E37_79B9_7F4A_7C15);
        assert_eq!(encode(&regular, true)[0], PCO_REGULAR);
        round_trip(&regular, true);
        let mut gap = regular.clone();
        gap[150].timestamp += 1;
        assert_ne!(encode(&gap, true)[0], PCO_REGULAR);
        round_trip(&gap, true);
        let floats: Vec<Sample> = (0..300)
            .map(|i| Sample::new(-5_000 + i * 7, (i as f64).sqrt()))
            .collect();
        round_trip(&floats, true);
    }

    /// A random walk in steps of 0.1 (triangular, as sensor noise) at a 15 s interval: pco's
    /// kind of data.
    fn walk(n: usize, seed: u64) -> Vec<Sample> {
        let mut x = seed | 1;
        let mut v = 0i64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v += (x % 21 + (x >> 8) % 21) as i64 - 20;
                Sample::new(1_700_000_000_000 + i as i64 * 15_000, v as f64 / 10.0)
            })
            .collect()
    }

    #[test]
    fn paged_chunks_decode_any_range_like_a_full_decode() {
        let mut floats = walk(3000, 7);
        for (i, s) in floats.iter_mut().enumerate() {
            s.value = s.value.abs().sqrt() + i as f64 * 1e-9;
        }
        for samples in [walk(5760, 1), walk(721, 2), walk(1441, 3), floats] {
            let step = regular_step(&samples).unwrap();
            let enc = encode_paged(
                samples[0].timestamp,
                step,
                &Column::with(&samples, decimals(&samples)),
            )
            .unwrap();
            assert_eq!(enc[0], PCO_PAGED, "{} samples", samples.len());
            let (t0, t1) = (samples[0].timestamp, samples[samples.len() - 1].timestamp);
            let cuts = [
                t0 - 1,
                t0,
                t0 + 1,
                t0 + 719 * 15_000,
                t0 + 720 * 15_000,
                t0 + 720 * 15_000 + 7,
                (t0 + t1) / 2,
                t1 - 15_000,
                t1,
                t1 + 1,
            ];
            for &a in &cuts {
                for &b in cuts.iter().filter(|b| **b >= a) {
                    let mut got = Vec::new();
                    decode_range(&enc, a, b, Fields::All, &mut got).unwrap();
                    assert!(got.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
                    got.retain(|s| s.timestamp >= a && s.timestamp <= b);
                    let want: Vec<Sample> = samples
                        .iter()
                        .filter(|s| s.timestamp >= a && s.timestamp <= b)
                        .copied()
                        .collect();
                    assert_eq!(bits(&got), bits(&want), "range [{a}, {b}]");
                    // Timestamps only: the same timestamps; decimals' values are not decoded,
                    // floats' are (they may hold staleness markers).
                    let mut ts = Vec::new();
                    decode_range(&enc, a, b, Fields::Timestamps, &mut ts).unwrap();
                    ts.retain(|s| s.timestamp >= a && s.timestamp <= b);
                    let times = |v: &[Sample]| v.iter().map(|s| s.timestamp).collect::<Vec<_>>();
                    assert_eq!(times(&ts), times(&want), "range [{a}, {b}]");
                    let decimals =
                        enc[1..].iter().skip_while(|b| **b >= 0x80).nth(1) != Some(&PCO_FLOATS);
                    if decimals {
                        assert!(ts.iter().all(|s| s.value == 0.0));
                    } else {
                        assert_eq!(bits(&ts), bits(&want), "range [{a}, {b}]");
                    }
                }
            }
        }
    }

    #[test]
    fn damaged_chunks_are_errors() {
        let s: Vec<Sample> = (0..100).map(|i| Sample::new(i, i as f64 * 1.5)).collect();
        let enc = encode(&s, false);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut], &mut Vec::new()).is_err());
        }
        let enc = encode(&s, true);
        let mut bad = enc.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        let _ = decode(&bad, &mut Vec::new());
        assert!(decode(&[9], &mut Vec::new()).is_err());
        let s = walk(2000, 5);
        let paged = encode_paged(s[0].timestamp, 15_000, &Column::with(&s, decimals(&s))).unwrap();
        for cut in 0..paged.len() {
            assert!(
                decode(&paged[..cut], &mut Vec::new()).is_err(),
                "cut at {cut}"
            );
        }
        for i in 1..paged.len() {
            let mut bad = paged.clone();
            bad[i] ^= 0x5a;
            let _ = decode(&bad, &mut Vec::new());
        }
    }

    proptest! {
        #[test]
        fn any_values_round_trip(ts in proptest::collection::btree_set(any::<i64>(), 0..200), vals in proptest::collection::vec(any::<u64>(), 200)) {
            let s: Vec<Sample> = ts.iter().zip(&vals).map(|(t, v)| Sample::new(*t, f64::from_bits(*v))).collect();
            round_trip(&s, true);
            round_trip(&s, false);
        }

        #[test]
        fn decimal_values_round_trip(start in -1_000_000_000_000i64..2_000_000_000_000, steps in proptest::collection::vec((1i64..100_000, -100_000i64..100_000, 0u32..4), 0..300)) {
            let mut t = start;
            let s: Vec<Sample> = steps.iter().map(|(dt, v, k)| { t += dt; Sample::new(t, *v as f64 / 10f64.powi(*k as i32)) }).collect();
            round_trip(&s, true);
        }
    }
}
