//! The cluster harness: one simulated run.
//!
//! Method: a [`Scheduler`] orders every event — node ticks (each node's
//! clock runs at its own slightly skewed rate), message deliveries, client
//! requests, replies and timeouts, and faults. Each event is handed to one
//! node; its [`Effects`] are turned into new events (messages go through the
//! [`SimNetwork`], answers travel back to the client after a network delay
//! and may be lost). After every event the [`InvariantChecker`] checks every
//! node; at the end the clients' history is checked for linearizability.
//!
//! A run has two phases, as in TigerBeetle's VOPR: a faulty phase (crashes,
//! partitions, one-way link cuts, leadership transfers, lossy network), then
//! a calm phase in which every node is up and the network heals, where the
//! cluster must make progress again (liveness).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dqlite_consensus::lease::Clock;

use crate::checker::invariants::{InvariantChecker, NodeView, Violation};
use crate::checker::linearizability::{self, CheckError, Command, Operation, Outcome};
use crate::clock::{node_clock, SharedTime};
use crate::disk::CrashMode;
use crate::kv::KvRequest;
use crate::net::{random_split, NetConfig, NodeId, SimNetwork};
use crate::node::{Answer, Applied, Effects, MemberChange, SimNode};
use crate::options::{Options, Workload, BANK_ACCOUNTS, BANK_TOTAL};
use crate::rng::SimRng;
use crate::scheduler::Scheduler;
use crate::trace::Trace;

/// Milliseconds per raft tick (nominal; each node's clock is skewed).
pub const TICK_MS: u64 = 10;
/// Upper bound on the calm phase: the cluster must have recovered by then.
pub const CALM_PHASE_MS: u64 = 10_000;
/// Hard cap on events per run, so a livelock cannot hang the simulator.
pub const MAX_EVENTS: u64 = 2_000_000;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A raft invariant broke.
    #[error("invariant violated at {at} ms: {violation}")]
    Invariant {
        /// Simulated time.
        at: u64,
        /// What broke.
        violation: Violation,
    },
    /// The history is not linearizable.
    #[error("linearizability: {0}")]
    Linearizability(CheckError),
    /// The healed cluster made no progress.
    #[error("liveness: {0}")]
    Liveness(String),
    /// A workload's own check failed (bank totals, set contents).
    #[error("{0}")]
    Workload(String),
    /// The node code (or the simulator) panicked.
    #[error("panic: {0}")]
    Panic(String),
    /// A node could not restart from its disk.
    #[error("node {node} failed to restart at {at} ms: {reason}")]
    Restart {
        /// The node.
        node: NodeId,
        /// Simulated time.
        at: u64,
        /// Its error.
        reason: String,
    },
}

/// What a run did, pass or fail.
#[derive(Debug, Clone)]
pub struct Report {
    /// The options of the run.
    pub options: Options,
    /// `Ok` or the first failure.
    pub result: Result<(), Failure>,
    /// Hash of the whole trace: equal for two runs of one seed.
    pub trace_hash: u64,
    /// Events processed.
    pub events: u64,
    /// Operations in the history (known and unknown outcome).
    pub operations: usize,
    /// Operations with a known outcome.
    pub completed: usize,
    /// Distinct committed indexes seen.
    pub committed: usize,
    /// Terms that had a leader.
    pub leader_terms: usize,
    /// Simulated milliseconds at the end.
    pub simulated_ms: u64,
    /// The last trace lines, for a failure report.
    pub trace_tail: Vec<String>,
}

enum Event<M> {
    Tick(NodeId),
    Deliver {
        to: NodeId,
        message: M,
    },
    ClientNext(usize),
    ClientTimeout {
        client: usize,
        op_id: u64,
    },
    Reply {
        client: usize,
        op_id: u64,
        answer: Answer,
    },
    Wake {
        node: NodeId,
        incarnation: u64,
        token: u64,
    },
    Admin,
    Fault,
    Restart(NodeId),
    Heal,
    CalmPhase,
}

struct Client {
    /// The operation in flight, if any.
    current: Option<u64>,
    /// Where the client thinks the leader is.
    leader_hint: Option<NodeId>,
    /// Operations left to issue.
    remaining: usize,
    /// Whether an operation of this client succeeded in the calm phase.
    calm_success: bool,
}

