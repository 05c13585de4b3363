//! Server configuration: an optional TOML file (`config/slm.toml` documents every key), then
//! command-line flags on top, then `SLM_API_KEY`. Resolves model names to GGUF files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use slm_engine::EngineConfig;

mod model;

use model::*;

use crate::adapters::{AdapterLimits, AdapterSpec};
use crate::hub::hf_cache::hub_dir;
use crate::hub::local;
use crate::keep_alive::KeepAlive;

pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
/// The default model's name in the pull catalog.
pub const DEFAULT_CATALOG_NAME: &str = "qwen2.5-coder:0.5b";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub api_keys: Option<Vec<String>>,
    pub cors_allowed_origins: Option<Vec<String>>,
    pub body_limit_mb: Option<usize>,
    pub queue_limit: Option<usize>,
    pub shutdown_timeout_s: Option<u64>,
    pub header_read_timeout_s: Option<u64>,
    pub body_read_timeout_s: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    /// The Responses API's store: a SQLite file, or ":memory:" to keep nothing on disk.
    pub responses_db: Option<String>,
    pub responses_max_count: Option<usize>,
    pub responses_max_age_days: Option<u64>,
    /// Keys that may call `POST /models/load|unload` (they are API keys too); unset: every
    /// API key may.
    pub admin_api_keys: Option<Vec<String>>,
    /// How long a model found in the models directory stays loaded after its last request
    /// (Ollama's `keep_alive`: seconds or "5m"; negative: for good). Default "5m".
    pub keep_alive: Option<KeepAlive>,
    /// At most this many models loaded at once; the least recently used idle one makes room.
    pub max_loaded_models: Option<usize>,
    /// Memory the loaded models may hold, in MiB (GGUF size + KV cache each).
    pub memory_budget_mb: Option<u64>,
    /// How long a request waits for its model to load before a 503 (default 120 s).
    pub load_timeout_s: Option<u64>,
    /// Also serve, on demand, every model in the models directory and the Hugging Face cache.
    /// Default: only when no model is named (by `--model` or `[[models]]`).
    pub discover_models: Option<bool>,
    /// Serve the chat page at `/` and `/ui` (default true).
    pub ui: Option<bool>,
    /// Serve llama.cpp's `GET /slots` (default false).
    pub slots_endpoint: Option<bool>,
    /// Serve `GET /metrics` (default true; off, it answers 501 as llama-server without
    /// `--metrics` does).
    pub metrics: Option<bool>,
    /// The seed of every request that sends none (llama.cpp's `--seed`); unset, random.
    pub seed: Option<u64>,
    /// Reasoning models: whether requests think unless they say ("auto", "on", "off").
    pub reasoning: Option<crate::reasoning::ReasoningMode>,
    /// How thoughts come back: "auto", "deepseek" (`reasoning_content`), "deepseek-legacy",
    /// "none" (left in `content`).
    pub reasoning_format: Option<crate::reasoning::ReasoningFormat>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub alias: Option<String>,
    pub path: String,
    pub context_length: Option<usize>,
    pub kv_cache_mb: Option<usize>,
    /// Element type of the KV cache: "f16" (default, as llama.cpp) or "f32".
    pub kv_cache_dtype: Option<KvCacheDtype>,
    pub max_seqs: Option<usize>,
    pub max_batched_tokens: Option<usize>,
    /// Serve this decoder as an embedding model, pooled over its final hidden states:
    /// "last" (the Qwen3-Embedding recipe) or "mean".
    pub pooling: Option<PoolingMode>,
    /// How long it stays loaded after its last request; default: for good (it was named).
    pub keep_alive: Option<KeepAlive>,
    /// Speculative decoding by prompt lookup (default true: adaptive, on where it pays).
    pub speculative: Option<bool>,
    /// Most drafted tokens verified per sequence and step (default 8).
    pub max_draft_tokens: Option<usize>,
    /// A smaller model with the same vocabulary that drafts where prompt lookup finds
    /// nothing (a path, a models-directory name, or another entry's alias).
    pub draft_model: Option<String>,
    /// The chat template to use instead of the GGUF's: Jinja text, or a built-in name
    /// (`chatml`, `gemma`).
    pub chat_template: Option<String>,
    /// The chat template from a Jinja file instead of the GGUF's.
    pub chat_template_file: Option<String>,
    /// More names requests may use for this model (listed as `aliases` in `/v1/models`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Labels listed as `tags` in `/v1/models` (llama.cpp's `--tags`), for clients to pick by.
    #[serde(default)]
    pub tags: Vec<String>,
    /// LoRA adapters for this model (`[[models.loras]]`), loaded with it.
    #[serde(default)]
    pub loras: Vec<LoraEntry>,
    /// Most adapters loaded at once, start-up and run-time ones together (default 16).
    pub max_loras: Option<usize>,
    /// Most memory the adapters may take, in MiB (default 1024).
    pub max_lora_mb: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraEntry {
    pub name: String,
    pub path: String,
    /// The scale requests get unless they give one (default 1).
    pub scale: Option<f32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    Last,
    Mean,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    F16,
    F32,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

/// Flags of `slm serve` (its clap arguments: `slm serve --help` prints these comments).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeFlags {
    /// A GGUF path, a file name in $SLM_HOME/models (without .gguf), or a config alias.
    /// Repeat to serve several models. Default: the default model in $SLM_HOME/models.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// TOML config file (see config/slm.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to bind (default 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (default 8080; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// API key clients must send as `Authorization: Bearer KEY`. Repeatable.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// A smaller model with the same vocabulary (path or name) that drafts tokens for
    /// speculative decoding where prompt lookup finds nothing.
    #[arg(long = "draft-model")]
    pub draft_model: Option<String>,
    /// Do not serve the chat page at `/` and `/ui`.
    #[arg(long = "no-ui")]
    pub no_ui: bool,
    /// Chat template for every model named here instead of the GGUF's: Jinja text, or
    /// a built-in name (chatml, gemma).
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    /// Chat template (Jinja) from a file instead of the GGUF's.
    #[arg(long = "chat-template-file")]
    pub chat_template_file: Option<PathBuf>,
    /// A LoRA adapter (llama.cpp's GGUF format) for the first model: NAME=PATH[:SCALE].
    /// Requests pick it with `model: NAME` (or `BASE:NAME`) or llama.cpp's `lora` field.
    /// Repeatable.
    #[arg(long = "lora")]
    pub loras: Vec<String>,
    /// Serve llama.cpp's `GET /slots` (the engine's sequence slots, busy or idle).
    #[arg(long)]
    pub slots: bool,
    /// Do not serve `GET /metrics` (it answers 501).
    #[arg(long = "no-metrics")]
    pub no_metrics: bool,
    /// The seed of every request that sends none, so all sampling is reproducible
    /// (llama.cpp's `--seed`; -1 or unset: random).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Reasoning models: whether requests think unless they say (llama.cpp's `--reasoning`;
    /// a request's `chat_template_kwargs.enable_thinking` or `reasoning_effort` wins).
    #[arg(long, value_enum)]
    pub reasoning: Option<crate::reasoning::ReasoningMode>,
    /// How a reasoning model's thoughts come back: in `reasoning_content` (deepseek, the
    /// default for templates with reasoning tags), there and in `content` (deepseek-legacy),
    /// or left in `content` (none).
    #[arg(long = "reasoning-format", value_enum)]
    pub reasoning_format: Option<crate::reasoning::ReasoningFormat>,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub alias: String,
    pub path: PathBuf,
    pub engine: EngineConfig,
    /// Set: a decoder served as an embedding model.
    pub pooling: Option<slm_engine::Pooling>,
    pub keep_alive: KeepAlive,
    /// Other names it answers to (its catalog name, file stem).
    pub aliases: Vec<String>,
    /// Labels shown in `/v1/models`.
    pub tags: Vec<String>,
    /// Draft model for speculative decoding.
    pub draft: Option<PathBuf>,
    /// A chat template (Jinja) that replaces the GGUF's.
    pub chat_template: Option<String>,
    /// LoRA adapters loaded with it, and the bounds on its adapters.
    pub loras: Vec<AdapterSpec>,
    pub lora_limits: AdapterLimits,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub api_keys: Vec<String>,
    pub cors_allowed_origins: Vec<String>,
    pub body_limit: usize,
    pub shutdown_timeout_s: u64,
    /// A request head (or body) not fully received in this time is dropped.
    pub header_read_timeout_s: u64,
    pub body_read_timeout_s: u64,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// None: responses are kept in memory only.
    pub responses_db: Option<PathBuf>,
    pub responses_max_count: usize,
    pub responses_max_age_s: u64,
    /// Loaded at start-up.
    pub models: Vec<ModelSpec>,
    /// Listed, loaded when a request names them.
    pub discovered: Vec<ModelSpec>,
    pub admin_api_keys: Vec<String>,
    pub limits: crate::registry::Limits,
    /// The chat page at `/` and `/ui`.
    pub ui: bool,
    /// llama.cpp's `GET /slots`.
    pub slots: bool,
    /// `GET /metrics`.
    pub metrics: bool,
    pub reasoning: crate::reasoning::ReasoningConfig,
}

