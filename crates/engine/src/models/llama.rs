//! Llama (`general.architecture = llama`: TinyLlama, DeepSeek-Coder 1.3B, Llama 2/3, Mistral
//! and many fine-tunes): RMSNorm, SwiGLU, grouped-query attention, NORM-layout rotary
//! embeddings (llama.cpp's converter permutes Q/K rows for it), linear rope scaling when the
//! GGUF asks for it, Llama 3.1-style per-dimension frequency factors (`rope_freqs.weight`),
//! optionally tied output embeddings.

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let mut r = ArchReader::new(g, "llama")?;
    r.rope_interleaved = true;
    r.rope_freq_factors = g.opt_vector("rope_freqs.weight")?;
    r.build(g, Activation::Silu, None, None, |_layer, _cfg| Ok(BlockOptions::default()))
}
