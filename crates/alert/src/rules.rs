//! Prometheus rule files, unchanged: `groups` of recording and alerting rules, read strictly
//! (an unknown field is an error, as Prometheus' strict YAML decoding makes it) and checked as
//! `promtool check rules` checks them: group names present and unique in a file, exactly one of
//! `record` and `alert`, an expression that parses, a recording rule's name a metric name and
//! without `for`, `keep_firing_for` or annotations, label names valid (and never `__name__`),
//! label and annotation templates that parse. Every problem of a file is reported, each naming
//! its group, rule and field.

use crate::template;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A rule group, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Unique within its file.
    pub name: String,
    /// How often the group is evaluated, ms (`None`: the global evaluation interval).
    pub interval_ms: Option<i64>,
    /// How far behind the evaluation time its queries look, ms (`None`: the global default).
    pub query_offset_ms: Option<i64>,
    /// At most this many series an alerting rule may fire or a recording rule write (0: no
    /// limit).
    pub limit: u64,
    /// Labels added to every rule's output, before the rule's own labels.
    pub labels: BTreeMap<String, String>,
    /// In file order (evaluation order).
    pub rules: Vec<Rule>,
}

/// A rule of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Writes its expression's result as series named `record`.
    Recording(RecordingRule),
    /// Fires alerts while its expression returns series.
    Alerting(AlertingRule),
}

/// A recording rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingRule {
    /// The output series' metric name.
    pub record: String,
    /// PromQL.
    pub expr: String,
    /// Set on (or override) the output series' labels.
    pub labels: BTreeMap<String, String>,
}

/// An alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertingRule {
    /// The alert's name (its `alertname` label).
    pub alert: String,
    /// PromQL: every series it returns is an active alert.
    pub expr: String,
    /// How long an alert is pending before it fires, ms.
    pub for_ms: i64,
    /// How long a firing alert keeps firing after its condition stops, ms.
    pub keep_firing_for_ms: i64,
    /// Templates of labels added to each alert.
    pub labels: BTreeMap<String, String>,
    /// Templates of annotations of each alert.
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    /// Its PromQL expression.
    pub fn expr(&self) -> &str {
        match self {
            Rule::Recording(r) => &r.expr,
            Rule::Alerting(a) => &a.expr,
        }
    }

    /// The rule's name: `record` or `alert`.
    pub fn name(&self) -> &str {
        match self {
            Rule::Recording(r) => &r.record,
            Rule::Alerting(a) => &a.alert,
        }
    }
}

/// A problem in a rule file, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", place(.group, .rule))]
pub struct RuleError {
    /// The group's name, when the problem is in one.
    pub group: Option<String>,
    /// The rule's position in its group (1-based) and name, when the problem is in one.
    pub rule: Option<(usize, String)>,
    /// What is wrong.
    pub message: String,
}

fn place(group: &Option<String>, rule: &Option<(usize, String)>) -> String {
    match (group, rule) {
        (Some(g), Some((i, n))) => format!("group {g:?}, rule {i}, {n:?}: "),
        (Some(g), None) => format!("group {g:?}: "),
        _ => String::new(),
    }
}

/// The file as written (see [`parse_rule_file`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    groups: Vec<GroupText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupText {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    query_offset: Option<String>,
    #[serde(default)]
    limit: u64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    rules: Vec<RuleText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    record: Option<String>,
    alert: Option<String>,
    expr: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads and checks a rule file's text: its groups, or every problem found.
