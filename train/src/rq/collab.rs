//! Collaborative item vectors: who engages with what together, learned from the training sequences
//! only (validation and test targets never count), and fused with the text embedding before residual
//! k-means so that CID prefixes group items that are consumed together (docs/method.md, section 2).
//!
//! The vectors are a truncated eigendecomposition of the positive PMI matrix of co-occurrence within a
//! window of each user's sequence: the factorisation skip-gram/item2vec performs implicitly (Levy and
//! Goldberg, 2014), computed exactly and deterministically. A new item has no behaviour yet, so its
//! collaborative half is predicted from its text with a ridge map fitted on the catalog; the map
//! travels in the codebooks file and the device applies it ([`navigen::Codebooks::fuse`]).

use std::collections::HashMap;

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub use navigen::format::codebooks::unit;

#[derive(Clone, Debug)]
pub struct CollabConfig {
    /// Dimensions of the collaborative vector.
    pub dim: usize,
    /// Items up to this many positions apart in a sequence co-occur.
    pub window: usize,
    /// Subspace iterations (each one sparse multiply and one orthonormalisation).
    pub iterations: usize,
    /// Ridge penalty of the text -> collaborative map.
    pub ridge: f64,
    pub seed: u64,
}

impl Default for CollabConfig {
    fn default() -> Self {
        CollabConfig {
            dim: 32,
            window: 5,
            iterations: 30,
            ridge: 1.0,
            seed: 42,
        }
    }
}

/// Unit collaborative vectors, row-major `items x dim`; `observed[i]` is false for an item that never
/// occurs in the training sequences (its row is zero).
pub struct CollabVectors {
    pub dim: usize,
    pub vectors: Vec<f32>,
    pub observed: Vec<bool>,
}

