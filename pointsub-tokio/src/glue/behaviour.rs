//! Raw libp2p streams by peer and protocol: [`Behaviour`] and its
//! [`Control`] handle.
//!
//! [`Behaviour`] is an ordinary libp2p [`NetworkBehaviour`]: a [`Node`]
//! runs it in a swarm of its own, and an application with a swarm of its
//! own puts it as one field of its `#[derive(NetworkBehaviour)]` struct
//! (see [`crate::host`]). It is not generic, and it needs nothing from the
//! swarm but to be polled.
//!
//! [`Node`]: crate::generic::Node
//!
//! This is the libp2p plumbing under the request/response and raw-stream
//! APIs. It is runtime-neutral (no tokio, no async-std): it only uses
//! `futures` channels and libp2p's own poll model.
//!
//! # Inbound
//!
//! [`Control::accept`] registers a protocol and returns [`IncomingStreams`],
//! a `futures::Stream` of `(PeerId, libp2p::Stream)`. The set of accepted
//! protocols is dynamic: each connection handler offers exactly the
//! protocols registered at the moment a remote opens a substream, and
//! dropping the [`IncomingStreams`] unregisters its protocol.
//!
//! Every negotiated inbound stream is handed to its protocol's receiver
//! through an unbounded channel, straight from the connection task. A slow
//! application never causes a stream to be dropped or reset here (it sheds
//! load itself, with a "busy" answer on the stream). The one case in which a
//! negotiated stream is dropped is a protocol unregistered between
//! negotiation and delivery.
//!
//! # Outbound
//!
//! [`Control::open_stream`] asks for a new substream to a peer. When the
//! peer is connected, the request goes to the handler of the first
//! established connection to it; otherwise the behaviour dials the peer
//! (addresses from [`Control::add_address`], from successful earlier dials,
//! and from the swarm, e.g. `Swarm::add_peer_address`) and queues the
//! request until the connection is up or the dial fails.
//!
//! Every substream request carries a timeout (the behaviour's open timeout,
//! [`DEFAULT_OPEN_TIMEOUT`] unless configured) which covers waiting for the
//! muxer and the protocol negotiation, so an open on a connection never
//! hangs; the dial before it is bounded by the transport's connection
//! timeout. Dropping an [`OpenStream`] future at any point leaks nothing:
//! a queued request is skipped and a stream that arrives late is dropped.
//!
//! # Limits worth knowing
//!
//! With yamux, the number of streams per connection is capped by the muxer
//! config (see [`crate::node::MAX_STREAMS_PER_CONNECTION`]). Going past it
//! is not a per-stream error in libp2p 0.57: the opener's swarm treats the
//! muxer's "too many streams" as fatal for the whole connection, and the
//! receiving yamux closes the connection too. Higher layers must bound the
//! streams they keep open per peer (the stream pool does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{Ready, ready};
use futures::stream::FusedStream;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ListenUpgradeError,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

