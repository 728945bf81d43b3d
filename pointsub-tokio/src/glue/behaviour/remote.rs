//! What each connected peer says it supports, learned from the connection
//! handlers' [`ConnectionEvent::RemoteProtocolsChange`], and the wake-ups
//! that make a change of our own protocols reach the remotes at once.
//!
//! Identify (or any other behaviour that learns a remote's protocols)
//! reports them to its connection; the connection hands the change to
//! every handler of the composed behaviour, ours included. So this works in
//! any swarm that also runs identify, whoever composed it, without reading
//! identify's own events.
//!
//! The other way round: a connection reads the local protocols (every
//! handler's `listen_protocol`) only when it is polled, and only then tells
//! identify, which pushes the change to the remote. When a protocol is
//! registered or unregistered, every handler is woken so that its
//! connection notices at once.
//!
//! [`ConnectionEvent::RemoteProtocolsChange`]: libp2p::swarm::handler::ConnectionEvent::RemoteProtocolsChange

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::stream::FusedStream;
use futures::task::AtomicWaker;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::handler::ProtocolsChange;
use libp2p::{PeerId, StreamProtocol};

use super::*;

/// What a connected peer supports now, as its connections report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProtocols {
    /// The peer.
    pub peer: PeerId,
    /// The protocols it says it supports, sorted; empty once it has no
    /// connection left (or has not said yet).
    pub protocols: Vec<StreamProtocol>,
    /// Whether the peer still has a connection.
    pub connected: bool,
}

impl PeerProtocols {
    /// Whether the peer lists `protocol`.
    pub fn supports(&self, protocol: &StreamProtocol) -> bool {
        self.protocols.contains(protocol)
    }
}

/// The remote protocols of every connection, and who wants to hear about
/// their changes.
#[derive(Default)]
pub(super) struct RemoteProtocols {
    /// Per peer, per connection, the protocols that connection reported.
    peers: HashMap<PeerId, HashMap<ConnectionId, HashSet<StreamProtocol>>>,
    watchers: Vec<mpsc::UnboundedSender<PeerProtocols>>,
    closed: bool,
}

impl RemoteProtocols {
    /// The union over the peer's connections, sorted.
    fn union(&self, peer: &PeerId) -> Vec<StreamProtocol> {
        let mut all: BTreeMap<&str, &StreamProtocol> = BTreeMap::new();
        if let Some(conns) = self.peers.get(peer) {
            for set in conns.values() {
                all.extend(set.iter().map(|p| (p.as_ref(), p)));
            }
        }
        all.into_values().cloned().collect()
    }

    fn publish(&mut self, peer: PeerId, before: Vec<StreamProtocol>) {
        let protocols = self.union(&peer);
        let connected = self.peers.contains_key(&peer);
        if protocols == before && connected {
            return;
        }
        let event = PeerProtocols {
            peer,
            protocols,
            connected,
        };
        self.watchers
            .retain(|w| w.unbounded_send(event.clone()).is_ok());
    }

    pub(super) fn connection_opened(&mut self, peer: PeerId, connection: ConnectionId) {
        self.peers
            .entry(peer)
            .or_default()
            .entry(connection)
            .or_default();
    }

    pub(super) fn changed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        change: &ProtocolsChange<'_>,
    ) {
        let before = self.union(&peer);
        let set = self
            .peers
            .entry(peer)
            .or_default()
            .entry(connection)
            .or_default();
        match change {
            ProtocolsChange::Added(added) => set.extend(added.clone().cloned()),
            ProtocolsChange::Removed(removed) => {
                for p in removed.clone() {
                    set.remove(p);
                }
            }
        }
        self.publish(peer, before);
    }

    pub(super) fn connection_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        let before = self.union(&peer);
        let Some(conns) = self.peers.get_mut(&peer) else {
            return;
        };
        conns.remove(&connection);
        if conns.is_empty() {
            self.peers.remove(&peer);
            // Said even when nothing was ever learnt: the peer is gone.
            let event = PeerProtocols {
                peer,
                protocols: Vec::new(),
                connected: false,
            };
            self.watchers
                .retain(|w| w.unbounded_send(event.clone()).is_ok());
            return;
        }
        self.publish(peer, before);
    }

    /// The behaviour is gone: every watch ends.
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.peers.clear();
        self.watchers.clear();
    }
}

