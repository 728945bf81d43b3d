//! pointsub inside an application's own libp2p swarm, under smol, over
//! loopback: the application's behaviour is pointsub + identify + ping,
//! its own loop (a smol task) polls the swarm, and clients, servers and
//! raw connections are built on the behaviour's `Host`.

mod common;

use std::time::{Duration, Instant};

use async_io::Timer;
use bytes::Bytes;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use pointsub_async_std::libp2p::identity::Keypair;
use pointsub_async_std::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use pointsub_async_std::libp2p::{Swarm, identify, ping};
use pointsub_async_std::transport::Config as TcpConfig;
use pointsub_async_std::{
    AsyncStdRuntime, Behaviour, Client, ClientConfig, ClosestOptions, ConnError, Host, Multiaddr,
    Node, NodeConfig, OpenStreamError, PeerId, RequestError, RuntimeExecutor, Server, ServerConfig,
    build_transport,
};

const ECHO: &str = "/test/echo/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn run<F: std::future::Future<Output = ()>>(test: F) {
    smol::block_on(async {
        futures::pin_mut!(test);
        if let futures::future::Either::Right(_) =
            futures::future::select(test, Timer::after(TEST_TIMEOUT)).await
        {
            panic!("test timed out after {TEST_TIMEOUT:?}");
        }
    });
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_async_std::libp2p::swarm::derive_prelude")]
struct AppBehaviour {
    pointsub: Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[derive(Debug)]
enum Report {
    Identified(PeerId),
    Rtt(PeerId, Duration),
}

enum Command {
    Pause,
    Resume,
    Drop,
}

/// One application: its own swarm, driven by its own smol task.
struct App {
    host: Host,
    addr: Multiaddr,
    reports: mpsc::UnboundedReceiver<Report>,
    commands: mpsc::UnboundedSender<Command>,
    dropped: Option<oneshot::Receiver<()>>,
}

impl App {
    async fn start() -> App {
        let keypair = Keypair::generate_ed25519();
        let peer_id = keypair.public().to_peer_id();
        let pointsub = Behaviour::new(peer_id);
        let control = pointsub.control();
        let runtime = AsyncStdRuntime::new();
        let host = pointsub.host(runtime.clone());
        let transport = build_transport(
            &keypair,
            TcpConfig::default(),
            control.yamux_config(),
            Duration::from_secs(5),
        )
        .expect("transport");
        let behaviour = AppBehaviour {
            pointsub,
            identify: identify::Behaviour::new(identify::Config::new(
                "/embed-test/1".into(),
                keypair.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(200)),
            ),
        };
        let config = control.swarm_config(
            pointsub_async_std::libp2p::swarm::Config::with_executor(RuntimeExecutor(runtime)),
        );
        let mut swarm = Swarm::new(transport, behaviour, peer_id, config);
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let (reports_tx, reports) = mpsc::unbounded();
        let (commands, mut commands_rx) = mpsc::unbounded();
        let (dropped_tx, dropped) = oneshot::channel();
        smol::spawn(async move {
            loop {
                futures::select! {
                    command = commands_rx.next() => match command {
                        Some(Command::Pause) => match commands_rx.next().await {
                            Some(Command::Resume) => {}
                            _ => break,
                        },
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
                        let _ = reports_tx.unbounded_send(report);
                    }
                }
            }
            drop(swarm);
            let _ = dropped_tx.send(());
        })
        .detach();
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

    async fn drop_swarm(&mut self) {
        let _ = self.commands.unbounded_send(Command::Drop);
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.await;
        }
    }

