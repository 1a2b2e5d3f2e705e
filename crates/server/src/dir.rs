//! The node's data directory: created on first start, locked while a node
//! runs, and holding `node.json` (written atomically) and `db/`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ServerError;

/// What `node.json` records about this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: u64,
    /// Address clients and peers dial.
    pub address: String,
}

/// An open, exclusively locked data directory. The lock is released when
/// this is dropped (the OS releases it too if the process dies).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` (and `db/`) if needed and takes the exclusive lock.
    pub fn open(path: &Path) -> Result<DataDir, ServerError> {
        let io = |what: &str, err| ServerError::Io {
            context: format!("{what} {}", path.display()),
            source: err,
        };
        fs::create_dir_all(path.join("db")).map_err(|e| io("cannot create data directory", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("lock"))
            .map_err(|e| io("cannot open the lock file in", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(ServerError::DirLocked(path.to_path_buf()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", e)),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where database files live.
    pub fn db_dir(&self) -> PathBuf {
        self.path.join("db")
    }

    /// Reads `node.json`, if present.
    pub fn read_node(&self) -> Result<Option<NodeRecord>, ServerError> {
        let file = self.path.join("node.json");
        match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ServerError::Corrupt(format!(
                    "{} is not valid: {e}; move it away to start afresh",
                    file.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ServerError::Io {
                context: format!("cannot read {}", file.display()),
                source: e,
            }),
        }
    }

    /// Writes `node.json` atomically: temp file, fsync, rename, fsync dir.
    pub fn write_node(&self, record: &NodeRecord) -> Result<(), ServerError> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| ServerError::Corrupt(format!("cannot encode node.json: {e}")))?;
        write_atomic(&self.path, "node.json", &bytes).map_err(|e| ServerError::Io {
            context: format!("cannot write node.json in {}", self.path.display()),
            source: e,
        })
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old
/// or the new content, never a mix.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Maps a database name to a file name that cannot escape `db/`: bytes
/// outside `[A-Za-z0-9_-]` and a leading dot are percent-encoded.
pub fn db_file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_db_dir() {
        assert_eq!(db_file_name("app.db"), "app.db");
        assert_eq!(db_file_name("../x"), "%2E.%2Fx");
        assert_eq!(db_file_name("a/b"), "a%2Fb");
        assert_eq!(db_file_name(""), "%00");
        assert_eq!(db_file_name("héllo"), "h%C3%A9llo");
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = DataDir::open(tmp.path()).unwrap();
        match DataDir::open(tmp.path()) {
            Err(ServerError::DirLocked(p)) => assert_eq!(p, tmp.path()),
            other => panic!("expected DirLocked, got {other:?}"),
        }
    }

    #[test]
    fn node_record_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert_eq!(dir.read_node().unwrap(), None);
        let rec = NodeRecord {
            id: 7,
            address: "127.0.0.1:9001".into(),
        };
        dir.write_node(&rec).unwrap();
        assert_eq!(dir.read_node().unwrap(), Some(rec));
    }
}
