//! The segmented raft log on disk (`raft/log/`).
//!
//! Closed segments are named `<first>-<last>` and are immutable; exactly one
//! `open-<salt>` segment receives appends. Segments are preallocated with
//! zeros and reused after compaction (renamed to `spare-<salt>`), because an
//! fdatasync that does not change the file size is an order of magnitude
//! cheaper than one that does (see DESIGN.md, performance model).
//!
//! Loading checks every record. A bad record at the end of the open segment
//! is a torn tail: the log ends just before it. A bad record in a closed
//! segment, or one in the open segment followed by valid records, is
//! corruption: an error, or with auto-recovery the damaged segment and
//! everything after it are renamed aside (`*.corrupt`), never deleted, and
//! [`LoadReport::lost_upto`] bounds what this node may have acknowledged
//! from them (see [`super::fence`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::Entry;
use tracing::{info, warn};

use super::disk::{read_exact_at, AlignedBuf, Disk, DiskFile, DIRECT_ALIGN};
use super::segment::{self, Header, Read, FRAME_SIZE, HEADER_SIZE};
use super::StorageError;

/// Tuning of the on-disk log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Preallocated size of a segment in bytes.
    pub segment_size: u64,
    /// Set corrupt segments aside instead of failing to load.
    pub auto_recovery: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 8 << 20,
            auto_recovery: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Closed {
    first: u64,
    last: u64,
}

struct Open {
    file: Box<dyn DiskFile>,
    /// Appends go through here when the file system has direct writes.
    direct: Option<Direct>,
    /// With `direct`: `file` was written since its last fdatasync.
    dirty: bool,
    name: String,
    header: Header,
    /// Where the next record goes.
    end: u64,
    /// Offset of each entry's record, in index order from `header.first_index`.
    offsets: Vec<u64>,
}

impl Open {
    /// The open segment `file` at `path`, whose records end at `end`.
    fn new(
        disk: &dyn Disk,
        path: &Path,
        file: Box<dyn DiskFile>,
        (name, header, end, offsets): (String, Header, u64, Vec<u64>),
    ) -> std::io::Result<Open> {
        let direct = match disk.open_direct(path)? {
            Some(direct) => Some(Direct::new(direct, file.as_ref(), end)?),
            None => None,
        };
        Ok(Open {
            file,
            direct,
            dirty: false,
            name,
            header,
            end,
            offsets,
        })
    }

    fn last_index(&self) -> u64 {
        self.header.first_index + self.offsets.len() as u64 - 1
    }
}

/// Appends through a direct file ([`Disk::open_direct`]). Records gather
/// in `pending` until [`Log::sync`] writes them in one durable write of
/// whole blocks: the written head of the block they start in (`head`),
/// the records, then zeros to the end of the last block (so the zero frame
/// that ends the records is always there). Rewriting the head is harmless
/// even if the write tears: those bytes do not change.
struct Direct {
    file: Box<dyn DiskFile>,
    /// Where the written records end: `pending` goes here.
    written: u64,
    /// The file's bytes from the start of `written`'s block up to it.
    head: Vec<u8>,
    pending: Vec<u8>,
    buf: AlignedBuf,
}

fn align_down(at: u64) -> u64 {
    at - at % DIRECT_ALIGN
}

impl Direct {
    fn new(file: Box<dyn DiskFile>, buffered: &dyn DiskFile, end: u64) -> std::io::Result<Direct> {
        let mut direct = Direct {
            file,
            written: end,
            head: Vec::new(),
            pending: Vec::new(),
            buf: AlignedBuf::default(),
        };
        direct.restart(buffered, end)?;
        Ok(direct)
    }

    /// Forgets what is pending; the written records end at `end`, and the
    /// head of their last block is read back through `buffered`.
    fn restart(&mut self, buffered: &dyn DiskFile, end: u64) -> std::io::Result<()> {
        self.pending.clear();
        self.written = end;
        self.head = vec![0; (end - align_down(end)) as usize];
        read_exact_at(buffered, &mut self.head, align_down(end))
    }

    /// Writes what is pending; durable on return.
    fn write(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let start = align_down(self.written);
        let end = self.written + self.pending.len() as u64;
        let len = (align_down(end + FRAME_SIZE + DIRECT_ALIGN - 1) - start) as usize;
        let block = self.buf.zeroed(len);
        let (head, rest) = block.split_at_mut(self.head.len());
        head.copy_from_slice(&self.head);
        rest[..self.pending.len()].copy_from_slice(&self.pending);
        self.file.write_all_at(block, start)?;
        let next = (align_down(end) - start) as usize..(end - start) as usize;
        self.head.clear();
        self.head.extend_from_slice(&block[next]);
        self.written = end;
        self.pending.clear();
        Ok(())
    }
}

/// What loading found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Entries after the given snapshot index, in order (with a budget: only
    /// the tail after `dropped_terms`).
    pub entries: Vec<Entry>,
    /// Terms of the entries right after the snapshot index whose payloads
    /// were not kept in memory (see [`Log::open_bounded`]); `entries` follows.
    pub dropped_terms: Vec<u64>,
    /// Bytes dropped from a torn tail of the open segment.
    pub torn_tail: bool,
    /// Files renamed aside by auto-recovery.
    pub set_aside: Vec<PathBuf>,
    /// When auto-recovery set entries aside: an upper bound on the last
    /// index this node may have acknowledged before the damage.
    pub lost_upto: Option<u64>,
}

/// The open on-disk log. Owned by one writer at a time.
pub struct Log {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    options: LogOptions,
    closed: Vec<Closed>,
    open: Open,
    spares: Vec<String>,
    next_salt: u64,
}

/// The log directory inside a raft directory.
pub fn log_dir(raft_dir: &Path) -> PathBuf {
    raft_dir.join("log")
}

struct Scan {
    closed: Vec<Closed>,
    open: Option<(String, Option<Header>, Vec<u64>, u64)>,
    spares: Vec<String>,
    entries: VecDeque<Entry>,
    /// Terms of the entries dropped from the front of `entries`.
    dropped_terms: Vec<u64>,
    /// Encoded size of `entries`.
    kept_bytes: u64,
    corrupt_from: Option<(String, StorageError)>,
    torn_tail: bool,
    max_salt: u64,
    foreign: Vec<String>,
}