struct Slot<N> {
    node: N,
    up: bool,
    /// Bumped on every crash so timers set before it are ignored.
    incarnation: u64,
    /// Removed from the cluster for good: no longer driven or checked.
    retired: bool,
    tick_ms: u64,
}

/// How the cluster comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formation {
    /// Every node starts as a voter of the same configuration.
    StaticVoters,
    /// Node 1 bootstraps alone; the others join through membership changes
    /// (learner, snapshot, promotion), and nodes may be replaced later.
    GrowFromFirst,
}

/// Most nodes replaced (removed, and a fresh one added) in one run.
pub const MAX_REPLACEMENTS: usize = 2;

/// Creates node `id` with initial configuration `voters` (empty: joiner),
/// reading time on `clock`.
pub type MakeNode<N> = Box<dyn FnMut(NodeId, &[NodeId], Clock, &mut SimRng) -> Result<N, String>>;

/// One simulated run over nodes of type `N`.
pub struct Cluster<N: SimNode> {
    options: Options,
    rng: SimRng,
    scheduler: Scheduler<Event<N::Message>>,
    net: SimNetwork,
    nodes: BTreeMap<NodeId, Slot<N>>,
    formation: Formation,
    /// The members the harness wants; the admin task converges on it.
    target: BTreeSet<NodeId>,
    next_node_id: NodeId,
    replacements: usize,
    make: MakeNode<N>,
    clients: Vec<Client>,
    /// Positions in `history` of requests that certainly never executed.
    omitted: BTreeSet<usize>,
    history: Vec<Operation>,
    /// Operation id -> (position in `history`, client).
    in_flight: BTreeMap<u64, (usize, usize)>,
    next_op_id: u64,
    next_value: u64,
    checker: InvariantChecker,
    trace: Trace,
    calm: bool,
    events: u64,
    /// Simulated time, for the nodes' clocks.
    time: SharedTime,
}

impl<N: SimNode> Cluster<N> {
    /// Build a cluster: `make(id, voters, clock, rng)` creates each node
    /// with the initial configuration `voters` (empty for a node that will
    /// join) and its own skewed clock.
    pub fn new(
        options: Options,
        formation: Formation,
        echo_trace: bool,
        make: impl FnMut(NodeId, &[NodeId], Clock, &mut SimRng) -> Result<N, String> + 'static,
    ) -> Result<Self, String> {
        let mut rng = SimRng::new(options.seed);
        let ids: Vec<NodeId> = (1..=options.nodes as u64).collect();
        let mut scheduler = Scheduler::new();
        let clients = (0..options.clients)
            .map(|c| {
                scheduler.at(rng.between(0, 200), Event::ClientNext(c));
                Client {
                    current: None,
                    leader_hint: None,
                    remaining: options.operations_per_client,
                    calm_success: false,
                }
            })
            .collect();
        let first_fault = rng.between(0, options.fault_interval_ms);
        if options.faults {
            scheduler.at(first_fault, Event::Fault);
        }
        scheduler.at(options.fault_phase_ms, Event::CalmPhase);
        if formation == Formation::GrowFromFirst {
            scheduler.at(0, Event::Admin);
        }
        let mut cluster = Self {
            net: SimNetwork::new(options.net.clone()),
            rng,
            scheduler,
            nodes: BTreeMap::new(),
            formation,
            target: ids.iter().copied().collect(),
            next_node_id: options.nodes as u64 + 1,
            replacements: 0,
            make: Box::new(make),
            clients,
            omitted: BTreeSet::new(),
            history: Vec::new(),
            in_flight: BTreeMap::new(),
            next_op_id: 1,
            next_value: 1,
            checker: InvariantChecker::new(),
            trace: Trace::new(64, echo_trace),
            calm: false,
            events: 0,
            time: SharedTime::default(),
            options,
        };
        for &id in &ids {
            let voters: Vec<NodeId> = match formation {
                Formation::StaticVoters => ids.clone(),
                Formation::GrowFromFirst if id == 1 => vec![1],
                Formation::GrowFromFirst => Vec::new(),
            };
            cluster.add_node(id, &voters)?;
        }
        Ok(cluster)
    }

