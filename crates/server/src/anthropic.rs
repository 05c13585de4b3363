//! Anthropic Messages API shapes (`/v1/messages`): the request checked and turned into the
//! chat request every API shape shares (turn.rs), the message answer (content blocks,
//! `stop_reason`, usage), and Anthropic's error shape — `{"type": "error", "error": {"type",
//! "message"}}` — which `anthropic_errors` puts on every error answer under `/v1/messages`
//! (from validation, auth, body limits or routing alike), so errors are mapped in one place.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatMessage, MessageContent, Role, StopField};
use crate::turn::{Turn, TurnEnd};

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum System {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessagesRequest {
    pub model: Option<String>,
    /// Extension (Ollama): how long the model stays loaded after this request.
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
    /// Extension (llama.cpp): LoRA adapters to run with.
    pub lora: Option<Vec<crate::openai::LoraRef>>,
    pub max_tokens: Option<i64>,
    pub system: Option<System>,
    pub messages: Option<Vec<Value>>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub metadata: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub stream: Option<bool>,
    /// Structured output: `{"format": {"type": "json_schema", "schema": …}}`.
    pub output_config: Option<Value>,
    // Extensions shared with chat.
    pub seed: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub cache_salt: Option<String>,
    pub speculative: Option<bool>,
    pub repeat_call_guard: Option<bool>,
    pub tool_result_hint: Option<bool>,
    pub tool_system_hint: Option<bool>,
    /// Extended thinking: `{"type": "enabled", "budget_tokens": N}`, `{"type": "disabled"}`
    /// or `{"type": "adaptive"}` — the reasoning model's thinking switch.
    pub thinking: Option<Value>,
}

/// Chat's field names → this API's, for errors from the shared path.
pub const FIELD_NAMES: &[(&str, &str)] = &[
    ("stop", "stop_sequences"),
    ("max_tokens", "max_tokens"),
    ("response_format", "output_config.format"),
    ("chat_template_kwargs.enable_thinking", "thinking"),
];

/// `thinking` as the template's `enable_thinking` (None: the server's default).
fn thinking_switch(v: Option<&Value>) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let on = match v.get("type").and_then(Value::as_str) {
        Some("enabled") => {
            match v.get("budget_tokens") {
                Some(b) if b.as_u64().is_some_and(|n| n >= 1) => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        "thinking.budget_tokens",
                        "`budget_tokens` must be a positive integer",
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        "thinking.budget_tokens",
                        "`thinking` of type `enabled` needs `budget_tokens`",
                    ))
                }
            }
            true
        }
        Some("disabled") => false,
        Some("adaptive") => return Ok(None),
        _ => {
            return Err(ApiError::invalid(
                "thinking.type",
                "`thinking.type` must be \"enabled\", \"disabled\" or \"adaptive\"",
            ))
        }
    };
    Ok(Some(serde_json::Map::from_iter([("enable_thinking".to_string(), Value::Bool(on))])))
}

/// `output_config.format` as chat's `response_format`.
fn response_format(config: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = config.and_then(|c| c.get("format")).filter(|f| !f.is_null()) else { return Ok(None) };
    match (format.get("type").and_then(Value::as_str), format.get("schema")) {
        (Some("json_schema"), Some(schema)) => {
            Ok(Some(json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})))
        }
        _ => Err(ApiError::invalid(
            "output_config.format",
            "`output_config.format` must be {\"type\": \"json_schema\", \"schema\": {…}}",
        )),
    }
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:024x}", rand::random::<u128>() >> 32)
}

fn block_text(b: &Value, param: &str) -> Result<String, ApiError> {
    b.get("text")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| ApiError::invalid(format!("{param}.text"), "a `text` block needs `text`"))
}

fn unsupported(kind: &str, param: String) -> ApiError {
    ApiError::invalid(format!("{param}.type"), format!("content blocks of type `{kind}` are not supported here"))
}

/// A `tool_result`'s content: a string, text blocks, or nothing.
fn tool_result_text(b: &Value, param: &str) -> Result<String, ApiError> {
    match b.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (k, c) in blocks.iter().enumerate() {
                let p = format!("{param}.content[{k}]");
                match c.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(block_text(c, &p)?),
                    other => return Err(unsupported(other.unwrap_or(""), p)),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(ApiError::invalid(format!("{param}.content"), "`content` must be a string or a list of blocks")),
    }
}

fn message(role: Role, content: Option<String>) -> ChatMessage {
    ChatMessage {
        role,
        content: content.map(MessageContent::Text),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning_content: None,
    }
}

