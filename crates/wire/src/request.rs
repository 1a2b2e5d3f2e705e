//! Requests, client to server (§6.0, §6.1, §6.3).

use crate::codec::{Reader, Writer};
use crate::frame::{encode_frame, request_type as t, Header};
use crate::value::{decode_params, encode_params, ParamsFormat, Value};
use crate::DecodeError;

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Who is the leader?
    Leader,
    /// Register a client (answered with WELCOME).
    Client {
        /// Client id; go-dqlite sends 0.
        id: u64,
    },
    /// Defined by the protocol, handled by no server.
    Heartbeat {
        /// Client timestamp.
        timestamp: u64,
    },
    /// Open (and create) a database on this connection.
    Open {
        /// Database name.
        name: String,
        /// Ignored by servers.
        flags: u64,
        /// Ignored by servers (go-dqlite sends "volatile").
        vfs: String,
    },
    /// Prepare one statement.
    Prepare {
        /// Must be 0.
        db: u64,
        /// SQL text.
        sql: String,
        /// Schema 1: a tail is allowed and its offset returned.
        with_tail: bool,
    },
    /// Execute a prepared statement.
    Exec {
        /// Must be 0.
        db: u32,
        /// Statement id.
        stmt: u32,
        /// Bound in order.
        params: Vec<Value>,
    },
    /// Query a prepared statement.
    Query {
        /// Must be 0.
        db: u32,
        /// Statement id.
        stmt: u32,
        /// Bound in order.
        params: Vec<Value>,
    },
    /// Finalize a prepared statement.
    Finalize {
        /// Must be 0.
        db: u32,
        /// Statement id.
        stmt: u32,
    },
    /// Execute one or more statements of SQL text.
    ExecSql {
        /// Must be 0.
        db: u64,
        /// SQL text.
        sql: String,
        /// Handed out to the statements in order.
        params: Vec<Value>,
    },
    /// Query one statement of SQL text.
    QuerySql {
        /// Must be 0.
        db: u64,
        /// SQL text.
        sql: String,
        /// Bound in order.
        params: Vec<Value>,
    },
    /// Interrupt a running query.
    Interrupt {
        /// Must be 0.
        db: u64,
    },
    /// Raft connection hand-over between C dqlite nodes.
    Connect {
        /// Node id.
        id: u64,
        /// Node address.
        address: String,
    },
    /// Add a node as a spare.
    Add {
        /// Node id.
        id: u64,
        /// Node address.
        address: String,
    },
    /// Change a node's role (absent role: voter, the old PROMOTE).
    Assign {
        /// Node id.
        id: u64,
        /// Wire role code (0 voter, 1 standby, 2 spare).
        role: Option<u64>,
    },
    /// Remove a node.
    Remove {
        /// Node id.
        id: u64,
    },
    /// Dump a database's files.
    Dump {
        /// Database name.
        name: String,
    },
    /// List the cluster members.
    Cluster {
        /// 0: id and address; 1: plus role.
        format: u64,
    },
    /// Transfer leadership.
    Transfer {
        /// Target node id; 0 lets the cluster choose.
        id: u64,
    },
    /// Ask for the node's failure domain and weight.
    Describe {
        /// Must be 0.
        format: u64,
    },
    /// Set the node's weight.
    Weight {
        /// New weight.
        weight: u64,
    },
}

fn params_format(kind: u8, schema: u8) -> Result<ParamsFormat, DecodeError> {
    match schema {
        0 => Ok(ParamsFormat::Params8),
        1 => Ok(ParamsFormat::Params32),
        _ => Err(DecodeError::UnknownSchema { kind, schema }),
    }
}

