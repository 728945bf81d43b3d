//! The pointsub core embedded in a plain event loop over `std::net` TCP: no
//! async runtime, no libp2p. One TCP connection plays the part of one
//! pointsub stream; a peer's key is simply its name.
//!
//! Run: `cargo run --release -p pointsub-proto --example std_net`

use bytes::Bytes;
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, Instant, OpenFailure, PeerKey, Protocol, Server,
    ServerConfig, ServerEvent, StreamId,
};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const PROTOCOL: &str = "/upper/1.0.0";

/// The loop's clock: the core only ever sees these values.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.0.elapsed().as_nanos() as u64)
    }
}

/// A non-blocking socket with the bytes the core handed out but the kernel
/// has not taken yet.
struct Conn {
    sock: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    fn new(sock: TcpStream) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            pending: Vec::new(),
        })
    }

    /// Writes what it can; returns bytes written (to report as flushed).
    fn write_some(&mut self) -> std::io::Result<usize> {
        let mut total = 0;
        while !self.pending.is_empty() {
            match self.sock.write(&self.pending) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Reads what is there: Ok(None) at end of file.
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.sock.read(buf) {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }
}

fn serve(listener: TcpListener, requests: usize) -> std::io::Result<()> {
    let clock = Clock(std::time::Instant::now());
    listener.set_nonblocking(true)?;
    let mut server = Server::new(ServerConfig::default()).expect("default config is valid");
    server
        .register(Protocol::from(PROTOCOL))
        .expect("first registration");
    let mut conns: BTreeMap<StreamId, Conn> = BTreeMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = 0;
    while answered < requests {
        let now = clock.now();
        match listener.accept() {
            Ok((sock, addr)) => {
                let peer = PeerKey::from(addr.to_string().into_bytes());
                match server.handle_inbound_stream(peer, Protocol::from(PROTOCOL), now) {
                    Ok(id) => {
                        conns.insert(id, Conn::new(sock)?);
                    }
                    Err(e) => eprintln!("server: refused {addr}: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let ids: Vec<StreamId> = conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = conns.get_mut(&id) else {
                continue;
            };
            match conn.read_some(&mut buf) {
                Ok(Some(0)) => {}
                Ok(Some(n)) => server.handle_data(id, &buf[..n], now),
                Ok(None) => server.handle_stream_closed(id, now),
                Err(_) => {
                    conns.remove(&id);
                    server.handle_stream_reset(id, now);
                }
            }
        }
        // Drain the core: run handlers inline, queue bytes, close streams.
        while let Some(ev) = server.poll_event() {
            match ev {
                ServerEvent::Request {
                    stream,
                    request_id,
                    body,
                    ..
                } => {
                    let reply = Bytes::from(body.to_ascii_uppercase());
                    server.respond(stream, request_id, Ok(reply), now);
                    answered += 1;
                }
                ServerEvent::CloseStream { stream, .. } => {
                    conns.remove(&stream);
                }
                _ => {}
            }
        }
        while let Some(t) = server.poll_transmit() {
            if let Some(conn) = conns.get_mut(&t.stream) {
                conn.pending.extend_from_slice(&t.data);
            }
        }
        for (id, conn) in conns.iter_mut() {
            let n = conn.write_some()?;
            if n > 0 {
                server.handle_flushed(*id, n, now);
            }
        }
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    // Let the last answers out.
    for conn in conns.values_mut() {
        conn.sock.set_nonblocking(false)?;
        conn.sock.write_all(&conn.pending)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let messages = ["hello", "pointsub", "sans-io", "core", "over", "std::net"];
    let server = std::thread::spawn(move || serve(listener, messages.len()));

    let clock = Clock(std::time::Instant::now());
    let server_key = PeerKey::from(addr.to_string().into_bytes());
    let mut client =
        Client::new(PeerKey::from(&b"client"[..]), ClientConfig::default()).expect("valid config");
    let mut conns: BTreeMap<StreamId, Conn> = BTreeMap::new();
    let mut started = BTreeMap::new();
    for m in messages {
        let id = client
            .send(
                server_key.clone(),
                Protocol::from(PROTOCOL),
                Bytes::from(m),
                clock.now(),
            )
            .expect("valid request");
        started.insert(id, (m, std::time::Instant::now()));
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = messages.len();
    while left > 0 {
        let now = clock.now();
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::OpenStream { stream, .. } => {
                    match TcpStream::connect(addr).and_then(Conn::new) {
                        Ok(c) => {
                            conns.insert(stream, c);
                            client.handle_stream_opened(stream, now);
                        }
                        Err(e) => client.handle_open_failed(
                            stream,
                            OpenFailure::Unreachable(e.to_string()),
                            now,
                        ),
                    }
                }
                ClientEvent::CloseStream { stream } => {
                    conns.remove(&stream);
                }
                ClientEvent::Completed {
                    id,
                    result,
                    attempts,
                } => {
                    left -= 1;
                    let (sent, t0) = started[&id];
                    match result {
                        Ok(r) => println!(
                            "{id}: {sent:?} -> {:?} in {:?} ({attempts} attempt)",
                            String::from_utf8_lossy(&r.body),
                            t0.elapsed()
                        ),
                        Err(e) => println!(
                            "{id}: {sent:?} failed: {e} (retryable: {})",
                            e.is_retryable()
                        ),
                    }
                }
                _ => {}
            }
        }
        while let Some(t) = client.poll_transmit() {
            if let Some(conn) = conns.get_mut(&t.stream) {
                conn.pending.extend_from_slice(&t.data);
            }
        }
        let ids: Vec<StreamId> = conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = conns.get_mut(&id) else {
                continue;
            };
            let flushed = conn.write_some();
            let read = conn.read_some(&mut buf);
            match (flushed, read) {
                (Ok(f), Ok(r)) => {
                    if f > 0 {
                        client.handle_flushed(id, f, now);
                    }
                    match r {
                        Some(0) => {}
                        Some(n) => client.handle_data(id, &buf[..n], now),
                        None => {
                            conns.remove(&id);
                            client.handle_stream_closed(id, now);
                        }
                    }
                }
                _ => {
                    conns.remove(&id);
                    client.handle_stream_reset(id, now);
                }
            }
        }
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    let m = client.metrics();
    println!(
        "client: {} requests, {} ok, {} failed, {} stream(s) opened, {} bytes out, {} bytes in",
        m.requests, m.succeeded, m.failed, m.streams_opened, m.bytes_written, m.bytes_read
    );
    client.close(clock.now());
    server.join().expect("server thread")?;
    Ok(())
}
