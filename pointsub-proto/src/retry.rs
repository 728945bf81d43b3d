//! Retry timing: a deterministic PRNG and exponential backoff with jitter.
//!
//! The core has no other source of randomness than [`Rng`], seeded by the
//! caller, so the same seed gives the same retry schedule (and the same
//! simulation trace) every time.

use std::time::Duration;

/// A deterministic pseudo-random number generator: xoshiro256** seeded
/// through SplitMix64. This is the core's only randomness.
///
/// Not cryptographically secure; it only spreads retries in time.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

/// One SplitMix64 step: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole output sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = splitmix64(&mut sm);
        }
        if s == [0; 4] {
            // xoshiro must not start from the all-zero state. SplitMix64 never
            // yields four zeros in a row, but stay safe regardless.
            s[0] = 0x9e37_79b9_7f4a_7c15;
        }
        Rng { s }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniformly distributed number in `[0, n)`; `0` if `n == 0`.
    ///
    /// Unbiased (Lemire's multiply-and-reject method).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Values of the low half below `threshold` would bias the result.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniformly distributed number in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Exponential backoff between retries, with "equal jitter".
///
/// The delay before retry `n` (1 for the first retry) has a base of
/// `interval * multiplier^(n-1)`, capped at `max`; the delay itself is drawn
/// uniformly from `[base / 2, base]`, so retries of many clients spread out
/// while each one still waits at least half its base.
///
/// Durations are handled in whole nanoseconds, saturating at `u64::MAX`
/// nanoseconds (about 584 years).
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Base delay before the first retry (the spec's `RetryInterval`, 1 s).
    pub interval: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor of the base per retry, usually 2; `0` counts as 1.
    pub multiplier: u32,
}

impl Default for Backoff {
    /// `interval` 1 s (the spec's default retry interval), `max` 30 s,
    /// `multiplier` 2.
    fn default() -> Self {
        Backoff {
            interval: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Backoff {
    /// The un-jittered delay before retry `retry` (1 for the first retry; 0 is
    /// treated as 1): `interval * multiplier^(retry-1)`, capped at `max`.
    pub fn base(&self, retry: u32) -> Duration {
        Duration::from_nanos(self.base_nanos(retry))
    }

    fn base_nanos(&self, retry: u32) -> u64 {
        let interval = nanos(self.interval);
        let cap = nanos(self.max);
        let m = u64::from(self.multiplier.max(1));
        let exp = retry.saturating_sub(1);
        let base = match m.checked_pow(exp) {
            Some(factor) => interval.saturating_mul(factor),
            // The factor alone overflows: only an interval of zero stays small.
            None if interval == 0 => 0,
            None => u64::MAX,
        };
        base.min(cap)
    }

    /// The delay to wait before retry `retry` (1 for the first retry; 0 is
    /// treated as 1), drawn uniformly from `[base / 2, base]` where `base` is
    /// [`Backoff::base`]. Never exceeds `max`, never overflows.
    pub fn delay(&self, retry: u32, rng: &mut Rng) -> Duration {
        let base = self.base_nanos(retry);
        let half = base / 2;
        // span <= 2^63, so span + 1 cannot overflow.
        let span = base - half;
        Duration::from_nanos(half + rng.below(span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_vector() {
        // Reference outputs of SplitMix64 for seed 1234567.
        let mut s = 1_234_567u64;
        let got: Vec<u64> = (0..5).map(|_| splitmix64(&mut s)).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn xoshiro256starstar_reference_vector() {
        // Same outputs as `rand_xoshiro::Xoshiro256StarStar::seed_from_u64`.
        let mut r = Rng::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                11_091_344_671_253_066_420,
                13_793_997_310_169_335_082,
                1_900_383_378_846_508_768,
            ]
        );
        let mut r = Rng::new(42);
        assert_eq!(r.next_u64(), 1_546_998_764_402_558_742);
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let xa: Vec<u64> = (0..32).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..32).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..32).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        let clone = a.clone();
        let mut a2 = clone;
        assert_eq!(a.next_u64(), a2.next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(7);
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let x = rng.below(10);
            assert!(x < 10);
            seen[x as usize] += 1;
        }
        // Each bucket should get roughly 1000; allow a wide margin.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        for _ in 0..1000 {
            assert!(rng.below(u64::MAX) < u64::MAX);
            assert!(rng.below(3) < 3);
        }
    }

    #[test]
    fn next_f64_in_unit_interval() {
        let mut rng = Rng::new(1);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        let mean = sum / 10_000.0;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn backoff_grows_then_caps() {
        let b = Backoff {
            interval: Duration::from_secs(1),
            max: Duration::from_secs(10),
            multiplier: 2,
        };
        let secs: Vec<u64> = (1..=6).map(|r| b.base(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.base(0), b.base(1));
        assert_eq!(b.base(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn backoff_jitter_in_range() {
        let b = Backoff::default();
        let mut rng = Rng::new(99);
        for retry in 0..100 {
            let base = b.base(retry);
            for _ in 0..50 {
                let d = b.delay(retry, &mut rng);
                assert!(
                    d <= base && d >= base / 2,
                    "retry {retry}: {d:?} vs {base:?}"
                );
                assert!(d <= b.max);
            }
        }
    }

    #[test]
    fn backoff_jitter_actually_varies() {
        let b = Backoff::default();
        let mut rng = Rng::new(5);
        let delays: Vec<Duration> = (0..20).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn backoff_same_seed_same_delays() {
        let b = Backoff::default();
        let mut r1 = Rng::new(2024);
        let mut r2 = Rng::new(2024);
        for retry in 1..10 {
            assert_eq!(b.delay(retry, &mut r1), b.delay(retry, &mut r2));
        }
    }

    #[test]
    fn backoff_extreme_values_do_not_overflow() {
        let mut rng = Rng::new(0);
        let huge = Backoff {
            interval: Duration::MAX,
            max: Duration::MAX,
            multiplier: u32::MAX,
        };
        for retry in [0, 1, 2, 64, u32::MAX] {
            let _ = huge.delay(retry, &mut rng);
        }
        let zero = Backoff {
            interval: Duration::ZERO,
            max: Duration::from_secs(1),
            multiplier: 0,
        };
        assert_eq!(zero.delay(u32::MAX, &mut rng), Duration::ZERO);
        let flat = Backoff {
            interval: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 0,
        };
        assert_eq!(flat.base(50), Duration::from_millis(100));
        let inverted = Backoff {
            interval: Duration::from_secs(5),
            max: Duration::from_secs(1),
            multiplier: 2,
        };
        assert_eq!(inverted.base(1), Duration::from_secs(1));
    }
}
