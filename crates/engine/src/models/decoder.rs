//! The decoder-only transformer every supported architecture is an instance of: embedding,
//! N blocks of (norm → attention → optional post-norm → residual, norm → MLP → optional
//! post-norm → residual; or Phi-2's parallel form, x + attn(h) + mlp(h) from one norm), final
//! norm, output projection. Each architecture's file reads its GGUF into these pieces with its
//! own options (biases, fused Q/K/V or gate/up projections, RMSNorm or LayerNorm, QK-norm,
//! post-norms, sliding windows, embedding scale, soft-capping); the forward pass is written
//! once, here.

use crate::batch::BatchInput;
use crate::kv_cache::KvCache;
use crate::layers::activation::{activate, gated, Activation};
use crate::layers::attention::{paged_attention, AttentionParams};
use crate::layers::norm::{rms_norm, Norm};
use crate::layers::rope::Rope;
use crate::layers::vecmath::add_assign;
use crate::layers::{QEmbedding, QLinear};
use crate::lora::{self, LoraSet, Proj};

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

/// The query/key/value projections: three matrices, or one (Phi) whose output rows hold
/// q, k, v one after the other.
// One per layer: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Qkv {
    Separate { wq: QLinear, wk: QLinear, wv: QLinear },
    Fused(QLinear),
}

/// The MLP before the down projection.
pub enum Mlp {
    /// act(gate(x)) * up(x).
    Gated { gate: QLinear, up: QLinear },
    /// One matrix whose output holds gate then up (Phi-3).
    FusedGateUp(QLinear),
    /// act(up(x)) (Phi-2).
    Plain(QLinear),
}

pub struct Block {
    pub attn_norm: Norm,
    pub qkv: Qkv,
    pub wo: QLinear,
    /// Per-head RMS norm of queries and keys (Gemma 3, Qwen 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    /// None: the MLP reads the attention's input norm and both add to the residual at once
    /// (parallel residual, Phi-2).
    pub ffn_norm: Option<Norm>,
    pub mlp: Mlp,
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
    pub output_norm: Norm,
    pub output: QLinear,
}

/// Splits `rows` rows of concatenated parts into one buffer per part width.
fn split_cols(x: &[f32], rows: usize, widths: &[usize]) -> Vec<Vec<f32>> {
    let total: usize = widths.iter().sum();
    let mut out: Vec<Vec<f32>> = widths.iter().map(|w| Vec::with_capacity(rows * w)).collect();
    for row in x.chunks_exact(total).take(rows) {
        let mut at = 0;
        for (o, w) in out.iter_mut().zip(widths) {
            o.extend_from_slice(&row[at..at + w]);
            at += w;
        }
    }
    out
}

impl Decoder {
    /// The matrix `proj` names in layer `layer`, if this model has it (what a LoRA adapter
    /// may update: a fused Q/K/V or gate/up matrix is adapted as one).
    pub fn linear(&self, layer: usize, proj: Proj) -> Option<&QLinear> {
        let b = self.blocks.get(layer)?;
        match (proj, &b.qkv, &b.mlp) {
            (Proj::Q, Qkv::Separate { wq, .. }, _) => Some(wq),
            (Proj::K, Qkv::Separate { wk, .. }, _) => Some(wk),
            (Proj::V, Qkv::Separate { wv, .. }, _) => Some(wv),
            (Proj::Qkv, Qkv::Fused(w), _) => Some(w),
            (Proj::O, ..) => Some(&b.wo),
            (Proj::Gate, _, Mlp::Gated { gate, .. }) => Some(gate),
            (Proj::Up, _, Mlp::Gated { up, .. } | Mlp::FusedGateUp(up) | Mlp::Plain(up)) => Some(up),
            (Proj::Down, ..) => Some(&b.down),
            _ => None,
        }
    }

    /// Runs one step: writes the K/V of every row into `kv` at its slot and returns
    /// `logits_rows.len() × vocab_size` logits.
    pub fn forward(&self, batch: &BatchInput, kv: &mut KvCache) -> Vec<f32> {
        let last = self.hidden(batch, kv);
        let mut logits = self.output.forward(&last, batch.logits_rows.len());
        if let Some(row_loras) = batch.row_loras() {
            let out_loras: Vec<_> = batch.logits_rows.iter().map(|&r| row_loras[r]).collect();
            let (i, o) = (self.output.in_dim(), self.output.out_dim());
            lora::add_deltas(&mut logits, &last, i, o, &out_loras, |a| a.output());
        }
        if let Some(cap) = self.config.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits
    }

