//! The fused ops checked against the composed path, on any device and dtype: the unit tests run it on
//! the CPU (f32), `navigen-train bench kernels` on CUDA (f32 and bf16), where no CI machine can.
//!
//! The reference is always the composed path in f32 on the CPU, fed the same inputs rounded to the
//! checked dtype, so a bf16 run measures the kernels' error and not the rounding of its inputs. Each
//! check is `sum(f(inputs) * probe)`: its value and every input's gradient, compared as the largest
//! difference relative to the reference's largest magnitude.

use super::ops::{cross_entropy_sum, fused_applies, scaled_softmax, silu_mul, unfused};
use super::transformer::{apply_rope, packed_mask, rms_norm, Rope};
use super::{ModelConfig, Trainable, Weights};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

/// One op's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub op: String,
    /// max |fused - reference| / max |reference| over the output.
    pub value_rel_diff: f32,
    /// The same over every gradient (the worst input).
    pub grad_rel_diff: f32,
    pub tolerance: f32,
    pub ok: bool,
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape of its own length")
}

fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(d / scale.max(1e-6))
}

/// `f(inputs)` fused in `dtype` on `dev` against composed f32 on the CPU.
fn compare(
    op: &str,
    dev: &Device,
    dtype: DType,
    inputs: &[Tensor],
    tol: f32,
    f: impl Fn(&[Tensor], &Device) -> Result<Tensor>,
) -> Result<KernelCheck> {
    // Inputs and probe rounded to `dtype` once, so both sides see the same values.
    let rounded: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(dtype)?.to_dtype(DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let run = |fused: bool, dev: &Device, dtype: DType| -> Result<(Tensor, Vec<Tensor>)> {
        let vars: Vec<Var> = rounded
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev)?.to_dtype(dtype)?))
            .collect::<candle_core::Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = if fused {
            f(&ts, dev)?
        } else {
            unfused(|| f(&ts, dev))?
        };
        let probe = rand(y.dims(), 99).to_dtype(dtype)?.to_device(dev)?;
        let grads = (&y * &probe)?.sum_all()?.backward()?;
        let back = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(&Device::Cpu);
        let g = vars
            .iter()
            .map(|v| {
                let g = grads
                    .get(v)
                    .ok_or_else(|| anyhow::anyhow!("{op}: an input got no gradient"))?;
                Ok(back(g)?)
            })
            .collect::<Result<_>>()?;
        Ok((back(&y)?, g))
    };
    let (yf, gf) = run(true, dev, dtype)?;
    let (yr, gr) = run(false, &Device::Cpu, DType::F32)?;
    let value_rel_diff = rel_diff(&yf, &yr)?;
    let mut grad_rel_diff = 0f32;
    for (a, b) in gf.iter().zip(&gr) {
        grad_rel_diff = grad_rel_diff.max(rel_diff(a, b)?);
    }
    Ok(KernelCheck {
        op: op.into(),
        value_rel_diff,
        grad_rel_diff,
        tolerance: tol,
        ok: value_rel_diff <= tol && grad_rel_diff <= tol,
    })
}

/// The loss and every weight gradient of a two-layer decoder over packed rows (segments, restarting
/// positions), fused in `dtype` on `dev` against composed f32 on the CPU.
fn decoder(dev: &Device, dtype: DType, tol: f32) -> Result<KernelCheck> {
    use super::batch::{make_batch, Row};
    let c = ModelConfig {
        num_hidden_layers: 2,
        ..ModelConfig::tiny(300)
    };
    let row = |seed: usize, lens: &[usize]| {
        let mut r = Row::default();
        for (s, &n) in lens.iter().enumerate() {
            for i in 0..n {
                r.ids.push(((seed * 31 + s * 7 + i * 13) % 300) as u32);
                r.positions.push(i as u32);
                r.segments.push(s as u32);
                r.targets
                    .push((i % 2 == 1).then_some(((i * 17 + s) % 300) as u32));
            }
        }
        r
    };
    let rows = vec![row(1, &[9, 5, 10]), row(2, &[20, 4])];
    // Weights drawn once in f32 on the CPU and rounded to `dtype`: both sides start equal.
    let mut base = Weights::random(&c, &Device::Cpu, DType::F32, 7)?.merged()?;
    for t in base.values_mut() {
        *t = t.to_dtype(dtype)?.to_dtype(DType::F32)?;
    }
    let run = |fused: bool, dev: &Device, dtype: DType| -> Result<(f32, Vec<Tensor>)> {
        let mut w = Weights::from_map(c.clone(), base.clone(), dev, dtype)?;
        w.set_trainable(Trainable::All)?;
        let rope = Rope::new(&c, dev, dtype)?;
        let b = make_batch(&rows, 0, dev, dtype, None)?;
        let go = || -> Result<(f32, Vec<Tensor>)> {
            let loss = super::loss(&w, &rope, &b, None, None)?;
            let grads = loss.backward()?;
            let g = w
                .trainable()
                .iter()
                .map(|(n, v)| {
                    let g = grads
                        .get(v)
                        .ok_or_else(|| anyhow::anyhow!("decoder: {n} got no gradient"))?;
                    Ok(g.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
                })
                .collect::<Result<_>>()?;
            Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, g))
        };
        if fused {
            go()
        } else {
            unfused(go)
        }
    };
    let (lf, gf) = run(true, dev, dtype)?;
    let (lr, gr) = run(false, &Device::Cpu, DType::F32)?;
    let value_rel_diff = (lf - lr).abs() / lr.abs().max(1e-6);
    let mut grad_rel_diff = 0f32;
    for (a, b) in gf.iter().zip(&gr) {
        grad_rel_diff = grad_rel_diff.max(rel_diff(a, b)?);
    }
    Ok(KernelCheck {
        op: "decoder loss and weight gradients".into(),
        value_rel_diff,
        grad_rel_diff,
        tolerance: tol,
        ok: value_rel_diff <= tol && grad_rel_diff <= tol,
    })
}

