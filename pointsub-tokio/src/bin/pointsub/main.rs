//! The `pointsub` command-line tool.
//!
//! - `pointsub demo`: a server node and a client node in one process, an
//!   echo round trip, then a burst with latency figures and the metrics.
//! - `pointsub serve`: an echo server; prints its full addresses. Options
//!   slow its handler (`--delay-ms`), fix its identity (`--key-seed`), for
//!   crash and restart tests, and serve a protocol whose handler always
//!   fails (`--fail-protocol`), for clients' error paths.
//! - `pointsub send <ADDR>/p2p/<PEER> (<TEXT> | --file PATH)`: one request,
//!   its body from the argument, a file or stdin (`--file -`); the reply on
//!   stdout or, byte for byte, in a file (`--out PATH`). Its exit status
//!   says how the request ended ([`Failure`], listed in `send --help`).
//! - `pointsub relay`: a relay (circuit relay v2 server), AutoNAT v2 server
//!   and Kademlia server for nodes behind NATs; prints its addresses.
//!   `serve --relay ADDR` reserves a slot on it and prints the server's
//!   `/p2p-circuit` address; `send` to such an address goes through the
//!   relay, waits (`--upgrade-wait`) for DCUtR's hole punch, and says on
//!   stderr which path carried the request.
//! - `pointsub bench`: pointsub beside libp2p request-response and raw TCP,
//!   in one process; a table, its CSV and an SVG chart (see [`mod@bench`]).
//!
//! `-v` (repeatable) raises the log level on stderr; `RUST_LOG` overrides it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use pointsub_tokio::bench::{self, BoxError, chain, init_tracing};
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{
    Client, ClientConfig, ClientMetrics, Multiaddr, Node, NodeConfig, PeerId, RequestError, Server,
    ServerConfig, ServerMetrics,
};

mod chart;
mod discover;
mod prom;
mod reach;
mod soak;

