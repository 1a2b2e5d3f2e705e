//! SQL execution on one SQLite connection. Everything here blocks and runs
//! on tokio's blocking threads, never on the async workers.

use std::sync::atomic::{AtomicBool, Ordering};

use dqlite_wire::error::{SQLITE_AUTH, SQLITE_BUSY, SQLITE_ERROR, SQLITE_RANGE};
use dqlite_wire::{Response, RowsWriter, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Batch, Connection, Statement};

/// A request that failed, as it goes back on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// SQLite (extended) or dqlite error code.
    pub code: u64,
    /// Message for the user.
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: u64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The FAILURE response.
    pub fn into_response(self) -> Response {
        Response::Failure {
            code: self.code,
            message: self.message,
        }
    }
}

/// The replicated store's code for a commit rejected because it was built
/// on a version another entry replaced (`dqlite_store::vfs::code::IOERR_STALE`).
/// It is IOERR-class only so that SQLite drops its page cache; nothing was
/// applied, so the client is told SQLITE_BUSY: retry the transaction.
pub const STORE_IOERR_STALE: i32 = 10 | (42 << 8);

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        match err {
            rusqlite::Error::SqliteFailure(e, _) if e.extended_code == STORE_IOERR_STALE => {
                Failure::new(
                    SQLITE_BUSY,
                    "database is locked: another transaction committed first and this one \
                     was not applied; retry it",
                )
            }
            // The client policy refused the statement: say which pragma
            // (SQLite's own message is a bare "not authorized").
            rusqlite::Error::SqliteFailure(e, _)
            | rusqlite::Error::SqlInputError { error: e, .. }
                if e.extended_code == SQLITE_AUTH as i32 =>
            {
                let message = crate::policy::take_refusal()
                    .map_or_else(|| "not authorized".to_owned(), |r| r.message());
                Failure::new(SQLITE_AUTH, message)
            }
            // SQLite's extended code and its own message, as dqlite sends.
            rusqlite::Error::SqliteFailure(e, msg) => Failure {
                code: e.extended_code as u64,
                message: msg.unwrap_or_else(|| e.to_string()),
            },
            // rusqlite adds the SQL and offset to compile errors; clients
            // expect sqlite3_errmsg's text alone.
            rusqlite::Error::SqlInputError { error, msg, .. } => Failure {
                code: error.extended_code as u64,
                message: msg,
            },
            other => Failure::new(SQLITE_ERROR, other.to_string()),
        }
    }
}

/// What PREPARE learned about a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The text of the one statement (the tail cut off).
    pub sql: String,
    /// Number of placeholders.
    pub params: u64,
    /// Byte offset of the tail, when the client asked for it.
    pub tail: Option<u64>,
    /// The statement cannot write (SQLite's `sqlite3_stmt_readonly`; true
    /// for BEGIN, COMMIT and ROLLBACK too).
    pub readonly: bool,
}

/// What a request may do to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write (on the leader).
    ReadWrite,
    /// Read only: a statement that may write is refused before it runs,
    /// with NOT_LEADER (a follower serving reads).
    ReadOnly,
}

/// What a statement that may write answers on a follower's read-only
/// session: NOT_LEADER, so clients retry it on the leader.
pub fn write_on_follower() -> Failure {
    Failure::new(
        dqlite_wire::error::SQLITE_IOERR_NOT_LEADER,
        "not leader: this connection reads from a follower (PRAGMA dqlite_read_mode); \
         writes go to the leader",
    )
}

fn check_access(stmt: &Statement<'_>, access: Access) -> Result<(), Failure> {
    if access == Access::ReadOnly && !stmt.readonly() {
        return Err(write_on_follower());
    }
    Ok(())
}

/// RESULT of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecResult {
    /// Last insert rowid of the connection.
    pub last_insert_id: i64,
    /// Rows changed by the last statement.
    pub rows_affected: u64,
}

