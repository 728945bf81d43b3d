//! `pointsub soak`: a long mixed load over real libp2p on loopback with
//! periodic server restarts, checking that every request ends with its
//! response or a typed error ("lost" counts those that did not, within a
//! generous bound) and that memory stays flat.
//!
//! Servers keep their identity and port across restarts, so clients find
//! them again; half the restarts are graceful (`Server::stop`), half are
//! abrupt (the node shuts down with requests in flight).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::{
    Client, ClientConfig, Multiaddr, Node, NodeConfig, PeerId, RequestError, Server, ServerConfig,
};

use crate::{BoxError, chart, prom};

const ECHO: &str = "/soak/echo/1";
const UPPER: &str = "/soak/upper/1";
const SLOW: &str = "/soak/slow/1";
const PROTOCOLS: [&str; 3] = [ECHO, UPPER, SLOW];

/// Longest a request may take before it counts as lost: far above the
/// client's worst case (retries with backoff, read timeouts).
const LOST_AFTER: Duration = Duration::from_secs(180);

/// Options of `pointsub soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run, in minutes (fractions allowed).
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    minutes: f64,
    /// Server nodes.
    #[arg(long, value_name = "N", default_value_t = 3)]
    servers: usize,
    /// Client nodes.
    #[arg(long, value_name = "N", default_value_t = 2)]
    clients: usize,
    /// Requests in flight per client.
    #[arg(long, value_name = "N", default_value_t = 32)]
    concurrency: usize,
    /// Seconds between server restarts.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    restart_every: u64,
    /// Seconds between progress lines.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    report_every: u64,
    /// Serves Prometheus metrics (OpenMetrics text) of every client and
    /// server at http://ADDR/metrics during the run.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Scrapes the metrics endpoint over HTTP once a second and, at the
    /// end, draws what it saw (request rate, latency quantiles, in flight
    /// and admission limit) as an SVG chart at PATH. Serves the endpoint
    /// on a free loopback port unless --metrics is given.
    #[arg(long, value_name = "PATH")]
    metrics_chart: Option<PathBuf>,
}

