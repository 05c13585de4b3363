//! Portable kernel: per column, per block in order, the exact integer dot product, converted
//! to f32 and fused-multiply-added with `d_w × d_x` — the very sequence the SIMD lanes run.

use super::{PackedWeights, QuantizedRows, QK, TILE};

pub fn tiles(w: &PackedWeights, q: &QuantizedRows, m: usize, t0: usize, t1: usize, out: &mut [f32]) {
    let nb = w.blocks_per_row();
    for t in t0..t1 {
        for lane in 0..TILE {
            let c = t * TILE + lane;
            if c >= w.n {
                break;
            }
            for r in 0..m {
                let mut acc = 0f32;
                for b in 0..nb {
                    let bytes = w.tile_block(t, b);
                    let xs = &q.qs[(r * nb + b) * QK..(r * nb + b + 1) * QK];
                    let mut isum = q.init[r * nb + b];
                    for g in 0..QK / 4 {
                        for j in 0..4 {
                            isum += bytes[g * 64 + lane * 4 + j] as i32 * xs[g * 4 + j] as i32;
                        }
                    }
                    let scale = w.tile_scales(t, b)[lane] * q.d[r * nb + b];
                    acc = (isum as f32).mul_add(scale, acc);
                }
                out[r * w.n + c] = acc;
            }
        }
    }
}
