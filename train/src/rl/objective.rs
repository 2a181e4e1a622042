//! The GRPO objective (docs/method.md section 5): group-normalised advantages, the clipped importance
//! ratio, and the k3 estimate of the KL divergence to the frozen reference, with a choice of how the
//! per-token terms are averaged.

use anyhow::Result;
use candle_core::{DType, Tensor};

/// How per-token terms become one loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Norm {
    /// Mean over each completion's tokens, then over completions (GRPO).
    Sequence,
    /// Sum over every token of the batch / number of tokens (DAPO).
    Token,
    /// Sum over every token / (completions x longest completion): no length bias (Dr. GRPO).
    Constant,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Objective {
    /// Lower clip: the ratio is kept above 1 - eps_low.
    pub eps_low: f64,
    /// Upper clip: the ratio is kept below 1 + eps_high (DAPO raises it to keep exploring).
    pub eps_high: f64,
    /// Weight of the KL term (0: no reference model is needed).
    pub beta: f64,
    pub norm: Norm,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            eps_low: 0.2,
            eps_high: 0.2,
            beta: 0.01,
            norm: Norm::Sequence,
        }
    }
}

/// (r - mean) / (std + 1e-4) within each group of `g` consecutive rewards (population std), and each
/// group's std.
pub fn group_advantages(rewards: &[f32], g: usize) -> (Vec<f32>, Vec<f32>) {
    let mut adv = Vec::with_capacity(rewards.len());
    let mut stds = Vec::new();
    for grp in rewards.chunks(g.max(1)) {
        let n = grp.len() as f32;
        let mean = grp.iter().sum::<f32>() / n;
        let std = (grp.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / n).sqrt();
        stds.push(std);
        adv.extend(grp.iter().map(|r| (r - mean) / (std + 1e-4)));
    }
    (adv, stds)
}

/// The loss and what the watch logs about it.
pub struct LossParts {
    pub loss: Tensor,
    /// Mean k3 KL to the reference over the scored tokens (0 without a reference).
    pub kl: f64,
    /// Share of scored tokens whose clipped branch is the one taken (the update is cut there).
    pub clip_frac: f64,
}

