//! WordPiece (`tokenizer.ggml.model = bert`: BERT-family embedders): a `tokenizers::Tokenizer`
//! built from the GGUF's vocabulary, which llama.cpp's converter writes in "phantom space"
//! form (a word start is `▁word`, a continuation loses its `##`): turned back into BERT's own
//! form here, with BERT's normalizer (clean-up, CJK split, lower case, accents stripped) and
//! pre-tokenizer (whitespace and punctuation). Special tokens are split out beforehand.

// `bpe::Vocab` is the map type WordPiece's builder takes too (its own alias is private).
use tokenizers::models::bpe::Vocab;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;

use crate::error::{EngineError, Result};

/// A GGUF vocabulary entry in BERT's own spelling.
fn bert_form(t: &str) -> String {
    if t.starts_with('[') && t.ends_with(']') {
        t.to_string()
    } else if let Some(word) = t.strip_prefix('\u{2581}') {
        word.to_string()
    } else {
        format!("##{t}")
    }
}

pub fn build(tokens: &[String], unk: Option<&str>) -> Result<tokenizers::Tokenizer> {
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (bert_form(t), i as u32)).collect();
    let wp = WordPiece::builder()
        .vocab(vocab)
        .unk_token(unk.unwrap_or("[UNK]").to_string())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(wp);
    tk.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    Ok(tk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantom_space_vocabularies_read_back_as_bert_pieces() {
        let tokens: Vec<String> =
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "\u{2581}hello", "\u{2581}play", "ing", "\u{2581}!", "\u{2581}cafe"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let tk = build(&tokens, Some("[UNK]")).unwrap();
        let ids = tk.encode("Hello PLAYING! Café zzz", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, [4, 5, 6, 7, 8, 1]);
    }
}
