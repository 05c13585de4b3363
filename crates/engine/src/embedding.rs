//! Embedding models and the thread that serves them. `EmbeddingModel` is an encoder GGUF
//! (`bert`: the network and its WordPiece tokenizer), or any decoder slm runs pooled over its
//! final hidden states (`pooling = "last" | "mean"`, the Qwen3-Embedding recipe) through the
//! same batched forward as generation, on a small KV cache of its own. `embed` runs any number
//! of token sequences in batches of at most `max_batch_tokens` and pools each into one
//! L2-normalized vector. `EmbedderHandle` owns a thread that takes requests from a queue and
//! runs every request waiting at that moment as one batch, so concurrent clients share
//! forwards; the matmuls and attention go through the process's one worker pool, which takes
//! one call at a time, so an embedder and a generation engine interleave their work rather
//! than one starving the other. Used by the server's `/v1/embeddings`.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use crate::batch::BatchInput;
use crate::error::{panic_message, EngineError, Result};
use crate::kv_cache::KvCache;
use crate::layers::pool::THREAD_STACK_BYTES;
use crate::loader::Gguf;
use crate::model::Model;
use crate::models::bert::{self, Bert, Pooling};
use crate::tokenizer::Tokenizer;

/// A decoder embedder's KV cache: blocks of `DECODER_BLOCK_SIZE` tokens, reused by every batch.
const DECODER_BLOCKS: usize = 256;
const DECODER_BLOCK_SIZE: usize = 16;

/// Architectures `EmbeddingModel` loads.
pub const EMBEDDING_ARCHITECTURES: &[&str] = &["bert"];

/// Whether the GGUF at `path` holds an embedding (encoder) model rather than a decoder.
pub fn is_embedding_gguf(path: impl AsRef<Path>) -> Result<bool> {
    let g = Gguf::open(path)?;
    Ok(EMBEDDING_ARCHITECTURES.contains(&g.architecture()?.as_str()))
}

enum Backbone {
    Bert(Bert),
    Decoder { model: Arc<Model>, pooling: Pooling, kv: Mutex<KvCache> },
}

pub struct EmbeddingModel {
    pub path: String,
    backbone: Backbone,
    pub tokenizer: Arc<Tokenizer>,
}

