//! `EngineCore`: the scheduler, the model runner and the step that drives them — schedule, run,
//! postprocess — with no thread or channel of its own. The engine thread (engine.rs) feeds it
//! commands between steps; `generate::Generator` steps it in the caller's thread. A sequence's
//! events go to its own channel; a sequence whose receiver is gone is dropped at the next step.
//!
//! ```text
//!  step:  schedule ──▶ ScheduledBatch (items keyed by sequence id)
//!         run      ──▶ logits, one row per sampling item (a panic fails the batch, not us)
//!         postprocess: mark computed → sample (on the pool) → append, stop checks → events
//! ```

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::block_manager::BlockManager;
use crate::config::EngineConfig;
use crate::error::{panic_message, EngineError};
use crate::layers::pool::Pool;
use crate::model::Model;
use crate::model_runner::ModelRunner;
use crate::request::{Event, Finished, TokenEvent};
use crate::sampling::Sampled;
use crate::scheduler::{ScheduledBatch, Scheduler};
use crate::sequence::{Appended, SeqId, Sequence};
use crate::stats::EngineStats;

pub struct EngineCore {
    model: Arc<Model>,
    scheduler: Scheduler,
    runner: ModelRunner,
    stats: Arc<EngineStats>,
}

/// Why a sequence leaves the engine (for the counters).
#[derive(Clone, Copy)]
enum Exit {
    Finished,
    Aborted,
    Failed,
}

impl EngineCore {
    /// A core over `num_blocks` KV blocks; `stats` is shared with whoever reads the counters.
    pub fn new(model: Arc<Model>, config: &EngineConfig, num_blocks: usize, stats: Arc<EngineStats>) -> Self {
        let blocks = BlockManager::with_prefix_caching(num_blocks, config.block_size, config.prefix_caching);
        let scheduler = Scheduler::new(blocks, config.max_batched_tokens, config.max_seqs);
        let runner = ModelRunner { kv: model.new_kv_cache_of(num_blocks, config.block_size, config.kv_dtype) };
        EngineStats::set(&stats.kv_blocks_total, num_blocks as u64);
        Self { model, scheduler, runner, stats }
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
        let batch = self.schedule();
        let Some(logits) = self.run(&batch) else { return };
        self.postprocess(&batch, &logits);
    }

    pub fn update_gauges(&self) {
        let st = &self.stats;
        EngineStats::set(&st.num_running, self.scheduler.running.len() as u64);
        EngineStats::set(&st.num_waiting, self.scheduler.waiting.len() as u64);
        EngineStats::set(&st.kv_blocks_used, self.scheduler.blocks.num_used_blocks() as u64);
    }

    /// Bookkeeping for a sequence leaving the engine.
    fn leave(&self, seq: &Sequence, exit: Exit) {
        seq.queue_state.leave(&self.stats.num_unadmitted);
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
        let st = self.stats.clone();
        for &id in &batch.newly_admitted {
            if let Some(seq) = self.scheduler.running(id) {
                seq.queue_state.leave(&st.num_unadmitted);
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
        EngineStats::add(&self.stats.forward_ns, t0.elapsed().as_nanos() as u64);
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

    /// Samples one token for each sequence whose chunk reached its end, appends it, applies
    /// the stop conditions and sends the events; finished and abandoned sequences leave.
    fn postprocess(&mut self, batch: &ScheduledBatch, logits: &[f32]) {
        let t0 = Instant::now();
        self.scheduler.mark_computed(batch);
        let mut sampled = self.sample(batch, logits);
        let sample_ns = t0.elapsed().as_nanos() as u64;
        let tokenizer = self.model.tokenizer.clone();
        for item in batch.items.iter().filter(|i| i.sample) {
            let id = item.seq_id;
            let s = match sampled.remove(&id) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    self.fail(id, e);
                    continue;
                }
                None => continue,
            };
            EngineStats::add(&self.stats.generated_tokens_total, 1);
            let seq = self.scheduler.running_mut(id).expect("sampled sequences are running");
            let token_event =
                |text: String| TokenEvent { token: s.token, text, logprob: s.logprob, top_logprobs: s.top.clone() };
            let exit = match seq.append(s.token, &tokenizer) {
                Appended::Continue(text) => match seq.events.send(Event::Token(token_event(text))) {
                    Ok(()) => continue,
                    Err(_) => Exit::Aborted, // the caller went away
                },
                Appended::Finished { reason, text, stop_token, stop_string } => {
                    let tail = if stop_token.is_none() {
                        let _ = seq.events.send(Event::Token(token_event(text)));
                        String::new()
                    } else {
                        text
                    };
                    let _ = seq.events.send(Event::Finished(Finished {
                        reason,
                        text: tail,
                        num_prompt_tokens: seq.num_prompt_tokens,
                        num_generated_tokens: seq.num_generated_tokens(),
                        num_cached_tokens: seq.num_cached_tokens,
                        stop_token: stop_token.map(|_| token_event(String::new())),
                        stop_string,
                    }));
                    Exit::Finished
                }
            };
            if let Some(seq) = self.scheduler.remove(id) {
                self.leave(&seq, exit);
            }
        }
        EngineStats::add(&self.stats.sample_ns, sample_ns);
        EngineStats::add(&self.stats.postprocess_ns, t0.elapsed().as_nanos() as u64 - sample_ns);
    }

    /// Each sampling sequence's token, in parallel on the pool: every sequence has its own
    /// sampler and RNG, so the result does not depend on the split. A panic while sampling
    /// one sequence (a grammar bug, say) fails that sequence only.
    fn sample(&mut self, batch: &ScheduledBatch, logits: &[f32]) -> HashMap<SeqId, Result<Sampled, EngineError>> {
        let vocab = self.model.decoder.config.vocab_size;
        let row_of: HashMap<SeqId, usize> =
            batch.items.iter().filter(|i| i.sample).enumerate().map(|(k, i)| (i.seq_id, k)).collect();
        type Cell<'a> = (&'a mut Sequence, usize, Option<Result<Sampled, EngineError>>);
        // One cell per sequence: the pool hands each index to one thread, so the locks are
        // never contended; they only make the disjoint `&mut` access safe to express.
        let cells: Vec<Mutex<Cell>> = self
            .scheduler
            .running
            .iter_mut()
            .filter_map(|seq| row_of.get(&seq.id).map(|&k| Mutex::new((seq, k, None))))
            .collect();
        Pool::global().run(cells.len(), &|range| {
            for i in range {
                let mut cell = cells[i].lock().unwrap_or_else(|e| e.into_inner());
                let (seq, k, _) = &mut *cell;
                let row = &logits[*k * vocab..(*k + 1) * vocab];
                let out = std::panic::catch_unwind(AssertUnwindSafe(|| seq.sample(row)))
                    .unwrap_or_else(|p| Err(EngineError::Internal(format!("sampling failed: {}", panic_message(&*p)))));
                cell.2 = Some(out);
            }
        });
        cells
            .into_iter()
            .map(|c| c.into_inner().unwrap_or_else(|e| e.into_inner()))
            .map(|(seq, _, out)| (seq.id, out.expect("every cell is sampled")))
            .collect()
    }
}
