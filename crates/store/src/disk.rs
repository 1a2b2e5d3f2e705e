//! Disk mode: each database's pages live in a file of their own (a plain
//! SQLite image, page *n* at `(n - 1) × page size`), updated by
//! checkpoints. Between checkpoints the changed pages stay in memory in the
//! current version; a checkpoint writes them into the file, fsyncs, and
//! then records what the files hold in `checkpoint.json` (written
//! atomically). On restart the files plus that record are the state as of
//! the recorded index, and consensus replays the log after it. A torn
//! checkpoint is harmless: the record still names the older index, and the
//! replayed entries carry full page images that shadow whatever half-written
//! pages the files hold. A snapshot restore writes a new generation of
//! files beside the old one and switches with the record, so a crash during
//! a restore leaves the old generation intact.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A checkpointed database file, read with positional reads so that any
/// number of readers share it without a lock.
#[derive(Debug)]
pub struct BaseFile {
    file: File,
}

impl BaseFile {
    /// Opens (creating if needed) the file at `path`.
    pub fn open(path: &Path) -> io::Result<BaseFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(BaseFile { file })
    }

    /// Page `pgno`; past the end of the file it reads as zeros.
    pub fn read_page(&self, pgno: u32, page_size: u32) -> io::Result<Arc<[u8]>> {
        let mut buf = vec![0u8; page_size as usize];
        let offset = u64::from(pgno - 1) * u64::from(page_size);
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Arc::from(buf))
    }

    /// Writes `page` as page `pgno`.
    pub fn write_page(&self, pgno: u32, page: &[u8]) -> io::Result<()> {
        let offset = u64::from(pgno - 1) * page.len() as u64;
        self.file.write_all_at(page, offset)
    }

    /// Sets the file to `pages` pages and makes everything durable.
    pub fn finish(&self, pages: u32, page_size: u32) -> io::Result<()> {
        self.file.set_len(u64::from(pages) * u64::from(page_size))?;
        self.file.sync_data()
    }
}

/// What the database files held at the last completed checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The consensus index the files reflect.
    pub applied: u64,
    /// Which generation of files the record describes.
    #[serde(default)]
    pub generation: u64,
    /// Every database.
    pub databases: Vec<CheckpointDb>,
}

/// One database in a checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDb {
    /// Database name.
    pub name: String,
    /// Change sequence.
    pub seq: u64,
    /// Version id (absent in records written before ids existed).
    #[serde(default)]
    pub id: u64,
    /// Page size.
    pub page_size: u32,
    /// Size in pages.
    pub pages: u32,
}

const RECORD: &str = "checkpoint.json";
/// Ends the record: `\ncrc32c <8 hex digits>\n` over the JSON before it.
const CRC_TAG: &str = "\ncrc32c ";

/// Splits a record into its JSON and its checksum, if it has one.
fn split_crc(bytes: &[u8]) -> Option<(&[u8], u32)> {
    let tail = bytes.len().checked_sub(CRC_TAG.len() + 9)?;
    let (body, rest) = bytes.split_at(tail);
    let hex = rest.strip_prefix(CRC_TAG.as_bytes())?.strip_suffix(b"\n")?;
    let crc = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((body, crc))
}

/// The directory of a disk-mode store.
#[derive(Debug, Clone)]
pub struct DiskDir {
    dir: PathBuf,
}

impl DiskDir {
    /// Uses (creating) `dir`.
    pub fn new(dir: &Path) -> io::Result<DiskDir> {
        fs::create_dir_all(dir)?;
        Ok(DiskDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The file of database `name` in `generation`: its name hex-encoded,
    /// so that no name can escape the directory or collide after case
    /// folding.
    pub fn db_path(&self, name: &str, generation: u64) -> io::Result<PathBuf> {
        if name.len() > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "database names longer than 100 bytes are not supported in disk mode",
            ));
        }
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        Ok(self.dir.join(format!("{hex}.{generation}.db")))
    }

    /// Removes the files of generations before `generation` (superseded by
    /// a restore; the record no longer names them).
    pub fn remove_older(&self, generation: u64) {
        self.remove_where(|g| g < generation);
    }

    /// Removes the files of every generation but `generation` (at open:
    /// later ones were restores that never switched the record).
    pub fn remove_others(&self, generation: u64) {
        self.remove_where(|g| g != generation);
    }

    fn remove_where(&self, remove: impl Fn(u64) -> bool) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let old = name
                .strip_suffix(".db")
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(_, g)| g.parse::<u64>().ok())
                .is_some_and(&remove);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of the checkpoint record.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join(RECORD)
    }

    /// Reads the checkpoint record; none yet means an empty store. A record
    /// that fails its checksum or does not parse is `InvalidData`.
    pub fn read_record(&self) -> io::Result<Checkpoint> {
        let path = self.dir.join(RECORD);
        let invalid = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid checkpoint record: {why}", path.display()),
            )
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
            Err(e) => return Err(e),
        };
        let body = match split_crc(&bytes) {
            Some((body, crc)) if crc32c::crc32c(body) == crc => body,
            Some(_) => return Err(invalid("checksum mismatch".into())),
            // Records written before the checksum existed.
            None => &bytes[..],
        };
        serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))
    }

    /// Replaces the record atomically: temp file, fsync, rename, fsync dir.
    pub fn write_record(&self, record: &Checkpoint) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(format!("{CRC_TAG}{crc:08x}\n").as_bytes());
        let tmp = self.dir.join(format!(".{RECORD}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(RECORD))?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DiskDir::new(tmp.path()).unwrap();
        assert_eq!(dir.read_record().unwrap(), Checkpoint::default());
        let rec = Checkpoint {
            applied: 7,
            generation: 1,
            databases: vec![CheckpointDb {
                name: "a".into(),
                seq: 3,
                id: 9,
                page_size: 4096,
                pages: 2,
            }],
        };
        dir.write_record(&rec).unwrap();
        assert_eq!(dir.read_record().unwrap(), rec);
        // A flipped digit still parses as JSON: the checksum catches it.
        let path = tmp.path().join(RECORD);
        let good = std::fs::read(&path).unwrap();
        let at = good.iter().position(|b| *b == b'7').unwrap();
        let mut bad = good.clone();
        bad[at] = b'5';
        std::fs::write(&path, &bad).unwrap();
        let err = dir.read_record().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // A record from before checksums still reads.
        std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(dir.read_record().unwrap(), rec);
        std::fs::write(tmp.path().join(RECORD), b"{garbage").unwrap();
        let err = dir.read_record().unwrap_err();
        assert!(
            err.to_string().contains("not a valid checkpoint record"),
            "{err}"
        );
    }

    #[test]
    fn names_map_to_safe_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DiskDir::new(tmp.path()).unwrap();
        assert_eq!(
            dir.db_path("../a", 3).unwrap(),
            tmp.path().join("2e2e2f61.3.db")
        );
        assert!(dir.db_path(&"x".repeat(101), 0).is_err());
    }

    #[test]
    fn pages_past_the_end_read_as_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let f = BaseFile::open(&tmp.path().join("f.db")).unwrap();
        f.write_page(1, &[7u8; 512]).unwrap();
        f.finish(1, 512).unwrap();
        assert_eq!(&f.read_page(1, 512).unwrap()[..], &[7u8; 512][..]);
        assert_eq!(&f.read_page(3, 512).unwrap()[..], &[0u8; 512][..]);
    }
}
