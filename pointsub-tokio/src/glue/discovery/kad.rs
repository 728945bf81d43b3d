//! [`Providers`]: libp2p's Kademlia, wrapped so that the protocols
//! pointsub serves are announced as provider records and clients can look
//! up the providers of a protocol with their addresses.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::channel::oneshot;
use futures::task::AtomicWaker;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{self, GetProvidersError, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, StreamProtocol};

use crate::glue::behaviour::Control;
use crate::glue::common::lock;

/// pointsub's Kademlia protocol name: its own DHT, not IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/pointsub/kad/1.0.0");

/// A Kademlia configuration with pointsub's protocol name
/// ([`KAD_PROTOCOL`]) and libp2p's defaults otherwise.
pub fn kad_config() -> kad::Config {
    kad::Config::new(KAD_PROTOCOL)
}

/// The Kademlia key under which the providers of `protocol` are recorded.
pub fn provider_key(protocol: &str) -> RecordKey {
    RecordKey::new(&format!("pointsub-provider:{protocol}"))
}

/// A provider of a protocol, as a lookup found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The provider.
    pub peer: PeerId,
    /// Its addresses, as the records and the lookup gave them (may be
    /// empty when none was known).
    pub addresses: Vec<Multiaddr>,
}

/// Why a provider lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvidersError {
    /// The lookup ran out of time before finding any provider (retryable:
    /// the DHT may answer later).
    #[error("the provider lookup timed out without finding any provider")]
    Timeout,
    /// The behaviour is gone (its swarm was dropped); final.
    #[error("the Kademlia behaviour has shut down")]
    Shutdown,
}

impl ProvidersError {
    /// Whether a new lookup may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

type Reply = oneshot::Sender<Result<Vec<Provider>, ProvidersError>>;

enum Command {
    Find { key: RecordKey, reply: Reply },
}

#[derive(Default)]
struct SharedState {
    commands: VecDeque<Command>,
    waker: Option<Waker>,
    closed: bool,
    /// The protocols announced now, sorted.
    announced: Vec<StreamProtocol>,
}

/// A cloneable handle to a [`Providers`] behaviour: provider lookups and
/// what is announced. Usable from any thread.
#[derive(Clone)]
pub struct ProvidersControl {
    shared: Arc<Mutex<SharedState>>,
}

impl fmt::Debug for ProvidersControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidersControl")
            .field("announced", &self.announced())
            .finish()
    }
}

impl ProvidersControl {
    /// Looks up the providers of `protocol` in the DHT. Resolves when the
    /// lookup ends, with every provider it found (this node included if it
    /// provides the protocol) and the addresses the records and the lookup
    /// carried. A lookup that finds nothing resolves to an empty list;
    /// [`ProvidersError::Timeout`] only when it timed out empty-handed.
    pub fn find_providers(&self, protocol: &str) -> FindProviders {
        let (reply, rx) = oneshot::channel();
        let waker = {
            let mut state = lock(&self.shared);
            if state.closed {
                drop(reply);
                None
            } else {
                state.commands.push_back(Command::Find {
                    key: provider_key(protocol),
                    reply,
                });
                state.waker.take()
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        FindProviders(rx)
    }

    /// The protocols this node announces now, sorted.
    pub fn announced(&self) -> Vec<StreamProtocol> {
        lock(&self.shared).announced.clone()
    }
}

/// The future of [`ProvidersControl::find_providers`].
#[must_use = "a lookup is only read by awaiting it"]
pub struct FindProviders(oneshot::Receiver<Result<Vec<Provider>, ProvidersError>>);

impl fmt::Debug for FindProviders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FindProviders").finish_non_exhaustive()
    }
}

impl Future for FindProviders {
    type Output = Result<Vec<Provider>, ProvidersError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ProvidersError::Shutdown)))
    }
}

struct Lookup {
    reply: Reply,
    found: BTreeMap<PeerId, Vec<Multiaddr>>,
}

