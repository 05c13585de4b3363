//! Rotary position embeddings in llama.cpp's two layouts: NEOX (rotate the two halves of the
//! rotated part of each head: Qwen, Gemma, Phi) and NORM (rotate adjacent pairs: Llama, whose
//! converter permutes Q/K for it). Only the first `rot_dim` dimensions of a head rotate (Phi-2's
//! partial rotary). Angles are computed in f64 from the position, so a token's rotation does
//! not depend on what else is in the batch.

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    /// Number of leading dimensions of each head that rotate (== head_dim unless partial).
    rot_dim: usize,
    /// NORM layout: dimensions 2i and 2i+1 rotate together (else i and i + rot_dim/2).
    interleaved: bool,
}

impl Rope {
    pub fn new(rot_dim: usize, freq_base: f32, freq_scale: f32) -> Self {
        Self::with_layout(rot_dim, freq_base, freq_scale, false)
    }

    pub fn with_layout(rot_dim: usize, freq_base: f32, freq_scale: f32, interleaved: bool) -> Self {
        let half = rot_dim / 2;
        let inv_freq =
            (0..half).map(|i| freq_scale as f64 / (freq_base as f64).powf(2.0 * i as f64 / rot_dim as f64)).collect();
        Self { inv_freq, rot_dim, interleaved }
    }

    /// Divides each frequency by its factor (LongRoPE); `None` leaves them.
    pub fn with_freq_factors(mut self, factors: Option<&[f32]>) -> Self {
        if let Some(f) = factors {
            for (inv, &d) in self.inv_freq.iter_mut().zip(f) {
                *inv /= d as f64;
            }
        }
        self
    }

    /// cos/sin tables for each position: `positions.len() × rot_dim/2` each.
    pub fn tables(&self, positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let half = self.rot_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Rotates every head of every row of `x` (`rows × num_heads*head_dim`) in place.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = self.rot_dim / 2;
        let row_len = x.len() / (cos.len() / half).max(1);
        for (r, row) in x.chunks_exact_mut(row_len).enumerate() {
            let (c, s) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
            for head in row.chunks_exact_mut(head_dim) {
                if self.interleaved {
                    for i in 0..half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * c[i] - x1 * s[i];
                        head[2 * i + 1] = x0 * s[i] + x1 * c[i];
                    }
                    continue;
                }
                for i in 0..half {
                    let (x0, x1) = (head[i], head[i + half]);
                    head[i] = x0 * c[i] - x1 * s[i];
                    head[i + half] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_rotate_their_pairs_and_factors_slow_frequencies() {
        let (neox, norm) = (Rope::new(4, 10_000.0, 1.0), Rope::with_layout(4, 10_000.0, 1.0, true));
        let (cos, sin) = neox.tables(&[1]);
        let mut a = vec![1.0, 2.0, 3.0, 4.0];
        neox.apply(&mut a, 4, &cos, &sin);
        // NEOX pairs (0, 2) and (1, 3); NORM pairs (0, 1) and (2, 3), same angles.
        let rot = |x0: f32, x1: f32, i: usize| (x0 * cos[i] - x1 * sin[i], x0 * sin[i] + x1 * cos[i]);
        assert_eq!((a[0], a[2]), rot(1.0, 3.0, 0));
        assert_eq!((a[1], a[3]), rot(2.0, 4.0, 1));
        let mut b = vec![1.0, 2.0, 3.0, 4.0];
        norm.apply(&mut b, 4, &cos, &sin);
        assert_eq!((b[0], b[1]), rot(1.0, 2.0, 0));
        assert_eq!((b[2], b[3]), rot(3.0, 4.0, 1));
        // A factor of 4 on the second frequency: its angle at position 4 equals position 1's.
        let slowed = Rope::new(4, 10_000.0, 1.0).with_freq_factors(Some(&[1.0, 4.0]));
        let (c4, _) = slowed.tables(&[4]);
        assert!((c4[1] - cos[1]).abs() < 1e-7 && (c4[0] - cos[0]).abs() > 1e-3);
    }
}
