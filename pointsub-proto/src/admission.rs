//! Server admission: an adaptive concurrency limit.
//!
//! The spec's `MaxConcurrentConns` starts at 1000 and moves between 100 and
//! 10000. It moves on a periodic tick ([`Admission::adjust`]), from what the
//! server saw since the last tick, in the manner of TCP Vegas and the
//! gradient limits of Netflix's concurrency-limits:
//!
//! - **Latency.** Every answered request gives a sample: the time from its
//!   admission to its answer ([`Admission::complete`]). The tick takes the
//!   mean of the window's samples (`current`) and compares it with a
//!   `baseline`, the lowest window mean seen (see below for how it adapts).
//! - **Demand.** The window *pressed* on the limit if at some moment the
//!   admitted requests filled it (`peak in-flight >= limit`), which is also
//!   when requests get `Busy`.
//!
//! The rule, per tick:
//!
//! 1. No sample in the window (idle, or nothing finished): the limit holds.
//! 2. `current > latency_tolerance * baseline` (requests queue): the limit
//!    shrinks by the gradient, to `limit * tolerance * baseline / current`
//!    (rounded up), but by at most `step` (10 %) of the limit.
//! 3. Otherwise, if demand pressed: the limit grows by `sqrt(limit)` (an
//!    additive increase, like Vegas and Gradient2's queue allowance), at most
//!    `step` of the limit.
//! 4. Otherwise (light load, healthy latency): the limit holds. An idle or
//!    lightly loaded server keeps its limit where it is, so a sudden burst is
//!    still bounded by it.
//!
//! The limit always stays in `[min_limit, max_limit]`; every change is at
//! least 1 and at most `max(1, step * limit)` (rounded down).
//!
//! The baseline drops at once to a lower window mean. It rises (by an eighth
//! of the gap per tick) only when nothing pressed on the limit, or the limit
//! sits at its minimum: when the handlers become slower for reasons other
//! than load, the baseline follows, while under sustained overload it does
//! not drift up with the queue it is meant to detect. A server whose first
//! samples are taken under overload learns an inflated baseline (there is no
//! way to tell queueing from slow handlers by latency alone); it still keeps
//! latency within the tolerance of that baseline and stops growing there.
//!
//! A request that does not fit is answered with a typed [`Rejection`] (the
//! server sends "busy"), so the client can retry elsewhere: load is shed,
//! never silently dropped. A per-peer cap keeps one peer from taking the
//! whole limit.

use crate::PeerKey;
use std::collections::BTreeMap;
use std::time::Duration;

/// Limits of [`Admission`]. The defaults are the spec's.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Limit at start (1000); clamped to `[min_limit, max_limit]`.
    pub initial_limit: usize,
    /// Lowest the limit ever goes (100); `0` counts as 1.
    pub min_limit: usize,
    /// Highest the limit ever goes (10000); raised to `min_limit` if lower.
    pub max_limit: usize,
    /// Largest relative change of the limit per tick (0.10 = 10 %), taken
    /// within `[0, 1]`. A change is always at least 1.
    pub step: f64,
    /// How far above its baseline the mean latency may rise before the limit
    /// shrinks (1.5: 50 % above); values below 1 (or NaN) count as 1.
    pub latency_tolerance: f64,
    /// Most requests one peer may have admitted at once (500); `0` rejects
    /// every request, `usize::MAX` disables the cap.
    pub max_per_peer: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            initial_limit: 1000,
            min_limit: 100,
            max_limit: 10_000,
            step: 0.10,
            latency_tolerance: 1.5,
            max_per_peer: 500,
        }
    }
}

/// Why a request was not admitted. Both cases are transient: the client may
/// retry later or on another node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The server is at its concurrency limit.
    #[error("server busy: {active} active of limit {limit}")]
    Busy {
        /// Requests active when the request arrived.
        active: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The requesting peer is at its own cap.
    #[error("peer busy: {peer_active} active of per-peer limit {peer_limit}")]
    PeerBusy {
        /// The peer's requests active when the request arrived.
        peer_active: usize,
        /// The per-peer cap.
        peer_limit: usize,
    },
}

