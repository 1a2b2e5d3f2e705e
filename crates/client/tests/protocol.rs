//! The client's protocol handling against a scripted fake server
//! (`support/`): leader discovery and redirection, error classification,
//! batch-by-batch streaming, INTERRUPT on abandoned results, transactions,
//! prepared statements, admin calls, size limits and timeouts. Each test
//! scripts the server side exactly and asserts on what the client sent.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dqlite_client::{params, Client, Database, Error, Role, Value};
use dqlite_wire::{File, NodeInfo, Request, Response};
use support::{fast_config, rows, FakeServer};
use tokio::sync::{mpsc, oneshot};

type Shared<T> = Arc<Mutex<Option<T>>>;

fn shared<T>(value: T) -> Shared<T> {
    Arc::new(Mutex::new(Some(value)))
}

fn take<T>(slot: &Shared<T>) -> T {
    slot.lock().unwrap().take().expect("used once")
}

fn result(last_insert_id: u64, rows_affected: u64) -> Response {
    Response::Result {
        last_insert_id,
        rows_affected,
    }
}

fn exec_sql(sql: &str) -> Request {
    Request::ExecSql {
        db: 0,
        sql: sql.into(),
        params: vec![],
    }
}

#[tokio::test]
async fn connects_to_a_node_that_names_itself_and_opens_the_database() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "demo").await;
            assert_eq!(
                conn.recv().await,
                Request::ExecSql {
                    db: 0,
                    sql: "INSERT INTO t VALUES (?, ?)".into(),
                    params: vec![Value::Integer(-1), Value::Text("é".into())],
                }
            );
            conn.send(result((-5i64) as u64, 1)).await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "demo", &fast_config())
        .await
        .unwrap();
    assert_eq!(db.name(), "demo");
    assert_eq!(db.client().address(), address);
    let r = db
        .exec("INSERT INTO t VALUES (?, ?)", params![-1, "é"])
        .await
        .unwrap();
    assert_eq!(r.last_insert_id, -5);
    assert_eq!(r.rows_affected, 1);
}

#[tokio::test]
async fn follows_the_reported_leader_one_hop() {
    let follower = FakeServer::bind().await;
    let leader = FakeServer::bind().await;
    let follower_address = follower.address.clone();
    let leader_address = leader.address.clone();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let named = leader_address.clone();
    follower.serve(move |_, mut conn| {
        let named = named.clone();
        let closed_tx = closed_tx.clone();
        async move {
            assert_eq!(conn.handshake().await, 1);
            assert_eq!(conn.recv().await, Request::Leader);
            conn.send(Response::Server {
                id: 2,
                address: named,
            })
            .await;
            // The client must hang up rather than register here.
            closed_tx.send(conn.closed().await).unwrap();
        }
    });
    let me = leader_address.clone();
    leader.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_as_leader(&me).await;
        }
    });
    let client = Client::find_leader(&[follower_address.as_str()], &fast_config())
        .await
        .unwrap();
    assert_eq!(client.address(), leader_address);
    assert_eq!(closed_rx.recv().await, Some(true));
}

#[tokio::test]
async fn a_reported_leader_must_name_itself() {
    let first = FakeServer::bind().await;
    let second = FakeServer::bind().await;
    let second_address = second.address.clone();
    let first_address = first.address.clone();
    first.serve(move |_, mut conn| {
        let second_address = second_address.clone();
        async move {
            conn.handshake().await;
            conn.recv().await;
            conn.send(Response::Server {
                id: 2,
                address: second_address,
            })
            .await;
            conn.closed().await;
        }
    });
    second.serve(|_, mut conn| async move {
        conn.handshake().await;
        conn.recv().await;
        conn.send(Response::Server {
            id: 3,
            address: "127.0.0.1:1".into(),
        })
        .await;
        conn.closed().await;
    });
    let mut config = fast_config();
    config.max_rounds = 2;
    let err = Client::find_leader(&[first_address.as_str()], &config)
        .await
        .unwrap_err();
    match err {
        Error::NoLeader {
            attempts,
            last_error: Some(last),
            ..
        } => {
            assert_eq!(attempts, 2);
            assert!(matches!(*last, Error::LeaderMismatch { .. }), "{last}");
        }
        other => panic!("expected NoLeader, got {other}"),
    }
}

