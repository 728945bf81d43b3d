//! The server state machine: inbound streams, admission, dispatch by protocol,
//! responses, timeouts and graceful shutdown.
//!
//! See [`Server`] for the polling discipline.

use crate::admission::{Admission, Rejection};
use crate::compress;
use crate::config::ServerConfig;
use crate::error::{ConfigError, ServerError};
use crate::frame::{self, Decoded, ErrorCode, Flags, FrameKind, MessageDecoder};
use crate::metrics::{ConnectionInfo, ServerMetrics};
use crate::stats::{self, ServerBook, ServerStats};
use crate::timer::TimerTable;
use crate::transmit::{self, HasOutgoing, Outgoing, Transmit, next_transmit};
use crate::{Instant, PeerKey, Protocol, StreamId};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Longest handler error message sent back; longer ones are cut.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// What the server needs the adapter to do, or tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Run the protocol's handler on `body`, then call [`Server::respond`]
    /// with the same stream and request id. Every `Request` must be answered
    /// that way exactly once, even after the stream went away or a
    /// [`ServerEvent::Cancel`] (the answer is then dropped, and the admission
    /// slot freed).
    Request {
        /// The stream the request came on.
        stream: StreamId,
        /// The request's id on that stream.
        request_id: u64,
        /// The authenticated peer that sent it.
        peer: PeerKey,
        /// The protocol it was sent on.
        protocol: Protocol,
        /// The request body, decompressed.
        body: Bytes,
    },
    /// A request arrived deflated and the core defers inflating
    /// ([`Server::defer_inflate`]); it was admitted. Inflate `body` with
    /// [`compress::decompress`] and `limit`, outside any lock, and report
    /// the result with [`Server::handle_inflated`]: the core then emits the
    /// [`ServerEvent::Request`] (or answers the error itself).
    Inflate {
        /// The stream the request came on.
        stream: StreamId,
        /// The request's id on that stream.
        request_id: u64,
        /// The request body as it travelled.
        body: Bytes,
        /// Largest inflated body accepted (the block size).
        limit: usize,
    },
    /// The client gave up on the request; the handler may be aborted.
    Cancel {
        /// The stream.
        stream: StreamId,
        /// The request's id on that stream.
        request_id: u64,
    },
    /// Close the stream: gracefully (`reset == false`) or by resetting it.
    /// The core has forgotten it.
    CloseStream {
        /// The stream.
        stream: StreamId,
        /// Whether to reset rather than close.
        reset: bool,
    },
    /// [`Server::shutdown`] finished: no request is being handled any more.
    Stopped,
    /// A handler has been running for
    /// [`ServerConfig::slow_handler_threshold`] and has not answered:
    /// emitted once per request, when it crosses the threshold
    /// (rate-limited, see [`crate::stats`]).
    SlowHandler {
        /// The stream the request came on.
        stream: StreamId,
        /// The request's id on that stream.
        request_id: u64,
        /// The peer that sent it.
        peer: PeerKey,
        /// Its protocol.
        protocol: Protocol,
        /// Time since admission.
        elapsed: std::time::Duration,
        /// Warnings held back by the rate limit since the last one emitted.
        suppressed: u64,
    },
}

/// The statistics' outcome label of an answer with error `code`.
fn outcome_of(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Oversize => "oversize",
        ErrorCode::Protocol => "protocol",
        _ => "handler",
    }
}

/// How [`Server::answer`] answers a request.
enum Reply {
    /// The handler's body.
    Body(Bytes),
    /// An error frame.
    Error(ErrorCode, String),
    /// Nothing: no one waits for the answer (the client cancelled).
    Dropped,
}

struct Handling {
    peer: PeerKey,
    /// Its body is being inflated by the adapter: the protocol of the
    /// [`ServerEvent::Request`] to emit once it is.
    inflating: Option<Protocol>,
    /// When admission let it in: its latency sample runs from here.
    admitted_at: Instant,
    accept_deflate: bool,
    cancelled: bool,
}

