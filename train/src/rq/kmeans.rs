//! k-means on f32 rows: k-means++ seeding, Lloyd iterations whose distance step is one matrix product
//! (the same trick as faiss: |x-c|^2 = |x|^2 - 2 x.c + |c|^2), re-seeding of empty clusters.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

#[derive(Clone, Debug)]
pub struct KMeansConfig {
    pub k: usize,
    pub iterations: usize,
    pub seed: u64,
    /// Rows per distance block (bounds memory: block x k floats).
    pub block: usize,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig { k: 256, iterations: 20, seed: 42, block: 8192 }
    }
}

#[derive(Clone, Debug)]
pub struct KMeans {
    /// k x dim, row-major.
    pub centroids: Vec<f32>,
    pub assignments: Vec<u32>,
    /// Squared distance of each row to its centroid.
    pub sq_errors: Vec<f32>,
    pub iterations_run: usize,
    pub empty_reseeded: usize,
}

/// Squared Euclidean distance, written with independent accumulators so it vectorises.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

/// Nearest centroid of every row: (index, squared distance). Uses a matrix product per block.
pub fn assign(data: &[f32], dim: usize, centroids: &[f32], block: usize) -> Result<(Vec<u32>, Vec<f32>)> {
    let n = data.len() / dim;
    let k = centroids.len() / dim;
    let c = Tensor::from_slice(centroids, (k, dim), &Device::Cpu)?;
    let ct = c.t()?.contiguous()?;
    let c_norm: Vec<f32> = centroids.chunks_exact(dim).map(|r| r.iter().map(|v| v * v).sum()).collect();
    let mut idx = Vec::with_capacity(n);
    let mut dist = Vec::with_capacity(n);
    for start in (0..n).step_by(block.max(1)) {
        let rows = (n - start).min(block.max(1));
        let x = Tensor::from_slice(&data[start * dim..(start + rows) * dim], (rows, dim), &Device::Cpu)?;
        let dots: Vec<f32> = x.matmul(&ct)?.flatten_all()?.to_vec1()?;
        let part: Vec<(u32, f32)> = dots
            .par_chunks_exact(k)
            .enumerate()
            .map(|(r, row)| {
                let x = &data[(start + r) * dim..(start + r + 1) * dim];
                let xn: f32 = x.iter().map(|v| v * v).sum();
                let (mut best, mut bd) = (0usize, f32::INFINITY);
                for (j, &d) in row.iter().enumerate() {
                    let v = c_norm[j] - 2.0 * d;
                    if v < bd {
                        bd = v;
                        best = j;
                    }
                }
                (best as u32, (xn + bd).max(0.0))
            })
            .collect();
        for (i, d) in part {
            idx.push(i);
            dist.push(d);
        }
    }
    Ok((idx, dist))
}

/// k-means++ seeding: each next centroid drawn with probability proportional to D(x)^2.
fn seed_plus_plus(data: &[f32], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = data.len() / dim;
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.gen_range(0..n);
    centroids.extend_from_slice(row(first));
    let mut d2: Vec<f32> = (0..n).into_par_iter().map(|i| sq_dist(row(i), row(first))).collect();
    for _ in 1..k {
        let total: f64 = d2.iter().map(|&v| v as f64).sum();
        let pick = if total <= 0.0 {
            rng.gen_range(0..n)
        } else {
            let mut target = rng.gen::<f64>() * total;
            let mut pick = n - 1;
            for (i, &v) in d2.iter().enumerate() {
                target -= v as f64;
                if target <= 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        };
        let c = row(pick).to_vec();
        d2.par_iter_mut().enumerate().for_each(|(i, d)| *d = d.min(sq_dist(row(i), &c)));
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// Runs k-means. With fewer distinct rows than `k`, some centroids duplicate rows (still valid codes).
pub fn kmeans(data: &[f32], dim: usize, cfg: &KMeansConfig) -> Result<KMeans> {
    let n = data.len() / dim;
    anyhow::ensure!(n > 0 && data.len() == n * dim, "k-means needs a non-empty n x {dim} matrix");
    anyhow::ensure!(cfg.k >= 1, "k must be at least 1");
    let k = cfg.k;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut centroids = seed_plus_plus(data, dim, k, &mut rng);
    let (mut assignments, mut sq_errors) = assign(data, dim, &centroids, cfg.block)?;
    let mut iterations_run = 0;
    let mut empty_reseeded = 0;
    for _ in 0..cfg.iterations {
        iterations_run += 1;
        // Update step: mean of the members of each cluster.
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &a) in assignments.iter().enumerate() {
            counts[a as usize] += 1;
            let s = &mut sums[a as usize * dim..(a as usize + 1) * dim];
            for (s, &v) in s.iter_mut().zip(&data[i * dim..(i + 1) * dim]) {
                *s += v as f64;
            }
        }
        // Empty clusters take the rows farthest from their centroids (each row used once).
        let empties: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
        let mut far: Vec<usize> = Vec::new();
        if !empties.is_empty() {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| sq_errors[b].total_cmp(&sq_errors[a]).then(a.cmp(&b)));
            far = order.into_iter().filter(|&i| counts[assignments[i] as usize] > 1).take(empties.len()).collect();
        }
        for j in 0..k {
            if counts[j] > 0 {
                for (c, s) in centroids[j * dim..(j + 1) * dim].iter_mut().zip(&sums[j * dim..(j + 1) * dim]) {
                    *c = (*s / counts[j] as f64) as f32;
                }
            }
        }
        for (e, &j) in empties.iter().enumerate() {
            if let Some(&i) = far.get(e) {
                centroids[j * dim..(j + 1) * dim].copy_from_slice(&data[i * dim..(i + 1) * dim]);
                empty_reseeded += 1;
            }
        }
        let (a, d) = assign(data, dim, &centroids, cfg.block)?;
        let changed = a != assignments;
        assignments = a;
        sq_errors = d;
        if !changed && empties.is_empty() {
            break;
        }
    }
    Ok(KMeans { centroids, assignments, sq_errors, iterations_run, empty_reseeded })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_blobs_and_is_deterministic() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let centers = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0]];
        let mut data = Vec::new();
        for i in 0..300 {
            let c = centers[i % 3];
            data.push(c[0] + rng.gen::<f32>() - 0.5);
            data.push(c[1] + rng.gen::<f32>() - 0.5);
        }
        let cfg = KMeansConfig { k: 3, iterations: 20, seed: 7, block: 64 };
        let a = kmeans(&data, 2, &cfg).unwrap();
        let b = kmeans(&data, 2, &cfg).unwrap();
        assert_eq!(a.assignments, b.assignments);
        assert_eq!(a.centroids, b.centroids);
        // Same blob, same cluster; different blobs, different clusters.
        for i in 0..300 {
            assert_eq!(a.assignments[i], a.assignments[i % 3]);
        }
        assert_ne!(a.assignments[0], a.assignments[1]);
        assert_ne!(a.assignments[1], a.assignments[2]);
        let mse: f32 = a.sq_errors.iter().sum::<f32>() / 300.0;
        assert!(mse < 0.2, "{mse}");
    }

    #[test]
    fn more_clusters_than_distinct_rows() {
        let data = vec![1.0f32, 1.0, 1.0, 1.0, 2.0, 2.0];
        let r = kmeans(&data, 2, &KMeansConfig { k: 4, iterations: 5, seed: 0, block: 2 }).unwrap();
        assert_eq!(r.centroids.len(), 8);
        assert!(r.sq_errors.iter().all(|&e| e < 1e-6));
    }
}