/// Wakers to call when the local protocols change: one per connection
/// handler, plus any behaviour composed with ours that announces them.
#[derive(Default)]
pub(super) struct ProtocolWakers(Vec<Weak<AtomicWaker>>);

impl ProtocolWakers {
    pub(super) fn register(&mut self, waker: &Arc<AtomicWaker>) {
        self.0.retain(|w| w.strong_count() > 0);
        self.0.push(Arc::downgrade(waker));
    }

    /// Wakes every live waker, forgetting the dead.
    pub(super) fn wake_all(&mut self) {
        self.0.retain(|w| match w.upgrade() {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        });
    }
}

/// The changes of every connected peer's protocols, from
/// [`Control::watch_remote_protocols`]: first one item per peer connected
/// at the time of the call, then one per change. Ends when the behaviour
/// is dropped.
pub struct RemoteProtocolsWatch {
    receiver: mpsc::UnboundedReceiver<PeerProtocols>,
}

impl fmt::Debug for RemoteProtocolsWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteProtocolsWatch")
            .finish_non_exhaustive()
    }
}

impl futures::Stream for RemoteProtocolsWatch {
    type Item = PeerProtocols;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl FusedStream for RemoteProtocolsWatch {
    fn is_terminated(&self) -> bool {
        self.receiver.is_terminated()
    }
}

impl Control {
    /// The protocols `peer` says it supports, sorted (over all its
    /// connections); empty when it is not connected or has not said.
    ///
    /// A peer says so through identify: this needs identify (or another
    /// behaviour reporting remote protocols) in the swarm.
    pub fn remote_protocols(&self, peer: &PeerId) -> Vec<StreamProtocol> {
        lock(&self.shared.remote).union(peer)
    }

    /// The connected peers that say they support `protocol`.
    pub fn peers_supporting(&self, protocol: &StreamProtocol) -> Vec<PeerId> {
        let remote = lock(&self.shared.remote);
        let mut peers: Vec<PeerId> = remote
            .peers
            .iter()
            .filter(|(_, conns)| conns.values().any(|s| s.contains(protocol)))
            .map(|(p, _)| *p)
            .collect();
        peers.sort();
        peers
    }

    /// Watches what connected peers support: see [`RemoteProtocolsWatch`].
    /// Nothing is missed between the current state it starts with and the
    /// changes that follow.
    pub fn watch_remote_protocols(&self) -> RemoteProtocolsWatch {
        let (sender, receiver) = mpsc::unbounded();
        let mut remote = lock(&self.shared.remote);
        if !remote.closed {
            let mut peers: Vec<PeerId> = remote.peers.keys().copied().collect();
            peers.sort();
            for peer in peers {
                let _ = sender.unbounded_send(PeerProtocols {
                    peer,
                    protocols: remote.union(&peer),
                    connected: true,
                });
            }
            remote.watchers.push(sender);
        }
        RemoteProtocolsWatch { receiver }
    }

    /// The accepted protocols, sorted, as the handlers offer them: a new
    /// `Arc` each time they change, so `Arc::ptr_eq` tells a change.
    pub(crate) fn protocols_snapshot(&self) -> Arc<[StreamProtocol]> {
        self.shared.protocols()
    }

    /// Wakes `waker` each time the accepted protocols change (for a
    /// behaviour composed with ours that acts on them).
    pub(crate) fn on_local_protocols_change(&self, waker: &Arc<AtomicWaker>) {
        lock(&self.shared.registry).wakers.register(waker);
    }
}
