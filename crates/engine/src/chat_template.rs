//! Renders the GGUF's `tokenizer.chat_template` (a Hugging Face Jinja template) with
//! minijinja, given OpenAI-style messages and tools. Python string methods come from
//! minijinja-contrib's pycompat; `tojson` writes JSON the way Python's `json.dumps` does
//! (", " and ": " separators, non-ASCII kept), because templates were written against it and
//! llama.cpp's renders (our reference) match it. GGUFs without a template get their family's
//! known format. Called by the server (chat requests) and the CLI (`generate --chat`).

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error as JError, ErrorKind};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::loader::Gguf;
use crate::reasoning_markers::ReasoningMarkers;
use crate::tokenizer::Tokenizer;

/// ChatML (Qwen and many fine-tunes), used when a non-Gemma GGUF carries no template.
const CHATML_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Gemma's turn format; a system message is folded into the first user turn, as Gemma 3's
/// own template does.
/// The names `builtin` knows.
pub const BUILTIN_NAMES: &[&str] = &["chatml", "gemma"];

/// A built-in template by name (llama.cpp's `--chat-template NAME`, for the formats slm
/// carries).
pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        "chatml" => Some(CHATML_TEMPLATE),
        "gemma" => Some(GEMMA_TEMPLATE),
        _ => None,
    }
}

const GEMMA_TEMPLATE: &str = "{{- bos_token }}{%- if messages and messages[0].role == 'system' %}{%- set first_prefix = messages[0].content + '\\n\\n' %}{%- set rest = messages[1:] %}{%- else %}{%- set first_prefix = '' %}{%- set rest = messages %}{%- endif %}{%- for message in rest %}{%- set role = 'model' if message.role == 'assistant' else 'user' %}{{- '<start_of_turn>' + role + '\\n' + (first_prefix if loop.first else '') + (message.content or '') + '<end_of_turn>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}";

/// Instructions one rendering may run (minijinja's fuel): a conversation of thousands of
/// messages takes a few hundred thousand; a template that loops forever stops here.
const TEMPLATE_FUEL: u64 = 20_000_000;
/// Bytes one rendering may write: far past any context a small model has.
const MAX_RENDER_BYTES: usize = 16 << 20;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the source came from the GGUF (false: a built-in family fallback).
    pub from_gguf: bool,
    /// Whether the template renders `tools` itself; if not, `render` describes them in a
    /// system message and writes calls and results as text (`with_tools_as_text`).
    pub renders_tools: bool,
    /// The template's text (the server reads which tool-call format it asks for).
    pub source: String,
    /// The tags its model thinks in, for a reasoning model's template.
    pub reasoning: Option<ReasoningMarkers>,
}

/// Variables a request passes to the template besides the conversation (vLLM's and
/// llama.cpp's `chat_template_kwargs`: `enable_thinking`, `reasoning_effort`, …).
pub type TemplateVars = serde_json::Map<String, Value>;

impl ChatTemplate {
    pub fn from_gguf(g: &Gguf, tok: &Tokenizer) -> Result<Self> {
        let arch = g.architecture().unwrap_or_default();
        let (source, from_gguf) = match g.opt_str("tokenizer.chat_template") {
            Some(s) => (s, true),
            None if arch.starts_with("gemma") => (GEMMA_TEMPLATE.to_string(), false),
            None => (CHATML_TEMPLATE.to_string(), false),
        };
        let text = |id: Option<u32>| {
            id.map(|i| String::from_utf8_lossy(tok.token_bytes(i, true)).into_owned()).unwrap_or_default()
        };
        Self::new(source, text(tok.bos), text(tok.eos), from_gguf)
    }

    /// The same model's tokens with another template (`--chat-template`): the GGUF's is
    /// replaced, so `from_gguf` is false.
    pub fn with_source(&self, source: String) -> Result<Self> {
        Self::new(source, self.bos_token.clone(), self.eos_token.clone(), false)
    }

