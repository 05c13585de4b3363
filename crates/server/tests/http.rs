//! The HTTP surface through `app().oneshot(...)` on the real default model, plus one real
//! TCP server on port 0 for SSE and client disconnects.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::qwen;
use serde_json::{json, Value};
use slm_engine::{EngineConfig, EngineHandle};
use slm_server::{app, AppState, ServedModel, Settings};
use tower::ServiceExt;

fn state_with(config: EngineConfig, settings: Settings) -> AppState {
    let state = AppState::new(settings);
    let engine = EngineHandle::start(qwen(), config).unwrap();
    state.set_models(vec![ServedModel { id: "qwen".into(), engine, created: 1 }]);
    state
}

fn state() -> AppState {
    state_with(EngineConfig { max_model_len: Some(2048), ..Default::default() }, Settings::new(vec![], 16 << 20))
}

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v, headers)
}

async fn post(state: &AppState, path: &str, body: Value) -> (StatusCode, Value) {
    let (s, v, _) = call(state, "POST", path, Some(body), &[]).await;
    (s, v)
}

fn assert_openai_error(v: &Value, param: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[tokio::test]
async fn chat_completion_has_the_openai_shape() {
    let s = state();
    let (st, v) = post(&s, "/v1/chat/completions", json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 12, "logprobs": true, "top_logprobs": 2})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "qwen");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert!(!c["message"]["content"].as_str().unwrap().is_empty());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let lp = c["logprobs"]["content"].as_array().unwrap();
    assert!(!lp.is_empty() && lp[0]["top_logprobs"].as_array().unwrap().len() == 2);
    let u = &v["usage"];
    assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[tokio::test]
