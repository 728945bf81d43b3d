//! Property tests of the core's bookkeeping: stream pool, admission, backoff
//! and closest-node routing, driven by random operation sequences.

use pointsub_proto::admission::{Admission, AdmissionConfig, Rejection};
use pointsub_proto::pool::{Acquire, GrantKind, PoolConfig, StreamPool};
use pointsub_proto::retry::{Backoff, Rng};
use pointsub_proto::route::{RouteConfig, Router, distance, key_hash};
use pointsub_proto::{Instant, PeerKey, Protocol, StreamId};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// ---------------------------------------------------------------- pool ----

#[derive(Clone, Debug)]
enum PoolOp {
    Acquire(u8),
    Opened(usize),
    Release(usize),
    Discard(usize),
    DiscardDead(usize),
    Cancel(usize),
    /// Takes a live stream out of service (e.g. it rides on a relayed
    /// connection and a direct one appeared).
    Retire(usize),
    Advance(u64),
    Drain,
    /// The next waiter granted a new stream turns out to be gone: the caller
    /// discards that stream before polling the remaining grants.
    DropNextOpenGrant,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        6 => (0u8..3).prop_map(PoolOp::Acquire),
        3 => any::<usize>().prop_map(PoolOp::Opened),
        6 => any::<usize>().prop_map(PoolOp::Release),
        1 => any::<usize>().prop_map(PoolOp::Discard),
        1 => any::<usize>().prop_map(PoolOp::DiscardDead),
        1 => any::<usize>().prop_map(PoolOp::Cancel),
        1 => any::<usize>().prop_map(PoolOp::Retire),
        2 => (0u64..20_000).prop_map(PoolOp::Advance),
        1 => Just(PoolOp::Drain),
        1 => Just(PoolOp::DropNextOpenGrant),
    ]
}

/// What the test knows from the pool's answers alone.
struct Model {
    cfg: PoolConfig,
    now: Instant,
    next_waiter: u64,
    /// Streams the pool holds, with their key.
    live: BTreeMap<StreamId, u8>,
    /// Live streams the caller has opened.
    opened: BTreeSet<StreamId>,
    /// One entry per slot the caller holds.
    held: Vec<StreamId>,
    /// Queued waiters and their keys.
    queued: BTreeMap<u64, u8>,
    granted: BTreeSet<u64>,
    /// Streams discarded or closed: never to be handed out again.
    dead: BTreeSet<StreamId>,
    /// Live streams retired: never handed out again, closed once unused.
    retired: BTreeSet<StreamId>,
    max_id: u64,
    drop_next_open: bool,
}

impl Model {
    fn new(cfg: PoolConfig) -> Self {
        Model {
            cfg,
            now: Instant::ZERO,
            next_waiter: 0,
            live: BTreeMap::new(),
            opened: BTreeSet::new(),
            held: Vec::new(),
            queued: BTreeMap::new(),
            granted: BTreeSet::new(),
            dead: BTreeSet::new(),
            retired: BTreeSet::new(),
            max_id: 0,
            drop_next_open: false,
        }
    }

    fn new_stream(&mut self, s: StreamId, key: u8) -> Result<(), TestCaseError> {
        prop_assert!(s.0 > self.max_id, "stream id {s} reused or not increasing");
        self.max_id = s.0;
        self.live.insert(s, key);
        self.held.push(s);
        Ok(())
    }

    fn take(&mut self, s: StreamId, key: u8, open: bool) -> Result<(), TestCaseError> {
        prop_assert!(!self.dead.contains(&s), "dead stream {s} handed out");
        prop_assert!(!self.retired.contains(&s), "retired stream {s} handed out");
        prop_assert_eq!(self.live.get(&s), Some(&key), "stream {} of wrong key", s);
        prop_assert_eq!(
            self.opened.contains(&s),
            open,
            "ready/pending mismatch on {}",
            s
        );
        self.held.push(s);
        Ok(())
    }

    fn load(&self, s: StreamId) -> usize {
        self.held.iter().filter(|h| **h == s).count()
    }

