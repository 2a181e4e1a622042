//! RecBole atomic files: `PREFIX.inter` and `PREFIX.item`, tab-separated with a `name:type` header.
//! Field names vary between datasets (`movie_title:token_seq` vs `movie_title:token`, `class` vs
//! `genre`), so fields are found by role, not by exact name.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{normalise_title, Interaction, ItemMeta, RawDataset};

struct Header {
    names: Vec<String>,
}

impl Header {
    fn parse(line: &str) -> Self {
        Header {
            names: line
                .split('\t')
                .map(|f| {
                    f.split(':')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .collect(),
        }
    }
    fn find(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.names.iter().position(|n| pred(n))
    }
}

fn lines(path: &Path) -> Result<impl Iterator<Item = (usize, std::io::Result<String>)>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::new(f)
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.map(|s| s.trim_end_matches('\r').to_string()))))
}

fn clean_year(y: &str) -> Option<String> {
    let y = y.trim();
    match y.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v > 0.0 => Some(format!("{}", v as i64)),
        _ if !y.is_empty() => Some(y.to_string()),
        _ => None,
    }
}

pub fn load(prefix: &Path, name: &str) -> Result<RawDataset> {
    let inter_path = prefix.with_extension("inter");
    let item_path = prefix.with_extension("item");
    let mut ds = RawDataset {
        name: name.to_string(),
        ..Default::default()
    };

    let mut it = lines(&inter_path)?;
    let header = match it.next() {
        Some((_, l)) => Header::parse(&l?),
        None => bail!("{} is empty", inter_path.display()),
    };
    let (u, i) = match (
        header.find(|n| n == "user_id"),
        header.find(|n| n == "item_id"),
    ) {
        (Some(u), Some(i)) => (u, i),
        _ => bail!(
            "{}: header needs user_id and item_id fields, found {:?}",
            inter_path.display(),
            header.names
        ),
    };
    let t = header.find(|n| n == "timestamp");
    for (line_no, line) in it {
        let line = line.with_context(|| format!("{}:{line_no}", inter_path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        ds.report.interaction_rows += 1;
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(user), Some(item)) = (f.get(u).map(|s| s.trim()), f.get(i).map(|s| s.trim()))
        else {
            ds.report.bad(
                &inter_path,
                line_no,
                format!("{} fields, header has {}", f.len(), header.names.len()),
            );
            continue;
        };
        if user.is_empty() || item.is_empty() {
            ds.report.bad(&inter_path, line_no, "empty user or item id");
            continue;
        }
        // Without a timestamp column the file order is the time order.
        let timestamp = match t {
            Some(t) => match f
                .get(t)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
            {
                Some(v) => v,
                None => {
                    ds.report.bad(
                        &inter_path,
                        line_no,
                        format!("timestamp {:?} is not a number", f.get(t).unwrap_or(&"")),
                    );
                    continue;
                }
            },
            None => line_no as f64,
        };
        ds.interactions.push(Interaction {
            user: user.to_string(),
            item: item.to_string(),
            timestamp,
        });
    }

    if item_path.is_file() {
        let mut it = lines(&item_path)?;
        let header = match it.next() {
            Some((_, l)) => Header::parse(&l?),
            None => bail!("{} is empty", item_path.display()),
        };
        let id = header
            .find(|n| n == "item_id")
            .with_context(|| format!("{}: no item_id field", item_path.display()))?;
        let title = header.find(|n| n.contains("title") || n == "name");
        let year = header.find(|n| n.contains("year"));
        let cats: Vec<usize> = header
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                ["class", "genre", "genres", "categories", "category"].contains(&n.as_str())
            })
            .map(|(i, _)| i)
            .collect();
        let brand = header.find(|n| n == "brand");
        let desc = header.find(|n| n.contains("desc"));
        let mut sink = super::ItemSink::default();
        for (line_no, line) in it {
            let line = line.with_context(|| format!("{}:{line_no}", item_path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            ds.report.item_rows += 1;
            let f: Vec<&str> = line.split('\t').collect();
            let get = |i: Option<usize>| {
                i.and_then(|i| f.get(i))
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
            };
            let Some(item_id) = get(Some(id)) else {
                ds.report.bad(&item_path, line_no, "missing item_id");
                continue;
            };
            let raw_title = get(title).unwrap_or(item_id);
            let mut year = get(year).and_then(clean_year);
            // ml-1m ids are "Title (1995)"; strip the year from the title when it is a separate field.
            let mut t = raw_title.to_string();
            if let Some(y) = &year {
                if let Some(stem) = t.strip_suffix(&format!(" ({y})")) {
                    t = stem.to_string();
                }
            } else if let Some(p) = t.rfind(" (") {
                let y = &t[p + 2..t.len() - 1];
                if t.ends_with(')') && y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()) {
                    year = Some(y.to_string());
                    t.truncate(p);
                }
            }
            let categories = cats
                .iter()
                .flat_map(|&c| {
                    get(Some(c))
                        .map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect();
            let item = ItemMeta {
                id: item_id.to_string(),
                title: normalise_title(&t),
                categories,
                year,
                brand: get(brand).map(str::to_string),
                features: Vec::new(),
                description: get(desc).map(str::to_string),
            };
            sink.push(&mut ds, item, &item_path, line_no);
        }
    }
    Ok(ds)
}
