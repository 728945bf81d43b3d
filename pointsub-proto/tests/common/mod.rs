//! Helpers for driving the client and server cores by hand, on virtual time.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use pointsub_proto::frame::{self, Decoded, ErrorCode, Flags, FrameKind, Message, MessageDecoder};
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, Instant, PeerKey, Protocol, Server, ServerConfig,
    ServerEvent, StreamId,
};
use std::collections::BTreeMap;
use std::time::Duration;

pub const PROTO: &str = "/test/1";

pub fn proto() -> Protocol {
    Protocol::from(PROTO)
}

pub fn key(name: &str) -> PeerKey {
    PeerKey::from(name.as_bytes())
}

pub fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const NS: Duration = Duration::from_nanos(1);

/// One encoded frame.
pub fn frame(kind: FrameKind, id: u64, flags: Flags, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    frame::encode_frame(&mut b, kind, flags, id, body);
    b.freeze()
}

pub fn request_frame(id: u64, body: &[u8]) -> Bytes {
    frame(FrameKind::Request, id, Flags::ACCEPT_DEFLATE, body)
}

pub fn response_frame(id: u64, body: &[u8]) -> Bytes {
    frame(FrameKind::Response, id, Flags::ACCEPT_DEFLATE, body)
}

pub fn error_frame(id: u64, code: ErrorCode, msg: &str) -> Bytes {
    frame(
        FrameKind::Error,
        id,
        Flags::empty(),
        &frame::encode_error_body(code, msg),
    )
}

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Bytes {
    let mut rng = pointsub_proto::retry::Rng::new(seed);
    Bytes::from((0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
}

/// Highly compressible bytes.
pub fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| b"pointsub"[i % 8]).collect::<Vec<u8>>())
}

/// Decodes the bytes one side writes, per stream.
#[derive(Default)]
pub struct Tap {
    decoders: BTreeMap<StreamId, MessageDecoder>,
}

impl Tap {
    pub fn feed(&mut self, stream: StreamId, data: &[u8]) -> Vec<Message> {
        let d = self
            .decoders
            .entry(stream)
            .or_insert_with(|| MessageDecoder::new(1 << 30));
        d.push(data);
        let mut out = Vec::new();
        while let Some(m) = d.next().expect("core wrote a bad frame") {
            match m {
                Decoded::Message(m) => out.push(m),
                Decoded::Oversize { .. } => panic!("tap limit exceeded"),
            }
        }
        out
    }
}

/// A client driven by hand; the test plays the network and the server.
pub struct ClientRig {
    pub c: Client,
    pub now: Instant,
    /// Report transmits flushed as soon as they are polled.
    pub auto_flush: bool,
    tap: Tap,
}

impl ClientRig {
    pub fn new(cfg: ClientConfig) -> Self {
        ClientRig {
            c: Client::new(key("me"), cfg).unwrap(),
            now: Instant::ZERO,
            auto_flush: true,
            tap: Tap::default(),
        }
    }

    pub fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    /// Messages the client wrote since the last call (flushed if `auto_flush`).
    pub fn sent(&mut self) -> Vec<(StreamId, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.c.poll_transmit() {
            if self.auto_flush {
                self.c.handle_flushed(t.stream, t.data.len(), self.now);
            }
            for m in self.tap.feed(t.stream, &t.data) {
                out.push((t.stream, m));
            }
        }
        out
    }

    /// Advances virtual time to `t` and fires due timers.
    pub fn advance(&mut self, t: Instant) {
        assert!(t >= self.now);
        self.now = t;
        self.c.handle_timeout(t);
    }

    pub fn open(&mut self, stream: StreamId) {
        self.c.handle_stream_opened(stream, self.now);
    }

    pub fn feed(&mut self, stream: StreamId, data: &[u8]) {
        self.c.handle_data(stream, data, self.now);
    }

    pub fn reply(&mut self, stream: StreamId, id: u64, body: &[u8]) {
        self.feed(stream, &response_frame(id, body));
    }

    pub fn reply_error(&mut self, stream: StreamId, id: u64, code: ErrorCode, msg: &str) {
        self.feed(stream, &error_frame(id, code, msg));
    }
}

/// Streams the client asked to open, with their peers, in order.
pub fn opened(events: &[ClientEvent]) -> Vec<(StreamId, PeerKey)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::OpenStream { stream, peer, .. } => Some((*stream, peer.clone())),
            _ => None,
        })
        .collect()
}

