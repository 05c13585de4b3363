//! The SIMD kernels' prefetch schedule: while a tile's sub-block is multiplied, the bytes
//! `PREFETCH_BYTES` ahead in each of the tile's streams (lines, high bits, scales, mins, `d`)
//! are asked for. Called by the AVX-512, AVX2 and aarch64 kernels (and attention, for its
//! next key block); a hint only, so it changes
//! no result.

use super::{PackedWeights, TILE};

/// How far ahead of the sub-block being multiplied its weight bytes are prefetched. A single
/// row's matmul reads each weight byte once, straight from memory; the hardware prefetcher
/// alone kept only ~20 GB/s of a Zen 5's ~39 in flight (`slm bench-kernels
/// --streaming-only`: Q5_0 19.5 → 30 GB/s with it).
const PREFETCH_BYTES: usize = 4096;

/// Asks for the cache line at `p` (any address: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of every x86-64, and a prefetch never faults nor writes.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` is a hint in every aarch64: it never faults, reads nothing into the
    // program and writes nothing.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// Prefetches the lines, masks, scales and mins `PREFETCH_BYTES` ahead in each of the tile
/// streams (a tile's sub-blocks, and then the next tile's, are contiguous in each). Addresses
/// past the weights' end are harmless (`wrapping_add`).
#[inline(always)]
pub(super) fn prefetch_ahead<const G: usize, const MIN: bool, const NIB: bool, const EXTRA: usize, const SPB: usize>(
    w: &PackedWeights,
    t: usize,
    s: usize,
) {
    let p = w.tile_sub(t, s).as_ptr() as *const i8;
    let lines = if NIB { G / 2 } else { G };
    for i in 0..lines {
        prefetch_line(p.wrapping_add(PREFETCH_BYTES + i * 64));
    }
    // The side streams hold fewer bytes per sub-block: prefetch them proportionally ahead.
    let ahead = |bytes_per_sub: usize| PREFETCH_BYTES * bytes_per_sub / (lines * 64);
    let fetch = |p: *const i8, bytes_per_sub: usize| prefetch_line(p.wrapping_add(ahead(bytes_per_sub)));
    if EXTRA > 0 {
        fetch(w.tile_high(t, s).as_ptr() as *const i8, 64);
    }
    if SPB > 1 {
        fetch(w.tile_sub_scales(t, s).as_ptr(), TILE);
    }
    if MIN && SPB > 1 {
        fetch(w.tile_sub_mins(t, s).as_ptr(), TILE);
    }
    fetch(w.tile_d(t, s / SPB).as_ptr() as *const i8, TILE * 2 / SPB);
    if MIN {
        fetch(w.tile_neg_dmin(t, s / SPB).as_ptr() as *const i8, TILE * 2 / SPB);
    }
}
