//! Speculative decoding on the real default model: the output (tokens and the bits of every
//! logprob) is identical with speculation on and off, greedy and seeded, alone and among 31
//! other sequences, chunked, prefix-cached and preempted; drafts are really verified (some
//! are accepted, some rejected), and no KV block outlives its request.

mod common;

use common::*;
use slm_engine::config::SpecConfig;
use slm_engine::{EngineConfig, EngineHandle, Event, Request, SamplingParams};

/// Prompts whose answers copy from their input (where prompt lookup drafts) and free ones.
fn prompts() -> Vec<String> {
    let code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n";
    vec![
        format!("<|im_start|>user\nRepeat this code exactly, then stop:\n{code}<|im_end|>\n<|im_start|>assistant\n"),
        format!("<|im_start|>user\nRename `add` to `plus` in:\n{code}<|im_end|>\n<|im_start|>assistant\n"),
        "<|im_start|>user\nGive JSON with keys name and age for: Alice is 30, Bob is 41, Carol is 25.<|im_end|>\n<|im_start|>assistant\n".into(),
        "Context: The Eiffel Tower is 330 metres tall and was finished in 1889.\nQ: How tall is the Eiffel Tower and when was it finished?\nA:".into(),
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,".into(),
        "Once upon a time".into(),
        "SELECT name FROM".into(),
        "a b c a b c a b c a b".into(),
    ]
}

fn requests(tok: &slm_engine::Tokenizer, n: usize) -> Vec<Request> {
    let ps = prompts();
    (0..n)
        .map(|i| {
            let p = &ps[i % ps.len()];
            let params = if i % 2 == 0 {
                SamplingParams { top_logprobs: 3, ..SamplingParams::greedy() }
            } else {
                SamplingParams {
                    temperature: 0.7,
                    top_p: 0.9,
                    top_k: 40,
                    seed: Some(7 + (i % ps.len()) as u64),
                    top_logprobs: 3,
                    ..Default::default()
                }
            };
            Request::new(tok.encode(p, true, true).unwrap(), params, 40)
        })
        .collect()
}

/// Tokens and the bits of every logprob, and the final text.
fn collect(mut s: slm_engine::RequestStream) -> Outcome {
    let (mut toks, mut bits, mut text) = (vec![], vec![], String::new());
    while let Some(e) = s.blocking_next() {
        match e {
            Event::Token(t) => {
                toks.push(t.token);
                bits.push(t.logprob.to_bits());
                bits.extend(t.top_logprobs.iter().map(|x| x.1.to_bits()));
                text.push_str(&t.text);
            }
            Event::Finished(f) => {
                text.push_str(&f.text);
                return (toks, bits, text);
            }
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Progress(_) => {}
        }
    }
    panic!("stream ended without Finished")
}

fn run_together(e: &EngineHandle, reqs: &[Request]) -> Vec<Outcome> {
    let streams: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    streams.into_iter().map(collect).collect()
}

type Outcome = (Vec<u32>, Vec<u32>, String);

/// Compares outcomes one by one, naming the first request that differs (not a wall of bits).
fn same(got: &[Outcome], want: &[Outcome], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of outcomes");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: request {i} differs:\n got {:?} {:?}\nwant {:?} {:?}", g.0, g.2, w.0, w.2);
    }
}

fn spec(enabled: bool) -> SpecConfig {
    SpecConfig { enabled, ..Default::default() }
}