    /// Checks the pick of `acquire` against the policy: the least-loaded open
    /// stream of the key (ties: lowest id), else an opening one, else none;
    /// a stream is free below a quarter of the cap while the key has fewer
    /// than `spread_streams` streams and the pool has room.
    fn check_pick(&self, key: u8, picked: Option<(StreamId, bool)>) -> Result<(), TestCaseError> {
        let streams = self
            .live
            .iter()
            .filter(|(s, k)| **k == key && !self.retired.contains(s))
            .count();
        let cap = if streams < self.cfg.spread_streams && self.live.len() < self.cfg.max_total {
            (self.cfg.max_inflight_per_stream / 4).max(1)
        } else {
            self.cfg.max_inflight_per_stream
        };
        let free: Vec<(bool, usize, StreamId)> = self
            .live
            .iter()
            .filter(|(s, k)| **k == key && self.load(**s) < cap && !self.retired.contains(s))
            .map(|(s, _)| (!self.opened.contains(s), self.load(*s), *s))
            .collect();
        let best = free.iter().min().map(|&(opening, _, s)| (s, !opening));
        prop_assert_eq!(picked, best, "acquire picked against the policy");
        Ok(())
    }

    fn kill(&mut self, s: StreamId) {
        self.live.remove(&s);
        self.opened.remove(&s);
        self.held.retain(|h| *h != s);
        self.retired.remove(&s);
        self.dead.insert(s);
    }

    /// Drains the pool's outputs into the model and checks every invariant.
    fn sync(&mut self, pool: &mut StreamPool<u8>) -> Result<(), TestCaseError> {
        while let Some(g) = pool.poll_grant() {
            let key = self.queued.remove(&g.waiter);
            prop_assert!(key.is_some(), "grant for waiter {} not queued", g.waiter);
            prop_assert!(self.granted.insert(g.waiter), "waiter granted twice");
            let key = key.unwrap_or_default();
            match g.kind {
                GrantKind::Open if self.drop_next_open => {
                    self.drop_next_open = false;
                    self.new_stream(g.stream, key)?;
                    pool.discard(g.stream, self.now);
                    self.kill(g.stream);
                }
                GrantKind::Open => self.new_stream(g.stream, key)?,
                GrantKind::Ready => self.take(g.stream, key, true)?,
                GrantKind::Pending => self.take(g.stream, key, false)?,
            }
        }
        while let Some(s) = pool.poll_close() {
            prop_assert!(self.live.contains_key(&s), "closed unknown stream {s}");
            prop_assert!(self.opened.contains(&s), "closed a stream still opening");
            prop_assert!(!self.held.contains(&s), "closed a busy stream {s}");
            self.kill(s);
        }
        let st = pool.stats();
        prop_assert_eq!(st.total, self.live.len());
        prop_assert_eq!(st.open + st.opening, st.total);
        prop_assert_eq!(st.open, self.opened.len());
        prop_assert!(st.total <= self.cfg.max_total);
        prop_assert!(st.idle <= self.cfg.max_idle);
        prop_assert_eq!(st.in_flight, self.held.len());
        prop_assert_eq!(st.waiting, self.queued.len());
        prop_assert_eq!(st.retiring, self.retired.len());
        let mut idle = 0;
        for (&s, &key) in &self.live {
            prop_assert!(pool.contains(s));
            prop_assert_eq!(pool.key_of(s), Some(&key));
            let n = self.held.iter().filter(|h| **h == s).count();
            prop_assert_eq!(pool.in_flight(s), n);
            prop_assert!(n <= self.cfg.max_inflight_per_stream);
            let retired = self.retired.contains(&s);
            prop_assert_eq!(pool.is_retired(s), retired);
            if n == 0 && self.opened.contains(&s) {
                // An open stream with no request is idle, unless retired:
                // then it must have been closed already.
                prop_assert!(!retired, "retired stream {} left open and unused", s);
                idle += 1;
            }
        }
        prop_assert_eq!(st.idle, idle);
        for s in &self.dead {
            prop_assert!(!pool.contains(*s));
        }
        if !self.queued.is_empty() {
            // Nobody waits while capacity exists.
            prop_assert_eq!(st.total, self.cfg.max_total, "waiter beside free room");
            prop_assert_eq!(st.idle, 0, "waiter beside an idle stream");
            let waiting_keys: BTreeSet<u8> = self.queued.values().copied().collect();
            for (&s, key) in &self.live {
                if waiting_keys.contains(key) && !self.retired.contains(&s) {
                    prop_assert_eq!(
                        pool.in_flight(s),
                        self.cfg.max_inflight_per_stream,
                        "waiter beside a free slot"
                    );
                }
            }
        }
        match pool.poll_timeout() {
            Some(t) => prop_assert!(st.idle > 0 && t > self.now, "stale idle deadline"),
            None => prop_assert_eq!(st.idle, 0),
        }
        Ok(())
    }

