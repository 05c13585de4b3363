//! AVX2 kernel over packed tiles (for CPUs without AVX-512: Intel's small cores and laptops,
//! Zen 1–3). A 16-column tile is two 8-column halves of 256 bits; per sub-block and half, the
//! weights are decoded once into `sub / 4` registers of 8 columns × 4 values and reused for a
//! group of up to `ROWS` activation rows, so prefill decodes each weight byte once per eight
//! rows (four for types with mins) instead of once per row. The products come from `vpmaddubsw` (unsigned weight bytes
//! × signed activation bytes, pairs summed to i16); as many of them as cannot overflow 16 bits
//! (`PAIR`, from the weight's bit width) are summed in i16 before one `vpmaddwd` widens them,
//! which halves the widening work for 5-bit weights and cuts it to an eighth for 4-bit ones.
//! Q8_0's values need the sign trick (`(w + 128) · x` pairs would saturate 16 bits).
//! On CPUs with AVX-VNNI (Alder Lake and later, Zen 5's 256-bit path) the same kernel is built
//! a second time with `vpdpbusd` (`Level::AvxVnni`): 4 products summed straight into i32, no
//! 16-bit step.
//!
//! Every sum here is an exact integer sum, so the order of the i16 and i32 additions cannot
//! change it: per column and sub-block the kernel produces the same integer dot product as the
//! portable and AVX-512 kernels, then the same f32 FMAs per block — the same bits.

use std::arch::x86_64::*;
use std::ops::Range;

use super::prefetch::prefetch_ahead;
use super::{PackedWeights, QuantizedRows, TileOut, QK, TILE};

/// Rows that share one decoding of the weights. Four rows keep a half's 8 weight registers,
/// one row's sums and the constants inside AVX2's 16 registers; the per-row block sums live
/// on the stack (L1). Measured on a Zen 1 EPYC (`slm bench-kernels`): 2 rows gain less, 8
/// spill the weights themselves.
const ROWS: usize = 8;

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `q` must hold `m` rows quantized for `w`
/// (`QuantizedRows::quantize` with `w.k`, `w.sub`, `w.act_block`), and `tiles` must lie within
/// `w.num_tiles()`: the activation reads are unchecked.
pub(super) unsafe fn tiles_avx2(
    w: &PackedWeights,
    q: &QuantizedRows,
    m: usize,
    tiles: Range<usize>,
    out: &mut TileOut,
    vnni: bool,
) {
    macro_rules! run {
        ($($c:tt)*) => {
            if vnni {
                tiles_impl_vnni::<$($c)*>(w, q, m, tiles, out)
            } else {
                tiles_impl::<$($c)*>(w, q, m, tiles, out)
            }
        };
    }
    // PAIR: products of `bits`-bit unsigned weights and activations in [-127, 127] summed in
    // i16 without overflow: 2 · (2^bits − 1) · 127 per `vpmaddubsw` lane, so 8 (4-bit), 4
    // (5-bit), 2 (6-bit), and all 4 groups of the 2- and 3-bit K-quants; Q8_0's signed
    // products reach 32,512 and get no pairing.
    match (w.sub, w.has_min, w.bits, w.subs_per_block) {
        (32, false, 8, 1) => run!(8, false, true, false, 0, 1, 1),
        (32, false, 4, 1) => run!(8, false, false, true, 0, 1, 8),
        (32, true, 4, 1) => run!(8, true, false, true, 0, 1, 8),
        (32, false, 5, 1) => run!(8, false, false, true, 1, 1, 4),
        (32, true, 5, 1) => run!(8, true, false, true, 1, 1, 4),
        (32, true, 4, 8) => run!(8, true, false, true, 0, 8, 8),
        (32, true, 5, 8) => run!(8, true, false, true, 1, 8, 4),
        (16, false, 6, 16) => run!(4, false, false, true, 2, 16, 2),
        (16, false, 3, 16) => run!(4, false, false, true, 0, 16, 4),
        (16, true, 2, 16) => run!(4, true, false, true, 0, 16, 4),
        other => unreachable!("no kernel for packing {other:?}"),
    }
}