/// `$SLM_HOME`, by default `~/.cache/slm`: models and the response store live here.
pub fn slm_home() -> PathBuf {
    match std::env::var_os("SLM_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/slm"),
    }
}

pub fn models_dir() -> PathBuf {
    slm_home().join("models")
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(p),
    }
}

pub fn resolve(flags: ServeFlags) -> Result<ServerConfig> {
    let file: FileConfig = match &flags.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let mut models = Vec::new();
    if flags.models.is_empty() {
        for e in &file.models {
            models.push(named_spec(Some(e), expand_home(&e.path), &file)?);
        }
    }
    for m in &flags.models {
        let entry = file.models.iter().find(|e| e.alias.as_deref() == Some(m.as_str()));
        models.push(named_spec(entry, resolve_model(m, &file)?, &file)?);
    }
    let named = !models.is_empty();
    let discover_on = file.discover_models.unwrap_or(!named);
    if models.is_empty() {
        let path = models_dir().join(format!("{DEFAULT_MODEL}.gguf"));
        let found = if path.is_file() {
            Some(path.clone())
        } else {
            local::find(&models_dir(), &hub_dir(), DEFAULT_CATALOG_NAME).map(|m| m.path)
        };
        match found {
            Some(path) => models.push(ModelSpec {
                alias: DEFAULT_MODEL.into(),
                path,
                engine: engine_config(None, file.queue_limit),
                pooling: None,
                keep_alive: KeepAlive::FOREVER,
                aliases: Vec::new(),
                tags: Vec::new(),
                draft: None,
                chat_template: None,
                loras: Vec::new(),
                lora_limits: AdapterLimits::default(),
            }),
            // Other installed models are served on demand: no model loads at start.
            None if discover_on && !local::installed(&models_dir(), &hub_dir()).is_empty() => {}
            None => bail!(
                "the default model is missing: {} does not exist, and no other model is installed.\nFetch it with:  slm pull {DEFAULT_CATALOG_NAME}",
                path.display()
            ),
        }
    }
    if let Some(d) = &flags.draft_model {
        // Every model loaded at start (named, or the default) drafts with it.
        let path = resolve_model(d, &file).context("--draft-model")?;
        models.iter_mut().for_each(|m| m.draft = Some(path.clone()));
    }
    let flag_template = match (&flags.chat_template, &flags.chat_template_file) {
        (Some(_), Some(_)) => bail!("give --chat-template or --chat-template-file, not both"),
        (Some(t), None) => Some(template_source(t).context("--chat-template")?),
        (None, Some(f)) => Some(read_template(f).context("--chat-template-file")?),
        (None, None) => None,
    };
    if let Some(t) = flag_template {
        models.iter_mut().for_each(|m| m.chat_template = Some(t.clone()));
    }
    for l in &flags.loras {
        let spec = AdapterSpec::parse(l).map_err(|e| anyhow::anyhow!("--lora {e}"))?;
        let first = models.first_mut().context("--lora: no model is loaded at start to attach it to")?;
        if first.loras.iter().any(|s| s.name == spec.name) {
            bail!("--lora: the name `{}` is used twice", spec.name);
        }
        first.loras.push(spec);
    }
    let mut discovered = if discover_on {
        discover(
            &mut models,
            file.keep_alive.unwrap_or(KeepAlive::parse("5m").expect("a valid duration")),
            file.queue_limit,
        )
    } else {
        Vec::new()
    };
    let seed = flags.seed.map(|s| u64::try_from(s).ok()).unwrap_or(file.seed);
    for m in models.iter_mut().chain(discovered.iter_mut()) {
        m.engine.default_seed = seed;
    }
    for m in &models {
        if !m.path.is_file() {
            bail!("model file {} (alias `{}`) does not exist", m.path.display(), m.alias);
        }
    }
    let mut aliases: Vec<&str> = models.iter().map(|m| m.alias.as_str()).collect();
    aliases.sort();
    if aliases.windows(2).any(|w| w[0] == w[1]) {
        bail!("two models share an alias; give them distinct `alias` values");
    }
    let mut api_keys = file.api_keys.unwrap_or_default();
    api_keys.extend(flags.api_keys);
    let admin_api_keys = file.admin_api_keys.unwrap_or_default();
    if !admin_api_keys.is_empty() && api_keys.is_empty() {
        bail!("admin_api_keys is set but api_keys is not: with no API keys the server is open to anyone, admin actions included; set api_keys too");
    }
    api_keys.extend(admin_api_keys.iter().cloned());
    if let Ok(k) = std::env::var("SLM_API_KEY") {
        if !k.is_empty() {
            api_keys.push(k);
        }
    }
    Ok(ServerConfig {
        host: flags.host.or(file.host).unwrap_or_else(|| "127.0.0.1".into()),
        port: flags.port.or(file.port).unwrap_or(8080),
        api_keys,
        cors_allowed_origins: file.cors_allowed_origins.unwrap_or_default(),
        ui: !flags.no_ui && file.ui.unwrap_or(true),
        slots: flags.slots || file.slots_endpoint.unwrap_or(false),
        metrics: !flags.no_metrics && file.metrics.unwrap_or(true),
        reasoning: crate::reasoning::ReasoningConfig {
            mode: flags.reasoning.or(file.reasoning).unwrap_or_default(),
            format: flags.reasoning_format.or(file.reasoning_format).unwrap_or_default(),
        },
        // Long prompts must reach the context-length check, not the body limit.
        body_limit: file.body_limit_mb.unwrap_or(16) << 20,
        shutdown_timeout_s: file.shutdown_timeout_s.unwrap_or(30),
        header_read_timeout_s: file.header_read_timeout_s.unwrap_or(10).max(1),
        body_read_timeout_s: file.body_read_timeout_s.unwrap_or(30).max(1),
        max_connections: file.max_connections.unwrap_or(512).max(1),
        max_connections_per_client: file.max_connections_per_client.unwrap_or(64).max(1),
        responses_db: match file.responses_db.as_deref() {
            Some(":memory:") => None,
            Some(p) => Some(expand_home(p)),
            None => Some(slm_home().join("responses.sqlite")),
        },
        responses_max_count: file.responses_max_count.unwrap_or(10_000).max(1),
        responses_max_age_s: file.responses_max_age_days.unwrap_or(30).saturating_mul(86_400),
        models,
        discovered,
        admin_api_keys,
        limits: crate::registry::Limits {
            max_loaded_models: file.max_loaded_models.map(|m| m.max(1)),
            memory_budget_bytes: file.memory_budget_mb.map(|m| m << 20),
            load_wait: std::time::Duration::from_secs(file.load_timeout_s.unwrap_or(120).max(1)),
        },
    })
}

