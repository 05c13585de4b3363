//! `EngineCore`: the scheduler, the model runner and the step that drives them — schedule, run,
//! postprocess — with no thread or channel of its own. The engine thread (engine.rs) feeds it
//! commands between steps; `generate::Generator` steps it in the caller's thread. A sequence's
//! events go to its own channel; a sequence whose receiver is gone is dropped at the next step.
//!
//! ```text
//!  step:  schedule ──▶ ScheduledBatch (items keyed by sequence id), drafts added
//!         run      ──▶ logits, rows per sampling item (a panic fails the batch, not us)
//!         postprocess: mark computed → advance (on the pool: sample, verify drafts, append,
//!                      stop checks, events) → accept drafts' KV, remove finished
//! ```

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::advance::{advance, Advanced, Exit};
use crate::block_manager::BlockManager;
use crate::config::EngineConfig;
use crate::error::{panic_message, EngineError};
use crate::layers::pool::Pool;
use crate::model::Model;
use crate::model_runner::ModelRunner;
use crate::request::Event;
use crate::scheduler::{ScheduledBatch, Scheduler};
use crate::sequence::{SeqId, Sequence};
use crate::speculative::draft_model::DraftModel;
use crate::speculative::{Drafter, Speculator};
use crate::stats::EngineStats;

pub struct EngineCore {
    model: Arc<Model>,
    scheduler: Scheduler,
    runner: ModelRunner,
    speculator: Speculator,
    stats: Arc<EngineStats>,
    /// The published `LoraUsage` is empty (no adapter in any queue at the last update).
    lora_usage_published_empty: std::cell::Cell<bool>,
}

impl EngineCore {
    /// A core over `num_blocks` KV blocks; `stats` is shared with whoever reads the counters.
    /// `draft` (a drafter over its own cache) makes speculation use a draft model too.
    pub fn new(
        model: Arc<Model>,
        draft: Option<DraftModel>,
        config: &EngineConfig,
        num_blocks: usize,
        stats: Arc<EngineStats>,
    ) -> Self {
        let blocks = BlockManager::with_prefix_caching(num_blocks, config.block_size, config.prefix_caching);
        let scheduler = Scheduler::new(blocks, config.max_batched_tokens, config.max_seqs);
        let runner = ModelRunner { kv: model.new_kv_cache_of(num_blocks, config.block_size, config.kv_dtype) };
        EngineStats::set(&stats.kv_blocks_total, num_blocks as u64);
        let speculator = Speculator::new(config.speculative.clone(), draft);
        Self { model, scheduler, runner, speculator, stats, lora_usage_published_empty: std::cell::Cell::new(true) }
    }

    pub fn is_idle(&self) -> bool {
        self.scheduler.is_idle()
    }

    pub fn add(&mut self, seq: Sequence) {
        EngineStats::add(&self.stats.prompt_tokens_total, seq.num_prompt_tokens as u64);
        self.scheduler.add(seq);
    }

    /// Drops a request wherever it is (if it still is), freeing its blocks.
    pub fn abort(&mut self, id: SeqId) {
        if let Some(seq) = self.scheduler.remove(id) {
            self.leave(&seq, Exit::Aborted);
        }
    }

    /// One engine step.
    pub fn step(&mut self) {
        let t0 = Instant::now();
        let batch = self.schedule();
        let Some(logits) = self.run(&batch) else { return };
        let num_tokens = self.postprocess(&batch, &logits);
        self.speculator.observe_step(num_tokens, t0.elapsed().as_nanos() as u64);
    }

    pub fn update_gauges(&self) {
        let st = &self.stats;
        EngineStats::set(&st.num_running, self.scheduler.running.len() as u64);
        EngineStats::set(&st.num_waiting, self.scheduler.waiting.len() as u64);
        EngineStats::set(&st.kv_blocks_used, self.scheduler.blocks.num_used_blocks() as u64);
        EngineStats::set(&st.draft_kv_blocks_used, self.speculator.num_draft_blocks_used() as u64);
        self.update_lora_usage();
    }

