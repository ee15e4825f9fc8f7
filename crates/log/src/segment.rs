//! Segment files: a header, then records framed as `u32 length, u32 crc32, payload`.

use crate::file::{Io, SegmentFile};
use crate::{io_err, LogError, Offset, MAX_RECORD_BYTES};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// `STRLOG`, a zero byte, and the format generation.
pub const MAGIC: &[u8; 8] = b"STRLOG\0\x01";
/// Segment format version.
pub const VERSION: u32 = 1;
/// Header: magic, version u32, base offset u64, crc32 of the preceding 20 bytes.
pub const HEADER_LEN: usize = 24;
/// Record frame: length u32, crc32 u32.
pub const FRAME_LEN: usize = 8;

/// The file name of the segment starting at `base`.
pub fn file_name(base: Offset) -> String {
    format!("{base:020}.seg")
}

/// Extension of a segment being created (renamed to `.seg` once its header is durable).
pub const TMP_EXTENSION: &str = "seg.tmp";

/// Encodes a segment header.
pub fn header(base: Offset) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends a record frame and payload to `buf`.
pub fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A segment as found on disk.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Offset of its first record.
    pub base: Offset,
    /// Records it holds.
    pub records: u64,
    /// File length in bytes.
    pub bytes: u64,
    /// Its path.
    pub path: PathBuf,
}

impl SegmentInfo {
    /// The offset after its last record. `base + records` fits in an offset: opening checks it
    /// for every segment on disk, and the writer never hands out an offset past `u64::MAX`; it
    /// saturates rather than wrap should that ever not hold.
    pub fn end(&self) -> Offset {
        self.base.saturating_add(self.records)
    }
}

/// How a scan ended.
pub enum Tail {
    /// Every byte belonged to a valid record.
    Clean,
    /// Bytes from `at` on are not a valid record.
    Bad { at: u64, reason: String },
    /// The scan stopped at its record limit with bytes from `at` on left unread: the next
    /// segment starts there, so they were never durable (see `LocalWriter::recover`).
    Superseded { at: u64 },
}

/// Reads and checks a header; `None` when the file is too short to hold one.
pub fn read_header(path: &Path, bytes: &[u8]) -> Result<Option<Offset>, LogError> {
    if bytes.len() < HEADER_LEN {
        return Ok(None);
    }
    let corrupt = |reason: &str| LogError::Corrupt {
        path: path.into(),
        position: 0,
        reason: reason.into(),
    };
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not an ingest-log segment (bad magic)"));
    }
    let crc = u32::from_le_bytes(
        bytes[20..24]
            .try_into()
            .map_err(|_| corrupt("short header"))?,
    );
    if crc32fast::hash(&bytes[..20]) != crc {
        return Err(corrupt("header checksum mismatch"));
    }
    let version = u32::from_le_bytes(
        bytes[8..12]
            .try_into()
            .map_err(|_| corrupt("short header"))?,
    );
    if version != VERSION {
        return Err(corrupt(&format!("unsupported segment version {version}")));
    }
    Ok(Some(u64::from_le_bytes(
        bytes[12..20]
            .try_into()
            .map_err(|_| corrupt("short header"))?,
    )))
}

/// The base offset in a segment's header; `None` when the file is too short to hold one.
pub fn read_base(path: &Path) -> Result<Option<Offset>, LogError> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    File::open(path)
        .and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut h))
        .map_err(io_err(path))?;
    read_header(path, &h)
}

