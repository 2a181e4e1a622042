//! The catalog reader. Each input is read three ways: its raw bytes; its raw bytes with the
//! container checksums made right; and a catalog the SDK's own writer made from fuzzer-chosen items,
//! then edited byte by byte and its checksums made right again (so edits reach the checks behind the
//! CRCs). An accepted catalog is walked through every accessor the engine uses.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use navigen::format::catalog::{write_catalog, ItemEntry};
use navigen::{Catalog, Cid};

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    sizes: Vec<u16>,
    items: Vec<(String, String, Vec<String>, Vec<u16>, u32)>,
    edits: Vec<(u32, u8)>,
}

fn walk(c: &Catalog) {
    let _ = (c.len(), c.levels(), c.sizes(), c.codebooks_crc(), c.info());
    for item in c.items().take(4096) {
        let _ = (item.title, item.text, item.tid_vec(), item.popularity);
        assert!(c.find_id(item.id).is_some(), "an item's own id is found");
        assert_eq!(c.item(item.index).map(|i| i.id), Some(item.id));
    }
    for (cid, i) in c.cids_sorted().take(4096) {
        assert_eq!(c.find_cid(&cid), Some(i), "every CID maps back to its item");
    }
}

fn read(bytes: &[u8]) {
    if let Ok(c) = Catalog::from_bytes(bytes) {
        walk(&c);
    }
}

fuzz_target!(|input: Input| {
    read(&input.raw);
    read(&navigen_fuzz::fix_checksums(&input.raw));
    let sizes: Vec<usize> = input.sizes.iter().take(4).map(|&s| s as usize % 300 + 1).collect();
    if sizes.is_empty() {
        return;
    }
    let entries: Vec<ItemEntry> = input
        .items
        .iter()
        .take(64)
        .filter_map(|(id, title, tid, codes, pop)| {
            let codes: Vec<u16> = sizes
                .iter()
                .enumerate()
                .map(|(l, &k)| codes.get(l).copied().unwrap_or(0) % k as u16)
                .collect();
            Some(ItemEntry {
                id: id.clone(),
                title: title.clone(),
                text: title.clone(),
                tid: tid.clone(),
                cid: Cid::new(&codes)?,
                popularity: *pop,
            })
        })
        .collect();
    let Ok(mut bytes) = write_catalog(&entries, &sizes, 7, &serde_json::Value::Null) else {
        return;
    };
    let written = Catalog::from_bytes(&bytes).expect("the writer's own output reads back");
    assert_eq!(written.len(), entries.len());
    drop(written);
    for &(at, v) in input.edits.iter().take(16) {
        let n = bytes.len();
        bytes[at as usize % n] = v;
    }
    read(&navigen_fuzz::fix_checksums(&bytes));
});
