//! slm's own quantized matmul kernels for the weight types that dominate small GGUF models
//! (Q5_0, Q8_0). At load, weights are repacked into tiles of 16 output columns: per 32-value
//! block, the 16 columns' values as unsigned bytes (`value + offset`), interleaved four at a
//! time so one `vpdpbusd` feeds 16 columns with 4 products each, and the 16 scales. A row of
//! activations is quantized once to Q8_0 (as ggml does) and broadcast against a tile, so each
//! output lane is one column: no horizontal sums, and every weight byte loaded is used for all
//! rows of the call.
//!
//! Batch invariance and dispatch levels: an output element is computed as, per block in order,
//! the exact integer dot product of its 32 weights and activations, converted to f32 and
//! fused-multiply-added with `d_w × d_x` into one f32 accumulator. That sequence is the same
//! for any number of rows, any tile, and AVX-512 VNNI, AVX2 or the portable path: results are
//! bit-identical across all of them.

pub mod bench;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;

use rayon::prelude::*;

/// GGUF Q5_0 block: 32 weights, 5 bits each (low nibbles in `qs`, high bits in `qh`), value
/// = q - 16, times `d`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// GGUF Q8_0 block: 32 signed bytes times `d`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22 && std::mem::size_of::<BlockQ8_0>() == 34);

pub const QK: usize = 32;
/// Output columns per tile (lanes of a 512-bit vector of i32).
pub const TILE: usize = 16;
/// Bytes of one block of one tile: 8 groups × 16 columns × 4 values.
const TILE_BLOCK_BYTES: usize = QK * TILE;

/// A GGUF block type the kernels can repack.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    /// Added to every value so it fits an unsigned byte (undone through the activation sums).
    const OFFSET: i32;
    fn scale(&self) -> f32;
    /// The 32 values plus `OFFSET`, as unsigned bytes.
    fn unsigned(&self, out: &mut [u8; 32]);
}

impl WeightBlock for BlockQ5_0 {
    const OFFSET: i32 = 16;
    fn scale(&self) -> f32 {
        half::f16::from_bits(self.d).to_f32()
    }
    fn unsigned(&self, out: &mut [u8; 32]) {
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            out[j] = (self.qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            out[j + 16] = (self.qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        }
    }
}

impl WeightBlock for BlockQ8_0 {
    const OFFSET: i32 = 128;
    fn scale(&self) -> f32 {
        half::f16::from_bits(self.d).to_f32()
    }
    fn unsigned(&self, out: &mut [u8; 32]) {
        for j in 0..32 {
            out[j] = (self.qs[j] as i32 + 128) as u8;
        }
    }
}

/// 64-byte aligned storage for the packed bytes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Weights repacked for the kernels: `num_tiles × blocks_per_row` tile-blocks.
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    pub offset: i32,
    lines: Vec<Line>,
    /// `[tile][block][column]` scales (0 for padding columns).
    scales: Vec<f32>,
}

impl PackedWeights {
    pub fn pack<W: WeightBlock>(w: &[W], n: usize, k: usize) -> Self {
        assert_eq!(k % QK, 0);
        let nb = k / QK;
        assert_eq!(w.len(), n * nb);
        let tiles = n.div_ceil(TILE);
        let mut lines = vec![Line([0; 64]); tiles * nb * TILE_BLOCK_BYTES / 64];
        let mut scales = vec![0f32; tiles * nb * TILE];
        let mut u = [0u8; 32];
        for c in 0..n {
            let (t, lane) = (c / TILE, c % TILE);
            for b in 0..nb {
                let blk = &w[c * nb + b];
                blk.unsigned(&mut u);
                let base = (t * nb + b) * TILE_BLOCK_BYTES;
                for g in 0..QK / 4 {
                    for j in 0..4 {
                        let at = base + g * 64 + lane * 4 + j;
                        lines[at / 64].0[at % 64] = u[g * 4 + j];
                    }
                }
                scales[(t * nb + b) * TILE + lane] = blk.scale();
            }
        }
        Self { n, k, offset: W::OFFSET, lines, scales }
    }

    pub fn blocks_per_row(&self) -> usize {
        self.k / QK
    }

    pub fn num_tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }

    /// The 512 bytes of tile `t`, block `b`: group g (4 values of each of 16 columns) at g·64.
    #[inline]
    pub fn tile_block(&self, t: usize, b: usize) -> &[u8] {
        let line = (t * self.blocks_per_row() + b) * TILE_BLOCK_BYTES / 64;
        // SAFETY: lines are contiguous 64-byte arrays.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().add(line) as *const u8, TILE_BLOCK_BYTES) }
    }

    #[inline]
    pub fn tile_scales(&self, t: usize, b: usize) -> &[f32] {
        let i = (t * self.blocks_per_row() + b) * TILE;
        &self.scales[i..i + TILE]
    }

    pub fn bytes(&self) -> usize {
        self.lines.len() * 64 + self.scales.len() * 4
    }
}

/// Activation rows quantized to Q8_0: per block 32 signed bytes, the f32 value of the f16
/// scale, and `-offset × Σ bytes`, which turns `(w + offset) · x` back into `w · x`.
#[derive(Default)]
pub struct QuantizedRows {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub init: Vec<i32>,
    pub blocks_per_row: usize,
}

impl QuantizedRows {
    /// Quantizes `m` rows of `k` values, as ggml's `quantize_row_q8_0`: scale = amax/127
    /// stored as f16, values rounded half away from zero.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, offset: i32) {
        let nb = k / QK;
        self.blocks_per_row = nb;
        self.qs.resize(m * k, 0);
        self.d.resize(m * nb, 0.0);
        self.init.resize(m * nb, 0);
        for (b, (xs, qs)) in x.chunks_exact(QK).zip(self.qs.chunks_exact_mut(QK)).enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            self.d[b] = half::f16::from_f32(d).to_f32();
            self.init[b] = -offset * sum;
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::default());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512Vnni,
}

