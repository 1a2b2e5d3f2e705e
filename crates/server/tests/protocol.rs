//! The server over real TCP on 127.0.0.1, spoken to byte by byte with the
//! wire codec: every request type, and bad input of every kind (DESIGN.md
//! invariant 6: a FAILURE or a closed connection, never a disturbed node).

use std::time::Duration;

use dqlite_wire::error::*;
use dqlite_wire::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

struct Node {
    addr: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut config = dqlite_server::ServerConfig::new(1, "127.0.0.1:0", dir.path());
        config.max_message_size = 1 << 20;
        let server = dqlite_server::Server::bind(config).await.unwrap();
        let addr = server.address().to_string();
        let (stop, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Node {
            addr,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.task.take().unwrap())
            .await
            .expect("server stops in time")
            .unwrap();
    }
}

struct Conn {
    stream: TcpStream,
    ctx: DecodeContext,
}

impl Conn {
    async fn raw(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        Conn {
            stream,
            ctx: DecodeContext::default(),
        }
    }

    async fn new(addr: &str) -> Conn {
        let mut c = Conn::raw(addr).await;
        c.bytes(&PROTOCOL_VERSION.to_le_bytes()).await;
        c
    }

    async fn open(addr: &str, db: &str) -> Conn {
        let mut c = Conn::new(addr).await;
        let resp = c
            .call(Request::Open {
                name: db.into(),
                flags: 0,
                vfs: "volatile".into(),
            })
            .await;
        assert_eq!(resp, Response::Db { id: 0 });
        c
    }