/// Entries, their offsets, the end of the valid data, and what stopped the
/// scan early (if anything).
type SegmentScan = (Vec<Entry>, Vec<u64>, u64, Option<&'static str>);

/// Reads a whole segment.
fn read_segment(file: &dyn DiskFile, header: Header) -> std::io::Result<SegmentScan> {
    let len = file.len()?;
    let mut offset = HEADER_SIZE;
    let mut entries: Vec<Entry> = Vec::new();
    let mut offsets = Vec::new();
    // Bounded: each iteration consumes at least FRAME_SIZE bytes of the file.
    loop {
        match segment::read_record(file, header.salt, offset, len)? {
            Read::End => return Ok((entries, offsets, offset, None)),
            Read::Invalid(why) => return Ok((entries, offsets, offset, Some(why))),
            Read::Entry(entry, next) => {
                let expected = header.first_index + entries.len() as u64;
                if entry.index != expected {
                    return Ok((
                        entries,
                        offsets,
                        offset,
                        Some("entry index out of sequence"),
                    ));
                }
                if entries.last().is_some_and(|p| p.term > entry.term) {
                    return Ok((entries, offsets, offset, Some("entry term goes backwards")));
                }
                offsets.push(offset);
                entries.push(entry);
                offset = next;
            }
        }
    }
}

/// The highest index of a valid record after the bad record at `at`
/// (entry `bad_index`), found by skipping damaged records by their length
/// fields. `None` when nothing valid follows: a torn tail.
fn valid_after(
    file: &dyn DiskFile,
    header: Header,
    at: u64,
    len: u64,
    bad_index: u64,
) -> std::io::Result<Option<u64>> {
    let mut found: Option<u64> = None;
    let mut pos = skip_record(file, at, len)?;
    // Bounded: each step moves at least FRAME_SIZE bytes forward.
    while let Some(here) = pos {
        pos = match segment::read_record(file, header.salt, here, len)? {
            Read::End => None,
            Read::Invalid(_) => skip_record(file, here, len)?,
            Read::Entry(e, next) => {
                if e.index > bad_index {
                    found = Some(found.map_or(e.index, |f| f.max(e.index)));
                }
                Some(next)
            }
        };
    }
    Ok(found)
}

/// The offset after the record at `at`, by its length field alone (its
/// checksum is not checked); `None` at the end or when the length is absurd.
fn skip_record(file: &dyn DiskFile, at: u64, len: u64) -> std::io::Result<Option<u64>> {
    if at + FRAME_SIZE > len {
        return Ok(None);
    }
    let mut frame = [0u8; FRAME_SIZE as usize];
    read_exact_at(file, &mut frame, at)?;
    let n = u64::from(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]));
    if n == 0 || n > segment::MAX_RECORD || at + FRAME_SIZE + n > len {
        return Ok(None);
    }
    Ok(Some(at + FRAME_SIZE + n))
}

/// An upper bound on the last index a set-aside segment holds: a closed
/// segment's name says it; an open one is walked by its length fields
/// (checksums unchecked: the k-th record is entry `first + k`, whatever its
/// bytes say), from its header's first index or, when the header is
/// damaged, `fallback_first`. A damaged length field ends the walk early;
/// the caller also counts the durable commit index.
fn set_aside_bound(disk: &dyn Disk, path: &Path, name: &str, fallback_first: u64) -> Option<u64> {
    if let Some((_, last)) = segment::parse_closed_name(name) {
        return Some(last);
    }
    let file = disk.open(path).ok()?;
    let len = file.len().ok()?;
    let first = segment::read_header(file.as_ref())
        .ok()
        .flatten()
        .map_or(fallback_first, |h| h.first_index);
    let mut at = HEADER_SIZE;
    let mut records = 0u64;
    // Bounded: each step moves at least FRAME_SIZE bytes forward.
    while let Ok(Some(next)) = skip_record(file.as_ref(), at, len) {
        records += 1;
        at = next;
    }
    (records > 0).then(|| first + records - 1)
}

/// How much of the log's payload loading keeps in memory.
#[derive(Debug, Clone, Copy)]
struct Keep {
    /// Drop payloads from the front while more than this many bytes are kept.
    budget: u64,
    /// ... but only of entries at or below this index.
    upto: u64,
}

const KEEP_ALL: Keep = Keep {
    budget: u64::MAX,
    upto: 0,
};

impl Scan {
    fn keep(&mut self, entries: Vec<Entry>, after_index: u64, keep: Keep) {
        for e in entries.into_iter().filter(|e| e.index > after_index) {
            self.kept_bytes += u64::from(protobuf::Message::compute_size(&e));
            self.entries.push_back(e);
            while self.kept_bytes > keep.budget {
                match self.entries.front() {
                    Some(f) if f.index <= keep.upto => {}
                    _ => break,
                }
                if let Some(f) = self.entries.pop_front() {
                    self.kept_bytes -= u64::from(protobuf::Message::compute_size(&f));
                    self.dropped_terms.push(f.term);
                }
            }
        }
    }
}

