//! Reasoning models through every API shape, on the real Qwen model given a template that
//! opens a `<think>` block at the end of the prompt (as DeepSeek-R1's and QwQ's do): the
//! thoughts come back apart (chat's `reasoning_content`, Messages' `thinking` block,
//! Responses' `reasoning` item), streamed pieces join into the plain answer, thinking turned
//! off closes the block in the prompt, a constraint turns thinking off, bad fields are 400s.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_engine::Model;
use slm_server::{app, AppState, ServedModel, Settings};
use tower::ServiceExt;

/// ChatML whose generation prompt opens the block; the comment names the close tag, as a
/// reasoning template does.
const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}{# thoughts end at </think> #}";

fn state() -> AppState {
    let mut model = Model::load(common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m")).unwrap();
    model.chat_template = model.chat_template.with_source(TEMPLATE.into()).unwrap();
    let state = AppState::new(Settings::new(vec![], 16 << 20));
    let config = slm_engine::EngineConfig { max_model_len: Some(2048), ..Default::default() };
    let engine = slm_engine::EngineHandle::start(Arc::new(model), config).unwrap();
    state.set_models(vec![ServedModel { id: "qwen".into(), engine, created: 1 }]);
    state
}

async fn post(state: &AppState, path: &str, body: Value) -> (StatusCode, String) {
    let req = Request::builder().method("POST").uri(path).header("content-type", "application/json");
    let resp = app(state.clone()).oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn ok(state: &AppState, path: &str, body: Value) -> Value {
    let (s, text) = post(state, path, body).await;
    assert_eq!(s, StatusCode::OK, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn ask(extra: Value) -> Value {
    let mut v = json!({"model": "qwen", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 24, "temperature": 0});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn thoughts_come_back_apart_in_every_shape() {
    let state = state();
    // The raw text, thoughts left in `content`.
    let raw = ok(&state, "/v1/chat/completions", ask(json!({"reasoning_format": "none"}))).await;
    let raw = raw["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let (thoughts, answer) = match raw.split_once("</think>") {
        Some((t, a)) => (t.trim().to_string(), a.trim_start().to_string()),
        None => (raw.trim().to_string(), String::new()),
    };
    assert!(!thoughts.is_empty(), "{raw:?}");
    let plain = ok(&state, "/v1/chat/completions", ask(json!({}))).await;
    let m = &plain["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], json!(thoughts), "{plain}");
    assert_eq!(m["content"], json!(answer), "{plain}");

    // Streamed pieces join into the plain answer.
    let (s, sse) = post(&state, "/v1/chat/completions", ask(json!({"stream": true}))).await;
    assert_eq!(s, StatusCode::OK);
    let (mut r, mut c) = (String::new(), String::new());
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
        let v: Value = serde_json::from_str(line).unwrap();
        let d = &v["choices"][0]["delta"];
        r.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        c.push_str(d["content"].as_str().unwrap_or(""));
    }
    assert_eq!((r, c), (thoughts.clone(), answer.clone()));

    // Messages: a thinking block first; Responses: a reasoning item first.
    let msg = json!({"model": "qwen", "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": "What is 2+2?"}]});
    let a = ok(&state, "/v1/messages", msg.clone()).await;
    assert_eq!(a["content"][0], json!({"type": "thinking", "thinking": thoughts, "signature": ""}), "{a}");
    let resp = json!({"model": "qwen", "input": "What is 2+2?", "max_output_tokens": 24, "temperature": 0});
    let r = ok(&state, "/v1/responses", resp).await;
    assert_eq!(r["output"][0]["type"], "reasoning", "{r}");
    assert_eq!(r["output"][0]["content"][0]["text"], json!(thoughts), "{r}");
    assert!(r["usage"]["output_tokens_details"]["reasoning_tokens"].as_u64().unwrap() > 0, "{r}");

    // Thinking off: the block is closed in the prompt, and nothing is read as thoughts.
    let off = json!({"chat_template_kwargs": {"enable_thinking": false}});
    let p = ok(&state, "/apply-template", ask(off.clone())).await;
    assert!(p["prompt"].as_str().unwrap().ends_with("<think>\n</think>"), "{p}");
    let a = ok(&state, "/v1/chat/completions", ask(off)).await;
    assert!(a["choices"][0]["message"].get("reasoning_content").is_none(), "{a}");
    let a = ok(&state, "/v1/messages", json!({"thinking": {"type": "disabled"}, "model": "qwen", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})).await;
    assert_ne!(a["content"][0]["type"], "thinking", "{a}");
    // A constraint from the first token turns thinking off.
    let a = ok(&state, "/v1/chat/completions", ask(json!({"response_format": {"type": "json_object"}}))).await;
    assert!(a["choices"][0]["message"].get("reasoning_content").is_none(), "{a}");
}

#[tokio::test]
async fn bad_reasoning_fields_are_400s_naming_them() {
    let state = state();
    let cases = [
        (
            "/v1/chat/completions",
            ask(json!({"chat_template_kwargs": {"enable_thinking": true}, "response_format": {"type": "json_object"}})),
            "chat_template_kwargs.enable_thinking",
        ),
        ("/v1/chat/completions", ask(json!({"reasoning_effort": "huge"})), "reasoning_effort"),
        ("/v1/chat/completions", ask(json!({"reasoning_format": "xml"})), "reasoning_format"),
        (
            "/v1/chat/completions",
            ask(json!({"chat_template_kwargs": {"messages": []}})),
            "chat_template_kwargs.messages",
        ),
    ];
    for (path, body, param) in cases {
        let (s, text) = post(&state, path, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{text}");
    }
    let (s, text) = post(
        &state,
        "/v1/messages",
        json!({"thinking": {"type": "sometimes"}, "model": "qwen", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
    // Still serving.
    ok(&state, "/v1/chat/completions", ask(json!({}))).await;
}
