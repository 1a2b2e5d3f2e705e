//! Each database's writer queue: statements that may write run one after
//! another, first come, first served.
//!
//! Whichever statement finds the queue idle starts one blocking thread that
//! runs every statement queued behind it, of any connection, back to back.
//! A burst of writes thus costs one thread hand-off instead of two per
//! statement (waking the next writer's task, which then wakes a blocking
//! thread), and the entries of the burst reach consensus together, so they
//! share one log write and one message to each follower.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dqlite_wire::error::SQLITE_BUSY;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::databases::{Databases, Unsettled};
use crate::gateway::internal;
use crate::sql::{ExecResult, Failure};

/// A statement to run with its connection locked.
pub(crate) type Statement = Box<dyn FnOnce(&Connection) -> Result<ExecResult, Failure> + Send>;

/// What a statement left: its result and what it wrote or read in flight.
type Outcome = (Result<ExecResult, Failure>, Box<dyn Unsettled>);

struct Job {
    conn: Arc<Mutex<Connection>>,
    run: Statement,
    /// Taken by whoever comes first: the runner, to run it, or the waiter,
    /// to give up on it; so a statement the client was told is BUSY never
    /// runs, and one that runs is always waited for.
    taken: Arc<AtomicBool>,
    reply: oneshot::Sender<Outcome>,
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
    /// SQLITE_BUSY. Returns the statement's result and what it left in
    /// flight, for the caller to wait on.
    pub(crate) async fn run(
        self: &Arc<Self>,
        databases: &Arc<dyn Databases>,
        conn: &Arc<Mutex<Connection>>,
        run: Statement,
        wait: Duration,
    ) -> Result<Outcome, Failure> {
        let taken = Arc::new(AtomicBool::new(false));
        let (reply, mut outcome) = oneshot::channel();
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
            Ok(done) => done.map_err(|_| gone()),
            Err(_) if !taken.swap(true, Ordering::AcqRel) => Err(Failure::new(
                SQLITE_BUSY,
                "database is locked: the writers queued ahead did not finish in time",
            )),
            // Already running: the client gets what it did.
            Err(_) => outcome.await.map_err(|_| gone()),
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
            let _ = job.reply.send((result, databases.unsettled()));
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
}
