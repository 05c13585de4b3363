//! `DenseWeights`: F16 and F32 weight matrices (embedding models, F16/F32 GGUFs) multiplied by
//! f32 activations on the worker pool. F16 weights are widened exactly and the activations
//! stay f32 (llama.cpp and candle round them to f16), so the result is closer to the f32
//! reference. At load the weights are repacked into panels of 16 output columns, `k` rows
//! each (the transpose, 16 columns side by side); a register block of R activation rows × C
//! panels broadcasts one activation value at a time against one panel row: the classic GEMM
//! micro-kernel, no horizontal sums. Output tiles of `ROW_TILE × COL_TILE` are pool tasks.
//! Small matrices keep their panels in f32 (widening is exact, so the bits do not change),
//! large ones in f16 to keep memory as the file has it.
//!
//! Batch invariance: every output element is one accumulator lane's FMA chain over
//! `p = 0..k` in order, whichever tile, register block or vector width computes it, so a
//! row's result never depends on the other rows of the call.

use half::f16;

use super::kernels::{detected_level, Level};
use super::lanes::{KvElem, Lanes};
use super::pool::Pool;

const LANES: usize = 16;
/// Rows and columns of one pool task.
const ROW_TILE: usize = 48;
const COL_TILE: usize = 64;
/// Matrices up to this many values keep f32 panels.
const F32_PANEL_LIMIT: usize = 16 << 20;

/// Weights in panels: panel `j` holds columns `16j..16j+16` as `k` rows of 16 (zero-padded).
pub struct DenseWeights {
    panels: Panels,
    k: usize,
    n: usize,
}

enum Panels {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

fn pack<E: KvElem, O: Copy + Default>(w: &[E], n: usize, k: usize, conv: impl Fn(E) -> O) -> Vec<O> {
    let num_panels = n.div_ceil(LANES);
    let mut out = vec![O::default(); num_panels * k * LANES];
    for c in 0..n {
        let (j, l) = (c / LANES, c % LANES);
        for p in 0..k {
            out[(j * k + p) * LANES + l] = conv(w[c * k + p]);
        }
    }
    out
}

impl DenseWeights {
    /// From row-major `n × k` weights as the GGUF stores them.
    pub fn from_f16(w: &[f16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weights are n × k");
        let panels = if n * k <= F32_PANEL_LIMIT {
            Panels::F32(pack(w, n, k, |v| v.to_f32()))
        } else {
            Panels::F16(pack(w, n, k, |v| v))
        };
        Self { panels, k, n }
    }

    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weights are n × k");
        Self { panels: Panels::F32(pack(w, n, k, |v| v)), k, n }
    }

    /// `x`: `m × k` row-major; writes `out` (`m × n`).
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_at(x, m, out, detected_level())
    }

    /// `matmul` at a given kernel level; a level the CPU lacks runs the portable code.
    fn matmul_at(&self, x: &[f32], m: usize, out: &mut [f32], level: Level) {
        let level = if level.is_supported() { level } else { Level::Scalar };
        match &self.panels {
            Panels::F16(p) => matmul_over(p, x, m, self.k, self.n, out, level),
            Panels::F32(p) => matmul_over(p, x, m, self.k, self.n, out, level),
        }
    }
}

/// `level` must be supported (callers check).
fn matmul_over<E: KvElem>(panels: &[E], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32], level: Level) {
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(out.len(), m * n, "output is m × n");
    assert_eq!(panels.len(), n.div_ceil(LANES) * k * LANES, "panels cover n × k");
    let (row_tiles, col_tiles) = (m.div_ceil(ROW_TILE), n.div_ceil(COL_TILE));
    let out_ptr = out.as_mut_ptr() as usize;
    let task = |t: usize| {
        let (r0, c0) = ((t / col_tiles) * ROW_TILE, (t % col_tiles) * COL_TILE);
        let (rows, cols) = (ROW_TILE.min(m - r0), COL_TILE.min(n - c0));
        let mut tile = [0f32; ROW_TILE * COL_TILE];
        // SAFETY: `level` is supported (checked by `matmul_at`).
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { tile_avx512(panels, x, k, r0, rows, c0, &mut tile) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::AvxVnni => unsafe { tile_avx2(panels, x, k, r0, rows, c0, &mut tile) },
            #[cfg(target_arch = "aarch64")]
            Level::Neon | Level::NeonDot | Level::NeonI8mm => unsafe {
                tile_neon(panels, x, k, r0, rows, c0, &mut tile)
            },
            _ => unsafe { tile_lanes::<[f32; LANES], E, 4>(panels, x, k, r0, rows, c0, &mut tile) },
        }
        for r in 0..rows {
            // SAFETY: tasks cover disjoint (row, column) rectangles of `out`, which outlives
            // the pool call; `r0 + r < m` and `c0 + cols <= n` keep the range inside it.
            let dst = unsafe { std::slice::from_raw_parts_mut((out_ptr as *mut f32).add((r0 + r) * n + c0), cols) };
            dst.copy_from_slice(&tile[r * COL_TILE..r * COL_TILE + cols]);
        }
    };
    Pool::global().run(row_tiles * col_tiles, &|range| range.for_each(task));
}

