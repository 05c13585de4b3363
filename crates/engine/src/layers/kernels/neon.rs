//! aarch64 kernels over packed tiles, for ARM boards (Raspberry Pi, RK3588, Jetson, Graviton,
//! Apple silicon). A 16-column tile is four quarters of 4 columns, one 128-bit register each:
//! per sub-block and quarter the weights are decoded once into `sub / 4` registers of 4
//! columns × 4 values and reused for up to `ROWS` activation rows. Three ways to multiply,
//! chosen at run time (`Level`):
//! - `dotprod` (ARMv8.2+, Cortex-A55/A76 and later): `sdot` by element sums each column's 4
//!   products with one of 4 activations held in a register, the 128-bit twin of `vpdpbusd`;
//! - `i8mm` (ARMv8.6+, Neoverse V1/N2, Apple M2+): `smmla` multiplies two rows × 8 values by
//!   two columns × 8 values into 2 × 2 sums, so a pair of rows costs half the instructions;
//!   the weight registers are regrouped once per quarter (two groups' 4 values zipped into 8);
//! - plain NEON (ARMv8.0, Cortex-A53/A72): `smull` pairs of products widened to i16, summed in
//!   i16 as far as 16 bits cannot overflow (`PAIR`, as the AVX2 kernel), then pairwise into i32.
//!
//! Weight values are unsigned (`value + offset`, at most 63) and fit a signed byte, so all three
//! use signed-by-signed products; Q8_0's bytes flip back to the signed value (`^ 0x80`), which
//! needs no offset correction. Every sum is an exact integer sum and the f32 steps are the
//! portable kernel's (`fmla` is one rounding, like `vfmadd`): the same bits as every other
//! level. `sdot`, `smmla` and the f16 widening are written as `asm!`, their intrinsics being
//! unstable in Rust; the helpers carry no `target_feature` of their own and are only called
//! (inlined) from the entry functions built with `dotprod` / `i8mm`.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::prefetch::prefetch_ahead;
use super::{PackedWeights, QuantizedRows, TileOut, QK, TILE};

/// How a kernel multiplies (the `Level` it serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Mull,
    Dot,
    Mmla,
}

const MULL: u8 = 0;
const DOT: u8 = 1;
const MMLA: u8 = 2;

/// Rows that share one decoding of the weights: a quarter's 8 weight registers, four rows'
/// activations and sums stay inside the 32 registers.
const ROWS: usize = 4;

/// # Safety
/// The CPU must have the features of `mode` (NEON; `dotprod`; `dotprod` and `i8mm`); `q` must
/// hold `m` rows quantized for `w` (`QuantizedRows::quantize` with `w.k`, `w.sub`,
/// `w.act_block`), and `tiles` must lie within `w.num_tiles()`: the activation reads are
/// unchecked.
pub(super) unsafe fn tiles_neon(
    w: &PackedWeights,
    q: &QuantizedRows,
    m: usize,
    tiles: Range<usize>,
    out: &mut TileOut,
    mode: Mode,
) {
    // PAIR (plain NEON only): as the AVX2 kernel's, products of `bits`-bit weights and
    // activations in [-127, 127] summed in i16 without overflow.
    match (w.sub, w.has_min, w.bits, w.subs_per_block) {
        (32, false, 8, 1) => by_mode::<8, false, true, false, 0, 1, 1>(w, q, m, tiles, out, mode),
        (32, false, 4, 1) => by_mode::<8, false, false, true, 0, 1, 8>(w, q, m, tiles, out, mode),
        (32, true, 4, 1) => by_mode::<8, true, false, true, 0, 1, 8>(w, q, m, tiles, out, mode),
        (32, false, 5, 1) => by_mode::<8, false, false, true, 1, 1, 4>(w, q, m, tiles, out, mode),
        (32, true, 5, 1) => by_mode::<8, true, false, true, 1, 1, 4>(w, q, m, tiles, out, mode),
        (32, true, 4, 8) => by_mode::<8, true, false, true, 0, 8, 8>(w, q, m, tiles, out, mode),
        (32, true, 5, 8) => by_mode::<8, true, false, true, 1, 8, 4>(w, q, m, tiles, out, mode),
        (16, false, 6, 16) => by_mode::<4, false, false, true, 2, 16, 2>(w, q, m, tiles, out, mode),
        (16, false, 3, 16) => by_mode::<4, false, false, true, 0, 16, 4>(w, q, m, tiles, out, mode),
        (16, true, 2, 16) => by_mode::<4, true, false, true, 0, 16, 4>(w, q, m, tiles, out, mode),
        other => unreachable!("no kernel for packing {other:?}"),
    }
}

