//! LoRA adapters: low-rank updates to a base model's projections, in llama.cpp's GGUF adapter
//! format (`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, a pair
//! `<base tensor>.lora_a` / `.lora_b` per adapted matrix, as `convert_lora_to_gguf.py` writes
//! them). `LoraAdapter::load` checks a file against the base `Decoder` (architecture, tensor
//! names, shapes) and keeps each pair as f32 dense matrices; a request carries a `LoraSet`
//! (adapters with scales); the decoder calls `add_deltas` after each base matmul.
//!
//! Execution, as Punica/S-LoRA segment it: the base matmul has already run once over every
//! row of the step; here the rows are grouped by adapter, and each group goes through that
//! adapter's `x·Aᵀ` and `·Bᵀ` as two small batched matmuls, the result added as
//! `y += scale · (B·(A·x))` (llama.cpp's order and scale: `scale · alpha / rank`, or `scale`
//! when alpha is 0). Batch invariance: the dense kernel computes each row independently of the
//! others in its call, and a row's adapters are applied in one fixed order (adapter id, which
//! a `LoraSet` sorts by), so a row's result depends only on its own tokens and adapters —
//! never on which adapters, or how many base rows, share the step. Rows without an adapter
//! are not touched at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::layers::dense::DenseWeights;
use crate::layers::vecmath::axpy;
use crate::loader::Gguf;
use crate::models::Decoder;

/// A projection inside a block that an adapter may update (GGUF base names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    /// Fused q/k/v (Phi).
    Qkv,
    O,
    Gate,
    /// Up, or fused gate+up (Phi-3), or Phi-2's ungated up.
    Up,
    Down,
}

