//! Quantized KV caches (`kv_cache_dtype = "q8_0" | "q4_0"`, llama.cpp's `-ctk/-ctv`): how a
//! token's key and value of one head are stored as ggml's blocks of 32 values per f16 scale,
//! quantized when written as ggml quantizes them, and read back for attention. `KvCache`
//! owns the storage and calls `write_rows`; attention calls `dequantize_keys` /
//! `dequantize_values` per block (exactly `code · d`, so what it sees does not depend on the
//! batch).
//!
//! Layout: the codes in the float caches' layout (keys transposed, `head_dim × block_size`
//! per block and head; values row-major) — one byte each for q8_0, one nibble each for q4_0
//! (two neighbours per byte, low nibble first) — and per block and head the scales,
//! `head_dim / 32` per slot (keys group-major, `(head_dim / 32) × block_size`; values
//! slot-major). q8_0 takes 34 bytes per 32 values, q4_0 18 (f16: 64).
//!
//! As llama.cpp does for quantized caches, keys and values are first rotated by an
//! orthonormal Walsh–Hadamard transform (`rotations`): it spreads the few huge dimensions some
//! models' keys carry (Qwen2's) over the whole block, so the quantization steps stop erasing
//! the small ones; attention rotates the queries the same way (scores are unchanged: H is
//! orthonormal) and its output back (H is its own inverse).

use half::f16;

use crate::kv_cache::RowsAt;

/// Values per scale.
pub const GROUP: usize = 32;

/// A quantized cache's codes and scales.
pub trait QuantizedKv: Sync {
    /// Quantizes 32 values as ggml does for this type: a code per value, and the f16 scale.
    fn quantize_group(x: &[f32], codes: &mut [i8]) -> f16;
    fn set_code(&mut self, i: usize, code: i8);
    /// The integer value `code` stands for (the scale multiplies it).
    fn value(&self, i: usize) -> f32;
    fn scales(&self) -> &[f16];
    fn scales_mut(&mut self) -> &mut [f16];
}

/// q8_0: a signed byte per value.
pub struct Q8Data {
    pub q: Vec<i8>,
    pub d: Vec<f16>,
}

impl Q8Data {
    pub fn new(len: usize) -> Self {
        Self { q: vec![0; len], d: crate::kv_cache::zeroed_f16(len / GROUP) }
    }
}

impl QuantizedKv for Q8Data {
    /// ggml's `quantize_row_q8_0` on x86: `d = amax / 127`, codes `x · 127 / amax` rounded
    /// half to even.
    fn quantize_group(x: &[f32], codes: &mut [i8]) -> f16 {
        crate::layers::kernels::quantize_q8_0_block(x, codes)
    }
    #[inline]
    fn set_code(&mut self, i: usize, code: i8) {
        self.q[i] = code;
    }
    #[inline]
    fn value(&self, i: usize) -> f32 {
        self.q[i] as f32
    }
    fn scales(&self) -> &[f16] {
        &self.d
    }
    fn scales_mut(&mut self) -> &mut [f16] {
        &mut self.d
    }
}

/// q4_0: a nibble per value (code 0–15 for the value `code − 8`).
pub struct Q4Data {
    pub q: Vec<u8>,
    pub d: Vec<f16>,
}

impl Q4Data {
    pub fn new(len: usize) -> Self {
        Self { q: vec![0x88; len / 2], d: crate::kv_cache::zeroed_f16(len / GROUP) }
    }
}

