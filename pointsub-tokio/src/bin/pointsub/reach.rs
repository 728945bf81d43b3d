//! Reaching peers across NATs from the command line: `pointsub relay`,
//! `serve --relay`'s checks, and `send`'s path through a relay and its
//! upgrade to a direct connection.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use pointsub_tokio::bench::BoxError;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{
    HolePunchOutcome, Multiaddr, Node, NodeConfig, NodeEvent, PeerId, RelayLimits,
};

/// `pointsub relay`'s options.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// An address to listen on (repeatable), any multiaddr. Default:
    /// /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// This relay's public address (repeatable), e.g. the address of a port
    /// forward in front of it; announced to reserving nodes. Default: its
    /// listen addresses (without loopback ones, unless it has no other).
    #[arg(long = "external", value_name = "MULTIADDR")]
    external: Vec<Multiaddr>,
    /// The longest one relayed connection (circuit) may last, in seconds;
    /// the relay then ends it.
    #[arg(long, value_name = "SECS", default_value_t = RelayLimits::default().max_circuit_duration.as_secs())]
    max_circuit_duration: u64,
    /// The most bytes one relayed connection (circuit) may carry, both
    /// directions together; the relay then ends it.
    #[arg(long, value_name = "BYTES", default_value_t = RelayLimits::default().max_circuit_bytes)]
    max_circuit_bytes: u64,
    /// Another Kademlia peer to start from (repeatable), ending with
    /// `/p2p/<peer id>`. The relay runs Kademlia in server mode anyway.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Derives the relay's ed25519 identity from this seed (as `serve
    /// --key-seed` does), so that its address stays the same across
    /// restarts. For tests only: anyone knowing the seed has the key.
    #[arg(long, value_name = "N")]
    key_seed: Option<u64>,
}

/// `pointsub relay`.
pub async fn relay(args: RelayArgs) -> Result<ExitCode, BoxError> {
    let listen = if args.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/tcp/4001".parse()?,
            "/ip4/0.0.0.0/udp/4001/quic-v1".parse()?,
        ]
    } else {
        args.listen
    };
    let limits = RelayLimits::default()
        .with_max_circuit_duration(Duration::from_secs(args.max_circuit_duration))
        .with_max_circuit_bytes(args.max_circuit_bytes);
    let mut config = NodeConfig::default()
        .with_listen_addrs(listen)
        .with_relay_server(limits)
        .with_autonat_server(true)
        .with_public(true)
        .with_kad(true)
        .with_bootstrap(args.bootstrap)
        .with_external_addrs(args.external.iter().cloned());
    if let Some(seed) = args.key_seed {
        config = config.with_keypair(super::seeded_keypair(seed)?);
    }
    let node = Node::new(config).await?;
    if args.external.is_empty() {
        // libp2p's relay refuses reservations until it has a confirmed
        // external address: its own listen addresses are the best it has.
        let listening = node.listen_addrs();
        let public: Vec<&Multiaddr> = listening.iter().filter(|a| !is_loopback(a)).collect();
        let chosen: Vec<&Multiaddr> = if public.is_empty() {
            listening.iter().collect()
        } else {
            public
        };
        for addr in chosen {
            node.add_external_address(addr.clone())?;
        }
    }
    log_events(&node);
    {
        let mut out = std::io::stdout().lock();
        for addr in node.listen_addrs() {
            writeln!(
                out,
                "listening on {}",
                super::with_peer(addr, node.peer_id())
            )?;
        }
        writeln!(out, "relaying")?;
        out.flush()?;
    }
    super::shutdown_signal().await;
    node.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Whether `addr` is on a loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// After `serve --relay`: waits (briefly) until the node lists its
