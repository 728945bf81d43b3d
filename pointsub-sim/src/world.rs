//! The simulated world: nodes running the real cores, the network between
//! them, the workload, the fault injector and the invariant checks.
//!
//! One thread, one RNG ([`pointsub_proto::retry::Rng`], seeded from the
//! options), virtual time in nanoseconds. Events sit in a binary heap keyed
//! by `(time, sequence)`, so ties run in the order they were scheduled and
//! the run is a pure function of the options.

use crate::body::{self, HandlerKind};
use crate::options::SimOptions;
use crate::report::{FaultCounts, Report, Violation};
use crate::trace::{TraceHash, tag};
use crate::wire::FrameTrack;
use bytes::Bytes;
use pointsub_proto::compress::{self, DecompressError};
use pointsub_proto::error::Side;
use pointsub_proto::retry::Rng;
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, ClosestOptions, Instant, OpenFailure, PeerKey, Protocol,
    RequestError, RequestId, SendOptions, Server, ServerConfig, ServerError, ServerEvent, StreamId,
    Transmit,
};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const NEVER: u64 = u64::MAX;

/// The protocols every world serves, and what their handlers do.
const PROTOCOLS: [(&str, HandlerKind); 3] = [
    ("/sim/echo/1", HandlerKind::Echo),
    ("/sim/digest/1", HandlerKind::Digest),
    ("/sim/store/1", HandlerKind::Echo),
];

/// Suffix of every simulated peer key; the node index comes first (4 bytes,
/// big endian) so key comparisons end early.
const KEY_SUFFIX: &[u8] = b"/sim";

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NEVER)
}

fn key_of(idx: u32) -> PeerKey {
    let mut v = idx.to_be_bytes().to_vec();
    v.extend_from_slice(KEY_SUFFIX);
    PeerKey::from(v)
}

fn index_of(key: &PeerKey) -> Option<u32> {
    let b = key.as_bytes();
    if b.len() != 4 + KEY_SUFFIX.len() || !b.ends_with(KEY_SUFFIX) {
        return None;
    }
    Some(u32::from_be_bytes(b[..4].try_into().ok()?))
}

/// The run's single source of randomness.
struct SimRng(Rng);

impl SimRng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    /// Uniform in `[lo, hi)` (`lo` if empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.0.below(hi - lo)
        }
    }
    fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// An event in the queue.
#[derive(Debug)]
enum Ev {
    /// The next workload arrival (safety or liveness phase).
    Arrival { live: bool },
    /// One request of a burst, from `client` straight to `server`.
    BurstReq { client: u32, server: u32, proto: u8 },
    /// A stream open reaches the server.
    OpenArrive { sim: u64 },
    /// Bytes arrive at one end of a stream.
    Deliver {
        sim: u64,
        to_server: bool,
        data: Bytes,
    },
    /// The other end closed (or reset) its side; ordered after its data.
    Fin {
        sim: u64,
        to_server: bool,
        reset: bool,
    },
    /// The other end crashed: the survivor's side resets.
    PeerGone { sim: u64 },
    /// A handler finished.
    HandlerDone {
        node: u32,
        epoch: u32,
        stream: StreamId,
        rid: u64,
        result: Result<Bytes, String>,
    },
    /// The adapter finished inflating a request body the server core
    /// handed out (`ServerEvent::Inflate`).
    ServerInflated {
        node: u32,
        epoch: u32,
        stream: StreamId,
        rid: u64,
        result: Result<Bytes, DecompressError>,
    },
    /// The adapter finished inflating a response body the client core
    /// handed out (`ClientEvent::Inflate`).
    ClientInflated {
        node: u32,
        epoch: u32,
        id: RequestId,
        peer: PeerKey,
        result: Result<Bytes, DecompressError>,
    },
    /// A node's earliest core deadline.
    Wake { node: u32, epoch: u32 },
    /// The user cancels a request.
    Cancel {
        node: u32,
        epoch: u32,
        id: RequestId,
    },
    /// A partition ends.
    Heal { generation: u64 },
    /// A crashed node comes back.
    Restart { node: u32 },
    /// Periodic check that no request outlives its bound.
    Sweep,
    /// Start of the liveness phase.
    LivenessStart,
}

/// A fixed, seedless hasher (FxHash style) for maps that are only looked
/// up, never iterated in an order that could reach the trace.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.add(x as u64);
    }
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// Stream id of a core -> simulated stream. A core hands out stream ids
/// from 1 upwards and never reuses one, so a vector indexed by id is a map.
#[derive(Default)]
struct IdMap {
    slots: Vec<u64>,
    len: usize,
}

impl IdMap {
    fn get(&self, k: &StreamId) -> Option<&u64> {
        self.slots.get(k.0 as usize).filter(|&&v| v != 0)
    }
    fn insert(&mut self, k: StreamId, v: u64) -> Option<u64> {
        debug_assert!(v != 0);
        let i = k.0 as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, 0);
        }
        let old = std::mem::replace(&mut self.slots[i], v);
        if old == 0 {
            self.len += 1;
            None
        } else {
            Some(old)
        }
    }
    fn remove(&mut self, k: &StreamId) -> Option<u64> {
        let slot = self.slots.get_mut(k.0 as usize)?;
        let old = std::mem::replace(slot, 0);
        if old == 0 {
            None
        } else {
            self.len -= 1;
            Some(old)
        }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
}

/// One stream between a client core and a server core.
struct SimStream {
    client: u32,
    cs: StreamId,
    /// The client core still knows the stream.
    c_open: bool,
    server: u32,
    ss: StreamId,
    /// The server core knows the stream.
    s_open: bool,
    proto: u8,
    /// The open reached the server and the client was told.
    established: bool,
    /// The open reached a dead server and was never answered.
    unanswered: bool,
    last_c2s: u64,
    last_s2c: u64,
    fr_c2s: FrameTrack,
    fr_s2c: FrameTrack,
}

struct Node {
    key: PeerKey,
    hash: [u8; 32],
    epoch: u32,
    up: bool,
    client: Client,
    server: Server,
    ccfg: ClientConfig,
    scfg: ServerConfig,
    serves: [bool; PROTOCOLS.len()],
    client_streams: IdMap,
    server_streams: IdMap,
    members: BTreeSet<u64>,
    wake_at: u64,
    /// Requests handed to this node's handlers and not answered yet.
    handlers: usize,
    /// Body bytes of every request handed to this node's handlers since it
    /// (re)started: what its server's statistics must count as received.
    handed_bytes: u64,
    /// Requests accepted by this node's client and not ended yet.
    pending: usize,
    slow_until: u64,
    fail_until: u64,
    side: u8,
    /// Upper bound on a request's lifetime under this node's client config.
    max_request_ns: u64,
    /// Wakes at the same instant in a row (livelock detector).
    same_wakes: u32,
    last_wake: u64,
}

struct Closest {
    key_hash: [u8; 32],
    routing_key: Option<Bytes>,
    exclude: Option<u32>,
    hedge: usize,
}

struct ReqInfo {
    body: Bytes,
    proto: u8,
    target: Option<u32>,
    closest: Option<Box<Closest>>,
    deadline: Option<u64>,
    started: u64,
    attempts_seen: u32,
    cancelled: bool,
    live: bool,
    expect_unsupported: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Workload with faults.
    Safety,
    /// No new requests or faults; waiting for requests to end and faults to heal.
    Drain,
    /// Waiting for cool-downs to pass before the liveness workload.
    Quiet,
    /// Liveness workload: every request must succeed.
    Liveness,
    /// Waiting for the liveness requests and every handler to finish.
    Final,
    /// Finished.
    Done,
}

/// Scenario parameters drawn from the seed.
struct Scenario {
    gap_ns: u64,
    handler_max_us: u64,
    closest_frac: f64,
    /// Share of handlers (when not slowed down) that answer at once.
    immediate_frac: f64,
    slow_max_ns: u64,
    /// One line describing what the seed drew.
    summary: String,
}

