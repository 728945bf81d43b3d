//! Hostile peers over real libp2p on loopback (issue 7).
//!
//! Each test starts a server node with an echo server, an attacker node
//! that opens the pointsub protocol as a raw [`Conn`] and writes whatever
//! it likes, and a well-behaved client node whose requests run during the
//! attack and must all succeed (no retries allowed). For each attack the
//! test checks what the server did to the attacker's stream (a typed Error
//! frame, or the stream closed), that its counters moved as expected, that
//! nothing panicked anywhere in the process (a panic hook counts panics,
//! including those in spawned tasks), and that memory stayed bounded (RSS
//! sampled from `/proc/self/status` before, during and after; printed).
//!
//! The tests take turns (a process-wide lock), so each one's RSS figures
//! are its own.
#![cfg(feature = "tokio-runtime")]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::proto::compress;
use pointsub_tokio::proto::frame::{
    self, ErrorCode, Flags, Frame, FrameDecoder, FrameKind, HEADER_LEN, MAX_FRAME_PAYLOAD,
};
use pointsub_tokio::{
    Client, ClientConfig, Conn, Multiaddr, Node, NodeConfig, PeerId, Server, ServerConfig,
    ServerMetrics,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const ECHO: &str = "/hostile/echo/1";

/// Every test stops by itself after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Generous bound on RSS growth during one attack.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Requests of the pipelined flood (scenario 7).
const FLOOD_REQUESTS: usize = 100_000;

/// Raw streams the flood is spread over.
const FLOOD_STREAMS: usize = 4;

/// Streams opened and never used (scenario 8).
const IDLE_STREAMS: usize = 10_000;

/// Requests pipelined by the attacker that never reads (scenario 9): 16 MB
/// of headers.
const NOREAD_REQUESTS: usize = 1_000_000;

// ---------------------------------------------------------------------------
// Harness: panics, turns, RSS
// ---------------------------------------------------------------------------

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// One test at a time, so RSS figures are per scenario.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn count_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Runs one scenario: in turn, under [`TEST_TIMEOUT`], and failing if
/// anything in the process panicked meanwhile (spawned tasks included).
async fn scenario<F: Future<Output = ()>>(name: &str, test: F) {
    count_panics();
    let _turn = TURN.lock().await;
    let panics = PANICS.load(Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("{name}: timed out after {TEST_TIMEOUT:?}"));
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics,
        "{name}: something panicked during the scenario"
    );
    eprintln!("[hostile] {name}: done in {:?}", started.elapsed());
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples RSS every 10 ms from its start, keeping the peak.
struct RssWatch {
    before: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl RssWatch {
    fn start() -> Self {
        let before = rss_kib();
        let peak = Arc::new(AtomicU64::new(before));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self {
            before,
            peak,
            stop,
            task,
        }
    }

    /// Prints before / peak / after and checks the growth bound.
    async fn finish(self, name: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let after = rss_kib();
        let peak = self.peak.load(Ordering::Relaxed).max(after);
        eprintln!(
            "[hostile] {name}: RSS before {} KiB, peak {} KiB, after {} KiB (peak growth {} KiB)",
            self.before,
            peak,
            after,
            peak.saturating_sub(self.before)
        );
        assert!(
            peak.saturating_sub(self.before) < RSS_BOUND_KIB,
            "{name}: RSS grew from {} KiB to a peak of {peak} KiB",
            self.before
        );
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Nodes: server, attacker, well-behaved client
// ---------------------------------------------------------------------------

fn tcp() -> NodeConfig {
    let addr = Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0));
    NodeConfig::default().with_listen_addrs([addr])
}

struct Env {
    server_node: Node,
    server: Server,
    attacker: Node,
    good_node: Node,
    good: Client,
}

impl Env {
    /// A server node echoing on [`ECHO`] (after `delay`), an attacker node
    /// and a client node that know its address; the client is warmed up.
    async fn new(config: ServerConfig, delay: Duration) -> Env {
        let server_node = Node::new(tcp()).await.expect("server node");
        let server = Server::new(&server_node, config).expect("server config");
        server
            .start(ECHO, move |_peer, body: Bytes| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, String>(body)
            })
            .expect("start");
        let attacker = Node::new(tcp()).await.expect("attacker node");
        let good_node = Node::new(tcp()).await.expect("client node");
        for addr in server_node.listen_addrs() {
            attacker.add_address(server_node.peer_id(), addr.clone());
            good_node.add_address(server_node.peer_id(), addr);
        }
        // No retries: every failure of the well-behaved peer shows.
        let good = Client::new(&good_node, ClientConfig::default().with_max_retries(0))
            .expect("client config");
        let env = Env {
            server_node,
            server,
            attacker,
            good_node,
            good,
        };
        env.good_request("warm-up").await;
        env
    }

    fn server_peer(&self) -> PeerId {
        self.server_node.peer_id()
    }

    /// One request of the well-behaved client, which must succeed.
    async fn good_request(&self, body: &str) {
        let reply = self
            .good
            .send(self.server_peer(), ECHO, Bytes::from(body.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("well-behaved request {body:?} failed: {e}"));
        assert_eq!(&reply[..], body.as_bytes());
    }

    /// A raw stream from the attacker on the pointsub protocol.
    async fn attack_stream(&self) -> Attack {
        let mut conn = self
            .attacker
            .dial(self.server_peer(), ECHO)
            .await
            .expect("attacker opens the pointsub protocol");
        conn.set_read_timeout(None);
        conn.set_write_timeout(Some(Duration::from_secs(20)));
        Attack::new(conn)
    }

    /// The server's inbound streams from `peer`.
    fn streams_of(&self, peer: PeerId) -> usize {
        self.server
            .connections_info()
            .iter()
            .filter(|c| c.peer == peer)
            .count()
    }

    /// Waits until the server holds no stream of the attacker.
    async fn attacker_streams_gone(&self, within: Duration) -> bool {
        let attacker = self.attacker.peer_id();
        eventually(within, || self.streams_of(attacker) == 0).await
    }

    /// Starts `workers` loops of well-behaved requests.
    /// Starts watching a scenario with `workers` well-behaved request loops.
    fn watch(&self, workers: usize) -> Watch {
        Watch {
            before: self.server.metrics(),
            rss: RssWatch::start(),
            load: self.good_load(workers),
        }
    }

    fn good_load(&self, workers: usize) -> GoodLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|w| {
                let (client, peer, stop) = (self.good.clone(), self.server_peer(), stop.clone());
                tokio::spawn(async move {
                    let (mut done, mut slowest) = (0u64, Duration::ZERO);
                    while !stop.load(Ordering::Relaxed) {
                        let body = Bytes::from(format!("good {w} {done}"));
                        let t = Instant::now();
                        match client.send(peer, ECHO, body.clone()).await {
                            Ok(reply) if reply == body => {}
                            Ok(reply) => return Err(format!("wrong reply {reply:?} to {body:?}")),
                            Err(e) => return Err(format!("request {done} of worker {w}: {e}")),
                        }
                        slowest = slowest.max(t.elapsed());
                        done += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok((done, slowest))
                })
            })
            .collect();
        GoodLoad { stop, tasks }
    }
}

/// The well-behaved client's requests running during an attack.
/// What a scenario watches while the attack runs: the server's counters
/// before it, the process's memory, and the well-behaved client's load.
struct Watch {
    before: ServerMetrics,
    rss: RssWatch,
    load: GoodLoad,
}

impl Watch {
    /// Ends the scenario: the good load must have succeeded throughout, one
    /// more good request must succeed, memory must have stayed bounded.
    /// Returns the server's counters before the attack and right after it.
    async fn end(self, env: &Env, name: &str, label: &str) -> (ServerMetrics, ServerMetrics) {
        self.load.finish(name).await;
        let after = env.server.metrics();
        eprintln!("[hostile] {name}: {}", delta(&self.before, &after));
        env.good_request(label).await;
        self.rss.finish(name).await;
        (self.before, after)
    }
}

struct GoodLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Result<(u64, Duration), String>>>,
}

