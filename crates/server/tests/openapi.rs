//! Real responses of every endpoint checked against `openapi.yaml`, with a small validator
//! for the JSON-Schema subset the spec uses ($ref, allOf, oneOf, nullable, type, enum,
//! required, properties, items, additionalProperties).

mod common;

use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};
use slm_engine::{EngineConfig, EngineHandle};
use slm_server::{app, AppState, ServedModel, Settings};
use tower::ServiceExt;

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn resolve<'a>(spec: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut node = spec;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(spec, node)
        }
        None => s,
    }
}

fn check(spec: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let s = resolve(spec, schema);
    if s.get("nullable") == Some(&json!(true)) && v.is_null() {
        return;
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        all.iter().for_each(|sub| check(spec, sub, v, path, errs));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let ok = alts.iter().any(|sub| {
                let mut e = Vec::new();
                check(spec, sub, v, path, &mut e);
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{path}: matches none of {key}"));
            }
        }
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok {
            errs.push(format!("{path}: expected {t}, got {v}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{path}: {v} not in {e:?}"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{path}: missing required `{}`", r.as_str().unwrap()));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(spec, ps, x, &format!("{path}.{k}"), errs),
                None => {
                    if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                        check(spec, ap, x, &format!("{path}.{k}"), errs);
                    }
                }
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, x) in a.iter().enumerate() {
            check(spec, items, x, &format!("{path}[{i}]"), errs);
        }
    }
}

/// The schema the spec gives for `method path` answering `status` with `content_type`.
fn response_schema<'a>(spec: &'a Value, method: &str, path: &str, status: u16, content_type: &str) -> &'a Value {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in openapi.yaml");
    let resp = resolve(spec, &op["responses"][status.to_string()]);
    assert!(resp.is_object(), "{method} {path} {status} is not in openapi.yaml");
    let schema = &resp["content"][content_type]["schema"];
    assert!(schema.is_object(), "{method} {path} {status} {content_type} has no schema");
    schema
}

