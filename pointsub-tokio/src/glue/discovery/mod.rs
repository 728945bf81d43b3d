//! Server discovery for [`Client::send_closest`]: the server nodes of a
//! protocol found without a hand-kept list.
//!
//! Each server node has sources ([`NodeSource`]). Nodes added by hand
//! ([`Client::add_server_node`]) stay until removed by hand, whatever
//! discovery says; a discovered node leaves when the last source that
//! listed it withdraws it (see [`pointsub_proto::route`]).
//!
//! Two sources are built in:
//!
//! - **identify** ([`Client::discover`]): the connected peers whose
//!   identify information lists the protocol become its server nodes; they
//!   leave when their last connection closes or when they stop listing it.
//!   This needs libp2p's identify in the swarm (a node has it; an
//!   application composing its own swarm adds it). The remote protocols are
//!   read from the connection handlers' protocol-change events, so it works
//!   whoever composed the swarm. When a local server starts or stops a
//!   protocol, every connection is woken so identify pushes the change at
//!   once.
//! - **Kademlia provider records** ([`Providers`], a behaviour wrapping
//!   libp2p's Kademlia): every protocol a server serves is announced as a
//!   provider record, and [`Client::discover_providers`] looks the
//!   providers of a protocol up, keeping the addresses the lookup found, so
//!   a client that knows only a bootstrap peer can reach them.
//!
//! [`Client::send_closest`]: crate::generic::Client::send_closest
//! [`Client::add_server_node`]: crate::generic::Client::add_server_node
//! [`Client::discover`]: crate::generic::Client::discover
//! [`Client::discover_providers`]: crate::generic::Client::discover_providers

use std::collections::BTreeMap;

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use pointsub_proto::{NodeSource, Protocol, RequestError};

use super::client::Client;
use super::common::{peer_id, peer_key};
use super::rt::Runtime;

mod kad;

pub use kad::{
    FindProviders, KAD_PROTOCOL, Provider, Providers, ProvidersControl, ProvidersError, kad_config,
    provider_key,
};

/// Why a discovery call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Not a libp2p protocol name (it must start with `/`); final.
    #[error("invalid protocol name {0:?}: it must start with '/'")]
    InvalidProtocol(String),
    /// The client is closed; final.
    #[error("the client is closed")]
    Closed,
    /// The provider lookup failed.
    #[error("provider lookup failed: {0}")]
    Providers(#[from] ProvidersError),
}

impl DiscoveryError {
    /// Whether trying again may help (only a lookup that may succeed
    /// later, see [`ProvidersError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InvalidProtocol(_) | Self::Closed => false,
            Self::Providers(e) => e.is_retryable(),
        }
    }
}

impl From<DiscoveryError> for RequestError {
    fn from(e: DiscoveryError) -> Self {
        match e {
            DiscoveryError::InvalidProtocol(p) => RequestError::InvalidProtocol(p),
            DiscoveryError::Closed => RequestError::Closed,
            DiscoveryError::Providers(e) => RequestError::ConnectFailed(e.to_string()),
        }
    }
}

fn names(protocol: &str) -> Result<(Protocol, StreamProtocol), DiscoveryError> {
    let stream = StreamProtocol::try_from_owned(protocol.to_owned())
        .map_err(|_| DiscoveryError::InvalidProtocol(protocol.to_owned()))?;
    Ok((Protocol::from(protocol), stream))
}

/// A client's identify-based discovery: the protocols it watches, and the
/// switch of the task that follows the remote protocols.
#[derive(Default)]
pub(crate) struct ClientDiscovery {
    watched: BTreeMap<Protocol, StreamProtocol>,
    /// Dropping it ends the task.
    task: Option<oneshot::Sender<()>>,
}

impl ClientDiscovery {
    /// Applies what `peer` lists now to every watched protocol.
    fn apply(
        &self,
        core: &mut pointsub_proto::Client,
        peer: PeerId,
        lists: impl Fn(&StreamProtocol) -> bool,
    ) {
        let key = peer_key(&peer);
        for (protocol, stream) in &self.watched {
            if lists(stream) {
                // Only the local node is refused, and it never reports.
                let _ = core.add_server_node_from(protocol, key.clone(), NodeSource::Identify);
            } else {
                core.withdraw_server_node(protocol, &key, NodeSource::Identify);
            }
        }
    }
}

