//! Physical K/V storage: per layer, one preallocated pool of `num_blocks × block_size` token
//! slots, each holding `kv_dim` keys and `kv_dim` values. The block manager decides which
//! sequence owns which block; the model writes a token's K/V at its slot and the attention
//! kernel reads a sequence's keys through its block table.
//!
//! Layout per layer, per block and KV head (so one head's part of a block is contiguous):
//! keys transposed (`head_dim × block_size`: one dimension of the block's keys is a vector
//! over its slots, which is how the attention kernel scores them), values row-major
//! (`block_size × head_dim`).

use half::f16;

use crate::layers::lanes::KvElem;

/// The element type of the cache. f16 (llama.cpp's default) halves memory and the bytes
/// attention reads; f32 keeps keys and values exact (the F32 architecture tests use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F16,
    F32,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

/// One layer's keys or values.
pub enum KvData {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvData {
    fn new(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F16 => KvData::F16(vec![f16::ZERO; len]),
            KvDtype::F32 => KvData::F32(vec![0.0; len]),
        }
    }
}

pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    num_kv_heads: usize,
    head_dim: usize,
    layers: Vec<LayerKv>,
}

pub struct LayerKv {
    pub k: KvData,
    pub v: KvData,
}

impl KvCache {
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> Self {
        let slots = num_blocks * block_size * num_kv_heads * head_dim;
        let layers =
            (0..num_layers).map(|_| LayerKv { k: KvData::new(dtype, slots), v: KvData::new(dtype, slots) }).collect();
        Self { block_size, num_blocks, num_kv_heads, head_dim, layers }
    }

    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(num_layers: usize, block_size: usize, kv_dim: usize, dtype: KvDtype) -> usize {
        num_layers * 2 * block_size * kv_dim * dtype.size()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Stores `k`/`v` rows (`slots.len() × kv_dim`) at the given slots of one layer.
    pub fn write(&mut self, layer: usize, slots: &[usize], k: &[f32], v: &[f32]) {
        let (nkv, hd, bs) = (self.num_kv_heads, self.head_dim, self.block_size);
        let l = &mut self.layers[layer];
        match (&mut l.k, &mut l.v) {
            (KvData::F16(kc), KvData::F16(vc)) => write_rows(kc, vc, slots, k, v, nkv, hd, bs),
            (KvData::F32(kc), KvData::F32(vc)) => write_rows(kc, vc, slots, k, v, nkv, hd, bs),
            _ => unreachable!("keys and values share one type"),
        }
    }

    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }
}

#[allow(clippy::too_many_arguments)]
fn write_rows<E: KvElem>(
    kc: &mut [E],
    vc: &mut [E],
    slots: &[usize],
    k: &[f32],
    v: &[f32],
    nkv: usize,
    hd: usize,
    bs: usize,
) {
    let d = nkv * hd;
    for (i, &slot) in slots.iter().enumerate() {
        let (block, at) = (slot / bs, slot % bs);
        for (h, (key, value)) in
            k[i * d..(i + 1) * d].chunks_exact(hd).zip(v[i * d..(i + 1) * d].chunks_exact(hd)).enumerate()
        {
            let first = (block * nkv + h) * hd * bs;
            for (j, &x) in key.iter().enumerate() {
                kc[first + j * bs + at] = E::from_f32(x);
            }
            for (o, &x) in vc[first + at * hd..first + (at + 1) * hd].iter_mut().zip(value) {
                *o = E::from_f32(x);
            }
        }
    }
}
