//! Fault injection for tests (feature `fault-injection`): makes the log's file operations fail on
//! demand, the way a failing disk or a full filesystem does.
//!
//! Open the log with [`crate::LocalLog::open_with_faults`] and arm faults on the shared
//! [`Faults`]. A failed write leaves the first half of its bytes in the file (a partial write,
//! as with `ENOSPC`); a failed sync behaves like Linux after a writeback error: the data written
//! since the file's last successful sync is dropped (overwritten with zeros, which is what a
//! crash leaves on many filesystems) and the error is reported once, so the next sync of the
//! same file succeeds although the data is gone. That is the trap ("fsyncgate") the writer must
//! not fall into.

use parking_lot::Mutex;
use std::io;
use std::sync::Arc;

pub use crate::file::FaultOp;

const OPS: usize = 5;

#[derive(Default)]
struct OpState {
    /// Operations of this kind seen so far.
    seen: u64,
    /// Values of `seen` (after counting the operation) at which it fails.
    fail_at: Vec<u64>,
    /// Every operation fails until [`Faults::heal`].
    always: bool,
    /// Failures injected so far.
    injected: u64,
}

/// A fault schedule shared by every file of a log.
#[derive(Default)]
pub struct Faults {
    ops: Mutex<[OpState; OPS]>,
}

impl Faults {
    /// No faults armed yet.
    pub fn new() -> Arc<Faults> {
        Arc::default()
    }

    /// Makes the `nth` operation of kind `op` from now fail (1 is the next one), once.
    pub fn fail_nth(&self, op: FaultOp, nth: u64) {
        let mut ops = self.ops.lock();
        let s = &mut ops[op as usize];
        let at = s.seen + nth.max(1);
        s.fail_at.push(at);
    }

    /// Makes every operation of kind `op` fail until [`Faults::heal`].
    pub fn fail_always(&self, op: FaultOp) {
        self.ops.lock()[op as usize].always = true;
    }

    /// Disarms every fault.
    pub fn heal(&self) {
        for s in self.ops.lock().iter_mut() {
            s.fail_at.clear();
            s.always = false;
        }
    }

    /// Failures of kind `op` injected so far.
    pub fn injected(&self, op: FaultOp) -> u64 {
        self.ops.lock()[op as usize].injected
    }

    /// Operations of kind `op` attempted so far (failed or not).
    pub fn seen(&self, op: FaultOp) -> u64 {
        self.ops.lock()[op as usize].seen
    }

    /// Counts one operation of kind `op`; an error when it is to fail.
    pub(crate) fn check(&self, op: FaultOp) -> io::Result<()> {
        let mut ops = self.ops.lock();
        let s = &mut ops[op as usize];
        s.seen += 1;
        let seen = s.seen;
        let before = s.fail_at.len();
        s.fail_at.retain(|at| *at != seen);
        if s.always || s.fail_at.len() != before {
            s.injected += 1;
            return Err(io::Error::other(format!("injected {op:?} fault")));
        }
        Ok(())
    }
}