fn scan(disk: &dyn Disk, dir: &Path, after_index: u64, keep: Keep) -> Result<Scan, StorageError> {
    let io = |e| StorageError::io(dir, e);
    let names = if disk.exists(dir) {
        disk.list(dir).map_err(io)?
    } else {
        Vec::new()
    };
    let mut closed_names: Vec<(u64, u64, String)> = Vec::new();
    let mut open_names = Vec::new();
    let mut out = Scan {
        closed: Vec::new(),
        open: None,
        spares: Vec::new(),
        entries: VecDeque::new(),
        dropped_terms: Vec::new(),
        kept_bytes: 0,
        corrupt_from: None,
        torn_tail: false,
        max_salt: 0,
        foreign: Vec::new(),
    };
    for name in names {
        if name.contains(".corrupt") || name.ends_with(".stale") {
            continue;
        }
        if let Some((first, last)) = segment::parse_closed_name(&name) {
            closed_names.push((first, last, name));
        } else if let Some(hex) = name.strip_prefix("open-") {
            out.max_salt = out.max_salt.max(u64::from_str_radix(hex, 16).unwrap_or(0));
            open_names.push(name);
        } else if let Some(hex) = name.strip_prefix("spare-") {
            if !hex.contains('.') {
                out.max_salt = out.max_salt.max(u64::from_str_radix(hex, 16).unwrap_or(0));
                out.spares.push(name);
            }
        } else {
            out.foreign.push(name);
        }
    }
    closed_names.sort();
    let mut expected_next: Option<u64> = None;
    for (first, last, name) in closed_names {
        if last <= after_index {
            // Already covered by the snapshot: compaction garbage, not read.
            out.closed.push(Closed { first, last });
            continue;
        }
        let path = dir.join(&name);
        if let Some(next) = expected_next {
            if first != next {
                out.corrupt_from = Some((
                    name,
                    StorageError::Corrupt {
                        path,
                        detail: format!("gap in the log: expected a segment starting at {next}"),
                    },
                ));
                break;
            }
        } else if first > after_index + 1 {
            out.corrupt_from = Some((
                name,
                StorageError::Corrupt {
                    path,
                    detail: format!("log starts at {first} but the snapshot ends at {after_index}"),
                },
            ));
            break;
        }
        let file = disk.open(&path).map_err(|e| StorageError::io(&path, e))?;
        let header = segment::read_header(file.as_ref()).map_err(|e| StorageError::io(&path, e))?;
        let problem = match header {
            None => Some("bad segment header".to_string()),
            Some(h) if h.first_index != first => Some("header does not match the name".to_string()),
            Some(h) => {
                let (entries, _, _, bad) =
                    read_segment(file.as_ref(), h).map_err(|e| StorageError::io(&path, e))?;
                if let Some(why) = bad {
                    Some(format!("{why} after {} good entries", entries.len()))
                } else if entries.len() as u64 != last - first + 1 {
                    Some(format!(
                        "holds {} entries, its name says {}",
                        entries.len(),
                        last - first + 1
                    ))
                } else {
                    out.keep(entries, after_index, keep);
                    None
                }
            }
        };
        if let Some(detail) = problem {
            out.corrupt_from = Some((name, StorageError::Corrupt { path, detail }));
            break;
        }
        out.closed.push(Closed { first, last });
        expected_next = Some(last + 1);
    }
    if out.corrupt_from.is_some() {
        return Ok(out);
    }
    open_names.sort();
    // More than one open segment only if a crash hit between creating the
    // new one and closing the old; the newest salt is the live one.
    if let Some(name) = open_names.pop() {
        for stale in open_names {
            out.foreign.push(stale);
        }
        let path = dir.join(&name);
        let file = disk.open(&path).map_err(|e| StorageError::io(&path, e))?;
        let header = segment::read_header(file.as_ref()).map_err(|e| StorageError::io(&path, e))?;
        let mut offsets = Vec::new();
        let mut end = HEADER_SIZE;
        let mut usable_header = header;
        if let Some(h) = header {
            let (entries, offs, valid_end, bad) =
                read_segment(file.as_ref(), h).map_err(|e| StorageError::io(&path, e))?;
            let contiguous = match expected_next {
                Some(next) => h.first_index == next,
                None => h.first_index <= after_index + 1,
            };
            if !contiguous {
                if entries.last().is_some_and(|e| e.index > after_index) {
                    out.corrupt_from = Some((
                        name,
                        StorageError::Corrupt {
                            path,
                            detail: format!("open segment starts at {} after a gap", h.first_index),
                        },
                    ));
                    return Ok(out);
                }
                // Empty, or entirely covered by the snapshot.
                usable_header = None;
            } else {
                if let Some(why) = bad {
                    let bad_index = h.first_index + entries.len() as u64;
                    let len = file.len().map_err(|e| StorageError::io(&path, e))?;
                    let later = valid_after(file.as_ref(), h, valid_end, len, bad_index)
                        .map_err(|e| StorageError::io(&path, e))?;
                    if let Some(later) = later {
                        // Durable records follow the bad one: not a torn
                        // append but damage to entries that were synced.
                        out.corrupt_from = Some((
                            name,
                            StorageError::Corrupt {
                                path,
                                detail: format!(
                                    "{why} at entry {bad_index}, with valid entries up to {later} after it"
                                ),
                            },
                        ));
                        return Ok(out);
                    }
                    warn!(segment = %name, why, good = entries.len(), "torn tail truncated");
                    out.torn_tail = true;
                }
                out.keep(entries, after_index, keep);
                offsets = offs;
                end = valid_end;
            }
        }
        out.max_salt = out.max_salt.max(header.map_or(0, |h| h.salt));
        out.open = Some((name, usable_header, offsets, end));
    }
    Ok(out)
}

/// Reads the log without modifying anything: the entries after
/// `after_index`. Used by the offline helpers.
pub fn read_only(
    disk: &dyn Disk,
    raft_dir: &Path,
    after_index: u64,
) -> Result<Vec<Entry>, StorageError> {
    let s = scan(disk, &log_dir(raft_dir), after_index, KEEP_ALL)?;
    if let Some((_, err)) = s.corrupt_from {
        return Err(err);
    }
    Ok(s.entries.into())
}

/// Reads entries back from the segment files, for the in-memory view
/// ([`super::RaftLogView`]) once they were evicted from memory. It never
/// modifies anything and shares nothing with the writer but the directory:
/// it only asks for entries that are durable and applied (so committed:
/// never rewritten), and every record is checked (checksum, index sequence)
/// exactly as on load.
#[derive(Clone)]
pub struct LogReader {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").field("dir", &self.dir).finish()
    }
}

impl LogReader {
    /// A reader of the log under `raft_dir`.
    pub fn new(disk: Arc<dyn Disk>, raft_dir: &Path) -> Self {
        LogReader {
            disk,
            dir: log_dir(raft_dir),
        }
    }