impl ExecResult {
    fn of(conn: &Connection) -> Self {
        Self {
            last_insert_id: conn.last_insert_rowid(),
            rows_affected: conn.changes(),
        }
    }

    /// The RESULT response.
    pub fn into_response(self) -> Response {
        Response::Result {
            last_insert_id: self.last_insert_id as u64,
            rows_affected: self.rows_affected,
        }
    }
}

fn empty_statement() -> Failure {
    // dqlite answers code 0 here, which go-dqlite takes for a broken
    // connection and retries; a plain SQL error tells the user instead.
    Failure::new(SQLITE_ERROR, "empty statement")
}

fn nonempty_tail() -> Failure {
    Failure::new(SQLITE_ERROR, "nonempty statement tail")
}

/// Compiles the first statement of `sql`. Without `with_tail`, anything but
/// whitespace and comments after it is an error; with it, the offset of the
/// tail is returned (schema 1).
pub fn prepare(conn: &Connection, sql: &str, with_tail: bool) -> Result<Prepared, Failure> {
    let mut batch = Batch::new(conn, sql);
    let stmt = batch.next()?.ok_or_else(empty_statement)?;
    let params = stmt.parameter_count() as u64;
    let readonly = stmt.readonly();
    drop(stmt);
    if !with_tail {
        if batch.next()?.is_some() {
            return Err(nonempty_tail());
        }
        return Ok(Prepared {
            sql: sql.to_owned(),
            params,
            tail: None,
            readonly,
        });
    }
    let end = first_statement_end(conn, sql);
    Ok(Prepared {
        sql: sql[..end].to_owned(),
        params,
        tail: Some(end as u64),
        readonly,
    })
}

