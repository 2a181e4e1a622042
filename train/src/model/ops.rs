//! Fused CPU kernels with a backward pass for the decoder's element-wise work: RMS norm, scaled and
//! masked softmax, the SiLU gate and rotary embeddings.
//!
//! Why: composed from candle primitives, each of these is 5 to 10 passes over the activations, each
//! with its own allocation and thread barrier, forward and again backward; on a small model that is
//! most of a training step (docs/benchmarks.md, trainer profile). candle-nn's fused kernels have no
//! backward, so they cannot train. Each op here is one pass forward and one or two passes backward,
//! rows in parallel on rayon. They run for contiguous f32 tensors on the CPU and, with the `cuda`
//! feature, for f32 and bf16 on CUDA (`ops_cuda.rs`, the same math in `kernels/ops.cu`); anything
//! else takes the composed path in `transformer.rs`, which the tests compare against ([`self_check`]
//! runs that comparison on any device: `navigen-train bench kernels`).

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor,
};
use rayon::prelude::*;

/// The `cuda_fwd` of a custom op with one, two or three inputs (storages and layouts named by the
/// closure's parameters), forwarding to a launcher in `ops_cuda.rs`; nothing without `cuda`.
macro_rules! cuda_fwd {
    ($self:ident, |$s:ident, $l:ident| $body:block) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$self,
            $s: &candle_core::CudaStorage,
            $l: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> $body
    };
    ($self:ident, |$s1:ident, $l1:ident, $s2:ident, $l2:ident| $body:block) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$self,
            $s1: &candle_core::CudaStorage,
            $l1: &Layout,
            $s2: &candle_core::CudaStorage,
            $l2: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> $body
    };
    ($self:ident, |$s1:ident, $l1:ident, $s2:ident, $l2:ident, $s3:ident, $l3:ident| $body:block) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$self,
            $s1: &candle_core::CudaStorage,
            $l1: &Layout,
            $s2: &candle_core::CudaStorage,
            $l2: &Layout,
            $s3: &candle_core::CudaStorage,
            $l3: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> $body
    };
}