#[tokio::test]
async fn a_node_that_knows_no_leader_is_skipped() {
    let spare = FakeServer::bind().await;
    let leader = FakeServer::bind().await;
    let spare_address = spare.address.clone();
    let leader_address = leader.address.clone();
    spare.serve(|_, mut conn| async move {
        conn.handshake().await;
        conn.recv().await;
        conn.send(Response::Server {
            id: 0,
            address: String::new(),
        })
        .await;
        conn.closed().await;
    });
    let me = leader_address.clone();
    leader.serve(move |_, mut conn| {
        let me = me.clone();
        async move { conn.accept_as_leader(&me).await }
    });
    let client = Client::find_leader(&[spare_address, leader_address.clone()], &fast_config())
        .await
        .unwrap();
    assert_eq!(client.address(), leader_address);
}

/// A loopback port that was just free: connections to it are refused.
fn dead_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn refused_everywhere_fails_fast_listing_the_addresses() {
    let (a, b) = (dead_port(), dead_port());
    // Defaults: 30 s of rounds, were every refusal retried.
    let config = dqlite_client::Config::default();
    let start = Instant::now();
    let err = Client::find_leader(&[a.as_str(), b.as_str()], &config)
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    match &err {
        Error::Unreachable { addresses } => assert_eq!(addresses, &[a.clone(), b.clone()]),
        other => panic!("expected Unreachable, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "no dqlite node is listening at {a}, {b}: connection refused; \
             check that the nodes are running and the addresses are right"
        )
    );
    // Client::connect names the address too.
    let err = Client::connect(&a, &config).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to {a}: Connection refused")),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_servers_give_no_leader_within_the_bounds() {
    let address = dead_port();
    let mut config = fast_config();
    config.max_rounds = 4;
    config.give_up_when_all_refuse = false;
    let start = Instant::now();
    let err = Client::find_leader(&[address.as_str(), address.as_str()], &config)
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    match &err {
        Error::NoLeader {
            addresses,
            attempts,
            last_error,
        } => {
            assert_eq!(addresses.len(), 2);
            assert_eq!(*attempts, 8);
            assert!(matches!(last_error.as_deref(), Some(Error::Connect { .. })));
        }
        other => panic!("expected NoLeader, got {other}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "no leader found through {address}, {address} after 8 attempts \
             (last error: cannot connect to {address}: Connection refused"
        )),
        "{err}"
    );
    // And the overall timeout holds even with unlimited-looking rounds.
    let mut config = fast_config();
    config.max_rounds = u32::MAX;
    config.connect_timeout = Duration::from_millis(300);
    config.give_up_when_all_refuse = false;
    let start = Instant::now();
    let err = Client::find_leader(&[address.as_str()], &config)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoLeader { .. }));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        Client::find_leader::<&str>(&[], &config).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A TCP listener on 127.0.0.1 that answers every connection with