/// Every fused op, then the whole decoder. Shapes make each kernel loop: rows wider than a warp and
/// not a multiple of it, more rows than the column-sum partials, a vocabulary many blocks wide.
/// Tolerances (relative to the reference's magnitude): f32 1e-4; bf16 3e-2 per op (a bf16 output
/// carries 2^-8 relative rounding) and 0.1 for the decoder (two layers of bf16 matrix products).
pub fn self_check(dev: &Device, dtype: DType) -> Result<Vec<KernelCheck>> {
    let (op_tol, model_tol) = if dtype == DType::F32 {
        (1e-4, 1e-4)
    } else {
        (3e-2, 0.1)
    };
    let mut out = vec![compare(
        "rms-norm",
        dev,
        dtype,
        &[rand(&[4, 75, 100], 1), rand(&[100], 2)],
        op_tol,
        |t, _| rms_norm(&t[0], &t[1], 1e-6),
    )?];
    out.push(compare(
        "silu-gate",
        dev,
        dtype,
        &[rand(&[4, 7, 200], 3), rand(&[4, 7, 200], 4)],
        op_tol,
        |t, _| {
            Ok(if fused_applies(&t[0]) {
                silu_mul(&t[0], &t[1])?
            } else {
                (t[0].silu()? * &t[1])?
            })
        },
    )?);
    // Packed rows of 70: segments shorter and longer than a warp.
    let segs: Vec<Vec<u32>> = [[10usize, 45, 15], [33, 33, 4]]
        .iter()
        .map(|lens| {
            lens.iter()
                .enumerate()
                .flat_map(|(s, &n)| std::iter::repeat_n(s as u32, n))
                .collect()
        })
        .collect();
    for masked in [true, false] {
        out.push(compare(
            if masked { "masked softmax" } else { "softmax" },
            dev,
            dtype,
            &[rand(&[2, 3, 70, 70], 5)],
            op_tol,
            |t, dev| {
                let m = if masked {
                    Some(packed_mask(&segs, dev, t[0].dtype())?)
                } else {
                    None
                };
                Ok(if fused_applies(&t[0]) {
                    scaled_softmax(&t[0], 0.3, m.as_ref())?
                } else {
                    let mut s = (&t[0] * 0.3)?;
                    if let Some(m) = &m {
                        s = s.broadcast_add(m)?;
                    }
                    candle_nn::ops::softmax(&s, candle_core::D::Minus1)?
                })
            },
        )?);
    }
    let c = ModelConfig::tiny(10);
    out.push(compare(
        "rope",
        dev,
        dtype,
        &[rand(&[2, 3, 5, c.head_dim], 6)],
        op_tol,
        |t, dev| {
            let rope = Rope::new(&c, dev, t[0].dtype())?;
            let pos = Tensor::from_vec(vec![0u32, 1, 2, 0, 5, 6, 7, 1, 2, 3], (2, 5), dev)?;
            apply_rope(&t[0], &rope.at(&pos)?)
        },
    )?);
    // A masked class (as the code constraint adds -inf) must not break either path.
    let mut logits = rand(&[5, 3000], 8);
    let mut mask = vec![0f32; 5 * 3000];
    mask[2] = f32::NEG_INFINITY;
    logits = (logits + Tensor::from_vec(mask, (5, 3000), &Device::Cpu)?)?;
    out.push(compare(
        "cross-entropy",
        dev,
        dtype,
        &[logits],
        op_tol,
        |x, dev| {
            let t = Tensor::from_vec(vec![3u32, 0, 2999, 9, 1], 5, dev)?;
            Ok(cross_entropy_sum(&x[0], &t)?)
        },
    )?);
    out.push(decoder(dev, dtype, model_tol)?);
    Ok(out)
}
