//! Series descriptions: `metric{label="value"} 1+2x3 _ stale {{...}}`.
//!
//! The same language is used by `load` lines and by the expected-result lines of `eval`. It
//! follows the series-description mode of Prometheus's PromQL lexer and grammar: values are
//! separated by blanks; `a+bxN` / `a-bxN` expand to N+1 values starting at `a`; `axN` repeats
//! `a` N+1 times; `_` is one missing point but `_xN` is N missing points; `stale` is the
//! staleness marker; numbers may be `Inf`/`NaN` in any case; hexadecimal is not recognised
//! (`0x59` is 0 repeated 60 times); `{{...}}` is a native histogram.

use super::{SeqValue, SeriesDef};
use strata_model::{Labels, STALE_NAN};

/// Parses one series description. `line` is only used by the caller for messages.
pub(crate) fn parse_series_desc(text: &str) -> Result<(Labels, Vec<SeqValue>), String> {
    let (labels, rest) = parse_metric(text)?;
    let values = parse_values(rest)?;
    Ok((labels, values))
}

/// Builds a [`SeriesDef`] from a line, with the line number attached.
pub(crate) fn parse_series_def(text: &str, line: usize) -> Result<SeriesDef, String> {
    let (labels, values) = parse_series_desc(text)?;
    Ok(SeriesDef {
        line,
        labels,
        values,
    })
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_label_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits off and parses the `metric{...}` part; returns the labels and the rest of the line.
fn parse_metric(text: &str) -> Result<(Labels, &str), String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut rest = text.trim_start();
    if rest.starts_with(is_name_start) {
        let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        pairs.push((
            strata_model::METRIC_NAME.to_string(),
            rest[..end].to_string(),
        ));
        rest = &rest[end..];
    }
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_label_set(after, &mut pairs)?;
    } else if pairs.is_empty() {
        return Err(format!(
            "expected a metric name or a label set at the start of {text:?}"
        ));
    }
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "expected a blank between the series and its values, found {:?}",
            rest
        ));
    }
    let labels = Labels::from_pairs(pairs).map_err(|e| format!("invalid label set: {e}"))?;
    Ok((labels, rest))
}

/// Parses the inside of `{...}` (the `{` already consumed); returns the text after `}`.
fn parse_label_set<'a>(
    mut s: &'a str,
    pairs: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        // A label name (identifier or quoted), or a quoted metric name on its own.
        let (name, quoted, r) = if s.starts_with(['"', '\'', '`']) {
            let (v, r) = take_quoted(s)?;
            (v, true, r)
        } else if s.starts_with(is_label_start) {
            let end = s.find(|c| !is_label_char(c)).unwrap_or(s.len());
            (s[..end].to_string(), false, &s[end..])
        } else if s.is_empty() {
            return Err("unterminated label set: missing '}'".into());
        } else {
            return Err(format!("unexpected {:?} in label set", first_char(s)));
        };
        s = r.trim_start();
        if let Some(r) = s.strip_prefix('=') {
            if r.starts_with('~') {
                return Err("only '=' matchers are allowed in a series description".into());
            }
            s = r.trim_start();
            if !s.starts_with(['"', '\'', '`']) {
                return Err(format!("expected a quoted value for label {name:?}"));
            }
            let (value, r) = take_quoted(s)?;
            pairs.push((name, value));
            s = r.trim_start();
        } else if quoted {
            pairs.push((strata_model::METRIC_NAME.to_string(), name));
        } else {
            return Err(format!("expected '=' after label name {name:?}"));
        }
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(if s.is_empty() {
                "unterminated label set: missing '}'".into()
            } else {
                format!(
                    "expected ',' or '}}' in label set, found {:?}",
                    first_char(s)
                )
            });
        }
    }
}

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or(' ')
}

