//! `pointsub bench` with all four systems: pointsub (tokio), pointsub
//! (async-std adapter), libp2p request-response and raw TCP, in one process.
//!
//! ```sh
//! cargo bench -p pointsub-async-std --bench compare -- --quick
//! cargo bench -p pointsub-async-std --bench compare            # the full matrix
//! cargo bench -p pointsub-async-std --bench compare -- --help  # the options
//! ```
//!
//! The `pointsub` binary cannot bench the async-std adapter:
//! `pointsub-async-std` depends on `pointsub-tokio`, and Cargo rejects the
//! cycle a normal dependency back would make. This crate can depend on
//! both, so the compare bench lives here and runs the binary's harness
//! (`pointsub_tokio::bench`, behind pointsub-tokio's `bench` feature) with
//! one more system. There is one `pointsub-tokio` library in the build, so
//! `pointsub_async_std::Node` is `pointsub_tokio::generic::Node<AsyncStdRuntime>`
//! of the very crate the harness uses.
//!
//! The async-std system is the harness's pointsub system on another
//! runtime: its nodes (swarms, connection tasks, stream drivers, the echo
//! handler) run on async-std's global executor, over this workspace's
//! async-io TCP transport; the load generator's tasks stay on tokio, as for
//! every system (the client's futures are runtime-agnostic).
//!
//! Options are `pointsub bench`'s, and so are the outputs: relative paths
//! (`--csv`, `--svg` and their defaults under `target/bench/`) are taken
//! from the workspace root, where `cargo run -p pointsub-tokio -- bench`
//! is usually run, not from the package directory `cargo bench` starts
//! this in. Under `cargo test` (no `--bench` argument) it runs a smoke test
//! instead: each system for a fraction of a second, failing unless each
//! answered.

use std::path::Path;
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use pointsub_async_std::AsyncStdRuntime;

use pointsub_tokio::bench::pointsub::{Flavour, system};
use pointsub_tokio::bench::{self, BenchArgs, System, chain, init_tracing};

/// pointsub-async-std's [`Flavour`]: nodes on [`AsyncStdRuntime`].
struct AsyncStd;

impl Flavour for AsyncStd {
    type Runtime = AsyncStdRuntime;
    const SYSTEM_NAME: &'static str = bench::ASYNC_STD;

    fn api() -> &'static str {
        "pointsub_async_std::{Node, Client, Server} (AsyncStdRuntime: node tasks on async-std's \
         global executor), pointsub-async-std's async-io TCP transport, nodelay"
    }
}

/// pointsub-async-std's system.
const ASYNC_STD: System = system::<AsyncStd>();

/// `pointsub bench` with all four systems: pointsub-tokio,
/// pointsub-async-std, request-response and raw-tcp, in one process.
#[derive(Debug, Parser)]
#[command(
    name = "compare",
    bin_name = "cargo bench -p pointsub-async-std --bench compare --"
)]
struct Cli {
    /// Log more on stderr: -v info, -vv debug, -vvv trace (default: warn).
    /// RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    #[command(flatten)]
    args: BenchArgs,
}

/// Every system, in the order they run: pointsub's adapters, then the anchors.
fn systems() -> Vec<&'static System> {
    let mut systems: Vec<&System> = bench::SYSTEMS.iter().collect();
    let after_tokio = systems
        .iter()
        .position(|s| s.name == bench::pointsub::SYSTEM.name)
        .map_or(0, |i| i + 1);
    systems.insert(after_tokio, &ASYNC_STD);
    systems
}

#[tokio::main]
async fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test` (which runs bench targets
    // with `--benches` or `--all-targets`) does not, and may pass libtest's
    // options, which are not ours.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let cli = if smoke {
        Cli::parse_from(["compare", "--quick", "--warmup", "0.1", "--duration", "0.3"])
    } else {
        Cli::parse()
    };
    init_tracing(cli.verbose, "warn,libp2p_request_response=error");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    if let Err(e) = std::env::set_current_dir(workspace) {
        eprintln!("error: cannot change to {}: {e}", workspace.display());
        return ExitCode::FAILURE;
    }
    if smoke {
        println!("compare: not run by `cargo bench` (no --bench): smoke test of every system\n");
    }
    let result = bench::run_with(cli.args, &systems())
        .await
        .and_then(|rows| {
            let silent: Vec<&str> = rows
                .iter()
                .filter(|r| r.setup_error.is_some() || r.summary.ok == 0)
                .map(|r| r.system)
                .collect();
            if smoke && !silent.is_empty() {
                return Err(format!("no request answered by: {}", silent.join(", ")).into());
            }
            Ok(())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}
