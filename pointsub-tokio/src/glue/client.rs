//! [`Client`]: requests to peers by `PeerId`, or to the closest of a set of
//! server nodes, over pooled libp2p streams.
//!
//! The client core ([`pointsub_proto::Client`]) decides everything: which
//! pooled stream a request rides on, when to open one, retries with
//! backoff, failover between nodes, timeouts, size limits, compression.
//! This driver opens the streams it asks for, moves their bytes, and
//! hands each request's single outcome back to the caller's future.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use pointsub_proto::{
    ClientConfig, ClientEvent, ClientMetrics, ClientStats, ConfigError, Instant, OpenFailure,
    PeerKey, Protocol, RequestError, RequestId, StreamId,
};
use rustc_hash::FxHashMap;
use tracing::Instrument;

use super::behaviour::{ConnectionPath, Control, OpenStreamError, PathChange};
use super::common::{ConnectionInfo, peer_id, peer_key};
use super::discovery::ClientDiscovery;
use super::driver::{self, Close, Driver, Plumbing, Side, UserHandle, Wakers};
use super::host::Host;
use super::rt::Runtime;

/// A response from [`Client::send_closest`]: the body and the node that
/// answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The response body.
    pub body: Bytes,
    /// The server node that produced it.
    pub peer: PeerId,
}

/// Options of [`Client::send_closest_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClosestOptions {
    /// What distance is measured to; the request body when `None`.
    pub routing_key: Option<Bytes>,
    /// Nodes not to use for this request.
    pub exclude: Vec<PeerId>,
    /// Send to this many of the closest nodes at once; the first answer
    /// wins (1: no hedging).
    pub hedge: usize,
    /// Overall time allowed for the request, retries included (`None`:
    /// bounded only by the per-attempt timeouts and the retry budget).
    pub timeout: Option<Duration>,
}

impl Default for ClosestOptions {
    fn default() -> Self {
        Self {
            routing_key: None,
            exclude: Vec::new(),
            hedge: 1,
            timeout: None,
        }
    }
}

impl ClosestOptions {
    /// Routes by `key` instead of by the body.
    #[must_use]
    pub fn with_routing_key(mut self, key: impl Into<Bytes>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Leaves `peers` out of this request's candidates.
    #[must_use]
    pub fn with_exclude(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.exclude = peers.into_iter().collect();
        self
    }

    /// Sends to the `k` closest nodes at once (at least 1).
    #[must_use]
    pub fn with_hedge(mut self, k: usize) -> Self {
        self.hedge = k.max(1);
        self
    }

    /// Bounds the whole request, retries included.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Reads the peers in a [`RequestError`] back as libp2p [`PeerId`]s (the
/// core knows peers only as [`PeerKey`] bytes).
pub trait RequestErrorExt {
    /// For [`RequestError::AllNodesFailed`]: each node tried, with its last
    /// failure, in the order first tried. Empty for any other error.
    fn node_failures(&self) -> Vec<(PeerId, RequestError)>;

    /// For [`RequestError::WrongPeer`]: the identity that answered at the
    /// peer's (stale) address. `None` for any other error.
    fn obtained_peer(&self) -> Option<PeerId>;
}

impl RequestErrorExt for RequestError {
    fn node_failures(&self) -> Vec<(PeerId, RequestError)> {
        match self {
            RequestError::AllNodesFailed { failures } => failures
                .iter()
                .filter_map(|f| Some((peer_id(&f.node)?, f.error.clone())))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn obtained_peer(&self) -> Option<PeerId> {
        match self {
            RequestError::WrongPeer { obtained } => peer_id(obtained),
            _ => None,
        }
    }
}

thread_local! {
    /// The protocol this thread's last send named, as the core knows it.
    static LAST_PROTOCOL: RefCell<Option<Protocol>> = const { RefCell::new(None) };
}

/// A protocol name as the core knows it, refused unless libp2p accepts it.
/// Shared with the thread's last send to the same protocol (most are), so
/// a request does not allocate its own copy of the name.
fn protocol_name(name: &str) -> Result<Protocol, RequestError> {
    if !name.starts_with('/') {
        return Err(RequestError::InvalidProtocol(name.to_owned()));
    }
    let cached = LAST_PROTOCOL.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if let Some(p) = last.as_ref()
            && p.as_str() == name
        {
            return Some(p.clone());
        }
        let p = Protocol::from(name);
        *last = Some(p.clone());
        Some(p)
    });
    Ok(match cached {
        Ok(Some(p)) => p,
        _ => Protocol::from(name),
    })
}

/// Sends requests and collects their responses. Cheap to clone: clones
/// share one core, one stream pool and one set of server nodes. Dropping
/// the last clone closes the client.
#[derive(Clone)]
pub struct Client<R: Runtime> {
    handle: Arc<UserHandle<R, State>>,
    /// The compression threshold when compression is on: bodies at least
    /// this long are deflated before the core's lock is taken.
    deflate: Option<usize>,
}

impl<R: Runtime> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.handle.driver.node.peer_id())
            .finish_non_exhaustive()
    }
}

