//! One connection's queue of messages waiting to be sent, bounded, merging pending updates.
//!
//! An update that has a key (a series' reading, a series' window) replaces a pending update
//! with the same key instead of queueing behind it, so a slow client gets the latest state of
//! each, not every step; among updates of one key the highest rank (a window's revision) wins,
//! so a final or corrected window is never replaced by an older state. The replacement moves
//! to the back of the queue: messages leave in the order of their stream offsets, which a
//! client resuming from the last offset it received relies on. A queue still full of distinct
//! updates refuses the next one ([`Offer::Full`]): its client cannot keep up.
//!
//! Written here, not taken from a crate: the merge by key with a rank and the order kept by
//! moving replacements are what the stream's resume needs, and a few dozen lines over a
//! `VecDeque` and a map do it.

use ahash::AHashMap;
use std::collections::VecDeque;
use std::hash::Hash;

/// What [`Outbox::offer`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Queued in place of a pending message with the same key and a rank no higher.
    Conflated,
    /// Dropped: a pending message with the same key has a higher rank.
    Stale,
    /// Refused: the queue holds its capacity of distinct messages.
    Full,
}

struct Slot<K, M> {
    key: Option<K>,
    rank: u64,
    /// `None` once replaced by a later message of the same key.
    msg: Option<M>,
}

/// A bounded, conflating queue (see the module doc).
pub struct Outbox<K, M> {
    slots: VecDeque<Slot<K, M>>,
    /// The sequence number of `slots[0]`.
    first: u64,
    /// Pending messages with a key: the sequence number of their slot.
    pending: AHashMap<K, u64>,
    live: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, M> Outbox<K, M> {
    /// An empty queue holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Outbox<K, M> {
        Outbox {
            slots: VecDeque::new(),
            first: 0,
            pending: AHashMap::new(),
            live: 0,
            capacity: capacity.max(1),
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Offers `msg`, merged with a pending message of the same `key` if any (see the module
    /// doc); `rank` orders the messages of one key.
    pub fn offer(&mut self, key: Option<K>, rank: u64, msg: M) -> Offer {
        let mut outcome = Offer::Queued;
        if let Some(k) = &key {
            if let Some(&seq) = self.pending.get(k) {
                let slot = &mut self.slots[(seq - self.first) as usize];
                if rank < slot.rank {
                    return Offer::Stale;
                }
                slot.msg = None;
                self.live -= 1;
                outcome = Offer::Conflated;
            }
        }
        if self.live >= self.capacity {
            // A conflated message's slot was freed above, so this is a new key.
            return Offer::Full;
        }
        let seq = self.first + self.slots.len() as u64;
        if let Some(k) = &key {
            self.pending.insert(k.clone(), seq);
        }
        self.slots.push_back(Slot {
            key,
            rank,
            msg: Some(msg),
        });
        self.live += 1;
        self.compact();
        outcome
    }

    /// The oldest message waiting.
    pub fn pop(&mut self) -> Option<M> {
        while let Some(slot) = self.slots.pop_front() {
            let seq = self.first;
            self.first += 1;
            let Some(msg) = slot.msg else { continue };
            if let Some(k) = slot.key {
                if self.pending.get(&k) == Some(&seq) {
                    self.pending.remove(&k);
                }
            }
            self.live -= 1;
            return Some(msg);
        }
        None
    }

    /// Drops the replaced slots at the front, and all of them when they outnumber the live
    /// ones: the queue's memory stays within twice its capacity.
    fn compact(&mut self) {
        while self.slots.front().is_some_and(|s| s.msg.is_none()) {
            self.slots.pop_front();
            self.first += 1;
        }
        if self.slots.len() <= 2 * self.capacity {
            return;
        }
        let old = std::mem::take(&mut self.slots);
        let first = self.first + old.len() as u64;
        self.first = first - self.live as u64;
        self.pending.clear();
        for (i, s) in old.into_iter().filter(|s| s.msg.is_some()).enumerate() {
            if let Some(k) = &s.key {
                self.pending.insert(k.clone(), self.first + i as u64);
            }
            self.slots.push_back(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &mut Outbox<&'static str, u32>) -> Vec<u32> {
        std::iter::from_fn(|| o.pop()).collect()
    }

    #[test]
    fn a_key_keeps_its_latest_highest_ranked_message_in_offset_order() {
        let mut o = Outbox::new(3);
        assert_eq!(o.offer(Some("x"), 0, 1), Offer::Queued);
        assert_eq!(o.offer(Some("y"), 0, 2), Offer::Queued);
        assert_eq!(o.offer(None, 0, 3), Offer::Queued);
        // x's provisional state replaced by its final one, which moves behind y and 3.
        assert_eq!(o.offer(Some("x"), 1, 4), Offer::Conflated);
        assert_eq!(o.offer(Some("x"), 0, 5), Offer::Stale);
        assert_eq!(o.len(), 3);
        assert_eq!(o.offer(Some("z"), 0, 6), Offer::Full);
        assert_eq!(drain(&mut o), [2, 3, 4]);
        assert!(o.is_empty());
        // After x left, a new x queues again.
        assert_eq!(o.offer(Some("x"), 0, 7), Offer::Queued);
        assert_eq!(drain(&mut o), [7]);
    }

    #[test]
    fn memory_stays_bounded_under_endless_replacement() {
        let mut o: Outbox<u32, u32> = Outbox::new(4);
        for k in 0..4 {
            o.offer(Some(k), 0, k);
        }
        for i in 0..10_000u32 {
            assert_eq!(
                o.offer(Some(i % 3), u64::from(i), 100 + i),
                Offer::Conflated
            );
            assert!(o.slots.len() <= 8, "{}", o.slots.len());
        }
        assert_eq!(o.len(), 4);
        let got = std::iter::from_fn(|| o.pop()).collect::<Vec<_>>();
        assert_eq!(got, [3, 100 + 9997, 100 + 9998, 100 + 9999]);
        assert!(o.pending.is_empty());
    }
}
