//! pointsub inside an application's own libp2p swarm, under smol.
//!
//! Two "applications" each build their own swarm whose behaviour is
//! pointsub + identify + ping, and run their own swarm loop as a smol
//! task. pointsub's client and server work on the behaviour's `Host`;
//! requests go both ways over the one connection the applications share,
//! while identify and ping go on beside them.
//!
//! Run with `cargo run -p pointsub-async-std --example smol_own_swarm`.

use std::time::Duration;

use async_io::Timer;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use pointsub_async_std::libp2p::identity::Keypair;
use pointsub_async_std::libp2p::swarm::{self, NetworkBehaviour, SwarmEvent};
use pointsub_async_std::libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use pointsub_async_std::transport::Config as TcpConfig;
use pointsub_async_std::{
    AsyncStdRuntime, Behaviour, Client, ClientConfig, Host, RuntimeExecutor, Server, ServerConfig,
    build_transport,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application's behaviour: pointsub beside identify and ping. The
/// `prelude` line is needed when libp2p is reached only through
/// pointsub's re-export (the derive's default is `::libp2p::swarm`).
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_async_std::libp2p::swarm::derive_prelude")]
struct AppBehaviour {
    pointsub: Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// What an application's swarm loop reports.
enum Report {
    Identified(PeerId, String),
    Rtt(PeerId, Duration),
}

/// Builds one application's swarm, starts its loop, and returns its
/// pointsub host, its address and the loop's reports.
async fn start_app() -> Result<(Host, Multiaddr, mpsc::UnboundedReceiver<Report>), BoxError> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();

    // pointsub's behaviour takes the swarm's id; its host is what clients
    // and servers are built on.
    let pointsub = Behaviour::new(peer_id);
    let control = pointsub.control();
    let runtime = AsyncStdRuntime::new();
    let host = pointsub.host(runtime.clone());

    // TCP + noise (coalesced: flushes, whole-message reads) + yamux with pointsub's yamux limit
    // (1,024 streams).
    let transport = build_transport(
        &keypair,
        TcpConfig::default(),
        control.yamux_config(),
        Duration::from_secs(5),
    )?;
    let behaviour = AppBehaviour {
        pointsub,
        identify: identify::Behaviour::new(identify::Config::new(
            "/own-swarm-example/1.0.0".into(),
            keypair.public(),
        )),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(500))),
    };
    // pointsub's swarm limit (1,024 negotiating inbound streams).
    let config = control.swarm_config(swarm::Config::with_executor(RuntimeExecutor(runtime)));
    let mut swarm = Swarm::new(transport, behaviour, peer_id, config);
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };

    // The application's own swarm loop: pointsub needs nothing from it
    // but to be polled.
    let (tx, rx) = mpsc::unbounded();
    smol::spawn(async move {
        loop {
            let report =
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(AppBehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) => Report::Identified(peer_id, info.protocol_version),
                    SwarmEvent::Behaviour(AppBehaviourEvent::Ping(ping::Event {
                        peer,
                        result: Ok(rtt),
                        ..
                    })) => Report::Rtt(peer, rtt),
                    SwarmEvent::Behaviour(AppBehaviourEvent::Pointsub(never)) => match never {},
                    _ => continue,
                };
            if tx.unbounded_send(report).is_err() {
                break;
            }
        }
    })
    .detach();
    Ok((host, addr, rx))
}

fn short(peer: &PeerId) -> String {
    let text = peer.to_base58();
    text[text.len() - 6..].to_owned()
}

fn main() -> Result<(), BoxError> {
    smol::block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let (alice, alice_addr, mut alice_reports) = start_app().await?;
    let (bob, _, mut bob_reports) = start_app().await?;
    println!("alice {} listens on {alice_addr}", short(&alice.peer_id()));
    println!("bob   {}", short(&bob.peer_id()));

    // Both serve; both send. Clients and servers take `&host` exactly as
    // they take `&node`.
    let mut servers = Vec::new();
    for (name, host) in [("alice", &alice), ("bob", &bob)] {
        let server = Server::new(host, ServerConfig::default())?;
        server.start("/greet/1.0.0", move |peer, body| async move {
            let text = format!(
                "{name} to {}: hello, {}",
                short(&peer),
                String::from_utf8_lossy(&body)
            );
            Ok::<_, String>(text.into())
        })?;
        servers.push(server);
    }
    let bob_client = Client::new(&bob, ClientConfig::default())?;
    let alice_client = Client::new(&alice, ClientConfig::default())?;

    bob.add_address(alice.peer_id(), alice_addr);
    let reply = bob_client
        .send(alice.peer_id(), "/greet/1.0.0", "bob".into())
        .await?;
    println!("bob   -> alice: {}", String::from_utf8_lossy(&reply));
    // Alice needs no address: pointsub opens its stream on the connection
    // Bob's swarm made.
    let reply = alice_client
        .send(bob.peer_id(), "/greet/1.0.0", "alice".into())
        .await?;
    println!("alice -> bob:   {}", String::from_utf8_lossy(&reply));

    // identify and ping keep working beside pointsub.
    let mut identified = 0;
    let mut rtts = 0;
    let mut deadline = FutureExt::fuse(Timer::after(Duration::from_secs(10)));
    while identified < 2 || rtts < 2 {
        let report = futures::select! {
            r = alice_reports.next() => r.map(|r| ("alice", r)),
            r = bob_reports.next() => r.map(|r| ("bob", r)),
            _ = deadline => return Err("identify or ping did not report in 10 s".into()),
        };
        match report {
            Some((who, Report::Identified(peer, protocol))) => {
                identified += 1;
                println!("{who:5} identify: {} speaks {protocol}", short(&peer));
            }
            Some((who, Report::Rtt(peer, rtt))) => {
                rtts += 1;
                println!("{who:5} ping: {} rtt {rtt:?}", short(&peer));
            }
            None => return Err("a swarm loop ended".into()),
        }
    }
    println!(
        "connections: alice {}, bob {}",
        alice.control().connected_peers().len(),
        bob.control().connected_peers().len()
    );
    drop(servers);
    Ok(())
}
