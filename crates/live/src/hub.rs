//! The hub: each tenant's stream (a journal and the subscriptions reading it) and the
//! connections' outboxes the subscriptions fill.
//!
//! A publisher hands over an update with its kind and metric name; the hub gives it the
//! tenant's next position, keeps it in the journal and offers it to the outbox of every
//! subscription whose filter selects it. Subscriptions are indexed by kind and metric name, so
//! an update is tested only against those that can select it, and a tenant with no
//! subscription costs its publishers one atomic load ([`Hub::wanted`]). Nothing here waits
//! for a client: an outbox that refuses an update marks its connection too slow, and the
//! connection's owner closes it.
//!
//! Subscribing takes the tenant's lock that publishing takes, so what a resumed subscription
//! replays from the journal and what it receives live neither overlap nor leave a gap.

use crate::journal::{Journal, Since};
use crate::outbox::{Offer, Outbox};
use crate::protocol::Kind;
use crate::Position;
use ahash::AHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Which updates a subscription selects.
pub type Filter<U> = Box<dyn Fn(&U) -> bool + Send + Sync>;

/// How an update merges with pending ones in an outbox: updates with the same key replace
/// each other, the higher rank winning (a window's start and revision, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflation {
    /// What the update is the state of (a series and window), within its subscription.
    pub key: u64,
    /// Its order among updates of the key.
    pub rank: u64,
}

/// One published update.
#[derive(Debug)]
pub struct Entry<U> {
    /// Its kind.
    pub kind: Kind,
    /// Its metric name, for series kinds.
    pub name: Option<String>,
    /// How it merges with pending updates.
    pub conflation: Option<Conflation>,
    /// The update.
    pub update: U,
}

/// One update as a connection receives it.
#[derive(Debug)]
pub struct Delivery<U> {
    /// The subscription's number in its connection.
    pub subscription: u32,
    /// The update's position.
    pub position: Position,
    /// The update.
    pub entry: Arc<Entry<U>>,
}

/// A connection's side of the hub: its outbox and whether it fell behind.
pub struct Connection<U> {
    outbox: Mutex<Outbox<(u32, u64), Delivery<U>>>,
    slow: AtomicBool,
    wake: Box<dyn Fn() + Send + Sync>,
    /// Updates merged into pending ones.
    pub conflated: AtomicU64,
}

impl<U> Connection<U> {
    /// A connection whose outbox holds `capacity` updates; `wake` is called when an update
    /// is queued (on the publisher's thread: it must not block).
    pub fn new(capacity: usize, wake: impl Fn() + Send + Sync + 'static) -> Arc<Connection<U>> {
        Arc::new(Connection {
            outbox: Mutex::new(Outbox::new(capacity)),
            slow: AtomicBool::new(false),
            wake: Box::new(wake),
            conflated: AtomicU64::new(0),
        })
    }

    /// The oldest update waiting.
    pub fn next(&self) -> Option<Delivery<U>> {
        self.outbox.lock().expect("outbox lock").pop()
    }

    /// True once an update found the outbox full: the client cannot keep up.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    fn offer(&self, d: Delivery<U>) {
        if self.is_slow() {
            return;
        }
        let c = d.entry.conflation;
        let key = c.map(|c| (d.subscription, c.key));
        let rank = c.map_or(0, |c| c.rank);
        let offered = self.outbox.lock().expect("outbox lock").offer(key, rank, d);
        match offered {
            Offer::Queued => {}
            Offer::Conflated => {
                self.conflated.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Stale => return,
            Offer::Full => self.slow.store(true, Ordering::Relaxed),
        }
        (self.wake)();
    }
}

struct Subscriber<U> {
    connection: Arc<Connection<U>>,
    subscription: u32,
    filter: Filter<U>,
}

/// The subscriptions of one kind.
struct KindIndex<U> {
    by_name: AHashMap<String, Vec<Subscriber<U>>>,
    any_name: Vec<Subscriber<U>>,
}

impl<U> Default for KindIndex<U> {
    fn default() -> Self {
        KindIndex {
            by_name: AHashMap::new(),
            any_name: Vec::new(),
        }
    }
}

struct Stream<U> {
    journal: Journal<Entry<U>>,
    index: AHashMap<Kind, KindIndex<U>>,
    /// Updates after this offset went unpublished while no subscription wanted them: a client
    /// resuming from it or before has missed them.
    gap_through: Option<u64>,
}

