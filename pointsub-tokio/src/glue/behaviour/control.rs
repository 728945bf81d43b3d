//! The [`Control`] handle and what it hands out: the futures of
//! [`Control::open_stream`] and [`Control::dial`], [`IncomingStreams`],
//! [`Closed`], and their errors.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::stream::FusedStream;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

use super::*;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why [`Control::open_stream`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStreamError {
    /// The remote does not accept this protocol (final: retrying the same
    /// peer will not help until it registers the protocol).
    #[error("remote peer does not support protocol {0}")]
    UnsupportedProtocol(StreamProtocol),
    /// No connection to the peer could be made; the text is libp2p's
    /// description of the dial failure.
    #[error("could not connect to peer: {0}")]
    Dial(String),
    /// No address of the peer is known (final until one is added).
    #[error("no known address for peer {0}")]
    NoAddresses(PeerId),
    /// Every known address of the peer answered with another identity;
    /// they were dropped (final until a good address is added).
    #[error("the peer's addresses answer as another peer, {obtained}")]
    WrongPeer {
        /// The identity the last address answered with.
        obtained: PeerId,
    },
    /// The connection closed before the stream was open.
    #[error("connection closed before the stream was open")]
    ConnectionClosed,
    /// Opening the stream took longer than the open timeout.
    #[error("opening the stream timed out")]
    Timeout,
    /// The swarm that runs the [`Behaviour`] did not poll it for `waited`:
    /// the request was never even looked at. An application that embeds
    /// the behaviour in its own swarm must keep polling that swarm
    /// (retryable: it may resume).
    #[error("the swarm running pointsub's behaviour was not polled for {waited:?}")]
    NotPolled {
        /// How long the request waited for the swarm.
        waited: Duration,
    },
    /// An I/O error while opening or negotiating the stream.
    #[error("I/O error while opening the stream: {0}")]
    Io(String),
    /// The node has shut down (final).
    #[error("the node has shut down")]
    Shutdown,
}

impl OpenStreamError {
    /// Whether trying again (later, or over another connection) may
    /// succeed. [`UnsupportedProtocol`](Self::UnsupportedProtocol),
    /// [`NoAddresses`](Self::NoAddresses), [`WrongPeer`](Self::WrongPeer)
    /// and [`Shutdown`](Self::Shutdown) are final.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::UnsupportedProtocol(_)
                | Self::NoAddresses(_)
                | Self::WrongPeer { .. }
                | Self::Shutdown
        )
    }
}

/// Why [`Control::dial`] or [`Control::dial_addr`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Neither [`Control::add_address`] nor the swarm knows an address of
    /// the peer (final until one is added).
    #[error("no known address for peer {0}")]
    NoAddresses(PeerId),
    /// The peer's addresses answered with another identity (libp2p's
    /// "Unexpected peer ID"). Each such address is dropped from the
    /// address book and the peer's other addresses are tried; this is the
    /// outcome once none is left (final until a good address is added).
    #[error("the peer's addresses answer as another peer, {obtained}")]
    WrongPeer {
        /// The identity the last address answered with.
        obtained: PeerId,
    },
    /// Every dial attempt failed; the text is libp2p's description.
    #[error("dial failed: {0}")]
    Failed(String),
    /// The swarm running the [`Behaviour`] did not poll it for `waited`
    /// (see [`OpenStreamError::NotPolled`]).
    #[error("the swarm running pointsub's behaviour was not polled for {waited:?}")]
    NotPolled {
        /// How long the dial waited for the swarm.
        waited: Duration,
    },
    /// The node has shut down (final).
    #[error("the node has shut down")]
    Shutdown,
}

impl DialError {
    /// Whether dialing again may succeed ([`NoAddresses`](Self::NoAddresses),
    /// [`WrongPeer`](Self::WrongPeer) and [`Shutdown`](Self::Shutdown) are
    /// final).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::NoAddresses(_) | Self::WrongPeer { .. } | Self::Shutdown
        )
    }

    pub(super) fn from_swarm(peer: Option<PeerId>, error: &libp2p::swarm::DialError) -> Self {
        match (error, peer) {
            (libp2p::swarm::DialError::NoAddresses, Some(peer)) => Self::NoAddresses(peer),
            (libp2p::swarm::DialError::WrongPeerId { obtained, .. }, Some(_)) => Self::WrongPeer {
                obtained: *obtained,
            },
            _ => Self::Failed(error.to_string()),
        }
    }
}

