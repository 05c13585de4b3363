//! slm's own quantized matmul kernels for the weight types that dominate small GGUF models
//! (Q5_0, Q8_0, Q4_K, Q6_K). At load, weights are repacked into tiles of 16 output columns: per 32-value
//! sub-block (32 values, 16 for Q6_K), the 16 columns' values as unsigned numbers (`value +
//! offset`), interleaved four at a time so one `vpdpbusd` feeds 16 columns with 4 products
//! each, and the 16 scales (and mins). Decode reads every weight once per token, so the
//! packing keeps the file's bits: Q8_0 as bytes; Q4_K, Q5_0 and Q6_K as nibbles (two groups
//! of 64 values per 64-byte line, low and high nibble) plus one 64-bit mask per extra bit and
//! group (Q5_0: one, Q6_K: two), expanded in registers (`vpaddb` under a mask). Scales stay as
//! the file has them: f16 per block, and for the K-quants 8-bit integer scales (and mins) per
//! sub-block, so a packed weight is no larger than the file's. A row of activations is
//! quantized once to 8 bits (Q8_0 or Q8_K, as ggml does for the weight type) and broadcast
//! against a tile, so each output lane is one column: no horizontal sums, and every weight
//! byte loaded is used for all rows of the call.
//!
//! Batch invariance and dispatch levels: an output element is computed as, per block in order,
//! the exact integer dot product of its weights and activations (for the K-quants, the sum
//! over its sub-blocks of each sub-block's dot product times its integer scale, as ggml does),
//! converted to f32 and fused-multiply-added with `d_w × d_x` into one f32 accumulator (then
//! Q4_K's min term, `Σ m·Σx` times `-dmin_w × d_x`). That sequence is the same for any number
//! of rows, any tile, and AVX-512 VNNI, AVX2 or the portable path: results are bit-identical
//! across all of them.

pub mod bench;
mod blocks;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;

pub use blocks::*;

/// Output columns per tile (lanes of a 512-bit vector of i32).
pub const TILE: usize = 16;

/// 64-byte aligned storage for the packed bytes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Weights repacked for the kernels: per tile of 16 columns and sub-block of `sub` values,
/// `sub / 4` groups of 64 values (16 columns × 4 consecutive values, value `lane·4 + j`) —
/// as 64-byte lines of bytes, or of nibble pairs (group 2i low, 2i+1 high) with `bits − 4`
/// masks per group for the high bits — and for the K-quants 16 integer scales (and mins);
/// per tile and block, the 16 columns' f16 `d` (and negated `dmin`).
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    pub sub: usize,
    /// Sub-blocks per block: 1 for Q5_0 and Q8_0; more for the K-quants, whose sub-blocks
    /// carry integer scales (`int_scales`).
    pub subs_per_block: usize,
    pub offset: i32,
    pub has_min: bool,
    pub act_block: usize,
    pub bits: u32,
    /// `k / sub` and `num_subs / subs_per_block`, kept so the kernels' index arithmetic has no
    /// divisions.
    num_subs: usize,
    num_blocks: usize,
    lines: Vec<Line>,
    /// Per tile and sub-block: `(bits − 4)` planes × groups of 64-bit masks (nibble packing).
    planes: Vec<u64>,
    /// Per tile and sub-block: 16 integer scales and (Q4_K) 16 mins (K-quants).
    sub_scales: Vec<i8>,
    sub_mins: Vec<i8>,
    /// Per tile and block: 16 f16 scales and (Q4_K) 16 negated f16 mins, the file's bits.
    d: Vec<u16>,
    neg_dmin: Vec<u16>,
}

