//! The KV block pool: which physical blocks are free, and how many sequences hold each one
//! (reference counts, so blocks can be shared). The caller asks first (`can_allocate`) and then
//! acts (`allocate`); blocks return to the pool when their last holder frees them.

use std::collections::VecDeque;

pub type BlockId = u32;

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    ref_counts: Vec<u32>,
    free: VecDeque<BlockId>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self { block_size, ref_counts: vec![0; num_blocks], free: (0..num_blocks as BlockId).collect() }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.num_blocks() - self.num_free_blocks()
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    pub fn can_allocate(&self, num_blocks: usize) -> bool {
        num_blocks <= self.free.len()
    }

    /// Takes `num_blocks` free blocks, lowest ids first. Panics if `can_allocate` was false.
    pub fn allocate(&mut self, num_blocks: usize) -> Vec<BlockId> {
        assert!(self.can_allocate(num_blocks), "allocate without can_allocate");
        (0..num_blocks)
            .map(|_| {
                let b = self.free.pop_front().expect("checked");
                self.ref_counts[b as usize] = 1;
                b
            })
            .collect()
    }

    /// Another holder for an allocated block (a shared prefix).
    pub fn share(&mut self, block: BlockId) {
        assert!(self.ref_counts[block as usize] > 0, "sharing a free block");
        self.ref_counts[block as usize] += 1;
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }

    /// Drops one hold on each block; blocks nobody holds go back to the pool.
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let rc = &mut self.ref_counts[b as usize];
            assert!(*rc > 0, "double free of block {b}");
            *rc -= 1;
            if *rc == 0 {
                self.free.push_back(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_share_free_round_trip() {
        let mut m = BlockManager::new(4, 16);
        assert_eq!(m.blocks_for(17), 2);
        let a = m.allocate(3);
        assert_eq!(a, vec![0, 1, 2]);
        assert!(!m.can_allocate(2));
        m.share(0);
        m.free(&a);
        // Block 0 is still held once; 2 and 1 went back in reverse order after 3.
        assert_eq!(m.ref_count(0), 1);
        assert_eq!(m.num_free_blocks(), 3);
        assert_eq!(m.allocate(3), vec![3, 2, 1]);
        m.free(&[0]);
        assert_eq!(m.num_used_blocks(), 3);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut m = BlockManager::new(2, 16);
        let a = m.allocate(1);
        m.free(&a);
        m.free(&a);
    }
}
