//! From engine events to responses: merging the `n` choices of a request into one event
//! stream, collecting them for a JSON answer, recording latency metrics, and serving an SSE
//! body that ends with `data: [DONE]`. A client that goes away drops the body, which drops the
//! producing task and with it the engine streams: the engine aborts them and frees their blocks.

use std::convert::Infallible;
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use slm_engine::{Event, Finished, RequestStream, TokenEvent, Tokenizer};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::{PromptTokensDetails, TokenLogprob, TopLogprob, Usage};

/// One choice's engine events, as the answer reads them: the engine's stream itself, or a
/// wrapper over it (repeat_guard.rs). Dropping it aborts the sequence.
pub type EventStream = BoxStream<'static, Event>;

/// An engine stream as an `EventStream`.
pub fn events(s: RequestStream) -> EventStream {
    stream::unfold(s, |mut s| async move { s.next().await.map(|e| (e, s)) }).boxed()
}

/// Events of all choices, tagged with the choice index, until every choice has ended.
pub fn merge(streams: Vec<EventStream>) -> BoxStream<'static, (usize, Event)> {
    let per_choice = streams.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i, e)).boxed());
    stream::select_all(per_choice).boxed()
}

/// Records time-to-first-token and inter-token latency per choice.
pub struct Timing {
    start: Instant,
    last: Vec<Option<Instant>>,
}

impl Timing {
    pub fn new(start: Instant, n: usize) -> Self {
        Self { start, last: vec![None; n] }
    }

    pub fn token(&mut self, choice: usize, metrics: &Metrics) {
        let now = Instant::now();
        match self.last[choice] {
            None => metrics.time_to_first_token.observe((now - self.start).as_secs_f64()),
            Some(t) => metrics.inter_token_latency.observe((now - t).as_secs_f64()),
        }
        self.last[choice] = Some(now);
    }
}

pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<TokenEvent>,
    pub finish: Finished,
}

/// Runs every choice to the end (non-streaming responses).
pub async fn collect(
    streams: Vec<EventStream>,
    metrics: &Metrics,
    start: Instant,
) -> Result<Vec<ChoiceOutput>, ApiError> {
    let n = streams.len();
    let mut timing = Timing::new(start, n);
    let mut texts = vec![String::new(); n];
    let mut tokens: Vec<Vec<TokenEvent>> = vec![Vec::new(); n];
    let mut finished: Vec<Option<Finished>> = vec![None; n];
    let mut merged = merge(streams);
    while let Some((i, e)) = merged.next().await {
        match e {
            Event::Token(t) => {
                timing.token(i, metrics);
                texts[i].push_str(&t.text);
                tokens[i].push(t);
            }
            Event::Finished(f) => {
                texts[i].push_str(&f.text);
                finished[i] = Some(f);
            }
            Event::Error(e) => return Err(e.into()),
            Event::Progress(_) => {}
        }
    }
    texts
        .into_iter()
        .zip(tokens)
        .zip(finished)
        .map(|((text, tokens), f)| {
            Ok(ChoiceOutput {
                text,
                tokens,
                finish: f.ok_or_else(|| ApiError::internal("the engine ended a request without finishing it"))?,
            })
        })
        .collect()
}

pub fn usage(num_prompt_tokens: usize, finishes: &[&Finished]) -> Usage {
    let completion: usize = finishes.iter().map(|f| f.num_generated_tokens).sum();
    let cached = finishes.iter().map(|f| f.num_cached_tokens).max().unwrap_or(0);
    Usage {
        prompt_tokens: num_prompt_tokens,
        completion_tokens: completion,
        total_tokens: num_prompt_tokens + completion,
        prompt_tokens_details: PromptTokensDetails { cached_tokens: cached },
    }
}

pub fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let b = tok.token_bytes(id, true).to_vec();
    (String::from_utf8_lossy(&b).into_owned(), b)
}

