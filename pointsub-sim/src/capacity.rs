//! A server with a capacity, under open-loop load: how admission behaves.
//!
//! The [`World`](crate::World) models handlers as random delays with no
//! capacity, so latency never rises with load there. This scenario gives one
//! server a capacity instead: `workers` handlers (C) that each take a service
//! time (S, with a little seeded jitter); requests admitted beyond C wait in
//! a FIFO queue for a free worker, so their latency grows with the queue,
//! as on a real server. Clients (real [`Client`] cores with their retries and
//! backoff) send to it with open-loop Poisson arrivals whose rate changes by
//! [`Phase`]; the server is the real [`Server`] core. The network is a fixed
//! one-way delay, without faults.
//!
//! Everything runs on virtual time with one seeded RNG: the same
//! [`CapacityOptions`] give the same [`CapacityReport`], trace hash included.
//!
//! ```
//! use pointsub_sim::capacity::{CapacityOptions, Phase, run};
//! use std::time::Duration;
//!
//! let mut o = CapacityOptions::new(1);
//! o.phases = vec![Phase::new(Duration::from_millis(500), 1_000.0)];
//! let r = run(&o).unwrap();
//! assert_eq!(r.phases[0].busy, 0);
//! assert!(r.phases[0].succeeded > 300);
//! ```

use crate::trace::TraceHash;
use bytes::Bytes;
use pointsub_proto::retry::Rng;
use pointsub_proto::{
    Client, ClientConfig, ClientEvent, Instant, PeerKey, Protocol, RequestError, RequestId, Server,
    ServerConfig, ServerEvent, StreamId,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

const PROTOCOL: &str = "/sim/capacity/1";

/// One stretch of the workload: open-loop arrivals at `rate` requests per
/// second for `duration`, each needing `service` of a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// How long the phase lasts (virtual time).
    pub duration: Duration,
    /// Mean arrivals per second (Poisson); 0 for an idle phase.
    pub rate: f64,
    /// Service time of requests that start during the phase; `None`: the
    /// run's [`CapacityOptions::service`].
    pub service: Option<Duration>,
}

impl Phase {
    /// A phase at `rate` requests/s with the run's service time.
    pub fn new(duration: Duration, rate: f64) -> Self {
        Phase {
            duration,
            rate,
            service: None,
        }
    }

    /// The same phase with handlers taking `service` instead.
    #[must_use]
    pub fn with_service(mut self, service: Duration) -> Self {
        self.service = Some(service);
        self
    }
}

/// Options of a capacity run.
#[derive(Clone, Debug)]
pub struct CapacityOptions {
    /// The seed of the run's RNG (arrivals, jitter, client choice).
    pub seed: u64,
    /// Handlers that run at once (C); 200.
    pub workers: usize,
    /// Service time of one request (S); 20 ms.
    pub service: Duration,
    /// Relative jitter of the service time: uniform in `S * (1 ± jitter)`; 0.1.
    pub jitter: f64,
    /// Client nodes the arrivals are spread over; 20.
    pub clients: usize,
    /// One-way network delay; 0.25 ms.
    pub link: Duration,
    /// The workload, in order.
    pub phases: Vec<Phase>,
    /// The server's configuration (admission defaults of the spec; the
    /// adjust tick 100 ms so a run of seconds sees many ticks).
    pub server: ServerConfig,
    /// The clients' configuration (retries with a 50 ms backoff base).
    pub client: ClientConfig,
}

impl CapacityOptions {
    /// C = 200 workers, S = 20 ms (10,000 requests/s), 20 clients, and one
    /// light phase; the server's tick is 100 ms, its admission otherwise the
    /// spec's defaults.
    pub fn new(seed: u64) -> Self {
        CapacityOptions {
            seed,
            workers: 200,
            service: Duration::from_millis(20),
            jitter: 0.1,
            clients: 20,
            link: Duration::from_micros(250),
            phases: vec![Phase::new(Duration::from_secs(1), 2_000.0)],
            server: ServerConfig::default().with_adjust_interval(Duration::from_millis(100)),
            client: ClientConfig::default()
                .with_retry_interval(Duration::from_millis(50))
                .with_max_backoff(Duration::from_millis(400))
                .with_max_inflight_per_stream(8),
        }
    }

