use crate::key::SeriesKey;
use crate::LabelError;
use std::fmt;

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// The metrics anomaly detectors write for each window they score. Like series with a `:` in
/// their name, they are derived: written at windows already final, they are not rolled up
/// again (each would otherwise be a late correction of its own window).
pub const ANOMALY_OUTPUTS: [&str; 4] = ["anomaly_score", "yhat", "yhat_lower", "yhat_upper"];

/// Whether a metric name (as bytes) is one of the [`ANOMALY_OUTPUTS`].
pub fn is_anomaly_output(name: &[u8]) -> bool {
    ANOMALY_OUTPUTS.iter().any(|o| o.as_bytes() == name)
}

/// One label pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// Label name.
    pub name: String,
    /// Label value (never empty in a stored series: an empty value means "no such label").
    pub value: String,
}

/// A series' label set: sorted by name, names unique, no empty values.
///
/// This owned form is for APIs and query results; the ingest hot path works on [`SeriesKey`]
/// bytes instead.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from pairs in any order; empty values are dropped (as in Prometheus).
    /// Fails on a duplicate name.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Labels, LabelError> {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .filter(|l| !l.value.is_empty())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = v.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(LabelError::DuplicateName(w[0].name.clone()));
        }
        Ok(Labels(v))
    }

    /// Wraps labels already sorted by unique name with no empty value (checked in debug builds).
    pub fn from_sorted(v: Vec<Label>) -> Labels {
        debug_assert!(v.windows(2).all(|w| w[0].name < w[1].name));
        Labels(v)
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The metric name, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// The labels in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical key bytes of this label set.
    pub fn key(&self) -> SeriesKey {
        SeriesKey::from_sorted_pairs(
            self.0
                .iter()
                .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
        )
    }

    /// Sets (or with an empty value removes) a label.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].value = value.to_string(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(
                i,
                Label {
                    name: name.into(),
                    value: value.into(),
                },
            ),
        }
    }

    /// Consumes the set into its sorted labels.
    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Prometheus notation: `name{a="b", c="d"}`.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.metric_name() {
            f.write_str(n)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for l in self.0.iter().filter(|l| l.name != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

/// True when `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn valid_label_name(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

/// True when `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn valid_metric_name(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_' || *first == b':')
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b':')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_displayed() {
        let l =
            Labels::from_pairs([("b", "2"), ("__name__", "up"), ("a", "1"), ("e", "")]).unwrap();
        assert_eq!(l.to_string(), r#"up{a="1", b="2"}"#);
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("e"), None);
        assert!(Labels::from_pairs([("a", "1"), ("a", "2")]).is_err());
    }

    #[test]
    fn name_rules() {
        assert!(valid_label_name(b"_a1"));
        assert!(!valid_label_name(b"1a"));
        assert!(!valid_label_name(b"a:b"));
        assert!(valid_metric_name(b"a:b_c"));
        assert!(!valid_metric_name(b""));
    }
}