struct InStream {
    peer: PeerKey,
    protocol: Protocol,
    decoder: MessageDecoder,
    tx: Outgoing,
    forbidden: bool,
    /// Stop reading: answered a protocol error, closing once flushed.
    broken: bool,
    /// The client closed its side; close ours once everything is answered.
    remote_closed: bool,
    handling: usize,
    opened_at: Instant,
    last_active: Instant,
    read_started: Option<Instant>,
    last_flush: Instant,
    deadline: Instant,
    bytes_in: u64,
    requests: u64,
}

impl HasOutgoing for InStream {
    fn outgoing(&mut self) -> &mut Outgoing {
        &mut self.tx
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Stream(StreamId),
    Adjust,
    Shutdown,
}

/// The server side of pointsub, without I/O.
///
/// # Polling
/// After every call that feeds it (`handle_*`, [`Server::respond`],
/// [`Server::shutdown`]), drain [`Server::poll_event`] and
/// [`Server::poll_transmit`] until both return `None`, then wake it at
/// [`Server::poll_timeout`] with [`Server::handle_timeout`].
///
/// # Guarantees
/// Every complete request gets exactly one answer on its stream: the
/// handler's response, or an error frame (Busy when admission sheds it,
/// Oversize, Handler with the handler's message, ShuttingDown, Forbidden).
/// Load is shed with a typed answer, never dropped.
pub struct Server {
    cfg: ServerConfig,
    protocols: BTreeSet<Protocol>,
    allow: BTreeMap<Protocol, BTreeSet<PeerKey>>,
    admission: Admission,
    streams: BTreeMap<StreamId, InStream>,
    streams_per_peer: BTreeMap<PeerKey, usize>,
    /// Requests admitted and not answered yet. A hash map (the keys are
    /// the core's own ids): walked only at a stream's end and at the
    /// shutdown deadline, the latter in sorted order.
    handling: FxHashMap<(StreamId, u64), Handling>,
    ready: VecDeque<StreamId>,
    timers: TimerTable<Timer>,
    events: VecDeque<ServerEvent>,
    next_stream: u64,
    next_adjust: Option<Instant>,
    shutdown: Option<Instant>,
    stopped: bool,
    metrics: ServerMetrics,
    stats: ServerBook,
    limit_range: (usize, usize),
    /// Deflated requests are handed to the adapter to inflate
    /// ([`Server::defer_inflate`]).
    defer_inflate: bool,
    /// Reassembly buffers shared by the streams' decoders.
    bodies: crate::bodies::BodyPool,
}

impl Server {
    /// A server core, after checking `cfg`.
    pub fn new(cfg: ServerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let admission = Admission::new(cfg.admission());
        let limit = admission.limit();
        Ok(Server {
            stats: ServerBook::new(cfg.slow_handler_threshold),
            cfg,
            protocols: BTreeSet::new(),
            allow: BTreeMap::new(),
            admission,
            streams: BTreeMap::new(),
            streams_per_peer: BTreeMap::new(),
            handling: FxHashMap::default(),
            ready: VecDeque::new(),
            timers: TimerTable::new(),
            events: VecDeque::new(),
            next_stream: 1,
            next_adjust: None,
            shutdown: None,
            stopped: false,
            metrics: ServerMetrics::default(),
            limit_range: (limit, limit),
            defer_inflate: false,
            bodies: crate::bodies::BodyPool::new(),
        })
    }

    /// Defers inflating deflated requests to the adapter: once a request
    /// is admitted the core emits [`ServerEvent::Inflate`] instead of
    /// inflating in [`Server::handle_data`], so that an adapter that runs
    /// the core under a lock inflates (up to the block size: milliseconds
    /// for a large body) without holding it. Off by default: the core
    /// inflates. Applies to streams accepted after the call.
    pub fn defer_inflate(&mut self, on: bool) {
        self.defer_inflate = on;
    }

    // ----- getters -----

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Counters.
    pub fn metrics(&self) -> ServerMetrics {
        let mut m = self.metrics.clone();
        m.active = self.handling.len() as u64;
        m.admission_limit = self.admission.limit() as u64;
        m.latency_baseline = self.admission.baseline();
        m
    }

