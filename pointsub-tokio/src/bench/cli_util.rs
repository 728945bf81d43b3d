//! Small helpers shared by the `pointsub` binary and the `compare` bench
//! target of pointsub-async-std: logging set-up and error chains.

use std::error::Error;

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` or else by the `-v` count
/// (`quiet` without `-v`).
pub fn init_tracing(verbose: u8, quiet: &str) {
    let level = match verbose {
        0 => quiet,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// An error with its sources, `outer: inner: …`.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
