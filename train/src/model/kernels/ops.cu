// The decoder's fused training kernels on CUDA: the twins of the CPU kernels in ops.rs (same math,
// same argument order; the comments there give the formulas). Each reads f32 or bf16 and computes in
// f32. Why: composed from candle's CUDA primitives, the masked softmax alone was ~20 passes over the
// (B, H, T, T) scores forward and backward, and those passes were most of a training step (the kernel
// profile in docs/benchmarks.md).
//
// Row kernels give one warp to a row (8 rows a block of 256 threads); the cross-entropy rows
// (a vocabulary wide) get a block each. Element-wise kernels use grid-stride loops.
#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16 *p, size_t i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The running (max, sum of exp(v - max)) of an online softmax, merged with another.
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
  float mm = fmaxf(m, m2);
  if (mm == -CUDART_INF_F) return;  // both empty
  s = (m == -CUDART_INF_F ? 0.f : s * expf(m - mm)) + (m2 == -CUDART_INF_F ? 0.f : s2 * expf(m2 - mm));
  m = mm;
}

__device__ __forceinline__ void lse_push(float &m, float &s, float v) {
  if (v == -CUDART_INF_F) return;
  if (v > m) {
    s = (m == -CUDART_INF_F ? 0.f : s * expf(m - v)) + 1.f;
    m = v;
  } else {
    s += expf(v - m);
  }
}

#define WARP_ROW                                                        \
  const int lane = threadIdx.x & 31;                                    \
  const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); \
  if (row >= n_rows) return;

// --- softmax -------------------------------------------------------------------------------------

// y = softmax(x * scale + mask) over rows of s; x is (B, H, T, S), the mask (B, hm, T, S) with hm 1 or
// h (has_mask 0: none). A row with every position masked gives zeros.
template <typename T>
__device__ void softmax_fwd(const T *x, const T *mask, T *y, long long n_rows, int s, float scale,
                            int has_mask, int h, int hm, int t) {
  WARP_ROW
  const size_t off = (size_t)row * s;
  const T *mr = nullptr;
  if (has_mask) {
    long long b = row / ((long long)h * t), head = (row / t) % h, r = row % t;
    mr = mask + ((size_t)(b * hm + head % hm) * t + r) * s;
  }
  float m = -CUDART_INF_F, sum = 0.f;
  for (int i = lane; i < s; i += 32) lse_push(m, sum, ld(x, off + i) * scale + (mr ? ld(mr, i) : 0.f));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, sum, o);
    lse_merge(m, sum, m2, s2);
  }
  if (m == -CUDART_INF_F) {
    for (int i = lane; i < s; i += 32) st(y, off + i, 0.f);
    return;
  }
  const float inv = 1.f / sum;
  for (int i = lane; i < s; i += 32) {
    float v = ld(x, off + i) * scale + (mr ? ld(mr, i) : 0.f);
    st(y, off + i, expf(v - m) * inv);
  }
}

// dx = scale * y (dy - sum(dy y)).
template <typename T>
__device__ void softmax_bwd(const T *y, const T *dy, T *dx, long long n_rows, int s, float scale) {
  WARP_ROW
  const size_t off = (size_t)row * s;
  float dot = 0.f;
  for (int i = lane; i < s; i += 32) dot += ld(y, off + i) * ld(dy, off + i);
  dot = warp_sum(dot);
  for (int i = lane; i < s; i += 32) st(dx, off + i, scale * ld(y, off + i) * (ld(dy, off + i) - dot));
}

// --- RMS norm ------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float row_inv_rms(const T *x, size_t off, int d, int lane, float eps) {
  float ss = 0.f;
  for (int i = lane; i < d; i += 32) {
    float v = ld(x, off + i);
    ss += v * v;
  }
  return 1.f / sqrtf(warp_sum(ss) / d + eps);
}

template <typename T>
__device__ void rms_norm_fwd(const T *x, const T *w, T *y, long long n_rows, int d, float eps) {
  WARP_ROW
  const size_t off = (size_t)row * d;
  const float inv = row_inv_rms(x, off, d, lane, eps);
  for (int i = lane; i < d; i += 32) st(y, off + i, ld(x, off + i) * inv * ld(w, i));
}

// dx = r (g w - x^ mean(g w x^)), r = 1/rms(x), x^ = x r.
template <typename T>
__device__ void rms_norm_bwd_x(const T *x, const T *w, const T *dy, T *dx, long long n_rows, int d,
                               float eps) {
  WARP_ROW
  const size_t off = (size_t)row * d;
  float ss = 0.f, gwx = 0.f;
  for (int i = lane; i < d; i += 32) {
    float v = ld(x, off + i);
    ss += v * v;
    gwx += ld(dy, off + i) * ld(w, i) * v;
  }
  const float inv = 1.f / sqrtf(warp_sum(ss) / d + eps);
  const float dot = warp_sum(gwx) * inv / d;
  for (int i = lane; i < d; i += 32)
    st(dx, off + i, inv * (ld(dy, off + i) * ld(w, i) - ld(x, off + i) * inv * dot));
}