/// The row-group loop and the tile kernel, built once for AVX2 and once for AVX-VNNI (whose
/// `vpdpbusd` replaces each `vpmaddubsw` + `vpmaddwd` pair).
macro_rules! level_kernels {
    ($tiles_impl:ident, $tile:ident, $features:literal, $vnni:literal) => {
        /// # Safety
        /// As `tiles_avx2`, and the CPU must have this function's features.
        #[target_feature(enable = $features)]
        unsafe fn $tiles_impl<
            const G: usize,
            const MIN: bool,
            const SIGNED: bool,
            const NIB: bool,
            const EXTRA: usize,
            const SPB: usize,
            const PAIR: usize,
        >(
            w: &PackedWeights,
            q: &QuantizedRows,
            m: usize,
            tiles: Range<usize>,
            out: &mut TileOut,
        ) {
            for t in tiles {
                let mut r = 0;
                // Each row's arithmetic is the same in any group: only the decoding is shared.
                while r < m {
                    // Types with mins keep more sums per row: 4 rows; Q8_0 twice the registers per
                    // group: 2 rows.
                    let rows = match m - r {
                        // With `vpdpbusd`, 16-value sub-blocks (Q3_K, Q6_K) measured faster at 4 rows.
                        ROWS.. if !SIGNED && !MIN && !($vnni && G == 4) => ROWS,
                        4.. if !SIGNED => 4,
                        2.. => 2,
                        _ => 1,
                    };
                    match rows {
                        ROWS => $tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, ROWS>(w, q, t, r, out),
                        4 => $tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, 4>(w, q, t, r, out),
                        2 => $tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, 2>(w, q, t, r, out),
                        _ => $tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, 1>(w, q, t, r, out),
                    }
                    r += rows;
                }
            }
        }

        /// Rows `r0..r0 + R` of tile `t`.
        ///
        /// # Safety
        /// As `tiles_avx2`, and `r0 + R <= m`.
        #[target_feature(enable = $features)]
        unsafe fn $tile<
            const G: usize,
            const MIN: bool,
            const SIGNED: bool,
            const NIB: bool,
            const EXTRA: usize,
            const SPB: usize,
            const PAIR: usize,
            const R: usize,
        >(
            w: &PackedWeights,
            q: &QuantizedRows,
            t: usize,
            r0: usize,
            out: &mut TileOut,
        ) {
            // SAFETY (the loads below): scales, mins and `d` come from `PackedWeights`' bounds-checked
            // slices (16 per tile, read as two halves of 8); the activation offsets `(row · nsub + s)
            // · sub` stay below `m · k` for rows below `m`, which the caller guarantees.
            let nsub = w.num_subs();
            let ones = _mm256_set1_epi16(1);
            let flip = _mm256_set1_epi8(-128);
            let neg_offset = -w.offset;
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for b in 0..nsub / SPB {
                // Per row and half: the block's integer dot product (scaled per sub-block for the
                // K-quants) and, for types with mins, Σ min × Σx.
                let mut isb = [[_mm256_setzero_si256(); 2]; R];
                let mut msb = [[_mm256_setzero_si256(); 2]; R];
                for s in b * SPB..(b + 1) * SPB {
                    prefetch_ahead::<G, MIN, NIB, EXTRA, SPB>(w, t, s);
                    for h in 0..2 {
                        // Q8_0 multiplies |w| (unsigned) by x carrying w's sign: twice the registers
                        // per group, so its groups are taken 4 at a time, loaded where they are used.
                        let wd =
                            if SIGNED { [_mm256_setzero_si256(); G] } else { decode_half::<G, NIB, EXTRA>(w, t, s, h) };
                        let chunk = if SIGNED { 4.min(G) } else { G };
                        let sc = if SPB > 1 {
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                w.tile_sub_scales(t, s).as_ptr().add(h * 8) as *const __m128i
                            ))
                        } else {
                            _mm256_setzero_si256()
                        };
                        let mn = if MIN && SPB > 1 {
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                w.tile_sub_mins(t, s).as_ptr().add(h * 8) as *const __m128i
                            ))
                        } else {
                            _mm256_setzero_si256()
                        };
                        let xsum: [i32; R] = std::array::from_fn(|i| *q.isums.get_unchecked((r0 + i) * nsub + s));
                        // Q8_0's sign trick multiplies the signed values: no offset correction.
                        let mut isum: [__m256i; R] = std::array::from_fn(|i| {
                            if SIGNED {
                                _mm256_setzero_si256()
                            } else {
                                _mm256_set1_epi32(neg_offset * xsum[i])
                            }
                        });
                        for c0 in (0..G).step_by(chunk) {
                            let (mut wu, mut ws) = ([_mm256_setzero_si256(); G], [_mm256_setzero_si256(); G]);
                            for g in c0..c0 + chunk {
                                if SIGNED {
                                    let p = w.tile_sub(t, s).as_ptr();
                                    ws[g] = _mm256_xor_si256(
                                        _mm256_load_si256(p.add(g * 64 + h * 32) as *const __m256i),
                                        flip,
                                    );
                                    wu[g] = _mm256_sign_epi8(ws[g], ws[g]);
                                } else {
                                    wu[g] = wd[g];
                                }
                            }
                            for (i, isum) in isum.iter_mut().enumerate() {
                                let xp = q.qs.as_ptr().add(((r0 + i) * nsub + s) * G * 4) as *const i32;
                                if $vnni {
                                    for g in c0..c0 + chunk {
                                        let xb = _mm256_set1_epi32(xp.add(g).read_unaligned());
                                        let xb = if SIGNED { _mm256_sign_epi8(xb, ws[g]) } else { xb };
                                        *isum = _mm256_dpbusd_avx_epi32(*isum, wu[g], xb);
                                    }
                                    continue;
                                }
                                for g0 in (c0..c0 + chunk).step_by(PAIR) {
                                    let mut p16 = _mm256_setzero_si256();
                                    for g in g0..g0 + PAIR {
                                        let xb = _mm256_set1_epi32(xp.add(g).read_unaligned());
                                        let xb = if SIGNED { _mm256_sign_epi8(xb, ws[g]) } else { xb };
                                        p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(wu[g], xb));
                                    }
                                    *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(p16, ones));
                                }
                            }
                        }
                        for i in 0..R {
                            isb[i][h] = if SPB > 1 {
                                _mm256_add_epi32(isb[i][h], _mm256_mullo_epi32(isum[i], sc))
                            } else {
                                isum[i]
                            };
                            if MIN && SPB > 1 {
                                msb[i][h] =
                                    _mm256_add_epi32(msb[i][h], _mm256_mullo_epi32(mn, _mm256_set1_epi32(xsum[i])));
                            } else if MIN {
                                // Q4_1/Q5_1: an integer min of 1.
                                msb[i][h] = _mm256_set1_epi32(xsum[i]);
                            }
                        }
                    }
                }
                for h in 0..2 {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(w.tile_d(t, b).as_ptr().add(h * 8) as *const __m128i));
                    let nd = if MIN {
                        _mm256_cvtph_ps(_mm_loadu_si128(w.tile_neg_dmin(t, b).as_ptr().add(h * 8) as *const __m128i))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for i in 0..R {
                        let dx = _mm256_set1_ps(*q.d.get_unchecked(((r0 + i) * nsub + b * SPB) * G * 4 / QK));
                        let a = &mut acc[i][h];
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isb[i][h]), _mm256_mul_ps(d, dx), *a);
                        if MIN {
                            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msb[i][h]), _mm256_mul_ps(nd, dx), *a);
                        }
                    }
                }
            }
            let valid = (w.n - t * TILE).min(TILE);
            for (i, a) in acc.iter().enumerate() {
                let mut lanes = [0f32; TILE];
                _mm256_storeu_ps(lanes.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a[1]);
                out.row_tile(r0 + i, t).copy_from_slice(&lanes[..valid]);
            }
        }
    };
}

