//! `QLinear`, the one quantized linear type every model's matmuls go through, and
//! `QEmbedding`, row lookup in a quantized table. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
//! K-quants Q2_K–Q6_K (rows a multiple of 256) are repacked at load for slm's own kernels
//! (`kernels/`), F16 and F32 weights go to the float matmul (`dense.rs`); anything else (a
//! K-quant row not a multiple of 256) uses candle's row-wise `k_quants::matmul`.
//!
//! Batch invariance: each output element is computed from one activation row (quantized on its
//! own) and one weight row in a fixed order, so a row's result never depends on how many rows
//! share the call. That is why candle's `QMatMul::forward` is not used: it switches to a
//! repacked kernel when the row count passes a threshold (Q6_K at m > 1), which changes the
//! summation order.

use candle_core::quantized::k_quants::{self, *};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use std::sync::Arc;

use super::dense::DenseWeights;
use super::kernels;
use crate::error::{EngineError, Result};
use crate::loader::Gguf;
use crate::profile::{self, Op};

/// Runs `$body` with `$T` bound to the block type of `$dtype`, or returns `$unsupported`.
macro_rules! with_block_type {
    ($dtype:expr, $T:ident, $body:block, $unsupported:expr) => {
        match $dtype {
            GgmlDType::F32 => {
                type $T = f32;
                $body
            }
            GgmlDType::F16 => {
                type $T = f16;
                $body
            }
            GgmlDType::Q4_0 => {
                type $T = BlockQ4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $T = BlockQ4_1;
                $body
            }
            GgmlDType::Q5_0 => {
                type $T = BlockQ5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $T = BlockQ5_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $T = BlockQ8_0;
                $body
            }
            GgmlDType::Q2K => {
                type $T = BlockQ2K;
                $body
            }
            GgmlDType::Q3K => {
                type $T = BlockQ3K;
                $body
            }
            GgmlDType::Q4K => {
                type $T = BlockQ4K;
                $body
            }
            GgmlDType::Q5K => {
                type $T = BlockQ5K;
                $body
            }
            GgmlDType::Q6K => {
                type $T = BlockQ6K;
                $body
            }
            _ => $unsupported,
        }
    };
}

/// Raw quantized weight rows: `out_dim` rows of `in_dim` values, GGUF block layout. Shared
/// (`Arc`) so tied embeddings serve as the output projection without a copy.
#[derive(Clone)]
struct QWeight {
    tensor: Arc<QTensor>,
    dtype: GgmlDType,
    in_dim: usize,
    out_dim: usize,
}

/// Checks that a tensor of `dtype` with `dims` and `bytes` of data is a 2-D weight slm can
/// run: returns `(out_dim, in_dim)`. A crafted file may claim anything.
fn check_weight(dtype: GgmlDType, dims: &[usize], bytes: usize, name: &str, path: &str) -> Result<(usize, usize)> {
    let bad = |message: String| EngineError::Gguf { path: path.into(), message };
    let &[out_dim, in_dim] = dims else {
        return Err(bad(format!("tensor `{name}` should be 2-D, has shape {dims:?}")));
    };
    let values = out_dim
        .checked_mul(in_dim)
        .ok_or_else(|| bad(format!("tensor `{name}`: dims {out_dim} × {in_dim} overflow")))?;
    if values % dtype.block_size() != 0 {
        return Err(bad(format!("tensor `{name}`: {values} values are not whole {dtype:?} blocks")));
    }
    if Some(bytes) != (values / dtype.block_size()).checked_mul(dtype.type_size()) {
        return Err(bad(format!("tensor `{name}`: {bytes} bytes of data for {out_dim} × {in_dim} {dtype:?} values")));
    }
    // For f32 and f16 the block is one value: the modulo is trivially 0 there.
    #[allow(clippy::modulo_one)]
    let supported = with_block_type!(dtype, T, { in_dim % T::BLCK_SIZE == 0 }, false);
    if !supported {
        return Err(EngineError::UnsupportedQuant {
            path: path.into(),
            name: name.into(),
            dtype: format!("{dtype:?} (row length {in_dim})"),
        });
    }
    Ok((out_dim, in_dim))
}

impl QWeight {
    fn new(tensor: QTensor, name: &str, path: &str) -> Result<Self> {
        let dtype = tensor.dtype();
        let bytes = tensor.data().map(|d| d.len()).unwrap_or(0);
        let (out_dim, in_dim) = check_weight(dtype, tensor.shape().dims(), bytes, name, path)?;
        Ok(Self { tensor: Arc::new(tensor), dtype, in_dim, out_dim })
    }

    fn blocks<T: GgufBlock>(&self) -> &[T] {
        tensor_blocks(&self.tensor)
    }
}