impl Rejection {
    /// Whether retrying (later, or on another node) may succeed: always true.
    pub fn is_retryable(&self) -> bool {
        match self {
            Rejection::Busy { .. } | Rejection::PeerBusy { .. } => true,
        }
    }
}

/// What one [`Admission::adjust`] tick saw and decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The limit before the tick.
    pub old: usize,
    /// The limit after it.
    pub new: usize,
    /// Latency samples in the window.
    pub samples: u64,
    /// Mean latency of the window (`None` without samples).
    pub latency: Option<Duration>,
    /// The baseline the window was compared with.
    pub baseline: Option<Duration>,
    /// Whether the admitted requests filled the limit during the window.
    pub pressed: bool,
}

/// Load-aware admission control for a server.
///
/// Call [`Admission::try_admit`] when a request arrives,
/// [`Admission::complete`] when it is answered (or [`Admission::release`]
/// when it is abandoned without an answer), and [`Admission::adjust`] on a
/// periodic tick. Pure bookkeeping: no clock, no I/O; latencies are given.
#[derive(Clone, Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    limit: usize,
    active: usize,
    per_peer: BTreeMap<PeerKey, usize>,
    /// Lowest window mean latency seen (ns), adapted as the module says.
    baseline: Option<u64>,
    /// Latency samples of the current window.
    samples: u64,
    /// Their sum (ns).
    latency_sum: u128,
    /// Most requests admitted at once during the window.
    peak: usize,
}

/// `floor(limit * step)`, at least 1: the largest change of one tick.
/// Float-to-int casts saturate, so this cannot wrap.
fn step_delta(limit: usize, step: f64) -> usize {
    ((limit as f64 * step) as usize).max(1)
}

impl Admission {
    /// An admission controller with no active requests; the limit starts at
    /// `initial_limit` clamped to `[min_limit, max_limit]`.
    pub fn new(cfg: AdmissionConfig) -> Self {
        let mut cfg = cfg;
        cfg.min_limit = cfg.min_limit.max(1);
        cfg.max_limit = cfg.max_limit.max(cfg.min_limit);
        cfg.step = if cfg.step.is_nan() {
            0.0
        } else {
            cfg.step.clamp(0.0, 1.0)
        };
        // `max` returns the other operand for NaN.
        cfg.latency_tolerance = cfg.latency_tolerance.max(1.0);
        let limit = cfg.initial_limit.clamp(cfg.min_limit, cfg.max_limit);
        Admission {
            cfg,
            limit,
            active: 0,
            per_peer: BTreeMap::new(),
            baseline: None,
            samples: 0,
            latency_sum: 0,
            peak: 0,
        }
    }

    /// Admits one request from `peer` if the server is below its limit and
    /// the peer below its cap; on success the request counts as active until
    /// [`Admission::complete`] or [`Admission::release`].
    pub fn try_admit(&mut self, peer: &PeerKey) -> Result<(), Rejection> {
        if self.active >= self.limit {
            return Err(Rejection::Busy {
                active: self.active,
                limit: self.limit,
            });
        }
        let peer_active = self.active_for(peer);
        if peer_active >= self.cfg.max_per_peer {
            return Err(Rejection::PeerBusy {
                peer_active,
                peer_limit: self.cfg.max_per_peer,
            });
        }
        *self.per_peer.entry(peer.clone()).or_insert(0) += 1;
        self.active += 1;
        self.peak = self.peak.max(self.active);
        self.debug_check();
        Ok(())
    }

    /// Ends one admitted request of `peer` that was answered `latency` after
    /// its admission: releases it and records the latency for the next tick.
    /// A peer with nothing active: nothing happens (no sample either).
    pub fn complete(&mut self, peer: &PeerKey, latency: Duration) {
        if self.release_one(peer) {
            self.samples += 1;
            self.latency_sum += latency.as_nanos();
        }
        self.debug_check();
    }

    /// Ends one admitted request of `peer` without a latency sample (it was
    /// abandoned, for instance at shutdown). Saturating: releasing a peer with
    /// nothing active does nothing. A peer whose count reaches zero is
    /// forgotten, so the per-peer table only holds peers with active requests.
    pub fn release(&mut self, peer: &PeerKey) {
        self.release_one(peer);
        self.debug_check();
    }

