//! OpenAI request → `ValidRequest`, or an `ApiError` naming the field at fault. A
//! `ValidRequest` only comes out of this module: it carries the rendered, tokenized prompts,
//! the checked sampling options and limits, and the constraint compiled once (cloned for each
//! choice). Rendering the chat template, tokenizing and compiling grammars are CPU work of
//! unbounded size, so they run on the blocking pool, never on the async workers. Nothing past
//! this module sees an unchecked value.

use std::sync::Arc;

use serde_json::{json, Value};
use slm_engine::chat_template::TemplateVars;
use slm_engine::{Constraint, ConstraintSpec, EngineError, EngineHandle, Model, Request, SamplingParams};

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::grammar;
use crate::openai::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, MessageContent, PromptField, Role, SamplingFields, StopField,
};
use crate::reasoning::{self, ReasoningConfig, ReasoningSpec};
use crate::repeat_guard::{self, GuardSpec};
use crate::state::Served;
use crate::stream::{self, EventStream};
use crate::tool_format::{self, ToolFormat};
use crate::tool_hint;
use crate::tools::{self, ToolChoice};

/// Most choices per request (`n`).
pub const MAX_N: i64 = 8;
/// Most stop strings per request.
pub const MAX_STOP: usize = 16;

/// Sampling and output options shared by both completion endpoints.
#[derive(Debug, Clone)]
pub struct ValidSampling {
    pub params: SamplingParams,
    pub n: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// The prefix-cache salt: the request's `cache_salt`, under its API key when keys are set.
    pub cache_salt: Option<String>,
    /// Speculative decoding allowed (default) or turned off by the request.
    pub speculative: bool,
    /// llama.cpp's `return_progress` (progress chunks) and `timings_per_token` (timings on
    /// every chunk), which only streams show: the engine reports the prompt's evaluation for
    /// either.
    pub return_progress: bool,
    pub timings_per_token: bool,
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64, lo_open: bool) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if x.is_nan() || x > hi || x < lo || (lo_open && x == lo) => {
            let l = if lo_open { "(" } else { "[" };
            Err(ApiError::invalid(param, format!("`{param}` must be in {l}{lo}, {hi}], got {x}")))
        }
        other => Ok(other),
    }
}

/// `logprobs`: None, or Some(number of alternatives) when the request wants logprobs.
pub fn sampling(
    f: &SamplingFields,
    logprobs: Option<usize>,
    vocab_size: usize,
    tenant: Option<&Tenant>,
) -> Result<ValidSampling, ApiError> {
    let temperature = range("temperature", f.temperature, 0.0, 2.0, false)?.unwrap_or(1.0);
    let top_p = range("top_p", f.top_p, 0.0, 1.0, true)?.unwrap_or(1.0);
    let presence = range("presence_penalty", f.presence_penalty, -2.0, 2.0, false)?.unwrap_or(0.0);
    let frequency = range("frequency_penalty", f.frequency_penalty, -2.0, 2.0, false)?.unwrap_or(0.0);
    let min_p = range("min_p", f.min_p, 0.0, 1.0, false)?.unwrap_or(0.0);
    let repetition = range("repetition_penalty", f.repetition_penalty, 0.0, 10.0, true)?.unwrap_or(1.0);
    let n = f.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid("n", format!("`n` must be between 1 and {MAX_N}, got {n}")));
    }
    let top_k = f.top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::invalid("top_k", format!("`top_k` must be 0 (off) or positive, got {top_k}")));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in f.logit_bias.iter().flatten() {
        let id: u32 = k
            .parse()
            .map_err(|_| ApiError::invalid("logit_bias", format!("`logit_bias` keys must be token ids, got {k:?}")))?;
        if id as usize >= vocab_size {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` token id {id} is out of range (vocabulary size {vocab_size})"),
            ));
        }
        if !(-100.0..=100.0).contains(v) {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` values must be in [-100, 100], got {v} for token {id}"),
            ));
        }
        logit_bias.push((id, *v as f32));
    }
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("`stop` may hold at most {MAX_STOP} strings, got {}", stop.len()),
        ));
    }
    let params = SamplingParams {
        temperature: temperature as f32,
        top_k: top_k as usize,
        top_p: top_p as f32,
        min_p: min_p as f32,
        repetition_penalty: repetition as f32,
        frequency_penalty: frequency as f32,
        presence_penalty: presence as f32,
        logit_bias,
        seed: f.seed.map(|s| s as u64),
        logprobs: logprobs.is_some(),
        top_logprobs: logprobs.unwrap_or(0),
        post_sampling: f.post_sampling_probs.unwrap_or(false),
    };
    let stream = f.stream.unwrap_or(false);
    let include_usage = stream && f.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(ValidSampling {
        params,
        n: n as usize,
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        stream,
        include_usage,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        cache_salt: match (tenant, &f.cache_salt) {
            // A tenant's own salt stays inside its key: no salt can reach another tenant's.
            (Some(t), salt) => Some(format!("{}\u{0}{}", t.0, salt.as_deref().unwrap_or(""))),
            (None, salt) => salt.clone(),
        },
        speculative: f.speculative.unwrap_or(true),
        return_progress: f.return_progress.unwrap_or(false),
        timings_per_token: f.timings_per_token.unwrap_or(false),
    })
}

