//! A window's full mergeable state as bytes: what a [`Rollup`] holds beyond its rounded
//! [`Figures`] (the exact sums, the sketch), so a coarser window can be merged from stored finer
//! ones exactly, long after their samples left memory.
//!
//! Layout (little-endian): version (`u8`), the window's revision (varint), a flags byte, then
//! each part its flags announce: the base figures (count as a varint, min, max, first and last
//! timestamp and value); sum, sum of squares and increase, each either whole
//! ([`ExactSum::encode`]) or as the `f64` residual that, added to its rounded figure, gives it
//! exactly (two bits of the flags each: absent, whole, residual); the quantile sketch
//! ([`Quantiles::encode`]); last a CRC32 of everything before it.
//!
//! Two forms share the layout. *Full* carries every part whole (checkpoints of open hours).
//! *Over figures* carries only what the stored figures cannot give back: a sum only when it is
//! not exactly its rounded figure (as a residual when one `f64` holds the difference, as for
//! sums of a few readings with decimals), the sketch when there is one; windows whose figures
//! suffice ([`figures_suffice`]) need no state at all. The revision lets a reader ignore a state
//! left over from an earlier revision of the window.

use crate::exact::ExactSum;
use crate::rollup::{Figures, Rollup};
use crate::sketch::{get_f64, get_varint, put_varint, Quantiles, SortedQuantiles};
use strata_model::Sample;

/// Version of the layout written.
pub const STATE_VERSION: u8 = 1;

const BASE: u8 = 1;
const QUANTILES: u8 = 2;
/// Where the two bits of the first sum's form start (the others follow).
const SUM_FORM_SHIFT: u32 = 2;
/// A sum's form: the figure itself.
const ABSENT: u8 = 0;
/// A sum's form: encoded whole.
const WHOLE: u8 = 1;
/// A sum's form: an `f64` residual over its figure.
const RESIDUAL: u8 = 2;

/// Why bytes are not a window state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Shorter than the smallest state.
    #[error("window state of {0} bytes is truncated")]
    Truncated(usize),
    /// The CRC does not match.
    #[error("window state checksum mismatch")]
    Checksum,
    /// Written by a version this one does not read.
    #[error("window state version {0} is unknown (this build reads {STATE_VERSION})")]
    Version(u8),
    /// A part does not decode.
    #[error("window state is damaged: {0}")]
    Damaged(&'static str),
    /// An over-figures state read without the figures it completes.
    #[error("window state lacks its base figures and none were given")]
    NoFigures,
}

/// True when a sum is exactly the `f64` it rounds to (so the figure gives it back).
fn exact_as_figure(s: &ExactSum) -> bool {
    s == &exact(s.value())
}

/// The exact sum holding just `v`.
fn exact(v: f64) -> ExactSum {
    let mut e = ExactSum::new();
    e.add(v);
    e
}

/// True when a window's stored figures give back its whole state: no sketch, and every sum
/// exactly its rounded figure (integer counters and readings with few significant bits).
pub fn figures_suffice(r: &Rollup) -> bool {
    r.quantiles.is_none()
        && exact_as_figure(&r.sum)
        && exact_as_figure(&r.sum_squares)
        && exact_as_figure(&r.increase)
}

/// The residual `x` with `s` = its rounded value + `x` exactly, when one `f64` holds it.
fn residual(s: &ExactSum) -> Option<f64> {
    let hi = s.value();
    let mut diff = s.clone();
    diff.add(-hi);
    let x = diff.value();
    let mut back = exact(hi);
    back.add(x);
    (hi.is_finite() && &back == s).then_some(x)
}

