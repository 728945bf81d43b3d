//! The CI sweep: many seeds, faults at elevated rates, every invariant after
//! every step. A failure names the seed and the command that replays it.
//!
//! `cargo test` builds this crate at opt-level 1 (debug assertions on, which
//! also turns on the core's own internal checks): 32 seeds x 10 000 requests
//! with faults at about ten times their default rates, plus 8 seeds x 20 000
//! at the defaults, takes a few seconds there. The release binary runs the
//! larger sweeps (`--seeds N`).

use pointsub_sim::{SimOptions, run};

fn stressed(seed: u64) -> SimOptions {
    let mut o = SimOptions::with_seed(seed)
        .nodes(4 + (seed as usize % 9))
        .requests(10_000);
    o.reset_rate = 0.01;
    o.drop_rate = 0.003;
    o.partition_rate = 0.000_5;
    o.crash_rate = 0.000_5;
    o.slow_rate = 0.002;
    o.fail_rate = 0.001;
    o.burst_rate = 0.001;
    o.max_body = 1 << 20;
    o
}

fn check(opts: &SimOptions) {
    if let Err(v) = run(opts) {
        panic!("{v}\nreplay: {}", opts.replay_command());
    }
}

#[test]
fn sweep_32_seeds_x_10k_with_elevated_faults() {
    for seed in 0..32 {
        check(&stressed(seed));
    }
}

#[test]
fn sweep_8_seeds_x_20k_at_default_rates() {
    for seed in 100..108 {
        check(&SimOptions::with_seed(seed).nodes(20).requests(20_000));
    }
}
