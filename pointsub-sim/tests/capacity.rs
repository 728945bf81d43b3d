//! Adaptive admission against a server with a capacity (C = 200 workers,
//! S = 20 ms: 10,000 requests/s), open-loop arrivals, seeded and on
//! virtual time. See `pointsub_sim::capacity`.

use pointsub_sim::capacity::{CapacityOptions, CapacityReport, Phase, quantile, run};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Busy answers the server sent between `from` and `to` (virtual time).
fn busy_between(r: &CapacityReport, from: Duration, to: Duration) -> u64 {
    let at = |t: Duration| {
        r.ticks
            .iter()
            .rev()
            .find(|s| s.at <= t.as_nanos() as u64)
            .map_or(0, |s| s.busy_answers)
    };
    at(to) - at(from)
}

/// Idle 1 s, light (20 % of capacity) 2 s, ten times capacity 2.5 s, then
/// 80 % of capacity for 1 s (while the overload's retries end) and 2 s more.
fn overload_run(seed: u64) -> (CapacityOptions, CapacityReport) {
    let mut o = CapacityOptions::new(seed);
    let cap = o.capacity();
    assert_eq!(cap, 10_000.0);
    o.phases = vec![
        Phase::new(secs(1.0), 0.0),
        Phase::new(secs(2.0), 0.2 * cap),
        Phase::new(secs(2.5), 10.0 * cap),
        Phase::new(secs(1.0), 0.8 * cap),
        Phase::new(secs(2.0), 0.8 * cap),
    ];
    let r = run(&o).unwrap();
    (o, r)
}

fn describe(r: &CapacityReport) -> String {
    let mut s = String::new();
    for (i, p) in r.phases.iter().enumerate() {
        s += &format!(
            "phase {i}: submitted {} ok {} busy {} other {} unfinished {} attempts {} busy answers {} admitted {} peak {} limits {:?} p50 {:?} p99 {:?}\n",
            p.submitted,
            p.succeeded,
            p.busy,
            p.other_errors,
            p.unfinished,
            p.attempts,
            p.busy_answers,
            p.admitted,
            p.peak_active,
            p.limit_range(),
            p.admitted_quantile(0.5),
            p.admitted_quantile(0.99),
        );
    }
    s
}

#[test]
fn idle_and_light_load_do_not_raise_the_limit_overload_lowers_it_and_it_recovers() {
    for seed in [1, 2] {
        let (o, r) = overload_run(seed);
        let d = describe(&r);
        eprintln!("seed {seed}\n{d}");
        let [idle, light, over, retries_end, after] = &r.phases[..] else {
            panic!("five phases")
        };

        // (a) Idle, then light load: the limit stays at its initial 1000.
        assert_eq!(idle.submitted, 0, "{d}");
        assert!(idle.limits.iter().all(|&l| l == 1000), "{d}");
        assert!(light.limits.iter().all(|&l| l == 1000), "{d}");
        assert_eq!(light.busy_answers, 0, "{d}");
        assert_eq!(light.succeeded, light.submitted, "{d}");
        let unloaded_p99 = light.admitted_quantile(0.99);
        assert!(unloaded_p99 >= 20 * MS && unloaded_p99 <= 23 * MS, "{d}");

        // (b) Ten times capacity: the limit falls, the excess gets Busy,
        // and admitted requests keep their latency once the limit has
        // converged (10 % per 100 ms tick takes about 1.2 s from 1000).
        let (lo, _) = over.limit_range();
        assert!(lo < 500, "the limit fell: {d}");
        assert!(lo >= o.workers, "but not below what the workers need: {d}");
        assert!(over.busy_answers > over.admitted, "{d}");
        assert!(over.busy > over.submitted / 2, "{d}");
        let settled = r.admitted_after(2, secs(1.5));
        let p99 = quantile(&settled, 0.99);
        eprintln!(
            "unloaded p99 {unloaded_p99:?}, overload p99 after 1.5 s {p99:?} ({} samples), whole phase {:?}",
            settled.len(),
            over.admitted_quantile(0.99)
        );
        assert!(settled.len() > 8_000, "{d}");
        assert!(p99 <= 2 * unloaded_p99, "{p99:?} vs {unloaded_p99:?}: {d}");
        // The server keeps serving at its capacity meanwhile.
        assert!(over.admitted as f64 >= 0.9 * o.capacity() * 2.5, "{d}");
        // Clients back off: a Busy request made every attempt, waiting at
        // least the minimal backoff (25 + 50 + 100 ms) in between.
        let tries = o.client.max_retries + 1;
        assert_eq!(over.max_attempts, tries, "{d}");
        assert!(over.attempts > over.submitted, "{d}");
        assert!(over.min_busy_duration >= 175_000_000, "{d}");

        // (c) After the overload: the limit serves the demand. In the first
        // second the overload's retries still press (some of the new
        // requests get Busy too); after it nothing gets Busy and every
        // request succeeds.
        assert!(retries_end.succeeded > retries_end.submitted / 2, "{d}");
        assert_eq!(busy_between(&r, secs(6.5), secs(8.5)), 0, "{d}");
        assert_eq!(after.busy, 0, "{d}");
        assert_eq!(after.succeeded, after.submitted, "{d}");
        assert!(after.peak_active < *after.limits.last().unwrap(), "{d}");
        assert!(after.admitted_quantile(0.99) <= 2 * unloaded_p99, "{d}");
    }
}

#[test]
fn a_limit_pushed_to_its_minimum_grows_back_when_demand_needs_it() {
    let mut o = CapacityOptions::new(5);
    let cap = o.capacity();
    o.phases = vec![
        Phase::new(secs(1.0), 0.2 * cap),
        // Ten times capacity while the handlers are three times slower.
        Phase::new(secs(2.0), 10.0 * cap).with_service(60 * MS),
        // Handlers fast again, demand at 90 % of capacity (180 at once
        // on average, more than the limit left by the slow phase).
        Phase::new(secs(3.0), 0.9 * cap),
    ];
    let r = run(&o).unwrap();
    let d = describe(&r);
    eprintln!("{d}");
    let [light, slow, after] = &r.phases[..] else {
        panic!("three phases")
    };
    assert!(light.limits.iter().all(|&l| l == 1000), "{d}");
    let (lo, _) = slow.limit_range();
    assert!(lo <= 150, "the limit fell near its minimum: {d}");
    let (after_lo, after_hi) = after.limit_range();
    assert!(after_lo < 180 && after_hi >= 180, "{d}");
    // The last 1.5 s: no Busy answer, the limit above what demand uses.
    assert_eq!(busy_between(&r, secs(4.5), secs(6.0)), 0, "{d}");
    assert!(*after.limits.last().unwrap() > 180, "{d}");
}

#[test]
fn same_seed_same_run_and_different_seeds_differ() {
    let mut o = CapacityOptions::new(9);
    o.phases = vec![
        Phase::new(secs(0.5), 2_000.0),
        Phase::new(secs(0.5), 30_000.0),
    ];
    let a = run(&o).unwrap();
    let b = run(&o).unwrap();
    assert_eq!(a, b);
    o.seed = 10;
    let c = run(&o).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}
