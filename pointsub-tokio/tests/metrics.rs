//! The Prometheus export end to end: traffic of a known shape over real
//! libp2p on loopback, then a scrape of the `/metrics` endpoint with a
//! real HTTP client (hyper), the OpenMetrics text parsed here and every
//! count checked against what was sent.
//!
//! - `scrape_counts_what_was_sent`: the library endpoint
//!   (`pointsub_tokio::metrics::http`) for a client and a server in this
//!   process;
//! - `cli_serve_exposes_metrics`: `pointsub serve --metrics 127.0.0.1:0`
//!   as a child process, scraped after requests sent from here.
//!
//! The slow alarm's warning is checked in `tests/slow_alarm.rs`.
#![cfg(feature = "cli")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::metrics::{Metrics, Registry, http};
use pointsub_tokio::{
    Client, ClientConfig, Multiaddr, Node, NodeConfig, PeerId, RequestError, Server, ServerConfig,
};
use tokio::time::{Instant, timeout};

const ECHO: &str = "/m/echo/1";
const FAIL: &str = "/m/fail/1";
const SLOW: &str = "/m/slow/1";
const NOPE: &str = "/m/nope/1";

/// Bound of every wait in these tests.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Requests of each kind.
const N_OK: u64 = 20;
const N_FAIL: u64 = 5;
const N_UNSUPPORTED: u64 = 3;
const N_BUSY: u64 = 4;
/// Compressible request bodies.
const BODY: usize = 8 * 1024;

// ----- the exposition format -----

/// One sample: name, labels, value.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: samples, and the `# TYPE` of each family.
#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

