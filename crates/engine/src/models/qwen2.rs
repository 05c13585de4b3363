//! Qwen2 / Qwen2.5 (`general.architecture = qwen2`): Llama-style blocks with biases on Q/K/V,
//! SwiGLU, NEOX rotary embeddings, optionally tied output embeddings.

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let r = ArchReader::new(g, "qwen2")?;
    r.build(g, Activation::Silu, None, None, |_layer, _cfg| Ok(BlockOptions::default()))
}
