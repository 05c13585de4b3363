//! The HTTP routes and what they share: body parsing into typed requests (errors name the
//! field), ids and timestamps. Each route is a thin adapter: body → `validate` → submit →
//! its own wire format.

/// Implements `NamesModel` for request types whose `model` field names the model (`lora:`
/// types that also have llama.cpp's `lora` field).
macro_rules! names_model {
    (lora: $($t:ty),*) => {
        $(impl $crate::routes::NamesModel for $t {
            fn model_name(&self) -> Option<&str> {
                self.model.as_deref()
            }
            fn keep_alive(&self) -> Option<$crate::keep_alive::KeepAlive> {
                self.keep_alive
            }
            fn lora(&self) -> Option<&[$crate::openai::LoraRef]> {
                self.lora.as_deref()
            }
        })*
    };
    ($($t:ty),*) => {
        $(impl $crate::routes::NamesModel for $t {
            fn model_name(&self) -> Option<&str> {
                self.model.as_deref()
            }
            fn keep_alive(&self) -> Option<$crate::keep_alive::KeepAlive> {
                self.keep_alive
            }
        })*
    };
}

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod llama_info;
pub mod lora;
pub mod messages;
pub mod metrics;
pub mod models;
pub mod native;
pub mod responses;
pub mod tokenize;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::anthropic::MessagesRequest;
use crate::error::ApiError;
use crate::llama_api::NativeRequest;
use crate::openai::{ChatCompletionRequest, CompletionRequest};
use crate::responses_api::ResponsesRequest;
use crate::state::{AppState, Served};

/// Parses a JSON body. Malformed JSON and wrong types are 400s naming the field; an over-
/// limit body is a 413.
pub fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("We could not parse the JSON body of your request: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("Invalid request body: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("Invalid value for `{path}`: {inner}"))
        }
    })?;
    // One JSON value and nothing after it but whitespace.
    de.end().map_err(|e| ApiError::bad_request(format!("We could not parse the JSON body of your request: {e}")))?;
    Ok(value)
}

/// A request body that may name the model it is for.
pub trait NamesModel {
    fn model_name(&self) -> Option<&str>;
    /// Ollama's `keep_alive`: how long the model stays loaded after this request.
    fn keep_alive(&self) -> Option<crate::keep_alive::KeepAlive>;
    /// llama.cpp's `lora` field: adapters to run with (none: only what `model` names).
    fn lora(&self) -> Option<&[crate::openai::LoraRef]> {
        None
    }
}

names_model!(lora: ChatCompletionRequest, CompletionRequest, ResponsesRequest, MessagesRequest, NativeRequest);

/// Parses the body and finds the served model it names (loading it if it is not loaded) and
/// the LoRA adapters it asks for: every model route's first step.
pub async fn parse_for<T: DeserializeOwned + NamesModel>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, Served), ApiError> {
    let req: T = parse_body(body, state.settings.body_limit)?;
    let served = state.served_for(req.model_name(), req.keep_alive(), req.lora()).await?;
    Ok((req, served))
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// A tool-call id, `call_…` as OpenAI writes them.
pub fn new_call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
