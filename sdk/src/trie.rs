//! The prefix trie of the catalog's CIDs: which code may follow a prefix. Next-item decoding applies it
//! to the logits at every step, so the model can only ever name an item that exists.

use std::collections::HashMap;

use crate::cid::Cid;
use crate::format::Catalog;

#[derive(Clone, Debug, Default)]
pub struct CidTrie {
    levels: usize,
    /// prefix (codes so far) -> allowed next codes, sorted.
    children: HashMap<Vec<u16>, Vec<u16>>,
    /// complete CID -> item index
    leaves: HashMap<Vec<u16>, u32>,
}

impl CidTrie {
    pub fn from_catalog(cat: &Catalog) -> Self {
        Self::from_cids(cat.levels(), cat.cids_sorted())
    }

    /// Builds from (CID, item) pairs.
    pub fn from_cids(levels: usize, cids: impl IntoIterator<Item = (Cid, u32)>) -> Self {
        let mut t = CidTrie {
            levels,
            ..Default::default()
        };
        for (cid, item) in cids {
            let codes = cid.codes();
            if codes.len() != levels {
                continue;
            }
            for l in 0..levels {
                let kids = t.children.entry(codes[..l].to_vec()).or_default();
                if kids.last() != Some(&codes[l]) && !kids.contains(&codes[l]) {
                    kids.push(codes[l]);
                }
            }
            t.leaves.insert(codes.to_vec(), item);
        }
        for kids in t.children.values_mut() {
            kids.sort_unstable();
        }
        t
    }

    pub fn levels(&self) -> usize {
        self.levels
    }

    /// Codes allowed after `prefix` (empty when the prefix leads nowhere or is complete).
    pub fn allowed(&self, prefix: &[u16]) -> &[u16] {
        self.children.get(prefix).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The item a complete CID names.
    pub fn item(&self, codes: &[u16]) -> Option<u32> {
        self.leaves.get(codes).copied()
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_paths() {
        let c = |a: &[u16]| Cid::new(a).unwrap();
        let t = CidTrie::from_cids(
            3,
            vec![(c(&[1, 2, 3]), 0), (c(&[1, 2, 4]), 1), (c(&[5, 0, 0]), 2)],
        );
        assert_eq!(t.allowed(&[]), &[1, 5]);
        assert_eq!(t.allowed(&[1]), &[2]);
        assert_eq!(t.allowed(&[1, 2]), &[3, 4]);
        assert!(t.allowed(&[2]).is_empty());
        assert!(t.allowed(&[1, 2, 3]).is_empty());
        assert_eq!(t.item(&[1, 2, 4]), Some(1));
        assert_eq!(t.item(&[1, 2]), None);
    }
}