/// Encodes `r` at `revision`: every part when `full`, else only what its figures cannot give
/// back (see the module doc).
pub fn encode(r: &Rollup, revision: u32, full: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(STATE_VERSION);
    put_varint(&mut out, u64::from(revision));
    let sums = [&r.sum, &r.sum_squares, &r.increase];
    let forms = sums.map(|s| {
        if full {
            (WHOLE, None)
        } else if exact_as_figure(s) {
            (ABSENT, None)
        } else {
            match residual(s) {
                Some(x) => (RESIDUAL, Some(x)),
                None => (WHOLE, None),
            }
        }
    });
    let mut flags = if full { BASE } else { 0 };
    if r.quantiles.is_some() {
        flags |= QUANTILES;
    }
    for (k, (form, _)) in forms.iter().enumerate() {
        flags |= form << (SUM_FORM_SHIFT + 2 * k as u32);
    }
    out.push(flags);
    if full {
        put_varint(&mut out, r.count);
        for v in [r.min, r.max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for s in [r.first, r.last] {
            out.extend_from_slice(&s.timestamp.to_le_bytes());
            out.extend_from_slice(&s.value.to_le_bytes());
        }
    }
    for (s, (form, x)) in sums.iter().zip(forms) {
        match (form, x) {
            (WHOLE, _) => s.encode(&mut out),
            (RESIDUAL, Some(x)) => out.extend_from_slice(&x.to_le_bytes()),
            _ => {}
        }
    }
    if let Some(q) = &r.quantiles {
        q.encode(&mut out);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The revision a state was written at, after checking it (CRC and version).
pub fn revision(bytes: &[u8]) -> Result<u32, StateError> {
    let mut cur = checked(bytes)?;
    get_varint(&mut cur)
        .and_then(|r| u32::try_from(r).ok())
        .ok_or(StateError::Damaged("revision"))
}

/// The body of a state after its CRC and version are checked (revision first).
fn checked(bytes: &[u8]) -> Result<&[u8], StateError> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err(StateError::Truncated(bytes.len()));
    };
    if body.len() < 3 {
        return Err(StateError::Truncated(bytes.len()));
    }
    if crc32fast::hash(body).to_le_bytes() != *crc {
        return Err(StateError::Checksum);
    }
    match body[0] {
        STATE_VERSION => Ok(&body[1..]),
        v => Err(StateError::Version(v)),
    }
}

/// Decodes a state: the rollup and its revision. An over-figures state takes what it lacks from
/// `figures` (the window's stored figures).
pub fn decode(bytes: &[u8], figures: Option<&Figures>) -> Result<(Rollup, u32), StateError> {
    let (mut r, revision, sketch) = decode_parts(bytes, figures)?;
    r.quantiles = sketch
        .map(|b| whole_sketch(b, Quantiles::decode))
        .transpose()?;
    Ok((r, revision))
}

/// The sketch `bytes` end with, decoded by `decode`, nothing after it.
fn whole_sketch<T>(mut bytes: &[u8], decode: fn(&mut &[u8]) -> Option<T>) -> Result<T, StateError> {
    let q = decode(&mut bytes).ok_or(StateError::Damaged("quantile sketch"))?;
    if !bytes.is_empty() {
        return Err(StateError::Damaged("trailing bytes"));
    }
    Ok(q)
}

/// [`decode`] but for the sketch: the rollup without it, the revision, and the bytes of the
/// sketch (to its end) when the state keeps one.
fn decode_parts<'a>(
    bytes: &'a [u8],
    figures: Option<&Figures>,
) -> Result<(Rollup, u32, Option<&'a [u8]>), StateError> {
    let mut cur = checked(bytes)?;
    let damaged = StateError::Damaged;
    let revision = get_varint(&mut cur)
        .and_then(|r| u32::try_from(r).ok())
        .ok_or(damaged("revision"))?;
    let (&flags, rest) = cur.split_first().ok_or(damaged("flags"))?;
    cur = rest;
    let form = |k: u32| (flags >> (SUM_FORM_SHIFT + 2 * k)) & 3;
    if (0..3).any(|k| form(k) > RESIDUAL) {
        return Err(damaged("unknown flags"));
    }
    let mut r = if flags & BASE != 0 {
        let count = get_varint(&mut cur).ok_or(damaged("count"))?;
        let mut f = [0.0; 6];
        for x in &mut f {
            *x = get_f64(&mut cur).ok_or(damaged("base figures"))?;
        }
        Rollup {
            count,
            sum: ExactSum::new(),
            sum_squares: ExactSum::new(),
            min: f[0],
            max: f[1],
            first: Sample::new(f[2].to_bits() as i64, f[3]),
            last: Sample::new(f[4].to_bits() as i64, f[5]),
            increase: ExactSum::new(),
            quantiles: None,
        }
    } else {
        of_figures(figures.ok_or(StateError::NoFigures)?)
    };
    let base_sums = [r.sum.value(), r.sum_squares.value(), r.increase.value()];
    for (k, (s, what)) in [
        (&mut r.sum, "sum"),
        (&mut r.sum_squares, "sum of squares"),
        (&mut r.increase, "increase"),
    ]
    .into_iter()
    .enumerate()
    {
        match form(k as u32) {
            WHOLE => *s = ExactSum::decode(&mut cur).ok_or(damaged(what))?,
            RESIDUAL if flags & BASE == 0 => {
                *s = exact(base_sums[k]);
                s.add(get_f64(&mut cur).ok_or(damaged(what))?);
            }
            RESIDUAL => return Err(damaged("a residual without figures")),
            _ => {}
        }
    }
    if flags & QUANTILES != 0 {
        return Ok((r, revision, Some(cur)));
    }
    if !cur.is_empty() {
        return Err(damaged("trailing bytes"));
    }
    Ok((r, revision, None))
}