impl GoodLoad {
    /// Stops the loops; every request must have succeeded.
    async fn finish(self, name: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (mut total, mut slowest) = (0, Duration::ZERO);
        for t in self.tasks {
            let (n, s) = t
                .await
                .expect("good worker task")
                .unwrap_or_else(|e| panic!("{name}: a well-behaved request failed: {e}"));
            total += n;
            slowest = slowest.max(s);
        }
        eprintln!(
            "[hostile] {name}: {total} well-behaved requests during the attack, all ok (slowest {slowest:?})"
        );
        assert!(total > 0, "{name}: no well-behaved request ran");
        total
    }
}

// ---------------------------------------------------------------------------
// The attacker's raw stream
// ---------------------------------------------------------------------------

/// How reading the attacker's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// End of stream (a close, or a yamux reset, which reads the same).
    Eof,
    /// A read error.
    Error(std::io::ErrorKind),
    /// Still open when the wait ran out.
    StillOpen,
}

impl End {
    fn closed(&self) -> bool {
        !matches!(self, End::StillOpen)
    }
}

/// Reads frames from a stream whatever the attacker writes.
struct Reader<R> {
    io: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(io: R) -> Self {
        Self {
            io,
            decoder: FrameDecoder::new(MAX_FRAME_PAYLOAD),
            buf: vec![0; 64 * 1024],
        }
    }

