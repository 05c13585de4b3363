//! Gemma 3 (`general.architecture = gemma3`): QK-norm, post-attention and post-MLP norms,
//! GeGLU, embeddings scaled by sqrt(hidden), and five sliding-window layers (local rope base
//! 10 000) for each global one (rope base from the GGUF). GGUF norm weights already hold
//! Gemma's `1 + w`.

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

/// One global layer every 6 (llama.cpp's `set_swa_pattern(6)`).
const SLIDING_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let r = ArchReader::new(g, "gemma3")?;
    let window = g.opt_usize("gemma3.attention.sliding_window")?;
    let embed_scale = (r.config.hidden_size as f32).sqrt();
    r.build(g, Activation::GeluTanh, Some(embed_scale), None, |layer, _cfg| {
        let local = layer % SLIDING_PATTERN < SLIDING_PATTERN - 1;
        Ok(BlockOptions {
            qk_norm: true,
            post_norms: true,
            window: if local { window } else { None },
            rope_base: if local { Some(LOCAL_ROPE_BASE) } else { None },
            // Gemma 3 scales scores by 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim).
            attn_scale: None,
            attn_softcap: None,
        })
    })
}
