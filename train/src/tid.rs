//! Textual identifiers (TIDs): at most 10 short English terms per item, most important first.
//!
//! [`TidSource`] is the seam where an LLM teacher (docs/method.md section 2: the caption compressed to
//! `{"terms":[...]}`) plugs in; [`OfflineTid`] is the deterministic extractor that ships now:
//! category/genre first, then era and brand, key attributes, then caption keywords.

use crate::data::ItemMeta;

pub use navigen::format::catalog::{MAX_TID_TERMS, MAX_TID_TERM_CHARS};

/// Something that gives an item its TID.
pub trait TidSource: Send + Sync {
    /// Short name recorded in prepare.json.
    fn name(&self) -> &str;
    /// At most [`MAX_TID_TERMS`] terms, deduplicated case-insensitively, most important first.
    fn tid(&self, item: &ItemMeta) -> Vec<String>;
}

/// Deterministic extractor from structured fields and caption keywords.
#[derive(Clone, Debug, Default)]
pub struct OfflineTid;

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "from", "by", "as",
    "is", "are", "was", "were", "be", "it", "its", "this", "that", "these", "those", "his", "her",
    "their", "our", "your", "my", "he", "she", "they", "we", "you", "i", "not", "no", "but", "if",
    "so", "than", "then", "into", "out", "up", "down", "over", "under", "about", "after", "before",
    "all", "can", "will", "just", "more", "most", "other", "some", "such", "only", "own", "same",
    "too", "very", "who", "whom", "what", "which", "when", "where", "why", "how", "also", "has",
    "have", "had", "do", "does", "did", "part", "ii", "iii", "vs", "new", "le", "la", "les", "de",
    "des", "du", "el", "los", "die", "der", "das", "un", "une", "il", "di", "da", "et",
];

/// Lower-cased words of a text that carry meaning (no stopwords, no numbers, at least 3 letters).
pub fn keywords(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-').to_lowercase())
        .map(|w| w.strip_suffix("'s").map(str::to_string).unwrap_or(w))
        .filter(|w| {
            w.chars().filter(|c| c.is_alphabetic()).count() >= 3 && !STOPWORDS.contains(&w.as_str())
        })
        .collect()
}

/// Cleans a term: trimmed, single-line, single-spaced, lower case, at most 4 words and
/// [`MAX_TID_TERM_CHARS`] characters.
fn clean_term(t: &str) -> Option<String> {
    let t: Vec<&str> = t.split_whitespace().collect();
    if t.is_empty() || t.len() > 4 {
        return None;
    }
    let t = t.join(" ").to_lowercase();
    (t.chars().count() <= MAX_TID_TERM_CHARS && t.chars().any(|c| c.is_alphanumeric())).then_some(t)
}

/// Adds terms in order, skipping case-insensitive duplicates, up to the limit.
#[derive(Default)]
pub struct TermList(Vec<String>);

impl TermList {
    pub fn push(&mut self, term: &str) {
        if self.0.len() >= MAX_TID_TERMS {
            return;
        }
        if let Some(t) = clean_term(term) {
            if !self.0.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
                self.0.push(t);
            }
        }
    }
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl TidSource for OfflineTid {
    fn name(&self) -> &str {
        "offline-v1"
    }

    fn tid(&self, item: &ItemMeta) -> Vec<String> {
        let mut terms = TermList::default();
        for c in item.categories.iter().take(4) {
            terms.push(c);
        }
        if let Some(y) = item
            .year
            .as_deref()
            .and_then(|y| y.parse::<u32>().ok())
            .filter(|y| (1800..2200).contains(y))
        {
            terms.push(&format!("{}s", y / 10 * 10));
        }
        if let Some(b) = &item.brand {
            terms.push(b);
        }
        for f in item.features.iter().take(2) {
            terms.push(f);
        }
        for w in keywords(&item.title) {
            terms.push(&w);
        }
        if let Some(d) = &item.description {
            // Most frequent description keywords; first occurrence breaks ties.
            let words = keywords(d);
            let mut counts: Vec<(String, usize, usize)> = Vec::new();
            for (pos, w) in words.into_iter().enumerate() {
                match counts.iter_mut().find(|c| c.0 == w) {
                    Some(c) => c.1 += 1,
                    None => counts.push((w, 1, pos)),
                }
            }
            counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
            for (w, _, _) in counts {
                terms.push(&w);
            }
        }
        let out = terms.into_vec();
        if out.is_empty() {
            // Never empty: fall back to the title itself, cut to a short term.
            let t: String = item
                .title
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ");
            return clean_term(&t)
                .or_else(|| clean_term(&item.id))
                .into_iter()
                .collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movie_terms() {
        let it = ItemMeta {
            id: "1".into(),
            title: "The Usual Suspects".into(),
            categories: vec!["Crime".into(), "Thriller".into(), "crime".into()],
            year: Some("1995".into()),
            ..Default::default()
        };
        assert_eq!(
            OfflineTid.tid(&it),
            vec!["crime", "thriller", "1990s", "usual", "suspects"]
        );
    }

    #[test]
    fn bounded_and_never_empty() {
        let long = ItemMeta {
            id: "x".into(),
            title: "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".into(),
            description: Some("mu nu".into()),
            ..Default::default()
        };
        assert_eq!(OfflineTid.tid(&long).len(), MAX_TID_TERMS);
        let bare = ItemMeta {
            id: "x".into(),
            title: "42".into(),
            ..Default::default()
        };
        assert_eq!(OfflineTid.tid(&bare), vec!["42"]);
    }
}
