//! A scriptable fake dqlite server for protocol tests: each accepted
//! connection is handed to the test's handler, which reads requests and
//! writes responses with `dqlite-wire`, so a test states exactly what the
//! server does and can assert on every request the client sends.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use dqlite_wire::{Header, Request, Response, HEADER_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every wait in a fake-server handler is bounded by this.
pub const STEP: Duration = Duration::from_secs(5);

pub struct FakeServer {
    listener: TcpListener,
    pub address: String,
}

impl FakeServer {
    pub async fn bind() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        FakeServer { listener, address }
    }

    /// Serves every connection with `handler` (connection index, conn).
    pub fn serve<F, Fut>(self, handler: F) -> JoinHandle<()>
    where
        F: Fn(usize, FakeConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let handler = std::sync::Arc::new(handler);
            for index in 0..1000 {
                let Ok((stream, _)) = self.listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                tokio::spawn(async move { handler(index, FakeConn { stream }).await });
            }
        })
    }
}

pub struct FakeConn {
    pub stream: TcpStream,
}

impl FakeConn {
    pub async fn handshake(&mut self) -> u64 {
        let mut buf = [0u8; 8];
        tokio::time::timeout(STEP, self.stream.read_exact(&mut buf))
            .await
            .expect("handshake in time")
            .expect("handshake");
        u64::from_le_bytes(buf)
    }

    /// The next request with its header, or None when the client closed.
    pub async fn recv_with_header(&mut self) -> Option<(Header, Request)> {
        let mut header = [0u8; HEADER_SIZE];
        match tokio::time::timeout(STEP, self.stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no request within {STEP:?}"),
        }
        let header = Header::decode(header);
        let mut body = vec![0u8; header.body_len() as usize];
        tokio::time::timeout(STEP, self.stream.read_exact(&mut body))
            .await
            .expect("body in time")
            .expect("body");
        let request = Request::decode(&header, &body).expect("client sent a valid request");
        Some((header, request))
    }

    pub async fn recv(&mut self) -> Request {
        self.recv_with_header().await.expect("a request").1
    }

    /// True if the client closed the connection (EOF) within `STEP`.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(STEP, self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub async fn send(&mut self, response: Response) {
        let mut out = Vec::new();
        response.encode(&mut out);
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The client may have gone away on purpose; tests assert on the
        // client side.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Answers the handshake and LEADER with `leader`, and registers the
    /// client if it sends CLIENT: the usual opening of a leader connection.
    pub async fn accept_as_leader(&mut self, leader: &str) {
        assert_eq!(self.handshake().await, 1);
        assert_eq!(self.recv().await, Request::Leader);
        self.send(Response::Server {
            id: 1,
            address: leader.to_owned(),
        })
        .await;
        assert_eq!(self.recv().await, Request::Client { id: 0 });
        self.send(Response::Welcome {
            heartbeat_timeout: 15000,
        })
        .await;
    }

    /// `accept_as_leader` followed by OPEN of `name`.
    pub async fn accept_and_open(&mut self, leader: &str, name: &str) {
        self.accept_as_leader(leader).await;
        match self.recv().await {
            Request::Open {
                name: got,
                flags,
                vfs,
            } => {
                assert_eq!(got, name);
                assert_eq!(flags, 0);
                assert_eq!(vfs, "volatile");
            }
            other => panic!("expected OPEN, got {other:?}"),
        }
        self.send(Response::Db { id: 0 }).await;
    }
}

pub fn rows(columns: &[&str], rows: Vec<Vec<dqlite_wire::Value>>, more: bool) -> Response {
    Response::Rows(dqlite_wire::Rows {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        more,
    })
}

pub fn fast_config() -> dqlite_client::Config {
    let mut config = dqlite_client::Config::default();
    config.dial_timeout = Duration::from_secs(2);
    config.attempt_timeout = Duration::from_secs(3);
    config.connect_timeout = Duration::from_secs(5);
    config.request_timeout = Duration::from_secs(5);
    config.backoff_base = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    config.max_rounds = 3;
    config
}
