//! Reasoning ("thinking") models: whether a request thinks, and where its thoughts end and
//! its answer begins. `validate::chat` decides the first (`template_vars`: the request's
//! `chat_template_kwargs`, `reasoning_effort`, the server's `--reasoning`) and how the
//! output is read (`ReasoningSpec`); every API shape then splits each choice's text with a
//! `ReasoningSplit` before reading tool calls from the answer part — chat as
//! `reasoning_content` (DeepSeek's and llama.cpp's field), Messages as `thinking` blocks,
//! Responses as `reasoning` items. Streamed and whole answers run the same splitter, so a
//! stream's pieces join into the plain answer.

use serde_json::Value;
use slm_engine::chat_template::{ChatTemplate, TemplateVars};
use slm_engine::reasoning_markers::{self, ReasoningMarkers};

use crate::error::ApiError;

/// Whether requests think unless they say (llama.cpp's `--reasoning on|off|auto`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningMode {
    /// The template's default (thinking on for templates that have a switch).
    #[default]
    Auto,
    On,
    Off,
}

/// How thoughts come back (llama.cpp's `--reasoning-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReasoningFormat {
    /// `deepseek` for templates with reasoning tags, `none` for the others.
    #[default]
    Auto,
    /// Thoughts apart, in `reasoning_content`.
    Deepseek,
    /// Thoughts in `reasoning_content` and, with their tags, in `content` too.
    DeepseekLegacy,
    /// Thoughts left in `content` as the model wrote them.
    None,
}

impl ReasoningFormat {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "deepseek" => Some(Self::Deepseek),
            "deepseek-legacy" => Some(Self::DeepseekLegacy),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// The server's defaults (`slm serve --reasoning`, `--reasoning-format`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReasoningConfig {
    pub mode: ReasoningMode,
    pub format: ReasoningFormat,
}

/// The reasoning fields of a chat request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReasoningAsk<'a> {
    pub kwargs: Option<&'a TemplateVars>,
    pub effort: Option<&'a str>,
    pub format: Option<&'a str>,
}

/// Variables the template renders the conversation itself with: a request cannot set them.
const RESERVED: &[&str] = &["messages", "tools", "add_generation_prompt", "bos_token", "eos_token"];
/// OpenAI's `reasoning_effort` values.
const EFFORTS: &[&str] = &["none", "minimal", "low", "medium", "high", "xhigh"];

/// The template variables of a request: its `chat_template_kwargs`, `reasoning_effort` (as
/// the variable of that name; "none" also turns thinking off) and the server's mode.
/// `constrained`: the output is held to a grammar from its first token, which leaves no
/// room for thoughts, so thinking is off (a request that asks for both is refused).
pub fn template_vars(
    ask: &ReasoningAsk,
    config: &ReasoningConfig,
    constrained: bool,
) -> Result<TemplateVars, ApiError> {
    let mut vars = ask.kwargs.cloned().unwrap_or_default();
    if let Some(k) = RESERVED.iter().find(|k| vars.contains_key(**k)) {
        return Err(ApiError::invalid(
            format!("chat_template_kwargs.{k}"),
            format!("`{k}` is the conversation's own template variable; give it in the request, not in `chat_template_kwargs`"),
        ));
    }
    let explicit = match vars.get("enable_thinking") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs.enable_thinking",
                "`enable_thinking` must be a boolean",
            ))
        }
    };
    if let Some(e) = ask.effort {
        if !EFFORTS.contains(&e) {
            return Err(ApiError::invalid(
                "reasoning_effort",
                format!("`reasoning_effort` must be one of {}", EFFORTS.join(", ")),
            ));
        }
        vars.entry("reasoning_effort").or_insert_with(|| Value::String(e.to_string()));
    }
    let thinking = match (explicit, ask.effort, config.mode) {
        (Some(b), ..) => Some(b),
        (None, Some("none"), _) => Some(false),
        (None, _, ReasoningMode::Off) => Some(false),
        (None, _, ReasoningMode::On) => Some(true),
        (None, _, ReasoningMode::Auto) => None,
    };
    let thinking = match (constrained, thinking) {
        (true, Some(true)) if explicit == Some(true) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs.enable_thinking",
                "thinking cannot be combined with a constraint that holds the output from its first token (`response_format`, `grammar`, `json_schema`, a required tool call)",
            ))
        }
        (true, _) => Some(false),
        (false, t) => t,
    };
    if let Some(t) = thinking {
        vars.insert("enable_thinking".into(), Value::Bool(t));
    }
    Ok(vars)
}

/// How a choice's text is read, or None when it is all answer.
pub fn spec(
    ask: &ReasoningAsk,
    config: &ReasoningConfig,
    template: &ChatTemplate,
    prompt: &str,
    constrained: bool,
) -> Result<Option<ReasoningSpec>, ApiError> {
    let format = match ask.format {
        Some(f) => ReasoningFormat::parse(f).ok_or_else(|| {
            ApiError::invalid("reasoning_format", "`reasoning_format` must be auto, deepseek, deepseek-legacy or none")
        })?,
        None => config.format,
    };
    let markers = match (format, template.reasoning) {
        (ReasoningFormat::None, _) => return Ok(None),
        _ if constrained => return Ok(None),
        (_, Some(m)) => m,
        (ReasoningFormat::Auto, None) => return Ok(None),
        // Asked for by name: the common tags, for a model whose template does not say.
        (_, None) => reasoning_markers::DEFAULT,
    };
    Ok(Some(ReasoningSpec {
        markers,
        starts_open: markers.ends_open(prompt),
        keep_tags: format == ReasoningFormat::DeepseekLegacy,
    }))
}

