//! Engine faults: a panic while stepping one request (injected into its sampling) fails that
//! request with a 500 in OpenAI's shape — plain or streamed — while the requests beside it in
//! the same batch finish normally and the server keeps serving, holding no KV block after.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::qwen;
use serde_json::{json, Value};
use slm_engine::{EngineConfig, EngineHandle};
use slm_server::{app, AppState, ServedModel, Settings};
use tower::ServiceExt;

/// A token the hook picks: a prompt holding it fails while it is sampled.
const POISON: u32 = 151_000;

async fn post(state: &AppState, body: Value) -> (StatusCode, String) {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_request_fails_it_alone() {
    slm_engine::fault::inject_sampling_panic(Some(|prompt| prompt.contains(&POISON)));
    let state = AppState::new(Settings::new(vec![], 1 << 20));
    let engine = EngineHandle::start(qwen(), EngineConfig::default()).unwrap();
    state.set_models(vec![ServedModel { id: "qwen".into(), engine: engine.clone(), created: 1 }]);
    let ok = |n: u32| json!({"prompt": [9707, 11, n], "max_tokens": 8, "temperature": 0});
    let poisoned = json!({"prompt": [9707, POISON, 11], "max_tokens": 8});
    let streamed = json!({"prompt": [9707, POISON, 12], "max_tokens": 8, "stream": true});
    // All four at once, so the poisoned ones share steps with the healthy ones.
    let (a, b, c, d) =
        tokio::join!(post(&state, ok(1)), post(&state, poisoned), post(&state, ok(2)), post(&state, streamed));
    for (st, body) in [&a, &c] {
        assert_eq!(*st, StatusCode::OK, "{body}");
        assert_eq!(serde_json::from_str::<Value>(body).unwrap()["choices"][0]["finish_reason"], "length");
    }
    assert_eq!(b.0, StatusCode::INTERNAL_SERVER_ERROR, "{}", b.1);
    let err: Value = serde_json::from_str(&b.1).unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("injected fault"), "{err}");
    assert_eq!(err["error"]["type"], "server_error");
    // Streamed: the stream carries the error payload, then ends.
    assert_eq!(d.0, StatusCode::OK);
    assert!(d.1.contains("injected fault") && d.1.contains("\"server_error\""), "{}", d.1);
    assert_eq!(engine.stats().requests_failed_total, 2);
    slm_engine::fault::inject_sampling_panic(None);
    // Still serving; nothing held.
    assert_eq!(post(&state, ok(3)).await.0, StatusCode::OK);
    let t = Instant::now();
    while engine.stats().kv_blocks_used > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
