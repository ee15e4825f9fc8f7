//! The core of Strata's live push (`/api/v1/stream`), apart from any transport: where a
//! message sits in the stream ([`Position`]), what a reconnecting client can resume from
//! ([`journal::Journal`]), and each connection's bounded queue that merges pending updates of
//! one series and window instead of growing ([`outbox::Outbox`]).
//!
//! Ingest never waits for a subscriber: a publisher appends to the journal and offers to each
//! outbox, and an outbox that stays full names its connection as too slow to keep (the server
//! closes it with a clear reason); the client then resumes from its last position.

pub mod hub;
pub mod journal;
pub mod outbox;
pub mod protocol;

/// Where a message sits in a stream: the epoch (a new one each time the stream starts, so a
/// position from before a restart is recognised as such) and the offset within it (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The stream's run.
    pub epoch: u64,
    /// Messages of this run before and including this one.
    pub offset: u64,
}
