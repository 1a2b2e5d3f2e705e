//! One framed connection to one node: the handshake, one request at a
//! time, size-checked reads, timeouts, and the bookkeeping that keeps the
//! stream in step when a caller stops reading a result early or cancels a
//! call half-way.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dqlite_wire::{DecodeContext, Header, Request, Response, Rows, HEADER_SIZE, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::{timeout, Instant};

use crate::{Config, Error, Result};

/// Any byte stream the protocol can run over.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Most messages read while draining an abandoned result after INTERRUPT.
/// A server streams a result in batches of a few KiB; this allows results
/// of many GiB while still ending a loop against a misbehaving server.
const DRAIN_MESSAGES_MAX: u64 = 1 << 22;

/// A read buffer larger than this is released after use, so one big DUMP
/// does not pin its memory for the connection's lifetime.
const BODY_BUFFER_KEEP: usize = 1 << 20;

/// Where the connection stands between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ready for a request.
    Idle,
    /// A call is under way. Finding this state when a new call starts
    /// means the previous call's future was dropped half-way: the stream
    /// position is unknown.
    InFlight,
    /// A result set is being streamed: its next batch is unread. While a
    /// [`crate::Rows`] is alive it owns the reading (it borrows the
    /// connection mutably, so no other call can start). Finding this
    /// state when a new request starts therefore means the `Rows` was
    /// dropped unfinished: send INTERRUPT and discard messages up to
    /// EMPTY first, as go-dqlite's `Rows.Close` does. Doing it lazily
    /// means `Rows` needs no destructor (which could not wait on the
    /// socket anyway) and its borrow ends at its last use.
    Streaming,
    /// A transport error happened; every call fails.
    Broken,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Transport {
    stream: BufReader<Box<dyn Stream>>,
    address: String,
    /// Unique per process, so statements can check they are used on the
    /// connection that prepared them.
    id: u64,
    state: State,
    request_timeout: Duration,
    max_message_size: u64,
    out: Vec<u8>,
    body: Vec<u8>,
    /// Messages read so far. A first reply that is not a dqlite message
    /// means the peer is not a dqlite node at all.
    responses: u64,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("address", &self.address)
            .field("id", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Connects with the configured dial function (and TLS) and sends the
    /// version-1 handshake.
    pub(crate) async fn dial(address: &str, config: &Config) -> Result<Transport> {
        if address.starts_with('@') {
            return Err(Error::InvalidArgument(format!(
                "abstract Unix socket addresses are not supported: {address}"
            )));
        }
        let connect_error = |cause| Error::Connect {
            address: address.to_owned(),
            cause,
        };
        let open = async {
            let stream = config.dial.dial(address).await?;
            match &config.tls {
                Some(tls) => tls.connect(address, stream).await,
                None => Ok(stream),
            }
        };
        let stream = match timeout(config.dial_timeout, open).await {
            Ok(result) => result.map_err(connect_error)?,
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "connecting",
                    address: address.to_owned(),
                    after: config.dial_timeout,
                })
            }
        };
        let mut transport = Transport::over(Box::new(stream), address, config);
        transport.handshake().await?;
        Ok(transport)
    }

    pub(crate) fn over(stream: Box<dyn Stream>, address: &str, config: &Config) -> Transport {
        Transport {
            stream: BufReader::new(stream),
            address: address.to_owned(),
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            state: State::Idle,
            request_timeout: config.request_timeout,
            max_message_size: config.max_message_size,
            out: Vec::new(),
            body: Vec::new(),
            responses: 0,
        }
    }

    async fn handshake(&mut self) -> Result<()> {
        let limit = self.request_timeout;
        let write = async {
            let stream = self.stream.get_mut();
            stream.write_all(&PROTOCOL_VERSION.to_le_bytes()).await?;
            stream.flush().await
        };
        match timeout(limit, write).await {
            Ok(result) => result.map_err(|e| self.io(e)),
            Err(_) => Err(self.timeout("the handshake", limit)),
        }
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn timeout(&self, operation: &'static str, after: Duration) -> Error {
        Error::Timeout {
            operation,
            address: self.address.clone(),
            after,
        }
    }

    /// An I/O error on this connection. An EOF means the server hung up;
    /// say so rather than "early eof".
    fn io(&self, source: std::io::Error) -> Error {
        let address = self.address.clone();
        match source.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => Error::Closed { address },
            _ => Error::Io {
                address,
                cause: source,
            },
        }
    }

    /// A protocol error on this connection.
    pub(crate) fn protocol(&self, detail: String) -> Error {
        Error::Protocol {
            address: self.address.clone(),
            detail,
        }
    }

    /// A protocol error for an unexpected response.
    pub(crate) fn unexpected(&self, expected: &str, got: &Response) -> Error {
        Error::unexpected(&self.address, expected, got)
    }

    /// Marks the connection unusable (after a protocol violation).
    pub(crate) fn poison(&mut self) {
        self.state = State::Broken;
    }

    /// Sends one request and reads its first response. A FAILURE becomes
    /// an `Err` (the connection stays usable); a ROWS with PART leaves the
    /// connection streaming until [`Transport::next_batch`] reads the DONE.
    pub(crate) async fn request(
        &mut self,
        request: &Request,
        ctx: DecodeContext,
    ) -> Result<Response> {
        self.ready().await?;
        self.out.clear();
        request.encode(&mut self.out);
        self.state = State::InFlight;
        let limit = self.request_timeout;
        let result = match timeout(limit, self.exchange(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(self.timeout("a request", limit)),
        };
        self.settle(result)
    }

    /// Reads the next ROWS batch of a streamed result, without sending.
    pub(crate) async fn next_batch(&mut self) -> Result<Rows> {
        if self.state != State::Streaming {
            return Err(self.unusable());
        }
        self.state = State::InFlight;
        let limit = self.request_timeout;
        let result = match timeout(limit, self.read_message(DecodeContext::default())).await {
            Ok(result) => result,
            Err(_) => Err(self.timeout("reading rows", limit)),
        };
        match self.settle(result)? {
            Response::Rows(rows) => Ok(rows),
            other => {
                self.state = State::Broken;
                Err(self.unexpected("ROWS", &other))
            }
        }
    }

    /// Sends INTERRUPT for an unfinished result now and drains it.
    pub(crate) async fn interrupt(&mut self) -> Result<()> {
        self.ready().await
    }

    async fn exchange(&mut self, ctx: DecodeContext) -> Result<Response> {
        self.send_out().await?;
        self.read_message(ctx).await
    }

    async fn send_out(&mut self) -> Result<()> {
        let stream = self.stream.get_mut();
        let sent = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        }
        .await;
        sent.map_err(|e| self.io(e))
    }

    /// Brings the connection to `Idle`, draining an abandoned result, or
    /// explains why it cannot.
    async fn ready(&mut self) -> Result<()> {
        match self.state {
            State::Idle => Ok(()),
            State::Streaming => {
                self.state = State::InFlight;
                let limit = self.request_timeout;
                let result = match timeout(limit, self.drain()).await {
                    Ok(result) => result,
                    Err(_) => Err(self.timeout("interrupting a result", limit)),
                };
                match result {
                    Ok(()) => {
                        self.state = State::Idle;
                        Ok(())
                    }
                    Err(err) => {
                        self.state = State::Broken;
                        Err(err)
                    }
                }
            }
            State::InFlight | State::Broken => Err(self.unusable()),
        }
    }

    fn unusable(&mut self) -> Error {
        self.state = State::Broken;
        Error::ConnectionBroken {
            address: self.address.clone(),
        }
    }

    /// INTERRUPT, then read and discard until EMPTY (ROWS and FAILURE
    /// are skipped), as go-dqlite does (§7.3 of the wire reference).
    async fn drain(&mut self) -> Result<()> {
        tracing::debug!(address = %self.address, "interrupting an unfinished result");
        self.out.clear();
        Request::Interrupt { db: 0 }.encode(&mut self.out);
        self.send_out().await?;
        for _ in 0..DRAIN_MESSAGES_MAX {
            match self.read_message(DecodeContext::default()).await? {
                Response::Empty => return Ok(()),
                Response::Rows(_) | Response::Failure { .. } => {}
                other => return Err(self.unexpected("EMPTY", &other)),
            }
        }
        Err(self.protocol(format!(
            "no EMPTY after INTERRUPT within {DRAIN_MESSAGES_MAX} messages"
        )))
    }

    /// Records the outcome of a call in the connection state.
    fn settle(&mut self, result: Result<Response>) -> Result<Response> {
        match result {
            Ok(Response::Failure { code, message }) => {
                self.state = State::Idle;
                Err(Error::failure_from(self.address.clone(), code, message))
            }
            Ok(response) => {
                self.state = match &response {
                    Response::Rows(rows) if rows.more => State::Streaming,
                    _ => State::Idle,
                };
                Ok(response)
            }
            Err(err) => {
                if err.breaks_connection() {
                    tracing::debug!(address = %self.address, error = %err, "connection broken");
                    self.state = State::Broken;
                } else {
                    self.state = State::Idle;
                }
                Err(err)
            }
        }
    }

    async fn read_message(&mut self, ctx: DecodeContext) -> Result<Response> {
        let first = self.responses == 0;
        self.responses = self.responses.saturating_add(1);
        let mut raw = [0u8; HEADER_SIZE];
        if let Err(e) = self.stream.read_exact(&mut raw).await {
            return Err(self.io(e));
        }
        if first && raw.starts_with(b"HTTP/") {
            return Err(self.not_dqlite("it answered with HTTP".into()));
        }
        let header = Header::decode(raw);
        let size = header.body_len();
        if size > self.max_message_size {
            // A first reply this large is not a dqlite reply at all (an
            // SSH banner, a TLS alert, ...): say so, not "too large".
            if first {
                return Err(
                    self.not_dqlite(format!("its first reply starts with {}", printable(&raw)))
                );
            }
            return Err(Error::MessageTooLarge {
                address: self.address.clone(),
                size,
                max: self.max_message_size,
            });
        }
        let Ok(size) = usize::try_from(size) else {
            return Err(Error::MessageTooLarge {
                address: self.address.clone(),
                size,
                max: self.max_message_size,
            });
        };
        self.body.clear();
        self.body.resize(size, 0);
        if let Err(e) = self.stream.read_exact(&mut self.body).await {
            return Err(self.io(e));
        }
        let response = Response::decode(&header, &self.body, ctx);
        if self.body.capacity() > BODY_BUFFER_KEEP {
            self.body = Vec::new();
        }
        response.map_err(|source| {
            if first {
                self.not_dqlite(format!("its first reply is not a dqlite message: {source}"))
            } else {
                Error::Decode {
                    address: self.address.clone(),
                    cause: source,
                }
            }
        })
    }

    fn not_dqlite(&self, detail: String) -> Error {
        Error::NotDqlite {
            address: self.address.clone(),
            detail,
        }
    }
}

/// The first bytes of a reply for a message: text as text, else hex.
fn printable(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

/// How long is left until `deadline`, or `None` if it has passed.
pub(crate) fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}
