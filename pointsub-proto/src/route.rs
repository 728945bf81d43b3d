//! Closest-node routing: the spec's `SendClosest`.
//!
//! Each protocol has a set of server nodes (`AddServerNode`,
//! `RemoveServerNode`, `GetServerNodes`, `ClearServerNodes`). To route a
//! request, the SHA-256 of its routing key (the body unless the caller names
//! one) is XORed with the SHA-256 of each node's key; the smaller the result,
//! read as a 256-bit big-endian number, the closer the node. Failover walks
//! that order. Nodes that failed recently cool down: they move to the end of
//! the order for a while that doubles with each consecutive failure, so a
//! broken node is skipped but still tried when nothing else is left.
//!
//! # Where nodes come from
//!
//! A node of a set has one or more [`NodeSource`]s: added by hand
//! ([`NodeSource::Manual`], `AddServerNode`), or found by a discovery
//! mechanism (identify, a Kademlia provider record, mDNS). The two kinds
//! follow different rules:
//!
//! - a node added by hand stays until it is removed by hand
//!   ([`Router::remove_node`], [`Router::clear`]), whatever discovery
//!   reports about it;
//! - a discovered node stays while at least one source lists it: each
//!   source withdraws it on its own ([`Router::withdraw`]), and it leaves
//!   the set when its last source has.
//!
//! A removal by hand takes the node out whatever its sources; a discovery
//! mechanism that still sees it adds it back on its next report.

use crate::{Instant, PeerKey, Protocol};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// SHA-256 of `bytes`: the point a key or node occupies in the routing space.
pub fn key_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// XOR distance between two points. Arrays compare lexicographically, which
/// for these is the order of 256-bit big-endian numbers.
pub fn distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (out, (x, y)) in d.iter_mut().zip(a.iter().zip(b.iter())) {
        *out = x ^ y;
    }
    d
}

/// How a server node came to be in a protocol's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NodeSource {
    /// Added by hand (`AddServerNode`): stays until removed by hand.
    Manual,
    /// The peer's identify information lists the protocol.
    Identify,
    /// A Kademlia provider record names the peer for the protocol.
    Kademlia,
    /// Found on the local network by mDNS.
    Mdns,
}

impl NodeSource {
    /// Whether this source is a discovery mechanism (anything but
    /// [`NodeSource::Manual`]).
    pub fn is_discovery(self) -> bool {
        !matches!(self, NodeSource::Manual)
    }

    fn bit(self) -> u8 {
        match self {
            NodeSource::Manual => 1,
            NodeSource::Identify => 2,
            NodeSource::Kademlia => 4,
            NodeSource::Mdns => 8,
        }
    }

    const ALL: [NodeSource; 4] = [
        NodeSource::Manual,
        NodeSource::Identify,
        NodeSource::Kademlia,
        NodeSource::Mdns,
    ];
}

/// Cooldown of failed nodes.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Cooldown after the first consecutive failure (1 s); it doubles with
    /// each further one.
    pub cooldown_base: Duration,
    /// Longest cooldown (60 s).
    pub cooldown_max: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            cooldown_base: Duration::from_secs(1),
            cooldown_max: Duration::from_secs(60),
        }
    }
}

/// Errors of node-set management and routing. All are final: retrying the
/// same call cannot succeed until the node set changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The local node cannot be a server node: a client never sends to itself.
    #[error("the local node cannot be added as a server node")]
    LocalNode,
    /// No node set exists for the protocol.
    #[error("no server nodes are known for protocol {0}")]
    UnknownProtocol(Protocol),
    /// The node is not in the protocol's set.
    #[error("node {node:?} is not a server node of protocol {protocol}")]
    UnknownNode {
        /// The protocol whose set was searched.
        protocol: Protocol,
        /// The node that was not found.
        node: PeerKey,
    },
    /// No node is left to route to (none known, or all excluded).
    #[error("no server node available for protocol {0}")]
    NoNodes(Protocol),
}

impl RouteError {
    /// Whether retrying the same call may succeed: never for these errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            RouteError::LocalNode
            | RouteError::UnknownProtocol(_)
            | RouteError::UnknownNode { .. }
            | RouteError::NoNodes(_) => false,
        }
    }
}

/// A member of a node set, with its hash computed once and its sources
/// (a bit per [`NodeSource`], never empty).
#[derive(Clone, Debug)]
struct Node {
    key: PeerKey,
    hash: [u8; 32],
    sources: u8,
}

