//! The engine: a loop on its own OS thread (tensor work never runs on the caller's async
//! workers) that takes requests, then steps — schedule, run, postprocess — until idle.
//! Callers hold an `EngineHandle` (cheap to clone) and get a `RequestStream` per request;
//! dropping the stream aborts the request and frees its KV blocks at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::config::EngineConfig;
use crate::engine_core::EngineCore;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::request::{Event, Request};
use crate::sequence::{QueueState, SeqId, Sequence};
use crate::speculative::draft_model::DraftModel;
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
    /// Also counts requests submitted but not yet admitted (`num_unadmitted`): the queue limit.
    stats: Arc<EngineStats>,
}

#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    commands: Sender<Command>,
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Self> {
        Self::start_with_draft(model, None, config)
    }

    /// Starts the engine thread for `model`, with `draft` (a smaller model of the same
    /// vocabulary) as a speculative drafter; its KV cache holds as many tokens as the
    /// target's.
    pub fn start_with_draft(model: Arc<Model>, draft: Option<Arc<Model>>, config: EngineConfig) -> Result<Self> {
        config.validate()?;
        // Both models' caches use the configured element type.
        let check_kv = |m: &Model, whose: &str| {
            let head_dim = m.decoder.config.head_dim;
            if config.kv_dtype.supports(head_dim, config.block_size) {
                return Ok(());
            }
            Err(EngineError::InvalidConfig(format!(
                "kv_cache_dtype {:?} needs a head dimension that is a multiple of 32 and a block size of at most {} (for q4_0, an even one); {whose} head dimension is {head_dim}, the block size {}",
                config.kv_dtype, crate::kv_quant::MAX_BLOCK_SLOTS, config.block_size
            )))
        };
        check_kv(&model, "this model's")?;
        let num_blocks = config.num_blocks(model.kv_bytes_per_block(config.block_size, config.kv_dtype));
        let max_model_len = config.max_model_len.unwrap_or(usize::MAX).min(model.context_length());
        let draft = match draft {
            Some(d) => {
                check_kv(&d, "the draft model's")?;
                let (bs, dtype) = (config.block_size, config.kv_dtype);
                Some(DraftModel::new(&model, d, num_blocks, bs, dtype, &config.speculative)?)
            }
            None => None,
        };
        let stats = Arc::new(EngineStats::default());
        let shared = Arc::new(Shared {
            model: model.clone(),
            config: config.clone(),
            num_blocks,
            max_model_len,
            next_id: AtomicU64::new(1),
            stats: stats.clone(),
        });
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("slm-engine".into())
            // Grammar masks are computed on this thread and the pool's; llguidance recurses
            // with a grammar's nesting depth (the pool's threads get the same stack).
            .stack_size(crate::layers::pool::THREAD_STACK_BYTES)
            .spawn(move || {
                EngineLoop { commands: rx, core: EngineCore::new(model, draft, &config, num_blocks, stats) }.run()
            })
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

    /// The adapters the running and waiting sequences use now.
    pub fn lora_usage(&self) -> crate::stats::LoraUsage {
        self.shared.stats.lora_usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks a request and queues it. Errors name what is wrong; nothing is queued then.
    pub fn submit(&self, mut req: Request) -> Result<RequestStream> {
        let s = &self.shared;
        req.params.seed = req.params.seed.or(s.config.default_seed);
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
        let needed = req.prompt.len().saturating_add(req.max_tokens);
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
        // Counted and checked in one atomic step, so concurrent submits never overshoot.
        let limit = s.config.max_waiting as u64;
        let unadmitted = &s.stats.num_unadmitted;
        if unadmitted.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_err() {
            return Err(EngineError::QueueFull(s.config.max_waiting));
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        let seq = Sequence::new(id, req, tx);
        let queue_state = seq.queue_state.clone();
        if self.commands.send(Command::Add(Box::new(seq))).is_err() {
            queue_state.leave(unadmitted);
            return Err(EngineError::Shutdown);
        }
        Ok(RequestStream {
            id,
            events: rx,
            commands: self.commands.clone(),
            done: false,
            queue_state,
            stats: s.stats.clone(),
        })
    }
}

/// The events of one request. Dropping it before `Finished` aborts the request; one still
/// queued leaves the queue count at once, not when the engine thread next looks.
pub struct RequestStream {
    id: SeqId,
    events: UnboundedReceiver<Event>,
    commands: Sender<Command>,
    done: bool,
    queue_state: Arc<QueueState>,
    stats: Arc<EngineStats>,
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
            self.queue_state.leave(&self.stats.num_unadmitted);
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

/// The engine thread: commands between steps, steps while there is work.
struct EngineLoop {
    commands: Receiver<Command>,
    core: EngineCore,
}

impl EngineLoop {
    fn run(mut self) {
        loop {
            if self.core.is_idle() {
                match self.commands.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return, // every handle and stream is gone
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.core.is_idle() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            if !self.core.is_idle() {
                self.core.step();
            }
            self.core.update_gauges();
        }
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Add(seq) => self.core.add(*seq),
            Command::Abort(id) => {
                self.core.abort(id);
            }
        }
    }
}
