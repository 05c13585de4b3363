//! Turns a `ScheduledBatch` into the model's `BatchInput` (rows, positions, KV slots, block
//! tables), runs the forward pass, and returns the logits rows the items sample from (one per
//! sampling item, plus one per drafted token).

use crate::batch::BatchInput;
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::scheduler::{ScheduledBatch, Scheduler};

pub struct ModelRunner {
    pub kv: KvCache,
}

impl ModelRunner {
    /// Logits (`vocab_size` values) for each logits row of each item (`num_logits`), in
    /// item order.
    pub fn run(&mut self, model: &Model, batch: &ScheduledBatch, seqs: &Scheduler) -> Vec<f32> {
        let mut input = BatchInput::default();
        for item in &batch.items {
            let seq = seqs.running(item.seq_id).expect("scheduled sequences are running");
            input.push_seq_rows(
                &[&seq.tokens[item.start..item.start + item.len], &item.draft],
                item.start,
                seq.block_table.blocks(),
                self.kv.block_size(),
                item.num_logits(),
            );
            input.set_last_lora(seq.lora.clone());
        }
        model.decoder.forward(&input, &mut self.kv)
    }
}
