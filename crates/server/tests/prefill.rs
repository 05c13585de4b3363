//! Assistant prefill on the real Qwen model: `continue_final_message` on chat (vLLM's and
//! llama.cpp's extension) continues the last assistant message — exactly the text
//! completion of the template's prompt with that message's text appended — and a last
//! assistant turn in Anthropic's Messages API is a prefill, as Anthropic documents it.
//! `add_generation_prompt: false` leaves the assistant's turn unopened.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

async fn post(state: &AppState, path: &str, body: Value) -> (StatusCode, Value) {
    let req =
        Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

const PREFILL: &str = "{\"city\": \"";

fn conversation() -> Value {
    json!([
        {"role": "user", "content": "Give a JSON object with the capital of France as `city`."},
        {"role": "assistant", "content": PREFILL}
    ])
}

#[tokio::test]
async fn continuing_the_last_assistant_message_is_the_completion_of_its_prompt() {
    let s = common::qwen_state(Settings::new(vec![], 16 << 20)).0;
    let body = json!({"model": "qwen", "messages": conversation(), "continue_final_message": true, "temperature": 0, "max_tokens": 8});
    let (status, chat) = post(&s, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{chat}");
    let text = chat["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(text.starts_with("Paris"), "{text}");

    // The same prompt by hand: the template's new assistant turn, then the prefill.
    let (_, t) = post(&s, "/apply-template", json!({"model": "qwen", "messages": [conversation()[0]]})).await;
    let raw = format!("{}{PREFILL}", t["prompt"].as_str().unwrap());
    let (_, c) =
        post(&s, "/v1/completions", json!({"model": "qwen", "prompt": raw, "temperature": 0, "max_tokens": 8})).await;
    assert_eq!(c["choices"][0]["text"].as_str().unwrap(), text);
    assert_eq!(c["usage"]["prompt_tokens"], chat["usage"]["prompt_tokens"]);

    // Anthropic's Messages API: the last assistant turn is a prefill, continued the same way.
    let body = json!({"model": "qwen", "messages": conversation(), "max_tokens": 8, "temperature": 0});
    let (status, m) = post(&s, "/v1/messages", body).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["content"][0]["text"].as_str().unwrap(), text);
}

#[tokio::test]
async fn prefill_needs_an_assistant_message_and_a_consistent_request() {
    let s = common::qwen_state(Settings::new(vec![], 16 << 20)).0;
    let user_last = json!([{"role": "user", "content": "hi"}]);
    for body in [
        json!({"model": "qwen", "messages": user_last, "continue_final_message": true}),
        json!({"model": "qwen", "messages": conversation(), "continue_final_message": true, "add_generation_prompt": true}),
    ] {
        let (status, e) = post(&s, "/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(e["error"]["param"], "continue_final_message", "{e}");
    }
    // Without the generation prompt the assistant's header is not in the prompt.
    let n = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let with =
        post(&s, "/v1/chat/completions", json!({"model": "qwen", "messages": user_last, "max_tokens": 1})).await.1;
    let without = json!({"model": "qwen", "messages": user_last, "max_tokens": 1, "add_generation_prompt": false});
    let without = post(&s, "/v1/chat/completions", without).await.1;
    assert_eq!(n(&with) - n(&without), 3, "`<|im_start|>assistant\\n` is three tokens");
}

#[tokio::test]
async fn apply_template_shows_each_ending() {
    let s = common::qwen_state(Settings::new(vec![], 16 << 20)).0;
    let prompt = |extra: Value| {
        let mut body = json!({"model": "qwen", "messages": conversation()});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let s = s.clone();
        async move { post(&s, "/apply-template", body).await.1["prompt"].as_str().unwrap().to_string() }
    };
    assert!(prompt(json!({"continue_final_message": true}))
        .await
        .ends_with(&format!("<|im_start|>assistant\n{PREFILL}")));
    assert!(prompt(json!({})).await.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
    assert!(prompt(json!({"add_generation_prompt": false})).await.ends_with(&format!("{PREFILL}<|im_end|>\n")));
}