#[tokio::test]
async fn responses_match_the_openapi_spec() {
    let spec = spec();
    let state = AppState::new(Settings::new(vec![], 1 << 20));
    let minilm = slm_engine::EmbeddingModel::load(common::model_path("all-minilm-l6-v2-f16")).unwrap();
    let embedder = slm_engine::EmbedderHandle::start(std::sync::Arc::new(minilm), 8192).unwrap();
    state.set_embedders(vec![slm_server::ServedEmbedder { id: "minilm".into(), embedder, created: 1 }]);
    state.set_models(vec![ServedModel {
        id: "qwen".into(),
        engine: EngineHandle::start(common::qwen(), EngineConfig::default()).unwrap(),
        created: 1,
    }]);
    let msgs = json!([{"role": "user", "content": "Say hi."}]);
    let cases: Vec<(&str, &str, &str, Option<Value>)> = vec![
        (
            "post",
            "/v1/chat/completions",
            "/v1/chat/completions",
            Some(json!({"messages": msgs, "max_tokens": 4, "logprobs": true, "top_logprobs": 2})),
        ),
        (
            "post",
            "/v1/chat/completions",
            "/v1/chat/completions",
            Some(
                json!({"messages": msgs, "max_tokens": 4, "stream": true, "logprobs": true, "stream_options": {"include_usage": true}}),
            ),
        ),
        ("post", "/v1/chat/completions", "/v1/chat/completions", Some(json!({"messages": msgs, "temperature": 9}))),
        (
            "post",
            "/v1/completions",
            "/v1/completions",
            Some(json!({"prompt": ["a", "b"], "max_tokens": 3, "logprobs": 2, "echo": true})),
        ),
        ("post", "/v1/completions", "/v1/completions", Some(json!({"prompt": "a", "max_tokens": 3, "stream": true}))),
        ("post", "/v1/completions", "/v1/completions", Some(json!({"prompt": "a", "max_tokens": 100000}))),
        ("post", "/v1/responses", "/v1/responses", Some(json!({"input": "Say hi.", "max_output_tokens": 3}))),
        (
            "post",
            "/v1/responses",
            "/v1/responses",
            Some(json!({"input": "Say hi.", "max_output_tokens": 3, "stream": true})),
        ),
        (
            "post",
            "/v1/responses",
            "/v1/responses",
            Some(
                json!({"input": "Say hi.", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}], "tool_choice": "required", "stream": true}),
            ),
        ),
        ("post", "/v1/responses", "/v1/responses", Some(json!({"input": []}))),
        ("post", "/v1/responses/input_tokens", "/v1/responses/input_tokens", Some(json!({"input": "Say hi."}))),
        ("get", "/v1/responses/resp_none", "/v1/responses/{id}", None),
        ("delete", "/v1/responses/resp_none", "/v1/responses/{id}", None),
        ("get", "/v1/responses/resp_none/input_items", "/v1/responses/{id}/input_items", None),
        ("post", "/v1/messages", "/v1/messages", Some(json!({"messages": msgs, "max_tokens": 3}))),
        ("post", "/v1/messages", "/v1/messages", Some(json!({"messages": msgs, "max_tokens": 3, "stream": true}))),
        ("post", "/v1/messages", "/v1/messages", Some(json!({"messages": msgs}))),
        ("post", "/v1/messages/count_tokens", "/v1/messages/count_tokens", Some(json!({"messages": msgs}))),
        ("post", "/v1/embeddings", "/v1/embeddings", Some(json!({"input": ["a", "b"]}))),
        ("post", "/v1/embeddings", "/v1/embeddings", Some(json!({"input": [[101, 102]], "encoding_format": "base64"}))),
        ("post", "/v1/embeddings", "/v1/embeddings", Some(json!({"input": ""}))),
        ("get", "/v1/models", "/v1/models", None),
        ("get", "/v1/models/qwen", "/v1/models/{id}", None),
        ("get", "/v1/models/nope", "/v1/models/{id}", None),
        ("get", "/health", "/health", None),
        ("post", "/tokenize", "/tokenize", Some(json!({"content": "hello"}))),
        ("post", "/detokenize", "/detokenize", Some(json!({"tokens": [1, 2]}))),
        ("post", "/detokenize", "/detokenize", Some(json!({"tokens": "x"}))),
    ];
    for (method, uri, path, body) in cases {
        let req = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.clone().map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let bodies: Vec<Value> = if ct == "text/event-stream" {
            let mut data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            // OpenAI's chat and completion streams end with [DONE]; the Responses and
            // Messages streams end with their own last event.
            if path.starts_with("/v1/chat") || path == "/v1/completions" {
                assert_eq!(data.pop(), Some("[DONE]"), "{uri}: SSE must end with [DONE]");
            }
            data.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
        } else {
            vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{uri}: {e}: {text}"))]
        };
        let mut schema = response_schema(&spec, method, path, status, &ct);
        if ct == "text/event-stream" {
            schema = sse_data_schema(&spec, schema);
        }
        for b in &bodies {
            let mut errs = Vec::new();
            check(&spec, schema, b, "$", &mut errs);
            assert!(
                errs.is_empty(),
                "{method} {uri} ({status}) does not match openapi.yaml:\n{}\n{b}",
                errs.join("\n")
            );
        }
    }
}

/// An event-stream schema describes one event (`{event, data}`, as schemathesis reads Open
/// API 3.0): the JSON in its `data` is described by `contentSchema` (beside `[DONE]`).
fn sse_data_schema<'a>(spec: &'a Value, event: &'a Value) -> &'a Value {
    let data = &resolve(spec, event)["properties"]["data"];
    let with_content = match data.get("anyOf").and_then(Value::as_array) {
        Some(branches) => branches.iter().find(|b| b.get("contentSchema").is_some()).expect("a JSON branch"),
        None => data,
    };
    assert_eq!(with_content["contentMediaType"], "application/json");
    &with_content["contentSchema"]
}

#[test]
fn the_validator_rejects_wrong_shapes() {
    let spec = spec();
    let schema = json!({"$ref": "#/components/schemas/ChatCompletion"});
    let mut errs = Vec::new();
    check(
        &spec,
        &schema,
        &json!({"object": "chat.completion", "choices": [{"finish_reason": "maybe"}]}),
        "$",
        &mut errs,
    );
    assert!(errs.iter().any(|e| e.contains("missing required `usage`")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("not in")), "{errs:?}");
    let mut errs = Vec::new();
    check(
        &spec,
        &json!({"$ref": "#/components/schemas/Error"}),
        &json!({"error": {"message": "m", "type": "t", "param": null, "code": 3}}),
        "$",
        &mut errs,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
}
