//! Errors that tell the caller what a retry can do, over real libp2p on
//! loopback: which failures end a request at once and for good, which are
//! retried and how long that takes, and what `send_closest` reports when
//! every node failed.
//!
//! Durations are asserted with generous upper bounds (the CPU is shared):
//! "at once" means well under the 3.5 s that the default retries take at
//! the least.
#![cfg(feature = "tokio-runtime")]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::proto::frame::{self, Decoded, ErrorCode, Flags, FrameKind, MessageDecoder};
use pointsub_tokio::{
    Client, ClientConfig, ClosestOptions, Multiaddr, Node, NodeConfig, PeerId, RequestError,
    RequestErrorExt, Server, ServerConfig, StreamProtocol,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const ECHO: &str = "/test/echo/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// "At once": far below the 3.5 s the default retries take at the least.
const AT_ONCE: Duration = Duration::from_secs(2);

/// Slack allowed above a computed bound for a busy shared CPU.
const SLACK: Duration = Duration::from_secs(3);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

fn tcp_loopback(port: u16) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(port))
}

async fn node() -> Node {
    Node::new(NodeConfig::default().with_listen_addrs([tcp_loopback(0)]))
        .await
        .expect("node")
}

/// A node that only dials out.
async fn dialer() -> Node {
    Node::new(NodeConfig::default().with_listen_addrs(Vec::<Multiaddr>::new()))
        .await
        .expect("node")
}

fn introduce(a: &Node, b: &Node) {
    for addr in b.listen_addrs() {
        a.add_address(b.peer_id(), addr);
    }
}

/// A server on `node` whose handler answers with its node's PeerId.
fn whoami_server(node: &Node) -> Server {
    let server = Server::new(node, ServerConfig::default()).expect("server");
    let me = node.peer_id();
    server
        .start(ECHO, move |_p, _b: Bytes| async move {
            Ok::<_, String>(Bytes::from(me.to_bytes()))
        })
        .expect("start");
    server
}

/// Shortened retry timing, so each budget is a second or two.
fn quick() -> ClientConfig {
    ClientConfig::default()
        .with_retry_interval(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_millis(500))
        .with_max_retries(3)
}

/// Smallest and largest total backoff over `cfg.max_retries` retries.
fn backoff_bounds(cfg: &ClientConfig) -> (Duration, Duration) {
    let (mut lo, mut hi) = (Duration::ZERO, Duration::ZERO);
    for n in 1..=cfg.max_retries {
        let base = (cfg.retry_interval * 2u32.pow(n - 1)).min(cfg.max_backoff);
        lo += base / 2;
        hi += base;
    }
    (lo, hi)
}

fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a tcp address")
}

/// A loopback TCP port nothing listens on (dials are refused at once).
async fn closed_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

/// A TCP listener that accepts connections and never says a word: the
/// security handshake hangs until the connect timeout.
async fn black_hole() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