/// # Safety
/// As `tiles_neon`.
#[inline(always)]
unsafe fn by_mode<
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
    mode: Mode,
) {
    match mode {
        Mode::Mull => tiles_mull::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR>(w, q, m, tiles, out),
        Mode::Dot => tiles_dot::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR>(w, q, m, tiles, out),
        Mode::Mmla => tiles_mmla::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR>(w, q, m, tiles, out),
    }
}

macro_rules! level_entry {
    ($name:ident, $features:literal, $mode:expr) => {
        /// # Safety
        /// As `tiles_neon`, with this function's features.
        #[target_feature(enable = $features)]
        unsafe fn $name<
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
                    let rows = match m - r {
                        ROWS.. => ROWS,
                        2.. => 2,
                        _ => 1,
                    };
                    match rows {
                        ROWS => tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, ROWS, { $mode }>(w, q, t, r, out),
                        2 => tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, 2, { $mode }>(w, q, t, r, out),
                        _ => tile::<G, MIN, SIGNED, NIB, EXTRA, SPB, PAIR, 1, { $mode }>(w, q, t, r, out),
                    }
                    r += rows;
                }
            }
        }
    };
}

level_entry!(tiles_mull, "neon", MULL);
level_entry!(tiles_dot, "neon,dotprod", DOT);
level_entry!(tiles_mmla, "neon,dotprod,i8mm", MMLA);

/// `acc + Σ_j w[4c + j] · x[4I + j]` per column c (`sdot` by element).
///
/// # Safety
/// The CPU must have `dotprod`.
#[inline(always)]
unsafe fn sdot_lane<const I: usize>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!("sdot {r:v}.4s, {w:v}.16b, {x:v}.4b[{i}]", r = inout(vreg) r, w = in(vreg) w, x = in(vreg) x,
         i = const I, options(pure, nomem, nostack, preserves_flags));
    r
}

/// `acc + A · Bᵀ` for A = two rows of 8 (`a`), B = two columns of 8 (`b`): [a0·b0, a0·b1,
/// a1·b0, a1·b1] (`smmla`).
///
/// # Safety
/// The CPU must have `i8mm`.
#[inline(always)]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!("smmla {r:v}.4s, {a:v}.16b, {b:v}.16b", r = inout(vreg) r, a = in(vreg) a, b = in(vreg) b,
         options(pure, nomem, nostack, preserves_flags));
    r
}

/// Four f16 values at `p`, widened exactly.
///
/// # Safety
/// `p` must point to 4 readable u16 (NEON is part of every aarch64).
#[inline(always)]
pub(crate) unsafe fn load_f16x4(p: *const u16) -> float32x4_t {
    let h = vreinterpret_s16_u16(vld1_u16(p));
    let out: float32x4_t;
    // Not `preserves_flags`: a signalling NaN sets FPSR's invalid-operation bit.
    asm!("fcvtl {o:v}.4s, {h:v}.4h", o = out(vreg) out, h = in(vreg) h, options(pure, nomem, nostack));
    out
}

/// A tile's 16 integer scales (or mins), widened to four quarters of 4 × i32.
///
/// # Safety
/// NEON (every aarch64); `v` holds 16 values (`tile_columns` slices do).
#[inline(always)]
unsafe fn widen16(v: &[i8]) -> [int32x4_t; 4] {
    assert!(v.len() >= 16);
    let b = vld1q_s8(v.as_ptr());
    let (lo, hi) = (vmovl_s8(vget_low_s8(b)), vmovl_high_s8(b));
    [vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)), vmovl_high_s16(hi)]
}