    fn add_node(&mut self, id: NodeId, voters: &[NodeId]) -> Result<(), String> {
        let rate = Arc::new(AtomicU64::new(TICK_MS));
        let clock = node_clock(self.time.clone(), rate.clone(), TICK_MS);
        let node = (self.make)(id, voters, clock, &mut self.rng)?;
        // Clock skew: each node's tick lasts 8..=12 ms of simulated time.
        let tick_ms = self.rng.between(TICK_MS - 2, TICK_MS + 2);
        rate.store(tick_ms, Ordering::Relaxed);
        let first = self.rng.between(0, tick_ms);
        self.scheduler.after(first, Event::Tick(id));
        self.nodes.insert(
            id,
            Slot {
                node,
                up: true,
                incarnation: 0,
                retired: false,
                tick_ms,
            },
        );
        Ok(())
    }

    /// Run to the end and report.
    pub fn run(mut self) -> Report {
        let result = self.run_inner();
        let completed = self
            .history
            .iter()
            .enumerate()
            .filter(|(i, o)| o.outcome != Outcome::Unknown && !self.omitted.contains(i))
            .count();
        Report {
            result,
            trace_hash: self.trace.hash(),
            events: self.events,
            operations: self.history.len(),
            completed,
            committed: self.checker.committed_count(),
            leader_terms: self.checker.leader_terms(),
            simulated_ms: self.scheduler.now(),
            trace_tail: self.trace.tail().cloned().collect(),
            options: self.options,
        }
    }

