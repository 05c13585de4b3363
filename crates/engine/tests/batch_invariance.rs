//! Batch invariance of the forward pass on the real models (Q4_K_M, and SmolLM2's Q4_1; f16, q8_0
//! and q4_0 KV caches): a sequence's logits are bit-identical whether it runs alone or beside
//! others, and however its prompt was chunked.

mod common;

use common::*;
use slm_engine::batch::BatchInput;
use slm_engine::block_manager::BlockManager;

const BS: usize = 16;

fn prompts(m: &slm_engine::Model) -> Vec<Vec<u32>> {
    [
        "The capital of France is",
        "def fibonacci(n):\n    if n < 2:\n        return n\n",
        "Xin chào",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,",
    ]
    .iter()
    .map(|p| m.tokenizer.encode(p, true, false).unwrap())
    .collect()
}

#[test]
fn logits_do_not_depend_on_batch_or_chunking() {
    use slm_engine::config::KvDtype;
    for (name, dtype) in [
        (QWEN, KvDtype::F16),
        (GEMMA, KvDtype::F16),
        (SMOLLM2, KvDtype::F16),
        (QWEN, KvDtype::Q8_0),
        (QWEN, KvDtype::Q4_0),
    ] {
        let m = model(name);
        let ps = prompts(&m);
        let vocab = m.decoder.config.vocab_size;
        let mut blocks = BlockManager::with_prefix_caching(64, BS, false);
        let tables: Vec<Vec<u32>> =
            ps.iter().map(|p| blocks.try_allocate(p, p.len()).unwrap().blocks().to_vec()).collect();

        // Each prompt alone, in one chunk.
        let mut alone = Vec::new();
        for (p, t) in ps.iter().zip(&tables) {
            let mut kv = m.new_kv_cache_of(64, BS, dtype);
            let mut b = BatchInput::default();
            b.push_seq(p, 0, t, BS, true);
            alone.push(m.decoder.forward(&b, &mut kv));
        }
        // Twice alone: deterministic.
        let mut kv = m.new_kv_cache_of(64, BS, dtype);
        let mut b = BatchInput::default();
        b.push_seq(&ps[0], 0, &tables[0], BS, true);
        assert_eq!(
            bits(&m.decoder.forward(&b, &mut kv)),
            bits(&alone[0]),
            "{name} {dtype:?}: same input, different logits"
        );

        // All together in one batch.
        let mut kv = m.new_kv_cache_of(64, BS, dtype);
        let mut b = BatchInput::default();
        for (p, t) in ps.iter().zip(&tables) {
            b.push_seq(p, 0, t, BS, true);
        }
        let together = m.decoder.forward(&b, &mut kv);
        for (i, a) in alone.iter().enumerate() {
            assert_eq!(
                bits(&together[i * vocab..(i + 1) * vocab]),
                bits(a),
                "{name} {dtype:?}: prompt {i} differs inside a batch"
            );
        }

        // Chunked prefill (chunks of 3 tokens, interleaved with the other prompts' chunks).
        let mut kv = m.new_kv_cache_of(64, BS, dtype);
        let mut done = vec![0usize; ps.len()];
        let mut last = vec![Vec::new(); ps.len()];
        while done.iter().zip(&ps).any(|(d, p)| *d < p.len()) {
            let mut b = BatchInput::default();
            let mut order = Vec::new();
            for (i, (p, t)) in ps.iter().zip(&tables).enumerate() {
                if done[i] < p.len() {
                    let end = (done[i] + 3).min(p.len());
                    b.push_seq(&p[done[i]..end], done[i], t, BS, end == p.len());
                    if end == p.len() {
                        order.push(i);
                    }
                    done[i] = end;
                }
            }
            let out = m.decoder.forward(&b, &mut kv);
            for (k, &i) in order.iter().enumerate() {
                last[i] = out[k * vocab..(k + 1) * vocab].to_vec();
            }
        }
        for (i, a) in alone.iter().enumerate() {
            assert_eq!(bits(&last[i]), bits(a), "{name} {dtype:?}: prompt {i} differs when chunked");
        }
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}
