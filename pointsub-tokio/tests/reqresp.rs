//! Request/response over real libp2p on loopback, TCP and QUIC: the
//! client and server drivers around the core.
#![cfg(feature = "tokio-runtime")]

mod bodies;

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bodies::incompressible;
use bytes::Bytes;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::proto::error::Side;
use pointsub_tokio::{
    Client, ClientConfig, ClosestOptions, Multiaddr, Node, NodeConfig, PeerId, RequestError,
    Server, ServerConfig, StartError,
};

const ECHO: &str = "/test/echo/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Quic,
}

const BOTH: [Transport; 2] = [Transport::Tcp, Transport::Quic];

fn config(t: Transport) -> NodeConfig {
    let lo = Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST));
    let addr = match t {
        Transport::Tcp => lo.with(Protocol::Tcp(0)),
        Transport::Quic => lo.with(Protocol::Udp(0)).with(Protocol::QuicV1),
    };
    NodeConfig::default().with_listen_addrs([addr])
}

async fn node(t: Transport) -> Node {
    Node::new(config(t)).await.expect("node")
}

/// `n` nodes that all know each other's addresses.
async fn mesh(t: Transport, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(node(t).await);
    }
    for a in &nodes {
        for b in &nodes {
            if a.peer_id() != b.peer_id() {
                for addr in b.listen_addrs() {
                    a.add_address(b.peer_id(), addr);
                }
            }
        }
    }
    nodes
}

fn echo_server(node: &Node, config: ServerConfig) -> Server {
    let server = Server::new(node, config).expect("server config");
    server
        .start(
            ECHO,
            |_peer, body: Bytes| async move { Ok::<_, String>(body) },
        )
        .expect("start");
    server
}

fn client(node: &Node) -> Client {
    Client::new(node, ClientConfig::default()).expect("client config")
}

