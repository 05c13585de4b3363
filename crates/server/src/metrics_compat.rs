//! The same engine figures under the names other servers' routers and autoscalers read:
//! vLLM's (the Gateway API Inference Extension and llm-d pick a pod by
//! `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, `vllm:lora_requests_info`,
//! and read `vllm:cache_config_info`) and llama.cpp's server's (`llamacpp:requests_processing`,
//! which LLMKube's autoscaler reads). Values equal slm's own series (`metrics.rs`); labels
//! follow theirs (`model_name`). Rendered by `GET /metrics` after slm's own names.

use std::fmt::Write;

use crate::metrics::{kv_usage, render_series, Series};
use crate::registry::Registry;
use crate::state::ServedModel;

/// Appends the compatibility series for the loaded generation models (`reg`: their entries,
/// for the adapter bounds).
pub fn render(models: &[std::sync::Arc<ServedModel>], reg: Option<&Registry>, out: &mut String) {
    let series: [Series; 9] = [
        ("vllm:num_requests_running", "gauge", "Requests running (= slm_requests_running).", |s| s.num_running as f64),
        ("vllm:num_requests_waiting", "gauge", "Requests waiting (= slm_requests_waiting).", |s| s.num_waiting as f64),
        ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage, 0 to 1 (= slm_kv_cache_usage_ratio).", kv_usage),
        ("vllm:gpu_cache_usage_perc", "gauge", "Older name of vllm:kv_cache_usage_perc.", kv_usage),
        ("vllm:prompt_tokens_total", "counter", "Prompt tokens (= slm_prompt_tokens_total).", |s| {
            s.prompt_tokens_total as f64
        }),
        ("vllm:generation_tokens_total", "counter", "Generated tokens (= slm_generation_tokens_total).", |s| {
            s.generated_tokens_total as f64
        }),
        ("vllm:num_preemptions_total", "counter", "Preemptions (= slm_preemptions_total).", |s| {
            s.preemptions_total as f64
        }),
        ("llamacpp:requests_processing", "gauge", "Requests processing (= slm_requests_running).", |s| {
            s.num_running as f64
        }),
        ("llamacpp:requests_deferred", "gauge", "Requests deferred (= slm_requests_waiting).", |s| {
            s.num_waiting as f64
        }),
    ];
    render_series(out, "model_name", &series, models);
    // vLLM's LoRA gauge: the adapters (comma-separated) of running and waiting requests in
    // labels, the value the time of the reading (the Inference Extension reads the labels of
    // the newest sample).
    let _ = writeln!(
        out,
        "# HELP vllm:lora_requests_info LoRA adapters of running and waiting requests.\n# TYPE vllm:lora_requests_info gauge"
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    for m in models {
        let id = &m.id;
        let usage = m.engine.lora_usage();
        let max_lora = reg.and_then(|r| r.find(id)).map_or(0, |e| e.adapters.limits().max_loras);
        let _ = writeln!(
            out,
            "vllm:lora_requests_info{{model_name=\"{id}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\",max_lora=\"{max_lora}\"}} {now:.3}",
            usage.running.join(","),
            usage.waiting.join(","),
        );
    }
    let _ = writeln!(out, "# HELP vllm:cache_config_info KV-cache configuration.\n# TYPE vllm:cache_config_info gauge");
    for m in models {
        let c = m.engine.config();
        let s = m.engine.stats();
        let _ = writeln!(
            out,
            "vllm:cache_config_info{{model_name=\"{}\",block_size=\"{}\",num_gpu_blocks=\"{}\",cache_dtype=\"{}\",enable_prefix_caching=\"{}\"}} 1",
            m.id,
            c.block_size,
            s.kv_blocks_total,
            format!("{:?}", c.kv_dtype).to_lowercase(),
            if c.prefix_caching { "True" } else { "False" },
        );
    }
}
