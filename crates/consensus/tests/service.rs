//! In-process service tests: real disks (fsync in temp dirs) and real HTTP
//! on 127.0.0.1, several nodes in one process.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::storage::{Disk, DiskFile, RealDisk};
use dqlite_consensus::{Config, Image, Role, Service, State};

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

/// A config that snapshots every 10 entries and keeps none behind a
/// snapshot, so a log is compacted (and a late node catches up by
/// snapshot) within a few writes.
fn compacting_config(dir: &std::path::Path) -> Config {
    let mut c = config(dir);
    c.snapshot_threshold = 10;
    c.snapshot_trailing = 0;
    c
}

/// Writes small keys until the leader's snapshot index passes `past` (a
/// snapshot also waits for as many bytes of log as the last image, so how
/// many writes that takes depends on the state's size).
async fn write_until_compacted(leader: &Service, past: u64) {
    for i in 0..2000 {
        if leader.status().snapshot_index > past {
            return;
        }
        assert!(leader.exec(set(&format!("k{i}"), "v"), T).await.unwrap());
    }
    wait_until("compaction", || leader.status().snapshot_index > past).await;
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

/// A real disk whose writes and syncs can be made to fail with `errno`
/// (ENOSPC 28, EIO 5).
struct FlakyDisk {
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    errno: i32,
}

struct FlakyFile {
    inner: Box<dyn DiskFile>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    errno: i32,
}

impl DiskFile for FlakyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(self.errno));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(self.errno));
        }
        self.inner.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Disk for FlakyDisk {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        RealDisk.create_dir_all(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(FlakyFile {
            inner: RealDisk.open(path)?,
            failing: self.failing.clone(),
            errno: self.errno,
        }))
    }
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(FlakyFile {
            inner: RealDisk.create(path)?,
            failing: self.failing.clone(),
            errno: self.errno,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealDisk.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        RealDisk.remove(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealDisk.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealDisk.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        RealDisk.exists(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_with_an_error_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut c = config(dir.path());
    c.disk = std::sync::Arc::new(FlakyDisk {
        failing: failing.clone(),
        errno: 28,
    });
    let kv = KvState::new();
    let svc = Service::start(c.clone(), kv.clone()).await.unwrap();
    svc.init().await.unwrap();
    wait_until("leadership", || svc.is_leader()).await;
    assert!(svc.exec(set("a", "1"), T).await.unwrap());

    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let short = Duration::from_millis(300);
    assert!(matches!(
        svc.exec(set("b", "2"), short).await,
        Err(dqlite_consensus::Error::Timeout)
    ));
    wait_until("the error to be reported", || svc.err().is_some()).await;
    assert!(
        svc.err().unwrap().contains("No space left"),
        "{:?}",
        svc.err()
    );
    assert_eq!(kv.get("b"), None, "not applied while not durable");
    // Once the failure is known, new writes are refused at once.
    assert!(matches!(
        svc.exec(set("x", "y"), T).await,
        Err(dqlite_consensus::Error::DiskFull(_))
    ));
    // Reads of what is safely committed keep working.
    assert_eq!(kv.get("a").as_deref(), Some("1"));

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("recovery", || svc.err().is_none()).await;
    wait_until("the pending write to apply", || kv.get("b").is_some()).await;
    assert!(svc.exec(set("c", "3"), T).await.unwrap());
    svc.stop().await;

    // Nothing was corrupted: a restart sees every write.
    let kv2 = KvState::new();
    let svc = Service::start(c, kv2.clone()).await.unwrap();
    wait_until("leadership after restart", || svc.is_leader()).await;
    svc.wait_read(T).await.unwrap();
    assert_eq!(kv2.dump(), kv.dump());
    svc.stop().await;
}

/// Three voters, node `flaky` on a disk that fails (EIO) while `failing`
/// is set; node 1 leads.
async fn cluster_with_a_flaky_disk(
    flaky: usize,
) -> (
    Vec<tempfile::TempDir>,
    Arc<std::sync::atomic::AtomicBool>,
    Vec<KvState>,
    Vec<Service>,
) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kvs: Vec<KvState> = (0..3).map(|_| KvState::new()).collect();
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut c = config(d.path());
        if i == flaky {
            c.disk = std::sync::Arc::new(FlakyDisk {
                failing: failing.clone(),
                errno: 5,
            });
        }
        nodes.push(Service::start(c, kvs[i].clone()).await.unwrap());
    }
    nodes[0].init().await.unwrap();
    wait_until("leadership", || nodes[0].is_leader()).await;
    let boot = nodes[0].address().to_string();
    nodes[1].join(&boot).await.unwrap();
    nodes[2].join(&boot).await.unwrap();
    wait_until("three voters", || {
        let m = nodes[0].membership();
        m.len() == 3 && m.iter().all(|n| n.role == Role::Voter)
    })
    .await;
    (dirs, failing, kvs, nodes)
}

/// A follower whose log write fails must not acknowledge; its persistence
/// thread retries until the disk heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_cannot_be_written_acknowledges_nothing_until_it_heals() {
    let (_dirs, failing, kvs, nodes) = cluster_with_a_flaky_disk(2).await;
    for i in 0..50 {
        assert!(nodes[0].exec(set(&format!("k{i}"), "v"), T).await.unwrap());
    }
    wait_until("node 3 applied them", || kvs[2].get("k49").is_some()).await;

    // Only node 3 can make a quorum with the leader now, and its log
    // cannot be written: nothing commits.
    nodes[1].stop().await;
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = nodes[0].exec(set("b", "2"), Duration::from_secs(1)).await;
    assert!(
        !matches!(r, Ok(true)),
        "acknowledged without a durable log on a quorum: {r:?}"
    );
    wait_until("node 3 reports the fault", || nodes[2].err().is_some()).await;
    assert_eq!(kvs[0].get("b"), None, "committed without node 3's fsync");

    // The disk heals: the retried write is acknowledged and commits.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("node 3 recovers", || nodes[2].err().is_none()).await;
    wait_until("b commits", || kvs[0].get("b").is_some()).await;
    assert!(nodes[0].exec(set("c", "3"), T).await.unwrap());
    wait_until("node 3 applied c", || kvs[2].get("c").is_some()).await;
    assert_eq!(kvs[2].dump(), kvs[0].dump());
    nodes[0].stop().await;
    nodes[2].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_and_the_allow_list_gates_joins() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(
            Service::start(config(d.path()), KvState::new())
                .await
                .unwrap(),
        );
    }
    nodes[0].init().await.unwrap();
    wait_until("leader", || nodes[0].is_leader()).await;
    let boot = nodes[0].address().to_string();
    nodes[0].set_allowlist(true).await.unwrap();
    nodes[0].allow_member(nodes[1].address()).await.unwrap();
    // Not on the list: refused, and no id is burned.
    assert!(matches!(
        nodes[2].join(&boot).await,
        Err(dqlite_consensus::Error::AddressNotAllowed)
    ));
    nodes[1].join(&boot).await.unwrap();
    wait_until("node 2 promoted", || {
        nodes[0]
            .membership()
            .iter()
            .any(|n| n.id == 2 && n.role == Role::Voter)
    })
    .await;
    // Voter -> standby -> spare -> voter.
    let addr = nodes[1].address().to_string();
    let role_of = |s: &Service| s.membership().iter().find(|n| n.id == 2).map(|n| n.role);
    nodes[0].set_role(&addr, Role::StandBy).await.unwrap();
    assert_eq!(role_of(&nodes[0]), Some(Role::StandBy));
    assert!(!nodes[0].status().cluster.nodes.is_empty());
    nodes[0].set_role(&addr, Role::Spare).await.unwrap();
    assert_eq!(role_of(&nodes[0]), Some(Role::Spare));
    nodes[0].set_role(&addr, Role::Voter).await.unwrap();
    assert_eq!(role_of(&nodes[0]), Some(Role::Voter));
    assert!(nodes[0].exec(set("k", "v"), T).await.unwrap());
    nodes[1].wait_read(T).await.unwrap();
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_is_refused_and_the_node_keeps_serving() {
    use dqlite_consensus::transport::client::{connect, full, request};
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(config(dir.path()), KvState::new())
        .await
        .unwrap();
    svc.init().await.unwrap();
    wait_until("leadership", || svc.is_leader()).await;
    let addr = svc.address().to_string();
    let cases: [(&str, Vec<u8>); 8] = [
        ("/raft/msg", vec![0xff; 64]),
        ("/raft/msg", vec![200, 0, 0, 0, 1, 2, 3]),
        ("/raft/stream", vec![0xff; 64]),
        ("/raft/stream", vec![3, 0, 0, 0, 0xff, 0xff, 0xff]),
        // A stream that ends inside a message.
        ("/raft/stream", vec![200, 0, 0, 0, 1, 2, 3]),
        ("/raft/join", b"{not json".to_vec()),
        ("/raft/snapshot", vec![4, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3]),
        ("/raft/nowhere", Vec::new()),
    ];
    for (path, body) in cases {
        let mut conn = connect(&addr, &dqlite_client::Dial::tcp(), None)
            .await
            .unwrap();
        let (status, _) = request(&mut conn, &addr, path, &[], full(body))
            .await
            .unwrap();
        assert!(status.is_client_error(), "{path}: {status}");
    }
    assert!(svc.exec(set("still", "serving"), T).await.unwrap());
    svc.stop().await;
}

