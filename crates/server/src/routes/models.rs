//! `GET /v1/models` and `GET /v1/models/{id}`: every model the server can answer for, loaded
//! or not, each marked with what it serves and its `status` (loaded, loading, unloaded).
//! `POST /models/load` and `POST /models/unload` (llama.cpp router mode's names) load and
//! unload one by name; when API keys are set, only admin keys may.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::parse_body;
use crate::adapters::ServedAdapter;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::openai::{ModelCard, ModelList};
use crate::registry::{Entry, Status, UnloadReason};
use crate::state::AppState;

fn card(e: &Entry) -> ModelCard {
    ModelCard {
        id: e.spec.id.clone(),
        object: "model",
        created: e.created,
        owned_by: "slm",
        capabilities: if e.is_embedding() { &["embeddings"] } else { &["chat", "completion"] },
        status: e.status().as_str(),
        parent: None,
        root: None,
        aliases: std::iter::once(e.spec.id.clone()).chain(e.spec.aliases.iter().cloned()).collect(),
        tags: e.spec.tags.clone(),
    }
}

/// An adapter's card: it serves what its base serves, with `parent` naming the base.
fn adapter_card(e: &Entry, a: &ServedAdapter) -> ModelCard {
    ModelCard {
        id: a.name.clone(),
        created: a.created,
        status: Status::Loaded.as_str(),
        parent: Some(e.spec.id.clone()),
        root: Some(a.path.display().to_string()),
        aliases: vec![a.name.clone()],
        ..card(e)
    }
}

fn cards(state: &AppState) -> Result<Vec<ModelCard>, ApiError> {
    let mut out = Vec::new();
    for e in &state.registry()?.entries {
        out.push(card(e));
        out.extend(e.adapters.list().iter().map(|a| adapter_card(e, a)));
    }
    Ok(out)
}

pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList { object: "list", data: cards(&state)? }))
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    let reg = state.registry()?;
    let adapter = || reg.entries.iter().find_map(|e| e.adapters.find(&id).map(|a| adapter_card(e, &a)));
    match reg.find(&id) {
        Some(e) => Ok(Json(card(e))),
        None if adapter().is_some() => Ok(Json(adapter().expect("just found"))),
        None => Err(ApiError::model_not_found(&id, &reg.entries.iter().map(|e| e.spec.id.clone()).collect::<Vec<_>>())),
    }
}

#[derive(Deserialize)]
pub struct ModelAction {
    model: String,
}

pub(crate) fn admin_only(state: &AppState, tenant: Option<&Tenant>) -> Result<(), ApiError> {
    let admins = &state.settings.admin_api_keys;
    // With no keys at all the server is open; with keys but no admin keys, every key is one.
    if admins.is_empty() {
        return Ok(());
    }
    match tenant {
        Some(t) if admins.iter().any(|k| crate::auth::constant_time_eq(k.as_bytes(), t.0.as_bytes())) => Ok(()),
        _ => Err(ApiError::forbidden("Loading and unloading models needs an admin API key.")),
    }
}

/// The entry an admin action names, once the caller may act.
fn action_entry(
    state: &AppState,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<&std::sync::Arc<Entry>, ApiError> {
    admin_only(state, tenant.as_ref().map(|t| &t.0))?;
    let req: ModelAction = parse_body(body, state.settings.body_limit)?;
    let reg = state.registry()?;
    reg.find(&req.model).ok_or_else(|| {
        ApiError::model_not_found(&req.model, &reg.entries.iter().map(|e| e.spec.id.clone()).collect::<Vec<_>>())
    })
}

pub async fn load(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let entry = action_entry(&state, tenant, body)?;
    state.registry()?.acquire(entry, None).await?;
    Ok(Json(json!({"success": true, "model": entry.spec.id, "status": Status::Loaded.as_str()})))
}

pub async fn unload(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let entry = action_entry(&state, tenant, body)?;
    let was_loaded = state.registry()?.unload_entry(entry, UnloadReason::Requested);
    Ok(Json(
        json!({"success": true, "model": entry.spec.id, "status": entry.status().as_str(), "was_loaded": was_loaded}),
    ))
}
