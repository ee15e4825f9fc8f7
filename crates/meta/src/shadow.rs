//! Desired device state (the `desired` half of a device shadow), set by users and versioned:
//! an update naming a version other than the stored one is refused, so two writers never
//! silently overwrite each other (optimistic concurrency, as AWS IoT shadows do).

use crate::{MetaError, MetaStore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Tables of desired state.
pub(crate) const DDL: &[&str] = &["CREATE TABLE IF NOT EXISTS shadows (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        desired TEXT NOT NULL,
        version BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, id)
    )"];

/// Most fields of a desired state.
pub const MAX_FIELDS: usize = 100;
/// Largest desired state, as JSON bytes.
pub const MAX_BYTES: usize = 16 << 10;

/// One desired field: its value and when it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// The value (any JSON but null).
    pub value: Value,
    /// When it was set (ms since the epoch).
    pub timestamp: i64,
}

/// A device's desired state and its version (0: never set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// The fields, by name.
    pub fields: std::collections::BTreeMap<String, Field>,
    /// Bumped by every accepted update.
    pub version: i64,
}

impl MetaStore {
    /// The desired state of device `id` of `tenant`.
    pub async fn desired(&self, tenant: &str, id: &str) -> Result<Desired, MetaError> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT desired, version FROM shadows WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => Ok(Desired::default()),
            Some((doc, version)) => Ok(Desired {
                fields: serde_json::from_str(&doc).map_err(|e| MetaError::Unreadable {
                    id: format!("shadow {id}"),
                    reason: e.to_string(),
                })?,
                version,
            }),
        }
    }

    /// Merges `patch` into the desired state (a `null` removes its field), if `version` is
    /// the stored one (or not given); returns the new state.
    pub async fn update_desired(
        &self,
        tenant: &str,
        id: &str,
        patch: &Map<String, Value>,
        version: Option<i64>,
        now_ms: i64,
    ) -> Result<Desired, MetaError> {
        for k in patch.keys() {
            if k.is_empty() || k.len() > 128 || k.chars().any(char::is_control) {
                return Err(MetaError::Invalid(format!(
                    "desired field name {k:?} must be 1 to 128 bytes without control characters"
                )));
            }
        }
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT desired, version FROM shadows WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let mut current = match &row {
            None => Desired::default(),
            Some((doc, v)) => Desired {
                fields: serde_json::from_str(doc).map_err(|e| MetaError::Unreadable {
                    id: format!("shadow {id}"),
                    reason: e.to_string(),
                })?,
                version: *v,
            },
        };
        if let Some(v) = version {
            if v != current.version {
                return Err(MetaError::VersionConflict {
                    given: v,
                    current: current.version,
                });
            }
        }
        for (k, v) in patch {
            if v.is_null() {
                current.fields.remove(k);
            } else {
                current.fields.insert(
                    k.clone(),
                    Field {
                        value: v.clone(),
                        timestamp: now_ms,
                    },
                );
            }
        }
        if current.fields.len() > MAX_FIELDS {
            return Err(MetaError::Invalid(format!(
                "the desired state would have {} fields: at most {MAX_FIELDS}",
                current.fields.len()
            )));
        }
        let doc = serde_json::to_string(&current.fields).expect("serializes");
        if doc.len() > MAX_BYTES {
            return Err(MetaError::Invalid(format!(
                "the desired state would be {} bytes of JSON: at most {MAX_BYTES}",
                doc.len()
            )));
        }
        current.version += 1;
        // The version in the condition makes a concurrent writer's update fail, not merge.
        let r = if row.is_some() {
            sqlx::query("UPDATE shadows SET desired = $1, version = $2, updated_ms = $3 WHERE tenant = $4 AND id = $5 AND version = $6")
                .bind(&doc)
                .bind(current.version)
                .bind(now_ms)
                .bind(tenant)
                .bind(id)
                .bind(current.version - 1)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("INSERT INTO shadows (tenant, id, desired, version, updated_ms) VALUES ($1, $2, $3, $4, $5)")
                .bind(tenant)
                .bind(id)
                .bind(&doc)
                .bind(current.version)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
        };
        if r.rows_affected() != 1 {
            return Err(MetaError::VersionConflict {
                given: version.unwrap_or(current.version - 1),
                current: current.version,
            });
        }
        tx.commit().await?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn desired_state_merges_and_refuses_stale_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaStore::open(&dir.path().join("meta.db")).await.unwrap();
        assert_eq!(db.desired("t", "d1").await.unwrap(), Desired::default());
        let patch = |v: Value| v.as_object().unwrap().clone();
        let d = db
            .update_desired(
                "t",
                "d1",
                &patch(serde_json::json!({"setpoint": 21, "mode": "eco"})),
                Some(0),
                5,
            )
            .await
            .unwrap();
        assert_eq!(d.version, 1);
        let e = db
            .update_desired(
                "t",
                "d1",
                &patch(serde_json::json!({"setpoint": 22})),
                Some(0),
                6,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                MetaError::VersionConflict {
                    given: 0,
                    current: 1
                }
            ),
            "{e}"
        );
        let d = db
            .update_desired(
                "t",
                "d1",
                &patch(serde_json::json!({"mode": null, "setpoint": 22})),
                None,
                7,
            )
            .await
            .unwrap();
        assert_eq!(d.version, 2);
        assert_eq!(d.fields.len(), 1);
        assert_eq!(
            d.fields["setpoint"],
            Field {
                value: 22.into(),
                timestamp: 7
            }
        );
        assert_eq!(db.desired("t", "d1").await.unwrap(), d);
        assert_eq!(
            db.desired("u", "d1").await.unwrap().version,
            0,
            "tenants apart"
        );
        let many: Map<String, Value> = (0..101)
            .map(|i| (format!("f{i}"), Value::from(i)))
            .collect();
        assert!(db
            .update_desired("t", "d1", &many, None, 8)
            .await
            .unwrap_err()
            .to_string()
            .contains("at most 100"));
        assert!(db
            .update_desired("t", "d1", &patch(serde_json::json!({"": 1})), None, 8)
            .await
            .is_err());
    }
}
