//! One log segment file: a checksummed header, then checksummed records.
//!
//! ```text
//! header (32 bytes): magic "DQRSLOG1" | salt u64 | first index u64 | crc32c u32 | 0u32
//! record:            length u32 | crc32c(salt ‖ payload) u32 | payload (protobuf Entry)
//! ```
//!
//! A zero length marks the end of the written part (segments are
//! preallocated with zeros). The salt changes every time a file is reused,
//! so records left over from its previous life fail their checksum and can
//! never be mistaken for live ones.

use std::io;

use protobuf::Message as _;
use raft::eraftpb::Entry;

use super::disk::{read_exact_at, DiskFile};

/// Size of the segment header.
pub const HEADER_SIZE: u64 = 32;
/// Size of a record's frame (length and checksum).
pub const FRAME_SIZE: u64 = 8;
const MAGIC: &[u8; 8] = b"DQRSLOG1";
/// Upper bound on one record, so a garbage length never makes us allocate
/// gigabytes.
pub const MAX_RECORD: u64 = 256 << 20;

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Distinguishes this incarnation of the file from earlier ones.
    pub salt: u64,
    /// Index of the first entry stored in the segment.
    pub first_index: u64,
}

/// Encodes a header.
pub fn encode_header(h: Header) -> [u8; HEADER_SIZE as usize] {
    let mut buf = [0u8; HEADER_SIZE as usize];
    buf[0..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&h.salt.to_le_bytes());
    buf[16..24].copy_from_slice(&h.first_index.to_le_bytes());
    let crc = crc32c::crc32c(&buf[0..24]);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Reads and checks a header; `None` if it is missing or damaged.
pub fn read_header(file: &dyn DiskFile) -> io::Result<Option<Header>> {
    let mut buf = [0u8; HEADER_SIZE as usize];
    match read_exact_at(file, &mut buf, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let crc = u32::from_le_bytes([buf[24], buf[25], buf[26], buf[27]]);
    if &buf[0..8] != MAGIC || crc != crc32c::crc32c(&buf[0..24]) {
        return Ok(None);
    }
    Ok(Some(Header {
        salt: u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()),
        first_index: u64::from_le_bytes(buf[16..24].try_into().unwrap_or_default()),
    }))
}

/// Appends the framed record of `entry` to `out`.
pub fn encode_record(salt: u64, entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = entry
        .write_to_bytes()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut digest = crc32c::crc32c(&salt.to_le_bytes());
    digest = crc32c::crc32c_append(digest, &payload);
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&digest.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Result of reading one record.
pub enum Read {
    /// A valid record and the offset just past it.
    Entry(Entry, u64),
    /// A zero length: the end of the written part.
    End,
    /// A damaged, truncated or foreign record.
    Invalid(&'static str),
}

/// Reads the record at `offset`.
pub fn read_record(file: &dyn DiskFile, salt: u64, offset: u64, file_len: u64) -> io::Result<Read> {
    if offset + FRAME_SIZE > file_len {
        return Ok(Read::End);
    }
    let mut frame = [0u8; FRAME_SIZE as usize];
    read_exact_at(file, &mut frame, offset)?;
    let len = u64::from(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]));
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 {
        return Ok(if crc == 0 {
            Read::End
        } else {
            Read::Invalid("zero length with a checksum")
        });
    }
    if len > MAX_RECORD || offset + FRAME_SIZE + len > file_len {
        return Ok(Read::Invalid("record runs past the end of the file"));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact_at(file, &mut payload, offset + FRAME_SIZE)?;
    let digest = crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &payload);
    if digest != crc {
        return Ok(Read::Invalid("record checksum mismatch"));
    }
    match Entry::parse_from_bytes(&payload) {
        Ok(entry) => Ok(Read::Entry(entry, offset + FRAME_SIZE + len)),
        Err(_) => Ok(Read::Invalid("record does not decode as an entry")),
    }
}

/// Name of a closed segment holding `first..=last`.
pub fn closed_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}")
}

/// Parses a closed segment's name.
pub fn parse_closed_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Name of the open segment with this salt.
pub fn open_name(salt: u64) -> String {
    format!("open-{salt:016x}")
}

/// Name of a spare (preallocated, unused) segment.
pub fn spare_name(salt: u64) -> String {
    format!("spare-{salt:016x}")
}