/// `reply` once it has read the client's first bytes.
async fn foreign_server(reply: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(support::STEP, stream.read(&mut buf)).await;
                let _ = stream.write_all(reply).await;
                let _ = tokio::time::timeout(support::STEP, stream.read(&mut buf)).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn a_peer_that_does_not_speak_dqlite_is_reported_as_such() {
    let http = foreign_server(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let garbage = foreign_server(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let small_garbage = foreign_server(&[1, 0, 0, 0, 200, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]).await;
    let config = dqlite_client::Config::default();
    for (address, detail) in [
        (&http, "it answered with HTTP".to_owned()),
        (
            &garbage,
            "its first reply starts with \"SSH-2.0-\"".to_owned(),
        ),
        (
            &small_garbage,
            "its first reply is not a dqlite message".to_owned(),
        ),
    ] {
        let start = Instant::now();
        let err = Client::find_leader(&[address.as_str()], &config)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotDqlite { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2), "no retries");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "{address} does not speak the dqlite protocol ({detail}"
            )),
            "{text}"
        );
        assert!(text.ends_with("check the address and port"), "{text}");
        assert!(!text.contains("exceeds the limit"), "{text}");
        // Talking to exactly that node says the same.
        let mut client = Client::connect(address, &config).await.unwrap();
        let err = client.leader().await.unwrap_err();
        assert!(matches!(err, Error::NotDqlite { .. }), "{err}");
    }
}

#[tokio::test]
async fn failures_are_classified_and_leave_the_connection_usable() {
    let cases: Vec<(u64, &str)> = vec![
        (10250, "not leader"),
        (8202, "not leader"),
        (10506, "leadership lost"),
        (8458, "leadership lost"),
        (5, "database is locked"),
        (517, "database is locked"),
        (1, "near \"SELEC\": syntax error"),
        (2067, "UNIQUE constraint failed: t.k"),
    ];
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    let script = cases.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        let script = script.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            for (code, message) in script {
                conn.recv().await;
                conn.send(Response::failure(code, message)).await;
            }
            conn.recv().await;
            conn.send(result(0, 0)).await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    for (code, message) in cases {
        let err = db.exec("X", ()).await.unwrap_err();
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.server_message(), Some(message));
        let kind_ok = match code {
            10250 | 8202 => matches!(err, Error::NotLeader { .. }),
            10506 | 8458 => matches!(err, Error::LeadershipLost { .. }),
            5 | 517 => matches!(err, Error::Busy { .. }),
            _ => matches!(err, Error::Sql { .. }),
        };
        assert!(kind_ok, "code {code} gave {err:?}");
    }
    db.exec("SELECT 1", ()).await.unwrap();
}

#[tokio::test]
async fn rows_arrive_batch_by_batch() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let go_rx = shared(go_rx);
    server.serve(move |_, mut conn| {
        let me = me.clone();
        let go_rx = go_rx.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            let Request::QuerySql { sql, params, .. } = conn.recv().await else {
                panic!("expected QUERY_SQL");
            };
            assert_eq!(sql, "SELECT n FROM t WHERE n > ?");
            assert_eq!(params, vec![Value::Integer(0)]);
            let r = |n| vec![Value::Integer(n)];
            conn.send(rows(&["n"], vec![r(1), r(2)], true)).await;
            // Nothing more until the client has handed out the first rows:
            // it must not wait for (or buffer) the whole result.
            take(&go_rx).await.unwrap();
            conn.send(rows(&["n"], vec![], true)).await;
            conn.send(rows(&["n"], vec![r(3)], false)).await;
            // The finished result needs no INTERRUPT: the next request
            // is the client's next statement.
            assert_eq!(conn.recv().await, exec_sql("DELETE FROM t"));
            conn.send(result(0, 3)).await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let mut rows = db
        .query("SELECT n FROM t WHERE n > ?", params![0])
        .await
        .unwrap();
    assert_eq!(rows.columns(), ["n".to_string()]);
    let first = rows.next().await.unwrap().unwrap();
    assert_eq!(first.get::<i64>(0).unwrap(), 1);
    assert_eq!(first.get_by_name::<i64>("n").unwrap(), 1);
    assert_eq!(
        rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(),
        2
    );
    go_tx.send(()).unwrap();
    assert_eq!(
        rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(),
        3
    );
    assert!(rows.next().await.unwrap().is_none());
    assert!(rows.next().await.unwrap().is_none());
    drop(rows);
    assert_eq!(db.exec("DELETE FROM t", ()).await.unwrap().rows_affected, 3);
}

/// The server side of an abandoned result, as the C server behaves: the
/// INTERRUPT is read only after the remaining batches were sent, then
/// answered with EMPTY.
async fn serve_abandoned_result(
    conn: &mut support::FakeConn,
    me: &str,
    seen: mpsc::UnboundedSender<&'static str>,
) {
    conn.accept_and_open(me, "db").await;
    conn.recv().await;
    conn.send(rows(
        &["n"],
        vec![vec![Value::Integer(1)], vec![Value::Integer(2)]],
        true,
    ))
    .await;
    assert_eq!(conn.recv().await, Request::Interrupt { db: 0 });
    seen.send("interrupt").unwrap();
    conn.send(rows(&["n"], vec![vec![Value::Integer(3)]], true))
        .await;
    conn.send(Response::failure(9, "interrupted")).await;
    conn.send(Response::Empty).await;
    assert_eq!(conn.recv().await, exec_sql("SELECT 2"));
    seen.send("next").unwrap();
    conn.send(result(0, 0)).await;
}

#[tokio::test]
async fn dropping_an_unfinished_result_interrupts_before_the_next_request() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        let seen = seen_tx.clone();
        async move { serve_abandoned_result(&mut conn, &me, seen).await }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let mut rows = db.query("SELECT 1", ()).await.unwrap();
    assert!(rows.next().await.unwrap().is_some());
    drop(rows);
    db.exec("SELECT 2", ()).await.unwrap();
    assert_eq!(seen_rx.recv().await, Some("interrupt"));
    assert_eq!(seen_rx.recv().await, Some("next"));
}

