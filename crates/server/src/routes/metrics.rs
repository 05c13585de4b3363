//! `GET /metrics`: Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let models = state.models().unwrap_or_default();
    let mut text = state.metrics.render(&models);
    crate::metrics_compat::render(&models, state.registry().ok(), &mut text);
    if let Ok(reg) = state.registry() {
        crate::metrics::render_registry(reg, &mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
