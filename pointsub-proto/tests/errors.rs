//! What the client core decides for each cause of failure: which errors end
//! a request at once, which are retried and for how long, and what a
//! send-closest reports when every node failed. Driven by hand on virtual
//! time, so the durations asserted are the core's own retry budget.

mod common;

use bytes::Bytes;
use common::*;
use pointsub_proto::frame::ErrorCode;
use pointsub_proto::route::{distance, key_hash};
use pointsub_proto::{
    ClientConfig, ClientEvent, ClosestOptions, NodeFailure, OpenFailure, PeerKey, RequestError,
    RequestId, SendOptions,
};
use std::time::Duration;

fn srv() -> PeerKey {
    key("srv")
}

fn body(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// The outcome and attempt count of `id`, if it completed in `events`.
fn outcome(events: &[ClientEvent], id: RequestId) -> Option<(Result<Bytes, RequestError>, u32)> {
    events.iter().find_map(|e| match e {
        ClientEvent::Completed {
            id: i,
            result,
            attempts,
        } if *i == id => Some((result.clone().map(|r| r.body), *attempts)),
        _ => None,
    })
}

/// How a scripted peer answers each attempt.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// The dial is refused at once.
    Refused,
    /// The open never completes (the connect timeout ends it).
    Silent,
    /// The stream opens and the server answers "busy".
    Busy,
    /// No address is known.
    NoAddress,
}

/// Plays the scripted peer: answers the opens in `events` and every
/// request written since.
fn answer(r: &mut ClientRig, peer: Peer, events: &[ClientEvent]) {
    for (s, _) in opened(events) {
        match peer {
            Peer::Refused => {
                r.c.handle_open_failed(s, OpenFailure::Unreachable("refused".into()), r.now)
            }
            Peer::NoAddress => r.c.handle_open_failed(s, OpenFailure::NoAddress, r.now),
            Peer::Silent => {}
            Peer::Busy => r.open(s),
        }
    }
    for (s, m) in r.sent() {
        r.reply_error(s, m.request_id, ErrorCode::Busy, "at limit");
    }
}

/// Runs one request to completion against a scripted peer; returns its
/// outcome, attempts and the virtual time it took.
fn run(
    cfg: ClientConfig,
    peer: Peer,
    deadline: Option<Duration>,
) -> (Result<Bytes, RequestError>, u32, Duration) {
    let mut r = ClientRig::new(cfg);
    let start = r.now;
    let mut opts = SendOptions::default();
    if let Some(d) = deadline {
        opts = opts.with_deadline(start + d);
    }
    let id =
        r.c.send_with(srv(), proto(), body("x"), opts, r.now)
            .unwrap();
    for _ in 0..1000 {
        let events = r.events();
        answer(&mut r, peer, &events);
        let mut events = events;
        events.extend(r.events());
        if let Some((result, attempts)) = outcome(&events, id) {
            return (result, attempts, r.now.saturating_duration_since(start));
        }
        let next = r.c.poll_timeout().expect("a pending request keeps a timer");
        r.advance(next);
    }
    panic!("request did not end");
}

/// Sum of the smallest and of the largest backoff delays before retries
/// 1..=n with the default backoff (1 s base, doubling, jitter to half).
fn backoff_bounds(cfg: &ClientConfig) -> (Duration, Duration) {
    let mut lo = Duration::ZERO;
    let mut hi = Duration::ZERO;
    for n in 1..=cfg.max_retries {
        let base = (cfg.retry_interval * 2u32.pow(n - 1)).min(cfg.max_backoff);
        lo += base / 2;
        hi += base;
    }
    (lo, hi)
}