/// A peer that does not know `/raft/stream` (an older node answers 404)
/// still gets the messages, one `/raft/msg` request per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_stream_gets_one_request_per_batch() {
    use dqlite_consensus::transport::{decode_frames, HttpTransport, Transport};
    use http_body_util::BodyExt;
    use raft::eraftpb::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<Message>)>();
    let old_peer = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen_tx.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let mut status = hyper::StatusCode::NOT_FOUND;
                        let mut messages = Vec::new();
                        if path == "/raft/msg" {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            messages = decode_frames(&body).unwrap();
                            status = hyper::StatusCode::OK;
                        }
                        let _ = seen.send((path, messages));
                        let mut r =
                            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let snapshots =
        dqlite_consensus::storage::SnapshotStore::new(Arc::new(RealDisk), dir.path()).unwrap();
    let (feedback, _feedback_rx) = crossbeam_channel::unbounded();
    let transport = HttpTransport::new(
        1,
        "127.0.0.1:9".into(),
        None,
        dqlite_client::Dial::tcp(),
        feedback,
        snapshots,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    transport.set_peers(vec![(2, addr)]);
    // The first message goes into the refused stream (raft would resend
    // it): send until one arrives by request.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut paths = Vec::new();
    for term in 1.. {
        assert!(Instant::now() < deadline, "no request arrived: {paths:?}");
        transport.send(Message {
            to: 2,
            from: 1,
            term,
            ..Default::default()
        });
        let Ok(Some((path, messages))) =
            tokio::time::timeout(Duration::from_millis(200), seen_rx.recv()).await
        else {
            continue;
        };
        if path == "/raft/msg" {
            assert!(!messages.is_empty());
            assert!(messages.iter().all(|m| m.to == 2 && m.from == 1));
            break;
        }
        paths.push(path);
    }
    assert_eq!(paths, vec!["/raft/stream".to_string()], "one stream tried");
    old_peer.abort();
}