#[tokio::test]
async fn closing_an_unfinished_result_interrupts_at_once() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        let seen = seen_tx.clone();
        async move { serve_abandoned_result(&mut conn, &me, seen).await }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let rows = db.query("SELECT 1", ()).await.unwrap();
    rows.close().await.unwrap();
    assert_eq!(seen_rx.try_recv(), Ok("interrupt"));
    db.exec("SELECT 2", ()).await.unwrap();
    assert_eq!(seen_rx.recv().await, Some("next"));
}

#[tokio::test]
async fn a_failure_in_the_middle_of_a_result_ends_it() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            conn.send(rows(&["n"], vec![vec![Value::Integer(1)]], true))
                .await;
            conn.send(Response::failure(1, "integer overflow")).await;
            assert_eq!(conn.recv().await, exec_sql("SELECT 2"));
            conn.send(result(0, 0)).await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let mut rows = db.query("SELECT 1", ()).await.unwrap();
    assert!(rows.next().await.unwrap().is_some());
    let err = rows.next().await.unwrap_err();
    assert!(matches!(err, Error::Sql { code: 1, .. }), "{err}");
    drop(rows);
    db.exec("SELECT 2", ()).await.unwrap();
}

#[tokio::test]
async fn an_oversized_length_word_is_an_error_not_an_allocation() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |index, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            let words: u32 = if index == 0 { u32::MAX } else { 200 };
            let mut header = [0u8; 8];
            header[..4].copy_from_slice(&words.to_le_bytes());
            header[4] = 6; // RESULT
            conn.send_raw(&header).await;
            conn.send_raw(&vec![0u8; 200 * 8]).await;
            conn.closed().await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let err = db.exec("SELECT 1", ()).await.unwrap_err();
    match err {
        Error::MessageTooLarge { size, max, .. } => {
            assert_eq!(size, u64::from(u32::MAX) * 8);
            assert_eq!(max, 256 << 20);
        }
        other => panic!("expected MessageTooLarge, got {other}"),
    }
    assert!(matches!(
        db.exec("SELECT 1", ()).await,
        Err(Error::ConnectionBroken { .. })
    ));
    // The limit is configurable: 1,600 bytes is too much for 1 KiB.
    let mut config = fast_config();
    config.max_message_size = 1024;
    let mut db = Database::connect_with(&[address.as_str()], "db", &config)
        .await
        .unwrap();
    assert!(matches!(
        db.exec("SELECT 1", ()).await,
        Err(Error::MessageTooLarge {
            size: 1600,
            max: 1024,
            ..
        })
    ));
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_breaks_the_connection() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            conn.closed().await;
        }
    });
    let mut config = fast_config();
    config.request_timeout = Duration::from_millis(200);
    let mut db = Database::connect_with(&[address.as_str()], "db", &config)
        .await
        .unwrap();
    let start = Instant::now();
    let err = db.exec("SELECT 1", ()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(err.needs_reconnect());
    assert!(matches!(
        db.exec("SELECT 1", ()).await,
        Err(Error::ConnectionBroken { .. })
    ));
}

