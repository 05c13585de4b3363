//! The same engine figures under the names other servers' routers and autoscalers read:
//! vLLM's (the Gateway API Inference Extension and llm-d pick a pod by
//! `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, `vllm:lora_requests_info`,
//! and read `vllm:cache_config_info`) and llama.cpp's server's (`llamacpp:requests_processing`,
//! which LLMKube's autoscaler reads). Values equal slm's own series (`metrics.rs`); labels
//! follow theirs (`model_name`), except llama.cpp's, which carry no labels, as llama-server
//! (one model) writes them: summed over the loaded models. Rendered by `GET /metrics` after
//! slm's own names.

use std::fmt::Write;

use crate::metrics::{kv_usage, render_series, Metrics, Series};
use crate::registry::Registry;
use crate::state::ServedModel;

/// Appends the compatibility series for the loaded generation models (`reg`: their entries,
/// for the adapter bounds).
pub fn render(models: &[std::sync::Arc<ServedModel>], reg: Option<&Registry>, metrics: &Metrics, out: &mut String) {
    let series: [Series; 7] = [
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
    ];
    render_series(out, "model_name", &series, models);
    render_llama_cpp(models, metrics, out);
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

/// llama-server's own names, without labels: token counts and step figures summed over the
/// models, times from the server's latency histograms (time to first token is prompt time,
/// the time between tokens is generation time, as llama.cpp splits them).
fn render_llama_cpp(models: &[std::sync::Arc<ServedModel>], metrics: &Metrics, out: &mut String) {
    let snaps: Vec<_> = models.iter().map(|m| m.engine.stats()).collect();
    let sum = |f: fn(&slm_engine::StatsSnapshot) -> u64| snaps.iter().map(f).sum::<u64>() as f64;
    let prompt_cached = sum(|s| s.prefix_cache_hit_tokens_total);
    let prompt = sum(|s| s.prompt_tokens_total) - prompt_cached;
    let predicted = sum(|s| s.generated_tokens_total);
    let (prompt_s, predicted_s) =
        (metrics.time_to_first_token.sum_seconds(), metrics.inter_token_latency.sum_seconds());
    let steps = sum(|s| s.steps_total);
    let rate = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
    let rows: [(&str, &str, &str, f64); 15] = [
        ("prompt_tokens_total", "counter", "Prompt tokens processed (not served from the cache).", prompt),
        ("prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache.", prompt_cached),
        ("prompt_seconds_total", "counter", "Prompt processing time (time to first token).", prompt_s),
        ("tokens_predicted_total", "counter", "Tokens generated.", predicted),
        ("tokens_predicted_seconds_total", "counter", "Generation time (between tokens).", predicted_s),
        ("n_decode_total", "counter", "Engine steps (batched forward passes).", steps),
        (
            "n_tokens_max",
            "counter",
            "The most rows one step has run.",
            snaps.iter().map(|s| s.step_tokens_max).max().unwrap_or(0) as f64,
        ),
        (
            "spec_decode_num_draft_tokens_total",
            "counter",
            "Drafted tokens verified.",
            sum(|s| s.spec_draft_tokens_total),
        ),
        (
            "spec_decode_num_accepted_tokens_total",
            "counter",
            "Drafted tokens accepted.",
            sum(|s| s.spec_accepted_tokens_total),
        ),
        ("spec_decode_num_drafts_total", "counter", "Drafts verified.", sum(|s| s.spec_drafts_total)),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", rate(prompt, prompt_s)),
        (
            "predicted_tokens_seconds",
            "gauge",
            "Average generation throughput in tokens/s.",
            rate(predicted, predicted_s),
        ),
        ("requests_processing", "gauge", "Requests processing (= slm_requests_running).", sum(|s| s.num_running)),
        ("requests_deferred", "gauge", "Requests deferred (= slm_requests_waiting).", sum(|s| s.num_waiting)),
        ("n_busy_slots_per_decode", "gauge", "Average sequences per step.", rate(sum(|s| s.step_seqs_total), steps)),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(out, "# HELP llamacpp:{name} {help}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {v}");
    }
}
