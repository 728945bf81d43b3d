//! A table of named timers: each key has at most one deadline. Cores
//! `set` and `stop` timers by key and ask for the next deadline, instead of
//! pairing inserts and removes of `(instant, key)` entries by hand (a
//! forgotten remove used to leave a stale wake-up, a changed instant an
//! entry that could never be removed).

use crate::Instant;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;

/// The table: each armed key's deadline in a hash map, and a min-heap of
/// `(deadline, key, arming)` entries that is cleaned lazily. Setting or
/// stopping a timer costs a hash-map operation and at most one heap push
/// (a request arms and disarms several timers: ordered trees cost several
/// times as much, and were a sixth of the core's instructions per request).
///
/// A heap entry is live when its key is still armed with the same arming
/// number; stale entries are dropped when they reach the top (which is
/// kept live after every call, so [`TimerTable::next_deadline`] is exact),
/// and the heap is rebuilt from the map when stale entries outnumber the
/// live ones. Due timers fire in `(deadline, key)` order; the map is never
/// iterated for anything that depends on its order, so the table is
/// deterministic.
#[derive(Debug)]
pub(crate) struct TimerTable<K: Ord + Copy + Hash> {
    at: FxHashMap<K, (Instant, u64)>,
    queue: BinaryHeap<Reverse<(Instant, K, u64)>>,
    /// Arming number of the next `set`.
    next: u64,
}

impl<K: Ord + Copy + Hash> Default for TimerTable<K> {
    fn default() -> Self {
        TimerTable {
            at: FxHashMap::default(),
            queue: BinaryHeap::new(),
            next: 0,
        }
    }
}

/// Stale entries tolerated beyond the live ones before a rebuild.
const SLACK: usize = 64;

impl<K: Ord + Copy + Hash> TimerTable<K> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Arms `key` to fire at `at`, replacing its earlier deadline.
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        if self.at.get(&key).is_some_and(|&(old, _)| old == at) {
            return;
        }
        let n = self.next;
        self.next += 1;
        self.at.insert(key, (at, n));
        self.queue.push(Reverse((at, key, n)));
        self.tidy();
    }

    /// Disarms `key` (nothing if it is not armed).
    pub(crate) fn stop(&mut self, key: K) {
        if self.at.remove(&key).is_some() {
            self.tidy();
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: K) -> Option<Instant> {
        self.at.get(&key).map(|&(at, _)| at)
    }

    /// The earliest deadline armed, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next key due at `now` (disarmed as it is returned).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let &Reverse((at, key, _)) = self.queue.peek()?;
        if at > now {
            return None;
        }
        self.queue.pop();
        self.at.remove(&key);
        self.tidy();
        Some(key)
    }

    pub(crate) fn clear(&mut self) {
        self.at.clear();
        self.queue.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }

    fn is_live(&self, (at, key, n): &(Instant, K, u64)) -> bool {
        self.at.get(key) == Some(&(*at, *n))
    }

    /// Keeps the top of the heap live, and the heap at most about twice
    /// the armed timers.
    fn tidy(&mut self) {
        if self.queue.len() > 2 * self.at.len() + SLACK {
            let live: Vec<_> = self
                .at
                .iter()
                .map(|(&key, &(at, n))| Reverse((at, key, n)))
                .collect();
            self.queue = BinaryHeap::from(live);
            return;
        }
        while let Some(Reverse(top)) = self.queue.peek() {
            if self.is_live(top) {
                break;
            }
            self.queue.pop();
        }
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
    fn rearming_leaves_one_live_entry_and_the_heap_stays_small() {
        let mut table = TimerTable::new();
        // Set, stop and set again at the same instant: fires once.
        table.set(9u32, t(5));
        table.stop(9);
        table.set(9, t(5));
        assert_eq!(table.pop_due(t(5)), Some(9));
        assert_eq!(table.pop_due(t(5)), None);
        // Many re-armings of long timers, as requests do: the heap is
        // rebuilt instead of growing with stale entries.
        for round in 0..100u64 {
            for k in 0..50u32 {
                table.set(k, t(1000 + round));
            }
        }
        assert_eq!(table.len(), 50);
        assert!(
            table.queue.len() <= 2 * 50 + SLACK + 1,
            "{}",
            table.queue.len()
        );
        assert_eq!(table.next_deadline(), Some(t(1099)));
        for k in 0..50u32 {
            table.stop(k);
        }
        assert_eq!(table.next_deadline(), None);
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
