//! Activation rows quantized to 8 bits for the kernels, as ggml quantizes them on x86
//! (`quantize_row_q8_0` / `quantize_row_q8_K`), with per-sub-block sums the kernels use to
//! undo the weights' unsigned offset. `matmul` quantizes once per call, into a per-thread
//! scratch, and the tile kernels read it.

use super::QK;

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
            let d = if act_block == QK {
                quantize_q8_0_block(xs, qs).to_f32()
            } else {
                let amax = abs_max(xs);
                let (d, id) = if amax == 0.0 {
                    (0.0, 0.0)
                } else {
                    // The first value whose magnitude is amax, with its sign.
                    let max = *xs.iter().find(|v| v.abs() == amax).expect("amax is one of the values");
                    let iscale = -127.0 / max;
                    (1.0 / iscale, iscale)
                };
                scale_round(xs, id, qs);
                d
            };
            self.d[b * per..(b + 1) * per].iter_mut().for_each(|x| *x = d);
        }
        for (s, qs) in self.qs.chunks_exact(sub).enumerate() {
            self.isums[s] = qs.iter().map(|&v| v as i32).sum();
        }
    }
}

/// One ggml q8_0 block as x86 ggml quantizes it (`quantize_row_q8_0`): `d = amax / 127`,
/// stored as f16 (returned), `qs = round_half_even(xs · 127 / amax)`. `xs` is 32 values (or a
/// multiple: one scale for all). Also what a q8_0 KV cache stores.
pub fn quantize_q8_0_block(xs: &[f32], qs: &mut [i8]) -> half::f16 {
    let amax = abs_max(xs);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    scale_round(xs, id, qs);
    half::f16::from_f32(amax / 127.0)
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
