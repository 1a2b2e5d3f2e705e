//! A Wing–Gong linearizability checker for a key-value register history.
//!
//! Method: linearizability is local (Herlihy & Wing), so the history is split
//! by key and each key is checked on its own as a single register. For one
//! key, the search is Wing & Gong's, with Lowe's memoization as in
//! porcupine: walk the history's call/return events in time order; at a
//! call, try to linearize that operation now (the register model must accept
//! its result), lift it out of the list and restart; at a return whose call
//! is not yet linearized, backtrack. A set of `(linearized operations,
//! register value)` pairs already explored prunes repeated states.
//!
//! Real-time order: `a` precedes `b` only if `a.complete < b.invoke`; equal
//! instants count as concurrent, which can only accept more histories, never
//! reject a correct one.
//!
//! Unknown outcomes: an operation whose outcome is [`Outcome::Unknown`] (a
//! timeout, a lost leader) may have taken effect at any instant after its
//! invocation — even after the run — or never. It is given an infinite
//! completion time and accepts any result; an unknown read constrains
//! nothing and is dropped.

use std::collections::{BTreeMap, HashSet};

/// A key of the key-value store.
pub type Key = u64;
/// A value of the key-value store; a missing key reads as `None`.
pub type Value = u64;

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read the key.
    Read,
    /// Set the key to a value.
    Write(Value),
    /// Set the key to `new` if it currently holds `expected`.
    Cas {
        /// The value the key must hold (`None`: absent).
        expected: Option<Value>,
        /// The value to store on success.
        new: Value,
    },
}

/// What the client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read returned this value.
    Read(Option<Value>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-set returned whether it swapped.
    Cas(bool),
    /// No answer, or an answer that does not say whether it took effect.
    Unknown,
}

/// One client operation with its invocation and completion instants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Identifier, unique in the history (for reports).
    pub id: u64,
    /// The client that issued it (for reports).
    pub client: u64,
    /// The key it touched.
    pub key: Key,
    /// What was asked.
    pub command: Command,
    /// When it was invoked.
    pub invoke: u64,
    /// When its outcome came back; ignored when the outcome is unknown.
    pub complete: u64,
    /// What came back.
    pub outcome: Outcome,
}

/// Why a history could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No linearization exists for this key.
    #[error("history of key {key} is not linearizable ({} operations; longest linearizable prefix: {prefix:?})", operations.len())]
    NotLinearizable {
        /// The key whose sub-history fails.
        key: Key,
        /// The operations on that key.
        operations: Vec<Operation>,
        /// The longest sequence of operation ids the search could order.
        prefix: Vec<u64>,
    },
    /// An outcome of the wrong kind for its command, or completion before invocation.
    #[error("malformed operation: {0:?}")]
    Malformed(Box<Operation>),
    /// The search ran out of its step budget without a verdict.
    #[error("search for key {key} exceeded {steps} steps without a verdict")]
    Inconclusive {
        /// The key whose search was abandoned.
        key: Key,
        /// The budget spent.
        steps: u64,
    },
}

/// Default step budget per key; far above what simulated histories need.
pub const DEFAULT_STEP_BUDGET: u64 = 10_000_000;

