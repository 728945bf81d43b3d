//! Inflating outside the core (`defer_inflate`): what the adapters do so
//! that a large deflated body is never inflated under their lock. The core
//! hands the body out, waits for the result, and still decides every
//! outcome: the request, or a typed error, exactly once.

mod common;

use bytes::Bytes;
use common::*;
use pointsub_proto::compress::{self, DecompressError};
use pointsub_proto::frame::{ErrorCode, Flags, FrameKind};
use pointsub_proto::{
    ClientConfig, ClientEvent, RequestError, RequestId, Response, ServerConfig, ServerEvent,
    StreamId,
};
use std::time::Duration;

/// A compressed frame of `kind` carrying `body` deflated.
fn deflated_frame(kind: FrameKind, id: u64, body: &[u8]) -> Bytes {
    let c = compress::compress(body, 0).expect("compressible");
    frame(kind, id, Flags::ACCEPT_DEFLATE.with(Flags::COMPRESSED), &c)
}

fn server() -> ServerRig {
    let mut r = ServerRig::new(ServerConfig::default());
    r.s.defer_inflate(true);
    r
}

/// The `Inflate` event of a server rig, as (stream, id, body, limit).
fn server_inflate(events: &[ServerEvent]) -> Vec<(StreamId, u64, Bytes, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Inflate {
                stream,
                request_id,
                body,
                limit,
            } => Some((*stream, *request_id, body.clone(), *limit)),
            _ => None,
        })
        .collect()
}

fn server_requests(events: &[ServerEvent]) -> Vec<(StreamId, u64, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Request {
                stream,
                request_id,
                body,
                ..
            } => Some((*stream, *request_id, body.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn server_hands_a_deflated_request_out_then_runs_its_handler() {
    let mut r = server();
    let st = r.inbound("client");
    let big = pattern(200 * 1024);
    r.feed(st, &deflated_frame(FrameKind::Request, 1, &big));
    let ev = r.events();
    assert!(
        server_requests(&ev).is_empty(),
        "no handler before inflating"
    );
    let inflate = server_inflate(&ev);
    assert_eq!(inflate.len(), 1);
    let (s, id, body, limit) = inflate[0].clone();
    assert!(body.len() < big.len() / 10, "handed out as it travelled");
    assert_eq!(limit, ServerConfig::default().max_block_size);
    assert_eq!(r.s.active(), 1, "admitted before inflating");
    // An answer before the Request was emitted is not taken.
    r.s.respond(s, id, Ok(Bytes::from_static(b"early")), r.now);
    assert!(r.sent().is_empty());
    r.s.handle_inflated(s, id, compress::decompress(&body, limit), r.now);
    let ev = r.events();
    assert_eq!(server_requests(&ev), vec![(st, 1, big)]);
    r.s.respond(st, 1, Ok(Bytes::from_static(b"done")), r.now);
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.kind, FrameKind::Response);
    assert_eq!(&sent[0].1.body[..], b"done");
    assert_eq!(r.s.active(), 0);
}

#[test]
fn server_answers_oversize_when_the_body_inflates_past_the_limit() {
    let mut r = ServerRig::new(ServerConfig::default().with_max_block_size(64 * 1024));
    r.s.defer_inflate(true);
    let st = r.inbound("client");
    // 1 MiB of pattern deflates to a few KiB: fits on the wire, not inflated.
    r.feed(
        st,
        &deflated_frame(FrameKind::Request, 7, &pattern(1 << 20)),
    );
    let (s, id, body, limit) = server_inflate(&r.events())[0].clone();
    assert_eq!(limit, 64 * 1024);
    let result = compress::decompress(&body, limit);
    assert_eq!(result, Err(DecompressError::TooLarge { limit }));
    r.s.handle_inflated(s, id, result, r.now);
    assert!(server_requests(&r.events()).is_empty());
    let sent = r.sent();
    assert_eq!(error_of(&sent[0].1).0, ErrorCode::Oversize);
    assert_eq!(r.s.active(), 0, "the admission slot is free");
    assert_eq!(r.s.stats().protocol(PROTO).unwrap().outcome("oversize"), 1);
    // The stream carries on.
    r.request(st, 8, b"next");
    assert_eq!(
        server_requests(&r.events()),
        vec![(st, 8, Bytes::from_static(b"next"))]
    );
}

#[test]
fn server_closes_the_stream_on_a_corrupt_body() {
    let mut r = server();
    let st = r.inbound("client");
    let junk = frame(
        FrameKind::Request,
        3,
        Flags::ACCEPT_DEFLATE.with(Flags::COMPRESSED),
        &[0xff; 64],
    );
    r.feed(st, &junk);
    let (s, id, body, limit) = server_inflate(&r.events())[0].clone();
    let result = compress::decompress(&body, limit);
    assert!(matches!(result, Err(DecompressError::Corrupt(_))));
    r.s.handle_inflated(s, id, result, r.now);
    let sent = r.sent();
    assert_eq!(error_of(&sent[0].1).0, ErrorCode::Protocol);
    let ev = r.events();
    assert!(
        ev.contains(&ServerEvent::CloseStream {
            stream: st,
            reset: false
        }),
        "{ev:?}"
    );
    assert_eq!(r.s.active(), 0);
    assert_eq!(r.s.metrics().protocol_errors, 1);
}

#[test]
fn server_drops_a_request_cancelled_while_it_inflates() {
    let mut r = server();
    let st = r.inbound("client");
    r.feed(st, &deflated_frame(FrameKind::Request, 5, &pattern(8192)));
    let (s, id, body, limit) = server_inflate(&r.events())[0].clone();
    r.feed(st, &frame(FrameKind::Cancel, 5, Flags::empty(), &[]));
    assert!(
        r.events().is_empty(),
        "no handler runs yet: nothing to tell about the cancel"
    );
    r.s.handle_inflated(s, id, compress::decompress(&body, limit), r.now);
    assert!(server_requests(&r.events()).is_empty());
    assert!(r.sent().is_empty(), "no answer for a cancelled request");
    assert_eq!(r.s.active(), 0);
    // A late second report changes nothing.
    r.s.handle_inflated(s, id, compress::decompress(&body, limit), r.now);
    assert!(r.events().is_empty());
}

#[test]
fn server_without_deferral_inflates_itself() {
    let mut r = ServerRig::new(ServerConfig::default());
    let st = r.inbound("client");
    let big = pattern(50 * 1024);
    r.feed(st, &deflated_frame(FrameKind::Request, 1, &big));
    let ev = r.events();
    assert!(server_inflate(&ev).is_empty());
    assert_eq!(server_requests(&ev), vec![(st, 1, big)]);
}

/// A client rig that defers inflating, with one request sent and its
/// stream open; returns the rig, the request, its stream and wire id.
fn client_with_request(cfg: ClientConfig) -> (ClientRig, RequestId, StreamId, u64) {
    let mut r = ClientRig::new(cfg);
    r.c.defer_inflate(true);
    let id =
        r.c.send(key("srv"), proto(), Bytes::from_static(b"q"), r.now)
            .unwrap();
    let stream = opened(&r.events())[0].0;
    r.open(stream);
    let sent = r.sent();
    let wire = sent[0].1.request_id;
    (r, id, stream, wire)
}

fn client_inflate(
    events: &[ClientEvent],
) -> Vec<(RequestId, pointsub_proto::PeerKey, Bytes, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Inflate {
                id,
                peer,
                body,
                limit,
            } => Some((*id, peer.clone(), body.clone(), *limit)),
            _ => None,
        })
        .collect()
}