/// How one choice's text is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningSpec {
    pub markers: ReasoningMarkers,
    /// The prompt left a block open: the text starts with thoughts.
    pub starts_open: bool,
    /// `deepseek-legacy`: the answer part keeps the thoughts and their tags too.
    pub keep_tags: bool,
}

/// A piece of a choice's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Reasoning(String),
    Answer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the text may still open a block.
    Start,
    Thinking,
    Answer,
}

/// One choice's text, fed as it is generated, split into thoughts and answer. Thoughts are
/// trimmed, and the answer's whitespace after the close tag dropped, as llama.cpp does; a
/// tag cut across two pushes is held until it is whole.
pub struct ReasoningSplit {
    spec: ReasoningSpec,
    state: State,
    /// Pushes (tokens) that were thoughts or their tags.
    num_reasoning_pushes: usize,
    held: String,
    /// Whitespace at the end of the thoughts so far: sent only if more thoughts follow.
    trailing: String,
    thought: bool,
    /// The answer has not begun: whitespace is dropped.
    answer_fresh: bool,
}

impl ReasoningSplit {
    pub fn new(spec: ReasoningSpec) -> Self {
        let state = if spec.starts_open { State::Thinking } else { State::Start };
        Self {
            spec,
            state,
            num_reasoning_pushes: 0,
            held: String::new(),
            trailing: String::new(),
            thought: false,
            answer_fresh: false,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Part> {
        let mut out = Vec::new();
        if self.spec.keep_tags && !text.is_empty() {
            out.push(Part::Answer(text.to_string()));
        }
        let before = self.state;
        self.held.push_str(text);
        self.advance(false, &mut out);
        let thinking = before == State::Thinking
            || self.state == State::Thinking
            || out.iter().any(|p| matches!(p, Part::Reasoning(_)));
        if thinking && !text.is_empty() {
            self.num_reasoning_pushes += 1;
        }
        out
    }

    /// How many pushes were thoughts (or their tags): a turn's reasoning tokens.
    pub fn num_reasoning_pushes(&self) -> usize {
        self.num_reasoning_pushes
    }

    /// The rest, at the choice's end.
    pub fn finish(&mut self) -> Vec<Part> {
        let mut out = Vec::new();
        self.advance(true, &mut out);
        out
    }

    fn advance(&mut self, end: bool, out: &mut Vec<Part>) {
        let ReasoningMarkers { open, close } = self.spec.markers;
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(open) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if open.starts_with(t) && !end {
                        return;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => match self.held.find(close) {
                    Some(at) => {
                        let thoughts = self.held[..at].to_string();
                        self.held.drain(..at + close.len());
                        self.think(&thoughts, true, out);
                        self.state = State::Answer;
                        self.answer_fresh = true;
                    }
                    None => {
                        let keep = if end { 0 } else { partial_suffix(&self.held, close) };
                        let thoughts: String = self.held.drain(..self.held.len() - keep).collect();
                        self.think(&thoughts, end, out);
                        return;
                    }
                },
                State::Answer => {
                    if self.answer_fresh {
                        let t = self.held.trim_start();
                        if t.is_empty() {
                            self.held.clear();
                            return;
                        }
                        self.held = t.to_string();
                        self.answer_fresh = false;
                    }
                    if !self.held.is_empty() && !self.spec.keep_tags {
                        out.push(Part::Answer(std::mem::take(&mut self.held)));
                    }
                    self.held.clear();
                    return;
                }
            }
        }
    }

    /// Thoughts, trimmed at both ends of the whole: whitespace at the end is held until more
    /// thoughts follow (`last`: none will).
    fn think(&mut self, text: &str, last: bool, out: &mut Vec<Part>) {
        let text = if self.thought { text } else { text.trim_start() };
        let body = text.trim_end();
        if !body.is_empty() {
            let piece = std::mem::take(&mut self.trailing) + body;
            self.thought = true;
            out.push(Part::Reasoning(piece));
        }
        if !last && self.thought {
            self.trailing.push_str(&text[body.len()..]);
        }
    }
}

/// How long an end of `text` is that begins `tag` (a tag the next push may complete).
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// More of a choice's text (`end`: its last piece) through its splitter, or all answer when
/// it has none (not a reasoning model's).
pub fn parts(split: Option<&mut ReasoningSplit>, text: &str, end: bool) -> Vec<Part> {
    let Some(s) = split else { return vec![Part::Answer(text.to_string())] };
    let mut parts = s.push(text);
    if end {
        parts.extend(s.finish());
    }
    parts
}

/// How many of a choice's tokens were thoughts.
pub fn num_reasoning_tokens<'a>(spec: Option<&ReasoningSpec>, tokens: impl IntoIterator<Item = &'a str>) -> usize {
    let Some(spec) = spec else { return 0 };
    let mut s = ReasoningSplit::new(*spec);
    for t in tokens {
        s.push(t);
    }
    s.num_reasoning_pushes()
}

