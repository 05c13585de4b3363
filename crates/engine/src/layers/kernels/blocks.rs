//! The GGUF block formats the kernels repack (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K) and how each decodes into unsigned values, the file's f16 scale (and min), and
//! the K-quants' per-sub-block integer scales and mins (`WeightBlock`); used by
//! `PackedWeights::pack`.

/// GGUF Q5_0 block: 32 weights, 5 bits each (low nibbles in `qs`, high bits in `qh`), value
/// = q - 16, times `d`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// GGUF Q8_0 block: 32 signed bytes times `d`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

/// GGUF Q4_0 block: 32 weights, 4 bits each (values 0–15 low nibbles, 16–31 high), value =
/// q - 8, times `d`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; 16],
}

/// GGUF Q4_1 block: 32 weights `d · q + m`, q in 0..16 (nibbles as Q4_0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

/// GGUF Q5_1 block: 32 weights `d · q + m`, q in 0..32 (nibbles and high bits as Q5_0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

const _: () = assert!(
    std::mem::size_of::<BlockQ5_0>() == 22
        && std::mem::size_of::<BlockQ8_0>() == 34
        && std::mem::size_of::<BlockQ4_0>() == 18
        && std::mem::size_of::<BlockQ4_1>() == 20
        && std::mem::size_of::<BlockQ5_1>() == 24
);

pub const QK: usize = 32;

/// A GGUF block type the kernels can repack: `VALUES` weights per block (the super-block),
/// in sub-blocks of `SUB` values. A weight is `d · value` (Q4_0, Q5_0, Q8_0), `d · value + m`
/// (Q4_1, Q5_1), `d · sc · value` (Q6_K) or `d · sc · value − dmin · m` (Q4_K, Q5_K), with `d`
/// and `dmin` (`m`) f16 per block and `sc`, `m` small integers per sub-block: exactly the
/// types whose blocks hold several sub-blocks.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    const VALUES: usize;
    const SUB: usize;
    /// Added to every value so it fits an unsigned byte (undone through the activation sums).
    const OFFSET: i32;
    const HAS_MIN: bool;
    /// Bits of `value + OFFSET`: 2 to 6 are packed as nibbles (plus high bits above 4), 8 as
    /// bytes.
    const BITS: u32;
    /// Activations are quantized as ggml does for this type: Q8_0 (32 values per f16 scale)
    /// for the legacy quants, Q8_K (256 values per f32 scale) for the K-quants.
    const ACT_BLOCK: usize = QK;
    /// `u[i] = value_i + OFFSET`; per sub-block, its integer scale and min (when a block has
    /// several sub-blocks);
    /// returns the f16 bits of `d` and of the min's factor: `dmin` for the K-quants (the
    /// weight subtracts `dmin · m`), `−m` for Q4_1 and Q5_1 (the weight adds `m`: one integer
    /// min of 1 per block), 0 without mins.
    fn decode(&self, u: &mut [u8], scales: &mut [i8], mins: &mut [i8]) -> (u16, u16);
}

impl WeightBlock for BlockQ5_0 {
    const VALUES: usize = 32;
    const SUB: usize = 32;
    const OFFSET: i32 = 16;
    const HAS_MIN: bool = false;
    const BITS: u32 = 5;
    fn decode(&self, u: &mut [u8], _: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        nibbles(&self.qs, u);
        fifth_bits(self.qh, u);
        (self.d, 0)
    }
}

/// Q4_0/Q4_1's nibble order: values 0–15 in the low nibbles, 16–31 in the high ones.
fn nibbles(qs: &[u8; 16], u: &mut [u8]) {
    for j in 0..16 {
        u[j] = qs[j] & 0x0F;
        u[j + 16] = qs[j] >> 4;
    }
}

