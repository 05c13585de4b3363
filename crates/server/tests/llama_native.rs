//! llama.cpp's native API on the real Qwen2.5-Coder model: `/infill` (the FIM layout of
//! llama.cpp's server, repo-level context, llama.cpp's own test case), `/completion` (text,
//! mixed and token prompts, `n_probs`, `return_tokens`, streaming without `[DONE]`,
//! `n_predict: 0`), OpenAI's `suffix` on `/v1/completions` (the same prompt as `/infill`, so
//! the same tokens), the routes without `/v1`, and the errors llama.cpp's tests expect.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use slm_server::{app, AppState, ServedModel, Settings};
use tower::ServiceExt;

fn state() -> AppState {
    let start = |model: Arc<slm_engine::Model>, len: usize| {
        let config = slm_engine::EngineConfig { max_model_len: Some(len), ..Default::default() };
        slm_engine::EngineHandle::start(model, config).unwrap()
    };
    // Gemma 3 has no FIM tokens: infill on it is refused.
    let gemma = Arc::new(slm_engine::Model::load(common::model_path("gemma-3-270m-q4_k_m")).unwrap());
    // llama-server --seed 7 with a small batch: every unseeded request samples alike, and a
    // long prompt is evaluated in several chunks.
    let seeded = slm_engine::EngineConfig {
        max_model_len: Some(1024),
        default_seed: Some(7),
        max_batched_tokens: 64,
        ..Default::default()
    };
    let state = AppState::new(Settings::new(vec![], 16 << 20));
    state.set_models(vec![
        ServedModel { id: "qwen".into(), engine: start(common::qwen(), 2048), created: 1 },
        ServedModel { id: "gemma".into(), engine: start(gemma, 1024), created: 1 },
        ServedModel {
            id: "seeded".into(),
            engine: slm_engine::EngineHandle::start(common::qwen(), seeded).unwrap(),
            created: 1,
        },
    ]);
    state
}