/// A whole choice's text: its thoughts (None if it had none) and its answer.
pub fn split(spec: Option<&ReasoningSpec>, text: &str) -> (Option<String>, String) {
    let Some(spec) = spec else { return (None, text.to_string()) };
    let mut s = ReasoningSplit::new(*spec);
    let (mut reasoning, mut answer) = (None::<String>, String::new());
    for p in parts(Some(&mut s), text, true) {
        match p {
            Part::Reasoning(r) => reasoning.get_or_insert_with(String::new).push_str(&r),
            Part::Answer(a) => answer.push_str(&a),
        }
    }
    (reasoning, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THINK: ReasoningMarkers = reasoning_markers::DEFAULT;

    fn spec(starts_open: bool, keep_tags: bool) -> ReasoningSpec {
        ReasoningSpec { markers: THINK, starts_open, keep_tags }
    }

    /// The text fed in every cut into pieces of `n` bytes gives the same split as whole.
    fn streamed(spec: ReasoningSpec, text: &str, n: usize) -> (Option<String>, String) {
        let mut s = ReasoningSplit::new(spec);
        let (mut r, mut a) = (None::<String>, String::new());
        let chars: Vec<char> = text.chars().collect();
        let mut parts = Vec::new();
        for c in chars.chunks(n) {
            parts.extend(s.push(&c.iter().collect::<String>()));
        }
        parts.extend(s.finish());
        for p in parts {
            match p {
                Part::Reasoning(x) => r.get_or_insert_with(String::new).push_str(&x),
                Part::Answer(x) => a.push_str(&x),
            }
        }
        (r, a)
    }

    #[test]
    fn thoughts_and_answer_split_alike_whole_and_streamed() {
        let cases = [
            (
                spec(false, false),
                "<think>\nLet me add.\n2+2=4\n</think>\n\nIt is 4.",
                Some("Let me add.\n2+2=4"),
                "It is 4.",
            ),
            (spec(true, false), "Hmm, easy.\n</think>\n\n4", Some("Hmm, easy."), "4"),
            (spec(false, false), "Just 4.", None, "Just 4."),
            (spec(false, false), "  <thin", None, "  <thin"),
            // Cut while thinking (max_tokens): all thoughts, no answer.
            (spec(true, false), "Step one. \n", Some("Step one."), ""),
            (spec(false, false), "<think></think>4", None, "4"),
            (spec(false, true), "<think>a</think> b", Some("a"), "<think>a</think> b"),
            (spec(true, false), "ý nghĩ </th>ink</think>Đáp", Some("ý nghĩ </th>ink"), "Đáp"),
        ];
        for (s, text, r, a) in cases {
            let want = (r.map(String::from), a.to_string());
            assert_eq!(split(Some(&s), text), want, "{text:?}");
            for n in 1..6 {
                assert_eq!(streamed(s, text, n), want, "{text:?} in pieces of {n}");
            }
        }
        assert_eq!(split(None, "<think>x</think>y"), (None, "<think>x</think>y".into()));
    }

    #[test]
    fn the_switch_comes_from_the_request_then_the_server() {
        let kw = |v: Value| v.as_object().unwrap().clone();
        let off = ReasoningConfig { mode: ReasoningMode::Off, ..Default::default() };
        let auto = ReasoningConfig::default();
        let on_kw = kw(serde_json::json!({"enable_thinking": true}));
        let ask = |kwargs, effort| ReasoningAsk { kwargs, effort, format: None };
        assert_eq!(template_vars(&ask(None, None), &auto, false).unwrap().get("enable_thinking"), None);
        assert_eq!(template_vars(&ask(None, None), &off, false).unwrap()["enable_thinking"], false);
        assert_eq!(template_vars(&ask(Some(&on_kw), None), &off, false).unwrap()["enable_thinking"], true);
        let v = template_vars(&ask(None, Some("none")), &auto, false).unwrap();
        assert_eq!((v["enable_thinking"].clone(), v["reasoning_effort"].clone()), (false.into(), "none".into()));
        assert_eq!(template_vars(&ask(None, Some("high")), &auto, true).unwrap()["enable_thinking"], false);
        let bad = [
            (ask(Some(&on_kw), None), true, "chat_template_kwargs.enable_thinking"),
            (ask(None, Some("huge")), false, "reasoning_effort"),
        ];
        for (a, constrained, param) in bad {
            assert_eq!(template_vars(&a, &auto, constrained).unwrap_err().param.as_deref(), Some(param));
        }
        let msgs = kw(serde_json::json!({"messages": []}));
        let e = template_vars(&ask(Some(&msgs), None), &auto, false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("chat_template_kwargs.messages"));
        let num = kw(serde_json::json!({"enable_thinking": 1}));
        assert!(template_vars(&ask(Some(&num), None), &auto, false).is_err());
    }
}
