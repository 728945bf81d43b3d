//! Per-protocol statistics of the cores: counts by outcome, latency
//! histograms, requests in flight, retries and failovers, Busy answers,
//! body and wire bytes, cancellations, and the slow-request alarm.
//!
//! Pure bookkeeping, like everything in this crate: the cores call it with
//! the `now` they are given, and an exporter (pointsub-tokio's `metrics`
//! feature) reads a snapshot ([`crate::Client::stats`],
//! [`crate::Server::stats`]) when it is scraped.
//!
//! # Label cardinality
//!
//! Statistics are kept per protocol name, never per peer. A client may be
//! asked to send on any number of protocols, so it keeps at most
//! [`ClientConfig::max_protocol_labels`](crate::ClientConfig::max_protocol_labels)
//! of them apart (the first ones seen); the rest are counted together under
//! [`OTHER`]. A server's protocols are the ones it registered.
//!
//! # Slow alarm
//!
//! With a threshold set ([`ServerConfig::slow_handler_threshold`](crate::ServerConfig::slow_handler_threshold),
//! [`ClientConfig::slow_request_threshold`](crate::ClientConfig::slow_request_threshold)),
//! a request still running when the threshold passes is counted as slow
//! once, at that moment (not when it ends), and the core emits
//! [`ServerEvent::SlowHandler`] / [`ClientEvent::SlowRequest`] so that the
//! adapter can warn. Events are rate-limited to [`SLOW_WARNINGS_PER_WINDOW`]
//! per [`SLOW_WARNING_WINDOW`]; the counter counts every slow request, and
//! the next event says how many warnings were held back before it.

use crate::client::ClientEvent;
use crate::error::RequestError;
use crate::pool::PoolStats;
use crate::server::ServerEvent;
use crate::{Instant, PeerKey, Protocol, RequestId, StreamId};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets (an implicit `+Inf`
/// bucket follows): 500 µs to 60 s.
pub const LATENCY_BOUNDS: [Duration; 16] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// The label under which a client counts protocols past its limit.
pub const OTHER: &str = "other";

/// Default of [`ClientConfig::max_protocol_labels`](crate::ClientConfig::max_protocol_labels).
pub const DEFAULT_MAX_PROTOCOL_LABELS: usize = 32;

/// Most slow-request events emitted per [`SLOW_WARNING_WINDOW`].
pub const SLOW_WARNINGS_PER_WINDOW: u32 = 5;

/// The window of the slow-request events' rate limit.
pub const SLOW_WARNING_WINDOW: Duration = Duration::from_secs(60);

/// The outcome label of a request answered or completed successfully.
pub const OK: &str = "ok";

/// A latency histogram with the fixed bounds [`LATENCY_BOUNDS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last is the `+Inf` bucket.
    buckets: [u64; LATENCY_BOUNDS.len() + 1],
    count: u64,
    sum_nanos: u128,
}

impl Histogram {
    /// Records one sample.
    pub fn observe(&mut self, d: Duration) {
        let i = LATENCY_BOUNDS.partition_point(|&b| b < d);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_nanos += d.as_nanos();
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the samples.
    pub fn sum(&self) -> Duration {
        let secs = u64::try_from(self.sum_nanos / 1_000_000_000).unwrap_or(u64::MAX);
        // The remainder is below 10^9: it fits in u32.
        let nanos = (self.sum_nanos % 1_000_000_000) as u32;
        Duration::new(secs, nanos)
    }

    /// Adds `other`'s samples to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
    }

    /// Each bucket's upper bound (`None`: `+Inf`) with the samples that fell
    /// in it and not in an earlier bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        LATENCY_BOUNDS
            .iter()
            .map(|&b| Some(b))
            .chain(std::iter::once(None))
            .zip(self.buckets.iter().copied())
    }
}