impl EmbeddingModel {
    /// Loads an encoder GGUF; as `Model::load`, whatever the file holds comes back as a
    /// result naming the file, never a panic.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let named = |message: String| EngineError::Gguf { path: path.display().to_string(), message };
        let loaded = std::panic::catch_unwind(|| -> Result<Self> {
            let mut g = Gguf::open(path)?;
            let tokenizer = Tokenizer::from_gguf(&g)?;
            let bert = Bert::load(&mut g)?;
            if tokenizer.vocab_size() != bert.config.vocab_size {
                return Err(named(format!(
                    "the vocabulary has {} tokens but the embedding table {}",
                    tokenizer.vocab_size(),
                    bert.config.vocab_size
                )));
            }
            Ok(Self { path: g.path.clone(), backbone: Backbone::Bert(bert), tokenizer: Arc::new(tokenizer) })
        })
        .unwrap_or_else(|p| Err(named(format!("the file could not be loaded ({})", panic_message(&*p)))));
        loaded.map_err(|e| match e {
            EngineError::Tokenizer(m) => named(format!("tokenizer: {m}")),
            e => e,
        })
    }

    /// A decoder pooled over its final hidden states (its output projection is not used).
    pub fn from_decoder(model: Arc<Model>, pooling: Pooling) -> Self {
        let kv = Mutex::new(model.new_kv_cache(DECODER_BLOCKS, DECODER_BLOCK_SIZE));
        Self {
            path: model.path.clone(),
            tokenizer: model.tokenizer.clone(),
            backbone: Backbone::Decoder { model, pooling, kv },
        }
    }

    pub fn dim(&self) -> usize {
        match &self.backbone {
            Backbone::Bert(b) => b.config.hidden_size,
            Backbone::Decoder { model, .. } => model.decoder.config.hidden_size,
        }
    }

    /// The longest input, in tokens (the position table's length; a decoder's context, at
    /// most what its embedding KV cache holds).
    pub fn context_length(&self) -> usize {
        match &self.backbone {
            Backbone::Bert(b) => b.config.context_length,
            Backbone::Decoder { model, .. } => model.context_length().min(DECODER_BLOCKS * DECODER_BLOCK_SIZE),
        }
    }

    /// Embeds every sequence (each non-empty and within `context_length`), in batches of at
    /// most `max_batch_tokens` tokens (a longer sequence runs alone).
    pub fn embed(&self, inputs: &[&[u32]], max_batch_tokens: usize) -> Vec<Vec<f32>> {
        let blocks = |s: &[u32]| s.len().div_ceil(DECODER_BLOCK_SIZE);
        let decoder = matches!(self.backbone, Backbone::Decoder { .. });
        let mut out = Vec::with_capacity(inputs.len());
        let mut i = 0;
        while i < inputs.len() {
            let (mut num_tokens, mut num_blocks, start) = (0, 0, i);
            while i < inputs.len()
                && (i == start
                    || (num_tokens + inputs[i].len() <= max_batch_tokens
                        && (!decoder || num_blocks + blocks(inputs[i]) <= DECODER_BLOCKS)))
            {
                num_tokens += inputs[i].len();
                num_blocks += blocks(inputs[i]);
                i += 1;
            }
            out.extend(self.embed_batch(&inputs[start..i]));
        }
        out
    }

    fn embed_batch(&self, seqs: &[&[u32]]) -> Vec<Vec<f32>> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let dim = self.dim();
        match &self.backbone {
            Backbone::Bert(b) => {
                let tokens: Vec<u32> = seqs.concat();
                bert::pool(&b.forward(&tokens, &lens), &lens, dim, b.config.pooling)
            }
            Backbone::Decoder { model, pooling, kv } => {
                // Each sequence gets the next free blocks of the private cache; causal attention
                // over its own blocks only, as a prompt's prefill.
                let mut batch = BatchInput::default();
                let mut next_block = 0u32;
                for s in seqs {
                    let n = s.len().div_ceil(DECODER_BLOCK_SIZE) as u32;
                    let table: Vec<u32> = (next_block..next_block + n).collect();
                    next_block += n;
                    let first_row = batch.num_rows();
                    batch.push_seq(s, 0, &table, DECODER_BLOCK_SIZE, false);
                    match pooling {
                        Pooling::Mean => batch.logits_rows.extend(first_row..first_row + s.len()),
                        Pooling::Cls => batch.logits_rows.push(first_row),
                        Pooling::Last => batch.logits_rows.push(first_row + s.len() - 1),
                    }
                }
                let mut kv = kv.lock().unwrap_or_else(|e| e.into_inner());
                let states = model.decoder.hidden(&batch, &mut kv);
                match pooling {
                    Pooling::Mean => bert::pool(&states, &lens, dim, Pooling::Mean),
                    Pooling::Cls | Pooling::Last => bert::pool(&states, &vec![1; seqs.len()], dim, Pooling::Cls),
                }
            }
        }
    }
}

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// A running embedder: cheap to clone, stops when the last clone is dropped.
#[derive(Clone)]
pub struct EmbedderHandle {
    model: Arc<EmbeddingModel>,
    tx: mpsc::Sender<Job>,
}

impl EmbedderHandle {
    pub fn start(model: Arc<EmbeddingModel>, max_batch_tokens: usize) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let m = model.clone();
        std::thread::Builder::new()
            .name("slm-embedder".into())
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || serve(&m, &rx, max_batch_tokens.max(1)))
            .map_err(|e| EngineError::Internal(format!("cannot start the embedder thread: {e}")))?;
        Ok(Self { model, tx })
    }

    pub fn model(&self) -> &Arc<EmbeddingModel> {
        &self.model
    }

    /// Embeds the sequences (checked by the caller: non-empty, within the context).
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Job { inputs, reply }).map_err(|_| EngineError::Internal("the embedder has stopped".into()))?;
        rx.await.map_err(|_| EngineError::Internal("the embedder dropped the request".into()))?
    }
}

/// The embedder thread: every job waiting when a batch starts joins it.
fn serve(model: &EmbeddingModel, rx: &mpsc::Receiver<Job>, max_batch_tokens: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut num_tokens: usize = jobs[0].inputs.iter().map(Vec::len).sum();
        while num_tokens < max_batch_tokens {
            match rx.try_recv() {
                Ok(j) => {
                    num_tokens += j.inputs.iter().map(Vec::len).sum::<usize>();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // A client that went away costs nothing more.
        jobs.retain(|j| !j.reply.is_closed());
        let all: Vec<&[u32]> = jobs.iter().flat_map(|j| j.inputs.iter().map(Vec::as_slice)).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed(&all, max_batch_tokens)));
        match result {
            Ok(vectors) => {
                let mut it = vectors.into_iter();
                for j in jobs {
                    let mine: Vec<Vec<f32>> = it.by_ref().take(j.inputs.len()).collect();
                    let _ = j.reply.send(Ok(mine));
                }
            }
            Err(p) => {
                let msg = panic_message(&*p);
                for j in jobs {
                    let _ = j.reply.send(Err(EngineError::Internal(format!("embedding failed: {msg}"))));
                }
            }
        }
    }
}
