//! [`Runtime`] on tokio, and the tokio node (feature `tokio-runtime`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, SwarmBuilder, noise, tcp};

use crate::behaviour::Behaviour;
use crate::node::{MAX_STREAMS_PER_CONNECTION, NodeConfig, NodeError, NodeRuntime};
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

/// A [`Host`](crate::generic::Host) on tokio: a [`Behaviour`] in a swarm
/// (a [`Node`]'s or the application's own) with pointsub's tasks on tokio.
pub type Host = crate::host::Host<TokioRuntime>;

/// A [`Listener`](crate::generic::Listener) on tokio.
pub type Listener = crate::conn::Listener<TokioRuntime>;

/// A [`Conn`](crate::generic::Conn) on tokio: implements tokio's `AsyncRead` and `AsyncWrite`.
pub type Conn = crate::conn::Conn<TokioRuntime>;

impl NodeRuntime for TokioRuntime {
    fn for_new_node() -> Result<Self, NodeError> {
        TokioRuntime::try_current().map_err(|e| NodeError::Runtime(e.to_string()))
    }

    /// Builds the swarm (TCP with nodelay + noise + yamux, and QUIC) and
    /// starts the node. Listens on loopback TCP and QUIC unless the config
    /// says otherwise.
    async fn start_node(self, config: NodeConfig) -> Result<Node, NodeError> {
        let loopback = Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST));
        let listen = config.listen_addrs.clone().unwrap_or_else(|| {
            vec![
                loopback.clone().with(Protocol::Tcp(0)),
                loopback.with(Protocol::Udp(0)).with(Protocol::QuicV1),
            ]
        });
        let keypair = config.keypair.unwrap_or_else(Keypair::generate_ed25519);
        let behaviour =
            Behaviour::new(keypair.public().to_peer_id()).with_open_timeout(config.open_timeout);
        let control = behaviour.control();
        let idle = config.idle_connection_timeout;
        let stream_limit = u32::try_from(MAX_STREAMS_PER_CONNECTION).unwrap_or(u32::MAX);
        let swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                || control.yamux_config(),
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_quic_config(|mut quic| {
                quic.max_concurrent_stream_limit = stream_limit;
                quic
            })
            .with_behaviour(|_| behaviour)
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|swarm| {
                control
                    .swarm_config(swarm)
                    .with_idle_connection_timeout(idle)
            })
            .with_connection_timeout(config.connect_timeout)
            .build();
        Node::from_swarm(swarm, self, listen).await
    }
}
