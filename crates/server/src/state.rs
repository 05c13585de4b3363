//! Shared server state: the model registry (set at start-up), API keys, limits and metrics.
//! Routes reach a model through `model_for`/`embedder_for`, which apply the naming rules and
//! hand out a lease on the model, loading it first when it is not loaded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use slm_engine::{EmbedderHandle, EngineHandle, LoraSet};

use crate::adapters::Adapters;
use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::metrics::Metrics;
use crate::openai::LoraRef;
use crate::registry::{Entry, EntrySpec, Loaded, ModelKind, Registry};
use crate::response_store::ResponseStore;

pub struct ServedModel {
    /// The id clients use (`model` field).
    pub id: String,
    pub engine: EngineHandle,
    pub created: u64,
}

/// What one request runs on: a lease on the base model, the LoRA adapters it asked for, and
/// the name its answers report (the adapter's, when `model` named one, as vLLM does).
pub struct Served {
    model: Arc<ServedModel>,
    pub id: String,
    pub lora: Option<Arc<LoraSet>>,
}

impl std::ops::Deref for Served {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        &self.model
    }
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
    /// Serve llama.cpp's `GET /slots`.
    pub slots: bool,
    /// Serve `GET /metrics`.
    pub metrics: bool,
    /// Whether requests think unless they say, and how thoughts come back.
    pub reasoning: crate::reasoning::ReasoningConfig,
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
            slots: false,
            metrics: true,
            reasoning: Default::default(),
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
            tags: Vec::new(),
            path: path.into(),
            engine: slm_engine::EngineConfig::default(),
            kind,
            keep_alive: KeepAlive::FOREVER,
            draft: None,
            chat_template: None,
            loras: Vec::new(),
            lora_limits: Default::default(),
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

impl AppState {
    /// The base model and adapters a request names: `model` = a model, an adapter's name, or
    /// `BASE:ADAPTER`; plus llama.cpp's `lora` list (ids index the base's loaded adapters).
    /// An adapter that is not loaded (or was unloaded) is a 404, never the base model.
    pub async fn served_for(
        &self,
        name: Option<&str>,
        keep_alive: Option<KeepAlive>,
        lora: Option<&[LoraRef]>,
    ) -> Result<Served, ApiError> {
        let reg = self.registry()?;
        let (base_name, adapter_name) = match name {
            Some(n) if reg.find(n).is_none() => match adapter_target(reg, n) {
                Some((entry, adapter)) => (Some(entry.spec.id.clone()), Some(adapter)),
                None => (Some(n.to_string()), None),
            },
            other => (other.map(str::to_string), None),
        };
        let model = self.model_for(base_name.as_deref(), keep_alive).await?;
        if adapter_name.is_none() && lora.is_none_or(|l| l.is_empty()) {
            return Ok(Served { id: model.id.clone(), model, lora: None });
        }
        let entry = reg.find(&model.id).ok_or_else(|| ApiError::internal("a loaded model has no registry entry"))?;
        let adapters = &entry.adapters;
        // Entries handed over preloaded (tests) load their start-up adapters on first use.
        if adapters.has_pending() {
            let (base, e) = (model.engine.model().clone(), entry.clone());
            crate::validate::blocking(move || e.adapters.load_startup(&base).map_err(ApiError::internal)).await?;
        }
        let mut picked = Vec::new();
        if let Some(a) = &adapter_name {
            let found = adapters
                .find(a)
                .ok_or_else(|| ApiError::model_not_found(name.unwrap_or(a), &adapter_names(&model.id, adapters)))?;
            picked.push((found.clone(), found.scale));
        }
        for (i, r) in lora.into_iter().flatten().enumerate() {
            let param = format!("lora[{i}]");
            let found = match (r.id, &r.name) {
                (Some(id), _) => usize::try_from(id).ok().and_then(|i| adapters.by_index(i)),
                (None, Some(n)) => adapters.find(n),
                (None, None) => return Err(ApiError::invalid(param, "each `lora` entry needs an `id` or a `name`")),
            };
            let found = found.ok_or_else(|| {
                let what =
                    r.id.map_or_else(|| format!("`{}`", r.name.as_deref().unwrap_or("")), |id| format!("id {id}"));
                ApiError {
                    param: Some(param.clone()),
                    ..ApiError::not_found(format!(
                        "No LoRA adapter {what} is loaded for `{}` (loaded: {}).",
                        model.id,
                        adapter_names(&model.id, adapters).join(", ")
                    ))
                }
            })?;
            let scale = r.scale.unwrap_or(found.scale as f64);
            if !scale.is_finite() || scale.abs() > 100.0 {
                return Err(ApiError::invalid(
                    format!("{param}.scale"),
                    format!("`scale` must be in [-100, 100], got {scale}"),
                ));
            }
            picked.push((found, scale as f32));
        }
        picked.iter().for_each(|(a, _)| Adapters::count_request(a));
        let id = match &adapter_name {
            Some(_) => name.unwrap_or_default().to_string(),
            None => model.id.clone(),
        };
        let lora = LoraSet::new(picked.into_iter().map(|(a, s)| (a.adapter.clone(), s)).collect());
        Ok(Served { model, id, lora })
    }
}

/// `name` as an adapter: `BASE:ADAPTER` (the base's name may hold colons itself), or an
/// adapter name some generation model knows.
fn adapter_target<'a>(reg: &'a Registry, name: &str) -> Option<(&'a Arc<Entry>, String)> {
    for (i, _) in name.match_indices(':') {
        if let Some(e) = reg.find(&name[..i]).filter(|e| !e.is_embedding()) {
            return Some((e, name[i + 1..].to_string()));
        }
    }
    reg.entries.iter().find(|e| !e.is_embedding() && e.adapters.knows(name)).map(|e| (e, name.to_string()))
}

fn adapter_names(base: &str, adapters: &Adapters) -> Vec<String> {
    std::iter::once(base.to_string()).chain(adapters.list().iter().map(|a| a.name.clone())).collect()
}

fn ids(entries: &[&Arc<Entry>]) -> Vec<String> {
    entries.iter().map(|e| e.spec.id.clone()).collect()
}
