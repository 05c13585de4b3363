//! llama.cpp's native completion API as its clients send and read it: the request of
//! `POST /completion` and `POST /infill` (`n_predict`, `n_probs`, llama.cpp's sampling
//! defaults, `input_prefix` / `input_suffix` / `input_extra`), turned into slm's
//! `CompletionRequest` so it runs through the same validation and engine path, and the answer
//! (`content`, `stop_type`, `timings`, `completion_probabilities`, …). `routes/native.rs`
//! serves it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::{CompletionRequest, PromptField, StopField};

/// One piece of a native prompt: text, or a token id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PromptPiece {
    Text(String),
    Token(u32),
}

/// One prompt as llama.cpp reads it: text, or text and token ids mixed (all ids: a token
/// prompt).
#[derive(Debug, Clone, PartialEq)]
pub enum NativePrompt {
    Text(String),
    Mixed(Vec<PromptPiece>),
}

/// The prompts a `prompt` (or `/embeddings` `input`) holds, as llama.cpp reads them: a
/// string, an array of ids (or of ids and strings mixed) or an object (`{"prompt_string"}`,
/// `{"content": [text parts]}`) is one prompt; any other array holds one prompt per element
/// (an array of strings: one per string, as OpenAI's). `field` names the field in errors.
pub fn prompts_of(v: &Value, field: &str) -> Result<Vec<NativePrompt>, ApiError> {
    match v {
        Value::Array(a) if !a.is_empty() && is_one_prompt(a) => Ok(vec![pieces(a, 0, field)?]),
        Value::Array(a) => a.iter().enumerate().map(|(i, e)| one_prompt(e, i, field)).collect(),
        other => Ok(vec![one_prompt(other, 0, field)?]),
    }
}

/// Ids only, or ids and strings mixed: one prompt.
fn is_one_prompt(a: &[Value]) -> bool {
    let ids = a.iter().any(Value::is_u64);
    ids && a.iter().all(|e| e.is_u64() || e.is_string())
}

fn pieces(a: &[Value], i: usize, field: &str) -> Result<NativePrompt, ApiError> {
    a.iter()
        .map(|e| match e {
            Value::String(s) => Ok(PromptPiece::Text(s.clone())),
            e => e.as_u64().and_then(|t| u32::try_from(t).ok()).map(PromptPiece::Token).ok_or_else(|| {
                ApiError::invalid(field, format!("{field} {i}: expected token ids and strings, got {e}"))
            }),
        })
        .collect::<Result<_, _>>()
        .map(NativePrompt::Mixed)
}

fn one_prompt(e: &Value, i: usize, field: &str) -> Result<NativePrompt, ApiError> {
    let bad = |m: String| ApiError::invalid(field, format!("{field} {i}: {m}"));
    match e {
        Value::String(s) => Ok(NativePrompt::Text(s.clone())),
        Value::Array(a) => pieces(a, i, field),
        Value::Object(o) => {
            if o.contains_key("multimodal_data") {
                return Err(bad("this model takes text only: `multimodal_data` cannot be read".into()));
            }
            if let Some(s) = o.get("prompt_string").and_then(Value::as_str) {
                return Ok(NativePrompt::Text(s.to_string()));
            }
            match o.get("content") {
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(bad(format!("only text parts can be read, got {p}"))),
                    })
                    .collect::<Result<String, _>>()
                    .map(NativePrompt::Text),
                _ => Err(bad("an object needs `prompt_string` or `content`".into())),
            }
        }
        other => Err(bad(format!("expected a string, token ids or an object, got {other}"))),
    }
}

/// A file of repo-level context for `/infill`.
#[derive(Debug, Clone, Deserialize)]
pub struct InputExtra {
    #[serde(default = "default_filename")]
    pub filename: String,
    pub text: String,
}

fn default_filename() -> String {
    "tmp".into()
}

