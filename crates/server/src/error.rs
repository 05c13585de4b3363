//! `ApiError`: every failure the HTTP layer reports, always OpenAI-shaped
//! (`{"error": {"message", "type", "param", "code"}}`), mapped to a status in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slm_engine::EngineError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after_s: None }
    }

    /// 400 naming the request field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { param: Some(param.into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn model_not_found(model: &str, available: &[String]) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist. Available models: {}.", available.join(", ")),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { code: Some("not_found"), ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message) }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { code: Some("invalid_api_key"), ..Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message) }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            code: Some("payload_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("The request body is larger than the limit of {limit} bytes."),
            )
        }
    }

    pub fn loading() -> Self {
        Self {
            retry_after_s: Some(5),
            code: Some("model_loading"),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "The model is still loading; retry shortly.")
        }
    }

    /// 503 that says when to retry: the condition passes by itself (a model loading, a model
    /// that cannot be loaded until another finishes its requests).
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            code: Some(code),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// 403: a valid key without the right for this action (admin endpoints).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { code: Some("permission_denied"), ..Self::new(StatusCode::FORBIDDEN, "invalid_request_error", message) }
    }

    /// 501: the model cannot do what the request asks (llama.cpp's `not_supported_error`,
    /// e.g. infill on a model without FIM tokens).
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_supported_error", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Names the field a grammar or schema error came from (the engine does not know it).
    pub fn for_param(mut self, param: &str) -> Self {
        if self.code == Some("invalid_schema") {
            self.param = Some(param.to_string());
        }
        self
    }

    /// Renames the field an error names, for API shapes whose fields have other names than
    /// chat's: `(chat, own)` pairs; a chat field matches with any index or subfield after it
    /// (`messages[2].content` is `input` for the Responses API).
    pub fn renamed(mut self, names: &[(&str, &str)]) -> Self {
        if let Some(p) = &self.param {
            for (chat, own) in names {
                let rest = p.strip_prefix(chat);
                if matches!(rest, Some(r) if r.is_empty() || r.starts_with('[') || r.starts_with('.')) {
                    self.param = Some(own.to_string());
                    break;
                }
            }
        }
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::ContextLengthExceeded { .. } => {
                Self { code: Some("context_length_exceeded"), param: Some("messages".into()), ..Self::bad_request(msg) }
            }
            EngineError::KvCacheTooSmall { .. } => {
                Self { code: Some("context_length_exceeded"), ..Self::bad_request(msg) }
            }
            EngineError::InvalidGrammar(_) => Self { code: Some("invalid_schema"), ..Self::bad_request(msg) },
            EngineError::InvalidRequest(_) | EngineError::Tokenizer(_) | EngineError::ChatTemplate(_) => {
                Self::bad_request(msg)
            }
            EngineError::QueueFull(_) => Self {
                retry_after_s: Some(1),
                code: Some("rate_limit_exceeded"),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", msg)
            },
            _ => Self::internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
