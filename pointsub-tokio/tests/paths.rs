//! Which connection carries pointsub's streams, on loopback, through an
//! in-process relay (libp2p's relay v2 server in a small swarm of its own).
//!
//! - A client reaches a server only through the relay's circuit; then a
//!   direct connection appears (as hole punching would make one). New
//!   requests go on the direct connection, the pooled streams on the
//!   relayed one finish their requests and close, and no request fails
//!   across the switch.
//! - A relay with tiny circuit limits ends circuits in the middle of
//!   traffic: every request ends (its answer or a typed error, never a
//!   hang), and new requests take the next path: a fresh circuit, or the
//!   direct connection once there is one.
#![cfg(feature = "tokio-runtime")]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use pointsub_tokio::libp2p::{SwarmBuilder, noise, relay, tcp, yamux};
use pointsub_tokio::{
    Behaviour, Client, ClientConfig, Host, Multiaddr, PeerId, RequestError, Server, ServerConfig,
    TokioRuntime,
};
use tokio::sync::mpsc;

const ECHO: &str = "/test/paths/echo/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// No single request may take longer than this: past it, it hangs.
const REQUEST_BOUND: Duration = Duration::from_secs(60);

/// Bound on waiting for something the test expects to happen.
const EVENTUALLY: Duration = Duration::from_secs(30);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

/// Polls `check` every 20 ms until it holds, or panics after [`EVENTUALLY`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_tokio::libp2p::swarm::derive_prelude")]
struct RelayServer {
    relay: relay::Behaviour,
}

/// Starts a relay on loopback with `config`; returns its address
/// (`…/p2p/<relay id>`). Its swarm runs until the test's runtime ends.
async fn start_relay(config: relay::Config) -> Multiaddr {
    let keypair = Keypair::generate_ed25519();
    let id = keypair.public().to_peer_id();
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| RelayServer {
            relay: relay::Behaviour::new(id, config),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    // libp2p-relay refuses reservations until the relay has a confirmed
    // external address.
    swarm.add_external_address(addr.clone());
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    addr.with(Protocol::P2p(id))
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_tokio::libp2p::swarm::derive_prelude")]
struct PeerBehaviour {
    pointsub: Behaviour,
    relay: relay::client::Behaviour,
}

/// An application swarm with pointsub and a relay client.
struct Peer {
    host: Host,
    /// Its direct (TCP loopback) listen address, without `/p2p`.
    direct: Multiaddr,
    /// Its relay client's events.
    relay_events: mpsc::UnboundedReceiver<relay::client::Event>,
    listen: mpsc::UnboundedSender<Multiaddr>,
    /// Addresses it listens on, as they come.
    new_addrs: mpsc::UnboundedReceiver<Multiaddr>,
}

impl Peer {
    async fn start() -> Peer {
        let keypair = Keypair::generate_ed25519();
        let pointsub = Behaviour::new(keypair.public().to_peer_id());
        let control = pointsub.control();
        let control2 = control.clone();
        let host = pointsub.host(TokioRuntime::try_current().expect("tokio"));
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, || {
                control.yamux_config()
            })
            .expect("tcp")
            .with_relay_client(noise::Config::new, move || control2.yamux_config())
            .expect("relay client")
            .with_behaviour(|_, relay| PeerBehaviour { pointsub, relay })
            .expect("behaviour")
            .with_swarm_config(|c| {
                control
                    .swarm_config(c)
                    .with_idle_connection_timeout(Duration::from_secs(60))
            })
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let direct = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let (relay_tx, relay_events) = mpsc::unbounded_channel();
        let (listen, mut listen_rx) = mpsc::unbounded_channel::<Multiaddr>();
        let (addr_tx, new_addrs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    addr = listen_rx.recv() => match addr {
                        Some(addr) => {
                            swarm.listen_on(addr).expect("listen on circuit");
                        }
                        None => break,
                    },
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(PeerBehaviourEvent::Relay(e)) => {
                            let _ = relay_tx.send(e);
                        }
                        SwarmEvent::NewListenAddr { address, .. } => {
                            let _ = addr_tx.send(address);
                        }
                        _ => {}
                    },
                }
            }
        });
        Peer {
            host,
            direct,
            relay_events,
            listen,
            new_addrs,
        }
    }

    fn peer_id(&self) -> PeerId {
        self.host.peer_id()
    }

    /// Reserves a slot on `relay` and returns its circuit address
    /// (`<relay>/p2p-circuit/p2p/<own id>`).
    async fn listen_via(&mut self, relay: &Multiaddr) -> Multiaddr {
        let circuit = relay.clone().with(Protocol::P2pCircuit);
        self.listen.send(circuit.clone()).expect("swarm loop");
        loop {
            match self.relay_events.recv().await.expect("swarm loop") {
                relay::client::Event::ReservationReqAccepted { .. } => break,
                other => tracing_debug(&other),
            }
        }
        // The circuit listen address follows the reservation.
        loop {
            let addr = self.new_addrs.recv().await.expect("swarm loop");
            if addr.iter().any(|p| p == Protocol::P2pCircuit) {
                break;
            }
        }
        circuit.with(Protocol::P2p(self.peer_id()))
    }
}

