//! Influx line protocol: `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//!
//! Field `f` of measurement `m` becomes series `m_f`; a field named `value` becomes series `m`;
//! tags become labels. Floats, integers (`1i`), unsigned integers (`1u`) and booleans (as 1/0)
//! are stored; string fields, NaN and infinities are refused with the line and field named,
//! without losing the line's other fields or the body's other lines. Characters not allowed in
//! Prometheus names are replaced by `_` in metric names and tag keys.

use crate::cache::SeriesCache;
use crate::{DecodeContext, Decoded, IngestError, Location, RejectReason};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cell::RefCell;
use strata_model::{Sample, WriteBatch};

/// Timestamp unit of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Nanoseconds (the default).
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Parses `ns`, `us`, `ms`, `s` (and Influx 1.x's `n`, `u`).
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "ns" | "n" => Precision::Ns,
            "us" | "u" | "µs" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            _ => return None,
        })
    }

    /// Converts a timestamp in this unit to milliseconds (rounding down), if it fits.
    pub fn to_ms(self, ts: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(ts.div_euclid(1_000_000)),
            Precision::Us => Some(ts.div_euclid(1_000)),
            Precision::Ms => Some(ts),
            Precision::S => ts.checked_mul(1000),
        }
    }
}

enum FieldValue {
    Number(f64),
    Str,
}

/// A tag key and value, unescaped (borrowed unless they held escapes).
type Tag<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// A field key and its value, or why the value does not parse.
type Field<'a> = (Cow<'a, [u8]>, Result<FieldValue, String>);

/// The measurement and tags of a line.
struct Series<'a> {
    measurement: Cow<'a, [u8]>,
    tags: SmallVec<[Tag<'a>; 12]>,
}

/// The fields and timestamp of a line.
struct Fields<'a> {
    fields: SmallVec<[Field<'a>; 8]>,
    timestamp: Option<i64>,
}

thread_local! {
    /// Series seen before on this thread, by their raw `measurement,tags field` bytes.
    static SEEN: RefCell<SeriesCache> = RefCell::new(SeriesCache::default());
}

/// Decodes a line-protocol body into `out`.
pub fn decode(
    body: &[u8],
    precision: Precision,
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
) -> Result<Decoded, IngestError> {
    SEEN.with(|cache| {
        Ok(decode_with(
            body,
            precision,
            ctx,
            out,
            &mut cache.borrow_mut(),
        ))
    })
}