/// `/p2p-circuit` address through each relay address given (the relay
/// client reports the circuit addresses through a relay's addresses one by
/// one), and fails, saying why, unless it has one through each relay.
pub async fn check_reservations(node: &Node, relays: &[Multiaddr]) -> Result<(), BoxError> {
    let through = |relay: &Multiaddr| {
        let mut prefix = relay.clone();
        if prefix.iter().last() == Some(Protocol::P2pCircuit) {
            prefix.pop();
        }
        prefix.with(Protocol::P2pCircuit)
    };
    let deadline = Instant::now() + RESERVATION_WAIT;
    while Instant::now() < deadline
        && !relays.iter().all(|relay| {
            let prefix = through(relay).to_string();
            node.listen_addrs()
                .iter()
                .any(|a| a.to_string().starts_with(&prefix))
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let circuits: Vec<Multiaddr> = node
        .listen_addrs()
        .into_iter()
        .filter(|a| a.iter().any(|p| p == Protocol::P2pCircuit))
        .collect();
    for relay in relays {
        let Some(relay_id) = peer_of(relay) else {
            return Err(format!("relay address {relay} does not end with /p2p/<relay id>").into());
        };
        if !circuits
            .iter()
            .any(|c| c.iter().any(|p| p == Protocol::P2p(relay_id)))
        {
            let failures = node.listen_failures();
            return Err(format!(
                "no reservation on relay {relay}: {}",
                if failures.is_empty() {
                    "it did not answer in time".to_owned()
                } else {
                    failures.join("; ")
                }
            )
            .into());
        }
    }
    Ok(())
}

/// How long `serve --relay` waits for its circuit addresses.
const RESERVATION_WAIT: Duration = Duration::from_secs(10);

/// The last `/p2p/<peer id>` of `addr`.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .last()
}

/// Says on stderr (at -v) what happens on the node's network:
/// reservations, hole punches, reachability.
pub fn log_events(node: &Node) {
    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                NodeEvent::RelayReservation { addr, .. } => {
                    tracing::info!(%addr, "relay reservation accepted");
                }
                NodeEvent::HolePunch { peer, outcome } => {
                    tracing::info!(%peer, ?outcome, "hole punch");
                }
                NodeEvent::Reachability {
                    addr, reachable, ..
                } => {
                    tracing::info!(%addr, reachable, "AutoNAT");
                }
                other => tracing::debug!(?other, "node event"),
            }
        }
    });
}

/// The relay part of a `/p2p-circuit` address: everything before
/// `/p2p-circuit` (ending with `/p2p/<relay id>`); `None` for a direct
/// address.
pub fn relay_of(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut relay = Multiaddr::empty();
    for p in addr.iter() {
        if p == Protocol::P2pCircuit {
            return Some(relay);
        }
        relay.push(p);
    }
    None
}

/// What `send` uses to follow and choose the path to its peer.
pub struct Paths {
    node: Node,
    peer: PeerId,
    events: UnboundedReceiver<NodeEvent>,
    punched: Option<HolePunchOutcome>,
    /// When the connection through the relay was up, and when the first
    /// direct one was.
    relayed_at: Option<Instant>,
    punched_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    first_relayed: Option<Instant>,
    first_direct: Option<Instant>,
}

/// Which path a request took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// A direct connection, to this address.
    Direct(Multiaddr),
    /// Through a relay, at this address.
    Relayed(Multiaddr),
    /// No connection before the request (it dialled one itself).
    Unknown,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct(addr) => write!(f, "direct {addr}"),
            Path::Relayed(addr) => write!(f, "relayed {addr}"),
            Path::Unknown => f.write_str("unknown (no connection yet)"),
        }
    }
}