pub const PROJS: [Proj; 8] = [Proj::Q, Proj::K, Proj::V, Proj::Qkv, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

impl Proj {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::Qkv => "attn_qkv",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    fn index(self) -> usize {
        PROJS.iter().position(|p| *p == self).expect("every projection is listed")
    }
}

/// One adapted matrix: `A` (`rank × in`) and `B` (`out × rank`).
pub struct LoraPair {
    a: DenseWeights,
    b: DenseWeights,
    rank: usize,
    in_dim: usize,
    out_dim: usize,
    /// `alpha / rank`, or 1 when the file's alpha is 0 (llama.cpp's rule).
    alpha_scale: f32,
}

/// A loaded adapter. `id` is unique per load in this process: it orders a row's adapters and
/// keys the prefix cache, so a reloaded adapter never meets blocks computed by the old one.
pub struct LoraAdapter {
    pub id: u64,
    pub name: String,
    pub path: String,
    pub alpha: f32,
    layers: Vec<[Option<LoraPair>; PROJS.len()]>,
    output: Option<LoraPair>,
    num_bytes: usize,
    num_pairs: usize,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl LoraAdapter {
    /// Reads `path` and checks it against `base`: the same architecture, only tensor names of
    /// projections `base` has, shapes that fit them. Any mismatch is an error naming the tensor.
    pub fn load(path: &str, name: &str, base: &Decoder) -> Result<Self> {
        let bad = |message: String| EngineError::Adapter { path: path.to_string(), message };
        let mut g = Gguf::open(path).map_err(|e| bad(e.to_string()))?;
        let kind = g.opt_str("general.type");
        if kind.as_deref() != Some("adapter") {
            return Err(bad(format!("not an adapter (general.type is {kind:?}, not \"adapter\")")));
        }
        let adapter_type = g.opt_str("adapter.type");
        if adapter_type.as_deref() != Some("lora") {
            return Err(bad(format!("adapter.type is {adapter_type:?}; only \"lora\" is supported")));
        }
        let arch = g.architecture().map_err(|e| bad(e.to_string()))?;
        if arch != base.config.architecture {
            return Err(bad(format!(
                "the adapter is for architecture `{arch}`, the base model is `{}`",
                base.config.architecture
            )));
        }
        let alpha = g.opt_f32("adapter.lora.alpha").map_err(|e| bad(e.to_string()))?.unwrap_or(0.0);
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(bad(format!("adapter.lora.alpha is {alpha}")));
        }
        // Pair up `<base>.lora_a` / `<base>.lora_b`.
        let mut halves: HashMap<String, [bool; 2]> = HashMap::new();
        for t in g.tensor_names() {
            let (base_name, half) = match (t.strip_suffix(".lora_a"), t.strip_suffix(".lora_b")) {
                (Some(b), _) => (b, 0),
                (_, Some(b)) => (b, 1),
                _ => return Err(bad(format!("tensor `{t}` is not a LoRA tensor (`<base>.lora_a` or `.lora_b`)"))),
            };
            halves.entry(base_name.to_string()).or_default()[half] = true;
        }
        if halves.is_empty() {
            return Err(bad("the adapter holds no tensors".into()));
        }
        let mut names: Vec<_> = halves.into_iter().collect();
        names.sort();
        let mut layers: Vec<[Option<LoraPair>; PROJS.len()]> =
            (0..base.config.num_layers).map(|_| std::array::from_fn(|_| None)).collect();
        let (mut output, mut num_bytes, mut num_pairs) = (None, 0, 0);
        for (base_name, [has_a, has_b]) in names {
            if !(has_a && has_b) {
                let missing = if has_a { "lora_b" } else { "lora_a" };
                return Err(bad(format!("tensor `{base_name}.{missing}` is missing (each needs lora_a and lora_b)")));
            }
            let target = target_of(&base_name, base).ok_or_else(|| {
                bad(format!("tensor `{base_name}.lora_a`: the base model has no projection `{base_name}` to adapt"))
            })?;
            let (in_dim, out_dim) = match target {
                Target::Block(l, p) => {
                    let w = base.linear(l, p).expect("target_of checked it");
                    (w.in_dim(), w.out_dim())
                }
                Target::Output => (base.output.in_dim(), base.output.out_dim()),
            };
            let pair = read_pair(&mut g, &base_name, in_dim, out_dim, alpha).map_err(bad)?;
            num_bytes += (pair.rank * (in_dim + out_dim)) * 4;
            num_pairs += 1;
            match target {
                Target::Block(l, p) => layers[l][p.index()] = Some(pair),
                Target::Output => output = Some(pair),
            }
        }
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            path: path.to_string(),
            alpha,
            layers,
            output,
            num_bytes,
            num_pairs,
        })
    }

    /// Memory the adapter's matrices take.
    pub fn num_bytes(&self) -> usize {
        self.num_bytes
    }

    /// Adapted matrices.
    pub fn num_pairs(&self) -> usize {
        self.num_pairs
    }

    pub fn pair(&self, layer: usize, proj: Proj) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[proj.index()].as_ref())
    }

    pub fn output(&self) -> Option<&LoraPair> {
        self.output.as_ref()
    }
}

enum Target {
    Block(usize, Proj),
    Output,
}

fn target_of(base_name: &str, base: &Decoder) -> Option<Target> {
    if base_name == "output.weight" {
        return Some(Target::Output);
    }
    let rest = base_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let proj_name = rest.strip_suffix(".weight")?;
    let proj = PROJS.into_iter().find(|p| p.gguf_name() == proj_name)?;
    base.linear(layer, proj).map(|_| Target::Block(layer, proj))
}

fn read_pair(
    g: &mut Gguf,
    base_name: &str,
    in_dim: usize,
    out_dim: usize,
    alpha: f32,
) -> std::result::Result<LoraPair, String> {
    let read = |g: &mut Gguf, half: &str| -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
        let name = format!("{base_name}.{half}");
        let t = g.tensor(&name).map_err(|e| e.to_string())?;
        let dims = t.shape().dims().to_vec();
        let values = t
            .dequantize(&candle_core::Device::Cpu)
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.to_vec1::<f32>())
            .map_err(|e| format!("tensor `{name}`: cannot read it ({e})"))?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(format!("tensor `{name}` holds {v}"));
        }
        Ok((dims, values))
    };
    let (a_dims, a) = read(g, "lora_a")?;
    let (b_dims, b) = read(g, "lora_b")?;
    // candle's dims are outermost first: A is `rank × in`, B is `out × rank`.
    let rank = match a_dims.as_slice() {
        [r, i] if *i == in_dim && *r > 0 => *r,
        _ => return Err(format!("tensor `{base_name}.lora_a` has shape {a_dims:?}; expected [rank, {in_dim}]")),
    };
    if b_dims.as_slice() != [out_dim, rank] {
        return Err(format!("tensor `{base_name}.lora_b` has shape {b_dims:?}; expected [{out_dim}, {rank}]"));
    }
    if rank > in_dim.min(out_dim) {
        return Err(format!("tensor `{base_name}.lora_a`: rank {rank} exceeds the matrix it adapts"));
    }
    let alpha_scale = if alpha == 0.0 { 1.0 } else { alpha / rank as f32 };
    Ok(LoraPair {
        a: DenseWeights::from_f32(&a, rank, in_dim),
        b: DenseWeights::from_f32(&b, out_dim, rank),
        rank,
        in_dim,
        out_dim,
        alpha_scale,
    })
}