/// Takes one quoted string (`"..."`, `'...'` or `` `...` ``) off the front of `s` and unquotes
/// it as the PromQL lexer does.
pub(crate) fn take_quoted(s: &str) -> Result<(String, &str), String> {
    let quote = first_char(s);
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' && quote != '`' {
            escaped = true;
        } else if c == quote {
            let lit = &s[..=i];
            let v = promql_parser::util::unquote_string(lit)
                .map_err(|e| format!("invalid quoted string {lit}: {e}"))?;
            return Ok((v, &s[i + 1..]));
        }
    }
    Err(format!("unterminated quoted string {s}"))
}

/// Splits the values part into items at blanks, keeping `{{ ... }}` histograms whole.
fn split_items(s: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' || b[i] == b'\t' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
            if b[i..].starts_with(b"{{") {
                match s[i..].find("}}") {
                    Some(end) => i += end + 2,
                    None => return Err(format!("unterminated histogram in {:?}", &s[start..])),
                }
            } else {
                i += 1;
            }
        }
        items.push(&s[start..i]);
    }
    Ok(items)
}

/// Expands the values part of a series description.
pub(crate) fn parse_values(s: &str) -> Result<Vec<SeqValue>, String> {
    let mut out = Vec::new();
    for item in split_items(s)? {
        if item.starts_with("{{") {
            expand_histogram_item(item, &mut out)?;
        } else {
            expand_item(item, &mut out)?;
        }
    }
    Ok(out)
}

/// A token of the value-sequence lexer.
#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Number(&'a str),
    Ident(&'a str),
    Add,
    Sub,
    Times,
    Blank,
}

fn lex_item(item: &str) -> Result<Vec<Tok<'_>>, String> {
    let b = item.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'+' => {
                toks.push(Tok::Add);
                i += 1;
            }
            b'-' => {
                toks.push(Tok::Sub);
                i += 1;
            }
            b'x' => {
                toks.push(Tok::Times);
                i += 1;
            }
            b'_' => {
                toks.push(Tok::Blank);
                i += 1;
            }
            _ if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let end = scan_number(item, i)?;
                toks.push(Tok::Number(&item[i..end]));
                i = end;
            }
            _ if c.is_ascii_alphabetic() => {
                let end = item[i..]
                    .find(|c: char| !(is_name_char(c)))
                    .map_or(item.len(), |e| i + e);
                let word = &item[i..end];
                let lower = word.to_ascii_lowercase();
                if lower == "inf" || lower == "nan" {
                    toks.push(Tok::Number(word));
                } else {
                    toks.push(Tok::Ident(word));
                }
                i = end;
            }
            _ => {
                return Err(format!(
                    "unexpected character in series values: {:?}",
                    first_char(&item[i..])
                ))
            }
        }
    }
    Ok(toks)
}

/// Scans a number as the series-description lexer does (decimal only) and returns its end.
fn scan_number(s: &str, start: usize) -> Result<usize, String> {
    let b = s.as_bytes();
    let mut i = start;
    let mut dot = false;
    let mut exp = false;
    let bad = |end: usize| format!("bad number syntax: {:?}", &s[start..end.min(s.len())]);
    if b[i] == b'.' {
        dot = true;
        i += 1;
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            i += 1;
        } else if c == b'.' {
            if dot || exp {
                return Err(bad(i + 1));
            }
            dot = true;
            i += 1;
            if i < b.len() && (b[i] == b'_' || b[i] == b'.') {
                return Err(bad(i + 1));
            }
        } else if c == b'e' || c == b'E' {
            if exp {
                return Err(bad(i + 1));
            }
            exp = true;
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            if i >= b.len() || !b[i].is_ascii_digit() {
                return Err(bad(i + 1));
            }
        } else if c == b'_' {
            i += 1;
            if i >= b.len() || !b[i].is_ascii_digit() {
                return Err(bad(i + 1));
            }
        } else {
            break;
        }
    }
    // Only the repetition `x` may follow a number directly.
    if i < b.len() && b[i] != b'x' && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        return Err(bad(i + 1));
    }
    Ok(i)
}

/// The value of a NUMBER token, as PromQL's parser reads it: an integer in Go's base-0 syntax
/// (a leading `0` means octal) when it is one, otherwise a float.
fn number_value(tok: &str) -> Result<f64, String> {
    let lower = tok.to_ascii_lowercase();
    match lower.as_str() {
        "inf" => return Ok(f64::INFINITY),
        "nan" => return Ok(f64::NAN),
        _ => {}
    }
    let digits: String = tok.chars().filter(|&c| c != '_').collect();
    if digits.bytes().all(|c| c.is_ascii_digit()) {
        let (radix, body) = if digits.len() > 1 && digits.starts_with('0') {
            (8, &digits[1..])
        } else {
            (10, digits.as_str())
        };
        if let Ok(v) = i64::from_str_radix(body, radix) {
            return Ok(v as f64);
        }
    }
    digits
        .parse::<f64>()
        .map_err(|_| format!("error parsing number: {tok:?}"))
}

fn repetitions(tok: Option<&Tok<'_>>) -> Result<usize, String> {
    match tok {
        Some(Tok::Number(n)) if n.bytes().all(|c| c.is_ascii_digit()) => n
            .parse::<usize>()
            .map_err(|e| format!("invalid repetition in series values: {e}")),
        Some(Tok::Number(n)) => Err(format!("invalid repetition in series values: {n:?}")),
        _ => Err("expected a repetition count after 'x'".into()),
    }
}

/// `stale`, a number, or a signed number; returns the value and the tokens consumed.
fn series_value(toks: &[Tok<'_>]) -> Result<(f64, usize), String> {
    match toks {
        [Tok::Ident("stale"), ..] => Ok((STALE_NAN, 1)),
        [Tok::Ident(w), ..] => Err(format!(
            "unexpected {w:?} in series values, expected number or \"stale\""
        )),
        [Tok::Number(n), ..] => Ok((number_value(n)?, 1)),
        [Tok::Add, Tok::Number(n), ..] => Ok((number_value(n)?, 2)),
        [Tok::Sub, Tok::Number(n), ..] => Ok((-number_value(n)?, 2)),
        _ => Err("expected a number or \"stale\" in series values".into()),
    }
}

fn expand_item(item: &str, out: &mut Vec<SeqValue>) -> Result<(), String> {
    let toks = lex_item(item)?;
    let bad = || format!("invalid series value {item:?}");
    match toks.as_slice() {
        [Tok::Blank] => out.push(SeqValue::Omitted),
        [Tok::Blank, Tok::Times, n] => {
            let n = repetitions(Some(n))?;
            out.resize(out.len() + n, SeqValue::Omitted);
        }
        _ => {
            let (first, used) = series_value(&toks).map_err(|e| format!("{e} in {item:?}"))?;
            let rest = &toks[used..];
            match rest {
                [] => out.push(SeqValue::Float(first)),
                [Tok::Times, n] => {
                    let n = repetitions(Some(n))?;
                    out.resize(out.len() + n + 1, SeqValue::Float(first));
                }
                [sign @ (Tok::Add | Tok::Sub), Tok::Number(d), Tok::Times, n] => {
                    let mut delta = number_value(d)?;
                    if *sign == Tok::Sub {
                        delta = -delta;
                    }
                    let n = repetitions(Some(n))?;
                    let mut v = first;
                    for _ in 0..=n {
                        out.push(SeqValue::Float(v));
                        v += delta;
                    }
                }
                _ => return Err(bad()),
            }
        }
    }
    Ok(())
}

/// `{{...}}`, `{{...}}xN`, `{{...}}+{{...}}xN`, `{{...}}-{{...}}xN`: only the number of values
/// matters here (histogram data is never loaded, see the skip rules).
fn expand_histogram_item(item: &str, out: &mut Vec<SeqValue>) -> Result<(), String> {
    let end = item
        .find("}}")
        .ok_or_else(|| format!("unterminated histogram {item:?}"))?
        + 2;
    let first = &item[..end];
    let rest = &item[end..];
    if rest.is_empty() {
        out.push(SeqValue::Histogram(first.to_string()));
        return Ok(());
    }
    let times = if let Some(n) = rest.strip_prefix('x') {
        n
    } else if let Some(r) = rest.strip_prefix(['+', '-']) {
        if !r.starts_with("{{") {
            return Err(format!("invalid histogram series value {item:?}"));
        }
        let e = r
            .find("}}")
            .ok_or_else(|| format!("unterminated histogram {item:?}"))?;
        r[e + 2..]
            .strip_prefix('x')
            .ok_or_else(|| format!("expected 'x' and a count after {item:?}"))?
    } else {
        return Err(format!("invalid histogram series value {item:?}"));
    };
    let n: usize = times
        .parse()
        .map_err(|_| format!("invalid repetition in series values: {times:?}"))?;
    out.resize(out.len() + n + 1, SeqValue::Histogram(item.to_string()));
    Ok(())
}
