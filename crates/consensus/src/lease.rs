//! The leader's read lease: a read barrier without a round trip.
//!
//! A ReadIndex round that a quorum acknowledged proves that, when the round
//! started, no other leader existed; it cannot say for how long after. A
//! lease stretches that proof over time. Every follower that acknowledged
//! the round's heartbeat refuses to vote for anyone else until it has
//! counted `election_tick` ticks of its own since (raft-rs's check-quorum
//! lease), so until then no other leader can be elected. A lease granted at
//! the round's start for less than that span, in the leader's own clock,
//! proves the same for every instant inside it. A read on a leader that
//! holds a lease therefore needs no round of its own, and neither does a
//! follower's request for a read index: the leader answers it with its
//! commit index, which covers every write acknowledged so far.
//!
//! # Why the span is safe, and what it assumes
//!
//! - **Ticks never run ahead of time.** The driver fires a tick only once
//!   its deadline has passed, and the next deadline is never earlier than
//!   the tick before it. So after hearing from the leader, a follower counts
//!   its `election_tick`-th tick no earlier than `election_tick - 2` tick
//!   periods later. The span is at most that, divided by the clock-rate
//!   bound (`drift`, below).
//! - **Clocks run at about the same rate.** A follower's tick period and
//!   the leader's monotonic clock may differ in rate by at most the drift
//!   factor the caller passes (10 % in production; the simulator, whose
//!   nodes' clocks are skewed by up to 50 %, passes its own bound).
//!   `Instant` stops while the machine is suspended; a node whose machine
//!   sleeps while it leads could serve a stale read when it wakes. This is
//!   why the lease is off by default.
//! - **A restarted node forgets whom it followed.** raft-rs grants votes at
//!   once after a restart, so a core with leases on ignores vote requests
//!   for `election_tick` ticks after start ([`crate::core::Core`]). This is
//!   why every node of a cluster must have leases on, not only the leader.
//! - **A leader that hands leadership over gives up its lease** for the
//!   rest of its term: the target campaigns with a forced vote that
//!   followers grant whatever lease they hold, and such a request can reach
//!   a follower long after the transfer was abandoned.
//! - **A membership change ends the lease**: the next one comes from a
//!   round whose quorum was counted in the new configuration.
//!
//! The simulator runs the lease on half of its seeds, with clocks whose
//! rates differ by up to 50 %, partitions, crashes and leadership
//! transfers, and checks every read against a linearizable history. Its
//! `long-lease` canary (three election timeouts, still used after the
//! leader stepped down in the same term) is caught.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock (the simulator substitutes simulated time).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        Clock(Arc::new(Instant::now))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    /// The current instant.
    pub fn now(&self) -> Instant {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// The longest lease that stays inside a follower's vote refusal, for ticks
/// of `tick` and an election timeout of `election_tick` ticks, when clock
/// rates may differ by the factor `drift` (1.1: 10 %).
pub fn span(tick: Duration, election_tick: usize, drift: f64) -> Duration {
    let ticks = election_tick.saturating_sub(2) as u32;
    (tick * ticks).div_f64(drift.max(1.0))
}

/// When a ReadIndex round started: the lease it may grant.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    at: Instant,
    term: u64,
    epoch: u64,
}

/// A leader's lease.
#[derive(Debug)]
pub struct Lease {
    span: Option<Duration>,
    clock: Clock,
    /// (term, valid until).
    until: Option<(u64, Instant)>,
    /// No lease in this term (leadership was handed over in it).
    barred: u64,
    /// Bumped by every membership change: older rounds grant nothing.
    epoch: u64,
}

impl Lease {
    /// A lease of `span` (`None`: leases are off) read on `clock`.
    pub fn new(span: Option<Duration>, clock: Clock) -> Self {
        Lease {
            span,
            clock,
            until: None,
            barred: 0,
            epoch: 0,
        }
    }

    /// Stamps a round starting now in `term`.
    pub fn stamp(&self, term: u64) -> Stamp {
        Stamp {
            at: self.clock.now(),
            term,
            epoch: self.epoch,
        }
    }

    /// A quorum acknowledged the round stamped `stamp`; this node still
    /// leads in `term`.
    pub fn confirmed(&mut self, stamp: Stamp, term: u64) {
        let Some(span) = self.span else { return };
        if stamp.term != term || self.barred == term || stamp.epoch != self.epoch {
            return;
        }
        let until = stamp.at + span;
        match self.until {
            Some((t, u)) if t == term && u >= until => {}
            _ => self.until = Some((term, until)),
        }
    }

    /// Leadership is being handed over in `term`: no lease until the next.
    pub fn bar(&mut self, term: u64) {
        self.barred = term;
        self.until = None;
    }

