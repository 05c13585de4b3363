//! BERT-family encoders (llama.cpp's `bert` GGUF layout: all-MiniLM, bge, e5): token +
//! position + token-type embeddings and a LayerNorm, then N post-norm blocks of bidirectional
//! self-attention and a GELU MLP, then pooling (mean, CLS or last, as the GGUF's
//! `bert.pooling_type` says) and L2 normalization. Used by `embedding::EmbeddingModel`.
//!
//! Batch invariance: the matmuls compute each row on its own (qlinear.rs) and attention runs
//! per (sequence, head), so a sequence's embedding does not depend on what shares its batch.

use std::sync::Mutex;

use crate::error::{EngineError, Result};
use crate::layers::activation::{activate, Activation};
use crate::layers::norm::Norm;
use crate::layers::pool::Pool;
use crate::layers::vecmath::{add_assign, axpy, dot, exp};
use crate::layers::{QEmbedding, QLinear};
use crate::loader::Gguf;

/// How a sequence's token states become one vector (GGUF `*.pooling_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Last,
}

impl Pooling {
    pub fn from_gguf(v: usize) -> Option<Self> {
        match v {
            1 => Some(Pooling::Mean),
            2 => Some(Pooling::Cls),
            3 => Some(Pooling::Last),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub context_length: usize,
    pub eps: f32,
    pub pooling: Pooling,
}

struct Layer {
    q: QLinear,
    k: QLinear,
    v: QLinear,
    o: QLinear,
    attn_norm: Norm,
    up: QLinear,
    down: QLinear,
    out_norm: Norm,
}

pub struct Bert {
    pub config: BertConfig,
    tokens: QEmbedding,
    positions: QEmbedding,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

fn layer_norm(g: &mut Gguf, name: &str) -> Result<Norm> {
    Ok(Norm::Layer { weight: g.vector(&format!("{name}.weight"))?, bias: g.vector(&format!("{name}.bias"))? })
}

fn linear(g: &mut Gguf, name: &str) -> Result<QLinear> {
    let path = g.path.clone();
    let w = g.tensor(&format!("{name}.weight"))?;
    let b = g.opt_vector(&format!("{name}.bias"))?;
    QLinear::new(w, b, &format!("{name}.weight"), &path)
}

impl Bert {
    pub fn load(g: &mut Gguf) -> Result<Self> {
        let arch = g.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let path = g.path.clone();
        let bad = |message: String| EngineError::Gguf { path: path.clone(), message };
        let hidden_size = g.usize(&key("embedding_length"))?;
        let num_heads = g.usize(&key("attention.head_count"))?;
        if num_heads == 0 || hidden_size % num_heads != 0 {
            return Err(bad(format!("{num_heads} heads do not divide the hidden size {hidden_size}")));
        }
        let pooling = match g.opt_usize(&key("pooling_type"))? {
            None => Pooling::Mean,
            Some(p) => Pooling::from_gguf(p).ok_or_else(|| bad(format!("unsupported pooling type {p}")))?,
        };
        let tokens = QEmbedding::new(g.tensor("token_embd.weight")?, "token_embd.weight", &path)?;
        let positions = QEmbedding::new(g.tensor("position_embd.weight")?, "position_embd.weight", &path)?;
        let token_type = match g.opt_tensor("token_types.weight")? {
            // Every input is one segment: type 0.
            Some(t) => QEmbedding::new(t, "token_types.weight", &path)?.lookup(&[0]),
            None => vec![0.0; hidden_size],
        };
        for (name, dim) in
            [("token_embd", tokens.dim()), ("position_embd", positions.dim()), ("token_types", token_type.len())]
        {
            if dim != hidden_size {
                return Err(bad(format!("`{name}.weight` rows have {dim} values, expected {hidden_size}")));
            }
        }
        let config = BertConfig {
            vocab_size: tokens.vocab_size(),
            hidden_size,
            num_layers: g.usize(&key("block_count"))?,
            num_heads,
            // Positions past the table have no embedding.
            context_length: g.opt_usize(&key("context_length"))?.unwrap_or(512).min(positions.vocab_size()),
            eps: g.opt_f32(&key("attention.layer_norm_epsilon"))?.unwrap_or(1e-12),
            pooling,
        };
        let embed_norm = layer_norm(g, "token_embd_norm")?;
        let layers = (0..config.num_layers)
            .map(|l| {
                let n = |s: &str| format!("blk.{l}.{s}");
                Ok(Layer {
                    q: linear(g, &n("attn_q"))?,
                    k: linear(g, &n("attn_k"))?,
                    v: linear(g, &n("attn_v"))?,
                    o: linear(g, &n("attn_output"))?,
                    attn_norm: layer_norm(g, &n("attn_output_norm"))?,
                    up: linear(g, &n("ffn_up"))?,
                    down: linear(g, &n("ffn_down"))?,
                    out_norm: layer_norm(g, &n("layer_output_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for (l, layer) in layers.iter().enumerate() {
            let dims = [layer.q.out_dim(), layer.k.out_dim(), layer.v.out_dim(), layer.o.in_dim(), layer.up.in_dim()];
            if dims.iter().any(|&d| d != hidden_size) || layer.down.in_dim() != layer.up.out_dim() {
                return Err(bad(format!("block {l}: projection shapes do not match the hidden size {hidden_size}")));
            }
        }
        Ok(Self { config, tokens, positions, token_type, embed_norm, layers })
    }

    /// The last hidden states of a batch of sequences: `tokens` holds them one after
    /// another, `lens` their lengths; returns `tokens.len() × hidden_size`.
    pub fn forward(&self, tokens: &[u32], lens: &[usize]) -> Vec<f32> {
        let c = &self.config;
        let rows = tokens.len();
        assert_eq!(lens.iter().sum::<usize>(), rows, "sequence lengths must cover the tokens");
        let positions: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
        let mut x = self.tokens.lookup(tokens);
        add_assign(&mut x, &self.positions.lookup(&positions));
        for row in x.chunks_exact_mut(c.hidden_size) {
            add_assign(row, &self.token_type);
        }
        let mut x = self.embed_norm.apply(&x, c.eps);
        for layer in &self.layers {
            let (q, k, v) = (layer.q.forward(&x, rows), layer.k.forward(&x, rows), layer.v.forward(&x, rows));
            let a = attention(&q, &k, &v, lens, c.num_heads, c.hidden_size / c.num_heads);
            add_assign(&mut x, &layer.o.forward(&a, rows));
            x = layer.attn_norm.apply(&x, c.eps);
            let mut u = layer.up.forward(&x, rows);
            activate(Activation::GeluErf, &mut u);
            add_assign(&mut x, &layer.down.forward(&u, rows));
            x = layer.out_norm.apply(&x, c.eps);
        }
        x
    }
}

/// Pools each sequence's rows of `states` (`lens` as in `forward`) into one L2-normalized
/// vector of `dim` values.
pub fn pool(states: &[f32], lens: &[usize], dim: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0;
    for &n in lens {
        let rows = &states[start * dim..(start + n) * dim];
        let mut v = match pooling {
            Pooling::Cls => rows[..dim].to_vec(),
            Pooling::Last => rows[(n - 1) * dim..].to_vec(),
            Pooling::Mean => {
                let mut acc = vec![0f32; dim];
                rows.chunks_exact(dim).for_each(|r| add_assign(&mut acc, r));
                acc.iter_mut().for_each(|a| *a /= n as f32);
                acc
            }
        };
        let norm = dot(&v, &v).sqrt().max(1e-12);
        v.iter_mut().for_each(|a| *a /= norm);
        out.push(v);
        start += n;
    }
    out
}

/// Bidirectional attention within each sequence, one pool task per (sequence, head).
fn attention(q: &[f32], k: &[f32], v: &[f32], lens: &[usize], heads: usize, hd: usize) -> Vec<f32> {
    let d = heads * hd;
    let starts: Vec<usize> = lens.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
    let tasks: Vec<(usize, usize)> = (0..lens.len()).flat_map(|s| (0..heads).map(move |h| (s, h))).collect();
    let done: Mutex<Vec<(usize, Vec<f32>)>> = Mutex::new(Vec::with_capacity(tasks.len()));
    let scale = 1.0 / (hd as f32).sqrt();
    Pool::global().run(tasks.len(), &|range| {
        for t in range {
            let (s, h) = tasks[t];
            let (start, n) = (starts[s], lens[s]);
            fn head(m: &[f32], at: usize, hd: usize) -> &[f32] {
                &m[at..at + hd]
            }
            let off = |i: usize| (start + i) * d + h * hd;
            // Keys transposed (`hd` rows of `n`): a query's scores are `hd` vector updates
            // across all keys, each score summed over the head dimension in order.
            let mut kt = vec![0f32; hd * n];
            for j in 0..n {
                for (p, x) in head(k, off(j), hd).iter().enumerate() {
                    kt[p * n + j] = *x;
                }
            }
            let mut out = vec![0f32; n * hd];
            let mut scores = vec![0f32; n];
            for i in 0..n {
                scores.iter_mut().for_each(|s| *s = 0.0);
                for (p, qp) in head(q, off(i), hd).iter().enumerate() {
                    axpy(*qp, &kt[p * n..(p + 1) * n], &mut scores);
                }
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(s * scale));
                scores.iter_mut().for_each(|s| *s = exp(*s * scale - max));
                let sum: f32 = scores.iter().sum();
                let oi = &mut out[i * hd..(i + 1) * hd];
                for (j, p) in scores.iter().enumerate() {
                    axpy(p / sum, head(v, off(j), hd), oi);
                }
            }
            done.lock().unwrap_or_else(|e| e.into_inner()).push((t, out));
        }
    });
    let mut a = vec![0f32; q.len()];
    for (t, out) in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let (s, h) = tasks[t];
        for (i, row) in out.chunks_exact(hd).enumerate() {
            a[(starts[s] + i) * d + h * hd..][..hd].copy_from_slice(row);
        }
    }
    a
}
