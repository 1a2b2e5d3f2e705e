//! The Node API in-process: start, serve SQL through the Rust client,
//! restart from the same directory with the data intact, close.

use std::time::Duration;

use dqlite_node::{Node, Options, Role, BOOTSTRAP_ID};

fn options() -> Options {
    Options::default().with_network_latency(Duration::from_millis(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_restarts_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(BOOTSTRAP_ID, "127.0.0.1:0", dir.path(), options());
    node.start().await.unwrap();
    assert_eq!(node.id(), BOOTSTRAP_ID);
    let address = node.address().to_string();
    assert!(!address.ends_with(":0"));
    assert!(node.bind_address().is_some());

    let config = dqlite_client::Config::default();
    let mut client = dqlite_client::Client::find_leader(&[&address], &config)
        .await
        .unwrap();
    let members = client.cluster().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, Role::Voter);
    let mut db = client.open("app").await.unwrap();
    db.exec("CREATE TABLE t (v)", ()).await.unwrap();
    db.exec("INSERT INTO t VALUES (1), (2)", ()).await.unwrap();
    drop(db);
    let image = node.store().unwrap().image("app").unwrap();
    node.close().await.unwrap();

    // Same directory, same port: the data comes back from the log.
    let port = address.rsplit(':').next().unwrap().to_string();
    let mut node = Node::new(0, format!("127.0.0.1:{port}"), dir.path(), options());
    node.start().await.unwrap();
    assert_eq!(node.id(), BOOTSTRAP_ID);
    let store = node.store().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.image("app").as_ref() != Some(&image) {
        assert!(tokio::time::Instant::now() < deadline, "data not restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.close().await.unwrap();
}

#[test]
fn offline_helpers_read_and_reconfigure_a_stopped_node() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let address = rt.block_on(async {
        let mut node = Node::new(1, "127.0.0.1:0", dir.path(), options());
        node.start().await.unwrap();
        let a = node.address().to_string();
        node.close().await.unwrap();
        a
    });
    let before = dqlite_node::read_last_entry_info(dir.path()).unwrap();
    assert!(before.index >= 1);
    assert_eq!(
        dqlite_node::read_last_entry_info(dir.path()).unwrap(),
        before
    );
    let nodes = [dqlite_node::NodeInfo {
        id: 1,
        address,
        role: Role::Voter,
        ..Default::default()
    }];
    let after = dqlite_node::reconfigure_membership_ext(dir.path(), &nodes).unwrap();
    assert!(after > before);
    assert_eq!(
        dqlite_node::read_last_entry_info(dir.path()).unwrap(),
        after
    );
    // A node that is not in the new membership is refused.
    let wrong = [dqlite_node::NodeInfo {
        id: 9,
        address: "127.0.0.1:1".into(),
        role: Role::Voter,
        ..Default::default()
    }];
    assert!(dqlite_node::reconfigure_membership_ext(dir.path(), &wrong).is_err());
}
