//! pointsub inside an application's own libp2p swarm, on tokio, over
//! loopback: the application's behaviour is pointsub + identify + ping,
//! its own loop polls the swarm, and clients, servers and raw connections
//! are built on the behaviour's `Host`.
#![cfg(feature = "tokio-runtime")]

mod bodies;

use std::future::Future;
use std::time::Duration;

use bodies::incompressible;
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use pointsub_tokio::libp2p::{SwarmBuilder, identify, noise, ping, tcp};
use pointsub_tokio::{
    Behaviour, Client, ClientConfig, ClosestOptions, ConnError, Host, Multiaddr, Node, NodeConfig,
    NodeError, OpenStreamError, PeerId, RequestError, Server, ServerConfig, TokioRuntime,
};
use tokio::sync::{mpsc, oneshot};

const ECHO: &str = "/test/echo/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_tokio::libp2p::swarm::derive_prelude")]
struct AppBehaviour {
    pointsub: Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// What the application's swarm loop saw.
#[derive(Debug)]
enum Report {
    Identified(PeerId),
    Rtt(PeerId, Duration),
}

/// What the test tells the application's swarm loop.
enum Command {
    /// Stop polling the swarm (keep it) until `Resume` or `Drop`.
    Pause,
    Resume,
    /// Drop the swarm.
    Drop,
}

/// One application: its own swarm, driven by its own loop.
struct App {
    host: Host,
    addr: Multiaddr,
    reports: mpsc::UnboundedReceiver<Report>,
    commands: mpsc::UnboundedSender<Command>,
    /// Fires when the loop has dropped the swarm.
    dropped: Option<oneshot::Receiver<()>>,
}

impl App {
    async fn start() -> App {
        let keypair = Keypair::generate_ed25519();
        let pointsub = Behaviour::new(keypair.public().to_peer_id());
        let control = pointsub.control();
        let host = pointsub.host(TokioRuntime::try_current().expect("tokio"));
        let identify = identify::Behaviour::new(identify::Config::new(
            "/embed-test/1".into(),
            keypair.public(),
        ));
        let ping =
            ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200)));
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, || {
                control.yamux_config()
            })
            .expect("tcp")
            .with_behaviour(|_| AppBehaviour {
                pointsub,
                identify,
                ping,
            })
            .expect("behaviour")
            .with_swarm_config(|c| control.swarm_config(c))
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (commands, mut commands_rx) = mpsc::unbounded_channel();
        let (dropped_tx, dropped) = oneshot::channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    command = commands_rx.recv() => match command {
                        Some(Command::Pause) => {
                            // Keep the swarm, poll nothing, until told.
                            match commands_rx.recv().await {
                                Some(Command::Resume) => {}
                                _ => break,
                            }
                        }
                        Some(Command::Resume) => {}
                        Some(Command::Drop) | None => break,
                    },
                    event = swarm.select_next_some() => {
                        let report = match event {
                            SwarmEvent::Behaviour(AppBehaviourEvent::Identify(
                                identify::Event::Received { peer_id, .. },
                            )) => Report::Identified(peer_id),
                            SwarmEvent::Behaviour(AppBehaviourEvent::Ping(ping::Event {
                                peer,
                                result: Ok(rtt),
                                ..
                            })) => Report::Rtt(peer, rtt),
                            SwarmEvent::Behaviour(AppBehaviourEvent::Pointsub(never)) => {
                                match never {}
                            }
                            _ => continue,
                        };
                        let _ = reports_tx.send(report);
                    }
                }
            }
            drop(swarm);
            let _ = dropped_tx.send(());
        });
        App {
            host,
            addr,
            reports,
            commands,
            dropped: Some(dropped),
        }
    }

    fn peer_id(&self) -> PeerId {
        self.host.peer_id()
    }

    /// Drops the application's swarm, and waits until it is gone.
    async fn drop_swarm(&mut self) {
        let _ = self.commands.send(Command::Drop);
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.await;
        }
    }

    /// Waits until the loop has reported identify from `peer` and at least
    /// one ping RTT to it.
    async fn identified_and_pinged(&mut self, peer: PeerId) -> Duration {
        let mut identified = false;
        let mut rtt = None;
        while !identified || rtt.is_none() {
            match self.reports.recv().await.expect("swarm loop running") {
                Report::Identified(p) if p == peer => identified = true,
                Report::Rtt(p, d) if p == peer => rtt = Some(d),
                _ => {}
            }
        }
        rtt.unwrap_or_default()
    }
}

