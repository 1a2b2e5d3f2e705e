//! Streamed result sets: [`Rows`] reads one ROWS batch at a time, so a
//! result of any size needs memory for one batch only.

use std::sync::Arc;

use dqlite_wire::Value;

use crate::transport::Transport;
use crate::{Error, FromValue, Result};

/// Most consecutive batches without a row before the stream is called a
/// protocol error. A PART batch may legitimately hold no row (the C server
/// sends one when the previous batch ended exactly full), but never many
/// in a row.
const EMPTY_BATCHES_MAX: u32 = 64;

/// One row of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// The value of column `index`, converted.
    ///
    /// ```
    /// # fn example(row: &dqlite_client::Row) -> dqlite_client::Result<()> {
    /// let id: i64 = row.get(0)?;
    /// let name: Option<String> = row.get(1)?;
    /// # Ok(()) }
    /// ```
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let value = self.values.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "column index {index} out of range for {} columns",
                self.values.len()
            ))
        })?;
        T::from_value(value)
    }

    /// The value of the first column named `name`, converted.
    pub fn get_by_name<T: FromValue>(&self, name: &str) -> Result<T> {
        let index = self
            .columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| Error::InvalidArgument(format!("no column named {name:?}")))?;
        self.get(index)
    }

    /// The raw values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The raw values, owned.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for a row of no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A result set being streamed from the server.
///
/// Rows arrive in batches; [`Rows::next`] returns the buffered rows of
/// the current batch and reads the next batch only when they run out.
/// The connection is borrowed until the result is finished or dropped.
///
/// Dropping an unfinished result is allowed: the connection remembers it,
/// and the next call on it first sends INTERRUPT and discards the rest of
/// the result up to the server's EMPTY (what go-dqlite's `Rows.Close`
/// does). [`Rows::close`] does the same at once and reports its errors.
///
/// ```no_run
/// # async fn example(db: &mut dqlite_client::Database) -> dqlite_client::Result<()> {
/// let mut rows = db.query("SELECT id, name FROM users", ()).await?;
/// while let Some(row) = rows.next().await? {
///     let id: i64 = row.get(0)?;
///     let name: String = row.get(1)?;
///     println!("{id} {name}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Rows<'a> {
    transport: &'a mut Transport,
    columns: Arc<[String]>,
    batch: std::vec::IntoIter<Vec<Value>>,
    /// The server sends another batch after the current one (PART).
    more: bool,
}

impl<'a> Rows<'a> {
    pub(crate) fn new(transport: &'a mut Transport, first: dqlite_wire::Rows) -> Rows<'a> {
        Rows {
            transport,
            columns: first.columns.into(),
            batch: first.rows.into_iter(),
            more: first.more,
        }
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next row, or `None` at the end of the result.
    pub async fn next(&mut self) -> Result<Option<Row>> {
        for _ in 0..=EMPTY_BATCHES_MAX {
            if let Some(values) = self.batch.next() {
                return Ok(Some(Row {
                    columns: self.columns.clone(),
                    values,
                }));
            }
            if !self.more {
                return Ok(None);
            }
            // Cleared first: if reading fails, the transport has settled
            // the connection's state and there is nothing left to drain.
            self.more = false;
            let batch = self.transport.next_batch().await?;
            if batch.columns.len() != self.columns.len() {
                self.transport.poison();
                return Err(self.transport.protocol(format!(
                    "a batch has {} columns, the result {}",
                    batch.columns.len(),
                    self.columns.len()
                )));
            }
            self.more = batch.more;
            self.batch = batch.rows.into_iter();
        }
        self.transport.poison();
        Err(self.transport.protocol(format!(
            "{EMPTY_BATCHES_MAX} consecutive result batches without a row"
        )))
    }

    /// Reads every remaining row into memory.
    pub async fn all(mut self) -> Result<Vec<Row>> {
        let mut out = Vec::new();
        while let Some(row) = self.next().await? {
            out.push(row);
        }
        Ok(out)
    }

    /// Ends the result now: if batches are still to come, sends INTERRUPT
    /// and discards them.
    pub async fn close(self) -> Result<()> {
        if self.more {
            self.transport.interrupt().await?;
        }
        Ok(())
    }
}
