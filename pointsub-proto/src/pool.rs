//! Client stream pool bookkeeping.
//!
//! Streams are grouped by a key (for the client: peer and protocol) and
//! multiplexed: one stream carries up to `max_inflight_per_stream` requests
//! at once, each holding a *slot*. The pool decides which stream a request
//! uses, when a new stream must be opened, which idle streams are closed, and
//! who waits when the pool is full. It never touches a stream itself: it
//! tells the caller what to open ([`Acquire::Open`], [`GrantKind::Open`]) and
//! what to close ([`StreamPool::poll_close`]).
//!
//! # Policy
//!
//! [`StreamPool::acquire`] takes, in this order:
//! 1. a slot on the least-loaded open stream of the key (ties: lowest id),
//!    [`Acquire::Ready`];
//! 2. a slot on a still-opening stream of the key, [`Acquire::Pending`];
//! 3. a new stream if fewer than `max_total` exist, [`Acquire::Open`];
//! 4. a new stream in place of the least recently used idle stream of
//!    another key, which is closed, [`Acquire::Open`];
//! 5. otherwise the request waits, [`Acquire::Queued`].
//!
//! In steps 1 and 2 a stream has a free slot while it carries fewer than
//! `max_inflight_per_stream` requests, except while the key has fewer than
//! `spread_streams` streams and the pool is not full: then only while it
//! carries fewer than a quarter of that (at least 1). A key under load
//! thus gets a second stream (by default) at 64 requests in flight rather
//! than at 256, and its requests are spread over both: each stream's
//! frames are packed, written and read by its own task, so two streams
//! keep two threads busy where one would leave the second idle. Past
//! that, streams fill to the full `max_inflight_per_stream` before more
//! are opened, so many requests in flight still need few streams.
//!
//! Waiters are served first come, first served: a slot freed on a stream of
//! key K goes to the oldest waiter of K; room for a new stream (a stream
//! discarded or evicted, or one left idle while others wait) goes to the
//! oldest waiter of any key. Grants come out of [`StreamPool::poll_grant`].
//!
//! An idle stream (open, no request in flight) is closed when it has been
//! idle for `idle_timeout`, or when more than `max_idle` streams are idle
//! (least recently used first).
//!
//! # Retiring
//!
//! [`StreamPool::retire`] takes a stream out of service without breaking
//! it (for instance a stream on a relayed connection once a direct one to
//! the same peer exists): no request is handed a slot on it any more, the
//! requests already on it finish, and it comes out of
//! [`StreamPool::poll_close`] as soon as it is open with none left. Until
//! then it still counts towards `max_total`.
//!
//! # Polling
//!
//! After every mutating call, drain [`StreamPool::poll_grant`] and
//! [`StreamPool::poll_close`] until `None`, then wake up at
//! [`StreamPool::poll_timeout`] and call [`StreamPool::handle_timeout`].
//! A grant still unpolled when its stream is discarded (for instance while
//! the caller handles the grant before it) is revoked, and its waiter goes
//! back to its place in the queue, so a polled grant always names a stream
//! the pool still held when the grant was made and has not removed since.
//!
//! # Invariants
//!
//! After every call: `total = open + opening <= max_total`,
//! `idle <= max_idle`, no stream carries more than `max_inflight_per_stream`
//! requests, and if any request waits then the pool is full, no stream is
//! idle and no stream of a waiting key has a free slot. A stream that was
//! discarded or closed is never handed out again, and each queued waiter is
//! granted at most once.

use crate::{Instant, StreamId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Limits of a [`StreamPool`], for the whole pool (all keys together).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most idle streams kept open (the spec's `MaxIdleConns`, 100).
    pub max_idle: usize,
    /// Most streams, open or opening (100); `0` counts as 1.
    pub max_total: usize,
    /// An idle stream is closed after this long (the spec's
    /// `IdleConnTimeout`, 5 min).
    pub idle_timeout: Duration,
    /// Most requests one stream carries at once (256, as
    /// [`ClientConfig`](crate::ClientConfig)'s default); `0` counts as 1.
    pub max_inflight_per_stream: usize,
    /// Streams a key's requests are spread over before any of them
    /// carries more than a quarter of `max_inflight_per_stream` (2, as
    /// [`ClientConfig`](crate::ClientConfig)'s default): see the policy
    /// in the [module docs](self). `0` and `1` mean no spreading.
    pub spread_streams: usize,
}

impl PoolConfig {
    /// The load at which a stream counts as full while its key is still
    /// being spread (`spread_streams`): a quarter of
    /// `max_inflight_per_stream`, at least 1.
    pub fn spread_below(&self) -> usize {
        (self.max_inflight_per_stream / 4).max(1)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle: 100,
            max_total: 100,
            idle_timeout: Duration::from_secs(5 * 60),
            max_inflight_per_stream: 256,
            spread_streams: 2,
        }
    }
}

/// The answer to [`StreamPool::acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// A slot was taken on this open stream: send right away.
    Ready(StreamId),
    /// A slot was reserved on this stream, which is still opening: send once
    /// it is open (or fail if it does not open).
    Pending(StreamId),
    /// A new stream was allocated with a slot reserved: the caller must open
    /// it now and report [`StreamPool::opened`] or [`StreamPool::discard`].
    Open(StreamId),
    /// No capacity: the waiter is queued and will come out of
    /// [`StreamPool::poll_grant`], unless cancelled first.
    Queued,
}

/// How a queued waiter was served; same meaning as the [`Acquire`] variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    /// A slot on an open stream.
    Ready,
    /// A slot on a stream that is still opening.
    Pending,
    /// A new stream the caller must now open, with a slot reserved.
    Open,
}

/// A queued waiter that got a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The waiter id given to [`StreamPool::acquire`].
    pub waiter: u64,
    /// The stream the slot is on.
    pub stream: StreamId,
    /// Whether the stream is open, opening, or must be opened.
    pub kind: GrantKind,
}

