//! `BatchInput`: one model step's flattened tokens. Several sequences' new tokens sit in one
//! list of rows; each row knows its position, the KV slot its keys go to and its sequence, and
//! each sequence carries its block table. The model returns logits only for `logits_rows`.
//!
//! ```text
//!  rows:      | seq 0: 5 prompt tokens | seq 1: 1 decode token | seq 2: chunk of 3 |
//!  positions:   0 1 2 3 4                17                      8 9 10
//!  logits_rows:         ^4               ^5                         (none: chunk not last)
//! ```

#[derive(Debug, Clone, Default)]
pub struct BatchInput {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// Global KV slot (block id × block size + offset) of each row.
    pub slots: Vec<usize>,
    /// Index into `block_tables` of each row's sequence.
    pub row_seq: Vec<usize>,
    pub block_tables: Vec<Vec<u32>>,
    pub logits_rows: Vec<usize>,
    /// Each sequence's LoRA adapters (missing or None: the base model).
    pub seq_loras: Vec<Option<std::sync::Arc<crate::lora::LoraSet>>>,
}

impl BatchInput {
    pub fn num_rows(&self) -> usize {
        self.tokens.len()
    }

    /// Runs the last sequence pushed with `lora`'s adapters.
    pub fn set_last_lora(&mut self, lora: Option<std::sync::Arc<crate::lora::LoraSet>>) {
        let seq = self.block_tables.len().checked_sub(1).expect("a sequence was pushed");
        self.seq_loras.resize(seq + 1, None);
        self.seq_loras[seq] = lora;
    }

    /// Each row's adapters, or None when no row has any (the common case costs nothing).
    pub fn row_loras(&self) -> Option<Vec<Option<&crate::lora::LoraSet>>> {
        if self.seq_loras.iter().all(|l| l.is_none()) {
            return None;
        }
        Some(self.row_seq.iter().map(|&s| self.seq_loras.get(s).and_then(|l| l.as_deref())).collect())
    }

    /// Appends one sequence's tokens at `first_pos..`; slots come from its block table.
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        first_pos: usize,
        block_table: &[u32],
        block_size: usize,
        want_logits: bool,
    ) {
        self.push_seq_rows(&[tokens], first_pos, block_table, block_size, want_logits as usize);
    }

    /// Appends one sequence's rows, the concatenation of `parts` (its tokens, then drafted
    /// ones), with logits for the last `num_logits` rows.
    pub fn push_seq_rows(
        &mut self,
        parts: &[&[u32]],
        first_pos: usize,
        block_table: &[u32],
        block_size: usize,
        num_logits: usize,
    ) {
        let seq = self.block_tables.len();
        self.block_tables.push(block_table.to_vec());
        for (i, &t) in parts.iter().flat_map(|p| p.iter()).enumerate() {
            let pos = first_pos + i;
            self.tokens.push(t);
            self.positions.push(pos as u32);
            self.slots.push(block_table[pos / block_size] as usize * block_size + pos % block_size);
            self.row_seq.push(seq);
        }
        let num_rows: usize = parts.iter().map(|p| p.len()).sum();
        let end = self.tokens.len();
        self.logits_rows.extend(end - num_logits.min(num_rows)..end);
    }
}
