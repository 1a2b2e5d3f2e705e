//! An async client for dqlite-protocol clusters (dqlite-rs and C dqlite):
//! leader discovery, SQL with typed parameters, streamed rows, prepared
//! statements, transactions and the admin calls.
//!
//! ```no_run
//! # async fn example() -> dqlite_client::Result<()> {
//! use dqlite_client::{params, Database};
//!
//! let mut db = Database::connect(&["127.0.0.1:9001"], "demo").await?;
//! db.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)", ()).await?;
//! db.exec("INSERT INTO t (name) VALUES (?)", params!["ünïcode"]).await?;
//! let mut rows = db.query("SELECT id, name FROM t WHERE id > ?", params![0]).await?;
//! while let Some(row) = rows.next().await? {
//!     let (id, name): (i64, String) = (row.get(0)?, row.get(1)?);
//!     println!("{id} {name}");
//! }
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`Client`] (`client.rs`): a connection to one node; leader discovery
//!   ([`Client::find_leader`]); LEADER, CLUSTER, DESCRIBE, WEIGHT, DUMP,
//!   ADD, ASSIGN, REMOVE, TRANSFER; [`Client::open`].
//! - [`Database`], [`Statement`], [`Transaction`] (`database.rs`): SQL on
//!   an open database.
//! - [`Rows`], [`Row`] (`rows.rs`): results streamed one batch at a time.
//! - [`IntoValue`], [`Params`], [`params!`], [`FromValue`] (`value.rs`):
//!   Rust values in and out.
//! - [`Error`] (`error.rs`): not-leader, leadership-lost, busy and SQL
//!   errors told apart from transport errors.
//! - [`Config`] (`config.rs`): timeouts, retry bounds, the message size
//!   limit.
//! - [`net`]: how connections are opened: the [`Dial`] function and
//!   [`Tls`].
//! - `transport.rs`: framing over the socket, one request at a time.
//!
//! Messages are encoded and decoded by `dqlite-wire`. Every wait is
//! bounded by a [`Config`] timeout, and a length word above
//! [`Config::max_message_size`] is an error, not an allocation.
//!
//! A connection runs one request at a time, so its methods take
//! `&mut self`; open several connections for concurrency.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod config;
mod database;
mod error;
pub mod net;
mod rows;
mod transport;
mod value;

pub use client::{Client, Leader, Metadata};
pub use config::Config;
pub use database::{Database, ExecResult, Statement, Transaction};
pub use dqlite_wire::{File, NodeInfo, ReadMode, Role, Value};
pub use error::{Error, Result};
pub use net::{Dial, Tls};
pub use rows::{Row, Rows};
pub use value::{FromValue, IntoValue, Params};