    async fn bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.unwrap();
    }

    async fn send(&mut self, req: &Request) {
        let mut out = Vec::new();
        req.encode(&mut out);
        self.bytes(&out).await;
    }

    /// The next response, or None if the server closed the connection.
    async fn recv(&mut self) -> Option<Response> {
        let mut head = [0u8; 8];
        match tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no response within {TIMEOUT:?}"),
        }
        let header = Header::decode(head);
        let mut body = vec![0u8; header.body_len() as usize];
        tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        Some(Response::decode(&header, &body, self.ctx).unwrap())
    }

    async fn call(&mut self, req: Request) -> Response {
        self.send(&req).await;
        self.recv().await.expect("a response")
    }

    async fn exec(&mut self, sql: &str) -> Response {
        self.call(Request::ExecSql {
            db: 0,
            sql: sql.into(),
            params: vec![],
        })
        .await
    }

    /// All rows of a query, across batches.
    async fn query(
        &mut self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Vec<Value>>, (u64, String)> {
        self.send(&Request::QuerySql {
            db: 0,
            sql: sql.into(),
            params,
        })
        .await;
        let mut rows = Vec::new();
        loop {
            match self.recv().await.expect("a response") {
                Response::Rows(batch) => {
                    rows.extend(batch.rows);
                    if !batch.more {
                        return Ok(rows);
                    }
                }
                Response::Failure { code, message } => return Err((code, message)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// True once the server has closed the connection.
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(TIMEOUT, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn failure_code(r: &Response) -> u64 {
    match r {
        Response::Failure { code, .. } => *code,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn frame(kind: u8, schema: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Header {
        words: (body.len() / 8) as u32,
        kind,
        schema,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(body);
    out
}

async fn still_serves(addr: &str) {
    let mut c = Conn::open(addr, "health").await;
    assert_eq!(
        c.query("SELECT 1", vec![]).await.unwrap(),
        vec![vec![Value::Integer(1)]]
    );
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "types").await;
    c.exec("CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n, ts DATETIME, ok BOOLEAN)")
        .await;
    let row = vec![
        Value::Integer(i64::MIN),
        Value::Float(-1.5e300),
        Value::Text("héllo wörld ✓ 日本".into()),
        Value::Blob(vec![0, 255, 16, 0]),
        Value::Null,
        Value::Iso8601("2024-01-02 03:04:05+00:00".into()),
        Value::Boolean(true),
    ];
    let resp = c
        .call(Request::ExecSql {
            db: 0,
            sql: "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)".into(),
            params: row.clone(),
        })
        .await;
    assert_eq!(
        resp,
        Response::Result {
            last_insert_id: 1,
            rows_affected: 1
        }
    );
    c.exec(&format!(
        "INSERT INTO t (i, f, ts) VALUES ({}, 0.0, 1700000000)",
        i64::MAX
    ))
    .await;
    let rows = c
        .query("SELECT * FROM t ORDER BY rowid", vec![])
        .await
        .unwrap();
    assert_eq!(rows[0], row);
    assert_eq!(rows[1][0], Value::Integer(i64::MAX));
    assert_eq!(rows[1][5], Value::UnixTime(1_700_000_000));
    // A NULL BOOLEAN arrives as NULL (C dqlite sends false).
    assert_eq!(rows[1][6], Value::Null);
    node.stop().await;
}

#[tokio::test]
async fn a_thousand_parameters_use_schema_one() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "params").await;
    c.exec("CREATE TABLE t (v INTEGER)").await;
    let params: Vec<Value> = (1..=1000).map(Value::Integer).collect();
    let sql = format!("INSERT INTO t VALUES {}", vec!["(?)"; 1000].join(", "));
    let resp = c
        .call(Request::ExecSql {
            db: 0,
            sql,
            params: params.clone(),
        })
        .await;
    assert!(
        matches!(
            resp,
            Response::Result {
                rows_affected: 1000,
                ..
            }
        ),
        "{resp:?}"
    );
    let sum_sql = format!("SELECT {}", vec!["?"; 1000].join(" + "));
    let rows = c.query(&sum_sql, params).await.unwrap();
    assert_eq!(rows, vec![vec![Value::Integer(500_500)]]);
    let rows = c
        .query("SELECT count(*), sum(v) FROM t", vec![])
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![Value::Integer(1000), Value::Integer(500_500)]]
    );
    node.stop().await;
}

#[tokio::test]
async fn prepared_statements_take_the_lowest_free_id() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "stmts").await;
    c.exec("CREATE TABLE t (v)").await;
    let prep = |sql: &str| Request::Prepare {
        db: 0,
        sql: sql.into(),
        with_tail: false,
    };
    let ids: Vec<Response> = vec![
        c.call(prep("INSERT INTO t VALUES (?)")).await,
        c.call(prep("SELECT v FROM t")).await,
    ];
    assert!(matches!(
        ids[0],
        Response::Stmt {
            id: 0,
            params: 1,
            ..
        }
    ));
    assert!(matches!(
        ids[1],
        Response::Stmt {
            id: 1,
            params: 0,
            ..
        }
    ));
    let r = c
        .call(Request::Exec {
            db: 0,
            stmt: 0,
            params: vec![Value::Integer(9)],
        })
        .await;
    assert!(matches!(
        r,
        Response::Result {
            rows_affected: 1,
            ..
        }
    ));
    c.send(&Request::Query {
        db: 0,
        stmt: 1,
        params: vec![],
    })
    .await;
    match c.recv().await.unwrap() {
        Response::Rows(r) => assert_eq!(r.rows, vec![vec![Value::Integer(9)]]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.call(Request::Finalize { db: 0, stmt: 0 }).await,
        Response::Empty
    );
    let again = c.call(Request::Finalize { db: 0, stmt: 0 }).await;
    assert_eq!(failure_code(&again), SQLITE_NOTFOUND);
    assert!(matches!(
        c.call(prep("SELECT 2")).await,
        Response::Stmt { id: 0, .. }
    ));
    let tail = c.call(prep("SELECT 1; SELECT 2")).await;
    assert_eq!(failure_code(&tail), SQLITE_ERROR);
    let syntax = c.call(prep("SELEC 1")).await;
    assert!(
        matches!(&syntax, Response::Failure { code: 1, message } if message.contains("syntax error"))
    );
    node.stop().await;
}

#[tokio::test]
async fn session_errors_keep_the_connection_usable() {
    let node = Node::start().await;
    let mut c = Conn::new(&node.addr).await;
    let no_db = c.exec("SELECT 1").await;
    assert_eq!(failure_code(&no_db), SQLITE_NOTFOUND);
    let open = Request::Open {
        name: "s".into(),
        flags: 0,
        vfs: "volatile".into(),
    };
    assert_eq!(c.call(open.clone()).await, Response::Db { id: 0 });
    assert_eq!(failure_code(&c.call(open).await), SQLITE_BUSY);
    c.exec("CREATE TABLE t (k PRIMARY KEY)").await;
    c.exec("INSERT INTO t VALUES (1)").await;
    let dup = c.exec("INSERT INTO t VALUES (1)").await;
    assert_eq!(failure_code(&dup), 1555, "SQLITE_CONSTRAINT_PRIMARYKEY");
    let overflow = c
        .query("SELECT abs(-9223372036854775807 - 1)", vec![])
        .await;
    assert_eq!(overflow.unwrap_err().0, SQLITE_ERROR);
    assert_eq!(
        c.query("SELECT count(*) FROM t", vec![]).await.unwrap()[0][0],
        Value::Integer(1)
    );
    node.stop().await;
}

#[tokio::test]
async fn admin_requests() {
    let node = Node::start().await;
    let mut c = Conn::new(&node.addr).await;
    let me = Response::Server {
        id: 1,
        address: node.addr.clone(),
    };
    assert_eq!(c.call(Request::Leader).await, me);
    assert_eq!(
        c.call(Request::Client { id: 0 }).await,
        Response::Welcome {
            heartbeat_timeout: 15_000
        }
    );
    for format in [0, 1] {
        c.ctx.cluster_format = format;
        let resp = c.call(Request::Cluster { format }).await;
        assert_eq!(
            resp,
            Response::Servers {
                format,
                nodes: vec![NodeInfo {
                    id: 1,
                    address: node.addr.clone(),
                    role: Role::Voter,
                    ..Default::default()
                }]
            }
        );
    }
    assert_eq!(
        failure_code(&c.call(Request::Cluster { format: 2 }).await),
        DQLITE_PARSE
    );
    assert_eq!(c.call(Request::Weight { weight: 7 }).await, Response::Empty);
    assert_eq!(
        c.call(Request::Describe { format: 0 }).await,
        Response::Metadata {
            failure_domain: 0,
            weight: 7
        }
    );
    // C dqlite sends two responses here and aborts; one FAILURE is right.
    assert_eq!(
        failure_code(&c.call(Request::Describe { format: 1 }).await),
        SQLITE_PROTOCOL
    );
    assert_eq!(
        failure_code(&c.call(Request::Heartbeat { timestamp: 1 }).await),
        DQLITE_PARSE
    );
    let add = c
        .call(Request::Add {
            id: 2,
            address: "127.0.0.1:1".into(),
        })
        .await;
    assert!(
        matches!(&add, Response::Failure { code: 1, message } if message.contains("single-node"))
    );
    assert_eq!(c.call(Request::Interrupt { db: 0 }).await, Response::Empty);
    assert_eq!(c.call(Request::Leader).await, me, "still usable");
    node.stop().await;
}

#[tokio::test]
async fn legacy_handshake_changes_only_the_leader_answer() {
    let node = Node::start().await;
    let mut c = Conn::raw(&node.addr).await;
    c.bytes(&PROTOCOL_VERSION_LEGACY.to_le_bytes()).await;
    c.ctx.legacy = true;
    assert_eq!(
        c.call(Request::Leader).await,
        Response::ServerLegacy {
            address: node.addr.clone()
        }
    );
    node.stop().await;
}

#[tokio::test]
async fn dump_returns_a_usable_image() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "dumped.db").await;
    c.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('kept')")
        .await;
    let missing = c
        .call(Request::Dump {
            name: "nope".into(),
        })
        .await;
    assert_eq!(failure_code(&missing), DQLITE_NOTFOUND);
    let Response::Files(files) = c
        .call(Request::Dump {
            name: "dumped.db".into(),
        })
        .await
    else {
        panic!("expected files");
    };
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].name, "dumped.db");
    assert_eq!(files[1].name, "dumped.db-wal");
    assert!(files[1].data.is_empty());
    assert!(files[0].data.starts_with(b"SQLite format 3\0"));
    assert_eq!(files[0].data.len() % 8, 0);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("restored.db");
    std::fs::write(&path, &files[0].data).unwrap();
    let db = rusqlite_check(&path);
    assert_eq!(db, "kept");
    node.stop().await;
}

