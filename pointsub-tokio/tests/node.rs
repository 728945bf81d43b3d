//! Two real nodes on loopback: raw streams over TCP and QUIC, protocol
//! registration, bursts of inbound streams, dial failures.
#![cfg(feature = "tokio-runtime")]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{
    AlreadyRegistered, DialError, Multiaddr, Node, NodeConfig, OpenStreamError, PeerId,
    StreamProtocol,
};

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

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

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
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

/// `a` opens a stream to `b`, sends "hello", `b` answers "world"; both
/// sides check what they read.
async fn roundtrip(a: &Node, b: &Node, protocol: StreamProtocol) {
    let mut incoming = b.accept(protocol.clone()).expect("accept");
    let server = tokio::spawn(async move {
        let (peer, mut stream) = incoming.next().await.expect("an inbound stream");
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).await.expect("read request");
        assert_eq!(&request, b"hello");
        stream.write_all(b"world").await.expect("write response");
        stream.close().await.expect("close");
        peer
    });

    let mut stream = a
        .open_stream(b.peer_id(), protocol)
        .await
        .expect("open stream");
    stream.write_all(b"hello").await.expect("write request");
    stream.flush().await.expect("flush");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    assert_eq!(response, b"world");
    assert_eq!(server.await.expect("server task"), a.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_roundtrip_over_tcp() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        roundtrip(&a, &b, StreamProtocol::new("/test/1")).await;

        assert_eq!(a.control().connected_peers(), vec![b.peer_id()]);
        let remote = a.control().remote_addr(&b.peer_id()).expect("remote addr");
        assert!(remote.iter().any(|p| matches!(p, Protocol::Tcp(_))));
        assert_eq!(b.control().connected_peers(), vec![a.peer_id()]);

        // A second stream reuses the connection.
        roundtrip(&a, &b, StreamProtocol::new("/test/2")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_roundtrip_over_quic() {
    within(async {
        let (a, b) = pair(quic_only()).await;
        assert!(!b.listen_addrs().is_empty());
        assert!(b.listen_addrs().iter().all(is_quic));
        roundtrip(&a, &b, StreamProtocol::new("/test/1")).await;
        let remote = a.control().remote_addr(&b.peer_id()).expect("remote addr");
        assert!(is_quic(&remote), "{remote}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_protocol_is_unsupported_and_final() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let _other = b
            .accept(StreamProtocol::new("/test/other"))
            .expect("accept");
        let missing = StreamProtocol::new("/test/missing");
        let err = a
            .open_stream(b.peer_id(), missing.clone())
            .await
            .expect_err("must fail");
        assert_eq!(err, OpenStreamError::UnsupportedProtocol(missing));
        assert!(!err.is_retryable());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_inbound_streams_waits_for_a_slow_reader() {
    const STREAMS: u32 = 200;
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let protocol = StreamProtocol::new("/test/burst");
        let mut incoming = b.accept(protocol.clone()).expect("accept");
        let b_id = b.peer_id();

        // Open all streams at once; each carries its index, then a FIN.
        let opener = tokio::spawn(async move {
            let opens = (0..STREAMS).map(|i| {
                let a = a.clone();
                let protocol = protocol.clone();
                async move {
                    let mut stream = a.open_stream(b_id, protocol).await?;
                    stream
                        .write_all(&i.to_be_bytes())
                        .await
                        .map_err(|e| OpenStreamError::Io(e.to_string()))?;
                    stream
                        .close()
                        .await
                        .map_err(|e| OpenStreamError::Io(e.to_string()))?;
                    Ok::<_, OpenStreamError>(stream)
                }
            });
            let streams = futures::future::join_all(opens).await;
            // Keep the node and the streams alive until the reader is done.
            (a, streams)
        });

        // The application does not read for a while.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut seen = BTreeSet::new();
        for _ in 0..STREAMS {
            let (peer, mut stream) = incoming.next().await.expect("an inbound stream");
            assert_ne!(peer, b_id);
            let mut body = Vec::new();
            stream
                .read_to_end(&mut body)
                .await
                .expect("stream was not reset");
            let index = u32::from_be_bytes(body.as_slice().try_into().expect("4 bytes"));
            assert!(seen.insert(index), "stream {index} delivered twice");
        }
        assert_eq!(seen, (0..STREAMS).collect::<BTreeSet<_>>());

        let (_a, streams) = opener.await.expect("opener task");
        assert_eq!(streams.len(), STREAMS as usize);
        for result in streams {
            result.expect("every open succeeded");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_peer_without_address_fails_quickly() {
    within(async {
        let a = Node::new(tcp_only()).await.expect("node");
        let stranger = PeerId::random();

        let started = Instant::now();
        let err = a.connect(stranger).await.expect_err("no address");
        assert_eq!(err, DialError::NoAddresses(stranger));
        assert!(!err.is_retryable(), "final until an address is added");

        let err = a
            .open_stream(stranger, StreamProtocol::new("/test/1"))
            .await
            .expect_err("no address");
        assert_eq!(err, OpenStreamError::NoAddresses(stranger));
        assert!(!err.is_retryable());
        assert!(started.elapsed() < Duration::from_secs(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addrs_are_on_loopback() {
    within(async {
        let node = Node::new(NodeConfig::default()).await.expect("node");
        let addrs = node.listen_addrs();
        assert!(!addrs.is_empty());
        for addr in &addrs {
            assert_eq!(
                addr.iter().next(),
                Some(Protocol::Ip4(Ipv4Addr::LOCALHOST)),
                "{addr}"
            );
        }
        // The default config listens on TCP and QUIC.
        assert!(addrs.iter().any(is_quic));
        assert!(addrs.iter().any(|a| !is_quic(a)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_incoming_streams_unregisters() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let protocol = StreamProtocol::new("/test/1");

        let incoming = b.accept(protocol.clone()).expect("accept");
        assert_eq!(
            b.accept(protocol.clone()).expect_err("registered twice"),
            AlreadyRegistered(protocol.clone())
        );
        assert_eq!(b.control().accepted_protocols(), vec![protocol.clone()]);
        a.open_stream(b.peer_id(), protocol.clone())
            .await
            .expect("registered protocol opens");

        drop(incoming);
        assert!(b.control().accepted_protocols().is_empty());
        let err = a
            .open_stream(b.peer_id(), protocol.clone())
            .await
            .expect_err("unregistered");
        assert_eq!(err, OpenStreamError::UnsupportedProtocol(protocol.clone()));

        // Registering again works.
        let _incoming = b.accept(protocol.clone()).expect("accept again");
        a.open_stream(b.peer_id(), protocol)
            .await
            .expect("registered again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_addr_learns_the_peer_id() {
    within(async {
        let a = Node::new(tcp_only()).await.expect("node a");
        let b = Node::new(tcp_only()).await.expect("node b");
        let addr = b.listen_addrs().remove(0);
        let peer = a.connect_addr(addr).await.expect("dial");
        assert_eq!(peer, b.peer_id());
        assert!(a.control().is_connected(&peer));
        // Already connected: resolves at once.
        a.connect(peer).await.expect("connected");
        assert!(!a.control().addresses_of(&peer).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_requests_and_ends_incoming_streams() {
    within(async {
        let (a, b) = pair(tcp_only()).await;
        let mut incoming = a.accept(StreamProtocol::new("/test/1")).expect("accept");
        a.shutdown();
        // The task stops asynchronously; the stream of incoming streams ends.
        assert!(incoming.next().await.is_none());
        assert!(a.control().is_shut_down());
        let err = a
            .open_stream(b.peer_id(), StreamProtocol::new("/test/1"))
            .await
            .expect_err("shut down");
        assert_eq!(err, OpenStreamError::Shutdown);
        assert!(!err.is_retryable());
        assert_eq!(
            a.connect(b.peer_id()).await.expect_err("shut down"),
            DialError::Shutdown
        );
    })
    .await;
}
