//! Every client call against a real dqlite-rs server running in-process
//! (`dqlite-server`, single node, on 127.0.0.1 with a port picked by the
//! OS and a temporary data directory per test).

use std::time::Duration;

use dqlite_client::{params, Client, Config, Database, Error, Role, Value};
use dqlite_server::{Server, ServerConfig};
use tokio::sync::oneshot;

/// A running server; stops when dropped.
struct Node {
    address: String,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(1, "127.0.0.1:0", dir.path());
    configure(&mut config);
    let server = Server::bind(config).await.unwrap();
    let address = server.address().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Node {
        address,
        _stop: stop,
        _dir: dir,
    }
}

async fn start() -> Node {
    start_with(|_| {}).await
}

fn config() -> Config {
    let mut config = Config::default();
    config.connect_timeout = Duration::from_secs(10);
    config.request_timeout = Duration::from_secs(30);
    config
}

async fn open(node: &Node, name: &str) -> Database {
    Database::connect_with(&[node.address.as_str()], name, &config())
        .await
        .unwrap()
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let node = start().await;
    let mut db = open(&node, "types").await;
    db.exec(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, n, ts DATETIME, ok BOOLEAN)",
        (),
    )
    .await
    .unwrap();
    let r = db
        .exec(
            "INSERT INTO t (i, f, s, b, n, ts, ok) VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![
                i64::MAX,
                1.5e300,
                "héllo ✓ 日本",
                vec![0u8, 1, 0xff],
                None::<i64>,
                1_700_000_000,
                true
            ],
        )
        .await
        .unwrap();
    assert_eq!((r.last_insert_id, r.rows_affected), (1, 1));
    db.exec(
        "INSERT INTO t (i, f, s, b, n, ts, ok) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            i64::MIN,
            -0.25,
            "",
            Vec::<u8>::new(),
            Value::Null,
            "2020-01-01 10:00:00",
            false
        ],
    )
    .await
    .unwrap();
    let rows = db
        .query_all("SELECT i, f, s, b, n, ts, ok FROM t ORDER BY id", ())
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].columns(), ["i", "f", "s", "b", "n", "ts", "ok"]);
    assert_eq!(rows[0].get::<i64>(0).unwrap(), i64::MAX);
    assert_eq!(rows[0].get::<f64>(1).unwrap(), 1.5e300);
    assert_eq!(rows[0].get::<String>(2).unwrap(), "héllo ✓ 日本");
    assert_eq!(rows[0].get::<Vec<u8>>(3).unwrap(), vec![0, 1, 0xff]);
    assert_eq!(rows[0].get::<Option<i64>>(4).unwrap(), None);
    assert_eq!(rows[0].values()[5], Value::UnixTime(1_700_000_000));
    assert!(rows[0].get::<bool>(6).unwrap());
    assert_eq!(rows[1].get::<i64>(0).unwrap(), i64::MIN);
    assert_eq!(rows[1].get::<f64>(1).unwrap(), -0.25);
    assert_eq!(rows[1].get::<String>(2).unwrap(), "");
    assert_eq!(rows[1].get::<Vec<u8>>(3).unwrap(), Vec::<u8>::new());
    assert_eq!(
        rows[1].values()[5],
        Value::Iso8601("2020-01-01 10:00:00".into())
    );
    assert!(!rows[1].get::<bool>(6).unwrap());
}

#[tokio::test]
async fn a_thousand_parameters_bind() {
    let node = start().await;
    let mut db = open(&node, "params").await;
    let sql = format!("SELECT {}", vec!["?"; 1000].join(" + "));
    let params: Vec<Value> = (1..=1000).map(Value::Integer).collect();
    let rows = db.query_all(&sql, params).await.unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 500_500);
    db.exec("CREATE TABLE wide (v)", ()).await.unwrap();
    let sql = format!(
        "INSERT INTO wide (v) VALUES {}",
        vec!["(?)"; 1000].join(", ")
    );
    let params: Vec<Value> = (0..1000).map(|i| Value::Text(format!("v{i}"))).collect();
    let r = db.exec(&sql, params).await.unwrap();
    assert_eq!(r.rows_affected, 1000);
}

