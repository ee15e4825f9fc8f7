//! Checks of a query's shape made before it is parsed: its length, how deeply it nests, and
//! the durations written in it.
//!
//! The parser's type checks walk a node's subtree for every node they build, so parsing costs
//! the query's size times its depth; the parser, the printer and the evaluator recurse once per
//! level. One linear scan of the text bounds the depth (and so all of these) before any of them
//! runs: a query nested too deeply is refused with a `bad_data` error naming the limit.
//!
//! The same scan reads the durations of offsets, ranges and subquery steps: promql-parser 0.11
//! panics converting a number outside `std::time::Duration`'s range (`offset NaN`, `[1e20]`),
//! and Prometheus refuses any duration that does not fit its own (Go's `time.Duration`, i64
//! nanoseconds, about 292 years) as "duration out of range". Such a query is refused here,
//! before the parser sees it.

use crate::Error;

/// Longest duration Prometheus accepts, in milliseconds: `i64::MAX` nanoseconds.
const MAX_DURATION_MS: f64 = i64::MAX as f64 / 1e6;

/// What [`scan`] refuses before the parser runs.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal<'a> {
    /// An offset, range or subquery step out of Prometheus's range: the literal as written.
    DurationOutOfRange(&'a str),
}

/// An upper bound on the depth of the expression tree of `query`: brackets nest, and within one
/// bracket (or one function argument) every operator can add a level (a chain `a + b + c` is a
/// tree as deep as its operators), as can a range or subquery bracket after an expression.
/// Refuses the first duration (after `offset`, in a range or subquery bracket) out of range.
pub(crate) fn scan(query: &str) -> Result<usize, Refusal<'_>> {
    #[derive(Default)]
    struct Frame {
        /// Operators so far in the current argument.
        ops: usize,
        /// The deepest bracket nested in the current argument.
        child: usize,
        /// The deepest argument finished so far.
        best: usize,
        /// A range or subquery bracket: a `:` in it is followed by the subquery's step.
        range: bool,
        /// A list of label names (after `by`, `on`, ...): its `)` ends no expression.
        labels: bool,
    }
    impl Frame {
        fn depth(&self) -> usize {
            self.best.max(self.ops.saturating_add(self.child))
        }
    }
    let b = query.as_bytes();
    let mut stack = vec![Frame::default()];
    // Closes the innermost bracket; whether it was a list of label names.
    let close = |stack: &mut Vec<Frame>| {
        if stack.len() > 1 {
            let f = stack.pop().expect("nested frame");
            let top = stack.last_mut().expect("root frame");
            top.child = top.child.max(f.depth() + 1);
            f.labels
        } else {
            false
        }
    };
    // The next literal is a duration (after `offset`, `[` or a subquery's `:`; blanks,
    // comments and a sign may come between).
    let mut duration_next = false;
    // The last token ends an expression, so an `offset` after it is the keyword (elsewhere it
    // is a metric or label name).
    let mut after_expr = false;
    // The next `(` opens a list of label names (blanks and comments may come between).
    let mut labels_next = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        let duration_here = std::mem::take(&mut duration_next);
        let labels_here = std::mem::take(&mut labels_next);
        let top = stack.last_mut().expect("root frame");
        match c {
            b'"' | b'\'' | b'`' => {
                // A string: skip it (backslash escapes, except in raw strings).
                while i < b.len() && b[i] != c {
                    i += if c != b'`' && b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                after_expr = true;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                duration_next = duration_here;
                labels_next = labels_here;
            }
            c if c.is_ascii_whitespace() => {
                duration_next = duration_here;
                labels_next = labels_here;
            }
            b'(' | b'{' => {
                stack.push(Frame {
                    labels: labels_here && c == b'(',
                    ..Frame::default()
                });
                after_expr = false;
            }
            b'[' => {
                top.ops += 1;
                stack.push(Frame {
                    range: true,
                    ..Frame::default()
                });
                duration_next = true;
                after_expr = false;
            }
            b')' | b']' | b'}' => after_expr = !close(&mut stack),
            b',' => {
                top.best = top.depth();
                top.ops = 0;
                top.child = 0;
                after_expr = false;
            }
            b':' => {
                duration_next = top.range;
                after_expr = false;
            }
            b'+' | b'-' => {
                top.ops += 1;
                // `offset -5m`: the sign belongs to the duration.
                duration_next = duration_here;
                after_expr = false;
            }
            b'*' | b'/' | b'%' | b'^' => {
                top.ops += 1;
                after_expr = false;
            }
            b'=' | b'!' | b'<' | b'>' => {
                top.ops += 1;
                if i < b.len() && (b[i] == b'=' || b[i] == b'~') {
                    i += 1;
                }
                after_expr = false;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let start = i - 1;
                // Names may hold colons; numbers and durations (`[5m:1m]`) end at one.
                let name = !(c.is_ascii_digit() || c == b'.');
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || name && (b[i] == b'_' || b[i] == b':'))
                {
                    i += 1;
                }
                let word = &query[start..i];
                let offset_keyword = after_expr && word.eq_ignore_ascii_case("offset");
                after_expr = true;
                if ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    top.ops += 1;
                    after_expr = false;
                } else if c.is_ascii_digit()
                    && word.ends_with(['e', 'E'])
                    && i < b.len()
                    && (b[i] == b'+' || b[i] == b'-')
                {
                    // The sign of an exponent (`1e-3`) is part of the number.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                } else if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k))
                {
                    labels_next = true;
                    after_expr = false;
                } else if word.eq_ignore_ascii_case("bool") {
                    after_expr = false;
                } else if offset_keyword {
                    duration_next = true;
                    after_expr = false;
                }
                let literal = &query[start..i];
                if duration_here && !duration_in_range(literal) {
                    return Err(Refusal::DurationOutOfRange(literal));
                }
            }
            _ => after_expr = false,
        }
    }
    while stack.len() > 1 {
        close(&mut stack);
    }
    Ok(stack[0].depth())
}
/// Whether `literal`, written where the parser expects a duration, is within Prometheus's
/// range. Only literals that are numbers or durations (as the parser reads them) can be out of
/// range: anything else, well formed or not, is left to the parser.
fn duration_in_range(literal: &str) -> bool {
    let ms = if literal.eq_ignore_ascii_case("nan") || literal.eq_ignore_ascii_case("inf") {
        return false;
    } else if !literal.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return true;
    } else if literal.contains(['x', 'X'])
        && !literal.starts_with("0x")
        && !literal.starts_with("0X")
    {
        // No number (the lexer reads an `x` only after a leading `0`), and one that
        // `parse_str_radix` would panic on.
        return true;
    } else if let Ok(secs) = promql_parser::util::parse_str_radix(literal) {
        // A number of seconds, read as the parser reads it (hex, octal, exponents).
        secs * 1000.0
    } else {
        match unit_duration_ms(literal) {
            Some(ms) => ms,
            None => return true,
        }
    };
    // NaN compares false: out of range.
    ms.abs() <= MAX_DURATION_MS
}

