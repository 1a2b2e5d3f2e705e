//! The replication unit: one committed SQLite transaction as the pages it
//! changed. Encoded by hand (little-endian, length-prefixed) so that the
//! format is fixed and every decode is bounds-checked.

use std::sync::Arc;

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
/// ids 0) still decode, so old logs replay.
const VERSION: u8 = 2;

impl Entry {
    /// Serialises the entry.
    pub fn encode(&self) -> Vec<u8> {
        let payload: usize = self.pages.iter().map(|(_, p)| p.len() + 4).sum();
        let mut out = Vec::with_capacity(32 + self.database.len() + payload);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION);
        out.extend_from_slice(&(self.database.len() as u32).to_le_bytes());
        out.extend_from_slice(self.database.as_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.base_id.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.pages_after.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (pgno, page) in &self.pages {
            out.extend_from_slice(&pgno.to_le_bytes());
            out.extend_from_slice(page);
        }
        out
    }

    /// Parses an entry; any inconsistency is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
        let mut r = Cursor { bytes, pos: 0 };
        if r.u32()? != MAGIC {
            return Err(StoreError::Corrupt(
                "entry does not start with the store magic".into(),
            ));
        }
        let version = r.take(1)?[0];
        if version != VERSION && version != 1 {
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
        let need = count.checked_mul(page_size as usize + 4);
        if need != Some(bytes.len() - r.pos) {
            return Err(StoreError::Corrupt(format!(
                "entry holds {} bytes of pages, {count} pages of {page_size} bytes expected",
                bytes.len() - r.pos
            )));
        }
        let mut pages = Vec::with_capacity(count);
        for _ in 0..count {
            let pgno = r.u32()?;
            if pgno == 0 || pgno > pages_after {
                return Err(StoreError::Corrupt(format!(
                    "page {pgno} outside a database of {pages_after} pages"
                )));
            }
            pages.push((pgno, Arc::from(r.take(page_size as usize)?)));
        }
        Ok(Entry {
            database,
            base,
            base_id,
            id,
            page_size,
            pages_after,
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

    proptest! {
        #[test]
        fn round_trips(e in entry()) {
            prop_assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
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
            prop_assert_eq!(Entry::decode(&v1).unwrap(), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Entry::decode(&bytes);
        }

        #[test]
        fn truncations_are_errors(e in entry(), cut in any::<prop::sample::Index>()) {
            let bytes = e.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(Entry::decode(&bytes[..cut]).is_err());
        }
    }
}