/// Scans a segment file, at most `limit` records of it: its base, record count, and where
/// valid records end.
pub fn scan(path: &Path, limit: Option<u64>) -> Result<(Option<Offset>, u64, u64, Tail), LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let Some(base) = read_header(path, &bytes)? else {
        return Ok((
            None,
            0,
            0,
            Tail::Bad {
                at: 0,
                reason: "incomplete header".into(),
            },
        ));
    };
    let mut pos = HEADER_LEN;
    let mut records = 0;
    while pos < bytes.len() {
        if limit == Some(records) {
            return Ok((
                Some(base),
                records,
                pos as u64,
                Tail::Superseded { at: pos as u64 },
            ));
        }
        match check_record(&bytes[pos..]) {
            Ok(len) => {
                pos += FRAME_LEN + len;
                records += 1;
            }
            Err(reason) => {
                return Ok((
                    Some(base),
                    records,
                    pos as u64,
                    Tail::Bad {
                        at: pos as u64,
                        reason,
                    },
                ))
            }
        }
    }
    Ok((Some(base), records, pos as u64, Tail::Clean))
}

/// Checks the record at the start of `b`; returns its payload length.
fn check_record(b: &[u8]) -> Result<usize, String> {
    if b.len() < FRAME_LEN {
        return Err("incomplete record frame".into());
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len > MAX_RECORD_BYTES {
        return Err(format!("record length {len} is over the limit"));
    }
    if len == 0 {
        // Appends are never empty: this is a zero-filled tail (a crash, or lost writeback).
        return Err("empty record (zero-filled bytes)".into());
    }
    let payload = b
        .get(FRAME_LEN..FRAME_LEN + len)
        .ok_or("incomplete record payload")?;
    if crc32fast::hash(payload) != crc {
        return Err("record checksum mismatch".into());
    }
    Ok(len)
}

/// Creates the segment starting at `base` with its header, durable, replacing any file of that
/// name. The header is made durable under a temporary name first, so the segment appears whole
/// or not at all.
pub fn create(io: &Io, dir: &Path, base: Offset) -> Result<(SegmentFile, PathBuf), LogError> {
    let path = dir.join(file_name(base));
    let tmp = path.with_extension(TMP_EXTENSION);
    let mut f = io.create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&header(base))
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    io.sync_dir(dir).map_err(io_err(dir))?;
    Ok((f, path))
}

/// Streams the records of one segment, at most `records` of them (those durable when the
/// read began).
pub struct SegmentReader {
    reader: BufReader<File>,
    path: PathBuf,
    next: Offset,
    end: Offset,
    pos: u64,
}

impl SegmentReader {
    /// Opens `info` for reading, past its header.
    pub fn open(info: &SegmentInfo) -> Result<SegmentReader, LogError> {
        let f = File::open(&info.path).map_err(io_err(&info.path))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut h = [0u8; HEADER_LEN];
        reader.read_exact(&mut h).map_err(io_err(&info.path))?;
        read_header(&info.path, &h)?;
        Ok(SegmentReader {
            reader,
            path: info.path.clone(),
            next: info.base,
            end: info.end(),
            pos: HEADER_LEN as u64,
        })
    }

    /// The next record, or `None` at the end.
    pub fn next_record(&mut self) -> Option<Result<(Offset, Vec<u8>), LogError>> {
        if self.next >= self.end {
            return None;
        }
        let corrupt = |pos: u64, reason: String| LogError::Corrupt {
            path: self.path.clone(),
            position: pos,
            reason,
        };
        let mut frame = [0u8; FRAME_LEN];
        if let Err(e) = self.reader.read_exact(&mut frame) {
            return Some(Err(corrupt(
                self.pos,
                format!("record frame unreadable: {e}"),
            )));
        }
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len > MAX_RECORD_BYTES || len == 0 {
            return Some(Err(corrupt(
                self.pos,
                format!("record length {len} is out of range"),
            )));
        }
        let mut payload = vec![0u8; len];
        if let Err(e) = self.reader.read_exact(&mut payload) {
            return Some(Err(corrupt(
                self.pos,
                format!("record payload unreadable: {e}"),
            )));
        }
        if crc32fast::hash(&payload) != crc {
            return Some(Err(corrupt(self.pos, "record checksum mismatch".into())));
        }
        self.pos += (FRAME_LEN + len) as u64;
        let off = self.next;
        self.next += 1;
        Some(Ok((off, payload)))
    }
}