/// Q5_0/Q5_1's fifth bits, bit j of `qh` for value j, on top of the nibbles.
fn fifth_bits(qh: [u8; 4], u: &mut [u8]) {
    let qh = u32::from_le_bytes(qh);
    for (j, u) in u.iter_mut().enumerate().take(32) {
        *u |= (((qh >> j) & 1) as u8) << 4;
    }
}

impl WeightBlock for BlockQ4_0 {
    const VALUES: usize = 32;
    const SUB: usize = 32;
    const OFFSET: i32 = 8;
    const HAS_MIN: bool = false;
    const BITS: u32 = 4;
    fn decode(&self, u: &mut [u8], _: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        nibbles(&self.qs, u);
        (self.d, 0)
    }
}

impl WeightBlock for BlockQ4_1 {
    const VALUES: usize = 32;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 4;
    fn decode(&self, u: &mut [u8], _: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        nibbles(&self.qs, u);
        // Negating an f16 flips its sign bit: exact.
        (self.d, self.m ^ 0x8000)
    }
}

impl WeightBlock for BlockQ5_1 {
    const VALUES: usize = 32;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 5;
    fn decode(&self, u: &mut [u8], _: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        nibbles(&self.qs, u);
        fifth_bits(self.qh, u);
        (self.d, self.m ^ 0x8000)
    }
}

impl WeightBlock for BlockQ8_0 {
    const VALUES: usize = 32;
    const SUB: usize = 32;
    const OFFSET: i32 = 128;
    const HAS_MIN: bool = false;
    const BITS: u32 = 8;
    fn decode(&self, u: &mut [u8], _: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        for (u, &q) in u.iter_mut().zip(&self.qs) {
            *u = (q as i32 + 128) as u8;
        }
        (self.d, 0)
    }
}

/// GGUF Q4_K super-block: 256 weights in 8 sub-blocks of 32, 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// GGUF Q6_K super-block: 256 weights in 16 sub-blocks of 16, 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: u16,
}

/// GGUF Q5_K super-block: Q4_K's layout plus one high bit per weight (`qh`, bit 2c or 2c+1 of
/// byte l for value 64c + l or 64c + 32 + l).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

const _: () = assert!(
    std::mem::size_of::<BlockQ4K>() == 144
        && std::mem::size_of::<BlockQ5K>() == 176
        && std::mem::size_of::<BlockQ6K>() == 210
);

/// GGUF Q2_K super-block: 256 weights in 16 sub-blocks of 16, 2 bits each; per sub-block a
/// 4-bit scale (low nibble) and 4-bit min (high nibble).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: u16,
    pub dmin: u16,
}

/// GGUF Q3_K super-block: 256 weights in 16 sub-blocks of 16, 2 low bits in `qs` and a high
/// bit in `hmask` (value = q − 4 when it is clear), 6-bit scales offset by 32.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84 && std::mem::size_of::<BlockQ3K>() == 110);

/// ggml's 2-bit order (Q2_K, Q3_K): per half of 128 values, 32 bytes of `qs`; value
/// `128n + 32j + l` is bits `2j..2j + 2` of byte `32n + l`.
fn k_crumbs(qs: &[u8; 64], u: &mut [u8]) {
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                u[128 * n + 32 * j + l] = (qs[32 * n + l] >> (2 * j)) & 3;
            }
        }
    }
}

impl WeightBlock for BlockQ2K {
    const ACT_BLOCK: usize = 256;
    const VALUES: usize = 256;
    const SUB: usize = 16;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 2;
    fn decode(&self, u: &mut [u8], scales: &mut [i8], mins: &mut [i8]) -> (u16, u16) {
        for (j, &sc) in self.scales.iter().enumerate() {
            scales[j] = (sc & 0xF) as i8;
            mins[j] = (sc >> 4) as i8;
        }
        k_crumbs(&self.qs, u);
        (self.d, self.dmin)
    }
}