/// `max_tokens` checked against the context: defaults to what is left of it. The one
/// context-length check of the server: a prompt that alone fills the context names the prompt
/// field (`prompt_param`), a completion that does not fit names `param`; the message is the
/// engine's, with both numbers.
pub fn max_tokens(
    param: &str,
    prompt_param: &str,
    requested: Option<i64>,
    num_prompt_tokens: usize,
    max_model_len: usize,
) -> Result<usize, ApiError> {
    let err = |m: usize, field: &str| {
        let e = EngineError::ContextLengthExceeded {
            max: max_model_len,
            needed: num_prompt_tokens.saturating_add(m),
            prompt: num_prompt_tokens,
            max_tokens: m,
        };
        ApiError { param: Some(field.to_string()), ..ApiError::from(e) }
    };
    match requested {
        Some(m) if m < 1 => Err(ApiError::invalid(param, format!("`{param}` must be at least 1, got {m}"))),
        _ if num_prompt_tokens >= max_model_len => Err(err(requested.unwrap_or(1).max(1) as usize, prompt_param)),
        // The prompt fits (checked above), so the subtraction cannot underflow, and the
        // comparison cannot overflow whatever `m` is.
        Some(m) if m as u64 > (max_model_len - num_prompt_tokens) as u64 => Err(err(m as usize, param)),
        Some(m) => Ok(m as usize),
        None => Ok(max_model_len - num_prompt_tokens),
    }
}

/// Chat messages as the chat template wants them (OpenAI JSON shape; `developer` is `system`).
pub fn messages(msgs: &[ChatMessage]) -> Result<Vec<Value>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role {
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let content = match &m.content {
                None => Value::Null,
                Some(MessageContent::Text(s)) => Value::String(s.clone()),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => texts.push(t.clone()),
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}].text"),
                                    "a text part needs `text`",
                                ))
                            }
                            (other, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}].type"),
                                    format!("content parts of type `{other}` are not supported; only `text`"),
                                ))
                            }
                        }
                    }
                    Value::String(texts.join("\n"))
                }
            };
            if content.is_null() && m.role != Role::Assistant {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!("a `{role}` message needs `content`"),
                ));
            }
            if m.role == Role::Assistant && content.is_null() && m.tool_calls.is_none() {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "an assistant message needs `content` or `tool_calls`",
                ));
            }
            let mut v = json!({"role": role, "content": content});
            if let Some(n) = &m.name {
                v["name"] = json!(n);
            }
            if let Some(tc) = &m.tool_calls {
                v["tool_calls"] = json!(tc);
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            if let Some(r) = &m.reasoning_content {
                v["reasoning_content"] = json!(r);
            }
            Ok(v)
        })
        .collect()
}

/// A request ready for the engine: only this module makes one.
pub struct ValidRequest {
    prompts: Vec<Vec<u32>>,
    sampling: ValidSampling,
    max_tokens: usize,
    constraint: Option<Constraint>,
    /// The request field the constraint came from (named when it cannot be honoured).
    constraint_param: &'static str,
}

