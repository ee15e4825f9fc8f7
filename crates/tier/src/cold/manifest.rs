//! The manifest: the list of visible cold files, one JSON object rewritten whole (a single PUT,
//! atomic on S3 and on the local store) with a version and a checksum. Readers pick files from it
//! and never list the bucket; a file not in it does not exist for Strata.

use super::layout::Tier;
use serde::{Deserialize, Serialize};

/// The manifest format this code reads and writes.
const FORMAT: u32 = 1;

/// One visible data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    /// Object name relative to the root.
    pub path: String,
    pub tenant: String,
    pub tier: Tier,
    pub day: String,
    /// Age of the file's data: of two rows for the same key and rank, the one in the file with
    /// the higher `seq` wins. A compacted file takes the highest `seq` of its inputs.
    pub seq: u64,
    pub rows: u64,
    pub bytes: u64,
    /// First and last millisecond covered by its rows.
    pub min_time: i64,
    pub max_time: i64,
}

impl FileEntry {
    /// True when the file may hold rows of `tenant`'s `tier` within `[start, end]`.
    pub fn covers(&self, tenant: &str, tier: Tier, start: i64, end: i64) -> bool {
        self.tenant == tenant && self.tier == tier && self.min_time <= end && self.max_time >= start
    }
}

/// The manifest's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    /// Incremented on every rewrite.
    pub version: u64,
    /// Above every `seq` recorded so far.
    pub next_seq: u64,
    /// The promoted label columns of every file in this root (fixed when the root is created:
    /// changing them would give files two schemas).
    pub promoted_labels: Vec<String>,
    pub files: Vec<FileEntry>,
}

/// The stored form: the manifest and the CRC-32 of its canonical JSON.
#[derive(Serialize, Deserialize)]
struct Envelope {
    checksum: u32,
    manifest: Manifest,
}

impl Manifest {
    /// An empty manifest for a new root.
    pub fn new(promoted_labels: Vec<String>) -> Manifest {
        Manifest {
            format: FORMAT,
            version: 0,
            next_seq: 1,
            promoted_labels,
            files: Vec::new(),
        }
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("manifest serializes");
        let env = Envelope {
            checksum: crc32fast::hash(&body),
            manifest: self.clone(),
        };
        serde_json::to_vec_pretty(&env).expect("manifest serializes")
    }

    /// Parses stored bytes; `Err` says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(&env.manifest).expect("manifest serializes");
        let crc = crc32fast::hash(&body);
        if crc != env.checksum {
            return Err(format!(
                "checksum mismatch: stored {:08x}, content {crc:08x}",
                env.checksum
            ));
        }
        if env.manifest.format != FORMAT {
            return Err(format!(
                "format {} is not supported (this build reads {FORMAT})",
                env.manifest.format
            ));
        }
        Ok(env.manifest)
    }
}

impl Serialize for Tier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tier, D::Error> {
        let s = String::deserialize(d)?;
        Tier::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown tier {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let mut m = Manifest::new(vec!["site".into()]);
        m.files.push(FileEntry {
            path: "tenant=a/tier=1h/day=2026-01-01/part-1.parquet".into(),
            tenant: "a".into(),
            tier: Tier::Hour,
            day: "2026-01-01".into(),
            seq: 1,
            rows: 10,
            bytes: 100,
            min_time: 0,
            max_time: 5,
        });
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let tampered = String::from_utf8(bytes)
            .unwrap()
            .replace("\"rows\": 10", "\"rows\": 11");
        let err = Manifest::decode(tampered.as_bytes()).unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(Manifest::decode(b"{").is_err());
    }
}
