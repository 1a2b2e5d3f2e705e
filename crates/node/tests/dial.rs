//! The dial function: a three-node cluster whose nodes advertise
//! addresses nothing listens on, so every connection between them (raft
//! traffic, joins, the role manager's probes) and the client's leader
//! discovery only work through the user's dial function, which sends
//! them through an in-test proxy on 127.0.0.1 that counts them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_node::{Dial, Node, Options, Role};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Advertised address → (the address the node listens on, connections
/// proxied to it).
type Routes = Arc<Mutex<HashMap<String, (String, u64)>>>;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A proxy: each connection names its target on a first line, then
/// carries bytes both ways.
async fn proxy(routes: Routes) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut line = String::new();
                // A route line is short; anything longer is not ours.
                let read = (&mut client).take(256).read_line(&mut line).await;
                if read.is_err() {
                    return;
                }
                let target = {
                    let mut routes = routes.lock().unwrap();
                    match routes.get_mut(line.trim_end()) {
                        Some((to, count)) => {
                            *count += 1;
                            to.clone()
                        }
                        None => return,
                    }
                };
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                // Bytes read past the route line belong to the target.
                if server.write_all(client.buffer()).await.is_err() {
                    return;
                }
                let mut client = client.into_inner();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    address
}

fn dial(proxy: String) -> Dial {
    Dial::new(move |address: String| {
        let proxy = proxy.clone();
        async move {
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            s.write_all(format!("{address}\n").as_bytes()).await?;
            Ok(s)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_peers_dial_through_a_proxy_replicates() {
    let routes: Routes = Arc::default();
    let proxy = proxy(Arc::clone(&routes)).await;
    let dial = dial(proxy);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut advertised: Vec<String> = Vec::new();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        // Nothing listens on the advertised port: only the proxy knows
        // where the node is.
        let adv = format!("127.0.0.1:{}", free_port());
        let bind = format!("127.0.0.1:{}", free_port());
        routes
            .lock()
            .unwrap()
            .insert(adv.clone(), (bind.clone(), 0));
        let mut options = Options::default()
            .with_network_latency(Duration::from_millis(10))
            .with_bind_address(bind)
            .with_dial(dial.clone());
        if i > 0 {
            options = options.with_join([advertised[0].clone()]);
        }
        let mut node = Node::new(i as u64 + 1, adv.clone(), dir.path(), options);
        node.start().await.unwrap();
        advertised.push(adv);
        nodes.push(node);
    }

    let mut config = dqlite_client::Config::default();
    config.dial = dial.clone();
    config.connect_timeout = Duration::from_secs(10);
    config.give_up_when_all_refuse = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let client = loop {
        let mut c = dqlite_client::Client::find_leader(&advertised, &config)
            .await
            .unwrap();
        let members = c.cluster().await.unwrap();
        if members.iter().filter(|n| n.role == Role::Voter).count() == 3 {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "{members:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut db = client.open("app").await.unwrap();
    db.exec("CREATE TABLE t (v)", ()).await.unwrap();
    db.exec("INSERT INTO t VALUES (1), (2), (3)", ())
        .await
        .unwrap();
    drop(db);

    // Every node has the same image: replication went through the proxy.
    let images = || -> Vec<Option<Vec<u8>>> {
        nodes
            .iter()
            .map(|n| n.store().and_then(|s| s.image("app")))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let i = images();
        if i[0].is_some() && i.iter().all(|x| *x == i[0]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not replicated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every node was reached through the proxy (and could be no other way).
    let counts: Vec<u64> = {
        let routes = routes.lock().unwrap();
        advertised.iter().map(|a| routes[a].1).collect()
    };
    assert!(
        counts.iter().all(|&c| c > 0),
        "proxied connections: {counts:?}"
    );
    assert!(
        TcpStream::connect(&advertised[0]).await.is_err(),
        "the advertised address must not be directly reachable"
    );
    for mut n in nodes {
        n.close().await.unwrap();
    }
}
