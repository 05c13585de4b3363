//! The KV block pool and its prefix cache. Owns which physical blocks are free, how many
//! sequences hold each one (reference counts), and which full blocks hold which tokens.
//! Every full, computed block is indexed by a chained hash of (previous block's hash, its
//! token ids), so a new sequence whose prompt starts with cached blocks shares them instead of
//! recomputing them. The hash only finds a candidate: a hit is taken only when the block's
//! stored tokens equal the sequence's and its stored parent is the entry matched just before
//! (by a content id no other content ever gets), so a hash collision can never hand one
//! request another's KV — the check nano-vllm makes, extended to the whole chain. Free blocks
//! that still hold cached tokens are evicted least-recently-used. The scheduler asks first
//! (`can_allocate`, `can_append`) and then acts (`allocate`, `append`).
//!
//! ```text
//!  tokens:   | t0 … t15 | t16 … t31 | t32 … t40 |
//!  blocks:   |    7     |    3      |    9      |   ← BlockTable::blocks
//!  hashes:   h(root, t0..) h(h0, t16..)  (not full: no hash yet)  ← BlockTable::hashes
//!  ids:      c7 (parent —)  c3 (parent c7)                         ← stored per cached block
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

pub type BlockId = u32;

/// A sequence's blocks in position order, and the chained hashes of its full blocks (computed
/// once per block as the sequence grows, kept across preemption: they depend on tokens only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    hashes: Vec<u64>,
    /// Leading blocks already offered to the prefix cache (`register_full_blocks`).
    num_registered: usize,
    /// Seeds the hash chain: sequences with different salts never share blocks.
    salt: u64,
}

impl BlockTable {
    /// An empty table whose prefix-cache entries are keyed by `salt` (0: the shared cache).
    pub fn with_salt(salt: u64) -> Self {
        Self { salt, ..Self::default() }
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Extends the hash chain over the full blocks of `tokens` (never rehashes a block).
    fn hash_full_blocks(&mut self, tokens: &[u32], block_size: usize, hasher: fn(u64, &[u32]) -> u64) {
        for chunk in tokens.chunks_exact(block_size).skip(self.hashes.len()) {
            let prev = self.hashes.last().copied().unwrap_or(self.salt);
            self.hashes.push(hasher(prev, chunk));
        }
    }
}

/// The cached blocks a sequence's prompt starts with, found once per admission and handed to
/// `can_allocate` and `allocate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    blocks: Vec<BlockId>,
}

impl PrefixHit {
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
}

#[derive(Debug, Clone, Default)]
struct Block {
    ref_count: u32,
    /// Set while the block is a prefix-cache entry: its tokens and where it sits in a chain.
    cached: Option<CachedBlock>,
    /// LRU stamp while free (key in `free_lru`).
    free_stamp: Option<u64>,
}

#[derive(Debug, Clone)]
struct CachedBlock {
    hash: u64,
    tokens: Vec<u32>,
    /// Names this block's content: its tokens after the chain of contents `parent` names. Two
    /// blocks share an id only when both are equal (checked when the second registers), so
    /// their K/V are the same; a block reused for other tokens never keeps its id.
    id: u64,
    parent: Option<u64>,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks by the time they were freed: the oldest is reused (and evicted) first.
    free_lru: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    next_id: u64,
    /// Chain hash → the block indexed under it (one per hash; candidates, checked on a hit).
    index: HashMap<u64, BlockId>,
    prefix_caching: bool,
    hasher: fn(u64, &[u32]) -> u64,
}

