//! Embedding models and the thread that serves them. `EmbeddingModel` is what an encoder GGUF
//! (`bert`) holds: the network and its WordPiece tokenizer; `embed` runs any number of token
//! sequences through it in batches of at most `max_batch_tokens` and pools each into one
//! L2-normalized vector. `EmbedderHandle` owns a thread that takes requests from a queue and
//! runs every request waiting at that moment as one batch, so concurrent clients share
//! forwards; the matmuls and attention go through the process's one worker pool, which takes
//! one call at a time, so an embedder and a generation engine interleave their work rather
//! than one starving the other. Used by the server's `/v1/embeddings`.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use crate::error::{panic_message, EngineError, Result};
use crate::layers::pool::THREAD_STACK_BYTES;
use crate::loader::Gguf;
use crate::models::bert::{self, Bert};
use crate::tokenizer::Tokenizer;

/// Architectures `EmbeddingModel` loads.
pub const EMBEDDING_ARCHITECTURES: &[&str] = &["bert"];

/// Whether the GGUF at `path` holds an embedding (encoder) model rather than a decoder.
pub fn is_embedding_gguf(path: impl AsRef<Path>) -> Result<bool> {
    let g = Gguf::open(path)?;
    Ok(EMBEDDING_ARCHITECTURES.contains(&g.architecture()?.as_str()))
}

pub struct EmbeddingModel {
    pub path: String,
    pub bert: Bert,
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
            Ok(Self { path: g.path.clone(), bert, tokenizer: Arc::new(tokenizer) })
        })
        .unwrap_or_else(|p| Err(named(format!("the file could not be loaded ({})", panic_message(&*p)))));
        loaded.map_err(|e| match e {
            EngineError::Tokenizer(m) => named(format!("tokenizer: {m}")),
            e => e,
        })
    }

    pub fn dim(&self) -> usize {
        self.bert.config.hidden_size
    }

    /// The longest input, in tokens (the position table's length).
    pub fn context_length(&self) -> usize {
        self.bert.config.context_length
    }

    /// Embeds every sequence (each non-empty and within `context_length`), in batches of at
    /// most `max_batch_tokens` tokens (a longer sequence runs alone).
    pub fn embed(&self, inputs: &[&[u32]], max_batch_tokens: usize) -> Vec<Vec<f32>> {
        let mut out = Vec::with_capacity(inputs.len());
        let mut i = 0;
        while i < inputs.len() {
            let (mut tokens, mut lens) = (Vec::new(), Vec::new());
            while i < inputs.len() && (lens.is_empty() || tokens.len() + inputs[i].len() <= max_batch_tokens) {
                tokens.extend_from_slice(inputs[i]);
                lens.push(inputs[i].len());
                i += 1;
            }
            let states = self.bert.forward(&tokens, &lens);
            out.extend(bert::pool(&states, &lens, self.dim(), self.bert.config.pooling));
        }
        out
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
