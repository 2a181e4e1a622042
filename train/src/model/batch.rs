//! Tokenised examples packed into rows: several examples per row up to the maximum length, each with
//! its own positions (restarting at 0) and segment (attention never crosses examples); the loss is on
//! answer tokens only. The [`Batch`] is what [`super::loss`] trains on, whichever stage built it.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::transformer::packed_mask;

/// One example as tokens: the first `prompt_len` tokens carry no loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// A packed row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
    /// Next-token target at each position, or `None` (prompt, last token of an example, padding).
    pub targets: Vec<Option<u32>>,
}

impl Row {
    fn push(&mut self, ex: &Tokenized, segment: u32) {
        for (i, &id) in ex.ids.iter().enumerate() {
            self.ids.push(id);
            self.positions.push(i as u32);
            self.segments.push(segment);
            // Position i predicts token i+1 when that token belongs to the answer.
            let next = i + 1;
            self.targets
                .push((next < ex.ids.len() && next >= ex.prompt_len).then(|| ex.ids[next]));
        }
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|t| t.is_some()).count()
    }
}

/// Next-fit packing in the given order (the order is the shuffle, so packing keeps it).
pub fn pack(examples: &[Tokenized], max_len: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut cur = Row::default();
    let mut seg = 0u32;
    for ex in examples {
        if cur.len() + ex.ids.len() > max_len && !cur.is_empty() {
            rows.push(std::mem::take(&mut cur));
            seg = 0;
        }
        cur.push(ex, seg);
        seg += 1;
    }
    if !cur.is_empty() {
        rows.push(cur);
    }
    rows
}

/// Restricts the softmax of every CID code target to the codes the catalog's trie allows after the
/// codes before it, the distribution constrained decoding ranks with (`beam.rs`, the runtime's
/// `predict.rs`). Without it most of the loss goes to learning which codes exist at all, which the
/// trie already knows; with it the loss is the ranking the device uses.
pub struct CodeConstraint {
    /// token id -> (level, code)
    code_of: std::collections::HashMap<u32, (usize, u16)>,
    trie: navigen::trie::CidTrie,
    /// Columns of the code block: level l, code c at `l * width + c`.
    width: usize,
    /// Token id of each column (unused columns repeat a real token; they are always masked).
    pub columns: Vec<u32>,
}

impl CodeConstraint {
    pub fn new(cat: &navigen::Catalog, tok: &tokenizers::Tokenizer) -> Result<Self> {
        let ids = crate::tokenizer::code_token_ids(cat, tok)?;
        let width = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut code_of = std::collections::HashMap::new();
        let mut columns = Vec::with_capacity(ids.len() * width);
        for (l, level) in ids.iter().enumerate() {
            for (c, &id) in level.iter().enumerate() {
                code_of.insert(id, (l, c as u16));
            }
            // Unused columns repeat a real token of the level; they are always masked.
            let fill = level.first().copied().unwrap_or(0);
            columns.extend(
                level
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(fill, width - level.len())),
            );
        }
        Ok(CodeConstraint {
            code_of,
            trie: navigen::trie::CidTrie::from_catalog(cat),
            width,
            columns,
        })
    }

    /// For a target `next` after `before` (the row's tokens up to and including the current one):
    /// its column and the allowed columns, when it is a code whose prefix codes precede it.
    fn constrain(&self, before: &[u32], next: u32) -> Option<(u32, Vec<u32>)> {
        let &(level, code) = self.code_of.get(&next)?;
        if before.len() < level {
            return None;
        }
        let mut prefix = Vec::with_capacity(level);
        for (l, id) in before[before.len() - level..].iter().enumerate() {
            match self.code_of.get(id) {
                Some(&(pl, pc)) if pl == l => prefix.push(pc),
                _ => return None,
            }
        }
        let allowed = self.trie.allowed(&prefix);
        if !allowed.contains(&code) {
            return None;
        }
        let col = |c: u16| (level * self.width + c as usize) as u32;
        Some((col(code), allowed.iter().map(|&c| col(c)).collect()))
    }
}

/// Tensors of a batch of rows, padded to the longest row.
pub struct Batch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub mask: Tensor,
    /// Flat (row * T + t) indices of positions whose target is scored over the whole vocabulary.
    pub target_index: Tensor,
    pub targets: Tensor,
    /// Positions whose target is a CID code scored over the codes the trie allows
    /// ([`CodeConstraint`]): their indices, target columns, and an additive mask (0 allowed, -1e9 not)
    /// over the code block's columns.
    pub code_index: Option<Tensor>,
    pub code_targets: Option<Tensor>,
    pub code_mask: Option<Tensor>,
    pub tokens: usize,
    pub loss_tokens: usize,
}

