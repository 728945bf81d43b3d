//! [`Node`]: a libp2p swarm with a [`Behaviour`](crate::Behaviour), driven by a task on
//! any [`Runtime`].
//!
//! A node is the embedded default: it builds and drives a swarm whose only
//! behaviour is pointsub's, and is a [`Host`] (it dereferences to one) like
//! the host an application makes from a [`Behaviour`](crate::Behaviour) in a swarm of its
//! own (see [`crate::host`]). Clients, servers and raw connections work
//! on either through the same code.
//!
//! This module is runtime-neutral. A runtime crate builds the swarm over
//! its own transport (tcp + noise + yamux, with [`yamux_config`] and
//! [`tune_swarm_config`] so the stream limits match on every node) and
//! hands it to [`Node::from_swarm`]. With the `tokio-runtime` feature,
//! [`Node::new`](crate::Node::new) does all of that from a
//! [`NodeConfig`].
//!
//! # Stream limits (libp2p 0.57)
//!
//! * yamux (`libp2p-yamux` 0.48 over `yamux` 0.14): `Config` exposes only
//!   `set_max_num_streams` (default 512). The connection's receive window
//!   is fixed at 1 GiB; every stream is guaranteed 256 KiB of it and
//!   yamux's window auto-tuning grows a fast stream's window from what is
//!   left, `1 GiB - max_num_streams * 256 KiB`. At 4096 streams (the most
//!   the assertion in `yamux::Config` allows) nothing is left, windows stay
//!   at 256 KiB and one stream carries at most 256 KiB per round trip,
//!   which caps large bodies on a pooled stream.
//!   [`yamux_config`] sets [`MAX_STREAMS_PER_CONNECTION`] = 1024, which
//!   leaves 768 MiB for growth and is still four times what the pools keep
//!   per peer (client: 100 streams in all; server: 256 per peer). Beyond
//!   it, an opener's connection is closed (libp2p-swarm treats the muxer's
//!   "too many streams" as a connection error) and a receiving yamux
//!   terminates the connection, so every node must use the same limit and
//!   upper layers must keep fewer streams than that per peer. yamux also
//!   lets at most 256 of our outbound streams wait for the remote's ACK;
//!   further opens wait (within the open timeout) rather than fail.
//! * The swarm's `max_negotiating_inbound_streams` (default 128) drops
//!   inbound substreams beyond it while they negotiate; yamux in turn drops
//!   inbound streams when more than 256 queue up unpolled. We raise the
//!   swarm limit to the same 1024 ([`tune_swarm_config`]) so bursts of
//!   opens are negotiated, not reset.
//! * QUIC (tokio only) limits concurrent bidirectional streams per
//!   connection with `max_concurrent_stream_limit` (default 256); extra
//!   opens wait for credit instead of failing. The tokio node raises it to
//!   1024 as well.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};

use super::behaviour::DEFAULT_OPEN_TIMEOUT;
use super::common::lock;
use super::host::Host;
use super::net::{
    NatStatus, NetBehaviourEvent, NetState, NodeBehaviour, NodeEvent, PeerConnection, RelayLimits,
    net_state,
};
use super::rt::Runtime;

pub use super::behaviour::{MAX_STREAMS_PER_CONNECTION, swarm_limits, yamux_config};

/// How long [`Node::from_swarm`] waits for its listeners to report an
/// address: 10 s.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies pointsub's swarm settings to a runtime's base config: the idle
/// connection timeout and [`swarm_limits`].
pub fn tune_swarm_config(
    config: libp2p::swarm::Config,
    idle_connection_timeout: Duration,
) -> libp2p::swarm::Config {
    swarm_limits(config).with_idle_connection_timeout(idle_connection_timeout)
}

