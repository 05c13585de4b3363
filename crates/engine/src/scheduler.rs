//! The scheduler: waiting and running queues, one token budget per step. Each step, running
//! sequences go first (a decode token, or the next chunk of a prompt being prefilled), then
//! waiting ones are admitted in arrival order while budget, sequence slots and KV blocks last;
//! a prompt longer than the budget is split across steps (chunked prefill). When the pool runs
//! dry, the most recently admitted running sequence is preempted: its blocks are freed and it
//! goes back to the front of the queue, to be recomputed (mostly from the prefix cache).
//!
//! ```text
//!  budget 8:  [ A:1 decode | B:1 decode | C: prompt tokens 16..22 (chunk) ]  → 8 rows
//!             running first ───────────▶ waiting admitted with what is left
//! ```

use std::collections::VecDeque;

use crate::block_manager::BlockManager;
use crate::error::EngineError;
use crate::sequence::{SeqId, SeqStatus, Sequence};

/// One sequence's share of a step: rows `start..start+len` of its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledItem {
    pub seq_id: SeqId,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the last token: sample from its logits.
    pub sample: bool,
    /// Drafted tokens verified after the last one (rows `start+len..`; speculative decoding):
    /// each of those rows has logits too.
    pub draft: Vec<u32>,
}

impl ScheduledItem {
    fn new(seq: &Sequence, start: usize, len: usize) -> Self {
        Self { seq_id: seq.id, start, len, sample: start + len == seq.tokens.len(), draft: Vec::new() }
    }

    /// Rows this item puts in the batch.
    pub fn num_rows(&self) -> usize {
        self.len + self.draft.len()
    }

    /// Logits rows it needs: one per drafted token and one after them, when it samples.
    pub fn num_logits(&self) -> usize {
        if self.sample {
            1 + self.draft.len()
        } else {
            0
        }
    }
}

#[derive(Default)]
pub struct ScheduledBatch {
    pub items: Vec<ScheduledItem>,
    pub num_tokens: usize,
    /// Sequences that can never fit the KV cache, removed from the queue.
    pub rejected: Vec<(Sequence, EngineError)>,
    pub num_preempted: usize,
    /// Sequences admitted for the first time this step, and their prefix-cache hits.
    pub newly_admitted: Vec<SeqId>,
    pub num_newly_cached_tokens: usize,
}

pub struct Scheduler {
    pub waiting: VecDeque<Sequence>,
    pub running: Vec<Sequence>,
    pub blocks: BlockManager,
    max_batched_tokens: usize,
    max_seqs: usize,
}