/// Parses OpenMetrics text strictly enough to notice a malformed line.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with("# EOF\n"), "no closing # EOF:\n{text}");
    let mut out = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            out.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name.to_owned(), parse_labels(body))
            }
        };
        out.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y\"z"` into a map.
fn parse_labels(mut body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body.split_once("=\"").expect("label key");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("unterminated label value");
            match c {
                '\\' => {
                    let (_, e) = chars.next().expect("escape");
                    value.push(if e == 'n' { '\n' } else { e });
                }
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        body = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

impl Exposition {
    /// The value of the one sample `name` whose labels include `labels`;
    /// 0 if there is none (a counter never incremented is not listed).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }

    /// Every sample of `name` whose labels include `labels`.
    fn all(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Checks a histogram of `protocol`: cumulative buckets that never go
    /// down, `+Inf` equal to `_count`; returns the count.
    fn histogram_count(&self, family: &str, protocol: &str) -> f64 {
        let labels = [("protocol", protocol)];
        let count = self.get(&format!("{family}_count"), &labels);
        let buckets = self.all(&format!("{family}_bucket"), &labels);
        assert!(
            buckets.len() > 2,
            "{family} {protocol}: buckets {buckets:?}"
        );
        let mut last = 0.0;
        for b in &buckets {
            assert!(
                b.value >= last,
                "{family} {protocol}: buckets go down: {buckets:?}"
            );
            last = b.value;
        }
        let inf = buckets
            .iter()
            .find(|b| b.labels.get("le").map(String::as_str) == Some("+Inf"))
            .expect("+Inf bucket");
        assert_eq!(
            inf.value, count,
            "{family} {protocol}: +Inf bucket != count"
        );
        let sum = self.get(&format!("{family}_sum"), &labels);
        assert!(
            sum >= 0.0 && (count == 0.0 || sum > 0.0),
            "{family} sum {sum}"
        );
        count
    }
}

/// `GET /metrics` with hyper's HTTP/1.1 client; checks the status and
/// content type, returns the body.
async fn scrape(addr: SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = sender.send_request(req).await.expect("GET /metrics");
    assert_eq!(res.status(), 200);
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ctype.starts_with("application/openmetrics-text"),
        "content type {ctype:?}"
    );
    let body = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("UTF-8 exposition")
}

// ----- traffic -----

async fn node() -> Node {
    let addr = Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0));
    Node::new(NodeConfig::default().with_listen_addrs([addr]))
        .await
        .expect("node")
}

/// Polls `f` every 20 ms until it holds (bounded by [`TIMEOUT`]).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(i: u64) -> Bytes {
    Bytes::from(format!("request {i:04} ").repeat(BODY / 13 + 1)[..BODY].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_counts_what_was_sent() {
    timeout(TIMEOUT * 2, scrape_counts_inner())
        .await
        .expect("the test ends in time");
}

async fn scrape_counts_inner() {
    let server_node = node().await;
    let client_node = node().await;
    let server_peer = server_node.peer_id();
    for a in server_node.listen_addrs() {
        client_node.add_address(server_peer, a);
    }
    // An admission limit of exactly 1: a second request while one is
    // handled gets Busy, deterministically.
    let server = Server::new(
        &server_node,
        ServerConfig::default()
            .with_max_concurrent_conns(1)
            .with_min_concurrent_conns(1)
            .with_max_concurrent_limit(1)
            .with_slow_handler_threshold(Duration::from_millis(100)),
    )
    .expect("server");
    server
        .start(ECHO, |_p, b: Bytes| async move { Ok::<_, String>(b) })
        .expect("echo");
    server
        .start(FAIL, |_p, _b: Bytes| async move { Err::<Bytes, _>("no") })
        .expect("fail");
    server
        .start(SLOW, |_p, b: Bytes| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, String>(b)
        })
        .expect("slow");
    // No retries: each request ends with its first attempt's outcome.
    let client = Client::new(
        &client_node,
        ClientConfig::default()
            .with_max_retries(0)
            .with_slow_request_threshold(Duration::from_millis(100)),
    )
    .expect("client");

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.add_client(&client);
    metrics.add_server(&server);
    let listener = http::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let endpoint = tokio::spawn(http::serve(listener, Arc::new(registry)));

    for i in 0..N_OK {
        let reply = client.send(server_peer, ECHO, body(i)).await.expect("echo");
        assert_eq!(reply, body(i));
    }
    for i in 0..N_FAIL {
        let e = client
            .send(server_peer, FAIL, body(i))
            .await
            .expect_err("fails");
        assert!(matches!(e, RequestError::Handler(_)), "{e:?}");
    }
    for i in 0..N_UNSUPPORTED {
        let e = client
            .send(server_peer, NOPE, body(i))
            .await
            .expect_err("unsupported");
        assert!(matches!(e, RequestError::UnsupportedProtocol(_)), "{e:?}");
    }
    // One slow request holds the only admission slot: echoes meanwhile
    // are answered Busy.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.send(server_peer, SLOW, body(99)).await })
    };
    until("the slow request to be admitted", || {
        server.stats().in_flight() == 1
    })
    .await;
    for i in 0..N_BUSY {
        let e = client
            .send(server_peer, ECHO, body(i))
            .await
            .expect_err("busy");
        assert!(matches!(e, RequestError::Busy(_)), "{e:?}");
    }
    slow.await
        .expect("task")
        .expect("the slow request succeeds");
    // Everything has ended on both sides.
    until("the server to finish", || server.stats().in_flight() == 0).await;
    assert_eq!(client.stats().in_flight(), 0);

    let text = scrape(addr).await;
    let m = parse(&text);

    // OpenMetrics: counters are typed `counter` and their samples end in `_total`.
    assert_eq!(
        m.types.get("pointsub_client_requests").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        m.types
            .get("pointsub_server_handler_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert!(
        m.samples
            .iter()
            .all(|s| s.labels.keys().all(|k| k != "peer"))
    );

    // Client: outcomes by protocol.
    let c = |p: &str, o: &str| {
        m.get(
            "pointsub_client_requests_total",
            &[("protocol", p), ("outcome", o)],
        )
    };
    assert_eq!(c(ECHO, "ok"), N_OK as f64);
    assert_eq!(c(ECHO, "busy"), N_BUSY as f64);
    assert_eq!(c(FAIL, "handler"), N_FAIL as f64);
    assert_eq!(c(NOPE, "unsupported_protocol"), N_UNSUPPORTED as f64);
    assert_eq!(c(SLOW, "ok"), 1.0);
    let client_total: f64 = m
        .all("pointsub_client_requests_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        client_total,
        (N_OK + N_BUSY + N_FAIL + N_UNSUPPORTED + 1) as f64
    );
    // Histograms count every request that ended.
    let h = "pointsub_client_request_duration_seconds";
    assert_eq!(m.histogram_count(h, ECHO), (N_OK + N_BUSY) as f64);
    assert_eq!(m.histogram_count(h, FAIL), N_FAIL as f64);
    assert_eq!(m.histogram_count(h, NOPE), N_UNSUPPORTED as f64);
    assert_eq!(m.histogram_count(h, SLOW), 1.0);
    assert_eq!(
        m.get("pointsub_client_busy_total", &[("protocol", ECHO)]),
        N_BUSY as f64
    );
    assert_eq!(
        m.get("pointsub_client_slow_requests_total", &[("protocol", SLOW)]),
        1.0
    );
    assert_eq!(
        m.get("pointsub_client_slow_requests_total", &[("protocol", ECHO)]),
        0.0
    );
    assert_eq!(
        m.get("pointsub_client_retries_total", &[("protocol", ECHO)]),
        0.0
    );
    for p in [ECHO, FAIL, NOPE, SLOW] {
        assert_eq!(
            m.get("pointsub_client_requests_in_flight", &[("protocol", p)]),
            0.0
        );
    }
    assert!(m.get("pointsub_client_pool_streams", &[("state", "open")]) >= 1.0);
    // Compressible bodies: fewer bytes on the wire than in the bodies.
    let cb = m.get(
        "pointsub_client_body_bytes_total",
        &[("protocol", ECHO), ("direction", "sent")],
    );
    let cw = m.get(
        "pointsub_client_wire_bytes_total",
        &[("protocol", ECHO), ("direction", "sent")],
    );
    assert_eq!(cb, ((N_OK + N_BUSY) * BODY as u64) as f64);
    assert!(cw > 0.0 && cw < cb / 4.0, "wire {cw} vs body {cb}");
    let rb = m.get(
        "pointsub_client_body_bytes_total",
        &[("protocol", ECHO), ("direction", "received")],
    );
    let rw = m.get(
        "pointsub_client_wire_bytes_total",
        &[("protocol", ECHO), ("direction", "received")],
    );
    assert_eq!(rb, (N_OK * BODY as u64) as f64);
    assert!(rw > 0.0 && rw < rb, "wire {rw} vs body {rb}");

    // Server: the same requests seen from the other side.
    let s = |p: &str, o: &str| {
        m.get(
            "pointsub_server_requests_total",
            &[("protocol", p), ("outcome", o)],
        )
    };
    assert_eq!(s(ECHO, "ok"), N_OK as f64);
    assert_eq!(s(ECHO, "busy"), N_BUSY as f64);
    assert_eq!(s(FAIL, "handler"), N_FAIL as f64);
    assert_eq!(s(SLOW, "ok"), 1.0);
    assert_eq!(
        m.all("pointsub_server_requests_total", &[("protocol", NOPE)])
            .len(),
        0
    );
    let h = "pointsub_server_handler_duration_seconds";
    assert_eq!(
        m.histogram_count(h, ECHO),
        N_OK as f64,
        "Busy answers are never admitted"
    );
    assert_eq!(m.histogram_count(h, FAIL), N_FAIL as f64);
    assert_eq!(m.histogram_count(h, SLOW), 1.0);
    assert_eq!(
        m.get("pointsub_server_busy_total", &[("protocol", ECHO)]),
        N_BUSY as f64
    );
    assert_eq!(
        m.get("pointsub_server_slow_handlers_total", &[("protocol", SLOW)]),
        1.0
    );
    assert_eq!(m.get("pointsub_server_admission_limit", &[]), 1.0);
    assert_eq!(
        m.get(
            "pointsub_server_body_bytes_total",
            &[("protocol", ECHO), ("direction", "received")]
        ),
        // Bodies of admitted requests, inflated: the Busy ones are refused
        // before anyone inflates them.
        (N_OK * BODY as u64) as f64
    );
    let sb = m.get(
        "pointsub_server_body_bytes_total",
        &[("protocol", ECHO), ("direction", "sent")],
    );
    let sw = m.get(
        "pointsub_server_wire_bytes_total",
        &[("protocol", ECHO), ("direction", "sent")],
    );
    assert_eq!(sb, (N_OK * BODY as u64) as f64);
    assert!(sw < sb, "wire {sw} vs body {sb}");
    // The client read what the server wrote.
    assert_eq!(sw, rw);

    // A second scrape of an idle system reads the same counts.
    let again = parse(&scrape(addr).await);
    assert_eq!(
        again.get(
            "pointsub_client_requests_total",
            &[("protocol", ECHO), ("outcome", "ok")]
        ),
        N_OK as f64
    );

    endpoint.abort();
    client.close();
    server.stop().await;
    client_node.shutdown();
    server_node.shutdown();
}

// ----- the CLI -----

/// Kills the child when dropped (a failed assertion must not leak it).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serve_exposes_metrics() {
    timeout(TIMEOUT * 2, cli_serve_inner())
        .await
        .expect("the test ends in time");
}

async fn cli_serve_inner() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pointsub"))
        .args(["serve", "--metrics", "127.0.0.1:0", "--fail-protocol", FAIL])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pointsub serve");
    let stdout = child.stdout.take().expect("stdout piped");
    let server = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut peer_addr, mut metrics_addr) = (None, None);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while peer_addr.is_none() || metrics_addr.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("serve printed its addresses in time");
        if let Some(a) = line.strip_prefix("listening on ")
            && a.starts_with("/ip4/127.0.0.1/tcp/")
        {
            peer_addr = Some(a.to_owned());
        }
        if let Some(url) = line.strip_prefix("metrics on http://") {
            let hostport = url.strip_suffix("/metrics").expect("…/metrics");
            metrics_addr = Some(hostport.parse::<SocketAddr>().expect("socket address"));
        }
    }
    let (peer_addr, metrics_addr) = (peer_addr.unwrap_or_default(), metrics_addr.expect("set"));
    let mut addr: Multiaddr = peer_addr.parse().expect("multiaddr");
    let Some(Protocol::P2p(peer)) = addr.pop() else {
        panic!("no /p2p/ in {peer_addr}");
    };
    let peer: PeerId = peer;

    let node = node().await;
    node.add_address(peer, addr);
    let client = Client::new(&node, ClientConfig::default().with_max_retries(0)).expect("client");
    for i in 0..3 {
        client
            .send(peer, "/pointsub/echo/1.0.0", body(i))
            .await
            .expect("echo");
    }
    for i in 0..2 {
        let e = client.send(peer, FAIL, body(i)).await.expect_err("fails");
        assert!(matches!(e, RequestError::Handler(_)), "{e:?}");
    }
    let text = scrape(metrics_addr).await;
    // libp2p's own metrics share the registry: the server's swarm counted
    // the client's connection (libp2p-metrics, through the node's observer).
    let established: f64 = text
        .lines()
        .filter(|l| l.starts_with("libp2p_swarm_connections_established_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        established >= 1.0,
        "libp2p's swarm metrics in the same scrape:\n{text}"
    );
    let m = parse(&text);
    let s = |p: &str, o: &str| {
        m.get(
            "pointsub_server_requests_total",
            &[("protocol", p), ("outcome", o)],
        )
    };
    assert_eq!(s("/pointsub/echo/1.0.0", "ok"), 3.0);
    assert_eq!(s(FAIL, "handler"), 2.0);
    assert_eq!(
        m.histogram_count(
            "pointsub_server_handler_duration_seconds",
            "/pointsub/echo/1.0.0"
        ),
        3.0
    );
    assert!(m.get("pointsub_server_admission_limit", &[]) >= 1.0);

    client.close();
    node.shutdown();
    drop(server);
}
