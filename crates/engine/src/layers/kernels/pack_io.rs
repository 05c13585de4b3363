//! Packed weights to and from a pack-cache file (`crate::pack_cache`): ten shape fields, then
//! the six arrays as they lie in memory, each at a 64-byte aligned file offset, so a mapped
//! file is used in place. A stored weight is only taken when its shape equals the `Layout`
//! its GGUF tensor would pack to, and each array only when it is in bounds and aligned, so
//! the arrays' lengths — which the kernels index by — always hold; the bytes inside are plain
//! numbers.

use std::io::{self, Write};
use std::sync::Arc;

use super::{Arr, Layout, PackedWeights};

/// A writer that knows its position (arrays are aligned to the file, not to the writer).
pub struct PosWriter<W> {
    pub inner: W,
    pub pos: u64,
}

impl<W: Write> Write for PosWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header_of(l: &Layout) -> [u64; 10] {
    [
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
    ]
}

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

    pub fn write_to<W: Write>(&self, w: &mut PosWriter<W>) -> io::Result<()> {
        w.write_all(bytemuck::cast_slice(&self.header()))?;
        let arrays: [&[u8]; 6] = [
            bytemuck::cast_slice(&self.lines),
            bytemuck::cast_slice(&self.high),
            bytemuck::cast_slice(&self.sub_scales),
            bytemuck::cast_slice(&self.sub_mins),
            bytemuck::cast_slice(&self.d),
            bytemuck::cast_slice(&self.neg_dmin),
        ];
        for a in arrays {
            let pad = (64 - (w.pos % 64) as usize) % 64;
            w.write_all(&[0u8; 64][..pad])?;
            w.write_all(a)?;
        }
        Ok(())
    }

    /// The weight `write_to` wrote at byte `*pos` of `map`, borrowing its arrays from the
    /// mapping; advances `pos`. None unless it has exactly `layout`'s shape and fits.
    pub fn from_map(map: &Arc<memmap2::Mmap>, pos: &mut usize, layout: &Layout) -> Option<Self> {
        let head_bytes = map.get(*pos..pos.checked_add(80)?)?;
        let head: Vec<u64> = head_bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        if head[..] != header_of(layout)[..] {
            return None;
        }
        *pos += 80;
        let (t, p) = (layout.tiles, layout.per_tile);
        fn next<T: bytemuck::Pod>(map: &Arc<memmap2::Mmap>, pos: &mut usize, len: usize) -> Option<Arr<T>> {
            let start = pos.checked_next_multiple_of(64)?;
            let a = Arr::mapped(map, start, len)?;
            *pos = start + len * std::mem::size_of::<T>();
            Some(a)
        }
        Some(Self::from_parts(
            layout,
            next(map, pos, t * p.lines)?,
            next(map, pos, t * p.high)?,
            next(map, pos, t * p.sub_scales)?,
            next(map, pos, t * p.sub_mins)?,
            next(map, pos, t * p.d)?,
            next(map, pos, t * p.neg_dmin)?,
        ))
    }

    /// Same shape and same bits (tests).
    pub fn same_as(&self, other: &Self) -> bool {
        fn bytes<T: bytemuck::Pod>(a: &[T]) -> &[u8] {
            bytemuck::cast_slice(a)
        }
        self.header() == other.header()
            && bytes(&self.lines) == bytes(&other.lines)
            && bytes(&self.high) == bytes(&other.high)
            && bytes(&self.sub_scales) == bytes(&other.sub_scales)
            && bytes(&self.sub_mins) == bytes(&other.sub_mins)
            && bytes(&self.d) == bytes(&other.d)
            && bytes(&self.neg_dmin) == bytes(&other.neg_dmin)
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::PosWriter;

    fn map_of(bytes: &[u8]) -> std::sync::Arc<memmap2::Mmap> {
        let mut m = memmap2::MmapMut::map_anon(bytes.len().max(1)).unwrap();
        m[..bytes.len()].copy_from_slice(bytes);
        std::sync::Arc::new(m.make_read_only().unwrap())
    }

    #[test]
    fn a_packed_weight_round_trips_through_a_mapping_and_a_wrong_shape_is_refused() {
        let (n, k) = (40, 512);
        let blocks: Vec<BlockQ5_0> = (0..n * k / 32)
            .map(|i| BlockQ5_0 {
                d: half::f16::from_f32(0.001 * (1 + i % 7) as f32).to_bits(),
                qh: (i as u32).wrapping_mul(2654435761).to_le_bytes(),
                qs: std::array::from_fn(|j| (i * 31 + j * 17) as u8),
            })
            .collect();
        let p = PackedWeights::pack(&blocks, n, k);
        // Written after 3 bytes of something else: the arrays still land aligned.
        let mut w = PosWriter { inner: vec![1u8, 2, 3], pos: 3 };
        p.write_to(&mut w).unwrap();
        let map = map_of(&w.inner);
        let layout = Layout::of::<BlockQ5_0>(n, k);
        let mut pos = 3;
        let back = PackedWeights::from_map(&map, &mut pos, &layout).unwrap();
        assert_eq!(pos, w.inner.len());
        assert!(back.same_as(&p));
        assert!(PackedWeights::from_map(&map, &mut 3, &Layout::of::<BlockQ5_0>(n + 1, k)).is_none());
        assert!(PackedWeights::from_map(&map, &mut 3, &Layout::of::<BlockQ5_1>(n, k)).is_none());
        assert!(PackedWeights::from_map(&map_of(&w.inner[..w.inner.len() - 1]), &mut 3, &layout).is_none());
    }
}