fn decode_with(
    body: &[u8],
    precision: Precision,
    ctx: &DecodeContext<'_>,
    out: &mut WriteBatch,
    cache: &mut SeriesCache,
) -> Decoded {
    let mut d = Decoded::default();
    let mut name = Vec::with_capacity(128);
    let mut raw = Vec::with_capacity(256);
    // Most lines carry one field: grow the batch once, not by doubling as lines come.
    let estimate = memchr::memchr_iter(b'\n', body).count() + 1;
    out.reserve(estimate, body.len(), estimate);
    for (i, line) in lines(body).enumerate() {
        let lineno = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = trim_start(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let parsed = series_end(line).and_then(|end| Ok((end, parse_fields(line, end)?)));
        let (end, fields) = match parsed {
            Ok(p) => p,
            Err(e) => {
                d.reject(Location::Line(lineno), RejectReason::Syntax(e), 1);
                continue;
            }
        };
        let nfields = fields.fields.len();
        let ts = match fields.timestamp {
            None => ctx.now_ms,
            Some(t) => match precision.to_ms(t) {
                Some(t) => t,
                None => {
                    d.reject(
                        Location::Line(lineno),
                        RejectReason::Syntax(format!("timestamp {t} is out of range")),
                        nfields,
                    );
                    continue;
                }
            },
        };
        if let Err(e) = ctx.limits.check_timestamp(ts, ctx.now_ms) {
            d.reject(Location::Line(lineno), RejectReason::Timestamp(e), nfields);
            continue;
        }
        // Measurement and tags are parsed only when a field's series is not cached.
        let mut series: Option<Result<Series<'_>, String>> = None;
        for (field, value) in &fields.fields {
            let field_loc = || Location::Field {
                line: lineno,
                field: String::from_utf8_lossy(field).into_owned(),
            };
            let v = match value {
                Ok(FieldValue::Number(v)) if v.is_finite() => *v,
                Ok(FieldValue::Number(_)) => {
                    d.reject(field_loc(), RejectReason::NotANumber, 1);
                    continue;
                }
                Ok(FieldValue::Str) => {
                    d.reject(field_loc(), RejectReason::StringField, 1);
                    continue;
                }
                Err(e) => {
                    d.reject(field_loc(), RejectReason::Syntax(e.clone()), 1);
                    continue;
                }
            };
            let sample = [Sample::new(ts, v)];
            raw.clear();
            raw.extend_from_slice(&line[..end]);
            raw.push(b' ');
            raw.extend_from_slice(field);
            let hash = SeriesCache::hash(&raw, out);
            if cache.push_cached(ctx.limits, hash, &raw, out, &sample, None) {
                d.accepted_samples += 1;
                continue;
            }
            let ser = match series.get_or_insert_with(|| parse_series(&line[..end])) {
                Ok(s) => s,
                Err(e) => {
                    d.reject(
                        Location::Line(lineno),
                        RejectReason::Syntax(e.clone()),
                        nfields,
                    );
                    break;
                }
            };
            name.clear();
            push_sanitized(&mut name, &ser.measurement, true);
            if field.as_ref() != b"value" {
                name.push(b'_');
                push_sanitized(&mut name, field, true);
            }
            let mut labels: SmallVec<[(&[u8], &[u8]); 16]> = SmallVec::new();
            labels.push((b"__name__", &name));
            for (k, v) in &ser.tags {
                labels.push((k, v));
            }
            match out.push_series(&mut labels, &sample, None, ctx.limits) {
                Ok(()) => {
                    d.accepted_samples += 1;
                    if let Some(s) = out.get(out.series_len() - 1) {
                        cache.insert(hash, &raw, &s);
                    }
                }
                Err(e) => d.reject(field_loc(), RejectReason::Label(e), 1),
            }
        }
    }
    d
}

/// The end of `measurement[,tags]`: the first unescaped space.
fn series_end(b: &[u8]) -> Result<usize, String> {
    let mut from = 0;
    while let Some(n) = memchr::memchr(b' ', &b[from..]) {
        let p = from + n;
        // A space preceded by an odd number of backslashes is escaped.
        let slashes = b[..p].iter().rev().take_while(|c| **c == b'\\').count();
        if slashes % 2 == 0 {
            return Ok(p);
        }
        from = p + 1;
    }
    Err("missing fields after the measurement and tags".into())
}

/// The body's lines, split with a vectorised search.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match memchr::memchr(b'\n', &body[start..]) {
            Some(n) => {
                let line = &body[start..start + n];
                start += n + 1;
                Some(line)
            }
            None => {
                done = true;
                Some(&body[start..])
            }
        }
    })
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_whitespace())
        .count();
    &b[..b.len() - n]
}

/// A decimal i64 (optional minus sign), without going through `str`; `None` when it is not
/// one (the caller then reports the error).
fn parse_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // Up to 19 digits stay below 10^19 < 2^64: no overflow until the final range check.
    let mut v: u64 = 0;
    let mut chunks = digits.chunks_exact(8);
    for c in &mut chunks {
        v = v * 100_000_000 + eight_digits(c.try_into().ok()?)?;
    }
    for &c in chunks.remainder() {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u64::from(d);
    }
    let v = i64::try_from(v).ok()?;
    Some(if neg { -v } else { v })
}

/// Eight ASCII digits as a number (most significant first), `None` unless all are digits:
/// nanosecond timestamps have 19, so this runs eight at a time in a few multiplications.
fn eight_digits(b: [u8; 8]) -> Option<u64> {
    let v = u64::from_le_bytes(b);
    // The lowest non-digit byte either borrows below '0' or passes '9' + 0x46 >= 0x80.
    if (v.wrapping_add(0x4646_4646_4646_4646) | v.wrapping_sub(0x3030_3030_3030_3030))
        & 0x8080_8080_8080_8080
        != 0
    {
        return None;
    }
    let v = v & 0x0f0f_0f0f_0f0f_0f0f;
    // Pairs, then fours, then all eight: each step multiplies the higher part by 10^k and
    // adds the lower (the first byte is the most significant digit).
    let v = (v.wrapping_mul(10 << 8 | 1)) >> 8 & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100 << 16 | 1)) >> 16 & 0x0000_ffff_0000_ffff;
    Some((v.wrapping_mul(10_000 << 32 | 1)) >> 32)
}

/// A plain decimal (`-12.5`, `40`, `.25`) with at most 15 significant digits, parsed
/// directly: the digits as an exact integer divided once by an exact power of ten is the
/// correctly rounded value, the same `str::parse` gives. `None` for anything else (exponents,
/// signs other than a leading minus, longer numbers), which takes the general parser.
fn plain_decimal(raw: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, b) = match raw.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, raw),
    };
    let mut m: u64 = 0;
    let mut digits = 0usize;
    let mut frac: Option<usize> = None;
    for &c in b {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                digits += 1;
                if digits > 15 {
                    return None;
                }
                if let Some(f) = &mut frac {
                    *f += 1;
                }
            }
            b'.' if frac.is_none() => frac = Some(0),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let v = m as f64 / POW10[frac.unwrap_or(0)];
    Some(if neg { -v } else { v })
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| **c == b' ' || **c == b'\t').count();
    &b[n..]
}

