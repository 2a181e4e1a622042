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

/// Tensors of a batch of rows, padded to the longest row.
pub struct Batch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub mask: Tensor,
    /// Flat (row * T + t) indices of positions that carry a target.
    pub target_index: Tensor,
    pub targets: Tensor,
    pub tokens: usize,
    pub loss_tokens: usize,
}

pub fn make_batch(rows: &[Row], pad: u32, device: &Device, dtype: DType) -> Result<Batch> {
    anyhow::ensure!(!rows.is_empty(), "empty batch");
    let t = rows.iter().map(Row::len).max().unwrap_or(0);
    let b = rows.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut pos = Vec::with_capacity(b * t);
    let mut segs = Vec::with_capacity(b);
    let mut tidx = Vec::new();
    let mut tgt = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let mut s = row.segments.clone();
        for (i, target) in row.targets.iter().enumerate() {
            if let Some(x) = target {
                tidx.push((r * t + i) as u32);
                tgt.push(*x);
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
    anyhow::ensure!(!tgt.is_empty(), "batch has no answer tokens");
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        positions: Tensor::from_vec(pos, (b, t), device)?,
        mask: packed_mask(&segs, device, dtype)?,
        loss_tokens: tgt.len(),
        target_index: Tensor::from_vec(tidx, tgt.len(), device)?,
        targets: Tensor::from_vec(
            tgt,
            rows.iter().map(Row::loss_tokens).sum::<usize>(),
            device,
        )?,
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
        let batch = make_batch(&rows, 0, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(batch.ids.dims(), &[2, 7]);
        assert_eq!(batch.loss_tokens, 6);
        let mask = batch.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Row 0, query 4 (first token of b) must not see key 3 (last token of a).
        assert_eq!(mask[4 * 7 + 3], f32::NEG_INFINITY);
        assert_eq!(mask[4 * 7 + 4], 0.0);
        assert_eq!(mask[3 * 7 + 0], 0.0);
    }
}
