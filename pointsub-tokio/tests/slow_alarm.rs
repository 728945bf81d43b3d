//! The slow-handler alarm over real libp2p: a handler past its threshold
//! logs one warning while it still runs, with its protocol and peer, and
//! a slow client request does the same on the client side.
//!
//! In a test binary of its own: the warning is read through a
//! thread-local tracing subscriber, and tests on other threads hitting the
//! same log call sites at the same time would disturb tracing's per-call-site
//! interest cache.
#![cfg(feature = "tokio-runtime")]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::{Client, ClientConfig, Multiaddr, Node, NodeConfig, Server, ServerConfig};
use tokio::time::{Instant, timeout};

const SLOW: &str = "/m/slow/1";

/// Bound of every wait in this test.
const TIMEOUT: Duration = Duration::from_secs(60);

async fn node() -> Node {
    let addr = Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0));
    Node::new(NodeConfig::default().with_listen_addrs([addr]))
        .await
        .expect("node")
}

fn body(i: u64) -> Bytes {
    Bytes::from(format!("slow request {i}"))
}

/// Log lines written by the subscriber of one test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A handler past the threshold is reported while it still runs (it
/// answers only once the warning was seen), once, with its protocol and
/// peer; the client warns about its request the same way.
#[tokio::test]
async fn slow_handler_warns_when_it_crosses_the_threshold() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_ansi(false)
        .finish();
    // The test runs on one thread (current-thread runtime): every task logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    timeout(TIMEOUT * 2, slow_warning_inner(captured))
        .await
        .expect("the test ends in time");
}

async fn slow_warning_inner(captured: Captured) {
    let server_node = node().await;
    let client_node = node().await;
    let server_peer = server_node.peer_id();
    for a in server_node.listen_addrs() {
        client_node.add_address(server_peer, a);
    }
    let server = Server::new(
        &server_node,
        ServerConfig::default().with_slow_handler_threshold(Duration::from_millis(100)),
    )
    .expect("server");
    let (release, released) = tokio::sync::watch::channel(false);
    server
        .start(SLOW, move |_p, b: Bytes| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, String>(b)
            }
        })
        .expect("slow");
    let client = Client::new(
        &client_node,
        ClientConfig::default().with_slow_request_threshold(Duration::from_millis(100)),
    )
    .expect("client");
    let request = {
        let client = client.clone();
        tokio::spawn(async move { client.send(server_peer, SLOW, body(1)).await })
    };
    let deadline = Instant::now() + TIMEOUT;
    while !(captured.text().contains("slow handler") && captured.text().contains("slow request")) {
        assert!(
            Instant::now() < deadline,
            "no warnings; log:\n{}",
            captured.text()
        );
        assert!(
            !request.is_finished(),
            "the request ended before the warnings; log:\n{}",
            captured.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = captured.text();
    let line = log
        .lines()
        .find(|l| l.contains("slow handler"))
        .expect("the handler's warning");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(SLOW), "{line}");
    assert!(line.contains(&client_node.peer_id().to_string()), "{line}");
    assert!(line.contains("elapsed_ms="), "{line}");
    let line = log
        .lines()
        .find(|l| l.contains("slow request"))
        .expect("the client's warning");
    assert!(
        line.contains(SLOW) && line.contains(&server_peer.to_string()),
        "{line}"
    );

    let _ = release.send(true);
    let reply = request
        .await
        .expect("task")
        .expect("the slow request succeeds");
    assert_eq!(reply, body(1));
    let log = captured.text();
    assert_eq!(log.matches("slow handler").count(), 1, "{log}");
    assert_eq!(log.matches("slow request").count(), 1, "{log}");
    let stats = server.stats();
    assert_eq!(stats.protocol(SLOW).map(|p| p.slow), Some(1));

    client.close();
    server.stop().await;
    client_node.shutdown();
    server_node.shutdown();
}
