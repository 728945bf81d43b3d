//! [`Server`]: answers requests for one or more protocols with async
//! handlers.
//!
//! The server core ([`pointsub_proto::Server`]) decides admission (the
//! adaptive concurrency limit, per-peer caps, "busy" answers), framing, limits,
//! compression, timeouts and the graceful stop. This driver accepts the
//! node's inbound streams for the started protocols, moves their bytes,
//! and runs one handler task per admitted request.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::{BoxFuture, Either};
use futures::{FutureExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use pointsub_proto::{
    ConfigError, Instant, Protocol, ServerConfig, ServerError, ServerEvent, ServerMetrics,
    ServerStats, StreamId,
};
use rustc_hash::FxHashMap;
use tracing::Instrument;

use super::common::{peer_id, peer_key};
use super::driver::{self, Close, Driver, Plumbing, Side, UserHandle, Wakers};
use super::host::Host;
use super::rt::Runtime;

pub use super::common::ConnectionInfo;

/// Default grace period of [`Server::stop`]: in-flight requests get this
/// long to finish (30 s).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// An error a handler returns; its message reaches the caller as
/// [`RequestError::Handler`](pointsub_proto::RequestError::Handler).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Why [`Server::start`] refused a protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// libp2p protocol names start with `/`.
    #[error("invalid protocol name {0:?}: it must start with '/'")]
    InvalidProtocol(String),
    /// Another server or listener on this node already serves it.
    #[error("protocol {0} is already served on this node")]
    AlreadyRegistered(String),
    /// The server was stopped.
    #[error("the server has been stopped")]
    Stopped,
}

impl StartError {
    /// Whether trying again may succeed (never: each cause is permanent
    /// for this server).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

type Handler =
    Arc<dyn Fn(PeerId, Bytes) -> BoxFuture<'static, Result<Bytes, String>> + Send + Sync>;

/// Answers requests on a node. Cheap to clone; dropping the last clone
/// stops it at once (without the grace period of [`Server::stop`]).
#[derive(Clone)]
pub struct Server<R: Runtime> {
    handle: Arc<UserHandle<R, State>>,
}

impl<R: Runtime> fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.handle.driver.node.peer_id())
            .finish_non_exhaustive()
    }
}

/// The server core, the handlers and the stop bookkeeping.
pub(crate) struct State {
    core: pointsub_proto::Server,
    plumbing: Plumbing,
    handlers: FxHashMap<Protocol, Handler>,
    /// Stops each protocol's accept loop (unregistering it).
    accept_stops: Vec<oneshot::Sender<()>>,
    /// Callers of `stop` waiting for the end.
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// The core emitted `Stopped`.
    stopped: bool,
}

/// A request admitted by the core, for a handler task.
pub(crate) struct Job {
    stream: StreamId,
    request_id: u64,
    peer: PeerId,
    protocol: Protocol,
    body: Bytes,
    handler: Handler,
    /// The compression threshold if the answer goes out deflated when
    /// worth it: the handler's body is then compressed outside the lock.
    deflate: Option<usize>,
}

/// What a drain of the server core leaves for after the lock.
pub(crate) enum Work {
    /// Run a handler.
    Handle(Job),
    /// Inflate a deflated request body (the core defers it to us, so that
    /// it never runs under the lock).
    Inflate {
        stream: StreamId,
        request_id: u64,
        body: Bytes,
        limit: usize,
    },
}

/// An answer ready for the core: the request, the handler's result and,
/// worked out outside the lock, the body's deflated form.
type Answer = (StreamId, u64, Result<Bytes, String>, Option<Option<Bytes>>);

/// What work done outside the lock hands back to the core.
pub(crate) enum Ready {
    /// A handler's answer.
    Answer(Answer),
    /// A request body, inflated.
    Inflated {
        stream: StreamId,
        request_id: u64,
        result: Result<Bytes, pointsub_proto::compress::DecompressError>,
    },
}

