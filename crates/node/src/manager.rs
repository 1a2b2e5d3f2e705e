//! The role manager (runs on every node, acts only while it leads) and the
//! handover a node does before it stops. The policy is [`crate::roles`];
//! this module measures health and applies the changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite_consensus::{Role, Service, Status};
use dqlite_wire::NodeInfo;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::roles::{self, Targets};

/// How long one health probe of a member that is not in raft may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the manager needs to know, from the node's options.
#[derive(Clone)]
pub(crate) struct Settings {
    /// How to reach other nodes (dial function, TLS).
    pub client: dqlite_client::Config,
    pub targets: Targets,
    /// How long the leader may not hear from a raft member before it counts
    /// as offline (the consensus core's online window).
    pub online_window: Duration,
    /// Pause between rounds.
    pub round: Duration,
}

/// Whether a node answers on its address at all.
async fn reachable(address: &str, client: &dqlite_client::Config) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, client.dial.dial(address)).await,
        Ok(Ok(_))
    )
}

/// DESCRIBE of a node (its failure domain and weight), as go-dqlite's role
/// manager probes: `None` if it does not answer in time. A node that is
/// not running raft (a spare just ADDed) only knows its own options, so
/// this is how they reach the registry.
async fn describe(address: &str, client: &dqlite_client::Config) -> Option<(u64, u64)> {
    let mut config = client.clone();
    config.dial_timeout = PROBE_TIMEOUT;
    config.request_timeout = PROBE_TIMEOUT;
    let probe = async {
        let mut c = dqlite_client::Client::connect(address, &config)
            .await
            .ok()?;
        c.describe().await.ok()
    };
    let m = tokio::time::timeout(PROBE_TIMEOUT * 2, probe)
        .await
        .ok()??;
    Some((m.failure_domain, m.weight))
}

/// The members online now as the leader sees them: raft members it heard
/// from recently, spares that answer DESCRIBE, and itself; and the spares'
/// metadata where it differs from the registry's.
/// `benefit_of_doubt`: a new leader has not heard from everyone yet, so
/// raft members count as online until its window has passed.
pub(crate) async fn online(
    status: &Status,
    benefit_of_doubt: bool,
    client: &dqlite_client::Config,
) -> (BTreeSet<u64>, Vec<(u64, u64, u64)>) {
    let mut up = BTreeSet::from([status.id]);
    let mut spares = Vec::new();
    for n in status.cluster.nodes.values() {
        match status.progress.get(&n.id) {
            Some((_, online)) if *online || benefit_of_doubt => {
                up.insert(n.id);
            }
            Some(_) => {}
            None => spares.push(n.clone()),
        }
    }
    let me = status.id;
    let probes = spares.into_iter().map(move |n| {
        let client = client.clone();
        async move {
            let meta = if n.id == me {
                None
            } else {
                describe(&n.address, &client).await
            };
            (n, meta)
        }
    });
    let mut changed = Vec::new();
    for (n, meta) in futures_join_all(probes).await {
        if let Some((domain, weight)) = meta {
            up.insert(n.id);
            if (domain, weight) != (n.failure_domain, n.weight) {
                changed.push((n.id, domain, weight));
            }
        }
    }
    (up, changed)
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0;
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
        n += 1;
    }
    let mut out: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        if let Ok((i, v)) = r {
            out[i] = Some(v);
        }
    }
    out.into_iter().flatten().collect()
}

/// Runs the role manager until `stop` turns true.
pub(crate) async fn run(service: Service, settings: Settings, mut stop: watch::Receiver<bool>) {
    let mut leading_since: Option<Instant> = None;
    // Since when a standby on its way to voter has been awaited.
    let mut awaiting_since: Option<Instant> = None;
    let mut failing = Failing::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.round) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let status = service.status();
        if !status.is_leader {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let doubt = since.elapsed() < settings.online_window;
        let (online, metadata) = online(&status, doubt, &settings.client).await;
        for (id, domain, weight) in metadata {
            match service.set_metadata(id, domain, weight).await {
                Ok(()) => debug!(node = id, domain, weight, "metadata recorded"),
                Err(e) => debug!(node = id, error = %e, "cannot record metadata"),
            }
        }
        // Decide on the registry as it is now, metadata included.
        let status = service.status();
        // A standby on its way to voter (a joiner, an ASSIGN) counts as a
        // voter already: wait for it rather than promote another, but not
        // for ever (one that never catches up must not freeze the roles).
        if status.cluster.promote.iter().any(|id| online.contains(id)) {
            let since = *awaiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < settings.online_window {
                continue;
            }
        } else {
            awaiting_since = None;
        }
        let nodes: Vec<NodeInfo> = status.cluster.nodes.values().cloned().collect();
        let Some(change) = roles::adjust(&nodes, &online, status.id, settings.targets) else {
            continue;
        };
        debug!(?change, ?online, "role change wanted");
        apply(
            &service,
            &status,
            &change.role,
            &change.candidates,
            &mut failing,
        )
        .await;
    }
}

/// The role change that last failed and how many times in a row: a node
/// catching up through a large snapshot fails the same promotion every
/// round, which is worth one warning, not one a round.
#[derive(Default)]
struct Failing {
    last: Option<(u64, Role)>,
    times: u32,
}