    pub fn new(source: String, bos_token: String, eos_token: String, from_gguf: bool) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<JValue, JError> {
            Err(JError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.set_fuel(Some(TEMPLATE_FUEL));
        let renders_tools = source.contains("tools");
        env.add_template_owned("chat", source.clone())
            .map_err(|e| EngineError::ChatTemplate(format!("cannot parse the template: {e}")))?;
        let reasoning = ReasoningMarkers::of_template(&source);
        let t = Self { env, bos_token, eos_token, from_gguf, renders_tools, source, reasoning };
        t.check_it_finishes()?;
        Ok(t)
    }

    /// Refuses a template that does not finish a short conversation within its bounds (one
    /// that loops or explodes would hang or exhaust every chat request). A template that
    /// raises an error for this conversation is kept: it may only dislike its shape.
    fn check_it_finishes(&self) -> Result<()> {
        let msgs = [
            serde_json::json!({"role": "user", "content": "Hi"}),
            serde_json::json!({"role": "assistant", "content": "Hello!"}),
            serde_json::json!({"role": "user", "content": "How are you?"}),
        ];
        match self.render(&msgs, None, true) {
            Err(EngineError::ChatTemplate(m)) if m.contains(BOUND_EXCEEDED) => {
                Err(EngineError::ChatTemplate(format!("the template does not render a three-message chat: {m}")))
            }
            _ => Ok(()),
        }
    }

    /// Renders `messages` (OpenAI shape) and optional `tools`.
    pub fn render(&self, messages: &[Value], tools: Option<&[Value]>, add_generation_prompt: bool) -> Result<String> {
        self.render_vars(messages, tools, add_generation_prompt, &TemplateVars::new())
    }

    /// `render` with the request's template variables. `enable_thinking` is true unless
    /// `vars` turns it off, as llama.cpp passes it; off, a reasoning block the template
    /// still opens at the end of the prompt is closed (`ReasoningMarkers::close_if_open`).
    pub fn render_vars(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        vars: &TemplateVars,
    ) -> Result<String> {
        let mut messages: Vec<Value> = messages.iter().map(normalize_message).collect();
        let tools = match tools {
            Some(t) if !t.is_empty() && !self.renders_tools => {
                messages = with_tools_as_text(messages, t);
                None
            }
            t => t,
        };
        let tmpl = self.env.get_template("chat").expect("added in new");
        // The conversation itself cannot be replaced by a request's variables; the defaults
        // (today's date, thinking on) can. `merge_maps`: the last map naming a key wins.
        let fixed = minijinja::context! {
            messages => JValue::from_serialize(&messages),
            tools => tools.map(JValue::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        let defaults = minijinja::context! {
            // Today's date, as llama.cpp passes it (Llama 3's templates print it; without it
            // they print a date from 2024).
            date_string => strftime_now("%d %b %Y"),
            // FireFunction v2's `Today is {datetime}`, as llama.cpp writes it.
            datetime => strftime_now("%b %d %Y"),
            enable_thinking => true,
        };
        let ctx = minijinja::value::merge_maps([defaults, JValue::from_serialize(vars), fixed]);
        let mut out = CappedWriter(Vec::new());
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
            let mut msg = match e.kind() {
                ErrorKind::OutOfFuel => {
                    format!("{BOUND_EXCEEDED}: it ran {TEMPLATE_FUEL} instructions without finishing")
                }
                ErrorKind::WriteFailure => format!("{BOUND_EXCEEDED}: its output passed {MAX_RENDER_BYTES} bytes"),
                _ => e.to_string(),
            };
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            EngineError::ChatTemplate(msg)
        })?;
        let mut s = String::from_utf8(out.0)
            .map_err(|e| EngineError::ChatTemplate(format!("the template wrote invalid UTF-8: {e}")))?;
        if let (Some(m), true, Some(false)) =
            (self.reasoning, add_generation_prompt, vars.get("enable_thinking").and_then(Value::as_bool))
        {
            m.close_if_open(&mut s);
        }
        Ok(s)
    }

    /// Whether a prompt this template rendered leaves the model thinking (its reasoning
    /// block opened and not closed).
    pub fn starts_in_reasoning(&self, prompt: &str) -> bool {
        self.reasoning.is_some_and(|m| m.ends_open(prompt))
    }

    /// Renders and strips a leading BOS text when the tokenizer adds BOS itself, so the
    /// prompt does not start with two (as llama.cpp does).
    pub fn render_prompt(&self, tok: &Tokenizer, messages: &[Value], tools: Option<&[Value]>) -> Result<String> {
        self.render_prompt_with(tok, messages, tools, true, &TemplateVars::new())
    }

    /// `render_prompt`, with or without the generation prompt (the assistant's turn opened).
    pub fn render_prompt_with(
        &self,
        tok: &Tokenizer,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        vars: &TemplateVars,
    ) -> Result<String> {
        let mut s = self.render_vars(messages, tools, add_generation_prompt, vars)?;
        if tok.add_bos() && !self.bos_token.is_empty() && s.starts_with(&self.bos_token) {
            s.drain(..self.bos_token.len());
        }
        Ok(s)
    }
}

impl ChatTemplate {
    /// The prompt that continues the last message, an assistant's, instead of opening a new
    /// turn (assistant prefill; vLLM's `continue_final_message`): the conversation rendered
    /// without a generation prompt, cut right after that message's text, so whatever the
    /// template writes to close the turn is not there.
    pub fn render_continuation(
        &self,
        tok: &Tokenizer,
        messages: &[Value],
        tools: Option<&[Value]>,
        vars: &TemplateVars,
    ) -> Result<String> {
        let last = messages.last().map(normalize_message);
        let text = match &last {
            Some(m) if m.get("role").and_then(Value::as_str) == Some("assistant") => {
                m.get("content").and_then(Value::as_str).unwrap_or("").to_string()
            }
            _ => {
                return Err(EngineError::ChatTemplate("the last message must be the assistant's to continue it".into()))
            }
        };
        let mut s = self.render_vars(messages, tools, false, vars)?;
        // Templates may trim what they print; the last occurrence is the final message's.
        let cut = [text.as_str(), text.trim_end(), text.trim()]
            .iter()
            .filter(|t| !t.is_empty())
            .find_map(|t| s.rfind(*t).map(|at| at + t.len()));
        match cut {
            Some(end) => s.truncate(end),
            None if text.trim().is_empty() => {
                return Err(EngineError::ChatTemplate("the assistant message to continue is empty".into()))
            }
            None => {
                return Err(EngineError::ChatTemplate(
                    "the chat template does not print the last assistant message's text, so it cannot be continued"
                        .into(),
                ))
            }
        }
        if tok.add_bos() && !self.bos_token.is_empty() && s.starts_with(&self.bos_token) {
            s.drain(..self.bos_token.len());
        }
        Ok(s)
    }
}

/// Marks the errors of a rendering that hit its bounds (fuel or size).
const BOUND_EXCEEDED: &str = "the template exceeded its bounds";

/// The rendering's output, refusing to grow past `MAX_RENDER_BYTES`.
struct CappedWriter(Vec<u8>);

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDER_BYTES {
            return Err(std::io::Error::other("output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For templates that know nothing of tools: a system message lists them and asks for calls
/// in the Hermes format (which the server parses and constrains); earlier calls and tool
/// results become text in that format.
fn with_tools_as_text(messages: Vec<Value>, tools: &[Value]) -> Vec<Value> {
    let mut listing = String::new();
    for t in tools {
        let f = t.get("function").unwrap_or(t);
        listing.push('\n');
        write_py_json(f, None, 0, &mut listing);
    }
    let instructions = format!(
        "You may call one or more functions to assist with the user query. The available functions, as JSON Schemas:{listing}\n\nTo call a function, answer with only a JSON object with the function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
    );
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages.into_iter().peekable();
    match rest.peek() {
        Some(m) if m.get("role").and_then(Value::as_str) == Some("system") => {
            let mut sys = rest.next().expect("peeked");
            let text = sys.get("content").and_then(Value::as_str).unwrap_or_default().to_string();
            sys["content"] = Value::String(format!("{text}\n\n{instructions}"));
            out.push(sys);
        }
        _ => out.push(serde_json::json!({"role": "system", "content": instructions})),
    }
    for mut m in rest {
        match m.get("role").and_then(Value::as_str) {
            Some("tool") => {
                let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
                out.push(serde_json::json!({"role": "user", "content": format!("<tool_response>\n{content}\n</tool_response>")}));
            }
            Some("assistant") if m.get("tool_calls").is_some_and(Value::is_array) => {
                let mut text = m.get("content").and_then(Value::as_str).unwrap_or_default().to_string();
                for c in m["tool_calls"].as_array().expect("checked").clone() {
                    let f = c.get("function").cloned().unwrap_or_default();
                    let call = serde_json::json!({"name": f.get("name").cloned().unwrap_or_default(), "arguments": f.get("arguments").cloned().unwrap_or_default()});
                    let mut json = String::new();
                    write_py_json(&call, None, 0, &mut json);
                    text.push_str(&format!(
                        "{}<tool_call>\n{json}\n</tool_call>",
                        if text.is_empty() { "" } else { "\n" }
                    ));
                }
                m["content"] = Value::String(text);
                m.as_object_mut().expect("a message is an object").remove("tool_calls");
                out.push(m);
            }
            _ => out.push(m),
        }
    }
    out
}

/// Content given as an array of text parts becomes one string (parts joined by newlines, as
/// llama.cpp does); tool-call arguments given as JSON strings become objects, which is what
/// templates that `tojson` them expect.
fn normalize_message(m: &Value) -> Value {
    let mut m = m.clone();
    // No content is an empty text, as llama.cpp passes it (templates test `'</think>' in
    // message.content` on an assistant turn that only made calls).
    if m.get("content").is_some_and(Value::is_null) {
        m["content"] = Value::String(String::new());
    }
    if let Some(Value::Array(parts)) = m.get("content") {
        let text: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
        m["content"] = Value::String(text.join("\n"));
    }
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for c in calls {
            if let Some(f) = c.get_mut("function") {
                if let Some(Value::String(args)) = f.get("arguments") {
                    if let Ok(parsed) = serde_json::from_str::<Value>(args) {
                        f["arguments"] = parsed;
                    }
                }
            }
        }
    }
    m
}

fn tojson(v: JValue, kwargs: Kwargs) -> std::result::Result<String, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&v).map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(out)
}

/// JSON as Python's `json.dumps(v, ensure_ascii=False, indent=indent)` writes it.
pub fn write_py_json(v: &Value, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_py_str(s, out),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_json(x, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Object(o) => {
            if o.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_str(k, out);
                out.push_str(": ");
                write_py_json(x, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

fn write_py_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `strftime_now` for templates that print today's date (Llama 3): supports the common codes.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let mut s = String::new();
        write_py_json(&json!({"a": [1, 2.5, "x\"y"], "b": {}, "c": "é"}), None, 0, &mut s);
        assert_eq!(s, r#"{"a": [1, 2.5, "x\"y"], "b": {}, "c": "é"}"#);
        let mut s = String::new();
        write_py_json(&json!({"a": [1]}), Some(2), 0, &mut s);
        assert_eq!(s, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn llama_3_templates_get_todays_date() {
        // The shape of Llama 3.x's template: its own fallback date unless one is passed.
        let src = "{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}Today Date: {{ date_string }}";
        let t = ChatTemplate::new(src.into(), String::new(), String::new(), true).unwrap();
        let out = t.render(&[json!({"role": "user", "content": "Hi"})], None, true).unwrap();
        assert_eq!(out, format!("Today Date: {}", strftime_now("%d %b %Y")));
        assert!(!out.contains("2024") || strftime_now("%Y") == "2024");
    }

    #[test]
    fn gemma_fallback_folds_system_into_first_turn() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE.into(), "<bos>".into(), "<eos>".into(), false).unwrap();
        let out = t
            .render(
                &[json!({"role": "system", "content": "Be brief."}), json!({"role": "user", "content": "Hi"})],
                None,
                true,
            )
            .unwrap();
        assert_eq!(out, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    }

    #[test]
    fn text_parts_are_joined_and_arguments_parsed() {
        let m = normalize_message(
            &json!({"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "tool_calls": [{"function": {"name": "f", "arguments": "{\"x\": 1}"}}]}),
        );
        assert_eq!(m["content"], "a\nb");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"]["x"], 1);
    }

    #[test]
    fn templates_that_loop_or_explode_are_refused_at_load_and_never_hang() {
        let t0 = std::time::Instant::now();
        for (name, src) in [
            ("nested loops", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
            ("output", "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"),
        ] {
            let err = ChatTemplate::new(src.into(), String::new(), String::new(), true).err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(BOUND_EXCEEDED), "{name}: {msg}");
        }
        // An enormous range and unbounded recursion fail each rendering at once (minijinja's
        // own limits): the template loads, every request using it gets an error, none hangs.
        for src in
            ["{% for i in range(1000000000000000) %}{% endfor %}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"]
        {
            let t = ChatTemplate::new(src.into(), String::new(), String::new(), true).unwrap();
            assert!(t.render(&[json!({"role": "user", "content": "x"})], None, true).is_err(), "{src}");
        }
        assert!(t0.elapsed().as_secs() < 20, "bounded: {:?}", t0.elapsed());
    }

    #[test]
    fn templates_without_tools_get_them_as_text() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE.into(), "<bos>".into(), "<eos>".into(), false).unwrap();
        assert!(!t.renders_tools);
        let tools =
            [json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})];
        let msgs = [
            json!({"role": "user", "content": "Weather in Hanoi?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Hanoi\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "31C"}),
        ];
        let out = t.render(&msgs, Some(&tools), true).unwrap();
        assert!(out.starts_with("<bos><start_of_turn>user\nYou may call one or more functions"), "{out}");
        assert!(out.contains("{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}"), "{out}");
        assert!(out.contains("<start_of_turn>model\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hanoi\"}}\n</tool_call><end_of_turn>"), "{out}");
        assert!(out.contains("<start_of_turn>user\n<tool_response>\n31C\n</tool_response><end_of_turn>"), "{out}");
    }

    #[test]
    fn thinking_is_on_unless_turned_off_and_a_forced_open_block_is_closed() {
        // Qwen3's switch, and DeepSeek-R1's template, which opens the block whatever it is told.
        let qwen3 = "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{%- endif %}";
        let r1 = "{% set c = messages[0].content.split('</think>')[-1] %}{{ c }}{{ '<｜Assistant｜><think>\n' }}";
        let (t3, tr1) = (
            ChatTemplate::new(qwen3.into(), String::new(), String::new(), true).unwrap(),
            ChatTemplate::new(r1.into(), String::new(), String::new(), true).unwrap(),
        );
        let msgs = [json!({"role": "user", "content": "Hi"})];
        let off: TemplateVars = json!({"enable_thinking": false}).as_object().unwrap().clone();
        assert_eq!(t3.render(&msgs, None, true).unwrap(), "<|im_start|>assistant\n");
        assert_eq!(t3.render_vars(&msgs, None, true, &off).unwrap(), "<|im_start|>assistant\n<think>\n\n</think>\n\n");
        let on = tr1.render(&msgs, None, true).unwrap();
        assert_eq!(on, "Hi<｜Assistant｜><think>\n");
        assert!(tr1.starts_in_reasoning(&on));
        let closed = tr1.render_vars(&msgs, None, true, &off).unwrap();
        assert_eq!(closed, "Hi<｜Assistant｜><think>\n</think>");
        assert!(!tr1.starts_in_reasoning(&closed));
        // A request's variables reach the template but cannot replace the conversation.
        let t = ChatTemplate::new("{{ messages[0].content }} {{ effort }}".into(), String::new(), String::new(), true)
            .unwrap();
        let vars: TemplateVars =
            json!({"effort": "low", "messages": [{"content": "injected"}]}).as_object().unwrap().clone();
        assert_eq!(t.render_vars(&msgs, None, true, &vars).unwrap(), "Hi low");
        assert_eq!(t.reasoning, None);
    }
}