    /// Entries `low..high` in order, stopping early once their encoded size
    /// exceeds `max_size` (at least one entry is returned). An entry that is
    /// missing, damaged or out of sequence is an error, never data.
    pub fn read(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        // A rotation (open segment renamed to a closed name) can race with
        // the listing; a second try sees the new name.
        let mut last_err = None;
        for _ in 0..3 {
            match self.try_read(low, high, max_size) {
                Ok(out) => return Ok(out),
                Err(StorageError::Io { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    last_err = Some(StorageError::Io { path, source });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| StorageError::Corrupt {
            path: self.dir.clone(),
            detail: "log read failed".into(),
        }))
    }

    fn try_read(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        let io = |e| StorageError::io(&self.dir, e);
        let mut segments: Vec<(u64, String, bool)> = Vec::new();
        let mut opens = Vec::new();
        for name in self.disk.list(&self.dir).map_err(io)? {
            if name.contains('.') {
                continue;
            }
            if let Some((first, last)) = segment::parse_closed_name(&name) {
                if last >= low && first < high {
                    segments.push((first, name, true));
                }
            } else if let Some(hex) = name.strip_prefix("open-") {
                opens.push((u64::from_str_radix(hex, 16).unwrap_or(0), name));
            }
        }
        segments.sort();
        // The newest open segment holds the entries after the closed ones.
        opens.sort();
        if let Some((_, name)) = opens.pop() {
            segments.push((u64::MAX, name, false));
        }
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0u64;
        let mut next = low;
        for (_, name, closed) in segments {
            if next >= high {
                break;
            }
            let path = self.dir.join(&name);
            let pio = |e| StorageError::io(&path, e);
            let corrupt = |detail: String| StorageError::Corrupt {
                path: path.clone(),
                detail,
            };
            let file = self.disk.open(&path).map_err(pio)?;
            let Some(header) = segment::read_header(file.as_ref()).map_err(pio)? else {
                return Err(corrupt("bad segment header".into()));
            };
            if closed
                && segment::parse_closed_name(&name).map(|(f, _)| f) != Some(header.first_index)
            {
                return Err(corrupt("header does not match the name".into()));
            }
            if header.first_index > next {
                return Err(corrupt(format!(
                    "entry {next} missing: segment starts at {}",
                    header.first_index
                )));
            }
            let len = file.len().map_err(pio)?;
            let mut offset = HEADER_SIZE;
            let mut index = header.first_index;
            // Bounded: each step consumes at least FRAME_SIZE bytes.
            while next < high {
                match segment::read_record(file.as_ref(), header.salt, offset, len).map_err(pio)? {
                    Read::Entry(entry, after) => {
                        if entry.index != index {
                            return Err(corrupt(format!(
                                "entry index {} where {index} was expected",
                                entry.index
                            )));
                        }
                        if index == next {
                            let sz = u64::from(protobuf::Message::compute_size(&entry));
                            if !out.is_empty() && size + sz > max_size {
                                return Ok(out);
                            }
                            size += sz;
                            out.push(entry);
                            next += 1;
                        }
                        index += 1;
                        offset = after;
                    }
                    Read::End => break,
                    Read::Invalid(why) => return Err(corrupt(format!("{why} at entry {index}"))),
                }
            }
        }
        if next < high {
            return Err(StorageError::Corrupt {
                path: self.dir.clone(),
                detail: format!("entries {next}..{high} not found in the log"),
            });
        }
        Ok(out)
    }
}

impl Log {
    /// Opens (creating if needed) the log, checking every record, and returns
    /// the entries after `after_index` (the snapshot's index).
    pub fn open(
        disk: Arc<dyn Disk>,
        raft_dir: &Path,
        options: LogOptions,
        after_index: u64,
    ) -> Result<(Log, LoadReport), StorageError> {
        Self::open_bounded(disk, raft_dir, options, after_index, u64::MAX, 0)
    }

    /// Like [`Log::open`], keeping at most about `budget` bytes of entries in
    /// memory while loading: payloads of entries at or below `drop_upto` (the
    /// durable commit index: committed entries are never rewritten) leave
    /// memory from the front, and only their terms are returned
    /// ([`LoadReport::dropped_terms`]); they are read back from the segment
    /// files through a [`LogReader`]. Every record is checked either way.
    pub fn open_bounded(
        disk: Arc<dyn Disk>,
        raft_dir: &Path,
        options: LogOptions,
        after_index: u64,
        budget: u64,
        drop_upto: u64,
    ) -> Result<(Log, LoadReport), StorageError> {
        let keep = Keep {
            budget,
            upto: drop_upto,
        };
        let dir = log_dir(raft_dir);
        let io = |e| StorageError::io(&dir, e);
        disk.create_dir_all(&dir).map_err(io)?;
        let mut s = scan(disk.as_ref(), &dir, after_index, keep)?;
        let mut report = LoadReport {
            torn_tail: s.torn_tail,
            ..Default::default()
        };
        if let Some((bad_name, err)) = s.corrupt_from.take() {
            if !options.auto_recovery {
                return Err(err);
            }
            warn!(error = %err, "corrupt log; auto-recovery sets the damaged segments aside");
            let mut lost_upto = drop_upto;
            // Set aside the damaged segment and everything after it.
            let bad_first = segment::parse_closed_name(&bad_name).map(|(f, _)| f);
            let names = disk.list(&dir).map_err(io)?;
            let fallback_first = names
                .iter()
                .filter_map(|n| segment::parse_closed_name(n))
                .map(|(_, last)| last + 1)
                .max()
                .unwrap_or(after_index + 1);
            for name in names {
                let later = match segment::parse_closed_name(&name) {
                    Some((first, _)) => bad_first.map_or(true, |b| first >= b),
                    None => name.starts_with("open-"),
                };
                if later || name == bad_name {
                    let from = dir.join(&name);
                    let to = dir.join(format!("{name}.corrupt"));
                    // Unknown extent (a damaged open segment that cannot be
                    // walked): at least the durable commit index.
                    let bound =
                        set_aside_bound(disk.as_ref(), &from, &name, fallback_first).unwrap_or(0);
                    lost_upto = lost_upto.max(bound);
                    disk.rename(&from, &to).map_err(io)?;
                    warn!(file = %from.display(), aside = %to.display(), "auto-recovery set a damaged log segment aside");
                    report.set_aside.push(to);
                }
            }
            report.lost_upto = Some(lost_upto);
            disk.sync_dir(&dir).map_err(io)?;
            s = scan(disk.as_ref(), &dir, after_index, keep)?;
            if let Some((_, err)) = s.corrupt_from {
                return Err(err);
            }
        }
        for name in &s.foreign {
            let path = dir.join(name);
            if name.ends_with(".tmp") {
                disk.remove(&path).map_err(|e| StorageError::io(&path, e))?;
            } else if name.starts_with("open-") {
                // An older open segment should not exist; keep it for
                // inspection rather than delete data we cannot explain.
                let aside = dir.join(format!("{name}.stale"));
                warn!(segment = %name, "unexpected second open segment set aside");
                disk.rename(&path, &aside)
                    .map_err(|e| StorageError::io(&path, e))?;
            }
        }
        report.entries = std::mem::take(&mut s.entries).into();
        report.dropped_terms = std::mem::take(&mut s.dropped_terms);
        let last_index = report
            .entries
            .last()
            .map(|e| e.index)
            .unwrap_or(after_index + report.dropped_terms.len() as u64)
            .max(after_index);
        let mut next_salt = s.max_salt + 1;
        let open = match s.open {
            Some((name, Some(header), offsets, end))
                if header.first_index + offsets.len() as u64 == last_index + 1 =>
            {
                let path = dir.join(&name);
                let mut file = disk.open(&path).map_err(|e| StorageError::io(&path, e))?;
                if report.torn_tail {
                    // Zero what follows the torn record so nothing after it can
                    // ever be read as live data (bounded: one segment).
                    let len = file.len().map_err(|e| StorageError::io(&path, e))?;
                    let zero_to = len.min(end + options.segment_size);
                    zero(file.as_mut(), end, zero_to).map_err(|e| StorageError::io(&path, e))?;
                    file.sync_data().map_err(|e| StorageError::io(&path, e))?;
                }
                Open::new(disk.as_ref(), &path, file, (name, header, end, offsets))
                    .map_err(|e| StorageError::io(&path, e))?
            }
            other => {
                // No usable open segment: start a fresh one after the last entry.
                let reuse = other.map(|(name, _, _, _)| name);
                let salt = next_salt;
                next_salt += 1;
                let open = fresh_open(
                    disk.as_ref(),
                    &dir,
                    options,
                    reuse,
                    &mut s.spares,
                    salt,
                    last_index + 1,
                )?;
                disk.sync_dir(&dir).map_err(io)?;
                open
            }
        };
        let log = Log {
            disk,
            dir,
            options,
            closed: s.closed,
            open,
            spares: s.spares,
            next_salt,
        };
        info!(
            first = log.first_index(),
            last = log.last_index(),
            "log loaded"
        );
        Ok((log, report))
    }

    /// Index of the first entry on disk.
    pub fn first_index(&self) -> u64 {
        self.closed
            .first()
            .map_or(self.open.header.first_index, |c| c.first)
    }

    /// Index of the last entry on disk (first index − 1 when empty).
    pub fn last_index(&self) -> u64 {
        self.open.last_index()
    }

    /// Writes entries (not yet durable: call [`Log::sync`]). If the first one
    /// is at or before the last index, the conflicting suffix is replaced.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.last_index() {
            self.truncate_from(first.index)?;
        }
        if first.index != self.last_index() + 1 {
            return Err(StorageError::Gap {
                last: self.last_index(),
                next: first.index,
            });
        }
        let mut buf = Vec::new();
        let mut buf_start = self.open.end;
        for entry in entries {
            let mut record = Vec::new();
            segment::encode_record(self.open.header.salt, entry, &mut record)
                .map_err(|e| self.err(e))?;
            let pos = buf_start + buf.len() as u64;
            if pos + record.len() as u64 > self.options.segment_size
                && !self.open.offsets.is_empty()
            {
                self.flush(&buf, buf_start)?;
                buf.clear();
                self.rotate(entry.index)?;
                buf_start = self.open.end;
                record.clear();
                segment::encode_record(self.open.header.salt, entry, &mut record)
                    .map_err(|e| self.err(e))?;
            }
            self.open.offsets.push(buf_start + buf.len() as u64);
            buf.extend_from_slice(&record);
        }
        self.flush(&buf, buf_start)
    }

