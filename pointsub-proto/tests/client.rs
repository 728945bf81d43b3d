//! Targeted tests of the client core, driven by hand on virtual time.

mod common;

use bytes::Bytes;
use common::*;
use pointsub_proto::error::{RouteError, Side};
use pointsub_proto::frame::{ErrorCode, FrameKind};
use pointsub_proto::route::{distance, key_hash};
use pointsub_proto::{
    ClientConfig, ClientEvent, ClosestOptions, Instant, OpenFailure, PeerKey, RequestError,
    RequestId, Response, SendOptions, ServerConfig, StreamId,
};
use std::time::Duration;

fn srv() -> PeerKey {
    key("srv")
}

fn body(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn ok(peer: PeerKey, b: &'static str) -> Result<Response, RequestError> {
    Ok(Response {
        body: body(b),
        peer,
    })
}

fn completed(id: RequestId, result: Result<Response, RequestError>, attempts: u32) -> ClientEvent {
    ClientEvent::Completed {
        id,
        result,
        attempts,
    }
}

fn started(id: RequestId, peer: PeerKey, attempt: u32) -> ClientEvent {
    ClientEvent::AttemptStarted { id, peer, attempt }
}

/// Sends to `srv`, opens the stream it asks for and returns the request's
/// id, stream and wire id once its request frame is written and flushed.
fn send_open(r: &mut ClientRig, b: &'static str) -> (RequestId, StreamId, u64) {
    let id = r.c.send(srv(), proto(), body(b), r.now).unwrap();
    let ev = r.events();
    let open = opened(&ev);
    assert_eq!(open.len(), 1, "{ev:?}");
    let s = open[0].0;
    r.open(s);
    let sent = r.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, s);
    assert_eq!(sent[0].1.kind, FrameKind::Request);
    assert_eq!(sent[0].1.body, body(b));
    (id, s, sent[0].1.request_id)
}

/// The one request written, on the expected stream: its wire id.
fn one_request(r: &mut ClientRig, s: StreamId) -> u64 {
    let sent = r.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, s);
    assert_eq!(sent[0].1.kind, FrameKind::Request);
    sent[0].1.request_id
}

fn assert_between(t: Instant, lo: Instant, hi: Instant) {
    assert!(lo <= t && t <= hi, "{t:?} not in [{lo:?}, {hi:?}]");
}

#[test]
fn self_send_is_refused_without_an_event() {
    let mut r = ClientRig::new(ClientConfig::default());
    let e = r.c.send(key("me"), proto(), body("x"), r.now).unwrap_err();
    assert_eq!(e, RequestError::SelfSend);
    assert!(r.events().is_empty());
    assert_eq!(r.c.in_flight(), 0);
    assert_eq!(r.c.metrics().requests, 0);
    assert_eq!(r.c.poll_timeout(), None);
}

#[test]
fn local_oversize_is_refused() {
    let mut r = ClientRig::new(ClientConfig::default().with_max_block_size(1024));
    let big = Bytes::from(vec![7u8; 1025]);
    let want = RequestError::Oversize {
        size: 1025,
        limit: 1024,
        side: Side::Local,
    };
    assert_eq!(
        r.c.send(srv(), proto(), big.clone(), r.now),
        Err(want.clone())
    );
    r.c.add_server_node(&proto(), srv()).unwrap();
    let e =
        r.c.send_closest(proto(), big, ClosestOptions::default(), r.now);
    assert_eq!(e, Err(want));
    assert!(r.events().is_empty());
    // At the limit is fine.
    r.c.send(srv(), proto(), Bytes::from(vec![7u8; 1024]), r.now)
        .unwrap();
}

#[test]
fn close_ends_each_pending_request_once_and_refuses_new_ones() {
    let mut r = ClientRig::new(ClientConfig::default());
    let (r1, s1, _) = send_open(&mut r, "one");
    let r2 = r.c.send(key("other"), proto(), body("two"), r.now).unwrap();
    let s2 = opened(&r.events())[0].0;
    r.now = ms(5);
    r.c.close(r.now);
    assert!(r.c.is_closed());
    assert_eq!(
        r.events(),
        vec![
            completed(r1, Err(RequestError::Closed), 1),
            completed(r2, Err(RequestError::Closed), 1),
            ClientEvent::CloseStream { stream: s1 },
            ClientEvent::CloseStream { stream: s2 },
        ]
    );
    assert!(r.sent().is_empty(), "nothing is written after close");
    assert_eq!(r.c.poll_timeout(), None);
    assert_eq!(r.c.in_flight(), 0);
    assert_eq!(
        r.c.send(srv(), proto(), body("late"), r.now),
        Err(RequestError::Closed)
    );
    r.c.close(r.now);
    assert!(r.events().is_empty(), "close twice is a no-op");
}

