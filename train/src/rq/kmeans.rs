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
        KMeansConfig {
            k: 256,
            iterations: 20,
            seed: 42,
            block: 8192,
        }
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

/// Squared Euclidean distance, written with independent accumulators so it vectorises; on x86-64
/// with AVX2+FMA (checked at run time) a wider build of the same loop is used.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features this function was compiled for (checked above).
            return unsafe { sq_dist_avx2(a, b) };
        }
    }
    sq_dist_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sq_dist_avx2(a: &[f32], b: &[f32]) -> f32 {
    sq_dist_portable(a, b)
}

#[inline(always)]
fn sq_dist_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
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
pub fn assign(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
    block: usize,
) -> Result<(Vec<u32>, Vec<f32>)> {
    let n = data.len() / dim;
    let x = Tensor::from_slice(data, (n, dim), &Device::Cpu)?;
    let x_norm: Vec<f32> = data
        .par_chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    assign_prepared(&x, &x_norm, dim, centroids, block)
}

/// [`assign`] with the rows already in a tensor and their squared norms computed (done once per k-means).
fn assign_prepared(
    x: &Tensor,
    x_norm: &[f32],
    dim: usize,
    centroids: &[f32],
    block: usize,
) -> Result<(Vec<u32>, Vec<f32>)> {
    let n = x_norm.len();
    let k = centroids.len() / dim;
    let ct = Tensor::from_slice(centroids, (k, dim), &Device::Cpu)?
        .t()?
        .contiguous()?;
    let c_norm: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let mut idx = vec![0u32; n];
    let mut dist = vec![0f32; n];
    let block = block.max(1);
    for start in (0..n).step_by(block) {
        let rows = (n - start).min(block);
        let xb = if rows == n {
            x.clone()
        } else {
            x.narrow(0, start, rows)?
        };
        let dots = xb.matmul(&ct)?;
        let dots = dots.flatten_all()?;
        let dots = dots.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*dots.0 else {
            anyhow::bail!("k-means runs on the CPU")
        };
        let dots = &cpu.as_slice::<f32>()?[dots.1.start_offset()..];
        idx[start..start + rows]
            .par_iter_mut()
            .zip(dist[start..start + rows].par_iter_mut())
            .zip(dots.par_chunks_exact(k))
            .enumerate()
            .for_each(|(r, ((best_out, dist_out), row))| {
                let (mut best, mut bd) = (0usize, f32::INFINITY);
                for (j, (&d, &cn)) in row.iter().zip(&c_norm).enumerate() {
                    let v = cn - 2.0 * d;
                    if v < bd {
                        bd = v;
                        best = j;
                    }
                }
                *best_out = best as u32;
                *dist_out = (x_norm[start + r] + bd).max(0.0);
            });
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
    let mut d2: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| sq_dist(row(i), row(first)))
        .collect();
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
        d2.par_iter_mut()
            .enumerate()
            .for_each(|(i, d)| *d = d.min(sq_dist(row(i), &c)));
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// Most entries of the n x k score matrix kept between iterations (256 MiB of f32).
const MAX_SCORE_ENTRIES: usize = 1 << 26;

/// The distance step, exact but incremental: the n x k matrix of `|c_j|^2 - 2 x_i.c_j` is kept, and after
/// an update only the columns of centroids that moved are recomputed (one smaller matrix product).
/// Late Lloyd iterations move few points, so they cost a fraction of a full pass.
struct Scores<'a> {
    x: &'a Tensor,
    x_norm: &'a [f32],
    k: usize,
    dim: usize,
    /// `None` when n x k is too large to keep: then every pass recomputes in blocks.
    s: Option<Vec<f32>>,
    block: usize,
}

impl<'a> Scores<'a> {
    fn new(x: &'a Tensor, x_norm: &'a [f32], k: usize, dim: usize, block: usize) -> Self {
        let keep = x_norm.len().saturating_mul(k) <= MAX_SCORE_ENTRIES;
        Scores {
            x,
            x_norm,
            k,
            dim,
            s: keep.then(|| vec![0f32; x_norm.len() * k]),
            block,
        }
    }

