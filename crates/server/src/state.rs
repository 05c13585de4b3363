//! Shared server state: the served models (set once loading finishes), API keys, limits and
//! metrics. Routes reach a model through `model_for`, which applies the naming rules.

use std::sync::{Arc, OnceLock};

use slm_engine::{EmbedderHandle, EngineHandle};

use crate::error::ApiError;
use crate::metrics::Metrics;
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
    pub body_limit: usize,
    /// The Responses API's stored responses.
    pub responses: Arc<ResponseStore>,
}

impl Settings {
    /// Settings with responses kept in memory only (tests; `slm serve` opens a database).
    pub fn new(api_keys: Vec<String>, body_limit: usize) -> Self {
        Self { api_keys, body_limit, responses: Arc::new(ResponseStore::in_memory(10_000, 30 * 86_400)) }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    models: OnceLock<Vec<ServedModel>>,
    embedders: OnceLock<Vec<ServedEmbedder>>,
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
            models: OnceLock::new(),
            embedders: OnceLock::new(),
            settings,
            metrics: Metrics::default(),
            fingerprint,
        }))
    }

    /// Makes the models available; until then routes answer 503.
    pub fn set_models(&self, models: Vec<ServedModel>) {
        let _ = self.0.models.set(models);
    }

    /// Makes the embedding models available (before `set_models`, which marks readiness).
    pub fn set_embedders(&self, embedders: Vec<ServedEmbedder>) {
        let _ = self.0.embedders.set(embedders);
    }

    pub fn embedders(&self) -> &[ServedEmbedder] {
        self.0.embedders.get().map(|v| v.as_slice()).unwrap_or_default()
    }

    /// The embedding model a request names; with one embedder, any name that is not a
    /// generation model's picks it.
    pub fn embedder_for(&self, name: Option<&str>) -> Result<&ServedEmbedder, ApiError> {
        let models = self.models()?;
        let embedders = self.embedders();
        if let Some(e) = name.and_then(|n| embedders.iter().find(|e| e.id == n)) {
            return Ok(e);
        }
        if let Some(n) = name.filter(|n| models.iter().any(|m| m.id == *n)) {
            return Err(ApiError::invalid("model", format!("`{n}` is a generation model, not an embedding model")));
        }
        match (embedders, name) {
            ([one], _) => Ok(one),
            ([], _) => Err(ApiError::invalid("model", "this server serves no embedding model")),
            (_, None) => {
                Err(ApiError::invalid("model", "`model` is required: this server serves several embedding models"))
            }
            (_, Some(n)) => {
                Err(ApiError::model_not_found(n, &embedders.iter().map(|e| e.id.clone()).collect::<Vec<_>>()))
            }
        }
    }

    pub fn models(&self) -> Result<&[ServedModel], ApiError> {
        self.0.models.get().map(|v| v.as_slice()).ok_or_else(ApiError::loading)
    }

    pub fn is_ready(&self) -> bool {
        self.0.models.get().is_some()
    }

    /// With one model any name is accepted (clients send defaults like `gpt-4o-mini`); with
    /// several the name picks one.
    pub fn model_for(&self, name: Option<&str>) -> Result<&ServedModel, ApiError> {
        let models = self.models()?;
        if let Some(n) = name.filter(|n| self.embedders().iter().any(|e| e.id == *n)) {
            return Err(ApiError::invalid("model", format!("`{n}` is an embedding model: use /v1/embeddings")));
        }
        if models.len() == 1 {
            return Ok(&models[0]);
        }
        if models.is_empty() {
            return Err(ApiError::invalid("model", "this server serves only embedding models: use /v1/embeddings"));
        }
        match name {
            Some(n) => models
                .iter()
                .find(|m| m.id == n)
                .ok_or_else(|| ApiError::model_not_found(n, &models.iter().map(|m| m.id.clone()).collect::<Vec<_>>())),
            None => Err(ApiError::invalid("model", "`model` is required: this server serves several models")),
        }
    }
}
