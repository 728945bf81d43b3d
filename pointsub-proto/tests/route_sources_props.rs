//! Property test of server-node sources: random sequences of manual adds
//! and removals and of discovery reports and withdrawals, checked against a
//! plain model (a node is a member while it has a source; manual nodes
//! leave only by hand).

use pointsub_proto::route::{RouteConfig, Router};
use pointsub_proto::{Instant, NodeSource, PeerKey, Protocol};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const SOURCES: [NodeSource; 4] = [
    NodeSource::Manual,
    NodeSource::Identify,
    NodeSource::Kademlia,
    NodeSource::Mdns,
];

#[derive(Clone, Debug)]
enum Op {
    Add { proto: u8, node: u8, source: u8 },
    Withdraw { proto: u8, node: u8, source: u8 },
    WithdrawAll { proto: u8, source: u8 },
    Remove { proto: u8, node: u8 },
    Clear { proto: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, 0u8..6, 0u8..4).prop_map(|(proto, node, source)| Op::Add { proto, node, source }),
        4 => (0u8..2, 0u8..6, 0u8..4)
            .prop_map(|(proto, node, source)| Op::Withdraw { proto, node, source }),
        1 => (0u8..2, 0u8..4).prop_map(|(proto, source)| Op::WithdrawAll { proto, source }),
        1 => (0u8..2, 0u8..6).prop_map(|(proto, node)| Op::Remove { proto, node }),
        1 => (0u8..2).prop_map(|proto| Op::Clear { proto }),
    ]
}

fn key(n: u8) -> PeerKey {
    PeerKey::from(vec![b'n', n])
}

fn proto(n: u8) -> Protocol {
    Protocol::from(format!("/p/{n}"))
}

proptest! {
    #[test]
    fn sources_follow_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        // Node 0 is the local node: never a member.
        let mut r = Router::new(key(0), RouteConfig::default());
        // Model: per protocol, per node, its sources; insertion order kept.
        let mut model: BTreeMap<u8, Vec<(u8, BTreeSet<NodeSource>)>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Add { proto: p, node, source } => {
                    let source = SOURCES[source as usize];
                    let got = r.add_node_from(&proto(p), key(node), source);
                    if node == 0 {
                        prop_assert!(got.is_err());
                        continue;
                    }
                    let set = model.entry(p).or_default();
                    let joined = match set.iter_mut().find(|(n, _)| *n == node) {
                        Some((_, s)) => { s.insert(source); false }
                        None => { set.push((node, BTreeSet::from([source]))); true }
                    };
                    prop_assert_eq!(got, Ok(joined));
                }
                Op::Withdraw { proto: p, node, source } => {
                    let source = SOURCES[source as usize];
                    let left = r.withdraw(&proto(p), &key(node), source);
                    let set = model.entry(p).or_default();
                    let mut want = false;
                    if let Some(i) = set.iter().position(|(n, _)| *n == node) {
                        set[i].1.remove(&source);
                        if set[i].1.is_empty() {
                            set.remove(i);
                            want = true;
                        }
                    }
                    prop_assert_eq!(left, want);
                }
                Op::WithdrawAll { proto: p, source } => {
                    let source = SOURCES[source as usize];
                    let left = r.withdraw_all(&proto(p), source);
                    let set = model.entry(p).or_default();
                    let mut want = Vec::new();
                    for (n, s) in set.iter_mut() {
                        if s.remove(&source) && s.is_empty() {
                            want.push(key(*n));
                        }
                    }
                    set.retain(|(_, s)| !s.is_empty());
                    prop_assert_eq!(left, want);
                }
                Op::Remove { proto: p, node } => {
                    let got = r.remove_node(&proto(p), &key(node));
                    let set = model.entry(p).or_default();
                    let before = set.len();
                    set.retain(|(n, _)| *n != node);
                    prop_assert_eq!(got.is_ok(), set.len() < before);
                }
                Op::Clear { proto: p } => {
                    r.clear(&proto(p));
                    model.remove(&p);
                }
            }
            // Every protocol's members, order and sources match the model.
            for p in 0u8..2 {
                let empty = Vec::new();
                let set = model.get(&p).unwrap_or(&empty);
                let want: Vec<PeerKey> = set.iter().map(|(n, _)| key(*n)).collect();
                prop_assert_eq!(r.nodes(&proto(p)), want);
                for (n, s) in set {
                    let got: BTreeSet<NodeSource> =
                        r.sources(&proto(p), &key(*n)).into_iter().collect();
                    prop_assert_eq!(&got, s);
                }
                // Routing sees exactly the members.
                let order = r.order(&proto(p), b"k", &[], Instant::ZERO);
                prop_assert_eq!(order.map(|o| o.len()).unwrap_or(0), set.len());
            }
        }
    }
}
