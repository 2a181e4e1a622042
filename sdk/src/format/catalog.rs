//! The item catalog: item id <-> CID <-> TID <-> title (and the text that was embedded), with lookups
//! both ways and every CID enumerable in sorted order (what the decoding trie is built from).

use std::path::Path;

use super::bytes::FileBytes;
use super::container::{cast_records, Container, ContainerWriter, Tag};
use crate::cid::{Cid, MAX_LEVELS};
use crate::error::{Error, FormatError, Result};

pub const MAGIC: &[u8; 8] = b"NAVIGCT\0";
pub const VERSION: u32 = 1;
pub const FILE_NAME: &str = "catalog.nvct";
/// A TID holds at most this many terms.
pub const MAX_TID_TERMS: usize = 10;
/// Longest TID term, in characters (the trainer's TID sources cut there; the answer grammar bounds it).
pub const MAX_TID_TERM_CHARS: usize = 40;

const META: Tag = Tag::new(b"META");
const ITEM: Tag = Tag::new(b"ITEM");
const STRS: Tag = Tag::new(b"STRS");
const BYID: Tag = Tag::new(b"BYID");
const BYCD: Tag = Tag::new(b"BYCD");
const INFO: Tag = Tag::new(b"INFO");

/// A string in the STRS blob.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct StrRef {
    offset: u32,
    len: u32,
}

/// One item, 48 bytes, stored in item-index order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ItemRecord {
    id: StrRef,
    title: StrRef,
    text: StrRef,
    /// TID terms joined by '\n'.
    tid: StrRef,
    cid: [u16; MAX_LEVELS],
    popularity: u32,
    flags: u32,
}

/// META: fixed little-endian words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    item_count: u32,
    levels: u32,
    sizes: [u32; MAX_LEVELS],
    /// CRC-32 of the CENT section of the codebooks these CIDs came from.
    codebooks_crc: u32,
    reserved: [u32; 9],
}

/// An item handed to [`write_catalog`].
#[derive(Clone, Debug, PartialEq)]
pub struct ItemEntry {
    pub id: String,
    pub title: String,
    pub text: String,
    pub tid: Vec<String>,
    pub cid: Cid,
    /// Interactions in the training split (for popularity baselines and cold starts).
    pub popularity: u32,
}

/// A borrowed view of one catalog item.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub index: u32,
    pub id: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    tid: &'a str,
    pub cid: Cid,
    pub popularity: u32,
}

impl<'a> Item<'a> {
    /// The TID terms, most important first.
    pub fn tid(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.tid.split('\n').filter(|t| !t.is_empty())
    }
    pub fn tid_vec(&self) -> Vec<String> {
        self.tid().map(str::to_owned).collect()
    }
}

/// The catalog, used in place from a memory map.
#[derive(Clone, Debug)]
pub struct Catalog {
    bytes: FileBytes,
    meta: Meta,
    items: std::ops::Range<usize>,
    strs: std::ops::Range<usize>,
    by_id: std::ops::Range<usize>,
    by_cid: std::ops::Range<usize>,
    info: serde_json::Value,
}