    /// The next frame, or how the stream ended first.
    async fn frame(&mut self, within: Duration) -> Result<Frame, End> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(f) = self.decoder.next_frame().expect("server sent a bad frame") {
                return Ok(f);
            }
            match tokio::time::timeout_at(deadline, self.io.read(&mut self.buf)).await {
                Err(_) => return Err(End::StillOpen),
                Ok(Ok(0)) => return Err(End::Eof),
                Ok(Ok(n)) => self.decoder.push(&self.buf[..n]),
                Ok(Err(e)) => return Err(End::Error(e.kind())),
            }
        }
    }

    /// Every frame until the stream ends (or `within` passes).
    async fn read_to_end(&mut self, within: Duration) -> (Vec<Frame>, End) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame(left).await {
                Ok(f) => frames.push(f),
                Err(end) => {
                    assert_eq!(self.decoder.buffered(), 0, "stream ended mid-frame");
                    return (frames, end);
                }
            }
        }
    }
}

/// The attacker's raw stream on the pointsub protocol.
struct Attack {
    reader: Reader<Conn>,
}

impl Attack {
    fn new(conn: Conn) -> Self {
        Self {
            reader: Reader::new(conn),
        }
    }

    fn conn(&mut self) -> &mut Conn {
        &mut self.reader.io
    }

    fn into_conn(self) -> Conn {
        self.reader.io
    }

    /// Writes bytes; the error if the stream refuses them.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.conn().write_all(bytes).await?;
        self.conn().flush().await
    }

    /// Reads the answer frames until the stream ends.
    async fn read_to_end(mut self, within: Duration) -> (Vec<Frame>, End) {
        self.reader.read_to_end(within).await
    }

    /// The next answer frame.
    async fn frame(&mut self, within: Duration) -> Result<Frame, End> {
        self.reader.frame(within).await
    }
}

/// One request frame.
fn request(id: u64, flags: Flags, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    frame::encode_frame(&mut b, FrameKind::Request, flags, id, body);
    b
}

/// A raw 16-byte header, any field any value.
fn raw_header(version: u8, kind: u8, flags: u8, id: u64, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = version;
    h[1] = kind;
    h[2] = flags;
    h[4..12].copy_from_slice(&id.to_be_bytes());
    h[12..16].copy_from_slice(&len.to_be_bytes());
    h
}

/// The code and message of an Error frame.
fn error_of(f: &Frame) -> Option<(ErrorCode, String)> {
    (f.header.kind == FrameKind::Error).then(|| frame::decode_error_body(&f.payload))
}

/// Exactly one Error frame with `code`, then the stream closed.
fn assert_one_error(name: &str, frames: &[Frame], end: &End, code: ErrorCode) -> String {
    assert!(
        end.closed(),
        "{name}: the server kept the stream open ({end:?})"
    );
    assert_eq!(frames.len(), 1, "{name}: answers {frames:?}");
    let (got, msg) = error_of(&frames[0]).unwrap_or_else(|| panic!("{name}: {:?}", frames[0]));
    assert_eq!(got, code, "{name}: error {msg:?}");
    msg
}

fn delta(before: &ServerMetrics, after: &ServerMetrics) -> String {
    format!(
        "requests +{}, succeeded +{}, failed +{}, rejected_busy +{}, streams_accepted +{}, \
         streams_refused +{}, protocol_errors +{}, bytes_read +{}",
        after.requests - before.requests,
        after.succeeded - before.succeeded,
        after.failed - before.failed,
        after.rejected_busy - before.rejected_busy,
        after.streams_accepted - before.streams_accepted,
        after.streams_refused - before.streams_refused,
        after.protocol_errors - before.protocol_errors,
        after.bytes_read - before.bytes_read,
    )
}