#[test]
fn connect_timeout_is_retried_with_growing_backoff_then_final() {
    let cfg = ClientConfig::default();
    let connect = cfg.connect_timeout;
    let mut r = ClientRig::new(cfg);
    let id = r.c.send(srv(), proto(), body("x"), r.now).unwrap();
    let mut streams = Vec::new();
    let mut events = r.events();
    for attempt in 1..=4u32 {
        assert_eq!(attempts(&events), vec![(srv(), attempt)], "{events:?}");
        let open = opened(&events);
        assert_eq!(open.len(), 1);
        assert!(!streams.contains(&open[0].0), "a fresh stream per attempt");
        streams.push(open[0].0);
        // Nothing until the connect timeout.
        let give_up = r.now + connect;
        assert_eq!(r.c.poll_timeout(), Some(give_up));
        r.advance(give_up - NS);
        assert!(r.events().is_empty());
        r.advance(give_up);
        let ev = r.events();
        assert_eq!(ev[0], ClientEvent::CloseStream { stream: open[0].0 });
        if attempt == 4 {
            assert_eq!(
                ev[1..],
                [completed(id, Err(RequestError::ConnectTimeout), 4)]
            );
            break;
        }
        assert_eq!(ev.len(), 1, "{ev:?}");
        // Backoff base 1 s, 2 s, 4 s; the delay is drawn from [base/2, base].
        let base = Duration::from_secs(1 << (attempt - 1));
        let retry_at = r.c.poll_timeout().unwrap();
        assert_between(retry_at, r.now + base / 2, r.now + base);
        r.advance(retry_at);
        events = r.events();
    }
    assert_eq!(r.c.poll_timeout(), None);
    let m = r.c.metrics();
    assert_eq!((m.attempts, m.retries, m.streams_opened), (4, 3, 4));
}

#[test]
fn unsupported_protocol_is_final_after_one_attempt() {
    let mut r = ClientRig::new(ClientConfig::default());
    let id = r.c.send(srv(), proto(), body("x"), r.now).unwrap();
    let s = opened(&r.events())[0].0;
    r.c.handle_open_failed(s, OpenFailure::UnsupportedProtocol, ms(3));
    assert_eq!(
        r.events(),
        vec![completed(
            id,
            Err(RequestError::UnsupportedProtocol(proto())),
            1
        )]
    );
    assert_eq!(r.c.poll_timeout(), None, "no retry scheduled");
}

#[test]
fn busy_is_retried_on_the_same_stream_then_succeeds() {
    let mut r = ClientRig::new(ClientConfig::default());
    let (id, s, w1) = send_open(&mut r, "x");
    r.now = ms(10);
    r.reply_error(s, w1, ErrorCode::Busy, "100 requests active, limit 100");
    assert!(r.events().is_empty(), "busy is not final");
    let retry_at = r.c.poll_timeout().unwrap();
    assert_between(retry_at, ms(510), ms(1010));
    r.advance(retry_at);
    // The stream stayed healthy: no new stream for the retry.
    assert_eq!(r.events(), vec![started(id, srv(), 2)]);
    let w2 = one_request(&mut r, s);
    assert_ne!(w1, w2);
    r.reply(s, w2, b"done");
    assert_eq!(r.events(), vec![completed(id, ok(srv(), "done"), 2)]);
    let m = r.c.metrics();
    assert_eq!((m.retries, m.streams_opened, m.succeeded), (1, 1, 1));
}

#[test]
fn handler_error_is_final_with_its_message() {
    let cfg = ClientConfig::default();
    let idle = cfg.idle_conn_timeout;
    let mut r = ClientRig::new(cfg);
    let (id, s, w) = send_open(&mut r, "x");
    r.now = ms(7);
    r.reply_error(s, w, ErrorCode::Handler, "no such key");
    assert_eq!(
        r.events(),
        vec![completed(
            id,
            Err(RequestError::Handler("no such key".into())),
            1
        )]
    );
    // Only the idle stream's expiry is left: no retry.
    assert_eq!(r.c.poll_timeout(), Some(ms(7) + idle));
}

