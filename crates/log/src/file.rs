//! The file layer under the writer: segment files as the writer uses them (create, write, sync,
//! truncate) and directory syncs.
//!
//! Without the `fault-injection` feature this is `std::fs` and nothing else. With it, a log
//! opened by [`crate::LocalLog::open_with_faults`] routes every one of these operations through
//! a [`Faults`] schedule first; the check is one branch per file operation (a group commit or a
//! 1 MiB write), never per record.

#[cfg(feature = "fault-injection")]
use crate::faults::Faults;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
#[cfg(feature = "fault-injection")]
use std::sync::Arc;

/// Opens files for the log; carries the fault schedule when there is one.
#[derive(Clone, Default)]
pub(crate) struct Io {
    #[cfg(feature = "fault-injection")]
    faults: Option<Arc<Faults>>,
}

impl Io {
    /// File operations that fail as `faults` says.
    #[cfg(feature = "fault-injection")]
    pub fn with_faults(faults: Arc<Faults>) -> Io {
        Io {
            faults: Some(faults),
        }
    }

    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
    #[inline(always)]
    fn check(&self, op: FaultOp) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.faults {
            return f.check(op);
        }
        Ok(())
    }

    /// Creates (or empties) `path` for writing from its start.
    pub fn create(&self, path: &Path) -> io::Result<SegmentFile> {
        self.check(FaultOp::Create)?;
        let file = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(self.wrap(file, 0))
    }

    /// Opens an existing file for writing at byte `len`, all of which is durable.
    pub fn open_at(&self, path: &Path, len: u64) -> io::Result<SegmentFile> {
        let mut file = File::options().write(true).open(path)?;
        file.seek(SeekFrom::Start(len))?;
        Ok(self.wrap(file, len))
    }

    /// fsyncs a directory so a created, renamed or removed entry survives a crash.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(FaultOp::SyncDir)?;
        File::open(dir).and_then(|d| d.sync_all())
    }

    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
    fn wrap(&self, file: File, len: u64) -> SegmentFile {
        SegmentFile {
            file,
            #[cfg(feature = "fault-injection")]
            hook: self.faults.clone().map(|faults| Hook {
                faults,
                synced: len,
                pos: len,
            }),
        }
    }
}

/// A file operation that can be made to fail (with the `fault-injection` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub enum FaultOp {
    /// Creating a segment file.
    Create,
    /// Writing to a segment file.
    Write,
    /// `fdatasync`/`fsync` of a segment file.
    Sync,
    /// Truncating a segment file.
    SetLen,
    /// `fsync` of a partition directory.
    SyncDir,
}

/// Where a faulty file stands: what it has synced and where it writes.
#[cfg(feature = "fault-injection")]
struct Hook {
    faults: Arc<Faults>,
    /// Bytes known to have reached the disk.
    synced: u64,
    /// The write position.
    pos: u64,
}

/// A segment file open for writing at its end.
pub(crate) struct SegmentFile {
    file: File,
    #[cfg(feature = "fault-injection")]
    hook: Option<Hook>,
}

impl SegmentFile {
    /// Writes all of `buf` at the current position.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(h) = &mut self.hook {
            if let Err(e) = h.faults.check(FaultOp::Write) {
                // A partial write, as a filesystem running out of space does.
                let half = &buf[..buf.len() / 2];
                self.file.write_all(half)?;
                h.pos += half.len() as u64;
                return Err(e);
            }
            h.pos += buf.len() as u64;
        }
        self.file.write_all(buf)
    }

    /// `fdatasync`.
    pub fn sync_data(&mut self) -> io::Result<()> {
        self.sync(File::sync_data)
    }

    /// `fsync`, metadata included.
    pub fn sync_all(&mut self) -> io::Result<()> {
        self.sync(File::sync_all)
    }

    fn sync(&mut self, how: fn(&File) -> io::Result<()>) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(h) = &mut self.hook {
            if let Err(e) = h.faults.check(FaultOp::Sync) {
                // Linux after a writeback error: the dirty pages are dropped, the error is
                // reported once. Zeros are what the lost range reads as after a crash.
                use std::os::unix::fs::FileExt;
                let lost = vec![0u8; (h.pos - h.synced) as usize];
                self.file.write_at(&lost, h.synced)?;
                how(&self.file)?;
                h.synced = h.pos;
                return Err(e);
            }
            how(&self.file)?;
            h.synced = h.pos;
            return Ok(());
        }
        how(&self.file)
    }

    /// Cuts (or extends) the file to `len` bytes and moves the write position there.
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(h) = &mut self.hook {
            h.faults.check(FaultOp::SetLen)?;
            h.pos = len;
            h.synced = h.synced.min(len);
        }
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len)).map(|_| ())
    }
}