/// Appends `s` with bytes outside `[a-zA-Z0-9_:]` (`:` only in metric names) replaced by `_`.
fn push_sanitized(out: &mut Vec<u8>, s: &[u8], metric: bool) {
    let start = out.len();
    for &b in s {
        let ok = b.is_ascii_alphanumeric() || b == b'_' || (metric && b == b':');
        out.push(if ok { b } else { b'_' });
    }
    if out.len() == start || out[start].is_ascii_digit() {
        out.insert(start, b'_');
    }
}

fn sanitize_key(k: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    let valid = k.first().is_some_and(|c| !c.is_ascii_digit())
        && k.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if valid {
        return k;
    }
    let mut v = Vec::with_capacity(k.len() + 1);
    push_sanitized(&mut v, &k, false);
    Cow::Owned(v)
}

/// Reads up to an unescaped byte of `stops`; backslash escapes any byte. Returns the token
/// (unescaped, borrowed when no escape occurs) and the position of the stop byte.
fn token<'a>(b: &'a [u8], mut pos: usize, stops: &[u8]) -> (Cow<'a, [u8]>, usize) {
    let start = pos;
    let mut owned: Option<Vec<u8>> = None;
    while pos < b.len() {
        let c = b[pos];
        if c == b'\\' && pos + 1 < b.len() && stops.iter().chain(b"\\=").any(|s| *s == b[pos + 1]) {
            let o = owned.get_or_insert_with(|| b[start..pos].to_vec());
            o.push(b[pos + 1]);
            pos += 2;
            continue;
        }
        if stops.contains(&c) {
            break;
        }
        if let Some(o) = &mut owned {
            o.push(c);
        }
        pos += 1;
    }
    let t = match owned {
        Some(o) => Cow::Owned(o),
        None => Cow::Borrowed(&b[start..pos]),
    };
    (t, pos)
}

fn parse_series(b: &[u8]) -> Result<Series<'_>, String> {
    let col = |p: usize| p + 1;
    let (measurement, mut pos) = token(b, 0, b", ");
    if measurement.is_empty() {
        return Err("missing measurement name".into());
    }
    let mut tags = SmallVec::new();
    while pos < b.len() && b[pos] == b',' {
        let (k, p) = token(b, pos + 1, b"=, ");
        if p >= b.len() || b[p] != b'=' {
            return Err(format!("expected '=' after tag key at column {}", col(p)));
        }
        let (v, p2) = token(b, p + 1, b", ");
        if k.is_empty() || v.is_empty() {
            return Err(format!("empty tag key or value at column {}", col(pos + 1)));
        }
        if std::str::from_utf8(&k).is_err() || std::str::from_utf8(&v).is_err() {
            return Err(format!("tag at column {} is not valid UTF-8", col(pos + 1)));
        }
        tags.push((sanitize_key(k), v));
        pos = p2;
    }
    if pos != b.len() {
        return Err(format!("unexpected character at column {}", col(pos)));
    }
    Ok(Series { measurement, tags })
}

fn parse_fields(b: &[u8], mut pos: usize) -> Result<Fields<'_>, String> {
    let col = |p: usize| p + 1;
    while pos < b.len() && b[pos] == b' ' {
        pos += 1;
    }
    if pos >= b.len() {
        return Err("missing fields after the measurement and tags".into());
    }
    let mut fields = SmallVec::new();
    loop {
        let (k, p) = token(b, pos, b"=, ");
        if k.is_empty() {
            return Err(format!("missing field key at column {}", col(pos)));
        }
        if p >= b.len() || b[p] != b'=' {
            return Err(format!(
                "expected '=' after field key {:?} at column {}",
                String::from_utf8_lossy(&k),
                col(p)
            ));
        }
        pos = p + 1;
        let (value, p) = field_value(b, pos)?;
        fields.push((k, value));
        pos = p;
        if pos < b.len() && b[pos] == b',' {
            pos += 1;
            continue;
        }
        break;
    }
    while pos < b.len() && b[pos] == b' ' {
        pos += 1;
    }
    let timestamp = if pos < b.len() {
        if let Some(t) = parse_int(trim_end(&b[pos..])) {
            return Ok(Fields {
                fields,
                timestamp: Some(t),
            });
        }
        let t = std::str::from_utf8(&b[pos..])
            .map_err(|_| format!("timestamp at column {} is not a number", col(pos)))?;
        Some(t.trim_end().parse::<i64>().map_err(|_| {
            format!(
                "invalid timestamp {:?} at column {}",
                t.trim_end(),
                col(pos)
            )
        })?)
    } else {
        None
    };
    Ok(Fields { fields, timestamp })
}

