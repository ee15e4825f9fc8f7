//! Query ASTs: the `@`-modifier variants promqltest runs for every instant case, a printer
//! for them, and walks that list the selectors and functions a query uses.

use promql_parser::label::Matchers;
use promql_parser::parser::{
    AtModifier, BinModifier, Expr, LabelModifier, NumberLiteral, Offset, VectorMatchCardinality,
    VectorSelector,
};
use promql_parser::util::display_duration;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Functions whose result changes with the evaluation time even when their arguments do not
/// (Prometheus's `AtModifierUnsafeFunctions`), plus the query-context functions `start()`,
/// `end()`, `step()` and `range()`, which read the query's own time range: promqltest does not
/// build `@`-modifier variants of queries that call them (outside a subquery).
pub const AT_MODIFIER_UNSAFE_FUNCTIONS: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
    "start",
    "end",
    "step",
    "range",
];

/// The query with every selector and subquery that is not inside a subquery pinned to
/// `@ ts_ms` (an `@ start()`/`@ end()` is replaced, a fixed `@ t` is kept), printed back to
/// PromQL; `None` when the query calls an `@`-unsafe function outside a subquery, or holds a
/// node this printer cannot print.
pub(crate) fn at_modifier_query(expr: &Expr, ts_ms: i64) -> Option<String> {
    let mut e = expr.clone();
    let mut unsafe_call = false;
    pin(&mut e, at_time(ts_ms), false, &mut unsafe_call);
    if unsafe_call {
        return None;
    }
    let mut out = String::new();
    print(&e, &mut out).ok()?;
    Some(out)
}

fn at_time(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn is_fixed(at: &Option<AtModifier>) -> bool {
    matches!(at, Some(AtModifier::At(_)))
}

fn pin(e: &mut Expr, ts: SystemTime, inside_subquery: bool, unsafe_call: &mut bool) {
    match e {
        Expr::VectorSelector(vs) => {
            if !inside_subquery && !is_fixed(&vs.at) {
                vs.at = Some(AtModifier::At(ts));
            }
        }
        Expr::MatrixSelector(ms) => {
            if !inside_subquery && !is_fixed(&ms.vs.at) {
                ms.vs.at = Some(AtModifier::At(ts));
            }
        }
        Expr::Subquery(sq) => {
            if !inside_subquery && !is_fixed(&sq.at) {
                sq.at = Some(AtModifier::At(ts));
            }
            // Every subquery now has a timestamp: nothing below it is changed or inspected.
            pin(&mut sq.expr, ts, true, unsafe_call);
        }
        Expr::Call(c) => {
            if !inside_subquery && AT_MODIFIER_UNSAFE_FUNCTIONS.contains(&c.func.name) {
                *unsafe_call = true;
            }
            for a in c.args.args.iter_mut() {
                pin(a, ts, inside_subquery, unsafe_call);
            }
        }
        Expr::Aggregate(a) => {
            if let Some(p) = a.param.as_mut() {
                pin(p, ts, inside_subquery, unsafe_call);
            }
            pin(&mut a.expr, ts, inside_subquery, unsafe_call);
        }
        Expr::Unary(u) => pin(&mut u.expr, ts, inside_subquery, unsafe_call),
        Expr::Binary(b) => {
            pin(&mut b.lhs, ts, inside_subquery, unsafe_call);
            pin(&mut b.rhs, ts, inside_subquery, unsafe_call);
        }
        Expr::Paren(p) => pin(&mut p.expr, ts, inside_subquery, unsafe_call),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Visits every node of `e`, parents first.
pub(crate) fn walk<'a>(e: &'a Expr, f: &mut dyn FnMut(&'a Expr)) {
    f(e);
    match e {
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                walk(p, f);
            }
            walk(&a.expr, f);
        }
        Expr::Unary(u) => walk(&u.expr, f),
        Expr::Binary(b) => {
            walk(&b.lhs, f);
            walk(&b.rhs, f);
        }
        Expr::Paren(p) => walk(&p.expr, f),
        Expr::Subquery(s) => walk(&s.expr, f),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, f)),
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => {}
    }
}

