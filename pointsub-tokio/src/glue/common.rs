//! What the client and the server (and the rest of the glue) share: the
//! conversions between libp2p's [`PeerId`] and the core's [`PeerKey`], the
//! public [`ConnectionInfo`] both report their pooled streams as, and the
//! one mutex helper, [`lock`].

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use pointsub_proto::{PeerKey, StreamId};

use super::behaviour::ConnectionPath;

/// Locks a mutex, ignoring poisoning: every critical section of the glue
/// leaves the state it guards consistent across every early return, so a
/// panic elsewhere must not cascade.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The peer this thread last turned into a core key, with the key.
    static LAST_PEER: RefCell<Option<(PeerId, PeerKey)>> = const { RefCell::new(None) };
}

/// The key the core knows a peer by.
///
/// Every send makes one, and most go to the peer the thread's last send
/// went to: that key is shared (a reference count), not encoded and
/// allocated again for each request, which would also keep one copy per
/// request in flight.
pub(crate) fn peer_key(peer: &PeerId) -> PeerKey {
    let cached = LAST_PEER.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if let Some((p, key)) = last.as_ref()
            && p == peer
        {
            return Some(key.clone());
        }
        let key = encode_peer(peer);
        *last = Some((*peer, key.clone()));
        Some(key)
    });
    match cached {
        Ok(Some(key)) => key,
        _ => encode_peer(peer),
    }
}

/// A peer's key, encoded on the stack (a `PeerId` is at most 42 bytes
/// and its key is held inline; `PeerId::to_bytes` would allocate a vector
/// and grow it twice).
fn encode_peer(peer: &PeerId) -> PeerKey {
    let hash = peer.as_ref();
    let mut buf = [0u8; 80];
    let mut out = &mut buf[..];
    match hash.write(&mut out) {
        Ok(n) => PeerKey::from(&buf[..n]),
        Err(_) => PeerKey::from(peer.to_bytes()),
    }
}

/// The peer behind a core key (always one of ours).
pub(crate) fn peer_id(key: &PeerKey) -> Option<PeerId> {
    PeerId::from_bytes(key.as_bytes()).ok()
}

/// One pooled stream, as [`Server::connections_info`](crate::generic::Server::connections_info) and
/// [`Client::connections_info`](crate::generic::Client::connections_info)
/// report it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The remote peer.
    pub peer: PeerId,
    /// The remote's address on the connection the stream rides on, if
    /// still connected.
    pub remote_addr: Option<Multiaddr>,
    /// Whether that connection runs through a relay's circuit
    /// (`/p2p-circuit`). A client's pooled streams on a relayed connection
    /// are drained and closed once a direct connection to the peer exists.
    /// For a server's stream this is the peer's best connection (the
    /// server cannot tell which connection a remote opened it on).
    pub relayed: bool,
    /// The stream's protocol.
    pub protocol: String,
    /// The core's id of the stream.
    pub stream: StreamId,
    /// When the stream last carried bytes.
    pub last_active: Instant,
    /// How long it has been idle.
    pub idle: Duration,
    /// How long it has been open.
    pub age: Duration,
    /// Bytes received on it (as on the wire: compressed bodies count
    /// compressed).
    pub bytes_in: u64,
    /// Bytes sent on it (as on the wire).
    pub bytes_out: u64,
    /// Requests it carried to completion.
    pub requests: u64,
    /// Requests on it now.
    pub in_flight: usize,
}

impl ConnectionInfo {
    /// The public view of the core's `infos`, at `now` (the runtime's
    /// clock), with the connection each stream rides on from `path`.
    pub(crate) fn from_core(
        now: Instant,
        path: impl Fn(&PeerId, StreamId) -> Option<ConnectionPath>,
        infos: Vec<pointsub_proto::ConnectionInfo>,
    ) -> Vec<Self> {
        infos
            .into_iter()
            .filter_map(|c| {
                let peer = peer_id(&c.remote)?;
                let busy = c.last_active.saturating_duration_since(c.opened_at);
                let path = path(&peer, c.stream);
                Some(Self {
                    peer,
                    relayed: path.as_ref().is_some_and(|p| p.relayed),
                    remote_addr: path.map(|p| p.remote_addr),
                    protocol: c.protocol.as_str().to_owned(),
                    stream: c.stream,
                    last_active: now.checked_sub(c.idle).unwrap_or(now),
                    idle: c.idle,
                    age: c.idle + busy,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    requests: c.requests,
                    in_flight: c.in_flight,
                })
            })
            .collect()
    }
}
