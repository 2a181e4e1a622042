//! all-MiniLM-L6-v2 in candle against known sentence-transformers values.

use candle_core::Device;
use navigen_train::embed::Embedder;
use navigen_train::score::cosine;

#[test]
fn minilm_matches_sentence_transformers() {
    let e = Embedder::minilm(&Device::Cpu).expect("fetch and load all-MiniLM-L6-v2");
    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
        "The cat sits outside.",
    ];
    let v = e.embed_batch(&texts).unwrap();
    assert_eq!(v[0].len(), 384);
    for row in &v {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    let related = cosine(&v[0], &v[1]);
    assert!(
        (related - 0.755).abs() < 0.01,
        "cos(food, bread) = {related}, sentence-transformers gives 0.755"
    );
    for (a, b) in [(0, 2), (0, 3), (1, 2)] {
        let c = cosine(&v[a], &v[b]);
        assert!(c.abs() < 0.2, "unrelated pair {a},{b} has cosine {c}");
    }
    // Padding must not change an embedding: alone vs in a batch with a longer text.
    let alone = e.embed_batch(&[texts[3]]).unwrap();
    assert!(cosine(&alone[0], &v[3]) > 0.9999);
}

/// The embedder GGUF on llama.cpp (the device path) against the candle reference: same tokens, same
/// vectors up to f16 weights, and a text's vector does not depend on what was embedded before it.
#[test]
fn exported_embedder_on_llama_cpp_matches_candle() {
    use navigen::embedding::{TextEmbedder, MAX_TOKENS};
    use navigen_train::gguf::ExportDtype;
    let reference = Embedder::minilm(&Device::Cpu).unwrap();
    let long = "an epic tale of friendship and betrayal across the galaxy ".repeat(40);
    let texts = [
        "A man is eating food.",
        "The cat sits outside.",
        "Misérables, Les (1995). Genres: Drama, Musical.",
        "Naïve café — crème brûlée, 東京 and ÅNGSTRÖM!!",
        "Star Wars: Episode IV - A New Hope (1977); sci-fi, action & adventure",
        "",
        long.as_str(),
    ];
    for (dtype, min_cos) in [(ExportDtype::F16, 0.9995), (ExportDtype::F32, 0.99999)] {
        let gguf = navigen_train::embed::cached_minilm_gguf(dtype).unwrap();
        let dev = TextEmbedder::open(&gguf, 0).unwrap();
        assert_eq!(dev.dim(), 384);
        let many = dev.embed_many(&texts, &mut |_| ()).unwrap();
        for (t, v) in texts.iter().zip(&many) {
            let ids: Vec<i32> = reference
                .token_ids(t)
                .unwrap()
                .into_iter()
                .map(|x| x as i32)
                .collect();
            assert_eq!(
                dev.tokens(t),
                ids,
                "llama.cpp's WordPiece differs from tokenizers on {t:?}"
            );
            assert!(dev.tokens(t).len() <= MAX_TOKENS);
            let r = &reference.embed_batch(&[t]).unwrap()[0];
            let c = cosine(v, r);
            assert!(
                c > min_cos,
                "{dtype:?}: cos(llama.cpp, candle) = {c} on {t:?}"
            );
            assert_eq!(
                &dev.embed(t).unwrap(),
                v,
                "{dtype:?}: a text's vector depends on the texts before it"
            );
        }
    }
    // A file that is not an embedder is refused with a clear error.
    let not = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not.path(), b"GGUF garbage").unwrap();
    assert!(TextEmbedder::open(not.path(), 0).is_err());
}
