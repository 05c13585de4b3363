//! `Sequence`: one request inside the engine — its tokens (prompt, then generated), how many of
//! them have K/V in the cache, its block table, sampler and stop conditions, the text released
//! so far, and the channel its events go to. The scheduler moves it between queues; the engine
//! appends tokens and decides when it is finished.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::block_manager::BlockTable;
use crate::error::EngineError;
use crate::grammar::Constraint;
use crate::lora::LoraSet;
use crate::request::{Event, FinishReason, Request};
use crate::sampling::{Sampled, Sampler};
use crate::speculative::SeqSpec;
use crate::stop::{OutputText, Pushed};
use crate::tokenizer::{Detokenizer, Tokenizer};

pub type SeqId = u64;

/// Where a request stands in the queue count (`EngineStats::num_unadmitted`), shared by its
/// `RequestStream` and its `Sequence`: it leaves the queue once — admitted, cancelled by its
/// caller, or refused — and whichever of those happens first takes it off the count, at once,
/// however the caller's thread and the engine thread race.
#[derive(Debug, Default)]
pub struct QueueState(std::sync::atomic::AtomicBool);

impl QueueState {
    /// Takes the request off the queue count if it is still on it.
    pub fn leave(&self, num_unadmitted: &std::sync::atomic::AtomicU64) {
        use std::sync::atomic::Ordering;
        if !self.0.swap(true, Ordering::AcqRel) {
            num_unadmitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
}

pub struct Sequence {
    pub id: SeqId,
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Send `Event::Progress` while the prompt is evaluated.
    pub report_progress: bool,
    /// `num_processed` of the last progress event sent: later ones only move forward (a
    /// preempted sequence recomputes its prompt without reporting it again).
    pub progress_sent: Option<usize>,
    /// Tokens whose K/V are in the cache (the rest still need a forward pass).
    pub num_computed_tokens: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub num_cached_tokens: usize,
    pub block_table: BlockTable,
    pub status: SeqStatus,
    pub sampler: Sampler,
    /// Constrained decoding: masks logits before sampling; a complete grammar ends the sequence.
    pub constraint: Option<Constraint>,
    pub max_tokens: usize,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    detok: Detokenizer,
    /// Generated text so far, what of it was released in events, and the stop strings.
    output: OutputText,
    pub events: UnboundedSender<Event>,
    /// Whether it was admitted once already (a preempted sequence keeps its cache-hit count).
    pub was_admitted: bool,
    pub queue_state: std::sync::Arc<QueueState>,
    /// Speculative decoding: whether the request allows it, its n-gram index and record.
    pub spec: SeqSpec,
    /// The request's LoRA adapters (None: the base model).
    pub lora: Option<Arc<LoraSet>>,
}

/// What appending a token decided.
pub enum Appended {
    /// Keep going; this text is now final.
    Continue(String),
    /// The sequence is done; the text is the final tail (stop string excluded).
    Finished { reason: FinishReason, text: String, stop_token: Option<u32>, stop_string: Option<String> },
}

/// The prefix-cache salt of a request: 0 (the shared cache) without a salt or adapters.
/// Blocks computed under LoRA adapters hold other keys and values than the base model's.
fn salt_of(cache_salt: Option<&str>, lora: Option<&LoraSet>) -> u64 {
    use std::hash::{Hash, Hasher};
    if cache_salt.is_none() && lora.is_none() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cache_salt.hash(&mut h);
    lora.map(|l| l.salt()).hash(&mut h);
    h.finish() | 1 // never 0: a salted request shares nothing with unsalted ones
}

impl Sequence {
    pub fn new(id: SeqId, req: Request, events: UnboundedSender<Event>) -> Self {
        Self {
            id,
            num_prompt_tokens: req.prompt.len(),
            report_progress: req.report_progress,
            progress_sent: None,
            tokens: req.prompt,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            block_table: BlockTable::with_salt(salt_of(req.cache_salt.as_deref(), req.lora.as_deref())),
            lora: req.lora,
            status: SeqStatus::Waiting,
            sampler: Sampler::new(req.params),
            constraint: req.constraint,
            max_tokens: req.max_tokens,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            detok: Detokenizer::new(),
            output: OutputText::new(req.stop_strings),
            events,
            was_admitted: false,
            queue_state: Default::default(),
            spec: SeqSpec::new(req.speculative),
        }
    }

    pub fn num_generated_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }

    /// Tokens that still need a forward pass.
    pub fn num_uncomputed_tokens(&self) -> usize {
        self.tokens.len() - self.num_computed_tokens
    }

    /// Samples the next token from this sequence's row of logits, within its grammar if any;
    /// an error when the grammar allows nothing more.
    pub fn sample(&mut self, logits: &[f32]) -> Result<Sampled, EngineError> {
        crate::fault::check(&self.tokens[..self.num_prompt_tokens]);
        let mask = match &mut self.constraint {
            Some(c) => c.mask()?,
            None => None,
        };
        Ok(match mask {
            Some(mask) => {
                let mut l = logits.to_vec();
                Constraint::apply(&mask, &mut l);
                self.sampler.sample(&l, &self.tokens)
            }
            None => self.sampler.sample(logits, &self.tokens),
        })
    }

    /// Appends a sampled token and applies the stop conditions.
    pub fn append(&mut self, token: u32, tok: &Tokenizer) -> Appended {
        self.tokens.push(token);
        self.sampler.accept(token);
        if (!self.ignore_eos && tok.is_end_of_generation(token)) || self.stop_token_ids.contains(&token) {
            return Appended::Finished {
                reason: FinishReason::Stop,
                text: self.take_all(),
                stop_token: Some(token),
                stop_string: None,
            };
        }
        let released = match self.output.push(&self.detok.push(tok, token)) {
            Pushed::Stopped(text, stop) => {
                return Appended::Finished {
                    reason: FinishReason::Stop,
                    text,
                    stop_token: None,
                    stop_string: Some(stop),
                }
            }
            Pushed::Released(text) => text,
        };
        if let Some(c) = &mut self.constraint {
            c.accept(token, self.output.text());
            if c.is_done() {
                let text = released + &self.take_all();
                return Appended::Finished { reason: FinishReason::Stop, text, stop_token: None, stop_string: None };
            }
        }
        if self.num_generated_tokens() >= self.max_tokens {
            let text = released + &self.take_all();
            return Appended::Finished { reason: FinishReason::Length, text, stop_token: None, stop_string: None };
        }
        Appended::Continue(released)
    }

    /// Everything not yet released, including bytes the detokenizer still holds: the end.
    fn take_all(&mut self) -> String {
        self.output.take_rest() + &self.detok.flush()
    }
}
