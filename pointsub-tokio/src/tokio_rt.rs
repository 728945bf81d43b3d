//! [`Runtime`] on tokio, and the tokio node (feature `tokio-runtime`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, SwarmBuilder, noise, tcp};

use crate::behaviour::{DEFAULT_OPEN_TIMEOUT, StreamBehaviour};
use crate::node::{MAX_STREAMS_PER_CONNECTION, NodeError, tune_swarm_config, yamux_config};
use crate::rt::{BoxSleep, BoxTask, Runtime};

/// A [`Runtime`] backed by a tokio runtime handle.
///
/// Timers and the clock go through `tokio::time`, so a test that pauses
/// tokio's clock sees the node's timers follow it.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// Wraps a tokio runtime handle.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        Self { handle }
    }

    /// The runtime the caller is running on, or an error when called
    /// outside a tokio runtime.
    pub fn try_current() -> Result<Self, tokio::runtime::TryCurrentError> {
        tokio::runtime::Handle::try_current().map(Self::new)
    }

    /// The underlying tokio handle.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxTask) {
        // The JoinHandle is dropped: the task is detached.
        drop(self.handle.spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxSleep {
        // tokio timers must be created inside the runtime's context.
        let _guard = self.handle.enter();
        Box::pin(tokio::time::sleep(duration))
    }

    fn now(&self) -> Instant {
        let _guard = self.handle.enter();
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxSleep {
        let _guard = self.handle.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

impl libp2p::swarm::Executor for TokioRuntime {
    fn exec(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.spawn(future);
    }
}

// ---------------------------------------------------------------------------
// The tokio node
// ---------------------------------------------------------------------------

/// A [`Node`](crate::generic::Node) on tokio, over TCP (noise + yamux) and QUIC.
pub type Node = crate::node::Node<TokioRuntime>;

/// A [`Client`](crate::generic::Client) on tokio.
pub type Client = crate::client::Client<TokioRuntime>;

/// A [`Server`](crate::generic::Server) on tokio.
pub type Server = crate::server::Server<TokioRuntime>;

/// A [`Listener`](crate::generic::Listener) on tokio.
pub type Listener = crate::conn::Listener<TokioRuntime>;

/// A [`Conn`](crate::generic::Conn) on tokio: implements tokio's `AsyncRead` and `AsyncWrite`.
pub type Conn = crate::conn::Conn<TokioRuntime>;

/// Default idle connection timeout: 5 minutes.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Default bound on establishing a connection: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to build a tokio [`Node`]. The default needs no configuration: a
/// fresh ed25519 identity, loopback TCP and QUIC on ephemeral ports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node's identity; `None` generates a fresh ed25519 key.
    pub keypair: Option<Keypair>,
    /// Where to listen. Default: `/ip4/127.0.0.1/tcp/0` and
    /// `/ip4/127.0.0.1/udp/0/quic-v1`. Empty: dial-only node.
    pub listen_addrs: Vec<Multiaddr>,
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
        let loopback = Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST));
        Self {
            keypair: None,
            listen_addrs: vec![
                loopback.clone().with(Protocol::Tcp(0)),
                loopback.with(Protocol::Udp(0)).with(Protocol::QuicV1),
            ],
            idle_connection_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl NodeConfig {
    /// Uses `keypair` as the node's identity.
    pub fn with_keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// Listens on exactly `addrs` (replacing the defaults).
    pub fn with_listen_addrs(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.listen_addrs = addrs.into_iter().collect();
        self
    }

    /// Sets the idle connection timeout.
    pub fn with_idle_connection_timeout(mut self, timeout: Duration) -> Self {
        self.idle_connection_timeout = timeout;
        self
    }

    /// Sets the stream open timeout.
    pub fn with_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Sets the connection establishment timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

impl crate::node::Node<TokioRuntime> {
    /// Builds the swarm (TCP with nodelay + noise + yamux, and QUIC) on the
    /// current tokio runtime and starts the node (see [`Node::from_swarm`]).
    pub async fn new(config: NodeConfig) -> Result<Self, NodeError> {
        let runtime = TokioRuntime::try_current().map_err(|e| NodeError::Runtime(e.to_string()))?;
        let keypair = config.keypair.unwrap_or_else(Keypair::generate_ed25519);
        let behaviour = StreamBehaviour::new().with_open_timeout(config.open_timeout);
        let idle = config.idle_connection_timeout;
        let stream_limit = u32::try_from(MAX_STREAMS_PER_CONNECTION).unwrap_or(u32::MAX);
        let swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux_config,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_quic_config(|mut quic| {
                quic.max_concurrent_stream_limit = stream_limit;
                quic
            })
            .with_behaviour(|_| behaviour)
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|swarm| tune_swarm_config(swarm, idle))
            .with_connection_timeout(config.connect_timeout)
            .build();
        Self::from_swarm(swarm, runtime, config.listen_addrs).await
    }
}
