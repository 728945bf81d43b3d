//! `pointsub bench`: pointsub beside its anchors, in one process.
//!
//! For each system (in turn, never at once) and each case of
//! [`MATRIX`], fresh nodes are started, `in_flight` tasks run a closed loop
//! (send one echo request, wait for its response, repeat) for a warm-up and
//! then the measured window, and everything is shut down again.
//!
//! - QPS and MB/s count the requests that succeeded inside the window; MB/s
//!   counts body bytes in both directions.
//! - Latencies (mean, p50, p99) are those of the same requests.
//! - Failures count every request of the case that failed, warm-up
//!   included; a task whose request failed pauses [`FAILURE_PAUSE`] and goes
//!   on. A request is cut at [`REQUEST_TIMEOUT`], or at the end of the
//!   window plus [`GRACE`], whichever comes first, so a case cannot hang.
//! - Peak RSS is the process's VmHWM, reset before each case when the
//!   kernel allows it (`/proc/self/clear_refs`, after handing glibc's free
//!   heap pages back), so it is per case; the CSV also has the RSS the case
//!   started from.
//!
//! # Adding a system
//!
//! A system is a [`System`] (name, description, start function); its start
//! function brings up fresh nodes for one case and returns an [`Instance`]
//! that sends requests and shuts down. The harness runs the systems it is
//! given: [`run_with`]`(args, systems)` runs any list of them, in that
//! order (`--systems` picks among them by name), and [`run`], the
//! `pointsub bench` command, runs [`SYSTEMS`] (the ones this crate can
//! build by itself). So a system is added either to [`SYSTEMS`], or by
//! whatever target calls [`run_with`] with a longer list.
//!
//! That is how pointsub-async-std is benched: it depends on this crate, so
//! this crate's binary cannot depend on it (Cargo rejects the cycle), but
//! pointsub-async-std's own bench target can use this module (it is a
//! library module behind the `bench` feature, which `cli` enables):
//! `pointsub-async-std/benches/compare.rs` makes the `pointsub-async-std`
//! system with [`pointsub::system`] (the pointsub system is generic over
//! the node's runtime, a [`pointsub::Flavour`]) and calls [`run_with`] with
//! all four: `cargo bench -p pointsub-async-std --bench compare -- --quick`
//! takes the same options as `pointsub bench`.
//!
//! The module is not for library users: with
//! `default-features = false, features = ["tokio-runtime"]` neither it nor
//! its dependencies (clap, plotters, tracing-subscriber, libp2p
//! request-response) are compiled.

pub mod cipher;
mod cli_util;
mod codec;
pub mod pointsub;
mod raw_tcp;
mod report;
mod request_response;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::time::Instant;

pub use cli_util::{chain, init_tracing};
pub use report::Row;
use stats::{Failure, Recorder};

/// Any error a system's setup or the harness's output can end in.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The small body: a typical pointsub message in the spec's benchmark.
pub const SMALL: usize = 581;
/// The large body.
pub const LARGE: usize = 1 << 20;

/// A case: one body size at one in-flight count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Bytes per request body (the response echoes it).
    pub body: usize,
    /// Requests in flight at once: the number of closed-loop tasks.
    pub in_flight: usize,
}

const fn case(body: usize, in_flight: usize) -> Case {
    Case { body, in_flight }
}

/// The full run, per system, in this order.
pub const MATRIX: &[Case] = &[
    case(SMALL, 1),
    case(SMALL, 100),
    case(SMALL, 1_000),
    case(SMALL, 10_000),
    case(LARGE, 1),
    case(LARGE, 4),
];

/// The only case of `--quick`.
pub const QUICK: Case = case(SMALL, 100);

/// The only case of `--large`.
pub const LARGE_CASE: Case = case(LARGE, 4);

/// Largest body any system accepts (pointsub's default max block size).
pub const MAX_BODY: usize = crate::proto::config::DEFAULT_MAX_BLOCK_SIZE;

/// Each request is cut after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests still in flight when the window ends get this long to finish.
pub const GRACE: Duration = Duration::from_secs(5);

/// A task whose request failed waits this long before the next, so a
/// system that fails at once is not spun on.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// Bound on a system's start and on its shutdown.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A system under test: an entry of [`SYSTEMS`], or one that a caller of
/// [`run_with`] adds.
#[derive(Debug)]
pub struct System {
    /// Its name on the command line and in the table.
    pub name: &'static str,
    /// What exactly runs, for the output header.
    pub describe: fn() -> String,
    /// Brings up fresh nodes (or sockets) for `case`.
    pub start: StartFn,
}

