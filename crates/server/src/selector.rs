//! Series selectors in `match[]` parameters (`up{job=~"a|b"}`), parsed with PromQL's grammar.

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{parse, Expr};
use strata_model::{Matcher, METRIC_NAME};

/// Parses one selector into alternative matcher sets (more than one only with `or` inside the
/// braces); a series matches when it matches every matcher of any set.
pub fn parse_selector(s: &str) -> Result<Vec<Vec<Matcher>>, String> {
    let expr = parse(s).map_err(|e| format!("invalid series selector {s:?}: {e}"))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!(
            "invalid series selector {s:?}: expected a selector like metric{{label=\"value\"}}"
        ));
    };
    let convert = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, String> {
        let mut out: Vec<Matcher> = ms
            .iter()
            .map(|m| match &m.op {
                PMatchOp::Equal => Ok(Matcher::equal(&m.name, &m.value)),
                PMatchOp::NotEqual => Ok(Matcher::not_equal(&m.name, &m.value)),
                PMatchOp::Re(_) => {
                    Matcher::regex(&m.name, &m.value, false).map_err(|e| e.to_string())
                }
                PMatchOp::NotRe(_) => {
                    Matcher::regex(&m.name, &m.value, true).map_err(|e| e.to_string())
                }
            })
            .collect::<Result<_, _>>()?;
        if let Some(name) = &vs.name {
            if !out.iter().any(|m| m.name == METRIC_NAME) {
                out.push(Matcher::equal(METRIC_NAME, name));
            }
        }
        if out.iter().all(|m| m.matches_empty()) {
            return Err(format!(
                "invalid series selector {s:?}: match[] must contain at least one matcher that does not match the empty string"
            ));
        }
        Ok(out)
    };
    if vs.matchers.or_matchers.is_empty() {
        Ok(vec![convert(&vs.matchers.matchers)?])
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|set| convert(set))
            .collect()
    }
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