// dw = sum over rows of dy x^: 1/rms per row, then column sums in row blocks (gridDim.y partials),
// then the partials summed.
template <typename T>
__device__ void rms_inv(const T *x, float *inv, long long n_rows, int d, float eps) {
  WARP_ROW
  const float r = row_inv_rms(x, (size_t)row * d, d, lane, eps);
  if (lane == 0) inv[row] = r;
}

template <typename T>
__device__ void rms_norm_bwd_w_partial(const T *x, const T *dy, const float *inv, float *part,
                                       long long n_rows, int d) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float acc = 0.f;
  for (long long r = blockIdx.y; r < n_rows; r += gridDim.y)
    acc += ld(dy, (size_t)r * d + c) * ld(x, (size_t)r * d + c) * inv[r];
  part[(size_t)blockIdx.y * d + c] = acc;
}

template <typename T>
__device__ void col_sum(const float *part, T *out, int parts, int d) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float acc = 0.f;
  for (int p = 0; p < parts; p++) acc += part[(size_t)p * d + c];
  st(out, c, acc);
}

// --- SiLU gate -----------------------------------------------------------------------------------

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }

#define GRID_STRIDE for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)

template <typename T>
__device__ void silu_mul_fwd(const T *g, const T *u, T *y, size_t n) {
  GRID_STRIDE {
    float gv = ld(g, i);
    st(y, i, gv * sigmoidf(gv) * ld(u, i));
  }
}

// dg = dy u s (1 + g (1 - s)), s = sigmoid(g).
template <typename T>
__device__ void silu_mul_bwd_gate(const T *g, const T *u, const T *dy, T *dg, size_t n) {
  GRID_STRIDE {
    float gv = ld(g, i), s = sigmoidf(gv);
    st(dg, i, ld(dy, i) * ld(u, i) * s * (1.f + gv * (1.f - s)));
  }
}

// du = dy silu(g).
template <typename T>
__device__ void silu_mul_bwd_up(const T *g, const T *dy, T *du, size_t n) {
  GRID_STRIDE {
    float gv = ld(g, i);
    st(du, i, ld(dy, i) * gv * sigmoidf(gv));
  }
}

// --- rotary embeddings ---------------------------------------------------------------------------

// y = x cos + rotate_half(x) sin over x (B, H, T, D) with tables (B, 1, T, D); transpose: the backward.
template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, size_t n, int h, int t, int d,
                     int transpose) {
  const int half = d / 2;
  GRID_STRIDE {
    const size_t r = i / d;
    const int j = i % d;
    const size_t tab = (r / ((size_t)h * t)) * t + r % t;
    const size_t xo = r * d, to = tab * d;
    float rot;
    if (!transpose)
      rot = j < half ? -ld(x, xo + j + half) * ld(sin, to + j) : ld(x, xo + j - half) * ld(sin, to + j);
    else
      rot = j < half ? ld(x, xo + j + half) * ld(sin, to + j + half)
                     : -ld(x, xo + j - half) * ld(sin, to + j - half);
    st(y, i, ld(x, i) * ld(cos, to + j) + rot);
  }
}

// --- cross-entropy -------------------------------------------------------------------------------

// log-sum-exp of a row of v with the whole block (blockDim.x a multiple of 32, at most 1024).
template <typename T>
__device__ float block_lse(const T *x, size_t off, int v) {
  __shared__ float sm[32], ss[32];
  float m = -CUDART_INF_F, s = 0.f;
  for (int i = threadIdx.x; i < v; i += blockDim.x) lse_push(m, s, ld(x, off + i));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sm[lane] : -CUDART_INF_F;
    s = lane < warps ? ss[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
      float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      lse_merge(m, s, m2, s2);
    }
    if (lane == 0) sm[0] = m == -CUDART_INF_F ? m : m + logf(s);
  }
  __syncthreads();
  const float l = sm[0];
  __syncthreads();  // sm is reused by the caller's next call
  return l;
}

// Per row: lse(x) - x[target]; a target out of range gives NaN (the loss then says so; checking the
// targets on the host would cost a device-to-host copy every step).
template <typename T>
__device__ void ce_rows(const T *x, const uint32_t *target, float *loss, int v) {
  const size_t row = blockIdx.x, off = row * (size_t)v;
  const float l = block_lse(x, off, v);
  if (threadIdx.x == 0) {
    const uint32_t c = target[row];
    loss[row] = c < (uint32_t)v ? l - ld(x, off + c) : CUDART_NAN_F;
  }
}