/// How a [`System`] brings up fresh nodes for a case.
pub type StartFn = fn(Case) -> BoxFuture<'static, Result<Arc<dyn Instance>, BoxError>>;

/// A running system, serving one case.
pub trait Instance: Send + Sync {
    /// Sends `body` as in-flight task `slot` (`0..in_flight`) and resolves to
    /// the echoed body.
    fn request(&self, slot: usize, body: Bytes) -> BoxFuture<'_, Result<Bytes, Failure>>;

    /// Stops its nodes and tasks.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Every system this crate builds by itself, in the order they run.
/// Besides pointsub over noise/TCP and its two anchors (request-response
/// and raw TCP, unchanged), pointsub over QUIC and the cipher's limit
/// ([`cipher`]), from which with raw TCP the bound is printed.
pub const SYSTEMS: &[System] = &[
    pointsub::SYSTEM,
    request_response::SYSTEM,
    raw_tcp::SYSTEM,
    pointsub::QUIC_SYSTEM,
    cipher::SYSTEM,
];

/// The name of the async-std adapter's system, which only
/// pointsub-async-std's `benches/compare.rs` can build (see [the module docs](self)).
pub const ASYNC_STD: &str = "pointsub-async-std";

/// Where the async-std adapter is benchmarked, and why not here: printed in
/// the header when the systems given to [`run_with`] lack it.
const ASYNC_STD_ELSEWHERE: &str = "pointsub-async-std: benchmarked by `cargo bench -p \
     pointsub-async-std --bench compare` (same harness and options, all four systems in one \
     process), not by this binary: pointsub-async-std depends on pointsub-tokio, so \
     pointsub-tokio's binary cannot depend on it (Cargo rejects the cycle); a bench target of \
     pointsub-async-std can use both.";

/// `pointsub bench`: measures pointsub beside libp2p request-response and
/// raw TCP, in this process, and writes the table as CSV and an SVG chart.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Only 581 B x 100 in flight, 2 s per system, ending with the line
    /// `ratio vs-request-response <R>x vs-raw-tcp <R>x`. Writes the CSV and
    /// SVG only when --csv / --svg are given.
    #[arg(long, conflicts_with = "large")]
    quick: bool,
    /// Only 1 MiB x 4 in flight, 2 s per system, ending with the bound
    /// (cipher and raw TCP) and the line `ratio vs-request-response <R>x
    /// vs-bound <R>`. Writes the CSV and SVG only when --csv / --svg are
    /// given.
    #[arg(long)]
    large: bool,
    /// Systems to run, comma-separated (default: all): pointsub-tokio,
    /// request-response, raw-tcp; pointsub-async-std too under
    /// `cargo bench -p pointsub-async-std --bench compare`.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    systems: Vec<String>,
    /// Measured seconds per case (default 3, or 2 with --quick).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up seconds per case, not measured.
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    warmup: f64,
    /// Where to write the table as CSV [default: target/bench/pointsub-bench.csv].
    #[arg(long, value_name = "PATH")]
    csv: Option<PathBuf>,
    /// Where to draw QPS against in-flight count, 581 B bodies
    /// [default: target/bench/pointsub-bench.svg].
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    /// Only the cases of the full run with this many requests in flight
    /// (1, 100, 1000 or 10000 for 581 B; 1 or 4 for 1 MiB), e.g. to profile
    /// one of them.
    #[arg(long, value_name = "N", conflicts_with_all = ["quick", "large"])]
    in_flight: Option<usize>,
    /// Measure every case of every system this many times, the systems
    /// taking turns (round 1 of all, then round 2 of all, ...), and report
    /// each case's median round: a burst of load from elsewhere on the
    /// machine then lands in one round of each system, not in all of one
    /// system's. Failures are those of all rounds; peak RSS is the first
    /// round's (later rounds run in a process every other system has run
    /// in since).
    #[arg(long, value_name = "N", default_value_t = 1)]
    rounds: usize,
}

const DEFAULT_CSV: &str = "target/bench/pointsub-bench.csv";
const DEFAULT_SVG: &str = "target/bench/pointsub-bench.svg";

/// `pointsub bench`: runs the benchmark on [`SYSTEMS`].
pub async fn run(args: BenchArgs) -> Result<(), BoxError> {
    let systems: Vec<&System> = SYSTEMS.iter().collect();
    run_with(args, &systems).await.map(drop)
}

