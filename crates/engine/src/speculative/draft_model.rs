//! The draft-model drafter: a smaller model with the target's vocabulary (Qwen2.5-Coder-0.5B
//! for the 1.5B) guesses the next tokens greedily. It owns its own paged KV cache and block
//! pool (a table per sequence it drafts for) and its own token budget per step. The
//! sequences it drafts for in a step run together: the first pass feeds each one the tokens
//! its cache lacks (the prompt, in budget-sized chunks, the first time; afterwards the one or
//! few tokens accepted since), each later pass feeds the guess the pass before made. A
//! sequence stops guessing when the draft model is unsure (its guess's probability below
//! `p_min`, as llama.cpp's draft mode does) or at the length the policy allows. Nothing has
//! to be told after verification: at the next proposal the cached guesses are compared with
//! the sequence's actual tokens and the cache is cut back to what still agrees, freeing the
//! blocks only rejected guesses used. Tables of sequences that left the engine are freed at
//! the next step. `Speculator::draft` calls it; its guesses only ever decide speed, never
//! output (the target verifies each one).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::batch::BatchInput;
use crate::block_manager::{BlockManager, BlockTable};
use crate::error::{EngineError, Result};
use crate::kv_cache::{KvCache, KvDtype};
use crate::model::Model;
use crate::sequence::SeqId;
use crate::speculative::SpecConfig;

/// One sequence's state in the draft cache.
#[derive(Debug)]
struct DraftSeq {
    table: BlockTable,
    /// The draft model sees the sequence from this token on (at positions from 0): a
    /// window of the prompt's end is enough to guess the next few tokens, and far cheaper
    /// to catch up on than the whole prompt.
    offset: usize,
    /// Tokens `offset..num_computed` have K/V in the draft cache: the sequence's tokens below
    /// `base`, then `guesses` (fed, not yet known to be right).
    num_computed: usize,
    base: usize,
    guesses: Vec<u32>,
}

/// What a candidate asks for: its tokens so far and the most guesses worth making.
pub struct DraftRequest<'a> {
    pub id: SeqId,
    pub tokens: &'a [u32],
    pub max_len: usize,
}

pub struct DraftModel {
    model: Arc<Model>,
    kv: KvCache,
    blocks: BlockManager,
    seqs: HashMap<SeqId, DraftSeq>,
    max_batched_tokens: usize,
    p_min: f32,
    /// How much of a prompt's end the draft model reads.
    window: usize,
    /// Guesses are ids below this: tokens both models and the tokenizer know.
    num_tokens: usize,
    /// Nanoseconds of a one-token pass (exponentially weighted), for the policy.
    pass_ns: Option<f64>,
    /// The last `propose` fed a long catch-up chunk (a prompt): its step says nothing about
    /// what drafting costs from then on.
    pub caught_up_prompt: bool,
}

impl DraftModel {
    /// A drafter for `target` over `num_blocks` blocks of its own; an error when the two
    /// models' vocabularies differ.
    pub fn new(
        target: &Model,
        model: Arc<Model>,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDtype,
        spec: &SpecConfig,
    ) -> Result<Self> {
        Self::check_compatible(target, &model)?;
        let num_tokens = target.decoder.config.vocab_size.min(model.decoder.config.vocab_size);
        let kv = model.new_kv_cache_of(num_blocks, block_size, dtype);
        let blocks = BlockManager::new(num_blocks, block_size);
        let seqs = HashMap::new();
        Ok(Self {
            model,
            kv,
            blocks,
            seqs,
            max_batched_tokens: spec.draft_max_batched_tokens.max(1),
            p_min: spec.draft_p_min,
            window: spec.draft_window.max(1),
            num_tokens,
            pass_ns: None,
            caught_up_prompt: false,
        })
    }

    /// A draft model is usable only if its token ids mean what the target's do.
    pub fn check_compatible(target: &Model, draft: &Model) -> Result<()> {
        let (t, d) = (&target.tokenizer, &draft.tokenizer);
        let bad = |why: String| {
            Err(EngineError::InvalidConfig(format!(
                "draft model {} cannot draft for {}: {why}",
                draft.path, target.path
            )))
        };
        if t.vocab_size() != d.vocab_size() {
            return bad(format!("vocabularies differ in size ({} vs {} tokens)", d.vocab_size(), t.vocab_size()));
        }
        if draft.decoder.config.vocab_size < t.vocab_size() {
            return bad("its output layer is smaller than the vocabulary".into());
        }
        if let Some(id) = (0..t.vocab_size() as u32).find(|&i| t.token_bytes(i, true) != d.token_bytes(i, true)) {
            return bad(format!("token {id} differs ({:?} vs {:?})", d.decode(&[id], true), t.decode(&[id], true)));
        }
        Ok(())
    }

    pub fn num_used_blocks(&self) -> usize {
        self.blocks.num_used_blocks()
    }

    /// What one guess costs, in nanoseconds (None until measured).
    pub fn pass_ns(&self) -> Option<f64> {
        self.pass_ns
    }