/// Default bound on opening one substream (muxer wait plus protocol
/// negotiation): 5 s.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

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

    fn from_swarm(peer: Option<PeerId>, error: &libp2p::swarm::DialError) -> Self {
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

/// [`Control::accept`] was called for a protocol that already has a live
/// [`IncomingStreams`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0} is already registered")]
pub struct AlreadyRegistered(pub StreamProtocol);

// ---------------------------------------------------------------------------
// Shared state between Control, behaviour and connection handlers
// ---------------------------------------------------------------------------

use super::common::lock;

struct Shared {
    /// The id of the swarm this behaviour runs in, as its creator said.
    local_peer_id: PeerId,
    registry: Mutex<Registry>,
    state: Mutex<State>,
    /// Which of pointsub's stream limits were set through [`Control`]'s
    /// helpers (the swarm's own settings cannot be read from a behaviour).
    yamux_limit_set: AtomicBool,
    swarm_limit_set: AtomicBool,
}

struct Registration {
    id: u64,
    sender: mpsc::UnboundedSender<(PeerId, Stream)>,
}

#[derive(Default)]
struct Registry {
    receivers: HashMap<StreamProtocol, Registration>,
    /// The registered protocols, sorted; what handlers offer to remotes.
    snapshot: Arc<[StreamProtocol]>,
    next_id: u64,
    closed: bool,
}

impl Registry {
    fn rebuild_snapshot(&mut self) {
        let mut protocols: Vec<StreamProtocol> = self.receivers.keys().cloned().collect();
        protocols.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        self.snapshot = protocols.into();
    }
}

struct ConnectionFacts {
    id: ConnectionId,
    remote: Multiaddr,
}

#[derive(Default)]
struct State {
    commands: VecDeque<Command>,
    waker: Option<Waker>,
    /// Known addresses per peer, without a trailing `/p2p`.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// Established connections per peer, oldest first.
    connections: BTreeMap<PeerId, Vec<ConnectionFacts>>,
    closed: bool,
    /// Its node's `shutdown()` was called: the swarm is about to go, and
    /// nothing new should start on it.
    stopping: bool,
    /// How many times the behaviour has been polled (wrapping): what
    /// tells a request that waits whether the swarm is still running.
    polls: u64,
    /// One sender per [`HostClosed`] future; dropped (never sent) when the
    /// behaviour is dropped.
    close_watchers: Vec<oneshot::Sender<Infallible>>,
}

impl State {
    fn add_address(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr = strip_peer(addr, peer);
        let known = self.addresses.entry(peer).or_default();
        if !known.contains(&addr) {
            known.push(addr);
        }
    }

    fn first_connection(&self, peer: &PeerId) -> Option<ConnectionId> {
        self.connections
            .get(peer)
            .and_then(|c| c.first())
            .map(|c| c.id)
    }
}

impl Shared {
    fn new(local_peer_id: PeerId) -> Self {
        Self {
            local_peer_id,
            registry: Mutex::new(Registry::default()),
            state: Mutex::new(State::default()),
            yamux_limit_set: AtomicBool::new(false),
            swarm_limit_set: AtomicBool::new(false),
        }
    }

    fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Queues a command for the behaviour and wakes it. Returns the command
    /// back if the behaviour is gone.
    fn push(&self, command: Command) -> Result<(), Command> {
        let waker = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(command);
            }
            state.commands.push_back(command);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// At the swarm's start: says plainly when the swarm was not declared
    /// to use pointsub's stream limits.
    fn warn_if_default_limits(&self) {
        let yamux = self.yamux_limit_set.load(Ordering::Relaxed);
        let swarm = self.swarm_limit_set.load(Ordering::Relaxed);
        if !yamux {
            tracing::warn!(
                local = %self.local_peer_id,
                "pointsub: this swarm's yamux was not configured with pointsub's limit of \
                 1024 streams per connection (libp2p's default is 512, and going past it \
                 closes the whole connection). Build the transport with \
                 `control.yamux_config()`, or call `control.assume_stream_limits()` if \
                 the limit is set some other way or yamux is not used"
            );
        }
        if !swarm {
            tracing::warn!(
                local = %self.local_peer_id,
                "pointsub: this swarm lets only libp2p's default of 128 inbound streams \
                 negotiate at once (pointsub expects 1024; under load the rest are \
                 dropped). Build the swarm config with `control.swarm_config(config)`, \
                 or call `control.assume_stream_limits()` if it is set some other way"
            );
        }
    }

    fn protocols(&self) -> Arc<[StreamProtocol]> {
        lock(&self.registry).snapshot.clone()
    }

    fn deliver(&self, peer: PeerId, protocol: StreamProtocol, stream: Stream) {
        let registry = lock(&self.registry);
        match registry.receivers.get(&protocol) {
            Some(reg) => {
                if reg.sender.unbounded_send((peer, stream)).is_err() {
                    tracing::debug!(%peer, %protocol, "listener gone; dropping inbound stream");
                }
            }
            None => {
                tracing::debug!(%peer, %protocol, "protocol unregistered; dropping inbound stream");
            }
        }
    }
}

fn strip_peer(mut addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if let Some(Protocol::P2p(p)) = addr.iter().last()
        && p == peer
    {
        addr.pop();
    }
    addr
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

enum Command {
    Open {
        peer: PeerId,
        protocol: StreamProtocol,
        reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
    },
    Dial {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), DialError>>,
    },
    DialAddr {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, DialError>>,
    },
}

// ---------------------------------------------------------------------------
// Control
// ---------------------------------------------------------------------------

/// A cloneable handle to a [`Behaviour`]: register protocols, open
/// streams, dial, and read connection facts. Usable from any thread.
///
/// Everything it enqueues wakes the swarm task that polls the behaviour.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
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
    pub fn open_stream(&self, peer: PeerId, protocol: StreamProtocol) -> OpenStream {
        let (reply, rx) = oneshot::channel();
        let command = Command::Open {
            peer,
            protocol,
            reply,
        };
        OpenStream(Reply::new(&self.shared, command, rx))
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
    /// for later dials of that peer.
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

    /// The remote address of the first established connection to `peer`
    /// (for an inbound connection, the address it came from), if connected.
    pub fn remote_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        lock(&self.shared.state)
            .connections
            .get(peer)
            .and_then(|c| c.first())
            .map(|c| c.remote.clone())
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
        let state = lock(&self.shared.state);
        state.closed || state.stopping
    }

    /// Marks the behaviour as going away: a node calls this from
    /// `shutdown()`, before its swarm task has ended, so that new requests
    /// fail at once instead of racing the swarm's end.
    pub(crate) fn begin_shutdown(&self) {
        lock(&self.shared.state).stopping = true;
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
    /// [`yamux_config`]: crate::node::yamux_config
    pub fn yamux_config(&self) -> libp2p::yamux::Config {
        self.shared.yamux_limit_set.store(true, Ordering::Relaxed);
        crate::node::yamux_config()
    }

    /// Applies pointsub's stream limits to the configuration of the swarm
    /// this behaviour runs in ([`swarm_limits`]: 1,024 inbound streams
    /// negotiating at once instead of libp2p's 128, and a deeper queue
    /// from behaviours to connections), and records that it did. Other
    /// settings (timeouts, executor) are left as they are.
    ///
    /// [`swarm_limits`]: crate::node::swarm_limits
    pub fn swarm_config(&self, config: libp2p::swarm::Config) -> libp2p::swarm::Config {
        self.shared.swarm_limit_set.store(true, Ordering::Relaxed);
        crate::node::swarm_limits(config)
    }

    /// Declares that the swarm's limits were raised by other means (at
    /// least [`MAX_STREAMS_PER_CONNECTION`] yamux streams per connection,
    /// or no yamux at all, and as many negotiating inbound streams), which
    /// silences the start-up warning.
    ///
    /// [`MAX_STREAMS_PER_CONNECTION`]: crate::node::MAX_STREAMS_PER_CONNECTION
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
pub struct Closed(Option<oneshot::Receiver<Infallible>>);

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

trait CancelError {
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

enum Reply<T, E> {
    Waiting {
        rx: oneshot::Receiver<Result<T, E>>,
        shared: Arc<Shared>,
    },
    Failed(Option<E>),
}

impl<T, E: CancelError> Reply<T, E> {
    fn new(shared: &Arc<Shared>, command: Command, rx: oneshot::Receiver<Result<T, E>>) -> Self {
        match shared.push(command) {
            Ok(()) => Self::Waiting {
                rx,
                shared: shared.clone(),
            },
            Err(_) => Self::Failed(Some(E::canceled(true))),
        }
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
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
pub struct OpenStream(Reply<Stream, OpenStreamError>);

impl fmt::Debug for OpenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStream").finish_non_exhaustive()
    }
}

impl Future for OpenStream {
    type Output = Result<Stream, OpenStreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_reply(cx)
    }
}

/// The future returned by [`Control::dial`] (`T = ()`) and
/// [`Control::dial_addr`] (`T = PeerId`).
#[must_use = "futures do nothing unless awaited; the dial itself proceeds regardless"]
pub struct Connect<T>(Reply<T, DialError>);

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
    protocol: StreamProtocol,
    id: u64,
    receiver: mpsc::UnboundedReceiver<(PeerId, Stream)>,
    shared: Arc<Shared>,
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

// ---------------------------------------------------------------------------
// The behaviour
// ---------------------------------------------------------------------------

struct PendingOpen {
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
}

/// A [`NetworkBehaviour`] that opens and accepts raw streams by peer and
/// protocol, driven through its [`Control`]. See the [module docs](self).
///
/// It emits no events (`ToSwarm = Infallible`); everything goes through
/// [`Control`]. Dropping it (with its swarm) shuts every [`Control`] down.
pub struct Behaviour {
    shared: Arc<Shared>,
    open_timeout: Duration,
    events: VecDeque<ToSwarm<Infallible, HandlerIn>>,
    /// Opens waiting for a connection to their peer.
    pending_opens: HashMap<PeerId, Vec<PendingOpen>>,
    /// `Control::dial` callers waiting for a connection.
    dial_waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<(), DialError>>>>,
    /// Our dial in flight per peer.
    dialing: HashMap<PeerId, ConnectionId>,
    /// `Control::dial_addr` callers, by the connection id of their dial.
    addr_dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, DialError>>>,
    /// Whether the first poll (the swarm's start) has checked the limits.
    started: bool,
}

impl fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Behaviour")
            .field("open_timeout", &self.open_timeout)
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// A behaviour for the swarm whose identity is `local_peer_id`, with
    /// no accepted protocols and the default open timeout.
    ///
    /// A behaviour cannot learn its swarm's id, so it is given here (as
    /// libp2p's identify and Kademlia are): clients refuse to send to it.
    /// Put the behaviour in a swarm built with that identity, e.g.
    /// `Behaviour::new(keypair.public().to_peer_id())`.
    pub fn new(local_peer_id: PeerId) -> Self {
        Self {
            shared: Arc::new(Shared::new(local_peer_id)),
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            events: VecDeque::new(),
            pending_opens: HashMap::new(),
            dial_waiters: HashMap::new(),
            dialing: HashMap::new(),
            addr_dials: HashMap::new(),
            started: false,
        }
    }

    /// The id given to [`Behaviour::new`].
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    /// Sets the bound on opening one substream, and on the negotiation of
    /// an inbound one (default [`DEFAULT_OPEN_TIMEOUT`]).
    pub fn with_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// The open timeout in use.
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    /// A new handle to this behaviour.
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            shared: self.shared.clone(),
            open_timeout: self.open_timeout,
            pending: VecDeque::new(),
        }
    }

    fn run(&mut self, command: Command) {
        match command {
            Command::Open {
                peer,
                protocol,
                reply,
            } => {
                if reply.is_canceled() {
                    return;
                }
                let first = lock(&self.shared.state).first_connection(&peer);
                match first {
                    Some(connection) => self.notify(peer, connection, protocol, reply),
                    None => {
                        let queue = self.pending_opens.entry(peer).or_default();
                        queue.retain(|p| !p.reply.is_canceled());
                        queue.push(PendingOpen { protocol, reply });
                        self.ensure_dial(peer);
                    }
                }
            }
            Command::Dial { peer, reply } => {
                if lock(&self.shared.state).connections.contains_key(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let waiters = self.dial_waiters.entry(peer).or_default();
                waiters.retain(|w| !w.is_canceled());
                waiters.push(reply);
                self.ensure_dial(peer);
            }
            Command::DialAddr { addr, reply } => {
                if let Some(peer) = peer_of(&addr)
                    && lock(&self.shared.state).connections.contains_key(&peer)
                {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                self.addr_dials.insert(opts.connection_id(), reply);
                self.events.push_back(ToSwarm::Dial { opts });
            }
        }
    }

    fn notify(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        protocol: StreamProtocol,
        reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
    ) {
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: HandlerIn(OpenRequest { protocol, reply }),
        });
    }

    fn ensure_dial(&mut self, peer: PeerId) {
        if self.dialing.contains_key(&peer) {
            return;
        }
        // Addresses come from `handle_pending_outbound_connection` (ours)
        // and from any other behaviour composed with this one.
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        self.dialing.insert(peer, opts.connection_id());
        self.events.push_back(ToSwarm::Dial { opts });
    }

    /// Forgets `address` as an address of `peer`. Returns whether the
    /// peer still has addresses after it was dropped (none were there
    /// before: false, so that a stale address supplied by another
    /// behaviour cannot make the dials go round).
    ///
    /// The swarm itself keeps no address book (`Swarm::add_peer_address`
    /// only tells the behaviours, which is how ours learns them), so
    /// dropping it here is dropping it for our dials.
    fn drop_stale_address(&mut self, peer: PeerId, address: &Multiaddr) -> bool {
        let stale = strip_peer(address.clone(), peer);
        let mut state = lock(&self.shared.state);
        let Some(known) = state.addresses.get_mut(&peer) else {
            return false;
        };
        let before = known.len();
        known.retain(|a| *a != stale);
        let dropped = known.len() < before;
        let left = !known.is_empty();
        if !left {
            state.addresses.remove(&peer);
        }
        dropped && left
    }

    fn fail_waiters(&mut self, peer: PeerId, error: DialError) {
        for open in self.pending_opens.remove(&peer).unwrap_or_default() {
            let _ = open.reply.send(Err(error.clone().into()));
        }
        for waiter in self.dial_waiters.remove(&peer).unwrap_or_default() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        {
            let mut state = lock(&self.shared.state);
            if let ConnectedPoint::Dialer { address, .. } = endpoint {
                state.add_address(peer, address.clone());
            }
            state
                .connections
                .entry(peer)
                .or_default()
                .push(ConnectionFacts {
                    id: connection,
                    remote: endpoint.get_remote_address().clone(),
                });
        }
        if self.dialing.get(&peer) == Some(&connection) {
            self.dialing.remove(&peer);
        }
        if let Some(reply) = self.addr_dials.remove(&connection) {
            let _ = reply.send(Ok(peer));
        }
        for waiter in self.dial_waiters.remove(&peer).unwrap_or_default() {
            let _ = waiter.send(Ok(()));
        }
        // The first connection to come up takes everything that waited.
        let first = lock(&self.shared.state)
            .first_connection(&peer)
            .unwrap_or(connection);
        for open in self.pending_opens.remove(&peer).unwrap_or_default() {
            if !open.reply.is_canceled() {
                self.notify(peer, first, open.protocol, open.reply);
            }
        }
    }

    fn on_dial_failure(
        &mut self,
        peer: Option<PeerId>,
        connection: ConnectionId,
        error: &libp2p::swarm::DialError,
    ) {
        if let Some(reply) = self.addr_dials.remove(&connection) {
            let _ = reply.send(Err(DialError::from_swarm(peer, error)));
        }
        let Some(peer) = peer else { return };
        let ours = self.dialing.get(&peer) == Some(&connection);
        if ours {
            self.dialing.remove(&peer);
        }
        if matches!(error, libp2p::swarm::DialError::DialPeerConditionFalse(_)) {
            // Another dial to the peer is under way (or it just connected):
            // its outcome settles the waiters.
            return;
        }
        if self.dialing.contains_key(&peer) {
            // A newer dial of ours is still running.
            return;
        }
        if lock(&self.shared.state).connections.contains_key(&peer) {
            return;
        }
        if let libp2p::swarm::DialError::WrongPeerId { obtained, address } = error
            && self.drop_stale_address(peer, address)
        {
            // Another identity answers there: the address is stale. The
            // peer's other addresses may still be good; try them.
            tracing::debug!(%peer, %obtained, %address, "dropped an address answering with another peer id; dialing the others");
            self.ensure_dial(peer);
            return;
        }
        tracing::debug!(%peer, %error, "dial failed");
        self.fail_waiters(peer, DialError::from_swarm(Some(peer), error));
    }
}