/// The protocol `serve` and `send` use unless told otherwise.
const DEFAULT_PROTOCOL: &str = "/pointsub/echo/1.0.0";

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
    /// address, with its `/p2p/<peer id>` suffix, as `listening on <addr>`
    /// (with --relay, its `/p2p-circuit` address through each relay too).
    /// --delay-ms slows every answer; --key-seed keeps the peer id across
    /// restarts; --fail-protocol adds a protocol whose handler always fails;
    /// --metrics ADDR serves Prometheus metrics at http://ADDR/metrics.
    Serve(ServeArgs),
    /// Runs a relay for nodes behind NATs until interrupted: a circuit
    /// relay v2 server, an AutoNAT v2 server and a Kademlia server. Prints
    /// each address to give to `serve --relay` and `--bootstrap` as
    /// `listening on <addr>/p2p/<peer id>`, then `relaying`. It accepts
    /// reservations once it has an external address: --external, or else
    /// its own listen addresses (non-loopback ones if it has any).
    Relay(reach::RelayArgs),
    /// Sends one request to a peer and prints the reply on stdout (or writes
    /// it to --out). The body is TEXT, or the contents of --file (`-` reads
    /// stdin). The exit status says how the request ended (listed below).
    Send(SendArgs),
    /// Finds the servers of a protocol. With --bootstrap, through Kademlia
    /// provider records (servers started with `serve --bootstrap` announce
    /// themselves): prints `provider <peer id>` for each, and with --send
    /// sends to the XOR-closest and prints `answered by <peer id>` and the
    /// reply. With --watch, through identify: prints `node + <peer id>` /
    /// `node - <peer id>` as connected peers start and stop serving it.
    Discover(discover::DiscoverArgs),
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
    /// Serves Prometheus metrics (OpenMetrics text) at
    /// http://ADDR/metrics while the demo runs, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The protocol to serve.
    #[arg(long, value_name = "P", default_value = DEFAULT_PROTOCOL)]
    protocol: String,
    /// An address to listen on (repeatable), any multiaddr: e.g.
    /// /ip4/0.0.0.0/tcp/4001 or /ip4/127.0.0.1/udp/0/quic-v1. Default:
    /// /ip4/127.0.0.1/tcp/0. Behind a NAT, listen on a non-loopback
    /// address (e.g. /ip4/0.0.0.0/tcp/4001) so that hole punching can work.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// A relay to listen through (repeatable): its address ending with
    /// `/p2p/<relay id>`, as `pointsub relay` prints it. The server
    /// reserves a slot and prints its address through it, ending
    /// `/p2p-circuit/p2p/<peer id>`; fails if the relay refuses.
    #[arg(long = "relay", value_name = "MULTIADDR")]
    relay: Vec<Multiaddr>,
    /// A Kademlia bootstrap peer (repeatable), ending with `/p2p/<peer id>`;
    /// turns Kademlia on (protocol /pointsub/kad/1.0.0, client mode). The
    /// served protocol is announced as a provider record (`pointsub
    /// discover` finds it), with the relayed address under --relay, else
    /// with the listen addresses.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
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
    /// Also serves protocol P with a handler that always fails (answering
    /// every request with a handler error), so clients can test that path.
    #[arg(long, value_name = "P")]
    fail_protocol: Option<String>,
    /// Serves Prometheus metrics (OpenMetrics text) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464 (port 0: any free port;
    /// the address is printed as `metrics on http://…/metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Logs a warning (rate-limited) and counts
    /// `pointsub_server_slow_handlers_total` for each handler still running
    /// this many milliseconds after admission.
    #[arg(long, value_name = "MS")]
    slow_handler_ms: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The server's address, ending with `/p2p/<peer id>`, as printed by
    /// `pointsub serve`.
    #[arg(value_name = "MULTIADDR", value_parser = parse_peer_addr)]
    addr: PeerAddr,
    /// The request body, as text. Give either TEXT or --file.
    #[arg(
        value_name = "TEXT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    text: Option<String>,
    /// Reads the request body from this file, byte for byte; `-` reads
    /// stdin to its end. Give either TEXT or --file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Writes the reply to this file, byte for byte (`-`: to stdout, with
    /// nothing added). Without it the reply is printed as text (invalid
    /// UTF-8 replaced) followed by a newline. The file is written only when
    /// a reply arrives.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// The protocol to call.
    #[arg(long, value_name = "P", default_value = DEFAULT_PROTOCOL)]
    protocol: String,
    /// Overall time allowed for the request, retries included, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// An address to listen on (repeatable), any multiaddr. Default: none
    /// (dial only), or, to a `/p2p-circuit` address, /ip4/0.0.0.0/tcp/0 and
    /// /ip4/0.0.0.0/udp/0/quic-v1: hole punching needs a listener on a
    /// non-loopback address of the family it punches with.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// To a `/p2p-circuit` address: how long to wait, in seconds, for the
    /// hole punch (DCUtR) to give a direct connection before sending; the
    /// request then goes on whatever path there is. Stderr says which path
    /// carried it (`path: direct …` or `path: relayed …`).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    upgrade_wait: f64,
    /// Sends the request this many times, one after another, each reply on
    /// its own line; stderr says each one's path. A direct connection
    /// that appears meanwhile takes the next requests.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Milliseconds between two requests of --count.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    interval_ms: u64,
    /// A Kademlia bootstrap peer (repeatable), ending with `/p2p/<peer id>`;
    /// turns Kademlia on (client mode).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
}

