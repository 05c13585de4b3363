//! The GGUF block formats the kernels repack (Q5_0, Q8_0, Q4_K, Q6_K) and how each decodes
//! into unsigned values, the file's f16 scale (and min), and the K-quants' per-sub-block
//! integer scales and mins (`WeightBlock`); used by `PackedWeights::pack`.

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

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22 && std::mem::size_of::<BlockQ8_0>() == 34);

pub const QK: usize = 32;

/// A GGUF block type the kernels can repack: `VALUES` weights per block (the super-block),
/// in sub-blocks of `SUB` values. A weight is `d · value` (Q5_0, Q8_0), `d · sc · value`
/// (Q6_K) or `d · sc · value − dmin · m` (Q4_K), with `d` and `dmin` f16 per block and `sc`,
/// `m` small integers per sub-block: exactly the types whose blocks hold several sub-blocks.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    const VALUES: usize;
    const SUB: usize;
    /// Added to every value so it fits an unsigned byte (undone through the activation sums).
    const OFFSET: i32;
    const HAS_MIN: bool;
    /// Bits of `value + OFFSET`: 4 to 6 are packed as nibbles plus bit planes, 8 as bytes.
    const BITS: u32;
    /// Activations are quantized as ggml does for this type: Q8_0 (32 values per f16 scale)
    /// for the legacy quants, Q8_K (256 values per f32 scale) for the K-quants.
    const ACT_BLOCK: usize = QK;
    /// `u[i] = value_i + OFFSET`; per sub-block, its integer scale and min (when a block has
    /// several sub-blocks);
    /// returns the f16 bits of `d` and `dmin` (0 without mins).
    fn decode(&self, u: &mut [u8], scales: &mut [i8], mins: &mut [i8]) -> (u16, u16);
}

impl WeightBlock for BlockQ5_0 {
    const VALUES: usize = 32;
    const SUB: usize = 32;
    const OFFSET: i32 = 16;
    const HAS_MIN: bool = false;
    const BITS: u32 = 5;
    fn decode(&self, u: &mut [u8], _: &mut [i8], _: &mut [i8]) -> (u16, u16) {
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            u[j] = (self.qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            u[j + 16] = (self.qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        }
        (self.d, 0)
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

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144 && std::mem::size_of::<BlockQ6K>() == 210);

impl WeightBlock for BlockQ4K {
    const ACT_BLOCK: usize = 256;
    const VALUES: usize = 256;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 4;
    fn decode(&self, u: &mut [u8], scales: &mut [i8], mins: &mut [i8]) -> (u16, u16) {
        let q = &self.scales;
        for j in 0..8 {
            // ggml's get_scale_min_k4: 6-bit values, so they fit an i8.
            let (sc, m) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
            };
            scales[j] = sc as i8;
            mins[j] = m as i8;
        }
        for c in 0..4 {
            for l in 0..32 {
                u[c * 64 + l] = self.qs[c * 32 + l] & 0x0F;
                u[c * 64 + 32 + l] = self.qs[c * 32 + l] >> 4;
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