/// The best level this CPU supports (checked once; `SLM_KERNEL=avx2|scalar` caps it).
pub fn detected_level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("SLM_KERNEL").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            if cap == "scalar" {
                return Level::Scalar;
            }
            if cap != "avx2" && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512f") {
                return Level::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        let _ = cap;
        Level::Scalar
    })
}

/// Tiles each parallel task computes.
const TILES_PER_TASK: usize = 4;

/// `out[m × n] = x[m × k] · wᵀ`.
pub fn matmul(w: &PackedWeights, x: &[f32], m: usize, out: &mut [f32], level: Level) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k);
    assert!(out.len() >= m * n);
    SCRATCH.with(|s| {
        let mut q = s.borrow_mut();
        q.quantize(x, m, k, w.offset);
        let q = &*q;
        let out_ptr = out.as_mut_ptr() as usize;
        let tasks = w.num_tiles().div_ceil(TILES_PER_TASK);
        let run = |task: usize| {
            let (t0, t1) = (task * TILES_PER_TASK, ((task + 1) * TILES_PER_TASK).min(w.num_tiles()));
            // SAFETY: tasks write disjoint column ranges of `out`.
            let out = unsafe { std::slice::from_raw_parts_mut(out_ptr as *mut f32, m * n) };
            match level {
                #[cfg(target_arch = "x86_64")]
                Level::Avx512Vnni => unsafe { x86::tiles_vnni(w, q, m, t0, t1, out) },
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe { x86::tiles_avx2(w, q, m, t0, t1, out) },
                _ => scalar::tiles(w, q, m, t0, t1, out),
            }
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn q5_blocks(n: usize, seed: &mut u64) -> Vec<BlockQ5_0> {
        (0..n)
            .map(|_| {
                let mut qs = [0u8; 16];
                qs.iter_mut().for_each(|q| *q = lcg(seed) as u8);
                BlockQ5_0 { d: half::f16::from_f32(0.001 + (lcg(seed) % 100) as f32 * 1e-4).to_bits(), qh: (lcg(seed)).to_le_bytes(), qs }
            })
            .collect()
    }

    fn q8_blocks(n: usize, seed: &mut u64) -> Vec<BlockQ8_0> {
        (0..n)
            .map(|_| {
                let mut qs = [0i8; 32];
                qs.iter_mut().for_each(|q| *q = (lcg(seed) % 255) as i32 as i8);
                BlockQ8_0 { d: half::f16::from_f32(0.002 + (lcg(seed) % 100) as f32 * 1e-4).to_bits(), qs }
            })
            .collect()
    }

    fn dequant<W: WeightBlock>(w: &[W]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in w {
            let mut u = [0u8; 32];
            b.unsigned(&mut u);
            out.extend(u.iter().map(|&v| (v as i32 - W::OFFSET) as f32 * b.scale()));
        }
        out
    }

    /// Against dequantize-then-f64 (activations quantized the same way): the only error is
    /// f32 accumulation. Across levels and row counts: bit-identical.
    fn check<W: WeightBlock>(w: &[W], m: usize, k: usize, n: usize, seed: &mut u64) {
        let x: Vec<f32> = (0..m * k).map(|_| (lcg(seed) % 2000) as f32 / 1000.0 - 1.0).collect();
        let wd = dequant(w);
        let packed = PackedWeights::pack(w, n, k);
        let mut q = QuantizedRows::default();
        q.quantize(&x, m, k, W::OFFSET);
        let xq: Vec<f32> = (0..m * k).map(|i| q.qs[i] as f32 * q.d[i / QK]).collect();
        let mut levels = vec![Level::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                levels.push(Level::Avx2);
            }
            if detected_level() == Level::Avx512Vnni {
                levels.push(Level::Avx512Vnni);
            }
        }
        let mut results = Vec::new();
        for &level in &levels {
            let mut out = vec![0f32; m * n];
            matmul(&packed, &x, m, &mut out, level);
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k).map(|i| xq[r * k + i] as f64 * wd[c * k + i] as f64).sum();
                    let got = out[r * n + c] as f64;
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{level:?} r{r} c{c}: {got} vs {want}");
                }
            }
            results.push(out);
        }
        for (l, r) in levels.iter().zip(&results).skip(1) {
            assert!(r.iter().zip(&results[0]).all(|(a, b)| a.to_bits() == b.to_bits()), "{l:?} differs from scalar");
        }
        // Row r alone equals row r inside the batch.
        for r in [0, m - 1] {
            let mut one = vec![0f32; n];
            matmul(&packed, &x[r * k..(r + 1) * k], 1, &mut one, *levels.last().unwrap());
            assert!(one.iter().zip(&results[0][r * n..(r + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits()), "row {r} alone differs");
        }
    }

    #[test]
    fn q5_0_matches_reference_across_levels_and_batch_sizes() {
        let mut seed = 1;
        for (m, k, n) in [(1, 64, 7), (3, 96, 70), (9, 128, 133), (1, 896, 130), (6, 64, 16)] {
            let w = q5_blocks(n * k / QK, &mut seed);
            check(&w, m, k, n, &mut seed);
        }
    }

    #[test]
    fn q8_0_matches_reference_across_levels_and_batch_sizes() {
        let mut seed = 2;
        for (m, k, n) in [(1, 64, 5), (5, 160, 67), (8, 256, 129)] {
            let w = q8_blocks(n * k / QK, &mut seed);
            check(&w, m, k, n, &mut seed);
        }
    }
}
