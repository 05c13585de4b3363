//! slm's own quantized matmul kernels for the weight types of small GGUF models (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). At load, weights are repacked into tiles of
//! 16 output columns: per 32-value
//! sub-block (32 values, 16 for Q6_K), the 16 columns' values as unsigned numbers (`value +
//! offset`), interleaved four at a time so one `vpdpbusd` feeds 16 columns with 4 products
//! each, and the 16 scales (and mins). Decode reads every weight once per token, so the
//! packing keeps the file's bits (Q2_K's and Q3_K's 2- and 3-bit values are widened to nibbles,
//! 4 bits, so their packed weights are 1.5× and 1.2× the file's): Q8_0 as bytes; the 2- to
//! 6-bit types as nibbles (two groups
//! of 64 values per 64-byte line, low and high nibble) plus, for the 5- and 6-bit types, one
//! 64-byte line of high bits per sub-block: byte i holds the bits above the nibble of value i of
//! every group (group g's at bits `g·extra..`, 8 bits in all: Q5_* has 8 groups of one extra
//! bit, Q6_K 4 groups of two), so one shift and one mask per group expand them. Scales stay as
//! the file has them: f16 per block, and for the K-quants 8-bit integer scales (and mins) per
//! sub-block, so a packed weight is no larger than the file's. A row of activations is
//! quantized once to 8 bits (Q8_0 or Q8_K, as ggml does for the weight type) and broadcast
//! against a tile, so each output lane is one column: no horizontal sums, and every weight
//! byte loaded is used for all rows of the call.
//!
//! Batch invariance and dispatch levels: an output element is computed as, per block in order,
//! the exact integer dot product of its weights and activations (for the K-quants, the sum
//! over its sub-blocks of each sub-block's dot product times its integer scale, as ggml does),
//! converted to f32 and fused-multiply-added with `d_w × d_x` into one f32 accumulator (then
//! the min term: for Q4_K and Q5_K `Σ m·Σx` times `-dmin_w × d_x`, for Q4_1 and Q5_1 `Σx` times
//! `m_w × d_x`). That sequence is the same for any number
//! of rows, any tile, and AVX-512 VNNI, AVX-VNNI, AVX2, aarch64 NEON (with `dotprod`, `i8mm` or
//! neither) or the portable path: results are bit-identical across all of them.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod bench;
mod blocks;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
mod pack_io;
mod prefetch;
mod quantize;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;

pub use blocks::*;
pub use pack_io::PosWriter;
pub(crate) use prefetch::prefetch_line;
pub use quantize::{quantize_q8_0_block, QuantizedRows};

/// Output columns per tile (lanes of a 512-bit vector of i32).
pub const TILE: usize = 16;

/// 64-byte aligned storage for the packed bytes.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// One of a packed weight's arrays, never written once made: filled by `pack`, or borrowed
/// from a mapped pack-cache file (`pack_io`). Derefs to its slice with no branch.
struct Arr<T> {
    ptr: *const T,
    len: usize,
    _owner: Owner<T>,
}