/// A server on `host` answering `ECHO` with `name: body`.
fn named_echo(host: &Host, name: &'static str) -> Server {
    let server = Server::new(host, ServerConfig::default()).expect("server");
    server
        .start(ECHO, move |_peer, body: Bytes| async move {
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&body);
            Ok::<_, String>(Bytes::from(out))
        })
        .expect("start");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_swarms_serve_and_send_both_ways_beside_identify_and_ping() {
    within(async {
        let mut a = App::start().await;
        let mut b = App::start().await;
        let _sa = named_echo(&a.host, "a");
        let _sb = named_echo(&b.host, "b");
        // Everything was declared through the helpers: no warning.
        assert!(a.host.control().stream_limits().all_set());

        b.host.add_address(a.peer_id(), a.addr.clone());
        let client_b = Client::new(&b.host, ClientConfig::default()).expect("client");
        let client_a = Client::new(&a.host, ClientConfig::default()).expect("client");
        assert_eq!(client_a.host().peer_id(), a.peer_id());
        for i in 0..20u8 {
            let reply = client_b
                .send(a.peer_id(), ECHO, Bytes::from(vec![i]))
                .await
                .expect("b -> a");
            assert_eq!(&reply[..], &[b'a', b':', i][..]);
            // a knows no address of b: its stream rides on b's connection.
            let reply = client_a
                .send(b.peer_id(), ECHO, Bytes::from(vec![i]))
                .await
                .expect("a -> b");
            assert_eq!(&reply[..], &[b'b', b':', i][..]);
        }
        assert_eq!(client_b.metrics().succeeded, 20);
        assert_eq!(client_a.metrics().succeeded, 20);
        // One connection between the two applications, shared by all.
        assert_eq!(a.host.control().connected_peers(), vec![b.peer_id()]);
        assert_eq!(b.host.control().connected_peers(), vec![a.peer_id()]);

        // The other behaviours are undisturbed.
        let rtt_a = a.identified_and_pinged(b.peer_id()).await;
        let rtt_b = b.identified_and_pinged(a.peer_id()).await;
        assert!(rtt_a < Duration::from_secs(5) && rtt_b < Duration::from_secs(5));
        // And pointsub still works after them.
        let reply = client_b
            .send(a.peer_id(), ECHO, Bytes::from("again"))
            .await
            .expect("b -> a");
        assert_eq!(&reply[..], b"a:again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_swarm_and_plain_node_talk_both_ways() {
    within(async {
        let mut app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let _app_server = named_echo(&app.host, "app");
        let _node_server = named_echo(&node, "node");

        let app_client = Client::new(&app.host, ClientConfig::default()).expect("client");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let reply = app_client
            .send(node.peer_id(), ECHO, Bytes::from("x"))
            .await
            .expect("app -> node");
        assert_eq!(&reply[..], b"node:x");

        let node_client = Client::new(&node, ClientConfig::default()).expect("client");
        let reply = node_client
            .send(app.peer_id(), ECHO, Bytes::from("y"))
            .await
            .expect("node -> app");
        assert_eq!(&reply[..], b"app:y");

        // A node does not speak identify: the application's identify
        // reports nothing from it, and pointsub does not mind. Ping, which
        // the node does not speak either, is just as silent; the
        // application's swarm stays up and serving.
        let reply = node_client
            .send(app.peer_id(), ECHO, Bytes::from("z"))
            .await
            .expect("node -> app");
        assert_eq!(&reply[..], b"app:z");
        app.drop_swarm().await;
    })
    .await;
}

/// A node's noise coalesces its flushes under yamux
/// (`pointsub_tokio::coalesce`); the application's swarm runs libp2p's
/// plain noise. Large bodies, many frames each and several at once, cross
/// between the two both ways intact: the wire format is the same, and a
/// deferred flush always happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_between_plain_and_coalesced_noise() {
    within(async {
        let mut app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let _app_server = named_echo(&app.host, "app");
        let _node_server = named_echo(&node, "node");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let app_client = Client::new(&app.host, ClientConfig::default()).expect("client");
        let node_client = Client::new(&node, ClientConfig::default()).expect("client");
        // One small request first, so the node knows the application's
        // addresses (it learns them from the connection).
        app_client
            .send(node.peer_id(), ECHO, Bytes::from("hi"))
            .await
            .expect("app -> node");

        // Sizes around the 16 KiB frame and the 64 KiB noise message, up
        // to 3 MiB; six at once each way.
        let sizes = [
            16 * 1024 - 1,
            16 * 1024 + 1,
            64 * 1024 + 7,
            300_001,
            1024 * 1024,
            3 * 1024 * 1024 + 5,
        ];
        let mut sends = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let body = incompressible(len, i as u64 + 1);
            let (c, to) = (app_client.clone(), node.peer_id());
            sends.push(tokio::spawn(async move {
                (c.send(to, ECHO, body.clone()).await, "node:", body)
            }));
            let body = incompressible(len, i as u64 + 100);
            let (c, to) = (node_client.clone(), app.peer_id());
            sends.push(tokio::spawn(async move {
                (c.send(to, ECHO, body.clone()).await, "app:", body)
            }));
        }
        for send in sends {
            let (reply, name, body) = send.await.expect("task");
            let reply = reply.expect("large body");
            assert_eq!(&reply[..name.len()], name.as_bytes());
            assert!(
                reply[name.len()..] == body[..],
                "a {} B body came back altered",
                body.len()
            );
        }
        app.drop_swarm().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_closest_fails_over_between_user_swarms() {
    within(async {
        let client_app = App::start().await;
        let mut servers = Vec::new();
        let mut apps = Vec::new();
        for _ in 0..3 {
            let app = App::start().await;
            let me = app.peer_id();
            let server = Server::new(&app.host, ServerConfig::default()).expect("server");
            server
                .start(ECHO, move |_p, _b: Bytes| async move {
                    Ok::<_, String>(Bytes::from(me.to_bytes()))
                })
                .expect("start");
            client_app.host.add_address(me, app.addr.clone());
            servers.push(server);
            apps.push(app);
        }
        let client = Client::new(&client_app.host, ClientConfig::default()).expect("client");
        for app in &apps {
            assert_eq!(client.add_server_node(ECHO, app.peer_id()), Ok(true));
        }
        let key = Bytes::from("routing key 7");
        let options = || ClosestOptions::default().with_routing_key(key.clone());
        let first = client
            .send_closest_with(ECHO, Bytes::from("a"), options())
            .await
            .expect("closest");
        assert_eq!(first.body, first.peer.to_bytes());

        // The closest application's whole swarm goes away: requests for the
        // same key fail over to the next closest.
        let index = apps
            .iter()
            .position(|a| a.peer_id() == first.peer)
            .expect("one of ours");
        apps[index].drop_swarm().await;
        assert!(apps[index].host.control().is_shut_down());
        // Its server stopped by itself with the swarm.
        for _ in 0..100 {
            if servers[index].is_stopped() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(servers[index].is_stopped());
        for i in 0..5u8 {
            let r = client
                .send_closest_with(ECHO, Bytes::from(vec![i]), options())
                .await
                .expect("failed over");
            assert_ne!(r.peer, first.peer);
            assert_eq!(r.body, r.peer.to_bytes());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_over_user_swarms() {
    within(async {
        let a = App::start().await;
        let b = App::start().await;
        let mut listener = a.host.listen("/test/chat/1").expect("listen");
        assert_eq!(listener.local_peer_id(), a.peer_id());
        b.host.add_address(a.peer_id(), a.addr.clone());
        let accept = tokio::spawn(async move {
            let mut conn = listener.accept().await.expect("accept");
            let peer = conn.peer();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.expect("read");
            conn.write_all(b"pong!").await.expect("write");
            conn.close().await.expect("close");
            (peer, buf)
        });
        let mut conn = b
            .host
            .dial(a.peer_id(), "/test/chat/1")
            .await
            .expect("dial");
        conn.write_all(b"ping!").await.expect("write");
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply, b"pong!");
        let (peer, request) = accept.await.expect("accept task");
        assert_eq!(peer, b.peer_id());
        assert_eq!(&request, b"ping!");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_user_swarm_ends_requests_at_once() {
    within(async {
        let mut app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let slow = Server::new(&node, ServerConfig::default()).expect("server");
        slow.start(ECHO, move |_p, body: Bytes| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(body)
            }
        })
        .expect("start");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let client = Client::new(&app.host, ClientConfig::default()).expect("client");
        let in_flight = tokio::spawn({
            let client = client.clone();
            let peer = node.peer_id();
            async move { client.send(peer, ECHO, Bytes::from("x")).await }
        });
        started.recv().await.expect("the handler got the request");

        let dropped_at = tokio::time::Instant::now();
        app.drop_swarm().await;
        let result = in_flight.await.expect("request task");
        assert_eq!(result, Err(RequestError::Closed));
        assert!(!RequestError::Closed.is_retryable());
        // "At once": far below any retry budget or timeout.
        assert!(dropped_at.elapsed() < Duration::from_secs(5));
        assert!(client.is_closed());
        let later = client.send(node.peer_id(), ECHO, Bytes::from("y")).await;
        assert_eq!(later, Err(RequestError::Closed));

        let err = app
            .host
            .dial(node.peer_id(), "/test/chat/1")
            .await
            .expect_err("swarm gone");
        assert_eq!(err, ConnError::Open(OpenStreamError::Shutdown));
        let mut listener = app.host.listen("/test/chat/2").expect("listen");
        assert_eq!(listener.accept().await.err(), Some(ConnError::Closed));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpolled_user_swarm_fails_instead_of_hanging_and_recovers() {
    within(async {
        let app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let _server = named_echo(&node, "node");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let config = ClientConfig::default()
            .with_connect_timeout(Duration::from_secs(2))
            .with_max_retries(1);
        let client = Client::new(&app.host, config).expect("client");

        let _ = app.commands.send(Command::Pause);
        tokio::time::sleep(Duration::from_millis(100)).await;

        // A raw dial: the swarm never looks at it.
        let started = tokio::time::Instant::now();
        let err = app
            .host
            .dial(node.peer_id(), "/test/chat/1")
            .await
            .expect_err("swarm paused");
        assert!(
            matches!(err, ConnError::Open(OpenStreamError::NotPolled { .. })),
            "{err:?}"
        );
        assert!(err.is_retryable());
        assert!(started.elapsed() >= pointsub_tokio::NOT_POLLED_TIMEOUT);

        // A request ends with a typed error within its budget.
        let err = client
            .send(node.peer_id(), ECHO, Bytes::from("x"))
            .await
            .expect_err("swarm paused");
        assert!(
            matches!(
                err,
                RequestError::ConnectTimeout | RequestError::ConnectFailed(_)
            ),
            "{err:?}"
        );
        assert!(!client.is_closed());

        // Polling again, everything works again.
        let _ = app.commands.send(Command::Resume);
        let reply = client
            .send(node.peer_id(), ECHO, Bytes::from("y"))
            .await
            .expect("after resume");
        assert_eq!(&reply[..], b"node:y");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limits_are_declared_by_the_helpers() {
    let behaviour = Behaviour::new(PeerId::random());
    let control = behaviour.control();
    assert!(!control.stream_limits().yamux);
    assert!(!control.stream_limits().negotiating_inbound);
    let _ = control.yamux_config();
    assert!(control.stream_limits().yamux);
    assert!(!control.stream_limits().all_set());
    let _ = control.swarm_config(libp2p_config());
    assert!(control.stream_limits().all_set());

    let other = Behaviour::new(PeerId::random()).control();
    other.assume_stream_limits();
    assert!(other.stream_limits().all_set());

    // A node sets both itself.
    let node = Node::new(NodeConfig::default()).await.expect("node");
    assert!(node.control().stream_limits().all_set());
}

/// Log output, captured.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Polls a swarm built with or without pointsub's helpers on this thread
/// until it listens, and returns what pointsub logged meanwhile.
async fn start_up_log(with_helpers: bool) -> String {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let keypair = Keypair::generate_ed25519();
    let behaviour = Behaviour::new(keypair.public().to_peer_id());
    let control = behaviour.control();
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let mut swarm = if with_helpers {
        builder
            .with_tcp(tcp::Config::default(), noise::Config::new, || {
                control.yamux_config()
            })
            .expect("tcp")
            .with_behaviour(|_| behaviour)
            .expect("behaviour")
            .with_swarm_config(|c| control.swarm_config(c))
            .build()
    } else {
        builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                pointsub_tokio::libp2p::yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| behaviour)
            .expect("behaviour")
            .build()
    };
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    loop {
        if let SwarmEvent::NewListenAddr { .. } = swarm.select_next_some().await {
            break;
        }
    }
    captured.text()
}

// current_thread: the swarm is polled on the thread whose log is captured.
#[tokio::test]
async fn a_swarm_left_at_libp2p_defaults_is_warned_about_at_start() {
    within(async {
        let log = start_up_log(false).await;
        assert!(log.contains("WARN"), "{log}");
        assert!(
            log.contains("yamux was not configured with pointsub's limit of 1024"),
            "{log}"
        );
        assert!(
            log.contains("default of 128 inbound streams negotiate at once"),
            "{log}"
        );
        let log = start_up_log(true).await;
        assert!(!log.contains("pointsub:"), "{log}");
    })
    .await;
}

fn libp2p_config() -> pointsub_tokio::libp2p::swarm::Config {
    pointsub_tokio::libp2p::swarm::Config::with_tokio_executor()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_swarm_refuses_a_behaviour_made_for_another_peer() {
    let keypair = Keypair::generate_ed25519();
    let wrong = PeerId::random();
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            pointsub_tokio::node::yamux_config,
        )
        .expect("tcp")
        .with_behaviour(|_| Behaviour::new(wrong))
        .expect("behaviour")
        .build();
    let err = Node::from_swarm(swarm, TokioRuntime::try_current().expect("tokio"), [])
        .await
        .expect_err("mismatch");
    assert_eq!(err, NodeError::PeerIdMismatch { behaviour: wrong });
}
