//! Physical K/V storage: per layer, one preallocated pool of `num_blocks × block_size` token
//! slots, each holding `kv_dim` keys and `kv_dim` values. The block manager decides which
//! sequence owns which block; the model writes a token's K/V at its slot and the attention
//! kernel reads a sequence's keys through its block table.

pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    kv_dim: usize,
    layers: Vec<LayerKv>,
}

pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize) -> Self {
        let slots = num_blocks * block_size * kv_dim;
        let layers = (0..num_layers)
            .map(|_| LayerKv { k: vec![0f32; slots], v: vec![0f32; slots] })
            .collect();
        Self { block_size, num_blocks, kv_dim, layers }
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
        self.kv_dim
    }

    /// Stores `k`/`v` rows (`slots.len() × kv_dim`) at the given slots of one layer.
    pub fn write(&mut self, layer: usize, slots: &[usize], k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
        let l = &mut self.layers[layer];
        for (i, &slot) in slots.iter().enumerate() {
            l.k[slot * d..(slot + 1) * d].copy_from_slice(&k[i * d..(i + 1) * d]);
            l.v[slot * d..(slot + 1) * d].copy_from_slice(&v[i * d..(i + 1) * d]);
        }
    }

    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }
}
