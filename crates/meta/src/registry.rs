//! The device registry: what each device is (type, model, firmware, site, region, owner…),
//! per tenant. A device is stored as the JSON its API takes, beside the columns lists filter on,
//! and every change bumps the registry's version (in the same transaction), so caches on every
//! node see it.

use crate::{MetaError, MetaStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tables and indexes of the registry.
pub(crate) const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS devices (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        site TEXT NOT NULL,
        dtype TEXT NOT NULL,
        region TEXT NOT NULL,
        model TEXT NOT NULL,
        active BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, id)
    )",
    "CREATE INDEX IF NOT EXISTS devices_by_site ON devices (tenant, site, id)",
    "CREATE INDEX IF NOT EXISTS devices_by_type ON devices (tenant, dtype, id)",
];

/// Longest device id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest value of a field or label, in bytes.
pub const MAX_VALUE_LEN: usize = 1024;
/// Most free labels of a device.
pub const MAX_LABELS: usize = 64;

/// One registered device, as `/api/v1/registry/devices` takes and gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Its id: the `device` label of its series.
    pub id: String,
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its type (`boiler`, `gateway`…).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Its model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Its firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// The site it is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The region of the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where it is (free form: a room, coordinates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Who is responsible for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When it was provisioned: an RFC 3339 date (`2026-11-02`) or time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<String>,
    /// Whether it is in service (default true).
    #[serde(default = "yes")]
    pub active: bool,
    /// How often it reports: a duration (`10s`, `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_interval: Option<String>,
    /// Free labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl Device {
    /// Checks every field; the error names the field and what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return Err(format!(
                "id must be 1 to {MAX_ID_LEN} bytes, got {}",
                self.id.len()
            ));
        }
        if self.id.chars().any(char::is_control) {
            return Err(format!("id {:?} holds control characters", self.id));
        }
        for (field, v) in self.fields() {
            if let Some(v) = v {
                if v.len() > MAX_VALUE_LEN {
                    return Err(format!(
                        "{field} is {} bytes: at most {MAX_VALUE_LEN}",
                        v.len()
                    ));
                }
            }
        }
        if let Some(p) = &self.provisioned {
            let ok = chrono::DateTime::parse_from_rfc3339(p).is_ok()
                || chrono::NaiveDate::parse_from_str(p, "%Y-%m-%d").is_ok();
            if !ok {
                return Err(format!(
                    "provisioned {p:?} is not an RFC 3339 date (2026-11-02) or time"
                ));
            }
        }
        if let Some(i) = &self.expected_interval {
            match strata_model::time::parse_duration_ms(i) {
                Some(ms) if ms > 0 => {}
                _ => {
                    return Err(format!(
                        "expected_interval {i:?} is not a positive duration (10s, 5m)"
                    ))
                }
            }
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "{} labels: at most {MAX_LABELS}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            let valid = k.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
            if !valid || k.is_empty() || k.starts_with("__") || k == "device" {
                return Err(format!(
                    "label name {k:?} must match [a-zA-Z_][a-zA-Z0-9_]*, not start with __ and not be \"device\""
                ));
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(format!(
                    "labels.{k} is {} bytes: at most {MAX_VALUE_LEN}",
                    v.len()
                ));
            }
        }
        Ok(())
    }

    /// The named fields, as enrichment and filters name them.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 9] {
        [
            ("name", self.name.as_deref()),
            ("type", self.device_type.as_deref()),
            ("model", self.model.as_deref()),
            ("firmware", self.firmware.as_deref()),
            ("site", self.site.as_deref()),
            ("region", self.region.as_deref()),
            ("location", self.location.as_deref()),
            ("owner", self.owner.as_deref()),
            ("provisioned", self.provisioned.as_deref()),
        ]
    }

    /// The value of field or free label `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields()
            .into_iter()
            .find(|(f, _)| *f == name)
            .and_then(|(_, v)| v)
            .or_else(|| self.labels.get(name).map(String::as_str))
    }

    /// The expected reporting interval, in milliseconds.
    pub fn interval_ms(&self) -> Option<i64> {
        self.expected_interval
            .as_deref()
            .and_then(strata_model::time::parse_duration_ms)
    }
}

