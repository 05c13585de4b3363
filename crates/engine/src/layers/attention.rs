//! Paged causal attention for a flattened batch. Each query row reads its own sequence's keys
//! through the block table, from its window start to its own position, in position order:
//! a row's output is computed the same way whatever else is in the batch and however its
//! prompt was chunked, because the K/V of every earlier position is already in the cache.

use super::pool::Pool;
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
    let out_ptr = out.as_mut_ptr() as usize;
    // One task per (row, KV head): a decode step of one sequence still uses every core.
    let task = |row: usize, kvh: usize| {
        // SAFETY: each task writes its own row's heads of this KV head, disjoint from others.
        let o = unsafe { std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(row * q_dim + kvh * group * hd), group * hd) };
        let pos = batch.positions[row] as usize;
        let table = &batch.block_tables[batch.row_seq[row]];
        let lo = match p.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let n = pos + 1 - lo;
        let offsets: Vec<usize> = (lo..=pos).map(|j| (table[j / block_size] as usize * block_size + j % block_size) * kv_dim).collect();
        // The query heads that share a KV head read each key and value row once, together
        // (grouped-query attention); each head's arithmetic is unchanged.
        let heads = kvh * group..(kvh + 1) * group;
        let mut scores = vec![0f32; group * n];
        for (i, &off) in offsets.iter().enumerate() {
            let k = &kv.k[off + kvh * hd..off + (kvh + 1) * hd];
            for (g, h) in heads.clone().enumerate() {
                let mut v = dot(&q[row * q_dim + h * hd..row * q_dim + (h + 1) * hd], k) * p.scale;
                if let Some(cap) = p.softcap {
                    v = cap * (v / cap).tanh();
                }
                scores[g * n + i] = v;
            }
        }
        let mut sums = vec![0f32; group];
        for (g, sum) in sums.iter_mut().enumerate() {
            let sc = &mut scores[g * n..(g + 1) * n];
            let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for s in sc.iter_mut() {
                *s = (*s - max).exp();
                *sum += *s;
            }
        }
        for (i, &off) in offsets.iter().enumerate() {
            let v = &kv.v[off + kvh * hd..off + (kvh + 1) * hd];
            for (g, og) in o.chunks_exact_mut(hd).enumerate() {
                axpy(scores[g * n + i], v, og);
            }
        }
        for (og, sum) in o.chunks_exact_mut(hd).zip(&sums) {
            let inv = 1.0 / sum;
            og.iter_mut().for_each(|x| *x *= inv);
        }
    };
    let num_kv = p.num_kv_heads;
    Pool::global().run(batch.num_rows() * num_kv, &|tasks| tasks.for_each(|t| task(t / num_kv, t % num_kv)));
    out
}
