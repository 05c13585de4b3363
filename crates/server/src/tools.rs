//! Function calling: which tools a request offers, and the lenient reading of the model's
//! text as OpenAI `tool_calls` — for output the streaming scanner (tool_stream.rs) could not
//! follow. Small models skip the format their template asks for, so this tries every format
//! of `tool_format::FORMATS` (Hermes tags, Mistral's `[TOOL_CALLS][…]`, bare JSON objects or
//! arrays whose `name` is one of the offered tools, with `arguments` or Llama-3's
//! `parameters`), in any key order. Text that is not a call stays content.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::tool_format::{Layout, ToolFormat, FORMATS};

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    Required,
    Named(String),
}

/// The tools a request lets the model call, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    /// The names a call may use (only the named one for a named `tool_choice`).
    pub names: Vec<String>,
    pub choice: ToolChoice,
}

/// The tools a request offers, checked; `None` when tools are off for this request.
pub fn offered(tools: Option<&[Value]>, tool_choice: Option<&Value>) -> Result<Option<Offered>, ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else { return Ok(None) };
    let mut names = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(ApiError::invalid(format!("tools[{i}].type"), "only tools of type `function` are supported"));
        }
        match t.pointer("/function/name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => names.push(n.to_string()),
            _ => return Err(ApiError::invalid(format!("tools[{i}].function.name"), "each tool needs `function.name`")),
        }
    }
    match tool_choice {
        None => Ok(Some(Offered { names, choice: ToolChoice::Auto })),
        Some(Value::String(s)) if s == "none" => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(Some(Offered { names, choice: ToolChoice::Auto })),
        Some(Value::String(s)) if s == "required" => Ok(Some(Offered { names, choice: ToolChoice::Required })),
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(n) if names.iter().any(|x| x == n) => Ok(Some(Offered { names: vec![n.to_string()], choice: ToolChoice::Named(n.to_string()) })),
            Some(n) => Err(ApiError::invalid("tool_choice", format!("`tool_choice` names `{n}`, which is not in `tools`"))),
            None => Err(ApiError::invalid("tool_choice", "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}")),
        },
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON string (OpenAI's shape).
    pub arguments: String,
}