#[test]
fn read_timeout_is_final_by_default_and_cancels_on_the_wire() {
    let mut r = ClientRig::new(ClientConfig::default());
    let (id, s, w) = send_open(&mut r, "x");
    assert_eq!(r.c.poll_timeout(), Some(Instant::ZERO + secs(30)));
    r.advance(Instant::ZERO + secs(30) - NS);
    assert!(r.events().is_empty());
    r.advance(Instant::ZERO + secs(30));
    assert_eq!(
        r.events(),
        vec![completed(id, Err(RequestError::ReadTimeout), 1)]
    );
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, sent[0].1.kind), (s, FrameKind::Cancel));
    assert_eq!(sent[0].1.request_id, w);
    // A late response completes nothing.
    r.reply(s, w, b"late");
    assert!(r.events().is_empty());
    let m = r.c.metrics();
    assert_eq!((m.late_frames, m.failed, m.succeeded), (1, 1, 0));
    assert_eq!(r.c.in_flight(), 0);
}

#[test]
fn read_timeout_is_retried_when_enabled() {
    let mut r = ClientRig::new(ClientConfig::default().with_retry_on_read_timeout(true));
    let (id, s, w1) = send_open(&mut r, "x");
    let t = Instant::ZERO + secs(30);
    r.advance(t);
    assert!(r.events().is_empty());
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].1.kind, sent[0].1.request_id),
        (FrameKind::Cancel, w1)
    );
    let retry_at = r.c.poll_timeout().unwrap();
    assert_between(retry_at, t + Duration::from_millis(500), t + secs(1));
    r.advance(retry_at);
    assert_eq!(r.events(), vec![started(id, srv(), 2)]);
    let w2 = one_request(&mut r, s);
    // The first attempt's late answer is ignored, the second one counts.
    r.reply(s, w1, b"first");
    assert!(r.events().is_empty());
    assert_eq!(r.c.metrics().late_frames, 1);
    r.reply(s, w2, b"second");
    assert_eq!(r.events(), vec![completed(id, ok(srv(), "second"), 2)]);
}

#[test]
fn pooled_stream_is_reused_for_the_next_request() {
    let mut r = ClientRig::new(ClientConfig::default());
    let (r1, s, w1) = send_open(&mut r, "one");
    r.reply(s, w1, b"1");
    assert_eq!(r.events(), vec![completed(r1, ok(srv(), "1"), 1)]);
    assert_eq!(r.c.pool_stats().idle, 1);
    let r2 = r.c.send(srv(), proto(), body("two"), r.now).unwrap();
    assert_eq!(
        r.events(),
        vec![started(r2, srv(), 1)],
        "no second OpenStream"
    );
    let w2 = one_request(&mut r, s);
    r.reply(s, w2, b"2");
    assert_eq!(r.events(), vec![completed(r2, ok(srv(), "2"), 1)]);
    assert_eq!(r.c.metrics().streams_opened, 1);
    let conns = r.c.connections(r.now);
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].requests, 2);
}

#[test]
fn streams_multiplex_up_to_the_limit_then_a_second_opens() {
    let mut r = ClientRig::new(
        ClientConfig::default()
            .with_max_inflight_per_stream(4)
            .with_spread_streams(1),
    );
    let ids: Vec<RequestId> = (0..5)
        .map(|_| r.c.send(srv(), proto(), body("m"), r.now).unwrap())
        .collect();
    let ev = r.events();
    let open = opened(&ev);
    assert_eq!(open.len(), 2, "{ev:?}");
    // The 5th request asked for the second stream.
    assert_eq!(
        ev[ev.len() - 2..],
        [
            started(ids[4], srv(), 1),
            ClientEvent::OpenStream {
                stream: open[1].0,
                peer: srv(),
                protocol: proto(),
            }
        ]
    );
    let (a, b) = (open[0].0, open[1].0);
    r.open(a);
    r.open(b);
    let sent = r.sent();
    let on = |s: StreamId| sent.iter().filter(|(st, _)| *st == s).count();
    assert_eq!((on(a), on(b)), (4, 1));
    for (s, m) in &sent {
        r.reply(*s, m.request_id, b"ok");
    }
    assert_eq!(completions(&r.events()).len(), 5);
    assert_eq!(r.c.pool_stats().idle, 2);
}

