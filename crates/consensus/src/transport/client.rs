//! The sending side: two tasks and two persistent HTTP/1.1 connections per
//! peer, each fed by a bounded queue: one for appends, one for everything
//! else (heartbeats, votes, responses), so that a large append never holds
//! back the messages that keep a leader in place; snapshot streams on
//! connections of their own. Each lane sends its batches as chunks of one
//! long-lived `/raft/stream` request (no response per batch: half the
//! wake-ups of a request per batch), or one `/raft/msg` request per batch
//! to a peer that does not know the stream.

use crate::progress::Progress;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender as FeedbackSender;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{encode_frame, Feedback, TlsConfig, Transport};
use crate::core::OutgoingSnapshot;
use crate::storage::SnapshotStore;
use dqlite_client::Dial;

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 1024;
/// Largest batch body sent in one request or stream chunk.
const BATCH_BYTES: usize = 8 << 20;
/// Chunks handed to a stream's connection and not yet written.
const STREAM_CHUNKS: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A snapshot stream fails when the peer takes no chunk for this long.
const STREAM_IDLE: Duration = Duration::from_secs(30);
const CHUNK: usize = 256 << 10;

/// Request bodies sent by this crate.
pub type Body = BoxBody<Bytes, std::convert::Infallible>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    /// The request failed.
    #[error("request to {0}: {1}")]
    Request(String, String),
}

/// An HTTP/1.1 client connection: the future that does its I/O.
type Connection = hyper::client::conn::http1::Connection<TokioIo<Box<dyn Io>>, Body>;

/// Opens an HTTP/1.1 connection to `address` with `dial` (and TLS over it
/// when configured).
pub async fn connect(
    address: &str,
    dial: &Dial,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Body>, ClientError> {
    let (sender, conn) = handshake(address, dial, tls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "peer connection closed");
        }
    });
    Ok(sender)
}

/// Opens a connection whose I/O the caller drives (by polling the
/// [`Connection`]).
async fn handshake(
    address: &str,
    dial: &Dial,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(SendRequest<Body>, Connection), ClientError> {
    let fail = |e: &dyn std::fmt::Display| ClientError::Connect(address.to_string(), e.to_string());
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial.dial(address))
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?;
    let io: Box<dyn Io> = match tls {
        Some(config) => {
            let name = super::tls::server_name(address).ok_or_else(|| fail(&"bad server name"))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|e| fail(&e))?
                .map_err(|e| fail(&e))?;
            Box::new(stream)
        }
        None => Box::new(tcp),
    };
    hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fail(&e))
}

/// Sends one request and collects a bounded response body.
pub async fn request(
    sender: &mut SendRequest<Body>,
    address: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Body,
) -> Result<(StatusCode, Bytes), ClientError> {
    let fail = |e: &dyn std::fmt::Display| ClientError::Request(address.to_string(), e.to_string());
    let mut builder = Request::post(path).header("host", address);
    for (k, v) in headers {
        builder = builder.header(*k, v.as_str());
    }
    let req = builder.body(body).map_err(|e| fail(&e))?;
    sender.ready().await.map_err(|e| fail(&e))?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?;
    let status = resp.status();
    let limited = http_body_util::Limited::new(resp.into_body(), 1 << 20);
    let bytes = tokio::time::timeout(REQUEST_TIMEOUT, limited.collect())
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?
        .to_bytes();
    Ok((status, bytes))
}

/// Full body helper.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

struct Peer {
    address: String,
    /// Appends, in order.
    appends: mpsc::Sender<Message>,
    /// Every other message: small, and raft tolerates their reordering
    /// with appends (as with any network).
    control: mpsc::Sender<Message>,
}

struct Inner {
    id: u64,
    address: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    dial: Dial,
    feedback: FeedbackSender<Feedback>,
    snapshots: SnapshotStore,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Peers a snapshot is being streamed to.
    sending: Mutex<std::collections::HashSet<u64>>,
}

/// The real network: HTTP to peers.
#[derive(Clone)]
pub struct HttpTransport {
    inner: Arc<Inner>,
}