/// A type whose values are the blocks of a GGUF tensor of type `DTYPE`, exactly as the file
/// lays them out.
///
/// # Safety
/// Implementors must be plain data of `DTYPE.type_size()` bytes in ggml's block layout
/// (`repr(C)`, no padding, no pointers, every bit pattern valid), so that a tensor's bytes of
/// that dtype can be viewed as a slice of them.
pub(crate) unsafe trait GgufBlock: Sized {
    const DTYPE: GgmlDType;
}

macro_rules! gguf_blocks {
    ($($T:ty => $dtype:ident),* $(,)?) => {
        // SAFETY: candle's block types (and f32/f16) are ggml's `repr(C)` blocks of these
        // dtypes; slm's kernel blocks mirror them field for field (sizes asserted in blocks.rs).
        $(unsafe impl GgufBlock for $T { const DTYPE: GgmlDType = GgmlDType::$dtype; })*
    };
}

gguf_blocks!(
    f32 => F32, f16 => F16, BlockQ4_0 => Q4_0, BlockQ4_1 => Q4_1, BlockQ5_0 => Q5_0, BlockQ5_1 => Q5_1,
    BlockQ8_0 => Q8_0, BlockQ2K => Q2K, BlockQ3K => Q3K, BlockQ4K => Q4K, BlockQ5K => Q5K, BlockQ6K => Q6K,
    kernels::BlockQ4_0 => Q4_0, kernels::BlockQ4_1 => Q4_1, kernels::BlockQ5_0 => Q5_0, kernels::BlockQ5_1 => Q5_1,
    kernels::BlockQ8_0 => Q8_0, kernels::BlockQ2K => Q2K, kernels::BlockQ3K => Q3K, kernels::BlockQ4K => Q4K,
    kernels::BlockQ5K => Q5K, kernels::BlockQ6K => Q6K,
);

/// The blocks of a quantized tensor of `T`'s dtype, borrowed from candle's CPU storage.
/// Panics on a tensor of another dtype or an inconsistent length: the caller chose `T` from
/// the tensor's dtype, so either is a bug, never a property of the file.
pub(crate) fn tensor_blocks<T: GgufBlock>(tensor: &QTensor) -> &[T] {
    assert_eq!(tensor.dtype(), T::DTYPE, "tensor_blocks: tensor is {:?}, not {:?}", tensor.dtype(), T::DTYPE);
    let bytes = tensor.data().expect("cpu tensor data");
    let std::borrow::Cow::Borrowed(bytes) = bytes else { panic!("quantized CPU storage is expected to be borrowed") };
    let n = tensor.shape().elem_count() / T::DTYPE.block_size();
    assert_eq!(bytes.len(), n * std::mem::size_of::<T>(), "tensor of {n} {:?} blocks", T::DTYPE);
    bytes_as_blocks(bytes).expect("candle's block storage is aligned")
}

/// `bytes` as blocks of `T`, or None when they are not aligned for `T` (a mapped file whose
/// tensor offsets ignore the GGUF alignment). Panics unless `bytes` is whole blocks.
pub(crate) fn bytes_as_blocks<T: GgufBlock>(bytes: &[u8]) -> Option<&[T]> {
    assert_eq!(std::mem::size_of::<T>(), T::DTYPE.type_size(), "block size of {:?}", T::DTYPE);
    assert_eq!(bytes.len() % std::mem::size_of::<T>(), 0, "bytes of whole {:?} blocks", T::DTYPE);
    let n = bytes.len() / std::mem::size_of::<T>();
    if !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return None;
    }
    assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0, "misaligned {:?} blocks", T::DTYPE);
    // SAFETY: `bytes` holds exactly `n` blocks of `T::DTYPE` (checked above), aligned for
    // `T`, and `T: GgufBlock` may be any bit pattern of that layout; the borrow keeps them.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, n) })
}

pub struct QLinear {
    in_dim: usize,
    out_dim: usize,
    dtype: GgmlDType,
    /// The GGUF weights, kept only for types slm's kernels do not take (the packed copy
    /// replaces them, so memory is not doubled).
    w: Option<QWeight>,
    /// The weights repacked for slm's kernels (see `pack`); candle's serve the rest.
    /// Shared with a tied embedding table.
    packed: Option<Arc<kernels::PackedWeights>>,
    /// F16 and F32 weights, for the float matmul (dense.rs).
    dense: Option<DenseWeights>,
    bias: Option<Vec<f32>>,
    profile_op: Op,
}

fn dense(w: &QWeight) -> Option<DenseWeights> {
    match w.dtype {
        GgmlDType::F16 => Some(DenseWeights::from_f16(w.blocks::<f16>(), w.out_dim, w.in_dim)),
        GgmlDType::F32 => Some(DenseWeights::from_f32(w.blocks::<f32>(), w.out_dim, w.in_dim)),
        _ => None,
    }
}