impl PackedWeights {
    pub fn pack<W: WeightBlock>(w: &[W], n: usize, k: usize) -> Self {
        assert_eq!(k % W::VALUES, 0);
        let blocks = k / W::VALUES;
        assert_eq!(w.len(), n * blocks);
        let nsub = k / W::SUB;
        let spb = W::VALUES / W::SUB;
        let tiles = n.div_ceil(TILE);
        let groups = W::SUB / 4;
        let nibbles = W::BITS < 8;
        let lines_per_sub = if nibbles { groups / 2 } else { groups };
        let extra = if nibbles { (W::BITS - 4) as usize } else { 0 };
        let mut lines = vec![Line([0; 64]); tiles * nsub * lines_per_sub];
        let mut planes = vec![0u64; tiles * nsub * extra * groups];
        let mut sub_scales = vec![0i8; if spb > 1 { tiles * nsub * TILE } else { 0 }];
        let mut sub_mins = vec![0i8; if W::HAS_MIN { tiles * nsub * TILE } else { 0 }];
        let mut d = vec![0u16; tiles * blocks * TILE];
        let mut neg_dmin = vec![0u16; if W::HAS_MIN { tiles * blocks * TILE } else { 0 }];
        let mut u = vec![0u8; W::VALUES];
        let (mut sc, mut mn) = (vec![0i8; spb], vec![0i8; spb]);
        for c in 0..n {
            let (t, lane) = (c / TILE, c % TILE);
            for b in 0..blocks {
                let (db, dminb) = w[c * blocks + b].decode(&mut u, &mut sc, &mut mn);
                d[(t * blocks + b) * TILE + lane] = db;
                if W::HAS_MIN {
                    // Negating an f16 flips its sign bit: exact.
                    neg_dmin[(t * blocks + b) * TILE + lane] = dminb ^ 0x8000;
                }
                for j in 0..spb {
                    let s = b * spb + j;
                    let tsub = t * nsub + s;
                    for g in 0..groups {
                        for i in 0..4 {
                            let v = u[j * W::SUB + g * 4 + i];
                            let bit = lane * 4 + i;
                            if nibbles {
                                lines[tsub * lines_per_sub + g / 2].0[bit] |= (v & 0x0F) << (4 * (g % 2));
                                for p in 0..extra {
                                    planes[(tsub * extra + p) * groups + g] |= (((v >> (4 + p)) & 1) as u64) << bit;
                                }
                            } else {
                                lines[tsub * lines_per_sub + g].0[bit] = v;
                            }
                        }
                    }
                    if spb > 1 {
                        sub_scales[tsub * TILE + lane] = sc[j];
                    }
                    if W::HAS_MIN {
                        sub_mins[tsub * TILE + lane] = mn[j];
                    }
                }
            }
        }
        Self {
            n,
            k,
            sub: W::SUB,
            subs_per_block: spb,
            offset: W::OFFSET,
            has_min: W::HAS_MIN,
            act_block: W::ACT_BLOCK,
            bits: W::BITS,
            num_subs: nsub,
            num_blocks: blocks,
            lines,
            planes,
            sub_scales,
            sub_mins,
            d,
            neg_dmin,
        }
    }

    /// Bytes the kernels read for one pass over this weight.
    pub fn num_bytes(&self) -> usize {
        self.lines.len() * 64
            + self.planes.len() * 8
            + self.sub_scales.len()
            + self.sub_mins.len()
            + (self.d.len() + self.neg_dmin.len()) * 2
    }

    /// Extra bit planes per group (0 for byte packing).
    pub fn num_planes(&self) -> usize {
        if self.bits < 8 {
            (self.bits - 4) as usize
        } else {
            0
        }
    }

    fn lines_per_sub(&self) -> usize {
        if self.bits < 8 {
            self.sub / 8
        } else {
            self.sub / 4
        }
    }

    /// The masks of tile `t`, sub-block `s`: plane p of group g at `p · sub/4 + g`.
    #[inline]
    pub fn tile_planes(&self, t: usize, s: usize) -> &[u64] {
        let n = self.num_planes() * self.sub / 4;
        let first = (t * self.num_subs() + s) * n;
        &self.planes[first..first + n]
    }

    /// Group `g` of tile `t`, sub-block `s`, decoded to bytes (the portable kernel's view).
    pub fn group(&self, t: usize, s: usize, g: usize) -> [u8; 64] {
        std::array::from_fn(|i| self.value(t, s, g, i))
    }

    /// Byte `i` (column `i / 4`, value `i % 4`) of group `g` of tile `t`, sub-block `s`.
    #[inline]
    pub fn value(&self, t: usize, s: usize, g: usize, i: usize) -> u8 {
        let line = self.tile_sub(t, s);
        if self.bits == 8 {
            return line[g * 64 + i];
        }
        let planes = self.tile_planes(t, s);
        let mut v = (line[(g / 2) * 64 + i] >> (4 * (g % 2))) & 0x0F;
        for p in 0..self.num_planes() {
            v |= (((planes[p * self.sub / 4 + g] >> i) & 1) as u8) << (4 + p);
        }
        v
    }

