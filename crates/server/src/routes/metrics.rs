//! `GET /metrics`: Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let models = state.models().unwrap_or(&[]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(models))
}
