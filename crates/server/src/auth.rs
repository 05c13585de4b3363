//! API-key check: `Authorization: Bearer KEY` against the configured keys, compared in
//! constant time. No keys configured means no check. `/health` stays open for probes.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Equal-length comparison whose time does not depend on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.settings.api_keys;
    if keys.is_empty() || req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::unauthorized("Missing API key: send `Authorization: Bearer <key>`.").into_response(),
        Some(k) => {
            // Check every key (no early exit), so timing does not tell which one was close.
            let ok = keys.iter().fold(false, |acc, key| acc | constant_time_eq(k.as_bytes(), key.as_bytes()));
            if ok {
                next.run(req).await
            } else {
                ApiError::unauthorized("Incorrect API key provided.").into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
