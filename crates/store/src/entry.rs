//! The replication unit: one committed SQLite transaction as the pages it
//! changed. Encoded by hand (little-endian, length-prefixed) so that the
//! format is fixed and every decode is bounds-checked.
//!
//! Since format 3 a page travels as a patch of the same page in the
//! entry's base version where that is smaller: the runs of 8-byte words
//! that changed. An insert changes a few hundred bytes of a 4 KiB page, so
//! an entry is several times smaller in the log, on the network and in
//! every copy on the way. Every node that applies the entry holds the base
//! version (or the entry is stale and applies nowhere), so every node
//! rebuilds the same page.

use std::io;
use std::sync::Arc;

use crate::pages::Version;
use crate::StoreError;

/// One committed transaction of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Database name.
    pub database: String,
    /// The database's change sequence the transaction was built on.
    pub base: u64,
    /// The id of the version the transaction was built on. An entry whose
    /// base (sequence and id) is not the current version is stale and is
    /// not applied, on any node alike; ids are unique, so everything built
    /// on a rejected entry is rejected too, even if another entry brought
    /// the database to the same sequence.
    pub base_id: u64,
    /// This entry's id: the id of the version it makes. Never 0 for a new
    /// entry (0 is every version made before ids existed).
    pub id: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// Database size in pages after the transaction.
    pub pages_after: u32,
    /// Changed pages, by 1-based page number, each `page_size` bytes.
    /// Shared, so that the page SQLite wrote becomes the entry and the
    /// version it makes without a copy.
    pub pages: Vec<(u32, Arc<[u8]>)>,
}

const MAGIC: u32 = 0x6471_7270; // "dqrp"
/// Version 2 added the base id and the entry id; version 1 entries (both
/// ids 0) still decode, so old logs replay. Version 3 tags each page as
/// whole or as a patch of the base version's page.
const WHOLE_PAGES: u8 = 2;
const PATCHES: u8 = 3;
const WHOLE: u8 = 0;
const PATCH: u8 = 1;
/// Patches compare and copy 8-byte words.
const WORD: usize = 8;

/// A page of an entry as decoded: whole, or the changed runs of the base
/// version's page (offset in the page, bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Whole(Arc<[u8]>),
    Patch(Vec<(usize, Vec<u8>)>),
}

/// A decoded entry whose patched pages still need the base version's
/// pages ([`Decoded::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The entry without its pages.
    pub head: Entry,
    pages: Vec<(u32, Change)>,
}

impl Decoded {
    /// The numbers of the pages the entry changes.
    pub fn page_numbers(&self) -> Vec<u32> {
        self.pages.iter().map(|(pgno, _)| *pgno).collect()
    }

    /// Whether `version` is the entry's base (else it is stale there).
    pub fn builds_on(&self, version: &Version) -> bool {
        (self.head.base, self.head.base_id) == (version.seq, version.id)
    }

    /// The entry with every page whole, patches applied to the pages of
    /// `base` (the version the entry names as its base). Fails only if a
    /// base page cannot be read (a damaged disk-mode file).
    pub fn resolve(self, base: &Version) -> io::Result<Entry> {
        let mut entry = self.head;
        let size = entry.page_size as usize;
        for (pgno, change) in self.pages {
            let page = match change {
                Change::Whole(page) => page,
                Change::Patch(runs) => {
                    if base.page_size != entry.page_size {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a page patch across a page size change",
                        ));
                    }
                    let mut page = match base.page(pgno)? {
                        Some(old) => old.to_vec(),
                        None => vec![0; size],
                    };
                    for (offset, bytes) in runs {
                        // Bounds checked by the decoder.
                        if let Some(dst) = page.get_mut(offset..offset + bytes.len()) {
                            dst.copy_from_slice(&bytes);
                        }
                    }
                    Arc::from(page)
                }
            };
            entry.pages.push((pgno, page));
        }
        Ok(entry)
    }
}

impl From<Entry> for Decoded {
    /// An entry with every page whole: nothing to resolve.
    fn from(mut entry: Entry) -> Decoded {
        let pages = std::mem::take(&mut entry.pages)
            .into_iter()
            .map(|(pgno, page)| (pgno, Change::Whole(page)))
            .collect();
        Decoded { head: entry, pages }
    }
}

/// The runs of words that differ between `old` and `new` (equal lengths, a
/// multiple of [`WORD`]), as byte ranges.
fn changed_runs(old: &[u8], new: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, (a, b)) in old
        .chunks_exact(WORD)
        .zip(new.chunks_exact(WORD))
        .enumerate()
    {
        if a != b {
            let at = i * WORD;
            match runs.last_mut() {
                Some(r) if r.end == at => r.end = at + WORD,
                _ => runs.push(at..at + WORD),
            }
        }
    }
    runs
}

