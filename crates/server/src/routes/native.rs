//! llama.cpp's native routes: `POST /completion` (a prompt as text, token ids or both mixed)
//! and `POST /infill` (fill-in-the-middle for editors: `input_prefix`, `input_suffix`,
//! `input_extra` files), answered in llama.cpp's shape (`llama_api.rs`). Both run through
//! the text-completion path (`validate::completion_with`), so limits, constraints and
//! errors are the OpenAI routes' own.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde_json::{json, Value};
use slm_engine::tokenizer::{ExtraFile, InfillInput};
use slm_engine::{Event, FinishReason, Finished, Model, TokenEvent, Tokenizer};
use tokio::sync::mpsc;

use super::parse_for;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::llama_api::*;
use crate::openai::PromptField;
use crate::state::{AppState, Served};
use crate::stream::{self, token_text};
use crate::telemetry::Telemetry;
use crate::validate;

pub async fn completion(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let (req, served) = parse_for::<NativeRequest>(&state, body).await?;
    let prompt = req.prompt.as_ref().ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    let prompts = prompts_of(prompt, "prompt")?;
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list"));
    }
    let model = served.engine.model().clone();
    let tokens = validate::blocking(move || prompts.into_iter().map(|p| tokenize_mixed(&model, p)).collect()).await?;
    run(&state, &served, req, tokens, tenant.as_ref().map(|t| &t.0), start).await
}

/// `POST /completions`, which llama-server serves in its native shape and OpenAI clients
/// with a base URL without `/v1` post to: a body naming a `model` (every OpenAI SDK sends
/// one, OpenAI requires it) gets the OpenAI answer, one without gets llama.cpp's.
pub async fn completions_alias(
    state: State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let names_model = body.as_ref().is_ok_and(|b| {
        serde_json::from_slice::<std::collections::HashMap<String, serde::de::IgnoredAny>>(b)
            .is_ok_and(|keys| keys.contains_key("model"))
    });
    if names_model {
        super::completions::completions(state, tenant, body).await
    } else {
        completion(state, tenant, body).await
    }
}

pub async fn infill(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let (req, served) = parse_for::<NativeRequest>(&state, body).await?;
    let model = served.engine.model().clone();
    if model.tokenizer.fim().infill().is_none() {
        return Err(ApiError::not_supported(format!(
            "Infill is not supported by this model: `{}` has no fill-in-the-middle tokens",
            served.id
        )));
    }
    let required = |v: &Option<String>, name: &str| {
        v.clone().ok_or_else(|| ApiError::invalid(name, format!("\"{name}\" is required")))
    };
    let (prefix, suffix) = (required(&req.input_prefix, "input_prefix")?, required(&req.input_suffix, "input_suffix")?);
    let prompt = match &req.prompt {
        None => String::new(),
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(ApiError::invalid("prompt", "`prompt` of /infill must be a string")),
    };
    let extra: Vec<ExtraFile> = (req.input_extra.iter().flatten())
        .map(|e| ExtraFile { filename: e.filename.clone(), text: e.text.clone() })
        .collect();
    let budget = validate::infill_budget(served.engine.max_model_len(), req.num_predict().unwrap_or(0) as usize);
    let tokens = validate::blocking(move || {
        let input = InfillInput { prefix: &prefix, suffix: &suffix, prompt: &prompt, extra: &extra };
        Ok(model.tokenizer.infill(&input, budget)?)
    })
    .await?;
    run(&state, &served, req, vec![tokens], tenant.as_ref().map(|t| &t.0), start).await
}

/// A native prompt's tokens: text is tokenized with special tokens parsed, the model's BOS
/// before the first piece when that piece is text (llama.cpp's `tokenize_mixed`).
fn tokenize_mixed(model: &Model, prompt: NativePrompt) -> Result<Vec<u32>, ApiError> {
    let tok = &model.tokenizer;
    match prompt {
        NativePrompt::Text(t) => Ok(tok.encode(&t, true, true)?),
        NativePrompt::Mixed(pieces) => {
            let mut out = Vec::new();
            for (i, p) in pieces.into_iter().enumerate() {
                match p {
                    PromptPiece::Text(t) => out.extend(tok.encode(&t, i == 0, true)?),
                    PromptPiece::Token(id) => out.push(id),
                }
            }
            Ok(out)
        }
    }
}

