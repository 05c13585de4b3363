//! `POST /v1/embeddings`: `input` as a string, strings, token ids or lists of token ids →
//! one L2-normalized vector each, as floats or base64 (little-endian f32, as OpenAI sends
//! them). Every input of a request goes to the embedder at once, which batches it with
//! whatever else is waiting. Inputs are checked first: none empty, none past the model's
//! context (unless `truncate: true`), at most `MAX_INPUTS`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Value};
use slm_engine::{EmbeddingModel, EngineError};

use super::parse_body;
use crate::error::ApiError;
use crate::llama_api::{prompts_of, NativePrompt as Input, PromptPiece};
use crate::openai::EmbeddingsRequest;
use crate::state::AppState;
use crate::validate::blocking;

/// Most inputs per request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

fn bad(message: String) -> ApiError {
    ApiError::invalid("input", message)
}

/// Each input as token ids, checked against the model.
fn tokenize(model: &EmbeddingModel, input: &Value, truncate: bool) -> Result<Vec<Vec<u32>>, ApiError> {
    let tk = &model.tokenizer;
    let inputs = prompts_of(input, "input")?;
    let n = inputs.len();
    if n == 0 {
        return Err(ApiError::invalid("input", "`input` must not be empty"));
    }
    if n > MAX_INPUTS {
        return Err(ApiError::invalid("input", format!("`input` may hold at most {MAX_INPUTS} items, got {n}")));
    }
    let mut ids = Vec::with_capacity(n);
    for (i, input) in inputs.into_iter().enumerate() {
        ids.push(match input {
            Input::Text(t) if t.is_empty() => return Err(bad(format!("input {i} is an empty string"))),
            Input::Text(t) => tk.encode(&t, true, false)?,
            // Mixed: the caller placed any special tokens among the ids.
            Input::Mixed(ps) => {
                let mut out = Vec::new();
                for p in ps {
                    match p {
                        PromptPiece::Text(t) => out.extend(tk.encode(&t, false, false)?),
                        PromptPiece::Token(t) => out.push(t),
                    }
                }
                out
            }
        });
    }
    let (vocab, ctx) = (tk.vocab_size(), model.context_length());
    for (i, seq) in ids.iter_mut().enumerate() {
        if seq.is_empty() {
            return Err(ApiError::invalid("input", format!("input {i} has no tokens")));
        }
        if let Some(t) = seq.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                "input",
                format!("input {i}: token id {t} is out of range (vocabulary size {vocab})"),
            ));
        }
        if seq.len() > ctx {
            if !truncate {
                let e = EngineError::InvalidRequest(format!(
                    "input {i} is too large to embed: {} tokens, more than this model's context of {ctx} tokens (send `truncate: true` to cut it)",
                    seq.len()
                ));
                return Err(ApiError {
                    code: Some("context_length_exceeded"),
                    param: Some("input".into()),
                    ..ApiError::from(e)
                });
            }
            // Keep the start, and the end-of-input marker the model was trained with.
            let last = *seq.last().expect("non-empty");
            seq.truncate(ctx);
            if tk.is_end_of_generation(last) || Some(last) == tk.eos {
                seq[ctx - 1] = last;
            }
        }
    }
    Ok(ids)
}

pub async fn embeddings(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbeddingList>, ApiError> {
    let req: EmbeddingsRequest = parse_body(body, state.settings.body_limit)?;
    let served = state.embedder_for(req.model.as_deref(), req.keep_alive).await?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", got \"{other}\""),
            ))
        }
    };
    let model = served.embedder.model().clone();
    if let Some(d) = req.dimensions.filter(|&d| d != model.dim() as i64) {
        return Err(ApiError::invalid(
            "dimensions",
            format!("this model gives {} dimensions and does not support shortening them (got {d})", model.dim()),
        ));
    }
    let truncate = req.truncate.unwrap_or(false);
    let inputs = blocking(move || tokenize(&model, &req.input, truncate)).await?;
    let num_tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = served.embedder.embed(inputs).await?;
    let data: Vec<Embedding> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Floats(v)
            };
            Embedding { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: served.id.clone(),
        usage: json!({"prompt_tokens": num_tokens, "total_tokens": num_tokens}),
    }))
}

/// Typed (not `Value`) so each f32 prints as its shortest round-trip text, not as an f64's.
#[derive(Serialize)]
pub struct EmbeddingList {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Value,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}