    fn run_inner(&mut self) -> Result<(), Failure> {
        let deadline = self.options.fault_phase_ms + CALM_PHASE_MS;
        while let Some((now, event)) = self.scheduler.pop() {
            self.time.store(now, Ordering::Relaxed);
            self.events += 1;
            if now > deadline || self.events > MAX_EVENTS {
                break;
            }
            self.handle(event)?;
            self.check_invariants()?;
            if self.calm && self.clients_done() {
                break;
            }
        }
        let stuck = self.clients.iter().filter(|c| !c.calm_success).count();
        if stuck > 0 {
            return Err(Failure::Liveness(format!(
                "{stuck} of {} clients had no operation succeed within {CALM_PHASE_MS} ms after healing",
                self.clients.len()
            )));
        }
        // Whatever is still in flight has an unknown outcome.
        let history: Vec<Operation> = self
            .history
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.omitted.contains(i))
            .map(|(_, o)| o.clone())
            .collect();
        match self.options.workload {
            Workload::Register => {
                linearizability::check(&history).map_err(Failure::Linearizability)
            }
            Workload::Bank => {
                check_bank(&history)?;
                let (node, applied, balances) = self.final_read()?;
                let total: u64 = balances.iter().fold(0u64, |a, b| a.wrapping_add(*b));
                if !balances.is_empty()
                    && (balances.len() as u64 != BANK_ACCOUNTS || total != BANK_TOTAL)
                {
                    return Err(Failure::Workload(format!(
                        "bank: the final read on node {node} at index {applied} holds balances {balances:?}, not {BANK_ACCOUNTS} accounts totalling {BANK_TOTAL}"
                    )));
                }
                Ok(())
            }
            Workload::Set => self.check_set(&history),
        }
    }

    /// The final read of a set or bank run, on the live node that applied
    /// the most: every entry acknowledged anywhere was applied there, and
    /// image identity makes its state the one every node reaches.
    fn final_read(&mut self) -> Result<(NodeId, u64, Vec<u64>), Failure> {
        let mut best: Option<(u64, NodeId, Vec<u64>)> = None;
        for (&id, slot) in self.nodes.iter_mut() {
            if !slot.up || slot.retired {
                continue;
            }
            if let Some((applied, values)) = slot.node.final_read() {
                if !best.as_ref().is_some_and(|(a, _, _)| applied <= *a) {
                    best = Some((applied, id, values));
                }
            }
        }
        let Some((applied, node, values)) = best else {
            return Err(Failure::Workload(
                "no live node could be read at the end".into(),
            ));
        };
        self.record(format!(
            "final read on node {node} at index {applied}: {values:?}"
        ));
        Ok((node, applied, values))
    }

    /// The final read of a set run holds every acknowledged element and
    /// nothing no client attempted, refused attempts included.
    fn check_set(&mut self, history: &[Operation]) -> Result<(), Failure> {
        let (node, applied, present) = self.final_read()?;
        let present: BTreeSet<u64> = present.into_iter().collect();
        let mut attempted = BTreeSet::new();
        for op in history {
            if let Command::Write(v) = op.command {
                attempted.insert(v);
                if op.outcome == Outcome::Written && !present.contains(&v) {
                    return Err(Failure::Workload(format!(
                        "set: element {v} acknowledged to client {} (op {}) is missing from the final read on node {node} at index {applied}",
                        op.client, op.id
                    )));
                }
            }
        }
        if let Some(v) = present.iter().find(|v| !attempted.contains(v)) {
            return Err(Failure::Workload(format!(
                "set: the final read on node {node} at index {applied} holds {v}, which no client attempted or whose attempt was refused"
            )));
        }
        Ok(())
    }

    /// In the calm phase a client keeps going until one of its operations
    /// succeeds: that is the liveness requirement.
    fn clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.remaining == 0 && c.current.is_none() && c.calm_success)
    }

    fn check_invariants(&mut self) -> Result<(), Failure> {
        let views: Vec<NodeView<'_>> = self
            .nodes
            .values()
            .filter(|s| !s.retired)
            .map(|s| s.node.view())
            .collect();
        let at = self.scheduler.now();
        self.checker
            .check(&views)
            .map_err(|violation| Failure::Invariant { at, violation })
    }

    fn record(&mut self, line: String) {
        let line = format!("{:>6} {line}", self.scheduler.now());
        self.trace.record(line);
    }

    fn handle(&mut self, event: Event<N::Message>) -> Result<(), Failure> {
        match event {
            Event::Tick(id) => {
                let Some(slot) = self.nodes.get_mut(&id) else {
                    return Ok(());
                };
                if slot.retired {
                    return Ok(());
                }
                let tick_ms = slot.tick_ms;
                self.scheduler.after(tick_ms, Event::Tick(id));
                if slot.up {
                    let mut fx = Effects::default();
                    slot.node.tick(&mut self.rng, &mut fx);
                    self.effects(id, fx)?;
                }
            }
            Event::Deliver { to, message } => {
                let Some(slot) = self.nodes.get_mut(&to) else {
                    return Ok(());
                };
                if !slot.up {
                    return Ok(());
                }
                self.trace
                    .record(format!("deliver {}", N::describe(&message)));
                let mut fx = Effects::default();
                slot.node.receive(message, &mut self.rng, &mut fx);
                self.effects(to, fx)?;
            }
            Event::ClientNext(client) => self.client_next(client)?,
            Event::ClientTimeout { client, op_id } => {
                if self.clients[client].current == Some(op_id) {
                    self.record(format!("client {client} op {op_id} timed out"));
                    self.in_flight.remove(&op_id);
                    self.clients[client].current = None;
                    self.clients[client].leader_hint = None;
                    self.scheduler.after(1, Event::ClientNext(client));
                }
            }
            Event::Reply {
                client,
                op_id,
                answer,
            } => {
                if self.clients[client].current == Some(op_id) {
                    let position = self.in_flight.remove(&op_id).map(|(p, _)| p);
                    self.record(format!("client {client} op {op_id} -> {answer:?}"));
                    match (answer, position) {
                        (Answer::Done(outcome), Some(position)) => {
                            let op = &mut self.history[position];
                            op.complete = self.scheduler.now();
                            op.outcome = outcome;
                            if self.calm {
                                self.clients[client].calm_success = true;
                            }
                        }
                        (Answer::Refused, Some(position)) => {
                            self.omitted.insert(position);
                            self.clients[client].remaining += 1;
                            self.clients[client].leader_hint = None;
                        }
                        _ => self.clients[client].leader_hint = None,
                    }
                    self.clients[client].current = None;
                    let think = self.rng.between(0, 20);
                    self.scheduler.after(think, Event::ClientNext(client));
                }
            }
            Event::Wake {
                node,
                incarnation,
                token,
            } => {
                let Some(slot) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if slot.up && !slot.retired && slot.incarnation == incarnation {
                    let mut fx = Effects::default();
                    slot.node.wake(token, &mut self.rng, &mut fx);
                    self.effects(node, fx)?;
                }
            }
            Event::Admin => {
                self.admin()?;
                self.scheduler.after(50, Event::Admin);
            }
            Event::Fault => {
                if !self.calm {
                    self.fault()?;
                    let mean = self.options.fault_interval_ms;
                    let next = self.rng.between(mean / 2, mean + mean / 2);
                    self.scheduler.after(next, Event::Fault);
                }
            }
            Event::Restart(id) => self.restart(id)?,
            Event::Heal => {
                self.record("heal".into());
                self.net.heal();
            }
            Event::CalmPhase => {
                self.record("calm phase: heal, restart all, lossless network".into());
                self.calm = true;
                self.net.heal();
                self.net.set_config(NetConfig {
                    loss: 0.0,
                    duplicate: 0.0,
                    ..self.options.net.clone()
                });
                let down: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, s)| !s.up && !s.retired)
                    .map(|(&id, _)| id)
                    .collect();
                for id in down {
                    self.restart(id)?;
                }
                // Every client issues at least one more operation, so
                // progress after healing is observable.
                for client in &mut self.clients {
                    client.remaining = client.remaining.max(1);
                }
                for c in 0..self.clients.len() {
                    if self.clients[c].current.is_none() {
                        self.scheduler.after(1, Event::ClientNext(c));
                    }
                }
            }
        }
        Ok(())
    }

    fn effects(&mut self, from: NodeId, fx: Effects<N::Message>) -> Result<(), Failure> {
        for applied in fx.applied {
            let at = self.scheduler.now();
            match applied {
                Applied::Entry { index, digest } => self
                    .checker
                    .on_apply(from, index, digest)
                    .map_err(|violation| Failure::Invariant { at, violation })?,
                Applied::Restored { index } => self.checker.on_reset(from, index),
                Applied::Image { index, digest } => self
                    .checker
                    .on_image(from, index, digest)
                    .map_err(|violation| Failure::Invariant { at, violation })?,
            }
        }
        for (to, message) in fx.messages {
            for delay in self.net.route(&mut self.rng, from, to) {
                self.scheduler.after(
                    delay,
                    Event::Deliver {
                        to,
                        message: message.clone(),
                    },
                );
            }
        }
        let incarnation = self.nodes.get(&from).map_or(0, |s| s.incarnation);
        for (delay, token) in fx.timers {
            self.scheduler.after(
                delay,
                Event::Wake {
                    node: from,
                    incarnation,
                    token,
                },
            );
        }
        for (op_id, answer) in fx.answers {
            let Some(&(_, client)) = self.in_flight.get(&op_id) else {
                continue;
            };
            if matches!(answer, Answer::Done(_)) {
                self.clients[client].leader_hint = Some(from);
            }
            // The answer crosses the network too, and may be lost.
            if let Some(&delay) = self.net.route(&mut self.rng, from, 0).first() {
                self.scheduler.after(
                    delay,
                    Event::Reply {
                        client,
                        op_id,
                        answer,
                    },
                );
            }
        }
        Ok(())
    }

    /// The leader, if exactly one live node believes it leads its term and
    /// no other live node is in a higher term.
    fn leader(&self) -> Option<NodeId> {
        let live = || self.nodes.iter().filter(|(_, s)| s.up && !s.retired);
        let top = live().map(|(_, s)| s.node.view().term).max()?;
        live()
            .find(|(_, s)| {
                let v = s.node.view();
                v.is_leader && v.term == top
            })
            .map(|(&id, _)| id)
    }

    /// Converge the membership on `target`: one change at a time through
    /// the leader. A node is retired (stopped for good, as the service stops
    /// a removed node) once it learned of its removal, or once it is down
    /// and the leader no longer counts it.
    fn admin(&mut self) -> Result<(), Failure> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let members: BTreeSet<NodeId> = self.nodes[&leader].node.members().into_iter().collect();
        let mut retired = Vec::new();
        for (&id, slot) in self.nodes.iter_mut() {
            let gone = !self.target.contains(&id) && !members.contains(&id) && !slot.up;
            if !slot.retired && (slot.node.removed() || gone) {
                slot.retired = true;
                slot.up = false;
                retired.push(id);
            }
        }
        for id in retired {
            self.record(format!("node {id} retired"));
        }
        let change = if let Some(&id) = self.target.iter().find(|id| !members.contains(id)) {
            MemberChange::Add(id)
        } else if let Some(&id) = members.iter().find(|id| !self.target.contains(id)) {
            MemberChange::Remove(id)
        } else {
            return Ok(());
        };
        let mut fx = Effects::default();
        if change == MemberChange::Remove(leader) {
            // raft-rs panics when a leader that removed itself keeps
            // stepping (NEEDS.md); hand leadership over first, as a
            // graceful shutdown does.
            let Some(&to) = self.target.iter().find(|id| members.contains(id)) else {
                return Ok(());
            };
            self.record(format!(
                "transfer leadership {leader} -> {to} before removing it"
            ));
            if let Some(slot) = self.nodes.get_mut(&leader) {
                slot.node.transfer_leadership(to, &mut self.rng, &mut fx);
            }
            return self.effects(leader, fx);
        }
        let result = match self.nodes.get_mut(&leader) {
            Some(slot) => slot.node.change_membership(change, &mut self.rng, &mut fx),
            None => return Ok(()),
        };
        if result.is_ok() {
            self.record(format!("membership {change:?} via {leader}"));
        }
        self.effects(leader, fx)
    }

    /// Replace a follower: drop it from the target membership and add a
    /// fresh node with a new id (ids are never reused, as raft requires).
    fn replace_node(&mut self) -> Result<(), Failure> {
        if self.formation != Formation::GrowFromFirst || self.replacements >= MAX_REPLACEMENTS {
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let candidates: Vec<NodeId> = self
            .target
            .iter()
            .copied()
            .filter(|&id| id != leader)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let victim = candidates[self.rng.index(candidates.len())];
        let fresh = self.next_node_id;
        self.next_node_id += 1;
        self.replacements += 1;
        self.target.remove(&victim);
        self.target.insert(fresh);
        self.record(format!("replace node {victim} with node {fresh}"));
        let at = self.scheduler.now();
        self.add_node(fresh, &[])
            .map_err(|reason| Failure::Restart {
                node: fresh,
                at,
                reason,
            })
    }

    fn client_next(&mut self, client: usize) -> Result<(), Failure> {
        if self.calm && !self.clients[client].calm_success {
            self.clients[client].remaining = self.clients[client].remaining.max(1);
        }
        if self.clients[client].current.is_some() || self.clients[client].remaining == 0 {
            return Ok(());
        }
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| !s.retired)
            .map(|(&id, _)| id)
            .collect();
        let target = match self.clients[client].leader_hint {
            Some(id) => id,
            None => ids[self.rng.index(ids.len())],
        };
        let key = self.rng.between(0, self.options.keys - 1);
        let command = match self.options.workload {
            Workload::Register => self.register_command(),
            // Writes are transfers (bank) or inserts (set) of fresh values.
            Workload::Bank | Workload::Set => {
                let reads = if self.options.workload == Workload::Bank {
                    4
                } else {
                    2
                };
                if self.rng.index(10) < reads {
                    Command::Read
                } else {
                    self.next_value += 1;
                    Command::Write(self.next_value)
                }
            }
        };
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let request = KvRequest {
            op_id,
            key,
            command,
        };
        let now = self.scheduler.now();
        // Register before proposing: the proposal may resolve at once.
        let position = self.history.len();
        self.history.push(Operation {
            id: op_id,
            client: client as u64,
            key,
            command,
            invoke: now,
            complete: now,
            outcome: Outcome::Unknown,
        });
        self.in_flight.insert(op_id, (position, client));
        self.clients[client].current = Some(op_id);
        let mut fx = Effects::default();
        let proposed = match self.nodes.get_mut(&target) {
            Some(slot) if slot.up && !slot.retired => {
                slot.node.propose(request, &mut self.rng, &mut fx)
            }
            _ => Err(crate::node::ProposeError::NotLeader),
        };
        match proposed {
            Ok(()) => {
                self.record(format!(
                    "client {client} op {op_id} {command:?} key {key} -> node {target}"
                ));
                self.clients[client].remaining -= 1;
                let timeout = self.options.client_timeout_ms;
                self.scheduler
                    .after(timeout, Event::ClientTimeout { client, op_id });
                self.effects(target, fx)?;
            }
            Err(_) => {
                // Refused before entering the log: it never executes, so it
                // is not part of the history. Try elsewhere after a pause.
                self.history.pop();
                self.in_flight.remove(&op_id);
                self.clients[client].current = None;
                self.clients[client].leader_hint = None;
                self.effects(target, fx)?;
                let pause = self.rng.between(5, 30);
                self.scheduler.after(pause, Event::ClientNext(client));
            }
        }
        Ok(())
    }

    /// A register operation: mostly reads and writes, some compare-and-sets.
    fn register_command(&mut self) -> Command {
        match self.rng.index(10) {
            0..=3 => Command::Read,
            4..=7 => {
                self.next_value += 1;
                Command::Write(self.next_value)
            }
            _ => {
                self.next_value += 1;
                // Expect a recent value, so some CAS succeed.
                let back = self.rng.between(0, 3);
                let expected = self.next_value.checked_sub(1 + back).filter(|&v| v > 1);
                Command::Cas {
                    expected,
                    new: self.next_value,
                }
            }
        }
    }

    /// Crashes `victim` (losing unsynced writes, tearing the last one when
    /// the options say so) and schedules its restart within `max_downtime`.
    fn crash(&mut self, victim: NodeId, what: &str, max_downtime: u64) {
        let mode = if self.options.torn_writes {
            CrashMode::TornLastWrite
        } else {
            CrashMode::LoseUnsynced
        };
        self.record(format!("{what} node {victim} ({mode:?})"));
        if let Some(slot) = self.nodes.get_mut(&victim) {
            slot.node.crash(mode);
            slot.up = false;
            slot.incarnation += 1;
        }
        let downtime = self.rng.between(50, max_downtime);
        self.scheduler.after(downtime, Event::Restart(victim));
    }

    fn fault(&mut self) -> Result<(), Failure> {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| !s.retired)
            .map(|(&id, _)| id)
            .collect();
        let up: Vec<NodeId> = ids.iter().copied().filter(|id| self.nodes[id].up).collect();
        match self.rng.index(9) {
            0 | 1 => {
                if let Some(&victim) = up.get(self.rng.index(up.len())) {
                    self.crash(victim, "crash", 2_000);
                }
            }
            2 | 3 => {
                let groups = random_split(&mut self.rng, &ids);
                self.record(format!("partition {groups:?}"));
                self.net.partition(&groups);
                let duration = self.rng.between(100, 3_000);
                self.scheduler.after(duration, Event::Heal);
            }
            4 => {
                let from = ids[self.rng.index(ids.len())];
                let to = ids[self.rng.index(ids.len())];
                self.record(format!("cut link {from} -> {to}"));
                self.net.cut_link(from, to);
                let duration = self.rng.between(100, 3_000);
                self.scheduler.after(duration, Event::Heal);
            }
            5 => {
                let leader = up
                    .iter()
                    .copied()
                    .find(|id| self.nodes[id].node.view().is_leader);
                if let Some(leader) = leader {
                    let to = ids[self.rng.index(ids.len())];
                    self.record(format!("transfer leadership {leader} -> {to}"));
                    let mut fx = Effects::default();
                    if let Some(slot) = self.nodes.get_mut(&leader) {
                        slot.node.transfer_leadership(to, &mut self.rng, &mut fx);
                    }
                    self.effects(leader, fx)?;
                }
            }
            6 => self.replace_node()?,
            7 if self.rng.chance(0.3) => {
                // A power cut of several machines at once (a rack): unsynced
                // data is lost on a majority together.
                let count = up.len() / 2 + 1;
                for &victim in up.iter().take(count) {
                    self.crash(victim, "power cut", 1_000);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Failure> {
        let Some(slot) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        if slot.up || slot.retired {
            return Ok(());
        }
        let mut fx = Effects::default();
        let at = self.scheduler.now();
        let applied = slot
            .node
            .restart(&mut self.rng, &mut fx)
            .map_err(|reason| Failure::Restart {
                node: id,
                at,
                reason,
            })?;
        slot.up = true;
        self.checker.on_reset(id, applied);
        self.record(format!("restart node {id} (applied {applied})"));
        self.effects(id, fx)
    }
}

/// Every read of a bank run saw the constant total (a read of the whole
/// table in one statement: a snapshot), and no negative balance (the node
/// reports `u64::MAX` then, or for a missing account).
fn check_bank(history: &[Operation]) -> Result<(), Failure> {
    for op in history {
        if let (Command::Read, Outcome::Read(Some(total))) = (op.command, op.outcome) {
            if total != BANK_TOTAL {
                return Err(Failure::Workload(format!(
                    "bank: client {} (op {}) read a total of {total}, not {BANK_TOTAL} ({} marks a negative balance or a missing account)",
                    op.client,
                    op.id,
                    u64::MAX
                )));
            }
        }
    }
    Ok(())
}