pub fn parse_rule_file(text: &str) -> Result<Vec<Group>, Vec<RuleError>> {
    let file: FileText = serde_saphyr::from_str(text).map_err(|e| {
        vec![RuleError {
            group: None,
            rule: None,
            message: format!("not a rule file: {e}"),
        }]
    })?;
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for g in file.groups {
        let at = |message: String| RuleError {
            group: Some(g.name.clone()),
            rule: None,
            message,
        };
        if g.name.is_empty() {
            errors.push(at("a group needs a name".into()));
        } else if !seen.insert(g.name.clone()) {
            errors.push(at("the group name is repeated in the same file".into()));
        }
        let interval_ms = duration(&g.interval, "interval").map_err(|m| errors.push(at(m)));
        let query_offset_ms =
            duration(&g.query_offset, "query_offset").map_err(|m| errors.push(at(m)));
        for name in g.labels.keys() {
            if let Err(m) = label_name(name) {
                errors.push(at(m));
            }
        }
        let mut rules = Vec::new();
        for (i, r) in g.rules.into_iter().enumerate() {
            let name = r.record.clone().or(r.alert.clone()).unwrap_or_default();
            let place = (i + 1, name);
            match check_rule(r) {
                Ok(rule) => rules.push(rule),
                Err(ms) => errors.extend(ms.into_iter().map(|message| RuleError {
                    group: Some(g.name.clone()),
                    rule: Some(place.clone()),
                    message,
                })),
            }
        }
        if let (Ok(interval_ms), Ok(query_offset_ms)) = (interval_ms, query_offset_ms) {
            groups.push(Group {
                name: g.name,
                interval_ms,
                query_offset_ms,
                limit: g.limit,
                labels: g.labels,
                rules,
            });
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

/// A rule's checks; every problem found.
fn check_rule(r: RuleText) -> Result<Rule, Vec<String>> {
    let mut errors = Vec::new();
    let expr = match r.expr.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push("field 'expr' must be set in rule".to_string());
            String::new()
        }
        Some(e) => {
            if let Err(msg) = promql_parser::parser::parse(e) {
                errors.push(format!("could not parse expression: {msg}"));
            }
            e.to_string()
        }
    };
    for name in r.labels.keys() {
        if let Err(m) = label_name(name) {
            errors.push(m);
        }
    }
    let rule = match (r.record, r.alert) {
        (Some(_), Some(_)) => {
            errors.push("only one of 'record' and 'alert' must be set".into());
            None
        }
        (None, None) => {
            errors.push("one of 'record' or 'alert' must be set".into());
            None
        }
        (Some(record), None) => {
            if !valid_metric_name(&record) {
                errors.push(format!("invalid recording rule name: {record}"));
            }
            for (field, set) in [
                ("for", r.for_.is_some()),
                ("keep_firing_for", r.keep_firing_for.is_some()),
                ("annotations", !r.annotations.is_empty()),
            ] {
                if set {
                    errors.push(format!("invalid field '{field}' in recording rule"));
                }
            }
            Some(Rule::Recording(RecordingRule {
                record,
                expr,
                labels: r.labels,
            }))
        }
        (None, Some(alert)) => {
            if alert.is_empty() {
                errors.push("an alerting rule needs a name".into());
            }
            for (what, map) in [("label", &r.labels), ("annotation", &r.annotations)] {
                for (k, v) in map {
                    if what == "annotation" && !valid_label_name(k) {
                        errors.push(format!("invalid annotation name: {k:?}"));
                    }
                    if let Err(e) = template::check(v) {
                        errors.push(format!("{what} {k:?}: {e}"));
                    }
                }
            }
            let for_ms = duration(&r.for_, "for").map_err(|m| errors.push(m));
            let keep = duration(&r.keep_firing_for, "keep_firing_for").map_err(|m| errors.push(m));
            match (for_ms, keep) {
                (Ok(f), Ok(k)) => Some(Rule::Alerting(AlertingRule {
                    alert,
                    expr,
                    for_ms: f.unwrap_or(0),
                    keep_firing_for_ms: k.unwrap_or(0),
                    labels: r.labels,
                    annotations: r.annotations,
                })),
                _ => None,
            }
        }
    };
    match rule {
        Some(rule) if errors.is_empty() => Ok(rule),
        _ => Err(errors),
    }
}

/// A Prometheus duration field, ms.
fn duration(v: &Option<String>, field: &str) -> Result<Option<i64>, String> {
    match v {
        None => Ok(None),
        Some(s) => strata_model::time::parse_duration_ms(s)
            .map(Some)
            .ok_or_else(|| format!("invalid duration in '{field}': {s:?}")),
    }
}

/// A label a rule may set: a valid name, and not the metric name.
fn label_name(name: &str) -> Result<(), String> {
    if name == "__name__" {
        Err("invalid label name: __name__ (a rule cannot set the metric name)".into())
    } else if !valid_label_name(name) {
        Err(format!("invalid label name: {name:?}"))
    } else {
        Ok(())
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, as Prometheus' legacy label names (what rule files use).
fn valid_label_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_metric_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}
