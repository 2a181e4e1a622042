//! The Amazon Reviews 2023 and plain JSONL adapters on small files written here, with bad rows.

use navigen_train::data::Source;

#[test]
fn jsonl_adapter_reads_items_interactions_and_reports_bad_rows() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("items.jsonl"),
        concat!(
            r#"{"id": "a", "title": "Trail shoe", "categories": ["Shoes"], "year": 2023, "brand": "Acme"}"#, "\n",
            r#"{"id": "b", "title": "Rain jacket", "features": ["waterproof"]}"#, "\n",
            "not json\n",
            r#"{"id": "a", "title": "Duplicate"}"#, "\n",
            r#"{"title": "no id"}"#, "\n",
        ),
    )
    .unwrap();
    std::fs::write(
        d.path().join("interactions.jsonl"),
        concat!(
            r#"{"user": "u1", "item": "a", "timestamp": 3}"#,
            "\n",
            r#"{"user": "u1", "item": "b", "timestamp": 1}"#,
            "\n",
            r#"{"user": "u1", "item": "c", "timestamp": 2}"#,
            "\n",
            r#"{"user": 7, "item": "a"}"#,
            "\n",
        ),
    )
    .unwrap();
    let src: Source = format!("jsonl:{}", d.path().display()).parse().unwrap();
    let ds = src.load().unwrap();
    assert_eq!(ds.items.len(), 3, "a, b and c (c only in interactions)");
    assert_eq!(ds.report.items_without_metadata, 1);
    assert_eq!(ds.items[0].year.as_deref(), Some("2023"));
    assert_eq!(ds.interactions.len(), 3);
    assert_eq!(ds.report.bad_rows, 4);
    let lines: Vec<usize> = ds.report.bad_examples.iter().map(|b| b.line).collect();
    assert_eq!(
        lines,
        vec![3, 5, 4, 4],
        "bad rows carry their line numbers: {:?}",
        ds.report.bad_examples
    );
}

#[test]
fn amazon2023_adapter() {
    let d = tempfile::tempdir().unwrap();
    let meta = d.path().join("meta_Toys.jsonl");
    let reviews = d.path().join("Toys.jsonl");
    std::fs::write(
        &meta,
        concat!(
            r#"{"main_category": "Toys & Games", "title": "Wooden train set", "features": ["30 pieces"], "description": ["A classic set."], "store": "Brio", "categories": ["Toys & Games", "Trains"], "details": {}, "parent_asin": "B01"}"#, "\n",
            r#"{"main_category": "Toys & Games", "title": "", "parent_asin": "B02"}"#, "\n",
        ),
    )
    .unwrap();
    std::fs::write(
        &reviews,
        concat!(
            r#"{"rating": 5.0, "title": "great", "text": "x", "asin": "B01", "parent_asin": "B01", "user_id": "U1", "timestamp": 1588687728923}"#, "\n",
            r#"{"rating": 5.0, "parent_asin": "B01", "user_id": "U1"}"#, "\n",
        ),
    )
    .unwrap();
    let src: Source = format!("amazon2023:{},{}", meta.display(), reviews.display())
        .parse()
        .unwrap();
    let ds = src.load().unwrap();
    assert_eq!(ds.items.len(), 1);
    let it = &ds.items[0];
    assert_eq!((it.id.as_str(), it.brand.as_deref()), ("B01", Some("Brio")));
    assert_eq!(it.categories, vec!["Toys & Games", "Trains"]);
    assert_eq!(ds.interactions.len(), 1);
    assert_eq!(
        ds.report.bad_rows, 2,
        "an item without title and a review without timestamp"
    );
    let text = navigen_train::data::item_text(it);
    assert!(
        text.starts_with("Wooden train set. Genres: Toys & Games, Trains. Brand: Brio."),
        "{text}"
    );
}
