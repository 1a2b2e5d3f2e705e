//! The speculative chain of a database: entries handed to consensus and not
//! yet applied here, each with the version it makes. New transactions read
//! and build on the chain's head, so the next write starts while the
//! previous one replicates; nothing a statement wrote or read from the
//! chain may leave the node before it commits, which is what [`settle`]
//! waits for.
//!
//! Entries name the exact version they were built on, so when one is
//! rejected at apply (or never reaches consensus) everything after it is
//! rejected too, on every node alike; the chain is then dropped from that
//! entry and each ticket from it fails with the same error.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::pages::Version;
use crate::ProposeError;

/// Why what a statement wrote or read did not commit: what its response
/// answers instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// Built on a version that another entry replaced: nothing was
    /// applied; retry the transaction.
    #[error("another transaction committed first and this one was not applied; retry it")]
    Stale,
    /// Never reached consensus here: nothing was applied; retry on the
    /// leader.
    #[error("not leader")]
    NotLeader,
    /// Leadership was lost (or no outcome in time): the write may or may
    /// not have been applied.
    #[error("leadership lost: the write may or may not have been applied")]
    LeadershipLost,
    /// The disk of the leader is full: nothing was applied (SQLITE_FULL
    /// to the client).
    #[error("database or disk is full")]
    DiskFull,
    /// Anything else; the outcome is unknown.
    #[error("{0}")]
    Other(String),
}

impl From<ProposeError> for SettleError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader => SettleError::NotLeader,
            ProposeError::LeadershipLost | ProposeError::Timeout => SettleError::LeadershipLost,
            ProposeError::DiskFull(_) => SettleError::DiskFull,
            ProposeError::Other(m) => SettleError::Other(m),
        }
    }
}

/// The outcome of one speculative entry, shared by its writer, every
/// reader of its version, and the chain.
#[derive(Debug, Default)]
pub(crate) struct Ticket {
    outcome: Mutex<Option<Result<(), SettleError>>>,
    done: Condvar,
    /// Tasks waiting without a thread ([`Pending::settled`]).
    wakers: Mutex<Vec<Waker>>,
}

impl Ticket {
    fn outcome(&self) -> MutexGuard<'_, Option<Result<(), SettleError>>> {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn resolve(&self, result: Result<(), SettleError>) {
        let mut o = self.outcome();
        if o.is_none() {
            *o = Some(result);
            self.done.notify_all();
            drop(o);
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
    }

