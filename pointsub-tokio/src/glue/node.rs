//! [`Node`]: a libp2p swarm with a [`Behaviour`], driven by a task on
//! any [`Runtime`].
//!
//! A node is the embedded default: it builds and drives a swarm whose only
//! behaviour is pointsub's, and is a [`Host`] (it dereferences to one) like
//! the host an application makes from a [`Behaviour`] in a swarm of its
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

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::oneshot;
use futures::future::{self, Either};
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};

use super::behaviour::{Behaviour, DEFAULT_OPEN_TIMEOUT};
use super::common::lock;
use super::host::Host;
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
/// ephemeral ports (TCP, plus QUIC where the runtime has it).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node's identity; `None` generates a fresh ed25519 key.
    pub keypair: Option<Keypair>,
    /// Where to listen. `None`: the runtime's default (tokio:
    /// `/ip4/127.0.0.1/tcp/0` and `/ip4/127.0.0.1/udp/0/quic-v1`;
    /// async-std: `/ip4/127.0.0.1/tcp/0`). `Some(vec![])`: dial-only node.
    pub listen_addrs: Option<Vec<Multiaddr>>,
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
            idle_connection_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl NodeConfig {
    /// Uses `keypair` as the node's identity.
    #[must_use]
    pub fn with_keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// Listens on exactly `addrs` (replacing the defaults; empty: dial
    /// only).
    #[must_use]
    pub fn with_listen_addrs(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.listen_addrs = Some(addrs.into_iter().collect());
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
    /// The swarm's identity is not the one its [`Behaviour`] was made for
    /// ([`Behaviour::new`] takes the swarm's peer id).
    #[error("the behaviour was made for peer {behaviour}, not for the swarm's identity")]
    PeerIdMismatch {
        /// The id given to [`Behaviour::new`].
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
    /// Dropping or firing this ends the swarm task. The host holds it too,
    /// so clients and servers on the node keep it running.
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
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
    pub async fn from_swarm(
        mut swarm: Swarm<Behaviour>,
        runtime: R,
        listen_addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Result<Self, NodeError> {
        let peer_id = *swarm.local_peer_id();
        if swarm.behaviour().local_peer_id() != peer_id {
            return Err(NodeError::PeerIdMismatch {
                behaviour: swarm.behaviour().local_peer_id(),
            });
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let stop = Arc::new(Mutex::new(Some(stop_tx)));
        let host = swarm.behaviour().host(runtime).with_lifeline(stop.clone());

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

        host.runtime()
            .spawn(Box::pin(drive(swarm, stop_rx, listen.clone())));
        let node = Self {
            inner: Arc::new(Inner { host, listen, stop }),
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
    /// listeners; expired ones removed).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.inner.listen).addrs.clone()
    }

    /// The listen addresses with this node's `/p2p/<peer id>` appended:
    /// what another node needs to reach it.
    pub fn addresses(&self) -> Vec<Multiaddr> {
        let me = self.peer_id();
        self.listen_addrs()
            .into_iter()
            .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(me)))
            .collect()
    }

    /// The node's [`Host`] (also reached through `Deref`).
    pub fn host(&self) -> &Host<R> {
        &self.inner.host
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

/// The swarm task: polls the swarm until stopped, keeping the listen
/// addresses current.
async fn drive(
    mut swarm: Swarm<Behaviour>,
    mut stop: oneshot::Receiver<()>,
    listen: Arc<Mutex<ListenState>>,
) {
    let peer = *swarm.local_peer_id();
    tracing::debug!(%peer, "swarm task started");
    loop {
        let event = match future::select(&mut stop, swarm.select_next_some()).await {
            // Shutdown requested, or every Node handle dropped.
            Either::Left(_) => break,
            Either::Right((event, _)) => event,
        };
        on_event(&listen, event);
    }
    tracing::debug!(%peer, "swarm task stopped");
    // Dropping the swarm closes its connections and shuts the behaviour's
    // Controls down.
    drop(swarm);
}

fn on_event(listen: &Mutex<ListenState>, event: SwarmEvent<std::convert::Infallible>) {
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
                tracing::warn!(error = %e, "listener closed");
                state.failures.push(e.to_string());
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
        SwarmEvent::Behaviour(never) => match never {},
        _ => {}
    }
}