#[test]
fn speculation_never_changes_the_output() {
    let m = model(QWEN);
    let reqs = requests(&m.tokenizer, 32);
    let plain_cfg = EngineConfig { prefix_caching: false, speculative: spec(false), ..Default::default() };

    // Reference: the first eight alone, without speculation.
    let plain = EngineHandle::start(m.clone(), plain_cfg.clone()).unwrap();
    let reference: Vec<_> = reqs.iter().take(8).map(|r| collect(plain.submit(r.clone()).unwrap())).collect();
    assert_eq!(plain.stats().spec_draft_tokens_total, 0, "speculation off drafts nothing");
    // The counters move after the last event is sent: wait for the engine to go idle.
    wait_for(|| plain.stats().num_running == 0);
    let plain_generated = plain.stats().generated_tokens_total;
    drop(plain);
    let expected = |n: usize| (0..n).map(|i| reference[i % 8].clone()).collect::<Vec<_>>();

    // Alone, with speculation: drafts are proposed, some accepted, some rejected.
    let on = EngineHandle::start(m.clone(), EngineConfig { speculative: spec(true), ..plain_cfg.clone() }).unwrap();
    let alone: Vec<_> = reqs.iter().take(8).map(|r| collect(on.submit(r.clone()).unwrap())).collect();
    same(&alone, &expected(8), "alone with speculation");
    wait_for(|| on.stats().num_running == 0);
    let s = on.stats();
    assert!(s.spec_accepted_tokens_total > 0, "prompt lookup should draft accepted tokens: {s:?}");
    assert!(s.spec_accepted_tokens_total < s.spec_draft_tokens_total, "some drafts should be rejected: {s:?}");
    assert_eq!(s.generated_tokens_total, plain_generated, "accepted drafts are counted once, as tokens");

    // A request that opts out drafts nothing, and its output is the same.
    let before = on.stats().spec_draft_tokens_total;
    let mut r = reqs[0].clone();
    r.speculative = false;
    same(&[collect(on.submit(r).unwrap())], &[reference[0].clone()], "opted out");
    assert_eq!(on.stats().spec_draft_tokens_total, before);

    // Among 31 others (32 at once), then chunked prefill mixed with drafted decodes.
    same(&run_together(&on, &reqs), &expected(32), "32 at once with speculation");
    drop(on);
    let chunked = EngineConfig { max_batched_tokens: 11, speculative: spec(true), ..plain_cfg.clone() };
    let e = EngineHandle::start(m.clone(), chunked).unwrap();
    same(&run_together(&e, &reqs[..16]), &expected(16), "chunked, 11-token budget");
    drop(e);

    // Prefix caching: only accepted tokens' blocks are registered, so a second round that
    // hits them still gives the same output.
    let cached = EngineConfig { block_size: 4, speculative: spec(true), ..Default::default() };
    let e = EngineHandle::start(m.clone(), cached).unwrap();
    same(&run_together(&e, &reqs[..8]), &expected(8), "first round, prefix caching");
    let again = run_together(&e, &reqs[..8]);
    assert!(e.stats().prefix_cache_hit_tokens_total > 0);
    same(&again, &expected(8), "prefix-cache hits with speculation");
    wait_for(|| e.stats().kv_blocks_used == 0);
    drop(e);

    // A pool too small: drafts never preempt, sequences are preempted by decode growth and
    // recomputed, and the output does not change.
    let tight = EngineConfig { block_size: 4, num_kv_blocks: Some(60), speculative: spec(true), ..Default::default() };
    let e = EngineHandle::start(m, tight).unwrap();
    same(&run_together(&e, &reqs[..16]), &expected(16), "under preemption");
    assert!(e.stats().preemptions_total > 0, "the tiny pool should force preemption");
    wait_for(|| e.stats().kv_blocks_used == 0 && e.stats().num_running == 0);
}

#[test]
fn a_dropped_stream_with_drafts_in_flight_frees_its_blocks() {
    let m = model(QWEN);
    let e = EngineHandle::start(m.clone(), EngineConfig { prefix_caching: false, ..Default::default() }).unwrap();
    let prompt = m.tokenizer.encode("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", true, false).unwrap();
    for n in [1, 3, 9] {
        let mut s = e.submit(Request::new(prompt.clone(), SamplingParams::greedy(), 300)).unwrap();
        for _ in 0..n {
            assert!(matches!(s.blocking_next(), Some(Event::Token(_))));
        }
        drop(s);
        wait_for(|| e.stats().kv_blocks_used == 0 && e.stats().num_running == 0);
    }
    assert!(e.stats().spec_draft_tokens_total > 0);
}