/// Fields of the text-completion path under their llama.cpp names, for errors.
const NATIVE_NAMES: &[(&str, &str)] =
    &[("max_tokens", "n_predict"), ("logprobs", "n_probs"), ("repetition_penalty", "repeat_penalty")];

/// What every answer of one request shares.
#[derive(Clone)]
struct Answer {
    /// Which prompt of the request this answers.
    index: usize,
    model: String,
    prompt_text: String,
    num_prompt: usize,
    return_tokens: bool,
    n_probs: bool,
    /// `post_sampling_probs`: `completion_probabilities` as probabilities after sampling.
    post_sampling: bool,
    /// `n_predict: 0`: the one token run to evaluate the prompt is not answered.
    prompt_only: bool,
    settings: serde_json::Value,
    start: Instant,
}

impl Answer {
    fn chunk(&self, t: &TokenEvent, num_predicted: usize, tok: &Tokenizer) -> NativeCompletion {
        NativeCompletion {
            content: t.text.clone(),
            tokens: if self.return_tokens { vec![t.token] } else { Vec::new() },
            tokens_predicted: num_predicted,
            completion_probabilities: self.n_probs.then(|| vec![probability(tok, t, self.post_sampling)]),
            ..self.empty_chunk()
        }
    }

    /// A streamed chunk with nothing generated in it (`return_progress` adds its progress).
    fn empty_chunk(&self) -> NativeCompletion {
        NativeCompletion {
            index: self.index,
            content: String::new(),
            tokens: Vec::new(),
            id_slot: -1,
            stop: false,
            model: None,
            tokens_predicted: 0,
            tokens_evaluated: self.num_prompt,
            generation_settings: None,
            prompt: None,
            has_new_line: None,
            truncated: None,
            stop_type: None,
            stopping_word: None,
            tokens_cached: None,
            timings: None,
            completion_probabilities: None,
        }
    }

    /// The last answer: totals, why it stopped, timings (`first` is when the first token came).
    fn last(
        &self,
        content: String,
        tokens: &[TokenEvent],
        f: &Finished,
        first: Option<Instant>,
        tok: &Tokenizer,
    ) -> NativeCompletion {
        if self.prompt_only {
            let f = Finished { reason: FinishReason::Length, stop_string: None, num_generated_tokens: 0, ..f.clone() };
            return Answer { prompt_only: false, ..self.clone() }.last(String::new(), &[], &f, first, tok);
        }
        let end = Instant::now();
        let first = first.unwrap_or(end);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let stop_type = match (&f.reason, &f.stop_string) {
            (_, Some(_)) => "word",
            (FinishReason::Stop, None) => "eos",
            (FinishReason::Length, None) => "limit",
        };
        let prompt_n = f.num_prompt_tokens.saturating_sub(f.num_cached_tokens);
        NativeCompletion {
            index: self.index,
            has_new_line: Some(content.contains('\n')),
            content,
            tokens: if self.return_tokens { tokens.iter().map(|t| t.token).collect() } else { Vec::new() },
            id_slot: -1,
            stop: true,
            model: Some(self.model.clone()),
            tokens_predicted: f.num_generated_tokens,
            tokens_evaluated: f.num_prompt_tokens,
            generation_settings: Some(self.settings.clone()),
            prompt: Some(self.prompt_text.clone()),
            truncated: Some(false),
            stop_type: Some(stop_type),
            stopping_word: Some(f.stop_string.clone().unwrap_or_default()),
            tokens_cached: Some(f.num_prompt_tokens + f.num_generated_tokens),
            timings: Some(Timings::new(
                f.num_cached_tokens,
                prompt_n,
                ms(self.start, first),
                f.num_generated_tokens,
                ms(first, end),
            )),
            completion_probabilities: self
                .n_probs
                .then(|| tokens.iter().map(|t| probability(tok, t, self.post_sampling)).collect()),
        }
    }
}