type Waiter = oneshot::Sender<Result<pointsub_proto::Response, RequestError>>;

/// The client core and the requests waiting for their outcome.
pub(crate) struct State {
    core: pointsub_proto::Client,
    plumbing: Plumbing,
    waiters: FxHashMap<RequestId, Waiter>,
    /// The node's behaviour handle: tells whether the node has shut down.
    control: Control,
    /// The connection each open stream rides on.
    paths: HashMap<StreamId, ConnectionPath>,
    /// The id of this client's watch of direct connections, until closed.
    path_watch: Option<u64>,
    /// Identify-based discovery of server nodes (`discovery/`).
    discovery: ClientDiscovery,
}

impl State {
    /// Stops hearing of direct connections (the client is closing).
    fn unwatch_paths(&mut self) {
        if let Some(id) = self.path_watch.take() {
            self.control.unwatch_paths(id);
        }
    }
}

/// A handle on a client's server-node sets that does not keep the client
/// open: what discovery tasks update them through.
pub(crate) struct NodeSets<R: Runtime>(std::sync::Weak<Shared<R>>);

impl<R: Runtime> NodeSets<R> {
    /// Runs `f` on the core and the discovery bookkeeping; `None` once the
    /// client is closed or gone.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut pointsub_proto::Client, &mut ClientDiscovery) -> T,
    ) -> Option<T> {
        let driver = self.0.upgrade()?;
        let mut state = driver.lock();
        if state.plumbing.stopped {
            return None;
        }
        let state = &mut *state;
        Some(f(&mut state.core, &mut state.discovery))
    }
}

/// A stream the core asked for.
pub(crate) struct OpenRequest {
    stream: StreamId,
    peer: PeerKey,
    protocol: Protocol,
}

/// What a drain of the client core leaves for after the lock.
pub(crate) enum Work {
    /// Open a stream.
    Open(OpenRequest),
    /// Tell a caller its request's outcome (sending wakes its task, which
    /// is not done under the lock).
    Complete(Waiter, Result<pointsub_proto::Response, RequestError>),
    /// Inflate a deflated response (the core defers it to us, so that it
    /// never runs under the lock).
    Inflate {
        id: pointsub_proto::RequestId,
        peer: PeerKey,
        body: Bytes,
        limit: usize,
    },
}

/// A response body inflated outside the lock, for the core.
pub(crate) struct Inflated {
    id: pointsub_proto::RequestId,
    peer: PeerKey,
    result: Result<Bytes, pointsub_proto::compress::DecompressError>,
}

type Shared<R> = Driver<R, State>;

impl<R: Runtime> Side<R> for State {
    type Work = Work;
    /// Inflated response bodies.
    type Ready = Inflated;

    fn plumbing(&mut self) -> &mut Plumbing {
        &mut self.plumbing
    }