impl Entry {
    /// Serialises the entry with every page whole (format 2): what a node
    /// without the base version's pages can read.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(WHOLE_PAGES, &[])
    }

    /// Serialises the entry with each page as a patch of `olds[i]`, the
    /// base version's content of `pages[i]` (zeros for a page it does not
    /// hold), where that is smaller; a page without an old content (`None`)
    /// goes whole.
    pub fn encode_patches(&self, olds: &[Option<Arc<[u8]>>]) -> Vec<u8> {
        self.encode_with(PATCHES, olds)
    }

    fn encode_with(&self, format: u8, olds: &[Option<Arc<[u8]>>]) -> Vec<u8> {
        let payload: usize = self.pages.iter().map(|(_, p)| p.len() + 5).sum();
        let mut out = Vec::with_capacity(32 + self.database.len() + payload);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(format);
        out.extend_from_slice(&(self.database.len() as u32).to_le_bytes());
        out.extend_from_slice(self.database.as_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.base_id.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.pages_after.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (i, (pgno, page)) in self.pages.iter().enumerate() {
            out.extend_from_slice(&pgno.to_le_bytes());
            if format == WHOLE_PAGES {
                out.extend_from_slice(page);
                continue;
            }
            let patch = olds
                .get(i)
                .and_then(Option::as_ref)
                .filter(|old| old.len() == page.len() && page.len() % WORD == 0)
                .map(|old| changed_runs(old, page))
                // Offsets and lengths are u16, and a patch must pay for its
                // run headers.
                .filter(|runs| {
                    let bytes: usize = runs.iter().map(|r| r.len() + 4).sum();
                    page.len() <= 1 << 16 && runs.len() < 1 << 16 && bytes + 2 < page.len()
                });
            match patch {
                Some(runs) => {
                    out.push(PATCH);
                    out.extend_from_slice(&(runs.len() as u16).to_le_bytes());
                    for r in runs {
                        out.extend_from_slice(&(r.start as u16).to_le_bytes());
                        out.extend_from_slice(&(r.len() as u16).to_le_bytes());
                        out.extend_from_slice(&page[r]);
                    }
                }
                None => {
                    out.push(WHOLE);
                    out.extend_from_slice(page);
                }
            }
        }
        out
    }

    /// Parses an entry; any inconsistency is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, StoreError> {
        let mut r = Cursor { bytes, pos: 0 };
        if r.u32()? != MAGIC {
            return Err(StoreError::Corrupt(
                "entry does not start with the store magic".into(),
            ));
        }
        let version = r.take(1)?[0];
        if !(1..=PATCHES).contains(&version) {
            return Err(StoreError::Corrupt(format!(
                "unknown entry version {version}"
            )));
        }
        let name_len = r.u32()? as usize;
        let database = String::from_utf8(r.take(name_len)?.to_vec())
            .map_err(|_| StoreError::Corrupt("database name is not UTF-8".into()))?;
        let base = r.u64()?;
        let (base_id, id) = if version == 1 {
            (0, 0)
        } else {
            (r.u64()?, r.u64()?)
        };
        let page_size = r.u32()?;
        let pages_after = r.u32()?;
        let count = r.u32()? as usize;
        if count > 0 && !valid_page_size(page_size) {
            return Err(StoreError::Corrupt(format!(
                "invalid page size {page_size}"
            )));
        }
        let size = page_size as usize;
        if version < PATCHES && count.checked_mul(size + 4) != Some(bytes.len() - r.pos) {
            return Err(StoreError::Corrupt(format!(
                "entry holds {} bytes of pages, {count} pages of {page_size} bytes expected",
                bytes.len() - r.pos
            )));
        }
        // Every page takes at least 5 bytes: no allocation beyond the input.
        let mut pages = Vec::with_capacity(count.min((bytes.len() - r.pos) / 5));
        for _ in 0..count {
            let pgno = r.u32()?;
            if pgno == 0 || pgno > pages_after {
                return Err(StoreError::Corrupt(format!(
                    "page {pgno} outside a database of {pages_after} pages"
                )));
            }
            let kind = if version < PATCHES { WHOLE } else { r.u8()? };
            let change = match kind {
                WHOLE => Change::Whole(Arc::from(r.take(size)?)),
                PATCH => {
                    let runs = r.u16()?;
                    let mut out = Vec::with_capacity(usize::from(runs).min(size / WORD));
                    for _ in 0..runs {
                        let offset = usize::from(r.u16()?);
                        let len = usize::from(r.u16()?);
                        if offset + len > size {
                            return Err(StoreError::Corrupt(format!(
                                "a patch of page {pgno} ends past its {page_size} bytes"
                            )));
                        }
                        out.push((offset, r.take(len)?.to_vec()));
                    }
                    Change::Patch(out)
                }
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "page {pgno} of unknown kind {other}"
                    )))
                }
            };
            pages.push((pgno, change));
        }
        if r.pos != bytes.len() {
            return Err(StoreError::Corrupt(format!(
                "{} bytes after the entry's last page",
                bytes.len() - r.pos
            )));
        }
        Ok(Decoded {
            head: Entry {
                database,
                base,
                base_id,
                id,
                page_size,
                pages_after,
                pages: Vec::new(),
            },
            pages,
        })
    }
}

