//! pointsub's closest-node metric is Kademlia's: a node's key is SHA-256 of
//! its PeerId's bytes, a routing key's is SHA-256 of its bytes, and nodes
//! rank by the XOR of the two, as libp2p-kad's `KBucketKey`s do. So a
//! provider record found through Kademlia and `send_closest` agree on which
//! server is closest to a key.

use libp2p::identity::Keypair;
use libp2p::kad::{KBucketKey, RecordKey};
use pointsub_tokio::PeerId;
use pointsub_tokio::proto::route::{RouteConfig, Router, distance, key_hash};
use pointsub_tokio::proto::{Instant, PeerKey, Protocol};

/// `n` distinct peers, the same on every run.
fn peers(n: u8) -> Vec<PeerId> {
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[0] = i;
            seed[31] = 0xa5;
            Keypair::ed25519_from_bytes(seed)
                .expect("a 32-byte seed is a valid ed25519 key")
                .public()
                .to_peer_id()
        })
        .collect()
}

fn key_of(peer: &PeerId) -> PeerKey {
    PeerKey::from(peer.to_bytes())
}

/// Peers nearest first to `routing_key`, as Kademlia ranks them.
fn kad_order(peers: &[PeerId], routing_key: &[u8]) -> Vec<PeerId> {
    let target = KBucketKey::new(RecordKey::new(&routing_key));
    let mut ranked: Vec<PeerId> = peers.to_vec();
    ranked.sort_by_key(|p| target.distance(&KBucketKey::from(*p)));
    ranked
}

/// Peers nearest first to `routing_key`, as pointsub's router ranks them.
fn pointsub_order(peers: &[PeerId], routing_key: &[u8]) -> Vec<PeerId> {
    let protocol = Protocol::from("/kad-metric/1.0.0");
    let mut router = Router::new(PeerKey::from(vec![0u8; 4]), RouteConfig::default());
    for p in peers {
        router.add_node(&protocol, key_of(p)).expect("a new node");
    }
    router
        .order(&protocol, routing_key, &[], Instant::from_nanos(0))
        .expect("nodes to rank")
        .iter()
        .map(|k| PeerId::from_bytes(k.as_bytes()).expect("a PeerId's bytes"))
        .collect()
}

#[test]
fn send_closest_ranks_nodes_as_kademlia_does() {
    let peers = peers(64);
    let keys: Vec<Vec<u8>> = (0u32..200)
        .map(|i| format!("routing key {i}").into_bytes())
        .chain([Vec::new(), vec![0u8; 1024], b"hello pointsub".to_vec()])
        .collect();
    for key in &keys {
        let ours = pointsub_order(&peers, key);
        assert_eq!(ours.len(), peers.len());
        assert_eq!(ours, kad_order(&peers, key), "key {key:?}");
    }
}

#[test]
fn the_keys_and_distances_are_kademlias_bit_for_bit() {
    for p in peers(16) {
        let ours = key_hash(&p.to_bytes());
        let theirs = KBucketKey::from(p);
        assert_eq!(&ours[..], theirs.hashed_bytes(), "node key of {p}");
        let record = RecordKey::new(&b"some body");
        let target = KBucketKey::new(record.clone());
        assert_eq!(&key_hash(record.as_ref())[..], target.hashed_bytes());
        // The XOR distance, read as a 256-bit big-endian number, is
        // Kademlia's: same bucket (its log2) for every pair.
        let d = distance(&key_hash(record.as_ref()), &ours);
        let leading = d.iter().position(|b| *b != 0).map(|i| {
            let bits = (31 - i) * 8 + (7 - d[i].leading_zeros() as usize);
            bits as u32
        });
        assert_eq!(leading, target.distance(&theirs).ilog2(), "bucket of {p}");
    }
}
