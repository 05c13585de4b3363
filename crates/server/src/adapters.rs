//! The LoRA adapters one generation model serves: those named at start-up (`--lora`,
//! `[[models.loras]]`), loaded with the model and checked against it, and those loaded and
//! unloaded at run time (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`), within a bound
//! on their number and bytes. The registry entry owns its `Adapters`, so they outlive an
//! unload of the base by keep_alive (an adapter's matrices do not point into the base).
//! `state.rs` resolves a request's adapters here (by `model` name or llama.cpp's `lora`
//! field); a request holds its adapters through its `LoraSet`, so an unloaded adapter's
//! memory goes when its last request ends, and unloading waits for that.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slm_engine::{LoraAdapter, Model};

use crate::error::ApiError;

/// An adapter named in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub name: String,
    pub path: PathBuf,
    /// The scale a request gets unless it gives its own.
    pub scale: f32,
}

impl AdapterSpec {
    /// `NAME=PATH[:SCALE]` (the `--lora` flag).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, rest) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=PATH[:SCALE]"))?;
        if name.is_empty() {
            return Err(format!("`{s}`: the adapter needs a name (NAME=PATH[:SCALE])"));
        }
        let (path, scale) = match rest.rsplit_once(':') {
            Some((p, sc)) if !p.is_empty() && sc.parse::<f32>().is_ok() => (p, sc.parse::<f32>().expect("checked")),
            _ => (rest, 1.0),
        };
        if !scale.is_finite() {
            return Err(format!("`{s}`: the scale must be a finite number"));
        }
        Ok(Self { name: name.to_string(), path: PathBuf::from(path), scale })
    }
}

/// Bounds on the adapters one model holds at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterLimits {
    pub max_loras: usize,
    pub max_bytes: u64,
}

impl Default for AdapterLimits {
    fn default() -> Self {
        Self { max_loras: 16, max_bytes: 1 << 30 }
    }
}

pub struct ServedAdapter {
    pub name: String,
    pub path: PathBuf,
    pub scale: f32,
    pub adapter: Arc<LoraAdapter>,
    pub created: u64,
    /// Requests that asked for it (by `model` or `lora`).
    pub requests_total: AtomicU64,
}

#[derive(Default)]
pub struct Adapters {
    /// Start-up adapters, loaded with the model.
    specs: Vec<AdapterSpec>,
    /// Loaded adapters in load order (llama.cpp's `lora[].id` is the index here).
    loaded: Mutex<Vec<Arc<ServedAdapter>>>,
    /// Names unloaded at run time: requests for them get 404, not the base model.
    retired: Mutex<Vec<String>>,
    limits: AdapterLimits,
    /// Held while an adapter loads, so two loads cannot both pass the bounds.
    loading: Mutex<()>,
}

impl Adapters {
    pub fn new(specs: Vec<AdapterSpec>, limits: AdapterLimits) -> Self {
        Self { specs, limits, ..Default::default() }
    }

    pub fn limits(&self) -> AdapterLimits {
        self.limits
    }

    pub fn list(&self) -> Vec<Arc<ServedAdapter>> {
        self.loaded.lock().unwrap().clone()
    }

    pub fn find(&self, name: &str) -> Option<Arc<ServedAdapter>> {
        self.loaded.lock().unwrap().iter().find(|a| a.name == name).cloned()
    }

    pub fn by_index(&self, i: usize) -> Option<Arc<ServedAdapter>> {
        self.loaded.lock().unwrap().get(i).cloned()
    }

    /// Whether `name` is (or will be, once the model loads) an adapter here, or was one.
    pub fn knows(&self, name: &str) -> bool {
        self.specs.iter().any(|s| s.name == name)
            || self.find(name).is_some()
            || self.retired.lock().unwrap().iter().any(|n| n == name)
    }

    /// Start-up adapters not loaded yet.
    pub fn has_pending(&self) -> bool {
        let retired = self.retired.lock().unwrap();
        self.specs.iter().any(|s| !retired.contains(&s.name) && self.find(&s.name).is_none())
    }

    /// Loads the start-up adapters not loaded yet (blocking: call off the async workers).
    /// Requests racing here wait for the first one's load.
    pub fn load_startup(&self, base: &Model) -> Result<(), String> {
        let _one_at_a_time = self.loading.lock().unwrap();
        for spec in &self.specs {
            if self.find(&spec.name).is_none() && !self.retired.lock().unwrap().contains(&spec.name) {
                self.load_locked(spec, base).map_err(|e| format!("LoRA adapter `{}`: {}", spec.name, e.message))?;
            }
        }
        Ok(())
    }

