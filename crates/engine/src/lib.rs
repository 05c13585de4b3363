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
//! `Model` bundles what one GGUF holds (network, tokenizer, chat template); `BlockManager`
//! hands out KV blocks; `generate::Generator` drives one sequence. No HTTP types live here.

pub mod batch;
pub mod block_manager;
pub mod chat_template;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod layers;
pub mod loader;
pub mod model;
pub mod models;
pub mod sampling;
pub mod tokenizer;

pub use error::{EngineError, Result};
pub use model::Model;
pub use sampling::{Sampled, SamplingParams};
pub use tokenizer::{Detokenizer, Tokenizer};