#[test]
fn a_loaded_peer_gets_a_second_stream_at_a_quarter_of_the_limit() {
    // Limit 8, spread over 2: the second stream opens when the first
    // carries 2, the load is shared, and a third opens only when both
    // carry the full 8.
    let mut r = ClientRig::new(ClientConfig::default().with_max_inflight_per_stream(8));
    assert_eq!(r.c.config().spread_streams, 2);
    let first: Vec<RequestId> = (0..3)
        .map(|_| r.c.send(srv(), proto(), body("m"), r.now).unwrap())
        .collect();
    let open = opened(&r.events());
    assert_eq!(open.len(), 2, "the third request opens a second stream");
    let (a, b) = (open[0].0, open[1].0);
    r.open(a);
    r.open(b);
    for _ in 3..16 {
        r.c.send(srv(), proto(), body("m"), r.now).unwrap();
    }
    assert!(opened(&r.events()).is_empty(), "16 fit on two streams of 8");
    let sent = r.sent();
    let on = |s: StreamId| sent.iter().filter(|(st, _)| *st == s).count();
    assert_eq!((on(a), on(b)), (8, 8));
    let last = r.c.send(srv(), proto(), body("m"), r.now).unwrap();
    let ev = r.events();
    assert_eq!(opened(&ev).len(), 1, "the 17th opens a third: {ev:?}");
    for (s, m) in &sent {
        r.reply(*s, m.request_id, b"ok");
    }
    let ev = r.events();
    let done: Vec<RequestId> = completions(&ev)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Completed { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 16);
    assert!(first.iter().all(|id| done.contains(id)));
    assert!(!done.contains(&last), "the 17th waits for its stream");
}

fn full_pool_rig() -> (ClientRig, RequestId, RequestId, StreamId, u64) {
    let cfg = ClientConfig::default()
        .with_max_total_conns(1)
        .with_max_inflight_per_stream(1)
        .with_pool_timeout(secs(10));
    let mut r = ClientRig::new(cfg);
    let (r1, s, w1) = send_open(&mut r, "one");
    r.now = ms(1);
    let r2 = r.c.send(srv(), proto(), body("two"), r.now).unwrap();
    assert_eq!(r.events(), vec![started(r2, srv(), 1)], "r2 waits, no open");
    assert!(r.sent().is_empty());
    assert_eq!(r.c.pool_stats().waiting, 1);
    (r, r1, r2, s, w1)
}

#[test]
fn full_pool_waiter_times_out() {
    let (mut r, _r1, r2, _s, _w1) = full_pool_rig();
    assert_eq!(r.c.poll_timeout(), Some(ms(1) + secs(10)));
    r.advance(ms(1) + secs(10) - NS);
    assert!(r.events().is_empty());
    r.advance(ms(1) + secs(10));
    assert_eq!(
        r.events(),
        vec![completed(r2, Err(RequestError::PoolTimeout), 1)]
    );
    assert_eq!(r.c.pool_stats().waiting, 0);
    assert_eq!(r.c.metrics().streams_opened, 1);
}

#[test]
fn full_pool_waiter_proceeds_when_the_slot_frees() {
    let (mut r, r1, r2, s, w1) = full_pool_rig();
    r.now = ms(500);
    r.reply(s, w1, b"1");
    assert_eq!(r.events(), vec![completed(r1, ok(srv(), "1"), 1)]);
    let w2 = one_request(&mut r, s);
    r.reply(s, w2, b"2");
    assert_eq!(r.events(), vec![completed(r2, ok(srv(), "2"), 1)]);
    assert_eq!(r.c.metrics().streams_opened, 1);
}

#[test]
fn a_reset_stream_is_never_reused() {
    let mut r = ClientRig::new(ClientConfig::default());
    let (r1, s1, _w1) = send_open(&mut r, "one");
    r.now = ms(10);
    r.c.handle_stream_reset(s1, r.now);
    assert!(r.events().is_empty(), "a reset is retried");
    r.advance(r.c.poll_timeout().unwrap());
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(srv(), 2)]);
    let s2 = opened(&ev)[0].0;
    assert_ne!(s1, s2);
    // Bytes still arriving on the dead stream are ignored.
    r.reply(s1, 1, b"ghost");
    assert!(r.events().is_empty());
    r.open(s2);
    let w2 = one_request(&mut r, s2);
    r.reply(s2, w2, b"1");
    assert_eq!(r.events(), vec![completed(r1, ok(srv(), "1"), 2)]);
    // An idle pooled stream that is reset is not handed out either.
    r.c.handle_stream_reset(s2, r.now);
    let r2 = r.c.send(srv(), proto(), body("two"), r.now).unwrap();
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(srv(), 1)]);
    let s3 = opened(&ev)[0].0;
    assert!(s3 != s1 && s3 != s2);
    r.open(s3);
    let w3 = one_request(&mut r, s3);
    r.reply(s3, w3, b"2");
    assert_eq!(r.events(), vec![completed(r2, ok(srv(), "2"), 1)]);
}

