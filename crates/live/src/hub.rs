//! The hub: each tenant's stream (a journal and the subscriptions reading it) and the
//! connections' outboxes the subscriptions fill.
//!
//! A publisher hands over an update with its kind and series key; the hub gives it the
//! tenant's next position, keeps it in the journal and offers it to the outbox of every
//! subscription whose selector matches the key. Subscriptions are indexed by one equality
//! matcher of their selector (a `device`, else the metric name), so an update is tested only
//! against those that can select it. Publishers ask first ([`Hub::generation`],
//! [`Hub::selects`]) and build only updates somebody selects; the answer for a series stays
//! valid until the generation changes (any tenant's subscriptions coming or going), so a
//! publisher caches it per series.
//! Nothing here waits for a client: an outbox that refuses an update marks its connection too
//! slow, and the connection's owner closes it.
//!
//! **Resume.** Only selected updates are kept, so the journal alone cannot tell whether a
//! client that reconnects missed something: updates of its series published while nobody
//! selected them were never kept. When a connection closes, its subscriptions therefore
//! *linger* for a while, journal-only, so updates they select are still kept; each
//! subscription knows the offset from which its selector has been covered without a break.
//! A client resuming a selector from a position at or after that offset, with the journal
//! still holding everything after it, gets exactly what it missed; otherwise it is told to
//! take a snapshot (Centrifuge's model, under Grafana Live, with a channel's history kept for
//! as long as its subscribers may come back).
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
use std::time::{Duration, Instant};
use strata_model::{MatchOp, Matcher, SeriesKey, SeriesKeyRef};

/// What a subscription selects: a series selector's alternative matcher sets (a key matches
/// when it passes every matcher of one set), or everything of its kind.
#[derive(Clone)]
pub struct Selector {
    text: String,
    sets: Vec<Vec<Matcher>>,
}

impl Selector {
    /// The selector written `text`, parsed into `sets` (no set: everything).
    pub fn new(text: impl Into<String>, sets: Vec<Vec<Matcher>>) -> Selector {
        Selector {
            text: text.into(),
            sets,
        }
    }

    /// Everything of a kind.
    pub fn all() -> Selector {
        Selector::new("", Vec::new())
    }

    /// The selector as written: subscriptions with equal text select alike.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when the series with `key` is selected.
    pub fn matches(&self, key: SeriesKeyRef<'_>) -> bool {
        self.sets.is_empty() || self.sets.iter().any(|s| Matcher::all_match(s, key))
    }

    /// The equality matcher the subscription is indexed by: one every selected key passes
    /// (so none with alternative sets), a `device` one before the metric name, which a whole
    /// fleet shares.
    fn anchor(&self) -> Option<(&str, &str)> {
        let [set] = self.sets.as_slice() else {
            return None;
        };
        let equal = |m: &&Matcher| matches!(m.op, MatchOp::Equal) && !m.value.is_empty();
        let named = |n: &str| set.iter().filter(equal).find(|m| m.name == n);
        named("device")
            .or_else(|| set.iter().filter(equal).find(|m| m.name != "__name__"))
            .or_else(|| named("__name__"))
            .map(|m| (m.name.as_str(), m.value.as_str()))
    }
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Selector({:?})", self.text)
    }
}

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
    /// The series (or alert, or device) it is about, as selectors see it.
    pub key: Arc<SeriesKey>,
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
    capacity: usize,
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
            capacity,
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
    /// `None` once its connection closed: it lingers, journal-only, until `until`.
    connection: Option<Arc<Connection<U>>>,
    until: Option<Instant>,
    subscription: u32,
    selector: Arc<Selector>,
    /// Every update it selects from this offset on was kept.
    covered_from: u64,
}

impl<U> Subscriber<U> {
    fn of(&self, connection: &Arc<Connection<U>>) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, connection))
    }
}

/// Subscriptions by their anchor's label value.
type ByValue<U> = AHashMap<Box<[u8]>, Vec<Subscriber<U>>>;

/// The subscriptions of one kind, by their anchor (label name, then value).
struct KindIndex<U> {
    anchored: AHashMap<Box<[u8]>, ByValue<U>>,
    rest: Vec<Subscriber<U>>,
}

impl<U> Default for KindIndex<U> {
    fn default() -> Self {
        KindIndex {
            anchored: AHashMap::new(),
            rest: Vec::new(),
        }
    }
}

