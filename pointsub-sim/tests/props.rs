//! Property test: random scenarios (seed, node count, fault rates, sizes).
//! A failing scenario is shrunk by proptest to a small one, and its replay
//! command is printed.

use pointsub_sim::{SimOptions, run};
use proptest::prelude::*;

fn scenario() -> impl Strategy<Value = SimOptions> {
    (
        any::<u64>(),
        2usize..12,
        50u64..1_500,
        (0.0f64..0.03, 0.0f64..0.01, 0.0f64..0.002, 0.0f64..0.002),
        (0.0f64..0.005, 0.0f64..0.005, 0.0f64..0.003),
        prop_oneof![Just(64 * 1024), Just(1 << 20), Just(3 << 20)],
        any::<bool>(),
    )
        .prop_map(
            |(
                seed,
                nodes,
                requests,
                (reset, drop, part, crash),
                (slow, fail, burst),
                max_body,
                faults,
            )| {
                let mut o = SimOptions::with_seed(seed)
                    .nodes(nodes)
                    .requests(requests)
                    .faults(faults);
                o.reset_rate = reset;
                o.drop_rate = drop;
                o.partition_rate = part;
                o.crash_rate = crash;
                o.slow_rate = slow;
                o.fail_rate = fail;
                o.burst_rate = burst;
                o.max_body = max_body;
                o.big_rate = 0.001;
                o.liveness_requests = Some(50);
                o
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_invariant_holds(opts in scenario()) {
        if let Err(v) = run(&opts) {
            prop_assert!(false, "{v}\nreplay: {}", opts.replay_command());
        }
    }
}
