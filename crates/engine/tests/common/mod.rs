//! Shared helpers for the tests that run the real models: where the GGUFs and llama.cpp's
//! reference outputs live, and a once-per-process model cache.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use slm_engine::Model;

pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
/// The 1.5B target of speculative decoding (fetched with `scripts/fetch-models.sh qwen1.5b`).
pub const QWEN_1_5B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m";
/// Llama architecture, Q4_1 weights and a Q8_0 embedding table tied to the output.
pub const SMOLLM2: &str = "smollm2-135m-instruct-q4_1";

pub fn models_dir() -> PathBuf {
    match std::env::var_os("SLM_HOME") {
        Some(h) => PathBuf::from(h).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/slm/models"),
    }
}

pub fn model_path(name: &str) -> PathBuf {
    let p = models_dir().join(format!("{name}.gguf"));
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

/// llama.cpp's outputs on a model: the shared reference, or for a model it does not cover the
/// fixture `scripts/record-goldens.py` recorded in the same format.
pub fn reference(name: &str) -> Value {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = here.join("../../../shared/reference").join(format!("{name}.json"));
    let p = if shared.exists() { shared } else { here.join("tests/fixtures").join(format!("{name}.json")) };
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

/// Each model is loaded once per test binary and shared.
pub fn model(name: &str) -> Arc<Model> {
    type Loaded = Vec<(String, Arc<Model>)>;
    static CACHE: OnceLock<Mutex<Loaded>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut c = cache.lock().unwrap();
    if let Some((_, m)) = c.iter().find(|(n, _)| n == name) {
        return m.clone();
    }
    let m = Arc::new(Model::load(model_path(name)).expect("load model"));
    c.push((name.to_string(), m.clone()));
    m
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Waits (up to 10 s) for a condition the engine thread makes true after it sends events.
#[allow(dead_code)]
pub fn wait_for(cond: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed().as_secs() < 10, "condition not reached in 10 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