fn rusqlite_check(path: &std::path::Path) -> String {
    // The server crate depends on rusqlite; use it to read the image back.
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn interrupt_stops_a_long_query_and_the_session_goes_on() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "interrupt").await;
    c.send(&Request::QuerySql {
        db: 0,
        sql: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"
            .into(),
        params: vec![],
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(Response::Rows(Rows { more: true, .. }))
    ));
    c.send(&Request::Interrupt { db: 0 }).await;
    // go-dqlite's way: skip ROWS and FAILURE until EMPTY. An endless query
    // must end well within the bound.
    let mut skipped = 0;
    loop {
        match c.recv().await.expect("a response") {
            Response::Empty => break,
            Response::Rows(_) | Response::Failure { .. } => skipped += 1,
            other => panic!("unexpected {other:?}"),
        }
        assert!(skipped < 10_000, "the query was not interrupted");
    }
    assert_eq!(
        c.query("SELECT 2", vec![]).await.unwrap(),
        vec![vec![Value::Integer(2)]]
    );
    node.stop().await;
}

#[tokio::test]
async fn zero_column_query_answers_rows_with_no_columns() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "zero").await;
    c.exec("CREATE TABLE t (v)").await;
    assert_eq!(
        c.query("INSERT INTO t VALUES (1)", vec![]).await.unwrap(),
        Vec::<Vec<Value>>::new()
    );
    assert_eq!(
        c.query("SELECT count(*) FROM t", vec![]).await.unwrap()[0][0],
        Value::Integer(1)
    );
    node.stop().await;
}

