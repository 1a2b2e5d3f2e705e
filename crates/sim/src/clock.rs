//! Simulated time.
//!
//! Time only moves when the scheduler says so: the clock jumps to the next
//! event's instant. Nothing in a simulation reads the wall clock, which is
//! what makes a seed replay exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite_consensus::lease::Clock;

/// A point in simulated time, in milliseconds since the start of the run.
pub type SimInstant = u64;

/// Simulated time as the nodes' clocks read it; the harness sets it to
/// each event's instant before handing the event to a node.
pub type SharedTime = Arc<AtomicU64>;

/// A node's monotonic clock: simulated time at the node's own skewed rate.
/// A tick of `tick_ms` simulated milliseconds (set once the node's skew is
/// drawn) lasts `nominal_ms` on it, so a node whose ticks are slow has a
/// slow clock too, as on a machine whose oscillator runs slow.
pub fn node_clock(time: SharedTime, tick_ms: Arc<AtomicU64>, nominal_ms: u64) -> Clock {
    // The base is arbitrary: only differences between readings matter.
    let base = Instant::now();
    Clock::from_fn(move || {
        let sim_us = time.load(Ordering::Relaxed) * 1000;
        let tick = tick_ms.load(Ordering::Relaxed).max(1);
        base + Duration::from_micros(sim_us * nominal_ms / tick)
    })
}

/// A monotonic simulated clock.
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    now_ms: SimInstant,
}

impl SimClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current simulated time in milliseconds.
    pub fn now(&self) -> SimInstant {
        self.now_ms
    }

    /// Move the clock forward to `instant`.
    ///
    /// # Panics
    /// If `instant` is in the past: the scheduler would have handed out
    /// events out of order, a bug in the simulator itself.
    pub fn advance_to(&mut self, instant: SimInstant) {
        assert!(
            instant >= self.now_ms,
            "simulated time went backwards: {} -> {}",
            self.now_ms,
            instant
        );
        self.now_ms = instant;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_monotonically() {
        let mut clock = SimClock::new();
        assert_eq!(clock.now(), 0);
        clock.advance_to(10);
        clock.advance_to(10);
        assert_eq!(clock.now(), 10);
    }

    #[test]
    fn a_node_clock_runs_at_its_ticks_rate() {
        let time = SharedTime::default();
        let slow = node_clock(time.clone(), Arc::new(AtomicU64::new(12)), 10);
        let fast = node_clock(time.clone(), Arc::new(AtomicU64::new(8)), 10);
        let (s0, f0) = (slow.now(), fast.now());
        time.store(240, Ordering::Relaxed);
        assert_eq!(slow.now() - s0, Duration::from_millis(200));
        assert_eq!(fast.now() - f0, Duration::from_millis(300));
    }

    #[test]
    #[should_panic(expected = "backwards")]
    fn refuses_to_go_back() {
        let mut clock = SimClock::new();
        clock.advance_to(10);
        clock.advance_to(9);
    }
}
