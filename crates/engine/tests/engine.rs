//! The batched engine on the real default model: batch invariance under every scheduling
//! variation, preemption, abort, prefix reuse and request validation.

mod common;

use common::*;
use slm_engine::{EngineConfig, EngineError, EngineHandle, Event, FinishReason, Request, SamplingParams};

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    /// Bits of each token's logprob and of its top-5 logprobs: any change in the logits shows.
    logprob_bits: Vec<u32>,
    text: String,
    reason: FinishReason,
    cached: usize,
}

fn requests(tok: &slm_engine::Tokenizer) -> Vec<Request> {
    let shared = "You are a careful assistant. Answer in one short sentence. Question: ";
    let prompts = [
        format!("{shared}What is the capital of France?"),
        format!("{shared}Name a prime number."),
        "def quicksort(xs):\n".to_string(),
        "Once upon a time".to_string(),
        format!("{shared}Why is the sky blue?"),
        "1, 1, 2, 3, 5, 8,".to_string(),
        "Xin chào, tôi là".to_string(),
        "SELECT name FROM".to_string(),
    ];
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let params = if i % 2 == 0 {
                SamplingParams { top_logprobs: 5, ..SamplingParams::greedy() }
            } else {
                SamplingParams {
                    temperature: 0.9,
                    top_p: 0.95,
                    top_k: 40,
                    seed: Some(1000 + i as u64),
                    top_logprobs: 5,
                    ..Default::default()
                }
            };
            Request::new(tok.encode(p, true, false).unwrap(), params, 12)
        })
        .collect()
}

fn collect(mut s: slm_engine::RequestStream) -> Outcome {
    let mut o =
        Outcome { tokens: vec![], logprob_bits: vec![], text: String::new(), reason: FinishReason::Length, cached: 0 };
    while let Some(e) = s.blocking_next() {
        match e {
            Event::Token(t) => {
                o.tokens.push(t.token);
                o.logprob_bits.push(t.logprob.to_bits());
                o.logprob_bits.extend(t.top_logprobs.iter().map(|x| x.1.to_bits()));
                o.text.push_str(&t.text);
            }
            Event::Finished(f) => {
                o.text.push_str(&f.text);
                o.reason = f.reason;
                o.cached = f.num_cached_tokens;
                return o;
            }
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Progress(_) => {}
        }
    }
    panic!("stream ended without Finished")
}

fn engine(config: EngineConfig) -> EngineHandle {
    EngineHandle::start(model(QWEN), config).unwrap()
}

/// Submits all requests at once and collects them.
fn run_together(e: &EngineHandle, reqs: &[Request]) -> Vec<Outcome> {
    let streams: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    streams.into_iter().map(collect).collect()
}

fn without_cache_info(mut v: Vec<Outcome>) -> Vec<Outcome> {
    v.iter_mut().for_each(|o| o.cached = 0);
    v
}

#[test]
fn outputs_are_identical_alone_batched_chunked_cached_and_preempted() {
    let m = model(QWEN);
    let reqs = requests(&m.tokenizer);
    let no_cache = EngineConfig { prefix_caching: false, ..Default::default() };

    // Reference: each request alone, one at a time, no prefix cache.
    let e = engine(no_cache.clone());
    let alone: Vec<Outcome> = reqs.iter().map(|r| collect(e.submit(r.clone()).unwrap())).collect();
    assert!(alone.iter().all(|o| o.tokens.len() == 12 || o.reason == FinishReason::Stop));

    // All eight at once, big budget.
    assert_eq!(run_together(&e, &reqs), alone, "batched");
    // Small budget: prompts are chunked (7 tokens per step) and mixed with decodes.
    let e = engine(EngineConfig { max_batched_tokens: 7, ..no_cache.clone() });
    assert_eq!(run_together(&e, &reqs), alone, "chunked prefill");

    // Prefix cache: the second round hits the blocks the first round left behind.
    let e = engine(EngineConfig { block_size: 4, ..Default::default() });
    assert_eq!(without_cache_info(run_together(&e, &reqs)), alone, "first round with prefix caching");
    let again = run_together(&e, &reqs);
    for (o, r) in again.iter().zip(&reqs) {
        // Every full block but the one holding the last prompt token (it must run for logits).
        assert_eq!(o.cached, (r.prompt.len() - 1) / 4 * 4, "cached prefix of a {}-token prompt", r.prompt.len());
    }
    assert!(e.stats().prefix_cache_hit_tokens_total > 0);
    assert_eq!(without_cache_info(again), alone, "prefix-cache hits");

    // A pool too small for all eight at once: sequences are preempted and recomputed.
    let e = engine(EngineConfig { block_size: 4, num_kv_blocks: Some(40), ..Default::default() });
    assert_eq!(without_cache_info(run_together(&e, &reqs)), alone, "under preemption");
    assert!(e.stats().preemptions_total > 0, "the tiny pool should force preemption");
    wait_for(|| e.stats().kv_blocks_used == 0);
}

