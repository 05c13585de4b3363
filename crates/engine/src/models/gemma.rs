//! Gemma (`general.architecture = gemma`, Gemma 2B/7B): Llama-style blocks with GeGLU (GELU,
//! tanh approximation), embeddings scaled by sqrt(hidden), output tied to the embeddings.
//! GGUF norm weights already hold Gemma's `1 + w`.

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let r = ArchReader::new(g, "gemma")?;
    let embed_scale = (r.config.hidden_size as f32).sqrt();
    r.build(g, Activation::GeluTanh, Some(embed_scale), None, |_layer, _cfg| Ok(BlockOptions::default()))
}