/// Every vector selector of `e`, including those of range selectors.
pub(crate) fn selectors(e: &Expr) -> Vec<&VectorSelector> {
    let mut out = Vec::new();
    walk(e, &mut |n| match n {
        Expr::VectorSelector(vs) => out.push(vs),
        Expr::MatrixSelector(ms) => out.push(&ms.vs),
        _ => {}
    });
    out
}

/// The names of all functions `e` calls.
pub(crate) fn functions(e: &Expr) -> Vec<&'static str> {
    let mut out = Vec::new();
    walk(e, &mut |n| {
        if let Expr::Call(c) = n {
            out.push(c.func.name);
        }
    });
    out
}

/// True when a series with `labels` is selected by `vs` (name and matchers, `or` groups too).
pub(crate) fn selector_matches(vs: &VectorSelector, labels: &strata_model::Labels) -> bool {
    let value = |name: &str| labels.get(name).unwrap_or("");
    if let Some(n) = &vs.name {
        if value(strata_model::METRIC_NAME) != n {
            return false;
        }
    }
    let Matchers {
        matchers,
        or_matchers,
    } = &vs.matchers;
    matchers.iter().all(|m| m.is_match(value(&m.name)))
        && (or_matchers.is_empty()
            || or_matchers
                .iter()
                .any(|g| g.iter().all(|m| m.is_match(value(&m.name)))))
}

fn print_at(at: &Option<AtModifier>, out: &mut String) -> std::fmt::Result {
    match at {
        None => Ok(()),
        Some(AtModifier::Start) => out.write_str(" @ start()"),
        Some(AtModifier::End) => out.write_str(" @ end()"),
        Some(AtModifier::At(t)) => {
            let ms: i128 = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i128,
                Err(e) => -(e.duration().as_millis() as i128),
            };
            let sign = if ms < 0 { "-" } else { "" };
            let a = ms.unsigned_abs();
            write!(out, " @ {sign}{}.{:03}", a / 1000, a % 1000)
        }
    }
}

fn print_offset(offset: &Option<Offset>, out: &mut String) -> std::fmt::Result {
    match offset {
        None => Ok(()),
        Some(Offset::Pos(d)) => write!(out, " offset {}", display_duration(d)),
        Some(Offset::Neg(d)) => write!(out, " offset -{}", display_duration(d)),
    }
}

/// Like the crate's `Display` for it, but keeps an empty `ignoring ()`.
fn print_bin_modifier(m: &BinModifier, out: &mut String) -> std::fmt::Result {
    if m.return_bool {
        out.write_str(" bool")?;
    }
    match &m.matching {
        Some(LabelModifier::Include(ls)) => write!(out, " on ({ls})")?,
        Some(LabelModifier::Exclude(ls)) => write!(out, " ignoring ({ls})")?,
        None => {}
    }
    match &m.card {
        VectorMatchCardinality::ManyToOne(ls) => write!(out, " group_left ({ls})")?,
        VectorMatchCardinality::OneToMany(ls) => write!(out, " group_right ({ls})")?,
        VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany => {}
    }
    let num = |v: f64| NumberLiteral::new(v).to_string();
    match (m.fill_values.lhs, m.fill_values.rhs) {
        (Some(l), Some(r)) if l.to_bits() == r.to_bits() => write!(out, " fill ({})", num(l))?,
        (l, r) => {
            if let Some(l) = l {
                write!(out, " fill_left ({})", num(l))?;
            }
            if let Some(r) = r {
                write!(out, " fill_right ({})", num(r))?;
            }
        }
    }
    Ok(())
}

