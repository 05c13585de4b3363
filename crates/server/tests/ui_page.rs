//! The chat page as HTTP sees it: served at `/` and `/ui` without a key (the API behind it
//! still needs one), with a Content-Security-Policy that forbids inline and foreign code,
//! revalidated by ETag, and gone when `ui` is off. The browser tests (tests/e2e/test_ui.py)
//! prove what it does in Chromium.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

async fn get(state: &AppState, path: &str, etag: Option<&str>) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder().uri(path);
    if let Some(t) = etag {
        req = req.header("if-none-match", t);
    }
    let resp = app(state.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn keyed(ui: bool) -> AppState {
    let mut settings = Settings::new(vec!["k".into()], 1 << 20);
    settings.ui = ui;
    AppState::new(settings)
}

#[tokio::test]
async fn the_page_is_served_without_a_key_under_a_strict_policy() {
    let s = keyed(true);
    for path in ["/", "/ui", "/ui/"] {
        let (status, h, body) = get(&s, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(body.contains("<script type=\"module\" src=\"/ui/app.js\">"), "{body}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let (status, h, body) = get(&s, "/ui/app.js", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(body.contains("streamChat"));
    // The API is still behind the key.
    assert_eq!(get(&s, "/v1/models", None).await.0, StatusCode::UNAUTHORIZED);
    // A file the page does not have is the API's 404, not a page.
    let (status, _, body) = get(&s, "/ui/../../etc/passwd", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = get(&s, "/ui/secret.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("\"error\""), "{body}");
}

#[tokio::test]
async fn an_unchanged_page_is_a_304() {
    let s = keyed(true);
    let (_, h, _) = get(&s, "/ui/app.css", None).await;
    let tag = h["etag"].to_str().unwrap().to_string();
    assert_eq!(h["cache-control"], "no-cache");
    let (status, h, body) = get(&s, "/ui/app.css", Some(&tag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty() && h.contains_key("content-security-policy"));
    assert_eq!(get(&s, "/ui/app.css", Some("\"other\"")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn no_ui_means_no_page_and_the_root_needs_a_key_like_any_path() {
    let s = keyed(false);
    for path in ["/", "/ui", "/ui/app.js"] {
        let (status, _, body) = get(&s, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let open = {
        let mut settings = Settings::new(vec![], 1 << 20);
        settings.ui = false;
        AppState::new(settings)
    };
    let (status, _, body) = get(&open, "/", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[test]
fn the_page_stays_small() {
    // Everything a browser downloads, so a phone on a slow LAN link opens it at once.
    let n = slm_server::ui::num_page_bytes();
    assert!(n < 64 * 1024, "{n} bytes");
}