#[tokio::test]
async fn a_large_result_streams_and_an_abandoned_one_is_interrupted() {
    let node = start().await;
    let mut db = open(&node, "stream").await;
    const N: i64 = 200_000;
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) \
               SELECT x, printf('row %08d', x) FROM c";
    let mut rows = db.query(sql, params![N]).await.unwrap();
    let (mut count, mut sum) = (0i64, 0i64);
    while let Some(row) = rows.next().await.unwrap() {
        count += 1;
        let x: i64 = row.get(0).unwrap();
        sum += x;
        if x == N {
            assert_eq!(row.get::<String>(1).unwrap(), format!("row {N:08}"));
        }
    }
    assert_eq!((count, sum), (N, N * (N + 1) / 2));

    // Dropped after a few rows: the next statement still gets its own answer.
    let mut rows = db.query(sql, params![N]).await.unwrap();
    for _ in 0..5 {
        rows.next().await.unwrap().unwrap();
    }
    drop(rows);
    let one = db.query_all("SELECT 42", ()).await.unwrap();
    assert_eq!(one[0].get::<i64>(0).unwrap(), 42);

    // Closed explicitly, on a prepared statement that is then run again.
    let stmt = db.prepare(sql).await.unwrap();
    let rows = stmt.query(&mut db, params![N]).await.unwrap();
    rows.close().await.unwrap();
    let all = stmt.query_all(&mut db, params![3]).await.unwrap();
    assert_eq!(all.len(), 3);
    stmt.finalize(&mut db).await.unwrap();
}

#[tokio::test]
async fn prepared_statements_and_transactions() {
    let node = start().await;
    let mut db = open(&node, "tx").await;
    db.exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", ())
        .await
        .unwrap();
    let insert = db
        .prepare("INSERT INTO t (k, v) VALUES (?, ?)")
        .await
        .unwrap();
    assert_eq!(insert.param_count(), 2);
    let select = db.prepare("SELECT v FROM t WHERE k = ?").await.unwrap();

    let mut tx = db.begin().await.unwrap();
    insert.exec(&mut tx, params![1, "one"]).await.unwrap();
    insert.exec(&mut tx, params![2, "two"]).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    insert.exec(&mut tx, params![3, "three"]).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    insert.exec(&mut tx, params![4, "four"]).await.unwrap();
    drop(tx);

    let count: i64 = db.query_all("SELECT count(*) FROM t", ()).await.unwrap()[0]
        .get(0)
        .unwrap();
    assert_eq!(count, 2);
    let v: String = select.query_all(&mut db, [2]).await.unwrap()[0]
        .get(0)
        .unwrap();
    assert_eq!(v, "two");

    // A constraint error keeps SQLite's extended code; the connection
    // stays usable.
    let err = insert.exec(&mut db, params![1, "dup"]).await.unwrap_err();
    assert!(matches!(err, Error::Sql { code: 1555, .. }), "{err:?}");
    insert.finalize(&mut db).await.unwrap();
    select.finalize(&mut db).await.unwrap();
    let err = db.exec("SELEC 1", ()).await.unwrap_err();
    assert!(matches!(err, Error::Sql { code: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("syntax error"), "{err}");
    db.exec("INSERT INTO t VALUES (9, 'nine')", ())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_held_write_lock_gives_busy() {
    let node = start_with(|c| c.busy_timeout = Duration::from_millis(100)).await;
    let mut first = open(&node, "busy").await;
    let mut second = open(&node, "busy").await;
    first.exec("CREATE TABLE t (x)", ()).await.unwrap();
    let mut tx = first.begin().await.unwrap();
    tx.exec("INSERT INTO t VALUES (1)", ()).await.unwrap();
    let err = second
        .exec("INSERT INTO t VALUES (2)", ())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert!(!err.needs_reconnect());
    tx.commit().await.unwrap();
    second.exec("INSERT INTO t VALUES (2)", ()).await.unwrap();
}

#[tokio::test]
async fn admin_calls() {
    let node = start().await;
    let mut db = open(&node, "admin").await;
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)", ())
        .await
        .unwrap();

    let leader = db.client().leader().await.unwrap().unwrap();
    assert_eq!(leader.id, 1);
    assert_eq!(leader.address, node.address);
    let cluster = db.client().cluster().await.unwrap();
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster[0].address, node.address);
    assert_eq!(cluster[0].role, Role::Voter);

    let mut direct = Client::connect(&node.address, &config()).await.unwrap();
    direct.set_weight(7).await.unwrap();
    assert_eq!(direct.describe().await.unwrap().weight, 7);
    let files = direct.dump("admin").await.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].name, "admin");
    assert!(files[0].data.starts_with(b"SQLite format 3\0"));
    assert_eq!(files[1].name, "admin-wal");

    // A single node refuses membership changes with an error, and the
    // connection survives each refusal.
    assert!(direct.add(2, "127.0.0.1:1", Role::Voter).await.is_err());
    assert!(direct.assign(1, Role::StandBy).await.is_err());
    assert!(direct.remove(2).await.is_err());
    assert!(direct.transfer(0).await.is_err());
    assert_eq!(direct.describe().await.unwrap().weight, 7);
}
