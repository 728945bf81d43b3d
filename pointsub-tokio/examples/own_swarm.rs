//! pointsub inside an application's own libp2p swarm, on tokio.
//!
//! Two "applications" each build their own swarm whose behaviour is
//! pointsub + identify + ping, and run their own swarm loop. pointsub's
//! client and server work on the behaviour's `Host`; requests go both
//! ways over the one connection the applications share, while identify
//! and ping go on beside them.
//!
//! Run with `cargo run -p pointsub-tokio --example own_swarm`.

use std::time::Duration;

use pointsub_tokio::libp2p::futures::StreamExt;
use pointsub_tokio::libp2p::identity::Keypair;
use pointsub_tokio::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use pointsub_tokio::libp2p::{Multiaddr, PeerId, SwarmBuilder, identify, ping, tcp};
use pointsub_tokio::{
    Behaviour, Client, ClientConfig, Host, Server, ServerConfig, TokioRuntime, coalesce,
};
use tokio::sync::mpsc;

/// The application's behaviour: pointsub beside identify and ping. The
/// `prelude` line is needed when libp2p is reached only through
/// pointsub's re-export (the derive's default is `::libp2p::swarm`).
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "pointsub_tokio::libp2p::swarm::derive_prelude")]
struct AppBehaviour {
    pointsub: Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// What an application's swarm loop reports.
enum Report {
    Listening(Multiaddr),
    Identified(PeerId, String),
    Rtt(PeerId, Duration),
}

/// Builds one application's swarm, starts its loop, and returns its
/// pointsub host and the loop's reports.
fn start_app() -> Result<(Host, mpsc::UnboundedReceiver<Report>), Box<dyn std::error::Error>> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();

    // pointsub's behaviour takes the swarm's id; its host is what clients
    // and servers are built on.
    let pointsub = Behaviour::new(peer_id);
    let control = pointsub.control();
    let host = pointsub.host(TokioRuntime::try_current()?);

    let identify = identify::Behaviour::new(identify::Config::new(
        "/own-swarm-example/1.0.0".into(),
        keypair.public(),
    ));
    let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(500)));
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // libp2p's noise with its flushes coalesced under yamux and its
        // reads taking noise messages whole (fewer, larger encrypted
        // messages and system calls for large bodies; the same wire
        // format), and pointsub's yamux limit (1,024 streams per
        // connection).
        .with_tcp(tcp::Config::default(), coalesce::noise, || {
            control.yamux_config()
        })?
        .with_behaviour(|_| AppBehaviour {
            pointsub,
            identify,
            ping,
        })?
        // pointsub's swarm limit (1,024 negotiating inbound streams).
        .with_swarm_config(|config| control.swarm_config(config))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;

    // The application's own swarm loop: pointsub needs nothing from it
    // but to be polled.
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let report =
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => Report::Listening(address),
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
            if tx.send(report).is_err() {
                break;
            }
        }
    });
    Ok((host, rx))
}

async fn listen_addr(reports: &mut mpsc::UnboundedReceiver<Report>) -> Option<Multiaddr> {
    while let Some(report) = reports.recv().await {
        if let Report::Listening(addr) = report {
            return Some(addr);
        }
    }
    None
}

fn short(peer: &PeerId) -> String {
    let text = peer.to_base58();
    text[text.len() - 6..].to_owned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (alice, mut alice_reports) = start_app()?;
    let (bob, mut bob_reports) = start_app()?;
    let alice_addr = listen_addr(&mut alice_reports).await.ok_or("no address")?;
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
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    while identified < 2 || rtts < 2 {
        let report = tokio::select! {
            r = alice_reports.recv() => r.map(|r| ("alice", r)),
            r = bob_reports.recv() => r.map(|r| ("bob", r)),
            () = &mut deadline => return Err("identify or ping did not report in 10 s".into()),
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
            Some(_) => {}
            None => return Err("a swarm loop ended".into()),
        }
    }
    println!(
        "connections: alice {:?}, bob {:?}",
        alice.control().connected_peers().len(),
        bob.control().connected_peers().len()
    );
    drop(servers);
    Ok(())
}
