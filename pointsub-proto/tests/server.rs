//! Targeted tests of the server core, driven by hand on virtual time.

mod common;

use bytes::Bytes;
use common::*;
use pointsub_proto::frame::{ErrorCode, Flags, FrameKind};
use pointsub_proto::{Protocol, Server, ServerConfig, ServerError, ServerEvent, StreamId};
use std::collections::BTreeSet;
use std::time::Duration;

fn request_ids(events: &[ServerEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Request { request_id, .. } => Some(*request_id),
            _ => None,
        })
        .collect()
}

fn cancel_frame(id: u64) -> Bytes {
    frame(FrameKind::Cancel, id, Flags::empty(), b"")
}

#[test]
fn unregistered_protocol_is_refused() {
    let mut s = Server::new(ServerConfig::default()).unwrap();
    let p = Protocol::from("/nobody/1");
    assert_eq!(
        s.handle_inbound_stream(key("a"), p.clone(), ms(0)),
        Err(ServerError::UnsupportedProtocol(p.clone()))
    );
    assert_eq!(s.metrics().streams_refused, 1);
    s.register(p.clone()).unwrap();
    assert!(s.handle_inbound_stream(key("a"), p.clone(), ms(0)).is_ok());
    assert!(s.unregister(&p));
    assert_eq!(
        s.handle_inbound_stream(key("a"), p.clone(), ms(0)),
        Err(ServerError::UnsupportedProtocol(p))
    );
}

#[test]
fn duplicate_register_is_refused() {
    let mut s = Server::new(ServerConfig::default()).unwrap();
    s.register(proto()).unwrap();
    assert_eq!(
        s.register(proto()),
        Err(ServerError::AlreadyRegistered(proto()))
    );
    assert_eq!(s.protocols().count(), 1);
}

#[test]
fn request_beyond_the_limit_gets_busy_at_once() {
    let mut r = ServerRig::new(
        ServerConfig::default()
            .with_max_concurrent_conns(100)
            .with_min_concurrent_conns(100),
    );
    assert_eq!(r.s.admission_limit(), 100);
    let st = r.inbound("a");
    for id in 1..=100 {
        r.request(st, id, b"work");
    }
    assert_eq!(request_ids(&r.events()), (1..=100).collect::<Vec<_>>());
    assert!(r.sent().is_empty());
    r.request(st, 101, b"work");
    assert!(r.events().is_empty(), "not handed to a handler");
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.request_id, 101);
    let (code, msg) = error_of(&sent[0].1);
    assert_eq!(code, ErrorCode::Busy);
    assert!(msg.contains("limit 100"), "{msg}");
    assert_eq!(r.s.metrics().rejected_busy, 1);
    assert_eq!(r.s.active(), 100);
    // A freed slot admits the next one.
    r.s.respond(st, 1, Ok(Bytes::from_static(b"done")), r.now);
    r.request(st, 102, b"work");
    assert_eq!(request_ids(&r.events()), vec![102]);
}

#[test]
fn one_peer_cannot_take_the_whole_limit() {
    let mut r = ServerRig::new(ServerConfig::default().with_max_per_peer(2));
    let a = r.inbound("a");
    for id in 1..=3 {
        r.request(a, id, b"w");
    }
    assert_eq!(request_ids(&r.events()), vec![1, 2]);
    let sent = r.sent();
    assert_eq!(sent[0].1.request_id, 3);
    let (code, msg) = error_of(&sent[0].1);
    assert_eq!(code, ErrorCode::Busy);
    assert!(msg.contains("for this peer"), "{msg}");
    let b = r.inbound("b");
    r.request(b, 1, b"w");
    assert_eq!(request_ids(&r.events()), vec![1]);
}

#[test]
fn stalled_writes_reset_the_stream() {
    let mut r = ServerRig::new(ServerConfig::default().with_write_timeout(secs(10)));
    r.auto_flush = false;
    let st = r.inbound("a");
    r.request(st, 1, b"q");
    r.events();
    r.now = ms(5000);
    r.s.respond(st, 1, Ok(Bytes::from_static(b"r")), r.now);
    assert_eq!(r.sent().len(), 1);
    let t = ms(5000) + secs(10);
    r.advance(t - NS);
    assert!(r.events().is_empty());
    r.advance(t);
    assert_eq!(
        r.events(),
        vec![ServerEvent::CloseStream {
            stream: st,
            reset: true
        }]
    );
}

