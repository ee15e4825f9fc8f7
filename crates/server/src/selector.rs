//! Series selectors in `match[]` parameters (`up{job=~"a|b"}`), parsed with PromQL's grammar.

use promql_parser::parser::Expr;
use strata_model::Matcher;

/// Parses one selector into alternative matcher sets (more than one only with `or` inside the
/// braces); a series matches when it matches every matcher of any set.
pub fn parse_selector(s: &str) -> Result<Vec<Vec<Matcher>>, String> {
    // Within the engine's default length and depth limits: a selector nested 5,000 deep must
    // not overflow the stack of the async worker parsing it.
    let expr =
        strata_promql::parse(s).map_err(|e| format!("invalid series selector {s:?}: {e}"))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!(
            "invalid series selector {s:?}: expected a selector like metric{{label=\"value\"}}"
        ));
    };
    let sets = strata_promql::matcher_sets(&vs)
        .map_err(|e| format!("invalid series selector {s:?}: {e}"))?;
    if sets.iter().any(|set| set.iter().all(|m| m.matches_empty())) {
        return Err(format!(
            "invalid series selector {s:?}: match[] must contain at least one matcher that does not match the empty string"
        ));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let sets = parse_selector(r#"up{job=~"a|b", x!="y"}"#).unwrap();
        assert_eq!(sets.len(), 1);
        let names: Vec<String> = sets[0].iter().map(|m| m.to_string()).collect();
        assert!(names.contains(&r#"__name__="up""#.to_string()), "{names:?}");
        assert!(names.contains(&r#"job=~"a|b""#.to_string()));
        assert!(parse_selector("{x=\"\"}").is_err());
        assert!(parse_selector("sum(up)")
            .unwrap_err()
            .contains("expected a selector"));
        assert!(parse_selector("up{").is_err());
    }
}
