//! Building a [`Node`] on async-std / smol: [`AsyncStdRuntime`]'s
//! [`NodeRuntime`] implementation, behind `Node::new` and
//! `Node::with_runtime`.
//!
//! Only the swarm construction is here (this crate's TCP transport, noise,
//! yamux, the connection timeout, the executor). Driving the swarm,
//! streams, clients, servers and raw connections are the runtime-neutral
//! glue of `pointsub-tokio`, reached through [`Node::from_swarm`].
//!
//! [`Node::from_swarm`]: pointsub_tokio::generic::Node::from_swarm

use std::net::Ipv4Addr;

use libp2p::Swarm;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::transport::{OrTransport, Transport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::relay;
use pointsub_tokio::coalesce;
use pointsub_tokio::net::NetBehaviour;
use pointsub_tokio::{Behaviour, Multiaddr, NodeConfig, NodeError, NodeRuntime, RuntimeExecutor};

use crate::rt::AsyncStdRuntime;
use crate::transport::{Config as TransportConfig, build_transport};

use crate::Node;

impl NodeRuntime for AsyncStdRuntime {
    /// Async-std's global executor: works under `async_std::task::block_on`,
    /// `smol::block_on` or any other executor, with nothing to enter first.
    fn for_new_node() -> Result<Self, NodeError> {
        Ok(AsyncStdRuntime::default())
    }

    /// Builds the swarm and starts the node on this runtime: this crate's
    /// TCP transport (`TCP_NODELAY`, no port reuse) beside libp2p's relay
    /// client transport, each with noise and yamux and
    /// `config.connect_timeout` on connection set-up, under the same
    /// composed behaviour as the tokio node (identify, ping, AutoNAT v2,
    /// relay client and optional server, DCUtR, optional Kademlia; no
    /// mDNS). Listens on `/ip4/127.0.0.1/tcp/0` unless the config says
    /// otherwise (no QUIC on this runtime), plus a `/p2p-circuit` listener
    /// per relay in the config.
    ///
    /// Without port reuse, a hole punch over TCP from this node rarely
    /// works behind a NAT (its dials leave from fresh ports the NAT maps
    /// elsewhere); it reaches NATed peers through relays.
    async fn start_node(self, config: NodeConfig) -> Result<Node, NodeError> {
        let listen = config.all_listen_addrs(|all_interfaces| {
            let (ip, port) = match all_interfaces {
                Some(port) => (Ipv4Addr::UNSPECIFIED, port),
                None => (Ipv4Addr::LOCALHOST, 0),
            };
            vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(ip))
                    .with(Protocol::Tcp(port)),
            ]
        });
        if config.mdns {
            tracing::warn!("mDNS is not available on async-std: ignored");
        }
        let keypair = config
            .keypair
            .clone()
            .unwrap_or_else(Keypair::generate_ed25519);
        let peer_id = keypair.public().to_peer_id();
        let behaviour = Behaviour::new(peer_id).with_open_timeout(config.open_timeout);
        let control = behaviour.control();
        let tcp = build_transport(
            &keypair,
            TransportConfig::default(),
            control.yamux_config(),
            config.connect_timeout,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?;
        let (relay_transport, relay_client) = relay::client::new(peer_id);
        let relayed = relay_transport
            .upgrade(Version::V1Lazy)
            .authenticate(
                coalesce::noise(&keypair).map_err(|e| NodeError::Transport(e.to_string()))?,
            )
            .multiplex(control.yamux_config())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
        let relayed = TransportTimeout::new(relayed, config.connect_timeout);
        let transport = OrTransport::new(relayed, tcp)
            .map(|either, _| either.into_inner())
            .boxed();
        let behaviour = NetBehaviour::new(&keypair.public(), relay_client, behaviour, &config);
        let swarm_config = control
            .swarm_config(libp2p::swarm::Config::with_executor(RuntimeExecutor(
                self.clone(),
            )))
            .with_idle_connection_timeout(config.idle_connection_timeout);
        let swarm = Swarm::new(transport, behaviour, peer_id, swarm_config);
        let observer = config.swarm_observer.clone().map(|o| o.0);
        let node = Node::from_swarm_observed(swarm, self, listen, observer).await?;
        for addr in config.external_addrs {
            // The node was just started: it runs.
            let _ = node.add_external_address(addr);
        }
        Ok(node)
    }
}
