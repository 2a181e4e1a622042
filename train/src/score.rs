//! Pure metrics shared by evaluation, RL rewards and the instruction judge: ranking quality (Recall@K,
//! NDCG@K with gain 1/log2(rank+1)), TID set precision/recall/F1, cosine similarity and the relevance of
//! an instruction to what it was written for. No I/O, no model: numbers in, numbers out.

use std::collections::BTreeSet;

/// The 1-based rank of the wanted item in each query's ranked list (`None`: not in the list).
#[derive(Clone, Debug, Default)]
pub struct Ranks {
    pub ranks: Vec<Option<usize>>,
}

impl Ranks {
    pub fn push(&mut self, rank: Option<usize>) {
        self.ranks.push(rank);
    }

    /// Share of queries whose wanted item is in the top `k` (0 without queries).
    pub fn recall_at(&self, k: usize) -> f64 {
        let n = self.ranks.len().max(1) as f64;
        let hits = self
            .ranks
            .iter()
            .filter(|r| r.is_some_and(|r| r <= k))
            .count() as f64;
        // `+ 0.0` turns a -0.0 into 0.0.
        hits / n + 0.0
    }

    /// Mean over queries of 1/log2(rank+1) for a wanted item in the top `k`, else 0 (0 without queries).
    pub fn ndcg_at(&self, k: usize) -> f64 {
        let n = self.ranks.len().max(1) as f64;
        let ndcg: f64 = self
            .ranks
            .iter()
            .filter_map(|r| r.filter(|&r| r <= k))
            .map(|r| 1.0 / ((r + 1) as f64).log2())
            .sum();
        // `+ 0.0` turns the -0.0 of an empty float sum into 0.0.
        ndcg / n + 0.0
    }
}

/// The 1-based rank of the first element of `ranked` that `is_wanted` accepts.
pub fn rank_of<I: IntoIterator>(
    ranked: I,
    is_wanted: impl FnMut(I::Item) -> bool,
) -> Option<usize> {
    ranked.into_iter().position(is_wanted).map(|r| r + 1)
}

/// Precision, recall and F1 of a predicted TID against the gold one, as sets of trimmed, lower-cased,
/// non-empty terms (each 0 when undefined).
pub fn tid_prf(pred: &[String], gold: &[String]) -> (f64, f64, f64) {
    let norm = |v: &[String]| -> BTreeSet<String> {
        v.iter()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let (p, g) = (norm(pred), norm(gold));
    let inter = p.intersection(&g).count() as f64;
    let prec = if p.is_empty() {
        0.0
    } else {
        inter / p.len() as f64
    };
    let rec = if g.is_empty() {
        0.0
    } else {
        inter / g.len() as f64
    };
    let f1 = if prec + rec > 0.0 {
        2.0 * prec * rec / (prec + rec)
    } else {
        0.0
    };
    (prec, rec, f1)
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Relevance of an embedded text `v` (an instruction) to its context (the embeddings of the history's
/// and the target's captions): the cosine between `v` and the mean of the context.
pub fn relevance(v: &[f32], context: &[Vec<f32>]) -> f32 {
    let mut mean = vec![0f32; v.len()];
    for row in context {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, x)| *m += x / context.len() as f32);
    }
    cosine(v, &mean)
}

/// Lower-case words with the punctuation around them removed: what distinct-n and lengths count.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Distinct-n over a set of texts (Li et al., 2016): distinct word n-grams / all word n-grams, counted
/// over the whole set, so that a model that writes the same instruction for everyone scores low even
/// when each instruction is fluent. 0 when there is no n-gram.
pub fn distinct_n(texts: &[&str], n: usize) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0usize;
    for t in texts {
        let w = words(t);
        for g in w.windows(n.max(1)) {
            total += 1;
            seen.insert(g.to_vec());
        }
    }
    if total == 0 {
        0.0
    } else {
        seen.len() as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_n_counts_over_the_set() {
        // "a cat sat" twice: 3 distinct unigrams of 6, 2 distinct bigrams of 4.
        let same = ["A cat sat.", "a CAT sat"];
        assert_eq!(distinct_n(&same, 1), 0.5);
        assert_eq!(distinct_n(&same, 2), 0.5);
        let varied = ["a cat sat", "the dog ran"];
        assert_eq!(distinct_n(&varied, 1), 1.0);
        assert_eq!(distinct_n(&varied, 2), 1.0);
        assert_eq!(distinct_n(&["one"], 2), 0.0);
        assert_eq!(distinct_n(&[], 1), 0.0);
    }

    #[test]
    fn ranking_metrics() {
        let r = Ranks {
            ranks: vec![Some(1), Some(3), None, Some(10)],
        };
        assert_eq!(r.recall_at(1), 0.25);
        assert_eq!(r.recall_at(5), 0.5);
        assert_eq!(r.recall_at(10), 0.75);
        assert!((r.ndcg_at(5) - (1.0 + 1.0 / 4f64.log2()) / 4.0).abs() < 1e-12);
        let empty = Ranks::default();
        assert_eq!(empty.recall_at(10).to_bits(), 0f64.to_bits());
        assert_eq!(empty.ndcg_at(10).to_bits(), 0f64.to_bits());
        assert_eq!(rank_of(["a", "b", "c"], |x| x == "c"), Some(3));
        assert_eq!(rank_of(["a"], |x| x == "z"), None);
    }

    #[test]
    fn tid_sets() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (p, r, f) = tid_prf(&s(&["Drama ", "war", ""]), &s(&["drama", "1990s"]));
        assert_eq!((p, r, f), (0.5, 0.5, 0.5));
        assert_eq!(tid_prf(&[], &s(&["drama"])), (0.0, 0.0, 0.0));
    }

    #[test]
    fn cosine_and_relevance() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        let ctx = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert!((relevance(&[1.0, 1.0], &ctx) - 1.0).abs() < 1e-6);
    }
}