    /// The server's capacity in requests per second: `workers / service`.
    pub fn capacity(&self) -> f64 {
        self.workers as f64 / self.service.as_secs_f64()
    }
}

/// What happened during one phase. Requests count in the phase they were
/// submitted in; latencies of admitted requests in the phase they were
/// admitted in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseReport {
    /// Requests submitted.
    pub submitted: u64,
    /// Requests answered by the handler.
    pub succeeded: u64,
    /// Requests that ended `Busy` after their retries.
    pub busy: u64,
    /// Requests that ended with another error.
    pub other_errors: u64,
    /// Requests not ended when the run stopped.
    pub unfinished: u64,
    /// Attempts started for the phase's requests (retries included).
    pub attempts: u64,
    /// Busy answers the server sent during the phase.
    pub busy_answers: u64,
    /// Requests the server admitted during the phase.
    pub admitted: u64,
    /// Server-side latency (admission to answer) of the requests admitted
    /// during the phase, sorted, in nanoseconds.
    pub admitted_latency: Vec<u64>,
    /// The admission limit sampled once per adjust interval of the phase.
    pub limits: Vec<usize>,
    /// Most requests admitted at once during the phase.
    pub peak_active: usize,
    /// Shortest time a `Busy` request took from submission to its end (it
    /// waited for every backoff), in nanoseconds; 0 if none.
    pub min_busy_duration: u64,
    /// Most attempts any request of the phase made.
    pub max_attempts: u32,
}

impl PhaseReport {
    /// The `q` quantile (0..=1) of the admitted latency; zero if none.
    pub fn admitted_quantile(&self, q: f64) -> Duration {
        quantile(&self.admitted_latency, q)
    }

    /// The lowest and highest limit after the phase's ticks.
    pub fn limit_range(&self) -> (usize, usize) {
        let lo = self.limits.iter().copied().min().unwrap_or(0);
        let hi = self.limits.iter().copied().max().unwrap_or(0);
        (lo, hi)
    }
}

/// One admitted request's latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The phase it was admitted in.
    pub phase: usize,
    /// When it was admitted, from the start of that phase (ns).
    pub offset: u64,
    /// Admission to answer (ns).
    pub latency: u64,
}

/// The server observed once per adjust interval (from time 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickSample {
    /// Virtual time (ns).
    pub at: u64,
    /// The admission limit in force.
    pub limit: usize,
    /// Busy answers the server sent so far (cumulative).
    pub busy_answers: u64,
    /// Requests admitted at that moment.
    pub active: usize,
    /// Of those, waiting for a worker.
    pub queued: usize,
}

/// The outcome of a capacity run.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityReport {
    /// One report per phase, in order.
    pub phases: Vec<PhaseReport>,
    /// Every admitted request's latency, in admission order.
    pub samples: Vec<Sample>,
    /// The server sampled once per adjust interval.
    pub ticks: Vec<TickSample>,
    /// Fingerprint of the whole run (every event processed).
    pub trace_hash: u64,
}

impl CapacityReport {
    /// Admitted latencies (ns, sorted) of requests admitted in `phase` at
    /// least `from` after the phase began.
    pub fn admitted_after(&self, phase: usize, from: Duration) -> Vec<u64> {
        let from = u64::try_from(from.as_nanos()).unwrap_or(u64::MAX);
        let mut v: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.phase == phase && s.offset >= from)
            .map(|s| s.latency)
            .collect();
        v.sort_unstable();
        v
    }
}

/// The `q` quantile (0..=1) of sorted nanosecond samples; zero if none.
pub fn quantile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Duration::from_nanos(sorted[i.min(sorted.len() - 1)])
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn key_of(i: usize) -> PeerKey {
    PeerKey::from(format!("capacity-node-{i}").into_bytes())
}

#[derive(Debug)]
enum Ev {
    Arrival,
    PhaseStart(usize),
    /// A stream open reaches the server (and its answer the client at once).
    Open(u64),
    Deliver {
        sim: u64,
        to_server: bool,
        data: Bytes,
    },
    Fin {
        sim: u64,
        to_server: bool,
        reset: bool,
    },
    WorkerDone {
        stream: StreamId,
        rid: u64,
    },
    Wake {
        node: usize,
    },
}