impl QuantizedKv for Q4Data {
    /// ggml's `quantize_row_q4_0_ref` (what the CPU backend runs): `d = max / −8` with `max`
    /// the value of largest magnitude, codes `min(15, trunc(x / d + 8.5))`.
    fn quantize_group(x: &[f32], codes: &mut [i8]) -> f16 {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (c, &v) in codes.iter_mut().zip(x) {
            // `as` truncates toward zero, as C's cast does; the sum lies in [0.5, 16.5].
            *c = ((v * id + 8.5) as i8).min(15);
        }
        f16::from_f32(d)
    }
    #[inline]
    fn set_code(&mut self, i: usize, code: i8) {
        let shift = 4 * (i % 2);
        let b = &mut self.q[i / 2];
        *b = (*b & !(0x0F << shift)) | ((code as u8 & 0x0F) << shift);
    }
    #[inline]
    fn value(&self, i: usize) -> f32 {
        ((self.q[i / 2] >> (4 * (i % 2))) & 0x0F) as f32 - 8.0
    }
    fn scales(&self) -> &[f16] {
        &self.d
    }
    fn scales_mut(&mut self) -> &mut [f16] {
        &mut self.d
    }
}

/// The Walsh–Hadamard block sizes llama.cpp rotates keys and values by before quantizing them
/// (`llama_kv_cache`: keys by the largest power of two from 64 dividing the head dimension,
/// values by 64; none when the head dimension is not a multiple of 64).
pub fn rotations(head_dim: usize) -> (Option<usize>, Option<usize>) {
    if !head_dim.is_multiple_of(64) {
        return (None, None);
    }
    let mut k = 64;
    while head_dim.is_multiple_of(2 * k) {
        k *= 2;
    }
    (Some(k), Some(64))
}