/// What keeps an `Arr`'s memory alive (held, never read: `ptr` is).
enum Owner<T> {
    Vec(#[allow(dead_code)] Vec<T>),
    Map(#[allow(dead_code)] std::sync::Arc<memmap2::Mmap>),
}

// SAFETY: an `Arr` is immutable and its owner (a Vec, or a read-only mapping held by an Arc)
// may be sent and shared across threads; the pointer only ever reads it.
unsafe impl<T: Sync> Send for Arr<T> {}
unsafe impl<T: Sync> Sync for Arr<T> {}

impl<T> Arr<T> {
    fn owned(v: Vec<T>) -> Self {
        Self { ptr: v.as_ptr(), len: v.len(), _owner: Owner::Vec(v) }
    }
}

impl<T: bytemuck::Pod> Arr<T> {
    /// `len` values at byte `start` of `map`; None unless they are in bounds and aligned.
    fn mapped(map: &std::sync::Arc<memmap2::Mmap>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len.checked_mul(std::mem::size_of::<T>())?)?;
        let values: &[T] = bytemuck::try_cast_slice(map.get(start..end)?).ok()?;
        Some(Self { ptr: values.as_ptr(), len: values.len(), _owner: Owner::Map(map.clone()) })
    }
}

impl<T> std::ops::Deref for Arr<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` and `len` describe a slice inside what `_owner` keeps alive at a fixed
        // address for as long as `self` (a Vec's heap buffer, never grown; or a mapping), made
        // from a valid slice and never written since.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Weights repacked for the kernels: per tile of 16 columns and sub-block of `sub` values,
/// `sub / 4` groups of 64 values (16 columns × 4 consecutive values, value `lane·4 + j`) —
/// as 64-byte lines of bytes, or of nibble pairs (group 2i low, 2i+1 high) with a line of
/// high bits when `bits > 4` — and for the K-quants 16 integer scales (and mins);
/// per tile and block, the 16 columns' f16 `d` (and negated `dmin`).
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    pub sub: usize,
    /// Sub-blocks per block: 1 for Q5_0 and Q8_0; more for the K-quants, whose sub-blocks
    /// carry integer scales (`int_scales`).
    pub subs_per_block: usize,
    pub offset: i32,
    pub has_min: bool,
    pub act_block: usize,
    pub bits: u32,
    /// `k / sub` and `num_subs / subs_per_block`, kept so the kernels' index arithmetic has no
    /// divisions.
    num_subs: usize,
    num_blocks: usize,
    lines: Arr<Line>,
    /// Per tile and sub-block (5- and 6-bit types): byte i = the high bits of value i of every
    /// group, group g's `bits − 4` of them at bit `g · (bits − 4)`.
    high: Arr<Line>,
    /// Per tile and sub-block: 16 integer scales and (Q4_K, Q5_K) 16 mins (K-quants).
    sub_scales: Arr<i8>,
    sub_mins: Arr<i8>,
    /// Per tile and block: 16 f16 scales and (types with mins) 16 f16 min factors, the file's
    /// bits: `−dmin` for the K-quants, `m` for Q4_1 and Q5_1 (whose integer min is 1).
    d: Arr<u16>,
    neg_dmin: Arr<u16>,
}

/// Elements per tile of each of `PackedWeights`' arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TileShape {
    lines: usize,
    high: usize,
    sub_scales: usize,
    sub_mins: usize,
    d: usize,
    neg_dmin: usize,
}

/// Mutable views of a run of whole tiles in each array, for packing on several threads.
struct TileSlices<'a> {
    lines: &'a mut [Line],
    high: &'a mut [Line],
    sub_scales: &'a mut [i8],
    sub_mins: &'a mut [i8],
    d: &'a mut [u16],
    neg_dmin: &'a mut [u16],
}

impl<'a> TileSlices<'a> {
    /// The first `tiles` tiles, and the rest.
    fn split(self, tiles: usize, per: &TileShape) -> (Self, Self) {
        let (lines, l) = self.lines.split_at_mut(tiles * per.lines);
        let (high, h) = self.high.split_at_mut(tiles * per.high);
        let (sub_scales, ss) = self.sub_scales.split_at_mut(tiles * per.sub_scales);
        let (sub_mins, sm) = self.sub_mins.split_at_mut(tiles * per.sub_mins);
        let (d, dd) = self.d.split_at_mut(tiles * per.d);
        let (neg_dmin, nd) = self.neg_dmin.split_at_mut(tiles * per.neg_dmin);
        (
            Self { lines, high, sub_scales, sub_mins, d, neg_dmin },
            Self { lines: l, high: h, sub_scales: ss, sub_mins: sm, d: dd, neg_dmin: nd },
        )
    }
}

/// Everything about a packed weight's shape that follows from its block type and size: what
/// `pack` allocates, and what the pack cache checks a stored weight against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    n: usize,
    k: usize,
    sub: usize,
    subs_per_block: usize,
    offset: i32,
    has_min: bool,
    act_block: usize,
    bits: u32,
    num_subs: usize,
    num_blocks: usize,
    tiles: usize,
    per_tile: TileShape,
}

impl Layout {
    pub fn of<W: WeightBlock>(n: usize, k: usize) -> Self {
        let blocks = k / W::VALUES;
        let nsub = k / W::SUB;
        let spb = W::VALUES / W::SUB;
        let groups = W::SUB / 4;
        let nibbles = W::BITS < 8;
        let lines_per_sub = if nibbles { groups / 2 } else { groups };
        let extra = if nibbles { W::BITS.saturating_sub(4) as usize } else { 0 };
        // Per tile, each array's share (0 where the type has none of it).
        let per_tile = TileShape {
            lines: nsub * lines_per_sub,
            high: if extra > 0 { nsub } else { 0 },
            sub_scales: if spb > 1 { nsub * TILE } else { 0 },
            sub_mins: if W::HAS_MIN && spb > 1 { nsub * TILE } else { 0 },
            d: blocks * TILE,
            neg_dmin: if W::HAS_MIN { blocks * TILE } else { 0 },
        };
        Self {
            n,
            k,
            sub: W::SUB,
            subs_per_block: spb,
            offset: W::OFFSET,
            has_min: W::HAS_MIN,
            act_block: W::ACT_BLOCK,
            bits: W::BITS,
            num_subs: nsub,
            num_blocks: blocks,
            tiles: n.div_ceil(TILE),
            per_tile,
        }
    }
}

impl PackedWeights {
    /// Repacks `n` columns of `k` values. Tiles are independent, so big weights are packed
    /// on several threads (loading time is mostly this and reading the file).
    pub fn pack<W: WeightBlock>(w: &[W], n: usize, k: usize) -> Self {
        assert_eq!(k % W::VALUES, 0);
        let blocks = k / W::VALUES;
        assert_eq!(w.len(), n * blocks);
        let layout = Layout::of::<W>(n, k);
        let (nsub, spb, tiles, per_tile) = (layout.num_subs, layout.subs_per_block, layout.tiles, layout.per_tile);
        let groups = W::SUB / 4;
        let nibbles = W::BITS < 8;
        let lines_per_sub = if nibbles { groups / 2 } else { groups };
        let extra = if nibbles { W::BITS.saturating_sub(4) as usize } else { 0 };
        assert!(extra * groups <= 8 || extra == 0, "high bits of {groups} groups fill more than a byte");
        let mut lines = vec![Line([0; 64]); tiles * per_tile.lines];
        let mut high = vec![Line([0; 64]); tiles * per_tile.high];
        let mut sub_scales = vec![0i8; tiles * per_tile.sub_scales];
        let mut sub_mins = vec![0i8; tiles * per_tile.sub_mins];
        let mut d = vec![0u16; tiles * per_tile.d];
        let mut neg_dmin = vec![0u16; tiles * per_tile.neg_dmin];
        // Fills tiles `t0..` into slices that start at tile t0.
        let fill = |t0: usize, num_tiles: usize, out: TileSlices| {
            let TileSlices { lines, high, sub_scales, sub_mins, d, neg_dmin } = out;
            let mut u = vec![0u8; W::VALUES];
            let (mut sc, mut mn) = (vec![0i8; spb], vec![0i8; spb]);
            for c in t0 * TILE..((t0 + num_tiles) * TILE).min(n) {
                let (t, lane) = (c / TILE - t0, c % TILE);
                for b in 0..blocks {
                    let (db, dminb) = w[c * blocks + b].decode(&mut u, &mut sc, &mut mn);
                    d[(t * blocks + b) * TILE + lane] = db;
                    if W::HAS_MIN {
                        // Negating an f16 flips its sign bit: exact.
                        neg_dmin[(t * blocks + b) * TILE + lane] = dminb ^ 0x8000;
                    }
                    for j in 0..spb {
                        let tsub = t * nsub + b * spb + j;
                        let sub_values = &u[j * W::SUB..(j + 1) * W::SUB];
                        let sub_lines = &mut lines[tsub * lines_per_sub..(tsub + 1) * lines_per_sub];
                        for (g, v4) in sub_values.chunks_exact(4).enumerate() {
                            let v4: &[u8; 4] = v4.try_into().expect("4 values");
                            if nibbles {
                                let dst: &mut [u8; 4] =
                                    (&mut sub_lines[g / 2].0[lane * 4..lane * 4 + 4]).try_into().expect("4 bytes");
                                for i in 0..4 {
                                    dst[i] |= (v4[i] & 0x0F) << (4 * (g % 2));
                                }
                                if extra > 0 {
                                    let hi: &mut [u8; 4] =
                                        (&mut high[tsub].0[lane * 4..lane * 4 + 4]).try_into().expect("4 bytes");
                                    for i in 0..4 {
                                        hi[i] |= (v4[i] >> 4) << (g * extra);
                                    }
                                }
                            } else {
                                sub_lines[g].0[lane * 4..lane * 4 + 4].copy_from_slice(v4);
                            }
                        }
                        if spb > 1 {
                            sub_scales[tsub * TILE + lane] = sc[j];
                        }
                        if W::HAS_MIN && spb > 1 {
                            sub_mins[tsub * TILE + lane] = mn[j];
                        }
                    }
                }
            }
        };
        // Below ~1M values a thread costs more than it saves.
        let threads = if n * k < (1 << 20) {
            1
        } else {
            std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1).min(tiles)
        };
        let tiles_per_thread = tiles.div_ceil(threads.max(1));
        let mut parts = TileSlices {
            lines: &mut lines,
            high: &mut high,
            sub_scales: &mut sub_scales,
            sub_mins: &mut sub_mins,
            d: &mut d,
            neg_dmin: &mut neg_dmin,
        };
        std::thread::scope(|scope| {
            let mut t0 = 0;
            while t0 < tiles {
                let count = tiles_per_thread.min(tiles - t0);
                let (head, rest) = parts.split(count, &per_tile);
                parts = rest;
                if t0 + count == tiles {
                    fill(t0, count, head); // the last share runs on this thread
                } else {
                    let fill = &fill;
                    scope.spawn(move || fill(t0, count, head));
                }
                t0 += count;
            }
        });
        Self::from_parts(
            &layout,
            Arr::owned(lines),
            Arr::owned(high),
            Arr::owned(sub_scales),
            Arr::owned(sub_mins),
            Arr::owned(d),
            Arr::owned(neg_dmin),
        )
    }

    /// A weight of `layout`'s shape with these arrays (packed here, or mapped by `pack_io`).
    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        l: &Layout,
        lines: Arr<Line>,
        high: Arr<Line>,
        sub_scales: Arr<i8>,
        sub_mins: Arr<i8>,
        d: Arr<u16>,
        neg_dmin: Arr<u16>,
    ) -> Self {
        Self {
            n: l.n,
            k: l.k,
            sub: l.sub,
            subs_per_block: l.subs_per_block,
            offset: l.offset,
            has_min: l.has_min,
            act_block: l.act_block,
            bits: l.bits,
            num_subs: l.num_subs,
            num_blocks: l.num_blocks,
            lines,
            high,
            sub_scales,
            sub_mins,
            d,
            neg_dmin,
        }
    }

    /// Bytes the kernels read for one pass over this weight.
    pub fn num_bytes(&self) -> usize {
        self.lines.len() * 64
            + self.high.len() * 64
            + self.sub_scales.len()
            + self.sub_mins.len()
            + (self.d.len() + self.neg_dmin.len()) * 2
    }

    /// High bits per value above its nibble (0 for 4-bit and byte packing).
    pub fn num_high_bits(&self) -> usize {
        if self.bits < 8 {
            self.bits.saturating_sub(4) as usize
        } else {
            0
        }
    }

    fn lines_per_sub(&self) -> usize {
        if self.bits < 8 {
            self.sub / 8
        } else {
            self.sub / 4
        }
    }

    /// The high-bit line of tile `t`, sub-block `s` (64 bytes, 64-aligned): byte i holds group
    /// g's high bits of value i at bit `g · num_high_bits()`.
    #[inline]
    pub fn tile_high(&self, t: usize, s: usize) -> &[u8] {
        &self.high[t * self.num_subs() + s].0
    }

    /// Group `g` of tile `t`, sub-block `s`, decoded to bytes (the portable kernel's view).
    pub fn group(&self, t: usize, s: usize, g: usize) -> [u8; 64] {
        std::array::from_fn(|i| self.value(t, s, g, i))
    }

    /// Byte `i` (column `i / 4`, value `i % 4`) of group `g` of tile `t`, sub-block `s`.
    #[inline]
    pub fn value(&self, t: usize, s: usize, g: usize, i: usize) -> u8 {
        let line = self.tile_sub(t, s);
        if self.bits == 8 {
            return line[g * 64 + i];
        }
        let mut v = (line[(g / 2) * 64 + i] >> (4 * (g % 2))) & 0x0F;
        let extra = self.num_high_bits();
        if extra > 0 {
            v |= ((self.tile_high(t, s)[i] >> (g * extra)) & ((1 << extra) - 1)) << 4;
        }
        v
    }

    #[inline]
    pub fn num_subs(&self) -> usize {
        self.num_subs
    }

    /// The dequantized weights of column `c` (`k` values), with the very arithmetic of
    /// candle's (and ggml's) `to_float`: `q·d`, `(d·sc)·q`, or `(d·sc)·q − dmin·m`. Serves
    /// an embedding table tied to the output projection from the packed copy alone.
    pub fn dequantize_column(&self, c: usize, out: &mut [f32]) {
        let (t, lane) = (c / TILE, c % TILE);
        let spb = self.subs_per_block;
        for b in 0..self.num_blocks {
            let d = half::f16::from_bits(self.tile_d(t, b)[lane]).to_f32();
            let neg_dmin =
                if self.has_min { half::f16::from_bits(self.tile_neg_dmin(t, b)[lane]).to_f32() } else { 0.0 };
            for s in b * spb..(b + 1) * spb {
                let scale = if self.int_scales() { d * self.tile_sub_scales(t, s)[lane] as f32 } else { d };
                // −(dmin·m), exactly: negation commutes with rounding; Q4_1/Q5_1: m itself.
                let neg_min = match (self.has_min, self.int_scales()) {
                    (true, true) => neg_dmin * self.tile_sub_mins(t, s)[lane] as f32,
                    (true, false) => neg_dmin,
                    _ => 0.0,
                };
                for g in 0..self.sub / 4 {
                    for i in 0..4 {
                        let v = (self.value(t, s, g, lane * 4 + i) as i32 - self.offset) as f32;
                        out[s * self.sub + g * 4 + i] = if self.has_min { scale * v + neg_min } else { scale * v };
                    }
                }
            }
        }
    }

    #[inline]
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }

    /// The lines of tile `t`, sub-block `s`: 64 bytes per group (bytes) or per two groups
    /// (nibbles).
    #[inline]
    pub fn tile_sub(&self, t: usize, s: usize) -> &[u8] {
        let lines = self.lines_per_sub();
        let first = (t * self.num_subs() + s) * lines;
        let tile_lines = &self.lines[first..first + lines];
        // SAFETY: `Line` is `repr(C)` over `[u8; 64]`, so `lines` of them are `lines × 64`
        // initialized bytes, borrowed from `self` for the same lifetime.
        unsafe { std::slice::from_raw_parts(tile_lines.as_ptr() as *const u8, lines * 64) }
    }

    /// Whether sub-blocks carry integer scales (the K-quants).
    #[inline]
    pub fn int_scales(&self) -> bool {
        self.subs_per_block > 1
    }

    /// The 16 integer scales of tile `t`, sub-block `s` (K-quants).
    #[inline]
    pub fn tile_sub_scales(&self, t: usize, s: usize) -> &[i8] {
        tile_columns(&self.sub_scales, t * self.num_subs + s)
    }

    /// The 16 integer mins of tile `t`, sub-block `s` (Q4_K, Q5_K).
    #[inline]
    pub fn tile_sub_mins(&self, t: usize, s: usize) -> &[i8] {
        tile_columns(&self.sub_mins, t * self.num_subs + s)
    }

    /// The 16 f16 scales of tile `t`, block `b`.
    #[inline]
    pub fn tile_d(&self, t: usize, b: usize) -> &[u16] {
        tile_columns(&self.d, t * self.num_blocks + b)
    }

    /// The 16 f16 min factors of tile `t`, block `b` (types with mins).
    #[inline]
    pub fn tile_neg_dmin(&self, t: usize, b: usize) -> &[u16] {
        tile_columns(&self.neg_dmin, t * self.num_blocks + b)
    }
}

/// Entry `i` of a per-column array stored 16 columns (one tile) at a time.
#[inline]
fn tile_columns<T>(v: &[T], i: usize) -> &[T] {
    &v[i * TILE..(i + 1) * TILE]
}

thread_local! {
    static SCRATCH: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::default());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
    /// AVX2 with the 256-bit `vpdpbusd` (AVX-VNNI: Alder Lake and later, Zen 5).
    AvxVnni,
    Avx512Vnni,
    /// aarch64 NEON without `dotprod` (ARMv8.0: Cortex-A53, A72).
    Neon,
    /// NEON with `sdot` (ARMv8.2 `dotprod`: Cortex-A55, A76, Raspberry Pi 5, Neoverse N1).
    NeonDot,
    /// NEON with `sdot` and `smmla` (ARMv8.6 `i8mm`: Neoverse V1/N2, Apple M2 and later).
    NeonI8mm,
}

impl Level {
    /// Whether this CPU has every feature the level's code is compiled for.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::AvxVnni => Level::Avx2.is_supported() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => {
                // DQ and VL for the elementwise code built for this level (activation.rs).
                Level::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Level::NeonDot => Level::Neon.is_supported() && std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Level::NeonI8mm => Level::NeonDot.is_supported() && std::arch::is_aarch64_feature_detected!("i8mm"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The name `SLM_KERNEL` takes and `slm bench` prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avxvnni",
            Level::Avx512Vnni => "avx512vnni",
            Level::Neon => "neon",
            Level::NeonDot => "dotprod",
            Level::NeonI8mm => "i8mm",
        }
    }
}

/// This architecture's levels, best first.
const LEVELS_BEST_FIRST: &[Level] = if cfg!(target_arch = "x86_64") {
    &[Level::Avx512Vnni, Level::AvxVnni, Level::Avx2, Level::Scalar]
} else if cfg!(target_arch = "aarch64") {
    &[Level::NeonI8mm, Level::NeonDot, Level::Neon, Level::Scalar]
} else {
    &[Level::Scalar]
};

/// Every level this CPU supports, portable first (for tests that compare them).
pub fn supported_levels() -> Vec<Level> {
    LEVELS_BEST_FIRST.iter().rev().copied().filter(|l| l.is_supported()).collect()
}

/// The best level this CPU supports (checked once; `SLM_KERNEL` = a level's `name()`:
/// `avx512vnni|avxvnni|avx2|scalar` on x86, `i8mm|dotprod|neon|scalar` on aarch64, caps it, never raises it, so the answer is always
/// supported; a name of another architecture's level is ignored).
pub fn detected_level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("SLM_KERNEL").unwrap_or_default();
        let from = LEVELS_BEST_FIRST.iter().position(|l| l.name() == cap).unwrap_or(0);
        LEVELS_BEST_FIRST[from..].iter().copied().find(|l| l.is_supported()).unwrap_or(Level::Scalar)
    })
}

/// One worker's share of a matmul's output: the columns of tiles `tiles` in every row. Shares
/// of one call cover disjoint tiles, so each can hand out `&mut` slices of its own columns
/// while the others write theirs.
pub(crate) struct TileOut<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    tiles: std::ops::Range<usize>,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl TileOut<'_> {
    /// Row `r`'s columns of tile `t` (16, or fewer in the last tile).
    #[inline]
    pub fn row_tile(&mut self, r: usize, t: usize) -> &mut [f32] {
        assert!(r < self.m && self.tiles.contains(&t), "row {r}, tile {t} outside this share");
        let c0 = t * TILE;
        let valid = (self.n - c0).min(TILE);
        // SAFETY: `r < m` and `c0 + valid <= n`, so the range lies inside the `m × n` output
        // the share was made from (`SharedOut::share`); no other share reaches tile `t`, and
        // `&mut self` keeps two slices of this share from overlapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.n + c0), valid) }
    }
}

/// The `m × n` output of one call, handed to the pool's threads as `TileOut` shares.
struct SharedOut<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: threads only write through `TileOut` shares of disjoint tiles (see `share`).
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    fn new(out: &'a mut [f32], m: usize, n: usize) -> Self {
        assert!(out.len() >= m * n, "matmul output holds {} values, needs {}", out.len(), m * n);
        Self { ptr: out.as_mut_ptr(), m, n, _out: std::marker::PhantomData }
    }

    /// # Safety
    /// No two shares alive at the same time may cover the same tile.
    unsafe fn share(&self, tiles: std::ops::Range<usize>) -> TileOut<'a> {
        assert!(tiles.end <= self.n.div_ceil(TILE));
        TileOut { ptr: self.ptr, m: self.m, n: self.n, tiles, _out: std::marker::PhantomData }
    }
}

/// `out[m × n] = x[m × k] · wᵀ` at the best level this CPU supports.
pub fn matmul(w: &PackedWeights, x: &[f32], m: usize, out: &mut [f32]) {
    // SAFETY: `detected_level` only reports supported levels.
    unsafe { matmul_at(w, x, m, out, detected_level()) }
}

/// `matmul` at a given level, for tests and benchmarks that compare levels.
///
/// # Safety
/// The CPU must support `level` (`level.is_supported()`): its code uses those instructions.
pub unsafe fn matmul_at(w: &PackedWeights, x: &[f32], m: usize, out: &mut [f32], level: Level) {
    debug_assert!(level.is_supported());
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "matmul input has {} values, needs {m} × {k}", x.len());
    let out = SharedOut::new(out, m, n);
    SCRATCH.with(|s| {
        let mut q = s.borrow_mut();
        q.quantize(x, m, k, w.sub, w.act_block);
        let q = &*q;
        let run = |tiles: std::ops::Range<usize>| {
            // SAFETY: the pool hands each index of 0..num_tiles to exactly one call of `run`,
            // so shares alive at once cover disjoint tiles.
            let mut share = unsafe { out.share(tiles.clone()) };
            match level {
                // SAFETY: the caller guarantees the level's features; `q` holds `m` rows of
                // `k` values quantized for `w` just above.
                #[cfg(target_arch = "x86_64")]
                Level::Avx512Vnni => unsafe { x86::tiles_vnni(w, q, m, tiles, &mut share) },
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe { avx2::tiles_avx2(w, q, m, tiles, &mut share, false) },
                #[cfg(target_arch = "x86_64")]
                Level::AvxVnni => unsafe { avx2::tiles_avx2(w, q, m, tiles, &mut share, true) },
                #[cfg(target_arch = "aarch64")]
                Level::Neon => unsafe { neon::tiles_neon(w, q, m, tiles, &mut share, neon::Mode::Mull) },
                #[cfg(target_arch = "aarch64")]
                Level::NeonDot => unsafe { neon::tiles_neon(w, q, m, tiles, &mut share, neon::Mode::Dot) },
                #[cfg(target_arch = "aarch64")]
                Level::NeonI8mm => unsafe { neon::tiles_neon(w, q, m, tiles, &mut share, neon::Mode::Mmla) },
                _ => scalar::tiles(w, q, m, tiles, &mut share),
            }
        };
        crate::layers::pool::Pool::global().run(w.num_tiles(), &run);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::qlinear::{tensor_blocks, GgufBlock};

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn q5_blocks(n: usize, seed: &mut u64) -> Vec<BlockQ5_0> {
        (0..n)
            .map(|_| {
                let mut qs = [0u8; 16];
                qs.iter_mut().for_each(|q| *q = lcg(seed) as u8);
                BlockQ5_0 {
                    d: half::f16::from_f32(0.001 + (lcg(seed) % 100) as f32 * 1e-4).to_bits(),
                    qh: (lcg(seed)).to_le_bytes(),
                    qs,
                }
            })
            .collect()
    }

    fn q8_blocks(n: usize, seed: &mut u64) -> Vec<BlockQ8_0> {
        (0..n)
            .map(|_| {
                let mut qs = [0i8; 32];
                qs.iter_mut().for_each(|q| *q = (lcg(seed) % 255) as i32 as i8);
                BlockQ8_0 { d: half::f16::from_f32(0.002 + (lcg(seed) % 100) as f32 * 1e-4).to_bits(), qs }
            })
            .collect()
    }

    fn dequant<W: WeightBlock>(w: &[W]) -> Vec<f32> {
        let mut out = Vec::new();
        let (mut u, mut sc, mut mn) =
            (vec![0u8; W::VALUES], vec![0i8; W::VALUES / W::SUB], vec![0i8; W::VALUES / W::SUB]);
        for b in w {
            let (d, dmin) = b.decode(&mut u, &mut sc, &mut mn);
            let (d, dmin) = (half::f16::from_bits(d).to_f32(), half::f16::from_bits(dmin).to_f32());
            out.extend(u.iter().enumerate().map(|(i, &v)| {
                let j = i / W::SUB;
                let scale = if W::VALUES > W::SUB { d * sc[j] as f32 } else { d };
                // Q4_1/Q5_1 report −m as their min factor, with an integer min of 1.
                let min = if W::VALUES > W::SUB { mn[j] as f32 } else { 1.0 };
                (v as i32 - W::OFFSET) as f32 * scale - if W::HAS_MIN { dmin * min } else { 0.0 }
            }));
        }
        out
    }

    /// Against dequantize-then-f64 (activations quantized the same way): the only error is
    /// f32 accumulation. Across levels and row counts: bit-identical.
    fn check<W: WeightBlock>(w: &[W], m: usize, k: usize, n: usize, seed: &mut u64) {
        let x: Vec<f32> = (0..m * k).map(|_| (lcg(seed) % 2000) as f32 / 1000.0 - 1.0).collect();
        let wd = dequant(w);
        let packed = PackedWeights::pack(w, n, k);
        let mut q = QuantizedRows::default();
        q.quantize(&x, m, k, W::SUB, W::ACT_BLOCK);
        let xq: Vec<f32> = (0..m * k).map(|i| q.qs[i] as f32 * q.d[i / QK]).collect();
        let levels = supported_levels();
        let mut results = Vec::new();
        for &level in &levels {
            let mut out = vec![0f32; m * n];
            // SAFETY: only supported levels.
            unsafe { matmul_at(&packed, &x, m, &mut out, level) };
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k).map(|i| xq[r * k + i] as f64 * wd[c * k + i] as f64).sum();
                    let got = out[r * n + c] as f64;
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{level:?} r{r} c{c}: {got} vs {want}");
                }
            }
            results.push(out);
        }
        for (l, r) in levels.iter().zip(&results).skip(1) {
            assert!(r.iter().zip(&results[0]).all(|(a, b)| a.to_bits() == b.to_bits()), "{l:?} differs from scalar");
        }
        // Row r alone equals row r inside the batch.
        for r in [0, m - 1] {
            let mut one = vec![0f32; n];
            matmul(&packed, &x[r * k..(r + 1) * k], 1, &mut one);
            assert!(
                one.iter().zip(&results[0][r * n..(r + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {r} alone differs"
            );
        }
    }

    #[test]
    fn q5_0_matches_reference_across_levels_and_batch_sizes() {
        let mut seed = 1;
        // Miri interprets: small shapes still cover partial tiles, several rows and blocks.
        let shapes: &[_] = if cfg!(miri) {
            &[(1, 64, 7), (3, 64, 20)]
        } else {
            &[(1, 64, 7), (3, 96, 70), (9, 128, 133), (1, 896, 130), (6, 64, 16)]
        };
        for &(m, k, n) in shapes {
            let w = q5_blocks(n * k / QK, &mut seed);
            check(&w, m, k, n, &mut seed);
        }
    }

    /// Blocks of `dtype` from candle's quantizer on `n × k` random weights (seeded).
    fn candle_blocks<W: WeightBlock + GgufBlock>(
        dtype: candle_core::quantized::GgmlDType,
        n: usize,
        k: usize,
        seed: u64,
    ) -> (Vec<W>, Vec<f32>) {
        let mut s = seed;
        let v: Vec<f32> = (0..n * k).map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0).collect();
        let t = candle_core::Tensor::from_vec(v, (n, k), &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, dtype).unwrap();
        let want: Vec<f32> = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        (tensor_blocks::<W>(&q).to_vec(), want)
    }

    /// The block decoder agrees with candle's dequantization, and the kernels with the
    /// dequantize-then-f64 reference, across levels and row counts.
    fn check_type<W: WeightBlock + GgufBlock>(dtype: candle_core::quantized::GgmlDType, k: usize, seed: &mut u64) {
        let shapes: &[(usize, usize)] = if cfg!(miri) { &[(1, 19), (5, 17)] } else { &[(1, 19), (6, 33), (9, 50)] };
        for &(m, n) in shapes {
            let (blocks, want) = candle_blocks::<W>(dtype, n, k, 7);
            let got = dequant(&blocks);
            assert!(
                got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())),
                "{dtype:?} decode differs from candle"
            );
            check(&blocks, m, k, n, seed);
        }
    }

    #[test]
    fn k_quants_decode_like_candle_and_match_reference() {
        use candle_core::quantized::GgmlDType;
        let mut seed = 3;
        check_type::<BlockQ2K>(GgmlDType::Q2K, 512, &mut seed);
        check_type::<BlockQ3K>(GgmlDType::Q3K, 512, &mut seed);
        check_type::<BlockQ4K>(GgmlDType::Q4K, 512, &mut seed);
        check_type::<BlockQ5K>(GgmlDType::Q5K, 512, &mut seed);
        check_type::<BlockQ6K>(GgmlDType::Q6K, 512, &mut seed);
    }

    #[test]
    fn legacy_quants_decode_like_candle_and_match_reference() {
        use candle_core::quantized::GgmlDType;
        let mut seed = 5;
        // 576: SmolLM2's width, not a multiple of 256.
        let k = if cfg!(miri) { 64 } else { 576 };
        check_type::<BlockQ4_0>(GgmlDType::Q4_0, k, &mut seed);
        check_type::<BlockQ4_1>(GgmlDType::Q4_1, k, &mut seed);
        check_type::<BlockQ5_1>(GgmlDType::Q5_1, k, &mut seed);
    }

    /// A packed column dequantizes to candle's `to_float` of the file's row, bit for bit.
    #[test]
    fn packed_columns_dequantize_like_candle() {
        use candle_core::quantized::GgmlDType;
        let (n, k) = (21, 512);
        let mut s = 11;
        let v: Vec<f32> = (0..n * k).map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0).collect();
        let t = candle_core::Tensor::from_vec(v, (n, k), &candle_core::Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = candle_core::quantized::QTensor::quantize(&t, dtype).unwrap();
            let want: Vec<f32> =
                q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let packed = match dtype {
                GgmlDType::Q8_0 => PackedWeights::pack(tensor_blocks::<BlockQ8_0>(&q), n, k),
                GgmlDType::Q2K => PackedWeights::pack(tensor_blocks::<BlockQ2K>(&q), n, k),
                GgmlDType::Q3K => PackedWeights::pack(tensor_blocks::<BlockQ3K>(&q), n, k),
                GgmlDType::Q4_0 => PackedWeights::pack(tensor_blocks::<BlockQ4_0>(&q), n, k),
                GgmlDType::Q4_1 => PackedWeights::pack(tensor_blocks::<BlockQ4_1>(&q), n, k),
                GgmlDType::Q5_0 => PackedWeights::pack(tensor_blocks::<BlockQ5_0>(&q), n, k),
                GgmlDType::Q5_1 => PackedWeights::pack(tensor_blocks::<BlockQ5_1>(&q), n, k),
                GgmlDType::Q4K => PackedWeights::pack(tensor_blocks::<BlockQ4K>(&q), n, k),
                GgmlDType::Q5K => PackedWeights::pack(tensor_blocks::<BlockQ5K>(&q), n, k),
                _ => PackedWeights::pack(tensor_blocks::<BlockQ6K>(&q), n, k),
            };
            let mut row = vec![0f32; k];
            for c in 0..n {
                packed.dequantize_column(c, &mut row);
                assert!(
                    row.iter().zip(&want[c * k..(c + 1) * k]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype:?} column {c}"
                );
            }
        }
    }

    /// The cross-level tests above compare every supported level: make sure the SIMD ones
    /// are among them where the architecture always has them (NEON on aarch64), and that a
    /// level the CPU has is reported as it should be.
    #[test]
    fn supported_levels_follow_the_cpu() {
        let levels = supported_levels();
        assert_eq!(levels[0], Level::Scalar);
        #[cfg(target_arch = "aarch64")]
        {
            assert!(levels.contains(&Level::Neon));
            assert_eq!(levels.contains(&Level::NeonDot), std::arch::is_aarch64_feature_detected!("dotprod"));
            assert_eq!(
                levels.contains(&Level::NeonI8mm),
                std::arch::is_aarch64_feature_detected!("dotprod") && std::arch::is_aarch64_feature_detected!("i8mm")
            );
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            levels.contains(&Level::AvxVnni),
            levels.contains(&Level::Avx2) && is_x86_feature_detected!("avxvnni")
        );
        if std::env::var("SLM_KERNEL").is_err() {
            assert_eq!(detected_level(), *levels.last().expect("scalar at least"));
        }
    }

    #[test]
    fn q8_0_matches_reference_across_levels_and_batch_sizes() {
        let mut seed = 2;
        let shapes: &[_] =
            if cfg!(miri) { &[(1, 64, 5), (5, 64, 17)] } else { &[(1, 64, 5), (5, 160, 67), (8, 256, 129)] };
        for &(m, k, n) in shapes {
            let w = q8_blocks(n * k / QK, &mut seed);
            check(&w, m, k, n, &mut seed);
        }
    }
}
