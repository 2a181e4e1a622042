//! all-MiniLM-L6-v2 in candle against known sentence-transformers values.

use candle_core::Device;
use navigen_train::embed::{cosine, Embedder};

#[test]
fn minilm_matches_sentence_transformers() {
    let e = Embedder::minilm(&Device::Cpu).expect("fetch and load all-MiniLM-L6-v2");
    let texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.", "The cat sits outside."];
    let v = e.embed_batch(&texts).unwrap();
    assert_eq!(v[0].len(), 384);
    for row in &v {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    let related = cosine(&v[0], &v[1]);
    assert!((related - 0.755).abs() < 0.01, "cos(food, bread) = {related}, sentence-transformers gives 0.755");
    for (a, b) in [(0, 2), (0, 3), (1, 2)] {
        let c = cosine(&v[a], &v[b]);
        assert!(c.abs() < 0.2, "unrelated pair {a},{b} has cosine {c}");
    }
    // Padding must not change an embedding: alone vs in a batch with a longer text.
    let alone = e.embed_batch(&[texts[3]]).unwrap();
    assert!(cosine(&alone[0], &v[3]) > 0.9999);
}
