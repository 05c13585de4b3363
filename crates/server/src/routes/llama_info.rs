//! llama.cpp's informational routes: `GET /props` (the model's context, slots, chat template
//! and default sampling, as dashboards and llama.cpp's web UI read them; `?model=` picks a
//! model) and `POST /apply-template` (the chat template's prompt for `messages`, without
//! generating).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::parse_for;
use crate::error::ApiError;
use crate::llama_api::{DEFAULT_MIN_P, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P};
use crate::openai::ChatMessage;
use crate::reasoning::{self, ReasoningAsk};
use crate::state::AppState;
use crate::validate;

#[derive(Deserialize)]
pub struct ApplyTemplateRequest {
    model: Option<String>,
    keep_alive: Option<crate::keep_alive::KeepAlive>,
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    reasoning_effort: Option<String>,
}

names_model!(ApplyTemplateRequest);

pub async fn apply_template(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (req, served) = parse_for::<ApplyTemplateRequest>(&state, body).await?;
    let model = served.engine.model().clone();
    let messages = validate::messages(&req.messages)?;
    let mode = validate::render_mode(&req.messages, req.continue_final_message, req.add_generation_prompt)?;
    let ask = ReasoningAsk {
        kwargs: req.chat_template_kwargs.as_ref(),
        effort: req.reasoning_effort.as_deref(),
        format: None,
    };
    let vars = reasoning::template_vars(&ask, &state.settings.reasoning, false)?;
    let prompt =
        validate::blocking(move || validate::render_text(&model, &messages, req.tools.as_deref(), mode, &vars)).await?;
    Ok(Json(json!({ "prompt": prompt })))
}

#[derive(Deserialize)]
pub struct PropsQuery {
    model: Option<String>,
}

pub async fn props(State(state): State<AppState>, Query(q): Query<PropsQuery>) -> Result<Json<Value>, ApiError> {
    let served = state.model_for(q.model.as_deref(), None).await?;
    let engine = &served.engine;
    let model = engine.model();
    let tok = &model.tokenizer;
    let text_of = |id: Option<u32>| id.map(|i| tok.decode(&[i], true)).unwrap_or_default();
    Ok(Json(json!({
        "default_generation_settings": {
            "n_ctx": engine.max_model_len(),
            "params": {
                "n_predict": -1,
                "temperature": DEFAULT_TEMPERATURE,
                "top_k": DEFAULT_TOP_K,
                "top_p": DEFAULT_TOP_P,
                "min_p": DEFAULT_MIN_P,
                "seed": engine.config().default_seed.map_or(-1, |s| s as i64),
                "repeat_penalty": 1.0,
                "n_probs": 0,
            },
        },
        "total_slots": engine.config().max_seqs,
        "model_alias": served.id,
        "model_path": model.path,
        "chat_template": model.chat_template.source,
        "bos_token": text_of(tok.bos),
        "eos_token": text_of(tok.eos),
        "modalities": { "vision": false, "audio": false },
        "infill": tok.fim().infill().is_some(),
        "build_info": state.fingerprint,
    })))
}

/// llama-server's `GET /slots`, as slm has them: one slot per sequence the engine runs at
/// once (`max_seqs`), each with the context a request may use, and busy while that many
/// sequences run. What a slot is working on (prompts, parameters) is not shown: slm keeps no
/// per-slot record, and another client's prompt is not for this one. Off unless the server
/// was started with `--slots` (`slots_endpoint = true`), as llama.cpp's `--no-slots` turns it
/// off: 501 then.
pub async fn slots(State(state): State<AppState>, Query(q): Query<PropsQuery>) -> Result<Json<Value>, ApiError> {
    if !state.settings.slots {
        return Err(ApiError::not_supported("This server does not serve /slots; start it with --slots."));
    }
    let served = state.model_for(q.model.as_deref(), None).await?;
    let engine = &served.engine;
    let running = engine.stats().num_running as usize;
    let slots: Vec<Value> = (0..engine.config().max_seqs)
        .map(|id| {
            json!({
                "id": id,
                "n_ctx": engine.max_model_len(),
                "speculative": engine.config().speculative.enabled,
                "is_processing": id < running,
            })
        })
        .collect();
    Ok(Json(Value::Array(slots)))
}
