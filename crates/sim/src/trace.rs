//! The trace of a run: one line per notable event, and a stable hash of it.
//!
//! Two runs of the same seed must produce the same trace hash; the hash uses
//! FNV-1a rather than `std`'s hasher, whose algorithm is not guaranteed
//! across Rust releases, so a hash printed today still means something later.

/// A running trace: a hash of every line, and the last lines for reports.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    lines: u64,
    tail: std::collections::VecDeque<String>,
    tail_capacity: usize,
    echo: bool,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, continuing from `hash`.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// FNV-1a of `bytes` from the standard offset basis.
pub fn digest(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

impl Trace {
    /// An empty trace keeping the last `tail_capacity` lines; with `echo`
    /// every line is also printed to stderr as it is recorded.
    pub fn new(tail_capacity: usize, echo: bool) -> Self {
        Self {
            hash: FNV_OFFSET,
            lines: 0,
            tail: std::collections::VecDeque::new(),
            tail_capacity,
            echo,
        }
    }

    /// Record one line.
    pub fn record(&mut self, line: String) {
        self.hash = fnv1a(self.hash, line.as_bytes());
        self.hash = fnv1a(self.hash, b"\n");
        self.lines += 1;
        if self.echo {
            eprintln!("{line}");
        }
        if self.tail_capacity > 0 {
            if self.tail.len() == self.tail_capacity {
                self.tail.pop_front();
            }
            self.tail.push_back(line);
        }
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Number of lines recorded.
    pub fn len(&self) -> u64 {
        self.lines
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The last lines kept.
    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }
}

/// One line describing a raft message, the same for every node type.
pub fn describe_raft(m: &raft::eraftpb::Message) -> String {
    format!(
        "{:?} {}->{} t{} i{} lt{} n{} c{} r{}",
        m.get_msg_type(),
        m.from,
        m.to,
        m.term,
        m.index,
        m.log_term,
        m.entries.len(),
        m.commit,
        m.reject
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn hash_depends_on_content_and_order() {
        let mut a = Trace::new(2, false);
        let mut b = Trace::new(2, false);
        a.record("x".into());
        a.record("y".into());
        b.record("y".into());
        b.record("x".into());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.len(), 2);
        a.record("z".into());
        assert_eq!(a.tail().cloned().collect::<Vec<_>>(), vec!["y", "z"]);
    }
}