/// Speculation by the draft model alone: prompt lookup never matches (its n-grams are longer
/// than any prompt here), so every draft is the 0.5B model's guess for the 1.5B target. The
/// draft model also proposes its unconfident guesses (`draft_p_min: 0`), so that rejections
/// are certain to happen: with the default 0.6 floor, how many drafts a run makes depends on
/// the machine's measured step costs, and a slow machine can draft only a few confident
/// tokens that all happen to be accepted.
fn model_only(enabled: bool) -> SpecConfig {
    SpecConfig { enabled, ngram_min: 4096, ngram_max: 4096, draft_p_min: 0.0, ..Default::default() }
}

#[test]
fn a_draft_model_never_changes_the_output_and_frees_its_cache() {
    let (target, draft) = (model(QWEN_1_5B), model(QWEN));
    let reqs = requests(&target.tokenizer, 16);
    let plain_cfg = EngineConfig { prefix_caching: false, speculative: model_only(false), ..Default::default() };
    let plain = EngineHandle::start(target.clone(), plain_cfg.clone()).unwrap();
    let reference: Vec<_> = reqs.iter().take(8).map(|r| collect(plain.submit(r.clone()).unwrap())).collect();
    drop(plain);
    let expected = |n: usize| (0..n).map(|i| reference[i % 8].clone()).collect::<Vec<_>>();

    let cfg = EngineConfig { speculative: model_only(true), ..plain_cfg.clone() };
    let e = EngineHandle::start_with_draft(target.clone(), Some(draft.clone()), cfg.clone()).unwrap();
    let alone: Vec<_> = reqs.iter().take(8).map(|r| collect(e.submit(r.clone()).unwrap())).collect();
    same(&alone, &expected(8), "alone, draft model");
    same(&run_together(&e, &reqs), &expected(16), "16 at once, draft model");
    wait_for(|| e.stats().num_running == 0);
    // How much is drafted depends on the step costs the engine measures: a slow machine may
    // draft little, all of it right (an AVX2 Zen 3 drafted 39 tokens, all accepted). Rounds
    // more, each checked, until some draft is rejected, so that the rollback is exercised.
    for round in 0..4 {
        let s = e.stats();
        if s.spec_model_accepted_tokens_total < s.spec_model_draft_tokens_total {
            break;
        }
        same(&run_together(&e, &reqs), &expected(16), &format!("draft model, extra round {round}"));
        wait_for(|| e.stats().num_running == 0);
    }
    let s = e.stats();
    assert!(s.spec_model_draft_tokens_total > 0, "the draft model should have drafted: {s:?}");
    assert_eq!(s.spec_model_draft_tokens_total, s.spec_draft_tokens_total, "prompt lookup is off here");
    assert!(s.spec_model_accepted_tokens_total > 0, "{s:?}");
    assert!(
        s.spec_model_accepted_tokens_total < s.spec_model_draft_tokens_total,
        "seeded sampling rejects some: {s:?}"
    );
    assert_eq!(s.draft_kv_blocks_used, 0, "finished sequences give the draft cache back");

    // A dropped stream frees its blocks in both caches.
    let mut st = e.submit(Request::new(reqs[4].prompt.clone(), SamplingParams::greedy(), 300)).unwrap();
    for _ in 0..12 {
        assert!(matches!(st.blocking_next(), Some(Event::Token(_))));
    }
    drop(st);
    wait_for(|| e.stats().kv_blocks_used == 0 && e.stats().draft_kv_blocks_used == 0);
    drop(e);

    // A draft cache too small for everyone: sequences that find no room simply draft less.
    let tight = EngineConfig { num_kv_blocks: Some(48), block_size: 4, ..cfg };
    let e = EngineHandle::start_with_draft(target, Some(draft), tight).unwrap();
    same(&run_together(&e, &reqs[..8]), &expected(8), "tight pools, draft model");
    wait_for(|| e.stats().kv_blocks_used == 0 && e.stats().draft_kv_blocks_used == 0);
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let err = EngineHandle::start_with_draft(model(QWEN), Some(model(GEMMA)), EngineConfig::default())
        .err()
        .expect("Gemma cannot draft for Qwen");
    let msg = err.to_string();
    assert!(msg.contains("cannot draft") && msg.contains("vocabular"), "{msg}");
}
