//! Alert state kept on disk, so a restart (or SIGKILL) restores firing alerts as firing and
//! pending ones with their active time, instead of starting them over (Prometheus restores
//! only the active time, from `ALERTS_FOR_STATE`, and re-sends every alert).
//!
//! One file per rule group, rewritten after each evaluation: a magic, the body's length and
//! CRC, then JSON. Written to a temporary file, fsynced and renamed, so a crash leaves the old
//! state or the new, never a mix; a damaged file is reported and ignored (the group starts
//! afresh, as Prometheus would).

use crate::group::GroupState;
use crate::rules::Rule;
use crate::state::{Alert, AlertState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use strata_model::Labels;

const MAGIC: &[u8; 8] = b"STRALRT\x01";

/// Why a saved state could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The file system failed.
    #[error("alert state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a state file or is damaged.
    #[error("alert state {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

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

#[derive(Serialize, Deserialize)]
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
    let mut key = Vec::with_capacity(file.len() + name.len() + 1);
    key.extend_from_slice(file.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    dir.join(format!("{:016x}.alerts", xxhash_rust::xxh3::xxh3_64(&key)))
}

/// Writes the alerts of `group` (group `name` of `file`) to `path`, durably.
pub fn save(path: &Path, file: &str, name: &str, group: &GroupState) -> Result<(), SavedError> {
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
    let body = serde_json::to_vec(&SavedGroup {
        file: file.to_string(),
        group: name.to_string(),
        rules,
    })
    .expect("alert state serializes");
    let io = |source| SavedError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&(body.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&crc32fast::hash(&body).to_le_bytes())
        .map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Restores the alerts saved at `path` into `group`'s rules of the same name and expression;
/// returns how many alerts were restored (0 without a file).
pub fn restore(path: &Path, group: &mut GroupState) -> Result<usize, SavedError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(SavedError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let damaged = |reason: &str| SavedError::Damaged {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(damaged("not an alert state file"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let body = &bytes[20..];
    if body.len() as u64 != len || crc32fast::hash(body) != crc {
        return Err(damaged("length or checksum mismatch"));
    }
    let saved: SavedGroup =
        serde_json::from_slice(body).map_err(|e| damaged(&format!("bad JSON: {e}")))?;
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
