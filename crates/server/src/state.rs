//! Shared server state: the served models (set once loading finishes), API keys, limits and
//! metrics. Routes reach a model through `model_for`, which applies the naming rules.

use std::sync::{Arc, OnceLock};

use slm_engine::EngineHandle;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::response_store::ResponseStore;

pub struct ServedModel {
    /// The id clients use (`model` field).
    pub id: String,
    pub engine: EngineHandle,
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
        Self(Arc::new(Inner { models: OnceLock::new(), settings, metrics: Metrics::default(), fingerprint }))
    }

    /// Makes the models available; until then routes answer 503.
    pub fn set_models(&self, models: Vec<ServedModel>) {
        let _ = self.0.models.set(models);
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
        if models.len() == 1 {
            return Ok(&models[0]);
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
