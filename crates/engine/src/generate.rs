//! Single-sequence generation straight on a model and its own small KV cache: the path the
//! CLI's `generate` and the parity tests use. The server goes through the batched engine.

use crate::batch::BatchInput;
use crate::block_manager::BlockManager;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::request::FinishReason;
use crate::sampling::{Sampled, Sampler, SamplingParams};

pub const BLOCK_SIZE: usize = 16;

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<Sampled>,
    pub finish_reason: FinishReason,
}

pub struct Generator<'m> {
    model: &'m Model,
    kv: KvCache,
    blocks: BlockManager,
}

impl<'m> Generator<'m> {
    /// A generator whose cache holds `max_tokens_in_cache` tokens.
    pub fn new(model: &'m Model, max_tokens_in_cache: usize) -> Self {
        let num_blocks = max_tokens_in_cache.div_ceil(BLOCK_SIZE);
        Self {
            model,
            kv: model.new_kv_cache(num_blocks, BLOCK_SIZE),
            blocks: BlockManager::with_prefix_caching(num_blocks, BLOCK_SIZE, false),
        }
    }

    /// Runs the prompt, then samples up to `max_tokens` tokens; `on_token` sees each one and
    /// may stop early by returning false. Stops at the tokenizer's end-of-generation tokens.
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
        let total = prompt.len() + max_tokens;
        if !self.blocks.can_allocate(prompt, total) {
            return Err(EngineError::KvCacheTooSmall {
                needed: total,
                capacity: self.blocks.num_blocks() * BLOCK_SIZE,
            });
        }
        let (table, _) = self.blocks.allocate(prompt, total);
        let result = self.run(prompt, &table, params, max_tokens, &mut on_token);
        self.blocks.free(&table);
        result
    }

    fn run(
        &mut self,
        prompt: &[u32],
        table: &[u32],
        params: SamplingParams,
        max_tokens: usize,
        on_token: &mut dyn FnMut(&Sampled) -> bool,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(params);
        let mut context = prompt.to_vec();
        let mut b = BatchInput::default();
        b.push_seq(prompt, 0, table, BLOCK_SIZE, true);
        let mut logits = self.model.decoder.forward(&b, &mut self.kv);
        let mut out = Vec::new();
        while out.len() < max_tokens {
            let s = sampler.sample(&logits, &context);
            sampler.accept(s.token);
            let eog = self.model.tokenizer.is_end_of_generation(s.token);
            let go_on = on_token(&s);
            context.push(s.token);
            out.push(s);
            if eog || !go_on {
                return Ok(Generation { tokens: out, finish_reason: FinishReason::Stop });
            }
            if out.len() == max_tokens {
                break;
            }
            let mut b = BatchInput::default();
            b.push_seq(&[*context.last().unwrap()], context.len() - 1, table, BLOCK_SIZE, true);
            logits = self.model.decoder.forward(&b, &mut self.kv);
        }
        Ok(Generation { tokens: out, finish_reason: FinishReason::Length })
    }

    /// Logits of the last prompt position (for parity checks).
    pub fn prompt_logits(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        if !self.blocks.can_allocate(prompt, prompt.len()) {
            return Err(EngineError::KvCacheTooSmall {
                needed: prompt.len(),
                capacity: self.blocks.num_blocks() * BLOCK_SIZE,
            });
        }
        let (table, _) = self.blocks.allocate(prompt, prompt.len());
        let mut b = BatchInput::default();
        b.push_seq(prompt, 0, &table, BLOCK_SIZE, true);
        let logits = self.model.decoder.forward(&b, &mut self.kv);
        self.blocks.free(&table);
        Ok(logits)
    }
}
