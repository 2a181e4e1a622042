//! Amazon Reviews 2023: `meta_<Category>.jsonl` (one product per line, keyed by `parent_asin`) and
//! `<Category>.jsonl` (one review per line: `user_id`, `parent_asin`, `timestamp` in ms).

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::jsonl::for_each_object;
use super::{Interaction, ItemMeta, RawDataset};

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
        _ => Vec::new(),
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub fn load(meta: &Path, reviews: &Path) -> Result<RawDataset> {
    let name = meta
        .file_stem()
        .map(|s| s.to_string_lossy().trim_start_matches("meta_").to_string())
        .unwrap_or_default();
    let mut ds = RawDataset {
        name,
        ..Default::default()
    };
    let mut sink = super::ItemSink::default();
    let mut items = Vec::new();
    for_each_object(meta, &mut ds.report, |obj, line, report| {
        report.item_rows += 1;
        let Some(id) = text(obj.get("parent_asin")).or_else(|| text(obj.get("asin"))) else {
            report.bad(meta, line, "no parent_asin");
            return;
        };
        let Some(title) = text(obj.get("title")) else {
            report.bad(meta, line, format!("product {id} has no title"));
            return;
        };
        // main_category first, then the category path from general to specific.
        let mut categories = strings(obj.get("main_category"));
        for c in strings(obj.get("categories")) {
            if !categories
                .iter()
                .any(|x: &String| x.eq_ignore_ascii_case(&c))
            {
                categories.push(c);
            }
        }
        let details = obj.get("details");
        let brand = text(obj.get("store")).or_else(|| text(details.and_then(|d| d.get("Brand"))));
        let year = text(details.and_then(|d| d.get("Date First Available")))
            .and_then(|d| d.split_whitespace().last().map(str::to_string))
            .filter(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()));
        let description = Some(strings(obj.get("description")).join(" ")).filter(|d| !d.is_empty());
        items.push((
            ItemMeta {
                id,
                title,
                categories,
                year,
                brand,
                features: strings(obj.get("features")),
                description,
            },
            line,
        ));
    })?;
    for (item, line) in items {
        sink.push(&mut ds, item, meta, line);
    }
    let mut inters = Vec::new();
    for_each_object(reviews, &mut ds.report, |obj, line, report| {
        report.interaction_rows += 1;
        let user = text(obj.get("user_id"));
        let item = text(obj.get("parent_asin")).or_else(|| text(obj.get("asin")));
        let ts = obj
            .get("timestamp")
            .and_then(|t| t.as_f64())
            .filter(|t| t.is_finite());
        match (user, item, ts) {
            (Some(user), Some(item), Some(timestamp)) => inters.push(Interaction {
                user,
                item,
                timestamp,
            }),
            _ => report.bad(
                reviews,
                line,
                "review needs user_id, parent_asin and a numeric timestamp",
            ),
        }
    })?;
    ds.interactions = inters;
    Ok(ds)
}
