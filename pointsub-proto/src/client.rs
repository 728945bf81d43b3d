//! The client state machine: requests, retries, pooled streams, send-closest.
//!
//! See [`Client`] for the polling discipline.

use crate::compress;
use crate::config::ClientConfig;
use crate::error::{ConfigError, NodeFailure, RequestError, RouteError, Side};
use crate::frame::{self, Decoded, ErrorCode, Flags, FrameKind, MessageDecoder};
use crate::metrics::{ClientMetrics, ConnectionInfo};
use crate::pool::{Acquire, GrantKind, PoolStats, StreamPool};
use crate::retry::{Backoff, Rng};
use crate::route::{self, NodeSource, Router};
use crate::stats::{self, AttemptKind, ClientBook, ClientStats};
use crate::timer::TimerTable;
use crate::transmit::{self, HasOutgoing, Outgoing, Transmit, next_transmit};
use crate::{Instant, PeerKey, Protocol, RequestId, StreamId};
use bytes::{Bytes, BytesMut};
use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Options of one [`Client::send_with`] call.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// End the request with [`RequestError::Timeout`] if it has not ended by then.
    pub deadline: Option<Instant>,
    /// The body's deflated form, worked out by the caller before it calls
    /// the core (outside any lock): `Some(Some(c))` the compressed body,
    /// `Some(None)` not worth compressing; `None`: the core compresses when
    /// it first needs to.
    pub deflated: Option<Option<Bytes>>,
}

impl SendOptions {
    /// Sets the body's deflated form (see [`SendOptions::deflated`]), as
    /// [`compress::compress`] returns it.
    #[must_use]
    pub fn with_deflated(mut self, deflated: Option<Bytes>) -> Self {
        self.deflated = Some(deflated);
        self
    }

    /// Sets the overall deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// Options of one [`Client::send_closest`] call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClosestOptions {
    /// Routing key; the request body when `None`.
    pub routing_key: Option<Bytes>,
    /// Nodes not to use for this request.
    pub exclude: Vec<PeerKey>,
    /// Send to this many of the closest nodes at once; the first response wins (1).
    pub hedge: usize,
    /// Overall deadline, as in [`SendOptions::deadline`].
    pub deadline: Option<Instant>,
    /// The SHA-256 of the routing key (of the body when it has none),
    /// worked out by the caller outside any lock; `None`: the core hashes.
    pub key_hash: Option<[u8; 32]>,
    /// As [`SendOptions::deflated`].
    pub deflated: Option<Option<Bytes>>,
}

impl Default for ClosestOptions {
    fn default() -> Self {
        ClosestOptions {
            routing_key: None,
            exclude: Vec::new(),
            hedge: 1,
            deadline: None,
            key_hash: None,
            deflated: None,
        }
    }
}

impl ClosestOptions {
    /// Sets the routing key.
    #[must_use]
    pub fn with_routing_key(mut self, key: impl Into<Bytes>) -> Self {
        self.routing_key = Some(key.into());
        self
    }
    /// Sets the nodes to leave out.
    #[must_use]
    pub fn with_exclude(mut self, exclude: Vec<PeerKey>) -> Self {
        self.exclude = exclude;
        self
    }
    /// Sets the hedge width (at least 1).
    #[must_use]
    pub fn with_hedge(mut self, k: usize) -> Self {
        self.hedge = k.max(1);
        self
    }
    /// Sets the overall deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Sets the routing key's hash, [`route::key_hash`] of the routing key
    /// (or of the body), so the core need not hash under the caller's lock.
    #[must_use]
    pub fn with_key_hash(mut self, hash: [u8; 32]) -> Self {
        self.key_hash = Some(hash);
        self
    }
    /// Sets the body's deflated form (see [`SendOptions::deflated`]).
    #[must_use]
    pub fn with_deflated(mut self, deflated: Option<Bytes>) -> Self {
        self.deflated = Some(deflated);
        self
    }
}

/// A successful outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The response body, decompressed.
    pub body: Bytes,
    /// The node that answered.
    pub peer: PeerKey,
}

/// Why a stream could not be opened, as reported by the adapter. The
/// adapter only says what happened; the core decides what follows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenFailure {
    /// The peer does not speak the protocol (negotiation failed): final
    /// for this peer ([`RequestError::UnsupportedProtocol`]).
    UnsupportedProtocol,
    /// The peer could not be reached: dial error, connection lost. Retried
    /// ([`RequestError::ConnectFailed`]).
    Unreachable(String),
    /// The transport gave up opening in time. Retried
    /// ([`RequestError::ConnectTimeout`]).
    Timeout,
    /// No address of the peer is known: final for this peer
    /// ([`RequestError::NoAddress`]).
    NoAddress,
    /// The peer's addresses answered with another identity, and no other
    /// address is left to try: final for this peer
    /// ([`RequestError::WrongPeer`]).
    WrongPeer {
        /// The identity that answered.
        obtained: PeerKey,
    },
    /// The local node has shut down: the client closes, and every request
    /// ends with [`RequestError::Closed`].
    LocalShutdown,
}

