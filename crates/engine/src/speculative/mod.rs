//! Speculative decoding inside continuous batching. Before each step, every decoding
//! sequence that allows it gets a draft: tokens its drafter guesses will come next —
//! prompt lookup (`prompt_lookup`) first, as it costs nothing, and where it finds no match a
//! draft model, if the engine has one (`draft_model`). The policy (`policy`) decides how many of them are worth verifying
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

pub mod draft_model;
pub mod policy;
pub mod prompt_lookup;

use std::collections::HashSet;

use crate::scheduler::{ScheduledBatch, Scheduler};
use crate::sequence::SeqId;
use draft_model::{DraftModel, DraftRequest};
use policy::{best_draft, draft_lengths, Acceptance, CostModel, ModelGate};
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
    /// Draft model: a guess whose probability under the draft model is below this ends
    /// the draft.
    pub draft_p_min: f32,
    /// Draft model: tokens it may run per step (its own budget; catching up on a prompt
    /// takes several steps).
    pub draft_max_batched_tokens: usize,
    /// Draft model: what a guess costs relative to a one-row target step, until measured.
    pub prior_draft_cost: f64,
    /// Draft model: how many of a sequence's last tokens it reads when it starts drafting
    /// for it.
    pub draft_window: usize,
}

impl Default for SpecConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_draft_tokens: 8,
            ngram_min: 2,
            ngram_max: 4,
            prior_row_cost: 0.05,
            draft_p_min: 0.6,
            draft_max_batched_tokens: 128,
            prior_draft_cost: 0.4,
            draft_window: 256,
        }
    }
}

/// Which drafter made a sequence's current draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Drafter {
    #[default]
    PromptLookup,
    Model,
}

/// A sequence's speculation state: its n-gram index and its drafts' record.
#[derive(Debug, Clone)]
pub struct SeqSpec {
    /// The request allows speculation.
    pub allowed: bool,
    index: Option<NgramIndex>,
    /// Each drafter's record for this sequence.
    pub acceptance: Acceptance,
    pub model_acceptance: Acceptance,
    /// Who drafted the current draft.
    pub drafter: Drafter,
    /// Decode steps in a row in which prompt lookup found no match.
    num_lookup_misses: u32,
}

impl SeqSpec {
    pub fn new(allowed: bool) -> Self {
        Self {
            allowed,
            index: None,
            acceptance: Acceptance::default(),
            // A draft model of the target's family mostly agrees with it; only confident
            // guesses are drafted at all.
            model_acceptance: Acceptance::with_prior(0.75),
            drafter: Drafter::default(),
            num_lookup_misses: 0,
        }
    }

    /// The record of `drafter`.
    pub fn acceptance_of(&mut self, drafter: Drafter) -> &mut Acceptance {
        match drafter {
            Drafter::PromptLookup => &mut self.acceptance,
            Drafter::Model => &mut self.model_acceptance,
        }
    }
}

/// The engine's speculation: settings, the learned step cost, the draft model if any.
pub struct Speculator {
    config: SpecConfig,
    cost: CostModel,
    draft: Option<DraftModel>,
    gate: ModelGate,
    /// This step, for the gate: Some(true) the draft model ran, Some(false) nothing was
    /// drafted though it could have been, None neither (or a prompt was caught up on).
    step_kind: Option<bool>,
}

impl Speculator {
    pub fn new(config: SpecConfig, draft: Option<DraftModel>) -> Self {
        let cost = CostModel::new(config.prior_row_cost);
        Self { config, cost, draft, gate: ModelGate::default(), step_kind: None }
    }

    /// A whole step (drafting, forward, sampling) took `ns` and appended `tokens`.
    pub fn observe_step(&mut self, tokens: usize, ns: u64) {
        if let Some(used_model) = self.step_kind.take() {
            self.gate.observe(used_model, tokens, ns);
        }
    }

    /// KV blocks the draft model's cache holds (0 without one).
    pub fn num_draft_blocks_used(&self) -> usize {
        self.draft.as_ref().map_or(0, DraftModel::num_used_blocks)
    }

    /// A sequence left the engine: its draft cache goes.
    pub fn forget(&mut self, id: SeqId) {
        if let Some(d) = &mut self.draft {
            d.forget(id);
        }
    }

    /// A finished forward of `rows` rows took `ns`.
    pub fn observe(&mut self, rows: usize, ns: u64) {
        self.cost.observe(rows, ns);
    }

