//! Adaptive admission over real libp2p on loopback: a server whose handler
//! has a capacity (a semaphore of C workers, each request sleeping S), light
//! load, then overload with a slow handler, then normal demand again.
#![cfg(feature = "tokio-runtime")]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{
    Client, ClientConfig, Multiaddr, Node, NodeConfig, PeerId, RequestError, Server, ServerConfig,
};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

const SLOW: &str = "/test/slow/1";
/// Workers of the handler (C).
const WORKERS: usize = 40;
/// Service time of a request in the normal phases (S).
const SERVICE_MS: u64 = 50;

async fn node() -> Node {
    let addr = Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0));
    Node::new(NodeConfig::default().with_listen_addrs([addr]))
        .await
        .expect("node")
}

#[derive(Default)]
struct Outcomes {
    ok: u64,
    busy: u64,
    /// Latencies of successful requests, by the phase they started in.
    latency: Vec<(u8, Duration)>,
}

/// `loops` senders, each sending back to back until `stop` (after a Busy
/// answer it waits 10 ms, so it does not spin).
fn load(
    client: &Client,
    peer: PeerId,
    loops: usize,
    phase: u8,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcomes>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..loops)
        .map(|_| {
            let (client, stop, out) = (client.clone(), stop.clone(), out.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.send(peer, SLOW, Bytes::from_static(b"w")).await {
                        Ok(_) => {
                            let mut o = out.lock().await;
                            o.ok += 1;
                            o.latency.push((phase, t.elapsed()));
                        }
                        Err(RequestError::Busy(_)) => {
                            out.lock().await.busy += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            })
        })
        .collect()
}

async fn run_phase(
    client: &Client,
    peer: PeerId,
    loops: usize,
    phase: u8,
    length: Duration,
    out: &Arc<Mutex<Outcomes>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(client, peer, loops, phase, stop.clone(), out.clone());
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("sender");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_holds_when_light_falls_under_overload_and_recovers() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (server_node, client_node) = (node().await, node().await);
        for addr in server_node.listen_addrs() {
            client_node.add_address(server_node.peer_id(), addr);
        }
        let config = ServerConfig::default()
            .with_max_concurrent_conns(100)
            .with_min_concurrent_conns(10)
            .with_max_concurrent_limit(1000)
            .with_adjust_interval(Duration::from_millis(100));
        let server = Server::new(&server_node, config).expect("server");
        let workers = Arc::new(Semaphore::new(WORKERS));
        let service_ms = Arc::new(AtomicU64::new(SERVICE_MS));
        {
            let (workers, service_ms) = (workers.clone(), service_ms.clone());
            server
                .start(SLOW, move |_peer, body: Bytes| {
                    let (workers, service_ms) = (workers.clone(), service_ms.clone());
                    async move {
                        let _permit = workers.acquire().await.map_err(|e| e.to_string())?;
                        let ms = service_ms.load(Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, String>(body)
                    }
                })
                .expect("start");
        }
        let client =
            Client::new(&client_node, ClientConfig::default().with_max_retries(0)).expect("client");
        let peer = server_node.peer_id();
        // Connect before measuring.
        client
            .send(peer, SLOW, Bytes::from_static(b"hello"))
            .await
            .expect("first request");

        // The limit and the Busy count, sampled every 20 ms.
        let samples = Arc::new(Mutex::new(Vec::<(Duration, u64, u64)>::new()));
        let start = Instant::now();
        let sampler = {
            let (server, samples) = (server.clone(), samples.clone());
            tokio::spawn(async move {
                loop {
                    let m = server.metrics();
                    samples.lock().await.push((
                        start.elapsed(),
                        m.admission_limit,
                        m.rejected_busy,
                    ));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let out = Arc::new(Mutex::new(Outcomes::default()));

        // Light: 3 senders, far below the limit of 100 and the 40 workers.
        run_phase(&client, peer, 3, 0, Duration::from_millis(1500), &out).await;
        let t_light = start.elapsed();
        // Overload: 150 senders while the handler is three times slower.
        service_ms.store(3 * SERVICE_MS, Ordering::Relaxed);
        run_phase(&client, peer, 150, 1, Duration::from_millis(3500), &out).await;
        let t_over = start.elapsed();
        // Demand within capacity again: 30 senders (fewer than the 40
        // workers, more than the limit the overload left), fast handler.
        service_ms.store(SERVICE_MS, Ordering::Relaxed);
        run_phase(&client, peer, 30, 2, Duration::from_secs(4), &out).await;
        let t_end = start.elapsed();
        sampler.abort();

        let samples = samples.lock().await.clone();
        let out = out.lock().await;
        let in_range = |from: Duration, to: Duration| {
            samples
                .iter()
                .filter(move |s| s.0 >= from && s.0 <= to)
                .copied()
        };
        let summary = format!(
            "ok {} busy {}; limit light {:?}, overload {:?}, after {:?}",
            out.ok,
            out.busy,
            in_range(Duration::ZERO, t_light)
                .map(|s| s.1)
                .collect::<Vec<_>>(),
            in_range(t_light, t_over).map(|s| s.1).collect::<Vec<_>>(),
            in_range(t_over, t_end).map(|s| s.1).collect::<Vec<_>>(),
        );
        eprintln!("{summary}");

        // Light load: the limit does not rise, nothing is Busy.
        assert!(
            in_range(Duration::ZERO, t_light).all(|s| s.1 == 100 && s.2 == 0),
            "{summary}"
        );
        // Overload: the excess gets Busy and the limit falls.
        assert!(out.busy > 0, "{summary}");
        let lowest = in_range(t_light, t_over).map(|s| s.1).min().unwrap_or(100);
        assert!(lowest < 30, "{summary}");
        // Admitted requests keep a bounded latency: a fixed limit of 100
        // would queue them 100 / 40 * 150 ms = 375 ms; the handler alone
        // takes 150 ms.
        let late: Vec<Duration> = out
            .latency
            .iter()
            .filter(|(p, _)| *p == 1)
            .map(|(_, d)| *d)
            .collect();
        assert!(late.len() >= 50, "{summary}");
        let m = median(late);
        eprintln!("overload: median latency of admitted requests {m:?}");
        assert!(m < Duration::from_millis(300), "median {m:?}; {summary}");
        // Afterwards: the limit grows back to serve the 30 senders, and in
        // the last 1.5 s nothing gets Busy.
        let tail: Vec<_> = in_range(t_end - Duration::from_millis(1500), t_end).collect();
        let (first, last) = (
            tail.first().expect("samples"),
            tail.last().expect("samples"),
        );
        assert_eq!(first.2, last.2, "Busy answers at the end: {summary}");
        assert!(last.1 >= 30 && last.1 > lowest, "{summary}");
        let after: Vec<Duration> = out
            .latency
            .iter()
            .filter(|(p, _)| *p == 2)
            .map(|(_, d)| *d)
            .collect();
        assert!(after.len() >= 100, "{summary}");
    })
    .await
    .expect("test timed out");
}
