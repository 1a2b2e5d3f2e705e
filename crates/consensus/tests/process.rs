//! Process-level tests: real `dqlite-kv` processes on 127.0.0.1, each with
//! its own data directory, killed with SIGKILL and restarted. Every wait is
//! bounded in time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dqlite_consensus::kv::KvCommand;
use dqlite_consensus::transport::client::{connect, full, request};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dqlite-kv");

struct Node {
    child: Child,
    raft: String,
    api: String,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, raft: &str, extra: &[&str]) -> Node {
    let mut child = Command::new(BIN)
        .args(["run", "--address", raft, "--api", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .args(["--latency-ms", "15"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dqlite-kv");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node did not start");
    let mut raft_addr = None;
    let mut api = None;
    for part in line.split_whitespace() {
        if let Some(a) = part.strip_prefix("raft=") {
            raft_addr = Some(a.to_string());
        }
        if let Some(a) = part.strip_prefix("api=") {
            api = Some(a.to_string());
        }
    }
    Node {
        child,
        raft: raft_addr.expect("raft address"),
        api: api.expect("api address"),
        dir: dir.to_path_buf(),
    }
}

async fn call(api: &str, path: &str, body: Vec<u8>) -> Option<(u16, Value)> {
    let mut conn = connect(api, &dqlite_client::Dial::tcp(), None).await.ok()?;
    let (status, bytes) = request(&mut conn, api, path, &[], full(body)).await.ok()?;
    Some((status.as_u16(), serde_json::from_slice(&bytes).ok()?))
}

async fn status(node: &Node) -> Option<Value> {
    call(&node.api, "/status", Vec::new()).await.map(|(_, v)| v)
}

fn set(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Set {
        key: key.into(),
        value: value.into(),
    }
    .encode()
}

async fn exec(node: &Node, cmd: Vec<u8>) -> Option<bool> {
    match call(&node.api, "/exec", cmd).await {
        Some((200, v)) => v["satisfied"].as_bool(),
        _ => None,
    }
}

async fn get(node: &Node, key: &str) -> Option<Option<String>> {
    match call(&node.api, "/get", key.as_bytes().to_vec()).await {
        Some((200, v)) => Some(v["value"].as_str().map(String::from)),
        _ => None,
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn voters(node: &Node) -> usize {
    status(node).await.map_or(0, |s| {
        s["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["role"] == "Voter").count())
    })
}

async fn leader_of<'a>(nodes: &'a [&'a Node]) -> Option<&'a Node> {
    for n in nodes {
        if status(n).await.is_some_and(|s| s["is_leader"] == true) {
            return Some(n);
        }
    }
    None
}

/// Runs an (idempotent) command on whichever node leads, retrying while
/// leadership moves: on a loaded machine an election can come at any time.
async fn exec_on_leader(nodes: &[&Node], cmd: Vec<u8>) {
    eventually("a write through the leader", || async {
        let leader = leader_of(nodes).await?;
        exec(leader, cmd.clone()).await.filter(|s| *s)
    })
    .await;
}

async fn three_nodes(root: &Path, extra: &[&str]) -> Vec<Node> {
    let mut args = vec!["--init"];
    args.extend_from_slice(extra);
    let n1 = spawn(&root.join("n1"), "127.0.0.1:0", &args);
    let mut nodes = vec![n1];
    for name in ["n2", "n3"] {
        let mut args = vec!["--join", nodes[0].raft.as_str()];
        args.extend_from_slice(extra);
        let n = spawn(&root.join(name), "127.0.0.1:0", &args);
        nodes.push(n);
    }
    let first = &nodes[0];
    eventually("three voters", || async {
        (voters(first).await == 3).then_some(())
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_serving_after_the_leader_is_killed() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(root.path(), &[]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    for i in 0..20 {
        exec_on_leader(&all, set(&format!("k{i}"), "before")).await;
    }
    let leader_api = eventually("a leader", || leader_of(&all)).await.api.clone();
    let victim = nodes.iter().position(|n| n.api == leader_api).unwrap();
    let mut dead = nodes.remove(victim);
    dead.child.kill().unwrap(); // SIGKILL
    dead.child.wait().unwrap();

    let rest: Vec<&Node> = nodes.iter().collect();
    let new_leader = eventually("a new leader", || leader_of(&rest)).await;
    eventually("exec on the new leader", || async {
        exec(new_leader, set("after", "kill")).await.filter(|s| *s)
    })
    .await;
    for n in &nodes {
        let value = eventually("a linearizable read", || get(n, "after")).await;
        assert_eq!(value.as_deref(), Some("kill"));
        assert_eq!(get(n, "k19").await, Some(Some("before".into())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_by_snapshot_after_compaction() {
    let root = tempfile::tempdir().unwrap();
    let small = ["--snapshot-threshold", "16", "--snapshot-trailing", "4"];
    let mut nodes = three_nodes(root.path(), &small).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_api = eventually("a leader", || leader_of(&all)).await.api.clone();
    let follower = nodes.iter().position(|n| n.api != leader_api).unwrap();
    let stopped = nodes.remove(follower);
    let (dir, raft) = (stopped.dir.clone(), stopped.raft.clone());
    drop(stopped); // SIGKILL
    let live: Vec<&Node> = nodes.iter().collect();
    for i in 0..200 {
        exec_on_leader(&live, set("counter", &i.to_string())).await;
    }
    // The leader compacted past what the stopped node has.
    let leader = eventually("a leader", || leader_of(&live)).await;
    let st = status(leader).await.unwrap();
    assert!(st["snapshot_index"].as_u64().unwrap() > 100, "{st}");

    let mut args = vec![];
    args.extend_from_slice(&small);
    let back = spawn(&dir, &raft, &args);
    eventually("catch-up", || async {
        (get(&back, "counter").await == Some(Some("199".into()))).then_some(())
    })
    .await;
    let st = status(&back).await.unwrap();
    assert!(
        st["snapshots_installed"].as_u64().unwrap() >= 1,
        "caught up by snapshot: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_reconfigured_to_a_single_voter_serves_and_accepts_a_joiner() {
    let root = tempfile::tempdir().unwrap();
    let nodes = three_nodes(root.path(), &[]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    for i in 0..10 {
        exec_on_leader(&all, set(&format!("k{i}"), "v")).await;
    }
    // Let followers apply, then lose everything: all three processes die.
    for n in &nodes {
        eventually("replicated", || async {
            (get(n, "k9").await == Some(Some("v".into()))).then_some(())
        })
        .await;
    }
    let ids: Vec<(u64, String, PathBuf)> = {
        let mut v = Vec::new();
        for n in &nodes {
            let s = status(n).await.unwrap();
            v.push((s["id"].as_u64().unwrap(), n.raft.clone(), n.dir.clone()));
        }
        v
    };
    drop(nodes);

    // Pick the survivor with the most recent log (read-only inspection).
    let mut best: Option<((u64, u64), usize)> = None;
    for (i, (_, _, dir)) in ids.iter().enumerate() {
        let out = Command::new(BIN)
            .args(["last-entry", "--dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut it = text.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        let info = (it.next().unwrap(), it.next().unwrap());
        if best.map_or(true, |(b, _)| info > b) {
            best = Some((info, i));
        }
    }
    let (_, survivor) = best.unwrap();
    let (id, raft, dir) = ids[survivor].clone();
    let out = Command::new(BIN)
        .args(["reconfigure", "--dir"])
        .arg(&dir)
        .args(["--node", &format!("{id}={raft}=voter")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let alone = spawn(&dir, &raft, &[]);
    eventually("single-voter leadership", || async {
        exec(&alone, set("after", "recovery")).await.filter(|s| *s)
    })
    .await;
    assert_eq!(get(&alone, "k9").await, Some(Some("v".into())));
    let st = status(&alone).await.unwrap();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 1, "{st}");

    let joiner = spawn(&root.path().join("n4"), "127.0.0.1:0", &["--join", &raft]);
    eventually("joiner promoted", || async {
        (voters(&alone).await == 2).then_some(())
    })
    .await;
    let value = eventually("joiner reads", || get(&joiner, "after")).await;
    assert_eq!(value.as_deref(), Some("recovery"));
    assert_eq!(get(&joiner, "k3").await, Some(Some("v".into())));
}
