//! # pointsub-sim: a deterministic simulator for the pointsub core
//!
//! Many nodes, each running the real [`pointsub_proto::Client`] and
//! [`pointsub_proto::Server`] cores (never a re-implementation), on one
//! thread, on virtual time, with one seeded RNG
//! ([`pointsub_proto::retry::Rng`]) as the only source of randomness. The same
//! [`SimOptions`] give the same run, event for event; [`Report::trace_hash`]
//! fingerprints the whole trace.
//!
//! ```
//! use pointsub_sim::{SimOptions, run};
//!
//! let opts = SimOptions::with_seed(7).nodes(6).requests(300);
//! let a = run(&opts).expect("no invariant broken");
//! let b = run(&opts).unwrap();
//! assert_eq!(a.trace_hash, b.trace_hash);
//! assert!(a.succeeded() > 0);
//! ```
//!
//! ## Running
//!
//! ```sh
//! cargo run --release -p pointsub-sim -- --seed 7 --nodes 20 --requests 20000
//! cargo run --release -p pointsub-sim -- --nodes 100 --requests 1000000
//! cargo run --release -p pointsub-sim -- --seed 1 --seeds 200 --requests 10000 -q
//! cargo run --release -p pointsub-sim -- --help     # fault switches and rates
//! ```
//!
//! The binary prints the scenario the seed drew, outcomes by kind, retries,
//! virtual latency p50/p99, the admission limit range, the faults injected,
//! `trace hash: <hex>`, the wall time and simulated requests per second. On
//! a broken invariant it prints the violation, the seed and the one command
//! that replays it, and exits with status 1. `--log` prints every event and
//! core output to stderr, to follow a failing seed step by step.
//!
//! ## The world
//!
//! - **Nodes.** Every node has a client core and a server core. Each of three
//!   protocols (two echo, one digest) is served by a random subset of nodes;
//!   every client registers those servers with `add_server_node`. Client and
//!   server configurations are drawn from the seed: retry counts (0 to 5)
//!   and intervals, timeouts, pools (64 or 100 streams; one seed in four,
//!   one in ten above 32 nodes, stresses the pool with 2 to 16 streams and
//!   few idle ones), per-stream
//!   multiplexing (1 to 8), idle eviction, cool-downs, compression (on for
//!   70 % of nodes; odd nodes defer inflating to the simulated adapter, as
//!   the real adapters do, which answers after a random delay in which
//!   cancels, timeouts and crashes race), block sizes (some servers accept only 256 KiB, some
//!   clients only 1 MiB), and admission limits (spec defaults 1000 in
//!   [100, 10000], or tight ones: 100 in [50, 200], 20 in [8, 40]; sometimes
//!   a small per-peer cap) so bursts really get Busy answers. The
//!   scenario line of the summary says what the seed drew.
//! - **Network.** A stream's bytes arrive in order within each direction,
//!   after a latency drawn per link (0.2–5 ms, one link in ten 10–60 ms)
//!   plus jitter, so streams reorder against each other. One write in ten is
//!   split at random points (into two or three pieces) so the decoders see
//!   frames cut anywhere. Opening a stream takes a round trip; the server may
//!   refuse it. Writes are reported flushed at once.
//! - **Faults** (each drawn per submitted request with its own rate): reset
//!   one stream; drop a connection (every stream between two nodes resets);
//!   partition the nodes in two (crossing streams reset, opens across fail
//!   with `Unreachable`) and heal later; crash a node (its streams reset at
//!   the other end after a link delay, its requests are lost, opens to it
//!   fail or go unanswered) and restart it with fresh cores; make a node's
//!   handlers slow or failing for a while; bursts of requests at one server.
//! - **Workload.** Requests to a chosen peer (`send_with`, sometimes with a
//!   deadline, sometimes to a node that does not serve the protocol) and to
//!   the closest node (`send_closest`, sometimes with a routing key, an
//!   excluded node, a hedge of two or a deadline), 20 to 100 per node and
//!   second of virtual time. Bodies are mostly small (99.7 % under 256 B),
//!   some up to 4 KiB, a few up to 64 KiB and 256 KiB, a few per million of
//!   1 MiB up to [`SimOptions::max_body`]; 30 % compressible text, the rest
//!   random. One in a hundred asks its handler to fail; some requests are
//!   cancelled. Most handlers answer at once, the others after up to a few
//!   milliseconds (seconds when the node is slowed down).
//!
//! Bodies are self-describing (see [`body`]): echo handlers return the body,
//! digest handlers a digest naming the request's tag and the answering node,
//! failing handlers a message naming the tag. A response delivered to the
//! wrong request is therefore always detected.
//!
//! ## A server with a capacity
//!
//! [`capacity`] runs a second, focused scenario: one server whose handlers
//! have a capacity (C workers, service time S, a FIFO queue behind them)
//! under open-loop arrivals in phases (idle, light, ten times capacity,
//! recovery), to show how the adaptive admission limit behaves: it does not
//! rise on an idle or light server, it falls under overload so admitted
//! requests keep their latency while the excess gets Busy, and it grows back
//! when demand needs it. Its tests are in `tests/capacity.rs`.
//!
//! ## Phases
//!
//! 1. **Safety**: the workload with faults; invariants after every step.
//! 2. **Drain**: no new requests or faults; every request ends, every
//!    partition heals, every crashed node restarts, every handler (slow
//!    ones too) answers.
//! 3. **Quiet**: virtual time advances past every cool-down.
//! 4. **Liveness**: a light workload with faults off; every request must
//!    succeed. Then every handler must have answered and every core must be
//!    empty (no request in flight, no admission slot, no pool slot).
//!
//! ## Invariants
//!
//! Checked after every step on every node the step touched (the others did
//! not change), and on every core output. Names as reported in
//! [`Violation::invariant`]:
//!
//! - `exactly once`: every accepted request ends with exactly one
//!   `Completed`; no completion or attempt for a request not pending; a
//!   client's `in_flight()` equals the requests it accepted and did not end;
//!   `cancel` returns true exactly for pending requests.
//! - `response matches request`: a response is the right answer to its own
//!   request, from a node the request could go to.
//! - `typed outcome`: every error is explained by the run (a retryable
//!   network or load error, the handler's own failure naming this request, a
//!   deadline that passed, a cancel, an oversize body, a node that does not
//!   serve the protocol); a protocol error, for instance, never is.
//! - `retry bound`: attempts are numbered 1, 2, 3… and never exceed
//!   `max_retries + 1`; `Completed.attempts` equals the attempts started.
//! - `deadline`, `bounded completion`: a request ends by its deadline, and
//!   within the bound its client's timeouts imply.
//! - `pool limits`, `pool accounting`: `pool_stats()` stays within
//!   `max_total_conns`, `max_idle_conns` and per-stream multiplexing; waiters
//!   only when the pool is full with nothing idle; its stream count equals
//!   the streams the client has open or opening.
//! - `admission limit`, `admission accounting`: the limit stays in
//!   `[min, max]`; a request is admitted only below the limit (so after
//!   admitting, `active <= limit`; the limit may later shrink below `active`
//!   by design); `active()` equals the requests handed to handlers and not
//!   answered.
//! - `frame limits`: every frame a core writes is well formed, at most
//!   `CHUNK_SIZE` and the sender's `max_block_size`; messages fit the
//!   sender's block size; multi-chunk messages never interleave.
//! - `stream use`: cores write only on streams that are open.
//! - `closest routing`, `routing`: the first attempt of a `send_closest`
//!   goes to the closest node (SHA-256 XOR distance, computed here
//!   independently) that is not cooling down, and each first-round attempt
//!   to the node `Client::router().order(...)` ranks at its place; direct
//!   requests go to their peer.
//! - `liveness`: after the faults heal, every request succeeds.
//! - `progress`: virtual time advances (no timer livelock).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod body;
pub mod capacity;
mod options;
mod report;
pub mod trace;
pub mod wire;
mod world;

pub use options::SimOptions;
pub use report::{FaultCounts, Report, Violation};
pub use world::World;

/// Runs one simulation to the end.
pub fn run(opts: &SimOptions) -> Result<Report, Box<Violation>> {
    let world = World::new(opts.clone()).map_err(|e| {
        Box::new(Violation {
            seed: opts.seed,
            invariant: "options",
            detail: e,
            at: std::time::Duration::ZERO,
            step: 0,
            submitted: 0,
            trace_hash: 0,
        })
    })?;
    world.run()
}

/// [`run`], printing every event and core output to stderr.
pub fn run_logged(opts: &SimOptions) -> Result<Report, Box<Violation>> {
    let mut world = World::new(opts.clone()).map_err(|e| {
        Box::new(Violation {
            seed: opts.seed,
            invariant: "options",
            detail: e,
            at: std::time::Duration::ZERO,
            step: 0,
            submitted: 0,
            trace_hash: 0,
        })
    })?;
    world.set_log(true);
    world.run()
}
