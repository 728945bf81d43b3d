//! The node's composed behaviour for real networks: pointsub's
//! [`Behaviour`] beside libp2p's identify, ping, AutoNAT v2, relay v2
//! (client, and optionally server), DCUtR, Kademlia and mDNS.
//!
//! [`NetBehaviour`] is what [`Node::new`](crate::generic::Node::new)
//! builds on every runtime; it is runtime-neutral. A runtime builds its
//! transport with libp2p's relay client transport beside TCP (and QUIC),
//! and hands the matching `relay::client::Behaviour` to
//! [`NetBehaviour::new`].
//!
//! What each part is for:
//! - identify and ping: always on. Identify tells each side the other's
//!   listen addresses and protocols, and what address it sees us at (an
//!   external address *candidate*); its agent version names pointsub.
//! - AutoNAT v2 client: always on; asks servers to dial our candidates
//!   back, and confirms those that work ([`NodeEvent::Reachability`]). A
//!   node that says so ([`NodeConfig::autonat_server`]) serves others.
//! - relay client: always on, composed with the transport, so a node can
//!   dial `/p2p-circuit` addresses and listen through relays
//!   ([`NodeConfig::relays`]); relay server on request
//!   ([`NodeConfig::relay_server`]).
//! - DCUtR: always on; upgrades a relayed connection to a direct one by
//!   hole punching ([`NodeEvent::HolePunch`]).
//! - Kademlia: see [`kad`].
//! - mDNS (feature `mdns`, tokio only): peers on the LAN, added to the
//!   node's known addresses.

pub mod kad;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc;
use libp2p::core::ConnectedPoint;
use libp2p::identity::PublicKey;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, dcutr, identify, ping, relay};
use libp2p_autonat::v2 as autonat;

use super::behaviour::Behaviour;
use super::common::lock;
use crate::node::NodeConfig;

pub use self::kad::{KAD_PROTOCOL, Kademlia, kademlia};

/// Identify's protocol version on pointsub nodes.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/pointsub/1.0.0";

/// Identify's agent version on pointsub nodes: `pointsub/<crate version>`.
pub fn agent_version() -> String {
    format!("pointsub/{}", env!("CARGO_PKG_VERSION"))
}

/// The mDNS behaviour in [`NetBehaviour::mdns`]: libp2p's tokio mDNS with
/// the `mdns` feature, a behaviour that does nothing without it.
#[cfg(feature = "mdns")]
pub type Mdns = libp2p::mdns::tokio::Behaviour;
/// The mDNS behaviour in [`NetBehaviour::mdns`]: libp2p's tokio mDNS with
/// the `mdns` feature, a behaviour that does nothing without it.
#[cfg(not(feature = "mdns"))]
pub type Mdns = libp2p::swarm::dummy::Behaviour;

/// Limits a relay server puts on each circuit it carries. When one is
/// reached the relay ends the circuit, and with it the relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayLimits {
    /// How long one circuit may last. Default: libp2p's, 2 minutes.
    pub max_circuit_duration: Duration,
    /// How many bytes one circuit may carry (both directions). Default:
    /// libp2p's, 128 KiB.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        let libp2p = relay::Config::default();
        Self {
            max_circuit_duration: libp2p.max_circuit_duration,
            max_circuit_bytes: libp2p.max_circuit_bytes,
        }
    }
}

impl RelayLimits {
    /// Sets the longest a circuit may last.
    #[must_use]
    pub fn with_max_circuit_duration(mut self, duration: Duration) -> Self {
        self.max_circuit_duration = duration;
        self
    }

    /// Sets the most bytes a circuit may carry.
    #[must_use]
    pub fn with_max_circuit_bytes(mut self, bytes: u64) -> Self {
        self.max_circuit_bytes = bytes;
        self
    }
}

pub use composed::{NetBehaviour, NetBehaviourEvent};

/// The derived behaviour. Its event enum, `NetBehaviourEvent`, has one
/// variant per field, named after it, carrying that behaviour's event;
/// the derive writes no docs for them.
#[allow(missing_docs)]
mod composed {
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::{dcutr, identify, ping, relay};
    use libp2p_autonat::v2 as autonat;

    use super::{Kademlia, Mdns};
    use crate::behaviour::Behaviour;

