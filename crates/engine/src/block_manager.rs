//! The KV block pool and its prefix cache. Owns which physical blocks are free, how many
//! sequences hold each one (reference counts), and which full blocks hold which tokens:
//! every full block is keyed by a hash of (previous block's hash, its token ids), so a new
//! sequence whose prompt starts with cached blocks shares them instead of recomputing them.
//! Free blocks that still hold cached tokens are evicted least-recently-used. The scheduler
//! asks first (`can_allocate`, `can_append`) and then acts (`allocate`, `append`).
//!
//! ```text
//!  tokens:   | t0 … t15 | t16 … t31 | t32 … t40 |
//!  blocks:   |    7     |    3      |    9      |   ← block table of the sequence
//!  hashes:   h(0, t0..)  h(h7, t16..)  (not full: no hash yet)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

pub type BlockId = u32;

#[derive(Debug, Clone, Default)]
struct Block {
    ref_count: u32,
    /// Hash of the full block's chain of tokens, once it is full and computed.
    hash: Option<u64>,
    /// LRU stamp while free (key in `free_lru`).
    free_stamp: Option<u64>,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks by the time they were freed: the oldest is reused (and evicted) first.
    free_lru: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    cached: HashMap<u64, BlockId>,
    prefix_caching: bool,
}

