//! Portable kernel: per column, per block in order, the exact integer dot product (for the
//! K-quants, each sub-block's times its integer scale, summed over the block), converted to
//! f32 and fused-multiply-added with `d_w × d_x`, then for types with mins the min term `Σ
//! m·Σx` times the min factor `× d_x` (`-dmin_w`, or Q4_1/Q5_1's `m_w` with an integer min of
//! 1) — the very sequence the SIMD lanes run.

use half::f16;

use super::{PackedWeights, QuantizedRows, TileOut, QK, TILE};

pub(super) fn tiles(w: &PackedWeights, q: &QuantizedRows, m: usize, tiles: std::ops::Range<usize>, out: &mut TileOut) {
    let nsub = w.num_subs();
    let spb = w.subs_per_block;
    let groups = w.sub / 4;
    let mut decoded = vec![vec![[0u8; 64]; groups]; spb];
    for t in tiles {
        let valid = (w.n - t * TILE).min(TILE);
        let mut acc = vec![[0f32; TILE]; m];
        for b in 0..w.num_blocks() {
            for (j, dec) in decoded.iter_mut().enumerate() {
                for (g, d) in dec.iter_mut().enumerate() {
                    *d = w.group(t, b * spb + j, g);
                }
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let dx = q.d[(r * nsub + b * spb) * w.sub / QK];
                for (lane, a) in acc.iter_mut().enumerate().take(valid) {
                    let (mut isum_b, mut msum_b) = (0i32, 0i32);
                    for (j, dec) in decoded.iter().enumerate() {
                        let s = b * spb + j;
                        let xs = &q.qs[(r * nsub + s) * w.sub..(r * nsub + s + 1) * w.sub];
                        let xsum = q.isums[r * nsub + s];
                        let mut isum = -w.offset * xsum;
                        for (g, bytes) in dec.iter().enumerate() {
                            for i in 0..4 {
                                isum += bytes[lane * 4 + i] as i32 * xs[g * 4 + i] as i32;
                            }
                        }
                        if w.int_scales() {
                            isum_b += isum * w.tile_sub_scales(t, s)[lane] as i32;
                        } else {
                            isum_b = isum;
                        }
                        if w.has_min {
                            let min = if w.int_scales() { w.tile_sub_mins(t, s)[lane] as i32 } else { 1 };
                            msum_b += min * xsum;
                        }
                    }
                    *a = (isum_b as f32).mul_add(f16::from_bits(w.tile_d(t, b)[lane]).to_f32() * dx, *a);
                    if w.has_min {
                        *a = (msum_b as f32).mul_add(f16::from_bits(w.tile_neg_dmin(t, b)[lane]).to_f32() * dx, *a);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            out.row_tile(r, t).copy_from_slice(&acc[..valid]);
        }
    }
}
