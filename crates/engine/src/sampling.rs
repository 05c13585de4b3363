//! Per-sequence sampling: logit bias and penalties, then greedy or temperature sampling with
//! top-k / top-p / min-p, driven by the sequence's own seeded RNG (one draw per step), so a
//! seed gives the same tokens whatever else runs. Logprobs are those of the model's raw
//! distribution (before any of the above), as OpenAI reports them, or, when asked
//! (`post_sampling`, llama.cpp's `post_sampling_probs`), of the distribution the token was
//! drawn from: after bias, penalties, top-k, temperature, min-p and top-p.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means off.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// Multiplicative (llama.cpp/CTRL style), over prompt and generated tokens; 1 means off.
    pub repetition_penalty: f32,
    /// OpenAI-style, over generated tokens.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Report each token's logprob (computing it takes a softmax over the whole vocabulary,
    /// so it is skipped unless asked for).
    pub logprobs: bool,
    /// How many top alternatives to report with each token (0: none); implies `logprobs`.
    pub top_logprobs: usize,
    /// Report logprobs of the sampling distribution (only the tokens it could pick) instead of
    /// the model's raw one.
    pub post_sampling: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: false,
            top_logprobs: 0,
            post_sampling: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-6
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of `token` under the raw model distribution (0 unless asked for).
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Generated-token counts, for frequency/presence penalties.
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        Self { params, rng: ChaCha8Rng::seed_from_u64(seed), counts: Default::default() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a generated token (penalties count it from now on).
    pub fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_default() += 1;
    }

    /// Picks the next token. `context` is every token so far (prompt + generated), for the
    /// repetition penalty.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Sampled {
        let adjusted = !self.params.logit_bias.is_empty()
            || self.params.repetition_penalty != 1.0
            || self.params.frequency_penalty != 0.0
            || self.params.presence_penalty != 0.0;
        let l = if adjusted {
            let mut l = logits.to_vec();
            self.adjust(&mut l, context);
            std::borrow::Cow::Owned(l)
        } else {
            std::borrow::Cow::Borrowed(logits)
        };
        let greedy = self.params.is_greedy();
        let token = if greedy { argmax(&l) } else { self.draw(&l) };
        if !self.params.logprobs && self.params.top_logprobs == 0 {
            return Sampled { token, logprob: 0.0, top: Vec::new() };
        }
        if self.params.post_sampling {
            return self.post_sampling(&l, token, greedy);
        }
        let (logprob_of, top) = raw_logprobs(logits, self.params.top_logprobs);
        Sampled { token, logprob: logprob_of(token), top }
    }

    /// `token` and the most likely alternatives under the distribution it was drawn from
    /// (greedy: the one token, certain). Tokens that could not be drawn are not listed.
    fn post_sampling(&self, l: &[f32], token: u32, greedy: bool) -> Sampled {
        let n = self.params.top_logprobs;
        if greedy {
            return Sampled { token, logprob: 0.0, top: if n > 0 { vec![(token, 0.0)] } else { Vec::new() } };
        }
        let Some(Nucleus { cand, probs, keep }) = self.nucleus(l) else {
            return Sampled { token, logprob: 0.0, top: vec![(token, 0.0)].into_iter().take(n).collect() };
        };
        let total: f32 = probs[..keep].iter().sum();
        let lp = |p: f32| (p / total).ln();
        let logprob = cand[..keep].iter().position(|c| c.0 == token).map_or(f32::NEG_INFINITY, |i| lp(probs[i]));
        let top = cand[..keep].iter().zip(&probs).take(n).map(|(c, &p)| (c.0, lp(p))).collect();
        Sampled { token, logprob, top }
    }

    fn adjust(&self, l: &mut [f32], context: &[u32]) {
        let p = &self.params;
        for &(t, b) in &p.logit_bias {
            if let Some(x) = l.get_mut(t as usize) {
                *x += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in context {
                if seen.insert(t) {
                    if let Some(x) = l.get_mut(t as usize) {
                        *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
                    }
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(x) = l.get_mut(t as usize) {
                    *x -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
    }

    fn draw(&mut self, l: &[f32]) -> u32 {
        let Some(Nucleus { cand, probs, keep }) = self.nucleus(l) else { return argmax(l) };
        let total: f32 = probs[..keep].iter().sum();
        let r: f32 = self.rng.random::<f32>() * total;
        let mut cum = 0.0;
        for i in 0..keep {
            cum += probs[i];
            if r < cum {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }

    /// The tokens `draw` picks among. None when no logit is finite.
    fn nucleus(&self, l: &[f32]) -> Option<Nucleus> {
        let p = &self.params;
        let mut cand: Vec<(u32, f32)> =
            l.iter().enumerate().filter(|(_, x)| x.is_finite()).map(|(i, &x)| (i as u32, x)).collect();
        if cand.is_empty() {
            return None;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        cand.sort_by(by_logit);
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / p.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, x) in probs.iter().enumerate().take(keep) {
                cum += x;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        Some(Nucleus { cand, probs, keep })
    }
}

/// Candidates after top-k, most likely first, their temperature-softmax probabilities, and how
/// many of them (a prefix) min-p and top-p keep.
struct Nucleus {
    cand: Vec<(u32, f32)>,
    probs: Vec<f32>,
    keep: usize,
}

/// Highest logit; ties go to the lowest id.
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of the raw logits: a lookup for any token, and the top `n`.
pub(crate) fn raw_logprobs(l: &[f32], n: usize) -> (impl Fn(u32) -> f32 + '_, Vec<(u32, f32)>) {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    let mut top = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        let n = n.min(idx.len());
        let cmp = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
        idx.sort_by(cmp);
        // Tokens a constraint masked (-inf) are not alternatives: a shorter list, never a null.
        top = idx.into_iter().map(|i| (i, l[i as usize] - lse)).filter(|(_, lp)| lp.is_finite()).collect();
    }
    (move |t: u32| l[t as usize] - lse, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 3.0, -1.0, 0.5]
    }

    #[test]
    fn masked_tokens_are_never_among_the_top_logprobs() {
        let p = SamplingParams { logprobs: true, top_logprobs: 5, ..SamplingParams::greedy() };
        let l = [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let s = Sampler::new(p).sample(&l, &[]);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3]);
        assert!(s.top.iter().all(|t| t.1.is_finite()) && s.logprob.is_finite());
    }

    #[test]
    fn greedy_takes_the_lowest_id_among_ties() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits(), &[]).token, 1);
    }

    #[test]
    fn logprobs_are_the_raw_log_softmax() {
        let mut s = Sampler::new(SamplingParams { top_logprobs: 2, ..SamplingParams::greedy() });
        let out = s.sample(&logits(), &[]);
        let l = logits();
        let lse = l.iter().map(|x| x.exp()).sum::<f32>().ln();
        assert!((out.logprob - (3.0 - lse)).abs() < 1e-5);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let params = |seed| SamplingParams { temperature: 1.5, seed: Some(seed), ..Default::default() };
        let run = |seed| {
            let mut s = Sampler::new(params(seed));
            (0..64).map(|_| s.sample(&logits(), &[]).token).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_min_p_cuts_the_tail() {
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, seed: Some(1), ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(), &[]).token, 1);
        }
        // min_p 0.9: only tokens within 10% of the best survive (ids 1 and 3 tie).
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, min_p: 0.9, seed: Some(2), ..Default::default() });
        for _ in 0..50 {
            assert!([1, 3].contains(&s.sample(&logits(), &[]).token));
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probs of [10, 0, 0] at T=1: the first holds > 0.99, so top_p 0.9 keeps it alone.
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(3), ..Default::default() });
        for _ in 0..50 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0], &[]).token, 0);
        }
    }

    #[test]
    fn bias_and_penalties_move_the_choice() {
        let mut s = Sampler::new(SamplingParams { logit_bias: vec![(5, 10.0)], ..SamplingParams::greedy() });
        assert_eq!(s.sample(&logits(), &[]).token, 5);
        let mut s = Sampler::new(SamplingParams { presence_penalty: 2.0, ..SamplingParams::greedy() });
        s.accept(1);
        assert_eq!(s.sample(&logits(), &[]).token, 3);
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&logits(), &[1, 3]).token, 2);
    }

    #[test]
    fn post_sampling_logprobs_cover_only_what_could_be_drawn() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            logprobs: true,
            top_logprobs: 5,
            post_sampling: true,
            seed: Some(1),
            ..SamplingParams::default()
        };
        let out = Sampler::new(p.clone()).sample(&logits(), &[]);
        assert_eq!(out.top.len(), 2, "top-k 2 leaves two tokens: {:?}", out.top);
        let total: f32 = out.top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "renormalized: {total}");
        assert!(out.top.iter().any(|t| t.0 == out.token && t.1 == out.logprob));
        // The same draw as without post-sampling logprobs: reporting does not move the RNG.
        let plain = Sampler::new(SamplingParams { post_sampling: false, ..p }).sample(&logits(), &[]);
        assert_eq!(plain.token, out.token);
        let greedy = SamplingParams {
            temperature: 0.0,
            top_logprobs: 3,
            logprobs: true,
            post_sampling: true,
            ..SamplingParams::default()
        };
        let g = Sampler::new(greedy).sample(&logits(), &[]);
        assert_eq!((g.logprob, g.top.clone()), (0.0, vec![(g.token, 0.0)]));
    }
}