/// `(peer, attempt)` of each AttemptStarted, in order.
pub fn attempts(events: &[ClientEvent]) -> Vec<(PeerKey, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::AttemptStarted { peer, attempt, .. } => Some((peer.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

pub fn completions(events: &[ClientEvent]) -> Vec<&ClientEvent> {
    events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Completed { .. }))
        .collect()
}

/// A server driven by hand; the test plays the clients.
pub struct ServerRig {
    pub s: Server,
    pub now: Instant,
    pub auto_flush: bool,
    tap: Tap,
}

impl ServerRig {
    pub fn new(cfg: ServerConfig) -> Self {
        let mut s = Server::new(cfg).unwrap();
        s.register(proto()).unwrap();
        ServerRig {
            s,
            now: Instant::ZERO,
            auto_flush: true,
            tap: Tap::default(),
        }
    }

    pub fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    pub fn sent(&mut self) -> Vec<(StreamId, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.s.poll_transmit() {
            if self.auto_flush {
                self.s.handle_flushed(t.stream, t.data.len(), self.now);
            }
            for m in self.tap.feed(t.stream, &t.data) {
                out.push((t.stream, m));
            }
        }
        out
    }

    pub fn advance(&mut self, t: Instant) {
        assert!(t >= self.now);
        self.now = t;
        self.s.handle_timeout(t);
    }

    pub fn inbound(&mut self, peer: &str) -> StreamId {
        self.s
            .handle_inbound_stream(key(peer), proto(), self.now)
            .unwrap()
    }

    pub fn feed(&mut self, stream: StreamId, data: &[u8]) {
        self.s.handle_data(stream, data, self.now);
    }

    pub fn request(&mut self, stream: StreamId, id: u64, body: &[u8]) {
        self.feed(stream, &request_frame(id, body));
    }
}

/// The `(code, message)` of an Error message.
pub fn error_of(m: &Message) -> (ErrorCode, String) {
    assert_eq!(m.kind, FrameKind::Error, "{m:?}");
    frame::decode_error_body(&m.body)
}

/// A real client and a real server joined by in-memory streams that deliver
/// at once. Requests are answered by the test.
pub struct Net {
    pub client: Client,
    pub server: Server,
    pub now: Instant,
    c2s: BTreeMap<StreamId, StreamId>,
    s2c: BTreeMap<StreamId, StreamId>,
    pub client_events: Vec<ClientEvent>,
    pub server_events: Vec<ServerEvent>,
    /// Messages as they crossed the wire, with the sender's stream id.
    pub to_server: Vec<(StreamId, Message)>,
    pub to_client: Vec<(StreamId, Message)>,
    c_tap: Tap,
    s_tap: Tap,
}

impl Net {
    pub fn new(ccfg: ClientConfig, scfg: ServerConfig) -> Self {
        let mut server = Server::new(scfg).unwrap();
        server.register(proto()).unwrap();
        Net {
            client: Client::new(key("client"), ccfg).unwrap(),
            server,
            now: Instant::ZERO,
            c2s: BTreeMap::new(),
            s2c: BTreeMap::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            to_server: Vec::new(),
            to_client: Vec::new(),
            c_tap: Tap::default(),
            s_tap: Tap::default(),
        }
    }

    pub fn pump(&mut self) {
        let now = self.now;
        loop {
            let mut progressed = false;
            while let Some(ev) = self.client.poll_event() {
                progressed = true;
                match &ev {
                    ClientEvent::OpenStream {
                        stream, protocol, ..
                    } => {
                        let local = self.client.local().clone();
                        let ss = self
                            .server
                            .handle_inbound_stream(local, protocol.clone(), now)
                            .unwrap();
                        self.c2s.insert(*stream, ss);
                        self.s2c.insert(ss, *stream);
                        self.client.handle_stream_opened(*stream, now);
                    }
                    ClientEvent::CloseStream { stream } => {
                        if let Some(ss) = self.c2s.remove(stream) {
                            self.s2c.remove(&ss);
                            self.server.handle_stream_closed(ss, now);
                        }
                    }
                    _ => {}
                }
                self.client_events.push(ev);
            }
            // Pulled, as the adapters' stream tasks do.
            while let Some(stream) = self.client.poll_writable() {
                while let Some(data) = self.client.poll_transmit_on(stream) {
                    progressed = true;
                    self.client.handle_flushed(stream, data.len(), now);
                    for m in self.c_tap.feed(stream, &data) {
                        self.to_server.push((stream, m));
                    }
                    if let Some(&ss) = self.c2s.get(&stream) {
                        self.server.handle_data(ss, data, now);
                    }
                }
            }
            while let Some(ev) = self.server.poll_event() {
                progressed = true;
                if let ServerEvent::CloseStream { stream, .. } = &ev
                    && let Some(cs) = self.s2c.remove(stream)
                {
                    self.c2s.remove(&cs);
                    self.client.handle_stream_closed(cs, now);
                }
                self.server_events.push(ev);
            }
            while let Some(stream) = self.server.poll_writable() {
                while let Some(data) = self.server.poll_transmit_on(stream) {
                    progressed = true;
                    self.server.handle_flushed(stream, data.len(), now);
                    for m in self.s_tap.feed(stream, &data) {
                        self.to_client.push((stream, m));
                    }
                    if let Some(&cs) = self.s2c.get(&stream) {
                        self.client.handle_data(cs, data, now);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Takes the Request events seen so far: `(stream, request_id, body)`.
    pub fn take_requests(&mut self) -> Vec<(StreamId, u64, Bytes)> {
        let mut out = Vec::new();
        self.server_events.retain(|e| match e {
            ServerEvent::Request {
                stream,
                request_id,
                body,
                ..
            } => {
                out.push((*stream, *request_id, body.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// Answers every pending request with its own body.
    pub fn echo_all(&mut self) {
        for (s, id, body) in self.take_requests() {
            self.server.respond(s, id, Ok(body), self.now);
        }
        self.pump();
    }
}