// ----- send_closest -----

fn nodes(n: usize) -> Vec<PeerKey> {
    (0..n).map(|i| key(&format!("node-{i}"))).collect()
}

/// Nodes nearest first by XOR distance of SHA-256 hashes, computed here.
fn by_distance(routing_key: &[u8], nodes: &[PeerKey]) -> Vec<PeerKey> {
    let k = key_hash(routing_key);
    let mut v = nodes.to_vec();
    v.sort_by_key(|n| distance(&k, &key_hash(n.as_bytes())));
    v
}

fn closest_rig(n: usize) -> (ClientRig, Vec<PeerKey>) {
    let mut r = ClientRig::new(ClientConfig::default());
    let all = nodes(n);
    for node in &all {
        assert_eq!(r.c.add_server_node(&proto(), node.clone()), Ok(true));
    }
    (r, all)
}

#[test]
fn closest_goes_nearest_first_and_fails_over_at_once() {
    let (mut r, all) = closest_rig(5);
    let b = body("route me");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b.clone(), ClosestOptions::default(), r.now)
            .unwrap();
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(want[0].clone(), 1)]);
    let s0 = opened(&ev)[0].clone();
    assert_eq!(s0.1, want[0]);
    // The nearest node is unreachable: the next one is tried now, no backoff.
    r.now = ms(3);
    r.c.handle_open_failed(s0.0, OpenFailure::Unreachable("no route".into()), r.now);
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(want[1].clone(), 2)], "{ev:?}");
    let s1 = opened(&ev)[0].clone();
    assert_eq!(s1.1, want[1]);
    assert_eq!(
        r.c.poll_timeout(),
        Some(r.now + secs(5)),
        "only the open timer"
    );
    r.open(s1.0);
    let w = one_request(&mut r, s1.0);
    r.reply(s1.0, w, b"from 1");
    assert_eq!(
        r.events(),
        vec![completed(id, ok(want[1].clone(), "from 1"), 2)]
    );
    // The failed node now cools down and goes last: the same key goes to
    // the second node (whose stream is pooled).
    assert!(r.c.router().is_cooling(&want[0], r.now));
    let id2 =
        r.c.send_closest(proto(), b.clone(), ClosestOptions::default(), r.now)
            .unwrap();
    assert_eq!(r.events(), vec![started(id2, want[1].clone(), 1)]);
    // Even the farthest healthy node comes before the cooling nearest one.
    let opts = ClosestOptions::default().with_exclude(want[1..4].to_vec());
    r.c.send_closest(proto(), b, opts, r.now).unwrap();
    assert_eq!(attempts(&r.events()), vec![(want[4].clone(), 1)]);
}

#[test]
fn closest_fails_over_past_a_node_that_does_not_serve_the_protocol() {
    let (mut r, all) = closest_rig(3);
    let b = body("who serves this");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b.clone(), ClosestOptions::default(), r.now)
            .unwrap();
    let s0 = opened(&r.events())[0].clone();
    r.c.handle_open_failed(s0.0, OpenFailure::UnsupportedProtocol, r.now);
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(want[1].clone(), 2)], "{ev:?}");
    assert!(r.c.router().is_cooling(&want[0], r.now));
    let s1 = opened(&ev)[0].clone();
    r.open(s1.0);
    let w = one_request(&mut r, s1.0);
    r.reply(s1.0, w, b"served");
    assert_eq!(
        r.events(),
        vec![completed(id, ok(want[1].clone(), "served"), 2)]
    );
    // A direct send to a peer that does not serve the protocol stays final.
    let id = r.c.send(srv(), proto(), b, r.now).unwrap();
    let s = opened(&r.events())[0].0;
    r.c.handle_open_failed(s, OpenFailure::UnsupportedProtocol, r.now);
    assert_eq!(
        r.events(),
        vec![completed(
            id,
            Err(RequestError::UnsupportedProtocol(proto())),
            1
        )]
    );
}