/// Default idle connection timeout: 5 minutes.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Default bound on establishing a connection: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to build a [`Node`], on any runtime. The default needs no
/// configuration: a fresh ed25519 identity, listening on loopback on
/// ephemeral ports (TCP, plus QUIC where the runtime has it), with
/// identify, ping, AutoNAT v2 (client), the relay client and DCUtR on, and
/// no relay server, AutoNAT server, Kademlia or mDNS.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node's identity; `None` generates a fresh ed25519 key.
    pub keypair: Option<Keypair>,
    /// Where to listen: any multiaddrs the runtime's transports take
    /// (`/ip4/0.0.0.0/tcp/4001`, `/ip6/::/udp/0/quic-v1`, …). `None`: the
    /// runtime's default (tokio: `/ip4/127.0.0.1/tcp/0` and
    /// `/ip4/127.0.0.1/udp/0/quic-v1`; async-std: `/ip4/127.0.0.1/tcp/0`),
    /// or [`NodeConfig::listen_all_interfaces`]'s. `Some(vec![])`: no
    /// direct listener (a node may still listen through
    /// [`NodeConfig::relays`]).
    pub listen_addrs: Option<Vec<Multiaddr>>,
    /// Listen on every interface, on this port, on each of the runtime's
    /// transports (tokio: TCP and QUIC, IPv4 and IPv6; async-std: TCP),
    /// when [`NodeConfig::listen_addrs`] is `None`.
    pub listen_all_interfaces: Option<u16>,
    /// Addresses to announce as this node's own, confirmed from the start
    /// (e.g. a public address in front of a port forward). A relay server
    /// accepts reservations only once it has one.
    pub external_addrs: Vec<Multiaddr>,
    /// Relays to listen through: each is a relay's address ending with
    /// `/p2p/<relay id>` (`/p2p-circuit` may follow). The node reserves a
    /// slot on each; [`NodeEvent::RelayReservation`] reports its
    /// `/p2p-circuit` address.
    ///
    /// [`NodeEvent::RelayReservation`]: crate::net::NodeEvent::RelayReservation
    pub relays: Vec<Multiaddr>,
    /// Run a relay server with these circuit limits (`None`: no server).
    pub relay_server: Option<RelayLimits>,
    /// Serve AutoNAT v2: dial other nodes back to tell them whether they
    /// are reachable. For public nodes (relays, bootstrap nodes).
    pub autonat_server: bool,
    /// The node says it is publicly reachable: its Kademlia runs in server
    /// mode. Otherwise Kademlia stays a client, whatever addresses get
    /// confirmed.
    pub public: bool,
    /// Run Kademlia (under `/pointsub/kad/1.0.0`).
    pub kad: bool,
    /// Kademlia's first peers: addresses ending with `/p2p/<peer id>`.
    /// Setting them with [`NodeConfig::with_bootstrap`] turns Kademlia on.
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the LAN with mDNS (feature `mdns`, tokio only;
    /// ignored elsewhere, with a warning).
    pub mdns: bool,
    /// Sees every event of the node's swarm before the node handles it:
    /// for libp2p-metrics' `Metrics::record`, so that one registry holds
    /// libp2p's swarm and protocol metrics beside pointsub's. `None` by
    /// default.
    pub swarm_observer: Option<SwarmObserver>,
    /// How long a connection with no streams stays open. Default 5 min.
    pub idle_connection_timeout: Duration,
    /// Bound on opening one stream (muxer wait plus protocol negotiation).
    /// Default 5 s.
    pub open_timeout: Duration,
    /// Bound on establishing one connection (transport, security, muxer).
    /// Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            keypair: None,
            listen_addrs: None,
            listen_all_interfaces: None,
            external_addrs: Vec::new(),
            relays: Vec::new(),
            relay_server: None,
            autonat_server: false,
            public: false,
            kad: false,
            bootstrap: Vec::new(),
            mdns: false,
            swarm_observer: None,
            idle_connection_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// A function that sees every event of a [`Node`]'s swarm (built by
/// [`Node::new`](crate::Node::new)) before the node handles it; see
/// [`NodeConfig::with_swarm_observer`]. It runs on the swarm's task: keep
/// it short.
#[derive(Clone)]
pub struct SwarmObserver(pub Observer<NetBehaviourEvent>);

impl SwarmObserver {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&SwarmEvent<NetBehaviourEvent>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl fmt::Debug for SwarmObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmObserver")
    }
}

