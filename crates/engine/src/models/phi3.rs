//! Phi-3 (`general.architecture = phi3`): Llama-style blocks with fused Q/K/V (`attn_qkv`) and
//! fused gate/up (`ffn_up` holds gate then up) projections, NEOX rotary embeddings.
//! LongRoPE models (Phi-3-*-128k) carry per-dimension frequency factors; slm applies the short
//! factors, which are exact up to the original context length, and serves that context.

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let mut r = ArchReader::new(g, "phi3")?;
    r.fused_gate_up = true;
    if let Some(factors) = g.opt_vector("rope_factors_short.weight")? {
        r.rope_freq_factors = Some(factors);
        if let Some(n) = g.opt_usize("phi3.rope.scaling.original_context_length")? {
            r.config.context_length = r.config.context_length.min(n);
        }
    }
    r.build(g, Activation::Silu, None, None, |_layer, _cfg| Ok(BlockOptions::default()))
}