impl ValidRequest {
    pub fn sampling(&self) -> &ValidSampling {
        &self.sampling
    }

    /// An error from running the request, naming the constraint's field when it is the
    /// grammar that failed (one no output can satisfy, found while generating).
    pub fn run_error(&self, e: ApiError) -> ApiError {
        e.for_param(self.constraint_param)
    }

    /// The tokenized prompts.
    pub fn prompts(&self) -> &[Vec<u32>] {
        &self.prompts
    }

    /// The request field its constraint came from.
    pub fn constraint_param(&self) -> &'static str {
        self.constraint_param
    }

    /// Prompt tokens over every choice (what `usage.prompt_tokens` reports).
    pub fn num_prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum::<usize>() * self.sampling.n
    }

    /// Queues the `n` choices of every prompt (choice `i` of prompt `p` is stream `p·n + i`).
    /// A seeded request gives choice `i` the seed `seed + i`, so choices differ from each
    /// other and each is reproducible.
    pub fn submit(&self, served: &Served) -> Result<Vec<EventStream>, ApiError> {
        let requests = self.requests(served)?;
        // If the queue fills part way, the streams already queued are dropped on return,
        // which takes them off the queue at once.
        let mut streams = Vec::with_capacity(requests.len());
        for r in requests {
            streams.push(stream::events(served.engine.submit(r)?));
        }
        Ok(streams)
    }

    /// The engine requests of the `n` choices of every prompt, in `submit`'s order.
    fn requests(&self, served: &Served) -> Result<Vec<Request>, ApiError> {
        let (s, engine) = (&self.sampling, &served.engine);
        // More sequences than the queue can ever hold: retrying cannot help, so not a 429.
        let limit = engine.config().max_waiting;
        if self.prompts.len() * s.n > limit {
            let (param, what) = if self.prompts.len() > 1 { ("prompt", "prompts × `n`") } else { ("n", "`n`") };
            return Err(ApiError::invalid(
                param,
                format!(
                    "this request asks for {} sequences ({what}), more than the server queues at once ({limit})",
                    self.prompts.len() * s.n
                ),
            ));
        }
        let mut requests = Vec::with_capacity(self.prompts.len() * s.n);
        for prompt in &self.prompts {
            for i in 0..s.n {
                let mut params = s.params.clone();
                let seed = params.seed.or(served.engine.config().default_seed);
                params.seed = seed.map(|seed| seed.wrapping_add(i as u64));
                let mut r = Request::new(prompt.clone(), params, self.max_tokens);
                r.stop_strings = s.stop.clone();
                r.ignore_eos = s.ignore_eos;
                r.constraint = self.constraint.clone();
                r.cache_salt = s.cache_salt.clone();
                r.speculative = s.speculative;
                r.report_progress = s.return_progress || s.timings_per_token;
                r.lora = served.lora.clone();
                requests.push(r);
            }
        }
        Ok(requests)
    }
}

/// A chat request: the engine request, and what its answer needs to know.
pub struct ValidChat {
    pub request: ValidRequest,
    /// The tools a call may name (None: tools are off).
    pub tool_names: Option<Vec<String>>,
    pub logprobs: bool,
    /// Armed when the conversation holds answered calls (repeat_guard.rs).
    pub guard: Option<Arc<GuardSpec>>,
    /// How each choice's text splits into thoughts and answer (a reasoning model's).
    pub reasoning: Option<ReasoningSpec>,
}

impl ValidChat {
    /// Queues the choices, each behind the repeat-call guard when it is armed.
    pub fn submit(&self, served: &Served) -> Result<Vec<EventStream>, ApiError> {
        let Some(guard) = &self.guard else { return self.request.submit(served) };
        // As `ValidRequest::submit`; the guard keeps each choice's request to continue it.
        let mut streams = Vec::new();
        for r in self.request.requests(served)? {
            let first = served.engine.submit(r.clone())?;
            streams.push(repeat_guard::guarded(first, r, guard.clone(), served.engine.clone()));
        }
        Ok(streams)
    }
}