thread_local! {
    static UNFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the fused kernels apply to `x` (otherwise the caller composes candle primitives).
/// `NAVIGEN_UNFUSED=1` (benchmarks) or [`unfused`] (tests) force the composed path.
pub fn fused_applies(x: &Tensor) -> bool {
    let kernels = match x.device() {
        candle_core::Device::Cpu => x.dtype() == DType::F32,
        candle_core::Device::Cuda(_) => {
            cfg!(feature = "cuda") && matches!(x.dtype(), DType::F32 | DType::BF16)
        }
        _ => false,
    };
    kernels
        && !UNFUSED.with(|u| u.get())
        && !matches!(std::env::var("NAVIGEN_UNFUSED").as_deref(), Ok(v) if !v.is_empty() && v != "0")
}

/// Runs `f` with the composed (unfused) ops on this thread: the reference the fused ones are tested
/// against. Graphs are built and differentiated on the calling thread, so a thread-local suffices.
pub fn unfused<R>(f: impl FnOnce() -> R) -> R {
    let before = UNFUSED.with(|u| u.replace(true));
    let r = f();
    UNFUSED.with(|u| u.set(before));
    r
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let all = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => candle_core::bail!("{what}: f32 only, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Rows per rayon task: enough work per task that scheduling stays small against it.
fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}

/// Applies `f(row_index, out_row)` to every row of a new (n_rows, width) buffer, rows in parallel.
fn map_rows(n: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let chunk = rows_per_task(width) * width;
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, block)| {
            for (r, row) in block.chunks_mut(width).enumerate() {
                f(c * (chunk / width) + r, row);
            }
        });
    out
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

// --- RMS norm ------------------------------------------------------------------------------------

/// y = x / sqrt(mean(x^2) + eps) * w over the last dimension.
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "navigen-rms-norm"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        super::ops_cuda::rms_norm(s1, l1, s2, l2, self.eps)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let d = w.len();
        let out = map_rows(x.len(), d, |r, y| {
            let xr = &x[r * d..(r + 1) * d];
            let inv = inv_rms(xr, self.eps);
            for ((y, &xv), &wv) in y.iter_mut().zip(xr).zip(w) {
                *y = xv * inv * wv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &dy, &RmsNormBwdX { eps: self.eps })?;
        let dw = x.apply_op2_no_bwd(&dy, &RmsNormBwdW { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dx = r (g - x^ mean(g x^)), with r = 1/rms(x), x^ = x r, g = dy w.
struct RmsNormBwdX {
    eps: f32,
}

impl CustomOp3 for RmsNormBwdX {
    fn name(&self) -> &'static str {
        "navigen-rms-norm-bwd-x"
    }
    cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        super::ops_cuda::rms_norm_bwd_x(s1, l1, s2, l2, s3, l3, self.eps)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let dy = slice(s3, l3, self.name())?;
        let d = w.len();
        let out = map_rows(x.len(), d, |r, dx| {
            let xr = &x[r * d..(r + 1) * d];
            let gr = &dy[r * d..(r + 1) * d];
            let inv = inv_rms(xr, self.eps);
            let dot: f32 = xr
                .iter()
                .zip(gr)
                .zip(w)
                .map(|((&xv, &g), &wv)| g * wv * xv * inv)
                .sum::<f32>()
                / d as f32;
            for (((o, &xv), &g), &wv) in dx.iter_mut().zip(xr).zip(gr).zip(w) {
                *o = inv * (g * wv - xv * inv * dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// dw = sum over rows of dy x^.
struct RmsNormBwdW {
    eps: f32,
}

impl CustomOp2 for RmsNormBwdW {
    fn name(&self) -> &'static str {
        "navigen-rms-norm-bwd-w"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        super::ops_cuda::rms_norm_bwd_w(s1, l1, s2, l2, self.eps)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let dy = slice(s2, l2, self.name())?;
        let d = *l1
            .shape()
            .dims()
            .last()
            .ok_or_else(|| candle_core::Error::Msg("rms-norm of a scalar".into()))?;
        let chunk = rows_per_task(d) * d;
        let dw = x
            .par_chunks(chunk)
            .zip(dy.par_chunks(chunk))
            .map(|(xb, gb)| {
                let mut acc = vec![0f32; d];
                for (xr, gr) in xb.chunks(d).zip(gb.chunks(d)) {
                    let inv = inv_rms(xr, self.eps);
                    for ((a, &xv), &g) in acc.iter_mut().zip(xr).zip(gr) {
                        *a += g * xv * inv;
                    }
                }
                acc
            })
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok((CpuStorage::F32(dw), Shape::from(d)))
    }
}

/// Fused RMS norm over the last dimension (f32, CPU); `w` is (d,).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps: eps as f32 })
}

// --- softmax -------------------------------------------------------------------------------------

/// y = softmax(x * scale + mask) over the last dimension. x is (B, H, T, S); the mask, when given, is
/// (B, Hm, T, S) with Hm 1 or H (one mask for every head is not copied per head).
struct ScaledSoftmax {
    scale: f32,
    /// (heads of x, heads of the mask, rows per head)
    mask_heads: Option<(usize, usize, usize)>,
}

impl ScaledSoftmax {
    fn run(&self, x: &[f32], mask: Option<&[f32]>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
        let s = *shape
            .dims()
            .last()
            .ok_or_else(|| candle_core::Error::Msg("softmax of a scalar".into()))?;
        let out = map_rows(x.len(), s, |r, y| {
            let xr = &x[r * s..(r + 1) * s];
            let mr = match (mask, self.mask_heads) {
                (Some(m), Some((h, hm, t))) => {
                    let (b, head, row) = (r / (h * t), (r / t) % h, r % t);
                    let mrow = (b * hm + head % hm) * t + row;
                    Some(&m[mrow * s..(mrow + 1) * s])
                }
                _ => None,
            };
            let mut max = f32::NEG_INFINITY;
            for (i, (o, &v)) in y.iter_mut().zip(xr).enumerate() {
                *o = v * self.scale + mr.map_or(0.0, |m| m[i]);
                max = max.max(*o);
            }
            if max == f32::NEG_INFINITY {
                // Every position masked: no distribution; zeros carry no gradient either.
                y.iter_mut().for_each(|o| *o = 0.0);
                return;
            }
            let mut sum = 0f32;
            for o in y.iter_mut() {
                *o = (*o - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            y.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), shape.clone()))
    }
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "navigen-scaled-softmax"
    }
    cuda_fwd!(self, |s, l| {
        super::ops_cuda::softmax(s, l, None, self.scale, (1, 1, 1))
    });
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(slice(s, l, "navigen-scaled-softmax")?, None, l.shape())
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(softmax_bwd(y, dy, self.scale)?))
    }
}

impl CustomOp2 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "navigen-scaled-masked-softmax"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        let heads = self
            .mask_heads
            .ok_or_else(|| candle_core::Error::Msg("masked softmax without mask heads".into()))?;
        super::ops_cuda::softmax(s1, l1, Some((s2, l2)), self.scale, heads)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "navigen-scaled-masked-softmax")?;
        let m = slice(s2, l2, "navigen-scaled-masked-softmax")?;
        self.run(x, Some(m), l1.shape())
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_bwd(y, dy, self.scale)?), None))
    }
}

