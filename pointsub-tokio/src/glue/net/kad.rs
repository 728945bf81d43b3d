//! The node's Kademlia: libp2p's own `kad::Behaviour` over an in-memory
//! store, under pointsub's protocol name ([`KAD_PROTOCOL`]) so that a
//! pointsub network never mixes with the IPFS DHT.
//!
//! A node that says it is public ([`NodeConfig::public`]) answers DHT
//! requests (server mode); every other node stays a client, also after a
//! relayed or observed address of its own is confirmed: a NATed node
//! cannot be dialled directly, and a DHT server others cannot reach only
//! slows their queries down. The mode is fixed here (`set_mode(Some(..))`),
//! so Kademlia's own switch on confirmed external addresses never applies.

use libp2p::kad::store::MemoryStore;
use libp2p::kad::{self, Mode};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId};

use crate::behaviour::Control;
use crate::discovery::Providers;
use crate::node::NodeConfig;

/// Kademlia's protocol name on pointsub nodes: `/pointsub/kad/1.0.0`.
pub use crate::discovery::KAD_PROTOCOL;

/// The node's Kademlia behaviour, disabled (`Toggle` off) unless the
/// config enables it ([`NodeConfig::kad`]): libp2p's Kademlia inside
/// discovery's [`Providers`], which announces what the node serves as
/// provider records and looks providers up
/// ([`Client::discover_providers`](crate::generic::Client::discover_providers)).
pub type Kademlia = Toggle<Providers>;

/// Builds the node's Kademlia for `config`: off unless
/// [`NodeConfig::kad`]; server mode if [`NodeConfig::public`], client mode
/// otherwise; the bootstrap peers ([`NodeConfig::bootstrap`], each ending
/// with `/p2p/<peer id>`) in its routing table. Bootstrap addresses without
/// a peer id are skipped with a warning (Kademlia keys peers by id).
///
/// A node that listens through relays announces its provider records
/// only once an external address is confirmed (its reservation's circuit
/// address), so that they carry an address others can reach.
pub fn kademlia(local_peer_id: PeerId, config: &NodeConfig, pointsub: &Control) -> Kademlia {
    if !config.kad {
        return Toggle::from(None);
    }
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_query_timeout(config.connect_timeout.saturating_mul(6));
    if config.bootstrap.is_empty() {
        // Nothing to bootstrap from yet: no periodic attempt (and its
        // warning); Kademlia still bootstraps when its first peer arrives.
        kad_config.set_periodic_bootstrap_interval(None);
    }
    let mut kad =
        kad::Behaviour::with_config(local_peer_id, MemoryStore::new(local_peer_id), kad_config);
    kad.set_mode(Some(if config.public {
        Mode::Server
    } else {
        Mode::Client
    }));
    for addr in &config.bootstrap {
        match split_peer(addr) {
            Some((peer, transport)) if peer != local_peer_id => {
                kad.add_address(&peer, transport);
            }
            Some(_) => {}
            None => tracing::warn!(%addr, "bootstrap address without /p2p/<peer id>: skipped"),
        }
    }
    let providers =
        Providers::new(kad, pointsub).announce_after_external_address(!config.relays.is_empty());
    Toggle::from(Some(providers))
}

/// `addr` split into its trailing `/p2p/<peer id>` and the rest; `None`
/// without one.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut transport = addr.clone();
    match transport.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some((peer, transport)),
        _ => None,
    }
}