    fn drain(&mut self, now: Instant, wakers: &mut Wakers, work: &mut Vec<Work>) {
        while let Some(event) = self.core.poll_event() {
            match event {
                ClientEvent::OpenStream {
                    stream,
                    peer,
                    protocol,
                } => work.push(Work::Open(OpenRequest {
                    stream,
                    peer,
                    protocol,
                })),
                ClientEvent::CloseStream { stream } => {
                    self.plumbing.close(stream, Close::Graceful, wakers);
                }
                ClientEvent::AttemptStarted { id, peer, attempt } => {
                    tracing::debug!(request = %id, peer = ?peer_id(&peer), attempt, "attempt started");
                }
                ClientEvent::Completed {
                    id,
                    result,
                    attempts,
                } => {
                    tracing::debug!(request = %id, attempts, ok = result.is_ok(), "request completed");
                    if let Some(waiter) = self.waiters.remove(&id) {
                        work.push(Work::Complete(waiter, result));
                    }
                }
                ClientEvent::Inflate {
                    id,
                    peer,
                    body,
                    limit,
                } => work.push(Work::Inflate {
                    id,
                    peer,
                    body,
                    limit,
                }),
                ClientEvent::SlowRequest {
                    id,
                    protocol,
                    peer,
                    elapsed,
                    suppressed,
                } => {
                    let peer = peer.as_ref().and_then(peer_id);
                    tracing::warn!(
                        request = %id,
                        %protocol,
                        peer = ?peer,
                        elapsed_ms = elapsed.as_millis() as u64,
                        suppressed,
                        "slow request: still waiting for its outcome past the threshold"
                    );
                }
                _ => {}
            }
        }
        // A request on an idle stream goes out from here, the sender's
        // task (once per drain: a large body's rest is the task's); a busy
        // stream's task packs what accumulated into few large writes.
        let mut write_now = true;
        while let Some(id) = self.core.poll_writable() {
            if write_now && self.core.stream_in_flight(id) == 1 {
                let core = &mut self.core;
                if let Some(n) = self
                    .plumbing
                    .write_now(id, || core.poll_transmit_on(id), wakers)
                {
                    write_now = false;
                    if n > 0 {
                        self.core.handle_flushed(id, n, now);
                    }
                    continue;
                }
            }
            self.plumbing.writable(id, wakers);
        }
        self.plumbing.rearm(self.core.poll_timeout(), wakers);
        if self.core.is_closed() && !self.plumbing.stopped {
            // The core closed itself (its node shut down): stop as
            // `Client::close` does.
            self.plumbing.stop_all(wakers);
            self.unwatch_paths();
        }
    }

    /// Opens the streams the core asked for, in the background, tells
    /// callers their outcomes, and inflates deflated responses (handed
    /// back to the core under its next lock).
    fn run_all(driver: &Arc<Shared<R>>, work: Vec<Work>) -> Vec<Self::Ready> {
        let mut inflated = Vec::new();
        for w in work {
            match w {
                Work::Open(req) => open(driver, req),
                // The caller may have gone; nothing to do then.
                Work::Complete(waiter, result) => drop(waiter.send(result)),
                Work::Inflate {
                    id,
                    peer,
                    body,
                    limit,
                } => inflated.push(Inflated {
                    id,
                    peer,
                    result: pointsub_proto::compress::decompress(&body, limit),
                }),
            }
        }
        inflated
    }

    fn hand_in(&mut self, ready: Vec<Self::Ready>, now: Instant) {
        for Inflated { id, peer, result } in ready {
            self.core.handle_inflated(id, peer, result, now);
        }
    }