async fn text_parts_n_and_seeds() {
    let s = state();
    let body = json!({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Say a word."}]}], "max_tokens": 6, "n": 2, "temperature": 1.0, "seed": 7});
    let (st, a) = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(st, StatusCode::OK, "{a}");
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    let (_, b) = post(&s, "/v1/chat/completions", body).await;
    let texts = |v: &Value| {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&a), texts(&b), "same seed, same answers");
}

#[tokio::test]
async fn completions_accept_every_prompt_form() {
    let s = state();
    let ids = qwen().tokenizer.encode("1, 2, 3,", false, false).unwrap();
    for prompt in [json!("1, 2, 3,"), json!(["1, 2, 3,", "a, b, c,"]), json!(ids), json!([ids, ids])] {
        let (st, v) = post(
            &s,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 1, "echo": true}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["object"], "text_completion");
        let c = &v["choices"][0];
        assert!(c["text"].as_str().unwrap().starts_with("1, 2, 3,"), "echo: {v}");
        assert_eq!(
            c["logprobs"]["tokens"].as_array().unwrap().len(),
            c["logprobs"]["token_logprobs"].as_array().unwrap().len()
        );
    }
    let (_, v) = post(&s, "/v1/completions", json!({"prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0})).await;
    assert!(v["choices"][0]["text"].as_str().unwrap().starts_with(" 4, 5"), "{v}");
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let s = state();
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Value, Option<&str>)> = vec![
        (json!({"messages": msgs, "temperature": "hot"}), Some("temperature")),
        (json!({"messages": msgs, "temperature": 2.5}), Some("temperature")),
        (json!({"messages": msgs, "top_p": 0}), Some("top_p")),
        (json!({"messages": msgs, "n": 9}), Some("n")),
        (json!({"messages": msgs, "max_tokens": 0}), Some("max_tokens")),
        (json!({"messages": msgs, "logprobs": true, "top_logprobs": 21}), Some("top_logprobs")),
        (json!({"messages": []}), Some("messages")),
        (json!({"messages": [{"role": "wizard", "content": "x"}]}), Some("messages[0].role")),
        (json!({"messages": msgs, "logit_bias": {"abc": 1}}), Some("logit_bias")),
    ];
    for (body, param) in cases {
        let (st, v) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} → {v}");
        assert_openai_error(&v, param);
    }
    let (st, v, _) = call(&s, "POST", "/v1/chat/completions", None, &[]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Context: both numbers in the message.
    let (st, v) = post(&s, "/v1/chat/completions", json!({"messages": msgs, "max_tokens": 5000})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("2048") && m.contains("5000"), "{m}");
    // The server still serves.
    let (st, _) = post(&s, "/v1/chat/completions", json!({"messages": msgs, "max_tokens": 2})).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn auth_body_limit_queue_and_routing_errors() {
    let s = state_with(EngineConfig::default(), Settings::new(vec!["sekret".into()], 1024));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let (st, v, _) = call(&s, "POST", "/v1/chat/completions", Some(body.clone()), &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_openai_error(&v, None);
    let (st, _, _) =
        call(&s, "POST", "/v1/chat/completions", Some(body.clone()), &[("authorization", "Bearer wrong")]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) =
        call(&s, "POST", "/v1/chat/completions", Some(body.clone()), &[("authorization", "Bearer sekret")]).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = call(&s, "GET", "/health", None, &[]).await;
    assert_eq!(st, StatusCode::OK, "health needs no key");
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(4000)}]});
    let (st, v, _) = call(&s, "POST", "/v1/chat/completions", Some(big), &[("authorization", "Bearer sekret")]).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_openai_error(&v, None);

    // A full queue: one sequence runs, one waits, the queue holds one: 429 with Retry-After.
    let s =
        state_with(EngineConfig { max_waiting: 1, max_seqs: 1, ..Default::default() }, Settings::new(vec![], 1 << 20));
    let engine = s.models().unwrap()[0].engine.clone();
    let long = || slm_engine::Request::new(vec![9707; 8], slm_engine::SamplingParams::greedy(), 1000);
    let running = engine.submit(long()).unwrap();
    let t = std::time::Instant::now();
    while engine.stats().num_running == 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = engine.submit(long()).unwrap();
    let (st, v, h) = call(&s, "POST", "/v1/chat/completions", Some(body.clone()), &[]).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(h.contains_key("retry-after"));
    drop((running, queued));

    // Loading: 503; several models: unknown name 404.
    let loading = AppState::new(Settings::new(vec![], 1 << 20));
    let (st, _, _) = call(&loading, "GET", "/health", None, &[]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let two = AppState::new(Settings::new(vec![], 1 << 20));
    let e = |id: &str| ServedModel {
        id: id.into(),
        engine: EngineHandle::start(qwen(), EngineConfig { num_kv_blocks: Some(64), ..Default::default() }).unwrap(),
        created: 1,
    };
    two.set_models(vec![e("a"), e("b")]);
    let (st, v) =
        post(&two, "/v1/chat/completions", json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]}))
            .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
    let (st, v) = post(
        &two,
        "/v1/chat/completions",
        json!({"model": "b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    )
    .await;
    assert_eq!((st, v["model"].clone()), (StatusCode::OK, json!("b")));
    let (st, v, _) = call(&two, "GET", "/v1/models", None, &[]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (st, _, _) = call(&two, "GET", "/v1/models/zzz", None, &[]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokenize_detokenize_and_metrics() {
    let s = state();
    let (st, v) = post(&s, "/tokenize", json!({"content": "<|im_start|>user\nhi<|im_end|>"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["tokens"], json!([151644, 872, 198, 6023, 151645]));
    let (_, plain) =
        post(&s, "/tokenize", json!({"content": "Hello world", "add_special": true, "parse_special": false})).await;
    assert_eq!(plain["tokens"], json!([9707, 1879]));
    let (_, d) = post(&s, "/detokenize", json!({"tokens": [9707, 1879]})).await;
    assert_eq!(d["content"], "Hello world");
    let (st, _, _) = call(&s, "GET", "/metrics", None, &[]).await;
    assert_eq!(st, StatusCode::OK);
    let req = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(app(s.clone()).oneshot(req).await.unwrap().into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "slm_http_requests_total{endpoint=\"/tokenize\",status=\"200\"} 2",
        "slm_requests_running",
        "slm_kv_cache_usage_ratio",
        "slm_prefix_cache_hit_tokens_total",
        "slm_time_to_first_token_seconds_bucket",
        "slm_inter_token_latency_seconds_count",
        "slm_generation_tokens_total",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

/// Reads one HTTP response over a raw socket, line by line, until `[DONE]` or EOF.
async fn sse_lines(addr: std::net::SocketAddr, body: Value, stop_after: Option<usize>) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let b = body.to_string();
    let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len());
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(sock).lines();
    let mut data = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        if let Some(d) = l.strip_prefix("data: ") {
            data.push(d.to_string());
            if d == "[DONE]" || stop_after == Some(data.len()) {
                break;
            }
        }
    }
    data
}

#[tokio::test]
async fn sse_streams_to_done_and_a_disconnect_frees_blocks() {
    let s = state();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(s.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let body = json!({"messages": [{"role": "user", "content": "Count from 1 to 5."}], "max_tokens": 20, "stream": true, "stream_options": {"include_usage": true}, "temperature": 0});
    let data = sse_lines(addr, body, None).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(String::from)).collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert!(finish == "stop" || finish == "length");
    // Same text as the non-streamed answer.
    let (_, v) = post(
        &s,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Count from 1 to 5."}], "max_tokens": 20, "temperature": 0}),
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), text);

    // Read two chunks of a long answer, then hang up: the engine frees the sequence's blocks.
    let engine = s.models().unwrap()[0].engine.clone();
    let body = json!({"messages": [{"role": "user", "content": "Write a long story about a robot."}], "max_tokens": 500, "stream": true});
    let got = sse_lines(addr, body, Some(2)).await;
    assert_eq!(got.len(), 2);
    let t = std::time::Instant::now();
    loop {
        let st = engine.stats();
        if st.kv_blocks_used == 0 && st.num_running == 0 && st.requests_aborted_total >= 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "blocks not freed after disconnect: {:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn schema_integers_are_bounded_so_answers_end() {
    let s = state();
    let schema =
        json!({"type": "object", "properties": {"population": {"type": "integer"}}, "required": ["population"]});
    let prompt = "Give the population of the Earth, in people, as JSON, with every digit written out.\n";
    let (st, v) = post(
        &s,
        "/v1/completions",
        json!({"prompt": prompt, "json_schema": schema, "max_tokens": 40, "temperature": 0}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(parsed["population"].as_i64().is_some_and(|p| p.unsigned_abs() < 10_000_000_000_000_000), "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{text}");
}

#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt_as_evaluation_harnesses_ask() {
    let s = state();
    let prompt = "The capital of France is Paris";
    let (status, v) =
        post(&s, "/v1/completions", json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2})).await;
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!((c["text"].as_str(), c["finish_reason"].as_str()), (Some(prompt), Some("length")));
    let lp = &c["logprobs"];
    let n = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!((lp["tokens"].as_array().unwrap().len(), v["usage"]["completion_tokens"].as_u64()), (n, Some(0)));
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(), "the first token has none: {lp}");
    assert!(lp["token_logprobs"].as_array().unwrap()[1..].iter().all(|x| x.as_f64().unwrap() <= 0.0));
    assert_eq!(lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<String>(), prompt);
    // " Paris" after "The capital of France is" is likely: among the top 2 alternatives.
    assert!(lp["top_logprobs"][n - 1].as_object().unwrap().contains_key(" Paris"), "{lp}");

    // With generation too: the prompt's entries, then the generated tokens'.
    let body = json!({"prompt": prompt, "max_tokens": 3, "echo": true, "logprobs": 1, "temperature": 0});
    let (status, g) = post(&s, "/v1/completions", body).await;
    assert_eq!(status, 200, "{g}");
    let glp = &g["choices"][0]["logprobs"];
    let generated = g["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(glp["tokens"].as_array().unwrap().len(), n + generated);
    assert_eq!(glp["token_logprobs"][1], lp["token_logprobs"][1], "the same prompt scores the same");

    // `max_tokens: 0` means something only with `echo`.
    let (status, e) = post(&s, "/v1/completions", json!({"prompt": prompt, "max_tokens": 0})).await;
    assert_eq!((status, e["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("max_tokens")));
}

#[tokio::test]
async fn speculation_is_invisible_in_answers_and_counted_in_metrics() {
    let s = state();
    let code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n";
    let ask = format!("Repeat this code exactly:\n{code}");
    let chat = |spec: bool, seed: Option<u64>| {
        let mut b = json!({"model": "qwen", "max_tokens": 40, "messages": [{"role": "user", "content": ask}],
            "speculative": spec, "logprobs": true, "top_logprobs": 2});
        match seed {
            Some(seed) => {
                b.as_object_mut().unwrap().extend([("seed".into(), json!(seed)), ("temperature".into(), json!(0.8))])
            }
            None => b["temperature"] = json!(0),
        }
        b
    };
    for seed in [None, Some(11)] {
        let (st, off) = post(&s, "/v1/chat/completions", chat(false, seed)).await;
        assert_eq!(st, StatusCode::OK, "{off}");
        let (_, on) = post(&s, "/v1/chat/completions", chat(true, seed)).await;
        // Same text and the same logprobs, bit for bit (JSON numbers print every bit).
        assert_eq!(on["choices"], off["choices"], "seed {seed:?}");
        assert_eq!(on["usage"]["completion_tokens"], off["usage"]["completion_tokens"]);
    }
    // The Messages and Responses shapes take the switch too.
    let msg =
        json!({"model": "qwen", "max_tokens": 30, "temperature": 0, "messages": [{"role": "user", "content": ask}]});
    let mut msg_off = msg.clone();
    msg_off["speculative"] = json!(false);
    let (st, a) = post(&s, "/v1/messages", msg).await;
    assert_eq!(st, StatusCode::OK, "{a}");
    let (_, b) = post(&s, "/v1/messages", msg_off).await;
    assert_eq!(a["content"], b["content"]);
    let resp = json!({"model": "qwen", "max_output_tokens": 30, "input": ask, "speculative": false, "store": false});
    let (st, r) = post(&s, "/v1/responses", resp).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let (st, bad) =
        post(&s, "/v1/chat/completions", json!({"model": "qwen", "messages": [], "speculative": "yes"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");

    // How long drafts are depends on step times the engine measures, so a loaded machine may
    // verify none at first: a few more copy-heavy requests give it the chance.
    let mut text = String::new();
    for _ in 0..6 {
        let req = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let body =
            axum::body::to_bytes(app(s.clone()).oneshot(req).await.unwrap().into_body(), usize::MAX).await.unwrap();
        text = String::from_utf8(body.to_vec()).unwrap();
        if !text.contains("slm_spec_accepted_tokens_total{model=\"qwen\"} 0\n") {
            break;
        }
        let (st, _) = post(&s, "/v1/chat/completions", chat(true, None)).await;
        assert_eq!(st, StatusCode::OK);
    }
    let value = |name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("{name}: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (drafted, accepted) = (value("slm_spec_draft_tokens_total"), value("slm_spec_accepted_tokens_total"));
    assert!(accepted > 0.0 && accepted <= drafted, "drafted {drafted}, accepted {accepted}");
    assert!((value("slm_spec_acceptance_ratio") - accepted / drafted).abs() < 1e-9);
}
