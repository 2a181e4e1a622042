//! Per-user chronological sequences and the leave-one-out split (docs/method.md section 1).

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Interaction;

/// Default number of past items a training example or prompt carries: the runtime's, so that a
/// default-trained model and the device agree (a bundle also records the value it was trained with).
pub use navigen::prompt::MAX_HISTORY as DEFAULT_MAX_HISTORY;
/// Users with fewer interactions (after collapsing repeats) are dropped.
pub const MIN_SEQUENCE: usize = 3;

/// A user's items (indices into the item list), oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct UserSequence {
    pub user: String,
    pub items: Vec<u32>,
}

/// Counts from building sequences.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SequenceStats {
    pub users_in: usize,
    pub users_dropped_short: usize,
    pub repeats_collapsed: usize,
    pub unknown_items: usize,
}

/// A user's interactions: (timestamp, position in the input, item index).
type Events = Vec<(f64, usize, u32)>;

/// Groups interactions by user, orders them by time (file order breaks ties), collapses consecutive
/// repeats of one item and drops users with fewer than [`MIN_SEQUENCE`] items.
pub fn build(
    interactions: &[Interaction],
    item_index: &HashMap<&str, u32>,
) -> (Vec<UserSequence>, SequenceStats) {
    let mut by_user: HashMap<&str, Events> = HashMap::new();
    let mut stats = SequenceStats::default();
    for (order, it) in interactions.iter().enumerate() {
        match item_index.get(it.item.as_str()) {
            Some(&idx) => by_user
                .entry(&it.user)
                .or_default()
                .push((it.timestamp, order, idx)),
            None => stats.unknown_items += 1,
        }
    }
    stats.users_in = by_user.len();
    let mut users: Vec<(&str, Events)> = by_user.into_iter().collect();
    users.sort_by(|a, b| natural_cmp(a.0, b.0));
    let mut out = Vec::new();
    for (user, mut events) in users {
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut items: Vec<u32> = Vec::with_capacity(events.len());
        for (_, _, idx) in events {
            if items.last() == Some(&idx) {
                stats.repeats_collapsed += 1;
            } else {
                items.push(idx);
            }
        }
        if items.len() < MIN_SEQUENCE {
            stats.users_dropped_short += 1;
            continue;
        }
        out.push(UserSequence {
            user: user.to_string(),
            items,
        });
    }
    (out, stats)
}

/// Orders "2" before "10" so user lists read naturally; falls back to plain string order.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// One prediction example: history (oldest first) and the item that came next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub user: String,
    pub history: Vec<String>,
    pub target: String,
}

/// A user's training prefix (everything before the validation target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSequence {
    pub user: String,
    pub items: Vec<String>,
}

impl TrainSequence {
    /// Sliding-window examples over the prefix: each item after the first is a target.
    pub fn examples(&self, max_history: usize) -> impl Iterator<Item = Example> + '_ {
        (1..self.items.len()).map(move |t| Example {
            user: self.user.clone(),
            history: self.items[t.saturating_sub(max_history)..t].to_vec(),
            target: self.items[t].clone(),
        })
    }
}

/// The leave-one-out split of one user.
pub fn split(
    seq: &UserSequence,
    ids: &[String],
    max_history: usize,
) -> (TrainSequence, Example, Example) {
    let id = |i: &u32| ids[*i as usize].clone();
    let n = seq.items.len();
    let tail = |end: usize| {
        seq.items[end.saturating_sub(max_history)..end]
            .iter()
            .map(id)
            .collect::<Vec<_>>()
    };
    (
        TrainSequence {
            user: seq.user.clone(),
            items: seq.items[..n - 2].iter().map(id).collect(),
        },
        Example {
            user: seq.user.clone(),
            history: tail(n - 2),
            target: id(&seq.items[n - 2]),
        },
        Example {
            user: seq.user.clone(),
            history: tail(n - 1),
            target: id(&seq.items[n - 1]),
        },
    )
}

/// File names of the split inside a prepared data folder.
pub const TRAIN_FILE: &str = "train.jsonl";
pub const VALID_FILE: &str = "valid.jsonl";
pub const TEST_FILE: &str = "test.jsonl";

pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let tmp = path.with_extension("jsonl.part");
    let mut w = BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    for r in rows {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inter(user: &str, item: &str, t: f64) -> Interaction {
        Interaction {
            user: user.into(),
            item: item.into(),
            timestamp: t,
        }
    }

    #[test]
    fn sequences_and_split() {
        let ids: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let index: HashMap<&str, u32> = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let rows = vec![
            inter("1", "c", 3.0),
            inter("1", "a", 1.0),
            inter("1", "b", 2.0),
            inter("1", "b", 2.5),
            inter("1", "d", 4.0),
            inter("2", "a", 1.0),
            inter("2", "b", 1.0),
            inter("1", "zzz", 5.0),
        ];
        let (seqs, stats) = build(&rows, &index);
        assert_eq!(
            seqs,
            vec![UserSequence {
                user: "1".into(),
                items: vec![0, 1, 2, 3]
            }]
        );
        assert_eq!(
            (
                stats.users_dropped_short,
                stats.repeats_collapsed,
                stats.unknown_items
            ),
            (1, 1, 1)
        );
        let (train, valid, test) = split(&seqs[0], &ids, 20);
        assert_eq!(train.items, vec!["a", "b"]);
        assert_eq!(
            (valid.history.clone(), valid.target.as_str()),
            (vec!["a".to_string(), "b".into()], "c")
        );
        assert_eq!((test.history.len(), test.target.as_str()), (3, "d"));
        let ex: Vec<Example> = train.examples(1).collect();
        assert_eq!(
            ex,
            vec![Example {
                user: "1".into(),
                history: vec!["a".into()],
                target: "b".into()
            }]
        );
    }
}