/// Admits `n` requests on `st` now, answers them all `latency` later.
fn served_window(r: &mut ServerRig, st: StreamId, n: u64, latency: u64) {
    let t0 = r.now;
    for id in 1..=n {
        r.request(st, id, b"w");
    }
    assert_eq!(request_ids(&r.events()).len() as u64, n, "all admitted");
    r.now = t0 + Duration::from_millis(latency);
    for id in 1..=n {
        r.s.respond(st, id, Ok(Bytes::new()), r.now);
    }
    r.sent();
}

#[test]
fn admission_limit_follows_latency_and_demand_on_its_tick() {
    let mut r = ServerRig::new(
        ServerConfig::default()
            .with_max_concurrent_conns(200)
            .with_min_concurrent_conns(100)
            .with_max_concurrent_limit(240),
    );
    let st = r.inbound("a");
    assert_eq!(r.s.poll_timeout(), Some(ms(1000)));
    assert_eq!(r.s.metrics().admission_limit, 200);
    assert_eq!(r.s.metrics().latency_baseline, None);
    // Idle tick: nothing moves.
    r.advance(ms(1000));
    assert_eq!(r.s.admission_limit(), 200);
    assert_eq!(r.s.poll_timeout(), Some(ms(2000)));
    // Light load, 20 ms per request: the limit holds, the baseline is learnt.
    served_window(&mut r, st, 10, 20);
    r.advance(ms(1999));
    assert_eq!(r.s.admission_limit(), 200);
    r.advance(ms(2000));
    assert_eq!(r.s.admission_limit(), 200);
    assert_eq!(
        r.s.metrics().latency_baseline,
        Some(Duration::from_millis(20))
    );
    // Demand fills the limit, latency healthy: + sqrt(200) = 14.
    served_window(&mut r, st, 200, 20);
    r.advance(ms(3000));
    assert_eq!(r.s.admission_limit(), 214);
    assert_eq!(r.s.metrics().admission_limit, 214);
    // Requests now take 60 ms against 30 ms allowed: the gradient halves
    // the limit, the 10 % cap makes it 214 - 21.
    served_window(&mut r, st, 214, 60);
    r.advance(ms(4000));
    assert_eq!(r.s.admission_limit(), 193);
    // Still slow: shrinks by at most 10 % a tick, never below the minimum.
    let mut t = 4000;
    let mut last = 193;
    for _ in 0..10 {
        served_window(&mut r, st, last as u64, 60);
        t += 1000;
        r.advance(ms(t));
        let l = r.s.admission_limit();
        assert!(
            l >= 100 && l <= last && last - l <= last / 10,
            "{last} -> {l}"
        );
        last = l;
    }
    assert_eq!(last, 100);
    // Fast again under full demand: grows back, up to the maximum.
    let mut seen = Vec::new();
    for _ in 0..12 {
        let limit = r.s.admission_limit() as u64;
        served_window(&mut r, st, limit, 20);
        t += 1000;
        r.advance(ms(t));
        seen.push(r.s.admission_limit());
    }
    assert_eq!(seen[..3], [110, 120, 130]);
    assert_eq!(*seen.last().unwrap(), 240);
    assert!(seen.windows(2).all(|w| w[0] <= w[1] && w[1] <= 240));
    assert_eq!(r.s.admission_limit_range(), (100, 240));
    // Light load again: it stays where it is.
    for _ in 0..5 {
        served_window(&mut r, st, 20, 20);
        t += 1000;
        r.advance(ms(t));
    }
    assert_eq!(r.s.admission_limit(), 240);
}

#[test]
fn handler_error_becomes_an_error_frame() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.request(st, 9, b"q");
    r.events();
    r.s.respond(st, 9, Err("no such key".into()), r.now);
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.request_id, 9);
    assert_eq!(
        error_of(&sent[0].1),
        (ErrorCode::Handler, "no such key".into())
    );
    assert_eq!(r.s.metrics().failed, 1);
    assert_eq!(r.s.active(), 0);
}

