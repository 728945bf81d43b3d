//! The node's composed behaviour on loopback: relay reservation, a
//! request through the relay, DCUtR's direct connection, the node's
//! events and accessors, and reaching the behaviour's parts.

use std::time::Duration;

use futures::StreamExt;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::net::{KAD_PROTOCOL, NetBehaviour};
use pointsub_tokio::{
    Behaviour, Client, ClientConfig, HolePunchOutcome, Multiaddr, Node, NodeConfig, NodeEvent,
    RelayLimits, Server, ServerConfig, WithSwarmError,
};

const ECHO: &str = "/net-test/echo/1.0.0";

/// Bound on each whole test.
const LIMIT: Duration = Duration::from_secs(60);

fn tcp_loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")
}

#[tokio::test]
async fn reserve_on_a_relay_send_through_it_and_get_a_direct_connection() {
    tokio::time::timeout(LIMIT, async {
        let relay = Node::new(
            NodeConfig::default()
                .with_listen_addrs([tcp_loopback()])
                .with_relay_server(RelayLimits::default())
                .with_autonat_server(true),
        )
        .await
        .expect("relay node");
        for addr in relay.listen_addrs() {
            relay.add_external_address(addr).expect("relay runs");
        }
        let relay_addr = relay.addresses()[0].clone();

        let server_node = Node::new(
            NodeConfig::default()
                .with_listen_addrs([tcp_loopback()])
                .with_relays([relay_addr.clone()]),
        )
        .await
        .expect("server node");
        let circuit = server_node
            .listen_addrs()
            .into_iter()
            .find(|a| a.iter().any(|p| p == Protocol::P2pCircuit))
            .unwrap_or_else(|| panic!("no circuit address: {:?}", server_node.listen_failures()));
        assert!(circuit.to_string().starts_with(&relay_addr.to_string()));
        // The relay's swarm task took the external address (before it
        // accepted the reservation).
        assert_eq!(relay.external_addrs(), relay.listen_addrs());
        let server = Server::new(&server_node, ServerConfig::default()).expect("server");
        server
            .start(ECHO, |_peer, body| async move { Ok::<_, String>(body) })
            .expect("start echo");

        let client_node = Node::new(NodeConfig::default().with_listen_addrs([tcp_loopback()]))
            .await
            .expect("client node");
        let mut events = client_node.events();
        let server_id = server_node.peer_id();
        client_node.add_address(server_id, circuit);
        let client = Client::new(&client_node, ClientConfig::default()).expect("client");
        let reply = client
            .send(server_id, ECHO, "via relay".into())
            .await
            .expect("echo through the relay");
        assert_eq!(&reply[..], b"via relay");

        // The first connection was relayed; DCUtR then gives a direct one
        // (on loopback nothing stands in its way).
        let mut first_relayed = None;
        let mut direct = None;
        while direct.is_none() {
            match events.next().await.expect("events end only at shutdown") {
                NodeEvent::ConnectionEstablished { peer, relayed, .. } if peer == server_id => {
                    first_relayed.get_or_insert(relayed);
                }
                NodeEvent::HolePunch { peer, outcome } if peer == server_id => match outcome {
                    HolePunchOutcome::Direct { connection } => direct = Some(connection),
                    HolePunchOutcome::Failed { reason } => panic!("hole punch failed: {reason}"),
                    other => panic!("unexpected outcome {other:?}"),
                },
                _ => {}
            }
        }
        assert_eq!(
            first_relayed,
            Some(true),
            "the first connection was not relayed"
        );
        let connections = client_node.connections_to(&server_id);
        assert!(
            connections
                .iter()
                .any(|c| Some(c.connection) == direct && !c.relayed),
            "{connections:?}"
        );
        // Closing the relayed connection (and waiting until it is gone, as
        // `pointsub send` does) leaves the direct one, which keeps serving.
        let mut relayed: Vec<_> = connections
            .iter()
            .filter(|c| c.relayed)
            .map(|c| c.connection)
            .collect();
        for c in &relayed {
            client_node.close_connection(*c).expect("node runs");
        }
        while !relayed.is_empty() {
            if let NodeEvent::ConnectionClosed { connection, .. } =
                events.next().await.expect("events end only at shutdown")
            {
                relayed.retain(|c| *c != connection);
            }
        }
        assert!(
            client_node
                .connections_to(&server_id)
                .iter()
                .all(|c| !c.relayed)
        );
        let reply = client
            .send(server_id, ECHO, "direct".into())
            .await
            .expect("echo on the direct connection");
        assert_eq!(&reply[..], b"direct");

        client.close();
        server.stop().await;
        for node in [client_node, server_node, relay] {
            node.shutdown();
        }
    })
    .await
    .expect("test within its bound");
}

#[tokio::test]
async fn with_swarm_reaches_the_composed_behaviour() {
    tokio::time::timeout(LIMIT, async {
        let node = Node::new(NodeConfig::default().with_kad(true).with_public(true))
            .await
            .expect("node");
        let kad_on = node
            .with_swarm(|swarm: &mut pointsub_tokio::libp2p::Swarm<NetBehaviour>| {
                swarm.behaviour().kad.is_enabled() && !swarm.behaviour().relay_server.is_enabled()
            })
            .await
            .expect("the node's swarm");
        assert!(kad_on);
        let wrong = node
            .with_swarm(|_: &mut pointsub_tokio::libp2p::Swarm<Behaviour>| ())
            .await;
        assert_eq!(wrong, Err(WithSwarmError::WrongBehaviour));
        node.shutdown();
        let gone = node
            .with_swarm(|_: &mut pointsub_tokio::libp2p::Swarm<NetBehaviour>| ())
            .await;
        assert_eq!(gone, Err(WithSwarmError::ShutDown));
        assert_eq!(KAD_PROTOCOL.as_ref(), "/pointsub/kad/1.0.0");
    })
    .await
    .expect("test within its bound");
}

#[test]
fn relays_become_circuit_listeners() {
    let relay: Multiaddr = format!(
        "/ip4/192.0.2.1/tcp/4001/p2p/{}",
        pointsub_tokio::PeerId::random()
    )
    .parse()
    .expect("valid multiaddr");
    let config = NodeConfig::default()
        .with_listen_addrs([tcp_loopback()])
        .with_relays([relay.clone()]);
    let all = config.all_listen_addrs(|_| unreachable!("listen addresses were given"));
    assert_eq!(
        all,
        vec![tcp_loopback(), relay.clone().with(Protocol::P2pCircuit)]
    );
    let config = NodeConfig::default().listen_on_all_interfaces(4001);
    let all = config.all_listen_addrs(|port| {
        assert_eq!(port, Some(4001));
        vec![]
    });
    assert!(all.is_empty());
}
