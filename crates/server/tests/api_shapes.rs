//! The Responses and Messages APIs on the real default model: the order of their stream
//! events (and `sequence_number`), that a stream accumulates to the non-streamed answer's
//! shape, stored conversations (`previous_response_id`, get, delete, input items), and
//! Anthropic's error shape on every error path.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::qwen_state;
use serde_json::{json, Value};
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

fn state(keys: Vec<String>) -> AppState {
    qwen_state(Settings::new(keys, 1 << 20)).0
}

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn json_call(state: &AppState, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let (s, text) = call(state, method, path, body, &[]).await;
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// `(event name, payload)` of each SSE event; the payload's `type` must be the name.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let field =
                |name: &str| e.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("").to_string();
            let (name, data) = (field("event:"), field("data:"));
            let v: Value = serde_json::from_str(&data).unwrap_or_else(|err| panic!("{err}: {data}"));
            assert_eq!(v["type"], name.as_str(), "{e}");
            (name, v)
        })
        .collect()
}

fn weather_tool_responses() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

/// Collapses runs of one event name: the shape of a stream.
fn shape(evs: &[(String, Value)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (n, _) in evs {
        if out.last() != Some(n) {
            out.push(n.clone());
        }
    }
    out
}

#[tokio::test]
async fn a_streamed_response_follows_the_documented_event_order() {
    let s = state(vec![]);
    let body = json!({"input": "Write a long story about a dragon.", "max_output_tokens": 12, "temperature": 0, "stream": true});
    let (status, text) = call(&s, "POST", "/v1/responses", Some(body), &[]).await;
    assert_eq!(status, 200);
    let evs = events(&text);
    assert_eq!(
        shape(&evs),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete",
        ]
    );
    for (i, (_, v)) in evs.iter().enumerate() {
        assert_eq!(v["sequence_number"], i, "sequence numbers count every event");
    }
    let deltas: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap())
        .collect();
    let done = &evs.iter().find(|(n, _)| n == "response.output_text.done").unwrap().1;
    assert_eq!(done["text"], deltas.as_str());
    let last = &evs.last().unwrap().1["response"];
    assert_eq!(last["status"], "incomplete");
    assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(last["output"][0]["content"][0]["text"], deltas.as_str());
    assert_eq!(last["usage"]["output_tokens"], 12);
    // The streamed response was stored: GET returns the completed object.
    let id = last["id"].as_str().unwrap();
    let (status, got) = json_call(&s, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!((status, &got), (StatusCode::OK, last));
}

#[tokio::test]
async fn a_streamed_function_call_accumulates_to_the_plain_answer() {
    let s = state(vec![]);
    let body = json!({"input": "What is the weather in Paris?", "tools": weather_tool_responses(), "tool_choice": "required", "temperature": 0});
    let (status, plain) = json_call(&s, "POST", "/v1/responses", Some(body.clone())).await;
    assert_eq!(status, 200, "{plain}");
    let call = &plain["output"][0];
    assert_eq!((call["type"].as_str(), call["name"].as_str()), (Some("function_call"), Some("get_weather")));
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, text) = call_text(&s, streamed).await;
    let evs = events(&text);
    assert_eq!(
        shape(&evs),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let deltas: String =
        evs.iter().filter(|(n, _)| n.ends_with("arguments.delta")).map(|(_, v)| v["delta"].as_str().unwrap()).collect();
    let fin = &evs.last().unwrap().1["response"];
    assert_eq!(fin["output"][0]["arguments"], deltas.as_str());
    // Same greedy call either way, ids aside.
    assert_eq!(fin["output"][0]["arguments"], call["arguments"]);
    assert_eq!(fin["output"][0]["call_id"], evs[2].1["item"]["call_id"]);
}

async fn call_text(s: &AppState, body: Value) -> (StatusCode, String) {
    call(s, "POST", "/v1/responses", Some(body), &[]).await
}

