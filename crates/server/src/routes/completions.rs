//! `POST /v1/completions`: prompts as text, texts, token ids or lists of token ids; `echo`,
//! legacy `logprobs`, the same sampling fields and streaming as chat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use slm_engine::{Event, Model, TokenEvent};
use tokio::sync::mpsc;

use super::{new_id, parse_for, unix_now};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::openai::*;
use crate::state::AppState;
use crate::stream::{self, token_text};
use crate::telemetry::{Extras, Telemetry};
use crate::validate;

struct Ctx {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

impl Ctx {
    fn answer(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        }
    }
}

/// Legacy logprobs of a prompt's own tokens (`echo`): the first token has none, as OpenAI's.
fn prompt_legacy_logprobs(
    model: &Model,
    prompt: &[u32],
    top: usize,
    lora: Option<&Arc<slm_engine::LoraSet>>,
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let mut offset = 0;
    let mut push =
        |lp: &mut CompletionLogprobs, token: u32, logprob: Option<f32>, alts: Option<BTreeMap<String, f32>>| {
            let (text, _) = token_text(&model.tokenizer, token);
            lp.text_offset.push(offset);
            offset += text.len();
            lp.tokens.push(text);
            lp.token_logprobs.push(logprob);
            lp.top_logprobs.push(alts);
        };
    if let Some(&first) = prompt.first() {
        push(&mut lp, first, None, None);
    }
    for p in slm_engine::prompt_logprobs(model, prompt, top, lora) {
        let alts = p.top.iter().map(|(id, l)| (token_text(&model.tokenizer, *id).0, *l)).collect();
        push(&mut lp, p.token, Some(p.logprob), Some(alts));
    }
    lp
}

/// Legacy logprobs of generated tokens; `offset` is where their text starts in the choice.
fn legacy_logprobs(model: &Model, tokens: &[TokenEvent], mut offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    for t in tokens {
        let (text, _) = token_text(&model.tokenizer, t.token);
        lp.text_offset.push(offset);
        offset += text.len();
        lp.tokens.push(text);
        lp.token_logprobs.push(Some(t.logprob));
        let top: BTreeMap<String, f32> =
            t.top_logprobs.iter().map(|(id, l)| (token_text(&model.tokenizer, *id).0, *l)).collect();
        lp.top_logprobs.push(Some(top));
    }
    lp
}

