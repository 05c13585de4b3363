//! Rotary position embeddings, NEOX layout (rotate the two halves of each head), as Qwen2 and
//! Gemma use. Angles are computed in f64 from the position, so a token's rotation does not
//! depend on what else is in the batch.

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    /// Number of leading dimensions of each head that rotate (== head_dim unless partial).
    rot_dim: usize,
}

impl Rope {
    pub fn new(rot_dim: usize, freq_base: f32, freq_scale: f32) -> Self {
        let half = rot_dim / 2;
        let inv_freq = (0..half)
            .map(|i| freq_scale as f64 / (freq_base as f64).powf(2.0 * i as f64 / rot_dim as f64))
            .collect();
        Self { inv_freq, rot_dim }
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
                for i in 0..half {
                    let (x0, x1) = (head[i], head[i + half]);
                    head[i] = x0 * c[i] - x1 * s[i];
                    head[i + half] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }
}
