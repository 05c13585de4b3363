//! One assistant turn, for the API shapes that answer with a single message (OpenAI
//! Responses, Anthropic Messages). Their adapters turn a request into a chat request, so the
//! prompt rendering, tool offering and constraints are chat's (validate.rs, grammar.rs); this
//! module runs it and hands the turn back as content and tool calls: whole (`run`), or as
//! `TurnEvent`s to the adapter's `TurnWire` through the one SSE pump (`stream`). Tool calls
//! are read by the same `ToolStream` as chat's, streamed or not.
//!
//! ```text
//!  adapter request → ChatCompletionRequest → validate::chat → submit
//!      → engine events → ToolStream → TurnEvent → TurnWire (its own SSE events)
//! ```

use std::time::Instant;

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use slm_engine::{Event, FinishReason};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::reasoning::{self, Part, ReasoningSplit};
use crate::state::AppState;
use crate::stream::{self, Wire};
use crate::telemetry::{Extras, Telemetry};
use crate::tool_stream::{self, Piece, ToolStream};
use crate::validate::ValidChat;

/// A tool call of the turn, with the id its API shape gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// How the turn ended, and what it used.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnEnd {
    pub reason: FinishReason,
    /// The request's stop string that ended it, if one did.
    pub stop_string: Option<String>,
    pub num_calls: usize,
    pub num_prompt_tokens: usize,
    pub num_cached_tokens: usize,
    pub num_output_tokens: usize,
    /// Of the output, the tokens of thoughts (reasoning.rs).
    pub num_reasoning_tokens: usize,
}

impl TurnEnd {
    /// The model stopped on its own after calling tools (not cut off mid-call).
    pub fn made_calls(&self) -> bool {
        self.num_calls > 0 && self.reason == FinishReason::Stop
    }
}

/// A whole turn: a reasoning model's thoughts, the text around the calls, and the calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub reasoning: Option<String>,
    pub content: Option<String>,
    pub calls: Vec<Call>,
    pub end: TurnEnd,
}

/// The turn as it is generated.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// More of the thoughts (they come before any text or call).
    Reasoning(String),
    Text(String),
    /// Call `index` (counted from 0 within the turn) starts.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments (a JSON text once joined).
    CallArgs {
        index: usize,
        text: String,
    },
    End(TurnEnd),
}

/// An API shape's stream: its opening events, its events for each `TurnEvent`, its failure
/// event, and an optional keep-alive event.
pub trait TurnWire: Send + 'static {
    /// A new tool-call id in this shape's style (`call_…`, `toolu_…`).
    fn call_id(&self) -> String;
    fn start(&mut self) -> Vec<SseEvent>;
    fn event(&mut self, e: TurnEvent) -> Vec<SseEvent>;
    fn error(&mut self, e: ApiError) -> Vec<SseEvent>;
    fn ping(&self) -> Option<SseEvent> {
        None
    }
    /// llama.cpp's streaming extras for the engine event about to become `TurnEvent`s (its
    /// timings; for a progress report, the progress): a shape that has a place for them keeps
    /// the timings for the events that follow and answers a progress report with events of
    /// its own. Others ignore them.
    fn telemetry(&mut self, _extras: Extras) -> Vec<SseEvent> {
        Vec::new()
    }
}

fn end_of(f: &slm_engine::Finished, num_calls: usize, num_reasoning_tokens: usize) -> TurnEnd {
    TurnEnd {
        num_reasoning_tokens,
        reason: f.reason,
        stop_string: f.stop_string.clone(),
        num_calls,
        num_prompt_tokens: f.num_prompt_tokens,
        num_cached_tokens: f.num_cached_tokens,
        num_output_tokens: f.num_generated_tokens,
    }
}

/// Runs the turn to its end (non-streamed answers); `call_id` names each call.
pub async fn run(
    state: &AppState,
    valid: &ValidChat,
    streams: Vec<stream::EventStream>,
    start: Instant,
    call_id: impl Fn() -> String,
) -> Result<Turn, ApiError> {
    let mut outs = stream::collect(streams, &state.metrics, start).await.map_err(|e| valid.request.run_error(e))?;
    let o = outs.pop().ok_or_else(|| ApiError::internal("the engine returned no output for the turn"))?;
    let spec = valid.reasoning.as_ref();
    let (reasoning, answer) = reasoning::split(spec, &o.text);
    let (content, calls) = match &valid.tool_names {
        Some(names) => tool_stream::split(&answer, names),
        None => (Some(answer), Vec::new()),
    };
    let calls: Vec<Call> =
        calls.into_iter().map(|c| Call { id: call_id(), name: c.name, arguments: c.arguments }).collect();
    let num_reasoning = reasoning::num_reasoning_tokens(spec, o.tokens.iter().map(|t| t.text.as_str()));
    let end = end_of(&o.finish, calls.len(), num_reasoning);
    Ok(Turn { reasoning, content: content.filter(|c| !c.is_empty()), calls, end })
}