impl<U> KindIndex<U> {
    /// Every subscription that may select `key` (its selector still to be asked).
    fn candidates<'a>(&'a self, key: SeriesKeyRef<'a>) -> impl Iterator<Item = &'a Subscriber<U>> {
        let anchored = key
            .pairs()
            .filter_map(|(n, v)| self.anchored.get(n)?.get(v))
            .flatten();
        anchored.chain(&self.rest)
    }

    fn add(&mut self, sub: Subscriber<U>) {
        match sub.selector.anchor() {
            Some((n, v)) => self
                .anchored
                .entry(n.as_bytes().into())
                .or_default()
                .entry(v.as_bytes().into())
                .or_default()
                .push(sub),
            None => self.rest.push(sub),
        }
    }

    /// Removes the subscriptions `gone` selects; returns them.
    fn remove(&mut self, mut gone: impl FnMut(&Subscriber<U>) -> bool) -> Vec<Subscriber<U>> {
        let mut out = Vec::new();
        let mut take = |v: &mut Vec<Subscriber<U>>| out.extend(v.extract_if(.., |s| gone(s)));
        for values in self.anchored.values_mut() {
            values.values_mut().for_each(&mut take);
            values.retain(|_, v| !v.is_empty());
        }
        self.anchored.retain(|_, v| !v.is_empty());
        take(&mut self.rest);
        out
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Subscriber<U>> {
        self.anchored
            .values_mut()
            .flat_map(|v| v.values_mut())
            .flatten()
            .chain(&mut self.rest)
    }
}

struct Stream<U> {
    journal: Journal<Entry<U>>,
    index: AHashMap<Kind, KindIndex<U>>,
}

impl<U> Stream<U> {
    /// Keeps `entry` and queues it for the live subscriptions that select it, when any
    /// subscription does (nothing is allocated otherwise).
    fn publish(&mut self, entry: Entry<U>, size: usize) -> Option<Position> {
        let Stream { journal, index } = self;
        let k = index.get(&entry.kind)?;
        let key = entry.key.clone();
        let key = key.as_ref().as_ref();
        let mut entry = Some(entry);
        let mut kept: Option<(Position, Arc<Entry<U>>)> = None;
        for sub in k.candidates(key).filter(|sub| sub.selector.matches(key)) {
            let (position, e) = kept.get_or_insert_with(|| {
                let e = Arc::new(entry.take().expect("kept once"));
                (journal.append(e.clone(), size), e)
            });
            if let Some(c) = &sub.connection {
                c.offer(Delivery {
                    subscription: sub.subscription,
                    position: *position,
                    entry: e.clone(),
                });
            }
        }
        kept.map(|(p, _)| p)
    }
}

struct TenantStream<U> {
    inner: Mutex<Stream<U>>,
    /// Subscriptions, lingering ones included.
    subscriptions: AtomicUsize,
}

/// What [`Hub::subscribe`] did about the position the client resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// No position given: live updates from now on.
    Live,
    /// Every update after the position was queued (this many).
    Replayed(usize),
    /// Updates after the position may be missing: the caller sends a snapshot.
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
    linger: Duration,
    tenants: RwLock<AHashMap<String, Arc<TenantStream<U>>>>,
    /// Changes whenever a subscription comes or goes.
    generation: AtomicU64,
}