/// What the client needs the adapter to do, or tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Open a stream to `peer` speaking `protocol`, then report
    /// [`Client::handle_stream_opened`] or [`Client::handle_open_failed`].
    OpenStream {
        /// Id the core gave the stream.
        stream: StreamId,
        /// Peer to open it to.
        peer: PeerKey,
        /// Protocol to negotiate.
        protocol: Protocol,
    },
    /// Close the stream (or abandon opening it); the core has forgotten it.
    CloseStream {
        /// The stream.
        stream: StreamId,
    },
    /// An attempt of a request started, towards `peer`.
    AttemptStarted {
        /// The request.
        id: RequestId,
        /// The node tried.
        peer: PeerKey,
        /// 1 for the first attempt, then 2, 3, ...
        attempt: u32,
    },
    /// The request ended. Exactly one of these per request id.
    Completed {
        /// The request.
        id: RequestId,
        /// Its outcome.
        result: Result<Response, RequestError>,
        /// Attempts that were started (at most `max_retries + 1`).
        attempts: u32,
    },
    /// A response arrived deflated and the core defers inflating
    /// ([`Client::defer_inflate`]): inflate `body` with
    /// [`compress::decompress`] and `limit`, outside any lock, and report
    /// the result with [`Client::handle_inflated`]. The request ends then
    /// (or earlier, if it times out or is cancelled meanwhile).
    Inflate {
        /// The request.
        id: RequestId,
        /// The node that answered (given back to [`Client::handle_inflated`]).
        peer: PeerKey,
        /// The response body as it travelled.
        body: Bytes,
        /// Largest inflated body accepted (the block size).
        limit: usize,
    },
    /// The request has been running for
    /// [`ClientConfig::slow_request_threshold`] and has not ended: emitted
    /// once per request, when it crosses the threshold (rate-limited, see
    /// [`crate::stats`]).
    SlowRequest {
        /// The request.
        id: RequestId,
        /// Its protocol (as counted: [`crate::stats::OTHER`] past the label limit).
        protocol: Protocol,
        /// The peer it was sent to; `None` for a send-closest.
        peer: Option<PeerKey>,
        /// Time since `send`.
        elapsed: std::time::Duration,
        /// Warnings held back by the rate limit since the last one emitted.
        suppressed: u64,
    },
}

type PoolKey = (PeerKey, Protocol);

enum Target {
    Peer(PeerKey),
    Closest { order: Vec<PeerKey>, next: usize },
}

struct Req {
    protocol: Protocol,
    body: Bytes,
    /// `Some(Some(c))`: compressed form; `Some(None)`: not worth it; `None`: not tried.
    compressed: Option<Option<Bytes>>,
    target: Target,
    attempts: u32,
    /// Its attempts in flight (one, unless hedged): inline, no allocation.
    live: SmallVec<[u64; 1]>,
    retry_at: Option<Instant>,
    /// Send-closest: each node that failed so far, with its last failure,
    /// in the order first tried.
    failures: Vec<NodeFailure>,
    /// Send-closest: nodes ruled out for the rest of the request.
    ruled_out: BTreeSet<PeerKey>,
    /// Nodes whose deflated response the adapter is inflating: the request
    /// waits for their outcome before it fails or retries.
    inflating: Vec<PeerKey>,
}

impl Req {
    fn record_failure(&mut self, node: &PeerKey, err: &RequestError) {
        match self.failures.iter_mut().find(|f| f.node == *node) {
            Some(f) => f.error = err.clone(),
            None => self.failures.push(NodeFailure {
                node: node.clone(),
                error: err.clone(),
            }),
        }
        if err.is_final_for_node() {
            self.ruled_out.insert(node.clone());
        }
    }

    /// The node the last attempt went to (`None` before the first).
    fn last_node(&self) -> Option<&PeerKey> {
        match &self.target {
            Target::Peer(p) => (self.attempts > 0).then_some(p),
            Target::Closest { order, next } => {
                (*next > 0).then(|| &order[(*next - 1) % order.len()])
            }
        }
    }

