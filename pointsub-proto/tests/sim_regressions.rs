//! Regressions found by `pointsub-sim` (each names the seed that found it).

use bytes::Bytes;
use pointsub_proto::frame::{Decoded, FrameKind, MessageDecoder};
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, ClosestOptions, Instant, OpenFailure, PeerKey, Protocol,
};

/// `pointsub-sim --seed 7 --nodes 20 --requests 20000` (invariant `bounded
/// completion`): when a failed stream makes room in a full pool, the pool
/// grants a new stream to a queued waiter; a failover started in the same
/// call was given a slot on that stream before the client had created it,
/// was attached to nothing and hung forever, with no timer.
#[test]
fn failover_onto_a_stream_granted_but_not_yet_created_is_sent() {
    let proto = Protocol::from("/p/1");
    let cfg = ClientConfig::default()
        .with_max_total_conns(1)
        .with_max_inflight_per_stream(4);
    let mut c = Client::new(PeerKey::from(&b"me"[..]), cfg).unwrap();
    let (x, y) = (PeerKey::from(&b"x"[..]), PeerKey::from(&b"y"[..]));
    c.add_server_node(&proto, x.clone()).unwrap();
    c.add_server_node(&proto, y.clone()).unwrap();
    let t0 = Instant::ZERO;
    let body = Bytes::from_static(b"closest");
    let order = c.router().order(&proto, &body, &[], t0).unwrap();
    let (first, second) = (order[0].clone(), order[1].clone());

    // r1 goes to the closest node and takes the only pool slot.
    let r1 = c
        .send_closest(proto.clone(), body, ClosestOptions::default(), t0)
        .unwrap();
    // r2 goes straight to the other node and queues: the pool is full.
    let r2 = c
        .send(
            second.clone(),
            proto.clone(),
            Bytes::from_static(b"direct"),
            t0,
        )
        .unwrap();
    let mut s1 = None;
    while let Some(ev) = c.poll_event() {
        if let ClientEvent::OpenStream { stream, peer, .. } = ev {
            assert_eq!(peer, first);
            s1 = Some(stream);
        }
    }
    // The first stream fails to open: r2 gets the room, r1 fails over to the same node.
    let t1 = Instant::from_millis(1);
    c.handle_open_failed(s1.unwrap(), OpenFailure::Unreachable("down".into()), t1);
    let mut s2 = None;
    while let Some(ev) = c.poll_event() {
        match ev {
            ClientEvent::OpenStream { stream, peer, .. } => {
                assert_eq!(peer, second);
                assert!(s2.is_none(), "one stream suffices");
                s2 = Some(stream);
            }
            ClientEvent::Completed { id, result, .. } => panic!("{id} ended early: {result:?}"),
            _ => {}
        }
    }
    let s2 = s2.expect("a stream to the second node");
    c.handle_stream_opened(s2, Instant::from_millis(2));
    let mut rx = MessageDecoder::new(1 << 20);
    while let Some(t) = c.poll_transmit() {
        assert_eq!(t.stream, s2);
        rx.push(&t.data);
    }
    let mut requests = 0;
    while let Some(Decoded::Message(m)) = rx.next().unwrap() {
        assert_eq!(m.kind, FrameKind::Request);
        requests += 1;
    }
    assert_eq!(requests, 2, "both r1 ({r1}) and r2 ({r2}) must be written");
}

/// `pointsub-sim --seed 2 --nodes 100 --requests 100000` (invariant `pool
/// accounting`): `cancel` freed the request's pool slot but did not act on
/// what the pool decided next, so a request queued for that slot stayed
/// queued (until its pool timeout failed it) and an evicted stream stayed
/// open, until some unrelated call drained the pool.
#[test]
fn cancel_hands_the_freed_slot_to_the_next_waiter_at_once() {
    let proto = Protocol::from("/p/1");
    let cfg = ClientConfig::default()
        .with_max_total_conns(1)
        .with_max_inflight_per_stream(1);
    let mut c = Client::new(PeerKey::from(&b"me"[..]), cfg).unwrap();
    let peer = PeerKey::from(&b"x"[..]);
    let t0 = Instant::ZERO;
    let r1 = c
        .send(peer.clone(), proto.clone(), Bytes::from_static(b"one"), t0)
        .unwrap();
    let mut s1 = None;
    while let Some(ev) = c.poll_event() {
        if let ClientEvent::OpenStream { stream, .. } = ev {
            s1 = Some(stream);
        }
    }
    let s1 = s1.unwrap();
    c.handle_stream_opened(s1, t0);
    while let Some(t) = c.poll_transmit() {
        c.handle_flushed(t.stream, t.data.len(), t0);
    }
    // r2 waits: the only stream carries r1.
    let r2 = c.send(peer, proto, Bytes::from_static(b"two"), t0).unwrap();
    while c.poll_event().is_some() {}
    assert_eq!(c.pool_stats().waiting, 1);
    // Cancelling r1 frees the slot: r2 must go out now, on the same stream.
    assert!(c.cancel(r1, Instant::from_millis(1)));
    let mut ended = Vec::new();
    while let Some(ev) = c.poll_event() {
        if let ClientEvent::Completed { id, .. } = ev {
            ended.push(id);
        }
    }
    assert_eq!(ended, vec![r1]);
    assert_eq!(c.pool_stats().waiting, 0, "r2 ({r2}) still queued");
    let mut rx = MessageDecoder::new(1 << 20);
    while let Some(t) = c.poll_transmit() {
        assert_eq!(t.stream, s1);
        rx.push(&t.data);
    }
    let mut kinds = Vec::new();
    while let Some(Decoded::Message(m)) = rx.next().unwrap() {
        kinds.push(m.kind);
    }
    assert_eq!(kinds, vec![FrameKind::Cancel, FrameKind::Request]);
}
