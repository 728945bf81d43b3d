//! Harness entry points: feed arbitrary bytes to the core's parsers and
//! state machines and check their invariants.
//!
//! The cargo-fuzz targets in `pointsub-proto/fuzz` and the property tests
//! in `tests/fuzz_props.rs` call the same functions, so a crash libFuzzer
//! finds is replayed by `cargo test` once its input is added to the
//! regression list. Each function panics (with a message) only when an
//! invariant breaks; hostile input alone must never make it panic.

use bytes::Bytes;

use crate::compress;
use crate::frame::{Decoded, MessageDecoder};
use crate::{Instant, PeerKey, Protocol, Server, ServerConfig, ServerEvent};

/// Largest message the harnesses accept: small, so bounds are reached.
pub const LIMIT: usize = 64 * 1024;

/// Splits `data` into pieces whose sizes come from the data itself, so
/// the fuzzer explores every way a byte stream can be cut by the network.
fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (cuts, rest) = data.split_at(data.len().min(8));
    let mut rest = rest;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = 1 + cuts.get(i % cuts.len().max(1)).copied().unwrap_or(255) as usize * 4;
        i += 1;
        let (head, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        Some(head)
    })
}

/// The message decoder on arbitrary bytes, cut arbitrarily: it yields
/// messages within the limit, oversize notices, or one sticky error, and
/// its buffer stays bounded.
pub fn decode_messages(data: &[u8]) {
    let mut decoder = MessageDecoder::new(LIMIT);
    let mut pushed = 0usize;
    for piece in pieces(data) {
        decoder.push(piece);
        pushed += piece.len();
        loop {
            match decoder.next() {
                Ok(Some(Decoded::Message(m))) => {
                    assert!(m.body.len() <= LIMIT, "message over the limit");
                }
                Ok(Some(Decoded::Oversize { limit, .. })) => assert_eq!(limit, LIMIT),
                Ok(None) => break,
                Err(e) => {
                    // Sticky: the same error again, and nothing else.
                    assert_eq!(decoder.next().err(), Some(e));
                    return;
                }
            }
        }
        // Drained: at most one incomplete frame stays buffered.
        assert!(
            decoder.buffered() <= pushed.min(crate::frame::HEADER_LEN + LIMIT),
            "decoder holds {} bytes after {pushed} pushed",
            decoder.buffered()
        );
    }
}

/// The inflater on arbitrary bytes: an error or a body within the limit,
/// never more.
pub fn decompress(data: &[u8]) {
    if let Ok(body) = compress::decompress(data, LIMIT) {
        assert!(body.len() <= LIMIT, "inflated past the limit");
    }
}

/// A server core fed arbitrary bytes on a few inbound streams (the first
/// byte of each piece picks the stream, some pieces end or reset it),
/// answering every request: it never panics, answers each request at most
/// once, and keeps its own books straight.
pub fn server_inbound(data: &[u8]) {
    let config = ServerConfig::default()
        .with_max_block_size(LIMIT)
        .with_max_concurrent_conns(4)
        .with_min_concurrent_conns(2)
        .with_max_concurrent_limit(8)
        .with_max_per_peer(4)
        .with_max_streams_per_peer(3);
    let Ok(mut server) = Server::new(config) else {
        panic!("harness config is valid");
    };
    let protocol = Protocol::from("/fuzz/1");
    if server.register(protocol.clone()).is_err() {
        panic!("first registration succeeds");
    }
    let peers = [PeerKey::from(&b"a"[..]), PeerKey::from(&b"b"[..])];
    let mut streams = Vec::new();
    let mut now = Instant::ZERO;
    let mut pending = std::collections::BTreeSet::new();
    for (n, piece) in pieces(data).enumerate() {
        now = now + std::time::Duration::from_millis(u64::from(piece[0] % 16) * 100);
        let pick = usize::from(piece[0]);
        match pick % 16 {
            0 => {
                let peer = peers[pick / 16 % 2].clone();
                if let Ok(id) = server.handle_inbound_stream(peer, protocol.clone(), now) {
                    streams.push(id);
                }
            }
            1 if !streams.is_empty() => {
                let id = streams.swap_remove(pick / 16 % streams.len());
                server.handle_stream_closed(id, now);
            }
            2 if !streams.is_empty() => {
                let id = streams.swap_remove(pick / 16 % streams.len());
                server.handle_stream_reset(id, now);
            }
            3 if n % 5 == 0 => server.shutdown(now + std::time::Duration::from_secs(1), now),
            _ => {
                if streams.is_empty()
                    && let Ok(id) =
                        server.handle_inbound_stream(peers[0].clone(), protocol.clone(), now)
                {
                    streams.push(id);
                }
                if let Some(&id) = streams.get(pick % streams.len().max(1)) {
                    server.handle_data(id, &piece[1..], now);
                }
            }
        }
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        let mut answer = Vec::new();
        while let Some(event) = server.poll_event() {
            match event {
                ServerEvent::Request {
                    stream,
                    request_id,
                    body,
                    ..
                } => {
                    assert!(body.len() <= LIMIT, "request body over the limit");
                    assert!(
                        pending.insert((stream, request_id)),
                        "request announced twice"
                    );
                    answer.push((stream, request_id, body));
                }
                ServerEvent::CloseStream { stream, .. } => streams.retain(|s| *s != stream),
                _ => {}
            }
        }
        // Answer half at once (echo or error), keep the rest for later.
        for (i, (stream, id, body)) in answer.into_iter().enumerate() {
            if i % 2 == 0 {
                let result = if body.first() == Some(&0) {
                    Err("handler says no".to_owned())
                } else {
                    Ok::<Bytes, String>(body)
                };
                server.respond(stream, id, result, now);
                pending.remove(&(stream, id));
            }
        }
        while server.poll_transmit().is_some() {}
        let active = server.active();
        assert!(
            active <= pending.len(),
            "core counts {active} active, {} unanswered",
            pending.len()
        );
    }
    // Answer everything left; the books must then be empty.
    for (stream, id) in std::mem::take(&mut pending) {
        server.respond(stream, id, Ok(Bytes::new()), now);
    }
    while server.poll_event().is_some() {}
    while server.poll_transmit().is_some() {}
    assert_eq!(
        server.active(),
        0,
        "requests still counted after every answer"
    );
}