fn pack(w: &QWeight) -> Option<Arc<kernels::PackedWeights>> {
    let bytes = w.tensor.data().ok()?;
    pack_bytes(w.dtype, &bytes, w.out_dim, w.in_dim)
}

/// Evaluates `$e` with `$T` the kernels' block type for `dtype` (K-quants only for rows of a
/// multiple of 256 values); None for a type they do not take.
macro_rules! with_kernel_block {
    ($dtype:expr, $k:expr, $T:ident, $e:expr) => {{
        let kq = $k.is_multiple_of(256);
        match $dtype {
            GgmlDType::Q4_0 => {
                type $T = kernels::BlockQ4_0;
                Some($e)
            }
            GgmlDType::Q4_1 => {
                type $T = kernels::BlockQ4_1;
                Some($e)
            }
            GgmlDType::Q5_0 => {
                type $T = kernels::BlockQ5_0;
                Some($e)
            }
            GgmlDType::Q5_1 => {
                type $T = kernels::BlockQ5_1;
                Some($e)
            }
            GgmlDType::Q8_0 => {
                type $T = kernels::BlockQ8_0;
                Some($e)
            }
            GgmlDType::Q2K if kq => {
                type $T = kernels::BlockQ2K;
                Some($e)
            }
            GgmlDType::Q3K if kq => {
                type $T = kernels::BlockQ3K;
                Some($e)
            }
            GgmlDType::Q4K if kq => {
                type $T = kernels::BlockQ4K;
                Some($e)
            }
            GgmlDType::Q5K if kq => {
                type $T = kernels::BlockQ5K;
                Some($e)
            }
            GgmlDType::Q6K if kq => {
                type $T = kernels::BlockQ6K;
                Some($e)
            }
            _ => None,
        }
    }};
}

/// Repacks `n × k` weights of `dtype` for slm's kernels; None for a type (or row length)
/// they do not take, or bytes not aligned for the block type.
fn pack_bytes(dtype: GgmlDType, bytes: &[u8], n: usize, k: usize) -> Option<Arc<kernels::PackedWeights>> {
    with_kernel_block!(dtype, k, T, bytes_as_blocks::<T>(bytes).map(|b| kernels::PackedWeights::pack(b, n, k)))
        .flatten()
        .map(Arc::new)
}

/// The shape `n × k` weights of `dtype` pack to (the pack cache checks stored weights by it).
pub fn layout_for(dtype: GgmlDType, n: usize, k: usize) -> Option<kernels::Layout> {
    with_kernel_block!(dtype, k, T, kernels::Layout::of::<T>(n, k))
}

/// Repacks tensor `name` straight from the mapped file, when the kernels take its type:
/// no copy of the file's bytes is made. None: load it through candle instead.
/// A weight the pack cache holds is taken from it instead; one packed here is recorded in it.
fn pack_in_place(g: &Gguf, name: &str) -> Result<Option<(Arc<kernels::PackedWeights>, GgmlDType)>> {
    let Some(v) = g.view(name)? else { return Ok(None) };
    let (n, k) = check_weight(v.dtype, &v.dims, v.bytes.len(), name, &g.path)?;
    if let Some(hit) = g.pack_cache.as_ref().and_then(|c| c.take(name, v.dtype, n, k)) {
        return Ok(Some((hit, v.dtype)));
    }
    let packed = pack_bytes(v.dtype, v.bytes, n, k);
    if let (Some(c), Some(p)) = (&g.pack_cache, &packed) {
        c.record(name, v.dtype, p.clone());
    }
    Ok(packed.map(|p| (p, v.dtype)))
}

impl QLinear {
    pub fn new(weight: QTensor, bias: Option<Vec<f32>>, name: &str, path: &str) -> Result<Self> {
        let w = QWeight::new(weight, name, path)?;
        if let Some(b) = &bias {
            if b.len() != w.out_dim {
                return Err(EngineError::Gguf {
                    path: path.into(),
                    message: format!("bias of `{name}` has {} values, expected {}", b.len(), w.out_dim),
                });
            }
        }
        Ok(Self::from_weight(w, bias))
    }

    /// Loads weight `name` (and its bias), repacking it in place from the mapped file when
    /// the kernels take its type.
    pub fn load(g: &mut Gguf, name: &str, bias: Option<Vec<f32>>) -> Result<Self> {
        match pack_in_place(g, name)? {
            Some((packed, dtype)) => Self::from_packed(packed, dtype, bias, name, &g.path),
            None => Self::new(g.tensor(name)?, bias, name, &g.path),
        }
    }

    fn from_packed(
        packed: Arc<kernels::PackedWeights>,
        dtype: GgmlDType,
        bias: Option<Vec<f32>>,
        name: &str,
        path: &str,
    ) -> Result<Self> {
        if let Some(b) = bias.as_ref().filter(|b| b.len() != packed.n) {
            return Err(EngineError::Gguf {
                path: path.into(),
                message: format!("bias of `{name}` has {} values, expected {}", b.len(), packed.n),
            });
        }
        Ok(Self {
            in_dim: packed.k,
            out_dim: packed.n,
            dtype,
            profile_op: Op::for_dtype(&dtype),
            w: None,
            packed: Some(packed),
            dense: None,
            bias,
        })
    }

