//! The `pointsub` command-line tool.
//!
//! - `pointsub demo`: a server node and a client node in one process, an
//!   echo round trip, then a burst with latency figures and the metrics.
//! - `pointsub serve`: an echo server; prints its full addresses. Options
//!   slow its handler (`--delay-ms`) and fix its identity (`--key-seed`),
//!   for crash and restart tests.
//! - `pointsub send <ADDR>/p2p/<PEER> <TEXT>`: one request, reply on stdout.
//! - `pointsub bench`: pointsub beside libp2p request-response and raw TCP,
//!   in one process; a table, its CSV and an SVG chart (see [`bench`]).
//!
//! `-v` (repeatable) raises the log level on stderr; `RUST_LOG` overrides it.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{ArgAction, Parser, Subcommand};
use cli_util::{chain, init_tracing};
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{
    Client, ClientConfig, ClientMetrics, Multiaddr, Node, NodeConfig, PeerId, Server, ServerConfig,
    ServerMetrics,
};

mod bench;
mod cli_util;
mod soak;

/// The protocol `serve` and `send` use unless told otherwise.
const DEFAULT_PROTOCOL: &str = "/pointsub/echo/1.0.0";

type BoxError = Box<dyn Error + Send + Sync>;

/// Point-to-point request/response over libp2p, addressed by peer id and
/// protocol: an echo server, a one-shot client, and a self-contained demo.
#[derive(Debug, Parser)]
#[command(name = "pointsub", version)]
struct Cli {
    /// Log more on stderr: -v info, -vv debug, -vvv trace (default: warn).
    /// RUST_LOG, when set, takes precedence (e.g. RUST_LOG=pointsub_tokio=debug).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a server node and a client node in this process over loopback,
    /// sends a few echo requests, then a concurrent burst, and prints
    /// latencies and metrics. Exits non-zero if any request failed.
    Demo(DemoArgs),
    /// Serves an echo handler until interrupted. Prints each listen
    /// address, with its /p2p/<peer id> suffix, as `listening on <addr>`.
    /// --delay-ms slows every answer; --key-seed keeps the peer id across
    /// restarts.
    Serve(ServeArgs),
    /// Sends one request to a peer and prints the reply on stdout.
    Send(SendArgs),
    /// Measures pointsub beside libp2p request-response and raw TCP echo,
    /// in this process over loopback: prints a table (QPS, MB/s, latency,
    /// failures, peak RSS) and writes it as CSV and an SVG chart. Run it
    /// from a release build: `cargo run --release -p pointsub-tokio -- bench`.
    Bench(bench::BenchArgs),
    /// Runs a long mixed load (sizes, protocols, send and send_closest)
    /// against several servers that restart periodically, in this process
    /// over loopback; prints progress, failures by kind, lost requests
    /// (must be 0) and memory over time. Exits non-zero if any request was
    /// lost or answered wrongly.
    Soak(soak::SoakArgs),
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Requests sent one after another, each printed with its latency.
    #[arg(long, value_name = "N", default_value_t = 5)]
    requests: usize,
    /// Requests in the concurrent burst.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    burst: usize,
    /// Burst requests in flight at once.
    #[arg(long, value_name = "C", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Use QUIC instead of TCP (noise + yamux).
    #[arg(long)]
    quic: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The protocol to serve.
    #[arg(long, value_name = "P", default_value = DEFAULT_PROTOCOL)]
    protocol: String,
    /// An address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4001 or
    /// /ip4/127.0.0.1/udp/0/quic-v1. Default: /ip4/127.0.0.1/tcp/0.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Milliseconds the echo handler waits before answering each request
    /// (to simulate a slow handler, or to kill the server mid-request).
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
    /// Derives the node's ed25519 identity from this seed (its 8 little-endian
    /// bytes, zero-padded to 32), so a restarted server keeps its peer id.
    /// For tests only: anyone knowing the seed has the key. Default: a fresh
    /// random identity.
    #[arg(long, value_name = "N")]
    key_seed: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The server's address, ending with /p2p/<peer id>, as printed by
    /// `pointsub serve`.
    #[arg(value_name = "MULTIADDR")]
    addr: Multiaddr,
    /// The request body.
    #[arg(value_name = "TEXT")]
    text: String,
    /// The protocol to call.
    #[arg(long, value_name = "P", default_value = DEFAULT_PROTOCOL)]
    protocol: String,
    /// Overall time allowed for the request, retries included, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = match cli.command {
        // libp2p request-response warns once per stream it drops when over
        // capacity: 100,000 lines in the 10,000-in-flight case.
        Command::Bench(_) => "warn,libp2p_request_response=error",
        _ => "warn",
    };
    init_tracing(cli.verbose, quiet);
    let result = match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Send(args) => send(args).await,
        Command::Bench(args) => bench::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Soak(args) => soak::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// `pointsub demo`.
