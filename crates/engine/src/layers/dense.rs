//! `DenseWeights`: F16 and F32 weight matrices (embedding models, F16/F32 GGUFs) multiplied by
//! f32 activations on the worker pool. F16 weights are widened exactly and the activations
//! stay f32 (llama.cpp and candle round them to f16), so the result is closer to the f32
//! reference. Output tiles of `ROW_TILE × COL_TILE` are pool tasks; inside, a 4 × 4 register
//! block of `Lanes` accumulators walks the shared dimension 16 values at a time.
//!
//! Batch invariance: every output element is one accumulator's fixed sequence of lane-wise
//! FMAs over its row and column, then the fixed `reduce` tree and a fixed tail, whichever
//! tile, register block or vector width computes it — so a row's result never depends on the
//! other rows of the call.

use half::f16;

use super::kernels::{detected_level, Level};
use super::lanes::{KvElem, Lanes};
use super::pool::Pool;
use super::vecmath::reduce;

const LANES: usize = 16;
/// Rows and columns of one pool task: the activation tile (64 × k f32) and the weight tile
/// stay in L2 while the task runs.
const ROW_TILE: usize = 64;
const COL_TILE: usize = 64;

/// Row-major `out_dim × in_dim` weights, f16 or f32.
pub enum DenseWeights {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl DenseWeights {
    /// `x`: `m × k` row-major; writes `out` (`m × n`); the weights are `n × k`.
    pub fn matmul(&self, x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
        match self {
            DenseWeights::F16(w) => matmul_over(w, x, m, k, n, out),
            DenseWeights::F32(w) => matmul_over(w, x, m, k, n, out),
        }
    }
}

fn matmul_over<E: KvElem>(w: &[E], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert_eq!(w.len(), n * k, "weights are n × k");
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(out.len(), m * n, "output is m × n");
    let (row_tiles, col_tiles) = (m.div_ceil(ROW_TILE), n.div_ceil(COL_TILE));
    let out_ptr = out.as_mut_ptr() as usize;
    let task = |t: usize| {
        let (r0, c0) = ((t / col_tiles) * ROW_TILE, (t % col_tiles) * COL_TILE);
        let (rows, cols) = (ROW_TILE.min(m - r0), COL_TILE.min(n - c0));
        let mut tile = [0f32; ROW_TILE * COL_TILE];
        // SAFETY: each level is only reported when the CPU has its features.
        match detected_level() {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { tile_avx512(w, x, k, r0, rows, c0, cols, &mut tile) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { tile_avx2(w, x, k, r0, rows, c0, cols, &mut tile) },
            _ => unsafe { tile_lanes::<[f32; LANES], E>(w, x, k, r0, rows, c0, cols, &mut tile) },
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
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<E: KvElem>(
    w: &[E],
    x: &[f32],
    k: usize,
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    tile: &mut [f32],
) {
    tile_lanes::<std::arch::x86_64::__m512, E>(w, x, k, r0, rows, c0, cols, tile)
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (`Level::Avx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<E: KvElem>(
    w: &[E],
    x: &[f32],
    k: usize,
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    tile: &mut [f32],
) {
    tile_lanes::<super::lanes::Avx2x2, E>(w, x, k, r0, rows, c0, cols, tile)
}

/// One output tile (`rows × cols` at `r0, c0`) into `tile` (row stride `COL_TILE`), in 4 × 4
/// register blocks (narrower at the edges; every accumulator runs the same sequence).
///
/// # Safety
/// The CPU must have `L`'s features (see `Lanes`). Every access is bounds-checked.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_lanes<L: Lanes, E: KvElem>(
    w: &[E],
    x: &[f32],
    k: usize,
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    tile: &mut [f32],
) {
    let mut r = 0;
    while r < rows {
        let mut c = 0;
        while c < cols {
            match (rows - r >= 4, cols - c >= 4) {
                (true, true) => block::<L, E, 4, 4>(w, x, k, r0 + r, c0 + c, r, c, tile),
                (true, false) => block::<L, E, 4, 1>(w, x, k, r0 + r, c0 + c, r, c, tile),
                (false, true) => block::<L, E, 1, 4>(w, x, k, r0 + r, c0 + c, r, c, tile),
                (false, false) => block::<L, E, 1, 1>(w, x, k, r0 + r, c0 + c, r, c, tile),
            }
            c += if cols - c >= 4 { 4 } else { 1 };
        }
        r += if rows - r >= 4 { 4 } else { 1 };
    }
}

/// `R × C` outputs at global row `gr`, column `gc`, written at `tile[tr][tc]`.
///
/// # Safety
/// As `tile_lanes`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<L: Lanes, E: KvElem, const R: usize, const C: usize>(
    w: &[E],
    x: &[f32],
    k: usize,
    gr: usize,
    gc: usize,
    tr: usize,
    tc: usize,
    tile: &mut [f32],
) {
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(gr + i) * k..(gr + i + 1) * k]);
    let ws: [&[E]; C] = std::array::from_fn(|j| &w[(gc + j) * k..(gc + j + 1) * k]);
    let mut acc = [[L::zero(); C]; R];
    let full = k / LANES * LANES;
    let mut at = 0;
    while at < full {
        let wv: [L; C] = std::array::from_fn(|j| E::load::<L>(&ws[j][at..]));
        for i in 0..R {
            let xv = L::load(&xs[i][at..]);
            for j in 0..C {
                acc[i][j] = acc[i][j].fma(xv, wv[j]);
            }
        }
        at += LANES;
    }
    for i in 0..R {
        for j in 0..C {
            let mut lanes = [0f32; LANES];
            acc[i][j].store(&mut lanes);
            let mut s = reduce(lanes);
            for p in full..k {
                s = xs[i][p].mul_add(ws[j][p].to_f32(), s);
            }
            tile[(tr + i) * COL_TILE + tc + j] = s;
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
        // Odd sizes: edge tiles, 1-wide register blocks and a k tail.
        let (k, n) = (67, 70);
        let wf = values(n * k, 1);
        let wh: Vec<f16> = wf.iter().map(|v| f16::from_f32(*v)).collect();
        for weights in [DenseWeights::F32(wf.clone()), DenseWeights::F16(wh.clone())] {
            let exact: Vec<f32> = match &weights {
                DenseWeights::F32(w) => w.clone(),
                DenseWeights::F16(w) => w.iter().map(|v| v.to_f32()).collect(),
            };
            let m = 69;
            let x = values(m * k, 7);
            let mut out = vec![0f32; m * n];
            weights.matmul(&x, m, k, n, &mut out);
            for (got, want) in out.iter().zip(reference(&exact, &x, m, k, n)) {
                assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
            }
            // Each row alone gives the same bits as inside the batch.
            for r in [0, 3, 4, 64, 68] {
                let mut one = vec![0f32; n];
                weights.matmul(&x[r * k..(r + 1) * k], 1, k, n, &mut one);
                assert_eq!(one, out[r * n..(r + 1) * n], "row {r}");
            }
        }
    }
}