fn assert_within(d: Duration, lo: Duration, hi: Duration) {
    assert!(lo <= d && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
}

// ----- one cause at a time: the retry budget -----

#[test]
fn no_address_ends_at_once_and_is_final() {
    let (result, attempts, took) = run(ClientConfig::default(), Peer::NoAddress, None);
    assert_eq!(result, Err(RequestError::NoAddress));
    assert_eq!(attempts, 1);
    assert_eq!(took, Duration::ZERO);
    assert!(!RequestError::NoAddress.is_retryable());
    assert_eq!(RequestError::NoAddress.kind(), "no_address");
}

#[test]
fn refused_is_retried_within_the_backoff_budget() {
    let cfg = ClientConfig::default();
    let (lo, hi) = backoff_bounds(&cfg);
    // Defaults: 3 retries after 0.5-1 s, 1-2 s and 2-4 s: 3.5 to 7 s.
    assert_eq!(
        (lo, hi),
        (Duration::from_millis(3500), Duration::from_secs(7))
    );
    for seed in 0..20 {
        let (result, attempts, took) = run(cfg.clone().with_seed(seed), Peer::Refused, None);
        assert_eq!(result, Err(RequestError::ConnectFailed("refused".into())));
        assert_eq!(attempts, cfg.max_retries + 1);
        assert_within(took, lo, hi);
    }
}

#[test]
fn connect_timeout_is_retried_within_attempts_times_timeout_plus_backoff() {
    let cfg = ClientConfig::default();
    let (lo, hi) = backoff_bounds(&cfg);
    let attempts_time = cfg.connect_timeout * (cfg.max_retries + 1);
    // Defaults: 4 x 5 s + 3.5 to 7 s.
    for seed in 0..10 {
        let (result, attempts, took) = run(cfg.clone().with_seed(seed), Peer::Silent, None);
        assert_eq!(result, Err(RequestError::ConnectTimeout));
        assert_eq!(attempts, cfg.max_retries + 1);
        assert_within(took, attempts_time + lo, attempts_time + hi);
    }
}

#[test]
fn busy_is_retried_within_the_backoff_budget() {
    let cfg = ClientConfig::default();
    let (lo, hi) = backoff_bounds(&cfg);
    for seed in 0..10 {
        let (result, attempts, took) = run(cfg.clone().with_seed(seed), Peer::Busy, None);
        assert_eq!(result, Err(RequestError::Busy("at limit".into())));
        assert_eq!(attempts, cfg.max_retries + 1);
        assert_within(took, lo, hi);
    }
}

#[test]
fn a_deadline_caps_every_cause() {
    let cap = Duration::from_millis(2500);
    for peer in [Peer::Refused, Peer::Silent, Peer::Busy] {
        let (result, _, took) = run(ClientConfig::default(), peer, Some(cap));
        assert_eq!(result, Err(RequestError::Timeout), "{peer:?}");
        assert_eq!(took, cap, "{peer:?}");
    }
    // A cause that ends sooner is not held back by the deadline.
    let (result, _, took) = run(ClientConfig::default(), Peer::NoAddress, Some(cap));
    assert_eq!(result, Err(RequestError::NoAddress));
    assert_eq!(took, Duration::ZERO);
}

// ----- causes that are final -----

#[test]
fn wrong_peer_ends_at_once_and_is_final() {
    let mut r = ClientRig::new(ClientConfig::default());
    let id = r.c.send(srv(), proto(), body("x"), r.now).unwrap();
    let s = opened(&r.events())[0].0;
    let obtained = key("someone else");
    r.c.handle_open_failed(
        s,
        OpenFailure::WrongPeer {
            obtained: obtained.clone(),
        },
        r.now,
    );
    let err = RequestError::WrongPeer { obtained };
    assert_eq!(outcome(&r.events(), id), Some((Err(err.clone()), 1)));
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), "wrong_peer");
    assert_eq!(r.c.poll_timeout(), None, "no retry is scheduled");
}