impl NodeConfig {
    /// Lets `observer` see every event of the node's swarm (e.g. to record
    /// libp2p-metrics).
    #[must_use]
    pub fn with_swarm_observer(mut self, observer: SwarmObserver) -> Self {
        self.swarm_observer = Some(observer);
        self
    }

    /// Uses `keypair` as the node's identity.
    #[must_use]
    pub fn with_keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// Listens on exactly `addrs` (replacing the defaults; empty: no
    /// direct listener).
    #[must_use]
    pub fn with_listen_addrs(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.listen_addrs = Some(addrs.into_iter().collect());
        self
    }

    /// Listens on every interface on `port` (0: ephemeral), on each of
    /// the runtime's transports; replaces [`NodeConfig::listen_addrs`].
    #[must_use]
    pub fn listen_on_all_interfaces(mut self, port: u16) -> Self {
        self.listen_addrs = None;
        self.listen_all_interfaces = Some(port);
        self
    }

    /// Announces `addrs` as this node's own external addresses.
    #[must_use]
    pub fn with_external_addrs(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.external_addrs.extend(addrs);
        self
    }

    /// Listens through the relays at `addrs` (each ending with
    /// `/p2p/<relay id>`).
    #[must_use]
    pub fn with_relays(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.relays.extend(addrs);
        self
    }

    /// Runs a relay server with `limits` on every circuit.
    #[must_use]
    pub fn with_relay_server(mut self, limits: RelayLimits) -> Self {
        self.relay_server = Some(limits);
        self
    }

    /// Serves AutoNAT v2 (or not).
    #[must_use]
    pub fn with_autonat_server(mut self, on: bool) -> Self {
        self.autonat_server = on;
        self
    }

    /// Says whether this node is publicly reachable (Kademlia server mode).
    #[must_use]
    pub fn with_public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    /// Runs Kademlia (or not).
    #[must_use]
    pub fn with_kad(mut self, on: bool) -> Self {
        self.kad = on;
        self
    }

    /// Adds Kademlia bootstrap peers (addresses ending with `/p2p/<peer
    /// id>`) and turns Kademlia on.
    #[must_use]
    pub fn with_bootstrap(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.bootstrap.extend(addrs);
        self.kad = true;
        self
    }

    /// Finds LAN peers with mDNS (feature `mdns`, tokio).
    #[must_use]
    pub fn with_mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Sets the idle connection timeout.
    #[must_use]
    pub fn with_idle_connection_timeout(mut self, timeout: Duration) -> Self {
        self.idle_connection_timeout = timeout;
        self
    }