/// The fields of `/completion` (and `/infill`) that slm reads; others llama.cpp clients send
/// (`cache_prompt`, `id_slot`, `n_indent`, `t_max_prompt_ms`, …) are accepted and have no
/// effect: slm always reuses cached prefixes, and the output is the same either way.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NativeRequest {
    pub model: Option<String>,
    /// One prompt or several (`prompts_of`).
    pub prompt: Option<Value>,
    pub n_predict: Option<i64>,
    /// OpenAI's name for `n_predict`, which llama.cpp also reads.
    pub max_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub n_probs: Option<i64>,
    pub post_sampling_probs: Option<bool>,
    pub return_progress: Option<bool>,
    pub timings_per_token: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub return_tokens: Option<bool>,
    pub grammar: Option<String>,
    pub json_schema: Option<Value>,
    pub cache_salt: Option<String>,
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
    pub lora: Option<Vec<crate::openai::LoraRef>>,
    /// llama.cpp's forms: `[[token id or text, bias], …]` or `{"id or text": bias}`; a text
    /// biases each of its tokens, `false` bans a token. Read by `logit_bias` below.
    pub logit_bias: Option<Value>,
    // `/infill`
    pub input_prefix: Option<String>,
    pub input_suffix: Option<String>,
    pub input_extra: Option<Vec<InputExtra>>,
}

/// llama.cpp's sampling defaults (`common_params_sampling`), which its clients count on.
pub const DEFAULT_TEMPERATURE: f64 = 0.8;
pub const DEFAULT_TOP_K: i64 = 40;
pub const DEFAULT_TOP_P: f64 = 0.95;
pub const DEFAULT_MIN_P: f64 = 0.05;

impl NativeRequest {
    /// How many tokens to generate: `None` is llama.cpp's -1, what the context has left; 0
    /// evaluates the prompt only (editors send it to warm the cache with context files).
    pub fn num_predict(&self) -> Option<i64> {
        self.n_predict.or(self.max_tokens).filter(|&n| n >= 0)
    }

    /// `n_predict: 0`: the prompt is evaluated (and cached), nothing is answered.
    pub fn is_prompt_only(&self) -> bool {
        self.num_predict() == Some(0)
    }

    /// The same request as slm's text completion over `prompt` (tokens already laid out).
    pub fn to_completion(&self, prompt: PromptField) -> Result<CompletionRequest, ApiError> {
        let n_probs = match self.n_probs {
            Some(n) if !(0..=20).contains(&n) => {
                return Err(ApiError::invalid("n_probs", format!("`n_probs` must be between 0 and 20, got {n}")))
            }
            Some(0) | None => None,
            n => n,
        };
        let mut c: CompletionRequest =
            serde_json::from_value(serde_json::json!({"prompt": ""})).expect("minimal request");
        c.model = self.model.clone();
        c.prompt = prompt;
        // A prompt-only request runs one token, which the answer leaves out.
        c.max_tokens = self.num_predict().map(|n| n.max(1));
        c.logprobs = n_probs;
        c.post_sampling_probs = self.post_sampling_probs;
        c.return_progress = self.return_progress;
        c.timings_per_token = self.timings_per_token;
        c.grammar = self.grammar.clone();
        c.json_schema = self.json_schema.clone();
        c.temperature = Some(self.temperature.unwrap_or(DEFAULT_TEMPERATURE));
        // llama.cpp: top_k <= 0 means the whole vocabulary.
        c.top_k = Some(self.top_k.unwrap_or(DEFAULT_TOP_K)).filter(|&k| k > 0);
        c.top_p = Some(self.top_p.unwrap_or(DEFAULT_TOP_P));
        c.min_p = Some(self.min_p.unwrap_or(DEFAULT_MIN_P));
        c.repetition_penalty = self.repeat_penalty;
        c.presence_penalty = self.presence_penalty;
        c.frequency_penalty = self.frequency_penalty;
        // llama.cpp: seed -1 is a random seed, even when the server has one (`--seed`), which
        // only a request without a seed takes.
        c.seed = self.seed.map(|s| if s < 0 { i64::from(rand::random::<u32>()) } else { s });
        c.stop = self.stop.clone().filter(|s| !s.is_empty()).map(StopField::Many);
        c.stream = self.stream;
        c.ignore_eos = self.ignore_eos;
        c.cache_salt = self.cache_salt.clone();
        c.keep_alive = self.keep_alive;
        Ok(c)
    }
}

/// The most negative bias slm applies: a ban (llama.cpp's `false`, its -inf).
const BAN: f64 = -100.0;

