//! The same seed and options give the same trace; different seeds differ.

use pointsub_sim::{SimOptions, run};

#[test]
fn same_seed_same_trace_hash() {
    let opts = SimOptions::with_seed(7).nodes(8).requests(2_000);
    let a = run(&opts).unwrap_or_else(|v| panic!("{v}"));
    let b = run(&opts).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a, b, "the whole report is reproducible");
    assert!(a.succeeded() > 1_000, "{a}");
}

#[test]
fn different_seeds_different_traces() {
    let base = SimOptions::default().nodes(6).requests(500);
    let hashes: Vec<u64> = (0..6)
        .map(|s| {
            run(&base.clone().seed(s))
                .unwrap_or_else(|v| panic!("{v}"))
                .trace_hash
        })
        .collect();
    let mut uniq = hashes.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), hashes.len(), "{hashes:x?}");
}

#[test]
fn options_change_the_trace() {
    let a = run(&SimOptions::with_seed(3).nodes(5).requests(400)).unwrap();
    let b = run(&SimOptions::with_seed(3)
        .nodes(5)
        .requests(400)
        .faults(false))
    .unwrap();
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn without_faults_nothing_is_lost_and_liveness_holds() {
    let opts = SimOptions::with_seed(11)
        .nodes(10)
        .requests(3_000)
        .faults(false);
    let r = run(&opts).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(r.lost_in_crash, 0);
    assert_eq!(r.ended(), r.requests, "{r}");
    assert_eq!(r.faults.resets + r.faults.crashes + r.faults.partitions, 0);
    assert!(r.liveness_requests >= 50);
}

#[test]
fn replay_command_names_every_non_default_option() {
    let mut o = SimOptions::with_seed(42)
        .nodes(3)
        .requests(10)
        .faults(false);
    o.crash_rate = 0.5;
    let cmd = o.replay_command();
    assert!(
        cmd.starts_with("cargo run --release -p pointsub-sim -- --seed 42 --nodes 3 --requests 10")
    );
    assert!(cmd.contains("--no-faults"));
    assert!(cmd.contains("--crash-rate 0.5"));
    assert!(!cmd.contains("--reset-rate"));
}

#[test]
fn bad_options_are_refused() {
    let r = run(&SimOptions::with_seed(1).nodes(1));
    let v = r.unwrap_err();
    assert_eq!(v.invariant, "options");
}