/// A TCP relay to `target` that waits `delay` before connecting, so dials
/// through it finish after direct dials on loopback.
async fn slow_relay(target: SocketAddr, delay: Duration) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// Serves `ECHO` on `node` by hand: every request is answered "busy".
fn busy_responder(node: &Node) {
    let mut incoming = node
        .accept(StreamProtocol::new(ECHO))
        .expect("not yet served");
    tokio::spawn(async move {
        while let Some((_peer, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut decoder = MessageDecoder::new(1 << 20);
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    decoder.push(&buf[..n]);
                    while let Ok(Some(decoded)) = decoder.next() {
                        let Decoded::Message(m) = decoded else {
                            continue;
                        };
                        if m.kind != FrameKind::Request {
                            continue;
                        }
                        let mut out = BytesMut::new();
                        let body = frame::encode_error_body(ErrorCode::Busy, "at limit");
                        frame::encode_frame(
                            &mut out,
                            FrameKind::Error,
                            Flags::empty(),
                            m.request_id,
                            &body,
                        );
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        let _ = stream.flush().await;
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Shut-down node
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_after_the_own_node_shut_down_fails_at_once_with_closed() {
    within(async {
        let server_node = node().await;
        let _server = whoami_server(&server_node);
        let client_node = node().await;
        introduce(&client_node, &server_node);
        let peer = server_node.peer_id();
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        // A pooled stream exists when the node goes.
        client
            .send(peer, ECHO, Bytes::from("before"))
            .await
            .expect("served");
        let before = client.metrics().attempts;

        client_node.shutdown();
        let t = Instant::now();
        let err = client
            .send(peer, ECHO, Bytes::from("after"))
            .await
            .expect_err("the node is gone");
        assert_eq!(err, RequestError::Closed);
        assert!(!err.is_retryable());
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
        assert_eq!(client.metrics().attempts, before, "nothing was tried");
        assert!(client.is_closed());

        // A client made on the shut-down node fails the same way.
        let late = Client::new(&client_node, ClientConfig::default()).expect("client");
        let t = Instant::now();
        assert_eq!(
            late.send(peer, ECHO, Bytes::from("late")).await,
            Err(RequestError::Closed)
        );
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_own_node_shuts_down_ends_with_closed() {
    within(async {
        let server_node = node().await;
        let server = Server::new(&server_node, ServerConfig::default()).expect("server");
        let release = Arc::new(Notify::new());
        let r = release.clone();
        server
            .start(ECHO, move |_p, b: Bytes| {
                let r = r.clone();
                async move {
                    r.notified().await;
                    Ok::<_, String>(b)
                }
            })
            .expect("start");
        let client_node = node().await;
        introduce(&client_node, &server_node);
        let peer = server_node.peer_id();
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        let pending = tokio::spawn({
            let client = client.clone();
            async move { client.send(peer, ECHO, Bytes::from("held")).await }
        });
        while server.active() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        client_node.shutdown();
        let err = pending.await.expect("task").expect_err("the node is gone");
        assert_eq!(err, RequestError::Closed);
        // Not the ~4.8 s of retries it used to take (at most one backoff
        // of 0.5-1 s when the stream's end is seen before the shutdown).
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
        release.notify_one();
    })
    .await;
}

// ---------------------------------------------------------------------------
// No address, wrong peer id
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_no_address_fails_at_once() {
    within(async {
        let client_node = dialer().await;
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        let stranger = PeerId::random();
        let t = Instant::now();
        let err = client
            .send(stranger, ECHO, Bytes::from("x"))
            .await
            .expect_err("no address");
        assert_eq!(err, RequestError::NoAddress);
        assert!(!err.is_retryable());
        assert_eq!(err.kind(), "no_address");
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
        assert_eq!(client.metrics().attempts, 1);
        // An overall timeout does not hold it back either.
        let err = client
            .send_with_timeout(stranger, ECHO, Bytes::from("x"), Duration::from_secs(30))
            .await;
        assert_eq!(err, Err(RequestError::NoAddress));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_peer_id_is_final_and_its_address_is_dropped() {
    within(async {
        let target = node().await;
        let _server = whoami_server(&target);
        let impostor = node().await;
        let client_node = dialer().await;
        // The only address known for `target` belongs to someone else now.
        for addr in impostor.listen_addrs() {
            client_node.add_address(target.peer_id(), addr);
        }
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        let t = Instant::now();
        let err = client
            .send(target.peer_id(), ECHO, Bytes::from("x"))
            .await
            .expect_err("wrong identity");
        assert!(
            matches!(err, RequestError::WrongPeer { .. }),
            "{err:?}: {err}"
        );
        assert_eq!(err.obtained_peer(), Some(impostor.peer_id()));
        assert!(!err.is_retryable());
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
        assert_eq!(client.metrics().attempts, 1);
        assert!(
            client_node
                .control()
                .addresses_of(&target.peer_id())
                .is_empty(),
            "the stale address was dropped"
        );
        // Once the right address is known, the same client gets through.
        introduce(&client_node, &target);
        let reply = client
            .send(target.peer_id(), ECHO, Bytes::from("x"))
            .await
            .expect("served");
        assert_eq!(reply, Bytes::from(target.peer_id().to_bytes()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_peer_id_falls_back_to_the_peers_other_addresses() {
    within(async {
        let target = node().await;
        let _server = whoami_server(&target);
        let impostor = node().await;
        let client_node = dialer().await;
        let stale = impostor.listen_addrs()[0].clone();
        // The good address goes through a relay that answers 500 ms late,
        // so the stale one is always the first to answer.
        let target_port = tcp_port(&target.listen_addrs()[0]);
        let relay = slow_relay(
            SocketAddr::from((Ipv4Addr::LOCALHOST, target_port)),
            Duration::from_millis(500),
        )
        .await;
        let good = tcp_loopback(relay);
        client_node.add_address(target.peer_id(), stale.clone());
        client_node.add_address(target.peer_id(), good.clone());
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        let t = Instant::now();
        let reply = client
            .send(target.peer_id(), ECHO, Bytes::from("x"))
            .await
            .expect("served through the other address");
        assert_eq!(reply, Bytes::from(target.peer_id().to_bytes()));
        assert!(t.elapsed() < AT_ONCE + SLACK, "{:?}", t.elapsed());
        assert_eq!(client.metrics().attempts, 1, "no retry was needed");
        // Identify may add the target's own listen addresses beside them.
        let known = client_node.control().addresses_of(&target.peer_id());
        assert!(
            !known.contains(&stale) && known.contains(&good),
            "the stale address was dropped, the good one kept: {known:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Protocol stopped, draining, every node failed
// ---------------------------------------------------------------------------

/// Which of `nodes` `client` routes `key` to.
async fn closest_for(client: &Client, key: &Bytes) -> PeerId {
    client
        .send_closest_with(
            ECHO,
            Bytes::from("probe"),
            ClosestOptions::default().with_routing_key(key.clone()),
        )
        .await
        .expect("closest")
        .peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_protocol_is_unsupported_and_send_closest_fails_over() {
    within(async {
        let a = node().await;
        let b = node().await;
        let servers = [whoami_server(&a), whoami_server(&b)];
        let client_node = dialer().await;
        introduce(&client_node, &a);
        introduce(&client_node, &b);
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        client.add_server_node(ECHO, a.peer_id()).expect("add");
        client.add_server_node(ECHO, b.peer_id()).expect("add");
        let key = Bytes::from("routing key");
        let first = closest_for(&client, &key).await;
        let (stopped, other) = if first == a.peer_id() {
            (0, b.peer_id())
        } else {
            (1, a.peer_id())
        };
        servers[stopped].stop().await;
        // Let the pooled stream to the stopped server go (the stop closes
        // it); a request on it would see a reset first, and be retried.
        for _ in 0..200 {
            if client.connections_info().iter().all(|c| c.peer != first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Directly: final at once, not retried after the answer.
        let before = client.metrics().attempts;
        let t = Instant::now();
        let err = client
            .send(first, ECHO, Bytes::from("x"))
            .await
            .expect_err("stopped");
        assert_eq!(err, RequestError::UnsupportedProtocol(ECHO.into()));
        assert!(!err.is_retryable());
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
        let made = client.metrics().attempts - before;
        assert!(made == 1 || made == 2, "{made} attempts");

        // By routing: the next node answers.
        let r = client
            .send_closest_with(
                ECHO,
                Bytes::from("y"),
                ClosestOptions::default().with_routing_key(key),
            )
            .await
            .expect("failed over");
        assert_eq!(r.peer, other);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_answers_shutting_down_and_send_closest_fails_over() {
    within(async {
        let a = node().await;
        let b = node().await;
        let release = Arc::new(Notify::new());
        let mut servers = Vec::new();
        for n in [&a, &b] {
            let server = Server::new(n, ServerConfig::default()).expect("server");
            let me = n.peer_id();
            let r = release.clone();
            server
                .start(ECHO, move |_p, body: Bytes| {
                    let r = r.clone();
                    async move {
                        if body == "hold" {
                            r.notified().await;
                        }
                        Ok::<_, String>(Bytes::from(me.to_bytes()))
                    }
                })
                .expect("start");
            servers.push(Arc::new(server));
        }
        let client_node = dialer().await;
        introduce(&client_node, &a);
        introduce(&client_node, &b);
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        let once =
            Client::new(&client_node, ClientConfig::default().with_max_retries(0)).expect("client");
        client.add_server_node(ECHO, a.peer_id()).expect("add");
        client.add_server_node(ECHO, b.peer_id()).expect("add");
        let key = Bytes::from("another routing key");
        let first = closest_for(&client, &key).await;
        let (draining, other) = if first == a.peer_id() {
            (0, b.peer_id())
        } else {
            (1, a.peer_id())
        };
        // A request in flight keeps the closest server draining.
        let held = tokio::spawn({
            let client = client.clone();
            async move { client.send(first, ECHO, Bytes::from("hold")).await }
        });
        while servers[draining].active() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stopping = tokio::spawn({
            let server = servers[draining].clone();
            async move { server.stop_with_timeout(Duration::from_secs(30)).await }
        });
        // Wait until it answers new requests "shutting down".
        let err = loop {
            match once.send(first, ECHO, Bytes::from("x")).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => break e,
            }
        };
        assert_eq!(err, RequestError::ShuttingDown);
        assert!(err.is_retryable());

        let r = client
            .send_closest_with(
                ECHO,
                Bytes::from("y"),
                ClosestOptions::default().with_routing_key(key),
            )
            .await
            .expect("failed over");
        assert_eq!(r.peer, other);

        // The drain still answers the request it had.
        release.notify_one();
        let reply = held.await.expect("task").expect("answered in the drain");
        assert_eq!(reply, Bytes::from(first.to_bytes()));
        stopping.await.expect("stopped");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_fails_the_error_names_each_node_with_its_failure() {
    within(async {
        // One node up without the protocol, one with no address, one whose
        // address refuses connections.
        let unserved = node().await;
        let no_address = PeerId::random();
        let refusing = PeerId::random();
        let client_node = dialer().await;
        introduce(&client_node, &unserved);
        client_node.add_address(refusing, tcp_loopback(closed_port().await));
        let cfg = quick();
        let client = Client::new(&client_node, cfg.clone()).expect("client");
        for n in [unserved.peer_id(), no_address, refusing] {
            client.add_server_node(ECHO, n).expect("add");
        }
        let t = Instant::now();
        let err = client
            .send_closest(ECHO, Bytes::from("anything"))
            .await
            .expect_err("every node fails");
        assert_eq!(err.kind(), "all_nodes_failed");
        let mut failures = err.node_failures();
        assert_eq!(failures.len(), 3, "{err}");
        failures.sort_by_key(|(p, _)| p.to_bytes());
        let mut want = vec![
            (
                unserved.peer_id(),
                RequestError::UnsupportedProtocol(ECHO.into()),
            ),
            (no_address, RequestError::NoAddress),
        ];
        want.sort_by_key(|(p, _)| p.to_bytes());
        let refused: Vec<_> = failures.iter().filter(|(p, _)| *p == refusing).collect();
        assert_eq!(refused.len(), 1);
        assert!(
            matches!(refused[0].1, RequestError::ConnectFailed(_)),
            "{:?}",
            refused[0]
        );
        failures.retain(|(p, _)| *p != refusing);
        assert_eq!(failures, want);
        // The refusing node may come back: a retry may help.
        assert!(err.is_retryable());
        // The budget: 4 attempts; the nodes ruled out are not tried again,
        // only the refusing one, after its backoffs.
        assert_eq!(client.metrics().attempts, u64::from(cfg.max_retries) + 1);
        let (_, hi) = backoff_bounds(&cfg);
        assert!(t.elapsed() < hi + SLACK, "{:?}", t.elapsed());

        // With only final failures, no retry could help, and none is made.
        client
            .remove_server_node(ECHO, refusing)
            .expect("known node");
        let before = client.metrics().attempts;
        let t = Instant::now();
        let err = client
            .send_closest(ECHO, Bytes::from("again"))
            .await
            .expect_err("every node fails");
        assert_eq!(err.node_failures().len(), 2, "{err}");
        assert!(!err.is_retryable());
        assert_eq!(client.metrics().attempts, before + 2);
        assert!(t.elapsed() < AT_ONCE, "{:?}", t.elapsed());
    })
    .await;
}

// ---------------------------------------------------------------------------
// Total time per cause, and send_with_timeout capping it
// ---------------------------------------------------------------------------

/// Sends once with `cfg` to `peer` (whose address `setup` made known),
/// returning the outcome, the attempts made and the time taken.
async fn timed(
    client_node: &Node,
    cfg: ClientConfig,
    peer: PeerId,
    timeout: Option<Duration>,
) -> (Result<Bytes, RequestError>, u64, Duration) {
    let client = Client::new(client_node, cfg).expect("client");
    let t = Instant::now();
    let result = match timeout {
        Some(d) => {
            client
                .send_with_timeout(peer, ECHO, Bytes::from("x"), d)
                .await
        }
        None => client.send(peer, ECHO, Bytes::from("x")).await,
    };
    (result, client.metrics().attempts, t.elapsed())
}

fn assert_between(d: Duration, lo: Duration, hi: Duration) {
    assert!(lo <= d && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_takes_the_backoff_budget_and_a_timeout_caps_it() {
    within(async {
        let client_node = dialer().await;
        let peer = PeerId::random();
        client_node.add_address(peer, tcp_loopback(closed_port().await));
        let cfg = quick();
        let (lo, hi) = backoff_bounds(&cfg);
        let (result, attempts, took) = timed(&client_node, cfg.clone(), peer, None).await;
        assert!(
            matches!(result, Err(RequestError::ConnectFailed(_))),
            "{result:?}"
        );
        assert_eq!(attempts, u64::from(cfg.max_retries) + 1);
        assert_between(took, lo, hi + SLACK);

        let cap = lo / 2;
        let (result, _, took) = timed(&client_node, cfg, peer, Some(cap)).await;
        assert_eq!(result, Err(RequestError::Timeout));
        assert_between(took, cap, cap + SLACK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeouts_take_every_attempt_plus_backoff_and_a_timeout_caps_them() {
    within(async {
        let client_node = dialer().await;
        let peer = PeerId::random();
        client_node.add_address(peer, tcp_loopback(black_hole().await));
        let cfg = quick();
        let (lo, hi) = backoff_bounds(&cfg);
        let opens = cfg.connect_timeout * (cfg.max_retries + 1);
        let (result, attempts, took) = timed(&client_node, cfg.clone(), peer, None).await;
        assert_eq!(result, Err(RequestError::ConnectTimeout));
        assert_eq!(attempts, u64::from(cfg.max_retries) + 1);
        assert_between(took, opens + lo, opens + hi + SLACK);

        let cap = cfg.connect_timeout + cfg.connect_timeout / 2;
        let (result, _, took) = timed(&client_node, cfg, peer, Some(cap)).await;
        assert_eq!(result, Err(RequestError::Timeout));
        assert_between(took, cap, cap + SLACK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_is_not_retried_by_default_and_a_timeout_caps_it() {
    within(async {
        let server_node = node().await;
        let server = Server::new(&server_node, ServerConfig::default()).expect("server");
        let release = Arc::new(Notify::new());
        let r = release.clone();
        server
            .start(ECHO, move |_p, b: Bytes| {
                let r = r.clone();
                async move {
                    r.notified().await;
                    Ok::<_, String>(b)
                }
            })
            .expect("start");
        let client_node = dialer().await;
        introduce(&client_node, &server_node);
        let cfg = quick().with_read_timeout(Duration::from_millis(500));
        let peer = server_node.peer_id();
        let (result, attempts, took) = timed(&client_node, cfg.clone(), peer, None).await;
        assert_eq!(result, Err(RequestError::ReadTimeout));
        assert_eq!(attempts, 1, "a handler may not be idempotent");
        assert_between(took, cfg.read_timeout, cfg.read_timeout + SLACK);

        let cap = Duration::from_millis(300);
        let (result, _, took) = timed(&client_node, cfg, peer, Some(cap)).await;
        assert_eq!(result, Err(RequestError::Timeout));
        assert_between(took, cap, cap + SLACK);
        release.notify_one();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_takes_the_backoff_budget_and_a_timeout_caps_it() {
    within(async {
        let server_node = node().await;
        busy_responder(&server_node);
        let client_node = dialer().await;
        introduce(&client_node, &server_node);
        let cfg = quick();
        let (lo, hi) = backoff_bounds(&cfg);
        let peer = server_node.peer_id();
        let (result, attempts, took) = timed(&client_node, cfg.clone(), peer, None).await;
        assert_eq!(result, Err(RequestError::Busy("at limit".into())));
        assert_eq!(attempts, u64::from(cfg.max_retries) + 1);
        assert_between(took, lo, hi + SLACK);

        let cap = lo / 2;
        let (result, _, took) = timed(&client_node, cfg, peer, Some(cap)).await;
        assert_eq!(result, Err(RequestError::Timeout));
        assert_between(took, cap, cap + SLACK);
    })
    .await;
}
