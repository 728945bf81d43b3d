//! Server admission: a load-aware concurrency limit.
//!
//! The spec's `MaxConcurrentConns` starts at 1000 and moves between 100 and
//! 10000: on each periodic [`Admission::adjust`] tick the load factor
//! (`active / limit`) is compared with `max_load_factor`; above it the limit
//! shrinks by 10 %, below half of it the limit grows by 10 %.
//!
//! A request that does not fit is answered with a typed [`Rejection`] (the
//! server sends "busy"), so the client can retry elsewhere: load is shed,
//! never silently dropped. A per-peer cap keeps one peer from taking the
//! whole limit.

use crate::PeerKey;
use std::collections::BTreeMap;

/// Limits of [`Admission`]. The defaults are the spec's.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Limit at start (1000); clamped to `[min_limit, max_limit]`.
    pub initial_limit: usize,
    /// Lowest the limit ever goes (100); `0` counts as 1.
    pub min_limit: usize,
    /// Highest the limit ever goes (10000); raised to `min_limit` if lower.
    pub max_limit: usize,
    /// Load factor above which the limit shrinks (0.8); below half of it the
    /// limit grows.
    pub max_load_factor: f64,
    /// Relative change per adjustment (0.10 = 10 %), taken within `[0, 1]`.
    /// A change always moves the limit by at least 1 unless it sits at a
    /// bound.
    pub step: f64,
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
            max_load_factor: 0.8,
            step: 0.10,
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

/// Load-aware admission control for a server.
///
/// Call [`Admission::try_admit`] when a request (or inbound stream) arrives,
/// [`Admission::release`] when it is done, and [`Admission::adjust`] on a
/// periodic tick. Pure bookkeeping: no clock, no I/O.
#[derive(Clone, Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    limit: usize,
    active: usize,
    per_peer: BTreeMap<PeerKey, usize>,
}

