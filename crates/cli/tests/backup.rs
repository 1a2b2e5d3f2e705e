//! `dqlite-rs backup` and `restore` against a real node process: a backup
//! taken while writes go on is a consistent, intact SQLite file with the
//! database's contents; restoring it into a new database and backing that
//! up again gives the same schema and rows.

mod support;

use support::cli;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use support::{runtime, Node};

/// Every table's rows (with rowids where there are any), the schema and
/// the header pragmas of a SQLite file.
type Contents = Vec<(String, Vec<Vec<SqlValue>>)>;

fn contents(path: &Path) -> (Vec<(String, String, String)>, Contents, i64) {
    let conn = Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    let mut stmt = conn
        .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
        .unwrap();
    let schema: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut tables = Vec::new();
    for (kind, name, sql) in &schema {
        if kind != "table" {
            continue;
        }
        let without_rowid = sql.to_ascii_uppercase().contains("WITHOUT ROWID");
        let select = if without_rowid {
            format!("SELECT * FROM \"{name}\" ORDER BY 1")
        } else {
            format!("SELECT _rowid_, * FROM \"{name}\" ORDER BY _rowid_")
        };
        let mut stmt = conn.prepare(&select).unwrap();
        let n = stmt.column_count();
        let rows: Vec<Vec<SqlValue>> = stmt
            .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.push((name.clone(), rows));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    (schema, tables, version)
}

fn rows_of(tables: &Contents, name: &str) -> Vec<Vec<SqlValue>> {
    tables
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no table {name}"))
        .1
        .clone()
}

#[test]
fn a_backup_under_writes_restores_to_the_same_contents() {
    let node = Node::start(1);
    let addr = node.address.clone();
    let rt = runtime();
    let config = dqlite_client::Config::default();
    rt.block_on(async {
        let mut db = dqlite_client::Database::connect_with(&[&addr], "src", &config)
            .await
            .unwrap();
        db.exec(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, \
               price REAL, data BLOB, note);
             CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
             CREATE TABLE plain (a, b);
             CREATE TABLE live (n INTEGER NOT NULL);
             CREATE INDEX items_name ON items (name);
             CREATE VIEW cheap AS SELECT name FROM items WHERE price < 10;
             CREATE TRIGGER items_touch AFTER INSERT ON items BEGIN
               INSERT INTO plain VALUES ('trigger', NEW.id);
             END;
             PRAGMA user_version = 7;",
            (),
        )
        .await
        .unwrap();
        db.exec("BEGIN", ()).await.unwrap();
        for i in 0..1500i64 {
            let blob = if i % 100 == 0 {
                vec![i as u8; 100_000]
            } else {
                vec![i as u8; 3]
            };
            let note = match i % 3 {
                0 => dqlite_client::Value::Null,
                1 => dqlite_client::Value::Integer(i * 1000),
                _ => dqlite_client::Value::Text(format!("héllo {i}")),
            };
            db.exec(
                "INSERT INTO items (name, price, data, note) VALUES (?, ?, ?, ?)",
                vec![
                    dqlite_client::Value::Text(format!("item-{i}")),
                    dqlite_client::Value::Float(i as f64 / 7.0),
                    dqlite_client::Value::Blob(blob),
                    note,
                ],
            )
            .await
            .unwrap();
            db.exec(
                "INSERT INTO kv VALUES (?, ?)",
                dqlite_client::params![format!("k{i:05}"), i],
            )
            .await
            .unwrap();
        }
        db.exec("COMMIT", ()).await.unwrap();
        // Gaps in rowids and in the AUTOINCREMENT sequence must survive.
        db.exec("DELETE FROM items WHERE id % 7 = 0 OR id > 1490", ())
            .await
            .unwrap();
        db.exec("DELETE FROM plain WHERE b % 5 = 0", ())
            .await
            .unwrap();
    });

    // A writer appends 1, 2, 3, ... to `live`, one transaction each, while
    // the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let addr = addr.clone();
        std::thread::spawn(move || {
            runtime().block_on(async {
                let mut db = dqlite_client::Database::connect_with(
                    &[&addr],
                    "src",
                    &dqlite_client::Config::default(),
                )
                .await
                .unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    db.exec("INSERT INTO live VALUES (?)", dqlite_client::params![n])
                        .await
                        .unwrap();
                }
                n
            })
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("src.sqlite");
    let file_str = file.to_str().unwrap();
    // Let the writer get going first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(async {
        let mut db = dqlite_client::Database::connect_with(&[&addr], "src", &config)
            .await
            .unwrap();
        let rows = db.query_all("SELECT count(*) FROM live", ()).await.unwrap();
        rows[0].get::<i64>(0).unwrap()
    }) < 10
    {
        assert!(Instant::now() < deadline, "the writer does not write");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cli(&["backup", "-s", &addr, "src", file_str]);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("backed up src"), "{}", out.describe());

    let (schema, tables, version) = contents(&file);
    assert_eq!(version, 7);
    // Consistent: the concurrent appends are a prefix 1..=k with no gap.
    let live: Vec<i64> = rows_of(&tables, "live")
        .iter()
        .map(|r| match r[1] {
            SqlValue::Integer(n) => n,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        live.len() >= 10 && (live.len() as i64) <= written,
        "{} of {written}",
        live.len()
    );
    assert!(live.iter().enumerate().all(|(i, n)| *n == i as i64 + 1));
    // The static tables are exactly what the database holds.
    rt.block_on(async {
        let mut db = dqlite_client::Database::connect_with(&[&addr], "src", &config)
            .await
            .unwrap();
        let n = |rows: Vec<dqlite_client::Row>| rows[0].get::<i64>(0).unwrap();
        let items = n(db
            .query_all("SELECT count(*) FROM items", ())
            .await
            .unwrap());
        assert_eq!(items as usize, rows_of(&tables, "items").len());
        let plain = n(db
            .query_all("SELECT count(*) FROM plain", ())
            .await
            .unwrap());
        assert_eq!(plain as usize, rows_of(&tables, "plain").len());
        let sum = n(db
            .query_all("SELECT sum(length(data)) FROM items", ())
            .await
            .unwrap());
        let file_sum: i64 = rows_of(&tables, "items")
            .iter()
            .map(|r| match &r[4] {
                SqlValue::Blob(b) => b.len() as i64,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(sum, file_sum);
    });
    assert_eq!(rows_of(&tables, "kv").len(), 1500);
    assert!(schema.iter().any(|(k, n, _)| k == "view" && n == "cheap"));

    // An existing file is not overwritten without --force.
    let again = cli(&["backup", "-s", &addr, "src", file_str]);
    assert!(!again.success(), "{}", again.describe());
    assert!(again.stderr.contains("exists"), "{}", again.describe());

    // Restore into a new database, back that up, compare.
    let out = cli(&["restore", "-s", &addr, "dst", file_str]);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("restored dst"), "{}", out.describe());
    let copy = tmp.path().join("dst.sqlite");
    let out = cli(&["backup", "-s", &addr, "dst", copy.to_str().unwrap()]);
    assert!(out.success(), "{}", out.describe());
    let (schema2, tables2, version2) = contents(&copy);
    assert_eq!(schema2, schema);
    assert_eq!(version2, version);
    assert_eq!(tables2.len(), tables.len());
    for ((name, rows), (name2, rows2)) in tables.iter().zip(&tables2) {
        assert_eq!(name, name2);
        assert!(rows == rows2, "table {name} differs after restore");
    }

    // A database that already has a schema is not restored into.
    let out = cli(&["restore", "-s", &addr, "dst", file_str]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("already has a schema"),
        "{}",
        out.describe()
    );
    drop(node);
}