/// Runs the benchmark on `systems` (those of them `--systems` names, in
/// this order) and returns the table's rows.
pub async fn run_with(args: BenchArgs, systems: &[&System]) -> Result<Vec<Row>, BoxError> {
    let registry = systems;
    let systems = select_systems(registry, &args.systems)?;
    let duration = secs(
        "--duration",
        args.duration
            .unwrap_or(if args.quick || args.large { 2.0 } else { 3.0 }),
    )?;
    let warmup = secs("--warmup", args.warmup)?;
    if duration.is_zero() {
        return Err("--duration must be greater than zero".into());
    }
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let picked: Vec<Case>;
    let cases: &[Case] = if args.quick {
        &[QUICK]
    } else if args.large {
        &[LARGE_CASE]
    } else if let Some(n) = args.in_flight {
        picked = MATRIX
            .iter()
            .copied()
            .filter(|c| c.in_flight == n)
            .collect();
        if picked.is_empty() {
            return Err(format!(
                "--in-flight {n}: no case of the full run has {n} in flight (1, 4, 100, 1000, 10000)"
            )
            .into());
        }
        &picked
    } else {
        MATRIX
    };
    let (csv, svg) = if args.quick || args.large {
        (args.csv, args.svg)
    } else {
        (
            Some(args.csv.unwrap_or_else(|| DEFAULT_CSV.into())),
            Some(args.svg.unwrap_or_else(|| DEFAULT_SVG.into())),
        )
    };

    let mut notes = Vec::new();
    if !registry.iter().any(|s| s.name == ASYNC_STD) {
        notes.push(ASYNC_STD_ELSEWHERE);
    }
    report::print_header(&systems, cases, warmup, duration, &notes);
    let rss_resettable = report::reset_peak_rss();
    let mut measured = Vec::new();
    report::print_table_head();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        for system in &systems {
            for &case in cases {
                report::reset_peak_rss();
                let start_rss = report::rss_kib();
                let mut row = if system.name == cipher::NAME {
                    // Its own loops, not the harness's tasks (see `cipher`).
                    cipher::measure(case, incompressible_body(case.body), warmup, duration).await
                } else {
                    run_case(system, case, warmup, duration).await
                };
                row.start_rss_kib = start_rss;
                report::print_row(&row);
                measured.push(row);
            }
            if args.rounds == 1 {
                print_peak(&measured, system.name);
            }
        }
    }
    let rows = if args.rounds == 1 {
        measured
    } else {
        let medians = report::median_rows(&measured);
        println!(
            "median round of {} per case (QPS of each round in order):",
            args.rounds
        );
        for line in report::round_lines(&measured, &medians) {
            println!("{line}");
        }
        report::print_table_head();
        for system in &systems {
            for row in medians.iter().filter(|r| r.system == system.name) {
                report::print_row(row);
            }
            print_peak(&medians, system.name);
        }
        medians
    };
    if !rss_resettable {
        println!("(peak RSS could not be reset between cases: it is the process's peak so far)");
    }

    println!("load average at end: {}", report::load_average());
    if let Some(path) = &csv {
        report::write_csv(path, &rows)?;
        println!("CSV: {}", path.display());
    }
    if let Some(path) = &svg {
        report::write_svg(path, &rows)?;
        println!("SVG: {}", path.display());
    }
    for &case in cases {
        for line in report::bound_lines(&rows, case) {
            println!("{line}");
        }
    }
    if args.large {
        println!("{}", report::bound_ratio_line(&rows, LARGE_CASE));
    }
    if args.quick {
        for system in &systems {
            if system.name.starts_with("pointsub-") && system.name != report::RATIO_SYSTEM {
                println!("{}", report::adapter_ratio_line(&rows, QUICK, system.name));
            }
        }
        println!("{}", report::ratio_line(&rows, QUICK));
    }
    Ok(rows)
}

/// The peak RSS line of `system`: its largest case's.
fn print_peak(rows: &[Row], system: &str) {
    let peak = rows
        .iter()
        .filter(|r| r.system == system)
        .filter_map(|r| r.peak_rss_kib)
        .max();
    println!(
        "  peak RSS of {system} (largest case): {}",
        report::fmt_rss(peak)
    );
}

/// The systems of `registry` named by `--systems`, in registry order; all
/// when `names` is empty.
fn select_systems<'a>(
    registry: &[&'a System],
    names: &[String],
) -> Result<Vec<&'a System>, BoxError> {
    let known = || {
        registry
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for name in names {
        if !registry.iter().any(|s| s.name == name) {
            return Err(format!("unknown system {name:?}; known: {}", known()).into());
        }
    }
    Ok(registry
        .iter()
        .copied()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect())
}

fn secs(flag: &str, s: f64) -> Result<Duration, BoxError> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("{flag} {s}: {e}").into())
}