impl From<DialError> for OpenStreamError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Shutdown => Self::Shutdown,
            DialError::NotPolled { waited } => Self::NotPolled { waited },
            DialError::NoAddresses(peer) => Self::NoAddresses(peer),
            DialError::WrongPeer { obtained } => Self::WrongPeer { obtained },
            other => Self::Dial(other.to_string()),
        }
    }
}

/// One established connection to a peer: which one, where the remote is,
/// and whether it goes through a relay. What
/// [`Control::open_stream_with_path`] says a stream was opened on, and
/// what [`Control::connections_to`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionPath {
    /// The swarm's id of the connection.
    pub connection: libp2p::swarm::ConnectionId,
    /// The remote's address on it (for a connection the remote made to
    /// us, the address it came from).
    pub remote_addr: Multiaddr,
    /// Whether it runs through a relay's circuit (`/p2p-circuit`): such a
    /// connection ends when the relay's circuit limits are reached, and
    /// new streams avoid it while a direct connection exists.
    pub relayed: bool,
}

/// [`Control::accept`] was called for a protocol that already has a live
/// [`IncomingStreams`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0} is already registered")]
pub struct AlreadyRegistered(pub StreamProtocol);

// ---------------------------------------------------------------------------
// Control
// ---------------------------------------------------------------------------

/// A cloneable handle to a [`Behaviour`]: register protocols, open
/// streams, dial, and read connection facts. Usable from any thread.
///
/// Everything it enqueues wakes the swarm task that polls the behaviour.
#[derive(Clone)]
pub struct Control {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("protocols", &self.accepted_protocols())
            .field("connected_peers", &self.connected_peers())
            .finish()
    }
}

