//! Small state files: a magic, the body's length and CRC32, then the body; written to a
//! temporary file, fsynced and renamed (and the directory fsynced), so a crash leaves the old
//! file or the new one, never a mix. Alert state ([`crate::saved`]) and device-rule checkpoints
//! ([`crate::device`]) are kept this way.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not of this kind or is damaged.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes `body` to `path` behind `magic`, durably.
pub fn write(path: &Path, magic: &[u8; 8], body: &[u8]) -> Result<(), FramedError> {
    let mut bytes = Vec::with_capacity(20 + body.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(body);
    replace(path, &bytes).map_err(|source| FramedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces the file at `path` with `bytes`: a temporary file beside it, fsynced and renamed
/// over it, and the directory fsynced, so a crash leaves the old file or the new one.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The body of the file at `path` written with `magic`; `None` when there is no file.
pub fn read(path: &Path, magic: &[u8; 8]) -> Result<Option<Vec<u8>>, FramedError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FramedError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let damaged = |reason: &str| FramedError::Damaged {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 20 || &bytes[..8] != magic {
        return Err(damaged("not a file of this kind (bad magic)"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let body = &bytes[20..];
    if body.len() as u64 != len || crc32fast::hash(body) != crc {
        return Err(damaged("length or checksum mismatch"));
    }
    Ok(Some(body.to_vec()))
}