/// dqlite's ADD + ASSIGN flow: a node started with its own id and no
/// cluster waits; added as a spare it stays out of raft, assigned voter it
/// starts from the leader's messages, catches up as a standby and is
/// promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_node_is_added_then_assigned_voter() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (kv_a, kv_b) = (KvState::new(), KvState::new());
    let a = Service::start(config(dirs[0].path()), kv_a.clone())
        .await
        .unwrap();
    a.init().await.unwrap();
    wait_until("leadership", || a.is_leader()).await;
    assert!(a.exec(set("before", "1"), T).await.unwrap());

    let mut cb = config(dirs[1].path());
    cb.id = 7;
    let b = Service::start(cb, kv_b.clone()).await.unwrap();
    assert_eq!(b.status().applied, 0, "a waiting node has no cluster");
    let spare = dqlite_consensus::NodeInfo::new(7, b.address(), Role::Spare);
    a.set_member(spare).await.unwrap();
    a.set_role(b.address(), Role::Voter).await.unwrap();
    wait_until("node 7 caught up", || {
        kv_b.get("before").as_deref() == Some("1")
    })
    .await;
    wait_until("node 7 sees itself a voter", || {
        b.status().cluster.nodes.get(&7).map(|n| n.role) == Some(Role::Voter)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Removing a voter is refused when the voters left would not hold an
/// online quorum; ASSIGN to voter of a node that never answers fails after
/// the bounded wait and leaves the voter set as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_never_wedge_the_cluster() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(
            Service::start(config(d.path()), KvState::new())
                .await
                .unwrap(),
        );
    }
    nodes[0].init().await.unwrap();
    wait_until("leadership", || nodes[0].is_leader()).await;
    for n in &nodes[1..] {
        n.join(nodes[0].address()).await.unwrap();
    }
    wait_until("three voters", || {
        let s = nodes[0].status();
        s.cluster
            .nodes
            .values()
            .filter(|n| n.role == Role::Voter)
            .count()
            == 3
            && s.progress.values().all(|(_, online)| *online)
    })
    .await;

    let voters = |s: &Service| -> Vec<u64> {
        let mut v: Vec<u64> = s
            .status()
            .cluster
            .nodes
            .values()
            .filter(|n| n.role == Role::Voter)
            .map(|n| n.id)
            .collect();
        v.sort();
        v
    };
    let before = voters(&nodes[0]);
    let nowhere = "127.0.0.1:1";
    nodes[0]
        .set_member(dqlite_consensus::NodeInfo::new(9, nowhere, Role::Spare))
        .await
        .unwrap();
    let started = Instant::now();
    let err = nodes[0].set_role(nowhere, Role::Voter).await.unwrap_err();
    assert!(
        matches!(err, dqlite_consensus::Error::NotCaughtUp { id: 9, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(voters(&nodes[0]), before);
    assert_eq!(
        nodes[0].status().cluster.nodes.get(&9).map(|n| n.role),
        Some(Role::Spare)
    );

    // One follower dies; once the leader counts it offline, removing the
    // other follower would leave one online voter of two: refused.
    let dead = nodes.pop().unwrap();
    let dead_id = dead.status().id;
    dead.stop().await;
    wait_until("the dead follower counted offline", || {
        nodes[0]
            .status()
            .progress
            .get(&dead_id)
            .is_some_and(|(_, online)| !online)
    })
    .await;
    let err = nodes[0].evict(nodes[1].address()).await.unwrap_err();
    assert!(err.to_string().contains("fewer than a quorum"), "{err}");
    assert!(nodes[0].exec(set("still", "writable"), T).await.unwrap());
    for n in nodes {
        n.stop().await;
    }
}

/// A key-value state with the hooks a test needs (each off when `None`):
/// an instruction it cannot apply, snapshot images held at a gate, and
/// snapshots from the leader rebuilt off the driver thread.
struct HookedKv {
    inner: KvState,
    /// Applying it fails (as for a state that cannot read its own data).
    refused: Option<Vec<u8>>,
    /// Snapshot images after the bootstrap one report the index they freeze
    /// at and wait at the gate before writing, to hold a snapshot "in
    /// progress" for as long as a test needs.
    gated_images: Option<ImageGate>,
    /// Rebuilds snapshots from the leader ([`State::preparer`]).
    prepare: Option<Arc<GatedPrepare>>,
}

/// Where a gated image reports, and the gate it waits at.
type ImageGate = (
    std::sync::mpsc::Sender<u64>,
    Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
);

impl HookedKv {
    fn new(inner: KvState) -> Self {
        Self {
            inner,
            refused: None,
            gated_images: None,
            prepare: None,
        }
    }
}

/// Waits until the test opens `gate`: one message lets one caller through,
/// dropping the sender lets every later one through.
fn pass_gate(gate: &Mutex<std::sync::mpsc::Receiver<()>>) -> std::io::Result<()> {
    let opened = gate.lock().unwrap().recv_timeout(Duration::from_secs(60));
    if opened == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
        return Err(std::io::Error::other("gate never opened"));
    }
    Ok(())
}

struct GatedImage {
    inner: Box<dyn Image>,
    gate: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl Image for GatedImage {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        pass_gate(&self.gate)?;
        self.inner.write_to(out)
    }
}

impl State for HookedKv {
    fn apply(&mut self, index: u64, instruction: &[u8]) -> std::io::Result<bool> {
        if self.refused.as_deref() == Some(instruction) {
            return Err(std::io::Error::other("a page cannot be read"));
        }
        self.inner.apply(index, instruction)
    }
    fn skip(&mut self, index: u64) {
        self.inner.skip(index)
    }
    fn freeze(&self) -> std::io::Result<Box<dyn Image>> {
        // The bootstrap snapshot `init` writes is never held.
        let Some((started, gate)) = self
            .gated_images
            .as_ref()
            .filter(|_| self.inner.applied_index() > 0)
        else {
            return self.inner.freeze();
        };
        let _ = started.send(self.inner.applied_index());
        Ok(Box::new(GatedImage {
            inner: self.inner.freeze()?,
            gate: Arc::clone(gate),
        }))
    }
    fn restore(&mut self, index: u64, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.inner.restore(index, input)
    }
    fn preparer(&self) -> Option<Arc<dyn dqlite_consensus::Prepare>> {
        self.prepare
            .clone()
            .map(|p| p as Arc<dyn dqlite_consensus::Prepare>)
    }
    fn install(&mut self, index: u64, prepared: dqlite_consensus::Prepared) -> std::io::Result<()> {
        let image = prepared
            .downcast::<Vec<u8>>()
            .map_err(|_| std::io::Error::other("not prepared here"))?;
        self.inner.restore(index, &mut image.as_slice())
    }
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_while_a_snapshot_is_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = compacting_config(dir.path());
    let kv = KvState::new();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (open, gate) = std::sync::mpsc::channel();
    let state = HookedKv {
        gated_images: Some((started_tx, Arc::new(Mutex::new(gate)))),
        ..HookedKv::new(kv.clone())
    };
    let svc = Service::start(c.clone(), state).await.unwrap();
    svc.init().await.unwrap();
    wait_until("leadership", || svc.is_leader()).await;
    let mut frozen_at = None;
    for i in 0..20 {
        assert!(svc.exec(set(&format!("a{i}"), "v"), T).await.unwrap());
        if let Ok(index) = started.try_recv() {
            frozen_at = Some(index);
            break;
        }
    }
    let frozen_at = match frozen_at {
        Some(i) => i,
        None => started.recv_timeout(T).expect("a snapshot was started"),
    };
    // The snapshot is stuck at its gate: the driver must go on committing.
    for i in 0..50 {
        assert!(svc.exec(set(&format!("b{i}"), "v"), T).await.unwrap());
    }
    let status = svc.status();
    assert!(status.applied > frozen_at + 49, "{status:?}");
    assert!(
        status.snapshot_index < frozen_at,
        "the log is not compacted behind a snapshot before it is written"
    );
    drop(open);
    wait_until("the snapshot to be recorded", || {
        svc.status().snapshot_index >= frozen_at
    })
    .await;
    svc.stop().await;

    // Restart from the snapshot written in the background plus the log.
    let kv2 = KvState::new();
    let svc = Service::start(c, kv2.clone()).await.unwrap();
    wait_until("leadership after restart", || svc.is_leader()).await;
    svc.wait_read(T).await.unwrap();
    assert_eq!(kv2.dump(), kv.dump());
    assert_eq!(kv2.dump().len(), kv.dump().len());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_cannot_be_written_hands_over_and_no_index_is_reused() {
    let (dirs, failing, kvs, nodes) = cluster_with_a_flaky_disk(0).await;
    assert!(nodes[0].exec(set("a", "1"), T).await.unwrap());

    // EIO on every write and fsync of node 1's log: its write is never
    // acknowledged, and it hands leadership to a node whose disk works.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = nodes[0].exec(set("b", "2"), Duration::from_secs(1)).await;
    assert!(
        !matches!(r, Ok(true)),
        "acknowledged without a durable log: {r:?}"
    );
    wait_until("another leader", || {
        nodes[1].is_leader() || nodes[2].is_leader()
    })
    .await;
    let new = if nodes[1].is_leader() { 1 } else { 2 };
    assert!(nodes[new].exec(set("c", "3"), T).await.unwrap());

    // The disk heals: node 1 writes what it was sent and converges.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("node 1 recovers", || nodes[0].err().is_none()).await;
    wait_until("every node applied c", || {
        kvs.iter().all(|kv| kv.get("c").is_some())
    })
    .await;
    assert!(nodes[new].exec(set("d", "4"), T).await.unwrap());
    wait_until("every node applied d", || {
        kvs.iter().all(|kv| kv.get("d").is_some())
    })
    .await;
    for kv in &kvs {
        assert_eq!(kv.dump(), kvs[new].dump());
    }
    for n in &nodes {
        n.stop().await;
    }
    // No index holds two entries: every index any two logs share holds
    // the same entry (term and bytes) on both.
    let logs: Vec<std::collections::BTreeMap<u64, (u64, Vec<u8>)>> = dirs
        .iter()
        .map(|d| {
            let raft_dir = dqlite_consensus::storage::raft_dir(d.path());
            let disk = std::sync::Arc::new(RealDisk);
            let after = dqlite_consensus::storage::SnapshotStore::read_only(disk, &raft_dir)
                .latest(false)
                .unwrap()
                .map_or(0, |s| s.header.index);
            dqlite_consensus::storage::log::read_only(&RealDisk, &raft_dir, after)
                .unwrap()
                .into_iter()
                .map(|e| (e.index, (e.term, e.data.to_vec())))
                .collect()
        })
        .collect();
    let mut shared = 0;
    for (index, entry) in &logs[0] {
        for other in &logs[1..] {
            if let Some(theirs) = other.get(index) {
                assert_eq!(entry, theirs, "index {index} differs");
                shared += 1;
            }
        }
    }
    assert!(shared > 0, "the logs share no index");
}

/// Rebuilds snapshots from the leader off the driver thread; once armed,
/// each preparation reports its index and waits at the gate.
struct GatedPrepare {
    armed: std::sync::atomic::AtomicBool,
    started: Mutex<std::sync::mpsc::Sender<u64>>,
    gate: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl dqlite_consensus::Prepare for GatedPrepare {
    fn prepare(
        &self,
        index: u64,
        input: &mut dyn std::io::Read,
    ) -> std::io::Result<dqlite_consensus::Prepared> {
        let mut image = Vec::new();
        input.read_to_end(&mut image)?;
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = self.started.lock().unwrap().send(index);
            pass_gate(&self.gate)?;
        }
        Ok(Box::new(image))
    }
}

/// Three services with frequent snapshots, the third rebuilding snapshots
/// through `prepare` (armed: held at its gate): the first leads, the
/// second has joined, the third has not.
struct SlowInstallCluster {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Service>,
    kvs: Vec<KvState>,
    prepare: Arc<GatedPrepare>,
    /// Each index a held preparation started at.
    started: std::sync::mpsc::Receiver<u64>,
    /// Dropping it opens the gate.
    open: std::sync::mpsc::Sender<()>,
    boot: String,
}

async fn slow_install_cluster(armed: bool) -> SlowInstallCluster {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<Config> = dirs.iter().map(|d| compacting_config(d.path())).collect();
    let kvs: Vec<KvState> = (0..3).map(|_| KvState::new()).collect();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (open, gate) = std::sync::mpsc::channel();
    let prepare = Arc::new(GatedPrepare {
        armed: std::sync::atomic::AtomicBool::new(armed),
        started: Mutex::new(started_tx),
        gate: Mutex::new(gate),
    });
    let nodes = vec![
        Service::start(configs[0].clone(), kvs[0].clone())
            .await
            .unwrap(),
        Service::start(configs[1].clone(), kvs[1].clone())
            .await
            .unwrap(),
        Service::start(
            configs[2].clone(),
            HookedKv {
                prepare: Some(prepare.clone()),
                ..HookedKv::new(kvs[2].clone())
            },
        )
        .await
        .unwrap(),
    ];
    nodes[0].init().await.unwrap();
    wait_until("leadership", || nodes[0].is_leader()).await;
    let boot = nodes[0].address().to_string();
    nodes[1].join(&boot).await.unwrap();
    SlowInstallCluster {
        _dirs: dirs,
        nodes,
        kvs,
        prepare,
        started,
        open,
        boot,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_answering_while_a_snapshot_from_the_leader_is_installed() {
    let SlowInstallCluster {
        _dirs,
        nodes,
        kvs,
        prepare: _,
        started,
        open,
        boot,
    } = slow_install_cluster(true).await;
    // The log is compacted well past the start before node 3 joins: it is
    // sent a snapshot.
    write_until_compacted(&nodes[0], 20).await;
    let joiner = nodes[2].clone();
    let joined = tokio::spawn(async move { joiner.join(&boot).await });
    let index = tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("node 3 was sent a snapshot");
    assert!(index > 20);

    // The snapshot is being installed: node 3's driver still answers (it
    // redirects a write to the leader) and writes commit on the others.
    for i in 0..5 {
        let r = nodes[2].exec(set(&format!("x{i}"), "v"), T).await;
        assert!(
            matches!(r, Err(dqlite_consensus::Error::NotLeader { .. })),
            "node 3 did not answer while installing: {r:?}"
        );
        assert!(nodes[0].exec(set(&format!("y{i}"), "v"), T).await.unwrap());
    }
    assert_eq!(nodes[2].status().snapshots_installed, 0);
    drop(open);
    wait_until("node 3 installs the snapshot", || {
        nodes[2].status().snapshots_installed == 1
    })
    .await;
    joined.await.unwrap().unwrap();
    assert!(nodes[0].exec(set("z", "last"), T).await.unwrap());
    wait_until("node 3 catches up", || kvs[2].get("z").is_some()).await;
    assert_eq!(kvs[2].dump(), kvs[0].dump());
    for n in &nodes {
        n.stop().await;
    }
}

/// A spare made a voter that takes longer to catch up than the leader
/// waits (here: its snapshot install is held at a gate) stays a standby
/// instead of leaving raft again, so it keeps what it received, and it is
/// promoted once caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_promotion_slower_than_the_wait_keeps_the_node_catching_up() {
    let SlowInstallCluster {
        _dirs,
        nodes,
        kvs,
        prepare,
        started,
        open,
        boot,
    } = slow_install_cluster(false).await;
    nodes[2].join(&boot).await.unwrap();
    let addr = nodes[2].address().to_string();
    let role = |s: &Service| s.status().cluster.by_address(&addr).map(|n| n.role);
    wait_until("node 3 a member", || role(&nodes[0]).is_some()).await;
    // A spare, and the log compacted past it: it will need a snapshot.
    nodes[0].set_role(&addr, Role::Spare).await.unwrap();
    let compacted = nodes[0].status().snapshot_index;
    write_until_compacted(&nodes[0], compacted + 20).await;
    prepare
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = nodes[0].set_role(&addr, Role::Voter).await.unwrap_err();
    assert!(
        matches!(err, dqlite_consensus::Error::StillCatchingUp { .. }),
        "{err}"
    );
    tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("node 3 was sent a snapshot");
    assert_eq!(role(&nodes[0]), Some(Role::StandBy));
    drop(open);
    wait_until("node 3 caught up and promoted", || {
        role(&nodes[0]) == Some(Role::Voter) && nodes[2].status().snapshots_installed >= 1
    })
    .await;
    assert!(nodes[0].exec(set("z", "last"), T).await.unwrap());
    wait_until("node 3 applies", || kvs[2].get("z").is_some()).await;
    assert_eq!(kvs[2].dump(), kvs[0].dump());
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_state_cannot_apply_stops_the_node_and_is_applied_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kv = KvState::new();
    let state = HookedKv {
        refused: Some(set("b", "2")),
        ..HookedKv::new(kv.clone())
    };
    let svc = Service::start(config(dir.path()), state).await.unwrap();
    svc.init().await.unwrap();
    wait_until("leadership", || svc.is_leader()).await;
    assert!(svc.exec(set("a", "1"), T).await.unwrap());
    let applied = svc.status().applied;
    // Committed, but not applied: the node stops rather than skip it.
    assert!(svc.exec(set("b", "2"), T).await.is_err());
    let status = svc.status();
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot apply entry")),
        "{status:?}"
    );
    assert_eq!(status.applied, applied);
    assert!(svc.exec(set("c", "3"), T).await.is_err());
    assert_eq!(kv.get("b"), None);
    svc.stop().await;

    // Restarted with a state that can apply it, the entry is not lost.
    let kv = KvState::new();
    let svc = Service::start(config(dir.path()), kv.clone())
        .await
        .unwrap();
    wait_until("leadership after restart", || svc.is_leader()).await;
    svc.wait_read(T).await.unwrap();
    assert_eq!(kv.get("a").as_deref(), Some("1"));
    assert_eq!(kv.get("b").as_deref(), Some("2"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_state_is_snapshotted_after_as_many_bytes_of_log_as_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(compacting_config(dir.path()), KvState::new())
        .await
        .unwrap();
    svc.init().await.unwrap();
    wait_until("leadership", || svc.is_leader()).await;
    assert!(svc
        .exec(set("big", &"x".repeat(256 << 10)), T)
        .await
        .unwrap());
    for i in 0..10 {
        assert!(svc.exec(set(&format!("a{i}"), "v"), T).await.unwrap());
    }
    wait_until("a snapshot of the large value", || {
        svc.status().snapshot_index > 10
    })
    .await;
    let first = svc.status().snapshot_index;
    // Twenty times the entry threshold, a few KiB: no new 256 KiB image.
    for i in 0..200 {
        assert!(svc.exec(set(&format!("k{i}"), "v"), T).await.unwrap());
    }
    assert_eq!(svc.status().snapshot_index, first);
    // As many bytes of entries as the image: the next snapshot.
    for i in 0..3 {
        let value = "y".repeat(100 << 10);
        assert!(svc.exec(set(&format!("b{i}"), &value), T).await.unwrap());
    }
    wait_until("the next snapshot", || svc.status().snapshot_index > first).await;
    svc.stop().await;
}

/// The byte rule holds on a node that got its state as a snapshot from the
/// leader: it takes no snapshot of its own until as many bytes of entries
/// as that image were applied (it used to count from its empty start, and
/// so wrote the whole image again every `snapshot_threshold` entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_installed_a_snapshot_waits_for_as_many_bytes_of_log() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<_> = dirs.iter().map(|d| compacting_config(d.path())).collect();
    let leader = Service::start(configs[0].clone(), KvState::new())
        .await
        .unwrap();
    leader.init().await.unwrap();
    wait_until("leadership", || leader.is_leader()).await;
    let big = "x".repeat(256 << 10);
    assert!(leader.exec(set("big", &big), T).await.unwrap());
    write_until_compacted(&leader, 1).await;
    let kv = KvState::new();
    let node = Service::start(configs[1].clone(), kv.clone())
        .await
        .unwrap();
    node.join(leader.address()).await.unwrap();
    wait_until("the snapshot installed", || {
        node.status().snapshots_installed == 1
    })
    .await;
    let installed = node.status().snapshot_index;
    // Twenty times the entry threshold, a few KiB: no new 256 KiB image.
    for i in 0..200 {
        assert!(leader.exec(set(&format!("n{i}"), "v"), T).await.unwrap());
    }
    node.wait_read(T).await.unwrap();
    assert_eq!(kv.get("n199").as_deref(), Some("v"));
    assert_eq!(node.status().snapshot_index, installed);
    node.stop().await;
    leader.stop().await;
}
