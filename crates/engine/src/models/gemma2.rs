//! Gemma 2 (`general.architecture = gemma2`): Gemma's blocks plus post-attention and post-MLP
//! norms, attention-score and final-logit soft-capping (cap·tanh(x/cap)), and a sliding window
//! on every other layer (even layers, llama.cpp's `set_swa_pattern(2)`).

use super::common::{ArchReader, BlockOptions};
use super::decoder::Decoder;
use crate::error::Result;
use crate::layers::activation::Activation;
use crate::loader::Gguf;

const SLIDING_PATTERN: usize = 2;

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let r = ArchReader::new(g, "gemma2")?;
    let window = g.opt_usize("gemma2.attention.sliding_window")?;
    let attn_softcap = g.opt_f32("gemma2.attn_logit_softcapping")?;
    let final_softcap = g.opt_f32("gemma2.final_logit_softcapping")?;
    let embed_scale = (r.config.hidden_size as f32).sqrt();
    r.build(g, Activation::GeluTanh, Some(embed_scale), final_softcap, |layer, _cfg| {
        let local = layer % SLIDING_PATTERN < SLIDING_PATTERN - 1;
        Ok(BlockOptions {
            post_norms: true,
            window: if local { window } else { None },
            attn_softcap,
            ..Default::default()
        })
    })
}