    /// Whether it drafts for this sequence already (has its cache).
    pub fn has(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Frees a sequence's table.
    pub fn forget(&mut self, id: SeqId) {
        if let Some(mut s) = self.seqs.remove(&id) {
            self.blocks.free(&mut s.table);
        }
    }

    /// Frees the tables of sequences not in `alive`.
    pub fn retain(&mut self, alive: &HashSet<SeqId>) {
        let gone: Vec<SeqId> = self.seqs.keys().filter(|id| !alive.contains(id)).copied().collect();
        gone.into_iter().for_each(|id| self.forget(id));
    }

    /// Guesses for each request (possibly none: still catching up, out of blocks, unsure).
    pub fn propose(&mut self, reqs: &[DraftRequest]) -> Vec<(SeqId, Vec<u32>)> {
        let bs = self.blocks.block_size();
        // First pass: what each cache lacks, within the budget.
        let mut input = BatchInput::default();
        let mut active: Vec<(usize, Vec<u32>)> = Vec::new(); // (index into reqs, guesses)
        let mut budget = self.max_batched_tokens;
        self.caught_up_prompt = false;
        for (i, r) in reqs.iter().enumerate() {
            if r.max_len == 0 || budget == 0 {
                continue;
            }
            let window = self.window;
            let s = self.seqs.entry(r.id).or_insert_with(|| DraftSeq::new(r.tokens.len().saturating_sub(window)));
            s.roll_back(r.tokens);
            self.blocks.truncate(&mut s.table, s.num_computed - s.offset);
            let pending = r.tokens.len() - s.num_computed;
            let chunk = pending.min(budget);
            // More than a step's worth of accepted tokens: a prompt (or a long run of lookup
            // drafts) being caught up on.
            self.caught_up_prompt |= chunk > 16;
            let caught_up = chunk == pending;
            // Room for the chunk and, once caught up, every guess but the last (never fed).
            let need = s.num_computed - s.offset + chunk + if caught_up { r.max_len - 1 } else { 0 };
            if !self.blocks.can_append(s.table.len(), need) {
                // The pool is full: this sequence gives its blocks back and drafts no more
                // for now (it starts over when there is room).
                let mut s = self.seqs.remove(&r.id).expect("just inserted");
                self.blocks.free(&mut s.table);
                continue;
            }
            self.blocks.append(&mut s.table, need);
            let from = s.num_computed;
            let rows = &r.tokens[from..from + chunk];
            input.push_seq_rows(&[rows], from - s.offset, s.table.blocks(), bs, caught_up as usize);
            s.num_computed += chunk;
            s.base = s.num_computed;
            budget -= chunk;
            if caught_up {
                active.push((i, Vec::new()));
            }
        }
        if input.num_rows() == 0 {
            return Vec::new();
        }
        // Each active sequence's latest guess and its probability (none once it stopped).
        let mut latest: Vec<Option<(u32, f32)>> = self.forward(&input).into_iter().map(Some).collect();
        loop {
            let mut next = BatchInput::default();
            let mut fed = Vec::new();
            for (k, (i, guesses)) in active.iter_mut().enumerate() {
                let Some((token, p)) = latest[k].take() else { continue };
                if p < self.p_min {
                    continue;
                }
                guesses.push(token);
                if guesses.len() == reqs[*i].max_len {
                    continue;
                }
                let s = self.seqs.get_mut(&reqs[*i].id).expect("active sequences have a table");
                next.push_seq_rows(&[&[token]], s.num_computed - s.offset, s.table.blocks(), bs, 1);
                s.num_computed += 1;
                s.guesses.push(token);
                fed.push(k);
            }
            if fed.is_empty() {
                break;
            }
            for (k, guess) in fed.into_iter().zip(self.forward(&next)) {
                latest[k] = Some(guess);
            }
        }
        active.into_iter().filter(|(_, g)| !g.is_empty()).map(|(i, g)| (reqs[i].id, g)).collect()
    }

    /// One forward of the draft model; each logits row's most likely token and its
    /// probability.
    fn forward(&mut self, input: &BatchInput) -> Vec<(u32, f32)> {
        let vocab = self.model.decoder.config.vocab_size;
        let t0 = std::time::Instant::now();
        let flat = self.model.decoder.forward(input, &mut self.kv);
        if input.num_rows() == input.logits_rows.len() {
            // Decode-shaped passes are what a guess costs.
            let ns = t0.elapsed().as_nanos() as f64;
            self.pass_ns = Some(self.pass_ns.map_or(ns, |p| 0.9 * p + 0.1 * ns));
        }
        flat.chunks_exact(vocab).map(|row| argmax_prob(&row[..self.num_tokens])).collect()
    }
}

impl DraftSeq {
    fn new(offset: usize) -> Self {
        Self { table: BlockTable::default(), offset, num_computed: offset, base: offset, guesses: Vec::new() }
    }

    /// Keeps only the cached positions that agree with the sequence's actual `tokens`.
    fn roll_back(&mut self, tokens: &[u32]) {
        let agree = self.guesses.iter().zip(&tokens[self.base.min(tokens.len())..]).take_while(|(g, t)| g == t).count();
        // The last token is never cached: its row must run to give the next logits.
        self.num_computed = self.num_computed.min(self.base + agree).min(tokens.len() - 1).max(self.offset);
        self.base = self.num_computed;
        self.guesses.clear();
    }
}

/// The most likely token and its probability under softmax.
fn argmax_prob(row: &[f32]) -> (u32, f32) {
    let (best, max) =
        row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    (best as u32, 1.0 / sum)
}
