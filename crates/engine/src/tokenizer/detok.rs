//! Incremental detokenizer: turns a stream of token ids into text pieces without ever
//! splitting a UTF-8 character (a byte-level token may end mid-character).

use super::Tokenizer;

#[derive(Default, Debug, Clone)]
pub struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id, false));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            // An invalid sequence that can never complete is replaced, not held forever.
            Err(e) if e.error_len().is_some() => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
            Err(e) => e.valid_up_to(),
        };
        let out = String::from_utf8(self.pending[..valid].to_vec()).expect("valid prefix");
        self.pending.drain(..valid);
        out
    }

    /// Whatever is left at the end of the stream.
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
