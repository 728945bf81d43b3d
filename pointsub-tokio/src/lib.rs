//! # pointsub-tokio: pointsub over real libp2p
//!
//! Point-to-point request/response and raw byte streams between peers,
//! addressed by libp2p `PeerId` and protocol name, over a libp2p swarm
//! (TCP + noise + yamux, and QUIC). Every decision (framing, compression,
//! limits, retries, pooling, admission, routing) is made by the sans-IO
//! core, [`pointsub_proto`]; this crate only moves bytes and time.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pointsub_tokio::{Client, ClientConfig, Node, NodeConfig, Server, ServerConfig};
//!
//! let server_node = Node::new(NodeConfig::default()).await?;
//! let server = Server::new(&server_node, ServerConfig::default())?;
//! server.start("/echo/1.0.0", |_peer, body| async move { Ok::<_, String>(body) })?;
//!
//! let client_node = Node::new(NodeConfig::default()).await?;
//! for addr in server_node.listen_addrs() {
//!     client_node.add_address(server_node.peer_id(), addr);
//! }
//! let client = Client::new(&client_node, ClientConfig::default())?;
//! let reply = client
//!     .send(server_node.peer_id(), "/echo/1.0.0", "hello".into())
//!     .await?;
//! assert_eq!(&reply[..], b"hello");
//! # Ok(()) }
//! ```
//!
//! # Inside your own libp2p application
//!
//! A [`Node`] owns its swarm. An application that already runs one puts a
//! [`Behaviour`] in its own `#[derive(NetworkBehaviour)]` struct, keeps
//! polling its swarm, and builds clients, servers and raw connections on
//! the behaviour's [`Host`](generic::Host): see [`host`], and
//! `examples/own_swarm.rs`.
//!
//! # Layout
//!
//! The glue is runtime-neutral (its files are under `src/glue/`; its
//! types are in [`generic`]), parameterised by a [`Runtime`]: [`behaviour`] (the libp2p plumbing), [`host`] (the
//! behaviour's handle plus a runtime), [`node`] (a swarm of its own
//! driven by a task), [`client`], [`server`] and [`conn`]. It compiles
//! without tokio (`default-features = false`), which is how
//! `pointsub-async-std` reuses it. The `tokio-runtime` feature (on by
//! default) adds [`TokioRuntime`] and the top-level tokio types
//! ([`Node`], [`Client`], [`Server`], [`Listener`], [`Conn`]); its code
//! is `src/tokio_rt.rs`. The `pointsub` binary is under `src/bin/pointsub/`,
//! and its bench harness is the `bench` module, behind the `bench` feature
//! (enabled by the default `cli` feature).
//!
//! The `metrics` feature (prometheus-client 0.25 only) adds the `metrics`
//! module: pointsub's per-protocol request metrics in a Prometheus
//! registry, the same one libp2p-metrics fills (README, "Metrics").
#![deny(missing_docs)]

#[cfg(feature = "bench")]
pub mod bench;
mod glue;
#[cfg(feature = "metrics")]
pub mod metrics;
pub use glue::{behaviour, client, coalesce, conn, discovery, host, net, node, rt, server};
#[cfg(feature = "tokio-runtime")]
mod tokio_rt;

/// The runtime-neutral types, generic over the [`Runtime`] they run on.
///
/// Runtime crates alias these with their runtime filled in (as this crate
/// does at its root with [`TokioRuntime`]).
pub mod generic {
    pub use crate::client::Client;
    pub use crate::conn::{Conn, Listener};
    pub use crate::host::Host;
    pub use crate::node::Node;
    pub use crate::server::Server;
}

pub use behaviour::{
    AlreadyRegistered, Behaviour, Closed, Connect, ConnectionPath, Control, DialError,
    IncomingStreams, OpenStream, OpenStreamError, OpenStreamWithPath, PeerProtocols,
    RemoteProtocolsWatch, StreamLimits,
};
pub use client::{ClosestOptions, RequestErrorExt, Response};
pub use conn::{ConnError, DEFAULT_CONN_TIMEOUT};
pub use host::NOT_POLLED_TIMEOUT;
pub use libp2p::{self, Multiaddr, PeerId, Stream, StreamProtocol};
pub use net::{HolePunchOutcome, NatStatus, NodeEvent, PeerConnection, RelayLimits};
pub use node::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, NodeConfig, NodeError, NodeRuntime,
    NodeShutDown, SwarmObserver, WithSwarmError,
};
pub use pointsub_proto::{
    self as proto, ClientConfig, ClientMetrics, ClientStats, ConfigError, NodeSource, RequestError,
    ServerConfig, ServerMetrics, ServerStats,
};
pub use rt::{Runtime, RuntimeExecutor};
pub use server::{ConnectionInfo, HandlerError, StartError};
#[cfg(feature = "tokio-runtime")]
pub use tokio_rt::{Client, Conn, Host, Listener, Node, Server, TokioRuntime};
