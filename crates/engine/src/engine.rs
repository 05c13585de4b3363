//! The engine: a loop on its own OS thread (tensor work never runs on the caller's async
//! workers) that takes requests, then steps — schedule, run, postprocess — until idle.
//! Callers hold an `EngineHandle` (cheap to clone) and get a `RequestStream` per request;
//! dropping the stream aborts the request and frees its KV blocks at once.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::block_manager::BlockManager;
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::model_runner::ModelRunner;
use crate::request::{Event, Finished, Request, TokenEvent};
use crate::scheduler::Scheduler;
use crate::sequence::{Appended, SeqId, Sequence};
use crate::stats::{EngineStats, StatsSnapshot};

enum Command {
    Add(Box<Sequence>),
    Abort(SeqId),
}

struct Shared {
    model: Arc<Model>,
    config: EngineConfig,
    num_blocks: usize,
    max_model_len: usize,
    next_id: AtomicU64,
    /// Submitted but not yet admitted (or removed) by the engine: the queue limit counts these.
    num_unadmitted: AtomicU64,
    stats: EngineStats,
}

#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    commands: Sender<Command>,
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Self> {
        config.validate()?;
        let num_blocks = config.num_blocks(model.kv_bytes_per_block(config.block_size, config.kv_dtype));
        let max_model_len = config.max_model_len.unwrap_or(usize::MAX).min(model.context_length());
        let shared = Arc::new(Shared {
            model,
            config,
            num_blocks,
            max_model_len,
            next_id: AtomicU64::new(1),
            num_unadmitted: AtomicU64::new(0),
            stats: EngineStats::default(),
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("slm-engine".into())
            .spawn(move || EngineLoop::new(s, rx).run())
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { shared, commands: tx })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.shared.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Longest sequence (prompt + generated) a request may reach.
    pub fn max_model_len(&self) -> usize {
        self.shared.max_model_len
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Checks a request and queues it. Errors name what is wrong; nothing is queued then.
    pub fn submit(&self, req: Request) -> Result<RequestStream> {
        let s = &self.shared;
        if req.prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if req.max_tokens == 0 {
            return Err(EngineError::InvalidRequest("`max_tokens` must be at least 1".into()));
        }
        let vocab = s.model.decoder.config.vocab_size;
        if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!("token id {t} is out of range (vocabulary size {vocab})")));
        }
        let needed = req.prompt.len() + req.max_tokens;
        if needed > s.max_model_len {
            return Err(EngineError::ContextLengthExceeded {
                max: s.max_model_len,
                needed,
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
            });
        }
        let capacity = s.num_blocks * s.config.block_size;
        if req.prompt.len() + 1 > capacity {
            return Err(EngineError::KvCacheTooSmall { needed: req.prompt.len() + 1, capacity });
        }
        if s.num_unadmitted.load(Ordering::Relaxed) >= s.config.max_waiting as u64 {
            return Err(EngineError::QueueFull(s.config.max_waiting));
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        let constraint = req.constraint.as_ref().map(|c| s.model.grammar.compile(c)).transpose()?;
        let mut seq = Sequence::new(id, req, tx);
        seq.constraint = constraint;
        s.num_unadmitted.fetch_add(1, Ordering::Relaxed);
        self.commands.send(Command::Add(Box::new(seq))).map_err(|_| EngineError::Shutdown)?;
        Ok(RequestStream { id, events: rx, commands: self.commands.clone(), done: false })
    }
}

/// The events of one request. Dropping it before `Finished` aborts the request.
pub struct RequestStream {
    id: SeqId,
    events: UnboundedReceiver<Event>,
    commands: Sender<Command>,
    done: bool,
}

impl RequestStream {
    pub fn id(&self) -> SeqId {
        self.id
    }

    pub async fn next(&mut self) -> Option<Event> {
        let e = self.events.recv().await;
        self.note(&e);
        e
    }

    /// For synchronous callers (CLI, benchmarks); must not be called inside an async task.
    pub fn blocking_next(&mut self) -> Option<Event> {
        let e = self.events.blocking_recv();
        self.note(&e);
        e
    }