fn range_of(all: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - all.as_ptr() as usize;
    start..start + part.len()
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = FileBytes::map(path)?;
        Self::from_file_bytes(bytes).map_err(|e| Error::format(path, e))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::from_file_bytes(FileBytes::copy(bytes))
    }

    fn from_file_bytes(bytes: FileBytes) -> Result<Self, FormatError> {
        let all = bytes.as_slice();
        let c = Container::parse(all, MAGIC, &[VERSION])?;
        let meta_b = c.section(META)?;
        if meta_b.len() != std::mem::size_of::<Meta>() {
            return Err(FormatError::Invalid(format!(
                "META has {} bytes, expected {}",
                meta_b.len(),
                std::mem::size_of::<Meta>()
            )));
        }
        let meta: Meta = cast_records::<Meta>("META", meta_b)?[0];
        let n = meta.item_count as usize;
        let levels = meta.levels as usize;
        if levels == 0 || levels > MAX_LEVELS {
            return Err(FormatError::Invalid(format!(
                "{levels} CID levels (1..={MAX_LEVELS} allowed)"
            )));
        }
        for l in 0..MAX_LEVELS {
            let k = meta.sizes[l];
            if (l < levels && (k == 0 || k > 65536)) || (l >= levels && k != 0) {
                return Err(FormatError::Invalid(format!(
                    "codebook size {k} at level {l} is out of range"
                )));
            }
        }
        let items_b = c.section(ITEM)?;
        let items: &[ItemRecord] = cast_records("ITEM", items_b)?;
        if items.len() != n {
            return Err(FormatError::Invalid(format!(
                "ITEM holds {} records, META says {n}",
                items.len()
            )));
        }
        let strs = c.section(STRS)?;
        let by_id_b = c.section(BYID)?;
        let by_cid_b = c.section(BYCD)?;
        let by_id: &[u32] = cast_records("BYID", by_id_b)?;
        let by_cid: &[u32] = cast_records("BYCD", by_cid_b)?;
        if by_id.len() != n || by_cid.len() != n {
            return Err(FormatError::Invalid(format!(
                "index sizes {}/{} differ from item count {n}",
                by_id.len(),
                by_cid.len()
            )));
        }
        // Every string in bounds and UTF-8; every code inside its codebook.
        let get = |r: StrRef| -> Result<&str, FormatError> {
            let end = (r.offset as usize)
                .checked_add(r.len as usize)
                .filter(|&e| e <= strs.len());
            let end = end.ok_or_else(|| {
                FormatError::Invalid(format!("string at {}+{} outside STRS", r.offset, r.len))
            })?;
            std::str::from_utf8(&strs[r.offset as usize..end])
                .map_err(|_| FormatError::Invalid(format!("string at {} is not UTF-8", r.offset)))
        };
        for (i, it) in items.iter().enumerate() {
            for r in [it.id, it.title, it.text] {
                get(r)?;
            }
            let tid = get(it.tid)?;
            if tid.split('\n').count() > MAX_TID_TERMS {
                return Err(FormatError::Invalid(format!(
                    "item {i} has more than {MAX_TID_TERMS} TID terms"
                )));
            }
            for l in 0..MAX_LEVELS {
                let code = it.cid[l] as u32;
                if (l < levels && code >= meta.sizes[l]) || (l >= levels && code != 0) {
                    return Err(FormatError::Invalid(format!(
                        "item {i}: code {code} at level {l} outside the codebook"
                    )));
                }
            }
            if it.flags != 0 {
                return Err(FormatError::Invalid(format!(
                    "item {i}: unknown flags {:#x}",
                    it.flags
                )));
            }
        }
        // Both indexes are permutations, strictly sorted: ids and CIDs are unique.
        let check_perm = |name: &str, idx: &[u32]| -> Result<(), FormatError> {
            let mut seen = vec![false; n];
            for &i in idx {
                let slot = seen.get_mut(i as usize).ok_or_else(|| {
                    FormatError::Invalid(format!("{name}: index {i} out of range"))
                })?;
                if std::mem::replace(slot, true) {
                    return Err(FormatError::Invalid(format!("{name}: index {i} twice")));
                }
            }
            Ok(())
        };
        check_perm("BYID", by_id)?;
        check_perm("BYCD", by_cid)?;
        for w in by_id.windows(2) {
            if get(items[w[0] as usize].id)? >= get(items[w[1] as usize].id)? {
                return Err(FormatError::Invalid(
                    "BYID is not strictly sorted (duplicate or unordered ids)".into(),
                ));
            }
        }
        for w in by_cid.windows(2) {
            if items[w[0] as usize].cid >= items[w[1] as usize].cid {
                return Err(FormatError::Invalid(
                    "BYCD is not strictly sorted (two items share a CID?)".into(),
                ));
            }
        }
        let info = super::container::info_json(&c)?;
        Ok(Catalog {
            meta,
            items: range_of(all, items_b),
            strs: range_of(all, strs),
            by_id: range_of(all, by_id_b),
            by_cid: range_of(all, by_cid_b),
            info,
            bytes,
        })
    }

    fn records(&self) -> &[ItemRecord] {
        bytemuck::cast_slice(&self.bytes.as_slice()[self.items.clone()])
    }
    fn str_at(&self, r: StrRef) -> &str {
        let strs = &self.bytes.as_slice()[self.strs.clone()];
        // Validated at open; the fallback is unreachable but keeps this panic-free.
        std::str::from_utf8(&strs[r.offset as usize..(r.offset + r.len) as usize]).unwrap_or("")
    }
    fn by_id_index(&self) -> &[u32] {
        bytemuck::cast_slice(&self.bytes.as_slice()[self.by_id.clone()])
    }
    fn by_cid_index(&self) -> &[u32] {
        bytemuck::cast_slice(&self.bytes.as_slice()[self.by_cid.clone()])
    }

    pub fn len(&self) -> usize {
        self.meta.item_count as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn levels(&self) -> usize {
        self.meta.levels as usize
    }
    /// Codebook size of each CID level.
    pub fn sizes(&self) -> Vec<usize> {
        self.meta.sizes[..self.levels()]
            .iter()
            .map(|&k| k as usize)
            .collect()
    }
    pub fn codebooks_crc(&self) -> u32 {
        self.meta.codebooks_crc
    }
    pub fn info(&self) -> &serde_json::Value {
        &self.info
    }

    fn cid_of(&self, r: &ItemRecord) -> Cid {
        Cid::new(&r.cid[..self.levels()]).expect("levels checked at open")
    }

    /// The item at `index` (0..len).
    pub fn item(&self, index: u32) -> Option<Item<'_>> {
        let r = self.records().get(index as usize)?;
        Some(Item {
            index,
            id: self.str_at(r.id),
            title: self.str_at(r.title),
            text: self.str_at(r.text),
            tid: self.str_at(r.tid),
            cid: self.cid_of(r),
            popularity: r.popularity,
        })
    }

    pub fn items(&self) -> impl Iterator<Item = Item<'_>> + '_ {
        (0..self.len() as u32).filter_map(|i| self.item(i))
    }

    /// Index of the item with this id.
    pub fn find_id(&self, id: &str) -> Option<u32> {
        let recs = self.records();
        let idx = self.by_id_index();
        idx.binary_search_by(|&i| self.str_at(recs[i as usize].id).cmp(id))
            .ok()
            .map(|p| idx[p])
    }

    /// Index of the item with this CID.
    pub fn find_cid(&self, cid: &Cid) -> Option<u32> {
        let recs = self.records();
        let idx = self.by_cid_index();
        idx.binary_search_by(|&i| self.cid_of(&recs[i as usize]).cmp(cid))
            .ok()
            .map(|p| idx[p])
    }

    /// Every (CID, item index), sorted by CID: consecutive entries share prefixes, which is what a
    /// prefix trie is built from.
    pub fn cids_sorted(&self) -> impl Iterator<Item = (Cid, u32)> + '_ {
        let recs = self.records();
        self.by_cid_index()
            .iter()
            .map(move |&i| (self.cid_of(&recs[i as usize]), i))
    }
}