    fn wants_read(&self, _id: StreamId) -> bool {
        // The client only reads answers to what it asked.
        true
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
        if self.control.is_shut_down() {
            // The stream ended because our own node went away: nothing
            // from this client can succeed any more, so every request ends
            // now with `Closed` instead of after its retries.
            self.core.close(now);
            return false;
        }
        if reset {
            self.core.handle_stream_reset(id, now);
        } else {
            self.core.handle_stream_closed(id, now);
        }
        // The client never writes after the server ended the stream.
        false
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn connections(&self, now: Instant) -> Vec<pointsub_proto::ConnectionInfo> {
        self.core.connections(now)
    }

    fn stream_path(&self, id: StreamId) -> Option<ConnectionPath> {
        self.paths.get(&id).cloned()
    }

    fn stream_finished(&mut self, id: StreamId) {
        self.plumbing.remove(id);
        self.paths.remove(&id);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if !self.plumbing.stopped {
            self.core.handle_timeout(now);
        }
    }

    fn last_handle_dropped(driver: &Shared<R>) {
        driver.close();
    }
}

/// An open the core asked for finished.
fn opened<R: Runtime>(
    driver: &Arc<Shared<R>>,
    stream: StreamId,
    result: Result<(libp2p::Stream, ConnectionPath), OpenFailure>,
) {
    let io = driver.with_core(|state, now| match result {
        Ok((io, path)) => {
            if state.plumbing.stopped {
                return None;
            }
            let wire = state.plumbing.add_stream(stream);
            state.core.handle_stream_opened(stream, now);
            if path.relayed {
                // The core retires it at once if a direct connection to
                // the peer appeared meanwhile.
                state.core.handle_stream_relayed(stream, now);
            }
            state.paths.insert(stream, path);
            Some((io, wire))
        }
        Err(failure) => {
            tracing::debug!(%stream, ?failure, "open failed");
            // On `LocalShutdown` the core closes itself; the drain then
            // stops the plumbing.
            state.core.handle_open_failed(stream, failure, now);
            None
        }
    });
    if let Some((io, wire)) = io {
        // Not a child of the request that opened it: it outlives it.
        let span = tracing::debug_span!(parent: None, "client_stream", %stream);
        driver::spawn_stream(driver, stream, wire, io, span);
    }
}

/// Feeds the core whether peers have a direct connection, as the host's
/// connections come and go, until the client closes or its host goes.
fn spawn_path_watch<R: Runtime>(
    driver: &Arc<Shared<R>>,
    mut changes: mpsc::UnboundedReceiver<PathChange>,
) {
    let weak = Arc::downgrade(driver);
    let task = async move {
        while let Some(change) = changes.next().await {
            let Some(driver) = weak.upgrade() else {
                return;
            };
            let peer = peer_key(&change.peer);
            driver.with_core(|state, now| {
                if !state.plumbing.stopped {
                    state.core.handle_direct_path(&peer, change.direct, now);
                }
            });
        }
    };
    driver.node.runtime().spawn(Box::pin(task));
}

impl<R: Runtime> Shared<R> {
    fn close(&self) {
        self.with_core(|state, now| {
            state.unwatch_paths();
            state.core.close(now);
            // Close completes every request; the drain hands out their
            // errors before the tasks stop.
            let mut wakers = Wakers::default();
            let mut opens = Vec::new();
            Side::<R>::drain(state, now, &mut wakers, &mut opens);
            state.plumbing.stop_all(&mut wakers);
            wakers.wake();
        });
    }

    /// Starts a request with `start` (or ends at once with its error) when
    /// first polled, and waits for its one outcome (see [`RequestFuture`]).
    fn request<F>(&self, start: Result<F, RequestError>) -> RequestFuture<'_, R, F>
    where
        F: FnOnce(&mut pointsub_proto::Client, Instant) -> Result<RequestId, RequestError>
            + Send
            + 'static,
    {
        RequestFuture {
            shared: self,
            state: match start {
                Ok(start) => Phase::Start(start),
                Err(e) => Phase::Failed(e),
            },
        }
    }

    /// Puts a request in: the prepared call runs on the core, and the
    /// sender of its outcome is filed under its id.
    fn submit<F>(
        state: &mut State,
        now: Instant,
        start: F,
        tx: Waiter,
    ) -> Result<RequestId, RequestError>
    where
        F: FnOnce(&mut pointsub_proto::Client, Instant) -> Result<RequestId, RequestError>,
    {
        if state.plumbing.stopped {
            return Err(RequestError::Closed);
        }
        let id = start(&mut state.core, now)?;
        state.waiters.insert(id, tx);
        Ok(id)
    }
}

/// The future of one request. It lives as long as the request, so it is
/// written by hand rather than as an `async fn`, whose arguments stay in
/// the future for its whole life: here the prepared call is dropped once
/// submitted, and what thousands of requests in flight each hold while
/// they wait is the receiver of the outcome and the request's id.
pub(crate) struct RequestFuture<'a, R: Runtime, F> {
    shared: &'a Shared<R>,
    state: Phase<'a, F>,
}