    /// Sets the stream open timeout.
    #[must_use]
    pub fn with_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Sets the connection establishment timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Everything the node listens on: the listen addresses (or
    /// `defaults`: the runtime's loopback ones, or its all-interfaces ones
    /// for `port`), then a `/p2p-circuit` listener per relay.
    pub fn all_listen_addrs(
        &self,
        defaults: impl FnOnce(Option<u16>) -> Vec<Multiaddr>,
    ) -> Vec<Multiaddr> {
        let mut addrs = match &self.listen_addrs {
            Some(addrs) => addrs.clone(),
            None => defaults(self.listen_all_interfaces),
        };
        for relay in &self.relays {
            let addr = if relay.iter().any(|p| p == Protocol::P2pCircuit) {
                relay.clone()
            } else {
                relay.clone().with(Protocol::P2pCircuit)
            };
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }
}

/// A [`Runtime`] that can build a node's swarm (its transports) and start
/// it: what makes [`Node::new`] work on that runtime.
pub trait NodeRuntime: Runtime {
    /// The runtime [`Node::new`] uses: the caller's current one, or an
    /// error when there is none.
    fn for_new_node() -> Result<Self, NodeError>;

    /// Builds the swarm for `config` on this runtime and starts the node
    /// (through [`Node::from_swarm`]).
    fn start_node(
        self,
        config: NodeConfig,
    ) -> impl Future<Output = Result<Node<Self>, NodeError>> + Send;
}

impl<R: NodeRuntime> Node<R> {
    /// Builds and starts a node from `config` on the current runtime.
    pub async fn new(config: NodeConfig) -> Result<Self, NodeError> {
        R::for_new_node()?.start_node(config).await
    }

    /// Builds and starts a node from `config` on `runtime`.
    pub async fn with_runtime(config: NodeConfig, runtime: R) -> Result<Self, NodeError> {
        runtime.start_node(config).await
    }
}

/// Why a node could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No async runtime to run on (e.g. the tokio `Node::new` outside tokio).
    #[error("no async runtime available: {0}")]
    Runtime(String),
    /// The transport (security, muxer, QUIC) could not be set up.
    #[error("transport setup failed: {0}")]
    Transport(String),
    /// The swarm refused a listen address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address that was refused.
        addr: Multiaddr,
        /// libp2p's description of the problem.
        reason: String,
    },
    /// Listeners were started but none reported an address in time.
    #[error("no listen address became available: {0}")]
    NoListenAddr(String),
    /// The swarm's identity is not the one its [`Behaviour`](crate::Behaviour) was made for
    /// ([`Behaviour::new`](crate::Behaviour::new) takes the swarm's peer id).
    #[error("the behaviour was made for peer {behaviour}, not for the swarm's identity")]
    PeerIdMismatch {
        /// The id given to [`Behaviour::new`](crate::Behaviour::new).
        behaviour: PeerId,
    },
}

/// An error with its causes, `: `-separated (libp2p's transport errors
/// often say nothing themselves and keep the reason in `source()`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[derive(Default)]
struct ListenState {
    addrs: Vec<Multiaddr>,
    /// Listeners that have neither reported an address nor closed yet.
    waiting: HashSet<ListenerId>,
    failures: Vec<String>,
    ready: Option<oneshot::Sender<()>>,
}

impl ListenState {
    fn settled(&mut self, listener: ListenerId) {
        self.waiting.remove(&listener);
        if self.waiting.is_empty()
            && let Some(ready) = self.ready.take()
        {
            let _ = ready.send(());
        }
    }
}

struct Inner<R> {
    host: Host<R>,
    listen: Arc<Mutex<ListenState>>,
    net: Arc<Mutex<NetState>>,
    commands: mpsc::UnboundedSender<SwarmCommand>,
    /// Dropping or firing this ends the swarm task. The host holds it too,
    /// so clients and servers on the node keep it running.
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

/// Work for the swarm task that needs the swarm itself.
enum SwarmCommand {
    /// `Swarm::listen_on`, answered with the listener or why not.
    ListenOn(Multiaddr, oneshot::Sender<Result<ListenerId, String>>),
    /// `Swarm::add_external_address`.
    AddExternal(Multiaddr),
    /// `Swarm::close_connection`.
    CloseConnection(ConnectionId),
    /// A closure run on the swarm (downcast from `dyn Any`).
    WithSwarm(SwarmFn),
}

/// A closure for [`SwarmCommand::WithSwarm`]: it gets the swarm as `Any`.
type SwarmFn = Box<dyn FnOnce(&mut dyn Any) + Send>;

/// The node's swarm task is gone (the node was shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is shut down")]
#[non_exhaustive]
pub struct NodeShutDown;

/// Why [`Node::with_swarm`] did not run its closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WithSwarmError {
    /// The node is shut down.
    #[error("the node is shut down")]
    ShutDown,
    /// The node's swarm does not carry the behaviour type asked for.
    #[error("the node's swarm does not carry the behaviour type asked for")]
    WrongBehaviour,
}