/// A raw deflate stream (one dynamic-Huffman block) inflating to
/// `1 + 258 * repeats` zero bytes at 2 bits per 258 bytes: a literal 0,
/// then `repeats` copies of "length 258, distance 1".
fn deflate_bomb(repeats: usize) -> Vec<u8> {
    #[derive(Default)]
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// `count` bits of `value`, least significant first (header fields).
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code: most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            for i in (0..len).rev() {
                self.put((code >> i) & 1, 1);
            }
        }
        /// `n` zero code lengths, with code-length symbol 18 (code "0").
        fn zero_lengths(&mut self, mut n: u32) {
            while n > 0 {
                let k = n.min(138);
                assert!(k >= 11);
                self.code(0, 1);
                self.put(k - 11, 7);
                n -= k;
            }
        }
    }
    let mut w = Bits::default();
    w.put(1, 1); // BFINAL
    w.put(2, 2); // BTYPE: dynamic Huffman
    w.put(286 - 257, 5); // HLIT
    w.put(0, 5); // HDIST: one distance code
    w.put(18 - 4, 4); // HCLEN
    // Code-length code lengths, in the order 16 17 18 0 8 7 9 6 10 5 11 4
    // 12 3 13 2 14 1: symbol 18 gets 1 bit ("0"), 1 and 2 get 2 bits
    // ("10", "11").
    for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        w.put(len, 3);
    }
    // Literal/length code: 0 and 256 get 2 bits ("10", "11"), 285 gets 1 ("0").
    w.code(0b11, 2); // symbol 0: length 2
    w.zero_lengths(255); // 1..=255
    w.code(0b11, 2); // 256: length 2
    w.zero_lengths(28); // 257..=284
    w.code(0b10, 2); // 285: length 1
    // Distance code: only distance 1, one bit ("0").
    w.code(0b10, 2);
    w.code(0b10, 2); // literal 0
    for _ in 0..repeats {
        w.put(0, 2); // length 258 ("0"), distance 1 ("0")
    }
    w.code(0b11, 2); // end of block
    if w.n > 0 {
        w.out.push(w.acc as u8);
    }
    w.out
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// 1. 4 KiB of random bytes on the pointsub stream: a Protocol error
///    answer, then the stream closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_get_a_protocol_error_and_the_stream_closes() {
    let name = "1 garbage";
    scenario(name, async {
        let env = Env::new(ServerConfig::default(), Duration::ZERO).await;
        let watch = env.watch(2);

        let mut attack = env.attack_stream().await;
        let garbage = noise(0x5eed, 4096);
        let wrote = attack.send(&garbage).await;
        let (frames, end) = attack.read_to_end(Duration::from_secs(10)).await;
        let msg = assert_one_error(name, &frames, &end, ErrorCode::Protocol);
        eprintln!("[hostile] {name}: write {wrote:?}; answer Protocol error {msg:?}; then {end:?}");
        assert!(env.attacker_streams_gone(Duration::from_secs(5)).await);

        let (before, after) = watch.end(&env, name, "after garbage").await;
        assert_eq!(after.protocol_errors - before.protocol_errors, 1);
    })
    .await;
}

/// 2. A header announcing 1000 bytes, 10 sent, then silence: the read
///    timeout (500 ms) resets the stream; nothing is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_silence_is_cut_by_the_read_timeout() {
    let name = "2 truncated";
    scenario(name, async {
        let read_timeout = Duration::from_millis(500);
        let config = ServerConfig::default().with_read_timeout(read_timeout);
        let env = Env::new(config, Duration::ZERO).await;
        let watch = env.watch(2);

        let mut attack = env.attack_stream().await;
        let mut bytes = raw_header(1, 1, 0, 1, 1000).to_vec();
        bytes.extend_from_slice(&[7; 10]);
        attack
            .send(&bytes)
            .await
            .expect("write the truncated frame");
        let sent = Instant::now();
        let (frames, end) = attack.read_to_end(Duration::from_secs(10)).await;
        let closed_after = sent.elapsed();
        eprintln!(
            "[hostile] {name}: stream ended {end:?} after {closed_after:?}, answers {frames:?}"
        );
        assert!(end.closed(), "{name}: stream still open");
        assert!(frames.is_empty(), "{name}: unexpected answers {frames:?}");
        assert!(
            closed_after >= read_timeout - Duration::from_millis(100),
            "{name}: closed before the read timeout ({closed_after:?})"
        );
        assert!(
            closed_after < Duration::from_secs(5),
            "{name}: closed late ({closed_after:?})"
        );
        assert!(env.attacker_streams_gone(Duration::from_secs(5)).await);

        let (before, after) = watch.end(&env, name, "after truncated").await;
        assert_eq!(after.protocol_errors, before.protocol_errors);
        assert_eq!(
            after.requests - before.requests,
            after.succeeded - before.succeeded
        );
    })
    .await;
}

