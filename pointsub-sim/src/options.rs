//! What a simulation run is made of: the seed, the size of the world and the
//! fault mix. Everything else (configurations, latencies, which node serves
//! which protocol, the workload) is drawn from the seed.

/// Options of one simulation run. Two runs with equal options produce the
/// same trace, byte for byte.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SimOptions {
    /// The seed of the run's single RNG.
    pub seed: u64,
    /// Number of nodes (each runs a client core and a server core); at least 2.
    pub nodes: usize,
    /// Requests submitted in the safety phase (faults on).
    pub requests: u64,
    /// Requests submitted in the liveness phase (faults healed); every one
    /// must succeed. `None`: `max(50, requests / 100)`, at most 10 000.
    pub liveness_requests: Option<u64>,
    /// Master switch for injected faults (resets, drops, partitions,
    /// crashes, slow and failing handlers).
    pub faults: bool,
    /// Per submitted request, probability of resetting one live stream.
    pub reset_rate: f64,
    /// Per submitted request, probability of dropping the connection between
    /// two nodes (every stream between them resets).
    pub drop_rate: f64,
    /// Per submitted request, probability of starting a network partition.
    pub partition_rate: f64,
    /// Per submitted request, probability of crashing a node (restarted later
    /// with fresh cores).
    pub crash_rate: f64,
    /// Per submitted request, probability of making a node's handlers slow
    /// for a while.
    pub slow_rate: f64,
    /// Per submitted request, probability of making a node's handlers fail
    /// for a while.
    pub fail_rate: f64,
    /// Per submitted request, probability of a burst: many clients sending to
    /// one server at once (pushes it past its admission limit).
    pub burst_rate: f64,
    /// Fraction of bodies that are big (1 MiB up to `max_body`).
    pub big_rate: f64,
    /// Largest body size drawn.
    pub max_body: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 0,
            nodes: 20,
            requests: 20_000,
            liveness_requests: None,
            faults: true,
            reset_rate: 0.001,
            drop_rate: 0.0002,
            partition_rate: 0.000_01,
            crash_rate: 0.000_02,
            slow_rate: 0.000_05,
            fail_rate: 0.000_05,
            burst_rate: 0.0001,
            big_rate: 0.000_003,
            max_body: 3 << 20,
        }
    }
}

impl SimOptions {
    /// Default options with the given seed.
    pub fn with_seed(seed: u64) -> Self {
        SimOptions {
            seed,
            ..SimOptions::default()
        }
    }

    /// Sets the seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the node count.
    #[must_use]
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Sets the safety-phase request count.
    #[must_use]
    pub fn requests(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
    }

    /// Turns all injected faults on or off.
    #[must_use]
    pub fn faults(mut self, on: bool) -> Self {
        self.faults = on;
        self
    }

    /// The liveness-phase request count in force.
    pub fn liveness_count(&self) -> u64 {
        self.liveness_requests
            .unwrap_or_else(|| (self.requests / 100).clamp(50, 10_000))
    }

    /// Checks the options; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes < 2 {
            return Err("nodes must be at least 2".into());
        }
        if self.nodes > 100_000 {
            return Err("nodes must be at most 100000".into());
        }
        for (name, r) in [
            ("reset-rate", self.reset_rate),
            ("drop-rate", self.drop_rate),
            ("partition-rate", self.partition_rate),
            ("crash-rate", self.crash_rate),
            ("slow-rate", self.slow_rate),
            ("fail-rate", self.fail_rate),
            ("burst-rate", self.burst_rate),
            ("big-rate", self.big_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be in [0, 1]"));
            }
        }
        if self.max_body < 64 * 1024 {
            return Err("max-body must be at least 65536".into());
        }
        if self.max_body > 64 << 20 {
            return Err("max-body must be at most 64 MiB".into());
        }
        Ok(())
    }

    /// The command-line arguments that reproduce this run (options equal to
    /// their defaults are left out).
    pub fn to_args(&self) -> Vec<String> {
        let d = SimOptions::default();
        let mut a = vec![
            "--seed".to_string(),
            self.seed.to_string(),
            "--nodes".to_string(),
            self.nodes.to_string(),
            "--requests".to_string(),
            self.requests.to_string(),
        ];
        if let Some(l) = self.liveness_requests {
            a.push("--liveness-requests".into());
            a.push(l.to_string());
        }
        if !self.faults {
            a.push("--no-faults".into());
        }
        for (name, v, dv) in [
            ("--reset-rate", self.reset_rate, d.reset_rate),
            ("--drop-rate", self.drop_rate, d.drop_rate),
            ("--partition-rate", self.partition_rate, d.partition_rate),
            ("--crash-rate", self.crash_rate, d.crash_rate),
            ("--slow-rate", self.slow_rate, d.slow_rate),
            ("--fail-rate", self.fail_rate, d.fail_rate),
            ("--burst-rate", self.burst_rate, d.burst_rate),
            ("--big-rate", self.big_rate, d.big_rate),
        ] {
            if v != dv {
                a.push(name.into());
                a.push(format!("{v}"));
            }
        }
        if self.max_body != d.max_body {
            a.push("--max-body".into());
            a.push(self.max_body.to_string());
        }
        a
    }

    /// The one command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p pointsub-sim -- {}",
            self.to_args().join(" ")
        )
    }
}