    /// The node the next attempt goes to, skipping nodes ruled out;
    /// `None` when every node of a send-closest is ruled out.
    fn peek_node(&self) -> Option<(PeerKey, usize)> {
        match &self.target {
            Target::Peer(p) => Some((p.clone(), 0)),
            Target::Closest { order, next } => (0..order.len())
                .map(|i| next + i)
                .map(|i| (order[i % order.len()].clone(), i + 1))
                .find(|(n, _)| !self.ruled_out.contains(n)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Queued,
    Opening,
    Writing,
    Reading,
}

struct Attempt {
    req: RequestId,
    node: PeerKey,
    stream: Option<StreamId>,
    phase: Phase,
}

struct Stream {
    key: PoolKey,
    open: bool,
    decoder: MessageDecoder,
    tx: Outgoing,
    /// Wire ids of its attempts. Added and removed once per request, and
    /// walked only when the stream opens or fails (sorted then, so the
    /// core's events keep their order): a hash set.
    attempts: FxHashSet<u64>,
    /// (stream offset at which a request's last byte was handed out, wire id)
    write_marks: VecDeque<(u64, u64)>,
    opened_at: Instant,
    last_active: Instant,
    bytes_in: u64,
    requests: u64,
    /// The adapter said it rides on a relayed connection.
    relayed: bool,
}

impl HasOutgoing for Stream {
    fn outgoing(&mut self) -> &mut Outgoing {
        &mut self.tx
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Attempt(u64),
    Retry(RequestId),
    Deadline(RequestId),
    Open(StreamId),
}

/// The client side of pointsub, without I/O.
///
/// # Polling
/// After every call that feeds it (`send*`, `cancel`, `close`, `handle_*`),
/// drain [`Client::poll_event`] and [`Client::poll_transmit`] until both
/// return `None`, then wake it at [`Client::poll_timeout`] with
/// [`Client::handle_timeout`]. Every request accepted by `send*` ends with
/// exactly one [`ClientEvent::Completed`].
///
/// # Methods
/// - getters: [`Client::local`], [`Client::metrics`], [`Client::connections`], [`Client::pool_stats`], [`Client::server_nodes`], [`Client::in_flight`], [`Client::stream_in_flight`];
/// - user calls: [`Client::send`], [`Client::send_with`], [`Client::send_closest`], [`Client::cancel`], [`Client::close`], node-set management;
/// - `handle_*`: what the adapter observed;
/// - `poll_*`: what the adapter must do.
pub struct Client {
    cfg: ClientConfig,
    local: PeerKey,
    router: Router,
    pool: StreamPool<PoolKey>,
    rng: Rng,
    backoff: Backoff,
    /// Boxed: a request is a few hundred bytes, which the map would
    /// otherwise move as it grows. Hash maps (ids are the core's own, so
    /// FxHash): only `close` walks them, in sorted order.
    requests: FxHashMap<RequestId, Box<Req>>,
    attempts: FxHashMap<u64, Attempt>,
    streams: BTreeMap<StreamId, Stream>,
    ready: VecDeque<StreamId>,
    timers: TimerTable<Timer>,
    events: VecDeque<ClientEvent>,
    /// Whether a peer said it accepts deflate (learned from its frames).
    peer_deflate: BTreeMap<PeerKey, bool>,
    /// Peers the adapter said have a direct (not relayed) connection now.
    direct_paths: BTreeSet<PeerKey>,
    next_request: u64,
    next_wire: u64,
    metrics: ClientMetrics,
    stats: ClientBook,
    closed: bool,
    /// Deflated responses are handed to the adapter to inflate
    /// ([`Client::defer_inflate`]).
    defer_inflate: bool,
    /// Reassembly buffers shared by the streams' decoders.
    bodies: crate::bodies::BodyPool,
}

impl Client {
    /// A client for the node whose key is `local`, after checking `cfg`.
    pub fn new(local: PeerKey, cfg: ClientConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Client {
            stats: ClientBook::new(cfg.max_protocol_labels, cfg.slow_request_threshold),
            router: Router::new(local.clone(), cfg.route()),
            pool: StreamPool::new(cfg.pool()),
            rng: Rng::new(cfg.seed),
            backoff: Backoff {
                interval: cfg.retry_interval,
                max: cfg.max_backoff,
                multiplier: 2,
            },
            local,
            cfg,
            requests: FxHashMap::default(),
            attempts: FxHashMap::default(),
            streams: BTreeMap::new(),
            ready: VecDeque::new(),
            timers: TimerTable::new(),
            events: VecDeque::new(),
            peer_deflate: BTreeMap::new(),
            direct_paths: BTreeSet::new(),
            next_request: 1,
            next_wire: 1,
            metrics: ClientMetrics::default(),
            closed: false,
            defer_inflate: false,
            bodies: crate::bodies::BodyPool::new(),
        })
    }

    /// Defers inflating deflated responses to the adapter: the core emits
    /// [`ClientEvent::Inflate`] instead of inflating in
    /// [`Client::handle_data`], so that an adapter that runs the core
    /// under a lock inflates (up to the block size: milliseconds for a
    /// large body) without holding it. Off by default: the core inflates.
    /// Applies to streams opened after the call.
    pub fn defer_inflate(&mut self, on: bool) {
        self.defer_inflate = on;
    }

    // ----- getters -----

    /// The local node's key.
    pub fn local(&self) -> &PeerKey {
        &self.local
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Counters.
    pub fn metrics(&self) -> ClientMetrics {
        let mut m = self.metrics.clone();
        m.active = self.requests.len() as u64;
        m
    }

    /// Per-protocol statistics (see [`crate::stats`]), with the pool's counts.
    pub fn stats(&self) -> ClientStats {
        self.stats.snapshot(self.pool.stats())
    }

    /// Requests not ended yet.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Attempts in flight on `stream` (0 for a stream the core does not
    /// know). An adapter may write a stream's bytes at once from the task
    /// that sent a request when this is 1 (the stream was idle: nothing
    /// to batch with), and leave a busy stream's bytes to its own task,
    /// which packs what accumulated into few large writes.
    pub fn stream_in_flight(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.attempts.len())
    }

    /// The stream pool's counts.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Whether [`Client::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// One entry per open stream.
    pub fn connections(&self, now: Instant) -> Vec<ConnectionInfo> {
        self.streams
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(id, s)| ConnectionInfo {
                stream: *id,
                remote: s.key.0.clone(),
                protocol: s.key.1.clone(),
                opened_at: s.opened_at,
                last_active: s.last_active,
                idle: now.saturating_duration_since(s.last_active),
                bytes_in: s.bytes_in,
                bytes_out: s.tx.emitted,
                requests: s.requests,
                in_flight: s.attempts.len(),
            })
            .collect()
    }

    /// The server nodes registered for `protocol`, in insertion order.
    pub fn server_nodes(&self, protocol: &Protocol) -> Vec<PeerKey> {
        self.router.nodes(protocol)
    }

    /// Read access to the routing table (distances, cool-downs).
    pub fn router(&self) -> &Router {
        &self.router
    }

    // ----- node set -----

    /// Adds a server node for send-closest. Refuses the local node; a
    /// duplicate is ignored (`Ok(false)`).
    pub fn add_server_node(
        &mut self,
        protocol: &Protocol,
        node: PeerKey,
    ) -> Result<bool, RouteError> {
        self.router.add_node(protocol, node)
    }

    /// Adds a server node found by `source` (see [`crate::route`]'s rules:
    /// a discovered node leaves when its last source withdraws it).
    /// `Ok(true)` if the node joined the set.
    pub fn add_server_node_from(
        &mut self,
        protocol: &Protocol,
        node: PeerKey,
        source: NodeSource,
    ) -> Result<bool, RouteError> {
        self.router.add_node_from(protocol, node, source)
    }

    /// `source` no longer lists `node` for `protocol`; returns whether the
    /// node left the set (it had no other source). A node added by hand
    /// never leaves this way.
    pub fn withdraw_server_node(
        &mut self,
        protocol: &Protocol,
        node: &PeerKey,
        source: NodeSource,
    ) -> bool {
        self.router.withdraw(protocol, node, source)
    }

    /// `source` no longer lists any node of `protocol` (its discovery
    /// stopped); returns the nodes that left the set.
    pub fn withdraw_server_nodes(
        &mut self,
        protocol: &Protocol,
        source: NodeSource,
    ) -> Vec<PeerKey> {
        self.router.withdraw_all(protocol, source)
    }

    /// Where `node` came from as a server node of `protocol` (empty if it
    /// is not one).
    pub fn server_node_sources(&self, protocol: &Protocol, node: &PeerKey) -> Vec<NodeSource> {
        self.router.sources(protocol, node)
    }

    /// Removes a server node by hand, whatever its sources; errors on an
    /// unknown protocol or node.
    pub fn remove_server_node(
        &mut self,
        protocol: &Protocol,
        node: &PeerKey,
    ) -> Result<(), RouteError> {
        self.router.remove_node(protocol, node)
    }

    /// Forgets every node of `protocol`.
    pub fn clear_server_nodes(&mut self, protocol: &Protocol) {
        self.router.clear(protocol)
    }

    // ----- user calls -----

    /// Sends `body` to `peer` on `protocol`. The returned id's outcome comes
    /// later as [`ClientEvent::Completed`]; an immediate error means the
    /// request was never accepted (and no event will follow).
    pub fn send(
        &mut self,
        peer: PeerKey,
        protocol: Protocol,
        body: Bytes,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        self.send_with(peer, protocol, body, SendOptions::default(), now)
    }

    /// [`Client::send`] with options.
    pub fn send_with(
        &mut self,
        peer: PeerKey,
        protocol: Protocol,
        body: Bytes,
        opts: SendOptions,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        self.check_new(&body)?;
        if peer == self.local {
            return Err(RequestError::SelfSend);
        }
        Ok(self.start(
            protocol,
            body,
            opts.deflated,
            Target::Peer(peer),
            1,
            opts.deadline,
            now,
        ))
    }

    /// Sends to the closest node of `protocol` (SHA-256 XOR distance to the
    /// routing key), failing over along the order within the retry budget.
    pub fn send_closest(
        &mut self,
        protocol: Protocol,
        body: Bytes,
        opts: ClosestOptions,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        self.check_new(&body)?;
        let hash = match opts.key_hash {
            Some(hash) => hash,
            None => route::key_hash(opts.routing_key.as_deref().unwrap_or(&body)),
        };
        let order = self
            .router
            .order_hashed(&protocol, &hash, &opts.exclude, now)?;
        let budget = self.cfg.max_retries as usize + 1;
        let hedge = opts.hedge.max(1).min(order.len()).min(budget);
        Ok(self.start(
            protocol,
            body,
            opts.deflated,
            Target::Closest { order, next: 0 },
            hedge,
            opts.deadline,
            now,
        ))
    }

    /// Cancels a request: it ends now with [`RequestError::Cancelled`].
    /// Returns false if it had already ended.
    pub fn cancel(&mut self, id: RequestId, now: Instant) -> bool {
        if !self.requests.contains_key(&id) {
            return false;
        }
        self.finish(id, Err(RequestError::Cancelled), now);
        // The freed slot may go to a waiter, or leave a stream to evict.
        self.drain_pool(now);
        true
    }

    /// Closes the client: every pending request ends with
    /// [`RequestError::Closed`], every stream is closed, later sends fail.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut ids: Vec<RequestId> = self.requests.keys().copied().collect();
        // In id order, whatever the map's: the events stay deterministic.
        ids.sort_unstable();
        for id in ids {
            self.finish(id, Err(RequestError::Closed), now);
        }
        for s in self.pool.drain() {
            self.forget_stream(s);
        }
        let rest: Vec<StreamId> = self.streams.keys().copied().collect();
        for s in rest {
            self.forget_stream(s);
        }
        self.timers.clear();
    }

    // ----- handle_* -----

    /// The adapter opened `stream` as asked.
    pub fn handle_stream_opened(&mut self, stream: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            // Given up on already (timeout or close): make sure it goes away.
            self.events.push_back(ClientEvent::CloseStream { stream });
            return;
        };
        if s.open {
            return;
        }
        s.open = true;
        s.opened_at = now;
        s.last_active = now;
        self.timers.stop(Timer::Open(stream));
        self.pool.opened(stream, now);
        let mut waiting: Vec<u64> = s.attempts.iter().copied().collect();
        waiting.sort_unstable();
        for wire in waiting {
            self.write_request(wire, stream, now);
        }
        self.drain_pool(now);
    }