#[tokio::test]
async fn a_call_cancelled_half_way_poisons_the_connection() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            // Answer late: the client has given up by then and must not
            // take this for the answer to a later request.
            tokio::time::sleep(Duration::from_millis(300)).await;
            conn.send(result(1, 1)).await;
            conn.closed().await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(50), db.exec("SELECT 1", ())).await;
    assert!(cancelled.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        db.exec("SELECT 2", ()).await,
        Err(Error::ConnectionBroken { .. })
    ));
}

#[tokio::test]
async fn an_unexpected_response_type_is_a_protocol_error() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            conn.send(Response::Empty).await;
            conn.closed().await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    assert!(matches!(
        db.exec("SELECT 1", ()).await,
        Err(Error::Protocol { .. })
    ));
    assert!(matches!(
        db.exec("SELECT 1", ()).await,
        Err(Error::ConnectionBroken { .. })
    ));
}

#[tokio::test]
async fn transactions_commit_and_roll_back() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        let seen = seen_tx.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            for _ in 0..10 {
                let Request::ExecSql { sql, .. } = conn.recv().await else {
                    panic!("expected EXEC_SQL");
                };
                seen.send(sql).unwrap();
                conn.send(result(0, 0)).await;
            }
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.exec("INSERT 1", ()).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.exec("INSERT 2", ()).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.exec("INSERT 3", ()).await.unwrap();
    drop(tx);
    db.exec("INSERT 4", ()).await.unwrap();
    let mut got = Vec::new();
    while let Ok(sql) = seen_rx.try_recv() {
        got.push(sql);
    }
    assert_eq!(
        got,
        [
            "BEGIN", "INSERT 1", "COMMIT", "BEGIN", "INSERT 2", "ROLLBACK", "BEGIN", "INSERT 3",
            "ROLLBACK", "INSERT 4"
        ]
    );
}

#[tokio::test]
async fn a_thousand_parameters_use_schema_one() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            let (header, request) = conn.recv_with_header().await.unwrap();
            assert_eq!(header.schema, 1);
            let Request::QuerySql { params, .. } = request else {
                panic!("expected QUERY_SQL");
            };
            assert_eq!(params.len(), 1000);
            assert!(params
                .iter()
                .enumerate()
                .all(|(i, v)| *v == Value::Integer(i as i64)));
            conn.send(rows(&["s"], vec![vec![Value::Integer(499500)]], false))
                .await;
            let (header, _) = conn.recv_with_header().await.unwrap();
            assert_eq!(header.schema, 0);
            conn.send(result(0, 0)).await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let params: Vec<Value> = (0..1000).map(Value::Integer).collect();
    let rows = db.query_all("SELECT ?+...", params).await.unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 499500);
    let params: Vec<Value> = (0..255).map(Value::Integer).collect();
    db.exec("X", params).await.unwrap();
}

