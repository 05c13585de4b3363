//! The model registry: every model this server can answer for (named at start-up or found in
//! the models directory and the Hugging Face cache), each unloaded, loading or loaded. A
//! request for an unloaded model loads it, and requests for it wait (bounded) while others
//! carry on; `keep_alive` unloads an idle model; `max_loaded_models` and a memory budget
//! (weights + KV cache) evict the least recently used idle model first, never one with
//! requests in flight. Routes reach models through `AppState::model_for`/`embedder_for`,
//! which hand out `Arc` leases: a lease, or a request the engine still holds, marks a model
//! busy. Unloading drops the registry's handle; the engine thread ends with its last handle.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slm_engine::{EmbedderHandle, EmbeddingModel, EngineConfig, EngineHandle, Model, Pooling};
use tokio::sync::Notify;

use crate::adapters::{AdapterLimits, AdapterSpec, Adapters};
use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::state::{ServedEmbedder, ServedModel};

/// Tokens per embedding forward: 2,048 measured best on MiniLM (1,024 and 8,192 were slower:
/// too little work per matmul, or buffers past the caches).
const EMBED_BATCH_TOKENS: usize = 2048;

#[derive(Debug, Clone)]
pub struct EntrySpec {
    pub id: String,
    /// Other names requests may use (catalog name, file stem).
    pub aliases: Vec<String>,
    /// Labels `/v1/models` shows.
    pub tags: Vec<String>,
    pub path: PathBuf,
    pub engine: EngineConfig,
    pub kind: ModelKind,
    pub keep_alive: KeepAlive,
    /// A draft model for speculative decoding (generation models only).
    pub draft: Option<PathBuf>,
    /// A chat template (Jinja) replacing the GGUF's.
    pub chat_template: Option<String>,
    /// LoRA adapters loaded with the model, and the bounds on its adapters.
    pub loras: Vec<AdapterSpec>,
    pub lora_limits: AdapterLimits,
}

/// What an entry serves, decided once from its GGUF header and config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelKind {
    Generate,
    /// An encoder (BERT family), for `/v1/embeddings`.
    Encoder,
    /// A decoder pooled over its final hidden states, for `/v1/embeddings`.
    PooledDecoder(Pooling),
}

#[derive(Clone)]
pub enum Loaded {
    Gen(Arc<ServedModel>),
    Embed(Arc<ServedEmbedder>),
}

enum Slot {
    Unloaded,
    Loading,
    Loaded(Loaded),
    /// The last load failed; waiters get the reason, the next request tries again.
    Failed(String),
}

struct SlotState {
    slot: Slot,
    last_used: Instant,
    keep_alive: KeepAlive,
}

pub struct Entry {
    pub spec: EntrySpec,
    pub created: u64,
    /// What it holds once loaded: the GGUF's size plus its KV cache.
    pub num_bytes: u64,
    /// Its LoRA adapters (generation models); they outlive an unload of the model.
    pub adapters: Adapters,
    state: Mutex<SlotState>,
    changed: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Unloaded,
    Loading,
    Loaded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unloaded => "unloaded",
            Status::Loading => "loading",
            Status::Loaded => "loaded",
        }
    }
}

impl Entry {
    pub fn new(spec: EntrySpec, created: u64) -> Self {
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let file = size(&spec.path) + spec.draft.as_ref().map_or(0, size);
        let kv = if spec.kind != ModelKind::Generate { 0 } else { (spec.engine.kv_cache_mb as u64) << 20 };
        let keep_alive = spec.keep_alive;
        Self {
            adapters: Adapters::new(spec.loras.clone(), spec.lora_limits),
            spec,
            created,
            num_bytes: file + kv,
            state: Mutex::new(SlotState { slot: Slot::Unloaded, last_used: Instant::now(), keep_alive }),
            changed: Notify::new(),
        }
    }

    /// An entry whose model is already running (tests, and callers that loaded it themselves).
    pub fn preloaded(spec: EntrySpec, loaded: Loaded, created: u64) -> Self {
        let e = Self::new(spec, created);
        e.state.lock().unwrap().slot = Slot::Loaded(loaded);
        e
    }

