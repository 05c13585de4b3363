//! LoRA adapters: low-rank updates to a base model's projections, in llama.cpp's GGUF adapter
//! format (`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, a pair
//! `<base tensor>.lora_a` / `.lora_b` per adapted matrix, as `convert_lora_to_gguf.py` writes
//! them). `LoraAdapter::load` checks a file against the base `Decoder` (architecture, tensor
//! names, shapes) and keeps each pair as f32 dense matrices; a request carries a `LoraSet`
//! (adapters with scales); the decoder calls `add_deltas` after each base matmul.
//!
//! Execution: the base matmul has already run once over every row of the step; here each row
//! adds its own adapters' low-rank terms, `y += scale · B·(A·x)` with llama.cpp's scale
//! (`scale · alpha / rank`, or `scale` when alpha is 0). A rank-r term is tiny work (r dot
//! products of the input width, then r scaled columns of B added), so it runs row by row —
//! rows split over the worker pool when there are several — from `A` row-major and `B`
//! transposed, both read straight through: one pool call per projection instead of two
//! matmuls, which at one decoding row cost more in dispatch than in arithmetic. Batch
//! invariance: a row's terms are computed from that row alone, its adapters applied in one
//! fixed order (adapter id, which a `LoraSet` sorts by), so a row's result depends only on its
//! own tokens and adapters — never on which adapters, or how many base rows, share the step,
//! nor on how the rows are split. Rows without an adapter are not touched at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::layers::pool::Pool;
use crate::layers::vecmath::{axpy, dot};
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

/// One adapted matrix: `A` (`rank × in`, row-major) and `B` transposed (`rank × out`).
pub struct LoraPair {
    a: Vec<f32>,
    bt: Vec<f32>,
    rank: usize,
    in_dim: usize,
    out_dim: usize,
    /// `alpha / rank`, or 1 when the file's alpha is 0 (llama.cpp's rule).
    alpha_scale: f32,
}

impl LoraPair {
    /// `y += scale · B·(A·x)` for one row, in a fixed order: the `rank` dot products, then
    /// B's columns added one after the other.
    fn add_row(&self, x: &[f32], scale: f32, y: &mut [f32]) {
        let (i, o) = (self.in_dim, self.out_dim);
        for (a_r, bt_r) in self.a.chunks_exact(i).zip(self.bt.chunks_exact(o)) {
            axpy(scale * dot(a_r, x), bt_r, y);
        }
    }
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
    let mut bt = vec![0f32; rank * out_dim];
    for (o, row) in b.chunks_exact(rank).enumerate() {
        for (r, v) in row.iter().enumerate() {
            bt[r * out_dim + o] = *v;
        }
    }
    Ok(LoraPair { a, bt, rank, in_dim, out_dim, alpha_scale })
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
    pick: impl Fn(&'a LoraAdapter) -> Option<&'a LoraPair> + Sync,
) {
    let rows = row_sets.len();
    let any = row_sets.iter().flatten().any(|s| s.entries.iter().any(|(a, _)| pick(a).is_some()));
    if !any {
        return;
    }
    let row = |r: usize, y_row: &mut [f32]| {
        let Some(set) = row_sets[r] else { return };
        for (adapter, scale) in &set.entries {
            if let Some(p) = pick(adapter) {
                debug_assert!(p.in_dim == in_dim && p.out_dim == out_dim, "checked at load");
                p.add_row(&x[r * in_dim..(r + 1) * in_dim], scale * p.alpha_scale, y_row);
            }
        }
    };
    // Contiguous shares of rows, one lock each (uncontended: every share has one task).
    let per_share = rows.div_ceil(4 * Pool::global().num_threads()).max(1);
    let shares: Vec<std::sync::Mutex<&mut [f32]>> =
        y[..rows * out_dim].chunks_mut(per_share * out_dim).map(std::sync::Mutex::new).collect();
    Pool::global().run(shares.len(), &|range| {
        for s in range {
            let mut ys = shares[s].lock().unwrap_or_else(|e| e.into_inner());
            for (i, y_row) in ys.chunks_mut(out_dim).enumerate() {
                row(s * per_share + i, y_row);
            }
        }
    });
}
