//! Servers in child processes killed mid-request (issue 7, "Crashes").
//!
//! Each test runs `pointsub serve` as child processes with a slow handler
//! (`--delay-ms`) and a fixed identity (`--key-seed`), sends a request from
//! a client node in this process, SIGKILLs the server while the request is
//! inside its handler, and checks that the request ends (fails over to the
//! next closest node, or ends in a typed retryable error, or succeeds
//! after a restart) and never hangs. The server is then restarted with the
//! same identity on the same port, and requests to it must succeed again.
//!
//! Every child is killed when its guard drops (so a failing test leaves
//! nothing behind) and every wait is bounded.
#![cfg(feature = "cli")]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::proto::route::{distance, key_hash};
use pointsub_tokio::{
    Client, ClientConfig, ClosestOptions, Multiaddr, Node, NodeConfig, PeerId, RequestError,
};

const BIN: &str = env!("CARGO_BIN_EXE_pointsub");

/// The protocol the servers serve (`pointsub serve`'s default).
const ECHO: &str = "/pointsub/echo/1.0.0";

/// How long each server's handler sleeps before answering.
const DELAY_MS: u64 = 400;

/// When, after the request was sent, the server is killed: well inside its
/// handler's [`DELAY_MS`].
const KILL_AFTER: Duration = Duration::from_millis(150);

/// Bound on a server printing its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A `pointsub serve` child process, killed (SIGKILL) when dropped.
struct ServerProc {
    child: Child,
    /// Its TCP listen address, without the /p2p suffix.
    addr: Multiaddr,
    peer: PeerId,
    port: u16,
}

impl ServerProc {
    /// SIGKILLs the process and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `pointsub serve --delay-ms DELAY_MS --key-seed seed`, listening
/// on `port` of 127.0.0.1 (0: any), and waits for its `listening on` line.
fn spawn_server(seed: u64, port: u16) -> Result<ServerProc, String> {
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let delay = DELAY_MS.to_string();
    let seed_arg = seed.to_string();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--delay-ms",
            &delay,
            "--key-seed",
            &seed_arg,
            "--listen",
            &listen,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn pointsub serve: {e}"))?;
    // The guard exists from here on, so an early return kills the child.
    let mut server = ServerProc {
        child,
        addr: Multiaddr::empty(),
        peer: PeerId::random(),
        port: 0,
    };
    let stdout = server.child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "server {seed} printed no address in {START_TIMEOUT:?}"
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().ok();
                return Err(format!("server {seed} exited before listening: {status:?}"));
            }
        };
        let Some(full) = line.strip_prefix("listening on ") else {
            continue;
        };
        let mut addr: Multiaddr = full
            .parse()
            .map_err(|e| format!("bad address {full:?}: {e}"))?;
        let Some(Protocol::P2p(peer)) = addr.pop() else {
            return Err(format!("address {full:?} has no /p2p suffix"));
        };
        let Some(Protocol::Tcp(port)) = addr.iter().nth(1) else {
            return Err(format!("address {full:?} is not /ip4/…/tcp/…"));
        };
        server.addr = addr;
        server.peer = peer;
        server.port = port;
        return Ok(server);
    }
}

/// [`spawn_server`] on a port that was just in use: retried for up to ~5 s
/// in case the port is not immediately free again.
fn respawn_server(seed: u64, port: u16) -> ServerProc {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match spawn_server(seed, port) {
            Ok(server) => {
                if attempts > 1 {
                    println!("restart on port {port} took {attempts} attempts");
                }
                return server;
            }
            Err(e) if Instant::now() < deadline => {
                println!("restart attempt {attempts} on port {port} failed: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot restart server {seed} on port {port}: {e}"),
        }
    }
}

/// Runs the blocking `f` off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// `fut`, or a panic naming `what` if it takes longer than `limit`.
async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no end within {limit:?} (hang)"),
    }
}

/// A client node (not listening) and its client.
async fn client() -> (Node, Client) {
    let node = Node::new(NodeConfig::default().with_listen_addrs([]))
        .await
        .expect("client node");
    let client = Client::new(&node, ClientConfig::default()).expect("client");
    (node, client)
}

