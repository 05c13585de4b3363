//! x86 kernels: AVX-512 VNNI (`vpdpbusd` on 256-bit vectors) and AVX2 (`vpmaddubsw` +
//! `vpmaddwd`). A task owns a range of columns; for each tile of `C` columns it decodes their
//! blocks once into a small buffer, then walks the rows `R` at a time, keeping `R × C`
//! accumulators in registers.

use std::arch::x86_64::*;

use super::{BlockQ5_0, BlockQ8_0, QuantizedRows, WeightBlock, QK};

/// Per-type SIMD decoding (AVX2 is enabled crate-wide by the target CPU level).
pub trait X86Block {
    /// `value + OFFSET` as 32 unsigned bytes.
    unsafe fn unsigned_avx2(&self) -> __m256i;
    /// Values as signed bytes, when they fit (Q8_0); AVX2 then uses the sign trick because
    /// `(value + 128) · x` pairs would saturate `vpmaddubsw`.
    const SIGNED_FOR_AVX2: bool;
    unsafe fn signed_avx2(&self) -> __m256i;
}

/// Byte p is 0xFF where bit p of `x` is set (ggml's `bytes_from_bits_32`).
#[inline(always)]
unsafe fn bytes_from_bits_32(x: [u8; 4]) -> __m256i {
    let x32 = u32::from_le_bytes(x) as i32;
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

impl X86Block for BlockQ5_0 {
    #[inline(always)]
    unsafe fn unsigned_avx2(&self) -> __m256i {
        let qs = _mm_loadu_si128(self.qs.as_ptr() as *const __m128i);
        let m4 = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(qs, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
        let nib = _mm256_set_m128i(hi, lo);
        _mm256_or_si256(nib, _mm256_and_si256(bytes_from_bits_32(self.qh), _mm256_set1_epi8(0x10)))
    }
    const SIGNED_FOR_AVX2: bool = false;
    #[inline(always)]
    unsafe fn signed_avx2(&self) -> __m256i {
        unreachable!()
    }
}

impl X86Block for BlockQ8_0 {
    #[inline(always)]
    unsafe fn unsigned_avx2(&self) -> __m256i {
        _mm256_xor_si256(self.signed_avx2(), _mm256_set1_epi8(-128))
    }
    const SIGNED_FOR_AVX2: bool = true;
    #[inline(always)]
    unsafe fn signed_avx2(&self) -> __m256i {
        _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i)
    }
}

/// Sum of the eight lanes in the fixed order of `scalar::reduce8`.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)))
}

const MAX_COLS: usize = 4;

thread_local! {
    /// Decoded weights of one column tile: `C × nb` blocks of 32 bytes, and their scales.
    static TILE: std::cell::RefCell<(Vec<__m256i>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Defines one level's column-range kernel from its per-block dot product.
macro_rules! level_kernel {
    ($cols:ident, $tile:ident, $feat:literal, $rows:literal, |$init:ident, $u:ident, $s:ident, $x:ident| $dot:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn $tile<W: WeightBlock, const R: usize, const C: usize>(tile_u: &[__m256i], tile_s: &[f32], q: &QuantizedRows, r0: usize, nb: usize, n: usize, c: usize, out: &mut [f32]) {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            for b in 0..nb {
                let mut $u = [_mm256_setzero_si256(); C];
                let mut $s = [_mm256_setzero_si256(); C];
                let mut ws = [0f32; C];
                for j in 0..C {
                    $u[j] = tile_u[j * nb + b];
                    $s[j] = $u[j];
                    ws[j] = tile_s[j * nb + b];
                }
                for i in 0..R {
                    let qi = (r0 + i) * nb + b;
                    let $x = _mm256_loadu_si256(q.qs.as_ptr().add(qi * QK) as *const __m256i);
                    let $init = _mm256_loadu_si256(q.lane_init.as_ptr().add(qi) as *const __m256i);
                    let dx = q.d[qi];
                    for j in 0..C {
                        let isum: __m256i = { let j = j; let _ = &$s; $dot(j) };
                        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(ws[j] * dx), acc[i][j]);
                    }
                }
            }
            for i in 0..R {
                for j in 0..C {
                    out[(r0 + i) * n + c + j] = hsum(acc[i][j]);
                }
            }
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $cols<W: WeightBlock>(w: &[W], q: &QuantizedRows, m: usize, n: usize, c0: usize, c1: usize, out: &mut [f32]) {
            let nb = q.blocks_per_row;
            TILE.with(|t| {
                let mut t = t.borrow_mut();
                let (tile_u, tile_s) = &mut *t;
                tile_u.resize(MAX_COLS * nb, _mm256_setzero_si256());
                tile_s.resize(MAX_COLS * nb, 0.0);
                let mut c = c0;
                while c < c1 {
                    let cols = (c1 - c).min(MAX_COLS);
                    for j in 0..cols {
                        for b in 0..nb {
                            let blk = &w[(c + j) * nb + b];
                            tile_u[j * nb + b] = if W::SIGNED_FOR_AVX2 && !$feat.contains("vnni") { blk.signed_avx2() } else { blk.unsigned_avx2() };
                            tile_s[j * nb + b] = blk.scale();
                        }
                    }
                    let mut r = 0;
                    while r < m {
                        let rows = (m - r).min($rows);
                        match (rows == $rows, cols) {
                            (true, 4) => $tile::<W, $rows, 4>(tile_u, tile_s, q, r, nb, n, c, out),
                            (true, 3) => $tile::<W, $rows, 3>(tile_u, tile_s, q, r, nb, n, c, out),
                            (true, 2) => $tile::<W, $rows, 2>(tile_u, tile_s, q, r, nb, n, c, out),
                            (true, _) => $tile::<W, $rows, 1>(tile_u, tile_s, q, r, nb, n, c, out),
                            (false, 4) => $tile::<W, 1, 4>(tile_u, tile_s, q, r, nb, n, c, out),
                            (false, 3) => $tile::<W, 1, 3>(tile_u, tile_s, q, r, nb, n, c, out),
                            (false, 2) => $tile::<W, 1, 2>(tile_u, tile_s, q, r, nb, n, c, out),
                            (false, _) => $tile::<W, 1, 1>(tile_u, tile_s, q, r, nb, n, c, out),
                        }
                        r += if rows == $rows { $rows } else { 1 };
                    }
                    c += cols;
                }
            });
        }
    };
}

// VNNI: lanes of (w + offset)·x from vpdpbusd, started at -offset·Σx per lane.
level_kernel!(cols_vnni, tile_vnni, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", 4, |init, u, s, x| |j: usize| _mm256_dpbusd_epi32(init, u[j], x));

// AVX2: u8×i8 pairs to i16 (no saturation: |w| ≤ 31 with the offset, or the sign trick for
// Q8_0), pairs of i16 to i32 lanes.
level_kernel!(cols_avx2, tile_avx2, "avx2,fma", 2, |init, u, s, x| |j: usize| {
    let ones = _mm256_set1_epi16(1);
    if W::SIGNED_FOR_AVX2 {
        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(s[j], s[j]), _mm256_sign_epi8(x, s[j])), ones)
    } else {
        _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u[j], x), ones), init)
    }
});
