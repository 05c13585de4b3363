//! LoRA adapters over HTTP on the real Qwen2.5-Coder-0.5B model, with seeded random rank-8
//! adapters the test writes (`lora_writer`): a start-up adapter and run-time ones; selection
//! by `model` (`NAME`, `BASE:NAME`) and by llama.cpp's `lora` field (by id and by name,
//! with scales); `/v1/models` listing adapters with `parent`; adapters and base requests in
//! one batch giving the same answers as alone; load and unload at run time while requests
//! run (none fails that did not ask for the unloaded adapter; new ones for it get 404); bad
//! files refused with a 400 naming the tensor; the metrics routers read.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_engine::lora_writer::{write_random_adapter, RandomAdapter};
use slm_server::adapters::AdapterSpec;
use slm_server::registry::{Entry, EntrySpec, Loaded, ModelKind, Registry};
use slm_server::{app, AppState, ServedModel, Settings};
use tower::ServiceExt;

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("slm-lora-http-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn adapter(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let p = dir.join(format!("{name}.gguf"));
    // B in ±0.02: enough to change greedy answers, not enough to turn them into noise.
    let spec = RandomAdapter { seed, b_range: 0.02, ..Default::default() };
    write_random_adapter(&common::qwen().decoder, &p, &spec).unwrap();
    p
}

/// Qwen served as `qwen` with the start-up adapter `sql` (scale 1).
fn state(dir: &Path) -> AppState {
    let state = AppState::new(Settings::new(vec![], 16 << 20));
    let config = slm_engine::EngineConfig { max_model_len: Some(2048), ..Default::default() };
    let engine = slm_engine::EngineHandle::start(common::qwen(), config.clone()).unwrap();
    let spec = EntrySpec {
        id: "qwen".into(),
        aliases: vec![],
        tags: vec![],
        path: common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m"),
        engine: config,
        kind: ModelKind::Generate,
        keep_alive: slm_server::keep_alive::KeepAlive::FOREVER,
        draft: None,
        chat_template: None,
        loras: vec![AdapterSpec { name: "sql".into(), path: adapter(dir, "sql", 1), scale: 1.0 }],
        lora_limits: slm_server::adapters::AdapterLimits { max_loras: 3, max_bytes: 64 << 20 },
    };
    let served = Arc::new(ServedModel { id: "qwen".into(), engine, created: 1 });
    let entry = Entry::preloaded(spec, Loaded::Gen(served), 1);
    state.set_registry(Registry::new(vec![entry], Default::default()));
    state.mark_ready();
    state
}

