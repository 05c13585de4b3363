//! Reads the hyperparameters and tensors that every llama.cpp-converted decoder shares
//! (`{arch}.block_count`, `blk.N.attn_q.weight`, …) and assembles a `Decoder`, letting each
//! architecture choose per-layer options. Keeps the per-architecture files to what differs.

use super::decoder::{Block, Decoder, DecoderConfig, Mlp, Qkv};
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::layers::attention::AttentionParams;
use crate::layers::norm::Norm;
use crate::layers::rope::Rope;
use crate::layers::{QEmbedding, QLinear};
use crate::loader::Gguf;

/// What an architecture decides per layer.
#[derive(Debug, Clone, Default)]
pub struct BlockOptions {
    pub qk_norm: bool,
    pub post_norms: bool,
    pub window: Option<usize>,
    /// Overrides the GGUF rope base for this layer (Gemma 3 local layers).
    pub rope_base: Option<f32>,
    /// Overrides the 1/sqrt(head_dim) score scale.
    pub attn_scale: Option<f32>,
    /// Attention-score soft-capping, cap·tanh(s/cap) (Gemma 2).
    pub attn_softcap: Option<f32>,
}

pub struct ArchReader {
    pub config: DecoderConfig,
    rope_base: f32,
    rope_scale: f32,
    rope_dim: usize,
    /// Llama's NORM rotary layout (adjacent pairs) instead of NEOX.
    pub rope_interleaved: bool,
    /// `ffn_up` holds gate then up (Phi-3); without it and without `ffn_gate` the MLP is
    /// ungated (Phi-2).
    pub fused_gate_up: bool,
    /// LayerNorm with bias and one norm per block feeding attention and MLP in parallel (Phi-2).
    pub parallel_layer_norm: bool,
    /// Per-dimension rotary frequency divisors (Phi-3 LongRoPE's `rope_factors_*`).
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl ArchReader {
    pub fn new(g: &Gguf, arch: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = g.usize(&key("embedding_length"))?;
        let num_heads = g.usize(&key("attention.head_count"))?;
        let num_kv_heads = g.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
        let head_dim = g.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden_size / num_heads);
        let rope_scale =
            match (g.opt_str(&key("rope.scaling.type")).as_deref(), g.opt_f32(&key("rope.scaling.factor"))?) {
                (Some("linear"), Some(f)) if f > 0.0 => 1.0 / f,
                _ => 1.0,
            };
        let config = DecoderConfig {
            architecture: arch.to_string(),
            vocab_size: 0, // set from the embedding table in `build`
            hidden_size,
            num_layers: g.usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            context_length: g.opt_usize(&key("context_length"))?.unwrap_or(2048),
            rms_eps: match g.opt_f32(&key("attention.layer_norm_rms_epsilon"))? {
                Some(e) => e,
                None => g.opt_f32(&key("attention.layer_norm_epsilon"))?.unwrap_or(1e-6),
            },
            activation: Activation::Silu,
            embed_scale: None,
            final_softcap: None,
        };
        Ok(Self {
            rope_base: g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_dim: g.opt_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim),
            rope_scale,
            rope_interleaved: false,
            fused_gate_up: false,
            parallel_layer_norm: false,
            rope_freq_factors: None,
            config,
        })
    }

    pub fn build(
        mut self,
        g: &mut Gguf,
        activation: Activation,
        embed_scale: Option<f32>,
        final_softcap: Option<f32>,
        options: impl Fn(usize, &DecoderConfig) -> Result<BlockOptions>,
    ) -> Result<Decoder> {
        let path = g.path.clone();
        self.config.activation = activation;
        self.config.embed_scale = embed_scale;
        self.config.final_softcap = final_softcap;
        let (embed, output) = if g.has_tensor("output.weight") {
            let embed = QEmbedding::new(g.tensor("token_embd.weight")?, "token_embd.weight", &path)?;
            let bias = g.opt_vector("output.bias")?;
            (embed, QLinear::load(g, "output.weight", bias)?)
        } else {
            QEmbedding::load_tied(g, "token_embd.weight")?
        };
        let output = output.with_profile_op(crate::profile::Op::Output);
        self.config.vocab_size = embed.vocab_size();
        let parallel = self.parallel_layer_norm;
        let norm = |g: &mut Gguf, name: &str| -> Result<Norm> {
            let weight = g.vector(&format!("{name}.weight"))?;
            Ok(if parallel {
                Norm::Layer { weight, bias: g.vector(&format!("{name}.bias"))? }
            } else {
                Norm::Rms(weight)
            })
        };
        let output_norm = norm(g, "output_norm")?;
        let c = self.config.clone();
        let mut ropes: Vec<(u32, Rope)> = Vec::new();
        let mut blocks = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let o = options(l, &c)?;
            let (base, scale) = match o.rope_base {
                Some(b) => (b, 1.0),
                None => (self.rope_base, self.rope_scale),
            };
            let rope_key = base.to_bits() ^ scale.to_bits().rotate_left(16);
            let rope = match ropes.iter().position(|(k, _)| *k == rope_key) {
                Some(i) => i,
                None => {
                    ropes.push((
                        rope_key,
                        Rope::with_layout(self.rope_dim, base, scale, self.rope_interleaved)
                            .with_freq_factors(self.rope_freq_factors.as_deref()),
                    ));
                    ropes.len() - 1
                }
            };
            let lin = |g: &mut Gguf, name: &str, bias: bool| -> Result<QLinear> {
                let w = format!("blk.{l}.{name}.weight");
                let b = if bias { g.opt_vector(&format!("blk.{l}.{name}.bias"))? } else { None };
                QLinear::load(g, &w, b)
            };
            let qkv = if g.has_tensor(&format!("blk.{l}.attn_qkv.weight")) {
                Qkv::Fused(lin(g, "attn_qkv", true)?)
            } else {
                Qkv::Separate { wq: lin(g, "attn_q", true)?, wk: lin(g, "attn_k", true)?, wv: lin(g, "attn_v", true)? }
            };
            let wo = lin(g, "attn_output", true)?;
            let mlp = if self.fused_gate_up {
                Mlp::FusedGateUp(lin(g, "ffn_up", false)?)
            } else if g.has_tensor(&format!("blk.{l}.ffn_gate.weight")) {
                Mlp::Gated { gate: lin(g, "ffn_gate", false)?, up: lin(g, "ffn_up", false)? }
            } else {
                Mlp::Plain(lin(g, "ffn_up", true)?)
            };
            let down = lin(g, "ffn_down", true)?;
            let attn_norm = norm(g, &format!("blk.{l}.attn_norm"))?;
            let ffn_norm = if parallel { None } else { Some(norm(g, &format!("blk.{l}.ffn_norm"))?) };
            let mut vec = |name: &str| g.vector(&format!("blk.{l}.{name}.weight"));
            blocks.push(Block {
                attn_norm,
                q_norm: if o.qk_norm { Some(vec("attn_q_norm")?) } else { None },
                k_norm: if o.qk_norm { Some(vec("attn_k_norm")?) } else { None },
                post_attn_norm: if o.post_norms { Some(vec("post_attention_norm")?) } else { None },
                ffn_norm,
                post_ffn_norm: if o.post_norms { Some(vec("post_ffw_norm")?) } else { None },
                qkv,
                wo,
                mlp,
                down,
                rope,
                attn: AttentionParams {
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    scale: o.attn_scale.unwrap_or(1.0 / (c.head_dim as f32).sqrt()),
                    softcap: o.attn_softcap,
                    window: o.window,
                },
            });
        }
        Ok(Decoder {
            config: self.config,
            embed,
            blocks,
            ropes: ropes.into_iter().map(|(_, r)| r).collect(),
            output_norm,
            output,
        })
    }
}
