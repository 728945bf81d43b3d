//! Server discovery on loopback, in swarms the test composes itself
//! (pointsub + identify + Kademlia providers), as an application would:
//!
//! - identify: a client that opted in sees servers become server nodes as
//!   they start a protocol and leave as they stop it or disconnect; nodes
//!   added by hand stay;
//! - Kademlia: a client that knows only a bootstrap peer finds the servers
//!   of a protocol through provider records (with their addresses), and
//!   `send_closest` picks the XOR-closest of them.
#![cfg(feature = "tokio-runtime")]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pointsub_tokio::discovery::{Providers, ProvidersControl, kad_config};
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::libp2p::kad::{self, store::MemoryStore};
use pointsub_tokio::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use pointsub_tokio::libp2p::{Swarm, SwarmBuilder, identify, noise, tcp};
use pointsub_tokio::proto::route::key_hash;
use pointsub_tokio::{
    Behaviour, Client, ClientConfig, Host, Multiaddr, NodeSource, PeerId, Server, ServerConfig,
    TokioRuntime,
};
use tokio::sync::mpsc;

const ECHO: &str = "/test/discovery-echo/1";
const OTHER: &str = "/test/discovery-other/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a change may take to show (generous: the CPU is shared).
const SETTLE: Duration = Duration::from_secs(30);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

/// Polls `check` until it holds, or panics with `what` after [`SETTLE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not true after {SETTLE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_tokio::libp2p::swarm::derive_prelude")]
struct AppBehaviour {
    pointsub: Behaviour,
    identify: identify::Behaviour,
    providers: Providers,
}

type Job = Box<dyn FnOnce(&mut Swarm<AppBehaviour>) + Send>;

/// One application: its own swarm, driven by its own loop.
struct App {
    host: Host,
    peer: PeerId,
    addr: Multiaddr,
    providers: ProvidersControl,
    jobs: mpsc::UnboundedSender<Job>,
}

impl App {
    async fn start(kad_mode: kad::Mode, announce: bool) -> App {
        let keypair = Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let pointsub = Behaviour::new(peer);
        let control = pointsub.control();
        let host = pointsub.host(TokioRuntime::try_current().expect("tokio"));
        let identify = identify::Behaviour::new(identify::Config::new(
            "/discovery-test/1".into(),
            keypair.public(),
        ));
        let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_config());
        kad.set_mode(Some(kad_mode));
        let providers = Providers::new(kad, &control).with_announce(announce);
        let providers_control = providers.control();
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, || {
                control.yamux_config()
            })
            .expect("tcp")
            .with_behaviour(|_| AppBehaviour {
                pointsub,
                identify,
                providers,
            })
            .expect("behaviour")
            .with_swarm_config(|c| {
                control
                    .swarm_config(c)
                    .with_idle_connection_timeout(Duration::from_secs(120))
            })
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        // Its provider records carry this address.
        swarm.add_external_address(addr.clone());
        let (jobs, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    job = jobs_rx.recv() => match job {
                        Some(job) => job(&mut swarm),
                        None => break,
                    },
                    _ = swarm.select_next_some() => {}
                }
            }
        });
        App {
            host,
            peer,
            addr,
            providers: providers_control,
            jobs,
        }
    }

    fn run(&self, job: impl FnOnce(&mut Swarm<AppBehaviour>) + Send + 'static) {
        self.jobs.send(Box::new(job)).expect("swarm loop running");
    }

    /// Makes `other` this app's Kademlia bootstrap peer.
    async fn bootstrap_from(&self, other: &App) {
        let (peer, addr) = (other.peer, other.addr.clone());
        let (done, ran) = tokio::sync::oneshot::channel();
        self.run(move |swarm| {
            swarm
                .behaviour_mut()
                .providers
                .kad_mut()
                .add_address(&peer, addr);
            let _ = done.send(());
        });
        ran.await.expect("job ran");
    }

    fn client(&self) -> Client {
        Client::new(&self.host, ClientConfig::default()).expect("client")
    }

    fn echo_server(&self, protocol: &str) -> Server {
        let server = Server::new(&self.host, ServerConfig::default()).expect("server");
        server
            .start(protocol, |_peer, body: Bytes| async move {
                Ok::<_, String>(body)
            })
            .expect("start");
        server
    }

    async fn connect(&self, other: &App) {
        self.host.add_address(other.peer, other.addr.clone());
        self.host.connect(other.peer).await.expect("dial");
    }
}

