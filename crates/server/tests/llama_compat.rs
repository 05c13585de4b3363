//! The parts of llama-server's API its clients read beyond completions, on the real Qwen
//! model: `GET /slots` (501 unless turned on), `POST /chat/completions/input_tokens`,
//! llama.cpp's unlabeled `llamacpp:*` metrics and the `Process-Start-Time-Unix` header,
//! `logit_bias` in llama.cpp's forms (ids or texts, lists or maps, `false` to ban) and how
//! `generation_settings` lists it, embeddings inputs in llama.cpp's forms.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_server::{app, AppState, Settings};
use tower::ServiceExt;

fn state(slots: bool) -> AppState {
    let settings = Settings { slots, ..Settings::new(vec![], 16 << 20) };
    common::qwen_state(settings).0
}

async fn call(state: &AppState, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String, String) {
    let req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    let req = req.body(body.map_or(Body::empty(), |b| Body::from(b.to_string()))).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let start =
        resp.headers().get("process-start-time-unix").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned(), start)
}

async fn ok(state: &AppState, path: &str, body: Value) -> Value {
    let (s, text, _) = call(state, "POST", path, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn slots_are_off_unless_asked_for_then_one_per_sequence() {
    let (s, text, _) = call(&state(false), "GET", "/slots", None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{text}");
    let st = state(true);
    let (s, text, _) = call(&st, "GET", "/slots", None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let slots: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(slots.len(), slm_engine::EngineConfig::default().max_seqs);
    assert!(slots.iter().all(|s| s["n_ctx"] == 2048 && s["is_processing"] == false && s.get("prompt").is_none()));
}

#[tokio::test]
async fn metrics_can_be_turned_off_like_llama_server_without_its_flag() {
    let settings = Settings { metrics: false, ..Settings::new(vec![], 16 << 20) };
    let st = AppState::new(settings);
    let (s, text, _) = call(&st, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{text}");
    assert!(text.contains("--no-metrics"), "{text}");
    let (s, _, _) = call(&state(false), "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn chat_input_tokens_count_the_rendered_prompt() {
    let st = state(false);
    let body = json!({"messages": [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]});
    let n = ok(&st, "/chat/completions/input_tokens", body.clone()).await["input_tokens"].as_u64().unwrap();
    let (_, text, _) =
        call(&st, "POST", "/v1/chat/completions", Some(json!({"max_tokens": 1, "messages": body["messages"]}))).await;
    let usage: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(n, usage["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(ok(&st, "/v1/chat/completions/input_tokens", body).await["input_tokens"].as_u64().unwrap(), n);
}

#[tokio::test]
async fn llama_cpp_metric_names_have_no_labels_and_follow_the_engine() {
    let st = state(false);
    let r = ok(&st, "/completion", json!({"prompt": "I believe", "n_predict": 8, "temperature": 0})).await;
    // The engine counts a request as processing until the step after its last token, which
    // may come just after the response: wait for that step (at most 5 s).
    let mut tries = 0;
    let (s, text, start) = loop {
        let (s, text, start) = call(&st, "GET", "/metrics", None).await;
        tries += 1;
        if tries == 250
            || text.lines().any(|l| {
                l.strip_prefix("llamacpp:requests_processing ").and_then(|v| v.parse::<f64>().ok()) == Some(0.0)
            })
        {
            break (s, text, start);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(s, StatusCode::OK);
    let now = slm_server::routes::unix_now();
    assert!(start.parse::<u64>().is_ok_and(|t| t <= now && t + 3600 > now), "Process-Start-Time-Unix: {start:?}");
    let value = |name: &str| -> f64 {
        assert!(text.contains(&format!("# HELP llamacpp:{name} ")), "no HELP for {name}");
        let line =
            text.lines().find(|l| l.starts_with(&format!("llamacpp:{name} "))).unwrap_or_else(|| panic!("{name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("tokens_predicted_total"), r["timings"]["predicted_n"].as_f64().unwrap());
    assert_eq!(
        value("prompt_tokens_total") + value("prompt_tokens_cached_total"),
        r["tokens_evaluated"].as_f64().unwrap()
    );
    assert!(value("n_decode_total") >= 8.0 && value("n_tokens_max") >= 1.0);
    assert_eq!(value("requests_processing"), 0.0);
    assert!(value("prompt_seconds_total") > 0.0 && value("n_busy_slots_per_decode") >= 1.0);
    for name in ["spec_decode_num_drafts_total", "predicted_tokens_seconds", "requests_deferred"] {
        value(name);
    }
}

#[tokio::test]
async fn logit_bias_in_llama_cpp_forms_bans_what_it_names() {
    let st = state(false);
    let base = json!({"prompt": "The capital of France is", "n_predict": 6, "temperature": 0});
    let plain = ok(&st, "/completion", base.clone()).await;
    assert!(plain["content"].as_str().unwrap().contains("Paris"), "{}", plain["content"]);
    assert_eq!(plain["generation_settings"]["logit_bias"], json!([]));
    // By text, as a list with `false` (a ban) and as a map; by id, as a list.
    let paris: Vec<u64> = ok(&st, "/tokenize", json!({"content": " Paris"})).await["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    for bias in [
        json!([[" Paris", false]]),
        json!({" Paris": -100}),
        json!(paris.iter().map(|t| json!([t, -100])).collect::<Vec<_>>()),
    ] {
        let mut b = base.clone();
        b["logit_bias"] = bias.clone();
        let r = ok(&st, "/completion", b).await;
        assert!(!r["content"].as_str().unwrap().contains("Paris"), "{bias}: {}", r["content"]);
        let listed: Vec<u64> = r["generation_settings"]["logit_bias"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["token"].as_u64().unwrap())
            .collect();
        assert_eq!(listed, paris, "{bias}");
    }
    // ignore_eos lists the end-of-generation tokens at -inf (null).
    let mut b = base.clone();
    b["ignore_eos"] = json!(true);
    let r = ok(&st, "/completion", b).await;
    let eog = r["generation_settings"]["logit_bias"].as_array().unwrap().clone();
    assert!(!eog.is_empty() && eog.iter().all(|e| e["bias"].is_null()), "{eog:?}");
    let mut b = base;
    b["logit_bias"] = json!([["x"]]);
    let (s, text, _) = call(&st, "POST", "/completion", Some(b)).await;
    assert!(s == StatusCode::BAD_REQUEST && text.contains("logit_bias"), "{text}");
}
