//! The decoder (Qwen3 and Llama families) built only from candle operations that have a backward pass:
//! RMS-norm from sqr/mean/sqrt, RoPE via rotate-half, attention as matmul + additive mask + softmax.
//! (candle-transformers' fused kernels have no backward, so they cannot train.)
//!
//! Two entry points: [`hidden_states`] for training (packed rows, block-diagonal mask, per-example
//! positions) and [`forward_cached`] for sampling (KV cache, one new token at a time).

use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor, D};

use super::config::ModelConfig;
use super::ops;
use super::weights::{layer, Weights, FINAL_NORM};

/// Cosine and sine tables of rotary position embeddings (NEOX / Hugging Face layout: halves).
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(c: &ModelConfig, device: &Device, dtype: DType) -> Result<Self> {
        let half = c.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (c.rope_theta as f32).powf(2.0 * i as f32 / c.head_dim as f32))
            .collect();
        let n = c.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * c.head_dim);
        let mut sin = Vec::with_capacity(n * c.head_dim);
        for p in 0..n {
            for _half in 0..2 {
                for &f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (n, c.head_dim), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, c.head_dim), device)?.to_dtype(dtype)?,
        })
    }

    /// The tables at the given positions, (B, T) u32 -> two (B, 1, T, D); gathered once per forward.
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let d = self.cos.dim(1)?;
        let flat = positions.flatten_all()?;
        Ok((
            self.cos.index_select(&flat, 0)?.reshape((b, 1, t, d))?,
            self.sin.index_select(&flat, 0)?.reshape((b, 1, t, d))?,
        ))
    }
}

/// Rotates x: (B, H, T, D) by gathered tables from [`Rope::at`].
pub(crate) fn apply_rope(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
    if ops::fused_applies(x) {
        return Ok(ops::rope(x, cos, sin)?);
    }
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// RMS norm over the last dimension, computed in f32.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if ops::fused_applies(x) {
        return Ok(ops::rms_norm(x, w, eps)?);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&(ms + eps)?.sqrt()?.recip()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}

/// x (..., in) times w^T with w (out, in).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = *dims.last().expect("rank >= 1");
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dim(0)?;
    Ok(y.reshape(out)?)
}

fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, h, rep, t, d))?
        .reshape((b, h * rep, t, d))?)
}

/// Additive attention mask for packed rows: a token attends to earlier tokens of its own segment.
/// `segments` is (B, T); returns (B, 1, T, T) in `dtype`.
pub fn packed_mask(segments: &[Vec<u32>], device: &Device, dtype: DType) -> Result<Tensor> {
    let b = segments.len();
    let t = segments.first().map(|s| s.len()).unwrap_or(0);
    let mut m = vec![0f32; b * t * t];
    for (bi, seg) in segments.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                if j > i || seg[j] != seg[i] {
                    m[(bi * t + i) * t + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, t, t), device)?.to_dtype(dtype)?)
}

struct AttnOut {
    out: Tensor,
    k: Tensor,
    v: Tensor,
}

fn attention(
    w: &Weights,
    rope: &(Tensor, Tensor),
    i: usize,
    x: &Tensor,
    mask: Option<&Tensor>,
    past: Option<&(Tensor, Tensor)>,
) -> Result<AttnOut> {
    let c = &w.config;
    let (b, t, _) = x.dims3()?;
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let heads = |y: Tensor, n: usize| -> Result<Tensor> {
        Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
    };
    let mut q = heads(
        linear(x, &w.weight(&layer(i, "self_attn.q_proj.weight"))?)?,
        nh,
    )?;
    let mut k = heads(
        linear(x, &w.weight(&layer(i, "self_attn.k_proj.weight"))?)?,
        nkv,
    )?;
    let v = heads(
        linear(x, &w.weight(&layer(i, "self_attn.v_proj.weight"))?)?,
        nkv,
    )?;
    if c.arch.qk_norm() {
        q = rms_norm(
            &q,
            w.get(&layer(i, "self_attn.q_norm.weight"))?,
            c.rms_norm_eps,
        )?;
        k = rms_norm(
            &k,
            w.get(&layer(i, "self_attn.k_norm.weight"))?,
            c.rms_norm_eps,
        )?;
    }
    let q = apply_rope(&q, rope)?;
    let k = apply_rope(&k, rope)?;
    let (k_all, v_all) = match past {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        None => (k.clone(), v.clone()),
    };
    let rep = nh / nkv;
    let kr = repeat_kv(k_all.clone(), rep)?;
    let vr = repeat_kv(v_all.clone(), rep)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = q.matmul(&kr.t()?)?;
    let probs = if ops::fused_applies(&scores) {
        ops::scaled_softmax(&scores, scale, mask)?
    } else {
        let mut scores = (scores * scale)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        // Softmax in f32, from differentiable primitives.
        candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(x.dtype())?
    };
    let ctx = probs
        .matmul(&vr)?
        .transpose(1, 2)?
        .reshape((b, t, nh * hd))?;
    Ok(AttnOut {
        out: linear(&ctx, &w.weight(&layer(i, "self_attn.o_proj.weight"))?)?,
        k: k_all,
        v: v_all,
    })
}

