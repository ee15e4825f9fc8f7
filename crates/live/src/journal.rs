//! The recent messages of one stream, for clients that reconnect.
//!
//! A client resuming from a position gets every message after it while the journal still
//! holds them, in order; when it no longer does (the messages were dropped to stay within the
//! journal's bounds, or the position is of another epoch), it is told so and takes a snapshot
//! of the current state instead (Centrifuge's model, under Grafana Live).

use crate::Position;
use std::collections::VecDeque;
use std::sync::Arc;

/// Bounded memory of a stream's latest messages.
#[derive(Debug)]
pub struct Journal<M> {
    epoch: u64,
    /// The offset the next message gets.
    next: u64,
    kept: VecDeque<(u64, Arc<M>, usize)>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

/// What [`Journal::since`] found.
#[derive(Debug)]
pub enum Since<M> {
    /// Every message after the position, oldest first (none when the client is up to date).
    Replay(Vec<(Position, Arc<M>)>),
    /// Some messages after the position are no longer kept, or the position is of another
    /// epoch or ahead of the stream: the client needs a snapshot.
    Gap,
}

impl<M> Journal<M> {
    /// An empty journal of run `epoch` keeping at most `max_messages` messages and
    /// `max_bytes` of them (as their publishers size them).
    pub fn new(epoch: u64, max_messages: usize, max_bytes: usize) -> Journal<M> {
        Journal {
            epoch,
            next: 1,
            kept: VecDeque::new(),
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes,
        }
    }

    /// The position of the newest message (offset 0 before any).
    pub fn head(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.next - 1,
        }
    }

    /// Appends `message` of `size` bytes, dropping the oldest past the bounds; returns its
    /// position.
    pub fn append(&mut self, message: Arc<M>, size: usize) -> Position {
        let offset = self.next;
        self.next += 1;
        self.kept.push_back((offset, message, size));
        self.bytes += size;
        while self.kept.len() > self.max_messages
            || (self.bytes > self.max_bytes && self.kept.len() > 1)
        {
            let (_, _, s) = self.kept.pop_front().expect("not empty");
            self.bytes -= s;
        }
        Position {
            epoch: self.epoch,
            offset,
        }
    }

    /// The messages after `pos` that `wanted` selects, or [`Since::Gap`].
    pub fn since(&self, pos: Position, wanted: impl Fn(&M) -> bool) -> Since<M> {
        if pos.epoch != self.epoch || pos.offset >= self.next {
            return Since::Gap;
        }
        // The oldest kept must follow `pos` directly, or be older than it.
        let oldest = self.kept.front().map_or(self.next, |k| k.0);
        if oldest > pos.offset + 1 {
            return Since::Gap;
        }
        let skip = (pos.offset + 1).saturating_sub(oldest) as usize;
        Since::Replay(
            self.kept
                .iter()
                .skip(skip)
                .filter(|(_, m, _)| wanted(m))
                .map(|(o, m, _)| {
                    (
                        Position {
                            epoch: self.epoch,
                            offset: *o,
                        },
                        m.clone(),
                    )
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(s: Since<u32>) -> Option<Vec<u64>> {
        match s {
            Since::Replay(v) => Some(v.iter().map(|(p, _)| p.offset).collect()),
            Since::Gap => None,
        }
    }

    #[test]
    fn resumes_while_kept_and_says_when_not() {
        let mut j = Journal::new(7, 3, 1000);
        assert_eq!(
            j.head(),
            Position {
                epoch: 7,
                offset: 0
            }
        );
        for m in 1..=5u32 {
            j.append(Arc::new(m), 10);
        }
        assert_eq!(j.head().offset, 5);
        let at = |offset| Position { epoch: 7, offset };
        // 3 kept: offsets 3, 4, 5.
        assert_eq!(offsets(j.since(at(2), |_| true)), Some(vec![3, 4, 5]));
        assert_eq!(offsets(j.since(at(4), |_| true)), Some(vec![5]));
        assert_eq!(offsets(j.since(at(5), |_| true)), Some(vec![]));
        assert_eq!(offsets(j.since(at(3), |m| m % 2 == 1)), Some(vec![5]));
        assert_eq!(offsets(j.since(at(1), |_| true)), None, "offset 2 is gone");
        assert_eq!(
            offsets(j.since(at(6), |_| true)),
            None,
            "ahead of the stream"
        );
        let other = Position {
            epoch: 6,
            offset: 4,
        };
        assert_eq!(offsets(j.since(other, |_| true)), None, "another epoch");
    }

    #[test]
    fn bytes_bound_the_journal_too() {
        let mut j = Journal::new(1, 100, 25);
        for m in 1..=4u32 {
            j.append(Arc::new(m), 10);
        }
        let at = |offset| Position { epoch: 1, offset };
        assert_eq!(offsets(j.since(at(2), |_| true)), Some(vec![3, 4]));
        assert_eq!(offsets(j.since(at(1), |_| true)), None);
        // One message larger than the bound is still kept (the newest always is).
        j.append(Arc::new(5), 100);
        assert_eq!(offsets(j.since(at(4), |_| true)), Some(vec![5]));
    }
}
