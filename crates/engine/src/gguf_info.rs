//! What a GGUF file is, read from its header alone: architecture, quantization, context length,
//! parameter count, whether it embeds or generates. `slm list` prints it and the server's model
//! registry budgets memory with it; neither loads a tensor.

use std::path::Path;

use crate::error::Result;
use crate::loader::Gguf;

#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// The file's quantization as llama.cpp names it (`Q4_K_M`), from `general.file_type`.
    pub quant: String,
    pub context_length: Option<usize>,
    pub num_params: u64,
    /// An encoder (BERT family) served by `/v1/embeddings`.
    pub is_embedding: bool,
}

impl GgufInfo {
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let g = Gguf::open(path)?;
        let architecture = g.architecture()?;
        let context_length = g.opt_usize(&format!("{architecture}.context_length"))?;
        let quant = match g.opt_usize("general.file_type")? {
            Some(t) => file_type_name(t).map(str::to_string).unwrap_or_else(|| format!("type {t}")),
            None => "unknown".into(),
        };
        Ok(Self {
            is_embedding: crate::embedding::EMBEDDING_ARCHITECTURES.contains(&architecture.as_str()),
            name: g.opt_str("general.name"),
            quant,
            context_length,
            num_params: g.num_params(),
            architecture,
        })
    }
}

/// llama.cpp's `llama_ftype` names (`llama.h`), for the values its converters and quantizer write.
pub fn file_type_name(t: usize) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_common_file_types() {
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(3), Some("Q4_1"));
        assert_eq!(file_type_name(4), None);
    }

    #[test]
    fn reads_a_real_header() {
        let home = std::env::var_os("SLM_HOME").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/slm")
        });
        let path = home.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
        let info = GgufInfo::read(path).unwrap();
        assert_eq!(info.architecture, "qwen2");
        assert_eq!(info.quant, "Q4_K_M");
        assert_eq!(info.context_length, Some(32768));
        assert!(!info.is_embedding);
        assert!((400_000_000..700_000_000).contains(&info.num_params), "{}", info.num_params);
    }
}
