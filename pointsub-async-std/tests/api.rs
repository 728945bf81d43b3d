//! The functional tests of the public API, between real nodes on loopback.
//!
//! Each test body is written once and run twice by [`on_both!`]: under
//! `async_std::task::block_on` and under `smol::block_on`. Bodies use no
//! runtime-specific spawning (concurrency comes from joining futures), so
//! what differs between the two runs is only who blocks the test thread.
//! Every run is bounded by [`common::within`].

mod common;

use std::collections::BTreeSet;
use std::io;
use std::time::Duration;

use async_io::Timer;
use bytes::Bytes;
use common::{client_config, exchange, pattern};
use futures::future;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use pointsub_async_std::proto::error::Side;
use pointsub_async_std::{
    Client, ClientConfig, ClosestOptions, Node, NodeConfig, RequestError, Server, ServerConfig,
};

/// `mod $name { #[test] fn async_std; #[test] fn smol }`, both running the
/// async fn `$name` of this file.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn async_std() {
                async_std::task::block_on(super::common::within(super::$name()));
            }

            #[test]
            fn smol() {
                smol::block_on(super::common::within(super::$name()));
            }
        }
    )*};
}

on_both!(
    echo,
    three_protocols_on_one_server,
    self_send_is_refused,
    oversize_both_ways,
    handler_error_reaches_the_caller,
    send_closest_fails_over_when_a_server_stops,
    connection_info_after_traffic,
    two_hundred_requests_in_flight,
    conn_echo_a_few_mib,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn node() -> Node {
    Node::new(NodeConfig::default()).await.expect("node")
}

/// `from` learns every listen address of `to`.
fn introduce(from: &Node, to: &Node) {
    for addr in to.listen_addrs() {
        from.add_address(to.peer_id(), addr);
    }
}

/// A server node with a server, and a client node that knows its address.
async fn server_and_client(server: ServerConfig, client: ClientConfig) -> (Server, Client) {
    let (server_node, client_node) = (node().await, node().await);
    introduce(&client_node, &server_node);
    let server = Server::new(&server_node, server).expect("server");
    let client = Client::new(&client_node, client).expect("client");
    (server, client)
}

fn echo_handler(server: &Server, protocol: &str) -> Result<(), pointsub_async_std::StartError> {
    server.start(protocol, |_peer, body| async move { Ok::<_, String>(body) })
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

async fn echo() {
    let (server, client) = server_and_client(ServerConfig::default(), client_config()).await;
    echo_handler(&server, "/echo/1").expect("start");
    let peer = server.host().peer_id();
    let reply = client
        .send(peer, "/echo/1", Bytes::from_static(b"hello"))
        .await
        .expect("echo");
    assert_eq!(&reply[..], b"hello");

    // A body large enough to be compressed comes back intact.
    let big = Bytes::from(b"pointsub ".repeat(10_000));
    let reply = client
        .send_with_timeout(peer, "/echo/1", big.clone(), Duration::from_secs(10))
        .await
        .expect("big echo");
    assert_eq!(reply, big);
    assert_eq!(client.metrics().succeeded, 2);
    server.stop().await;
    assert!(server.is_stopped());
}

async fn three_protocols_on_one_server() {
    let (server, client) = server_and_client(ServerConfig::default(), client_config()).await;
    for name in ["a", "b", "c"] {
        server
            .start(
                &format!("/multi/{name}/1"),
                move |_peer, body: Bytes| async move {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&body);
                    Ok::<_, String>(Bytes::from(reply))
                },
            )
            .expect("start");
    }
    // Serving a protocol twice is refused.
    assert_eq!(
        echo_handler(&server, "/multi/a/1"),
        Err(pointsub_async_std::StartError::AlreadyRegistered(
            "/multi/a/1".into()
        ))
    );
    let peer = server.host().peer_id();
    let replies = future::join_all(["a", "b", "c"].map(|name| {
        let client = client.clone();
        async move {
            client
                .send(peer, &format!("/multi/{name}/1"), Bytes::from_static(b"x"))
                .await
        }
    }))
    .await;
    for (name, reply) in ["a", "b", "c"].iter().zip(replies) {
        assert_eq!(reply.expect("reply"), format!("{name}:x").as_bytes());
    }
    // A protocol nobody serves is a final error.
    let err = client
        .send(peer, "/multi/d/1", Bytes::from_static(b"x"))
        .await
        .expect_err("not served");
    assert!(
        matches!(err, RequestError::UnsupportedProtocol(_)),
        "{err:?}"
    );
}

async fn self_send_is_refused() {
    let node = node().await;
    let server = Server::new(&node, ServerConfig::default()).expect("server");
    echo_handler(&server, "/echo/1").expect("start");
    let client = Client::new(&node, client_config()).expect("client");
    let err = client
        .send(node.peer_id(), "/echo/1", Bytes::from_static(b"me"))
        .await
        .expect_err("self-send");
    assert_eq!(err, RequestError::SelfSend);
    assert!(!err.is_retryable());
}

async fn oversize_both_ways() {
    const LIMIT: usize = 1024;
    // Outbound: the client's own limit refuses the request before sending.
    let (server, client) = server_and_client(
        ServerConfig::default(),
        client_config().with_max_block_size(LIMIT),
    )
    .await;
    server
        .start("/big/1", |_peer, body: Bytes| async move {
            // Answers 4 times the request's size.
            Ok::<_, String>(Bytes::from(body.repeat(4)))
        })
        .expect("start");
    let peer = server.host().peer_id();
    let err = client
        .send(peer, "/big/1", Bytes::from(vec![1u8; LIMIT + 1]))
        .await
        .expect_err("request over the client's limit");
    assert!(
        matches!(err, RequestError::Oversize { size, limit: LIMIT, side: Side::Local } if size == LIMIT + 1),
        "{err:?}"
    );
    // Within the limit both ways: fine.
    let reply = client
        .send(peer, "/big/1", Bytes::from(vec![2u8; LIMIT / 4]))
        .await
        .expect("fits");
    assert_eq!(reply.len(), LIMIT);
    // A response over the client's limit is refused as it arrives.
    let err = client
        .send(peer, "/big/1", Bytes::from(vec![3u8; LIMIT]))
        .await
        .expect_err("response over the client's limit");
    assert!(matches!(err, RequestError::Oversize { .. }), "{err:?}");
    assert!(!err.is_retryable());

    // Inbound: the server's limit refuses a request the client may send.
    let (server, client) = server_and_client(
        ServerConfig::default().with_max_block_size(LIMIT),
        client_config(),
    )
    .await;
    echo_handler(&server, "/echo/1").expect("start");
    let err = client
        .send(
            server.host().peer_id(),
            "/echo/1",
            Bytes::from(vec![4u8; 4 * LIMIT]),
        )
        .await
        .expect_err("request over the server's limit");
    assert!(
        matches!(
            err,
            RequestError::Oversize {
                limit: LIMIT,
                side: Side::Remote,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

async fn handler_error_reaches_the_caller() {
    let (server, client) = server_and_client(ServerConfig::default(), client_config()).await;
    server
        .start("/fail/1", |peer, body: Bytes| async move {
            Err::<Bytes, _>(format!(
                "no thanks, {} ({} bytes)",
                peer.to_base58().len(),
                body.len()
            ))
        })
        .expect("start");
    let err = client
        .send(
            server.host().peer_id(),
            "/fail/1",
            Bytes::from_static(b"abc"),
        )
        .await
        .expect_err("handler fails");
    let expected = format!(
        "no thanks, {} (3 bytes)",
        client.host().peer_id().to_base58().len()
    );
    assert_eq!(err, RequestError::Handler(expected));
    assert!(!err.is_retryable());
    assert_eq!(server.metrics().failed, 1);
}

async fn send_closest_fails_over_when_a_server_stops() {
    const PROTOCOL: &str = "/closest/1";
    let client_node = node().await;
    let client = Client::new(&client_node, client_config()).expect("client");
    let mut servers = Vec::new();
    for _ in 0..3 {
        let n = node().await;
        introduce(&client_node, &n);
        let server = Server::new(&n, ServerConfig::default()).expect("server");
        let me = n.peer_id();
        server
            .start(PROTOCOL, move |_peer, _body| async move {
                Ok::<_, String>(Bytes::from(me.to_bytes()))
            })
            .expect("start");
        assert!(client.add_server_node(PROTOCOL, me).expect("add"));
        servers.push(server);
    }
    assert_eq!(client.server_nodes(PROTOCOL).len(), 3);
    assert!(
        !client
            .add_server_node(PROTOCOL, servers[0].host().peer_id())
            .expect("add again")
    );

    // Routing is deterministic: the same key always reaches the same node,
    // and different keys spread over the set.
    let mut answered = BTreeSet::new();
    for i in 0..24u32 {
        let key = Bytes::from(format!("key-{i}"));
        let first = client
            .send_closest(PROTOCOL, key.clone())
            .await
            .expect("closest");
        let again = client.send_closest(PROTOCOL, key).await.expect("closest");
        assert_eq!(first.peer, again.peer);
        assert_eq!(first.body, first.peer.to_bytes());
        answered.insert(first.peer);
    }
    assert!(answered.len() >= 2, "24 keys all routed to one node");

    // The closest node's server stops: the same key fails over to another.
    let key = Bytes::from_static(b"failover");
    let closest = client
        .send_closest(PROTOCOL, key.clone())
        .await
        .expect("closest")
        .peer;
    let stopping = servers
        .iter()
        .find(|s| s.host().peer_id() == closest)
        .expect("one of ours");
    stopping.stop().await;
    let after = client
        .send_closest_with(
            PROTOCOL,
            key.clone(),
            ClosestOptions::default().with_timeout(Duration::from_secs(10)),
        )
        .await
        .expect("failover");
    assert_ne!(after.peer, closest);
    assert_eq!(after.body, after.peer.to_bytes());
    // Excluding a node routes around it as well.
    let excluded = client
        .send_closest_with(
            PROTOCOL,
            key,
            ClosestOptions::default().with_exclude([after.peer]),
        )
        .await
        .expect("excluded");
    assert!(excluded.peer != after.peer && excluded.peer != closest);
}

async fn connection_info_after_traffic() {
    const REQUESTS: u64 = 5;
    let (server, client) = server_and_client(ServerConfig::default(), client_config()).await;
    echo_handler(&server, "/info/1").expect("start");
    let server_peer = server.host().peer_id();
    let client_peer = client.host().peer_id();
    for i in 0..REQUESTS {
        client
            .send(
                server_peer,
                "/info/1",
                Bytes::from(vec![7u8; 100 + i as usize]),
            )
            .await
            .expect("echo");
    }

    let outbound = client.connections_info();
    assert!(!outbound.is_empty());
    assert!(
        outbound
            .iter()
            .all(|c| c.peer == server_peer && c.protocol == "/info/1")
    );
    assert!(outbound.iter().all(|c| c.remote_addr.is_some()));
    assert_eq!(outbound.iter().map(|c| c.requests).sum::<u64>(), REQUESTS);
    assert!(outbound.iter().map(|c| c.bytes_out).sum::<u64>() >= 500);
    assert!(outbound.iter().map(|c| c.bytes_in).sum::<u64>() >= 500);
    assert!(outbound.iter().all(|c| c.in_flight == 0));

    let inbound = server.connections_info();
    assert!(!inbound.is_empty());
    assert!(inbound.iter().all(|c| c.peer == client_peer));
    assert_eq!(inbound.iter().map(|c| c.requests).sum::<u64>(), REQUESTS);
    assert!(inbound.iter().map(|c| c.bytes_in).sum::<u64>() >= 500);
    let metrics = server.metrics();
    assert_eq!(metrics.succeeded, REQUESTS);
}

async fn two_hundred_requests_in_flight() {
    const REQUESTS: u32 = 200;
    let (server, client) = server_and_client(ServerConfig::default(), client_config()).await;
    server
        .start("/slow/1", |_peer, body| async move {
            // Long enough that the requests overlap.
            Timer::after(Duration::from_millis(50)).await;
            Ok::<_, String>(body)
        })
        .expect("start");
    let peer = server.host().peer_id();
    let replies = future::join_all((0..REQUESTS).map(|i| {
        let client = client.clone();
        async move {
            let body = Bytes::from(i.to_be_bytes().to_vec());
            (i, client.send(peer, "/slow/1", body).await)
        }
    }))
    .await;
    for (i, reply) in replies {
        assert_eq!(reply.expect("every request succeeds"), &i.to_be_bytes()[..]);
    }
    let metrics = client.metrics();
    assert_eq!(metrics.succeeded, u64::from(REQUESTS));
    assert_eq!(metrics.failed, 0);
}

// ---------------------------------------------------------------------------
// Raw streams
// ---------------------------------------------------------------------------

async fn conn_echo_a_few_mib() {
    const TOTAL: usize = 4 << 20;
    let (a, b) = (node().await, node().await);
    introduce(&a, &b);
    let mut listener = b.listen("/raw/echo/1").expect("listen");
    assert_eq!(listener.protocol(), "/raw/echo/1");

    let dialer = a.dial(b.peer_id(), "/raw/echo/1").await.expect("dial");
    let acceptor = listener.accept().await.expect("accept");
    assert_eq!(dialer.peer(), b.peer_id());
    assert_eq!(acceptor.peer(), a.peer_id());

    let echo = async move {
        let (mut reader, mut writer) = acceptor.split();
        let copied = futures::io::copy(&mut reader, &mut writer).await?;
        writer.close().await?;
        Ok::<_, io::Error>(copied)
    };
    let data = pattern(9, TOTAL);
    let (copied, back) = futures::join!(echo, exchange(dialer, &data));
    assert_eq!(copied.expect("echo") as usize, TOTAL);
    let back = back.expect("dialer");
    assert_eq!(back.len(), TOTAL);
    assert!(back == data, "echo differs");
}