/// A snapshot of the pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Streams open or opening.
    pub total: usize,
    /// Streams open.
    pub open: usize,
    /// Streams still opening.
    pub opening: usize,
    /// Open streams with no request in flight.
    pub idle: usize,
    /// Slots taken, over all streams.
    pub in_flight: usize,
    /// Queued waiters.
    pub waiting: usize,
    /// Streams retired ([`StreamPool::retire`]) whose requests are still
    /// finishing (counted in `total` too).
    pub retiring: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Opening,
    Open,
}

#[derive(Clone, Debug)]
struct Stream<K> {
    key: K,
    state: State,
    in_flight: usize,
    /// `Some` exactly when the stream is in the idle set, with its entry's time.
    idle_since: Option<Instant>,
    /// Retired: out of its key's load index, closed once its requests end.
    retired: bool,
}

/// A grant made but not yet polled.
/// A stream's place in its key's load index: (opening, in flight, id).
type Slot = (bool, usize, StreamId);

fn slot_of<K>(id: StreamId, s: &Stream<K>) -> Slot {
    (s.state == State::Opening, s.in_flight, id)
}

/// Moves a stream within its key's load index.
fn reindex<K: Ord>(by_key: &mut BTreeMap<K, SlotIndex>, key: &K, before: Slot, after: Slot) {
    if let Some(set) = by_key.get_mut(key) {
        set.replace(before, after);
    }
}

/// One key's streams, sorted by [`Slot`]: a sorted vector. A key has few
/// streams, and a request moves its stream by a place or two (its load
/// changes by one), so updating in place costs a binary search and a
/// swap or two, where an ordered tree cost a removal and an insertion
/// (and often a node freed and allocated again) on every take and release.
#[derive(Clone, Debug, Default)]
struct SlotIndex(Vec<Slot>);

impl SlotIndex {
    fn insert(&mut self, slot: Slot) {
        if let Err(i) = self.0.binary_search(&slot) {
            self.0.insert(i, slot);
        }
    }

    fn remove(&mut self, slot: &Slot) {
        if let Ok(i) = self.0.binary_search(slot) {
            self.0.remove(i);
        }
    }

    /// Replaces `before` by `after` and moves it to its sorted place.
    fn replace(&mut self, before: Slot, after: Slot) {
        if before == after {
            return;
        }
        let Ok(mut i) = self.0.binary_search(&before) else {
            self.insert(after);
            return;
        };
        self.0[i] = after;
        while i > 0 && self.0[i - 1] > self.0[i] {
            self.0.swap(i - 1, i);
            i -= 1;
        }
        while i + 1 < self.0.len() && self.0[i] > self.0[i + 1] {
            self.0.swap(i, i + 1);
            i += 1;
        }
    }

    /// How many streams the key has (retired ones are not indexed).
    fn len(&self) -> usize {
        self.0.len()
    }

    /// The least-loaded stream, open ones first.
    fn first(&self) -> Option<&Slot> {
        self.0.first()
    }

    /// The least-loaded stream still opening.
    fn first_opening(&self) -> Option<&Slot> {
        self.0.get(self.0.partition_point(|s| !s.0))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(debug_assertions)]
    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.0.iter()
    }

    #[cfg(debug_assertions)]
    fn contains(&self, slot: &Slot) -> bool {
        self.0.binary_search(slot).is_ok()
    }
}

#[derive(Clone, Debug)]
struct Unpolled<K> {
    grant: Grant,
    seq: u64,
    key: K,
}

/// Stream pool bookkeeping for one client, generic over the pool key (for
/// example peer and protocol). See the [module docs](self) for the policy.
#[derive(Clone, Debug)]
pub struct StreamPool<K: Ord + Clone> {
    cfg: PoolConfig,
    next_id: u64,
    streams: BTreeMap<StreamId, Stream<K>>,
    /// Each key's streams ordered by how a request picks one: open before
    /// opening, then least loaded, then lowest id.
    by_key: BTreeMap<K, SlotIndex>,
    /// Idle streams, least recently used first.
    idle: BTreeSet<(Instant, StreamId)>,
    opening: usize,
    in_flight: usize,
    next_seq: u64,
    /// Queued waiters in arrival order: sequence number → (waiter, key).
    queue: BTreeMap<u64, (u64, K)>,
    /// Sequence numbers of each key's waiters.
    key_queue: BTreeMap<K, BTreeSet<u64>>,
    /// Waiter id → sequence number.
    waiter_seq: BTreeMap<u64, u64>,
    /// Grants not yet polled, with their waiter's place in the queue so a
    /// grant on a stream discarded before it was polled can be revoked.
    grants: VecDeque<Unpolled<K>>,
    /// Keys whose waiters were re-queued by a revoked grant, to be served.
    requeued: BTreeSet<K>,
    closes: VecDeque<StreamId>,
    /// Streams retired and not yet closed.
    retiring: usize,
}

impl<K: Ord + Clone> StreamPool<K> {
    /// An empty pool. Stream ids are allocated here, increasing from 1 and
    /// never reused.
    pub fn new(cfg: PoolConfig) -> Self {
        let mut cfg = cfg;
        cfg.max_total = cfg.max_total.max(1);
        cfg.max_inflight_per_stream = cfg.max_inflight_per_stream.max(1);
        StreamPool {
            cfg,
            next_id: 1,
            streams: BTreeMap::new(),
            by_key: BTreeMap::new(),
            idle: BTreeSet::new(),
            opening: 0,
            in_flight: 0,
            next_seq: 0,
            queue: BTreeMap::new(),
            key_queue: BTreeMap::new(),
            waiter_seq: BTreeMap::new(),
            grants: VecDeque::new(),
            requeued: BTreeSet::new(),
            closes: VecDeque::new(),
            retiring: 0,
        }
    }

    // ----- mutators -----

