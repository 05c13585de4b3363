//! `GET /v1/models` and `GET /v1/models/{id}`: generation and embedding models, each marked
//! with what it serves.

use axum::extract::{Path, State};
use axum::Json;

use crate::error::ApiError;
use crate::openai::{ModelCard, ModelList};
use crate::state::{AppState, ServedModel};

fn cards(state: &AppState) -> Result<Vec<ModelCard>, ApiError> {
    let card = |id: &str, created: u64, capabilities| ModelCard {
        id: id.to_string(),
        object: "model",
        created,
        owned_by: "slm",
        capabilities,
    };
    let mut out: Vec<ModelCard> =
        state.models()?.iter().map(|m: &ServedModel| card(&m.id, m.created, &["chat", "completion"])).collect();
    out.extend(state.embedders().iter().map(|e| card(&e.id, e.created, &["embeddings"])));
    Ok(out)
}

pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList { object: "list", data: cards(&state)? }))
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    let cards = cards(&state)?;
    let ids: Vec<String> = cards.iter().map(|c| c.id.clone()).collect();
    cards.into_iter().find(|c| c.id == id).map(Json).ok_or_else(|| ApiError::model_not_found(&id, &ids))
}