/// What happened on one protocol (or on [`OTHER`]), on one side.
///
/// Counters only grow; `in_flight` is a gauge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtocolStats {
    /// Requests ended, by outcome: [`OK`], or the error's kind. Client:
    /// [`RequestError::kind`]. Server: `busy`, `handler`, `oversize`,
    /// `protocol` (a request body that did not inflate), `shutting_down`,
    /// `forbidden`, or `cancelled` (the handler finished
    /// after the client gave up or the stream went away, so the answer was
    /// dropped).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Time from `send` to the outcome (client), or from admission to the
    /// handler's answer (server), of every request counted in `outcomes`
    /// (client) or admitted (server).
    pub latency: Histogram,
    /// Requests not ended yet (client), or admitted and not answered (server).
    pub in_flight: u64,
    /// Client: attempts that retried the node tried before.
    pub retries: u64,
    /// Client: attempts that moved on to another node after a failure
    /// (send-closest).
    pub failovers: u64,
    /// Client: extra attempts started at once by a hedged send-closest.
    pub hedges: u64,
    /// Busy answers: received for an attempt (client, retried or not), or
    /// sent by admission (server).
    pub busy: u64,
    /// Client: requests cancelled by the caller. Server: cancellations
    /// received for requests being handled.
    pub cancelled: u64,
    /// Requests that ran past the slow threshold.
    pub slow: u64,
    /// Request (client) or response (server) body bytes sent, before compression.
    pub body_bytes_sent: u64,
    /// Body bytes received, after decompression: of successful responses
    /// (client), or of admitted requests, as handed to their handlers
    /// (server; a request refused before admission is not inflated, so its
    /// body is not counted).
    pub body_bytes_received: u64,
    /// Bytes of pointsub frames handed out for writing on this protocol's
    /// streams (after compression, headers included).
    pub wire_bytes_sent: u64,
    /// Bytes read from this protocol's streams.
    pub wire_bytes_received: u64,
}

impl ProtocolStats {
    /// Requests ended, over all outcomes.
    pub fn ended(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Requests ended with `outcome`.
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts (and gauge) to these: the totals of several
    /// clients or servers.
    pub fn merge(&mut self, other: &ProtocolStats) {
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k).or_insert(0) += v;
        }
        self.latency.merge(&other.latency);
        self.in_flight += other.in_flight;
        self.retries += other.retries;
        self.failovers += other.failovers;
        self.hedges += other.hedges;
        self.busy += other.busy;
        self.cancelled += other.cancelled;
        self.slow += other.slow;
        self.body_bytes_sent += other.body_bytes_sent;
        self.body_bytes_received += other.body_bytes_received;
        self.wire_bytes_sent += other.wire_bytes_sent;
        self.wire_bytes_received += other.wire_bytes_received;
    }
}

/// Adds each `(label, stats)` of `from` into `into`, by label.
pub fn merge_protocols(into: &mut Vec<(String, ProtocolStats)>, from: &[(String, ProtocolStats)]) {
    for (label, stats) in from {
        match into.iter_mut().find(|(l, _)| l == label) {
            Some((_, s)) => s.merge(stats),
            None => into.push((label.clone(), stats.clone())),
        }
    }
}

/// A snapshot of a client's statistics, from [`crate::Client::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Per protocol label (at most the configured number, then [`OTHER`]),
    /// in the order first seen.
    pub protocols: Vec<(String, ProtocolStats)>,
    /// Pooled streams open.
    pub pool_open: u64,
    /// Pooled streams open with no request on them.
    pub pool_idle: u64,
    /// Pooled streams being opened.
    pub pool_opening: u64,
    /// Attempts waiting for a pooled stream.
    pub pool_waiting: u64,
}

impl ClientStats {
    /// The statistics of one protocol label, if it was seen.
    pub fn protocol(&self, label: &str) -> Option<&ProtocolStats> {
        find_protocol(&self.protocols, label)
    }

    /// Requests not ended yet, over all protocols.
    pub fn in_flight(&self) -> u64 {
        protocols_in_flight(&self.protocols)
    }

    /// Adds `other` (another client's snapshot) to this one.
    pub fn merge(&mut self, other: &ClientStats) {
        merge_protocols(&mut self.protocols, &other.protocols);
        self.pool_open += other.pool_open;
        self.pool_idle += other.pool_idle;
        self.pool_opening += other.pool_opening;
        self.pool_waiting += other.pool_waiting;
    }

    /// The counters only: gauges (in flight, pool) set to zero, as for a
    /// client that is gone.
    pub fn retired(&self) -> ClientStats {
        let protocols = retired_protocols(&self.protocols);
        ClientStats {
            protocols,
            ..ClientStats::default()
        }
    }
}