impl<U> Hub<U> {
    /// A hub of run `epoch` (a value no earlier run used, so their positions are known as
    /// such) whose closed connections' subscriptions linger for `linger`.
    pub fn new(epoch: u64, bounds: JournalBounds, linger: Duration) -> Hub<U> {
        Hub {
            epoch,
            bounds,
            linger,
            tenants: RwLock::new(AHashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn stream(&self, tenant: &str) -> Option<Arc<TenantStream<U>>> {
        self.tenants.read().expect("hub lock").get(tenant).cloned()
    }

    /// The subscription generation (one for every tenant), `None` while `tenant` has no
    /// subscription: what [`Hub::selects`] answers for a series holds while the generation is
    /// unchanged.
    pub fn generation(&self, tenant: &str) -> Option<u64> {
        // Asked once per batch by every shard: the map is read in place, no handle taken.
        let tenants = self.tenants.read().expect("hub lock");
        (tenants.get(tenant)?.subscriptions.load(Ordering::Acquire) > 0)
            .then(|| self.generation.load(Ordering::Acquire))
    }

    /// Whether `tenant` has any subscription of `kind` (lingering ones included): one lock,
    /// for a publisher that would otherwise ask [`Hub::selects`] of many keys in vain.
    pub fn subscribed(&self, tenant: &str, kind: Kind) -> bool {
        let Some(t) = self.stream(tenant) else {
            return false;
        };
        let s = t.inner.lock().expect("stream lock");
        s.index
            .get(&kind)
            .is_some_and(|k| !k.rest.is_empty() || !k.anchored.is_empty())
    }

    /// Whether any subscription of `tenant` (lingering ones included) selects updates of
    /// `kind` about `key`.
    pub fn selects(&self, tenant: &str, kind: Kind, key: SeriesKeyRef<'_>) -> bool {
        let Some(t) = self.stream(tenant) else {
            return false;
        };
        let s = t.inner.lock().expect("stream lock");
        s.index
            .get(&kind)
            .is_some_and(|k| k.candidates(key).any(|sub| sub.selector.matches(key)))
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

    /// Publishes an update of `size` bytes to `tenant`: when a subscription selects it,
    /// gives it the next position, keeps it and queues it for every live one that selects
    /// it. `None` when none selects it (nothing is kept then).
    pub fn publish(&self, tenant: &str, entry: Entry<U>, size: usize) -> Option<Position> {
        let t = self.stream(tenant)?;
        if t.subscriptions.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut s = t.inner.lock().expect("stream lock");
        s.publish(entry, size)
    }

    /// As [`Hub::publish`] for each `(tenant, update, size)`, taking a tenant's lock once for
    /// each run of its updates.
    pub fn publish_all<T: AsRef<str>>(
        &self,
        updates: impl IntoIterator<Item = (T, Entry<U>, usize)>,
    ) {
        let mut it = updates.into_iter().peekable();
        while let Some((tenant, entry, size)) = it.next() {
            let tenant = tenant.as_ref();
            let run = std::iter::once((entry, size)).chain(std::iter::from_fn(|| {
                it.next_if(|(t, ..)| t.as_ref() == tenant)
                    .map(|(_, e, n)| (e, n))
            }));
            let t = self
                .stream(tenant)
                .filter(|t| t.subscriptions.load(Ordering::Relaxed) > 0);
            match t {
                Some(t) => {
                    let mut s = t.inner.lock().expect("stream lock");
                    run.for_each(|(e, n)| {
                        s.publish(e, n);
                    });
                }
                None => run.for_each(drop),
            }
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<TenantStream<U>> {
        if let Some(t) = self.stream(tenant) {
            return t;
        }
        let mut tenants = self.tenants.write().expect("hub lock");
        let t = tenants.entry(tenant.to_string()).or_insert_with(|| {
            Arc::new(TenantStream {
                inner: Mutex::new(Stream {
                    journal: Journal::new(self.epoch, self.bounds.messages, self.bounds.bytes),
                    index: AHashMap::new(),
                }),
                subscriptions: AtomicUsize::new(0),
            })
        });
        t.clone()
    }

    /// Adds subscription number `subscription` of `connection` to `tenant`'s stream: updates
    /// of `kind` that `selector` selects. With `since`, first queues every update after it
    /// when none can be missing, or answers [`Resumed::NeedsSnapshot`].
    pub fn subscribe(
        &self,
        tenant: &str,
        connection: &Arc<Connection<U>>,
        subscription: u32,
        kind: Kind,
        selector: Arc<Selector>,
        since: Option<Position>,
    ) -> Resumed {
        let t = self.tenant(tenant);
        let mut s = t.inner.lock().expect("stream lock");
        let head = s.journal.head().offset;
        let same = |sub: &Subscriber<U>| sub.selector.text == selector.text;
        let index = s.index.entry(kind).or_default();
        // A lingering subscription of the same selector is taken over, so a client that
        // comes back does not leave one behind each time; its coverage carries on.
        let taken = index.remove({
            let mut once = false;
            move |sub| {
                let take = !once && sub.connection.is_none() && same(sub);
                once |= take;
                take
            }
        });
        let covered_from = index
            .all_mut()
            .filter(|sub| same(sub))
            .map(|sub| sub.covered_from)
            .chain(taken.iter().map(|sub| sub.covered_from))
            .min();
        let resumed = match since {
            None => Resumed::Live,
            Some(p) if p.epoch != self.epoch || covered_from.is_none_or(|c| p.offset < c) => {
                Resumed::NeedsSnapshot
            }
            Some(p) => {
                let picks =
                    |e: &Entry<U>| e.kind == kind && selector.matches(e.key.as_ref().as_ref());
                match s.journal.since(p, picks) {
                    Since::Gap => Resumed::NeedsSnapshot,
                    // More than the outbox holds would close the client as too slow at
                    // once: the current state serves it better.
                    Since::Replay(v) if v.len() > connection.capacity => Resumed::NeedsSnapshot,
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
                }
            }
        };
        s.index.entry(kind).or_default().add(Subscriber {
            connection: Some(connection.clone()),
            until: None,
            subscription,
            selector,
            covered_from: covered_from.unwrap_or(head),
        });
        if taken.is_empty() {
            t.subscriptions.fetch_add(1, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::Release);
        resumed
    }

    /// Ends subscription number `subscription` of `connection` (the client asked: it does
    /// not linger).
    pub fn unsubscribe(&self, tenant: &str, connection: &Arc<Connection<U>>, subscription: u32) {
        self.remove(tenant, |sub| {
            sub.of(connection) && sub.subscription == subscription
        });
    }

    /// `connection` closed: its subscriptions linger, journal-only, for the hub's linger time
    /// (see the module doc).
    pub fn close(&self, tenant: &str, connection: &Arc<Connection<U>>) {
        let Some(t) = self.stream(tenant) else { return };
        if self.linger.is_zero() {
            self.remove(tenant, |sub| sub.of(connection));
            return;
        }
        let until = Instant::now() + self.linger;
        let mut s = t.inner.lock().expect("stream lock");
        for k in s.index.values_mut() {
            for sub in k.all_mut().filter(|sub| sub.of(connection)) {
                sub.connection = None;
                sub.until = Some(until);
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Drops lingering subscriptions whose time is up (the server calls this now and then).
    pub fn expire(&self, now: Instant) {
        let tenants: Vec<String> = self
            .tenants
            .read()
            .expect("hub lock")
            .keys()
            .cloned()
            .collect();
        for tenant in tenants {
            self.remove(&tenant, |sub| sub.until.is_some_and(|u| u <= now));
        }
    }

    fn remove(&self, tenant: &str, mut gone: impl FnMut(&Subscriber<U>) -> bool) {
        let Some(t) = self.stream(tenant) else { return };
        let mut s = t.inner.lock().expect("stream lock");
        let removed: usize = s
            .index
            .values_mut()
            .map(|k| k.remove(&mut gone).len())
            .sum();
        if removed > 0 {
            t.subscriptions.fetch_sub(removed, Ordering::Release);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Subscriptions of every tenant: (live, lingering).
    pub fn subscriptions(&self) -> (usize, usize) {
        let tenants: Vec<_> = self
            .tenants
            .read()
            .expect("hub lock")
            .values()
            .cloned()
            .collect();
        let mut n = (0, 0);
        for t in tenants {
            let mut s = t.inner.lock().expect("stream lock");
            for k in s.index.values_mut() {
                for sub in k.all_mut() {
                    if sub.connection.is_some() {
                        n.0 += 1;
                    } else {
                        n.1 += 1;
                    }
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Reading(f64);

    fn hub(messages: usize) -> Hub<Reading> {
        Hub::new(
            9,
            JournalBounds {
                messages,
                bytes: 1 << 20,
            },
            Duration::from_secs(3600),
        )
    }

    fn key(name: &str, device: &str) -> Arc<SeriesKey> {
        Arc::new(SeriesKey::from_sorted_pairs([
            (b"__name__".as_slice(), name.as_bytes()),
            (b"device".as_slice(), device.as_bytes()),
        ]))
    }

    fn reading(device: &str, value: f64) -> Entry<Reading> {
        Entry {
            kind: Kind::Readings,
            key: key("t", device),
            conflation: None,
            update: Reading(value),
        }
    }

    fn device(d: &str) -> Arc<Selector> {
        Arc::new(Selector::new(
            format!("t{{device=\"{d}\"}}"),
            vec![vec![
                Matcher::equal("__name__", "t"),
                Matcher::equal("device", d),
            ]],
        ))
    }

    /// A new connection subscribed (as number 0) to every reading of tenant "t".
    fn every_reading(
        h: &Hub<Reading>,
        since: Option<Position>,
    ) -> (Arc<Connection<Reading>>, Resumed) {
        let c = Connection::new(100, || {});
        let r = h.subscribe("t", &c, 0, Kind::Readings, Arc::new(Selector::all()), since);
        (c, r)
    }

    /// A new connection subscribed (as number 0) to device d1's readings of tenant "t".
    fn d1_readings(
        h: &Hub<Reading>,
        since: Option<Position>,
    ) -> (Arc<Connection<Reading>>, Resumed) {
        let c = Connection::new(100, || {});
        let r = h.subscribe("t", &c, 0, Kind::Readings, device("d1"), since);
        (c, r)
    }

    fn drain(c: &Connection<Reading>) -> Vec<(u64, f64)> {
        std::iter::from_fn(|| c.next())
            .map(|d| (d.position.offset, d.entry.update.0))
            .collect()
    }

    #[test]
    fn selectors_anchor_on_a_device_then_another_label_then_the_name() {
        let sel = |sets: Vec<Vec<Matcher>>| Selector::new("x", sets);
        let name = Matcher::equal("__name__", "t");
        let anchor = |s: &Selector| s.anchor().map(|(n, v)| format!("{n}={v}"));
        let site = Matcher::equal("site", "s1");
        let dev = Matcher::equal("device", "d1");
        let s = sel(vec![vec![name.clone(), site.clone(), dev.clone()]]);
        assert_eq!(anchor(&s).as_deref(), Some("device=d1"));
        let s = sel(vec![vec![name.clone(), site.clone()]]);
        assert_eq!(anchor(&s).as_deref(), Some("site=s1"));
        let s = sel(vec![vec![name.clone(), Matcher::not_equal("site", "s1")]]);
        assert_eq!(anchor(&s).as_deref(), Some("__name__=t"));
        let s = sel(vec![vec![Matcher::regex("device", "d.*", false).unwrap()]]);
        assert_eq!(anchor(&s), None);
        assert_eq!(anchor(&sel(vec![vec![name.clone()], vec![site]])), None);
        assert!(Selector::all().matches(key("x", "y").as_ref().as_ref()));
    }

    #[test]
    fn updates_reach_the_subscriptions_that_select_them() {
        let h = hub(100);
        assert_eq!(h.generation("t1"), None);
        assert_eq!(h.publish("t1", reading("d1", 1.0), 10), None);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let c = Connection::new(16, move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let r = h.subscribe("t1", &c, 0, Kind::Readings, device("d1"), None);
        assert_eq!(r, Resumed::Live);
        let g = h.generation("t1").unwrap();
        assert_eq!(h.generation("t2"), None);
        assert!(h.selects("t1", Kind::Readings, key("t", "d1").as_ref().as_ref()));
        assert!(!h.selects("t1", Kind::Readings, key("t", "d2").as_ref().as_ref()));
        assert!(!h.selects("t1", Kind::Windows, key("t", "d1").as_ref().as_ref()));
        h.publish("t1", reading("d1", 2.0), 10);
        // Nobody selects these: no position, nothing kept.
        assert_eq!(h.publish("t1", reading("d2", 3.0), 10), None);
        let mut other = reading("d1", 4.0);
        other.key = key("h", "d1");
        assert_eq!(h.publish("t1", other, 10), None);
        h.publish("t2", reading("d1", 5.0), 10);
        h.publish("t1", reading("d1", 6.0), 10);
        assert_eq!(drain(&c), [(1, 2.0), (2, 6.0)]);
        assert_eq!(woken.load(Ordering::Relaxed), 2);
        assert_eq!(h.head("t1").offset, 2);
        h.unsubscribe("t1", &c, 0);
        assert_eq!(h.generation("t1"), None);
        h.subscribe("t1", &c, 1, Kind::Readings, device("d1"), None);
        assert!(h.generation("t1").unwrap() > g);
        assert_eq!(h.subscriptions(), (1, 0));
    }

    #[test]
    fn windows_conflate_and_a_full_outbox_marks_its_connection_slow() {
        let h = hub(100);
        let c = Connection::new(2, || {});
        h.subscribe("t", &c, 7, Kind::Windows, Arc::new(Selector::all()), None);
        let window = |start: u64, revision: u64, v: f64| Entry {
            kind: Kind::Windows,
            key: key("t", "d1"),
            conflation: Some(Conflation {
                key: start,
                rank: revision,
            }),
            update: Reading(v),
        };
        h.publish("t", window(60, 0, 1.0), 10);
        h.publish("t", window(60, 1, 2.0), 10);
        h.publish("t", window(120, 0, 3.0), 10);
        assert_eq!(c.conflated.load(Ordering::Relaxed), 1);
        assert!(!c.is_slow());
        h.publish("t", window(180, 0, 4.0), 10);
        assert!(c.is_slow());
        let got: Vec<_> = std::iter::from_fn(|| c.next())
            .map(|d| (d.subscription, d.position.offset, d.entry.update.0))
            .collect();
        assert_eq!(got, [(7, 2, 2.0), (7, 3, 3.0)]);
    }

    #[test]
    fn a_closed_connections_subscriptions_linger_so_its_client_resumes_exactly() {
        let h = hub(100);
        let (c, _) = d1_readings(&h, None);
        h.publish("t", reading("d1", 1.0), 10);
        let last = c.next().unwrap().position;
        h.close("t", &c);
        assert_eq!(h.subscriptions(), (0, 1));
        // Still selected while lingering: kept, delivered to nobody.
        h.publish("t", reading("d1", 2.0), 10);
        h.publish("t", reading("d2", 3.0), 10);
        let (c, r) = d1_readings(&h, Some(last));
        assert_eq!(r, Resumed::Replayed(1));
        // The lingering one was taken over, not left behind.
        assert_eq!(h.subscriptions(), (1, 0));
        h.publish("t", reading("d1", 4.0), 10);
        assert_eq!(drain(&c), [(2, 2.0), (3, 4.0)]);
        // More to replay than the outbox holds: a snapshot instead.
        let small = Connection::new(1, || {});
        let from = Position {
            epoch: 9,
            offset: 1,
        };
        let r = h.subscribe("t", &small, 0, Kind::Readings, device("d1"), Some(from));
        assert_eq!(r, Resumed::NeedsSnapshot);
        // Up to date: nothing to replay.
        let again = Connection::new(100, || {});
        let r = h.subscribe(
            "t",
            &again,
            0,
            Kind::Readings,
            device("d1"),
            Some(h.head("t")),
        );
        assert_eq!(r, Resumed::Replayed(0));
    }

    #[test]
    fn a_resume_that_may_have_missed_updates_needs_a_snapshot() {
        let h = hub(3);
        let (c, _) = d1_readings(&h, None);
        h.publish("t", reading("d1", 1.0), 10);
        let last = c.next().unwrap().position;
        // Unsubscribed (not closed): nothing lingers, so d1's next reading is not kept.
        h.unsubscribe("t", &c, 0);
        let (_keeper, _) = every_reading(&h, None);
        h.publish("t", reading("d1", 2.0), 10);
        let (_c, r) = d1_readings(&h, Some(last));
        assert_eq!(r, Resumed::NeedsSnapshot);
        // Covered from the keeper's start on: a position after it resumes normally.
        let (_c2, r) = every_reading(&h, Some(last));
        assert_eq!(r, Resumed::Replayed(1));
        // Past the journal's bounds (3 kept): a snapshot.
        for v in [3.0, 4.0, 5.0] {
            h.publish("t", reading("d2", v), 10);
        }
        let (_c3, r) = every_reading(&h, Some(last));
        assert_eq!(r, Resumed::NeedsSnapshot);
        // Another run's position: a snapshot.
        let old = Position {
            epoch: 8,
            offset: 4,
        };
        let (_c4, r) = every_reading(&h, Some(old));
        assert_eq!(r, Resumed::NeedsSnapshot);
    }

    #[test]
    fn lingering_subscriptions_expire() {
        let h = hub(100);
        let (c, _) = d1_readings(&h, None);
        h.publish("t", reading("d1", 1.0), 10);
        let last = c.next().unwrap().position;
        h.close("t", &c);
        h.expire(Instant::now());
        assert_eq!(h.subscriptions(), (0, 1));
        h.expire(Instant::now() + Duration::from_secs(3601));
        assert_eq!(h.subscriptions(), (0, 0));
        assert_eq!(h.generation("t"), None);
        assert_eq!(h.publish("t", reading("d1", 2.0), 10), None);
        let (_c, r) = d1_readings(&h, Some(last));
        assert_eq!(r, Resumed::NeedsSnapshot);
    }
}