/// 3. A payload length of 4 GiB - 1: refused from the header alone
///    (FrameTooLarge, a Protocol error answer), nothing allocated for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gib_length_prefix_is_refused_without_allocating() {
    let name = "3 4GiB length";
    scenario(name, async {
        let env = Env::new(ServerConfig::default(), Duration::ZERO).await;
        let watch = env.watch(2);

        let mut attack = env.attack_stream().await;
        attack
            .send(&raw_header(1, 1, 0, 1, u32::MAX))
            .await
            .expect("write the header");
        // Then payload bytes, as if the 4 GiB were on their way (less than
        // the yamux window: the server stops reading, so more would block).
        let wrote = attack.send(&vec![0xAB; 128 << 10]).await;
        let (frames, end) = attack.read_to_end(Duration::from_secs(10)).await;
        let msg = assert_one_error(name, &frames, &end, ErrorCode::Protocol);
        eprintln!("[hostile] {name}: payload write {wrote:?}; answer {msg:?}; then {end:?}");
        assert!(msg.contains("4294967295"), "{name}: {msg}");
        assert!(env.attacker_streams_gone(Duration::from_secs(5)).await);

        let (before, after) = watch.end(&env, name, "after 4 GiB").await;
        assert_eq!(after.protocol_errors - before.protocol_errors, 1);
    })
    .await;
}

/// 4. A compressed request of ~100 KiB inflating to 100 MiB, against a
///    1 MiB block size: an Oversize answer, the stream stays usable, memory
///    bounded by the block size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_bomb_is_answered_oversize_with_bounded_memory() {
    let name = "4 deflate bomb";
    scenario(name, async {
        // The bomb is valid deflate (checked small) and really a bomb.
        let small = deflate_bomb(10);
        assert_eq!(
            compress::decompress(&small, 1 << 20).expect("valid deflate"),
            vec![0u8; 1 + 2580]
        );
        let repeats = (100 << 20) / 258;
        let bomb = deflate_bomb(repeats);
        let limit = 1 << 20;
        assert!(compress::decompress(&bomb, limit).is_err());
        eprintln!(
            "[hostile] {name}: {} bytes of deflate inflating to {} bytes",
            bomb.len(),
            1 + 258 * repeats
        );

        let config = ServerConfig::default().with_max_block_size(limit);
        let env = Env::new(config, Duration::ZERO).await;
        let watch = env.watch(2);

        let mut attack = env.attack_stream().await;
        let flags = Flags::COMPRESSED.with(Flags::ACCEPT_DEFLATE);
        attack
            .send(&request(7, flags, &bomb))
            .await
            .expect("write the bomb");
        let answer = attack.frame(Duration::from_secs(10)).await.expect("answer");
        let (code, msg) = error_of(&answer).unwrap_or_else(|| panic!("{name}: {answer:?}"));
        assert_eq!(answer.header.request_id, 7);
        assert_eq!(code, ErrorCode::Oversize, "{name}: {msg}");
        eprintln!("[hostile] {name}: answered {code:?} {msg:?}");
        // Several bombs in a row cost no more.
        for id in 8..12 {
            attack.send(&request(id, flags, &bomb)).await.expect("bomb");
            let f = attack.frame(Duration::from_secs(10)).await.expect("answer");
            assert_eq!(error_of(&f).map(|e| e.0), Some(ErrorCode::Oversize));
        }
        // The stream is still usable.
        attack
            .send(&request(20, Flags::empty(), b"still here"))
            .await
            .expect("write");
        let f = attack.frame(Duration::from_secs(10)).await.expect("echo");
        assert_eq!(f.header.kind, FrameKind::Response, "{name}: {f:?}");
        assert_eq!(&f.payload[..], b"still here");
        attack.conn().shutdown().await.expect("close our side");
        let (frames, end) = attack.read_to_end(Duration::from_secs(10)).await;
        assert!(frames.is_empty() && end.closed(), "{frames:?} {end:?}");

        let (before, after) = watch.end(&env, name, "after the bomb").await;
        assert_eq!(after.protocol_errors, before.protocol_errors);
        assert!(after.failed - before.failed >= 5);
    })
    .await;
}