async fn call(state: &AppState, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    let req = req.body(body.map_or(Body::empty(), |b| Body::from(b.to_string()))).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn post(state: &AppState, path: &str, body: Value) -> (StatusCode, Value) {
    call(state, "POST", path, Some(body)).await
}

/// A greedy completion with its token logprobs: (text, logprobs).
fn completion(model: &str, extra: Value) -> Value {
    let mut b =
        json!({"model": model, "prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0, "logprobs": 1});
    b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    b
}

async fn answer(state: &AppState, body: Value) -> (String, Value) {
    let (s, v) = post(state, "/v1/completions", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body}: {v}");
    (v["choices"][0]["text"].as_str().unwrap().to_string(), v["choices"][0]["logprobs"]["token_logprobs"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adapters_are_selected_per_request_and_batched_exactly() {
    let dir = temp_dir().join("select");
    std::fs::create_dir_all(&dir).unwrap();
    let st = state(&dir);
    let base = answer(&st, completion("qwen", json!({}))).await;
    let sql = answer(&st, completion("sql", json!({}))).await;
    assert_ne!(base.0, sql.0, "the adapter should change the greedy answer");
    // Every way of naming the same adapter gives the same bits.
    assert_eq!(answer(&st, completion("qwen:sql", json!({}))).await, sql);
    assert_eq!(answer(&st, completion("qwen", json!({"lora": [{"name": "sql"}]}))).await, sql);
    assert_eq!(answer(&st, completion("qwen", json!({"lora": [{"id": 0, "scale": 1.0}]}))).await, sql);
    // Scale 0 is the base model; another scale is another answer.
    assert_eq!(answer(&st, completion("qwen", json!({"lora": [{"id": 0, "scale": 0.0}]}))).await, base);
    let half = answer(&st, completion("qwen", json!({"lora": [{"id": 0, "scale": 0.5}]}))).await;
    assert_ne!(half.1, sql.1);

    // A second adapter at run time; then base, each adapter and both together, all at once.
    let path = adapter(&dir, "chat", 2);
    let (s, v) = post(&st, "/v1/load_lora_adapter", json!({"lora_name": "chat", "lora_path": path})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let chat = answer(&st, completion("chat", json!({}))).await;
    let both_body = completion("qwen", json!({"lora": [{"name": "chat"}, {"name": "sql", "scale": 0.7}]}));
    let both = answer(&st, both_body.clone()).await;
    let bodies =
        [completion("qwen", json!({})), completion("sql", json!({})), completion("chat", json!({})), both_body];
    let want = [base.clone(), sql.clone(), chat.clone(), both.clone()];
    for round in 0..2 {
        let futs: Vec<_> = (0..8)
            .map(|i| {
                let (st, body) = (st.clone(), bodies[i % 4].clone());
                async move { answer(&st, body).await }
            })
            .collect();
        let got = futures_join(futs).await;
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &want[i % 4], "round {round}: request {i} changed in a mixed batch");
        }
    }

    // Chat reports the adapter's name as the model.
    let (s, v) = post(
        &st,
        "/v1/chat/completions",
        json!({"model": "sql", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "sql");

    // /v1/models lists adapters with their parent; llama.cpp's list gives ids.
    let (_, v) = call(&st, "GET", "/v1/models", None).await;
    let ids: Vec<(&str, Option<&str>)> =
        v["data"].as_array().unwrap().iter().map(|m| (m["id"].as_str().unwrap(), m["parent"].as_str())).collect();
    assert_eq!(ids, vec![("qwen", None), ("sql", Some("qwen")), ("chat", Some("qwen"))]);
    let (_, v) = call(&st, "GET", "/v1/models/chat", None).await;
    assert_eq!(v["parent"], "qwen");
    let (_, v) = call(&st, "GET", "/lora-adapters", None).await;
    assert_eq!(v[1]["id"], 1);
    assert_eq!(v[1]["name"], "chat");

    // The engine publishes which adapters run after its step, just after the last answer's
    // events: the gauge empties within moments.
    let idle = "vllm:lora_requests_info{model_name=\"qwen\",running_lora_adapters=\"\",waiting_lora_adapters=\"\",max_lora=\"3\"}";
    let mut text = String::new();
    for _ in 0..100 {
        text = call(&st, "GET", "/metrics", None).await.1.as_str().unwrap().to_string();
        if text.contains(idle) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(text.contains("slm_lora_requests_total{model_name=\"qwen\",lora_name=\"sql\"}"), "{text}");
    assert!(text.contains(idle), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_adapters_and_bad_files_are_clear_errors() {
    let dir = temp_dir().join("errors");
    std::fs::create_dir_all(&dir).unwrap();
    let st = state(&dir);
    let (s, v) = post(&st, "/v1/completions", completion("qwen:nope", json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    let (s, v) = post(&st, "/v1/completions", completion("qwen", json!({"lora": [{"name": "nope"}]}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::NOT_FOUND, Some("lora[0]")), "{v}");
    let (s, v) = post(&st, "/v1/completions", completion("qwen", json!({"lora": [{"id": 7}]}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = post(&st, "/v1/completions", completion("qwen", json!({"lora": [{}]}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("lora[0]")), "{v}");
    let (s, v) = post(&st, "/v1/completions", completion("qwen", json!({"lora": [{"id": 0, "scale": 1e9}]}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("lora[0].scale")), "{v}");

    // An adapter written for the 1.5B model: same architecture, other shapes.
    let big = slm_engine::Model::load(common::model_path("qwen2.5-coder-1.5b-instruct-q4_k_m")).unwrap();
    let wrong = dir.join("wrong.gguf");
    write_random_adapter(&big.decoder, &wrong, &RandomAdapter::default()).unwrap();
    drop(big);
    let (s, v) = post(&st, "/v1/load_lora_adapter", json!({"lora_name": "w", "lora_path": wrong})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("blk.0.") && msg.contains("lora_a") && msg.contains("shape"), "{msg}");
    let (s, v) =
        post(&st, "/v1/load_lora_adapter", json!({"lora_name": "x", "lora_path": dir.join("none.gguf")})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("lora_path")), "{v}");
    std::fs::write(dir.join("junk.gguf"), b"GGUF but not really").unwrap();
    let (s, v) =
        post(&st, "/v1/load_lora_adapter", json!({"lora_name": "x", "lora_path": dir.join("junk.gguf")})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) =
        post(&st, "/v1/load_lora_adapter", json!({"lora_name": "sql", "lora_path": adapter(&dir, "b", 3)})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("lora_name")), "{v}");
    // The bound on the number of adapters (3 here: sql plus two).
    for (i, name) in ["c1", "c2"].iter().enumerate() {
        let p = adapter(&dir, name, 10 + i as u64);
        let (s, v) = post(&st, "/v1/load_lora_adapter", json!({"lora_name": name, "lora_path": p})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) =
        post(&st, "/v1/load_lora_adapter", json!({"lora_name": "c3", "lora_path": adapter(&dir, "c3", 9)})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_loras"), "{v}");
    let (s, _) = post(&st, "/v1/unload_lora_adapter", json!({"lora_name": "nope"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The server still serves.
    answer(&st, completion("sql", json!({}))).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unloading_under_load_fails_nothing_else_and_waits_for_its_requests() {
    let dir = temp_dir().join("unload");
    std::fs::create_dir_all(&dir).unwrap();
    let st = state(&dir);
    let path = adapter(&dir, "tmp", 5);
    let (s, v) = post(&st, "/v1/load_lora_adapter", json!({"lora_name": "tmp", "lora_path": path})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let long = |model: &str| json!({"model": model, "prompt": "Count: 1, 2, 3,", "max_tokens": 96, "temperature": 0, "ignore_eos": true});
    // Base, sql and tmp requests in flight; tmp is unloaded meanwhile.
    let mut handles = Vec::new();
    for i in 0..6 {
        let (st, body) = (st.clone(), long(["qwen", "sql", "tmp"][i % 3]));
        handles.push(tokio::spawn(async move { post(&st, "/v1/completions", body).await }));
    }
    // Wait until the engine runs them (the gauge lists both adapters), then unload tmp: the
    // answer waits for its requests.
    let engine = st.models().unwrap()[0].engine.clone();
    let mut gauge = String::new();
    for _ in 0..200 {
        let (_, m) = call(&st, "GET", "/metrics", None).await;
        gauge = m.as_str().unwrap().lines().filter(|l| l.starts_with("vllm:lora")).collect::<Vec<_>>().join("\n");
        if engine.stats().num_running >= 6 && gauge.contains("running_lora_adapters=\"sql,tmp\"") {
            break;
        }
        assert!(!handles.iter().any(|h| h.is_finished()), "a request ended early");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(gauge.contains("running_lora_adapters=\"sql,tmp\""), "the gauge should list the adapters in use: {gauge}");
    let unload = {
        let st = st.clone();
        tokio::spawn(async move { post(&st, "/v1/unload_lora_adapter", json!({"lora_name": "tmp"})).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Already gone for new requests, while the old ones run on.
    let (s, v) = post(&st, "/v1/completions", completion("tmp", json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = post(&st, "/v1/completions", completion("qwen:tmp", json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    for h in handles {
        let (s, v) = h.await.unwrap();
        assert_eq!(s, StatusCode::OK, "a request in flight failed: {v}");
        assert_eq!(v["usage"]["completion_tokens"], 96);
    }
    let (s, v) = unload.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = call(&st, "GET", "/v1/models", None).await;
    assert!(!v.to_string().contains("\"tmp\""), "{v}");
    // Loading it again under the same name works.
    let (s, v) = post(&st, "/v1/load_lora_adapter", json!({"lora_name": "tmp", "lora_path": path})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    answer(&st, completion("tmp", json!({}))).await;
    slm_engine_wait(&engine);
    let _ = std::fs::remove_dir_all(dir);
}

/// The engine goes idle once the requests are done.
fn slm_engine_wait(engine: &slm_engine::EngineHandle) {
    for _ in 0..200 {
        let s = engine.stats();
        if s.num_running + s.num_waiting == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the engine did not go idle: {:?}", engine.stats());
}