#[test]
fn local_shutdown_closes_the_client_and_ends_every_request_at_once() {
    let mut r = ClientRig::new(ClientConfig::default());
    // One request on an open stream, one whose stream is still opening,
    // one waiting in backoff.
    let a = r.c.send(srv(), proto(), body("a"), r.now).unwrap();
    let sa = opened(&r.events())[0].0;
    r.open(sa);
    assert_eq!(r.sent().len(), 1);
    let b = r.c.send(key("b"), proto(), body("b"), r.now).unwrap();
    let sb = opened(&r.events())[0].0;
    let c = r.c.send(key("c"), proto(), body("c"), r.now).unwrap();
    let sc = opened(&r.events())[0].0;
    r.c.handle_open_failed(sc, OpenFailure::Unreachable("refused".into()), r.now);
    assert!(r.events().is_empty(), "c waits to retry");

    r.c.handle_open_failed(sb, OpenFailure::LocalShutdown, r.now);
    let events = r.events();
    for id in [a, b, c] {
        let (result, _) = outcome(&events, id).expect("ended at once");
        assert_eq!(result, Err(RequestError::Closed));
    }
    assert!(r.c.is_closed());
    assert!(!RequestError::Closed.is_retryable());
    assert_eq!(r.c.poll_timeout(), None);
    assert_eq!(
        r.c.send(srv(), proto(), body("later"), r.now),
        Err(RequestError::Closed)
    );
}

// ----- send-closest -----

fn closest_rig(n: usize, cfg: ClientConfig) -> (ClientRig, Vec<PeerKey>) {
    let mut r = ClientRig::new(cfg);
    let all: Vec<PeerKey> = (0..n).map(|i| key(&format!("node-{i}"))).collect();
    for node in &all {
        r.c.add_server_node(&proto(), node.clone()).unwrap();
    }
    (r, all)
}

fn by_distance(routing_key: &[u8], nodes: &[PeerKey]) -> Vec<PeerKey> {
    let k = key_hash(routing_key);
    let mut v = nodes.to_vec();
    v.sort_by_key(|n| distance(&k, &key_hash(n.as_bytes())));
    v
}

#[test]
fn closest_fails_over_past_nodes_with_no_address_or_the_wrong_identity() {
    let (mut r, all) = closest_rig(3, ClientConfig::default());
    let b = body("route me");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b, ClosestOptions::default(), r.now)
            .unwrap();
    let s0 = opened(&r.events())[0].clone();
    assert_eq!(s0.1, want[0]);
    r.c.handle_open_failed(s0.0, OpenFailure::NoAddress, r.now);
    let s1 = opened(&r.events())[0].clone();
    assert_eq!(s1.1, want[1], "failed over at once");
    r.c.handle_open_failed(
        s1.0,
        OpenFailure::WrongPeer {
            obtained: key("impostor"),
        },
        r.now,
    );
    let s2 = opened(&r.events())[0].clone();
    assert_eq!(s2.1, want[2], "failed over at once");
    r.c.handle_open_failed(s2.0, OpenFailure::Unreachable("refused".into()), r.now);
    // The two nodes ruled out are not tried again: only the third, after
    // its backoff, until the budget runs out.
    let mut tried = Vec::new();
    let end = loop {
        let next = r.c.poll_timeout().expect("timer");
        r.advance(next);
        let events = r.events();
        tried.extend(attempts(&events).into_iter().map(|(p, _)| p));
        if let Some(end) = outcome(&events, id) {
            break end;
        }
        for (s, _) in opened(&events) {
            r.c.handle_open_failed(s, OpenFailure::Unreachable("refused".into()), r.now);
        }
        let events = r.events();
        if let Some(end) = outcome(&events, id) {
            break end;
        }
    };
    assert!(tried.iter().all(|p| *p == want[2]), "{tried:?}");
    let failures = vec![
        NodeFailure {
            node: want[0].clone(),
            error: RequestError::NoAddress,
        },
        NodeFailure {
            node: want[1].clone(),
            error: RequestError::WrongPeer {
                obtained: key("impostor"),
            },
        },
        NodeFailure {
            node: want[2].clone(),
            error: RequestError::ConnectFailed("refused".into()),
        },
    ];
    let err = RequestError::AllNodesFailed { failures };
    assert_eq!(end, (Err(err.clone()), 4));
    assert!(err.is_retryable(), "the third node may come back");
    assert_eq!(err.kind(), "all_nodes_failed");
    assert!(err.to_string().contains("no known address"), "{err}");
}