/// A running libp2p host: its identity, listen addresses, connections and
/// raw streams.
///
/// Cheap to clone (an `Arc`). A spawned task drives the swarm; it ends
/// when the last clone is dropped or [`Node::shutdown`] is called, which
/// closes every connection and makes every [`Control`] report `Shutdown`.
///
/// A node dereferences to its [`Host`]: `peer_id`, `add_address`,
/// `connect`, `listen`, `dial` and the rest are the host's, and `&node`
/// is accepted wherever a `&Host` is (`Client::new(&node, ..)`).
///
/// [`Control`]: crate::Control
pub struct Node<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Node<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> fmt::Debug for Node<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id())
            .field("listen_addrs", &self.listen_addrs())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> std::ops::Deref for Node<R> {
    type Target = Host<R>;

    fn deref(&self) -> &Host<R> {
        &self.inner.host
    }
}

impl<R: Runtime> Node<R> {
    /// Starts a node on an already built swarm.
    ///
    /// The swarm's behaviour is pointsub's [`Behaviour`](crate::Behaviour)
    /// alone, or the composed [`NetBehaviour`](crate::net::NetBehaviour)
    /// that [`Node::new`] builds ([`NodeBehaviour`] covers both).
    ///
    /// Listens on `listen_addrs`, spawns the task driving the swarm on
    /// `runtime`, and waits (at most [`LISTEN_TIMEOUT`]) until every
    /// listener has reported an address or failed. Fails if an address is
    /// refused, or if listeners were given and none produced an address.
    /// With no listen addresses the node only dials out.
    ///
    /// The swarm should use [`yamux_config`] and [`tune_swarm_config`]
    /// (through the behaviour's `Control`, which records it), and its
    /// transport should carry a connection timeout (libp2p's
    /// `SwarmBuilder` adds one), since dials are bounded by it. Fails with
    /// [`NodeError::PeerIdMismatch`] if the behaviour was made for another
    /// identity than the swarm's.
    pub async fn from_swarm<B>(
        swarm: Swarm<B>,
        runtime: R,
        listen_addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Result<Self, NodeError>
    where
        B: NodeBehaviour + Send + 'static,
        Swarm<B>: Send,
        B::ToSwarm: Send,
    {
        Self::from_swarm_observed(swarm, runtime, listen_addrs, None).await
    }

    /// [`Node::from_swarm`], with `observer` seeing every swarm event
    /// before the node handles it (e.g. to record libp2p-metrics).
    pub async fn from_swarm_observed<B>(
        mut swarm: Swarm<B>,
        runtime: R,
        listen_addrs: impl IntoIterator<Item = Multiaddr>,
        observer: Option<Observer<B::ToSwarm>>,
    ) -> Result<Self, NodeError>
    where
        B: NodeBehaviour + Send + 'static,
        Swarm<B>: Send,
        B::ToSwarm: Send,
    {
        let peer_id = *swarm.local_peer_id();
        let pointsub = swarm.behaviour().pointsub();
        if pointsub.local_peer_id() != peer_id {
            return Err(NodeError::PeerIdMismatch {
                behaviour: pointsub.local_peer_id(),
            });
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let stop = Arc::new(Mutex::new(Some(stop_tx)));
        let host = pointsub.host(runtime).with_lifeline(stop.clone());

        let mut waiting = HashSet::new();
        for addr in listen_addrs {
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    waiting.insert(id);
                }
                Err(e) => {
                    return Err(NodeError::Listen {
                        addr,
                        reason: error_chain(&e),
                    });
                }
            }
        }
        let has_listeners = !waiting.is_empty();
        let (ready_tx, ready_rx) = oneshot::channel();
        let listen = Arc::new(Mutex::new(ListenState {
            waiting,
            ready: has_listeners.then_some(ready_tx),
            ..ListenState::default()
        }));
        let net = Arc::new(Mutex::new(NetState::default()));
        let (commands, commands_rx) = mpsc::unbounded();

        host.runtime().spawn(Box::pin(drive(
            swarm,
            observer,
            stop_rx,
            commands_rx,
            listen.clone(),
            net.clone(),
        )));
        let node = Self {
            inner: Arc::new(Inner {
                host,
                listen,
                net,
                commands,
                stop,
            }),
        };

        if has_listeners {
            let timeout = node.runtime().sleep(LISTEN_TIMEOUT);
            let _ = future::select(ready_rx, timeout).await;
            let state = lock(&node.inner.listen);
            if state.addrs.is_empty() {
                let reason = if state.failures.is_empty() {
                    format!("timed out after {LISTEN_TIMEOUT:?}")
                } else {
                    state.failures.join("; ")
                };
                drop(state);
                node.shutdown();
                return Err(NodeError::NoListenAddr(reason));
            }
        }
        Ok(node)
    }