    /// The adapter could not open `stream`.
    pub fn handle_open_failed(&mut self, stream: StreamId, failure: OpenFailure, now: Instant) {
        let err = match failure {
            OpenFailure::UnsupportedProtocol => match self.streams.get(&stream) {
                Some(s) => RequestError::UnsupportedProtocol(s.key.1.clone()),
                None => return,
            },
            OpenFailure::Unreachable(msg) => RequestError::ConnectFailed(msg),
            OpenFailure::Timeout => RequestError::ConnectTimeout,
            OpenFailure::NoAddress => RequestError::NoAddress,
            OpenFailure::WrongPeer { obtained } => RequestError::WrongPeer { obtained },
            OpenFailure::LocalShutdown => {
                // Nothing can be sent from a node that is gone: end every
                // request now rather than after its retries.
                self.close(now);
                return;
            }
        };
        self.fail_stream(stream, err.clone(), err, false, now);
    }

    /// Bytes arrived on `stream`.
    ///
    /// Takes the buffer over (a `BytesMut` read from the stream, or a
    /// slice, copied): single-frame messages are handed on as slices of it.
    pub fn handle_data(&mut self, stream: StreamId, data: impl Into<BytesMut>, now: Instant) {
        let data = data.into();
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.last_active = now;
        s.bytes_in += data.len() as u64;
        self.metrics.bytes_read += data.len() as u64;
        self.stats.wire_received(&s.key.1, data.len());
        s.decoder.push_owned(data);
        loop {
            let Some(s) = self.streams.get_mut(&stream) else {
                return;
            };
            match s.decoder.next() {
                Ok(None) => break,
                Ok(Some(Decoded::Message(msg))) => {
                    let peer = s.key.0.clone();
                    self.peer_deflate.insert(peer, msg.accept_deflate);
                    self.on_message(
                        stream,
                        msg.kind,
                        msg.request_id,
                        msg.deflated,
                        msg.body,
                        now,
                    );
                }
                Ok(Some(Decoded::Oversize {
                    request_id, limit, ..
                })) => {
                    self.on_oversize_response(stream, request_id, limit, now);
                }
                Err(e) => {
                    let err = RequestError::Protocol(e.to_string());
                    self.fail_stream(stream, err.clone(), err, true, now);
                    return;
                }
            }
        }
        self.drain_pool(now);
    }

