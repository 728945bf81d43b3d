//! What a run produces: a [`Report`] when every invariant held, a
//! [`Violation`] when one broke.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Faults injected during a run, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Single streams reset.
    pub resets: u64,
    /// Connections dropped (every stream between two nodes reset).
    pub drops: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Nodes crashed (and restarted).
    pub crashes: u64,
    /// Periods of slow handlers.
    pub slow: u64,
    /// Periods of failing handlers.
    pub fail: u64,
    /// Bursts past a server's admission limit.
    pub bursts: u64,
}

/// The summary of a run in which every invariant held.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Requests accepted by the clients (both phases).
    pub requests: u64,
    /// Requests accepted in the liveness phase (all succeeded).
    pub liveness_requests: u64,
    /// Outcomes of ended requests by kind: `ok`, or the error's
    /// [`pointsub_proto::RequestError::kind`].
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Sends refused at once (never accepted), by error kind.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Requests whose client crashed before they ended (their state was lost
    /// with the node).
    pub lost_in_crash: u64,
    /// Attempts started, over all requests.
    pub attempts: u64,
    /// Attempts beyond the first (retries, failovers, hedges).
    pub retries: u64,
    /// Requests answered Busy by admission, over all servers.
    pub busy_answers: u64,
    /// Median virtual latency of successful requests.
    pub latency_p50: Duration,
    /// 99th percentile virtual latency of successful requests.
    pub latency_p99: Duration,
    /// Lowest admission limit seen on any server.
    pub admission_min: usize,
    /// Highest admission limit seen on any server.
    pub admission_max: usize,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Bodies inflated outside the cores (nodes that defer inflating, as
    /// the adapters do): requests and responses.
    pub inflated: u64,
    /// Streams opened by clients.
    pub streams_opened: u64,
    /// Frames checked on the wire.
    pub frames: u64,
    /// Simulation steps (events processed).
    pub steps: u64,
    /// Virtual time at the end.
    pub virtual_time: Duration,
    /// Hash of the whole event trace.
    pub trace_hash: u64,
    /// What the seed drew (configurations, workload).
    pub scenario: String,
}

impl Report {
    /// Requests that ended with a response.
    pub fn succeeded(&self) -> u64 {
        self.outcomes.get("ok").copied().unwrap_or(0)
    }

    /// Requests that ended (any outcome).
    pub fn ended(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario: {}", self.scenario)?;
        writeln!(
            f,
            "requests: {} accepted ({} in the liveness phase), {} ended, {} lost in crashes",
            self.requests,
            self.liveness_requests,
            self.ended(),
            self.lost_in_crash
        )?;
        write!(f, "outcomes:")?;
        for (k, v) in &self.outcomes {
            write!(f, " {k}={v}")?;
        }
        writeln!(f)?;
        if !self.rejected.is_empty() {
            write!(f, "refused at send:")?;
            for (k, v) in &self.rejected {
                write!(f, " {k}={v}")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "attempts: {} ({} retries/failovers/hedges), busy answers: {}",
            self.attempts, self.retries, self.busy_answers
        )?;
        writeln!(
            f,
            "virtual latency: p50 {:.3} ms, p99 {:.3} ms",
            self.latency_p50.as_secs_f64() * 1e3,
            self.latency_p99.as_secs_f64() * 1e3
        )?;
        writeln!(
            f,
            "admission limit range: [{}, {}]",
            self.admission_min, self.admission_max
        )?;
        let x = &self.faults;
        writeln!(
            f,
            "faults: resets={} drops={} partitions={} crashes={} slow={} fail={} bursts={}",
            x.resets, x.drops, x.partitions, x.crashes, x.slow, x.fail, x.bursts
        )?;
        writeln!(
            f,
            "streams opened: {}, frames checked: {}, bodies inflated outside: {}, steps: {}, virtual time: {:.3} s",
            self.streams_opened,
            self.frames,
            self.inflated,
            self.steps,
            self.virtual_time.as_secs_f64()
        )?;
        write!(f, "trace hash: {:016x}", self.trace_hash)
    }
}

/// A broken invariant: which, where, and enough to replay it.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// The seed of the run.
    pub seed: u64,
    /// The invariant's short name (see the crate docs for the list).
    pub invariant: &'static str,
    /// What was observed.
    pub detail: String,
    /// Virtual time of the step that broke it.
    pub at: Duration,
    /// The step's number.
    pub step: u64,
    /// Requests submitted before it broke.
    pub submitted: u64,
    /// Hash of the trace up to the violation.
    pub trace_hash: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant `{}` violated at step {} (virtual time {:.6} s, {} requests submitted, seed {}): {}",
            self.invariant,
            self.step,
            self.at.as_secs_f64(),
            self.submitted,
            self.seed,
            self.detail
        )
    }
}

impl std::error::Error for Violation {}