/// The statistics of protocol `label` in a snapshot's list.
fn find_protocol<'a>(
    protocols: &'a [(String, ProtocolStats)],
    label: &str,
) -> Option<&'a ProtocolStats> {
    protocols.iter().find(|(l, _)| l == label).map(|(_, s)| s)
}

/// Requests in flight over every protocol of a snapshot's list.
fn protocols_in_flight(protocols: &[(String, ProtocolStats)]) -> u64 {
    protocols.iter().map(|(_, s)| s.in_flight).sum()
}

/// A snapshot's per-protocol list with its gauge (in flight) at zero.
fn retired_protocols(protocols: &[(String, ProtocolStats)]) -> Vec<(String, ProtocolStats)> {
    let mut protocols = protocols.to_vec();
    for (_, s) in &mut protocols {
        s.in_flight = 0;
    }
    protocols
}

/// A snapshot of a server's statistics, from [`crate::Server::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Per protocol, in the order first seen.
    pub protocols: Vec<(String, ProtocolStats)>,
    /// The admission limit in force.
    pub admission_limit: u64,
    /// Inbound streams open.
    pub streams_open: u64,
}

impl ServerStats {
    /// The statistics of one protocol, if it was seen.
    pub fn protocol(&self, label: &str) -> Option<&ProtocolStats> {
        find_protocol(&self.protocols, label)
    }

    /// Requests admitted and not answered yet, over all protocols.
    pub fn in_flight(&self) -> u64 {
        protocols_in_flight(&self.protocols)
    }

    /// Adds `other` (another server's snapshot) to this one.
    pub fn merge(&mut self, other: &ServerStats) {
        merge_protocols(&mut self.protocols, &other.protocols);
        self.admission_limit += other.admission_limit;
        self.streams_open += other.streams_open;
    }

    /// The counters only: gauges (in flight, admission limit, streams)
    /// set to zero, as for a server that is gone.
    pub fn retired(&self) -> ServerStats {
        let protocols = retired_protocols(&self.protocols);
        ServerStats {
            protocols,
            ..ServerStats::default()
        }
    }
}

/// Protocol labels, capped: past `cap` distinct names, [`OTHER`].
#[derive(Debug)]
struct Labels {
    index: BTreeMap<Protocol, usize>,
    /// The protocol looked up last and its label: most traffic is on one
    /// protocol, and comparing the same `Arc` is a pointer comparison
    /// where the map compares the names.
    last: Option<(Protocol, usize)>,
    entries: Vec<(String, ProtocolStats)>,
    other: Option<usize>,
    cap: usize,
}

impl Labels {
    fn new(cap: usize) -> Self {
        Labels {
            index: BTreeMap::new(),
            last: None,
            entries: Vec::new(),
            other: None,
            cap,
        }
    }

    fn label(&mut self, p: &Protocol) -> usize {
        if let Some((last, i)) = &self.last
            && last == p
        {
            return *i;
        }
        let i = self.label_slow(p);
        self.last = Some((p.clone(), i));
        i
    }

    fn label_slow(&mut self, p: &Protocol) -> usize {
        if let Some(&i) = self.index.get(p) {
            return i;
        }
        if self.index.len() < self.cap {
            let i = self.entries.len();
            self.entries
                .push((p.as_str().to_owned(), ProtocolStats::default()));
            self.index.insert(p.clone(), i);
            return i;
        }
        *self.other.get_or_insert_with(|| {
            self.entries
                .push((OTHER.to_owned(), ProtocolStats::default()));
            self.entries.len() - 1
        })
    }

    fn get(&mut self, i: usize) -> &mut ProtocolStats {
        &mut self.entries[i].1
    }

    fn of(&mut self, p: &Protocol) -> &mut ProtocolStats {
        let i = self.label(p);
        self.get(i)
    }
}