    fn note(&mut self, e: &Option<Event>) {
        if matches!(e, None | Some(Event::Finished(_)) | Some(Event::Error(_))) {
            self.done = true;
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

struct EngineLoop {
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    scheduler: Scheduler,
    runner: ModelRunner,
}

impl EngineLoop {
    fn new(shared: Arc<Shared>, commands: Receiver<Command>) -> Self {
        let c = &shared.config;
        let blocks = BlockManager::with_prefix_caching(shared.num_blocks, c.block_size, c.prefix_caching);
        let scheduler = Scheduler::new(blocks, c.max_batched_tokens, c.max_seqs);
        let runner = ModelRunner { kv: shared.model.new_kv_cache_of(shared.num_blocks, c.block_size, c.kv_dtype) };
        EngineStats::set(&shared.stats.kv_blocks_total, shared.num_blocks as u64);
        Self { shared, commands, scheduler, runner }
    }

    fn run(mut self) {
        loop {
            if self.scheduler.is_idle() {
                match self.commands.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return, // every handle and stream is gone
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.scheduler.is_idle() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            if !self.scheduler.is_idle() {
                self.step();
            }
            self.update_gauges();
        }
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Add(seq) => {
                EngineStats::add(&self.shared.stats.prompt_tokens_total, seq.num_prompt_tokens as u64);
                self.scheduler.add(*seq);
            }
            Command::Abort(id) => {
                if let Some(seq) = self.scheduler.remove(id) {
                    self.forget(&seq);
                    EngineStats::add(&self.shared.stats.requests_aborted_total, 1);
                }
            }
        }
    }

    /// Bookkeeping for a sequence leaving the engine.
    fn forget(&self, seq: &Sequence) {
        if !seq.was_admitted {
            self.shared.num_unadmitted.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn update_gauges(&self) {
        let st = &self.shared.stats;
        EngineStats::set(&st.num_running, self.scheduler.running.len() as u64);
        EngineStats::set(&st.num_waiting, self.scheduler.waiting.len() as u64);
        EngineStats::set(&st.kv_blocks_used, self.scheduler.blocks.num_used_blocks() as u64);
    }

    /// One engine step: schedule, run, postprocess.
    fn step(&mut self) {
        let st = &self.shared.stats;
        let t0 = Instant::now();
        let mut batch = self.scheduler.schedule();
        self.shared.num_unadmitted.fetch_sub(batch.num_newly_admitted as u64, Ordering::Relaxed);
        EngineStats::add(&st.prefix_cache_hit_tokens_total, batch.num_newly_cached_tokens as u64);
        EngineStats::add(&st.preemptions_total, batch.num_preempted as u64);
        // Gauges reflect this step before any of its tokens reach a caller.
        self.update_gauges();
        let st = &self.shared.stats;
        let t1 = Instant::now();
        EngineStats::add(&st.schedule_ns, (t1 - t0).as_nanos() as u64);
        let rejected = std::mem::take(&mut batch.rejected);
        for (seq, err) in rejected {
            self.forget(&seq);
            let _ = seq.events.send(Event::Error(err));
            EngineStats::add(&st.requests_failed_total, 1);
        }
        if batch.items.is_empty() {
            return;
        }
        EngineStats::add(&st.steps_total, 1);
        EngineStats::add(&st.step_tokens_total, batch.num_tokens as u64);
        EngineStats::add(&st.step_seqs_total, batch.items.len() as u64);

        let model = self.shared.model.clone();
        let run =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.runner.run(&model, &batch, &self.scheduler.running)));
        let t2 = Instant::now();
        EngineStats::add(&st.forward_ns, (t2 - t1).as_nanos() as u64);
        let logits = match run {
            Ok(l) => l,
            Err(panic) => {
                // A bug in a kernel must not take the server down: fail this step's requests
                // (their cache contents are suspect) and keep serving the others.
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!("model forward panicked: {msg}");
                let ids: Vec<SeqId> = batch.items.iter().map(|i| self.scheduler.running[i.seq].id).collect();
                for id in ids {
                    if let Some(seq) = self.scheduler.remove(id) {
                        let _ = seq
                            .events
                            .send(Event::Error(EngineError::Internal(format!("model forward failed: {msg}"))));
                        EngineStats::add(&st.requests_failed_total, 1);
                    }
                }
                return;
            }
        };
        self.scheduler.mark_computed(&batch);

        let vocab = model.decoder.config.vocab_size;
        // Sequences sample in parallel: each has its own sampler and RNG, so the result does
        // not depend on the split.
        let ts = Instant::now();
        let mut row_of = vec![None; self.scheduler.running.len()];
        for (k, item) in batch.items.iter().filter(|i| i.sample).enumerate() {
            row_of[item.seq] = Some(k);
        }
        let sampled: Vec<Option<crate::sampling::Sampled>> = self
            .scheduler
            .running
            .par_iter_mut()
            .zip(row_of.par_iter())
            .map(|(seq, row)| row.map(|k| seq.sample(&logits[k * vocab..(k + 1) * vocab])))
            .collect();
        let sample_ns = ts.elapsed().as_nanos();
        let mut done: Vec<(SeqId, bool)> = Vec::new();
        for item in batch.items.iter().filter(|i| i.sample) {
            let seq = &mut self.scheduler.running[item.seq];
            let s = sampled[item.seq].clone().expect("sampled above");
            EngineStats::add(&st.generated_tokens_total, 1);
            let token_event = |text: String| {
                Event::Token(TokenEvent { token: s.token, text, logprob: s.logprob, top_logprobs: s.top.clone() })
            };
            let sent = match seq.append(s.token, &model.tokenizer) {
                Appended::Continue(text) => seq.events.send(token_event(text)).is_ok(),
                Appended::Finished { reason, text, stop_token } => {
                    let tail = if stop_token.is_none() {
                        let _ = seq.events.send(token_event(text));
                        String::new()
                    } else {
                        text
                    };
                    let fin = Finished {
                        reason,
                        text: tail,
                        num_prompt_tokens: seq.num_prompt_tokens,
                        num_generated_tokens: seq.num_generated_tokens(),
                        num_cached_tokens: seq.num_cached_tokens,
                        stop_token,
                    };
                    let _ = seq.events.send(Event::Finished(fin));
                    done.push((seq.id, true));
                    continue;
                }
            };
            if !sent {
                done.push((seq.id, false)); // the caller went away
            }
        }
        for (id, finished) in done {
            if let Some(seq) = self.scheduler.remove(id) {
                self.forget(&seq);
            }
            let counter = if finished { &st.requests_finished_total } else { &st.requests_aborted_total };
            EngineStats::add(counter, 1);
        }
        EngineStats::add(&st.sample_ns, sample_ns as u64);
        EngineStats::add(&st.postprocess_ns, (t2.elapsed().as_nanos() - sample_ns) as u64);
    }
}
