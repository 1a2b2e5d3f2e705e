//! The versioned page store: each database is a chain of immutable
//! versions. A committed transaction makes a new version; a reader keeps
//! the version it started on for as long as its read transaction lasts, so
//! readers never block the writer and never see a partial commit.
//!
//! Versions share unchanged pages (a persistent ordered map), so making one
//! costs O(pages changed × log pages), not a copy of the database. In disk
//! mode the map holds only the pages changed since the last checkpoint and
//! every other page is read from the database file.

use std::io;
use std::sync::Arc;

use imbl::OrdMap;

use crate::disk::BaseFile;
use crate::entry::Entry;

/// An immutable image of one database after some number of commits.
#[derive(Debug, Clone, Default)]
pub struct Version {
    /// How many transactions have been applied to this database.
    pub seq: u64,
    /// The id of the entry that made this version (0 for an empty database
    /// and for versions made before ids existed): with `seq`, what an entry
    /// must name as its base to apply.
    pub id: u64,
    /// Page size in bytes (0 while the database is empty).
    pub page_size: u32,
    /// Size in pages.
    pub pages: u32,
    /// Page contents by 1-based page number. A page within `pages` that is
    /// absent is read from `base`, or as zeros without one.
    pub data: OrdMap<u32, Arc<[u8]>>,
    /// Disk mode: the checkpointed database file under `data`.
    pub base: Option<Arc<BaseFile>>,
}

impl Version {
    /// The database size in bytes.
    pub fn size(&self) -> u64 {
        u64::from(self.pages) * u64::from(self.page_size)
    }

    /// Page `pgno`, if stored (in memory, or in the base file).
    pub fn page(&self, pgno: u32) -> io::Result<Option<Arc<[u8]>>> {
        if pgno == 0 || pgno > self.pages {
            return Ok(None);
        }
        if let Some(page) = self.data.get(&pgno) {
            return Ok(Some(Arc::clone(page)));
        }
        match &self.base {
            Some(base) => base.read_page(pgno, self.page_size).map(Some),
            None => Ok(None),
        }
    }

    /// The next version with `entry` applied, or `None` if the entry was
    /// built on another version (stale): the caller applies nothing.
    pub fn apply(&self, entry: &Entry) -> Option<Version> {
        if entry.base != self.seq || entry.base_id != self.id {
            return None;
        }
        // A new page size (VACUUM after PRAGMA page_size) rewrites every
        // page, so the old images are dropped.
        let same_size = entry.page_size == self.page_size;
        let mut data = if same_size {
            self.data.clone()
        } else {
            OrdMap::new()
        };
        for (pgno, page) in &entry.pages {
            data.insert(*pgno, Arc::clone(page));
        }
        if entry.pages_after < self.pages {
            // Drop everything past the new end: split at the first page
            // beyond it and keep the lower half.
            let (keep, _) = data.split(&(entry.pages_after + 1));
            data = keep;
        }
        Some(Version {
            seq: self.seq + 1,
            id: entry.id,
            page_size: entry.page_size,
            pages: entry.pages_after,
            data,
            base: self.base.clone().filter(|_| same_size),
        })
    }

    /// The whole database file image (for DUMP and for comparing nodes).
    pub fn image(&self) -> io::Result<Vec<u8>> {
        let ps = self.page_size as usize;
        let mut out = vec![0u8; self.pages as usize * ps];
        for pgno in 1..=self.pages {
            if let Some(page) = self.page(pgno)? {
                let start = (pgno as usize - 1) * ps;
                if let Some(dst) = out.get_mut(start..start + ps) {
                    dst.copy_from_slice(&page);
                }
            }
        }
        Ok(out)
    }
}