/// Anthropic messages as chat messages: a user turn's `tool_result` blocks become tool
/// messages (before its text), an assistant turn's `tool_use` blocks its `tool_calls`.
pub fn to_messages(system: Option<&System>, messages: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    match system {
        None => {}
        Some(System::Text(s)) => out.push(message(Role::System, Some(s.clone()))),
        Some(System::Blocks(blocks)) => {
            let texts = blocks
                .iter()
                .enumerate()
                .map(|(j, b)| block_text(b, &format!("system[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(message(Role::System, Some(texts.join("\n"))));
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    format!("{param}.role"),
                    format!("`role` must be \"user\" or \"assistant\", got {other:?} (the system prompt is the top-level `system`)"),
                ))
            }
        };
        let blocks = match m.get("content") {
            Some(Value::String(s)) => {
                out.push(message(role, Some(s.clone())));
                continue;
            }
            Some(Value::Array(blocks)) => blocks,
            _ => {
                return Err(ApiError::invalid(
                    format!("{param}.content"),
                    "`content` must be a string or a list of blocks",
                ))
            }
        };
        let (mut texts, mut calls, mut thoughts) = (Vec::new(), Vec::new(), Vec::new());
        for (j, b) in blocks.iter().enumerate() {
            let p = format!("{param}.content[{j}]");
            match (b.get("type").and_then(Value::as_str).unwrap_or(""), role) {
                ("text", _) => texts.push(block_text(b, &p)?),
                ("tool_use", Role::Assistant) => {
                    let (Some(id), Some(name)) =
                        (b.get("id").and_then(Value::as_str), b.get("name").and_then(Value::as_str))
                    else {
                        return Err(ApiError::invalid(p, "a `tool_use` block needs `id` and `name`"));
                    };
                    let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                    calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
                }
                ("tool_result", Role::User) => {
                    let id = b.get("tool_use_id").and_then(Value::as_str);
                    let id = id.ok_or_else(|| {
                        ApiError::invalid(format!("{p}.tool_use_id"), "a `tool_result` block needs `tool_use_id`")
                    })?;
                    let mut text = tool_result_text(b, &p)?;
                    if b.get("is_error") == Some(&json!(true)) {
                        text = format!("Error: {text}");
                    }
                    out.push(ChatMessage { tool_call_id: Some(id.to_string()), ..message(Role::Tool, Some(text)) });
                }
                // Extended-thinking traces sent back by clients: the thoughts, for templates
                // that render them; a redacted one has nothing to render.
                ("thinking", Role::Assistant) => {
                    thoughts.extend(b.get("thinking").and_then(Value::as_str).map(String::from));
                }
                ("redacted_thinking", Role::Assistant) => {}
                (kind, _) => return Err(unsupported(kind, p)),
            }
        }
        if !texts.is_empty() || !calls.is_empty() {
            let content = (!texts.is_empty()).then(|| texts.join("\n"));
            let mut msg = message(role, content);
            msg.tool_calls = (!calls.is_empty()).then_some(calls);
            msg.reasoning_content = (!thoughts.is_empty()).then(|| thoughts.join("\n"));
            out.push(msg);
        }
    }
    Ok(out)
}

/// Anthropic tools (`{name, description, input_schema}`) in chat's shape.
fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(kind) = t.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!(
                        "server tools (`{kind}`) are not supported; define client tools with `name` and `input_schema`"
                    ),
                ));
            }
            let name = t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            let name = name.ok_or_else(|| ApiError::invalid(format!("tools[{i}].name"), "each tool needs a `name`"))?;
            let schema = t.get("input_schema").cloned();
            let schema = schema.ok_or_else(|| {
                ApiError::invalid(format!("tools[{i}].input_schema"), "each tool needs an `input_schema`")
            })?;
            let mut f = json!({"name": name, "parameters": schema});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect()
}

/// `tool_choice` as chat's `tool_choice` and `parallel_tool_calls`.
fn chat_tool_choice(v: Option<&Value>) -> Result<(Option<Value>, Option<bool>), ApiError> {
    let Some(v) = v else { return Ok((None, None)) };
    let parallel = v.get("disable_parallel_tool_use").and_then(Value::as_bool).map(|d| !d);
    let choice = match v.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match v.get("name").and_then(Value::as_str) {
            Some(n) => json!({"type": "function", "function": {"name": n}}),
            None => return Err(ApiError::invalid("tool_choice.name", "a `tool` tool_choice needs `name`")),
        },
        _ => return Err(ApiError::invalid("tool_choice.type", "`tool_choice.type` must be auto, any, tool or none")),
    };
    Ok((Some(choice), parallel))
}

