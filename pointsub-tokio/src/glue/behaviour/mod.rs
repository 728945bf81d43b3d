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
//! Its parts, one role per file: this module is the [`NetworkBehaviour`]
//! itself; `control.rs` the [`Control`] handle with its futures, streams
//! and errors; `handler.rs` the per-connection [`Handler`]; `shared.rs`
//! the state all three share.
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
//! peer is connected, the request goes to the handler of its best
//! connection: a direct one before one relayed through a circuit
//! (`/p2p-circuit`), and among equals the newest, so that a direct
//! connection made after a relayed one (hole punching, or a dial of a
//! direct address) carries every new stream. [`Control::open_stream_with_path`]
//! also tells which connection the stream went on. Otherwise the behaviour dials the peer
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
//! config (see [`MAX_STREAMS_PER_CONNECTION`]). Going past it
//! is not a per-stream error in libp2p 0.57: the opener's swarm treats the
//! muxer's "too many streams" as fatal for the whole connection, and the
//! receiving yamux closes the connection too. Higher layers must bound the
//! streams they keep open per peer (the stream pool does).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::oneshot;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

use crate::glue::common::lock;

mod control;
mod handler;
mod limits;
mod remote;
mod shared;

pub use control::*;
pub use handler::*;
pub use limits::{MAX_STREAMS_PER_CONNECTION, swarm_limits, yamux_config};
pub use remote::{PeerProtocols, RemoteProtocolsWatch};
use remote::{ProtocolWakers, RemoteProtocols};
pub(crate) use shared::PathChange;
use shared::*;

/// Default bound on opening one substream (muxer wait plus protocol
/// negotiation): 5 s.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

struct PendingOpen {
    protocol: StreamProtocol,
    reply: OpenReply,
}

/// Where an open's outcome goes: the stream and the connection it is on.
pub(super) type OpenReply = oneshot::Sender<Result<(Stream, ConnectionPath), OpenStreamError>>;

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

    fn handler(&self, peer: PeerId, path: ConnectionPath) -> Handler {
        let protocols_changed = Arc::new(futures::task::AtomicWaker::new());
        lock(&self.shared.registry)
            .wakers
            .register(&protocols_changed);
        Handler {
            peer,
            path,
            shared: self.shared.clone(),
            open_timeout: self.open_timeout,
            pending: VecDeque::new(),
            protocols_changed,
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
                let best = lock(&self.shared.state)
                    .best_connection(&peer)
                    .map(|c| c.id);
                match best {
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
                // Connected already: done, unless this is a direct address
                // of a peer reached only through relays (the direct
                // connection is what new streams should use).
                let connected = peer_of(&addr).filter(|peer| {
                    let state = lock(&self.shared.state);
                    state.connections.contains_key(peer)
                        && (is_circuit(&addr) || state.has_direct(peer))
                });
                if let Some(peer) = connected {
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
        reply: OpenReply,
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
            let direct_before = state.has_direct(&peer);
            let relayed = endpoint.is_relayed();
            state
                .connections
                .entry(peer)
                .or_default()
                .push(ConnectionFacts {
                    id: connection,
                    remote: endpoint.get_remote_address().clone(),
                    relayed,
                });
            if !relayed && !direct_before {
                tracing::debug!(%peer, %connection, "a direct connection: new streams go on it");
                state.announce_path(peer, true);
            }
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
        // The best connection (this one, unless a direct one was there
        // already) takes everything that waited.
        let first = lock(&self.shared.state)
            .best_connection(&peer)
            .map_or(connection, |c| c.id);
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
        let (commands, watchers, path_watchers) = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            self.shared.down.store(true, Ordering::Release);
            state.connections.clear();
            (
                std::mem::take(&mut state.commands),
                std::mem::take(&mut state.close_watchers),
                std::mem::take(&mut state.path_watchers),
            )
        };
        drop(commands);
        // Ends every path watch.
        drop(path_watchers);
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
        lock(&self.shared.remote).close();
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let path = ConnectionPath {
            connection: connection_id,
            remote_addr: remote_addr.clone(),
            relayed: is_circuit(local_addr),
        };
        Ok(self.handler(peer, path))
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
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let path = ConnectionPath {
            connection: connection_id,
            remote_addr: addr.clone(),
            relayed: is_circuit(addr),
        };
        Ok(self.handler(peer, path))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                lock(&self.shared.remote).connection_opened(e.peer_id, e.connection_id);
                self.on_connection_established(e.peer_id, e.connection_id, e.endpoint);
            }
            FromSwarm::ConnectionClosed(e) => {
                lock(&self.shared.remote).connection_closed(e.peer_id, e.connection_id);
                let mut state = lock(&self.shared.state);
                let direct_before = state.has_direct(&e.peer_id);
                if let Some(connections) = state.connections.get_mut(&e.peer_id) {
                    connections.retain(|c| c.id != e.connection_id);
                    if connections.is_empty() {
                        state.connections.remove(&e.peer_id);
                    }
                }
                if direct_before && !state.has_direct(&e.peer_id) {
                    state.announce_path(e.peer_id, false);
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