    fn apply(&mut self, pool: &mut StreamPool<u8>, op: &PoolOp) -> Result<(), TestCaseError> {
        match *op {
            PoolOp::Acquire(key) => {
                let w = self.next_waiter;
                self.next_waiter += 1;
                let answer = pool.acquire(&key, w, self.now);
                self.check_pick(
                    key,
                    match answer {
                        Acquire::Ready(s) => Some((s, true)),
                        Acquire::Pending(s) => Some((s, false)),
                        Acquire::Open(_) | Acquire::Queued => None,
                    },
                )?;
                match answer {
                    Acquire::Ready(s) => self.take(s, key, true)?,
                    Acquire::Pending(s) => self.take(s, key, false)?,
                    Acquire::Open(s) => self.new_stream(s, key)?,
                    Acquire::Queued => {
                        self.queued.insert(w, key);
                    }
                }
            }
            PoolOp::Opened(i) => {
                let unopened: Vec<StreamId> = self
                    .live
                    .keys()
                    .filter(|s| !self.opened.contains(s))
                    .copied()
                    .collect();
                if !unopened.is_empty() {
                    let s = unopened[i % unopened.len()];
                    pool.opened(s, self.now);
                    self.opened.insert(s);
                }
            }
            PoolOp::Release(i) => {
                if !self.held.is_empty() {
                    let s = self.held.swap_remove(i % self.held.len());
                    pool.release(s, self.now);
                }
            }
            PoolOp::Discard(i) => {
                if !self.live.is_empty() {
                    let s = *self
                        .live
                        .keys()
                        .nth(i % self.live.len())
                        .unwrap_or(&StreamId(0));
                    pool.discard(s, self.now);
                    self.kill(s);
                }
            }
            PoolOp::DiscardDead(i) => {
                // Late reports about dead streams must change nothing.
                if !self.dead.is_empty() {
                    let s = *self
                        .dead
                        .iter()
                        .nth(i % self.dead.len())
                        .unwrap_or(&StreamId(0));
                    pool.discard(s, self.now);
                    pool.release(s, self.now);
                    pool.opened(s, self.now);
                }
            }
            PoolOp::Cancel(i) => {
                if !self.queued.is_empty() {
                    let w = *self.queued.keys().nth(i % self.queued.len()).unwrap_or(&0);
                    prop_assert!(pool.cancel_waiter(w));
                    self.queued.remove(&w);
                }
                prop_assert!(!pool.cancel_waiter(u64::MAX));
            }
            PoolOp::Retire(i) => {
                let candidates: Vec<StreamId> = self
                    .live
                    .keys()
                    .filter(|s| !self.retired.contains(s))
                    .copied()
                    .collect();
                if !candidates.is_empty() {
                    let s = candidates[i % candidates.len()];
                    pool.retire(s, self.now);
                    self.retired.insert(s);
                }
            }
            PoolOp::Advance(ms) => {
                self.now = self.now + Duration::from_millis(ms);
                pool.handle_timeout(self.now);
            }
            PoolOp::DropNextOpenGrant => self.drop_next_open = true,
            PoolOp::Drain => {
                // Outputs are drained after every call, so nothing evicted is
                // pending: drain returns exactly the live streams.
                let all: Vec<StreamId> = self.live.keys().copied().collect();
                prop_assert_eq!(pool.drain(), all.clone());
                for s in all {
                    self.kill(s);
                }
                self.queued.clear();
            }
        }
        self.sync(pool)
    }