impl<R: Runtime> Client<R> {
    /// Finds the server nodes of `protocol` through identify, from now on
    /// until [`Client::stop_discovery`]: every connected peer whose
    /// identify information lists `protocol` becomes a server node (source
    /// [`NodeSource::Identify`]); it leaves when its last connection closes
    /// or it stops listing the protocol. Nodes added by hand are left
    /// alone. Peers already connected and known count at once.
    ///
    /// Needs identify in the swarm (a [`Node`](crate::generic::Node) has
    /// it; an application composing its own swarm adds it). Calling it
    /// again for the same protocol does nothing.
    pub fn discover(&self, protocol: &str) -> Result<(), DiscoveryError> {
        let (name, stream) = names(protocol)?;
        let control = self.host().control().clone();
        // Watch first: nothing is missed between the state read below and
        // the changes that follow.
        let watch = control.watch_remote_protocols();
        let sets = self.node_sets();
        let start = sets
            .with(|core, d| {
                d.watched.insert(name.clone(), stream.clone());
                for peer in control.peers_supporting(&stream) {
                    let _ = core.add_server_node_from(&name, peer_key(&peer), NodeSource::Identify);
                }
                if d.task.is_some() {
                    return None;
                }
                let (stop, stopped) = oneshot::channel();
                d.task = Some(stop);
                Some(stopped)
            })
            .ok_or(DiscoveryError::Closed)?;
        let Some(stopped) = start else {
            return Ok(());
        };
        let task = async move {
            let mut watch = watch.fuse();
            let mut stopped = stopped.fuse();
            loop {
                let change = futures::select! {
                    change = watch.next() => change,
                    _ = stopped => None,
                };
                let Some(change) = change else { break };
                let alive = sets.with(|core, d| {
                    d.apply(core, change.peer, |p| {
                        change.connected && change.supports(p)
                    });
                });
                if alive.is_none() {
                    break;
                }
            }
        };
        self.host().runtime().spawn(Box::pin(task));
        Ok(())
    }

    /// Stops identify-based discovery of `protocol`: the nodes only
    /// identify listed leave the set (nodes added by hand, or found by
    /// another source, stay). Returns the nodes that left.
    pub fn stop_discovery(&self, protocol: &str) -> Vec<PeerId> {
        let name = Protocol::from(protocol);
        self.node_sets()
            .with(|core, d| {
                d.watched.remove(&name);
                if d.watched.is_empty() {
                    // Ends the task.
                    d.task = None;
                }
                core.withdraw_server_nodes(&name, NodeSource::Identify)
            })
            .unwrap_or_default()
            .iter()
            .filter_map(peer_id)
            .collect()
    }

    /// The protocols whose server nodes identify finds
    /// ([`Client::discover`]), sorted.
    pub fn discovered_protocols(&self) -> Vec<String> {
        self.node_sets()
            .with(|_, d| d.watched.keys().map(|p| p.as_str().to_owned()).collect())
            .unwrap_or_default()
    }

    /// Where `peer` came from as a server node of `protocol`: by hand,
    /// identify, Kademlia... (empty when it is not one).
    pub fn server_node_sources(&self, protocol: &str, peer: PeerId) -> Vec<NodeSource> {
        self.node_sets()
            .with(|core, _| core.server_node_sources(&Protocol::from(protocol), &peer_key(&peer)))
            .unwrap_or_default()
    }

    /// Looks up the providers of `protocol` through Kademlia (see
    /// [`Providers`]) and makes them its server nodes (source
    /// [`NodeSource::Kademlia`]), with the addresses the lookup found.
    /// Nodes that an earlier lookup found and this one did not are
    /// withdrawn (they stay if another source lists them, or were added by
    /// hand). Returns the providers found, this node left out.
    pub async fn discover_providers(
        &self,
        providers: &ProvidersControl,
        protocol: &str,
    ) -> Result<Vec<PeerId>, DiscoveryError> {
        let (name, _) = names(protocol)?;
        let found = providers.find_providers(protocol).await?;
        let local = self.host().peer_id();
        let control = self.host().control();
        let mut peers = Vec::new();
        for provider in found {
            if provider.peer == local {
                continue;
            }
            for addr in provider.addresses {
                control.add_address(provider.peer, addr);
            }
            peers.push(provider.peer);
        }
        self.node_sets()
            .with(|core, _| {
                let before = core.router().nodes_from(&name, NodeSource::Kademlia);
                for old in before {
                    if !peers.iter().any(|p| peer_key(p) == old) {
                        core.withdraw_server_node(&name, &old, NodeSource::Kademlia);
                    }
                }
                for peer in &peers {
                    let _ = core.add_server_node_from(&name, peer_key(peer), NodeSource::Kademlia);
                }
            })
            .ok_or(DiscoveryError::Closed)?;
        Ok(peers)
    }
}
