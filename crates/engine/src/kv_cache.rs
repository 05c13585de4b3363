//! Physical K/V storage: per layer, one preallocated pool of `num_blocks × block_size` token
//! slots, each holding `kv_dim` keys and `kv_dim` values. The block manager decides which
//! sequence owns which block; the model writes a token's K/V at its slot and the attention
//! kernel reads a sequence's keys through its block table.
//!
//! Layout per layer, per block and KV head (so one head's part of a block is contiguous):
//! keys transposed (`head_dim × block_size`: one dimension of the block's keys is a vector
//! over its slots, which is how the attention kernel scores them), values row-major
//! (`block_size × head_dim`).
//!
//! `Q8_0` and `Q4_0` store ggml's quantized blocks, rotated first as llama.cpp does
//! (`kv_quant`).

use half::f16;

use crate::kv_quant::{self, Q4Data, Q8Data, GROUP};
use crate::layers::lanes::KvElem;

/// The element type of the cache. f16 (llama.cpp's default) halves memory and the bytes
/// attention reads; f32 keeps keys and values exact (the F32 architecture tests use it); q8_0
/// (llama.cpp's `-ctk/-ctv q8_0`) halves f16's memory again and q4_0 nearly halves q8_0's, for
/// boxes short of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F16,
    F32,
    Q8_0,
    Q4_0,
}

impl KvDtype {
    /// Bytes `n` cached values take (`n` a multiple of 32 for the quantized types).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvDtype::F16 => 2 * n,
            KvDtype::F32 => 4 * n,
            KvDtype::Q8_0 => n + n / GROUP * 2,
            KvDtype::Q4_0 => n / 2 + n / GROUP * 2,
        }
    }

    /// Whether a model with heads of `head_dim` can use this type in blocks of `block_size`
    /// tokens: the quantized types scale whole groups of 32 dimensions, as ggml requires, and
    /// q4_0 packs two slots per byte; blocks hold at most `MAX_BLOCK_SLOTS` slots.
    pub fn supports(self, head_dim: usize, block_size: usize) -> bool {
        let slots = block_size <= crate::kv_quant::MAX_BLOCK_SLOTS;
        match self {
            KvDtype::F16 | KvDtype::F32 => true,
            KvDtype::Q8_0 => head_dim.is_multiple_of(GROUP) && slots,
            KvDtype::Q4_0 => head_dim.is_multiple_of(GROUP) && block_size.is_multiple_of(2) && slots,
        }
    }
}

/// One layer's keys or values.
pub enum KvData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    Q8_0(Q8Data),
    Q4_0(Q4Data),
}

impl KvData {
    fn new(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F16 => KvData::F16(zeroed_f16(len)),
            KvDtype::F32 => KvData::F32(vec![0.0; len]),
            KvDtype::Q8_0 => KvData::Q8_0(Q8Data::new(len)),
            KvDtype::Q4_0 => KvData::Q4_0(Q4Data::new(len)),
        }
    }
}

/// `len` f16 zeros from zeroed memory: the pages are only touched when a block is written,
/// so a large cache costs neither start-up time nor resident memory until it is used
/// (`vec![f16::ZERO; n]` writes every element).
pub(crate) fn zeroed_f16(len: usize) -> Vec<f16> {
    use half::vec::HalfBitsVecExt;
    vec![0u16; len].reinterpret_into()
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
        assert!(
            dtype.supports(head_dim, block_size),
            "{dtype:?} KV cache, head_dim {head_dim}, blocks of {block_size}"
        );
        let slots = num_blocks * block_size * num_kv_heads * head_dim;
        let layers =
            (0..num_layers).map(|_| LayerKv { k: KvData::new(dtype, slots), v: KvData::new(dtype, slots) }).collect();
        Self { block_size, num_blocks, num_kv_heads, head_dim, layers }
    }

    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(num_layers: usize, block_size: usize, kv_dim: usize, dtype: KvDtype) -> usize {
        num_layers * 2 * dtype.bytes(block_size * kv_dim)
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
        let rows = RowsAt { slots, k, v, nkv: self.num_kv_heads, hd: self.head_dim, bs: self.block_size };
        let l = &mut self.layers[layer];
        match (&mut l.k, &mut l.v) {
            (KvData::F16(kc), KvData::F16(vc)) => write_rows(kc, vc, &rows),
            (KvData::F32(kc), KvData::F32(vc)) => write_rows(kc, vc, &rows),
            (KvData::Q8_0(kc), KvData::Q8_0(vc)) => kv_quant::write_rows(kc, vc, &rows),
            (KvData::Q4_0(kc), KvData::Q4_0(vc)) => kv_quant::write_rows(kc, vc, &rows),
            _ => unreachable!("keys and values share one type"),
        }
    }

    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }
}

/// Rows of keys and values to store and their slots: what each cache type's writer walks.
pub struct RowsAt<'a> {
    pub slots: &'a [usize],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub nkv: usize,
    pub hd: usize,
    pub bs: usize,
}

impl RowsAt<'_> {
    /// Calls `f(unit, at, key, value)` for every row and KV head: `unit = block · nkv + head`
    /// numbers that head's part of the block, `at` is the slot within the block.
    pub fn each_head(&self, mut f: impl FnMut(usize, usize, &[f32], &[f32])) {
        let d = self.nkv * self.hd;
        for (i, &slot) in self.slots.iter().enumerate() {
            let (block, at) = (slot / self.bs, slot % self.bs);
            let (keys, values) = (&self.k[i * d..(i + 1) * d], &self.v[i * d..(i + 1) * d]);
            for (h, (key, value)) in keys.chunks_exact(self.hd).zip(values.chunks_exact(self.hd)).enumerate() {
                f(block * self.nkv + h, at, key, value);
            }
        }
    }
}

fn write_rows<E: KvElem>(kc: &mut [E], vc: &mut [E], rows: &RowsAt) {
    let (hd, bs) = (rows.hd, rows.bs);
    rows.each_head(|unit, at, key, value| {
        let first = unit * hd * bs;
        for (j, &x) in key.iter().enumerate() {
            kc[first + j * bs + at] = E::from_f32(x);
        }
        for (o, &x) in vc[first + at * hd..first + (at + 1) * hd].iter_mut().zip(value) {
            *o = E::from_f32(x);
        }
    });
}
