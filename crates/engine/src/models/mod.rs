//! Model architectures. `load` opens a GGUF and dispatches on `general.architecture` to the
//! file that knows how that architecture's tensors map onto the shared `Decoder`.

pub mod bert;
pub mod common;
pub mod decoder;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod phi2;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

pub use decoder::{Decoder, DecoderConfig};

use crate::error::{EngineError, Result};
use crate::loader::Gguf;

pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "phi2", "phi3", "gemma", "gemma2", "gemma3"];

pub fn load(g: &mut Gguf) -> Result<Decoder> {
    let arch = g.architecture()?;
    match arch.as_str() {
        "llama" => llama::load(g),
        "phi2" => phi2::load(g),
        "phi3" => phi3::load(g),
        "qwen2" => qwen2::load(g),
        "qwen3" => qwen3::load(g),
        "gemma" => gemma::load(g),
        "gemma2" => gemma2::load(g),
        "gemma3" => gemma3::load(g),
        _ => Err(EngineError::UnsupportedArchitecture {
            path: g.path.clone(),
            arch,
            supported: SUPPORTED_ARCHITECTURES.join(", "),
        }),
    }
}
