//! What one in-flight task of a case recorded, and the summary of a case.
//!
//! Latencies are whole microseconds in a plain `Vec<u32>` per task (no
//! locks, one push per request), merged and sorted once at the end of the
//! case; percentiles are nearest-rank on the sorted list.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a request failed, as shown in the failure summary: a short kind
/// (`timeout`, `busy`, …) or an anchor's error message put through
/// [`failure_message`].
pub type Failure = Cow<'static, str>;

/// An error message as a failure kind: every run of digits becomes `N`, so
/// messages naming a stream or request id fall into one kind.
pub fn failure_message(message: &str) -> Failure {
    let mut out = String::with_capacity(message.len());
    let mut in_digits = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    Cow::Owned(out)
}

/// What one task recorded during a case.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Latencies of the successful requests inside the measurement window, µs.
    pub micros: Vec<u32>,
    /// Failed requests by kind, over the whole case (warm-up included).
    pub failures: BTreeMap<Failure, u64>,
}

impl Recorder {
    /// Records one success that took `latency`.
    pub fn success(&mut self, latency: Duration) {
        self.micros
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Records one failure of `kind`.
    pub fn failure(&mut self, kind: Failure) {
        *self.failures.entry(kind).or_default() += 1;
    }

    /// Adds `other`'s records to these.
    pub fn merge(&mut self, other: Recorder) {
        if self.micros.is_empty() {
            self.micros = other.micros;
        } else {
            self.micros.extend_from_slice(&other.micros);
        }
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
    }

    /// Sorts the latencies and sums everything up.
    pub fn summarize(mut self) -> Summary {
        self.micros.sort_unstable();
        let ok = self.micros.len() as u64;
        let mean_us = if ok == 0 {
            0.0
        } else {
            self.micros.iter().map(|&m| u64::from(m)).sum::<u64>() as f64 / ok as f64
        };
        Summary {
            ok,
            mean_us,
            p50_us: percentile(&self.micros, 50.0),
            p99_us: percentile(&self.micros, 99.0),
            failures: self.failures,
        }
    }
}

/// A case's numbers, before they are turned into rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Successful requests completed inside the measurement window.
    pub ok: u64,
    /// Mean latency of those, µs (0 when none).
    pub mean_us: f64,
    /// Median latency, µs (0 when none).
    pub p50_us: u32,
    /// 99th percentile latency, µs (0 when none).
    pub p99_us: u32,
    /// Failed requests by kind.
    pub failures: BTreeMap<Failure, u64>,
}

impl Summary {
    /// All failed requests.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// `kind: n, kind: n`, most frequent first, at most `max` kinds and then
    /// `… (k more kinds)` (empty when nothing failed).
    pub fn failure_kinds(&self, max: usize) -> String {
        let mut kinds: Vec<_> = self.failures.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let mut out: Vec<String> = kinds
            .iter()
            .take(max)
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        if kinds.len() > max {
            out.push(format!("… ({} more kinds)", kinds.len() - max));
        }
        out.join(", ")
    }
}

/// The `p`th percentile (nearest rank, `0 < p <= 100`) of `sorted`, 0 when
/// empty.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.1), 1);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[1, 2], 50.0), 1);
        assert_eq!(percentile(&[1, 2], 99.0), 2);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn merged_recorders_summarize() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for us in [300, 100] {
            a.success(Duration::from_micros(us));
        }
        for us in [200, 400] {
            b.success(Duration::from_micros(us));
        }
        a.failure("timeout".into());
        b.failure("timeout".into());
        b.failure(Cow::Owned("reset".to_string()));
        a.merge(b);
        let s = a.summarize();
        assert_eq!(s.ok, 4);
        assert_eq!(s.mean_us, 250.0);
        assert_eq!(s.p50_us, 200);
        assert_eq!(s.p99_us, 400);
        assert_eq!(s.failed(), 3);
        assert_eq!(s.failure_kinds(9), "timeout: 2, reset: 1");
        assert_eq!(s.failure_kinds(1), "timeout: 2, … (1 more kinds)");
    }

    #[test]
    fn failure_messages_lose_their_ids() {
        assert_eq!(
            failure_message("IO error on outbound stream: 00000013/98795: connection is closed"),
            "IO error on outbound stream: N/N: connection is closed"
        );
        assert_eq!(failure_message("timeout"), "timeout");
        assert_eq!(failure_message("7 of 10"), "N of N");
    }

    #[test]
    fn empty_summary_is_zero_and_huge_latency_saturates() {
        let s = Recorder::default().summarize();
        assert_eq!((s.ok, s.mean_us, s.p50_us, s.p99_us), (0, 0.0, 0, 0));
        let mut r = Recorder::default();
        r.success(Duration::from_secs(10_000));
        assert_eq!(r.summarize().p50_us, u32::MAX);
    }
}