pub async fn completions(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let (req, served) = parse_for::<CompletionRequest>(&state, body).await?;
    let valid = validate::completion(&served.engine, req, tenant.as_ref().map(|t| &t.0)).await?;
    let model = served.engine.model().clone();
    // The prompts' own logprobs (`echo` + `logprobs`), one list per prompt.
    let prompt_lps: Option<Vec<CompletionLogprobs>> = match valid.prompt_logprobs {
        Some(top) => {
            let (m, prompts, lora) = (model.clone(), valid.request.prompts().to_vec(), served.lora.clone());
            Some(
                validate::blocking(move || {
                    Ok(prompts.iter().map(|p| prompt_legacy_logprobs(&m, p, top, lora.as_ref())).collect())
                })
                .await?,
            )
        }
        None => None,
    };
    let streams = if valid.echo_only { Vec::new() } else { valid.request.submit(&served)? };
    let s = valid.request.sampling();
    let num_prompt_tokens = valid.request.num_prompt_tokens();
    // Choice p · n + i answers prompt p.
    let choice_prompts: Vec<usize> =
        valid.request.prompts().iter().flat_map(|p| std::iter::repeat_n(p.len(), s.n)).collect();
    let telemetry = Telemetry::new(s.return_progress, s.timings_per_token, start, &choice_prompts);
    let (echoes, logprobs) = (valid.echoes, valid.logprobs);
    let n = s.n;
    // Per choice: the echoed prompt's logprobs, if asked for.
    let echo_lps = |i: usize| prompt_lps.as_ref().map(|v| v[i / n].clone());
    let ctx = Ctx {
        id: new_id("cmpl"),
        created: unix_now(),
        model: served.id.clone(),
        fingerprint: state.fingerprint.clone(),
    };

    if valid.echo_only {
        let choices = echoes
            .into_iter()
            .enumerate()
            .map(|(index, text)| CompletionChoice {
                text,
                index,
                logprobs: echo_lps(index),
                finish_reason: Some("length"),
            })
            .collect();
        let usage = Usage {
            prompt_tokens: num_prompt_tokens,
            completion_tokens: 0,
            total_tokens: num_prompt_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: 0 },
        };
        return Ok(Json(ctx.answer(choices, Some(usage))).into_response());
    }
    if s.stream {
        let echo_logprobs: Vec<Option<CompletionLogprobs>> = (0..echoes.len()).map(echo_lps).collect();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(stream_completions(
            state.clone(),
            ctx,
            model,
            streams,
            echoes,
            echo_logprobs,
            logprobs,
            num_prompt_tokens,
            s.include_usage,
            telemetry,
            start,
            tx,
        ));
        return Ok(stream::sse(rx));
    }
    let outs = stream::collect(streams, &state.metrics, start).await.map_err(|e| valid.request.run_error(e))?;
    let usage = stream::usage(num_prompt_tokens, &outs.iter().map(|o| &o.finish).collect::<Vec<_>>());
    let choices = outs
        .into_iter()
        .zip(echoes)
        .enumerate()
        .map(|(index, (o, prefix))| CompletionChoice {
            logprobs: logprobs.then(|| {
                let generated = legacy_logprobs(&model, &o.tokens, prefix.len());
                match echo_lps(index) {
                    Some(mut lp) => {
                        lp.tokens.extend(generated.tokens);
                        lp.token_logprobs.extend(generated.token_logprobs);
                        lp.top_logprobs.extend(generated.top_logprobs);
                        lp.text_offset.extend(generated.text_offset);
                        lp
                    }
                    None => generated,
                }
            }),
            text: prefix + &o.text,
            index,
            finish_reason: Some(o.finish.reason.as_str()),
        })
        .collect();
    Ok(Json(ctx.answer(choices, Some(usage))).into_response())
}

#[allow(clippy::too_many_arguments)]
async fn stream_completions(
    state: AppState,
    ctx: Ctx,
    model: Arc<Model>,
    streams: Vec<stream::EventStream>,
    echoes: Vec<String>,
    echo_logprobs: Vec<Option<CompletionLogprobs>>,
    logprobs: bool,
    num_prompt_tokens: usize,
    include_usage: bool,
    mut telemetry: Telemetry,
    start: Instant,
    tx: mpsc::Sender<axum::response::sse::Event>,
) {
    let mut offsets: Vec<usize> = echoes.iter().map(String::len).collect();
    for ((index, e), lp) in echoes.into_iter().enumerate().zip(echo_logprobs).filter(|((_, e), _)| !e.is_empty()) {
        let c = CompletionChoice { text: e, index, logprobs: lp, finish_reason: None };
        if !stream::send(&tx, &ctx.answer(vec![c], None)).await {
            return;
        }
    }
    let finishes = stream::pump(streams, &tx, &state.metrics, start, &mut |index: usize, event: &Event| {
        let extras = telemetry.note(index, event);
        let choice = |text: String, logprobs, finish_reason| {
            extras.data(&ctx.answer(vec![CompletionChoice { text, index, logprobs, finish_reason }], None))
        };
        match event {
            Event::Token(t) if t.text.is_empty() && !logprobs => vec![],
            Event::Token(t) => {
                let lp = logprobs.then(|| legacy_logprobs(&model, std::slice::from_ref(t), offsets[index]));
                offsets[index] += t.text.len();
                vec![choice(t.text.clone(), lp, None)]
            }
            Event::Finished(f) => vec![choice(f.text.clone(), None, Some(f.reason.as_str()))],
            Event::Error(_) => vec![],
            Event::Progress(_) if extras.progress.is_some() => vec![choice(String::new(), None, None)],
            Event::Progress(_) => vec![],
        }
    })
    .await;
    let Some(finishes) = finishes else { return };
    let usage = include_usage.then(|| {
        let extras = Extras { timings: telemetry.timings(), progress: None };
        extras.data(&ctx.answer(vec![], Some(stream::usage(num_prompt_tokens, &finishes.iter().collect::<Vec<_>>()))))
    });
    stream::close(&tx, usage).await;
}