    /// Per-protocol statistics (see [`crate::stats`]), with the admission
    /// limit and the streams open.
    pub fn stats(&self) -> ServerStats {
        self.stats
            .snapshot(self.admission.limit(), self.streams.len())
    }

    /// The current admission limit (requests handled at once).
    pub fn admission_limit(&self) -> usize {
        self.admission.limit()
    }

    /// The lowest and highest admission limit seen so far.
    pub fn admission_limit_range(&self) -> (usize, usize) {
        self.limit_range
    }

    /// Whether the adapter should read more from `stream` now: false while
    /// more than [`READ_PAUSE_BACKLOG`](crate::READ_PAUSE_BACKLOG) bytes of
    /// answers wait to go out on it (a peer sending requests without
    /// reading the answers), true again once
    /// [`handle_flushed`](Self::handle_flushed) has brought that down.
    /// Unknown streams: true (reading finds out they are gone).
    pub fn wants_data(&self, stream: StreamId) -> bool {
        self.streams
            .get(&stream)
            .is_none_or(|s| s.tx.backlog() <= crate::READ_PAUSE_BACKLOG)
    }

    /// Requests admitted and not answered yet.
    pub fn active(&self) -> usize {
        self.admission.active()
    }

    /// Protocols with a handler.
    pub fn protocols(&self) -> impl Iterator<Item = &Protocol> {
        self.protocols.iter()
    }

    /// Whether [`Server::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// One entry per inbound stream.
    pub fn connections(&self, now: Instant) -> Vec<ConnectionInfo> {
        self.streams
            .iter()
            .map(|(id, s)| ConnectionInfo {
                stream: *id,
                remote: s.peer.clone(),
                protocol: s.protocol.clone(),
                opened_at: s.opened_at,
                last_active: s.last_active,
                idle: now.saturating_duration_since(s.last_active),
                bytes_in: s.bytes_in,
                bytes_out: s.tx.emitted,
                requests: s.requests,
                in_flight: s.handling,
            })
            .collect()
    }

    // ----- mutators -----

    /// Serves `protocol` from now on.
    pub fn register(&mut self, protocol: Protocol) -> Result<(), ServerError> {
        if self.shutdown.is_some() {
            return Err(ServerError::ShuttingDown);
        }
        if !self.protocols.insert(protocol.clone()) {
            return Err(ServerError::AlreadyRegistered(protocol));
        }
        Ok(())
    }

    /// Stops serving `protocol` for new streams; returns whether it was served.
    pub fn unregister(&mut self, protocol: &Protocol) -> bool {
        self.protocols.remove(protocol)
    }

    /// Restricts `protocol` to the given peers (`None`: everyone). Others get
    /// a Forbidden answer to each request.
    pub fn set_allow_list(&mut self, protocol: Protocol, peers: Option<BTreeSet<PeerKey>>) {
        match peers {
            Some(p) => {
                self.allow.insert(protocol, p);
            }
            None => {
                self.allow.remove(&protocol);
            }
        }
    }

    /// Starts a graceful stop: new requests are answered ShuttingDown,
    /// requests being handled may finish until `deadline`; then the rest are
    /// answered ShuttingDown and [`ServerEvent::Stopped`] is emitted.
    pub fn shutdown(&mut self, deadline: Instant, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(deadline);
        self.timers.set(Timer::Shutdown, deadline);
        self.check_stopped(now);
    }

    /// Answers a request announced by [`ServerEvent::Request`]: the
    /// handler's body, or its error message.
    pub fn respond(
        &mut self,
        stream: StreamId,
        request_id: u64,
        result: Result<Bytes, String>,
        now: Instant,
    ) {
        self.respond_with(stream, request_id, result, None, now)
    }