    #[inline]
    pub fn num_subs(&self) -> usize {
        self.num_subs
    }

    /// The dequantized weights of column `c` (`k` values), with the very arithmetic of
    /// candle's (and ggml's) `to_float`: `q·d`, `(d·sc)·q`, or `(d·sc)·q − dmin·m`. Serves
    /// an embedding table tied to the output projection from the packed copy alone.
    pub fn dequantize_column(&self, c: usize, out: &mut [f32]) {
        let (t, lane) = (c / TILE, c % TILE);
        let spb = self.subs_per_block;
        for b in 0..self.num_blocks {
            let d = half::f16::from_bits(self.tile_d(t, b)[lane]).to_f32();
            let neg_dmin =
                if self.has_min { half::f16::from_bits(self.tile_neg_dmin(t, b)[lane]).to_f32() } else { 0.0 };
            for s in b * spb..(b + 1) * spb {
                let scale = if self.int_scales() { d * self.tile_sub_scales(t, s)[lane] as f32 } else { d };
                // −(dmin·m), exactly: negation commutes with rounding.
                let neg_min = if self.has_min { neg_dmin * self.tile_sub_mins(t, s)[lane] as f32 } else { 0.0 };
                for g in 0..self.sub / 4 {
                    for i in 0..4 {
                        let v = (self.value(t, s, g, lane * 4 + i) as i32 - self.offset) as f32;
                        out[s * self.sub + g * 4 + i] = if self.has_min { scale * v + neg_min } else { scale * v };
                    }
                }
            }
        }
    }

    #[inline]
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }

    /// The lines of tile `t`, sub-block `s`: 64 bytes per group (bytes) or per two groups
    /// (nibbles).
    #[inline]
    pub fn tile_sub(&self, t: usize, s: usize) -> &[u8] {
        let lines = self.lines_per_sub();
        let first = (t * self.num_subs() + s) * lines;
        // SAFETY: lines are contiguous 64-byte arrays.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().add(first) as *const u8, lines * 64) }
    }

    /// Whether sub-blocks carry integer scales (the K-quants).
    #[inline]
    pub fn int_scales(&self) -> bool {
        self.subs_per_block > 1
    }

    /// The 16 integer scales of tile `t`, sub-block `s` (K-quants).
    #[inline]
    pub fn tile_sub_scales(&self, t: usize, s: usize) -> &[i8] {
        tile_columns(&self.sub_scales, t * self.num_subs + s)
    }

    /// The 16 integer mins of tile `t`, sub-block `s` (Q4_K).
    #[inline]
    pub fn tile_sub_mins(&self, t: usize, s: usize) -> &[i8] {
        tile_columns(&self.sub_mins, t * self.num_subs + s)
    }

    /// The 16 f16 scales of tile `t`, block `b`.
    #[inline]
    pub fn tile_d(&self, t: usize, b: usize) -> &[u16] {
        tile_columns(&self.d, t * self.num_blocks + b)
    }

    /// The 16 negated f16 mins of tile `t`, block `b` (Q4_K).
    #[inline]
    pub fn tile_neg_dmin(&self, t: usize, b: usize) -> &[u16] {
        tile_columns(&self.neg_dmin, t * self.num_blocks + b)
    }
}

/// Entry `i` of a per-column array stored 16 columns (one tile) at a time.
#[inline]
fn tile_columns<T>(v: &[T], i: usize) -> &[T] {
    &v[i * TILE..(i + 1) * TILE]
}

/// Activation rows quantized to 8 bits (`d` holds the scale of every 32 values), with `Σ
/// bytes` per sub-block of the weights: the kernels start a sub-block's dot product at
/// `-offset × Σ` (which turns `(w + offset) · x` back into `w · x`), and Q4_K's min term
/// multiplies it.
#[derive(Default)]
pub struct QuantizedRows {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub isums: Vec<i32>,
    pub num_subs: usize,
}

