//! The clients' key-value requests and the reference state machine.
//!
//! A request travels through the raft log as a fixed little-endian record;
//! every operation, reads included, is ordered by the log, so a state machine
//! that applies committed entries in order yields linearizable results. The
//! [`KvMachine`] here is what the raft-rs reference node applies; a consensus
//! adapter may use the consensus crate's own key-value `State` instead.

use std::collections::BTreeMap;

use crate::checker::linearizability::{Command, Key, Outcome, Value};

/// One client request as proposed to raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRequest {
    /// The history's operation id; unique per run.
    pub op_id: u64,
    /// The key.
    pub key: Key,
    /// What to do.
    pub command: Command,
}

/// Why bytes did not decode as a [`KvRequest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value request ({0} bytes)")]
pub struct DecodeError(pub usize);

const ENCODED_LEN: usize = 8 + 8 + 1 + 8 + 1 + 8;

impl KvRequest {
    /// Encode as the bytes of a raft entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.op_id.to_le_bytes());
        out.extend_from_slice(&self.key.to_le_bytes());
        let (tag, value, expected) = match self.command {
            Command::Read => (0u8, 0, None),
            Command::Write(v) => (1, v, None),
            Command::Cas { expected, new } => (2, new, Some(expected)),
        };
        out.push(tag);
        out.extend_from_slice(&value.to_le_bytes());
        let (present, expected) = match expected.flatten() {
            Some(e) => (1u8, e),
            None => (0, 0),
        };
        out.push(present);
        out.extend_from_slice(&expected.to_le_bytes());
        out
    }

    /// Decode the bytes of a raft entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let err = || DecodeError(bytes.len());
        if bytes.len() != ENCODED_LEN {
            return Err(err());
        }
        let word = |at: usize| -> Result<u64, DecodeError> {
            let slice: [u8; 8] = bytes[at..at + 8].try_into().map_err(|_| err())?;
            Ok(u64::from_le_bytes(slice))
        };
        let op_id = word(0)?;
        let key = word(8)?;
        let value = word(17)?;
        let expected = match bytes[25] {
            0 => None,
            1 => Some(word(26)?),
            _ => return Err(err()),
        };
        let command = match bytes[16] {
            0 => Command::Read,
            1 => Command::Write(value),
            2 => Command::Cas {
                expected,
                new: value,
            },
            _ => return Err(err()),
        };
        Ok(Self {
            op_id,
            key,
            command,
        })
    }
}

/// The reference key-value state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvMachine {
    map: BTreeMap<Key, Value>,
}

impl KvMachine {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one request and return what its client is told.
    pub fn apply(&mut self, request: &KvRequest) -> Outcome {
        match request.command {
            Command::Read => Outcome::Read(self.map.get(&request.key).copied()),
            Command::Write(v) => {
                self.map.insert(request.key, v);
                Outcome::Written
            }
            Command::Cas { expected, new } => {
                let swaps = self.map.get(&request.key).copied() == expected;
                if swaps {
                    self.map.insert(request.key, new);
                }
                Outcome::Cas(swaps)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for command in [
            Command::Read,
            Command::Write(7),
            Command::Cas {
                expected: None,
                new: 3,
            },
            Command::Cas {
                expected: Some(0),
                new: u64::MAX,
            },
        ] {
            let r = KvRequest {
                op_id: 42,
                key: 9,
                command,
            };
            assert_eq!(KvRequest::decode(&r.encode()), Ok(r));
        }
        assert!(KvRequest::decode(&[1, 2, 3]).is_err());
        let mut bad = KvRequest {
            op_id: 1,
            key: 1,
            command: Command::Read,
        }
        .encode();
        bad[16] = 9;
        assert!(KvRequest::decode(&bad).is_err());
    }

    #[test]
    fn machine_implements_register_semantics() {
        let mut m = KvMachine::new();
        let req = |command| KvRequest {
            op_id: 0,
            key: 1,
            command,
        };
        assert_eq!(m.apply(&req(Command::Read)), Outcome::Read(None));
        let cas = |expected, new| Command::Cas { expected, new };
        assert_eq!(m.apply(&req(cas(None, 5))), Outcome::Cas(true));
        assert_eq!(m.apply(&req(cas(None, 6))), Outcome::Cas(false));
        assert_eq!(m.apply(&req(Command::Write(8))), Outcome::Written);
        assert_eq!(m.apply(&req(Command::Read)), Outcome::Read(Some(8)));
    }
}
