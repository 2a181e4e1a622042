//! CUDA launchers of the fused ops in `ops.rs`: each op's `cuda_fwd` calls one of these. The kernels
//! (`kernels/ops.cu`, compiled to PTX by build.rs) take f32 or bf16 and compute in f32; every float
//! input of one op has one dtype, and inputs are contiguous (the callers in ops.rs make them so).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{kernel_name, CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, WithDType};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// Module name the PTX is loaded under (once per device).
const MODULE: &str = "navigen_ops";

/// The dtypes the kernels are built for.
trait Float: WithDType + CudaDType + DeviceRepr {}
impl Float for f32 {}
impl Float for half::bf16 {}

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// The kernel `name` for dtype `T` (the module loads once per device).
macro_rules! kernel {
    ($dev:expr, $t:ty, $name:expr) => {
        $dev.get_or_load_custom_func(&kernel_name::<$t>($name), MODULE, ptx::OPS)?
    };
}

/// One warp a row, 8 rows a block.
fn warp_rows(n_rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n_rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grid-stride element-wise launch.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads a row.
fn block_rows(n_rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n_rows.max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn last_dim(l: &Layout, what: &str) -> Result<(usize, usize)> {
    let d = *l
        .shape()
        .dims()
        .last()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} of a scalar")))?;
    Ok((l.shape().elem_count() / d.max(1), d))
}

/// Matches the storages' slices on one float dtype, binds `T` to it for `$body` (which yields a
/// `CudaSlice<T>`), and wraps the result as storage.
macro_rules! by_float {
    ($dev:expr; $($s:expr => $v:ident),+; $body:expr) => {{
        use CudaStorageSlice as C;
        match ($(&$s.slice,)+) {
            ($(C::F32($v),)+) => {
                type T = f32;
                T::wrap_cuda_slice($body?, $dev.clone())
            }
            ($(C::BF16($v),)+) => {
                type T = half::bf16;
                T::wrap_cuda_slice($body?, $dev.clone())
            }
            _ => candle_core::bail!("navigen CUDA op: f32 or bf16 inputs of one dtype only"),
        }
    }};
}

pub(super) fn softmax(
    x: &CudaStorage,
    lx: &Layout,
    mask: Option<(&CudaStorage, &Layout)>,
    scale: f32,
    heads: (usize, usize, usize),
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        m: Option<CudaView<T>>,
        (rows, s): (usize, usize),
        scale: f32,
        (h, hm, t): (usize, usize, usize),
    ) -> Result<CudaSlice<T>> {
        let y = unsafe { dev.alloc::<T>(rows * s)? };
        let f = kernel!(dev, T, "softmax_fwd");
        let mut b = f.builder();
        let has = m.is_some() as i32;
        b.arg(&x);
        // No mask: the kernel never reads it; any valid pointer fills the slot.
        b.arg(m.as_ref().unwrap_or(&x));
        b.arg(&y);
        candle_core::builder_arg!(
            b,
            rows as i64,
            s as i32,
            scale,
            has,
            h as i32,
            hm as i32,
            t as i32
        );
        unsafe { b.launch(warp_rows(rows)) }.w()?;
        Ok(y)
    }
    let dev = x.device();
    let dims = last_dim(lx, "softmax")?;
    let out = match mask {
        None => {
            by_float!(dev; x => xs; go::<T>(dev, view(xs, lx, "softmax")?, None, dims, scale, heads))
        }
        Some((m, lm)) => by_float!(dev; x => xs, m => ms;
            go::<T>(dev, view(xs, lx, "softmax")?, Some(view(ms, lm, "softmax mask")?), dims, scale, heads)),
    };
    Ok((out, lx.shape().clone()))
}

/// The row kernels with two inputs of the output's shape (softmax backward): `name(a, b, out, rows,
/// width, scale)`.
pub(super) fn softmax_bwd(
    y: &CudaStorage,
    ly: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
    scale: f32,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        y: CudaView<T>,
        dy: CudaView<T>,
        (rows, s): (usize, usize),
        scale: f32,
    ) -> Result<CudaSlice<T>> {
        let dx = unsafe { dev.alloc::<T>(rows * s)? };
        let f = kernel!(dev, T, "softmax_bwd");
        let mut b = f.builder();
        b.arg(&y);
        b.arg(&dy);
        b.arg(&dx);
        candle_core::builder_arg!(b, rows as i64, s as i32, scale);
        unsafe { b.launch(warp_rows(rows)) }.w()?;
        Ok(dx)
    }
    let dev = y.device();
    let dims = last_dim(ly, "softmax")?;
    let out = by_float!(dev; y => ys, dy => dys;
        go::<T>(dev, view(ys, ly, "softmax bwd")?, view(dys, ldy, "softmax bwd")?, dims, scale));
    Ok((out, ly.shape().clone()))
}

