//! OpenAI Responses API shapes (`/v1/responses`): the request, its input items checked and
//! normalized (what `input_items` lists and the store keeps), their conversion to the chat
//! request every API shape shares (turn.rs), and the response object with its output items
//! and usage. Called by routes/responses.rs.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatMessage, MessageContent, Role, StopField};
use crate::turn::{Turn, TurnEnd};

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    /// Extension (Ollama): how long the model stays loaded after this request.
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
    /// Extension (llama.cpp): LoRA adapters to run with.
    pub lora: Option<Vec<crate::openai::LoraRef>>,
    pub input: Option<Input>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<Value>,
    pub metadata: Option<Map<String, Value>>,
    pub user: Option<String>,
    pub truncation: Option<String>,
    pub store: Option<bool>,
    pub stream: Option<bool>,
    pub previous_response_id: Option<String>,
    // Extensions shared with chat (slm, llama.cpp, vLLM).
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub ignore_eos: Option<bool>,
    pub cache_salt: Option<String>,
    pub speculative: Option<bool>,
    pub repeat_call_guard: Option<bool>,
    pub tool_result_hint: Option<bool>,
    pub tool_system_hint: Option<bool>,
    /// `{effort, summary}`: the effort reaches the template as chat's `reasoning_effort`.
    pub reasoning: Option<ReasoningParam>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// llama.cpp's: with stream, `response.in_progress` events with `prompt_progress`.
    pub return_progress: Option<bool>,
    /// llama.cpp's: with stream, `timings` on the events.
    pub timings_per_token: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReasoningParam {
    pub effort: Option<String>,
    pub summary: Option<String>,
}

/// Chat's field names → this API's, for errors from the shared path.
pub const FIELD_NAMES: &[(&str, &str)] = &[
    ("reasoning_effort", "reasoning.effort"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
    ("response_format", "text.format"),
    ("tool_choice", "tool_choice"),
    ("tools", "tools"),
];

pub fn new_item_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

fn text_of(part: &Value, param: &str) -> Result<String, ApiError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "input_text" | "output_text" | "text" => part
            .get("text")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| ApiError::invalid(format!("{param}.text"), format!("a `{kind}` part needs `text`"))),
        "refusal" => Ok(part.get("refusal").and_then(Value::as_str).unwrap_or("").to_string()),
        "input_image" | "input_file" | "input_audio" => Err(ApiError::invalid(
            format!("{param}.type"),
            format!("`{kind}` parts are not supported: this server runs text models"),
        )),
        other => Err(ApiError::invalid(format!("{param}.type"), format!("unknown content part type `{other}`"))),
    }
}

/// A message's content as text parts of the role's kind (`output_text` for the assistant).
fn content_parts(content: Option<&Value>, role: &str, param: &str) -> Result<Vec<Value>, ApiError> {
    let kind = if role == "assistant" { "output_text" } else { "input_text" };
    let part = |t: String| {
        if kind == "output_text" {
            json!({"type": kind, "text": t, "annotations": []})
        } else {
            json!({"type": kind, "text": t})
        }
    };
    match content {
        Some(Value::String(s)) => Ok(vec![part(s.clone())]),
        Some(Value::Array(parts)) => {
            parts.iter().enumerate().map(|(j, p)| text_of(p, &format!("{param}.content[{j}]")).map(part)).collect()
        }
        _ => {
            Err(ApiError::invalid(format!("{param}.content"), "a message needs `content`: a string or a list of parts"))
        }
    }
}

fn string_field<'a>(item: &'a Value, key: &str, param: &str, kind: &str) -> Result<&'a str, ApiError> {
    item.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(format!("{param}.{key}"), format!("a `{kind}` item needs `{key}` (a string)")))
}