/// What a list selects: every field set must be equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Site.
    pub site: Option<String>,
    /// Type.
    pub device_type: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Active or not.
    pub active: Option<bool>,
}

/// How a put treats an existing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fails if it exists.
    Create,
    /// Fails unless it exists.
    Update,
    /// Either.
    Upsert,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The devices, by id.
    pub devices: Vec<Device>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<String>,
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

impl MetaStore {
    /// Stores `device` of `tenant` (checked first); returns whether it was new.
    pub async fn put_device(
        &self,
        tenant: &str,
        device: &Device,
        mode: PutMode,
        now_ms: i64,
    ) -> Result<bool, MetaError> {
        device.check().map_err(MetaError::Invalid)?;
        let mut tx = self.pool.begin().await?;
        let created = put_in(&mut tx, tenant, device, mode, now_ms).await?;
        bump(&mut tx, "registry").await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Stores every device of `tenant` in one transaction (created or replaced): all or
    /// nothing. Returns how many were new.
    pub async fn import_devices(
        &self,
        tenant: &str,
        devices: &[Device],
        now_ms: i64,
    ) -> Result<usize, MetaError> {
        for (i, d) in devices.iter().enumerate() {
            d.check()
                .map_err(|e| MetaError::Invalid(format!("device {} ({:?}): {e}", i + 1, d.id)))?;
        }
        let mut tx = self.pool.begin().await?;
        let mut created = 0;
        for d in devices {
            created += usize::from(put_in(&mut tx, tenant, d, PutMode::Upsert, now_ms).await?);
        }
        bump(&mut tx, "registry").await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Device `id` of `tenant`.
    pub async fn device(&self, tenant: &str, id: &str) -> Result<Option<Device>, MetaError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT doc FROM devices WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(doc,)| parse_device(id, &doc)).transpose()
    }

    /// Deletes device `id` of `tenant`; false when there was none.
    pub async fn delete_device(&self, tenant: &str, id: &str) -> Result<bool, MetaError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM devices WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        bump(&mut tx, "registry").await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Up to `limit` devices of `tenant` matching `filter`, by id, after `cursor`.
    pub async fn list_devices(
        &self,
        tenant: &str,
        filter: &Filter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, MetaError> {
        let mut sql = String::from("SELECT id, doc FROM devices WHERE tenant = $1");
        let mut args: Vec<String> = vec![tenant.to_string()];
        for (col, v) in [
            ("site", &filter.site),
            ("dtype", &filter.device_type),
            ("region", &filter.region),
            ("model", &filter.model),
        ] {
            if let Some(v) = v {
                args.push(v.clone());
                sql.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        if let Some(c) = cursor {
            args.push(c.to_string());
            sql.push_str(&format!(" AND id > ${}", args.len()));
        }
        if let Some(a) = filter.active {
            sql.push_str(if a {
                " AND active = 1"
            } else {
                " AND active = 0"
            });
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", limit.max(1)));
        let mut q = sqlx::query_as::<_, (String, String)>(&sql);
        for a in &args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let next = (rows.len() >= limit.max(1))
            .then(|| rows.last().map(|(id, _)| id.clone()))
            .flatten();
        let devices = rows
            .iter()
            .map(|(id, doc)| parse_device(id, doc))
            .collect::<Result<_, _>>()?;
        Ok(Page { devices, next })
    }

    /// Every device of every tenant (for caches).
    pub async fn all_devices(&self) -> Result<Vec<(String, Device)>, MetaError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT tenant, id, doc FROM devices ORDER BY tenant, id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(t, id, doc)| parse_device(&id, &doc).map(|d| (t, d)))
            .collect()
    }

    /// The registry's version: changes whenever a device does, on any node.
    pub async fn registry_version(&self) -> Result<i64, MetaError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM versions WHERE name = $1")
            .bind("registry")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |(v,)| v))
    }
}