#[tokio::test]
async fn prepared_statements() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            assert_eq!(
                conn.recv().await,
                Request::Prepare {
                    db: 0,
                    sql: "INSERT INTO t VALUES (?)".into(),
                    with_tail: false
                }
            );
            conn.send(Response::Stmt {
                db: 0,
                id: 3,
                params: 1,
                tail: None,
            })
            .await;
            assert_eq!(
                conn.recv().await,
                Request::Exec {
                    db: 0,
                    stmt: 3,
                    params: vec![Value::Blob(vec![1, 2])]
                }
            );
            conn.send(result(7, 1)).await;
            assert_eq!(
                conn.recv().await,
                Request::Query {
                    db: 0,
                    stmt: 3,
                    params: vec![Value::Null]
                }
            );
            conn.send(rows(
                &["a", "b"],
                vec![vec![Value::Null, Value::Boolean(true)]],
                false,
            ))
            .await;
            assert_eq!(conn.recv().await, Request::Finalize { db: 0, stmt: 3 });
            conn.send(Response::Empty).await;
            conn.closed().await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let mut other = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let stmt = db.prepare("INSERT INTO t VALUES (?)").await.unwrap();
    assert_eq!((stmt.id(), stmt.param_count()), (3, 1));
    assert!(matches!(
        stmt.exec(&mut other, ()).await,
        Err(Error::InvalidArgument(_))
    ));
    let r = stmt.exec(&mut db, [vec![1u8, 2]]).await.unwrap();
    assert_eq!(r.last_insert_id, 7);
    let rows = stmt.query_all(&mut db, params![None::<i64>]).await.unwrap();
    assert_eq!(rows[0].get::<Option<i64>>(0).unwrap(), None);
    assert!(rows[0].get::<bool>(1).unwrap());
    stmt.finalize(&mut db).await.unwrap();
}

#[tokio::test]
async fn admin_calls() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            // A direct connection: handshake only, no CLIENT registration.
            assert_eq!(conn.handshake().await, 1);
            assert_eq!(conn.recv().await, Request::Leader);
            conn.send(Response::Server {
                id: 1,
                address: me.clone(),
            })
            .await;
            assert_eq!(conn.recv().await, Request::Leader);
            conn.send(Response::Server {
                id: 0,
                address: String::new(),
            })
            .await;
            assert_eq!(conn.recv().await, Request::Cluster { format: 1 });
            conn.send(Response::Servers {
                format: 1,
                nodes: vec![
                    NodeInfo {
                        id: 1,
                        address: me.clone(),
                        role: Role::Voter,
                        ..Default::default()
                    },
                    NodeInfo {
                        id: 2,
                        address: "127.0.0.1:2".into(),
                        role: Role::Spare,
                        ..Default::default()
                    },
                ],
            })
            .await;
            assert_eq!(conn.recv().await, Request::Describe { format: 0 });
            conn.send(Response::Metadata {
                failure_domain: 4,
                weight: 7,
            })
            .await;
            assert_eq!(conn.recv().await, Request::Weight { weight: 9 });
            conn.send(Response::Empty).await;
            assert_eq!(conn.recv().await, Request::Dump { name: "db".into() });
            conn.send(Response::Files(vec![
                File {
                    name: "db".into(),
                    data: vec![1; 16],
                },
                File {
                    name: "db-wal".into(),
                    data: vec![],
                },
            ]))
            .await;
            assert_eq!(
                conn.recv().await,
                Request::Add {
                    id: 5,
                    address: "127.0.0.1:5".into()
                }
            );
            conn.send(Response::Empty).await;
            assert_eq!(
                conn.recv().await,
                Request::Assign {
                    id: 5,
                    role: Some(0)
                }
            );
            conn.send(Response::Empty).await;
            assert_eq!(
                conn.recv().await,
                Request::Add {
                    id: 6,
                    address: "127.0.0.1:6".into()
                }
            );
            conn.send(Response::Empty).await;
            assert_eq!(
                conn.recv().await,
                Request::Assign {
                    id: 6,
                    role: Some(1)
                }
            );
            conn.send(Response::Empty).await;
            assert_eq!(conn.recv().await, Request::Remove { id: 6 });
            conn.send(Response::Empty).await;
            assert_eq!(conn.recv().await, Request::Transfer { id: 5 });
            conn.send(Response::failure(10250, "not leader")).await;
            conn.closed().await;
        }
    });
    let mut node = Client::connect(&address, &fast_config()).await.unwrap();
    let leader = node.leader().await.unwrap().unwrap();
    assert_eq!((leader.id, leader.address.as_str()), (1, address.as_str()));
    assert_eq!(node.leader().await.unwrap(), None);
    let cluster = node.cluster().await.unwrap();
    assert_eq!(cluster.len(), 2);
    assert_eq!(cluster[1].role, Role::Spare);
    let meta = node.describe().await.unwrap();
    assert_eq!((meta.failure_domain, meta.weight), (4, 7));
    node.set_weight(9).await.unwrap();
    let files = node.dump("db").await.unwrap();
    assert_eq!(files[0].data.len(), 16);
    assert_eq!(files[1].name, "db-wal");
    node.add(5, "127.0.0.1:5", Role::Voter).await.unwrap();
    node.add(6, "127.0.0.1:6", Role::Spare).await.unwrap();
    node.assign(6, Role::StandBy).await.unwrap();
    node.remove(6).await.unwrap();
    assert!(matches!(
        node.transfer(5).await,
        Err(Error::NotLeader { code: 10250, .. })
    ));
}