/// Parses the command line, with `send --help` listing the exit statuses
/// [`Failure`] defines. Exits with status 2 on a usage error, as clap does.
fn parse_cli() -> Cli {
    let command = Cli::command().mut_subcommand("send", |send| send.after_help(exit_status_help()));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse_cli();
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
        Command::Relay(args) => reach::relay(args).await,
        Command::Send(args) => send(args).await,
        Command::Discover(args) => discover::discover(args).await,
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
    if let Some(addr) = args.metrics {
        let endpoint = prom::start(addr).await?;
        endpoint.metrics.add_client(&client);
        endpoint.metrics.add_server(&server);
        println!("{}", endpoint.announce());
    }

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
    let mut config = NodeConfig::default()
        .with_listen_addrs(listen)
        .with_relays(args.relay.iter().cloned());
    let announce = !args.bootstrap.is_empty() && args.relay.is_empty();
    if !args.bootstrap.is_empty() {
        config = config.with_bootstrap(args.bootstrap);
    }
    if let Some(seed) = args.key_seed {
        config = config.with_keypair(seeded_keypair(seed)?);
    }
    // The endpoint first, so that the node's swarm events reach
    // libp2p-metrics in the same registry from the start.
    let endpoint = match args.metrics {
        Some(addr) => Some(prom::start(addr).await?),
        None => None,
    };
    if let Some(endpoint) = &endpoint {
        config = config.with_swarm_observer(endpoint.observer());
    }
    let node = Node::new(config).await?;
    reach::check_reservations(&node, &args.relay).await?;
    reach::log_events(&node);
    if announce {
        // Kademlia provider records carry the node's external addresses
        // (without one, a record is useless to others): without a relay,
        // the listen addresses are the best there is.
        discover::announce_listen_addrs(&node);
    }
    let mut server_config = ServerConfig::default();
    if let Some(ms) = args.slow_handler_ms {
        server_config = server_config.with_slow_handler_threshold(Duration::from_millis(ms.max(1)));
    }
    let server = Server::new(&node, server_config)?;
    if let Some(endpoint) = &endpoint {
        endpoint.metrics.add_server(&server);
    }
    let delay = Duration::from_millis(args.delay_ms);
    server.start(&args.protocol, move |peer, body: Bytes| async move {
        tracing::info!(%peer, size = body.len(), "echo");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, String>(body)
    })?;
    if let Some(protocol) = &args.fail_protocol {
        server.start(protocol, |peer, body: Bytes| async move {
            tracing::info!(%peer, size = body.len(), "failing on purpose");
            Err::<Bytes, _>(FAIL_MESSAGE)
        })?;
    }
    {
        let mut out = std::io::stdout().lock();
        for addr in node.listen_addrs() {
            writeln!(out, "listening on {}", with_peer(addr, node.peer_id()))?;
        }
        writeln!(out, "serving {}", args.protocol)?;
        if let Some(protocol) = &args.fail_protocol {
            writeln!(out, "serving {protocol} (always fails)")?;
        }
        if let Some(endpoint) = &endpoint {
            writeln!(out, "{}", endpoint.announce())?;
        }
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

/// The error message of `serve --fail-protocol`'s handler.
const FAIL_MESSAGE: &str = "this protocol always fails (pointsub serve --fail-protocol)";

/// `pointsub send`.
async fn send(args: SendArgs) -> Result<ExitCode, BoxError> {
    let PeerAddr { addr, peer } = args.addr;
    // Read before dialing, so a bad file costs the server nothing. Nothing
    // else runs on this runtime yet, so a blocking read holds up no task.
    let body = match (args.text, &args.file) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(path)) => Bytes::from(read_body(path)?),
        // clap requires exactly one of them.
        _ => return Err("give the body either as TEXT or with --file, not both".into()),
    };
    let relay = reach::relay_of(&addr);
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if relay.is_some() {
        vec![
            "/ip4/0.0.0.0/tcp/0".parse()?,
            "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
        ]
    } else {
        Vec::new()
    };
    let mut config = NodeConfig::default().with_listen_addrs(listen);
    if !args.bootstrap.is_empty() {
        config = config.with_bootstrap(args.bootstrap);
    }
    let node = Node::new(config).await?;
    let mut paths = reach::Paths::new(&node, peer);
    node.add_address(peer, addr);
    let client = Client::new(&node, ClientConfig::default())?;
    let timeout = Duration::from_secs(args.timeout);
    if let Some(relay) = &relay {
        let upgrade_wait = Duration::try_from_secs_f64(args.upgrade_wait)
            .map_err(|e| format!("--upgrade-wait {}: {e}", args.upgrade_wait))?;
        if let Err(e) = paths
            .through_relay(relay.clone(), upgrade_wait, timeout)
            .await
        {
            client.close();
            node.shutdown();
            eprintln!(
                "error: {e} (exit status {}: {})",
                Failure::CannotConnect.code(),
                Failure::CannotConnect.describe()
            );
            return Ok(ExitCode::from(Failure::CannotConnect.code()));
        }
    }
    let mut outcome = Ok(());
    for i in 0..args.count {
        if i > 0 && args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        let path = if relay.is_some() {
            paths.prefer_direct().await;
            Some(paths.next_path())
        } else {
            None
        };
        let result = client
            .send_with_timeout(peer, &args.protocol, body.clone(), timeout)
            .await;
        if let Some(path) = path {
            if args.count > 1 {
                eprintln!("request {}: path: {path}", i + 1);
            } else {
                eprintln!("path: {path}");
            }
        }
        match result {
            Ok(reply) => write_reply(&reply, args.out.as_deref())?,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if let Some(punch) = paths.punch_time() {
        eprintln!(
            "hole punch: direct connection up {} ms after the relayed one",
            punch.as_millis()
        );
    }
    if let Some(upgrade) = paths.upgrade_time() {
        eprintln!(
            "upgrade: first relayed request to first direct request: {} ms",
            upgrade.as_millis()
        );
    }
    client.close();
    node.shutdown();
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let failure = Failure::of(&e);
            eprintln!(
                "error: {e} (retryable: {}; exit status {}: {})",
                e.is_retryable(),
                failure.code(),
                failure.describe()
            );
            Ok(ExitCode::from(failure.code()))
        }
    }
}