impl Control {
    /// Starts accepting inbound streams for `protocol`.
    ///
    /// Streams negotiated for it from now on arrive on the returned
    /// [`IncomingStreams`]; dropping it unregisters the protocol, after
    /// which remotes get "unsupported protocol". After the node has shut
    /// down the returned stream ends at once.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, AlreadyRegistered> {
        let (sender, receiver) = mpsc::unbounded();
        let mut registry = lock(&self.shared.registry);
        if registry.receivers.contains_key(&protocol) {
            return Err(AlreadyRegistered(protocol));
        }
        let id = registry.next_id;
        registry.next_id += 1;
        if !registry.closed {
            registry
                .receivers
                .insert(protocol.clone(), Registration { id, sender });
            registry.rebuild_snapshot();
        }
        // When closed, `sender` is dropped here and the receiver ends.
        Ok(IncomingStreams {
            protocol,
            id,
            receiver,
            shared: self.shared.clone(),
        })
    }

    /// The protocols currently accepted, sorted.
    pub fn accepted_protocols(&self) -> Vec<StreamProtocol> {
        self.shared.protocols().to_vec()
    }

    /// Opens a new stream to `peer` for `protocol`, dialing the peer first
    /// if it is not connected.
    ///
    /// The returned future is `Send + 'static` and needs no polling to make
    /// progress (the request is queued at once); dropping it cancels the
    /// request without leaking anything.
    /// The stream goes on the peer's best connection: a direct one before
    /// a relayed one, the newest among equals.
    pub fn open_stream(&self, peer: PeerId, protocol: StreamProtocol) -> OpenStream {
        OpenStream(self.open_stream_with_path(peer, protocol))
    }

    /// [`Control::open_stream`], also telling which connection the stream
    /// was opened on (whether it is relayed, in particular).
    pub fn open_stream_with_path(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> OpenStreamWithPath {
        let (reply, rx) = oneshot::channel();
        let command = Command::Open {
            peer,
            protocol,
            reply,
        };
        OpenStreamWithPath(Reply::new(&self.shared, command, rx))
    }

    /// Connects to `peer` if it is not connected yet, with the known
    /// addresses. Resolves once a connection is established (at once if one
    /// already is) or every attempt failed.
    pub fn dial(&self, peer: PeerId) -> Connect<()> {
        let (reply, rx) = oneshot::channel();
        Connect(Reply::new(&self.shared, Command::Dial { peer, reply }, rx))
    }

    /// Connects to the peer at `addr` (its PeerId learned during the
    /// handshake, or checked if `addr` ends in `/p2p/<id>`). Resolves to
    /// the peer's id once connected. On success the address is remembered
    /// for later dials of that peer. A peer connected already resolves at
    /// once, unless `addr` is a direct address and the peer is connected
    /// only through relays: then the direct address is dialed, and new
    /// streams go on the direct connection once it is up.
    pub fn dial_addr(&self, addr: Multiaddr) -> Connect<PeerId> {
        let (reply, rx) = oneshot::channel();
        Connect(Reply::new(
            &self.shared,
            Command::DialAddr { addr, reply },
            rx,
        ))
    }

    /// Remembers `addr` as an address of `peer`, for dials made by
    /// [`Control::open_stream`] and [`Control::dial`]. A trailing
    /// `/p2p/<peer>` is optional.
    pub fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        lock(&self.shared.state).add_address(peer, addr);
    }

    /// The addresses known for `peer` (added or learned), oldest first.
    pub fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        lock(&self.shared.state)
            .addresses
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }

    /// The remote address of the connection to `peer` that new streams go
    /// on (see [`Control::best_path`]; for an inbound connection, the
    /// address it came from), if connected.
    pub fn remote_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        lock(&self.shared.state)
            .best_connection(peer)
            .map(|c| c.remote.clone())
    }

    /// The connection to `peer` that new streams go on, if connected: a
    /// direct one before a relayed one, and among equals the newest.
    pub fn best_path(&self, peer: &PeerId) -> Option<ConnectionPath> {
        lock(&self.shared.state)
            .best_connection(peer)
            .map(ConnectionFacts::path)
    }

    /// Every established connection to `peer`, oldest first.
    pub fn connections_to(&self, peer: &PeerId) -> Vec<ConnectionPath> {
        lock(&self.shared.state)
            .connections
            .get(peer)
            .map(|cs| cs.iter().map(ConnectionFacts::path).collect())
            .unwrap_or_default()
    }

    /// Whether `peer` has at least one direct (not relayed) connection.
    pub fn has_direct_connection(&self, peer: &PeerId) -> bool {
        lock(&self.shared.state).has_direct(peer)
    }

    /// Starts hearing whether peers have a direct connection: first one
    /// [`PathChange`] per peer that has one now, then each change. The
    /// receiver ends when the behaviour is dropped or
    /// [`Control::unwatch_paths`] is called with the returned id.
    pub(crate) fn watch_paths(&self) -> (u64, mpsc::UnboundedReceiver<PathChange>) {
        let (tx, rx) = mpsc::unbounded();
        let mut state = lock(&self.shared.state);
        let id = state.next_watch;
        state.next_watch += 1;
        if state.closed {
            return (id, rx);
        }
        let direct: Vec<PeerId> = state
            .connections
            .iter()
            .filter(|(_, cs)| cs.iter().any(|c| !c.relayed))
            .map(|(p, _)| *p)
            .collect();
        for peer in direct {
            let _ = tx.unbounded_send(PathChange { peer, direct: true });
        }
        state.path_watchers.push((id, tx));
        (id, rx)
    }

    /// Ends the path watch `id` (its receiver ends).
    pub(crate) fn unwatch_paths(&self, id: u64) {
        lock(&self.shared.state)
            .path_watchers
            .retain(|(w, _)| *w != id);
    }

    /// Whether at least one connection to `peer` is established.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        lock(&self.shared.state).connections.contains_key(peer)
    }

    /// The peers with at least one established connection, sorted.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        lock(&self.shared.state)
            .connections
            .keys()
            .copied()
            .collect()
    }

    /// Whether the behaviour has been dropped (its swarm is gone), or its
    /// node's `shutdown()` was called. Every request fails with a
    /// `Shutdown` error from then on.
    pub fn is_shut_down(&self) -> bool {
        self.shared.down.load(Ordering::Acquire)
    }

    /// Marks the behaviour as going away: a node calls this from
    /// `shutdown()`, before its swarm task has ended, so that new requests
    /// fail at once instead of racing the swarm's end.
    pub(crate) fn begin_shutdown(&self) {
        lock(&self.shared.state).stopping = true;
        self.shared.down.store(true, Ordering::Release);
    }

    /// The id of the swarm the behaviour runs in, as given to
    /// [`Behaviour::new`].
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    /// A future that completes once the behaviour is dropped (with its
    /// swarm): what lets clients and servers end their requests with an
    /// error instead of waiting for a swarm that is gone.
    pub fn closed(&self) -> Closed {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Closed(None);
        }
        let (tx, rx) = oneshot::channel();
        state.close_watchers.retain(|w| !w.is_canceled());
        state.close_watchers.push(tx);
        Closed(Some(rx))
    }

    /// How many times the behaviour has been polled so far (wrapping).
    pub(crate) fn poll_count(&self) -> u64 {
        lock(&self.shared.state).polls
    }

    /// pointsub's yamux configuration ([`yamux_config`]: 1,024 streams per
    /// connection), for the transport of the swarm this behaviour runs
    /// in. Taking it here also records that the swarm uses it, which
    /// silences the start-up warning about libp2p's default of 512.
    ///
    /// [`yamux_config`]: super::yamux_config
    pub fn yamux_config(&self) -> libp2p::yamux::Config {
        self.shared.yamux_limit_set.store(true, Ordering::Relaxed);
        super::yamux_config()
    }

    /// Applies pointsub's stream limits to the configuration of the swarm
    /// this behaviour runs in ([`swarm_limits`]: 1,024 inbound streams
    /// negotiating at once instead of libp2p's 128, and a deeper queue
    /// from behaviours to connections), and records that it did. Other
    /// settings (timeouts, executor) are left as they are.
    ///
    /// [`swarm_limits`]: super::swarm_limits
    pub fn swarm_config(&self, config: libp2p::swarm::Config) -> libp2p::swarm::Config {
        self.shared.swarm_limit_set.store(true, Ordering::Relaxed);
        super::swarm_limits(config)
    }

    /// Declares that the swarm's limits were raised by other means (at
    /// least [`MAX_STREAMS_PER_CONNECTION`] yamux streams per connection,
    /// or no yamux at all, and as many negotiating inbound streams), which
    /// silences the start-up warning.
    ///
    /// [`MAX_STREAMS_PER_CONNECTION`]: super::MAX_STREAMS_PER_CONNECTION
    pub fn assume_stream_limits(&self) {
        self.shared.yamux_limit_set.store(true, Ordering::Relaxed);
        self.shared.swarm_limit_set.store(true, Ordering::Relaxed);
    }

    /// Which of pointsub's stream limits the swarm was declared to use,
    /// through [`Control::yamux_config`], [`Control::swarm_config`] or
    /// [`Control::assume_stream_limits`]. A behaviour cannot read its
    /// swarm's settings, so this is what the swarm's builder said, not a
    /// measurement.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            yamux: self.shared.yamux_limit_set.load(Ordering::Relaxed),
            negotiating_inbound: self.shared.swarm_limit_set.load(Ordering::Relaxed),
        }
    }
}