/// The milliseconds of a duration with units (`1y2w3d4h5m6s7ms`), as floating point so that
/// no number of digits overflows; `None` if `literal` is not of that form.
fn unit_duration_ms(literal: &str) -> Option<f64> {
    let mut ms = 0.0;
    let mut rest = literal;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (per, len) = [
            ("ms", 1.0),
            ("s", 1e3),
            ("m", 60e3),
            ("h", 3_600e3),
            ("d", 86_400e3),
            ("w", 604_800e3),
            ("y", 31_536_000e3),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, per)| (per, u.len()))?;
        ms += n * per;
        rest = &rest[len..];
    }
    Some(ms)
}

/// Refuses a query longer than `max_len` bytes, nested deeper than `max_depth` (as [`scan`]
/// estimates it) or with a duration out of range; returns the depth estimate.
pub(crate) fn check(query: &str, max_len: usize, max_depth: usize) -> Result<usize, Error> {
    if query.len() > max_len {
        return Err(Error::BadData(format!(
            "invalid parameter \"query\": the query is {} bytes long, more than the limit of {max_len} bytes (query.max_query_length)",
            query.len()
        )));
    }
    let depth = scan(query).map_err(|r| match r {
        Refusal::DurationOutOfRange(lit) => Error::BadData(format!(
            "invalid parameter \"query\": duration out of range: {lit:?} (offsets, ranges and subquery steps must be finite and at most {} seconds, about 292 years)",
            MAX_DURATION_MS as i64 / 1000
        )),
    })?;
    if depth > max_depth {
        return Err(Error::BadData(format!(
            "invalid parameter \"query\": the query nests {depth} levels deep (brackets and operators), more than the limit of {max_depth} (query.max_depth)"
        )));
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::{scan, Refusal};
    use promql_parser::parser::{parse, Expr};

    fn depth_bound(q: &str) -> usize {
        scan(q).unwrap_or_else(|r| panic!("{q}: {r:?}"))
    }

    /// The real depth of a parsed tree.
    fn depth(e: &Expr) -> usize {
        let kids: Vec<&Expr> = match e {
            Expr::Aggregate(a) => [Some(&*a.expr), a.param.as_deref()]
                .into_iter()
                .flatten()
                .collect(),
            Expr::Unary(u) => vec![&u.expr],
            Expr::Binary(b) => vec![&b.lhs, &b.rhs],
            Expr::Paren(p) => vec![&p.expr],
            Expr::Subquery(s) => vec![&s.expr],
            Expr::Call(c) => c.args.args.iter().map(|a| &**a).collect(),
            _ => vec![],
        };
        1 + kids.into_iter().map(depth).max().unwrap_or(0)
    }

    /// The estimate never undercounts the parsed tree, and stays close for ordinary queries.
    #[test]
    fn the_bound_holds_and_is_tight() {
        for q in [
            "up",
            "1",
            "-1",
            "a + b * c - d",
            "sum by (job) (rate(http_requests_total{code=~\"5..\"}[5m])) / on (job) group_left sum by (job) (rate(http_requests_total[5m]))",
            "histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))",
            "max_over_time(rate(x[5m] offset -5m)[1h:1m])",
            "min_over_time(max_over_time(x[5m:])[10m:])",
            "label_replace(up, \"a)(\", \"$1\", \"b\", \"(.*)\")",
            "1e-3 * 2",
            "a or b and c unless d",
            "- - - x",
            "sum(sum(sum(x)))",
            "topk(3, x) # a comment ((((",
        ] {
            let e = parse(q).unwrap_or_else(|err| panic!("{q}: {err}"));
            let (real, est) = (depth(&e), depth_bound(q));
            assert!(est + 1 >= real, "{q}: estimated {est}, real {real}");
            assert!(est <= real * 2 + 4, "{q}: estimated {est}, real {real}");
        }
        let chain = vec!["1"; 500].join("+");
        assert_eq!(depth_bound(&chain), 499);
        let nested = format!("{}x{}", "sum(".repeat(300), ")".repeat(300));
        assert_eq!(depth_bound(&nested), 300);
        // Unbalanced brackets still give a bound (the parser reports the error).
        assert_eq!(depth_bound("((((x"), 4);
    }

    /// Durations the parser cannot take are refused, wherever a duration stands, and only there;
    /// durations within Prometheus's range (up to 2^63 ns) pass.
    #[test]
    fn durations_out_of_range_are_refused() {
        for (q, lit) in [
            ("m offset NaN", "NaN"),
            ("m offset -nan", "nan"),
            ("m offset Inf", "Inf"),
            ("m offset + Inf", "Inf"),
            ("m offset 1e400", "1e400"),
            ("m offset 1e20", "1e20"),
            ("m offset -1e+20", "1e+20"),
            ("m offset 0x7fffffffffffffff", "0x7fffffffffffffff"),
            ("m offset 9223372037", "9223372037"),
            ("m offset 293y", "293y"),
            (
                "m offset 99999999999999999999999999s",
                "99999999999999999999999999s",
            ),
            ("sum(m) offset NaN", "NaN"),
            ("m{a=\"b\"} offset # a comment\n NaN", "NaN"),
            ("rate(m[5m] offset NaN)", "NaN"),
            ("m[1e20]", "1e20"),
            ("m[ 1e20 ]", "1e20"),
            ("m[5m:1e20]", "1e20"),
            ("m[1e20:5m]", "1e20"),
            ("max_over_time(m[5m:1m])[1y:1e300]", "1e300"),
        ] {
            assert_eq!(scan(q), Err(Refusal::DurationOutOfRange(lit)), "{q}");
        }
        for q in [
            "m offset 5m",
            "m offset -5m",
            "m offset 292y",
            "m offset 9223372036",
            "m offset 9223372036854ms",
            "m[1h:1m] offset 1e9",
            "m[0x10]",
            // No numbers: left to the parser.
            "m[1x]",
            "m offset 5x",
            "m[5m:1.2.3]",
            // `offset` as a name, followed by numbers that are no durations.
            "offset - Inf",
            "offset + 1e400",
            "sum by (offset) (m) + NaN",
            "m + on(offset) offset - 1e400",
            "sum without (a) (offset) / ignoring # (\n (offset) group_left (b) offset - Inf",
            "{offset=\"1e400\"}",
            // Out of range where no duration stands.
            "m @ 1e20",
            "1e400 * m",
            "vector(NaN)",
            "m[5m:] + Inf",
            "a:b:c + Inf",
        ] {
            assert!(scan(q).is_ok(), "{q}");
        }
    }
}