struct TenantStream<U> {
    inner: Mutex<Stream<U>>,
    subscriptions: AtomicUsize,
    /// Set when a publisher skipped an update for want of subscriptions.
    skipped: AtomicBool,
}

/// What [`Hub::subscribe`] did about the position the client resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// No position given: live updates from now on.
    Live,
    /// Every update after the position was queued (this many).
    Replayed(usize),
    /// Updates after the position are no longer kept: the caller sends a snapshot.
    NeedsSnapshot,
}

/// Bounds of each tenant's journal.
#[derive(Debug, Clone, Copy)]
pub struct JournalBounds {
    /// Most updates kept.
    pub messages: usize,
    /// Most bytes of updates kept, as publishers size them.
    pub bytes: usize,
}

/// Every tenant's stream (see the module doc).
pub struct Hub<U> {
    epoch: u64,
    bounds: JournalBounds,
    tenants: RwLock<AHashMap<String, Arc<TenantStream<U>>>>,
}

impl<U> Hub<U> {
    /// A hub of run `epoch` (a value no earlier run used, so their positions are known as
    /// such).
    pub fn new(epoch: u64, bounds: JournalBounds) -> Hub<U> {
        Hub {
            epoch,
            bounds,
            tenants: RwLock::new(AHashMap::new()),
        }
    }

    fn stream(&self, tenant: &str) -> Option<Arc<TenantStream<U>>> {
        self.tenants.read().expect("hub lock").get(tenant).cloned()
    }

    /// Whether `tenant` has any subscription. A publisher that is told no skips building its
    /// update, and the hub remembers that updates went unpublished.
    pub fn wanted(&self, tenant: &str) -> bool {
        let Some(t) = self.stream(tenant) else {
            return false;
        };
        let wanted = t.subscriptions.load(Ordering::Relaxed) > 0;
        // Read before writing: publishers ask this per update, and an unchanged flag keeps
        // its cache line shared between their threads.
        if !wanted && !t.skipped.load(Ordering::Relaxed) {
            t.skipped.store(true, Ordering::Relaxed);
        }
        wanted
    }

    /// The position of `tenant`'s newest update (a snapshot is as of it).
    pub fn head(&self, tenant: &str) -> Position {
        self.stream(tenant).map_or(
            Position {
                epoch: self.epoch,
                offset: 0,
            },
            |t| t.inner.lock().expect("stream lock").journal.head(),
        )
    }

    /// Publishes an update of `size` bytes to `tenant`: gives it the next position, keeps it
    /// and queues it for every subscription that selects it. `None` when the tenant has no
    /// subscription (nothing is kept then).
    pub fn publish(&self, tenant: &str, entry: Entry<U>, size: usize) -> Option<Position> {
        let t = self.stream(tenant)?;
        if t.subscriptions.load(Ordering::Relaxed) == 0 {
            t.skipped.store(true, Ordering::Relaxed);
            return None;
        }
        let entry = Arc::new(entry);
        let mut s = t.inner.lock().expect("stream lock");
        let position = s.journal.append(entry.clone(), size);
        if let Some(k) = s.index.get(&entry.kind) {
            let named = entry.name.as_deref().and_then(|n| k.by_name.get(n));
            for sub in named.into_iter().flatten().chain(&k.any_name) {
                if (sub.filter)(&entry.update) {
                    sub.connection.offer(Delivery {
                        subscription: sub.subscription,
                        position,
                        entry: entry.clone(),
                    });
                }
            }
        }
        Some(position)
    }