/// The nodes of one protocol, in insertion order, with a membership index.
#[derive(Clone, Debug, Default)]
struct NodeSet {
    order: Vec<Node>,
    members: BTreeSet<PeerKey>,
}

/// Failure record of one node, shared by all protocols.
#[derive(Clone, Copy, Debug)]
struct Health {
    failures: u32,
    cooling_until: Instant,
}

/// Per-protocol server node sets and closest-node ordering with cooldown.
///
/// Pure bookkeeping: the caller reports failures and successes with
/// [`Router::record_failure`] / [`Router::record_success`] and asks for an
/// order with [`Router::order`] each time it routes a request.
#[derive(Clone, Debug)]
pub struct Router {
    local: PeerKey,
    cfg: RouteConfig,
    sets: BTreeMap<Protocol, NodeSet>,
    health: BTreeMap<PeerKey, Health>,
}

impl Router {
    /// A router for the node `local` (which it refuses as a server node),
    /// with no node sets.
    pub fn new(local: PeerKey, cfg: RouteConfig) -> Self {
        Router {
            local,
            cfg,
            sets: BTreeMap::new(),
            health: BTreeMap::new(),
        }
    }

    /// The local node's key.
    pub fn local(&self) -> &PeerKey {
        &self.local
    }

    /// The configuration.
    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// Adds `node` by hand to the set of `protocol` (`AddServerNode`):
    /// [`Router::add_node_from`] with [`NodeSource::Manual`]. A node that
    /// was only discovered so far becomes a manual one too (it then stays
    /// until removed by hand).
    pub fn add_node(&mut self, protocol: &Protocol, node: PeerKey) -> Result<bool, RouteError> {
        self.add_node_from(protocol, node, NodeSource::Manual)
    }

    /// Adds `node` to the set of `protocol` as found by `source`.
    /// `Ok(true)` if the node joined the set, `Ok(false)` if it already was
    /// a member (it gains `source` if it did not have it; its place in the
    /// insertion order stays), `Err(LocalNode)` for the local node.
    pub fn add_node_from(
        &mut self,
        protocol: &Protocol,
        node: PeerKey,
        source: NodeSource,
    ) -> Result<bool, RouteError> {
        if node == self.local {
            return Err(RouteError::LocalNode);
        }
        let set = self.sets.entry(protocol.clone()).or_default();
        if set.members.contains(&node) {
            if let Some(n) = set.order.iter_mut().find(|n| n.key == node) {
                n.sources |= source.bit();
            }
            return Ok(false);
        }
        let hash = key_hash(node.as_bytes());
        set.members.insert(node.clone());
        set.order.push(Node {
            key: node,
            hash,
            sources: source.bit(),
        });
        Ok(true)
    }

    /// `source` no longer lists `node` for `protocol`. The node leaves the
    /// set when that was its last source (a node added by hand never leaves
    /// this way). Returns whether it left. Withdrawing what was not there
    /// does nothing (discovery reports may repeat).
    ///
    /// [`NodeSource::Manual`] withdraws the manual mark only: a node that
    /// is also discovered stays, as a discovered node.
    pub fn withdraw(&mut self, protocol: &Protocol, node: &PeerKey, source: NodeSource) -> bool {
        let Some(set) = self.sets.get_mut(protocol) else {
            return false;
        };
        let Some(n) = set.order.iter_mut().find(|n| n.key == *node) else {
            return false;
        };
        n.sources &= !source.bit();
        if n.sources != 0 {
            return false;
        }
        self.drop_member(protocol, node);
        true
    }

    /// `source` no longer lists any node for `protocol` (its discovery
    /// stopped). Returns the nodes that left the set, in insertion order.
    pub fn withdraw_all(&mut self, protocol: &Protocol, source: NodeSource) -> Vec<PeerKey> {
        let listed: Vec<PeerKey> = match self.sets.get(protocol) {
            Some(set) => set
                .order
                .iter()
                .filter(|n| n.sources & source.bit() != 0)
                .map(|n| n.key.clone())
                .collect(),
            None => return Vec::new(),
        };
        listed
            .into_iter()
            .filter(|node| self.withdraw(protocol, node, source))
            .collect()
    }

