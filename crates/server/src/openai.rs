//! OpenAI-shaped request and response types. Requests accept what OpenAI accepts (unknown
//! fields are ignored); numbers that have a range are parsed wide (`i64`, `f64`) so an out-of-
//! range value is reported as such rather than as a type error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<Value>>,
    pub tool_call_id: Option<String>,
    /// An earlier answer's thoughts, for templates that render them (Qwen3 keeps the last).
    pub reasoning_content: Option<String>,
}

/// Sampling fields shared by chat and text completions.
#[derive(Debug, Clone, Default)]
pub struct SamplingFields {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub cache_salt: Option<String>,
    pub speculative: Option<bool>,
    pub post_sampling_probs: Option<bool>,
    pub return_progress: Option<bool>,
    pub timings_per_token: Option<bool>,
}

/// One entry of llama.cpp's `lora` field: an adapter by `id` (its index in the loaded list,
/// as `/lora-adapters` shows it) or by `name`, and the scale to apply it with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoraRef {
    pub id: Option<i64>,
    pub name: Option<String>,
    pub scale: Option<f64>,
}

/// Defines a request struct with its own fields plus the shared sampling fields (written out,
/// not `#[serde(flatten)]`, so a type error still names its field).
macro_rules! with_sampling_fields {
    ($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        pub struct $name {
            $(pub $f: $t,)*
            pub temperature: Option<f64>,
            pub top_p: Option<f64>,
            pub n: Option<i64>,
            pub stop: Option<StopField>,
            pub presence_penalty: Option<f64>,
            pub frequency_penalty: Option<f64>,
            pub logit_bias: Option<BTreeMap<String, f64>>,
            pub seed: Option<i64>,
            pub user: Option<String>,
            pub top_k: Option<i64>,
            pub min_p: Option<f64>,
            pub repetition_penalty: Option<f64>,
            pub stream: Option<bool>,
            pub stream_options: Option<StreamOptions>,
            /// Extension (llama.cpp, vLLM): keep generating past end-of-generation tokens.
            pub ignore_eos: Option<bool>,
            /// Extension (vLLM): only requests with the same salt share prefix-cache blocks.
            pub cache_salt: Option<String>,
            /// Extension: `false` turns speculative decoding off for this request (the
            /// output is the same either way; only the speed differs).
            pub speculative: Option<bool>,
            /// Extension (Ollama): how long the model stays loaded after this request.
            pub keep_alive: Option<$crate::keep_alive::KeepAlive>,
            /// Extension (llama.cpp): LoRA adapters to run with, by id or name, with scales.
            pub lora: Option<Vec<$crate::openai::LoraRef>>,
            /// Extension (llama.cpp): logprobs of the distribution each token was drawn from
            /// (after top-k, temperature, min-p, top-p), not of the model's raw one.
            pub post_sampling_probs: Option<bool>,
            /// Extension (llama.cpp): while a streamed request's prompt is evaluated, chunks
            /// with `prompt_progress` (total, cached, processed tokens, elapsed ms).
            pub return_progress: Option<bool>,
            /// Extension (llama.cpp): with stream, `timings` on every chunk.
            pub timings_per_token: Option<bool>,
        }

        impl $name {
            pub fn sampling(&self) -> SamplingFields {
                SamplingFields {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    n: self.n,
                    stop: self.stop.clone(),
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    logit_bias: self.logit_bias.clone(),
                    seed: self.seed,
                    user: self.user.clone(),
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    ignore_eos: self.ignore_eos,
                    cache_salt: self.cache_salt.clone(),
                    speculative: self.speculative,
                    post_sampling_probs: self.post_sampling_probs,
                    return_progress: self.return_progress,
                    timings_per_token: self.timings_per_token,
                }
            }
        }
    };
}

with_sampling_fields! {
    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct ChatCompletionRequest {
        pub model: Option<String>,
        pub messages: Vec<ChatMessage>,
        pub max_tokens: Option<i64>,
        pub max_completion_tokens: Option<i64>,
        pub logprobs: Option<bool>,
        pub top_logprobs: Option<i64>,
        pub tools: Option<Vec<Value>>,
        pub tool_choice: Option<Value>,
        pub parallel_tool_calls: Option<bool>,
        pub response_format: Option<Value>,
        // Extensions (vLLM, llama.cpp): continue the last message, an assistant's, instead of
        // opening a new turn (assistant prefill); whether to open the assistant's turn.
        pub continue_final_message: Option<bool>,
        pub add_generation_prompt: Option<bool>,
        // Extensions (llama.cpp): the reply must match a grammar (GBNF or Lark) or be JSON
        // valid against a schema.
        pub grammar: Option<String>,
        pub json_schema: Option<Value>,
        // Extension (slm): in `auto` tool mode, a call equal to one the conversation already
        // answered is not emitted (repeat_guard.rs); on unless false.
        pub repeat_call_guard: Option<bool>,
        // Extension (slm): after a tool's result, a short system hint to answer from it
        // (tool_hint.rs); off unless true.
        pub tool_result_hint: Option<bool>,
        // Extension (slm): a system hint on how to use the offered tools (tool_hint.rs).
        pub tool_system_hint: Option<bool>,
        // Reasoning models (reasoning.rs): OpenAI's effort level; extensions (vLLM,
        // llama.cpp): variables for the chat template (`enable_thinking`, …) and how thoughts
        // come back (`deepseek`: in `reasoning_content`, `none`: left in `content`).
        pub reasoning_effort: Option<String>,
        pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
        pub reasoning_format: Option<String>,
    }
}

impl ChatCompletionRequest {
    pub fn reasoning_ask(&self) -> crate::reasoning::ReasoningAsk<'_> {
        crate::reasoning::ReasoningAsk {
            kwargs: self.chat_template_kwargs.as_ref(),
            effort: self.reasoning_effort.as_deref(),
            format: self.reasoning_format.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

with_sampling_fields! {
    #[derive(Debug, Clone, Deserialize)]
    pub struct CompletionRequest {
        pub model: Option<String>,
        pub prompt: PromptField,
        pub max_tokens: Option<i64>,
        pub logprobs: Option<i64>,
        pub echo: Option<bool>,
        // Text after the completion: the prompt and it become a fill-in-the-middle prompt
        // (code models with FIM tokens only).
        pub suffix: Option<String>,
        // Extensions: the output must match a JSON Schema, a grammar (llguidance's Lark
        // dialect) or a regular expression.
        pub response_format: Option<Value>,
        pub json_schema: Option<Value>,
        pub grammar: Option<String>,
        pub regex: Option<String>,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    /// A reasoning model's thoughts (reasoning.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Legacy completions logprobs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// What the model serves: `["chat", "completion"]` or `["embeddings"]`.
    pub capabilities: &'static [&'static str],
    /// `loaded`, `loading` or `unloaded` (a request for it loads it).
    pub status: &'static str,
    /// A LoRA adapter: the model it adapts (vLLM's field), and its file as `root`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Every name requests may use for it (its id first), and its labels (llama.cpp's fields).
    pub aliases: Vec<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    /// Extension (Ollama): how long the model stays loaded after this request.
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
    /// OpenAI's forms (a string, strings, token ids, lists of token ids) and llama.cpp's
    /// (strings and ids mixed in one input, `{"prompt_string"}`, `{"content": [parts]}`):
    /// read by `routes/embeddings.rs`.
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    pub user: Option<String>,
    /// Extension (Ollama, TEI): cut inputs longer than the model's context instead of a 400.
    pub truncate: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
