//! Little helpers for the stage's checkpoint files: length-prefixed fields, a bounds-checked
//! reader that never panics on damaged input, atomic replacement of a file, and the checksummed
//! frame every checkpoint shares (magic first, CRC32 last).

use crate::StreamError;
use std::io::Write;
use std::path::Path;

/// Appends `bytes` with a 32-bit length prefix.
pub(crate) fn put(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    b.extend_from_slice(bytes);
}

/// Reads little-endian fields; every read is `None` past the end.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A length-prefixed field written by [`put`].
    pub(crate) fn field(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn is_done(&self) -> bool {
        self.pos == self.b.len()
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file (temporary
/// file, fsync, rename, directory fsync).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StreamError> {
    let io = |source| StreamError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Writes a checkpoint atomically: `body` (which starts with its magic) followed by its CRC32.
pub(crate) fn write_checked(path: &Path, mut body: Vec<u8>) -> Result<(), StreamError> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    write_atomically(path, &body)
}

/// Reads what [`write_checked`] wrote: the body (magic included, CRC removed), or `None` when
/// there is no file. A file shorter than `min_len`, without `magic`, or failing its CRC is an
/// error naming `what` (e.g. "a window checkpoint").
pub(crate) fn read_checked(
    path: &Path,
    magic: &[u8; 8],
    min_len: usize,
    what: &str,
) -> Result<Option<Vec<u8>>, StreamError> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StreamError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let corrupt = |reason: String| StreamError::Corrupt {
        path: path.into(),
        reason,
    };
    if bytes.len() < min_len.max(12) || &bytes[..8] != magic {
        return Err(corrupt(format!("not {what}")));
    }
    let body_len = bytes.len() - 4;
    if crc32fast::hash(&bytes[..body_len]).to_le_bytes() != bytes[body_len..] {
        return Err(corrupt(format!("checksum mismatch in {what}")));
    }
    bytes.truncate(body_len);
    Ok(Some(bytes))
}