pub(super) fn rms_norm(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        w: CudaView<T>,
        (rows, d): (usize, usize),
        eps: f32,
    ) -> Result<CudaSlice<T>> {
        let y = unsafe { dev.alloc::<T>(rows * d)? };
        let f = kernel!(dev, T, "rms_norm_fwd");
        let mut b = f.builder();
        b.arg(&x);
        b.arg(&w);
        b.arg(&y);
        candle_core::builder_arg!(b, rows as i64, d as i32, eps);
        unsafe { b.launch(warp_rows(rows)) }.w()?;
        Ok(y)
    }
    let dev = x.device();
    let dims = last_dim(lx, "rms-norm")?;
    let out = by_float!(dev; x => xs, w => ws;
        go::<T>(dev, view(xs, lx, "rms-norm")?, view(ws, lw, "rms-norm")?, dims, eps));
    Ok((out, lx.shape().clone()))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rms_norm_bwd_x(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        w: CudaView<T>,
        dy: CudaView<T>,
        (rows, d): (usize, usize),
        eps: f32,
    ) -> Result<CudaSlice<T>> {
        let dx = unsafe { dev.alloc::<T>(rows * d)? };
        let f = kernel!(dev, T, "rms_norm_bwd_x");
        let mut b = f.builder();
        b.arg(&x);
        b.arg(&w);
        b.arg(&dy);
        b.arg(&dx);
        candle_core::builder_arg!(b, rows as i64, d as i32, eps);
        unsafe { b.launch(warp_rows(rows)) }.w()?;
        Ok(dx)
    }
    let dev = x.device();
    let dims = last_dim(lx, "rms-norm")?;
    let out = by_float!(dev; x => xs, w => ws, dy => dys;
        go::<T>(dev, view(xs, lx, "rms-norm bwd")?, view(ws, lw, "rms-norm bwd")?,
            view(dys, ldy, "rms-norm bwd")?, dims, eps));
    Ok((out, lx.shape().clone()))
}

