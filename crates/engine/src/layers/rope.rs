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
        let inv_freq = (0..half)
            .map(|i| freq_scale as f64 / (freq_base as f64).powf(2.0 * i as f64 / rot_dim as f64))
            .collect();
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
