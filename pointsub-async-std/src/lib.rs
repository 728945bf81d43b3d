//! # pointsub-async-std: pointsub on async-std and smol
//!
//! Point-to-point request/response and raw byte streams between peers,
//! addressed by libp2p `PeerId` and protocol name, over a real libp2p swarm
//! (TCP + noise + yamux), for applications on async-std or smol. It is the
//! same library as `pointsub-tokio`, with the same names ([`Node`],
//! [`Server`], [`Client`], [`Listener`], [`Conn`], the configs and errors),
//! and a node on one runtime talks to a node on the other.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pointsub_async_std::{Client, ClientConfig, Node, NodeConfig, Server, ServerConfig};
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
//! // Run `demo()` with `async_std::task::block_on` or `smol::block_on`.
//! ```
//!
//! # async-std or smol
//!
//! async-std is discontinued upstream: its README points users to smol.
//! This crate serves both. The two share the `async-io` reactor for sockets
//! and timers, so the transport ([`transport`]) and the timers work under
//! either `block_on`, and the node's background tasks run on async-std's
//! global executor, which has threads of its own and so makes progress
//! under smol as well ([`AsyncStdRuntime`]; hand it a spawner to use an
//! executor of your own instead). Nothing needs to be "entered" first.
//!
//! # Which crate
//!
//! Pick `pointsub-tokio` on tokio (it also offers QUIC); pick this one on
//! async-std or smol. Requests, streams and the wire format are the same,
//! so nodes of both kinds can serve each other.
//!
//! # Inside your own libp2p application
//!
//! An application that already runs a libp2p swarm on async-std or smol
//! puts a [`Behaviour`] in its own `#[derive(NetworkBehaviour)]` struct,
//! builds its transport with [`build_transport`] (passing the behaviour's
//! `control.yamux_config()`) and its swarm config with
//! `control.swarm_config(..)`, keeps polling the swarm itself, and builds
//! clients, servers and raw connections on `behaviour.host(AsyncStdRuntime::new())`,
//! a [`Host`]. `examples/smol_own_swarm.rs` does it under smol.
//!
//! # Layout
//!
//! This crate holds only what is specific to its runtime:
//!
//! * [`rt`]: [`AsyncStdRuntime`], the `pointsub_tokio::Runtime` (spawn,
//!   sleep) on async-std / smol;
//! * [`transport`]: a libp2p TCP transport over `async-io` (libp2p itself
//!   no longer ships one), and [`build_swarm`] stacking noise and yamux on
//!   it;
//! * [`node`]: the [`NodeRuntime`] implementation behind `Node::new` and
//!   `Node::with_runtime`, which builds that swarm and starts a node.
//!
//! Everything else (the libp2p behaviour, the swarm task, the client,
//! server and raw-stream drivers) is the runtime-neutral glue of
//! `pointsub-tokio` (compiled without tokio), and every decision (framing,
//! compression, limits, retries, pooling, admission, routing) is made by
//! the sans-IO core, [`pointsub_proto`](proto). The types below are that
//! glue with [`AsyncStdRuntime`] filled in.
//!
//! [`NodeConfig`] is shared with `pointsub-tokio`; only its default listen
//! addresses differ (no QUIC here). To run the node's tasks on an executor
//! of your own, build the node with
//! `Node::with_runtime(config, AsyncStdRuntime::with_spawner(..))`.
#![deny(missing_docs)]

pub mod node;
pub mod rt;
pub mod transport;

pub use pointsub_tokio::{
    AlreadyRegistered, Behaviour, ClientConfig, ClientMetrics, Closed, ClosestOptions, ConfigError,
    ConnError, Connect, ConnectionInfo, ConnectionPath, Control, DEFAULT_CONN_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, DialError, HandlerError,
    HolePunchOutcome, IncomingStreams, Multiaddr, NOT_POLLED_TIMEOUT, NatStatus, NodeConfig,
    NodeError, NodeEvent, NodeRuntime, NodeShutDown, OpenStream, OpenStreamError,
    OpenStreamWithPath, PeerConnection, PeerId, RelayLimits, RequestError, Response, Runtime,
    RuntimeExecutor, ServerConfig, ServerMetrics, StartError, Stream, StreamLimits, StreamProtocol,
    SwarmObserver, WithSwarmError, libp2p, net, proto,
};
pub use rt::AsyncStdRuntime;
pub use transport::{BuildError, TcpTransport, build_swarm, build_transport};

/// pointsub's handle on a swarm that runs its [`Behaviour`], with
/// pointsub's tasks on async-std / smol: what [`Client`], [`Server`],
/// [`Listener`] and [`Conn`] are built from. Every [`Node`] is one (`&node`);
/// an application with a swarm of its own makes one with
/// `behaviour.host(AsyncStdRuntime::new())` (see
/// [`pointsub_tokio::host`] and `examples/smol_own_swarm.rs`).
pub type Host = pointsub_tokio::generic::Host<AsyncStdRuntime>;

/// A running libp2p host on async-std / smol: identity, listen addresses,
/// connections, raw streams (`listen` and `dial`, which it has as a
/// [`Host`]: [`Host::listen`](pointsub_tokio::generic::Host::listen),
/// [`Host::dial`](pointsub_tokio::generic::Host::dial)). Build one with
/// `Node::new(config)` (or `Node::with_runtime`).
pub type Node = pointsub_tokio::generic::Node<AsyncStdRuntime>;

/// Sends requests to peers, or to the closest server node of a protocol
/// (see [`pointsub_tokio::generic::Client`]).
pub type Client = pointsub_tokio::generic::Client<AsyncStdRuntime>;

/// Answers requests with one handler per protocol (see
/// [`pointsub_tokio::generic::Server`]).
pub type Server = pointsub_tokio::generic::Server<AsyncStdRuntime>;

/// Accepts inbound [`Conn`]s for one protocol (see
/// [`pointsub_tokio::generic::Listener`]).
pub type Listener = pointsub_tokio::generic::Listener<AsyncStdRuntime>;

/// A raw byte stream to a peer, with `futures`' `AsyncRead` and `AsyncWrite`
/// (see [`pointsub_tokio::generic::Conn`]).
pub type Conn = pointsub_tokio::generic::Conn<AsyncStdRuntime>;