#[test]
fn closest_uses_the_routing_key_and_honours_exclude() {
    let (mut r, all) = closest_rig(4);
    let b = body("payload");
    let opts = ClosestOptions::default().with_routing_key(&b"the key"[..]);
    r.c.send_closest(proto(), b.clone(), opts, r.now).unwrap();
    let want = by_distance(b"the key", &all);
    assert_eq!(attempts(&r.events()), vec![(want[0].clone(), 1)]);

    let want = by_distance(&b, &all);
    let opts = ClosestOptions::default().with_exclude(vec![want[0].clone()]);
    r.c.send_closest(proto(), b.clone(), opts, r.now).unwrap();
    assert_eq!(attempts(&r.events()), vec![(want[1].clone(), 1)]);

    let opts = ClosestOptions::default().with_exclude(all.clone());
    assert_eq!(
        r.c.send_closest(proto(), b, opts, r.now),
        Err(RequestError::Route(RouteError::NoNodes(proto())))
    );
}

#[test]
fn closest_with_no_nodes_is_refused() {
    let mut r = ClientRig::new(ClientConfig::default());
    assert_eq!(
        r.c.send_closest(proto(), body("x"), ClosestOptions::default(), r.now),
        Err(RequestError::Route(RouteError::NoNodes(proto())))
    );
    assert!(r.events().is_empty());
    assert_eq!(r.c.in_flight(), 0);
}

#[test]
fn hedged_request_takes_the_first_answer_and_cancels_the_other() {
    let (mut r, all) = closest_rig(3);
    let b = body("hedge");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b, ClosestOptions::default().with_hedge(2), r.now)
            .unwrap();
    let ev = r.events();
    assert_eq!(
        attempts(&ev),
        vec![(want[0].clone(), 1), (want[1].clone(), 2)]
    );
    let open = opened(&ev);
    assert_eq!(open.len(), 2);
    r.open(open[0].0);
    r.open(open[1].0);
    let sent = r.sent();
    assert_eq!(sent.len(), 2);
    let wire_on = |s: StreamId| sent.iter().find(|(st, _)| *st == s).unwrap().1.request_id;
    let (sa, sb) = (open[0].0, open[1].0);
    let (wa, wb) = (wire_on(sa), wire_on(sb));
    r.now = ms(20);
    r.reply(sb, wb, b"B");
    assert_eq!(r.events(), vec![completed(id, ok(want[1].clone(), "B"), 2)]);
    let sent = r.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, sa);
    assert_eq!(
        (sent[0].1.kind, sent[0].1.request_id),
        (FrameKind::Cancel, wa)
    );
    // The loser's answer comes anyway: ignored.
    r.reply(sa, wa, b"A");
    assert!(r.events().is_empty());
    assert_eq!(r.c.metrics().late_frames, 1);
    assert_eq!(r.c.metrics().succeeded, 1);
}

#[test]
fn user_deadline_ends_with_timeout() {
    let mut r = ClientRig::new(ClientConfig::default());
    let opts = SendOptions::default().with_deadline(ms(2000));
    let id =
        r.c.send_with(srv(), proto(), body("x"), opts, r.now)
            .unwrap();
    let s = opened(&r.events())[0].0;
    r.open(s);
    let w = one_request(&mut r, s);
    assert_eq!(r.c.poll_timeout(), Some(ms(2000)));
    r.advance(ms(2000) - NS);
    assert!(r.events().is_empty());
    r.advance(ms(2000));
    assert_eq!(
        r.events(),
        vec![completed(id, Err(RequestError::Timeout), 1)]
    );
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].1.kind, sent[0].1.request_id),
        (FrameKind::Cancel, w)
    );
    r.reply(s, w, b"late");
    assert!(r.events().is_empty());
    assert_eq!(r.c.metrics().late_frames, 1);
}

#[test]
fn deadline_during_backoff_ends_the_request() {
    let mut r = ClientRig::new(ClientConfig::default());
    let opts = SendOptions::default().with_deadline(ms(100));
    let id =
        r.c.send_with(srv(), proto(), body("x"), opts, r.now)
            .unwrap();
    let s = opened(&r.events())[0].0;
    r.c.handle_open_failed(s, OpenFailure::Unreachable("down".into()), ms(50));
    assert!(r.events().is_empty());
    assert_eq!(r.c.poll_timeout(), Some(ms(100)));
    r.advance(ms(100));
    assert_eq!(
        r.events(),
        vec![completed(id, Err(RequestError::Timeout), 1)]
    );
    assert_eq!(r.c.poll_timeout(), None, "the retry timer went with it");
}