    fn from_weight(w: QWeight, bias: Option<Vec<f32>>) -> Self {
        let packed = pack(&w);
        let dense = if packed.is_none() { dense(&w) } else { None };
        Self {
            in_dim: w.in_dim,
            out_dim: w.out_dim,
            dtype: w.dtype,
            profile_op: Op::for_dtype(&w.dtype),
            w: (packed.is_none() && dense.is_none()).then_some(w),
            packed,
            dense,
            bias,
        }
    }

    /// Accounts this layer's time under `op` instead of its weight type (the output layer).
    pub fn with_profile_op(mut self, op: Op) -> Self {
        self.profile_op = op;
        self
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// `x`: `rows × in_dim` row-major; returns `rows × out_dim`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let _span = tracing::trace_span!("qlinear", rows, n = self.out_dim, k = self.in_dim).entered();
        let _timer = profile::timer(self.profile_op);
        let (k, n) = (self.in_dim, self.out_dim);
        assert_eq!(x.len(), rows * k, "qlinear input has the wrong length");
        let mut out = vec![0f32; rows * n];
        if rows == 0 {
            return out;
        }
        match (&self.packed, &self.dense) {
            (Some(p), _) => kernels::matmul(p, x, rows, &mut out),
            (None, Some(d)) => d.matmul(x, rows, &mut out),
            (None, None) => with_block_type!(
                self.dtype,
                T,
                {
                    let w = self.w.as_ref().expect("kept when not packed");
                    k_quants::matmul::<T>((rows, k, n), x, w.blocks::<T>(), &mut out).expect("quantized matmul");
                },
                unreachable!("dtype checked at load")
            ),
        }
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(n) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += *b;
                }
            }
        }
        out
    }
}

/// A token-embedding table kept quantized; rows are dequantized on lookup. Tied to the output
/// projection, it reads the projection's packed copy, so the model holds the table once.
pub struct QEmbedding {
    w: EmbedSource,
    vocab_size: usize,
    dim: usize,
}

enum EmbedSource {
    File(QWeight),
    Packed(Arc<kernels::PackedWeights>),
}

impl QEmbedding {
    pub fn new(weight: QTensor, name: &str, path: &str) -> Result<Self> {
        let w = QWeight::new(weight, name, path)?;
        Ok(Self { vocab_size: w.out_dim, dim: w.in_dim, w: EmbedSource::File(w) })
    }

    /// A table that is also the output projection (tied embeddings), loaded once: repacked
    /// in place when the kernels take its type, else through candle (`tie_output`).
    pub fn load_tied(g: &mut Gguf, name: &str) -> Result<(Self, QLinear)> {
        if let Some((packed, dtype)) = pack_in_place(g, name)? {
            let table = Self { vocab_size: packed.n, dim: packed.k, w: EmbedSource::Packed(packed.clone()) };
            return Ok((table, QLinear::from_packed(packed, dtype, None, name, &g.path)?));
        }
        let mut table = Self::new(g.tensor(name)?, name, &g.path)?;
        let output = table.tie_output();
        Ok((table, output))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Writes the embedding of each token into consecutive rows of the result.
    pub fn lookup(&self, tokens: &[u32]) -> Vec<f32> {
        let d = self.dim;
        let mut out = vec![0f32; tokens.len() * d];
        match &self.w {
            EmbedSource::Packed(p) => {
                for (row, &t) in out.chunks_exact_mut(d).zip(tokens) {
                    p.dequantize_column(t as usize, row);
                }
            }
            EmbedSource::File(w) => with_block_type!(
                w.dtype,
                T,
                {
                    let blocks = w.blocks::<T>();
                    let per_row = d / T::BLCK_SIZE;
                    for (row, &t) in out.chunks_exact_mut(d).zip(tokens) {
                        let t = t as usize;
                        T::to_float(&blocks[t * per_row..(t + 1) * per_row], row);
                    }
                },
                unreachable!("dtype checked at load")
            ),
        }
        out
    }

    /// The same table as the output projection (tied embeddings). When the kernels pack it,
    /// lookups move to the packed copy (the same values, bit for bit) and the file's copy is
    /// dropped.
    pub fn tie_output(&mut self) -> QLinear {
        let EmbedSource::File(w) = &self.w else { unreachable!("an embedding is tied once") };
        let linear = QLinear::from_weight(w.clone(), None);
        if let Some(p) = &linear.packed {
            self.w = EmbedSource::Packed(p.clone());
        }
        linear
    }
}
