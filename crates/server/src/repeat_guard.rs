//! The repeat-call guard. Small models, handed a tool's result, often call the same tool with
//! the same arguments again, turn after turn, until the agent framework's turn limit. In
//! `auto` tool mode, when the conversation already holds a call and its result, this module
//! makes sure the choice does not emit that call (same name, equal arguments) again: the model
//! must answer instead. `validate::chat` arms it (`GuardSpec::new`);
//! `ValidChat::submit` wraps each choice's engine stream in `guarded`. The request field
//! `repeat_call_guard: false` turns it off.
//!
//! How: the choice's tokens pass through as they come while they are text; from the moment
//! a call may have opened they are held until the choice ends. If a held call repeats one of
//! the conversation's, the held tokens are dropped and the choice goes on from the last token
//! sent — a new engine sequence whose prompt is the old prompt plus every token sent, held to
//! text in which no call opens in any format. So the client sees one consistent turn,
//! streamed or not; the tokens it was sent are never taken back.
//!
//! The continuation may not call another tool either. Measured (scripts/eval_agents.py), a
//! continuation offered the other tools (lazy `auto` grammar, then text only at a second
//! repeat) and one restarted with tool_hint.rs's hint did no better on either Coder model than
//! text alone, and a grammar of "text, then calls to the other tools" does not work: the
//! free-text lexeme cannot end where a call's literal begins.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use slm_engine::{ConstraintSpec, EngineHandle, Event, Finished, Grammar, Request, RequestStream, TokenEvent};

use crate::error::ApiError;
use crate::openai::{ChatMessage, Role};
use crate::stream::EventStream;
use crate::tool_format::FORMATS;
use crate::tool_stream::{Piece, ToolStream};
use crate::tools::{Offered, ToolChoice};

/// What the guard of one request knows: the conversation's calls that have results, and the
/// offered tools' names (what the answer reads as calls).
#[derive(Debug)]
pub struct GuardSpec {
    prior: Vec<(String, Value)>,
    names: Vec<String>,
}

/// The calls of `msgs` (name, parsed arguments) that a later tool message answered: by
/// `tool_call_id`, or, for a tool message without one, the oldest call still unanswered.
pub fn answered_calls(msgs: &[ChatMessage]) -> Vec<(String, Value)> {
    let mut calls: Vec<(Option<String>, String, Value, bool)> = Vec::new();
    for m in msgs {
        match m.role {
            Role::Assistant => {
                for c in m.tool_calls.iter().flatten() {
                    let Some(name) = c.pointer("/function/name").and_then(Value::as_str) else { continue };
                    let args = match c.pointer("/function/arguments") {
                        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
                        Some(v) => v.clone(),
                        None => Value::Object(Default::default()),
                    };
                    let id = c.get("id").and_then(Value::as_str).map(str::to_string);
                    calls.push((id, name.to_string(), args, false));
                }
            }
            Role::Tool => {
                let by_id = m.tool_call_id.as_ref().and_then(|id| calls.iter().position(|c| c.0.as_ref() == Some(id)));
                if let Some(i) = by_id.or_else(|| calls.iter().position(|c| !c.3)) {
                    calls[i].3 = true;
                }
            }
            _ => {}
        }
    }
    calls.into_iter().filter(|c| c.3).map(|c| (c.1, c.2)).collect()
}

impl GuardSpec {
    /// The guard for a request offering `tools` in `auto` mode, or None when there is
    /// nothing to guard against (no answered call) or the choice is not the model's.
    pub fn new(msgs: &[ChatMessage], offered: &Offered) -> Option<Self> {
        if offered.choice != ToolChoice::Auto {
            return None;
        }
        let prior = answered_calls(msgs);
        (!prior.is_empty()).then(|| Self { prior, names: offered.names.clone() })
    }

    /// Whether a call (its arguments as the model wrote them) repeats an answered one.
    pub fn repeats(&self, name: &str, arguments: &str) -> bool {
        let Ok(args) = serde_json::from_str::<Value>(arguments) else { return false };
        self.prior.iter().any(|(n, a)| n == name && *a == args)
    }

    /// The constraint of a choice sent back: text in which no call opens, in any format.
    pub fn answer_only() -> ConstraintSpec {
        ConstraintSpec { grammar: Grammar::Lark(format!("start: TEXT\n{}", text_rule())), triggers: Vec::new() }
    }
}

