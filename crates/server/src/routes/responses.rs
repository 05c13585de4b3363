//! The OpenAI Responses API: `POST /v1/responses` (one JSON response, or the documented
//! event stream with `sequence_number`s), `GET`/`DELETE /v1/responses/{id}`, `GET
//! /v1/responses/{id}/input_items` and `POST /v1/responses/input_tokens`. A thin adapter:
//! the input items (after the stored conversation of `previous_response_id`) become a chat
//! request (responses_api.rs) that runs as one turn (turn.rs); stored responses live in the
//! `ResponseStore`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use slm_engine::EngineHandle;

use super::{new_call_id, parse_for};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::reasoning::ReasoningConfig;
use crate::response_store::{self, ResponseStore, Stored};
use crate::responses_api::{self as api, Meta, ResponsesRequest, FIELD_NAMES};
use crate::state::AppState;
use crate::stream;
use crate::telemetry::Extras;
use crate::turn::{self, TurnEnd, TurnEvent, TurnWire};
use crate::validate::{self, ValidChat};

/// Runs `f` on the store, on the blocking pool (SQLite calls block).
async fn on_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&ResponseStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.settings.responses.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::internal(format!("the response store failed: {e}")))?
}

/// The stored conversation before this turn: each earlier response's input, then its output.
async fn history(state: &AppState, owner: &str, previous: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let Some(id) = previous.map(String::from) else { return Ok(Vec::new()) };
    let owner = owner.to_string();
    let chain = on_store(state, move |s| s.chain(&owner, &id)).await?;
    Ok(chain
        .into_iter()
        .flat_map(|r| {
            let output = r.response.get("output").and_then(Value::as_array).cloned().unwrap_or_default();
            r.input_items.into_iter().chain(output)
        })
        .collect())
}

/// The turn's validated chat request. With `truncation: "auto"`, the oldest items are
/// dropped until the prompt fits (a tool output goes with the call before it).
async fn prepare(
    engine: &EngineHandle,
    req: &ResponsesRequest,
    mut items: Vec<Value>,
    tenant: Option<&Tenant>,
    reasoning: &ReasoningConfig,
) -> Result<ValidChat, ApiError> {
    loop {
        let chat = api::chat_request(req, &items)?;
        match validate::chat(engine, chat, tenant, reasoning).await {
            Err(e)
                if req.truncation.as_deref() == Some("auto")
                    && e.code == Some("context_length_exceeded")
                    && e.param.as_deref() == Some("messages")
                    && items.len() > 1 =>
            {
                items.remove(0);
                while items.len() > 1 && items[0]["type"] == "function_call_output" {
                    items.remove(0);
                }
            }
            r => return r.map_err(|e| e.renamed(FIELD_NAMES)),
        }
    }
}

/// Keeps a finished response, when the request asked to (`store`, default true).
#[derive(Clone)]
struct Saver {
    store: Arc<ResponseStore>,
    owner: String,
    input: Vec<Value>,
    previous: Option<String>,
}

impl Saver {
    fn save(&self, meta: &Meta, response: &Value) -> Result<(), ApiError> {
        let r = Stored {
            id: meta.id.clone(),
            created_at: meta.created_at,
            previous_response_id: self.previous.clone(),
            input_items: self.input.clone(),
            response: response.clone(),
        };
        self.store.put(&self.owner, &r)
    }
}

pub async fn create(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let (req, served) = parse_for::<ResponsesRequest>(&state, body).await?;
    let tenant = tenant.map(|t| t.0);
    let owner = response_store::owner(tenant.as_ref());
    let input = api::input_items(req.input.as_ref())?;
    let mut items = history(&state, &owner, req.previous_response_id.as_deref()).await?;
    items.extend(input.iter().cloned());
    let valid = prepare(&served.engine, &req, items, tenant.as_ref(), &state.settings.reasoning).await?;
    let streams = valid.submit(&served).map_err(|e| e.renamed(FIELD_NAMES))?;
    let meta = Meta::new(&req, &served.id);
    let saver = req.store.unwrap_or(true).then(|| Saver {
        store: state.settings.responses.clone(),
        owner,
        input,
        previous: req.previous_response_id.clone(),
    });
    if req.stream.unwrap_or(false) {
        let wire = ResponsesWire {
            meta,
            saver,
            seq: 0,
            output: Vec::new(),
            open_reasoning: None,
            open_message: None,
            calls: Vec::new(),
            timings: None,
        };
        return Ok(turn::stream(state.clone(), &valid, streams, start, wire));
    }
    let turn = turn::run(&state, &valid, streams, start, new_call_id).await.map_err(|e| e.renamed(FIELD_NAMES))?;
    let response = meta.object(api::final_status(&turn.end), api::output_items(&turn), Some(&turn.end), None);
    if let Some(s) = saver {
        let (meta, r) = (meta.clone(), response.clone());
        on_store(&state, move |_| s.save(&meta, &r)).await?;
    }
    Ok(Json(response).into_response())
}