/// A text-completion request, and per prompt the text `echo` repeats.
pub struct ValidCompletion {
    pub request: ValidRequest,
    /// Per choice (prompt `i / n`): the prompt's text when `echo` is set, else empty.
    pub echoes: Vec<String>,
    pub logprobs: bool,
    /// `echo` with `logprobs`: the prompt tokens' own logprobs are reported too, with this
    /// many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// `echo` with `max_tokens: 0`: only the prompt is answered (nothing is generated).
    pub echo_only: bool,
}

/// The tool-call format the model is asked for: its template's own, or Hermes when the
/// template cannot render tools (the engine then describes them in Hermes terms).
fn native_tool_format(model: &Model) -> &'static ToolFormat {
    let t = &model.chat_template;
    if t.renders_tools {
        ToolFormat::native(&t.source)
    } else {
        &tool_format::HERMES
    }
}

/// How many alternatives per token a request asks for (`top_logprobs`, legacy `logprobs`).
fn num_alternatives(param: &str, k: Option<i64>) -> Result<Option<usize>, ApiError> {
    match k {
        Some(k) if !(0..=20).contains(&k) => {
            Err(ApiError::invalid(param, format!("`{param}` must be between 0 and 20, got {k}")))
        }
        k => Ok(k.map(|k| k as usize)),
    }
}

/// Runs `f` on the blocking pool: template rendering, tokenization and grammar compilation
/// are CPU work whose size the request decides.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))?
}

/// Compiles the request's constraint once; a grammar error names `param`.
fn compile(model: &Model, spec: Option<ConstraintSpec>, param: &str) -> Result<Option<Constraint>, ApiError> {
    spec.map(|s| model.grammar.compile(&s)).transpose().map_err(|e| ApiError::from(e).for_param(param))
}

