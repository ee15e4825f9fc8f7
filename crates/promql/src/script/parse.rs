//! The script parser: commands, `eval` blocks and their `expect` lines, durations, numbers.

use super::series::{parse_series_def, parse_series_desc, take_quoted};
use super::{
    AnnotationExpectation, Command, EvalCase, EvalKind, Expected, ExpectedSeries, Load,
    RangeWindow, Script, ScriptError, SeqValue, TextMatch,
};
use regex::Regex;
use std::sync::OnceLock;

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid built-in pattern"))
}

fn pat_load() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^load(?:_(with_nhcb))?\s+(.+?)$")
}

fn pat_eval_instant() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$",
    )
}

fn pat_eval_range() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$",
    )
}

fn pat_expect() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$",
    )
}

fn pat_expect_range() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"^expect range vector\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+)$",
    )
}

const EXPECT_STRING_PREFIX: &str = "expect string";
const EXPECT_RANGE_PREFIX: &str = "expect range vector";

/// Trimmed lines; comment lines (first non-blank character `#`) become empty, so a comment
/// ends a `load` or `eval` block just as a blank line does.
fn get_lines(input: &str) -> Vec<&str> {
    input
        .split('\n')
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                ""
            } else {
                l
            }
        })
        .collect()
}

fn err(line_index: usize, message: impl Into<String>) -> ScriptError {
    ScriptError {
        line: line_index + 1,
        message: message.into(),
    }
}

