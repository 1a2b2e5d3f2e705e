//! One client connection: handshake, framing, and the request loop.
//!
//! A reader task turns the socket into frames so that the loop can watch
//! for an INTERRUPT while a query streams. Any bad frame gets a FAILURE
//! when the framing is still intact, or closes this one connection when it
//! is not; nothing here can take the node down.

use std::sync::Arc;
use std::time::Duration;

use dqlite_wire::error::DQLITE_PARSE;
use dqlite_wire::frame::request_type;
use dqlite_wire::{
    Header, Request, Response, HEADER_SIZE, PROTOCOL_VERSION, PROTOCOL_VERSION_LEGACY,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::gateway::{leadership_lost_failure, Gateway, Reply, RowsStream, Shared};
use crate::metrics::{statement_kind, ConnectionGuard, ServerMetrics};

/// A client that connects must say its protocol version within this time.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One framed message as read off the socket.
struct Frame {
    header: Header,
    body: Vec<u8>,
}

/// Why the reader stopped.
enum ReadEnd {
    /// The peer closed or the socket failed.
    Closed,
    /// A length word beyond the limit: the stream cannot be resynchronised.
    TooLarge(u64),
}

/// How a connection started: the handshake version.
pub(crate) enum Handshake {
    Current,
    Legacy,
}

/// Reads the 8-byte protocol version. `None`: not a dqlite client.
pub(crate) fn parse_handshake(bytes: [u8; 8]) -> Option<Handshake> {
    match u64::from_le_bytes(bytes) {
        PROTOCOL_VERSION => Some(Handshake::Current),
        PROTOCOL_VERSION_LEGACY => Some(Handshake::Legacy),
        _ => None,
    }
}

/// Serves a dqlite client whose 8-byte handshake has already been read.
pub(crate) async fn serve<R, W>(
    reader: R,
    writer: W,
    handshake: Handshake,
    shared: Arc<Shared>,
    max_message: u64,
    cancel: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send,
{
    let (tx, mut frames) = mpsc::channel(1);
    let reader_task = tokio::spawn(read_frames(reader, max_message, tx));
    let mut out = BufWriter::new(writer);
    let metrics = shared.metrics.clone();
    let _open = ConnectionGuard::new(&metrics.connections);
    let mut leadership = shared.cluster.leadership();
    let mut gateway = Gateway::new(shared, matches!(handshake, Handshake::Legacy));
    let mut pending: Option<Frame> = None;
    // Whether the current loss of leadership was already handled, so the
    // session is reset once per loss, not on every turn of the loop.
    let mut reset_done = false;
    loop {
        // Leadership lost: the connection stays open (dqlite >= 1.18), its
        // SQLite state is reset, and its statements answer NOT_LEADER until
        // this node leads again; the client reconnects when it wants to.
        // The watch only wakes this loop: it follows the service through a
        // task and can lag, so ask the cluster itself (a statement refused
        // on the service's word must see its session reset on the next turn).
        if let Some(l) = leadership.as_mut() {
            l.borrow_and_update();
        }
        let leads = gateway.leads();
        if leads {
            reset_done = false;
        } else if !reset_done && gateway.database().is_some() {
            debug!(
                database = gateway.database(),
                "no longer leader: resetting the session"
            );
            gateway.leadership_lost().await;
            reset_done = true;
        }
        let has_db = gateway.database().is_some();
        let frame = match pending.take() {
            Some(f) => f,
            None => tokio::select! {
                _ = cancel.cancelled() => break,
                _ = leadership_changed(&mut leadership), if has_db => continue,
                next = frames.recv() => match next {
                    Some(Ok(f)) => f,
                    Some(Err(ReadEnd::TooLarge(len))) => {
                        let msg = format!("message too large: {len} bytes, the limit is {max_message}");
                        warn!(database = gateway.database(), "closing connection: {msg}");
                        let _ = write(&mut out, &Response::failure(DQLITE_PARSE, msg), &metrics).await;
                        break;
                    }
                    Some(Err(ReadEnd::Closed)) | None => break,
                },
            },
        };
        let request = match Request::decode(&frame.header, &frame.body) {
            Ok(r) => r,
            Err(e) => {
                debug!(kind = frame.header.kind, "bad request: {e}");
                if write(
                    &mut out,
                    &Response::failure(e.failure_code(), e.to_string()),
                    &metrics,
                )
                .await
                .is_err()
                {
                    break;
                }
                continue;
            }
        };
        // A statement answered in one message is counted before it leaves,
        // so a client that scrapes right after the answer sees it; a
        // streamed query is counted when its stream ends.
        let kind = statement_kind(&request);
        let count = |ok: bool| {
            if let Some(kind) = kind {
                metrics.statement(kind, ok);
            }
        };
        let result = match gateway.handle(request).await {
            Reply::One(resp) => {
                count(!matches!(resp, Response::Failure { .. }));
                write(&mut out, &resp, &metrics).await
            }
            Reply::Rows(stream) => {
                match drive(stream, &mut out, &mut frames, &cancel, &mut leadership).await {
                    Ok((next, failure)) => {
                        pending = next;
                        count(failure.is_none());
                        match failure {
                            Some(f) => write(&mut out, &f, &metrics).await,
                            None => Ok(()),
                        }
                    }
                    Err(e) => {
                        count(false);
                        Err(e)
                    }
                }
            }
        };
        if result.is_err() {
            break;
        }
    }
    reader_task.abort();
}

async fn write<W: AsyncWrite + Unpin>(
    out: &mut BufWriter<W>,
    resp: &Response,
    metrics: &ServerMetrics,
) -> std::io::Result<()> {
    metrics.response(resp);
    let mut buf = Vec::new();
    resp.encode(&mut buf);
    out.write_all(&buf).await?;
    out.flush().await
}

/// Writes a query's batches as they come. A request that arrives meanwhile
/// is kept for after the stream; an INTERRUPT also stops the query early.
/// Returns that request and the FAILURE that ends the stream, if any.
async fn drive<W: AsyncWrite + Unpin>(
    mut stream: RowsStream,
    out: &mut BufWriter<W>,
    frames: &mut mpsc::Receiver<Result<Frame, ReadEnd>>,
    cancel: &CancellationToken,
    leadership: &mut Option<watch::Receiver<bool>>,
) -> std::io::Result<(Option<Frame>, Option<Response>)> {
    let mut pending = None;
    let mut lost = false;
    let closed = || std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
    loop {
        tokio::select! {
            batch = stream.batches.recv() => match batch {
                Some(bytes) => {
                    if let Err(e) = async { out.write_all(&bytes).await?; out.flush().await }.await {
                        stream.interrupt();
                        return Err(e);
                    }
                }
                None => break,
            },
            next = frames.recv(), if pending.is_none() => match next {
                Some(Ok(frame)) => {
                    if frame.header.kind == request_type::INTERRUPT {
                        stream.interrupt();
                    }
                    pending = Some(frame);
                }
                _ => {
                    stream.interrupt();
                    return Err(closed());
                }
            },
            _ = cancel.cancelled() => {
                stream.interrupt();
                return Err(closed());
            }
            // A query in flight when leadership goes fails with 10506;
            // the connection stays.
            _ = lost_leadership(leadership), if !lost => {
                stream.interrupt();
                lost = true;
            }
        }
    }
    let failure = match (&mut stream.done).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) if lost => Some(leadership_lost_failure().into_response()),
        Ok(Err(failure)) => Some(failure.into_response()),
        Err(_) => Some(Response::failure(
            dqlite_wire::error::SQLITE_IOERR,
            "internal error: query task failed",
        )),
    };
    Ok((pending, failure))
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    max_message: u64,
    tx: mpsc::Sender<Result<Frame, ReadEnd>>,
) {
    loop {
        let mut head = [0u8; HEADER_SIZE];
        if reader.read_exact(&mut head).await.is_err() {
            let _ = tx.send(Err(ReadEnd::Closed)).await;
            return;
        }
        let header = Header::decode(head);
        let len = header.body_len();
        if len > max_message {
            let _ = tx.send(Err(ReadEnd::TooLarge(len))).await;
            return;
        }
        // Bounded by `max_message` above.
        let mut body = vec![0u8; len as usize];
        if reader.read_exact(&mut body).await.is_err() {
            let _ = tx.send(Err(ReadEnd::Closed)).await;
            return;
        }
        if tx.send(Ok(Frame { header, body })).await.is_err() {
            return;
        }
    }
}

/// Resolves once leadership turns false after the connection loop last
/// looked; never without a channel or once its sender is gone.
async fn lost_leadership(leadership: &mut Option<watch::Receiver<bool>>) {
    match leadership {
        Some(rx) => loop {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if !*rx.borrow_and_update() {
                return;
            }
        },
        None => std::future::pending::<()>().await,
    }
}

/// Resolves when leadership changes (true to false or back); never
/// without a channel or once its sender is gone.
async fn leadership_changed(leadership: &mut Option<watch::Receiver<bool>>) {
    match leadership {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Reads the handshake with a deadline.
pub(crate) async fn read_handshake<R: AsyncRead + Unpin>(reader: &mut R) -> Option<[u8; 8]> {
    let mut bytes = [0u8; 8];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_exact(&mut bytes)).await {
        Ok(Ok(_)) => Some(bytes),
        _ => None,
    }
}
