//! Counters the engine thread updates and anyone may read (metrics, benchmarks): queue sizes,
//! KV-cache use, token totals, and where step time goes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Which LoRA adapters the running and the waiting sequences use (names, sorted, each once):
/// what vLLM's `lora_requests_info` gauge reports and the Inference Extension routes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraUsage {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
}

#[derive(Debug, Default)]
pub struct EngineStats {
    pub num_running: AtomicU64,
    pub num_waiting: AtomicU64,
    /// Submitted but not yet admitted (or removed) by the engine: the queue limit counts these.
    pub num_unadmitted: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prefix_cache_hit_tokens_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generated_tokens_total: AtomicU64,
    /// Drafted tokens verified (speculative decoding), and how many were accepted.
    pub spec_draft_tokens_total: AtomicU64,
    pub spec_accepted_tokens_total: AtomicU64,
    /// Drafts verified (one per sequence and step that had one).
    pub spec_drafts_total: AtomicU64,
    /// The part of those two the draft model drafted (the rest came from prompt lookup).
    pub spec_model_draft_tokens_total: AtomicU64,
    pub spec_model_accepted_tokens_total: AtomicU64,
    /// KV blocks the draft model's own cache holds.
    pub draft_kv_blocks_used: AtomicU64,
    pub preemptions_total: AtomicU64,
    pub steps_total: AtomicU64,
    /// Sum of rows over all steps (mean batch size = this / steps_total).
    pub step_tokens_total: AtomicU64,
    pub step_seqs_total: AtomicU64,
    /// The most rows one step has run.
    pub step_tokens_max: AtomicU64,
    pub requests_finished_total: AtomicU64,
    pub requests_aborted_total: AtomicU64,
    pub requests_failed_total: AtomicU64,
    /// Nanoseconds spent scheduling, in the model forward, sampling, and postprocessing.
    pub schedule_ns: AtomicU64,
    pub forward_ns: AtomicU64,
    pub sample_ns: AtomicU64,
    pub postprocess_ns: AtomicU64,
    pub lora_usage: Mutex<LoraUsage>,
}

/// A plain copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub num_running: u64,
    pub num_waiting: u64,
    pub num_unadmitted: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    pub prefix_cache_hit_tokens_total: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub spec_draft_tokens_total: u64,
    pub spec_accepted_tokens_total: u64,
    pub spec_drafts_total: u64,
    pub spec_model_draft_tokens_total: u64,
    pub spec_model_accepted_tokens_total: u64,
    pub draft_kv_blocks_used: u64,
    pub preemptions_total: u64,
    pub steps_total: u64,
    pub step_tokens_total: u64,
    pub step_seqs_total: u64,
    pub step_tokens_max: u64,
    pub requests_finished_total: u64,
    pub requests_aborted_total: u64,
    pub requests_failed_total: u64,
    pub schedule_ns: u64,
    pub forward_ns: u64,
    pub sample_ns: u64,
    pub postprocess_ns: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            num_running: self.num_running.load(Relaxed),
            num_waiting: self.num_waiting.load(Relaxed),
            num_unadmitted: self.num_unadmitted.load(Relaxed),
            kv_blocks_used: self.kv_blocks_used.load(Relaxed),
            kv_blocks_total: self.kv_blocks_total.load(Relaxed),
            prefix_cache_hit_tokens_total: self.prefix_cache_hit_tokens_total.load(Relaxed),
            prompt_tokens_total: self.prompt_tokens_total.load(Relaxed),
            generated_tokens_total: self.generated_tokens_total.load(Relaxed),
            spec_draft_tokens_total: self.spec_draft_tokens_total.load(Relaxed),
            spec_accepted_tokens_total: self.spec_accepted_tokens_total.load(Relaxed),
            spec_drafts_total: self.spec_drafts_total.load(Relaxed),
            spec_model_draft_tokens_total: self.spec_model_draft_tokens_total.load(Relaxed),
            spec_model_accepted_tokens_total: self.spec_model_accepted_tokens_total.load(Relaxed),
            draft_kv_blocks_used: self.draft_kv_blocks_used.load(Relaxed),
            preemptions_total: self.preemptions_total.load(Relaxed),
            steps_total: self.steps_total.load(Relaxed),
            step_tokens_total: self.step_tokens_total.load(Relaxed),
            step_seqs_total: self.step_seqs_total.load(Relaxed),
            step_tokens_max: self.step_tokens_max.load(Relaxed),
            requests_finished_total: self.requests_finished_total.load(Relaxed),
            requests_aborted_total: self.requests_aborted_total.load(Relaxed),
            requests_failed_total: self.requests_failed_total.load(Relaxed),
            schedule_ns: self.schedule_ns.load(Relaxed),
            forward_ns: self.forward_ns.load(Relaxed),
            sample_ns: self.sample_ns.load(Relaxed),
            postprocess_ns: self.postprocess_ns.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Relaxed);
    }
}
