//! Prometheus metrics: HTTP requests by endpoint and status, time-to-first-token and inter-
//! token latency histograms, and each engine's counters, rendered as text for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::registry::Registry;
use crate::state::ServedModel;

const TTFT_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BUCKETS: [f64; 12] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Seconds observed in all.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Relaxed) as f64 / 1e6
    }

    pub fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {n}\n{name}_sum {}\n{name}_count {n}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            time_to_first_token: Histogram::new(&TTFT_BUCKETS),
            inter_token_latency: Histogram::new(&ITL_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        *self.requests.lock().unwrap().entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn render(&self, models: &[std::sync::Arc<ServedModel>]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP slm_http_requests_total HTTP requests by endpoint and status.\n# TYPE slm_http_requests_total counter");
        for ((ep, st), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(out, "slm_http_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}");
        }
        self.time_to_first_token.render(
            "slm_time_to_first_token_seconds",
            "Time from request to its first generated token.",
            &mut out,
        );
        self.inter_token_latency.render(
            "slm_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
            &mut out,
        );
        let series: [Series; 16] = [
            ("slm_requests_running", "gauge", "Sequences running in the engine.", |s| s.num_running as f64),
            ("slm_requests_waiting", "gauge", "Sequences waiting for admission.", |s| s.num_waiting as f64),
            ("slm_kv_cache_blocks_used", "gauge", "KV-cache blocks in use.", |s| s.kv_blocks_used as f64),
            ("slm_kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.", |s| s.kv_blocks_total as f64),
            ("slm_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use.", kv_usage),
            ("slm_prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.", |s| {
                s.prefix_cache_hit_tokens_total as f64
            }),
            ("slm_prompt_tokens_total", "counter", "Prompt tokens received.", |s| s.prompt_tokens_total as f64),
            ("slm_generation_tokens_total", "counter", "Tokens generated.", |s| s.generated_tokens_total as f64),
            ("slm_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", |s| {
                s.preemptions_total as f64
            }),
            ("slm_requests_aborted_total", "counter", "Requests aborted (client gone).", |s| {
                s.requests_aborted_total as f64
            }),
            ("slm_spec_draft_tokens_total", "counter", "Drafted tokens verified (speculative decoding).", |s| {
                s.spec_draft_tokens_total as f64
            }),
            ("slm_spec_accepted_tokens_total", "counter", "Drafted tokens accepted (speculative decoding).", |s| {
                s.spec_accepted_tokens_total as f64
            }),
            (
                "slm_spec_acceptance_ratio",
                "gauge",
                "Accepted over drafted tokens since start (0 before any draft).",
                |s| s.spec_accepted_tokens_total as f64 / s.spec_draft_tokens_total.max(1) as f64,
            ),
            (
                "slm_spec_model_draft_tokens_total",
                "counter",
                "Of the drafted tokens, those the draft model drafted (the rest: prompt lookup).",
                |s| s.spec_model_draft_tokens_total as f64,
            ),
            (
                "slm_spec_model_accepted_tokens_total",
                "counter",
                "Of the accepted tokens, those the draft model drafted.",
                |s| s.spec_model_accepted_tokens_total as f64,
            ),
            ("slm_draft_kv_cache_blocks_used", "gauge", "KV blocks the draft model's own cache holds.", |s| {
                s.draft_kv_blocks_used as f64
            }),
        ];
        render_series(&mut out, "model", &series, models);
        out
    }
}

/// One series of an engine figure: name, Prometheus type, help text, and how to read it.
pub(crate) type Series = (&'static str, &'static str, &'static str, fn(&slm_engine::StatsSnapshot) -> f64);

/// Renders `series` for every model, the model's id under the label `label`.
pub(crate) fn render_series(out: &mut String, label: &str, series: &[Series], models: &[std::sync::Arc<ServedModel>]) {
    let snaps: Vec<_> = models.iter().map(|m| (m.id.as_str(), m.engine.stats())).collect();
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, s) in &snaps {
            let _ = writeln!(out, "{name}{{{label}=\"{id}\"}} {}", get(s));
        }
    }
}

/// Fraction of an engine's KV-cache blocks in use.
pub(crate) fn kv_usage(s: &slm_engine::StatsSnapshot) -> f64 {
    s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64
}

/// The registry's gauges and counters: models loaded, loads, unloads by reason, load time.
pub fn render_registry(reg: &Registry, out: &mut String) {
    let c = &reg.counters;
    let _ = writeln!(
        out,
        "# HELP slm_models_loaded Models loaded now.\n# TYPE slm_models_loaded gauge\nslm_models_loaded {}",
        reg.num_loaded()
    );
    let _ = writeln!(
        out,
        "# HELP slm_model_loads_total Models loaded (at start-up or on demand).\n# TYPE slm_model_loads_total counter\nslm_model_loads_total {}",
        c.loads.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP slm_model_load_failures_total Model loads that failed.\n# TYPE slm_model_load_failures_total counter\nslm_model_load_failures_total {}",
        c.load_failures.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP slm_model_load_seconds_total Time spent loading models.\n# TYPE slm_model_load_seconds_total counter\nslm_model_load_seconds_total {}",
        c.load_us.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP slm_model_unloads_total Models unloaded, by reason.\n# TYPE slm_model_unloads_total counter"
    );
    for (reason, n) in [("idle", &c.unloads_idle), ("evicted", &c.unloads_evicted), ("request", &c.unloads_requested)] {
        let _ = writeln!(out, "slm_model_unloads_total{{reason=\"{reason}\"}} {}", n.load(Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP slm_lora_requests_total Requests by LoRA adapter (loaded adapters).\n# TYPE slm_lora_requests_total counter"
    );
    for e in &reg.entries {
        for a in e.adapters.list() {
            let _ = writeln!(
                out,
                "slm_lora_requests_total{{model_name=\"{}\",lora_name=\"{}\"}} {}",
                e.spec.id,
                a.name,
                a.requests_total.load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP slm_model_loaded Whether each model is loaded (1) or not (0).\n# TYPE slm_model_loaded gauge"
    );
    for e in &reg.entries {
        let loaded = (e.status() == crate::registry::Status::Loaded) as u8;
        let _ = writeln!(out, "slm_model_loaded{{model=\"{}\"}} {loaded}", e.spec.id);
    }
}
