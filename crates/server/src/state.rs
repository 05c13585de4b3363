//! Shared server state: the model registry (set at start-up), API keys, limits and metrics.
//! Routes reach a model through `model_for`/`embedder_for`, which apply the naming rules and
//! hand out a lease on the model, loading it first when it is not loaded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use slm_engine::{EmbedderHandle, EngineHandle};

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::metrics::Metrics;
use crate::registry::{Entry, EntrySpec, Loaded, ModelKind, Registry};
use crate::response_store::ResponseStore;

pub struct ServedModel {
    /// The id clients use (`model` field).
    pub id: String,
    pub engine: EngineHandle,
    pub created: u64,
}

/// An embedding model (`/v1/embeddings` only).
pub struct ServedEmbedder {
    pub id: String,
    pub embedder: EmbedderHandle,
    pub created: u64,
}

pub struct Settings {
    pub api_keys: Vec<String>,
    /// Keys that may load and unload models; empty: every API key may.
    pub admin_api_keys: Vec<String>,
    pub body_limit: usize,
    /// The Responses API's stored responses.
    pub responses: Arc<ResponseStore>,
    /// Serve the chat page (`ui.rs`).
    pub ui: bool,
}

impl Settings {
    /// Settings with responses kept in memory only (tests; `slm serve` opens a database).
    pub fn new(api_keys: Vec<String>, body_limit: usize) -> Self {
        Self {
            api_keys,
            admin_api_keys: Vec::new(),
            body_limit,
            responses: Arc::new(ResponseStore::in_memory(10_000, 30 * 86_400)),
            ui: true,
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    registry: OnceLock<Registry>,
    ready: AtomicBool,
    /// Shutting down: readiness is 503 and new work is refused while requests in flight end.
    draining: AtomicBool,
    /// Embedders handed over before `set_models` (tests).
    pending_embedders: Mutex<Vec<ServedEmbedder>>,
    pub settings: Settings,
    pub metrics: Metrics,
    pub fingerprint: String,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(settings: Settings) -> Self {
        let fingerprint = format!("slm-{}", env!("CARGO_PKG_VERSION"));
        Self(Arc::new(Inner {
            registry: OnceLock::new(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            pending_embedders: Mutex::new(Vec::new()),
            settings,
            metrics: Metrics::default(),
            fingerprint,
        }))
    }

    /// The models this server answers for; routes answer 503 until it is set.
    pub fn set_registry(&self, registry: Registry) {
        let _ = self.0.registry.set(registry);
    }

    /// The start-up models are loaded: `/health` says ok.
    pub fn mark_ready(&self) {
        self.0.ready.store(true, Ordering::Release);
    }

    /// Serves models that are already running, kept loaded for good (tests, embedders).
    pub fn set_models(&self, models: Vec<ServedModel>) {
        let spec = |id: &str, path: &str, kind| EntrySpec {
            id: id.to_string(),
            aliases: Vec::new(),
            path: path.into(),
            engine: slm_engine::EngineConfig::default(),
            kind,
            keep_alive: KeepAlive::FOREVER,
            draft: None,
            chat_template: None,
        };
        let mut entries: Vec<Entry> = models
            .into_iter()
            .map(|m| {
                let s = spec(&m.id, &m.engine.model().path, ModelKind::Generate);
                Entry::preloaded(s, Loaded::Gen(Arc::new(m)), crate::routes::unix_now())
            })
            .collect();
        for e in std::mem::take(&mut *self.0.pending_embedders.lock().unwrap()) {
            let s = spec(&e.id, &e.embedder.model().path, ModelKind::Encoder);
            entries.push(Entry::preloaded(s, Loaded::Embed(Arc::new(e)), crate::routes::unix_now()));
        }
        let limits = crate::registry::Limits { load_wait: std::time::Duration::from_secs(120), ..Default::default() };
        self.set_registry(Registry::new(entries, limits));
        self.mark_ready();
    }

    /// Embedding models to serve alongside the next `set_models`.
    pub fn set_embedders(&self, embedders: Vec<ServedEmbedder>) {
        self.0.pending_embedders.lock().unwrap().extend(embedders);
    }

    pub fn registry(&self) -> Result<&Registry, ApiError> {
        self.0.registry.get().ok_or_else(ApiError::loading)
    }

    /// SIGTERM: stop taking work (readiness 503, new requests 503 with Retry-After).
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire) && self.0.registry.get().is_some()
    }

    /// The generation models loaded now (metrics, tests).
    pub fn models(&self) -> Result<Vec<Arc<ServedModel>>, ApiError> {
        Ok(self
            .registry()?
            .entries
            .iter()
            .filter_map(|e| match e.loaded() {
                Some(Loaded::Gen(m)) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// The embedding model a request names; with one embedder, any name that is not a
    /// generation model's picks it.
    pub async fn embedder_for(
        &self,
        name: Option<&str>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Arc<ServedEmbedder>, ApiError> {
        let reg = self.registry()?;
        let embedders: Vec<&Arc<Entry>> = reg.entries.iter().filter(|e| e.is_embedding()).collect();
        let entry = match name.and_then(|n| reg.find(n)) {
            Some(e) if e.is_embedding() => e,
            Some(e) => {
                return Err(ApiError::invalid(
                    "model",
                    format!("`{}` is a generation model, not an embedding model", e.spec.id),
                ))
            }
            None => match (embedders.as_slice(), name) {
                ([one], _) => *one,
                ([], _) => return Err(ApiError::invalid("model", "this server serves no embedding model")),
                (_, None) => {
                    return Err(ApiError::invalid(
                        "model",
                        "`model` is required: this server serves several embedding models",
                    ))
                }
                (_, Some(n)) => return Err(ApiError::model_not_found(n, &ids(&embedders))),
            },
        };
        match reg.acquire(entry, keep_alive).await? {
            Loaded::Embed(e) => Ok(e),
            Loaded::Gen(_) => Err(ApiError::internal("an embedding entry holds a generation model")),
        }
    }

    /// With one generation model any name is accepted (clients send defaults like
    /// `gpt-4o-mini`); with several the name picks one.
    pub async fn model_for(
        &self,
        name: Option<&str>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Arc<ServedModel>, ApiError> {
        let reg = self.registry()?;
        let models: Vec<&Arc<Entry>> = reg.entries.iter().filter(|e| !e.is_embedding()).collect();
        let entry = match name.and_then(|n| reg.find(n)) {
            Some(e) if e.is_embedding() => {
                return Err(ApiError::invalid(
                    "model",
                    format!("`{}` is an embedding model: use /v1/embeddings", e.spec.id),
                ))
            }
            Some(e) => e,
            None => match (models.as_slice(), name) {
                ([one], _) => *one,
                ([], _) => {
                    return Err(ApiError::invalid(
                        "model",
                        "this server serves only embedding models: use /v1/embeddings",
                    ))
                }
                (_, Some(n)) => return Err(ApiError::model_not_found(n, &ids(&models))),
                (_, None) => {
                    return Err(ApiError::invalid("model", "`model` is required: this server serves several models"))
                }
            },
        };
        match reg.acquire(entry, keep_alive).await? {
            Loaded::Gen(m) => Ok(m),
            Loaded::Embed(_) => Err(ApiError::internal("a generation entry holds an embedding model")),
        }
    }
}

fn ids(entries: &[&Arc<Entry>]) -> Vec<String> {
    entries.iter().map(|e| e.spec.id.clone()).collect()
}
