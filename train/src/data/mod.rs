//! Data ingestion: adapters turn a source (RecBole atomic files, Amazon Reviews 2023, plain JSONL) into
//! items and timed interactions; `sequences` then builds per-user histories and the leave-one-out split.
//! Bad rows are counted with their line numbers and reported, never dropped silently.

pub mod amazon;
pub mod jsonl;
pub mod recbole;
pub mod sequences;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What is known about an item. Only `id` and `title` are required.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    pub id: String,
    pub title: String,
    /// Category, genres or classes, most general first.
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub year: Option<String>,
    #[serde(default)]
    pub brand: Option<String>,
    /// Short key attributes ("waterproof", "4K", ...).
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// One user-item event.
#[derive(Clone, Debug, PartialEq)]
pub struct Interaction {
    pub user: String,
    pub item: String,
    pub timestamp: f64,
}

/// A row that could not be used, with where it was.
#[derive(Clone, Debug, Serialize)]
pub struct BadRow {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Counts of what an adapter read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestReport {
    pub item_rows: usize,
    pub interaction_rows: usize,
    pub bad_rows: usize,
    /// The first bad rows (all are counted in `bad_rows`).
    pub bad_examples: Vec<BadRow>,
    /// Items that occur in interactions but have no metadata row: kept, titled by their id.
    pub items_without_metadata: usize,
}

const MAX_BAD_EXAMPLES: usize = 50;

impl IngestReport {
    pub fn bad(&mut self, file: &Path, line: usize, reason: impl Into<String>) {
        self.bad_rows += 1;
        if self.bad_examples.len() < MAX_BAD_EXAMPLES {
            self.bad_examples.push(BadRow {
                file: file.display().to_string(),
                line,
                reason: reason.into(),
            });
        }
    }

    /// Prints a summary of bad rows to stderr.
    pub fn print(&self) {
        if self.bad_rows == 0 {
            return;
        }
        eprintln!("navigen: {} bad rows skipped; first ones:", self.bad_rows);
        for b in self.bad_examples.iter().take(10) {
            eprintln!("  {}:{}: {}", b.file, b.line, b.reason);
        }
    }
}

/// Items and interactions as read from a source.
#[derive(Clone, Debug, Default)]
pub struct RawDataset {
    pub name: String,
    pub items: Vec<ItemMeta>,
    pub interactions: Vec<Interaction>,
    pub report: IngestReport,
}

impl RawDataset {
    /// Adds a metadata-less item for every id that only occurs in interactions (and counts them).
    pub fn complete_items(&mut self) {
        let known: std::collections::HashSet<&str> =
            self.items.iter().map(|i| i.id.as_str()).collect();
        let mut missing: Vec<String> = self
            .interactions
            .iter()
            .filter(|i| !known.contains(i.item.as_str()))
            .map(|i| i.item.clone())
            .collect();
        missing.sort();
        missing.dedup();
        self.report.items_without_metadata = missing.len();
        self.items.extend(missing.into_iter().map(|id| ItemMeta {
            title: id.clone(),
            id,
            ..Default::default()
        }));
    }
}

/// A dataset named on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A bundled-by-registry MovieLens set: `ml-100k` or `ml-1m`.
    MovieLens(&'static str),
    /// `recbole:PATH_PREFIX` reads PATH_PREFIX.inter and PATH_PREFIX.item.
    Recbole(PathBuf),
    /// `amazon2023:META,REVIEWS`
    Amazon2023 { meta: PathBuf, reviews: PathBuf },
    /// `jsonl:DIR` (items.jsonl + interactions.jsonl) or `jsonl:ITEMS,INTERACTIONS`
    Jsonl {
        items: PathBuf,
        interactions: PathBuf,
    },
}

impl std::str::FromStr for Source {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let two = |rest: &str, what: &str| -> Result<(PathBuf, PathBuf)> {
            let (a, b) = rest
                .split_once(',')
                .with_context(|| format!("expected {what}"))?;
            Ok((PathBuf::from(a), PathBuf::from(b)))
        };
        Ok(match s {
            "ml-100k" => Source::MovieLens("ml-100k"),
            "ml-1m" => Source::MovieLens("ml-1m"),
            _ => match s.split_once(':') {
                Some(("recbole", p)) => Source::Recbole(PathBuf::from(p)),
                Some(("amazon2023", rest)) => {
                    let (meta, reviews) = two(rest, "amazon2023:META.jsonl,REVIEWS.jsonl")?;
                    Source::Amazon2023 { meta, reviews }
                }
                Some(("jsonl", rest)) => {
                    if rest.contains(',') {
                        let (items, interactions) = two(rest, "jsonl:ITEMS,INTERACTIONS")?;
                        Source::Jsonl { items, interactions }
                    } else {
                        let d = PathBuf::from(rest);
                        Source::Jsonl { items: d.join("items.jsonl"), interactions: d.join("interactions.jsonl") }
                    }
                }
                _ => bail!("unknown dataset {s:?}: use ml-100k, ml-1m, recbole:PATH_PREFIX, amazon2023:META,REVIEWS or jsonl:DIR"),
            },
        })
    }
}