    /// Recomputes the given columns (all when `cols` is `None`), then assigns every row.
    fn assign(
        &mut self,
        centroids: &[f32],
        cols: Option<&[usize]>,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let (k, dim) = (self.k, self.dim);
        let Some(s) = self.s.as_mut() else {
            return assign_prepared(self.x, self.x_norm, dim, centroids, self.block);
        };
        let all: Vec<usize>;
        let cols = match cols {
            Some(c) => c,
            None => {
                all = (0..k).collect();
                &all
            }
        };
        if !cols.is_empty() {
            let m = cols.len();
            let sub: Vec<f32> = cols
                .iter()
                .flat_map(|&j| centroids[j * dim..(j + 1) * dim].iter().copied())
                .collect();
            let cn: Vec<f32> = sub
                .chunks_exact(dim)
                .map(|r| r.iter().map(|v| v * v).sum())
                .collect();
            let ct = Tensor::from_vec(sub, (m, dim), &Device::Cpu)?
                .t()?
                .contiguous()?;
            let dots = self.x.matmul(&ct)?;
            let guard = dots.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*guard.0 else {
                anyhow::bail!("k-means runs on the CPU")
            };
            let dots = &cpu.as_slice::<f32>()?[guard.1.start_offset()..];
            s.par_chunks_exact_mut(k)
                .zip(dots.par_chunks_exact(m))
                .for_each(|(row, d)| {
                    for (t, &j) in cols.iter().enumerate() {
                        row[j] = cn[t] - 2.0 * d[t];
                    }
                });
        }
        let x_norm = self.x_norm;
        Ok(s.par_chunks_exact(k)
            .enumerate()
            .map(|(i, row)| {
                let (mut best, mut bd) = (0usize, f32::INFINITY);
                for (j, &v) in row.iter().enumerate() {
                    if v < bd {
                        bd = v;
                        best = j;
                    }
                }
                (best as u32, (x_norm[i] + bd).max(0.0))
            })
            .unzip())
    }
}

/// Runs k-means. With fewer distinct rows than `k`, some centroids duplicate rows (still valid codes).
pub fn kmeans(data: &[f32], dim: usize, cfg: &KMeansConfig) -> Result<KMeans> {
    let n = data.len() / dim;
    anyhow::ensure!(
        n > 0 && data.len() == n * dim,
        "k-means needs a non-empty n x {dim} matrix"
    );
    anyhow::ensure!(cfg.k >= 1, "k must be at least 1");
    let k = cfg.k;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut centroids = seed_plus_plus(data, dim, k, &mut rng);
    let x = Tensor::from_slice(data, (n, dim), &Device::Cpu)?;
    let x_norm: Vec<f32> = data
        .par_chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let mut scores = Scores::new(&x, &x_norm, k, dim, cfg.block);
    let (mut assignments, mut sq_errors) = scores.assign(&centroids, None)?;
    // Cluster sums in f64, updated by the rows that move.
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (i, &a) in assignments.iter().enumerate() {
        counts[a as usize] += 1;
        sums[a as usize * dim..(a as usize + 1) * dim]
            .iter_mut()
            .zip(&data[i * dim..(i + 1) * dim])
            .for_each(|(s, &v)| *s += v as f64);
    }
    let mut dirty = vec![true; k];
    let mut iterations_run = 0;
    let mut empty_reseeded = 0;
    for _ in 0..cfg.iterations {
        iterations_run += 1;
        // Update step: each changed cluster moves to the mean of its members.
        for j in (0..k).filter(|&j| dirty[j] && counts[j] > 0) {
            for (c, s) in centroids[j * dim..(j + 1) * dim]
                .iter_mut()
                .zip(&sums[j * dim..(j + 1) * dim])
            {
                *c = (*s / counts[j] as f64) as f32;
            }
        }
        // Empty clusters take the rows farthest from their centroids (each row used once).
        let empties: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
        if !empties.is_empty() {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| sq_errors[b].total_cmp(&sq_errors[a]).then(a.cmp(&b)));
            let far = order
                .into_iter()
                .filter(|&i| counts[assignments[i] as usize] > 1)
                .take(empties.len());
            for (&j, i) in empties.iter().zip(far) {
                centroids[j * dim..(j + 1) * dim].copy_from_slice(&data[i * dim..(i + 1) * dim]);
                dirty[j] = true;
                empty_reseeded += 1;
            }
        }
        let cols: Vec<usize> = (0..k).filter(|&j| dirty[j]).collect();
        if cols.is_empty() {
            break;
        }
        let (a, d) = scores.assign(&centroids, Some(&cols))?;
        dirty.iter_mut().for_each(|x| *x = false);
        let mut moved = 0;
        for (i, (&new, &old)) in a.iter().zip(&assignments).enumerate() {
            if new != old {
                moved += 1;
                let row = &data[i * dim..(i + 1) * dim];
                counts[old as usize] -= 1;
                counts[new as usize] += 1;
                sums[old as usize * dim..(old as usize + 1) * dim]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s -= v as f64);
                sums[new as usize * dim..(new as usize + 1) * dim]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s += v as f64);
                dirty[old as usize] = true;
                dirty[new as usize] = true;
            }
        }
        assignments = a;
        sq_errors = d;
        if moved == 0 && empties.is_empty() {
            break;
        }
    }
    Ok(KMeans {
        centroids,
        assignments,
        sq_errors,
        iterations_run,
        empty_reseeded,
    })
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
        let cfg = KMeansConfig {
            k: 3,
            iterations: 20,
            seed: 7,
            block: 64,
        };
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
        let r = kmeans(
            &data,
            2,
            &KMeansConfig {
                k: 4,
                iterations: 5,
                seed: 0,
                block: 2,
            },
        )
        .unwrap();
        assert_eq!(r.centroids.len(), 8);
        assert!(r.sq_errors.iter().all(|&e| e < 1e-6));
    }
}