impl WeightBlock for BlockQ3K {
    const ACT_BLOCK: usize = 256;
    const VALUES: usize = 256;
    const SUB: usize = 16;
    const OFFSET: i32 = 4;
    const HAS_MIN: bool = false;
    const BITS: u32 = 3;
    fn decode(&self, u: &mut [u8], scales: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        // ggml's dequantize_row_q3_K: 16 6-bit scales, low nibbles in bytes 0–7, high 2 bits
        // in bytes 8–11.
        let a = &self.scales;
        for (j, s) in scales.iter_mut().enumerate().take(16) {
            let low = if j < 8 { a[j] & 0xF } else { a[j - 8] >> 4 };
            let high = (a[8 + j % 4] >> (2 * (j / 4))) & 3;
            *s = ((low | (high << 4)) as i32 - 32) as i8;
        }
        k_crumbs(&self.qs, u);
        // The high bit (set: value q, clear: q − 4, so `u = q + 4·bit`) is bit `2n + j` of
        // `hmask[l]` for value `128n + 32j + l`.
        for n in 0..2 {
            for j in 0..4 {
                for l in 0..32 {
                    u[128 * n + 32 * j + l] += ((self.hmask[l] >> (4 * n + j)) & 1) << 2;
                }
            }
        }
        (self.d, 0)
    }
}

/// ggml's `get_scale_min_k4`: Q4_K's and Q5_K's eight 6-bit scales and mins (they fit an i8).
fn scale_min_k4(q: &[u8; 12], scales: &mut [i8], mins: &mut [i8]) {
    for j in 0..8 {
        let (sc, m) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        };
        scales[j] = sc as i8;
        mins[j] = m as i8;
    }
}

/// Q4_K's and Q5_K's nibbles: 64 values per 32 bytes, low nibbles first.
fn k_nibbles(qs: &[u8; 128], u: &mut [u8]) {
    for c in 0..4 {
        for l in 0..32 {
            u[c * 64 + l] = qs[c * 32 + l] & 0x0F;
            u[c * 64 + 32 + l] = qs[c * 32 + l] >> 4;
        }
    }
}

impl WeightBlock for BlockQ4K {
    const ACT_BLOCK: usize = 256;
    const VALUES: usize = 256;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 4;
    fn decode(&self, u: &mut [u8], scales: &mut [i8], mins: &mut [i8]) -> (u16, u16) {
        scale_min_k4(&self.scales, scales, mins);
        k_nibbles(&self.qs, u);
        (self.d, self.dmin)
    }
}

impl WeightBlock for BlockQ5K {
    const ACT_BLOCK: usize = 256;
    const VALUES: usize = 256;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 5;
    fn decode(&self, u: &mut [u8], scales: &mut [i8], mins: &mut [i8]) -> (u16, u16) {
        scale_min_k4(&self.scales, scales, mins);
        k_nibbles(&self.qs, u);
        // ggml's dequantize_row_q5_K: bit 2c of qh[l] for value 64c + l, bit 2c + 1 for 64c + 32 + l.
        for c in 0..4 {
            for l in 0..32 {
                u[c * 64 + l] |= ((self.qh[l] >> (2 * c)) & 1) << 4;
                u[c * 64 + 32 + l] |= ((self.qh[l] >> (2 * c + 1)) & 1) << 4;
            }
        }
        (self.d, self.dmin)
    }
}

impl WeightBlock for BlockQ6K {
    const ACT_BLOCK: usize = 256;
    const VALUES: usize = 256;
    const SUB: usize = 16;
    const OFFSET: i32 = 32;
    const HAS_MIN: bool = false;
    const BITS: u32 = 6;
    fn decode(&self, u: &mut [u8], scales: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        scales[..16].copy_from_slice(&self.scales);
        // ggml's dequantize_row_q6_K layout: two halves of 128 values.
        for h in 0..2 {
            let (ql, qh, y) = (&self.ql[h * 64..], &self.qh[h * 32..], h * 128);
            for l in 0..32 {
                u[y + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                u[y + l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                u[y + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                u[y + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        (self.d, 0)
    }
}
