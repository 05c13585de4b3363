//! The tokenizer, built from GGUF metadata alone (no tokenizer.json), reproducing llama.cpp:
//! special-token text is split out first (`partition`), then each raw fragment goes through the
//! vocabulary's own algorithm — byte-level BPE (`gpt2`), SentencePiece merges (`llama`) or
//! WordPiece (`bert`, the embedding models).
//! Used by the CLI, the server (prompts, /tokenize) and the engine (stop tokens, detokenizing).

mod bpe;
mod detok;
mod fim;
mod spm;
mod wordpiece;

pub use detok::Detokenizer;
pub use fim::{ExtraFile, FimTokens, InfillBudget, InfillInput};

use std::collections::HashMap;

use crate::error::{EngineError, Result};
use crate::loader::Gguf;

/// GGUF `tokenizer.ggml.token_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(v: i32) -> Self {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// One `Tokenizer` per model, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Algorithm {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm { spm: spm::Spm, add_space_prefix: bool },
    WordPiece(Box<tokenizers::Tokenizer>),
}

pub struct Tokenizer {
    types: Vec<TokenType>,
    /// Each token's bytes as text would show it (byte-level and ▁ escapes undone).
    bytes: Vec<Vec<u8>>,
    vocab: HashMap<String, u32>,
    algorithm: Algorithm,
    /// Tokens matched in text before the algorithm runs, longest first.
    specials: Vec<(String, u32)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Tokens that end generation: EOS, EOT and the chat templates' end-of-turn markers.
    end_of_generation: Vec<u32>,
    /// Fill-in-the-middle tokens (`fim.rs`).
    fim: FimTokens,
}

