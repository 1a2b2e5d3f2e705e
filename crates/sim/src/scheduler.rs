//! The seeded event scheduler.
//!
//! A priority queue of events ordered by simulated time, then by insertion
//! order. Ties are broken by a sequence number rather than by the event
//! itself so the order never depends on hashing or addresses; with the clock
//! and the [`SimRng`](crate::rng::SimRng) it is the whole of the simulation's
//! nondeterminism, all of it fixed by the seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::clock::{SimClock, SimInstant};

/// A queue of future events of type `E` over a simulated clock.
#[derive(Debug)]
pub struct Scheduler<E> {
    clock: SimClock,
    sequence: u64,
    queue: BinaryHeap<Reverse<Slot<E>>>,
}

#[derive(Debug)]
struct Slot<E> {
    at: SimInstant,
    sequence: u64,
    event: E,
}

impl<E> PartialEq for Slot<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl<E> Eq for Slot<E> {}
impl<E> PartialOrd for Slot<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Slot<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Scheduler<E> {
    /// An empty scheduler at time zero.
    pub fn new() -> Self {
        Self {
            clock: SimClock::new(),
            sequence: 0,
            queue: BinaryHeap::new(),
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> SimInstant {
        self.clock.now()
    }

    /// Schedule `event` at `now + delay_ms`.
    pub fn after(&mut self, delay_ms: u64, event: E) {
        let at = self.clock.now().saturating_add(delay_ms);
        self.at(at, event);
    }

    /// Schedule `event` at `at`; an instant in the past means "now".
    pub fn at(&mut self, at: SimInstant, event: E) {
        let at = at.max(self.clock.now());
        self.sequence += 1;
        self.queue.push(Reverse(Slot {
            at,
            sequence: self.sequence,
            event,
        }));
    }

    /// The instant of the next event, if any.
    pub fn peek_time(&self) -> Option<SimInstant> {
        self.queue.peek().map(|Reverse(slot)| slot.at)
    }

    /// Pop the next event and advance the clock to its instant.
    pub fn pop(&mut self) -> Option<(SimInstant, E)> {
        let Reverse(slot) = self.queue.pop()?;
        self.clock.advance_to(slot.at);
        Some((slot.at, slot.event))
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no event is pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drop every pending event for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) {
        self.queue.retain(|Reverse(slot)| keep(&slot.event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_insertion_order() {
        let mut s = Scheduler::new();
        s.at(5, "b");
        s.at(1, "a");
        s.at(5, "c");
        s.at(3, "x");
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).collect();
        assert_eq!(order, vec![(1, "a"), (3, "x"), (5, "b"), (5, "c")]);
        assert_eq!(s.now(), 5);
    }

    #[test]
    fn past_instants_are_clamped_to_now() {
        let mut s = Scheduler::new();
        s.at(10, 1);
        assert_eq!(s.pop(), Some((10, 1)));
        s.at(3, 2);
        assert_eq!(s.peek_time(), Some(10));
        s.after(4, 3);
        assert_eq!(s.pop(), Some((10, 2)));
        assert_eq!(s.pop(), Some((14, 3)));
        assert!(s.is_empty());
    }

    #[test]
    fn retain_filters_events() {
        let mut s = Scheduler::new();
        for i in 0..10 {
            s.at(i, i);
        }
        s.retain(|e| e % 2 == 0);
        assert_eq!(s.len(), 5);
        assert!(std::iter::from_fn(|| s.pop()).all(|(_, e)| e % 2 == 0));
    }
}