    pub fn answers_to(&self, name: &str) -> bool {
        self.spec.id == name || self.spec.aliases.iter().any(|a| a == name)
    }

    pub fn is_embedding(&self) -> bool {
        self.spec.kind != ModelKind::Generate
    }

    pub fn status(&self) -> Status {
        match self.state.lock().unwrap().slot {
            Slot::Loaded(_) => Status::Loaded,
            Slot::Loading => Status::Loading,
            Slot::Unloaded | Slot::Failed(_) => Status::Unloaded,
        }
    }

    pub fn loaded(&self) -> Option<Loaded> {
        match &self.state.lock().unwrap().slot {
            Slot::Loaded(l) => Some(l.clone()),
            _ => None,
        }
    }

    /// A request holds a lease, or the engine still has work for it.
    fn is_busy(loaded: &Loaded) -> bool {
        match loaded {
            Loaded::Gen(m) => {
                let s = m.engine.stats();
                Arc::strong_count(m) > 1 || s.num_running + s.num_waiting + s.num_unadmitted > 0
            }
            Loaded::Embed(e) => Arc::strong_count(e) > 1,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_loaded_models: Option<usize>,
    pub memory_budget_bytes: Option<u64>,
    /// How long a request waits for its model to load.
    pub load_wait: Duration,
}

#[derive(Default)]
pub struct Counters {
    pub loads: AtomicU64,
    pub load_failures: AtomicU64,
    pub load_us: AtomicU64,
    pub unloads_idle: AtomicU64,
    pub unloads_evicted: AtomicU64,
    pub unloads_requested: AtomicU64,
}

pub struct Registry {
    pub entries: Vec<Arc<Entry>>,
    pub limits: Limits,
    pub counters: Arc<Counters>,
    /// Held while deciding what to evict and starting a load, so two loads cannot both
    /// count the same free room.
    admission: Mutex<()>,
}

enum Room {
    Fits,
    /// Why not, for the 503 if it stays so.
    Busy(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadReason {
    Idle,
    Evicted,
    Requested,
}

impl Registry {
    pub fn new(entries: Vec<Entry>, limits: Limits) -> Self {
        Self {
            entries: entries.into_iter().map(Arc::new).collect(),
            limits,
            counters: Arc::default(),
            admission: Mutex::new(()),
        }
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|e| e.spec.id == name).or_else(|| self.entries.iter().find(|e| e.answers_to(name)))
    }

    pub fn num_loaded(&self) -> usize {
        self.entries.iter().filter(|e| e.status() == Status::Loaded).count()
    }

    /// The entry's model, loading it first if need be; `keep_alive` (a request's) replaces
    /// the entry's for the time after this request.
    pub async fn acquire(&self, entry: &Arc<Entry>, keep_alive: Option<KeepAlive>) -> Result<Loaded, ApiError> {
        let deadline = tokio::time::Instant::now() + self.limits.load_wait;
        let mut waited_on_load = false;
        loop {
            let notified = entry.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let must_start = {
                let mut st = entry.state.lock().unwrap();
                if let Some(k) = keep_alive {
                    st.keep_alive = k;
                }
                st.last_used = Instant::now();
                match &st.slot {
                    Slot::Loaded(l) => return Ok(l.clone()),
                    Slot::Loading => false,
                    Slot::Failed(why) if waited_on_load => {
                        return Err(ApiError::internal(format!("cannot load model `{}`: {why}", entry.spec.id)))
                    }
                    Slot::Unloaded | Slot::Failed(_) => true,
                }
            };
            if must_start {
                if let Room::Busy(why) = self.start_load(entry)? {
                    // Room frees itself when the busy models' requests finish.
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(ApiError::unavailable("model_capacity", why, 2));
                    }
                    tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
                    continue;
                }
            }
            waited_on_load = true;
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::unavailable(
                    "model_loading",
                    format!("The model `{}` is still loading; retry shortly.", entry.spec.id),
                    5,
                ));
            }
        }
    }