impl Failing {
    fn failed(&mut self, id: u64, role: Role, error: &dqlite_consensus::Error) {
        if self.last == Some((id, role)) {
            self.times += 1;
            // Again every 30 failures (about every 5 minutes when each
            // waits 10 s for a catch-up).
            if self.times.is_multiple_of(30) {
                warn!(node = id, to = ?role, error = %error, times = self.times, "role change still failing");
            } else {
                debug!(node = id, to = ?role, error = %error, times = self.times, "role change failed again");
            }
        } else {
            self.last = Some((id, role));
            self.times = 1;
            warn!(node = id, to = ?role, error = %error, "role change failed");
        }
    }

    fn succeeded(&mut self) {
        *self = Failing::default();
    }
}

/// Gives `role` to the first candidate that takes it; true if one did.
async fn apply(
    service: &Service,
    status: &Status,
    role: &Role,
    candidates: &[u64],
    failing: &mut Failing,
) -> bool {
    for id in candidates {
        let Some(node) = status.cluster.nodes.get(id) else {
            continue;
        };
        match service.set_role(&node.address, *role).await {
            Ok(()) => {
                info!(node = id, from = ?node.role, to = ?role, "role changed");
                failing.succeeded();
                return true;
            }
            Err(e) => {
                failing.failed(*id, *role, &e);
                if matches!(e, dqlite_consensus::Error::StillCatchingUp { .. }) {
                    // On its way: not a reason to promote another as well.
                    return false;
                }
            }
        }
    }
    false
}

/// Before this node stops: hand its voter or standby role to the best
/// healthy node, through the leader (this node has already handed over
/// leadership), then become a spare. Best effort, bounded by `timeout`.
pub(crate) async fn hand_over_role(
    service: &Service,
    timeout: Duration,
    client: &dqlite_client::Config,
) {
    let status = service.status();
    let Some(me) = status.cluster.nodes.get(&status.id).cloned() else {
        return;
    };
    if me.role == Role::Spare || status.cluster.nodes.len() < 2 {
        return;
    }
    let Some((leader_id, leader)) = service.leader() else {
        warn!("no leader known: leaving without handing over the role");
        return;
    };
    if leader_id == status.id {
        // Leadership could not be handed over (no other voter): a leader
        // cannot demote itself, and promoting a replacement now would only
        // leave more voters down while this node is away.
        return;
    }
    let work = async {
        // A follower knows no raft progress: probe everyone.
        let probes = status.cluster.nodes.values().cloned().map(|n| {
            let client = client.clone();
            async move {
                let ok = reachable(&n.address, &client).await;
                (n.id, ok)
            }
        });
        let online: BTreeSet<u64> = futures_join_all(probes)
            .await
            .into_iter()
            .filter_map(|(id, ok)| ok.then_some(id))
            .collect();
        let nodes: Vec<NodeInfo> = status.cluster.nodes.values().cloned().collect();
        let mut client = match dqlite_client::Client::connect(&leader, client).await {
            Ok(c) => c,
            Err(e) => {
                warn!(%leader, error = %e, "cannot reach the leader to hand over the role");
                return;
            }
        };
        if let Some(change) = roles::handover(&nodes, &online, me.id) {
            for id in &change.candidates {
                match client.assign(*id, change.role).await {
                    Ok(()) => {
                        info!(to = id, role = ?change.role, "role handed over");
                        break;
                    }
                    Err(e) => warn!(to = id, error = %e, "role handover failed"),
                }
            }
        }
        match client.assign(me.id, Role::Spare).await {
            Ok(()) => info!("demoted to spare before stopping"),
            // E.g. the voters left would not hold a quorum: keep the role.
            Err(e) => warn!(error = %e, "cannot step down to spare"),
        }
    };
    if tokio::time::timeout(timeout, work).await.is_err() {
        warn!("role handover did not finish in time");
    }
}

/// The join policy the node installs in its consensus service: a joiner
/// gets the role the targets need now (go-dqlite's `Assume`).
pub(crate) fn join_role(targets: Targets) -> Arc<dyn Fn(&Status) -> Role + Send + Sync> {
    Arc::new(move |status: &Status| {
        let mut up: BTreeSet<u64> = status
            .progress
            .iter()
            .filter(|(_, (_, online))| *online)
            .map(|(id, _)| *id)
            .collect();
        up.insert(status.id);
        // Standbys about to be promoted count as the voters they become.
        let nodes: Vec<NodeInfo> = status
            .cluster
            .nodes
            .values()
            .map(|n| match status.cluster.promote.contains(&n.id) {
                true => NodeInfo {
                    role: Role::Voter,
                    ..n.clone()
                },
                false => n.clone(),
            })
            .collect();
        roles::assume(&nodes, &up, targets)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what is logged at WARN.
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Warnings {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_role_change_failing_again_and_again_warns_once_in_a_while() {
        let warnings = Warnings::default();
        let sink = warnings.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || sink.clone())
            .finish();
        let count = || {
            String::from_utf8_lossy(&warnings.0.lock().unwrap())
                .lines()
                .count()
        };
        tracing::subscriber::with_default(subscriber, || {
            let error = dqlite_consensus::Error::Stopped;
            let mut failing = Failing::default();
            for _ in 0..29 {
                failing.failed(3, Role::Voter, &error);
            }
            assert_eq!(count(), 1);
            failing.failed(3, Role::Voter, &error);
            assert_eq!(count(), 2, "every 30th failure warns again");
            // Another node or role is news; so is a failure after a success.
            failing.failed(4, Role::Voter, &error);
            assert_eq!(count(), 3);
            failing.succeeded();
            failing.failed(4, Role::Voter, &error);
            assert_eq!(count(), 4);
        });
    }
}
