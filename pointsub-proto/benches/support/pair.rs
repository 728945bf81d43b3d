//! A client and a server core joined in memory, for the `roundtrip`
//! benches (`benches/core.rs`) and the instruction count per request
//! (`examples/roundtrip_ir.rs`, run under callgrind).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, Instant, PeerKey, Protocol, Server, ServerConfig,
    ServerEvent, StreamId,
};

/// The protocol the pair speaks.
const PROTO: &str = "/bench/1";

/// A client and a server core joined by hand: transmits are written and
/// flushed at once, requests are echoed by the "handler" as soon as they
/// arrive.
pub struct Pair {
    pub client: Client,
    pub server: Server,
    peer: PeerKey,
    proto: Protocol,
    now: Instant,
    /// Client stream id → server stream id (ids are small and dense).
    c2s: Vec<Option<StreamId>>,
    s2c: Vec<Option<StreamId>>,
    completed: usize,
    pub opened: usize,
}

fn slot(v: &mut Vec<Option<StreamId>>, at: StreamId) -> &mut Option<StreamId> {
    let i = at.0 as usize;
    if v.len() <= i {
        v.resize(i + 1, None);
    }
    &mut v[i]
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pair {
    /// A client and a server with default configurations, the server
    /// serving the bench protocol.
    pub fn new() -> Self {
        let client = Client::new(PeerKey::from(&b"bench-client"[..]), ClientConfig::default())
            .expect("valid config");
        let mut server = Server::new(ServerConfig::default()).expect("valid config");
        let proto = Protocol::from(PROTO);
        server.register(proto.clone()).expect("new protocol");
        Pair {
            client,
            server,
            peer: PeerKey::from(&b"bench-server"[..]),
            proto,
            now: Instant::from_millis(1),
            c2s: Vec::new(),
            s2c: Vec::new(),
            completed: 0,
            opened: 0,
        }
    }

    /// Sends `n` requests and runs both cores until all have completed.
    pub fn batch(&mut self, body: &Bytes, n: usize) {
        // Virtual time moves on a little per batch, as it would.
        self.now = self.now + Duration::from_micros(1);
        let now = self.now;
        for _ in 0..n {
            self.client
                .send(self.peer.clone(), self.proto.clone(), body.clone(), now)
                .expect("accepted");
        }
        let target = self.completed + n;
        while self.completed < target {
            self.step(now);
        }
    }

    fn step(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                ClientEvent::OpenStream {
                    stream, protocol, ..
                } => {
                    let local = self.client.local().clone();
                    let ss = self
                        .server
                        .handle_inbound_stream(local, protocol, now)
                        .expect("accepted");
                    *slot(&mut self.c2s, stream) = Some(ss);
                    *slot(&mut self.s2c, ss) = Some(stream);
                    self.client.handle_stream_opened(stream, now);
                    self.opened += 1;
                }
                ClientEvent::Completed { result, .. } => {
                    black_box(result.expect("echoed"));
                    self.completed += 1;
                }
                ClientEvent::CloseStream { stream } => panic!("{stream} closed"),
                other => {
                    black_box(other);
                }
            }
        }
        while let Some(t) = self.client.poll_transmit() {
            self.client.handle_flushed(t.stream, t.data.len(), now);
            let ss = self.c2s[t.stream.0 as usize].expect("paired stream");
            // Handed over as read (no copy), as the adapters do.
            self.server.handle_data(ss, t.data, now);
        }
        while let Some(ev) = self.server.poll_event() {
            match ev {
                ServerEvent::Request {
                    stream,
                    request_id,
                    body,
                    ..
                } => self.server.respond(stream, request_id, Ok(body), now),
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(t) = self.server.poll_transmit() {
            self.server.handle_flushed(t.stream, t.data.len(), now);
            let cs = self.s2c[t.stream.0 as usize].expect("paired stream");
            self.client.handle_data(cs, t.data, now);
        }
    }
}