#[tokio::test]
async fn malformed_result_streams_are_protocol_errors() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |index, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            conn.send(rows(&["a"], vec![vec![Value::Integer(1)]], true))
                .await;
            if index == 0 {
                // A later batch with another column count.
                conn.send(rows(&["a", "b"], vec![], false)).await;
            } else {
                // Endless empty batches.
                for _ in 0..100 {
                    conn.send(rows(&["a"], vec![], true)).await;
                }
            }
            conn.closed().await;
        }
    });
    for _ in 0..2 {
        let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
            .await
            .unwrap();
        let mut rows = db.query("SELECT 1", ()).await.unwrap();
        assert!(rows.next().await.unwrap().is_some());
        let err = rows.next().await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
        assert!(matches!(
            db.exec("SELECT 1", ()).await,
            Err(Error::ConnectionBroken { .. })
        ));
    }
}

#[tokio::test]
async fn a_server_hanging_up_mid_request_is_an_io_error() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            conn.send_raw(&[3, 0, 0, 0, 6, 0, 0, 0, 1, 2]).await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let err = db.exec("SELECT 1", ()).await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    assert_eq!(err.to_string(), format!("{address} closed the connection"));
    assert!(!err.outcome_unknown(), "a read");
}

/// A write in flight when the server hangs up may or may not have been
/// applied, and the error says so (as for 10506).
#[tokio::test]
async fn a_write_cut_off_by_a_hang_up_has_an_unknown_outcome() {
    let server = FakeServer::bind().await;
    let address = server.address.clone();
    let me = address.clone();
    server.serve(move |_, mut conn| {
        let me = me.clone();
        async move {
            conn.accept_and_open(&me, "db").await;
            conn.recv().await;
            conn.send(Response::Failure {
                code: 10506,
                message: "leadership lost".into(),
            })
            .await;
            conn.recv().await;
        }
    });
    let mut db = Database::connect_with(&[address.as_str()], "db", &fast_config())
        .await
        .unwrap();
    let lost = db.exec("INSERT INTO t VALUES (1)", ()).await.unwrap_err();
    assert!(lost.outcome_unknown(), "{lost}");
    assert_eq!(
        lost.to_string(),
        format!(
            "the write may or may not have been applied: leadership was lost on {address}; \
             check before retrying"
        )
    );
    let err = db.exec("INSERT INTO t VALUES (2)", ()).await.unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    assert!(err.needs_reconnect());
    assert_eq!(
        err.to_string(),
        format!("the write may or may not have been applied: {address} closed the connection")
    );
    assert!(matches!(
        db.exec("SELECT 1", ()).await,
        Err(Error::ConnectionBroken { .. })
    ));
}