/// Quarter `h` (4 columns) of every group of tile `t`, sub-block `s`, as bytes: unsigned
/// values below 64, or (Q8_0) the signed values.
///
/// # Safety
/// As `tiles_neon`; `h < 4`.
#[inline(always)]
unsafe fn decode_quarter<const G: usize, const SIGNED: bool, const NIB: bool, const EXTRA: usize>(
    w: &PackedWeights,
    t: usize,
    s: usize,
    h: usize,
) -> [int8x16_t; G] {
    // SAFETY: the tile's lines are `G` (bytes) or `G / 2` (nibbles) 64-byte lines, and its
    // high bits one more (`PackedWeights::tile_sub`, `tile_high`); quarter `h` is bytes
    // `16h..16h + 16` of each line.
    let p = w.tile_sub(t, s).as_ptr();
    let mut wd = [vdupq_n_s8(0); G];
    if !NIB {
        for (g, v) in wd.iter_mut().enumerate() {
            let b = vld1q_u8(p.add(g * 64 + h * 16));
            *v = vreinterpretq_s8_u8(if SIGNED { veorq_u8(b, vdupq_n_u8(0x80)) } else { b });
        }
        return wd;
    }
    let low = vdupq_n_u8(0x0F);
    let mut u = [vdupq_n_u8(0); G];
    for i in 0..G / 2 {
        let v = vld1q_u8(p.add(i * 64 + h * 16));
        u[2 * i] = vandq_u8(v, low);
        u[2 * i + 1] = vshrq_n_u8::<4>(v);
    }
    if EXTRA > 0 {
        // Group g's high bits sit at bit g·EXTRA of each byte: shift them to bit 4.
        let hb = vld1q_u8(w.tile_high(t, s).as_ptr().add(h * 16));
        let hmask = vdupq_n_u8((((1u32 << EXTRA) - 1) << 4) as u8);
        for (g, v) in u.iter_mut().enumerate() {
            let moved = vshlq_u8(hb, vdupq_n_s8(4 - (g * EXTRA) as i8));
            *v = vorrq_u8(*v, vandq_u8(moved, hmask));
        }
    }
    for (d, v) in wd.iter_mut().zip(u) {
        *d = vreinterpretq_s8_u8(v);
    }
    wd
}

/// Σ over the sub-block's groups of `w · x` per column, for one row whose sub-block
/// activations start at `xp` (`4 G` bytes), added to `init`.
///
/// # Safety
/// The CPU must have MODE's features; `xp` must point to `4 G` readable bytes.
#[inline(always)]
unsafe fn row_dots<const G: usize, const PAIR: usize, const MODE: u8>(
    wd: &[int8x16_t; G],
    xp: *const i8,
    init: int32x4_t,
) -> int32x4_t {
    let mut isum = init;
    if MODE == MULL {
        for g0 in (0..G).step_by(PAIR) {
            let mut p16 = vdupq_n_s16(0);
            for (g, &wg) in wd.iter().enumerate().skip(g0).take(PAIR) {
                let xb = vreinterpretq_s8_s32(vdupq_n_s32((xp.add(4 * g) as *const i32).read_unaligned()));
                let lo = vmull_s8(vget_low_s8(wg), vget_low_s8(xb));
                let hi = vmull_high_s8(wg, xb);
                // Lanes: (column c, values 0+1) and (c, 2+3) for the quarter's 4 columns.
                p16 = vaddq_s16(p16, vpaddq_s16(lo, hi));
            }
            isum = vpadalq_s16(isum, p16);
        }
        return isum;
    }
    for c in 0..G / 4 {
        let x = vld1q_s8(xp.add(16 * c));
        isum = sdot_lane::<0>(isum, wd[4 * c], x);
        isum = sdot_lane::<1>(isum, wd[4 * c + 1], x);
        isum = sdot_lane::<2>(isum, wd[4 * c + 2], x);
        isum = sdot_lane::<3>(isum, wd[4 * c + 3], x);
    }
    isum
}

/// Rows `r0..r0 + R` of tile `t`.
///
/// # Safety
/// As `tiles_neon` (the features of MODE), and `r0 + R <= m`.
#[inline(always)]
unsafe fn tile<
    const G: usize,
    const MIN: bool,
    const SIGNED: bool,
    const NIB: bool,
    const EXTRA: usize,
    const SPB: usize,
    const PAIR: usize,
    const R: usize,
    const MODE: u8,