    /// Whether the answer to this request goes out deflated when worth it
    /// (compression on here, and the client accepts it): an adapter then
    /// compresses the body before it calls [`Server::respond_with`],
    /// outside its lock. False for an unknown request.
    pub fn accepts_deflate(&self, stream: StreamId, request_id: u64) -> bool {
        self.cfg.compression
            && self
                .handling
                .get(&(stream, request_id))
                .is_some_and(|h| h.accept_deflate)
    }

    /// [`Server::respond`] with the body's deflated form worked out by the
    /// caller, as [`compress::compress`] returns it (`Some(None)`: not
    /// worth it); `None`: the core compresses if it should.
    pub fn respond_with(
        &mut self,
        stream: StreamId,
        request_id: u64,
        result: Result<Bytes, String>,
        deflated: Option<Option<Bytes>>,
        now: Instant,
    ) {
        if self
            .handling
            .get(&(stream, request_id))
            .is_some_and(|h| h.inflating.is_some())
        {
            return; // no Request was emitted for it yet
        }
        let reply = match result {
            Ok(body) => Reply::Body(body),
            Err(msg) => Reply::Error(ErrorCode::Handler, msg),
        };
        self.answer(stream, request_id, reply, deflated, now);
    }

    /// The adapter inflated the body of a [`ServerEvent::Inflate`]: the
    /// core emits the [`ServerEvent::Request`], or answers
    /// [`ErrorCode::Oversize`] (the body inflates past the block size) or
    /// [`ErrorCode::Protocol`] (corrupt: the stream is then closed once
    /// the answer is written, as when any frame is malformed). Nothing is
    /// emitted if the client cancelled or the stream went away meanwhile
    /// (the admission slot is freed).
    pub fn handle_inflated(
        &mut self,
        stream: StreamId,
        request_id: u64,
        result: Result<Bytes, compress::DecompressError>,
        now: Instant,
    ) {
        let Some(h) = self.handling.get_mut(&(stream, request_id)) else {
            return;
        };
        let Some(protocol) = h.inflating.take() else {
            return;
        };
        if h.cancelled {
            self.answer(stream, request_id, Reply::Dropped, None, now);
            return;
        }
        match result {
            Ok(body) => {
                let peer = h.peer.clone();
                self.stats.received(&protocol, body.len());
                self.events.push_back(ServerEvent::Request {
                    stream,
                    request_id,
                    peer,
                    protocol,
                    body,
                });
            }
            Err(compress::DecompressError::TooLarge { limit }) => {
                let msg = format!("request body exceeds the server limit of {limit} bytes");
                self.answer(
                    stream,
                    request_id,
                    Reply::Error(ErrorCode::Oversize, msg),
                    None,
                    now,
                );
            }
            Err(e) => {
                let msg = format!("request body: {e}");
                self.metrics.protocol_errors += 1;
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.broken = true;
                    s.read_started = None;
                }
                self.answer(
                    stream,
                    request_id,
                    Reply::Error(ErrorCode::Protocol, msg),
                    None,
                    now,
                );
            }
        }
    }

