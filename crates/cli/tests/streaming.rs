//! A large result streams through the Rust client while the node's memory
//! stays bounded: the node never holds the whole result.

mod support;

use std::time::Duration;

use dqlite_client::Database;
use support::Node;

/// 1,000,000 rows of about 120 bytes each: roughly 120 MB on the wire.
const ROWS: i64 = 1_000_000;
/// Far below the size of the result; a node that buffered it would blow it.
const NODE_PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[test]
fn a_million_rows_stream_with_bounded_node_memory() {
    let node = Node::start(1);
    let pid = node.pid().expect("node pid");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (count, sum, bytes) = runtime.block_on(async {
        let mut db = tokio::time::timeout(
            Duration::from_secs(30),
            Database::connect(&[node.address.as_str()], "big"),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
             SELECT i, printf('%0100d', i) FROM n"
        );
        let mut rows = db.query(&sql, ()).await.expect("query");
        let (mut count, mut sum, mut bytes) = (0i64, 0i64, 0usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while let Some(row) = rows.next().await.expect("next row") {
            let i: i64 = row.get(0).unwrap();
            let s: String = row.get(1).unwrap();
            count += 1;
            sum += i;
            bytes += s.len() + 8;
            assert!(
                tokio::time::Instant::now() < deadline,
                "streaming took over 300 s"
            );
        }
        (count, sum, bytes)
    });
    assert_eq!(count, ROWS);
    assert_eq!(sum, ROWS * (ROWS + 1) / 2);
    let peak = peak_rss_kib(pid);
    eprintln!(
        "streamed {count} rows ({} MiB of values); node peak RSS {} MiB",
        bytes >> 20,
        peak / 1024
    );
    assert!(
        peak < NODE_PEAK_RSS_LIMIT_KIB,
        "node peak RSS {peak} KiB while streaming; limit {NODE_PEAK_RSS_LIMIT_KIB} KiB"
    );
}