impl HttpTransport {
    /// A transport for node `id` at `address`.
    pub fn new(
        id: u64,
        address: String,
        tls: Option<&TlsConfig>,
        dial: Dial,
        feedback: FeedbackSender<Feedback>,
        snapshots: SnapshotStore,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, super::tls::TlsError> {
        let tls = tls.map(TlsConfig::client_config).transpose()?;
        Ok(HttpTransport {
            inner: Arc::new(Inner {
                id,
                address,
                tls,
                dial,
                feedback,
                snapshots,
                runtime,
                peers: Mutex::new(HashMap::new()),
                sending: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    fn spawn_peer(&self, to: u64, address: String) -> Peer {
        let lane = || {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let inner = self.inner.clone();
            self.inner
                .runtime
                .spawn(peer_task(inner, to, address.clone(), rx));
            tx
        };
        let appends = lane();
        let control = lane();
        Peer {
            address,
            appends,
            control,
        }
    }

    fn spawn_snapshot(&self, msg: Message, snapshot: OutgoingSnapshot) {
        let to = msg.to;
        if !lock(&self.inner.sending).insert(to) {
            // One stream per peer: the one in flight reports for both (a
            // second copy of GiBs would only compete with it).
            debug!(to, "a snapshot is already being sent to this peer");
            return;
        }
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let ok = match stream_snapshot(&inner, msg, snapshot).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(to, error = %e, "sending snapshot failed");
                    false
                }
            };
            lock(&inner.sending).remove(&to);
            let _ = inner.feedback.send(Feedback::SnapshotSent { to, ok });
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transport for HttpTransport {
    fn send(&self, msg: Message) {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // Snapshots go through `send_snapshot`, with their data.
            warn!(to = msg.to, "snapshot message without its data dropped");
            let _ = self.inner.feedback.send(Feedback::SnapshotSent {
                to: msg.to,
                ok: false,
            });
            return;
        }
        let to = msg.to;
        let peers = lock(&self.inner.peers);
        match peers.get(&to) {
            Some(peer) => {
                let lane = if msg.get_msg_type() == MessageType::MsgAppend {
                    &peer.appends
                } else {
                    &peer.control
                };
                if lane.try_send(msg).is_err() {
                    debug!(to, "peer queue full; message dropped");
                }
            }
            None => {
                let _ = self.inner.feedback.send(Feedback::Unreachable(to));
            }
        }
    }

    fn send_snapshot(&self, msg: Message, snapshot: OutgoingSnapshot) {
        self.spawn_snapshot(msg, snapshot);
    }

    fn set_peers(&self, list: Vec<(u64, String)>) {
        let mut fresh = HashMap::new();
        let mut old = std::mem::take(&mut *lock(&self.inner.peers));
        for (id, address) in list {
            if id == self.inner.id {
                continue;
            }
            let peer = match old.remove(&id) {
                Some(p) if p.address == address => p,
                _ => self.spawn_peer(id, address),
            };
            fresh.insert(id, peer);
        }
        // Dropping the old queues ends their tasks.
        *lock(&self.inner.peers) = fresh;
    }
}

/// How a stream ended.
enum StreamEnd {
    /// The lane's queue closed (the peer left the address book).
    Closed,
    /// The connection broke or the peer refused the stream: reconnect.
    Broken,
    /// The peer does not know `/raft/stream`: one request per batch.
    Unsupported,
}

async fn peer_task(inner: Arc<Inner>, to: u64, address: String, mut rx: mpsc::Receiver<Message>) {
    let headers = [
        ("x-raft-from", inner.id.to_string()),
        ("x-raft-from-address", inner.address.clone()),
        ("content-type", "application/octet-stream".to_string()),
    ];
    let mut streams = true;
    // Bounded by the queue: each pass takes at least one message or ends.
    while let Some(first) = rx.recv().await {
        let (mut sender, conn) = match handshake(&address, &inner.dial, inner.tls.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                debug!(to, error = %e, "peer unreachable");
                let _ = inner.feedback.send(Feedback::Unreachable(to));
                // Back off a little; messages queued meanwhile may drop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let end = if streams {
            stream(&inner, to, &address, &headers, sender, conn, first, &mut rx).await
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "peer connection closed");
                }
            });
            requests(&inner, to, &address, &headers, &mut sender, first, &mut rx).await
        };
        match end {
            StreamEnd::Closed => return,
            StreamEnd::Broken => {}
            StreamEnd::Unsupported => {
                debug!(to, "peer has no /raft/stream: one request per batch");
                streams = false;
            }
        }
    }
}

/// Takes what else is queued behind `first`, framed, up to [`BATCH_BYTES`].
fn batch(first: &Message, rx: &mut mpsc::Receiver<Message>) -> Vec<u8> {
    let mut body = Vec::new();
    encode_frame(first, &mut body);
    while body.len() < BATCH_BYTES {
        match rx.try_recv() {
            Ok(m) => encode_frame(&m, &mut body),
            Err(_) => break,
        }
    }
    body
}

/// Sends batches as chunks of one `/raft/stream` request until the
/// connection breaks, the peer answers, or the queue closes. The
/// connection's I/O runs in this task, not a task of its own: a batch is
/// written by the task that took it off the queue, with no wake-up of
/// another task (and often of another thread) in between.
#[allow(clippy::too_many_arguments)]
async fn stream(
    inner: &Inner,
    to: u64,
    address: &str,
    headers: &[(&str, String)],
    mut sender: SendRequest<Body>,
    conn: Connection,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
) -> StreamEnd {
    tokio::pin!(conn);
    let broken = |e: Option<hyper::Error>| {
        debug!(to, error = ?e, "peer connection closed");
        let _ = inner.feedback.send(Feedback::Unreachable(to));
        StreamEnd::Broken
    };
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(STREAM_CHUNKS);
    let mut builder = Request::post("/raft/stream").header("host", address);
    for (k, v) in headers {
        builder = builder.header(*k, v.as_str());
    }
    let Ok(req) = builder.body(body.boxed()) else {
        return StreamEnd::Broken;
    };
    tokio::select! {
        r = sender.ready() => if r.is_err() {
            return broken(None);
        },
        c = &mut conn => return broken(c.err()),
    }
    let response = sender.send_request(req);
    tokio::pin!(response);
    let mut next = Some(first);
    // Bounded by the queue: each pass sends at least one message or ends.
    loop {
        let first = match next.take() {
            Some(m) => m,
            // The answer first: a peer that answers (404, 410) often
            // closes the connection right after.
            None => tokio::select! {
                biased;
                r = &mut response => return stream_answered(inner, to, r),
                c = &mut conn => return closed(inner, to, c.err(), response.as_mut()).await,
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return StreamEnd::Closed,
                },
            },
        };
        let chunk = Frame::data(Bytes::from(batch(&first, rx)));
        // Room in the body: the connection takes it at its next poll (the
        // select above), in this task.
        let Err(chunk) = tx.try_send(chunk) else {
            continue;
        };
        let Ok(chunk) = chunk.into_data() else {
            continue;
        };
        tokio::select! {
            biased;
            r = &mut response => return stream_answered(inner, to, r),
            c = &mut conn => return closed(inner, to, c.err(), response.as_mut()).await,
            sent = tokio::time::timeout(REQUEST_TIMEOUT, tx.send_data(chunk)) => {
                if !matches!(sent, Ok(Ok(()))) {
                    debug!(to, "peer stream stalled or closed");
                    return broken(None);
                }
            }
        }
    }
}