    /// The addresses this node listens on now (as reported by its
    /// listeners; expired ones removed). A relay reservation adds its
    /// `/p2p-circuit` address here.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.inner.listen).addrs.clone()
    }

    /// The listen addresses with this node's `/p2p/<peer id>` appended:
    /// what another node needs to reach it.
    pub fn addresses(&self) -> Vec<Multiaddr> {
        let me = self.peer_id();
        self.listen_addrs()
            .into_iter()
            .map(|a| a.with(Protocol::P2p(me)))
            .collect()
    }

    /// Why listeners failed so far (e.g. a relay that refused the
    /// reservation), one line each.
    pub fn listen_failures(&self) -> Vec<String> {
        lock(&self.inner.listen).failures.clone()
    }

    /// The node's [`Host`] (also reached through `Deref`).
    pub fn host(&self) -> &Host<R> {
        &self.inner.host
    }

    /// A stream of what happens on the node's network from now on:
    /// connections, relay reservations, hole punches, reachability. Each
    /// call is a new subscriber; dropping it unsubscribes. Ends when the
    /// node shuts down.
    pub fn events(&self) -> mpsc::UnboundedReceiver<NodeEvent> {
        net_state(&self.inner.net).subscribe()
    }

    /// The node's open connections, oldest first.
    pub fn connections(&self) -> Vec<PeerConnection> {
        net_state(&self.inner.net).connections()
    }

    /// The node's open connections to `peer`, oldest first.
    pub fn connections_to(&self, peer: &PeerId) -> Vec<PeerConnection> {
        let mut all = self.connections();
        all.retain(|c| &c.peer == peer);
        all
    }

    /// Addresses others reported seeing this node at (identify), not yet
    /// confirmed.
    pub fn address_candidates(&self) -> Vec<Multiaddr> {
        net_state(&self.inner.net).candidates()
    }

    /// This node's confirmed external addresses.
    pub fn external_addrs(&self) -> Vec<Multiaddr> {
        net_state(&self.inner.net).external_addrs()
    }

    /// Whether AutoNAT found this node reachable from outside.
    pub fn nat_status(&self) -> NatStatus {
        net_state(&self.inner.net).nat_status()
    }

    /// Starts listening on `addr` (any multiaddr the transports take, a
    /// relay's `/p2p-circuit` address included). The address itself is
    /// reported later, in [`Node::listen_addrs`] (and, for a relay,
    /// [`NodeEvent::RelayReservation`]).
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        let refused = |reason: String| NodeError::Listen {
            addr: addr.clone(),
            reason,
        };
        self.command(SwarmCommand::ListenOn(addr.clone(), tx))
            .map_err(|_| refused(NodeShutDown.to_string()))?;
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(refused(reason)),
            Err(_) => Err(refused(NodeShutDown.to_string())),
        }
    }

    /// Adds `addr` as a confirmed external address of this node (what a
    /// relay needs before it accepts reservations).
    pub fn add_external_address(&self, addr: Multiaddr) -> Result<(), NodeShutDown> {
        self.command(SwarmCommand::AddExternal(addr))
    }

    /// Closes one connection (e.g. a relayed one once a direct one is up).
    /// Streams on it end with an error.
    pub fn close_connection(&self, connection: ConnectionId) -> Result<(), NodeShutDown> {
        self.command(SwarmCommand::CloseConnection(connection))
    }

    /// Runs `f` on the node's swarm, in the swarm task, and returns its
    /// result: how an application reaches a part of the behaviour
    /// (`swarm.behaviour_mut().kad`, …) that the node has no method for.
    /// `B` is the swarm's behaviour type ([`crate::net::NetBehaviour`] for
    /// nodes made by `Node::new`); another type is an error.
    pub async fn with_swarm<B, T>(
        &self,
        f: impl FnOnce(&mut Swarm<B>) -> T + Send + 'static,
    ) -> Result<T, WithSwarmError>
    where
        B: NodeBehaviour + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let run = move |swarm: &mut dyn Any| {
            let result = swarm
                .downcast_mut::<Swarm<B>>()
                .map(f)
                .ok_or(WithSwarmError::WrongBehaviour);
            let _ = tx.send(result);
        };
        self.command(SwarmCommand::WithSwarm(Box::new(run)))
            .map_err(|_| WithSwarmError::ShutDown)?;
        rx.await.map_err(|_| WithSwarmError::ShutDown)?
    }

    fn command(&self, command: SwarmCommand) -> Result<(), NodeShutDown> {
        if self.is_shut_down() {
            return Err(NodeShutDown);
        }
        self.inner
            .commands
            .unbounded_send(command)
            .map_err(|_| NodeShutDown)
    }

    /// Stops the swarm task: connections close, pending opens and dials
    /// fail with `Shutdown`, [`IncomingStreams`](crate::IncomingStreams)
    /// end, and clients and servers on the node close. Idempotent; other
    /// clones of this node see the same shut-down node.
    pub fn shutdown(&self) {
        if let Some(stop) = lock(&self.inner.stop).take() {
            self.control().begin_shutdown();
            let _ = stop.send(());
        }
    }

    /// Whether [`Node::shutdown`] was called (the swarm task may still be
    /// finishing; [`Control::is_shut_down`](crate::Control::is_shut_down)
    /// is true from the same moment).
    pub fn is_shut_down(&self) -> bool {
        lock(&self.inner.stop).is_none()
    }
}

