//! Packed weights to and from bytes, for the pack cache (`crate::pack_cache`): ten shape
//! fields, then the six arrays exactly as they lie in memory. A stored weight is only taken
//! when its shape equals the `Layout` its GGUF tensor would pack to, so the arrays' lengths —
//! which the kernels index by — always hold; the bytes inside are plain numbers.

use std::io::{self, Read, Write};

use super::{Layout, Line, PackedWeights};

impl PackedWeights {
    fn header(&self) -> [u64; 10] {
        [
            self.n as u64,
            self.k as u64,
            self.sub as u64,
            self.subs_per_block as u64,
            self.offset as i64 as u64,
            self.has_min as u64,
            self.act_block as u64,
            self.bits as u64,
            self.num_subs as u64,
            self.num_blocks as u64,
        ]
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(bytemuck::cast_slice(&self.header()))?;
        w.write_all(bytemuck::cast_slice(&self.lines))?;
        w.write_all(bytemuck::cast_slice(&self.high))?;
        w.write_all(bytemuck::cast_slice(&self.sub_scales))?;
        w.write_all(bytemuck::cast_slice(&self.sub_mins))?;
        w.write_all(bytemuck::cast_slice(&self.d))?;
        w.write_all(bytemuck::cast_slice(&self.neg_dmin))
    }

    /// Reads a weight `write_to` wrote; an error unless it has exactly `layout`'s shape.
    pub fn read_from(r: &mut impl Read, layout: &Layout) -> io::Result<Self> {
        let mut head = [0u64; 10];
        r.read_exact(bytemuck::cast_slice_mut(&mut head))?;
        let l = layout;
        let want = [
            l.n as u64,
            l.k as u64,
            l.sub as u64,
            l.subs_per_block as u64,
            l.offset as i64 as u64,
            l.has_min as u64,
            l.act_block as u64,
            l.bits as u64,
            l.num_subs as u64,
            l.num_blocks as u64,
        ];
        if head != want {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "stored weight has another shape"));
        }
        let (t, p) = (l.tiles, l.per_tile);
        let mut out = Self {
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
            lines: vec![Line([0; 64]); t * p.lines],
            high: vec![Line([0; 64]); t * p.high],
            sub_scales: vec![0; t * p.sub_scales],
            sub_mins: vec![0; t * p.sub_mins],
            d: vec![0; t * p.d],
            neg_dmin: vec![0; t * p.neg_dmin],
        };
        r.read_exact(bytemuck::cast_slice_mut(&mut out.lines))?;
        r.read_exact(bytemuck::cast_slice_mut(&mut out.high))?;
        r.read_exact(bytemuck::cast_slice_mut(&mut out.sub_scales))?;
        r.read_exact(bytemuck::cast_slice_mut(&mut out.sub_mins))?;
        r.read_exact(bytemuck::cast_slice_mut(&mut out.d))?;
        r.read_exact(bytemuck::cast_slice_mut(&mut out.neg_dmin))?;
        Ok(out)
    }

    /// Same shape and same bits (tests).
    pub fn same_as(&self, other: &Self) -> bool {
        self.header() == other.header()
            && bytemuck::cast_slice::<Line, u8>(&self.lines) == bytemuck::cast_slice::<Line, u8>(&other.lines)
            && bytemuck::cast_slice::<Line, u8>(&self.high) == bytemuck::cast_slice::<Line, u8>(&other.high)
            && self.sub_scales == other.sub_scales
            && self.sub_mins == other.sub_mins
            && self.d == other.d
            && self.neg_dmin == other.neg_dmin
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn a_packed_weight_round_trips_and_a_wrong_shape_is_refused() {
        let (n, k) = (40, 512);
        let blocks: Vec<BlockQ5_0> = (0..n * k / 32)
            .map(|i| BlockQ5_0 {
                d: half::f16::from_f32(0.001 * (1 + i % 7) as f32).to_bits(),
                qh: (i as u32).wrapping_mul(2654435761).to_le_bytes(),
                qs: std::array::from_fn(|j| (i * 31 + j * 17) as u8),
            })
            .collect();
        let p = PackedWeights::pack(&blocks, n, k);
        let mut bytes = Vec::new();
        p.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 80 + p.num_bytes());
        let layout = Layout::of::<BlockQ5_0>(n, k);
        let back = PackedWeights::read_from(&mut bytes.as_slice(), &layout).unwrap();
        assert!(back.same_as(&p));
        assert!(PackedWeights::read_from(&mut bytes.as_slice(), &Layout::of::<BlockQ5_0>(n + 1, k)).is_err());
        assert!(PackedWeights::read_from(&mut bytes.as_slice(), &Layout::of::<BlockQ5_1>(n, k)).is_err());
        assert!(PackedWeights::read_from(&mut &bytes[..bytes.len() - 1], &layout).is_err());
    }
}