/// The byte offset just past the first complete statement of `sql`.
///
/// rusqlite does not expose SQLite's tail pointer, so each `;` outside a
/// quote or comment is tried in turn: the first prefix that compiles as
/// exactly one statement ends it (a `;` inside a trigger body does not).
fn first_statement_end(conn: &Connection, sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                let prefix = &sql[..=i];
                let mut batch = Batch::new(conn, prefix);
                if matches!(batch.next(), Ok(Some(_))) && matches!(batch.next(), Ok(None)) {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    sql.len()
}

fn bind(stmt: &mut Statement<'_>, params: &[Value]) -> Result<(), Failure> {
    for (i, v) in params.iter().enumerate() {
        let value = match v {
            Value::Integer(n) | Value::UnixTime(n) => ValueRef::Integer(*n),
            Value::Float(f) => ValueRef::Real(*f),
            Value::Text(s) | Value::Iso8601(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Null => ValueRef::Null,
            Value::Boolean(b) => ValueRef::Integer(i64::from(*b)),
        };
        stmt.raw_bind_parameter(i + 1, ToSqlOutput::Borrowed(value))?;
    }
    Ok(())
}

/// More values than placeholders: SQLite's own answer to binding past the
/// last one (what `sqlite3_bind_*` returns), which go-dqlite checks for.
fn too_many_params() -> Failure {
    Failure::new(SQLITE_RANGE, "column index out of range")
}

/// Binds every parameter of a single-statement request, after clearing
/// what an earlier execution bound; more values than placeholders is an
/// error before anything runs.
fn bind_all(stmt: &mut Statement<'_>, params: &[Value]) -> Result<(), Failure> {
    stmt.clear_bindings();
    if params.len() > stmt.parameter_count() {
        return Err(too_many_params());
    }
    bind(stmt, params)
}

fn run_to_completion(stmt: &mut Statement<'_>) -> Result<(), Failure> {
    let mut rows = stmt.raw_query();
    if rows.next()?.is_some() {
        return Err(Failure::new(
            SQLITE_ERROR,
            "rows yielded when none expected for EXEC request",
        ));
    }
    Ok(())
}

/// Runs one prepared statement (EXEC). Bindings never carry over from an
/// earlier execution: placeholders without a value are NULL.
pub fn exec(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    access: Access,
) -> Result<ExecResult, Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    check_access(&stmt, access)?;
    bind_all(&mut stmt, params)?;
    run_to_completion(&mut stmt)?;
    Ok(ExecResult::of(conn))
}

/// Runs every statement of `sql` in order (EXEC_SQL), handing the
/// parameters out in sequence, each statement taking as many as it has
/// placeholders, as current dqlite does.
///
/// Values left over after the last statement are an error raised before
/// that statement runs: the next statement is compiled ahead to learn
/// whether there is one. A statement that cannot compile yet (it uses a
/// table an earlier one creates) counts as one and is compiled again when
/// its turn comes.
pub fn exec_sql(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    access: Access,
) -> Result<ExecResult, Failure> {
    if one_statement(sql) {
        return exec(conn, sql, params, access);
    }
    let mut batch = Batch::new(conn, sql);
    let mut rest = params;
    let mut current = batch.next()?;
    while let Some(mut stmt) = current {
        check_access(&stmt, access)?;
        let n = stmt.parameter_count().min(rest.len());
        bind(&mut stmt, &rest[..n])?;
        rest = &rest[n..];
        let ahead = batch.next();
        if matches!(ahead, Ok(None)) && !rest.is_empty() {
            return Err(too_many_params());
        }
        run_to_completion(&mut stmt)?;
        drop(stmt);
        current = match ahead {
            Ok(next) => next,
            Err(_) => {
                // Whatever the early compile recorded is stale now.
                crate::policy::take_refusal();
                batch.next()?
            }
        };
    }
    if !rest.is_empty() {
        return Err(too_many_params());
    }
    Ok(ExecResult::of(conn))
}

/// Batches are closed once they reach this many bytes, header included,
/// as the C server does with one memory page.
pub const BATCH_BYTES: usize = 4096;

/// Where finished ROWS messages go. Returns false when nobody listens any
/// more (the client went away), which stops the query.
pub type Sink<'a> = dyn FnMut(Vec<u8>) -> bool + 'a;

/// Runs the first statement of `sql` as a query (QUERY_SQL), streaming
/// framed ROWS messages into `sink`.
pub fn query_sql(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    access: Access,
    stop: &AtomicBool,
    sink: &mut Sink<'_>,
    read_committed: &dyn Fn(bool),
) -> Result<(), Failure> {
    if one_statement(sql) {
        return query(conn, sql, params, access, stop, sink, read_committed);
    }
    let mut batch = Batch::new(conn, sql);
    let mut stmt = batch.next()?.ok_or_else(empty_statement)?;
    if batch.next()?.is_some() {
        return Err(nonempty_tail());
    }
    check_access(&stmt, access)?;
    bind_all(&mut stmt, params)?;
    stream_read(conn, &mut stmt, stop, sink, read_committed)
}

/// Whether `sql` is certainly one statement, so that EXEC_SQL and
/// QUERY_SQL may take it from the connection's statement cache as EXEC and
/// QUERY do, instead of compiling it at every request (go-dqlite's
/// `database/sql` driver sends every `Exec` and `Query` with arguments as
/// EXEC_SQL or QUERY_SQL). Two statements need a `;` between them, and
/// text without comments that is not blank holds at least one; anything
/// else takes the general path, which finds every statement.
fn one_statement(sql: &str) -> bool {
    let body = sql.trim_end();
    let body = body.strip_suffix(';').unwrap_or(body);
    !body.trim().is_empty() && !body.contains(';') && !body.contains("--") && !body.contains("/*")
}

/// Runs a prepared statement as a query (QUERY).
pub fn query(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    access: Access,
    stop: &AtomicBool,
    sink: &mut Sink<'_>,
    read_committed: &dyn Fn(bool),
) -> Result<(), Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    check_access(&stmt, access)?;
    bind_all(&mut stmt, params)?;
    stream_read(conn, &mut stmt, stop, sink, read_committed)
}

