//! Which streams the client core uses when a peer's connections change:
//! streams on a relayed connection are retired (drained, then closed)
//! once the peer has a direct connection, and requests never fail across
//! the switch.

mod common;

use bytes::Bytes;
use common::*;
use pointsub_proto::frame::FrameKind;
use pointsub_proto::{ClientConfig, ClientEvent, PeerKey, RequestError, RequestId, StreamId};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn srv() -> PeerKey {
    key("srv")
}

fn closes(events: &[ClientEvent]) -> Vec<StreamId> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::CloseStream { stream } => Some(*stream),
            _ => None,
        })
        .collect()
}

fn done(events: &[ClientEvent]) -> Vec<(RequestId, Result<Bytes, RequestError>)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Completed { id, result, .. } => {
                Some((*id, result.clone().map(|r| r.body)))
            }
            _ => None,
        })
        .collect()
}

/// Requests written since the last call: (stream, wire id).
fn requests(r: &mut ClientRig) -> Vec<(StreamId, u64)> {
    r.sent()
        .into_iter()
        .filter(|(_, m)| m.kind == FrameKind::Request)
        .map(|(s, m)| (s, m.request_id))
        .collect()
}

#[test]
fn relayed_stream_drains_once_a_direct_path_appears() {
    let mut r = ClientRig::new(ClientConfig::default());
    let a =
        r.c.send(srv(), proto(), Bytes::from_static(b"a"), r.now)
            .unwrap();
    let ev = r.events();
    let relayed = opened(&ev)[0].0;
    r.open(relayed);
    r.c.handle_stream_relayed(relayed, r.now);
    assert!(r.c.is_relayed(relayed));
    assert!(
        !r.c.is_retired(relayed),
        "no direct path yet: keep using it"
    );
    let sent = requests(&mut r);
    assert_eq!(sent.len(), 1);
    let wire_a = sent[0].1;

    // A direct connection appears while request `a` is in flight.
    r.c.handle_direct_path(&srv(), true, r.now);
    assert!(r.c.is_retired(relayed));
    let ev = r.events();
    assert!(
        closes(&ev).is_empty(),
        "closed with a request on it: {ev:?}"
    );

    // A new request does not ride on the relayed stream.
    let b =
        r.c.send(srv(), proto(), Bytes::from_static(b"b"), r.now)
            .unwrap();
    let ev = r.events();
    let direct = opened(&ev);
    assert_eq!(direct.len(), 1, "{ev:?}");
    let direct = direct[0].0;
    assert_ne!(direct, relayed);
    r.open(direct);
    let sent = requests(&mut r);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, direct);

    // The request in flight on the relayed stream still gets its answer,
    // then the relayed stream is closed.
    r.reply(relayed, wire_a, b"A");
    let ev = r.events();
    assert_eq!(done(&ev), [(a, Ok(Bytes::from_static(b"A")))]);
    assert_eq!(closes(&ev), [relayed]);
    assert_eq!(r.c.pool_stats().retiring, 0);
    r.reply(direct, sent[0].1, b"B");
    assert_eq!(done(&r.events()), [(b, Ok(Bytes::from_static(b"B")))]);
    // The direct stream stays pooled and is reused.
    assert_eq!(r.c.connections(r.now).len(), 1);
    r.c.send(srv(), proto(), Bytes::from_static(b"c"), r.now)
        .unwrap();
    assert!(opened(&r.events()).is_empty());
    assert_eq!(requests(&mut r)[0].0, direct);
}

#[test]
fn stream_reported_relayed_after_the_direct_path_is_retired_at_once() {
    let mut r = ClientRig::new(ClientConfig::default());
    r.c.handle_direct_path(&srv(), true, r.now);
    let a =
        r.c.send(srv(), proto(), Bytes::from_static(b"a"), r.now)
            .unwrap();
    let s = opened(&r.events())[0].0;
    // The open raced the direct connection and landed on the relayed one.
    r.open(s);
    r.c.handle_stream_relayed(s, r.now);
    assert!(r.c.is_retired(s));
    let wire = requests(&mut r)[0].1;
    r.reply(s, wire, b"A");
    let ev = r.events();
    assert_eq!(done(&ev), [(a, Ok(Bytes::from_static(b"A")))]);
    assert_eq!(closes(&ev), [s]);
}