/// End-of-turn markers of the common chat formats (as llama.cpp's vocab loader lists them).
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g.str("tokenizer.ggml.model")?;
        let tokens = g.str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types: Vec<TokenType> = match g.opt_i32_array("tokenizer.ggml.token_type")? {
            Some(t) => t.into_iter().map(TokenType::from_gguf).collect(),
            None => vec![TokenType::Normal; n],
        };
        if types.len() != n {
            return Err(EngineError::Tokenizer(format!("{} token types for {n} tokens", types.len())));
        }
        let id =
            |k: &str| -> Result<Option<u32>> { Ok(g.opt_usize(k)?.map(|v| v as u32).filter(|&v| (v as usize) < n)) };
        // BERT vocabularies may name only their [CLS] and [SEP] tokens.
        let bos = id("tokenizer.ggml.bos_token_id")?.or(id("tokenizer.ggml.cls_token_id")?);
        let eos = id("tokenizer.ggml.eos_token_id")?.or(id("tokenizer.ggml.seperator_token_id")?);
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let (algorithm, default_add_bos) = match model.as_str() {
            "gpt2" => {
                let merges = g.str_array("tokenizer.ggml.merges")?;
                let pre = g.opt_str("tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
                (Algorithm::Bpe(Box::new(bpe::build(&tokens, &merges, &pre)?)), false)
            }
            "llama" => {
                let scores = g.opt_f32_array("tokenizer.ggml.scores")?.unwrap_or_else(|| vec![0.0; n]);
                let add_space_prefix = g.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                (Algorithm::Spm { spm: spm::Spm::new(&tokens, scores, unk), add_space_prefix }, true)
            }
            "bert" => {
                let unk_text = unk.map(|u| tokens[u as usize].as_str());
                (Algorithm::WordPiece(Box::new(wordpiece::build(&tokens, unk_text)?)), true)
            }
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "unsupported tokenizer model `{other}` (supported: gpt2, llama, bert)"
                )))
            }
        };
        let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos);
        let default_add_eos = matches!(algorithm, Algorithm::WordPiece(_));
        let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token").unwrap_or(default_add_eos);

        let byte_decoder = bpe::unicode_to_byte();
        let bytes = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| match (&algorithm, ty) {
                (_, TokenType::Control | TokenType::UserDefined | TokenType::Unknown | TokenType::Unused) => {
                    match &algorithm {
                        Algorithm::Spm { .. } | Algorithm::WordPiece(_) => t.replace('\u{2581}', " ").into_bytes(),
                        Algorithm::Bpe(_) => t.clone().into_bytes(),
                    }
                }
                (Algorithm::Bpe(_), _) => t.chars().map(|c| byte_decoder.get(&c).copied().unwrap_or(b'?')).collect(),
                (Algorithm::Spm { .. }, TokenType::Byte) => vec![u8::from_str_radix(&t[3..5], 16).unwrap_or(b'?')],
                (Algorithm::Spm { .. } | Algorithm::WordPiece(_), _) => t.replace('\u{2581}', " ").into_bytes(),
            })
            .collect();

        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !t.is_empty() && matches!(types[*i], TokenType::Control | TokenType::UserDefined | TokenType::Unknown)
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        // Longest first, ties by id, so longer specials win over their prefixes.
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        let fim = FimTokens::from_gguf(g, &vocab, n)?;
        let mut end_of_generation: Vec<u32> = eos.into_iter().chain(eot).collect();
        for t in fim.end_of_generation() {
            if !end_of_generation.contains(&t) {
                end_of_generation.push(t);
            }
        }
        for t in END_OF_TURN_TEXTS {
            if let Some(&i) = vocab.get(*t) {
                if matches!(types[i as usize], TokenType::Control | TokenType::UserDefined)
                    && !end_of_generation.contains(&i)
                {
                    end_of_generation.push(i);
                }
            }
        }
        Ok(Self { types, bytes, vocab, algorithm, specials, bos, eos, add_bos, add_eos, end_of_generation, fim })
    }

    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// A token's bytes. Control tokens are empty unless `render_special`.
    pub fn token_bytes(&self, id: u32, render_special: bool) -> &[u8] {
        match self.types.get(id as usize) {
            None => &[],
            Some(TokenType::Control | TokenType::Unused) if !render_special => &[],
            Some(_) => &self.bytes[id as usize],
        }
    }

    /// Text to ids. `add_special`: BOS/EOS as the model wants them; `parse_special`: control
    /// tokens written as text become those tokens (user-defined ones always do, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(s) => {
                    self.encode_raw(s, prev_special, &mut out)?;
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    fn encode_raw(&self, s: &str, prev_special: bool, out: &mut Vec<u32>) -> Result<()> {
        match &self.algorithm {
            Algorithm::Bpe(tk) | Algorithm::WordPiece(tk) => {
                let enc = tk.encode(s, false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
                out.extend_from_slice(enc.get_ids());
            }
            Algorithm::Spm { spm, add_space_prefix } => {
                let mut text = String::with_capacity(s.len() + 3);
                if *add_space_prefix && prev_special {
                    text.push(' ');
                }
                text.push_str(s);
                spm.encode(&text.replace(' ', "\u{2581}"), &self.vocab, out);
            }
        }
        Ok(())
    }

    /// Ids to text; invalid UTF-8 (a cut character) is replaced.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id, render_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Splits text at special-token occurrences, longest token first (llama.cpp's
    /// `tokenizer_st_partition`).
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return Vec::new();
        }
        for (special, id) in &self.specials {
            if !parse_special && self.types[*id as usize] != TokenType::UserDefined {
                continue;
            }
            if !frags.iter().any(|f| matches!(f, Fragment::Text(s) if s.contains(special.as_str()))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(s) => {
                        let mut rest = s;
                        while let Some(i) = rest.find(special.as_str()) {
                            if i > 0 {
                                next.push(Fragment::Text(&rest[..i]));
                            }
                            next.push(Fragment::Token(*id));
                            rest = &rest[i + special.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }
}

#[derive(Debug, Clone, Copy)]
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}