/// The adapters one request runs with, each with its scale, in adapter-id order (the order
/// their terms are added in). Adapters with scale 0 are left out.
pub struct LoraSet {
    entries: Vec<(Arc<LoraAdapter>, f32)>,
}

impl LoraSet {
    /// None when nothing is left (no adapter, or every scale 0): the base model.
    pub fn new(entries: Vec<(Arc<LoraAdapter>, f32)>) -> Option<Arc<Self>> {
        let mut entries: Vec<_> = entries.into_iter().filter(|(_, s)| *s != 0.0).collect();
        entries.sort_by_key(|(a, _)| a.id);
        entries.dedup_by(|b, a| {
            // The same adapter twice: one term with the scales summed.
            let same = a.0.id == b.0.id;
            if same {
                a.1 += b.1;
            }
            same
        });
        (!entries.is_empty()).then(|| Arc::new(Self { entries }))
    }

    pub fn entries(&self) -> &[(Arc<LoraAdapter>, f32)] {
        &self.entries
    }

    /// A prefix-cache salt: requests share cached blocks only with the same adapters and scales.
    pub fn salt(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (a, s) in &self.entries {
            (a.id, s.to_bits()).hash(&mut h);
        }
        h.finish()
    }
}

impl std::fmt::Debug for LoraSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|(a, s)| (&a.name, s))).finish()
    }
}

/// Adds every row's low-rank terms to `y` (`rows × out_dim`), `x` being the matmul's input
/// (`rows × in_dim`) and `row_sets[r]` row `r`'s adapters. `pick` chooses which of an
/// adapter's pairs applies here (one projection of one layer).
pub fn add_deltas<'a>(
    y: &mut [f32],
    x: &[f32],
    in_dim: usize,
    out_dim: usize,
    row_sets: &[Option<&'a LoraSet>],
    pick: impl Fn(&'a LoraAdapter) -> Option<&'a LoraPair>,
) {
    let mut adapters: Vec<&'a Arc<LoraAdapter>> =
        row_sets.iter().flatten().flat_map(|s| s.entries.iter().map(|(a, _)| a)).collect();
    if adapters.is_empty() {
        return;
    }
    adapters.sort_by_key(|a| a.id);
    adapters.dedup_by_key(|a| a.id);
    for adapter in adapters {
        let Some(p) = pick(adapter) else { continue };
        debug_assert!(p.in_dim == in_dim && p.out_dim == out_dim, "checked at load");
        let rows: Vec<(usize, f32)> = row_sets
            .iter()
            .enumerate()
            .filter_map(|(r, s)| (*s)?.entries.iter().find(|(a, _)| a.id == adapter.id).map(|(_, sc)| (r, *sc)))
            .collect();
        let m = rows.len();
        let mut xg = Vec::with_capacity(m * in_dim);
        for &(r, _) in &rows {
            xg.extend_from_slice(&x[r * in_dim..(r + 1) * in_dim]);
        }
        let mut t = vec![0f32; m * p.rank];
        p.a.matmul(&xg, m, &mut t);
        let mut d = vec![0f32; m * out_dim];
        p.b.matmul(&t, m, &mut d);
        for (i, &(r, scale)) in rows.iter().enumerate() {
            axpy(scale * p.alpha_scale, &d[i * out_dim..(i + 1) * out_dim], &mut y[r * out_dim..(r + 1) * out_dim]);
        }
    }
}