/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VL (`Level::Avx512Vnni`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn tile_avx512<E: KvElem>(p: &[E], x: &[f32], k: usize, r0: usize, rows: usize, c0: usize, tile: &mut [f32]) {
    tile_lanes::<std::arch::x86_64::__m512, E, 6>(p, x, k, r0, rows, c0, tile)
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (`Level::Avx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<E: KvElem>(p: &[E], x: &[f32], k: usize, r0: usize, rows: usize, c0: usize, tile: &mut [f32]) {
    tile_lanes::<super::lanes::Avx2x2, E, 2>(p, x, k, r0, rows, c0, tile)
}

/// # Safety
/// NEON: every aarch64 has it.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_neon<E: KvElem>(p: &[E], x: &[f32], k: usize, r0: usize, rows: usize, c0: usize, tile: &mut [f32]) {
    tile_lanes::<super::lanes::Neon4, E, 2>(p, x, k, r0, rows, c0, tile)
}

/// One output tile (`rows` rows at `r0`, the `COL_TILE` columns at `c0`, padded panels
/// included) into `tile` (row stride `COL_TILE`), in blocks of up to `R` rows × 2 panels.
///
/// # Safety
/// The CPU must have `L`'s features (see `Lanes`). Every access is bounds-checked.
#[inline(always)]
unsafe fn tile_lanes<L: Lanes, E: KvElem, const R: usize>(
    panels: &[E],
    x: &[f32],
    k: usize,
    r0: usize,
    rows: usize,
    c0: usize,
    tile: &mut [f32],
) {
    let num_panels = panels.len() / (k * LANES);
    let first = c0 / LANES;
    let last = (first + COL_TILE / LANES).min(num_panels);
    let mut j = first;
    while j < last {
        let two = last - j >= 2;
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(R);
            macro_rules! go {
                ($rr:literal) => {
                    if two {
                        block::<L, E, $rr, 2>(panels, x, k, r0 + r, j, r, (j - first) * LANES, tile)
                    } else {
                        block::<L, E, $rr, 1>(panels, x, k, r0 + r, j, r, (j - first) * LANES, tile)
                    }
                };
            }
            match n {
                6 => go!(6),
                5 => go!(5),
                4 => go!(4),
                3 => go!(3),
                2 => go!(2),
                _ => go!(1),
            }
            r += n;
        }
        j += if two { 2 } else { 1 };
    }
}

/// `RR` rows from global row `gr` × `C` panels from panel `j`, written at `tile[tr][tc..]`.
///
/// # Safety
/// As `tile_lanes`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<L: Lanes, E: KvElem, const RR: usize, const C: usize>(
    panels: &[E],
    x: &[f32],
    k: usize,
    gr: usize,
    j: usize,
    tr: usize,
    tc: usize,
    tile: &mut [f32],
) {
    let xs: [&[f32]; RR] = std::array::from_fn(|i| &x[(gr + i) * k..(gr + i + 1) * k]);
    let ps: [&[E]; C] = std::array::from_fn(|c| &panels[(j + c) * k * LANES..(j + c + 1) * k * LANES]);
    let mut acc = [[L::zero(); C]; RR];
    for p in 0..k {
        let wv: [L; C] = std::array::from_fn(|c| E::load::<L>(&ps[c][p * LANES..]));
        for i in 0..RR {
            let xv = L::splat(xs[i][p]);
            for c in 0..C {
                acc[i][c] = acc[i][c].fma(xv, wv[c]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (c, a) in row.iter().enumerate() {
            let at = (tr + i) * COL_TILE + tc + c * LANES;
            a.store(&mut tile[at..at + LANES]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn products_are_right_and_rows_do_not_depend_on_the_batch() {
        // Odd sizes: edge tiles, short register blocks, a padded panel.
        // (Smaller under Miri, which interprets every lane.)
        let (k, n, m) = if cfg!(miri) { (19, 37, 9) } else { (67, 70, 69) };
        let wf = values(n * k, 1);
        let wh: Vec<f16> = wf.iter().map(|v| f16::from_f32(*v)).collect();
        let widened: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
        let cases = [
            (DenseWeights::from_f32(&wf, n, k), wf.clone()),
            (DenseWeights::from_f16(&wh, n, k), widened.clone()),
            // Large matrices keep f16 panels: the same bits as f32 ones.
            (DenseWeights { panels: Panels::F16(pack(&wh, n, k, |v| v)), k, n }, widened),
        ];
        for (weights, exact) in cases {
            let x = values(m * k, 7);
            let mut out = vec![0f32; m * n];
            weights.matmul(&x, m, &mut out);
            for (got, want) in out.iter().zip(reference(&exact, &x, m, k, n)) {
                assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
            }
            // Each row alone gives the same bits as inside the batch, at every level.
            for level in crate::layers::kernels::supported_levels() {
                let mut all = vec![0f32; m * n];
                weights.matmul_at(&x, m, &mut all, level);
                assert_eq!(all, out, "{level:?} vs the detected level");
                for r in [0, 3, 4, 48, 68].into_iter().filter(|&r| r < m) {
                    let mut one = vec![0f32; n];
                    weights.matmul_at(&x[r * k..(r + 1) * k], 1, &mut one, level);
                    assert_eq!(one, out[r * n..(r + 1) * n], "{level:?}: row {r}");
                }
            }
        }
    }
}
