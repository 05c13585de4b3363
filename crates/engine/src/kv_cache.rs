//! Physical K/V storage: per layer, one preallocated pool of `num_blocks × block_size` token
//! slots, each holding `kv_dim` keys and `kv_dim` values. The block manager decides which
//! sequence owns which block; the model writes a token's K/V at its slot and the attention
//! kernel reads a sequence's keys through its block table.
//!
//! Layout per layer, per block and KV head (so one head's part of a block is contiguous):
//! keys transposed (`head_dim × block_size`: one dimension of the block's keys is a vector
//! over its slots, which is how the attention kernel scores them), values row-major
//! (`block_size × head_dim`).

pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    num_kv_heads: usize,
    head_dim: usize,
    layers: Vec<LayerKv>,
}

pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        let slots = num_blocks * block_size * num_kv_heads * head_dim;
        let layers = (0..num_layers)
            .map(|_| LayerKv { k: vec![0f32; slots], v: vec![0f32; slots] })
            .collect();
        Self { block_size, num_blocks, num_kv_heads, head_dim, layers }
    }

    /// Bytes one block takes across all layers (K and V, f32).
    pub fn bytes_per_block(num_layers: usize, block_size: usize, kv_dim: usize) -> usize {
        num_layers * 2 * block_size * kv_dim * std::mem::size_of::<f32>()
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
        let (d, hd, bs) = (self.kv_dim(), self.head_dim, self.block_size);
        let l = &mut self.layers[layer];
        for (i, &slot) in slots.iter().enumerate() {
            let (block, at) = (slot / bs, slot % bs);
            for (h, (key, value)) in k[i * d..(i + 1) * d].chunks_exact(hd).zip(v[i * d..(i + 1) * d].chunks_exact(hd)).enumerate() {
                let first = (block * self.num_kv_heads + h) * hd * bs;
                for (j, &x) in key.iter().enumerate() {
                    l.k[first + j * bs + at] = x;
                }
                l.v[first + at * hd..first + (at + 1) * hd].copy_from_slice(value);
            }
        }
    }

    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }
}
