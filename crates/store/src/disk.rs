//! Disk mode: each database's pages live in a file of their own (a plain
//! SQLite image, page *n* at `(n - 1) × page size`), updated by
//! checkpoints. Between checkpoints the changed pages stay in memory in the
//! current version; a checkpoint writes them into the file, fsyncs, and
//! then records what the files hold in `checkpoint.json` (written
//! atomically). On restart the files plus that record are the state as of
//! the recorded index, and consensus replays the log after it. A torn
//! checkpoint is harmless: the record still names the older index, and the
//! replayed entries carry full page images that shadow whatever newer or
//! half-written pages the files hold (until then such a page cannot be read).
//! So a disk-mode node proposes whole pages, never patches. A snapshot
//! restore writes a new generation of files beside the old one and switches
//! with the record, so a crash during a restore leaves the old generation
//! intact.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A checkpointed database file, read with positional reads so that any
/// number of readers share it without a lock, and the checksums of its
/// pages.
///
/// Beside `X.db` lies `X.sums`, 16 bytes per page (`PageSum`). A checkpoint
/// makes the new sums durable before it writes any page, then the pages,
/// then the record. So a sum written at or before the record's index is
/// the page's content, exactly; one written after it belongs to a
/// checkpoint a crash cut short, whose pages the replayed log shadows, and
/// the page may hold its old content, its new one, or (power loss mid-page)
/// neither: only the old one can be read before the replay shadows it.
/// Every page is checked when the file is opened and whenever it is read
/// from it.
#[derive(Debug)]
pub struct BaseFile {
    path: PathBuf,
    file: File,
    sums_file: File,
    /// The crc32c each page must have when read (index `pgno - 1`).
    sums: RwLock<Vec<u32>>,
    /// Pages that a checkpoint cut short by a crash left newer than the
    /// record, or torn: unreadable until a checkpoint writes them again.
    unsettled: Mutex<BTreeSet<u32>>,
}

/// The checksums of one page: 16 bytes at `(pgno - 1) × 16`, little-endian.
/// A crc of 0 stands for a page of zeros (never written).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PageSum {
    /// The content before the checkpoint that wrote this.
    previous: u32,
    /// The content that checkpoint wrote.
    current: u32,
    /// The index of that checkpoint (0: a restore or an upgrade).
    at: u64,
}

const SUM_BYTES: usize = 16;

impl PageSum {
    fn encode(self) -> [u8; SUM_BYTES] {
        let mut out = [0u8; SUM_BYTES];
        out[..4].copy_from_slice(&self.previous.to_le_bytes());
        out[4..8].copy_from_slice(&self.current.to_le_bytes());
        out[8..].copy_from_slice(&self.at.to_le_bytes());
        out
    }

    fn decode(b: &[u8; SUM_BYTES]) -> PageSum {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&b[8..]);
        PageSum {
            previous: u32_at(0),
            current: u32_at(4),
            at: u64::from_le_bytes(at),
        }
    }
}

/// How often a long start-up check logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The checksums file beside database file `db`.
pub fn sums_path(db: &Path) -> PathBuf {
    db.with_extension("sums")
}

fn zero_crc(page_size: u32) -> u32 {
    crc32c::crc32c(&vec![0u8; page_size as usize])
}

/// Whether content with checksum `crc` matches a stored one (0 stands for
/// a page of zeros).
fn matches(stored: u32, crc: u32, zero: u32) -> bool {
    stored == crc || (stored == 0 && crc == zero)
}

fn open_rw(path: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
}

/// Fills `buf` from `offset`; bytes past the end of the file read as zero.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[filled..].fill(0);
    Ok(())
}

fn damaged(path: &Path, pgno: u32, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "page {pgno} of {} fails its checksum: {what}",
            path.display()
        ),
    )
}

