//! Portable kernel with exactly the lane structure of the SIMD ones (eight i32 lanes of four
//! products each, f32 FMA per lane, fixed final tree), so all levels agree bit for bit.

use super::{QuantizedRows, WeightBlock, QK};

/// Sum of eight lanes in the order the SIMD kernels use.
#[inline]
pub fn reduce8(l: [f32; 8]) -> f32 {
    let a = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

pub fn cols<W: WeightBlock>(w: &[W], q: &QuantizedRows, m: usize, n: usize, c0: usize, c1: usize, out: &mut [f32]) {
    let nb = q.blocks_per_row;
    let mut u = [0u8; 32];
    for c in c0..c1 {
        for r in 0..m {
            let mut acc = [0f32; 8];
            for b in 0..nb {
                let blk = &w[c * nb + b];
                blk.unsigned(&mut u);
                let xs = &q.qs[(r * nb + b) * QK..(r * nb + b + 1) * QK];
                let scale = blk.scale() * q.d[r * nb + b];
                let init = &q.lane_init[r * nb + b];
                for (l, a) in acc.iter_mut().enumerate() {
                    let s: i32 = init[l] + (0..4).map(|j| u[4 * l + j] as i32 * xs[4 * l + j] as i32).sum::<i32>();
                    *a = (s as f32).mul_add(scale, *a);
                }
            }
            out[r * n + c] = reduce8(acc);
        }
    }
}
