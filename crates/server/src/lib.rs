//! slm's HTTP server: OpenAI-compatible routes over one engine per served model. Holds no
//! tensor code: it validates, renders the chat template, tokenizes, submits to the engine and
//! streams back.
//!
//! ```text
//!  route (routes/) → parse + validate (validate.rs) → EngineHandle::submit
//!        → engine events → stream.rs (SSE chunks or one JSON answer)
//! ```

pub mod adapters;
pub mod anthropic;
pub mod auth;
pub mod config;
pub mod error;
pub mod grammar;
pub mod hub;
pub mod keep_alive;
pub mod listener;
pub mod llama_api;
pub mod memory;
pub mod metrics;
pub mod metrics_compat;
pub mod openai;
pub mod reasoning;
pub mod registry;
pub mod repeat_guard;
pub mod response_store;
pub mod responses_api;
pub mod routes;
pub mod serve;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod tool_format;
pub mod tool_hint;
pub mod tool_stream;
pub mod tools;
pub mod turn;
pub mod ui;
pub mod validate;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use state::{AppState, ServedEmbedder, ServedModel, Settings};

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let limit = state.settings.body_limit;
    let page = if state.settings.ui {
        Router::new()
            .route("/", get(ui::index))
            .route("/ui", get(ui::index))
            .route("/ui/", get(ui::index))
            .route("/ui/{file}", get(ui::asset))
    } else {
        Router::new()
    };
    page.route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/responses", post(routes::responses::create))
        .route("/v1/responses/input_tokens", post(routes::responses::input_tokens))
        .route("/v1/responses/{id}", get(routes::responses::get).delete(routes::responses::delete))
        .route("/v1/responses/{id}/input_items", get(routes::responses::input_items))
        .route("/v1/messages", post(routes::messages::create))
        .route("/v1/messages/count_tokens", post(routes::messages::count_tokens))
        .route("/v1/embeddings", post(routes::embeddings::embeddings))
        // llama.cpp's native API, and its aliases of the OpenAI routes without `/v1`.
        .route("/completion", post(routes::native::completion))
        .route("/infill", post(routes::native::infill))
        .route("/apply-template", post(routes::llama_info::apply_template))
        .route("/props", get(routes::llama_info::props))
        .route("/slots", get(routes::llama_info::slots))
        .route("/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/chat/completions/input_tokens", post(routes::chat::input_tokens))
        .route("/chat/completions/input_tokens", post(routes::chat::input_tokens))
        .route("/completions", post(routes::native::completions_alias))
        .route("/embeddings", post(routes::embeddings::embeddings))
        .route("/responses", post(routes::responses::create))
        .route("/models", get(routes::models::list))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::get))
        .route("/models/load", post(routes::models::load))
        .route("/models/unload", post(routes::models::unload))
        .route("/v1/load_lora_adapter", post(routes::lora::load))
        .route("/v1/unload_lora_adapter", post(routes::lora::unload))
        .route("/lora-adapters", get(routes::lora::list))
        .route("/health", get(routes::health::health))
        .route("/health/live", get(routes::health::live))
        .route("/health/ready", get(routes::health::ready))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/tokenize", post(routes::tokenize::tokenize))
        .route("/detokenize", post(routes::tokenize::detokenize))
        .fallback(|| async { error::ApiError::not_found("Unknown path. See openapi.yaml for the endpoints.") })
        .layer(middleware::from_fn(api_shaped_method_errors))
        .layer(middleware::from_fn(require_json_body))
        .layer(middleware::from_fn_with_state(state.clone(), refuse_while_draining))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_api_key))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(middleware::from_fn(anthropic::anthropic_errors))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A POST body declared as something other than JSON is refused (415), not parsed as JSON.
/// No `Content-Type`, and curl's default for `-d` (form-urlencoded), are read as JSON.
async fn require_json_body(req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST {
        let ct = req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if let Some(ct) = ct {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            let json = mime == "application/json" || mime.ends_with("+json");
            if !json && mime != "application/x-www-form-urlencoded" && !mime.is_empty() {
                let mut e = error::ApiError::bad_request(format!(
                    "Unsupported Content-Type `{ct}`: send the request body as `application/json`."
                ));
                e.status = axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
                return axum::response::IntoResponse::into_response(e);
            }
        }
    }
    next.run(req).await
}

/// The router's bare 405 (a known path, another method) gets the API's error shape; its
/// `Allow` header stays.
async fn api_shaped_method_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if resp.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED {
        return resp;
    }
    let allow = resp.headers().get(axum::http::header::ALLOW).cloned();
    let mut e = error::ApiError::bad_request(format!("`{method}` is not allowed on `{path}`."));
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e.code = Some("method_not_allowed");
    let mut out = axum::response::IntoResponse::into_response(e);
    if let Some(a) = allow {
        out.headers_mut().insert(axum::http::header::ALLOW, a);
    }
    out
}

/// While draining, new work (any POST) gets a 503 with `Retry-After` and `Connection: close`
/// before anything else happens, so a proxy retries it on another host; probes, metrics and
/// reads still answer.
async fn refuse_while_draining(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.is_draining() && req.method() == axum::http::Method::POST {
        let e = error::ApiError::unavailable("draining", "This server is shutting down; retry on another.", 1);
        let mut r = axum::response::IntoResponse::into_response(e);
        r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return r;
    }
    next.run(req).await
}

/// Counts every response by endpoint (the route pattern) and status.
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let resp = next.run(req).await;
    state.metrics.count_request(&endpoint, resp.status().as_u16());
    resp
}