    /// Makes room and starts loading `entry` on its own thread (unless another request
    /// already did); `Busy` when the room is held by models with requests in flight.
    fn start_load(&self, entry: &Arc<Entry>) -> Result<Room, ApiError> {
        let _admission = self.admission.lock().unwrap();
        {
            let st = entry.state.lock().unwrap();
            if matches!(st.slot, Slot::Loading | Slot::Loaded(_)) {
                return Ok(Room::Fits);
            }
        }
        if let Room::Busy(why) = self.make_room(entry)? {
            return Ok(Room::Busy(why));
        }
        entry.state.lock().unwrap().slot = Slot::Loading;
        let e = entry.clone();
        let counters = self.counters.clone();
        std::thread::Builder::new()
            .name(format!("slm-load-{}", e.spec.id))
            .spawn(move || {
                let t = Instant::now();
                let result = load(&e.spec, &e.adapters);
                let secs = t.elapsed();
                let mut st = e.state.lock().unwrap();
                match result {
                    Ok(l) => {
                        counters.loads.fetch_add(1, Relaxed);
                        counters.load_us.fetch_add(secs.as_micros() as u64, Relaxed);
                        println!(
                            "slm: model `{}` loaded ({}, {:.2} s)",
                            e.spec.id,
                            e.spec.path.display(),
                            secs.as_secs_f64()
                        );
                        st.slot = Slot::Loaded(l);
                    }
                    Err(why) => {
                        counters.load_failures.fetch_add(1, Relaxed);
                        eprintln!("slm: error: cannot load model `{}`: {why}", e.spec.id);
                        st.slot = Slot::Failed(why);
                    }
                }
                st.last_used = Instant::now();
                drop(st);
                e.changed.notify_waiters();
            })
            .map_err(|err| ApiError::internal(format!("cannot start a loader thread: {err}")))?;
        Ok(Room::Fits)
    }

    /// Evicts least-recently-used idle models until `entry` fits the count and the budget;
    /// an error when it could never fit.
    fn make_room(&self, entry: &Entry) -> Result<Room, ApiError> {
        if let Some(b) = self.limits.memory_budget_bytes.filter(|&b| entry.num_bytes > b) {
            return Err(ApiError::internal(format!(
                "The model `{}` needs {} MiB (weights and KV cache), more than the whole memory budget of {} MiB.",
                entry.spec.id,
                entry.num_bytes >> 20,
                b >> 20
            )));
        }
        loop {
            let others: Vec<&Arc<Entry>> = self
                .entries
                .iter()
                .filter(|e| !std::ptr::eq(e.as_ref(), entry) && e.status() != Status::Unloaded)
                .collect();
            let used: u64 = others.iter().map(|e| e.num_bytes).sum();
            let fits_count = self.limits.max_loaded_models.is_none_or(|m| others.len() < m);
            let fits_bytes = self.limits.memory_budget_bytes.is_none_or(|b| used + entry.num_bytes <= b);
            if fits_count && fits_bytes {
                return Ok(Room::Fits);
            }
            let victim = others
                .iter()
                .filter_map(|e| {
                    let st = e.state.lock().unwrap();
                    match &st.slot {
                        Slot::Loaded(l) if !Entry::is_busy(l) => Some((st.last_used, *e)),
                        _ => None,
                    }
                })
                .min_by_key(|(t, _)| *t)
                .map(|(_, e)| e.clone());
            match victim {
                Some(v) => {
                    println!("slm: unloading `{}` to make room for `{}`", v.spec.id, entry.spec.id);
                    self.unload_entry(&v, UnloadReason::Evicted);
                }
                None => {
                    return Ok(Room::Busy(format!(
                            "Cannot load `{}`: the loaded models ({}) fill {} and each still has requests in flight; retry when they finish.",
                            entry.spec.id,
                            others.iter().map(|e| e.spec.id.as_str()).collect::<Vec<_>>().join(", "),
                            match (self.limits.max_loaded_models, self.limits.memory_budget_bytes) {
                                (_, Some(b)) if !fits_bytes => format!("the memory budget of {} MiB", b >> 20),
                                (Some(m), _) => format!("max_loaded_models = {m}"),
                                _ => "the limits".to_string(),
                            }
                    )))
                }
            }
        }
    }

