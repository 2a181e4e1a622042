//! Property tests: no byte sequence may panic a reader, and any change to a valid file is an error.

use navigen::format::{catalog, codebooks, Dtype, ItemEntry};
use navigen::{Catalog, Cid, Codebooks};
use proptest::prelude::*;

fn valid_catalog() -> Vec<u8> {
    let entries: Vec<ItemEntry> = (0..20u16)
        .map(|i| ItemEntry {
            id: format!("item-{i}"),
            title: format!("Title {i}"),
            text: format!("Some text about item {i}"),
            tid: vec!["drama".into(), format!("term{i}")],
            cid: Cid::new(&[i % 4, i / 4, i % 3]).unwrap(),
            popularity: i as u32,
        })
        .collect();
    catalog::write_catalog(&entries, &[4, 8, 3], 1, &serde_json::json!({"t": 1})).unwrap()
}

fn valid_codebooks() -> Vec<u8> {
    let level: Vec<f32> = (0..4 * 6).map(|v| v as f32 * 0.1).collect();
    codebooks::write_codebooks(
        &[level.clone(), level],
        6,
        Dtype::F16,
        &serde_json::Value::Null,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Catalog::from_bytes(&bytes);
        let _ = Codebooks::from_bytes(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600), which in 0..2u8) {
        let mut bytes = if which == 0 { catalog::MAGIC.to_vec() } else { codebooks::MAGIC.to_vec() };
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = Catalog::from_bytes(&bytes);
        let _ = Codebooks::from_bytes(&bytes);
    }

    #[test]
    fn mutated_catalog_is_an_error(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut b = valid_catalog();
        let i = pos.index(b.len());
        b[i] ^= xor;
        prop_assert!(Catalog::from_bytes(&b).is_err());
    }

    #[test]
    fn mutated_codebooks_is_an_error(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut b = valid_codebooks();
        let i = pos.index(b.len());
        b[i] ^= xor;
        prop_assert!(Codebooks::from_bytes(&b).is_err());
    }

    #[test]
    fn truncated_or_extended_files_are_errors(cut in any::<prop::sample::Index>(), extra in proptest::collection::vec(any::<u8>(), 1..64)) {
        let c = valid_catalog();
        prop_assert!(Catalog::from_bytes(&c[..cut.index(c.len())]).is_err());
        let mut longer = c.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(Catalog::from_bytes(&longer).is_err());
        let k = valid_codebooks();
        prop_assert!(Codebooks::from_bytes(&k[..cut.index(k.len())]).is_err());
    }
}

#[test]
fn valid_files_open_from_disk_through_a_memory_map() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(catalog::FILE_NAME);
    navigen::format::write_atomic(&p, &valid_catalog()).unwrap();
    let cat = Catalog::open(&p).unwrap();
    assert_eq!(cat.len(), 20);
    assert_eq!(
        cat.item(cat.find_id("item-7").unwrap()).unwrap().title,
        "Title 7"
    );
    let err = Catalog::open(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
    // A codebooks file is not a catalog: a clear magic error naming the path.
    let q = dir.path().join("cb");
    navigen::format::write_atomic(&q, &valid_codebooks()).unwrap();
    let err = Catalog::open(&q).unwrap_err().to_string();
    assert!(err.contains("not a NAVIGCT") && err.contains("cb"), "{err}");
}