/// The whole of `path`, or of stdin for `-`.
fn read_body(path: &Path) -> Result<Vec<u8>, BoxError> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read the body from stdin: {e}"))?;
        Ok(body)
    } else {
        std::fs::read(path)
            .map_err(|e| format!("cannot read the body from {}: {e}", path.display()).into())
    }
}

/// Writes `reply` to `out` unchanged (`-`: stdout), or without `out` prints
/// it as text followed by a newline.
fn write_reply(reply: &[u8], out: Option<&Path>) -> Result<(), BoxError> {
    match out {
        Some(path) if path == Path::new("-") => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(reply)?;
            stdout.flush()?;
        }
        Some(path) => std::fs::write(path, reply)
            .map_err(|e| format!("cannot write the reply to {}: {e}", path.display()))?,
        None => {
            let text = String::from_utf8_lossy(reply);
            if let std::borrow::Cow::Owned(_) = text {
                eprintln!("warning: the reply is not UTF-8; use --out to keep its bytes");
            }
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{text}")?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// How `pointsub send` failed, by class; its exit status is [`Failure::code`].
///
/// 0 (an answer) and 2 (a usage error, from clap) are not failures of the
/// request and so not listed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Anything else: a local error (reading the body, writing the reply,
    /// starting the node), a broken stream, an oversize body, a protocol
    /// violation, an error this version does not classify.
    Other,
    /// No connection or stream to the peer could be had.
    CannotConnect,
    /// The request's time ran out (overall deadline, read, write or pool).
    TimedOut,
    /// The remote refused the request: busy, shutting down, protocol not
    /// served, or this peer not allowed.
    Refused,
    /// The remote's handler ran and returned an error.
    HandlerFailed,
}

impl Failure {
    /// Every class, in exit-status order.
    const ALL: [Failure; 5] = [
        Failure::Other,
        Failure::CannotConnect,
        Failure::TimedOut,
        Failure::Refused,
        Failure::HandlerFailed,
    ];

    /// The class of a request's error. Classified by variant; the wildcard
    /// arm takes variants added later (`RequestError` is non-exhaustive)
    /// until they are mapped here.
    fn of(e: &RequestError) -> Failure {
        match e {
            RequestError::ConnectFailed(_)
            | RequestError::ConnectTimeout
            | RequestError::NoAddress
            | RequestError::WrongPeer { .. } => Failure::CannotConnect,
            // Every node failed: their common class, if they share one.
            RequestError::AllNodesFailed { failures } => {
                let mut classes = failures.iter().map(|f| Failure::of(&f.error));
                match classes.next() {
                    Some(first) if classes.all(|c| c == first) => first,
                    _ => Failure::Other,
                }
            }
            RequestError::Timeout
            | RequestError::ReadTimeout
            | RequestError::WriteTimeout
            | RequestError::PoolTimeout => Failure::TimedOut,
            RequestError::Busy(_)
            | RequestError::ShuttingDown
            | RequestError::UnsupportedProtocol(_)
            | RequestError::Forbidden(_) => Failure::Refused,
            RequestError::Handler(_) => Failure::HandlerFailed,
            _ => Failure::Other,
        }
    }

    /// The process's exit status for this class.
    fn code(self) -> u8 {
        match self {
            Failure::Other => 1,
            Failure::CannotConnect => 3,
            Failure::TimedOut => 4,
            Failure::Refused => 5,
            Failure::HandlerFailed => 6,
        }
    }

    /// One line for `--help` and the error message.
    fn describe(self) -> &'static str {
        match self {
            Failure::Other => "another failure (local I/O, broken stream, oversize body, ...)",
            Failure::CannotConnect => {
                "cannot connect to the peer (refused, no address, wrong peer id, connect timeout)"
            }
            Failure::TimedOut => "timed out",
            Failure::Refused => {
                "the remote refused (busy, shutting down, protocol not served, forbidden)"
            }
            Failure::HandlerFailed => "the remote's handler failed",
        }
    }
}

/// The exit statuses of `pointsub send`, for its `--help`.
fn exit_status_help() -> String {
    let mut help = String::from("Exit status:\n  0  the reply arrived\n");
    let mut rows: Vec<(u8, &str)> = Failure::ALL
        .iter()
        .map(|f| (f.code(), f.describe()))
        .collect();
    rows.push((2, "usage error (bad arguments)"));
    rows.sort_unstable();
    for (code, what) in rows {
        let _ = writeln!(help, "  {code}  {what}");
    }
    help
}