/// Where a [`RequestFuture`] is.
enum Phase<'a, F> {
    /// Not polled yet: the prepared call.
    Start(F),
    /// Preparing the call failed: the first poll returns this.
    Failed(RequestError),
    /// The core's lock was busy at the first poll: the submission waits
    /// for it (boxed: this path is rare, and the future should not hold
    /// room for it in every request).
    Submitting(
        std::pin::Pin<Box<dyn Future<Output = Result<RequestId, RequestError>> + Send + 'a>>,
        oneshot::Receiver<Result<pointsub_proto::Response, RequestError>>,
    ),
    /// In the core: waiting for the outcome.
    Waiting(
        RequestId,
        oneshot::Receiver<Result<pointsub_proto::Response, RequestError>>,
    ),
    /// The outcome was returned.
    Done,
}

impl<R: Runtime, F> Unpin for RequestFuture<'_, R, F> {}

impl<'a, R, F> Future for RequestFuture<'a, R, F>
where
    R: Runtime,
    F: FnOnce(&mut pointsub_proto::Client, Instant) -> Result<RequestId, RequestError>
        + Send
        + 'static,
{
    type Output = Result<pointsub_proto::Response, RequestError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        let shared = this.shared;
        loop {
            match std::mem::replace(&mut this.state, Phase::Done) {
                Phase::Start(start) => {
                    if host_shut_down(&shared.node) {
                        // The node is gone: the request could only fail,
                        // after its retries. The client closes (ending any
                        // other request too).
                        shared.close();
                        return Poll::Ready(Err(RequestError::Closed));
                    }
                    let (tx, rx) = oneshot::channel();
                    let submit =
                        move |state: &mut State, now| Shared::<R>::submit(state, now, start, tx);
                    // Usually the lock is free and the request goes in at once.
                    match shared.try_with_core(submit) {
                        Ok(Ok(id)) => this.state = Phase::Waiting(id, rx),
                        Ok(Err(e)) => return Poll::Ready(Err(e)),
                        Err(submit) => {
                            let wait = Box::pin(shared.with_core_yielding(submit));
                            this.state = Phase::Submitting(wait, rx);
                        }
                    }
                }
                Phase::Failed(e) => return Poll::Ready(Err(e)),
                Phase::Submitting(mut wait, rx) => match wait.as_mut().poll(cx) {
                    Poll::Ready(Ok(id)) => this.state = Phase::Waiting(id, rx),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        this.state = Phase::Submitting(wait, rx);
                        return Poll::Pending;
                    }
                },
                Phase::Waiting(id, mut rx) => match rx.poll_unpin(cx) {
                    Poll::Ready(outcome) => {
                        return Poll::Ready(outcome.unwrap_or(Err(RequestError::Closed)));
                    }
                    Poll::Pending => {
                        this.state = Phase::Waiting(id, rx);
                        return Poll::Pending;
                    }
                },
                Phase::Done => return Poll::Ready(Err(RequestError::Closed)),
            }
        }
    }
}

impl<R: Runtime, F> Drop for RequestFuture<'_, R, F> {
    fn drop(&mut self) {
        // Dropped while the request is in the core: cancel it. (A
        // submission still waiting for the lock is dropped with its
        // boxed future: nothing was put in.)
        if let Phase::Waiting(id, _) = self.state {
            self.shared.with_core(|state, now| {
                state.waiters.remove(&id);
                state.core.cancel(id, now);
            });
        }
    }
}

