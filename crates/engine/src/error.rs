//! `EngineError`: the one error type at the engine's boundary. The server maps it to HTTP in
//! one place; messages name the file, tensor, key or field at fault.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot read model file {path}: {message}")]
    Io { path: String, message: String },
    #[error("model file {path}: {message}")]
    Gguf { path: String, message: String },
    #[error("adapter file {path}: {message}")]
    Adapter { path: String, message: String },
    #[error("model file {path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture { path: String, arch: String, supported: String },
    #[error("model file {path}: missing tensor `{name}`")]
    MissingTensor { path: String, name: String },
    #[error("model file {path}: tensor `{name}` has unsupported quantization {dtype}")]
    UnsupportedQuant { path: String, name: String, dtype: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("invalid grammar or schema: {0}")]
    InvalidGrammar(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the prompt needs {needed} KV-cache tokens but the whole cache holds {capacity}")]
    KvCacheTooSmall { needed: usize, capacity: usize },
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    #[error("This model's maximum context length is {max} tokens. However, you requested {needed} tokens ({prompt} in the prompt, {max_tokens} for the completion). Please reduce the prompt or the completion length.")]
    ContextLengthExceeded { max: usize, needed: usize, prompt: usize, max_tokens: usize },
    #[error("too many requests are waiting ({0}); retry later")]
    QueueFull(usize),
    #[error("engine is shut down")]
    Shutdown,
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// A caught panic's message, for the error that reports it.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Internal(e.to_string())
    }
}