#[test]
fn idle_relayed_stream_closes_at_once_and_lost_direct_path_keeps_relayed_streams() {
    let mut r = ClientRig::new(ClientConfig::default());
    let a =
        r.c.send(srv(), proto(), Bytes::from_static(b"a"), r.now)
            .unwrap();
    let s = opened(&r.events())[0].0;
    r.open(s);
    r.c.handle_stream_relayed(s, r.now);
    let wire = requests(&mut r)[0].1;
    r.reply(s, wire, b"A");
    assert_eq!(done(&r.events()), [(a, Ok(Bytes::from_static(b"A")))]);
    // Idle on the relayed connection: closed as soon as a direct one exists.
    r.c.handle_direct_path(&srv(), true, r.now);
    assert_eq!(closes(&r.events()), [s]);
    // The direct connection goes again; only a relayed one is left.
    r.c.handle_direct_path(&srv(), false, r.now);
    r.c.send(srv(), proto(), Bytes::from_static(b"b"), r.now)
        .unwrap();
    let s2 = opened(&r.events())[0].0;
    r.open(s2);
    r.c.handle_stream_relayed(s2, r.now);
    assert!(!r.c.is_retired(s2), "the only path left must stay usable");
    let wire = requests(&mut r)[0].1;
    r.reply(s2, wire, b"B");
    assert!(closes(&r.events()).is_empty());
    // Another peer's direct path does not touch this peer's streams.
    r.c.handle_direct_path(&key("other"), true, r.now);
    assert!(!r.c.is_retired(s2));
    assert!(closes(&r.events()).is_empty());
}

#[test]
fn retired_stream_that_breaks_fails_its_requests_typed_and_they_retry() {
    let mut r = ClientRig::new(ClientConfig::default());
    let a =
        r.c.send(srv(), proto(), Bytes::from_static(b"a"), r.now)
            .unwrap();
    let s = opened(&r.events())[0].0;
    r.open(s);
    r.c.handle_stream_relayed(s, r.now);
    requests(&mut r);
    r.c.handle_direct_path(&srv(), true, r.now);
    // The circuit ends before the answer came.
    r.c.handle_stream_reset(s, r.now);
    let ev = r.events();
    assert!(done(&ev).is_empty(), "a reset is retried: {ev:?}");
    let t = r.c.poll_timeout().expect("a retry is scheduled");
    r.advance(t);
    let ev = r.events();
    let s2 = opened(&ev);
    assert_eq!(s2.len(), 1, "{ev:?}");
    let s2 = s2[0].0;
    r.open(s2);
    let sent = requests(&mut r);
    assert_eq!(sent[0].0, s2);
    r.reply(s2, sent[0].1, b"A");
    assert_eq!(done(&r.events()), [(a, Ok(Bytes::from_static(b"A")))]);
}