#[test]
fn response_over_the_block_size_becomes_an_oversize_frame() {
    let mut r = ServerRig::new(ServerConfig::default().with_max_block_size(1024));
    let st = r.inbound("a");
    r.request(st, 3, b"q");
    r.events();
    r.s.respond(st, 3, Ok(Bytes::from(vec![0u8; 1025])), r.now);
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    let (code, msg) = error_of(&sent[0].1);
    assert_eq!(code, ErrorCode::Oversize);
    assert!(msg.ends_with("1024 bytes"), "{msg}");
    // At the limit is sent.
    r.request(st, 4, b"q");
    r.events();
    r.s.respond(st, 4, Ok(Bytes::from(vec![0u8; 1024])), r.now);
    let sent = r.sent();
    assert_eq!(sent[0].1.kind, FrameKind::Response);
    assert_eq!(sent[0].1.body.len(), 1024);
}

#[test]
fn shutdown_answers_in_flight_refuses_new_and_stops_once() {
    let mut r = ServerRig::new(ServerConfig::default());
    let a = r.inbound("a");
    r.request(a, 1, b"one");
    r.request(a, 2, b"two");
    assert_eq!(request_ids(&r.events()), vec![1, 2]);
    r.s.shutdown(ms(10_000), r.now);
    assert!(r.s.is_shutting_down());
    assert!(r.events().is_empty());
    // New requests, on old or new streams, are refused with ShuttingDown.
    r.request(a, 3, b"three");
    let b = r.inbound("b");
    r.request(b, 1, b"other");
    assert!(r.events().is_empty());
    let sent = r.sent();
    assert_eq!(sent.len(), 2);
    for (_, m) in &sent {
        assert_eq!(error_of(m).0, ErrorCode::ShuttingDown);
    }
    assert_eq!((sent[0].0, sent[0].1.request_id), (a, 3));
    assert_eq!((sent[1].0, sent[1].1.request_id), (b, 1));
    // In-flight requests are still answered; Stopped after the last one.
    r.s.respond(a, 1, Ok(Bytes::from_static(b"r1")), r.now);
    assert!(r.events().is_empty());
    r.s.respond(a, 2, Ok(Bytes::from_static(b"r2")), r.now);
    assert_eq!(r.events(), vec![ServerEvent::Stopped]);
    let sent = r.sent();
    let kinds: Vec<_> = sent.iter().map(|(_, m)| (m.kind, m.request_id)).collect();
    assert_eq!(
        kinds,
        vec![(FrameKind::Response, 1), (FrameKind::Response, 2)]
    );
    assert_eq!(
        r.s.handle_inbound_stream(key("c"), proto(), r.now),
        Err(ServerError::ShuttingDown)
    );
    assert_eq!(
        r.s.register(Protocol::from("/x/1")),
        Err(ServerError::ShuttingDown)
    );
    r.advance(ms(20_000));
    assert!(
        !r.events().contains(&ServerEvent::Stopped),
        "Stopped only once"
    );
}

#[test]
fn shutdown_deadline_abandons_the_rest() {
    let mut r = ServerRig::new(ServerConfig::default());
    let a = r.inbound("a");
    r.request(a, 1, b"one");
    r.request(a, 2, b"two");
    r.events();
    r.s.shutdown(ms(5000), r.now);
    r.advance(ms(4999));
    assert!(r.events().is_empty());
    r.advance(ms(5000));
    assert_eq!(
        r.events(),
        vec![
            ServerEvent::Cancel {
                stream: a,
                request_id: 1
            },
            ServerEvent::Cancel {
                stream: a,
                request_id: 2
            },
            ServerEvent::Stopped,
        ]
    );
    let sent = r.sent();
    let got: Vec<_> = sent
        .iter()
        .map(|(_, m)| (error_of(m).0, m.request_id))
        .collect();
    assert_eq!(
        got,
        vec![(ErrorCode::ShuttingDown, 1), (ErrorCode::ShuttingDown, 2)]
    );
    assert_eq!(r.s.active(), 0);
    // The handler's late answer goes nowhere.
    r.s.respond(a, 1, Ok(Bytes::from_static(b"late")), r.now);
    assert!(r.sent().is_empty());
    assert!(r.events().is_empty());
}