/// The GRPO loss over completions (rows) of scored tokens (columns): `logp` the policy's
/// log-probabilities of the sampled tokens (with gradient), `old` the behaviour policy's, `reference`
/// the frozen reference's (needed when beta > 0), `adv` one advantage per row, `mask` 1 for scored
/// tokens and 0 for padding. All (N, T) f32 but `adv` (N,).
pub fn grpo_loss(
    logp: &Tensor,
    old: &Tensor,
    reference: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    o: &Objective,
) -> Result<LossParts> {
    let (n, t) = logp.dims2()?;
    let old = old.detach();
    let adv = adv.reshape((n, 1))?.detach();
    let ratio = (logp - &old)?.exp()?;
    let unclipped = ratio.broadcast_mul(&adv)?;
    let clipped = ratio
        .clamp(1.0 - o.eps_low, 1.0 + o.eps_high)?
        .broadcast_mul(&adv)?;
    let surrogate = unclipped.minimum(&clipped)?;
    let (per_token, kl) = match reference {
        Some(r) if o.beta > 0.0 => {
            // k3 = exp(ref - logp) - (ref - logp) - 1: unbiased, never negative.
            let d = (r.detach() - logp)?;
            let k3 = ((d.exp()? - &d)? - 1.0)?;
            let kl = (k3.detach() * mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            ((surrogate - (k3 * o.beta)?)?, kl)
        }
        _ => (surrogate, 0.0),
    };
    let per_token = (per_token.neg()? * mask)?;
    let tokens = mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let loss = match o.norm {
        Norm::Sequence => {
            let lens = mask.sum(1)?.clamp(1.0, f64::INFINITY)?;
            (per_token.sum(1)? / lens)?.mean_all()?
        }
        Norm::Token => (per_token.sum_all()? / tokens)?,
        Norm::Constant => (per_token.sum_all()? / (n * t).max(1) as f64)?,
    };
    // Where the clipped branch is taken (it is strictly smaller): the update is cut there.
    let cut = unclipped
        .detach()
        .gt(&clipped.detach())?
        .to_dtype(DType::F32)?;
    let clip_frac = (cut * mask)?.sum_all()?.to_scalar::<f32>()? as f64 / tokens;
    Ok(LossParts {
        loss,
        kl: kl / tokens,
        clip_frac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], n: usize, m: usize) -> Tensor {
        Tensor::from_slice(v, (n, m), &Device::Cpu).unwrap()
    }

    #[test]
    fn advantages_are_normalised_within_groups() {
        let (a, s) = group_advantages(&[1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5], 4);
        assert!((s[0] - 0.5).abs() < 1e-6 && s[1] == 0.0);
        for (x, y) in a[..4].iter().zip([1.0, -1.0, 1.0, -1.0]) {
            assert!((x - y).abs() < 1e-3, "{a:?}");
        }
        // A group where every completion earned the same teaches nothing.
        assert!(a[4..].iter().all(|&x| x == 0.0));
    }

    /// On-policy (ratio 1), no KL: the gradient of each scored token's log-probability is -A / (N T_i)
    /// for the sequence norm, and padding gets none.
    #[test]
    fn on_policy_gradient_is_the_advantage() {
        let lp = Var::from_tensor(&t(&[-1.0, -2.0, -0.5, -0.7, -0.1, -3.0], 2, 3)).unwrap();
        let mask = t(&[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], 2, 3);
        let adv = Tensor::new(&[2.0f32, -1.0], &Device::Cpu).unwrap();
        let o = Objective {
            beta: 0.0,
            ..Default::default()
        };
        let p = grpo_loss(lp.as_tensor(), lp.as_tensor(), None, &adv, &mask, &o).unwrap();
        // loss = -(mean over row 0 of A0 + mean over row 1's 2 tokens of A1) / 2 = -(2 - 1) / 2.
        assert!((p.loss.to_scalar::<f32>().unwrap() + 0.5).abs() < 1e-6);
        assert_eq!(p.clip_frac, 0.0);
        let g = p.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want = [[-2.0 / 6.0; 3], [1.0 / 4.0, 1.0 / 4.0, 0.0]];
        for (r, w) in g.iter().zip(want) {
            for (x, y) in r.iter().zip(w) {
                assert!((x - y).abs() < 1e-6, "{g:?}");
            }
        }
        // Token norm: every scored token weighs the same (5 of them).
        let o = Objective {
            norm: Norm::Token,
            ..o
        };
        let p = grpo_loss(lp.as_tensor(), lp.as_tensor(), None, &adv, &mask, &o).unwrap();
        let g = p.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!((g[0][0] + 2.0 / 5.0).abs() < 1e-6 && (g[1][1] - 1.0 / 5.0).abs() < 1e-6);
    }

    /// A ratio beyond the clip on the side its advantage pushes gets no gradient; on the other side
    /// it keeps its gradient (the pessimistic bound).
    #[test]
    fn clipping_cuts_only_the_optimistic_side() {
        let old = t(&[0.0, 0.0], 2, 1);
        let lp = Var::from_tensor(&t(&[0.5f32.ln() + 1.0, 0.5f32.ln() + 1.0], 2, 1)).unwrap();
        // ratio = e^(ln 0.5 + 1) = 1.36 > 1.2 for both rows; row 0 A > 0 (cut), row 1 A < 0 (kept).
        let adv = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let mask = t(&[1.0, 1.0], 2, 1);
        let o = Objective {
            beta: 0.0,
            ..Default::default()
        };
        let p = grpo_loss(lp.as_tensor(), &old, None, &adv, &mask, &o).unwrap();
        assert!((p.clip_frac - 0.5).abs() < 1e-6);
        let g = p.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let ratio = (0.5f32.ln() + 1.0).exp();
        assert_eq!(g[0][0], 0.0);
        assert!((g[1][0] - ratio / 2.0).abs() < 1e-5, "{g:?}");
    }

    /// k3 is zero with zero gradient where policy and reference agree, positive elsewhere, and its
    /// gradient pulls the policy towards the reference.
    #[test]
    fn k3_kl_pulls_towards_the_reference() {
        let mask = t(&[1.0, 1.0], 1, 2);
        let adv = Tensor::new(&[0.0f32], &Device::Cpu).unwrap();
        let o = Objective {
            beta: 0.5,
            ..Default::default()
        };
        let lp = Var::from_tensor(&t(&[-1.0, -2.0], 1, 2)).unwrap();
        let same = grpo_loss(
            lp.as_tensor(),
            lp.as_tensor(),
            Some(lp.as_tensor()),
            &adv,
            &mask,
            &o,
        )
        .unwrap();
        assert!(same.kl.abs() < 1e-7);
        let g = same.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(g[0].iter().all(|x| x.abs() < 1e-7));
        let reference = t(&[-0.5, -2.5], 1, 2);
        let p = grpo_loss(
            lp.as_tensor(),
            lp.as_tensor(),
            Some(&reference),
            &adv,
            &mask,
            &o,
        )
        .unwrap();
        assert!(p.kl > 0.0);
        let g = p.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // Gradient descent raises the log-prob below the reference and lowers the one above it.
        assert!(g[0][0] < 0.0 && g[0][1] > 0.0, "{g:?}");
    }
}
