use regex::Regex;
use std::fmt;
use thiserror::Error;

/// How a [`Matcher`] compares a label value.
#[derive(Clone)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`, fully anchored as in Prometheus.
    Regex(Regex),
    /// `!~`, fully anchored.
    NotRegex(Regex),
}

/// A label matcher as in PromQL: `name op value`. A missing label matches as the empty string.
#[derive(Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// The literal value or the regex source.
    pub value: String,
}

/// A regex that does not compile.
#[derive(Debug, Error)]
#[error("invalid regular expression {pattern:?} in matcher for label {name:?}: {reason}")]
pub struct MatcherError {
    /// Label name.
    pub name: String,
    /// The regex as given.
    pub pattern: String,
    /// The compiler's message.
    pub reason: String,
}

impl Matcher {
    /// `name = value`.
    pub fn equal(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
        }
    }

    /// `name != value`.
    pub fn not_equal(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.into(),
            op: MatchOp::NotEqual,
            value: value.into(),
        }
    }

    /// `name =~ pattern` (`negate`: `!~`), anchored at both ends.
    pub fn regex(name: &str, pattern: &str, negate: bool) -> Result<Matcher, MatcherError> {
        let re = Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| MatcherError {
            name: name.into(),
            pattern: pattern.into(),
            reason: e.to_string(),
        })?;
        let op = if negate {
            MatchOp::NotRegex(re)
        } else {
            MatchOp::Regex(re)
        };
        Ok(Matcher {
            name: name.into(),
            op,
            value: pattern.into(),
        })
    }

    /// True when `value` (empty for a missing label) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }

    /// True when the series with `key` passes every matcher (a missing label is empty).
    pub fn all_match(matchers: &[Matcher], key: crate::SeriesKeyRef<'_>) -> bool {
        matchers.iter().all(|m| {
            let v = key.get(m.name.as_bytes()).unwrap_or_default();
            // Keys hold valid UTF-8 (checked when built).
            m.matches(std::str::from_utf8(v).unwrap_or_default())
        })
    }

    /// True when the matcher also selects series that lack the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For `=~` with a plain alternation of literals (`a|b|c`), the literals; lets an index
    /// answer with a few exact lookups instead of scanning every value.
    pub fn literal_alternatives(&self) -> Option<Vec<&str>> {
        match self.op {
            MatchOp::Regex(_) => {
                let special = |c: char| "\\.+*?()[]{}^$".contains(c);
                (!self.value.contains(special)).then(|| self.value.split('|').collect())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex(_) => "=~",
            MatchOp::NotRegex(_) => "!~",
        };
        write!(f, "{}{}{:?}", self.name, op, self.value)
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantics() {
        assert!(Matcher::equal("a", "").matches(""));
        assert!(Matcher::regex("a", "b|c", false).unwrap().matches("c"));
        assert!(!Matcher::regex("a", "b", false).unwrap().matches("ab"));
        assert!(Matcher::regex("a", "b", true).unwrap().matches("ab"));
        assert!(Matcher::regex("a", ".*", false).unwrap().matches_empty());
        assert_eq!(
            Matcher::regex("a", "x|y", false)
                .unwrap()
                .literal_alternatives(),
            Some(vec!["x", "y"])
        );
        assert!(Matcher::regex("a", "x.*", false)
            .unwrap()
            .literal_alternatives()
            .is_none());
        assert!(Matcher::regex("a", "(", false).is_err());
    }
}