impl Drop for Behaviour {
    fn drop(&mut self) {
        // Mark closed first, so that replies cancelled by the drops below
        // (and any request made from now on) read as `Shutdown`.
        let (commands, watchers) = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            state.connections.clear();
            (
                std::mem::take(&mut state.commands),
                std::mem::take(&mut state.close_watchers),
            )
        };
        drop(commands);
        // Completes every `Closed` future.
        drop(watchers);
        let receivers = {
            let mut registry = lock(&self.shared.registry);
            registry.closed = true;
            let receivers = std::mem::take(&mut registry.receivers);
            registry.rebuild_snapshot();
            receivers
        };
        // Dropping the senders ends every IncomingStreams.
        drop(receivers);
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = maybe_peer else {
            return Ok(Vec::new());
        };
        let state = lock(&self.shared.state);
        Ok(state
            .addresses
            .get(&peer)
            .map(|known| {
                known
                    .iter()
                    .filter(|a| !addresses.contains(a))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.on_connection_established(e.peer_id, e.connection_id, e.endpoint);
            }
            FromSwarm::ConnectionClosed(e) => {
                let mut state = lock(&self.shared.state);
                if let Some(connections) = state.connections.get_mut(&e.peer_id) {
                    connections.retain(|c| c.id != e.connection_id);
                    if connections.is_empty() {
                        state.connections.remove(&e.peer_id);
                    }
                }
            }
            FromSwarm::AddressChange(e) => {
                let mut state = lock(&self.shared.state);
                if let Some(c) = state
                    .connections
                    .get_mut(&e.peer_id)
                    .and_then(|cs| cs.iter_mut().find(|c| c.id == e.connection_id))
                {
                    c.remote = e.new.get_remote_address().clone();
                }
            }
            FromSwarm::DialFailure(e) => {
                self.on_dial_failure(e.peer_id, e.connection_id, e.error);
            }
            FromSwarm::NewExternalAddrOfPeer(e) => {
                lock(&self.shared.state).add_address(e.peer_id, e.addr.clone());
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if !self.started {
            self.started = true;
            self.shared.warn_if_default_limits();
        }
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        // Take the queued commands and register the waker under one lock,
        // so a command pushed right after is never missed.
        let commands = {
            let mut state = lock(&self.shared.state);
            state.polls = state.polls.wrapping_add(1);
            state.waker = Some(cx.waker().clone());
            std::mem::take(&mut state.commands)
        };
        for command in commands {
            self.run(command);
        }
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------
// The connection handler
// ---------------------------------------------------------------------------

/// A request for one outbound substream, travelling from the behaviour to a
/// handler and on through the swarm as the substream's open info.
pub struct OpenRequest {
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// What [`Behaviour`] tells a [`Handler`] (opaque).
#[derive(Debug)]
pub struct HandlerIn(OpenRequest);

/// The [`ConnectionHandler`] of [`Behaviour`], one per connection.
///
/// It offers the currently accepted protocols to inbound substreams and
/// hands each negotiated one straight to its protocol's [`IncomingStreams`];
/// it turns open requests into outbound substreams.
pub struct Handler {
    peer: PeerId,
    shared: Arc<Shared>,
    open_timeout: Duration,
    pending: VecDeque<OpenRequest>,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("peer", &self.peer)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = Infallible;
    type InboundProtocol = AcceptedProtocols;
    type OutboundProtocol = RequestedProtocol;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenRequest;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        SubstreamProtocol::new(AcceptedProtocols(self.shared.protocols()), ())
            .with_timeout(self.open_timeout)
    }

    fn connection_keep_alive(&self) -> bool {
        !self.pending.is_empty()
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        // The connection task polls the handler again right after every
        // `on_behaviour_event`, so no waker needs storing here.
        while let Some(request) = self.pending.pop_front() {
            if request.reply.is_canceled() {
                continue;
            }
            let protocol = RequestedProtocol(request.protocol.clone());
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(protocol, request).with_timeout(self.open_timeout),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, HandlerIn(request): Self::FromBehaviour) {
        self.pending.push_back(request);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (protocol, stream),
                ..
            }) => self.shared.deliver(self.peer, protocol, stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: request,
            }) => {
                // If the caller gave up, the stream is dropped here.
                let _ = request.reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: request,
                error,
            }) => {
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        OpenStreamError::UnsupportedProtocol(request.protocol.clone())
                    }
                    StreamUpgradeError::Timeout => OpenStreamError::Timeout,
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                tracing::debug!(peer = %self.peer, protocol = %request.protocol, %error, "open failed");
                let _ = request.reply.send(Err(error));
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { error, .. }) => match error {},
            _ => {}
        }
    }
}

