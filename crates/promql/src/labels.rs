//! Label-set helpers: matching signatures, grouping, Prometheus's string form and hash.

use std::fmt::Write as _;
use strata_model::{Label, Labels, METRIC_NAME};

/// Computes the signature two series are matched or grouped by: the values of the listed labels
/// (`on` / `by`), or every label except the listed ones and `__name__` (`ignoring` / `without`).
pub(crate) struct Signer {
    on: bool,
    names: Vec<String>,
}

impl Signer {
    pub fn new(on: bool, names: &[String]) -> Signer {
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        Signer { on, names }
    }

    fn listed(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    pub fn sign(&self, l: &Labels) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        if self.on {
            for n in &self.names {
                if let Some(v) = l.get(n) {
                    out.extend_from_slice(n.as_bytes());
                    out.push(0xff);
                    out.extend_from_slice(v.as_bytes());
                    out.push(0xff);
                }
            }
        } else {
            for lab in l.iter() {
                if lab.name != METRIC_NAME && !self.listed(&lab.name) {
                    out.extend_from_slice(lab.name.as_bytes());
                    out.push(0xff);
                    out.extend_from_slice(lab.value.as_bytes());
                    out.push(0xff);
                }
            }
        }
        out
    }

    /// The labels of a group: the listed labels (`by`), or all but the listed ones and
    /// `__name__` (`without`).
    pub fn group_labels(&self, l: &Labels) -> Labels {
        let v: Vec<Label> = l
            .iter()
            .filter(|lab| {
                if self.on {
                    self.listed(&lab.name)
                } else {
                    lab.name != METRIC_NAME && !self.listed(&lab.name)
                }
            })
            .cloned()
            .collect();
        Labels::from_sorted(v)
    }
}

/// Prometheus's `Labels.String()`: `{a="b", c="d"}` with Go-quoted values.
pub(crate) fn prom_string(l: &Labels) -> String {
    let mut s = String::from("{");
    for (i, lab) in l.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&lab.name);
        s.push('=');
        s.push_str(&go_quote(&lab.value));
    }
    s.push('}');
    s
}

/// Go's `%q` for a string.
pub(crate) fn go_quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Prometheus's `Labels.Hash()`: xxHash64 over `name 0xff value 0xff ...`.
pub(crate) fn prom_hash(l: &Labels) -> u64 {
    let mut buf = Vec::with_capacity(128);
    for lab in l.iter() {
        buf.extend_from_slice(lab.name.as_bytes());
        buf.push(0xff);
        buf.extend_from_slice(lab.value.as_bytes());
        buf.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&buf, 0)
}

/// Whether `name` is a valid label name (UTF-8 names are allowed, as in Prometheus 3).
pub(crate) fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
}

/// Largest number of decimals [`short_decimal`] tries.
const SHORT_DECIMALS: usize = 4;
const POW10: [f64; SHORT_DECIMALS + 1] = [1.0, 10.0, 100.0, 1000.0, 10000.0];

/// `(n, k)` with `f == n / 10^k` for the smallest `k` up to [`SHORT_DECIMALS`], where `n` has at
/// most 15 digits (sensor readings, counters). Two decimals of at most 15 significant digits
/// never parse to the same float, so `n / 10^k` is then the shortest round-trip form of `f`.
fn short_decimal(f: f64) -> Option<(i64, usize)> {
    if f == 0.0 && f.is_sign_negative() {
        return None;
    }
    POW10.iter().enumerate().find_map(|(k, &p)| {
        let n = (f * p).round();
        // `n / p` rounds correctly as parsing "n e-k" does (both are exact below 2^53).
        (n.abs() < 1e15 && n / p == f).then_some((n as i64, k))
    })
}

/// Writes `n / 10^k` in plain decimal notation.
fn write_decimal(out: &mut String, n: i64, k: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n.unsigned_abs());
    if n < 0 {
        out.push('-');
    }
    if k == 0 {
        out.push_str(digits);
    } else if digits.len() > k {
        let (int, frac) = digits.split_at(digits.len() - k);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', k - digits.len()));
        out.push_str(digits);
    }
}

/// Formats a sample value as Prometheus does in its API and labels: Go's
/// `strconv.FormatFloat(f, 'f', -1, 64)` (`NaN`, `+Inf`, `-Inf`, shortest round-trip digits).
pub fn format_float(f: f64) -> String {
    let mut s = String::new();
    write_float(&mut s, f);
    s
}