    /// Answers an admitted request and frees its admission slot.
    fn answer(
        &mut self,
        stream: StreamId,
        request_id: u64,
        reply: Reply,
        deflated: Option<Option<Bytes>>,
        now: Instant,
    ) {
        let Some(h) = self.handling.remove(&(stream, request_id)) else {
            return; // answered already, or abandoned at shutdown
        };
        self.admission
            .complete(&h.peer, now.saturating_duration_since(h.admitted_at));
        let alive = self.streams.contains_key(&stream);
        let delivered = alive && !h.cancelled && !matches!(reply, Reply::Dropped);
        self.stats.answered_with(
            (stream, request_id),
            match &reply {
                Reply::Body(body) => Ok(body.len()),
                Reply::Error(code, _) => Err(outcome_of(*code)),
                Reply::Dropped => Err("cancelled"),
            },
            delivered,
            self.cfg.max_block_size,
            now,
        );
        if let Some(s) = self.streams.get_mut(&stream) {
            s.handling -= 1;
            s.last_active = now;
        }
        if delivered {
            match reply {
                Reply::Body(body) if body.len() > self.cfg.max_block_size => {
                    let msg = format!(
                        "response body of {} bytes exceeds the server limit of {} bytes",
                        body.len(),
                        self.cfg.max_block_size
                    );
                    self.send_error(stream, request_id, ErrorCode::Oversize, &msg);
                    self.metrics.failed += 1;
                }
                Reply::Body(body) => {
                    let mut flags = self.own_flags();
                    let mut body = body;
                    if self.cfg.compression && h.accept_deflate {
                        let c = match deflated {
                            Some(c) => c,
                            None => compress::compress(&body, self.cfg.compression_threshold),
                        };
                        if let Some(c) = c {
                            body = c;
                            flags = flags.with(Flags::COMPRESSED);
                        }
                    }
                    self.push(stream, FrameKind::Response, request_id, flags, body);
                    self.metrics.succeeded += 1;
                }
                Reply::Error(code, msg) => {
                    let msg = truncate(&msg, MAX_ERROR_MESSAGE);
                    self.send_error(stream, request_id, code, msg);
                    self.metrics.failed += 1;
                }
                Reply::Dropped => {}
            }
            if let Some(s) = self.streams.get_mut(&stream) {
                s.requests += 1;
            }
        }
        self.rearm(stream, now);
        // A remote-closed stream whose last request was dropped closes now.
        self.close_if_done(stream);
        self.check_stopped(now);
    }

    // ----- handle_* -----

    /// A peer opened a stream for `protocol`. Refusals say why (the adapter
    /// resets the stream).
    pub fn handle_inbound_stream(
        &mut self,
        peer: PeerKey,
        protocol: Protocol,
        now: Instant,
    ) -> Result<StreamId, ServerError> {
        let refuse = if self.stopped {
            Some(ServerError::ShuttingDown)
        } else if !self.protocols.contains(&protocol) {
            Some(ServerError::UnsupportedProtocol(protocol.clone()))
        } else {
            let open = self.streams_per_peer.get(&peer).copied().unwrap_or(0);
            (open >= self.cfg.max_streams_per_peer).then_some(ServerError::TooManyStreams {
                open,
                limit: self.cfg.max_streams_per_peer,
            })
        };
        if let Some(e) = refuse {
            self.metrics.streams_refused += 1;
            return Err(e);
        }
        let forbidden = self
            .allow
            .get(&protocol)
            .is_some_and(|set| !set.contains(&peer));
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        *self.streams_per_peer.entry(peer.clone()).or_insert(0) += 1;
        self.metrics.streams_accepted += 1;
        self.streams.insert(
            id,
            InStream {
                peer,
                protocol,
                decoder: {
                    let mut d = MessageDecoder::new(self.cfg.max_block_size);
                    d.defer_inflate(self.defer_inflate);
                    d.use_pool(self.bodies.clone());
                    d
                },
                tx: Outgoing::new(),
                forbidden,
                broken: false,
                remote_closed: false,
                handling: 0,
                opened_at: now,
                last_active: now,
                read_started: None,
                last_flush: now,
                deadline: Instant::MAX,
                bytes_in: 0,
                requests: 0,
            },
        );
        self.ensure_adjust(now);
        self.rearm(id, now);
        Ok(id)
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
        if s.broken {
            return;
        }
        s.last_active = now;
        s.bytes_in += data.len() as u64;
        self.metrics.bytes_read += data.len() as u64;
        self.stats.wire_received(&s.protocol, data.len());
        s.decoder.push_owned(data);
        // Whether a message ended in this read: a partial one after it
        // started now, not when an earlier one did.
        let mut completed = false;
        loop {
            let Some(s) = self.streams.get_mut(&stream) else {
                return;
            };
            let next = s.decoder.next();
            if matches!(next, Ok(Some(Decoded::Message(_)))) {
                completed = true;
            }
            match next {
                Ok(None) => break,
                Ok(Some(Decoded::Message(m))) => match m.kind {
                    FrameKind::Request => self.on_request(
                        stream,
                        m.request_id,
                        m.accept_deflate,
                        m.deflated,
                        m.body,
                        now,
                    ),
                    FrameKind::Cancel => self.on_cancel(stream, m.request_id),
                    FrameKind::Response | FrameKind::Error => {
                        let msg = format!("a client sent a {:?} frame", m.kind);
                        self.protocol_error(stream, m.request_id, &msg, now);
                        return;
                    }
                },
                Ok(Some(Decoded::Oversize {
                    kind,
                    request_id,
                    limit,
                })) => {
                    if kind == FrameKind::Request {
                        let msg = format!("request body exceeds the server limit of {limit} bytes");
                        self.send_error(stream, request_id, ErrorCode::Oversize, &msg);
                        self.metrics.failed += 1;
                        self.stats
                            .refused_on(self.streams.get(&stream).map(|s| &s.protocol), "oversize");
                    }
                }
                Err(e) => {
                    self.protocol_error(stream, 0, &e.to_string(), now);
                    return;
                }
            }
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.read_started = match (s.decoder.mid_message(), s.read_started) {
                (false, _) => None,
                (true, Some(started)) if !completed => Some(started),
                (true, _) => Some(now),
            };
        }
        self.rearm(stream, now);
    }