    /// Drafts for this step's decoding sequences, handed to the scheduler to add as rows.
    pub fn draft(&mut self, batch: &mut ScheduledBatch, scheduler: &mut Scheduler) {
        if let Some(d) = &mut self.draft {
            // Preempted sequences start over; their draft caches go too.
            d.retain(&scheduler.running.iter().map(|s| s.id).collect::<HashSet<_>>());
        }
        self.step_kind = None;
        if !self.config.enabled || self.config.max_draft_tokens == 0 {
            return;
        }
        let row_cost = self.cost.row_cost();
        let model_guess_cost = self.model_guess_cost(batch).filter(|_| self.gate.use_model());
        let c = &self.config;
        let mut proposals: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let mut for_model: Vec<(SeqId, usize)> = Vec::new();
        let mut num_candidates = 0;
        for item in batch.items.iter().filter(|i| i.sample && i.len == 1) {
            let Some(seq) = scheduler.running_mut(item.seq_id) else { continue };
            if !seq.spec.allowed {
                continue;
            }
            // The last sampled token always comes on top of the draft; never draft past the
            // sequence's token limit.
            let room = seq.max_tokens.saturating_sub(seq.num_generated_tokens() + 1);
            let max_len = c.max_draft_tokens.min(room);
            if max_len == 0 {
                continue;
            }
            num_candidates += 1;
            let index = seq.spec.index.get_or_insert_with(|| NgramIndex::new(c.ngram_min, c.ngram_max));
            let draft = index.propose(&seq.tokens, max_len);
            seq.spec.num_lookup_misses = if draft.is_empty() { seq.spec.num_lookup_misses + 1 } else { 0 };
            // The draft model starts on a sequence (reading its prompt's end) only once prompt
            // lookup is not doing well for it.
            let model_guess_cost = model_guess_cost.filter(|_| {
                self.draft.as_ref().is_some_and(|d| d.has(seq.id))
                    || seq.spec.num_lookup_misses >= 3
                    || seq.spec.acceptance.rate() < 0.3
            });
            // Whichever drafter promises more tokens per unit of cost, by its record here;
            // prompt lookup's guesses cost only their rows.
            let lookup =
                if draft.is_empty() { 0.0 } else { best_draft(seq.spec.acceptance.rate(), row_cost, draft.len()).1 };
            let model = model_guess_cost.map_or((0, 0.0), |g| best_draft(seq.spec.model_acceptance.rate(), g, max_len));
            if model.0 > 0 && model.1 > lookup {
                if !draft.is_empty() {
                    seq.spec.acceptance.skipped();
                }
                for_model.push((seq.id, model.0));
            } else if !draft.is_empty() {
                if model_guess_cost.is_some() {
                    seq.spec.model_acceptance.skipped();
                }
                seq.spec.drafter = Drafter::PromptLookup;
                proposals.push((seq.id, draft));
            } else if model_guess_cost.is_some() {
                seq.spec.model_acceptance.skipped();
            }
        }
        // How many rows each draft is worth, the model's candidates included: their passes run
        // only for the guesses that will be verified.
        let drafters = proposals
            .iter()
            .map(|(id, d)| (*id, Drafter::PromptLookup, d.len()))
            .chain(for_model.iter().map(|&(id, k)| (id, Drafter::Model, k)));
        let rates: Vec<(f64, usize)> = drafters
            .clone()
            .map(|(id, drafter, len)| {
                (scheduler.running_mut(id).map_or(0.0, |s| s.spec.acceptance_of(drafter).rate()), len)
            })
            .collect();
        let num_sampled = batch.items.iter().filter(|i| i.sample).count();
        let lens = draft_lengths(batch.num_tokens, num_sampled, self.cost.row_cost(), &rates);
        for ((id, drafter, _), &len) in drafters.zip(&lens) {
            if len == 0 {
                if let Some(seq) = scheduler.running_mut(id) {
                    seq.spec.acceptance_of(drafter).skipped();
                }
            }
        }
        let (lookup_lens, model_lens) = lens.split_at(proposals.len());
        for ((_, draft), &len) in proposals.iter_mut().zip(lookup_lens) {
            draft.truncate(len);
        }
        for ((_, k), &len) in for_model.iter_mut().zip(model_lens) {
            *k = len;
        }
        for_model.retain(|&(_, k)| k > 0);
        // Only decode-only steps say what drafting is worth (a prompt chunk's time would
        // count against whichever kind of step carried it), and not the steps that catch the
        // draft model up on a prompt: that is paid once per sequence, and only where the rows
        // were judged worth verifying (above), never for a batch that verifies none.
        let decode_only = num_candidates > 0 && batch.items.iter().all(|i| i.sample && i.len == 1);
        if !for_model.is_empty() {
            proposals.extend(self.draft_with_model(&for_model, scheduler));
            let prompt = self.draft.as_ref().is_some_and(|d| d.caught_up_prompt);
            self.step_kind = (decode_only && !prompt).then_some(true);
        } else if proposals.iter().all(|(_, d)| d.is_empty()) && self.draft.is_some() {
            self.step_kind = decode_only.then_some(false);
        }
        proposals.retain(|(_, d)| !d.is_empty());
        if proposals.is_empty() {
            return;
        }
        scheduler.add_drafts(batch, proposals);
    }

    /// What one draft-model guess costs, in one-row target steps: its verification row and
    /// its share of a draft pass (one pass serves every decoding sequence). None without a
    /// draft model.
    fn model_guess_cost(&self, batch: &ScheduledBatch) -> Option<f64> {
        let dm = self.draft.as_ref()?;
        let pass = match (dm.pass_ns(), self.cost.one_row_step_ns()) {
            (Some(d), Some(t)) if t > 0.0 => d / t,
            _ => self.config.prior_draft_cost,
        };
        let num_decoding = batch.items.iter().filter(|i| i.sample && i.len == 1).count().max(1);
        Some(self.cost.row_cost() + pass / num_decoding as f64)
    }

    /// The draft model's guesses, up to the length chosen for each sequence.
    fn draft_with_model(&mut self, lens: &[(SeqId, usize)], scheduler: &mut Scheduler) -> Vec<(SeqId, Vec<u32>)> {
        let Some(dm) = &mut self.draft else { return Vec::new() };
        let reqs: Vec<DraftRequest> = lens
            .iter()
            .filter_map(|&(id, max_len)| scheduler.running(id).map(|s| DraftRequest { id, tokens: &s.tokens, max_len }))
            .collect();
        let got = dm.propose(&reqs);
        for (id, _) in &got {
            if let Some(seq) = scheduler.running_mut(*id) {
                seq.spec.drafter = Drafter::Model;
            }
        }
        got
    }
}