async fn post(state: &AppState, path: &str, body: Value) -> (StatusCode, String) {
    let req =
        Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn ok(state: &AppState, path: &str, body: Value) -> Value {
    let (status, text) = post(state, path, body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn llama_h_case() -> Value {
    // llama.cpp's tools/server/tests/unit/test_infill.py, `test_with_qwen_model`.
    json!({
        "model": "qwen",
        "input_prefix": "#include <cstdio>\n#include \"llama.h\"\n\nint main() {\n",
        "prompt": "    int n_threads = llama_",
        "input_suffix": "}\n",
        "input_extra": [{"filename": "llama.h", "text": "LLAMA_API int32_t llama_n_threads();\n"}],
        "temperature": 0,
        "n_predict": 24,
    })
}

#[tokio::test]
async fn infill_lays_out_fim_like_llama_cpp_and_completes_the_function() {
    let s = state();
    let r = ok(&s, "/infill", llama_h_case()).await;
    // llama.cpp's layout: repo name, each context file, the current file, then PRE prefix
    // prompt SUF suffix MID.
    assert_eq!(
        r["prompt"],
        "<|repo_name|>myproject\n<|file_sep|>llama.h\nLLAMA_API int32_t llama_n_threads();\n<|file_sep|>filename\n\
         <|fim_prefix|>#include <cstdio>\n#include \"llama.h\"\n\nint main() {\n    int n_threads = llama_\
         <|fim_suffix|>}\n<|fim_middle|>"
    );
    // What llama.cpp's test expects of Qwen2.5-Coder (there the 1.5B; the 0.5B agrees).
    let content = r["content"].as_str().unwrap();
    assert!(content.starts_with("n_threads();\n    printf(\"Number of threads: %d\\n\", n_threads);\n"), "{content}");
    assert_eq!(r["stop"], true);
    assert_eq!(r["stop_type"], "limit");
    assert_eq!(r["tokens_predicted"], 24);
    assert_eq!(r["tokens"], json!([]));
    assert_eq!(r["timings"]["predicted_n"], 24);
    assert_eq!(r["generation_settings"]["n_predict"], 24);
}

#[tokio::test]
async fn openai_suffix_is_the_same_fill_in_the_middle_prompt() {
    let s = state();
    let (prefix, suffix) = ("def fib(n):\n    ", "\n    return fib(n - 1) + fib(n - 2)\n");
    let infill = ok(
        &s,
        "/infill",
        json!({"model": "qwen", "input_prefix": prefix, "input_suffix": suffix, "temperature": 0, "n_predict": 20}),
    )
    .await;
    let openai = ok(
        &s,
        "/v1/completions",
        json!({"model": "qwen", "prompt": prefix, "suffix": suffix, "temperature": 0, "max_tokens": 20}),
    )
    .await;
    assert_eq!(openai["choices"][0]["text"], infill["content"]);
    assert_eq!(openai["usage"]["prompt_tokens"], infill["tokens_evaluated"]);
    assert!(infill["content"].as_str().unwrap().contains("if n"), "{}", infill["content"]);
    // Token prompts cannot take a suffix; a model without FIM cannot either.
    let (status, text) = post(&s, "/v1/completions", json!({"model": "qwen", "prompt": [1, 2], "suffix": "x"})).await;
    assert!(status == StatusCode::BAD_REQUEST && text.contains("\"param\":\"suffix\""), "{text}");
    let (status, text) = post(&s, "/v1/completions", json!({"model": "gemma", "prompt": "a", "suffix": "x"})).await;
    assert!(status == StatusCode::BAD_REQUEST && text.contains("\"param\":\"suffix\""), "{text}");
}

#[tokio::test]
async fn completion_answers_in_llama_cpp_shape() {
    let s = state();
    let body = json!({"model": "qwen", "prompt": "def add(a, b):", "n_predict": 5, "temperature": 0, "n_probs": 3, "return_tokens": true});
    let r = ok(&s, "/completion", body).await;
    let probs = r["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 5);
    assert!(probs.iter().all(|p| p["top_logprobs"].as_array().unwrap().len() == 3 && p["bytes"].is_array()));
    let tokens: Vec<u64> = r["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(tokens, probs.iter().map(|p| p["id"].as_u64().unwrap()).collect::<Vec<_>>());
    assert_eq!(r["tokens_evaluated"], 6);
    assert_eq!(r["has_new_line"], r["content"].as_str().unwrap().contains('\n'));

    // A mixed prompt (token ids and text) is one prompt: the same tokens, the same answer.
    let ids: Value = ok(&s, "/tokenize", json!({"model": "qwen", "content": "def add(a, b):"})).await["tokens"].clone();
    // `def` is a word of its own for the pre-tokenizer, so the text after it tokenizes alike.
    let mixed = json!({"model": "qwen", "prompt": [ids[0], " add(a, b):"], "n_predict": 5, "temperature": 0});
    let by_ids = json!({"model": "qwen", "prompt": ids, "n_predict": 5, "temperature": 0});
    assert_eq!(ok(&s, "/completion", by_ids).await["content"], r["content"]);
    assert_eq!(ok(&s, "/completion", mixed).await["content"], r["content"]);

    // A stop word ends it with stop_type "word".
    let w = ok(
        &s,
        "/completion",
        json!({"model": "qwen", "prompt": "1, 2, 3,", "n_predict": 20, "temperature": 0, "stop": [" 5"]}),
    )
    .await;
    assert_eq!((w["stop_type"].as_str(), w["stopping_word"].as_str()), (Some("word"), Some(" 5")));
    assert_eq!(w["content"], " 4,");

    // `n_predict: 0` evaluates (and caches) the prompt and answers nothing.
    let warm =
        ok(&s, "/infill", json!({"model": "qwen", "input_prefix": "x = ", "input_suffix": "", "n_predict": 0})).await;
    assert_eq!((warm["content"].as_str(), warm["tokens_predicted"].as_u64()), (Some(""), Some(0)));
}

#[tokio::test]
async fn a_native_stream_ends_with_the_totals_and_no_done() {
    let s = state();
    let body = json!({"model": "qwen", "prompt": "def add(a, b):", "n_predict": 6, "temperature": 0, "stream": true});
    let (status, text) = post(&s, "/completion", body).await;
    assert_eq!(status, StatusCode::OK);
    let chunks: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(!text.contains("[DONE]"));
    let last = chunks.last().unwrap();
    assert!(chunks.iter().all(|c| c["stop"].is_boolean()));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["stop"] == false));
    assert_eq!((last["stop"].as_bool(), last["stop_type"].as_str()), (Some(true), Some("limit")));
    assert_eq!(last["timings"]["predicted_n"], 6);
    let streamed: String = chunks.iter().map(|c| c["content"].as_str().unwrap()).collect();
    let whole =
        ok(&s, "/completion", json!({"model": "qwen", "prompt": "def add(a, b):", "n_predict": 6, "temperature": 0}))
            .await;
    assert_eq!(streamed, whole["content"].as_str().unwrap());
}

#[tokio::test]
async fn bad_infill_requests_get_the_errors_llama_cpp_tests_expect() {
    let s = state();
    // test_infill.py's `test_invalid_input_extra_req` cases, each a 400.
    for extra in [
        json!({}),
        json!({"filename": "ok"}),
        json!({"filename": 123}),
        json!({"filename": 123, "text": "abc"}),
        json!({"filename": 123, "text": 456}),
    ] {
        let body = json!({"model": "qwen", "input_prefix": "a", "input_suffix": "b", "input_extra": [extra]});
        let (status, text) = post(&s, "/infill", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {text}");
        assert!(text.contains("\"error\""));
    }
    for missing in ["input_prefix", "input_suffix"] {
        let mut body = json!({"model": "qwen", "input_prefix": "a", "input_suffix": "b"});
        body.as_object_mut().unwrap().remove(missing);
        let (status, text) = post(&s, "/infill", body).await;
        assert!(status == StatusCode::BAD_REQUEST && text.contains(&format!("\"param\":\"{missing}\"")), "{text}");
    }
    let (status, text) = post(&s, "/infill", json!({"model": "gemma", "input_prefix": "a", "input_suffix": ""})).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{text}");
    assert!(text.contains("not_supported_error"), "{text}");
    let (status, text) = post(&s, "/completion", json!({"model": "qwen", "n_predict": 3})).await;
    assert!(status == StatusCode::BAD_REQUEST && text.contains("\"param\":\"prompt\""), "{text}");
}

#[tokio::test]
async fn openai_routes_answer_without_the_v1_prefix() {
    let s = state();
    let req = Request::get("/models").body(Body::empty()).unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let chat = json!({"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    assert_eq!(ok(&s, "/chat/completions", chat).await["object"], "chat.completion");
    assert_eq!(
        ok(&s, "/completions", json!({"model": "qwen", "prompt": "a", "max_tokens": 2})).await["object"],
        "text_completion"
    );
}

#[tokio::test]
async fn props_apply_template_and_token_pieces() {
    let s = state();
    let req = Request::get("/props?model=qwen").body(Body::empty()).unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let props: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(props["default_generation_settings"]["n_ctx"], 2048);
    assert_eq!((props["infill"].as_bool(), props["model_alias"].as_str()), (Some(true), Some("qwen")));
    assert!(props["model_path"].as_str().unwrap().ends_with("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "{props}");
    assert_eq!(props["default_generation_settings"]["params"]["top_k"], 40);
    assert!(props["chat_template"].as_str().unwrap().contains("<|im_start|>"));

    // The template's prompt is the one chat generates from: the same number of tokens.
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]);
    let prompt = ok(&s, "/apply-template", json!({"model": "qwen", "messages": messages})).await["prompt"].clone();
    assert!(prompt.as_str().unwrap().ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{prompt}");
    let ids =
        ok(&s, "/tokenize", json!({"model": "qwen", "content": prompt})).await["tokens"].as_array().unwrap().len();
    let chat = ok(&s, "/v1/chat/completions", json!({"model": "qwen", "messages": messages, "max_tokens": 1})).await;
    assert_eq!(chat["usage"]["prompt_tokens"], ids);

    let pieces = ok(&s, "/tokenize", json!({"model": "qwen", "content": "fn main() {}", "with_pieces": true})).await;
    let text: String = pieces["tokens"].as_array().unwrap().iter().map(|t| t["piece"].as_str().unwrap()).collect();
    assert_eq!(text, "fn main() {}");
    assert!(pieces["tokens"][0]["id"].is_u64());
}

#[tokio::test]
async fn gbnf_and_json_schema_hold_chat_and_completion_output() {
    let s = state();
    let yes_no = "root ::= (\"yes\" | \"no\") \".\"";
    let chat = json!({"model": "qwen", "messages": [{"role": "user", "content": "Is water wet?"}], "grammar": yes_no, "max_tokens": 8});
    let r = ok(&s, "/v1/chat/completions", chat).await;
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text == "yes." || text == "no.", "{text}");
    let r = ok(
        &s,
        "/completion",
        json!({"model": "qwen", "prompt": "Is water wet? Answer:", "grammar": yes_no, "n_predict": 8}),
    )
    .await;
    assert!(["yes.", "no."].contains(&r["content"].as_str().unwrap()), "{r}");
    // llama.cpp's `json_schema` on chat.
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false});
    let chat = json!({"model": "qwen", "messages": [{"role": "user", "content": "Pick a number."}], "json_schema": schema, "max_tokens": 20});
    let r = ok(&s, "/v1/chat/completions", chat).await;
    let v: Value = serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(v["n"].is_i64(), "{v}");
    // A broken GBNF grammar is a 400 naming `grammar`, with the line.
    let chat = json!({"model": "qwen", "messages": [{"role": "user", "content": "x"}], "grammar": "root ::= missing"});
    let (status, text) = post(&s, "/v1/chat/completions", chat).await;
    assert!(
        status == StatusCode::BAD_REQUEST && text.contains("\"param\":\"grammar\"") && text.contains("never defined"),
        "{text}"
    );
}

fn sse_chunks(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn several_prompts_answer_as_a_list_and_completions_without_a_model_is_native() {
    let s = state();
    let one = |p: &str| json!({"model": "qwen", "prompt": p, "n_predict": 4, "temperature": 0});
    let a = ok(&s, "/completion", one("def add(a, b):")).await;
    let b = ok(&s, "/completion", one("1, 2, 3,")).await;
    let both = ok(
        &s,
        "/completion",
        json!({"model": "qwen", "prompt": ["def add(a, b):", "1, 2, 3,"], "n_predict": 4, "temperature": 0}),
    )
    .await;
    let both = both.as_array().expect("several prompts: a list of answers");
    assert_eq!((both[0]["index"].as_u64(), both[1]["index"].as_u64()), (Some(0), Some(1)));
    assert_eq!((&both[0]["content"], &both[1]["content"]), (&a["content"], &b["content"]));

    // Streamed, each chunk names its prompt; the texts are the same.
    let (status, text) = post(&s, "/completion", json!({"model": "qwen", "prompt": ["def add(a, b):", "1, 2, 3,"], "n_predict": 4, "temperature": 0, "stream": true})).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&text);
    for (i, want) in [&a, &b].into_iter().enumerate() {
        let got: String = chunks.iter().filter(|c| c["index"] == i).map(|c| c["content"].as_str().unwrap()).collect();
        assert_eq!(got, want["content"].as_str().unwrap());
    }
    let (status, text) = post(&s, "/completion", json!({"model": "qwen", "prompt": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    // `/completions` is llama-server's native route; a body naming a model is OpenAI's. (With
    // one model served, a request needs no `model`.)
    let s = AppState::new(Settings::new(vec![], 16 << 20));
    let config = slm_engine::EngineConfig { max_model_len: Some(1024), kv_cache_mb: 64, ..Default::default() };
    let engine = slm_engine::EngineHandle::start(common::qwen(), config).unwrap();
    s.set_models(vec![ServedModel { id: "qwen".into(), engine, created: 1 }]);
    let native = ok(&s, "/completions", json!({"prompt": "def add(a, b):", "n_predict": 4, "temperature": 0})).await;
    assert_eq!(native["content"], a["content"]);
    let openai =
        ok(&s, "/completions", json!({"model": "qwen", "prompt": "def add(a, b):", "max_tokens": 4, "temperature": 0}))
            .await;
    assert_eq!(openai["choices"][0]["text"], a["content"]);
}

#[tokio::test]
async fn post_sampling_probs_are_of_the_distribution_drawn_from() {
    let s = state();
    let body = |t: f64| json!({"model": "qwen", "prompt": "def add(a, b):", "n_predict": 3, "temperature": t, "top_k": 4, "n_probs": 10, "post_sampling_probs": true, "seed": 3});
    let greedy = ok(&s, "/completion", body(0.0)).await;
    for p in greedy["completion_probabilities"].as_array().unwrap() {
        assert!(p.get("logprob").is_none() && p.get("top_logprobs").is_none(), "{p}");
        assert_eq!(p["prob"], 1.0);
        assert_eq!(p["top_probs"].as_array().unwrap().len(), 1);
    }
    let sampled = ok(&s, "/completion", body(1.0)).await;
    for p in sampled["completion_probabilities"].as_array().unwrap() {
        let top = p["top_probs"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= 4, "top-k 4 leaves at most 4: {p}");
        let sum: f64 = top.iter().map(|t| t["prob"].as_f64().unwrap()).sum();
        assert!(sum <= 1.0 + 1e-4 && top.iter().all(|t| t["prob"].as_f64().unwrap() > 0.0), "{p}");
        assert!(top.iter().any(|t| t["id"] == p["id"] && t["prob"] == p["prob"]), "the drawn token is listed: {p}");
    }
    // The same draw as without them: reporting changes nothing sampled.
    let mut plain = body(1.0);
    plain["post_sampling_probs"] = json!(false);
    assert_eq!(ok(&s, "/completion", plain).await["content"], sampled["content"]);
}

#[tokio::test]
async fn a_server_seed_makes_unseeded_sampling_reproducible() {
    let s = state();
    let body = json!({"model": "seeded", "prompt": "Once upon a time", "n_predict": 12, "temperature": 1.0});
    let first = ok(&s, "/completion", body.clone()).await;
    assert_eq!(ok(&s, "/completion", body.clone()).await["content"], first["content"]);
    let mut seeded = body;
    seeded["seed"] = json!(7);
    assert_eq!(ok(&s, "/completion", seeded).await["content"], first["content"], "the server's seed is the request's");
    let resp = app(s.clone()).oneshot(Request::get("/props?model=seeded").body(Body::empty()).unwrap()).await.unwrap();
    let props: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(props["default_generation_settings"]["params"]["seed"], 7);
}

#[tokio::test]
async fn return_progress_reports_each_prompt_chunk_before_the_first_token() {
    let s = state();
    let prompt = "This is a test. ".repeat(40);
    let check = |chunks: &[Value], want_cached: bool| {
        let progress: Vec<&Value> = chunks.iter().filter_map(|c| c.get("prompt_progress")).collect();
        // One report at admission, then one per chunk of at most 64 tokens (the step's
        // budget). Cached, all but the last block comes from the cache: admission and one
        // chunk, as llama.cpp's test_return_progress counts.
        let (total, cache) = (progress[0]["total"].as_u64().unwrap(), progress[0]["cache"].as_u64().unwrap());
        assert_eq!(progress.len() as u64, 1 + (total - cache).div_ceil(64), "{progress:?}");
        assert!(want_cached || progress.len() >= 4, "~200 tokens in chunks of 64: {progress:?}");
        assert!(!want_cached || progress.len() == 2, "{progress:?}");
        assert_eq!(progress[0]["cache"], progress[0]["processed"], "the first report is before any evaluation");
        assert_eq!(progress[0]["cache"].as_u64().unwrap() > 0, want_cached);
        for w in progress.windows(2) {
            assert_eq!((&w[0]["total"], &w[0]["cache"]), (&w[1]["total"], &w[1]["cache"]));
            assert!(w[1]["processed"].as_u64() > w[0]["processed"].as_u64());
        }
        let last = progress.last().unwrap();
        assert_eq!(last["processed"], last["total"]);
        // Every report comes before the first generated text.
        let first_text = chunks.iter().position(|c| c.get("prompt_progress").is_none()).unwrap();
        assert!(chunks[first_text..].iter().all(|c| c.get("prompt_progress").is_none()));
    };
    let native = json!({"model": "seeded", "prompt": prompt, "n_predict": 3, "temperature": 0, "stream": true, "return_progress": true});
    let (_, text) = post(&s, "/completion", native.clone()).await;
    check(&sse_chunks(&text), false);
    // Again: the prefix cache serves most of it, and the first report says so.
    let (_, text) = post(&s, "/completion", native).await;
    check(&sse_chunks(&text), true);
    let chat = json!({"model": "seeded", "messages": [{"role": "user", "content": "Count the words: ".to_string() + &prompt}], "max_tokens": 3, "stream": true, "return_progress": true});
    let (status, text) = post(&s, "/v1/chat/completions", chat).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let chunks = sse_chunks(&text);
    let with_progress: Vec<&Value> = chunks.iter().filter(|c| c.get("prompt_progress").is_some()).collect();
    assert!(with_progress.len() >= 3, "{text}");
    assert!(with_progress
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["choices"][0]["delta"]["role"] == "assistant"));
    // With timings_per_token every chunk has timings; the first report's are all zero, and
    // the prompt's time never goes back (llama.cpp's test_metrics_timings_on_prompt_progress).
    let timed = json!({"model": "seeded", "prompt": format!("Again: {prompt}"), "n_predict": 3, "temperature": 0, "stream": true, "return_progress": true, "timings_per_token": true});
    let (_, text) = post(&s, "/completion", timed).await;
    let chunks = sse_chunks(&text);
    assert!(chunks.iter().all(|c| c["timings"]["prompt_per_second"].is_number()), "{text}");
    let progress: Vec<&Value> = chunks.iter().filter(|c| c.get("prompt_progress").is_some()).collect();
    let t0 = &progress[0]["timings"];
    assert_eq!(
        (t0["prompt_n"].as_u64(), t0["prompt_ms"].as_f64(), t0["predicted_n"].as_u64()),
        (Some(0), Some(0.0), Some(0))
    );
    let prompt_ms: Vec<f64> = chunks.iter().map(|c| c["timings"]["prompt_ms"].as_f64().unwrap()).collect();
    assert!(prompt_ms.windows(2).all(|w| w[1] >= w[0]) && *prompt_ms.last().unwrap() > 0.0, "{prompt_ms:?}");
    let last = chunks.last().unwrap();
    assert_eq!(last["timings"]["predicted_n"], 3);
    // Chat: the usage chunk carries them too; the first chunk has none.
    let chat = json!({"model": "seeded", "messages": [{"role": "user", "content": "test"}], "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}, "timings_per_token": true});
    let (_, text) = post(&s, "/v1/chat/completions", chat).await;
    let chunks = sse_chunks(&text);
    assert!(chunks[0].get("timings").is_none(), "{text}");
    let usage = chunks.iter().find(|c| c["choices"].as_array().is_some_and(|a| a.is_empty())).unwrap();
    assert!(
        usage["timings"]["predicted_n"].as_u64().unwrap() <= 4 && usage["timings"]["prompt_per_second"].is_number()
    );
    // Responses (llama.cpp's test_responses_stream_with_llama_telemetry): progress as more
    // `response.in_progress` events, timings on the deltas and on `response.completed`.
    let resp = json!({"model": "seeded", "input": format!("Once more: {prompt}"), "max_output_tokens": 4, "stream": true, "return_progress": true, "timings_per_token": true});
    let (status, text) = post(&s, "/v1/responses", resp).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let events = sse_chunks(&text);
    let progress: Vec<&Value> = events.iter().filter(|e| e.get("prompt_progress").is_some()).collect();
    assert!(progress.len() >= 3 && progress.iter().all(|e| e["type"] == "response.in_progress"), "{text}");
    let last = &progress.last().unwrap()["prompt_progress"];
    assert_eq!(last["processed"], last["total"]);
    assert!(events
        .iter()
        .any(|e| e["type"] == "response.output_text.delta" && e["timings"]["predicted_per_second"].is_number()));
    // Cut at max_output_tokens: `response.incomplete`, OpenAI's end for that.
    let done = events.iter().find(|e| e["type"] == "response.incomplete" || e["type"] == "response.completed").unwrap();
    assert!(done["timings"]["prompt_per_second"].is_number() && done["response"]["usage"].is_object());
    let (_, text) =
        post(&s, "/v1/responses", json!({"model": "seeded", "input": "Hi", "max_output_tokens": 2, "stream": true}))
            .await;
    assert!(!text.contains("prompt_progress") && !text.contains("\"timings\""), "{text}");
    // Not asked, or not streamed: no progress.
    let (_, text) =
        post(&s, "/completion", json!({"model": "seeded", "prompt": prompt, "n_predict": 2, "stream": true})).await;
    assert!(!text.contains("prompt_progress"));
    let whole =
        ok(&s, "/completion", json!({"model": "seeded", "prompt": prompt, "n_predict": 2, "return_progress": true}))
            .await;
    assert!(whole.get("prompt_progress").is_none());
}
