//! Where cold objects live: Hive-style partitions `tenant=<t>/tier=<1h|1m|raw>/day=YYYY-MM-DD/`
//! and file names inside them, and the manifest's own place.

use chrono::DateTime;
use object_store::path::Path;

/// Hive partition keys, outermost first; they become columns in DuckDB, Spark and pandas.
pub(crate) const PARTITION_KEYS: [&str; 3] = ["tenant", "tier", "day"];

/// The manifest's object name under the root (outside every partition, not `*.parquet`).
pub(crate) const MANIFEST: &str = "_strata/manifest.json";

const DAY_MS: i64 = 86_400_000;

/// Which tier a cold file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// 1-minute windows.
    Minute,
    /// 1-hour windows.
    Hour,
    /// Raw samples.
    Raw,
}

impl Tier {
    /// The partition value: `1m`, `1h` or `raw`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Minute => "1m",
            Tier::Hour => "1h",
            Tier::Raw => "raw",
        }
    }

    /// The tier named by a partition value.
    pub fn parse(s: &str) -> Option<Tier> {
        [Tier::Minute, Tier::Hour, Tier::Raw]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// The UTC day holding millisecond `t`, as `YYYY-MM-DD`.
pub(crate) fn day_of(t: i64) -> String {
    let day_start = t.div_euclid(DAY_MS) * DAY_MS;
    DateTime::from_timestamp_millis(day_start)
        .map(|d| d.format("%Y-%m-%d").to_string())
        // Out of chrono's range (beyond year 262143): a day number keeps partitions distinct.
        .unwrap_or_else(|| format!("d{}", t.div_euclid(DAY_MS)))
}

/// The partition directory of `(tenant, tier, day)`, relative to the root.
pub(crate) fn partition(tenant: &str, tier: Tier, day: &str) -> String {
    format!("tenant={tenant}/tier={}/day={day}", tier.as_str())
}

/// The relative name of a new data file. `seq` makes it unique within this root's history;
/// the nonce keeps a name from a crashed process (whose seq was never recorded) from being
/// reused while its orphan may still exist.
pub(crate) fn file_name(partition: &str, seq: u64, nonce: u32) -> String {
    format!("{partition}/part-{seq:010}-{nonce:08x}.parquet")
}

/// True when the relative object name has the shape of a data file this store writes, the only
/// objects its cleanup ever deletes (so a root shared with other data loses nothing else).
pub(crate) fn is_data_file(rel: &str) -> bool {
    let mut parts = rel.split('/');
    let ok = PARTITION_KEYS.iter().all(|key| {
        parts
            .next()
            .and_then(|p| p.strip_prefix(key))
            .is_some_and(|v| v.starts_with('='))
    });
    ok && parts
        .next()
        .is_some_and(|f| f.starts_with("part-") && f.ends_with(".parquet"))
        && parts.next().is_none()
}

/// `root/rel` as an object path.
pub(crate) fn join(root: &Path, rel: &str) -> Path {
    let mut p = root.clone();
    for part in rel.split('/') {
        p = p.join(part);
    }
    p
}

/// `path` relative to `root`, if under it.
pub(crate) fn relative(root: &Path, path: &Path) -> Option<String> {
    let parts: Vec<_> = path
        .prefix_match(root)?
        .map(|p| p.as_ref().to_string())
        .collect();
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_names() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(DAY_MS - 1), "1970-01-01");
        assert_eq!(day_of(-1), "1969-12-31");
        assert_eq!(day_of(1_767_225_600_000), "2026-01-01");
        let p = partition("acme", Tier::Hour, "2026-01-01");
        let f = file_name(&p, 7, 0xab);
        assert_eq!(
            f,
            "tenant=acme/tier=1h/day=2026-01-01/part-0000000007-000000ab.parquet"
        );
        assert!(is_data_file(&f));
        assert!(!is_data_file(
            "tenant=acme/tier=1h/day=2026-01-01/notes.parquet"
        ));
        assert!(!is_data_file("other/tier=1h/day=x/part-1.parquet"));
        assert!(!is_data_file(MANIFEST));
        assert_eq!(Tier::parse("raw"), Some(Tier::Raw));
        let root = Path::from("a/b");
        assert_eq!(
            relative(&root, &join(&root, &f)).as_deref(),
            Some(f.as_str())
        );
    }
}