/// The inbound upgrade offered by [`Handler`]: the protocols accepted when
/// the substream arrived. Its output carries the negotiated protocol with
/// the stream.
#[derive(Debug, Clone)]
pub struct AcceptedProtocols(Arc<[StreamProtocol]>);

impl UpgradeInfo for AcceptedProtocols {
    type Info = StreamProtocol;
    type InfoIter = AcceptedProtocolsIter;

    fn protocol_info(&self) -> Self::InfoIter {
        AcceptedProtocolsIter {
            protocols: self.0.clone(),
            next: 0,
        }
    }
}

/// Iterates over the protocols of an [`AcceptedProtocols`] without copying
/// the list.
#[derive(Debug, Clone)]
pub struct AcceptedProtocolsIter {
    protocols: Arc<[StreamProtocol]>,
    next: usize,
}

impl Iterator for AcceptedProtocolsIter {
    type Item = StreamProtocol;

    fn next(&mut self) -> Option<Self::Item> {
        let protocol = self.protocols.get(self.next)?.clone();
        self.next += 1;
        Some(protocol)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.protocols.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for AcceptedProtocolsIter {}

impl InboundUpgrade<Stream> for AcceptedProtocols {
    type Output = (StreamProtocol, Stream);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: Self::Info) -> Self::Future {
        ready(Ok((protocol, stream)))
    }
}

/// The outbound upgrade requested by [`Handler`]: exactly one protocol.
#[derive(Debug, Clone)]
pub struct RequestedProtocol(StreamProtocol);

impl UpgradeInfo for RequestedProtocol {
    type Info = StreamProtocol;
    type InfoIter = std::iter::Once<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(self.0.clone())
    }
}

impl OutboundUpgrade<Stream> for RequestedProtocol {
    type Output = Stream;
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, stream: Stream, _protocol: Self::Info) -> Self::Future {
        ready(Ok(stream))
    }
}