impl BaseFile {
    /// Opens (creating if needed) the file at `path` to be written from
    /// scratch: its checksums start empty.
    pub fn create(path: &Path) -> io::Result<BaseFile> {
        Ok(BaseFile {
            path: path.to_path_buf(),
            file: open_rw(path, false)?,
            sums_file: open_rw(&sums_path(path), true)?,
            sums: RwLock::new(Vec::new()),
            unsettled: Mutex::default(),
        })
    }

    /// Opens the file at `path` that the checkpoint record of index
    /// `applied` says holds `pages` pages of `page_size` bytes, and checks
    /// every page (see [`BaseFile`]). A damaged page is `InvalidData`
    /// naming the file and the page. Without `has_sums` (a record written
    /// before checksums existed) the checksums are computed from the file.
    pub fn open_verified(
        path: &Path,
        page_size: u32,
        pages: u32,
        has_sums: bool,
        applied: u64,
    ) -> io::Result<BaseFile> {
        let sums_at = sums_path(path);
        if has_sums && pages > 0 && !sums_at.exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is missing: the pages of {} cannot be checked",
                    sums_at.display(),
                    path.display()
                ),
            ));
        }
        let base = BaseFile {
            path: path.to_path_buf(),
            file: open_rw(path, false)?,
            sums_file: open_rw(&sums_at, !has_sums)?,
            sums: RwLock::new(Vec::new()),
            unsettled: Mutex::default(),
        };
        let mut stored = vec![0u8; pages as usize * SUM_BYTES];
        if has_sums {
            read_full_at(&base.sums_file, &mut stored, 0)?;
        }
        let zero = zero_crc(page_size);
        let ps = page_size as usize;
        let mut sums = Vec::with_capacity(pages as usize);
        let mut unsettled = BTreeSet::new();
        // About 1 MiB per read.
        let per_read = ((1usize << 20) / ps.max(1)).max(1) as u32;
        let mut chunk = vec![0u8; ps * per_read as usize];
        let started = Instant::now();
        let mut logged = started;
        let mut pgno = 1u32;
        while pgno <= pages {
            let n = (pages - pgno + 1).min(per_read) as usize;
            let buf = &mut chunk[..n * ps];
            read_full_at(&base.file, buf, u64::from(pgno - 1) * ps as u64)?;
            for (page, raw) in buf
                .chunks_exact(ps)
                .zip(stored[(pgno as usize - 1) * SUM_BYTES..].chunks_exact_mut(SUM_BYTES))
            {
                let crc = crc32c::crc32c(page);
                let mut bytes = [0u8; SUM_BYTES];
                bytes.copy_from_slice(raw);
                let sum = PageSum::decode(&bytes);
                let expect = if !has_sums {
                    raw.copy_from_slice(
                        &PageSum {
                            previous: crc,
                            current: crc,
                            at: 0,
                        }
                        .encode(),
                    );
                    crc
                } else if sum.at <= applied {
                    if !matches(sum.current, crc, zero) {
                        return Err(damaged(path, pgno, "the file is damaged"));
                    }
                    crc
                } else if matches(sum.previous, crc, zero) {
                    crc
                } else {
                    unsettled.insert(pgno);
                    // Newer than the record (a checkpoint after it wrote the
                    // page before a crash), or torn mid-page: the replay
                    // shadows it; reading it before would fail, so nothing
                    // is ever built on content the record does not cover.
                    if sum.previous == 0 {
                        zero
                    } else {
                        sum.previous
                    }
                };
                sums.push(expect);
                pgno += 1;
            }
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                tracing::info!(
                    file = %path.display(),
                    "checking pages: {} of {} MiB after {:.0?}",
                    (u64::from(pgno - 1) * ps as u64) >> 20,
                    (u64::from(pages) * ps as u64) >> 20,
                    started.elapsed()
                );
            }
        }
        if !has_sums && pages > 0 {
            tracing::info!(
                file = %path.display(),
                "computed the page checksums of a file written before they existed"
            );
            base.sums_file.write_all_at(&stored, 0)?;
            base.sums_file.sync_data()?;
        }
        *base.sums_mut() = sums;
        *base.unsettled() = unsettled;
        Ok(base)
    }

    fn sums(&self) -> RwLockReadGuard<'_, Vec<u32>> {
        self.sums.read().unwrap_or_else(|e| e.into_inner())
    }

    fn unsettled(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.unsettled.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sums_mut(&self) -> RwLockWriteGuard<'_, Vec<u32>> {
        self.sums.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Page `pgno`, checked against its checksum; past the end of the file
    /// it reads as zeros. A mismatch is `InvalidData` naming the file.
    pub fn read_page(&self, pgno: u32, page_size: u32) -> io::Result<Arc<[u8]>> {
        let mut buf = vec![0u8; page_size as usize];
        read_full_at(
            &self.file,
            &mut buf,
            u64::from(pgno - 1) * u64::from(page_size),
        )?;
        let crc = crc32c::crc32c(&buf);
        let sound = match self.sums().get(pgno as usize - 1) {
            Some(want) => *want == crc,
            None => crc == zero_crc(page_size),
        };
        if !sound {
            let err = if self.unsettled().contains(&pgno) {
                damaged(
                    &self.path,
                    pgno,
                    "it holds what a checkpoint cut short by a crash wrote, which only a \
                     whole page from the log may replace, and a memory-mode leader sent a \
                     patch of it; move this node's data directory aside and join it again, \
                     and do not mix --disk-mode and memory-mode nodes in one cluster",
                )
            } else {
                damaged(
                    &self.path,
                    pgno,
                    "the file is damaged; restart the node to rebuild it from its peers",
                )
            };
            tracing::error!("{err}");
            return Err(err);
        }
        Ok(Arc::from(buf))
    }

    /// Writes `page` as page `pgno` of a file being rebuilt (a restore).
    pub fn write_page(&self, pgno: u32, page: &[u8]) -> io::Result<()> {
        let offset = u64::from(pgno - 1) * page.len() as u64;
        self.file.write_all_at(page, offset)?;
        let mut sums = self.sums_mut();
        let at = pgno as usize - 1;
        if sums.len() <= at {
            sums.resize(at + 1, zero_crc(page.len() as u32));
        }
        sums[at] = crc32c::crc32c(page);
        Ok(())
    }

    /// Ends a restore: sets the file to `pages` pages, writes every
    /// checksum and makes both files durable.
    pub fn finish(&self, pages: u32, page_size: u32) -> io::Result<()> {
        let mut sums = self.sums_mut();
        sums.resize(pages as usize, zero_crc(page_size));
        let stored: Vec<u8> = sums
            .iter()
            .flat_map(|crc| {
                PageSum {
                    previous: *crc,
                    current: *crc,
                    at: 0,
                }
                .encode()
            })
            .collect();
        self.sums_file.write_all_at(&stored, 0)?;
        self.sums_file.sync_data()?;
        self.file.set_len(u64::from(pages) * u64::from(page_size))?;
        self.file.sync_data()
    }

    /// The checkpoint at index `applied`: writes the `changed` pages
    /// (ascending page numbers) into a file of `pages` pages, their sums
    /// first (see [`BaseFile`]). No reader may read a changed page from
    /// the file meanwhile (the caller's version holds them in memory).
    pub fn checkpoint<'a>(
        &self,
        changed: impl Iterator<Item = (u32, &'a [u8])> + Clone,
        pages: u32,
        page_size: u32,
        applied: u64,
    ) -> io::Result<()> {
        let zero = zero_crc(page_size);
        {
            let mut unsettled = self.unsettled();
            for (pgno, _) in changed.clone() {
                unsettled.remove(&pgno);
            }
        }
        // Runs of consecutive pages: (first page, their sums).
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        {
            let mut sums = self.sums_mut();
            let old_len = sums.len();
            // Pages cut off: old content before, zeros after, so a crash
            // may leave the file at either length. The sums file never
            // shrinks.
            for (i, old) in sums.iter().enumerate().skip(pages as usize) {
                let sum = PageSum {
                    previous: *old,
                    current: 0,
                    at: applied,
                };
                push_sum(&mut runs, i as u32 + 1, sum);
            }
            sums.resize(pages as usize, zero);
            for (pgno, page) in changed.clone() {
                let at = pgno as usize - 1;
                let crc = crc32c::crc32c(page);
                let sum = PageSum {
                    previous: if at < old_len { sums[at] } else { 0 },
                    current: crc,
                    at: applied,
                };
                push_sum(&mut runs, pgno, sum);
                sums[at] = crc;
            }
        }
        for (first, stored) in &runs {
            self.sums_file
                .write_all_at(stored, u64::from(first - 1) * SUM_BYTES as u64)?;
        }
        self.sums_file.sync_data()?;
        for (pgno, page) in changed {
            self.file
                .write_all_at(page, u64::from(pgno - 1) * u64::from(page_size))?;
        }
        self.file.set_len(u64::from(pages) * u64::from(page_size))?;
        self.file.sync_data()
    }
}

