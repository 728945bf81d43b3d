//! A closed-loop load over loopback: `N` tasks each send a request and wait
//! for its answer, for a fixed time; prints QPS and latency percentiles.
//! Handy under a profiler.
//!
//! Run: `cargo run --release -p pointsub-tokio --example load -- [in_flight] [seconds] [body_bytes]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use pointsub_tokio::{Client, ClientConfig, Node, NodeConfig, Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let in_flight: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let size: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(581);

    let tcp = || {
        NodeConfig::default().with_listen_addrs(["/ip4/127.0.0.1/tcp/0".parse().expect("valid")])
    };
    let server_node = Node::new(tcp()).await?;
    let client_node = Node::new(tcp()).await?;
    for addr in server_node.listen_addrs() {
        client_node.add_address(server_node.peer_id(), addr);
    }
    let server = Server::new(&server_node, ServerConfig::default())?;
    server.start("/load/1", |_peer, body: Bytes| async move {
        Ok::<_, String>(body)
    })?;
    // POINTSUB_PER_STREAM overrides requests in flight per pooled stream.
    let mut config = ClientConfig::default();
    if let Some(n) = std::env::var("POINTSUB_PER_STREAM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.with_max_inflight_per_stream(n);
    }
    let client = Client::new(&client_node, config)?;
    let peer = server_node.peer_id();
    // Incompressible, like most payloads that are large.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let body: Bytes = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into();

    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < stop {
                let t = Instant::now();
                match client.send(peer, "/load/1", body.clone()).await {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u32),
                    Err(_) => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (lat, f) = t.await?;
        all.extend(lat);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "in flight {in_flight}, body {size} B: {:.0} QPS, p50 {} us, p99 {} us, failed {failed}",
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