/// Every installed model not already named: listed, loaded on demand, unloaded after
/// `keep_alive` idle. A named model that is also installed gets the installed names as aliases.
fn discover(named: &mut [ModelSpec], keep_alive: KeepAlive, queue_limit: Option<usize>) -> Vec<ModelSpec> {
    let mut out: Vec<ModelSpec> = Vec::new();
    for m in local::installed(&models_dir(), &hub_dir()) {
        let same_file = |p: &Path| std::fs::canonicalize(p).ok() == std::fs::canonicalize(&m.path).ok();
        if let Some(n) = named.iter_mut().find(|n| same_file(&n.path)) {
            n.aliases.extend(std::iter::once(m.name.clone()).chain(m.aliases.clone()).filter(|a| *a != n.alias));
            continue;
        }
        let taken =
            |id: &str| named.iter().chain(out.iter()).any(|s| s.alias == id || s.aliases.iter().any(|a| a == id));
        if taken(&m.name) {
            continue;
        }
        let aliases: Vec<String> = m.aliases.iter().filter(|a| !taken(a)).cloned().collect();
        out.push(ModelSpec {
            alias: m.name.clone(),
            path: m.path.clone(),
            engine: engine_config(None, queue_limit),
            pooling: None,
            keep_alive,
            aliases,
            tags: Vec::new(),
            draft: None,
            chat_template: None,
            loras: Vec::new(),
            lora_limits: AdapterLimits::default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use slm_engine::config::KvDtype;

    #[test]
    fn the_documented_example_config_parses() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/slm.toml")).unwrap();
        let c: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(c.port, Some(8080));
        assert!(!c.models.is_empty());
    }

    #[test]
    fn kv_cache_dtype_is_read_and_checked() {
        let c: FileConfig = toml::from_str("[[models]]\npath = \"m.gguf\"\nkv_cache_dtype = \"f32\"").unwrap();
        assert_eq!(engine_config(c.models.first(), None).kv_dtype, KvDtype::F32);
        assert_eq!(engine_config(None, None).kv_dtype, KvDtype::F16);
        assert!(toml::from_str::<FileConfig>("[[models]]\npath = \"m.gguf\"\nkv_cache_dtype = \"q8\"").is_err());
        let c: FileConfig = toml::from_str("[[models]]\npath = \"m.gguf\"\nkv_cache_dtype = \"q8_0\"").unwrap();
        assert_eq!(engine_config(c.models.first(), None).kv_dtype, KvDtype::Q8_0);
    }

    #[test]
    fn pooling_is_read_and_checked() {
        let c: FileConfig = toml::from_str("[[models]]\npath = \"m.gguf\"\npooling = \"last\"").unwrap();
        assert_eq!(pooling_of(c.models.first()), Some(slm_engine::Pooling::Last));
        assert_eq!(pooling_of(None), None);
        assert!(toml::from_str::<FileConfig>("[[models]]\npath = \"m.gguf\"\npooling = \"max\"").is_err());
    }

    #[test]
    fn draft_models_resolve_from_a_path_or_an_alias_and_a_missing_one_is_named() {
        let dir = std::env::temp_dir().join(format!("slm-draft-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.gguf");
        std::fs::write(&small, b"GGUF").unwrap();
        let text = format!(
            "[[models]]\nalias = \"small\"\npath = \"{}\"\n[[models]]\npath = \"big.gguf\"\ndraft_model = \"small\"\n",
            small.display()
        );
        let c: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(draft_of(c.models.get(1), &c).unwrap(), Some(small.clone()));
        assert_eq!(draft_of(c.models.first(), &c).unwrap(), None);
        let by_path = format!("[[models]]\npath = \"big.gguf\"\ndraft_model = \"{}\"\n", small.display());
        let c: FileConfig = toml::from_str(&by_path).unwrap();
        assert_eq!(draft_of(c.models.first(), &c).unwrap(), Some(small));
        let c: FileConfig = toml::from_str("[[models]]\npath = \"big.gguf\"\ndraft_model = \"nowhere-xyz\"").unwrap();
        let err = format!("{:#}", draft_of(c.models.first(), &c).unwrap_err());
        assert!(err.contains("draft_model") && err.contains("nowhere-xyz"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_chat_page_is_on_unless_the_flag_or_the_file_turns_it_off() {
        let dir = std::env::temp_dir().join(format!("slm-ui-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let ui_of = |file: &str, no_ui: bool| {
            let cfg = dir.join("slm.toml");
            std::fs::write(&cfg, format!("{file}\n[[models]]\npath = \"{}\"\n", model.display())).unwrap();
            resolve(ServeFlags { config: Some(cfg), no_ui, ..Default::default() }).unwrap().ui
        };
        assert!(ui_of("", false));
        assert!(!ui_of("", true));
        assert!(!ui_of("ui = false", false));
        assert!(!ui_of("ui = true", true), "the flag wins over the file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_seed_and_metrics_switch_come_from_the_flags_or_the_file() {
        let dir = std::env::temp_dir().join(format!("slm-seed-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let of = |file: &str, seed: Option<i64>, no_metrics: bool| {
            let cfg = dir.join("slm.toml");
            std::fs::write(&cfg, format!("{file}\n[[models]]\npath = \"{}\"\n", model.display())).unwrap();
            let c = resolve(ServeFlags { config: Some(cfg), seed, no_metrics, ..Default::default() }).unwrap();
            (c.models[0].engine.default_seed, c.metrics)
        };
        assert_eq!(of("", None, false), (None, true));
        assert_eq!(of("seed = 5\nmetrics = false", None, false), (Some(5), false));
        assert_eq!(of("seed = 5", Some(9), true), (Some(9), false), "the flags win over the file");
        assert_eq!(of("seed = 5", Some(-1), false), (None, true), "-1 is llama.cpp's random seed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chat_templates_come_from_text_a_name_or_a_file() {
        assert!(template_source("{{ messages }}").unwrap().contains("messages"));
        assert!(template_source("chatml").unwrap().contains("<|im_start|>"));
        assert!(format!("{:#}", template_source("llama9").unwrap_err()).contains("unknown chat template `llama9`"));
        let dir = std::env::temp_dir().join(format!("slm-tmpl-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let file = dir.join("t.jinja");
        std::fs::write(&file, "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
        let text = format!("[[models]]\npath = \"{}\"\nchat_template_file = \"{}\"\n", model.display(), file.display());
        let c: FileConfig = toml::from_str(&text).unwrap();
        assert!(template_of(c.models.first()).unwrap().unwrap().starts_with("{% for m"));
        let cfg = dir.join("slm.toml");
        std::fs::write(&cfg, format!("[[models]]\npath = \"{}\"\n", model.display())).unwrap();
        let flags = |t: Option<&str>, f: Option<&std::path::Path>| ServeFlags {
            config: Some(cfg.clone()),
            chat_template: t.map(String::from),
            chat_template_file: f.map(|p| p.to_path_buf()),
            ..Default::default()
        };
        assert_eq!(
            resolve(flags(Some("gemma"), None)).unwrap().models[0].chat_template.as_deref(),
            slm_engine::chat_template::builtin("gemma")
        );
        assert!(resolve(flags(None, Some(&file))).unwrap().models[0].chat_template.is_some());
        assert!(resolve(flags(Some("chatml"), Some(&file))).is_err());
        assert!(resolve(flags(None, Some(&dir.join("missing.jinja")))).is_err());
        assert_eq!(resolve(flags(None, None)).unwrap().models[0].chat_template, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn adapters_come_from_the_file_and_the_flag() {
        let dir = std::env::temp_dir().join(format!("slm-lora-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let cfg = dir.join("slm.toml");
        let file = format!(
            "[[models]]\npath = \"{}\"\nmax_loras = 4\nmax_lora_mb = 8\n[[models.loras]]\nname = \"sql\"\npath = \"/a/sql.gguf\"\nscale = 0.5\n",
            model.display()
        );
        std::fs::write(&cfg, &file).unwrap();
        let flags = |loras: &[&str]| ServeFlags {
            config: Some(cfg.clone()),
            loras: loras.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let m = &resolve(flags(&["chat=/a/chat.gguf:2"])).unwrap().models[0];
        let got: Vec<(&str, f32)> = m.loras.iter().map(|l| (l.name.as_str(), l.scale)).collect();
        assert_eq!(got, vec![("sql", 0.5), ("chat", 2.0)]);
        assert_eq!(m.lora_limits, AdapterLimits { max_loras: 4, max_bytes: 8 << 20 });
        let err = format!("{:#}", resolve(flags(&["sql=/b.gguf"])).unwrap_err());
        assert!(err.contains("`sql` is used twice"), "{err}");
        assert!(format!("{:#}", resolve(flags(&["nopath"])).unwrap_err()).contains("NAME=PATH"));
        std::fs::write(&cfg, file.replace("scale = 0.5", "scale = 0.5\nrank = 8")).unwrap();
        assert!(resolve(flags(&[])).is_err(), "unknown keys in [[models.loras]] are refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("prot = 1").is_err());
    }
}
