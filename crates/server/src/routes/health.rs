//! Health probes. `GET /health`: 200 once every start-up model is loaded, 503 while loading
//! (or draining). `GET /health/live`: 200 while the process serves at all (a liveness
//! probe). `GET /health/ready`: 200 when loaded and not draining — after SIGTERM it turns 503
//! at once, so a balancer or Kubernetes stops sending work while requests in flight finish.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

fn readiness(state: &AppState) -> (StatusCode, Json<Value>) {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining"})))
    } else if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"})))
    }
}

pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    readiness(&state)
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    readiness(&state)
}

pub async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}