/// OpenAI chat logprob entry of one token.
pub fn chat_logprob(tok: &Tokenizer, t: &TokenEvent) -> TokenLogprob {
    let (token, bytes) = token_text(tok, t.token);
    let top_logprobs = t
        .top_logprobs
        .iter()
        .map(|(id, lp)| {
            let (token, bytes) = token_text(tok, *id);
            TopLogprob { token, logprob: *lp, bytes }
        })
        .collect();
    TokenLogprob { token, logprob: t.logprob, bytes, top_logprobs }
}

/// An SSE response fed by a channel of events.
pub fn sse(rx: mpsc::Receiver<SseEvent>) -> Response {
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    let mut r = Sse::new(body).keep_alive(KeepAlive::default()).into_response();
    // Proxies must pass events on as they come (nginx buffers unless told not to).
    let h = r.headers_mut();
    h.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    r
}

/// A data-only SSE event (OpenAI's chat and completion chunks).
pub fn data<T: serde::Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).expect("serializable"))
}

/// A named SSE event (`event: NAME`), as the Responses and Messages streams send them.
pub fn named<T: serde::Serialize>(name: &str, v: &T) -> SseEvent {
    SseEvent::default().event(name).data(serde_json::to_string(v).expect("serializable"))
}

/// Sends one SSE payload; false when the client is gone.
pub async fn send<T: serde::Serialize>(tx: &mpsc::Sender<SseEvent>, v: &T) -> bool {
    tx.send(data(v)).await.is_ok()
}

/// What an API shape makes of the engine's events: the payloads for one token or finish
/// event of choice `index`, for a failure, and an optional keep-alive event sent while
/// nothing else is (Anthropic's `ping`).
pub trait Wire {
    fn event(&mut self, index: usize, event: &Event) -> Vec<SseEvent>;

    /// The engine failed the request: OpenAI's error object by default.
    fn error(&mut self, e: ApiError) -> Vec<SseEvent> {
        vec![data(&e.body())]
    }

    fn ping(&self) -> Option<SseEvent> {
        None
    }
}

/// Chat and completions map events with a closure.
impl<F: FnMut(usize, &Event) -> Vec<SseEvent>> Wire for F {
    fn event(&mut self, index: usize, event: &Event) -> Vec<SseEvent> {
        self(index, event)
    }
}

/// How long a stream may be silent before the wire's ping is sent.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Streams every choice's events through `wire` until all choices end. Returns their
/// finishes, or `None` when the client went away or the engine failed (the wire's error
/// payload was sent then). Dropping the merged streams on return aborts whatever still runs.
pub async fn pump(
    streams: Vec<EventStream>,
    tx: &mpsc::Sender<SseEvent>,
    metrics: &Metrics,
    start: Instant,
    wire: &mut impl Wire,
) -> Option<Vec<Finished>> {
    let mut timing = Timing::new(start, streams.len());
    let mut finishes = Vec::new();
    let mut merged = merge(streams);
    let ping = wire.ping();
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return None,
            e = merged.next() => e,
            _ = tokio::time::sleep(PING_INTERVAL), if ping.is_some() => {
                if tx.send(ping.clone().expect("checked")).await.is_err() {
                    return None;
                }
                continue;
            }
        };
        let Some((index, event)) = next else { return Some(finishes) };
        if let Event::Error(e) = event {
            for payload in wire.error(ApiError::from(e)) {
                let _ = tx.send(payload).await;
            }
            return None;
        }
        if matches!(event, Event::Token(_)) {
            timing.token(index, metrics);
        }
        for payload in wire.event(index, &event) {
            if tx.send(payload).await.is_err() {
                return None;
            }
        }
        if let Event::Finished(f) = event {
            finishes.push(f);
        }
    }
}

/// The optional usage payload, then `[DONE]` (OpenAI's chat and completion streams).
pub async fn close(tx: &mpsc::Sender<SseEvent>, usage: Option<SseEvent>) {
    if let Some(u) = usage {
        if tx.send(u).await.is_err() {
            return;
        }
    }
    let _ = tx.send(SseEvent::default().data("[DONE]")).await;
}
