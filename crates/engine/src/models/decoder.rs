//! The decoder-only transformer every supported architecture is an instance of: embedding,
//! N blocks of (norm → attention → optional post-norm → residual, norm → gated MLP → optional
//! post-norm → residual), final norm, output projection. Each architecture's file reads its
//! GGUF into these pieces with its own options (biases, QK-norm, post-norms, sliding windows,
//! embedding scale, soft-capping); the forward pass is written once, here.

use crate::batch::BatchInput;
use crate::kv_cache::KvCache;
use crate::layers::activation::{gated, Activation};
use crate::layers::attention::{paged_attention, AttentionParams};
use crate::layers::norm::{rms_norm, rms_norm_to};
use crate::layers::rope::Rope;
use crate::layers::vecmath::add_assign;
use crate::layers::{QEmbedding, QLinear};

/// Shape and numerics shared by every layer.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub activation: Activation,
    /// Multiplies the embeddings (Gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f32>,
    /// Final logit soft-capping (Gemma 2).
    pub final_softcap: Option<f32>,
}

impl DecoderConfig {
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

pub struct Block {
    pub attn_norm: Vec<f32>,
    pub wq: QLinear,
    pub wk: QLinear,
    pub wv: QLinear,
    pub wo: QLinear,
    /// Per-head RMS norm of queries and keys (Gemma 3, Qwen 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: QLinear,
    pub up: QLinear,
    pub down: QLinear,
    pub post_ffn_norm: Option<Vec<f32>>,
    /// Index into `Decoder::ropes`: layers may differ (Gemma 3's local vs global layers).
    pub rope: usize,
    pub attn: AttentionParams,
}

pub struct Decoder {
    pub config: DecoderConfig,
    pub embed: QEmbedding,
    pub blocks: Vec<Block>,
    pub ropes: Vec<Rope>,
    pub output_norm: Vec<f32>,
    pub output: QLinear,
}

impl Decoder {
    /// Runs one step: writes the K/V of every row into `kv` at its slot and returns
    /// `logits_rows.len() × vocab_size` logits.
    pub fn forward(&self, batch: &BatchInput, kv: &mut KvCache) -> Vec<f32> {
        let _span = tracing::trace_span!("forward", rows = batch.num_rows()).entered();
        let c = &self.config;
        let rows = batch.num_rows();
        let d = c.hidden_size;
        let mut x = self.embed.lookup(&batch.tokens);
        if let Some(s) = c.embed_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let tables: Vec<(Vec<f32>, Vec<f32>)> = self.ropes.iter().map(|r| r.tables(&batch.positions)).collect();
        for (l, b) in self.blocks.iter().enumerate() {
            let h = rms_norm_to(&x, &b.attn_norm, c.rms_eps);
            let mut q = b.wq.forward(&h, rows);
            let mut k = b.wk.forward(&h, rows);
            let v = b.wv.forward(&h, rows);
            if let Some(w) = &b.q_norm {
                rms_norm(&mut q, w, c.rms_eps);
            }
            if let Some(w) = &b.k_norm {
                rms_norm(&mut k, w, c.rms_eps);
            }
            let (cos, sin) = &tables[b.rope];
            self.ropes[b.rope].apply(&mut q, c.head_dim, cos, sin);
            self.ropes[b.rope].apply(&mut k, c.head_dim, cos, sin);
            kv.write(l, &batch.slots, &k, &v);
            let a = paged_attention(&q, batch, kv.layer(l), kv.block_size(), &b.attn);
            let mut o = b.wo.forward(&a, rows);
            if let Some(w) = &b.post_attn_norm {
                rms_norm(&mut o, w, c.rms_eps);
            }
            add_assign(&mut x, &o);

            let h = rms_norm_to(&x, &b.ffn_norm, c.rms_eps);
            let mut g = b.gate.forward(&h, rows);
            let u = b.up.forward(&h, rows);
            gated(c.activation, &mut g, &u);
            let mut dn = b.down.forward(&g, rows);
            if let Some(w) = &b.post_ffn_norm {
                rms_norm(&mut dn, w, c.rms_eps);
            }
            add_assign(&mut x, &dn);
        }
        let mut last = Vec::with_capacity(batch.logits_rows.len() * d);
        for &r in &batch.logits_rows {
            last.extend_from_slice(&x[r * d..(r + 1) * d]);
        }
        rms_norm(&mut last, &self.output_norm, c.rms_eps);
        let mut logits = self.output.forward(&last, batch.logits_rows.len());
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits
    }
}
