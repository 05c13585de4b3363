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