fn tracing_debug(event: &relay::client::Event) {
    eprintln!("relay client event: {event:?}");
}

/// An echo server on `host`; the handler waits `delay` first, so that
/// requests are in flight when paths change.
fn echo(host: &Host, delay: Duration) -> Server {
    let server = Server::new(host, ServerConfig::default()).expect("server");
    server
        .start(ECHO, move |_peer, body: Bytes| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, String>(body)
        })
        .expect("start");
    server
}

/// What a load of requests came to.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<RequestError>>,
}

/// Sets its flag when dropped, so that load workers stop even when the
/// test fails half-way (a runtime cannot shut down under busy tasks).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `workers` loops of requests to `server` until `stop` (or the
/// client closes); each request checks its answer and must end within
/// [`REQUEST_BOUND`].
fn load(
    client: &Client,
    server: PeerId,
    workers: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let client = client.clone();
            let stop = stop.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && !client.is_closed() {
                    i += 1;
                    let body = Bytes::from(format!("worker {w} request {i} {}", "x".repeat(600)));
                    let result = tokio::time::timeout(
                        REQUEST_BOUND,
                        client.send(server, ECHO, body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("request {i} of worker {w} hung"));
                    match result {
                        Ok(answer) => {
                            assert_eq!(answer, body, "wrong answer");
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            tally.errors.lock().expect("lock").push(e);
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

async fn finish(workers: Vec<tokio::task::JoinHandle<()>>) {
    for w in workers {
        w.await.expect("load worker panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_move_to_a_direct_connection_and_relayed_ones_drain() {
    within(async {
        let relay = start_relay(relay::Config::default()).await;
        let mut server_peer = Peer::start().await;
        let circuit = server_peer.listen_via(&relay).await;
        let _server = echo(&server_peer.host, Duration::from_millis(20));
        let client_peer = Peer::start().await;
        let server = server_peer.peer_id();

        // Through the relay only.
        let reached = client_peer
            .host
            .connect_addr(circuit.clone())
            .await
            .expect("dial the circuit");
        assert_eq!(reached, server);
        let control = client_peer.host.control().clone();
        let paths = control.connections_to(&server);
        assert!(
            !paths.is_empty() && paths.iter().all(|p| p.relayed),
            "{paths:?}"
        );
        assert!(!control.has_direct_connection(&server));

        let client = Client::new(&client_peer.host, ClientConfig::default()).expect("client");
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let tally = Arc::new(Tally::default());
        let workers = load(&client, server, 8, &stop, &tally);
        eventually("requests succeed through the relay", || {
            tally.ok.load(Ordering::Relaxed) >= 40
        })
        .await;
        let before = client.connections_info();
        assert!(!before.is_empty());
        assert!(
            before.iter().all(|c| c.relayed && c.peer == server),
            "{before:?}"
        );
        let relayed_streams: Vec<_> = before.iter().map(|c| c.stream).collect();

        // A direct connection appears, with requests in flight.
        let switch_at = tally.ok.load(Ordering::Relaxed);
        let direct = client_peer
            .host
            .connect_addr(server_peer.direct.clone())
            .await
            .expect("dial the direct address");
        let direct_up = std::time::Instant::now();
        assert_eq!(direct, server);
        assert!(control.has_direct_connection(&server));
        let best = control.best_path(&server).expect("connected");
        assert!(!best.relayed, "new streams must go direct: {best:?}");
        assert_eq!(control.remote_addr(&server), Some(best.remote_addr.clone()));
        // The relayed connection is still there: only the streams moved.
        assert!(control.connections_to(&server).iter().any(|p| p.relayed));

        // The relayed streams finish and close; new ones are direct.
        eventually("a stream on the direct connection", || {
            client.connections_info().iter().any(|c| !c.relayed)
        })
        .await;
        let first_direct = direct_up.elapsed();
        eventually("every pooled stream is on the direct connection", || {
            let now = client.connections_info();
            !now.is_empty() && now.iter().all(|c| !c.relayed)
        })
        .await;
        let drained = direct_up.elapsed();
        let after = client.connections_info();
        for c in &after {
            assert!(
                !relayed_streams.contains(&c.stream),
                "relayed stream {} still pooled",
                c.stream
            );
            assert_eq!(c.remote_addr.as_ref(), Some(&best.remote_addr));
        }
        let moved_at = tally.ok.load(Ordering::Relaxed);
        eventually("requests keep succeeding on the direct connection", || {
            tally.ok.load(Ordering::Relaxed) >= moved_at + 40
        })
        .await;
        // Nothing went back to the relayed connection.
        assert!(client.connections_info().iter().all(|c| !c.relayed));
        stop.store(true, Ordering::Relaxed);
        finish(workers).await;

        let errors = tally.errors.lock().expect("lock").clone();
        assert!(
            errors.is_empty(),
            "requests failed across the switch: {errors:?}"
        );
        assert!(tally.ok.load(Ordering::Relaxed) > switch_at);
        eprintln!(
            "switch: {} requests before, {} in all, {} streams were relayed; \
             after the direct connection: first direct stream {:?}, relayed streams drained {:?}",
            switch_at,
            tally.ok.load(Ordering::Relaxed),
            relayed_streams.len(),
            first_direct,
            drained
        );
    })
    .await;
}

/// A relay whose circuits end after `duration` or `bytes`, whichever
/// comes first, and which lets circuits be made as often as asked.
fn tiny_circuits(duration: Duration, bytes: u64) -> relay::Config {
    relay::Config {
        max_circuit_duration: duration,
        max_circuit_bytes: bytes,
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    }
}

/// Errors a request may end with when its circuit ends under it.
fn is_path_error(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::StreamReset
            | RequestError::ConnectFailed(_)
            | RequestError::ConnectTimeout
            | RequestError::WriteTimeout
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_ending_mid_traffic_end_every_request_and_new_ones_take_the_next_path() {
    within(async {
        let relay = start_relay(tiny_circuits(Duration::from_secs(1), 1 << 20)).await;
        let mut server_peer = Peer::start().await;
        let circuit = server_peer.listen_via(&relay).await;
        let _server = echo(&server_peer.host, Duration::from_millis(5));
        let client_peer = Peer::start().await;
        let server = server_peer.peer_id();
        client_peer
            .host
            .connect_addr(circuit.clone())
            .await
            .expect("dial the circuit");
        let control = client_peer.host.control().clone();
        let first = control.connections_to(&server);
        assert!(first.iter().all(|p| p.relayed), "{first:?}");

        // Traffic across several circuit ends (each circuit lives 1 s).
        let client = Client::new(&client_peer.host, ClientConfig::default()).expect("client");
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let tally = Arc::new(Tally::default());
        let workers = load(&client, server, 4, &stop, &tally);
        let first_ids: Vec<_> = first.iter().map(|p| p.connection).collect();
        eventually("the first circuit ends", || {
            control
                .connections_to(&server)
                .iter()
                .all(|p| !first_ids.contains(&p.connection))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop.store(true, Ordering::Relaxed);
        // Every request ends: the workers only stop once each has its
        // outcome (a hang panics after REQUEST_BOUND).
        finish(workers).await;
        let ok = tally.ok.load(Ordering::Relaxed);
        let errors = tally.errors.lock().expect("lock").clone();
        eprintln!("relayed: {ok} answered, {} typed errors", errors.len());
        assert!(ok > 0, "nothing answered through the relay");
        for e in &errors {
            assert!(
                is_path_error(e),
                "unexpected error when a circuit ends: {e:?}"
            );
            assert!(e.is_retryable());
        }

        // A new request takes the next path: a fresh circuit.
        let answer = tokio::time::timeout(
            REQUEST_BOUND,
            client.send(server, ECHO, Bytes::from_static(b"after")),
        )
        .await
        .expect("hung")
        .expect("a new request over a fresh circuit");
        assert_eq!(&answer[..], b"after");
        let now = control.connections_to(&server);
        assert!(now.iter().all(|p| p.relayed));
        assert!(now.iter().all(|p| !first_ids.contains(&p.connection)));

        // With a direct connection, circuits ending no longer matter.
        client_peer
            .host
            .connect_addr(server_peer.direct.clone())
            .await
            .expect("dial the direct address");
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let tally = Arc::new(Tally::default());
        let workers = load(&client, server, 4, &stop, &tally);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop.store(true, Ordering::Relaxed);
        finish(workers).await;
        let errors = tally.errors.lock().expect("lock").clone();
        assert!(tally.ok.load(Ordering::Relaxed) > 0);
        // Streams that were relayed when the direct connection came up may
        // still see their circuit end; nothing after them does.
        for e in &errors {
            assert!(is_path_error(e), "unexpected error: {e:?}");
        }
        assert!(
            client.connections_info().iter().all(|c| !c.relayed),
            "{:?}",
            client.connections_info()
        );
        let answer = client
            .send(server, ECHO, Bytes::from_static(b"direct"))
            .await
            .expect("direct");
        assert_eq!(&answer[..], b"direct");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_over_its_byte_limit_ends_requests_typed_and_the_next_circuit_serves() {
    within(async {
        // Circuits end after 16 KiB: a few requests each.
        let relay = start_relay(tiny_circuits(Duration::from_secs(60), 16 * 1024)).await;
        let mut server_peer = Peer::start().await;
        let circuit = server_peer.listen_via(&relay).await;
        let _server = echo(&server_peer.host, Duration::ZERO);
        let client_peer = Peer::start().await;
        let server = server_peer.peer_id();
        client_peer
            .host
            .connect_addr(circuit)
            .await
            .expect("dial the circuit");
        let control = client_peer.host.control().clone();
        let first: Vec<_> = control
            .connections_to(&server)
            .iter()
            .map(|p| p.connection)
            .collect();
        let client = Client::new(
            &client_peer.host,
            ClientConfig::default().with_retry_interval(Duration::from_millis(100)),
        )
        .expect("client");
        // A client that never retries: what a circuit's end does to the
        // requests on it shows as its typed errors.
        let once = Client::new(&client_peer.host, ClientConfig::default().with_max_retries(0))
            .expect("client");
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let tally = Arc::new(Tally::default());
        let once_tally = Arc::new(Tally::default());
        let mut workers = load(&client, server, 2, &stop, &tally);
        workers.extend(load(&once, server, 2, &stop, &once_tally));
        // Far more than one circuit's worth of bytes.
        eventually("traffic over several circuits", || {
            tally.ok.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed) >= 100
                && once_tally.failed.load(Ordering::Relaxed) >= 1
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        finish(workers).await;
        assert!(
            control
                .connections_to(&server)
                .iter()
                .all(|p| !first.contains(&p.connection)),
            "the first circuit never ended"
        );
        let ok = tally.ok.load(Ordering::Relaxed);
        let errors = tally.errors.lock().expect("lock").clone();
        let once_errors = once_tally.errors.lock().expect("lock").clone();
        eprintln!(
            "byte-limited: {ok} answered, {} typed errors; without retries: {} answered, {} typed errors",
            errors.len(),
            once_tally.ok.load(Ordering::Relaxed),
            once_errors.len()
        );
        assert!(ok >= 50, "circuits did not carry requests: {ok}, {errors:?}");
        for e in errors.iter().chain(&once_errors) {
            assert!(is_path_error(e), "unexpected error: {e:?}");
        }
        let answer = tokio::time::timeout(
            REQUEST_BOUND,
            client.send(server, ECHO, Bytes::from_static(b"next")),
        )
        .await
        .expect("hung")
        .expect("the next circuit");
        assert_eq!(&answer[..], b"next");
    })
    .await;
}
