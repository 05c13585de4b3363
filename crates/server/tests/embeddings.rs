//! `/v1/embeddings` over HTTP on all-MiniLM-L6-v2 (converted GGUF) beside the default
//! generation model: every input form, base64, `dimensions`, too-long and empty inputs, 2,048
//! inputs in one call, a generation request in flight at the same time, and model naming.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value};
use slm_engine::{EmbedderHandle, EmbeddingModel, EngineConfig, EngineHandle};
use slm_server::{app, AppState, ServedEmbedder, ServedModel, Settings};
use tower::ServiceExt;

fn state() -> AppState {
    let state = AppState::new(Settings::new(vec![], 16 << 20));
    let model = EmbeddingModel::load(common::model_path("all-minilm-l6-v2-f16")).unwrap();
    let embedder = EmbedderHandle::start(Arc::new(model), 8192).unwrap();
    state.set_embedders(vec![ServedEmbedder { id: "minilm".into(), embedder, created: 1 }]);
    let engine =
        EngineHandle::start(common::qwen(), EngineConfig { max_model_len: Some(2048), ..Default::default() }).unwrap();
    state.set_models(vec![ServedModel { id: "qwen".into(), engine, created: 1 }]);
    state
}

async fn post(state: &AppState, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(i as u64)));
            d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect()
}

#[tokio::test]
async fn every_input_form_gives_the_same_vectors() {
    let s = state();
    let (status, one) = post(&s, "/v1/embeddings", json!({"model": "minilm", "input": "hello world"})).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!((one["object"].as_str(), one["model"].as_str()), (Some("list"), Some("minilm")));
    let v = &vectors(&one)[0];
    assert_eq!(v.len(), 384);
    assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    let tokens = one["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(tokens, 4, "[CLS] hello world [SEP]");

    let (_, many) = post(&s, "/v1/embeddings", json!({"input": ["a cat", "hello world", "a dog"]})).await;
    let many = vectors(&many);
    assert_eq!(many[1], *v, "the same input, alone or among others");
    let (_, ids) = post(&s, "/v1/embeddings", json!({"input": [101, 7592, 2088, 102]})).await;
    assert_eq!(vectors(&ids)[0], *v, "token ids of the same text");
    let (_, lists) = post(&s, "/v1/embeddings", json!({"input": [[101, 7592, 2088, 102], [101, 102]]})).await;
    assert_eq!(vectors(&lists)[0], *v);

    let (status, b64) = post(&s, "/v1/embeddings", json!({"input": "hello world", "encoding_format": "base64"})).await;
    assert_eq!(status, 200);
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    // JSON floats print the shortest text that reads back as the same f32.
    assert_eq!(decoded, *v);
    let (status, _) = post(&s, "/v1/embeddings", json!({"input": "x", "dimensions": 384})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_inputs_are_400s_naming_the_field() {
    let s = state();
    let long = "word ".repeat(600);
    let cases = [
        (json!({"input": ""}), "input"),
        (json!({"input": ["ok", ""]}), "input"),
        (json!({"input": []}), "input"),
        (json!({"input": [[]]}), "input"),
        (json!({"input": [999999]}), "input"),
        (json!({"input": long}), "input"),
        (json!({"input": "x", "dimensions": 100}), "dimensions"),
        (json!({"input": "x", "encoding_format": "int8"}), "encoding_format"),
        (json!({"input": "x", "model": "qwen"}), "model"),
        (json!({"input": vec!["x"; 2049]}), "input"),
        (json!({"input": 5}), "input"),
    ];
    for (body, param) in cases {
        let (status, e) = post(&s, "/v1/embeddings", body.clone()).await;
        assert_eq!((status, e["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some(param)), "{e}");
    }
    let (_, e) = post(&s, "/v1/embeddings", json!({"input": long})).await;
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    let (status, ok) = post(&s, "/v1/embeddings", json!({"input": long, "truncate": true})).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["usage"]["prompt_tokens"], 512);
    // Chat refuses the embedding model by name.
    let chat = json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]});
    let (status, e) = post(&s, "/v1/chat/completions", chat).await;
    assert_eq!((status, e["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("model")));
}

#[tokio::test]
async fn many_inputs_in_one_call_beside_a_generation_request() {
    let s = state();
    let chat =
        json!({"model": "qwen", "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 40});
    let generating = tokio::spawn({
        let s = s.clone();
        async move { post(&s, "/v1/chat/completions", chat).await }
    });
    let inputs: Vec<String> = (0..2048).map(|i| format!("sentence number {i} about topic {}", i % 17)).collect();
    let (status, v) = post(&s, "/v1/embeddings", json!({"input": inputs})).await;
    assert_eq!(status, 200);
    let vs = vectors(&v);
    assert_eq!(vs.len(), 2048);
    let (_, alone) = post(&s, "/v1/embeddings", json!({"input": inputs[777]})).await;
    assert_eq!(vectors(&alone)[0], vs[777], "bit-identical alone and among 2,048");
    let (status, c) = generating.await.unwrap();
    assert_eq!(status, 200, "{c}");
    assert!(c["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (status, models) = axum_get(&s, "/v1/models").await;
    assert_eq!(status, 200);
    let caps: Vec<(String, Value)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["capabilities"].clone()))
        .collect();
    assert_eq!(caps, [("qwen".into(), json!(["chat", "completion"])), ("minilm".into(), json!(["embeddings"]))]);
}

async fn axum_get(state: &AppState, path: &str) -> (StatusCode, Value) {
    let req = Request::builder().uri(path).body(Body::empty()).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}