/// A function that sees each event of a swarm of behaviour events `E`
/// (see [`Node::from_swarm_observed`]).
pub type Observer<E> = Arc<dyn Fn(&SwarmEvent<E>) + Send + Sync>;

/// What woke the swarm task.
enum Step<E> {
    Stop,
    Command(SwarmCommand),
    /// Boxed: a swarm event is large, and this is built on every wake-up.
    Event(Box<SwarmEvent<E>>),
}

/// The swarm task: polls the swarm until stopped, keeping the listen
/// addresses and the network state current, and runs commands.
async fn drive<B: NodeBehaviour + 'static>(
    mut swarm: Swarm<B>,
    observer: Option<Observer<B::ToSwarm>>,
    mut stop: oneshot::Receiver<()>,
    mut commands: mpsc::UnboundedReceiver<SwarmCommand>,
    listen: Arc<Mutex<ListenState>>,
    net: Arc<Mutex<NetState>>,
) {
    let peer = *swarm.local_peer_id();
    tracing::debug!(%peer, "swarm task started");
    let mut commands_open = true;
    loop {
        let step = future::poll_fn(|cx| {
            // Shutdown requested, or every Node handle dropped.
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(Step::Stop);
            }
            if commands_open {
                match commands.poll_next_unpin(cx) {
                    Poll::Ready(Some(command)) => return Poll::Ready(Step::Command(command)),
                    Poll::Ready(None) => commands_open = false,
                    Poll::Pending => {}
                }
            }
            match swarm.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => Poll::Ready(Step::Event(Box::new(event))),
                // A swarm's stream never ends.
                Poll::Ready(None) => Poll::Ready(Step::Stop),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match step {
            Step::Stop => break,
            Step::Command(command) => run_command(&mut swarm, command, &net),
            Step::Event(event) => {
                if let Some(observe) = &observer {
                    observe(&event);
                }
                on_swarm_step(&mut swarm, *event, &listen, &net, peer);
            }
        }
    }
    tracing::debug!(%peer, "swarm task stopped");
    // Dropping the swarm closes its connections and shuts the behaviour's
    // Controls down; dropping the subscribers ends their event streams.
    drop(swarm);
    drop(std::mem::take(&mut *net_state(&net)));
}

/// Handles one event of the swarm task's swarm.
fn on_swarm_step<B: NodeBehaviour + 'static>(
    swarm: &mut Swarm<B>,
    event: SwarmEvent<B::ToSwarm>,
    listen: &Mutex<ListenState>,
    net: &Mutex<NetState>,
    peer: PeerId,
) {
    match event {
        SwarmEvent::Behaviour(event) => {
            let mut events = Vec::new();
            B::on_behaviour_event(swarm, event, &mut |e| events.push(e));
            let mut state = net_state(net);
            for event in events {
                state.emit(event);
            }
        }
        event => {
            net_state(net).on_swarm_event(&event, peer);
            on_event(listen, event);
        }
    }
}