    /// The membership changed: rounds started before grant nothing.
    pub fn membership_changed(&mut self) {
        self.epoch += 1;
        self.until = None;
    }

    /// Until when reads in `term` need no round (`None`: they do).
    pub fn valid_until(&self, term: u64) -> Option<Instant> {
        match self.until {
            Some((t, until)) if t == term && self.barred != term => Some(until),
            _ => None,
        }
    }

    /// Whether the lease holds now in `term`.
    pub fn holds(&self, term: u64) -> bool {
        self.valid_until(term)
            .is_some_and(|until| self.clock.now() < until)
    }

    /// Whether a round should start to renew the lease: it is on, and less
    /// than half of it is left.
    pub fn wants_renewal(&self, term: u64) -> bool {
        let Some(span) = self.span else { return false };
        if self.barred == term {
            return false;
        }
        match self.valid_until(term) {
            Some(until) => until.saturating_duration_since(self.clock.now()) < span / 2,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn manual() -> (Clock, Arc<AtomicU64>, Instant) {
        let base = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let read = ms.clone();
        let clock =
            Clock::from_fn(move || base + Duration::from_millis(read.load(Ordering::SeqCst)));
        (clock, ms, base)
    }

    #[test]
    fn the_span_stays_inside_the_vote_refusal() {
        // 10 ticks of 20 ms: a follower may vote 8 periods (160 ms) after
        // it last heard from the leader; 10 % drift leaves 145 ms.
        let s = span(Duration::from_millis(20), 10, 1.1);
        assert!(s < Duration::from_millis(160), "{s:?}");
        assert!(s > Duration::from_millis(140), "{s:?}");
        assert_eq!(span(Duration::from_millis(20), 1, 1.1), Duration::ZERO);
    }

    #[test]
    fn a_confirmed_round_grants_from_its_start_and_expires() {
        let (clock, ms, base) = manual();
        let mut lease = Lease::new(Some(Duration::from_millis(100)), clock);
        assert!(!lease.holds(1));
        let stamp = lease.stamp(1);
        ms.store(30, Ordering::SeqCst);
        lease.confirmed(stamp, 1);
        assert_eq!(
            lease.valid_until(1),
            Some(base + Duration::from_millis(100))
        );
        assert!(lease.holds(1));
        assert!(!lease.holds(2), "a lease belongs to its term");
        assert!(!lease.wants_renewal(1));
        ms.store(60, Ordering::SeqCst);
        assert!(lease.wants_renewal(1));
        ms.store(100, Ordering::SeqCst);
        assert!(!lease.holds(1));
    }

    #[test]
    fn an_older_round_never_shortens_the_lease() {
        let (clock, ms, base) = manual();
        let mut lease = Lease::new(Some(Duration::from_millis(100)), clock);
        let old = lease.stamp(1);
        ms.store(20, Ordering::SeqCst);
        let new = lease.stamp(1);
        lease.confirmed(new, 1);
        lease.confirmed(old, 1);
        assert_eq!(
            lease.valid_until(1),
            Some(base + Duration::from_millis(120))
        );
    }

    #[test]
    fn a_round_of_another_term_or_membership_grants_nothing() {
        let (clock, _, _) = manual();
        let mut lease = Lease::new(Some(Duration::from_millis(100)), clock);
        let stamp = lease.stamp(1);
        lease.confirmed(stamp, 2);
        assert!(!lease.holds(2) && !lease.holds(1));
        let stamp = lease.stamp(2);
        lease.membership_changed();
        lease.confirmed(stamp, 2);
        assert!(!lease.holds(2));
        let stamp = lease.stamp(2);
        lease.confirmed(stamp, 2);
        assert!(lease.holds(2));
        lease.membership_changed();
        assert!(!lease.holds(2), "a membership change ends the lease");
    }

    #[test]
    fn a_handover_bars_the_lease_for_the_rest_of_the_term() {
        let (clock, _, _) = manual();
        let mut lease = Lease::new(Some(Duration::from_millis(100)), clock);
        let stamp = lease.stamp(3);
        lease.confirmed(stamp, 3);
        lease.bar(3);
        assert!(!lease.holds(3));
        let stamp = lease.stamp(3);
        lease.confirmed(stamp, 3);
        assert!(!lease.holds(3));
        assert!(!lease.wants_renewal(3));
        let stamp = lease.stamp(4);
        lease.confirmed(stamp, 4);
        assert!(lease.holds(4));
    }

    #[test]
    fn off_grants_nothing_and_asks_for_no_round() {
        let (clock, _, _) = manual();
        let mut lease = Lease::new(None, clock);
        let stamp = lease.stamp(1);
        lease.confirmed(stamp, 1);
        assert!(!lease.holds(1));
        assert!(!lease.wants_renewal(1));
    }
}