/// A routing key whose closest node is `near` rather than `far`, computed
/// the way the core ranks nodes: SHA-256 of the key XOR SHA-256 of the
/// node's key (the PeerId's bytes), smallest first.
fn key_closest_to(near: PeerId, far: PeerId) -> Bytes {
    let (near, far) = (key_hash(&near.to_bytes()), key_hash(&far.to_bytes()));
    (0u32..)
        .map(|i| format!("crash-key-{i}"))
        .find(|k| {
            let h = key_hash(k.as_bytes());
            distance(&h, &near) < distance(&h, &far)
        })
        .map(Bytes::from)
        .expect("some key is closer to one of two nodes")
}

fn describe(e: &RequestError) -> String {
    format!("{} ({e}, retryable: {})", e.kind(), e.is_retryable())
}

/// A send_closest in flight on A when A is SIGKILLed fails over to B or
/// ends in a retryable error; after A restarts (same identity, same port)
/// the key is answered by A again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_closest_survives_a_killed_server() {
    bounded("the test", TEST_TIMEOUT, async {
        let (mut a, b) = blocking(|| {
            let a = spawn_server(1, 0).expect("server A");
            let b = spawn_server(2, 0).expect("server B");
            (a, b)
        })
        .await;
        let (peer_a, peer_b, port_a) = (a.peer, b.peer, a.port);
        println!("A = {peer_a} at {}, B = {peer_b} at {}", a.addr, b.addr);

        let (node, client) = client().await;
        for s in [&a, &b] {
            node.add_address(s.peer, s.addr.clone());
            assert!(client.add_server_node(ECHO, s.peer).expect("add node"));
        }
        let key = key_closest_to(peer_a, peer_b);
        let opts = || ClosestOptions::default().with_routing_key(key.clone());

        // Warm up: the key goes to A (which also opens the connection, so
        // the request below reaches A's handler at once).
        let warm = bounded(
            "warm-up",
            Duration::from_secs(15),
            client.send_closest_with(ECHO, Bytes::from_static(b"warm"), opts()),
        )
        .await
        .expect("warm-up request");
        assert_eq!(warm.peer, peer_a, "the chosen key should route to A");
        assert_eq!(&warm.body[..], b"warm");

        // Phase 1: kill A while the request is in its handler.
        let in_flight = {
            let client = client.clone();
            let opts = opts();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client
                    .send_closest_with(ECHO, Bytes::from_static(b"in flight"), opts)
                    .await;
                (result, started.elapsed())
            })
        };
        tokio::time::sleep(KILL_AFTER).await;
        a.kill();
        let killed_at = Instant::now();
        let (result, took) = bounded(
            "the in-flight send_closest",
            Duration::from_secs(15),
            in_flight,
        )
        .await
        .expect("request task");
        match &result {
            Ok(r) => {
                println!(
                    "phase 1: in-flight send_closest failed over to B in {took:?} \
                     ({:?} after the kill)",
                    killed_at.elapsed()
                );
                assert_eq!(r.peer, peer_b, "answered by a node other than B");
                assert_eq!(&r.body[..], b"in flight");
            }
            Err(e) => {
                println!(
                    "phase 1: in-flight send_closest ended in {} after {took:?}",
                    describe(e)
                );
                assert!(e.is_retryable(), "final error: {}", describe(e));
            }
        }

        // Phase 2: restart A on the same port with the same identity; the
        // key must come back to A once its cooldown passes.
        let restart_began = Instant::now();
        let a2 = blocking(move || respawn_server(1, port_a)).await;
        assert_eq!(a2.peer, peer_a, "--key-seed 1 gave another peer id");
        assert_eq!(a2.port, port_a);
        println!("phase 2: A restarted in {:?}", restart_began.elapsed());
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut tries = 0;
        let mut answered_by = Vec::new();
        loop {
            tries += 1;
            let result = bounded(
                "a send_closest after the restart",
                Duration::from_secs(15),
                client.send_closest_with(ECHO, Bytes::from_static(b"again"), opts()),
            )
            .await;
            match result {
                Ok(r) if r.peer == peer_a => {
                    assert_eq!(&r.body[..], b"again");
                    break;
                }
                Ok(r) => answered_by.push(if r.peer == peer_b { "B" } else { "?" }.to_owned()),
                Err(e) => answered_by.push(describe(&e)),
            }
            assert!(
                Instant::now() < deadline,
                "A did not answer again within 15 s of its restart; answers: {answered_by:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "phase 2: A answered the key again {:?} after the restart began \
             ({:?} after the kill), on try {tries}; before that: {answered_by:?}",
            restart_began.elapsed(),
            killed_at.elapsed()
        );

        client.close();
        node.shutdown();
        drop((a2, b));
    })
    .await;
}

