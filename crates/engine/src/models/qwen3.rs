//! Qwen3 (`general.architecture = qwen3`): Qwen2's blocks without the Q/K/V biases and with a
//! per-head RMSNorm of queries and keys before the rotary embedding (QK-norm).

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let r = ArchReader::new(g, "qwen3")?;
    r.build(g, Activation::Silu, None, None, |_layer, _cfg| Ok(BlockOptions { qk_norm: true, ..Default::default() }))
}
