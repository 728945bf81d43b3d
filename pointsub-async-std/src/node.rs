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
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
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

    /// Builds the swarm (this crate's TCP transport with `TCP_NODELAY`,
    /// noise, yamux, `config.connect_timeout` on connection set-up) and
    /// starts the node on this runtime. Listens on `/ip4/127.0.0.1/tcp/0`
    /// unless the config says otherwise (no QUIC on this runtime).
    async fn start_node(self, config: NodeConfig) -> Result<Node, NodeError> {
        let listen = config.listen_addrs.clone().unwrap_or_else(|| {
            vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
                    .with(Protocol::Tcp(0)),
            ]
        });
        let keypair = config.keypair.unwrap_or_else(Keypair::generate_ed25519);
        let behaviour =
            Behaviour::new(keypair.public().to_peer_id()).with_open_timeout(config.open_timeout);
        let control = behaviour.control();
        let transport = build_transport(
            &keypair,
            TransportConfig::default(),
            control.yamux_config(),
            config.connect_timeout,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?;
        let swarm_config = control
            .swarm_config(libp2p::swarm::Config::with_executor(RuntimeExecutor(
                self.clone(),
            )))
            .with_idle_connection_timeout(config.idle_connection_timeout);
        let swarm = Swarm::new(
            transport,
            behaviour,
            keypair.public().to_peer_id(),
            swarm_config,
        );
        Node::from_swarm(swarm, self, listen).await
    }
}