    /// The sources of `node` in the set of `protocol`; empty when it is not
    /// a member.
    pub fn sources(&self, protocol: &Protocol, node: &PeerKey) -> Vec<NodeSource> {
        let bits = self
            .sets
            .get(protocol)
            .and_then(|s| s.order.iter().find(|n| n.key == *node))
            .map_or(0, |n| n.sources);
        NodeSource::ALL
            .into_iter()
            .filter(|s| bits & s.bit() != 0)
            .collect()
    }

    /// The nodes of `protocol` that `source` lists, in insertion order.
    pub fn nodes_from(&self, protocol: &Protocol, source: NodeSource) -> Vec<PeerKey> {
        self.sets
            .get(protocol)
            .map(|s| {
                s.order
                    .iter()
                    .filter(|n| n.sources & source.bit() != 0)
                    .map(|n| n.key.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes `node` by hand from the set of `protocol`
    /// (`RemoveServerNode`), whatever its sources. A set left empty is
    /// dropped; a node left in no set loses its failure record.
    pub fn remove_node(&mut self, protocol: &Protocol, node: &PeerKey) -> Result<(), RouteError> {
        let set = self
            .sets
            .get_mut(protocol)
            .ok_or_else(|| RouteError::UnknownProtocol(protocol.clone()))?;
        if !set.members.contains(node) {
            return Err(RouteError::UnknownNode {
                protocol: protocol.clone(),
                node: node.clone(),
            });
        }
        self.drop_member(protocol, node);
        Ok(())
    }

    /// Takes a member out of its set, dropping the set when left empty and
    /// the node's failure record when it is in no set any more.
    fn drop_member(&mut self, protocol: &Protocol, node: &PeerKey) {
        if let Some(set) = self.sets.get_mut(protocol) {
            set.members.remove(node);
            set.order.retain(|n| n.key != *node);
            if set.order.is_empty() {
                self.sets.remove(protocol);
            }
        }
        self.forget_if_orphan(node);
    }

    /// The nodes of `protocol` in insertion order (`GetServerNodes`); empty
    /// if the protocol has none.
    pub fn nodes(&self, protocol: &Protocol) -> Vec<PeerKey> {
        self.sets
            .get(protocol)
            .map(|s| s.order.iter().map(|n| n.key.clone()).collect())
            .unwrap_or_default()
    }

    /// Removes every node of `protocol` by hand (`ClearServerNodes`),
    /// whatever their sources.
    pub fn clear(&mut self, protocol: &Protocol) {
        if let Some(set) = self.sets.remove(protocol) {
            for node in &set.members {
                self.forget_if_orphan(node);
            }
        }
    }

    /// Protocols with at least one node, in sorted order.
    pub fn protocols(&self) -> Vec<Protocol> {
        self.sets.keys().cloned().collect()
    }

    /// The nodes of `protocol` to try for `routing_key`, best first: nearest
    /// first by `distance(key_hash(routing_key), node hash)`; nodes cooling
    /// down at `now` come after all others (themselves nearest first);
    /// nodes in `exclude` are left out. `Err(NoNodes)` if nothing is left
    /// (including when the protocol has no nodes at all).
    pub fn order(
        &self,
        protocol: &Protocol,
        routing_key: &[u8],
        exclude: &[PeerKey],
        now: Instant,
    ) -> Result<Vec<PeerKey>, RouteError> {
        self.order_hashed(protocol, &key_hash(routing_key), exclude, now)
    }

    /// Same as [`Router::order`] with the routing key's hash already computed
    /// by [`key_hash`], so a body is hashed once per request, not per attempt.
    pub fn order_hashed(
        &self,
        protocol: &Protocol,
        key_hash: &[u8; 32],
        exclude: &[PeerKey],
        now: Instant,
    ) -> Result<Vec<PeerKey>, RouteError> {
        let no_nodes = || RouteError::NoNodes(protocol.clone());
        let set = self.sets.get(protocol).ok_or_else(no_nodes)?;
        // A set makes long exclusion lists cheap; short ones are scanned.
        let excluded_set: Option<BTreeSet<&PeerKey>> =
            (exclude.len() > 8).then(|| exclude.iter().collect());
        let is_excluded = |k: &PeerKey| match &excluded_set {
            Some(s) => s.contains(k),
            None => exclude.contains(k),
        };
        let mut ranked: Vec<(bool, [u8; 32], &PeerKey)> = set
            .order
            .iter()
            .filter(|n| !is_excluded(&n.key))
            .map(|n| {
                (
                    self.is_cooling(&n.key, now),
                    distance(key_hash, &n.hash),
                    &n.key,
                )
            })
            .collect();
        if ranked.is_empty() {
            return Err(no_nodes());
        }
        // Keys are unique within a set, so this order is total.
        ranked.sort_unstable();
        Ok(ranked.into_iter().map(|(_, _, k)| k.clone()).collect())
    }

    /// Records a failed attempt on `node`: its consecutive failures `f` grow
    /// by one and it cools down until
    /// `now + min(cooldown_max, cooldown_base * 2^(f-1))`. Ignored for a node
    /// in no set (its record would never be dropped).
    pub fn record_failure(&mut self, node: &PeerKey, now: Instant) {
        if !self.is_member(node) {
            return;
        }
        let h = self.health.entry(node.clone()).or_insert(Health {
            failures: 0,
            cooling_until: Instant::ZERO,
        });
        h.failures = h.failures.saturating_add(1);
        let shift = h.failures - 1;
        let cooldown = if shift >= 32 {
            self.cfg.cooldown_max
        } else {
            self.cfg
                .cooldown_base
                .checked_mul(1u32 << shift)
                .unwrap_or(self.cfg.cooldown_max)
                .min(self.cfg.cooldown_max)
        };
        h.cooling_until = now + cooldown;
    }

    /// Records a successful attempt on `node`: its failures reset and it
    /// stops cooling down.
    pub fn record_success(&mut self, node: &PeerKey) {
        self.health.remove(node);
    }

    /// Whether `node` is cooling down at `now`.
    pub fn is_cooling(&self, node: &PeerKey, now: Instant) -> bool {
        self.health.get(node).is_some_and(|h| now < h.cooling_until)
    }

    /// Consecutive failures of `node` since its last success.
    pub fn failures(&self, node: &PeerKey) -> u32 {
        self.health.get(node).map_or(0, |h| h.failures)
    }

    fn is_member(&self, node: &PeerKey) -> bool {
        self.sets.values().any(|s| s.members.contains(node))
    }

    fn forget_if_orphan(&mut self, node: &PeerKey) {
        if !self.is_member(node) {
            self.health.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> PeerKey {
        PeerKey::from(format!("peer-{n}").into_bytes())
    }

    fn proto() -> Protocol {
        Protocol::new("/echo/1.0.0")
    }

    fn router_with(n: u32) -> Router {
        let mut r = Router::new(key(0), RouteConfig::default());
        for i in 1..=n {
            assert_eq!(r.add_node(&proto(), key(i)), Ok(true));
        }
        r
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn key_hash_is_sha256() {
        assert_eq!(
            hex(&key_hash(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&key_hash(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn distance_is_xor_and_orders_big_endian() {
        let a = [0xffu8; 32];
        let mut b = [0u8; 32];
        b[0] = 0x0f;
        let d = distance(&a, &b);
        assert_eq!(d[0], 0xf0);
        assert!(d[1..].iter().all(|&x| x == 0xff));
        assert_eq!(distance(&a, &a), [0; 32]);
        let mut small = [0u8; 32];
        small[31] = 0xff;
        let mut big = [0u8; 32];
        big[0] = 1;
        assert!(small < big);
    }

    #[test]
    fn order_matches_brute_force() {
        let r = router_with(100);
        for body in [&b"hello"[..], b"", b"another routing key"] {
            let got = r.order(&proto(), body, &[], Instant::ZERO).unwrap();
            let h = key_hash(body);
            let mut want: Vec<PeerKey> = (1..=100).map(key).collect();
            want.sort_by_key(|k| distance(&h, &key_hash(k.as_bytes())));
            assert_eq!(got, want);
            assert_eq!(
                r.order_hashed(&proto(), &h, &[], Instant::ZERO).unwrap(),
                got
            );
        }
    }

    #[test]
    fn exclusion_short_and_long() {
        let r = router_with(20);
        let all = r.order(&proto(), b"k", &[], Instant::ZERO).unwrap();
        let short = [all[0].clone()];
        let got = r.order(&proto(), b"k", &short, Instant::ZERO).unwrap();
        assert_eq!(got, all[1..]);
        let long: Vec<PeerKey> = all[..15].to_vec();
        let got = r.order(&proto(), b"k", &long, Instant::ZERO).unwrap();
        assert_eq!(got, all[15..]);
        assert_eq!(
            r.order(&proto(), b"k", &all, Instant::ZERO),
            Err(RouteError::NoNodes(proto()))
        );
    }

    #[test]
    fn cooling_nodes_go_last_and_expire() {
        let mut r = router_with(5);
        let t0 = Instant::from_millis(1_000);
        let all = r.order(&proto(), b"k", &[], t0).unwrap();
        r.record_failure(&all[0], t0);
        r.record_failure(&all[2], t0);
        assert!(r.is_cooling(&all[0], t0));
        let got = r.order(&proto(), b"k", &[], t0).unwrap();
        assert_eq!(got, [1, 3, 4, 0, 2].map(|i| all[i].clone()).to_vec());
        // First failure: 1 s cooldown.
        let later = t0 + Duration::from_millis(999);
        assert!(r.is_cooling(&all[0], later));
        let expired = t0 + Duration::from_secs(1);
        assert!(!r.is_cooling(&all[0], expired));
        assert_eq!(r.order(&proto(), b"k", &[], expired).unwrap(), all);
        // Failures are remembered after expiry until a success.
        assert_eq!(r.failures(&all[0]), 1);
    }

    #[test]
    fn cooldown_doubles_caps_and_resets_on_success() {
        let mut r = router_with(1);
        let n = key(1);
        let t = Instant::ZERO;
        let expect = [1u64, 2, 4, 8, 16, 32, 60, 60];
        for (i, secs) in expect.iter().enumerate() {
            r.record_failure(&n, t);
            assert_eq!(r.failures(&n), i as u32 + 1);
            let d = Duration::from_secs(*secs);
            assert!(r.is_cooling(&n, t + d - Duration::from_nanos(1)));
            assert!(!r.is_cooling(&n, t + d));
        }
        for _ in 0..100 {
            r.record_failure(&n, t);
        }
        assert!(!r.is_cooling(&n, t + Duration::from_secs(60)));
        r.record_success(&n);
        assert_eq!(r.failures(&n), 0);
        assert!(!r.is_cooling(&n, t));
    }

    #[test]
    fn add_refuses_local_and_ignores_duplicates() {
        let mut r = Router::new(key(0), RouteConfig::default());
        assert_eq!(r.add_node(&proto(), key(0)), Err(RouteError::LocalNode));
        assert!(!RouteError::LocalNode.is_retryable());
        assert_eq!(r.add_node(&proto(), key(1)), Ok(true));
        assert_eq!(r.add_node(&proto(), key(2)), Ok(true));
        assert_eq!(r.add_node(&proto(), key(1)), Ok(false));
        assert_eq!(r.nodes(&proto()), vec![key(1), key(2)]);
        assert_eq!(r.protocols(), vec![proto()]);
        assert_eq!(r.local(), &key(0));
    }

    #[test]
    fn remove_errors_and_cleanup() {
        let mut r = router_with(2);
        let other = Protocol::new("/other/1");
        assert_eq!(
            r.remove_node(&other, &key(1)),
            Err(RouteError::UnknownProtocol(other.clone()))
        );
        assert_eq!(
            r.remove_node(&proto(), &key(9)),
            Err(RouteError::UnknownNode {
                protocol: proto(),
                node: key(9)
            })
        );
        r.add_node(&other, key(1)).unwrap();
        r.record_failure(&key(1), Instant::ZERO);
        r.record_failure(&key(2), Instant::ZERO);
        // key(1) is still in `other`: its record stays.
        r.remove_node(&proto(), &key(1)).unwrap();
        assert_eq!(r.failures(&key(1)), 1);
        assert_eq!(r.nodes(&proto()), vec![key(2)]);
        r.remove_node(&proto(), &key(2)).unwrap();
        assert_eq!(r.failures(&key(2)), 0);
        assert_eq!(r.protocols(), vec![other.clone()]);
        r.clear(&other);
        assert_eq!(r.failures(&key(1)), 0);
        assert!(r.protocols().is_empty());
        assert!(r.nodes(&other).is_empty());
        // Failures of unknown nodes are not recorded.
        r.record_failure(&key(5), Instant::ZERO);
        assert_eq!(r.failures(&key(5)), 0);
    }

    #[test]
    fn no_nodes() {
        let r = Router::new(key(0), RouteConfig::default());
        assert_eq!(
            r.order(&proto(), b"x", &[], Instant::ZERO),
            Err(RouteError::NoNodes(proto()))
        );
    }

    #[test]
    fn failure_state_is_shared_across_protocols() {
        let mut r = router_with(2);
        let other = Protocol::new("/other/1");
        r.add_node(&other, key(1)).unwrap();
        r.add_node(&other, key(2)).unwrap();
        let now = Instant::ZERO;
        let first = r.order(&other, b"z", &[], now).unwrap()[0].clone();
        r.record_failure(&first, now);
        assert_eq!(r.order(&proto(), b"z", &[], now).unwrap()[1], first);
        assert_eq!(r.order(&other, b"z", &[], now).unwrap()[1], first);
    }

    #[test]
    fn manual_nodes_stay_whatever_discovery_says() {
        let mut r = Router::new(key(0), RouteConfig::default());
        let p = proto();
        assert_eq!(r.add_node(&p, key(1)), Ok(true));
        // Discovery also lists it, then withdraws it: it stays (manual).
        assert_eq!(r.add_node_from(&p, key(1), NodeSource::Identify), Ok(false));
        assert_eq!(
            r.sources(&p, &key(1)),
            vec![NodeSource::Manual, NodeSource::Identify]
        );
        assert!(!r.withdraw(&p, &key(1), NodeSource::Identify));
        assert_eq!(
            r.withdraw_all(&p, NodeSource::Kademlia),
            Vec::<PeerKey>::new()
        );
        assert_eq!(r.nodes(&p), vec![key(1)]);
        assert_eq!(r.sources(&p, &key(1)), vec![NodeSource::Manual]);
        // Only a removal by hand takes it out.
        r.remove_node(&p, &key(1)).unwrap();
        assert!(r.nodes(&p).is_empty());
        assert!(r.sources(&p, &key(1)).is_empty());
    }

    #[test]
    fn discovered_node_leaves_with_its_last_source() {
        let mut r = Router::new(key(0), RouteConfig::default());
        let p = proto();
        assert_eq!(r.add_node_from(&p, key(1), NodeSource::Identify), Ok(true));
        assert_eq!(r.add_node_from(&p, key(1), NodeSource::Kademlia), Ok(false));
        assert_eq!(r.add_node_from(&p, key(2), NodeSource::Kademlia), Ok(true));
        assert_eq!(
            r.add_node_from(&p, key(0), NodeSource::Identify),
            Err(RouteError::LocalNode)
        );
        r.record_failure(&key(1), Instant::ZERO);
        assert!(!r.withdraw(&p, &key(1), NodeSource::Identify));
        assert_eq!(r.nodes(&p), vec![key(1), key(2)]);
        assert_eq!(r.failures(&key(1)), 1);
        assert_eq!(r.nodes_from(&p, NodeSource::Kademlia), vec![key(1), key(2)]);
        assert_eq!(
            r.withdraw_all(&p, NodeSource::Kademlia),
            vec![key(1), key(2)]
        );
        assert!(r.nodes(&p).is_empty());
        assert!(r.protocols().is_empty());
        // Its failure record went with it.
        assert_eq!(r.failures(&key(1)), 0);
        // Repeated withdrawals are harmless.
        assert!(!r.withdraw(&p, &key(1), NodeSource::Identify));
    }

    #[test]
    fn a_discovered_node_added_by_hand_becomes_manual() {
        let mut r = Router::new(key(0), RouteConfig::default());
        let p = proto();
        r.add_node_from(&p, key(1), NodeSource::Mdns).unwrap();
        assert_eq!(r.add_node(&p, key(1)), Ok(false));
        assert!(!r.withdraw(&p, &key(1), NodeSource::Mdns));
        assert_eq!(r.nodes(&p), vec![key(1)]);
        // Withdrawing the manual mark of a node nothing else lists drops it.
        assert!(r.withdraw(&p, &key(1), NodeSource::Manual));
        assert!(r.nodes(&p).is_empty());
        // A removal by hand takes out a discovered node too.
        r.add_node_from(&p, key(2), NodeSource::Identify).unwrap();
        r.remove_node(&p, &key(2)).unwrap();
        assert!(r.nodes(&p).is_empty());
        assert!(NodeSource::Identify.is_discovery());
        assert!(!NodeSource::Manual.is_discovery());
    }
}