    fn flush(&mut self, buf: &[u8], at: u64) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(direct) = &mut self.open.direct {
            direct.pending.extend_from_slice(buf);
            self.open.end = at + buf.len() as u64;
            return Ok(());
        }
        // A trailing zero frame keeps the "end" marker explicit even when the
        // file was reused and the bytes after our data are not zero.
        let mut data = Vec::with_capacity(buf.len() + FRAME_SIZE as usize);
        data.extend_from_slice(buf);
        data.extend_from_slice(&[0u8; FRAME_SIZE as usize]);
        self.open
            .file
            .write_all_at(&data, at)
            .map_err(|e| self.err(e))?;
        self.open.end = at + buf.len() as u64;
        Ok(())
    }

    /// Makes every append so far durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(direct) = &mut self.open.direct {
            let written = direct.write();
            written.map_err(|e| self.err(e))?;
            if !self.open.dirty {
                return Ok(());
            }
        }
        self.open.file.sync_data().map_err(|e| self.err(e))?;
        self.open.dirty = false;
        Ok(())
    }

    fn err(&self, e: std::io::Error) -> StorageError {
        StorageError::io(&self.dir.join(&self.open.name), e)
    }

    /// Closes the open segment and starts a new one whose first entry is
    /// `next_index`.
    fn rotate(&mut self, next_index: u64) -> Result<(), StorageError> {
        let first = self.open.header.first_index;
        let last = self.open.last_index();
        self.sync()?;
        let io = |e| StorageError::io(&self.dir, e);
        let closed = segment::closed_name(first, last);
        self.disk
            .rename(&self.dir.join(&self.open.name), &self.dir.join(&closed))
            .map_err(io)?;
        let salt = self.next_salt;
        self.next_salt += 1;
        match fresh_open(
            self.disk.as_ref(),
            &self.dir,
            self.options,
            None,
            &mut self.spares,
            salt,
            next_index,
        ) {
            Ok(open) => {
                self.closed.push(Closed { first, last });
                self.open = open;
            }
            Err(e) => {
                // Undo the rename so the open segment we still hold keeps its
                // name; the caller retries the whole batch later.
                let _ = self
                    .disk
                    .rename(&self.dir.join(&closed), &self.dir.join(&self.open.name));
                return Err(e);
            }
        }
        self.disk.sync_dir(&self.dir).map_err(io)?;
        Ok(())
    }

    /// Drops the entries from `index` on (they conflict with the leader).
    fn truncate_from(&mut self, index: u64) -> Result<(), StorageError> {
        if index >= self.open.header.first_index {
            let k = (index - self.open.header.first_index) as usize;
            let at = self.open.offsets[k];
            let open = &mut self.open;
            let zeroed = match &mut open.direct {
                // Only pending records go: nothing on disk changes.
                Some(direct) if at >= direct.written => {
                    direct.pending.truncate((at - direct.written) as usize);
                    Ok(())
                }
                Some(direct) => {
                    open.dirty = true;
                    zero(open.file.as_mut(), at, direct.written + FRAME_SIZE)
                        .and_then(|()| direct.restart(open.file.as_ref(), at))
                }
                None => zero(open.file.as_mut(), at, open.end + FRAME_SIZE),
            };
            zeroed.map_err(|e| self.err(e))?;
            self.open.offsets.truncate(k);
            self.open.end = at;
            return Ok(());
        }
        // Rare: the conflict reaches into closed segments. Rewrite the one
        // holding `index`, drop the later ones, restart the open segment.
        let io = |e| StorageError::io(&self.dir, e);
        let mut keep = Vec::new();
        for c in std::mem::take(&mut self.closed) {
            let name = segment::closed_name(c.first, c.last);
            let path = self.dir.join(&name);
            if c.last < index {
                keep.push(c);
            } else if c.first >= index {
                self.disk.remove(&path).map_err(io)?;
            } else {
                let file = self.disk.open(&path).map_err(io)?;
                let header = segment::read_header(file.as_ref())
                    .map_err(io)?
                    .ok_or_else(|| StorageError::Corrupt {
                        path: path.clone(),
                        detail: "bad header".into(),
                    })?;
                let (entries, _, _, _) = read_segment(file.as_ref(), header).map_err(io)?;
                let prefix: Vec<Entry> = entries.into_iter().filter(|e| e.index < index).collect();
                let mut buf = segment::encode_header(header).to_vec();
                for e in &prefix {
                    segment::encode_record(header.salt, e, &mut buf).map_err(io)?;
                }
                buf.extend_from_slice(&[0u8; FRAME_SIZE as usize]);
                let tmp = self.dir.join("rewrite.tmp");
                let mut out = self.disk.create(&tmp).map_err(io)?;
                out.write_all_at(&buf, 0).map_err(io)?;
                out.sync_data().map_err(io)?;
                drop(out);
                let new_name = segment::closed_name(c.first, index - 1);
                self.disk
                    .rename(&tmp, &self.dir.join(&new_name))
                    .map_err(io)?;
                self.disk.remove(&path).map_err(io)?;
                keep.push(Closed {
                    first: c.first,
                    last: index - 1,
                });
            }
        }
        self.closed = keep;
        self.restart_open(index)
    }

    /// Rewrites the open segment's header so it starts empty at `first`.
    fn restart_open(&mut self, first: u64) -> Result<(), StorageError> {
        let salt = self.next_salt;
        self.next_salt += 1;
        let header = Header {
            salt,
            first_index: first,
        };
        let mut buf = segment::encode_header(header).to_vec();
        buf.extend_from_slice(&[0u8; FRAME_SIZE as usize]);
        self.open
            .file
            .write_all_at(&buf, 0)
            .map_err(|e| self.err(e))?;
        self.open.file.sync_data().map_err(|e| self.err(e))?;
        self.open.dirty = false;
        if let Some(direct) = &mut self.open.direct {
            let restarted = direct.restart(self.open.file.as_ref(), HEADER_SIZE);
            restarted.map_err(|e| self.err(e))?;
        }
        self.open.header = header;
        self.open.offsets.clear();
        self.open.end = HEADER_SIZE;
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))
    }

    /// Forgets the whole log: a snapshot at `snapshot_index` replaced it.
    /// The next entry will be `snapshot_index + 1`. Durable on return.
    pub fn reset(&mut self, snapshot_index: u64) -> Result<(), StorageError> {
        for c in std::mem::take(&mut self.closed) {
            self.recycle(c)?;
        }
        self.restart_open(snapshot_index + 1)
    }

    /// Removes closed segments whose entries are all at or below `index`.
    pub fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        let (drop, keep): (Vec<Closed>, Vec<Closed>) = std::mem::take(&mut self.closed)
            .into_iter()
            .partition(|c| c.last <= index);
        self.closed = keep;
        if drop.is_empty() {
            return Ok(());
        }
        let mut unused = Vec::new();
        for c in drop {
            unused.extend(self.recycle(c)?);
        }
        let io = |e| StorageError::io(&self.dir, e);
        self.disk.sync_dir(&self.dir).map_err(io)?;
        // Segments holding large entries can add up to hundreds of MiB:
        // freeing them must not hold up the next fsync of the log. A crash
        // before they are gone leaves segments below the snapshot, which
        // the next start compacts again.
        self.disk.remove_unused(&self.dir, unused).map_err(io)
    }

    /// A compacted segment becomes a spare (keeping its allocated blocks);
    /// when there are spares enough, its path is returned for removal.
    fn recycle(&mut self, c: Closed) -> Result<Option<PathBuf>, StorageError> {
        let path = self.dir.join(segment::closed_name(c.first, c.last));
        if self.spares.len() < 2 {
            let salt = self.next_salt;
            self.next_salt += 1;
            let name = segment::spare_name(salt);
            self.disk
                .rename(&path, &self.dir.join(&name))
                .map_err(|e| StorageError::io(&path, e))?;
            self.spares.push(name);
            return Ok(None);
        }
        Ok(Some(path))
    }
}