/// Streams the turn through `wire` as an SSE response.
pub fn stream(
    state: AppState,
    valid: &ValidChat,
    streams: Vec<stream::EventStream>,
    start: Instant,
    wire: impl TurnWire,
) -> Response {
    let (tx, rx) = mpsc::channel(64);
    let s = valid.request.sampling();
    let num_prompt = valid.request.num_prompt_tokens();
    let mut pump = TurnPump {
        telemetry: Telemetry::new(s.return_progress, s.timings_per_token, start, &[num_prompt]),
        reasoning: valid.reasoning.map(ReasoningSplit::new),
        tools: valid.tool_names.clone().map(ToolStream::new),
        constraint_param: valid.request.constraint_param(),
        wire,
    };
    tokio::spawn(async move {
        for e in pump.wire.start() {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        stream::pump(streams, &tx, &state.metrics, start, &mut pump).await;
    });
    stream::sse(rx)
}

/// Engine events → turn events → the wire's SSE events.
struct TurnPump<W> {
    telemetry: Telemetry,
    /// Splits thoughts from the answer, for a reasoning model.
    reasoning: Option<ReasoningSplit>,
    /// The call reader, when tools are offered.
    tools: Option<ToolStream>,
    constraint_param: &'static str,
    wire: W,
}

impl<W: TurnWire> TurnPump<W> {
    /// A choice's text as it comes (`end`: its last piece): thoughts first, then the answer.
    fn text(&mut self, text: &str, end: bool, out: &mut Vec<TurnEvent>) {
        let parts = reasoning::parts(self.reasoning.as_mut(), text, end);
        for p in parts {
            match p {
                Part::Reasoning(t) => out.push(TurnEvent::Reasoning(t)),
                Part::Answer(t) => self.answer(&t, out),
            }
        }
    }

    fn answer(&mut self, text: &str, out: &mut Vec<TurnEvent>) {
        let pieces = match &mut self.tools {
            Some(ts) => ts.push(text),
            None if text.is_empty() => return,
            None => return out.push(TurnEvent::Text(text.to_string())),
        };
        self.pieces(pieces, out);
    }

    fn pieces(&mut self, pieces: Vec<Piece>, out: &mut Vec<TurnEvent>) {
        for p in pieces {
            out.push(match p {
                Piece::Content(c) => TurnEvent::Text(c),
                Piece::Call { index, name } => TurnEvent::CallStart { index, id: self.wire.call_id(), name },
                Piece::Args { index, text } => TurnEvent::CallArgs { index, text },
            });
        }
    }
}

impl<W: TurnWire> Wire for TurnPump<W> {
    fn event(&mut self, index: usize, event: &Event) -> Vec<SseEvent> {
        let extras = self.telemetry.note(index, event);
        let mut out = self.wire.telemetry(extras);
        let mut events = Vec::new();
        match event {
            Event::Token(t) => self.text(&t.text, false, &mut events),
            Event::Finished(f) => {
                self.text(&f.text, true, &mut events);
                if let Some(ts) = &mut self.tools {
                    let rest = ts.finish();
                    self.pieces(rest, &mut events);
                }
                let num_calls = self.tools.as_ref().map_or(0, ToolStream::num_calls);
                let num_reasoning = self.reasoning.as_ref().map_or(0, ReasoningSplit::num_reasoning_pushes);
                events.push(TurnEvent::End(end_of(f, num_calls, num_reasoning)));
            }
            Event::Error(_) | Event::Progress(_) => {}
        }
        out.extend(events.into_iter().flat_map(|e| self.wire.event(e)));
        out
    }

    fn error(&mut self, e: ApiError) -> Vec<SseEvent> {
        self.wire.error(e.for_param(self.constraint_param))
    }

    fn ping(&self) -> Option<SseEvent> {
        self.wire.ping()
    }
}
