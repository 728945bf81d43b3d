//! The cores' statistics (`Client::stats`, `Server::stats`) under real
//! traffic between a client core and a server core: outcomes, histograms,
//! body against wire bytes, cancellations and the slow alarm, counted
//! where the cores make their decisions.

mod common;

use bytes::Bytes;
use common::*;
use pointsub_proto::stats::OK;
use pointsub_proto::{ClientConfig, ClientEvent, ServerConfig, ServerEvent};
use std::time::Duration;

fn compressible(n: usize) -> Bytes {
    Bytes::from(b"pointsub stats ".repeat(n / 15 + 1)[..n].to_vec())
}

#[test]
fn both_sides_count_the_same_exchange() {
    let mut net = Net::new(ClientConfig::default(), ServerConfig::default());
    let server = key("server");
    for _ in 0..3 {
        let now = net.now;
        net.client
            .send(server.clone(), proto(), compressible(4096), now)
            .unwrap();
    }
    net.pump();
    net.echo_all();
    let now = net.now;
    net.client
        .send(server.clone(), proto(), Bytes::from_static(b"x"), now)
        .unwrap();
    net.pump();
    for (s, id, _) in net.take_requests() {
        net.server.respond(s, id, Err("boom".into()), now);
    }
    net.pump();

    let label = proto();
    let label = label.as_str();
    let c = net.client.stats();
    let cp = c.protocol(label).expect("client saw the protocol");
    assert_eq!(cp.outcome(OK), 3);
    assert_eq!(cp.outcome("handler"), 1);
    assert_eq!(cp.latency.count(), 4);
    assert_eq!(cp.in_flight, 0);
    assert_eq!(cp.body_bytes_sent, 3 * 4096 + 1);
    assert_eq!(cp.body_bytes_received, 3 * 4096);
    assert!(cp.wire_bytes_sent < cp.body_bytes_sent / 4, "{cp:?}");
    assert_eq!(c.pool_open, 1);
    assert_eq!(c.pool_idle, 1);

    let s = net.server.stats();
    let sp = s.protocol(label).expect("server saw the protocol");
    assert_eq!(sp.outcome(OK), 3);
    assert_eq!(sp.outcome("handler"), 1);
    assert_eq!(sp.latency.count(), 4);
    assert_eq!(sp.body_bytes_received, cp.body_bytes_sent);
    assert_eq!(sp.body_bytes_sent, cp.body_bytes_received);
    // What one side wrote is what the other read.
    assert_eq!(sp.wire_bytes_received, cp.wire_bytes_sent);
    assert_eq!(sp.wire_bytes_sent, cp.wire_bytes_received);
    assert_eq!(s.streams_open, 1);
    assert!(s.admission_limit > 0);
}

#[test]
fn cancellations_are_counted_on_both_sides() {
    let mut net = Net::new(ClientConfig::default(), ServerConfig::default());
    let now = net.now;
    let id = net
        .client
        .send(key("server"), proto(), Bytes::from_static(b"c"), now)
        .unwrap();
    net.pump();
    let pending = net.take_requests();
    assert_eq!(pending.len(), 1);
    assert!(net.client.cancel(id, now));
    net.pump();
    assert!(
        net.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Cancel { .. })),
        "{:?}",
        net.server_events
    );
    // The handler answers anyway; the answer is dropped.
    for (s, rid, body) in pending {
        net.server.respond(s, rid, Ok(body), now);
    }
    net.pump();
    let label = proto();
    let c = net.client.stats();
    let cp = c.protocol(label.as_str()).expect("seen");
    assert_eq!((cp.outcome("cancelled"), cp.cancelled), (1, 1));
    let s = net.server.stats();
    let sp = s.protocol(label.as_str()).expect("seen");
    assert_eq!((sp.outcome("cancelled"), sp.cancelled), (1, 1));
    assert_eq!(sp.latency.count(), 1);
    assert_eq!(sp.body_bytes_sent, 0, "a dropped answer sends no body");
}

#[test]
fn a_slow_handler_is_reported_once_when_it_crosses_the_threshold() {
    let mut net = Net::new(
        ClientConfig::default().with_slow_request_threshold(Duration::from_millis(150)),
        ServerConfig::default().with_slow_handler_threshold(Duration::from_millis(100)),
    );
    let now = net.now;
    let id = net
        .client
        .send(key("server"), proto(), Bytes::from_static(b"s"), now)
        .unwrap();
    net.pump();
    let pending = net.take_requests();
    assert_eq!(net.server.poll_timeout(), Some(ms(100)));
    let slow = |net: &Net| {
        net.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::SlowHandler {
                    peer,
                    protocol,
                    elapsed,
                    suppressed,
                    ..
                } => Some((peer.clone(), protocol.clone(), *elapsed, *suppressed)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for t in [99, 100, 120, 150, 400] {
        net.now = ms(t);
        net.server.handle_timeout(net.now);
        net.client.handle_timeout(net.now);
        net.pump();
        let expected = usize::from(t >= 100);
        assert_eq!(slow(&net).len(), expected, "at {t} ms");
    }
    let (peer, protocol, elapsed, suppressed) = slow(&net).remove(0);
    assert_eq!(peer, key("client"));
    assert_eq!(protocol, proto());
    assert_eq!(elapsed, Duration::from_millis(100), "reported when crossed");
    assert_eq!(suppressed, 0);
    let client_slow: Vec<&ClientEvent> = net
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::SlowRequest { .. }))
        .collect();
    match client_slow.as_slice() {
        [
            ClientEvent::SlowRequest {
                id: rid,
                peer,
                elapsed,
                ..
            },
        ] => {
            assert_eq!(*rid, id);
            assert_eq!(peer.as_ref(), Some(&key("server")));
            assert_eq!(*elapsed, Duration::from_millis(150));
        }
        other => panic!("expected one SlowRequest, got {other:?}"),
    }
    for (s, rid, body) in pending {
        let now = net.now;
        net.server.respond(s, rid, Ok(body), now);
    }
    net.pump();
    let label = proto();
    let sp = net.server.stats();
    let sp = sp.protocol(label.as_str()).expect("seen").clone();
    assert_eq!((sp.slow, sp.outcome(OK)), (1, 1));
    let cp = net.client.stats();
    let cp = cp.protocol(label.as_str()).expect("seen").clone();
    assert_eq!((cp.slow, cp.outcome(OK)), (1, 1));
    assert_eq!(cp.latency.sum(), Duration::from_millis(400));
    assert!(
        net.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Completed { result: Ok(_), .. })),
        "the slow request still completes"
    );
}