pub fn make_batch(
    rows: &[Row],
    pad: u32,
    device: &Device,
    dtype: DType,
    codes: Option<&CodeConstraint>,
) -> Result<Batch> {
    anyhow::ensure!(!rows.is_empty(), "empty batch");
    let t = rows.iter().map(Row::len).max().unwrap_or(0);
    let b = rows.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut pos = Vec::with_capacity(b * t);
    let mut segs = Vec::with_capacity(b);
    let mut tidx = Vec::new();
    let mut tgt = Vec::new();
    let (mut cidx, mut ctgt, mut cmask) = (Vec::new(), Vec::new(), Vec::new());
    for (r, row) in rows.iter().enumerate() {
        let mut s = row.segments.clone();
        for (i, target) in row.targets.iter().enumerate() {
            let Some(x) = *target else { continue };
            // The prefix codes must belong to the same example (segment).
            let start = row.segments[..=i]
                .iter()
                .rposition(|&g| g != row.segments[i])
                .map_or(0, |p| p + 1);
            match codes.and_then(|c| c.constrain(&row.ids[start..=i], x).map(|v| (c, v))) {
                Some((c, (col, allowed))) => {
                    cidx.push((r * t + i) as u32);
                    ctgt.push(col);
                    let from = cmask.len();
                    cmask.resize(from + c.columns.len(), -1e9f32);
                    for a in allowed {
                        cmask[from + a as usize] = 0.0;
                    }
                }
                None => {
                    tidx.push((r * t + i) as u32);
                    tgt.push(x);
                }
            }
        }
        ids.extend_from_slice(&row.ids);
        pos.extend_from_slice(&row.positions);
        // Padding: every pad token is its own segment, so it attends only to itself.
        for j in row.len()..t {
            ids.push(pad);
            pos.push(0);
            s.push(u32::MAX - j as u32);
        }
        segs.push(s);
    }
    let n_code = cidx.len();
    anyhow::ensure!(!tgt.is_empty() || n_code > 0, "batch has no answer tokens");
    let (code_index, code_targets, code_mask) = match codes {
        Some(c) if n_code > 0 => (
            Some(Tensor::from_vec(cidx, n_code, device)?),
            Some(Tensor::from_vec(ctgt, n_code, device)?),
            Some(Tensor::from_vec(cmask, (n_code, c.columns.len()), device)?),
        ),
        _ => (None, None, None),
    };
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        positions: Tensor::from_vec(pos, (b, t), device)?,
        mask: packed_mask(&segs, device, dtype)?,
        loss_tokens: tgt.len() + n_code,
        target_index: Tensor::from_vec(tidx, tgt.len(), device)?,
        targets: Tensor::from_vec(tgt.clone(), tgt.len(), device)?,
        code_index,
        code_targets,
        code_mask,
        tokens: rows.iter().map(Row::len).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::identity_op)] // `3 * 7 + 0`: row 3, key 0 of the 7x7 mask.
    fn packing_keeps_examples_apart() {
        let a = Tokenized {
            ids: vec![1, 2, 3, 4],
            prompt_len: 2,
        };
        let b = Tokenized {
            ids: vec![5, 6, 7],
            prompt_len: 1,
        };
        let rows = pack(&[a.clone(), b.clone(), a.clone()], 8);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(rows[0].positions, vec![0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(rows[0].segments, vec![0, 0, 0, 0, 1, 1, 1]);
        // Targets: answer tokens only (a: tokens 3,4 predicted from positions 1,2; b: 6,7 from 0,1).
        assert_eq!(
            rows[0].targets,
            vec![None, Some(3), Some(4), None, Some(6), Some(7), None]
        );
        let batch = make_batch(&rows, 0, &Device::Cpu, DType::F32, None).unwrap();
        assert_eq!(batch.ids.dims(), &[2, 7]);
        assert_eq!(batch.loss_tokens, 6);
        let mask = batch.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Row 0, query 4 (first token of b) must not see key 3 (last token of a).
        assert_eq!(mask[4 * 7 + 3], f32::NEG_INFINITY);
        assert_eq!(mask[4 * 7 + 4], 0.0);
        assert_eq!(mask[3 * 7 + 0], 0.0);
    }
}
