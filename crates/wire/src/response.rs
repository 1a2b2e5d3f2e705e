//! Responses, server to client (§6.2), including the streamed ROWS batches
//! of §7.

use crate::codec::{Reader, Writer};
use crate::frame::{encode_frame, response_type as t, Header, HEADER_SIZE};
pub use crate::node::{NodeInfo, Role};
use crate::value::{decode_row, encode_row, RowOrEnd, Value, ROWS_DONE, ROWS_PART};
use crate::DecodeError;

/// One file of a DUMP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// File name.
    pub name: String,
    /// Contents; the length must be a multiple of 8 (go-dqlite reads no
    /// padding after it).
    pub data: Vec<u8>,
}

/// One decoded ROWS message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Column names, repeated in every batch.
    pub columns: Vec<String>,
    /// The rows of this batch.
    pub rows: Vec<Vec<Value>>,
    /// PART: another ROWS message follows.
    pub more: bool,
}

/// A decoded response.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The request failed.
    Failure {
        /// SQLite or dqlite error code.
        code: u64,
        /// Human-readable message.
        message: String,
    },
    /// The leader (`id` 0 and an empty address when unknown).
    Server {
        /// Leader id.
        id: u64,
        /// Leader address.
        address: String,
    },
    /// The leader, for a client that used the legacy handshake.
    ServerLegacy {
        /// Leader address.
        address: String,
    },
    /// Answer to CLIENT.
    Welcome {
        /// Heartbeat timeout in milliseconds.
        heartbeat_timeout: u64,
    },
    /// Cluster members.
    Servers {
        /// 0: no roles on the wire; 1: with roles.
        format: u64,
        /// Members in configuration order.
        nodes: Vec<NodeInfo>,
    },
    /// Database opened.
    Db {
        /// Always 0.
        id: u32,
    },
    /// Statement prepared.
    Stmt {
        /// Database id.
        db: u32,
        /// Statement id.
        id: u32,
        /// Number of parameters.
        params: u64,
        /// Byte offset of the unparsed tail (schema 1 only).
        tail: Option<u64>,
    },
    /// Statement executed.
    Result {
        /// Last insert rowid (signed, reinterpreted).
        last_insert_id: u64,
        /// Rows changed by the last statement.
        rows_affected: u64,
    },
    /// One batch of a result set.
    Rows(Rows),
    /// Success with nothing to say.
    Empty,
    /// Database files.
    Files(Vec<File>),
    /// Node metadata.
    Metadata {
        /// Failure domain.
        failure_domain: u64,
        /// Weight.
        weight: u64,
    },
}

/// What the decoder must know that the bytes do not say: response type 1
/// is SERVER or SERVER_LEGACY depending on the handshake, and SERVERS
/// records carry a role only if format 1 was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// The connection used the legacy handshake.
    pub legacy: bool,
    /// The CLUSTER format that was requested.
    pub cluster_format: u64,
}

impl Default for DecodeContext {
    fn default() -> Self {
        Self {
            legacy: false,
            cluster_format: 1,
        }
    }
}

impl Response {
    /// The response type code.
    pub fn kind(&self) -> u8 {
        match self {
            Response::Failure { .. } => t::FAILURE,
            Response::Server { .. } | Response::ServerLegacy { .. } => t::SERVER,
            Response::Welcome { .. } => t::WELCOME,
            Response::Servers { .. } => t::SERVERS,
            Response::Db { .. } => t::DB,
            Response::Stmt { .. } => t::STMT,
            Response::Result { .. } => t::RESULT,
            Response::Rows(_) => t::ROWS,
            Response::Empty => t::EMPTY,
            Response::Files(_) => t::FILES,
            Response::Metadata { .. } => t::METADATA,
        }
    }

    /// A FAILURE response.
    pub fn failure(code: u64, message: impl Into<String>) -> Response {
        Response::Failure {
            code,
            message: message.into(),
        }
    }

