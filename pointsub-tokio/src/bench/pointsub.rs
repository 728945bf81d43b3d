//! pointsub: a server node with an echo handler and a client node, over TCP
//! (nodelay) + noise + yamux on loopback, one connection; or, as
//! `pointsub-quic`, over QUIC (libp2p-tls inside, the same cipher).
//!
//! The same code benches every adapter: it is generic over the node's
//! runtime ([`Flavour`]: a [`NodeRuntime`] with a name), and [`system`]
//! makes the registry entry of one. [`SYSTEM`] is pointsub-tokio's;
//! pointsub-async-std's `benches/compare.rs` adds its own the same way.
//!
//! The nodes (their swarms, connection tasks, stream drivers and the echo
//! handler) run on the flavour's runtime; the load generator's tasks, which
//! await [`Client::send`](crate::generic::Client::send), stay on
//! the harness's tokio runtime: the client's futures do not care which
//! executor polls them.

use std::sync::Arc;
use std::time::Duration;

use crate::generic::{Client, Node, Server};
use crate::node::MAX_STREAMS_PER_CONNECTION;
use crate::{ClientConfig, Multiaddr, NodeConfig, NodeRuntime, PeerId, ServerConfig, TokioRuntime};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::stats::Failure;
use super::{Case, Instance, StartFn, System};
use crate::bench::BoxError;

const PROTOCOL: &str = "/pointsub/bench-echo/1.0.0";

/// A pointsub adapter to bench: the runtime its nodes are built on
/// (`Node::<Self::Runtime>::new`), with the name and description of its
/// system. Implemented on a marker type of the bench's own, so that a
/// crate other than this one can name a runtime of a third crate.
pub trait Flavour: Send + Sync + 'static {
    /// The runtime the system's nodes run on.
    type Runtime: NodeRuntime;

    /// The system's name on the command line and in the table.
    const SYSTEM_NAME: &'static str;

    /// The adapter's types and transport, for the output header.
    fn api() -> &'static str;
}

/// pointsub-tokio's [`Flavour`]: nodes on [`TokioRuntime`].
#[derive(Debug)]
pub struct Tokio;

impl Flavour for Tokio {
    type Runtime = TokioRuntime;
    const SYSTEM_NAME: &'static str = "pointsub-tokio";

    fn api() -> &'static str {
        "pointsub_tokio::{Node, Client, Server} (TokioRuntime: node tasks on the harness's tokio \
         runtime), libp2p-tcp (tokio), nodelay"
    }
}

/// The registry entry of pointsub on runtime `R`.
pub const fn system<R: Flavour>() -> System {
    System {
        name: R::SYSTEM_NAME,
        describe: describe::<R>,
        start: start::<R> as StartFn,
    }
}

/// pointsub-tokio's registry entry.
pub const SYSTEM: System = system::<Tokio>();

/// The name of pointsub-tokio over QUIC.
pub const QUIC_NAME: &str = "pointsub-quic";

/// pointsub-tokio over QUIC: the same nodes, client and server, with the
/// server listening (and the client dialing) on QUIC only.
pub const QUIC_SYSTEM: System = System {
    name: QUIC_NAME,
    describe: describe_quic,
    start: start_quic as StartFn,
};

fn describe_quic() -> String {
    "pointsub-tokio over QUIC on loopback (libp2p-quic, TLS 1.3 with ChaCha20-Poly1305 first),      one connection; client and server configured as pointsub-tokio."
        .to_owned()
}

fn start_quic(case: Case) -> BoxFuture<'static, Result<Arc<dyn Instance>, BoxError>> {
    start_on::<Tokio>(case, "/ip4/127.0.0.1/udp/0/quic-v1")
}

/// Most pooled streams the client may hold: room below the yamux
/// per-connection limit, which closes the connection when exceeded.
const MAX_CLIENT_STREAMS: usize = MAX_STREAMS_PER_CONNECTION * 3 / 4;

/// The client configuration for `case`: defaults, except a stream pool big
/// enough that `in_flight` requests need not queue for a stream.
fn client_config(case: Case) -> ClientConfig {
    let per_stream = ClientConfig::default().max_inflight_per_stream;
    let streams = case
        .in_flight
        .div_ceil(per_stream)
        .clamp(ClientConfig::default().max_total_conns, MAX_CLIENT_STREAMS);
    ClientConfig::default()
        .with_max_total_conns(streams)
        .with_max_idle_conns(streams)
}

