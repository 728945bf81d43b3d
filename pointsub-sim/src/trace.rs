//! The trace fingerprint: a 64-bit hash over a canonical encoding of every
//! event the simulation processes and every output the cores produce.
//!
//! Each event is encoded as a short sequence of little-endian 64-bit words
//! (a tag word naming the event, then its fields: virtual time in
//! nanoseconds, node indices, stream and request ids, lengths, outcome
//! codes). Words are folded in with a multiply-rotate step (FxHash style)
//! from a fixed start value, and the result is finished with a SplitMix64
//! avalanche. No keys, no per-process randomness: the same run gives the
//! same hash on every machine.

/// Start value of the hash (the 64-bit FNV offset basis).
const START: u64 = 0xcbf2_9ce4_8422_2325;
/// Odd multiplier (2^64 / golden ratio).
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// Event tags: the first word of each encoded event.
#[allow(missing_docs)]
pub mod tag {
    pub const ARRIVAL: u64 = 1;
    pub const SUBMIT: u64 = 2;
    pub const REJECTED: u64 = 3;
    pub const OPEN: u64 = 4;
    pub const OPEN_ARRIVE: u64 = 5;
    pub const OPEN_FAILED: u64 = 6;
    pub const CLIENT_CLOSE: u64 = 7;
    pub const ATTEMPT: u64 = 8;
    pub const COMPLETED: u64 = 9;
    pub const CLIENT_TX: u64 = 10;
    pub const SERVER_TX: u64 = 11;
    pub const DELIVER: u64 = 12;
    pub const FIN: u64 = 13;
    pub const SERVER_REQUEST: u64 = 14;
    pub const SERVER_CANCEL: u64 = 15;
    pub const SERVER_CLOSE: u64 = 16;
    pub const HANDLER_DONE: u64 = 17;
    pub const WAKE: u64 = 18;
    pub const CANCEL: u64 = 19;
    pub const FAULT_RESET: u64 = 20;
    pub const FAULT_DROP: u64 = 21;
    pub const FAULT_PARTITION: u64 = 22;
    pub const HEAL: u64 = 23;
    pub const CRASH: u64 = 24;
    pub const RESTART: u64 = 25;
    pub const SLOW: u64 = 26;
    pub const FAIL: u64 = 27;
    pub const PEER_GONE: u64 = 28;
    pub const BURST: u64 = 29;
    pub const PHASE: u64 = 30;
    pub const SWEEP: u64 = 31;
    pub const INFLATED: u64 = 32;
}

/// A running trace hash.
#[derive(Clone, Debug)]
pub struct TraceHash {
    h: u64,
    words: u64,
}

impl Default for TraceHash {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceHash {
    /// An empty trace.
    pub fn new() -> Self {
        TraceHash { h: START, words: 0 }
    }

    /// Folds one word in.
    #[inline]
    pub fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(MUL);
        self.words += 1;
    }

    /// Folds an event: its tag, the virtual time, then its fields.
    #[inline]
    pub fn event(&mut self, tag: u64, now: u64, fields: &[u64]) {
        self.word(tag);
        self.word(now);
        for &f in fields {
            self.word(f);
        }
    }

    /// Folds a short string (error kinds), byte by byte, length first.
    pub fn str(&mut self, s: &str) {
        self.word(s.len() as u64);
        for chunk in s.as_bytes().chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
    }

    /// Words folded so far.
    pub fn words(&self) -> u64 {
        self.words
    }

    /// The finished hash (the trace can still be extended afterwards).
    pub fn finish(&self) -> u64 {
        let mut z = self.h ^ self.words.wrapping_mul(MUL);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_words_same_hash_and_order_matters() {
        let mut a = TraceHash::new();
        let mut b = TraceHash::new();
        a.event(1, 2, &[3, 4]);
        b.event(1, 2, &[3, 4]);
        assert_eq!(a.finish(), b.finish());
        let mut c = TraceHash::new();
        c.event(1, 2, &[4, 3]);
        assert_ne!(a.finish(), c.finish());
        let mut d = TraceHash::new();
        d.event(1, 2, &[3, 4, 0]);
        assert_ne!(a.finish(), d.finish());
    }
}
