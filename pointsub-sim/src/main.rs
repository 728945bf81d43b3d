//! `pointsub-sim`: runs the deterministic simulator from the command line.
//!
//! ```sh
//! cargo run --release -p pointsub-sim -- --seed 7 --nodes 20 --requests 20000
//! cargo run --release -p pointsub-sim -- --seeds 100 --requests 10000
//! ```

use clap::Parser;
use pointsub_sim::{SimOptions, run, run_logged};
use std::process::ExitCode;
use std::time::Instant;

/// mimalloc: the simulator allocates and frees small buffers at a high rate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deterministic simulation of pointsub nodes under faults. Prints a summary
/// and the trace hash; on a broken invariant, prints the seed and the
/// command that replays it, and exits with status 1.
#[derive(Parser, Debug)]
#[command(name = "pointsub-sim", version)]
struct Args {
    /// Seed of the run (the first one with --seeds).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run this many seeds, from --seed upwards.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Number of nodes.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Requests in the safety phase (faults on).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests in the liveness phase [default: requests/100, in 50..=10000].
    #[arg(long)]
    liveness_requests: Option<u64>,
    /// Turn every injected fault off.
    #[arg(long)]
    no_faults: bool,
    /// Per request, probability of resetting a stream.
    #[arg(long)]
    reset_rate: Option<f64>,
    /// Per request, probability of dropping a connection between two nodes.
    #[arg(long)]
    drop_rate: Option<f64>,
    /// Per request, probability of a partition.
    #[arg(long)]
    partition_rate: Option<f64>,
    /// Per request, probability of a node crash.
    #[arg(long)]
    crash_rate: Option<f64>,
    /// Per request, probability of slowing a node's handlers.
    #[arg(long)]
    slow_rate: Option<f64>,
    /// Per request, probability of making a node's handlers fail.
    #[arg(long)]
    fail_rate: Option<f64>,
    /// Per request, probability of a burst at one server.
    #[arg(long)]
    burst_rate: Option<f64>,
    /// Fraction of big bodies (1 MiB to --max-body).
    #[arg(long)]
    big_rate: Option<f64>,
    /// Largest body in bytes.
    #[arg(long)]
    max_body: Option<usize>,
    /// Print every event and core output to stderr (debugging a seed).
    #[arg(long)]
    log: bool,
    /// One line per seed instead of the full summary.
    #[arg(long, short)]
    quiet: bool,
}

impl Args {
    fn options(&self, seed: u64) -> SimOptions {
        let mut o = SimOptions::with_seed(seed)
            .nodes(self.nodes)
            .requests(self.requests)
            .faults(!self.no_faults);
        o.liveness_requests = self.liveness_requests;
        let set = |dst: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut o.reset_rate, self.reset_rate);
        set(&mut o.drop_rate, self.drop_rate);
        set(&mut o.partition_rate, self.partition_rate);
        set(&mut o.crash_rate, self.crash_rate);
        set(&mut o.slow_rate, self.slow_rate);
        set(&mut o.fail_rate, self.fail_rate);
        set(&mut o.burst_rate, self.burst_rate);
        set(&mut o.big_rate, self.big_rate);
        if let Some(m) = self.max_body {
            o.max_body = m;
        }
        o
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let total_start = Instant::now();
    let mut total_requests = 0u64;
    for k in 0..args.seeds {
        let seed = args.seed.wrapping_add(k);
        let opts = args.options(seed);
        if let Err(e) = opts.validate() {
            eprintln!("invalid options: {e}");
            return ExitCode::from(2);
        }
        let start = Instant::now();
        let result = if args.log {
            run_logged(&opts)
        } else {
            run(&opts)
        };
        match result {
            Ok(r) => {
                let wall = start.elapsed().as_secs_f64();
                total_requests += r.requests;
                let rate = r.requests as f64 / wall.max(1e-9);
                if args.quiet || args.seeds > 1 {
                    println!(
                        "seed {seed}: ok, {} requests ({} ok), {} retries, busy {}, admission [{}, {}], wall {:.2} s, {:.0} req/s, trace hash: {:016x}",
                        r.requests,
                        r.succeeded(),
                        r.retries,
                        r.busy_answers,
                        r.admission_min,
                        r.admission_max,
                        wall,
                        rate,
                        r.trace_hash
                    );
                } else {
                    println!(
                        "seed {seed}, {} nodes, faults {}",
                        opts.nodes,
                        if opts.faults { "on" } else { "off" }
                    );
                    println!("{r}");
                    println!("wall time: {wall:.3} s, simulated requests per second: {rate:.0}");
                }
            }
            Err(v) => {
                let wall = start.elapsed().as_secs_f64();
                eprintln!("INVARIANT VIOLATED after {wall:.3} s wall time");
                eprintln!("{v}");
                eprintln!("trace hash at the violation: {:016x}", v.trace_hash);
                eprintln!("seed: {seed}");
                eprintln!("replay: {}", opts.replay_command());
                return ExitCode::from(1);
            }
        }
    }
    if args.seeds > 1 {
        let wall = total_start.elapsed().as_secs_f64();
        println!(
            "{} seeds ok, {} requests, wall time {:.2} s, {:.0} simulated requests per second",
            args.seeds,
            total_requests,
            wall,
            total_requests as f64 / wall.max(1e-9)
        );
    }
    ExitCode::SUCCESS
}