/// A simulated world; build it with [`World::new`] and run it with [`World::run`].
pub struct World {
    opts: SimOptions,
    rng: SimRng,
    now: u64,
    seq: u64,
    /// `(time, sequence, slot in `events`)`, earliest first.
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    events: Vec<Option<Ev>>,
    free_slots: Vec<u32>,
    nodes: Vec<Node>,
    protocols: Vec<Protocol>,
    serving: Vec<Vec<u32>>,
    streams: FxMap<u64, SimStream>,
    next_sim: u64,
    latency: Vec<u32>,
    pending: FxMap<(u32, u32, u64), ReqInfo>,
    trace: TraceHash,
    phase: Phase,
    submitted: u64,
    live_submitted: u64,
    accepted: u64,
    live_accepted: u64,
    partition_gen: u64,
    partitioned: bool,
    pool_random: Bytes,
    pool_text: Bytes,
    next_tag: u64,
    touched: Vec<u32>,
    admitted_in_step: Vec<u32>,
    /// A `ServerInflated` is being handled: the request its core emits was
    /// admitted before, not now.
    after_inflate: bool,
    violation: Option<(&'static str, String)>,
    steps: u64,
    scenario: Scenario,
    /// Smallest block size of any node (client or server): liveness bodies stay below it.
    min_block: usize,
    // statistics
    outcomes: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
    lost_in_crash: u64,
    attempts: u64,
    retries: u64,
    busy_answers: u64,
    latencies: Vec<u64>,
    admission_min: usize,
    admission_max: usize,
    faults: FaultCounts,
    streams_opened: u64,
    /// Bodies the adapter inflated (see `Report::inflated`).
    inflated: u64,
    frames: u64,
    log: bool,
}

impl World {
    /// Builds the world the options describe: draws the scenario, the
    /// configurations, the node sets and the link latencies from the seed.
    pub fn new(opts: SimOptions) -> Result<World, String> {
        opts.validate()?;
        let mut rng = SimRng(Rng::new(opts.seed));
        let n = opts.nodes;

        // ----- scenario -----
        let profile = rng.below(3);
        let scenario = Scenario {
            // Aggregate arrival rate of 20..100 requests per node and second.
            gap_ns: SEC / (n as u64 * rng.range(20, 100)),
            handler_max_us: rng.pick(&[200, 1_000, 3_000]),
            closest_frac: rng.pick(&[0.3, 0.5, 0.7]),
            immediate_frac: rng.pick(&[0.5, 0.8, 0.95]),
            slow_max_ns: rng.range(200 * MS, 8 * SEC),
            summary: String::new(),
        };
        let max_retries = rng.pick(&[0u32, 1, 2, 3, 3, 3, 5]);
        let retry_interval = rng.range(5 * MS, 200 * MS);
        let idle_timeout = rng.range(200 * MS, 60 * SEC);
        let cooldown_base = rng.range(50 * MS, SEC);
        // Some seeds stress the pool: too few streams for the peers (waiters,
        // evictions, pool timeouts) and few idle ones (churn). One in four in
        // small worlds; one in ten in large ones, where every client talks
        // to dozens of peers and such a pool is mostly a slow misconfiguration.
        let pool_stress = rng.chance(if n <= 32 { 0.25 } else { 0.1 });
        let max_total = if pool_stress {
            rng.pick(&[2usize, 4, 8, 16])
        } else {
            rng.pick(&[64usize, 100])
        };
        let base_client = ClientConfig::default()
            .with_max_retries(max_retries)
            .with_retry_interval(Duration::from_nanos(retry_interval))
            .with_max_backoff(Duration::from_nanos(retry_interval * rng.range(2, 20)))
            .with_connect_timeout(Duration::from_nanos(rng.range(300 * MS, 5 * SEC)))
            .with_read_timeout(Duration::from_nanos(rng.range(500 * MS, 10 * SEC)))
            .with_write_timeout(Duration::from_nanos(rng.range(SEC, 30 * SEC)))
            .with_pool_timeout(Duration::from_nanos(rng.range(500 * MS, 10 * SEC)))
            .with_max_total_conns(max_total)
            .with_max_idle_conns(if pool_stress {
                rng.range(1, max_total as u64 + 1) as usize
            } else {
                max_total
            })
            .with_idle_conn_timeout(Duration::from_nanos(idle_timeout))
            .with_max_inflight_per_stream(rng.range(1, 9) as usize)
            .with_spread_streams(rng.range(0, 4) as usize)
            .with_cooldown_base(Duration::from_nanos(cooldown_base))
            .with_cooldown_max(Duration::from_nanos(cooldown_base * rng.range(1, 30)))
            .with_retry_on_read_timeout(rng.chance(0.3))
            .with_compression_threshold(rng.pick(&[256usize, 1024, 4096]));
        let small_client_block = rng.chance(0.1);
        let mixed_server_block = rng.chance(0.3);
        let (initial, min, max) = match profile {
            0 => (1000, 100, 10_000),
            1 => (100, 50, 200),
            _ => (20, 8, 40),
        };
        let max_per_peer = if rng.chance(0.2) {
            rng.range(4, 64) as usize
        } else {
            500
        };
        let base_server = ServerConfig::default()
            .with_max_concurrent_conns(initial)
            .with_min_concurrent_conns(min)
            .with_max_concurrent_limit(max)
            .with_latency_tolerance(rng.pick(&[1.2, 1.5, 2.0]))
            .with_adjust_interval(Duration::from_nanos(rng.range(100 * MS, 2 * SEC)))
            .with_max_per_peer(max_per_peer)
            .with_read_timeout(Duration::from_nanos(rng.range(SEC, 30 * SEC)))
            .with_cleanup_interval(Duration::from_nanos(idle_timeout + 10 * SEC))
            .with_compression_threshold(rng.pick(&[256usize, 1024, 4096]));

        // ----- which node serves which protocol -----
        let mut serves = vec![[false; PROTOCOLS.len()]; n];
        let mut serving = vec![Vec::new(); PROTOCOLS.len()];
        for (p, list) in serving.iter_mut().enumerate() {
            // A handful of server nodes per protocol: 2 to 12.
            let want = rng.range(2, (n as u64).min(12) + 1) as usize;
            while list.len() < want {
                let i = rng.below(n as u64) as usize;
                if !serves[i][p] {
                    serves[i][p] = true;
                    list.push(i as u32);
                }
            }
            list.sort_unstable();
        }

        let mut scenario = scenario;
        scenario.summary = format!(
            "admission {initial} in [{min}, {max}], per peer {max_per_peer}; pool {} streams (idle {}) x {} requests, spread over {}, idle timeout {:.1} s; \
             {max_retries} retries from {:.0} ms; read timeout {:.1} s; {:.0} % closest; {} nodes per protocol; {:.0} requests/s",
            base_client.max_total_conns,
            base_client.max_idle_conns,
            base_client.max_inflight_per_stream,
            base_client.spread_streams,
            idle_timeout as f64 / 1e9,
            retry_interval as f64 / 1e6,
            base_client.read_timeout.as_secs_f64(),
            scenario.closest_frac * 100.0,
            serving
                .iter()
                .map(|l| l.len().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            SEC as f64 / scenario.gap_ns as f64,
        );

        // ----- nodes -----
        let protocols: Vec<Protocol> = PROTOCOLS.iter().map(|(p, _)| Protocol::from(*p)).collect();
        let mut nodes = Vec::with_capacity(n);
        let mut min_block = usize::MAX;
        for (i, node_serves) in serves.iter().enumerate() {
            let key = key_of(i as u32);
            let mut ccfg = base_client
                .clone()
                .with_compression(rng.chance(0.7))
                .with_seed(rng.next());
            if small_client_block && rng.chance(0.5) {
                ccfg = ccfg.with_max_block_size(1 << 20);
            }
            let mut scfg = base_server.clone().with_compression(rng.chance(0.7));
            if mixed_server_block && rng.chance(0.33) {
                scfg = scfg.with_max_block_size(256 * 1024);
            }
            min_block = min_block.min(ccfg.max_block_size).min(scfg.max_block_size);
            let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            let (client, server) = build_cores(
                &key,
                &ccfg,
                &scfg,
                node_serves,
                &protocols,
                &serving,
                i % 2 == 1,
            )?;
            let max_request_ns = request_bound(&ccfg);
            nodes.push(Node {
                key,
                hash,
                epoch: 0,
                up: true,
                client,
                server,
                ccfg,
                scfg,
                serves: *node_serves,
                client_streams: IdMap::default(),
                server_streams: IdMap::default(),
                members: BTreeSet::new(),
                wake_at: NEVER,
                handlers: 0,
                handed_bytes: 0,
                pending: 0,
                slow_until: 0,
                fail_until: 0,
                side: 0,
                max_request_ns,
                same_wakes: 0,
                last_wake: NEVER,
            });
        }

        // ----- links -----
        let mut latency = vec![0u32; n * n];
        for a in 0..n {
            for b in a + 1..n {
                let l = if rng.chance(0.1) {
                    rng.range(10 * MS, 60 * MS)
                } else {
                    rng.range(200 * US, 5 * MS)
                } as u32;
                latency[a * n + b] = l;
                latency[b * n + a] = l;
            }
        }

        // ----- body pools -----
        let pool_len = opts.max_body + 64 * 1024;
        let mut random = Vec::with_capacity(pool_len + 8);
        while random.len() < pool_len {
            random.extend_from_slice(&rng.next().to_le_bytes());
        }
        random.truncate(pool_len);
        let words: [&[u8]; 8] = [
            b"point ",
            b"sub ",
            b"stream ",
            b"request ",
            b"reply ",
            b"peer ",
            b"node ",
            b"frame ",
        ];
        let mut text = Vec::with_capacity(pool_len + 16);
        while text.len() < pool_len {
            text.extend_from_slice(words[rng.below(8) as usize]);
        }
        text.truncate(pool_len);

        let mut w = World {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_slots: Vec::new(),
            nodes,
            protocols,
            serving,
            streams: FxMap::default(),
            next_sim: 1,
            latency,
            pending: FxMap::default(),
            trace: TraceHash::new(),
            phase: Phase::Safety,
            submitted: 0,
            live_submitted: 0,
            accepted: 0,
            live_accepted: 0,
            partition_gen: 0,
            partitioned: false,
            pool_random: Bytes::from(random),
            pool_text: Bytes::from(text),
            next_tag: 1,
            touched: Vec::new(),
            admitted_in_step: Vec::new(),
            after_inflate: false,
            violation: None,
            steps: 0,
            scenario,
            min_block,
            outcomes: BTreeMap::new(),
            rejected: BTreeMap::new(),
            lost_in_crash: 0,
            attempts: 0,
            retries: 0,
            busy_answers: 0,
            latencies: Vec::new(),
            admission_min: usize::MAX,
            admission_max: 0,
            faults: FaultCounts::default(),
            streams_opened: 0,
            inflated: 0,
            frames: 0,
            log: false,
            opts,
        };
        w.trace
            .event(tag::PHASE, 0, &[w.opts.seed, n as u64, w.opts.requests]);
        Ok(w)
    }

    /// Prints every event and core output to stderr (for debugging a seed).
    pub fn set_log(&mut self, on: bool) {
        self.log = on;
    }

    // ===================================================================
    // The loop

    /// Runs both phases to the end. `Err` on the first broken invariant.
    pub fn run(mut self) -> Result<Report, Box<Violation>> {
        if self.opts.requests > 0 {
            self.schedule(0, Ev::Arrival { live: false });
        } else {
            self.phase = Phase::Drain;
        }
        self.schedule(SEC, Ev::Sweep);
        let mut same_time: u64 = 0;
        while self.phase != Phase::Done {
            let Some(Reverse((at, _, slot))) = self.queue.pop() else {
                self.fail(
                    "progress",
                    format!("event queue empty in phase {:?}", self.phase),
                );
                return Err(self.violation_report());
            };
            let ev = self.events[slot as usize].take().expect("scheduled event");
            self.free_slots.push(slot);
            if at < self.now {
                self.fail(
                    "virtual time",
                    format!("event at {at} before now {}", self.now),
                );
                return Err(self.violation_report());
            }
            if at == self.now {
                same_time += 1;
                if same_time > 2_000_000 {
                    self.fail(
                        "progress",
                        "two million events at one instant: livelock".into(),
                    );
                    return Err(self.violation_report());
                }
            } else {
                same_time = 0;
            }
            self.now = at;
            self.steps += 1;
            if self.log {
                self.log_event(&ev);
            }
            self.dispatch(ev);
            self.end_of_step();
            if self.violation.is_some() {
                return Err(self.violation_report());
            }
            self.advance_phase();
            if self.violation.is_some() {
                return Err(self.violation_report());
            }
        }
        Ok(self.report())
    }

    fn log_event(&self, ev: &Ev) {
        let t = self.now as f64 / 1e9;
        match ev {
            Ev::Deliver {
                sim,
                to_server,
                data,
            } => {
                eprintln!(
                    "{t:.6} #{} deliver sim {sim} to_server {to_server} {} bytes",
                    self.steps,
                    data.len()
                )
            }
            Ev::HandlerDone {
                node,
                stream,
                rid,
                result,
                ..
            } => eprintln!(
                "{t:.6} #{} handler done node {node} {stream} rid {rid} ok {}",
                self.steps,
                result.is_ok()
            ),
            other => eprintln!("{t:.6} #{} {other:?}", self.steps),
        }
    }

    fn log_client(&self, n: u32, ev: &ClientEvent) {
        let t = self.now as f64 / 1e9;
        match ev {
            ClientEvent::Completed {
                id,
                result,
                attempts,
            } => eprintln!(
                "{t:.6}   node {n} client: completed {id} after {attempts}: {:?}",
                result.as_ref().map(|r| (r.body.len(), index_of(&r.peer)))
            ),
            ClientEvent::AttemptStarted { id, peer, attempt } => {
                eprintln!(
                    "{t:.6}   node {n} client: attempt {attempt} of {id} to node {:?}",
                    index_of(peer)
                )
            }
            ClientEvent::OpenStream {
                stream,
                peer,
                protocol,
            } => eprintln!(
                "{t:.6}   node {n} client: open {stream} to node {:?} {protocol}",
                index_of(peer)
            ),
            other => eprintln!("{t:.6}   node {n} client: {other:?}"),
        }
    }

    fn log_server(&self, n: u32, ev: &ServerEvent) {
        let t = self.now as f64 / 1e9;
        match ev {
            ServerEvent::Request {
                stream,
                request_id,
                peer,
                body,
                ..
            } => eprintln!(
                "{t:.6}   node {n} server: request {stream} rid {request_id} from node {:?}, {} bytes",
                index_of(peer),
                body.len()
            ),
            other => eprintln!("{t:.6}   node {n} server: {other:?}"),
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let slot = match self.free_slots.pop() {
            Some(i) => {
                self.events[i as usize] = Some(ev);
                i
            }
            None => {
                self.events.push(Some(ev));
                (self.events.len() - 1) as u32
            }
        };
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant, detail));
        }
    }

