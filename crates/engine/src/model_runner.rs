//! Turns a `ScheduledBatch` into the model's `BatchInput` (rows, positions, KV slots, block
//! tables), runs the forward pass, and returns one logits row per item that samples.

use crate::batch::BatchInput;
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::scheduler::{ScheduledBatch, Scheduler};

pub struct ModelRunner {
    pub kv: KvCache,
}

impl ModelRunner {
    /// Logits (`vocab_size` values) for each sampling item, in item order.
    pub fn run(&mut self, model: &Model, batch: &ScheduledBatch, seqs: &Scheduler) -> Vec<f32> {
        let mut input = BatchInput::default();
        for item in &batch.items {
            let seq = seqs.running(item.seq_id).expect("scheduled sequences are running");
            input.push_seq(
                &seq.tokens[item.start..item.start + item.len],
                item.start,
                seq.block_table.blocks(),
                self.kv.block_size(),
                item.sample,
            );
        }
        model.decoder.forward(&input, &mut self.kv)
    }
}
