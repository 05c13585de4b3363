//! `Model`: everything loaded from one GGUF — the network, its tokenizer and chat template.
//! Shared read-only (`Arc`) by the engine thread, the server and the CLI.

use std::path::Path;
use std::sync::Arc;

use crate::chat_template::ChatTemplate;
use crate::error::{panic_message, EngineError, Result};
use crate::grammar::GrammarCompiler;
use crate::kv_cache::{KvCache, KvDtype};
use crate::loader::Gguf;
use crate::models::{self, Decoder};
use crate::tokenizer::Tokenizer;

pub struct Model {
    pub path: String,
    pub decoder: Decoder,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: ChatTemplate,
    /// Compiles constrained-decoding grammars against this vocabulary.
    pub grammar: GrammarCompiler,
}

impl Model {
    /// Loads a GGUF. Whatever the file holds, this returns: a bug that a crafted file
    /// reaches (a panic) comes back as an error naming the file, so a server can report it
    /// and stop instead of losing its loading thread.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_pack_cache(path, crate::pack_cache::default_dir().as_deref(), false)
    }

    /// Loads with repacked weights cached in `pack_cache` (None: no cache); `wait_for_save`
    /// writes a new cache file before returning instead of beside serving.
    pub fn load_with_pack_cache(
        path: impl AsRef<Path>,
        pack_cache: Option<&Path>,
        wait_for_save: bool,
    ) -> Result<Self> {
        let path = path.as_ref();
        let named = |message: String| EngineError::Gguf { path: path.display().to_string(), message };
        let loaded = std::panic::catch_unwind(|| Self::load_unchecked(path, pack_cache, wait_for_save))
            .unwrap_or_else(|p| Err(named(format!("the file could not be loaded ({})", panic_message(&*p)))));
        // Every error names the file, whichever part of it was at fault.
        loaded.map_err(|e| match e {
            EngineError::Tokenizer(m) => named(format!("tokenizer: {m}")),
            EngineError::ChatTemplate(m) => named(format!("chat template: {m}")),
            e => e,
        })
    }

    fn load_unchecked(path: &Path, pack_cache: Option<&Path>, wait_for_save: bool) -> Result<Self> {
        let _span = tracing::info_span!("load_model", path = %path.display()).entered();
        // The pack cache is read while the tokenizer is built: one is mostly copying, the other
        // mostly hashing strings, and together they are most of a warm load.
        let (mut g, tokenizer) = std::thread::scope(|s| {
            let cache = s.spawn(|| pack_cache.and_then(|dir| crate::pack_cache::PackCache::open(dir, path)));
            let g = Gguf::open(path);
            let tokenizer = g.as_ref().ok().map(Tokenizer::from_gguf);
            let cache = cache.join().unwrap_or(None);
            g.map(|mut g| {
                g.pack_cache = cache;
                (g, tokenizer)
            })
        })?;
        let tokenizer = tokenizer.expect("built when the file opened")?;
        let chat_template = ChatTemplate::from_gguf(&g, &tokenizer)?;
        let decoder = models::load(&mut g)?;
        if let Some(cache) = g.pack_cache.take().filter(|c| c.needs_save()) {
            // Written beside serving: the weights are shared, not copied.
            let write = move || {
                if let Err(e) = cache.save() {
                    tracing::warn!("cannot write the pack cache: {e}");
                }
            };
            if wait_for_save {
                write();
            } else {
                std::thread::spawn(write);
            }
        }
        let tokenizer = Arc::new(tokenizer);
        let grammar = GrammarCompiler::new(tokenizer.clone(), decoder.config.vocab_size);
        Ok(Self { path: g.path.clone(), decoder, tokenizer, chat_template, grammar })
    }

    pub fn context_length(&self) -> usize {
        self.decoder.config.context_length
    }

    /// A KV cache for this model holding `num_blocks` blocks of `block_size` tokens (f16).
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        self.new_kv_cache_of(num_blocks, block_size, KvDtype::default())
    }

    pub fn new_kv_cache_of(&self, num_blocks: usize, block_size: usize, dtype: KvDtype) -> KvCache {
        let c = &self.decoder.config;
        KvCache::new(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim, dtype)
    }

    /// Bytes one KV block of `block_size` tokens takes for this model.
    pub fn kv_bytes_per_block(&self, block_size: usize, dtype: KvDtype) -> usize {
        let c = &self.decoder.config;
        KvCache::bytes_per_block(c.num_layers, block_size, c.kv_dim(), dtype)
    }
}
