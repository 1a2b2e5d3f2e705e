//! The receiving side of `/raft/`: a hyper service that can be handed an
//! already-accepted stream ([`serve_connection`], for a server that sniffs
//! the protocol on one port) or run its own listener ([`serve`]).

use crate::progress::Progress;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{decode_frames, take_frames, MAX_FRAME, MAX_MESSAGE_BODY};
use crate::membership::NodeInfo;
use crate::storage::SnapshotStore;

/// A join request (`POST /raft/join`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinRequest {
    /// The joiner's address.
    pub address: String,
    /// The id the joiner brings (0: allocate one).
    pub id: u64,
    /// The joiner's failure domain, recorded in the registry.
    #[serde(default)]
    pub failure_domain: u64,
    /// The joiner's weight, recorded in the registry.
    #[serde(default)]
    pub weight: u64,
}

/// A successful join answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinResponse {
    /// The joiner's id.
    pub id: u64,
    /// The members, so the joiner can reach them.
    pub nodes: Vec<NodeInfo>,
}

/// A refused join.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinRefusal {
    /// Machine-readable reason: `not_leader`, `not_allowed`,
    /// `uninitialized`, `id_in_use`, `unavailable`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// The leader's address when known (for `not_leader`).
    pub leader: Option<String>,
}

/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the HTTP handler needs from the service.
pub trait PeerService: Send + Sync + 'static {
    /// Hands peer messages to raft (`Err` when not running).
    fn deliver(&self, messages: Vec<Message>) -> Result<(), DeliverError>;
    /// Where incoming snapshots go (`None` when not running).
    fn snapshots(&self) -> Option<SnapshotStore>;
    /// Rebuilds the State from a received, verified snapshot off the
    /// driver thread, for the core to swap in when raft installs it
    /// (blocking; see [`crate::prepare`]). Default: nothing (the core
    /// restores in line).
    fn prepare_snapshot(&self, _info: &crate::storage::SnapshotInfo) -> Result<(), String> {
        Ok(())
    }
    /// Handles a join request.
    fn join(&self, request: JoinRequest) -> BoxFuture<Result<JoinResponse, JoinRefusal>>;
    /// A node waiting to be added received messages for `to` from the
    /// member `from` at `address`: start replicating from it if `to` is
    /// this node's id (the ADD + ASSIGN flow). Default: nothing.
    fn adopt(&self, _from: u64, _address: String, _to: u64) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Why incoming peer messages were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// This node cannot take messages now (answered 503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// This node leads and the sender is not a member: it was removed
    /// (answered 410 Gone, which tells the sender so).
    #[error("the sender is not a member of this cluster")]
    SenderRemoved,
}

/// The `/raft/` HTTP handler.
#[derive(Clone)]
pub struct RaftHttp {
    service: Arc<dyn PeerService>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

impl RaftHttp {
    /// A handler over `service`; `tls` is used by [`serve`] only.
    pub fn new(service: Arc<dyn PeerService>, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        RaftHttp { service, tls }
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/raft/stream" => self.on_stream(req).await,
            "/raft/msg" => self.on_messages(req).await,
            "/raft/snapshot" => self.on_snapshot(req).await,
            "/raft/join" => self.on_join(req).await,
            _ => reply(StatusCode::NOT_FOUND, "unknown path"),
        }
    }