#[derive(Clone, Debug)]
enum Op {
    Send,
    /// Open the stream the core asked for (the i-th pending), relayed or not.
    Open(usize, bool),
    /// Answer the i-th request in flight.
    Answer(usize),
    /// Break the i-th open stream.
    Reset(usize),
    /// The peer's direct connection comes or goes.
    Direct(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::Open(i, r)),
        4 => any::<usize>().prop_map(Op::Answer),
        1 => any::<usize>().prop_map(Op::Reset),
        1 => any::<bool>().prop_map(Op::Direct),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order of opens, answers, resets and direct paths
    /// coming and going: no request is written on a stream that was
    /// relayed while a direct path existed, a retired stream is closed
    /// exactly when its last request ends, and every request ends once
    /// the network answers everything.
    #[test]
    fn relayed_streams_are_drained_never_reused(ops in prop::collection::vec(op(), 1..120)) {
        let mut r = ClientRig::new(ClientConfig::default().with_max_retries(50));
        let mut pending_open: Vec<StreamId> = Vec::new();
        let mut open: BTreeSet<StreamId> = BTreeSet::new();
        let mut relayed: BTreeSet<StreamId> = BTreeSet::new();
        // Stream -> wire ids written on it and not answered.
        let mut inflight: BTreeMap<StreamId, Vec<u64>> = BTreeMap::new();
        let mut ids: BTreeSet<RequestId> = BTreeSet::new();
        let mut ended: BTreeSet<RequestId> = BTreeSet::new();
        let mut direct = false;
        // Streams relayed while a direct path existed: nothing new on them.
        let mut drained: BTreeSet<StreamId> = BTreeSet::new();
        let mut closed: BTreeSet<StreamId> = BTreeSet::new();
        let absorb = |r: &mut ClientRig,
                          pending_open: &mut Vec<StreamId>,
                          open: &mut BTreeSet<StreamId>,
                          inflight: &mut BTreeMap<StreamId, Vec<u64>>,
                          ended: &mut BTreeSet<RequestId>,
                          drained: &BTreeSet<StreamId>,
                          closed: &mut BTreeSet<StreamId>|
         -> Result<(), TestCaseError> {
            for (s, wire) in requests(r) {
                prop_assert!(!drained.contains(&s), "request written on drained stream {}", s);
                prop_assert!(!closed.contains(&s));
                inflight.entry(s).or_default().push(wire);
            }
            for e in r.events() {
                match e {
                    ClientEvent::OpenStream { stream, .. } => pending_open.push(stream),
                    ClientEvent::CloseStream { stream } => {
                        if open.contains(&stream) && drained.contains(&stream) {
                            prop_assert!(
                                inflight.get(&stream).is_none_or(|w| w.is_empty()),
                                "drained stream {} closed with requests on it", stream
                            );
                        }
                        closed.insert(stream);
                        open.remove(&stream);
                        pending_open.retain(|s| *s != stream);
                        inflight.remove(&stream);
                    }
                    ClientEvent::Completed { id, .. } => {
                        prop_assert!(ended.insert(id), "request {} ended twice", id);
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        for op in &ops {
            match *op {
                Op::Send => {
                    let id = r.c.send(srv(), proto(), Bytes::from_static(b"x"), r.now).unwrap();
                    ids.insert(id);
                }
                Op::Open(i, is_relayed) => {
                    if !pending_open.is_empty() {
                        let s = pending_open.remove(i % pending_open.len());
                        open.insert(s);
                        r.open(s);
                        // Requests that waited for it are written now, before
                        // the adapter can say where it landed.
                        absorb(&mut r, &mut pending_open, &mut open, &mut inflight, &mut ended, &drained, &mut closed)?;
                        if is_relayed {
                            relayed.insert(s);
                            if direct {
                                drained.insert(s);
                            }
                            r.c.handle_stream_relayed(s, r.now);
                        }
                    }
                }
                Op::Answer(i) => {
                    let all: Vec<(StreamId, u64)> = inflight
                        .iter()
                        .flat_map(|(s, ws)| ws.iter().map(move |w| (*s, *w)))
                        .collect();
                    if !all.is_empty() {
                        let (s, w) = all[i % all.len()];
                        if let Some(ws) = inflight.get_mut(&s) {
                            ws.retain(|x| *x != w);
                        }
                        r.reply(s, w, b"ok");
                    }
                }
                Op::Reset(i) => {
                    let all: Vec<StreamId> = open.iter().copied().collect();
                    if !all.is_empty() {
                        let s = all[i % all.len()];
                        open.remove(&s);
                        inflight.remove(&s);
                        closed.insert(s);
                        r.c.handle_stream_reset(s, r.now);
                    }
                }
                Op::Direct(d) => {
                    if d && !direct {
                        drained.extend(relayed.iter().filter(|s| open.contains(s)).copied());
                        drained.extend(relayed.iter().filter(|s| pending_open.contains(s)).copied());
                    }
                    direct = d;
                    r.c.handle_direct_path(&srv(), d, r.now);
                }
            }
            absorb(&mut r, &mut pending_open, &mut open, &mut inflight, &mut ended, &drained, &mut closed)?;
            for s in &drained {
                if open.contains(s) {
                    prop_assert!(r.c.is_retired(*s), "stream {} relayed beside a direct path still in service", s);
                }
            }
        }
        // The network now answers everything, directly.
        for _ in 0..1000 {
            if ended.len() == ids.len() {
                break;
            }
            for s in std::mem::take(&mut pending_open) {
                open.insert(s);
                r.open(s);
            }
            let all: Vec<(StreamId, u64)> = inflight
                .iter_mut()
                .flat_map(|(s, ws)| std::mem::take(ws).into_iter().map(move |w| (*s, w)))
                .collect();
            for (s, w) in all {
                r.reply(s, w, b"ok");
            }
            if let Some(t) = r.c.poll_timeout() {
                let t = t.max(r.now);
                r.advance(t);
            }
            absorb(&mut r, &mut pending_open, &mut open, &mut inflight, &mut ended, &drained, &mut closed)?;
        }
        prop_assert_eq!(&ended, &ids, "requests left hanging");
        // Every request ended: no retired stream is left open.
        prop_assert_eq!(r.c.pool_stats().retiring, 0);
    }
}