/// Reads `buf.len()` bytes at `offset` from `version` with the handle's
/// uncommitted pages (`overlay`, by page number) on top. Returns how many
/// bytes lay inside the file; the rest of `buf` is zeroed.
pub fn read_at(
    version: &Version,
    overlay: &dyn Fn(u32) -> Option<Arc<[u8]>>,
    page_size: u32,
    pages: u32,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    buf.fill(0);
    if page_size == 0 {
        return Ok(0);
    }
    let ps = u64::from(page_size);
    let end = (offset + buf.len() as u64).min(u64::from(pages) * ps);
    let mut pos = offset;
    while pos < end {
        let pgno = (pos / ps) as u32 + 1;
        let in_page = (pos % ps) as usize;
        let n = ((ps - in_page as u64).min(end - pos)) as usize;
        let dst = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
        let page = match overlay(pgno) {
            Some(p) => Some(p),
            None => version.page(pgno)?,
        };
        if let Some(page) = page {
            if let Some(src) = page.get(in_page..in_page + n) {
                dst.copy_from_slice(src);
            }
        }
        pos += n as u64;
    }
    Ok(end.saturating_sub(offset) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(base: u64, pages_after: u32, pages: &[(u32, u8)]) -> Entry {
        // Ids follow the sequence: entry `base` makes version `base + 1`.
        Entry {
            database: "d".into(),
            base,
            base_id: base,
            id: base + 1,
            page_size: 512,
            pages_after,
            pages: pages
                .iter()
                .map(|&(n, b)| (n, Arc::from(vec![b; 512])))
                .collect(),
        }
    }

    #[test]
    fn stale_entries_are_not_applied() {
        let v0 = Version::default();
        let v1 = v0.apply(&entry(0, 2, &[(1, 1), (2, 2)])).unwrap();
        assert_eq!(v1.seq, 1);
        assert!(v1.apply(&entry(0, 2, &[(1, 9)])).is_none());
        assert!(
            v0.apply(&entry(0, 1, &[(1, 3)])).is_some(),
            "old versions stay usable"
        );
    }

    #[test]
    fn an_entry_built_on_a_rejected_one_is_rejected_too() {
        // e1 and x both build on version 1; x wins. e2 was built on e1, so
        // it names sequence 2 like x's version, but not its id.
        let v1 = Version::default().apply(&entry(0, 1, &[(1, 1)])).unwrap();
        let x = Entry {
            id: 100,
            ..entry(1, 1, &[(1, 2)])
        };
        let e1 = Entry {
            id: 200,
            ..entry(1, 1, &[(1, 3)])
        };
        let e2 = Entry {
            base_id: 200,
            id: 201,
            ..entry(2, 1, &[(1, 4)])
        };
        let v2 = v1.apply(&x).unwrap();
        assert!(v2.apply(&e1).is_none());
        assert!(v2.apply(&e2).is_none(), "same sequence, other lineage");
        assert_eq!(v1.apply(&e1).unwrap().apply(&e2).unwrap().id, 201);
    }

    #[test]
    fn shrinking_drops_pages_past_the_end() {
        let v = Version::default()
            .apply(&entry(0, 3, &[(1, 1), (2, 2), (3, 3)]))
            .unwrap()
            .apply(&entry(1, 1, &[(1, 7)]))
            .unwrap();
        assert_eq!(v.data.len(), 1);
        assert_eq!(v.image().unwrap(), vec![7; 512]);
    }

    proptest! {
        /// The page store against a dumb model: a BTreeMap rebuilt in full
        /// for every transaction.
        #[test]
        fn matches_a_simple_model(txs in prop::collection::vec(
            (1u32..40, prop::collection::vec((1u32..40, any::<u8>()), 0..8)), 1..30)) {
            let mut version = Version::default();
            let mut model: BTreeMap<u32, u8> = BTreeMap::new();
            let mut model_pages = 0u32;
            for (seq, (pages_after, writes)) in txs.into_iter().enumerate() {
                let writes: Vec<(u32, u8)> = writes.into_iter().filter(|(n, _)| *n <= pages_after).collect();
                version = version.apply(&entry(seq as u64, pages_after, &writes)).unwrap();
                for (n, b) in &writes { model.insert(*n, *b); }
                model.retain(|n, _| *n <= pages_after);
                model_pages = pages_after;
                prop_assert_eq!(version.seq, seq as u64 + 1);
            }
            let image = version.image().unwrap();
            prop_assert_eq!(image.len(), model_pages as usize * 512);
            for n in 1..=model_pages {
                let want = model.get(&n).copied().unwrap_or(0);
                let start = (n as usize - 1) * 512;
                prop_assert!(image[start..start + 512].iter().all(|&b| b == want), "page {}", n);
            }
        }

        #[test]
        fn reads_at_any_offset_match_the_image(offset in 0u64..3000, len in 0usize..1500) {
            let v = Version::default().apply(&entry(0, 4, &[(1, 1), (2, 2), (4, 4)])).unwrap();
            let image = v.image().unwrap();
            let mut buf = vec![0xaau8; len];
            let got = read_at(&v, &|_| None, 512, v.pages, &mut buf, offset).unwrap();
            let start = (offset as usize).min(image.len());
            let end = (offset as usize + len).min(image.len());
            prop_assert_eq!(got, end - start);
            prop_assert_eq!(&buf[..got], &image[start..end]);
            prop_assert!(buf[got..].iter().all(|&b| b == 0));
        }
    }
}