/// Streams a query's rows. A read-only statement outside an explicit
/// transaction has its read barrier (before it, or while it runs on a
/// leader that holds every entry of earlier terms), so it may read what is
/// committed instead of writes still in flight, and never waits for them
/// (`read_committed`, see [`crate::Databases::read_committed`]).
fn stream_read(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    stop: &AtomicBool,
    sink: &mut Sink<'_>,
    read_committed: &dyn Fn(bool),
) -> Result<(), Failure> {
    /// Switches it off again however the statement ends.
    struct Off<'a>(&'a dyn Fn(bool));
    impl Drop for Off<'_> {
        fn drop(&mut self) {
            (self.0)(false);
        }
    }
    read_committed(stmt.readonly() && conn.is_autocommit());
    let _off = Off(read_committed);
    stream(stmt, stop, sink)
}

/// How a column's declared type changes the wire type of its values
/// (§4 of the wire reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Plain,
    Time,
    Boolean,
}

fn column_kinds(stmt: &Statement<'_>) -> Vec<ColumnKind> {
    stmt.columns()
        .iter()
        .map(|c| match c.decl_type() {
            Some(t)
                if ["DATETIME", "DATE", "TIMESTAMP"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k)) =>
            {
                ColumnKind::Time
            }
            Some(t) if t.eq_ignore_ascii_case("BOOLEAN") => ColumnKind::Boolean,
            _ => ColumnKind::Plain,
        })
        .collect()
}

fn to_value(kind: ColumnKind, v: ValueRef<'_>) -> Value {
    let text = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match (kind, v) {
        (ColumnKind::Time, ValueRef::Integer(n)) => Value::UnixTime(n),
        (ColumnKind::Time, ValueRef::Text(t)) => Value::Iso8601(text(t)),
        (ColumnKind::Boolean, ValueRef::Integer(n)) => Value::Boolean(n != 0),
        // NULL stays NULL whatever the declared type (C dqlite sends false
        // and an empty ISO-8601 string, losing the difference).
        (_, ValueRef::Integer(n)) => Value::Integer(n),
        (_, ValueRef::Real(f)) => Value::Float(f),
        (_, ValueRef::Text(t)) => Value::Text(text(t)),
        (_, ValueRef::Blob(b)) => Value::Blob(b.to_vec()),
        (_, ValueRef::Null) => Value::Null,
    }
}

fn interrupted() -> Failure {
    Failure::new(9, "interrupted")
}

