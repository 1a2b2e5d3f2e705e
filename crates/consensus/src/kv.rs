//! A replicated key-value [`State`] for tests, the simulator and the
//! `dqlite-kv` binary: a `BTreeMap<String, String>` with conditional writes,
//! so that `satisfied` means something.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::state::{Image, State};

/// An instruction for the key-value state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Unconditionally sets a key.
    Set {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Unconditionally deletes a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets (or deletes, with `value: None`) a key if its current value is
    /// `expected` (`None`: absent). Unsatisfied otherwise.
    Cas {
        /// The key.
        key: String,
        /// Required current value.
        expected: Option<String>,
        /// New value.
        value: Option<String>,
    },
}

impl KvCommand {
    /// Encodes the command as an instruction.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain enum of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an instruction.
    pub fn decode(data: &[u8]) -> Option<Self> {
        serde_json::from_slice(data).ok()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Inner {
    map: BTreeMap<String, String>,
    applied: u64,
}

/// The key-value state. Cloning gives another handle on the same map, so an
/// application can read it while the service applies to it.
#[derive(Debug, Default, Clone)]
pub struct KvState {
    inner: Arc<Mutex<Inner>>,
}

impl KvState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    // std Mutex: held only for map operations, never across an await.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a key (local, possibly stale: call `wait_read` first for a
    /// linearizable read).
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().map.get(key).cloned()
    }

    /// A copy of the whole map.
    pub fn dump(&self) -> BTreeMap<String, String> {
        self.lock().map.clone()
    }
}

impl KvState {
    fn run(&self, index: u64, instruction: &[u8]) -> bool {
        let mut inner = self.lock();
        inner.applied = index;
        // A malformed instruction is unsatisfied and changes nothing, on
        // every node alike.
        let Some(cmd) = KvCommand::decode(instruction) else {
            return false;
        };
        match cmd {
            KvCommand::Set { key, value } => {
                inner.map.insert(key, value);
                true
            }
            KvCommand::Delete { key } => {
                inner.map.remove(&key);
                true
            }
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                if inner.map.get(&key) != expected.as_ref() {
                    return false;
                }
                match value {
                    Some(v) => inner.map.insert(key, v),
                    None => inner.map.remove(&key),
                };
                true
            }
        }
    }
}

impl State for KvState {
    fn apply(&mut self, index: u64, instruction: &[u8]) -> io::Result<bool> {
        Ok(self.run(index, instruction))
    }

    fn skip(&mut self, index: u64) {
        self.lock().applied = index;
    }

    fn freeze(&self) -> io::Result<Box<dyn Image>> {
        // A copy: the key-value service holds small coordination data.
        Ok(Box::new(KvImage(self.lock().map.clone())))
    }

    fn restore(&mut self, index: u64, input: &mut dyn Read) -> io::Result<()> {
        let mut map = BTreeMap::new();
        let read_part = |input: &mut dyn Read| -> io::Result<Option<String>> {
            let mut len = [0u8; 8];
            match input.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let len = u64::from_le_bytes(len);
            if len > 64 << 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "oversized key or value",
                ));
            }
            let mut buf = vec![0u8; len as usize];
            input.read_exact(&mut buf)?;
            String::from_utf8(buf)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        while let Some(k) = read_part(input)? {
            let v = read_part(input)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "key without value"))?;
            map.insert(k, v);
        }
        let mut inner = self.lock();
        inner.map = map;
        inner.applied = index;
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.lock().applied
    }
}

/// A copy of the map, streamed one record per key.
struct KvImage(BTreeMap<String, String>);

impl Image for KvImage {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        for (k, v) in &self.0 {
            for part in [k, v] {
                out.write_all(&(part.len() as u64).to_le_bytes())?;
                out.write_all(part.as_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_is_satisfied_only_when_the_condition_holds() {
        let mut kv = KvState::new();
        let cas = |exp: Option<&str>, val: &str| KvCommand::Cas {
            key: "k".into(),
            expected: exp.map(String::from),
            value: Some(val.into()),
        };
        assert!(kv.apply(1, &cas(None, "a").encode()).unwrap());
        assert!(!kv.apply(2, &cas(None, "b").encode()).unwrap());
        assert!(kv.apply(3, &cas(Some("a"), "c").encode()).unwrap());
        assert!(!kv.apply(4, b"garbage").unwrap());
        assert_eq!(kv.get("k").as_deref(), Some("c"));
        assert_eq!(kv.applied_index(), 4);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut kv = KvState::new();
        for i in 0..100 {
            let cmd = KvCommand::Set {
                key: format!("k{i}"),
                value: "v".repeat(i),
            };
            kv.apply(i as u64 + 1, &cmd.encode()).unwrap();
        }
        let mut buf = Vec::new();
        kv.freeze().unwrap().write_to(&mut buf).unwrap();
        let mut other = KvState::new();
        other.restore(100, &mut buf.as_slice()).unwrap();
        assert_eq!(other.dump(), kv.dump());
        assert_eq!(other.applied_index(), 100);
        assert!(other.restore(1, &mut &buf[..buf.len() - 1]).is_err());
    }
}
