//! Shared by the server's integration tests: the default model, loaded once per test binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use slm_engine::Model;

pub fn model_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SLM_HOME") {
        Some(h) => PathBuf::from(h).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/slm/models"),
    };
    let p = dir.join(format!("{name}.gguf"));
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

pub fn qwen() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Model::load(model_path("qwen2.5-coder-0.5b-instruct-q4_k_m")).unwrap())).clone()
}

/// The default model served as `qwen` (context 2048) with these settings; its engine too, for
/// tests that read its counters.
pub fn qwen_state(settings: slm_server::Settings) -> (slm_server::AppState, slm_engine::EngineHandle) {
    let state = slm_server::AppState::new(settings);
    let config = slm_engine::EngineConfig { max_model_len: Some(2048), ..Default::default() };
    let engine = slm_engine::EngineHandle::start(qwen(), config).unwrap();
    state.set_models(vec![slm_server::ServedModel { id: "qwen".into(), engine: engine.clone(), created: 1 }]);
    (state, engine)
}