#[test]
fn closest_ends_at_once_when_every_node_is_ruled_out() {
    let (mut r, all) = closest_rig(2, ClientConfig::default());
    let b = body("nobody serves this");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b, ClosestOptions::default(), r.now)
            .unwrap();
    let s0 = opened(&r.events())[0].0;
    r.c.handle_open_failed(s0, OpenFailure::UnsupportedProtocol, r.now);
    let s1 = opened(&r.events())[0].0;
    r.c.handle_open_failed(s1, OpenFailure::UnsupportedProtocol, r.now);
    let err = RequestError::AllNodesFailed {
        failures: want
            .iter()
            .map(|n| NodeFailure {
                node: n.clone(),
                error: RequestError::UnsupportedProtocol(proto()),
            })
            .collect(),
    };
    assert_eq!(outcome(&r.events(), id), Some((Err(err.clone()), 2)));
    assert!(!err.is_retryable());
    assert_eq!(r.c.poll_timeout(), None, "no backoff, no retry");
}

#[test]
fn closest_fails_over_on_shutting_down_and_on_a_stopped_protocol() {
    let (mut r, all) = closest_rig(3, ClientConfig::default());
    let b = body("drain");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b, ClosestOptions::default(), r.now)
            .unwrap();
    // The nearest node is draining: it answers "shutting down".
    let s0 = opened(&r.events())[0].0;
    r.open(s0);
    let sent = r.sent();
    r.reply_error(
        s0,
        sent[0].1.request_id,
        ErrorCode::ShuttingDown,
        "stopping",
    );
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(want[1].clone(), 2)], "{ev:?}");
    // The next one has stopped the protocol for good.
    let s1 = opened(&ev)[0].0;
    r.c.handle_open_failed(s1, OpenFailure::UnsupportedProtocol, r.now);
    let ev = r.events();
    assert_eq!(attempts(&ev), vec![(want[2].clone(), 3)], "{ev:?}");
    let s2 = opened(&ev)[0].0;
    r.open(s2);
    let sent = r.sent();
    r.reply(s2, sent[0].1.request_id, b"served");
    assert_eq!(
        outcome(&r.events(), id),
        Some((Ok(Bytes::from_static(b"served")), 3))
    );
    assert!(RequestError::ShuttingDown.is_retryable());
    assert!(!RequestError::UnsupportedProtocol(proto()).is_retryable());
}

#[test]
fn every_node_busy_lists_each_node_once_with_its_last_failure() {
    let (mut r, all) = closest_rig(2, ClientConfig::default());
    let b = body("busy everywhere");
    let want = by_distance(&b, &all);
    let id =
        r.c.send_closest(proto(), b, ClosestOptions::default(), r.now)
            .unwrap();
    let mut n = 0;
    let end = loop {
        let events = r.events();
        if let Some(end) = outcome(&events, id) {
            break end;
        }
        for (s, _) in opened(&events) {
            r.open(s);
        }
        let sent = r.sent();
        let idle = events.is_empty() && sent.is_empty();
        for (s, m) in sent {
            n += 1;
            r.reply_error(s, m.request_id, ErrorCode::Busy, &format!("busy {n}"));
        }
        if idle {
            let next = r.c.poll_timeout().expect("timer");
            r.advance(next);
        }
    };
    // Four attempts on two nodes: each appears once, with its last answer.
    let (result, attempts) = end;
    assert_eq!(attempts, 4);
    let Err(RequestError::AllNodesFailed { failures }) = result else {
        panic!("{result:?}");
    };
    assert_eq!(
        failures.iter().map(|f| f.node.clone()).collect::<Vec<_>>(),
        want
    );
    assert!(
        failures
            .iter()
            .all(|f| matches!(&f.error, RequestError::Busy(m) if m == "busy 3" || m == "busy 4")),
        "{failures:?}"
    );
}

#[test]
fn a_handler_error_from_the_closest_node_is_not_wrapped() {
    let (mut r, _) = closest_rig(2, ClientConfig::default());
    let id =
        r.c.send_closest(proto(), body("k"), ClosestOptions::default(), r.now)
            .unwrap();
    let s = opened(&r.events())[0].0;
    r.open(s);
    let sent = r.sent();
    r.reply_error(s, sent[0].1.request_id, ErrorCode::Handler, "no such key");
    assert_eq!(
        outcome(&r.events(), id),
        Some((Err(RequestError::Handler("no such key".into())), 1))
    );
}
