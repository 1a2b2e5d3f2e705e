//! Exercises a live node: `cargo run -p dqlite-client --example smoke -- 127.0.0.1:9001`.

use dqlite_client::{params, Client, Config, Database, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let mut db = Database::connect(&[address.as_str()], "smoke").await?;
    db.exec("DROP TABLE IF EXISTS smoke", ()).await?;
    db.exec(
        "CREATE TABLE smoke (i INTEGER, f REAL, s TEXT, b BLOB, n, d DATETIME, ok BOOLEAN)",
        (),
    )
    .await?;
    let r = db
        .exec(
            "INSERT INTO smoke VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![
                i64::MAX,
                1.5e300,
                "héllo ✓",
                vec![0u8, 1, 255],
                None::<i64>,
                1_700_000_000,
                true
            ],
        )
        .await?;
    println!("insert: {r:?}");
    db.exec(
        "INSERT INTO smoke VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            i64::MIN,
            -0.0,
            "",
            Vec::<u8>::new(),
            Value::Null,
            "2020-01-01 10:00:00",
            Value::Null
        ],
    )
    .await?;
    let rows = db.query("SELECT * FROM smoke", ()).await?.all().await?;
    for row in &rows {
        println!("{:?}", row.values());
    }
    // A result of many batches, read fully.
    let mut rows = db
        .query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) SELECT x, 'row ' || x FROM c",
            params![100_000],
        )
        .await?;
    let mut count = 0u64;
    let mut sum = 0i64;
    while let Some(row) = rows.next().await? {
        count += 1;
        sum += row.get::<i64>(0)?;
    }
    println!("streamed {count} rows, sum {sum}");
    // The same, abandoned after 10 rows: the next statement still works.
    let mut rows = db
        .query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000) SELECT x FROM c",
            (),
        )
        .await?;
    for _ in 0..10 {
        rows.next().await?;
    }
    drop(rows);
    let one = db.query("SELECT 1", ()).await?.all().await?;
    println!("after abandoning: {:?}", one[0].values());
    // Prepared statement and transaction.
    let stmt = db.prepare("INSERT INTO smoke (i) VALUES (?)").await?;
    let mut tx = db.begin().await?;
    for i in 0..3 {
        stmt.exec(&mut tx, [i]).await?;
    }
    tx.commit().await?;
    stmt.finalize(&mut db).await?;
    let tx = db.begin().await?;
    drop(tx);
    let n: i64 = db
        .query("SELECT count(*) FROM smoke", ())
        .await?
        .all()
        .await?[0]
        .get(0)?;
    println!("count after tx: {n}");
    match db.exec("SELEC 1", ()).await {
        Err(e) => println!("syntax error: {e} / {e:?}"),
        Ok(_) => println!("syntax error not reported!"),
    }
    match db.query("INSERT INTO smoke (i) VALUES (1)", ()).await {
        Err(e) => println!("zero-column query: {e}"),
        Ok(rows) => println!("zero-column query: {} columns", rows.columns().len()),
    }
    let params: Vec<Value> = (0..1000).map(Value::Integer).collect();
    let sql = format!("SELECT {}", vec!["?"; 1000].join("+"));
    match db.query(&sql, params).await {
        Ok(rows) => println!("1000 params: {:?}", rows.all().await?[0].values()),
        Err(e) => println!("1000 params: {e}"),
    }
    let admin = db.client();
    println!("leader: {:?}", admin.leader().await?);
    println!("cluster: {:?}", admin.cluster().await?);
    let mut node = Client::connect(&address, &Config::default()).await?;
    println!("describe: {:?}", node.describe().await?);
    let files = node.dump("smoke").await?;
    for f in &files {
        println!("dump: {} {} bytes", f.name, f.data.len());
    }
    println!("transfer: {:?}", node.transfer(0).await);
    Ok(())
}
