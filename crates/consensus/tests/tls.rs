//! Mutual TLS between peers, with a CA generated in the test.

use std::time::{Duration, Instant};

use dqlite_consensus::kv::{KvCommand, KvState};
use dqlite_consensus::transport::client::{connect, full, request};
use dqlite_consensus::transport::TlsConfig;
use dqlite_consensus::{Config, Service};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

const T: Duration = Duration::from_secs(10);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

fn node_tls(ca: &Ca) -> TlsConfig {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    TlsConfig {
        ca_pem: ca.cert.pem().into_bytes(),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    }
}

fn config(dir: &std::path::Path, tls: TlsConfig) -> Config {
    let mut c = Config::new("127.0.0.1:0", dir);
    c.network_latency = Duration::from_millis(10);
    c.tls = Some(tls);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_mutual_tls_and_strangers_are_refused() {
    let ca = ca();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let kv1 = KvState::new();
    let kv2 = KvState::new();
    let a = Service::start(config(dirs[0].path(), node_tls(&ca)), kv1.clone())
        .await
        .unwrap();
    let b = Service::start(config(dirs[1].path(), node_tls(&ca)), kv2.clone())
        .await
        .unwrap();
    a.init().await.unwrap();
    let deadline = Instant::now() + T;
    while !a.is_leader() {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.join(a.address()).await.unwrap();
    let cmd = KvCommand::Set {
        key: "k".into(),
        value: "over tls".into(),
    };
    assert!(a.exec(cmd.encode(), T).await.unwrap());
    b.wait_read(T).await.unwrap();
    assert_eq!(kv2.get("k").as_deref(), Some("over tls"));

    // A peer with a certificate from another CA cannot connect.
    let stranger = node_tls(&self::ca()).client_config().unwrap();
    assert!(
        connect(a.address(), &dqlite_client::Dial::tcp(), Some(&stranger))
            .await
            .is_err()
    );
    // Nor can a plaintext client talk to the TLS listener.
    let plain = async {
        let mut conn = connect(a.address(), &dqlite_client::Dial::tcp(), None)
            .await
            .ok()?;
        request(&mut conn, a.address(), "/raft/msg", &[], full(Vec::new()))
            .await
            .ok()
    };
    assert!(plain.await.is_none());
    a.stop().await;
    b.stop().await;
}