/// Opens a stream the core asked for, in the background, and reports the
/// outcome to the core.
fn open<R: Runtime>(driver: &Arc<Shared<R>>, req: OpenRequest) {
    let this = driver.clone();
    let node = driver.node.clone();
    let span = tracing::debug_span!("open", stream = %req.stream, protocol = %req.protocol);
    let task = async move {
        if host_shut_down(&node) {
            opened(&this, req.stream, Err(OpenFailure::LocalShutdown));
            return;
        }
        let target = peer_id(&req.peer)
            .ok_or_else(|| OpenFailure::Unreachable("peer key is not a libp2p PeerId".into()));
        let protocol = StreamProtocol::try_from_owned(req.protocol.as_str().to_owned())
            .map_err(|_| OpenFailure::UnsupportedProtocol);
        let result = match (target, protocol) {
            (Ok(peer), Ok(protocol)) => node
                .open_stream_with_path(peer, protocol)
                .await
                .map_err(open_failure),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        opened(&this, req.stream, result);
    };
    driver.node.runtime().spawn(Box::pin(task.instrument(span)));
}

/// Whether the host this driver sends from has shut down (its swarm, a
/// node's or the application's, is gone): nothing can be sent from it any
/// more. A node between `shutdown()` and its swarm's end is caught a moment
/// later, when the open fails with `Shutdown` (the core then closes too).
fn host_shut_down<R: Runtime>(host: &Host<R>) -> bool {
    host.control().is_shut_down()
}

/// What happened, in the core's terms; the core decides what follows.
fn open_failure(e: OpenStreamError) -> OpenFailure {
    match e {
        OpenStreamError::UnsupportedProtocol(_) => OpenFailure::UnsupportedProtocol,
        OpenStreamError::Timeout => OpenFailure::Timeout,
        OpenStreamError::NoAddresses(_) => OpenFailure::NoAddress,
        OpenStreamError::WrongPeer { obtained, .. } => OpenFailure::WrongPeer {
            obtained: peer_key(&obtained),
        },
        OpenStreamError::Shutdown => OpenFailure::LocalShutdown,
        other => OpenFailure::Unreachable(other.to_string()),
    }
}

impl<R: Runtime> Client<R> {
    /// A client sending from `host`, with `config` (checked first).
    ///
    /// `host` is a [`Node`](crate::generic::Node) (`&node`) or the
    /// [`Host`] of a [`Behaviour`](crate::Behaviour) in the application's
    /// own swarm. The client closes by itself when the host's swarm is
    /// dropped: its requests then end with [`RequestError::Closed`].
    pub fn new(host: &Host<R>, config: ClientConfig) -> Result<Self, ConfigError> {
        let deflate = config.compression.then_some(config.compression_threshold);
        let mut core = pointsub_proto::Client::new(peer_key(&host.peer_id()), config)?;
        // Deflated responses are inflated outside the lock (`run_all`).
        core.defer_inflate(true);
        let (watch, changes) = host.control().watch_paths();
        let shared = Driver::start(
            host,
            State {
                core,
                plumbing: Plumbing::default(),
                waiters: FxHashMap::default(),
                control: host.control().clone(),
                paths: HashMap::new(),
                path_watch: Some(watch),
                discovery: ClientDiscovery::default(),
            },
        );
        spawn_path_watch(&shared, changes);
        Ok(Self {
            handle: Arc::new(UserHandle { driver: shared }),
            deflate,
        })
    }

    fn shared(&self) -> &Shared<R> {
        &self.handle.driver
    }

    /// The server-node sets, for discovery tasks.
    pub(crate) fn node_sets(&self) -> NodeSets<R> {
        NodeSets(Arc::downgrade(&self.handle.driver))
    }

    /// The body's deflated form, worked out here, outside the core's lock
    /// (`None` when compression is off or the body is below the threshold:
    /// the core then sends it as it is).
    fn deflated(&self, body: &Bytes) -> Option<Option<Bytes>> {
        let threshold = self.deflate?;
        (body.len() >= threshold).then(|| pointsub_proto::compress::compress(body, threshold))
    }

    /// The host this client sends from (a node's, or an embedding
    /// application's). Replaces `node()`: a client on an application's
    /// own swarm has no [`Node`](crate::generic::Node).
    pub fn host(&self) -> &Host<R> {
        &self.shared().node
    }

    /// Sends `body` to `peer` on `protocol` and returns the response body.
    ///
    /// Ends with the response or exactly one [`RequestError`]: the peer is
    /// this node, no address ([`RequestError::NoAddress`], at once), its
    /// addresses answering as another peer ([`RequestError::WrongPeer`],
    /// after trying each), no connection, a timeout, the server busy or
    /// failing, a body over a size limit, the protocol not served, or the
    /// client closed or its node shut down ([`RequestError::Closed`], at
    /// once). Retryable failures are retried within the configured budget
    /// first (see the README's retry budget per cause). Dropping the future
    /// cancels the request.
    ///
    /// The arguments are checked, and the body compressed when worth it,
    /// when this is called; the request is sent when the future is first
    /// polled.
    pub fn send(
        &self,
        peer: PeerId,
        protocol: &str,
        body: Bytes,
    ) -> impl Future<Output = Result<Bytes, RequestError>> + Send + '_ {
        self.send_inner(peer, protocol, body, None)
    }

    /// [`Client::send`] bounded by `timeout` overall, retries included
    /// ([`RequestError::Timeout`] when it passes).
    pub fn send_with_timeout(
        &self,
        peer: PeerId,
        protocol: &str,
        body: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, RequestError>> + Send + '_ {
        self.send_inner(peer, protocol, body, Some(timeout))
    }

    /// Prepares a send now (outside any lock) and returns the future that
    /// submits it: what every in-flight request holds is its prepared call
    /// and its wait, not the arguments (a `PeerId` alone is 80 bytes).
    fn send_inner(
        &self,
        peer: PeerId,
        protocol: &str,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Bytes, RequestError>> + Send + '_ {
        let shared = self.shared();
        let (span, start) = match protocol_name(protocol) {
            Ok(protocol) => {
                let span = tracing::debug_span!("send", %peer, %protocol, size = body.len());
                let deadline = timeout.map(|t| shared.clock.after(shared.node.runtime(), t));
                let mut opts = match deadline {
                    Some(d) => pointsub_proto::SendOptions::default().with_deadline(d),
                    None => pointsub_proto::SendOptions::default(),
                };
                if let Some(deflated) = self.deflated(&body) {
                    opts = opts.with_deflated(deflated);
                }
                let key = peer_key(&peer);
                let start = move |core: &mut pointsub_proto::Client, now| {
                    core.send_with(key, protocol, body, opts, now)
                };
                (span, Ok(start))
            }
            Err(e) => (tracing::Span::none(), Err(e)),
        };
        shared
            .request(start)
            .instrument(span)
            .map(|r| r.map(|r| r.body))
    }

    /// Sends `body` to the server node of `protocol` closest to the body
    /// (see [`Client::add_server_node`]), failing over to the next closest
    /// when a node does not answer. Returns the response and the node that
    /// produced it. When every node tried failed, the error is
    /// [`RequestError::AllNodesFailed`]; [`RequestErrorExt::node_failures`]
    /// lists each node's `PeerId` with its failure.
    pub async fn send_closest(
        &self,
        protocol: &str,
        body: Bytes,
    ) -> Result<Response, RequestError> {
        self.send_closest_with(protocol, body, ClosestOptions::default())
            .await
    }

    /// [`Client::send_closest`] with a routing key, nodes to exclude,
    /// hedging or an overall timeout.
    pub async fn send_closest_with(
        &self,
        protocol: &str,
        body: Bytes,
        options: ClosestOptions,
    ) -> Result<Response, RequestError> {
        let protocol = protocol_name(protocol)?;
        let shared = self.shared();
        let span = tracing::debug_span!("send_closest", %protocol, size = body.len());
        let mut opts = pointsub_proto::ClosestOptions::default()
            .with_exclude(options.exclude.iter().map(peer_key).collect())
            .with_hedge(options.hedge);
        // The key's hash and the body's deflated form are worked out
        // here, not under the core's lock.
        let hash = pointsub_proto::route::key_hash(options.routing_key.as_deref().unwrap_or(&body));
        opts = opts.with_key_hash(hash);
        if let Some(deflated) = self.deflated(&body) {
            opts = opts.with_deflated(deflated);
        }
        if let Some(key) = options.routing_key {
            opts = opts.with_routing_key(key);
        }
        if let Some(t) = options.timeout {
            opts = opts.with_deadline(shared.clock.after(shared.node.runtime(), t));
        }
        let response = shared
            .request(Ok(move |core: &mut pointsub_proto::Client, now| {
                core.send_closest(protocol, body, opts, now)
            }))
            .instrument(span)
            .await?;
        let peer = peer_id(&response.peer)
            .ok_or_else(|| RequestError::Protocol("answering node has no valid PeerId".into()))?;
        Ok(Response {
            body: response.body,
            peer,
        })
    }

    /// Adds `peer` by hand to the server nodes of `protocol` for
    /// [`Client::send_closest`]: it stays until removed by hand, whatever
    /// discovery says. Returns false if it was already there (a discovered
    /// node becomes a hand-added one too); refuses this client's own node.
    pub fn add_server_node(&self, protocol: &str, peer: PeerId) -> Result<bool, RequestError> {
        let protocol = protocol_name(protocol)?;
        let mut state = self.shared().lock();
        Ok(state.core.add_server_node(&protocol, peer_key(&peer))?)
    }

    /// Removes `peer` from the server nodes of `protocol`, whatever found
    /// it (a discovery source that still lists it adds it back on its next
    /// report); an error if it was not one.
    pub fn remove_server_node(&self, protocol: &str, peer: PeerId) -> Result<(), RequestError> {
        let protocol = protocol_name(protocol)?;
        let mut state = self.shared().lock();
        Ok(state.core.remove_server_node(&protocol, &peer_key(&peer))?)
    }

    /// The server nodes of `protocol`, in the order they were added.
    pub fn server_nodes(&self, protocol: &str) -> Vec<PeerId> {
        let state = self.shared().lock();
        state
            .core
            .server_nodes(&Protocol::from(protocol))
            .iter()
            .filter_map(peer_id)
            .collect()
    }

    /// Forgets every server node of `protocol`.
    pub fn clear_server_nodes(&self, protocol: &str) {
        self.shared()
            .lock()
            .core
            .clear_server_nodes(&Protocol::from(protocol));
    }

    /// Counters: requests, outcomes, retries, bytes, streams opened.
    pub fn metrics(&self) -> ClientMetrics {
        self.shared().lock().core.metrics()
    }

    /// Per-protocol statistics: outcomes, latency histogram, in flight,
    /// retries and failovers, Busy answers, body and wire bytes, slow
    /// requests, and the pool's streams (see [`pointsub_proto::stats`]).
    pub fn stats(&self) -> ClientStats {
        self.shared().lock().core.stats()
    }

    /// Reads [`Client::stats`] without keeping the client alive: `None`
    /// once every clone of it was dropped.
    #[cfg(feature = "metrics")]
    pub(crate) fn stats_source(&self) -> crate::metrics::StatsSource<ClientStats> {
        let weak = Arc::downgrade(&self.handle.driver);
        Box::new(move || weak.upgrade().map(|d| d.lock().core.stats()))
    }

    /// The pooled streams open now, with their traffic.
    pub fn connections_info(&self) -> Vec<ConnectionInfo> {
        self.shared().connections_info()
    }

    /// Closes the client: requests in flight end with
    /// [`RequestError::Closed`], pooled streams close, later sends fail.
    /// Idempotent.
    pub fn close(&self) {
        self.shared().close();
    }

    /// Whether [`Client::close`] was called (or every clone dropped).
    pub fn is_closed(&self) -> bool {
        self.shared().lock().plumbing.stopped
    }
}
