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

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use pointsub_tokio::{Multiaddr, NodeConfig, NodeError, NodeRuntime, StreamBehaviour};

use crate::rt::AsyncStdRuntime;
use crate::transport::build_swarm;

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
        let behaviour = StreamBehaviour::new().with_open_timeout(config.open_timeout);
        let swarm = build_swarm(
            keypair,
            behaviour,
            self.clone(),
            config.idle_connection_timeout,
            config.connect_timeout,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?;
        Node::from_swarm(swarm, self, listen).await
    }
}
