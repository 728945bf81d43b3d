//! A client core and a server core joined by in-memory byte pipes: no
//! sockets, virtual time, random split points and delays, injected resets.

use bytes::Bytes;
use pointsub_proto::retry::Rng;
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, Instant, PeerKey, Protocol, RequestError, RequestId, Server,
    ServerConfig, ServerEvent, StreamId,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug)]
enum Ev {
    Open(StreamId),
    ToServer(StreamId, Bytes),
    ToClient(StreamId, Bytes),
    Respond(StreamId, u64, Result<Bytes, String>),
    Submit,
}

struct Pair {
    rng: Rng,
    now: Instant,
    client: Client,
    server: Server,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    /// client stream -> server stream and back
    c2s: BTreeMap<StreamId, StreamId>,
    s2c: BTreeMap<StreamId, StreamId>,
    /// per-direction "last delivery time" so bytes stay in order within a stream
    last_c2s: BTreeMap<StreamId, Instant>,
    last_s2c: BTreeMap<StreamId, Instant>,
    sent: BTreeMap<RequestId, Bytes>,
    done: BTreeSet<RequestId>,
    ok: usize,
    errors: BTreeMap<&'static str, usize>,
    reset_rate: u64,
    max_attempts: u32,
}

const PROTO: &str = "/echo/1";

impl Pair {
    fn new(seed: u64, reset_rate: u64) -> Self {
        let client_key = PeerKey::from(&b"client"[..]);
        let cfg = ClientConfig::default()
            .with_seed(seed)
            .with_retry_interval(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(100))
            .with_max_total_conns(8)
            .with_compression_threshold(256);
        let client = Client::new(client_key, cfg).unwrap();
        let mut server = Server::new(ServerConfig::default()).unwrap();
        server.register(Protocol::from(PROTO)).unwrap();
        Pair {
            rng: Rng::new(seed ^ 0x5eed),
            now: Instant::ZERO,
            client,
            server,
            queue: BTreeMap::new(),
            seq: 0,
            c2s: BTreeMap::new(),
            s2c: BTreeMap::new(),
            last_c2s: BTreeMap::new(),
            last_s2c: BTreeMap::new(),
            sent: BTreeMap::new(),
            done: BTreeSet::new(),
            ok: 0,
            errors: BTreeMap::new(),
            reset_rate,
            max_attempts: 4,
        }
    }

    fn at(&mut self, delay_us: u64, ev: Ev) {
        self.seq += 1;
        let t = self.now + Duration::from_micros(delay_us);
        self.queue.insert((t, self.seq), ev);
    }

