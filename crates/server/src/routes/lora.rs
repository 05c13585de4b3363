//! LoRA adapters at run time, with vLLM's routes and shapes: `POST /v1/load_lora_adapter
//! {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter {"lora_name"}` (admin-only
//! when API keys are set, as model loading is), plus llama.cpp's `GET /lora-adapters` list
//! (`id` is what its `lora: [{"id", "scale"}]` request field takes). Loading checks the file
//! against the base model (a bad one is a 400 naming the tensor); unloading answers once the
//! requests still using the adapter have ended, and new requests for it get 404 at once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::models::admin_only;
use super::parse_body;
use crate::adapters::AdapterSpec;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::registry::Entry;
use crate::state::AppState;

/// How long an unload waits for the requests using the adapter.
const UNLOAD_WAIT: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
pub struct LoadAdapter {
    lora_name: String,
    lora_path: String,
    /// Extension: the scale requests get unless they give one (default 1).
    scale: Option<f32>,
    /// Extension: the base model, when the server serves several.
    model: Option<String>,
}

/// vLLM's clients may also send `lora_int_id`: names identify adapters here.
#[derive(Deserialize)]
pub struct UnloadAdapter {
    lora_name: String,
}

/// The generation model an adapter action is for: the named one, or the only one.
fn base_entry<'a>(state: &'a AppState, model: Option<&str>) -> Result<&'a Arc<Entry>, ApiError> {
    let reg = state.registry()?;
    let gens: Vec<&Arc<Entry>> = reg.entries.iter().filter(|e| !e.is_embedding()).collect();
    match (model, gens.as_slice()) {
        (Some(m), _) => match reg.find(m) {
            Some(e) if !e.is_embedding() => Ok(e),
            Some(e) => Err(ApiError::invalid("model", format!("`{}` is an embedding model", e.spec.id))),
            None => Err(ApiError::model_not_found(m, &gens.iter().map(|e| e.spec.id.clone()).collect::<Vec<_>>())),
        },
        (None, [one]) => Ok(one),
        (None, []) => Err(ApiError::invalid("model", "this server serves no generation model")),
        (None, _) => Err(ApiError::invalid("model", "`model` is required: this server serves several models")),
    }
}

pub async fn load(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&state, tenant.as_ref().map(|t| &t.0))?;
    let req: LoadAdapter = parse_body(body, state.settings.body_limit)?;
    let name = req.lora_name.trim().to_string();
    if name.is_empty() || name.contains(':') {
        return Err(ApiError::invalid("lora_name", "`lora_name` must be non-empty and hold no `:`"));
    }
    let scale = req.scale.unwrap_or(1.0);
    if !scale.is_finite() {
        return Err(ApiError::invalid("scale", "`scale` must be a finite number"));
    }
    let entry = base_entry(&state, req.model.as_deref())?.clone();
    let reg = state.registry()?;
    if reg.find(&name).is_some() {
        return Err(ApiError::invalid("lora_name", format!("`{name}` is already the name of a model")));
    }
    let served = match reg.acquire(&entry, None).await? {
        crate::registry::Loaded::Gen(m) => m,
        crate::registry::Loaded::Embed(_) => return Err(ApiError::internal("a generation entry holds an embedder")),
    };
    let spec = AdapterSpec { name, path: req.lora_path.into(), scale };
    let e = entry.clone();
    let adapter = crate::validate::blocking(move || e.adapters.load(&spec, served.engine.model())).await?;
    Ok(Json(json!({
        "success": true,
        "lora_name": adapter.name,
        "parent": entry.spec.id,
        "num_matrices": adapter.adapter.num_pairs(),
        "bytes": adapter.adapter.num_bytes(),
    })))
}

pub async fn unload(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&state, tenant.as_ref().map(|t| &t.0))?;
    let req: UnloadAdapter = parse_body(body, state.settings.body_limit)?;
    let reg = state.registry()?;
    let Some(entry) = reg.entries.iter().find(|e| e.adapters.find(&req.lora_name).is_some()) else {
        return Err(ApiError {
            param: Some("lora_name".into()),
            ..ApiError::not_found(format!("No LoRA adapter `{}` is loaded.", req.lora_name))
        });
    };
    match entry.adapters.unload(&req.lora_name, UNLOAD_WAIT).await {
        Some(a) => Ok(Json(json!({"success": true, "lora_name": a.name, "parent": entry.spec.id}))),
        None => Err(ApiError::not_found(format!("No LoRA adapter `{}` is loaded.", req.lora_name))),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    model: Option<String>,
}

/// llama.cpp's list: `[{id, name, path, scale}]`, `id` being the adapter's place in it.
pub async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let entry = base_entry(&state, q.model.as_deref())?;
    let list: Vec<Value> = entry
        .adapters
        .list()
        .iter()
        .enumerate()
        .map(|(id, a)| json!({"id": id, "name": a.name, "path": a.path.display().to_string(), "scale": a.scale}))
        .collect();
    Ok(Json(Value::Array(list)))
}
