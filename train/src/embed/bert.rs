//! A BERT encoder (the all-MiniLM-L6-v2 shape) on candle, with Hugging Face tensor names.
//! Inference only: sentence embeddings for item text.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Option<String>,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
    heads: usize,
}

impl Layer {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let h = c.hidden_size;
        let ln = |vb: VarBuilder| layer_norm(h, c.layer_norm_eps, vb);
        Ok(Layer {
            query: linear(h, h, vb.pp("attention.self.query"))?,
            key: linear(h, h, vb.pp("attention.self.key"))?,
            value: linear(h, h, vb.pp("attention.self.value"))?,
            attn_out: linear(h, h, vb.pp("attention.output.dense"))?,
            attn_norm: ln(vb.pp("attention.output.LayerNorm"))?,
            inter: linear(h, c.intermediate_size, vb.pp("intermediate.dense"))?,
            out: linear(c.intermediate_size, h, vb.pp("output.dense"))?,
            out_norm: ln(vb.pp("output.LayerNorm"))?,
            heads: c.num_attention_heads,
        })
    }

    /// `mask` is additive, shape (batch, 1, 1, seq): 0 for real tokens, a large negative for padding.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let hd = h / self.heads;
        let split = |t: Tensor| {
            t.reshape((b, s, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let inner = self.inter.forward(&x)?.gelu_erf()?;
        self.out_norm.forward(&(self.out.forward(&inner)? + x)?)
    }
}

pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    pub config: BertConfig,
}

impl Bert {
    pub fn load(vb: VarBuilder, config: BertConfig) -> Result<Self> {
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        Ok(Bert {
            word: embedding(config.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            norm: layer_norm(h, config.layer_norm_eps, e.pp("LayerNorm"))?,
            layers: (0..config.num_hidden_layers)
                .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), &config))
                .collect::<Result<_>>()?,
            config,
        })
    }

    /// Token ids and attention mask (1 = real token), both (batch, seq) u32; returns the mean of the last
    /// hidden states over real tokens only, L2-normalised: (batch, hidden).
    pub fn embed(&self, ids: &Tensor, attention: &Tensor) -> Result<Tensor> {
        let (_, s) = ids.dims2()?;
        let dev = ids.device();
        let positions = Tensor::arange(0u32, s as u32, dev)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?;
        let mut x = self.norm.forward(&x)?;
        let maskf = attention.to_dtype(DType::F32)?;
        let additive = ((maskf.ones_like()? - &maskf)? * -1e9)?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        for layer in &self.layers {
            x = layer.forward(&x, &additive)?;
        }
        let m = maskf.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        mean.broadcast_div(&norm)
    }
}