/// Appends `f` formatted as [`format_float`] does, without allocating: query results write
/// thousands of values.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f == f64::INFINITY {
        out.push_str("+Inf");
    } else if f == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if let Some((n, k)) = short_decimal(f) {
        write_decimal(out, n, k);
    } else {
        write_shortest(out, f);
    }
}

/// Appends finite `f` in its shortest round-trip digits, in plain decimal notation, as
/// `Display` does, several times faster: ryu finds the same digits but writes very large and
/// very small magnitudes with an exponent (written out here), and where two shortest
/// candidates are equally close to `f` (a tie) picks the other one: those take `Display`.
fn write_shortest(out: &mut String, f: f64) {
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(f);
    let Some(e) = s.bytes().position(|b| b == b'e') else {
        // Plain notation already: `[-]int.frac`, `.0` for integers.
        let s = s.strip_suffix(".0").unwrap_or(s);
        let tie = match s.bytes().position(|b| b == b'.') {
            Some(dot) => is_tie(f, (s.len() - dot - 1) as u32),
            None => s.trim_start_matches('-').len() >= 16,
        };
        if tie {
            return display(out, f);
        }
        out.push_str(s);
        return;
    };
    let (mantissa, exp) = (&s[..e], &s[e + 1..]);
    let Ok(exp) = exp.parse::<i32>() else {
        return display(out, f);
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let n = int.len() + frac.len();
    // Digits before the decimal point; the last digit's power of ten.
    let point = int.len() as i32 + exp;
    let last = point - n as i32;
    if (last >= 0 && n >= 16) || (last < 0 && is_tie(f, last.unsigned_abs())) {
        return display(out, f);
    }
    if negative {
        out.push('-');
    }
    // The digits are `int` then `frac`, `int` one digit long (ryu's scientific form).
    let digit = |i: usize| {
        if i < int.len() {
            &int[i..i + 1]
        } else {
            &frac[i - int.len()..i - int.len() + 1]
        }
    };
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        (0..n).for_each(|i| out.push_str(digit(i)));
    } else {
        let point = point as usize;
        (0..n.min(point)).for_each(|i| out.push_str(digit(i)));
        if point >= n {
            out.extend(std::iter::repeat_n('0', point - n));
        } else {
            out.push('.');
            (point..n).for_each(|i| out.push_str(digit(i)));
        }
    }
}

/// Whether `f` lies exactly halfway between two decimals whose last digit is at `10^-k`: then
/// `2 f 10^k` is an odd integer, that is (`f` being `m 2^e` with `m` odd, `10^k` being
/// `5^k 2^k`) `e + 1 + k == 0`.
fn is_tie(f: f64, k: u32) -> bool {
    let bits = f.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (m, e) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    m != 0 && e + m.trailing_zeros() as i32 + 1 + k as i32 == 0
}

/// `f` through `Display`, the reference [`write_shortest`] matches.
fn display(out: &mut String, f: f64) {
    let _ = write!(out, "{f}");
}

#[cfg(test)]
mod tests {
    use super::write_float;

    #[test]
    fn floats_format_as_display_does() {
        let mut x = 0x243F_6A88_85A3_08D3u64;
        let check = |f: f64| {
            let mut s = String::new();
            write_float(&mut s, f);
            let want = if f.is_nan() {
                "NaN".to_string()
            } else if f.is_infinite() {
                if f > 0.0 { "+Inf" } else { "-Inf" }.to_string()
            } else {
                format!("{f}")
            };
            assert_eq!(s, want, "bits {:#x}", f.to_bits());
        };
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e15,
            1e16,
            1e17,
            1e-5,
            1e-7,
            5e-324,
            f64::MAX,
        ] {
            check(f);
        }
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(f64::from_bits(x));
            check((x % 2_000_000) as f64 / 100.0 - 5000.0);
            check((x % 20_000) as f64 / 10.0 - 1000.0);
            check((x % 200_000_000) as f64 / 10_000.0 - 9999.0);
            check((x % 2_000_000_000_000_000) as f64 - 1e15);
            check((x % 7) as f64 / 1000.0);
            check((x >> 11) as f64 / (1u64 << 53) as f64 * 1e6);
            // Averages (16 and 17 digits), and values halfway between two shortest decimals.
            check((x % 100_000_000) as f64 / 1000.0 / ((x % 287) + 1) as f64);
            check(((x >> 13) as f64 + 0.25) * 2f64.powi((x % 9) as i32 - 6));
        }
        // 2181495296738027.25: halfway between ...27.2 and ...27.3.
        check(f64::from_bits(0x431f_003b_d0f7_0bad));
    }
}