impl Scheduler {
    pub fn new(blocks: BlockManager, max_batched_tokens: usize, max_seqs: usize) -> Self {
        Self { waiting: VecDeque::new(), running: Vec::new(), blocks, max_batched_tokens, max_seqs }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    pub fn schedule(&mut self) -> ScheduledBatch {
        let _span = tracing::trace_span!("schedule").entered();
        let mut batch = ScheduledBatch::default();
        let mut budget = self.max_batched_tokens;

        let mut i = 0;
        while i < self.running.len() {
            let n = self.running[i].num_uncomputed_tokens().min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let need = self.running[i].num_computed_tokens + n;
            let mut preempted_self = false;
            while !self.blocks.can_append(self.running[i].block_table.len(), need) {
                // The latest admitted goes: it sits at or after `i`, so not yet scheduled.
                let victim = self.running.len() - 1;
                self.preempt(victim);
                batch.num_preempted += 1;
                if victim == i {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                break;
            }
            let seq = &mut self.running[i];
            self.blocks.append(&mut seq.block_table, need);
            let start = seq.num_computed_tokens;
            batch.items.push(ScheduledItem::new(seq, start, n));
            budget -= n;
            i += 1;
        }

        while budget > 0 && self.running.len() < self.max_seqs {
            let Some(seq) = self.waiting.front_mut() else { break };
            // Room for the whole sequence plus one generated token, alone in the pool.
            if self.blocks.blocks_for(seq.tokens.len() + 1) > self.blocks.num_blocks() {
                let seq = self.waiting.pop_front().expect("front exists");
                let err = EngineError::KvCacheTooSmall {
                    needed: seq.tokens.len() + 1,
                    capacity: self.blocks.num_blocks() * self.blocks.block_size(),
                };
                batch.rejected.push((seq, err));
                continue;
            }
            // The cached prefix is looked up once per admission attempt and handed on.
            let hit = self.blocks.cached_prefix(&mut seq.block_table, &seq.tokens);
            let cached = hit.num_blocks() * self.blocks.block_size();
            let n = (seq.tokens.len() - cached).min(budget);
            if !self.blocks.can_allocate(&hit, cached + n) {
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            let num_cached = self.blocks.allocate(&mut seq.block_table, hit, cached + n);
            seq.num_computed_tokens = num_cached;
            if !seq.was_admitted {
                seq.num_cached_tokens = num_cached;
                seq.was_admitted = true;
                batch.newly_admitted.push(seq.id);
                batch.num_newly_cached_tokens += num_cached;
            }
            seq.status = SeqStatus::Running;
            let start = seq.num_computed_tokens;
            batch.items.push(ScheduledItem::new(&seq, start, n));
            self.running.push(seq);
            budget -= n;
        }
        batch.num_tokens = self.max_batched_tokens - budget;
        debug_assert_eq!(batch.num_tokens, batch.items.iter().map(|i| i.num_rows()).sum::<usize>());
        batch
    }

    /// Adds drafted tokens to decoding items, as far as the step's token budget and free KV
    /// blocks allow: a draft never preempts anyone and never takes another sequence's place.
    pub fn add_drafts(&mut self, batch: &mut ScheduledBatch, drafts: Vec<(SeqId, Vec<u32>)>) {
        for (id, mut draft) in drafts {
            let room = self.max_batched_tokens - batch.num_tokens;
            draft.truncate(room);
            let Some(item) = batch.items.iter_mut().find(|i| i.seq_id == id && i.sample && i.draft.is_empty()) else {
                continue;
            };
            let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else { continue };
            let end = item.start + item.len;
            while !draft.is_empty() && !self.blocks.can_append(seq.block_table.len(), end + draft.len()) {
                draft.pop();
            }
            if draft.is_empty() {
                continue;
            }
            self.blocks.append(&mut seq.block_table, end + draft.len());
            batch.num_tokens += draft.len();
            item.draft = draft;
        }
    }

    /// After verification: `num_accepted` drafted tokens (now appended to the sequence) have
    /// their K/V in the cache; the rejected rows' slots are not counted, and blocks that only
    /// they reached are freed.
    pub fn accept_drafts(&mut self, id: SeqId, num_accepted: usize) {
        let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else { return };
        seq.num_computed_tokens += num_accepted;
        debug_assert!(seq.num_computed_tokens < seq.tokens.len(), "the last sampled token is never computed");
        self.blocks.register_full_blocks(&mut seq.block_table, &seq.tokens, seq.num_computed_tokens);
        self.blocks.truncate(&mut seq.block_table, seq.tokens.len());
    }

    /// Frees a running sequence's blocks and puts it back at the front of the queue; its
    /// tokens (prompt and generated) will be recomputed.
    fn preempt(&mut self, idx: usize) {
        let mut seq = self.running.remove(idx);
        tracing::debug!(seq = seq.id, "preempted");
        self.blocks.free(&mut seq.block_table);
        seq.num_computed_tokens = 0;
        seq.status = SeqStatus::Waiting;
        self.waiting.push_front(seq);
    }

    /// Marks the scheduled chunks as computed and records full blocks for the prefix cache.
    pub fn mark_computed(&mut self, batch: &ScheduledBatch) {
        for item in &batch.items {
            let Some(seq) = self.running.iter_mut().find(|s| s.id == item.seq_id) else { continue };
            seq.num_computed_tokens = item.start + item.len;
            self.blocks.register_full_blocks(&mut seq.block_table, &seq.tokens, seq.num_computed_tokens);
        }
    }

    /// The running sequence with this id.
    pub fn running(&self, id: SeqId) -> Option<&Sequence> {
        self.running.iter().find(|s| s.id == id)
    }

    pub fn running_mut(&mut self, id: SeqId) -> Option<&mut Sequence> {
        self.running.iter_mut().find(|s| s.id == id)
    }

    /// Removes a sequence (finished or aborted) wherever it is, freeing its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let mut seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i).unwrap()
        } else {
            return None;
        };
        self.blocks.free(&mut seq.block_table);
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Request;
    use crate::sampling::SamplingParams;

    fn seq(id: u64, n: usize) -> Sequence {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let prompt = (0..n as u32).map(|t| t + id as u32 * 1000).collect();
        Sequence::new(id, Request::new(prompt, SamplingParams::greedy(), 8), tx)
    }

    fn items(b: &ScheduledBatch) -> Vec<(SeqId, usize, usize, bool)> {
        b.items.iter().map(|i| (i.seq_id, i.start, i.len, i.sample)).collect()
    }

    #[test]
    fn admits_in_order_and_chunks_long_prompts() {
        let mut s = Scheduler::new(BlockManager::new(32, 4), 10, 8);
        s.add(seq(1, 6));
        s.add(seq(2, 7));
        let b = s.schedule();
        // 6 tokens of seq 1, then 4 of seq 2's 7 (budget 10).
        assert_eq!(items(&b), vec![(1, 0, 6, true), (2, 0, 4, false)]);
        s.mark_computed(&b);
        s.running[0].tokens.push(99);
        let b = s.schedule();
        // Running first: seq 1 decodes one token, seq 2 finishes its prompt.
        assert_eq!(items(&b), vec![(1, 6, 1, true), (2, 4, 3, true)]);
        assert_eq!(b.num_tokens, 4);
    }

    #[test]
    fn max_seqs_caps_admission() {
        let mut s = Scheduler::new(BlockManager::new(32, 4), 100, 1);
        s.add(seq(1, 3));
        s.add(seq(2, 3));
        let b = s.schedule();
        assert_eq!(b.items.len(), 1);
        assert_eq!(s.waiting.len(), 1);
    }

    #[test]
    fn preempts_the_latest_admitted_when_the_pool_runs_dry() {
        // 4 blocks of 4 tokens: two 8-token prompts fill the pool.
        let mut s = Scheduler::new(BlockManager::new(4, 4), 100, 8);
        s.add(seq(1, 8));
        s.add(seq(2, 8));
        let b = s.schedule();
        assert_eq!(b.items.len(), 2);
        s.mark_computed(&b);
        s.running[0].tokens.push(5);
        s.running[1].tokens.push(6);
        // Seq 1 needs a 3rd block: seq 2 (admitted last) is preempted and requeued first.
        let b = s.schedule();
        assert_eq!(b.num_preempted, 1);
        assert_eq!(items(&b), vec![(1, 8, 1, true)]);
        assert_eq!(s.waiting.front().unwrap().id, 2);
        assert_eq!(s.waiting.front().unwrap().num_computed_tokens, 0);
        assert_eq!(s.blocks.num_used_blocks(), 3);
    }

    #[test]
    fn a_sequence_that_can_never_fit_is_rejected() {
        let mut s = Scheduler::new(BlockManager::new(2, 4), 100, 8);
        s.add(seq(1, 8));
        s.add(seq(2, 3));
        let b = s.schedule();
        assert_eq!(b.rejected.len(), 1);
        assert_eq!(b.rejected[0].0.id, 1);
        assert_eq!(items(&b), vec![(2, 0, 3, true)]);
    }

    #[test]
    fn prefix_hits_skip_prefill_and_remove_frees_blocks() {
        let mut s = Scheduler::new(BlockManager::new(16, 4), 100, 8);
        s.add(seq(1, 10));
        let b = s.schedule();
        s.mark_computed(&b);
        let first = s.remove(1).unwrap();
        assert_eq!(s.blocks.num_used_blocks(), 0);
        // Same prompt again: 8 of 10 tokens come from the cache, 2 are computed.
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        s.add(Sequence::new(3, Request::new(first.tokens.clone(), SamplingParams::greedy(), 8), tx));
        let b = s.schedule();
        assert_eq!(items(&b), vec![(3, 8, 2, true)]);
        assert_eq!(s.running[0].num_cached_tokens, 8);
    }
}
