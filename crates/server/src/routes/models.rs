//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::{Path, State};
use axum::Json;

use crate::error::ApiError;
use crate::openai::{ModelCard, ModelList};
use crate::state::{AppState, ServedModel};

fn card(m: &ServedModel) -> ModelCard {
    ModelCard { id: m.id.clone(), object: "model", created: m.created, owned_by: "slm" }
}

pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList { object: "list", data: state.models()?.iter().map(card).collect() }))
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    let models = state.models()?;
    models
        .iter()
        .find(|m| m.id == id)
        .map(|m| Json(card(m)))
        .ok_or_else(|| ApiError::model_not_found(&id, &models.iter().map(|m| m.id.clone()).collect::<Vec<_>>()))
}