    /// Adds subscription number `subscription` of `connection` to `tenant`'s stream: updates
    /// of `kind` (of metric `name`, if given) that `filter` selects. With `since`, first queues
    /// every kept update after it, or answers [`Resumed::NeedsSnapshot`].
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        tenant: &str,
        connection: &Arc<Connection<U>>,
        subscription: u32,
        kind: Kind,
        name: Option<String>,
        filter: Filter<U>,
        since: Option<Position>,
    ) -> Resumed {
        let t = match self.stream(tenant) {
            Some(t) => t,
            None => self
                .tenants
                .write()
                .expect("hub lock")
                .entry(tenant.to_string())
                .or_insert_with(|| {
                    Arc::new(TenantStream {
                        inner: Mutex::new(Stream {
                            journal: Journal::new(
                                self.epoch,
                                self.bounds.messages,
                                self.bounds.bytes,
                            ),
                            index: AHashMap::new(),
                            gap_through: None,
                        }),
                        subscriptions: AtomicUsize::new(0),
                        skipped: AtomicBool::new(false),
                    })
                })
                .clone(),
        };
        let mut s = t.inner.lock().expect("stream lock");
        if t.skipped.swap(false, Ordering::Relaxed) {
            s.gap_through = Some(s.journal.head().offset);
        }
        let selects = |e: &Entry<U>| {
            e.kind == kind && name.as_ref().is_none_or(|n| e.name.as_ref() == Some(n))
        };
        let resumed = match since {
            None => Resumed::Live,
            Some(p) if p.epoch == self.epoch && s.gap_through.is_some_and(|g| p.offset <= g) => {
                Resumed::NeedsSnapshot
            }
            Some(p) => match s.journal.since(p, |e| selects(e) && filter(&e.update)) {
                Since::Gap => Resumed::NeedsSnapshot,
                Since::Replay(v) => {
                    let n = v.len();
                    for (position, entry) in v {
                        connection.offer(Delivery {
                            subscription,
                            position,
                            entry,
                        });
                    }
                    Resumed::Replayed(n)
                }
            },
        };
        let sub = Subscriber {
            connection: connection.clone(),
            subscription,
            filter,
        };
        let k = s.index.entry(kind).or_default();
        match name {
            Some(n) => k.by_name.entry(n).or_default().push(sub),
            None => k.any_name.push(sub),
        }
        t.subscriptions.fetch_add(1, Ordering::Relaxed);
        resumed
    }

    /// Removes subscription number `subscription` of `connection` (every one of the
    /// connection's with `None`, when it closes).
    pub fn unsubscribe(
        &self,
        tenant: &str,
        connection: &Arc<Connection<U>>,
        subscription: Option<u32>,
    ) {
        let Some(t) = self.stream(tenant) else { return };
        let mut s = t.inner.lock().expect("stream lock");
        let mut removed = 0;
        let mut keep = |v: &mut Vec<Subscriber<U>>| {
            let before = v.len();
            v.retain(|sub| {
                !(Arc::ptr_eq(&sub.connection, connection)
                    && subscription.is_none_or(|n| n == sub.subscription))
            });
            removed += before - v.len();
        };
        for k in s.index.values_mut() {
            k.by_name.values_mut().for_each(&mut keep);
            k.by_name.retain(|_, v| !v.is_empty());
            keep(&mut k.any_name);
        }
        t.subscriptions.fetch_sub(removed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Reading {
        device: &'static str,
        value: f64,
    }

    fn hub(messages: usize) -> Hub<Reading> {
        Hub::new(
            9,
            JournalBounds {
                messages,
                bytes: 1 << 20,
            },
        )
    }

    fn reading(device: &'static str, value: f64) -> Entry<Reading> {
        Entry {
            kind: Kind::Readings,
            name: Some("t".into()),
            conflation: None,
            update: Reading { device, value },
        }
    }

    fn of(device: &'static str) -> Filter<Reading> {
        Box::new(move |r: &Reading| r.device == device)
    }

    /// A new connection subscribed (as number 0) to every reading of tenant "t".
    fn every_reading(
        h: &Hub<Reading>,
        since: Option<Position>,
    ) -> (Arc<Connection<Reading>>, Resumed) {
        let c = Connection::new(100, || {});
        let r = h.subscribe("t", &c, 0, Kind::Readings, None, Box::new(|_| true), since);
        (c, r)
    }

    fn drain(c: &Connection<Reading>) -> Vec<(u64, f64)> {
        std::iter::from_fn(|| c.next())
            .map(|d| (d.position.offset, d.entry.update.value))
            .collect()
    }

    #[test]
    fn updates_reach_the_subscriptions_that_select_them() {
        let h = hub(100);
        assert!(!h.wanted("t1"));
        assert_eq!(h.publish("t1", reading("d1", 1.0), 10), None);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let c = Connection::new(16, move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let r = h.subscribe(
            "t1",
            &c,
            0,
            Kind::Readings,
            Some("t".into()),
            of("d1"),
            None,
        );
        assert_eq!(r, Resumed::Live);
        assert!(h.wanted("t1") && !h.wanted("t2"));
        h.publish("t1", reading("d1", 2.0), 10);
        h.publish("t1", reading("d2", 3.0), 10);
        let mut other = reading("d1", 4.0);
        other.name = Some("h".into());
        h.publish("t1", other, 10);
        h.publish("t2", reading("d1", 5.0), 10);
        h.publish("t1", reading("d1", 6.0), 10);
        // Offsets count every update kept for the tenant; the connection sees its own.
        assert_eq!(drain(&c), [(1, 2.0), (4, 6.0)]);
        assert_eq!(woken.load(Ordering::Relaxed), 2);
        assert_eq!(h.head("t1").offset, 4);
        h.unsubscribe("t1", &c, None);
        assert!(!h.wanted("t1"));
    }

    #[test]
    fn windows_conflate_and_a_full_outbox_marks_its_connection_slow() {
        let h = hub(100);
        let c = Connection::new(2, || {});
        h.subscribe("t", &c, 7, Kind::Windows, None, Box::new(|_| true), None);
        let window = |start: u64, revision: u64, v: f64| Entry {
            kind: Kind::Windows,
            name: Some("t".into()),
            conflation: Some(Conflation {
                key: start,
                rank: revision,
            }),
            update: Reading {
                device: "d1",
                value: v,
            },
        };
        h.publish("t", window(60, 0, 1.0), 10);
        h.publish("t", window(60, 1, 2.0), 10);
        h.publish("t", window(120, 0, 3.0), 10);
        assert_eq!(c.conflated.load(Ordering::Relaxed), 1);
        assert!(!c.is_slow());
        h.publish("t", window(180, 0, 4.0), 10);
        assert!(c.is_slow());
        let got: Vec<_> = std::iter::from_fn(|| c.next())
            .map(|d| (d.subscription, d.position.offset, d.entry.update.value))
            .collect();
        assert_eq!(got, [(7, 2, 2.0), (7, 3, 3.0)]);
    }

    #[test]
    fn a_resumed_subscription_gets_what_it_missed_or_is_told_to_take_a_snapshot() {
        let h = hub(3);
        let keeper = Connection::new(100, || {});
        h.subscribe(
            "t",
            &keeper,
            0,
            Kind::Readings,
            None,
            Box::new(|_| true),
            None,
        );
        let c = Connection::new(100, || {});
        h.subscribe("t", &c, 0, Kind::Readings, Some("t".into()), of("d1"), None);
        h.publish("t", reading("d1", 1.0), 10);
        let last = c.next().unwrap().position;
        h.unsubscribe("t", &c, Some(0));
        h.publish("t", reading("d1", 2.0), 10);
        h.publish("t", reading("d2", 3.0), 10);
        let c = Connection::new(100, || {});
        let r = h.subscribe(
            "t",
            &c,
            0,
            Kind::Readings,
            Some("t".into()),
            of("d1"),
            Some(last),
        );
        assert_eq!(r, Resumed::Replayed(1));
        h.publish("t", reading("d1", 4.0), 10);
        assert_eq!(drain(&c), [(2, 2.0), (4, 4.0)]);
        // Past the journal's bounds (3 kept: 3, 4, 5): a snapshot.
        h.publish("t", reading("d2", 5.0), 10);
        let (c2, r) = every_reading(&h, Some(last));
        assert_eq!(r, Resumed::NeedsSnapshot);
        // Another run's position: a snapshot.
        let old = Position {
            epoch: 8,
            offset: 4,
        };
        let r = h.subscribe(
            "t",
            &c2,
            1,
            Kind::Readings,
            None,
            Box::new(|_| true),
            Some(old),
        );
        assert_eq!(r, Resumed::NeedsSnapshot);
    }

    #[test]
    fn updates_skipped_while_nobody_listened_force_a_snapshot() {
        let h = hub(100);
        let (c, _) = every_reading(&h, None);
        h.publish("t", reading("d1", 1.0), 10);
        let last = c.next().unwrap().position;
        h.unsubscribe("t", &c, None);
        // A publisher asks first and skips: the update has no position.
        assert!(!h.wanted("t"));
        let (c, r) = every_reading(&h, Some(last));
        assert_eq!(r, Resumed::NeedsSnapshot);
        // Positions after the gap resume normally.
        h.publish("t", reading("d1", 2.0), 10);
        let after = c.next().unwrap().position;
        h.publish("t", reading("d1", 3.0), 10);
        let (_c2, r) = every_reading(&h, Some(after));
        assert_eq!(r, Resumed::Replayed(1));
    }
}