// out[0] = sum of the n row losses (one block; accumulated in double as the CPU kernel does).
template <typename T>
__device__ void ce_total(const float *loss, T *out, int n) {
  __shared__ double acc[32];
  double a = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) a += loss[i];
  for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
  if ((threadIdx.x & 31) == 0) acc[threadIdx.x >> 5] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += acc[w];
    st(out, 0, (float)t);
  }
}

// dx = g (softmax(x) - onehot(target)); a row with every logit -inf gets -g at the target only.
template <typename T>
__device__ void ce_bwd(const T *x, const uint32_t *target, const T *g, T *dx, int v) {
  const size_t row = blockIdx.x, off = row * (size_t)v;
  const float l = block_lse(x, off, v);
  const float gv = ld(g, 0);
  const uint32_t c = target[row];
  for (int i = threadIdx.x; i < v; i += blockDim.x) {
    float p = l == -CUDART_INF_F ? 0.f : expf(ld(x, off + i) - l);
    st(dx, off + i, gv * (p - ((uint32_t)i == c ? 1.f : 0.f)));
  }
}

// --- entry points, one per dtype -----------------------------------------------------------------

#define ENTRIES(T, SFX)                                                                              \
  extern "C" __global__ void softmax_fwd_##SFX(const T *x, const T *mask, T *y, long long n_rows, int s, \
                                               float scale, int has_mask, int h, int hm, int t) {     \
    softmax_fwd<T>(x, mask, y, n_rows, s, scale, has_mask, h, hm, t);                               \
  }                                                                                                  \
  extern "C" __global__ void softmax_bwd_##SFX(const T *y, const T *dy, T *dx, long long n_rows, int s, \
                                               float scale) {                                       \
    softmax_bwd<T>(y, dy, dx, n_rows, s, scale);                                                     \
  }                                                                                                  \
  extern "C" __global__ void rms_norm_fwd_##SFX(const T *x, const T *w, T *y, long long n_rows, int d, \
                                                float eps) {                                        \
    rms_norm_fwd<T>(x, w, y, n_rows, d, eps);                                                        \
  }                                                                                                  \
  extern "C" __global__ void rms_norm_bwd_x_##SFX(const T *x, const T *w, const T *dy, T *dx,         \
                                                  long long n_rows, int d, float eps) {             \
    rms_norm_bwd_x<T>(x, w, dy, dx, n_rows, d, eps);                                                 \
  }                                                                                                  \
  extern "C" __global__ void rms_inv_##SFX(const T *x, float *inv, long long n_rows, int d, float eps) { \
    rms_inv<T>(x, inv, n_rows, d, eps);                                                              \
  }                                                                                                  \
  extern "C" __global__ void rms_norm_bwd_w_partial_##SFX(const T *x, const T *dy, const float *inv,  \
                                                          float *part, long long n_rows, int d) {   \
    rms_norm_bwd_w_partial<T>(x, dy, inv, part, n_rows, d);                                          \
  }                                                                                                  \
  extern "C" __global__ void col_sum_##SFX(const float *part, T *out, int parts, int d) {            \
    col_sum<T>(part, out, parts, d);                                                                 \
  }                                                                                                  \
  extern "C" __global__ void silu_mul_fwd_##SFX(const T *g, const T *u, T *y, size_t n) {            \
    silu_mul_fwd<T>(g, u, y, n);                                                                     \
  }                                                                                                  \
  extern "C" __global__ void silu_mul_bwd_gate_##SFX(const T *g, const T *u, const T *dy, T *dg,     \
                                                     size_t n) {                                    \
    silu_mul_bwd_gate<T>(g, u, dy, dg, n);                                                           \
  }                                                                                                  \
  extern "C" __global__ void silu_mul_bwd_up_##SFX(const T *g, const T *dy, T *du, size_t n) {       \
    silu_mul_bwd_up<T>(g, dy, du, n);                                                                \
  }                                                                                                  \
  extern "C" __global__ void rope_##SFX(const T *x, const T *cos, const T *sin, T *y, size_t n, int h, \
                                        int t, int d, int transpose) {                              \
    rope<T>(x, cos, sin, y, n, h, t, d, transpose);                                                  \
  }                                                                                                  \
  extern "C" __global__ void ce_rows_##SFX(const T *x, const uint32_t *target, float *loss, int v) {  \
    ce_rows<T>(x, target, loss, v);                                                                  \
  }                                                                                                  \
  extern "C" __global__ void ce_total_##SFX(const float *loss, T *out, int n) {                     \
    ce_total<T>(loss, out, n);                                                                       \
  }                                                                                                  \
  extern "C" __global__ void ce_bwd_##SFX(const T *x, const uint32_t *target, const T *g, T *dx, int v) { \
    ce_bwd<T>(x, target, g, dx, v);                                                                  \
  }

ENTRIES(float, f32)
ENTRIES(bf16, bf16)
