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
//! `Q8_0` stores each token's key and value of each head as ggml's q8_0 blocks (32 values per
//! f16 scale, quantized when written as ggml's `quantize_row_q8_0` does): the 8-bit values in
//! the same layout as the float caches, and per block and head the scales, `head_dim / 32`
//! per slot (keys: scale group-major, `(head_dim / 32) × block_size`; values: slot-major).
//! Half an f16 cache's bytes, plus 1/16 for the scales. As llama.cpp does for quantized
//! caches, keys and values are first rotated by an orthonormal Walsh–Hadamard transform
//! (`q8_rotations`): it spreads the few huge dimensions some models' keys carry (Qwen2's)
//! over the whole block, so 8-bit steps stop erasing the small ones; attention rotates the
//! queries the same way (scores are unchanged: H is orthonormal) and its output back (H = H⁻¹).

use half::f16;

use crate::layers::lanes::KvElem;

/// The element type of the cache. f16 (llama.cpp's default) halves memory and the bytes
/// attention reads; f32 keeps keys and values exact (the F32 architecture tests use it); q8_0
/// (llama.cpp's `-ctk/-ctv q8_0`) halves f16's memory again, for boxes short of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F16,
    F32,
    Q8_0,
}

/// Values per q8_0 scale.
pub const Q8_GROUP: usize = 32;

impl KvDtype {
    /// Bytes `n` cached values take (`n` a multiple of 32 for q8_0).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvDtype::F16 => 2 * n,
            KvDtype::F32 => 4 * n,
            KvDtype::Q8_0 => n + n / Q8_GROUP * 2,
        }
    }

    /// Whether a model with heads of `head_dim` can use this type (q8_0 scales whole groups
    /// of 32 dimensions, as ggml requires).
    pub fn supports_head_dim(self, head_dim: usize) -> bool {
        self != KvDtype::Q8_0 || head_dim % Q8_GROUP == 0
    }
}

/// 8-bit values and their f16 scales (see the module's layout).
pub struct Q8Data {
    pub q: Vec<i8>,
    pub d: Vec<f16>,
}

/// One layer's keys or values.
pub enum KvData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    Q8_0(Q8Data),
}