/// Parses a whole script.
pub(crate) fn parse_script(text: &str) -> Result<Script, ScriptError> {
    let lines = get_lines(text);
    let mut commands = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let word = l
            .split([' ', '\t'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (next, cmd) = if word == "clear" {
            (i, Command::Clear { line: i + 1 })
        } else if word.starts_with("load") {
            let (next, load) = parse_load(&lines, i)?;
            (next, Command::Load(load))
        } else if word.starts_with("eval") {
            let (next, case) = parse_eval(&lines, i)?;
            (next, Command::Eval(Box::new(case)))
        } else {
            return Err(err(i, format!("invalid command {l:?}")));
        };
        commands.push(cmd);
        i = next + 1;
    }
    Ok(Script { commands })
}

/// Parses a `load` block starting at `lines[i]`; returns the index of its last line.
fn parse_load(lines: &[&str], mut i: usize) -> Result<(usize, Load), ScriptError> {
    let caps = pat_load().captures(lines[i]).ok_or_else(|| {
        err(
            i,
            "invalid load command. (load[_with_nhcb] <step:duration>)",
        )
    })?;
    let with_nhcb = caps.get(1).is_some();
    let step = caps.get(2).map_or("", |m| m.as_str());
    let interval_ms = parse_duration(step)
        .map_err(|e| err(i, format!("invalid step definition {step:?}: {e}")))?;
    let mut load = Load {
        line: i + 1,
        interval_ms,
        with_nhcb,
        series: Vec::new(),
    };
    while i + 1 < lines.len() && !lines[i + 1].is_empty() {
        i += 1;
        let def = parse_series_def(lines[i], i + 1).map_err(|e| err(i, e))?;
        // A later definition of the same series in one load replaces the earlier one.
        load.series.retain(|s| s.labels != def.labels);
        load.series.push(def);
    }
    Ok((i, load))
}

/// Parses an `eval` block starting at `lines[i]`; returns the index of its last line.
fn parse_eval(lines: &[&str], mut i: usize) -> Result<(usize, EvalCase), ScriptError> {
    let head = lines[i];
    let instant = pat_eval_instant().captures(head);
    let range = pat_eval_range().captures(head);
    let (modifier, query, kind) = if let Some(c) = &instant {
        let query = c[3].to_string();
        let at = c.get(2).map_or("", |m| m.as_str());
        let at_ms = parse_duration(at).map_err(|e| {
            err(
                i,
                format!("error in eval {query}: invalid timestamp definition {at:?}: {e}"),
            )
        })?;
        (c.get(1), query, EvalKind::Instant { at_ms })
    } else if let Some(c) = &range {
        let query = c[5].to_string();
        let (start_ms, end_ms, step_ms) = parse_window(&c[2], &c[3], &c[4])
            .map_err(|e| err(i, format!("error in eval {query}: {e}")))?;
        (
            c.get(1),
            query,
            EvalKind::Range {
                start_ms,
                end_ms,
                step_ms,
            },
        )
    } else {
        return Err(err(
            i,
            "invalid evaluation command. Must be either 'eval[_fail|_warn|_info|_ordered] instant \
             [at <offset:duration>] <query>' or 'eval[_fail|_warn|_info] range from <from> to <to> \
             step <step> <query>'",
        ));
    };
    let is_instant = matches!(kind, EvalKind::Instant { .. });
    let mut case = EvalCase {
        line: i + 1,
        query,
        kind,
        ordered: false,
        expect_fail: false,
        fail_checks: Vec::new(),
        warn: AnnotationExpectation::default(),
        info: AnnotationExpectation::default(),
        expected: Expected::default(),
        range_vector: None,
        exclude_from_range_check: false,
    };
    match modifier.map(|m| m.as_str()) {
        Some("ordered") => case.ordered = true,
        Some("fail") => case.expect_fail = true,
        Some("warn") => case.warn.at_least_one = true,
        Some("info") => case.info.at_least_one = true,
        _ => {}
    }
    let (query, line) = (case.query.clone(), case.line);
    let ctx = move |msg: String| format!("error in eval {query} (line {line}): {msg}");

    // Position of the next expected series (for ordered results): counts every block line but
    // the `expect <type>` ones, as promqltest does.
    let mut pos = 0usize;
    let mut fail_lines = 0usize;
    while i + 1 < lines.len() && !lines[i + 1].is_empty() {
        i += 1;
        pos += 1;
        let def = lines[i];
        if case.expect_fail {
            if let Some(msg) = def.strip_prefix("expected_fail_message") {
                case.fail_checks
                    .push(TextMatch::Exact(msg.trim().to_string()));
                break;
            }
            if let Some(pattern) = def.strip_prefix("expected_fail_regexp") {
                let pattern = pattern.trim();
                let re = Regex::new(pattern).map_err(|e| {
                    err(
                        i,
                        ctx(format!(
                            "invalid regexp '{pattern}' for expected_fail_regexp: {e}"
                        )),
                    )
                })?;
                case.fail_checks.push(TextMatch::Regex(re));
                break;
            }
        }
        if def.starts_with(EXPECT_RANGE_PREFIX) {
            let c = pat_expect_range()
                .captures(def)
                .ok_or_else(|| err(i, ctx(format!("invalid range vector definition {def:?}"))))?;
            let (start_ms, end_ms, step_ms) =
                parse_window(&c[1], &c[2], &c[3]).map_err(|e| err(i, ctx(e)))?;
            case.range_vector = Some(RangeWindow {
                start_ms,
                end_ms,
                step_ms,
            });
            case.exclude_from_range_check = true;
            continue;
        }
        if def.starts_with(EXPECT_STRING_PREFIX) {
            let s = parse_expect_string(def).map_err(|e| err(i, ctx(e)))?;
            case.expected.string = Some(s);
            case.exclude_from_range_check = true;
            continue;
        }
        if def.split(' ').next() == Some("expect") {
            pos -= 1;
            parse_expect(def, &mut case, &mut fail_lines).map_err(|e| err(i, ctx(e)))?;
            continue;
        }
        if let Ok(v) = parse_go_number(def) {
            case.expected.scalar = Some(v);
            break;
        }
        let (labels, values) = parse_series_desc(def).map_err(|e| err(i, e))?;
        if values.len() > 1 && is_instant && case.range_vector.is_none() {
            return Err(err(
                i,
                ctx(
                    "expecting multiple values in instant evaluation not allowed. consider \
                     using 'expect range vector' directive to enable a range vector result for \
                     an instant query"
                        .into(),
                ),
            ));
        }
        case.expected.scalar = None;
        case.expected.series.retain(|s| s.labels != labels);
        case.expected.series.push(ExpectedSeries {
            line: i + 1,
            pos,
            labels,
            values,
        });
    }
    Ok((i, case))
}

/// Applies one `expect <type> [msg:|regex: <text>]` line.
fn parse_expect(line: &str, case: &mut EvalCase, fail_lines: &mut usize) -> Result<(), String> {
    let caps = pat_expect().captures(line.trim()).ok_or_else(|| {
        "invalid expect statement, must match `expect <type> <match_type>: <string>` format"
            .to_string()
    })?;
    let mode = &caps[1];
    let matcher = match (caps.get(2).map(|m| m.as_str()), caps.get(3)) {
        (Some("msg"), Some(t)) => TextMatch::Exact(t.as_str().trim().to_string()),
        (Some("regex"), Some(t)) => {
            let pattern = t.as_str().trim();
            TextMatch::Regex(
                Regex::new(pattern).map_err(|_| format!("invalid regex {pattern} for {mode}"))?,
            )
        }
        _ => TextMatch::Any,
    };
    match mode {
        "ordered" => case.ordered = true,
        "fail" => {
            *fail_lines += 1;
            if *fail_lines > 1 {
                return Err(
                    "invalid expect lines, multiple expect fail lines are not allowed".into(),
                );
            }
            case.expect_fail = true;
            case.fail_checks.push(matcher);
        }
        "warn" => case.warn.expected.push(matcher),
        "no_warn" => case.warn.forbidden = true,
        "info" => case.info.expected.push(matcher),
        "no_info" => case.info.forbidden = true,
        _ => unreachable!("the pattern only admits known types"),
    }
    if !case.info.expected.is_empty() && case.info.forbidden {
        return Err("invalid expect lines, info and no_info cannot be used together".into());
    }
    if !case.warn.expected.is_empty() && case.warn.forbidden {
        return Err("invalid expect lines, warn and no_warn cannot be used together".into());
    }
    Ok(())
}

/// `expect string "..."` (Go quoting: double quotes with escapes, or backquotes).
fn parse_expect_string(line: &str) -> Result<String, String> {
    const MISSING: &str = "expected string literal not valid - a quoted string literal is required";
    const BAD: &str =
        "expected string literal not valid - check that the string is correctly quoted";
    if line == EXPECT_STRING_PREFIX {
        return Err(MISSING.into());
    }
    let s = line
        .strip_prefix(EXPECT_STRING_PREFIX)
        .and_then(|s| s.strip_prefix(' '))
        .unwrap_or(line);
    if s.is_empty() {
        return Err(MISSING.into());
    }
    if !s.starts_with(['"', '`', '\'']) {
        return Err(BAD.into());
    }
    match take_quoted(s) {
        Ok((v, "")) if !s.starts_with('\'') || v.chars().count() == 1 => Ok(v),
        _ => Err(BAD.into()),
    }
}

/// `from`, `to`, `step` as durations since the epoch; `to` may not be before `from`.
fn parse_window(from: &str, to: &str, step: &str) -> Result<(i64, i64, i64), String> {
    let f = parse_duration(from)
        .map_err(|e| format!("invalid start timestamp definition {from:?}: {e}"))?;
    let t =
        parse_duration(to).map_err(|e| format!("invalid end timestamp definition {to:?}: {e}"))?;
    if t < f {
        return Err(format!(
            "invalid test definition, end timestamp ({to}) is before start timestamp ({from})"
        ));
    }
    let s = parse_duration(step).map_err(|e| format!("invalid step definition {step:?}: {e}"))?;
    Ok((f, t, s))
}

/// A Prometheus duration (`1h`, `10s53ms`, `0`) in milliseconds: integer amounts with units
/// `y w d h m s ms`, each at most once and from the largest to the smallest. `0` needs no unit.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    match s {
        "0" => return Ok(0),
        "" => return Err("empty duration string".into()),
        _ => {}
    }
    let invalid = || format!("not a valid duration string: {s:?}");
    let mut rest = s;
    let mut total: i64 = 0;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let v: i64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(invalid());
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let idx = UNITS
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(|| format!("unknown unit {unit:?} in duration {s:?}"))?;
        if last_unit.is_some_and(|l| idx <= l) {
            return Err(invalid());
        }
        last_unit = Some(idx);
        total = v
            .checked_mul(UNITS[idx].1)
            .and_then(|ms| total.checked_add(ms))
            .filter(|ms| *ms <= i64::MAX / 1_000_000)
            .ok_or_else(|| "duration out of range".to_string())?;
    }
    Ok(total)
}

