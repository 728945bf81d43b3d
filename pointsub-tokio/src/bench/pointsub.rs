//! pointsub on tokio: a server node with an echo handler and a client node,
//! over TCP (nodelay) + noise + yamux on loopback, one connection.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use pointsub_tokio::node::MAX_STREAMS_PER_CONNECTION;
use pointsub_tokio::{
    Client, ClientConfig, Multiaddr, Node, NodeConfig, PeerId, Server, ServerConfig,
};

use super::stats::Failure;
use super::{Case, Instance, System};
use crate::BoxError;

const PROTOCOL: &str = "/pointsub/bench-echo/1.0.0";

/// The registry entry.
pub const SYSTEM: System = System {
    name: "pointsub-tokio",
    describe,
    start: |case| start(case).boxed(),
};

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

fn describe() -> String {
    let c = client_config(super::case(super::SMALL, 10_000));
    let s = server_config();
    format!(
        "pointsub_tokio::{{Node, Client, Server}}, tcp nodelay + noise + yamux ({} streams/conn), \
         echo handler.\n    client: ClientConfig::default() (compression on, {} in flight/stream, \
         pool timeout {:?}, {} retries), max_total_conns = max_idle_conns = \
         clamp(in_flight/{}, {}, {MAX_CLIENT_STREAMS}) ({} at 10,000 in flight).\n    \
         server: ServerConfig::default() with max_concurrent_conns {}, max_concurrent_limit {}, \
         max_per_peer {}, max_streams_per_peer {}.",
        MAX_STREAMS_PER_CONNECTION,
        c.max_inflight_per_stream,
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

struct Pointsub {
    server_node: Node,
    client_node: Node,
    server: Server,
    client: Client,
    server_peer: PeerId,
}

async fn start(case: Case) -> Result<Arc<dyn Instance>, BoxError> {
    let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let server_node = Node::new(NodeConfig::default().with_listen_addrs([tcp])).await?;
    let client_node = Node::new(NodeConfig::default().with_listen_addrs([])).await?;
    let server_peer = server_node.peer_id();
    for addr in server_node.listen_addrs() {
        client_node.add_address(server_peer, addr);
    }
    let server = Server::new(&server_node, server_config())?;
    server.start(PROTOCOL, |_peer, body: Bytes| async move {
        Ok::<_, String>(body)
    })?;
    let client = Client::new(&client_node, client_config(case))?;
    let instance = Pointsub {
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
    Ok(Arc::new(instance))
}

impl Instance for Pointsub {
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
            self.server
                .stop_with_timeout(std::time::Duration::from_secs(1))
                .await;
            self.client_node.shutdown();
            self.server_node.shutdown();
        }
        .boxed()
    }
}
