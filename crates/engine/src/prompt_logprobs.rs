//! Log-probabilities of a prompt's own tokens, for legacy completions with `echo` and
//! `logprobs` (how evaluation harnesses such as lm-evaluation-harness score log-likelihood,
//! usually with `max_tokens: 0`). One forward over the prompt with logits at every position,
//! on a KV cache of its own, outside the scheduler (the worker pool interleaves it with the
//! engine's steps). The logits are the decoder's, row by row, so entry `i` is the same number
//! the engine would report had it sampled token `i + 1` there.

use crate::batch::BatchInput;
use crate::model::Model;
use crate::sampling::raw_logprobs;

const BLOCK_SIZE: usize = 16;
/// Prompt rows per forward.
const CHUNK: usize = 64;

/// Token `i + 1`'s log-probability given tokens `0..=i`, and the `top` most likely tokens at
/// that position (most likely first).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// `tokens.len() - 1` entries (the first token has no logprob), under `lora`'s adapters if
/// any. `tokens` must fit the model's context (the caller checks).
pub fn prompt_logprobs(
    model: &Model,
    tokens: &[u32],
    top: usize,
    lora: Option<&std::sync::Arc<crate::lora::LoraSet>>,
) -> Vec<PromptLogprob> {
    if tokens.len() < 2 {
        return Vec::new();
    }
    let num_blocks = tokens.len().div_ceil(BLOCK_SIZE);
    let mut kv = model.new_kv_cache(num_blocks, BLOCK_SIZE);
    let table: Vec<u32> = (0..num_blocks as u32).collect();
    let vocab = model.decoder.config.vocab_size;
    let mut out = Vec::with_capacity(tokens.len() - 1);
    // In chunks, as chunked prefill: a chunk's logits are `CHUNK × vocab` floats, not the
    // whole prompt's (batch invariance makes the chunking invisible in the numbers).
    for start in (0..tokens.len() - 1).step_by(CHUNK) {
        let end = (start + CHUNK).min(tokens.len() - 1);
        let mut batch = BatchInput::default();
        batch.push_seq(&tokens[start..end], start, &table, BLOCK_SIZE, false);
        batch.set_last_lora(lora.cloned());
        batch.logits_rows = (0..end - start).collect();
        let logits = model.decoder.forward(&batch, &mut kv);
        for (l, &token) in logits.chunks_exact(vocab).zip(&tokens[start + 1..end + 1]) {
            let (logprob_of, top) = raw_logprobs(l, top);
            out.push(PromptLogprob { token, logprob: logprob_of(token), top });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::generate::Generator;
    use crate::sampling::SamplingParams;

    fn qwen() -> Arc<Model> {
        let home = std::env::var_os("SLM_HOME").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/slm")
        });
        let p = home.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
        Arc::new(Model::load(p).unwrap())
    }

    #[test]
    fn prompt_logprobs_equal_what_generation_reports() {
        let model = qwen();
        // A prompt longer than one chunk, then the generator's greedy continuation of it.
        let prompt =
            model.tokenizer.encode(&"The quick brown fox jumps over the lazy dog. ".repeat(12), true, false).unwrap();
        assert!(prompt.len() > CHUNK);
        let params = SamplingParams { logprobs: true, top_logprobs: 3, ..SamplingParams::greedy() };
        let generated = Generator::new(&model, 1024).generate(&prompt, params, 3, |_| true).unwrap().tokens;
        let mut all = prompt.clone();
        all.extend(generated.iter().map(|s| s.token));
        let lps = prompt_logprobs(&model, &all, 3, None);
        assert_eq!(lps.len(), all.len() - 1);
        for (g, lp) in generated.iter().zip(&lps[prompt.len() - 1..]) {
            assert_eq!((lp.token, lp.logprob, &lp.top), (g.token, g.logprob, &g.top), "bit-identical to decoding");
        }
        assert!(lps.iter().all(|l| l.logprob <= 0.0 && l.top.len() == 3));
    }
}
