//! SentencePiece-style vocabulary (`tokenizer.ggml.model = llama`, used by Gemma and Llama 2):
//! start from UTF-8 characters and repeatedly merge the adjacent pair whose joined text is the
//! highest-scoring vocabulary entry, as llama.cpp's `llm_tokenizer_spm` does; pieces with no
//! entry fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

pub struct Spm {
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap: higher score first, then the leftmost pair (llama.cpp's comparator).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.partial_cmp(&o.score).unwrap_or(Ordering::Equal).then(o.left.cmp(&self.left))
    }
}

impl Spm {
    pub fn new(tokens: &[String], scores: Vec<f32>, unk: Option<u32>) -> Self {
        let mut byte_tokens = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                if let Ok(b) = u8::from_str_radix(&t[3..5], 16) {
                    byte_tokens[b as usize] = Some(i as u32);
                }
            }
        }
        Self { scores, byte_tokens, unk }
    }

    /// Tokenizes one raw-text fragment (spaces already escaped to U+2581 by the caller).
    pub fn encode(&self, text: &str, vocab: &HashMap<String, u32>, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            let len = ch.len_utf8();
            let next = if start + len == text.len() { -1 } else { i as isize + 1 };
            symbols.push(Symbol { start, len, prev: i as isize - 1, next });
        }
        let mut queue = BinaryHeap::new();
        let try_add = |left: isize, right: isize, symbols: &Vec<Symbol>, queue: &mut BinaryHeap<Bigram>| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (symbols[left as usize], symbols[right as usize]);
            let piece = &text[l.start..r.start + r.len];
            if let Some(&id) = vocab.get(piece) {
                queue.push(Bigram {
                    left: left as usize,
                    right: right as usize,
                    score: self.scores[id as usize],
                    size: piece.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(i as isize - 1, i as isize, &symbols, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Stale entry: one side was merged into something else since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if r.next >= 0 {
                symbols[r.next as usize].prev = b.left as isize;
            }
            let (prev, next) = (symbols[b.left].prev, symbols[b.left].next);
            try_add(prev, b.left as isize, &symbols, &mut queue);
            try_add(b.left as isize, next, &symbols, &mut queue);
        }
        // Every merged symbol is a vocabulary entry (merges only form entries), so a symbol is
        // either a token or a single character missing from the vocabulary: its bytes.
        let mut i = 0isize;
        while i != -1 {
            let s = symbols[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match vocab.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize].or(self.unk))),
            }
            i = s.next;
        }
    }
}
