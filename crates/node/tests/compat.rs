//! Behaviour clients of current dqlite rely on, through the real protocol
//! against an in-process node (the replicated store's VFS, the path that
//! ships): the pragma policy, NULL in typed columns, the SQLite build, and
//! parameter errors on every request kind.

use std::time::Duration;

use dqlite_client::{params, Config, Database, Error, Value};
use dqlite_node::{Node, Options, BOOTSTRAP_ID};
use dqlite_server::policy::DENIED_PRAGMAS;

/// A one-node cluster and a connection to database `name` on it.
async fn start(name: &str) -> (Node, Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().with_network_latency(Duration::from_millis(10));
    let mut node = Node::new(BOOTSTRAP_ID, "127.0.0.1:0", dir.path(), options);
    node.start().await.unwrap();
    let mut config = Config::default();
    config.connect_timeout = Duration::from_secs(10);
    config.request_timeout = Duration::from_secs(30);
    let db = Database::connect_with(&[node.address()], name, &config)
        .await
        .unwrap();
    (node, db, dir)
}

fn sql_error(result: Result<impl std::fmt::Debug, Error>) -> (u64, String) {
    match result {
        Err(e) => (
            e.code()
                .unwrap_or_else(|| panic!("not a server error: {e:?}")),
            e.server_message().unwrap_or_default().to_owned(),
        ),
        Ok(v) => panic!("expected a failure, got {v:?}"),
    }
}

