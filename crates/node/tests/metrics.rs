//! `GET /metrics` on a running node's own address: a plain HTTP/1.1
//! request as curl sends it, the Prometheus text parsed, every metric the
//! README names present, and values that follow what the node did.

use std::time::Duration;

use dqlite_node::{Node, Options, BOOTSTRAP_ID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: metric name, its labels as written, and the value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// A plain `GET /metrics`, as `curl http://ADDRESS/metrics` does; returns
/// the status line, the headers and the body.
async fn get(address: &str, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: curl/8\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the scrape answers within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// Parses the text exposition (comments skipped; a chunked body is not
/// expected for a `Full` response).
fn parse(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Sample {
                name: name.to_owned(),
                labels: labels.to_owned(),
                value: value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            }
        })
        .collect()
}

async fn scrape(address: &str) -> Vec<Sample> {
    let (status, headers, body) = get(address, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}\n{headers}\n{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    parse(&body)
}

/// The value of `name` whose labels contain every one of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[&str]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
}

fn must(samples: &[Sample], name: &str, labels: &[&str]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let names: Vec<_> = samples
            .iter()
            .map(|s| format!("{}{{{}}}", s.name, s.labels))
            .collect();
        panic!("no {name} {labels:?} in\n{}", names.join("\n"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_node_address_and_follow_the_work() {
    let dir = tempfile::tempdir().unwrap();
    // A snapshot every 16 entries, so one is taken during the test.
    let options = Options::default()
        .with_network_latency(Duration::from_millis(10))
        .with_snapshot_params(16, 8);
    let mut node = Node::new(BOOTSTRAP_ID, "127.0.0.1:0", dir.path(), options);
    node.start().await.unwrap();
    let address = node.address().to_string();

    // A bootstrapping node serves before it has elected itself: wait for
    // the leadership its metrics must show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let s = scrape(&address).await;
        if must(&s, "dqlite_raft_leader", &[]) == 1.0 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for name in [
        "dqlite_raft_term",
        "dqlite_raft_commit_index",
        "dqlite_raft_applied_index",
        "dqlite_raft_leader",
        "dqlite_raft_fsync_seconds_count",
        "dqlite_raft_fsync_seconds_sum",
        "dqlite_raft_entries_per_fsync_count",
        "dqlite_commit_seconds_count",
        "dqlite_client_connections",
    ] {
        must(&before, name, &[]);
    }
    for kind in ["kind=\"taken\"", "kind=\"installed\""] {
        must(&before, "dqlite_raft_snapshots_total", &[kind]);
        must(&before, "dqlite_raft_snapshot_seconds_count", &[kind]);
    }
    assert!(must(&before, "dqlite_raft_term", &[]) >= 1.0);
    assert_eq!(must(&before, "dqlite_raft_leader", &[]), 1.0);
    assert_eq!(must(&before, "dqlite_client_connections", &[]), 0.0);
    let commit_before = must(&before, "dqlite_raft_commit_index", &[]);

    let config = dqlite_client::Config::default();
    let mut db = dqlite_client::Database::connect_with(&[&address], "m", &config)
        .await
        .unwrap();
    db.exec("CREATE TABLE t (v)", ()).await.unwrap();
    for i in 0..40 {
        db.exec("INSERT INTO t VALUES (?)", dqlite_client::params![i])
            .await
            .unwrap();
    }
    let rows = db.query_all("SELECT count(*) FROM t", ()).await.unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 40);
    let err = db
        .exec("INSERT INTO nowhere VALUES (1)", ())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(1));

    // The snapshot is taken by the raft loop after the apply: poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = scrape(&address).await;
        if must(&s, "dqlite_raft_snapshots_total", &["kind=\"taken\""]) >= 1.0 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no snapshot taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let commit = must(&after, "dqlite_raft_commit_index", &[]);
    let applied = must(&after, "dqlite_raft_applied_index", &[]);
    assert!(
        commit >= commit_before + 41.0,
        "{commit_before} -> {commit}"
    );
    assert!(
        applied <= commit && applied >= commit_before + 41.0,
        "{applied}"
    );
    assert_eq!(must(&after, "dqlite_raft_leader", &[]), 1.0);
    assert_eq!(must(&after, "dqlite_client_connections", &[]), 1.0);
    let fsyncs = must(&after, "dqlite_raft_fsync_seconds_count", &[]);
    assert!(fsyncs >= 41.0 - must(&before, "dqlite_raft_fsync_seconds_count", &[]));
    assert!(must(&after, "dqlite_raft_fsync_seconds_sum", &[]) > 0.0);
    // Entries per fsync: one observation per fsync, at least one entry
    // each on average. The two histograms are separate counters the
    // persistence thread updates one after the other, so a scrape may fall
    // between them while it keeps writing (compaction after the snapshot).
    let per_fsync = must(&after, "dqlite_raft_entries_per_fsync_count", &[]);
    assert!((per_fsync - fsyncs).abs() <= 1.0, "{per_fsync} vs {fsyncs}");
    assert!(must(&after, "dqlite_raft_entries_per_fsync_sum", &[]) >= per_fsync);
    // Every write through this node was timed from commit point to apply.
    assert!(must(&after, "dqlite_commit_seconds_count", &[]) >= 41.0);
    assert!(must(&after, "dqlite_commit_seconds_bucket", &["le=\"+Inf\""]) >= 41.0);
    assert!(
        must(
            &after,
            "dqlite_raft_snapshot_seconds_count",
            &["kind=\"taken\""]
        ) >= 1.0
    );
    let ok = |kind: &str| {
        value(
            &after,
            "dqlite_sql_statements_total",
            &[&format!("kind=\"{kind}\""), "outcome=\"ok\""],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(ok("exec_sql"), 41.0);
    assert_eq!(ok("query_sql"), 1.0);
    assert_eq!(
        must(
            &after,
            "dqlite_sql_statements_total",
            &["kind=\"exec_sql\"", "outcome=\"error\""]
        ),
        1.0
    );
    assert_eq!(must(&after, "dqlite_errors_total", &["code=\"1\""]), 1.0);

    // The gauge follows the client going away.
    drop(db);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while must(&scrape(&address).await, "dqlite_client_connections", &[]) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only GET (and HEAD) scrape; raft paths are untouched.
    let (status, _, _) = get(&address, "/nothing").await;
    assert!(status.contains(" 404 "), "{status}");
    node.close().await.unwrap();
}
