//! `POST /tokenize` and `POST /detokenize`, compatible with llama.cpp's server.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::parse_for;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct TokenizeRequest {
    model: Option<String>,
    keep_alive: Option<crate::keep_alive::KeepAlive>,
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    parse_special: Option<bool>,
}

#[derive(Deserialize)]
pub struct DetokenizeRequest {
    model: Option<String>,
    keep_alive: Option<crate::keep_alive::KeepAlive>,
    tokens: Vec<u32>,
}

names_model!(TokenizeRequest, DetokenizeRequest);

pub async fn tokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (req, served) = parse_for::<TokenizeRequest>(&state, body).await?;
    let model = served.engine.model();
    // llama.cpp parses special tokens unless told not to.
    let ids = model.tokenizer.encode(&req.content, req.add_special, req.parse_special.unwrap_or(true))?;
    Ok(Json(json!({"tokens": ids})))
}

pub async fn detokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (req, served) = parse_for::<DetokenizeRequest>(&state, body).await?;
    let model = served.engine.model();
    let vocab = model.tokenizer.vocab_size();
    if let Some(t) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid("tokens", format!("token id {t} is out of range (vocabulary size {vocab})")));
    }
    Ok(Json(json!({"content": model.tokenizer.decode(&req.tokens, true)})))
}