const SQLITE_AUTH: u64 = 23;
const SQLITE_RANGE: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_pragmas_are_refused_and_their_reads_kept() {
    let (mut node, mut db, _dir) = start("pragmas").await;
    // What a client may never touch, read or set, and what it may only read.
    let values = [("journal_mode", "DELETE"), ("page_size", "8192")];
    for pragma in DENIED_PRAGMAS {
        let value = values
            .iter()
            .find(|(n, _)| *n == pragma.name)
            .map_or("1", |(_, v)| v);
        let set = format!("PRAGMA {} = {value}", pragma.name);
        let (code, message) = sql_error(db.exec(&set, ()).await);
        assert_eq!(code, SQLITE_AUTH, "{set}: {message}");
        assert!(
            message.contains(&format!("PRAGMA {}", pragma.name)),
            "{set}: {message}"
        );
        // The same through QUERY_SQL and PREPARE (compile time).
        assert_eq!(sql_error(db.query_all(&set, ()).await).0, SQLITE_AUTH);
        assert_eq!(sql_error(db.prepare(&set).await).0, SQLITE_AUTH);
        let upper = format!("PRAGMA main.{} ({value})", pragma.name.to_uppercase());
        assert_eq!(
            sql_error(db.exec(&upper, ()).await).0,
            SQLITE_AUTH,
            "{upper}"
        );

        let read = format!("PRAGMA {}", pragma.name);
        let result = db.query_all(&read, ()).await;
        if pragma.readable {
            assert!(result.is_ok(), "{read}: {result:?}");
        } else {
            let (code, message) = sql_error(result);
            assert_eq!(code, SQLITE_AUTH, "{read}: {message}");
            assert!(message.contains(&read), "{read}: {message}");
        }
    }
    // Other pragmas and the engine itself are unaffected.
    db.exec("PRAGMA foreign_keys = ON", ()).await.unwrap();
    db.exec("CREATE TABLE t (v)", ()).await.unwrap();
    db.exec("INSERT INTO t VALUES (1)", ()).await.unwrap();
    let rows = db.query_all("PRAGMA page_size", ()).await.unwrap();
    assert_eq!(rows[0].values(), &[Value::Integer(4096)]);
    // Only temporary databases may be attached.
    let (code, message) = sql_error(db.exec("ATTACH '/tmp/other.db' AS other", ()).await);
    assert_eq!(code, SQLITE_AUTH, "{message}");
    assert!(message.contains("ATTACH"), "{message}");
    db.exec("ATTACH '' AS scratch", ()).await.unwrap();
    db.exec("DETACH scratch", ()).await.unwrap();
    // The connection is still usable after every refusal.
    let rows = db.query_all("SELECT v FROM t", ()).await.unwrap();
    assert_eq!(rows[0].values(), &[Value::Integer(1)]);
    drop(db);
    node.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_in_typed_columns_is_null_on_the_wire() {
    let (mut node, mut db, _dir) = start("nulls").await;
    db.exec(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, ok BOOLEAN, d DATE, dt DATETIME, ts TIMESTAMP)",
        (),
    )
    .await
    .unwrap();
    db.exec(
        "INSERT INTO t VALUES (1, NULL, NULL, NULL, NULL), (2, 0, 0, 0, 0), (3, 1, '2020-01-01', NULL, 7)",
        (),
    )
    .await
    .unwrap();
    let expected = vec![
        vec![Value::Null, Value::Null, Value::Null, Value::Null],
        vec![
            Value::Boolean(false),
            Value::UnixTime(0),
            Value::UnixTime(0),
            Value::UnixTime(0),
        ],
        vec![
            Value::Boolean(true),
            Value::Iso8601("2020-01-01".into()),
            Value::Null,
            Value::UnixTime(7),
        ],
    ];
    let sql = "SELECT ok, d, dt, ts FROM t ORDER BY id";
    let rows = db.query_all(sql, ()).await.unwrap();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.into_values()).collect();
    assert_eq!(got, expected, "QUERY_SQL");
    let stmt = db.prepare(sql).await.unwrap();
    let rows = stmt.query_all(&mut db, ()).await.unwrap();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.into_values()).collect();
    assert_eq!(got, expected, "QUERY");
    drop(db);
    node.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_build_has_what_debian_has() {
    let (mut node, mut db, _dir) = start("build").await;
    let rows = db.query_all("PRAGMA compile_options", ()).await.unwrap();
    let options: Vec<String> = rows.iter().map(|r| r.get::<String>(0).unwrap()).collect();
    for want in [
        "ENABLE_MATH_FUNCTIONS",
        "ENABLE_FTS3",
        "ENABLE_FTS4",
        "ENABLE_FTS5",
        "ENABLE_RTREE",
        "ENABLE_DBSTAT_VTAB",
        "ENABLE_STMTVTAB",
        "ENABLE_COLUMN_METADATA",
        "LIKE_DOESNT_MATCH_BLOBS",
        "SOUNDEX",
        "MAX_VARIABLE_NUMBER=250000",
    ] {
        assert!(
            options.iter().any(|o| o == want),
            "{want} missing: {options:?}"
        );
    }
    // As in Debian: each connection keeps its own page cache with a bulk
    // of reusable pages, instead of one shared cache that mallocs and
    // frees every page each time a connection's cache is dropped.
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{options:?}"
    );
    let rows = db
        .query_all("SELECT floor(5.52), sqrt(16.0)", ())
        .await
        .unwrap();
    assert_eq!(rows[0].values(), &[Value::Float(5.0), Value::Float(4.0)]);
    db.exec(
        "CREATE VIRTUAL TABLE docs USING fts5(body);
         INSERT INTO docs VALUES ('raft replicates sqlite pages');
         CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1);
         INSERT INTO boxes VALUES (1, 0, 10);
         CREATE TABLE t (v);
         INSERT INTO t VALUES (1), (2), (3);
         DELETE FROM t WHERE v = 1",
        (),
    )
    .await
    .unwrap();
    let rows = db
        .query_all(
            "SELECT (SELECT count(*) FROM docs WHERE docs MATCH 'sqlite'),
                    (SELECT id FROM boxes WHERE x0 <= 5 AND x1 >= 5),
                    json_extract('{\"a\": [1, 2]}', '$.a[1]'),
                    (SELECT count(*) FROM t),
                    soundex('Robert')",
            (),
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0].values(),
        &[
            Value::Integer(1),
            Value::Integer(1),
            Value::Integer(2),
            Value::Integer(2),
            Value::Text("R163".into())
        ]
    );
    drop(db);
    node.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_parameters_is_sqlites_range_error_before_anything_runs() {
    let (mut node, mut db, _dir) = start("params").await;
    db.exec("CREATE TABLE t (v)", ()).await.unwrap();
    let range = (SQLITE_RANGE, "column index out of range".to_owned());

    // EXEC_SQL and QUERY_SQL.
    assert_eq!(
        sql_error(db.exec("INSERT INTO t VALUES (?)", params![1, 2]).await),
        range
    );
    assert_eq!(
        sql_error(db.query_all("SELECT ?", params![1, 2]).await),
        range
    );
    // EXEC and QUERY on prepared statements.
    let insert = db.prepare("INSERT INTO t VALUES (?)").await.unwrap();
    assert_eq!(sql_error(insert.exec(&mut db, params![1, 2]).await), range);
    let select = db.prepare("SELECT v FROM t WHERE v > ?").await.unwrap();
    assert_eq!(
        sql_error(select.query_all(&mut db, params![0, 0]).await),
        range
    );
    // Nothing ran: no row was inserted.
    let rows = db.query_all("SELECT count(*) FROM t", ()).await.unwrap();
    assert_eq!(rows[0].values(), &[Value::Integer(0)]);
    // The statements still work with the right number of values.
    insert.exec(&mut db, params![5]).await.unwrap();
    let rows = select.query_all(&mut db, params![0]).await.unwrap();
    assert_eq!(rows[0].values(), &[Value::Integer(5)]);
    drop(db);
    node.close().await.unwrap();
}