#[tokio::test]
async fn garbage_handshake_closes_only_that_connection() {
    let node = Node::start().await;
    let mut bystander = Conn::open(&node.addr, "bystander").await;
    let mut c = Conn::raw(&node.addr).await;
    c.bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(c.closed().await);
    let mut c = Conn::raw(&node.addr).await;
    c.bytes(&[0xde, 0xad]).await;
    drop(c);
    assert_eq!(
        bystander.query("SELECT 3", vec![]).await.unwrap()[0][0],
        Value::Integer(3)
    );
    still_serves(&node.addr).await;
    node.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_failures_and_the_session_survives() {
    let node = Node::start().await;
    let mut c = Conn::open(&node.addr, "bad").await;
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("unknown type", frame(99, 0, &[0; 8]), DQLITE_PARSE),
        (
            "unknown schema on LEADER",
            frame(0, 7, &[0; 8]),
            DQLITE_PARSE,
        ),
        (
            "unknown schema on EXEC_SQL",
            frame(8, 3, b"\0\0\0\0\0\0\0\0SELECT 1\0\0\0\0\0\0\0\0"),
            SQLITE_ERROR,
        ),
        ("empty body", frame(0, 0, &[]), DQLITE_PARSE),
        (
            "text without NUL",
            frame(8, 0, b"\0\0\0\0\0\0\0\0SELECT 1"),
            DQLITE_PARSE,
        ),
        (
            "OPEN missing its flags and vfs",
            frame(3, 0, b"ab\0\0\0\0\0\0"),
            DQLITE_PARSE,
        ),
        (
            "bad param type",
            frame(
                9,
                0,
                &[
                    0, 0, 0, 0, 0, 0, 0, 0, b'?', 0, 0, 0, 0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            DQLITE_PARSE,
        ),
        (
            "UNIXTIME param",
            frame(
                9,
                0,
                &[
                    0, 0, 0, 0, 0, 0, 0, 0, b'?', 0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 1,
                    0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            DQLITE_PARSE,
        ),
        (
            "param count beyond body",
            frame(
                9,
                1,
                &[
                    0, 0, 0, 0, 0, 0, 0, 0, b'?', 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0,
                    0, 0, 0,
                ],
            ),
            DQLITE_PARSE,
        ),
        (
            "invalid utf-8",
            frame(
                8,
                0,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 0, 0, 0, 0],
            ),
            DQLITE_PARSE,
        ),
    ];
    for (what, bytes, code) in cases {
        c.bytes(&bytes).await;
        let resp = c
            .recv()
            .await
            .unwrap_or_else(|| panic!("{what}: connection closed"));
        assert_eq!(failure_code(&resp), code, "{what}: {resp:?}");
        assert_eq!(
            c.query("SELECT 1", vec![]).await.unwrap()[0][0],
            Value::Integer(1),
            "{what}"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn oversized_length_word_gets_a_failure_then_close() {
    let node = Node::start().await;
    let mut bystander = Conn::open(&node.addr, "bystander").await;
    let mut c = Conn::new(&node.addr).await;
    c.bytes(
        &Header {
            words: u32::MAX,
            kind: 8,
            schema: 0,
        }
        .encode(),
    )
    .await;
    let resp = c.recv().await.expect("a failure before closing");
    assert!(
        matches!(&resp, Response::Failure { code: DQLITE_PARSE, message } if message.contains("too large")),
        "{resp:?}"
    );
    assert!(c.closed().await);
    assert_eq!(
        bystander.query("SELECT 4", vec![]).await.unwrap()[0][0],
        Value::Integer(4)
    );
    node.stop().await;
}

#[tokio::test]
async fn truncated_frame_then_hangup_leaves_the_node_serving() {
    let node = Node::start().await;
    let mut c = Conn::new(&node.addr).await;
    c.bytes(
        &Header {
            words: 4,
            kind: 8,
            schema: 0,
        }
        .encode(),
    )
    .await;
    c.bytes(&[0; 10]).await;
    drop(c);
    let mut c = Conn::new(&node.addr).await;
    c.bytes(&[3, 0, 0]).await;
    drop(c);
    still_serves(&node.addr).await;
    node.stop().await;
}

#[tokio::test]
async fn random_garbage_never_takes_the_node_down() {
    use rand::{Rng, SeedableRng};
    let node = Node::start().await;
    let mut bystander = Conn::open(&node.addr, "bystander").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..200 {
        let mut c = Conn::new(&node.addr).await;
        // A valid-looking header with a small body of random bytes, so most
        // inputs reach the decoders rather than the length check.
        let kind = rng.gen_range(0..24u8);
        let words = rng.gen_range(0..6u32);
        let mut body = vec![0u8; words as usize * 8];
        rng.fill(&mut body[..]);
        c.bytes(
            &Header {
                words,
                kind,
                schema: rng.gen_range(0..3),
            }
            .encode(),
        )
        .await;
        c.bytes(&body).await;
        // Whatever it was, the connection answers or closes; it never hangs.
        let _ = c.recv().await;
        drop(c);
        if round % 50 == 0 {
            assert_eq!(
                bystander.query("SELECT 5", vec![]).await.unwrap()[0][0],
                Value::Integer(5)
            );
        }
    }
    still_serves(&node.addr).await;
    node.stop().await;
}