    async fn identified_and_pinged(&mut self, peer: PeerId) -> Duration {
        let mut identified = false;
        let mut rtt = None;
        while !identified || rtt.is_none() {
            match self.reports.next().await.expect("swarm loop running") {
                Report::Identified(p) if p == peer => identified = true,
                Report::Rtt(p, d) if p == peer => rtt = Some(d),
                _ => {}
            }
        }
        rtt.unwrap_or_default()
    }
}

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

#[test]
fn user_swarms_serve_and_send_both_ways_beside_identify_and_ping() {
    run(async {
        let mut a = App::start().await;
        let mut b = App::start().await;
        let _sa = named_echo(&a.host, "a");
        let _sb = named_echo(&b.host, "b");
        assert!(a.host.control().stream_limits().all_set());
        b.host.add_address(a.peer_id(), a.addr.clone());
        let client_b = Client::new(&b.host, ClientConfig::default()).expect("client");
        let client_a = Client::new(&a.host, ClientConfig::default()).expect("client");
        for i in 0..20u8 {
            let reply = client_b
                .send(a.peer_id(), ECHO, Bytes::from(vec![i]))
                .await
                .expect("b -> a");
            assert_eq!(&reply[..], &[b'a', b':', i][..]);
            let reply = client_a
                .send(b.peer_id(), ECHO, Bytes::from(vec![i]))
                .await
                .expect("a -> b");
            assert_eq!(&reply[..], &[b'b', b':', i][..]);
        }
        assert_eq!(a.host.control().connected_peers(), vec![b.peer_id()]);
        let rtt_a = a.identified_and_pinged(b.peer_id()).await;
        let rtt_b = b.identified_and_pinged(a.peer_id()).await;
        assert!(rtt_a < Duration::from_secs(5) && rtt_b < Duration::from_secs(5));
        let reply = client_b
            .send(a.peer_id(), ECHO, Bytes::from("again"))
            .await
            .expect("b -> a");
        assert_eq!(&reply[..], b"a:again");
    });
}

#[test]
fn user_swarm_and_plain_node_talk_both_ways() {
    run(async {
        let app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let _app_server = named_echo(&app.host, "app");
        let _node_server = named_echo(&node, "node");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let app_client = Client::new(&app.host, ClientConfig::default()).expect("client");
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
    });
}

#[test]
fn send_closest_fails_over_between_user_swarms() {
    run(async {
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
        let client = Client::new(&client_app.host, common::client_config()).expect("client");
        for app in &apps {
            assert_eq!(client.add_server_node(ECHO, app.peer_id()), Ok(true));
        }
        let key = Bytes::from("routing key 7");
        let options = || ClosestOptions::default().with_routing_key(key.clone());
        let first = client
            .send_closest_with(ECHO, Bytes::from("a"), options())
            .await
            .expect("closest");
        let index = apps
            .iter()
            .position(|a| a.peer_id() == first.peer)
            .expect("one of ours");
        apps[index].drop_swarm().await;
        assert!(apps[index].host.control().is_shut_down());
        for i in 0..5u8 {
            let r = client
                .send_closest_with(ECHO, Bytes::from(vec![i]), options())
                .await
                .expect("failed over");
            assert_ne!(r.peer, first.peer);
            assert_eq!(r.body, r.peer.to_bytes());
        }
        // Its server stopped by itself with the swarm.
        for _ in 0..100 {
            if servers[index].is_stopped() {
                break;
            }
            Timer::after(Duration::from_millis(20)).await;
        }
        assert!(servers[index].is_stopped());
    });
}

#[test]
fn conn_over_user_swarms() {
    run(async {
        let a = App::start().await;
        let b = App::start().await;
        let mut listener = a.host.listen("/test/chat/1").expect("listen");
        b.host.add_address(a.peer_id(), a.addr.clone());
        let accept = async {
            let mut conn = listener.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.expect("read");
            conn.write_all(b"pong!").await.expect("write");
            conn.close().await.expect("close");
            (conn.peer(), buf)
        };
        let dial = async {
            let mut conn = b
                .host
                .dial(a.peer_id(), "/test/chat/1")
                .await
                .expect("dial");
            conn.write_all(b"ping!").await.expect("write");
            let mut reply = Vec::new();
            conn.read_to_end(&mut reply).await.expect("read");
            reply
        };
        let ((peer, request), reply) = futures::join!(accept, dial);
        assert_eq!(reply, b"pong!");
        assert_eq!(peer, b.peer_id());
        assert_eq!(&request, b"ping!");
    });
}

#[test]
fn dropped_user_swarm_ends_requests_at_once() {
    run(async {
        let mut app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let (started_tx, mut started) = mpsc::unbounded();
        let slow = Server::new(&node, ServerConfig::default()).expect("server");
        slow.start(ECHO, move |_p, body: Bytes| {
            let started = started_tx.clone();
            async move {
                let _ = started.unbounded_send(());
                Timer::after(Duration::from_secs(60)).await;
                Ok::<_, String>(body)
            }
        })
        .expect("start");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let client = Client::new(&app.host, ClientConfig::default()).expect("client");
        let in_flight = client.send(node.peer_id(), ECHO, Bytes::from("x"));
        let drop_it = async {
            started.next().await.expect("the handler got the request");
            let at = Instant::now();
            app.drop_swarm().await;
            at
        };
        let (result, dropped_at) = futures::join!(in_flight, drop_it);
        assert_eq!(result, Err(RequestError::Closed));
        assert!(dropped_at.elapsed() < Duration::from_secs(5));
        assert!(client.is_closed());
        let err = app
            .host
            .dial(node.peer_id(), "/test/chat/1")
            .await
            .expect_err("swarm gone");
        assert_eq!(err, ConnError::Open(OpenStreamError::Shutdown));
    });
}

#[test]
fn unpolled_user_swarm_fails_instead_of_hanging_and_recovers() {
    run(async {
        let app = App::start().await;
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let _server = named_echo(&node, "node");
        for addr in node.listen_addrs() {
            app.host.add_address(node.peer_id(), addr);
        }
        let _ = app.commands.unbounded_send(Command::Pause);
        Timer::after(Duration::from_millis(100)).await;
        let started = Instant::now();
        let err = app
            .host
            .dial(node.peer_id(), "/test/chat/1")
            .await
            .expect_err("swarm paused");
        assert!(
            matches!(err, ConnError::Open(OpenStreamError::NotPolled { .. })),
            "{err:?}"
        );
        assert!(started.elapsed() >= pointsub_async_std::NOT_POLLED_TIMEOUT);
        let _ = app.commands.unbounded_send(Command::Resume);
        let client = Client::new(&app.host, ClientConfig::default()).expect("client");
        let reply = client
            .send(node.peer_id(), ECHO, Bytes::from("y"))
            .await
            .expect("after resume");
        assert_eq!(&reply[..], b"node:y");
    });
}