/// Deflates an answer's body when `deflate` says so (see [`Job::deflate`]).
fn deflated_answer(
    stream: StreamId,
    request_id: u64,
    result: Result<Bytes, String>,
    deflate: Option<usize>,
) -> Answer {
    let deflated = match (&result, deflate) {
        (Ok(body), Some(threshold)) => Some(pointsub_proto::compress::compress(body, threshold)),
        _ => None,
    };
    (stream, request_id, result, deflated)
}

type Shared<R> = Driver<R, State>;

impl State {
    fn drain_into(&mut self, now: Instant, wakers: &mut Wakers, jobs: &mut Vec<Work>) {
        while let Some(event) = self.core.poll_event() {
            match event {
                ServerEvent::Request {
                    stream,
                    request_id,
                    peer,
                    protocol,
                    body,
                } => {
                    let handler = self.handlers.get(&protocol).cloned();
                    match (handler, peer_id(&peer)) {
                        (Some(handler), Some(peer)) => jobs.push(Work::Handle(Job {
                            stream,
                            request_id,
                            peer,
                            protocol,
                            body,
                            handler,
                            deflate: self
                                .core
                                .accepts_deflate(stream, request_id)
                                .then_some(self.core.config().compression_threshold),
                        })),
                        _ => self.core.respond(
                            stream,
                            request_id,
                            Err(format!("no handler for protocol {protocol}")),
                            now,
                        ),
                    }
                }
                ServerEvent::Inflate {
                    stream,
                    request_id,
                    body,
                    limit,
                } => jobs.push(Work::Inflate {
                    stream,
                    request_id,
                    body,
                    limit,
                }),
                ServerEvent::Cancel { stream, request_id } => {
                    tracing::debug!(%stream, request_id, "request cancelled by the client");
                }
                ServerEvent::SlowHandler {
                    stream,
                    request_id,
                    peer,
                    protocol,
                    elapsed,
                    suppressed,
                } => {
                    let peer = peer_id(&peer);
                    tracing::warn!(
                        %stream,
                        request_id,
                        %protocol,
                        peer = ?peer,
                        elapsed_ms = elapsed.as_millis() as u64,
                        suppressed,
                        "slow handler: still running past the threshold"
                    );
                }
                ServerEvent::CloseStream { stream, reset } => {
                    let how = if reset { Close::Reset } else { Close::Graceful };
                    self.plumbing.close(stream, how, wakers);
                }
                ServerEvent::Stopped => {
                    tracing::debug!("server stopped");
                    self.stopped = true;
                    for stop in self.accept_stops.drain(..) {
                        let _ = stop.send(());
                    }
                    self.plumbing.stop_all(wakers);
                }
                _ => {}
            }
        }
        while let Some(id) = self.core.poll_writable() {
            self.plumbing.writable(id, wakers);
        }
        self.plumbing.rearm(self.core.poll_timeout(), wakers);
        self.release_stop_waiters();
    }