#[test]
fn cancel_sends_a_cancel_frame_only_once_the_request_was_written() {
    let mut r = ClientRig::new(ClientConfig::default());
    // Still opening: nothing was written, nothing will be.
    let a = r.c.send(srv(), proto(), body("a"), r.now).unwrap();
    let s = opened(&r.events())[0].0;
    assert!(r.c.cancel(a, r.now));
    assert!(!r.c.cancel(a, r.now));
    assert_eq!(
        r.events(),
        vec![completed(a, Err(RequestError::Cancelled), 1)]
    );
    r.open(s);
    assert!(r.sent().is_empty());
    // Queued on the open stream but not handed out yet: dropped silently.
    let b = r.c.send(srv(), proto(), body("b"), r.now).unwrap();
    assert!(r.c.cancel(b, r.now));
    assert_eq!(completions(&r.events()).len(), 1);
    assert!(r.sent().is_empty());
    // Written: the server is told.
    let c = r.c.send(srv(), proto(), body("c"), r.now).unwrap();
    r.events();
    let w = one_request(&mut r, s);
    assert!(r.c.cancel(c, r.now));
    assert_eq!(
        r.events(),
        vec![completed(c, Err(RequestError::Cancelled), 1)]
    );
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, sent[0].1.kind), (s, FrameKind::Cancel));
    assert_eq!(sent[0].1.request_id, w);
    assert_eq!(r.c.in_flight(), 0);
    assert_eq!(r.c.pool_stats().in_flight, 0);
}

#[test]
fn response_over_the_local_block_size_is_final_oversize() {
    for (i, big) in [noise(100 * 1024, 1), pattern(100 * 1024)]
        .into_iter()
        .enumerate()
    {
        let ccfg = ClientConfig::default().with_max_block_size(64 * 1024);
        let mut n = Net::new(ccfg, ServerConfig::default());
        let id = n
            .client
            .send(key("server"), proto(), body("x"), n.now)
            .unwrap();
        n.pump();
        let (s, rid, _) = n.take_requests()[0].clone();
        n.server.respond(s, rid, Ok(big), n.now);
        n.pump();
        let done = completions(&n.client_events);
        assert_eq!(done.len(), 1, "case {i}");
        match done[0] {
            ClientEvent::Completed {
                id: got,
                result: Err(RequestError::Oversize { limit, side, .. }),
                attempts: 1,
            } => {
                assert_eq!(*got, id);
                assert_eq!((*limit, *side), (64 * 1024, Side::Local), "case {i}");
            }
            other => panic!("case {i}: {other:?}"),
        }
        assert!(n.take_requests().is_empty(), "case {i}: not retried");
        // The rest of the oversize body was skipped: the stream still works.
        let id2 = n
            .client
            .send(key("server"), proto(), body("y"), n.now)
            .unwrap();
        n.pump();
        n.echo_all();
        let done = completions(&n.client_events);
        assert_eq!(done[1], &completed(id2, ok(key("server"), "y"), 1));
        assert_eq!(n.client.metrics().streams_opened, 1);
    }
}

#[test]
fn request_over_the_server_block_size_is_final_remote_oversize() {
    let scfg = ServerConfig::default().with_max_block_size(64 * 1024);
    let mut n = Net::new(ClientConfig::default(), scfg);
    let id = n
        .client
        .send(key("server"), proto(), noise(100 * 1024, 2), n.now)
        .unwrap();
    n.pump();
    assert!(n.take_requests().is_empty(), "never reaches the handler");
    assert_eq!(
        completions(&n.client_events),
        vec![&completed(
            id,
            Err(RequestError::Oversize {
                size: 100 * 1024,
                limit: 64 * 1024,
                side: Side::Remote
            }),
            1
        )]
    );
}

#[test]
fn write_timeout_discards_the_stream_and_retries_on_a_fresh_one() {
    let mut r = ClientRig::new(ClientConfig::default().with_write_timeout(secs(10)));
    r.auto_flush = false;
    let id = r.c.send(srv(), proto(), body("x"), r.now).unwrap();
    let s1 = opened(&r.events())[0].0;
    r.now = ms(1);
    r.open(s1);
    assert_eq!(r.sent().len(), 1, "handed out, never reported written");
    let t = ms(1) + secs(10);
    r.advance(t - NS);
    assert!(r.events().is_empty());
    r.advance(t);
    assert_eq!(r.events(), vec![ClientEvent::CloseStream { stream: s1 }]);
    let retry_at = r.c.poll_timeout().unwrap();
    assert_between(retry_at, t + Duration::from_millis(500), t + secs(1));
    r.advance(retry_at);
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(srv(), 2)]);
    let s2 = opened(&ev)[0].0;
    assert_ne!(s1, s2);
    r.auto_flush = true;
    r.open(s2);
    let w = one_request(&mut r, s2);
    r.reply(s2, w, b"ok");
    assert_eq!(r.events(), vec![completed(id, ok(srv(), "ok"), 2)]);
}

