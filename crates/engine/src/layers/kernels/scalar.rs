//! Portable kernel: per column, per sub-block in order, the exact integer dot product,
//! converted to f32 and fused-multiply-added with `scale_w × d_x` (then, for Q4_K, the min
//! term `Σx × (-min_w × d_x)`) — the very sequence the SIMD lanes run.

use super::{PackedWeights, QuantizedRows, QK, TILE};

pub fn tiles(w: &PackedWeights, q: &QuantizedRows, m: usize, t0: usize, t1: usize, out: &mut [f32]) {
    let nsub = w.num_subs();
    for t in t0..t1 {
        for lane in 0..TILE {
            let c = t * TILE + lane;
            if c >= w.n {
                break;
            }
            for r in 0..m {
                let mut acc = 0f32;
                for s in 0..nsub {
                    let bytes = w.tile_sub(t, s);
                    let first = (r * nsub + s) * w.sub;
                    let xs = &q.qs[first..first + w.sub];
                    let mut isum = q.init[r * nsub + s];
                    for g in 0..w.sub / 4 {
                        for j in 0..4 {
                            isum += bytes[g * 64 + lane * 4 + j] as i32 * xs[g * 4 + j] as i32;
                        }
                    }
                    let dx = q.d[first / QK];
                    acc = (isum as f32).mul_add(w.tile_scales(t, s)[lane] * dx, acc);
                    if w.has_min {
                        acc = q.sums[r * nsub + s].mul_add(w.tile_neg_mins(t, s)[lane] * dx, acc);
                    }
                }
                out[r * w.n + c] = acc;
            }
        }
    }
}
