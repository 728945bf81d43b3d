//! `Listener` / `Conn` between two real nodes on loopback: bulk echo over
//! TCP and QUIC, half-close, read and write timeouts, and the errors of
//! `listen`, `dial` and `accept`.
#![cfg(feature = "tokio-runtime")]

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{
    Conn, ConnError, DEFAULT_CONN_TIMEOUT, Listener, Multiaddr, Node, NodeConfig, OpenStreamError,
    StreamProtocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// `Conn` and `Listener` move freely between tasks and threads (checked at
// compile time). `Conn` is not `Sync`: neither is `libp2p::Stream`.
const _: () = {
    const fn io_object<T: Send + Unpin + 'static>() {}
    io_object::<Conn>();
    io_object::<Listener>();
};

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

fn loopback() -> Multiaddr {
    Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
}

fn tcp_only() -> NodeConfig {
    NodeConfig::default().with_listen_addrs([loopback().with(Protocol::Tcp(0))])
}

fn quic_only() -> NodeConfig {
    NodeConfig::default()
        .with_listen_addrs([loopback().with(Protocol::Udp(0)).with(Protocol::QuicV1)])
}

/// Two nodes; `a` knows every listen address of `b`.
async fn pair(config: NodeConfig) -> (Node, Node) {
    let a = Node::new(config.clone()).await.expect("node a");
    let b = Node::new(config).await.expect("node b");
    for addr in b.listen_addrs() {
        a.add_address(b.peer_id(), addr);
    }
    (a, b)
}

/// `b` listens on `protocol`, `a` dials it; returns both ends, checked.
async fn connect(a: &Node, b: &Node, protocol: &str) -> (Conn, Conn, Listener) {
    let mut listener = b.listen(protocol).expect("listen");
    assert_eq!(listener.protocol(), protocol);
    assert_eq!(listener.local_peer_id(), b.peer_id());
    let dialer = a.dial(b.peer_id(), protocol).await.expect("dial");
    let acceptor = listener.accept().await.expect("accept");
    assert_eq!(dialer.peer(), b.peer_id());
    assert_eq!(dialer.protocol(), protocol);
    assert_eq!(acceptor.peer(), a.peer_id());
    assert_eq!(acceptor.protocol(), protocol);
    (dialer, acceptor, listener)
}

// ---------------------------------------------------------------------------
// Bulk echo
// ---------------------------------------------------------------------------

const ECHO_TOTAL: u64 = 64 << 20;
const CHUNK: usize = 64 << 10;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern's bytes starting at stream offset `offset`:
/// byte `p` is byte `p % 8` of `splitmix64(p / 8)`.
fn fill_pattern(offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// `a` streams [`ECHO_TOTAL`] bytes to `b` while reading the echo back,
/// verifying every byte as it arrives.
async fn echo_64mib(config: NodeConfig) {
    let (a, b) = pair(config).await;
    let protocol = "/test/echo/1";
    let (dialer, acceptor, _listener) = connect(&a, &b, protocol).await;

    let echo = tokio::spawn(async move {
        let (mut reader, mut writer) = tokio::io::split(acceptor);
        let copied = tokio::io::copy(&mut reader, &mut writer).await?;
        // `copy` returned: the dialer's write side ended.
        writer.shutdown().await?;
        Ok::<_, io::Error>((copied, reader.unsplit(writer)))
    });

    let (mut reader, mut writer) = tokio::io::split(dialer);
    let send = tokio::spawn(async move {
        let mut chunk = vec![0u8; CHUNK];
        let mut offset = 0u64;
        while offset < ECHO_TOTAL {
            fill_pattern(offset, &mut chunk);
            writer.write_all(&chunk).await?;
            offset += CHUNK as u64;
        }
        writer.shutdown().await?;
        Ok::<_, io::Error>(writer)
    });

    let started = Instant::now();
    let mut received = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut expected = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf).await.expect("read echo");
        if n == 0 {
            break;
        }
        fill_pattern(received, &mut expected[..n]);
        if buf[..n] != expected[..n] {
            let at = (0..n).find(|&i| buf[i] != expected[i]).unwrap_or(0);
            panic!("echo differs at byte {}", received + at as u64);
        }
        received += n as u64;
        assert!(received <= ECHO_TOTAL, "more bytes echoed than sent");
    }
    assert_eq!(received, ECHO_TOTAL, "EOF before the whole echo");
    // EOF stays EOF.
    assert_eq!(reader.read(&mut buf).await.expect("read after EOF"), 0);

    let _writer = send.await.expect("sender task").expect("send");
    let (copied, _acceptor) = echo.await.expect("echo task").expect("echo");
    assert_eq!(copied, ECHO_TOTAL);
    eprintln!("64 MiB echoed in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_64mib_over_tcp() {
    within(echo_64mib(tcp_only())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_64mib_over_quic() {
    within(echo_64mib(quic_only())).await;
}

// ---------------------------------------------------------------------------
// Half-close
// ---------------------------------------------------------------------------

/// The dialer closes its write side, then still reads the reply the
/// acceptor writes after seeing end-of-stream.
async fn half_close(config: NodeConfig) {
    let (a, b) = pair(config).await;
    let protocol = "/test/half-close/1";
    let mut listener = b.listen(protocol).expect("listen");
    let a_id = a.peer_id();

    let acceptor = tokio::spawn(async move {
        // The listener is also a stream of connections.
        let mut conn = listener.next().await.expect("a connection");
        assert_eq!(conn.peer(), a_id);
        let mut request = Vec::new();
        // Returns only once the dialer's FIN arrived.
        conn.read_to_end(&mut request).await?;
        conn.write_all(b"pong").await?;
        conn.shutdown().await?;
        Ok::<_, io::Error>((request, conn, listener))
    });

    let mut conn = a.dial(b.peer_id(), protocol).await.expect("dial");
    conn.write_all(b"ping").await.expect("write");
    conn.shutdown().await.expect("shutdown");
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)
        .await
        .expect("read after our half-close");
    assert_eq!(reply, b"pong");
    // Our write side stays closed.
    assert!(conn.write_all(b"more").await.is_err());

    let (request, _conn, _listener) = acceptor.await.expect("acceptor task").expect("acceptor");
    assert_eq!(request, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_over_tcp() {
    within(half_close(tcp_only())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_over_quic() {
    within(half_close(quic_only())).await;
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_times_out_and_the_conn_stays_usable() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let (mut dialer, mut acceptor, _listener) = connect(&a, &b, "/test/silent/1").await;
        assert_eq!(dialer.read_timeout(), Some(DEFAULT_CONN_TIMEOUT));
        assert_eq!(dialer.write_timeout(), Some(DEFAULT_CONN_TIMEOUT));

        let timeout = Duration::from_millis(200);
        dialer.set_read_timeout(Some(timeout));
        assert_eq!(dialer.read_timeout(), Some(timeout));
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let err = dialer.read(&mut buf).await.expect_err("nothing to read");
        let waited = started.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(waited >= timeout, "timed out early, after {waited:?}");
        assert!(
            waited < Duration::from_secs(5),
            "timed out late: {waited:?}"
        );

        // Nothing was lost: data sent after the timeout is read normally.
        acceptor.write_all(b"late").await.expect("write");
        acceptor.flush().await.expect("flush");
        let mut late = [0u8; 4];
        dialer
            .read_exact(&mut late)
            .await
            .expect("read after timeout");
        assert_eq!(&late, b"late");

        // With the timeout disabled, a read just waits.
        dialer.set_read_timeout(None);
        let wait = tokio::time::timeout(Duration::from_millis(400), dialer.read(&mut buf)).await;
        assert!(wait.is_err(), "a read without timeout must keep waiting");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_times_out_when_the_remote_stops_reading() {
    // Far more than yamux's flow-control window: writes must block.
    const LIMIT: usize = 16 << 20;
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let (mut dialer, _acceptor, _listener) = connect(&a, &b, "/test/stuck/1").await;
        dialer.set_write_timeout(Some(Duration::from_millis(200)));

        let chunk = vec![7u8; CHUNK];
        let mut written = 0;
        let err = loop {
            match dialer.write(&chunk).await {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(
                written < LIMIT,
                "{written} bytes written to a peer that reads nothing"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(
            written > 0,
            "the flow-control window accepts some data first"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_errors() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let _other = b.listen("/test/other").expect("listen");

        let err = a
            .dial(b.peer_id(), "/test/missing")
            .await
            .expect_err("not accepted by b");
        assert_eq!(
            err,
            ConnError::Open(OpenStreamError::UnsupportedProtocol(StreamProtocol::new(
                "/test/missing"
            )))
        );
        assert!(!err.is_retryable());

        let err = a.dial(b.peer_id(), "nope").await.expect_err("invalid name");
        assert_eq!(err, ConnError::InvalidProtocol("nope".into()));
        assert!(!err.is_retryable());

        // The protocol that is accepted still dials.
        let conn = a.dial(b.peer_id(), "/test/other").await.expect("dial");
        assert_eq!(conn.protocol(), "/test/other");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_errors_and_unregistering() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        assert_eq!(
            b.listen("nope").expect_err("invalid name"),
            ConnError::InvalidProtocol("nope".into())
        );

        let listener = b.listen("/test/once").expect("listen");
        let err = b.listen("/test/once").expect_err("listening twice");
        assert_eq!(err, ConnError::AlreadyListening("/test/once".into()));
        assert!(!err.is_retryable());

        // Dropping the listener unregisters the protocol...
        drop(listener);
        let err = a
            .dial(b.peer_id(), "/test/once")
            .await
            .expect_err("no listener any more");
        assert!(
            matches!(
                err,
                ConnError::Open(OpenStreamError::UnsupportedProtocol(_))
            ),
            "{err:?}"
        );
        // ...and frees it for a new listener.
        let mut listener = b.listen("/test/once").expect("listen again");
        let _conn = a.dial(b.peer_id(), "/test/once").await.expect("dial");
        assert_eq!(listener.accept().await.expect("accept").peer(), a.peer_id());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_listeners() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let mut listener = b.listen("/test/1").expect("listen");
        let pending = tokio::spawn(async move { listener.accept().await });
        // Let the accept start waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished());

        b.shutdown();
        let result = pending.await.expect("accept task");
        assert_eq!(result.expect_err("node shut down"), ConnError::Closed);

        // A listener made after shutdown is closed from the start, and
        // dials fail for good.
        let mut late = b.listen("/test/2").expect("listen after shutdown");
        let err = late.accept().await.expect_err("closed");
        assert_eq!(err, ConnError::Closed);
        assert!(!err.is_retryable());
        let err = b.dial(a.peer_id(), "/test/1").await.expect_err("shut down");
        assert_eq!(err, ConnError::Open(OpenStreamError::Shutdown));
        assert!(!err.is_retryable());
    })
    .await;
}