/// Steps `stmt`, cutting the result into ROWS messages of about
/// [`BATCH_BYTES`]. A step error after some batches were sent ends the
/// stream with a clean FAILURE (returned), never a FAILURE glued onto
/// partial row data as the C server sends.
fn stream(stmt: &mut Statement<'_>, stop: &AtomicBool, sink: &mut Sink<'_>) -> Result<(), Failure> {
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let kinds = column_kinds(stmt);
    let mut rows = stmt.raw_query();
    let mut buf = Vec::with_capacity(2 * BATCH_BYTES);
    let mut batch = RowsWriter::begin(&mut buf, &columns);
    let mut values = Vec::with_capacity(columns.len());
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        let Some(row) = rows.next()? else { break };
        values.clear();
        for (i, kind) in kinds.iter().enumerate() {
            values.push(to_value(*kind, row.get_ref(i)?));
        }
        batch.push(&values);
        if batch.len() >= BATCH_BYTES {
            batch.finish(true);
            let full = std::mem::replace(&mut buf, Vec::with_capacity(2 * BATCH_BYTES));
            if !sink(full) {
                return Err(interrupted());
            }
            batch = RowsWriter::begin(&mut buf, &columns);
        }
    }
    batch.finish(false);
    sink(buf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqlite_wire::{DecodeContext, Header, Rows};

    fn conn() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    fn exec(c: &Connection, sql: &str, params: &[Value]) -> Result<ExecResult, Failure> {
        super::exec(c, sql, params, Access::ReadWrite)
    }

    fn exec_sql(c: &Connection, sql: &str, params: &[Value]) -> Result<ExecResult, Failure> {
        super::exec_sql(c, sql, params, Access::ReadWrite)
    }

    #[test]
    fn a_read_only_session_refuses_writes_before_they_run() {
        let c = conn();
        exec_sql(&c, "CREATE TABLE t(a)", &[]).unwrap();
        let ro = Access::ReadOnly;
        for sql in [
            "INSERT INTO t VALUES (1)",
            "BEGIN; DELETE FROM t",
            "CREATE TABLE u(b)",
        ] {
            let err = super::exec_sql(&c, sql, &[], ro).unwrap_err();
            assert_eq!(err, write_on_follower(), "{sql}");
            if !c.is_autocommit() {
                exec_sql(&c, "ROLLBACK", &[]).unwrap();
            }
        }
        let err = super::exec(&c, "UPDATE t SET a = 2", &[], ro).unwrap_err();
        assert_eq!(err, write_on_follower());
        let stop = AtomicBool::new(false);
        let err = query_sql(
            &c,
            "INSERT INTO t VALUES (3) RETURNING a",
            &[],
            ro,
            &stop,
            &mut |_| true,
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(err, write_on_follower());
        // Nothing was written; reads and transaction control pass.
        super::exec_sql(&c, "BEGIN; SELECT * FROM t; COMMIT", &[], ro).unwrap();
        let rows = collect(&c, "SELECT count(*) FROM t", &[]).unwrap();
        assert_eq!(rows[0].rows[0][0], Value::Integer(0));
    }

    fn collect(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Rows>, Failure> {
        let mut out = Vec::new();
        let stop = AtomicBool::new(false);
        query_sql(
            conn,
            sql,
            params,
            Access::ReadWrite,
            &stop,
            &mut |bytes| {
                let header = Header::decode(bytes[..8].try_into().unwrap());
                match Response::decode(&header, &bytes[8..], DecodeContext::default()).unwrap() {
                    Response::Rows(r) => out.push(r),
                    other => panic!("unexpected {other:?}"),
                }
                true
            },
            &|_| {},
        )?;
        Ok(out)
    }

    #[test]
    fn only_a_read_only_query_outside_a_transaction_reads_committed_state() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (a)").unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let stop = AtomicBool::new(false);
        let run = |sql: &str| {
            query_sql(
                &c,
                sql,
                &[],
                Access::ReadWrite,
                &stop,
                &mut |_| true,
                &|on| asked.borrow_mut().push(on),
            )
            .unwrap();
            std::mem::take(&mut *asked.borrow_mut())
        };
        // Set for the statement, cleared after it.
        assert_eq!(run("SELECT * FROM t"), [true, false]);
        assert_eq!(run("INSERT INTO t VALUES (1) RETURNING a"), [false, false]);
        c.execute_batch("BEGIN").unwrap();
        assert_eq!(run("SELECT * FROM t"), [false, false]);
        c.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_stale_commit_is_busy_for_the_client() {
        let err = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(STORE_IOERR_STALE),
            Some("disk I/O error".into()),
        );
        let f = Failure::from(err);
        assert_eq!(f.code, SQLITE_BUSY);
        assert!(f.message.contains("not applied"), "{}", f.message);
    }

    #[test]
    fn prepare_reports_params_and_rejects_a_tail() {
        let c = conn();
        let p = prepare(&c, "SELECT ?, ? -- trailing comment\n", false).unwrap();
        assert_eq!(p.params, 2);
        assert_eq!(
            prepare(&c, "SELECT 1; SELECT 2", false),
            Err(nonempty_tail())
        );
        assert_eq!(prepare(&c, "   ", false), Err(empty_statement()));
    }

    #[test]
    fn prepare_with_tail_reports_the_offset() {
        let c = conn();
        let p = prepare(&c, "SELECT 1; SELECT 2", true).unwrap();
        assert_eq!(p.tail, Some(9));
        assert_eq!(p.sql, "SELECT 1;");
        let p = prepare(&c, "SELECT ';'; SELECT 2", true).unwrap();
        assert_eq!(p.tail, Some(11));
        let p = prepare(&c, "SELECT 1", true).unwrap();
        assert_eq!(p.tail, Some(8));
    }

    #[test]
    fn trigger_bodies_do_not_end_the_first_statement() {
        let c = conn();
        c.execute_batch("CREATE TABLE t(x); CREATE TABLE u(y)")
            .unwrap();
        let sql =
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); END; SELECT 1";
        let p = prepare(&c, sql, true).unwrap();
        assert_eq!(&sql[p.tail.unwrap() as usize..], " SELECT 1");
    }

    #[test]
    fn only_text_that_is_certainly_one_statement_counts_as_one() {
        for sql in ["SELECT 1", "INSERT INTO t VALUES (?);", "  SELECT 2 ;  \n"] {
            assert!(one_statement(sql), "{sql}");
        }
        for sql in [
            "",
            " ; ",
            "-- nothing",
            "SELECT 1 -- and a comment",
            "SELECT 1 /* x */",
            "SELECT 1; SELECT 2",
            "SELECT ';'",
        ] {
            assert!(!one_statement(sql), "{sql}");
        }
    }

    #[test]
    fn one_statement_of_exec_sql_or_query_sql_is_compiled_once() {
        use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
        use std::sync::atomic::AtomicUsize;
        // SQLite asks the authorizer while compiling, never while running.
        static INSERTS: AtomicUsize = AtomicUsize::new(0);
        static SELECTS: AtomicUsize = AtomicUsize::new(0);
        let c = conn();
        exec_sql(&c, "CREATE TABLE t(a)", &[]).unwrap();
        c.authorizer(Some(|ctx: AuthContext<'_>| {
            match ctx.action {
                AuthAction::Insert { .. } => INSERTS.fetch_add(1, Ordering::Relaxed),
                AuthAction::Select => SELECTS.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            Authorization::Allow
        }));
        for i in 0..3 {
            exec_sql(&c, "INSERT INTO t VALUES (?); ", &[Value::Integer(i)]).unwrap();
            let rows = collect(&c, "SELECT a FROM t WHERE a = ?", &[Value::Integer(i)]).unwrap();
            assert_eq!(rows[0].rows, vec![vec![Value::Integer(i)]]);
        }
        assert_eq!(INSERTS.load(Ordering::Relaxed), 1);
        assert_eq!(SELECTS.load(Ordering::Relaxed), 1);
        // Several statements are compiled at every request.
        for _ in 0..2 {
            exec_sql(
                &c,
                "INSERT INTO t VALUES (7); INSERT INTO t VALUES (8)",
                &[],
            )
            .unwrap();
        }
        assert_eq!(INSERTS.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn exec_sql_hands_params_out_in_order() {
        let c = conn();
        exec_sql(&c, "CREATE TABLE t(a, b)", &[]).unwrap();
        let r = exec_sql(
            &c,
            "INSERT INTO t VALUES (?, 1); INSERT INTO t VALUES (?, 2)",
            &[Value::Integer(10), Value::Integer(20)],
        )
        .unwrap();
        assert_eq!(r.last_insert_id, 2);
        let rows = collect(&c, "SELECT a, b FROM t ORDER BY b", &[]).unwrap();
        assert_eq!(
            rows[0].rows,
            vec![
                vec![Value::Integer(10), Value::Integer(1)],
                vec![Value::Integer(20), Value::Integer(2)]
            ]
        );
    }

    #[test]
    fn exec_of_a_query_fails_and_too_many_params_fail() {
        let c = conn();
        assert_eq!(exec(&c, "SELECT 1", &[]).unwrap_err().code, SQLITE_ERROR);
        let err = exec(&c, "SELECT ?", &[Value::Null, Value::Null]).unwrap_err();
        assert_eq!(err, too_many_params());
        assert_eq!(err.code, SQLITE_RANGE);
        assert_eq!(err.message, "column index out of range");
    }

    #[test]
    fn leftover_params_fail_exec_sql_before_the_last_statement_runs() {
        let c = conn();
        exec_sql(&c, "CREATE TABLE t(a)", &[]).unwrap();
        let two = [Value::Integer(1), Value::Integer(2)];
        assert_eq!(
            exec_sql(&c, "INSERT INTO t VALUES (?)", &two),
            Err(too_many_params())
        );
        assert_eq!(
            exec_sql(&c, "INSERT INTO t VALUES (1)", &two[..1]),
            Err(too_many_params())
        );
        let rows = collect(&c, "SELECT count(*) FROM t", &[]).unwrap();
        assert_eq!(rows[0].rows, vec![vec![Value::Integer(0)]]);
        // A statement that compiles only after an earlier one ran still
        // gets its values.
        exec_sql(&c, "CREATE TABLE u(b); INSERT INTO u VALUES (?)", &two[..1]).unwrap();
        let rows = collect(&c, "SELECT b FROM u", &[]).unwrap();
        assert_eq!(rows[0].rows, vec![vec![Value::Integer(1)]]);
        assert_eq!(
            collect(&c, "SELECT ?", &two).unwrap_err(),
            too_many_params()
        );
    }

    #[test]
    fn bindings_do_not_carry_over() {
        let c = conn();
        exec_sql(&c, "CREATE TABLE t(a)", &[]).unwrap();
        exec(&c, "INSERT INTO t VALUES (?)", &[Value::Integer(5)]).unwrap();
        exec(&c, "INSERT INTO t VALUES (?)", &[]).unwrap();
        let rows = collect(&c, "SELECT a FROM t", &[]).unwrap();
        assert_eq!(
            rows[0].rows,
            vec![vec![Value::Integer(5)], vec![Value::Null]]
        );
    }

    #[test]
    fn large_results_are_cut_into_batches() {
        let c = conn();
        let rows = collect(
            &c,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) SELECT i, 'row' FROM n",
            &[],
        )
        .unwrap();
        assert!(rows.len() > 10, "{} batches", rows.len());
        assert!(rows[..rows.len() - 1].iter().all(|r| r.more));
        assert!(!rows.last().unwrap().more);
        let total: usize = rows.iter().map(|r| r.rows.len()).sum();
        assert_eq!(total, 5000);
    }

    #[test]
    fn declared_types_map_to_time_and_boolean_and_null_stays_null() {
        let c = conn();
        exec_sql(&c, "CREATE TABLE t(ts DATETIME, d date, ok BOOLEAN)", &[]).unwrap();
        exec_sql(
            &c,
            "INSERT INTO t VALUES (100, '2020-01-01', 1), (NULL, NULL, NULL)",
            &[],
        )
        .unwrap();
        let rows = collect(&c, "SELECT ts, d, ok FROM t", &[]).unwrap();
        assert_eq!(
            rows[0].rows,
            vec![
                vec![
                    Value::UnixTime(100),
                    Value::Iso8601("2020-01-01".into()),
                    Value::Boolean(true)
                ],
                vec![Value::Null, Value::Null, Value::Null],
            ]
        );
    }

    #[test]
    fn a_step_error_is_a_clean_failure() {
        let c = conn();
        let err = collect(&c, "SELECT abs(-9223372036854775807 - 1)", &[]).unwrap_err();
        assert_eq!(err.code, SQLITE_ERROR);
        assert!(err.message.contains("integer overflow"), "{}", err.message);
    }

    #[test]
    fn a_stopped_query_ends_early() {
        let c = conn();
        let stop = AtomicBool::new(false);
        let mut batches = 0;
        let err = query_sql(
            &c,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n",
            &[],
            Access::ReadWrite,
            &stop,
            &mut |_| {
                batches += 1;
                if batches == 3 {
                    stop.store(true, Ordering::Relaxed);
                }
                true
            },
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(err, interrupted());
        assert_eq!(batches, 3);
    }
}
