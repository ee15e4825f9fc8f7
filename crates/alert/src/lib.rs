//! Strata's alerting. So far: Prometheus rule files, read and checked as Prometheus and
//! `promtool check rules` read them ([`rules`]), with the Go-template subset their labels and
//! annotations use, checked and expanded ([`template`]), and the states of an alerting rule's
//! alerts from one evaluation to the next ([`state`]); one evaluation of a group through a
//! query function ([`group`]). Running groups on a schedule inside the server, durable alert
//! state, the rules and alerts APIs, device rules and notifiers come next (issue 16).

pub mod group;
pub mod rules;
pub mod state;
pub mod template;

pub use rules::{parse_rule_file, AlertingRule, Group, RecordingRule, Rule, RuleError};