/// Adds the sum of page `pgno` to `runs`, extending the last run if the
/// page follows it.
fn push_sum(runs: &mut Vec<(u32, Vec<u8>)>, pgno: u32, sum: PageSum) {
    match runs.last_mut() {
        Some((first, stored)) if *first as usize + stored.len() / SUM_BYTES == pgno as usize => {
            stored.extend_from_slice(&sum.encode())
        }
        _ => runs.push((pgno, sum.encode().to_vec())),
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
    /// Whether each database file has its page checksums beside it (false
    /// in records written before they existed).
    #[serde(default)]
    pub sums: bool,
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
                .or_else(|| name.strip_suffix(".sums"))
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
            sums: true,
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
        let f = BaseFile::create(&tmp.path().join("f.db")).unwrap();
        f.write_page(1, &[7u8; 512]).unwrap();
        f.finish(1, 512).unwrap();
        assert_eq!(&f.read_page(1, 512).unwrap()[..], &[7u8; 512][..]);
        assert_eq!(&f.read_page(3, 512).unwrap()[..], &[0u8; 512][..]);
    }

    const PS: u32 = 512;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PS as usize]
    }

    /// A file of pages 1..=4 filled with 1..=4, checkpointed at index 1.
    fn four_pages(path: &Path) -> BaseFile {
        let f = BaseFile::create(path).unwrap();
        let pages: Vec<(u32, Vec<u8>)> = (1..=4).map(|n| (n, page(n as u8))).collect();
        f.checkpoint(pages.iter().map(|(n, p)| (*n, &p[..])), 4, PS, 1)
            .unwrap();
        f
    }

    fn set_page(path: &Path, pgno: u32, content: &[u8]) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(content, u64::from(pgno - 1) * u64::from(PS))
            .unwrap();
    }

    fn set_pages(path: &Path, pages: u64) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(u64::from(PS) * pages).unwrap();
    }

    fn bytes_of_four() -> Vec<u8> {
        (1..=4u8).flat_map(page).collect()
    }

    fn expect_damage(got: io::Result<BaseFile>, pgno: u32) {
        let err = got.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let want = format!("page {pgno} of ");
        assert!(err.to_string().contains(&want), "{err}");
        assert!(err.to_string().contains("f.db"), "{err}");
    }

    #[test]
    fn a_flipped_byte_is_found_at_open_and_on_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.db");
        let open = || BaseFile::open_verified(&path, PS, 4, true, 1);
        let f = four_pages(&path);
        open().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[2 * PS as usize + 17] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let err = f.read_page(3, PS).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("page 3 of"), "{err}");
        assert_eq!(&f.read_page(2, PS).unwrap()[..], &page(2)[..]);
        expect_damage(open(), 3);
        // A damaged sums file is found the same way.
        fs::write(&path, bytes_of_four()).unwrap();
        open().unwrap();
        let sums = sums_path(&path);
        let mut stored = fs::read(&sums).unwrap();
        stored[SUM_BYTES + 4] ^= 1;
        fs::write(&sums, &stored).unwrap();
        expect_damage(open(), 2);
        // So is a missing one, a truncated database file, or one gone.
        fs::remove_file(&sums).unwrap();
        let err = open().unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
        drop(four_pages(&path));
        set_pages(&path, 3);
        expect_damage(open(), 4);
        fs::remove_file(&path).unwrap();
        expect_damage(open(), 1);
    }

    /// Whatever a crash leaves of a checkpoint that wrote no record, every
    /// page passes at open: old content, new content, torn, zeros where
    /// the file grew, old content where it shrank; only the old content
    /// can be read. The record's own pages are still checked exactly.
    #[test]
    fn a_torn_checkpoint_passes_the_check_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.db");
        let open = |pages, applied| BaseFile::open_verified(&path, PS, pages, true, applied);
        let f = four_pages(&path);
        // At index 2 pages 2 and 3 change and the file grows to 6 pages.
        let changed: Vec<(u32, Vec<u8>)> = vec![(2, page(22)), (3, page(33)), (6, page(66))];
        let at_2 = || changed.iter().map(|(n, p)| (*n, &p[..]));
        f.checkpoint(at_2(), 6, PS, 2).unwrap();
        drop(f);
        let newer = open(4, 1).unwrap();
        // Page 2 holds what that checkpoint wrote, newer than the record:
        // nothing may be built on it before the replay shadows it.
        let err = newer.read_page(2, PS).unwrap_err().to_string();
        assert!(err.contains("checkpoint cut short"), "{err}");
        assert_eq!(&newer.read_page(1, PS).unwrap()[..], &page(1)[..]);
        drop(newer);
        open(6, 2).unwrap();
        // The crash came before its record: page 2 was never written,
        // page 3 half written, the file never grew.
        set_page(&path, 2, &page(2));
        let mut torn = page(33);
        torn[..PS as usize / 2].fill(3);
        set_page(&path, 3, &torn);
        set_pages(&path, 4);
        let f = open(4, 1).unwrap();
        assert_eq!(&f.read_page(2, PS).unwrap()[..], &page(2)[..]);
        // The replay shadows the torn page; read from the file it fails.
        assert!(f.read_page(3, PS).is_err());
        // Had the record been written, that would be damage.
        expect_damage(open(6, 2), 2);
        // The replay's checkpoint starts from what the file really holds.
        f.checkpoint(at_2(), 6, PS, 2).unwrap();
        drop(f);
        let f = open(6, 2).unwrap();
        assert_eq!(&f.read_page(3, PS).unwrap()[..], &page(33)[..]);
        // At index 3 the file shrinks to 2 pages; without the record, the
        // cut pages may be zeros or still there.
        f.checkpoint(std::iter::empty(), 2, PS, 3).unwrap();
        open(2, 3).unwrap();
        open(6, 2).unwrap();
        set_page(&path, 3, &page(33));
        open(6, 2).unwrap();
        // A damaged page the record covers is still found.
        set_page(&path, 1, &page(9));
        expect_damage(open(2, 3), 1);
    }

    #[test]
    fn files_from_before_checksums_get_them_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.db");
        fs::write(&path, bytes_of_four()).unwrap();
        let f = BaseFile::open_verified(&path, PS, 4, false, 7).unwrap();
        assert_eq!(&f.read_page(4, PS).unwrap()[..], &page(4)[..]);
        drop(f);
        BaseFile::open_verified(&path, PS, 4, true, 7).unwrap();
        set_page(&path, 4, &page(5));
        expect_damage(BaseFile::open_verified(&path, PS, 4, true, 7), 4);
    }
}