    /// The outcome, or `Pending` with `cx`'s waker registered first (so a
    /// resolve between the check and the registration is never missed).
    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Result<(), SettleError>> {
        {
            let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        match &*self.outcome() {
            Some(r) => Poll::Ready(r.clone()),
            None => Poll::Pending,
        }
    }

    /// The failure, if it failed already.
    pub(crate) fn failure(&self) -> Option<SettleError> {
        match &*self.outcome() {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    fn wait(&self, deadline: Instant) -> Result<(), SettleError> {
        let mut o = self.outcome();
        loop {
            if let Some(r) = &*o {
                return r.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SettleError::LeadershipLost);
            }
            o = self
                .done
                .wait_timeout(o, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// One entry in flight.
pub(crate) struct Spec {
    pub(crate) id: u64,
    pub(crate) version: Arc<Version>,
    pub(crate) ticket: Arc<Ticket>,
    /// When the entry was handed to consensus (its commit point).
    pub(crate) handed: Instant,
}

/// How long an entry may stay in flight before the chain gives up on it
/// (its outcome becomes unknown): an entry that cannot be made durable (a
/// full disk) must not hold back every later read and write for good.
pub(crate) const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(10);

/// A database's entries in flight, oldest first.
#[derive(Default)]
pub(crate) struct Chain {
    specs: VecDeque<Spec>,
}

impl Chain {
    /// The newest speculative version and its ticket, if any.
    pub(crate) fn head(&self) -> Option<(&Arc<Version>, &Arc<Ticket>)> {
        self.specs.back().map(|s| (&s.version, &s.ticket))
    }

    /// The version entry `id` makes, if it is the oldest in flight (this
    /// node built it).
    pub(crate) fn built(&self, id: u64) -> Option<Arc<Version>> {
        self.specs
            .front()
            .filter(|s| s.id == id)
            .map(|s| Arc::clone(&s.version))
    }

    /// The id of the oldest entry in flight.
    #[cfg(feature = "sim-bugs")]
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.specs.front().map(|s| s.id)
    }

    pub(crate) fn push(&mut self, spec: Spec) {
        self.specs.push_back(spec);
    }

    /// Entry `id` was applied here. The chain's oldest entry committed; any
    /// other entry applied means the chain was built on a replaced version.
    /// Returns when the entry that committed was handed over, if it was
    /// this chain's.
    pub(crate) fn applied(&mut self, id: u64, ok: bool) -> Option<Instant> {
        match self.specs.front() {
            Some(front) if front.id == id && ok => {
                let s = self.specs.pop_front()?;
                s.ticket.resolve(Ok(()));
                return Some(s.handed);
            }
            Some(_) if ok || self.specs.iter().any(|s| s.id == id) => {
                self.fail_from(0, SettleError::Stale)
            }
            _ => {}
        }
        None
    }

    /// Entry `id` failed before it was applied: it and everything built on
    /// it fail alike.
    pub(crate) fn failed(&mut self, id: u64, err: SettleError) {
        if let Some(pos) = self.specs.iter().position(|s| s.id == id) {
            self.fail_from(pos, err);
        }
    }

    /// Gives up on the chain if its oldest entry was handed over before
    /// `deadline`: it and everything built on it fail as of unknown outcome.
    pub(crate) fn expire(&mut self, deadline: Instant) {
        if self.specs.front().is_some_and(|s| s.handed < deadline) {
            self.fail_from(0, SettleError::LeadershipLost);
        }
    }

    /// Leadership is gone (or the database was replaced): drop everything.
    pub(crate) fn clear(&mut self, err: SettleError) {
        self.fail_from(0, err);
    }

    fn fail_from(&mut self, pos: usize, err: SettleError) {
        for s in self.specs.drain(pos..) {
            s.ticket.resolve(Err(err.clone()));
        }
    }
}

thread_local! {
    /// Tickets the SQLite work on this thread wrote or read since the last
    /// [`settle`]. A statement runs on one thread from start to response,
    /// and the VFS is called on that thread, so this is where the handle
    /// leaves what the response must wait for.
    static TOUCHED: RefCell<Pending> = const { RefCell::new(Pending { tickets: Vec::new(), wrote: false }) };
}

thread_local! {
    /// Read transactions started on this thread read the committed version,
    /// not the chain's head ([`read_committed`]).
    static READ_COMMITTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While `on`, read transactions started on this thread see the committed
/// version of their database instead of the head of its chain, so they
/// never wait for entries in flight. For a read-only statement outside an
/// explicit transaction that has a read barrier of its own (before it, or
/// while it runs on a leader that holds every entry of earlier terms): it
/// must see every write acknowledged before it, and those are committed
/// and applied here before their response leaves; writes still in flight
/// need not be visible to it. Never for a transaction that may write: a
/// write must build on the head.
pub fn read_committed(on: bool) {
    READ_COMMITTED.with(|c| c.set(on));
}

pub(crate) fn reads_committed() -> bool {
    READ_COMMITTED.with(std::cell::Cell::get)
}

/// Records that this thread's current statement depends on `ticket`: it
/// read the version the entry makes, or (`own`) committed the entry.
pub(crate) fn touch(ticket: &Arc<Ticket>, own: bool) {
    TOUCHED.with(|t| {
        let mut t = t.borrow_mut();
        t.wrote |= own;
        if !t.tickets.iter().any(|x| Arc::ptr_eq(x, ticket)) {
            t.tickets.push(Arc::clone(ticket));
        }
    });
}

/// Blocks until every speculative entry that this thread's SQLite work
/// wrote or read since the last call has committed, or says why one did
/// not. Past `timeout` the outcome is unknown (`LeadershipLost`). Always
/// forgets what it waited for. `Ok(true)`: the work committed an entry of
/// its own, whose commit proves the leadership it read under.
pub fn settle(timeout: Duration) -> Result<bool, SettleError> {
    let pending = pending();
    let wrote = pending.wrote;
    pending.wait(timeout).map(|()| wrote)
}

/// Takes what this thread's SQLite work wrote or read since the last call,
/// to wait for later.
pub fn pending() -> Pending {
    TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// Speculative entries a statement depends on.
#[derive(Debug, Default)]
pub struct Pending {
    tickets: Vec<Arc<Ticket>>,
    wrote: bool,
}

impl Pending {
    /// Blocks until all committed, or one failed, or `timeout`. The
    /// newest first: once it committed, every entry it was built on had
    /// committed before it, and if it failed there is no need to wait for
    /// older ones (which may be stuck).
    pub fn wait(self, timeout: Duration) -> Result<(), SettleError> {
        let deadline = Instant::now() + timeout;
        for ticket in self.tickets.iter().rev() {
            ticket.wait(deadline)?;
        }
        Ok(())
    }

    /// Resolves as [`Pending::wait`] does, without a thread: for a caller
    /// on an async runtime (which bounds it with its own timeout).
    pub async fn settled(self) -> Result<(), SettleError> {
        let mut next = self.tickets.len();
        std::future::poll_fn(|cx| {
            while next > 0 {
                match self.tickets[next - 1].poll_outcome(cx) {
                    Poll::Ready(Ok(())) => next -= 1,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Adds what `other` waits for, so one outcome covers both.
    pub fn append(&mut self, other: Pending) {
        self.tickets.extend(other.tickets);
        self.wrote |= other.wrote;
    }

    /// Whether the work committed an entry of its own.
    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// The outcome without waiting: `None` while one is still in flight.
    pub fn outcome(&self) -> Option<Result<(), SettleError>> {
        let outcomes: Vec<_> = self.tickets.iter().map(|t| t.outcome().clone()).collect();
        if let Some(e) = outcomes.iter().flatten().find_map(|o| o.clone().err()) {
            return Some(Err(e));
        }
        outcomes
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|_| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64) -> Spec {
        Spec {
            id,
            version: Arc::new(Version::default()),
            ticket: Arc::new(Ticket::default()),
            handed: Instant::now(),
        }
    }

    /// A chain of entries 1..=n and their tickets.
    fn chain_of(n: u64) -> (Chain, Vec<Arc<Ticket>>) {
        let mut chain = Chain::default();
        let mut tickets = Vec::new();
        for id in 1..=n {
            let s = spec(id);
            tickets.push(Arc::clone(&s.ticket));
            chain.push(s);
        }
        (chain, tickets)
    }

    fn outcomes(tickets: &[Arc<Ticket>]) -> Vec<Option<Result<(), SettleError>>> {
        tickets.iter().map(|t| t.outcome().clone()).collect()
    }

    #[test]
    fn entries_commit_in_order_and_a_rejection_fails_the_rest() {
        let (mut chain, tickets) = chain_of(3);
        chain.applied(1, true);
        chain.applied(2, false);
        assert_eq!(
            outcomes(&tickets),
            [
                Some(Ok(())),
                Some(Err(SettleError::Stale)),
                Some(Err(SettleError::Stale))
            ]
        );
        assert!(chain.head().is_none());
    }

    #[test]
    fn a_foreign_entry_fails_the_chain_and_a_failure_fails_what_follows() {
        let (mut chain, tickets) = chain_of(3);
        chain.failed(2, SettleError::LeadershipLost);
        assert_eq!(
            outcomes(&tickets)[1..],
            [
                Some(Err(SettleError::LeadershipLost)),
                Some(Err(SettleError::LeadershipLost))
            ]
        );
        assert!(
            tickets[0].outcome().is_none(),
            "older entries stay in flight"
        );
        chain.applied(99, true);
        assert_eq!(outcomes(&tickets)[0], Some(Err(SettleError::Stale)));
        // A rejected entry that is not ours leaves an empty chain alone.
        chain.applied(98, false);
    }

    #[test]
    fn a_stuck_chain_expires() {
        let (mut chain, tickets) = chain_of(2);
        chain.expire(Instant::now() - Duration::from_secs(60));
        assert!(chain.head().is_some(), "young entries stay");
        chain.expire(Instant::now() + Duration::from_secs(1));
        assert!(chain.head().is_none());
        assert!(tickets
            .iter()
            .all(|t| t.failure() == Some(SettleError::LeadershipLost)));
    }

    #[test]
    fn a_failed_newer_entry_does_not_wait_for_a_stuck_older_one() {
        let stuck = Arc::new(Ticket::default());
        let failed = Arc::new(Ticket::default());
        failed.resolve(Err(SettleError::DiskFull));
        touch(&stuck, false);
        touch(&failed, true);
        assert_eq!(settle(Duration::from_secs(10)), Err(SettleError::DiskFull));
    }

    #[test]
    fn settle_waits_for_the_outcome_and_forgets_it() {
        let t = Arc::new(Ticket::default());
        touch(&t, false);
        touch(&t, true);
        let t2 = Arc::clone(&t);
        let resolver = std::thread::spawn(move || t2.resolve(Err(SettleError::NotLeader)));
        assert_eq!(settle(Duration::from_secs(10)), Err(SettleError::NotLeader));
        resolver.join().unwrap();
        assert_eq!(settle(Duration::from_secs(10)), Ok(false), "nothing left");
        let pending = Arc::new(Ticket::default());
        touch(&pending, false);
        assert_eq!(
            settle(Duration::from_millis(10)),
            Err(SettleError::LeadershipLost),
            "no outcome in time is an unknown outcome"
        );
    }

    #[test]
    fn settled_wakes_when_every_ticket_resolves_and_stops_at_a_failure() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (older, newer) = (Arc::new(Ticket::default()), Arc::new(Ticket::default()));
        touch(&older, false);
        touch(&newer, true);
        let waiting = pending();
        assert!(waiting.wrote());
        let (o, n) = (Arc::clone(&older), Arc::clone(&newer));
        let resolver = std::thread::spawn(move || {
            n.resolve(Ok(()));
            o.resolve(Ok(()));
        });
        assert_eq!(rt.block_on(waiting.settled()), Ok(()));
        resolver.join().unwrap();

        let (stuck, failed) = (Arc::new(Ticket::default()), Arc::new(Ticket::default()));
        touch(&stuck, false);
        touch(&failed, false);
        let waiting = pending();
        let f = Arc::clone(&failed);
        let resolver = std::thread::spawn(move || f.resolve(Err(SettleError::Stale)));
        assert_eq!(
            rt.block_on(waiting.settled()),
            Err(SettleError::Stale),
            "a failed newest entry answers without waiting for a stuck older one"
        );
        resolver.join().unwrap();
    }
}