/// The revision a state was written at and the quantile sketch it keeps, if any, as queries
/// read it (its figures are not needed: the rest is read past).
pub fn sketch_of(bytes: &[u8]) -> Result<(u32, Option<SortedQuantiles>), StateError> {
    let none = Sample::new(0, 0.0);
    let placeholder = Figures {
        count: 0,
        sum: 0.0,
        sum_squares: 0.0,
        min: 0.0,
        max: 0.0,
        first: none,
        last: none,
        increase: 0.0,
        quantiles: Vec::new(),
    };
    let (_, revision, sketch) = decode_parts(bytes, Some(&placeholder))?;
    let q = sketch
        .map(|b| whole_sketch(b, SortedQuantiles::decode))
        .transpose()?;
    Ok((revision, q))
}

/// The rollup stored figures stand for: exact where [`figures_suffice`] held, no sketch.
pub fn of_figures(f: &Figures) -> Rollup {
    Rollup {
        count: f.count,
        sum: exact(f.sum),
        sum_squares: exact(f.sum_squares),
        min: f.min,
        max: f.max,
        first: f.first,
        last: f.last,
        increase: exact(f.increase),
        quantiles: None,
    }
}

/// The rollup of a stored window at `revision`: its state where one was stored for this
/// revision (one left from another revision is ignored), else its figures.
pub fn of_stored(
    figures: &Figures,
    revision: u32,
    state: Option<&[u8]>,
) -> Result<Rollup, StateError> {
    match state {
        Some(b) if self::revision(b)? == revision => Ok(decode(b, Some(figures))?.0),
        _ => Ok(of_figures(figures)),
    }
}