fn zero(file: &mut dyn DiskFile, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Creates the open segment (from a spare, from `reuse`, or a fresh zeroed
/// file) with a durable header. The caller syncs the directory.
fn fresh_open(
    disk: &dyn Disk,
    dir: &Path,
    options: LogOptions,
    reuse: Option<String>,
    spares: &mut Vec<String>,
    salt: u64,
    first_index: u64,
) -> Result<Open, StorageError> {
    let name = segment::open_name(salt);
    let path = dir.join(&name);
    let io = |e| StorageError::io(&path, e);
    let source = reuse.or_else(|| spares.pop());
    let mut file = match source {
        Some(src) => {
            let src = dir.join(src);
            let file = disk.open(&src).map_err(io)?;
            (src, file)
        }
        None => {
            let tmp = dir.join("segment.tmp");
            let mut file = disk.create(&tmp).map_err(io)?;
            zero(file.as_mut(), 0, options.segment_size).map_err(io)?;
            (tmp, file)
        }
    };
    let header = Header { salt, first_index };
    let mut buf = segment::encode_header(header).to_vec();
    buf.extend_from_slice(&[0u8; FRAME_SIZE as usize]);
    file.1.write_all_at(&buf, 0).map_err(io)?;
    // The header is durable before the file becomes the open segment, so a
    // reused file's old header can never be read as the live one.
    file.1.sync_data().map_err(io)?;
    if file.0 != path {
        disk.rename(&file.0, &path).map_err(io)?;
    }
    Open::new(disk, &path, file.1, (name, header, HEADER_SIZE, Vec::new())).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::RealDisk;

    fn entry(index: u64, term: u64, size: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; size].into(),
            ..Default::default()
        }
    }

    fn opts(segment_size: u64) -> LogOptions {
        LogOptions {
            segment_size,
            auto_recovery: false,
        }
    }

    fn open(dir: &Path, o: LogOptions, after: u64) -> Result<(Log, LoadReport), StorageError> {
        Log::open(Arc::new(RealDisk), dir, o, after)
    }

    fn indexes(r: &LoadReport) -> Vec<u64> {
        r.entries.iter().map(|e| e.index).collect()
    }

    /// Writes entries `1..=n` of `size` bytes into a fresh log in `dir`,
    /// then flips the bits of `mask` in byte `at` of the payload of record
    /// `record` (0-based) of the open segment. Returns (the segment's
    /// name, where the record starts, where the segment's data ends).
    fn flip_in_open_segment(
        dir: &Path,
        n: u64,
        size: usize,
        record: usize,
        at: u64,
        mask: u8,
    ) -> (String, u64, u64) {
        let (mut log, _) = open(dir, opts(1 << 20), 0).unwrap();
        log.append(&(1..=n).map(|i| entry(i, 1, size)).collect::<Vec<_>>())
            .unwrap();
        log.sync().unwrap();
        let (name, start, end) = (
            log.open.name.clone(),
            log.open.offsets[record],
            log.open.end,
        );
        drop(log);
        let path = log_dir(dir).join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(start + FRAME_SIZE + at) as usize] ^= mask;
        std::fs::write(&path, &bytes).unwrap();
        (name, start, end)
    }

    fn names(dir: &Path) -> Vec<String> {
        RealDisk.list(&log_dir(dir)).unwrap()
    }

    #[test]
    fn appends_rotate_into_closed_segments_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, r) = open(dir.path(), opts(4096), 0).unwrap();
        assert!(r.entries.is_empty());
        for i in 1..=40 {
            log.append(&[entry(i, 1, 300)]).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let closed: Vec<_> = names(dir.path())
            .into_iter()
            .filter(|n| segment::parse_closed_name(n).is_some())
            .collect();
        assert!(closed.len() >= 3, "segments were rotated: {closed:?}");
        let (log, r) = open(dir.path(), opts(4096), 0).unwrap();
        assert_eq!(indexes(&r), (1..=40).collect::<Vec<_>>());
        assert_eq!(r.entries[7].data, entry(8, 1, 300).data);
        assert!(!r.torn_tail);
        assert_eq!(log.last_index(), 40);
    }

    #[test]
    fn conflicting_suffix_is_replaced_even_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), opts(4096), 0).unwrap();
        let batch: Vec<_> = (1..=30).map(|i| entry(i, 1, 300)).collect();
        log.append(&batch).unwrap();
        // Same segment: replace 29..
        log.append(&[entry(29, 2, 10)]).unwrap();
        assert_eq!(log.last_index(), 29);
        // Reaching into a closed segment.
        log.append(&[entry(5, 3, 10), entry(6, 3, 10)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, r) = open(dir.path(), opts(4096), 0).unwrap();
        assert_eq!(indexes(&r), (1..=6).collect::<Vec<_>>());
        assert_eq!(r.entries[4].term, 3);
        assert_eq!(r.entries[3].term, 1);
    }

    /// The real disk, except that direct writes (on any file system) go
    /// through a file that refuses misaligned ones and counts the others.
    struct CheckedDirect(Arc<std::sync::atomic::AtomicUsize>);

    struct CheckedFile(Box<dyn DiskFile>, Arc<std::sync::atomic::AtomicUsize>);

    impl DiskFile for CheckedFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.0.read_at(buf, offset)
        }
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let a = DIRECT_ALIGN as usize;
            assert_eq!(offset % DIRECT_ALIGN, 0, "misaligned offset {offset}");
            assert_eq!(buf.len() % a, 0, "misaligned length {}", buf.len());
            assert_eq!(buf.as_ptr() as usize % a, 0, "misaligned buffer");
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.write_all_at(buf, offset)?;
            self.0.sync_data()
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
    }

    impl Disk for CheckedDirect {
        fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
            RealDisk.create_dir_all(path)
        }
        fn open(&self, path: &Path) -> std::io::Result<Box<dyn DiskFile>> {
            RealDisk.open(path)
        }
        fn create(&self, path: &Path) -> std::io::Result<Box<dyn DiskFile>> {
            RealDisk.create(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            RealDisk.rename(from, to)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            RealDisk.remove(path)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            RealDisk.list(dir)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            RealDisk.sync_dir(dir)
        }
        fn exists(&self, path: &Path) -> bool {
            RealDisk.exists(path)
        }
        fn open_direct(&self, path: &Path) -> std::io::Result<Option<Box<dyn DiskFile>>> {
            Ok(Some(Box::new(CheckedFile(
                RealDisk.open(path)?,
                self.0.clone(),
            ))))
        }
    }

    #[test]
    fn direct_appends_write_whole_blocks_and_keep_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let disk = || Arc::new(CheckedDirect(writes.clone())) as Arc<dyn Disk>;
        let o = opts(64 << 10);
        let (mut log, _) = Log::open(disk(), dir.path(), o, 0).unwrap();
        // Records of odd sizes land anywhere in a block, and across blocks.
        let mut expect = Vec::new();
        for i in 1..=120u64 {
            let e = entry(i, 1, (i as usize * 37) % 3000 + 1);
            log.append(std::slice::from_ref(&e)).unwrap();
            expect.push(e);
            if i % 3 == 0 {
                log.sync().unwrap();
            }
        }
        // A conflict among pending records, then one among written ones.
        log.append(&[entry(119, 2, 50)]).unwrap();
        log.sync().unwrap();
        log.append(&[entry(117, 3, 70), entry(118, 3, 5000)])
            .unwrap();
        log.sync().unwrap();
        expect.truncate(116);
        expect.extend([entry(117, 3, 70), entry(118, 3, 5000)]);
        drop(log);
        let before = writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(before >= 40, "appends went through direct writes: {before}");
        let (mut log, r) = Log::open(disk(), dir.path(), o, 0).unwrap();
        assert!(!r.torn_tail);
        assert_eq!(r.entries, expect);
        // Appending after a reload starts from the block read back.
        log.append(&[entry(119, 3, 10)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, r) = open(dir.path(), o, 0).unwrap();
        assert_eq!(r.entries.len(), 119);
        assert_eq!(r.entries[118], entry(119, 3, 10));
    }

    #[test]
    fn torn_tail_of_the_open_segment_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        // Tear the last record: flip a byte in its payload.
        let (_, last_at, end) = flip_in_open_segment(dir.path(), 10, 100, 9, 5, 0xff);
        assert!(end > last_at);
        let (mut log, r) = open(dir.path(), opts(1 << 20), 0).unwrap();
        assert!(r.torn_tail);
        assert_eq!(indexes(&r), (1..=9).collect::<Vec<_>>());
        // The log continues from the truncation point and survives a reload.
        log.append(&[entry(10, 2, 5), entry(11, 2, 5)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, r) = open(dir.path(), opts(1 << 20), 0).unwrap();
        assert!(!r.torn_tail);
        assert_eq!(indexes(&r), (1..=11).collect::<Vec<_>>());
        assert_eq!(r.entries[9].term, 2);
    }

    #[test]
    fn corrupt_closed_segment_is_an_error_or_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), opts(4096), 0).unwrap();
        for i in 1..=40 {
            log.append(&[entry(i, 1, 300)]).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let mut closed: Vec<_> = names(dir.path())
            .into_iter()
            .filter_map(|n| segment::parse_closed_name(&n).map(|(f, l)| (f, l, n)))
            .collect();
        closed.sort();
        let (first, _, victim) = closed[1].clone();
        let path = log_dir(dir.path()).join(&victim);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(HEADER_SIZE + FRAME_SIZE + 20) as usize] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let before = names(dir.path());

        match open(dir.path(), opts(4096), 0) {
            Err(StorageError::Corrupt { path: p, .. }) => assert!(p.ends_with(&victim)),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("corruption went unnoticed"),
        }
        assert_eq!(names(dir.path()), before, "a failed load changes nothing");

        let recover = LogOptions {
            segment_size: 4096,
            auto_recovery: true,
        };
        let (log, r) = open(dir.path(), recover, 0).unwrap();
        assert_eq!(indexes(&r), (1..first).collect::<Vec<_>>());
        assert_eq!(log.last_index(), first - 1);
        assert!(r
            .set_aside
            .iter()
            .any(|p| p.ends_with(format!("{victim}.corrupt"))));
        // Nothing was deleted: every set-aside file still exists.
        for p in &r.set_aside {
            assert!(p.exists(), "{} kept", p.display());
        }
    }

    #[test]
    fn damage_inside_the_open_segment_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (open_name, _, _) = flip_in_open_segment(dir.path(), 10, 100, 3, 7, 0x10);

        match open(dir.path(), opts(1 << 20), 0) {
            Err(StorageError::Corrupt { path: p, detail }) => {
                assert!(p.ends_with(&open_name), "{}", p.display());
                assert!(detail.contains("up to 10"), "{detail}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("damage read as a torn tail"),
        }
        let recover = LogOptions {
            segment_size: 1 << 20,
            auto_recovery: true,
        };
        let (mut log, r) = open(dir.path(), recover, 0).unwrap();
        assert!(r
            .set_aside
            .iter()
            .any(|p| p.ends_with(format!("{open_name}.corrupt"))));
        // Everything the segment held may have been acknowledged.
        assert_eq!(r.lost_upto, Some(10));
        assert!(r.entries.is_empty());
        // The log starts over after what is left and keeps working.
        log.append(&[entry(1, 2, 5)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, r) = open(dir.path(), recover, 0).unwrap();
        assert_eq!(indexes(&r), vec![1]);
        assert_eq!(r.lost_upto, None);
    }

    #[test]
    fn setting_a_closed_segment_aside_bounds_what_was_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), opts(4096), 0).unwrap();
        for i in 1..=40 {
            log.append(&[entry(i, 1, 300)]).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let mut closed: Vec<_> = names(dir.path())
            .into_iter()
            .filter_map(|n| segment::parse_closed_name(&n).map(|(f, l)| (f, l, n)))
            .collect();
        closed.sort();
        // Damage the segment header this time.
        let path = log_dir(dir.path()).join(&closed[0].2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let recover = LogOptions {
            segment_size: 4096,
            auto_recovery: true,
        };
        let (log, r) = open(dir.path(), recover, 0).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(log.last_index(), 0);
        // The open segment held entries up to 40: the bound covers them.
        assert_eq!(r.lost_upto, Some(40));
    }

    #[test]
    fn compaction_and_reset_recycle_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), opts(4096), 0).unwrap();
        for i in 1..=60 {
            log.append(&[entry(i, 1, 300)]).unwrap();
        }
        log.sync().unwrap();
        log.compact(30).unwrap();
        assert!(log.first_index() > 1 && log.first_index() <= 31);
        assert!(names(dir.path()).iter().any(|n| n.starts_with("spare-")));
        drop(log);
        // Reload after a snapshot at 30: entries after it come back.
        let (mut log, r) = open(dir.path(), opts(4096), 30).unwrap();
        assert_eq!(indexes(&r), (31..=60).collect::<Vec<_>>());
        // A snapshot from the leader at 100 replaces everything.
        log.reset(100).unwrap();
        log.append(&[entry(101, 5, 10)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, r) = open(dir.path(), opts(4096), 100).unwrap();
        assert_eq!(indexes(&r), vec![101]);
    }

    #[test]
    fn read_only_scan_never_modifies_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (open_name, _, _) = flip_in_open_segment(dir.path(), 5, 10, 4, 2, 0xff);
        let path = log_dir(dir.path()).join(&open_name);
        let bytes = std::fs::read(&path).unwrap();
        let entries = read_only(&RealDisk, dir.path(), 0).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