level_kernels!(tiles_impl, tile, "avx2,fma,f16c", false);
level_kernels!(tiles_impl_vnni, tile_vnni, "avx2,fma,f16c,avxvnni", true);

/// Half `h` (8 columns) of every group of tile `t`, sub-block `s`, as unsigned bytes.
///
/// # Safety
/// As `tiles_avx2`; `h < 2`.
#[inline(always)]
unsafe fn decode_half<const G: usize, const NIB: bool, const EXTRA: usize>(
    w: &PackedWeights,
    t: usize,
    s: usize,
    h: usize,
) -> [__m256i; G] {
    // SAFETY: the tile's lines are `G` (bytes) or `G / 2` (nibbles) 64-byte aligned lines, and
    // its high bits one more (`PackedWeights::tile_sub`, `tile_high`); half `h` is bytes `32h..
    // 32h + 32` of each line.
    let p = w.tile_sub(t, s).as_ptr();
    let mut wd = [_mm256_setzero_si256(); G];
    if !NIB {
        for (g, v) in wd.iter_mut().enumerate() {
            *v = _mm256_load_si256(p.add(g * 64 + h * 32) as *const __m256i);
        }
        return wd;
    }
    let low = _mm256_set1_epi8(0x0F);
    for i in 0..G / 2 {
        let v = _mm256_load_si256(p.add(i * 64 + h * 32) as *const __m256i);
        wd[2 * i] = _mm256_and_si256(v, low);
        wd[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    }
    if EXTRA > 0 {
        // Group g's high bits sit at bit g·EXTRA of each byte: shift them to bit 4 (16-bit
        // shifts: what crosses a byte boundary lands outside the mask).
        let hb = _mm256_load_si256(w.tile_high(t, s).as_ptr().add(h * 32) as *const __m256i);
        let hmask = _mm256_set1_epi8((((1u32 << EXTRA) - 1) << 4) as i8);
        for (g, v) in wd.iter_mut().enumerate() {
            let at = (g * EXTRA) as i64;
            let moved = if at <= 4 {
                _mm256_sll_epi16(hb, _mm_set_epi64x(0, 4 - at))
            } else {
                _mm256_srl_epi16(hb, _mm_set_epi64x(0, at - 4))
            };
            *v = _mm256_or_si256(*v, _mm256_and_si256(moved, hmask));
        }
    }
    wd
}
