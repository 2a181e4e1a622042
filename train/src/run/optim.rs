//! AdamW (decoupled weight decay, as PyTorch's), the warmup + cosine schedule and gradient clipping.
//! Our own small optimiser rather than candle-nn's because checkpoints must save and restore its
//! moment estimates exactly (candle-nn's AdamW keeps them private).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay of an exponential moving average of the weights (0: none); see [`AdamW::ema`].
    pub ema_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            ema_decay: 0.0,
        }
    }
}

/// Optimiser state, kept in f32 whatever the weights' dtype.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    /// f32 master copies of weights held in a narrower dtype (bf16 on CUDA): an update of lr x ~1
    /// is below bf16's resolution (2^-8 relative) for lr < ~4e-3, so applied to the bf16 weight
    /// directly most updates would round away and training would stall.
    pub master: BTreeMap<String, Tensor>,
    /// f32 exponential moving average of each weight (when `ema_decay > 0`): an average over the
    /// last ~1/(1 - decay) steps sits nearer the middle of the basin the noisy iterates circle in,
    /// which is what validation, the kept model and the export read.
    pub ema: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            master: BTreeMap::new(),
            ema: BTreeMap::new(),
        }
    }

    /// The decay at the current step: warmed up as (1 + t) / (10 + t) so that the first steps, far
    /// from any later weight, do not linger in the average.
    fn ema_decay_now(&self) -> f64 {
        let t = self.step as f64;
        self.config.ema_decay.min((1.0 + t) / (10.0 + t))
    }

    /// Swaps each var's value with its moving average (no-op without one). Called twice, it restores
    /// the weights: evaluation and saving happen in between.
    pub fn swap_ema(&mut self, vars: &BTreeMap<String, Var>) -> Result<()> {
        for (name, var) in vars {
            let Some(avg) = self.ema.get(name) else {
                continue;
            };
            let current = var.as_tensor().to_dtype(DType::F32)?.copy()?;
            var.set(&avg.to_dtype(var.dtype())?)?;
            self.ema.insert(name.clone(), current);
        }
        Ok(())
    }

    /// One update with learning rate `lr`. Weight decay applies to matrices, not to norm vectors.
    pub fn update(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            let g = g.to_dtype(DType::F32)?;
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                None => (&g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let w = match self.master.get(name) {
                Some(w) => w.clone(),
                None => var.as_tensor().to_dtype(DType::F32)?,
            };
            let decay = if w.rank() >= 2 {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let new = ((w * decay)? - (update * lr)?)?;
            var.set(&new.to_dtype(var.dtype())?)?;
            if self.config.ema_decay > 0.0 {
                let d = self.ema_decay_now();
                let avg = match self.ema.get(name) {
                    Some(a) => ((a * d)? + (&new * (1.0 - d))?)?,
                    None => new.copy()?,
                };
                self.ema.insert(name.clone(), avg);
            }
            if var.dtype() != DType::F32 {
                self.master.insert(name.clone(), new);
            }
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// Linear warmup to `peak`, then cosine decay to `floor * peak` at `total` steps.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()
            .context("gradient norm")? as f64;
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let s = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_shape() {
        assert!((lr_at(0, 100, 10, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!(lr_at(55, 100, 10, 1.0, 0.0) < lr_at(30, 100, 10, 1.0, 0.0));
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let x = Var::from_tensor(&Tensor::new(&[3.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let vars = BTreeMap::from([("x".to_string(), x.clone())]);
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        });
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let grads = BTreeMap::from([("x".to_string(), g.get(x.as_tensor()).unwrap().clone())]);
            opt.update(&vars, &grads, 0.05).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }
    /// The average trails the weights, ends between the start and the iterate, and swapping twice
    /// restores the weights exactly.
    #[test]
    fn ema_averages_the_iterates_and_swaps_back() {
        let x = Var::from_tensor(&Tensor::new(&[4.0f32], &Device::Cpu).unwrap()).unwrap();
        let vars = BTreeMap::from([("x".to_string(), x.clone())]);
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ema_decay: 0.9,
            ..Default::default()
        });
        let g = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        for _ in 0..200 {
            let grads = BTreeMap::from([("x".to_string(), g.clone())]);
            opt.update(&vars, &grads, 0.01).unwrap();
        }
        // Constant gradient: x falls by ~0.01 a step to ~2.0; at decay 0.9 the average lags
        // d / (1 - d) = 9 steps behind, 0.09.
        let now = x.as_tensor().to_vec1::<f32>().unwrap()[0];
        let avg = opt.ema["x"].to_vec1::<f32>().unwrap()[0];
        assert!((now - 2.0).abs() < 0.01, "{now}");
        assert!((avg - now - 0.09).abs() < 0.01, "avg {avg}, now {now}");
        opt.swap_ema(&vars).unwrap();
        assert_eq!(x.as_tensor().to_vec1::<f32>().unwrap()[0], avg);
        opt.swap_ema(&vars).unwrap();
        assert_eq!(x.as_tensor().to_vec1::<f32>().unwrap()[0], now);
    }

    /// 200 steps of lr 1e-4 on a bf16 weight at 1.0 (bf16's spacing there is 2^-7): each Adam step
    /// (~lr) rounds away on the weight itself; the f32 master copy accumulates them.
    #[test]
    fn bf16_weights_move_by_updates_below_their_resolution() {
        let w = Var::from_tensor(
            &Tensor::new(&[1.0f32, 1.0], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let vars = BTreeMap::from([("w".to_string(), w.clone())]);
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        });
        let g = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        for _ in 0..200 {
            let grads = BTreeMap::from([("w".to_string(), g.clone())]);
            opt.update(&vars, &grads, 1e-4).unwrap();
        }
        let master = opt.master["w"].to_vec1::<f32>().unwrap();
        assert!(
            (master[0] - 0.98).abs() < 1e-3 && (master[1] - 1.02).abs() < 1e-3,
            "{master:?}"
        );
        let v = w
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            v[0] < 0.99 && v[1] > 1.01,
            "the bf16 weights did not move: {v:?}"
        );
    }
}
