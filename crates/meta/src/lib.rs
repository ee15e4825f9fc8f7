//! Strata's metadata database: what users configure through the API and expect to survive
//! restarts, kept through `sqlx` in SQLite (a file in the data directory, the default) or in
//! PostgreSQL (by URL, shared by several nodes). It holds the device rules
//! (`/api/v1/alert-rules`) and the device registry ([`registry`]). Each rule is stored as the
//! JSON its API takes, checked before it is stored.
//!
//! Queries are written once for both databases (sqlx's `Any` driver): `$n` placeholders in
//! order, `BIGINT` for integers, no `RETURNING`, no upserts.
//!
//! This crate does no networking and knows nothing of HTTP; it must not hold alert state (that
//! belongs to the shards and the rules manager).

pub mod registry;
pub mod shadow;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions};
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
    /// A device with this id exists already (in the tenant).
    #[error("device {0:?} exists already")]
    DeviceExists(String),
    /// No device with this id (in the tenant).
    #[error("no device {0:?}")]
    NoDevice(String),
    /// A value is not valid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// An update named a version other than the stored one.
    #[error(
        "version {given} is not the current version {current}: read the shadow again and retry"
    )]
    VersionConflict {
        /// The version the update named.
        given: i64,
        /// The stored one.
        current: i64,
    },
    /// The database URL is not one this store opens.
    #[error("metadata database URL {0}")]
    Url(String),
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
    pool: AnyPool,
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
    /// Opens (creating it if needed) the SQLite database file at `path`: WAL journal, full
    /// fsync on commit, so an acknowledged change survives a crash.
    pub async fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        // The URL keeps the file and the mode; the pragmas are set on each connection.
        MetaStore::connect(AnyConnectOptions::from_url(&opts.to_url_lossy())?).await
    }

    /// Opens the database at `url`: `postgres://user:password@host:port/db`, or
    /// `sqlite://path` (created if missing).
    pub async fn open_url(url: &str) -> Result<MetaStore, MetaError> {
        let parsed = url
            .parse::<sqlx::any::AnyConnectOptions>()
            .map_err(|e| MetaError::Url(format!("{url:?}: {e}")))?;
        match parsed.database_url.scheme() {
            "postgres" | "postgresql" => MetaStore::connect(parsed).await,
            "sqlite" => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                MetaStore::open(Path::new(path)).await
            }
            s => Err(MetaError::Url(format!(
                "{url:?}: scheme {s:?} is neither postgres:// nor sqlite://"
            ))),
        }
    }

    async fn connect(opts: AnyConnectOptions) -> Result<MetaStore, MetaError> {
        sqlx::any::install_default_drivers();
        let sqlite = opts.database_url.scheme() == "sqlite";
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL journal, full fsync on commit: an acknowledged change survives
                        // a crash.
                        for p in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(p).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS device_rules (
                rule_id TEXT PRIMARY KEY NOT NULL,
                spec TEXT NOT NULL,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL
            )",
            "CREATE TABLE IF NOT EXISTS versions (
                name TEXT PRIMARY KEY NOT NULL,
                version BIGINT NOT NULL
            )",
        ]
        .into_iter()
        .chain(registry::DDL.iter().copied())
        .chain(shadow::DDL.iter().copied())
        {
            sqlx::query(ddl).execute(&pool).await?;
        }
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
            sqlx::query_as("SELECT spec FROM device_rules WHERE rule_id = $1")
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
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT rule_id FROM device_rules WHERE rule_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let put = match (exists.is_some(), create_only) {
            (true, true) => return Err(MetaError::Exists(id.clone())),
            (true, false) => {
                sqlx::query(
                    "UPDATE device_rules SET spec = $1, updated_ms = $2 WHERE rule_id = $3",
                )
                .bind(&spec)
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                Put::Replaced
            }
            (false, _) => {
                sqlx::query("INSERT INTO device_rules (rule_id, spec, created_ms, updated_ms) VALUES ($1, $2, $3, $4)")
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
        let r = sqlx::query("DELETE FROM device_rules WHERE rule_id = $1")
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
