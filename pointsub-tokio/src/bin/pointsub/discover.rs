//! `pointsub discover`: finds the servers of a protocol, through Kademlia
//! provider records or identify, and optionally sends to the closest one.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use pointsub_tokio::net::NetBehaviour;
use pointsub_tokio::{Client, ClientConfig, Multiaddr, Node, NodeConfig, PeerId};

use pointsub_tokio::bench::BoxError;
use pointsub_tokio::libp2p;

use crate::{DEFAULT_PROTOCOL, shutdown_signal, with_peer};

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// The protocol whose servers to find.
    #[arg(long, value_name = "P", default_value = DEFAULT_PROTOCOL)]
    protocol: String,
    /// A Kademlia bootstrap peer (repeatable), ending with `/p2p/<peer id>`.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// An address to listen on (repeatable). Default: /ip4/127.0.0.1/tcp/0.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Run Kademlia in server mode, so that others can bootstrap from this
    /// node (for a node others can reach).
    #[arg(long)]
    public: bool,
    /// Watch the servers identify finds among the connected peers: prints
    /// `node + <peer id>` and `node - <peer id>` as they come and go, until
    /// interrupted (or --for).
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many seconds.
    #[arg(long = "for", value_name = "SECS")]
    watch_for: Option<f64>,
    /// Sends TEXT to the XOR-closest provider found through Kademlia and
    /// prints `answered by <peer id>` then the reply.
    #[arg(long, value_name = "TEXT")]
    send: Option<String>,
    /// How long to keep looking up providers, in seconds, until --expect
    /// are found.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
    /// Keep looking up until at least this many providers are found.
    #[arg(long, value_name = "N", default_value_t = 1)]
    expect: usize,
}

/// `pointsub discover`.
pub async fn discover(args: DiscoverArgs) -> Result<ExitCode, BoxError> {
    let listen = if args.listen.is_empty() {
        vec!["/ip4/127.0.0.1/tcp/0".parse()?]
    } else {
        args.listen.clone()
    };
    let mut config = NodeConfig::default()
        .with_listen_addrs(listen)
        .with_bootstrap(args.bootstrap.clone());
    config.kad = true;
    config.public = args.public;
    let node = Node::new(config).await?;
    crate::reach::log_events(&node);
    let client = Client::new(&node, ClientConfig::default())?;
    {
        let mut out = std::io::stdout().lock();
        for addr in node.listen_addrs() {
            writeln!(out, "listening on {}", with_peer(addr, node.peer_id()))?;
        }
        out.flush()?;
    }
    if args.watch {
        watch(&client, &args).await?;
    } else {
        let found = find(&node, &client, &args).await?;
        if found.len() < args.expect {
            eprintln!(
                "found {} provider(s) of {}, expected {}",
                found.len(),
                args.protocol,
                args.expect
            );
            return Ok(ExitCode::from(3));
        }
        if let Some(text) = &args.send {
            let response = client
                .send_closest(&args.protocol, Bytes::from(text.clone()))
                .await?;
            println!("answered by {}", response.peer);
            println!("{}", String::from_utf8_lossy(&response.body));
        }
    }
    node.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Makes the node's listen addresses (those others may reach: not
/// wildcards) its external addresses, which its provider records carry.
pub fn announce_listen_addrs(node: &Node) {
    for addr in node.listen_addrs() {
        let _ = node.add_external_address(addr);
    }
}

/// Looks the providers up until `--expect` are found or `--timeout`
/// passes; prints each as `provider <peer id>`.
async fn find(node: &Node, client: &Client, args: &DiscoverArgs) -> Result<Vec<PeerId>, BoxError> {
    let providers = node
        .with_swarm(|swarm: &mut libp2p::Swarm<NetBehaviour>| {
            swarm.behaviour().kad.as_ref().map(|p| p.control())
        })
        .await?
        .ok_or("Kademlia is off: give --bootstrap")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout.max(0.0));
    let found = loop {
        let found = match client.discover_providers(&providers, &args.protocol).await {
            Ok(found) => found,
            Err(e) if e.is_retryable() => {
                tracing::info!(error = %e, "provider lookup");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        if found.len() >= args.expect || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut out = std::io::stdout().lock();
    for peer in &found {
        writeln!(out, "provider {peer}")?;
    }
    out.flush()?;
    Ok(found)
}

/// Prints the server-set changes identify makes until interrupted.
async fn watch(client: &Client, args: &DiscoverArgs) -> Result<(), BoxError> {
    client.discover(&args.protocol)?;
    println!("watching {}", args.protocol);
    let stop = async {
        match args.watch_for {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => shutdown_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut known: Vec<PeerId> = Vec::new();
    loop {
        let now = client.server_nodes(&args.protocol);
        let mut out = std::io::stdout().lock();
        for peer in now.iter().filter(|p| !known.contains(p)) {
            writeln!(out, "node + {peer}")?;
        }
        for peer in known.iter().filter(|p| !now.contains(p)) {
            writeln!(out, "node - {peer}")?;
        }
        out.flush()?;
        drop(out);
        known = now;
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
