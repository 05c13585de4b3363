//! `GET /metrics`: Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

/// When the process started, as Unix seconds (`serve` sets it; else the first reading does).
pub static PROCESS_START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if !state.settings.metrics {
        return Err(ApiError::not_supported("This server does not serve /metrics (it was started with --no-metrics)."));
    }
    let models = state.models().unwrap_or_default();
    let mut text = state.metrics.render(&models);
    crate::metrics_compat::render(&models, state.registry().ok(), &state.metrics, &mut text);
    if let Ok(reg) = state.registry() {
        crate::metrics::render_registry(reg, &mut text);
    }
    // llama-server's header: when this process started (clients tell a restart from it).
    let started = PROCESS_START.get_or_init(crate::routes::unix_now).to_string();
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; version=0.0.4".to_string()),
            (header::HeaderName::from_static("process-start-time-unix"), started),
        ],
        text,
    ))
}