/// `TEXT`: any non-empty text in which no call opens in any format (no `<tool_call>`, no
/// `[TOOL_CALLS]`, no `{"name"`).
fn text_rule() -> String {
    let mut openings: Vec<String> = FORMATS
        .iter()
        .filter(|f| !f.open.is_empty())
        .map(|f| serde_json::to_string(f.open).expect("a string serializes"))
        .collect();
    openings.push(r#"/\{[ \t\n]*"name"/"#.to_string());
    format!("TEXT: /(.|\\n)+/ & ~(/(.|\\n)*/ ({}) /(.|\\n)*/)\n", openings.join(" | "))
}

/// Wraps the engine stream of a choice submitted as `request`.
pub fn guarded(first: RequestStream, request: Request, spec: Arc<GuardSpec>, engine: EngineHandle) -> EventStream {
    let g = Guarded {
        shadow: ToolStream::new(spec.names.clone()),
        spec,
        engine,
        request,
        inner: first,
        text: String::new(),
        held: VecDeque::new(),
        calls: Vec::new(),
        sent_ids: Vec::new(),
        sent_len: 0,
        lag: String::new(),
        first_run: None,
        num_sent_before_run: 0,
        num_reruns: 0,
        ready: VecDeque::new(),
        done: false,
    };
    stream::unfold(g, |mut g| async move { g.next().await.map(|e| (e, g)) }).boxed()
}

struct Guarded {
    spec: Arc<GuardSpec>,
    engine: EngineHandle,
    /// The choice's request as first submitted.
    request: Request,
    inner: RequestStream,
    /// Reads the text of the current run the way the answer's own `ToolStream` will.
    shadow: ToolStream,
    /// The text fed to `shadow`: what was sent, then what is held.
    text: String,
    /// Tokens not sent yet, each with the end of its text in `text`.
    held: VecDeque<(TokenEvent, usize)>,
    /// The current run's calls: name and arguments text.
    calls: Vec<(String, String)>,
    /// Every token sent, over all runs.
    sent_ids: Vec<u32>,
    /// Bytes of `text` the client has (or gets with `lag`).
    sent_len: usize,
    /// Text of sent tokens that the engine had not released yet when the run was cut (a
    /// stop string's possible start): it goes out ahead of the next text.
    lag: String,
    /// The first run's prompt and cached token counts (what the answer reports).
    first_run: Option<(usize, usize)>,
    num_sent_before_run: usize,
    num_reruns: usize,
    ready: VecDeque<Event>,
    done: bool,
}

impl Guarded {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            match self.inner.next().await {
                None => self.done = true,
                Some(Event::Token(t)) => self.token(t),
                Some(Event::Finished(f)) => self.finished(f).await,
                Some(Event::Progress(p)) => self.ready.push_back(Event::Progress(p)),
                Some(Event::Error(e)) => {
                    self.ready.push_back(Event::Error(e));
                    self.done = true;
                }
            }
        }
    }

    fn note(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Call { name, .. } => self.calls.push((name, String::new())),
                Piece::Args { text, .. } => {
                    if let Some(c) = self.calls.last_mut() {
                        c.1.push_str(&text);
                    }
                }
                Piece::Content(_) => {}
            }
        }
    }

    fn token(&mut self, t: TokenEvent) {
        self.text.push_str(&t.text);
        let pieces = self.shadow.push(&t.text);
        self.note(pieces);
        self.held.push_back((t, self.text.len()));
        if self.shadow.call_may_be_open() {
            return;
        }
        // Every held token up to the last one with text that is all settled content. A token
        // without text (a cut character) waits for the one that completes it.
        let settled = self.shadow.settled();
        if let Some(k) = self.held.iter().rposition(|(t, end)| *end <= settled && !t.text.is_empty()) {
            for _ in 0..=k {
                let (t, end) = self.held.pop_front().expect("k is in range");
                self.send(t, end);
            }
        }
    }

    fn send(&mut self, mut t: TokenEvent, end: usize) {
        if !self.lag.is_empty() {
            t.text.insert_str(0, &std::mem::take(&mut self.lag));
        }
        self.sent_ids.push(t.token);
        self.sent_len = end;
        self.ready.push_back(Event::Token(t));
    }

    async fn finished(&mut self, mut f: Finished) {
        self.text.push_str(&f.text);
        let pieces = self.shadow.push(&f.text);
        self.note(pieces);
        let pieces = self.shadow.finish();
        self.note(pieces);
        let (num_prompt, num_cached) = *self.first_run.get_or_insert((f.num_prompt_tokens, f.num_cached_tokens));
        let repeated = self.calls.iter().find(|(n, a)| self.spec.repeats(n, a)).map(|c| c.0.clone());
        if let Some(name) = repeated.filter(|_| self.num_reruns == 0) {
            match self.rerun(name).await {
                Ok(()) => return,
                Err(e) => tracing::warn!("repeat-call guard: the choice goes out as it is: {}", e.message),
            }
        }
        while let Some((t, end)) = self.held.pop_front() {
            self.send(t, end);
        }
        f.text.insert_str(0, &std::mem::take(&mut self.lag));
        f.num_prompt_tokens = num_prompt;
        f.num_cached_tokens = num_cached;
        f.num_generated_tokens += self.num_sent_before_run;
        self.ready.push_back(Event::Finished(f));
        self.done = true;
    }

    /// Drops what is held and continues the choice from the last token sent, as text only
    /// (`name` is the tool whose call repeated).
    async fn rerun(&mut self, name: String) -> Result<(), ApiError> {
        let spec = GuardSpec::answer_only();
        let model = self.engine.model().clone();
        let compiler = model.clone();
        let constraint = tokio::task::spawn_blocking(move || compiler.grammar.compile(&spec))
            .await
            .map_err(|e| ApiError::internal(format!("grammar compilation failed: {e}")))??;
        let room = self.engine.max_model_len().saturating_sub(self.request.prompt.len() + self.sent_ids.len());
        let max_tokens = self.request.max_tokens.saturating_sub(self.sent_ids.len()).min(room);
        if max_tokens == 0 {
            return Err(ApiError::internal("no tokens left to continue with"));
        }
        // The client has the first `sent_len` bytes; the sent tokens may stand for more (text
        // the engine was holding back), which goes out first.
        let decoded = model.tokenizer.decode(&self.sent_ids, false);
        let sent = &self.text[..self.sent_len];
        let Some(lag) = decoded.strip_prefix(sent) else {
            return Err(ApiError::internal("the sent tokens do not decode to the sent text"));
        };
        let mut req = self.request.clone();
        req.prompt.extend_from_slice(&self.sent_ids);
        // The client has its tokens already: no prompt progress for the continuation.
        req.report_progress = false;
        req.max_tokens = max_tokens;
        req.constraint = Some(constraint);
        self.inner = self.engine.submit(req)?;
        tracing::debug!(tool = %name, num_sent = self.sent_ids.len(), "repeat-call guard: a repeated call was dropped");
        self.lag.push_str(lag);
        self.shadow = ToolStream::new(self.spec.names.clone());
        let _ = self.shadow.push(&decoded);
        self.text = decoded;
        self.sent_len = self.text.len();
        self.held.clear();
        self.calls.clear();
        self.num_sent_before_run = self.sent_ids.len();
        self.num_reruns += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(v: Value) -> ChatMessage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_answered_calls_count_and_arguments_compare_as_json() {
        let msgs = vec![
            msg(json!({"role": "user", "content": "weather in Paris and Rome?"})),
            msg(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]})),
            msg(json!({"role": "tool", "tool_call_id": "b", "content": "{\"t\": 20}"})),
        ];
        assert_eq!(answered_calls(&msgs), vec![("get_weather".to_string(), json!({"city": "Rome"}))]);
        let offered = Offered { names: vec!["get_weather".into()], choice: ToolChoice::Auto };
        let g = GuardSpec::new(&msgs, &offered).unwrap();
        assert!(g.repeats("get_weather", "{\"city\":\"Rome\"}"));
        assert!(!g.repeats("get_weather", "{\"city\": \"Paris\"}"));
        assert!(!g.repeats("other", "{\"city\": \"Rome\"}"));
        // A tool message without an id answers the oldest open call.
        let mut msgs = msgs;
        msgs.push(msg(json!({"role": "tool", "content": "{}"})));
        assert_eq!(answered_calls(&msgs).len(), 2);
        // Required and named choices are the client's decision: not guarded.
        let required = Offered { names: vec!["get_weather".into()], choice: ToolChoice::Required };
        assert!(GuardSpec::new(&msgs, &required).is_none());
        assert!(GuardSpec::new(&msgs[..1], &offered).is_none());
    }

    #[test]
    fn the_text_rule_names_every_format_s_opening() {
        let rule = text_rule();
        assert!(rule.contains("\"<tool_call>\"") && rule.contains("\"[TOOL_CALLS]\""), "{rule}");
        assert!(rule.starts_with("TEXT: /(.|\\n)+/ & ~("), "{rule}");
    }
}