    /// Unloads a loaded model (a no-op otherwise). Requests still in the engine finish first:
    /// they hold its handle.
    pub fn unload_entry(&self, entry: &Entry, reason: UnloadReason) -> bool {
        let mut st = entry.state.lock().unwrap();
        if !matches!(st.slot, Slot::Loaded(_)) {
            return false;
        }
        let Slot::Loaded(loaded) = std::mem::replace(&mut st.slot, Slot::Unloaded) else { return false };
        drop(st);
        match &loaded {
            Loaded::Gen(m) => crate::memory::trim_after_drop(std::sync::Arc::downgrade(m.engine.model())),
            Loaded::Embed(e) => crate::memory::trim_after_drop(std::sync::Arc::downgrade(e.embedder.model())),
        }
        drop(loaded);
        let c = match reason {
            UnloadReason::Idle => &self.counters.unloads_idle,
            UnloadReason::Evicted => &self.counters.unloads_evicted,
            UnloadReason::Requested => &self.counters.unloads_requested,
        };
        c.fetch_add(1, Relaxed);
        println!("slm: model `{}` unloaded ({reason:?})", entry.spec.id);
        entry.changed.notify_waiters();
        true
    }

    /// Unloads models idle past their keep_alive; a busy model counts as used now.
    pub fn reap_idle(&self) {
        for e in &self.entries {
            let expired = {
                let mut st = e.state.lock().unwrap();
                match &st.slot {
                    Slot::Loaded(l) if Entry::is_busy(l) => {
                        st.last_used = Instant::now();
                        false
                    }
                    Slot::Loaded(_) => st.keep_alive.0.is_some_and(|k| st.last_used.elapsed() >= k),
                    _ => false,
                }
            };
            if expired {
                self.unload_entry(e, UnloadReason::Idle);
            }
        }
    }
}

/// Loads and starts one model, off the async workers.
fn load(spec: &EntrySpec, adapters: &Adapters) -> Result<Loaded, String> {
    let created = crate::routes::unix_now();
    match spec.kind {
        ModelKind::Encoder | ModelKind::PooledDecoder(_) => {
            let model = match spec.kind {
                ModelKind::PooledDecoder(p) => {
                    Model::load(&spec.path).map(|m| EmbeddingModel::from_decoder(Arc::new(m), p))
                }
                _ => EmbeddingModel::load(&spec.path),
            };
            let embedder = model
                .and_then(|m| EmbedderHandle::start(Arc::new(m), EMBED_BATCH_TOKENS))
                .map_err(|e| e.to_string())?;
            Ok(Loaded::Embed(Arc::new(ServedEmbedder { id: spec.id.clone(), embedder, created })))
        }
        ModelKind::Generate => {
            let draft = match &spec.draft {
                Some(p) => Some(Model::load(p).map(Arc::new).map_err(|e| format!("draft model: {e}"))?),
                None => None,
            };
            let engine = Model::load(&spec.path)
                .and_then(|mut m| {
                    if let Some(t) = &spec.chat_template {
                        m.chat_template = m.chat_template.with_source(t.clone())?;
                    }
                    Ok(m)
                })
                .map(Arc::new)
                .and_then(|m| EngineHandle::start_with_draft(m, draft, spec.engine.clone()))
                .map_err(|e| e.to_string())?;
            // A start-up adapter that does not fit the model fails the load, naming it.
            adapters.load_startup(engine.model())?;
            // The grammar index is built off the loading path: only a constrained request
            // that comes in the first second waits for it.
            let model = engine.model().clone();
            std::thread::spawn(move || model.grammar.warm_up());
            Ok(Loaded::Gen(Arc::new(ServedModel { id: spec.id.clone(), engine, created })))
        }
    }
}
