//! OpenAI request → engine request, or an `ApiError` naming the field at fault. Nothing past
//! this module sees an unchecked value.

use serde_json::{json, Value};
use slm_engine::{Model, SamplingParams};

use crate::error::ApiError;
use crate::openai::{ChatMessage, MessageContent, Role, SamplingFields, StopField};

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
pub fn sampling(f: &SamplingFields, logprobs: Option<usize>, vocab_size: usize) -> Result<ValidSampling, ApiError> {
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
    })
}

/// `max_tokens` checked against the context: defaults to what is left of it.
pub fn max_tokens(
    param: &str,
    requested: Option<i64>,
    num_prompt_tokens: usize,
    max_model_len: usize,
) -> Result<usize, ApiError> {
    let err = |m: i64| {
        ApiError {
        code: Some("context_length_exceeded"),
        param: Some(param.to_string()),
        ..ApiError::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({num_prompt_tokens} in the prompt, {m} for the completion). Please reduce the prompt or the completion length.",
            num_prompt_tokens as i64 + m
        ))
    }
    };
    match requested {
        Some(m) if m < 1 => Err(ApiError::invalid(param, format!("`{param}` must be at least 1, got {m}"))),
        Some(m) if num_prompt_tokens as i64 + m > max_model_len as i64 => Err(err(m)),
        Some(m) => Ok(m as usize),
        None if num_prompt_tokens >= max_model_len => Err(err(1)),
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
            Ok(v)
        })
        .collect()
}

/// Renders and tokenizes a chat prompt.
pub fn chat_prompt(model: &Model, messages: &[Value], tools: Option<&[Value]>) -> Result<Vec<u32>, ApiError> {
    let text = model
        .chat_template
        .render_prompt(&model.tokenizer, messages, tools)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    Ok(model.tokenizer.encode(&text, true, true)?)
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
            let got = sampling(&r.fields, None, 100).err().and_then(|e| e.param);
            assert_eq!(got.as_deref(), r.param, "{}", r.name);
        }
    }

    #[test]
    fn max_tokens_defaults_to_the_rest_of_the_context() {
        assert_eq!(max_tokens("max_tokens", None, 10, 100).unwrap(), 90);
        assert_eq!(max_tokens("max_tokens", Some(90), 10, 100).unwrap(), 90);
        let e = max_tokens("max_tokens", Some(91), 10, 100).unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(e.message.contains("100") && e.message.contains("101"), "{}", e.message);
        assert_eq!(max_tokens("max_tokens", Some(0), 10, 100).unwrap_err().param.as_deref(), Some("max_tokens"));
    }
}