    /// Appends the framed response to `out`.
    ///
    /// ```
    /// use dqlite_wire::Response;
    /// let mut out = Vec::new();
    /// Response::Welcome { heartbeat_timeout: 15000 }.encode(&mut out);
    /// assert_eq!(out, [1, 0, 0, 0, 2, 0, 0, 0, 0x98, 0x3a, 0, 0, 0, 0, 0, 0]);
    /// ```
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Response::Rows(rows) = self {
            let mut batch = RowsWriter::begin(out, &rows.columns);
            for row in &rows.rows {
                batch.push(row);
            }
            batch.finish(rows.more);
            return;
        }
        let schema = match self {
            Response::Stmt { tail: Some(_), .. } => 1,
            _ => 0,
        };
        encode_frame(out, self.kind(), schema, |buf| {
            let w = &mut Writer::new(buf);
            match self {
                Response::Failure { code, message } => {
                    w.u64(*code);
                    w.text(message);
                }
                Response::Server { id, address } => {
                    w.u64(*id);
                    w.text(address);
                }
                Response::ServerLegacy { address } => w.text(address),
                Response::Welcome { heartbeat_timeout } => w.u64(*heartbeat_timeout),
                Response::Servers { format, nodes } => {
                    w.u64(nodes.len() as u64);
                    for n in nodes {
                        w.u64(n.id);
                        w.text(&n.address);
                        if *format != 0 {
                            w.u64(n.role.code());
                        }
                    }
                }
                Response::Db { id } => {
                    w.u32(*id);
                    w.u32(0);
                }
                Response::Stmt {
                    db,
                    id,
                    params,
                    tail,
                } => {
                    w.u32(*db);
                    w.u32(*id);
                    w.u64(*params);
                    if let Some(tail) = tail {
                        w.u64(*tail);
                    }
                }
                Response::Result {
                    last_insert_id,
                    rows_affected,
                } => {
                    w.u64(*last_insert_id);
                    w.u64(*rows_affected);
                }
                Response::Empty => w.u64(0),
                Response::Files(files) => {
                    w.u64(files.len() as u64);
                    for f in files {
                        w.text(&f.name);
                        w.u64(f.data.len() as u64);
                        w.bytes(&f.data);
                        w.pad();
                    }
                }
                Response::Metadata {
                    failure_domain,
                    weight,
                } => {
                    w.u64(*failure_domain);
                    w.u64(*weight);
                }
                Response::Rows(_) => {}
            }
        });
    }

    /// Decodes a response body.
    pub fn decode(
        header: &Header,
        body: &[u8],
        ctx: DecodeContext,
    ) -> Result<Response, DecodeError> {
        if body.is_empty() {
            return Err(DecodeError::EmptyBody(header.kind));
        }
        let r = &mut Reader::new(body);
        let resp = match header.kind {
            t::FAILURE => Response::Failure {
                code: r.u64()?,
                message: r.text()?,
            },
            t::SERVER if ctx.legacy => Response::ServerLegacy { address: r.text()? },
            t::SERVER => Response::Server {
                id: r.u64()?,
                address: r.text()?,
            },
            t::WELCOME => Response::Welcome {
                heartbeat_timeout: r.u64()?,
            },
            t::SERVERS => {
                let n = r.u64()?;
                let format = ctx.cluster_format;
                if format > 1 {
                    return Err(DecodeError::UnknownClusterFormat(format));
                }
                let mut nodes = Vec::new();
                for _ in 0..n {
                    let id = r.u64()?;
                    let address = r.text()?;
                    let role = if format == 1 {
                        // An unknown role code from a newer server is shown
                        // as a spare rather than failing the whole listing.
                        Role::from_code(r.u64()?).unwrap_or(Role::Spare)
                    } else {
                        Role::Voter
                    };
                    nodes.push(NodeInfo::new(id, address, role));
                }
                Response::Servers { format, nodes }
            }
            t::DB => {
                let id = r.u32()?;
                r.u32()?;
                Response::Db { id }
            }
            t::STMT => Response::Stmt {
                db: r.u32()?,
                id: r.u32()?,
                params: r.u64()?,
                tail: if header.schema == 1 {
                    Some(r.u64()?)
                } else {
                    None
                },
            },
            t::RESULT => Response::Result {
                last_insert_id: r.u64()?,
                rows_affected: r.u64()?,
            },
            t::ROWS => Response::Rows(decode_rows(r)?),
            t::EMPTY => {
                r.u64()?;
                Response::Empty
            }
            t::FILES => {
                let n = r.u64()?;
                let mut files = Vec::new();
                for _ in 0..n {
                    let name = r.text()?;
                    let size = r.u64()?;
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    let data = r.bytes(size)?.to_vec();
                    r.align()?;
                    files.push(File { name, data });
                }
                Response::Files(files)
            }
            t::METADATA => Response::Metadata {
                failure_domain: r.u64()?,
                weight: r.u64()?,
            },
            other => return Err(DecodeError::UnknownResponse(other)),
        };
        Ok(resp)
    }
}

