//! The client against real C dqlite 1.11: Debian's `dqlite-demo` (package
//! go-dqlite, which `scripts/test.sh` installs) started by the test on
//! free loopback ports in a temporary directory. Fails, saying so, when
//! `dqlite-demo` is not installed.
//!
//! Pins down the 1.11 behaviours the client must live with: UNIXTIME and
//! ISO8601 values for DATETIME columns, BOOLEAN columns, an immediate
//! SQLITE_BUSY for a second writer, back-to-back batches before an
//! INTERRUPT is read, and no schema-1 (more than 255) parameter tuples.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dqlite_client::{params, Client, Config, Database, Error, Role, Value};

/// dqlite's bootstrap node id, which dqlite-demo's first node takes.
const BOOTSTRAP_ID: u64 = 0x2dc1_7185_8c31_55be;

struct Demo {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("demo.log")).unwrap_or_default()
    }
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn start_demo() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let child = Command::new("dqlite-demo")
        .args(["--api", &free_address(), "--db", &address, "--dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run dqlite-demo ({e}): install Debian's go-dqlite package (scripts/test.sh does)")
        });
    Demo {
        child,
        address,
        dir,
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.connect_timeout = Duration::from_secs(30);
    config.request_timeout = Duration::from_secs(30);
    // The demo was just spawned: refusals mean "not listening yet".
    config.give_up_when_all_refuse = false;
    config
}

async fn open(demo: &Demo, name: &str) -> Database {
    match Database::connect_with(&[demo.address.as_str()], name, &config()).await {
        Ok(db) => db,
        Err(err) => panic!(
            "cannot reach dqlite-demo: {err}\n--- log ---\n{}",
            demo.log()
        ),
    }
}

#[tokio::test]
async fn the_client_works_against_c_dqlite() {
    let demo = start_demo();
    let mut db = open(&demo, "compat").await;

    db.exec(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, n, ts DATETIME, ok BOOLEAN)",
        (),
    )
    .await
    .unwrap();
    db.exec(
        "INSERT INTO t (i, f, s, b, n, ts, ok) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            i64::MAX,
            1.5e300,
            "héllo ✓",
            vec![0u8, 0xff],
            None::<i64>,
            1_700_000_000,
            true
        ],
    )
    .await
    .unwrap();
    db.exec(
        "INSERT INTO t (i, f, s, b, n, ts, ok) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            i64::MIN,
            -0.5,
            "",
            Vec::<u8>::new(),
            3,
            "2020-01-01 10:00:00",
            Value::Null
        ],
    )
    .await
    .unwrap();
    let rows = db
        .query_all("SELECT i, f, s, b, n, ts, ok FROM t ORDER BY id", ())
        .await
        .unwrap();
    assert_eq!(
        rows[0].values(),
        [
            Value::Integer(i64::MAX),
            Value::Float(1.5e300),
            Value::Text("héllo ✓".into()),
            Value::Blob(vec![0, 0xff]),
            Value::Null,
            Value::UnixTime(1_700_000_000),
            Value::Boolean(true),
        ]
    );
    assert_eq!(
        rows[1].values(),
        [
            Value::Integer(i64::MIN),
            Value::Float(-0.5),
            Value::Text(String::new()),
            Value::Blob(vec![]),
            Value::Integer(3),
            Value::Iso8601("2020-01-01 10:00:00".into()),
            // 1.11 reads a NULL BOOLEAN as false.
            Value::Boolean(false),
        ]
    );

    // A result of many batches, then one abandoned early.
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT x FROM c";
    let all = db.query_all(sql, params![50_000]).await.unwrap();
    assert_eq!(all.len(), 50_000);
    assert_eq!(all[49_999].get::<i64>(0).unwrap(), 50_000);
    let mut rows = db.query(sql, params![50_000]).await.unwrap();
    rows.next().await.unwrap().unwrap();
    drop(rows);
    let one = db.query_all("SELECT 7", ()).await.unwrap();
    assert_eq!(one[0].get::<i64>(0).unwrap(), 7);

    // Prepared statements in a transaction; a dropped one rolls back.
    let insert = db.prepare("INSERT INTO t (i) VALUES (?)").await.unwrap();
    let mut tx = db.begin().await.unwrap();
    insert.exec(&mut tx, [10]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    insert.exec(&mut tx, [11]).await.unwrap();
    drop(tx);
    insert.finalize(&mut db).await.unwrap();
    let count: i64 = db.query_all("SELECT count(*) FROM t", ()).await.unwrap()[0]
        .get(0)
        .unwrap();
    assert_eq!(count, 3);

    // Errors keep their codes and leave the connection usable.
    let err = db.exec("SELEC 1", ()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Sql { code: 1, message } if message.contains("syntax error")),
        "{err:?}"
    );
    db.exec("CREATE UNIQUE INDEX u ON t (i)", ()).await.unwrap();
    let err = db
        .exec("INSERT INTO t (i) VALUES (10)", ())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Sql { code: 2067, .. }), "{err:?}");
    // 1.11 does not know schema-1 tuples (more than 255 parameters).
    let many: Vec<Value> = (0..300).map(Value::Integer).collect();
    let sql = format!("SELECT {}", vec!["?"; 300].join("+"));
    assert!(db.query(&sql, many).await.is_err());
    db.exec("UPDATE t SET n = n WHERE 0", ()).await.unwrap();

    // A second writer gets SQLITE_BUSY at once on 1.11.
    let mut other = open(&demo, "compat").await;
    let mut tx = db.begin().await.unwrap();
    tx.exec("INSERT INTO t (i) VALUES (100)", ()).await.unwrap();
    let err = other
        .exec("INSERT INTO t (i) VALUES (101)", ())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    tx.commit().await.unwrap();

    // Admin calls.
    let leader = db.client().leader().await.unwrap().unwrap();
    assert_eq!(
        (leader.id, leader.address.as_str()),
        (BOOTSTRAP_ID, demo.address.as_str())
    );
    let cluster = db.client().cluster().await.unwrap();
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster[0].role, Role::Voter);
    let mut node = Client::connect(&demo.address, &config()).await.unwrap();
    node.set_weight(3).await.unwrap();
    assert_eq!(node.describe().await.unwrap().weight, 3);
    let files = node.dump("compat").await.unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].data.starts_with(b"SQLite format 3\0"));
    assert_eq!(files[1].name, "compat-wal");
    assert!(node.transfer(0).await.is_err());
    assert!(node.remove(12345).await.is_err());
    assert_eq!(node.describe().await.unwrap().weight, 3);
}