/// dx = scale * y (dy - sum(dy y)).
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "navigen-softmax-bwd"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        super::ops_cuda::softmax_bwd(s1, l1, s2, l2, self.scale)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let dy = slice(s2, l2, self.name())?;
        let s = *l1
            .shape()
            .dims()
            .last()
            .ok_or_else(|| candle_core::Error::Msg("softmax of a scalar".into()))?;
        let out = map_rows(y.len(), s, |r, dx| {
            let yr = &y[r * s..(r + 1) * s];
            let gr = &dy[r * s..(r + 1) * s];
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &g) in dx.iter_mut().zip(yr).zip(gr) {
                *o = self.scale * yv * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

fn softmax_bwd(y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd { scale })
}

/// softmax(x * scale + mask) over the last dimension of (B, H, T, S) scores; `mask` (B, 1 or H, T, S)
/// is additive (0 or -inf) and gets no gradient.
pub fn scaled_softmax(x: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match mask {
        None => x.apply_op1(ScaledSoftmax {
            scale: scale as f32,
            mask_heads: None,
        }),
        Some(m) => {
            let (b, h, t, s) = x.dims4()?;
            let (mb, mh, mt, ms) = m.dims4()?;
            if mb != b || mt != t || ms != s || (mh != 1 && mh != h) {
                candle_core::bail!("mask {:?} does not fit scores {:?}", m.shape(), x.shape());
            }
            x.apply_op2(
                &m.contiguous()?,
                ScaledSoftmax {
                    scale: scale as f32,
                    mask_heads: Some((h, mh, t)),
                },
            )
        }
    }
}

// --- SiLU gate -----------------------------------------------------------------------------------

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// The same elementwise map over two or three equally shaped buffers, in parallel blocks.
fn zip_map(n: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(16384)
        .enumerate()
        .for_each(|(c, block)| {
            for (i, o) in block.iter_mut().enumerate() {
                *o = f(c * 16384 + i);
            }
        });
    out
}

/// y = silu(g) * u.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "navigen-silu-mul"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        super::ops_cuda::elementwise_op("silu_mul_fwd", &[(s1, l1), (s2, l2)])
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        let out = zip_map(g.len(), |i| g[i] * sigmoid(g[i]) * u[i]);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dg = g.apply_op3_no_bwd(u, &dy, &SiluMulBwdGate)?;
        let du = g.apply_op2_no_bwd(&dy, &SiluMulBwdUp)?;
        Ok((Some(dg), Some(du)))
    }
}

/// dg = dy u s (1 + g (1 - s)), s = sigmoid(g).
struct SiluMulBwdGate;

impl CustomOp3 for SiluMulBwdGate {
    fn name(&self) -> &'static str {
        "navigen-silu-mul-bwd-gate"
    }
    cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        super::ops_cuda::elementwise_op("silu_mul_bwd_gate", &[(s1, l1), (s2, l2), (s3, l3)])
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        let dy = slice(s3, l3, self.name())?;
        let out = zip_map(g.len(), |i| {
            let s = sigmoid(g[i]);
            dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s))
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// du = dy silu(g).
struct SiluMulBwdUp;

impl CustomOp2 for SiluMulBwdUp {
    fn name(&self) -> &'static str {
        "navigen-silu-mul-bwd-up"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        super::ops_cuda::elementwise_op("silu_mul_bwd_up", &[(s1, l1), (s2, l2)])
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let dy = slice(s2, l2, self.name())?;
        let out = zip_map(g.len(), |i| dy[i] * g[i] * sigmoid(g[i]));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// silu(g) * u, both contiguous f32 of one shape.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.shape() != u.shape() {
        candle_core::bail!("silu-mul: shapes {:?} and {:?}", g.shape(), u.shape());
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
}

// --- rotary embeddings ---------------------------------------------------------------------------

