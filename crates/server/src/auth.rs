//! API-key check: `Authorization: Bearer KEY` (the scheme in any case, as RFC 9110 says) or
//! `x-api-key: KEY` against the configured keys, compared in constant time. No keys
//! configured means no check. `/health`, `/health/live` and `/health/ready` stay open for probes,
//! and the chat page's files (`ui.rs`) for browsers: they hold no data. A request that passes carries
//! its key (`Tenant`): it salts the prefix cache, so tenants cannot time each other's prompts.

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

/// The API key a request was let in with (only when keys are configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// The key a request presents: `Authorization: Bearer KEY` or `x-api-key: KEY`.
fn presented_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    let bearer = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, key) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
    });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim))
}

pub async fn require_api_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let keys = &state.settings.api_keys;
    let path = req.uri().path();
    let open = matches!(path, "/health" | "/health/live" | "/health/ready")
        || (state.settings.ui && crate::ui::is_page_path(path));
    if keys.is_empty() || open {
        return next.run(req).await;
    }
    match presented_key(req.headers()) {
        None => ApiError::unauthorized("Missing API key: send `Authorization: Bearer <key>`.").into_response(),
        Some(k) => {
            // Check every key (no early exit), so timing does not tell which one was close.
            let ok = keys.iter().fold(false, |acc, key| acc | constant_time_eq(k.as_bytes(), key.as_bytes()));
            if ok {
                let tenant = Tenant(k.to_string());
                req.extensions_mut().insert(tenant);
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
    fn keys_come_from_bearer_in_any_case_or_x_api_key() {
        let h = |name: &'static str, v: &'static str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(name, axum::http::HeaderValue::from_static(v));
            m
        };
        assert_eq!(super::presented_key(&h("authorization", "Bearer k1")), Some("k1"));
        assert_eq!(super::presented_key(&h("authorization", "bearer k1")), Some("k1"));
        assert_eq!(super::presented_key(&h("authorization", "BEARER  k1 ")), Some("k1"));
        assert_eq!(super::presented_key(&h("authorization", "Basic k1")), None);
        assert_eq!(super::presented_key(&h("x-api-key", "k2")), Some("k2"));
        assert_eq!(super::presented_key(&axum::http::HeaderMap::new()), None);
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
