//! A table of named timers: each key has at most one deadline. Cores
//! `set` and `stop` timers by key and ask for the next deadline, instead of
//! pairing inserts and removes of `(instant, key)` entries by hand (a
//! forgotten remove used to leave a stale wake-up, a changed instant an
//! entry that could never be removed).

use crate::Instant;
use std::collections::{BTreeMap, BTreeSet};

/// Deadlines by key, ordered by `(instant, key)`: timers due at the same
/// instant fire in key order, so a run replays exactly.
#[derive(Debug)]
pub(crate) struct TimerTable<K: Ord + Copy> {
    at: BTreeMap<K, Instant>,
    queue: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Copy> Default for TimerTable<K> {
    fn default() -> Self {
        TimerTable {
            at: BTreeMap::new(),
            queue: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Copy> TimerTable<K> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Arms `key` to fire at `at`, replacing its previous deadline.
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.at.insert(key, at) {
            if old == at {
                return;
            }
            self.queue.remove(&(old, key));
        }
        self.queue.insert((at, key));
    }

    /// Disarms `key`; nothing happens if it is not armed.
    pub(crate) fn stop(&mut self, key: K) {
        if let Some(old) = self.at.remove(&key) {
            self.queue.remove(&(old, key));
        }
    }

    /// When `key` fires, if armed.
    #[cfg(test)]
    pub(crate) fn get(&self, key: K) -> Option<Instant> {
        self.at.get(&key).copied()
    }

    /// The earliest deadline, if any timer is armed.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Disarms and returns the earliest timer due at `now` (deadline at or
    /// before it), if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let &(at, key) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.pop_first();
        self.at.remove(&key);
        Some(key)
    }

    /// Disarms every timer.
    pub(crate) fn clear(&mut self) {
        self.at.clear();
        self.queue.clear();
    }

    /// Number of armed timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn set_replaces_and_stop_disarms() {
        let mut table = TimerTable::new();
        table.set(1u32, t(10));
        table.set(2, t(5));
        table.set(1, t(3));
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(1), Some(t(3)));
        assert_eq!(table.next_deadline(), Some(t(3)));
        table.stop(1);
        table.stop(7);
        assert_eq!(table.next_deadline(), Some(t(5)));
        assert_eq!(table.pop_due(t(4)), None);
        assert_eq!(table.pop_due(t(5)), Some(2));
        assert_eq!(table.pop_due(t(100)), None);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn same_instant_fires_in_key_order() {
        let mut table = TimerTable::new();
        for k in [5u32, 1, 3] {
            table.set(k, t(1));
        }
        table.set(0, t(2));
        let fired: Vec<u32> = std::iter::from_fn(|| table.pop_due(t(1))).collect();
        assert_eq!(fired, vec![1, 3, 5]);
        table.clear();
        assert_eq!(table.next_deadline(), None);
    }
}