/// The stream's connection ended. A peer that answers (404, 410) may
/// close the connection at once: the connection then ends with an error,
/// and its answer is still there to take.
async fn closed<F>(
    inner: &Inner,
    to: u64,
    error: Option<hyper::Error>,
    response: Pin<&mut F>,
) -> StreamEnd
where
    F: std::future::Future<Output = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>>,
{
    match tokio::time::timeout(Duration::from_secs(1), response).await {
        Ok(r @ Ok(_)) => stream_answered(inner, to, r),
        _ => {
            debug!(to, ?error, "peer connection closed");
            let _ = inner.feedback.send(Feedback::Unreachable(to));
            StreamEnd::Broken
        }
    }
}

/// The peer answered a stream (which ends it).
fn stream_answered(
    inner: &Inner,
    to: u64,
    answer: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
) -> StreamEnd {
    match answer {
        Ok(r) if r.status() == StatusCode::NOT_FOUND => StreamEnd::Unsupported,
        Ok(r) if r.status() == StatusCode::GONE => {
            debug!(to, "the leader says this node is no longer a member");
            let _ = inner.feedback.send(Feedback::Removed);
            StreamEnd::Broken
        }
        Ok(r) => {
            debug!(to, status = %r.status(), "peer ended the stream");
            StreamEnd::Broken
        }
        Err(e) => {
            debug!(to, error = %e, "peer stream failed");
            let _ = inner.feedback.send(Feedback::Unreachable(to));
            StreamEnd::Broken
        }
    }
}

/// Sends one `/raft/msg` request per batch (a peer without the stream)
/// until the connection breaks or the queue closes.
async fn requests(
    inner: &Inner,
    to: u64,
    address: &str,
    headers: &[(&str, String)],
    sender: &mut SendRequest<Body>,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
) -> StreamEnd {
    let mut next = Some(first);
    // Bounded by the queue: each pass sends at least one message or ends.
    loop {
        let first = match next.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => return StreamEnd::Closed,
            },
        };
        let body = full(batch(&first, rx));
        match request(sender, address, "/raft/msg", headers, body).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((StatusCode::GONE, _)) => {
                debug!(to, "the leader says this node is no longer a member");
                let _ = inner.feedback.send(Feedback::Removed);
            }
            Ok((status, body)) => {
                debug!(to, %status, body = %String::from_utf8_lossy(&body), "peer refused messages");
            }
            Err(e) => {
                debug!(to, error = %e, "sending to peer failed");
                let _ = inner.feedback.send(Feedback::Unreachable(to));
                return StreamEnd::Broken;
            }
        }
    }
}

