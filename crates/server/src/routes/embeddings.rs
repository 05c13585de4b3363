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
use crate::llama_api::PromptPiece;
use crate::openai::EmbeddingsRequest;
use crate::state::AppState;
use crate::validate::blocking;

/// Most inputs per request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// One input: text, or text and token ids mixed (all ids: a token input).
#[derive(Debug, PartialEq)]
enum Input {
    Text(String),
    Pieces(Vec<PromptPiece>),
}

fn bad(message: String) -> ApiError {
    ApiError::invalid("input", message)
}

/// The inputs `input` holds, read as llama.cpp reads prompts: a string, an array of ids
/// (or of ids and strings mixed) or an object is one input; any other array holds one input
/// per element. An array of strings is one input per string, as OpenAI's.
fn inputs_of(v: &Value) -> Result<Vec<Input>, ApiError> {
    match v {
        Value::Array(a) if !a.is_empty() && is_one_prompt(a) => Ok(vec![pieces(a, 0)?]),
        Value::Array(a) => a.iter().enumerate().map(|(i, e)| one_input(e, i)).collect(),
        other => Ok(vec![one_input(other, 0)?]),
    }
}

/// Ids only, or ids and strings mixed: one prompt.
fn is_one_prompt(a: &[Value]) -> bool {
    let ids = a.iter().any(Value::is_u64);
    ids && a.iter().all(|e| e.is_u64() || e.is_string())
}

fn pieces(a: &[Value], i: usize) -> Result<Input, ApiError> {
    a.iter()
        .map(|e| match e {
            Value::String(s) => Ok(PromptPiece::Text(s.clone())),
            e => e
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .map(PromptPiece::Token)
                .ok_or_else(|| bad(format!("input {i}: expected token ids and strings, got {e}"))),
        })
        .collect::<Result<_, _>>()
        .map(Input::Pieces)
}

fn one_input(e: &Value, i: usize) -> Result<Input, ApiError> {
    match e {
        Value::String(s) => Ok(Input::Text(s.clone())),
        Value::Array(a) => pieces(a, i),
        Value::Object(o) => {
            if let Some(s) = o.get("prompt_string").and_then(Value::as_str) {
                return Ok(Input::Text(s.to_string()));
            }
            match o.get("content") {
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(bad(format!("input {i}: only text parts can be embedded, got {p}"))),
                    })
                    .collect::<Result<String, _>>()
                    .map(Input::Text),
                _ => Err(bad(format!("input {i}: an object input needs `prompt_string` or `content`"))),
            }
        }
        other => Err(bad(format!("input {i}: expected a string, token ids or an object, got {other}"))),
    }
}

/// Each input as token ids, checked against the model.
fn tokenize(model: &EmbeddingModel, input: &Value, truncate: bool) -> Result<Vec<Vec<u32>>, ApiError> {
    let tk = &model.tokenizer;
    let inputs = inputs_of(input)?;
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
            Input::Pieces(ps) => {
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
                    "input {i} has {} tokens, more than this model's context of {ctx} tokens (send `truncate: true` to cut it)",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: Value) -> Vec<&'static str> {
        inputs_of(&v)
            .unwrap()
            .iter()
            .map(|i| match i {
                Input::Text(_) => "text",
                Input::Pieces(p) if p.iter().all(|p| matches!(p, PromptPiece::Token(_))) => "ids",
                Input::Pieces(_) => "mixed",
            })
            .collect()
    }

    #[test]
    fn inputs_are_read_as_openai_and_llama_cpp_send_them() {
        assert_eq!(kinds(json!("a")), ["text"]);
        assert_eq!(kinds(json!(["a", "b"])), ["text", "text"]);
        assert_eq!(kinds(json!([1, 2, 3])), ["ids"]);
        assert_eq!(kinds(json!([[1, 2], [3]])), ["ids", "ids"]);
        assert_eq!(kinds(json!([12, 34, "string", 56])), ["mixed"]);
        assert_eq!(kinds(json!(["s", [12, 34]])), ["text", "ids"]);
        assert_eq!(kinds(json!([[12, "s"], [1]])), ["mixed", "ids"]);
        assert_eq!(kinds(json!({"prompt_string": "s"})), ["text"]);
        assert!(inputs_of(&json!({"content": "s"})).is_err(), "content is a list of parts");
        let parts = json!({"content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]});
        assert_eq!(inputs_of(&parts).unwrap(), vec![Input::Text("hello world".into())]);
        assert_eq!(kinds(json!(["a", {"prompt_string": "b"}, parts])), ["text", "text", "text"]);
        assert!(inputs_of(&json!([])).unwrap().is_empty());
        for bad in
            [json!(3.5), json!([true]), json!({"x": 1}), json!([[1, -2]]), json!({"content": [{"type": "image_url"}]})]
        {
            assert_eq!(inputs_of(&bad).unwrap_err().param.as_deref(), Some("input"), "{bad}");
        }
    }
}