fn print_selector_body(vs: &VectorSelector, out: &mut String) -> std::fmt::Result {
    if let Some(n) = &vs.name {
        out.write_str(n)?;
    }
    // In the given order (the crate's `Display` sorts them).
    let join = |ms: &[promql_parser::label::Matcher]| {
        ms.iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Matchers {
        matchers,
        or_matchers,
    } = &vs.matchers;
    let m = if or_matchers.is_empty() {
        join(matchers)
    } else {
        or_matchers
            .iter()
            .map(|g| join(g))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    if !m.is_empty() || vs.name.is_none() {
        write!(out, "{{{m}}}")?;
    }
    Ok(())
}

/// Prints `e` as PromQL that parses back to the same tree.
pub(crate) fn print(e: &Expr, out: &mut String) -> std::fmt::Result {
    match e {
        Expr::Aggregate(a) => {
            write!(out, "{}", a.op)?;
            match &a.modifier {
                Some(LabelModifier::Include(ls)) => write!(out, " by ({ls}) ")?,
                Some(LabelModifier::Exclude(ls)) => write!(out, " without ({ls}) ")?,
                None => {}
            }
            out.write_char('(')?;
            if let Some(p) = &a.param {
                print(p, out)?;
                out.write_str(", ")?;
            }
            print(&a.expr, out)?;
            out.write_char(')')
        }
        Expr::Unary(u) => {
            out.write_char('-')?;
            print(&u.expr, out)
        }
        Expr::Binary(b) => {
            print(&b.lhs, out)?;
            write!(out, " {}", b.op)?;
            if let Some(m) = &b.modifier {
                print_bin_modifier(m, out)?;
            }
            out.write_char(' ')?;
            print(&b.rhs, out)
        }
        Expr::Paren(p) => {
            out.write_char('(')?;
            print(&p.expr, out)?;
            out.write_char(')')
        }
        Expr::Subquery(s) => {
            print(&s.expr, out)?;
            write!(out, "[{}:", display_duration(&s.range))?;
            if let Some(step) = &s.step {
                out.write_str(&display_duration(step))?;
            }
            out.write_char(']')?;
            print_at(&s.at, out)?;
            print_offset(&s.offset, out)
        }
        Expr::NumberLiteral(n) => write!(out, "{n}"),
        Expr::StringLiteral(s) => {
            // promql-parser decodes `\xNN` to U+00NN; print such characters back as byte
            // escapes so the pinned query means what the original did.
            let printed = s.to_string();
            for c in printed.chars() {
                if ('\u{80}'..='\u{ff}').contains(&c) {
                    write!(out, "\\x{:02x}", c as u32)?;
                } else {
                    out.write_char(c)?;
                }
            }
            Ok(())
        }
        Expr::VectorSelector(vs) => {
            print_selector_body(vs, out)?;
            print_at(&vs.at, out)?;
            print_offset(&vs.offset, out)
        }
        Expr::MatrixSelector(ms) => {
            print_selector_body(&ms.vs, out)?;
            write!(out, "[{}]", display_duration(&ms.range))?;
            print_at(&ms.vs.at, out)?;
            print_offset(&ms.vs.offset, out)
        }
        Expr::Call(c) => {
            write!(out, "{}(", c.func.name)?;
            for (i, a) in c.args.args.iter().enumerate() {
                if i > 0 {
                    out.write_str(", ")?;
                }
                print(a, out)?;
            }
            out.write_char(')')
        }
        Expr::Extension(_) => Err(std::fmt::Error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use promql_parser::parser::parse;

    fn pinned_tree(q: &str, ts: i64) -> Expr {
        let mut e = parse(q).unwrap();
        let mut unsafe_call = false;
        pin(&mut e, at_time(ts), false, &mut unsafe_call);
        e
    }

    /// The printed `@` variant parses back to exactly the pinned tree.
    fn round_trip(q: &str, ts: i64) {
        let printed =
            at_modifier_query(&parse(q).unwrap(), ts).unwrap_or_else(|| panic!("{q}: no variant"));
        let back = parse(&printed).unwrap_or_else(|e| panic!("{q} printed as {printed}: {e}"));
        assert_eq!(back, pinned_tree(q, ts), "{q} printed as {printed}");
    }

    #[test]
    fn at_variants_round_trip() {
        for q in [
            "foo",
            "foo{a=\"b\", c!~\"x.*\"}",
            "{__name__=~\"foo|bar\"}",
            "{\"foo.bar\"}",
            "foo @ start()",
            "foo @ 10",
            "rate(foo[5m] offset -1m)",
            "sum by (a, b) (foo) / ignoring (c) group_left (d) bar",
            "count without () (foo)",
            "-a ^ 2",
            "1 - -1",
            "topk(2, foo) or on () vector(1)",
            "max_over_time(rate(foo[1m])[5m:1m] offset 1h)",
            "sum_over_time((foo @ 100)[5m:])",
            "label_replace(foo, \"dst\", \"$1\", \"src\", \"(.*)\\\\n\")",
            "foo == bool 2",
            "quantile(0.9, foo)",
            "count_values(\"v\", foo)",
            "foo[1h30m]",
        ] {
            round_trip(q, 3_000_500);
            round_trip(q, -25_000);
            round_trip(q, 0);
        }
    }

    #[test]
    fn pinning_follows_promqltest() {
        let at = |q: &str| at_modifier_query(&parse(q).unwrap(), 60_000);
        assert_eq!(at("foo").as_deref(), Some("foo @ 60.000"));
        assert_eq!(at("foo @ start()").as_deref(), Some("foo @ 60.000"));
        assert_eq!(at("foo @ 5").as_deref(), Some("foo @ 5.000"));
        assert_eq!(
            at("rate(foo[1m])[5m:1m]").as_deref(),
            Some("rate(foo[1m])[5m:1m] @ 60.000")
        );
        assert_eq!(
            at("(foo @ 1)[5m:1m]").as_deref(),
            Some("(foo @ 1.000)[5m:1m] @ 60.000")
        );
        assert_eq!(
            at_modifier_query(&parse("foo").unwrap(), -1500).as_deref(),
            Some("foo @ -1.500")
        );
        assert_eq!(at("time() - foo"), None);
        assert_eq!(at("timestamp(foo)"), None);
        assert_eq!(at("start()"), None);
        // Calls inside a subquery are not inspected.
        assert!(at("max_over_time(vector(time())[5m:1m])").is_some());
    }

    #[test]
    fn selectors_match_series() {
        let l = strata_model::Labels::from_pairs([("__name__", "h"), ("job", "a")]).unwrap();
        let sel = |q: &str| {
            let e = parse(q).unwrap();
            selectors(&e).iter().any(|vs| selector_matches(vs, &l))
        };
        assert!(sel("h"));
        assert!(sel("rate(h{job=~\"a|b\"}[5m])"));
        assert!(sel("{job=\"a\"}"));
        assert!(sel("{__name__=~\"h.*\"}"));
        assert!(sel("sum(x) + h"));
        assert!(!sel("h_bucket"));
        assert!(!sel("h{job=\"b\"}"));
        assert!(!sel("h{instance!=\"\"}"));
    }

    /// Every query of the Prometheus scripts that promql-parser reads prints back to the same
    /// tree once pinned.
    #[test]
    fn shared_script_queries_round_trip() {
        // As tests/conformance.rs: `STRATA_PROMQL_TESTS`, else beside the repository.
        let dir = std::env::var_os("STRATA_PROMQL_TESTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../../shared/promql-tests")
            });
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("cannot read {}", dir.display());
        };
        let mut checked = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "test") {
                continue;
            }
            let script = crate::script::parse_script(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for cmd in &script.commands {
                let crate::script::Command::Eval(case) = cmd else {
                    continue;
                };
                let Ok(expr) = parse(&case.query) else {
                    continue;
                };
                if at_modifier_query(&expr, 1_234_567).is_some() {
                    round_trip(&case.query, 1_234_567);
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "only {checked} queries checked");
    }
}