/// The Responses event stream of one turn: items open as the model starts them and close
/// with their final content; `sequence_number` counts every event.
struct ResponsesWire {
    meta: Meta,
    saver: Option<Saver>,
    seq: u64,
    /// The output items so far (what `response.completed` carries).
    output: Vec<Value>,
    /// The reasoning item thoughts are streaming into.
    open_reasoning: Option<usize>,
    /// The message item text is streaming into.
    open_message: Option<usize>,
    /// Per call of the turn: its output index, and whether it is still open.
    calls: Vec<(usize, bool)>,
    /// llama.cpp's `timings` as of the engine event being streamed (`timings_per_token`).
    timings: Option<Value>,
}

impl ResponsesWire {
    fn ev(&mut self, kind: &str, body: Value) -> SseEvent {
        let mut v = json!({"type": kind, "sequence_number": self.seq});
        if let (Value::Object(m), Value::Object(b)) = (&mut v, body) {
            m.extend(b);
            if let Some(t) = &self.timings {
                m.insert("timings".into(), t.clone());
            }
        }
        self.seq += 1;
        stream::named(kind, &v)
    }

    fn close_reasoning(&mut self, out: &mut Vec<SseEvent>) {
        let Some(i) = self.open_reasoning.take() else { return };
        self.output[i]["status"] = json!("completed");
        let item = self.output[i].clone();
        out.push(self.ev(
            "response.reasoning_text.done",
            json!({"item_id": item["id"], "output_index": i, "content_index": 0, "text": item["content"][0]["text"]}),
        ));
        out.push(self.ev("response.output_item.done", json!({"output_index": i, "item": item})));
    }

    fn close_message(&mut self, out: &mut Vec<SseEvent>) {
        let Some(i) = self.open_message.take() else { return };
        self.output[i]["status"] = json!("completed");
        let item = self.output[i].clone();
        let (id, part) = (item["id"].clone(), item["content"][0].clone());
        out.push(self.ev(
            "response.output_text.done",
            json!({"item_id": id, "output_index": i, "content_index": 0, "text": part["text"], "logprobs": []}),
        ));
        out.push(self.ev(
            "response.content_part.done",
            json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
        ));
        out.push(self.ev("response.output_item.done", json!({"output_index": i, "item": item})));
    }

    fn close_calls(&mut self, out: &mut Vec<SseEvent>) {
        for k in 0..self.calls.len() {
            let (i, open) = self.calls[k];
            if !open {
                continue;
            }
            self.calls[k].1 = false;
            self.output[i]["status"] = json!("completed");
            let item = self.output[i].clone();
            out.push(self.ev(
                "response.function_call_arguments.done",
                json!({"item_id": item["id"], "output_index": i, "name": item["name"], "arguments": item["arguments"]}),
            ));
            out.push(self.ev("response.output_item.done", json!({"output_index": i, "item": item})));
        }
    }

    fn end(&mut self, end: TurnEnd, out: &mut Vec<SseEvent>) {
        self.close_reasoning(out);
        self.close_message(out);
        self.close_calls(out);
        let status = api::final_status(&end);
        let response = self.meta.object(status, self.output.clone(), Some(&end), None);
        if let Some(s) = &self.saver {
            if let Err(e) = s.save(&self.meta, &response) {
                tracing::warn!("cannot store response {}: {}", self.meta.id, e.message);
            }
        }
        out.push(self.ev(&format!("response.{status}"), json!({"response": response})));
    }
}

impl TurnWire for ResponsesWire {
    fn call_id(&self) -> String {
        new_call_id()
    }

    fn start(&mut self) -> Vec<SseEvent> {
        let r = self.meta.object("in_progress", Vec::new(), None, None);
        vec![
            self.ev("response.created", json!({"response": r})),
            self.ev("response.in_progress", json!({"response": r})),
        ]
    }