pub async fn chat(
    engine: &EngineHandle,
    req: ChatCompletionRequest,
    tenant: Option<&Tenant>,
    reasoning: &ReasoningConfig,
) -> Result<ValidChat, ApiError> {
    let (model, max_model_len) = (engine.model().clone(), engine.max_model_len());
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = match (logprobs, num_alternatives("top_logprobs", req.top_logprobs)?) {
        (false, Some(_)) => {
            return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs` set to true"))
        }
        (_, k) => k.unwrap_or(0),
    };
    let sampling =
        sampling(&req.sampling(), logprobs.then_some(top_logprobs), model.decoder.config.vocab_size, tenant)?;
    let mut messages = messages(&req.messages)?;
    // tool_choice "none" renders no tools, so the model is not invited to call one.
    let offered = tools::offered(req.tools.as_deref(), req.tool_choice.as_ref())?;
    let format = grammar::completion_fields(
        req.json_schema.as_ref(),
        req.grammar.as_deref(),
        None,
        req.response_format.as_ref(),
    )?;
    // Calls are constrained to the offered tools; in `auto` mode a `response_format` wins.
    let mut guard = None;
    let (spec, param) = match &offered {
        Some(o) if format.is_none() || o.choice != ToolChoice::Auto => {
            if req.repeat_call_guard.unwrap_or(true) {
                guard = GuardSpec::new(&req.messages, o).map(Arc::new);
            }
            if o.choice == ToolChoice::Auto {
                let hints = tool_hint::Hints {
                    system: req.tool_system_hint.unwrap_or(false),
                    result: req.tool_result_hint.unwrap_or(false),
                };
                hints.apply(&req.messages, &mut messages);
            }
            let (tools, parallel) = (req.tools.as_deref().unwrap_or_default(), req.parallel_tool_calls.unwrap_or(true));
            (grammar::tool_calls(tools, o, parallel, native_tool_format(&model))?, "tools")
        }
        _ => match format {
            Some((c, param)) => (Some(c), param),
            None => (None, "response_format"),
        },
    };
    let max_param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let requested = req.max_completion_tokens.or(req.max_tokens);
    let tools = offered.as_ref().and(req.tools);
    let tool_names = offered.map(|o| o.names);
    let mode = render_mode(&req.messages, req.continue_final_message, req.add_generation_prompt)?;
    // A grammar that holds the output from its first token leaves no room for thoughts
    // (auto tool calls are lazy: they start at a trigger).
    let constrained = spec.as_ref().is_some_and(|s| s.triggers.is_empty());
    let config = *reasoning;
    let (kwargs, effort, format) = (req.chat_template_kwargs, req.reasoning_effort, req.reasoning_format);
    let ask = reasoning::ReasoningAsk { kwargs: kwargs.as_ref(), effort: effort.as_deref(), format: format.as_deref() };
    let vars = reasoning::template_vars(&ask, &config, constrained)?;
    blocking(move || {
        let text = render_text(&model, &messages, tools.as_deref(), mode, &vars)?;
        let ask =
            reasoning::ReasoningAsk { kwargs: kwargs.as_ref(), effort: effort.as_deref(), format: format.as_deref() };
        let reasoning = reasoning::spec(&ask, &config, &model.chat_template, &text, constrained)?;
        let prompt = model.tokenizer.encode(&text, true, true)?;
        let max_tokens = max_tokens(max_param, "messages", requested, prompt.len(), max_model_len)?;
        let constraint = compile(&model, spec, param)?;
        let request = ValidRequest { prompts: vec![prompt], sampling, max_tokens, constraint, constraint_param: param };
        Ok(ValidChat { request, tool_names, logprobs, guard, reasoning })
    })
    .await
}

/// How a chat prompt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderMode {
    /// The assistant's turn opened (the default).
    NewTurn,
    /// No generation prompt: the model writes the next turn's header itself.
    NoGenerationPrompt,
    /// The last message, an assistant's, continued (prefill).
    Continue,
}

/// `continue_final_message` / `add_generation_prompt`, checked against the messages.
pub fn render_mode(
    msgs: &[ChatMessage],
    continue_final: Option<bool>,
    add_generation_prompt: Option<bool>,
) -> Result<RenderMode, ApiError> {
    match (continue_final.unwrap_or(false), add_generation_prompt) {
        (true, Some(true)) => Err(ApiError::invalid(
            "continue_final_message",
            "`continue_final_message` and `add_generation_prompt` cannot both be true",
        )),
        (true, _) if !matches!(msgs.last(), Some(m) if m.role == Role::Assistant) => Err(ApiError::invalid(
            "continue_final_message",
            "`continue_final_message` needs the last message to be the assistant's",
        )),
        (true, _) => Ok(RenderMode::Continue),
        (false, Some(false)) => Ok(RenderMode::NoGenerationPrompt),
        (false, _) => Ok(RenderMode::NewTurn),
    }
}

/// The chat template's prompt text (`/apply-template` shows it), with the request's
/// template variables (`reasoning::template_vars`).
pub fn render_text(
    model: &Model,
    messages: &[Value],
    tools: Option<&[Value]>,
    mode: RenderMode,
    vars: &TemplateVars,
) -> Result<String, ApiError> {
    let (t, tok) = (&model.chat_template, &model.tokenizer);
    match mode {
        RenderMode::NewTurn => t.render_prompt_with(tok, messages, tools, true, vars),
        RenderMode::Continue => t.render_continuation(tok, messages, tools, vars),
        RenderMode::NoGenerationPrompt => t.render_prompt_with(tok, messages, tools, false, vars),
    }
    .map_err(|e| ApiError::invalid("messages", e.to_string()))
}

/// How many tokens a chat request's prompt takes (whether or not it fits the context):
/// the Responses and Messages APIs' token-counting endpoints.
pub async fn count_chat_tokens(
    engine: &EngineHandle,
    req: ChatCompletionRequest,
    reasoning: &ReasoningConfig,
) -> Result<usize, ApiError> {
    let model = engine.model().clone();
    let messages = messages(&req.messages)?;
    let offered = tools::offered(req.tools.as_deref(), req.tool_choice.as_ref())?;
    let vars = reasoning::template_vars(&req.reasoning_ask(), reasoning, false)?;
    let tools = offered.and(req.tools);
    let mode = render_mode(&req.messages, req.continue_final_message, req.add_generation_prompt)?;
    blocking(move || {
        let text = render_text(&model, &messages, tools.as_deref(), mode, &vars)?;
        Ok(model.tokenizer.encode(&text, true, true)?.len())
    })
    .await
}

/// OpenAI's default `max_tokens` for text completions.
const DEFAULT_COMPLETION_TOKENS: i64 = 16;

pub async fn completion(
    engine: &EngineHandle,
    req: CompletionRequest,
    tenant: Option<&Tenant>,
) -> Result<ValidCompletion, ApiError> {
    completion_with(engine, req, tenant, Some(DEFAULT_COMPLETION_TOKENS)).await
}

/// The prompts' tokens and texts; with a `suffix`, each text prompt is the prefix of a
/// fill-in-the-middle prompt.
fn tokenize_prompts(
    model: &Model,
    prompt: PromptField,
    suffix: Option<&str>,
    budget: slm_engine::tokenizer::InfillBudget,
) -> Result<(Vec<Vec<u32>>, Vec<String>), ApiError> {
    let tok = &model.tokenizer;
    if let Some(suffix) = suffix {
        let texts = match prompt {
            PromptField::Text(t) => vec![t],
            PromptField::Texts(v) => v,
            _ => return Err(ApiError::invalid("suffix", "`suffix` needs `prompt` as text, not token ids")),
        };
        let infill = |t: &String| {
            tok.infill(&slm_engine::tokenizer::InfillInput { prefix: t, suffix, ..Default::default() }, budget)
        };
        return Ok((texts.iter().map(infill).collect::<Result<_, _>>()?, texts));
    }
    Ok(match prompt {
        PromptField::Text(t) => (vec![tok.encode(&t, true, true)?], vec![t]),
        PromptField::Texts(v) => (v.iter().map(|t| tok.encode(t, true, true)).collect::<Result<_, _>>()?, v),
        PromptField::Tokens(ids) => {
            let text = tok.decode(&ids, true);
            (vec![ids], vec![text])
        }
        PromptField::TokenLists(v) => {
            let texts = v.iter().map(|ids| tok.decode(ids, true)).collect();
            (v, texts)
        }
    })
}

/// The budgets of an infill prompt: llama.cpp's default batch (2048 tokens) for the FIM part,
/// the rest of the context for repo-level context. In a context under 4096 tokens the FIM part
/// gets half (llama.cpp's batch would leave the context files no room there).
pub fn infill_budget(max_model_len: usize, max_tokens: usize) -> slm_engine::tokenizer::InfillBudget {
    slm_engine::tokenizer::InfillBudget { num_batch: 2048.min(max_model_len / 2), num_ctx: max_model_len, max_tokens }
}

/// A text completion whose `max_tokens`, when absent, is `default_max_tokens` (`None`: what
/// the context has left, as llama.cpp's `n_predict: -1`).
pub async fn completion_with(
    engine: &EngineHandle,
    req: CompletionRequest,
    tenant: Option<&Tenant>,
    default_max_tokens: Option<i64>,
) -> Result<ValidCompletion, ApiError> {
    let (model, max_model_len) = (engine.model().clone(), engine.max_model_len());
    let logprobs = num_alternatives("logprobs", req.logprobs)?;
    let sampling = sampling(&req.sampling(), logprobs, model.decoder.config.vocab_size, tenant)?;
    let constrained = grammar::completion_fields(
        req.json_schema.as_ref(),
        req.grammar.as_deref(),
        req.regex.as_deref(),
        req.response_format.as_ref(),
    )?;
    let (spec, param) = match constrained {
        Some((c, param)) => (Some(c), param),
        None => (None, "response_format"),
    };
    let echo = req.echo.unwrap_or(false);
    let vocab = model.decoder.config.vocab_size;
    if req.suffix.is_some() && model.tokenizer.fim().infill().is_none() {
        return Err(ApiError::invalid(
            "suffix",
            "`suffix` needs a model trained for fill-in-the-middle (with FIM tokens); this one has none",
        ));
    }
    let requested = req.max_tokens.or(default_max_tokens);
    blocking(move || {
        let budget = infill_budget(max_model_len, requested.map_or(0, |m| m.max(0) as usize));
        let (prompts, texts) = tokenize_prompts(&model, req.prompt, req.suffix.as_deref(), budget)?;
        if prompts.is_empty() {
            return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
            }
            if let Some(t) = p.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("prompt {i}: token id {t} is out of range (vocabulary size {vocab})"),
                ));
            }
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        // `echo` with `max_tokens: 0` scores the prompt alone (evaluation harnesses do this).
        let echo_only = echo && requested == Some(0);
        let max_tokens = if echo_only {
            if longest > max_model_len {
                return Err(max_tokens("max_tokens", "prompt", Some(1), longest, max_model_len).unwrap_err());
            }
            0
        } else {
            max_tokens("max_tokens", "prompt", requested, longest, max_model_len)?
        };
        let constraint = compile(&model, spec, param)?;
        let n = sampling.n;
        let echoes = (0..prompts.len() * n).map(|i| if echo { texts[i / n].clone() } else { String::new() }).collect();
        let request = ValidRequest { prompts, sampling, max_tokens, constraint, constraint_param: param };
        let prompt_logprobs = if echo { logprobs } else { None };
        Ok(ValidCompletion { request, echoes, logprobs: logprobs.is_some(), prompt_logprobs, echo_only })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row {
        name: &'static str,
        fields: SamplingFields,
        param: Option<&'static str>,
    }

    #[test]
    fn sampling_fields_are_range_checked() {
        let rows = [
            Row { name: "defaults", fields: SamplingFields::default(), param: None },
            Row {
                name: "temperature 2 ok",
                fields: SamplingFields { temperature: Some(2.0), ..Default::default() },
                param: None,
            },
            Row {
                name: "temperature too high",
                fields: SamplingFields { temperature: Some(2.5), ..Default::default() },
                param: Some("temperature"),
            },
            Row {
                name: "top_p zero",
                fields: SamplingFields { top_p: Some(0.0), ..Default::default() },
                param: Some("top_p"),
            },
            Row { name: "n zero", fields: SamplingFields { n: Some(0), ..Default::default() }, param: Some("n") },
            Row { name: "n nine", fields: SamplingFields { n: Some(9), ..Default::default() }, param: Some("n") },
            Row {
                name: "bias key",
                fields: SamplingFields { logit_bias: Some([("x".to_string(), 1.0)].into()), ..Default::default() },
                param: Some("logit_bias"),
            },
            Row {
                name: "bias range",
                fields: SamplingFields { logit_bias: Some([("5".to_string(), 101.0)].into()), ..Default::default() },
                param: Some("logit_bias"),
            },
            Row {
                name: "negative top_k",
                fields: SamplingFields { top_k: Some(-1), ..Default::default() },
                param: Some("top_k"),
            },
        ];
        for r in rows {
            let got = sampling(&r.fields, None, 100, None).err().and_then(|e| e.param);
            assert_eq!(got.as_deref(), r.param, "{}", r.name);
        }
    }

    #[test]
    fn max_tokens_defaults_to_the_rest_of_the_context() {
        let mt = |requested, prompt| max_tokens("max_tokens", "messages", requested, prompt, 100);
        assert_eq!(mt(None, 10).unwrap(), 90);
        assert_eq!(mt(Some(90), 10).unwrap(), 90);
        let e = mt(Some(91), 10).unwrap_err();
        assert_eq!((e.code, e.param.as_deref()), (Some("context_length_exceeded"), Some("max_tokens")));
        assert!(e.message.contains("100") && e.message.contains("101"), "{}", e.message);
        assert_eq!(mt(Some(0), 10).unwrap_err().param.as_deref(), Some("max_tokens"));
        // A prompt that fills the context by itself is the prompt's fault, whatever is asked.
        for requested in [None, Some(5)] {
            let e = mt(requested, 100).unwrap_err();
            assert_eq!((e.code, e.param.as_deref()), (Some("context_length_exceeded"), Some("messages")));
        }
        assert!(mt(Some(i64::MAX), 10).is_err());
    }
}
