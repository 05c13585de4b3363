//! The bad-input table: one row per malformed, out-of-range, oversized or pathological input,
//! each answered with its status and an OpenAI-shaped error naming the field where there is
//! one — and after all of them the server still answers, with no KV block held. Grammars and
//! schemas that cannot be honoured are refused, never dropped; pathological ones are bounded
//! in time (llguidance is linear: no catastrophic backtracking).

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_engine::EngineHandle;
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

fn state(body_limit: usize) -> (AppState, EngineHandle) {
    common::qwen_state(Settings::new(vec![], body_limit))
}

struct Row {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: StatusCode,
    /// The field the error names, when it should name one.
    param: Option<&'static str>,
    code: Option<&'static str>,
}

fn row(name: &'static str, path: &'static str, body: Value, status: StatusCode, param: Option<&'static str>) -> Row {
    Row {
        name,
        method: "POST",
        path,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        status,
        param,
        code: None,
    }
}

fn raw(name: &'static str, body: &[u8], status: StatusCode) -> Row {
    Row { body: body.to_vec(), ..row(name, "/v1/chat/completions", json!({}), status, None) }
}

fn with_code(mut r: Row, code: &'static str) -> Row {
    r.code = Some(code);
    r
}

async fn send(state: &AppState, r: &Row) -> (StatusCode, Value, axum::http::HeaderMap) {
    let req = Request::builder()
        .method(r.method)
        .uri(r.path)
        .header("content-type", r.content_type)
        .body(Body::from(r.body.clone()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers)
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const BAD: StatusCode = StatusCode::BAD_REQUEST;

fn rows() -> Vec<Row> {
    let msgs = json!([{"role": "user", "content": "Answer yes or no: is water wet?"}]);
    let chat = |extra: Value| {
        let mut b = json!({"messages": msgs, "max_tokens": 4});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let completion = |extra: Value| {
        let mut b = json!({"prompt": "Q: is water wet? A:", "max_tokens": 4});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push('[');
    }
    let deep = format!("{{\"messages\": {deep}");
    let props = |n: usize| {
        let p: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("field_{i}"), json!({"type": "integer"}))).collect();
        json!({"type": "object", "properties": p, "required": ["field_0"]})
    };
    let chain: String = (0..1000).map(|i| format!("r{i}: r{} \"a\"\n", i + 1)).collect::<String>() + "r1000: \"b\"\n";
    let chain = format!("start: r0\n{chain}");
    let tool = |params: Value| json!([{"type": "function", "function": {"name": "f", "parameters": params}}]);
    vec![
        raw("malformed JSON", b"{not json", BAD),
        raw("trailing garbage", br#"{"messages": [{"role": "user", "content": "hi"}]} xyz"#, BAD),
        raw("NaN", br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}"#, BAD),
        raw("Infinity", br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}"#, BAD),
        raw("invalid UTF-8", b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}", BAD),
        raw("lone surrogate", br#"{"messages": [{"role": "user", "content": "\ud800"}]}"#, BAD),
        raw("deep nesting", deep.as_bytes(), BAD),
        raw("empty body", b"", BAD),
        row("messages not a list", CHAT, json!({"messages": "hi"}), BAD, Some("messages")),
        row("no messages", CHAT, json!({"messages": []}), BAD, Some("messages")),
        row("empty role", CHAT, json!({"messages": [{"role": "", "content": "x"}]}), BAD, Some("messages[0].role")),
        row(
            "unknown role",
            CHAT,
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            BAD,
            Some("messages[0].role"),
        ),
        row("temperature too high", CHAT, chat(json!({"temperature": 5})), BAD, Some("temperature")),
        row("temperature wrong type", CHAT, chat(json!({"temperature": "hot"})), BAD, Some("temperature")),
        row("huge n", CHAT, chat(json!({"n": 1000})), BAD, Some("n")),
        row("negative max_tokens", CHAT, chat(json!({"max_tokens": -1})), BAD, Some("max_tokens")),
        with_code(
            row("huge max_tokens", CHAT, chat(json!({"max_tokens": 1_000_000_000_000i64})), BAD, Some("max_tokens")),
            "context_length_exceeded",
        ),
        with_code(
            row(
                "prompt over the context",
                CHAT,
                json!({"messages": [{"role": "user", "content": "word ".repeat(3000)}]}),
                BAD,
                Some("messages"),
            ),
            "context_length_exceeded",
        ),
        row(
            "top_logprobs out of range",
            CHAT,
            chat(json!({"logprobs": true, "top_logprobs": 50})),
            BAD,
            Some("top_logprobs"),
        ),
        row(
            "logit_bias token out of range",
            CHAT,
            chat(json!({"logit_bias": {"99999999": 1}})),
            BAD,
            Some("logit_bias"),
        ),
        row("logit_bias value out of range", CHAT, chat(json!({"logit_bias": {"5": 500}})), BAD, Some("logit_bias")),
        row(
            "100 stop strings",
            CHAT,
            chat(json!({"stop": (0..100).map(|i| format!("s{i}")).collect::<Vec<_>>()})),
            BAD,
            Some("stop"),
        ),
        with_code(
            row(
                "unknown schema type",
                CHAT,
                chat(
                    json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}}),
                ),
                BAD,
                Some("response_format"),
            ),
            "invalid_schema",
        ),
        with_code(
            row(
                "unsatisfiable recursive tool schema",
                CHAT,
                chat(
                    json!({"tools": tool(json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})), "tool_choice": "required", "max_tokens": 40}),
                ),
                BAD,
                Some("tools"),
            ),
            "invalid_schema",
        ),
        with_code(
            row(
                "schema over the size bound",
                COMPLETIONS,
                completion(json!({"json_schema": props(40_000)})),
                BAD,
                Some("json_schema"),
            ),
            "invalid_schema",
        ),
        with_code(
            row("regex matching nothing", COMPLETIONS, completion(json!({"regex": "[^\\s\\S]"})), BAD, Some("regex")),
            "invalid_schema",
        ),
        with_code(
            row(
                "grammar matching nothing",
                COMPLETIONS,
                completion(json!({"grammar": "start: a\na: a"})),
                BAD,
                Some("grammar"),
            ),
            "invalid_schema",
        ),
        with_code(
            row("bad regex", COMPLETIONS, completion(json!({"regex": "("})), BAD, Some("regex")),
            "invalid_schema",
        ),
        row(
            "prompt token out of range",
            COMPLETIONS,
            completion(json!({"prompt": [1, 2, 99999999]})),
            BAD,
            Some("prompt"),
        ),
        row("empty prompt", COMPLETIONS, completion(json!({"prompt": ""})), BAD, Some("prompt")),
        row(
            "more sequences than the queue holds",
            COMPLETIONS,
            completion(json!({"prompt": vec![vec![9707]; 300]})),
            BAD,
            Some("prompt"),
        ),
        Row {
            content_type: "text/plain",
            ..row("text/plain body", CHAT, chat(json!({})), StatusCode::UNSUPPORTED_MEDIA_TYPE, None)
        },
        Row { method: "GET", ..row("GET on a POST route", CHAT, json!({}), StatusCode::METHOD_NOT_ALLOWED, None) },
        // Pathological but valid: bounded in time, and either honoured or refused.
        row(
            "7000-property schema",
            CHAT,
            chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": props(7000)}}}),
            ),
            StatusCode::OK,
            None,
        ),
        row("1000-rule grammar chain", COMPLETIONS, completion(json!({"grammar": chain})), StatusCode::OK, None),
        row(
            "regex with huge repetition",
            COMPLETIONS,
            completion(json!({"regex": "(a{1000}){1000}"})),
            StatusCode::OK,
            None,
        ),
        // The Responses and Messages APIs share chat's path: the same bounds, their own names.
        row("responses: no input", RESPONSES, json!({"model": "qwen"}), BAD, Some("input")),
        row(
            "responses: unknown item",
            RESPONSES,
            json!({"input": [{"type": "computer_call"}]}),
            BAD,
            Some("input[0].type"),
        ),
        row(
            "responses: image part",
            RESPONSES,
            json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
            BAD,
            Some("input[0].content[0].type"),
        ),
        row(
            "responses: prompt over the context",
            RESPONSES,
            json!({"input": "word ".repeat(3000)}),
            BAD,
            Some("input"),
        ),
        row(
            "responses: 7,000-property schema",
            RESPONSES,
            json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": props(7000)}}}),
            BAD,
            Some("text.format"),
        ),
        row(
            "responses: unknown previous id",
            RESPONSES,
            json!({"input": "hi", "previous_response_id": "resp_x"}),
            StatusCode::NOT_FOUND,
            Some("previous_response_id"),
        ),
        row("responses: wrong type", RESPONSES, json!({"input": 5}), BAD, Some("input")),
        row("messages: no max_tokens", MESSAGES, json!({"messages": [{"role": "user", "content": "hi"}]}), BAD, None),
        row(
            "messages: system role",
            MESSAGES,
            json!({"max_tokens": 4, "messages": [{"role": "system", "content": "hi"}]}),
            BAD,
            None,
        ),
        row(
            "messages: tool_result without id",
            MESSAGES,
            json!({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            BAD,
            None,
        ),
        row(
            "messages: over the context",
            MESSAGES,
            json!({"max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}),
            BAD,
            None,
        ),
        row(
            "messages: recursive tool schema",
            MESSAGES,
            json!({"max_tokens": 4, "tool_choice": {"type": "any"}, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "f", "input_schema": {"$ref": "#/$defs/a", "$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}}}}]}),
            BAD,
            None,
        ),
    ]
}

const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_answered_and_changes_nothing() {
    let (s, engine) = state(16 << 20);
    let mut failures = Vec::new();
    let rows = rows();
    for r in &rows {
        let t = Instant::now();
        let (status, v, headers) = send(&s, r).await;
        let took = t.elapsed();
        let mut bad = Vec::new();
        // Pathological inputs may be honoured or refused; anything else must match exactly.
        let ok_status = status == r.status || (r.status == StatusCode::OK && status == BAD);
        if !ok_status {
            bad.push(format!("status {status}, want {}: {v}", r.status));
        }
        if status != StatusCode::OK {
            let e = &v["error"];
            if e["message"].as_str().is_none_or(str::is_empty) || !e["type"].is_string() {
                bad.push(format!("not an OpenAI error: {v}"));
            }
            if r.status != StatusCode::OK && r.param.is_some_and(|p| e["param"] != p) {
                bad.push(format!("param {}, want {:?}", e["param"], r.param));
            }
            if r.code.is_some_and(|c| e["code"] != c) {
                bad.push(format!("code {}, want {:?}", e["code"], r.code));
            }
        }
        if r.method == "GET" && headers.get("allow").is_none() {
            bad.push("405 without Allow".into());
        }
        if took > Duration::from_secs(30) {
            bad.push(format!("took {took:?}"));
        }
        if status == StatusCode::OK && r.path == COMPLETIONS && r.name.starts_with("regex") {
            let text = v["choices"][0]["text"].as_str().unwrap_or_default();
            if !text.chars().all(|c| c == 'a') {
                bad.push(format!("output {text:?} does not follow the regex"));
            }
        }
        eprintln!("{:<40} {status} in {:>6.0} ms", r.name, took.as_secs_f64() * 1e3);
        if !bad.is_empty() {
            failures.push(format!("{}: {}", r.name, bad.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));

    // Bodies at and over the limit.
    let (small, _) = state(4096);
    let at = Row { body: vec![b' '; 4096 - 60], ..row("", CHAT, json!({}), BAD, None) };
    let mut body = br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}"#.to_vec();
    body.resize(4096, b' ');
    let (st, _, _) = send(&small, &Row { body, ..at }).await;
    assert_eq!(st, StatusCode::OK, "a body exactly at the limit");
    let over = Row { body: vec![b' '; 4097], ..row("", CHAT, json!({}), BAD, None) };
    assert_eq!(send(&small, &over).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Still serving, nothing held.
    let ok =
        row("", CHAT, json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}), StatusCode::OK, None);
    assert_eq!(send(&s, &ok).await.0, StatusCode::OK);
    let t = Instant::now();
    while engine.stats().kv_blocks_used > 0 || engine.stats().num_unadmitted > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "KV blocks or queue entries left behind: {:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
