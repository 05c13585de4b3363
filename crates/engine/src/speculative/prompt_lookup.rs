//! Prompt lookup, the drafter that needs no second model: the sequence's last n tokens are
//! looked up among its own earlier tokens (prompt and output), and what followed their most
//! recent earlier occurrence is proposed as the continuation. Code edits that copy most of
//! their input, JSON that echoes field names and answers that quote a passage are where it
//! pays. Each sequence keeps an index of its n-grams (one map per n), extended as tokens
//! arrive, so a proposal costs a few hash lookups however long the sequence is. The
//! speculative policy (`policy.rs`) decides how many of the proposed tokens to verify.

use std::collections::HashMap;

/// The n-grams of one sequence's tokens, for n in `min_n..=max_n`: each maps to the end
/// position of its most recent occurrence.
#[derive(Debug, Clone, Default)]
pub struct NgramIndex {
    min_n: usize,
    /// `maps[n - min_n]`: hash of n tokens → position just past their latest occurrence.
    maps: Vec<HashMap<u64, u32>>,
    /// N-grams ending at positions `< indexed_to` are in the maps.
    indexed_to: usize,
}

fn hash_of(tokens: &[u32]) -> u64 {
    // FNV-1a over the ids: cheap, and a collision only costs a proposal that is checked.
    tokens.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h ^ t as u64).wrapping_mul(0x0100_0000_01b3))
}

impl NgramIndex {
    pub fn new(min_n: usize, max_n: usize) -> Self {
        let min_n = min_n.max(1);
        Self { min_n, maps: vec![HashMap::new(); max_n.max(min_n) - min_n + 1], indexed_to: 0 }
    }

    /// Up to `max_len` tokens that followed the latest earlier occurrence of the longest
    /// suffix of `tokens` (between the index's n bounds) seen before; empty when none did.
    pub fn propose(&mut self, tokens: &[u32], max_len: usize) -> Vec<u32> {
        let len = tokens.len();
        if max_len == 0 || len < 2 {
            return Vec::new();
        }
        // Index every n-gram that ends before the suffix's own end, so the suffix is never
        // found as a match of itself.
        self.extend(tokens, len - 1);
        for (i, map) in self.maps.iter().enumerate().rev() {
            let n = self.min_n + i;
            if n >= len {
                continue;
            }
            let suffix = &tokens[len - n..];
            let Some(&end) = map.get(&hash_of(suffix)) else { continue };
            let end = end as usize;
            if tokens[end - n..end] != *suffix {
                continue; // a hash collision
            }
            return tokens[end..len.min(end + max_len)].to_vec();
        }
        Vec::new()
    }

    /// Indexes the n-grams ending at positions `indexed_to+1 ..= upto` (exclusive ends).
    fn extend(&mut self, tokens: &[u32], upto: usize) {
        // A sequence only grows, but a preempted one may be recomputed: never go backwards.
        for end in self.indexed_to.max(1)..=upto.min(tokens.len()) {
            for (i, map) in self.maps.iter_mut().enumerate() {
                let n = self.min_n + i;
                if end >= n {
                    map.insert(hash_of(&tokens[end - n..end]), end as u32);
                }
            }
        }
        self.indexed_to = self.indexed_to.max(upto + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match_of_the_longest_suffix() {
        let mut idx = NgramIndex::new(1, 3);
        // "1 2 3 4 5 ... 1 2 3" → proposes "4 5 9" (continuation of the 3-gram "1 2 3").
        let t = [1, 2, 3, 4, 5, 9, 7, 1, 2, 3];
        assert_eq!(idx.propose(&t, 3), vec![4, 5, 9]);
        assert_eq!(idx.propose(&t, 1), vec![4]);
        // Later occurrences win: "2 3 8" appended makes "2 3" last seen followed by 8.
        let t2 = [1, 2, 3, 4, 5, 9, 7, 1, 2, 3, 8, 6, 2, 3];
        assert_eq!(idx.propose(&t2, 2), vec![8, 6]);
    }

    #[test]
    fn falls_back_to_shorter_ngrams_and_never_matches_itself() {
        let mut idx = NgramIndex::new(1, 3);
        // Only the last token (5) occurred before.
        assert_eq!(idx.propose(&[5, 6, 7, 8, 5], 4), vec![6, 7, 8, 5]);
        let mut idx = NgramIndex::new(2, 3);
        // The 2-gram "7 8" occurs once, as the suffix itself: nothing to propose.
        assert_eq!(idx.propose(&[5, 6, 7, 8], 4), Vec::<u32>::new());
        // The proposal stops at the end of the tokens.
        let mut idx = NgramIndex::new(2, 2);
        assert_eq!(idx.propose(&[1, 2, 1, 2], 8), vec![1, 2]);
    }

    #[test]
    fn incremental_indexing_matches_a_fresh_index() {
        let toks: Vec<u32> = (0..300).map(|i| (i * 7 % 13) as u32).collect();
        let mut grown = NgramIndex::new(2, 4);
        for len in 2..toks.len() {
            let mut fresh = NgramIndex::new(2, 4);
            assert_eq!(grown.propose(&toks[..len], 5), fresh.propose(&toks[..len], 5), "len {len}");
        }
    }
}