pub(super) fn rms_norm_bwd_w(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        dy: CudaView<T>,
        (rows, d): (usize, usize),
        eps: f32,
    ) -> Result<CudaSlice<T>> {
        let inv = unsafe { dev.alloc::<f32>(rows.max(1))? };
        let f = kernel!(dev, T, "rms_inv");
        let mut b = f.builder();
        b.arg(&x);
        b.arg(&inv);
        candle_core::builder_arg!(b, rows as i64, d as i32, eps);
        unsafe { b.launch(warp_rows(rows)) }.w()?;
        // Column sums in `parts` row blocks, then over the blocks: enough blocks to fill the GPU
        // without a partial buffer larger than the input.
        let parts = rows.clamp(1, 256);
        let cols = d.div_ceil(256) as u32;
        let part = unsafe { dev.alloc::<f32>(parts * d)? };
        let f = kernel!(dev, T, "rms_norm_bwd_w_partial");
        let mut b = f.builder();
        b.arg(&x);
        b.arg(&dy);
        b.arg(&inv);
        b.arg(&part);
        candle_core::builder_arg!(b, rows as i64, d as i32);
        let cfg = LaunchConfig {
            grid_dim: (cols, parts as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        let dw = unsafe { dev.alloc::<T>(d)? };
        let f = kernel!(dev, T, "col_sum");
        let mut b = f.builder();
        b.arg(&part);
        b.arg(&dw);
        candle_core::builder_arg!(b, parts as i32, d as i32);
        let cfg = LaunchConfig {
            grid_dim: (cols, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(dw)
    }
    let dev = x.device();
    let dims = last_dim(lx, "rms-norm")?;
    let out = by_float!(dev; x => xs, dy => dys;
        go::<T>(dev, view(xs, lx, "rms-norm bwd")?, view(dys, ldy, "rms-norm bwd")?, dims, eps));
    Ok((out, Shape::from(dims.1)))
}

/// The element-wise kernels over two or three inputs of one shape: `name(in.., out, n)`.
pub(super) fn elementwise_op(
    name: &'static str,
    inputs: &[(&CudaStorage, &Layout)],
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        name: &str,
        ins: &[CudaView<T>],
        n: usize,
    ) -> Result<CudaSlice<T>> {
        let y = unsafe { dev.alloc::<T>(n)? };
        let f = kernel!(dev, T, name);
        let mut b = f.builder();
        for v in ins {
            b.arg(v);
        }
        b.arg(&y);
        candle_core::builder_arg!(b, n);
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(y)
    }
    let (s0, l0) = inputs[0];
    let dev = s0.device();
    let n = l0.shape().elem_count();
    for (_, l) in inputs {
        if l.shape().elem_count() != n {
            candle_core::bail!("{name}: inputs of different sizes");
        }
    }
    let out = match inputs {
        [(a, la), (b, lb)] => by_float!(dev; a => av, b => bv;
            go::<T>(dev, name, &[view(av, la, name)?, view(bv, lb, name)?], n)),
        [(a, la), (b, lb), (c, lc)] => by_float!(dev; a => av, b => bv, c => cv;
            go::<T>(dev, name, &[view(av, la, name)?, view(bv, lb, name)?, view(cv, lc, name)?], n)),
        _ => candle_core::bail!("{name}: two or three inputs"),
    };
    Ok((out, l0.shape().clone()))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rope(
    x: &CudaStorage,
    lx: &Layout,
    cos: &CudaStorage,
    lc: &Layout,
    sin: &CudaStorage,
    ls: &Layout,
    transpose: bool,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        cos: CudaView<T>,
        sin: CudaView<T>,
        (h, t, d): (usize, usize, usize),
        n: usize,
        transpose: bool,
    ) -> Result<CudaSlice<T>> {
        let y = unsafe { dev.alloc::<T>(n)? };
        let f = kernel!(dev, T, "rope");
        let mut b = f.builder();
        b.arg(&x);
        b.arg(&cos);
        b.arg(&sin);
        b.arg(&y);
        candle_core::builder_arg!(b, n, h as i32, t as i32, d as i32, transpose as i32);
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(y)
    }
    let dev = x.device();
    let (_, h, t, d) = lx.shape().dims4()?;
    let n = lx.shape().elem_count();
    let out = by_float!(dev; x => xs, cos => cs, sin => ss;
        go::<T>(dev, view(xs, lx, "rope")?, view(cs, lc, "rope")?, view(ss, ls, "rope")?,
            (h, t, d), n, transpose));
    Ok((out, lx.shape().clone()))
}

fn targets<'a>(t: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, u32>> {
    match &t.slice {
        CudaStorageSlice::U32(s) => view(s, l, "cross-entropy targets"),
        _ => candle_core::bail!("cross-entropy targets: u32 only, got {:?}", t.dtype()),
    }
}

/// Sum over rows of lse(logits) - logits[target] (a scalar of the logits' dtype).
pub(super) fn cross_entropy_sum(
    x: &CudaStorage,
    lx: &Layout,
    t: &CudaStorage,
    lt: &Layout,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        t: &CudaView<u32>,
        (n, v): (usize, usize),
    ) -> Result<CudaSlice<T>> {
        let rows = unsafe { dev.alloc::<f32>(n.max(1))? };
        if n > 0 {
            let f = kernel!(dev, T, "ce_rows");
            let mut b = f.builder();
            b.arg(&x);
            b.arg(t);
            b.arg(&rows);
            candle_core::builder_arg!(b, v as i32);
            unsafe { b.launch(block_rows(n)) }.w()?;
        }
        let out = unsafe { dev.alloc::<T>(1)? };
        let f = kernel!(dev, T, "ce_total");
        let mut b = f.builder();
        b.arg(&rows);
        b.arg(&out);
        candle_core::builder_arg!(b, n as i32);
        unsafe { b.launch(block_rows(1)) }.w()?;
        Ok(out)
    }
    let dev = x.device();
    let (n, v) = lx.shape().dims2()?;
    if lt.shape().elem_count() != n {
        candle_core::bail!(
            "cross-entropy: {} targets for {n} rows",
            lt.shape().elem_count()
        );
    }
    let tv = targets(t, lt)?;
    let out = by_float!(dev; x => xs; go::<T>(dev, view(xs, lx, "cross-entropy")?, &tv, (n, v)));
    Ok((out, Shape::from(())))
}

/// dlogits = g (softmax(logits) - onehot(target)).
pub(super) fn cross_entropy_bwd(
    x: &CudaStorage,
    lx: &Layout,
    t: &CudaStorage,
    lt: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> Result<(CudaStorage, Shape)> {
    fn go<T: Float>(
        dev: &CudaDevice,
        x: CudaView<T>,
        t: &CudaView<u32>,
        g: CudaView<T>,
        (n, v): (usize, usize),
    ) -> Result<CudaSlice<T>> {
        let dx = unsafe { dev.alloc::<T>((n * v).max(1))? };
        if n > 0 {
            let f = kernel!(dev, T, "ce_bwd");
            let mut b = f.builder();
            b.arg(&x);
            b.arg(t);
            b.arg(&g);
            b.arg(&dx);
            candle_core::builder_arg!(b, v as i32);
            unsafe { b.launch(block_rows(n)) }.w()?;
        }
        Ok(dx)
    }
    let dev = x.device();
    let (n, v) = lx.shape().dims2()?;
    let tv = targets(t, lt)?;
    let out = by_float!(dev; x => xs, g => gs;
        go::<T>(dev, view(xs, lx, "cross-entropy bwd")?, &tv, view(gs, lg, "cross-entropy bwd")?, (n, v)));
    Ok((out, lx.shape().clone()))
}
