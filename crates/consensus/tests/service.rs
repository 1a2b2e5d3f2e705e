//! In-process service tests: real disks (fsync in temp dirs) and real HTTP
//! on 127.0.0.1, several nodes in one process.

use std::time::{Duration, Instant};

use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::{Config, Role, Service};

const T: Duration = Duration::from_secs(10);

fn set(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Set {
        key: key.into(),
        value: value.into(),
    }
    .encode()
}

fn config(dir: &std::path::Path) -> Config {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut c = Config::new("127.0.0.1:0", dir);
    c.network_latency = Duration::from_millis(10);
    c
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_init_exec_and_restart_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let kv = KvState::new();
    let svc = Service::start(config(dir.path()), kv.clone())
        .await
        .unwrap();
    assert!(matches!(
        svc.exec(set("a", "1"), T).await,
        Err(dqlite_consensus::Error::Uninitialized)
    ));
    svc.init().await.unwrap();
    wait_until("leadership", || svc.is_leader()).await;
    assert!(matches!(
        svc.init().await,
        Err(dqlite_consensus::Error::ExistingCluster)
    ));
    assert!(svc.exec(set("a", "1"), T).await.unwrap());
    let cas = KvCommand::Cas {
        key: "a".into(),
        expected: Some("0".into()),
        value: Some("2".into()),
    };
    assert!(
        !svc.exec(cas.encode(), T).await.unwrap(),
        "condition does not hold"
    );
    for i in 0..50 {
        assert!(svc.exec(set(&format!("k{i}"), "v"), T).await.unwrap());
    }
    svc.wait_read(T).await.unwrap();
    assert_eq!(kv.get("a").as_deref(), Some("1"));
    svc.stop().await;

    // Restart: a fresh, empty State is rebuilt from snapshot + log.
    let kv2 = KvState::new();
    let svc = Service::start(config(dir.path()), kv2.clone())
        .await
        .unwrap();
    wait_until("leadership after restart", || svc.is_leader()).await;
    svc.wait_read(T).await.unwrap();
    assert_eq!(kv2.dump(), kv.dump());
    assert!(svc.exec(set("b", "2"), T).await.unwrap());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_replicate_and_promote() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let kvs: Vec<_> = (0..3).map(|_| KvState::new()).collect();
    let mut nodes = Vec::new();
    for (d, kv) in dirs.iter().zip(&kvs) {
        nodes.push(Service::start(config(d.path()), kv.clone()).await.unwrap());
    }
    nodes[0].init().await.unwrap();
    wait_until("leader", || nodes[0].is_leader()).await;
    assert!(nodes[0].exec(set("before", "join"), T).await.unwrap());
    let boot = nodes[0].address().to_string();
    nodes[1].join(&boot).await.unwrap();
    nodes[2].join(&boot).await.unwrap();
    wait_until("three voters", || {
        let m = nodes[0].membership();
        m.len() == 3 && m.iter().all(|n| n.role == Role::Voter)
    })
    .await;
    let ids: Vec<u64> = nodes[0].membership().iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![1, 2, 3], "ids come from the replicated counter");
    assert!(nodes[0].exec(set("after", "join"), T).await.unwrap());
    for (n, kv) in nodes.iter().zip(&kvs) {
        n.wait_read(T).await.unwrap();
        assert_eq!(kv.get("before").as_deref(), Some("join"));
        assert_eq!(kv.get("after").as_deref(), Some("join"));
    }
    // A follower refuses exec with the leader's address.
    match nodes[1].exec(set("x", "y"), T).await {
        Err(dqlite_consensus::Error::NotLeader { leader }) => {
            assert_eq!(leader.as_deref(), Some(boot.as_str()))
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Leadership transfer, then eviction of the old leader.
    nodes[0].transfer_leadership(2, T).await.unwrap();
    wait_until("node 2 leads", || nodes[1].is_leader()).await;
    nodes[1].evict(&boot).await.unwrap();
    wait_until("two members", || nodes[1].membership().len() == 2).await;
    assert!(nodes[1].exec(set("after", "evict"), T).await.unwrap());
    nodes[2].wait_read(T).await.unwrap();
    assert_eq!(kvs[2].get("after").as_deref(), Some("evict"));
    for n in &nodes {
        n.stop().await;
    }
}