/// Chained hash of one full block of tokens.
pub fn block_hash(prev: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::with_prefix_caching(num_blocks, block_size, true)
    }

    pub fn with_prefix_caching(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let mut m = Self {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free_lru: BTreeMap::new(),
            next_stamp: 0,
            cached: HashMap::new(),
            prefix_caching,
        };
        for b in 0..num_blocks as BlockId {
            m.push_free(b);
        }
        m
    }

    fn push_free(&mut self, b: BlockId) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.blocks[b as usize].free_stamp = Some(stamp);
        self.free_lru.insert(stamp, b);
    }

    fn take_free(&mut self, b: BlockId) {
        let stamp = self.blocks[b as usize].free_stamp.take().expect("block is free");
        self.free_lru.remove(&stamp);
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free_lru.len()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.num_blocks() - self.num_free_blocks()
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].ref_count
    }

    /// The cached blocks holding the longest run of full blocks at the start of `tokens`,
    /// leaving at least one token uncovered: the last prompt token must run to yield logits.
    pub fn cached_prefix(&self, tokens: &[u32]) -> Vec<BlockId> {
        let mut out = Vec::new();
        if !self.prefix_caching {
            return out;
        }
        let mut prev = None;
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(self.block_size) {
            let h = block_hash(prev, chunk);
            match self.cached.get(&h) {
                Some(&b) => out.push(b),
                None => break,
            }
            prev = Some(h);
        }
        out
    }

    /// Whether a sequence with `tokens` can get blocks for its first `num_tokens` tokens,
    /// counting the cached prefix it would share.
    pub fn can_allocate(&self, tokens: &[u32], num_tokens: usize) -> bool {
        let cached = self.cached_prefix(tokens);
        // Shared blocks that are free right now come out of the free pool too.
        let revived = cached.iter().filter(|&&b| self.blocks[b as usize].ref_count == 0).count();
        self.blocks_for(num_tokens).saturating_sub(cached.len()) + revived <= self.num_free_blocks()
    }

    /// Block table for the first `num_tokens` tokens: the cached prefix shared, then fresh
    /// blocks. Returns the table and how many tokens the cache already holds.
    pub fn allocate(&mut self, tokens: &[u32], num_tokens: usize) -> (Vec<BlockId>, usize) {
        assert!(self.can_allocate(tokens, num_tokens), "allocate without can_allocate");
        let mut table = self.cached_prefix(tokens);
        for &b in &table {
            if self.blocks[b as usize].ref_count == 0 {
                self.take_free(b);
            }
            self.blocks[b as usize].ref_count += 1;
        }
        let num_cached_tokens = table.len() * self.block_size;
        let need = self.blocks_for(num_tokens).saturating_sub(table.len());
        for _ in 0..need {
            table.push(self.allocate_fresh());
        }
        (table, num_cached_tokens)
    }

    /// Takes the least recently freed block, evicting whatever it cached.
    fn allocate_fresh(&mut self) -> BlockId {
        let (_, b) = self.free_lru.pop_first().expect("checked by the caller");
        let blk = &mut self.blocks[b as usize];
        blk.free_stamp = None;
        blk.ref_count = 1;
        if let Some(h) = blk.hash.take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
            }
        }
        b
    }

    /// Whether a table of `table_len` blocks can grow to hold `num_tokens` tokens.
    pub fn can_append(&self, table_len: usize, num_tokens: usize) -> bool {
        self.blocks_for(num_tokens).saturating_sub(table_len) <= self.num_free_blocks()
    }

    /// Grows the table to hold `num_tokens` tokens.
    pub fn append(&mut self, table: &mut Vec<BlockId>, num_tokens: usize) {
        assert!(self.can_append(table.len(), num_tokens), "append without can_append");
        while table.len() < self.blocks_for(num_tokens) {
            table.push(self.allocate_fresh());
        }
    }

    /// Records the hashes of the table's full blocks whose tokens are now computed
    /// (`tokens` are the sequence's tokens, `num_computed` how many have K/V in the cache).
    pub fn register_full_blocks(&mut self, table: &[BlockId], tokens: &[u32], num_computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let mut prev = None;
        for (i, chunk) in tokens[..num_computed.min(tokens.len())].chunks_exact(self.block_size).enumerate() {
            let h = block_hash(prev, chunk);
            let b = table[i];
            let blk = &mut self.blocks[b as usize];
            if blk.hash.is_none() {
                blk.hash = Some(h);
                self.cached.entry(h).or_insert(b);
            }
            prev = Some(h);
        }
    }

    /// Drops one hold on each block; blocks nobody holds return to the pool, keeping their
    /// cached tokens until they are reused. The tail is freed first, so a prefix outlives its
    /// continuation in the LRU order.
    pub fn free(&mut self, table: &[BlockId]) {
        for &b in table.iter().rev() {
            let blk = &mut self.blocks[b as usize];
            assert!(blk.ref_count > 0, "double free of block {b}");
            blk.ref_count -= 1;
            if blk.ref_count == 0 {
                self.push_free(b);
            }
        }
    }

    /// Number of blocks that hold cached tokens (in use or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn allocate_append_free_round_trip() {
        let mut m = BlockManager::new(4, 4);
        let t = toks(6, 0);
        assert!(m.can_allocate(&t, 6));
        let (mut table, cached) = m.allocate(&t, 6);
        assert_eq!((table.clone(), cached), (vec![0, 1], 0));
        assert!(m.can_append(2, 9));
        m.append(&mut table, 9);
        assert_eq!(table, vec![0, 1, 2]);
        assert!(!m.can_append(3, 17));
        m.free(&table);
        assert_eq!(m.num_free_blocks(), 4);
        // LRU: block 3 was never used, then the freed tail (2, 1, 0) in that order.
        let (table, _) = m.allocate(&toks(16, 1), 16);
        assert_eq!(table, vec![3, 2, 1, 0]);
    }

    #[test]
    fn prefix_is_shared_and_survives_until_evicted() {
        let mut m = BlockManager::new(6, 4);
        let a = toks(10, 0);
        let (ta, _) = m.allocate(&a, 10);
        m.register_full_blocks(&ta, &a, 10);
        assert_eq!(m.num_cached_blocks(), 2);
        // Same first 8 tokens: two blocks shared, then a fresh one.
        let mut b = a[..8].to_vec();
        b.extend([99, 98, 97]);
        let (tb, cached) = m.allocate(&b, 11);
        assert_eq!(cached, 8);
        assert_eq!(&tb[..2], &ta[..2]);
        assert_eq!(m.ref_count(ta[0]), 2);
        m.free(&ta);
        m.free(&tb);
        // Free but still cached: a third request reuses them.
        let (tc, cached) = m.allocate(&a, 10);
        assert_eq!(cached, 8);
        assert_eq!(&tc[..2], &ta[..2]);
        m.free(&tc);
        // Fill the pool with other tokens: the cached blocks get evicted.
        let (td, _) = m.allocate(&toks(24, 5), 24);
        assert_eq!(m.cached_prefix(&a).len(), 0);
        m.free(&td);
    }

    #[test]
    fn the_last_prompt_token_is_never_served_from_the_cache() {
        let mut m = BlockManager::new(4, 4);
        let a = toks(8, 0);
        let (ta, _) = m.allocate(&a, 8);
        m.register_full_blocks(&ta, &a, 8);
        // 8 tokens fully cached, but the 8th must be computed to get logits: one block hit.
        assert_eq!(m.cached_prefix(&a).len(), 1);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut m = BlockManager::new(2, 16);
        let (t, _) = m.allocate(&[1, 2], 2);
        m.free(&t);
        m.free(&t);
    }
}