#[test]
fn slowloris_is_reset_at_read_timeout_after_the_first_byte() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("slow");
    let req = request_frame(1, b"hello");
    r.now = ms(1000);
    r.feed(st, &req[..5]);
    r.now = ms(20_000);
    r.feed(st, &req[5..9]);
    let deadline = ms(1000) + secs(30);
    r.advance(deadline - NS);
    assert!(r.events().is_empty());
    r.advance(deadline);
    assert_eq!(
        r.events(),
        vec![ServerEvent::CloseStream {
            stream: st,
            reset: true
        }]
    );
    assert!(r.s.connections(r.now).is_empty());
}

#[test]
fn steady_pipelined_traffic_is_not_a_slow_read() {
    // Each read ends mid-frame, but every read also completes a request.
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("busy");
    let mut wire = Vec::new();
    for id in 1..=8 {
        wire.extend_from_slice(&request_frame(id, b"pipelined request"));
    }
    let step = 30; // bytes per read: never a frame boundary
    let mut t = 0;
    for chunk in wire.chunks(step) {
        t += 10_000; // 10 s between reads
        r.advance(ms(t));
        r.feed(st, chunk);
        let ev = r.events();
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ServerEvent::CloseStream { .. })),
            "reset at {t} ms though requests keep completing"
        );
        for e in ev {
            if let ServerEvent::Request { request_id, .. } = e {
                r.s.respond(st, request_id, Ok(Bytes::new()), r.now);
            }
        }
        r.sent();
    }
    assert_eq!(r.s.metrics().requests, 8);
}

#[test]
fn idle_stream_is_closed_after_the_cleanup_interval() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.now = ms(1000);
    r.request(st, 1, b"q");
    r.events();
    r.now = ms(2000);
    r.s.respond(st, 1, Ok(Bytes::from_static(b"r")), r.now);
    r.sent();
    let idle_at = ms(2000) + secs(300);
    r.advance(idle_at - NS);
    assert!(r.events().is_empty());
    r.advance(idle_at);
    assert_eq!(
        r.events(),
        vec![ServerEvent::CloseStream {
            stream: st,
            reset: false
        }]
    );
}

#[test]
fn garbage_gets_a_protocol_error_then_the_stream_closes() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.feed(st, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.events().is_empty(), "closed only once the answer is out");
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.request_id, 0);
    assert_eq!(error_of(&sent[0].1).0, ErrorCode::Protocol);
    assert_eq!(
        r.events(),
        vec![ServerEvent::CloseStream {
            stream: st,
            reset: false
        }]
    );
    assert_eq!(r.s.metrics().protocol_errors, 1);
    r.request(st, 1, b"q");
    assert!(r.events().is_empty() && r.sent().is_empty());
}

#[test]
fn allow_list_forbids_other_peers() {
    let mut r = ServerRig::new(ServerConfig::default());
    r.s.set_allow_list(proto(), Some(BTreeSet::from([key("alice")])));
    let bob = r.inbound("bob");
    r.request(bob, 1, b"q");
    assert!(r.events().is_empty());
    let sent = r.sent();
    assert_eq!(error_of(&sent[0].1).0, ErrorCode::Forbidden);
    let alice = r.inbound("alice");
    r.request(alice, 1, b"q");
    assert_eq!(request_ids(&r.events()), vec![1]);
    r.s.respond(alice, 1, Ok(Bytes::from_static(b"hi")), r.now);
    let sent = r.sent();
    assert_eq!((sent[0].0, sent[0].1.kind), (alice, FrameKind::Response));
    assert_eq!(sent[0].1.body, Bytes::from_static(b"hi"));
    // Lifting the list lets bob in on new streams.
    r.s.set_allow_list(proto(), None);
    let bob2 = r.inbound("bob");
    r.request(bob2, 1, b"q");
    assert_eq!(request_ids(&r.events()), vec![1]);
}

#[test]
fn per_peer_stream_cap() {
    let mut r = ServerRig::new(ServerConfig::default().with_max_streams_per_peer(2));
    let a1 = r.inbound("a");
    r.inbound("a");
    assert_eq!(
        r.s.handle_inbound_stream(key("a"), proto(), r.now),
        Err(ServerError::TooManyStreams { open: 2, limit: 2 })
    );
    r.inbound("b");
    r.s.handle_stream_reset(a1, r.now);
    r.inbound("a");
    assert_eq!(r.s.metrics().streams_refused, 1);
}

