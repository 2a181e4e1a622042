//! Validation next-item Recall@10 and NDCG@10 through the device's constrained beam search: what picks
//! the model a stage keeps. Items the user already has are left out, as in the benchmark's
//! history-excluded table (docs/benchmarks.md).

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use crate::data::sequences::{Example, TrainSequence};
use crate::model::beam::NextItemDecoder;
use crate::model::{Rope, Weights};
use navigen::{Catalog, Cid};

/// One validation user: history (CIDs, at most what prepare kept), the target's catalog index, and
/// every item the user had before it.
struct User {
    history: Vec<Cid>,
    target: u32,
    seen: HashSet<u32>,
}

pub struct ValidationSet {
    users: Vec<User>,
}

impl ValidationSet {
    pub fn new(cat: &Catalog, train: &[TrainSequence], valid: &[Example]) -> Self {
        let by_user: HashMap<&str, &TrainSequence> =
            train.iter().map(|t| (t.user.as_str(), t)).collect();
        let index = |id: &String| cat.find_id(id);
        let users = valid
            .iter()
            .filter_map(|ex| {
                let history: Vec<Cid> = ex
                    .history
                    .iter()
                    .filter_map(|id| index(id).and_then(|i| cat.item(i)).map(|it| it.cid))
                    .collect();
                let target = index(&ex.target)?;
                let mut seen: HashSet<u32> = ex.history.iter().filter_map(index).collect();
                if let Some(t) = by_user.get(ex.user.as_str()) {
                    seen.extend(t.items.iter().filter_map(index));
                }
                (!history.is_empty()).then_some(User {
                    history,
                    target,
                    seen,
                })
            })
            .collect();
        ValidationSet { users }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// (Recall@10, NDCG@10) over the users.
    pub fn measure(
        &self,
        w: &Weights,
        rope: &Rope,
        decoder: &NextItemDecoder,
        beams: usize,
    ) -> Result<(f64, f64)> {
        let heads = decoder.level_heads(&w.head()?)?;
        let (mut hits, mut ndcg) = (0usize, 0f64);
        for u in &self.users {
            let top = decoder.predict((w, rope, &heads), &u.history, &u.seen, beams, 10)?;
            if let Some(r) = top.iter().position(|&i| i == u.target) {
                hits += 1;
                ndcg += 1.0 / ((r + 2) as f64).log2();
            }
        }
        let n = self.users.len().max(1) as f64;
        Ok((hits as f64 / n, ndcg / n))
    }
}