struct Stream {
    client: usize,
    cs: StreamId,
    ss: Option<StreamId>,
    c_open: bool,
    s_open: bool,
}

struct Req {
    phase: usize,
    submitted: u64,
}

struct Sim {
    o: CapacityOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    next_ev: usize,
    trace: TraceHash,
    server: Server,
    server_key: PeerKey,
    clients: Vec<Client>,
    /// Earliest wake scheduled per node (0 = server, 1.. = clients).
    wake_at: Vec<u64>,
    streams: BTreeMap<u64, Stream>,
    next_sim: u64,
    by_client: Vec<BTreeMap<StreamId, u64>>,
    by_server: BTreeMap<StreamId, u64>,
    /// Admitted and waiting for a worker: (stream, request id).
    waiting: VecDeque<(StreamId, u64)>,
    busy_workers: usize,
    admitted_at: BTreeMap<(StreamId, u64), (usize, u64)>,
    reqs: Vec<BTreeMap<RequestId, Req>>,
    phase: usize,
    phase_start: u64,
    end: u64,
    protocol: Protocol,
    last_busy: u64,
    report: CapacityReport,
}

/// Runs the scenario to its end: every phase, then a drain of at most 30 s
/// of virtual time in which no request arrives, so retries and handlers
/// finish.
pub fn run(o: &CapacityOptions) -> Result<CapacityReport, String> {
    if o.workers == 0 || o.clients == 0 || o.phases.is_empty() {
        return Err("workers, clients and phases must not be empty".into());
    }
    let protocol = Protocol::from(PROTOCOL);
    let mut server = Server::new(o.server.clone()).map_err(|e| e.to_string())?;
    server
        .register(protocol.clone())
        .map_err(|e| e.to_string())?;
    let server_key = key_of(0);
    let mut clients = Vec::new();
    for i in 1..=o.clients {
        let cfg = o
            .client
            .clone()
            .with_seed(o.seed ^ (i as u64).wrapping_mul(0x9e37));
        let mut c = Client::new(key_of(i), cfg).map_err(|e| e.to_string())?;
        c.add_server_node(&protocol, server_key.clone())
            .map_err(|e| e.to_string())?;
        clients.push(c);
    }
    let total: u64 = o.phases.iter().map(|p| ns(p.duration)).sum();
    let mut sim = Sim {
        rng: Rng::new(o.seed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        next_ev: 0,
        trace: TraceHash::new(),
        server,
        server_key,
        wake_at: vec![u64::MAX; o.clients + 1],
        clients,
        streams: BTreeMap::new(),
        next_sim: 0,
        by_client: vec![BTreeMap::new(); o.clients + 1],
        by_server: BTreeMap::new(),
        waiting: VecDeque::new(),
        busy_workers: 0,
        admitted_at: BTreeMap::new(),
        reqs: (0..=o.clients).map(|_| BTreeMap::new()).collect(),
        phase: 0,
        phase_start: 0,
        end: total,
        protocol,
        last_busy: 0,
        report: CapacityReport {
            phases: vec![PhaseReport::default(); o.phases.len()],
            samples: Vec::new(),
            ticks: Vec::new(),
            trace_hash: 0,
        },
        o: o.clone(),
    };
    sim.schedule(0, Ev::PhaseStart(0));
    let stop = total + 30_000_000_000;
    let mut next_tick = ns(o.server.adjust_interval);
    while let Some(Reverse((at, _, id))) = sim.queue.pop() {
        if at > stop {
            break;
        }
        // Sample the server once per adjust interval, before the first
        // event at or past each boundary.
        sim.now = at;
        while next_tick <= at && next_tick <= total {
            sim.sample_tick(next_tick);
            next_tick += ns(o.server.adjust_interval);
        }
        let ev = sim.events.remove(&id).ok_or("event lost")?;
        sim.dispatch(ev);
    }
    let mut r = sim.report;
    for reqs in &sim.reqs {
        for req in reqs.values() {
            r.phases[req.phase].unfinished += 1;
        }
    }
    for p in &mut r.phases {
        p.admitted_latency.sort_unstable();
    }
    r.trace_hash = sim.trace.finish();
    Ok(r)
}

impl Sim {
    fn schedule(&mut self, at: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.events.insert(id, ev);
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, id)));
    }

    fn sample_tick(&mut self, at: u64) {
        let limit = self.server.admission_limit();
        let active = self.server.active();
        let t = TickSample {
            at,
            limit,
            busy_answers: self.server.metrics().rejected_busy,
            active,
            queued: self.waiting.len(),
        };
        self.report.ticks.push(t);
        let p = &mut self.report.phases[self.phase];
        p.limits.push(limit);
    }

    fn phase_of(&self, at: u64) -> usize {
        let mut start = 0;
        for (i, p) in self.o.phases.iter().enumerate() {
            start += ns(p.duration);
            if at < start {
                return i;
            }
        }
        self.o.phases.len() - 1
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::PhaseStart(i) => {
                self.trace.event(1, self.now, &[i as u64]);
                self.phase = i;
                self.phase_start = self.now;
                let next = self.now + ns(self.o.phases[i].duration);
                if i + 1 < self.o.phases.len() {
                    self.schedule(next, Ev::PhaseStart(i + 1));
                }
                self.schedule_arrival();
            }
            Ev::Arrival => {
                // Only arrivals drawn in the current phase count; a phase
                // change schedules its own first arrival.
                self.arrive();
            }
            Ev::Open(sim) => self.on_open(sim),
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
            Ev::WorkerDone { stream, rid } => {
                self.trace.event(2, self.now, &[stream.0, rid]);
                self.busy_workers -= 1;
                if let Some((phase, at)) = self.admitted_at.remove(&(stream, rid)) {
                    let latency = self.now - at;
                    self.report.samples.push(Sample {
                        phase,
                        offset: at - self.phase_start_of(phase),
                        latency,
                    });
                    self.report.phases[phase].admitted_latency.push(latency);
                }
                let now = Instant::from_nanos(self.now);
                self.server
                    .respond(stream, rid, Ok(Bytes::from_static(b"done")), now);
                self.start_workers();
                self.pump_server();
            }
            Ev::Wake { node } => {
                if self.wake_at[node] != self.now {
                    return;
                }
                self.wake_at[node] = u64::MAX;
                self.trace.event(3, self.now, &[node as u64]);
                let now = Instant::from_nanos(self.now);
                if node == 0 {
                    self.server.handle_timeout(now);
                    self.pump_server();
                } else {
                    self.clients[node - 1].handle_timeout(now);
                    self.pump_client(node);
                }
            }
        }
    }

    fn phase_start_of(&self, phase: usize) -> u64 {
        self.o.phases[..phase].iter().map(|p| ns(p.duration)).sum()
    }

    fn schedule_arrival(&mut self) {
        let rate = self.o.phases[self.phase].rate;
        if rate <= 0.0 {
            return;
        }
        // Exponential inter-arrival time.
        let u = self.rng.next_f64();
        let gap = (-(1.0 - u).ln() / rate * 1e9) as u64;
        let at = self.now + gap.max(1);
        let phase_end = self.phase_start + ns(self.o.phases[self.phase].duration);
        if at < phase_end.min(self.end) {
            self.schedule(at, Ev::Arrival);
        }
    }

    fn arrive(&mut self) {
        if self.phase_of(self.now) != self.phase {
            return;
        }
        let c = 1 + self.rng.below(self.o.clients as u64) as usize;
        let now = Instant::from_nanos(self.now);
        let body = Bytes::copy_from_slice(&self.seq.to_le_bytes());
        let res =
            self.clients[c - 1].send(self.server_key.clone(), self.protocol.clone(), body, now);
        let p = &mut self.report.phases[self.phase];
        p.submitted += 1;
        match res {
            Ok(id) => {
                self.trace.event(4, self.now, &[c as u64, id.0]);
                self.reqs[c].insert(
                    id,
                    Req {
                        phase: self.phase,
                        submitted: self.now,
                    },
                );
            }
            Err(_) => p.other_errors += 1,
        }
        self.pump_client(c);
        self.schedule_arrival();
    }

    fn start_workers(&mut self) {
        while self.busy_workers < self.o.workers {
            let Some((stream, rid)) = self.waiting.pop_front() else {
                break;
            };
            self.busy_workers += 1;
            let phase = self.phase_of(self.now);
            let s = ns(self.o.phases[phase].service.unwrap_or(self.o.service)) as f64;
            let j = self.o.jitter.clamp(0.0, 1.0);
            let f = 1.0 - j + 2.0 * j * self.rng.next_f64();
            let at = self.now + (s * f).max(1.0) as u64;
            self.schedule(at, Ev::WorkerDone { stream, rid });
        }
    }

    fn wake(&mut self, node: usize, t: Option<Instant>) {
        let Some(t) = t else { return };
        let t = t.as_nanos().max(self.now);
        if t < self.wake_at[node] {
            self.wake_at[node] = t;
            self.schedule(t, Ev::Wake { node });
        }
    }

    fn pump_server(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.server.poll_event() {
                progressed = true;
                self.on_server_event(ev);
            }
            while let Some(stream) = self.server.poll_writable() {
                while let Some(data) = self.server.poll_transmit_on(stream) {
                    progressed = true;
                    let now = Instant::from_nanos(self.now);
                    self.server.handle_flushed(stream, data.len(), now);
                    if let Some(&sim) = self.by_server.get(&stream) {
                        self.ship(sim, false, data);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        let m = self.server.metrics();
        if m.rejected_busy > self.last_busy {
            let p = self.phase_of(self.now);
            self.report.phases[p].busy_answers += m.rejected_busy - self.last_busy;
            self.last_busy = m.rejected_busy;
        }
        let t = self.server.poll_timeout();
        self.wake(0, t);
    }

    fn on_server_event(&mut self, ev: ServerEvent) {
        match ev {
            ServerEvent::Request {
                stream, request_id, ..
            } => {
                self.trace.event(5, self.now, &[stream.0, request_id]);
                let phase = self.phase_of(self.now);
                let p = &mut self.report.phases[phase];
                p.admitted += 1;
                p.peak_active = p.peak_active.max(self.server.active());
                self.admitted_at
                    .insert((stream, request_id), (phase, self.now));
                self.waiting.push_back((stream, request_id));
                self.start_workers();
            }
            ServerEvent::CloseStream { stream, reset } => {
                self.trace.event(6, self.now, &[stream.0, reset as u64]);
                if let Some(sim) = self.by_server.remove(&stream)
                    && let Some(s) = self.streams.get_mut(&sim)
                {
                    s.s_open = false;
                    if !s.c_open {
                        self.streams.remove(&sim);
                        return;
                    }
                    let at = self.now + ns(self.o.link);
                    self.schedule(
                        at,
                        Ev::Fin {
                            sim,
                            to_server: false,
                            reset,
                        },
                    );
                }
            }
            // Cancels: the handler runs to its end anyway; its answer is
            // dropped by the core.
            _ => {}
        }
    }

    fn pump_client(&mut self, c: usize) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.clients[c - 1].poll_event() {
                progressed = true;
                self.on_client_event(c, ev);
            }
            while let Some(stream) = self.clients[c - 1].poll_writable() {
                while let Some(data) = self.clients[c - 1].poll_transmit_on(stream) {
                    progressed = true;
                    let now = Instant::from_nanos(self.now);
                    self.clients[c - 1].handle_flushed(stream, data.len(), now);
                    if let Some(&sim) = self.by_client[c].get(&stream) {
                        self.ship(sim, true, data);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        let t = self.clients[c - 1].poll_timeout();
        self.wake(c, t);
    }

    fn on_client_event(&mut self, c: usize, ev: ClientEvent) {
        match ev {
            ClientEvent::OpenStream { stream, .. } => {
                let sim = self.next_sim;
                self.next_sim += 1;
                self.trace.event(7, self.now, &[c as u64, stream.0, sim]);
                self.streams.insert(
                    sim,
                    Stream {
                        client: c,
                        cs: stream,
                        ss: None,
                        c_open: true,
                        s_open: false,
                    },
                );
                self.by_client[c].insert(stream, sim);
                let at = self.now + 2 * ns(self.o.link);
                self.schedule(at, Ev::Open(sim));
            }
            ClientEvent::CloseStream { stream } => {
                self.trace.event(8, self.now, &[c as u64, stream.0]);
                if let Some(sim) = self.by_client[c].remove(&stream)
                    && let Some(s) = self.streams.get_mut(&sim)
                {
                    s.c_open = false;
                    let at = self.now + ns(self.o.link);
                    self.schedule(
                        at,
                        Ev::Fin {
                            sim,
                            to_server: true,
                            reset: false,
                        },
                    );
                }
            }
            ClientEvent::Completed {
                id,
                result,
                attempts,
            } => {
                let code = match &result {
                    Ok(_) => 0,
                    Err(RequestError::Busy(_)) => 1,
                    Err(_) => 2,
                };
                self.trace
                    .event(9, self.now, &[c as u64, id.0, code, attempts as u64]);
                let Some(req) = self.reqs[c].remove(&id) else {
                    return;
                };
                let p = &mut self.report.phases[req.phase];
                p.attempts += u64::from(attempts);
                p.max_attempts = p.max_attempts.max(attempts);
                match code {
                    0 => p.succeeded += 1,
                    1 => {
                        p.busy += 1;
                        let took = self.now - req.submitted;
                        if p.min_busy_duration == 0 || took < p.min_busy_duration {
                            p.min_busy_duration = took;
                        }
                    }
                    _ => p.other_errors += 1,
                }
            }
            _ => {}
        }
    }

    fn ship(&mut self, sim: u64, to_server: bool, data: Bytes) {
        let at = self.now + ns(self.o.link);
        self.schedule(
            at,
            Ev::Deliver {
                sim,
                to_server,
                data,
            },
        );
    }

    fn on_open(&mut self, sim: u64) {
        let Some(s) = self.streams.get(&sim) else {
            return;
        };
        let (c, cs) = (s.client, s.cs);
        self.trace.event(10, self.now, &[sim]);
        if !s.c_open {
            self.streams.remove(&sim);
            return;
        }
        let now = Instant::from_nanos(self.now);
        match self
            .server
            .handle_inbound_stream(key_of(c), self.protocol.clone(), now)
        {
            Ok(ss) => {
                if let Some(s) = self.streams.get_mut(&sim) {
                    s.ss = Some(ss);
                    s.s_open = true;
                }
                self.by_server.insert(ss, sim);
                self.clients[c - 1].handle_stream_opened(cs, now);
            }
            Err(e) => {
                self.streams.remove(&sim);
                self.by_client[c].remove(&cs);
                self.clients[c - 1].handle_open_failed(
                    cs,
                    pointsub_proto::OpenFailure::Unreachable(e.to_string()),
                    now,
                );
            }
        }
        self.pump_server();
        self.pump_client(c);
    }

    fn on_deliver(&mut self, sim: u64, to_server: bool, data: Bytes) {
        let Some(s) = self.streams.get(&sim) else {
            return;
        };
        self.trace
            .event(11, self.now, &[sim, to_server as u64, data.len() as u64]);
        let now = Instant::from_nanos(self.now);
        if to_server {
            if let (true, Some(ss)) = (s.s_open, s.ss) {
                self.server.handle_data(ss, data, now);
                self.pump_server();
            }
        } else if s.c_open {
            let (c, cs) = (s.client, s.cs);
            self.clients[c - 1].handle_data(cs, data, now);
            self.pump_client(c);
        }
    }

    fn on_fin(&mut self, sim: u64, to_server: bool, reset: bool) {
        let Some(s) = self.streams.get_mut(&sim) else {
            return;
        };
        self.trace
            .event(12, self.now, &[sim, to_server as u64, reset as u64]);
        let now = Instant::from_nanos(self.now);
        if to_server {
            if let (true, Some(ss)) = (s.s_open, s.ss) {
                self.server.handle_stream_closed(ss, now);
                self.pump_server();
            }
        } else if s.c_open {
            s.c_open = false;
            let (c, cs) = (s.client, s.cs);
            self.by_client[c].remove(&cs);
            if reset {
                self.clients[c - 1].handle_stream_reset(cs, now);
            } else {
                self.clients[c - 1].handle_stream_closed(cs, now);
            }
            self.pump_client(c);
        }
        if self
            .streams
            .get(&sim)
            .is_some_and(|s| !s.c_open && !s.s_open)
        {
            self.streams.remove(&sim);
        }
    }
}