    /// Publishes which adapters are in use, when that changed (nothing to do, and no lock,
    /// while no sequence has an adapter).
    fn update_lora_usage(&self) {
        let names = |seqs: &mut dyn Iterator<Item = &Sequence>| {
            let mut v: Vec<String> = seqs
                .flat_map(|s| s.lora.iter().flat_map(|l| l.entries().iter().map(|(a, _)| a.name.clone())))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let any = self.scheduler.running.iter().chain(&self.scheduler.waiting).any(|s| s.lora.is_some());
        if !any && self.lora_usage_published_empty.get() {
            return;
        }
        let usage = crate::stats::LoraUsage {
            running: names(&mut self.scheduler.running.iter()),
            waiting: names(&mut self.scheduler.waiting.iter()),
        };
        self.lora_usage_published_empty.set(!any);
        let mut published = self.stats.lora_usage.lock().unwrap_or_else(|e| e.into_inner());
        if *published != usage {
            *published = usage;
        }
    }

    /// Bookkeeping for a sequence leaving the engine.
    fn leave(&mut self, seq: &Sequence, exit: Exit) {
        seq.queue_state.leave(&self.stats.num_unadmitted);
        self.speculator.forget(seq.id);
        let st = &self.stats;
        let counter = match exit {
            Exit::Finished => &st.requests_finished_total,
            Exit::Aborted => &st.requests_aborted_total,
            Exit::Failed => &st.requests_failed_total,
        };
        EngineStats::add(counter, 1);
    }

    /// Removes a sequence and tells its caller why.
    fn fail(&mut self, id: SeqId, err: EngineError) {
        if let Some(seq) = self.scheduler.remove(id) {
            let _ = seq.events.send(Event::Error(err));
            self.leave(&seq, Exit::Failed);
        }
    }

    fn schedule(&mut self) -> ScheduledBatch {
        let t0 = Instant::now();
        let mut batch = self.scheduler.schedule();
        self.speculator.draft(&mut batch, &mut self.scheduler);
        let st = self.stats.clone();
        for &id in &batch.newly_admitted {
            if let Some(seq) = self.scheduler.running_mut(id) {
                seq.queue_state.leave(&st.num_unadmitted);
                report_progress(seq);
            }
        }
        EngineStats::add(&st.prefix_cache_hit_tokens_total, batch.num_newly_cached_tokens as u64);
        EngineStats::add(&st.preemptions_total, batch.num_preempted as u64);
        for (seq, err) in std::mem::take(&mut batch.rejected) {
            let _ = seq.events.send(Event::Error(err));
            self.leave(&seq, Exit::Failed);
        }
        // Gauges reflect this step before any of its tokens reach a caller.
        self.update_gauges();
        EngineStats::add(&st.schedule_ns, t0.elapsed().as_nanos() as u64);
        if !batch.items.is_empty() {
            EngineStats::add(&st.steps_total, 1);
            EngineStats::add(&st.step_tokens_total, batch.num_tokens as u64);
            EngineStats::add(&st.step_seqs_total, batch.items.len() as u64);
            st.step_tokens_max.fetch_max(batch.num_tokens as u64, std::sync::atomic::Ordering::Relaxed);
        }
        batch
    }

    /// The forward pass; `None` when there is nothing to run or it panicked. A bug in a
    /// kernel must not take the server down: the step's requests fail (their cache contents
    /// are suspect) and the others keep going.
    fn run(&mut self, batch: &ScheduledBatch) -> Option<Vec<f32>> {
        if batch.items.is_empty() {
            return None;
        }
        let t0 = Instant::now();
        let model = self.model.clone();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| self.runner.run(&model, batch, &self.scheduler)));
        let ns = t0.elapsed().as_nanos() as u64;
        EngineStats::add(&self.stats.forward_ns, ns);
        self.speculator.observe(batch.num_tokens, ns);
        match run {
            Ok(logits) => Some(logits),
            Err(panic) => {
                let msg = panic_message(&*panic);
                tracing::error!("model forward panicked: {msg}");
                for item in &batch.items {
                    self.fail(item.seq_id, EngineError::Internal(format!("model forward failed: {msg}")));
                }
                None
            }
        }
    }

    /// Turns each sampling sequence's logits rows into tokens (`advance`: sample, verify
    /// drafts, append, stop checks, events), then settles the KV bookkeeping; finished and
    /// abandoned sequences leave.
    fn postprocess(&mut self, batch: &ScheduledBatch, logits: &[f32]) -> usize {
        let t0 = Instant::now();
        self.scheduler.mark_computed(batch);
        // Each prompt chunk's progress, before the first token it may bring.
        for item in &batch.items {
            if let Some(seq) = self.scheduler.running_mut(item.seq_id) {
                report_progress(seq);
            }
        }
        let mut results = self.advance_all(batch, logits);
        let mut num_tokens = 0;
        let advance_ns = t0.elapsed().as_nanos() as u64;
        let st = self.stats.clone();
        for item in batch.items.iter().filter(|i| i.sample) {
            let id = item.seq_id;
            let a = match results.remove(&id) {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    self.fail(id, e);
                    continue;
                }
                None => continue,
            };
            EngineStats::add(&st.generated_tokens_total, a.num_tokens as u64);
            num_tokens += a.num_tokens;
            EngineStats::add(&st.spec_draft_tokens_total, item.draft.len() as u64);
            EngineStats::add(&st.spec_drafts_total, !item.draft.is_empty() as u64);
            EngineStats::add(&st.spec_accepted_tokens_total, a.num_accepted as u64);
            let drafter = self.scheduler.running(id).map(|s| s.spec.drafter);
            if !item.draft.is_empty() && drafter == Some(Drafter::Model) {
                EngineStats::add(&st.spec_model_draft_tokens_total, item.draft.len() as u64);
                EngineStats::add(&st.spec_model_accepted_tokens_total, a.num_accepted as u64);
            }
            if let Some(exit) = a.exit {
                if let Some(seq) = self.scheduler.remove(id) {
                    self.leave(&seq, exit);
                }
            } else if !item.draft.is_empty() {
                if let Some(seq) = self.scheduler.running_mut(id) {
                    seq.spec.acceptance_of(seq.spec.drafter).record(a.num_tested, a.num_accepted);
                }
                self.scheduler.accept_drafts(id, a.num_accepted);
            }
        }
        EngineStats::add(&st.sample_ns, advance_ns);
        EngineStats::add(&st.postprocess_ns, t0.elapsed().as_nanos() as u64 - advance_ns);
        num_tokens
    }

    /// `advance` for every sampling sequence, in parallel on the pool: each sequence has its
    /// own sampler, RNG and channel, so the result does not depend on the split. A panic while
    /// sampling one sequence (a grammar bug, say) fails that sequence only.
    fn advance_all(&mut self, batch: &ScheduledBatch, logits: &[f32]) -> HashMap<SeqId, Result<Advanced, EngineError>> {
        let vocab = self.model.decoder.config.vocab_size;
        let tokenizer = self.model.tokenizer.clone();
        // Each sampling item's logits rows and draft, by sequence.
        let mut rows_of: HashMap<SeqId, (&[f32], &[u32])> = HashMap::new();
        let mut at = 0;
        for item in batch.items.iter().filter(|i| i.sample) {
            let n = item.num_logits() * vocab;
            rows_of.insert(item.seq_id, (&logits[at..at + n], &item.draft));
            at += n;
        }
        type Cell<'a> = (&'a mut Sequence, &'a [f32], &'a [u32], Option<Result<Advanced, EngineError>>);
        // One cell per sequence: the pool hands each index to one thread, so the locks are
        // never contended; they only make the disjoint `&mut` access safe to express.
        let cells: Vec<Mutex<Cell>> = self
            .scheduler
            .running
            .iter_mut()
            .filter_map(|seq| rows_of.get(&seq.id).map(|&(rows, draft)| Mutex::new((seq, rows, draft, None))))
            .collect();
        Pool::global().run(cells.len(), &|range| {
            for i in range {
                let mut cell = cells[i].lock().unwrap_or_else(|e| e.into_inner());
                let (seq, rows, draft, _) = &mut *cell;
                let out = std::panic::catch_unwind(AssertUnwindSafe(|| advance(seq, rows, draft, &tokenizer)))
                    .unwrap_or_else(|p| Err(EngineError::Internal(format!("sampling failed: {}", panic_message(&*p)))));
                cell.3 = Some(out);
            }
        });
        cells
            .into_iter()
            .map(|c| c.into_inner().unwrap_or_else(|e| e.into_inner()))
            .map(|(seq, _, _, out)| (seq.id, out.expect("every cell is sampled")))
            .collect()
    }
}

/// A prompt-progress event, for a sequence that asked for them, has generated nothing yet and
/// got further than its last report (so none follows a token, and a preempted sequence's
/// recomputation is not reported again).
fn report_progress(seq: &mut Sequence) {
    let fresh = seq.progress_sent.is_none_or(|last| seq.num_computed_tokens > last);
    if seq.report_progress && seq.num_generated_tokens() == 0 && fresh {
        seq.progress_sent = Some(seq.num_computed_tokens);
        let _ = seq.events.send(Event::Progress(crate::request::PromptProgress {
            num_total: seq.num_prompt_tokens,
            num_cached: seq.num_cached_tokens,
            num_processed: seq.num_computed_tokens,
        }));
    }
}
