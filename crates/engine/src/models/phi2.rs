//! Phi-2 (`general.architecture = phi2`): one LayerNorm (with bias) per block feeding attention
//! and MLP in parallel (x + attn(h) + mlp(h)), fused Q/K/V with biases, rotary embeddings on
//! the first `rope.dimension_count` dimensions of each head only (NEOX), an ungated GELU MLP,
//! biases on every projection including the output.

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let mut r = ArchReader::new(g, "phi2")?;
    r.parallel_layer_norm = true;
    r.build(g, Activation::GeluTanh, None, None, |_layer, _cfg| Ok(BlockOptions::default()))
}
