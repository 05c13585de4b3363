//! Paged causal attention for a flattened batch. Each query row reads its own sequence's keys
//! through the block table, from its window start to its own position, in position order:
//! a row's output is computed the same way whatever else is in the batch and however its
//! prompt was chunked, because the K/V of every earlier position is already in the cache.
//!
//! The cache keeps each block's keys for one KV head transposed (dimension-major, one lane per
//! slot) and its values row-major, each 2 KB contiguous at 16 slots × 64 dims in f16
//! (`kv_cache`; widened to f32 on load, exactly).
//! So the scores of 16 slots are one vector accumulated over the head dimension with no
//! horizontal sums, and the query heads that share a KV head (grouped-query attention) each
//! keep an accumulator in registers against the same loaded key or value vector. The next
//! block is prefetched while one is used: blocks are scattered, so the hardware prefetcher
//! cannot follow a sequence from one to the next. Every score, exponential and sum is computed
//! lane by lane with `mul_add` in a fixed order (positions ascending), so the AVX-512 build
//! equals the AVX2 build bit for bit, and a row's result does not depend on the batch.

use super::kernels::{detected_level, Level};
use super::lanes::{KvElem, Lanes};
use super::pool::Pool;
use super::vecmath::{exp, reduce};
use crate::batch::BatchInput;
use crate::kv_cache::{KvData, LayerKv};
use crate::kv_quant::{dequantize_keys, dequantize_values, hadamard, rotations, QuantizedKv};

