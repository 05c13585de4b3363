//! Portable kernel: per column, per sub-block in order, the exact integer dot product,
//! converted to f32 and fused-multiply-added with `scale_w × d_x` (then, for Q4_K, the min
//! term `Σx × (-min_w × d_x)`) — the very sequence the SIMD lanes run.

use super::{PackedWeights, QuantizedRows, QK, TILE};

pub fn tiles(w: &PackedWeights, q: &QuantizedRows, m: usize, t0: usize, t1: usize, out: &mut [f32]) {
    let nsub = w.num_subs();
    let groups = w.sub / 4;
    let mut decoded = vec![[0u8; 64]; groups];
    for t in t0..t1 {
        let valid = (w.n - t * TILE).min(TILE);
        let mut acc = vec![[0f32; TILE]; m];
        for s in 0..nsub {
            for (g, d) in decoded.iter_mut().enumerate() {
                *d = w.group(t, s, g);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let first = (r * nsub + s) * w.sub;
                let xs = &q.qs[first..first + w.sub];
                let dx = q.d[first / QK];
                for (lane, a) in acc.iter_mut().enumerate().take(valid) {
                    let mut isum = q.init[r * nsub + s];
                    for (g, bytes) in decoded.iter().enumerate() {
                        for j in 0..4 {
                            isum += bytes[lane * 4 + j] as i32 * xs[g * 4 + j] as i32;
                        }
                    }
                    *a = (isum as f32).mul_add(w.scale(t, s, lane) * dx, *a);
                    if w.has_min {
                        *a = q.sums[r * nsub + s].mul_add(w.tile_neg_mins(t, s)[lane] * dx, *a);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            out[r * w.n + t * TILE..r * w.n + t * TILE + valid].copy_from_slice(&acc[..valid]);
        }
    }
}