#[test]
fn idle_pooled_stream_is_closed_after_the_idle_timeout() {
    let mut r = ClientRig::new(ClientConfig::default().with_idle_conn_timeout(secs(60)));
    let (id, s, w) = send_open(&mut r, "x");
    r.now = ms(500);
    r.reply(s, w, b"ok");
    assert_eq!(completions(&r.events()).len(), 1, "{id}");
    assert_eq!(r.c.poll_timeout(), Some(ms(500) + secs(60)));
    r.advance(ms(500) + secs(60) - NS);
    assert!(r.events().is_empty());
    r.advance(ms(500) + secs(60));
    assert_eq!(r.events(), vec![ClientEvent::CloseStream { stream: s }]);
    assert_eq!(r.c.pool_stats().total, 0);
    assert_eq!(r.c.poll_timeout(), None);
}

#[test]
fn big_compressible_body_is_compressed_both_ways() {
    let big = pattern(100 * 1024);
    let mut n = Net::new(ClientConfig::default(), ServerConfig::default());
    let id = n
        .client
        .send(key("server"), proto(), big.clone(), n.now)
        .unwrap();
    n.pump();
    let reqs = n.take_requests();
    assert_eq!(reqs[0].2, big, "the server sees the body inflated");
    let (_, m) = &n.to_server[0];
    assert!(m.compressed && m.accept_deflate);
    let written = n.client.metrics().bytes_written;
    assert!(written < big.len() as u64 / 10, "{written} bytes written");
    let (s, rid, b) = reqs[0].clone();
    n.server.respond(s, rid, Ok(b), n.now);
    n.pump();
    let (_, m) = &n.to_client[0];
    assert!(m.compressed, "the client accepts deflate");
    assert!(n.client.metrics().bytes_read < big.len() as u64 / 10);
    assert_eq!(
        completions(&n.client_events),
        vec![&completed(
            id,
            Ok(Response {
                body: big,
                peer: key("server")
            }),
            1
        )]
    );
}

#[test]
fn server_does_not_compress_for_a_client_without_deflate() {
    let big = pattern(100 * 1024);
    let ccfg = ClientConfig::default().with_compression(false);
    let mut n = Net::new(ccfg, ServerConfig::default());
    let id = n
        .client
        .send(key("server"), proto(), big.clone(), n.now)
        .unwrap();
    n.pump();
    let (_, m) = &n.to_server[0];
    assert!(!m.compressed && !m.accept_deflate);
    assert!(n.client.metrics().bytes_written > big.len() as u64);
    n.echo_all();
    let (_, m) = &n.to_client[0];
    assert!(!m.compressed);
    assert!(n.client.metrics().bytes_read > big.len() as u64);
    assert_eq!(
        completions(&n.client_events),
        vec![&completed(
            id,
            Ok(Response {
                body: big,
                peer: key("server")
            }),
            1
        )]
    );
}

#[test]
fn stream_in_flight_counts_the_attempts_on_one_stream() {
    let mut r = ClientRig::new(ClientConfig::default());
    let (_, s, w1) = send_open(&mut r, "one");
    assert_eq!(r.c.stream_in_flight(s), 1, "the stream was idle");
    r.c.send(srv(), proto(), body("two"), r.now).unwrap();
    assert!(
        opened(&r.events()).is_empty(),
        "the second rides the same stream"
    );
    let w2 = one_request(&mut r, s);
    assert_eq!(r.c.stream_in_flight(s), 2, "now it is busy");
    assert_eq!(
        r.c.stream_in_flight(StreamId(s.0 + 1000)),
        0,
        "unknown stream"
    );
    r.reply(s, w1, b"one");
    assert_eq!(r.c.stream_in_flight(s), 1);
    r.reply(s, w2, b"two");
    assert_eq!(r.c.stream_in_flight(s), 0);
    assert_eq!(completions(&r.events()).len(), 2);
}