/// A token's entry in `completion_probabilities`: logprobs of the model, or with
/// `post_sampling` probabilities of the distribution it was drawn from (the engine computed
/// which; here they are only named and exponentiated).
fn probability(tok: &Tokenizer, t: &TokenEvent, post_sampling: bool) -> CompletionProbability {
    let (token, bytes) = token_text(tok, t.token);
    let split = |lp: f32| if post_sampling { (None, Some(lp.exp())) } else { (Some(lp), None) };
    let top: Vec<TokenProb> = t
        .top_logprobs
        .iter()
        .map(|&(id, lp)| {
            let (token, bytes) = token_text(tok, id);
            let (logprob, prob) = split(lp);
            TokenProb { id, token, bytes, logprob, prob }
        })
        .collect();
    let (logprob, prob) = split(t.logprob);
    let (top_logprobs, top_probs) = if post_sampling { (None, Some(top)) } else { (Some(top), None) };
    CompletionProbability { id: t.token, token, bytes, logprob, prob, top_logprobs, top_probs }
}

/// The effective settings, in llama.cpp's names.
fn settings(c: &crate::openai::CompletionRequest, req: &NativeRequest) -> serde_json::Value {
    let stop: Vec<String> = req.stop.clone().unwrap_or_default();
    json!({
        "n_predict": c.max_tokens.unwrap_or(-1),
        "seed": c.seed.unwrap_or(-1),
        "temperature": c.temperature,
        "top_k": c.top_k.unwrap_or(0),
        "top_p": c.top_p,
        "min_p": c.min_p,
        "repeat_penalty": c.repetition_penalty.unwrap_or(1.0),
        "presence_penalty": c.presence_penalty.unwrap_or(0.0),
        "frequency_penalty": c.frequency_penalty.unwrap_or(0.0),
        "stop": stop,
        "max_tokens": c.max_tokens.unwrap_or(-1),
        "ignore_eos": c.ignore_eos.unwrap_or(false),
        "stream": c.stream.unwrap_or(false),
        "n_probs": c.logprobs.unwrap_or(0),
        "grammar": c.grammar.clone().unwrap_or_default(),
        "post_sampling_probs": req.post_sampling_probs.unwrap_or(false),
    })
}