/// `ceil(limit * step)`, at least 1. A product within rounding error of an
/// integer counts as that integer, so 10 % of 1000 is 100, not 101.
/// Float-to-int casts saturate, so this cannot wrap.
fn step_delta(limit: usize, step: f64) -> usize {
    let d = limit as f64 * step;
    let r = d.round();
    let d = if (d - r).abs() <= 1e-9 * r.max(1.0) {
        r
    } else {
        d.ceil()
    };
    (d as usize).max(1)
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
        if cfg.max_load_factor.is_nan() {
            cfg.max_load_factor = AdmissionConfig::default().max_load_factor;
        }
        let limit = cfg.initial_limit.clamp(cfg.min_limit, cfg.max_limit);
        Admission {
            cfg,
            limit,
            active: 0,
            per_peer: BTreeMap::new(),
        }
    }

    /// Admits one request from `peer` if the server is below its limit and
    /// the peer below its cap; on success the request counts as active until
    /// [`Admission::release`].
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
        self.debug_check();
        Ok(())
    }

    /// Ends one admitted request of `peer`. Saturating: releasing a peer with
    /// nothing active does nothing. A peer whose count reaches zero is
    /// forgotten, so the per-peer table only holds peers with active requests.
    pub fn release(&mut self, peer: &PeerKey) {
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
            self.active = self.active.saturating_sub(1);
        }
        self.debug_check();
    }

    /// The periodic adjustment tick. With `load = active / limit`: above
    /// `max_load_factor` the limit shrinks by `step` (rounded down), below
    /// half of it the limit grows by `step` (rounded up), always by at least
    /// 1 and never past `[min_limit, max_limit]`. Returns `Some((old, new))`
    /// if the limit changed.
    pub fn adjust(&mut self) -> Option<(usize, usize)> {
        let old = self.limit;
        let (min, max) = (self.cfg.min_limit, self.cfg.max_limit);
        let load = self.load_factor();
        let new = if load > self.cfg.max_load_factor {
            old.saturating_sub(step_delta(old, self.cfg.step)).max(min)
        } else if load < self.cfg.max_load_factor * 0.5 {
            old.saturating_add(step_delta(old, self.cfg.step)).min(max)
        } else {
            old
        };
        // The limit may sit outside the bounds only if the config changed,
        // which it cannot; clamp anyway so the invariant holds by construction.
        let new = new.clamp(min, max);
        self.limit = new;
        self.debug_check();
        (new != old).then_some((old, new))
    }

    /// The concurrency limit in force.
    pub fn limit(&self) -> usize {
        self.limit
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
        self.active as f64 / self.limit.max(1) as f64
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

    fn peer(n: u8) -> PeerKey {
        PeerKey::from(vec![n; 4])
    }

    fn cfg(initial: usize, min: usize, max: usize) -> AdmissionConfig {
        AdmissionConfig {
            initial_limit: initial,
            min_limit: min,
            max_limit: max,
            ..AdmissionConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_specs() {
        let a = Admission::new(AdmissionConfig::default());
        assert_eq!(a.limit(), 1000);
        assert_eq!(a.config().min_limit, 100);
        assert_eq!(a.config().max_limit, 10_000);
        assert_eq!(a.active(), 0);
        assert_eq!(a.load_factor(), 0.0);
    }

    #[test]
    fn initial_limit_is_clamped() {
        assert_eq!(Admission::new(cfg(5, 100, 10_000)).limit(), 100);
        assert_eq!(Admission::new(cfg(50_000, 100, 10_000)).limit(), 10_000);
        // Inverted or zero bounds do not panic.
        let a = Admission::new(cfg(7, 20, 10));
        assert_eq!(a.limit(), 20);
        assert_eq!(Admission::new(cfg(0, 0, 0)).limit(), 1);
    }

    #[test]
    fn admits_up_to_the_limit_then_busy() {
        let mut a = Admission::new(AdmissionConfig {
            max_per_peer: usize::MAX,
            ..cfg(3, 1, 10)
        });
        for i in 0..3 {
            a.try_admit(&peer(i)).unwrap();
        }
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
    fn per_peer_cap() {
        let mut a = Admission::new(AdmissionConfig {
            max_per_peer: 2,
            ..AdmissionConfig::default()
        });
        a.try_admit(&peer(1)).unwrap();
        a.try_admit(&peer(1)).unwrap();
        assert_eq!(
            a.try_admit(&peer(1)),
            Err(Rejection::PeerBusy {
                peer_active: 2,
                peer_limit: 2
            })
        );
        assert!(a.try_admit(&peer(2)).is_ok());
        assert_eq!(a.active_for(&peer(1)), 2);
        assert_eq!(a.peers(), 2);
        assert_eq!(a.active(), 3);
    }

    #[test]
    fn release_saturates_and_forgets_peers() {
        let mut a = Admission::new(AdmissionConfig::default());
        a.release(&peer(1));
        assert_eq!(a.active(), 0);
        a.try_admit(&peer(1)).unwrap();
        a.try_admit(&peer(2)).unwrap();
        a.release(&peer(1));
        a.release(&peer(1));
        a.release(&peer(3));
        assert_eq!(a.active(), 1);
        assert_eq!(a.active_for(&peer(1)), 0);
        assert_eq!(a.peers(), 1);
        a.release(&peer(2));
        assert_eq!(a.peers(), 0);
        assert_eq!(a.active(), 0);
    }

    #[test]
    fn grows_ten_percent_when_load_low() {
        let mut a = Admission::new(AdmissionConfig::default());
        assert_eq!(a.adjust(), Some((1000, 1100)));
        assert_eq!(a.adjust(), Some((1100, 1210)));
        // 1210 * 1.1 = 1331 (ceil).
        assert_eq!(a.adjust(), Some((1210, 1331)));
    }

    #[test]
    fn shrinks_ten_percent_when_load_high() {
        let mut a = Admission::new(AdmissionConfig {
            max_per_peer: usize::MAX,
            ..cfg(1000, 100, 10_000)
        });
        for _ in 0..900 {
            a.try_admit(&peer(1)).unwrap();
        }
        assert!(a.load_factor() > 0.8);
        assert_eq!(a.adjust(), Some((1000, 900)));
        assert_eq!(a.adjust(), Some((900, 810)));
        // Over the limit now: still rejected, still shrinking to the floor.
        assert!(matches!(a.try_admit(&peer(2)), Err(Rejection::Busy { .. })));
        for _ in 0..100 {
            a.adjust();
        }
        assert_eq!(a.limit(), 100);
        assert_eq!(a.adjust(), None);
    }

    #[test]
    fn steady_between_thresholds() {
        let mut a = Admission::new(AdmissionConfig {
            max_per_peer: usize::MAX,
            ..cfg(1000, 100, 10_000)
        });
        for _ in 0..600 {
            a.try_admit(&peer(1)).unwrap();
        }
        assert_eq!(a.adjust(), None);
        assert_eq!(a.limit(), 1000);
    }

    #[test]
    fn growth_caps_at_max_and_small_limits_still_move() {
        let mut a = Admission::new(cfg(9_500, 100, 10_000));
        assert_eq!(a.adjust(), Some((9_500, 10_000)));
        assert_eq!(a.adjust(), None);
        // With a tiny limit, 10 % rounds to zero: move by one anyway.
        let mut b = Admission::new(AdmissionConfig {
            step: 0.0,
            ..cfg(3, 1, 5)
        });
        assert_eq!(b.adjust(), Some((3, 4)));
        for _ in 0..4 {
            b.try_admit(&peer(1)).unwrap();
        }
        assert_eq!(b.adjust(), Some((4, 3)));
    }
}