/// A server's transport address and peer id, from `/…/p2p/<peer id>`.
#[derive(Clone, Debug)]
struct PeerAddr {
    addr: Multiaddr,
    peer: PeerId,
}

/// Parses `/…/p2p/<peer id>` for clap (an error is a usage error).
fn parse_peer_addr(s: &str) -> Result<PeerAddr, String> {
    let mut addr: Multiaddr = s.parse().map_err(|e| format!("{e}"))?;
    match addr.pop() {
        Some(Protocol::P2p(peer)) => Ok(PeerAddr { addr, peer }),
        Some(last) => Err(format!(
            "address {addr}{last} does not end with /p2p/<peer id>; use a full address as \
             printed by `pointsub serve` (`listening on …`)"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use pointsub_tokio::proto::Protocol as ProtoName;
    use pointsub_tokio::proto::{NodeFailure, PeerKey};

    #[test]
    fn exit_codes_are_distinct_and_leave_0_and_2_alone() {
        let mut codes: Vec<u8> = Failure::ALL.iter().map(|f| f.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Failure::ALL.len(), "two classes share a code");
        assert!(!codes.contains(&0) && !codes.contains(&2), "{codes:?}");
    }

    #[test]
    fn errors_are_classed_by_variant() {
        let cases = [
            (
                RequestError::ConnectFailed("x".into()),
                Failure::CannotConnect,
            ),
            (RequestError::ConnectTimeout, Failure::CannotConnect),
            (RequestError::NoAddress, Failure::CannotConnect),
            (
                RequestError::WrongPeer {
                    obtained: PeerKey::from(vec![7; 4]),
                },
                Failure::CannotConnect,
            ),
            (
                RequestError::AllNodesFailed {
                    failures: vec![
                        NodeFailure {
                            node: PeerKey::from(vec![1; 4]),
                            error: RequestError::NoAddress,
                        },
                        NodeFailure {
                            node: PeerKey::from(vec![2; 4]),
                            error: RequestError::ConnectTimeout,
                        },
                    ],
                },
                Failure::CannotConnect,
            ),
            (
                RequestError::AllNodesFailed {
                    failures: vec![
                        NodeFailure {
                            node: PeerKey::from(vec![1; 4]),
                            error: RequestError::NoAddress,
                        },
                        NodeFailure {
                            node: PeerKey::from(vec![2; 4]),
                            error: RequestError::Busy("full".into()),
                        },
                    ],
                },
                Failure::Other,
            ),
            (
                RequestError::AllNodesFailed { failures: vec![] },
                Failure::Other,
            ),
            (RequestError::Timeout, Failure::TimedOut),
            (RequestError::ReadTimeout, Failure::TimedOut),
            (RequestError::WriteTimeout, Failure::TimedOut),
            (RequestError::PoolTimeout, Failure::TimedOut),
            (RequestError::Busy("full".into()), Failure::Refused),
            (RequestError::ShuttingDown, Failure::Refused),
            (
                RequestError::UnsupportedProtocol(ProtoName::new("/p/1")),
                Failure::Refused,
            ),
            (RequestError::Forbidden("no".into()), Failure::Refused),
            (RequestError::Handler("boom".into()), Failure::HandlerFailed),
            (RequestError::StreamReset, Failure::Other),
            (RequestError::Closed, Failure::Other),
            (RequestError::Protocol("bad".into()), Failure::Other),
        ];
        for (error, class) in cases {
            assert_eq!(Failure::of(&error), class, "{error:?}");
        }
    }

    #[test]
    fn help_lists_every_exit_status() {
        let help = exit_status_help();
        for f in Failure::ALL {
            let line = format!("  {}  {}", f.code(), f.describe());
            assert!(help.contains(&line), "{line:?} missing from:\n{help}");
        }
        assert!(help.contains("  0  ") && help.contains("  2  "), "{help}");
    }

    #[test]
    fn peer_addresses_must_name_the_peer() {
        let peer = PeerId::random();
        let parsed = parse_peer_addr(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}"))
            .expect("a full address parses");
        assert_eq!(parsed.peer, peer);
        assert_eq!(parsed.addr.to_string(), "/ip4/127.0.0.1/tcp/4001");
        let err = parse_peer_addr("/ip4/127.0.0.1/tcp/4001").expect_err("no /p2p suffix");
        assert!(err.contains("/p2p/"), "{err}");
        assert!(parse_peer_addr("").is_err());
        assert!(parse_peer_addr("not an address").is_err());
    }
}