#[derive(Debug, Clone)]
pub struct AttentionParams {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Soft-capping of scores (Gemma 2): `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
}

/// Slots scored together: one 512-bit vector of f32.
const LANES: usize = 16;

thread_local! {
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `q`: `rows × num_heads*head_dim` (already rotated); returns the same shape.
pub fn paged_attention(
    q: &[f32],
    batch: &BatchInput,
    kv: &LayerKv,
    block_size: usize,
    p: &AttentionParams,
) -> Vec<f32> {
    let _span = tracing::trace_span!("attention", rows = batch.num_rows()).entered();
    let _timer = crate::profile::timer(crate::profile::Op::Attention);
    let (bs, nkv, hd) = (block_size, p.num_kv_heads, p.head_dim);
    match (&kv.k, &kv.v) {
        (KvData::F16(k), KvData::F16(v)) => attention_over(q, batch, &InPlace { k, v, bs, nkv, hd }, p),
        (KvData::F32(k), KvData::F32(v)) => attention_over(q, batch, &InPlace { k, v, bs, nkv, hd }, p),
        (KvData::Q8_0(k), KvData::Q8_0(v)) => rotated_attention(q, batch, &Dequantized { k, v, bs, nkv, hd }, p),
        (KvData::Q4_0(k), KvData::Q4_0(v)) => rotated_attention(q, batch, &Dequantized { k, v, bs, nkv, hd }, p),
        _ => unreachable!("keys and values share one type"),
    }
}

/// A quantized cache holds rotated keys and values (`kv_quant::rotations`): the queries are
/// rotated alike, and the output back.
fn rotated_attention<S: KvSource>(q: &[f32], batch: &BatchInput, src: &S, p: &AttentionParams) -> Vec<f32> {
    let (k_rot, v_rot) = rotations(p.head_dim);
    let mut rotated = q.to_vec();
    if let Some(n) = k_rot {
        hadamard(&mut rotated, n);
    }
    let mut out = attention_over(&rotated, batch, src, p);
    if let Some(n) = v_rot {
        hadamard(&mut out, n);
    }
    out
}

/// Where a task's keys and values come from: a float cache read in place, or a quantized cache
/// dequantized block by block into the task's thread's scratch (exactly `q · d`, so the
/// kernels below see the same values whatever else is in the batch).
trait KvSource: Sync {
    type Elem: KvElem;
    /// Rows of one sequence a task takes: 1 where reading a head costs nothing (the most
    /// tasks), more where `with_head` dequantizes (once for all of them).
    const ROWS_PER_TASK: usize;
    /// Calls `f` with KV head `kvh` of the sequence whose block table is `table`, covering
    /// positions `lo..=pos`.
    fn with_head(&self, table: &[u32], kvh: usize, lo: usize, pos: usize, f: &mut dyn FnMut(&HeadView<Self::Elem>));
}

struct InPlace<'a, E> {
    k: &'a [E],
    v: &'a [E],
    bs: usize,
    nkv: usize,
    hd: usize,
}

impl<E: KvElem> KvSource for InPlace<'_, E> {
    type Elem = E;
    const ROWS_PER_TASK: usize = 1;
    fn with_head(&self, table: &[u32], kvh: usize, _: usize, _: usize, f: &mut dyn FnMut(&HeadView<E>)) {
        f(&HeadView { k: self.k, v: self.v, table, block_size: self.bs, num_kv_heads: self.nkv, kvh, hd: self.hd })
    }
}

struct Dequantized<'a, Q> {
    k: &'a Q,
    v: &'a Q,
    bs: usize,
    nkv: usize,
    hd: usize,
}

thread_local! {
    /// Dequantized keys, values and the block table over them (logical block → scratch block).
    static DEQUANT: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<u32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl<Q: QuantizedKv> KvSource for Dequantized<'_, Q> {
    type Elem = f32;
    /// A prefill chunk of 512 rows dequantizes its sequence's blocks 16 times per KV head,
    /// not 512, and still makes 16 tasks per head for the pool.
    const ROWS_PER_TASK: usize = 32;
    fn with_head(&self, table: &[u32], kvh: usize, lo: usize, pos: usize, f: &mut dyn FnMut(&HeadView<f32>)) {
        let (bs, hd) = (self.bs, self.hd);
        let (first, last, n) = (lo / bs, pos / bs, hd * bs);
        DEQUANT.with(|d| {
            let (keys, values, scratch_table) = &mut *d.borrow_mut();
            keys.resize((last + 1 - first) * n, 0.0);
            values.resize((last + 1 - first) * n, 0.0);
            scratch_table.clear();
            scratch_table.resize(last + 1, 0);
            for b in first..=last {
                let i = b - first;
                scratch_table[b] = i as u32;
                let block = table[b] as usize;
                dequantize_keys(self.k, block, self.nkv, kvh, hd, bs, &mut keys[i * n..(i + 1) * n]);
                dequantize_values(self.v, block, self.nkv, kvh, hd, bs, &mut values[i * n..(i + 1) * n]);
            }
            f(&HeadView { k: keys, v: values, table: scratch_table, block_size: bs, num_kv_heads: 1, kvh: 0, hd })
        })
    }
}

fn attention_over<S: KvSource>(q: &[f32], batch: &BatchInput, src: &S, p: &AttentionParams) -> Vec<f32> {
    let hd = p.head_dim;
    let q_dim = p.num_heads * hd;
    let group = p.num_heads / p.num_kv_heads;
    let mut out = vec![0f32; batch.num_rows() * q_dim];
    let out_ptr = out.as_mut_ptr() as usize;
    let window = |row: usize| {
        let pos = batch.positions[row] as usize;
        let lo = match p.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        (lo, pos)
    };
    // One task per (run of rows of one sequence, KV head): a decode step of one sequence still
    // uses every core, and a quantized cache's blocks are dequantized once per run.
    let num_kv = p.num_kv_heads;
    let mut runs = row_runs(&batch.row_seq, S::ROWS_PER_TASK);
    if runs.len() * num_kv < Pool::global().num_threads() {
        // Too few tasks for the cores (a few rows of one sequence): a row each.
        runs = row_runs(&batch.row_seq, 1);
    }
    let task = |run: &std::ops::Range<usize>, kvh: usize| {
        let (lo, pos) = run.clone().map(window).fold((usize::MAX, 0), |(l, h), (lo, pos)| (l.min(lo), h.max(pos)));
        let table = &batch.block_tables[batch.row_seq[run.start]];
        src.with_head(table, kvh, lo, pos, &mut |head| {
            for row in run.clone() {
                // SAFETY: each task writes its own rows' heads of this KV head, disjoint from
                // the others'.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add(row * q_dim + kvh * group * hd),
                        group * hd,
                    )
                };
                let (lo, pos) = window(row);
                let qh = &q[row * q_dim + kvh * group * hd..row * q_dim + (kvh + 1) * group * hd];
                SCORES.with(|s| {
                    let s = &mut s.borrow_mut();
                    // SAFETY: each level is only reported when the CPU has its features.
                    match detected_level() {
                        #[cfg(target_arch = "x86_64")]
                        Level::Avx512Vnni => unsafe { attend_avx512(head, qh, lo, pos, p, s, o) },
                        #[cfg(target_arch = "x86_64")]
                        Level::Avx2 | Level::AvxVnni => unsafe { attend_avx2(head, qh, lo, pos, p, s, o) },
                        #[cfg(target_arch = "aarch64")]
                        Level::Neon | Level::NeonDot | Level::NeonI8mm => unsafe {
                            attend_neon(head, qh, lo, pos, p, s, o)
                        },
                        _ => unsafe { attend::<[f32; LANES], S::Elem, 4, 2, 2>(head, qh, lo, pos, p, s, o) },
                    }
                })
            }
        });
    };
    Pool::global().run(runs.len() * num_kv, &|tasks| tasks.for_each(|t| task(&runs[t / num_kv], t % num_kv)));
    out
}

/// The batch's rows as runs of consecutive rows of one sequence, at most `max` rows each.
fn row_runs(row_seq: &[usize], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (row, &seq) in row_seq.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if row_seq[r.start] == seq && r.len() < max => r.end = row + 1,
            _ => runs.push(row..row + 1),
        }
    }
    runs
}

/// One sequence's keys and values for one KV head.
struct HeadView<'a, E> {
    k: &'a [E],
    v: &'a [E],
    table: &'a [u32],
    block_size: usize,
    num_kv_heads: usize,
    kvh: usize,
    hd: usize,
}

impl<E: KvElem> HeadView<'_, E> {
    #[inline(always)]
    fn block_range(&self, b: usize) -> std::ops::Range<usize> {
        let n = self.hd * self.block_size;
        let first = (self.table[b] as usize * self.num_kv_heads + self.kvh) * n;
        first..first + n
    }

    /// Keys of logical block `b`, transposed: `hd` rows of `block_size` slots.
    #[inline(always)]
    fn keys(&self, b: usize) -> &[E] {
        &self.k[self.block_range(b)]
    }

    /// Values of logical block `b`: `block_size` rows of `hd`.
    #[inline(always)]
    fn values(&self, b: usize) -> &[E] {
        &self.v[self.block_range(b)]
    }
}

/// Asks for `data` to be brought into cache (a hint: no effect on results).
#[inline(always)]
fn prefetch<E>(data: &[E]) {
    for line in data.chunks(64 / std::mem::size_of::<E>()) {
        super::kernels::prefetch_line(line.as_ptr() as *const i8);
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VL (`Level::Avx512Vnni`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn attend_avx512<E: KvElem>(
    kv: &HeadView<E>,
    qh: &[f32],
    lo: usize,
    pos: usize,
    p: &AttentionParams,
    scratch: &mut Vec<f32>,
    o: &mut [f32],
) {
    attend::<std::arch::x86_64::__m512, E, 8, 4, 4>(kv, qh, lo, pos, p, scratch, o)
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (`Level::Avx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<E: KvElem>(
    kv: &HeadView<E>,
    qh: &[f32],
    lo: usize,
    pos: usize,
    p: &AttentionParams,
    scratch: &mut Vec<f32>,
    o: &mut [f32],
) {
    attend::<super::lanes::Avx2x2, E, 4, 2, 2>(kv, qh, lo, pos, p, scratch, o)
}

/// # Safety
/// NEON: every aarch64 has it.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn attend_neon<E: KvElem>(
    kv: &HeadView<E>,
    qh: &[f32],
    lo: usize,
    pos: usize,
    p: &AttentionParams,
    scratch: &mut Vec<f32>,
    o: &mut [f32],
) {
    attend::<super::lanes::Neon4, E, 4, 2, 2>(kv, qh, lo, pos, p, scratch, o)
}

