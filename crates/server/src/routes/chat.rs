//! `POST /v1/chat/completions`: validate → render the chat template (with the offered tools)
//! → constrain the output (grammar.rs: tool calls, `response_format`) → submit `n` choices →
//! one JSON answer, or an SSE stream of `chat.completion.chunk`s ending in `[DONE]`; with
//! tools, the text becomes content and `tool_calls` as it arrives (tool_stream.rs).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use slm_engine::{Event, FinishReason, Model};
use tokio::sync::mpsc;

use super::{new_call_id, new_id, parse_for, unix_now};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::openai::*;
use crate::state::AppState;
use crate::stream::{self, chat_logprob};
use crate::tool_stream::{self, Piece, ToolStream};
use crate::validate;

/// What every chunk or answer of one request repeats.
struct Ctx {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    logprobs: bool,
}

impl Ctx {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        }
    }
}

/// "tool_calls" when a choice that stopped on its own made calls; a cut-off choice says why.
fn finish_reason(reason: FinishReason, num_calls: usize) -> &'static str {
    if num_calls > 0 && reason == FinishReason::Stop {
        "tool_calls"
    } else {
        reason.as_str()
    }
}

pub async fn chat_completions(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let (req, served) = parse_for::<ChatCompletionRequest>(&state, body).await?;
    let valid = validate::chat(&served.engine, req, tenant.as_ref().map(|t| &t.0)).await?;
    let streams = valid.submit(&served)?;
    let model = served.engine.model().clone();
    let ctx = Ctx {
        id: new_id("chatcmpl"),
        created: unix_now(),
        model: served.id.clone(),
        fingerprint: state.fingerprint.clone(),
        logprobs: valid.logprobs,
    };
    let s = valid.request.sampling();
    let num_prompt_tokens = valid.request.num_prompt_tokens();
    let tool_names = valid.tool_names;

    if s.stream {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(stream_chat(
            state.clone(),
            ctx,
            model,
            streams,
            num_prompt_tokens,
            s.include_usage,
            tool_names,
            start,
            tx,
        ));
        return Ok(stream::sse(rx));
    }
    let outs = stream::collect(streams, &state.metrics, start).await.map_err(|e| valid.request.run_error(e))?;
    let usage = stream::usage(num_prompt_tokens, &outs.iter().map(|o| &o.finish).collect::<Vec<_>>());
    let choices = outs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            let (content, calls) = match &tool_names {
                Some(names) => {
                    tracing::debug!(text = %o.text, "choice {index} with tools");
                    tool_stream::split(&o.text, names)
                }
                None => (Some(o.text.clone()), Vec::new()),
            };
            let finish_reason = finish_reason(o.finish.reason, calls.len());
            let tool_calls = (!calls.is_empty()).then(|| calls.iter().map(|c| c.to_openai(&new_call_id())).collect());
            ChatChoice {
                index,
                message: AssistantMessage { role: "assistant", content, tool_calls },
                // One entry per counted completion token: the end-of-turn token too.
                logprobs: ctx.logprobs.then(|| ChatLogprobs {
                    content: o
                        .tokens
                        .iter()
                        .chain(&o.finish.stop_token)
                        .map(|t| chat_logprob(&model.tokenizer, t))
                        .collect(),
                }),
                finish_reason,
            }
        })
        .collect();
    let answer = ChatCompletion {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage,
        system_fingerprint: ctx.fingerprint,
    };
    Ok(Json(answer).into_response())
}