/// A number as promqltest reads a scalar expectation: Go's `strconv.ParseInt(s, 0, 64)` (base
/// prefixes `0x`, `0o`, `0b`, a leading `0` for octal, `_` between digits), else
/// `strconv.ParseFloat` (decimal, `Inf`/`Infinity`/`NaN` in any case, optionally signed).
pub fn parse_go_number(s: &str) -> Result<f64, String> {
    let bad = || format!("error parsing number: {s:?}");
    if s.is_empty() {
        return Err(bad());
    }
    let (neg, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if let Some(v) = go_parse_uint_base0(body) {
        let v = v as f64;
        return Ok(if neg { -v } else { v });
    }
    let lower = body.to_ascii_lowercase();
    let special = match lower.as_str() {
        "inf" | "infinity" => Some(f64::INFINITY),
        "nan" if body.len() == s.len() => Some(f64::NAN),
        _ => None,
    };
    if let Some(v) = special {
        return Ok(if neg { -v } else { v });
    }
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-' | b'_'))
        && body.bytes().any(|c| c.is_ascii_digit())
        && body.as_bytes()[0] != b'e'
        && body.as_bytes()[0] != b'E'
        && underscores_between_digits(body);
    if !valid {
        return Err(bad());
    }
    let cleaned: String = body.chars().filter(|&c| c != '_').collect();
    let v: f64 = cleaned.parse().map_err(|_| bad())?;
    Ok(if neg { -v } else { v })
}

fn underscores_between_digits(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'_'
            || (i > 0 && i + 1 < b.len() && b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit())
    })
}

/// Go's base-0 unsigned integer syntax, limited to what fits an `i64`.
fn go_parse_uint_base0(s: &str) -> Option<i64> {
    let lower = s.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    // An underscore may follow a base prefix or sit between digits.
    let check = if prefixed {
        format!("0{digits}")
    } else {
        digits.to_string()
    };
    if digits.is_empty() || digits.starts_with('_') && !prefixed {
        return None;
    }
    if !underscores_between_digits_radix(&check, radix) {
        return None;
    }
    let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
    if cleaned.is_empty() || !cleaned.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    i64::from_str_radix(&cleaned, radix).ok()
}

fn underscores_between_digits_radix(s: &str, radix: u32) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.iter().enumerate().all(|(i, &ch)| {
        ch != '_'
            || (i > 0 && i + 1 < c.len() && c[i - 1].is_digit(radix) && c[i + 1].is_digit(radix))
    })
}

/// True when an expected value list holds a native histogram.
pub(crate) fn has_histogram(values: &[SeqValue]) -> bool {
    values.iter().any(|v| matches!(v, SeqValue::Histogram(_)))
}