/// A client that fails fast, for error tests.
fn impatient(node: &Node) -> Client {
    let config = ClientConfig::default()
        .with_max_retries(0)
        .with_connect_timeout(Duration::from_secs(2));
    Client::new(node, config).expect("client config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tcp_and_quic() {
    within(async {
        for t in BOTH {
            let nodes = mesh(t, 2).await;
            let _server = echo_server(&nodes[1], ServerConfig::default());
            let client = client(&nodes[0]);
            for text in ["hello", "", "pointsub"] {
                let reply = client
                    .send(nodes[1].peer_id(), ECHO, Bytes::from(text))
                    .await
                    .unwrap_or_else(|e| panic!("{t:?}: {e}"));
                assert_eq!(reply, text.as_bytes(), "{t:?}");
            }
            let m = client.metrics();
            assert_eq!((m.requests, m.succeeded, m.failed), (3, 3, 0), "{t:?}");
            assert_eq!(
                m.streams_opened, 1,
                "{t:?}: sequential requests share one stream"
            );
        }
    })
    .await;
}

/// A request on an idle stream is written by the sender's task at once;
/// what the stream does not take then (a body past the muxer's window)
/// is the stream task's to finish. Bodies on either side of every
/// boundary, one at a time and in bursts (where the stream is busy and
/// its task packs them), all come back intact, on one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_alone_and_in_bursts() {
    within(async {
        for t in BOTH {
            let nodes = mesh(t, 2).await;
            let _server = echo_server(&nodes[1], ServerConfig::default());
            let client = client(&nodes[0]);
            let peer = nodes[1].peer_id();
            let sizes = [0, 1, 581, 16 << 10, (16 << 10) + 1, 300 << 10, 1 << 20];
            for (i, &len) in sizes.iter().enumerate() {
                let body = incompressible(len, i as u64 + 1);
                let reply = client
                    .send(peer, ECHO, body.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{t:?} {len} B alone: {e}"));
                assert!(reply == body, "{t:?}: {len} B alone came back changed");
                let burst: Vec<Bytes> = sizes
                    .iter()
                    .map(|&n| incompressible(n, n as u64 + 7))
                    .collect();
                let replies = futures::future::join_all(
                    burst.iter().map(|b| client.send(peer, ECHO, b.clone())),
                )
                .await;
                for (b, r) in burst.iter().zip(replies) {
                    let r = r.unwrap_or_else(|e| panic!("{t:?} {} B in a burst: {e}", b.len()));
                    assert!(r == *b, "{t:?}: {} B in a burst came back changed", b.len());
                }
            }
            let m = client.metrics();
            let n = (sizes.len() * (sizes.len() + 1)) as u64;
            assert_eq!((m.requests, m.succeeded, m.failed), (n, n, 0), "{t:?}");
            assert_eq!(m.streams_opened, 1, "{t:?}: every request rode one stream");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_protocols_on_one_server() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let server = Server::new(&nodes[1], ServerConfig::default()).expect("server");
        for (name, tag) in [("/p/a", "a"), ("/p/b", "b"), ("/p/c", "c")] {
            server
                .start(name, move |_peer, body: Bytes| async move {
                    Ok::<_, String>(Bytes::from(format!(
                        "{tag}:{}",
                        String::from_utf8_lossy(&body)
                    )))
                })
                .expect("start");
        }
        assert_eq!(
            server.start("/p/a", |_p, b: Bytes| async move { Ok::<_, String>(b) }),
            Err(StartError::AlreadyRegistered("/p/a".into()))
        );
        assert_eq!(
            server.start("no-slash", |_p, b: Bytes| async move { Ok::<_, String>(b) }),
            Err(StartError::InvalidProtocol("no-slash".into()))
        );
        let client = client(&nodes[0]);
        let peer = nodes[1].peer_id();
        for (name, tag) in [("/p/a", "a"), ("/p/b", "b"), ("/p/c", "c")] {
            let reply = client.send(peer, name, Bytes::from("x")).await.expect(name);
            assert_eq!(reply, format!("{tag}:x").as_bytes());
        }
        let err = impatient(&nodes[0])
            .send(peer, "/p/d", Bytes::from("x"))
            .await
            .expect_err("not served");
        assert!(
            matches!(&err, RequestError::UnsupportedProtocol(p) if p.as_str() == "/p/d"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_and_send_full_duplex() {
    within(async {
        let nodes = mesh(Transport::Tcp, 3).await;
        let mut servers = Vec::new();
        for n in &nodes {
            let me = n.peer_id();
            let server = Server::new(n, ServerConfig::default()).expect("server");
            server
                .start(ECHO, move |peer: PeerId, body: Bytes| async move {
                    // Answer with who answered and who asked.
                    Ok::<_, String>(Bytes::from(format!("{me}<{peer}:{}", body.len())))
                })
                .expect("start");
            servers.push(server);
        }
        let mut tasks = Vec::new();
        for from in &nodes {
            let client = client(from);
            for to in &nodes {
                if to.peer_id() == from.peer_id() {
                    continue;
                }
                for i in 0..50usize {
                    let client = client.clone();
                    let (me, them) = (from.peer_id(), to.peer_id());
                    tasks.push(tokio::spawn(async move {
                        let reply = client.send(them, ECHO, Bytes::from(vec![7u8; i])).await?;
                        assert_eq!(reply, format!("{them}<{me}:{i}").as_bytes());
                        Ok::<_, RequestError>(())
                    }));
                }
            }
        }
        assert_eq!(tasks.len(), 300);
        for t in tasks {
            t.await.expect("task").expect("request");
        }
        for s in &servers {
            assert_eq!(s.metrics().succeeded, 100);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let server = Server::new(&nodes[1], ServerConfig::default()).expect("server");
        server
            .start("/fail", |_p, _b: Bytes| async move {
                Err::<Bytes, _>("no such key")
            })
            .expect("start");
        server
            .start("/panic", |_p, _b: Bytes| async move {
                if true {
                    panic!("handler bug");
                }
                Ok::<Bytes, String>(Bytes::new())
            })
            .expect("start");
        // Panics in the call itself, before it returns a future.
        server
            .start("/panic-at-once", |_p, b: Bytes| {
                assert!(b.is_empty(), "handler bug at once");
                async move { Ok::<Bytes, String>(b) }
            })
            .expect("start");
        let client = impatient(&nodes[0]);
        let peer = nodes[1].peer_id();

        let err = client.send(nodes[0].peer_id(), ECHO, Bytes::new()).await;
        assert_eq!(err, Err(RequestError::SelfSend));

        let err = client.send(peer, "/fail", Bytes::from("k")).await;
        assert_eq!(err, Err(RequestError::Handler("no such key".into())));

        let err = client.send(peer, "/panic", Bytes::from("k")).await;
        assert_eq!(err, Err(RequestError::Handler("handler panicked".into())));
        let err = client.send(peer, "/panic-at-once", Bytes::from("k")).await;
        assert_eq!(err, Err(RequestError::Handler("handler panicked".into())));
        let ok = client.send(peer, "/panic-at-once", Bytes::new()).await;
        assert_eq!(ok, Ok(Bytes::new()), "the same handler, not panicking");
        // The server survives a panicking handler.
        assert_eq!(
            client.send(peer, "/fail", Bytes::new()).await,
            Err(RequestError::Handler("no such key".into()))
        );

        let stranger = PeerId::random();
        let err = client
            .send(stranger, ECHO, Bytes::from("x"))
            .await
            .expect_err("no address");
        assert_eq!(err, RequestError::NoAddress);
        assert!(!err.is_retryable());

        let err = client.send(peer, "bad name", Bytes::new()).await;
        assert_eq!(err, Err(RequestError::InvalidProtocol("bad name".into())));

        client.close();
        assert!(client.is_closed());
        assert_eq!(
            client.send(peer, "/fail", Bytes::new()).await,
            Err(RequestError::Closed)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_is_refused_on_either_side() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let limit = 256 * 1024;
        let _server = echo_server(
            &nodes[1],
            ServerConfig::default().with_max_block_size(limit),
        );
        let server_big = Server::new(&nodes[1], ServerConfig::default()).expect("server");
        server_big
            .start("/big", |_p, _b: Bytes| async move {
                Ok::<_, String>(Bytes::from(vec![1u8; 2 * 1024 * 1024]))
            })
            .expect("start");
        let peer = nodes[1].peer_id();
        // Incompressible, so compression cannot shrink it under the limit.
        let noise: Vec<u8> = (0..limit as u32 + 1)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();

        let small = Client::new(
            &nodes[0],
            ClientConfig::default()
                .with_max_block_size(1024 * 1024)
                .with_max_retries(0),
        )
        .expect("client");
        // Local: refused before anything is sent.
        let err = small
            .send(peer, ECHO, Bytes::from(vec![0u8; 1024 * 1024 + 1]))
            .await
            .expect_err("too big to send");
        assert!(
            matches!(
                err,
                RequestError::Oversize {
                    side: Side::Local,
                    limit: 1048576,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(small.metrics().streams_opened, 0);
        // Remote: the server's limit is smaller than the request.
        let err = small
            .send(peer, ECHO, Bytes::from(noise))
            .await
            .expect_err("too big for the server");
        assert!(
            matches!(
                err,
                RequestError::Oversize {
                    side: Side::Remote,
                    ..
                }
            ),
            "{err:?}"
        );
        // Response larger than the client accepts.
        let err = small
            .send(peer, "/big", Bytes::from("x"))
            .await
            .expect_err("response too big");
        assert!(matches!(err, RequestError::Oversize { .. }), "{err:?}");
        // The stream pool and server survive: a normal request still works.
        assert_eq!(
            small.send(peer, ECHO, Bytes::from("ok")).await.expect("ok"),
            "ok"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_compressible_body_travels_compressed() {
    within(async {
        for t in BOTH {
            let nodes = mesh(t, 2).await;
            let server = echo_server(&nodes[1], ServerConfig::default());
            let client = client(&nodes[0]);
            let body: Bytes = b"pointsub compresses repetitive bodies. "
                .iter()
                .copied()
                .cycle()
                .take(10 * 1024 * 1024)
                .collect::<Vec<u8>>()
                .into();
            let reply = client
                .send(nodes[1].peer_id(), ECHO, body.clone())
                .await
                .expect("10 MiB echo");
            assert_eq!(reply, body, "{t:?}");

            let infos = client.connections_info();
            assert_eq!(infos.len(), 1, "{t:?}: {infos:?}");
            let info = &infos[0];
            assert_eq!(info.peer, nodes[1].peer_id());
            assert_eq!(info.requests, 1);
            assert!(
                info.bytes_out > 0 && info.bytes_out < 1024 * 1024,
                "{t:?}: {info:?}"
            );
            assert!(
                info.bytes_in > 0 && info.bytes_in < 1024 * 1024,
                "{t:?}: {info:?}"
            );
            let sinfo = server.connections_info();
            assert_eq!(sinfo.len(), 1);
            assert_eq!(sinfo[0].bytes_in, info.bytes_out, "{t:?}");
            assert_eq!(sinfo[0].bytes_out, info.bytes_in, "{t:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_info_after_traffic() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let server = echo_server(&nodes[1], ServerConfig::default());
        let client = client(&nodes[0]);
        let peer = nodes[1].peer_id();
        for i in 0..10u8 {
            client
                .send(peer, ECHO, Bytes::from(vec![i; 100]))
                .await
                .expect("echo");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let infos = server.connections_info();
        assert_eq!(infos.len(), 1, "{infos:?}");
        let info = &infos[0];
        assert_eq!(info.peer, nodes[0].peer_id());
        assert_eq!(info.protocol, ECHO);
        assert_eq!(info.requests, 10);
        assert_eq!(info.in_flight, 0);
        // Ten 100-byte bodies plus headers each way.
        assert!(info.bytes_in >= 1000 && info.bytes_in < 2000, "{info:?}");
        assert!(info.bytes_out >= 1000 && info.bytes_out < 2000, "{info:?}");
        assert!(info.idle >= Duration::from_millis(40), "{info:?}");
        assert!(info.age >= info.idle);
        let addr = info.remote_addr.clone().expect("connected");
        assert!(addr.iter().any(|p| matches!(p, Protocol::Tcp(_))), "{addr}");

        let m = server.metrics();
        assert_eq!((m.requests, m.succeeded, m.streams_accepted), (10, 10, 1));
        let c = client.metrics();
        assert_eq!(c.bytes_written, info.bytes_in);
        assert_eq!(c.bytes_read, info.bytes_out);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_closest_fails_over_when_the_closest_node_stops() {
    within(async {
        let nodes = mesh(Transport::Tcp, 4).await;
        let client_node = &nodes[0];
        let mut servers = Vec::new();
        for n in &nodes[1..] {
            let me = n.peer_id();
            let server = Server::new(n, ServerConfig::default()).expect("server");
            server
                .start(ECHO, move |_p, _b: Bytes| async move {
                    Ok::<_, String>(Bytes::from(me.to_bytes()))
                })
                .expect("start");
            servers.push(server);
        }
        let client = client(client_node);
        for n in &nodes[1..] {
            assert_eq!(client.add_server_node(ECHO, n.peer_id()), Ok(true));
        }
        assert_eq!(client.add_server_node(ECHO, nodes[1].peer_id()), Ok(false));
        assert!(client.add_server_node(ECHO, client_node.peer_id()).is_err());
        assert_eq!(client.server_nodes(ECHO).len(), 3);

        let key = Bytes::from("routing key 42");
        let first = client
            .send_closest_with(
                ECHO,
                Bytes::from("a"),
                ClosestOptions::default().with_routing_key(key.clone()),
            )
            .await
            .expect("closest");
        assert_eq!(first.body, first.peer.to_bytes());
        // Same key, same node.
        let again = client
            .send_closest_with(
                ECHO,
                Bytes::from("b"),
                ClosestOptions::default().with_routing_key(key.clone()),
            )
            .await
            .expect("closest");
        assert_eq!(again.peer, first.peer);
        // Excluding it picks another node.
        let other = client
            .send_closest_with(
                ECHO,
                Bytes::from("c"),
                ClosestOptions::default()
                    .with_routing_key(key.clone())
                    .with_exclude([first.peer]),
            )
            .await
            .expect("closest");
        assert_ne!(other.peer, first.peer);

        // The closest node's server stops: requests fail over.
        let index = nodes[1..]
            .iter()
            .position(|n| n.peer_id() == first.peer)
            .expect("known");
        servers[index].stop().await;
        assert!(servers[index].is_stopped());
        for i in 0..5 {
            let r = client
                .send_closest_with(
                    ECHO,
                    Bytes::from(vec![i]),
                    ClosestOptions::default().with_routing_key(key.clone()),
                )
                .await
                .expect("failed over");
            assert_ne!(r.peer, first.peer);
            assert_eq!(r.body, r.peer.to_bytes());
        }
        // And when its whole node goes away too.
        nodes[1 + index].shutdown();
        let r = client
            .send_closest_with(
                ECHO,
                Bytes::from("z"),
                ClosestOptions::default().with_routing_key(key),
            )
            .await
            .expect("failed over");
        assert_ne!(r.peer, first.peer);

        client
            .remove_server_node(ECHO, first.peer)
            .expect("known node");
        assert_eq!(client.server_nodes(ECHO).len(), 2);
        client.clear_server_nodes(ECHO);
        let err = client
            .send_closest(ECHO, Bytes::from("x"))
            .await
            .expect_err("no nodes");
        assert!(matches!(err, RequestError::Route(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_loses_no_in_flight_request() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let server = Server::new(&nodes[1], ServerConfig::default()).expect("server");
        let started = Arc::new(AtomicUsize::new(0));
        let counter = started.clone();
        server
            .start(ECHO, move |_p, body: Bytes| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, String>(body)
                }
            })
            .expect("start");
        let client = client(&nodes[0]);
        let peer = nodes[1].peer_id();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let body = Bytes::from(i.to_be_bytes().to_vec());
                (client.send(peer, ECHO, body.clone()).await, body)
            }));
        }
        // Stop once every request is being handled.
        while started.load(Ordering::SeqCst) < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.stop().await;
        assert!(server.is_stopped());
        for t in tasks {
            let (result, body) = t.await.expect("task");
            assert_eq!(result.expect("answered before the stop completed"), body);
        }
        assert_eq!(server.metrics().succeeded, 200);
        // After the stop, requests end with a typed, final-for-this-node error.
        let err = impatient(&nodes[0])
            .send(peer, ECHO, Bytes::from("late"))
            .await
            .expect_err("stopped");
        assert!(
            matches!(
                err,
                RequestError::UnsupportedProtocol(_) | RequestError::ShuttingDown
            ),
            "{err:?}"
        );
        assert_eq!(
            server.start("/again", |_p, b: Bytes| async move { Ok::<_, String>(b) }),
            Err(StartError::Stopped)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_requests_past_the_grace_period_with_shutting_down() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let server = Server::new(&nodes[1], ServerConfig::default()).expect("server");
        server
            .start(ECHO, |_p, body: Bytes| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, String>(body)
            })
            .expect("start");
        let client = impatient(&nodes[0]);
        let peer = nodes[1].peer_id();
        let pending = tokio::spawn({
            let client = client.clone();
            async move { client.send(peer, ECHO, Bytes::from("slow")).await }
        });
        while server.active() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.stop_with_timeout(Duration::from_millis(200)).await;
        let err = pending
            .await
            .expect("task")
            .expect_err("abandoned at the deadline");
        assert_eq!(err, RequestError::ShuttingDown);
        assert!(err.is_retryable());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_in_flight_on_one_connection() {
    within(async {
        for t in BOTH {
            let nodes = mesh(t, 2).await;
            // Room for all thousand from one peer: by default a server
            // answers a peer's requests past 500 at once Busy (tested
            // apart), and a default client puts up to 256 on one stream.
            let server = Server::new(&nodes[1], ServerConfig::default().with_max_per_peer(1000))
                .expect("server");
            server
                .start(ECHO, |_p, body: Bytes| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, String>(body)
                })
                .expect("start");
            let client = client(&nodes[0]);
            let peer = nodes[1].peer_id();
            let mut tasks = Vec::new();
            for i in 0..1000u32 {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let body = Bytes::from(i.to_be_bytes().to_vec());
                    (client.send(peer, ECHO, body.clone()).await, body)
                }));
            }
            for task in tasks {
                let (result, body) = task.await.expect("task");
                assert_eq!(result.unwrap_or_else(|e| panic!("{t:?}: {e}")), body);
            }
            assert_eq!(nodes[0].control().connected_peers(), vec![peer], "{t:?}");
            let m = client.metrics();
            assert_eq!((m.succeeded, m.failed, m.retries), (1000, 0, 0), "{t:?}");
            assert!(m.streams_opened <= 100, "{t:?}: pooled streams: {m:?}");
            // Steady state: more requests open no stream.
            for i in 0..20u8 {
                client
                    .send(peer, ECHO, Bytes::from(vec![i]))
                    .await
                    .expect("echo");
            }
            assert_eq!(client.metrics().streams_opened, m.streams_opened, "{t:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_busy_not_dropped() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let config = ServerConfig::default()
            .with_max_concurrent_conns(10)
            .with_min_concurrent_conns(10)
            .with_max_concurrent_limit(10);
        let server = Server::new(&nodes[1], config).expect("server");
        server
            .start(ECHO, |_p, body: Bytes| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, String>(body)
            })
            .expect("start");
        let client = impatient(&nodes[0]);
        let peer = nodes[1].peer_id();
        let mut tasks = Vec::new();
        for i in 0..100u32 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .send(peer, ECHO, Bytes::from(i.to_be_bytes().to_vec()))
                    .await
            }));
        }
        let (mut ok, mut busy) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => ok += 1,
                Err(RequestError::Busy(_)) => busy += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok + busy, 100);
        assert!(ok >= 10 && busy > 0, "ok {ok} busy {busy}");
        assert_eq!(server.metrics().rejected_busy, busy as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_cancels_the_request() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let server = Server::new(&nodes[1], ServerConfig::default()).expect("server");
        server
            .start(ECHO, |_p, body: Bytes| async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, String>(body)
            })
            .expect("start");
        let client = client(&nodes[0]);
        let peer = nodes[1].peer_id();
        let timed_out = tokio::time::timeout(
            Duration::from_millis(200),
            client.send(peer, ECHO, Bytes::from("x")),
        )
        .await;
        assert!(timed_out.is_err());
        let m = client.metrics();
        assert_eq!((m.active, m.failed), (0, 1), "{m:?}");
        let err = client
            .send_with_timeout(peer, ECHO, Bytes::from("y"), Duration::from_millis(200))
            .await
            .expect_err("deadline");
        assert_eq!(err, RequestError::Timeout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_other_peers() {
    within(async {
        let nodes = mesh(Transport::Tcp, 3).await;
        let server = echo_server(&nodes[2], ServerConfig::default());
        server.set_allow_list(ECHO, Some(vec![nodes[0].peer_id()]));
        let peer = nodes[2].peer_id();
        assert_eq!(
            client(&nodes[0])
                .send(peer, ECHO, Bytes::from("in"))
                .await
                .expect("allowed"),
            "in"
        );
        let err = impatient(&nodes[1])
            .send(peer, ECHO, Bytes::from("out"))
            .await
            .expect_err("refused");
        assert!(matches!(err, RequestError::Forbidden(_)), "{err:?}");
        server.set_allow_list(ECHO, None);
        assert_eq!(
            client(&nodes[1])
                .send(peer, ECHO, Bytes::from("now"))
                .await
                .expect("open again"),
            "now"
        );
    })
    .await;
}

/// Every request in flight holds its send future: it is kept small (the
/// prepared call is dropped once submitted; see `RequestFuture`). 10,000
/// requests in flight hold 10,000 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_future_is_small() {
    within(async {
        let nodes = mesh(Transport::Tcp, 2).await;
        let client = client(&nodes[0]);
        let peer = nodes[1].peer_id();
        let send = client.send(peer, ECHO, Bytes::from_static(b"x"));
        let size = std::mem::size_of_val(&send);
        eprintln!("send future: {size} bytes");
        assert!(size <= 256, "the send future grew to {size} bytes");
        drop(send);
        let timed = client.send_with_timeout(peer, ECHO, Bytes::new(), Duration::from_secs(1));
        let size = std::mem::size_of_val(&timed);
        assert!(size <= 256, "the timed send future grew to {size} bytes");
    })
    .await;
}
