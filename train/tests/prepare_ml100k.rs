//! `prepare` on the real MovieLens-100k, fetched by the project's own asset code.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use navigen::format::{catalog, codebooks};
use navigen::{Catalog, Codebooks};
use navigen_train::data::sequences::{self, Example, TrainSequence};
use navigen_train::prepare::{prepare, PrepareOptions, PrepareReport};

fn prepared() -> &'static (PathBuf, PrepareReport) {
    static DIR: OnceLock<(PathBuf, PrepareReport)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("navigen-ml100k-")
            .tempdir()
            .unwrap()
            .keep();
        let report = prepare(&PrepareOptions::new("ml-100k".parse().unwrap(), &dir))
            .expect("prepare ml-100k");
        (dir, report)
    })
}

#[test]
fn report_has_every_field_and_no_collisions() {
    let (dir, r) = prepared();
    assert_eq!((r.items, r.users, r.interactions), (1682, 943, 100_000));
    assert_eq!(r.levels, 3);
    assert_eq!(r.collisions_after, 0);
    assert!(
        r.collisions_before > 0,
        "ml-100k collides before resolution; resolution was not exercised"
    );
    assert!(
        r.recon_mse.windows(2).all(|w| w[1] < w[0]),
        "reconstruction error must fall level by level: {:?}",
        r.recon_mse
    );
    assert!(
        r.utilisation.iter().all(|&u| u > 0.5),
        "{:?}",
        r.utilisation
    );
    let json = navigen_train::prepare::read_report(dir).unwrap();
    for key in [
        "items",
        "users",
        "interactions",
        "levels",
        "codebook_size",
        "collisions_before",
        "collisions_after",
        "utilisation",
        "recon_mse",
        "seconds",
    ] {
        assert!(json.get(key).is_some(), "prepare.json lacks {key}");
    }
    for phase in ["ingest", "embed", "rq", "tid", "write", "total"] {
        assert!(
            json["seconds"].get(phase).is_some(),
            "seconds lacks {phase}"
        );
    }
}

#[test]
fn catalog_and_codebooks_agree_with_the_split() {
    let (dir, _) = prepared();
    let cat = Catalog::open(&dir.join(catalog::FILE_NAME)).unwrap();
    let cb = Codebooks::open(&dir.join(codebooks::FILE_NAME)).unwrap();
    assert_eq!(cat.codebooks_crc(), cb.centroid_crc());
    assert_eq!(cat.len(), 1682);
    assert_eq!(cb.sizes(), cat.sizes().as_slice());
    assert_eq!(cat.cids_sorted().count(), 1682);
    let toy = cat.item(cat.find_id("1").unwrap()).unwrap();
    assert_eq!(toy.title, "Toy Story");
    assert_eq!(toy.tid().next(), Some("animation"));
    assert_eq!(cat.find_cid(&toy.cid), Some(toy.index));
    let test: Vec<Example> = sequences::read_jsonl(&dir.join(sequences::TEST_FILE)).unwrap();
    let valid: Vec<Example> = sequences::read_jsonl(&dir.join(sequences::VALID_FILE)).unwrap();
    let train: Vec<TrainSequence> =
        sequences::read_jsonl(&dir.join(sequences::TRAIN_FILE)).unwrap();
    assert_eq!((test.len(), valid.len(), train.len()), (943, 943, 943));
    for ((t, v), tr) in test.iter().zip(&valid).zip(&train) {
        assert!(t.history.len() <= 20 && !t.history.is_empty());
        assert_eq!(
            t.history.last(),
            Some(&v.target),
            "test history ends with the validation target"
        );
        assert_eq!(v.history.last(), tr.items.last());
        assert!(cat.find_id(&t.target).is_some());
    }
}

#[test]
fn same_seed_gives_same_cids() {
    let (dir, _) = prepared();
    let again = tempfile::tempdir().unwrap();
    prepare(&PrepareOptions::new(
        "ml-100k".parse().unwrap(),
        again.path(),
    ))
    .unwrap();
    let a = std::fs::read(dir.join(catalog::FILE_NAME)).unwrap();
    let b = std::fs::read(again.path().join(catalog::FILE_NAME)).unwrap();
    let (ca, cb) = (
        Catalog::from_bytes(&a).unwrap(),
        Catalog::from_bytes(&b).unwrap(),
    );
    assert!(
        ca.items()
            .zip(cb.items())
            .all(|(x, y)| x.id == y.id && x.cid == y.cid),
        "CIDs differ between two runs with one seed"
    );
    assert_eq!(
        std::fs::read(dir.join(codebooks::FILE_NAME)).unwrap(),
        std::fs::read(again.path().join(codebooks::FILE_NAME)).unwrap()
    );
}

fn flip_everywhere(path: &Path, step: usize) {
    let good = std::fs::read(path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join(path.file_name().unwrap());
    for i in (0..good.len()).step_by(step) {
        let mut b = good.clone();
        b[i] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let err =
            navigen_train::inspect::inspect(&bad, 0).expect_err("inspect accepted a damaged file");
        assert!(!err.to_string().is_empty());
        assert!(
            Catalog::open(&bad).is_err() && Codebooks::open(&bad).is_err(),
            "a reader accepted byte {i} flipped"
        );
    }
}

#[test]
fn flipped_bytes_in_written_files_are_clean_errors() {
    let (dir, _) = prepared();
    // Every 97th byte (prime step: hits headers, tables, records, strings, padding) of both files.
    flip_everywhere(&dir.join(catalog::FILE_NAME), 97);
    flip_everywhere(&dir.join(codebooks::FILE_NAME), 997);
    assert!(
        navigen_train::inspect::inspect(&dir.join(catalog::FILE_NAME), 3)
            .unwrap()
            .contains("items: 1682")
    );
}
