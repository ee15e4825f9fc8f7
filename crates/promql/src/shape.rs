//! Checks of a query's shape made before it is parsed: its length, and how deeply it nests.
//!
//! The parser's type checks walk a node's subtree for every node they build, so parsing costs
//! the query's size times its depth; the parser, the printer and the evaluator recurse once per
//! level. One linear scan of the text bounds the depth (and so all of these) before any of them
//! runs: a query nested too deeply is refused with a `bad_data` error naming the limit.

use crate::Error;

/// An upper bound on the depth of the expression tree of `query`: brackets nest, and within one
/// bracket (or one function argument) every operator can add a level (a chain `a + b + c` is a
/// tree as deep as its operators), as can a range or subquery bracket after an expression.
pub(crate) fn depth_bound(query: &str) -> usize {
    #[derive(Default)]
    struct Frame {
        /// Operators so far in the current argument.
        ops: usize,
        /// The deepest bracket nested in the current argument.
        child: usize,
        /// The deepest argument finished so far.
        best: usize,
    }
    impl Frame {
        fn depth(&self) -> usize {
            self.best.max(self.ops.saturating_add(self.child))
        }
    }
    let b = query.as_bytes();
    let mut stack = vec![Frame::default()];
    let close = |stack: &mut Vec<Frame>| {
        if stack.len() > 1 {
            let f = stack.pop().expect("nested frame");
            let top = stack.last_mut().expect("root frame");
            top.child = top.child.max(f.depth() + 1);
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        let top = stack.last_mut().expect("root frame");
        match c {
            b'"' | b'\'' | b'`' => {
                // A string: skip it (backslash escapes, except in raw strings).
                while i < b.len() && b[i] != c {
                    i += if c != b'`' && b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'{' => stack.push(Frame::default()),
            b'[' => {
                top.ops += 1;
                stack.push(Frame::default());
            }
            b')' | b']' | b'}' => close(&mut stack),
            b',' => {
                top.best = top.depth();
                top.ops = 0;
                top.child = 0;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' => top.ops += 1,
            b'=' | b'!' | b'<' | b'>' => {
                top.ops += 1;
                if i < b.len() && (b[i] == b'=' || b[i] == b'~') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let start = i - 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_:.".contains(&b[i])) {
                    i += 1;
                }
                let word = &query[start..i];
                if ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    top.ops += 1;
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
                }
            }
            _ => {}
        }
    }
    while stack.len() > 1 {
        close(&mut stack);
    }
    stack[0].depth()
}

/// Refuses a query longer than `max_len` bytes or nested deeper than `max_depth` (as
/// [`depth_bound`] estimates it); returns the depth estimate.
pub(crate) fn check(query: &str, max_len: usize, max_depth: usize) -> Result<usize, Error> {
    if query.len() > max_len {
        return Err(Error::BadData(format!(
            "invalid parameter \"query\": the query is {} bytes long, more than the limit of {max_len} bytes (query.max_query_length)",
            query.len()
        )));
    }
    let depth = depth_bound(query);
    if depth > max_depth {
        return Err(Error::BadData(format!(
            "invalid parameter \"query\": the query nests {depth} levels deep (brackets and operators), more than the limit of {max_depth} (query.max_depth)"
        )));
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::depth_bound;
    use promql_parser::parser::{parse, Expr};

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
}