/// The error of the one request that ended since the last look.
fn only_error(r: &mut ClientRig) -> RequestError {
    let ev = r.events();
    match completions(&ev)[..] {
        [ClientEvent::Completed { result: Err(e), .. }] => e.clone(),
        ref other => panic!("expected one failed request, got {other:?}"),
    }
}

#[test]
fn client_hands_a_deflated_response_out_then_completes() {
    let (mut r, id, stream, wire) = client_with_request(ClientConfig::default());
    let big = pattern(300 * 1024);
    r.feed(stream, &deflated_frame(FrameKind::Response, wire, &big));
    let ev = r.events();
    assert!(completions(&ev).is_empty(), "no outcome before inflating");
    let (rid, peer, body, limit) = client_inflate(&ev)[0].clone();
    assert_eq!((rid, &peer), (id, &key("srv")));
    assert_eq!(r.c.in_flight(), 1);
    r.c.handle_inflated(id, peer.clone(), compress::decompress(&body, limit), r.now);
    let ev = r.events();
    assert_eq!(
        completions(&ev),
        vec![&ClientEvent::Completed {
            id,
            result: Ok(Response { body: big, peer }),
            attempts: 1
        }]
    );
    assert_eq!(r.c.in_flight(), 0);
}

#[test]
fn client_ends_with_oversize_or_protocol_when_the_body_does_not_inflate() {
    let cfg = ClientConfig::default().with_max_block_size(64 * 1024);
    let (mut r, id, stream, wire) = client_with_request(cfg.clone());
    r.feed(
        stream,
        &deflated_frame(FrameKind::Response, wire, &pattern(1 << 20)),
    );
    let (_, peer, body, limit) = client_inflate(&r.events())[0].clone();
    r.c.handle_inflated(id, peer, compress::decompress(&body, limit), r.now);
    assert!(
        matches!(
            only_error(&mut r),
            RequestError::Oversize { limit: 65536, .. }
        ),
        "too large"
    );

    let (mut r, id, stream, wire) = client_with_request(cfg);
    let junk = frame(
        FrameKind::Response,
        wire,
        Flags::ACCEPT_DEFLATE.with(Flags::COMPRESSED),
        &[0xff; 64],
    );
    r.feed(stream, &junk);
    let (_, peer, body, limit) = client_inflate(&r.events())[0].clone();
    r.c.handle_inflated(id, peer, compress::decompress(&body, limit), r.now);
    assert!(
        matches!(only_error(&mut r), RequestError::Protocol(_)),
        "corrupt"
    );
}

#[test]
fn client_request_that_times_out_while_inflating_ends_once() {
    let cfg = ClientConfig::default();
    let mut r = ClientRig::new(cfg);
    r.c.defer_inflate(true);
    let deadline = r.now + Duration::from_secs(2);
    let id =
        r.c.send_with(
            key("srv"),
            proto(),
            Bytes::from_static(b"q"),
            pointsub_proto::SendOptions::default().with_deadline(deadline),
            r.now,
        )
        .unwrap();
    let stream = opened(&r.events())[0].0;
    r.open(stream);
    let wire = r.sent()[0].1.request_id;
    r.feed(
        stream,
        &deflated_frame(FrameKind::Response, wire, &pattern(4096)),
    );
    let (_, peer, body, limit) = client_inflate(&r.events())[0].clone();
    r.advance(deadline);
    let ev = r.events();
    assert!(
        matches!(
            completions(&ev)[..],
            [ClientEvent::Completed {
                result: Err(RequestError::Timeout),
                ..
            }]
        ),
        "{ev:?}"
    );
    // The inflated body comes too late: no second outcome.
    r.c.handle_inflated(id, peer, compress::decompress(&body, limit), r.now);
    assert!(completions(&r.events()).is_empty());
    // Cancelling it now is refused: it has ended.
    assert!(!r.c.cancel(id, r.now));
}
