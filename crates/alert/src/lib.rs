//! Strata's alerting. So far: Prometheus rule files, read and checked as Prometheus and
//! `promtool check rules` read them ([`rules`]), with the Go-template subset their labels and
//! annotations use, checked and expanded ([`template`]), and the states of an alerting rule's
//! alerts from one evaluation to the next ([`state`]); one evaluation of a group through a
//! query function ([`group`]); groups run on their schedule by the [`manager`], reading through
//! a [`query::Querier`] and writing through the model's `Appender`, with alert state kept on
//! disk ([`saved`]); alerts leave through [`notify`]'s notifiers and their durable outbox. Device
//! rules and anomaly detection come next (issue 16).

pub mod device;
pub mod framed;
pub mod group;
pub mod manager;
pub mod notify;
pub mod query;
pub mod rules;
pub mod saved;
pub mod state;
pub mod template;
pub mod unittest;

pub use rules::{parse_rule_file, AlertingRule, Group, RecordingRule, Rule, RuleError};