/// A plain send to A in flight when A is SIGKILLed (and restarted at once)
/// ends in a retryable error or succeeds on the restarted A, never hangs;
/// after the restart, sends to A succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_survives_a_killed_and_restarted_server() {
    bounded("the test", TEST_TIMEOUT, async {
        let mut a = blocking(|| spawn_server(3, 0).expect("server A")).await;
        let (peer_a, port_a) = (a.peer, a.port);
        println!("A = {peer_a} at {}", a.addr);

        let (node, client) = client().await;
        node.add_address(peer_a, a.addr.clone());
        let warm = bounded(
            "warm-up",
            Duration::from_secs(15),
            client.send(peer_a, ECHO, Bytes::from_static(b"warm")),
        )
        .await
        .expect("warm-up request");
        assert_eq!(&warm[..], b"warm");

        let in_flight = {
            let client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client
                    .send(peer_a, ECHO, Bytes::from_static(b"in flight"))
                    .await;
                (result, started.elapsed())
            })
        };
        tokio::time::sleep(KILL_AFTER).await;
        a.kill();
        let killed_at = Instant::now();
        let a2 = blocking(move || respawn_server(3, port_a)).await;
        assert_eq!(a2.peer, peer_a, "--key-seed 3 gave another peer id");
        println!("A killed and restarted in {:?}", killed_at.elapsed());

        let (result, took) = bounded("the in-flight send", Duration::from_secs(20), in_flight)
            .await
            .expect("request task");
        match &result {
            Ok(body) => {
                println!(
                    "in-flight send succeeded (after A's restart) in {took:?}, \
                     {:?} after the kill",
                    killed_at.elapsed()
                );
                assert_eq!(&body[..], b"in flight");
            }
            Err(e) => {
                println!("in-flight send ended in {} after {took:?}", describe(e));
                assert!(e.is_retryable(), "final error: {}", describe(e));
            }
        }

        // After the restart, plain sends to A succeed (the first may still
        // see the dead connection go away; allow a few tries).
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut failures = Vec::new();
        let mut ok = 0;
        while ok < 3 {
            let result = bounded(
                "a send after the restart",
                Duration::from_secs(15),
                client.send(peer_a, ECHO, Bytes::from_static(b"after")),
            )
            .await;
            match result {
                Ok(body) => {
                    assert_eq!(&body[..], b"after");
                    ok += 1;
                }
                Err(e) => {
                    failures.push(describe(&e));
                    assert!(
                        Instant::now() < deadline,
                        "sends to the restarted A keep failing: {failures:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        println!(
            "after the restart: 3 sends to A succeeded, {} failed first ({failures:?}), \
             {:?} after the kill",
            failures.len(),
            killed_at.elapsed()
        );

        client.close();
        node.shutdown();
        drop(a2);
    })
    .await;
}

/// A plain send to A in flight when A is SIGKILLed and stays down ends,
/// once the retries are spent, in a typed retryable error: no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_dead_server_ends_retryable() {
    bounded("the test", TEST_TIMEOUT, async {
        let mut a = blocking(|| spawn_server(4, 0).expect("server A")).await;
        let peer_a = a.peer;
        let (node, client) = client().await;
        node.add_address(peer_a, a.addr.clone());
        bounded(
            "warm-up",
            Duration::from_secs(15),
            client.send(peer_a, ECHO, Bytes::from_static(b"warm")),
        )
        .await
        .expect("warm-up request");

        let in_flight = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send(peer_a, ECHO, Bytes::from_static(b"in flight"))
                    .await
            })
        };
        tokio::time::sleep(KILL_AFTER).await;
        a.kill();
        let killed_at = Instant::now();
        let result = bounded("the in-flight send", Duration::from_secs(20), in_flight)
            .await
            .expect("request task");
        let e = result.expect_err("A is dead, yet the request succeeded");
        println!(
            "in-flight send to the dead A ended in {} {:?} after the kill",
            describe(&e),
            killed_at.elapsed()
        );
        assert!(e.is_retryable(), "final error: {}", describe(&e));

        client.close();
        node.shutdown();
    })
    .await;
}
