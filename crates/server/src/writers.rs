//! Each database's writer queue: statements that may write run one after
//! another, first come, first served.
//!
//! Whichever statement finds the queue idle starts one blocking thread that
//! runs every statement queued behind it, of any connection, back to back.
//! A burst of writes thus costs one thread hand-off instead of two per
//! statement (waking the next writer's task, which then wakes a blocking
//! thread), and the entries of the burst reach consensus together, so they
//! share one log write and one message to each follower.
//!
//! The waiting task is woken once per statement, when what the statement
//! wrote or read has committed: the runner polls that commit with the
//! waiter's waker instead of waking it to do so (which would wake it twice:
//! statement done, then commit).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dqlite_wire::error::SQLITE_BUSY;
use rusqlite::Connection;

use crate::databases::{BoxFuture, Databases};
use crate::gateway::internal;
use crate::sql::{ExecResult, Failure};

/// A statement to run with its connection locked.
pub(crate) type Statement = Box<dyn FnOnce(&Connection) -> Result<ExecResult, Failure> + Send>;

/// A statement's result, and whether everything it wrote or read
/// committed (and whether it committed an entry of its own).
pub(crate) type Outcome = (Result<ExecResult, Failure>, Result<bool, Failure>);

struct Job {
    conn: Arc<Mutex<Connection>>,
    run: Statement,
    /// Taken by whoever comes first: the runner, to run it, or the waiter,
    /// to give up on it; so a statement the client was told is BUSY never
    /// runs, and one that runs is always waited for.
    taken: Arc<AtomicBool>,
    reply: Replier,
}

/// Between a statement's runner and its waiter.
#[derive(Default)]
struct Slot {
    /// The statement's result while its commit is awaited.
    result: Option<Result<ExecResult, Failure>>,
    /// The commit of what it wrote or read.
    settling: Option<BoxFuture<'static, Result<bool, Failure>>>,
    /// Everything, once known.
    done: Option<Outcome>,
    /// The waiter's waker, until the runner takes it.
    waker: Option<Waker>,
    /// The runner handed over the result.
    sent: bool,
    /// The runner went away without a result.
    gone: bool,
}