/// The state to store beside a window's figures, when they do not give it back and it fits a
/// window of `window_ms` (a sample per millisecond; a sketch past that is not kept, with a
/// warning).
pub fn for_store(rollup: &Rollup, revision: u32, window_ms: i64) -> Option<Vec<u8>> {
    if figures_suffice(rollup) {
        return None;
    }
    let b = encode(rollup, revision, false);
    if crate::store::state_samples(b.len()) > window_ms {
        tracing::warn!(
            bytes = b.len(),
            window_ms,
            "a window's state does not fit its window; only its figures are kept"
        );
        return None;
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollup(values: &[f64], sketch: bool) -> Rollup {
        let s: Vec<Sample> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample::new(1_000 * i as i64, v))
            .collect();
        Rollup::of_sorted(&s, sketch).unwrap()
    }

    #[test]
    fn figures_suffice_for_exact_sums_only() {
        assert!(figures_suffice(&rollup(&[1.0, 2.5, 7.0, 3.0], false)));
        // 0.1 + 0.2 is not the f64 it rounds to.
        assert!(!figures_suffice(&rollup(&[0.1, 0.2], false)));
        assert!(!figures_suffice(&rollup(&[1.0], true)), "a sketch");
        assert!(!figures_suffice(&rollup(
            &[f64::INFINITY, f64::NEG_INFINITY],
            false
        )));
    }

    #[test]
    fn both_forms_round_trip() {
        for (values, sketch) in [
            (&[0.1, 0.2, 0.30000000000000004, -7.25][..], true),
            (&[0.1, 0.7, 3.0, 1.0][..], false),
            (&[5.0][..], false),
        ] {
            let r = rollup(values, sketch);
            let f = r.figures(&[0.5]);
            let full = encode(&r, 3, true);
            assert_eq!(decode(&full, None).unwrap(), (r.clone(), 3));
            let over = encode(&r, 4, false);
            assert!(over.len() < full.len());
            assert_eq!(decode(&over, None).unwrap_err(), StateError::NoFigures);
            assert_eq!(decode(&over, Some(&f)).unwrap(), (r.clone(), 4));
            assert_eq!(of_stored(&f, 4, Some(&over)).unwrap(), r);
            if figures_suffice(&r) {
                assert_eq!(of_stored(&f, 0, None).unwrap(), r);
                assert_eq!(for_store(&r, 0, 60_000), None);
            } else {
                assert_eq!(for_store(&r, 4, 60_000), Some(over.clone()));
                // One left from revision 2 is not this revision's state.
                assert_eq!(of_stored(&f, 5, Some(&over)).unwrap(), of_figures(&f));
            }
        }
    }

    #[test]
    fn sums_of_a_few_decimals_take_a_residual_each() {
        let r = rollup(&[20.1, 20.3, 19.7, 20.6], false);
        assert!(!figures_suffice(&r));
        // Version, revision, flags, a residual per inexact sum, CRC.
        let sums = [&r.sum, &r.sum_squares, &r.increase];
        let inexact = sums.iter().filter(|s| !exact_as_figure(s)).count();
        assert!(inexact > 0);
        assert!(sums.iter().all(|s| residual(s).is_some()));
        assert_eq!(encode(&r, 0, false).len(), 3 + inexact * 8 + 4);
        let f = r.figures(&[]);
        assert_eq!(
            of_stored(&f, 0, for_store(&r, 0, 60_000).as_deref()).unwrap(),
            r
        );
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let r = rollup(&[0.1, 0.2, 9.5], true);
        let b = encode(&r, 1, true);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode(&d, None).is_err(), "flipped byte {i}");
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n], None).is_err(), "cut at {n}");
        }
        let mut v2 = b.clone();
        v2[0] = 2;
        let n = v2.len() - 4;
        let crc = crc32fast::hash(&v2[..n]).to_le_bytes();
        v2[n..].copy_from_slice(&crc);
        assert_eq!(decode(&v2, None).unwrap_err(), StateError::Version(2));
    }

    #[test]
    fn a_state_too_large_for_its_window_is_not_stored() {
        let values: Vec<f64> = (1..2_000).map(|i| f64::from(i) * 1.37).collect();
        let r = rollup(&values, true);
        let len = encode(&r, 0, false).len();
        assert!(for_store(&r, 0, crate::store::state_samples(len)).is_some());
        assert!(for_store(&r, 0, crate::store::state_samples(len) - 1).is_none());
    }
}