/// libp2p's Kademlia ([`kad::Behaviour`]) wrapped for pointsub's
/// discovery. Put it in the swarm beside pointsub's
/// [`Behaviour`](crate::Behaviour); it is an ordinary
/// [`NetworkBehaviour`], and passes every Kademlia event on.
///
/// - **Announcing:** every protocol pointsub accepts on this swarm (a
///   [`Server::start`](crate::generic::Server::start), a listener) is
///   announced as a provider record under [`provider_key`], and stops
///   being provided locally when it is unregistered. Provider records are
///   stored by other nodes and expire there after Kademlia's provider
///   record TTL; clients treat a stale provider as a failed node and fail
///   over. With [`Providers::announce_after_external_address`], nothing
///   is announced before the swarm has a confirmed external address (a
///   relay reservation's circuit address, for a node behind NAT), so
///   records carry a reachable address; every newly confirmed address
///   renews the records.
/// - **Looking up:** [`ProvidersControl::find_providers`]. Kademlia's
///   `FoundProviders` gives peer ids only; the addresses the lookup
///   learnt (from the records) are kept here, given to pointsub's address
///   book, and returned.
pub struct Providers {
    kad: kad::Behaviour<MemoryStore>,
    control: Control,
    shared: Arc<Mutex<SharedState>>,
    /// Woken when pointsub's accepted protocols change.
    local_changed: Arc<AtomicWaker>,
    announce: bool,
    wait_for_external: bool,
    has_external: bool,
    /// Re-announce every provided protocol (a new external address).
    renew: bool,
    /// An announcement reached no peer (Kademlia knew none yet): repeat
    /// it when the routing table gains one.
    unpublished: bool,
    /// The protocols announced now, by name.
    announced: BTreeMap<String, StreamProtocol>,
    /// pointsub's protocols when last looked at, and whether announcing
    /// was possible then: nothing to do while neither changes.
    seen: Option<(Arc<[StreamProtocol]>, bool)>,
    lookups: HashMap<QueryId, Lookup>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Providers")
            .field("announced", &self.announced)
            .field("lookups", &self.lookups.len())
            .finish_non_exhaustive()
    }
}

impl Providers {
    /// Wraps `kad` (build it with [`kad_config`]) for the swarm whose
    /// pointsub behaviour `control` belongs to. Announces what pointsub
    /// serves at once.
    pub fn new(kad: kad::Behaviour<MemoryStore>, control: &Control) -> Self {
        let local_changed = Arc::new(AtomicWaker::new());
        control.on_local_protocols_change(&local_changed);
        Self {
            kad,
            control: control.clone(),
            shared: Arc::new(Mutex::new(SharedState::default())),
            local_changed,
            announce: true,
            wait_for_external: false,
            has_external: false,
            renew: false,
            unpublished: false,
            announced: BTreeMap::new(),
            seen: None,
            lookups: HashMap::new(),
        }
    }

    /// Whether served protocols are announced at all (default true; a
    /// node that only looks providers up turns it off).
    pub fn with_announce(mut self, announce: bool) -> Self {
        self.announce = announce;
        self
    }

    /// Waits for a confirmed external address before announcing anything
    /// (default false). Turn it on for a node reached through a relay, so
    /// that its records carry the circuit address.
    pub fn announce_after_external_address(mut self, wait: bool) -> Self {
        self.wait_for_external = wait;
        self
    }

    /// A new handle for lookups.
    pub fn control(&self) -> ProvidersControl {
        ProvidersControl {
            shared: self.shared.clone(),
        }
    }

    /// The wrapped Kademlia behaviour (bootstrap peers, mode, queries).
    pub fn kad(&self) -> &kad::Behaviour<MemoryStore> {
        &self.kad
    }

    /// The wrapped Kademlia behaviour, mutably.
    pub fn kad_mut(&mut self) -> &mut kad::Behaviour<MemoryStore> {
        &mut self.kad
    }

    /// Starts and stops provider records to match what pointsub serves.
    fn sync_announcements(&mut self) {
        let ready = self.announce && (!self.wait_for_external || self.has_external);
        let snapshot = self.control.protocols_snapshot();
        let unchanged = self
            .seen
            .as_ref()
            .is_some_and(|(s, r)| Arc::ptr_eq(s, &snapshot) && *r == ready);
        if unchanged && !self.renew {
            return;
        }
        self.seen = Some((snapshot.clone(), ready));
        let want: BTreeMap<String, StreamProtocol> = if ready {
            snapshot
                .iter()
                .map(|p| (p.as_ref().to_owned(), p.clone()))
                .collect()
        } else {
            BTreeMap::new()
        };
        let renew = std::mem::take(&mut self.renew);
        for gone in self.announced.keys().filter(|p| !want.contains_key(*p)) {
            tracing::debug!(protocol = %gone, "no longer providing");
            self.kad.stop_providing(&provider_key(gone));
        }
        for protocol in want.values() {
            if renew || !self.announced.contains_key(protocol.as_ref()) {
                tracing::debug!(%protocol, "announcing as a provider");
                if let Err(error) = self.kad.start_providing(provider_key(protocol.as_ref())) {
                    tracing::warn!(%protocol, %error, "could not store the provider record");
                }
            }
        }
        if want.keys().ne(self.announced.keys()) {
            self.announced = want;
            lock(&self.shared).announced = self.announced.values().cloned().collect();
        }
    }