/// 5. A frame with a version other than 1: a Protocol error answer, then
///    the stream closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version_gets_a_protocol_error() {
    let name = "5 wrong version";
    scenario(name, async {
        let env = Env::new(ServerConfig::default(), Duration::ZERO).await;
        let watch = env.watch(2);

        for version in [0u8, 2, 255] {
            let mut attack = env.attack_stream().await;
            let mut bytes = raw_header(version, 1, 0, 1, 5).to_vec();
            bytes.extend_from_slice(b"hello");
            attack.send(&bytes).await.expect("write");
            let (frames, end) = attack.read_to_end(Duration::from_secs(10)).await;
            let msg = assert_one_error(name, &frames, &end, ErrorCode::Protocol);
            eprintln!("[hostile] {name}: version {version}: {msg:?}, then {end:?}");
            assert!(msg.contains("version"), "{name}: {msg}");
        }
        assert!(env.attacker_streams_gone(Duration::from_secs(5)).await);

        let (before, after) = watch.end(&env, name, "after wrong versions").await;
        assert_eq!(after.protocol_errors - before.protocol_errors, 3);
    })
    .await;
}

/// 6. Slowloris: a valid request one byte every 100 ms against a 1 s read
///    timeout: the stream is reset before the request completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_by_the_read_timeout() {
    let name = "6 slowloris";
    scenario(name, async {
        let read_timeout = Duration::from_secs(1);
        let config = ServerConfig::default().with_read_timeout(read_timeout);
        let env = Env::new(config, Duration::ZERO).await;
        let watch = env.watch(2);

        let attack = env.attack_stream().await;
        let (read_half, mut write_half) = tokio::io::split(attack.into_conn());
        let reader = tokio::spawn(async move {
            let mut r = Reader::new(read_half);
            let out = r.read_to_end(Duration::from_secs(20)).await;
            (out, Instant::now())
        });
        let req = request(1, Flags::empty(), &[b'x'; 40]);
        let started = Instant::now();
        let mut sent = 0;
        for &b in req.iter() {
            if reader.is_finished() {
                break;
            }
            if write_half.write_all(&[b]).await.is_err() || write_half.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ((frames, end), ended) = reader.await.expect("reader");
        let cut_after = ended - started;
        eprintln!(
            "[hostile] {name}: {sent} of {} bytes sent; stream ended {end:?} after {cut_after:?}",
            req.len()
        );
        assert!(end.closed(), "{name}: never closed");
        assert!(frames.is_empty(), "{name}: answers {frames:?}");
        assert!(sent < req.len(), "{name}: the whole request went through");
        assert!(
            cut_after >= read_timeout - Duration::from_millis(150)
                && cut_after < read_timeout + Duration::from_secs(2),
            "{name}: cut after {cut_after:?}"
        );
        assert!(env.attacker_streams_gone(Duration::from_secs(5)).await);

        let (before, after) = watch.end(&env, name, "after slowloris").await;
        assert_eq!(after.protocol_errors, before.protocol_errors);
    })
    .await;
}

/// What one flood stream got back.
#[derive(Debug, Default)]
struct FloodTally {
    responses: usize,
    busy: usize,
    other: BTreeMap<String, usize>,
    end: Option<String>,
}