/// Parses one field value starting at `pos`; returns it and the position after it. A bad
/// number is a per-field error, a broken string a line error.
fn field_value(b: &[u8], pos: usize) -> Result<(Result<FieldValue, String>, usize), String> {
    if b.get(pos) == Some(&b'"') {
        let mut p = pos + 1;
        while p < b.len() {
            match b[p] {
                b'\\' => p += 2,
                b'"' => return Ok((Ok(FieldValue::Str), p + 1)),
                _ => p += 1,
            }
        }
        return Err(format!(
            "unterminated string field value starting at column {}",
            pos + 1
        ));
    }
    let end = memchr::memchr2(b',', b' ', &b[pos..]).map_or(b.len(), |n| pos + n);
    let raw = &b[pos..end];
    if raw.is_empty() {
        return Err(format!("missing field value at column {}", pos + 1));
    }
    if let Some(v) = plain_decimal(raw) {
        return Ok((Ok(FieldValue::Number(v)), end));
    }
    let text = std::str::from_utf8(raw).unwrap_or("");
    let bad = || Err(format!("invalid number {:?}", String::from_utf8_lossy(raw)));
    let value = match text {
        "t" | "T" | "true" | "True" | "TRUE" => Ok(FieldValue::Number(1.0)),
        "f" | "F" | "false" | "False" | "FALSE" => Ok(FieldValue::Number(0.0)),
        _ if text.ends_with('i') => text[..text.len() - 1]
            .parse::<i64>()
            .map(|v| FieldValue::Number(v as f64))
            .or_else(|_| bad()),
        _ if text.ends_with('u') => text[..text.len() - 1]
            .parse::<u64>()
            .map(|v| FieldValue::Number(v as f64))
            .or_else(|_| bad()),
        _ if text
            .bytes()
            .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
            && !text.is_empty() =>
        {
            text.parse::<f64>()
                .map(FieldValue::Number)
                .or_else(|_| bad())
        }
        _ if matches!(
            text.to_ascii_lowercase().as_str(),
            "nan" | "inf" | "+inf" | "-inf" | "infinity" | "-infinity"
        ) =>
        {
            Ok(FieldValue::Number(f64::NAN))
        }
        _ => bad(),
    };
    Ok((value, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Integers parse as `str::parse` does, including overflow and stray characters.
        #[test]
        fn parse_int_matches_str(s in "-?[0-9]{1,20}|-?[0-9]{0,12}[a/: 9][0-9]{0,8}", n in any::<i64>()) {
            // Over 19 digits (leading zeros included) is left to the caller's general parser.
            let digits = s.trim_start_matches('-').len();
            let want = s
                .parse::<i64>()
                .ok()
                .filter(|v| *v != i64::MIN && !s.starts_with('+') && digits <= 19);
            prop_assert_eq!(parse_int(s.as_bytes()), want);
            let n = n.max(-i64::MAX).to_string();
            prop_assert_eq!(parse_int(n.as_bytes()), n.parse::<i64>().ok());
        }

        /// Plain decimals give exactly what `str::parse::<f64>` gives.
        #[test]
        fn plain_decimal_matches_str(s in "-?[0-9]{0,9}\\.?[0-9]{0,9}", x in any::<f64>()) {
            if let Some(v) = plain_decimal(s.as_bytes()) {
                prop_assert_eq!(v.to_bits(), s.parse::<f64>().unwrap().to_bits(), "{}", s);
            }
            let x = format!("{}", (x % 1e6 * 1e4).round() / 1e4);
            if let Some(v) = plain_decimal(x.as_bytes()) {
                prop_assert_eq!(v.to_bits(), x.parse::<f64>().unwrap().to_bits(), "{}", x);
            }
        }
    }

    #[test]
    fn plain_decimal_cases() {
        for (s, want) in [
            ("23.4", Some(23.4)),
            ("-0.5", Some(-0.5)),
            (".25", Some(0.25)),
            ("7.", Some(7.0)),
        ] {
            assert_eq!(plain_decimal(s.as_bytes()), want, "{s}");
        }
        for s in [
            "",
            ".",
            "-",
            "1e5",
            "+1",
            "1.2.3",
            "1234567890123456",
            "NaN",
            "1_0",
        ] {
            assert_eq!(plain_decimal(s.as_bytes()), None, "{s}");
        }
        assert_eq!(
            plain_decimal(b"-0").map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
        assert_eq!(eight_digits(*b"12345678"), Some(12_345_678));
        assert_eq!(eight_digits(*b"1234567/"), None);
        assert_eq!(eight_digits(*b"1234567:"), None);
    }
}
