//! Strata's metadata database: what users configure through the API and expect to survive
//! restarts, kept in SQLite (a file in the data directory) through `sqlx`. So far it holds the
//! device rules (`/api/v1/alert-rules`); the device registry and desired shadow state will share
//! it. Each rule is stored as the JSON its API takes, checked before it is stored.
//!
//! This crate does no networking and knows nothing of HTTP; it must not hold alert state (that
//! belongs to the shards and the rules manager).

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use strata_alert::device::{DeviceRule, DeviceRuleSpec};

/// Errors of the metadata database.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database failed.
    #[error("metadata database: {0}")]
    Db(#[from] sqlx::Error),
    /// A rule with this id exists already.
    #[error("a rule with rule_id {0:?} exists already")]
    Exists(String),
    /// A stored rule no longer reads (written by another version, or edited by hand).
    #[error("stored rule {id:?} is unreadable: {reason}")]
    Unreadable {
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The metadata database.
#[derive(Clone)]
pub struct MetaStore {
    pool: SqlitePool,
}

/// Whether a put created a rule or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// It was new.
    Created,
    /// It replaced one with the same id.
    Replaced,
}

impl MetaStore {
    /// Opens (creating it if needed) the database file at `path`: WAL journal, full fsync on
    /// commit, so an acknowledged change survives a crash.
    pub async fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS device_rules (
                rule_id TEXT PRIMARY KEY NOT NULL,
                spec TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL
            )",
        )
        .execute(&pool)
        .await?;
        Ok(MetaStore { pool })
    }

    /// Every stored rule, by id.
    pub async fn rules(&self) -> Result<Vec<DeviceRuleSpec>, MetaError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT rule_id, spec FROM device_rules ORDER BY rule_id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, spec)| parse(id, &spec))
            .collect()
    }

    /// The rule `id`, if stored.
    pub async fn rule(&self, id: &str) -> Result<Option<DeviceRuleSpec>, MetaError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT spec FROM device_rules WHERE rule_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(spec,)| parse(id.to_string(), &spec)).transpose()
    }

    /// Stores a checked rule: with `create_only`, fails if its id exists; else replaces it.
    pub async fn put(
        &self,
        rule: &DeviceRule,
        create_only: bool,
        now_ms: i64,
    ) -> Result<Put, MetaError> {
        let spec = serde_json::to_string(&rule.spec).expect("a rule serializes");
        let id = &rule.spec.rule_id;
        let mut tx = self.pool.begin().await?;
        let exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM device_rules WHERE rule_id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let put = match (exists.is_some(), create_only) {
            (true, true) => return Err(MetaError::Exists(id.clone())),
            (true, false) => {
                sqlx::query("UPDATE device_rules SET spec = ?, updated_ms = ? WHERE rule_id = ?")
                    .bind(&spec)
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                Put::Replaced
            }
            (false, _) => {
                sqlx::query("INSERT INTO device_rules (rule_id, spec, created_ms, updated_ms) VALUES (?, ?, ?, ?)")
                    .bind(id)
                    .bind(&spec)
                    .bind(now_ms)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                Put::Created
            }
        };
        tx.commit().await?;
        Ok(put)
    }

    /// Deletes rule `id`; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, MetaError> {
        let r = sqlx::query("DELETE FROM device_rules WHERE rule_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Closes the database (pending writes are committed already).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse(id: String, spec: &str) -> Result<DeviceRuleSpec, MetaError> {
    serde_json::from_str(spec).map_err(|e| MetaError::Unreadable {
        id,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, threshold: f64) -> DeviceRule {
        DeviceRule::new(
            serde_json::from_value(serde_json::json!({
                "rule_id": id, "device_id": "d1", "metric": "temp", "operator": ">",
                "threshold": threshold,
            }))
            .unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn rules_are_stored_replaced_deleted_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let db = MetaStore::open(&path).await.unwrap();
        assert_eq!(
            db.put(&rule("a", 80.0), true, 1).await.unwrap(),
            Put::Created
        );
        assert!(matches!(
            db.put(&rule("a", 81.0), true, 2).await,
            Err(MetaError::Exists(_))
        ));
        assert_eq!(
            db.put(&rule("a", 90.0), false, 3).await.unwrap(),
            Put::Replaced
        );
        db.put(&rule("b", 1.0), true, 4).await.unwrap();
        db.close().await;
        let db = MetaStore::open(&path).await.unwrap();
        let all = db.rules().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].threshold, Some(90.0));
        assert_eq!(db.rule("b").await.unwrap().unwrap().rule_id, "b");
        assert!(db.delete("b").await.unwrap());
        assert!(!db.delete("b").await.unwrap());
        assert!(db.rule("b").await.unwrap().is_none());
    }
}