/// Positive PMI of windowed co-occurrence, as sparse rows (CSR), with context-distribution smoothing
/// (counts raised to 0.75, as word2vec's negative sampling does).
struct Sparse {
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

fn ppmi(seqs: &[&[u32]], n: usize, window: usize) -> Sparse {
    let mut rows: Vec<HashMap<u32, f64>> = vec![HashMap::new(); n];
    for s in seqs {
        for (p, &a) in s.iter().enumerate() {
            for &b in s.iter().skip(p + 1).take(window) {
                if a != b {
                    *rows[a as usize].entry(b).or_default() += 1.0;
                    *rows[b as usize].entry(a).or_default() += 1.0;
                }
            }
        }
    }
    let sums: Vec<f64> = rows.iter().map(|r| r.values().sum()).collect();
    let total: f64 = sums.iter().sum();
    let ctx: Vec<f64> = sums.iter().map(|s| s.powf(0.75)).collect();
    let ctx_total: f64 = ctx.iter().sum();
    let mut out = Sparse {
        indptr: vec![0],
        indices: Vec::new(),
        values: Vec::new(),
    };
    for (i, row) in rows.iter().enumerate() {
        let mut cols: Vec<(&u32, &f64)> = row.iter().collect();
        cols.sort_unstable_by_key(|(j, _)| **j);
        for (&j, &c) in cols {
            // PMI = log( P(i,j) / (P(i) P_0.75(j)) )
            let pmi = (c * total / (sums[i] * ctx[j as usize] / ctx_total * total)).ln();
            if pmi > 0.0 {
                out.indices.push(j);
                out.values.push(pmi as f32);
            }
        }
        out.indptr.push(out.indices.len());
    }
    out
}

impl Sparse {
    /// `self (n x n) @ q`, with `q` column-major (`d` columns of length n).
    fn mul(&self, q: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = self.indptr.len() - 1;
        q.par_iter()
            .map(|col| {
                (0..n)
                    .map(|i| {
                        (self.indptr[i]..self.indptr[i + 1])
                            .map(|k| self.values[k] as f64 * col[self.indices[k] as usize])
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }
}

/// Modified Gram-Schmidt on columns; a column that vanishes is replaced by zeros.
fn orthonormalise(cols: &mut [Vec<f64>]) {
    for a in 0..cols.len() {
        for b in 0..a {
            let (done, rest) = cols.split_at_mut(a);
            let dot: f64 = done[b].iter().zip(&rest[0]).map(|(x, y)| x * y).sum();
            rest[0]
                .iter_mut()
                .zip(&done[b])
                .for_each(|(y, x)| *y -= dot * x);
        }
        let norm = cols[a].iter().map(|x| x * x).sum::<f64>().sqrt();
        let inv = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        cols[a].iter_mut().for_each(|x| *x *= inv);
    }
}

/// Collaborative vectors of `n` items from the training sequences.
pub fn item_vectors(seqs: &[&[u32]], n: usize, cfg: &CollabConfig) -> Result<CollabVectors> {
    ensure!(
        cfg.dim >= 1 && cfg.window >= 1,
        "collaborative dim and window must be >= 1"
    );
    let m = ppmi(seqs, n, cfg.window);
    let d = cfg.dim.min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut q: Vec<Vec<f64>> = (0..d)
        .map(|_| (0..n).map(|_| rng.gen::<f64>() - 0.5).collect())
        .collect();
    orthonormalise(&mut q);
    for _ in 0..cfg.iterations {
        q = m.mul(&q);
        orthonormalise(&mut q);
    }
    // Rows of M Q = U S (U^T Q): the eigenspace of the largest |eigenvalues| (what a truncated SVD
    // keeps) weighted by them, up to a rotation, which k-means (Euclidean) does not see.
    let e = m.mul(&q);
    let mut vectors = vec![0f32; n * cfg.dim];
    let mut observed = vec![false; n];
    for i in 0..n {
        let norm = e.iter().map(|c| c[i] * c[i]).sum::<f64>().sqrt();
        if norm > 1e-9 {
            observed[i] = true;
            for (c, col) in e.iter().enumerate() {
                vectors[i * cfg.dim + c] = (col[i] / norm) as f32;
            }
        }
    }
    Ok(CollabVectors {
        dim: cfg.dim,
        vectors,
        observed,
    })
}

/// Ridge regression from (unit) text vectors to collaborative vectors over the observed items:
/// `W = argmin sum |c_i - W t_i|^2 + ridge |W|^2`, returned row-major `collab_dim x text_dim`.
pub fn text_map(
    text: &[f32],
    text_dim: usize,
    collab: &CollabVectors,
    ridge: f64,
) -> Result<Vec<f32>> {
    let (dt, dc) = (text_dim, collab.dim);
    let n = text.len() / dt;
    ensure!(
        n == collab.observed.len(),
        "text and collaborative vectors differ in item count"
    );
    // A = T^T T + ridge I (dt x dt), B = T^T C (dt x dc), over observed items.
    let mut a = vec![0f64; dt * dt];
    let mut b = vec![0f64; dt * dc];
    for i in (0..n).filter(|&i| collab.observed[i]) {
        let t = unit(&text[i * dt..(i + 1) * dt]);
        let c = &collab.vectors[i * dc..(i + 1) * dc];
        for r in 0..dt {
            let tr = t[r] as f64;
            if tr == 0.0 {
                continue;
            }
            for s in 0..dt {
                a[r * dt + s] += tr * t[s] as f64;
            }
            for s in 0..dc {
                b[r * dc + s] += tr * c[s] as f64;
            }
        }
    }
    for r in 0..dt {
        a[r * dt + r] += ridge;
    }
    let l = cholesky(&a, dt)?;
    let mut w = vec![0f32; dc * dt];
    for s in 0..dc {
        let col: Vec<f64> = (0..dt).map(|r| b[r * dc + s]).collect();
        let x = cholesky_solve(&l, dt, &col);
        for r in 0..dt {
            w[s * dt + r] = x[r] as f32;
        }
    }
    Ok(w)
}

fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                ensure!(d > 0.0, "ridge system is not positive definite");
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    Ok(l)
}

fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0f64; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_watched_together_are_close() {
        // Two groups that never mix: {0,1,2} and {3,4,5}; item 6 never occurs.
        let a: Vec<Vec<u32>> = (0..40)
            .map(|u| {
                if u % 2 == 0 {
                    vec![0, 1, 2, 0, 2, 1]
                } else {
                    vec![3, 4, 5, 4, 3, 5]
                }
            })
            .collect();
        let seqs: Vec<&[u32]> = a.iter().map(Vec::as_slice).collect();
        // Each group's PPMI block has one eigenvalue 2 (the group) and two -1: 2 dimensions hold both.
        let cfg = CollabConfig {
            dim: 2,
            window: 2,
            ..Default::default()
        };
        let c = item_vectors(&seqs, 7, &cfg).unwrap();
        assert_eq!(c.observed, vec![true, true, true, true, true, true, false]);
        let v = |i: usize| &c.vectors[i * 2..(i + 1) * 2];
        let cos = |i, j| v(i).iter().zip(v(j)).map(|(a, b)| a * b).sum::<f32>();
        assert!(
            cos(0, 1) > 0.9 && cos(3, 5) > 0.9,
            "{} {}",
            cos(0, 1),
            cos(3, 5)
        );
        assert!(cos(0, 4).abs() < 0.1, "{}", cos(0, 4));
    }

    #[test]
    fn ridge_map_recovers_a_linear_relation() {
        // collab = first two text coordinates: the map must send text to it closely.
        let dt = 3;
        let text: Vec<f32> = (0..50)
            .flat_map(|i| {
                let a = (i as f32 * 0.37).sin();
                let b = (i as f32 * 0.91).cos();
                unit(&[a, b, 0.5])
            })
            .collect();
        let vectors: Vec<f32> = text.chunks(dt).flat_map(|t| [t[0], t[1]]).collect();
        let collab = CollabVectors {
            dim: 2,
            vectors,
            observed: vec![true; 50],
        };
        let w = text_map(&text, dt, &collab, 1e-6).unwrap();
        for (t, c) in text.chunks(dt).zip(collab.vectors.chunks(2)) {
            for s in 0..2 {
                let p: f32 = (0..dt).map(|r| w[s * dt + r] * t[r]).sum();
                assert!((p - c[s]).abs() < 1e-3, "{p} vs {}", c[s]);
            }
        }
    }
}