/// y = x cos + rotate_half(x) sin (NEOX halves), x (B, H, T, D), tables (B, 1, T, D). The transpose
/// (`transpose`) is the backward: dx = dy cos + rotate_half^T(dy sin), and its own backward is the
/// forward again.
struct RopeOp {
    transpose: bool,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "navigen-rope"
    }
    cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        super::ops_cuda::rope(s1, l1, s2, l2, s3, l3, self.transpose)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let cos = slice(s2, l2, self.name())?;
        let sin = slice(s3, l3, self.name())?;
        let (_, h, t, d) = l1.shape().dims4()?;
        let half = d / 2;
        let out = map_rows(x.len(), d, |r, y| {
            let xr = &x[r * d..(r + 1) * d];
            let tab = (r / (h * t)) * t + r % t;
            let c = &cos[tab * d..(tab + 1) * d];
            let s = &sin[tab * d..(tab + 1) * d];
            for j in 0..d {
                let rot = if !self.transpose {
                    if j < half {
                        -xr[j + half] * s[j]
                    } else {
                        xr[j - half] * s[j]
                    }
                } else if j < half {
                    xr[j + half] * s[j + half]
                } else {
                    -xr[j - half] * s[j - half]
                };
                y[j] = xr[j] * c[j] + rot;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &RopeOp {
                transpose: !self.transpose,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary embedding of x (B, H, T, D) with gathered tables (B, 1, T, D) (no gradient to the tables).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, _, t, d) = x.dims4()?;
    if cos.dims4()? != (b, 1, t, d) || sin.dims4()? != (b, 1, t, d) || d % 2 != 0 {
        candle_core::bail!("rope tables {:?} do not fit {:?}", cos.shape(), x.shape());
    }
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        RopeOp { transpose: false },
    )
}

// --- cross-entropy -------------------------------------------------------------------------------

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let all = match s {
        CpuStorage::U32(v) => v.as_slice(),
        other => candle_core::bail!("cross-entropy targets: u32 only, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("cross-entropy targets must be contiguous"),
    }
}

/// log-sum-exp of a row.
fn lse(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

/// sum over rows of lse(logits) - logits[target]: one pass, no (N, V) log-softmax kept.
struct CrossEntropySum;

impl CustomOp2 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "navigen-cross-entropy"
    }
    cuda_fwd!(self, |s1, l1, s2, l2| {
        super::ops_cuda::cross_entropy_sum(s1, l1, s2, l2)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let t = targets_of(s2, l2)?;
        let (n, v) = l1.shape().dims2()?;
        if t.len() != n || t.iter().any(|&c| c as usize >= v) {
            candle_core::bail!(
                "cross-entropy: {} targets for {n} rows of {v} classes, or one out of range",
                t.len()
            );
        }
        let sum: f64 = x
            .par_chunks(v)
            .zip(t.par_iter())
            .map(|(row, &c)| (lse(row) - row[c as usize]) as f64)
            .sum();
        Ok((CpuStorage::F32(vec![sum as f32]), Shape::from(())))
    }
    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(t, &g.contiguous()?, &CrossEntropyBwd)?;
        Ok((Some(dx), None))
    }
}

/// dlogits = g (softmax(logits) - onehot(target)).
struct CrossEntropyBwd;

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "navigen-cross-entropy-bwd"
    }
    cuda_fwd!(self, |s1, l1, s2, l2, s3, l3| {
        super::ops_cuda::cross_entropy_bwd(s1, l1, s2, l2, s3, l3)
    });
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let t = targets_of(s2, l2)?;
        let g = slice(s3, l3, self.name())?[0];
        let (_, v) = l1.shape().dims2()?;
        let out = map_rows(x.len(), v, |r, dx| {
            let row = &x[r * v..(r + 1) * v];
            let l = lse(row);
            for (o, &z) in dx.iter_mut().zip(row) {
                *o = if l == f32::NEG_INFINITY {
                    0.0
                } else {
                    g * (z - l).exp()
                };
            }
            dx[t[r] as usize] -= g;
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Sum over rows of the cross-entropy of (N, V) logits against (N,) u32 targets. The fused path
/// (contiguous f32 on the CPU) never materialises the log-softmax; elsewhere candle-nn's mean
/// cross-entropy times N.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused_applies(logits) {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropySum)
    } else {
        let n = logits.dim(0)?;
        candle_nn::loss::cross_entropy(logits, targets)? * n as f64
    }
}

#[cfg(test)]
mod tests {
    /// Every fused op (and the whole decoder) against the composed path on the CPU.
    #[test]
    fn fused_kernels_match_the_composed_path() {
        let checks =
            super::super::ops_check::self_check(&candle_core::Device::Cpu, super::DType::F32)
                .unwrap();
        assert_eq!(checks.len(), 7);
        for c in checks {
            assert!(c.ok, "{c:?}");
        }
    }
}