/// A fresh entry id: random, never 0. Unique with overwhelming
/// probability, and only ever compared with the one current version.
pub fn new_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded from the OS once per thread and varies
    // per instance: random bits without another dependency.
    let id = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    id.max(1)
}

/// SQLite page sizes: powers of two from 512 to 65536.
pub fn valid_page_size(size: u32) -> bool {
    (512..=65536).contains(&size) && size.is_power_of_two()
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| StoreError::Corrupt("entry truncated".into()))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        (
            "[a-z.]{0,12}",
            any::<(u64, u64, u64)>(),
            prop::sample::select(vec![512u32, 1024, 4096]),
            prop::collection::btree_map(1u32..50, any::<u8>(), 0..6),
        )
            .prop_map(|(database, (base, base_id, id), page_size, pages)| Entry {
                database,
                base,
                base_id,
                id,
                page_size,
                pages_after: 50,
                pages: pages
                    .into_iter()
                    .map(|(n, b)| (n, Arc::from(vec![b; page_size as usize])))
                    .collect(),
            })
    }

    /// A base version of 50 pages of `page_size` bytes, page n filled with n.
    fn base(page_size: u32) -> Version {
        let data = (1..=50u32)
            .map(|n| (n, Arc::<[u8]>::from(vec![n as u8; page_size as usize])))
            .collect();
        Version {
            seq: 7,
            id: 9,
            page_size,
            pages: 50,
            data,
            base: None,
        }
    }

    fn whole(bytes: &[u8]) -> Entry {
        Entry::decode(bytes)
            .unwrap()
            .resolve(&Version::default())
            .unwrap()
    }

    proptest! {
        #[test]
        fn patches_rebuild_the_pages_from_the_base(
            page_size in prop::sample::select(vec![512u32, 4096, 65536]),
            edits in prop::collection::btree_map(1u32..60, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..40), 0..6),
        ) {
            let base = base(page_size);
            let mut pages = Vec::new();
            let mut olds = Vec::new();
            for (pgno, writes) in edits {
                let old = base.page(pgno).unwrap();
                let mut page = old.as_deref().map_or_else(|| vec![0; page_size as usize], <[u8]>::to_vec);
                let len = page.len();
                for (at, byte) in writes {
                    page[at.index(len)] = byte;
                }
                pages.push((pgno, Arc::from(page)));
                // A page past the base's end is patched against zeros.
                olds.push(Some(old.unwrap_or_else(|| Arc::from(vec![0; page_size as usize]))));
            }
            let e = Entry { database: "x".into(), base: 7, base_id: 9, id: 10, page_size, pages_after: 60, pages };
            let patched = e.encode_patches(&olds);
            prop_assert!(patched.len() <= e.encode().len() + e.pages.len());
            let decoded = Entry::decode(&patched).unwrap();
            prop_assert!(decoded.builds_on(&base));
            prop_assert_eq!(decoded.resolve(&base).unwrap(), e.clone());
            // Without the old contents every page goes whole.
            prop_assert_eq!(whole(&e.encode_patches(&[])), e);
        }

        #[test]
        fn round_trips(e in entry()) {
            prop_assert_eq!(whole(&e.encode()), e);
        }

        #[test]
        fn version_1_entries_decode_with_zero_ids(mut e in entry()) {
            e.base_id = 0;
            e.id = 0;
            let mut v1 = e.encode();
            v1[4] = 1;
            // Version 1 had no ids: cut them out after name and base.
            let at = 4 + 1 + 4 + e.database.len() + 8;
            v1.drain(at..at + 16);
            prop_assert_eq!(whole(&v1), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(d) = Entry::decode(&bytes) {
                let _ = d.resolve(&base(512));
            }
        }

        #[test]
        fn truncations_are_errors(e in entry(), cut in any::<prop::sample::Index>(), patched: bool) {
            let olds: Vec<_> = e.pages.iter().map(|(_, p)| {
                let mut old = p.to_vec();
                old[0] ^= 1;
                Some(Arc::from(old))
            }).collect();
            let bytes = if patched { e.encode_patches(&olds) } else { e.encode() };
            let cut = cut.index(bytes.len());
            prop_assert!(Entry::decode(&bytes[..cut]).is_err());
        }
    }
}