impl QuantizedRows {
    /// Quantizes `m` rows of `k` values as ggml does on x86: with `act_block` 32 like
    /// `quantize_row_q8_0` (scale amax/127 stored as f16, values times 127/amax rounded half
    /// to even), with 256 like `quantize_row_q8_K` (scale from the first signed extreme, f32,
    /// round half to even). Written so the loops vectorize.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, sub: usize, act_block: usize) {
        self.num_subs = k / sub;
        self.qs.resize(m * k, 0);
        self.d.resize(m * k / QK, 0.0);
        self.isums.resize(m * k / sub, 0);
        let per = act_block / QK;
        for (b, (xs, qs)) in x.chunks_exact(act_block).zip(self.qs.chunks_exact_mut(act_block)).enumerate() {
            let amax = abs_max(xs);
            let (d, id) = if act_block == QK {
                let d = amax / 127.0;
                (half::f16::from_f32(d).to_f32(), if amax != 0.0 { 127.0 / amax } else { 0.0 })
            } else if amax == 0.0 {
                (0.0, 0.0)
            } else {
                // The first value whose magnitude is amax, with its sign.
                let max = *xs.iter().find(|v| v.abs() == amax).expect("amax is one of the values");
                let iscale = -127.0 / max;
                (1.0 / iscale, iscale)
            };
            scale_round(xs, id, qs);
            self.d[b * per..(b + 1) * per].iter_mut().for_each(|x| *x = d);
        }
        for (s, qs) in self.qs.chunks_exact(sub).enumerate() {
            self.isums[s] = qs.iter().map(|&v| v as i32).sum();
        }
    }
}

/// The largest magnitude in `xs` (a multiple of 32 values long).
#[inline]
fn abs_max(xs: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 is enabled for the whole build; loads stay inside `xs`.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_setzero_ps();
            for c in xs.chunks_exact(8) {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr())));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            lanes.iter().fold(0f32, |a, &v| a.max(v))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    xs.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// `qs[i] = min(127, round_half_even(xs[i] · id))` (values are within ±127.5 by construction).
#[inline]
fn scale_round(xs: &[f32], id: f32, qs: &mut [i8]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::*;
        assert_eq!(xs.len() % 32, 0);
        assert_eq!(qs.len(), xs.len());
        // SAFETY: AVX2 is enabled for the whole build; loads and stores stay in bounds.
        unsafe {
            let mul = _mm256_set1_ps(id);
            // cvtps rounds half to even (the default MXCSR mode); the packs saturate to
            // [-128, 127], and the permute undoes their per-128-bit interleave.
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for (x, q) in xs.chunks_exact(32).zip(qs.chunks_exact_mut(32)) {
                let i: [__m256i; 4] = std::array::from_fn(|j| {
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * j)), mul))
                });
                let w = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
                _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(w, order));
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    for (q, v) in qs.iter_mut().zip(xs) {
        *q = ((v * id).round_ties_even() as i32).min(127) as i8;
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
            if cap != "avx2"
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512f")
            {
                return Level::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return Level::Avx2;
            }
        }
        let _ = cap;
        Level::Scalar
    })
}

