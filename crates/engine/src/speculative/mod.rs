//! Speculative decoding inside continuous batching. Before each step, every decoding
//! sequence that allows it gets a draft: tokens its drafter guesses will come next
//! (`prompt_lookup`). The policy (`policy`) decides how many of them are worth verifying
//! given the batch and what rows cost; the scheduler adds them as extra rows of the
//! sequence's item (`Scheduler::add_drafts`: never at the price of a preemption or another
//! sequence's budget). The target model runs those rows through the same kernels as any
//! other, so each row's logits are bit-identical to those plain decode would compute, and
//! `advance` samples them one by one with the sequence's own sampler, keeping a drafted token
//! only when it is exactly the token sampling picked. The output is therefore the output of
//! plain decode, token for token, greedy or seeded, whatever the drafts were, and under any
//! load. Rejected rows' KV slots are simply not counted as computed (they are overwritten
//! later), and blocks only they used are freed (`BlockManager::truncate`).
//!
//! ```text
//!  tokens … a b c │ draft d e f      rows: c d e f → logits for the next 4 positions
//!  sample(c)=d ✓  sample(d)=e ✓  sample(e)=x ✗  → append d e x; f's row is discarded
//! ```

pub mod policy;
pub mod prompt_lookup;

use crate::scheduler::{ScheduledBatch, Scheduler};
use crate::sequence::SeqId;
use policy::{draft_lengths, Acceptance, CostModel};
use prompt_lookup::NgramIndex;

/// Engine-wide speculation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecConfig {
    /// Speculate where it pays (a request may still opt out).
    pub enabled: bool,
    /// Most drafted tokens verified per sequence and step.
    pub max_draft_tokens: usize,
    /// N-gram lengths prompt lookup matches, longest first.
    pub ngram_min: usize,
    pub ngram_max: usize,
    /// A row's cost relative to a one-row step, until the engine has measured it.
    pub prior_row_cost: f64,
}

impl Default for SpecConfig {
    fn default() -> Self {
        Self { enabled: true, max_draft_tokens: 8, ngram_min: 2, ngram_max: 4, prior_row_cost: 0.05 }
    }
}

/// A sequence's speculation state: its n-gram index and its drafts' record.
#[derive(Debug, Clone)]
pub struct SeqSpec {
    /// The request allows speculation.
    pub allowed: bool,
    index: Option<NgramIndex>,
    pub acceptance: Acceptance,
}

impl SeqSpec {
    pub fn new(allowed: bool) -> Self {
        Self { allowed, index: None, acceptance: Acceptance::default() }
    }
}

/// The engine's speculation: settings and the learned step cost.
pub struct Speculator {
    config: SpecConfig,
    cost: CostModel,
}

impl Speculator {
    pub fn new(config: SpecConfig) -> Self {
        let cost = CostModel::new(config.prior_row_cost);
        Self { config, cost }
    }

    /// A finished forward of `rows` rows took `ns`.
    pub fn observe(&mut self, rows: usize, ns: u64) {
        self.cost.observe(rows, ns);
    }

    /// Drafts for this step's decoding sequences, handed to the scheduler to add as rows.
    pub fn draft(&mut self, batch: &mut ScheduledBatch, scheduler: &mut Scheduler) {
        if !self.config.enabled || self.config.max_draft_tokens == 0 {
            return;
        }
        let c = &self.config;
        let mut proposals: Vec<(SeqId, Vec<u32>)> = Vec::new();
        for item in batch.items.iter().filter(|i| i.sample && i.len == 1) {
            let Some(seq) = scheduler.running_mut(item.seq_id) else { continue };
            if !seq.spec.allowed {
                continue;
            }
            // The last sampled token always comes on top of the draft; never draft past the
            // sequence's token limit.
            let room = seq.max_tokens.saturating_sub(seq.num_generated_tokens() + 1);
            let max_len = c.max_draft_tokens.min(room);
            let index = seq.spec.index.get_or_insert_with(|| NgramIndex::new(c.ngram_min, c.ngram_max));
            let draft = index.propose(&seq.tokens, max_len);
            if !draft.is_empty() {
                proposals.push((seq.id, draft));
            }
        }
        if proposals.is_empty() {
            return;
        }
        let rates: Vec<(f64, usize)> = proposals
            .iter()
            .map(|(id, d)| (scheduler.running(*id).map_or(0.0, |s| s.spec.acceptance.rate()), d.len()))
            .collect();
        let num_sampled = batch.items.iter().filter(|i| i.sample).count();
        let lens = draft_lengths(batch.num_tokens, num_sampled, self.cost.row_cost(), &rates);
        for ((id, draft), len) in proposals.iter_mut().zip(lens) {
            if len == 0 {
                if let Some(seq) = scheduler.running_mut(*id) {
                    seq.spec.acceptance.skipped();
                }
            }
            draft.truncate(len);
        }
        proposals.retain(|(_, d)| !d.is_empty());
        scheduler.add_drafts(batch, proposals);
    }
}
