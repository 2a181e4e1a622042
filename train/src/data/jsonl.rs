//! The plain JSONL schema (documented in the README):
//! items: `{"id": "...", "title": "...", "categories": [..], "year": "..", "brand": "..",
//!          "features": [..], "description": ".."}` (only id and title required);
//! interactions: `{"user": "...", "item": "...", "timestamp": 1700000000}`.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::{IngestReport, Interaction, ItemMeta, RawDataset};

/// Calls `f` with every JSON object of a JSONL file and its 1-based line number; a line that is not
/// a JSON object is reported as bad.
pub fn for_each_object(
    path: &Path,
    report: &mut IngestReport,
    mut f: impl FnMut(&Map<String, Value>, usize, &mut IngestReport),
) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("{}:{line_no}", path.display()))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(obj)) => f(&obj, line_no, report),
            Ok(_) => report.bad(path, line_no, "not a JSON object"),
            Err(e) => report.bad(path, line_no, format!("invalid JSON: {e}")),
        }
    }
    Ok(())
}

fn scalar_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn load(items_path: &Path, inter_path: &Path) -> Result<RawDataset> {
    let name = items_path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "jsonl".into());
    let mut ds = RawDataset {
        name,
        ..Default::default()
    };
    let mut items = Vec::new();
    for_each_object(items_path, &mut ds.report, |obj, line, report| {
        report.item_rows += 1;
        let value = Value::Object(obj.clone());
        match serde_json::from_value::<ItemMeta>(value) {
            Ok(mut it) if !it.id.trim().is_empty() && !it.title.trim().is_empty() => {
                it.id = it.id.trim().to_string();
                items.push((it, line));
            }
            Ok(_) => report.bad(items_path, line, "id and title must be non-empty"),
            Err(e) => report.bad(items_path, line, format!("not an item: {e}")),
        }
    })?;
    let mut sink = super::ItemSink::default();
    for (it, line) in items {
        sink.push(&mut ds, it, items_path, line);
    }
    let mut inters = Vec::new();
    for_each_object(inter_path, &mut ds.report, |obj, line, report| {
        report.interaction_rows += 1;
        let ts = obj
            .get("timestamp")
            .and_then(|t| t.as_f64())
            .filter(|t| t.is_finite());
        match (
            scalar_string(obj.get("user")),
            scalar_string(obj.get("item")),
            ts,
        ) {
            (Some(user), Some(item), Some(timestamp)) => inters.push(Interaction {
                user,
                item,
                timestamp,
            }),
            _ => report.bad(
                inter_path,
                line,
                "interaction needs user, item and a numeric timestamp",
            ),
        }
    })?;
    ds.interactions = inters;
    Ok(ds)
}