#[allow(clippy::too_many_arguments)]
async fn stream_chat(
    state: AppState,
    ctx: Ctx,
    model: Arc<Model>,
    streams: Vec<stream::EventStream>,
    num_prompt_tokens: usize,
    include_usage: bool,
    tool_names: Option<Vec<String>>,
    start: Instant,
    tx: mpsc::Sender<axum::response::sse::Event>,
) {
    // With tools offered, each choice's text goes through a ToolStream: content as it
    // comes, and a call as its name, then its arguments while the model writes them.
    let mut calls: Vec<ToolStream> =
        (0..streams.len()).map(|_| ToolStream::new(tool_names.clone().unwrap_or_default())).collect();
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); streams.len()];
    for index in 0..streams.len() {
        let first = ChunkChoice {
            index,
            delta: Delta { role: Some("assistant"), content: Some(String::new()), tool_calls: None },
            logprobs: None,
            finish_reason: None,
        };
        if !stream::send(&tx, &ctx.chunk(vec![first], None)).await {
            return;
        }
    }
    let to_json = |c: ChatCompletionChunk| stream::data(&c);
    let deltas = |index: usize, pieces: Vec<Piece>, ids: &mut Vec<String>| -> Vec<axum::response::sse::Event> {
        pieces
            .into_iter()
            .map(|p| {
                let d = match p {
                    Piece::Content(c) => Delta { content: Some(c), ..Default::default() },
                    Piece::Call { index: i, name } => {
                        ids.push(new_call_id());
                        Delta { tool_calls: Some(vec![serde_json::json!({"index": i, "id": ids[i], "type": "function", "function": {"name": name, "arguments": ""}})]), ..Default::default() }
                    }
                    Piece::Args { index: i, text } => Delta { tool_calls: Some(vec![serde_json::json!({"index": i, "function": {"arguments": text}})]), ..Default::default() },
                };
                to_json(ctx.chunk(vec![ChunkChoice { index, delta: d, logprobs: None, finish_reason: None }], None))
            })
            .collect()
    };
    let finishes = stream::pump(streams, &tx, &state.metrics, start, &mut |index: usize, event: &Event| match event {
        Event::Token(t) if tool_names.is_some() => {
            let pieces = calls[index].push(&t.text);
            deltas(index, pieces, &mut ids[index])
        }
        Event::Finished(f) if tool_names.is_some() => {
            let mut pieces = calls[index].push(&f.text);
            pieces.extend(calls[index].finish());
            let mut out = deltas(index, pieces, &mut ids[index]);
            let reason = finish_reason(f.reason, calls[index].num_calls());
            out.push(to_json(ctx.chunk(
                vec![ChunkChoice { index, delta: Delta::default(), logprobs: None, finish_reason: Some(reason) }],
                None,
            )));
            out
        }
        Event::Token(t) if t.text.is_empty() && !ctx.logprobs => vec![],
        Event::Token(t) => {
            let logprobs = ctx.logprobs.then(|| ChatLogprobs { content: vec![chat_logprob(&model.tokenizer, t)] });
            vec![to_json(ctx.chunk(
                vec![ChunkChoice {
                    index,
                    delta: Delta { content: Some(t.text.clone()), ..Default::default() },
                    logprobs,
                    finish_reason: None,
                }],
                None,
            ))]
        }
        Event::Finished(f) => {
            let mut out = Vec::new();
            let stop_logprobs = f.stop_token.as_ref().filter(|_| ctx.logprobs);
            if !f.text.is_empty() || stop_logprobs.is_some() {
                out.push(to_json(ctx.chunk(
                    vec![ChunkChoice {
                        index,
                        delta: Delta { content: Some(f.text.clone()), ..Default::default() },
                        logprobs:
                            stop_logprobs.map(|t| ChatLogprobs { content: vec![chat_logprob(&model.tokenizer, t)] }),
                        finish_reason: None,
                    }],
                    None,
                )));
            }
            out.push(to_json(ctx.chunk(
                vec![ChunkChoice {
                    index,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: Some(f.reason.as_str()),
                }],
                None,
            )));
            out
        }
        Event::Error(_) => vec![],
    })
    .await;
    let Some(finishes) = finishes else { return };
    let usage = include_usage.then(|| {
        to_json(ctx.chunk(vec![], Some(stream::usage(num_prompt_tokens, &finishes.iter().collect::<Vec<_>>()))))
    });
    stream::close(&tx, usage).await;
}

/// `POST /v1/chat/completions/input_tokens` (llama.cpp's): the tokens the request's prompt
/// takes — its messages and tools through the chat template, as a completion would run it —
/// without running it.
pub async fn input_tokens(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, served) = parse_for::<ChatCompletionRequest>(&state, body).await?;
    let valid = validate::chat(&served.engine, req, tenant.as_ref().map(|t| &t.0)).await?;
    let n = valid.request.prompts().first().map_or(0, Vec::len);
    Ok(Json(serde_json::json!({ "input_tokens": n })).into_response())
}