/// This turn's input as items, checked and normalized: every item has its `type` and an
/// `id`, message content is a list of text parts.
pub fn input_items(input: Option<&Input>) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        None => return Err(ApiError::invalid("input", "`input` is required")),
        Some(Input::Text(s)) => {
            return Ok(vec![
                json!({"type": "message", "id": new_item_id("msg"), "role": "user", "status": "completed", "content": [{"type": "input_text", "text": s}]}),
            ])
        }
        Some(Input::Items(items)) => items,
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        if !item.is_object() {
            return Err(ApiError::invalid(param, "each input item must be an object"));
        }
        let kind =
            item.get("type").and_then(Value::as_str).unwrap_or(if item.get("role").is_some() { "message" } else { "" });
        let id = |prefix: &str| {
            item.get("id").and_then(Value::as_str).map(String::from).unwrap_or_else(|| new_item_id(prefix))
        };
        let v = match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(ApiError::invalid(
                        format!("{param}.role"),
                        format!("`role` must be user, assistant, system or developer, got `{role}`"),
                    ));
                }
                let content = content_parts(item.get("content"), role, &param)?;
                json!({"type": "message", "id": id("msg"), "role": role, "status": "completed", "content": content})
            }
            "function_call" => {
                let call_id = string_field(item, "call_id", &param, kind)?;
                let name = string_field(item, "name", &param, kind)?;
                let arguments = string_field(item, "arguments", &param, kind)?;
                json!({"type": kind, "id": id("fc"), "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"})
            }
            "function_call_output" => {
                let call_id = string_field(item, "call_id", &param, kind)?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| text_of(p, &format!("{param}.output[{j}]")))
                        .collect::<Result<Vec<_>, _>>()?
                        .join("\n"),
                    _ => return Err(ApiError::invalid(format!("{param}.output"), "a `function_call_output` item needs `output`")),
                };
                json!({"type": kind, "id": id("fco"), "call_id": call_id, "output": output, "status": "completed"})
            }
            // A reasoning model's trace, sent back by agent frameworks: its thoughts go with
            // the assistant turn after it, for templates that render them.
            "reasoning" => {
                let parts = |k: &str| item.get(k).filter(|v| v.is_array()).cloned().unwrap_or_else(|| json!([]));
                json!({"type": kind, "id": id("rs"), "summary": parts("summary"), "content": parts("content")})
            }
            "" => return Err(ApiError::invalid(format!("{param}.type"), "an input item needs a `type` (or a `role`)")),
            other => {
                return Err(ApiError::invalid(
                    format!("{param}.type"),
                    format!("input items of type `{other}` are not supported; use message, function_call or function_call_output"),
                ))
            }
        };
        out.push(v);
    }
    if out.is_empty() {
        return Err(ApiError::invalid("input", "`input` must contain at least one item"));
    }
    Ok(out)
}

/// Normalized items (history and this turn) as chat messages; consecutive calls become one
/// assistant message with several `tool_calls`.
pub fn to_messages(instructions: Option<&str>, items: &[Value]) -> Vec<ChatMessage> {
    let mut msgs = Vec::new();
    let text = |s: String| Some(MessageContent::Text(s));
    if let Some(i) = instructions {
        msgs.push(ChatMessage {
            role: Role::System,
            content: text(i.to_string()),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            reasoning_content: None,
        });
    }
    // A `reasoning` item's thoughts go with the assistant message after it.
    let mut thoughts: Option<String> = None;
    for item in items {
        let s = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match item.get("type").and_then(Value::as_str) {
            Some("reasoning") => {
                let texts = |k: &str| -> Vec<String> {
                    let parts = item.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str).map(String::from)).collect()
                };
                let (content, summary) = (texts("content"), texts("summary"));
                let t = if content.is_empty() { summary } else { content };
                if !t.is_empty() {
                    thoughts = Some(t.join("\n"));
                }
            }
            Some("message") => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("assistant") => Role::Assistant,
                    Some("system") => Role::System,
                    Some("developer") => Role::Developer,
                    _ => Role::User,
                };
                let parts = item.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
                let joined: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
                msgs.push(ChatMessage {
                    role,
                    content: text(joined.join("\n")),
                    name: None,
                    tool_calls: None,
                    tool_call_id: None,
                    reasoning_content: if role == Role::Assistant { thoughts.take() } else { None },
                });
            }
            Some("function_call") => {
                let call = json!({"id": s("call_id"), "type": "function", "function": {"name": s("name"), "arguments": s("arguments")}});
                match msgs.last_mut() {
                    Some(m) if m.role == Role::Assistant => m.tool_calls.get_or_insert_with(Vec::new).push(call),
                    _ => msgs.push(ChatMessage {
                        role: Role::Assistant,
                        content: None,
                        name: None,
                        tool_calls: Some(vec![call]),
                        tool_call_id: None,
                        reasoning_content: thoughts.take(),
                    }),
                }
            }
            Some("function_call_output") => msgs.push(ChatMessage {
                role: Role::Tool,
                content: text(s("output")),
                name: None,
                tool_calls: None,
                tool_call_id: Some(s("call_id")),
                reasoning_content: None,
            }),
            _ => {}
        }
    }
    msgs
}

