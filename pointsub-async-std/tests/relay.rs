//! A node on async-std / smol reaches a server through a relay (circuit
//! relay v2), all three nodes on this runtime, over loopback.

mod common;

use std::time::Duration;

use futures::StreamExt;
use pointsub_async_std::libp2p::multiaddr::Protocol;
use pointsub_async_std::{
    Client, ClientConfig, Node, NodeConfig, NodeEvent, RelayLimits, Server, ServerConfig,
};

const ECHO: &str = "/relay-test/echo/1.0.0";

async fn reach_a_server_through_a_relay() {
    // The relay: a relay server that announces its listen address as its
    // external one (libp2p's relay refuses reservations without one).
    let relay = Node::new(NodeConfig::default().with_relay_server(RelayLimits::default()))
        .await
        .expect("relay node");
    for addr in relay.listen_addrs() {
        relay.add_external_address(addr).expect("relay runs");
    }
    let relay_addr = relay.addresses()[0].clone();

    // The server listens through the relay (and on loopback, as the
    // default has it).
    let server_node = Node::new(NodeConfig::default().with_relays([relay_addr.clone()]))
        .await
        .expect("server node");
    let circuit = server_node
        .listen_addrs()
        .into_iter()
        .find(|a| a.iter().any(|p| p == Protocol::P2pCircuit))
        .unwrap_or_else(|| {
            panic!(
                "no /p2p-circuit address: {:?}, failures {:?}",
                server_node.listen_addrs(),
                server_node.listen_failures()
            )
        });
    assert!(
        circuit.to_string().starts_with(&relay_addr.to_string()),
        "{circuit} is not through {relay_addr}"
    );
    let server = Server::new(&server_node, ServerConfig::default()).expect("server");
    server
        .start(ECHO, |_peer, body| async move { Ok::<_, String>(body) })
        .expect("start echo");

    // The client knows the server only by its circuit address, and has no
    // listener (so no address of its own a hole punch could use).
    let client_node = Node::new(NodeConfig::default().with_listen_addrs([]))
        .await
        .expect("client node");
    let mut events = client_node.events();
    client_node.add_address(server_node.peer_id(), circuit);
    let client = Client::new(&client_node, ClientConfig::default()).expect("client");
    let reply = client
        .send(server_node.peer_id(), ECHO, "through the relay".into())
        .await
        .expect("echo through the relay");
    assert_eq!(&reply[..], b"through the relay");

    // Its first connection to the server was the relayed one.
    let first = loop {
        match events.next().await {
            Some(NodeEvent::ConnectionEstablished { peer, relayed, .. })
                if peer == server_node.peer_id() =>
            {
                break relayed;
            }
            Some(_) => {}
            None => panic!("the client's events ended"),
        }
    };
    assert!(
        first,
        "the client's first connection to the server was not relayed"
    );
    client.close();
    server.stop().await;
    for node in [client_node, server_node, relay] {
        node.shutdown();
    }
    async_io::Timer::after(Duration::from_millis(10)).await;
}

#[test]
fn reach_through_relay_async_std() {
    async_std::task::block_on(common::within(reach_a_server_through_a_relay()));
}

#[test]
fn reach_through_relay_smol() {
    smol::block_on(common::within(reach_a_server_through_a_relay()));
}