/// Check that `history` is linearizable with respect to a key-value map.
pub fn check(history: &[Operation]) -> Result<(), CheckError> {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

/// [`check`] with an explicit per-key step budget.
pub fn check_with_budget(history: &[Operation], budget: u64) -> Result<(), CheckError> {
    let mut by_key: BTreeMap<Key, Vec<Operation>> = BTreeMap::new();
    for op in history {
        validate(op)?;
        if op.command == Command::Read && op.outcome == Outcome::Unknown {
            continue;
        }
        by_key.entry(op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        check_register(key, ops, budget)?;
    }
    Ok(())
}

fn validate(op: &Operation) -> Result<(), CheckError> {
    let kind_ok = matches!(
        (op.command, op.outcome),
        (_, Outcome::Unknown)
            | (Command::Read, Outcome::Read(_))
            | (Command::Write(_), Outcome::Written)
            | (Command::Cas { .. }, Outcome::Cas(_))
    );
    let time_ok = op.outcome == Outcome::Unknown || op.complete >= op.invoke;
    if kind_ok && time_ok {
        Ok(())
    } else {
        Err(CheckError::Malformed(Box::new(op.clone())))
    }
}

/// Apply `op` to a register holding `state`; `None` if its outcome is
/// impossible there, else the new register value.
fn step(state: Option<Value>, op: &Operation) -> Option<Option<Value>> {
    match (op.command, op.outcome) {
        (Command::Read, Outcome::Read(seen)) => (seen == state).then_some(state),
        (Command::Read, _) => Some(state),
        (Command::Write(v), _) => Some(Some(v)),
        (Command::Cas { expected, new }, outcome) => {
            let swaps = state == expected;
            match outcome {
                Outcome::Cas(told) if told != swaps => None,
                _ => Some(if swaps { Some(new) } else { state }),
            }
        }
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// A doubly linked list over events with O(1) lift and unlift (dancing links).
struct Events {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl Events {
    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p] = n;
        }
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Reinsert `i` where it was; valid only in reverse order of unlinking.
    fn relink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = i;
        } else {
            self.next[p] = i;
        }
        if n != NIL {
            self.prev[n] = i;
        }
    }
}

fn check_register(key: Key, ops: Vec<Operation>, budget: u64) -> Result<(), CheckError> {
    let n = ops.len();
    // Sort key: time, then calls before returns so equal instants overlap.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.invoke, 0, i));
        let complete = if op.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            op.complete
        };
        order.push((complete, 1, i));
    }
    order.sort_unstable();
    let events: Vec<Event> = order
        .iter()
        .map(|&(_, kind, op)| Event {
            op,
            is_call: kind == 0,
        })
        .collect();
    let len = events.len();
    let mut call_at = vec![0; n];
    let mut return_at = vec![0; n];
    for (pos, e) in events.iter().enumerate() {
        if e.is_call {
            call_at[e.op] = pos;
        } else {
            return_at[e.op] = pos;
        }
    }
    let mut list = Events {
        events,
        next: (1..=len).map(|i| if i == len { NIL } else { i }).collect(),
        prev: (0..len).map(|i| if i == 0 { NIL } else { i - 1 }).collect(),
        head: if len == 0 { NIL } else { 0 },
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut state: Option<Value> = None;
    let mut cursor = list.head;
    let mut steps = 0u64;

    while list.head != NIL {
        steps += 1;
        if steps > budget {
            return Err(CheckError::Inconclusive { key, steps: budget });
        }
        if cursor == NIL {
            // Unreachable with well-formed lists: a return always follows its call.
            break;
        }
        let event = list.events[cursor];
        if event.is_call {
            let op = event.op;
            if let Some(next_state) = step(state, &ops[op]) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((op, state));
                    state = next_state;
                    list.unlink(call_at[op]);
                    list.unlink(return_at[op]);
                    if stack.len() > best.len() {
                        best = stack.iter().map(|&(o, _)| o).collect();
                    }
                    cursor = list.head;
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cursor = list.next[cursor];
        } else {
            // A return reached with its call still pending: undo the last choice.
            let Some((op, previous)) = stack.pop() else {
                return Err(CheckError::NotLinearizable {
                    key,
                    operations: ops.clone(),
                    prefix: best.iter().map(|&o| ops[o].id).collect(),
                });
            };
            state = previous;
            linearized[op / 64] &= !(1 << (op % 64));
            list.relink(return_at[op]);
            list.relink(call_at[op]);
            cursor = list.next[call_at[op]];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny history builder: `(client, key, command, invoke, complete, outcome)`.
    fn history(rows: &[(u64, Key, Command, u64, u64, Outcome)]) -> Vec<Operation> {
        rows.iter()
            .enumerate()
            .map(
                |(i, &(client, key, command, invoke, complete, outcome))| Operation {
                    id: i as u64,
                    client,
                    key,
                    command,
                    invoke,
                    complete,
                    outcome,
                },
            )
            .collect()
    }

    use Command::{Read as R, Write as W};
    use Outcome::{Read as Got, Unknown, Written as Ok_};

    fn cas(expected: Option<Value>, new: Value) -> Command {
        Command::Cas { expected, new }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn sequential_write_then_read_is_linearizable() {
        let h = history(&[
            (1, 0, R, 0, 1, Got(None)),
            (1, 0, W(5), 2, 3, Ok_),
            (2, 0, R, 4, 5, Got(Some(5))),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let h = history(&[(1, 0, W(1), 0, 1, Ok_), (2, 0, R, 2, 3, Got(Some(2)))]);
        assert!(matches!(
            check(&h),
            Err(CheckError::NotLinearizable { key: 0, .. })
        ));
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_rejected() {
        let h = history(&[
            (1, 0, W(1), 0, 1, Ok_),
            (1, 0, W(2), 2, 3, Ok_),
            (2, 0, R, 4, 5, Got(Some(1))),
        ]);
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in [None, Some(1)] {
            let h = history(&[(1, 0, W(1), 0, 10, Ok_), (2, 0, R, 2, 3, Got(seen))]);
            assert_eq!(check(&h), Ok(()), "read {seen:?}");
        }
    }

    #[test]
    fn equal_instants_count_as_concurrent() {
        let h = history(&[(1, 0, W(1), 0, 5, Ok_), (2, 0, R, 5, 6, Got(None))]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn new_then_old_read_during_one_write_is_rejected() {
        // The classic: once a read saw the new value, a later read may not
        // see the old one, even though the write is still in flight.
        let h = history(&[
            (1, 0, W(0), 0, 1, Ok_),
            (1, 0, W(1), 2, 20, Ok_),
            (2, 0, R, 3, 4, Got(Some(1))),
            (3, 0, R, 5, 6, Got(Some(0))),
        ]);
        assert!(check(&h).is_err());
    }

    #[test]
    fn cas_semantics_are_checked() {
        let ok = history(&[
            (1, 0, W(1), 0, 1, Ok_),
            (1, 0, cas(Some(1), 2), 2, 3, Outcome::Cas(true)),
            (2, 0, cas(Some(1), 3), 4, 5, Outcome::Cas(false)),
            (2, 0, R, 6, 7, Got(Some(2))),
        ]);
        assert_eq!(check(&ok), Ok(()));
        let double_swap = history(&[
            (1, 0, W(1), 0, 1, Ok_),
            (1, 0, cas(Some(1), 2), 2, 3, Outcome::Cas(true)),
            (2, 0, cas(Some(1), 3), 4, 5, Outcome::Cas(true)),
        ]);
        assert!(check(&double_swap).is_err());
        let false_failure = history(&[(1, 0, cas(None, 1), 0, 1, Outcome::Cas(false))]);
        assert!(check(&false_failure).is_err());
    }

    #[test]
    fn concurrent_cas_only_one_may_win() {
        let h = history(&[
            (1, 0, cas(None, 1), 0, 10, Outcome::Cas(true)),
            (2, 0, cas(None, 2), 0, 10, Outcome::Cas(true)),
        ]);
        assert!(check(&h).is_err());
        let h = history(&[
            (1, 0, cas(None, 1), 0, 10, Outcome::Cas(true)),
            (2, 0, cas(None, 2), 0, 10, Outcome::Cas(false)),
            (3, 0, R, 11, 12, Got(Some(1))),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        for seen in [None, Some(7)] {
            let h = history(&[(1, 0, W(7), 0, 1, Unknown), (2, 0, R, 100, 101, Got(seen))]);
            assert_eq!(check(&h), Ok(()), "read {seen:?}");
        }
    }

    #[test]
    fn unknown_write_cannot_be_seen_before_invocation() {
        let h = history(&[(2, 0, R, 0, 1, Got(Some(7))), (1, 0, W(7), 5, 6, Unknown)]);
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_write_cannot_be_seen_then_unseen() {
        let h = history(&[
            (1, 0, W(7), 0, 1, Unknown),
            (2, 0, R, 5, 6, Got(Some(7))),
            (2, 0, R, 7, 8, Got(None)),
        ]);
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_reads_are_ignored_and_unknown_cas_accepts_either_result() {
        let h = history(&[
            (1, 0, R, 0, 1, Unknown),
            (1, 0, W(1), 2, 3, Ok_),
            (2, 0, cas(Some(1), 2), 4, 5, Unknown),
            (3, 0, R, 6, 7, Got(Some(1))),
            (3, 0, R, 8, 9, Got(Some(2))),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn keys_are_independent_but_each_is_checked() {
        let h = history(&[
            (1, 0, W(1), 0, 1, Ok_),
            (1, 1, W(2), 2, 3, Ok_),
            (2, 0, R, 4, 5, Got(Some(1))),
            (2, 1, R, 4, 5, Got(Some(2))),
        ]);
        assert_eq!(check(&h), Ok(()));
        let mut bad = h.clone();
        bad.push(Operation {
            id: 99,
            client: 3,
            key: 1,
            command: R,
            invoke: 6,
            complete: 7,
            outcome: Got(Some(1)),
        });
        assert!(matches!(
            check(&bad),
            Err(CheckError::NotLinearizable { key: 1, .. })
        ));
    }

    #[test]
    fn malformed_operations_are_refused() {
        let wrong_kind = history(&[(1, 0, R, 0, 1, Ok_)]);
        assert!(matches!(check(&wrong_kind), Err(CheckError::Malformed(_))));
        let backwards = history(&[(1, 0, W(1), 5, 1, Ok_)]);
        assert!(matches!(check(&backwards), Err(CheckError::Malformed(_))));
    }

    #[test]
    fn tiny_budget_is_inconclusive_not_a_verdict() {
        let h = history(&[(1, 0, W(1), 0, 10, Ok_), (2, 0, W(2), 0, 10, Ok_)]);
        assert!(matches!(
            check_with_budget(&h, 1),
            Err(CheckError::Inconclusive { .. })
        ));
    }

    /// Brute force: try every order of the operations that respects real
    /// time; unknown ones accept any result (placing one last equals omitting it).
    fn brute_force(ops: &[Operation]) -> bool {
        fn go(ops: &[Operation], used: &mut Vec<bool>, state: Option<Value>, done: usize) -> bool {
            if done == ops.len() {
                return true;
            }
            for i in 0..ops.len() {
                if used[i] {
                    continue;
                }
                // `i` may go next only if no unused op completed before it began.
                let blocked = ops.iter().enumerate().any(|(j, o)| {
                    !used[j] && j != i && o.outcome != Unknown && o.complete < ops[i].invoke
                });
                if blocked {
                    continue;
                }
                if let Some(next) = step(state, &ops[i]) {
                    used[i] = true;
                    if go(ops, used, next, done + 1) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], None, 0)
    }

    /// Random small single-key histories, half of them produced by a real
    /// sequential execution (so they must pass), half with random results.
    fn random_history(rng: &mut crate::rng::SimRng, genuine: bool) -> Vec<Operation> {
        let count = 1 + rng.index(6);
        let mut ops = Vec::new();
        // Genuine: pick a linearization point inside each interval and apply
        // the operations in the order of those points.
        let mut points = Vec::new();
        for id in 0..count {
            let invoke = rng.between(0, 20);
            let complete = invoke + rng.between(0, 10);
            let point = rng.between(invoke, complete);
            let value = rng.between(1, 3);
            let command = match rng.index(3) {
                0 => R,
                1 => W(value),
                _ => cas(
                    if rng.chance(0.3) {
                        None
                    } else {
                        Some(rng.between(1, 3))
                    },
                    value,
                ),
            };
            points.push((point, id));
            ops.push(Operation {
                id: id as u64,
                client: id as u64,
                key: 0,
                command,
                invoke,
                complete,
                outcome: Unknown,
            });
        }
        points.sort();
        let mut state = None;
        for (_, id) in points {
            let op = &mut ops[id];
            op.outcome = match op.command {
                R => Got(state),
                W(v) => {
                    state = Some(v);
                    Ok_
                }
                Command::Cas { expected, new } => {
                    let swaps = state == expected;
                    if swaps {
                        state = Some(new);
                    }
                    Outcome::Cas(swaps)
                }
            };
        }
        for op in &mut ops {
            if !genuine && rng.chance(0.3) {
                op.outcome = match op.command {
                    R => Got([None, Some(1), Some(2), Some(3)][rng.index(4)]),
                    W(_) => Ok_,
                    Command::Cas { .. } => Outcome::Cas(rng.chance(0.5)),
                };
            }
            if rng.chance(0.1) {
                op.outcome = Unknown;
            }
        }
        ops
    }

    #[test]
    fn agrees_with_brute_force_on_random_histories() {
        let mut rng = crate::rng::SimRng::new(2024);
        let (mut accepted, mut rejected) = (0, 0);
        for round in 0..3000 {
            let genuine = round % 2 == 0;
            let h = random_history(&mut rng, genuine);
            let fast = check(&h).is_ok();
            let filtered: Vec<Operation> = h
                .iter()
                .filter(|o| !(o.command == R && o.outcome == Unknown))
                .cloned()
                .collect();
            assert_eq!(fast, brute_force(&filtered), "disagreement on {h:?}");
            if genuine {
                assert!(fast, "a genuine execution must be accepted: {h:?}");
            }
            if fast {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
        // Both verdicts must be exercised or the comparison proves little.
        assert!(accepted > 500 && rejected > 200, "{accepted} / {rejected}");
    }

    #[test]
    fn long_concurrent_history_finishes_quickly() {
        // 4 clients × 100 overlapping writes and reads, as the simulator makes.
        let mut ops = Vec::new();
        let mut value = 0;
        for round in 0..100u64 {
            for client in 0..4u64 {
                let invoke = round * 10 + client;
                let command = if client % 2 == 0 {
                    value += 1;
                    W(value)
                } else {
                    R
                };
                let outcome = match command {
                    W(_) => Ok_,
                    _ => Unknown,
                };
                ops.push(Operation {
                    id: ops.len() as u64,
                    client,
                    key: 0,
                    command,
                    invoke,
                    complete: invoke + 8,
                    outcome,
                });
            }
        }
        assert_eq!(check_with_budget(&ops, 1_000_000), Ok(()));
    }
}
