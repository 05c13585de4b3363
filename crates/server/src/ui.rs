//! The chat page: a single-page app (`crates/server/ui/`) compiled into the binary with
//! `include_str!`, served at `/` and `/ui` unless `--no-ui` / `ui = false`. It needs no
//! network but this server's own API, so every answer carries a Content-Security-Policy that
//! allows nothing else: no inline script, no other origin, no frames. `lib.rs::app` mounts
//! it; `auth.rs` lets its files through without a key (they hold no data; the page asks for
//! a key when the API answers 401).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Scripts and styles from this origin only; `fetch` to this origin only; images only as
/// `data:` (the page draws none from model output). No inline code of any kind.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page's files: (name, content type, body).
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("app.css", "text/css; charset=utf-8", include_str!("../ui/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../ui/app.js")),
    ("chat.js", "text/javascript; charset=utf-8", include_str!("../ui/chat.js")),
    ("markdown.js", "text/javascript; charset=utf-8", include_str!("../ui/markdown.js")),
    ("store.js", "text/javascript; charset=utf-8", include_str!("../ui/store.js")),
    ("icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
];

/// The whole page in bytes, every file counted (the closing note reports it).
pub fn num_page_bytes() -> usize {
    FILES.iter().map(|f| f.2.len()).sum()
}

/// Whether a path belongs to the page (and so needs no API key).
pub fn is_page_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// A version tag for caching: the FNV-1a hash of every file (fixed at build time, so hashed
/// once per process, not per request).
fn etag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let h = FILES
            .iter()
            .flat_map(|f| f.2.bytes())
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        format!("\"{h:016x}\"")
    })
}

fn file(name: &str, headers: &HeaderMap) -> Response {
    let Some(&(_, content_type, body)) = FILES.iter().find(|f| f.0 == name) else {
        return ApiError::not_found(format!("The chat page has no file `{name}`.")).into_response();
    };
    let tag = etag();
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut resp = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Revalidate every time: an upgraded binary's page shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    resp
}

pub async fn index(headers: HeaderMap) -> Response {
    file("index.html", &headers)
}

pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    file(&name, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths_are_the_root_and_ui_only() {
        assert!(is_page_path("/") && is_page_path("/ui") && is_page_path("/ui/app.js"));
        assert!(!is_page_path("/v1/models") && !is_page_path("/uix") && !is_page_path("/metrics"));
    }

    #[test]
    fn the_page_loads_only_files_it_serves_and_no_inline_script() {
        let html = FILES[0].2;
        for src in html.split("src=\"").skip(1).chain(html.split("href=\"").skip(1)) {
            let url = src.split('"').next().unwrap();
            let name = url.strip_prefix("/ui/").unwrap_or_else(|| panic!("{url} is not one of the page's files"));
            assert!(FILES.iter().any(|f| f.0 == name), "{name} is not served");
        }
        let handler = html.split(|c: char| c.is_whitespace()).any(|w| w.starts_with("on") && w.contains('='));
        assert!(!html.contains("<script>") && !html.contains("style=\"") && !handler, "inline code in index.html");
        for f in FILES.iter().filter(|f| f.0.ends_with(".js")) {
            for import in f.2.lines().filter(|l| l.starts_with("import ")) {
                let name = import.rsplit("\"./").next().unwrap().trim_end_matches("\";");
                assert!(FILES.iter().any(|g| g.0 == name), "{} imports {name}, which is not served", f.0);
            }
        }
    }
}
