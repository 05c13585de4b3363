//! slm's inference engine: small language models from GGUF files on the CPU.
//!
//! Data flow, from a prompt to a token:
//!
//! ```text
//!  text ─ tokenizer ─▶ ids ─▶ BatchInput (rows of several sequences, positions, KV slots)
//!        ─▶ models::Decoder::forward ─ layers (QLinear matmuls, paged attention over KvCache)
//!        ─▶ logits ─▶ sampling::Sampler ─▶ token ─▶ tokenizer::Detokenizer ─▶ text
//! ```
//!
//! `Model` bundles what one GGUF holds (network, tokenizer, chat template). Serving goes through
//! `EngineHandle::submit` → a `Sequence` on the engine thread → `Scheduler` (token budget,
//! `BlockManager` with prefix cache) → `ModelRunner` (one batched forward per step) → sampling
//! and stop checks → `Event`s on the request's `RequestStream`. `generate::Generator` drives a
//! single sequence directly (CLI, parity tests). No HTTP types live here.

pub mod advance;
pub mod batch;
pub mod block_manager;
pub mod chat_template;
pub mod config;
pub mod embedding;
pub mod engine;
pub mod engine_core;
pub mod error;
pub mod fault;
pub mod gbnf;
pub mod generate;
pub mod gguf_info;
pub mod grammar;
pub mod kv_cache;
pub mod kv_quant;
pub mod layers;
pub mod loader;
pub mod lora;
pub mod lora_writer;
pub mod model;
pub mod model_runner;
pub mod models;
pub mod pack_cache;
pub mod profile;
pub mod prompt_logprobs;
pub mod reasoning_markers;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod speculative;
pub mod stats;
pub mod stop;
pub mod tokenizer;

pub use config::EngineConfig;
pub use embedding::{is_embedding_gguf, EmbedderHandle, EmbeddingModel};
pub use engine::{EngineHandle, RequestStream};
pub use error::{EngineError, Result};
pub use gguf_info::GgufInfo;
pub use grammar::{Constraint, ConstraintSpec, Grammar};
pub use lora::{LoraAdapter, LoraSet};
pub use model::Model;
pub use models::bert::Pooling;
pub use prompt_logprobs::{prompt_logprobs, PromptLogprob};
pub use request::{Event, FinishReason, Finished, PromptProgress, Request, TokenEvent};
pub use sampling::{Sampled, SamplingParams};
pub use stats::StatsSnapshot;
pub use tokenizer::{Detokenizer, Tokenizer};
