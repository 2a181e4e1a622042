//! Residual k-means (RQ): level l clusters what the levels before it left over. Then collision
//! resolution so that every CID names exactly one item.
//!
//! Collision resolution: items that share all codes share the first L-1 codes too, so we only re-assign
//! the last level, within each group of items with the same prefix: pairs (item, last-level code) are
//! taken in order of distance between the item's residual and the code's centroid, an item takes the
//! first code not yet used by its group. An item whose nearest code was free keeps it, so only items
//! that actually collided move, each to the nearest free code. Unlike LC-Rec's Sinkhorn-balanced
//! re-assignment this guarantees zero collisions in one pass (whenever a group is not larger than the
//! last codebook, which is checked) and leaves every non-colliding CID untouched; the price is a slightly
//! larger reconstruction error for the moved items, which `prepare.json` reports.

use std::collections::HashMap;

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::kmeans::{kmeans, sq_dist, KMeansConfig};

#[derive(Clone, Debug)]
pub struct RqConfig {
    /// Codebook size of each level; the number of entries is the number of levels.
    pub sizes: Vec<usize>,
    pub iterations: usize,
    pub seed: u64,
    /// k-means runs per level from different seeds; the one with the lowest error is kept. A single
    /// run's last level varied a lot with the seed on ml-100k (collisions 44 to 430, last-level error
    /// 0.254 to 0.303 over four seeds), and a run costs well under a second.
    pub restarts: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct RqStats {
    /// Items whose CID equalled that of an earlier item before resolution.
    pub collisions_before: usize,
    pub collisions_after: usize,
    /// Items whose last code was changed to resolve a collision.
    pub reassigned: usize,
    /// Fraction of each level's codes used by at least one item.
    pub utilisation: Vec<f64>,
    /// Mean squared reconstruction error (|x - x_hat|^2 averaged over items) after each level.
    pub recon_mse: Vec<f64>,
    pub iterations_run: Vec<usize>,
    pub empty_reseeded: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct RqResult {
    /// Per level: K_l x dim centroids.
    pub codebooks: Vec<Vec<f32>>,
    /// Per item: one code per level.
    pub codes: Vec<Vec<u16>>,
    pub stats: RqStats,
}

/// Picks a codebook size for a catalog: about 2*sqrt(n), rounded up to a power of two, in 16..=256.
pub fn auto_codebook_size(items: usize) -> usize {
    let k = (2.0 * (items as f64).sqrt()).ceil() as usize;
    k.next_power_of_two().clamp(16, 256)
}

fn count_collisions(codes: &[Vec<u16>]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(codes.len());
    codes.iter().filter(|c| !seen.insert(c.as_slice())).count()
}

/// Codebooks of every level, trained on `data` (n x dim), before any item is assigned.
pub struct Trained {
    pub codebooks: Vec<Vec<f32>>,
    pub iterations_run: Vec<usize>,
    pub empty_reseeded: Vec<usize>,
}

/// Trains the codebooks level by level: level l clusters what the levels before it left over.
pub fn train_codebooks(data: &[f32], dim: usize, cfg: &RqConfig) -> Result<Trained> {
    let levels = cfg.sizes.len();
    anyhow::ensure!(
        (1..=navigen::cid::MAX_LEVELS).contains(&levels),
        "1..={} levels",
        navigen::cid::MAX_LEVELS
    );
    anyhow::ensure!(
        cfg.sizes.iter().all(|&k| (1..=65536).contains(&k)),
        "codebook sizes must be in 1..=65536"
    );
    let mut residual = data.to_vec();
    let mut t = Trained {
        codebooks: Vec::with_capacity(levels),
        iterations_run: Vec::new(),
        empty_reseeded: Vec::new(),
    };
    for (l, &k) in cfg.sizes.iter().enumerate() {
        let mut best: Option<(f64, super::kmeans::KMeans)> = None;
        for r in 0..cfg.restarts.max(1) {
            // Run 0 keeps the historical seed, so `restarts: 1` reproduces earlier codebooks.
            let seed = cfg
                .seed
                .wrapping_add(l as u64)
                .wrapping_add(1_000_003 * r as u64);
            let km = kmeans(
                &residual,
                dim,
                &KMeansConfig {
                    k,
                    iterations: cfg.iterations,
                    seed,
                    ..Default::default()
                },
            )?;
            let sse: f64 = km.sq_errors.iter().map(|&e| e as f64).sum();
            if best.as_ref().is_none_or(|(b, _)| sse < *b) {
                best = Some((sse, km));
            }
        }
        let (_, km) = best.expect("at least one run");
        if l + 1 < levels {
            residual
                .par_chunks_exact_mut(dim)
                .zip(km.assignments.par_iter())
                .for_each(|(r, &a)| {
                    let c = &km.centroids[a as usize * dim..(a as usize + 1) * dim];
                    r.iter_mut().zip(c).for_each(|(r, c)| *r -= c);
                });
        }
        t.iterations_run.push(km.iterations_run);
        t.empty_reseeded.push(km.empty_reseeded);
        t.codebooks.push(km.centroids);
    }
    Ok(t)
}

/// Assigns every item its CID with the device's own quantiser ([`navigen::Codebooks`], so the trainer
/// and `register_item` agree bit for bit on the same file), then resolves collisions (module comment).
pub fn assign(
    data: &[f32],
    cb: &navigen::Codebooks,
    trained: &Trained,
) -> Result<(Vec<Vec<u16>>, RqStats)> {
    let dim = cb.dim();
    let levels = cb.levels();
    let k_last = cb.sizes()[levels - 1];
    let mut codes: Vec<Vec<u16>> = data
        .par_chunks_exact(dim)
        .map(|x| cb.quantize_ranked(x, 1))
        .collect::<navigen::Result<_>>()?;
    let mut stats = RqStats {
        collisions_before: count_collisions(&codes),
        collisions_after: 0,
        reassigned: 0,
        utilisation: Vec::new(),
        recon_mse: Vec::new(),
        iterations_run: trained.iterations_run.clone(),
        empty_reseeded: trained.empty_reseeded.clone(),
    };
    if stats.collisions_before > 0 {
        stats.reassigned = resolve_collisions(&mut codes, data, cb, k_last)?;
    }
    stats.collisions_after = count_collisions(&codes);
    let n = codes.len();
    let mut recon = vec![0f32; n * dim];
    let mut c = vec![0f32; dim];
    for l in 0..levels {
        let mut used = vec![false; cb.sizes()[l]];
        for (i, code) in codes.iter().enumerate() {
            used[code[l] as usize] = true;
            cb.centroid_into(l, code[l] as usize, &mut c);
            recon[i * dim..(i + 1) * dim]
                .iter_mut()
                .zip(&c)
                .for_each(|(r, c)| *r += c);
        }
        stats
            .utilisation
            .push(used.iter().filter(|&&u| u).count() as f64 / used.len() as f64);
        let err: f64 = data
            .par_chunks_exact(dim)
            .zip(recon.par_chunks_exact(dim))
            .map(|(x, r)| sq_dist(x, r) as f64)
            .sum();
        stats.recon_mse.push(err / n as f64);
    }
    Ok((codes, stats))
}

/// Trains codebooks and assigns CIDs with f32 codebooks held in memory (tests and benchmarks; `prepare`
/// assigns with the codebooks file it writes, whose element type may be f16).
pub fn train(data: &[f32], dim: usize, cfg: &RqConfig) -> Result<RqResult> {
    let trained = train_codebooks(data, dim, cfg)?;
    let bytes = navigen::format::codebooks::write_codebooks(
        &trained.codebooks,
        dim,
        navigen::format::codebooks::Dtype::F32,
        &serde_json::json!({}),
    )?;
    let cb = navigen::Codebooks::from_bytes(&bytes)?;
    let (codes, stats) = assign(data, &cb, &trained)?;
    Ok(RqResult {
        codebooks: trained.codebooks,
        codes,
        stats,
    })
}

/// Gives every item of a colliding prefix group a distinct last code (see the module comment).
fn resolve_collisions(
    codes: &mut [Vec<u16>],
    data: &[f32],
    cb: &navigen::Codebooks,
    k: usize,
) -> Result<usize> {
    let dim = cb.dim();
    let levels = codes[0].len();
    let mut groups: HashMap<Vec<u16>, Vec<usize>> = HashMap::new();
    for (i, c) in codes.iter().enumerate() {
        groups.entry(c[..levels - 1].to_vec()).or_default().push(i);
    }
    let mut groups: Vec<(Vec<u16>, Vec<usize>)> = groups.into_iter().collect();
    groups.sort();
    let mut moved = 0;
    for (prefix, members) in groups {
        let mut lasts: Vec<u16> = members.iter().map(|&i| codes[i][levels - 1]).collect();
        lasts.sort_unstable();
        if lasts.windows(2).all(|w| w[0] != w[1]) {
            continue;
        }
        if members.len() > k {
            bail!(
                "{} items share the CID prefix {prefix:?} but the last codebook has only {k} codes: \
                 raise the codebook size or add a level",
                members.len()
            );
        }
        let mut pairs: Vec<(f32, usize, u16)> = Vec::with_capacity(members.len() * k);
        for &i in &members {
            let (_, dists) = cb.last_level_distances(&data[i * dim..(i + 1) * dim])?;
            pairs.extend(dists.iter().enumerate().map(|(c, &d)| (d, i, c as u16)));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut taken = vec![false; k];
        let mut done: HashMap<usize, u16> = HashMap::new();
        for (_, i, c) in pairs {
            if done.len() == members.len() {
                break;
            }
            if taken[c as usize] || done.contains_key(&i) {
                continue;
            }
            taken[c as usize] = true;
            done.insert(i, c);
        }
        for (i, c) in done {
            if codes[i][levels - 1] != c {
                codes[i][levels - 1] = c;
                moved += 1;
            }
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn resolves_duplicates_and_error_falls() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let dim = 8;
        let mut data: Vec<f32> = (0..200 * dim).map(|_| rng.gen::<f32>() - 0.5).collect();
        // Ten exact duplicates must still get ten distinct CIDs.
        let dup: Vec<f32> = data[..dim].to_vec();
        for _ in 0..10 {
            data.extend_from_slice(&dup);
        }
        let r = train(
            &data,
            dim,
            &RqConfig {
                sizes: vec![8, 8, 16],
                iterations: 10,
                seed: 1,
                restarts: 2,
            },
        )
        .unwrap();
        assert!(r.stats.collisions_before >= 10);
        assert_eq!(r.stats.collisions_after, 0);
        assert!(
            r.stats.recon_mse.windows(2).all(|w| w[1] < w[0]),
            "{:?}",
            r.stats.recon_mse
        );
        assert_eq!(auto_codebook_size(1682), 128);
        assert_eq!(auto_codebook_size(10), 16);
    }

    #[test]
    fn too_many_duplicates_is_an_error() {
        let data = vec![0.5f32; 4 * 20];
        assert!(train(
            &data,
            4,
            &RqConfig {
                sizes: vec![2, 2],
                iterations: 3,
                seed: 0,
                restarts: 1,
            }
        )
        .is_err());
    }
}
