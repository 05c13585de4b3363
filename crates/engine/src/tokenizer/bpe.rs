//! GPT-2-style byte-level BPE (`tokenizer.ggml.model = gpt2`: Qwen, Llama 3, DeepSeek): a
//! `tokenizers::Tokenizer` built from the GGUF's vocabulary and merges, with the
//! pre-tokenizer regex llama.cpp uses for `tokenizer.ggml.pre`. It only ever sees raw-text
//! fragments: special tokens are split out beforehand, as llama.cpp does.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::SplitDelimiterBehavior;

use crate::error::{EngineError, Result};

// llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2 expression.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// LLAMA_VOCAB_PRE_TYPE_LLAMA3: digits in groups of up to three.
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// The original GPT-2 expression.
const REGEX_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

pub fn pre_tokenizer_regex(pre: &str) -> &'static str {
    match pre {
        "qwen2" | "deepseek-r1-qwen" => REGEX_QWEN2,
        "llama3" | "llama-bpe" | "smaug-bpe" | "falcon3" => REGEX_LLAMA3,
        _ => REGEX_GPT2,
    }
}

pub fn build(tokens: &[String], merges: &[String], pre: &str) -> Result<tokenizers::Tokenizer> {
    let err = |e: String| EngineError::Tokenizer(e);
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| err(e.to_string()))?;
    let split =
        Split::new(SplitPattern::Regex(pre_tokenizer_regex(pre).into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| err(e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])));
    Ok(tk)
}

/// GPT-2's reversible byte ↔ printable-character map: bytes that are printable map to
/// themselves, the others to U+0100 and up, in byte order.
pub fn unicode_to_byte() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::new();
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            b as u32
        } else {
            n += 1;
            255 + n
        };
        map.insert(char::from_u32(c).unwrap(), b);
    }
    map
}