/// llama.cpp's `logit_bias` as token ids and biases (OpenAI's map form: ids as keys);
/// `encode` tokenizes a text key.
pub fn logit_bias(
    v: &Value,
    encode: impl Fn(&str) -> Result<Vec<u32>, ApiError>,
) -> Result<std::collections::BTreeMap<String, f64>, ApiError> {
    let bad = |m: String| ApiError::invalid("logit_bias", m);
    let bias_of = |b: &Value| match b {
        Value::Bool(false) => Ok(BAN),
        b => b.as_f64().ok_or_else(|| bad(format!("a bias must be a number or false, got {b}"))),
    };
    let mut pairs: Vec<(Value, f64)> = Vec::new();
    match v {
        Value::Array(a) => {
            for e in a {
                match e.as_array().map(Vec::as_slice) {
                    Some([k, b]) => pairs.push((k.clone(), bias_of(b)?)),
                    _ => return Err(bad(format!("each entry must be [token id or text, bias], got {e}"))),
                }
            }
        }
        Value::Object(o) => {
            for (k, b) in o {
                let key = k.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::String(k.clone()));
                pairs.push((key, bias_of(b)?));
            }
        }
        other => return Err(bad(format!("`logit_bias` must be a list or an object, got {other}"))),
    }
    let mut out = std::collections::BTreeMap::new();
    for (k, b) in pairs {
        let ids = match &k {
            Value::String(s) => encode(s)?,
            k => vec![k.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| bad(format!("bad token {k}")))?],
        };
        for id in ids {
            out.insert(id.to_string(), b.clamp(BAN, 100.0));
        }
    }
    Ok(out)
}

/// `timings`, as llama.cpp reports them.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub cache_n: usize,
    pub prompt_n: usize,
    pub prompt_ms: f64,
    pub prompt_per_token_ms: f64,
    pub prompt_per_second: f64,
    pub predicted_n: usize,
    pub predicted_ms: f64,
    pub predicted_per_token_ms: f64,
    pub predicted_per_second: f64,
}

impl Timings {
    /// `predicted_ms` runs from the first generated token to the last: as llama.cpp counts,
    /// the first token came with the prompt's last chunk, so the rates are over the
    /// `predicted_n - 1` decode steps after it.
    pub fn new(cache_n: usize, prompt_n: usize, prompt_ms: f64, predicted_n: usize, predicted_ms: f64) -> Self {
        let per = |ms: f64, n: usize| if n > 0 { ms / n as f64 } else { 0.0 };
        let rate = |ms: f64, n: usize| if ms > 0.0 { 1e3 * n as f64 / ms } else { 0.0 };
        let steps = predicted_n.saturating_sub(1);
        Self {
            cache_n,
            prompt_n,
            prompt_ms,
            prompt_per_token_ms: per(prompt_ms, prompt_n),
            prompt_per_second: rate(prompt_ms, prompt_n),
            predicted_n,
            predicted_ms,
            predicted_per_token_ms: per(predicted_ms, steps),
            predicted_per_second: rate(predicted_ms, steps),
        }
    }
}

/// One alternative of `completion_probabilities`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenProb {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    /// The model's log-probability, or (`post_sampling_probs`) the sampling distribution's
    /// probability: one of the two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prob: Option<f32>,
}

/// One generated token's entry in `completion_probabilities`.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionProbability {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    /// As in `TokenProb`: `logprob` and `top_logprobs`, or `prob` and `top_probs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prob: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<TokenProb>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_probs: Option<Vec<TokenProb>>,
}