    /// Loads one adapter and checks it against `base` (blocking). A name in use, a bound
    /// passed or a bad file is an error in the API's shape (the file's error names the tensor).
    pub fn load(&self, spec: &AdapterSpec, base: &Model) -> Result<Arc<ServedAdapter>, ApiError> {
        let _one_at_a_time = self.loading.lock().unwrap();
        self.load_locked(spec, base)
    }

    fn load_locked(&self, spec: &AdapterSpec, base: &Model) -> Result<Arc<ServedAdapter>, ApiError> {
        if self.find(&spec.name).is_some() {
            return Err(ApiError::invalid(
                "lora_name",
                format!("The adapter `{}` is already loaded; unload it first.", spec.name),
            ));
        }
        let num_loaded = self.loaded.lock().unwrap().len();
        if num_loaded >= self.limits.max_loras {
            return Err(ApiError::invalid(
                "lora_name",
                format!("{num_loaded} adapters are loaded, the most this model holds (max_loras); unload one first."),
            ));
        }
        let path = spec.path.display().to_string();
        if !spec.path.is_file() {
            return Err(ApiError::invalid("lora_path", format!("no adapter file at {path}")));
        }
        let adapter = LoraAdapter::load(&path, &spec.name, &base.decoder)
            .map_err(|e| ApiError::invalid("lora_path", e.to_string()))?;
        let used: u64 = self.list().iter().map(|a| a.adapter.num_bytes() as u64).sum();
        if used + adapter.num_bytes() as u64 > self.limits.max_bytes {
            return Err(ApiError::invalid(
                "lora_path",
                format!(
                    "The adapter needs {} KiB; with the {} KiB loaded that passes this model's max_lora_bytes ({} KiB).",
                    adapter.num_bytes() >> 10,
                    used >> 10,
                    self.limits.max_bytes >> 10
                ),
            ));
        }
        let served = Arc::new(ServedAdapter {
            name: spec.name.clone(),
            path: spec.path.clone(),
            scale: spec.scale,
            adapter: Arc::new(adapter),
            created: crate::routes::unix_now(),
            requests_total: AtomicU64::new(0),
        });
        self.loaded.lock().unwrap().push(served.clone());
        self.retired.lock().unwrap().retain(|n| n != &spec.name);
        println!("slm: LoRA adapter `{}` loaded ({path}, {} matrices)", spec.name, served.adapter.num_pairs());
        Ok(served)
    }

    /// Takes `name` off the list at once (new requests for it get 404), then waits up to
    /// `wait` for the requests still using it to end. None if it is not loaded.
    pub async fn unload(&self, name: &str, wait: Duration) -> Option<Arc<ServedAdapter>> {
        let removed = {
            let mut loaded = self.loaded.lock().unwrap();
            let i = loaded.iter().position(|a| a.name == name)?;
            loaded.remove(i)
        };
        self.retired.lock().unwrap().push(name.to_string());
        let deadline = tokio::time::Instant::now() + wait;
        // Each request's LoraSet holds one more reference than ours.
        while Arc::strong_count(&removed.adapter) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("slm: LoRA adapter `{name}` unloaded");
        Some(removed)
    }

    /// Records a request for `a`.
    pub fn count_request(a: &ServedAdapter) {
        a.requests_total.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lora_flag() {
        let s = AdapterSpec::parse("sql=/m/sql.gguf:0.5").unwrap();
        assert_eq!((s.name.as_str(), s.path.to_str().unwrap(), s.scale), ("sql", "/m/sql.gguf", 0.5));
        let s = AdapterSpec::parse("sql=/m/sql.gguf").unwrap();
        assert_eq!((s.path.to_str().unwrap(), s.scale), ("/m/sql.gguf", 1.0));
        // A colon that is not followed by a number is part of the path.
        let s = AdapterSpec::parse("x=C:/a.gguf").unwrap();
        assert_eq!((s.path.to_str().unwrap(), s.scale), ("C:/a.gguf", 1.0));
        assert!(AdapterSpec::parse("/m/sql.gguf").is_err());
        assert!(AdapterSpec::parse("=/m/sql.gguf").is_err());
        assert!(AdapterSpec::parse("a=/m/x.gguf:inf").is_err());
    }
}