/// `x ← x · H_n` in place for every `n` consecutive values (`n` a power of two dividing
/// `x.len()`): the Sylvester-ordered Walsh–Hadamard matrix scaled by `1/√n` (llama.cpp's
/// `ggml_gen_hadamard`), by the fast butterfly; `H_n` is symmetric and its own inverse.
pub fn hadamard(x: &mut [f32], n: usize) {
    debug_assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
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

/// Stores `k`/`v` rows (`slots.len() × nkv·hd`) at `slots`: each head's key and value rotated
/// (`rotations`) and quantized per 32 dimensions.
pub fn write_rows<Q: QuantizedKv>(kc: &mut Q, vc: &mut Q, rows: &RowsAt) {
    let (hd, bs, groups) = (rows.hd, rows.bs, rows.hd / GROUP);
    let (k_rot, v_rot) = rotations(hd);
    let mut rotated = vec![0f32; hd];
    let mut codes = vec![0i8; hd];
    let mut scales = vec![f16::ZERO; groups];
    let mut quantize = |x: &[f32], rot: Option<usize>, codes: &mut [i8], scales: &mut [f16]| {
        rotated.copy_from_slice(x);
        if let Some(n) = rot {
            hadamard(&mut rotated, n);
        }
        for ((x, c), s) in rotated.chunks_exact(GROUP).zip(codes.chunks_exact_mut(GROUP)).zip(scales.iter_mut()) {
            *s = Q::quantize_group(x, c);
        }
    };
    rows.each_head(|unit, at, key, value| {
        let (first, dfirst) = (unit * hd * bs, unit * groups * bs);
        quantize(key, k_rot, &mut codes, &mut scales);
        for (j, &c) in codes.iter().enumerate() {
            kc.set_code(first + j * bs + at, c);
        }
        for (g, &s) in scales.iter().enumerate() {
            kc.scales_mut()[dfirst + g * bs + at] = s;
        }
        quantize(value, v_rot, &mut codes, &mut scales);
        for (j, &c) in codes.iter().enumerate() {
            vc.set_code(first + at * hd + j, c);
        }
        vc.scales_mut()[dfirst + at * groups..dfirst + (at + 1) * groups].copy_from_slice(&scales);
    });
}

/// The dequantized (still rotated) keys of one block and KV head, transposed (`hd × bs`), into
/// `out`: each value exactly `value · d` (a small integer times an f16 is exact in f32).
pub fn dequantize_keys<Q: QuantizedKv>(
    kc: &Q,
    block: usize,
    nkv: usize,
    h: usize,
    hd: usize,
    bs: usize,
    out: &mut [f32],
) {
    let groups = hd / GROUP;
    let (first, dfirst) = ((block * nkv + h) * hd * bs, (block * nkv + h) * groups * bs);
    let scales = kc.scales();
    // A group's slot scales serve its 32 dimensions: widened once per group, not per value.
    let mut d = [0f32; MAX_BLOCK_SLOTS];
    assert!(bs <= MAX_BLOCK_SLOTS, "KV blocks of {bs} slots");
    for g in 0..groups {
        for (d, s) in d.iter_mut().zip(&scales[dfirst + g * bs..dfirst + (g + 1) * bs]) {
            *d = s.to_f32();
        }
        for j in g * GROUP..(g + 1) * GROUP {
            for (s, (o, d)) in out[j * bs..(j + 1) * bs].iter_mut().zip(&d[..bs]).enumerate() {
                *o = kc.value(first + j * bs + s) * d;
            }
        }
    }
}

/// The most slots a KV block of a quantized cache may have (its dequantization scratch).
pub const MAX_BLOCK_SLOTS: usize = 256;

/// The dequantized (still rotated) values of one block and KV head, row-major (`bs × hd`).
pub fn dequantize_values<Q: QuantizedKv>(
    vc: &Q,
    block: usize,
    nkv: usize,
    h: usize,
    hd: usize,
    bs: usize,
    out: &mut [f32],
) {
    let groups = hd / GROUP;
    let (first, dfirst) = ((block * nkv + h) * hd * bs, (block * nkv + h) * groups * bs);
    let scales = vc.scales();
    for (g, (o, d)) in out[..hd * bs].chunks_exact_mut(GROUP).zip(&scales[dfirst..]).enumerate() {
        let d = d.to_f32();
        for (i, o) in o.iter_mut().enumerate() {
            *o = vc.value(first + g * GROUP + i) * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// q4_0 codes as ggml's reference writes them: the scale from the signed extreme, the
    /// extreme itself at code 0 (value −8), everything within half a step.
    #[test]
    fn q4_0_groups_quantize_as_ggml() {
        let mut seed = 5;
        let mut x: Vec<f32> = (0..GROUP).map(|_| lcg(&mut seed)).collect();
        x[7] = 1.5;
        let mut codes = vec![0i8; GROUP];
        let d = Q4Data::quantize_group(&x, &mut codes).to_f32();
        assert_eq!(d, f16::from_f32(1.5 / -8.0).to_f32());
        assert_eq!(codes[7], 0);
        let mut q = Q4Data::new(GROUP);
        for (i, &c) in codes.iter().enumerate() {
            q.set_code(i, c);
        }
        for (i, &v) in x.iter().enumerate() {
            assert!((q.value(i) * d - v).abs() <= d.abs() * 0.5 + 1e-3, "value {i}");
        }
    }

    /// The fast transform is the matrix llama.cpp builds (`ggml_gen_hadamard`), and its own
    /// inverse.
    #[test]
    fn hadamard_is_llama_cpps_matrix_and_an_involution() {
        let n = 64;
        let mut m = vec![0f64; n * n];
        m[0] = 1.0 / (n as f64).sqrt();
        let mut s = 1;
        while s < n {
            for i in 0..s {
                for j in 0..s {
                    let v = m[i * n + j];
                    m[(i + s) * n + j] = v;
                    m[i * n + j + s] = v;
                    m[(i + s) * n + j + s] = -v;
                }
            }
            s *= 2;
        }
        let mut seed = 3;
        let x: Vec<f32> = (0..2 * n).map(|_| lcg(&mut seed)).collect();
        let mut y = x.clone();
        hadamard(&mut y, n);
        for b in 0..2 {
            for j in 0..n {
                let want: f64 = (0..n).map(|i| x[b * n + i] as f64 * m[i * n + j]).sum();
                assert!((y[b * n + j] as f64 - want).abs() < 1e-6, "column {j}");
            }
        }
        hadamard(&mut y, n);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