    /// Liveness: once every request finishes and every stream opens, all
    /// queued waiters are eventually served.
    fn finish(&mut self, pool: &mut StreamPool<u8>) -> Result<(), TestCaseError> {
        for _ in 0..10_000 {
            if self.queued.is_empty() && self.held.is_empty() {
                break;
            }
            let unopened: Vec<StreamId> = self
                .live
                .keys()
                .filter(|s| !self.opened.contains(s))
                .copied()
                .collect();
            for s in unopened {
                pool.opened(s, self.now);
                self.opened.insert(s);
                self.sync(pool)?;
            }
            if let Some(s) = self.held.pop() {
                pool.release(s, self.now);
                self.sync(pool)?;
            }
        }
        prop_assert!(self.queued.is_empty(), "waiters starved: {:?}", self.queued);
        prop_assert!(self.held.is_empty());
        Ok(())
    }
}

fn pool_config() -> impl Strategy<Value = PoolConfig> {
    (
        1usize..=4,
        0usize..=3,
        prop_oneof![Just(1usize), Just(4usize), Just(8usize)],
        0usize..=3,
    )
        .prop_map(|(max_total, max_idle, cap, spread)| PoolConfig {
            max_idle,
            max_total,
            idle_timeout: Duration::from_secs(10),
            max_inflight_per_stream: cap,
            spread_streams: spread,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pool_keeps_its_invariants(
        cfg in pool_config(),
        ops in prop::collection::vec(pool_op(), 1..200),
    ) {
        let mut pool = StreamPool::new(cfg.clone());
        let mut model = Model::new(cfg);
        for op in &ops {
            model.apply(&mut pool, op)?;
        }
        model.finish(&mut pool)?;
    }
}

#[derive(Clone, Debug)]
enum ChaosOp {
    Acquire(u8, u64),
    Opened(u64),
    Release(u64),
    Discard(u64),
    Cancel(u64),
    Retire(u64),
    Timeout(u64),
    PollGrant,
    PollClose,
    Drain,
}

fn chaos_op() -> impl Strategy<Value = ChaosOp> {
    prop_oneof![
        4 => (0u8..3, 0u64..6).prop_map(|(k, w)| ChaosOp::Acquire(k, w)),
        2 => (0u64..12).prop_map(ChaosOp::Opened),
        4 => (0u64..12).prop_map(ChaosOp::Release),
        1 => (0u64..12).prop_map(ChaosOp::Discard),
        1 => (0u64..6).prop_map(ChaosOp::Cancel),
        1 => (0u64..12).prop_map(ChaosOp::Retire),
        1 => (0u64..40_000).prop_map(ChaosOp::Timeout),
        2 => Just(ChaosOp::PollGrant),
        1 => Just(ChaosOp::PollClose),
        1 => Just(ChaosOp::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any call sequence, however wrong (over-release, reused waiter ids,
    /// reports about unknown streams, time going backwards, outputs left
    /// unpolled), keeps the limits and trips no internal assertion.
    #[test]
    fn pool_survives_any_call_sequence(
        cfg in pool_config(),
        ops in prop::collection::vec(chaos_op(), 1..200),
    ) {
        let mut pool: StreamPool<u8> = StreamPool::new(cfg.clone());
        let mut closed = BTreeSet::new();
        let mut retired = BTreeSet::new();
        for op in ops {
            let t = |ms: u64| Instant::from_millis(ms);
            match op {
                ChaosOp::Acquire(k, w) => match pool.acquire(&k, w, t(w * 1000)) {
                    Acquire::Ready(s) | Acquire::Pending(s) | Acquire::Open(s) => {
                        prop_assert!(!closed.contains(&s), "closed stream {} handed out", s);
                        prop_assert!(!retired.contains(&s), "retired stream {} handed out", s);
                    }
                    Acquire::Queued => {}
                },
                ChaosOp::Opened(s) => pool.opened(StreamId(s), t(s * 700)),
                ChaosOp::Release(s) => pool.release(StreamId(s), t(s * 900)),
                ChaosOp::Discard(s) => {
                    if pool.contains(StreamId(s)) {
                        closed.insert(StreamId(s));
                    }
                    pool.discard(StreamId(s), t(s));
                }
                ChaosOp::Cancel(w) => {
                    pool.cancel_waiter(w);
                }
                ChaosOp::Retire(s) => {
                    pool.retire(StreamId(s), t(s * 300));
                    if pool.contains(StreamId(s)) {
                        // Never handed out by `acquire` again (a grant made
                        // before may still come out of `poll_grant`).
                        retired.insert(StreamId(s));
                    }
                }
                ChaosOp::Timeout(ms) => pool.handle_timeout(t(ms)),
                ChaosOp::PollGrant => {
                    if let Some(g) = pool.poll_grant() {
                        prop_assert!(!closed.contains(&g.stream), "closed stream granted");
                    }
                }
                ChaosOp::PollClose => {
                    if let Some(s) = pool.poll_close() {
                        closed.insert(s);
                    }
                }
                ChaosOp::Drain => closed.extend(pool.drain()),
            }
            let st = pool.stats();
            prop_assert!(st.total <= cfg.max_total);
            prop_assert!(st.idle <= cfg.max_idle);
            prop_assert_eq!(st.open + st.opening, st.total);
            prop_assert!(st.in_flight <= st.total * cfg.max_inflight_per_stream);
        }
    }
}

// ----------------------------------------------------------- admission ----

#[derive(Clone, Debug)]
enum AdmitOp {
    Admit(u8),
    Release(u8),
    Complete(u8, u64),
    Adjust,
}

fn admit_op() -> impl Strategy<Value = AdmitOp> {
    prop_oneof![
        5 => (0u8..4).prop_map(AdmitOp::Admit),
        2 => (0u8..5).prop_map(AdmitOp::Release),
        2 => (0u8..5, 1u64..200).prop_map(|(p, ms)| AdmitOp::Complete(p, ms)),
        1 => Just(AdmitOp::Adjust),
    ]
}

proptest! {
    #[test]
    fn admission_limit_stays_in_bounds(
        initial in 0usize..300,
        min in 0usize..60,
        max in 0usize..200,
        step in prop_oneof![Just(0.1f64), 0.0f64..1.0],
        max_per_peer in 0usize..80,
        ops in prop::collection::vec(admit_op(), 1..400),
    ) {
        let mut a = Admission::new(AdmissionConfig {
            initial_limit: initial,
            min_limit: min,
            max_limit: max,
            step,
            max_per_peer,
            ..AdmissionConfig::default()
        });
        let (lo, hi) = (a.config().min_limit, a.config().max_limit);
        prop_assert_eq!(lo, min.max(1));
        prop_assert_eq!(hi, max.max(lo));
        let mut model: BTreeMap<u8, usize> = BTreeMap::new();
        for op in ops {
            match op {
                AdmitOp::Admit(p) => {
                    let peer = PeerKey::from(vec![p]);
                    let before = (a.active(), a.limit(), a.active_for(&peer));
                    match a.try_admit(&peer) {
                        Ok(()) => {
                            prop_assert!(before.0 < before.1 && before.2 < max_per_peer);
                            *model.entry(p).or_default() += 1;
                        }
                        Err(e) => {
                            prop_assert!(e.is_retryable());
                            match e {
                                Rejection::Busy { active, limit } => {
                                    prop_assert!(active >= limit);
                                }
                                Rejection::PeerBusy { peer_active, peer_limit } => {
                                    prop_assert!(peer_active >= peer_limit);
                                }
                                _ => prop_assert!(false, "unknown rejection"),
                            }
                        }
                    }
                }
                AdmitOp::Release(p) | AdmitOp::Complete(p, _) => {
                    match op {
                        AdmitOp::Complete(_, ms) => {
                            a.complete(&PeerKey::from(vec![p]), Duration::from_millis(ms))
                        }
                        _ => a.release(&PeerKey::from(vec![p])),
                    }
                    if let Some(n) = model.get_mut(&p) {
                        *n -= 1;
                        if *n == 0 {
                            model.remove(&p);
                        }
                    }
                }
                AdmitOp::Adjust => {
                    let t = a.adjust();
                    prop_assert_eq!(t.new, a.limit());
                    // Never more than the step (at least 1) per tick.
                    let cap = ((t.old as f64 * a.config().step) as usize).max(1);
                    prop_assert!(t.new.abs_diff(t.old) <= cap, "{:?}", t);
                    // No evidence, no change; growth only under pressure.
                    if t.samples == 0 {
                        prop_assert_eq!(t.new, t.old);
                    }
                    if t.new > t.old {
                        prop_assert!(t.pressed, "{:?}", t);
                    }
                }
            }
            prop_assert!(a.limit() >= lo && a.limit() <= hi);
            prop_assert_eq!(a.active(), model.values().sum::<usize>());
            prop_assert_eq!(a.peers(), model.len());
            for (p, n) in &model {
                prop_assert_eq!(a.active_for(&PeerKey::from(vec![*p])), *n);
                prop_assert!(*n <= max_per_peer);
            }
        }
    }
}

// ------------------------------------------------------------- backoff ----

/// `min(max, interval * multiplier^(retry-1))` in nanoseconds, computed
/// independently of the implementation.
fn reference_base(interval: u64, max: u64, multiplier: u32, retry: u32) -> u64 {
    let m = u128::from(multiplier.max(1));
    let mut base = u128::from(interval);
    for _ in 1..retry.max(1) {
        if base >= u128::from(max) || m == 1 {
            break;
        }
        base *= m;
    }
    base.min(u128::from(max)) as u64
}

proptest! {
    #[test]
    fn backoff_stays_within_half_base_and_max(
        interval in 0u64..10_000_000_000,
        max in 0u64..100_000_000_000,
        multiplier in 0u32..6,
        retry in prop_oneof![0u32..40, any::<u32>()],
        seed in any::<u64>(),
    ) {
        let b = Backoff {
            interval: Duration::from_nanos(interval),
            max: Duration::from_nanos(max),
            multiplier,
        };
        let mut rng = Rng::new(seed);
        let base = Duration::from_nanos(reference_base(interval, max, multiplier, retry));
        prop_assert_eq!(b.base(retry), base);
        for _ in 0..8 {
            let d = b.delay(retry, &mut rng);
            prop_assert!(d <= b.max);
            prop_assert!(d <= base);
            prop_assert!(d >= base / 2);
        }
    }

    #[test]
    fn rng_below_in_range(seed in any::<u64>(), n in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.below(n);
        prop_assert!(x < n || (n == 0 && x == 0));
        let f = rng.next_f64();
        prop_assert!((0.0..1.0).contains(&f));
    }
}

// --------------------------------------------------------------- route ----

proptest! {
    #[test]
    fn route_order_is_a_permutation_with_cooling_last(
        keys in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 1..8), 1..30),
        excluded in prop::collection::vec(any::<bool>(), 30),
        failures in prop::collection::vec((0usize..30, 0u64..10_000), 0..40),
        now_ms in 0u64..20_000,
        routing_key in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let proto = Protocol::new("/p/1");
        let keys: Vec<PeerKey> = keys.into_iter().map(PeerKey::from).collect();
        let mut r = Router::new(PeerKey::from(&b"local-node-key-xx"[..]), RouteConfig::default());
        for k in &keys {
            prop_assert_eq!(r.add_node(&proto, k.clone()), Ok(true));
        }
        for (i, at) in failures {
            r.record_failure(&keys[i % keys.len()], Instant::from_millis(at));
        }
        let exclude: Vec<PeerKey> = keys
            .iter()
            .zip(&excluded)
            .filter(|(_, x)| **x)
            .map(|(k, _)| k.clone())
            .collect();
        let now = Instant::from_millis(now_ms);
        let result = r.order(&proto, &routing_key, &exclude, now);
        let mut want: Vec<PeerKey> =
            keys.iter().filter(|k| !exclude.contains(k)).cloned().collect();
        if want.is_empty() {
            prop_assert!(result.is_err());
            return Ok(());
        }
        let got = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Brute force: non-cooling first, then by distance.
        let h = key_hash(&routing_key);
        want.sort_by_key(|k| (r.is_cooling(k, now), distance(&h, &key_hash(k.as_bytes()))));
        prop_assert_eq!(&got, &want);
        let cooling: Vec<bool> = got.iter().map(|k| r.is_cooling(k, now)).collect();
        prop_assert!(cooling.windows(2).all(|w| w[0] <= w[1]));
        let as_set: BTreeSet<&PeerKey> = got.iter().collect();
        prop_assert_eq!(as_set.len(), got.len());
    }
}
