//! Alert state kept on disk, so a restart (or SIGKILL) restores firing alerts as firing and
//! pending ones with their active time, instead of starting them over (Prometheus restores
//! only the active time, from `ALERTS_FOR_STATE`, and re-sends every alert).
//!
//! One file per rule group, rewritten after each evaluation (JSON in a [`crate::framed`] file:
//! a crash leaves the old state or the new); a damaged file is reported and ignored (the group
//! starts afresh, as Prometheus would).

use crate::group::GroupState;
use crate::rules::Rule;
use crate::state::{Alert, AlertState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use strata_model::Labels;

const MAGIC: &[u8; 8] = b"STRALRT\x01";

/// Why a saved state could not be written or read.
pub type SavedError = crate::framed::FramedError;

#[derive(Serialize, Deserialize)]
struct SavedGroup {
    file: String,
    group: String,
    rules: Vec<SavedRule>,
}

#[derive(Serialize, Deserialize)]
struct SavedRule {
    name: String,
    expr: String,
    alerts: Vec<SavedAlert>,
}

/// An alert as state files keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedAlert {
    labels: BTreeMap<String, String>,
    state: String,
    /// The value's bits (NaN and infinities survive).
    value: u64,
    active_at: i64,
    fired_at: Option<i64>,
    resolved_at: Option<i64>,
    keep_firing_since: Option<i64>,
    last_eval: i64,
    annotations: BTreeMap<String, String>,
}

/// The file holding the state of group `name` of rule file `file` in `dir`.
pub fn path_of(dir: &Path, file: &str, name: &str) -> PathBuf {
    dir.join(format!("{:016x}.alerts", group_hash(file, name)))
}

/// A stable hash of group `name` of rule file `file`.
pub fn group_hash(file: &str, name: &str) -> u64 {
    let mut key = Vec::with_capacity(file.len() + name.len() + 1);
    key.extend_from_slice(file.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&key)
}

/// The saved form of the alerts of `group` (group `name` of `file`), for [`write`].
pub fn encode(file: &str, name: &str, group: &GroupState) -> Vec<u8> {
    let rules = group
        .group()
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Rule::Alerting(a) => Some(SavedRule {
                name: a.alert.clone(),
                expr: a.expr.clone(),
                alerts: group.rule_state(i)?.alerts().map(saved_alert).collect(),
            }),
            Rule::Recording(_) => None,
        })
        .collect();
    serde_json::to_vec(&SavedGroup {
        file: file.to_string(),
        group: name.to_string(),
        rules,
    })
    .expect("alert state serializes")
}

/// Writes a state made by [`encode`] to `path`, durably.
pub fn write(path: &Path, body: &[u8]) -> Result<(), SavedError> {
    crate::framed::write(path, MAGIC, body)
}

/// Restores the alerts saved at `path` into `group`'s rules of the same name and expression;
/// returns how many alerts were restored (0 without a file).
pub fn restore(path: &Path, group: &mut GroupState) -> Result<usize, SavedError> {
    let Some(body) = crate::framed::read(path, MAGIC)? else {
        return Ok(0);
    };
    let saved: SavedGroup = serde_json::from_slice(&body).map_err(|e| SavedError::Damaged {
        path: path.to_path_buf(),
        reason: format!("bad JSON: {e}"),
    })?;
    let mut restored = 0;
    for rule in saved.rules {
        let at = group.group().rules.iter().position(
            |r| matches!(r, Rule::Alerting(a) if a.alert == rule.name && a.expr == rule.expr),
        );
        let Some(st) = at.and_then(|i| group.rule_state_mut(i)) else {
            continue;
        };
        let alerts: Vec<Alert> = rule.alerts.into_iter().filter_map(alert_of).collect();
        restored += alerts.len();
        st.restore(alerts);
    }
    Ok(restored)
}

fn saved_alert(a: &Alert) -> SavedAlert {
    SavedAlert {
        labels: a
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect(),
        state: a.state.as_str().to_string(),
        value: a.value.to_bits(),
        active_at: a.active_at,
        fired_at: a.fired_at,
        resolved_at: a.resolved_at,
        keep_firing_since: a.keep_firing_since,
        last_eval: a.last_eval,
        annotations: a.annotations.clone(),
    }
}

fn alert_of(s: SavedAlert) -> Option<Alert> {
    let state = match s.state.as_str() {
        "firing" => AlertState::Firing,
        "pending" => AlertState::Pending,
        "inactive" => AlertState::Inactive,
        _ => return None,
    };
    Some(Alert {
        labels: Labels::from_pairs(s.labels).ok()?,
        state,
        value: f64::from_bits(s.value),
        active_at: s.active_at,
        fired_at: s.fired_at,
        resolved_at: s.resolved_at,
        keep_firing_since: s.keep_firing_since,
        last_eval: s.last_eval,
        annotations: s.annotations,
    })
}

/// Serde for an optional alert inside state files (written as [`SavedAlert`]).
pub(crate) mod opt_alert {
    use super::{alert_of, saved_alert, SavedAlert};
    use crate::state::Alert;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<Alert>, s: S) -> Result<S::Ok, S::Error> {
        a.as_ref().map(saved_alert).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Alert>, D::Error> {
        Ok(Option::<SavedAlert>::deserialize(d)?.and_then(alert_of))
    }
}