async fn demo(args: DemoArgs) -> Result<ExitCode, BoxError> {
    let listen: Multiaddr = if args.quic {
        "/ip4/127.0.0.1/udp/0/quic-v1".parse()?
    } else {
        "/ip4/127.0.0.1/tcp/0".parse()?
    };
    let server_node = Node::new(NodeConfig::default().with_listen_addrs([listen.clone()])).await?;
    let client_node = Node::new(NodeConfig::default().with_listen_addrs([listen])).await?;
    let server_peer = server_node.peer_id();
    let addr = server_node
        .listen_addrs()
        .into_iter()
        .next()
        .ok_or("the server node has no listen address")?;
    client_node.add_address(server_peer, addr.clone());
    println!("server peer id: {server_peer}");
    println!("client peer id: {}", client_node.peer_id());
    println!("server address: {}", with_peer(addr, server_peer));

    let server = Server::new(&server_node, ServerConfig::default())?;
    server.start(DEFAULT_PROTOCOL, |_peer, body: Bytes| async move {
        Ok::<_, String>(body)
    })?;
    let client = Client::new(&client_node, ClientConfig::default())?;

    let mut failures = 0;
    println!(
        "\n{} sequential requests on {DEFAULT_PROTOCOL}:",
        args.requests
    );
    for i in 1..=args.requests {
        let body = format!("hello pointsub #{i}");
        let start = Instant::now();
        match client
            .send(server_peer, DEFAULT_PROTOCOL, Bytes::from(body.clone()))
            .await
        {
            Ok(reply) if reply == body.as_bytes() => println!(
                "  #{i}: {:?} in {}",
                String::from_utf8_lossy(&reply),
                fmt_duration(start.elapsed())
            ),
            Ok(reply) => {
                failures += 1;
                println!("  #{i}: wrong echo {:?}", String::from_utf8_lossy(&reply));
            }
            Err(e) => {
                failures += 1;
                println!("  #{i}: error: {e} (retryable: {})", e.is_retryable());
            }
        }
    }

    let report = burst(&client, server_peer, args.burst, args.concurrency.into()).await;
    failures += report.failures.values().sum::<usize>();
    report.print(args.burst, args.concurrency.into());

    println!();
    println!("client: {}", fmt_client_metrics(&client.metrics()));
    println!("server: {}", fmt_server_metrics(&server.metrics()));

    client.close();
    server.stop().await;
    client_node.shutdown();
    server_node.shutdown();

    if failures == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {failures} request(s) failed");
        Ok(ExitCode::FAILURE)
    }
}

/// What a burst measured.
struct BurstReport {
    elapsed: Duration,
    /// Latencies of the requests that succeeded, sorted.
    latencies: Vec<Duration>,
    /// Failures by kind.
    failures: BTreeMap<&'static str, usize>,
}

/// Sends `total` echo requests with `concurrency` in flight at once.
async fn burst(client: &Client, peer: PeerId, total: usize, concurrency: usize) -> BurstReport {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..concurrency.min(total) {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = Bytes::from(format!("burst #{i}"));
                let sent = Instant::now();
                match client.send(peer, DEFAULT_PROTOCOL, body.clone()).await {
                    Ok(reply) if reply == body => latencies.push(sent.elapsed()),
                    Ok(_) => failures.push("wrong_echo"),
                    Err(e) => failures.push(e.kind()),
                }
            }
            (latencies, failures)
        });
    }
    let mut report = BurstReport {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(total),
        failures: BTreeMap::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((latencies, failures)) => {
                report.latencies.extend(latencies);
                for kind in failures {
                    *report.failures.entry(kind).or_default() += 1;
                }
            }
            Err(_) => *report.failures.entry("task_panicked").or_default() += 1,
        }
    }
    report.elapsed = start.elapsed();
    report.latencies.sort_unstable();
    report
}

