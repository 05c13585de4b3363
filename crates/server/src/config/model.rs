//! How one model named at start-up (by `--model` or a `[[models]]` entry) becomes a
//! `ModelSpec`: its file resolved from a path, name or alias, its engine settings, draft
//! model, chat template and LoRA adapters. `config.rs` calls these while it resolves the
//! whole configuration.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use slm_engine::config::KvDtype;
use slm_engine::EngineConfig;

use super::{expand_home, models_dir, FileConfig, KvCacheDtype, ModelEntry, ModelSpec, PoolingMode};
use crate::adapters::{AdapterLimits, AdapterSpec};
use crate::hub::hf_cache::hub_dir;
use crate::hub::local;
use crate::keep_alive::KeepAlive;

pub(super) fn alias_of(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_else(|| "model".into())
}

pub(super) fn pooling_of(e: Option<&ModelEntry>) -> Option<slm_engine::Pooling> {
    e.and_then(|e| e.pooling).map(|p| match p {
        PoolingMode::Last => slm_engine::Pooling::Last,
        PoolingMode::Mean => slm_engine::Pooling::Mean,
    })
}

pub(super) fn engine_config(e: Option<&ModelEntry>, queue_limit: Option<usize>) -> EngineConfig {
    let d = EngineConfig::default();
    EngineConfig {
        kv_cache_mb: e.and_then(|e| e.kv_cache_mb).unwrap_or(d.kv_cache_mb),
        kv_dtype: match e.and_then(|e| e.kv_cache_dtype) {
            Some(KvCacheDtype::F32) => KvDtype::F32,
            Some(KvCacheDtype::F16) => KvDtype::F16,
            Some(KvCacheDtype::Q8_0) => KvDtype::Q8_0,
            Some(KvCacheDtype::Q4_0) => KvDtype::Q4_0,
            None => d.kv_dtype,
        },
        max_seqs: e.and_then(|e| e.max_seqs).unwrap_or(d.max_seqs),
        max_batched_tokens: e.and_then(|e| e.max_batched_tokens).unwrap_or(d.max_batched_tokens),
        max_model_len: e.and_then(|e| e.context_length),
        max_waiting: queue_limit.unwrap_or(d.max_waiting),
        speculative: slm_engine::config::SpecConfig {
            enabled: e.and_then(|e| e.speculative).unwrap_or(d.speculative.enabled),
            max_draft_tokens: e.and_then(|e| e.max_draft_tokens).unwrap_or(d.speculative.max_draft_tokens),
            ..d.speculative.clone()
        },
        ..d
    }
}

/// The GGUF a `--model` (or `--draft-model`) value names: a config alias, a file, a models
/// directory name or an installed model's name.
pub(super) fn resolve_model(m: &str, file: &FileConfig) -> Result<PathBuf> {
    let entry = file.models.iter().find(|e| e.alias.as_deref() == Some(m));
    Ok(if let Some(e) = entry {
        expand_home(&e.path)
    } else if Path::new(m).is_file() {
        PathBuf::from(m)
    } else if models_dir().join(format!("{m}.gguf")).is_file() {
        models_dir().join(format!("{m}.gguf"))
    } else if let Some(found) = local::find(&models_dir(), &hub_dir(), m) {
        found.path
    } else {
        bail!(
            "model `{m}` is neither a file, nor a model in {} or the Hugging Face cache (see `slm list`), nor an alias in the config file{}",
            models_dir().display(),
            if crate::hub::catalog::lookup(m).is_some() { format!("; fetch it with `slm pull {m}`") } else { String::new() }
        );
    })
}

/// A `chat_template` value: Jinja text as it is, or a built-in template's name.
pub(super) fn template_source(t: &str) -> Result<String> {
    if t.contains("{{") || t.contains("{%") {
        return Ok(t.to_string());
    }
    slm_engine::chat_template::builtin(t).map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown chat template `{t}`: give Jinja text, a file, or one of {:?}",
            slm_engine::chat_template::BUILTIN_NAMES
        )
    })
}

pub(super) fn read_template(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read chat template {}", path.display()))
}

/// A config entry's chat template override, read.
pub(super) fn template_of(e: Option<&ModelEntry>) -> Result<Option<String>> {
    match e.map(|e| (&e.chat_template, &e.chat_template_file)) {
        Some((Some(_), Some(_))) => bail!("give `chat_template` or `chat_template_file`, not both"),
        Some((Some(t), None)) => Ok(Some(template_source(t).context("chat_template")?)),
        Some((None, Some(f))) => Ok(Some(read_template(&expand_home(f)).context("chat_template_file")?)),
        _ => Ok(None),
    }
}

/// A config entry's adapters and their bounds.
pub(super) fn loras_of(e: Option<&ModelEntry>) -> Result<(Vec<AdapterSpec>, AdapterLimits)> {
    let d = AdapterLimits::default();
    let Some(e) = e else { return Ok((Vec::new(), d)) };
    let mut specs = Vec::new();
    for l in &e.loras {
        let scale = l.scale.unwrap_or(1.0);
        if !scale.is_finite() {
            bail!("models.loras `{}`: the scale must be a finite number", l.name);
        }
        if specs.iter().any(|s: &AdapterSpec| s.name == l.name) {
            bail!("models.loras: the name `{}` is used twice", l.name);
        }
        specs.push(AdapterSpec { name: l.name.clone(), path: expand_home(&l.path), scale });
    }
    let limits = AdapterLimits {
        max_loras: e.max_loras.unwrap_or(d.max_loras),
        max_bytes: e.max_lora_mb.map_or(d.max_bytes, |mb| mb << 20),
    };
    Ok((specs, limits))
}

/// A model named at start-up (by `--model` or `[[models]]`), with its entry's settings if it
/// has one.
pub(super) fn named_spec(e: Option<&ModelEntry>, path: PathBuf, file: &FileConfig) -> Result<ModelSpec> {
    let (loras, lora_limits) = loras_of(e)?;
    Ok(ModelSpec {
        alias: e.and_then(|e| e.alias.clone()).unwrap_or_else(|| alias_of(&path)),
        path,
        engine: engine_config(e, file.queue_limit),
        pooling: pooling_of(e),
        keep_alive: e.and_then(|e| e.keep_alive).unwrap_or(KeepAlive::FOREVER),
        aliases: e.map(|e| e.aliases.clone()).unwrap_or_default(),
        tags: e.map(|e| e.tags.clone()).unwrap_or_default(),
        draft: draft_of(e, file)?,
        chat_template: template_of(e)?,
        loras,
        lora_limits,
    })
}

/// A config entry's draft model, resolved.
pub(super) fn draft_of(e: Option<&ModelEntry>, file: &FileConfig) -> Result<Option<PathBuf>> {
    match e.and_then(|e| e.draft_model.as_deref()) {
        Some(d) => resolve_model(d, file).map(Some).with_context(|| "draft_model"),
        None => Ok(None),
    }
}