/// 7. 100,000 requests pipelined on a few raw streams while answers are
///    read concurrently: each is answered (a response or Busy), the
///    per-peer cap keeps the attacker to 50 of the 200 slots, and the
///    well-behaved client (no retries) never sees Busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_flood_is_shed_with_busy_and_others_are_served() {
    let name = "7 flood";
    scenario(name, async {
        let config = ServerConfig::default()
            .with_max_concurrent_conns(200)
            .with_min_concurrent_conns(100)
            .with_max_concurrent_limit(200)
            .with_max_per_peer(50);
        let env = Env::new(config, Duration::from_millis(1)).await;
        let watch = env.watch(2);

        // The most requests the server handles at once during the flood.
        let stop_sampling = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (server, stop) = (env.server.clone(), stop_sampling.clone());
            async move {
                let mut most = 0;
                while !stop.load(Ordering::Relaxed) {
                    most = most.max(server.active());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                most
            }
        });
        let per_stream = FLOOD_REQUESTS / FLOOD_STREAMS;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..FLOOD_STREAMS {
            let attack = env.attack_stream().await;
            let (read_half, mut write_half) = tokio::io::split(attack.into_conn());
            let writer = tokio::spawn(async move {
                let mut id = 1u64;
                while id <= per_stream as u64 {
                    let mut batch = BytesMut::new();
                    for _ in 0..1000 {
                        if id > per_stream as u64 {
                            break;
                        }
                        let body = (s as u64 * 1_000_000 + id).to_be_bytes();
                        frame::encode_frame(
                            &mut batch,
                            FrameKind::Request,
                            Flags::empty(),
                            id,
                            &body,
                        );
                        id += 1;
                    }
                    if let Err(e) = write_half.write_all(&batch).await {
                        return Err(e.to_string());
                    }
                }
                write_half.flush().await.map_err(|e| e.to_string())?;
                Ok(write_half)
            });
            let reader = tokio::spawn(async move {
                let mut r = Reader::new(read_half);
                let mut tally = FloodTally::default();
                while tally.responses + tally.busy + tally.other.values().sum::<usize>()
                    < per_stream
                {
                    match r.frame(Duration::from_secs(30)).await {
                        Ok(f) => match (f.header.kind, error_of(&f)) {
                            (FrameKind::Response, _) => tally.responses += 1,
                            (_, Some((ErrorCode::Busy, _))) => tally.busy += 1,
                            (_, Some((code, msg))) => {
                                *tally.other.entry(format!("{code:?}: {msg}")).or_default() += 1
                            }
                            (kind, None) => {
                                *tally.other.entry(format!("{kind:?}")).or_default() += 1
                            }
                        },
                        Err(end) => {
                            tally.end = Some(format!("{end:?}"));
                            break;
                        }
                    }
                }
                tally
            });
            tasks.push((writer, reader));
        }
        let mut total = FloodTally::default();
        for (writer, reader) in tasks {
            let write_half = writer.await.expect("writer").expect("flood written");
            let tally = reader.await.expect("reader");
            drop(write_half);
            assert_eq!(
                tally.end, None,
                "{name}: a flood stream ended early: {tally:?}"
            );
            assert!(
                tally.other.is_empty(),
                "{name}: unexpected answers {tally:?}"
            );
            assert_eq!(tally.responses + tally.busy, per_stream);
            total.responses += tally.responses;
            total.busy += tally.busy;
        }
        let took = started.elapsed();
        eprintln!(
            "[hostile] {name}: {} requests on {FLOOD_STREAMS} streams in {took:?} ({:.0}/s): \
             {} responses, {} busy",
            per_stream * FLOOD_STREAMS,
            (per_stream * FLOOD_STREAMS) as f64 / took.as_secs_f64(),
            total.responses,
            total.busy
        );

        stop_sampling.store(true, Ordering::Relaxed);
        let most_active = sampler.await.expect("sampler");
        eprintln!("[hostile] {name}: at most {most_active} requests handled at once");
        // The attacker's 50, plus the good client's (2 workers).
        assert!(most_active <= 50 + 2, "{name}: {most_active} active");

        let (before, after) = watch.end(&env, name, "after the flood").await;
        assert!(total.responses > 0 && total.busy > 0);
        // Every Busy went to the attacker: the good client never got one.
        assert_eq!(
            after.rejected_busy - before.rejected_busy,
            total.busy as u64
        );
        assert_eq!(after.protocol_errors, before.protocol_errors);
        assert!(env.attacker_streams_gone(Duration::from_secs(10)).await);
    })
    .await;
}