impl Paths {
    /// Starts following `node`'s connections to `peer`.
    pub fn new(node: &Node, peer: PeerId) -> Self {
        // Timestamps the first direct connection to the peer as it comes
        // up (the main loop looks at events only between requests).
        let punched_at = std::sync::Arc::new(std::sync::Mutex::new(None));
        let mut events = node.events();
        let stamp = punched_at.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let NodeEvent::ConnectionEstablished {
                    peer: remote,
                    relayed: false,
                    ..
                } = event
                    && remote == peer
                {
                    let mut at = stamp.lock().unwrap_or_else(|e| e.into_inner());
                    at.get_or_insert_with(Instant::now);
                }
            }
        });
        Self {
            node: node.clone(),
            peer,
            events: node.events(),
            punched: None,
            relayed_at: None,
            punched_at,
            first_relayed: None,
            first_direct: None,
        }
    }

    /// Reaches `peer` through the relay at `relay`: connects to the relay
    /// first (and waits, briefly, to learn from it the address we are seen
    /// at, which the hole punch needs), then to the peer through it, then
    /// waits up to `upgrade_wait` for DCUtR's direct connection. Fails only
    /// if the relay or the peer cannot be reached within `timeout`.
    pub async fn through_relay(
        &mut self,
        relay: Multiaddr,
        upgrade_wait: Duration,
        timeout: Duration,
    ) -> Result<(), BoxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, self.node.connect_addr(relay.clone()))
            .await
            .map_err(|_| format!("cannot reach the relay {relay}: timed out"))?
            .map_err(|e| format!("cannot reach the relay {relay}: {e}"))?;
        if self.node.address_candidates().is_empty() {
            let seen = tokio::time::timeout(CANDIDATE_WAIT, async {
                while let Some(event) = self.events.next().await {
                    if matches!(event, NodeEvent::AddressCandidate { .. }) {
                        return;
                    }
                }
            })
            .await;
            if seen.is_err() {
                tracing::info!("no address candidate from the relay: hole punching may fail");
            }
        }
        tokio::time::timeout_at(deadline, self.node.connect(self.peer))
            .await
            .map_err(|_| format!("cannot reach {} through the relay: timed out", self.peer))?
            .map_err(|e| format!("cannot reach {} through the relay: {e}", self.peer))?;
        self.relayed_at = Some(Instant::now());
        let wait_until = tokio::time::Instant::now() + upgrade_wait;
        while self.punched.is_none() && !self.has_direct() {
            match tokio::time::timeout_at(wait_until, self.events.next()).await {
                Ok(Some(event)) => self.note(event),
                Ok(None) | Err(_) => break,
            }
        }
        match &self.punched {
            Some(HolePunchOutcome::Failed { reason }) => {
                eprintln!("hole punch failed: {reason}");
            }
            None if !self.has_direct() => eprintln!(
                "no direct connection within {:.1} s: sending through the relay",
                upgrade_wait.as_secs_f64()
            ),
            _ => {}
        }
        Ok(())
    }

    fn note(&mut self, event: NodeEvent) {
        if let NodeEvent::HolePunch { peer, outcome } = event
            && peer == self.peer
        {
            self.punched = Some(outcome);
        }
    }

    fn has_direct(&self) -> bool {
        self.node
            .connections_to(&self.peer)
            .iter()
            .any(|c| !c.relayed)
    }

    /// Takes the events that arrived, and once a direct connection to the
    /// peer is up closes the relayed ones (waiting, briefly, until they
    /// are gone), so that the next streams go on the direct connection.
    /// Called between requests, with none in flight.
    pub async fn prefer_direct(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.note(event);
        }
        if !self.has_direct() {
            return;
        }
        let relayed: Vec<_> = self
            .node
            .connections_to(&self.peer)
            .into_iter()
            .filter(|c| c.relayed)
            .map(|c| c.connection)
            .collect();
        for connection in &relayed {
            let _ = self.node.close_connection(*connection);
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while self
                .node
                .connections_to(&self.peer)
                .iter()
                .any(|c| c.relayed)
            {
                match self.events.next().await {
                    Some(event) => self.note(event),
                    None => return,
                }
            }
        })
        .await;
    }

    /// The path the next request to the peer takes: new streams go on the
    /// oldest connection, and once a direct one is up [`Paths::prefer_direct`]
    /// closes the relayed ones. Records when each kind was first used.
    pub fn next_path(&mut self) -> Path {
        let connections = self.node.connections_to(&self.peer);
        let path = match connections.first() {
            None => Path::Unknown,
            Some(_) => match connections.iter().find(|c| c.relayed) {
                Some(relayed) => Path::Relayed(relayed.remote_addr.clone()),
                None => Path::Direct(connections[0].remote_addr.clone()),
            },
        };
        let now = Instant::now();
        match path {
            Path::Relayed(_) => {
                self.first_relayed.get_or_insert(now);
            }
            Path::Direct(_) => {
                self.first_direct.get_or_insert(now);
            }
            Path::Unknown => {}
        }
        path
    }

    /// The time from the connection through the relay to the first direct
    /// one (the hole punch's), if one came.
    pub fn punch_time(&self) -> Option<Duration> {
        let punched_at = (*self.punched_at.lock().unwrap_or_else(|e| e.into_inner()))?;
        Some(punched_at.saturating_duration_since(self.relayed_at?))
    }

    /// The time from the first request sent through the relay to the first
    /// sent directly, if both happened.
    pub fn upgrade_time(&self) -> Option<Duration> {
        Some(
            self.first_direct?
                .saturating_duration_since(self.first_relayed?),
        )
    }
}

/// How long `send` waits to learn its observed address from the relay.
const CANDIDATE_WAIT: Duration = Duration::from_secs(3);

/// How long `send` waits for closed relayed connections to go.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
