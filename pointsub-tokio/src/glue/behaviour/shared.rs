//! The state a [`Behaviour`], its [`Control`] handles and its connection
//! handlers share, and the commands the handles send the behaviour.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use futures::channel::{mpsc, oneshot};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

use super::*;
use crate::glue::common::lock;

pub(super) struct Shared {
    /// The id of the swarm this behaviour runs in, as its creator said.
    pub(super) local_peer_id: PeerId,
    pub(super) registry: Mutex<Registry>,
    pub(super) state: Mutex<State>,
    /// What connected peers say they support (see `remote.rs`).
    pub(super) remote: Mutex<RemoteProtocols>,
    /// Which of pointsub's stream limits were set through [`Control`]'s
    /// helpers (the swarm's own settings cannot be read from a behaviour).
    pub(super) yamux_limit_set: AtomicBool,
    pub(super) swarm_limit_set: AtomicBool,
    /// Set (once, for good) when `state.closed` or `state.stopping` is:
    /// every send asks, and reading it takes no lock shared with the swarm.
    pub(super) down: AtomicBool,
}

pub(super) struct Registration {
    pub(super) id: u64,
    pub(super) sender: mpsc::UnboundedSender<(PeerId, Stream)>,
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) receivers: HashMap<StreamProtocol, Registration>,
    /// The registered protocols, sorted; what handlers offer to remotes.
    pub(super) snapshot: Arc<[StreamProtocol]>,
    pub(super) next_id: u64,
    pub(super) closed: bool,
    /// Woken when the snapshot changes, so that connections (and through
    /// them identify) see the new protocols at once.
    pub(super) wakers: ProtocolWakers,
}

impl Registry {
    pub(super) fn rebuild_snapshot(&mut self) {
        let mut protocols: Vec<StreamProtocol> = self.receivers.keys().cloned().collect();
        protocols.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        self.snapshot = protocols.into();
        self.wakers.wake_all();
    }
}

pub(super) struct ConnectionFacts {
    pub(super) id: ConnectionId,
    pub(super) remote: Multiaddr,
    /// Through a relay's circuit (`/p2p-circuit` in the dialed address,
    /// or in the local address a remote came in on).
    pub(super) relayed: bool,
}

impl ConnectionFacts {
    pub(super) fn path(&self) -> ConnectionPath {
        ConnectionPath {
            connection: self.id,
            remote_addr: self.remote.clone(),
            relayed: self.relayed,
        }
    }
}

/// A change of whether a peer has a direct (not relayed) connection, for
/// the clients that retire their streams on relayed connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathChange {
    /// The peer.
    pub(crate) peer: PeerId,
    /// Whether it has at least one direct connection now.
    pub(crate) direct: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) commands: VecDeque<Command>,
    pub(super) waker: Option<Waker>,
    /// Known addresses per peer, without a trailing `/p2p`.
    pub(super) addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// Established connections per peer, oldest first.
    pub(super) connections: BTreeMap<PeerId, Vec<ConnectionFacts>>,
    pub(super) closed: bool,
    /// Its node's `shutdown()` was called: the swarm is about to go, and
    /// nothing new should start on it.
    pub(super) stopping: bool,
    /// How many times the behaviour has been polled (wrapping): what
    /// tells a request that waits whether the swarm is still running.
    pub(super) polls: u64,
    /// One sender per [`HostClosed`] future; dropped (never sent) when the
    /// behaviour is dropped.
    pub(super) close_watchers: Vec<oneshot::Sender<Infallible>>,
    /// Who hears of [`PathChange`]s, by watch id; dropped when the
    /// behaviour is dropped.
    pub(super) path_watchers: Vec<(u64, mpsc::UnboundedSender<PathChange>)>,
    pub(super) next_watch: u64,
}

impl State {
    pub(super) fn add_address(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr = strip_peer(addr, peer);
        let known = self.addresses.entry(peer).or_default();
        if !known.contains(&addr) {
            known.push(addr);
        }
    }

    /// The connection new streams to `peer` go on: a direct one before a
    /// relayed one, and among those the newest (a direct connection made
    /// by hole punching after the relayed one comes last).
    pub(super) fn best_connection(&self, peer: &PeerId) -> Option<&ConnectionFacts> {
        let connections = self.connections.get(peer)?;
        connections
            .iter()
            .rev()
            .find(|c| !c.relayed)
            .or_else(|| connections.last())
    }

    /// Whether `peer` has at least one direct (not relayed) connection.
    pub(super) fn has_direct(&self, peer: &PeerId) -> bool {
        self.connections
            .get(peer)
            .is_some_and(|cs| cs.iter().any(|c| !c.relayed))
    }

    /// Tells the path watchers that `peer` now has (or no longer has) a
    /// direct connection; forgets the watchers that are gone.
    pub(super) fn announce_path(&mut self, peer: PeerId, direct: bool) {
        self.path_watchers
            .retain(|(_, tx)| tx.unbounded_send(PathChange { peer, direct }).is_ok());
    }
}

impl Shared {
    pub(super) fn new(local_peer_id: PeerId) -> Self {
        Self {
            local_peer_id,
            registry: Mutex::new(Registry::default()),
            state: Mutex::new(State::default()),
            remote: Mutex::new(RemoteProtocols::default()),
            yamux_limit_set: AtomicBool::new(false),
            swarm_limit_set: AtomicBool::new(false),
            down: AtomicBool::new(false),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Queues a command for the behaviour and wakes it. Returns the command
    /// back if the behaviour is gone.
    pub(super) fn push(&self, command: Command) -> Result<(), Command> {
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
    pub(super) fn warn_if_default_limits(&self) {
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

    pub(super) fn protocols(&self) -> Arc<[StreamProtocol]> {
        lock(&self.registry).snapshot.clone()
    }

    pub(super) fn deliver(&self, peer: PeerId, protocol: StreamProtocol, stream: Stream) {
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

pub(super) fn strip_peer(mut addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if let Some(Protocol::P2p(p)) = addr.iter().last()
        && p == peer
    {
        addr.pop();
    }
    addr
}

/// Whether `addr` goes through a relay's circuit.
pub(super) fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

pub(super) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

pub(super) enum Command {
    Open {
        peer: PeerId,
        protocol: StreamProtocol,
        reply: OpenReply,
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