    /// Takes a slot for one request of `key` (see the policy in the
    /// [module docs](self)). On [`Acquire::Queued`] the request waits under
    /// the id `waiter` until a [`Grant`] for it comes out of
    /// [`StreamPool::poll_grant`] or it is cancelled. If `waiter` is already
    /// queued, its old entry is dropped first.
    pub fn acquire(&mut self, key: &K, waiter: u64, now: Instant) -> Acquire {
        if let Some(&seq) = self.waiter_seq.get(&waiter) {
            self.dequeue(seq);
        }
        let answer = if let Some((id, state)) = self.best_slot(key) {
            self.take_slot(id);
            match state {
                State::Open => Acquire::Ready(id),
                State::Opening => Acquire::Pending(id),
            }
        } else if self.make_room(key) {
            Acquire::Open(self.allocate(key))
        } else {
            self.enqueue(waiter, key);
            Acquire::Queued
        };
        // Serves waiters whose grants an eviction above revoked, if any.
        self.settle(None, now);
        answer
    }

    /// The stream finished opening: from now on its slots are
    /// [`Acquire::Ready`]. Ignored for a stream that is unknown or already open.
    pub fn opened(&mut self, stream: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.state != State::Opening {
            return;
        }
        let before = slot_of(stream, s);
        s.state = State::Open;
        let after = slot_of(stream, s);
        self.opening -= 1;
        let key = s.key.clone();
        if s.retired {
            if s.in_flight == 0 {
                // Every request on it ended while it opened.
                self.evict(stream);
            }
        } else {
            reindex(&mut self.by_key, &key, before, after);
            if s.in_flight == 0 {
                self.mark_idle(stream, now);
            }
        }
        self.settle(Some(&key), now);
    }

    /// One request on `stream` is done and the stream is healthy: its slot is
    /// freed, and goes to a waiter if one can use it. A stream left with no
    /// request becomes idle. Ignored for an unknown stream or one with no
    /// slot taken.
    pub fn release(&mut self, stream: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.in_flight == 0 {
            return;
        }
        let before = slot_of(stream, s);
        s.in_flight -= 1;
        let after = slot_of(stream, s);
        self.in_flight -= 1;
        let key = s.key.clone();
        if s.retired {
            if s.in_flight == 0 && s.state == State::Open {
                // Its last request ended: close it, and its room goes to
                // waiters.
                self.evict(stream);
            }
        } else {
            reindex(&mut self.by_key, &key, before, after);
            if s.in_flight == 0 && s.state == State::Open {
                self.mark_idle(stream, now);
            }
        }
        self.settle(Some(&key), now);
    }

    /// The stream failed (reset, closed by the remote, failed to open, …): it
    /// is removed with all its slots and never handed out again. The room it
    /// leaves goes to waiters. Grants on it that were not yet polled are
    /// revoked: their waiters go back to their place in the queue (and are
    /// usually served again at once). Ignored for an unknown stream.
    pub fn discard(&mut self, stream: StreamId, now: Instant) {
        if let Some(s) = self.remove(stream) {
            self.settle(Some(&s.key), now);
        }
    }

    /// Takes `stream` out of service without breaking it: no request gets
    /// a slot on it any more, the requests on it now finish as usual, and
    /// it comes out of [`StreamPool::poll_close`] once it is open with no
    /// request left (at once if it is idle). New requests of its key get
    /// another stream. Ignored for an unknown or already retired stream.
    pub fn retire(&mut self, stream: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.retired {
            return;
        }
        s.retired = true;
        self.retiring += 1;
        let slot = slot_of(stream, s);
        let key = s.key.clone();
        let done = s.state == State::Open && s.in_flight == 0;
        if let Some(since) = s.idle_since.take() {
            self.idle.remove(&(since, stream));
        }
        if let Some(set) = self.by_key.get_mut(&key) {
            set.remove(&slot);
            if set.is_empty() {
                self.by_key.remove(&key);
            }
        }
        if done {
            self.evict(stream);
        }
        self.settle(Some(&key), now);
    }

    /// Whether `stream` was retired ([`StreamPool::retire`]) and is still
    /// in the pool, its requests finishing.
    pub fn is_retired(&self, stream: StreamId) -> bool {
        self.streams.get(&stream).is_some_and(|s| s.retired)
    }

    /// Removes a queued waiter (its deadline passed or it was cancelled).
    /// Returns whether it was queued; `false` also when it was already
    /// granted, in which case its [`Grant`] is (or was) in
    /// [`StreamPool::poll_grant`] and its slot must be released as usual.
    pub fn cancel_waiter(&mut self, waiter: u64) -> bool {
        match self.waiter_seq.get(&waiter) {
            Some(&seq) => {
                self.dequeue(seq);
                true
            }
            None => false,
        }
    }