async fn stream_snapshot(
    inner: &Inner,
    msg: Message,
    snapshot: OutgoingSnapshot,
) -> Result<(), String> {
    let address = lock(&inner.peers)
        .get(&msg.to)
        .map(|p| p.address.clone())
        .ok_or_else(|| format!("no address for node {}", msg.to))?;
    let meta = msg.get_snapshot().get_metadata();
    if snapshot.index_term() != (meta.index, meta.term) {
        return Err("snapshot data does not match its message".into());
    }
    let size = snapshot.size();
    let mut head = Vec::new();
    encode_frame(&msg, &mut head);
    let mut progress = Progress::start(
        format!(
            "sending snapshot {} (term {}) to node {}",
            meta.index, meta.term, msg.to
        ),
        "bytes",
        size,
    );
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Bytes, String>>(4);
    // File reads and images are blocking: a blocking task writes the
    // stream in chunks, this task forwards them.
    let store = inner.snapshots.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: &chunk_tx,
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = snapshot.write_to(&store, &mut out) {
            let _ = chunk_tx.blocking_send(Err(e.to_string()));
        }
    });
    // A snapshot of GiBs takes longer to stream than any fixed request
    // timeout: each chunk must be taken within STREAM_IDLE instead.
    let forward = async move {
        let mut sent = send_chunk(&mut tx, Bytes::from(head)).await?;
        while let Some(chunk) = chunk_rx.recv().await {
            let len = send_chunk(&mut tx, chunk?).await?;
            sent += len;
            progress.add(len);
        }
        Ok::<(Progress, u64), String>((progress, sent))
    };
    let mut sender = connect(&address, &inner.dial, inner.tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let mut builder = hyper::Request::post("/raft/snapshot")
        .header("host", address.as_str())
        .header("x-raft-from", inner.id.to_string())
        .header("x-raft-from-address", inner.address.clone())
        .header("content-type", "application/octet-stream");
    if let Some(n) = size {
        builder = builder.header("x-raft-snapshot-size", n.to_string());
    }
    let req = builder.body(body.boxed()).map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(req);
    tokio::pin!(response);
    tokio::pin!(forward);
    let mut early = None;
    let (progress, sent) = loop {
        tokio::select! {
            f = &mut forward => break f?,
            r = &mut response, if early.is_none() => early = Some(r),
        }
    };
    // The receiver verifies the file and rebuilds its state from it before
    // it answers: allow for reading it back at a slow disk's pace.
    let answer = REQUEST_TIMEOUT + Duration::from_secs(sent / (4 << 20));
    let resp = match early {
        Some(r) => r,
        None => tokio::time::timeout(answer, &mut response)
            .await
            .map_err(|_| format!("no answer {answer:?} after the snapshot was sent"))?,
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = tokio::time::timeout(
        REQUEST_TIMEOUT,
        http_body_util::Limited::new(resp.into_body(), 1 << 20).collect(),
    )
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?
    .to_bytes();
    if status.is_success() {
        progress.finish();
    } else {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&text)));
    }
    Ok(())
}

/// Hands one chunk to the HTTP body; fails when the peer takes nothing for
/// [`STREAM_IDLE`].
async fn send_chunk(
    tx: &mut http_body_util::channel::Sender<Bytes, std::convert::Infallible>,
    chunk: Bytes,
) -> Result<u64, String> {
    let len = chunk.len() as u64;
    match tokio::time::timeout(STREAM_IDLE, tx.send_data(chunk)).await {
        Ok(Ok(())) => Ok(len),
        Ok(Err(_)) => Err("peer closed".to_string()),
        Err(_) => Err(format!("peer took no data for {STREAM_IDLE:?}")),
    }
}

/// Cuts a snapshot stream into chunks for the HTTP body; fails once the
/// receiving side is gone.
struct ChunkWriter<'a> {
    tx: &'a mpsc::Sender<Result<Bytes, String>>,
    buf: Vec<u8>,
}

impl ChunkWriter<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("snapshot stream closed"))
    }
}

impl std::io::Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
