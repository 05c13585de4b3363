//! The repeat-call guard over HTTP on the real Qwen2.5-Coder-0.5B model, with a conversation
//! from scripts/eval_agents.py where the model, handed the tool's result, calls the same tool
//! with the same arguments again: with the guard off the answer is that call; with it on
//! (the default) the answer is text, the same streamed and plain, and seeded answers are
//! reproducible; required tool choice is not guarded; the opt-in hints reach the prompt; the
//! engine ends with no block in use.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

async fn post(state: &AppState, body: Value) -> (StatusCode, String) {
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn answer(state: &AppState, body: Value) -> Value {
    let (status, text) = post(state, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["message"].clone()
}

/// The streamed answer's content and calls (name, arguments), accumulated as the SDK does.
async fn streamed(state: &AppState, mut body: Value) -> (String, Vec<(String, String)>) {
    body["stream"] = json!(true);
    let (status, text) = post(state, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (mut content, mut calls) = (String::new(), Vec::<(String, String)>::new());
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
        let chunk: Value = serde_json::from_str(line).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.push((String::new(), String::new()));
            }
            calls[i].0.push_str(c["function"]["name"].as_str().unwrap_or(""));
            calls[i].1.push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    (content, calls)
}

fn tool(name: &str, param: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "description": format!("{name} by {param}"),
        "parameters": {"type": "object", "properties": {param: {"type": "string"}}, "required": [param]}}})
}

fn conversation() -> Value {
    json!({
        "model": "qwen",
        "temperature": 0,
        "max_tokens": 120,
        "tools": [tool("get_weather", "city"), tool("get_flight", "flight"), tool("find_user", "name")],
        "messages": [
            {"role": "user", "content": "What is the temperature in Reykjavik right now?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Reykjavik\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1",
                "content": "{\"city\": \"Reykjavik\", \"temperature_c\": -2, \"condition\": \"cloudy\"}"}
        ]
    })
}

#[tokio::test]
async fn a_repeated_call_is_not_emitted_and_streamed_equals_plain() {
    let (state, engine) = common::qwen_state(Settings::new(vec![], 16 << 20));
    let mut off = conversation();
    off["repeat_call_guard"] = json!(false);
    let repeated = answer(&state, off.clone()).await;
    let calls = repeated["tool_calls"].as_array().expect("without the guard the model repeats the call");
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{repeated}");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Reykjavik"}));

    let guarded = answer(&state, conversation()).await;
    assert!(guarded["tool_calls"].is_null(), "{guarded}");
    let text = guarded["content"].as_str().expect("an answer in text").to_string();
    assert!(!text.is_empty());
    assert!(!text.contains("<tool_call>") && !text.contains("{\"name\""), "{text}");
    // Streamed: the same text, nothing of the dropped call.
    let (content, calls) = streamed(&state, conversation()).await;
    assert_eq!(content, text);
    assert!(calls.is_empty(), "{calls:?}");
    // Seeded sampling goes through the same path, reproducibly.
    let mut seeded = conversation();
    seeded["temperature"] = json!(0.8);
    seeded["seed"] = json!(11);
    let a = answer(&state, seeded.clone()).await;
    assert_eq!(answer(&state, seeded.clone()).await, a);
    assert_eq!(streamed(&state, seeded).await.0, a["content"].as_str().unwrap_or(""));
    // `required` is the client's decision: not guarded.
    let mut required = conversation();
    required["tool_choice"] = json!("required");
    assert!(answer(&state, required).await["tool_calls"].is_array());
    // A new call after a result streams through.
    let mut other = conversation();
    other["messages"][0]["content"] = json!("What is the temperature in Reykjavik, and where does flight BA117 land?");
    let (status, _) = post(&state, other).await;
    assert_eq!(status, StatusCode::OK);
    // The hints are opt-in and lengthen the prompt (in the user's language).
    let prompt_tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let mut plain = conversation();
    plain["max_tokens"] = json!(1);
    let (_, base) = post(&state, plain.clone()).await;
    let base = prompt_tokens(&serde_json::from_str(&base).unwrap());
    for field in ["tool_system_hint", "tool_result_hint"] {
        let mut hinted = plain.clone();
        hinted[field] = json!(true);
        let (status, text) = post(&state, hinted).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(prompt_tokens(&serde_json::from_str(&text).unwrap()) > base + 10, "{field}");
    }
    for _ in 0..100 {
        if engine.stats().kv_blocks_used == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(engine.stats().kv_blocks_used, 0, "the dropped sequences' blocks are free");
}
