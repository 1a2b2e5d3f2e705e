//! Simulated time.
//!
//! Time only moves when the scheduler says so: the clock jumps to the next
//! event's instant. Nothing in a simulation reads the wall clock, which is
//! what makes a seed replay exactly.

/// A point in simulated time, in milliseconds since the start of the run.
pub type SimInstant = u64;

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
    #[should_panic(expected = "backwards")]
    fn refuses_to_go_back() {
        let mut clock = SimClock::new();
        clock.advance_to(10);
        clock.advance_to(9);
    }
}