/// Chained hash of one full block of tokens.
pub fn block_hash(prev: u64, tokens: &[u32]) -> u64 {
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
            next_id: 0,
            index: HashMap::new(),
            prefix_caching,
            hasher: block_hash,
        };
        for b in 0..num_blocks as BlockId {
            m.push_free(b);
        }
        m
    }

    /// The same pool hashing with `hasher` (tests force collisions with it).
    #[cfg(test)]
    fn with_hasher(mut self, hasher: fn(u64, &[u32]) -> u64) -> Self {
        self.hasher = hasher;
        self
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
    /// Each candidate's tokens and parent are compared, not only its hash.
    pub fn cached_prefix(&self, table: &mut BlockTable, tokens: &[u32]) -> PrefixHit {
        let mut hit = PrefixHit::default();
        if !self.prefix_caching {
            return hit;
        }
        let usable = &tokens[..tokens.len().saturating_sub(1)];
        table.hash_full_blocks(usable, self.block_size, self.hasher);
        let mut parent = None;
        for (chunk, h) in usable.chunks_exact(self.block_size).zip(&table.hashes) {
            let Some(&b) = self.index.get(h) else { break };
            match &self.blocks[b as usize].cached {
                Some(c) if c.hash == *h && c.parent == parent && c.tokens == chunk => {
                    parent = Some(c.id);
                    hit.blocks.push(b);
                }
                _ => break,
            }
        }
        hit
    }

    /// Whether a sequence can get blocks for its first `num_tokens` tokens, sharing `hit`.
    pub fn can_allocate(&self, hit: &PrefixHit, num_tokens: usize) -> bool {
        // Shared blocks that are free right now come out of the free pool too.
        let revived = hit.blocks.iter().filter(|&&b| self.blocks[b as usize].ref_count == 0).count();
        self.blocks_for(num_tokens).saturating_sub(hit.blocks.len()) + revived <= self.num_free_blocks()
    }

    /// Fills the (empty) table with blocks for the first `num_tokens` tokens: the cached
    /// prefix shared, then fresh blocks. Returns how many tokens the cache already holds.
    pub fn allocate(&mut self, table: &mut BlockTable, hit: PrefixHit, num_tokens: usize) -> usize {
        assert!(table.blocks.is_empty(), "allocate into a table that holds blocks");
        assert!(self.can_allocate(&hit, num_tokens), "allocate without can_allocate");
        for &b in &hit.blocks {
            if self.blocks[b as usize].ref_count == 0 {
                self.take_free(b);
            }
            self.blocks[b as usize].ref_count += 1;
        }
        table.blocks = hit.blocks;
        table.num_registered = table.blocks.len();
        let num_cached_tokens = table.blocks.len() * self.block_size;
        while table.blocks.len() < self.blocks_for(num_tokens) {
            let b = self.allocate_fresh();
            table.blocks.push(b);
        }
        num_cached_tokens
    }

    /// `cached_prefix`, `can_allocate` and `allocate` in one call, for callers that lay out a
    /// batch by hand (tests, benchmarks): a new table for the first `num_tokens` of `tokens`,
    /// or `None` when the pool lacks room.
    pub fn try_allocate(&mut self, tokens: &[u32], num_tokens: usize) -> Option<BlockTable> {
        let mut table = BlockTable::default();
        let hit = self.cached_prefix(&mut table, tokens);
        if !self.can_allocate(&hit, num_tokens) {
            return None;
        }
        self.allocate(&mut table, hit, num_tokens);
        Some(table)
    }

    /// Takes the least recently freed block, evicting whatever it cached.
    fn allocate_fresh(&mut self) -> BlockId {
        let (_, b) = self.free_lru.pop_first().expect("checked by the caller");
        let blk = &mut self.blocks[b as usize];
        blk.free_stamp = None;
        blk.ref_count = 1;
        if let Some(c) = blk.cached.take() {
            if self.index.get(&c.hash) == Some(&b) {
                self.index.remove(&c.hash);
            }
        }
        b
    }

    /// Whether a table of `table_len` blocks can grow to hold `num_tokens` tokens.
    pub fn can_append(&self, table_len: usize, num_tokens: usize) -> bool {
        self.blocks_for(num_tokens).saturating_sub(table_len) <= self.num_free_blocks()
    }

    /// Grows the table to hold `num_tokens` tokens.
    pub fn append(&mut self, table: &mut BlockTable, num_tokens: usize) {
        assert!(self.can_append(table.len(), num_tokens), "append without can_append");
        while table.blocks.len() < self.blocks_for(num_tokens) {
            let b = self.allocate_fresh();
            table.blocks.push(b);
        }
    }

    /// Shrinks the table to the blocks `num_tokens` tokens need, returning the rest to the
    /// pool (speculative rows that were rejected). Only never-registered tail blocks go.
    pub fn truncate(&mut self, table: &mut BlockTable, num_tokens: usize) {
        let keep = self.blocks_for(num_tokens).max(table.num_registered);
        while table.blocks.len() > keep {
            let b = table.blocks.pop().expect("longer than keep");
            self.release(b);
        }
    }

    /// Drops one hold on a block; the last one returns it to the pool.
    fn release(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        assert!(blk.ref_count > 0, "double free of block {b}");
        blk.ref_count -= 1;
        if blk.ref_count == 0 {
            self.push_free(b);
        }
    }

    /// Offers the table's newly full blocks whose tokens are computed to the prefix cache
    /// (`tokens` are the sequence's tokens, `num_computed` how many have K/V in the cache).
    /// Each block is hashed and registered once.
    pub fn register_full_blocks(&mut self, table: &mut BlockTable, tokens: &[u32], num_computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let computed = &tokens[..num_computed.min(tokens.len())];
        table.hash_full_blocks(computed, self.block_size, self.hasher);
        let num_full = (computed.len() / self.block_size).min(table.blocks.len());
        for i in table.num_registered..num_full {
            let parent = match i {
                0 => None,
                _ => match &self.blocks[table.blocks[i - 1] as usize].cached {
                    Some(c) => Some(c.id),
                    None => break, // the chain is broken: nothing after it can be found
                },
            };
            let b = table.blocks[i];
            if self.blocks[b as usize].cached.is_none() {
                let hash = table.hashes[i];
                let tokens = &computed[i * self.block_size..(i + 1) * self.block_size];
                // A copy of an indexed entry (sequences that computed the same prefix side by
                // side) takes its id, so the children of either are found after the other.
                let same = self
                    .index
                    .get(&hash)
                    .and_then(|&x| self.blocks[x as usize].cached.as_ref())
                    .filter(|c| c.hash == hash && c.parent == parent && c.tokens == tokens);
                let id = match same {
                    Some(c) => c.id,
                    None => {
                        self.next_id += 1;
                        self.next_id
                    }
                };
                self.index.entry(hash).or_insert(b);
                let tokens = tokens.to_vec();
                self.blocks[b as usize].cached = Some(CachedBlock { hash, tokens, id, parent });
            }
            table.num_registered = i + 1;
        }
    }

    /// Drops the table's hold on each of its blocks and empties it (its hashes stay: they
    /// depend on tokens only). Blocks nobody holds return to the pool, keeping their cached
    /// tokens until they are reused. The tail is freed first, so a prefix outlives its
    /// continuation in the LRU order.
    pub fn free(&mut self, table: &mut BlockTable) {
        for &b in table.blocks.iter().rev() {
            self.release(b);
        }
        table.blocks.clear();
        table.num_registered = 0;
    }

    /// Number of blocks indexed in the prefix cache (in use or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    /// Allocates a table for `tokens`' first `n` tokens, sharing its cached prefix.
    fn alloc(m: &mut BlockManager, tokens: &[u32], n: usize) -> (BlockTable, usize) {
        let mut t = BlockTable::default();
        let hit = m.cached_prefix(&mut t, tokens);
        assert!(m.can_allocate(&hit, n));
        let cached = m.allocate(&mut t, hit, n);
        (t, cached)
    }

    #[test]
    fn allocate_append_free_round_trip() {
        let mut m = BlockManager::new(4, 4);
        let t = toks(6, 0);
        let (mut table, cached) = alloc(&mut m, &t, 6);
        assert_eq!((table.blocks(), cached), (&[0, 1][..], 0));
        assert!(m.can_append(2, 9));
        m.append(&mut table, 9);
        assert_eq!(table.blocks(), [0, 1, 2]);
        assert!(!m.can_append(3, 17));
        m.free(&mut table);
        assert!(table.is_empty());
        assert_eq!(m.num_free_blocks(), 4);
        // LRU: block 3 was never used, then the freed tail (2, 1, 0) in that order.
        let (table, _) = alloc(&mut m, &toks(16, 1), 16);
        assert_eq!(table.blocks(), [3, 2, 1, 0]);
    }

    #[test]
    fn prefix_is_shared_and_survives_until_evicted() {
        let mut m = BlockManager::new(6, 4);
        let a = toks(10, 0);
        let (mut ta, _) = alloc(&mut m, &a, 10);
        m.register_full_blocks(&mut ta, &a, 10);
        assert_eq!(m.num_cached_blocks(), 2);
        // Same first 8 tokens: two blocks shared, then a fresh one.
        let mut b = a[..8].to_vec();
        b.extend([99, 98, 97]);
        let (mut tb, cached) = alloc(&mut m, &b, 11);
        assert_eq!(cached, 8);
        assert_eq!(tb.blocks(), [0, 1, 3]);
        assert_eq!(m.ref_count(0), 2);
        let a_blocks = ta.blocks().to_vec();
        m.free(&mut ta);
        m.free(&mut tb);
        // Free but still cached: a third request reuses them.
        let (mut tc, cached) = alloc(&mut m, &a, 10);
        assert_eq!(cached, 8);
        assert_eq!(&tc.blocks()[..2], &a_blocks[..2]);
        m.free(&mut tc);
        // Fill the pool with other tokens: the cached blocks get evicted.
        let (mut td, _) = alloc(&mut m, &toks(24, 5), 24);
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &a).num_blocks(), 0);
        m.free(&mut td);
    }

    #[test]
    fn the_last_prompt_token_is_never_served_from_the_cache() {
        let mut m = BlockManager::new(4, 4);
        let a = toks(8, 0);
        let (mut ta, _) = alloc(&mut m, &a, 8);
        m.register_full_blocks(&mut ta, &a, 8);
        // 8 tokens fully cached, but the 8th must be computed to get logits: one block hit.
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &a).num_blocks(), 1);
    }

    #[test]
    fn a_hash_collision_is_a_miss_not_another_requests_kv() {
        // Every block hashes alike: only the stored tokens and parents tell them apart.
        let mut m = BlockManager::new(8, 4).with_hasher(|_, _| 42);
        let a = toks(9, 0);
        let (mut ta, _) = alloc(&mut m, &a, 9);
        m.register_full_blocks(&mut ta, &a, 9);
        assert_eq!(m.num_cached_blocks(), 1, "one index entry per hash");
        let b = toks(9, 1);
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &b).num_blocks(), 0);
        // The same tokens still hit their first block (the indexed one).
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &a).num_blocks(), 1);
        // Same second block after a different first block: its parent differs, so no hit
        // even if the index pointed at it.
        let mut c = toks(4, 3);
        c.extend_from_slice(&a[4..9]);
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &c).num_blocks(), 0);
    }

    #[test]
    fn a_block_matches_only_under_the_parent_it_was_computed_after() {
        // A hash that ignores the parent: the index alone would hand out a block computed
        // after other tokens. Its stored parent must be the block matched just before.
        let mut m = BlockManager::new(8, 2).with_hasher(|_, t| block_hash(0, t));
        let a = vec![1, 2, 3, 4, 5];
        let (mut ta, _) = alloc(&mut m, &a, 5);
        m.register_full_blocks(&mut ta, &a, 5); // [1 2] and [3 4] after it
        let d = vec![7, 8, 9];
        let (mut td, _) = alloc(&mut m, &d, 3);
        m.register_full_blocks(&mut td, &d, 3); // [7 8]
        let c = vec![7, 8, 3, 4, 5];
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &c).num_blocks(), 1, "[3 4] was computed after [1 2]");
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &a).num_blocks(), 2);
    }

    #[test]
    fn prefixes_computed_side_by_side_are_both_found() {
        // Two sequences compute the same first block before either registers it; each then
        // adds a block of its own. Both second blocks are found after the shared first one.
        let mut m = BlockManager::new(8, 2);
        let (a, b) = (vec![1, 2, 3, 4, 0], vec![1, 2, 5, 6, 0]);
        let (mut ta, _) = alloc(&mut m, &a, 5);
        let (mut tb, _) = alloc(&mut m, &b, 5);
        m.register_full_blocks(&mut ta, &a, 5);
        m.register_full_blocks(&mut tb, &b, 5);
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &a).num_blocks(), 2);
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &b).num_blocks(), 2);
        m.free(&mut ta);
        m.free(&mut tb);
    }

    #[test]
    fn exact_block_ids_after_admission_preemption_and_free() {
        let mut m = BlockManager::new(6, 4);
        let a = toks(8, 0);
        let (mut ta, _) = alloc(&mut m, &a, 8);
        assert_eq!(ta.blocks(), [0, 1]);
        m.register_full_blocks(&mut ta, &a, 8);
        let b = toks(5, 9);
        let (mut tb, _) = alloc(&mut m, &b, 5);
        assert_eq!(tb.blocks(), [2, 3]);
        m.append(&mut ta, 9);
        assert_eq!(ta.blocks(), [0, 1, 4]);
        // Preempt b (as the scheduler does): its blocks go back, tail first.
        m.free(&mut tb);
        assert_eq!(m.num_free_blocks(), 3);
        // Readmitted: fresh blocks in LRU order — 5 (never used), then 3, 2 (b's tail first).
        let (mut tb2, cached) = alloc(&mut m, &toks(12, 9), 12);
        assert_eq!((tb2.blocks(), cached), (&[5, 3, 2][..], 0));
        // A newcomer sharing a's first block: it is in use, so only fresh blocks count.
        let mut c = a[..4].to_vec();
        c.extend([100, 101]);
        let mut tc = BlockTable::default();
        let hit = m.cached_prefix(&mut tc, &c);
        assert_eq!(hit.num_blocks(), 1);
        assert!(!m.can_allocate(&hit, 6), "the shared block and one fresh one: none is free");
        assert!(m.can_allocate(&hit, 4));
        assert_eq!(m.allocate(&mut tc, hit, 4), 4);
        assert_eq!((tc.blocks(), m.ref_count(0)), (&[0][..], 2));
        m.free(&mut ta); // 4, 1 return; 0 is still held
        m.free(&mut tc); // 0
        m.free(&mut tb2); // 2, 3, 5
        assert_eq!(m.num_free_blocks(), 6);
        let (t, _) = alloc(&mut m, &toks(24, 50), 24);
        assert_eq!(t.blocks(), [4, 1, 0, 2, 3, 5]);
    }

    #[test]
    fn salted_tables_never_share() {
        let mut m = BlockManager::new(8, 4);
        let a = toks(9, 0);
        let mut ta = BlockTable::with_salt(1);
        let hit = m.cached_prefix(&mut ta, &a);
        m.allocate(&mut ta, hit, 9);
        m.register_full_blocks(&mut ta, &a, 9);
        assert_eq!(m.cached_prefix(&mut BlockTable::default(), &a).num_blocks(), 0);
        assert_eq!(m.cached_prefix(&mut BlockTable::with_salt(2), &a).num_blocks(), 0);
        assert_eq!(m.cached_prefix(&mut BlockTable::with_salt(1), &a).num_blocks(), 2);
    }

    #[test]
    fn each_block_is_hashed_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let mut m = BlockManager::new(8, 4).with_hasher(|p, t| {
            CALLS.fetch_add(1, Ordering::Relaxed);
            block_hash(p, t)
        });
        let mut tokens = toks(5, 0);
        let (mut t, _) = alloc(&mut m, &tokens, 5); // hashes block 0 (tokens 0..4)
        for n in 6..=20 {
            tokens.push(n as u32);
            m.append(&mut t, n);
            m.register_full_blocks(&mut t, &tokens, n);
        }
        assert_eq!(CALLS.load(Ordering::Relaxed), 5, "blocks 0..5 of 20 tokens, once each");
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut m = BlockManager::new(2, 16);
        let (t, _) = alloc(&mut m, &[1, 2], 2);
        let mut copy = t.clone();
        let mut t = t;
        m.free(&mut t);
        m.free(&mut copy);
    }
}
