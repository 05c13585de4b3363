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
use crate::reasoning::{self, Part, ReasoningSpec, ReasoningSplit};
use crate::state::AppState;
use crate::stream::{self, chat_logprob};
use crate::telemetry::{Extras, Telemetry};
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
    let valid = validate::chat(&served.engine, req, tenant.as_ref().map(|t| &t.0), &state.settings.reasoning).await?;
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
    let reasoning = valid.reasoning;

    if s.stream {
        let (tx, rx) = mpsc::channel(64);
        let telemetry =
            Telemetry::new(s.return_progress, s.timings_per_token, start, &vec![num_prompt_tokens; streams.len()]);
        tokio::spawn(stream_chat(
            state.clone(),
            ctx,
            model,
            streams,
            num_prompt_tokens,
            s.include_usage,
            telemetry,
            tool_names,
            reasoning,
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
            let (reasoning_content, answer) = reasoning::split(reasoning.as_ref(), &o.text);
            let (content, calls) = match &tool_names {
                Some(names) => {
                    tracing::debug!(text = %o.text, "choice {index} with tools");
                    tool_stream::split(&answer, names)
                }
                None => (Some(answer), Vec::new()),
            };
            let finish_reason = finish_reason(o.finish.reason, calls.len());
            let tool_calls = (!calls.is_empty()).then(|| calls.iter().map(|c| c.to_openai(&new_call_id())).collect());
            ChatChoice {
                index,
                message: AssistantMessage { role: "assistant", content, reasoning_content, tool_calls },
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
    mut telemetry: Telemetry,
    tool_names: Option<Vec<String>>,
    reasoning: Option<ReasoningSpec>,
    start: Instant,
    tx: mpsc::Sender<axum::response::sse::Event>,
) {
    let n = streams.len();
    let mut choices: Vec<StreamedChoice> = (0..n)
        .map(|_| StreamedChoice {
            thoughts: reasoning.map(ReasoningSplit::new),
            calls: tool_names.clone().map(ToolStream::new),
            ids: Vec::new(),
        })
        .collect();
    for index in 0..n {
        let first = ChunkChoice {
            index,
            delta: Delta { role: Some("assistant"), content: Some(String::new()), ..Default::default() },
            logprobs: None,
            finish_reason: None,
        };
        if !stream::send(&tx, &ctx.chunk(vec![first], None)).await {
            return;
        }
    }
    let finishes = stream::pump(streams, &tx, &state.metrics, start, &mut |index: usize, event: &Event| {
        let extras = telemetry.note(index, event);
        let chunk =
            |index: usize, delta: Delta, logprobs: Option<ChatLogprobs>, finish_reason: Option<&'static str>| {
                extras.data(&ctx.chunk(vec![ChunkChoice { index, delta, logprobs, finish_reason }], None))
            };
        let c = &mut choices[index];
        let (text, token, end) = match event {
            Event::Token(t) => (t.text.as_str(), Some(t), None),
            Event::Finished(f) => (f.text.as_str(), f.stop_token.as_ref(), Some(f)),
            Event::Error(_) => return vec![],
            // As llama.cpp: the assistant's role again, with the progress.
            Event::Progress(_) if extras.progress.is_some() => {
                return vec![chunk(index, Delta { role: Some("assistant"), ..Default::default() }, None, None)];
            }
            Event::Progress(_) => return vec![],
        };
        let mut deltas = c.deltas(text, end.is_some());
        // A token's logprobs ride on its first chunk; a token that shows nothing yet (held
        // by the tool reader or at a reasoning tag) gets an empty one of its own.
        let mut logprobs =
            token.filter(|_| ctx.logprobs).map(|t| ChatLogprobs { content: vec![chat_logprob(&model.tokenizer, t)] });
        if logprobs.is_some() && deltas.is_empty() {
            deltas.push(Delta { content: Some(String::new()), ..Default::default() });
        }
        let mut out: Vec<_> = deltas.into_iter().map(|d| chunk(index, d, logprobs.take(), None)).collect();
        if let Some(f) = end {
            let reason = finish_reason(f.reason, c.calls.as_ref().map_or(0, ToolStream::num_calls));
            out.push(chunk(index, Delta::default(), None, Some(reason)));
        }
        out
    })
    .await;
    let Some(finishes) = finishes else { return };
    let usage = include_usage.then(|| {
        let extras = Extras { timings: telemetry.timings(), progress: None };
        extras.data(&ctx.chunk(vec![], Some(stream::usage(num_prompt_tokens, &finishes.iter().collect::<Vec<_>>()))))
    });
    stream::close(&tx, usage).await;
}

/// One streamed choice's readers: thoughts apart (a reasoning model), then calls apart (with
/// tools offered); what is left is content.
struct StreamedChoice {
    thoughts: Option<ReasoningSplit>,
    calls: Option<ToolStream>,
    /// The ids given to the choice's calls, by call index.
    ids: Vec<String>,
}

impl StreamedChoice {
    /// The deltas for more of the choice's text (`end`: its last piece).
    fn deltas(&mut self, text: &str, end: bool) -> Vec<Delta> {
        let parts = reasoning::parts(self.thoughts.as_mut(), text, end);
        let mut out = Vec::new();
        for p in parts {
            match p {
                Part::Reasoning(r) => out.push(Delta { reasoning_content: Some(r), ..Default::default() }),
                Part::Answer(a) => match &mut self.calls {
                    Some(ts) => {
                        let pieces = ts.push(&a);
                        out.extend(pieces.into_iter().map(|p| self.delta(p)));
                    }
                    None if a.is_empty() => {}
                    None => out.push(Delta { content: Some(a), ..Default::default() }),
                },
            }
        }
        if end {
            if let Some(ts) = &mut self.calls {
                let rest = ts.finish();
                out.extend(rest.into_iter().map(|p| self.delta(p)));
            }
        }
        out
    }

    fn delta(&mut self, p: Piece) -> Delta {
        match p {
            Piece::Content(c) => Delta { content: Some(c), ..Default::default() },
            Piece::Call { index, name } => {
                self.ids.push(new_call_id());
                let call = serde_json::json!({"index": index, "id": self.ids[index], "type": "function", "function": {"name": name, "arguments": ""}});
                Delta { tool_calls: Some(vec![call]), ..Default::default() }
            }
            Piece::Args { index, text } => {
                let call = serde_json::json!({"index": index, "function": {"arguments": text}});
                Delta { tool_calls: Some(vec![call]), ..Default::default() }
            }
        }
    }
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
    let valid = validate::chat(&served.engine, req, tenant.as_ref().map(|t| &t.0), &state.settings.reasoning).await?;
    let n = valid.request.prompts().first().map_or(0, Vec::len);
    Ok(Json(serde_json::json!({ "input_tokens": n })).into_response())
}