impl ToolCall {
    pub fn to_openai(&self, id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// A call from a JSON value `{"name": …, "arguments"|"parameters": …}` naming an offered tool.
fn call_from(v: &Value, names: &[String]) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let args = v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or_else(|| json!({}));
    let arguments = match args {
        Value::String(s) => s, // already a JSON string
        other => other.to_string(),
    };
    Some(ToolCall { name: name.to_string(), arguments })
}

/// Calls from a JSON text holding one call object or an array of them.
fn calls_from_json(text: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let calls: Vec<ToolCall> = match &v {
        Value::Array(a) => a.iter().map(|x| call_from(x, names)).collect::<Option<_>>()?,
        obj => vec![call_from(obj, names)?],
    };
    (!calls.is_empty()).then_some(calls)
}

/// Splits model output into (content, calls). No calls: the text is all content.
pub fn parse(text: &str, names: &[String]) -> (Option<String>, Vec<ToolCall>) {
    FORMATS.iter().find_map(|f| parse_as(f, text, names)).unwrap_or_else(|| (Some(text.to_string()), Vec::new()))
}

/// Content and calls when `text` holds calls in format `f`.
fn parse_as(f: &ToolFormat, text: &str, names: &[String]) -> Option<(Option<String>, Vec<ToolCall>)> {
    let trimmed = text.trim();
    let nonempty = |c: &str| (!c.trim().is_empty()).then(|| c.trim().to_string());
    match f.layout {
        Layout::Tagged => {
            if !text.contains(f.open) {
                return None;
            }
            let mut content = String::new();
            let mut calls = Vec::new();
            let mut rest = text;
            while let Some(i) = rest.find(f.open) {
                content.push_str(&rest[..i]);
                let after = &rest[i + f.open.len()..];
                let (inner, next) = match after.find(f.close) {
                    Some(j) => (&after[..j], &after[j + f.close.len()..]),
                    None => (after, ""), // cut off at max_tokens or end of turn
                };
                match calls_from_json(inner, names) {
                    Some(c) => calls.extend(c),
                    None => content.push_str(&rest[i..rest.len() - next.len()]),
                }
                rest = next;
            }
            content.push_str(rest);
            (!calls.is_empty()).then(|| (nonempty(&content), calls))
        }
        Layout::Array => Some((None, calls_from_json(trimmed.strip_prefix(f.open)?, names)?)),
        Layout::Bare => {
            // A bare JSON call, possibly in a code fence, possibly after some text.
            let unfenced = trimmed.trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```");
            if let Some(calls) = calls_from_json(unfenced, names) {
                return Some((None, calls));
            }
            let i = trimmed.find(['{', '['])?;
            Some((nonempty(&trimmed[..i]), calls_from_json(&trimmed[i..], names)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "convert_currency".into()]
    }

    struct Row {
        name: &'static str,
        text: &'static str,
        content: Option<&'static str>,
        calls: &'static [(&'static str, &'static str)],
    }

    #[test]
    fn parses_every_format_small_models_use() {
        let rows = [
            Row { name: "hermes one", text: "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hanoi\"}}\n</tool_call>", content: None, calls: &[("get_weather", r#"{"city":"Hanoi"}"#)] },
            Row {
                name: "hermes two with text",
                text: "Sure.\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>\n<tool_call>{\"name\": \"convert_currency\", \"arguments\": {\"amount\": 10}}</tool_call>",
                content: Some("Sure."),
                calls: &[("get_weather", r#"{"city":"Paris"}"#), ("convert_currency", r#"{"amount":10}"#)],
            },
            Row { name: "hermes unclosed", text: "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}", content: None, calls: &[("get_weather", "{}")] },
            Row { name: "bare object", text: "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hanoi\"}}", content: None, calls: &[("get_weather", r#"{"city":"Hanoi"}"#)] },
            Row { name: "llama3 parameters", text: "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}", content: None, calls: &[("get_weather", r#"{"city":"Rome"}"#)] },
            Row { name: "fenced", text: "```json\n{\"name\": \"get_weather\", \"arguments\": {}}\n```", content: None, calls: &[("get_weather", "{}")] },
            Row { name: "array", text: "[{\"name\": \"get_weather\", \"arguments\": {}}, {\"name\": \"convert_currency\", \"arguments\": {}}]", content: None, calls: &[("get_weather", "{}"), ("convert_currency", "{}")] },
            Row { name: "mistral", text: "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]", content: None, calls: &[("get_weather", r#"{"city":"Oslo"}"#)] },
            Row { name: "string arguments", text: "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"X\\\"}\"}", content: None, calls: &[("get_weather", r#"{"city": "X"}"#)] },
            Row { name: "unknown name stays text", text: "{\"name\": \"launch\", \"arguments\": {}}", content: Some("{\"name\": \"launch\", \"arguments\": {}}"), calls: &[] },
            Row { name: "plain text", text: "It is sunny.", content: Some("It is sunny."), calls: &[] },
        ];
        for r in rows {
            let (content, calls) = parse(r.text, &names());
            assert_eq!(content.as_deref(), r.content, "{}", r.name);
            let got: Vec<(String, String)> = calls.into_iter().map(|c| (c.name, c.arguments)).collect();
            let want: Vec<(String, String)> = r.calls.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
            assert_eq!(got, want, "{}", r.name);
        }
    }

    #[test]
    fn tool_choice_is_checked() {
        let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        assert_eq!(
            offered(Some(&tools), None).unwrap(),
            Some(Offered { names: vec!["get_weather".to_string()], choice: ToolChoice::Auto })
        );
        assert_eq!(offered(Some(&tools), Some(&json!("required"))).unwrap().unwrap().choice, ToolChoice::Required);
        assert_eq!(offered(Some(&tools), Some(&json!("none"))).unwrap(), None);
        assert!(offered(Some(&tools), Some(&json!({"type": "function", "function": {"name": "nope"}}))).is_err());
        assert!(offered(Some(&[json!({"type": "function"})]), None).is_err());
    }
}