    fn violation_report(&self) -> Box<Violation> {
        let (invariant, detail) = self.violation.clone().unwrap_or(("unknown", String::new()));
        Box::new(Violation {
            seed: self.opts.seed,
            invariant,
            detail,
            at: Duration::from_nanos(self.now),
            step: self.steps,
            submitted: self.submitted + self.live_submitted,
            trace_hash: self.trace.finish(),
        })
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival { live } => self.on_arrival(live),
            Ev::BurstReq {
                client,
                server,
                proto,
            } => {
                self.trace
                    .event(tag::BURST, self.now, &[client as u64, server as u64]);
                if self.phase == Phase::Safety || self.phase == Phase::Drain {
                    self.submit_direct(client, server, proto);
                }
            }
            Ev::OpenArrive { sim } => self.on_open_arrive(sim),
            Ev::Deliver {
                sim,
                to_server,
                data,
            } => self.on_deliver(sim, to_server, data),
            Ev::Fin {
                sim,
                to_server,
                reset,
            } => self.on_fin(sim, to_server, reset),
            Ev::PeerGone { sim } => self.on_peer_gone(sim),
            Ev::HandlerDone {
                node,
                epoch,
                stream,
                rid,
                result,
            } => {
                let ok = result.is_ok();
                self.server_work_done(node, epoch, tag::HANDLER_DONE, stream, rid, ok, |s, now| {
                    s.respond(stream, rid, result, now)
                });
            }
            Ev::ServerInflated {
                node,
                epoch,
                stream,
                rid,
                result,
            } => {
                let ok = result.is_ok();
                self.after_inflate = true;
                self.server_work_done(node, epoch, tag::INFLATED, stream, rid, ok, |s, now| {
                    s.handle_inflated(stream, rid, result, now)
                });
                self.after_inflate = false;
            }
            Ev::ClientInflated {
                node,
                epoch,
                id,
                peer,
                result,
            } => {
                let n = &mut self.nodes[node as usize];
                if n.epoch != epoch || !n.up {
                    return;
                }
                self.trace.event(
                    tag::INFLATED,
                    self.now,
                    &[node as u64, u64::MAX, id.0, result.is_ok() as u64],
                );
                n.client
                    .handle_inflated(id, peer, result, Instant::from_nanos(self.now));
                self.pump(node);
            }
            Ev::Wake { node, epoch } => self.on_wake(node, epoch),
            Ev::Cancel { node, epoch, id } => self.on_cancel(node, epoch, id),
            Ev::Heal { generation } => {
                if self.partitioned && generation == self.partition_gen {
                    self.trace.event(tag::HEAL, self.now, &[generation]);
                    self.partitioned = false;
                    for n in &mut self.nodes {
                        n.side = 0;
                    }
                }
            }
            Ev::Restart { node } => {
                let n = &mut self.nodes[node as usize];
                if !n.up {
                    self.trace.event(tag::RESTART, self.now, &[node as u64]);
                    n.up = true;
                    n.wake_at = NEVER;
                }
            }
            Ev::Sweep => self.on_sweep(),
            Ev::LivenessStart => {
                self.trace.event(tag::PHASE, self.now, &[3]);
                self.phase = Phase::Liveness;
                self.schedule(self.now, Ev::Arrival { live: true });
            }
        }
    }

    /// After every step: the invariants of every node the step touched, and
    /// their wake-ups.
    fn end_of_step(&mut self) {
        while let Some(n) = self.touched.pop() {
            self.check_node(n);
            self.reschedule(n);
        }
    }

    fn advance_phase(&mut self) {
        match self.phase {
            Phase::Drain => {
                // Healed: no partition, every node up, and every handler
                // (slow ones too) has answered, so no admission slot is held
                // by work from the faulty phase.
                let healed =
                    !self.partitioned && self.nodes.iter().all(|n| n.up && n.handlers == 0);
                if healed && self.pending.is_empty() {
                    self.trace.event(tag::PHASE, self.now, &[2]);
                    self.phase = Phase::Quiet;
                    for n in &mut self.nodes {
                        n.slow_until = 0;
                        n.fail_until = 0;
                    }
                    // Every cool-down and idle stream from the faulty phase expires.
                    let wait = self
                        .nodes
                        .iter()
                        .map(|n| ns(n.ccfg.cooldown_max))
                        .max()
                        .unwrap_or(0)
                        + SEC;
                    self.schedule(self.now + wait, Ev::LivenessStart);
                }
            }
            Phase::Final
                if self.pending.is_empty() && self.nodes.iter().all(|n| n.handlers == 0) =>
            {
                self.final_checks();
                self.phase = Phase::Done;
            }
            _ => {}
        }
    }

    fn final_checks(&mut self) {
        let mut problems = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.server.active() != 0 {
                let d = format!(
                    "node {i}: {} requests still active at the end",
                    n.server.active()
                );
                problems.push(("admission accounting", d));
            }
            if n.client.in_flight() != 0 {
                let d = format!(
                    "node {i}: {} requests in flight at the end",
                    n.client.in_flight()
                );
                problems.push(("exactly once", d));
            }
            let counted: u64 = n
                .server
                .stats()
                .protocols
                .iter()
                .map(|(_, p)| p.body_bytes_received)
                .sum();
            if n.up && counted != n.handed_bytes {
                let d = format!(
                    "node {i}: server statistics count {counted} request body bytes received, \
                     its handlers were given {}",
                    n.handed_bytes
                );
                problems.push(("statistics", d));
            }
            let st = n.client.pool_stats();
            if st.in_flight != 0 || st.waiting != 0 {
                let d = format!("node {i}: pool holds slots or waiters with no request: {st:?}");
                problems.push(("pool accounting", d));
            }
        }
        for (inv, d) in problems {
            self.fail(inv, d);
        }
        self.trace.event(tag::PHASE, self.now, &[5]);
    }

    // ===================================================================
    // Workload

    fn on_arrival(&mut self, live: bool) {
        self.trace.event(tag::ARRIVAL, self.now, &[live as u64]);
        if live {
            if self.live_submitted >= self.opts.liveness_count() {
                self.phase = Phase::Final;
                return;
            }
            self.live_submitted += 1;
            self.submit_random(true);
            // Light load: about 1000 requests per second over the whole world.
            let gap = self.rng.range(0, 2 * MS);
            self.schedule(self.now + gap, Ev::Arrival { live: true });
            return;
        }
        if self.phase != Phase::Safety {
            return;
        }
        if self.submitted >= self.opts.requests {
            self.trace.event(tag::PHASE, self.now, &[1]);
            self.phase = Phase::Drain;
            return;
        }
        self.maybe_fault();
        if self.opts.burst_rate > 0.0 && self.rng.chance(self.opts.burst_rate) {
            self.burst();
        } else {
            self.submitted += 1;
            self.submit_random(false);
        }
        let gap = self.rng.range(0, 2 * self.scenario.gap_ns);
        self.schedule(self.now + gap, Ev::Arrival { live: false });
    }

    fn random_up_node(&mut self) -> Option<u32> {
        let n = self.nodes.len() as u64;
        for _ in 0..16 {
            let i = self.rng.below(n) as u32;
            if self.nodes[i as usize].up {
                return Some(i);
            }
        }
        let start = self.rng.below(n);
        (0..n)
            .map(|k| ((start + k) % n) as u32)
            .find(|&i| self.nodes[i as usize].up)
    }

    fn make_body(&mut self, live: bool) -> Bytes {
        let r = self.rng.unit();
        // Mostly small, so a million requests stay fast; larger ones are
        // rare but present in every run, big ones rarer still.
        let mut len = if !live && self.rng.chance(self.opts.big_rate) {
            let max = self.opts.max_body as u64;
            self.rng.range(max.min(1 << 20), max + 1) as usize
        } else if r < 0.02 {
            0
        } else if r < 0.997 {
            self.rng.range(1, 256) as usize
        } else if r < 0.9994 {
            self.rng.range(256, 4 * 1024) as usize
        } else if r < 0.99997 {
            self.rng.range(4 * 1024, 64 * 1024) as usize
        } else {
            self.rng.range(64 * 1024, 256 * 1024) as usize
        };
        len = len.min(self.opts.max_body);
        if live {
            len = len.min(16 * 1024).min(self.min_block);
        }
        let pool = if self.rng.chance(0.3) {
            self.pool_text.clone()
        } else {
            self.pool_random.clone()
        };
        let fail = !live && self.rng.chance(0.01);
        // Small bodies come from the pool's first 64 KiB, which stays in cache.
        let span = if len <= 4096 {
            pool.len().min(64 * 1024)
        } else {
            pool.len()
        };
        let offset = self.rng.below((span - len + 1) as u64) as usize;
        let t = self.next_tag;
        self.next_tag += 1;
        body::make(t, fail, len, &pool, offset)
    }

    fn submit_random(&mut self, live: bool) {
        let Some(c) = self.random_up_node() else {
            return;
        };
        let p = self.rng.below(PROTOCOLS.len() as u64) as u8;
        let others = self.serving[p as usize].iter().filter(|&&s| s != c).count();
        if others == 0 {
            return;
        }
        let body = self.make_body(live);
        if self.rng.chance(self.scenario.closest_frac) {
            self.submit_closest(c, p, body, live);
        } else {
            let list = &self.serving[p as usize];
            let mut target = list[self.rng.below(list.len() as u64) as usize];
            while target == c {
                target = list[self.rng.below(list.len() as u64) as usize];
            }
            let mut expect_unsupported = false;
            if !live && self.rng.chance(0.005) {
                // A node that does not serve the protocol.
                let n = self.nodes.len() as u64;
                let t = self.rng.below(n) as u32;
                if t != c && !self.nodes[t as usize].serves[p as usize] {
                    target = t;
                    expect_unsupported = true;
                }
            }
            let deadline = (!live && self.rng.chance(0.08))
                .then(|| self.now + self.rng.range(20 * MS, 3 * SEC));
            self.send_direct(c, target, p, body, deadline, live, expect_unsupported);
        }
    }

    fn submit_direct(&mut self, client: u32, server: u32, proto: u8) {
        if !self.nodes[client as usize].up {
            return;
        }
        let body = self.make_body(false);
        self.send_direct(client, server, proto, body, None, false, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_direct(
        &mut self,
        c: u32,
        target: u32,
        p: u8,
        body: Bytes,
        deadline: Option<u64>,
        live: bool,
        expect_unsupported: bool,
    ) {
        let now = Instant::from_nanos(self.now);
        let mut opts = SendOptions::default();
        if let Some(d) = deadline {
            opts = opts.with_deadline(Instant::from_nanos(d));
        }
        let key = self.nodes[target as usize].key.clone();
        let protocol = self.protocols[p as usize].clone();
        let res = self.nodes[c as usize]
            .client
            .send_with(key, protocol, body.clone(), opts, now);
        let info = ReqInfo {
            body,
            proto: p,
            target: Some(target),
            closest: None,
            deadline,
            started: self.now,
            attempts_seen: 0,
            cancelled: false,
            live,
            expect_unsupported,
        };
        self.accept(c, res, info);
    }

    fn submit_closest(&mut self, c: u32, p: u8, body: Bytes, live: bool) {
        let now = Instant::from_nanos(self.now);
        let mut opts = ClosestOptions::default();
        let mut routing_key = None;
        if self.rng.chance(0.2) {
            let k = Bytes::copy_from_slice(&self.rng.next().to_le_bytes());
            routing_key = Some(k.clone());
            opts = opts.with_routing_key(k);
        }
        let mut exclude = None;
        let others = self.serving[p as usize].iter().filter(|&&s| s != c).count();
        if !live && others >= 2 && self.rng.chance(0.1) {
            let list = &self.serving[p as usize];
            let mut x = list[self.rng.below(list.len() as u64) as usize];
            while x == c {
                x = list[self.rng.below(list.len() as u64) as usize];
            }
            exclude = Some(x);
            opts = opts.with_exclude(vec![self.nodes[x as usize].key.clone()]);
        }
        let mut hedge = 1;
        if !live && self.rng.chance(0.05) {
            hedge = 2;
            opts = opts.with_hedge(2);
        }
        let mut deadline = None;
        if !live && self.rng.chance(0.08) {
            let d = self.now + self.rng.range(20 * MS, 3 * SEC);
            deadline = Some(d);
            opts = opts.with_deadline(Instant::from_nanos(d));
        }
        let key_hash: [u8; 32] = Sha256::digest(routing_key.as_deref().unwrap_or(&body[..])).into();
        let protocol = self.protocols[p as usize].clone();
        let res = self.nodes[c as usize]
            .client
            .send_closest(protocol, body.clone(), opts, now);
        let info = ReqInfo {
            body,
            proto: p,
            target: None,
            closest: Some(Box::new(Closest {
                key_hash,
                routing_key,
                exclude,
                hedge,
            })),
            deadline,
            started: self.now,
            attempts_seen: 0,
            cancelled: false,
            live,
            expect_unsupported: false,
        };
        self.accept(c, res, info);
    }

    /// Records the outcome of a `send*` call, then drains the client.
    fn accept(&mut self, c: u32, res: Result<RequestId, RequestError>, info: ReqInfo) {
        let node = &self.nodes[c as usize];
        let epoch = node.epoch;
        let len = info.body.len();
        match res {
            Ok(id) => {
                if len > node.ccfg.max_block_size {
                    let d = format!(
                        "node {c}: body of {len} bytes accepted over the client limit {}",
                        node.ccfg.max_block_size
                    );
                    self.fail("size limit", d);
                }
                self.trace.event(
                    tag::SUBMIT,
                    self.now,
                    &[
                        c as u64,
                        id.0,
                        len as u64,
                        info.proto as u64,
                        info.target.map_or(u64::MAX, u64::from),
                    ],
                );
                if !info.live && self.rng.chance(0.005) {
                    let at = self.now + self.rng.range(0, 500 * MS);
                    self.schedule(at, Ev::Cancel { node: c, epoch, id });
                }
                if info.live {
                    self.live_accepted += 1;
                }
                self.accepted += 1;
                if self.pending.insert((c, epoch, id.0), info).is_some() {
                    self.fail(
                        "exactly once",
                        format!("node {c}: request id {id} handed out twice"),
                    );
                }
                self.nodes[c as usize].pending += 1;
            }
            Err(e) => {
                self.trace
                    .event(tag::REJECTED, self.now, &[c as u64, len as u64]);
                self.trace.str(e.kind());
                let legit = match &e {
                    RequestError::Oversize {
                        size,
                        limit,
                        side: Side::Local,
                    } => *size == len && *limit == node.ccfg.max_block_size && len > *limit,
                    _ => false,
                };
                if !legit || info.live {
                    self.fail(
                        "typed outcome",
                        format!("node {c}: send of {len} bytes refused: {e:?}"),
                    );
                }
                *self.rejected.entry(e.kind()).or_default() += 1;
            }
        }
        self.pump(c);
    }

    fn burst(&mut self) {
        // A server and one of its protocols.
        let Some(s) = self.random_up_node() else {
            return;
        };
        let node = &self.nodes[s as usize];
        let Some(p) = (0..PROTOCOLS.len()).find(|&p| node.serves[p]) else {
            return;
        };
        let limit = node.server.admission_limit() as u64;
        let count = self
            .rng
            .range(limit / 2 + 1, 2 * limit + 50)
            .min(self.opts.requests - self.submitted)
            .min(3000);
        if count == 0 {
            return;
        }
        self.faults.bursts += 1;
        self.trace
            .event(tag::BURST, self.now, &[s as u64, p as u64, count]);
        if self.rng.chance(0.7) {
            let until = self.now + self.rng.range(200 * MS, 1500 * MS);
            let n = &mut self.nodes[s as usize];
            n.slow_until = n.slow_until.max(until);
        }
        let mut at = self.now;
        for _ in 0..count {
            let mut c = self.rng.below(self.nodes.len() as u64) as u32;
            if c == s {
                c = (c + 1) % self.nodes.len() as u32;
            }
            at += self.rng.range(5 * US, 50 * US);
            self.schedule(
                at,
                Ev::BurstReq {
                    client: c,
                    server: s,
                    proto: p as u8,
                },
            );
        }
        self.submitted += count;
    }

    fn on_cancel(&mut self, node: u32, epoch: u32, id: RequestId) {
        let n = &self.nodes[node as usize];
        if n.epoch != epoch || !n.up {
            return;
        }
        self.trace
            .event(tag::CANCEL, self.now, &[node as u64, id.0]);
        let key = (node, epoch, id.0);
        let was_pending = match self.pending.get_mut(&key) {
            Some(r) => {
                r.cancelled = true;
                true
            }
            None => false,
        };
        let ok = self.nodes[node as usize]
            .client
            .cancel(id, Instant::from_nanos(self.now));
        if ok != was_pending {
            self.fail(
                "exactly once",
                format!("node {node}: cancel({id}) returned {ok}, request pending: {was_pending}"),
            );
        }
        self.pump(node);
    }

    // ===================================================================
    // Draining the cores

    /// Drains a node's cores until both are quiet.
    /// Work a server's adapter did outside its core (a handler, an
    /// inflate) comes back: unless the node restarted meanwhile, the
    /// request leaves "handled" (a handler the core then starts counts it
    /// again) and `hand_in` gives the result to the core.
    #[allow(clippy::too_many_arguments)]
    fn server_work_done(
        &mut self,
        node: u32,
        epoch: u32,
        tag: u64,
        stream: StreamId,
        rid: u64,
        ok: bool,
        hand_in: impl FnOnce(&mut Server, Instant),
    ) {
        let n = &mut self.nodes[node as usize];
        if n.epoch != epoch || !n.up {
            return;
        }
        self.trace
            .event(tag, self.now, &[node as u64, stream.0, rid, ok as u64]);
        n.handlers -= 1;
        hand_in(&mut n.server, Instant::from_nanos(self.now));
        self.pump(node);
    }

    fn pump(&mut self, n: u32) {
        if !self.touched.contains(&n) {
            self.touched.push(n);
        }
        loop {
            let mut progressed = false;
            while let Some(ev) = self.nodes[n as usize].client.poll_event() {
                progressed = true;
                self.on_client_event(n, ev);
            }
            // Pulled as a stream task of the adapter does: each stream the
            // core says is writable gives everything it has.
            while let Some(stream) = self.nodes[n as usize].client.poll_writable() {
                while let Some(data) = self.nodes[n as usize].client.poll_transmit_on(stream) {
                    progressed = true;
                    self.on_client_transmit(n, Transmit { stream, data });
                }
            }
            while let Some(ev) = self.nodes[n as usize].server.poll_event() {
                progressed = true;
                self.on_server_event(n, ev);
            }
            while let Some(stream) = self.nodes[n as usize].server.poll_writable() {
                while let Some(data) = self.nodes[n as usize].server.poll_transmit_on(stream) {
                    progressed = true;
                    self.on_server_transmit(n, Transmit { stream, data });
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn reschedule(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if !node.up {
            return;
        }
        let t = [node.client.poll_timeout(), node.server.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map_or(NEVER, |t| t.as_nanos().max(self.now));
        if t < node.wake_at {
            node.wake_at = t;
            let epoch = node.epoch;
            self.schedule(t, Ev::Wake { node: n, epoch });
        }
    }

    fn on_wake(&mut self, n: u32, epoch: u32) {
        let node = &mut self.nodes[n as usize];
        if node.epoch != epoch || !node.up || node.wake_at != self.now {
            return;
        }
        node.wake_at = NEVER;
        if node.last_wake == self.now {
            node.same_wakes += 1;
            if node.same_wakes > 10_000 {
                self.fail(
                    "progress",
                    format!(
                        "node {n}: poll_timeout stays at {} after handle_timeout",
                        self.now
                    ),
                );
                return;
            }
        } else {
            node.same_wakes = 0;
            node.last_wake = self.now;
        }
        self.trace.event(tag::WAKE, self.now, &[n as u64]);
        let now = Instant::from_nanos(self.now);
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let (client_due, server_due) = (
            due(node.client.poll_timeout()),
            due(node.server.poll_timeout()),
        );
        if client_due {
            node.client.handle_timeout(now);
        }
        if server_due {
            node.server.handle_timeout(now);
        }
        if client_due || server_due {
            self.pump(n);
        } else if !self.touched.contains(&n) {
            // A timer that was cancelled meanwhile: only the wake moves.
            self.touched.push(n);
        }
    }

    // ===================================================================
    // Client outputs

    fn on_client_event(&mut self, n: u32, ev: ClientEvent) {
        if self.log {
            self.log_client(n, &ev);
        }
        match ev {
            ClientEvent::OpenStream {
                stream,
                peer,
                protocol,
            } => {
                let Some(to) = index_of(&peer).filter(|&i| (i as usize) < self.nodes.len()) else {
                    self.fail(
                        "routing",
                        format!("node {n}: open to unknown peer {peer:?}"),
                    );
                    return;
                };
                if to == n {
                    self.fail("routing", format!("node {n}: opened a stream to itself"));
                    return;
                }
                let Some(p) = self.protocols.iter().position(|x| *x == protocol) else {
                    self.fail(
                        "routing",
                        format!("node {n}: open for unknown protocol {protocol}"),
                    );
                    return;
                };
                let sim = self.next_sim;
                self.next_sim += 1;
                self.streams_opened += 1;
                self.trace.event(
                    tag::OPEN,
                    self.now,
                    &[n as u64, stream.0, to as u64, p as u64, sim],
                );
                let node = &mut self.nodes[n as usize];
                if node.client_streams.insert(stream, sim).is_some() {
                    self.fail(
                        "stream ids",
                        format!("node {n}: client stream {stream} opened twice"),
                    );
                    return;
                }
                node.members.insert(sim);
                self.nodes[to as usize].members.insert(sim);
                self.streams.insert(
                    sim,
                    SimStream {
                        client: n,
                        cs: stream,
                        c_open: true,
                        server: to,
                        ss: StreamId(0),
                        s_open: false,
                        proto: p as u8,
                        established: false,
                        unanswered: false,
                        last_c2s: 0,
                        last_s2c: 0,
                        fr_c2s: FrameTrack::default(),
                        fr_s2c: FrameTrack::default(),
                    },
                );
                let l = self.link(n, to);
                let at = self.now + 2 * l + self.rng.below(l / 2 + 1);
                self.schedule(at, Ev::OpenArrive { sim });
            }
            ClientEvent::CloseStream { stream } => {
                self.trace
                    .event(tag::CLIENT_CLOSE, self.now, &[n as u64, stream.0]);
                let Some(sim) = self.nodes[n as usize].client_streams.remove(&stream) else {
                    return; // given up on already
                };
                let Some(s) = self.streams.get_mut(&sim) else {
                    return;
                };
                s.c_open = false;
                if s.established && s.s_open {
                    let l = self.latency[s.client as usize * self.nodes.len() + s.server as usize]
                        as u64;
                    let at = (self.now + l).max(s.last_c2s);
                    s.last_c2s = at;
                    self.schedule(
                        at,
                        Ev::Fin {
                            sim,
                            to_server: true,
                            reset: false,
                        },
                    );
                } else if !s.s_open && (s.established || s.unanswered) {
                    self.remove_stream(sim);
                }
                // Otherwise the open in flight finds the client gone.
            }
            ClientEvent::AttemptStarted { id, peer, attempt } => {
                self.on_attempt(n, id, peer, attempt)
            }
            ClientEvent::Completed {
                id,
                result,
                attempts,
            } => self.on_completed(n, id, result, attempts),
            ClientEvent::Inflate {
                id,
                peer,
                body,
                limit,
            } => {
                let epoch = self.nodes[n as usize].epoch;
                let result = compress::decompress(&body, limit);
                self.inflated += 1;
                let delay = self.rng.below(self.scenario.handler_max_us * US + 1);
                self.schedule(
                    self.now + delay,
                    Ev::ClientInflated {
                        node: n,
                        epoch,
                        id,
                        peer,
                        result,
                    },
                );
            }
            _ => {}
        }
    }

    fn on_attempt(&mut self, n: u32, id: RequestId, peer: PeerKey, attempt: u32) {
        let node = &self.nodes[n as usize];
        let epoch = node.epoch;
        let max_attempts = node.ccfg.max_retries + 1;
        let to = index_of(&peer).unwrap_or(u32::MAX);
        self.trace.event(
            tag::ATTEMPT,
            self.now,
            &[n as u64, id.0, to as u64, attempt as u64],
        );
        self.attempts += 1;
        if attempt > 1 {
            self.retries += 1;
        }
        let Some(req) = self.pending.get_mut(&(n, epoch, id.0)) else {
            self.fail(
                "exactly once",
                format!("node {n}: attempt {attempt} of {id}, which is not pending"),
            );
            return;
        };
        if attempt != req.attempts_seen + 1 {
            let d = format!(
                "node {n}: {id} attempt numbered {attempt} after {} attempts",
                req.attempts_seen
            );
            self.fail("retry bound", d);
            return;
        }
        req.attempts_seen = attempt;
        if attempt > max_attempts {
            let d = format!(
                "node {n}: {id} started attempt {attempt} with max_retries {}",
                max_attempts - 1
            );
            self.fail("retry bound", d);
            return;
        }
        if to as usize >= self.nodes.len() || to == n {
            self.fail(
                "routing",
                format!("node {n}: {id} attempt towards {peer:?}"),
            );
            return;
        }
        if let Some(t) = req.target {
            if t != to {
                self.fail(
                    "routing",
                    format!("node {n}: {id} for node {t} attempted on node {to}"),
                );
            }
            return;
        }
        let Some(cl) = req.closest.as_deref() else {
            return;
        };
        // First round (as wide as the hedge, within the node set and the
        // budget): attempt k goes to the k-th node of the order, which is
        // computed here independently: SHA-256 XOR distance, nodes cooling
        // down (as the router says at this instant) after all others.
        let router = node.client.router();
        let now = Instant::from_nanos(self.now);
        let mut ranked: Vec<(bool, [u8; 32], u32)> = Vec::with_capacity(16);
        for &s in &self.serving[req.proto as usize] {
            if s == n || Some(s) == cl.exclude {
                continue;
            }
            let node_s = &self.nodes[s as usize];
            let mut d = [0u8; 32];
            for (o, (a, b)) in d.iter_mut().zip(cl.key_hash.iter().zip(node_s.hash.iter())) {
                *o = a ^ b;
            }
            ranked.push((router.is_cooling(&node_s.key, now), d, s));
        }
        let width = cl.hedge.min(ranked.len()).min(max_attempts as usize);
        if attempt as usize > width {
            return; // failover: walks the order, may revisit
        }
        let k = attempt as usize - 1;
        ranked.select_nth_unstable(k);
        let want = ranked[k].2;
        if want != to {
            let d = format!(
                "node {n}: {id} first-round attempt {attempt} went to node {to}, the node ranked {attempt} (closest, not cooling down first) is {want}"
            );
            self.fail("closest routing", d);
            return;
        }
        // And the client follows its router: cross-checked on hedged
        // requests and on one request in eight (by tag), to keep it cheap.
        if cl.hedge > 1 || body::tag(&req.body).is_multiple_of(8) {
            let exclude: Vec<PeerKey> = cl
                .exclude
                .map(|x| self.nodes[x as usize].key.clone())
                .into_iter()
                .collect();
            let protocol = &self.protocols[req.proto as usize];
            let rk: &[u8] = cl.routing_key.as_deref().unwrap_or(&req.body[..]);
            let order = router.order(protocol, rk, &exclude, now);
            let got = order.as_ref().ok().and_then(|o| o.get(k));
            if got != Some(&peer) {
                let d = format!(
                    "node {n}: {id} first-round attempt {attempt} went to {peer:?}, router order says {order:?}"
                );
                self.fail("closest routing", d);
            }
        }
    }

    fn on_completed(
        &mut self,
        n: u32,
        id: RequestId,
        result: Result<pointsub_proto::Response, RequestError>,
        attempts: u32,
    ) {
        let node = &self.nodes[n as usize];
        let epoch = node.epoch;
        let max_attempts = node.ccfg.max_retries + 1;
        match &result {
            Ok(r) => self.trace.event(
                tag::COMPLETED,
                self.now,
                &[n as u64, id.0, attempts as u64, 0, r.body.len() as u64],
            ),
            Err(e) => {
                self.trace.event(
                    tag::COMPLETED,
                    self.now,
                    &[n as u64, id.0, attempts as u64, 1],
                );
                self.trace.str(e.kind());
            }
        }
        let Some(req) = self.pending.remove(&(n, epoch, id.0)) else {
            self.fail("exactly once", format!("node {n}: {id} completed but is not pending (ended twice, or never sent): {result:?}"));
            return;
        };
        self.nodes[n as usize].pending -= 1;
        *self
            .outcomes
            .entry(match &result {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            })
            .or_default() += 1;
        if attempts != req.attempts_seen {
            let d = format!(
                "node {n}: {id} completed with attempts {attempts} but {} were started",
                req.attempts_seen
            );
            self.fail("retry bound", d);
            return;
        }
        if attempts == 0 || attempts > max_attempts {
            let d = format!(
                "node {n}: {id} completed after {attempts} attempts, max_retries {}",
                max_attempts - 1
            );
            self.fail("retry bound", d);
            return;
        }
        if let Some(d) = req.deadline
            && self.now > d
        {
            let msg = format!(
                "node {n}: {id} ended {} ns after its deadline",
                self.now - d
            );
            self.fail("deadline", msg);
            return;
        }
        match result {
            Ok(resp) => {
                let Some(peer) = index_of(&resp.peer).filter(|&p| (p as usize) < self.nodes.len())
                else {
                    self.fail(
                        "response matches request",
                        format!("node {n}: {id} answered by unknown {:?}", resp.peer),
                    );
                    return;
                };
                let right_peer = match (req.target, req.closest.as_deref()) {
                    (Some(t), _) => t == peer,
                    (None, Some(cl)) => {
                        self.nodes[peer as usize].serves[req.proto as usize]
                            && peer != n
                            && Some(peer) != cl.exclude
                    }
                    (None, None) => false,
                };
                if !right_peer {
                    self.fail(
                        "response matches request",
                        format!("node {n}: {id} answered by node {peer}, not a valid target"),
                    );
                    return;
                }
                let kind = PROTOCOLS[req.proto as usize].1;
                if !body::response_matches(kind, &req.body, &resp.body, peer) {
                    let d = format!(
                        "node {n}: {id} (tag {:x}, {} bytes, {kind:?}) got a response of {} bytes (tag {:x}) that is not its answer",
                        body::tag(&req.body),
                        req.body.len(),
                        resp.body.len(),
                        body::tag(&resp.body)
                    );
                    self.fail("response matches request", d);
                    return;
                }
                if body::wants_failure(&req.body) {
                    self.fail(
                        "response matches request",
                        format!("node {n}: {id} succeeded but its handler always fails"),
                    );
                    return;
                }
                self.latencies.push(self.now - req.started);
            }
            Err(e) => {
                if req.live {
                    let d = format!(
                        "node {n}: {id} ({} bytes, {:?}) failed in the liveness phase after {attempts} attempts: {e:?}",
                        req.body.len(),
                        if req.closest.is_some() {
                            "closest"
                        } else {
                            "direct"
                        }
                    );
                    self.fail("liveness", d);
                    return;
                }
                let legit = self.legit_error(&req, &e);
                if !legit {
                    let d = format!(
                        "node {n}: {id} (tag {:x}, {} bytes) ended with {e:?}, which nothing in the run explains",
                        body::tag(&req.body),
                        req.body.len()
                    );
                    self.fail("typed outcome", d);
                }
            }
        }
    }

    /// Whether an error ending `req` is one the run explains.
    fn legit_error(&self, req: &ReqInfo, e: &RequestError) -> bool {
        match e {
            RequestError::Cancelled => req.cancelled,
            RequestError::Timeout => req.deadline.is_some_and(|d| self.now >= d),
            RequestError::Handler(msg) => *msg == body::failure_message(&req.body),
            RequestError::Oversize {
                size,
                limit,
                side: Side::Remote,
            } => {
                *size == req.body.len()
                    && req.body.len() > *limit
                    && self.serving[req.proto as usize]
                        .iter()
                        .any(|&s| self.nodes[s as usize].scfg.max_block_size == *limit)
            }
            RequestError::UnsupportedProtocol(_) => req.expect_unsupported,
            RequestError::ConnectTimeout
            | RequestError::ConnectFailed(_)
            | RequestError::WriteTimeout
            | RequestError::ReadTimeout
            | RequestError::StreamReset
            | RequestError::Busy(_)
            | RequestError::PoolTimeout => true,
            // Every node a send-closest tried failed, each for a reason
            // the run explains.
            RequestError::AllNodesFailed { failures } => {
                req.closest.is_some()
                    && !failures.is_empty()
                    && failures.iter().all(|f| self.legit_error(req, &f.error))
            }
            _ => false,
        }
    }

    fn on_client_transmit(&mut self, n: u32, t: Transmit) {
        let len = t.data.len();
        self.trace.event(
            tag::CLIENT_TX,
            self.now,
            &[n as u64, t.stream.0, len as u64],
        );
        if self.log {
            eprintln!(
                "{:.6}   node {n} client: transmit {} {len} bytes",
                self.now as f64 / 1e9,
                t.stream
            );
        }
        let node = &mut self.nodes[n as usize];
        let Some(&sim) = node.client_streams.get(&t.stream) else {
            self.fail(
                "stream use",
                format!(
                    "node {n}: client wrote {len} bytes on stream {}, which is closed or unknown",
                    t.stream
                ),
            );
            return;
        };
        let max_block = node.ccfg.max_block_size;
        node.client
            .handle_flushed(t.stream, len, Instant::from_nanos(self.now));
        let Some(s) = self.streams.get_mut(&sim) else {
            return;
        };
        if !s.established {
            self.fail(
                "stream use",
                format!(
                    "node {n}: client wrote on stream {} before it was open",
                    t.stream
                ),
            );
            return;
        }
        if self.log && s.fr_c2s.seen.is_none() {
            s.fr_c2s.seen = Some(Vec::new());
        }
        if let Err(e) = s.fr_c2s.feed(&t.data, max_block) {
            self.fail(
                "frame limits",
                format!("node {n} (client) stream {}: {e}", t.stream),
            );
            return;
        }
        if let Some(seen) = s.fr_c2s.seen.as_mut() {
            for h in seen.drain(..) {
                eprintln!(
                    "{:.6}     frame {:?} id {} {:?} len {}",
                    self.now as f64 / 1e9,
                    h.kind,
                    h.request_id,
                    h.flags,
                    h.len
                );
            }
        }
        if s.s_open {
            self.ship(sim, true, t.data);
        }
    }

    // ===================================================================
    // Server outputs

    fn on_server_event(&mut self, n: u32, ev: ServerEvent) {
        if self.log {
            self.log_server(n, &ev);
        }
        match ev {
            ServerEvent::Request {
                stream,
                request_id,
                peer,
                protocol,
                body,
            } => {
                self.trace.event(
                    tag::SERVER_REQUEST,
                    self.now,
                    &[n as u64, stream.0, request_id, body.len() as u64],
                );
                let node = &mut self.nodes[n as usize];
                node.handlers += 1;
                node.handed_bytes += body.len() as u64;
                // Admitted now, not when it was admitted to be inflated.
                if !self.after_inflate && !self.admitted_in_step.contains(&n) {
                    self.admitted_in_step.push(n);
                }
                let Some(&sim) = node.server_streams.get(&stream) else {
                    self.fail(
                        "stream use",
                        format!("node {n}: request on unknown server stream {stream}"),
                    );
                    return;
                };
                let s = &self.streams[&sim];
                if Some(s.client) != index_of(&peer) || self.protocols[s.proto as usize] != protocol
                {
                    self.fail("routing", format!("node {n}: request on stream {stream} attributed to {peer:?} / {protocol}"));
                    return;
                }
                let kind = PROTOCOLS[s.proto as usize].1;
                let fail = body::wants_failure(&body) || node.fail_until > self.now;
                let slow = node.slow_until > self.now;
                let result = if fail {
                    Err(body::failure_message(&body))
                } else {
                    match kind {
                        HandlerKind::Echo => Ok(body),
                        HandlerKind::Digest => Ok(body::digest(&body, n)),
                    }
                };
                if !slow && self.rng.chance(self.scenario.immediate_frac) {
                    // A fast handler: answers within the same step.
                    self.trace.event(
                        tag::HANDLER_DONE,
                        self.now,
                        &[n as u64, stream.0, request_id, result.is_ok() as u64],
                    );
                    let node = &mut self.nodes[n as usize];
                    node.handlers -= 1;
                    node.server
                        .respond(stream, request_id, result, Instant::from_nanos(self.now));
                    return;
                }
                let delay = if slow {
                    self.rng.range(50 * MS, self.scenario.slow_max_ns)
                } else {
                    self.rng.below(self.scenario.handler_max_us * US + 1)
                };
                let epoch = self.nodes[n as usize].epoch;
                self.schedule(
                    self.now + delay,
                    Ev::HandlerDone {
                        node: n,
                        epoch,
                        stream,
                        rid: request_id,
                        result,
                    },
                );
            }
            ServerEvent::Inflate {
                stream,
                request_id,
                body,
                limit,
            } => {
                // Admitted: it counts as handled until it is inflated.
                let node = &mut self.nodes[n as usize];
                node.handlers += 1;
                if !self.admitted_in_step.contains(&n) {
                    self.admitted_in_step.push(n);
                }
                let epoch = node.epoch;
                let result = compress::decompress(&body, limit);
                self.inflated += 1;
                let delay = self.rng.below(self.scenario.handler_max_us * US + 1);
                self.schedule(
                    self.now + delay,
                    Ev::ServerInflated {
                        node: n,
                        epoch,
                        stream,
                        rid: request_id,
                        result,
                    },
                );
            }
            ServerEvent::Cancel { stream, request_id } => {
                self.trace.event(
                    tag::SERVER_CANCEL,
                    self.now,
                    &[n as u64, stream.0, request_id],
                );
            }
            ServerEvent::CloseStream { stream, reset } => {
                self.trace.event(
                    tag::SERVER_CLOSE,
                    self.now,
                    &[n as u64, stream.0, reset as u64],
                );
                let Some(sim) = self.nodes[n as usize].server_streams.remove(&stream) else {
                    self.fail(
                        "stream use",
                        format!("node {n}: server closed unknown stream {stream}"),
                    );
                    return;
                };
                let nn = self.nodes.len();
                let Some(s) = self.streams.get_mut(&sim) else {
                    return;
                };
                s.s_open = false;
                if s.c_open {
                    let l = self.latency[s.client as usize * nn + s.server as usize] as u64;
                    let at = (self.now + l).max(s.last_s2c);
                    s.last_s2c = at;
                    self.schedule(
                        at,
                        Ev::Fin {
                            sim,
                            to_server: false,
                            reset,
                        },
                    );
                } else {
                    self.remove_stream(sim);
                }
            }
            _ => {}
        }
    }

    fn on_server_transmit(&mut self, n: u32, t: Transmit) {
        let len = t.data.len();
        self.trace.event(
            tag::SERVER_TX,
            self.now,
            &[n as u64, t.stream.0, len as u64],
        );
        if self.log {
            eprintln!(
                "{:.6}   node {n} server: transmit {} {len} bytes",
                self.now as f64 / 1e9,
                t.stream
            );
        }
        let node = &mut self.nodes[n as usize];
        let Some(&sim) = node.server_streams.get(&t.stream) else {
            self.fail(
                "stream use",
                format!(
                    "node {n}: server wrote {len} bytes on stream {}, which is closed or unknown",
                    t.stream
                ),
            );
            return;
        };
        let max_block = node.scfg.max_block_size;
        node.server
            .handle_flushed(t.stream, len, Instant::from_nanos(self.now));
        let Some(s) = self.streams.get_mut(&sim) else {
            return;
        };
        if self.log && s.fr_s2c.seen.is_none() {
            s.fr_s2c.seen = Some(Vec::new());
        }
        if let Err(e) = s.fr_s2c.feed(&t.data, max_block) {
            self.fail(
                "frame limits",
                format!("node {n} (server) stream {}: {e}", t.stream),
            );
            return;
        }
        if let Some(seen) = s.fr_s2c.seen.as_mut() {
            for h in seen.drain(..) {
                eprintln!(
                    "{:.6}     frame {:?} id {} {:?} len {}",
                    self.now as f64 / 1e9,
                    h.kind,
                    h.request_id,
                    h.flags,
                    h.len
                );
            }
        }
        if s.c_open {
            self.ship(sim, false, t.data);
        }
    }

    // ===================================================================
    // The network

    fn link(&self, a: u32, b: u32) -> u64 {
        self.latency[a as usize * self.nodes.len() + b as usize] as u64
    }

    fn reachable(&self, a: u32, b: u32) -> bool {
        let (x, y) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        x.up && y.up && x.side == y.side
    }

    /// Schedules `data` for delivery, split at random points into at most
    /// three pieces, in order within the stream's direction.
    fn ship(&mut self, sim: u64, to_server: bool, mut data: Bytes) {
        let (l, mut last) = {
            let s = &self.streams[&sim];
            let l = self.link(s.client, s.server);
            (l, if to_server { s.last_c2s } else { s.last_s2c })
        };
        let pieces = if data.len() > 1 && self.rng.chance(0.1) {
            self.rng.range(2, 4)
        } else {
            1
        };
        for i in 0..pieces {
            let piece = if i + 1 == pieces || data.len() <= 1 {
                std::mem::take(&mut data)
            } else {
                let cut = self.rng.range(1, data.len() as u64) as usize;
                data.split_to(cut)
            };
            if piece.is_empty() {
                continue;
            }
            let at = (self.now + l + self.rng.below(l / 4 + 1)).max(last);
            last = at;
            self.schedule(
                at,
                Ev::Deliver {
                    sim,
                    to_server,
                    data: piece,
                },
            );
        }
        if let Some(s) = self.streams.get_mut(&sim) {
            if to_server {
                s.last_c2s = last;
            } else {
                s.last_s2c = last;
            }
        }
    }

    fn on_deliver(&mut self, sim: u64, to_server: bool, data: Bytes) {
        let Some(s) = self.streams.get(&sim) else {
            return;
        };
        let now = Instant::from_nanos(self.now);
        self.trace.event(
            tag::DELIVER,
            self.now,
            &[sim, to_server as u64, data.len() as u64],
        );
        if to_server {
            if !s.s_open {
                return;
            }
            let (n, ss) = (s.server, s.ss);
            self.nodes[n as usize].server.handle_data(ss, data, now);
            self.pump(n);
        } else {
            if !s.c_open {
                return;
            }
            let (n, cs) = (s.client, s.cs);
            self.nodes[n as usize].client.handle_data(cs, data, now);
            self.pump(n);
        }
    }

    fn on_fin(&mut self, sim: u64, to_server: bool, reset: bool) {
        let Some(s) = self.streams.get_mut(&sim) else {
            return;
        };
        let now = Instant::from_nanos(self.now);
        self.trace
            .event(tag::FIN, self.now, &[sim, to_server as u64, reset as u64]);
        if to_server {
            if s.s_open {
                let (n, ss) = (s.server, s.ss);
                self.nodes[n as usize].server.handle_stream_closed(ss, now);
                self.pump(n);
            }
        } else {
            if s.c_open {
                s.c_open = false;
                let (n, cs) = (s.client, s.cs);
                self.nodes[n as usize].client_streams.remove(&cs);
                let c = &mut self.nodes[n as usize].client;
                if reset {
                    c.handle_stream_reset(cs, now);
                } else {
                    c.handle_stream_closed(cs, now);
                }
                self.pump(n);
            }
            if self
                .streams
                .get(&sim)
                .is_some_and(|s| !s.c_open && !s.s_open)
            {
                self.remove_stream(sim);
            }
        }
    }

    fn on_open_arrive(&mut self, sim: u64) {
        let Some(s) = self.streams.get(&sim) else {
            return;
        };
        let (c, sv, cs, p) = (s.client, s.server, s.cs, s.proto);
        self.trace.event(tag::OPEN_ARRIVE, self.now, &[sim]);
        if !s.c_open {
            self.remove_stream(sim);
            return;
        }
        let now = Instant::from_nanos(self.now);
        if !self.reachable(c, sv) {
            if !self.nodes[sv as usize].up && self.rng.chance(0.5) {
                // No answer at all: the client's connect timeout decides.
                self.trace.event(tag::OPEN_FAILED, self.now, &[sim, 0]);
                if let Some(s) = self.streams.get_mut(&sim) {
                    s.unanswered = true;
                }
                return;
            }
            self.trace.event(tag::OPEN_FAILED, self.now, &[sim, 1]);
            self.nodes[c as usize].client_streams.remove(&cs);
            self.remove_stream(sim);
            let why = if self.nodes[sv as usize].up {
                "partitioned"
            } else {
                "peer down"
            };
            self.nodes[c as usize].client.handle_open_failed(
                cs,
                OpenFailure::Unreachable(why.into()),
                now,
            );
            self.pump(c);
            return;
        }
        let client_key = self.nodes[c as usize].key.clone();
        let protocol = self.protocols[p as usize].clone();
        match self.nodes[sv as usize]
            .server
            .handle_inbound_stream(client_key, protocol, now)
        {
            Ok(ss) => {
                self.trace.event(tag::OPEN_ARRIVE, self.now, &[sim, ss.0]);
                if self.nodes[sv as usize]
                    .server_streams
                    .insert(ss, sim)
                    .is_some()
                {
                    self.fail(
                        "stream ids",
                        format!("node {sv}: server stream id {ss} handed out twice"),
                    );
                    return;
                }
                let s = self.streams.get_mut(&sim).expect("checked above");
                s.ss = ss;
                s.s_open = true;
                s.established = true;
                self.nodes[c as usize].client.handle_stream_opened(cs, now);
                self.pump(sv);
                self.pump(c);
            }
            Err(e) => {
                let code = match e {
                    ServerError::UnsupportedProtocol(_) => 2,
                    _ => 3,
                };
                self.trace.event(tag::OPEN_FAILED, self.now, &[sim, code]);
                let failure = match e {
                    ServerError::UnsupportedProtocol(_) => OpenFailure::UnsupportedProtocol,
                    other => OpenFailure::Unreachable(other.to_string()),
                };
                self.nodes[c as usize].client_streams.remove(&cs);
                self.remove_stream(sim);
                self.nodes[c as usize]
                    .client
                    .handle_open_failed(cs, failure, now);
                self.pump(sv);
                self.pump(c);
            }
        }
    }

    fn on_peer_gone(&mut self, sim: u64) {
        let Some(s) = self.streams.get(&sim) else {
            return;
        };
        self.trace.event(tag::PEER_GONE, self.now, &[sim]);
        let now = Instant::from_nanos(self.now);
        let (c, cs, c_open, established) = (s.client, s.cs, s.c_open, s.established);
        let (sv, ss, s_open) = (s.server, s.ss, s.s_open);
        if c_open && established {
            self.nodes[c as usize].client_streams.remove(&cs);
            self.nodes[c as usize].client.handle_stream_reset(cs, now);
            self.pump(c);
        } else if c_open {
            // Still opening: its open event will find the server down.
            return;
        }
        if s_open {
            self.nodes[sv as usize].server_streams.remove(&ss);
            self.nodes[sv as usize].server.handle_stream_reset(ss, now);
            self.pump(sv);
        }
        self.remove_stream(sim);
    }

    fn remove_stream(&mut self, sim: u64) {
        if let Some(s) = self.streams.remove(&sim) {
            self.frames += s.fr_c2s.frames + s.fr_s2c.frames;
            self.nodes[s.client as usize].members.remove(&sim);
            self.nodes[s.server as usize].members.remove(&sim);
        }
    }

    /// Resets a stream at both ends at once (a network fault).
    fn reset_stream(&mut self, sim: u64) {
        let Some(s) = self.streams.get(&sim) else {
            return;
        };
        let now = Instant::from_nanos(self.now);
        let (c, cs, c_open, established) = (s.client, s.cs, s.c_open, s.established);
        let (sv, ss, s_open) = (s.server, s.ss, s.s_open);
        self.remove_stream(sim);
        if c_open {
            self.nodes[c as usize].client_streams.remove(&cs);
            let client = &mut self.nodes[c as usize].client;
            if established {
                client.handle_stream_reset(cs, now);
            } else {
                client.handle_open_failed(
                    cs,
                    OpenFailure::Unreachable("connection reset".into()),
                    now,
                );
            }
            self.pump(c);
        }
        if s_open {
            self.nodes[sv as usize].server_streams.remove(&ss);
            self.nodes[sv as usize].server.handle_stream_reset(ss, now);
            self.pump(sv);
        }
    }

    // ===================================================================
    // Faults

    fn maybe_fault(&mut self) {
        if !self.opts.faults {
            return;
        }
        let o = &self.opts;
        let rates = [
            o.reset_rate,
            o.drop_rate,
            o.partition_rate,
            o.crash_rate,
            o.slow_rate,
            o.fail_rate,
        ];
        let total: f64 = rates.iter().sum();
        if total <= 0.0 {
            return;
        }
        let r = self.rng.unit();
        if r >= total {
            return;
        }
        let mut acc = 0.0;
        let mut which = rates.len() - 1;
        for (i, rate) in rates.iter().enumerate() {
            acc += rate;
            if r < acc {
                which = i;
                break;
            }
        }
        match which {
            0 => self.fault_reset(),
            1 => self.fault_drop(),
            2 => self.fault_partition(),
            3 => self.fault_crash(),
            4 => {
                let Some(x) = self.random_up_node() else {
                    return;
                };
                let until = self.now + self.rng.range(300 * MS, 4 * SEC);
                self.faults.slow += 1;
                self.trace.event(tag::SLOW, self.now, &[x as u64, until]);
                let n = &mut self.nodes[x as usize];
                n.slow_until = n.slow_until.max(until);
            }
            _ => {
                let Some(x) = self.random_up_node() else {
                    return;
                };
                let until = self.now + self.rng.range(100 * MS, SEC);
                self.faults.fail += 1;
                self.trace.event(tag::FAIL, self.now, &[x as u64, until]);
                let n = &mut self.nodes[x as usize];
                n.fail_until = n.fail_until.max(until);
            }
        }
    }

    /// A random stream of a random node (tries a few nodes).
    fn random_stream(&mut self) -> Option<u64> {
        for _ in 0..8 {
            let x = self.rng.below(self.nodes.len() as u64) as usize;
            let m = &self.nodes[x].members;
            if m.is_empty() {
                continue;
            }
            let k = self.rng.below(m.len() as u64) as usize;
            return self.nodes[x].members.iter().nth(k).copied();
        }
        None
    }

    fn fault_reset(&mut self) {
        if let Some(sim) = self.random_stream() {
            self.faults.resets += 1;
            self.trace.event(tag::FAULT_RESET, self.now, &[sim]);
            self.reset_stream(sim);
        }
    }

    fn fault_drop(&mut self) {
        let Some(sim) = self.random_stream() else {
            return;
        };
        let s = &self.streams[&sim];
        let (a, b) = (s.client, s.server);
        let victims: Vec<u64> = self.nodes[a as usize]
            .members
            .iter()
            .copied()
            .filter(|id| {
                let s = &self.streams[id];
                (s.client == a && s.server == b) || (s.client == b && s.server == a)
            })
            .collect();
        self.faults.drops += 1;
        self.trace.event(
            tag::FAULT_DROP,
            self.now,
            &[a as u64, b as u64, victims.len() as u64],
        );
        for v in victims {
            self.reset_stream(v);
        }
    }

    fn fault_partition(&mut self) {
        if self.partitioned {
            return;
        }
        let n = self.nodes.len();
        let k = self.rng.range(1, (n / 2) as u64 + 1);
        for _ in 0..k {
            let i = self.rng.below(n as u64) as usize;
            self.nodes[i].side = 1;
        }
        self.partitioned = true;
        self.partition_gen += 1;
        self.faults.partitions += 1;
        let mut victims = Vec::new();
        for node in &self.nodes {
            if node.side != 1 {
                continue;
            }
            for id in &node.members {
                let s = &self.streams[id];
                if self.nodes[s.client as usize].side != self.nodes[s.server as usize].side {
                    victims.push(*id);
                }
            }
        }
        victims.sort_unstable();
        victims.dedup();
        self.trace
            .event(tag::FAULT_PARTITION, self.now, &[k, victims.len() as u64]);
        for v in victims {
            self.reset_stream(v);
        }
        let heal = self.now + self.rng.range(200 * MS, 2 * SEC);
        let generation = self.partition_gen;
        self.schedule(heal, Ev::Heal { generation });
    }

    fn fault_crash(&mut self) {
        let down = self.nodes.iter().filter(|n| !n.up).count();
        if down + 1 > self.nodes.len() / 4 {
            return;
        }
        let Some(x) = self.random_up_node() else {
            return;
        };
        self.faults.crashes += 1;
        self.trace.event(tag::CRASH, self.now, &[x as u64]);
        // The other ends of its streams learn after a link delay.
        let members = std::mem::take(&mut self.nodes[x as usize].members);
        for sim in members {
            let Some(s) = self.streams.get_mut(&sim) else {
                continue;
            };
            let other = if s.client == x {
                s.c_open = false;
                s.server
            } else {
                s.s_open = false;
                s.client
            };
            let survivor_open = if s.client == x {
                s.s_open
            } else {
                s.c_open && s.established
            };
            if survivor_open {
                let l = self.latency[x as usize * self.nodes.len() + other as usize] as u64;
                self.schedule(self.now + l, Ev::PeerGone { sim });
            } else if !s.c_open && !s.s_open {
                self.remove_stream(sim);
            }
        }
        // Its requests are lost with it.
        let epoch = self.nodes[x as usize].epoch;
        let lost: Vec<(u32, u32, u64)> = self
            .pending
            .keys()
            .filter(|k| k.0 == x && k.1 == epoch)
            .copied()
            .collect();
        self.lost_in_crash += lost.len() as u64;
        for k in lost {
            self.pending.remove(&k);
        }
        let protocols = self.protocols.clone();
        let serving = self.serving.clone();
        let node = &mut self.nodes[x as usize];
        let m = node.server.metrics();
        self.busy_answers += m.rejected_busy;
        let (lo, hi) = node.server.admission_limit_range();
        self.admission_min = self.admission_min.min(lo);
        self.admission_max = self.admission_max.max(hi);
        node.up = false;
        node.epoch += 1;
        node.pending = 0;
        node.handlers = 0;
        node.handed_bytes = 0;
        node.client_streams.clear();
        node.server_streams.clear();
        node.wake_at = NEVER;
        node.slow_until = 0;
        node.fail_until = 0;
        node.ccfg = node.ccfg.clone().with_seed(self.rng.next());
        match build_cores(
            &node.key,
            &node.ccfg,
            &node.scfg,
            &node.serves,
            &protocols,
            &serving,
            x % 2 == 1,
        ) {
            Ok((c, s)) => {
                node.client = c;
                node.server = s;
            }
            Err(e) => self.fail("config", e),
        }
        let back = self.now + self.rng.range(200 * MS, 3 * SEC);
        self.schedule(back, Ev::Restart { node: x });
    }

    // ===================================================================
    // Invariants

    fn check_node(&mut self, i: u32) {
        let n = &self.nodes[i as usize];
        if !n.up {
            return;
        }
        let s = &n.server;
        let limit = s.admission_limit();
        let (min, max) = (n.scfg.min_concurrent_conns, n.scfg.max_concurrent_limit);
        if limit < min || limit > max {
            let d = format!("node {i}: admission limit {limit} outside [{min}, {max}]");
            self.fail("admission limit", d);
            return;
        }
        self.admission_min = self.admission_min.min(limit);
        self.admission_max = self.admission_max.max(limit);
        let active = s.active();
        if active != n.handlers {
            let d = format!(
                "node {i}: server counts {active} active requests, handlers hold {}",
                n.handlers
            );
            self.fail("admission accounting", d);
            return;
        }
        if let Some(pos) = self.admitted_in_step.iter().position(|&x| x == i) {
            self.admitted_in_step.swap_remove(pos);
            // Admission happens only below the limit, and the limit moves
            // only on timer ticks: after admitting, active <= limit.
            if active > limit {
                let d = format!(
                    "node {i}: admitted a request with {active} active over a limit of {limit}"
                );
                self.fail("admission limit", d);
                return;
            }
        }
        let c = &n.client;
        if c.in_flight() != n.pending {
            let d = format!(
                "node {i}: client has {} requests in flight, {} were accepted and not ended",
                c.in_flight(),
                n.pending
            );
            self.fail("exactly once", d);
            return;
        }
        let st = c.pool_stats();
        let cfg = &n.ccfg;
        let bad = st.total > cfg.max_total_conns
            || st.idle > cfg.max_idle_conns
            || st.idle > st.open
            || st.open + st.opening != st.total
            || st.in_flight > st.total * cfg.max_inflight_per_stream
            || (st.waiting > 0 && (st.total < cfg.max_total_conns || st.idle > 0));
        if bad {
            let d = format!(
                "node {i}: pool {st:?} breaks its limits (max_total {}, max_idle {}, per stream {})",
                cfg.max_total_conns, cfg.max_idle_conns, cfg.max_inflight_per_stream
            );
            self.fail("pool limits", d);
            return;
        }
        if n.client_streams.len() != st.total {
            let d = format!(
                "node {i}: pool counts {} streams, the client has {} open or opening",
                st.total,
                n.client_streams.len()
            );
            self.fail("pool accounting", d);
        }
    }

    fn on_sweep(&mut self) {
        self.trace
            .event(tag::SWEEP, self.now, &[self.pending.len() as u64]);
        // The smallest offending key, so the report does not depend on map order.
        let mut worst: Option<((u32, u32, u64), u64)> = None;
        for (k, r) in &self.pending {
            let bound = self.nodes[k.0 as usize].max_request_ns;
            let age = self.now - r.started;
            if age > bound && worst.is_none_or(|(w, _)| *k < w) {
                worst = Some((*k, age));
            }
        }
        if let Some(((n, e, id), age)) = worst {
            let r = &self.pending[&(n, e, id)];
            let d = format!(
                "node {n}: request r{id} ({} bytes, target {:?}, closest {}, {} attempts started) pending for {:.3} s, over its bound of {:.3} s",
                r.body.len(),
                r.target,
                r.closest.is_some(),
                r.attempts_seen,
                age as f64 / 1e9,
                self.nodes[n as usize].max_request_ns as f64 / 1e9
            );
            self.fail("bounded completion", d);
        }
        if self.phase != Phase::Done {
            self.schedule(self.now + SEC, Ev::Sweep);
        }
    }

    // ===================================================================
    // Report

    fn report(mut self) -> Report {
        for n in &self.nodes {
            self.busy_answers += n.server.metrics().rejected_busy;
            let (lo, hi) = n.server.admission_limit_range();
            self.admission_min = self.admission_min.min(lo);
            self.admission_max = self.admission_max.max(hi);
        }
        // Order does not matter: a sum.
        self.frames += self
            .streams
            .values()
            .map(|s| s.fr_c2s.frames + s.fr_s2c.frames)
            .sum::<u64>();
        self.latencies.sort_unstable();
        let pct = |p: f64| -> Duration {
            if self.latencies.is_empty() {
                return Duration::ZERO;
            }
            let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
            Duration::from_nanos(self.latencies[i])
        };
        Report {
            seed: self.opts.seed,
            requests: self.accepted,
            liveness_requests: self.live_accepted,
            latency_p50: pct(0.50),
            latency_p99: pct(0.99),
            outcomes: std::mem::take(&mut self.outcomes),
            rejected: std::mem::take(&mut self.rejected),
            lost_in_crash: self.lost_in_crash,
            attempts: self.attempts,
            retries: self.retries,
            busy_answers: self.busy_answers,
            admission_min: if self.admission_min == usize::MAX {
                0
            } else {
                self.admission_min
            },
            admission_max: self.admission_max,
            faults: self.faults.clone(),
            streams_opened: self.streams_opened,
            inflated: self.inflated,
            frames: self.frames,
            steps: self.steps,
            virtual_time: Duration::from_nanos(self.now),
            scenario: std::mem::take(&mut self.scenario.summary),
            trace_hash: self.trace.finish(),
        }
    }
}

/// Upper bound on one request's lifetime: every attempt may wait for a pool
/// slot, the connect, the write and the read timeout; retries add at most
/// `max_backoff` each. One second of slack covers link delays.
fn request_bound(c: &ClientConfig) -> u64 {
    let per_attempt =
        ns(c.pool_timeout) + ns(c.connect_timeout) + ns(c.write_timeout) + ns(c.read_timeout);
    let tries = c.max_retries as u64 + 1;
    tries * per_attempt + c.max_retries as u64 * ns(c.max_backoff) + SEC
}

fn build_cores(
    key: &PeerKey,
    ccfg: &ClientConfig,
    scfg: &ServerConfig,
    serves: &[bool; PROTOCOLS.len()],
    protocols: &[Protocol],
    serving: &[Vec<u32>],
    defer_inflate: bool,
) -> Result<(Client, Server), String> {
    let mut client = Client::new(key.clone(), ccfg.clone()).map_err(|e| e.to_string())?;
    let mut server = Server::new(scfg.clone()).map_err(|e| e.to_string())?;
    // Odd nodes run as the adapters do: bodies are inflated outside the
    // core, after a delay in which cancels, timeouts and crashes race.
    client.defer_inflate(defer_inflate);
    server.defer_inflate(defer_inflate);
    for (p, protocol) in protocols.iter().enumerate() {
        if serves[p] {
            server
                .register(protocol.clone())
                .map_err(|e| e.to_string())?;
        }
        for &s in &serving[p] {
            let k = key_of(s);
            if k != *key {
                client
                    .add_server_node(protocol, k)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok((client, server))
}