/// Runs one prompt or several (`prompts`, each laid out already): one answer per prompt,
/// several as a list (llama.cpp's batch form), streamed chunks carrying their prompt's `index`.
async fn run(
    state: &AppState,
    served: &Served,
    req: NativeRequest,
    prompts: Vec<Vec<u32>>,
    tenant: Option<&Tenant>,
    start: Instant,
) -> Result<Response, ApiError> {
    let tok = &served.engine.model().tokenizer;
    let texts: Vec<String> = prompts.iter().map(|p| tok.decode(p, true)).collect();
    let num_prompts = prompts.len();
    let field = match <[Vec<u32>; 1]>::try_from(prompts) {
        Ok([one]) => PromptField::Tokens(one),
        Err(many) => PromptField::TokenLists(many),
    };
    let mut c = req.to_completion(field)?;
    if let Some(v) = &req.logit_bias {
        c.logit_bias = Some(crate::llama_api::logit_bias(v, |s| Ok(tok.encode(s, false, false)?))?);
    }
    let mut settings = settings(&c, &req);
    if let (None, Some(seed)) = (c.seed, served.engine.config().default_seed) {
        settings["seed"] = json!(seed); // the server's `--seed`, which this request takes
    }
    // As llama.cpp lists them: each biased token, and with `ignore_eos` the end-of-generation
    // tokens at -inf (null in JSON).
    let mut biases: Vec<Value> = c
        .logit_bias
        .iter()
        .flatten()
        .map(|(id, b)| json!({"token": id.parse::<u32>().unwrap_or(0), "bias": b}))
        .collect();
    if req.ignore_eos == Some(true) {
        biases.extend(tok.end_of_generation().iter().map(|id| json!({"token": id, "bias": null})));
    }
    settings["logit_bias"] = Value::Array(biases);
    let valid =
        validate::completion_with(&served.engine, c, tenant, None).await.map_err(|e| e.renamed(NATIVE_NAMES))?;
    let model = served.engine.model().clone();
    let answers: Vec<Answer> = texts
        .into_iter()
        .zip(valid.request.prompts())
        .enumerate()
        .map(|(index, (prompt_text, p))| Answer {
            index,
            model: served.id.clone(),
            prompt_text,
            num_prompt: p.len(),
            return_tokens: req.return_tokens.unwrap_or(false),
            n_probs: valid.logprobs,
            post_sampling: req.post_sampling_probs.unwrap_or(false),
            prompt_only: req.is_prompt_only(),
            settings: settings.clone(),
            start,
        })
        .collect();
    let streams = valid.request.submit(served)?;
    if req.stream.unwrap_or(false) {
        let (tx, rx) = mpsc::channel(64);
        let st = state.clone();
        let s = valid.request.sampling();
        let num_prompt: Vec<usize> = answers.iter().map(|a| a.num_prompt).collect();
        let mut telemetry = Telemetry::new(s.return_progress, s.timings_per_token, start, &num_prompt);
        tokio::spawn(async move {
            let (mut first, mut num_predicted) = (vec![None; num_prompts], vec![0; num_prompts]);
            let tok = &model.tokenizer;
            let _ = stream::pump(streams, &tx, &st.metrics, start, &mut |i: usize, e: &Event| match e {
                Event::Token(_) if answers[i].prompt_only => vec![],
                Event::Token(t) => {
                    let extras = telemetry.note(i, e);
                    first[i].get_or_insert_with(Instant::now);
                    num_predicted[i] += 1;
                    if t.text.is_empty() && !answers[i].n_probs {
                        return vec![];
                    }
                    vec![extras.data(&answers[i].chunk(t, num_predicted[i], tok))]
                }
                // The last chunk carries the totals; its content is the text held back to the end.
                Event::Finished(f) => {
                    let mut last = answers[i].last(f.text.clone(), &[], f, first[i], tok);
                    last.completion_probabilities = None;
                    vec![stream::data(&last)]
                }
                Event::Error(_) => vec![],
                Event::Progress(_) => {
                    let extras = telemetry.note(i, e);
                    extras.progress.is_some().then(|| extras.data(&answers[i].empty_chunk())).into_iter().collect()
                }
            })
            .await;
        });
        return Ok(stream::sse(rx));
    }
    // Not streamed: run to the end, noting when each first token came for `timings`.
    let mut timing = stream::Timing::new(start, num_prompts);
    let mut first = vec![None; num_prompts];
    let mut text = vec![String::new(); num_prompts];
    let mut generated: Vec<Vec<TokenEvent>> = vec![Vec::new(); num_prompts];
    let mut finished: Vec<Option<Finished>> = vec![None; num_prompts];
    let mut merged = stream::merge(streams);
    while let Some((i, e)) = merged.next().await {
        match e {
            Event::Token(t) => {
                timing.token(i, &state.metrics);
                first[i].get_or_insert_with(Instant::now);
                text[i].push_str(&t.text);
                generated[i].push(t);
            }
            Event::Finished(f) => {
                text[i].push_str(&f.text);
                finished[i] = Some(f);
            }
            Event::Error(e) => return Err(valid.request.run_error(e.into())),
            Event::Progress(_) => {}
        }
    }
    let mut out = Vec::with_capacity(num_prompts);
    for (i, f) in finished.into_iter().enumerate() {
        let f = f.ok_or_else(|| ApiError::internal("the engine ended a request without finishing it"))?;
        out.push(answers[i].last(std::mem::take(&mut text[i]), &generated[i], &f, first[i], &model.tokenizer));
    }
    Ok(match <[NativeCompletion; 1]>::try_from(out) {
        Ok([one]) => Json(one).into_response(),
        Err(many) => Json(many).into_response(),
    })
}