/// Serialises a catalog. Fails on duplicate ids, duplicate CIDs (collisions), over-long TIDs, codes
/// outside the codebooks or strings the format cannot hold.
pub fn write_catalog(
    entries: &[ItemEntry],
    sizes: &[usize],
    codebooks_crc: u32,
    info: &serde_json::Value,
) -> Result<Vec<u8>> {
    let levels = sizes.len();
    if levels == 0 || levels > MAX_LEVELS {
        return Err(Error::InvalidArgument(format!("{levels} levels")));
    }
    let mut meta = Meta {
        item_count: entries.len() as u32,
        levels: levels as u32,
        codebooks_crc,
        ..Default::default()
    };
    for (l, &k) in sizes.iter().enumerate() {
        if k == 0 || k > 65536 {
            return Err(Error::InvalidArgument(format!("codebook size {k}")));
        }
        meta.sizes[l] = k as u32;
    }
    let mut strs: Vec<u8> = Vec::new();
    let mut push = |s: &str| -> Result<StrRef> {
        let offset = u32::try_from(strs.len())
            .map_err(|_| Error::InvalidArgument("catalog strings exceed 4 GiB".into()))?;
        strs.extend_from_slice(s.as_bytes());
        Ok(StrRef {
            offset,
            len: s.len() as u32,
        })
    };
    let mut records = Vec::with_capacity(entries.len());
    for e in entries {
        if e.cid.levels() != levels {
            return Err(Error::InvalidArgument(format!(
                "item {}: CID has {} levels, catalog {levels}",
                e.id,
                e.cid.levels()
            )));
        }
        for (l, &c) in e.cid.codes().iter().enumerate() {
            if c as usize >= sizes[l] {
                return Err(Error::InvalidArgument(format!(
                    "item {}: code {c} at level {l} outside codebook of {}",
                    e.id, sizes[l]
                )));
            }
        }
        if e.tid.len() > MAX_TID_TERMS || e.tid.iter().any(|t| t.contains('\n') || t.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "item {}: TID must be 1..={MAX_TID_TERMS} non-empty single-line terms",
                e.id
            )));
        }
        let mut cid = [0u16; MAX_LEVELS];
        cid[..levels].copy_from_slice(e.cid.codes());
        records.push(ItemRecord {
            id: push(&e.id)?,
            title: push(&e.title)?,
            text: push(&e.text)?,
            tid: push(&e.tid.join("\n"))?,
            cid,
            popularity: e.popularity,
            flags: 0,
        });
    }
    let mut by_id: Vec<u32> = (0..entries.len() as u32).collect();
    by_id.sort_by(|&a, &b| entries[a as usize].id.cmp(&entries[b as usize].id));
    if let Some(w) = by_id
        .windows(2)
        .find(|w| entries[w[0] as usize].id == entries[w[1] as usize].id)
    {
        return Err(Error::InvalidArgument(format!(
            "duplicate item id {:?}",
            entries[w[0] as usize].id
        )));
    }
    let mut by_cid: Vec<u32> = (0..entries.len() as u32).collect();
    by_cid.sort_by_key(|&i| entries[i as usize].cid);
    if let Some(w) = by_cid
        .windows(2)
        .find(|w| entries[w[0] as usize].cid == entries[w[1] as usize].cid)
    {
        let (a, b) = (&entries[w[0] as usize], &entries[w[1] as usize]);
        return Err(Error::InvalidArgument(format!(
            "items {:?} and {:?} share the CID {}",
            a.id, b.id, a.cid
        )));
    }
    let mut w = ContainerWriter::new(MAGIC, VERSION);
    w.section(META, bytemuck::bytes_of(&meta).to_vec());
    w.section(ITEM, bytemuck::cast_slice(&records).to_vec());
    w.section(STRS, strs);
    w.section(BYID, bytemuck::cast_slice(&by_id).to_vec());
    w.section(BYCD, bytemuck::cast_slice(&by_cid).to_vec());
    w.section(
        INFO,
        serde_json::to_vec(info).expect("JSON value serialises"),
    );
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<ItemEntry> {
        let e = |id: &str, codes: &[u16], tid: &[&str]| ItemEntry {
            id: id.into(),
            title: format!("Title {id}"),
            text: format!("Text of {id} ünïcödé"),
            tid: tid.iter().map(|s| s.to_string()).collect(),
            cid: Cid::new(codes).unwrap(),
            popularity: id.len() as u32,
        };
        vec![
            e("b", &[1, 2, 3], &["drama", "war"]),
            e("a", &[0, 2, 3], &["comedy"]),
            e("c", &[1, 2, 0], &[]),
        ]
    }

    #[test]
    fn round_trip_and_lookups() {
        let bytes = write_catalog(
            &entries(),
            &[4, 4, 4],
            7,
            &serde_json::json!({"dataset": "t"}),
        )
        .unwrap();
        let cat = Catalog::from_bytes(&bytes).unwrap();
        assert_eq!(cat.len(), 3);
        assert_eq!(cat.codebooks_crc(), 7);
        let b = cat.item(cat.find_id("b").unwrap()).unwrap();
        assert_eq!(b.title, "Title b");
        assert_eq!(b.tid_vec(), vec!["drama", "war"]);
        assert_eq!(cat.find_cid(&Cid::new(&[1, 2, 3]).unwrap()), Some(0));
        assert_eq!(cat.find_cid(&Cid::new(&[3, 3, 3]).unwrap()), None);
        assert_eq!(cat.find_id("zz"), None);
        let sorted: Vec<_> = cat.cids_sorted().map(|(c, _)| c.codes().to_vec()).collect();
        assert_eq!(sorted, vec![vec![0, 2, 3], vec![1, 2, 0], vec![1, 2, 3]]);
        assert_eq!(cat.item(2).unwrap().tid().count(), 0);
        assert!(cat.item(3).is_none());
    }

    #[test]
    fn writer_refuses_collisions_and_duplicates() {
        let mut e = entries();
        e[2].cid = e[0].cid;
        assert!(write_catalog(&e, &[4, 4, 4], 0, &serde_json::Value::Null).is_err());
        let mut e = entries();
        e[2].id = "a".into();
        assert!(write_catalog(&e, &[4, 4, 4], 0, &serde_json::Value::Null).is_err());
        assert!(write_catalog(&entries(), &[4, 2, 4], 0, &serde_json::Value::Null).is_err());
    }

    /// A valid catalog with one section's bytes edited by `edit`, written again with right
    /// checksums, so that only the semantic checks behind the CRCs can refuse it.
    fn resealed(mut edit: impl FnMut(Tag, &mut Vec<u8>)) -> Vec<u8> {
        let bytes = write_catalog(&entries(), &[4, 4, 4], 7, &serde_json::Value::Null).unwrap();
        let c = Container::parse(&bytes, MAGIC, &[VERSION]).unwrap();
        let mut w = ContainerWriter::new(MAGIC, VERSION);
        for info in c.sections() {
            let mut data = c.section(info.tag).unwrap().to_vec();
            edit(info.tag, &mut data);
            w.section(info.tag, data);
        }
        w.finish()
    }

    fn records<T: bytemuck::Pod>(data: &mut [u8]) -> &mut [T] {
        bytemuck::cast_slice_mut(data)
    }

    #[test]
    fn semantic_checks_behind_the_checksums() {
        // Unedited: the same bytes read back.
        assert!(Catalog::from_bytes(&resealed(|_, _| {})).is_ok());
        type Case = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, Tag);
        let cases: Vec<Case> = vec![
            (
                "CID levels",
                Box::new(|d| records::<Meta>(d)[0].levels = 0),
                META,
            ),
            (
                "out of range",
                Box::new(|d| records::<Meta>(d)[0].sizes[2] = 0),
                META,
            ),
            (
                "META says",
                Box::new(|d| records::<Meta>(d)[0].item_count = 2),
                META,
            ),
            (
                "outside STRS",
                Box::new(|d| records::<ItemRecord>(d)[1].text.len = 1 << 20),
                ITEM,
            ),
            (
                "outside the codebook",
                Box::new(|d| records::<ItemRecord>(d)[0].cid[1] = 4),
                ITEM,
            ),
            (
                "unknown flags",
                Box::new(|d| records::<ItemRecord>(d)[2].flags = 1),
                ITEM,
            ),
            (
                "not UTF-8",
                Box::new(|d| d.iter_mut().take(1).for_each(|b| *b = 0xff)),
                STRS,
            ),
            (
                "twice",
                Box::new(|d| records::<u32>(d)[1] = records::<u32>(d)[0]),
                BYID,
            ),
            ("out of range", Box::new(|d| records::<u32>(d)[0] = 3), BYCD),
            (
                "BYCD is not strictly sorted",
                Box::new(|d| records::<u32>(d).swap(0, 1)),
                BYCD,
            ),
            (
                "BYID is not strictly sorted",
                Box::new(|d| records::<u32>(d).swap(0, 2)),
                BYID,
            ),
        ];
        for (says, edit, tag) in cases {
            let bytes = resealed(|t, d| {
                if t == tag {
                    edit(d)
                }
            });
            let e = Catalog::from_bytes(&bytes).expect_err(says);
            assert!(
                matches!(e, FormatError::Invalid(_)) && e.to_string().contains(says),
                "{e} (expected {says:?})"
            );
        }
    }

    #[test]
    fn damaged_files_are_errors() {
        let bytes = write_catalog(&entries(), &[4, 4, 4], 7, &serde_json::Value::Null).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Catalog::from_bytes(&b).is_err(), "flipped byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(
                Catalog::from_bytes(&bytes[..n]).is_err(),
                "truncated to {n}"
            );
        }
    }
}
