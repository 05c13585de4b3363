//! AVX-512 VNNI kernel over packed tiles: one 512-bit vector holds 16 columns × 4 weights,
//! `vpdpbusd` multiplies them with 4 broadcast activations; `sub / 4` of them cover a
//! sub-block. It produces, per column and sub-block, the exact integer dot product; the
//! K-quants multiply it by the sub-block's integer scale and sum over the block in integers
//! (`vpmulld`); then the same f32 FMAs per block as the portable kernel. The AVX2 kernel
//! (`avx2.rs`) and the aarch64 one share the prefetch schedule (`prefetch.rs`).

use std::arch::x86_64::*;

use std::ops::Range;

use super::prefetch::prefetch_ahead;
use super::{PackedWeights, QuantizedRows, TileOut, QK, TILE};

/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI, AVX2 and FMA; `q` must hold `m` rows quantized for `w` (`QuantizedRows::quantize`
/// with `w.k`, `w.sub`, `w.act_block`), and `tiles` must lie within `w.num_tiles()`: the
/// activation reads are unchecked.
pub(super) unsafe fn tiles_vnni(
    w: &PackedWeights,
    q: &QuantizedRows,
    m: usize,
    tiles: Range<usize>,
    out: &mut TileOut,
) {
    match (w.sub, w.has_min, w.bits, w.subs_per_block) {
        (32, false, 8, 1) => tiles_vnni_impl::<8, false, false, 0, 1>(w, q, m, tiles, out),
        (32, false, 4, 1) => tiles_vnni_impl::<8, false, true, 0, 1>(w, q, m, tiles, out),
        (32, true, 4, 1) => tiles_vnni_impl::<8, true, true, 0, 1>(w, q, m, tiles, out),
        (32, false, 5, 1) => tiles_vnni_impl::<8, false, true, 1, 1>(w, q, m, tiles, out),
        (32, true, 5, 1) => tiles_vnni_impl::<8, true, true, 1, 1>(w, q, m, tiles, out),
        (32, true, 4, 8) => tiles_vnni_impl::<8, true, true, 0, 8>(w, q, m, tiles, out),
        (32, true, 5, 8) => tiles_vnni_impl::<8, true, true, 1, 8>(w, q, m, tiles, out),
        (16, false, 6, 16) => tiles_vnni_impl::<4, false, true, 2, 16>(w, q, m, tiles, out),
        (16, false, 3, 16) => tiles_vnni_impl::<4, false, true, 0, 16>(w, q, m, tiles, out),
        (16, true, 2, 16) => tiles_vnni_impl::<4, true, true, 0, 16>(w, q, m, tiles, out),
        other => unreachable!("no kernel for packing {other:?}"),
    }
}

/// # Safety
/// As `tiles_vnni`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn tiles_vnni_impl<const G: usize, const MIN: bool, const NIB: bool, const EXTRA: usize, const SPB: usize>(
    w: &PackedWeights,
    q: &QuantizedRows,
    m: usize,
    tiles: Range<usize>,
    out: &mut TileOut,
) {
    for t in tiles {
        let mut r = 0;
        // Rows in groups of 8 (4 for the K-quants with mins, whose integer mins need more
        // registers), then 4, 2, 1: each row's arithmetic is the same in any group.
        while r < m {
            let rows = match m - r {
                8.. if !MIN || SPB == 1 => 8,
                4.. => 4,
                2..=3 => 2,
                _ => 1,
            };
            match rows {
                8 => tile_vnni::<G, MIN, NIB, EXTRA, SPB, 8>(w, q, t, r, out),
                4 => tile_vnni::<G, MIN, NIB, EXTRA, SPB, 4>(w, q, t, r, out),
                2 => tile_vnni::<G, MIN, NIB, EXTRA, SPB, 2>(w, q, t, r, out),
                _ => tile_vnni::<G, MIN, NIB, EXTRA, SPB, 1>(w, q, t, r, out),
            }
            r += rows;
        }
    }
}

/// Rows `r0..r0 + R` of tile `t`.
///
/// # Safety
/// As `tiles_vnni`, and `r0 + R <= m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn tile_vnni<
    const G: usize,
    const MIN: bool,
    const NIB: bool,
    const EXTRA: usize,
    const SPB: usize,
    const R: usize,