/// Timers of the slow alarm, and its rate limit.
#[derive(Debug)]
struct SlowWatch<K> {
    threshold: Option<Duration>,
    timers: BTreeSet<(Instant, K)>,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl<K: Ord + Copy> SlowWatch<K> {
    fn new(threshold: Option<Duration>) -> Self {
        SlowWatch {
            threshold,
            timers: BTreeSet::new(),
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    fn arm(&mut self, key: K, start: Instant) {
        if let Some(t) = self.threshold {
            self.timers.insert((start + t, key));
        }
    }

    fn disarm(&mut self, key: K, start: Instant) {
        if let Some(t) = self.threshold {
            self.timers.remove(&(start + t, key));
        }
    }

    fn next(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<K> {
        match self.timers.first() {
            Some(&(at, key)) if at <= now => {
                self.timers.pop_first();
                Some(key)
            }
            _ => None,
        }
    }

    /// Whether a warning may go out now; `Some(n)`: yes, after `n` held back.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= SLOW_WARNING_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < SLOW_WARNINGS_PER_WINDOW {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A request of the client, from `send` to its outcome.
#[derive(Debug)]
struct LiveRequest {
    label: usize,
    started: Instant,
    peer: Option<PeerKey>,
}

/// How an attempt relates to the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptKind {
    /// The request's first attempt.
    First,
    /// Started beside a live attempt (hedging).
    Hedge,
    /// After a failure, to the same node.
    Retry,
    /// After a failure, to another node.
    Failover,
}

impl AttemptKind {
    /// Classifies attempt number `n` (1-based) of a request.
    pub(crate) fn of(n: u32, others_live: bool, node_changed: bool) -> Self {
        match (n, others_live, node_changed) {
            (0 | 1, _, _) => AttemptKind::First,
            (_, true, _) => AttemptKind::Hedge,
            (_, false, true) => AttemptKind::Failover,
            (_, false, false) => AttemptKind::Retry,
        }
    }
}

/// The client core's bookkeeping.
#[derive(Debug)]
pub(crate) struct ClientBook {
    labels: Labels,
    /// Looked up by id only, never walked: a hash map (ids are the core's own).
    live: FxHashMap<RequestId, LiveRequest>,
    slow: SlowWatch<RequestId>,
}

impl ClientBook {
    pub(crate) fn new(max_labels: usize, slow_threshold: Option<Duration>) -> Self {
        ClientBook {
            labels: Labels::new(max_labels),
            live: FxHashMap::default(),
            slow: SlowWatch::new(slow_threshold),
        }
    }

    /// A request was accepted by `send*`.
    pub(crate) fn started(
        &mut self,
        id: RequestId,
        protocol: &Protocol,
        peer: Option<&PeerKey>,
        now: Instant,
    ) {
        let label = self.labels.label(protocol);
        self.labels.get(label).in_flight += 1;
        self.live.insert(
            id,
            LiveRequest {
                label,
                started: now,
                peer: peer.cloned(),
            },
        );
        self.slow.arm(id, now);
    }

    /// An attempt of request `id` started.
    pub(crate) fn attempt(&mut self, id: RequestId, kind: AttemptKind) {
        let Some(r) = self.live.get(&id) else {
            return;
        };
        let s = self.labels.get(r.label);
        match kind {
            AttemptKind::First => {}
            AttemptKind::Hedge => s.hedges += 1,
            AttemptKind::Retry => s.retries += 1,
            AttemptKind::Failover => s.failovers += 1,
        }
    }

    /// An attempt of request `id` failed with `err` (retried or not).
    pub(crate) fn attempt_failed(&mut self, id: RequestId, err: &RequestError) {
        if let (RequestError::Busy(_), Some(r)) = (err, self.live.get(&id)) {
            self.labels.get(r.label).busy += 1;
        }
    }

    /// The body of request `id` (`len` bytes, uncompressed) was queued.
    pub(crate) fn body_sent(&mut self, id: RequestId, len: usize) {
        if let Some(r) = self.live.get(&id) {
            self.labels.get(r.label).body_bytes_sent += len as u64;
        }
    }

    /// `n` bytes were handed out for a stream of `protocol`.
    pub(crate) fn wire_sent(&mut self, protocol: &Protocol, n: usize) {
        self.labels.of(protocol).wire_bytes_sent += n as u64;
    }

    /// `n` bytes were read from a stream of `protocol`.
    pub(crate) fn wire_received(&mut self, protocol: &Protocol, n: usize) {
        self.labels.of(protocol).wire_bytes_received += n as u64;
    }

    /// Request `id` ended: with a response body of `len` bytes, or an error.
    pub(crate) fn finished(
        &mut self,
        id: RequestId,
        result: Result<usize, &RequestError>,
        now: Instant,
    ) {
        let Some(r) = self.live.remove(&id) else {
            return;
        };
        self.slow.disarm(id, r.started);
        let s = self.labels.get(r.label);
        s.in_flight = s.in_flight.saturating_sub(1);
        s.latency.observe(now.saturating_duration_since(r.started));
        let outcome = match result {
            Ok(len) => {
                s.body_bytes_received += len as u64;
                OK
            }
            Err(e) => e.kind(),
        };
        if let Err(RequestError::Cancelled) = result {
            s.cancelled += 1;
        }
        *s.outcomes.entry(outcome).or_insert(0) += 1;
    }

    /// When [`ClientBook::fire`] must next run.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.slow.next()
    }

    /// Counts the requests that became slow by `now`, and queues a
    /// [`ClientEvent::SlowRequest`] for each the rate limit lets through.
    pub(crate) fn fire(&mut self, now: Instant, events: &mut VecDeque<ClientEvent>) {
        while let Some(id) = self.slow.pop_due(now) {
            let Some(r) = self.live.get(&id) else {
                continue;
            };
            let entry = &mut self.labels.entries[r.label];
            entry.1.slow += 1;
            if let Some(suppressed) = self.slow.allow(now) {
                events.push_back(ClientEvent::SlowRequest {
                    id,
                    protocol: Protocol::from(entry.0.as_str()),
                    peer: r.peer.clone(),
                    elapsed: now.saturating_duration_since(r.started),
                    suppressed,
                });
            }
        }
    }

    /// The snapshot, with the pool's counts.
    pub(crate) fn snapshot(&self, pool: PoolStats) -> ClientStats {
        ClientStats {
            protocols: self.labels.entries.clone(),
            pool_open: pool.open as u64,
            pool_idle: pool.idle as u64,
            pool_opening: pool.opening as u64,
            pool_waiting: pool.waiting as u64,
        }
    }
}

/// A request a server handler is working on.
#[derive(Debug)]
struct Admitted {
    label: usize,
    admitted: Instant,
    peer: PeerKey,
}

/// The server core's bookkeeping.
#[derive(Debug)]
pub(crate) struct ServerBook {
    labels: Labels,
    /// Looked up by key only, never walked: a hash map.
    live: FxHashMap<(StreamId, u64), Admitted>,
    slow: SlowWatch<(StreamId, u64)>,
}

impl ServerBook {
    pub(crate) fn new(slow_threshold: Option<Duration>) -> Self {
        ServerBook {
            // A server's labels are the protocols it registered.
            labels: Labels::new(usize::MAX),
            live: FxHashMap::default(),
            slow: SlowWatch::new(slow_threshold),
        }
    }

    /// An admitted request's body, `len` bytes inflated, goes to a handler of `protocol`.
    pub(crate) fn received(&mut self, protocol: &Protocol, len: usize) {
        self.labels.of(protocol).body_bytes_received += len as u64;
    }

    /// [`ServerBook::refused`] on a stream's protocol, if the stream is known.
    pub(crate) fn refused_on(&mut self, protocol: Option<&Protocol>, outcome: &'static str) {
        if let Some(p) = protocol {
            self.refused(p, outcome);
        }
    }

    /// An admitted request's handler answered with `result`; `delivered`:
    /// the answer goes out (the stream is alive and the client still waits).
    pub(crate) fn answered_with(
        &mut self,
        key: (StreamId, u64),
        result: Result<usize, &'static str>,
        delivered: bool,
        max_body: usize,
        now: Instant,
    ) {
        let (outcome, body) = match result {
            _ if !delivered => ("cancelled", 0),
            Ok(len) if len > max_body => ("oversize", 0),
            Ok(len) => (OK, len),
            Err(outcome) => (outcome, 0),
        };
        self.answered(key, outcome, body, now);
    }

    /// A request on `protocol` was answered without reaching a handler.
    pub(crate) fn refused(&mut self, protocol: &Protocol, outcome: &'static str) {
        let s = self.labels.of(protocol);
        if outcome == "busy" {
            s.busy += 1;
        }
        *s.outcomes.entry(outcome).or_insert(0) += 1;
    }

    /// A request was admitted and handed to a handler.
    pub(crate) fn admitted(
        &mut self,
        key: (StreamId, u64),
        protocol: &Protocol,
        peer: &PeerKey,
        now: Instant,
    ) {
        let label = self.labels.label(protocol);
        self.labels.get(label).in_flight += 1;
        self.live.insert(
            key,
            Admitted {
                label,
                admitted: now,
                peer: peer.clone(),
            },
        );
        self.slow.arm(key, now);
    }

    /// The client cancelled a request being handled.
    pub(crate) fn cancelled(&mut self, key: (StreamId, u64)) {
        if let Some(a) = self.live.get(&key) {
            self.labels.get(a.label).cancelled += 1;
        }
    }

    /// An admitted request ended with `outcome`; `body` bytes of response
    /// body were queued.
    pub(crate) fn answered(
        &mut self,
        key: (StreamId, u64),
        outcome: &'static str,
        body: usize,
        now: Instant,
    ) {
        let Some(a) = self.live.remove(&key) else {
            return;
        };
        self.slow.disarm(key, a.admitted);
        let s = self.labels.get(a.label);
        s.in_flight = s.in_flight.saturating_sub(1);
        s.latency.observe(now.saturating_duration_since(a.admitted));
        s.body_bytes_sent += body as u64;
        *s.outcomes.entry(outcome).or_insert(0) += 1;
    }

    /// `n` bytes were handed out for a stream of `protocol` (if known).
    pub(crate) fn wire_sent_on(&mut self, protocol: Option<&Protocol>, n: usize) {
        if let Some(p) = protocol {
            self.labels.of(p).wire_bytes_sent += n as u64;
        }
    }

    /// `n` bytes were read from a stream of `protocol`.
    pub(crate) fn wire_received(&mut self, protocol: &Protocol, n: usize) {
        self.labels.of(protocol).wire_bytes_received += n as u64;
    }

    /// When [`ServerBook::fire`] must next run.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.slow.next()
    }

    /// Counts the handlers that became slow by `now`, and queues a
    /// [`ServerEvent::SlowHandler`] for each the rate limit lets through.
    pub(crate) fn fire(&mut self, now: Instant, events: &mut VecDeque<ServerEvent>) {
        while let Some(key) = self.slow.pop_due(now) {
            let Some(a) = self.live.get(&key) else {
                continue;
            };
            let entry = &mut self.labels.entries[a.label];
            entry.1.slow += 1;
            if let Some(suppressed) = self.slow.allow(now) {
                events.push_back(ServerEvent::SlowHandler {
                    stream: key.0,
                    request_id: key.1,
                    peer: a.peer.clone(),
                    protocol: Protocol::from(entry.0.as_str()),
                    elapsed: now.saturating_duration_since(a.admitted),
                    suppressed,
                });
            }
        }
    }

    /// The snapshot, with the admission limit and open streams.
    pub(crate) fn snapshot(&self, admission_limit: usize, streams_open: usize) -> ServerStats {
        ServerStats {
            protocols: self.labels.entries.clone(),
            admission_limit: admission_limit as u64,
            streams_open: streams_open as u64,
        }
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500)); // on the first bound: first bucket
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(3600)); // past the last bound: +Inf
        assert_eq!(h.count(), 4);
        let b: Vec<(Option<Duration>, u64)> = h.buckets().collect();
        assert_eq!(b.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(b[0], (Some(Duration::from_micros(500)), 1));
        assert_eq!(b[1], (Some(Duration::from_millis(1)), 1));
        assert_eq!(b[4], (Some(Duration::from_millis(10)), 1));
        assert_eq!(b[LATENCY_BOUNDS.len()], (None, 1));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert_eq!(
            h.sum(),
            Duration::from_micros(1001) + Duration::from_millis(7) + Duration::from_secs(3600)
        );
    }