    /// The behaviour of a [`Node`](crate::generic::Node) for real networks.
    /// Its fields are public so that an application (or a later layer, such
    /// as discovery) can reach each part through
    /// [`Node::with_swarm`](crate::generic::Node::with_swarm).
    #[derive(NetworkBehaviour)]
    #[behaviour(prelude = "libp2p::swarm::derive_prelude")]
    pub struct NetBehaviour {
        /// pointsub's streams.
        pub pointsub: Behaviour,
        /// Identify: addresses, protocols, observed address.
        pub identify: identify::Behaviour,
        /// Ping: liveness and round-trip time.
        pub ping: ping::Behaviour,
        /// AutoNAT v2 client: tests our address candidates.
        pub autonat_client: autonat::client::Behaviour,
        /// AutoNAT v2 server, on nodes that serve it.
        pub autonat_server: Toggle<autonat::server::Behaviour>,
        /// Relay v2 client (its transport half is in the swarm's transport).
        pub relay_client: relay::client::Behaviour,
        /// Relay v2 server, on nodes that run one.
        pub relay_server: Toggle<relay::Behaviour>,
        /// DCUtR: hole punching over a relayed connection.
        pub dcutr: dcutr::Behaviour,
        /// Kademlia under [`KAD_PROTOCOL`](super::KAD_PROTOCOL), when
        /// enabled (built by [`kademlia`](super::kademlia)).
        pub kad: Kademlia,
        /// mDNS, when enabled (feature `mdns`).
        pub mdns: Toggle<Mdns>,
    }
}

impl NetBehaviour {
    /// Composes the node's behaviour for `config` around `pointsub`.
    /// `relay_client` is the behaviour half of the relay client whose
    /// transport half the swarm's transport carries. mDNS starts disabled:
    /// the runtime, which owns the sockets, sets [`NetBehaviour::mdns`].
    pub fn new(
        local_key: &PublicKey,
        relay_client: relay::client::Behaviour,
        pointsub: Behaviour,
        config: &NodeConfig,
    ) -> Self {
        let peer = local_key.to_peer_id();
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), local_key.clone())
                .with_agent_version(agent_version())
                .with_push_listen_addr_updates(true),
        );
        let relay_server = config.relay_server.map(|limits| {
            relay::Behaviour::new(
                peer,
                relay::Config {
                    max_circuit_duration: limits.max_circuit_duration,
                    max_circuit_bytes: limits.max_circuit_bytes,
                    ..relay::Config::default()
                },
            )
        });
        let kad = kademlia(peer, config, &pointsub.control());
        Self {
            pointsub,
            identify,
            ping: ping::Behaviour::default(),
            autonat_client: autonat::client::Behaviour::default(),
            autonat_server: Toggle::from(
                config
                    .autonat_server
                    .then(autonat::server::Behaviour::default),
            ),
            relay_client,
            relay_server: Toggle::from(relay_server),
            dcutr: dcutr::Behaviour::new(peer),
            kad,
            mdns: Toggle::from(None),
        }
    }
}

/// Something a node's application may want to know about its network:
/// [`Node::events`](crate::generic::Node::events) yields these.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection to `peer` is up.
    ConnectionEstablished {
        /// The remote peer.
        peer: PeerId,
        /// The connection's id in the swarm.
        connection: ConnectionId,
        /// The remote's address on it (a `/p2p-circuit` one if relayed).
        remote_addr: Multiaddr,
        /// Whether it runs through a relay.
        relayed: bool,
    },
    /// A connection to `peer` is gone.
    ConnectionClosed {
        /// The remote peer.
        peer: PeerId,
        /// The connection's id in the swarm.
        connection: ConnectionId,
        /// Whether it ran through a relay.
        relayed: bool,
    },
    /// A relay accepted our reservation: others reach us at `addr`.
    RelayReservation {
        /// The relay.
        relay: PeerId,
        /// Our address through it, ending `/p2p-circuit/p2p/<our id>`.
        addr: Multiaddr,
    },
    /// DCUtR tried to upgrade the relayed connection to `peer` to a direct
    /// one.
    HolePunch {
        /// The remote peer.
        peer: PeerId,
        /// The direct connection, or why there is none.
        outcome: HolePunchOutcome,
    },
    /// An AutoNAT v2 server tested whether we are reachable at `addr`.
    Reachability {
        /// The address tested.
        addr: Multiaddr,
        /// The server that tested it.
        server: PeerId,
        /// Whether it reached us there.
        reachable: bool,
    },
    /// Someone reported seeing us at `addr` (identify): a candidate for an
    /// external address, not confirmed yet.
    AddressCandidate {
        /// The candidate.
        addr: Multiaddr,
    },
    /// `addr` is confirmed as one of our external addresses (by AutoNAT,
    /// or given in the config).
    ExternalAddrConfirmed {
        /// The address.
        addr: Multiaddr,
    },
}

