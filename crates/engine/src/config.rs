//! `EngineConfig`: the knobs of one engine (KV-cache size, batching limits), checked once.

use crate::error::{EngineError, Result};
pub use crate::kv_cache::KvDtype;
pub use crate::speculative::SpecConfig;

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV-cache size in MiB (used when `num_kv_blocks` is not set).
    pub kv_cache_mb: usize,
    /// Exact number of KV blocks, overriding `kv_cache_mb`.
    pub num_kv_blocks: Option<usize>,
    /// Element type of the KV cache (f16 unless set).
    pub kv_dtype: KvDtype,
    /// Token budget of one step (decode tokens plus prefill chunks).
    pub max_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_seqs: usize,
    /// Longest sequence (prompt + generated); defaults to the model's context length.
    pub max_model_len: Option<usize>,
    pub prefix_caching: bool,
    /// Most requests waiting for admission; more are refused (`QueueFull`).
    pub max_waiting: usize,
    /// Speculative decoding (on by default; requests may opt out).
    pub speculative: SpecConfig,
    /// The seed of a request that sends none (llama.cpp's `--seed`): set, every request's
    /// sampling is reproducible; unset, such a request gets a random seed.
    pub default_seed: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_mb: 1024,
            num_kv_blocks: None,
            kv_dtype: KvDtype::F16,
            max_batched_tokens: 512,
            max_seqs: 32,
            max_model_len: None,
            prefix_caching: true,
            max_waiting: 256,
            speculative: SpecConfig::default(),
            default_seed: None,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::InvalidConfig(m.to_string()));
        if self.block_size == 0 {
            return bad("`block_size` must be at least 1");
        }
        if self.max_batched_tokens == 0 {
            return bad("`max_batched_tokens` must be at least 1");
        }
        if self.max_seqs == 0 {
            return bad("`max_seqs` must be at least 1");
        }
        if self.max_waiting == 0 {
            return bad("the queue limit must be at least 1: a queue of 0 could never admit a request");
        }
        if self.num_kv_blocks == Some(0) || (self.num_kv_blocks.is_none() && self.kv_cache_mb == 0) {
            return bad("the KV cache must hold at least one block");
        }
        if self.max_model_len == Some(0) {
            return bad("`max_model_len` must be at least 1");
        }
        Ok(())
    }

    /// Number of KV blocks for a model whose blocks take `bytes_per_block`.
    pub fn num_blocks(&self, bytes_per_block: usize) -> usize {
        self.num_kv_blocks.unwrap_or_else(|| ((self.kv_cache_mb << 20) / bytes_per_block.max(1)).max(1))
    }
}