impl Source {
    /// Reads the source, fetching the MovieLens assets first if needed.
    pub fn load(&self) -> Result<RawDataset> {
        let mut ds = match self {
            Source::MovieLens(name) => {
                let asset = crate::assets::find(name).expect("MovieLens assets are registered");
                let dir = asset.ensure()?;
                recbole::load(&dir.join(name), name)?
            }
            Source::Recbole(prefix) => {
                let name = prefix
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "recbole".into());
                recbole::load(prefix, &name)?
            }
            Source::Amazon2023 { meta, reviews } => amazon::load(meta, reviews)?,
            Source::Jsonl {
                items,
                interactions,
            } => jsonl::load(items, interactions)?,
        };
        ds.complete_items();
        Ok(ds)
    }
}

/// "Usual Suspects, The" -> "The Usual Suspects" (MovieLens stores leading articles at the end).
pub fn normalise_title(title: &str) -> String {
    let title = title.trim();
    // Keep a trailing parenthesised alias in place: "Horseman on the Roof, The (Hussard...)".
    let (main, tail) = match title.find(" (") {
        Some(p) if title.ends_with(')') => (&title[..p], &title[p..]),
        _ => (title, ""),
    };
    for article in [
        "The", "A", "An", "Les", "La", "Le", "L'", "Il", "Das", "Die", "Der", "El", "Los", "Las",
    ] {
        if let Some(stem) = main.strip_suffix(&format!(", {article}")) {
            let sep = if article.ends_with('\'') { "" } else { " " };
            return format!("{article}{sep}{stem}{tail}");
        }
    }
    title.to_string()
}

/// The text that is embedded for an item: title, then structured fields, then a bounded description.
pub fn item_text(item: &ItemMeta) -> String {
    let mut s = item.title.trim().to_string();
    if let Some(y) = item.year.as_deref().filter(|y| !y.is_empty()) {
        if !s.contains(y) {
            s.push_str(&format!(" ({y})"));
        }
    }
    s.push('.');
    if !item.categories.is_empty() {
        s.push_str(&format!(" Genres: {}.", item.categories.join(", ")));
    }
    if let Some(b) = item.brand.as_deref().filter(|b| !b.is_empty()) {
        s.push_str(&format!(" Brand: {b}."));
    }
    if !item.features.is_empty() {
        s.push_str(&format!(" Features: {}.", item.features.join("; ")));
    }
    if let Some(d) = item.description.as_deref().filter(|d| !d.is_empty()) {
        // Bounded so one long description cannot dominate the 256-token embedding window.
        let d: String = d.chars().take(600).collect();
        s.push_str(&format!(" {d}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(normalise_title("Usual Suspects, The"), "The Usual Suspects");
        assert_eq!(
            normalise_title("Horseman on the Roof, The (Hussard sur le toit, Le)"),
            "The Horseman on the Roof (Hussard sur le toit, Le)"
        );
        assert_eq!(normalise_title("Toy Story"), "Toy Story");
        assert_eq!(
            normalise_title("Contender, The (2000)"),
            "The Contender (2000)"
        );
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            "ml-1m".parse::<Source>().unwrap(),
            Source::MovieLens("ml-1m")
        );
        assert!(matches!(
            "jsonl:/x".parse::<Source>().unwrap(),
            Source::Jsonl { .. }
        ));
        assert!("amazon2023:/a".parse::<Source>().is_err());
        assert!("nope".parse::<Source>().is_err());
    }

    #[test]
    fn text_has_fields() {
        let it = ItemMeta {
            id: "1".into(),
            title: "Toy Story".into(),
            categories: vec!["Animation".into()],
            year: Some("1995".into()),
            ..Default::default()
        };
        assert_eq!(item_text(&it), "Toy Story (1995). Genres: Animation.");
    }
}

/// Collects item rows, keeping the first row of every id; a later duplicate is a bad row.
#[derive(Default)]
pub(crate) struct ItemSink {
    seen: std::collections::HashSet<String>,
}

impl ItemSink {
    pub(crate) fn push(&mut self, ds: &mut RawDataset, item: ItemMeta, file: &Path, line: usize) {
        if self.seen.insert(item.id.clone()) {
            ds.items.push(item);
        } else {
            ds.report.bad(
                file,
                line,
                format!("duplicate item id {:?} (first row kept)", item.id),
            );
        }
    }
}