/// The chat request of a Messages request. `max_tokens` is required (as Anthropic's API has
/// it) except when only counting tokens.
pub fn chat_request(req: &MessagesRequest, counting: bool) -> Result<ChatCompletionRequest, ApiError> {
    if req.max_tokens.is_none() && !counting {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` is required"));
    }
    let messages = req.messages.as_deref().ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
    let (tool_choice, parallel_tool_calls) = chat_tool_choice(req.tool_choice.as_ref())?;
    Ok(ChatCompletionRequest {
        model: req.model.clone(),
        messages: to_messages(req.system.as_ref(), messages)?,
        max_tokens: req.max_tokens,
        tools: req.tools.as_deref().map(chat_tools).transpose()?,
        tool_choice,
        parallel_tool_calls,
        response_format: response_format(req.output_config.as_ref())?,
        stop: req.stop_sequences.clone().map(StopField::Many),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        user: req.metadata.as_ref().and_then(|m| m.get("user_id")).and_then(Value::as_str).map(String::from),
        cache_salt: req.cache_salt.clone(),
        speculative: req.speculative,
        repeat_call_guard: req.repeat_call_guard,
        tool_result_hint: req.tool_result_hint,
        tool_system_hint: req.tool_system_hint,
        chat_template_kwargs: thinking_switch(req.thinking.as_ref())?,
        // A last assistant turn is a prefill: the answer continues it (Anthropic's semantics).
        continue_final_message: Some(
            messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant"),
        ),
        ..Default::default()
    })
}

/// `stop_reason` and `stop_sequence` of a finished turn.
pub fn stop_reason(end: &TurnEnd) -> (&'static str, Option<String>) {
    if end.reason == slm_engine::FinishReason::Length {
        ("max_tokens", None)
    } else if end.made_calls() {
        ("tool_use", None)
    } else if let Some(s) = &end.stop_string {
        ("stop_sequence", Some(s.clone()))
    } else {
        ("end_turn", None)
    }
}

/// Anthropic counts cache reads apart from `input_tokens`.
pub fn usage(end: &TurnEnd) -> Value {
    json!({
        "input_tokens": end.num_prompt_tokens - end.num_cached_tokens.min(end.num_prompt_tokens),
        "output_tokens": end.num_output_tokens,
        "cache_read_input_tokens": end.num_cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// A call's arguments as the `input` object (a constrained call is always valid JSON).
pub fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// The answer to a non-streamed request.
pub fn message_answer(id: &str, model: &str, turn: &Turn) -> Value {
    let mut content = Vec::new();
    if let Some(r) = &turn.reasoning {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = &turn.content {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in &turn.calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input_of(&c.arguments)}));
    }
    let (reason, sequence) = stop_reason(&turn.end);
    json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
           "stop_reason": reason, "stop_sequence": sequence, "usage": usage(&turn.end)})
}

/// Anthropic's error type for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// Every error answer under `/v1/messages` in Anthropic's shape (status and headers kept).
pub async fn anthropic_errors(req: Request, next: Next) -> Response {
    let anthropic = req.uri().path().starts_with("/v1/messages");
    let resp = next.run(req).await;
    if !anthropic || resp.status().as_u16() < 400 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let out = serde_json::to_vec(&error_body(parts.status, &message)).expect("serializable");
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// The same shape for an error sent inside a stream.
pub fn stream_error(e: &ApiError) -> Value {
    error_body(e.status, &e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_use_and_tool_result_turns_become_chat_messages() {
        let msgs: Vec<Value> = serde_json::from_value(json!([
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "thanks"}]},
        ]))
        .unwrap();
        let out = to_messages(Some(&System::Text("Be brief.".into())), &msgs).unwrap();
        let roles: Vec<Role> = out.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::User]);
        let call = &out[2].tool_calls.as_ref().unwrap()[0];
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(out[3].tool_call_id.as_deref(), Some("toolu_1"));
    }

    #[test]
    fn bad_requests_name_their_field() {
        let req = |v: Value| serde_json::from_value::<MessagesRequest>(v).unwrap();
        let cases = [
            (json!({"messages": [{"role": "user", "content": "x"}]}), "max_tokens"),
            (json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}), "messages[0].role"),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "w"}]}),
                "tools[0].type",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(chat_request(&req(body), false).unwrap_err().param.as_deref(), Some(param));
        }
    }

    #[test]
    fn statuses_map_to_anthropic_error_types() {
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(error_type(StatusCode::TOO_MANY_REQUESTS), "rate_limit_error");
        assert_eq!(error_type(StatusCode::SERVICE_UNAVAILABLE), "overloaded_error");
        assert_eq!(error_type(StatusCode::NOT_FOUND), "not_found_error");
        assert_eq!(error_type(StatusCode::INTERNAL_SERVER_ERROR), "api_error");
    }
}