/// Outcome counts, shared by the workers.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    wrong: AtomicU64,
    lost: AtomicU64,
    bytes: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn fail(&self, e: &RequestError) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *f.entry(e.kind()).or_default() += 1;
    }

    fn failed(&self) -> u64 {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.values().sum()
    }

    fn failures_line(&self) -> String {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_empty() {
            return "none".into();
        }
        f.iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One server slot: a fixed identity and address, restarted in place.
struct Slot {
    keypair: Keypair,
    addr: Multiaddr,
    node: Node,
    server: Server,
}

async fn start_server(keypair: Keypair, listen: Multiaddr) -> Result<(Node, Server), BoxError> {
    let config = NodeConfig::default()
        .with_keypair(keypair)
        .with_listen_addrs([listen]);
    let node = Node::new(config).await?;
    let server = Server::new(&node, ServerConfig::default())?;
    server.start(
        ECHO,
        |_peer, body: Bytes| async move { Ok::<_, String>(body) },
    )?;
    server.start(UPPER, |_peer, body: Bytes| async move {
        Ok::<_, String>(Bytes::from(body.to_ascii_uppercase()))
    })?;
    server.start(SLOW, |_peer, body: Bytes| async move {
        let pause = body.first().copied().unwrap_or(0) % 50;
        tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
        Ok::<_, String>(body)
    })?;
    Ok((node, server))
}

/// The process's resident set size now, in KiB (Linux; 0 elsewhere).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A small deterministic generator for the mix (no need for crypto).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A body: mostly small, some compressible 8 KiB, a few 256 KiB random,
    /// rarely 1 MiB.
    fn body(&mut self) -> Bytes {
        let roll = self.next() % 100;
        let size = match roll {
            0..=59 => 16 + (self.next() % 600) as usize,
            60..=84 => 8 * 1024,
            85..=98 => 256 * 1024,
            _ => 1024 * 1024,
        };
        if (60..=84).contains(&roll) {
            return Bytes::from(b"soak-".repeat(size / 5));
        }
        let mut v = Vec::with_capacity(size);
        while v.len() < size {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(size);
        Bytes::from(v)
    }
}

fn expected(protocol: &str, body: &Bytes) -> Bytes {
    if protocol == UPPER {
        Bytes::from(body.to_ascii_uppercase())
    } else {
        body.clone()
    }
}

/// One worker: sends requests until `stop`, checking each outcome.
async fn worker(
    client: Client,
    servers: Vec<PeerId>,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut mix = Mix(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let protocol = PROTOCOLS[(mix.next() % 3) as usize];
        let body = mix.body();
        let want = expected(protocol, &body);
        let closest = mix.next().is_multiple_of(2);
        let target = servers[(mix.next() % servers.len() as u64) as usize];
        let size = body.len() as u64;
        let outcome = if closest {
            let call = client.send_closest(protocol, body);
            tokio::time::timeout(LOST_AFTER, call)
                .await
                .map(|r| r.map(|r| r.body))
        } else {
            tokio::time::timeout(LOST_AFTER, client.send(target, protocol, body)).await
        };
        match outcome {
            Err(_) => {
                tally.lost.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(reply)) if reply == want => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally.bytes.fetch_add(2 * size, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => tally.fail(&e),
        }
    }
}

/// Runs the soak; exits non-zero if any request was lost or answered
/// wrongly.
pub async fn run(args: SoakArgs) -> Result<ExitCode, BoxError> {
    let servers_n = args.servers.max(1);
    let duration = Duration::from_secs_f64((args.minutes * 60.0).max(1.0));
    println!(
        "soak: {servers_n} servers, {} clients x {} in flight, {:.1} min, a server restart every {} s",
        args.clients.max(1),
        args.concurrency.max(1),
        duration.as_secs_f64() / 60.0,
        args.restart_every.max(1)
    );
    println!(
        "protocols: {}; bodies 16 B..1 MiB; half send, half send_closest",
        PROTOCOLS.join(", ")
    );

    let mut slots = Vec::new();
    for _ in 0..servers_n {
        let keypair = Keypair::generate_ed25519();
        let any_port: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
        let (node, server) = start_server(keypair.clone(), any_port).await?;
        let addr = node
            .listen_addrs()
            .into_iter()
            .next()
            .ok_or("server node has no listen address")?;
        slots.push(Slot {
            keypair,
            addr,
            node,
            server,
        });
    }
    let server_ids: Vec<PeerId> = slots.iter().map(|s| s.node.peer_id()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    let mut workers = Vec::new();
    for c in 0..args.clients.max(1) {
        let node = Node::new(NodeConfig::default().with_listen_addrs([])).await?;
        for s in &slots {
            node.add_address(s.node.peer_id(), s.addr.clone());
        }
        let client = Client::new(&node, ClientConfig::default().with_seed(c as u64 + 1))?;
        for id in &server_ids {
            for p in PROTOCOLS {
                client.add_server_node(p, *id)?;
            }
        }
        for w in 0..args.concurrency.max(1) {
            let seed = (c as u64) << 32 | w as u64;
            workers.push(tokio::spawn(worker(
                client.clone(),
                server_ids.clone(),
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                stop.clone(),
                tally.clone(),
            )));
        }
        clients.push((node, client));
    }

    let endpoint = match (args.metrics, &args.metrics_chart) {
        (Some(addr), _) => Some(prom::start(addr).await?),
        (None, Some(_)) => Some(prom::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?),
        (None, None) => None,
    };
    let (chart_stop, chart_stopped) = tokio::sync::watch::channel(false);
    let mut sampler = None;
    if let Some(endpoint) = &endpoint {
        for s in &slots {
            endpoint.metrics.add_server(&s.server);
        }
        for (_, c) in &clients {
            endpoint.metrics.add_client(c);
        }
        println!("{}", endpoint.announce());
        if args.metrics_chart.is_some() {
            sampler = Some(tokio::spawn(chart::sample(endpoint.addr, chart_stopped)));
        }
    }

    let started = Instant::now();
    let rss_start = rss_kib();
    let mut rss_series = vec![(0u64, rss_start)];
    let mut next_restart = started + Duration::from_secs(args.restart_every.max(1));
    let mut next_report = started + Duration::from_secs(args.report_every.max(1));
    let mut restarts = 0usize;
    let mut last_done = 0u64;
    let mut last_report = started;
    println!(
        "{:>7} {:>10} {:>8} {:>9} {:>8} {:>10}  failures",
        "time", "requests", "req/s", "MB/s", "restarts", "RSS KiB"
    );
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        if now >= next_restart {
            next_restart = now + Duration::from_secs(args.restart_every.max(1));
            let slot = &mut slots[restarts % servers_n];
            if restarts.is_multiple_of(2) {
                slot.server.stop_with_timeout(Duration::from_secs(2)).await;
            }
            slot.node.shutdown();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (node, server) = start_server(slot.keypair.clone(), slot.addr.clone()).await?;
            if let Some(endpoint) = &endpoint {
                endpoint.metrics.add_server(&server);
            }
            slot.node = node;
            slot.server = server;
            restarts += 1;
        }
        if now >= next_report {
            next_report = now + Duration::from_secs(args.report_every.max(1));
            let done = tally.ok.load(Ordering::Relaxed) + tally.failed();
            let secs = now.duration_since(last_report).as_secs_f64().max(1e-9);
            let rss = rss_kib();
            rss_series.push((started.elapsed().as_secs(), rss));
            println!(
                "{:>6}s {:>10} {:>8.0} {:>9.1} {:>8} {:>10}  {}",
                started.elapsed().as_secs(),
                done,
                (done - last_done) as f64 / secs,
                tally.bytes.load(Ordering::Relaxed) as f64 / 1e6 / started.elapsed().as_secs_f64(),
                restarts,
                rss,
                tally.failures_line()
            );
            last_done = done;
            last_report = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    if let (Some(sampler), Some(path)) = (sampler, &args.metrics_chart) {
        let _ = chart_stop.send(true);
        let scrapes = sampler.await?;
        chart::draw(path, &scrapes)?;
        println!(
            "metrics chart ({} scrapes): {}",
            scrapes.len(),
            path.display()
        );
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed();
    let lost = tally.lost.load(Ordering::Relaxed);
    let wrong = tally.wrong.load(Ordering::Relaxed);
    let rss_end = rss_kib();
    println!();
    println!("requests done: {} ({ok} ok, {failed} failed)", ok + failed);
    println!("failures by kind: {}", tally.failures_line());
    println!("lost: {lost}");
    println!("wrong answers: {wrong}");
    println!("server restarts: {restarts}");
    let peak = rss_series.iter().map(|(_, r)| *r).max().unwrap_or(rss_end);
    println!(
        "RSS KiB: start {rss_start}, end {rss_end}, peak {peak}; over time: {}",
        rss_series
            .iter()
            .map(|(t, r)| format!("{t}s={r}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (node, client) in &clients {
        client.close();
        node.shutdown();
    }
    for s in &slots {
        s.node.shutdown();
    }
    Ok(if lost == 0 && wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