    /// The final-normed hidden states of `logits_rows` (`len × hidden_size`): what the output
    /// projection reads, and what a decoder used as an embedder pools.
    pub fn hidden(&self, batch: &BatchInput, kv: &mut KvCache) -> Vec<f32> {
        let _span = tracing::trace_span!("forward", rows = batch.num_rows()).entered();
        let c = &self.config;
        let rows = batch.num_rows();
        let d = c.hidden_size;
        let mut x = self.embed.lookup(&batch.tokens);
        if let Some(s) = c.embed_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let tables: Vec<(Vec<f32>, Vec<f32>)> = self.ropes.iter().map(|r| r.tables(&batch.positions)).collect();
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.kv_dim());
        let row_loras = batch.row_loras();
        for (l, b) in self.blocks.iter().enumerate() {
            // A base matmul over every row, then each row's adapter terms.
            let lin = |w: &QLinear, x: &[f32], proj: Proj| linear_with_lora(w, x, rows, row_loras.as_deref(), l, proj);
            let h = b.attn_norm.apply(&x, c.rms_eps);
            let (mut q, mut k, v) = match &b.qkv {
                Qkv::Separate { wq, wk, wv } => (lin(wq, &h, Proj::Q), lin(wk, &h, Proj::K), lin(wv, &h, Proj::V)),
                Qkv::Fused(w) => {
                    let mut parts = split_cols(&lin(w, &h, Proj::Qkv), rows, &[q_dim, kv_dim, kv_dim]).into_iter();
                    (parts.next().expect("q"), parts.next().expect("k"), parts.next().expect("v"))
                }
            };
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
            let mut o = lin(&b.wo, &a, Proj::O);
            if let Some(w) = &b.post_attn_norm {
                rms_norm(&mut o, w, c.rms_eps);
            }
            let h = match &b.ffn_norm {
                Some(norm) => {
                    add_assign(&mut x, &o);
                    norm.apply(&x, c.rms_eps)
                }
                None => h,
            };
            let m = match &b.mlp {
                Mlp::Gated { gate, up } => {
                    let mut g = lin(gate, &h, Proj::Gate);
                    gated(c.activation, &mut g, &lin(up, &h, Proj::Up));
                    g
                }
                Mlp::FusedGateUp(w) => {
                    let ffn = w.out_dim() / 2;
                    let mut parts = split_cols(&lin(w, &h, Proj::Up), rows, &[ffn, ffn]).into_iter();
                    let (mut g, u) = (parts.next().expect("gate"), parts.next().expect("up"));
                    gated(c.activation, &mut g, &u);
                    g
                }
                Mlp::Plain(up) => {
                    let mut u = lin(up, &h, Proj::Up);
                    activate(c.activation, &mut u);
                    u
                }
            };
            let mut dn = lin(&b.down, &m, Proj::Down);
            if let Some(w) = &b.post_ffn_norm {
                rms_norm(&mut dn, w, c.rms_eps);
            }
            if b.ffn_norm.is_none() {
                add_assign(&mut x, &o);
            }
            add_assign(&mut x, &dn);
        }
        let mut last = Vec::with_capacity(batch.logits_rows.len() * d);
        for &r in &batch.logits_rows {
            last.extend_from_slice(&x[r * d..(r + 1) * d]);
        }
        self.output_norm.apply(&last, c.rms_eps)
    }
}

/// `w · x` for `rows` rows, plus each row's LoRA terms for `proj` of layer `layer`.
fn linear_with_lora(
    w: &QLinear,
    x: &[f32],
    rows: usize,
    row_loras: Option<&[Option<&LoraSet>]>,
    layer: usize,
    proj: Proj,
) -> Vec<f32> {
    let mut y = w.forward(x, rows);
    if let Some(sets) = row_loras {
        lora::add_deltas(&mut y, x, w.in_dim(), w.out_dim(), sets, |a| a.pair(layer, proj));
    }
    y
}