fn decode_rows(r: &mut Reader<'_>) -> Result<Rows, DecodeError> {
    let ncols = r.u64()?;
    // Each name takes at least one word: a count beyond the body is bogus.
    if ncols > (r.remaining() / 8) as u64 {
        return Err(DecodeError::Truncated {
            offset: r.position(),
            needed: usize::try_from(ncols.saturating_mul(8)).unwrap_or(usize::MAX),
            len: r.position() + r.remaining(),
        });
    }
    let mut columns = Vec::with_capacity(ncols as usize);
    for _ in 0..ncols {
        columns.push(r.text()?);
    }
    let mut rows = Vec::new();
    loop {
        match decode_row(r, columns.len())? {
            RowOrEnd::Row(row) => rows.push(row),
            RowOrEnd::End { more } => {
                return Ok(Rows {
                    columns,
                    rows,
                    more,
                })
            }
        }
    }
}

/// Streams one ROWS message into a buffer: column names first, then rows
/// one at a time, then the end marker. The server decides when a batch is
/// full by looking at [`RowsWriter::len`], so a large result is never
/// held in memory whole.
///
/// ```
/// use dqlite_wire::{RowsWriter, Value};
/// let mut out = Vec::new();
/// let mut batch = RowsWriter::begin(&mut out, &["i"]);
/// batch.push(&[Value::Integer(7)]);
/// batch.finish(false);
/// assert_eq!(out.len(), 8 + 5 * 8);
/// ```
#[derive(Debug)]
pub struct RowsWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> RowsWriter<'a> {
    /// Starts a ROWS message with its column count and names.
    pub fn begin<S: AsRef<str>>(out: &'a mut Vec<u8>, columns: &[S]) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_SIZE]);
        let w = &mut Writer::new(out);
        w.u64(columns.len() as u64);
        for c in columns {
            w.text(c.as_ref());
        }
        Self { out, start }
    }

    /// Appends one row; it must have one value per column.
    pub fn push(&mut self, row: &[Value]) {
        encode_row(&mut Writer::new(self.out), row);
    }

    /// Bytes of this message so far, header included.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    /// Always false: a batch holds at least its header and column count.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Ends the message with PART (`more`) or DONE and fills in the header.
    pub fn finish(self, more: bool) {
        let w = &mut Writer::new(self.out);
        w.u64(if more { ROWS_PART } else { ROWS_DONE });
        let words = (self.out.len() - self.start - HEADER_SIZE) / 8;
        let header = Header {
            words: u32::try_from(words).unwrap_or(u32::MAX),
            kind: t::ROWS,
            schema: 0,
        };
        self.out[self.start..self.start + HEADER_SIZE].copy_from_slice(&header.encode());
    }
}