    #[test]
    fn client_labels_are_capped_under_other() {
        let mut book = ClientBook::new(2, None);
        for (i, p) in ["/a/1", "/b/1", "/c/1", "/d/1", "/a/1"].iter().enumerate() {
            let id = RequestId(i as u64);
            book.started(id, &Protocol::from(*p), None, ms(0));
            book.finished(id, Ok(3), ms(1));
        }
        let s = book.snapshot(PoolStats::default());
        let labels: Vec<&str> = s.protocols.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["/a/1", "/b/1", OTHER]);
        assert_eq!(s.protocol("/a/1").map(|p| p.outcome(OK)), Some(2));
        assert_eq!(s.protocol(OTHER).map(|p| p.outcome(OK)), Some(2));
        assert_eq!(s.protocol(OTHER).map(|p| p.body_bytes_received), Some(6));
    }

    #[test]
    fn client_counts_outcomes_attempts_and_latency() {
        let mut book = ClientBook::new(8, None);
        let p = Protocol::from("/echo/1");
        book.started(RequestId(1), &p, None, ms(0));
        book.started(RequestId(2), &p, None, ms(0));
        book.started(RequestId(3), &p, None, ms(0));
        assert_eq!(book.snapshot(PoolStats::default()).in_flight(), 3);
        book.attempt(RequestId(1), AttemptKind::First);
        book.attempt(RequestId(1), AttemptKind::of(2, false, false));
        book.attempt(RequestId(2), AttemptKind::of(2, false, true));
        book.attempt(RequestId(3), AttemptKind::of(2, true, true));
        book.attempt_failed(RequestId(1), &RequestError::Busy("full".into()));
        book.attempt_failed(RequestId(1), &RequestError::StreamReset);
        book.body_sent(RequestId(1), 10);
        book.body_sent(RequestId(1), 10);
        book.wire_sent(&p, 7);
        book.wire_received(&p, 5);
        book.finished(RequestId(1), Ok(4), ms(2));
        book.finished(RequestId(2), Err(&RequestError::Cancelled), ms(20));
        book.finished(RequestId(3), Err(&RequestError::ReadTimeout), ms(2000));
        // A second end of the same request is not counted.
        book.finished(RequestId(3), Err(&RequestError::Closed), ms(3000));
        let s = book.snapshot(PoolStats::default());
        let e = s.protocol("/echo/1").expect("seen");
        assert_eq!(e.outcome(OK), 1);
        assert_eq!(e.outcome("cancelled"), 1);
        assert_eq!(e.outcome("read_timeout"), 1);
        assert_eq!(e.outcome("closed"), 0);
        assert_eq!(e.ended(), 3);
        assert_eq!(e.latency.count(), 3);
        assert_eq!(e.latency.sum(), Duration::from_millis(2022));
        assert_eq!((e.retries, e.failovers, e.hedges), (1, 1, 1));
        assert_eq!(e.busy, 1);
        assert_eq!(e.cancelled, 1);
        assert_eq!(e.in_flight, 0);
        assert_eq!((e.body_bytes_sent, e.body_bytes_received), (20, 4));
        assert_eq!((e.wire_bytes_sent, e.wire_bytes_received), (7, 5));
    }

    #[test]
    fn slow_requests_fire_once_at_the_threshold_and_are_rate_limited() {
        let mut book = ClientBook::new(8, Some(Duration::from_millis(100)));
        let p = Protocol::from("/slow/1");
        let peer = PeerKey::from(vec![9; 4]);
        let n = u64::from(SLOW_WARNINGS_PER_WINDOW) + 3;
        for i in 0..n {
            book.started(RequestId(i), &p, Some(&peer), ms(i));
        }
        // One that ends in time is never slow.
        book.started(RequestId(100), &p, None, ms(0));
        book.finished(RequestId(100), Ok(0), ms(99));
        assert_eq!(book.next_timeout(), Some(ms(100)));
        let mut events = VecDeque::new();
        book.fire(ms(99), &mut events);
        assert!(events.is_empty());
        book.fire(ms(100 + n), &mut events);
        assert_eq!(events.len(), SLOW_WARNINGS_PER_WINDOW as usize);
        match &events[0] {
            ClientEvent::SlowRequest {
                id,
                protocol,
                peer: Some(who),
                elapsed,
                suppressed,
            } => {
                assert_eq!(*id, RequestId(0));
                assert_eq!(protocol.as_str(), "/slow/1");
                assert_eq!(*who, peer);
                assert_eq!(*elapsed, Duration::from_millis(100 + n));
                assert_eq!(*suppressed, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(book.next_timeout(), None, "each request fires once");
        let s = book.snapshot(PoolStats::default());
        assert_eq!(s.protocol("/slow/1").map(|p| p.slow), Some(n));
        // A window later, the next warning says how many were held back.
        book.started(RequestId(200), &p, None, ms(100_000));
        events.clear();
        book.fire(ms(100_100), &mut events);
        match events.make_contiguous() {
            [ClientEvent::SlowRequest { suppressed, .. }] => assert_eq!(*suppressed, 3),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn server_counts_admitted_and_refused_requests() {
        let mut book = ServerBook::new(Some(Duration::from_secs(1)));
        let p = Protocol::from("/echo/1");
        let peer = PeerKey::from(vec![1; 4]);
        let k1 = (StreamId(1), 1);
        let k2 = (StreamId(1), 3);
        book.received(&p, 100);
        book.received(&p, 100);
        book.received(&p, 100);
        book.refused(&p, "busy");
        book.admitted(k1, &p, &peer, ms(0));
        book.admitted(k2, &p, &peer, ms(0));
        assert_eq!(book.snapshot(10, 1).in_flight(), 2);
        book.cancelled(k2);
        book.answered(k1, OK, 40, ms(3));
        let mut events = VecDeque::new();
        book.fire(ms(1000), &mut events);
        match events.make_contiguous() {
            [
                ServerEvent::SlowHandler {
                    stream,
                    request_id,
                    peer: who,
                    elapsed,
                    ..
                },
            ] => {
                assert_eq!((*stream, *request_id), k2);
                assert_eq!(*who, peer);
                assert_eq!(*elapsed, Duration::from_secs(1));
            }
            other => panic!("unexpected {other:?}"),
        }
        book.answered(k2, "cancelled", 0, ms(1500));
        let s = book.snapshot(10, 1);
        let e = s.protocol("/echo/1").expect("seen");
        assert_eq!(e.outcome(OK), 1);
        assert_eq!(e.outcome("busy"), 1);
        assert_eq!(e.outcome("cancelled"), 1);
        assert_eq!((e.busy, e.cancelled, e.slow), (1, 1, 1));
        assert_eq!(e.latency.count(), 2, "admitted requests only");
        assert_eq!(e.in_flight, 0);
        assert_eq!((e.body_bytes_received, e.body_bytes_sent), (300, 40));
        assert_eq!(s.admission_limit, 10);
    }

    #[test]
    fn snapshots_merge_by_label_and_retire_their_gauges() {
        let mut a = ClientBook::new(8, None);
        let mut b = ClientBook::new(8, None);
        let p = Protocol::from("/p/1");
        let q = Protocol::from("/q/1");
        a.started(RequestId(1), &p, None, ms(0));
        a.finished(RequestId(1), Ok(5), ms(1));
        a.started(RequestId(2), &p, None, ms(0));
        b.started(RequestId(1), &q, None, ms(0));
        b.started(RequestId(2), &p, None, ms(0));
        b.finished(RequestId(2), Err(&RequestError::ShuttingDown), ms(3));
        let pool = PoolStats {
            open: 2,
            idle: 1,
            ..PoolStats::default()
        };
        let mut sum = a.snapshot(pool);
        sum.merge(&b.snapshot(pool));
        let sp = sum.protocol("/p/1").expect("p");
        assert_eq!((sp.outcome(OK), sp.outcome("shutting_down")), (1, 1));
        assert_eq!(sp.latency.count(), 2);
        assert_eq!(sp.in_flight, 1);
        assert_eq!(sum.protocol("/q/1").map(|s| s.in_flight), Some(1));
        assert_eq!((sum.pool_open, sum.pool_idle), (4, 2));
        let gone = sum.retired();
        assert_eq!(gone.in_flight(), 0);
        assert_eq!(gone.pool_open, 0);
        assert_eq!(gone.protocol("/p/1").map(|s| s.ended()), Some(2));
    }
}
