//! Prometheus metrics of a node, served as text at `GET /metrics` on the
//! node's own address (beside the `/raft/` peer traffic). Every name lives
//! here; the crates below only keep the live values.

use std::sync::Arc;

use dqlite_consensus::Service;
use dqlite_server::ServerMetrics;
use dqlite_store::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of the Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A node's registry and the gauges read from consensus at each scrape.
pub(crate) struct NodeMetrics {
    registry: Registry,
    service: Service,
    term: Gauge,
    commit: Gauge,
    applied: Gauge,
    leader: Gauge,
}

impl NodeMetrics {
    /// Registers the metrics of `service`, `store` and the server's.
    pub(crate) fn new(service: &Service, store: &Store, server: &ServerMetrics) -> Arc<Self> {
        let mut registry = Registry::default();
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let term = gauge(&mut registry, "dqlite_raft_term", "Current raft term");
        let commit = gauge(
            &mut registry,
            "dqlite_raft_commit_index",
            "Highest log index known committed",
        );
        let applied = gauge(
            &mut registry,
            "dqlite_raft_applied_index",
            "Highest log index applied to the databases here",
        );
        let leader = gauge(
            &mut registry,
            "dqlite_raft_leader",
            "1 while this node is the raft leader, else 0",
        );
        let stats = service.stats();
        registry.register(
            "dqlite_raft_fsync_seconds",
            "Duration of each raft log fsync",
            stats.fsync_seconds.clone(),
        );
        registry.register(
            "dqlite_raft_entries_per_fsync",
            "Log entries made durable by each raft log fsync",
            stats.entries_per_fsync.clone(),
        );
        registry.register(
            "dqlite_raft_snapshots",
            "Raft snapshots taken here or installed from the leader",
            stats.snapshots.clone(),
        );
        registry.register(
            "dqlite_raft_snapshot_seconds",
            "Duration of taking or installing a raft snapshot",
            stats.snapshot_seconds.clone(),
        );
        registry.register(
            "dqlite_raft_read_rounds",
            "ReadIndex rounds started here (a heartbeat to every peer each)",
            stats.read_rounds.clone(),
        );
        registry.register(
            "dqlite_raft_lease_reads",
            "Read barriers answered under the leader's read lease, without a round",
            stats.lease_reads.clone(),
        );
        registry.register(
            "dqlite_commit_seconds",
            "From a transaction's commit point on this node to its apply here",
            store.commit_seconds(),
        );
        registry.register(
            "dqlite_sql_statements",
            "SQL statements run (EXEC, EXEC_SQL, QUERY, QUERY_SQL), by kind and outcome",
            server.statements.clone(),
        );
        registry.register(
            "dqlite_client_connections",
            "dqlite protocol client connections open now",
            server.connections.clone(),
        );
        registry.register(
            "dqlite_errors",
            "FAILURE responses sent to clients, by error code",
            server.errors.clone(),
        );
        Arc::new(NodeMetrics {
            registry,
            service: service.clone(),
            term,
            commit,
            applied,
            leader,
        })
    }

    /// The text exposition, with the raft gauges read now.
    pub(crate) fn render(&self) -> String {
        let status = self.service.status();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(as_i64(status.term));
        self.commit.set(as_i64(status.commit));
        self.applied.set(as_i64(status.applied));
        self.leader.set(i64::from(status.is_leader));
        let mut out = String::new();
        // Writing into a String cannot fail; an empty page is the fallback.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