    fn body(&mut self) -> Bytes {
        let n = match self.rng.below(10) {
            0 => self.rng.below(200_000) as usize,
            1 => 0,
            _ => self.rng.below(2000) as usize,
        };
        let compressible = self.rng.below(2) == 0;
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(if compressible {
                (i % 7) as u8
            } else {
                self.rng.next_u64() as u8
            });
        }
        if self.rng.below(50) == 0 {
            v.splice(0..0, b"fail".iter().copied());
        }
        Bytes::from(v)
    }

    /// Splits `data` at random points and schedules the pieces in order.
    fn ship(&mut self, to_server: bool, stream: StreamId, data: Bytes) {
        let mut rest = data;
        while !rest.is_empty() {
            let n = (1 + self.rng.below(rest.len() as u64 * 2)).min(rest.len() as u64) as usize;
            let piece = rest.split_to(n);
            let delay = self.now + Duration::from_micros(50 + self.rng.below(500));
            let last = if to_server {
                &mut self.last_c2s
            } else {
                &mut self.last_s2c
            };
            let t = last
                .get(&stream)
                .copied()
                .unwrap_or(Instant::ZERO)
                .max(delay);
            last.insert(stream, t);
            self.seq += 1;
            let ev = if to_server {
                Ev::ToServer(stream, piece)
            } else {
                Ev::ToClient(stream, piece)
            };
            self.queue.insert((t, self.seq), ev);
        }
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.client.poll_event() {
                progressed = true;
                match ev {
                    ClientEvent::OpenStream { stream, .. } => {
                        let d = 100 + self.rng.below(1000);
                        self.at(d, Ev::Open(stream));
                    }
                    ClientEvent::CloseStream { stream } => {
                        if let Some(s) = self.c2s.remove(&stream) {
                            self.s2c.remove(&s);
                            self.server.handle_stream_closed(s, self.now);
                        }
                    }
                    ClientEvent::Completed {
                        id,
                        result,
                        attempts,
                    } => {
                        assert!(self.done.insert(id), "{id} completed twice");
                        assert!(attempts <= self.max_attempts, "{id}: {attempts} attempts");
                        let sent = self
                            .sent
                            .get(&id)
                            .expect("completion for an unknown request");
                        match result {
                            Ok(resp) => {
                                assert_eq!(
                                    &resp.body, sent,
                                    "{id}: response does not match its request"
                                );
                                self.ok += 1;
                            }
                            Err(e) => {
                                if sent.starts_with(b"fail") {
                                    assert!(
                                        matches!(e, RequestError::Handler(ref m) if m == "asked to fail"),
                                        "{e:?}"
                                    );
                                } else {
                                    assert!(
                                        self.reset_rate > 0,
                                        "{id} failed without faults: {e:?}"
                                    );
                                    assert!(e.is_retryable(), "{id}: non-retryable {e:?}");
                                }
                                *self.errors.entry(e.kind()).or_default() += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
            while let Some(t) = self.client.poll_transmit() {
                progressed = true;
                self.client.handle_flushed(t.stream, t.data.len(), self.now);
                if self.c2s.contains_key(&t.stream) {
                    self.ship(true, t.stream, t.data);
                }
            }
            while let Some(ev) = self.server.poll_event() {
                progressed = true;
                match ev {
                    ServerEvent::Request {
                        stream,
                        request_id,
                        body,
                        ..
                    } => {
                        let result = if body.starts_with(b"fail") {
                            Err("asked to fail".to_string())
                        } else {
                            Ok(body)
                        };
                        let d = self.rng.below(2000);
                        self.at(d, Ev::Respond(stream, request_id, result));
                    }
                    ServerEvent::CloseStream { stream, .. } => {
                        if let Some(c) = self.s2c.remove(&stream) {
                            self.c2s.remove(&c);
                            self.client.handle_stream_reset(c, self.now);
                        }
                    }
                    _ => {}
                }
            }
            while let Some(t) = self.server.poll_transmit() {
                progressed = true;
                self.server.handle_flushed(t.stream, t.data.len(), self.now);
                if let Some(&c) = self.s2c.get(&t.stream) {
                    self.ship(false, c, t.data);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Submit => {
                let body = self.body();
                let id = self
                    .client
                    .send(
                        PeerKey::from(&b"server"[..]),
                        Protocol::from(PROTO),
                        body.clone(),
                        self.now,
                    )
                    .unwrap();
                self.sent.insert(id, body);
            }
            Ev::Open(cs) => {
                let ss = self
                    .server
                    .handle_inbound_stream(
                        PeerKey::from(&b"client"[..]),
                        Protocol::from(PROTO),
                        self.now,
                    )
                    .unwrap();
                self.c2s.insert(cs, ss);
                self.s2c.insert(ss, cs);
                self.client.handle_stream_opened(cs, self.now);
            }
            Ev::ToServer(cs, data) => {
                if let Some(&ss) = self.c2s.get(&cs) {
                    self.server.handle_data(ss, data, self.now);
                }
            }
            Ev::ToClient(cs, data) => {
                if self.c2s.contains_key(&cs) {
                    self.client.handle_data(cs, data, self.now);
                }
            }
            Ev::Respond(ss, id, result) => self.server.respond(ss, id, result, self.now),
        }
        // Fault: reset a random live stream now and then.
        if self.reset_rate > 0 && self.rng.below(self.reset_rate) == 0 && !self.c2s.is_empty() {
            let i = self.rng.below(self.c2s.len() as u64) as usize;
            let (&cs, &ss) = self.c2s.iter().nth(i).unwrap();
            self.c2s.remove(&cs);
            self.s2c.remove(&ss);
            self.client.handle_stream_reset(cs, self.now);
            self.server.handle_stream_reset(ss, self.now);
        }
    }

    fn run(&mut self, requests: usize) {
        for i in 0..requests {
            let t = (i as u64) * 150 + self.rng.below(100);
            self.seq += 1;
            self.queue
                .insert((Instant::from_nanos(t * 1000), self.seq), Ev::Submit);
        }
        loop {
            let next_ev = self.queue.first_key_value().map(|(k, _)| k.0);
            let next_timer = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            if self.done.len() == requests && next_ev.is_none() {
                break;
            }
            match (next_ev, next_timer) {
                (Some(e), Some(t)) if t < e => {
                    self.now = self.now.max(t);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                }
                (Some(_), _) => {
                    let ((t, _), ev) = self.queue.pop_first().unwrap();
                    self.now = self.now.max(t);
                    self.step(ev);
                }
                (None, Some(t)) => {
                    assert!(self.done.len() < requests);
                    self.now = self.now.max(t);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                }
                (None, None) => panic!("stalled with {} of {requests} done", self.done.len()),
            }
            self.pump();
            assert!(
                self.now < Instant::from_millis(3_600_000),
                "virtual hour passed"
            );
        }
        assert_eq!(self.done.len(), requests);
        assert_eq!(self.client.in_flight(), 0);
        assert_eq!(self.server.active(), 0, "admission slots leaked");
    }
}

#[test]
fn ten_thousand_requests_without_faults_all_succeed() {
    let mut p = Pair::new(1, 0);
    p.run(10_000);
    let fails = p.sent.values().filter(|b| b.starts_with(b"fail")).count();
    assert_eq!(p.ok + fails, 10_000, "errors: {:?}", p.errors);
    // Streams were pooled, not opened per request.
    assert!(
        p.client.metrics().streams_opened <= 8,
        "{:?}",
        p.client.metrics()
    );
}

#[test]
fn ten_thousand_requests_with_resets_end_exactly_once() {
    let mut p = Pair::new(2, 400);
    p.run(10_000);
    assert!(p.ok > 9_000, "ok {} errors {:?}", p.ok, p.errors);
    assert!(
        p.client.metrics().retries > 0,
        "resets should have caused retries"
    );
}
