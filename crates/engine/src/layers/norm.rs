//! RMS normalization over each row (Qwen, Llama, Gemma: GGUF stores Gemma's `1 + w` already).

use super::vecmath::sum_sq;

/// Normalizes every `w.len()`-wide row of `x` in place and scales it by `w`.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        let mean = sum_sq(row) / d as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in row.iter_mut().zip(w) {
            *v = *v * scale * w;
        }
    }
}

/// Like `rms_norm` but writes to a new buffer.
pub fn rms_norm_to(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm(&mut out, w, eps);
    out
}

/// LayerNorm with bias over rows of `w.len()` values, written to a new buffer (Phi-2).
pub fn layer_norm_to(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let scale = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().zip(w).zip(b).map(|((v, w), b)| (v - mean) * scale * w + b));
    }
    out
}

/// A block's input norm: RMSNorm (most models) or LayerNorm with bias (Phi-2).
#[derive(Debug, Clone)]
pub enum Norm {
    Rms(Vec<f32>),
    Layer { weight: Vec<f32>, bias: Vec<f32> },
}

impl Norm {
    pub fn apply(&self, x: &[f32], eps: f32) -> Vec<f32> {
        match self {
            Norm::Rms(w) => rms_norm_to(x, w, eps),
            Norm::Layer { weight, bias } => layer_norm_to(x, weight, bias, eps),
        }
    }
}