    fn release_one(&mut self, peer: &PeerKey) -> bool {
        let Some(n) = self.per_peer.get_mut(peer) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.per_peer.remove(peer);
        }
        self.active -= 1;
        true
    }

    /// The periodic tick: applies the rule of the [module](self) to the
    /// window since the last tick, then starts a new window. Returns what it
    /// saw and decided.
    pub fn adjust(&mut self) -> Tick {
        let old = self.limit;
        let samples = std::mem::take(&mut self.samples);
        let sum = std::mem::take(&mut self.latency_sum);
        let pressed = self.peak >= old;
        self.peak = self.active;
        let mut tick = Tick {
            old,
            new: old,
            samples,
            latency: None,
            baseline: self.baseline.map(Duration::from_nanos),
            pressed,
        };
        if samples == 0 {
            return tick;
        }
        let current = u64::try_from(sum / u128::from(samples)).unwrap_or(u64::MAX);
        let base = self.baseline.map_or(current, |b| b.min(current));
        let (min, max) = (self.cfg.min_limit, self.cfg.max_limit);
        let cap = step_delta(old, self.cfg.step);
        let allowed = base as f64 * self.cfg.latency_tolerance;
        let latency = current as f64;
        let new = if latency > allowed {
            // The gradient: the limit at which latency would be back within
            // the tolerance if it scales with the queue.
            let target = (old as f64 * allowed / latency).ceil() as usize;
            target.max(old.saturating_sub(cap)).max(min)
        } else if pressed {
            old + old.isqrt().min(cap)
        } else {
            old
        };
        let new = new.min(max);
        let base = if !pressed || new == min {
            base + (current - base) / 8
        } else {
            base
        };
        self.limit = new;
        self.baseline = Some(base);
        self.debug_check();
        tick.new = new;
        tick.latency = Some(Duration::from_nanos(current));
        tick.baseline = Some(Duration::from_nanos(base));
        tick
    }

    /// The concurrency limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The latency baseline learned so far (`None` before the first tick with
    /// samples).
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_nanos)
    }

    /// Requests currently admitted.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Requests of `peer` currently admitted.
    pub fn active_for(&self, peer: &PeerKey) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }

    /// `active / limit` (the limit is never 0).
    pub fn load_factor(&self) -> f64 {
        self.active as f64 / self.limit as f64
    }

    /// Peers with at least one admitted request.
    pub fn peers(&self) -> usize {
        self.per_peer.len()
    }

    /// The effective configuration (after normalising out-of-range values).
    pub fn config(&self) -> &AdmissionConfig {
        &self.cfg
    }

    fn debug_check(&self) {
        debug_assert!(self.limit >= self.cfg.min_limit && self.limit <= self.cfg.max_limit);
        debug_assert_eq!(self.active, self.per_peer.values().sum::<usize>());
        debug_assert!(self.per_peer.values().all(|&n| n > 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn peer(n: u8) -> PeerKey {
        PeerKey::from(vec![n; 4])
    }

    fn cfg(initial: usize, min: usize, max: usize) -> AdmissionConfig {
        AdmissionConfig {
            initial_limit: initial,
            min_limit: min,
            max_limit: max,
            max_per_peer: usize::MAX,
            ..AdmissionConfig::default()
        }
    }

    /// `n` requests admitted together, then each answered after `latency`.
    fn window(a: &mut Admission, n: usize, latency: Duration) {
        for _ in 0..n {
            a.try_admit(&peer(1)).unwrap();
        }
        for _ in 0..n {
            a.complete(&peer(1), latency);
        }
    }

    /// A controller at `limit` whose baseline is `base` (one light tick).
    fn with_baseline(c: AdmissionConfig, base: Duration) -> Admission {
        let mut a = Admission::new(c);
        window(&mut a, 1, base);
        let t = a.adjust();
        assert_eq!((t.old, t.new, t.pressed), (t.old, t.old, false));
        assert_eq!(a.baseline(), Some(base));
        a
    }

    #[test]
    fn defaults_are_the_specs() {
        let a = Admission::new(AdmissionConfig::default());
        assert_eq!(a.limit(), 1000);
        assert_eq!(a.config().min_limit, 100);
        assert_eq!(a.config().max_limit, 10_000);
        assert_eq!(a.config().step, 0.10);
        assert_eq!(a.config().latency_tolerance, 1.5);
        assert_eq!(a.config().max_per_peer, 500);
        assert_eq!(a.active(), 0);
        assert_eq!(a.load_factor(), 0.0);
        assert_eq!(a.baseline(), None);
    }

    #[test]
    fn config_is_normalised() {
        assert_eq!(Admission::new(cfg(5, 100, 10_000)).limit(), 100);
        assert_eq!(Admission::new(cfg(50_000, 100, 10_000)).limit(), 10_000);
        // Inverted or zero bounds do not panic.
        let a = Admission::new(cfg(7, 20, 10));
        assert_eq!(a.limit(), 20);
        assert_eq!(a.config().max_limit, 20);
        assert_eq!(Admission::new(cfg(0, 0, 0)).limit(), 1);
        let odd = |step: f64, tol: f64| {
            let a = Admission::new(AdmissionConfig {
                step,
                latency_tolerance: tol,
                ..AdmissionConfig::default()
            });
            (a.config().step, a.config().latency_tolerance)
        };
        assert_eq!(odd(f64::NAN, f64::NAN), (0.0, 1.0));
        assert_eq!(odd(2.0, 0.5), (1.0, 1.0));
        assert_eq!(odd(-1.0, 3.0), (0.0, 3.0));
    }

    #[test]
    fn admits_up_to_the_limit_then_busy() {
        let mut a = Admission::new(cfg(3, 1, 10));
        for i in 0..3 {
            a.try_admit(&peer(i)).unwrap();
        }
        assert_eq!(a.load_factor(), 1.0);
        let err = a.try_admit(&peer(9)).unwrap_err();
        assert_eq!(
            err,
            Rejection::Busy {
                active: 3,
                limit: 3
            }
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains("busy"));
        a.release(&peer(0));
        assert!(a.try_admit(&peer(9)).is_ok());
    }

    #[test]
    fn load_factor_is_active_over_limit() {
        let mut a = Admission::new(cfg(4, 1, 10));
        for _ in 0..3 {
            a.try_admit(&peer(1)).unwrap();
        }
        assert_eq!(a.load_factor(), 0.75);
    }

    #[test]
    fn per_peer_cap() {
        let mut a = Admission::new(AdmissionConfig {
            max_per_peer: 2,
            ..AdmissionConfig::default()
        });
        a.try_admit(&peer(1)).unwrap();
        a.try_admit(&peer(1)).unwrap();
        let e = a.try_admit(&peer(1)).unwrap_err();
        assert_eq!(
            e,
            Rejection::PeerBusy {
                peer_active: 2,
                peer_limit: 2
            }
        );
        assert!(e.is_retryable());
        assert!(a.try_admit(&peer(2)).is_ok());
        assert_eq!(a.active_for(&peer(1)), 2);
        assert_eq!(a.peers(), 2);
        assert_eq!(a.active(), 3);
    }

    #[test]
    fn release_saturates_and_forgets_peers() {
        let mut a = Admission::new(AdmissionConfig::default());
        a.release(&peer(1));
        a.complete(&peer(1), MS);
        assert_eq!(a.active(), 0);
        a.try_admit(&peer(1)).unwrap();
        a.try_admit(&peer(1)).unwrap();
        a.try_admit(&peer(2)).unwrap();
        a.release(&peer(1));
        assert_eq!(a.active_for(&peer(1)), 1);
        assert_eq!(a.peers(), 2);
        a.complete(&peer(1), MS);
        a.release(&peer(1));
        a.release(&peer(3));
        assert_eq!(a.active(), 1);
        assert_eq!(a.active_for(&peer(1)), 0);
        assert_eq!(a.peers(), 1);
        a.release(&peer(2));
        assert_eq!(a.peers(), 0);
        assert_eq!(a.active(), 0);
        // Only the one real completion gave a sample.
        let t = a.adjust();
        assert_eq!(t.samples, 1);
        assert_eq!(t.latency, Some(MS));
    }

    #[test]
    fn idle_server_holds_its_limit() {
        let mut a = Admission::new(AdmissionConfig::default());
        for _ in 0..100 {
            let t = a.adjust();
            assert_eq!(
                t,
                Tick {
                    old: 1000,
                    new: 1000,
                    samples: 0,
                    latency: None,
                    baseline: None,
                    pressed: false,
                }
            );
        }
        assert_eq!(a.limit(), 1000);
    }

    #[test]
    fn light_load_holds_the_limit_and_the_baseline_follows() {
        let mut a = Admission::new(cfg(1000, 100, 10_000));
        window(&mut a, 500, 20 * MS);
        let t = a.adjust();
        assert_eq!(
            t,
            Tick {
                old: 1000,
                new: 1000,
                samples: 500,
                latency: Some(20 * MS),
                baseline: Some(20 * MS),
                pressed: false,
            }
        );
        // Slower handlers without load: the baseline rises by 1/8 of the gap.
        window(&mut a, 999, 24 * MS);
        let t = a.adjust();
        assert_eq!((t.new, t.pressed), (1000, false));
        assert_eq!(a.baseline(), Some(Duration::from_micros(20_500)));
        // A faster window lowers it at once.
        window(&mut a, 10, 10 * MS);
        a.adjust();
        assert_eq!(a.baseline(), Some(10 * MS));
        for _ in 0..50 {
            window(&mut a, 300, 10 * MS);
            assert_eq!(a.adjust().new, 1000);
        }
    }

    #[test]
    fn the_window_latency_is_the_mean_of_its_samples() {
        let mut a = Admission::new(cfg(1000, 100, 10_000));
        for _ in 0..3 {
            a.try_admit(&peer(1)).unwrap();
        }
        a.complete(&peer(1), 10 * MS);
        a.complete(&peer(1), 30 * MS);
        a.complete(&peer(1), 50 * MS);
        let t = a.adjust();
        assert_eq!((t.samples, t.latency), (3, Some(30 * MS)));
        // A new window starts empty.
        assert_eq!(a.adjust().samples, 0);
    }

    #[test]
    fn pressed_and_healthy_grows_by_sqrt_within_the_cap() {
        let base = 20 * MS;
        let mut a = with_baseline(cfg(1000, 100, 10_000), base);
        // Exactly filling the limit counts as pressing on it.
        window(&mut a, 1000, base);
        let t = a.adjust();
        assert_eq!((t.old, t.new, t.pressed), (1000, 1031, true));
        // Healthy up to the tolerance itself (30 ms = 1.5 * 20 ms): grows.
        window(&mut a, 1031, 30 * MS);
        assert_eq!(a.adjust().new, 1031 + 32);
        // The baseline does not move while demand presses.
        assert_eq!(a.baseline(), Some(base));
        // One short of the limit: not pressed, holds.
        window(&mut a, 1062, base);
        let t = a.adjust();
        assert_eq!((t.new, t.pressed), (1063, false));

        // Where sqrt exceeds 10 %, the cap rules: 50 -> 55, not 57.
        let mut b = with_baseline(cfg(50, 1, 1000), base);
        window(&mut b, 50, base);
        assert_eq!(b.adjust().new, 55);
        // With a zero step, the limit still moves by one.
        let mut c = with_baseline(
            AdmissionConfig {
                step: 0.0,
                ..cfg(400, 1, 1000)
            },
            base,
        );
        window(&mut c, 400, base);
        assert_eq!(c.adjust().new, 401);
        // Never past the maximum.
        let mut d = with_baseline(cfg(9_990, 100, 10_000), base);
        window(&mut d, 9_990, base);
        assert_eq!(d.adjust().new, 10_000);
        window(&mut d, 10_000, base);
        assert_eq!(d.adjust().new, 10_000);
    }

    #[test]
    fn latency_above_tolerance_shrinks_by_the_gradient_within_the_cap() {
        let base = 20 * MS;
        let mut a = with_baseline(cfg(1000, 100, 10_000), base);
        // 31.25 ms against 30 ms allowed: 1000 * 30 / 31.25 = 960.
        window(&mut a, 10, Duration::from_micros(31_250));
        let t = a.adjust();
        assert_eq!((t.old, t.new, t.pressed), (1000, 960, false));
        // Twice the allowed latency would halve it: capped at 10 %.
        window(&mut a, 10, 60 * MS);
        assert_eq!(a.adjust().new, 864);
        // Shrinks whether or not demand presses.
        window(&mut a, 864, 60 * MS);
        let t = a.adjust();
        assert_eq!((t.new, t.pressed), (778, true));
        // The peak of that window (864) does not count in the next one.
        window(&mut a, 1, base);
        let t = a.adjust();
        assert_eq!((t.new, t.pressed), (778, false));
        // A gradient that rounds up: 100 * 30 / 31 = 96.77 -> 97.
        let mut b = with_baseline(cfg(100, 1, 1000), base);
        window(&mut b, 100, 31 * MS);
        assert_eq!(b.adjust().new, 97);
    }

    #[test]
    fn shrinking_stops_at_the_minimum_where_the_baseline_adapts() {
        let base = 20 * MS;
        let mut a = with_baseline(cfg(105, 100, 1000), base);
        window(&mut a, 105, 60 * MS);
        let t = a.adjust();
        assert_eq!((t.new, t.pressed), (100, true));
        // At the minimum, even under pressure, the baseline moves up by 1/8
        // of the gap: 20 + 40 / 8 = 25 ms.
        assert_eq!(a.baseline(), Some(25 * MS));
        let mut grew = false;
        for _ in 0..40 {
            window(&mut a, 100, 60 * MS);
            if a.adjust().new > 100 {
                grew = true;
                break;
            }
        }
        assert!(grew, "the baseline reached the new service time");
        assert_eq!(a.limit(), 110);
    }

    #[test]
    fn requests_left_over_a_shrink_press_on_the_new_limit() {
        let base = 20 * MS;
        let mut a = with_baseline(cfg(1000, 100, 10_000), base);
        for _ in 0..1000 {
            a.try_admit(&peer(1)).unwrap();
        }
        for _ in 0..10 {
            a.complete(&peer(1), 60 * MS);
        }
        assert_eq!(a.adjust().new, 900);
        // 990 still active, over the new limit of 900: the next window
        // starts pressed even before anything is admitted.
        for _ in 0..10 {
            a.complete(&peer(1), base);
        }
        let t = a.adjust();
        assert!(t.pressed, "{t:?}");
        assert_eq!(t.new, 930);
    }

    #[test]
    fn tolerance_one_shrinks_on_any_rise() {
        let base = 20 * MS;
        let mut a = with_baseline(
            AdmissionConfig {
                latency_tolerance: 1.0,
                ..cfg(1000, 100, 10_000)
            },
            base,
        );
        window(&mut a, 1000, base);
        assert_eq!(a.adjust().new, 1031);
        window(&mut a, 10, 25 * MS);
        // 1031 * 20 / 25 = 824.8, capped at 1031 - 103 = 928.
        assert_eq!(a.adjust().new, 928);
    }

    #[cfg(debug_assertions)]
    mod debug_check {
        use super::*;

        fn busy() -> Admission {
            let mut a = Admission::new(cfg(10, 5, 20));
            a.try_admit(&peer(1)).unwrap();
            a.debug_check();
            a
        }

        #[test]
        #[should_panic]
        fn catches_a_limit_below_the_minimum() {
            let mut a = busy();
            a.limit = 4;
            a.debug_check();
        }

        #[test]
        #[should_panic]
        fn catches_a_limit_above_the_maximum() {
            let mut a = busy();
            a.limit = 21;
            a.debug_check();
        }

        #[test]
        #[should_panic]
        fn catches_a_wrong_active_count() {
            let mut a = busy();
            a.active = 2;
            a.debug_check();
        }

        #[test]
        #[should_panic]
        fn catches_an_empty_peer_entry() {
            let mut a = busy();
            a.per_peer.insert(peer(2), 0);
            a.debug_check();
        }

        #[test]
        fn accepts_the_bounds_themselves() {
            let mut a = busy();
            a.limit = 5;
            a.debug_check();
            a.limit = 20;
            a.debug_check();
        }
    }
}
