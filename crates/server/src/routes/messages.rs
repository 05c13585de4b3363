//! The Anthropic Messages API: `POST /v1/messages` (one message, or Anthropic's event stream:
//! `message_start`, content blocks with `text_delta` / `input_json_delta`, `message_delta`,
//! `message_stop`, and `ping` while the prompt is prefilled) and `POST
//! /v1/messages/count_tokens`. A thin adapter: the request becomes a chat request
//! (anthropic.rs) that runs as one turn (turn.rs). Errors get Anthropic's shape from the
//! `anthropic_errors` middleware; an error inside a stream is an `error` event.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::parse_for;
use crate::anthropic::{self, MessagesRequest, FIELD_NAMES};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::state::AppState;
use crate::stream;
use crate::turn::{self, TurnEvent, TurnWire};
use crate::validate;

pub async fn create(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let (req, served) = parse_for::<MessagesRequest>(&state, body).await?;
    let chat = anthropic::chat_request(&req, false)?;
    let rename = |e: ApiError| e.renamed(FIELD_NAMES);
    let valid = validate::chat(&served.engine, chat, tenant.as_ref().map(|t| &t.0), &state.settings.reasoning)
        .await
        .map_err(rename)?;
    let streams = valid.submit(&served).map_err(rename)?;
    let id = anthropic::new_id("msg");
    if req.stream.unwrap_or(false) {
        let wire = MessagesWire {
            id,
            model: served.id.clone(),
            num_input_tokens: valid.request.num_prompt_tokens(),
            num_blocks: 0,
            open: None,
        };
        return Ok(turn::stream(state.clone(), &valid, streams, start, wire));
    }
    let turn = turn::run(&state, &valid, streams, start, || anthropic::new_id("toolu")).await.map_err(rename)?;
    Ok(Json(anthropic::message_answer(&id, &served.id, &turn)).into_response())
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}` for the request's prompt.
pub async fn count_tokens(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (req, served) = parse_for::<MessagesRequest>(&state, body).await?;
    let chat = anthropic::chat_request(&req, true)?;
    let n = validate::count_chat_tokens(&served.engine, chat, &state.settings.reasoning)
        .await
        .map_err(|e| e.renamed(FIELD_NAMES))?;
    Ok(Json(json!({"input_tokens": n})))
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    Thinking,
    Text,
    ToolUse,
}

/// Anthropic's stream of one turn: one content block per text run or tool call.
struct MessagesWire {
    id: String,
    model: String,
    num_input_tokens: usize,
    num_blocks: usize,
    /// The block being written, if one is open (its index is `num_blocks - 1`).
    open: Option<Block>,
}

/// An event whose payload repeats its name as `type` (first, as Anthropic writes it).
fn ev(kind: &str, body: Value) -> SseEvent {
    let mut v = json!({"type": kind});
    if let (Value::Object(m), Value::Object(b)) = (&mut v, body) {
        m.extend(b);
    }
    stream::named(kind, &v)
}

impl MessagesWire {
    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if self.open == Some(Block::Thinking) {
            // Anthropic's clients expect a signature before a thinking block closes; slm
            // signs nothing (it reads thoughts sent back as they are).
            let delta = json!({"type": "signature_delta", "signature": ""});
            out.push(ev("content_block_delta", json!({"index": self.num_blocks - 1, "delta": delta})));
        }
        if self.open.take().is_some() {
            out.push(ev("content_block_stop", json!({"index": self.num_blocks - 1})));
        }
    }

    fn open(&mut self, block: Block, content_block: Value, out: &mut Vec<SseEvent>) {
        self.close(out);
        out.push(ev("content_block_start", json!({"index": self.num_blocks, "content_block": content_block})));
        self.num_blocks += 1;
        self.open = Some(block);
    }
}

impl TurnWire for MessagesWire {
    fn call_id(&self) -> String {
        anthropic::new_id("toolu")
    }

    fn start(&mut self) -> Vec<SseEvent> {
        let message = json!({"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.num_input_tokens, "output_tokens": 0}});
        vec![ev("message_start", json!({"message": message})), self.ping().expect("pings")]
    }

    fn event(&mut self, e: TurnEvent) -> Vec<SseEvent> {
        let mut out = Vec::new();
        match e {
            TurnEvent::Reasoning(t) => {
                if self.open != Some(Block::Thinking) {
                    self.open(Block::Thinking, json!({"type": "thinking", "thinking": "", "signature": ""}), &mut out);
                }
                let delta = json!({"type": "thinking_delta", "thinking": t});
                out.push(ev("content_block_delta", json!({"index": self.num_blocks - 1, "delta": delta})));
            }
            TurnEvent::Text(t) => {
                if self.open != Some(Block::Text) {
                    self.open(Block::Text, json!({"type": "text", "text": ""}), &mut out);
                }
                let delta = json!({"type": "text_delta", "text": t});
                out.push(ev("content_block_delta", json!({"index": self.num_blocks - 1, "delta": delta})));
            }
            TurnEvent::CallStart { id, name, .. } => {
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                self.open(Block::ToolUse, block, &mut out);
            }
            TurnEvent::CallArgs { text, .. } if self.open == Some(Block::ToolUse) => {
                let delta = json!({"type": "input_json_delta", "partial_json": text});
                out.push(ev("content_block_delta", json!({"index": self.num_blocks - 1, "delta": delta})));
            }
            TurnEvent::CallArgs { .. } => {}
            TurnEvent::End(end) => {
                self.close(&mut out);
                let (reason, sequence) = anthropic::stop_reason(&end);
                out.push(ev(
                    "message_delta",
                    json!({"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": anthropic::usage(&end)}),
                ));
                out.push(ev("message_stop", json!({})));
            }
        }
        out
    }

    fn error(&mut self, e: ApiError) -> Vec<SseEvent> {
        vec![stream::named("error", &anthropic::stream_error(&e))]
    }

    fn ping(&self) -> Option<SseEvent> {
        Some(ev("ping", json!({})))
    }
}
