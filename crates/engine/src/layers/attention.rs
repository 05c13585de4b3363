//! Paged causal attention for a flattened batch. Each query row reads its own sequence's keys
//! through the block table, from its window start to its own position, in position order:
//! a row's output is computed the same way whatever else is in the batch and however its
//! prompt was chunked, because the K/V of every earlier position is already in the cache.

use rayon::prelude::*;

use super::vecmath::{axpy, dot};
use crate::batch::BatchInput;
use crate::kv_cache::LayerKv;

#[derive(Debug, Clone)]
pub struct AttentionParams {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Soft-capping of scores (Gemma 2): `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
}

/// `q`: `rows × num_heads*head_dim` (already rotated); returns the same shape.
pub fn paged_attention(q: &[f32], batch: &BatchInput, kv: &LayerKv, block_size: usize, p: &AttentionParams) -> Vec<f32> {
    let _span = tracing::trace_span!("attention", rows = batch.num_rows()).entered();
    let _timer = crate::profile::timer(crate::profile::Op::Attention);
    let hd = p.head_dim;
    let q_dim = p.num_heads * hd;
    let kv_dim = p.num_kv_heads * hd;
    let group = p.num_heads / p.num_kv_heads;
    let mut out = vec![0f32; batch.num_rows() * q_dim];
    out.par_chunks_mut(q_dim).enumerate().for_each(|(row, out_row)| {
        let pos = batch.positions[row] as usize;
        let table = &batch.block_tables[batch.row_seq[row]];
        let lo = match p.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let n = pos + 1 - lo;
        let slot_of = |j: usize| table[j / block_size] as usize * block_size + j % block_size;
        let mut scores = vec![0f32; n];
        for h in 0..p.num_heads {
            let qh = &q[row * q_dim + h * hd..row * q_dim + (h + 1) * hd];
            let kvh = h / group;
            let mut max = f32::NEG_INFINITY;
            for (i, s) in scores.iter_mut().enumerate() {
                let slot = slot_of(lo + i);
                let k = &kv.k[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
                let mut v = dot(qh, k) * p.scale;
                if let Some(cap) = p.softcap {
                    v = cap * (v / cap).tanh();
                }
                *s = v;
                max = max.max(v);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out_row[h * hd..(h + 1) * hd];
            for (i, s) in scores.iter().enumerate() {
                let slot = slot_of(lo + i);
                let v = &kv.v[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
                axpy(*s, v, o);
            }
            let inv = 1.0 / sum;
            for x in o.iter_mut() {
                *x *= inv;
            }
        }
    });
    out
}
