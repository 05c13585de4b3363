//! slm's HTTP server: OpenAI-compatible routes over one engine per served model. Holds no
//! tensor code: it validates, renders the chat template, tokenizes, submits to the engine and
//! streams back.
//!
//! ```text
//!  route (routes/) → parse + validate (validate.rs) → EngineHandle::submit
//!        → engine events → stream.rs (SSE chunks or one JSON answer)
//! ```

pub mod auth;
pub mod config;
pub mod error;
pub mod grammar;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod serve;
pub mod state;
pub mod stream;
pub mod tool_format;
pub mod tool_stream;
pub mod tools;
pub mod validate;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use state::{AppState, ServedModel, Settings};

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let limit = state.settings.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::get))
        .route("/health", get(routes::health::health))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/tokenize", post(routes::tokenize::tokenize))
        .route("/detokenize", post(routes::tokenize::detokenize))
        .fallback(|| async { error::ApiError::not_found("Unknown path. See openapi.yaml for the endpoints.") })
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_api_key))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts every response by endpoint (the route pattern) and status.
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let resp = next.run(req).await;
    state.metrics.count_request(&endpoint, resp.status().as_u16());
    resp
}