    fn run(&mut self, command: Command) {
        match command {
            Command::Find { key, reply } => {
                if reply.is_canceled() {
                    return;
                }
                let id = self.kad.get_providers(key);
                self.lookups.insert(
                    id,
                    Lookup {
                        reply,
                        found: BTreeMap::new(),
                    },
                );
            }
        }
    }

    /// The addresses Kademlia knows for `peer` now: its routing table, the
    /// peers its running queries learnt (where a lookup's provider
    /// addresses are), and the provider records stored here under `key`.
    fn addresses_of(&mut self, peer: PeerId, key: &RecordKey) -> Vec<Multiaddr> {
        let mut addrs = self
            .kad
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(0),
                Some(peer),
                &[],
                Endpoint::Dialer,
            )
            .unwrap_or_default();
        for record in self.kad.store_mut().providers(key) {
            if record.provider == peer {
                addrs.extend(record.addresses);
            }
        }
        let mut unique = Vec::new();
        for a in addrs {
            if !unique.contains(&a) {
                unique.push(a);
            }
        }
        unique
    }

    /// Follows our announcements and lookups through Kademlia's events.
    fn on_kad_event(&mut self, event: &kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::StartProviding(result),
                stats,
                ..
            } => {
                if result.is_err() || stats.num_successes() == 0 {
                    tracing::debug!(?result, "a provider announcement reached no peer");
                    self.unpublished = true;
                }
                return;
            }
            kad::Event::RoutingUpdated {
                is_new_peer: true, ..
            } if self.unpublished => {
                self.unpublished = false;
                self.renew = true;
                return;
            }
            _ => {}
        }
        let kad::Event::OutboundQueryProgressed {
            id,
            result: QueryResult::GetProviders(result),
            step,
            ..
        } = event
        else {
            return;
        };
        if !self.lookups.contains_key(id) {
            return;
        }
        let mut done = step.last;
        match result {
            Ok(GetProvidersOk::FoundProviders { key, providers }) => {
                let found: Vec<(PeerId, Vec<Multiaddr>)> = providers
                    .iter()
                    .map(|p| (*p, self.addresses_of(*p, key)))
                    .collect();
                if let Some(lookup) = self.lookups.get_mut(id) {
                    for (peer, addrs) in found {
                        for addr in &addrs {
                            self.control.add_address(peer, addr.clone());
                        }
                        let known = lookup.found.entry(peer).or_default();
                        for a in addrs {
                            if !known.contains(&a) {
                                known.push(a);
                            }
                        }
                    }
                }
            }
            Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => done = true,
            Err(GetProvidersError::Timeout { .. }) => done = true,
        }
        if done && let Some(lookup) = self.lookups.remove(id) {
            let timed_out = matches!(result, Err(GetProvidersError::Timeout { .. }));
            let outcome = if lookup.found.is_empty() && timed_out {
                Err(ProvidersError::Timeout)
            } else {
                Ok(lookup
                    .found
                    .into_iter()
                    .map(|(peer, addresses)| Provider { peer, addresses })
                    .collect())
            };
            let _ = lookup.reply.send(outcome);
        }
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        let commands = {
            let mut state = lock(&self.shared);
            state.closed = true;
            state.announced.clear();
            std::mem::take(&mut state.commands)
        };
        // Dropping the replies ends their futures with `Shutdown`.
        drop(commands);
    }
}

impl NetworkBehaviour for Providers {
    type ConnectionHandler = <kad::Behaviour<MemoryStore> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = kad::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.kad
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.kad.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ExternalAddrConfirmed(_) = event {
            self.has_external = true;
            // Records announced before carry the old addresses.
            self.renew = true;
        }
        self.kad.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.kad
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.local_changed.register(cx.waker());
        let commands = {
            let mut state = lock(&self.shared);
            state.waker = Some(cx.waker().clone());
            std::mem::take(&mut state.commands)
        };
        for command in commands {
            self.run(command);
        }
        self.sync_announcements();
        self.lookups.retain(|_, l| !l.reply.is_canceled());
        match self.kad.poll(cx) {
            Poll::Ready(ToSwarm::GenerateEvent(event)) => {
                self.on_kad_event(&event);
                Poll::Ready(ToSwarm::GenerateEvent(event))
            }
            other => other,
        }
    }
}