/// How a hole punch ([`NodeEvent::HolePunch`]) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HolePunchOutcome {
    /// A direct connection is up.
    Direct {
        /// Its id.
        connection: ConnectionId,
    },
    /// Every attempt failed.
    Failed {
        /// libp2p's description of the failure.
        reason: String,
    },
}

/// Whether this node is reachable from outside, as AutoNAT v2 found.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NatStatus {
    /// No test has ended yet.
    #[default]
    Unknown,
    /// A server reached us at these addresses.
    Public {
        /// The addresses found reachable.
        addrs: Vec<Multiaddr>,
    },
    /// Every test failed: we are behind a NAT or firewall; reach us
    /// through a relay.
    Private,
}

/// One connection of a node, as [`Node::connections`](crate::generic::Node::connections)
/// lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerConnection {
    /// The remote peer.
    pub peer: PeerId,
    /// The connection's id.
    pub connection: ConnectionId,
    /// The remote's address on it.
    pub remote_addr: Multiaddr,
    /// Whether it runs through a relay.
    pub relayed: bool,
}

/// A behaviour a [`Node`](crate::generic::Node) can drive: pointsub's
/// own [`Behaviour`], alone, or the composed [`NetBehaviour`].
pub trait NodeBehaviour: NetworkBehaviour + Sized {
    /// The pointsub behaviour inside.
    fn pointsub(&self) -> &Behaviour;

    /// Handles one event of the behaviour in the swarm task, reporting
    /// what the application may want to know through `emit`.
    fn on_behaviour_event(
        swarm: &mut Swarm<Self>,
        event: Self::ToSwarm,
        emit: &mut dyn FnMut(NodeEvent),
    );
}

impl NodeBehaviour for Behaviour {
    fn pointsub(&self) -> &Behaviour {
        self
    }

    fn on_behaviour_event(_: &mut Swarm<Self>, event: Self::ToSwarm, _: &mut dyn FnMut(NodeEvent)) {
        match event {}
    }
}

impl NodeBehaviour for NetBehaviour {
    fn pointsub(&self) -> &Behaviour {
        &self.pointsub
    }

    fn on_behaviour_event(
        swarm: &mut Swarm<Self>,
        event: NetBehaviourEvent,
        emit: &mut dyn FnMut(NodeEvent),
    ) {
        match event {
            NetBehaviourEvent::Pointsub(never) => match never {},
            NetBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                tracing::debug!(
                    peer = %peer_id,
                    agent = %info.agent_version,
                    observed = %info.observed_addr,
                    "identified"
                );
                if info.protocols.contains(&KAD_PROTOCOL)
                    && let Some(kad) = swarm.behaviour_mut().kad.as_mut()
                {
                    for addr in info.listen_addrs {
                        if !is_relayed(&addr) {
                            kad.kad_mut().add_address(&peer_id, addr);
                        }
                    }
                }
            }
            NetBehaviourEvent::Identify(_) | NetBehaviourEvent::Ping(_) => {}
            NetBehaviourEvent::AutonatClient(autonat::client::Event {
                tested_addr,
                server,
                result,
                ..
            }) => {
                tracing::debug!(addr = %tested_addr, %server, ok = result.is_ok(), "AutoNAT v2 test");
                emit(NodeEvent::Reachability {
                    addr: tested_addr,
                    server,
                    reachable: result.is_ok(),
                });
            }
            NetBehaviourEvent::AutonatServer(event) => {
                tracing::debug!(client = %event.client, addr = %event.tested_addr, ok = event.result.is_ok(), "AutoNAT v2 served");
            }
            NetBehaviourEvent::RelayClient(event) => tracing::debug!(?event, "relay client"),
            NetBehaviourEvent::RelayServer(event) => tracing::debug!(?event, "relay server"),
            NetBehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                let outcome = match result {
                    Ok(connection) => HolePunchOutcome::Direct { connection },
                    Err(e) => HolePunchOutcome::Failed {
                        reason: crate::node::error_chain(&e),
                    },
                };
                tracing::debug!(peer = %remote_peer_id, ?outcome, "hole punch");
                emit(NodeEvent::HolePunch {
                    peer: remote_peer_id,
                    outcome,
                });
            }
            NetBehaviourEvent::Kad(event) => tracing::trace!(?event, "kademlia"),
            #[cfg(feature = "mdns")]
            NetBehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "mDNS: found");
                    swarm
                        .behaviour()
                        .pointsub
                        .control()
                        .add_address(peer, addr.clone());
                    if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                        kad.kad_mut().add_address(&peer, addr);
                    }
                }
            }
            #[cfg(feature = "mdns")]
            NetBehaviourEvent::Mdns(libp2p::mdns::Event::Expired(_)) => {}
            #[cfg(not(feature = "mdns"))]
            NetBehaviourEvent::Mdns(never) => match never {},
        }
    }
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// What the swarm task knows of the node's network, for its accessors and
/// event subscribers.
#[derive(Default)]
pub(crate) struct NetState {
    connections: HashMap<ConnectionId, PeerConnection>,
    candidates: Vec<Multiaddr>,
    external: Vec<Multiaddr>,
    /// AutoNAT results by address: reachable or not, the latest wins.
    reachability: HashMap<Multiaddr, bool>,
    subscribers: Vec<mpsc::UnboundedSender<NodeEvent>>,
}