impl Request {
    /// The request type code.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Leader => t::LEADER,
            Request::Client { .. } => t::CLIENT,
            Request::Heartbeat { .. } => t::HEARTBEAT,
            Request::Open { .. } => t::OPEN,
            Request::Prepare { .. } => t::PREPARE,
            Request::Exec { .. } => t::EXEC,
            Request::Query { .. } => t::QUERY,
            Request::Finalize { .. } => t::FINALIZE,
            Request::ExecSql { .. } => t::EXEC_SQL,
            Request::QuerySql { .. } => t::QUERY_SQL,
            Request::Interrupt { .. } => t::INTERRUPT,
            Request::Connect { .. } => t::CONNECT,
            Request::Add { .. } => t::ADD,
            Request::Assign { .. } => t::ASSIGN,
            Request::Remove { .. } => t::REMOVE,
            Request::Dump { .. } => t::DUMP,
            Request::Cluster { .. } => t::CLUSTER,
            Request::Transfer { .. } => t::TRANSFER,
            Request::Describe { .. } => t::DESCRIBE,
            Request::Weight { .. } => t::WEIGHT,
        }
    }

    /// Decodes a request body. The header's schema is checked as current
    /// dqlite does: 0 or 1 for the SQL requests, 0 for everything else.
    ///
    /// ```
    /// use dqlite_wire::{Header, Request};
    /// let header = Header { words: 1, kind: 0, schema: 0 };
    /// assert_eq!(Request::decode(&header, &[0; 8]), Ok(Request::Leader));
    /// ```
    pub fn decode(header: &Header, body: &[u8]) -> Result<Request, DecodeError> {
        let kind = header.kind;
        if kind > t::WEIGHT {
            return Err(DecodeError::UnknownRequest(kind));
        }
        if body.is_empty() {
            return Err(DecodeError::EmptyBody(kind));
        }
        let sql_request = matches!(
            kind,
            t::PREPARE | t::EXEC | t::QUERY | t::EXEC_SQL | t::QUERY_SQL
        );
        if !sql_request && header.schema != 0 {
            return Err(DecodeError::UnknownSchema {
                kind,
                schema: header.schema,
            });
        }
        let r = &mut Reader::new(body);
        let req = match kind {
            t::LEADER => {
                r.u64()?;
                Request::Leader
            }
            t::CLIENT => Request::Client { id: r.u64()? },
            t::HEARTBEAT => Request::Heartbeat {
                timestamp: r.u64()?,
            },
            t::OPEN => Request::Open {
                name: r.text()?,
                flags: r.u64()?,
                vfs: r.text()?,
            },
            t::PREPARE => {
                let with_tail = params_format(kind, header.schema)? == ParamsFormat::Params32;
                Request::Prepare {
                    db: r.u64()?,
                    sql: r.text()?,
                    with_tail,
                }
            }
            t::EXEC | t::QUERY => {
                let format = params_format(kind, header.schema)?;
                let db = r.u32()?;
                let stmt = r.u32()?;
                let params = decode_params(r, format)?;
                if kind == t::EXEC {
                    Request::Exec { db, stmt, params }
                } else {
                    Request::Query { db, stmt, params }
                }
            }
            t::FINALIZE => Request::Finalize {
                db: r.u32()?,
                stmt: r.u32()?,
            },
            t::EXEC_SQL | t::QUERY_SQL => {
                let format = params_format(kind, header.schema)?;
                let db = r.u64()?;
                let sql = r.text()?;
                let params = decode_params(r, format)?;
                if kind == t::EXEC_SQL {
                    Request::ExecSql { db, sql, params }
                } else {
                    Request::QuerySql { db, sql, params }
                }
            }
            t::INTERRUPT => Request::Interrupt { db: r.u64()? },
            t::CONNECT => Request::Connect {
                id: r.u64()?,
                address: r.text()?,
            },
            t::ADD => Request::Add {
                id: r.u64()?,
                address: r.text()?,
            },
            t::ASSIGN => {
                let id = r.u64()?;
                // PROMOTE had only the id; a second word carries the role.
                let role = if r.remaining() >= 8 {
                    Some(r.u64()?)
                } else {
                    None
                };
                Request::Assign { id, role }
            }
            t::REMOVE => Request::Remove { id: r.u64()? },
            t::DUMP => Request::Dump { name: r.text()? },
            t::CLUSTER => Request::Cluster { format: r.u64()? },
            t::TRANSFER => Request::Transfer { id: r.u64()? },
            t::DESCRIBE => Request::Describe { format: r.u64()? },
            t::WEIGHT => Request::Weight { weight: r.u64()? },
            other => return Err(DecodeError::UnknownRequest(other)),
        };
        Ok(req)
    }

    /// Appends the framed request (header and body) to `out`. Parameter
    /// tuples use schema 1 only when there are more than 255 parameters.
    ///
    /// ```
    /// use dqlite_wire::Request;
    /// let mut out = Vec::new();
    /// Request::Leader.encode(&mut out);
    /// assert_eq!(out, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    /// ```
    pub fn encode(&self, out: &mut Vec<u8>) {
        let schema = match self {
            Request::Prepare { with_tail, .. } => u8::from(*with_tail),
            Request::Exec { params, .. }
            | Request::Query { params, .. }
            | Request::ExecSql { params, .. }
            | Request::QuerySql { params, .. } => ParamsFormat::for_count(params.len()).schema(),
            _ => 0,
        };
        encode_frame(out, self.kind(), schema, |buf| {
            let w = &mut Writer::new(buf);
            match self {
                Request::Leader => w.u64(0),
                Request::Client { id } => w.u64(*id),
                Request::Heartbeat { timestamp } => w.u64(*timestamp),
                Request::Open { name, flags, vfs } => {
                    w.text(name);
                    w.u64(*flags);
                    w.text(vfs);
                }
                Request::Prepare { db, sql, .. } => {
                    w.u64(*db);
                    w.text(sql);
                }
                Request::Exec { db, stmt, params } | Request::Query { db, stmt, params } => {
                    w.u32(*db);
                    w.u32(*stmt);
                    encode_params(w, params, ParamsFormat::for_count(params.len()));
                }
                Request::Finalize { db, stmt } => {
                    w.u32(*db);
                    w.u32(*stmt);
                }
                Request::ExecSql { db, sql, params } | Request::QuerySql { db, sql, params } => {
                    w.u64(*db);
                    w.text(sql);
                    encode_params(w, params, ParamsFormat::for_count(params.len()));
                }
                Request::Interrupt { db } => w.u64(*db),
                Request::Connect { id, address } | Request::Add { id, address } => {
                    w.u64(*id);
                    w.text(address);
                }
                Request::Assign { id, role } => {
                    w.u64(*id);
                    if let Some(role) = role {
                        w.u64(*role);
                    }
                }
                Request::Remove { id } => w.u64(*id),
                Request::Dump { name } => w.text(name),
                Request::Cluster { format } => w.u64(*format),
                Request::Transfer { id } => w.u64(*id),
                Request::Describe { format } => w.u64(*format),
                Request::Weight { weight } => w.u64(*weight),
            }
        });
    }
}