/// Which of pointsub's stream limits a swarm was declared to use (see
/// [`Control::stream_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamLimits {
    /// The transport's yamux allows 1,024 streams per connection
    /// ([`Control::yamux_config`]); libp2p's default is 512.
    pub yamux: bool,
    /// The swarm lets 1,024 inbound streams negotiate at once
    /// ([`Control::swarm_config`]); libp2p's default is 128.
    pub negotiating_inbound: bool,
}

impl StreamLimits {
    /// Whether both limits were declared.
    pub fn all_set(&self) -> bool {
        self.yamux && self.negotiating_inbound
    }
}

/// The future returned by [`Control::closed`]: completes once the
/// [`Behaviour`] is dropped.
#[must_use = "futures do nothing unless awaited"]
pub struct Closed(pub(super) Option<oneshot::Receiver<Infallible>>);

impl fmt::Debug for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Closed").finish_non_exhaustive()
    }
}

impl Future for Closed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            // Nothing is ever sent: the only outcome is the sender's drop.
            Some(rx) => Pin::new(rx).poll(cx).map(|_| ()),
            None => Poll::Ready(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Reply futures
// ---------------------------------------------------------------------------

pub(super) trait CancelError {
    /// The error for a request whose reply channel closed without an answer.
    fn canceled(shutdown: bool) -> Self;
}

impl CancelError for OpenStreamError {
    fn canceled(shutdown: bool) -> Self {
        if shutdown {
            Self::Shutdown
        } else {
            // The handler holding the request went away with its connection.
            Self::ConnectionClosed
        }
    }
}

impl CancelError for DialError {
    fn canceled(shutdown: bool) -> Self {
        if shutdown {
            Self::Shutdown
        } else {
            Self::Failed("connection attempt abandoned".into())
        }
    }
}

pub(super) enum Reply<T, E> {
    Waiting {
        rx: oneshot::Receiver<Result<T, E>>,
        shared: Arc<Shared>,
    },
    Failed(Option<E>),
}

impl<T, E: CancelError> Reply<T, E> {
    pub(super) fn new(
        shared: &Arc<Shared>,
        command: Command,
        rx: oneshot::Receiver<Result<T, E>>,
    ) -> Self {
        match shared.push(command) {
            Ok(()) => Self::Waiting {
                rx,
                shared: shared.clone(),
            },
            Err(_) => Self::Failed(Some(E::canceled(true))),
        }
    }

    pub(super) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        match self {
            Self::Waiting { rx, shared } => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(oneshot::Canceled)) => {
                    Poll::Ready(Err(E::canceled(shared.is_closed())))
                }
            },
            Self::Failed(e) => match e.take() {
                Some(e) => Poll::Ready(Err(e)),
                // Polled again after completion: stay pending, like a fused
                // future would not be polled at all.
                None => Poll::Pending,
            },
        }
    }
}