/// A body that deflate cannot shrink, so compression (on by default in
/// pointsub) cannot flatter the numbers.
fn incompressible_body(len: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Runs one case of one system on fresh nodes.
async fn run_case(system: &System, case: Case, warmup: Duration, duration: Duration) -> Row {
    let mut row = Row::new(system.name, case, duration);
    let instance = match tokio::time::timeout(SETUP_TIMEOUT, (system.start)(case)).await {
        Ok(Ok(instance)) => instance,
        Ok(Err(e)) => {
            row.setup_error = Some(format!("start failed: {}", chain(&*e)));
            return row;
        }
        Err(_) => {
            row.setup_error = Some(format!("start timed out after {SETUP_TIMEOUT:?}"));
            return row;
        }
    };

    let body = incompressible_body(case.body);
    let t0 = Instant::now();
    let window = (t0 + warmup, t0 + warmup + duration);
    let hard_end = window.1 + GRACE;
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..case.in_flight {
        let (instance, body) = (instance.clone(), body.clone());
        tasks.spawn(closed_loop(instance, slot, body, window, hard_end));
    }
    let mut all = Recorder::default();
    let joined = tokio::time::timeout_at(hard_end + Duration::from_secs(2), async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(recorded) => all.merge(recorded),
                Err(_) => all.failure("bench task panicked".into()),
            }
        }
    })
    .await;
    if joined.is_err() {
        let stuck = tasks.len() as u64;
        tasks.abort_all();
        for _ in 0..stuck {
            all.failure("bench task stuck".into());
        }
    }
    row.summary = all.summarize();
    row.peak_rss_kib = report::peak_rss_kib();

    if tokio::time::timeout(SETUP_TIMEOUT, instance.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "warning: {} did not shut down within {SETUP_TIMEOUT:?}",
            system.name
        );
    }
    row
}

/// One in-flight task: request, wait, record, repeat until the window ends.
async fn closed_loop(
    instance: Arc<dyn Instance>,
    slot: usize,
    body: Bytes,
    (window_start, window_end): (Instant, Instant),
    hard_end: Instant,
) -> Recorder {
    let mut rec = Recorder::default();
    loop {
        let sent = Instant::now();
        if sent >= window_end {
            break;
        }
        let deadline = (sent + REQUEST_TIMEOUT).min(hard_end);
        let outcome =
            match tokio::time::timeout_at(deadline, instance.request(slot, body.clone())).await {
                Ok(Ok(reply)) if reply.len() == body.len() => Ok(()),
                Ok(Ok(_)) => Err(Failure::from("wrong echo length")),
                Ok(Err(kind)) => Err(kind),
                Err(_) if deadline == hard_end => Err(Failure::from("unfinished at end of case")),
                Err(_) => Err(Failure::from("bench timeout (30 s)")),
            };
        let done = Instant::now();
        match outcome {
            Ok(()) if done >= window_start && done <= window_end => rec.success(done - sent),
            Ok(()) => {}
            Err(kind) => {
                rec.failure(kind);
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
        }
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_are_selected_by_name_in_registry_order() {
        let registry: Vec<&System> = SYSTEMS.iter().collect();
        let all = select_systems(&registry, &[]).unwrap();
        assert_eq!(all.len(), SYSTEMS.len());
        let some = select_systems(&registry, &["raw-tcp".into(), "pointsub-tokio".into()]).unwrap();
        let names: Vec<_> = some.iter().map(|s| s.name).collect();
        assert_eq!(names, ["pointsub-tokio", "raw-tcp"]);
        let err = select_systems(&registry, &["nope".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("request-response"), "{err}");
        // A caller's registry, in its own order.
        let reordered = [&SYSTEMS[2], &SYSTEMS[0]];
        let names: Vec<_> = select_systems(&reordered, &[])
            .unwrap()
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["raw-tcp", "pointsub-tokio"]);
        assert!(select_systems(&reordered, &["request-response".into()]).is_err());
    }

    #[test]
    fn body_is_incompressible_and_deterministic() {
        let a = incompressible_body(4096);
        assert_eq!(a, incompressible_body(4096));
        let distinct = a.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 200, "{distinct} distinct byte values");
    }

    #[test]
    fn matrix_has_the_issue_cases() {
        assert!(MATRIX.contains(&QUICK));
        for n in [1, 100, 1_000, 10_000] {
            assert!(MATRIX.contains(&case(SMALL, n)));
        }
        assert!(MATRIX.contains(&case(LARGE, 1)));
        assert!(MATRIX.contains(&case(LARGE, 4)));
        assert!(MATRIX.contains(&LARGE_CASE));
    }
}