/// Responses tools (`{type, name, description, parameters, strict}`) in chat's shape.
fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "function" {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!("tools of type `{kind}` are not supported; only `function`"),
                ));
            }
            let name = t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            let name = name.ok_or_else(|| ApiError::invalid(format!("tools[{i}].name"), "each function tool needs a `name`"))?;
            let mut f = json!({"name": name, "parameters": t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
            for k in ["description", "strict"] {
                if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                    f[k] = v.clone();
                }
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect()
}

fn chat_tool_choice(v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::String(_) => Ok(v.clone()),
        _ if v.get("type").and_then(Value::as_str) == Some("function") => match v.get("name").and_then(Value::as_str) {
            Some(n) => Ok(json!({"type": "function", "function": {"name": n}})),
            None => Err(ApiError::invalid("tool_choice.name", "a function `tool_choice` needs `name`")),
        },
        _ => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": …}",
        )),
    }
}

/// `text.format` as chat's `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = format
                .get("schema")
                .cloned()
                .ok_or_else(|| ApiError::invalid("text.format.schema", "a `json_schema` format needs `schema`"))?;
            Ok(Some(
                json!({"type": "json_schema", "json_schema": {"name": format.get("name"), "schema": schema, "strict": format.get("strict")}}),
            ))
        }
        _ => Err(ApiError::invalid("text.format.type", "`text.format.type` must be text, json_object or json_schema")),
    }
}

/// The chat request of a turn: `items` are the conversation so far (stored history, then this
/// turn's input), already normalized.
pub fn chat_request(req: &ResponsesRequest, items: &[Value]) -> Result<ChatCompletionRequest, ApiError> {
    match req.truncation.as_deref() {
        None | Some("disabled") | Some("auto") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "truncation",
                format!("`truncation` must be \"auto\" or \"disabled\", got `{other}`"),
            ))
        }
    }
    Ok(ChatCompletionRequest {
        model: req.model.clone(),
        messages: to_messages(req.instructions.as_deref(), items),
        max_tokens: req.max_output_tokens,
        tools: req.tools.as_deref().map(chat_tools).transpose()?,
        tool_choice: req.tool_choice.as_ref().map(chat_tool_choice).transpose()?,
        parallel_tool_calls: req.parallel_tool_calls,
        response_format: response_format(req.text.as_ref())?,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop.clone(),
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        logit_bias: req.logit_bias.clone(),
        user: req.user.clone(),
        ignore_eos: req.ignore_eos,
        cache_salt: req.cache_salt.clone(),
        speculative: req.speculative,
        repeat_call_guard: req.repeat_call_guard,
        tool_result_hint: req.tool_result_hint,
        tool_system_hint: req.tool_system_hint,
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort.clone()),
        chat_template_kwargs: req.chat_template_kwargs.clone(),
        return_progress: req.return_progress,
        timings_per_token: req.timings_per_token,
        ..Default::default()
    })
}

/// A reasoning item holding a turn's thoughts (the shape open-weight reasoning models use:
/// the text itself in `content`, no summary).
pub fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [], "content": [{"type": "reasoning_text", "text": text}], "status": "completed"})
}