    /// Once stopped and every stream has flushed its last bytes, `stop`
    /// returns.
    fn release_stop_waiters(&mut self) {
        if self.stopped && self.plumbing.streams() == 0 {
            for w in self.stop_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl<R: Runtime> Side<R> for State {
    type Work = Work;
    type Ready = Ready;

    fn plumbing(&mut self) -> &mut Plumbing {
        &mut self.plumbing
    }

    fn drain(&mut self, now: Instant, wakers: &mut Wakers, jobs: &mut Vec<Work>) {
        self.drain_into(now, wakers, jobs);
    }

    /// Runs the handlers of one drain (see [`start_job`]) and inflates
    /// its deflated requests; the answers of the handlers ready at once
    /// and the inflated bodies are returned, to be handed in together
    /// under one lock.
    fn run_all(driver: &Arc<Shared<R>>, work: Vec<Work>) -> Vec<Ready> {
        work.into_iter()
            .filter_map(|w| match w {
                Work::Handle(job) => start_job(driver, job).map(Ready::Answer),
                Work::Inflate {
                    stream,
                    request_id,
                    body,
                    limit,
                } => Some(Ready::Inflated {
                    stream,
                    request_id,
                    result: pointsub_proto::compress::decompress(&body, limit),
                }),
            })
            .collect()
    }

    fn hand_in(&mut self, ready: Vec<Ready>, now: Instant) {
        for r in ready {
            match r {
                Ready::Answer((stream, id, result, deflated)) => {
                    self.core.respond_with(stream, id, result, deflated, now);
                }
                Ready::Inflated {
                    stream,
                    request_id,
                    result,
                } => self.core.handle_inflated(stream, request_id, result, now),
            }
        }
    }

    fn wants_read(&self, id: StreamId) -> bool {
        self.core.wants_data(id)
    }

    fn handle_data(&mut self, id: StreamId, data: BytesMut, now: Instant) {
        self.core.handle_data(id, data, now);
    }

    fn pull(&mut self, id: StreamId) -> Option<Bytes> {
        self.core.poll_transmit_on(id)
    }

    fn handle_flushed(&mut self, id: StreamId, n: usize, now: Instant) {
        self.core.handle_flushed(id, n, now);
    }

    fn handle_end(&mut self, id: StreamId, reset: bool, now: Instant) -> bool {
        if reset {
            self.core.handle_stream_reset(id, now);
        } else {
            // The core may still answer what it read; it closes the stream
            // when done.
            self.core.handle_stream_closed(id, now);
        }
        !reset
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn connections(&self, now: Instant) -> Vec<pointsub_proto::ConnectionInfo> {
        self.core.connections(now)
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    fn stream_finished(&mut self, id: StreamId) {
        self.plumbing.remove(id);
        self.release_stop_waiters();
    }

    fn last_handle_dropped(driver: &Shared<R>) {
        driver.with_core(|state, now| state.core.shutdown(now, now));
    }
}

/// Runs a handler for one request.
///
/// The handler's future is polled once right here: the answer of one that
/// is ready at once (an echo, a cache hit) is returned, for the caller to
/// give to the core without a task or a wake-up (its answer joins the
/// stream's writes in the same pass). Only a handler that has to wait gets
/// a task of its own, which answers by itself.
fn start_job<R: Runtime>(driver: &Arc<Shared<R>>, job: Job) -> Option<Answer> {
    let span = tracing::debug_span!(
        "handle",
        stream = %job.stream,
        request = job.request_id,
        peer = %job.peer,
        protocol = %job.protocol,
    );
    let mut guard = RespondOnDrop {
        shared: driver.clone(),
        stream: job.stream,
        request_id: job.request_id,
        deflate: job.deflate,
        armed: true,
    };
    let Job {
        peer,
        body,
        handler,
        ..
    } = job;
    // The handler's future is boxed already (`Handler`), so it is
    // polled in place; a panic in the call that makes it counts as the
    // handler's too.
    let made = {
        let _entered = span.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| handler(peer, body)))
    };
    let mut answer = match made {
        Ok(future) => AssertUnwindSafe(future).catch_unwind(),
        Err(_) => {
            guard.armed = false;
            return Some(deflated_answer(
                guard.stream,
                guard.request_id,
                Err("handler panicked".to_owned()),
                guard.deflate,
            ));
        }
    };
    let first = {
        let _entered = span.enter();
        // A no-op waker is enough: if the handler is not ready, the
        // task below polls it again at once with its own waker.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        Pin::new(&mut answer).poll(&mut cx)
    };
    match first {
        Poll::Ready(result) => {
            guard.armed = false;
            let result = result.unwrap_or_else(|_| Err("handler panicked".to_owned()));
            Some(deflated_answer(
                guard.stream,
                guard.request_id,
                result,
                guard.deflate,
            ))
        }
        Poll::Pending => {
            let task = async move {
                let result = answer
                    .await
                    .unwrap_or_else(|_| Err("handler panicked".to_owned()));
                guard.respond(result);
            };
            driver.node.runtime().spawn(Box::pin(task.instrument(span)));
            None
        }
    }
}

impl<R: Runtime> Shared<R> {
    /// A peer opened a stream for one of our protocols.
    fn inbound(&self, peer: PeerId, protocol: Protocol, stream: libp2p::Stream) {
        let admitted = self.with_core(|state, now| {
            match state
                .core
                .handle_inbound_stream(peer_key(&peer), protocol.clone(), now)
            {
                Ok(id) => Some((id, state.plumbing.add_stream(id))),
                Err(error) => {
                    tracing::debug!(%peer, %protocol, %error, "inbound stream refused");
                    None
                }
            }
        });
        match (admitted, self.handle()) {
            (Some((id, wire)), Some(this)) => {
                let span = tracing::debug_span!(parent: None, "server_stream", stream = %id, %peer, %protocol);
                driver::spawn_stream(&this, id, wire, stream, span);
            }
            // Refused: dropping the stream resets it.
            _ => drop(stream),
        }
    }
}

/// Answers a request exactly once: with the handler's result, or with an
/// error if the handler task is dropped first (runtime shutting down).
struct RespondOnDrop<R: Runtime> {
    shared: Arc<Shared<R>>,
    stream: StreamId,
    request_id: u64,
    deflate: Option<usize>,
    armed: bool,
}

impl<R: Runtime> RespondOnDrop<R> {
    fn respond(&mut self, result: Result<Bytes, String>) {
        if std::mem::replace(&mut self.armed, false) {
            let (stream, id, result, deflated) =
                deflated_answer(self.stream, self.request_id, result, self.deflate);
            self.shared
                .with_core(|state, now| state.core.respond_with(stream, id, result, deflated, now));
        }
    }
}

impl<R: Runtime> Drop for RespondOnDrop<R> {
    fn drop(&mut self) {
        if self.armed {
            self.respond(Err("handler was dropped before answering".to_owned()));
        }
    }
}

impl<R: Runtime> Server<R> {
    /// A server on `host` with `config` (checked first). It serves
    /// nothing until [`Server::start`].
    ///
    /// `host` is a [`Node`](crate::generic::Node) (`&node`) or the
    /// [`Host`] of a [`Behaviour`](crate::Behaviour) in the application's
    /// own swarm. The server stops by itself when the host's swarm is
    /// dropped.
    pub fn new(host: &Host<R>, config: ServerConfig) -> Result<Self, ConfigError> {
        let mut core = pointsub_proto::Server::new(config)?;
        // Deflated requests are inflated outside the lock (`run_all`).
        core.defer_inflate(true);
        let shared = Driver::start(
            host,
            State {
                core,
                plumbing: Plumbing::default(),
                handlers: FxHashMap::default(),
                accept_stops: Vec::new(),
                stop_waiters: Vec::new(),
                stopped: false,
            },
        );
        Ok(Self {
            handle: Arc::new(UserHandle { driver: shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared<R>> {
        &self.handle.driver
    }

    /// The host this server answers on (a node's, or an embedding
    /// application's). Replaces `node()`: a server on an application's
    /// own swarm has no [`Node`](crate::generic::Node).
    pub fn host(&self) -> &Host<R> {
        &self.shared().node
    }

    /// Serves `protocol` with `handler`, which gets the caller's
    /// authenticated `PeerId` and the request body and returns the
    /// response body, or an error whose message the caller receives as
    /// [`RequestError::Handler`](pointsub_proto::RequestError::Handler).
    ///
    /// One server may serve several protocols. A handler that panics is
    /// answered with an error; the server keeps running.
    pub fn start<F, Fut, E>(&self, protocol: &str, handler: F) -> Result<(), StartError>
    where
        F: Fn(PeerId, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: fmt::Display,
    {
        let stream_protocol = StreamProtocol::try_from_owned(protocol.to_owned())
            .map_err(|_| StartError::InvalidProtocol(protocol.to_owned()))?;
        let name = Protocol::from(protocol);
        let handler: Handler = Arc::new(move |peer, body| {
            let fut = handler(peer, body);
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        {
            let mut state = self.shared().lock();
            if state.stopped {
                return Err(StartError::Stopped);
            }
            state.core.register(name.clone()).map_err(|e| match e {
                ServerError::AlreadyRegistered(_) => {
                    StartError::AlreadyRegistered(protocol.to_owned())
                }
                _ => StartError::Stopped,
            })?;
            state.handlers.insert(name.clone(), handler);
            state.accept_stops.push(stop_tx);
        }
        let mut incoming = match self.host().accept(stream_protocol) {
            Ok(incoming) => incoming,
            Err(_) => {
                let mut state = self.shared().lock();
                state.core.unregister(&name);
                state.handlers.remove(&name);
                return Err(StartError::AlreadyRegistered(protocol.to_owned()));
            }
        };
        let shared = Arc::downgrade(self.shared());
        let span = tracing::debug_span!("accept", protocol = %name);
        let task = async move {
            let mut stop = stop_rx;
            loop {
                let next = futures::future::select(&mut stop, incoming.next()).await;
                let (peer, stream) = match next {
                    Either::Right((Some(s), _)) => s,
                    // Stopped, or the node shut down.
                    _ => break,
                };
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                shared.inbound(peer, name.clone(), stream);
            }
            // Dropping `incoming` unregisters the protocol from the node.
        };
        self.host().runtime().spawn(Box::pin(task.instrument(span)));
        Ok(())
    }

    /// Only `peers` may call `protocol` (others get
    /// [`RequestError::Forbidden`](pointsub_proto::RequestError::Forbidden));
    /// `None` lifts the restriction.
    pub fn set_allow_list(&self, protocol: &str, peers: Option<Vec<PeerId>>) {
        let peers: Option<BTreeSet<_>> = peers.map(|p| p.iter().map(peer_key).collect());
        self.shared()
            .lock()
            .core
            .set_allow_list(Protocol::from(protocol), peers);
    }

    /// Stops gracefully with the [`DEFAULT_STOP_TIMEOUT`] grace period (see
    /// [`Server::stop_with_timeout`]).
    pub async fn stop(&self) {
        self.stop_with_timeout(DEFAULT_STOP_TIMEOUT).await;
    }

    /// Stops gracefully: new requests are answered
    /// [`RequestError::ShuttingDown`](pointsub_proto::RequestError::ShuttingDown)
    /// (retryable, so clients fail over), requests being handled have
    /// `grace` to finish and be answered, then the rest are answered
    /// `ShuttingDown` too and the protocols are unregistered. Returns once
    /// every answer has been written (or, for a peer that stopped reading,
    /// after the write timeout).
    pub async fn stop_with_timeout(&self, grace: Duration) {
        let shared = self.shared();
        let (tx, rx) = oneshot::channel();
        shared.with_core(|state, now| {
            state.stop_waiters.push(tx);
            state.core.shutdown(now + grace, now);
        });
        let write_timeout = shared.lock().core.config().write_timeout;
        let bound = shared.node.runtime().sleep(grace + write_timeout);
        let _ = futures::future::select(rx, bound).await;
    }

    /// Whether the server has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared().lock().stopped
    }

    /// Counters: requests, outcomes, "busy" refusals, bytes, streams.
    pub fn metrics(&self) -> ServerMetrics {
        self.shared().lock().core.metrics()
    }

    /// Per-protocol statistics: outcomes, handler latency histogram,
    /// requests in flight, Busy answers, cancellations, body and wire
    /// bytes, slow handlers, the admission limit (see
    /// [`pointsub_proto::stats`]).
    pub fn stats(&self) -> ServerStats {
        self.shared().lock().core.stats()
    }

    /// Reads [`Server::stats`] without keeping the server alive: `None`
    /// once every clone of it was dropped.
    #[cfg(feature = "metrics")]
    pub(crate) fn stats_source(&self) -> crate::metrics::StatsSource<ServerStats> {
        let weak = Arc::downgrade(&self.handle.driver);
        Box::new(move || weak.upgrade().map(|d| d.lock().core.stats()))
    }

    /// The inbound streams open now: remote peer and address, last
    /// activity, idle time, bytes each way and requests carried.
    pub fn connections_info(&self) -> Vec<ConnectionInfo> {
        self.shared().connections_info()
    }

    /// Requests being handled now.
    pub fn active(&self) -> usize {
        self.shared().lock().core.active()
    }

    /// The current admission limit: it adapts to latency and demand (see
    /// [`pointsub_proto::admission`]); also in [`ServerMetrics::admission_limit`].
    pub fn admission_limit(&self) -> usize {
        self.shared().lock().core.admission_limit()
    }
}
