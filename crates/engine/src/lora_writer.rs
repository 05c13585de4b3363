//! Writes LoRA adapters in llama.cpp's GGUF adapter format (what `convert_lora_to_gguf.py`
//! writes, and what `LoraAdapter::load` and llama.cpp's `--lora` read): seeded random ones
//! for a given base model, for tests and benchmarks that need adapters of a real model's
//! shapes without a fine-tuning run. `A` is uniform with variance 1/in (so `A·x` keeps the
//! activations' scale) and `B` uniform in ±`b_range`, which sets how far the adapter moves
//! the model.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{EngineError, Result};
use crate::lora::Proj;
use crate::models::Decoder;

#[derive(Debug, Clone)]
pub struct RandomAdapter {
    pub rank: usize,
    pub alpha: f32,
    pub seed: u64,
    /// The projections adapted in every layer (those the base has).
    pub projs: Vec<Proj>,
    pub b_range: f32,
}

impl Default for RandomAdapter {
    /// Rank 8 on q/k/v/o and gate/up/down, as a typical fine-tune.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            seed: 0,
            projs: vec![Proj::Q, Proj::K, Proj::V, Proj::Qkv, Proj::O, Proj::Gate, Proj::Up, Proj::Down],
            b_range: 0.01,
        }
    }
}

/// Writes `spec`'s adapter for `base` to `path` (A in F16, B in F32, as the converter does).
pub fn write_random_adapter(base: &Decoder, path: &Path, spec: &RandomAdapter) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let q = |v: Vec<f32>, dims: &[usize], dtype| -> Result<QTensor> {
        let t = Tensor::from_vec(v, dims, &Device::Cpu)?;
        Ok(QTensor::quantize(&t, dtype)?)
    };
    let mut tensors = Vec::new();
    for l in 0..base.config.num_layers {
        for &p in &spec.projs {
            let Some(w) = base.linear(l, p) else { continue };
            let (i, o, r) = (w.in_dim(), w.out_dim(), spec.rank);
            let ua = (3.0 / i as f32).sqrt();
            let a: Vec<f32> = (0..r * i).map(|_| rng.random_range(-ua..=ua)).collect();
            let b: Vec<f32> = (0..o * r).map(|_| rng.random_range(-spec.b_range..=spec.b_range)).collect();
            let name = format!("blk.{l}.{}.weight", p.gguf_name());
            tensors.push((format!("{name}.lora_a"), q(a, &[r, i], GgmlDType::F16)?));
            tensors.push((format!("{name}.lora_b"), q(b, &[o, r], GgmlDType::F32)?));
        }
    }
    let md = [
        ("general.architecture", Value::String(base.config.architecture.clone())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(spec.alpha)),
    ];
    let io = |e: std::io::Error| EngineError::Io { path: path.display().to_string(), message: e.to_string() };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut f).map_err(io)
}