/// A finished message item holding `text`.
pub fn message_item(id: &str, text: &str) -> Value {
    json!({"type": "message", "id": id, "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

pub fn call_item(id: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"})
}

/// The output items of a whole turn: its message (if it said anything), then its calls.
pub fn output_items(turn: &Turn) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(r) = &turn.reasoning {
        out.push(reasoning_item(&new_item_id("rs"), r));
    }
    if let Some(text) = &turn.content {
        out.push(message_item(&new_item_id("msg"), text));
    }
    for c in &turn.calls {
        out.push(call_item(&new_item_id("fc"), &c.id, &c.name, &c.arguments));
    }
    out
}

pub fn usage(end: &TurnEnd) -> Value {
    json!({
        "input_tokens": end.num_prompt_tokens,
        "input_tokens_details": {"cached_tokens": end.num_cached_tokens},
        "output_tokens": end.num_output_tokens,
        "output_tokens_details": {"reasoning_tokens": end.num_reasoning_tokens},
        "total_tokens": end.num_prompt_tokens + end.num_output_tokens,
    })
}

/// What every response object of one request repeats: its id, and the request's settings.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created_at: u64,
    settings: Value,
}

impl Meta {
    pub fn new(req: &ResponsesRequest, model: &str) -> Self {
        let tools: Vec<Value> = req.tools.iter().flatten().cloned().collect();
        let settings = json!({
            "model": model,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata.clone().unwrap_or_default(),
            "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": req.previous_response_id,
            "store": req.store.unwrap_or(true),
            "temperature": req.temperature.unwrap_or(1.0),
            "text": {"format": req.text.as_ref().and_then(|t| t.get("format")).cloned().unwrap_or_else(|| json!({"type": "text"}))},
            "tool_choice": req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "tools": tools,
            "top_p": req.top_p.unwrap_or(1.0),
            "truncation": req.truncation.clone().unwrap_or_else(|| "disabled".into()),
            "user": req.user,
            "background": false,
            "max_tool_calls": null,
            "reasoning": {"effort": req.reasoning.as_ref().and_then(|r| r.effort.clone()), "summary": req.reasoning.as_ref().and_then(|r| r.summary.clone())},
            "service_tier": "default",
        });
        Self { id: new_item_id("resp"), created_at: crate::routes::unix_now(), settings }
    }

    /// The response object: `status` with its output so far, usage and error.
    pub fn object(&self, status: &str, output: Vec<Value>, end: Option<&TurnEnd>, error: Option<Value>) -> Value {
        let mut v = json!({"id": self.id, "object": "response", "created_at": self.created_at, "status": status});
        if let (Value::Object(m), Value::Object(s)) = (&mut v, &self.settings) {
            m.extend(s.clone());
        }
        let incomplete = end
            .filter(|e| e.reason == slm_engine::FinishReason::Length)
            .map(|_| json!({"reason": "max_output_tokens"}));
        v["output"] = Value::Array(output);
        v["usage"] = end.map(usage).unwrap_or(Value::Null);
        v["incomplete_details"] = incomplete.unwrap_or(Value::Null);
        v["error"] = error.unwrap_or(Value::Null);
        v
    }
}

/// `completed`, or `incomplete` when the output was cut at `max_output_tokens`.
pub fn final_status(end: &TurnEnd) -> &'static str {
    if end.reason == slm_engine::FinishReason::Length {
        "incomplete"
    } else {
        "completed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_checked_and_become_chat_messages() {
        let input = Input::Items(vec![
            json!({"role": "user", "content": "weather in Paris?"}),
            json!({"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}),
            json!({"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"}),
            json!({"type": "function_call_output", "call_id": "call_1", "output": "sunny"}),
            json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]}),
        ]);
        let items = input_items(Some(&input)).unwrap();
        assert!(items.iter().all(|i| i["id"].is_string() && i["type"].is_string()));
        let msgs = to_messages(Some("You help."), &items);
        let roles: Vec<Role> = msgs.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Developer]);
        assert_eq!(msgs[2].tool_calls.as_ref().unwrap().len(), 2, "consecutive calls are one assistant turn");
        assert_eq!(msgs[3].tool_call_id.as_deref(), Some("call_1"));
    }

    #[test]
    fn bad_items_name_their_field() {
        let cases = [
            (json!([{"role": "robot", "content": "x"}]), "input[0].role"),
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
                "input[0].content[0].type",
            ),
            (
                json!([{"role": "user", "content": "x"}, {"type": "function_call", "name": "f", "arguments": "{}"}]),
                "input[1].call_id",
            ),
            (json!([{"type": "web_search_call"}]), "input[0].type"),
            (json!([]), "input"),
        ];
        for (items, param) in cases {
            let items: Vec<Value> = serde_json::from_value(items).unwrap();
            let e = input_items(Some(&Input::Items(items))).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param));
        }
        let req = ResponsesRequest { tools: Some(vec![json!({"type": "web_search"})]), ..Default::default() };
        assert_eq!(chat_request(&req, &[]).unwrap_err().param.as_deref(), Some("tools[0].type"));
    }
}