    /// The adapter inflated the body of a [`ClientEvent::Inflate`]: the
    /// request ends with the response, or, if the body did not inflate
    /// within the limit, with [`RequestError::Oversize`] (too large) or
    /// [`RequestError::Protocol`] (corrupt) once no hedged sibling is left
    /// to answer. Ignored when the request ended meanwhile.
    pub fn handle_inflated(
        &mut self,
        id: RequestId,
        peer: PeerKey,
        result: Result<Bytes, compress::DecompressError>,
        now: Instant,
    ) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(at) = req.inflating.iter().position(|p| *p == peer) else {
            return;
        };
        req.inflating.swap_remove(at);
        match result {
            Ok(body) => self.finish(id, Ok(Response { body, peer }), now),
            Err(e) => {
                let err = match e {
                    compress::DecompressError::TooLarge { limit } => RequestError::Oversize {
                        size: limit.saturating_add(1),
                        limit,
                        side: Side::Local,
                    },
                    other => RequestError::Protocol(format!("response body: {other}")),
                };
                if req.live.is_empty() && req.inflating.is_empty() {
                    self.finish(id, Err(err), now);
                }
            }
        }
        self.drain_pool(now);
    }

    /// `n` bytes handed out for `stream` were written to it.
    pub fn handle_flushed(&mut self, stream: StreamId, n: usize, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.last_active = now;
        let flushed = s.tx.flushed(stream, &mut self.ready, n);
        let read_deadline = now + self.cfg.read_timeout;
        while let Some(&(end, wire)) = s.write_marks.front() {
            if end > flushed {
                break;
            }
            s.write_marks.pop_front();
            if let Some(a) = self.attempts.get_mut(&wire)
                && a.phase == Phase::Writing
            {
                a.phase = Phase::Reading;
                self.timers.set(Timer::Attempt(wire), read_deadline);
            }
        }
    }

    /// `stream` (opened, or still opening) rides on a relayed connection
    /// (through a relay's circuit), as the adapter learned when it opened
    /// it. While its peer has a direct connection too (see
    /// [`Client::handle_direct_path`]) the stream is retired: no new
    /// request is sent on it, the requests on it finish, then it is closed
    /// ([`ClientEvent::CloseStream`]), and new requests open a stream,
    /// which the adapter puts on the direct connection.
    pub fn handle_stream_relayed(&mut self, stream: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.relayed = true;
        if self.direct_paths.contains(&s.key.0) {
            self.pool.retire(stream, now);
            self.drain_pool(now);
        }
    }

    /// Whether `peer` has a direct (not relayed) connection now, as the
    /// adapter sees its connections come and go. When one appears, the
    /// peer's streams on relayed connections are retired (see
    /// [`Client::handle_stream_relayed`]); when the last one goes, streams
    /// opened on a relayed connection from then on are used as any other.
    /// Peers start without a direct path.
    pub fn handle_direct_path(&mut self, peer: &PeerKey, direct: bool, now: Instant) {
        if !direct {
            self.direct_paths.remove(peer);
            return;
        }
        if !self.direct_paths.insert(peer.clone()) {
            return;
        }
        let relayed: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.relayed && s.key.0 == *peer)
            .map(|(id, _)| *id)
            .collect();
        for stream in relayed {
            self.pool.retire(stream, now);
        }
        self.drain_pool(now);
    }

    /// Whether the adapter reported `stream` as riding on a relayed
    /// connection ([`Client::handle_stream_relayed`]).
    pub fn is_relayed(&self, stream: StreamId) -> bool {
        self.streams.get(&stream).is_some_and(|s| s.relayed)
    }

    /// Whether `stream` is retired: no new request goes on it, and it
    /// closes once the requests on it end.
    pub fn is_retired(&self, stream: StreamId) -> bool {
        self.pool.is_retired(stream)
    }

    /// The remote reset `stream`, or it broke.
    pub fn handle_stream_reset(&mut self, stream: StreamId, now: Instant) {
        self.fail_stream(
            stream,
            RequestError::StreamReset,
            RequestError::StreamReset,
            false,
            now,
        );
    }

    /// The remote closed its side of `stream` (end of file).
    pub fn handle_stream_closed(&mut self, stream: StreamId, now: Instant) {
        self.handle_stream_reset(stream, now)
    }

    /// Time passed: fire every deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.stats.fire(now, &mut self.events);
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Attempt(wire) => self.on_attempt_deadline(wire, now),
                Timer::Retry(id) => self.on_retry(id, now),
                Timer::Deadline(id) => {
                    if self.requests.contains_key(&id) {
                        self.finish(id, Err(RequestError::Timeout), now);
                    }
                }
                Timer::Open(stream) => {
                    if self.streams.get(&stream).is_some_and(|s| !s.open) {
                        self.fail_stream(
                            stream,
                            RequestError::ConnectTimeout,
                            RequestError::ConnectTimeout,
                            true,
                            now,
                        );
                    }
                }
            }
        }
        self.pool.handle_timeout(now);
        self.drain_pool(now);
    }

    // ----- poll_* -----

    /// The next thing to do or report.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next bytes to write. Streams take turns; a stream with
    /// [`crate::STREAM_WINDOW`] bytes unflushed waits for [`Client::handle_flushed`].
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = next_transmit(&mut self.ready, &mut self.streams)?;
        self.emitted(t.stream, t.data.len());
        Some(t)
    }

    /// The next stream with bytes to pull now with
    /// [`Client::poll_transmit_on`]: an adapter whose stream tasks pull
    /// their own bytes wakes the task of each stream this returns. A
    /// stream comes back once it has news (bytes queued, window reopened).
    pub fn poll_writable(&mut self) -> Option<StreamId> {
        transmit::next_writable(&mut self.ready, &mut self.streams)
    }

    /// Pulls the next bytes to write on `stream`, packed by the core (up to
    /// [`crate::MAX_TRANSMIT`]), or `None` when nothing is queued or its
    /// window is full. A stream task calls it when its sink can take more,
    /// and reports the bytes written with [`Client::handle_flushed`].
    pub fn poll_transmit_on(&mut self, stream: StreamId) -> Option<Bytes> {
        let data = transmit::pull(&mut self.streams, stream)?;
        self.emitted(stream, data.len());
        Some(data)
    }

    /// When [`Client::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.next_deadline();
        let t = stats::earliest(t, self.stats.next_timeout());
        match (t, self.pool.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- internals -----

    /// `n` bytes of `stream` were handed out: requests whose last byte
    /// just went out start their read phase once flushed.
    fn emitted(&mut self, stream: StreamId, n: usize) {
        self.metrics.bytes_written += n as u64;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        self.stats.wire_sent(&s.key.1, n);
        let emitted = s.tx.emitted;
        // The requests whose last byte just went out: each message
        // finishes once, so each attempt is marked once.
        for wire in s.tx.out.take_done() {
            if s.attempts.contains(&wire)
                && self
                    .attempts
                    .get(&wire)
                    .is_some_and(|a| a.phase == Phase::Writing)
            {
                s.write_marks.push_back((emitted, wire));
            }
        }
    }

    fn check_new(&self, body: &Bytes) -> Result<(), RequestError> {
        if self.closed {
            return Err(RequestError::Closed);
        }
        if body.len() > self.cfg.max_block_size {
            return Err(RequestError::Oversize {
                size: body.len(),
                limit: self.cfg.max_block_size,
                side: Side::Local,
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        protocol: Protocol,
        body: Bytes,
        deflated: Option<Option<Bytes>>,
        target: Target,
        width: usize,
        deadline: Option<Instant>,
        now: Instant,
    ) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.metrics.requests += 1;
        let to = match &target {
            Target::Peer(p) => Some(p),
            Target::Closest { .. } => None,
        };
        self.stats.started(id, &protocol, to, now);
        self.requests.insert(
            id,
            Box::new(Req {
                protocol,
                body,
                compressed: deflated,
                target,
                attempts: 0,
                live: SmallVec::new(),
                retry_at: None,
                failures: Vec::new(),
                ruled_out: BTreeSet::new(),
                inflating: Vec::new(),
            }),
        );
        if let Some(d) = deadline {
            self.timers.set(Timer::Deadline(id), d);
        }
        for _ in 0..width {
            self.start_attempt(id, now);
        }
        self.drain_pool(now);
        id
    }

    fn start_attempt(&mut self, id: RequestId, now: Instant) {
        // Act on grants the pool made but we have not applied yet (a new
        // stream for a waiter, after a discard or release): otherwise
        // `acquire` below can hand out a slot on a stream we have not
        // created, the attempt is attached to nothing and hangs
        // (found by pointsub-sim, seed 7; tests/sim_regressions.rs).
        self.drain_pool(now);
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let Some((node, after)) = req.peek_node() else {
            let failures = std::mem::take(&mut req.failures);
            self.finish(id, Err(RequestError::AllNodesFailed { failures }), now);
            return;
        };
        let kind = AttemptKind::of(
            req.attempts + 1,
            !req.live.is_empty(),
            req.last_node() != Some(&node),
        );
        self.stats.attempt(id, kind);
        if let Target::Closest { next, .. } = &mut req.target {
            *next = after;
        }
        req.attempts += 1;
        if req.attempts > 1 {
            self.metrics.retries += 1;
        }
        self.metrics.attempts += 1;
        let attempt_no = req.attempts;
        let key = (node.clone(), req.protocol.clone());
        let wire = self.next_wire;
        self.next_wire += 1;
        req.live.push(wire);
        self.events.push_back(ClientEvent::AttemptStarted {
            id,
            peer: node.clone(),
            attempt: attempt_no,
        });
        self.attempts.insert(
            wire,
            Attempt {
                req: id,
                node,
                stream: None,
                phase: Phase::Queued,
            },
        );
        let acq = self.pool.acquire(&key, wire, now);
        self.apply_grant(wire, acq, now);
    }

    fn apply_grant(&mut self, wire: u64, acq: Acquire, now: Instant) {
        match acq {
            Acquire::Ready(stream) => {
                self.attach(wire, stream, now);
                self.write_request(wire, stream, now);
            }
            Acquire::Pending(stream) => self.attach(wire, stream, now),
            Acquire::Open(stream) => {
                self.new_stream(stream, now);
                self.attach(wire, stream, now);
            }
            Acquire::Queued => {
                let deadline = now + self.cfg.pool_timeout;
                self.set_attempt_deadline(wire, Phase::Queued, deadline);
            }
        }
    }

    fn new_stream(&mut self, stream: StreamId, now: Instant) {
        let Some(key) = self.pool.key_of(stream).cloned() else {
            return;
        };
        let open_deadline = now + self.cfg.connect_timeout;
        self.timers.set(Timer::Open(stream), open_deadline);
        self.metrics.streams_opened += 1;
        self.events.push_back(ClientEvent::OpenStream {
            stream,
            peer: key.0.clone(),
            protocol: key.1.clone(),
        });
        self.streams.insert(
            stream,
            Stream {
                key,
                open: false,
                decoder: {
                    let mut d = MessageDecoder::new(self.cfg.max_block_size);
                    d.defer_inflate(self.defer_inflate);
                    d.use_pool(self.bodies.clone());
                    d
                },
                tx: Outgoing::logging_done(),
                attempts: FxHashSet::default(),
                write_marks: VecDeque::new(),
                opened_at: now,
                last_active: now,
                bytes_in: 0,
                requests: 0,
                relayed: false,
            },
        );
    }

    /// Binds an attempt to a stream (open or opening).
    fn attach(&mut self, wire: u64, stream: StreamId, _now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.attempts.insert(wire);
        s.requests += 1;
        let open = s.open;
        if let Some(a) = self.attempts.get_mut(&wire) {
            a.stream = Some(stream);
        }
        if !open && let Some(a) = self.attempts.get_mut(&wire) {
            // The stream's own open timer bounds this phase: no attempt timer.
            self.timers.stop(Timer::Attempt(wire));
            a.phase = Phase::Opening;
        }
    }

    fn set_attempt_deadline(&mut self, wire: u64, phase: Phase, deadline: Instant) {
        if let Some(a) = self.attempts.get_mut(&wire) {
            a.phase = phase;
            self.timers.set(Timer::Attempt(wire), deadline);
        }
    }

    /// Queues the attempt's request frames on its (open) stream.
    fn write_request(&mut self, wire: u64, stream: StreamId, now: Instant) {
        let Some(a) = self.attempts.get(&wire) else {
            return;
        };
        let Some(req) = self.requests.get_mut(&a.req) else {
            return;
        };
        let mut flags = Flags::empty();
        if self.cfg.compression {
            flags = flags.with(Flags::ACCEPT_DEFLATE);
        }
        let peer_ok = self.peer_deflate.get(&a.node).copied().unwrap_or(true);
        let mut body = req.body.clone();
        self.stats.body_sent(a.req, body.len());
        if self.cfg.compression && peer_ok && body.len() >= self.cfg.compression_threshold {
            let c = req
                .compressed
                .get_or_insert_with(|| compress::compress(&body, self.cfg.compression_threshold));
            if let Some(c) = c {
                body = c.clone();
                flags = flags.with(Flags::COMPRESSED);
            }
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.tx.push(
            stream,
            &mut self.ready,
            FrameKind::Request,
            wire,
            flags,
            body,
        );
        let deadline = now + self.cfg.write_timeout;
        self.set_attempt_deadline(wire, Phase::Writing, deadline);
    }

    fn on_message(
        &mut self,
        stream: StreamId,
        kind: FrameKind,
        wire: u64,
        deflated: bool,
        body: Bytes,
        now: Instant,
    ) {
        let on_this_stream = self
            .attempts
            .get(&wire)
            .is_some_and(|a| a.stream == Some(stream));
        match kind {
            FrameKind::Response | FrameKind::Error if !on_this_stream => {
                self.metrics.late_frames += 1;
            }
            FrameKind::Response => {
                let Some(a) = self.detach(wire, true, now) else {
                    return;
                };
                self.router.record_success(&a.node);
                if deflated {
                    // Inflated by the adapter, outside its lock: the
                    // request ends in `handle_inflated`.
                    if let Some(req) = self.requests.get_mut(&a.req) {
                        req.inflating.push(a.node.clone());
                        self.events.push_back(ClientEvent::Inflate {
                            id: a.req,
                            peer: a.node,
                            body,
                            limit: self.cfg.max_block_size,
                        });
                    }
                    return;
                }
                self.finish(a.req, Ok(Response { body, peer: a.node }), now);
            }
            FrameKind::Error => {
                let (code, message) = frame::decode_error_body(&body);
                let protocol = self
                    .attempts
                    .get(&wire)
                    .and_then(|a| self.requests.get(&a.req))
                    .map(|r| (r.protocol.clone(), r.body.len()));
                let Some((protocol, size)) = protocol else {
                    return;
                };
                let err = match code {
                    ErrorCode::Busy => RequestError::Busy(message),
                    ErrorCode::Handler => RequestError::Handler(message),
                    ErrorCode::Oversize => RequestError::Oversize {
                        size,
                        limit: last_number(&message).unwrap_or(0),
                        side: Side::Remote,
                    },
                    ErrorCode::UnsupportedProtocol => RequestError::UnsupportedProtocol(protocol),
                    ErrorCode::ShuttingDown => RequestError::ShuttingDown,
                    ErrorCode::Forbidden => RequestError::Forbidden(message),
                    ErrorCode::Timeout => RequestError::ReadTimeout,
                    ErrorCode::Protocol => {
                        let err = RequestError::Protocol(message);
                        self.fail_stream(stream, err.clone(), RequestError::StreamReset, true, now);
                        return;
                    }
                    other => RequestError::Remote {
                        code: other.to_u8(),
                        message,
                    },
                };
                self.fail_attempt(wire, err, true, now);
            }
            FrameKind::Request | FrameKind::Cancel => {
                let err = RequestError::Protocol(format!("server sent a {kind:?} frame"));
                self.fail_stream(stream, err.clone(), err, true, now);
            }
        }
    }

    fn on_oversize_response(&mut self, stream: StreamId, wire: u64, limit: usize, now: Instant) {
        if self
            .attempts
            .get(&wire)
            .is_none_or(|a| a.stream != Some(stream))
        {
            self.metrics.late_frames += 1;
            return;
        }
        let err = RequestError::Oversize {
            size: limit.saturating_add(1),
            limit,
            side: Side::Local,
        };
        self.fail_attempt(wire, err, true, now);
    }

    fn on_attempt_deadline(&mut self, wire: u64, now: Instant) {
        let Some(a) = self.attempts.get(&wire) else {
            return;
        };
        match a.phase {
            Phase::Queued => {
                self.pool.cancel_waiter(wire);
                self.fail_attempt(wire, RequestError::PoolTimeout, false, now);
            }
            Phase::Opening => {} // the stream's open timer handles it
            Phase::Writing => {
                // Part of the request may be on the wire: the stream is unusable.
                if let Some(stream) = a.stream {
                    self.fail_stream(
                        stream,
                        RequestError::WriteTimeout,
                        RequestError::StreamReset,
                        true,
                        now,
                    );
                }
            }
            Phase::Reading => {
                if let Some(stream) = a.stream
                    && let Some(s) = self.streams.get_mut(&stream)
                {
                    s.tx.push_cancel(stream, &mut self.ready, wire);
                }
                self.fail_attempt(wire, RequestError::ReadTimeout, true, now);
            }
        }
        self.drain_pool(now);
    }

    fn on_retry(&mut self, id: RequestId, now: Instant) {
        if let Some(req) = self.requests.get_mut(&id)
            && req.retry_at.is_some()
        {
            req.retry_at = None;
            self.start_attempt(id, now);
            self.drain_pool(now);
        }
    }

    /// Removes an attempt and its stream binding; `healthy` releases its pool
    /// slot (the stream stays usable), otherwise the caller discards the stream.
    fn detach(&mut self, wire: u64, healthy: bool, now: Instant) -> Option<Attempt> {
        let a = self.attempts.remove(&wire)?;
        self.timers.stop(Timer::Attempt(wire));
        if let Some(req) = self.requests.get_mut(&a.req) {
            req.live.retain(|w| *w != wire);
        }
        match a.stream {
            None => {
                if a.phase == Phase::Queued {
                    self.pool.cancel_waiter(wire);
                }
            }
            Some(stream) => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.attempts.remove(&wire);
                    s.write_marks.retain(|&(_, w)| w != wire);
                    if healthy {
                        self.pool.release(stream, now);
                    }
                }
            }
        }
        Some(a)
    }

    /// Ends one attempt with `err`, then retries, fails over or ends the request.
    fn fail_attempt(&mut self, wire: u64, err: RequestError, healthy: bool, now: Instant) {
        let Some(a) = self.detach(wire, healthy, now) else {
            return;
        };
        self.stats.attempt_failed(a.req, &err);
        let Some(req) = self.requests.get_mut(&a.req) else {
            return;
        };
        let closest = matches!(req.target, Target::Closest { .. });
        // A node of the set that does not serve the protocol, has no
        // address or answers with another identity is a node fault for
        // routing: the next closest may well do better. Such a node is
        // ruled out for the rest of the request.
        let final_for_node = closest && err.is_final_for_node();
        if closest && (err.is_retryable() || final_for_node) {
            self.router.record_failure(&a.node, now);
        }
        let auto = match err {
            RequestError::ReadTimeout => self.cfg.retry_on_read_timeout,
            RequestError::PoolTimeout => false,
            ref e if e.is_final_for_node() => final_for_node,
            ref e => e.is_retryable(),
        };
        if closest && auto {
            req.record_failure(&a.node, &err);
        }
        if !req.live.is_empty() || !req.inflating.is_empty() {
            return; // a hedged sibling may still answer, or is being inflated
        }
        let budget_left = req.attempts <= self.cfg.max_retries;
        if !auto {
            self.finish(a.req, Err(err), now);
            return;
        }
        let next = req.peek_node();
        if !budget_left || next.is_none() {
            let err = if closest {
                RequestError::AllNodesFailed {
                    failures: std::mem::take(&mut req.failures),
                }
            } else {
                err
            };
            self.finish(a.req, Err(err), now);
            return;
        }
        // Failover to a different node goes at once; retrying the same node waits.
        let next_differs = match (&req.target, next) {
            (Target::Closest { .. }, Some((n, _))) => {
                n != a.node && !self.router.is_cooling(&n, now)
            }
            _ => false,
        };
        if next_differs {
            self.start_attempt(a.req, now);
        } else {
            let delay = self.backoff.delay(req.attempts, &mut self.rng);
            let at = now + delay;
            req.retry_at = Some(at);
            self.timers.set(Timer::Retry(a.req), at);
        }
    }

    /// Discards a broken stream: attempts bound to it end with `first`
    /// (those writing or opening) or `others`.
    fn fail_stream(
        &mut self,
        stream: StreamId,
        first: RequestError,
        others: RequestError,
        close: bool,
        now: Instant,
    ) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        let mut wires: Vec<u64> = s.attempts.iter().copied().collect();
        wires.sort_unstable();
        self.pool.discard(stream, now);
        if close {
            self.events.push_back(ClientEvent::CloseStream { stream });
        }
        if self.streams.remove(&stream).is_some() {
            self.timers.stop(Timer::Open(stream));
        }
        for wire in wires {
            let phase = self.attempts.get(&wire).map(|a| a.phase);
            let err = match phase {
                Some(Phase::Writing) | Some(Phase::Opening) => first.clone(),
                _ => others.clone(),
            };
            self.fail_attempt(wire, err, false, now);
        }
        self.drain_pool(now);
    }

    /// Ends a request: cancels its live attempts and reports the outcome.
    fn finish(&mut self, id: RequestId, result: Result<Response, RequestError>, now: Instant) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        self.timers.stop(Timer::Deadline(id));
        self.timers.stop(Timer::Retry(id));
        for wire in req.live {
            let Some(a) = self.attempts.get(&wire) else {
                continue;
            };
            let stream = a.stream;
            let phase = a.phase;
            if let Some(stream) = stream
                && let Some(s) = self.streams.get_mut(&stream)
                && s.open
                && matches!(phase, Phase::Writing | Phase::Reading)
            {
                // Unsent: drop it from the queue; sent: tell the server.
                if !s.tx.out.cancel(wire) {
                    s.tx.push_cancel(stream, &mut self.ready, wire);
                }
            }
            self.detach(wire, true, now);
        }
        match &result {
            Ok(_) => self.metrics.succeeded += 1,
            Err(_) => self.metrics.failed += 1,
        }
        self.stats
            .finished(id, result.as_ref().map(|r| r.body.len()), now);
        self.events.push_back(ClientEvent::Completed {
            id,
            result,
            attempts: req.attempts,
        });
    }

    /// Acts on the pool's grants and evictions.
    fn drain_pool(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(g) = self.pool.poll_grant() {
                progressed = true;
                if !self.attempts.contains_key(&g.waiter) {
                    // The waiter is gone: hand the slot straight back.
                    match g.kind {
                        GrantKind::Open => {
                            self.pool.discard(g.stream, now);
                        }
                        _ => self.pool.release(g.stream, now),
                    }
                    continue;
                }
                let acq = match g.kind {
                    GrantKind::Ready => Acquire::Ready(g.stream),
                    GrantKind::Pending => Acquire::Pending(g.stream),
                    GrantKind::Open => Acquire::Open(g.stream),
                };
                self.apply_grant(g.waiter, acq, now);
            }
            while let Some(stream) = self.pool.poll_close() {
                progressed = true;
                if self
                    .streams
                    .get(&stream)
                    .is_some_and(|s| !s.attempts.is_empty())
                {
                    self.fail_stream(
                        stream,
                        RequestError::StreamReset,
                        RequestError::StreamReset,
                        true,
                        now,
                    );
                } else {
                    self.forget_stream(stream);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn forget_stream(&mut self, stream: StreamId) {
        if self.streams.remove(&stream).is_some() {
            self.timers.stop(Timer::Open(stream));
            self.events.push_back(ClientEvent::CloseStream { stream });
        }
    }
}

/// The last run of decimal digits in `s`, if any (the limit in an Oversize message).
fn last_number(s: &str) -> Option<usize> {
    let end = s.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = s[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    s[start..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_number_parses_limits() {
        assert_eq!(last_number("limit is 1024 bytes"), Some(1024));
        assert_eq!(last_number("1048576"), Some(1048576));
        assert_eq!(last_number("none"), None);
    }
}