    /// Closes idle streams whose idle timeout has passed at `now`; they come
    /// out of [`StreamPool::poll_close`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(since, id)) = self.idle.first() {
            if since + self.cfg.idle_timeout > now {
                break;
            }
            self.evict(id);
        }
        self.settle(None, now);
    }

    /// Closes everything (client shutdown): returns every stream of the pool
    /// and those evicted but not yet polled from [`StreamPool::poll_close`],
    /// in id order, for the caller to close. Waiters and unpolled grants are
    /// dropped. Stream ids keep increasing afterwards.
    pub fn drain(&mut self) -> Vec<StreamId> {
        let mut ids: Vec<StreamId> = self.closes.drain(..).collect();
        ids.extend(self.streams.keys().copied());
        ids.sort_unstable();
        self.streams.clear();
        self.by_key.clear();
        self.idle.clear();
        self.opening = 0;
        self.in_flight = 0;
        self.queue.clear();
        self.key_queue.clear();
        self.waiter_seq.clear();
        self.grants.clear();
        self.requeued.clear();
        self.retiring = 0;
        ids
    }

    // ----- polling -----

    /// The next waiter that got a slot, in the order grants were made (FIFO
    /// per resource).
    pub fn poll_grant(&mut self) -> Option<Grant> {
        self.grants.pop_front().map(|u| u.grant)
    }

    /// The next stream the pool evicted (idle timeout, over `max_idle`, or
    /// closed to make room for another key). It is already removed from the
    /// pool: the caller only has to close it.
    pub fn poll_close(&mut self) -> Option<StreamId> {
        self.closes.pop_front()
    }

    /// When [`StreamPool::handle_timeout`] must next be called: the earliest
    /// idle expiry, `None` if no stream is idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.idle
            .first()
            .map(|&(since, _)| since + self.cfg.idle_timeout)
    }

    // ----- getters -----

    /// The key of `stream`, if it is in the pool.
    pub fn key_of(&self, stream: StreamId) -> Option<&K> {
        self.streams.get(&stream).map(|s| &s.key)
    }

    /// Slots taken on `stream` (0 if unknown).
    pub fn in_flight(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.in_flight)
    }

    /// Whether `stream` is in the pool (open or opening).
    pub fn contains(&self, stream: StreamId) -> bool {
        self.streams.contains_key(&stream)
    }

    /// Whether `waiter` is queued.
    pub fn is_waiting(&self, waiter: u64) -> bool {
        self.waiter_seq.contains_key(&waiter)
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            total: self.streams.len(),
            open: self.streams.len() - self.opening,
            opening: self.opening,
            idle: self.idle.len(),
            in_flight: self.in_flight,
            waiting: self.queue.len(),
            retiring: self.retiring,
        }
    }

    /// The configuration in force (zero `max_total` and
    /// `max_inflight_per_stream` raised to 1).
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    // ----- internals -----

    /// The stream of `key` a new request should use: the least-loaded open
    /// one with a free slot (ties: lowest id), else the least-loaded opening
    /// one.
    fn best_slot(&self, key: &K) -> Option<(StreamId, State)> {
        let set = self.by_key.get(key)?;
        let cap = self.slot_cap(set.len());
        // The least-loaded open stream comes first; if it is full, so are
        // all open ones, and the least-loaded opening one is next in line.
        let open = set.first().filter(|s| !s.0 && s.1 < cap);
        let pick = open.or_else(|| set.first_opening().filter(|s| s.1 < cap));
        let pick = pick.map(|&(opening, _, id)| {
            let state = if opening { State::Opening } else { State::Open };
            (id, state)
        });
        #[cfg(debug_assertions)]
        {
            // The index must agree with a scan of the streams.
            let scan = set
                .iter()
                .filter_map(|&(_, _, id)| self.streams.get(&id).map(|s| (id, s)))
                .filter(|(_, s)| s.in_flight < cap)
                .min_by_key(|(id, s)| (s.state == State::Opening, s.in_flight, *id))
                .map(|(id, s)| (id, s.state));
            assert_eq!(pick, scan, "pool load index out of step");
        }
        pick
    }

    /// The load under which a stream of a key with `streams` streams has
    /// a free slot (the spreading rule in the [module docs](self)).
    fn slot_cap(&self, streams: usize) -> usize {
        if streams < self.cfg.spread_streams && self.streams.len() < self.cfg.max_total {
            self.cfg.spread_below()
        } else {
            self.cfg.max_inflight_per_stream
        }
    }

    fn take_slot(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            debug_assert!(false, "slot taken on unknown stream {id}");
            return;
        };
        debug_assert!(s.in_flight < self.cfg.max_inflight_per_stream);
        let before = slot_of(id, s);
        s.in_flight += 1;
        let after = slot_of(id, s);
        self.in_flight += 1;
        reindex(&mut self.by_key, &s.key, before, after);
        if let Some(since) = s.idle_since.take() {
            self.idle.remove(&(since, id));
        }
    }

    fn mark_idle(&mut self, id: StreamId, now: Instant) {
        if let Some(s) = self.streams.get_mut(&id) {
            debug_assert!(s.idle_since.is_none());
            s.idle_since = Some(now);
            self.idle.insert((now, id));
        }
    }

    /// Makes room for a new stream of `key`, if need be by evicting the least
    /// recently used idle stream of another key. Returns whether there is room.
    fn make_room(&mut self, key: &K) -> bool {
        if self.streams.len() < self.cfg.max_total {
            return true;
        }
        let victim = self
            .idle
            .iter()
            .map(|&(_, id)| id)
            .find(|id| self.streams.get(id).is_some_and(|s| s.key != *key));
        match victim {
            Some(victim) => {
                self.evict(victim);
                debug_assert!(self.streams.len() < self.cfg.max_total);
                true
            }
            None => false,
        }
    }

    fn allocate(&mut self, key: &K) -> StreamId {
        let id = StreamId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        self.streams.insert(
            id,
            Stream {
                key: key.clone(),
                state: State::Opening,
                in_flight: 1,
                idle_since: None,
                retired: false,
            },
        );
        self.by_key
            .entry(key.clone())
            .or_default()
            .insert((true, 1, id));
        self.opening += 1;
        self.in_flight += 1;
        id
    }

    /// Removes a stream and revokes the unpolled grants on it.
    fn remove(&mut self, id: StreamId) -> Option<Stream<K>> {
        let s = self.streams.remove(&id)?;
        if self.grants.iter().any(|u| u.grant.stream == id) {
            for u in std::mem::take(&mut self.grants) {
                if u.grant.stream != id {
                    self.grants.push_back(u);
                } else if !self.waiter_seq.contains_key(&u.grant.waiter) {
                    self.enqueue_at(u.seq, u.grant.waiter, &u.key);
                    self.requeued.insert(u.key);
                }
            }
        }
        if let Some(set) = self.by_key.get_mut(&s.key) {
            set.remove(&slot_of(id, &s));
            if set.is_empty() {
                self.by_key.remove(&s.key);
            }
        }
        if let Some(since) = s.idle_since {
            self.idle.remove(&(since, id));
        }
        if s.state == State::Opening {
            self.opening -= 1;
        }
        if s.retired {
            self.retiring -= 1;
        }
        self.in_flight -= s.in_flight;
        Some(s)
    }

    fn evict(&mut self, id: StreamId) {
        if self.remove(id).is_some() {
            self.closes.push_back(id);
        }
    }

    fn enqueue(&mut self, waiter: u64, key: &K) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.enqueue_at(seq, waiter, key);
    }

    fn enqueue_at(&mut self, seq: u64, waiter: u64, key: &K) {
        self.queue.insert(seq, (waiter, key.clone()));
        self.key_queue.entry(key.clone()).or_default().insert(seq);
        self.waiter_seq.insert(waiter, seq);
    }

    /// Takes waiter `seq` out of the queue and records its grant.
    fn grant(&mut self, seq: u64, stream: StreamId, kind: GrantKind) {
        let Some((waiter, key)) = self.queue.get(&seq).cloned() else {
            debug_assert!(false, "grant for a waiter not queued");
            return;
        };
        self.dequeue(seq);
        self.grants.push_back(Unpolled {
            grant: Grant {
                waiter,
                stream,
                kind,
            },
            seq,
            key,
        });
    }

    fn dequeue(&mut self, seq: u64) -> Option<u64> {
        let (waiter, key) = self.queue.remove(&seq)?;
        if let Some(set) = self.key_queue.get_mut(&key) {
            set.remove(&seq);
            if set.is_empty() {
                self.key_queue.remove(&key);
            }
        }
        self.waiter_seq.remove(&waiter);
        Some(waiter)
    }

    /// Gives free slots of `key`'s streams to `key`'s waiters, oldest first.
    fn serve_key(&mut self, key: &K) {
        while let Some(seq) = self.key_queue.get(key).and_then(|s| s.first().copied()) {
            let Some((id, state)) = self.best_slot(key) else {
                break;
            };
            self.take_slot(id);
            let kind = match state {
                State::Open => GrantKind::Ready,
                State::Opening => GrantKind::Pending,
            };
            self.grant(seq, id, kind);
        }
    }

    /// Gives room for new streams to the oldest waiters of any key.
    fn serve_oldest(&mut self) {
        while let Some((&seq, (_, key))) = self.queue.first_key_value() {
            let key = key.clone();
            if self.best_slot(&key).is_some() {
                // Cannot happen while the invariants hold; serve it anyway.
                self.serve_key(&key);
                continue;
            }
            if !self.make_room(&key) {
                break;
            }
            let id = self.allocate(&key);
            self.grant(seq, id, GrantKind::Open);
            // The new stream has free slots for more waiters of the key.
            self.serve_key(&key);
        }
    }

    /// Serves waiters after a change, then enforces `max_idle`.
    fn settle(&mut self, key: Option<&K>, now: Instant) {
        if let Some(key) = key {
            self.serve_key(key);
        }
        loop {
            for key in std::mem::take(&mut self.requeued) {
                self.serve_key(&key);
            }
            self.serve_oldest();
            while self.idle.len() > self.cfg.max_idle {
                let Some(&(_, id)) = self.idle.first() else {
                    break;
                };
                self.evict(id);
            }
            // Evicting a stream with unpolled grants (possible only if the
            // caller released slots it did not hold) re-queues their waiters.
            // Streams just granted are busy, so this ends after one more round.
            if self.requeued.is_empty() {
                break;
            }
        }
        self.check_invariants(now);
    }

    /// Checks every invariant (debug builds only; linear in the pool's size).
    fn check_invariants(&self, _now: Instant) {
        #[cfg(debug_assertions)]
        {
            let cap = self.cfg.max_inflight_per_stream;
            assert!(self.streams.len() <= self.cfg.max_total, "total over max");
            assert!(self.idle.len() <= self.cfg.max_idle, "idle over max");
            let mut opening = 0;
            let mut in_flight = 0;
            let mut idle = 0;
            let mut retiring = 0;
            for (id, s) in &self.streams {
                assert!(s.in_flight <= cap, "stream {id} over its slot cap");
                let indexed = self
                    .by_key
                    .get(&s.key)
                    .is_some_and(|set| set.contains(&slot_of(*id, s)));
                assert_eq!(indexed, !s.retired, "load index entry of {id}");
                retiring += usize::from(s.retired);
                if s.retired {
                    assert!(
                        s.state == State::Opening || s.in_flight > 0,
                        "retired stream {id} left unclosed"
                    );
                }
                opening += usize::from(s.state == State::Opening);
                in_flight += s.in_flight;
                let should_idle = s.state == State::Open && s.in_flight == 0 && !s.retired;
                assert_eq!(s.idle_since.is_some(), should_idle, "idle mark of {id}");
                if let Some(since) = s.idle_since {
                    assert!(self.idle.contains(&(since, *id)));
                    idle += 1;
                }
                assert!(id.0 < self.next_id);
            }
            assert_eq!(opening, self.opening);
            assert_eq!(in_flight, self.in_flight);
            assert_eq!(idle, self.idle.len());
            assert_eq!(retiring, self.retiring);
            assert_eq!(
                self.by_key.values().map(SlotIndex::len).sum::<usize>(),
                self.streams.len() - retiring
            );
            assert!(self.by_key.values().all(|s| !s.is_empty()));
            assert!(self.requeued.is_empty());
            assert_eq!(self.queue.len(), self.waiter_seq.len());
            assert_eq!(
                self.key_queue.values().map(BTreeSet::len).sum::<usize>(),
                self.queue.len()
            );
            for (seq, (w, k)) in &self.queue {
                assert_eq!(self.waiter_seq.get(w), Some(seq));
                assert!(self.key_queue.get(k).is_some_and(|s| s.contains(seq)));
            }
            if !self.queue.is_empty() {
                assert_eq!(self.streams.len(), self.cfg.max_total, "waiter starves");
                assert!(self.idle.is_empty(), "waiter starves beside an idle stream");
                for k in self.key_queue.keys() {
                    assert!(self.best_slot(k).is_none(), "waiter starves beside a slot");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a";
    const B: &str = "b";

    fn t(secs: u64) -> Instant {
        Instant::from_millis(secs * 1000)
    }

    fn pool(max_total: usize, max_idle: usize, cap: usize) -> StreamPool<&'static str> {
        StreamPool::new(PoolConfig {
            max_idle,
            max_total,
            idle_timeout: Duration::from_secs(60),
            max_inflight_per_stream: cap,
            spread_streams: 1,
        })
    }

    fn grants(p: &mut StreamPool<&'static str>) -> Vec<Grant> {
        std::iter::from_fn(|| p.poll_grant()).collect()
    }

    fn closes(p: &mut StreamPool<&'static str>) -> Vec<StreamId> {
        std::iter::from_fn(|| p.poll_close()).collect()
    }

    fn open_one(p: &mut StreamPool<&'static str>, key: &'static str, w: u64) -> StreamId {
        let Acquire::Open(id) = p.acquire(&key, w, t(0)) else {
            panic!("expected Open");
        };
        p.opened(id, t(0));
        id
    }

    #[test]
    fn defaults_are_the_specs() {
        let c = PoolConfig::default();
        assert_eq!((c.max_idle, c.max_total), (100, 100));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        let p: StreamPool<u8> = StreamPool::new(PoolConfig {
            max_total: 0,
            max_inflight_per_stream: 0,
            ..c
        });
        assert_eq!(p.config().max_total, 1);
        assert_eq!(p.config().max_inflight_per_stream, 1);
        assert_eq!(p.stats(), PoolStats::default());
    }

    #[test]
    fn idle_stream_is_reused() {
        let mut p = pool(10, 10, 1);
        let s = open_one(&mut p, A, 1);
        assert_eq!(s, StreamId(1));
        assert_eq!(p.stats().idle, 0);
        p.release(s, t(1));
        assert_eq!(p.stats().idle, 1);
        assert_eq!(p.acquire(&A, 2, t(2)), Acquire::Ready(s));
        assert_eq!(p.stats().idle, 0);
        assert_eq!(p.in_flight(s), 1);
        assert_eq!(p.key_of(s), Some(&A));
    }

    #[test]
    fn multiplexes_up_to_the_cap() {
        let mut p = pool(10, 10, 4);
        assert_eq!(p.acquire(&A, 1, t(0)), Acquire::Open(StreamId(1)));
        for w in 2..=4 {
            assert_eq!(p.acquire(&A, w, t(0)), Acquire::Pending(StreamId(1)));
        }
        assert_eq!(p.in_flight(StreamId(1)), 4);
        // Full: a second stream.
        assert_eq!(p.acquire(&A, 5, t(0)), Acquire::Open(StreamId(2)));
        p.opened(StreamId(1), t(0));
        p.opened(StreamId(2), t(0));
        // Least loaded first: stream 2 has 1, stream 1 has 4.
        assert_eq!(p.acquire(&A, 6, t(0)), Acquire::Ready(StreamId(2)));
        p.release(StreamId(1), t(0));
        p.release(StreamId(1), t(0));
        // Now 2 and 2: the tie goes to the lowest id.
        assert_eq!(p.acquire(&A, 7, t(0)), Acquire::Ready(StreamId(1)));
        let st = p.stats();
        assert_eq!((st.total, st.open, st.opening, st.in_flight), (2, 2, 0, 5));
    }

    #[test]
    fn open_stream_preferred_over_opening_one() {
        let mut p = pool(10, 10, 4);
        let s1 = open_one(&mut p, A, 1);
        for w in 2..=4 {
            assert_eq!(p.acquire(&A, w, t(0)), Acquire::Ready(s1));
        }
        assert_eq!(p.acquire(&A, 5, t(0)), Acquire::Open(StreamId(2)));
        p.release(s1, t(0));
        // s1 has 3 in flight and is open; stream 2 has 1 and is opening.
        assert_eq!(p.acquire(&A, 6, t(0)), Acquire::Ready(s1));
        assert_eq!(p.acquire(&A, 7, t(0)), Acquire::Pending(StreamId(2)));
    }

    #[test]
    fn waiters_are_served_fifo() {
        let mut p = pool(1, 1, 1);
        let s = open_one(&mut p, A, 1);
        for w in 2..=4 {
            assert_eq!(p.acquire(&A, w, t(0)), Acquire::Queued);
        }
        assert_eq!(p.stats().waiting, 3);
        assert!(p.is_waiting(3));
        let mut order = Vec::new();
        for _ in 0..3 {
            p.release(s, t(1));
            let g = grants(&mut p);
            assert_eq!(g.len(), 1);
            assert_eq!((g[0].stream, g[0].kind), (s, GrantKind::Ready));
            order.push(g[0].waiter);
        }
        assert_eq!(order, [2, 3, 4]);
        p.release(s, t(1));
        assert!(grants(&mut p).is_empty());
        assert_eq!(p.stats().idle, 1);
    }

    #[test]
    fn freed_slot_goes_to_its_key_and_idle_stream_to_the_oldest_waiter() {
        let mut p = pool(1, 1, 2);
        let s = open_one(&mut p, A, 1);
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Ready(s));
        assert_eq!(p.acquire(&B, 10, t(0)), Acquire::Queued);
        assert_eq!(p.acquire(&A, 3, t(0)), Acquire::Queued);
        assert_eq!(p.acquire(&B, 11, t(0)), Acquire::Queued);
        // A slot of A frees: the waiter of A gets it though B's is older.
        p.release(s, t(1));
        assert_eq!(
            grants(&mut p),
            [Grant {
                waiter: 3,
                stream: s,
                kind: GrantKind::Ready
            }]
        );
        p.release(s, t(1));
        assert!(grants(&mut p).is_empty());
        // A goes idle while B waits: it is closed and B gets a new stream,
        // whose second slot goes to B's next waiter.
        p.release(s, t(2));
        assert_eq!(closes(&mut p), [s]);
        let s2 = StreamId(2);
        assert_eq!(
            grants(&mut p),
            [
                Grant {
                    waiter: 10,
                    stream: s2,
                    kind: GrantKind::Open
                },
                Grant {
                    waiter: 11,
                    stream: s2,
                    kind: GrantKind::Pending
                }
            ]
        );
        assert!(!p.contains(s));
        assert_eq!(p.stats().waiting, 0);
    }

    #[test]
    fn idle_streams_expire() {
        let mut p = pool(10, 10, 1);
        let s1 = open_one(&mut p, A, 1);
        let s2 = open_one(&mut p, B, 2);
        assert_eq!(p.poll_timeout(), None);
        p.release(s1, t(10));
        p.release(s2, t(20));
        assert_eq!(p.poll_timeout(), Some(t(70)));
        p.handle_timeout(t(69));
        assert!(closes(&mut p).is_empty());
        p.handle_timeout(t(70));
        assert_eq!(closes(&mut p), [s1]);
        assert_eq!(p.poll_timeout(), Some(t(80)));
        // Using a stream resets its idle clock.
        assert_eq!(p.acquire(&B, 3, t(75)), Acquire::Ready(s2));
        p.release(s2, t(76));
        p.handle_timeout(t(100));
        assert!(closes(&mut p).is_empty());
        p.handle_timeout(t(136));
        assert_eq!(closes(&mut p), [s2]);
        assert_eq!(p.stats(), PoolStats::default());
    }

    #[test]
    fn max_idle_closes_the_least_recently_used() {
        let mut p = pool(10, 2, 1);
        let ids: Vec<StreamId> = (0..3).map(|w| open_one(&mut p, A, w)).collect();
        p.release(ids[1], t(1));
        p.release(ids[0], t(2));
        assert!(closes(&mut p).is_empty());
        p.release(ids[2], t(3));
        assert_eq!(closes(&mut p), [ids[1]]);
        assert_eq!(p.stats().idle, 2);
        // max_idle 0 keeps nothing idle.
        let mut p = pool(10, 0, 1);
        let s = open_one(&mut p, A, 1);
        p.release(s, t(1));
        assert_eq!(closes(&mut p), [s]);
        // A stream whose slots were all released while opening goes idle
        // (and is then subject to max_idle) once open.
        let mut p = pool(10, 0, 1);
        let Acquire::Open(s) = p.acquire(&A, 1, t(0)) else {
            panic!()
        };
        p.release(s, t(0));
        assert_eq!(p.stats().idle, 0);
        assert!(p.contains(s));
        p.opened(s, t(1));
        assert_eq!(closes(&mut p), [s]);
    }

    #[test]
    fn discarded_stream_is_never_reused() {
        let mut p = pool(1, 1, 2);
        let Acquire::Open(s) = p.acquire(&A, 1, t(0)) else {
            panic!()
        };
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Pending(s));
        assert_eq!(p.acquire(&A, 3, t(0)), Acquire::Queued);
        // It failed to open: its room goes to the waiter, on a new stream.
        p.discard(s, t(1));
        assert!(!p.contains(s));
        assert_eq!(
            grants(&mut p),
            [Grant {
                waiter: 3,
                stream: StreamId(2),
                kind: GrantKind::Open
            }]
        );
        // Late reports about the dead stream are ignored.
        p.release(s, t(1));
        p.opened(s, t(1));
        p.discard(s, t(1));
        assert_eq!(p.acquire(&A, 4, t(2)), Acquire::Pending(StreamId(2)));
        assert!(closes(&mut p).is_empty());
        assert_eq!(p.stats().total, 1);
    }

    #[test]
    fn unpolled_grants_on_a_discarded_stream_are_revoked() {
        let mut p = pool(1, 1, 2);
        let Acquire::Open(s1) = p.acquire(&A, 1, t(0)) else {
            panic!()
        };
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Pending(s1));
        assert_eq!(p.acquire(&A, 3, t(0)), Acquire::Queued);
        assert_eq!(p.acquire(&A, 4, t(0)), Acquire::Queued);
        p.discard(s1, t(1));
        let s2 = StreamId(2);
        let g = p.poll_grant().unwrap();
        assert_eq!((g.waiter, g.stream, g.kind), (3, s2, GrantKind::Open));
        // Waiter 3 is gone by now: the caller drops the new stream before
        // polling the next grant, which was a slot on that same stream.
        p.discard(s2, t(2));
        assert_eq!(
            grants(&mut p),
            [Grant {
                waiter: 4,
                stream: StreamId(3),
                kind: GrantKind::Open
            }]
        );
        assert!(!p.contains(s2));
        assert_eq!(p.stats().in_flight, 1);
    }

    #[test]
    fn idle_stream_of_another_key_is_evicted() {
        let mut p = pool(1, 1, 1);
        let a = open_one(&mut p, A, 1);
        p.release(a, t(1));
        assert_eq!(p.acquire(&B, 2, t(2)), Acquire::Open(StreamId(2)));
        assert_eq!(closes(&mut p), [a]);
        // A busy stream is not evicted: the next request waits.
        assert_eq!(p.acquire(&A, 3, t(3)), Acquire::Queued);
        assert!(closes(&mut p).is_empty());
    }

    #[test]
    fn cross_key_eviction_takes_the_least_recently_used() {
        let mut p = pool(3, 3, 1);
        let a = open_one(&mut p, A, 1);
        let b = open_one(&mut p, B, 2);
        let c = open_one(&mut p, "c", 3);
        p.release(b, t(1));
        p.release(a, t(2));
        p.release(c, t(3));
        assert_eq!(p.acquire(&"d", 4, t(4)), Acquire::Open(StreamId(4)));
        assert_eq!(closes(&mut p), [b]);
        assert_eq!(p.acquire(&"e", 5, t(5)), Acquire::Open(StreamId(5)));
        assert_eq!(closes(&mut p), [a]);
    }

    #[test]
    fn cancelled_waiter_is_not_granted() {
        let mut p = pool(1, 1, 1);
        let s = open_one(&mut p, A, 1);
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Queued);
        assert_eq!(p.acquire(&A, 3, t(0)), Acquire::Queued);
        assert!(p.cancel_waiter(2));
        assert!(!p.cancel_waiter(2));
        assert!(!p.cancel_waiter(99));
        p.release(s, t(1));
        assert_eq!(grants(&mut p)[0].waiter, 3);
        assert!(!p.cancel_waiter(3));
    }

    #[test]
    fn requeued_waiter_keeps_one_entry() {
        let mut p = pool(1, 1, 1);
        let s = open_one(&mut p, A, 1);
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Queued);
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Queued);
        assert_eq!(p.stats().waiting, 1);
        p.release(s, t(1));
        p.release(s, t(1));
        assert_eq!(grants(&mut p).len(), 1);
    }

    #[test]
    fn over_release_is_ignored() {
        let mut p = pool(2, 2, 2);
        let s = open_one(&mut p, A, 1);
        p.release(s, t(1));
        p.release(s, t(1));
        p.release(StreamId(77), t(1));
        assert_eq!(p.in_flight(s), 0);
        assert_eq!(p.stats().in_flight, 0);
        assert_eq!(p.stats().idle, 1);
    }

    #[test]
    fn retired_stream_finishes_its_requests_then_closes() {
        let mut p = pool(10, 10, 4);
        let s = open_one(&mut p, A, 1);
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Ready(s));
        p.retire(s, t(1));
        assert!(p.is_retired(s));
        assert!(closes(&mut p).is_empty(), "closed with requests on it");
        assert_eq!(p.stats().retiring, 1);
        // New requests of the key get a new stream, not the retired one.
        assert_eq!(p.acquire(&A, 3, t(1)), Acquire::Open(StreamId(2)));
        p.opened(StreamId(2), t(1));
        assert_eq!(p.acquire(&A, 4, t(1)), Acquire::Ready(StreamId(2)));
        p.release(s, t(2));
        assert!(closes(&mut p).is_empty());
        assert_eq!(p.in_flight(s), 1);
        p.release(s, t(3));
        assert_eq!(closes(&mut p), [s]);
        assert!(!p.contains(s));
        let st = p.stats();
        assert_eq!((st.total, st.retiring, st.idle, st.in_flight), (1, 0, 0, 2));
        // Retiring again, or a stream that is gone, changes nothing.
        p.retire(s, t(3));
        assert_eq!(p.stats().retiring, 0);
    }

    #[test]
    fn retired_idle_stream_closes_at_once() {
        let mut p = pool(10, 10, 1);
        let s = open_one(&mut p, A, 1);
        p.release(s, t(1));
        assert_eq!(p.stats().idle, 1);
        p.retire(s, t(2));
        assert_eq!(closes(&mut p), [s]);
        assert_eq!(p.stats(), PoolStats::default());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn retired_opening_stream_serves_its_reserved_slots_then_closes() {
        let mut p = pool(10, 10, 2);
        let Acquire::Open(s) = p.acquire(&A, 1, t(0)) else {
            panic!()
        };
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Pending(s));
        p.retire(s, t(0));
        // Its free slot is no longer offered.
        assert_eq!(p.acquire(&A, 3, t(0)), Acquire::Open(StreamId(2)));
        p.opened(s, t(1));
        assert!(closes(&mut p).is_empty());
        p.release(s, t(1));
        p.release(s, t(1));
        assert_eq!(closes(&mut p), [s]);
        // All its requests gave up while it opened: closed once open.
        let Acquire::Open(s3) = p.acquire(&B, 4, t(2)) else {
            panic!()
        };
        p.retire(s3, t(2));
        p.release(s3, t(2));
        assert!(closes(&mut p).is_empty());
        p.opened(s3, t(3));
        assert_eq!(closes(&mut p), [s3]);
    }

    #[test]
    fn room_left_by_a_retired_stream_goes_to_waiters() {
        let mut p = pool(1, 1, 1);
        let s = open_one(&mut p, A, 1);
        p.retire(s, t(0));
        // The pool is full with the retired stream: the next request waits
        // for it to finish, then gets a new stream.
        assert_eq!(p.acquire(&A, 2, t(0)), Acquire::Queued);
        p.release(s, t(1));
        assert_eq!(closes(&mut p), [s]);
        assert_eq!(
            grants(&mut p),
            [Grant {
                waiter: 2,
                stream: StreamId(2),
                kind: GrantKind::Open
            }]
        );
    }

    #[test]
    fn drain_returns_everything() {
        let mut p = pool(2, 0, 1);
        let a = open_one(&mut p, A, 1);
        let b = open_one(&mut p, B, 2);
        assert_eq!(p.acquire(&A, 3, t(0)), Acquire::Queued);
        p.release(a, t(1)); // goes to waiter 3
        assert_eq!(grants(&mut p).len(), 1);
        p.release(a, t(1)); // idle, then closed: max_idle is 0
        assert_eq!(p.drain(), [a, b]);
        assert_eq!(p.stats(), PoolStats::default());
        assert_eq!(p.poll_grant(), None);
        assert_eq!(p.poll_close(), None);
        assert_eq!(p.acquire(&A, 4, t(2)), Acquire::Open(StreamId(3)));
    }
}
