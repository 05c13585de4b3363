//! What callers hand the engine (`Request`) and what they get back (`Event`s on the request's
//! own channel): each token with its text and logprobs, then one `Finished`.

use crate::error::EngineError;
use crate::grammar::Constraint;
use crate::sampling::SamplingParams;

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Token ids that end the sequence (besides the model's end-of-generation tokens).
    pub stop_token_ids: Vec<u32>,
    /// Text that ends the sequence; it is not part of the output.
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Constrained decoding: the output must follow this grammar, compiled once
    /// (`Model::grammar`) and cloned for each choice.
    pub constraint: Option<Constraint>,
    /// Prefix-cache isolation (vLLM's `cache_salt`): only requests with the same salt share
    /// cached blocks, so one tenant cannot time another's prompts.
    pub cache_salt: Option<String>,
    /// Allow speculative decoding where the engine has it on (it never changes the output,
    /// only the speed; opting out is for measurements).
    pub speculative: bool,
    /// LoRA adapters to run with (None: the base model). Part of the prefix-cache key.
    pub lora: Option<std::sync::Arc<crate::lora::LoraSet>>,
    /// Send `Event::Progress` while the prompt is evaluated (llama.cpp's `return_progress`).
    pub report_progress: bool,
}

impl Request {
    pub fn new(prompt: Vec<u32>, params: SamplingParams, max_tokens: usize) -> Self {
        Self {
            prompt,
            params,
            max_tokens,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            constraint: None,
            cache_salt: None,
            speculative: true,
            lora: None,
            report_progress: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token, a stop token or a stop string.
    Stop,
    /// `max_tokens` (or the context length) reached.
    Length,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub token: u32,
    /// Text that became final with this token: complete UTF-8, and never the start of a
    /// stop string (held back until it cannot be one). May be empty.
    pub text: String,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text held back until the end, now final (stop string excluded).
    pub text: String,
    pub num_prompt_tokens: usize,
    pub num_generated_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// The stop token or end-of-generation token that ended the sequence, if any, with its
    /// logprobs (its text is empty). It counts in `num_generated_tokens` but is not sent as a
    /// `Token` event.
    pub stop_token: Option<TokenEvent>,
    /// The request's stop string that ended the sequence, if one did.
    pub stop_string: Option<String>,
}

/// How far a prompt's evaluation has got: sent (when the request asks) once when the
/// sequence is admitted (`num_processed == num_cached`) and after each prompt chunk, the
/// last (`num_processed == num_total`) before the first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptProgress {
    pub num_total: usize,
    /// Served from the prefix cache.
    pub num_cached: usize,
    /// Cached or computed so far.
    pub num_processed: usize,
}

#[derive(Debug)]
pub enum Event {
    Progress(PromptProgress),
    Token(TokenEvent),
    Finished(Finished),
    Error(EngineError),
}