/// 8. Thousands of streams opened and never used: the per-peer stream cap
///    (256) refuses the excess, the good client is unaffected, and once the
///    attacker disconnects the server holds only the good client's streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_flood_is_capped_per_peer_and_drains() {
    let name = "8 idle streams";
    scenario(name, async {
        let cap = 256;
        let config = ServerConfig::default().with_max_streams_per_peer(cap);
        let env = Env::new(config, Duration::ZERO).await;
        let watch = env.watch(2);

        let attacker = env.attacker.peer_id();
        let mut held = Vec::new();
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        let mut max_held_by_server = 0;
        let started = Instant::now();
        let batch = 128;
        let mut opened = 0;
        while opened < IDLE_STREAMS {
            let n = batch.min(IDLE_STREAMS - opened);
            let dials = (0..n).map(|_| env.attacker.dial(env.server_peer(), ECHO));
            for result in futures::future::join_all(dials).await {
                match result {
                    Ok(conn) => held.push(conn),
                    Err(e) => *failures.entry(e.to_string()).or_default() += 1,
                }
            }
            opened += n;
            max_held_by_server = max_held_by_server.max(env.streams_of(attacker));
        }
        let took = started.elapsed();
        let mid = env.server.metrics();
        eprintln!(
            "[hostile] {name}: {IDLE_STREAMS} opens in {took:?}: {} ok, failures {failures:?}; \
             server held at most {max_held_by_server} attacker streams; {}",
            held.len(),
            delta(&watch.before, &mid)
        );
        assert!(max_held_by_server <= cap, "{name}: {max_held_by_server} > {cap}");
        assert!(
            mid.streams_refused - watch.before.streams_refused > 0,
            "{name}: nothing refused"
        );
        env.good_request("during the idle streams").await;

        // The attacker leaves.
        drop(held);
        env.attacker.shutdown();
        let drained = env.attacker_streams_gone(Duration::from_secs(15)).await;
        let left: Vec<_> = env.server.connections_info();
        eprintln!(
            "[hostile] {name}: after the attacker left: drained {drained}, {} streams left ({} of the good client)",
            left.len(),
            left.iter().filter(|c| c.peer == env.good_node.peer_id()).count()
        );
        assert!(drained, "{name}: attacker streams still held");
        assert!(left.iter().all(|c| c.peer == env.good_node.peer_id()));

        watch.end(&env, name, "after the idle streams").await;
    })
    .await;
}

/// 9. A flood whose answers are never read: the attacker pipelines
///    requests on one stream and never reads. Each request is tiny (16
///    bytes); each answer (Busy, or the echo) is queued on the server. The
///    server must push back (stop reading the stream once its answers back
///    up) or drop the stream, so memory stays bounded however long the
///    attacker keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_do_not_grow_server_memory() {
    let name = "9 flood, answers never read";
    scenario(name, async {
        let config = ServerConfig::default().with_max_per_peer(50);
        let env = Env::new(config, Duration::from_millis(1)).await;
        let before = env.server.metrics();
        let rss = RssWatch::start();
        let load = env.good_load(2);

        let mut attack = env.attack_stream().await;
        let batch_len = 10_000;
        let mut sent = 0;
        let mut blocked = false;
        let started = Instant::now();
        while sent < NOREAD_REQUESTS {
            let mut batch = BytesMut::new();
            for id in sent..sent + batch_len {
                frame::encode_frame(
                    &mut batch,
                    FrameKind::Request,
                    Flags::empty(),
                    id as u64,
                    b"",
                );
            }
            // Backpressure shows as a write that cannot finish.
            match tokio::time::timeout(Duration::from_secs(2), attack.send(&batch)).await {
                Ok(Ok(())) => sent += batch_len,
                Ok(Err(e)) => {
                    eprintln!("[hostile] {name}: write failed: {e}");
                    break;
                }
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mid = env.server.metrics();
        eprintln!(
            "[hostile] {name}: {sent} requests ({} MB) written in {took:?}, writes blocked: \
             {blocked}; {}",
            sent * HEADER_LEN / 1_000_000,
            delta(&before, &mid)
        );
        env.good_request("during the unread flood").await;
        load.finish(name).await;
        // Measure before the attacker leaves: that is when it would hurt.
        rss.finish(name).await;
        drop(attack);
        assert!(env.attacker_streams_gone(Duration::from_secs(10)).await);
        env.good_request("after the unread flood").await;
    })
    .await;
}