#[test]
fn dropping_a_stream_aborts_and_frees_its_blocks() {
    let e = engine(EngineConfig { prefix_caching: false, ..Default::default() });
    let m = model(QWEN);
    let mut s = e
        .submit(Request::new(
            m.tokenizer.encode("Count to one hundred:", true, false).unwrap(),
            SamplingParams::greedy(),
            200,
        ))
        .unwrap();
    assert!(matches!(s.blocking_next(), Some(Event::Token(_))));
    assert!(e.stats().kv_blocks_used > 0);
    drop(s);
    wait_for(|| e.stats().kv_blocks_used == 0 && e.stats().num_running == 0);
    assert_eq!(e.stats().requests_aborted_total, 1);
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let e = engine(EngineConfig::default());
    let m = model(QWEN);
    let mut r = Request::new(m.tokenizer.encode("1, 2, 3, 4, 5,", true, false).unwrap(), SamplingParams::greedy(), 30);
    r.stop_strings = vec![" 8".into()];
    let o = collect(e.submit(r).unwrap());
    assert_eq!(o.reason, FinishReason::Stop);
    assert_eq!(o.text, " 6, 7,");
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let e =
        engine(EngineConfig { max_model_len: Some(64), num_kv_blocks: Some(8), block_size: 4, ..Default::default() });
    let err = |r| e.submit(r).err().expect("refused");
    assert!(matches!(err(Request::new(vec![], SamplingParams::greedy(), 4)), EngineError::InvalidRequest(_)));
    assert!(matches!(err(Request::new(vec![1, 2], SamplingParams::greedy(), 0)), EngineError::InvalidRequest(_)));
    assert!(matches!(err(Request::new(vec![u32::MAX], SamplingParams::greedy(), 4)), EngineError::InvalidRequest(_)));
    match err(Request::new(vec![1; 60], SamplingParams::greedy(), 10)) {
        EngineError::ContextLengthExceeded { max: 64, needed: 70, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(err(Request::new(vec![1; 40], SamplingParams::greedy(), 4)), EngineError::KvCacheTooSmall { .. }));
    // The engine still serves.
    let o = collect(e.submit(Request::new(vec![9707, 11], SamplingParams::greedy(), 3)).unwrap());
    assert_eq!(o.tokens.len(), 3);
    wait_for(|| e.stats().kv_blocks_used == 0);
}

#[test]
fn the_queue_count_is_exact_when_queued_requests_are_cancelled() {
    // One sequence at a time: the busy one keeps the others queued.
    let e = engine(EngineConfig { max_seqs: 1, max_waiting: 4, ..Default::default() });
    let m = model(QWEN);
    let prompt = m.tokenizer.encode("Count to one hundred:", true, false).unwrap();
    let mut busy = e.submit(Request::new(prompt.clone(), SamplingParams::greedy(), 200)).unwrap();
    assert!(matches!(busy.blocking_next(), Some(Event::Token(_))));
    let submit = || e.submit(Request::new(prompt.clone(), SamplingParams::greedy(), 4));
    for _ in 0..3 {
        let queued: Vec<_> = (0..4).map(|_| submit().expect("room in the queue")).collect();
        assert!(matches!(submit(), Err(EngineError::QueueFull(4))));
        // Dropped while queued: the count falls at once, not when the engine next looks.
        drop(queued);
        assert_eq!(e.stats().num_unadmitted, 0);
    }
    drop(busy);
    wait_for(|| e.stats().kv_blocks_used == 0 && e.stats().num_running == 0 && e.stats().num_waiting == 0);
    assert_eq!(e.stats().num_unadmitted, 0);
}