#[test]
fn respond_after_reset_is_dropped_but_frees_the_slot() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.request(st, 1, b"q");
    r.events();
    assert_eq!(r.s.active(), 1);
    r.s.handle_stream_reset(st, r.now);
    assert_eq!(r.s.active(), 1, "the handler still runs");
    r.s.respond(st, 1, Ok(Bytes::from_static(b"r")), r.now);
    assert!(r.events().is_empty());
    assert!(r.sent().is_empty());
    assert_eq!(r.s.active(), 0);
    assert_eq!(r.s.metrics().active, 0);
}

#[test]
fn client_cancel_is_reported_and_the_answer_dropped() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.request(st, 5, b"q");
    r.events();
    r.feed(st, &cancel_frame(5));
    assert_eq!(
        r.events(),
        vec![ServerEvent::Cancel {
            stream: st,
            request_id: 5
        }]
    );
    r.feed(st, &cancel_frame(5));
    assert!(r.events().is_empty(), "one Cancel event per request");
    r.s.respond(st, 5, Ok(Bytes::from_static(b"r")), r.now);
    assert!(r.sent().is_empty());
    assert_eq!(r.s.active(), 0);
    // The stream is still usable.
    r.request(st, 6, b"q");
    assert_eq!(request_ids(&r.events()), vec![6]);
}

#[test]
fn remote_close_waits_for_answers_then_closes() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.request(st, 1, b"q");
    r.request(st, 2, b"q");
    r.events();
    r.feed(st, &cancel_frame(2));
    r.events();
    r.s.handle_stream_closed(st, r.now);
    assert!(r.events().is_empty());
    r.s.respond(st, 1, Ok(Bytes::from_static(b"r")), r.now);
    assert_eq!(r.sent().len(), 1);
    assert!(r.events().is_empty(), "request 2 is still being handled");
    // The last answer is dropped (cancelled): nothing to write, close now.
    r.s.respond(st, 2, Ok(Bytes::from_static(b"r")), r.now);
    assert!(r.sent().is_empty());
    assert_eq!(
        r.events(),
        vec![ServerEvent::CloseStream {
            stream: st,
            reset: false
        }]
    );
    assert_eq!(r.s.connections(r.now).len(), 0);
}

#[test]
fn shutdown_deadline_closes_a_remote_closed_stream_with_nothing_to_write() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    r.request(st, 1, b"q");
    r.feed(st, &cancel_frame(1));
    r.s.handle_stream_closed(st, r.now);
    r.events();
    r.s.shutdown(ms(1000), r.now);
    r.advance(ms(1000));
    let ev = r.events();
    assert!(
        ev.contains(&ServerEvent::CloseStream {
            stream: st,
            reset: false
        }),
        "{ev:?}"
    );
    assert_eq!(ev.last(), Some(&ServerEvent::Stopped));
    assert!(r.sent().is_empty());
    assert!(r.s.connections(r.now).is_empty());
}

#[test]
fn stream_ids_are_not_reused() {
    let mut r = ServerRig::new(ServerConfig::default());
    let a: StreamId = r.inbound("a");
    r.s.handle_stream_reset(a, r.now);
    let b = r.inbound("a");
    assert_ne!(a, b);
}

#[test]
fn a_peer_that_does_not_read_answers_is_not_read_either() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("a");
    assert!(r.s.wants_data(st));
    // Answers pile up: the adapter hands them out but the peer reads
    // nothing, so nothing is reported flushed.
    let big = noise(200 * 1024, 3);
    for id in 1..=4 {
        r.request(st, id, b"give");
        r.s.respond(st, id, Ok(big.clone()), r.now);
        while r.s.poll_transmit().is_some() {}
    }
    let _ = r.events();
    assert!(
        !r.s.wants_data(st),
        "800 KiB of answers waiting: stop reading"
    );
    // Once the peer reads (the adapter's writes complete), reading resumes.
    r.s.handle_flushed(st, 1024 * 1024, r.now);
    while r.s.poll_transmit().is_some() {}
    r.s.handle_flushed(st, 1024 * 1024, r.now);
    assert!(r.s.wants_data(st));
    assert!(r.s.wants_data(StreamId(999)), "unknown streams read on");
}
