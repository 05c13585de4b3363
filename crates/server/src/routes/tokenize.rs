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
    /// llama.cpp: each token with its text (`piece`: a string, or its bytes when they are not
    /// valid UTF-8 on their own).
    #[serde(default)]
    with_pieces: bool,
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
    if !req.with_pieces {
        return Ok(Json(json!({"tokens": ids})));
    }
    let pieces: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = model.tokenizer.token_bytes(id, true);
            let piece = match std::str::from_utf8(bytes) {
                Ok(s) => json!(s),
                Err(_) => json!(bytes),
            };
            json!({"id": id, "piece": piece})
        })
        .collect();
    Ok(Json(json!({"tokens": pieces})))
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