async fn put_in(
    tx: &mut Tx<'_>,
    tenant: &str,
    d: &Device,
    mode: PutMode,
    now_ms: i64,
) -> Result<bool, MetaError> {
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT id FROM devices WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(&d.id)
            .fetch_optional(&mut **tx)
            .await?;
    match (exists.is_some(), mode) {
        (true, PutMode::Create) => {
            return Err(MetaError::DeviceExists(d.id.clone()));
        }
        (false, PutMode::Update) => return Err(MetaError::NoDevice(d.id.clone())),
        _ => {}
    }
    let doc = serde_json::to_string(d).expect("a device serializes");
    let cols = (
        d.site.clone().unwrap_or_default(),
        d.device_type.clone().unwrap_or_default(),
        d.region.clone().unwrap_or_default(),
        d.model.clone().unwrap_or_default(),
        i64::from(d.active),
    );
    if exists.is_some() {
        sqlx::query(
            "UPDATE devices SET doc = $1, site = $2, dtype = $3, region = $4, model = $5, active = $6, updated_ms = $7 WHERE tenant = $8 AND id = $9",
        )
        .bind(&doc)
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(cols.4)
        .bind(now_ms)
        .bind(tenant)
        .bind(&d.id)
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO devices (tenant, id, doc, site, dtype, region, model, active, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant)
        .bind(&d.id)
        .bind(&doc)
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(cols.4)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(exists.is_none())
}

/// Bumps version `name` (made at 1 when missing).
async fn bump(tx: &mut Tx<'_>, name: &str) -> Result<(), MetaError> {
    let r = sqlx::query("UPDATE versions SET version = version + 1 WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        sqlx::query("INSERT INTO versions (name, version) VALUES ($1, 1)")
            .bind(name)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn parse_device(id: &str, doc: &str) -> Result<Device, MetaError> {
    serde_json::from_str(doc).map_err(|e| MetaError::Unreadable {
        id: format!("device {id}"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, site: &str) -> Device {
        serde_json::from_value(serde_json::json!({
            "id": id, "site": site, "type": "boiler", "expected_interval": "10s",
            "labels": {"building": "b1"}
        }))
        .unwrap()
    }

    /// The registry's behaviour on `db` (SQLite here; PostgreSQL in the server's tests).
    async fn exercise(db: &MetaStore) {
        let v0 = db.registry_version().await.unwrap();
        assert!(db
            .put_device("t", &dev("d1", "s1"), PutMode::Create, 1)
            .await
            .unwrap());
        assert!(matches!(
            db.put_device("t", &dev("d1", "s1"), PutMode::Create, 2)
                .await,
            Err(MetaError::DeviceExists(_))
        ));
        assert!(matches!(
            db.put_device("t", &dev("nope", "s1"), PutMode::Update, 2)
                .await,
            Err(MetaError::NoDevice(_))
        ));
        assert!(!db
            .put_device("t", &dev("d1", "s2"), PutMode::Update, 3)
            .await
            .unwrap());
        // Another tenant's device of the same id is another device.
        db.put_device("u", &dev("d1", "s9"), PutMode::Create, 3)
            .await
            .unwrap();
        let got = db.device("t", "d1").await.unwrap().unwrap();
        assert_eq!(got.site.as_deref(), Some("s2"));
        assert_eq!(got.value("building"), Some("b1"));
        assert_eq!(got.value("type"), Some("boiler"));
        let many: Vec<Device> = (0..25)
            .map(|i| dev(&format!("m{i:02}"), if i % 2 == 0 { "s1" } else { "s2" }))
            .collect();
        assert_eq!(db.import_devices("t", &many, 4).await.unwrap(), 25);
        assert_eq!(db.import_devices("t", &many[..5], 5).await.unwrap(), 0);
        // A bad device refuses the whole import.
        let mut bad = many.clone();
        bad[3].expected_interval = Some("soon".into());
        let e = db
            .import_devices("t", &bad, 6)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("device 4") && e.contains("expected_interval"),
            "{e}"
        );
        // Pages by site, cursor to cursor.
        let f = Filter {
            site: Some("s2".into()),
            ..Filter::default()
        };
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = db
                .list_devices("t", &f, 5, cursor.as_deref())
                .await
                .unwrap();
            seen.extend(p.devices.iter().map(|d| d.id.clone()));
            match p.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut want: Vec<String> = (0..25)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("m{i:02}"))
            .collect();
        want.insert(0, "d1".into());
        assert_eq!(seen, want);
        let inactive = Filter {
            active: Some(false),
            ..Filter::default()
        };
        assert!(db
            .list_devices("t", &inactive, 10, None)
            .await
            .unwrap()
            .devices
            .is_empty());
        assert!(db.delete_device("t", "d1").await.unwrap());
        assert!(!db.delete_device("t", "d1").await.unwrap());
        assert!(db.device("u", "d1").await.unwrap().is_some());
        assert_eq!(db.all_devices().await.unwrap().len(), 26);
        assert!(db.registry_version().await.unwrap() > v0);
    }

    #[tokio::test]
    async fn the_registry_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaStore::open(&dir.path().join("meta.db")).await.unwrap();
        exercise(&db).await;
    }

    /// A PostgreSQL server of Debian's `postgresql` package, made by `initdb` in a temporary
    /// directory and started on a loopback port (as user `postgres` when run as root, which
    /// PostgreSQL refuses to run as); stopped when dropped.
    struct Postgres {
        child: std::process::Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn postgres() -> Option<Postgres> {
        use std::process::{Command, Stdio};
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())?;
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id").arg("-u").output().ok()?.stdout == b"0\n";
        let run = |prog: &str| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
                c
            } else {
                Command::new(bin.join(prog))
            };
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c
        };
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .ok()?
                .success();
            assert!(ok, "chown of the PostgreSQL directory");
        }
        let data = dir.path().join("pg");
        let ok = run("initdb")
            .args(["-A", "trust", "-U", "strata", "-D"])
            .arg(&data)
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = run("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(Postgres {
            child,
            url: format!("postgres://strata@127.0.0.1:{port}/postgres"),
            _dir: dir,
        })
    }

    #[tokio::test]
    async fn the_registry_and_rules_on_postgres() {
        let Some(pg) = postgres() else {
            eprintln!("skipping: PostgreSQL is not installed (apt-get install postgresql)");
            return;
        };
        // It may take a moment after listening before it accepts logins.
        let mut tries = 0;
        let db = loop {
            match MetaStore::open_url(&pg.url).await {
                Ok(db) => break db,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        exercise(&db).await;
        let rule = strata_alert::device::DeviceRule::new(
            serde_json::from_value(serde_json::json!({
                "rule_id": "r", "device_id": "d1", "metric": "temp", "operator": ">",
                "threshold": 1.0,
            }))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(db.put(&rule, true, 1).await.unwrap(), crate::Put::Created);
        assert_eq!(db.rules().await.unwrap().len(), 1);
        db.close().await;
        // Reopened, as another node would: the same registry.
        let db = MetaStore::open_url(&pg.url).await.unwrap();
        assert_eq!(db.all_devices().await.unwrap().len(), 26);
        let e = MetaStore::open_url("mysql://x").await.err().unwrap();
        assert!(e.to_string().contains("postgres://"), "{e}");
    }

    #[test]
    fn bad_devices_are_refused_naming_the_field() {
        for (json, want) in [
            (serde_json::json!({"id": ""}), "id must be"),
            (serde_json::json!({"id": "a\u{1}"}), "control"),
            (
                serde_json::json!({"id": "a", "provisioned": "yesterday"}),
                "provisioned",
            ),
            (
                serde_json::json!({"id": "a", "expected_interval": "0s"}),
                "expected_interval",
            ),
            (
                serde_json::json!({"id": "a", "labels": {"__x": "1"}}),
                "label name",
            ),
            (
                serde_json::json!({"id": "a", "labels": {"device": "1"}}),
                "label name",
            ),
            (
                serde_json::json!({"id": "a", "site": "x".repeat(2000)}),
                "site is",
            ),
        ] {
            let d: Device = serde_json::from_value(json).unwrap();
            let e = d.check().unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let unknown =
            serde_json::from_value::<Device>(serde_json::json!({"id": "a", "colour": "red"}));
        assert!(unknown.unwrap_err().to_string().contains("colour"));
    }
}