/// `out[m × n] = x[m × k] · wᵀ`.
pub fn matmul(w: &PackedWeights, x: &[f32], m: usize, out: &mut [f32], level: Level) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k);
    assert!(out.len() >= m * n);
    SCRATCH.with(|s| {
        let mut q = s.borrow_mut();
        q.quantize(x, m, k, w.sub, w.act_block);
        let q = &*q;
        let out_ptr = out.as_mut_ptr() as usize;
        let run = |tiles: std::ops::Range<usize>| {
            let (t0, t1) = (tiles.start, tiles.end);
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
        crate::layers::pool::Pool::global().run(w.num_tiles(), &run);
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
                BlockQ5_0 {
                    d: half::f16::from_f32(0.001 + (lcg(seed) % 100) as f32 * 1e-4).to_bits(),
                    qh: (lcg(seed)).to_le_bytes(),
                    qs,
                }
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
        let (mut u, mut sc, mut mn) =
            (vec![0u8; W::VALUES], vec![0i8; W::VALUES / W::SUB], vec![0i8; W::VALUES / W::SUB]);
        for b in w {
            let (d, dmin) = b.decode(&mut u, &mut sc, &mut mn);
            let (d, dmin) = (half::f16::from_bits(d).to_f32(), half::f16::from_bits(dmin).to_f32());
            out.extend(u.iter().enumerate().map(|(i, &v)| {
                let j = i / W::SUB;
                let scale = if W::VALUES > W::SUB { d * sc[j] as f32 } else { d };
                (v as i32 - W::OFFSET) as f32 * scale - if W::HAS_MIN { dmin * mn[j] as f32 } else { 0.0 }
            }));
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
        q.quantize(&x, m, k, W::SUB, W::ACT_BLOCK);
        let xq: Vec<f32> = (0..m * k).map(|i| q.qs[i] as f32 * q.d[i / QK]).collect();
        let mut levels = vec![Level::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
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
            assert!(
                one.iter().zip(&results[0][r * n..(r + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {r} alone differs"
            );
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

    /// K-quant blocks from real quantization of random weights (candle's quantizer).
    fn k_blocks<W: WeightBlock>(dtype: candle_core::quantized::GgmlDType, n: usize, k: usize, seed: u64) -> Vec<W> {
        let mut s = seed;
        let v: Vec<f32> = (0..n * k).map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0).collect();
        let t = candle_core::Tensor::from_vec(v, (n, k), &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, dtype).unwrap();
        let bytes = q.data().unwrap();
        (0..bytes.len() / std::mem::size_of::<W>())
            .map(|i| unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(i * std::mem::size_of::<W>()) as *const W) })
            .collect()
    }

    #[test]
    fn k_quants_decode_like_candle_and_match_reference() {
        use candle_core::quantized::GgmlDType;
        let mut seed = 3;
        for (m, n) in [(1, 19), (6, 33)] {
            let k = 512;
            for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
                // The decoder agrees with candle's dequantization.
                let mut s = 7;
                let v: Vec<f32> = (0..n * k).map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0).collect();
                let t = candle_core::Tensor::from_vec(v, (n, k), &candle_core::Device::Cpu).unwrap();
                let qt = candle_core::quantized::QTensor::quantize(&t, dtype.clone()).unwrap();
                let want: Vec<f32> =
                    qt.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let got = if dtype == GgmlDType::Q4K {
                    dequant(&k_blocks::<BlockQ4K>(dtype.clone(), n, k, 7))
                } else {
                    dequant(&k_blocks::<BlockQ6K>(dtype.clone(), n, k, 7))
                };
                assert!(
                    got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())),
                    "{dtype:?} decode differs from candle"
                );
                if dtype == GgmlDType::Q4K {
                    check(&k_blocks::<BlockQ4K>(dtype, n, k, 7), m, k, n, &mut seed);
                } else {
                    check(&k_blocks::<BlockQ6K>(dtype, n, k, 7), m, k, n, &mut seed);
                }
            }
        }
    }

    /// A packed column dequantizes to candle's `to_float` of the file's row, bit for bit.
    #[test]
    fn packed_columns_dequantize_like_candle() {
        use candle_core::quantized::GgmlDType;
        let (n, k) = (21, 512);
        let mut s = 11;
        let v: Vec<f32> = (0..n * k).map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0).collect();
        let t = candle_core::Tensor::from_vec(v, (n, k), &candle_core::Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = candle_core::quantized::QTensor::quantize(&t, dtype).unwrap();
            let want: Vec<f32> =
                q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let bytes = q.data().unwrap();
            fn cast<W: WeightBlock>(b: &[u8]) -> Vec<W> {
                (0..b.len() / std::mem::size_of::<W>())
                    .map(|i| unsafe {
                        std::ptr::read_unaligned(b.as_ptr().add(i * std::mem::size_of::<W>()) as *const W)
                    })
                    .collect()
            }
            let packed = match dtype {
                GgmlDType::Q8_0 => PackedWeights::pack(&cast::<BlockQ8_0>(&bytes), n, k),
                GgmlDType::Q5_0 => PackedWeights::pack(&cast::<BlockQ5_0>(&bytes), n, k),
                GgmlDType::Q4K => PackedWeights::pack(&cast::<BlockQ4K>(&bytes), n, k),
                _ => PackedWeights::pack(&cast::<BlockQ6K>(&bytes), n, k),
            };
            let mut row = vec![0f32; k];
            for c in 0..n {
                packed.dequantize_column(c, &mut row);
                assert!(
                    row.iter().zip(&want[c * k..(c + 1) * k]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype:?} column {c}"
                );
            }
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