    async fn on_messages(&self, req: Request<Incoming>) -> Resp {
        let from_address = req
            .headers()
            .get("x-raft-from-address")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = match Limited::new(req.into_body(), MAX_MESSAGE_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
        };
        let Some(messages) = decode_frames(&body) else {
            return reply(StatusCode::BAD_REQUEST, "malformed raft messages");
        };
        if let (Some(first), Some(address)) = (messages.first(), from_address) {
            self.service.adopt(first.from, address, first.to).await;
        }
        if messages
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            return reply(StatusCode::BAD_REQUEST, "snapshots go to /raft/snapshot");
        }
        match self.service.deliver(messages) {
            Ok(()) => reply(StatusCode::OK, ""),
            Err(DeliverError::Unavailable(why)) => reply(StatusCode::SERVICE_UNAVAILABLE, why),
            Err(DeliverError::SenderRemoved) => reply(
                StatusCode::GONE,
                "the sender is not a member of this cluster",
            ),
        }
    }

    /// A peer lane's long-lived stream: each batch is stepped into raft as
    /// it arrives. Answers when the sender ends it, or at once when the
    /// sender is no longer a member.
    async fn on_stream(&self, req: Request<Incoming>) -> Resp {
        let from_address = req
            .headers()
            .get("x-raft-from-address")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut body = req.into_body();
        // Bytes of a frame whose end has not arrived yet.
        let mut partial: Vec<u8> = Vec::new();
        // Bounded by the sender's stream: each frame consumes input.
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
            };
            let decoded = if partial.is_empty() {
                take_frames(&data).map(|(m, used)| {
                    partial.extend_from_slice(&data[used..]);
                    m
                })
            } else {
                partial.extend_from_slice(&data);
                take_frames(&partial).map(|(m, used)| {
                    partial.drain(..used);
                    m
                })
            };
            let Some(messages) = decoded else {
                return reply(StatusCode::BAD_REQUEST, "malformed raft messages");
            };
            if messages.is_empty() {
                continue;
            }
            if let (Some(first), Some(address)) = (messages.first(), &from_address) {
                self.service
                    .adopt(first.from, address.clone(), first.to)
                    .await;
            }
            if messages
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            {
                return reply(StatusCode::BAD_REQUEST, "snapshots go to /raft/snapshot");
            }
            match self.service.deliver(messages) {
                Ok(()) => {}
                // Dropped, as a full queue would drop them: raft retries.
                Err(DeliverError::Unavailable(why)) => debug!(why, "peer messages dropped"),
                Err(DeliverError::SenderRemoved) => {
                    return reply(
                        StatusCode::GONE,
                        "the sender is not a member of this cluster",
                    )
                }
            }
        }
        if !partial.is_empty() {
            return reply(StatusCode::BAD_REQUEST, "the stream ended inside a message");
        }
        reply(StatusCode::OK, "")
    }

    async fn on_snapshot(&self, req: Request<Incoming>) -> Resp {
        match self.receive_snapshot(req).await {
            Ok(()) => reply(StatusCode::OK, ""),
            Err(why) => {
                warn!(error = %why, "incoming snapshot refused");
                reply(StatusCode::BAD_REQUEST, why)
            }
        }
    }

    async fn receive_snapshot(&self, req: Request<Incoming>) -> Result<(), String> {
        let store = self.service.snapshots().ok_or("not running")?;
        // The sender's size, for progress lines only.
        let size = req
            .headers()
            .get("x-raft-snapshot-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut progress: Option<Progress> = None;
        let mut body = req.into_body();
        let mut head: Vec<u8> = Vec::new();
        let mut msg: Option<Message> = None;
        let mut incoming = None;
        // Bounded by the sender's body: each frame consumes input.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let mut data: Bytes = data;
            if msg.is_none() {
                head.extend_from_slice(&data);
                if head.len() < 4 {
                    continue;
                }
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if len > MAX_FRAME {
                    return Err("oversized snapshot message".into());
                }
                if head.len() < 4 + len {
                    continue;
                }
                let m = decode_frames(&head[..4 + len])
                    .and_then(|mut v| v.pop())
                    .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                    .ok_or("first frame is not a snapshot message")?;
                let meta = m.get_snapshot().get_metadata();
                let store = store.clone();
                let (term, index) = (meta.term, meta.index);
                progress = Some(Progress::start(
                    format!(
                        "receiving snapshot {index} (term {term}) from node {}",
                        m.from
                    ),
                    "bytes",
                    size,
                ));
                incoming = Some(
                    tokio::task::spawn_blocking(move || store.incoming(term, index))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?,
                );
                data = Bytes::copy_from_slice(&head[4 + len..]);
                msg = Some(m);
            }
            if data.is_empty() {
                continue;
            }
            let Some(mut sink) = incoming.take() else {
                continue;
            };
            if let Some(p) = progress.as_mut() {
                p.add(data.len() as u64);
            }
            sink = tokio::task::spawn_blocking(move || sink.write_chunk(&data).map(|()| sink))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            incoming = Some(sink);
        }
        let (Some(msg), Some(sink)) = (msg, incoming) else {
            return Err("empty snapshot stream".into());
        };
        let info = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let meta = msg.get_snapshot().get_metadata();
        if (info.header.index, info.header.term) != (meta.index, meta.term) {
            // The core would not find the file it is told to install.
            return Err("snapshot file does not match its message".into());
        }
        if let Some(p) = progress {
            p.finish();
        }
        let service = Arc::clone(&self.service);
        let prepared = tokio::task::spawn_blocking(move || service.prepare_snapshot(&info))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = prepared {
            // The core restores from the file instead.
            warn!(error = %e, "preparing the snapshot off the driver thread failed");
        }
        self.service.deliver(vec![msg]).map_err(|e| e.to_string())
    }

    async fn on_join(&self, req: Request<Incoming>) -> Resp {
        let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
        };
        let Ok(request) = serde_json::from_slice::<JoinRequest>(&body) else {
            return reply(StatusCode::BAD_REQUEST, "malformed join request");
        };
        match self.service.join(request).await {
            Ok(resp) => reply(
                StatusCode::OK,
                serde_json::to_vec(&resp).unwrap_or_default(),
            ),
            Err(refusal) => reply(
                StatusCode::CONFLICT,
                serde_json::to_vec(&refusal).unwrap_or_default(),
            ),
        }
    }
}

/// Serves HTTP/1.1 `/raft/` requests on an accepted stream until it closes.
pub async fn serve_connection<I>(io: I, http: RaftHttp)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let http = http.clone();
        async move { Ok::<_, std::convert::Infallible>(http.handle(req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        debug!(error = %e, "raft connection ended");
    }
}

/// Accepts connections on `listener` (TLS when configured) until
/// `shutdown` resolves; each connection runs in its own task.
pub async fn serve(listener: TcpListener, http: RaftHttp, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let acceptor = http.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let http = http.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => serve_connection(tls, http).await,
                            Err(e) => debug!(error = %e, "TLS handshake failed"),
                        },
                        None => serve_connection(tcp, http).await,
                    }
                });
            }
        }
    }
}