impl BurstReport {
    fn print(&self, total: usize, concurrency: usize) {
        println!("\nburst of {total} requests, {concurrency} in flight:");
        let secs = self.elapsed.as_secs_f64();
        let ok = self.latencies.len();
        let qps = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
        println!("  total time: {}", fmt_duration(self.elapsed));
        println!("  QPS: {qps:.0}");
        if ok > 0 {
            let mean = self.latencies.iter().sum::<Duration>() / ok as u32;
            println!(
                "  latency: mean {}, p50 {}, p99 {}",
                fmt_duration(mean),
                fmt_duration(percentile(&self.latencies, 50)),
                fmt_duration(percentile(&self.latencies, 99)),
            );
        }
        let failed: usize = self.failures.values().sum();
        if failed == 0 {
            println!("  failures: 0");
        } else {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect();
            println!("  failures: {failed} ({})", kinds.join(", "));
        }
    }
}

/// `pointsub serve`.
async fn serve(args: ServeArgs) -> Result<ExitCode, BoxError> {
    let listen = if args.listen.is_empty() {
        vec!["/ip4/127.0.0.1/tcp/0".parse()?]
    } else {
        args.listen
    };
    let mut config = NodeConfig::default().with_listen_addrs(listen);
    if let Some(seed) = args.key_seed {
        config = config.with_keypair(seeded_keypair(seed)?);
    }
    let node = Node::new(config).await?;
    let server = Server::new(&node, ServerConfig::default())?;
    let delay = Duration::from_millis(args.delay_ms);
    server.start(&args.protocol, move |peer, body: Bytes| async move {
        tracing::info!(%peer, size = body.len(), "echo");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, String>(body)
    })?;
    {
        let mut out = std::io::stdout().lock();
        for addr in node.listen_addrs() {
            writeln!(out, "listening on {}", with_peer(addr, node.peer_id()))?;
        }
        writeln!(out, "serving {}", args.protocol)?;
        out.flush()?;
    }
    shutdown_signal().await;
    server.stop().await;
    node.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// The ed25519 identity `serve --key-seed seed` uses: the seed's
/// little-endian bytes, zero-padded to 32, as the secret key.
fn seeded_keypair(seed: u64) -> Result<Keypair, BoxError> {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    Ok(Keypair::ed25519_from_bytes(secret)?)
}

/// Resolves when the process is asked to stop (Ctrl-C / SIGINT). If the
/// signal cannot be watched, serves until killed.
async fn shutdown_signal() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C; serving until killed");
        std::future::pending::<()>().await;
    }
}

/// `pointsub send`.
async fn send(args: SendArgs) -> Result<ExitCode, BoxError> {
    let (addr, peer) = split_peer(args.addr)?;
    let node = Node::new(NodeConfig::default().with_listen_addrs([])).await?;
    node.add_address(peer, addr);
    let client = Client::new(&node, ClientConfig::default())?;
    let result = client
        .send_with_timeout(
            peer,
            &args.protocol,
            Bytes::from(args.text),
            Duration::from_secs(args.timeout),
        )
        .await;
    client.close();
    node.shutdown();
    match result {
        Ok(reply) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", String::from_utf8_lossy(&reply))?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e} (retryable: {})", e.is_retryable());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Splits `/…/p2p/<peer>` into the transport address and the peer id.
fn split_peer(mut addr: Multiaddr) -> Result<(Multiaddr, PeerId), BoxError> {
    match addr.pop() {
        Some(Protocol::P2p(peer)) => Ok((addr, peer)),
        Some(last) => Err(format!(
            "address {}{last} does not end with /p2p/<peer id>; use a full address as printed \
             by `pointsub serve` (`listening on …`)",
            addr
        )
        .into()),
        None => Err("empty address: expected e.g. /ip4/127.0.0.1/tcp/4001/p2p/<peer id>".into()),
    }
}

/// `addr` with `/p2p/<peer>` appended (unless it already names a peer).
fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    addr.with_p2p(peer).unwrap_or_else(|addr| addr)
}

/// The `p`th percentile (nearest rank) of sorted, non-empty `sorted`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// `850 µs`, `1.42 ms`, `2.31 s`.
fn fmt_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn fmt_client_metrics(m: &ClientMetrics) -> String {
    format!(
        "requests {}, ok {}, failed {}, retries {}, streams opened {}, bytes out {}, bytes in {}",
        m.requests,
        m.succeeded,
        m.failed,
        m.retries,
        m.streams_opened,
        m.bytes_written,
        m.bytes_read
    )
}

fn fmt_server_metrics(m: &ServerMetrics) -> String {
    format!(
        "requests {}, ok {}, failed {}, busy {}, streams accepted {}, bytes in {}, bytes out {}",
        m.requests,
        m.succeeded,
        m.failed,
        m.rejected_busy,
        m.streams_accepted,
        m.bytes_read,
        m.bytes_written
    )
}