/// The group's heads (`qh`: `group × hd`) attend to positions `lo..=pos`; writes `o`. Up to
/// `SH` heads are scored against each loaded key vector; up to `VH` heads × `VC` vectors of
/// the head dimension accumulate values in registers (sized to the register file).
///
/// # Safety
/// The CPU must have `L`'s features (see `Lanes`). Every access is bounds-checked.
#[inline(always)]
unsafe fn attend<L: Lanes, E: KvElem, const SH: usize, const VH: usize, const VC: usize>(
    kv: &HeadView<E>,
    qh: &[f32],
    lo: usize,
    pos: usize,
    p: &AttentionParams,
    scratch: &mut Vec<f32>,
    o: &mut [f32],
) {
    let hd = kv.hd;
    let group = qh.len() / hd;
    let n = pos + 1 - lo;
    let bs = kv.block_size;
    let blocks = lo / bs..=pos / bs;
    scratch.clear();
    // The scores, then each head's sum of exponentials.
    scratch.resize(group * n + group, 0.0);
    let (scores, sums) = scratch.split_at_mut(group * n);
    for b in blocks.clone() {
        if b < *blocks.end() {
            prefetch(kv.keys(b + 1));
        }
        let keys = kv.keys(b);
        // Slots of this block inside lo..=pos.
        let (first, last) = (lo.max(b * bs) - b * bs, pos.min(b * bs + bs - 1) - b * bs);
        let mut c = first / LANES * LANES;
        while c <= last {
            let width = LANES.min(bs - c);
            let mut lanes = [[0f32; LANES]; 8];
            for h0 in (0..group).step_by(SH) {
                let heads = SH.min(group - h0);
                let qs = &qh[h0 * hd..(h0 + heads) * hd];
                if width == LANES {
                    macro_rules! score {
                        ($($h:literal)*) => {
                            match heads {
                                $($h => score_lanes::<L, E, $h>(qs, hd, keys, bs, c, &mut lanes),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    score!(1 2 3 4 5 6 7 8)
                } else {
                    score_lanes_partial(qs, heads, hd, keys, bs, c, width, &mut lanes);
                }
                for (h, lanes) in lanes.iter().enumerate().take(heads) {
                    for l in first.max(c)..=last.min(c + width - 1) {
                        let mut v = lanes[l - c] * p.scale;
                        if let Some(cap) = p.softcap {
                            v = cap * (v / cap).tanh();
                        }
                        scores[(h0 + h) * n + b * bs + l - lo] = v;
                    }
                }
            }
            c += LANES;
        }
    }
    for (sc, sum) in scores.chunks_exact_mut(n).zip(sums.iter_mut()) {
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut lanes = [0f32; LANES];
        let mut chunks = sc.chunks_exact_mut(LANES);
        for ch in &mut chunks {
            for (l, s) in lanes.iter_mut().zip(ch.iter_mut()) {
                *s = exp(*s - max);
                *l += *s;
            }
        }
        for (l, s) in lanes.iter_mut().zip(chunks.into_remainder()) {
            *s = exp(*s - max);
            *l += *s;
        }
        *sum = reduce(lanes);
    }
    // Weighted values, `VC` vectors of the head dimension at a time; a last part narrower
    // than a vector goes lane by lane with the same arithmetic.
    let mut c = 0;
    while c < hd {
        let chunks = VC.min((hd - c) / LANES);
        for h0 in (0..group).step_by(VH) {
            let heads = VH.min(group - h0);
            let w = &scores[h0 * n..(h0 + heads) * n];
            let (o, sums) = (&mut o[h0 * hd..(h0 + heads) * hd], &sums[h0..h0 + heads]);
            macro_rules! values {
                ($(($h:literal, $c:literal))*) => {
                    match (heads, chunks) {
                        $(($h, $c) => value_lanes::<L, E, $h, $c>(w, kv, lo, pos, c, sums, o),)*
                        (_, 0) => value_lanes_partial(w, heads, kv, lo, pos, c, sums, o),
                        _ => unreachable!(),
                    }
                };
            }
            values!((1, 1)(1, 2)(1, 3)(1, 4)(2, 1)(2, 2)(2, 3)(2, 4)(3, 1)(3, 2)(3, 3)(3, 4)(4, 1)(4, 2)(4, 3)(4, 4))
        }
        c += if chunks == 0 { hd - c } else { chunks * LANES };
    }
}

/// Unnormalized scores of slots `c..c + 16` of a block for `H` heads: per head and slot,
/// `Σ_d q[d]·k[d]` accumulated over `d` in order with `mul_add`.
///
/// # Safety
/// The CPU must have `L`'s features (see `Lanes`).
#[inline(always)]
unsafe fn score_lanes<L: Lanes, E: KvElem, const H: usize>(
    qs: &[f32],
    hd: usize,
    keys: &[E],
    bs: usize,
    c: usize,
    out: &mut [[f32; LANES]; 8],
) {
    let mut acc = [L::zero(); H];
    for d in 0..hd {
        let k: L = E::load(&keys[d * bs + c..d * bs + c + LANES]);
        for (h, a) in acc.iter_mut().enumerate() {
            *a = a.fma(L::splat(qs[h * hd + d]), k);
        }
    }
    for (a, o) in acc.iter().zip(out.iter_mut()) {
        a.store(o);
    }
}

/// `score_lanes` for a block narrower than 16 slots: the same per-lane arithmetic.
#[allow(clippy::too_many_arguments)]
fn score_lanes_partial<E: KvElem>(
    qs: &[f32],
    heads: usize,
    hd: usize,
    keys: &[E],
    bs: usize,
    c: usize,
    width: usize,
    out: &mut [[f32; LANES]; 8],
) {
    for (h, lanes) in out.iter_mut().enumerate().take(heads) {
        for (l, a) in lanes.iter_mut().enumerate().take(width) {
            let mut s = 0f32;
            for d in 0..hd {
                s = qs[h * hd + d].mul_add(keys[d * bs + c + l].to_f32(), s);
            }
            *a = s;
        }
    }
}

/// For `H` heads, dimensions `c..c + 16·C`: `Σ_j w[h][j]·v_j` over positions `lo..=pos` in
/// order with `mul_add`, divided by the head's sum, into `o` (`H × hd`).
///
/// # Safety
/// The CPU must have `L`'s features (see `Lanes`).
#[inline(always)]
unsafe fn value_lanes<L: Lanes, E: KvElem, const H: usize, const C: usize>(
    w: &[f32],
    kv: &HeadView<E>,
    lo: usize,
    pos: usize,
    c: usize,
    sums: &[f32],
    o: &mut [f32],
) {
    let (hd, bs, n) = (kv.hd, kv.block_size, pos + 1 - lo);
    let mut acc = [[L::zero(); C]; H];
    let blocks = lo / bs..=pos / bs;
    for b in blocks.clone() {
        if b < *blocks.end() {
            prefetch(kv.values(b + 1));
        }
        let vals = kv.values(b);
        for j in lo.max(b * bs)..=pos.min(b * bs + bs - 1) {
            let row = &vals[(j - b * bs) * hd + c..(j - b * bs) * hd + c + C * LANES];
            let mut v = [L::zero(); C];
            for (cc, v) in v.iter_mut().enumerate() {
                *v = E::load(&row[cc * LANES..]);
            }
            for (h, a) in acc.iter_mut().enumerate() {
                let wh = L::splat(w[h * n + j - lo]);
                for (a, v) in a.iter_mut().zip(&v) {
                    *a = a.fma(wh, *v);
                }
            }
        }
    }
    for (h, a) in acc.iter().enumerate() {
        let inv = L::splat(1.0 / sums[h]);
        for (cc, a) in a.iter().enumerate() {
            a.mul(inv).store(&mut o[h * hd + c + cc * LANES..]);
        }
    }
}

/// `value_lanes` for the last dimensions of a head, fewer than 16.
#[allow(clippy::too_many_arguments)]
fn value_lanes_partial<E: KvElem>(
    w: &[f32],
    heads: usize,
    kv: &HeadView<E>,
    lo: usize,
    pos: usize,
    c: usize,
    sums: &[f32],
    o: &mut [f32],
) {
    let (hd, bs, n) = (kv.hd, kv.block_size, pos + 1 - lo);
    for h in 0..heads {
        for l in c..hd {
            let mut a = 0f32;
            for j in lo..=pos {
                a = w[h * n + j - lo].mul_add(kv.values(j / bs)[(j % bs) * hd + l].to_f32(), a);
            }
            o[h * hd + l] = a * (1.0 / sums[h]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::{KvCache, KvDtype};

    #[test]
    fn rows_run_by_sequence_up_to_the_limit() {
        assert_eq!(row_runs(&[0, 0, 0, 1, 1, 2], 2), vec![0..2, 2..3, 3..5, 5..6]);
        assert_eq!(row_runs(&[0, 1, 0], 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(row_runs(&[3; 5], 1).len(), 5);
        assert!(row_runs(&[], 4).is_empty());
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    struct Case {
        heads: usize,
        kv_heads: usize,
        hd: usize,
        bs: usize,
        len: usize,
        window: Option<usize>,
        softcap: Option<f32>,
    }

    /// Scores, softmax and weighted values in f64, straight from the definition.
    fn naive(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], c: &Case, pos: usize, scale: f32) -> Vec<f64> {
        let (hd, group) = (c.hd, c.heads / c.kv_heads);
        let lo = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let mut out = vec![0f64; c.heads * hd];
        for h in 0..c.heads {
            let kvh = h / group;
            let s: Vec<f64> = (lo..=pos)
                .map(|j| {
                    let mut x =
                        (0..hd).map(|d| q[h * hd + d] as f64 * k[j][kvh * hd + d] as f64).sum::<f64>() * scale as f64;
                    if let Some(cap) = c.softcap {
                        x = cap as f64 * (x / cap as f64).tanh();
                    }
                    x
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (i, j) in (lo..=pos).enumerate() {
                for d in 0..hd {
                    out[h * hd + d] += e[i] / sum * v[j][kvh * hd + d] as f64;
                }
            }
        }
        out
    }

    /// Runs every level's kernel on one row; returns (level, output).
    #[allow(clippy::too_many_arguments)]
    fn run_levels<E: KvElem>(
        c: &Case,
        k: &[E],
        v: &[E],
        table: &[u32],
        q: &[f32],
        p: &AttentionParams,
        lo: usize,
        pos: usize,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let group = c.heads / c.kv_heads;
        type Run<'a, E> = Box<dyn Fn(&HeadView<E>, &[f32], &mut Vec<f32>, &mut [f32]) + 'a>;
        // SAFETY (each closure): a level is listed only when `Level::is_supported` says so.
        let mut levels: Vec<(&str, Run<E>)> = vec![(
            "portable",
            Box::new(|h, qh, s, o| unsafe { attend::<[f32; LANES], E, 4, 2, 2>(h, qh, lo, pos, p, s, o) }),
        )];
        #[cfg(target_arch = "x86_64")]
        {
            if Level::Avx2.is_supported() {
                levels.push(("avx2", Box::new(|h, qh, s, o| unsafe { attend_avx2(h, qh, lo, pos, p, s, o) })));
            }
            if Level::Avx512Vnni.is_supported() {
                levels.push(("avx512", Box::new(|h, qh, s, o| unsafe { attend_avx512(h, qh, lo, pos, p, s, o) })));
            }
        }
        #[cfg(target_arch = "aarch64")]
        levels.push(("neon", Box::new(|h, qh, s, o| unsafe { attend_neon(h, qh, lo, pos, p, s, o) })));
        levels
            .iter()
            .map(|(name, run)| {
                let mut out = vec![0f32; c.heads * c.hd];
                for kvh in 0..c.kv_heads {
                    let head = HeadView { k, v, table, block_size: c.bs, num_kv_heads: c.kv_heads, kvh, hd: c.hd };
                    run(
                        &head,
                        &q[kvh * group * c.hd..(kvh + 1) * group * c.hd],
                        &mut Vec::new(),
                        &mut out[kvh * group * c.hd..(kvh + 1) * group * c.hd],
                    );
                }
                (*name, out)
            })
            .collect()
    }

    /// Every level's kernel against the f64 definition, and against each other bit for bit,
    /// for f16 and f32 caches, over block sizes narrower and wider than a vector, head sizes
    /// that are not a multiple of 16, query groups wider than a register group, windows and
    /// soft-capping.
    #[test]
    fn matches_definition_and_every_level_gives_the_same_bits() {
        let cases = [
            Case { heads: 14, kv_heads: 2, hd: 64, bs: 16, len: 37, window: None, softcap: None },
            Case { heads: 4, kv_heads: 4, hd: 80, bs: 4, len: 23, window: None, softcap: None },
            Case { heads: 9, kv_heads: 1, hd: 24, bs: 32, len: 70, window: Some(19), softcap: None },
            Case { heads: 8, kv_heads: 2, hd: 256, bs: 16, len: 33, window: Some(40), softcap: Some(50.0) },
            Case { heads: 2, kv_heads: 1, hd: 16, bs: 24, len: 5, window: None, softcap: None },
        ];
        // Miri interprets: the small cases (GQA, a window, a partial block) are enough.
        let cases: Vec<&Case> = cases.iter().filter(|c| !cfg!(miri) || c.hd <= 24).collect();
        let mut seed = 7;
        for dtype in [KvDtype::F16, KvDtype::F32] {
            // Values the cache holds exactly, so the definition sees what the kernel sees.
            let r = |x: f32| if dtype == KvDtype::F16 { half::f16::from_f32(x).to_f32() } else { x };
            for &c in &cases {
                let kv_dim = c.kv_heads * c.hd;
                let num_blocks = c.len.div_ceil(c.bs) + 3;
                let mut cache = KvCache::new(1, num_blocks, c.bs, c.kv_heads, c.hd, dtype);
                // A scattered block table: logical block i lives in physical block (i·2 + 1) mod n.
                let table: Vec<u32> = (0..c.len.div_ceil(c.bs)).map(|i| ((i * 2 + 1) % num_blocks) as u32).collect();
                let k: Vec<Vec<f32>> =
                    (0..c.len).map(|_| (0..kv_dim).map(|_| r(lcg(&mut seed) * 2.0)).collect()).collect();
                let v: Vec<Vec<f32>> = (0..c.len).map(|_| (0..kv_dim).map(|_| r(lcg(&mut seed))).collect()).collect();
                let slots: Vec<usize> = (0..c.len).map(|j| table[j / c.bs] as usize * c.bs + j % c.bs).collect();
                cache.write(0, &slots, &k.concat(), &v.concat());
                let p = AttentionParams {
                    num_heads: c.heads,
                    num_kv_heads: c.kv_heads,
                    head_dim: c.hd,
                    scale: 1.0 / (c.hd as f32).sqrt(),
                    softcap: c.softcap,
                    window: c.window,
                };
                let q: Vec<f32> = (0..c.heads * c.hd).map(|_| lcg(&mut seed)).collect();
                for pos in [0, c.len / 2, c.len - 1] {
                    let lo = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let want = naive(&q, &k, &v, c, pos, p.scale);
                    let results = match (&cache.layer(0).k, &cache.layer(0).v) {
                        (KvData::F16(kc), KvData::F16(vc)) => run_levels(c, kc, vc, &table, &q, &p, lo, pos),
                        (KvData::F32(kc), KvData::F32(vc)) => run_levels(c, kc, vc, &table, &q, &p, lo, pos),
                        _ => unreachable!(),
                    };
                    for (name, out) in &results {
                        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 1e-5,
                                "{dtype:?} {name} hd {} bs {} pos {pos} [{i}]: {g} vs {w}",
                                c.hd,
                                c.bs
                            );
                        }
                    }
                    for (name, r) in results.iter().skip(1) {
                        assert!(
                            r.iter().zip(&results[0].1).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{dtype:?} {name} differs from portable (hd {}, bs {})",
                            c.hd,
                            c.bs
                        );
                    }
                }
            }
        }
    }

    /// A quantized cache's values are ggml's q8_0 / q4_0 of what was written, rotated (within
    /// rounding), and attention over it gives the bits of attention over an f32 cache holding
    /// those dequantized values with rotated queries, rotated back — for prefill rows and
    /// across a scattered block table; and that is within quantization error of the unrotated
    /// f32 result.
    #[test]
    fn quantized_caches_attend_like_f32_over_their_dequantized_values() {
        let (heads, kv_heads, hd, bs, len) =
            if cfg!(miri) { (2, 1, 64, 4, 6) } else { (14usize, 2usize, 64usize, 16usize, 37usize) };
        let kv_dim = kv_heads * hd;
        let num_blocks = len.div_ceil(bs) + 3;
        let table: Vec<u32> = (0..len.div_ceil(bs)).map(|i| ((i * 2 + 1) % num_blocks) as u32).collect();
        let slots: Vec<usize> = (0..len).map(|j| table[j / bs] as usize * bs + j % bs).collect();
        let mut seed = 11;
        let k: Vec<f32> = (0..len * kv_dim).map(|_| lcg(&mut seed) * 2.0).collect();
        let v: Vec<f32> = (0..len * kv_dim).map(|_| lcg(&mut seed)).collect();
        let q: Vec<f32> = (0..len * heads * hd).map(|_| lcg(&mut seed)).collect();
        let (k_rot, v_rot) = rotations(hd);
        let rotate = |x: &[f32], n: Option<usize>| {
            let mut x = x.to_vec();
            n.into_iter().for_each(|n| hadamard(&mut x, n));
            x
        };
        let (k_rotated, v_rotated) = (rotate(&k, k_rot), rotate(&v, v_rot));
        let mut batch = BatchInput::default();
        batch.push_seq(&vec![0; len], 0, &table, bs, false);
        let p = AttentionParams {
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            softcap: None,
            window: None,
        };
        let mut plain = KvCache::new(1, num_blocks, bs, kv_heads, hd, KvDtype::F32);
        plain.write(0, &slots, &k, &v);
        let exact_out = paged_attention(&q, &batch, plain.layer(0), bs, &p);

        fn read_back<Q: QuantizedKv>(
            kq: &Q,
            vq: &Q,
            table: &[u32],
            (len, kv_heads, hd, bs): (usize, usize, usize, usize),
        ) -> (Vec<f32>, Vec<f32>) {
            let kv_dim = kv_heads * hd;
            let (mut kd, mut vd) = (vec![0f32; len * kv_dim], vec![0f32; len * kv_dim]);
            let mut buf = vec![0f32; hd * bs];
            for j in 0..len {
                for h in 0..kv_heads {
                    let at = h * hd;
                    dequantize_keys(kq, table[j / bs] as usize, kv_heads, h, hd, bs, &mut buf);
                    (0..hd).for_each(|d| kd[j * kv_dim + at + d] = buf[d * bs + j % bs]);
                    dequantize_values(vq, table[j / bs] as usize, kv_heads, h, hd, bs, &mut buf);
                    (0..hd).for_each(|d| vd[j * kv_dim + at + d] = buf[(j % bs) * hd + d]);
                }
            }
            (kd, vd)
        }
        // (type, step per group's largest magnitude, error bound in steps, attention bound):
        // q8_0 rounds to half a step plus its scale's f16 rounding (127 · 2⁻¹¹ steps); q4_0's
        // code for minus the extreme saturates at 7 (a whole step).
        for (dtype, per, steps, bound) in [(KvDtype::Q8_0, 127.0, 0.57, 0.05), (KvDtype::Q4_0, 8.0, 1.01, 0.5)] {
            let mut cache = KvCache::new(1, num_blocks, bs, kv_heads, hd, dtype);
            cache.write(0, &slots, &k, &v);
            let shape = (len, kv_heads, hd, bs);
            let (kd, vd) = match (&cache.layer(0).k, &cache.layer(0).v) {
                (KvData::Q8_0(kq), KvData::Q8_0(vq)) => read_back(kq, vq, &table, shape),
                (KvData::Q4_0(kq), KvData::Q4_0(vq)) => read_back(kq, vq, &table, shape),
                _ => unreachable!(),
            };
            for (x, want) in [(&kd, &k_rotated), (&vd, &v_rotated)] {
                for (g, w) in x.chunks(32).zip(want.chunks(32)) {
                    let step = w.iter().fold(0f32, |a, x| a.max(x.abs())) / per;
                    assert!(
                        g.iter().zip(w).all(|(a, b)| (a - b).abs() <= step * steps),
                        "{dtype:?}: off by more than its rounding"
                    );
                }
            }
            let mut exact = KvCache::new(1, num_blocks, bs, kv_heads, hd, KvDtype::F32);
            exact.write(0, &slots, &kd, &vd);
            let a = paged_attention(&q, &batch, cache.layer(0), bs, &p);
            let b = rotate(&paged_attention(&rotate(&q, k_rot), &batch, exact.layer(0), bs, &p), v_rot);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype:?} attention differs from f32 over its values"
            );
            let worst = a.iter().zip(&exact_out).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < bound, "{dtype:?} attention is {worst} from the f32 cache's");
        }
    }
}
