//! [`Runtime`] on tokio, and the tokio node (feature `tokio-runtime`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, SwarmBuilder, tcp};

use crate::behaviour::Behaviour;
use crate::coalesce;
use crate::net::NetBehaviour;
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

/// A [`Node`](crate::generic::Node) on tokio, over TCP (noise, its flushes
/// [coalesced](crate::coalesce), + yamux) and QUIC.
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

    /// Builds the swarm and starts the node: TCP (nodelay, port reuse for
    /// hole punching) + noise ([`coalesce::noise`]) + yamux, QUIC, `/dns` through libp2p-dns, and
    /// the relay client transport, under a [`NetBehaviour`] for `config`.
    /// Listens on loopback TCP and QUIC unless the config says otherwise,
    /// plus a `/p2p-circuit` listener per relay in the config.
    ///
    /// Port reuse: libp2p-tcp 0.45 chooses it per dial (`PortUse::Reuse`,
    /// the swarm's default for dials by peer id, DCUtR's included): an
    /// outgoing TCP connection leaves from a listening port, so the address
    /// a NAT maps it to is one a hole punch can reach.
    async fn start_node(self, config: NodeConfig) -> Result<Node, NodeError> {
        let listen = config.all_listen_addrs(default_listen_addrs);
        let keypair = config
            .keypair
            .clone()
            .unwrap_or_else(Keypair::generate_ed25519);
        let behaviour =
            Behaviour::new(keypair.public().to_peer_id()).with_open_timeout(config.open_timeout);
        let control = behaviour.control();
        let idle = config.idle_connection_timeout;
        let stream_limit = u32::try_from(MAX_STREAMS_PER_CONNECTION).unwrap_or(u32::MAX);
        let (dns_config, dns_opts) = dns_resolver();
        let swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                coalesce::noise,
                || control.yamux_config(),
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_quic_config(|mut quic| {
                quic.max_concurrent_stream_limit = stream_limit;
                quic
            })
            .with_dns_config(dns_config, dns_opts)
            .with_relay_client(coalesce::noise, || control.yamux_config())
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_behaviour(|key, relay_client| {
                let mut net = NetBehaviour::new(&key.public(), relay_client, behaviour, &config);
                if config.mdns {
                    net.mdns = mdns(key.public().to_peer_id())?;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(net)
            })
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|swarm| {
                control
                    .swarm_config(swarm)
                    .with_idle_connection_timeout(idle)
            })
            .with_connection_timeout(config.connect_timeout)
            .build();
        let observer = config.swarm_observer.clone().map(|o| o.0);
        let node = Node::from_swarm_observed(swarm, self, listen, observer).await?;
        for addr in config.external_addrs {
            // The node was just started: it runs.
            let _ = node.add_external_address(addr);
        }
        Ok(node)
    }
}

/// The tokio node's listen addresses when the config names none: TCP and
/// QUIC on loopback, or on every IPv4 interface on `all_interfaces`' port.
fn default_listen_addrs(all_interfaces: Option<u16>) -> Vec<Multiaddr> {
    let (ip, port) = match all_interfaces {
        Some(port) => (Ipv4Addr::UNSPECIFIED, port),
        None => (Ipv4Addr::LOCALHOST, 0),
    };
    let base = Multiaddr::empty().with(Protocol::Ip4(ip));
    vec![
        base.clone().with(Protocol::Tcp(port)),
        base.with(Protocol::Udp(port)).with(Protocol::QuicV1),
    ]
}

/// The resolver for `/dns` addresses: the system's (`/etc/resolv.conf` on
/// Unix) when it can be read, else a fixed public one (Cloudflare's), so
/// that a machine or container without a resolver configuration still
/// starts nodes; only `/dns` dials need it.
fn dns_resolver() -> (
    hickory_resolver::config::ResolverConfig,
    hickory_resolver::config::ResolverOpts,
) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok(system) => system,
        Err(e) => {
            tracing::debug!(error = %e, "no system DNS configuration; /dns uses Cloudflare's resolvers");
            (
                hickory_resolver::config::ResolverConfig::udp_and_tcp(
                    &hickory_resolver::config::CLOUDFLARE,
                ),
                hickory_resolver::config::ResolverOpts::default(),
            )
        }
    }
}

/// The node's mDNS behaviour, on (feature `mdns`).
#[cfg(feature = "mdns")]
fn mdns(
    peer: libp2p::PeerId,
) -> Result<libp2p::swarm::behaviour::toggle::Toggle<crate::net::Mdns>, std::io::Error> {
    let mdns = libp2p::mdns::tokio::Behaviour::new(libp2p::mdns::Config::default(), peer)?;
    Ok(Some(mdns).into())
}

/// Without the `mdns` feature: off, with a warning.
#[cfg(not(feature = "mdns"))]
fn mdns(
    _: libp2p::PeerId,
) -> Result<libp2p::swarm::behaviour::toggle::Toggle<crate::net::Mdns>, std::io::Error> {
    tracing::warn!("mDNS asked for, but pointsub-tokio was built without its `mdns` feature");
    Ok(None.into())
}