    /// `n` bytes handed out for `stream` were written to it.
    pub fn handle_flushed(&mut self, stream: StreamId, n: usize, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.tx.flushed(stream, &mut self.ready, n);
        s.last_flush = now;
        s.last_active = now;
        self.close_if_done(stream);
        self.rearm(stream, now);
    }

    /// The client closed its side of `stream`: answer what is pending, then close.
    pub fn handle_stream_closed(&mut self, stream: StreamId, now: Instant) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.remote_closed = true;
            self.close_if_done(stream);
            self.rearm(stream, now);
        }
    }

    /// The stream was reset or broke: forget it. Handlers still running are
    /// answered into the void (their admission slots free on `respond`).
    pub fn handle_stream_reset(&mut self, stream: StreamId, _now: Instant) {
        self.forget(stream);
    }

    /// Time passed: fire what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.stats.fire(now, &mut self.events);
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Stream(stream) => self.on_stream_deadline(stream, now),
                Timer::Adjust => {
                    self.next_adjust = None;
                    self.admission.adjust();
                    let l = self.admission.limit();
                    self.limit_range = (self.limit_range.0.min(l), self.limit_range.1.max(l));
                    self.ensure_adjust(now);
                }
                Timer::Shutdown => self.on_shutdown_deadline(now),
            }
        }
    }

    // ----- poll_* -----

    /// The next thing to do or report.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next bytes to write; streams take turns.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = next_transmit(&mut self.ready, &mut self.streams)?;
        self.metrics.bytes_written += t.data.len() as u64;
        self.stats.wire_sent_on(
            self.streams.get(&t.stream).map(|s| &s.protocol),
            t.data.len(),
        );
        Some(t)
    }

    /// The next stream with bytes to pull now with
    /// [`Server::poll_transmit_on`] (see [`Client::poll_writable`](crate::Client::poll_writable)).
    pub fn poll_writable(&mut self) -> Option<StreamId> {
        transmit::next_writable(&mut self.ready, &mut self.streams)
    }

    /// Pulls the next bytes to write on `stream`, packed by the core, or
    /// `None` when nothing is queued or its window is full (see
    /// [`Client::poll_transmit_on`](crate::Client::poll_transmit_on)).
    pub fn poll_transmit_on(&mut self, stream: StreamId) -> Option<Bytes> {
        let data = transmit::pull(&mut self.streams, stream)?;
        self.metrics.bytes_written += data.len() as u64;
        self.stats
            .wire_sent_on(self.streams.get(&stream).map(|s| &s.protocol), data.len());
        Some(data)
    }

    /// When [`Server::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        stats::earliest(self.timers.next_deadline(), self.stats.next_timeout())
    }

    // ----- internals -----

    fn own_flags(&self) -> Flags {
        if self.cfg.compression {
            Flags::ACCEPT_DEFLATE
        } else {
            Flags::empty()
        }
    }

    fn push(&mut self, stream: StreamId, kind: FrameKind, id: u64, flags: Flags, body: Bytes) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.tx.is_drained() {
                // The write timeout counts from when there is something to write.
                s.last_flush = s.last_active.max(s.last_flush);
            }
            s.tx.push(stream, &mut self.ready, kind, id, flags, body);
        }
    }

    fn send_error(&mut self, stream: StreamId, id: u64, code: ErrorCode, msg: &str) {
        let flags = self.own_flags();
        self.push(
            stream,
            FrameKind::Error,
            id,
            flags,
            frame::encode_error_body(code, msg),
        );
    }

    fn on_request(
        &mut self,
        stream: StreamId,
        id: u64,
        accept_deflate: bool,
        deflated: bool,
        body: Bytes,
        now: Instant,
    ) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        let peer = s.peer.clone();
        let protocol = s.protocol.clone();
        if s.forbidden {
            let msg = format!("peer not allowed on {protocol}");
            self.send_error(stream, id, ErrorCode::Forbidden, &msg);
            self.metrics.failed += 1;
            self.stats.refused(&protocol, "forbidden");
            return;
        }
        if self.shutdown.is_some() {
            self.send_error(stream, id, ErrorCode::ShuttingDown, "server shutting down");
            self.metrics.failed += 1;
            self.stats.refused(&protocol, "shutting_down");
            return;
        }
        if self.handling.contains_key(&(stream, id)) {
            self.send_error(
                stream,
                id,
                ErrorCode::Protocol,
                "request id already in use on this stream",
            );
            return;
        }
        if let Err(r) = self.admission.try_admit(&peer) {
            let msg = match r {
                Rejection::Busy { active, limit } => {
                    format!("{active} requests active, limit {limit}")
                }
                Rejection::PeerBusy {
                    peer_active,
                    peer_limit,
                } => {
                    format!("{peer_active} requests active for this peer, limit {peer_limit}")
                }
            };
            self.send_error(stream, id, ErrorCode::Busy, &msg);
            self.metrics.rejected_busy += 1;
            self.stats.refused(&protocol, "busy");
            return;
        }
        self.metrics.requests += 1;
        self.stats.admitted((stream, id), &protocol, &peer, now);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.handling += 1;
        }
        self.handling.insert(
            (stream, id),
            Handling {
                peer: peer.clone(),
                inflating: deflated.then(|| protocol.clone()),
                admitted_at: now,
                accept_deflate,
                cancelled: false,
            },
        );
        if !deflated {
            self.stats.received(&protocol, body.len());
        }
        let event = if deflated {
            ServerEvent::Inflate {
                stream,
                request_id: id,
                body,
                limit: self.cfg.max_block_size,
            }
        } else {
            ServerEvent::Request {
                stream,
                request_id: id,
                peer,
                protocol,
                body,
            }
        };
        self.events.push_back(event);
    }

    fn on_cancel(&mut self, stream: StreamId, id: u64) {
        if let Some(h) = self.handling.get_mut(&(stream, id))
            && !h.cancelled
        {
            h.cancelled = true;
            self.stats.cancelled((stream, id));
            // No handler runs yet while the body is being inflated.
            if h.inflating.is_none() {
                self.events.push_back(ServerEvent::Cancel {
                    stream,
                    request_id: id,
                });
            }
        }
    }

    /// Answers a protocol violation with an error frame, stops reading the
    /// stream and closes it once the answer is written.
    fn protocol_error(&mut self, stream: StreamId, id: u64, msg: &str, now: Instant) {
        self.metrics.protocol_errors += 1;
        self.send_error(stream, id, ErrorCode::Protocol, msg);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.broken = true;
            s.read_started = None;
        }
        self.close_if_done(stream);
        self.rearm(stream, now);
    }

    fn close_if_done(&mut self, stream: StreamId) {
        let done = self
            .streams
            .get(&stream)
            .is_some_and(|s| (s.broken || s.remote_closed) && s.handling == 0 && s.tx.is_drained());
        if done {
            self.forget(stream);
            self.events.push_back(ServerEvent::CloseStream {
                stream,
                reset: false,
            });
        }
    }

    fn forget(&mut self, stream: StreamId) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        self.timers.stop(Timer::Stream(stream));
        if let Some(n) = self.streams_per_peer.get_mut(&s.peer) {
            *n -= 1;
            if *n == 0 {
                self.streams_per_peer.remove(&s.peer);
            }
        }
        // Requests still being handled keep their admission slot until
        // `respond`; their answers have nowhere to go.
        if s.handling > 0 {
            for ((st, _), h) in self.handling.iter_mut() {
                if *st == stream {
                    h.cancelled = true;
                }
            }
        }
    }

    /// Recomputes the stream's single deadline: read (a request partly
    /// received), write (bytes not flushed) or idle cleanup.
    fn rearm(&mut self, stream: StreamId, _now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let mut d = Instant::MAX;
        if let Some(started) = s.read_started {
            d = d.min(started + self.cfg.read_timeout);
        }
        if !s.tx.is_drained() {
            d = d.min(s.last_flush + self.cfg.write_timeout);
        } else if s.handling == 0 && s.read_started.is_none() {
            d = d.min(s.last_active + self.cfg.cleanup_interval);
        }
        if d != s.deadline {
            s.deadline = d;
            if d == Instant::MAX {
                self.timers.stop(Timer::Stream(stream));
            } else {
                self.timers.set(Timer::Stream(stream), d);
            }
        }
    }

    fn on_stream_deadline(&mut self, stream: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.deadline = Instant::MAX;
        let read_expired = s
            .read_started
            .is_some_and(|t| t + self.cfg.read_timeout <= now);
        let write_stalled = !s.tx.is_drained() && s.last_flush + self.cfg.write_timeout <= now;
        let idle = s.tx.is_drained()
            && s.handling == 0
            && s.read_started.is_none()
            && s.last_active + self.cfg.cleanup_interval <= now;
        if read_expired || write_stalled {
            self.forget(stream);
            self.events.push_back(ServerEvent::CloseStream {
                stream,
                reset: true,
            });
        } else if idle {
            self.forget(stream);
            self.events.push_back(ServerEvent::CloseStream {
                stream,
                reset: false,
            });
        } else {
            self.rearm(stream, now);
        }
    }

    fn ensure_adjust(&mut self, now: Instant) {
        if self.next_adjust.is_none() {
            let at = now + self.cfg.adjust_interval;
            self.next_adjust = Some(at);
            self.timers.set(Timer::Adjust, at);
        }
    }

    fn on_shutdown_deadline(&mut self, now: Instant) {
        let mut pending: Vec<(StreamId, u64)> = self.handling.keys().copied().collect();
        // In order, whatever the map's: the answers stay deterministic.
        pending.sort_unstable();
        for (stream, id) in pending {
            if let Some(h) = self.handling.remove(&(stream, id)) {
                self.admission.release(&h.peer);
                let outcome = if h.cancelled {
                    "cancelled"
                } else {
                    "shutting_down"
                };
                self.stats.answered((stream, id), outcome, 0, now);
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.handling -= 1;
                }
                if !h.cancelled {
                    self.send_error(
                        stream,
                        id,
                        ErrorCode::ShuttingDown,
                        "server stopped before the handler finished",
                    );
                    self.metrics.failed += 1;
                }
                self.events.push_back(ServerEvent::Cancel {
                    stream,
                    request_id: id,
                });
                self.rearm(stream, now);
                self.close_if_done(stream);
            }
        }
        self.check_stopped(now);
    }

    fn check_stopped(&mut self, _now: Instant) {
        if self.shutdown.is_some() && !self.stopped && self.handling.is_empty() {
            self.stopped = true;
            self.timers.stop(Timer::Shutdown);
            self.events.push_back(ServerEvent::Stopped);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
