//! What the server counts: statements by kind and outcome, open client
//! connections, and FAILURE responses by code. The embedder registers
//! these handles in its Prometheus registry and names them.

use dqlite_wire::{Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels of the statement counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatementLabels {
    /// `exec`, `exec_sql`, `query` or `query_sql`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Label of the error counter: the FAILURE code, as a decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code (e.g. `10250`).
    pub code: String,
}

/// The server's metrics. Cheap to clone: clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    /// Statements run, by kind and outcome.
    pub statements: Family<StatementLabels, Counter>,
    /// Client (dqlite protocol) connections open now.
    pub connections: Gauge,
    /// FAILURE responses sent, by code.
    pub errors: Family<CodeLabel, Counter>,
}

impl ServerMetrics {
    /// Counts a statement of `kind` that succeeded or failed.
    pub(crate) fn statement(&self, kind: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.statements
            .get_or_create(&StatementLabels { kind, outcome })
            .inc();
    }

    /// Counts a response if it is a FAILURE.
    pub(crate) fn response(&self, resp: &Response) {
        if let Response::Failure { code, .. } = resp {
            self.errors
                .get_or_create(&CodeLabel {
                    code: code.to_string(),
                })
                .inc();
        }
    }
}

/// The statement kind of a request, if it runs SQL.
pub(crate) fn statement_kind(req: &Request) -> Option<&'static str> {
    match req {
        Request::Exec { .. } => Some("exec"),
        Request::ExecSql { .. } => Some("exec_sql"),
        Request::Query { .. } => Some("query"),
        Request::QuerySql { .. } => Some("query_sql"),
        _ => None,
    }
}

/// Keeps the connection gauge up while a connection is served.
pub(crate) struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        ConnectionGuard(gauge.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