>(
    w: &PackedWeights,
    q: &QuantizedRows,
    t: usize,
    r0: usize,
    out: &mut TileOut,
) {
    // SAFETY (the loads below): tile lines, high bits, scales and `d` come from `PackedWeights`'
    // bounds-checked slices and are read within them (64-byte lines are 64-aligned); the
    // activation offsets `(row · nsub + s) · sub` stay below `m · k` for rows below `m`,
    // which the caller guarantees.
    let nsub = w.num_subs();
    // Blocks of one sub-block (Q5_0, Q8_0) finish each row's sub-block right away, which
    // keeps fewer registers live.
    let spb = SPB;
    let mut acc = [_mm512_setzero_ps(); R];
    let low = _mm512_set1_epi8(0x0F);
    let d1 = |b: usize| _mm512_cvtph_ps(_mm256_loadu_si256(w.tile_d(t, b).as_ptr() as *const __m256i));
    let neg_offset = -w.offset;
    for b in 0..nsub / spb {
        // Per row: the block's integer dot product (scaled per sub-block for the K-quants)
        // and, for Q4_K, Σ min × Σx.
        let mut isb = [_mm512_setzero_si512(); R];
        let mut msb = [_mm512_setzero_si512(); R];
        for s in b * spb..(b + 1) * spb {
            let p = w.tile_sub(t, s).as_ptr();
            prefetch_ahead::<G, MIN, NIB, EXTRA, SPB>(w, t, s);
            let mut wv = [_mm512_setzero_si512(); G];
            if NIB {
                // Two groups per line (low and high nibbles), then each extra bit under its mask.
                for i in 0..G / 2 {
                    let v = _mm512_load_si512(p.add(i * 64) as *const _);
                    wv[2 * i] = _mm512_and_si512(v, low);
                    wv[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
                if EXTRA > 0 {
                    // Group g's high bits sit at bit g·EXTRA of each byte: shift them to bit 4
                    // (16-bit shifts: what crosses a byte boundary lands outside the mask).
                    let hb = _mm512_load_si512(w.tile_high(t, s).as_ptr() as *const _);
                    let hmask = _mm512_set1_epi8((((1u32 << EXTRA) - 1) << 4) as i8);
                    for (g, v) in wv.iter_mut().enumerate() {
                        let at = (g * EXTRA) as i64;
                        let moved = if at <= 4 {
                            _mm512_sll_epi16(hb, _mm_set_epi64x(0, 4 - at))
                        } else {
                            _mm512_srl_epi16(hb, _mm_set_epi64x(0, at - 4))
                        };
                        *v = _mm512_or_si512(*v, _mm512_and_si512(moved, hmask));
                    }
                }
            } else {
                for (g, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_load_si512(p.add(g * 64) as *const _);
                }
            }
            let sc = if SPB > 1 {
                _mm512_cvtepi8_epi32(_mm_loadu_si128(w.tile_sub_scales(t, s).as_ptr() as *const __m128i))
            } else {
                _mm512_setzero_si512()
            };
            let mn = if MIN && SPB > 1 {
                _mm512_cvtepi8_epi32(_mm_loadu_si128(w.tile_sub_mins(t, s).as_ptr() as *const __m128i))
            } else {
                _mm512_setzero_si512()
            };
            let d = if SPB > 1 { _mm512_setzero_ps() } else { d1(b) };
            // Q4_1/Q5_1: the block's `m` (integer min 1).
            let nd1 = if MIN && SPB == 1 {
                _mm512_cvtph_ps(_mm256_loadu_si256(w.tile_neg_dmin(t, b).as_ptr() as *const __m256i))
            } else {
                _mm512_setzero_ps()
            };
            for (i, (ib, mb)) in isb.iter_mut().zip(msb.iter_mut()).enumerate() {
                let qs = (r0 + i) * nsub + s;
                let xsum = *q.isums.get_unchecked(qs);
                let xp = q.qs.as_ptr().add(qs * G * 4) as *const i32;
                let mut isum = _mm512_set1_epi32(neg_offset * xsum);
                for (g, v) in wv.iter().enumerate() {
                    isum = _mm512_dpbusd_epi32(isum, *v, _mm512_set1_epi32(xp.add(g).read_unaligned()));
                }
                if SPB == 1 {
                    let dx = _mm512_set1_ps(*q.d.get_unchecked(qs * G * 4 / QK));
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, dx), acc[i]);
                    if MIN {
                        let xs = _mm512_cvtepi32_ps(_mm512_set1_epi32(xsum));
                        acc[i] = _mm512_fmadd_ps(xs, _mm512_mul_ps(nd1, dx), acc[i]);
                    }
                    continue;
                }
                *ib = _mm512_add_epi32(*ib, _mm512_mullo_epi32(isum, sc));
                if MIN {
                    *mb = _mm512_add_epi32(*mb, _mm512_mullo_epi32(mn, _mm512_set1_epi32(xsum)));
                }
            }
        }
        if SPB == 1 {
            continue;
        }
        let d = d1(b);
        let nd = if MIN {
            _mm512_cvtph_ps(_mm256_loadu_si256(w.tile_neg_dmin(t, b).as_ptr() as *const __m256i))
        } else {
            _mm512_setzero_ps()
        };
        for (i, a) in acc.iter_mut().enumerate() {
            let dx = _mm512_set1_ps(*q.d.get_unchecked(((r0 + i) * nsub + b * spb) * G * 4 / QK));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isb[i]), _mm512_mul_ps(d, dx), *a);
            if MIN {
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msb[i]), _mm512_mul_ps(nd, dx), *a);
            }
        }
    }
    let c0 = t * TILE;
    let valid = (w.n - c0).min(TILE);
    let mask: __mmask16 = if valid == TILE { 0xFFFF } else { (1u16 << valid) - 1 };
    for (i, a) in acc.iter().enumerate() {
        // The mask covers exactly the tile's valid columns: the slice's length.
        _mm512_mask_storeu_ps(out.row_tile(r0 + i, t).as_mut_ptr(), mask, *a);
    }
}
