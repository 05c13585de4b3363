//! Single-sequence generation in the caller's thread: the path the CLI's `generate` and the
//! parity tests use. It steps an `EngineCore` of its own (no engine thread, no prefix cache),
//! so a sequence is scheduled, sampled, detokenized and stopped exactly as the server does it.

use std::sync::Arc;

use tokio::sync::mpsc::unbounded_channel;

use crate::config::EngineConfig;
use crate::engine_core::EngineCore;
use crate::error::{EngineError, Result};
use crate::lora::LoraSet;
use crate::model::Model;
use crate::request::{Event, FinishReason, Request};
use crate::sampling::{Sampled, SamplingParams};
use crate::sequence::Sequence;
use crate::stats::EngineStats;

pub const BLOCK_SIZE: usize = 16;

#[derive(Debug, Clone)]
pub struct Generation {
    /// Every generated token, the one that stopped the sequence included.
    pub tokens: Vec<Sampled>,
    pub finish_reason: FinishReason,
}

pub struct Generator {
    core: EngineCore,
    stats: Arc<EngineStats>,
    capacity: usize,
    lora: Option<Arc<LoraSet>>,
}

impl Generator {
    /// A generator whose cache holds `max_tokens_in_cache` tokens.
    pub fn new(model: &Arc<Model>, max_tokens_in_cache: usize) -> Self {
        let num_blocks = max_tokens_in_cache.div_ceil(BLOCK_SIZE).max(1);
        let config = EngineConfig {
            block_size: BLOCK_SIZE,
            prefix_caching: false,
            max_seqs: 1,
            max_batched_tokens: max_tokens_in_cache.max(1),
            ..EngineConfig::default()
        };
        let stats = Arc::new(EngineStats::default());
        let core = EngineCore::new(model.clone(), None, &config, num_blocks, stats.clone());
        Self { core, stats, capacity: num_blocks * BLOCK_SIZE, lora: None }
    }

    /// Generates with these LoRA adapters from now on.
    pub fn with_lora(mut self, lora: Option<Arc<LoraSet>>) -> Self {
        self.lora = lora;
        self
    }

    /// Runs the prompt, then samples up to `max_tokens` tokens; `on_token` sees each one and
    /// may stop early by returning false. Stops as the engine does (end of generation).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: SamplingParams,
        max_tokens: usize,
        mut on_token: impl FnMut(&Sampled) -> bool,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if max_tokens == 0 {
            return Err(EngineError::InvalidRequest("`max_tokens` must be at least 1".into()));
        }
        let total = prompt.len() + max_tokens;
        if total > self.capacity {
            return Err(EngineError::KvCacheTooSmall { needed: total, capacity: self.capacity });
        }
        let (tx, mut rx) = unbounded_channel();
        // Queued as `EngineHandle::submit` queues it: admission takes it off the count.
        self.stats.num_unadmitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut req = Request::new(prompt.to_vec(), params, max_tokens);
        req.lora = self.lora.clone();
        self.core.add(Sequence::new(0, req, tx));
        let mut tokens = Vec::new();
        loop {
            self.core.step();
            while let Ok(event) = rx.try_recv() {
                match event {
                    Event::Progress(_) => {}
                    Event::Token(t) => {
                        let s = Sampled { token: t.token, logprob: t.logprob, top: t.top_logprobs };
                        let go_on = on_token(&s);
                        tokens.push(s);
                        if !go_on {
                            self.core.abort(0);
                            return Ok(Generation { tokens, finish_reason: FinishReason::Stop });
                        }
                    }
                    Event::Finished(f) => {
                        if let Some(t) = f.stop_token {
                            let s = Sampled { token: t.token, logprob: t.logprob, top: t.top_logprobs };
                            on_token(&s);
                            tokens.push(s);
                        }
                        return Ok(Generation { tokens, finish_reason: f.reason });
                    }
                    Event::Error(e) => return Err(e),
                }
            }
            if self.core.is_idle() {
                return Err(EngineError::Internal("the sequence left the engine without finishing".into()));
            }
        }
    }
}