fn lock_slot(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // Only moves of values happen under the lock.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runner's end of a [`Slot`].
struct Replier(Arc<Mutex<Slot>>);

impl Replier {
    /// Hands over the statement's result and its commit. If the waiter is
    /// already waiting, the commit is polled with its waker: the waiter is
    /// woken once, by the commit (or now, if nothing is in flight).
    fn send(
        self,
        result: Result<ExecResult, Failure>,
        mut settling: BoxFuture<'static, Result<bool, Failure>>,
    ) {
        let mut slot = lock_slot(&self.0);
        slot.sent = true;
        let Some(waker) = slot.waker.take() else {
            slot.result = Some(result);
            slot.settling = Some(settling);
            return;
        };
        match settling.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(settled) => {
                slot.done = Some((result, settled));
                drop(slot);
                waker.wake();
            }
            Poll::Pending => {
                slot.result = Some(result);
                slot.settling = Some(settling);
            }
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        let mut slot = lock_slot(&self.0);
        if !slot.sent {
            slot.gone = true;
            if let Some(waker) = slot.waker.take() {
                drop(slot);
                waker.wake();
            }
        }
    }
}

/// The waiter's end of a [`Slot`]: the statement's outcome once its
/// commit is known, or `None` if the runner went away.
struct Waiting(Arc<Mutex<Slot>>);

impl Future for Waiting {
    type Output = Option<Outcome>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock_slot(&self.0);
        if let Some(done) = slot.done.take() {
            return Poll::Ready(Some(done));
        }
        if let Some(settling) = slot.settling.as_mut() {
            let settled = std::task::ready!(settling.as_mut().poll(cx));
            slot.settling = None;
            return match slot.result.take() {
                Some(result) => Poll::Ready(Some((result, settled))),
                None => Poll::Ready(None),
            };
        }
        if slot.gone {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// A blocking thread is running the queue.
    running: bool,
}

/// One database's writer queue.
#[derive(Default)]
pub(crate) struct Writers {
    queue: Mutex<Queue>,
}

impl Writers {
    /// Only pushes and pops happen under the lock, so a poisoned lock
    /// still holds a consistent queue.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `run` on `conn` once the statements queued ahead have run. If
    /// it has not started after `wait`, it never will and the answer is
    /// SQLITE_BUSY. Returns the statement's result once what it wrote or
    /// read has committed, with the outcome of that commit.
    pub(crate) async fn run(
        self: &Arc<Self>,
        databases: &Arc<dyn Databases>,
        conn: &Arc<Mutex<Connection>>,
        run: Statement,
        wait: Duration,
    ) -> Result<Outcome, Failure> {
        let taken = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(Mutex::new(Slot::default()));
        let reply = Replier(Arc::clone(&slot));
        let mut outcome = Waiting(slot);
        let start = {
            let mut queue = self.lock();
            queue.jobs.push_back(Job {
                conn: Arc::clone(conn),
                run,
                taken: Arc::clone(&taken),
                reply,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            let writers = Arc::clone(self);
            let databases = Arc::clone(databases);
            tokio::task::spawn_blocking(move || writers.drain(databases.as_ref()));
        }
        let gone = || internal("the writer queue stopped");
        match tokio::time::timeout(wait, &mut outcome).await {
            Ok(done) => done.ok_or_else(gone),
            Err(_) if !taken.swap(true, Ordering::AcqRel) => Err(Failure::new(
                SQLITE_BUSY,
                "database is locked: the writers queued ahead did not finish in time",
            )),
            // Already running: the client gets what it did.
            Err(_) => outcome.await.ok_or_else(gone),
        }
    }

    /// Runs queued statements until the queue is empty.
    fn drain(&self, databases: &dyn Databases) {
        loop {
            let job = {
                let mut queue = self.lock();
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.running = false;
                        return;
                    }
                }
            };
            if job.taken.swap(true, Ordering::AcqRel) {
                continue;
            }
            let result = match job.conn.lock() {
                // A panic must not stop the queue for every later writer.
                Ok(conn) => catch_unwind(AssertUnwindSafe(|| (job.run)(&conn)))
                    .unwrap_or_else(|_| Err(internal("the statement panicked"))),
                Err(_) => Err(internal("connection lock poisoned")),
            };
            // Whoever waited may have gone (connection closed): fine.
            job.reply.send(result, databases.unsettled().settled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::databases::LocalDatabases;
    use crate::sql::ExecResult;

    fn setup() -> (
        tempfile::TempDir,
        Arc<dyn Databases>,
        Vec<Arc<Mutex<Connection>>>,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let databases: Arc<dyn Databases> = Arc::new(LocalDatabases::new(
            dir.path().to_path_buf(),
            Duration::from_secs(1),
        ));
        let conns: Vec<_> = (0..4)
            .map(|_| Arc::new(Mutex::new(databases.open("t.db").expect("open"))))
            .collect();
        conns[0]
            .lock()
            .expect("lock")
            .execute_batch("CREATE TABLE t (n INTEGER)")
            .expect("create");
        (dir, databases, conns)
    }

    fn insert(n: i64) -> Statement {
        Box::new(move |c: &Connection| {
            c.execute("INSERT INTO t VALUES (?)", [n])
                .map(|_| ExecResult {
                    last_insert_id: c.last_insert_rowid(),
                    rows_affected: 1,
                })
                .map_err(Failure::from)
        })
    }

    fn rows(conn: &Arc<Mutex<Connection>>) -> Vec<i64> {
        let c = conn.lock().expect("lock");
        let mut stmt = c
            .prepare("SELECT n FROM t ORDER BY rowid")
            .expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    /// A statement that holds the queue until `release` sends.
    fn gated(n: i64) -> (Statement, std::sync::mpsc::Sender<()>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let run: Statement = Box::new(move |c: &Connection| {
            let _ = gate.recv_timeout(Duration::from_secs(10));
            insert(n)(c)
        });
        (run, release)
    }

    fn spawn_run(
        writers: &Arc<Writers>,
        databases: &Arc<dyn Databases>,
        conn: &Arc<Mutex<Connection>>,
        run: Statement,
    ) -> tokio::task::JoinHandle<Result<Outcome, Failure>> {
        let (w, d, c) = (Arc::clone(writers), Arc::clone(databases), Arc::clone(conn));
        tokio::spawn(async move { w.run(&d, &c, run, Duration::from_secs(10)).await })
    }

    /// Waits until a statement runs and exactly `n` wait behind it.
    async fn until_queued(writers: &Writers, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(&*writers.lock(), q if q.running && q.jobs.len() == n) {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_of_many_connections_run_in_arrival_order() {
        let (_dir, databases, conns) = setup();
        let writers = Arc::new(Writers::default());
        let (first, release) = gated(0);
        let mut tasks = vec![spawn_run(&writers, &databases, &conns[0], first)];
        until_queued(&writers, 0).await;
        for n in 1..40 {
            let conn = &conns[n as usize % conns.len()];
            tasks.push(spawn_run(&writers, &databases, conn, insert(n)));
            until_queued(&writers, n as usize).await;
        }
        release.send(()).expect("release");
        for task in tasks {
            let (result, _) = task.await.expect("task").expect("queued");
            result.expect("inserted");
        }
        assert_eq!(rows(&conns[0]), (0..40).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_that_never_got_its_turn_is_busy_and_never_runs() {
        let (_dir, databases, conns) = setup();
        let writers = Arc::new(Writers::default());
        let (slow, release) = gated(1);
        let first = spawn_run(&writers, &databases, &conns[0], slow);
        until_queued(&writers, 0).await;
        let busy = writers
            .run(&databases, &conns[1], insert(2), Duration::from_millis(50))
            .await;
        let code = busy.err().map(|f| f.into_response());
        assert!(
            matches!(
                code,
                Some(dqlite_wire::Response::Failure {
                    code: SQLITE_BUSY,
                    ..
                })
            ),
            "{code:?}"
        );
        release.send(()).expect("release");
        let (result, _) = first.await.expect("task").expect("queued");
        result.expect("first inserted");
        // A later statement runs after the skipped one would have.
        let (result, _) = writers
            .run(&databases, &conns[2], insert(3), Duration::from_secs(10))
            .await
            .expect("queued");
        result.expect("third inserted");
        assert_eq!(rows(&conns[0]), vec![1, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_statement_fails_alone() {
        let (_dir, databases, conns) = setup();
        let writers = Arc::new(Writers::default());
        let boom: Statement = Box::new(|_: &Connection| panic!("statement bug"));
        let (result, _) = writers
            .run(&databases, &conns[0], boom, Duration::from_secs(10))
            .await
            .expect("queued");
        assert!(result.is_err());
        let (result, _) = writers
            .run(&databases, &conns[1], insert(7), Duration::from_secs(10))
            .await
            .expect("queued");
        result.expect("inserted after the panic");
        assert_eq!(rows(&conns[0]), vec![7]);
    }

    /// Counts its wakes.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn ok() -> Result<ExecResult, Failure> {
        Ok(ExecResult {
            last_insert_id: 1,
            rows_affected: 1,
        })
    }

    #[test]
    fn the_waiter_is_woken_once_by_the_commit_not_by_the_statement() {
        let counter = Arc::new(Counter(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let slot = Arc::new(Mutex::new(Slot::default()));
        let mut waiting = Waiting(Arc::clone(&slot));
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        // The statement ran; its commit is still in flight.
        let (commit, committed) = tokio::sync::oneshot::channel::<()>();
        Replier(slot).send(
            ok(),
            Box::pin(async move {
                let _ = committed.await;
                Ok(true)
            }),
        );
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "woken by the statement"
        );
        commit.send(()).expect("commit");
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "not woken by the commit"
        );
        match Pin::new(&mut waiting).poll(&mut cx) {
            Poll::Ready(Some((Ok(_), Ok(true)))) => {}
            other => panic!("{:?}", other.map(|o| o.map(|(_, s)| s.is_ok()))),
        }
        // Nothing in flight: woken at once, ready.
        let slot = Arc::new(Mutex::new(Slot::default()));
        let mut waiting = Waiting(Arc::clone(&slot));
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        Replier(slot).send(ok(), Box::pin(std::future::ready(Ok(false))));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            Pin::new(&mut waiting).poll(&mut cx),
            Poll::Ready(Some((Ok(_), Ok(false))))
        ));
        // A runner that goes away without a result wakes the waiter too.
        let slot = Arc::new(Mutex::new(Slot::default()));
        let mut waiting = Waiting(Arc::clone(&slot));
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        drop(Replier(slot));
        assert_eq!(counter.0.load(Ordering::SeqCst), 3);
        assert!(matches!(
            Pin::new(&mut waiting).poll(&mut cx),
            Poll::Ready(None)
        ));
    }
}