impl KvData {
    fn new(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F16 => KvData::F16(vec![f16::ZERO; len]),
            KvDtype::F32 => KvData::F32(vec![0.0; len]),
            KvDtype::Q8_0 => KvData::Q8_0(Q8Data { q: vec![0; len], d: vec![f16::ZERO; len / Q8_GROUP] }),
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
        assert!(dtype.supports_head_dim(head_dim), "{dtype:?} KV cache with head_dim {head_dim}");
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
        let (nkv, hd, bs) = (self.num_kv_heads, self.head_dim, self.block_size);
        let l = &mut self.layers[layer];
        match (&mut l.k, &mut l.v) {
            (KvData::F16(kc), KvData::F16(vc)) => write_rows(kc, vc, slots, k, v, nkv, hd, bs),
            (KvData::F32(kc), KvData::F32(vc)) => write_rows(kc, vc, slots, k, v, nkv, hd, bs),
            (KvData::Q8_0(kc), KvData::Q8_0(vc)) => write_rows_q8(kc, vc, slots, k, v, nkv, hd, bs),
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

/// The Walsh–Hadamard block sizes llama.cpp rotates keys and values by before quantizing them
/// (`llama_kv_cache`: keys by the largest power of two from 64 dividing the head dimension,
/// values by 64; none when the head dimension is not a multiple of 64).
pub fn q8_rotations(head_dim: usize) -> (Option<usize>, Option<usize>) {
    if head_dim % 64 != 0 {
        return (None, None);
    }
    let mut k = 64;
    while head_dim % (2 * k) == 0 {
        k *= 2;
    }
    (Some(k), Some(64))
}

/// `x ← x · H_n` in place for every `n` consecutive values (`n` a power of two dividing
/// `x.len()`): the Sylvester-ordered Walsh–Hadamard matrix scaled by `1/√n` (llama.cpp's
/// `ggml_gen_hadamard`), by the fast butterfly; `H_n` is symmetric and its own inverse.
pub fn hadamard(x: &mut [f32], n: usize) {
    debug_assert!(n.is_power_of_two() && x.len() % n == 0);
    let scale = 1.0 / (n as f32).sqrt();
    for block in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for i in (0..n).step_by(2 * h) {
                for j in i..i + h {
                    let (a, b) = (block[j], block[j + h]);
                    block[j] = a + b;
                    block[j + h] = a - b;
                }
            }
            h *= 2;
        }
        block.iter_mut().for_each(|v| *v *= scale);
    }
}

/// `write_rows` for q8_0: each head's key and value rotated (`q8_rotations`) and quantized
/// per 32 dimensions.
#[allow(clippy::too_many_arguments)]
fn write_rows_q8(
    kc: &mut Q8Data,
    vc: &mut Q8Data,
    slots: &[usize],
    k: &[f32],
    v: &[f32],
    nkv: usize,
    hd: usize,
    bs: usize,
) {
    let (d, groups) = (nkv * hd, hd / Q8_GROUP);
    let (k_rot, v_rot) = q8_rotations(hd);
    let mut rotated = vec![0f32; hd];
    let mut q = vec![0i8; hd];
    let mut scales = vec![f16::ZERO; groups];
    for (i, &slot) in slots.iter().enumerate() {
        let (block, at) = (slot / bs, slot % bs);
        for (h, (key, value)) in
            k[i * d..(i + 1) * d].chunks_exact(hd).zip(v[i * d..(i + 1) * d].chunks_exact(hd)).enumerate()
        {
            let (first, dfirst) = ((block * nkv + h) * hd * bs, (block * nkv + h) * groups * bs);
            rotated.copy_from_slice(key);
            if let Some(n) = k_rot {
                hadamard(&mut rotated, n);
            }
            quantize_q8_0(&rotated, &mut q, &mut scales);
            for (j, &x) in q.iter().enumerate() {
                kc.q[first + j * bs + at] = x;
            }
            for (g, &s) in scales.iter().enumerate() {
                kc.d[dfirst + g * bs + at] = s;
            }
            rotated.copy_from_slice(value);
            if let Some(n) = v_rot {
                hadamard(&mut rotated, n);
            }
            quantize_q8_0(&rotated, &mut q, &mut scales);
            vc.q[first + at * hd..first + (at + 1) * hd].copy_from_slice(&q);
            vc.d[dfirst + at * groups..dfirst + (at + 1) * groups].copy_from_slice(&scales);
        }
    }
}

/// ggml's `quantize_row_q8_0` on x86 (what llama.cpp writes into a q8_0 cache): per 32
/// values, `d = amax / 127` stored as f16, values `x · 127 / amax` rounded half to even.
fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f16]) {
    for ((x, q), d) in x.chunks_exact(Q8_GROUP).zip(q.chunks_exact_mut(Q8_GROUP)).zip(d.iter_mut()) {
        *d = crate::layers::kernels::quantize_q8_0_block(x, q);
    }
}

/// The dequantized (still rotated) keys of one block and KV head, transposed (`hd × bs`), into `out`: each
/// value exactly `q · d` (an 8-bit integer times an f16 is exact in f32).
pub fn dequantize_keys(kc: &Q8Data, block: usize, nkv: usize, h: usize, hd: usize, bs: usize, out: &mut [f32]) {
    let (first, dfirst, groups) =
        ((block * nkv + h) * hd * bs, (block * nkv + h) * (hd / Q8_GROUP) * bs, hd / Q8_GROUP);
    for g in 0..groups {
        let d: Vec<f32> = kc.d[dfirst + g * bs..dfirst + (g + 1) * bs].iter().map(|d| d.to_f32()).collect();
        for j in g * Q8_GROUP..(g + 1) * Q8_GROUP {
            for (s, (o, &q)) in out[j * bs..(j + 1) * bs].iter_mut().zip(&kc.q[first + j * bs..]).enumerate() {
                *o = q as f32 * d[s];
            }
        }
    }
}

/// The dequantized (still rotated) values of one block and KV head, row-major (`bs × hd`), into `out`.
pub fn dequantize_values(vc: &Q8Data, block: usize, nkv: usize, h: usize, hd: usize, bs: usize, out: &mut [f32]) {
    let (first, groups) = ((block * nkv + h) * hd * bs, hd / Q8_GROUP);
    let dfirst = (block * nkv + h) * groups * bs;
    for (i, (o, &q)) in out[..hd * bs].iter_mut().zip(&vc.q[first..first + hd * bs]).enumerate() {
        *o = q as f32 * vc.d[dfirst + i / Q8_GROUP].to_f32();
    }
}