/// The server configuration: defaults, with admission room for 10,000
/// requests in flight from one peer.
fn server_config() -> ServerConfig {
    ServerConfig::default()
        .with_max_concurrent_conns(10_000)
        .with_max_concurrent_limit(20_000)
        .with_max_per_peer(20_000)
        .with_max_streams_per_peer(MAX_STREAMS_PER_CONNECTION)
}

fn describe<R: Flavour>() -> String {
    let c = client_config(super::case(super::SMALL, 10_000));
    let s = server_config();
    format!(
        "{} + noise (coalesced: flushes, whole-message reads) + yamux ({} streams/conn), echo handler; load generator on tokio.\n    \
         client: ClientConfig::default() (compression on, {} in flight/stream, \
         spread over {} streams from {} in flight/stream, pool timeout {:?}, {} retries), max_total_conns = max_idle_conns = \
         clamp(in_flight/{}, {}, {MAX_CLIENT_STREAMS}) ({} at 10,000 in flight).\n    \
         server: ServerConfig::default() with max_concurrent_conns {}, max_concurrent_limit {}, \
         max_per_peer {}, max_streams_per_peer {}.",
        R::api(),
        MAX_STREAMS_PER_CONNECTION,
        c.max_inflight_per_stream,
        c.spread_streams,
        c.spread_below(),
        c.pool_timeout,
        c.max_retries,
        c.max_inflight_per_stream,
        ClientConfig::default().max_total_conns,
        c.max_total_conns,
        s.max_concurrent_conns,
        s.max_concurrent_limit,
        s.max_per_peer,
        s.max_streams_per_peer,
    )
}

struct Pointsub<R: Flavour> {
    server_node: Node<R::Runtime>,
    client_node: Node<R::Runtime>,
    server: Server<R::Runtime>,
    client: Client<R::Runtime>,
    server_peer: PeerId,
}

fn start<R: Flavour>(case: Case) -> BoxFuture<'static, Result<Arc<dyn Instance>, BoxError>> {
    start_on::<R>(case, "/ip4/127.0.0.1/tcp/0")
}

/// Starts the nodes with the server listening on `listen` only.
fn start_on<R: Flavour>(
    case: Case,
    listen: &'static str,
) -> BoxFuture<'static, Result<Arc<dyn Instance>, BoxError>> {
    async move {
        let listen: Multiaddr = listen.parse()?;
        let server_node =
            Node::<R::Runtime>::new(NodeConfig::default().with_listen_addrs([listen])).await?;
        let client_node =
            Node::<R::Runtime>::new(NodeConfig::default().with_listen_addrs([])).await?;
        let server_peer = server_node.peer_id();
        for addr in server_node.listen_addrs() {
            client_node.add_address(server_peer, addr);
        }
        let server = Server::new(&server_node, server_config())?;
        server.start(PROTOCOL, |_peer, body: Bytes| async move {
            Ok::<_, String>(body)
        })?;
        let client = Client::new(&client_node, client_config(case))?;
        let instance = Pointsub::<R> {
            server_node,
            client_node,
            server,
            client,
            server_peer,
        };
        // Connect before the clock starts.
        if let Err(e) = instance
            .client
            .send(server_peer, PROTOCOL, Bytes::from_static(b"hello"))
            .await
        {
            instance.shutdown().await;
            return Err(format!("first request failed: {e}").into());
        }
        Ok(Arc::new(instance) as Arc<dyn Instance>)
    }
    .boxed()
}

impl<R: Flavour> Instance for Pointsub<R> {
    fn request(&self, _slot: usize, body: Bytes) -> BoxFuture<'_, Result<Bytes, Failure>> {
        async move {
            self.client
                .send(self.server_peer, PROTOCOL, body)
                .await
                .map_err(|e| Failure::from(e.kind()))
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            self.client.close();
            self.server.stop_with_timeout(Duration::from_secs(1)).await;
            self.client_node.shutdown();
            self.server_node.shutdown();
        }
        .boxed()
    }
}