fn run_command<B: NodeBehaviour + 'static>(
    swarm: &mut Swarm<B>,
    command: SwarmCommand,
    net: &Mutex<NetState>,
) {
    match command {
        SwarmCommand::ListenOn(addr, reply) => {
            let _ = reply.send(swarm.listen_on(addr).map_err(|e| error_chain(&e)));
        }
        SwarmCommand::AddExternal(addr) => {
            tracing::debug!(%addr, "external address added");
            swarm.add_external_address(addr.clone());
            // The swarm reports confirmations to its behaviours only.
            net_state(net).emit(NodeEvent::ExternalAddrConfirmed { addr });
        }
        SwarmCommand::CloseConnection(connection) => {
            swarm.close_connection(connection);
        }
        SwarmCommand::WithSwarm(f) => f(swarm),
    }
}

fn on_event<E>(listen: &Mutex<ListenState>, event: SwarmEvent<E>) {
    match event {
        SwarmEvent::NewListenAddr {
            listener_id,
            address,
        } => {
            tracing::debug!(%address, "listening");
            let mut state = lock(listen);
            if !state.addrs.contains(&address) {
                state.addrs.push(address);
            }
            state.settled(listener_id);
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            tracing::debug!(%address, "listen address expired");
            lock(listen).addrs.retain(|a| a != &address);
        }
        SwarmEvent::ListenerClosed {
            listener_id,
            addresses,
            reason,
        } => {
            let mut state = lock(listen);
            state.addrs.retain(|a| !addresses.contains(a));
            if let Err(e) = reason {
                let reason = error_chain(&e);
                tracing::warn!(error = %reason, "listener closed");
                state.failures.push(reason);
            }
            state.settled(listener_id);
        }
        SwarmEvent::ListenerError { error, .. } => {
            tracing::warn!(%error, "listener error");
        }
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => {
            tracing::trace!(%peer_id, remote = %endpoint.get_remote_address(), "connection established");
        }
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
            tracing::trace!(%peer_id, ?cause, "connection closed");
        }
        SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
            tracing::debug!(?peer_id, %error, "outgoing connection failed");
        }
        SwarmEvent::IncomingConnectionError { error, .. } => {
            tracing::debug!(%error, "incoming connection failed");
        }
        _ => {}
    }
}