/// The future returned by [`Control::open_stream`]: resolves to the
/// negotiated stream or why it could not be opened.
#[must_use = "the request is cancelled when the future is dropped"]
pub struct OpenStream(pub(super) OpenStreamWithPath);

impl fmt::Debug for OpenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStream").finish_non_exhaustive()
    }
}

impl Future for OpenStream {
    type Output = Result<Stream, OpenStreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map(|(stream, _)| stream))
    }
}

/// The future returned by [`Control::open_stream_with_path`]: resolves to
/// the negotiated stream and the connection it is on, or why it could not
/// be opened.
#[must_use = "the request is cancelled when the future is dropped"]
pub struct OpenStreamWithPath(pub(super) Reply<(Stream, ConnectionPath), OpenStreamError>);

impl fmt::Debug for OpenStreamWithPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStreamWithPath").finish_non_exhaustive()
    }
}

impl Future for OpenStreamWithPath {
    type Output = Result<(Stream, ConnectionPath), OpenStreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_reply(cx)
    }
}

/// The future returned by [`Control::dial`] (`T = ()`) and
/// [`Control::dial_addr`] (`T = PeerId`).
#[must_use = "futures do nothing unless awaited; the dial itself proceeds regardless"]
pub struct Connect<T>(pub(super) Reply<T, DialError>);

impl<T> fmt::Debug for Connect<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect").finish_non_exhaustive()
    }
}

impl<T> Future for Connect<T> {
    type Output = Result<T, DialError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_reply(cx)
    }
}

// ---------------------------------------------------------------------------
// IncomingStreams
// ---------------------------------------------------------------------------

/// Inbound streams for one protocol, as `(remote peer, stream)`, from
/// [`Control::accept`].
///
/// Streams queue here without bound until read. Dropping this unregisters
/// the protocol (and drops the streams still queued). The stream ends when
/// the node shuts down.
pub struct IncomingStreams {
    pub(super) protocol: StreamProtocol,
    pub(super) id: u64,
    pub(super) receiver: mpsc::UnboundedReceiver<(PeerId, Stream)>,
    pub(super) shared: Arc<Shared>,
}

impl IncomingStreams {
    /// The protocol these streams were negotiated for.
    pub fn protocol(&self) -> &StreamProtocol {
        &self.protocol
    }
}

impl fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStreams")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, Stream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl FusedStream for IncomingStreams {
    fn is_terminated(&self) -> bool {
        self.receiver.is_terminated()
    }
}

impl Drop for IncomingStreams {
    fn drop(&mut self) {
        let mut registry = lock(&self.shared.registry);
        let ours = registry
            .receivers
            .get(&self.protocol)
            .is_some_and(|r| r.id == self.id);
        if ours {
            registry.receivers.remove(&self.protocol);
            registry.rebuild_snapshot();
        }
    }
}