impl NetState {
    /// Sends `event` to every live subscriber, and keeps the state's own
    /// view current.
    pub(crate) fn emit(&mut self, event: NodeEvent) {
        match &event {
            NodeEvent::Reachability {
                addr, reachable, ..
            } => {
                self.reachability.insert(addr.clone(), *reachable);
            }
            NodeEvent::AddressCandidate { addr } if !self.candidates.contains(addr) => {
                self.candidates.push(addr.clone());
            }
            NodeEvent::ExternalAddrConfirmed { addr } if !self.external.contains(addr) => {
                self.external.push(addr.clone());
            }
            _ => {}
        }
        self.subscribers
            .retain(|s| s.unbounded_send(event.clone()).is_ok());
    }

    /// Follows the swarm's own events; returns the node event to emit, if
    /// any.
    pub(crate) fn on_swarm_event<E>(&mut self, event: &SwarmEvent<E>, me: PeerId) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let remote_addr = remote_of(endpoint);
                self.connections.insert(
                    *connection_id,
                    PeerConnection {
                        peer: *peer_id,
                        connection: *connection_id,
                        remote_addr: remote_addr.clone(),
                        relayed,
                    },
                );
                self.emit(NodeEvent::ConnectionEstablished {
                    peer: *peer_id,
                    connection: *connection_id,
                    remote_addr,
                    relayed,
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.connections.remove(connection_id);
                self.emit(NodeEvent::ConnectionClosed {
                    peer: *peer_id,
                    connection: *connection_id,
                    relayed: endpoint.is_relayed(),
                });
            }
            SwarmEvent::NewListenAddr { address, .. } if is_relayed(address) => {
                let relay = address.iter().find_map(|p| match p {
                    Protocol::P2p(peer) => Some(peer),
                    _ => None,
                });
                if let Some(relay) = relay {
                    let addr = address.clone().with_p2p(me).unwrap_or_else(|addr| addr);
                    self.emit(NodeEvent::RelayReservation { relay, addr });
                }
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                self.emit(NodeEvent::AddressCandidate {
                    addr: address.clone(),
                });
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                self.emit(NodeEvent::ExternalAddrConfirmed {
                    addr: address.clone(),
                });
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.external.retain(|a| a != address);
            }
            _ => {}
        }
    }

    pub(crate) fn subscribe(&mut self) -> mpsc::UnboundedReceiver<NodeEvent> {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers.push(tx);
        rx
    }

    pub(crate) fn connections(&self) -> Vec<PeerConnection> {
        let mut all: Vec<PeerConnection> = self.connections.values().cloned().collect();
        all.sort_by_key(|c| c.connection);
        all
    }

    pub(crate) fn candidates(&self) -> Vec<Multiaddr> {
        self.candidates.clone()
    }

    pub(crate) fn external_addrs(&self) -> Vec<Multiaddr> {
        self.external.clone()
    }

    pub(crate) fn nat_status(&self) -> NatStatus {
        let mut reachable: Vec<Multiaddr> = self
            .reachability
            .iter()
            .filter(|(_, ok)| **ok)
            .map(|(a, _)| a.clone())
            .collect();
        if !reachable.is_empty() {
            reachable.sort();
            NatStatus::Public { addrs: reachable }
        } else if self.reachability.is_empty() {
            NatStatus::Unknown
        } else {
            NatStatus::Private
        }
    }
}

/// The remote's address of a connection.
fn remote_of(endpoint: &ConnectedPoint) -> Multiaddr {
    endpoint.get_remote_address().clone()
}

/// Locks the node's network state.
pub(crate) fn net_state(state: &Mutex<NetState>) -> std::sync::MutexGuard<'_, NetState> {
    lock(state)
}