#[tokio::test]
async fn stored_responses_continue_conversations_and_can_be_deleted() {
    let s = state(vec![]);
    let first = json!({"input": [{"role": "user", "content": "My name is Ada. Reply with OK."}], "instructions": "Be brief.", "max_output_tokens": 8, "temperature": 0});
    let (status, r1) = json_call(&s, "POST", "/v1/responses", Some(first)).await;
    assert_eq!(status, 200, "{r1}");
    let id = r1["id"].as_str().unwrap().to_string();
    let (status, items) = json_call(&s, "GET", &format!("/v1/responses/{id}/input_items"), None).await;
    assert_eq!(status, 200);
    assert_eq!(items["data"][0]["content"][0]["text"], "My name is Ada. Reply with OK.");
    assert_eq!(items["has_more"], false);

    // The second turn sends only its own input; the prompt holds the first turn too.
    let second =
        json!({"input": "What is my name?", "previous_response_id": id, "max_output_tokens": 8, "temperature": 0});
    let (status, count) = json_call(&s, "POST", "/v1/responses/input_tokens", Some(second.clone())).await;
    assert_eq!(status, 200, "{count}");
    let alone = json!({"input": "What is my name?", "instructions": "Be brief."});
    let (_, count_alone) = json_call(&s, "POST", "/v1/responses/input_tokens", Some(alone)).await;
    assert!(count["input_tokens"].as_u64() > count_alone["input_tokens"].as_u64(), "{count} vs {count_alone}");
    let (status, r2) = json_call(&s, "POST", "/v1/responses", Some(second)).await;
    assert_eq!(status, 200, "{r2}");
    assert_eq!(r2["previous_response_id"], id.as_str());
    assert_eq!(r2["usage"]["input_tokens"], count["input_tokens"]);
    let answer = r2["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(answer.contains("Ada"), "the model saw the first turn: {answer}");

    let (status, del) = json_call(&s, "DELETE", &format!("/v1/responses/{id}"), None).await;
    assert_eq!((status, del["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("DELETE", format!("/v1/responses/{id}")),
        ("GET", format!("/v1/responses/{id}/input_items")),
    ] {
        let (status, e) = json_call(&s, method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}");
        assert!(e["error"]["message"].as_str().unwrap().contains(&id));
    }
    // A continuation of a deleted response names the field.
    let orphan = json!({"input": "hi", "previous_response_id": id});
    let (status, e) = json_call(&s, "POST", "/v1/responses", Some(orphan)).await;
    assert_eq!((status, e["error"]["param"].as_str()), (StatusCode::NOT_FOUND, Some("previous_response_id")));
    // `store: false` keeps nothing.
    let (_, r3) =
        json_call(&s, "POST", "/v1/responses", Some(json!({"input": "hi", "store": false, "max_output_tokens": 2})))
            .await;
    let (status, _) = json_call(&s, "GET", &format!("/v1/responses/{}", r3["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn responses_errors_name_the_responses_fields() {
    let s = state(vec![]);
    let long = "word ".repeat(3000);
    let cases = [
        (json!({"input": "hi", "max_output_tokens": 0}), "max_output_tokens"),
        (json!({"input": long}), "input"),
        (json!({"input": "hi", "text": {"format": {"type": "xml"}}}), "text.format.type"),
        (json!({"input": "hi", "tools": [{"type": "file_search"}]}), "tools[0].type"),
        (json!({"input": "hi", "truncation": "sometimes"}), "truncation"),
        (json!({"model": "qwen"}), "input"),
    ];
    for (body, param) in cases {
        let (status, e) = json_call(&s, "POST", "/v1/responses", Some(body.clone())).await;
        assert_eq!((status, e["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some(param)), "{body}: {e}");
    }
    // With truncation "auto", the oldest items go until the prompt fits.
    let items = json!([{"role": "user", "content": long}, {"role": "user", "content": "Say hi."}]);
    let (status, r) = json_call(
        &s,
        "POST",
        "/v1/responses",
        Some(json!({"input": items, "truncation": "auto", "max_output_tokens": 4})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["usage"]["input_tokens"].as_u64().unwrap() < 100);
}

#[tokio::test]
async fn a_streamed_message_follows_anthropics_event_order() {
    let s = state(vec![]);
    let tools = json!([{"name": "get_weather", "description": "Current weather in a city",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let body = json!({"max_tokens": 60, "temperature": 0, "stream": true, "tools": tools, "tool_choice": {"type": "any"},
                      "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    let (status, text) = call(&s, "POST", "/v1/messages", Some(body.clone()), &[]).await;
    assert_eq!(status, 200);
    let evs = events(&text);
    assert_eq!(
        shape(&evs),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let partial: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap())
        .collect();
    let input: Value = serde_json::from_str(&partial).unwrap();
    assert!(input["city"].is_string());
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    let mut plain = body;
    plain["stream"] = json!(false);
    let (status, m) = json_call(&s, "POST", "/v1/messages", Some(plain)).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!((m["type"].as_str(), m["stop_reason"].as_str()), (Some("message"), Some("tool_use")));
    assert_eq!(m["content"][0]["type"], "tool_use");
    assert_eq!(m["content"][0]["input"], input, "streamed and plain calls agree");
    assert!(m["content"][0]["id"].as_str().unwrap().starts_with("toolu_"));
}

#[tokio::test]
async fn a_stop_sequence_is_reported() {
    let s = state(vec![]);
    let body = json!({"max_tokens": 40, "temperature": 0, "stop_sequences": ["3"],
                      "messages": [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]});
    let (status, m) = json_call(&s, "POST", "/v1/messages", Some(body)).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!((m["stop_reason"].as_str(), m["stop_sequence"].as_str()), (Some("stop_sequence"), Some("3")), "{m}");
    assert!(!m["content"][0]["text"].as_str().unwrap().contains('3'));
}

#[tokio::test]
async fn every_messages_error_has_anthropics_shape() {
    let s = state(vec!["sekret".into()]);
    let auth = [("x-api-key", "sekret"), ("anthropic-version", "2023-06-01")];
    let ok = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    type Case<'a> = (&'a str, Option<Value>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", Some(ok.clone()), vec![], 401, "authentication_error"),
        ("POST", Some(ok.clone()), vec![("x-api-key", "wrong")], 401, "authentication_error"),
        (
            "POST",
            Some(json!({"messages": [{"role": "user", "content": "hi"}]})),
            auth.to_vec(),
            400,
            "invalid_request_error",
        ),
        ("POST", Some(json!({"max_tokens": 5, "messages": []})), auth.to_vec(), 400, "invalid_request_error"),
        (
            "POST",
            Some(json!({"max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]})),
            auth.to_vec(),
            400,
            "invalid_request_error",
        ),
        ("GET", None, auth.to_vec(), 405, "invalid_request_error"),
    ];
    for (method, body, headers, status, kind) in cases {
        let (got, text) = call(&s, method, "/v1/messages", body.clone(), &headers).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got.as_u16(), status, "{body:?}: {text}");
        assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some(kind)), "{text}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (got, text) = call(&s, "POST", "/v1/messages", Some(ok), &auth).await;
    assert_eq!(got, 200, "{text}");
    let (got, text) = call(
        &s,
        "POST",
        "/v1/messages/count_tokens",
        Some(json!({"messages": [{"role": "user", "content": "hi"}]})),
        &[("authorization", "Bearer sekret")],
    )
    .await;
    assert_eq!(got, 200, "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["input_tokens"].as_u64().unwrap() > 0);
    // OpenAI's routes keep OpenAI's shape.
    let (got, text) = call(&s, "POST", "/v1/responses", Some(json!({"input": "hi"})), &[]).await;
    assert_eq!(got, 401);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"].is_string());
}