/// The answer of `/completion` and `/infill` (also each streamed chunk: `stop` false, then
/// a last one with `stop` true and the totals).
#[derive(Debug, Clone, Serialize)]
pub struct NativeCompletion {
    pub index: usize,
    pub content: String,
    pub tokens: Vec<u32>,
    /// slm has no slots; -1 is llama.cpp's "any slot".
    pub id_slot: i64,
    pub stop: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub tokens_predicted: usize,
    pub tokens_evaluated: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_new_line: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// `eos`, `limit` or `word` (llama.cpp's `none` is a request still running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopping_word: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_cached: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_probabilities: Option<Vec<CompletionProbability>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> NativeRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn llama_cpp_defaults_and_names_map_onto_a_completion() {
        let c = req(serde_json::json!({"prompt": "x", "cache_prompt": true, "id_slot": 3, "samplers": ["top_k"]}))
            .to_completion(PromptField::Tokens(vec![1]))
            .unwrap();
        assert_eq!((c.temperature, c.top_k, c.top_p, c.min_p), (Some(0.8), Some(40), Some(0.95), Some(0.05)));
        assert_eq!((c.max_tokens, c.seed, c.logprobs), (None, None, None));
        let c = req(serde_json::json!({"n_predict": 7, "seed": 5, "top_k": 0, "n_probs": 3, "stop": ["\n"], "repeat_penalty": 1.1}))
            .to_completion(PromptField::Tokens(vec![1]))
            .unwrap();
        assert_eq!(
            (c.max_tokens, c.seed, c.top_k, c.logprobs, c.repetition_penalty),
            (Some(7), Some(5), None, Some(3), Some(1.1))
        );
        assert!(matches!(c.stop, Some(StopField::Many(ref v)) if v == &["\n"]));
        assert_eq!(req(serde_json::json!({"n_predict": -1, "seed": -1})).num_predict(), None);
        let warm = req(serde_json::json!({"n_predict": 0}));
        assert!(
            warm.is_prompt_only() && warm.to_completion(PromptField::Tokens(vec![1])).unwrap().max_tokens == Some(1)
        );
    }

    #[test]
    fn what_slm_cannot_honour_is_refused_by_name() {
        let to = |v| req(v).to_completion(PromptField::Tokens(vec![1])).unwrap_err().param;
        assert_eq!(to(serde_json::json!({"n_probs": 50})).as_deref(), Some("n_probs"));
        for bad in [json!([{"text": 1}]), json!([{}]), json!([{"filename": 123, "text": "a"}]), json!(["x"]), json!({})]
        {
            assert!(serde_json::from_value::<NativeRequest>(json!({"input_extra": bad})).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<NativeRequest>(json!({"input_extra": [{"text": "a"}]})).is_ok());
        assert!(serde_json::from_value::<NativeRequest>(serde_json::json!({"prompt": [1, "a", 2]})).is_ok());
    }

    #[test]
    fn timings_divide_safely() {
        let t = Timings::new(2, 10, 50.0, 0, 0.0);
        assert_eq!((t.prompt_per_token_ms, t.prompt_per_second, t.predicted_per_second), (5.0, 200.0, 0.0));
        // One token costs no decode step; 16 tokens are 15 steps (llama.cpp's rates).
        let one = Timings::new(0, 3, 10.0, 1, 0.5);
        assert_eq!((one.predicted_per_second, one.predicted_per_token_ms), (0.0, 0.0));
        let t = Timings::new(0, 3, 10.0, 16, 30.0);
        assert_eq!((t.predicted_per_second, t.predicted_per_token_ms), (500.0, 2.0));
    }

    fn kinds(v: Value) -> Vec<&'static str> {
        prompts_of(&v, "input")
            .unwrap()
            .iter()
            .map(|i| match i {
                NativePrompt::Text(_) => "text",
                NativePrompt::Mixed(p) if p.iter().all(|p| matches!(p, PromptPiece::Token(_))) => "ids",
                NativePrompt::Mixed(_) => "mixed",
            })
            .collect()
    }

    #[test]
    fn inputs_are_read_as_openai_and_llama_cpp_send_them() {
        assert_eq!(kinds(json!("a")), ["text"]);
        assert_eq!(kinds(json!(["a", "b"])), ["text", "text"]);
        assert_eq!(kinds(json!([1, 2, 3])), ["ids"]);
        assert_eq!(kinds(json!([[1, 2], [3]])), ["ids", "ids"]);
        assert_eq!(kinds(json!([12, 34, "string", 56])), ["mixed"]);
        assert_eq!(kinds(json!(["s", [12, 34]])), ["text", "ids"]);
        assert_eq!(kinds(json!([[12, "s"], [1]])), ["mixed", "ids"]);
        assert_eq!(kinds(json!({"prompt_string": "s"})), ["text"]);
        assert!(prompts_of(&json!({"content": "s"}), "input").is_err(), "content is a list of parts");
        let parts = json!({"content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]});
        assert_eq!(prompts_of(&parts, "input").unwrap(), vec![NativePrompt::Text("hello world".into())]);
        assert_eq!(kinds(json!(["a", {"prompt_string": "b"}, parts])), ["text", "text", "text"]);
        assert!(prompts_of(&json!([]), "input").unwrap().is_empty());
        for bad in [
            json!(3.5),
            json!([true]),
            json!({"x": 1}),
            json!([[1, -2]]),
            json!({"content": [{"type": "image_url"}]}),
            json!({"prompt_string": "a", "multimodal_data": ["x"]}),
        ] {
            assert_eq!(prompts_of(&bad, "input").unwrap_err().param.as_deref(), Some("input"), "{bad}");
        }
    }
}