/// The peer of `peers` closest to `body` under pointsub's (and
/// Kademlia's) metric, computed here from scratch.
fn xor_closest(peers: &[PeerId], body: &[u8]) -> PeerId {
    let target = key_hash(body);
    *peers
        .iter()
        .min_by_key(|p| {
            let h = key_hash(&p.to_bytes());
            let mut d = [0u8; 32];
            for i in 0..32 {
                d[i] = h[i] ^ target[i];
            }
            d
        })
        .expect("peers")
}

fn sorted(mut v: Vec<PeerId>) -> Vec<PeerId> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_nodes_follow_servers_starting_and_stopping() {
    within(async {
        let client_app = App::start(kad::Mode::Client, false).await;
        let a = App::start(kad::Mode::Client, false).await;
        let b = App::start(kad::Mode::Client, false).await;
        client_app.connect(&a).await;
        client_app.connect(&b).await;
        let client = client_app.client();
        client.discover(ECHO).expect("discover");
        assert_eq!(client.discovered_protocols(), vec![ECHO.to_owned()]);
        // Connected, but serving nothing: no nodes yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(client.server_nodes(ECHO).is_empty());

        // Servers start: identify pushes the change, the nodes appear.
        let server_a = a.echo_server(ECHO);
        eventually("a becomes a node", || {
            client.server_nodes(ECHO) == vec![a.peer]
        })
        .await;
        assert_eq!(
            client.server_node_sources(ECHO, a.peer),
            vec![NodeSource::Identify]
        );
        let server_b = b.echo_server(ECHO);
        eventually("b becomes a node", || {
            sorted(client.server_nodes(ECHO)) == sorted(vec![a.peer, b.peer])
        })
        .await;
        // A protocol nobody watches makes no nodes.
        let _other = a.echo_server(OTHER);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(client.server_nodes(OTHER).is_empty());

        // send_closest uses them, closest first.
        for i in 0..8 {
            let body = Bytes::from(format!("key {i}"));
            let response = client
                .send_closest(ECHO, body.clone())
                .await
                .expect("send_closest");
            assert_eq!(response.body, body);
            assert_eq!(response.peer, xor_closest(&[a.peer, b.peer], &body));
        }

        // b is also added by hand: it stays whatever identify says.
        assert_eq!(client.add_server_node(ECHO, b.peer), Ok(false));
        assert_eq!(
            client.server_node_sources(ECHO, b.peer),
            vec![NodeSource::Manual, NodeSource::Identify]
        );

        // Servers stop: a leaves, b (manual) stays.
        drop(server_a);
        drop(server_b);
        eventually("a leaves", || client.server_nodes(ECHO) == vec![b.peer]).await;
        eventually("b is manual only", || {
            client.server_node_sources(ECHO, b.peer) == vec![NodeSource::Manual]
        })
        .await;

        // a serves again: back; then a disconnects: gone.
        let _server_a = a.echo_server(ECHO);
        eventually("a is back", || client.server_nodes(ECHO).contains(&a.peer)).await;
        a.run(|swarm| {
            let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
            for p in peers {
                let _ = swarm.disconnect_peer_id(p);
            }
        });
        eventually("a leaves on disconnect", || {
            client.server_nodes(ECHO) == vec![b.peer]
        })
        .await;
        assert_eq!(client.server_nodes(ECHO), vec![b.peer]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_discovery_withdraws_identify_nodes_only() {
    within(async {
        let client_app = App::start(kad::Mode::Client, false).await;
        let a = App::start(kad::Mode::Client, false).await;
        let b = App::start(kad::Mode::Client, false).await;
        let _server_a = a.echo_server(ECHO);
        let _server_b = b.echo_server(ECHO);
        client_app.connect(&a).await;
        client_app.connect(&b).await;
        let client = client_app.client();
        // Servers already connected and identified count at once.
        eventually("identify ran", || {
            client_app
                .host
                .control()
                .peers_supporting(&pointsub_tokio::StreamProtocol::new(ECHO))
                .len()
                == 2
        })
        .await;
        client.discover(ECHO).expect("discover");
        assert_eq!(
            sorted(client.server_nodes(ECHO)),
            sorted(vec![a.peer, b.peer])
        );
        client.add_server_node(ECHO, a.peer).expect("add");
        assert_eq!(client.stop_discovery(ECHO), vec![b.peer]);
        assert_eq!(client.server_nodes(ECHO), vec![a.peer]);
        assert!(client.discovered_protocols().is_empty());
        // Hand removal takes the rest out.
        client.remove_server_node(ECHO, a.peer).expect("remove");
        assert!(client.server_nodes(ECHO).is_empty());
        // Invalid names are refused.
        assert!(client.discover("no-slash").is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_providers_feed_send_closest() {
    within(async {
        // The bootstrap node: Kademlia server mode, serves nothing.
        let bootstrap = App::start(kad::Mode::Server, true).await;
        // Servers stay in client mode (as behind NAT): only their provider
        // records tell where they are.
        let mut servers = Vec::new();
        let mut handlers = Vec::new();
        for _ in 0..3 {
            let s = App::start(kad::Mode::Client, true).await;
            if servers.is_empty() {
                // The first announces before it knows any peer: its
                // record goes out once it learns the bootstrap peer.
                handlers.push(s.echo_server(ECHO));
                tokio::time::sleep(Duration::from_millis(200)).await;
                s.bootstrap_from(&bootstrap).await;
            } else {
                s.bootstrap_from(&bootstrap).await;
                handlers.push(s.echo_server(ECHO));
            }
            servers.push(s);
        }
        let server_peers: Vec<PeerId> = servers.iter().map(|s| s.peer).collect();
        eventually("servers announce", || {
            servers
                .iter()
                .all(|s| s.providers.announced().iter().any(|p| p.as_ref() == ECHO))
        })
        .await;

        // The client knows only the bootstrap peer.
        let client_app = App::start(kad::Mode::Client, false).await;
        client_app.bootstrap_from(&bootstrap).await;
        let client = client_app.client();
        let deadline = tokio::time::Instant::now() + SETTLE;
        let found = loop {
            let found = client
                .discover_providers(&client_app.providers, ECHO)
                .await
                .expect("lookup");
            if found.len() == servers.len() || tokio::time::Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(sorted(found), sorted(server_peers.clone()));
        assert_eq!(
            sorted(client.server_nodes(ECHO)),
            sorted(server_peers.clone())
        );
        for s in &servers {
            assert_eq!(
                client.server_node_sources(ECHO, s.peer),
                vec![NodeSource::Kademlia]
            );
            // The record's address was kept for the dial.
            assert!(
                client_app
                    .host
                    .control()
                    .addresses_of(&s.peer)
                    .contains(&s.addr),
                "address of {} kept",
                s.peer
            );
        }
        for i in 0..10 {
            let body = Bytes::from(format!("routing key {i}"));
            let response = client
                .send_closest(ECHO, body.clone())
                .await
                .expect("send_closest");
            assert_eq!(response.body, body);
            assert_eq!(response.peer, xor_closest(&server_peers, &body));
        }

        // A lookup of a protocol nobody provides finds nobody.
        let none = client
            .discover_providers(&client_app.providers, OTHER)
            .await
            .expect("lookup");
        assert!(none.is_empty());

        // A server that stops is no longer announced by it.
        drop(handlers.remove(0));
        eventually("stopped server withdraws", || {
            servers[0].providers.announced().is_empty()
        })
        .await;
    })
    .await;
}