fn mlp(w: &Weights, i: usize, x: &Tensor) -> Result<Tensor> {
    let gate = linear(x, &w.weight(&layer(i, "mlp.gate_proj.weight"))?)?;
    let up = linear(x, &w.weight(&layer(i, "mlp.up_proj.weight"))?)?;
    let act = if ops::fused_applies(&gate) {
        ops::silu_mul(&gate, &up)?
    } else {
        (gate.silu()? * up)?
    };
    linear(&act, &w.weight(&layer(i, "mlp.down_proj.weight"))?)
}

/// Rows of the embedding matrix for (B, T) token ids: (B, T, H).
fn embed(w: &Weights, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let e = w.embedding()?;
    Ok(e.index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, e.dim(1)?))?)
}

/// Dropout of the residual stream while training (GPT-2's embedding and residual dropout; SASRec's
/// hidden dropout): on the embeddings and on each attention and MLP output before it is added. The
/// mask comes from a seeded generator, so a step is reproducible and a resumed run draws the same
/// masks (candle's CPU `rand` cannot be seeded).
pub struct Dropout {
    p: f32,
    rng: rand_chacha::ChaCha8Rng,
}

impl Dropout {
    /// `None` when `p` is 0 (nothing to drop).
    pub fn new(p: f32, seed: u64) -> Option<Self> {
        use rand::SeedableRng;
        (p > 0.0).then(|| Dropout {
            p: p.min(0.9),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// x with each element zeroed with probability p and the rest scaled by 1 / (1 - p).
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        use rand::Rng;
        let keep = 1.0 - self.p;
        let threshold = (keep as f64 * u32::MAX as f64) as u32;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.gen::<u32>() < threshold {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

fn maybe_drop(d: &mut Option<&mut Dropout>, x: Tensor) -> Result<Tensor> {
    match d {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// Final-normed hidden states (B, T, H) of packed rows. `mask` from [`packed_mask`]; `dropout` only
/// while training.
pub fn hidden_states(
    w: &Weights,
    rope: &Rope,
    ids: &Tensor,
    positions: &Tensor,
    mask: &Tensor,
    mut dropout: Option<&mut Dropout>,
) -> Result<Tensor> {
    let c = &w.config;
    let mut x = maybe_drop(&mut dropout, embed(w, ids)?)?;
    let tables = rope.at(positions)?;
    // The fused softmax reads one mask for all heads; the composed path adds it per layer, so it
    // is expanded to all heads once here (a plain contiguous add).
    let (b, _, t, _) = mask.dims4()?;
    let mask = if ops::fused_applies(mask) {
        mask.clone()
    } else {
        mask.broadcast_as((b, c.num_attention_heads, t, t))?
            .contiguous()?
    };
    for i in 0..c.num_hidden_layers {
        let h = rms_norm(
            &x,
            w.get(&layer(i, "input_layernorm.weight"))?,
            c.rms_norm_eps,
        )?;
        let a = attention(w, &tables, i, &h, Some(&mask), None)?.out;
        x = (x + maybe_drop(&mut dropout, a)?)?;
        let h = rms_norm(
            &x,
            w.get(&layer(i, "post_attention_layernorm.weight"))?,
            c.rms_norm_eps,
        )?;
        x = (x + maybe_drop(&mut dropout, mlp(w, i, &h)?)?)?;
    }
    rms_norm(&x, w.get(FINAL_NORM)?, c.rms_norm_eps)
}

/// Per-layer keys and values of the tokens seen so far, for one or more sequences of the same
/// length (rows). Feeding never changes a tensor it holds (it appends into new ones), so a clone is
/// a cheap fork, and [`KvCache::select`] forks rows: beam search keeps one row per beam.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pub len: usize,
}

impl KvCache {
    /// A cache whose row r is row `rows[r]` of this one (rows may repeat: one parent, many beams).
    pub fn select(&self, rows: &[u32]) -> Result<KvCache> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(match l {
                Some((k, v)) => {
                    let idx = Tensor::from_slice(rows, rows.len(), k.device())?;
                    Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))
                }
                None => None,
            });
        }
        Ok(KvCache {
            layers,
            len: self.len,
        })
    }
}

/// Feeds `tokens` after what the cache holds; returns the logits (vocab,) of the last token, in f32.
pub fn forward_cached(
    w: &Weights,
    rope: &Rope,
    head: &Tensor,
    tokens: &[u32],
    cache: &mut KvCache,
) -> Result<Tensor> {
    Ok(forward_cached_rows(w, rope, head, tokens, 1, cache)?.squeeze(0)?)
}

/// Feeds `rows` sequences of equal length at once (`tokens` row after row) after what the cache holds
/// (empty, or `rows` rows); returns each row's logits after its last token, (rows, head rows), in f32.
/// `head` may be a subset of the output head's rows: beam search scores only the codes of a level.
/// One batched forward instead of one per row: beams share every weight read.
pub fn forward_cached_rows(
    w: &Weights,
    rope: &Rope,
    head: &Tensor,
    tokens: &[u32],
    rows: usize,
    cache: &mut KvCache,
) -> Result<Tensor> {
    let c = &w.config;
    anyhow::ensure!(
        rows > 0 && !tokens.is_empty() && tokens.len().is_multiple_of(rows),
        "{} tokens do not make {rows} rows",
        tokens.len()
    );
    let n = tokens.len() / rows;
    anyhow::ensure!(
        cache.len + n <= c.max_position_embeddings,
        "sequence longer than max_position_embeddings"
    );
    if cache.layers.len() != c.num_hidden_layers {
        cache.layers = vec![None; c.num_hidden_layers];
    }
    let dev = &w.device;
    let ids = Tensor::from_slice(tokens, (rows, n), dev)?;
    let pos: Vec<u32> = (0..rows)
        .flat_map(|_| (cache.len..cache.len + n).map(|p| p as u32))
        .collect();
    let positions = Tensor::from_vec(pos, (rows, n), dev)?;
    // Causal within the new tokens; everything cached is visible.
    let mask = if n > 1 {
        let past = cache.len;
        let total = past + n;
        let m: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        // One mask row block per row of the batch: the fused softmax takes (B, 1, T, S).
        Some(
            Tensor::from_vec(m, (1, 1, n, total), dev)?
                .to_dtype(w.dtype)?
                .broadcast_as((rows, 1, n, total))?
                .contiguous()?,
        )
    } else {
        None
    };
    let mut x = embed(w, &ids)?;
    let tables = rope.at(&positions)?;
    for i in 0..c.num_hidden_layers {
        let h = rms_norm(
            &x,
            w.get(&layer(i, "input_layernorm.weight"))?,
            c.rms_norm_eps,
        )?;
        let a = attention(w, &tables, i, &h, mask.as_ref(), cache.layers[i].as_ref())?;
        cache.layers[i] = Some((a.k, a.v));
        x = (x + a.out)?;
        let h = rms_norm(
            &x,
            w.get(&layer(i, "post_attention_layernorm.weight"))?,
            c.rms_norm_eps,
        )?;
        x = (x + mlp(w, i, &h)?)?;
    }
    cache.len += n;
    let last = rms_norm(
        &x.i((.., n - 1))?.contiguous()?,
        w.get(FINAL_NORM)?,
        c.rms_norm_eps,
    )?;
    Ok(last.matmul(&head.t()?)?.to_dtype(DType::F32)?)
}

/// Greedy decoding with the KV cache: up to `max_new` tokens, stopping after any of `stop`.
pub fn greedy(
    w: &Weights,
    rope: &Rope,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    let head = w.head()?;
    let mut cache = KvCache::default();
    let mut logits = forward_cached(w, rope, &head, prompt, &mut cache)?;
    let mut out = Vec::new();
    for _ in 0..max_new {
        let next = logits.argmax(0)?.to_scalar::<u32>()?;
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        logits = forward_cached(w, rope, &head, &[next], &mut cache)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows fed at once give each row's logits as feeding it alone does, and `select` forks rows.
    #[test]
    fn batched_rows_match_one_row_at_a_time() {
        let c = ModelConfig {
            num_hidden_layers: 2,
            ..ModelConfig::tiny(300)
        };
        let dev = Device::Cpu;
        let w = Weights::random(&c, &dev, DType::F32, 11).unwrap();
        let rope = Rope::new(&c, &dev, DType::F32).unwrap();
        let head = w.head().unwrap();
        let prompt = [5u32, 17, 42, 7, 99];
        let next = [3u32, 250, 3];
        // Reference: each continuation on its own fork of the prompt's cache.
        let mut root = KvCache::default();
        forward_cached(&w, &rope, &head, &prompt, &mut root).unwrap();
        let alone: Vec<Vec<f32>> = next
            .iter()
            .map(|&t| {
                let mut c = root.clone();
                let l = forward_cached(&w, &rope, &head, &[t], &mut c).unwrap();
                let l2 = forward_cached(&w, &rope, &head, &[t + 1], &mut c).unwrap();
                [l.to_vec1::<f32>().unwrap(), l2.to_vec1::<f32>().unwrap()].concat()
            })
            .collect();
        // Batched: one parent broadcast to three rows, then rows 2, 0, 1 reordered by select.
        let mut b = root.select(&[0, 0, 0]).unwrap();
        let l = forward_cached_rows(&w, &rope, &head, &next, 3, &mut b).unwrap();
        let l = l.to_vec2::<f32>().unwrap();
        let order = [2u32, 0, 1];
        let mut b = b.select(&order).unwrap();
        let toks: Vec<u32> = order.iter().map(|&r| next[r as usize] + 1).collect();
        let l2 = forward_cached_rows(&w, &rope, &head, &toks, 3, &mut b).unwrap();
        let l2 = l2.to_vec2::<f32>().unwrap();
        assert_eq!(b.len, prompt.len() + 2);
        for (j, &r) in order.iter().enumerate() {
            let r = r as usize;
            let got = [l[r].clone(), l2[j].clone()].concat();
            let d = got
                .iter()
                .zip(&alone[r])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "row {r}: logits differ by {d}");
        }
        // A head subset scores exactly those rows.
        let sub = head
            .index_select(&Tensor::new(&[250u32, 3], &dev).unwrap(), 0)
            .unwrap();
        let mut c = root.clone();
        let s = forward_cached_rows(&w, &rope, &sub, &[3], 1, &mut c).unwrap();
        let s = s.to_vec2::<f32>().unwrap();
        assert!((s[0][0] - alone[0][250]).abs() < 1e-4 && (s[0][1] - alone[0][3]).abs() < 1e-4);
    }

    #[test]
    fn dropout_drops_its_share_keeps_the_mean_and_repeats_with_its_seed() {
        assert!(Dropout::new(0.0, 1).is_none());
        let x = Tensor::ones((64, 1024), DType::F32, &Device::Cpu).unwrap();
        let a = Dropout::new(0.2, 7).unwrap().apply(&x).unwrap();
        let v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let zeros = v.iter().filter(|&&e| e == 0.0).count() as f64 / v.len() as f64;
        let mean = v.iter().map(|&e| e as f64).sum::<f64>() / v.len() as f64;
        assert!((zeros - 0.2).abs() < 0.01, "dropped {zeros}");
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 1.25).abs() < 1e-6));
        let b = Dropout::new(0.2, 7).unwrap().apply(&x).unwrap();
        let c = Dropout::new(0.2, 8).unwrap().apply(&x).unwrap();
        let same = |p: &Tensor, q: &Tensor| {
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == q.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(&a, &b));
        assert!(!same(&a, &c));
    }
}