    fn event(&mut self, e: TurnEvent) -> Vec<SseEvent> {
        let mut out = Vec::new();
        match e {
            TurnEvent::Reasoning(t) => {
                let i = match self.open_reasoning {
                    Some(i) => i,
                    None => {
                        let i = self.output.len();
                        let mut item = api::reasoning_item(&api::new_item_id("rs"), "");
                        item["status"] = json!("in_progress");
                        self.output.push(item.clone());
                        out.push(self.ev("response.output_item.added", json!({"output_index": i, "item": item})));
                        self.open_reasoning = Some(i);
                        i
                    }
                };
                let text = self.output[i]["content"][0]["text"].as_str().unwrap_or("").to_string() + &t;
                self.output[i]["content"][0]["text"] = json!(text);
                let id = self.output[i]["id"].clone();
                out.push(self.ev(
                    "response.reasoning_text.delta",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t}),
                ));
            }
            TurnEvent::Text(t) => {
                self.close_reasoning(&mut out);
                self.close_calls(&mut out);
                let i = match self.open_message {
                    Some(i) => i,
                    None => {
                        let i = self.output.len();
                        let mut item = api::message_item(&api::new_item_id("msg"), "");
                        item["status"] = json!("in_progress");
                        let part = item["content"][0].clone();
                        item["content"] = json!([]);
                        self.output.push(item.clone());
                        out.push(self.ev("response.output_item.added", json!({"output_index": i, "item": item})));
                        out.push(self.ev("response.content_part.added", json!({"item_id": self.output[i]["id"], "output_index": i, "content_index": 0, "part": part})));
                        self.output[i]["content"] = json!([part]);
                        self.open_message = Some(i);
                        i
                    }
                };
                let text = self.output[i]["content"][0]["text"].as_str().unwrap_or("").to_string() + &t;
                self.output[i]["content"][0]["text"] = json!(text);
                let id = self.output[i]["id"].clone();
                out.push(self.ev(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t, "logprobs": []}),
                ));
            }
            TurnEvent::CallStart { id, name, .. } => {
                self.close_reasoning(&mut out);
                self.close_message(&mut out);
                self.close_calls(&mut out);
                let i = self.output.len();
                let mut item = api::call_item(&api::new_item_id("fc"), &id, &name, "");
                item["status"] = json!("in_progress");
                self.output.push(item.clone());
                self.calls.push((i, true));
                out.push(self.ev("response.output_item.added", json!({"output_index": i, "item": item})));
            }
            TurnEvent::CallArgs { index, text } => {
                let Some(&(i, _)) = self.calls.get(index) else { return out };
                let args = self.output[i]["arguments"].as_str().unwrap_or("").to_string() + &text;
                self.output[i]["arguments"] = json!(args);
                let id = self.output[i]["id"].clone();
                out.push(self.ev(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": i, "delta": text}),
                ));
            }
            TurnEvent::End(end) => self.end(end, &mut out),
        }
        out
    }

    fn telemetry(&mut self, extras: Extras) -> Vec<SseEvent> {
        self.timings = extras.timings.map(|t| serde_json::to_value(t).expect("serializable"));
        let Some(progress) = extras.progress else { return Vec::new() };
        // As llama.cpp: a progress report is one more `response.in_progress`.
        let r = self.meta.object("in_progress", self.output.clone(), None, None);
        vec![self.ev("response.in_progress", json!({"response": r, "prompt_progress": progress}))]
    }

    fn error(&mut self, e: ApiError) -> Vec<SseEvent> {
        let error = json!({"code": e.code.unwrap_or("server_error"), "message": e.message});
        let r = self.meta.object("failed", self.output.clone(), None, Some(error));
        vec![self.ev("response.failed", json!({"response": r}))]
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Response with id '{id}' not found."))
}

/// The tenant's stored response `id`, or a 404.
async fn stored(state: &AppState, tenant: Option<Extension<Tenant>>, id: &str) -> Result<Stored, ApiError> {
    let owner = response_store::owner(tenant.map(|t| t.0).as_ref());
    let key = id.to_string();
    on_store(state, move |s| s.get(&owner, &key)).await?.ok_or_else(|| not_found(id))
}

pub async fn get(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(stored(&state, tenant, &id).await?.response))
}

pub async fn delete(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = response_store::owner(tenant.map(|t| t.0).as_ref());
    let deleted = on_store(&state, {
        let id = id.clone();
        move |s| s.delete(&owner, &id)
    })
    .await?;
    if !deleted {
        return Err(not_found(&id));
    }
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})))
}

/// `GET /v1/responses/{id}/input_items`: the items of that turn's input, a page at a time
/// (`limit` 1–100, default 20; `order` `desc` (default) or `asc`; `after` an item id).
pub async fn input_items(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    Path(id): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("Invalid query string: {e}")))?;
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return Err(ApiError::invalid("limit", "`limit` must be an integer from 1 to 100")),
    };
    let desc = match q.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::invalid("order", "`order` must be \"asc\" or \"desc\"")),
    };
    let mut items = stored(&state, tenant, &id).await?.input_items;
    if desc {
        items.reverse();
    }
    if let Some(after) = q.get("after") {
        let at = items.iter().position(|i| i["id"] == after.as_str());
        let at = at.ok_or_else(|| ApiError::invalid("after", format!("no input item `{after}` in this response")))?;
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(Json(json!({
        "object": "list",
        "first_id": items.first().map(|i| i["id"].clone()),
        "last_id": items.last().map(|i| i["id"].clone()),
        "has_more": has_more,
        "data": items,
    })))
}

/// `POST /v1/responses/input_tokens`: the tokens the request's input (after its stored
/// conversation) would take as a prompt.
pub async fn input_tokens(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (req, served) = parse_for::<ResponsesRequest>(&state, body).await?;
    let owner = response_store::owner(tenant.map(|t| t.0).as_ref());
    let mut items = history(&state, &owner, req.previous_response_id.as_deref()).await?;
    items.extend(api::input_items(req.input.as_ref())?);
    let chat = api::chat_request(&req, &items)?;
    let n = validate::count_chat_tokens(&served.engine, chat, &state.settings.reasoning)
        .await
        .map_err(|e| e.renamed(FIELD_NAMES))?;
    Ok(Json(json!({"object": "response.input_tokens", "input_tokens": n})))
}
