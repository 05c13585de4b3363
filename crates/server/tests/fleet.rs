//! What a server behind a load balancer or in Kubernetes needs from slm: liveness and
//! readiness probes, draining (readiness 503 and new work refused with `Retry-After` while
//! requests in flight finish), SSE that proxies pass through unbuffered, and the metric names
//! routers and autoscalers read (vLLM's, llama.cpp's), equal to slm's own.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::qwen_state;
use serde_json::{json, Value};
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

fn state() -> AppState {
    qwen_state(Settings::new(vec![], 16 << 20)).0
}

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The value of the series line that starts with `head` (name and labels).
fn metric(text: &str, head: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(head)).unwrap_or_else(|| panic!("no {head} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn probes_draining_streams_and_compatibility_metrics() {
    let s = state();
    for path in ["/health", "/health/live", "/health/ready"] {
        let (st, _, body) = call(&s, "GET", path, None).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
    }

    // SSE a proxy does not buffer.
    let chat = json!({"model": "qwen", "max_tokens": 4, "stream": true,
        "messages": [{"role": "user", "content": "Say hi"}]});
    let (st, h, body) = call(&s, "POST", "/v1/chat/completions", Some(chat.clone())).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(body.contains("data: [DONE]"), "{body}");

    // The compatibility names carry slm's own values.
    let (_, _, text) = call(&s, "GET", "/metrics", None).await;
    let pairs = [
        ("slm_prompt_tokens_total{model=\"qwen\"}", "vllm:prompt_tokens_total{model_name=\"qwen\"}"),
        ("slm_generation_tokens_total{model=\"qwen\"}", "vllm:generation_tokens_total{model_name=\"qwen\"}"),
        ("slm_requests_waiting{model=\"qwen\"}", "vllm:num_requests_waiting{model_name=\"qwen\"}"),
        ("slm_requests_running{model=\"qwen\"}", "vllm:num_requests_running{model_name=\"qwen\"}"),
        ("slm_kv_cache_usage_ratio{model=\"qwen\"}", "vllm:kv_cache_usage_perc{model_name=\"qwen\"}"),
        // llama.cpp's names have no labels: one model here, so the same values.
        ("slm_requests_running{model=\"qwen\"}", "llamacpp:requests_processing "),
        ("slm_requests_waiting{model=\"qwen\"}", "llamacpp:requests_deferred "),
        ("slm_generation_tokens_total{model=\"qwen\"}", "llamacpp:tokens_predicted_total "),
    ];
    for (ours, theirs) in pairs {
        assert_eq!(metric(&text, ours), metric(&text, theirs), "{theirs}");
    }
    assert!(metric(&text, "vllm:prompt_tokens_total{model_name=\"qwen\"}") > 0.0);
    assert!(text.contains("# TYPE vllm:kv_cache_usage_perc gauge"));
    // vLLM's LoRA gauge carries the time of the reading (the Inference Extension takes the
    // newest sample's labels).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let stamp = metric(&text, "vllm:lora_requests_info{model_name=\"qwen\",running_lora_adapters=\"\"");
    assert!((now - 60.0..=now + 1.0).contains(&stamp), "{stamp} vs now {now}");
    assert!(text.contains("vllm:cache_config_info{model_name=\"qwen\",block_size=\"16\""), "{text}");

    // Draining: readiness goes 503 at once, new work is refused in a way a proxy retries,
    // and liveness, reads and metrics still answer.
    s.start_draining();
    let (st, _, body) = call(&s, "GET", "/health/ready", None).await;
    assert_eq!((st, json_of(&body)["status"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("draining")));
    assert_eq!(call(&s, "GET", "/health", None).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(call(&s, "GET", "/health/live", None).await.0, StatusCode::OK);
    let (st, h, body) = call(&s, "POST", "/v1/chat/completions", Some(chat)).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["connection"], "close");
    assert_eq!(json_of(&body)["error"]["code"], "draining");
    assert_eq!(call(&s, "GET", "/v1/models", None).await.0, StatusCode::OK);
    assert_eq!(call(&s, "GET", "/metrics", None).await.0, StatusCode::OK);
}