>(
    w: &PackedWeights,
    q: &QuantizedRows,
    t: usize,
    r0: usize,
    out: &mut TileOut,
) {
    // SAFETY (the loads below): scales, mins and `d` come from `PackedWeights`' bounds-checked
    // slices (16 per tile, read as four quarters of 4); the activation offsets `(row · nsub +
    // s) · sub` stay below `m · k` for rows below `m`, which the caller guarantees.
    let nsub = w.num_subs();
    let neg_offset = -w.offset;
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    for b in 0..nsub / SPB {
        // Per row and quarter: the block's integer dot product (scaled per sub-block for the
        // K-quants) and, for types with mins, Σ min × Σx.
        let mut isb = [[vdupq_n_s32(0); 4]; R];
        let mut msb = [[vdupq_n_s32(0); 4]; R];
        for s in b * SPB..(b + 1) * SPB {
            prefetch_ahead::<G, MIN, NIB, EXTRA, SPB>(w, t, s);
            let xsum: [i32; R] = std::array::from_fn(|i| *q.isums.get_unchecked((r0 + i) * nsub + s));
            let xp: [*const i8; R] = std::array::from_fn(|i| q.qs.as_ptr().add(((r0 + i) * nsub + s) * G * 4));
            // i8mm: per pair of rows and 8 values, the two rows' bytes side by side.
            let mut xpair = [[vdupq_n_s8(0); 4]; R];
            if MODE == MMLA {
                for i in (0..R - R % 2).step_by(2) {
                    for c in 0..G / 4 {
                        let (a, b) = (vld1q_s8(xp[i].add(16 * c)), vld1q_s8(xp[i + 1].add(16 * c)));
                        let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
                        xpair[i][2 * c] = vreinterpretq_s8_s64(vzip1q_s64(a, b));
                        xpair[i][2 * c + 1] = vreinterpretq_s8_s64(vzip2q_s64(a, b));
                    }
                }
            }
            let scales = if SPB > 1 { widen16(w.tile_sub_scales(t, s)) } else { [vdupq_n_s32(0); 4] };
            let mins = if MIN && SPB > 1 { widen16(w.tile_sub_mins(t, s)) } else { [vdupq_n_s32(0); 4] };
            for h in 0..4 {
                let wd = decode_quarter::<G, SIGNED, NIB, EXTRA>(w, t, s, h);
                let (sc, mn) = (scales[h], mins[h]);
                // Q8_0 multiplies the signed values: no offset correction.
                let init: [int32x4_t; R] =
                    std::array::from_fn(|i| vdupq_n_s32(if SIGNED { 0 } else { neg_offset * xsum[i] }));
                let mut isum = [vdupq_n_s32(0); R];
                let mut i = 0;
                if MODE == MMLA {
                    // Two columns × 8 values per register: groups 2p and 2p + 1 zipped.
                    let bz: [[int8x16_t; 2]; 4] = std::array::from_fn(|p| {
                        if 2 * p + 1 < G {
                            let (a, b) = (vreinterpretq_s32_s8(wd[2 * p]), vreinterpretq_s32_s8(wd[2 * p + 1]));
                            [vreinterpretq_s8_s32(vzip1q_s32(a, b)), vreinterpretq_s8_s32(vzip2q_s32(a, b))]
                        } else {
                            [vdupq_n_s8(0); 2]
                        }
                    });
                    while i + 1 < R {
                        let (mut c01, mut c23) = (vdupq_n_s32(0), vdupq_n_s32(0));
                        for p in 0..G / 2 {
                            c01 = smmla(c01, xpair[i][p], bz[p][0]);
                            c23 = smmla(c23, xpair[i][p], bz[p][1]);
                        }
                        let (c01, c23) = (vreinterpretq_s64_s32(c01), vreinterpretq_s64_s32(c23));
                        isum[i] = vaddq_s32(init[i], vreinterpretq_s32_s64(vzip1q_s64(c01, c23)));
                        isum[i + 1] = vaddq_s32(init[i + 1], vreinterpretq_s32_s64(vzip2q_s64(c01, c23)));
                        i += 2;
                    }
                }
                while i < R {
                    isum[i] = if MODE == MULL {
                        row_dots::<G, PAIR, MULL>(&wd, xp[i], init[i])
                    } else {
                        row_dots::<G, PAIR, DOT>(&wd, xp[i], init[i])
                    };
                    i += 1;
                }
                for i in 0..R {
                    isb[i][h] = if SPB > 1 { vmlaq_s32(isb[i][h], isum[i], sc) } else { isum[i] };
                    if MIN && SPB > 1 {
                        msb[i][h] = vmlaq_n_s32(msb[i][h], mn, xsum[i]);
                    } else if MIN {
                        // Q4_1/Q5_1: an integer min of 1.
                        msb[i][h] = vdupq_n_s32(xsum[i]);
                    }
                }
            }
        }
        for h in 0..4 {
            let d = load_f16x4(w.tile_d(t, b).as_ptr().add(h * 4));
            let nd = if MIN { load_f16x4(w.tile_neg_dmin(t, b).as_ptr().add(h * 4)) } else { vdupq_n_f32(0.0) };
            for i in 0..R {
                let dx = *q.d.get_unchecked(((r0 + i) * nsub + b * SPB) * G * 4 / QK);
                let a = &mut acc[i][h];
                *a = vfmaq_f32(*a, vcvtq_f32_s32(isb[i][h]), vmulq_n_f32(d, dx));
                if MIN {
                    *a = vfmaq_f32(*a, vcvtq_f32_s32(msb[i][h]), vmulq_n_f32(nd, dx));
                }
            }
        }
    }
    let valid = (w.n - t * TILE).min(TILE);
    for (i, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; TILE];
        for (h, v) in a.iter().enumerate() {
            vst1q_f32(lanes.as_mut_ptr().add(h * 4), *v);
        }
        out.row_tile(r0 + i, t).copy_from_slice(&lanes[..valid]);
    }
}
